"""The breaker's states, one object each, and the permits they hand out.

A transition builds the next state object and swaps it in (:meth:`CircuitBreaker._swap`);
nothing is shared between two states but the breaker's counters. Each state answers three
questions: may this call go through (:meth:`State.admit`), what happens when the window's
thresholds are crossed (:meth:`State.exceeded`), and what a finished health probe means
(:meth:`State.probed`).

* ``Closed`` admits everything (the shared permit) and records into the window. Crossing a
  threshold opens the breaker, or, when trips are confirmed, moves to ``Confirming``.
* ``Confirming`` still admits everything while a probe checks the *server* on a fresh
  connection: a failed probe opens the breaker (``confirmed:<reason>``), a passing one
  refutes the trip (``trip_refuted``: back to a fresh ``Closed``). Connection churn on a
  healthy server (killed backends, idle timeouts, a pooler restart) thus never opens it.
* ``Open`` rejects; with a health check only a passing probe leaves it (one probe per
  ``probe_interval``, in its own task); without one, the ``open_for`` timer does.
* ``HalfOpen`` admits ``half_open_permits`` trial calls; they close or reopen it.
* ``ForcedOpen``, ``Disabled`` and ``MetricsOnly`` are the manual states.
"""

from __future__ import annotations

import math
from typing import Final, Protocol

from resilient_db._errors import CircuitOpenError
from resilient_db.policies._breaker_events import BreakerState
from resilient_db.policies._breaker_window import SlidingWindow
from resilient_db.policies._clock import Clock

__all__ = [
    "PROBE",
    "BreakerPermit",
    "Closed",
    "Confirming",
    "Core",
    "Disabled",
    "ForcedOpen",
    "HalfOpen",
    "HalfOpenPermit",
    "MetricsOnly",
    "Open",
    "SharedPermit",
    "State",
]

#: Returned by :meth:`State.admit` when the caller should run (and wait for) a probe.
PROBE: Final = object()


class BreakerPermit(Protocol):
    """Admission to one guarded call; report exactly one outcome.

    In CLOSED, DISABLED and METRICS_ONLY the permit is a shared object (no allocation per
    call): report exactly one outcome per :meth:`Core.acquire`. Half-open permits
    are individual and idempotent (only the first outcome counts).
    """

    def success(self, duration: float | None = None) -> None:
        """The call succeeded; ``duration`` (seconds) enables slow-call accounting."""
        ...

    def failure(self, duration: float | None = None, *, accepted: bool = False) -> None:
        """The call failed in a way that says the protected resource may be unhealthy.

        ``accepted=True``: the failure was the loss of a connection the server had already
        accepted (a killed backend, an idle timeout, a pool-wide invalidation, a pooler
        restart). Such a loss never opens the breaker by itself: it counts only when the
        breaker can confirm a trip with its health check, and a trial call that loses its
        connection releases its half-open permit instead of reopening.
        """
        ...

    def ignore(self) -> None:
        """Neither (application error, cancellation): releases a half-open permit."""
        ...


class Core(Protocol):
    """What the states and permits use of their breaker (``CircuitBreaker`` provides it).

    A protocol rather than an import keeps the states below the breaker (no import cycle).
    """

    _s: State
    _shared: SharedPermit
    _w: SlidingWindow
    _clock: Clock
    _gen: int
    _streak: int
    _mo_exceeded: bool
    _confirms: bool
    _probing: bool
    _next_probe_at: float
    _permits: int
    _min_calls: int
    _fr: float
    _slow_dur: float | None
    _max_ho_wait: float | None
    _n_success: int
    _n_failure: int
    _n_ignored: int
    _n_lost: int
    _n_refuted: int

    @property
    def _health_check(self) -> object | None: ...
    def _record(self, failure: bool, slow: bool) -> None: ...
    def _check(self, calls: int, now: float) -> None: ...
    def _swap(self, new: State, reason: str, now: float, open_for: float | None = None) -> None: ...
    def _to_open(self, reason: str, now: float) -> None: ...
    def _reject(self, state: BreakerState, retry_after: float) -> CircuitOpenError: ...
    def _start_probe(self, *, confirm: bool) -> bool: ...
    def _emit(
        self,
        previous: BreakerState,
        new: BreakerState,
        reason: str,
        now: float,
        open_for: float | None,
    ) -> None: ...


class SharedPermit:
    """The permit of the window states: one object per breaker generation.

    ``live`` is cleared when the breaker leaves that generation, so late outcomes of calls
    admitted earlier only count in the totals.
    """

    __slots__ = ("b", "live")

    def __init__(self, breaker: Core, live: bool) -> None:
        self.b = breaker
        self.live = live

    def success(self, duration: float | None = None) -> None:
        b = self.b
        b._n_success += 1
        if not self.live:
            return
        b._streak = 0
        slow = b._slow_dur
        if slow is not None and duration is not None and duration >= slow:
            b._record(False, True)
            return
        # Inlined fast path of _record(False, False): no allocation, a few attribute ops.
        w = b._w
        now = b._clock()
        if now >= w.bucket_end:
            w.advance(now)
        w.cur_calls += 1
        calls = w.calls = w.calls + 1
        if calls >= b._min_calls and (
            w.fails >= b._fr * calls or slow is not None or b._mo_exceeded
        ):
            b._check(calls, now)

    def failure(self, duration: float | None = None, *, accepted: bool = False) -> None:
        b = self.b
        b._n_failure += 1
        if accepted:
            b._n_lost += 1
            if not b._confirms:
                return  # a lost connection never opens an unconfirmed breaker
        if self.live:
            slow = b._slow_dur
            b._streak += 1
            b._record(True, slow is not None and duration is not None and duration >= slow)

    def ignore(self) -> None:
        self.b._n_ignored += 1


class HalfOpenPermit:
    """One half-open trial permit; idempotent; stale once the breaker has moved on."""

    __slots__ = ("_b", "_done", "_gen")

    def __init__(self, breaker: Core, gen: int) -> None:
        self._b = breaker
        self._gen = gen
        self._done = False

    def _settle(self) -> HalfOpen | None:
        if self._done:
            return None
        self._done = True
        b = self._b
        state = b._s
        if b._gen != self._gen or not isinstance(state, HalfOpen):
            return None
        state.in_flight -= 1
        return state

    def success(self, duration: float | None = None) -> None:
        if self._done:
            return
        b = self._b
        b._n_success += 1
        state = self._settle()
        if state is None:
            return
        if b._slow_dur is not None and duration is not None and duration >= b._slow_dur:
            b._to_open("slow_probe", b._clock())
            return
        state.successes += 1
        if state.successes >= b._permits:
            b._swap(Closed(), "probes_succeeded", b._clock())

    def failure(self, duration: float | None = None, *, accepted: bool = False) -> None:
        if self._done:
            return
        b = self._b
        b._n_failure += 1
        if accepted:
            b._n_lost += 1
            self._settle()  # the server took the connection: not evidence it is down
            return
        if self._settle() is not None:
            b._to_open("probe_failed", b._clock())

    def ignore(self) -> None:
        if self._done:
            return
        self._b._n_ignored += 1
        self._settle()


class State:
    """Base state: admits nothing special, ignores thresholds and probes."""

    __slots__ = ()
    kind: BreakerState = BreakerState.CLOSED
    #: The window counts outcomes in this state (a fresh shared permit on entry).
    windowed: bool = False
    #: ``acquire`` returns the shared permit at once (no admission logic).
    admits_all: bool = False

    def admit(self, b: Core, may_probe: bool) -> BreakerPermit | object:
        return b._shared

    def exceeded(self, b: Core, reason: str, now: float) -> None:
        return None

    def probed(self, b: Core, ok: bool, now: float) -> None:
        return None

    def retry_after(self, b: Core, now: float) -> float:
        return 0.0


class Closed(State):
    __slots__ = ()
    kind = BreakerState.CLOSED
    windowed = True
    admits_all = True

    def exceeded(self, b: Core, reason: str, now: float) -> None:
        # A probe can refute failures (the server answers a fresh connection), not slowness.
        if reason != "slow_call_rate" and b._confirms and b._start_probe(confirm=True):
            b._swap(Confirming(reason), reason, now)
        else:
            b._to_open(reason, now)


class Confirming(State):
    """Thresholds crossed; admitting calls while a probe asks the server itself."""

    __slots__ = ("reason",)
    kind = BreakerState.CONFIRMING
    windowed = True
    admits_all = True

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def probed(self, b: Core, ok: bool, now: float) -> None:
        if ok:
            b._n_refuted += 1
            b._swap(Closed(), "trip_refuted", now)
        else:
            b._to_open(f"confirmed:{self.reason}", now)


class Open(State):
    __slots__ = ("until",)
    kind = BreakerState.OPEN

    def __init__(self, until: float) -> None:
        self.until = until

    def admit(self, b: Core, may_probe: bool) -> BreakerPermit | object:
        now = b._clock()
        probing = b._health_check is not None
        # With a health check, only a passing probe leaves OPEN: the timer would admit a
        # real call as an extra, unpaced connection attempt on a dead server.
        if now < self.until or (may_probe and probing):
            if may_probe and probing and not b._probing and now >= b._next_probe_at:
                return PROBE
            raise b._reject(self.kind, self.retry_after(b, now))
        b._swap(HalfOpen(now), "open_for_elapsed", now)
        return b._s.admit(b, may_probe)

    def probed(self, b: Core, ok: bool, now: float) -> None:
        if ok:
            b._swap(HalfOpen(now), "probe_succeeded", now)

    def retry_after(self, b: Core, now: float) -> float:
        until = self.until
        if b._health_check is not None and b._next_probe_at < until:
            until = b._next_probe_at
        return until - now if until > now else 0.0


class HalfOpen(State):
    __slots__ = ("in_flight", "since", "successes")
    kind = BreakerState.HALF_OPEN

    def __init__(self, since: float) -> None:
        self.since = since
        self.in_flight = 0
        self.successes = 0

    def admit(self, b: Core, may_probe: bool) -> BreakerPermit | object:
        now = b._clock()
        wait = b._max_ho_wait
        if wait is not None and now - self.since >= wait:
            b._to_open("half_open_timeout", now)
            raise b._reject(BreakerState.OPEN, b._s.retry_after(b, now))
        if self.in_flight + self.successes < b._permits:
            self.in_flight += 1
            return HalfOpenPermit(b, b._gen)
        raise b._reject(self.kind, 0.0)


class ForcedOpen(State):
    __slots__ = ()
    kind = BreakerState.FORCED_OPEN

    def admit(self, b: Core, may_probe: bool) -> BreakerPermit | object:
        raise b._reject(self.kind, math.inf)

    def retry_after(self, b: Core, now: float) -> float:
        return math.inf


class Disabled(State):
    __slots__ = ()
    kind = BreakerState.DISABLED
    admits_all = True


class MetricsOnly(State):
    __slots__ = ()
    kind = BreakerState.METRICS_ONLY
    windowed = True
    admits_all = True

    def exceeded(self, b: Core, reason: str, now: float) -> None:
        if not b._mo_exceeded:  # report once per crossing
            b._mo_exceeded = True
            b._emit(self.kind, self.kind, f"would_open:{reason}", now, None)
