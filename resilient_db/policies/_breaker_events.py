"""What a :class:`~resilient_db.CircuitBreaker` reports: states, events, statistics.

Every transition is logged on ``logging.getLogger("resilient_db")`` under a stable event
name (``breaker.opened``, ``breaker.confirming``...) with the data in ``extra``, and passed
to each listener as a frozen :class:`BreakerEvent`. A listener that raises is logged and
dropped for that event; it never breaks the breaker.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Protocol

__all__ = [
    "BreakerEvent",
    "BreakerListener",
    "BreakerState",
    "BreakerStatistics",
    "Emitter",
]

logger = logging.getLogger("resilient_db")


class BreakerState(StrEnum):
    """The state of a :class:`CircuitBreaker`.

    ``CONFIRMING`` is CLOSED whose thresholds were crossed while the breaker checks the
    server with its health check: calls are still admitted; the probe's answer opens the
    breaker (the server is down) or refutes the trip (the server is healthy).
    """

    CLOSED = "closed"
    CONFIRMING = "confirming"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"
    METRICS_ONLY = "metrics_only"


_EVENT_NAMES: Final = {
    BreakerState.CLOSED: "breaker.closed",
    BreakerState.CONFIRMING: "breaker.confirming",
    BreakerState.OPEN: "breaker.opened",
    BreakerState.HALF_OPEN: "breaker.half_opened",
    BreakerState.FORCED_OPEN: "breaker.forced_open",
    BreakerState.DISABLED: "breaker.disabled",
    BreakerState.METRICS_ONLY: "breaker.metrics_only",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class BreakerEvent:
    """A state transition (or, in METRICS_ONLY, a threshold crossing: same state twice)."""

    name: str
    previous: BreakerState
    state: BreakerState
    #: Why: ``failure_rate``, ``slow_call_rate``, ``consecutive_failures``,
    #: ``confirmed:<reason>``, ``trip_refuted``, ``open_for_elapsed``, ``probe_succeeded``,
    #: ``probe_failed``, ``slow_probe``, ``probes_succeeded``, ``half_open_timeout``,
    #: ``fleet_open``, ``fleet_closed``, ``manual`` or ``would_open:<reason>``.
    reason: str
    #: Breaker clock time of the transition.
    at: float
    failure_rate: float
    slow_call_rate: float
    #: Calls in the sliding window when the event happened.
    calls: int
    #: Seconds the breaker stays open (OPEN transitions only).
    open_for: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class BreakerStatistics:
    """A frozen snapshot of a :class:`CircuitBreaker`."""

    name: str
    state: BreakerState
    #: Calls, failures and slow calls in the current sliding window (CLOSED/METRICS_ONLY).
    calls: int
    failures: int
    slow_calls: int
    failure_rate: float
    slow_call_rate: float
    #: Totals since creation.
    successes_total: int
    failures_total: int
    ignored_total: int
    rejected_total: int
    #: Consecutive trips (reset when CLOSED).
    trips: int
    #: Seconds until an OPEN breaker admits a probe (0.0 otherwise; inf when FORCED_OPEN).
    retry_after: float
    half_open_in_flight: int
    probes: int
    probe_failures: int
    last_reason: str
    #: Trips the health check refuted (the server answered: the failures were churn).
    refuted_total: int = 0
    #: Failures reported with ``accepted=True`` (connections lost after the server took them).
    lost_total: int = 0


class BreakerListener(Protocol):
    """Receives every :class:`BreakerEvent`; exceptions it raises are logged and dropped."""

    def __call__(self, event: BreakerEvent, /) -> None: ...


class Emitter:
    """Logs transitions and fans them out to the listeners of one breaker."""

    __slots__ = ("listeners", "name")

    def __init__(self, name: str, listeners: Iterable[BreakerListener] = ()) -> None:
        self.name = name
        self.listeners: list[BreakerListener] = list(listeners)

    def emit(
        self,
        previous: BreakerState,
        new: BreakerState,
        reason: str,
        now: float,
        open_for: float | None,
        rates: tuple[float, float, int],
    ) -> None:
        failure_rate, slow_rate, calls = rates
        extra = {
            "breaker": self.name,
            "previous_state": previous.value,
            "state": new.value,
            "reason": reason,
            "open_for": open_for,
            "failure_rate": failure_rate,
            "slow_call_rate": slow_rate,
            "window_calls": calls,
        }
        level = logging.INFO
        if new is BreakerState.OPEN or new is BreakerState.FORCED_OPEN:
            level = logging.WARNING
        event_name = "breaker.would_open" if reason.startswith("would") else _EVENT_NAMES[new]
        if reason == "trip_refuted":
            event_name = "breaker.trip_refuted"
        logger.log(level, event_name, extra=extra)
        if not self.listeners:
            return
        event = BreakerEvent(
            name=self.name,
            previous=previous,
            state=new,
            reason=reason,
            at=now,
            failure_rate=failure_rate,
            slow_call_rate=slow_rate,
            calls=calls,
            open_for=open_for,
        )
        for listener in tuple(self.listeners):
            try:
                listener(event)
            except Exception:
                logger.exception(
                    "breaker.listener_failed", extra={"breaker": self.name, "state": new.value}
                )
