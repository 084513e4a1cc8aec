"""Kept so that ``pytest_plugins = ["resilient_db.testing.fixtures"]`` keeps working.

The cluster fixtures moved into the one plugin module, :mod:`resilient_db.pytest_plugin`,
which pytest loads by itself (``pytest11`` entry point): drop that ``pytest_plugins`` line.
This module defines nothing, so listing it registers nothing twice.
"""
