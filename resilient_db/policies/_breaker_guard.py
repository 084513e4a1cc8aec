"""``async with breaker:`` and ``@breaker``: guarding a block or an ``async def``.

Both classify an exception with the breaker's ``is_failure(exc)``: True failure, False
success, None ignored (default: cancellation and another breaker's rejection are ignored,
every other ``Exception`` is a failure).
"""

from __future__ import annotations

import contextvars
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar

from resilient_db.policies._breaker_events import BreakerState
from resilient_db.policies._breaker_states import BreakerPermit, SharedPermit
from resilient_db.policies._clock import Clock

__all__ = ["GuardMixin"]

P = ParamSpec("P")
T = TypeVar("T")

logger = logging.getLogger("resilient_db")

# The ``async with breaker:`` stack of the current task: (breaker, permit, start, previous).
_Frame = tuple[object, BreakerPermit, float | None, Any]
_ENTERED: contextvars.ContextVar[_Frame | None] = contextvars.ContextVar(
    "resilient_db_breaker_entered", default=None
)


class GuardMixin:
    """The context-manager and decorator forms of :class:`~resilient_db.CircuitBreaker`."""

    __slots__ = ()

    name: str
    _state: BreakerState
    _shared: SharedPermit
    _clock: Clock
    _slow_dur: float | None
    _is_failure: Callable[[BaseException], bool | None]

    async def acquire_async(self) -> BreakerPermit:
        raise NotImplementedError  # pragma: no cover - CircuitBreaker implements it

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

    async def __aenter__(self) -> Self:
        closed = self._state is BreakerState.CLOSED
        permit = self._shared if closed else await self.acquire_async()
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
            closed = self._state is BreakerState.CLOSED
            permit = self._shared if closed else await self.acquire_async()
            start = self._clock() if self._slow_dur is not None else None
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                self._settle(permit, exc, start)
                raise
            permit.success(None if start is None else self._clock() - start)
            return result

        return guarded
