"""``doctor``'s findings: pure functions of the engine settings and what the server said."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from resilient_db.engine._capacity import queue_pool_numbers
from resilient_db.engine._factory import (
    POOL_RECYCLE_WARN_BELOW,
    EngineSettings,
    short_recycle_message,
)
from resilient_db.engine._pool_policy import pre_ping_enabled

__all__ = ["Finding", "ServerFacts", "Severity", "server_findings", "static_findings"]


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
class ServerFacts:
    """What the server reported about itself and the connecting role."""

    settings: Mapping[str, str]
    role_limit: int
    db_limit: int
    is_superuser: bool
    in_recovery: bool


def _pool_numbers(engine: AsyncEngine, settings: EngineSettings | None) -> tuple[int, int, bool]:
    if settings is not None:
        return settings.pool_size, settings.max_overflow, settings.pool_pre_ping
    pool: Any = engine.sync_engine.pool
    if isinstance(pool, QueuePool):
        size, overflow, _ = queue_pool_numbers(pool)
    else:
        size, overflow = (int(pool.size()) if hasattr(pool, "size") else 1), 0
    return size, max(overflow, 0), pre_ping_enabled(engine)


def _timeout_findings(settings: EngineSettings) -> list[Finding]:
    out: list[Finding] = []
    args = settings.connect_args
    if settings.driver == "asyncpg":
        connect_timeout, command_timeout = args.get("timeout"), args.get("command_timeout")
    else:
        connect_timeout, command_timeout = args.get("connect_timeout"), args.get("tcp_user_timeout")
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
    if settings.pool_recycle < POOL_RECYCLE_WARN_BELOW:
        out.append(
            Finding(
                severity=Severity.WARNING,
                code="short_pool_recycle",
                message=short_recycle_message(settings.pool_recycle),
            )
        )
    return out


def static_findings(engine: AsyncEngine, settings: EngineSettings | None) -> list[Finding]:
    """Findings from the engine alone (no I/O)."""
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
        out.extend(_timeout_findings(settings))
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


def _too_large(demand_text: str, usable: int, budget: str, processes: int) -> Finding:
    fit = usable // processes
    if fit >= 1:
        advice = (
            f"lower pool_size + max_overflow to at most {fit} per process, run fewer "
            "processes, put PgBouncer in front, or raise max_connections"
        )
    else:
        advice = (
            f"the server cannot give each of {processes} processes even one connection: run "
            f"at most {usable} processes with pool_size=1, max_overflow=0, put PgBouncer in "
            "front (transaction pooling, pgbouncer=True), or raise max_connections"
        )
    return Finding(
        severity=Severity.ERROR,
        code="pool_too_large",
        message=f"the pools can open {demand_text} connections but the server leaves "
        f"{usable} for applications ({budget}); {advice}",
    )


def _capacity_findings(
    size: int, overflow: int, facts: ServerFacts, *, processes: int, admin_reserve: float
) -> list[Finding]:
    server = facts.settings
    demand = (size + overflow) * processes
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
    out: list[Finding] = []
    if demand > usable:
        out.append(_too_large(demand_text, usable, budget, processes))
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
    for limit, what in ((facts.role_limit, "role"), (facts.db_limit, "database")):
        if limit >= 0 and demand > limit and not (what == "role" and facts.is_superuser):
            out.append(
                Finding(
                    severity=Severity.ERROR,
                    code=f"{what}_connection_limit",
                    message=f"the {what}'s CONNECTION LIMIT is {limit} but the pools can open "
                    f"{demand_text}; lower the pool or ALTER {what.upper()} ... CONNECTION "
                    "LIMIT",
                )
            )
    return out


def _session_findings(recycle: float | None, facts: ServerFacts) -> list[Finding]:
    server = facts.settings
    out: list[Finding] = []
    idle_ms = int(server.get("idle_session_timeout", "0") or 0)
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
    if facts.in_recovery:
        out.append(
            Finding(
                severity=Severity.WARNING,
                code="standby",
                message="the server is a standby (pg_is_in_recovery() is true): writes will "
                "fail with 25006; point the URL at the primary for read-write work (or list "
                "every host with target_session_attrs=read-write)",
            )
        )
    return out


def server_findings(
    engine: AsyncEngine,
    settings: EngineSettings | None,
    facts: ServerFacts,
    *,
    processes: int,
    admin_reserve: float,
) -> list[Finding]:
    """Findings that compare the engine with what the server reported."""
    size, overflow, _ = _pool_numbers(engine, settings)
    recycle = settings.pool_recycle if settings is not None else _engine_recycle(engine)
    return [
        *_capacity_findings(
            size, overflow, facts, processes=processes, admin_reserve=admin_reserve
        ),
        *_session_findings(recycle, facts),
    ]


def _engine_recycle(engine: AsyncEngine) -> float | None:
    # no public API: the pool exposes size() and overflow() but not its limits
    value = getattr(engine.sync_engine.pool, "_recycle", -1)
    return None if value is None or value < 0 else float(value)
