"""The unit of work's runner: the deadline, the direct first attempt, then the retry loop.

One unit of work, end to end (DESIGN §2)::

    deadline (a timer handle) ─ covers every attempt and every sleep; at most the
                                 allowance (0.25 s) of cleanup after it
    attempt 1, awaited directly ─ Committed → budget deposit → result
                                  Raise     → raise (fatal, cancelled, in doubt)
                                  Retry     → RetryLoop (tenacity) → backoff → attempt 2 …

The deadline is one timer handle (:class:`~resilient_db.units._context.Deadline`: no cancel
scope on the happy path); what the attempt does after it fired is bounded by
:meth:`Call.cleanup_bound`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from resilient_db._errors import CircuitOpenError
from resilient_db.policies import RetryLoop
from resilient_db.units._attempt import Attempt, open_attempt, run_attempt
from resilient_db.units._context import Call, UnitContext
from resilient_db.units._options import DeadlineExceeded, UnitEvent, UnitOptions
from resilient_db.units._outcome import Outcome, Raise, Retry

__all__ = ["deadline_error", "drive", "finished", "open_unit", "run_unit", "settle", "started"]

T = TypeVar("T")


async def run_unit(
    ctx: UnitContext,
    options: UnitOptions,
    body: Callable[[AsyncSession], Awaitable[T]],
    key: str | None = None,
) -> T:
    """Run ``body`` as one unit of work (retried whole) within ``options.deadline``;
    ``key`` (normalised) is its operation key, recorded in the ledger.

    One coroutine frame above the attempt on the happy path: every await inside the unit
    resumes each frame above it, so the layers are kept flat.
    """
    call = Call(options, ctx.clock(), key)
    listening = bool(ctx.reporter.listeners)
    if listening:
        started(ctx, call)
    armed = call.arm(ctx.clock)
    expired = False
    try:
        outcome = await run_attempt(ctx, call, body)
        if isinstance(outcome, Retry | Raise):
            result = await settle(ctx, call, outcome, lambda: run_attempt(ctx, call, body))
        else:
            if ctx.budget is not None:
                ctx.budget.deposit()
            result = outcome.value
    except asyncio.CancelledError as exc:
        if not (armed and call.own_deadline()):
            if listening:
                finished(ctx, call, exc)
            raise  # the caller's cancellation: never swallowed
        expired = True
    except BaseException as exc:
        if listening:
            finished(ctx, call, exc)
        raise
    finally:
        if armed:
            call.disarm()
    if expired:
        error = deadline_error(ctx, call)
        if listening:
            finished(ctx, call, error)
        raise error
    if listening:
        finished(ctx, call, None)
    return result


async def open_unit(ctx: UnitContext, call: Call) -> Attempt[Any]:
    """The block forms' opening: a healthy connection and BEGIN, retried (never the body)."""
    attempt: Attempt[Any] = await drive(ctx, call, lambda: open_attempt(ctx, call))
    return attempt


async def drive(ctx: UnitContext, call: Call, step: Callable[[], Awaitable[Outcome[T]]]) -> T:
    """Run ``step`` until it succeeds, raises, or the retry policy stops."""
    outcome = await step()
    if not isinstance(outcome, Retry | Raise):
        if ctx.budget is not None:
            ctx.budget.deposit()
        return outcome.value
    return await settle(ctx, call, outcome, step)


async def settle(
    ctx: UnitContext,
    call: Call,
    outcome: Retry | Raise,
    step: Callable[[], Awaitable[Outcome[T]]],
) -> T:
    """After a first attempt that did not succeed: raise, or retry ``step`` (tenacity)
    until it succeeds, raises, or the retry policy stops."""
    if isinstance(outcome, Raise):
        raise _annotated(call, outcome.error)
    options = call.options
    loop = RetryLoop(
        outcome.error,
        outcome.decision,
        policy=options.retry or ctx.retry,
        budget=ctx.budget,
        deadline_at=call.deadline_at,
        hooks=ctx.reporter.hooks(),
        name=options.name,
        start=call.started,
        clock=ctx.clock,
    )
    while True:
        await loop.backoff()  # raises the last original error when the policy stops
        step_outcome = await step()
        if isinstance(step_outcome, Retry):
            loop.failed(step_outcome.error, step_outcome.decision)
            continue
        if isinstance(step_outcome, Raise):
            error = step_outcome.error
            if isinstance(error, Exception):
                loop.not_retryable(error)
            else:
                loop.cancelled()
            raise _annotated(call, error)
        loop.succeeded()
        return step_outcome.value


def started(ctx: UnitContext, call: Call) -> None:
    """``unit.started`` for the listeners (telemetry opens the unit's span on it)."""
    ctx.reporter.emit(
        UnitEvent(event="unit.started", name=call.options.name, attempt=0, elapsed=0.0),
        log=False,
    )


def finished(ctx: UnitContext, call: Call, error: BaseException | None) -> None:
    """``unit.finished`` for the listeners: ``outcome`` ``ok`` or ``error``."""
    cls = call.last if error is not None else None
    ctx.reporter.emit(
        UnitEvent(
            event="unit.finished",
            name=call.options.name,
            attempt=max(call.attempts, 1),
            elapsed=ctx.clock() - call.started,
            outcome="ok" if error is None else "error",
            error_type=type(error).__qualname__ if error is not None else None,
            category=cls.category if cls is not None else None,
            sqlstate=cls.sqlstate if cls is not None else None,
            kind=cls.kind.value if cls is not None else None,
            xid=getattr(error, "xid", None),
        ),
        log=False,
    )


def _annotated(call: Call, error: BaseException) -> BaseException:
    if isinstance(error, CircuitOpenError) and call.last_exc is not None:
        category = call.last.category if call.last is not None else "?"
        error.add_note(
            f"resilient_db: the previous attempt failed with "
            f"{type(call.last_exc).__qualname__} ({category})"
        )
    return error


def deadline_error(ctx: UnitContext, call: Call) -> DeadlineExceeded:
    """The unit's deadline ended it: the event, and the error (caused by the last one)."""
    options = call.options
    assert options.deadline is not None
    cls, last = call.last, call.last_exc
    ctx.reporter.emit(
        UnitEvent(
            event="unit.deadline_exceeded",
            name=options.name,
            attempt=call.attempts,
            elapsed=ctx.clock() - call.started,
            category=cls.category if cls is not None else None,
            sqlstate=cls.sqlstate if cls is not None else None,
            kind=cls.kind.value if cls is not None else None,
            error_type=type(last).__qualname__ if last is not None else None,
        )
    )
    real = last if isinstance(last, Exception) else None
    err = DeadlineExceeded(
        f"unit {options.name!r} did not finish within its deadline of "
        f"{options.deadline:g}s ({call.attempts} attempt(s)"
        + (f", last error {type(real).__qualname__}" if real is not None else "")
        + "); raise the deadline if the work is slow, or check the database's health",
        name=options.name,
        deadline=options.deadline,
        attempts=call.attempts,
    )
    err.__cause__ = real
    return err
