"""Runs scenarios: sets up the fault proxy and the targets, drives the workload, checks.

The fault proxy is either the embedded Toxiproxy-compatible server (started in its own thread,
with a proxy created in front of the database) or a real Toxiproxy given by its API URL
(``TOXIPROXY_URL``), whose pre-created proxy (``postgres`` by default) must forward to the
database given by ``--url``. Both are driven through the same client.
"""

from __future__ import annotations

import logging
import secrets
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import urlsplit

import anyio
import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import make_url

import resilient_db
from chaos.invariants import Check, Evidence, LeakState, LedgerSnapshot, check_invariants
from chaos.metrics import BreakerTransition, Phase, PhaseMetrics, Recovery, phase_metrics, recovery
from chaos.scenarios import SCENARIOS, FaultContext, Observed, Scenario
from chaos.workload import INITIAL_BALANCE, Admin, Ledger, Workload
from resilient_db import (
    BreakerEvent,
    CircuitBreaker,
    Database,
    RetryPolicy,
    UnitEvent,
    create_async_engine,
)
from resilient_db.toxiproxy import AsyncToxiproxyClient, ThreadedToxiproxyServer, ToxiproxyServer

__all__ = [
    "DEFAULT_URL",
    "ScenarioResult",
    "Settings",
    "SuiteResult",
    "run_scenario",
    "run_suite",
]

DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
EXTERNAL_PROXY = "postgres"
Status = Literal["PASS", "FAIL", "SKIP", "ERROR"]

logger = logging.getLogger("resilient_db")


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    """How the suite runs. Times in seconds; ``rate`` is per worker (ops/s)."""

    url: str = DEFAULT_URL
    toxiproxy_url: str | None = None
    proxy_name: str = EXTERNAL_PROXY
    concurrency: int = 8
    rate: float = 25.0
    accounts: int = 20
    seed: int = 1
    before: float = 2.0
    during: float = 5.0
    after: float = 5.0
    deadline: float = 3.0
    allowance: float = 2.0
    pool_size: int | None = None
    max_overflow: int = 2
    drain: float = 10.0
    leak_wait: float = 10.0
    breaker_window: float = 2.0
    breaker_minimum_calls: int = 10
    breaker_open_for: float = 1.0

    def __post_init__(self) -> None:
        for name in ("before", "during", "after", "deadline", "allowance", "rate"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
        if not 1 <= self.concurrency <= 200:
            raise ValueError(f"concurrency must be in 1..200, got {self.concurrency!r}")
        if self.accounts < 2:
            raise ValueError(f"accounts must be >= 2, got {self.accounts!r}")

    @classmethod
    def quick(cls, **overrides: Any) -> Settings:
        """Short phases for CI (about 7 s per scenario; ``during`` still outlasts the deadline)."""
        return cls(**{"before": 1.0, "during": 3.2, "after": 3.0, **overrides})


@dataclass(frozen=True, kw_only=True, slots=True)
class ScenarioResult:
    """Everything measured and checked in one scenario."""

    name: str
    summary: str
    status: Status
    reason: str | None = None
    seconds: float = 0.0
    ops: int = 0
    phases: list[PhaseMetrics] = field(default_factory=list)
    recovery: Recovery | None = None
    transitions: list[BreakerTransition] = field(default_factory=list)
    breaker: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    unknown_ops: list[dict[str, Any]] = field(default_factory=list)
    unit_events: dict[str, int] = field(default_factory=dict)
    log_events: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True, slots=True)
class SuiteResult:
    """All scenario results; ``passed`` is False when any scenario FAILed or ERRORed."""

    settings: Settings
    environment: dict[str, Any]
    results: list[ScenarioResult]
    seconds: float

    @property
    def passed(self) -> bool:
        """True when no scenario failed or errored."""
        return all(r.status in ("PASS", "SKIP") for r in self.results)


# -- environment -----------------------------------------------------------------------------


def admin_dsn(url: str) -> str:
    """The libpq DSN (for psycopg) of a SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass(kw_only=True, slots=True)
class _Target:
    admin: Admin
    proxy_name: str
    engine_url: str
    primary: Any = None
    standby: Any = None


class _EventCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[getattr(record, "event", record.getMessage())] += 1


class Environment:
    """The fault proxy (embedded or external) and the targets scenarios run against."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.external = settings.toxiproxy_url is not None
        self._server: ThreadedToxiproxyServer | None = None
        self.client: AsyncToxiproxyClient | None = None
        self.proxy_host = "127.0.0.1"
        self.proxy_name = settings.proxy_name
        self.info: dict[str, Any] = {}
        self.run_id = secrets.token_hex(3)

    async def __aenter__(self) -> Environment:
        s = self.settings
        if s.toxiproxy_url is not None:
            self.client = AsyncToxiproxyClient(s.toxiproxy_url, timeout=10.0)
            self.proxy_host = urlsplit(self.client.url).hostname or "127.0.0.1"
            await self._clean(s.proxy_name)
            mode = "external"
        else:
            server = ToxiproxyServer.in_thread(seed=s.seed)
            await anyio.to_thread.run_sync(server.start)
            self._server = server
            self.client = AsyncToxiproxyClient(server.url, timeout=10.0)
            self.proxy_name = f"chaos_{self.run_id}"
            db = make_url(s.url)
            await self.client.create_proxy(
                name=self.proxy_name, upstream=f"{db.host or '127.0.0.1'}:{db.port or 5432}"
            )
            mode = "embedded"
        admin = Admin(admin_dsn(s.url))
        self.info = {
            "toxiproxy": mode,
            "toxiproxy_url": self.client.url,
            "toxiproxy_version": await self.client.version(),
            "proxy": self.proxy_name,
            "database": make_url(s.url).render_as_string(hide_password=True),
            "server_version": await admin.ascalar("SHOW server_version"),
            "resilient_db": resilient_db.__version__,
            "sqlalchemy": sqlalchemy.__version__,
            "python": sys.version.split()[0],
        }
        return self

    async def __aexit__(self, *exc: object) -> None:
        with anyio.CancelScope(shield=True):
            if self.client is not None and self.external:
                await self._clean(self.settings.proxy_name)
            if self._server is not None:
                await anyio.to_thread.run_sync(self._server.close)

    async def _clean(self, name: str) -> None:
        assert self.client is not None
        for toxic in await self.client.toxics(name):
            await self.client.remove_toxic(name, toxic.name)
        await self.client.enable(name)

    def _url_via(self, url: str, port: int) -> str:
        return (
            make_url(url).set(host=self.proxy_host, port=port).render_as_string(hide_password=False)
        )

    def skip_reason(self, scenario: Scenario) -> str | None:
        """Why ``scenario`` cannot run here, or ``None``."""
        if scenario.needs not in ("cluster", "standby"):
            return None
        if self.external:
            return (
                "needs a private PostgreSQL cluster behind the proxy; an external Toxiproxy "
                "cannot reach local clusters"
            )
        from resilient_db.testing import PgClusterError, find_pg_bindir

        try:
            find_pg_bindir()
        except PgClusterError as exc:
            return f"no local PostgreSQL server binaries found ({exc})"
        return None

    @asynccontextmanager
    async def target(self, scenario: Scenario) -> AsyncIterator[_Target]:
        """The database, proxy and admin access for ``scenario`` (clusters made here)."""
        assert self.client is not None
        s = self.settings
        if scenario.needs in ("proxy", "server"):
            await self._clean(self.proxy_name)
            info = await self.client.get_proxy(self.proxy_name)
            yield _Target(
                admin=Admin(admin_dsn(s.url)),
                proxy_name=self.proxy_name,
                engine_url=self._url_via(s.url, info.listen_port),
            )
            return
        from resilient_db.testing import PgCluster

        def make() -> tuple[PgCluster, PgCluster | None]:
            primary = PgCluster.create(settings={"max_connections": "100"})
            try:
                primary.start()
                standby = None
                if scenario.needs == "standby":
                    standby = primary.create_standby()
                    standby.start()
                    primary.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
                    primary.execute("SELECT pg_reload_conf()")
                    primary.wait_for_replay(standby)
            except BaseException:
                primary.destroy()
                raise
            return primary, standby

        primary, standby = await anyio.to_thread.run_sync(make)
        name = f"chaos_{self.run_id}_{scenario.name}"
        try:
            info = await self.client.create_proxy(name=name, upstream=f"127.0.0.1:{primary.port}")
            try:
                yield _Target(
                    admin=Admin(primary.dsn),
                    proxy_name=name,
                    engine_url=self._url_via(primary.url(), info.listen_port),
                    primary=primary,
                    standby=standby,
                )
            finally:
                with anyio.CancelScope(shield=True):
                    await self.client.delete_proxy(name)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(primary.destroy)


# -- one scenario ------------------------------------------------------------------------------


async def run_scenario(env: Environment, scenario: Scenario) -> ScenarioResult:
    """Run one scenario; never raises for a scenario failure (status ``ERROR`` instead)."""
    skip = env.skip_reason(scenario)
    if skip is not None:
        return ScenarioResult(
            name=scenario.name, summary=scenario.summary, status="SKIP", reason=skip
        )
    s = env.settings
    started = time.monotonic()
    budget = s.before + s.during + s.after + s.deadline + s.allowance + s.drain + 120
    counter = _EventCounter()
    logger.addHandler(counter)
    try:
        with anyio.fail_after(budget):
            async with env.target(scenario) as target:
                result = await _run(env, scenario, target)
    except Exception as exc:
        result = ScenarioResult(
            name=scenario.name,
            summary=scenario.summary,
            status="ERROR",
            reason=f"{type(exc).__qualname__}: {exc}",
        )
    finally:
        logger.removeHandler(counter)
    return replace(
        result,
        seconds=round(time.monotonic() - started, 2),
        log_events=dict(counter.counts.most_common()),
    )


async def _server_sessions(admin: Admin, app_name: str) -> int:
    return int(
        await admin.ascalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app_name,)
        )
    )


async def _run(env: Environment, scenario: Scenario, target: _Target) -> ScenarioResult:
    s = env.settings
    assert env.client is not None
    prefix = f"chaos_{env.run_id}_{scenario.name}"
    app_name = f"rdb_chaos_{env.run_id}"
    ledger = Ledger(prefix=prefix, accounts=s.accounts)
    admin = target.admin
    await anyio.to_thread.run_sync(ledger.create, admin)
    ctx = FaultContext(
        proxy=env.client,
        proxy_name=target.proxy_name,
        admin=admin,
        app_name=app_name,
        primary=target.primary,
        standby=target.standby,
    )
    try:
        return await _drive(env, scenario, target, ledger, ctx)
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(15):
            try:
                await anyio.to_thread.run_sync(ledger.drop, ctx.admin)
            except Exception as exc:  # keep the result; say what was left behind
                ctx.notes.append(f"could not drop {prefix}_*: {exc}")


async def _drive(
    env: Environment, scenario: Scenario, target: _Target, ledger: Ledger, ctx: FaultContext
) -> ScenarioResult:
    s = env.settings
    baseline = await _server_sessions(ctx.admin, ctx.app_name)
    pool_size = s.pool_size if s.pool_size is not None else s.concurrency
    engine = create_async_engine(
        target.engine_url,
        pool_size=pool_size,
        max_overflow=s.max_overflow,
        application_name=ctx.app_name,
    )
    origin = time.monotonic()

    def now() -> float:
        return time.monotonic() - origin

    connects: list[float] = []
    transitions: list[BreakerTransition] = []

    def on_connect(*args: Any) -> None:
        connects.append(now())

    unit_events: Counter[str] = Counter()

    def on_unit(ev: UnitEvent) -> None:
        detail = ev.outcome if ev.event.startswith("commit.") else ev.category
        unit_events[f"{ev.event}({detail})"] += 1

    def on_breaker(ev: BreakerEvent) -> None:
        transitions.append(
            BreakerTransition(
                at=round(now(), 3),
                previous=ev.previous.value,
                state=ev.state.value,
                reason=ev.reason,
            )
        )

    event.listen(engine.sync_engine, "do_connect", on_connect)
    try:
        holder: list[Database] = []

        async def health_check() -> None:
            await holder[0].health_check()

        breaker = CircuitBreaker(
            f"chaos-{scenario.name}",
            window=s.breaker_window,
            minimum_calls=s.breaker_minimum_calls,
            failure_rate=0.5,
            open_for=s.breaker_open_for,
            health_check=health_check,
            probe_interval=0.25,
            listeners=[on_breaker],
        )
        db = Database(
            engine,
            retry=RetryPolicy(deadline=None),
            breaker=breaker,
            deadline=s.deadline,
            name="transfer",
            listeners=[on_unit],
        )
        holder.append(db)
        workload = Workload(
            db, ledger, concurrency=s.concurrency, rate=s.rate, seed=s.seed, origin=origin
        )
        stop = anyio.Event()
        done = anyio.Event()

        async def drive_workload() -> None:
            try:
                await workload.run(stop)
            finally:
                done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(drive_workload)
            await anyio.sleep(s.before)
            fault_start = now()
            async with scenario.fault(ctx):
                await anyio.sleep(s.during)
            fault_end = now()
            await anyio.sleep(s.after)
            end = now()
            stop.set()
            with anyio.move_on_after(s.deadline + s.allowance + s.drain):
                await done.wait()
            if not done.is_set():
                workload.abandon()
                ctx.notes.append("calls still running after the drain time: cancelled")
                tg.cancel_scope.cancel()
        checked_out = int(engine.sync_engine.pool.checkedout())  # type: ignore[attr-defined]
        breaker_stats = breaker.statistics()
    finally:
        with anyio.CancelScope(shield=True):
            await engine.dispose()
            event.remove(engine.sync_engine, "do_connect", on_connect)

    # connections back to the baseline on the server (polled with a deadline)
    waited_from = time.monotonic()
    sessions = await _server_sessions(ctx.admin, ctx.app_name)
    with anyio.move_on_after(s.leak_wait):
        while sessions > baseline:
            await anyio.sleep(0.05)
            sessions = await _server_sessions(ctx.admin, ctx.app_name)
    leaks = LeakState(
        pool_checked_out=checked_out,
        server_sessions=sessions,
        baseline=baseline,
        waited=time.monotonic() - waited_from,
    )

    records = list(workload.records)
    balances = dict(await ctx.admin.aquery(f"SELECT id, balance FROM {ledger.accounts_table}"))
    rows = [
        (str(op), int(src), int(dst), int(amount))
        for op, src, dst, amount in await ctx.admin.aquery(
            f"SELECT op, src, dst, amount FROM {ledger.ops_table}"
        )
    ]
    snapshot = LedgerSnapshot(balances=balances, rows=rows)
    statuses: dict[str, str | None] = {}
    unknown_ops: list[dict[str, Any]] = []
    counts = snapshot.op_counts
    for r in records:
        if r.outcome != "unknown":
            continue
        status: str | None = None
        if r.xid is not None:
            try:
                status = await ctx.admin.ascalar(
                    "SELECT CASE WHEN %s::text IS NULL OR %s::text = "
                    "substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) "
                    "THEN pg_xact_status(%s::text::xid8) END",
                    (r.timeline, r.timeline, str(r.xid)),
                )
            except Exception as exc:
                ctx.notes.append(f"pg_xact_status({r.xid}) failed: {type(exc).__name__}")
            if status is None and r.timeline is not None:
                ctx.notes.append(
                    f"xid {r.xid} (timeline {r.timeline}) is not known to the server now "
                    "(another timeline after a failover, or too old): settled by the op id"
                )
        statuses[r.op] = status
        unknown_ops.append(
            {"op": r.op, "xid": r.xid, "xact_status": status, "rows": counts.get(r.op, 0)}
        )

    checks = check_invariants(
        Evidence(
            records=records,
            ledger=snapshot,
            total=ledger.total,
            initial_balance=INITIAL_BALANCE,
            xact_status=statuses,
            leaks=leaks,
            deadline=s.deadline,
            allowance=s.allowance,
            fault_end=fault_end,
        )
    )
    phases = [
        Phase(name="before", start=0.0, end=fault_start),
        Phase(name="during", start=fault_start, end=fault_end),
        Phase(name="after", start=fault_end, end=end),
    ]
    per_phase = phase_metrics(records, phases, connects=connects, transitions=transitions)
    rec = recovery(records, fault_end)
    if scenario.expect is not None:
        checks.extend(
            scenario.expect(
                Observed(
                    phases=per_phase,
                    recovery=rec,
                    transitions=transitions,
                    records=records,
                    fault_start=fault_start,
                )
            )
        )
    return ScenarioResult(
        name=scenario.name,
        summary=scenario.summary,
        status="PASS" if all(c.passed for c in checks) else "FAIL",
        ops=len(records),
        phases=per_phase,
        recovery=rec,
        transitions=transitions,
        breaker={
            "trips": breaker_stats.trips,
            "rejected_total": breaker_stats.rejected_total,
            "failures_total": breaker_stats.failures_total,
            "successes_total": breaker_stats.successes_total,
            "probes": breaker_stats.probes,
            "probe_failures": breaker_stats.probe_failures,
            "state": breaker_stats.state.value,
        },
        checks=checks,
        unknown_ops=unknown_ops,
        unit_events=dict(unit_events.most_common()),
        notes=ctx.notes,
    )


# -- the suite -------------------------------------------------------------------------------


async def run_suite(
    settings: Settings,
    scenarios: Sequence[Scenario] = SCENARIOS,
    *,
    on_result: Any = None,
) -> SuiteResult:
    """Run ``scenarios`` one after the other; ``on_result(result)`` after each."""
    started = time.monotonic()
    results: list[ScenarioResult] = []
    async with Environment(settings) as env:
        for scenario in scenarios:
            result = await run_scenario(env, scenario)
            results.append(result)
            if on_result is not None:
                on_result(result)
        info = env.info
    return SuiteResult(
        settings=settings,
        environment=info,
        results=results,
        seconds=round(time.monotonic() - started, 2),
    )
