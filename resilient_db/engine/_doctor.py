"""``doctor``: compare an engine's configuration with the live server it points at."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import anyio
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from resilient_db._errors import ResilientDBError
from resilient_db.engine._factory import EngineSettings, create_async_engine, engine_settings
from resilient_db.engine._pool_policy import pre_ping_enabled
from resilient_db.engine._urls import safe_url

__all__ = ["DoctorReport", "Finding", "Severity", "doctor"]

DEFAULT_ADMIN_RESERVE = 0.15
_SETTINGS_SQL = text(
    "SELECT name, setting FROM pg_settings WHERE name IN ('max_connections', "
    "'superuser_reserved_connections', 'reserved_connections', 'idle_session_timeout', "
    "'idle_in_transaction_session_timeout', 'statement_timeout', 'server_version')"
)
_LIMITS_SQL = text(
    "SELECT pg_is_in_recovery(), "
    "(SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user), "
    "(SELECT datconnlimit FROM pg_database WHERE datname = current_database()), "
    "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
)


class Severity(StrEnum):
    """How much a finding matters; ``error`` makes ``resilient-db doctor`` exit non-zero."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True, kw_only=True, slots=True)
class Finding:
    """One observation: a stable ``code``, its ``severity`` and a message saying the fix."""

    severity: Severity
    code: str
    message: str


@dataclass(frozen=True, kw_only=True, slots=True)
class DoctorReport:
    """Everything ``doctor`` found; ``server`` holds the settings it read (no secrets)."""

    url: str
    processes: int
    findings: tuple[Finding, ...]
    server: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no finding is an error."""
        return not any(f.severity is Severity.ERROR for f in self.findings)


def _redact(message: str, url: URL | None) -> str:
    if url is not None and url.password:
        message = message.replace(str(url.password), "***")
    return message


async def doctor(
    target: str | URL | AsyncEngine,
    *,
    processes: int = 1,
    admin_reserve: float = DEFAULT_ADMIN_RESERVE,
    timeout: float = 15.0,
    **engine_options: Any,
) -> DoctorReport:
    """Check ``target`` (a URL, or an engine) against the live server.

    ``processes`` is how many processes (workers, replicas) each open such a pool; their
    ``(pool_size + max_overflow)`` connections must fit in ``max_connections`` minus the
    superuser-reserved slots minus an ``admin_reserve`` share (default 15 %) kept free for
    humans and migrations. ``engine_options`` are passed to
    :func:`resilient_db.create_async_engine` when ``target`` is a URL.
    """
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes must be an integer >= 1, got {processes!r}")
    if not 0 <= admin_reserve < 1:
        raise ValueError(f"admin_reserve must be a fraction in [0, 1), got {admin_reserve!r}")

    findings: list[Finding] = []
    own_engine = not isinstance(target, AsyncEngine)
    if isinstance(target, AsyncEngine):
        engine = target
    else:
        try:
            engine = create_async_engine(target, **engine_options)
        except (ResilientDBError, TypeError, ImportError) as exc:
            shown = safe_url(target)
            return DoctorReport(
                url=shown,
                processes=processes,
                findings=(Finding(severity=Severity.ERROR, code="config", message=str(exc)),),
            )
    url = engine.url
    shown = safe_url(url)
    settings = engine_settings(engine)
    try:
        findings.extend(_static_findings(engine, settings))
        try:
            with anyio.fail_after(timeout):
                async with engine.connect() as conn:
                    rows = (await conn.execute(_SETTINGS_SQL)).all()
                    limits = (await conn.execute(_LIMITS_SQL)).one()
        except Exception as exc:  # any failure to reach the server is itself the finding
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            findings.append(
                Finding(
                    severity=Severity.ERROR,
                    code="connect",
                    message=_redact(
                        f"could not connect to {shown} within {timeout:g}s ({detail}); "
                        "check host, port, credentials and that the server is up",
                        url,
                    ),
                )
            )
            return DoctorReport(url=shown, processes=processes, findings=tuple(findings))
    finally:
        if own_engine:
            await engine.dispose()

    server = {str(name): str(value) for name, value in rows}
    in_recovery, role_limit, db_limit, is_super = limits
    server["in_recovery"] = str(bool(in_recovery)).lower()
    findings.extend(
        _server_findings(
            engine,
            settings,
            server,
            processes=processes,
            admin_reserve=admin_reserve,
            role_limit=int(role_limit) if role_limit is not None else -1,
            db_limit=int(db_limit) if db_limit is not None else -1,
            is_superuser=bool(is_super),
            in_recovery=bool(in_recovery),
        )
    )
    return DoctorReport(url=shown, processes=processes, findings=tuple(findings), server=server)


def _pool_numbers(engine: AsyncEngine, settings: EngineSettings | None) -> tuple[int, int, bool]:
    if settings is not None:
        return settings.pool_size, settings.max_overflow, settings.pool_pre_ping
    pool: Any = engine.sync_engine.pool
    size = int(pool.size()) if hasattr(pool, "size") else 1
    overflow = int(getattr(pool, "_max_overflow", 0))
    return size, max(overflow, 0), pre_ping_enabled(engine)


def _static_findings(engine: AsyncEngine, settings: EngineSettings | None) -> list[Finding]:
    out: list[Finding] = []
    if settings is None:
        out.append(
            Finding(
                severity=Severity.WARNING,
                code="timeouts_unknown",
                message="the engine was not made by resilient_db.create_async_engine, so its "
                "connect and command timeouts cannot be verified; without them a black-holed "
                "socket hangs queries and pool pre-ping forever",
            )
        )
    else:
        args = settings.connect_args
        if settings.driver == "asyncpg":
            connect_timeout, command_timeout = args.get("timeout"), args.get("command_timeout")
        else:
            connect_timeout, command_timeout = (
                args.get("connect_timeout"),
                args.get("tcp_user_timeout"),
            )
        if not connect_timeout:
            out.append(
                Finding(
                    severity=Severity.ERROR,
                    code="no_connect_timeout",
                    message="no connect timeout is set: a connect to an unreachable host hangs "
                    "until the OS gives up (minutes); pass connect_timeout=5",
                )
            )
        if not command_timeout:
            out.append(
                Finding(
                    severity=Severity.ERROR,
                    code="no_command_timeout",
                    message="no command timeout is set: a query on a black-holed connection "
                    "hangs forever; pass command_timeout=30",
                )
            )
    _, _, pre_ping = _pool_numbers(engine, settings)
    if not pre_ping:
        out.append(
            Finding(
                severity=Severity.WARNING,
                code="no_pre_ping",
                message="pool_pre_ping is off: connections killed while idle (restart, "
                "failover, idle timeouts) fail the next caller's query; set pool_pre_ping=True",
            )
        )
    return out


def _server_findings(
    engine: AsyncEngine,
    settings: EngineSettings | None,
    server: Mapping[str, str],
    *,
    processes: int,
    admin_reserve: float,
    role_limit: int,
    db_limit: int,
    is_superuser: bool,
    in_recovery: bool,
) -> list[Finding]:
    out: list[Finding] = []
    size, overflow, _ = _pool_numbers(engine, settings)
    per_process = size + overflow
    demand = per_process * processes
    max_conn = int(server.get("max_connections", "100"))
    su_reserved = int(server.get("superuser_reserved_connections", "3"))
    reserved = int(server.get("reserved_connections", "0"))
    available = max_conn - su_reserved - reserved
    admin = math.ceil(available * admin_reserve)
    usable = max(available - admin, 0)
    budget = (
        f"max_connections {max_conn} - superuser_reserved_connections {su_reserved}"
        + (f" - reserved_connections {reserved}" if reserved else "")
        + f" - {admin_reserve:.0%} admin reserve {admin} = {usable}"
    )
    demand_text = (
        f"{processes} process(es) x (pool_size {size} + max_overflow {overflow}) = {demand}"
    )
    if demand > usable:
        fit = max(usable // processes, 0)
        out.append(
            Finding(
                severity=Severity.ERROR,
                code="pool_too_large",
                message=f"the pools can open {demand_text} connections but the server leaves "
                f"{usable} for applications ({budget}); lower pool_size + max_overflow to at "
                f"most {fit} per process, run fewer processes, put PgBouncer in front, or "
                "raise max_connections",
            )
        )
    elif demand > 0.8 * usable:
        out.append(
            Finding(
                severity=Severity.WARNING,
                code="pool_near_limit",
                message=f"the pools can open {demand_text} connections, over 80% of the "
                f"{usable} the server leaves for applications ({budget}); other clients "
                "and deploy overlap (old and new processes) may hit 'too many clients'",
            )
        )
    else:
        out.append(
            Finding(
                severity=Severity.INFO,
                code="pool_capacity",
                message=f"{demand_text} connections fit in the {usable} available ({budget})",
            )
        )
    for limit, what in ((role_limit, "role"), (db_limit, "database")):
        if limit >= 0 and demand > limit and not (what == "role" and is_superuser):
            out.append(
                Finding(
                    severity=Severity.ERROR,
                    code=f"{what}_connection_limit",
                    message=f"the {what}'s CONNECTION LIMIT is {limit} but the pools can open "
                    f"{demand_text}; lower the pool or ALTER {what.upper()} ... CONNECTION "
                    "LIMIT",
                )
            )
    idle_ms = int(server.get("idle_session_timeout", "0") or 0)
    recycle = settings.pool_recycle if settings is not None else _engine_recycle(engine)
    if idle_ms > 0 and (recycle is None or recycle * 1000 >= idle_ms):
        out.append(
            Finding(
                severity=Severity.WARNING,
                code="recycle_vs_idle_session_timeout",
                message=f"the server ends sessions idle for {idle_ms / 1000:g}s "
                f"(idle_session_timeout) but pool_recycle is "
                f"{'off' if recycle is None else f'{recycle:g}s'}: idle pooled connections "
                f"die on the server; set pool_recycle below {idle_ms / 1000:g}s",
            )
        )
    if int(server.get("idle_in_transaction_session_timeout", "0") or 0) == 0:
        out.append(
            Finding(
                severity=Severity.INFO,
                code="no_idle_in_transaction_timeout",
                message="idle_in_transaction_session_timeout is 0 on the server: a client that "
                "dies mid-transaction can hold locks until TCP notices; consider 60s",
            )
        )
    if in_recovery:
        out.append(
            Finding(
                severity=Severity.WARNING,
                code="standby",
                message="the server is a standby (pg_is_in_recovery() is true): writes will "
                "fail with 25006; point the URL at the primary for read-write work",
            )
        )
    return out


def _engine_recycle(engine: AsyncEngine) -> float | None:
    value = getattr(engine.sync_engine.pool, "_recycle", -1)
    return None if value is None or value < 0 else float(value)
