"""Direct access to the database behind the fault (setup, fault injection, checks).

:class:`Admin` is blocking psycopg in autocommit mode (every method has an async twin prefixed
with ``a`` that runs it in a worker thread). :func:`error_name` gives errors a short, stable
name for the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from resilient_db._errors import ConfigurationError

__all__ = ["Admin", "admin_dsn", "error_name"]


def admin_dsn(url: str) -> str:
    """The libpq DSN (for psycopg) of a SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def error_name(exc: BaseException) -> str:
    """A short, stable name for an error: ``DBAPIError(ConnectionDoesNotExistError)``."""
    name = type(exc).__qualname__
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        orig = exc.orig
        inner: BaseException | None = orig.__cause__ or orig.__context__
        detail = type(orig).__qualname__
        if inner is not None and detail in ("Error", "InterfaceError", "DBAPIError"):
            detail = type(inner).__qualname__
        code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        return f"{name}({detail}{f' {code}' if isinstance(code, str) else ''})"
    return name


class Admin:
    """Blocking psycopg access to one server, autocommit, with a statement timeout."""

    def __init__(self, dsn: str, *, timeout: float = 10.0) -> None:
        self.dsn = dsn
        self.timeout = timeout

    def _connect(self) -> Any:
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - the chaos extra brings it
            raise ConfigurationError(
                "the chaos engine needs psycopg 3 for its checks: pip install 'resilient-db[chaos]'"
            ) from exc
        return psycopg.connect(
            self.dsn,
            autocommit=True,
            connect_timeout=max(1, round(self.timeout)),
            application_name="rdb_chaos_admin",
        )

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; its rows (``[]`` when it returns none)."""
        with self._connect() as conn:
            conn.execute(f"SET statement_timeout = {round(self.timeout * 1000)}")
            cur = conn.execute(sql.encode(), params)
            return list(cur.fetchall()) if cur.description is not None else []

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """The first column of the first row (``None`` when there is no row)."""
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    async def aquery(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """:meth:`query` in a worker thread."""
        return await anyio.to_thread.run_sync(self.query, sql, params)

    async def ascalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """:meth:`scalar` in a worker thread."""
        return await anyio.to_thread.run_sync(self.scalar, sql, params)
