"""Health checks that test the server, and the key that names an endpoint.

:func:`engine_health_check` builds the breaker's probe: a **fresh** driver connection
(never one from the pool), ``SELECT 1``, closed. A pooled connection says nothing about the
server after a half-open network (frozen sockets, no FIN/RST): the probe would hang on it for
its whole timeout while new connections already reach a healthy server. The connection is
built from ``engine.url`` (host, port, user, password, database and URL query options), with
its own connect timeout, and the whole probe is bounded by ``timeout``.

:func:`endpoint_key` names the endpoint a breaker protects: host, port, database and role.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from resilient_db._errors import ConfigurationError
from resilient_db._validate import config_error
from resilient_db.engine._multihost import host_list

__all__ = ["EndpointKey", "endpoint_key", "engine_health_check"]

#: The URL query options that select a role (libpq ``target_session_attrs``).
_ROLE_OPTIONS = ("target_session_attrs",)


@dataclass(frozen=True, slots=True)
class EndpointKey:
    """Where a breaker points: ``host:port/database`` plus the role asked for, if any.

    ``str(key)`` is the stable name used for breakers, logs and fleet-store keys.
    """

    host: str
    port: int
    database: str
    role: str | None = None

    def __str__(self) -> str:
        base = f"{self.host}:{self.port}/{self.database}"
        return base if self.role is None else f"{base}?role={self.role}"


def endpoint_key(engine: AsyncEngine | URL) -> EndpointKey:
    """The endpoint of ``engine`` (or of a URL): host, port, database and role.

    Two engines on the same server and database share a key (and so a breaker); a URL that
    asks for a role (``target_session_attrs=read-write``, ``standby``...) gets its own.
    """
    url = engine.url if isinstance(engine, AsyncEngine) else engine
    role: str | None = None
    for option in _ROLE_OPTIONS:
        value = url.query.get(option)
        if isinstance(value, tuple):
            value = value[0] if value else None
        if value:
            role = str(value)
            break
    host, port = url.host, url.port
    hosts = url.query.get("host")  # multi-host URLs: ?host=h1:5432&host=h2:5433
    if host is None and hosts:
        host = ",".join(hosts) if isinstance(hosts, tuple) else str(hosts)
    return EndpointKey(
        host=host or "localhost",
        port=int(port or 5432),
        database=url.database or "",
        role=role,
    )


def _check_timeout(timeout: object) -> float:
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise config_error(
            "engine_health_check",
            "timeout",
            timeout,
            "a finite number of seconds > 0",
            "pass e.g. timeout=2.0",
        )
    return float(timeout)


def _connect_params(engine: AsyncEngine) -> dict[str, Any]:
    """The driver's keyword arguments for ``engine.url`` (as the dialect computes them)."""
    cargs, cparams = engine.dialect.create_connect_args(engine.url)
    if cargs:  # pragma: no cover - both PostgreSQL async dialects use keywords only
        raise ConfigurationError(
            f"engine_health_check: the {engine.dialect.driver!r} dialect passes positional "
            "connect arguments, which the probe cannot rebuild; pass your own health_check"
        )
    return dict(cparams)


async def _probe_asyncpg(params: dict[str, Any], timeout: float) -> None:
    import asyncpg

    params.pop("async_fallback", None)
    params.pop("prepared_statement_cache_size", None)
    params.pop("prepared_statement_name_func", None)
    conn = await asyncpg.connect(**params, timeout=timeout)
    try:
        await conn.fetchval("SELECT 1")
    finally:
        conn.terminate()  # no goodbye round trip: the probe is over either way


async def _probe_psycopg(params: dict[str, Any], timeout: float) -> None:
    import psycopg

    params.setdefault("connect_timeout", max(1, math.ceil(timeout)))
    conn = await psycopg.AsyncConnection.connect(**params, autocommit=True)
    try:
        await conn.execute("SELECT 1")
    finally:
        await conn.close()


def engine_health_check(
    engine: AsyncEngine, *, timeout: float = 2.0
) -> Callable[[], Awaitable[None]]:
    """A breaker health check for ``engine`` that tests the server, not the pool.

    Each call opens a new driver connection built from ``engine.url`` (with a connect
    timeout), runs ``SELECT 1`` and closes it; the whole call is bounded by ``timeout``
    seconds (it raises ``TimeoutError`` beyond that). Pass it to
    ``CircuitBreaker(..., health_check=engine_health_check(engine))``.
    """
    limit = _check_timeout(timeout)
    driver = engine.dialect.driver
    if driver == "asyncpg":
        probe: Callable[[dict[str, Any], float], Awaitable[None]] = _probe_asyncpg
    elif driver in ("psycopg", "psycopg_async"):
        probe = _probe_psycopg
    else:
        raise ConfigurationError(
            f"engine_health_check supports the asyncpg and psycopg drivers, not {driver!r}; "
            "pass your own health_check to the CircuitBreaker"
        )

    async def health_check() -> None:
        params = _connect_params(engine)
        with anyio.fail_after(limit):
            await _probe_any(probe, _per_host(driver, params), limit)

    return health_check


def _per_host(driver: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """One parameter set per host of a multi-host URL (a single set otherwise)."""
    hosts = host_list(driver, params)
    if not hosts:
        return [params]
    return [{**params, "host": host, "port": port} for host, port in hosts]


async def _probe_any(
    probe: Callable[[dict[str, Any], float], Awaitable[None]],
    variants: list[dict[str, Any]],
    limit: float,
) -> None:
    """Pass when any host passes: hosts are probed side by side, the first success wins.

    Probing them in turn would let a silent host (a crashed old primary whose packets are
    dropped) spend the whole timeout on every probe, so the breaker would never close after
    a failover although the promoted standby answers at once.
    """
    if len(variants) == 1:
        await probe(variants[0], limit)
        return
    errors: list[Exception] = []
    passed = False
    async with anyio.create_task_group() as group:

        async def one(params: dict[str, Any]) -> None:
            nonlocal passed
            try:
                await probe(params, limit)
            except Exception as exc:  # this host cannot serve us; another may
                errors.append(exc)
                return
            passed = True
            group.cancel_scope.cancel()

        for params in variants:
            group.start_soon(one, params)
    if not passed:
        raise errors[-1]
