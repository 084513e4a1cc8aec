"""Shared fixtures: a private database on the local PostgreSQL for this test session.

The server is the one on 127.0.0.1:5432 (override with ``RESILIENT_DB_TEST_PG``, a libpq URL
such as ``postgresql://postgres@127.0.0.1:5432``). The session creates its own database and
drops only that database at the end.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import psycopg
import pytest

pytest_plugins = ["resilient_db.testing.fixtures"]

BASE = os.environ.get("RESILIENT_DB_TEST_PG", "postgresql://postgres@127.0.0.1:5432")


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(f"{BASE}/postgres", autocommit=True, connect_timeout=10)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """Name of a database created for this test session (dropped afterwards)."""
    name = f"rdb_test_{os.getpid()}_{secrets.token_hex(3)}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with _admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_dsn(pg_database: str) -> str:
    """libpq/asyncpg DSN of the session database: ``postgresql://user@host:port/db``."""
    return f"{BASE}/{pg_database}"


@pytest.fixture(scope="session")
def pg_url(pg_dsn: str) -> str:
    """SQLAlchemy asyncpg URL of the session database."""
    return pg_dsn.replace("postgresql://", "postgresql+asyncpg://", 1)


@pytest.fixture(scope="session")
def psycopg_url(pg_dsn: str) -> str:
    """SQLAlchemy psycopg 3 (async) URL of the session database."""
    return pg_dsn.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture
def admin_conn() -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit superuser connection to the ``postgres`` database (sync, psycopg)."""
    with _admin() as conn:
        yield conn
