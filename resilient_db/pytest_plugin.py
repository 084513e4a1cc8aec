"""pytest plugin for fault tests (registered through the ``pytest11`` entry point).

Every fixture and option it adds is prefixed with ``toxiproxy`` or ``resilient_db``.
"""

from __future__ import annotations
