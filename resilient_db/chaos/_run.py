"""One scenario: set up the target and the workload, drive the phases, collect and judge."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import anyio

from resilient_db.chaos._engines import build_database, direct_engine
from resilient_db.chaos._env import Environment, Target
from resilient_db.chaos._faults import FaultContext
from resilient_db.chaos._judge import RunData, judge
from resilient_db.chaos._model import Workload, WorkloadContext, WorkloadFactory
from resilient_db.chaos._report_model import ScenarioReport
from resilient_db.chaos._scenarios import Scenario
from resilient_db.chaos._workers import Driver, Probe
from resilient_db.units import Database

__all__ = ["direct_engine", "run_scenario"]

logger = logging.getLogger("resilient_db")


class _EventCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[getattr(record, "event", record.getMessage())] += 1


async def run_scenario(
    env: Environment, scenario: Scenario, factory: WorkloadFactory
) -> ScenarioReport:
    """Run one scenario; a scenario failure never raises (status ``ERROR`` instead)."""
    base = ScenarioReport(
        name=scenario.name, summary=scenario.summary, status="SKIP", driver=env.settings.driver_name
    )
    skip = env.skip_reason(scenario)
    if skip is not None:
        return replace(base, reason=skip)
    s = env.settings
    started = time.monotonic()
    budget = s.before + s.during + s.after + s.deadline + s.allowance + s.drain + 150
    counter = _EventCounter()
    logger.addHandler(counter)
    try:
        with anyio.fail_after(budget):
            async with env.target(scenario) as target:
                result = await _with_tables(env, scenario, target, factory, base)
    except Exception as exc:
        result = replace(base, status="ERROR", reason=f"{type(exc).__qualname__}: {exc}")
    finally:
        logger.removeHandler(counter)
    return replace(
        result,
        seconds=round(time.monotonic() - started, 2),
        log_events=dict(counter.counts.most_common()),
    )


def workload_context(env: Environment, scenario: Scenario, target: Target) -> WorkloadContext:
    """What the workload factory gets for ``scenario``."""
    return WorkloadContext(
        run_id=env.run_id,
        scenario=scenario.name,
        prefix=f"chaos_{env.run_id}_{scenario.name}",
        url=target.engine_url,
        application_name=f"rdb_chaos_{env.run_id}",
        deadline=env.settings.deadline,
        driver=env.settings.driver_name,
        concurrency=env.settings.concurrency,
        pgbouncer=target.pgbouncer is not None,
    )


async def _with_tables(
    env: Environment,
    scenario: Scenario,
    target: Target,
    factory: WorkloadFactory,
    base: ScenarioReport,
) -> ScenarioReport:
    wctx = workload_context(env, scenario, target)
    workload = factory(wctx)
    fctx = FaultContext(
        admin=target.admin,
        app_name=wctx.application_name,
        direct_url=target.direct_url,
        proxy=env.client if target.proxy_name else None,
        proxy_name=target.proxy_name,
        primary=target.primary,
        standby=target.standby,
        pgbouncer=target.pgbouncer,
        netns=target.netns,
    )
    if workload.setup is not None:
        async with direct_engine(target.direct_url) as engine, engine.begin() as conn:
            await workload.setup(conn)
    try:
        if scenario.processes:
            from resilient_db.chaos._fleet import run_fleet

            data = await run_fleet(env, scenario, target, wctx, fctx)
        else:
            data = await _drive(env, scenario, target, workload, wctx, fctx)
        return await judge(env.settings, scenario, target, workload, fctx, data, base)
    finally:
        if workload.teardown is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(15):
                try:
                    async with direct_engine(fctx.direct_url) as engine, engine.begin() as conn:
                        await workload.teardown(conn)
                except Exception as exc:  # keep the result; say what was left behind
                    fctx.notes.append(f"teardown failed, {wctx.prefix}_* may remain: {exc}")


@dataclass(kw_only=True, slots=True)
class _Phases:
    fault_start: float = 0.0
    fault_end: float = 0.0
    end: float = 0.0
    notes: list[str] = field(default_factory=list)


async def _drive(
    env: Environment,
    scenario: Scenario,
    target: Target,
    workload: Workload,
    wctx: WorkloadContext,
    fctx: FaultContext,
) -> RunData:
    s = env.settings
    baseline = await target.sessions(wctx.application_name)
    db = build_database(workload, wctx)
    probe = Probe(origin=time.monotonic())
    probe.attach(db)
    try:
        driver = Driver(
            db,
            workload,
            prefix=wctx.prefix,
            concurrency=s.concurrency,
            rate=s.rate,
            seed=s.seed,
            origin=probe.origin,
        )
        times = await _phases(env, scenario, db, driver, probe, fctx)
        checked_out = int(db.engine.sync_engine.pool.checkedout())  # type: ignore[attr-defined]
        state = db.breaker.state.value if db.breaker is not None else None
        stats = breaker_stats(db)
    finally:
        with anyio.CancelScope(shield=True):
            await db.engine.dispose()
            probe.detach(db)
    fctx.notes.extend(times.notes)
    return RunData(
        records=list(driver.records),
        probe=probe,
        fault_start=times.fault_start,
        fault_end=times.fault_end,
        end=times.end,
        pool_checked_out=checked_out,
        breaker_state=state,
        baseline_sessions=baseline,
        breaker_stats=stats,
    )


async def _phases(
    env: Environment,
    scenario: Scenario,
    db: Database,
    driver: Driver,
    probe: Probe,
    fctx: FaultContext,
) -> _Phases:
    s, out = env.settings, _Phases()
    stop, done, sampling = anyio.Event(), anyio.Event(), anyio.Event()

    async def drive() -> None:
        try:
            await driver.run(stop)
        finally:
            done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(drive)
        tg.start_soon(probe.sample, db, sampling)
        await _warm_up(driver, s.concurrency)
        await anyio.sleep(s.before)
        out.fault_start = probe.now()
        async with scenario.fault(fctx):
            await anyio.sleep(s.during)
        out.fault_end = probe.now()
        await anyio.sleep(s.after)
        out.end = probe.now()
        await _settle_breaker(db, out)
        stop.set()
        with anyio.move_on_after(s.deadline + s.allowance + s.drain):
            await done.wait()
        if not done.is_set():
            driver.abandon()
            out.notes.append("calls still running after the drain time: cancelled")
            tg.cancel_scope.cancel()
        sampling.set()
    return out


async def _warm_up(driver: Driver, calls: int, wait: float = 10.0) -> None:
    """Let the pool fill before the clock of the before phase starts: wait (bounded) until
    ``calls`` calls ended, so a slow first connect cannot leave the phase empty."""
    with anyio.move_on_after(wait):
        while len(driver.records) < calls:  # noqa: ASYNC110 - no event to wait on
            await anyio.sleep(0.02)  # bounded poll


async def _settle_breaker(db: Database, out: _Phases, wait: float = 5.0) -> None:
    """Give an open breaker up to ``wait`` s of continued traffic to close (bounded poll)."""
    breaker = db.breaker
    if breaker is None or breaker.state.value == "closed":
        return
    started = time.monotonic()
    with anyio.move_on_after(wait):
        while breaker.state.value != "closed":  # noqa: ASYNC110 - no event to wait on
            await anyio.sleep(0.05)  # bounded poll
    out.notes.append(
        f"breaker {breaker.state.value} {time.monotonic() - started:.2f}s after the after phase"
    )


def breaker_stats(db: Database) -> dict[str, Any]:
    """The breaker's counters at the end (``consecutive_trips`` resets when it closes)."""
    if db.breaker is None:
        return {}
    b = db.breaker.statistics()
    return {
        "consecutive_trips": b.trips,
        "rejected_total": b.rejected_total,
        "failures_total": b.failures_total,
        "successes_total": b.successes_total,
        "probes": b.probes,
        "probe_failures": b.probe_failures,
    }
