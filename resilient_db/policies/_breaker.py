"""CircuitBreaker: resilience4j-grade semantics for async Python.

* CLOSED records outcomes in a **time-based sliding window** of ``buckets`` buckets spanning
  ``window`` seconds (running totals: O(1) per call and per snapshot). It trips to OPEN when
  at least ``minimum_calls`` calls are in the window and the failure rate reaches
  ``failure_rate``, or the slow-call rate (calls lasting ``slow_call_duration`` or more)
  reaches ``slow_call_rate``. It also trips after ``consecutive_failures`` failures in a
  row (no success between them) whatever the window holds: a total outage right after a
  busy healthy period would otherwise need as many failures as the window has successes
  before the rate crosses its threshold.
* OPEN rejects at once with :class:`~resilient_db.CircuitOpenError` (a fresh, cheap
  exception per call: nothing is shared or accumulated). The open duration starts at
  ``open_for``, grows by ``open_growth`` on each consecutive trip with +/- ``open_jitter``
  jitter, is capped at ``open_for_max`` and resets when the breaker closes.
* HALF_OPEN admits at most ``half_open_permits`` concurrent probe calls (the others fail
  fast), closes after ``half_open_permits`` successes, reopens on any failure, and reopens
  if it has not closed within ``max_half_open_wait`` seconds (a lost probe cannot wedge it).
* Outcomes are *success*, *failure* or *ignored*. Ignored outcomes (fatal application
  errors, cancellation) neither trip nor heal and release a half-open permit.
* FORCED_OPEN rejects everything; DISABLED admits everything and records nothing;
  METRICS_ONLY admits everything, records, and emits an event when it *would* open.

**Active health probing** (optional ``health_check``): it is *caller-driven*, so no task
group or background task is needed. While OPEN, the first caller of :meth:`acquire_async`
(also used by ``async with breaker`` and ``@breaker``) that arrives when a probe is due runs
``health_check()`` under ``probe_timeout``; meanwhile, and until ``probe_interval`` has
passed, every other caller fails fast. At most one probe runs per ``probe_interval``
whatever the concurrency. When the health check succeeds the breaker moves to HALF_OPEN at
once (even if the open duration has grown to ``open_for_max``) and the probing caller takes
the first half-open permit itself. With a health check, leaving OPEN happens *only* through a
passing probe (never on the ``open_for`` timer), so a dead server costs exactly one
connection attempt per ``probe_interval`` whatever the concurrency; the open duration then
only tells callers when to come back (``retry_after``). The synchronous :meth:`acquire`
never probes, and falls back to the ``open_for`` timer.

Concurrency: all state changes are synchronous (no ``await`` inside), so the breaker is safe
for any number of tasks on one event loop (asyncio or trio via anyio) without a lock, and no
lock is ever held across the guarded call. It is not meant to be shared between threads.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Any, Final, ParamSpec, Protocol, TypeVar

import anyio

from resilient_db._errors import CircuitOpenError, ConfigurationError
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

P = ParamSpec("P")
T = TypeVar("T")

logger = logging.getLogger("resilient_db")


class BreakerState(StrEnum):
    """The state of a :class:`CircuitBreaker`."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"
    METRICS_ONLY = "metrics_only"


_CLOSED: Final = BreakerState.CLOSED
_OPEN: Final = BreakerState.OPEN
_HALF_OPEN: Final = BreakerState.HALF_OPEN
_FORCED_OPEN: Final = BreakerState.FORCED_OPEN
_DISABLED: Final = BreakerState.DISABLED
_METRICS_ONLY: Final = BreakerState.METRICS_ONLY

_EVENT_NAMES: Final = {
    _CLOSED: "breaker.closed",
    _OPEN: "breaker.opened",
    _HALF_OPEN: "breaker.half_opened",
    _FORCED_OPEN: "breaker.forced_open",
    _DISABLED: "breaker.disabled",
    _METRICS_ONLY: "breaker.metrics_only",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class BreakerEvent:
    """A state transition (or, in METRICS_ONLY, a threshold crossing: same state twice)."""

    name: str
    previous: BreakerState
    state: BreakerState
    #: Why: ``failure_rate``, ``slow_call_rate``, ``open_for_elapsed``, ``probe_succeeded``,
    #: ``probe_failed``, ``slow_probe``, ``probes_succeeded``, ``half_open_timeout``,
    #: ``manual`` or ``would_open`` (METRICS_ONLY).
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


class BreakerListener(Protocol):
    """Receives every :class:`BreakerEvent`; exceptions it raises are logged and dropped."""

    def __call__(self, event: BreakerEvent, /) -> None: ...


class BreakerPermit(Protocol):
    """Admission to one guarded call; report exactly one outcome.

    In CLOSED, DISABLED and METRICS_ONLY the permit is a shared object (no allocation per
    call): report exactly one outcome per :meth:`CircuitBreaker.acquire`. Half-open permits
    are individual and idempotent (only the first outcome counts).
    """

    def success(self, duration: float | None = None) -> None:
        """The call succeeded; ``duration`` (seconds) enables slow-call accounting."""
        ...

    def failure(self, duration: float | None = None) -> None:
        """The call failed in a way that says the protected resource is unhealthy."""
        ...

    def ignore(self) -> None:
        """Neither (application error, cancellation): releases a half-open permit."""
        ...


def default_is_failure(exc: BaseException) -> bool | None:
    """Default outcome rule for ``async with`` / ``@breaker``.

    Returns True (failure), False (success) or None (ignored): non-``Exception`` errors
    (cancellation, ``KeyboardInterrupt``) and another breaker's ``CircuitOpenError`` are
    ignored; every other ``Exception`` is a failure.
    """
    if not isinstance(exc, Exception) or isinstance(exc, CircuitOpenError):
        return None
    return True


class _SharedPermit:
    """The permit of CLOSED / DISABLED / METRICS_ONLY: one object per breaker generation.

    ``_live`` is cleared when the breaker leaves that generation, so late outcomes of calls
    admitted earlier only count in the totals.
    """

    __slots__ = ("_b", "_live")

    def __init__(self, breaker: CircuitBreaker, live: bool) -> None:
        self._b = breaker
        self._live = live

    def success(self, duration: float | None = None) -> None:
        b = self._b
        b._n_success += 1
        if not self._live:
            return
        b._streak = 0
        if duration is not None and b._slow_dur is not None and duration >= b._slow_dur:
            b._record(False, True)
            return
        # Inlined fast path of _record(False, False): no allocation, a few attribute ops.
        now = b._clock()
        if now >= b._bucket_end:
            b._advance(now)
        b._cur_calls += 1
        calls = b._calls = b._calls + 1
        if calls >= b._min_calls and (
            b._fails >= b._fr * calls or b._slow_dur is not None or b._mo_exceeded
        ):
            b._check(calls, now)

    def failure(self, duration: float | None = None) -> None:
        b = self._b
        b._n_failure += 1
        if self._live:
            slow = b._slow_dur
            b._streak += 1
            b._record(True, slow is not None and duration is not None and duration >= slow)

    def ignore(self) -> None:
        self._b._n_ignored += 1


class _HalfOpenPermit:
    """One half-open probe permit; idempotent; stale once the breaker has moved on."""

    __slots__ = ("_b", "_done", "_gen")

    def __init__(self, breaker: CircuitBreaker, gen: int) -> None:
        self._b = breaker
        self._gen = gen
        self._done = False

    def _settle(self) -> CircuitBreaker | None:
        if self._done:
            return None
        self._done = True
        b = self._b
        if b._gen != self._gen:
            return None
        b._ho_in_flight -= 1
        return b

    def success(self, duration: float | None = None) -> None:
        if self._done:
            return
        self._b._n_success += 1
        b = self._settle()
        if b is None:
            return
        if b._slow_dur is not None and duration is not None and duration >= b._slow_dur:
            b._transition(_OPEN, "slow_probe", b._clock())
            return
        b._ho_successes += 1
        if b._ho_successes >= b._permits:
            b._transition(_CLOSED, "probes_succeeded", b._clock())

    def failure(self, duration: float | None = None) -> None:
        if self._done:
            return
        self._b._n_failure += 1
        b = self._settle()
        if b is not None:
            b._transition(_OPEN, "probe_failed", b._clock())

    def ignore(self) -> None:
        if self._done:
            return
        self._b._n_ignored += 1
        self._settle()


_PROBE: Final = object()

# The ``async with breaker:`` stack of the current task: (breaker, permit, start, previous).
_Frame = tuple["CircuitBreaker", BreakerPermit, float | None, Any]
_ENTERED: contextvars.ContextVar[_Frame | None] = contextvars.ContextVar(
    "resilient_db_breaker_entered", default=None
)


def _num(
    option: str, value: object, *, low: float, high: float = math.inf, strict: bool = True, fix: str
) -> float:
    if (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and (value > low if strict else value >= low)
        and value <= high
    ):
        return float(value)
    lo = f"> {low}" if strict else f">= {low}"
    rng = lo if high == math.inf else f"{lo} and <= {high}"
    raise ConfigurationError(
        f"CircuitBreaker({option}={value!r}) is invalid: must be a finite number {rng}; {fix}"
    )


def _int(option: str, value: object, *, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(
            f"CircuitBreaker({option}={value!r}) is invalid: must be an int >= 1; {fix}"
        )
    return value


def _callable(option: str, value: object, fix: str) -> None:
    if not callable(value):
        raise ConfigurationError(
            f"CircuitBreaker({option}={value!r}) is invalid: must be callable; {fix}"
        )


class CircuitBreaker:
    """A circuit breaker for one endpoint (see the module documentation for semantics).

    Low-level use (what the Database layer does)::

        permit = breaker.acquire()           # or: await breaker.acquire_async()
        try:
            result = await call()
        except Exception:
            permit.failure()                 # or permit.ignore() for application errors
            raise
        except BaseException:
            permit.ignore()
            raise
        permit.success(duration)

    Or ``async with breaker: ...`` and ``@breaker`` on an ``async def``, which classify
    exceptions with ``is_failure(exc)``: True failure, False success, None ignored
    (default: :func:`default_is_failure`).
    """

    __slots__ = (
        "__weakref__",
        "_b_calls",
        "_b_fails",
        "_b_slows",
        "_bucket_end",
        "_bucket_width",
        "_calls",
        "_clock",
        "_cur_calls",
        "_cur_fails",
        "_cur_slows",
        "_epoch",
        "_fails",
        "_fr",
        "_gen",
        "_growth",
        "_health_check",
        "_ho_in_flight",
        "_ho_since",
        "_ho_successes",
        "_is_failure",
        "_jitter",
        "_last_reason",
        "_listeners",
        "_max_ho_wait",
        "_max_streak",
        "_min_calls",
        "_mo_exceeded",
        "_n_buckets",
        "_n_failure",
        "_n_ignored",
        "_n_probe_failures",
        "_n_probes",
        "_n_rejected",
        "_n_success",
        "_next_probe_at",
        "_open_base",
        "_open_for",
        "_open_for_max",
        "_open_until",
        "_permits",
        "_probe_interval",
        "_probe_timeout",
        "_probing",
        "_random",
        "_shared",
        "_slow_dur",
        "_slows",
        "_sr",
        "_state",
        "_streak",
        "_trips",
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
        is_failure: Callable[[BaseException], bool | None] = default_is_failure,
        listeners: Iterable[BreakerListener] = (),
        clock: Clock = default_clock,
        random: RandomSource = default_random,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(
                f"CircuitBreaker(name={name!r}) is invalid: must be a non-empty str; "
                "name it after the endpoint, e.g. 'db-primary'"
            )
        self.name = name
        width = _num("window", window, low=0.0, fix="use seconds, e.g. window=10.0")
        self._n_buckets = _int("buckets", buckets, fix="use e.g. buckets=10")
        self._bucket_width = width / self._n_buckets
        self._min_calls = _int("minimum_calls", minimum_calls, fix="use e.g. minimum_calls=20")
        self._max_streak = (
            None
            if consecutive_failures is None
            else _int(
                "consecutive_failures",
                consecutive_failures,
                fix="use e.g. consecutive_failures=10, or None to trip on the rate only",
            )
        )
        self._streak = 0
        self._fr = _num(
            "failure_rate", failure_rate, low=0.0, high=1.0, fix="use a fraction, e.g. 0.5"
        )
        self._slow_dur = (
            None
            if slow_call_duration is None
            else _num(
                "slow_call_duration",
                slow_call_duration,
                low=0.0,
                fix="use seconds, e.g. 2.0, or None to disable slow-call accounting",
            )
        )
        self._sr = _num(
            "slow_call_rate", slow_call_rate, low=0.0, high=1.0, fix="use a fraction, e.g. 0.8"
        )
        self._permits = _int(
            "half_open_permits", half_open_permits, fix="use e.g. half_open_permits=1"
        )
        self._open_for = _num("open_for", open_for, low=0.0, fix="use seconds, e.g. 5.0")
        self._open_for_max = _num(
            "open_for_max", open_for_max, low=0.0, fix="use seconds, e.g. 60.0"
        )
        if self._open_for_max < self._open_for:
            raise ConfigurationError(
                f"CircuitBreaker(open_for_max={open_for_max!r}) is invalid: must be >= "
                f"open_for ({open_for!r}); raise open_for_max or lower open_for"
            )
        self._growth = _num(
            "open_growth", open_growth, low=1.0, strict=False, fix="use e.g. 2.0 (1 = fixed)"
        )
        self._jitter = _num(
            "open_jitter", open_jitter, low=0.0, high=0.99, strict=False, fix="use e.g. 0.2"
        )
        self._max_ho_wait = (
            None
            if max_half_open_wait is None
            else _num(
                "max_half_open_wait",
                max_half_open_wait,
                low=0.0,
                fix="use seconds, e.g. 30.0, or None for no limit",
            )
        )
        if health_check is not None:
            _callable("health_check", health_check, "pass an async function, e.g. SELECT 1")
        self._health_check = health_check
        self._probe_interval = _num(
            "probe_interval", probe_interval, low=0.0, fix="use seconds, e.g. 0.5"
        )
        self._probe_timeout = _num(
            "probe_timeout", probe_timeout, low=0.0, fix="use seconds, e.g. 2.0"
        )
        _callable("is_failure", is_failure, "return True/False/None for an exception")
        self._is_failure = is_failure
        self._listeners: list[BreakerListener] = []
        for listener in listeners:
            self.add_listener(listener)
        _callable("clock", clock, "pass time.monotonic or a fake clock")
        _callable("random", random, "pass random.random or a fake")
        self._clock = clock
        self._random = random

        self._b_calls: list[int] = []
        self._b_fails: list[int] = []
        self._b_slows: list[int] = []
        self._calls = self._fails = self._slows = 0
        self._cur_calls = self._cur_fails = self._cur_slows = 0
        self._epoch = 0
        self._bucket_end = 0.0
        self._restart_window(clock())
        self._n_success = self._n_failure = self._n_ignored = self._n_rejected = 0
        self._n_probes = self._n_probe_failures = 0
        self._trips = 0
        self._open_base = self._open_for
        self._open_until = 0.0
        self._next_probe_at = 0.0
        self._probing = False
        self._ho_in_flight = self._ho_successes = 0
        self._ho_since = 0.0
        self._mo_exceeded = False
        self._last_reason = "created"
        self._gen = 0
        self._state = _CLOSED
        self._shared = _SharedPermit(self, True)

    # --- window ---------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        """Move the window to the bucket holding ``now`` (completed buckets go to the ring)."""
        epoch = math.floor(now / self._bucket_width)
        old = self._epoch
        if epoch <= old:  # float rounding at a bucket edge, or a clock that went back
            return
        n = self._n_buckets
        if epoch - old >= n:
            self._clear_window()
        else:
            calls, fails, slows = self._b_calls, self._b_fails, self._b_slows
            i = old % n
            calls[i], fails[i], slows[i] = self._cur_calls, self._cur_fails, self._cur_slows
            for e in range(old + 1, epoch + 1):
                j = e % n  # the slot of bucket e - n, which leaves the window
                self._calls -= calls[j]
                self._fails -= fails[j]
                self._slows -= slows[j]
                calls[j] = fails[j] = slows[j] = 0
            self._cur_calls = self._cur_fails = self._cur_slows = 0
        self._epoch = epoch
        self._bucket_end = (epoch + 1) * self._bucket_width

    def _clear_window(self) -> None:
        n = self._n_buckets
        self._b_calls = [0] * n
        self._b_fails = [0] * n
        self._b_slows = [0] * n
        self._calls = self._fails = self._slows = 0
        self._cur_calls = self._cur_fails = self._cur_slows = 0

    def _restart_window(self, now: float) -> None:
        self._clear_window()
        self._epoch = epoch = math.floor(now / self._bucket_width)
        self._bucket_end = (epoch + 1) * self._bucket_width

    def _record(self, failure: bool, slow: bool) -> None:
        now = self._clock()
        if now >= self._bucket_end:
            self._advance(now)
        self._cur_calls += 1
        calls = self._calls = self._calls + 1
        if failure:
            self._cur_fails += 1
            self._fails += 1
        if slow:
            self._cur_slows += 1
            self._slows += 1
        if calls >= self._min_calls:
            self._check(calls, now)
        streak = self._max_streak
        if streak is not None and self._streak >= streak and self._state is not _OPEN:
            self._exceeded("consecutive_failures", now)

    def _check(self, calls: int, now: float) -> None:
        if self._fails >= self._fr * calls:
            self._exceeded("failure_rate", now)
        elif self._slow_dur is not None and self._slows >= self._sr * calls:
            self._exceeded("slow_call_rate", now)
        elif self._mo_exceeded:
            self._mo_exceeded = False

    def _exceeded(self, reason: str, now: float) -> None:
        if self._state is _CLOSED:
            self._transition(_OPEN, reason, now)
        elif not self._mo_exceeded:  # METRICS_ONLY: report once per crossing
            self._mo_exceeded = True
            self._emit(_METRICS_ONLY, _METRICS_ONLY, f"would_open:{reason}", now, None)

    def _rates(self) -> tuple[float, float]:
        calls = self._calls
        if not calls:
            return 0.0, 0.0
        return self._fails / calls, self._slows / calls

    # --- transitions ----------------------------------------------------------------

    def _transition(self, new: BreakerState, reason: str, now: float) -> None:
        previous = self._state
        open_for: float | None = None
        self._gen += 1
        self._streak = 0
        self._ho_in_flight = self._ho_successes = 0
        self._last_reason = reason
        if new is _OPEN:
            self._trips += 1
            base = self._open_base
            self._open_base = min(self._open_for_max, base * self._growth)
            jitter = self._jitter
            duration = base * (1.0 + jitter * (2.0 * self._random() - 1.0)) if jitter else base
            open_for = max(0.0, min(self._open_for_max, duration))
            self._open_until = now + open_for
            self._next_probe_at = now + self._probe_interval
        elif new is _HALF_OPEN:
            self._ho_since = now
        elif new is _CLOSED:
            self._trips = 0
            self._open_base = self._open_for
        self._shared._live = False
        if new is _CLOSED or new is _METRICS_ONLY or new is _DISABLED:
            self._shared = _SharedPermit(self, new is not _DISABLED)
            self._mo_exceeded = False
            self._restart_window(now)
        self._state = new
        self._emit(previous, new, reason, now, open_for)

    def _emit(
        self,
        previous: BreakerState,
        new: BreakerState,
        reason: str,
        now: float,
        open_for: float | None,
    ) -> None:
        failure_rate, slow_rate = self._rates()
        extra = {
            "breaker": self.name,
            "previous_state": previous.value,
            "state": new.value,
            "reason": reason,
            "open_for": open_for,
            "failure_rate": failure_rate,
            "slow_call_rate": slow_rate,
            "window_calls": self._calls,
        }
        level = logging.WARNING if new is _OPEN or new is _FORCED_OPEN else logging.INFO
        event_name = "breaker.would_open" if reason.startswith("would") else _EVENT_NAMES[new]
        logger.log(level, event_name, extra=extra)
        if not self._listeners:
            return
        event = BreakerEvent(
            name=self.name,
            previous=previous,
            state=new,
            reason=reason,
            at=now,
            failure_rate=failure_rate,
            slow_call_rate=slow_rate,
            calls=self._calls,
            open_for=open_for,
        )
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                logger.exception(
                    "breaker.listener_failed", extra={"breaker": self.name, "state": new.value}
                )

    # --- admission ------------------------------------------------------------------

    def acquire(self) -> BreakerPermit:
        """Admit one call or raise :class:`CircuitOpenError` (synchronous; never probes)."""
        if self._state is _CLOSED:
            return self._shared
        permit = self._acquire_slow(False)
        assert permit is not _PROBE
        return permit  # type: ignore[return-value]

    async def acquire_async(self) -> BreakerPermit:
        """Like :meth:`acquire`, but while OPEN may run the health check (see module doc)."""
        if self._state is _CLOSED:
            return self._shared
        permit = self._acquire_slow(True)
        if permit is _PROBE:
            return await self._probe()
        return permit  # type: ignore[return-value]

    def _reject(self, state: BreakerState, retry_after: float) -> CircuitOpenError:
        self._n_rejected += 1
        return CircuitOpenError(self.name, retry_after, state=state.value)

    def _open_retry_after(self, now: float) -> float:
        until = self._open_until
        if self._health_check is not None and self._next_probe_at < until:
            until = self._next_probe_at
        return until - now if until > now else 0.0

    def _acquire_slow(self, may_probe: bool) -> BreakerPermit | object:
        state = self._state
        if state is _OPEN:
            now = self._clock()
            # With a health check, only a passing probe leaves OPEN: the timer would admit a
            # real call as an extra, unpaced connection attempt on a dead server.
            if now < self._open_until or (may_probe and self._health_check is not None):
                if (
                    may_probe
                    and self._health_check is not None
                    and not self._probing
                    and now >= self._next_probe_at
                ):
                    return _PROBE
                raise self._reject(_OPEN, self._open_retry_after(now))
            self._transition(_HALF_OPEN, "open_for_elapsed", now)
            state = _HALF_OPEN
        if state is _HALF_OPEN:
            now = self._clock()
            wait = self._max_ho_wait
            if wait is not None and now - self._ho_since >= wait:
                self._transition(_OPEN, "half_open_timeout", now)
                raise self._reject(_OPEN, self._open_retry_after(now))
            if self._ho_in_flight + self._ho_successes < self._permits:
                self._ho_in_flight += 1
                return _HalfOpenPermit(self, self._gen)
            raise self._reject(_HALF_OPEN, 0.0)
        if state is _FORCED_OPEN:
            raise self._reject(_FORCED_OPEN, math.inf)
        return self._shared  # CLOSED (raced), DISABLED, METRICS_ONLY

    async def _probe(self) -> BreakerPermit:
        health_check = self._health_check
        assert health_check is not None
        gen = self._gen
        self._probing = True
        self._n_probes += 1
        ok = False
        try:
            with anyio.fail_after(self._probe_timeout):
                await health_check()
            ok = True
        except Exception as exc:
            self._n_probe_failures += 1
            logger.info(
                "breaker.probe_failed",
                extra={"breaker": self.name, "error_type": type(exc).__qualname__},
            )
        finally:
            self._probing = False
            now = self._clock()
            self._next_probe_at = now + self._probe_interval
        if self._gen != gen or self._state is not _OPEN:
            # Someone else moved the breaker meanwhile: take the ordinary path.
            permit = self._acquire_slow(False)
            return permit  # type: ignore[return-value]
        if not ok:
            raise self._reject(_OPEN, self._open_retry_after(now))
        self._transition(_HALF_OPEN, "probe_succeeded", now)
        self._ho_in_flight += 1
        return _HalfOpenPermit(self, self._gen)

    # --- context manager and decorator ----------------------------------------------

    def _settle(self, permit: BreakerPermit, exc: BaseException, start: float | None) -> None:
        try:
            verdict = self._is_failure(exc)
        except Exception:
            logger.exception("breaker.is_failure_failed", extra={"breaker": self.name})
            verdict = True if isinstance(exc, Exception) else None
        if verdict is None:
            permit.ignore()
            return
        duration = None if start is None else self._clock() - start
        if verdict:
            permit.failure(duration)
        else:
            permit.success(duration)

    async def __aenter__(self) -> CircuitBreaker:
        permit = self._shared if self._state is _CLOSED else await self.acquire_async()
        start = self._clock() if self._slow_dur is not None else None
        _ENTERED.set((self, permit, start, _ENTERED.get()))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        frame = _ENTERED.get()
        if frame is None or frame[0] is not self:
            raise RuntimeError(
                f"CircuitBreaker {self.name!r}: __aexit__ without a matching __aenter__ in "
                "this task; use 'async with breaker:' in one task"
            )
        _, permit, start, previous = frame
        _ENTERED.set(previous)
        if exc is None:
            permit.success(None if start is None else self._clock() - start)
        else:
            self._settle(permit, exc, start)

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        """Decorate an ``async def`` so every call goes through the breaker."""

        @functools.wraps(fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
            permit = self._shared if self._state is _CLOSED else await self.acquire_async()
            start = self._clock() if self._slow_dur is not None else None
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                self._settle(permit, exc, start)
                raise
            permit.success(None if start is None else self._clock() - start)
            return result

        return guarded

    # --- manual control and inspection ----------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state (OPEN becomes HALF_OPEN lazily, on the next admission)."""
        return self._state

    def force_open(self) -> None:
        """Reject every call until :meth:`reset` (state FORCED_OPEN)."""
        self._transition(_FORCED_OPEN, "manual", self._clock())

    def disable(self) -> None:
        """Admit every call and record nothing until :meth:`reset` (state DISABLED)."""
        self._transition(_DISABLED, "manual", self._clock())

    def metrics_only(self) -> None:
        """Shadow mode: admit every call, record, emit ``would_open`` events, never reject."""
        self._transition(_METRICS_ONLY, "manual", self._clock())

    def reset(self) -> None:
        """Back to CLOSED with an empty window and the initial open duration."""
        self._transition(_CLOSED, "manual", self._clock())

    def add_listener(self, listener: BreakerListener) -> None:
        """Register a transition listener."""
        _callable("listeners", listener, "pass callables taking a BreakerEvent")
        self._listeners.append(listener)

    def statistics(self) -> BreakerStatistics:
        """A frozen snapshot (rates over the current window)."""
        now = self._clock()
        if self._shared._live and now >= self._bucket_end:
            self._advance(now)
        failure_rate, slow_rate = self._rates()
        state = self._state
        if state is _OPEN:
            retry_after = self._open_retry_after(now)
        elif state is _FORCED_OPEN:
            retry_after = math.inf
        else:
            retry_after = 0.0
        return BreakerStatistics(
            name=self.name,
            state=state,
            calls=self._calls,
            failures=self._fails,
            slow_calls=self._slows,
            failure_rate=failure_rate,
            slow_call_rate=slow_rate,
            successes_total=self._n_success,
            failures_total=self._n_failure,
            ignored_total=self._n_ignored,
            rejected_total=self._n_rejected,
            trips=self._trips,
            retry_after=retry_after,
            half_open_in_flight=self._ho_in_flight,
            probes=self._n_probes,
            probe_failures=self._n_probe_failures,
            last_reason=self._last_reason,
        )

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state.value!r})"
