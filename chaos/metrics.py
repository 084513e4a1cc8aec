"""Per-phase figures of a scenario: throughput, errors, latency, recovery (pure functions).

An operation belongs to the phase in which it *started*. Phases are ``before`` (healthy),
``during`` (fault injected) and ``after`` (fault removed).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from chaos.workload import OpRecord

__all__ = [
    "BreakerTransition",
    "Phase",
    "PhaseMetrics",
    "Recovery",
    "percentile",
    "phase_metrics",
    "recovery",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class Phase:
    """A named time window, in seconds since the scenario's origin."""

    name: str
    start: float
    end: float


@dataclass(frozen=True, kw_only=True, slots=True)
class BreakerTransition:
    """One breaker state change seen by the suite's listener."""

    at: float
    previous: str
    state: str
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class PhaseMetrics:
    """Figures of one phase. Latencies are milliseconds over every call that ended."""

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
    """How fast the workload came back after the fault was removed.

    ``first_success``: seconds from the removal to the first acknowledged call started after
    it. ``to_95``: seconds until every following ``bucket``-wide window has >= 95 % success.
    ``None`` when it never happened within the run.
    """

    first_success: float | None
    to_95: float | None


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by the nearest-rank method; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def phase_metrics(
    records: Sequence[OpRecord],
    phases: Sequence[Phase],
    *,
    connects: Sequence[float] = (),
    transitions: Sequence[BreakerTransition] = (),
) -> list[PhaseMetrics]:
    """One :class:`PhaseMetrics` per phase."""
    out: list[PhaseMetrics] = []
    for i, ph in enumerate(phases):
        last = i == len(phases) - 1
        mine = [
            r for r in records if ph.start <= r.started < ph.end or (last and r.started >= ph.end)
        ]
        seconds = max(ph.end - ph.start, 1e-9)
        errors = Counter(r.error_type or "?" for r in mine if r.outcome != "acknowledged")
        lat = [r.duration * 1000 for r in mine]
        acked = sum(r.outcome == "acknowledged" for r in mine)
        out.append(
            PhaseMetrics(
                phase=ph.name,
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
                connects=sum(
                    1 for t in connects if ph.start <= t < ph.end or (last and t >= ph.end)
                ),
                breaker_transitions=sum(
                    1 for t in transitions if ph.start <= t.at < ph.end or (last and t.at >= ph.end)
                ),
            )
        )
    return out


def recovery(records: Sequence[OpRecord], fault_end: float, *, bucket: float = 0.25) -> Recovery:
    """Time to first success and to a steady >= 95 % success rate after ``fault_end``."""
    after = sorted((r for r in records if r.started >= fault_end), key=lambda r: r.started)
    first = next((r for r in after if r.outcome == "acknowledged"), None)
    first_success = None if first is None else round(first.ended - fault_end, 3)
    windows: dict[int, list[bool]] = {}
    for r in after:
        windows.setdefault(int((r.started - fault_end) / bucket), []).append(
            r.outcome == "acknowledged"
        )
    to_95: float | None = None
    for index in sorted(windows, reverse=True):
        oks = windows[index]
        if sum(oks) / len(oks) >= 0.95:
            to_95 = round(index * bucket, 3)
        else:
            break
    return Recovery(first_success=first_success, to_95=to_95)
