"""After the workload: collect the evidence (leaks, rows, xact status) and judge it."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace
from typing import Any

import anyio

from resilient_db.chaos._env import Target
from resilient_db.chaos._faults import FaultContext
from resilient_db.chaos._invariants import builtin_checks, run_invariant
from resilient_db.chaos._metrics import phase_metrics, recovery, timeline
from resilient_db.chaos._model import Check, Evidence, LeakState, OpRecord, Workload
from resilient_db.chaos._report_model import ScenarioReport
from resilient_db.chaos._scenarios import Observed, Scenario
from resilient_db.chaos._settings import Settings
from resilient_db.chaos._workers import Probe

__all__ = ["RunData", "judge"]

_XACT = (
    "SELECT CASE WHEN %s::text IS NULL OR %s::text = "
    "substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) "
    "THEN pg_xact_status(%s::text::xid8) END"
)


@dataclass(kw_only=True, slots=True)
class RunData:
    """What the phases produced (from one process or a whole fleet)."""

    records: list[OpRecord]
    probe: Probe
    fault_start: float
    fault_end: float
    end: float
    pool_checked_out: int
    breaker_state: str | None
    baseline_sessions: int
    breaker_stats: dict[str, Any] = field(default_factory=dict)
    fleet: dict[str, float] = field(default_factory=dict)


async def _leaks(target: Target, fctx: FaultContext, data: RunData, wait: float) -> LeakState:
    started = time.monotonic()
    target.admin = fctx.admin  # a failover may have moved the server
    sessions = await target.sessions(fctx.app_name)
    with anyio.move_on_after(wait):
        while sessions > data.baseline_sessions:
            await anyio.sleep(0.05)  # bounded poll
            sessions = await target.sessions(fctx.app_name)
    if sessions > data.baseline_sessions and target.pgbouncer is None:
        with contextlib.suppress(Exception):  # a diagnostic only
            rows = await target.admin.aquery(_LEFT, (fctx.app_name,))
            fctx.notes.append("sessions left: " + "; ".join(" ".join(map(str, r)) for r in rows))
    return LeakState(
        pool_checked_out=data.pool_checked_out,
        server_sessions=sessions,
        baseline=data.baseline_sessions,
        waited=round(time.monotonic() - started, 3),
    )


# state and wait of sessions left behind (never their query text: it may carry values)
_LEFT = (
    "SELECT pid, state, coalesce(wait_event_type || ':' || wait_event, '-'), "
    "round(extract(epoch FROM now() - state_change))::int || 's in state' "
    "FROM pg_stat_activity WHERE application_name = %s"
)


async def _xact_status(
    fctx: FaultContext, records: list[OpRecord], counts: dict[str, int]
) -> tuple[dict[str, str | None], list[dict[str, Any]]]:
    statuses: dict[str, str | None] = {}
    unknown: list[dict[str, Any]] = []
    for r in (r for r in records if r.outcome == "unknown"):
        status: str | None = None
        if r.xid is not None:
            try:
                status = await fctx.admin.ascalar(_XACT, (r.timeline, r.timeline, str(r.xid)))
            except Exception as exc:
                fctx.notes.append(f"pg_xact_status({r.xid}) failed: {type(exc).__name__}")
        statuses[r.op] = status
        unknown.append(
            {"op": r.op, "xid": r.xid, "xact_status": status, "rows": counts.get(r.op, 0)}
        )
    return statuses, unknown


async def _evidence(
    s: Settings, target: Target, workload: Workload, fctx: FaultContext, data: RunData
) -> tuple[Evidence, list[Check], list[dict[str, Any]]]:
    from resilient_db.chaos._engines import direct_engine

    leaks = await _leaks(target, fctx, data, s.leak_wait)
    ev = Evidence(
        records=data.records,
        applied=None,
        leaks=leaks,
        deadline=s.deadline,
        allowance=s.allowance,
        fault_start=data.fault_start,
        fault_end=data.fault_end,
        breaker_state=data.breaker_state,
        breaker_opens=sum(t.state == "open" for t in data.probe.transitions),
    )
    user: list[Check] = []
    async with direct_engine(fctx.direct_url) as engine, engine.connect() as conn:
        if workload.applied is not None:
            applied = {str(k): int(v) for k, v in (await workload.applied(conn)).items()}
            ev = replace(ev, applied=applied)
        statuses, unknown = await _xact_status(fctx, data.records, dict(ev.counts))
        ev = replace(ev, xact_status=statuses)
        for inv in workload.invariants:
            user.append(await run_invariant(inv, conn, ev))
    return ev, user, unknown


async def judge(
    s: Settings,
    scenario: Scenario,
    target: Target,
    workload: Workload,
    fctx: FaultContext,
    data: RunData,
    base: ScenarioReport,
) -> ScenarioReport:
    """The scenario's report: every check, the figures and the timeline."""
    ev, user, unknown = await _evidence(s, target, workload, fctx, data)
    probe = data.probe
    window = {"fault_start": data.fault_start, "fault_end": data.fault_end, "end": data.end}
    phases = phase_metrics(
        data.records, connects=probe.connects, transitions=probe.transitions, **window
    )
    rec = recovery(data.records, data.fault_end)
    checks = builtin_checks(ev) + user
    if scenario.expect is not None:
        obs = Observed(
            phases=phases,
            recovery=rec,
            transitions=probe.transitions,
            records=data.records,
            fault_start=data.fault_start,
            fault_end=data.fault_end,
            fleet=data.fleet,
        )
        checks += scenario.expect(obs)
    return replace(
        base,
        status="PASS" if all(c.passed for c in checks) else "FAIL",
        ops=len(data.records),
        phases=phases,
        recovery=rec,
        transitions=list(probe.transitions),
        breaker={
            "opens": ev.breaker_opens,
            "state_at_end": data.breaker_state,
            **data.breaker_stats,
        },
        checks=checks,
        unknown_ops=unknown,
        unit_events=dict(probe.unit_events.most_common()),
        notes=list(fctx.notes),
        timeline=timeline(
            data.records, connects=probe.connects, breaker=probe.breaker_samples, **window
        ),
        fleet=data.fleet,
    )
