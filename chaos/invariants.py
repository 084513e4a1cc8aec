"""The invariants checked after every scenario (pure functions of the evidence).

The evidence is what the callers were told (:class:`~chaos.workload.OpRecord`), what the
database holds afterwards (:class:`LedgerSnapshot`), what ``pg_xact_status`` says about the
xids of operations whose outcome was reported unknown, and the connection counts
(:class:`LeakState`). Each check returns a :class:`Check` with PASS/FAIL, a one-line detail
and the offending operation ids (a few, for the report).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from chaos.workload import OpRecord

__all__ = [
    "INVARIANTS",
    "Check",
    "LeakState",
    "LedgerSnapshot",
    "check_invariants",
]

#: Names of the invariants, in report order.
INVARIANTS = (
    "money_conserved",
    "acknowledged_exactly_once",
    "failed_absent",
    "no_duplicates_or_strays",
    "unknown_settled",
    "every_call_returned",
    "deadlines_held",
    "no_leaked_connections",
    "recovered",
)

_SHOW = 5


@dataclass(frozen=True, kw_only=True, slots=True)
class Check:
    """The verdict of one invariant."""

    name: str
    passed: bool
    detail: str
    offenders: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class LedgerSnapshot:
    """The database after a scenario: balances and every row of the operations table."""

    balances: Mapping[int, int]
    #: ``(op, src, dst, amount)`` per row.
    rows: Sequence[tuple[str, int, int, int]]

    @property
    def op_counts(self) -> Counter[str]:
        """Rows per operation id."""
        return Counter(op for op, *_ in self.rows)


@dataclass(frozen=True, kw_only=True, slots=True)
class LeakState:
    """Connections after a scenario.

    ``pool_checked_out``: the engine pool's checked-out count once every call returned.
    ``server_sessions``: backends with the suite's ``application_name`` after the engine was
    disposed (polled until back to ``baseline`` or the deadline); ``waited``: seconds polled.
    """

    pool_checked_out: int
    server_sessions: int
    baseline: int = 0
    waited: float = 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class Evidence:
    """Everything :func:`check_invariants` needs."""

    records: Sequence[OpRecord]
    ledger: LedgerSnapshot
    total: int
    initial_balance: int
    #: ``pg_xact_status`` per unknown op id (``None``: the server could not say).
    xact_status: Mapping[str, str | None] = field(default_factory=dict)
    leaks: LeakState
    deadline: float
    allowance: float
    fault_end: float | None


def _sample(ops: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(ops)[:_SHOW])


def _check(name: str, bad: Sequence[str], ok: str, fail: str) -> Check:
    if not bad:
        return Check(name=name, passed=True, detail=ok)
    return Check(name=name, passed=False, detail=fail, offenders=_sample(bad))


def check_invariants(ev: Evidence) -> list[Check]:
    """Run every invariant on the evidence; one :class:`Check` each, in :data:`INVARIANTS` order."""
    records = ev.records
    counts = ev.ledger.op_counts
    by_outcome: dict[str, list[OpRecord]] = {"acknowledged": [], "failed": [], "unknown": []}
    for r in records:
        by_outcome.setdefault(r.outcome, []).append(r)
    checks: list[Check] = []

    # 1. money conserved, and every balance explained by the ledger rows
    total = sum(ev.ledger.balances.values())
    expected: dict[int, int] = dict.fromkeys(ev.ledger.balances, ev.initial_balance)
    for _, src, dst, amount in ev.ledger.rows:
        expected[src] = expected.get(src, ev.initial_balance) - amount
        expected[dst] = expected.get(dst, ev.initial_balance) + amount
    drift = [
        f"account {a}: {ev.ledger.balances.get(a)} != {want}"
        for a, want in sorted(expected.items())
        if ev.ledger.balances.get(a) != want
    ]
    if total != ev.total:
        checks.append(
            Check(
                name="money_conserved",
                passed=False,
                detail=f"total {total} != {ev.total} (lost or created {total - ev.total})",
                offenders=tuple(drift[:_SHOW]),
            )
        )
    else:
        checks.append(
            _check(
                "money_conserved",
                drift,
                f"total {total}; every balance matches the {len(ev.ledger.rows)} ledger rows",
                f"{len(drift)} balance(s) disagree with the ledger rows",
            )
        )

    # 2. every acknowledged op present exactly once
    acked = by_outcome["acknowledged"]
    missing = [r.op for r in acked if counts.get(r.op, 0) == 0]
    twice = [r.op for r in acked if counts.get(r.op, 0) > 1]
    checks.append(
        _check(
            "acknowledged_exactly_once",
            missing + twice,
            f"{len(acked)} acknowledged, all present once",
            f"{len(missing)} acknowledged op(s) lost, {len(twice)} applied more than once",
        )
    )

    # 3. every failed op absent
    failed = by_outcome["failed"]
    applied = [r.op for r in failed if counts.get(r.op, 0) > 0]
    checks.append(
        _check(
            "failed_absent",
            applied,
            f"{len(failed)} failed, none applied",
            f"{len(applied)} op(s) reported failed were applied",
        )
    )

    # 4. no op twice, no row without a record
    known = {r.op for r in records}
    dup = [op for op, n in counts.items() if n > 1]
    strays = [op for op in counts if op not in known]
    checks.append(
        _check(
            "no_duplicates_or_strays",
            dup + strays,
            f"{len(ev.ledger.rows)} rows, {len(counts)} distinct ops, all known",
            f"{len(dup)} op(s) applied more than once, {len(strays)} row(s) from no known op",
        )
    )

    # 5. unknown outcomes settled through the recorded xid, consistent with the ledger
    unknown = by_outcome["unknown"]
    wrong: list[str] = []
    via_ledger: list[str] = []
    settled = Counter[str]()
    for r in unknown:
        present = counts.get(r.op, 0)
        status = ev.xact_status.get(r.op)
        if status == "committed":
            settled["committed"] += 1
            if present != 1:
                wrong.append(f"{r.op}: xid {r.xid} committed but {present} row(s)")
        elif status == "aborted":
            settled["aborted"] += 1
            if present != 0:
                wrong.append(f"{r.op}: xid {r.xid} aborted but {present} row(s)")
        else:
            # xid unknown to the server (e.g. lost with a failed primary): the ledger
            # (unique op id) settles it, as an application would.
            via_ledger.append(r.op)
            settled["present" if present == 1 else "absent"] += 1
            if present > 1:
                wrong.append(f"{r.op}: {present} rows")
    if not unknown:
        checks.append(Check(name="unknown_settled", passed=True, detail="no op left unknown"))
    else:
        detail = f"{len(unknown)} unknown: " + ", ".join(
            f"{k} {v}" for k, v in sorted(settled.items())
        )
        if via_ledger:
            detail += f" ({len(via_ledger)} settled by op id: xid unknown to the server)"
        checks.append(
            Check(
                name="unknown_settled",
                passed=not wrong,
                detail=detail if not wrong else f"{len(wrong)} contradiction(s); {detail}",
                offenders=_sample(wrong or [r.op for r in unknown]),
            )
        )

    # 6. every call returned (none hung past the suite's patience)
    hung = [r.op for r in records if r.outcome == "hung"]
    checks.append(
        _check(
            "every_call_returned",
            hung,
            f"{len(records)} calls, all returned",
            f"{len(hung)} call(s) never returned",
        )
    )

    # 7. no call outlived its deadline by more than the cancellation allowance
    limit = ev.deadline + ev.allowance
    late = [f"{r.op} ({r.duration:.2f}s)" for r in records if r.duration > limit]
    longest = max((r.duration for r in records), default=0.0)
    checks.append(
        _check(
            "deadlines_held",
            late,
            f"longest call {longest:.2f}s <= {ev.deadline:g}s deadline + {ev.allowance:g}s",
            f"{len(late)} call(s) took longer than {limit:g}s (longest {longest:.2f}s)",
        )
    )

    # 8. no leaked connection
    leaks = ev.leaks
    leak_bad = []
    if leaks.pool_checked_out:
        leak_bad.append(f"pool: {leaks.pool_checked_out} checked out")
    if leaks.server_sessions > leaks.baseline:
        leak_bad.append(
            f"server: {leaks.server_sessions} sessions (baseline {leaks.baseline}) "
            f"after {leaks.waited:.1f}s"
        )
    checks.append(
        Check(
            name="no_leaked_connections",
            passed=not leak_bad,
            detail="; ".join(leak_bad)
            or f"pool 0 checked out; server sessions back to {leaks.baseline} "
            f"in {leaks.waited:.2f}s",
        )
    )

    # 9. the service recovered once the fault was removed
    if ev.fault_end is None:
        checks.append(Check(name="recovered", passed=True, detail="no fault window"))
    else:
        after_ok = [r for r in acked if r.started >= ev.fault_end]
        checks.append(
            Check(
                name="recovered",
                passed=bool(after_ok),
                detail=f"{len(after_ok)} acknowledged after the fault was removed"
                if after_ok
                else "no operation succeeded after the fault was removed",
            )
        )
    return checks
