"""What a unit of work is told and what it reports: options, events, the deadline error."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from resilient_db._errors import ResilientDBError
from resilient_db._validate import check_bool, check_number, check_text, check_type
from resilient_db.policies import RetryPolicy

__all__ = [
    "DEFAULT_ALLOWANCE",
    "DeadlineExceeded",
    "UnitEvent",
    "UnitListener",
    "UnitOptions",
]

_DEFAULT: Any = object()

#: Seconds a unit call may return after its deadline at most: the cleanup of the attempt
#: the deadline interrupted (returning or invalidating its connection) runs within it.
DEFAULT_ALLOWANCE = 0.25


def _seconds(owner: str, option: str, value: object, *, none_ok: bool, fix: str) -> None:
    check_number(
        owner, option, value, min=0, min_open=True, allow_none=none_ok, unit="seconds", fix=fix
    )


def _flag(owner: str, option: str, value: object) -> None:
    check_bool(owner, option, value)


class DeadlineExceeded(ResilientDBError, TimeoutError):
    """A unit of work did not finish within its deadline.

    ``__cause__`` is the last database error if an attempt failed before the deadline.
    """

    def __init__(self, message: str, *, name: str | None, deadline: float, attempts: int) -> None:
        self.name = name
        self.deadline = deadline
        self.attempts = attempts
        super().__init__(message)


@dataclass(frozen=True, kw_only=True, slots=True)
class UnitOptions:
    """Per-unit options; ``Database(...)`` holds the defaults, calls may override them.

    * ``deadline``: seconds for the whole unit (every attempt, sleep and checkout wait); the
      call returns at most :data:`DEFAULT_ALLOWANCE` (0.25 s) after it, cleanup included.
      ``None`` for none (not recommended).
    * ``idempotent``: the body may safely run twice; skips commit-outcome resolution (a lost
      COMMIT is simply retried) and its one round trip.
    * ``read_only``: BEGIN READ ONLY; never captures an xid; a lost COMMIT is retried.
    * ``retry``: the :class:`RetryPolicy` (``None``: the database's).
    * ``name``: for logs and events.
    * ``wait_for_breaker``: while the breaker is open, wait for its next probe (when the
      deadline outlasts its ``retry_after``) instead of failing at once with
      ``CircuitOpenError`` — for background workers; fail-fast is the default.
    """

    deadline: float | None = 30.0
    idempotent: bool = False
    read_only: bool = False
    retry: RetryPolicy | None = None
    name: str | None = None
    wait_for_breaker: bool = False

    def __post_init__(self) -> None:
        _seconds(
            "UnitOptions",
            "deadline",
            self.deadline,
            none_ok=True,
            fix="give seconds such as deadline=30.0, or None for no deadline",
        )
        for option in ("idempotent", "read_only", "wait_for_breaker"):
            _flag("UnitOptions", option, getattr(self, option))
        check_type(
            "UnitOptions",
            "retry",
            self.retry,
            RetryPolicy,
            allow_none=True,
            what="a RetryPolicy or None",
            fix="pass e.g. retry=RetryPolicy(attempts=5)",
        )
        if self.name is not None:
            check_text("UnitOptions", "name", self.name, fix="name it, e.g. name='transfer'")


@dataclass(frozen=True, kw_only=True, slots=True)
class UnitEvent:
    """Something that happened to a unit of work; passed to every :class:`UnitListener`.

    ``event`` is one of the stable names ``unit.started`` and ``unit.finished`` (around
    each outermost unit, on the caller's task; ``outcome`` ``ok`` or ``error``,
    ``attempt`` the attempts made; only emitted when there are listeners),
    ``unit.attempt_failed``, ``unit.deadline_exceeded``,
    ``commit.resolved`` (``outcome`` is ``committed``, ``aborted`` or ``unknown``; after a
    ``CommitOutcomeUnknown`` it arrives later, from the background resolution),
    ``commit.unknown``, ``retry.scheduled`` (``sleep`` is the backoff about to be slept) and
    ``retry.gave_up`` (``outcome`` is why: ``attempts``, ``deadline`` or ``budget`` — the
    retry budget is exhausted).
    """

    event: str
    name: str | None
    attempt: int
    elapsed: float
    category: str | None = None
    sqlstate: str | None = None
    kind: str | None = None
    xid: int | None = None
    outcome: str | None = None
    error_type: str | None = None
    sleep: float | None = None


UnitListener = Callable[[UnitEvent], None]
