"""Figures of one scenario: per-phase tables, recovery times and the timeline (pure functions).

Phases are ``before`` (calls that *ended* before the fault was injected), ``after`` (calls
that *started* after it was removed) and ``during`` (every other call: it met the fault).
The table and the checks use the same rule, :func:`phase_of`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from resilient_db.chaos._model import OpRecord

__all__ = [
    "BreakerTransition",
    "PhaseMetrics",
    "Recovery",
    "Timeline",
    "percentile",
    "phase_metrics",
    "phase_of",
    "recovery",
    "timeline",
]

PHASES = ("before", "during", "after")


@dataclass(frozen=True, kw_only=True, slots=True)
class BreakerTransition:
    """One breaker state change seen by the engine's listener."""

    at: float
    previous: str
    state: str
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class PhaseMetrics:
    """Figures of one phase. Latencies are milliseconds over its calls."""

    phase: str
    seconds: float
    ops: int
    acknowledged: int
    failed: int
    unknown: int
    ops_per_s: float
    fail_fast: int
    errors: dict[str, int] = field(default_factory=dict)
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    connects: int = 0
    breaker_transitions: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class Recovery:
    """Seconds from the fault's removal to the first success and to steady >= 95 % success."""

    first_success: float | None
    to_95: float | None


@dataclass(frozen=True, kw_only=True, slots=True)
class Timeline:
    """Per-``bucket`` series for the HTML report (index i covers ``[i*bucket, (i+1)*bucket)``)."""

    bucket: float
    fault_start: float
    fault_end: float
    ok_per_s: list[float]
    errors: dict[str, list[int]]
    p50_ms: list[float]
    p95_ms: list[float]
    p99_ms: list[float]
    connects: list[int]
    #: ``[t, state]`` samples of the breaker (empty without a breaker).
    breaker: list[tuple[float, str]]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by the nearest-rank method; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def phase_of(r: OpRecord, fault_start: float, fault_end: float) -> str:
    """``before`` / ``during`` / ``after``: the phase the call belongs to."""
    if r.ended < fault_start:
        return "before"
    if r.started >= fault_end:
        return "after"
    return "during"


def _in(t: float, start: float, end: float, last: bool) -> bool:
    return start <= t < end or (last and t >= end)


def phase_metrics(
    records: Sequence[OpRecord],
    *,
    fault_start: float,
    fault_end: float,
    end: float,
    connects: Sequence[float] = (),
    transitions: Sequence[BreakerTransition] = (),
) -> list[PhaseMetrics]:
    """One :class:`PhaseMetrics` per phase (connects and transitions by their time)."""
    bounds = {"before": (0.0, fault_start), "during": (fault_start, fault_end)}
    bounds["after"] = (fault_end, end)
    out = []
    for name in PHASES:
        start, stop = bounds[name]
        last = name == "after"
        mine = [r for r in records if phase_of(r, fault_start, fault_end) == name]
        seconds = max(stop - start, 1e-9)
        errors = Counter(r.error_type or "?" for r in mine if r.outcome != "acknowledged")
        lat = [r.duration * 1000 for r in mine]
        acked = sum(r.outcome == "acknowledged" for r in mine)
        out.append(
            PhaseMetrics(
                phase=name,
                seconds=round(seconds, 3),
                ops=len(mine),
                acknowledged=acked,
                failed=sum(r.outcome == "failed" for r in mine),
                unknown=sum(r.outcome in ("unknown", "hung") for r in mine),
                ops_per_s=round(acked / seconds, 1),
                fail_fast=errors.get("CircuitOpenError", 0),
                errors=dict(errors.most_common()),
                p50_ms=round(percentile(lat, 0.50), 1),
                p95_ms=round(percentile(lat, 0.95), 1),
                p99_ms=round(percentile(lat, 0.99), 1),
                max_ms=round(max(lat, default=0.0), 1),
                connects=sum(_in(t, start, stop, last) for t in connects),
                breaker_transitions=sum(_in(t.at, start, stop, last) for t in transitions),
            )
        )
    return out


def recovery(records: Sequence[OpRecord], fault_end: float, *, bucket: float = 0.25) -> Recovery:
    """Time to first success and to a steady >= 95 % success rate after ``fault_end``."""
    after = sorted((r for r in records if r.started >= fault_end), key=lambda r: r.started)
    first = next((r for r in after if r.outcome == "acknowledged"), None)
    windows: dict[int, list[bool]] = {}
    for r in after:
        windows.setdefault(int((r.started - fault_end) / bucket), []).append(
            r.outcome == "acknowledged"
        )
    to_95: float | None = None
    for index in sorted(windows, reverse=True):
        oks = windows[index]
        if sum(oks) / len(oks) < 0.95:
            break
        to_95 = round(index * bucket, 3)
    return Recovery(
        first_success=None if first is None else round(first.ended - fault_end, 3), to_95=to_95
    )


def timeline(
    records: Sequence[OpRecord],
    *,
    fault_start: float,
    fault_end: float,
    end: float,
    connects: Sequence[float] = (),
    breaker: Sequence[tuple[float, str]] = (),
    bucket: float = 0.25,
) -> Timeline:
    """Bucketed series by the time each call ended (connects by their time)."""
    n = max(1, math.ceil(max(end, *(r.ended for r in records), 0.0) / bucket) + 1)
    ok = [0] * n
    lat: list[list[float]] = [[] for _ in range(n)]
    errors: dict[str, list[int]] = {}
    for r in records:
        i = min(n - 1, max(0, int(r.ended / bucket)))
        lat[i].append(r.duration * 1000)
        if r.outcome == "acknowledged":
            ok[i] += 1
        else:
            errors.setdefault(r.error_type or r.outcome, [0] * n)[i] += 1
    conns = [0] * n
    for t in connects:
        conns[min(n - 1, max(0, int(t / bucket)))] += 1
    return Timeline(
        bucket=bucket,
        fault_start=round(fault_start, 3),
        fault_end=round(fault_end, 3),
        ok_per_s=[round(c / bucket, 1) for c in ok],
        errors=errors,
        p50_ms=[round(percentile(v, 0.50), 1) for v in lat],
        p95_ms=[round(percentile(v, 0.95), 1) for v in lat],
        p99_ms=[round(percentile(v, 0.99), 1) for v in lat],
        connects=conns,
        breaker=[(round(t, 3), s) for t, s in breaker],
    )
