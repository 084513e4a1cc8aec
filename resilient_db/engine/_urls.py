"""Database URL checks and rendering (never with the password)."""

from __future__ import annotations

import importlib.util
from typing import Literal

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from resilient_db._errors import ConfigurationError, MissingDriverError

__all__ = ["SESSION_ATTRS", "Driver", "check_url", "host_list", "safe_url", "single_host_url"]

Driver = Literal["asyncpg", "psycopg"]

#: ``target_session_attrs`` values both drivers accept (libpq 14+, asyncpg 0.25+).
SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")
_EXAMPLE = "postgresql+asyncpg://user@/db?host=h1:5432&host=h2:5432&target_session_attrs=read-write"

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
    return _normalize_hosts(parsed, shown), ("asyncpg" if driver == "asyncpg" else "psycopg")


def _values(url: URL, name: str) -> list[str]:
    raw = url.query.get(name)
    if raw is None:
        return []
    items = list(raw) if isinstance(raw, tuple) else [raw]
    return [part.strip() for item in items for part in str(item).split(",")]


def _host_port(token: str, default_port: int, shown: str) -> tuple[str, int]:
    host, sep, port_text = token.rpartition(":") if ":" in token else (token, "", "")
    if not host or ":" in host or host.startswith("/"):
        raise ConfigurationError(
            f"the multi-host URL {shown} has the host {token!r}, which is not 'name:port' "
            f"(IPv6 addresses and socket directories cannot be mixed into a host list); "
            f"write each host as name:port, e.g. {_EXAMPLE}"
        )
    if not sep:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigurationError(
            f"the multi-host URL {shown} gives host {host!r} the port {port_text!r}; a port is "
            f"an integer 1..65535, e.g. {_EXAMPLE}"
        )
    return host, int(port_text)


def _normalize_hosts(parsed: URL, shown: str) -> URL:
    """One multi-host form for both drivers: ``?host=h1:p1&host=h2:p2`` (SQLAlchemy's), with
    ``target_session_attrs=read-write`` unless the URL asks for another role."""
    attrs = _values(parsed, "target_session_attrs")
    if len(attrs) > 1 or (attrs and attrs[0] not in SESSION_ATTRS):
        raise ConfigurationError(
            f"target_session_attrs={','.join(attrs)!r} in {shown} is not one of "
            f"{', '.join(SESSION_ATTRS)}; use target_session_attrs=read-write for the primary"
        )
    tokens = _values(parsed, "host")
    if len(tokens) < 2:
        return parsed  # one host (or a socket directory): the drivers' own handling
    if parsed.host:
        raise ConfigurationError(
            f"the URL {shown} names the host {parsed.host!r} before the path and more hosts "
            f"in ?host=; put every host in ?host= and leave the part after '@' empty, e.g. "
            f"{_EXAMPLE}"
        )
    ports = _values(parsed, "port")
    if ports and (len(ports) != len(tokens) or any(":" in t for t in tokens)):
        raise ConfigurationError(
            f"the URL {shown} lists {len(tokens)} hosts and {len(ports)} ports in ?port=; give "
            f"each host its port as name:port instead, e.g. {_EXAMPLE}"
        )
    if ports:
        tokens = [f"{t}:{p}" for t, p in zip(tokens, ports, strict=True)]
    pairs = [_host_port(token, int(parsed.port or 5432), shown) for token in tokens]
    fixed = parsed.difference_update_query(["host", "port"]).set(port=None)
    fixed = fixed.update_query_pairs([("host", f"{host}:{port}") for host, port in pairs])
    if not attrs:
        fixed = fixed.update_query_dict({"target_session_attrs": "read-write"})
    return fixed


def host_list(url: URL) -> tuple[tuple[str, int], ...]:
    """The ``(host, port)`` pairs a (checked) URL names, in the order connects try them."""
    tokens = _values(url, "host")
    if len(tokens) >= 2:
        return tuple(_host_port(token, 5432, safe_url(url)) for token in tokens)
    host = tokens[0] if tokens else (url.host or "localhost")
    return ((host, int(url.port or 5432)),)


def single_host_url(url: URL, host: str, port: int) -> URL:
    """``url`` aimed at one of its hosts, with no role requirement (to ask each host)."""
    query = url.difference_update_query(["host", "port", "target_session_attrs"])
    return query.set(host=host, port=port)
