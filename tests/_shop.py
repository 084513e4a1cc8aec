"""The example app's database: a database of its own with two accounts (a fixture)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy.engine import make_url


@pytest.fixture
def shop_url(admin_conn: psycopg.Connection[tuple[object, ...]], pg_url: str) -> Iterator[str]:
    """A database of its own with the example's table and two accounts (dropped after)."""
    from examples.fastapi_app import SCHEMA_SQL  # needs the [fastapi] extra

    name = f"rdb_fastapi_{secrets.token_hex(3)}"
    admin_conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(pg_url).set(database=name)
    try:
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SCHEMA_SQL)
            conn.execute("INSERT INTO account VALUES (1, 100), (2, 100)")
        yield url.render_as_string(hide_password=False)
    finally:
        admin_conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
