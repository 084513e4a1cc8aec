"""The retry runner: a :class:`RetryPolicy` applied through tenacity's public API.

The first attempt is a plain ``await`` (no tenacity object, no cost until something
fails). After the first retryable failure a :class:`RetryLoop` builds one
:class:`tenacity.AsyncRetrying` and drives it by async iteration:

* ``stop``: ``stop_base`` strategies composed with ``|`` — the attempts cap
  (``stop_after_attempt``), "no sleep may cross the deadline" and the retry budget (asked
  last, so a token is spent only on a retry that will really happen);
* ``wait``: a ``wait_base`` reading the failed attempt's :class:`RetryDecision` (category,
  ``retry_after`` hint) from tenacity's own outcome — no side table;
* ``before_sleep``: the ``retry.scheduled`` log record and hook;
* ``retry_error_callback``: records the give-up; the caller re-raises the *original* last
  exception with a note (never a ``tenacity.RetryError``).

Each failed attempt is handed to tenacity as a *result* (``retry_state.set_result``), never
by raising through it, so the unit of work's typed outcomes pass through unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_always, stop_after_attempt
from tenacity.stop import stop_any, stop_base

from resilient_db.policies import _retry_policy
from resilient_db.policies._budget import RetryBudget
from resilient_db.policies._clock import Clock
from resilient_db.policies._retry_policy import (
    DEFAULT_PER_CATEGORY,
    CategoryBackoff,
    Jitter,
    RetryDecision,
    RetryEvent,
    RetryHooks,
    RetryPolicy,
    RetryStatistics,
    StopReason,
    is_testing,
    set_testing,
)
from resilient_db.policies._retry_strategies import (
    Failed,
    Labelled,
    PolicyWait,
    Run,
    StopAtCategoryCap,
    StopBeforeDeadline,
    StopWithoutBudget,
    checkpoint,
    failed_attempt,
    give_up,
)

__all__ = [
    "DEFAULT_PER_CATEGORY",
    "CategoryBackoff",
    "Jitter",
    "RetryDecision",
    "RetryEvent",
    "RetryHooks",
    "RetryLoop",
    "RetryPolicy",
    "RetryStatistics",
    "StopReason",
    "is_testing",
    "retry_call",
    "set_testing",
]

T = TypeVar("T")

logger = logging.getLogger("resilient_db")

# --- tenacity strategies ----------------------------------------------------------------

_REMEDY: Final[Mapping[str, str]] = {
    "attempts": "all attempts were used; raise RetryPolicy(attempts=...) if the failure is "
    "transient, or fix its cause",
    "deadline": "the next backoff would have crossed the deadline; allow more time "
    "(RetryPolicy(deadline=...) or the call's deadline) if the work can wait",
    "budget": "the shared RetryBudget refused another retry (many retries recently: a "
    "retry storm guard); check the database's health, or enlarge the budget",
}


# --- the runner -----------------------------------------------------------------------


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


class RetryLoop:
    """The retry machinery after a first retryable failure (tenacity drives it).

    ``clock`` (default: the policy's) is the one clock of the caller (a unit of work's):
    ``start`` and ``deadline_at`` are read on it.

    :func:`retry_call` and the units of work share it: after each retryable failure call
    :meth:`failed`, then :meth:`backoff` (which sleeps, or re-raises the last original
    exception, annotated, when the policy stops); end with :meth:`succeeded`,
    :meth:`not_retryable` or :meth:`cancelled`. Built only on the first failure: the happy
    path never creates one.
    """

    __slots__ = (
        "_attempts",
        "_clock",
        "_iter",
        "_last",
        "_run",
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
        clock: Clock | None = None,
    ) -> None:
        self.policy, self.budget, self.hooks, self.name = policy, budget, hooks, name
        clock = self._clock = policy.clock if clock is None else clock
        self.start = clock() if start is None else start
        testing = self._testing = _retry_policy._testing
        max_attempts = policy.attempts
        if testing is not None:
            max_attempts = min(testing.attempts, max_attempts) if testing.cap else testing.attempts
        limit = float("inf") if policy.deadline is None else self.start + policy.deadline
        if deadline_at is not None and deadline_at < limit:
            limit = deadline_at
        run = self._run = Run()
        stops: list[stop_base] = [
            Labelled(stop_after_attempt(max_attempts), "attempts", run),
            Labelled(StopAtCategoryCap(run), "attempts", run),
            Labelled(StopBeforeDeadline(clock, limit), "deadline", run),
        ]
        if budget is not None:  # asked last: it spends a token
            stops.append(Labelled(StopWithoutBudget(budget), "budget", run))
        stop = stop_any(*stops)
        retrying = AsyncRetrying(
            stop=stop,
            wait=PolicyWait(policy, run, testing is not None),
            retry=retry_always,
            sleep=checkpoint if testing is not None else policy.sleep,
            before_sleep=self._before_sleep,
            retry_error_callback=give_up,
        )
        self._iter = retrying.__aiter__()
        self._attempts: RetryCallState | None = None
        self._last = Failed(first, decision)

    @property
    def attempts(self) -> int:
        """Attempts made so far (the first one included)."""
        state = self._attempts
        return 1 if state is None else int(state.attempt_number)

    def failed(self, exc: Exception, decision: RetryDecision) -> None:
        """Record another retryable failure (call :meth:`backoff` next)."""
        self._last = Failed(exc, decision)

    async def backoff(self) -> None:
        """Sleep before the next attempt, or re-raise the last failure if the policy stops."""
        it = self._iter
        state = self._attempts
        if state is None:
            # Attempt 1 already ran (directly): replay its outcome into tenacity's state.
            state = self._attempts = (await it.__anext__()).retry_state
        state.set_result(self._last)
        stopped = False
        try:
            await it.__anext__()  # tenacity: retry? wait, stop, before_sleep, sleep
        except StopAsyncIteration:
            stopped = True
        except BaseException:
            self.cancelled()
            raise
        if stopped:
            self._give_up()

    def _give_up(self) -> None:
        run, last = self._run, self._last.error
        attempts = self.attempts
        elapsed = self._clock() - self.start
        reason = run.reason
        category = self._last.decision.category
        last.add_note(
            f"resilient_db: gave up after {attempts} attempt(s) in {elapsed:.3f}s "
            f"(stopped by {reason}); {_REMEDY[reason]}"
        )
        logger.warning(
            "retry.gave_up",
            extra={
                "retry_name": self.name,
                "attempts": attempts,
                "stop_reason": reason,
                "elapsed": elapsed,
                "category": category,
                "error_type": type(last).__qualname__,
            },
        )
        _finish(self.hooks, self.name, attempts, run.total_sleep, elapsed, reason, category)
        raise last

    def _before_sleep(self, rs: RetryCallState) -> None:
        seconds = float(rs.upcoming_sleep)
        failed = failed_attempt(rs)
        run, name, last = self._run, self.name, failed.error
        attempt = int(rs.attempt_number)
        category = failed.decision.category
        logger.info(
            "retry.scheduled",
            extra={
                "retry_name": name,
                "attempt": attempt,
                "sleep": seconds,
                "category": category,
                "error_type": type(last).__qualname__,
            },
        )
        hooks = self.hooks
        if hooks is not None:
            event = RetryEvent(
                name=name,
                attempt=attempt,
                category=category,
                exception=last,
                sleep=seconds,
                elapsed=self._clock() - self.start,
            )
            try:
                hooks.on_retry(event)
            except Exception:
                logger.exception(
                    "retry.hook_failed", extra={"retry_name": name, "hook": "on_retry"}
                )
        run.previous = seconds
        run.total_sleep += seconds

    def not_retryable(self, exc: BaseException) -> None:
        """The latest attempt failed with a non-retryable error (re-raise it after this)."""
        attempts = self.attempts
        exc.add_note(
            f"resilient_db: attempt {attempts} failed with a non-retryable error "
            f"after {attempts - 1} retryable failure(s); not retried"
        )
        self._done("not_retryable", attempts)

    def cancelled(self) -> None:
        """The latest attempt (or the backoff sleep) was cancelled (re-raise after this)."""
        self._done("cancelled", self.attempts)

    def succeeded(self) -> None:
        """The latest attempt succeeded."""
        if self.budget is not None:
            self.budget.deposit()
        self._done("success", self.attempts)

    def _done(self, reason: StopReason, attempts: int) -> None:
        run = self._run
        _finish(
            self.hooks,
            self.name,
            attempts,
            run.total_sleep,
            self._clock() - self.start,
            reason,
            self._last.decision.category,
        )


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
    start = policy.clock()
    first, decision, result = await _first(fn, policy, decide, budget, hooks, name, start)
    if first is None:
        return result  # type: ignore[return-value]
    assert decision is not None
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


async def _first(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    decide: Callable[[BaseException], RetryDecision | None],
    budget: RetryBudget | None,
    hooks: RetryHooks | None,
    name: str | None,
    start: float,
) -> tuple[Exception | None, RetryDecision | None, T | None]:
    """The direct first attempt: (None, None, result), or its retryable failure."""
    clock = policy.clock
    try:
        result = await fn()
    except Exception as exc:
        decision = decide(exc)
        if decision is None:
            if hooks is not None:
                _finish(hooks, name, 1, 0.0, clock() - start, "not_retryable", None)
            raise
        return exc, decision, None
    except BaseException:
        if hooks is not None:
            _finish(hooks, name, 1, 0.0, clock() - start, "cancelled", None)
        raise
    if budget is not None:
        budget.deposit()
    if hooks is not None:
        _finish(hooks, name, 1, 0.0, clock() - start, "success", None)
    return None, None, result
