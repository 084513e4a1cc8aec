"""What a run produces: one :class:`ScenarioReport` per scenario, in a :class:`Report`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from resilient_db.chaos._metrics import BreakerTransition, PhaseMetrics, Recovery, Timeline
from resilient_db.chaos._model import Check

__all__ = ["Report", "ScenarioReport", "Status"]

Status = Literal["PASS", "FAIL", "SKIP", "ERROR"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ScenarioReport:
    """Everything measured and checked in one scenario."""

    name: str
    summary: str
    status: Status
    driver: str = ""
    reason: str | None = None
    seconds: float = 0.0
    ops: int = 0
    phases: list[PhaseMetrics] = field(default_factory=list)
    recovery: Recovery | None = None
    transitions: list[BreakerTransition] = field(default_factory=list)
    #: ``opens``: times the breaker opened; the rest from its statistics at the end.
    breaker: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    unknown_ops: list[dict[str, Any]] = field(default_factory=list)
    unit_events: dict[str, int] = field(default_factory=dict)
    log_events: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    timeline: Timeline | None = None
    #: Fleet scenarios: processes, connection attempts/s during the outage, ...
    fleet: dict[str, float] = field(default_factory=dict)

    @property
    def failed_checks(self) -> list[str]:
        """Names of the checks that failed."""
        return [c.name for c in self.checks if not c.passed]


@dataclass(frozen=True, kw_only=True, slots=True)
class Report:
    """A whole run; ``passed`` is False when any scenario FAILed or ERRORed."""

    workload: str
    settings: dict[str, Any]
    environment: dict[str, Any]
    results: list[ScenarioReport]
    seconds: float

    @property
    def passed(self) -> bool:
        """True when no scenario failed or errored (skips are not failures)."""
        return all(r.status in ("PASS", "SKIP") for r in self.results)

    @property
    def exit_code(self) -> int:
        """0 when passed, 1 otherwise (2 is reserved for bad arguments)."""
        return 0 if self.passed else 1
