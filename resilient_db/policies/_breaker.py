"""CircuitBreaker: resilience4j-grade semantics for async Python, as explicit states.

* CLOSED records outcomes in a **time-based sliding window** (``_breaker_window``). It
  trips when at least ``minimum_calls`` calls are in the window and the failure rate
  reaches ``failure_rate`` (or the slow-call rate reaches ``slow_call_rate``), or after
  ``consecutive_failures`` failures in a row whatever the window holds.
* **Trips are confirmed against the server** when the breaker has a ``health_check``
  (``confirm_trips``, default: whenever a health check is given): a trip moves to
  CONFIRMING, which still admits calls while one probe (a fresh connection, ``SELECT 1``,
  bounded by ``confirm_timeout``) asks the server itself. A failed or slow probe opens the
  breaker; a passing one refutes the trip (``breaker.trip_refuted``) and starts a fresh
  window. A refused or black-holed server thus opens it within milliseconds (or
  ``confirm_timeout``) of the trip, while connection churn on a healthy server never does.
* OPEN rejects at once with :class:`~resilient_db.CircuitOpenError`. The open duration
  starts at ``open_for``, grows by ``open_growth`` per consecutive trip with +/-
  ``open_jitter``, is capped at ``open_for_max`` and resets when the breaker closes. With a
  health check only a passing probe leaves OPEN: one probe per ``probe_interval`` whatever
  the concurrency, started by the first caller of :meth:`~CircuitBreaker.acquire_async`
  that finds one due. **The probe runs in its own task** (``_breaker_probe``), bounded by
  ``probe_timeout``: the caller that started it waits for the answer and may be cancelled
  meanwhile without cancelling the probe or wasting its slot.
* HALF_OPEN admits ``half_open_permits`` trial calls, closes after as many successes,
  reopens on any failure (not on a lost connection, ``failure(accepted=True)``), and
  reopens if it has not closed within ``max_half_open_wait``.
* FORCED_OPEN rejects everything; DISABLED admits everything and records nothing;
  METRICS_ONLY admits everything, records, and emits an event when it *would* open.
* Optional ``store`` (:class:`BreakerStore`): decisions (open for N seconds, closed) are
  shared, and the probe takes the store's probe lease first (one probe per interval for the
  whole fleet). The hot path never waits on the store.

Admission and the window live here, every state change (manual control included) in
``_breaker_transitions``. All state changes are synchronous (no ``await`` inside), so the
breaker is safe for any number of tasks on one event loop without a lock. It is not meant
to be shared between threads.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

import anyio

from resilient_db._errors import CircuitOpenError
from resilient_db.policies._breaker_config import (
    BreakerConfig,
    check_callable,
    check_listeners,
    check_name,
    check_store,
    default_is_failure,
)
from resilient_db.policies._breaker_events import (
    BreakerEvent,
    BreakerListener,
    BreakerState,
    BreakerStatistics,
    Emitter,
)
from resilient_db.policies._breaker_guard import GuardMixin
from resilient_db.policies._breaker_probe import probe_and_admit, start_probe, wait_idle
from resilient_db.policies._breaker_states import (
    PROBE,
    BreakerPermit,
    Closed,
    HalfOpen,
    SharedPermit,
    State,
)
from resilient_db.policies._breaker_store import BreakerStore
from resilient_db.policies._breaker_transitions import TransitionMixin
from resilient_db.policies._breaker_window import SlidingWindow
from resilient_db.policies._clock import Clock, RandomSource, default_clock, default_random

__all__ = [
    "BreakerEvent",
    "BreakerListener",
    "BreakerPermit",
    "BreakerState",
    "BreakerStatistics",
    "CircuitBreaker",
    "default_is_failure",
]

logger = logging.getLogger("resilient_db")

_CLOSED: Final = BreakerState.CLOSED


class CircuitBreaker(TransitionMixin, GuardMixin):
    """A circuit breaker for one endpoint (see the module documentation for semantics).

    Low-level use (what the Database layer does)::

        permit = await breaker.acquire_async()   # or breaker.acquire() (never probes)
        try:
            result = await call()
        except Exception:
            permit.failure()   # accepted=True for a connection the server had accepted;
            raise              # permit.ignore() for application errors
        except BaseException:
            permit.ignore()
            raise
        permit.success(duration)

    Or ``async with breaker: ...`` and ``@breaker`` on an ``async def``, which classify
    exceptions with ``is_failure(exc)``: True failure, False success, None ignored.
    """

    __slots__ = (
        "__weakref__",
        "_clock",
        "_confirm_timeout",
        "_confirms",
        "_emitter",
        "_fr",
        "_growth",
        "_health_check",
        "_is_failure",
        "_jitter",
        "_max_ho_wait",
        "_max_streak",
        "_min_calls",
        "_n_failure",
        "_n_ignored",
        "_n_lost",
        "_n_probe_failures",
        "_n_probes",
        "_n_refuted",
        "_n_rejected",
        "_n_success",
        "_open_for",
        "_open_for_max",
        "_permits",
        "_probe_done",
        "_probe_interval",
        "_probe_timeout",
        "_probing",
        "_random",
        "_slow_dur",
        "_sr",
        "_store",
        "_w",
        "config",
        "name",
    )

    def __init__(
        self,
        name: str,
        *,
        window: float = 10.0,
        buckets: int = 10,
        minimum_calls: int = 20,
        failure_rate: float = 0.5,
        consecutive_failures: int | None = 10,
        slow_call_duration: float | None = None,
        slow_call_rate: float = 1.0,
        half_open_permits: int = 1,
        open_for: float = 5.0,
        open_for_max: float = 60.0,
        open_growth: float = 2.0,
        open_jitter: float = 0.2,
        max_half_open_wait: float | None = 30.0,
        health_check: Callable[[], Awaitable[object]] | None = None,
        probe_interval: float = 0.5,
        probe_timeout: float = 2.0,
        confirm_trips: bool | None = None,
        confirm_timeout: float = 0.5,
        is_failure: Callable[[BaseException], bool | None] = default_is_failure,
        listeners: Iterable[BreakerListener] = (),
        clock: Clock = default_clock,
        random: RandomSource = default_random,
        store: BreakerStore | None = None,
    ) -> None:
        self.name = check_name(name)
        self._configure(
            BreakerConfig(
                window=window,
                buckets=buckets,
                minimum_calls=minimum_calls,
                failure_rate=failure_rate,
                consecutive_failures=consecutive_failures,
                slow_call_duration=slow_call_duration,
                slow_call_rate=slow_call_rate,
                half_open_permits=half_open_permits,
                open_for=open_for,
                open_for_max=open_for_max,
                open_growth=open_growth,
                open_jitter=open_jitter,
                max_half_open_wait=max_half_open_wait,
                health_check=health_check,
                probe_interval=probe_interval,
                probe_timeout=probe_timeout,
                confirm_trips=confirm_trips,
                confirm_timeout=confirm_timeout,
                is_failure=is_failure,
                clock=clock,
                random=random,
            )
        )
        self._emitter = Emitter(name, check_listeners(listeners))
        self._store = store = check_store(store)
        if store is not None:
            store.bind(name, self._adopt)

    def _configure(self, cfg: BreakerConfig) -> None:
        self.config = cfg
        clock = self._clock = cfg.clock
        self._random = cfg.random
        self._min_calls = cfg.minimum_calls
        self._max_streak = cfg.consecutive_failures
        self._fr = cfg.failure_rate
        self._slow_dur = cfg.slow_call_duration
        self._sr = cfg.slow_call_rate
        self._permits = cfg.half_open_permits
        self._open_for = self._open_base = cfg.open_for
        self._open_for_max = cfg.open_for_max
        self._growth = cfg.open_growth
        self._jitter = cfg.open_jitter
        self._max_ho_wait = cfg.max_half_open_wait
        self._health_check = cfg.health_check
        self._probe_interval = cfg.probe_interval
        self._probe_timeout = cfg.probe_timeout
        self._confirm_timeout = cfg.confirm_timeout
        self._confirms = cfg.confirms
        self._is_failure = cfg.is_failure
        self._w = SlidingWindow(cfg.window, cfg.buckets, clock())
        self._streak = self._trips = self._gen = self._fleet_gen = 0
        self._n_success = self._n_failure = self._n_ignored = self._n_rejected = 0
        self._n_probes = self._n_probe_failures = self._n_refuted = self._n_lost = 0
        self._next_probe_at = 0.0
        self._probing = False
        self._probe_done: anyio.Event | None = None
        self._mo_exceeded = False
        self._last_reason = "created"
        self._s: State = Closed()
        self._state = _CLOSED
        self._shared = SharedPermit(self, True)

    # --- window ---------------------------------------------------------------------

    def _record(self, failure: bool, slow: bool) -> None:
        now = self._clock()
        calls = self._w.record(now, failure, slow)
        if calls >= self._min_calls:
            self._check(calls, now)
        streak = self._max_streak
        if streak is not None and self._streak >= streak:
            self._s.exceeded(self, "consecutive_failures", now)

    def _check(self, calls: int, now: float) -> None:
        w = self._w
        if w.fails >= self._fr * calls:
            self._s.exceeded(self, "failure_rate", now)
        elif self._slow_dur is not None and w.slows >= self._sr * calls:
            self._s.exceeded(self, "slow_call_rate", now)
        elif self._mo_exceeded:
            self._mo_exceeded = False

    # --- probes (in their own task: see _breaker_probe) ------------------------------

    def _start_probe(self, *, confirm: bool) -> bool:
        return start_probe(self, confirm=confirm)

    # --- admission ------------------------------------------------------------------

    def acquire(self) -> BreakerPermit:
        """Admit one call or raise :class:`CircuitOpenError` (synchronous; never probes)."""
        if self._state is _CLOSED:
            return self._shared
        permit = self._s.admit(self, False)
        assert permit is not PROBE
        return permit  # type: ignore[return-value]

    async def acquire_async(self) -> BreakerPermit:
        """Like :meth:`acquire`, but while OPEN may start the health probe and await it."""
        if self._state is _CLOSED:
            return self._shared
        permit = self._s.admit(self, True)
        if permit is PROBE:
            return await probe_and_admit(self)
        return permit  # type: ignore[return-value]

    def _reject(self, state: BreakerState, retry_after: float) -> CircuitOpenError:
        self._n_rejected += 1
        return CircuitOpenError(self.name, retry_after, state=state.value)

    # --- listeners and inspection (state changes: _breaker_transitions) -------------

    @property
    def state(self) -> BreakerState:
        """The current state (OPEN becomes HALF_OPEN lazily, on the next admission)."""
        return self._state

    def add_listener(self, listener: BreakerListener) -> None:
        """Register a transition listener."""
        check_callable("listeners", listener, "pass callables taking a BreakerEvent")
        self._emitter.listeners.append(listener)

    def remove_listener(self, listener: BreakerListener) -> None:
        """Unregister a listener added with :meth:`add_listener` (no-op if it is not there).

        Breakers are shared per endpoint and outlive a ``Database``: telemetry that watched
        one removes itself when it closes, so listeners do not pile up.
        """
        listeners = self._emitter.listeners
        for index, known in enumerate(listeners):
            if known == listener:
                del listeners[index]
                return

    async def wait_probe(self) -> None:
        """Wait until no health probe is running (tests, orderly shutdown)."""
        await wait_idle(self)  # each probe is bounded by its own timeout

    def statistics(self) -> BreakerStatistics:
        """A frozen snapshot (rates over the current window)."""
        now = self._clock()
        w = self._w
        if self._shared.live and now >= w.bucket_end:
            w.advance(now)
        failure_rate, slow_rate, _ = w.rates()
        return BreakerStatistics(
            name=self.name,
            state=self._state,
            calls=w.calls,
            failures=w.fails,
            slow_calls=w.slows,
            failure_rate=failure_rate,
            slow_call_rate=slow_rate,
            successes_total=self._n_success,
            failures_total=self._n_failure,
            ignored_total=self._n_ignored,
            rejected_total=self._n_rejected,
            trips=self._trips,
            retry_after=self._s.retry_after(self, now),
            half_open_in_flight=self._s.in_flight if isinstance(self._s, HalfOpen) else 0,
            probes=self._n_probes,
            probe_failures=self._n_probe_failures,
            last_reason=self._last_reason,
            refuted_total=self._n_refuted,
            lost_total=self._n_lost,
        )

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state.value!r})"
