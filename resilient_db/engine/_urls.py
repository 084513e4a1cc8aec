"""Database URL checks and rendering (never with the password)."""

from __future__ import annotations

import importlib.util
from typing import Literal

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from resilient_db._errors import ConfigurationError, MissingDriverError

__all__ = ["Driver", "check_url", "safe_url"]

Driver = Literal["asyncpg", "psycopg"]

# driver name in the URL -> (import name, pip extra that brings it)
_ASYNC_DRIVERS: dict[str, tuple[str, str]] = {
    "asyncpg": ("asyncpg", "resilient-db"),
    "psycopg": ("psycopg", "resilient-db[psycopg]"),
    "psycopg_async": ("psycopg", "resilient-db[psycopg]"),
}
_SYNC_DRIVERS = {"", "psycopg2", "psycopg2cffi", "pg8000", "pygresql"}


def safe_url(url: str | URL) -> str:
    """Render ``url`` with its password replaced by ``***`` (safe for logs and errors)."""
    if isinstance(url, str):
        try:
            url = make_url(url)
        except ArgumentError:
            return "<unparseable URL>"
    return url.render_as_string(hide_password=True)


def check_url(url: str | URL) -> tuple[URL, Driver]:
    """Parse ``url`` and require an async PostgreSQL driver that is installed.

    Raises :class:`ConfigurationError` for a sync or non-PostgreSQL URL (naming the async
    prefix to use) and :class:`MissingDriverError` when the driver package is missing.
    """
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
    except ArgumentError:
        raise ConfigurationError(
            "could not parse the database URL; expected "
            "'postgresql+asyncpg://user:password@host:5432/dbname'"
        ) from None
    backend = parsed.get_backend_name()
    driver = parsed.get_driver_name() if "+" in parsed.drivername else ""
    shown = safe_url(parsed)
    if backend not in ("postgresql", "postgres"):
        raise ConfigurationError(
            f"resilient_db supports PostgreSQL only, got a {backend!r} URL ({shown}); use "
            "'postgresql+asyncpg://...' (or 'postgresql+psycopg://...')"
        )
    if driver in _SYNC_DRIVERS:
        fixed = parsed.set(drivername="postgresql+asyncpg")
        what = f"the sync driver {driver!r}" if driver else "no driver (libpq's sync default)"
        raise ConfigurationError(
            f"the URL {shown} names {what}; resilient_db needs an async driver: use "
            f"'postgresql+asyncpg://' (or 'postgresql+psycopg://'), e.g. {safe_url(fixed)}"
        )
    if driver not in _ASYNC_DRIVERS:
        raise ConfigurationError(
            f"unknown PostgreSQL driver {driver!r} in {shown}; use 'postgresql+asyncpg://' "
            "or 'postgresql+psycopg://'"
        )
    module, extra = _ASYNC_DRIVERS[driver]
    if importlib.util.find_spec(module) is None:
        raise MissingDriverError(
            f"the URL {shown} needs the {module!r} package, which is not installed; "
            f"install it with: pip install '{extra}'"
        )
    if backend == "postgres":
        parsed = parsed.set(drivername=f"postgresql+{driver}")
    return parsed, ("asyncpg" if driver == "asyncpg" else "psycopg")
