"""``doctor``: compare an engine's configuration with the live server(s) it points at."""

from __future__ import annotations

import socket
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import create_async_engine as _sa_create_async_engine
from sqlalchemy.pool import NullPool

from resilient_db._errors import ResilientDBError
from resilient_db._validate import config_error
from resilient_db.engine._doctor_checks import (
    Finding,
    ServerFacts,
    Severity,
    server_findings,
    static_findings,
)
from resilient_db.engine._factory import (
    ShortPoolRecycleWarning,
    create_async_engine,
    engine_settings,
)
from resilient_db.engine._urls import host_list, safe_url, single_host_url

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
_ROLE_SQL = text("SELECT pg_is_in_recovery()")


@dataclass(frozen=True, kw_only=True, slots=True)
class DoctorReport:
    """Everything ``doctor`` found; ``server`` holds the settings it read (no secrets).

    ``hosts`` maps each ``host:port`` of the URL to ``primary``, ``standby`` or
    ``unreachable: <why>``; ``primary`` is the primary's ``host:port`` (``None``: none).
    """

    url: str
    processes: int
    findings: tuple[Finding, ...]
    server: Mapping[str, str] = field(default_factory=dict)
    hosts: Mapping[str, str] = field(default_factory=dict)
    primary: str | None = None

    @property
    def ok(self) -> bool:
        """True when no finding is an error."""
        return not any(f.severity is Severity.ERROR for f in self.findings)


def _redact(message: str, url: URL | None) -> str:
    if url is not None and url.password:
        message = message.replace(str(url.password), "***")
    return message


def _driver_error(exc: BaseException) -> BaseException:
    """The innermost cause: the driver's (or the OS's) own error, not SQLAlchemy's wrapper."""
    seen = {id(exc)}
    inner = getattr(exc, "orig", None) or exc
    while inner.__cause__ is not None and id(inner.__cause__) not in seen:
        seen.add(id(inner))
        inner = inner.__cause__
    return inner


def _one_line(exc: BaseException) -> str:
    lines = [" ".join(line.split()) for line in str(exc).splitlines()]
    joined = "; ".join(line for line in lines if line)
    return joined[:400] if joined else type(exc).__name__


def _hint(err: BaseException, detail: str, url: URL) -> str:
    low = detail.lower()
    state = str(getattr(err, "sqlstate", None) or getattr(err, "pgcode", None) or "")
    user, db = url.username or "(default)", url.database or "(default)"
    if state == "3D000" or ("database" in low and "does not exist" in low):
        return (
            f"the database {db!r} does not exist on that server: create it "
            f'(CREATE DATABASE "{db}", or createdb {db}) or fix the name at the end of the URL'
        )
    if "role" in low and "does not exist" in low:
        return (
            f"the role {user!r} does not exist on that server: create it "
            f"(CREATE ROLE \"{user}\" LOGIN PASSWORD '...') or fix the user name in the URL"
        )
    if state == "28P01" or "password authentication failed" in low:
        return f"the server refused the password of {user!r}: fix the password in the URL"
    if "pg_hba.conf" in low:
        return "the server's pg_hba.conf has no entry for this host, user and database: add one"
    if state == "53300" or "too many clients" in low or "connection slots" in low:
        return "the server is out of connection slots: lower the pools (see the findings)"
    if state == "57P03" or "starting up" in low or "shutting down" in low:
        return "the server is starting up or shutting down: try again in a moment"
    if "target attribute" in low or "read-only" in low or "hot standby" in low:
        return "no listed host is a primary (read-write): promote a standby or add the primary"
    if isinstance(err, socket.gaierror) or "resolve" in low or "name or service" in low:
        return f"the host name {url.host or ''!r} does not resolve: fix the host in the URL"
    if isinstance(err, ConnectionRefusedError) or "refused" in low:
        return "nothing accepts connections there: is the server up, on that host and port?"
    if isinstance(err, TimeoutError) or "timeout" in low or "timed out" in low:
        return (
            "no answer: packets are dropped (firewall, wrong address, a black-holed network); "
            "check the network path to the host"
        )
    return "check host, port, credentials and that the server is up"


def connect_error_message(
    exc: BaseException | None, url: URL, *, elapsed: float, timeout: float
) -> str:
    """One line saying why a connect failed, how long it took, and what to do."""
    shown = safe_url(url)
    if exc is None:  # doctor's own time limit ran out
        return _redact(
            f"could not connect to {shown}: no answer within {timeout:g}s (doctor's timeout); "
            "packets are dropped (firewall, wrong address, a black-holed network) or the "
            "server is overloaded",
            url,
        )
    err = _driver_error(exc)
    detail = _one_line(err)
    return _redact(
        f"could not connect to {shown} (failed after {elapsed:.2f}s: "
        f"{type(err).__name__}: {detail}); {_hint(err, detail, url)}",
        url,
    )


def _make_engine(target: str | URL, engine_options: Mapping[str, Any]) -> AsyncEngine:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShortPoolRecycleWarning)  # a finding instead
        return create_async_engine(target, **engine_options)


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
    :func:`resilient_db.create_async_engine` when ``target`` is a URL. A multi-host URL has
    each host asked whether it is the primary (``report.hosts``, ``report.primary``).
    """
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise config_error(
            "doctor",
            "processes",
            processes,
            "an integer >= 1",
            "pass the number of processes that each hold a pool, e.g. processes=8",
        )
    if (
        isinstance(admin_reserve, bool)
        or not isinstance(admin_reserve, int | float)
        or not 0 <= admin_reserve < 1
    ):
        raise config_error(
            "doctor",
            "admin_reserve",
            admin_reserve,
            "a fraction in [0, 1)",
            "pass e.g. admin_reserve=0.15 (15 % of max_connections kept for administrators)",
        )
    if isinstance(target, AsyncEngine):
        engine = target
    else:
        try:
            engine = _make_engine(target, engine_options)
        except (ResilientDBError, TypeError, ImportError) as exc:
            return DoctorReport(
                url=safe_url(target),
                processes=processes,
                findings=(Finding(severity=Severity.ERROR, code="config", message=str(exc)),),
            )
    try:
        return await _examine(engine, processes, admin_reserve, timeout)
    finally:
        if not isinstance(target, AsyncEngine):
            await engine.dispose()


async def _examine(
    engine: AsyncEngine, processes: int, admin_reserve: float, timeout: float
) -> DoctorReport:
    url, settings = engine.url, engine_settings(engine)
    shown = safe_url(url)
    findings = static_findings(engine, settings)
    hosts = host_list(url)
    roles: dict[str, str] = {}
    if len(hosts) > 1:
        roles = await _host_roles(engine, hosts, timeout)
        findings.extend(_host_findings(roles))
        findings.extend(_role_findings(url))
    started = time.perf_counter()
    failure: BaseException | None = None
    with anyio.move_on_after(timeout):
        try:
            async with engine.connect() as conn:
                rows = (await conn.execute(_SETTINGS_SQL)).all()
                limits = (await conn.execute(_LIMITS_SQL)).one()
        except Exception as exc:  # any failure to reach the server is itself the finding
            failure = exc
        else:
            failure = None
            server = {str(name): str(value) for name, value in rows}
            facts = _facts(server, limits)
            findings.extend(
                server_findings(
                    engine, settings, facts, processes=processes, admin_reserve=admin_reserve
                )
            )
            if len(hosts) == 1:
                where = f"{hosts[0][0]}:{hosts[0][1]}"
                roles = {where: "standby" if facts.in_recovery else "primary"}
            return _report(shown, processes, findings, server, roles)
    message = connect_error_message(
        failure, url, elapsed=time.perf_counter() - started, timeout=timeout
    )
    findings.append(Finding(severity=Severity.ERROR, code="connect", message=message))
    return _report(shown, processes, findings, {}, roles)


def _facts(server: dict[str, str], limits: Any) -> ServerFacts:
    in_recovery, role_limit, db_limit, is_super = limits
    server["in_recovery"] = str(bool(in_recovery)).lower()
    return ServerFacts(
        settings=server,
        role_limit=int(role_limit) if role_limit is not None else -1,
        db_limit=int(db_limit) if db_limit is not None else -1,
        is_superuser=bool(is_super),
        in_recovery=bool(in_recovery),
    )


def _report(
    shown: str,
    processes: int,
    findings: list[Finding],
    server: Mapping[str, str],
    roles: Mapping[str, str],
) -> DoctorReport:
    primaries = [where for where, role in roles.items() if role == "primary"]
    return DoctorReport(
        url=shown,
        processes=processes,
        findings=tuple(findings),
        server=server,
        hosts=dict(roles),
        primary=primaries[0] if primaries else None,
    )


async def _host_roles(
    engine: AsyncEngine, hosts: tuple[tuple[str, int], ...], timeout: float
) -> dict[str, str]:
    """Ask every host on its own connection whether it is in recovery (concurrently)."""
    settings = engine_settings(engine)
    connect_args = dict(settings.connect_args) if settings is not None else {}
    roles: dict[str, str] = {f"{h}:{p}": "unreachable: no answer" for h, p in hosts}

    async def ask(host: str, port: int) -> None:
        url = single_host_url(engine.url, host, port)
        probe = _sa_create_async_engine(url, poolclass=NullPool, connect_args=connect_args)
        started = time.perf_counter()
        try:
            async with probe.connect() as conn:
                in_recovery = (await conn.execute(_ROLE_SQL)).scalar_one()
            roles[f"{host}:{port}"] = "standby" if in_recovery else "primary"
        except Exception as exc:
            err = _driver_error(exc)
            detail = _redact(_one_line(err), url)
            elapsed = time.perf_counter() - started
            roles[f"{host}:{port}"] = f"unreachable: {type(err).__name__} after {elapsed:.2f}s"
            roles[f"{host}:{port}"] += f" ({detail})"
        finally:
            await probe.dispose()

    with anyio.move_on_after(timeout):
        async with anyio.create_task_group() as tg:
            for host, port in hosts:
                tg.start_soon(ask, host, port)
    return roles


def _host_findings(roles: Mapping[str, str]) -> list[Finding]:
    primaries = [where for where, role in roles.items() if role == "primary"]
    listing = "; ".join(f"{where} {role}" for where, role in roles.items())
    if not primaries:
        return [
            Finding(
                severity=Severity.ERROR,
                code="no_primary",
                message=f"none of the {len(roles)} hosts is a primary ({listing}): writes fail "
                "until a standby is promoted; new connections will find it by themselves",
            )
        ]
    if len(primaries) > 1:
        return [
            Finding(
                severity=Severity.ERROR,
                code="several_primaries",
                message=f"{len(primaries)} hosts accept writes ({listing}): a split brain after "
                "a failover? Connections go to the first one listed; fence the old primary",
            )
        ]
    return [
        Finding(
            severity=Severity.INFO,
            code="hosts",
            message=f"primary: {primaries[0]} ({listing})",
        )
    ]


def _role_findings(url: URL) -> list[Finding]:
    attrs = url.query.get("target_session_attrs")
    if attrs in ("read-write", "primary"):
        return []
    return [
        Finding(
            severity=Severity.WARNING,
            code="target_session_attrs",
            message=f"the URL lists several hosts with target_session_attrs={attrs}: "
            "connections may land on a standby, where writes fail with 25006; use "
            "target_session_attrs=read-write for read-write work",
        )
    ]
