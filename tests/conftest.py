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

from resilient_db.pytest_plugin import toxiproxy_external_url
from resilient_db.toxiproxy import ToxiproxyServer

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


@pytest.fixture(
    scope="module",
    params=["embedded", pytest.param("external", marks=pytest.mark.toxiproxy_external)],
)
def api(request: pytest.FixtureRequest) -> Iterator[str]:
    """API URL of the Toxiproxy under test, once per module: the embedded server, and a real
    one when ``--toxiproxy-url`` / ``TOXIPROXY_URL`` names it (marker ``toxiproxy_external``).

    The contract tests (``test_toxiproxy_api``, ``test_proxy_reference``, ``test_proxy_http``)
    run against both; a module may define its own ``api`` (``test_proxy_client``).
    """
    if request.param == "external":
        external = toxiproxy_external_url(request.config)
        if not external:
            pytest.skip("no external Toxiproxy (--toxiproxy-url / TOXIPROXY_URL)")
        yield external if "://" in external else f"http://{external}"
        return
    with ToxiproxyServer.in_thread() as server:
        yield server.url
