"""RetryPolicy and the retry runner (tenacity-driven after the first failure).

``retry_call`` awaits the unit of work directly; only when it fails with a retryable error
does it build a :class:`tenacity.AsyncRetrying` whose custom wait, stop and retry strategies
implement the policy: exponential backoff with jitter (per error category), a cap on
attempts, a total deadline that no sleep may cross ("don't start what cannot finish"), and a
shared :class:`~resilient_db.RetryBudget`. When it gives up it re-raises the *original*
last exception with a note (``add_note``) saying how many attempts were made, why it
stopped and what to do; never a ``tenacity.RetryError``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Final, Literal, Protocol, TypeVar

import anyio.lowlevel
from tenacity import AsyncRetrying, DoSleep, RetryCallState

from resilient_db._errors import ConfigurationError
from resilient_db.policies._budget import RetryBudget
from resilient_db.policies._clock import (
    Clock,
    RandomSource,
    Sleep,
    default_clock,
    default_random,
    default_sleep,
)

__all__ = [
    "DEFAULT_PER_CATEGORY",
    "CategoryBackoff",
    "Jitter",
    "RetryDecision",
    "RetryEvent",
    "RetryHooks",
    "RetryPolicy",
    "RetryStatistics",
    "StopReason",
    "is_testing",
    "retry_call",
    "set_testing",
]

T = TypeVar("T")

logger = logging.getLogger("resilient_db")

Jitter = Literal["full", "decorrelated", "none"]
#: Why a call ended: it succeeded, the error was not retryable, or retrying stopped because
#: the attempts were used up, the next sleep would cross the deadline, the budget refused,
#: or the call was cancelled (any non-``Exception``).
StopReason = Literal["success", "not_retryable", "attempts", "deadline", "budget", "cancelled"]

_JITTERS: Final = ("full", "decorrelated", "none")


def _bad(owner: str, option: str, value: object, allowed: str, fix: str) -> ConfigurationError:
    return ConfigurationError(f"{owner}({option}={value!r}) is invalid: {allowed}; {fix}")


def _finite(
    owner: str, option: str, value: object, *, low: float, strict: bool = False, fix: str
) -> None:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and (value > low if strict else value >= low)
    )
    if not ok:
        rel = ">" if strict else ">="
        raise _bad(owner, option, value, f"must be a finite number {rel} {low}", fix)


@dataclass(frozen=True, kw_only=True, slots=True)
class CategoryBackoff:
    """Backoff override for one error category (e.g. ``"serialization"``).

    ``initial`` is the first backoff ceiling, ``max_backoff`` the largest; ``multiplier``
    ``None`` means "use the policy's". Jitter is always the policy's.
    """

    initial: float
    max_backoff: float
    multiplier: float | None = None

    def __post_init__(self) -> None:
        _finite("CategoryBackoff", "initial", self.initial, low=0.0, fix="use e.g. 0.005")
        _finite("CategoryBackoff", "max_backoff", self.max_backoff, low=0.0, fix="use e.g. 1.0")
        if self.max_backoff < self.initial:
            raise _bad(
                "CategoryBackoff",
                "max_backoff",
                self.max_backoff,
                f"must be >= initial ({self.initial})",
                "raise max_backoff or lower initial",
            )
        if self.multiplier is not None:
            _finite("CategoryBackoff", "multiplier", self.multiplier, low=1.0, fix="use e.g. 2.0")


#: Default per-category backoffs: conflicts wait milliseconds, lock timeouts a little
#: longer, lost connections and an unreachable or starting server much longer.
DEFAULT_PER_CATEGORY: Final[Mapping[str, CategoryBackoff]] = MappingProxyType(
    {
        "serialization": CategoryBackoff(initial=0.002, max_backoff=0.05),
        "deadlock": CategoryBackoff(initial=0.005, max_backoff=0.1),
        "lock_timeout": CategoryBackoff(initial=0.05, max_backoff=1.0),
        "stale_cache": CategoryBackoff(initial=0.0, max_backoff=0.0),
        "connection_lost": CategoryBackoff(initial=0.1, max_backoff=5.0),
        "connect_failed": CategoryBackoff(initial=0.25, max_backoff=5.0),
        "server_unavailable": CategoryBackoff(initial=0.5, max_backoff=10.0),
        "overload": CategoryBackoff(initial=0.25, max_backoff=10.0),
        "failover": CategoryBackoff(initial=0.5, max_backoff=10.0),
    }
)


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """How a failed unit of work is retried.

    * ``attempts`` (>= 1): total attempts including the first.
    * ``deadline`` (seconds > 0, or ``None``): covers every attempt and sleep; a sleep that
      would end after it is never started.
    * ``initial``, ``multiplier``, ``max_backoff``: attempt ``n`` (1-based, the one that
      just failed) backs off up to ``min(max_backoff, initial * multiplier ** (n - 1))``.
    * ``jitter``: ``"full"`` (uniform in ``[0, ceiling]``, the default),
      ``"decorrelated"`` (uniform in ``[initial, 3 * previous]``, capped) or ``"none"``.
    * ``per_category``: :class:`CategoryBackoff` overrides by error category (see
      :data:`DEFAULT_PER_CATEGORY`); an unknown category uses the policy's own values.
    * ``max_retry_after``: a server or breaker ``retry_after`` hint is honoured (the wait
      is at least the hint) but clamped to this many seconds.
    * ``clock``, ``sleep``, ``random``: injectable for tests.
    """

    attempts: int = 5
    deadline: float | None = 30.0
    initial: float = 0.05
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: Jitter = "full"
    per_category: Mapping[str, CategoryBackoff] = field(
        default_factory=lambda: DEFAULT_PER_CATEGORY, hash=False
    )
    max_retry_after: float = 30.0
    clock: Clock = default_clock
    sleep: Sleep = default_sleep
    random: RandomSource = default_random

    def __post_init__(self) -> None:
        o = "RetryPolicy"
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise _bad(o, "attempts", self.attempts, "must be an int >= 1", "use e.g. 5")
        if self.attempts < 1:
            raise _bad(o, "attempts", self.attempts, "must be >= 1 (1 = no retries)", "use e.g. 5")
        if self.deadline is not None:
            _finite(
                o,
                "deadline",
                self.deadline,
                low=0.0,
                strict=True,
                fix="use seconds such as 30.0, or None for no deadline",
            )
        _finite(o, "initial", self.initial, low=0.0, fix="use e.g. 0.05 (seconds)")
        _finite(o, "max_backoff", self.max_backoff, low=0.0, fix="use e.g. 5.0 (seconds)")
        if self.max_backoff < self.initial:
            raise _bad(
                o,
                "max_backoff",
                self.max_backoff,
                f"must be >= initial ({self.initial})",
                "raise max_backoff or lower initial",
            )
        _finite(o, "multiplier", self.multiplier, low=1.0, fix="use e.g. 2.0")
        if self.jitter not in _JITTERS:
            raise _bad(
                o,
                "jitter",
                self.jitter,
                "must be 'full', 'decorrelated' or 'none'",
                "use jitter='full' (recommended)",
            )
        if not isinstance(self.per_category, Mapping):
            raise _bad(
                o,
                "per_category",
                self.per_category,
                "must be a mapping of category name to CategoryBackoff",
                "pass e.g. {'serialization': CategoryBackoff(initial=0.002, max_backoff=0.05)}",
            )
        for key, value in self.per_category.items():
            if not isinstance(key, str) or not isinstance(value, CategoryBackoff):
                raise _bad(
                    o,
                    "per_category",
                    {key: value},
                    "keys must be category names (str) and values CategoryBackoff objects",
                    "wrap the numbers: CategoryBackoff(initial=..., max_backoff=...)",
                )
        if self.per_category is not DEFAULT_PER_CATEGORY:
            object.__setattr__(self, "per_category", MappingProxyType(dict(self.per_category)))
        _finite(o, "max_retry_after", self.max_retry_after, low=0.0, fix="use e.g. 30.0")
        for option in ("clock", "sleep", "random"):
            if not callable(getattr(self, option)):
                raise _bad(
                    o,
                    option,
                    getattr(self, option),
                    "must be callable",
                    "pass a function (see the resilient_db.policies._clock protocols) "
                    "or leave the default",
                )

    def backoff(
        self,
        attempt: int,
        *,
        category: str | None = None,
        previous: float | None = None,
        retry_after: float | None = None,
    ) -> float:
        """Seconds to wait after attempt number ``attempt`` (1-based) failed.

        ``previous`` is the previous wait (used by decorrelated jitter); ``retry_after`` a
        hint from the server or a breaker: the result is at least
        ``min(retry_after, max_retry_after)``. Always finite and >= 0, for any attempt.
        """
        if attempt < 1:
            raise ConfigurationError(
                f"RetryPolicy.backoff(attempt={attempt!r}) is invalid: attempts are numbered "
                "from 1 (the attempt that just failed); pass attempt >= 1"
            )
        initial, cap, mult = self.initial, self.max_backoff, self.multiplier
        if category is not None:
            override = self.per_category.get(category)
            if override is not None:
                initial, cap = override.initial, override.max_backoff
                if override.multiplier is not None:
                    mult = override.multiplier
        jitter = self.jitter
        if jitter == "decorrelated":
            prev = initial if previous is None or not previous > initial else min(previous, cap)
            high = max(initial, prev * 3.0)
            wait = min(cap, initial + self.random() * (high - initial))
        else:
            # The exponential ceiling, computed in log space so attempt 10,000 cannot overflow.
            if initial <= 0.0 or initial >= cap or mult == 1.0:
                ceiling = min(initial, cap)
            else:
                log_ceiling = math.log(initial) + (attempt - 1) * math.log(mult)
                ceiling = cap if log_ceiling >= math.log(cap) else min(cap, math.exp(log_ceiling))
            wait = ceiling * self.random() if jitter == "full" else ceiling
        if retry_after is not None and retry_after > 0.0:  # NaN and negatives are ignored
            hint = min(retry_after, self.max_retry_after)
            if hint > wait:
                wait = hint
        return wait


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryDecision:
    """``decide(exc)``'s answer for a retryable error: its category and a wait hint."""

    category: str | None = None
    retry_after: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryEvent:
    """Passed to :meth:`RetryHooks.on_retry` before each backoff sleep."""

    name: str | None
    #: The attempt that just failed (1-based); the next attempt is ``attempt + 1``.
    attempt: int
    category: str | None
    exception: BaseException
    #: Seconds about to be slept.
    sleep: float
    #: Seconds since the call started.
    elapsed: float


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryStatistics:
    """Per-call statistics, passed to :meth:`RetryHooks.on_finish` (never shared)."""

    name: str | None
    attempts: int
    total_sleep: float
    elapsed: float
    stop_reason: StopReason
    #: Category of the last retryable failure, if any.
    last_category: str | None = None


class RetryHooks(Protocol):
    """Observer of one ``retry_call``. Subclass it to inherit no-op defaults."""

    def on_retry(self, event: RetryEvent) -> None:
        """Called before each backoff sleep."""
        return

    def on_finish(self, statistics: RetryStatistics) -> None:
        """Called once when the call ends (success, give-up, or cancellation)."""
        return


# --- testing switch -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Testing:
    attempts: int
    cap: bool


_testing: _Testing | None = None


class _RestoreTesting:
    """Returned by :func:`set_testing`; as a context manager it restores the old mode."""

    __slots__ = ("_old",)

    def __init__(self, old: _Testing | None) -> None:
        self._old = old

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        global _testing
        _testing = self._old


def set_testing(testing: bool, *, attempts: int = 1, cap: bool = False) -> _RestoreTesting:
    """Turn testing mode on or off (like ``stamina.set_testing``).

    In testing mode retries do not sleep (they only yield to the event loop) and every
    policy makes exactly ``attempts`` attempts, or at most ``attempts`` when ``cap`` is
    true. Usable as a context manager: ``with set_testing(True): ...`` restores the
    previous mode on exit.
    """
    global _testing
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ConfigurationError(
            f"set_testing(attempts={attempts!r}) is invalid: must be an int >= 1; "
            "use attempts=1 to disable retries in tests"
        )
    old = _testing
    _testing = _Testing(attempts, cap) if testing else None
    return _RestoreTesting(old)


def is_testing() -> bool:
    """Whether :func:`set_testing` mode is active."""
    return _testing is not None


# --- the runner -----------------------------------------------------------------------

_STOP: Final = object()

_REMEDY: Final[Mapping[str, str]] = {
    "attempts": "all attempts were used; raise RetryPolicy(attempts=...) if the failure is "
    "transient, or fix its cause",
    "deadline": "the next backoff would have crossed the deadline; allow more time "
    "(RetryPolicy(deadline=...) or the call's deadline) if the work can wait",
    "budget": "the shared RetryBudget refused another retry (many retries recently: a "
    "retry storm guard); check the database's health, or enlarge the budget",
}


class _Run:
    """Mutable per-call state of one retrying call (never shared between calls)."""

    __slots__ = ("decision", "previous", "reason", "total_sleep")

    def __init__(self, decision: RetryDecision) -> None:
        self.decision = decision
        self.previous: float | None = None
        self.reason: StopReason = "attempts"
        self.total_sleep = 0.0


def _finish(
    hooks: RetryHooks | None,
    name: str | None,
    attempts: int,
    total_sleep: float,
    elapsed: float,
    reason: StopReason,
    category: str | None,
) -> None:
    if hooks is None:
        return
    try:
        hooks.on_finish(
            RetryStatistics(
                name=name,
                attempts=attempts,
                total_sleep=total_sleep,
                elapsed=elapsed,
                stop_reason=reason,
                last_category=category,
            )
        )
    except Exception:
        logger.exception("retry.hook_failed", extra={"retry_name": name, "hook": "on_finish"})


async def retry_call(
    fn: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    decide: Callable[[BaseException], RetryDecision | None],
    budget: RetryBudget | None = None,
    deadline_at: float | None = None,
    hooks: RetryHooks | None = None,
    name: str | None = None,
) -> T:
    """Await ``fn()``, retrying per ``policy`` while ``decide(exc)`` says it is retryable.

    The first attempt is a plain ``await fn()``. Non-``Exception`` errors (cancellation,
    ``KeyboardInterrupt``) propagate at once; ``decide(exc) is None`` re-raises ``exc``
    unchanged. ``deadline_at`` is an absolute time on ``policy.clock`` that tightens
    ``policy.deadline``. Each scheduled retry withdraws a token from ``budget`` and each
    success deposits one. On giving up the last original exception is re-raised with a
    note. ``fn`` must start a fresh unit of work on every call.
    """
    clock = policy.clock
    start = clock()
    try:
        result = await fn()
    except Exception as exc:
        decision = decide(exc)
        if decision is None:
            if hooks is not None:
                _finish(hooks, name, 1, 0.0, clock() - start, "not_retryable", None)
            raise
        first = exc
    except BaseException:
        if hooks is not None:
            _finish(hooks, name, 1, 0.0, clock() - start, "cancelled", None)
        raise
    else:
        if budget is not None:
            budget.deposit()
        if hooks is not None:
            _finish(hooks, name, 1, 0.0, clock() - start, "success", None)
        return result
    # Outside the ``except`` block, so later errors do not chain onto the first one.
    return await _retry_after_failure(
        fn, first, decision, policy, decide, budget, deadline_at, hooks, name, start
    )


async def _retry_after_failure(
    fn: Callable[[], Awaitable[T]],
    first: Exception,
    decision: RetryDecision,
    policy: RetryPolicy,
    decide: Callable[[BaseException], RetryDecision | None],
    budget: RetryBudget | None,
    deadline_at: float | None,
    hooks: RetryHooks | None,
    name: str | None,
    start: float,
) -> T:
    loop = RetryLoop(
        first,
        decision,
        policy=policy,
        budget=budget,
        deadline_at=deadline_at,
        hooks=hooks,
        name=name,
        start=start,
    )
    while True:
        await loop.backoff()  # raises the last original exception when it stops
        try:
            result = await fn()
        except Exception as exc:
            new_decision = decide(exc)
            if new_decision is None:
                loop.not_retryable(exc)
                raise
            loop.failed(exc, new_decision)
        except BaseException:
            loop.cancelled()
            raise
        else:
            loop.succeeded()
            return result


class RetryLoop:
    """The retry machinery after a first retryable failure (tenacity drives it).

    :func:`retry_call` and the block form of units of work (``Database.attempts()``) share
    it: after each retryable failure call :meth:`failed`, then :meth:`backoff` (which
    sleeps, or re-raises the last original exception, annotated, when the policy stops);
    end with :meth:`succeeded`, :meth:`not_retryable` or :meth:`cancelled`. Built only on
    the first failure: the happy path never creates one.
    """

    __slots__ = (
        "_clock",
        "_last",
        "_limit",
        "_max_attempts",
        "_retrying",
        "_run",
        "_state",
        "_testing",
        "budget",
        "hooks",
        "name",
        "policy",
        "start",
    )

    def __init__(
        self,
        first: Exception,
        decision: RetryDecision,
        *,
        policy: RetryPolicy,
        budget: RetryBudget | None = None,
        deadline_at: float | None = None,
        hooks: RetryHooks | None = None,
        name: str | None = None,
        start: float | None = None,
    ) -> None:
        self.policy = policy
        self.budget = budget
        self.hooks = hooks
        self.name = name
        clock = self._clock = policy.clock
        self.start = clock() if start is None else start
        testing = self._testing = _testing
        max_attempts = policy.attempts
        if testing is not None:
            max_attempts = min(testing.attempts, max_attempts) if testing.cap else testing.attempts
        self._max_attempts = max_attempts
        limit = math.inf if policy.deadline is None else self.start + policy.deadline
        if deadline_at is not None and deadline_at < limit:
            limit = deadline_at
        self._limit = limit
        run = self._run = _Run(decision)

        def wait(rs: RetryCallState) -> float:
            if testing is not None:
                return 0.0
            d = run.decision
            return policy.backoff(
                rs.attempt_number,
                category=d.category,
                previous=run.previous,
                retry_after=d.retry_after,
            )

        def stop(rs: RetryCallState) -> bool:
            if rs.attempt_number >= max_attempts:
                run.reason = "attempts"
                return True
            if clock() + rs.upcoming_sleep > limit:
                run.reason = "deadline"
                return True
            if budget is not None and not budget.withdraw():
                run.reason = "budget"
                return True
            return False

        def always(rs: RetryCallState) -> bool:
            return True

        def give_up(rs: RetryCallState) -> object:
            return _STOP

        retrying = self._retrying = AsyncRetrying(
            stop=stop, wait=wait, retry=always, retry_error_callback=give_up, reraise=True
        )
        retrying.begin()
        state = self._state = RetryCallState(retrying, fn=None, args=(), kwargs={})
        state.set_exception((type(first), first, first.__traceback__))
        self._last: Exception = first

    @property
    def attempts(self) -> int:
        """Attempts made so far (the first one included)."""
        return int(self._state.attempt_number)

    def failed(self, exc: Exception, decision: RetryDecision) -> None:
        """Record another retryable failure (call :meth:`backoff` next)."""
        self._run.decision = decision
        self._last = exc
        self._state.set_exception((type(exc), exc, exc.__traceback__))

    async def backoff(self) -> None:
        """Sleep before the next attempt, or re-raise the last failure if the policy stops."""
        run, state, clock, last, name = self._run, self._state, self._clock, self._last, self.name
        do = await self._retrying.iter(state)
        if not isinstance(do, DoSleep):
            attempts = state.attempt_number
            elapsed = clock() - self.start
            reason = run.reason
            last.add_note(
                f"resilient_db: gave up after {attempts} attempt(s) in {elapsed:.3f}s "
                f"(stopped by {reason}); {_REMEDY[reason]}"
            )
            logger.warning(
                "retry.gave_up",
                extra={
                    "retry_name": name,
                    "attempts": attempts,
                    "stop_reason": reason,
                    "elapsed": elapsed,
                    "category": run.decision.category,
                    "error_type": type(last).__qualname__,
                },
            )
            _finish(
                self.hooks, name, attempts, run.total_sleep, elapsed, reason, run.decision.category
            )
            raise last
        seconds = float(do)
        failed_attempt = state.attempt_number
        state.prepare_for_next_attempt()
        logger.info(
            "retry.scheduled",
            extra={
                "retry_name": name,
                "attempt": failed_attempt,
                "sleep": seconds,
                "category": run.decision.category,
                "error_type": type(last).__qualname__,
            },
        )
        hooks = self.hooks
        if hooks is not None:
            try:
                hooks.on_retry(
                    RetryEvent(
                        name=name,
                        attempt=failed_attempt,
                        category=run.decision.category,
                        exception=last,
                        sleep=seconds,
                        elapsed=clock() - self.start,
                    )
                )
            except Exception:
                logger.exception(
                    "retry.hook_failed", extra={"retry_name": name, "hook": "on_retry"}
                )
        run.previous = seconds
        run.total_sleep += seconds
        try:
            if self._testing is not None:
                await anyio.lowlevel.checkpoint()
            else:
                await self.policy.sleep(seconds)
        except BaseException:
            self.cancelled()
            raise

    def not_retryable(self, exc: BaseException) -> None:
        """The latest attempt failed with a non-retryable error (re-raise it after this)."""
        attempts = self._state.attempt_number
        exc.add_note(
            f"resilient_db: attempt {attempts} failed with a non-retryable error "
            f"after {attempts - 1} retryable failure(s); not retried"
        )
        self._done("not_retryable")

    def cancelled(self) -> None:
        """The latest attempt was cancelled (re-raise after this)."""
        self._done("cancelled")

    def succeeded(self) -> None:
        """The latest attempt succeeded."""
        if self.budget is not None:
            self.budget.deposit()
        self._done("success")

    def _done(self, reason: StopReason) -> None:
        run = self._run
        _finish(
            self.hooks,
            self.name,
            self._state.attempt_number,
            run.total_sleep,
            self._clock() - self.start,
            reason,
            run.decision.category,
        )
