"""How a :class:`~resilient_db.CircuitBreaker` changes state, and nothing else.

Every change goes through :meth:`TransitionMixin._swap` (swap the state object, restart the
window when the new state starts one, report the change); :meth:`~TransitionMixin._to_open`
adds the growing, jittered open duration and shares the decision through the store;
:meth:`~TransitionMixin._adopt` applies a decision shared by another breaker; the manual
controls (``force_open``, ``disable``, ``metrics_only``, ``reset``) are swaps too. None of
this runs on the closed-state hot path: admission and outcome recording stay in
``_breaker`` and ``_breaker_states``.
"""

from __future__ import annotations

from typing import Final

from resilient_db.policies._breaker_events import BreakerState, Emitter
from resilient_db.policies._breaker_states import (
    Closed,
    Disabled,
    ForcedOpen,
    HalfOpen,
    MetricsOnly,
    Open,
    SharedPermit,
    State,
)
from resilient_db.policies._breaker_store import BreakerStore, FleetDecision
from resilient_db.policies._breaker_window import SlidingWindow
from resilient_db.policies._clock import Clock, RandomSource

__all__ = ["TransitionMixin"]

_CLOSED: Final = BreakerState.CLOSED


class TransitionMixin:
    """The state changes of :class:`~resilient_db.CircuitBreaker`.

    The mixin holds the slots of what a change writes (the breaker's ``_configure`` sets
    their first values); the options and collaborators it reads are the breaker's slots.
    """

    __slots__ = (
        "_fleet_gen",
        "_gen",
        "_last_reason",
        "_mo_exceeded",
        "_next_probe_at",
        "_open_base",
        "_s",
        "_shared",
        "_state",
        "_streak",
        "_trips",
    )

    _s: State
    _state: BreakerState
    _shared: SharedPermit
    _gen: int
    _fleet_gen: int
    _streak: int
    _trips: int
    _last_reason: str
    _mo_exceeded: bool
    _open_base: float
    _next_probe_at: float
    # read only (slots of CircuitBreaker)
    name: str
    _w: SlidingWindow
    _clock: Clock
    _random: RandomSource
    _emitter: Emitter
    _store: BreakerStore | None
    _open_for: float
    _open_for_max: float
    _growth: float
    _jitter: float
    _probe_interval: float

    def _swap(self, new: State, reason: str, now: float, open_for: float | None = None) -> None:
        """The one way to change state: swap the state object, then report it."""
        previous = self._s.kind
        keep_window = new.kind is BreakerState.CONFIRMING and self._s.windowed
        self._gen += 1
        self._streak = 0
        self._last_reason = reason
        if not keep_window:
            self._shared.live = False
            if new.admits_all:
                self._shared = SharedPermit(self, new.windowed)  # type: ignore[arg-type]  # self is the Core
                self._mo_exceeded = False
                self._w.restart(now)
        if new.kind is _CLOSED:
            self._trips = 0
            self._open_base = self._open_for
        self._s = new
        self._state = new.kind
        self._emit(previous, new.kind, reason, now, open_for)

    def _to_open(self, reason: str, now: float, *, share: bool = True) -> None:
        self._trips += 1
        base = self._open_base
        self._open_base = min(self._open_for_max, base * self._growth)
        jitter = self._jitter
        duration = base * (1.0 + jitter * (2.0 * self._random() - 1.0)) if jitter else base
        open_for = max(0.0, min(self._open_for_max, duration))
        self._next_probe_at = now + self._probe_interval
        self._swap(Open(now + open_for), reason, now, open_for)
        if share and self._store is not None:
            self._store.publish(self.name, open_for=open_for)

    def _emit(
        self,
        previous: BreakerState,
        new: BreakerState,
        reason: str,
        now: float,
        open_for: float | None,
    ) -> None:
        self._emitter.emit(previous, new, reason, now, open_for, self._w.rates())
        if self._store is not None and reason in ("probes_succeeded", "probe_succeeded"):
            # The server answered a probe: let the fleet send its trial calls too.
            self._store.publish(self.name, open_for=None)

    def _adopt(self, decision: FleetDecision) -> None:
        """A shared decision arrived from the store (on this loop)."""
        if decision.generation <= self._fleet_gen:
            return
        self._fleet_gen = decision.generation
        now = self._clock()
        kind = self._state
        if decision.is_open and kind in (_CLOSED, BreakerState.CONFIRMING, BreakerState.HALF_OPEN):
            self._trips += 1
            self._next_probe_at = now + self._probe_interval * self._random()
            until = now + decision.remaining
            self._swap(Open(until), "fleet_open", now, decision.remaining)
        elif not decision.is_open and kind is BreakerState.OPEN:
            self._swap(HalfOpen(now), "fleet_closed", now)

    # --- manual control -------------------------------------------------------------

    def force_open(self) -> None:
        """Reject every call until :meth:`reset` (state FORCED_OPEN)."""
        self._swap(ForcedOpen(), "manual", self._clock())

    def disable(self) -> None:
        """Admit every call and record nothing until :meth:`reset` (state DISABLED)."""
        self._swap(Disabled(), "manual", self._clock())

    def metrics_only(self) -> None:
        """Shadow mode: admit every call, record, emit ``would_open`` events, never reject."""
        self._swap(MetricsOnly(), "manual", self._clock())

    def reset(self) -> None:
        """Back to CLOSED with an empty window and the initial open duration."""
        self._swap(Closed(), "manual", self._clock())
