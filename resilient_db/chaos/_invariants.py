"""The built-in invariants (pure functions of the :class:`Evidence`), and running the user's.

The operation-id invariants need the workload's ``applied()`` (rows per op id); the others
hold for any workload.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

from sqlalchemy.ext.asyncio import AsyncConnection

from resilient_db.chaos._model import Check, Evidence, Invariant

__all__ = ["BUILTIN_INVARIANTS", "builtin_checks", "run_invariant"]

_SHOW = 5


def _sample(ops: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(ops)[:_SHOW])


def _check(name: str, bad: Sequence[str], ok: str, fail: str) -> Check:
    if not bad:
        return Check(name=name, passed=True, detail=ok)
    return Check(name=name, passed=False, detail=fail, offenders=_sample(bad))


def acknowledged_exactly_once(ev: Evidence) -> Check:
    """Every acknowledged op is in the database exactly once."""
    counts, acked = ev.counts, ev.by_outcome("acknowledged")
    missing = [r.op for r in acked if counts.get(r.op, 0) == 0]
    twice = [r.op for r in acked if counts.get(r.op, 0) > 1]
    return _check(
        "acknowledged_exactly_once",
        missing + twice,
        f"{len(acked)} acknowledged, all present once",
        f"{len(missing)} acknowledged op(s) lost, {len(twice)} applied more than once",
    )


def failed_absent(ev: Evidence) -> Check:
    """No op the caller was told failed left anything behind."""
    counts, failed = ev.counts, ev.by_outcome("failed")
    applied = [r.op for r in failed if counts.get(r.op, 0) > 0]
    return _check(
        "failed_absent",
        applied,
        f"{len(failed)} failed, none applied",
        f"{len(applied)} op(s) reported failed were applied",
    )


def no_duplicates_or_strays(ev: Evidence) -> Check:
    """No op id twice; no row from an op the workload did not send."""
    counts = ev.counts
    known = {r.op for r in ev.records}
    dup = [op for op, n in counts.items() if n > 1]
    strays = [op for op in counts if op not in known]
    return _check(
        "no_duplicates_or_strays",
        dup + strays,
        f"{sum(counts.values())} rows, {len(counts)} distinct ops, all known",
        f"{len(dup)} op(s) applied more than once, {len(strays)} row(s) from no known op",
    )


def unknown_settled(ev: Evidence) -> Check:
    """Nothing left unknown: every ``CommitOutcomeUnknown`` op is settled by its op id (at
    most one row). ``pg_xact_status`` of its xid is reported beside it; a disagreement is
    shown, not failed: after a crash restart the server may hand the same xid to another
    transaction (the lost one's WAL never reached disk), so the op id is the authority."""
    unknown, counts = ev.by_outcome("unknown"), ev.counts
    if not unknown:
        return Check(name="unknown_settled", passed=True, detail="no op left unknown")
    doubled = [f"{r.op}: {counts[r.op]} rows" for r in unknown if counts.get(r.op, 0) > 1]
    settled = Counter("present" if counts.get(r.op, 0) else "absent" for r in unknown)
    disagree = []
    for r in unknown:
        status, present = ev.xact_status.get(r.op), counts.get(r.op, 0)
        if status in ("committed", "aborted") and present != (status == "committed"):
            disagree.append(f"{r.op}: xid {r.xid} {status} but {present} row(s)")
    detail = f"{len(unknown)} unknown, settled by op id: " + ", ".join(
        f"{k} {v}" for k, v in sorted(settled.items())
    )
    if disagree:
        detail += f"; pg_xact_status disagrees for {len(disagree)} (xid reused after a restart?)"
    return Check(
        name="unknown_settled",
        passed=not doubled,
        detail=detail if not doubled else f"{len(doubled)} applied twice; {detail}",
        offenders=_sample(doubled or disagree or [r.op for r in unknown]),
    )


def every_call_returned(ev: Evidence) -> Check:
    """No call was still running after the drain time."""
    hung = [r.op for r in ev.records if r.outcome == "hung"]
    return _check(
        "every_call_returned",
        hung,
        f"{len(ev.records)} calls, all returned",
        f"{len(hung)} call(s) never returned",
    )


def deadlines_held(ev: Evidence) -> Check:
    """No call outlived its deadline by more than the cancellation allowance."""
    limit = ev.deadline + ev.allowance
    late = [f"{r.op} ({r.duration:.2f}s)" for r in ev.records if r.duration > limit]
    longest = max((r.duration for r in ev.records), default=0.0)
    return _check(
        "deadlines_held",
        late,
        f"longest call {longest:.2f}s <= {ev.deadline:g}s deadline + {ev.allowance:g}s",
        f"{len(late)} call(s) took longer than {limit:g}s (longest {longest:.2f}s)",
    )


def no_leaked_connections(ev: Evidence) -> Check:
    """Pool empty once every call returned; server sessions back to the baseline."""
    leaks = ev.leaks
    bad = []
    if leaks.pool_checked_out:
        bad.append(f"pool: {leaks.pool_checked_out} checked out")
    if leaks.server_sessions > leaks.baseline:
        bad.append(
            f"server: {leaks.server_sessions} sessions (baseline {leaks.baseline}) "
            f"after {leaks.waited:.1f}s"
        )
    return Check(
        name="no_leaked_connections",
        passed=not bad,
        detail="; ".join(bad)
        or f"pool 0 checked out; server sessions back to {leaks.baseline} in {leaks.waited:.2f}s",
    )


def recovered(ev: Evidence) -> Check:
    """At least one op started after the fault was removed succeeded."""
    after = [r for r in ev.by_outcome("acknowledged") if r.started >= ev.fault_end]
    return Check(
        name="recovered",
        passed=bool(after),
        detail=f"{len(after)} acknowledged after the fault was removed"
        if after
        else "no operation succeeded after the fault was removed",
    )


def breaker_closed(ev: Evidence) -> Check:
    """The circuit breaker is closed once the run settled."""
    if ev.breaker_state is None:
        return Check(name="breaker_closed", passed=True, detail="the Database has no breaker")
    return Check(
        name="breaker_closed",
        passed=ev.breaker_state == "closed",
        detail=f"{ev.breaker_state} at the end (opened {ev.breaker_opens} time(s))",
    )


_OP_ID = (acknowledged_exactly_once, failed_absent, no_duplicates_or_strays, unknown_settled)
_ALWAYS = (every_call_returned, deadlines_held, no_leaked_connections, recovered, breaker_closed)
#: Names of the built-in invariants, in report order.
BUILTIN_INVARIANTS: tuple[str, ...] = tuple(f.__name__ for f in _OP_ID + _ALWAYS)


def builtin_checks(ev: Evidence) -> list[Check]:
    """The built-in invariants; the op-id ones only when the workload counts its rows."""
    fns: tuple[Callable[[Evidence], Check], ...] = (
        _OP_ID + _ALWAYS if ev.applied is not None else _ALWAYS
    )
    return [fn(ev) for fn in fns]


async def run_invariant(inv: Invariant, conn: AsyncConnection, ev: Evidence) -> Check:
    """Run a user's invariant; its result (or the error it raised) as a :class:`Check`."""
    try:
        pending: object = inv.check(conn, ev)
        result = await pending if inspect.isawaitable(pending) else pending
    except Exception as exc:
        return Check(
            name=inv.name,
            passed=False,
            detail=f"the check raised {type(exc).__qualname__}: {exc}",
            source="workload",
        )
    if isinstance(result, Check):
        return Check(
            name=result.name,
            passed=result.passed,
            detail=result.detail,
            offenders=result.offenders,
            source="workload",
        )
    if isinstance(result, tuple) and len(result) == 2:
        return Check(
            name=inv.name, passed=bool(result[0]), detail=str(result[1]), source="workload"
        )
    passed = bool(result)
    return Check(
        name=inv.name, passed=passed, detail="held" if passed else "violated", source="workload"
    )
