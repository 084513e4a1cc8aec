"""How one attempt of a unit of work ends: a value, never an exception to interpret later.

* :class:`Committed` — the transaction committed (or a lost COMMIT was resolved as
  applied); ``value`` is the body's result.
* :class:`Replayed` — the unit's operation key was already applied by an earlier call: this
  attempt rolled back and ``value`` is the stored result.
* :class:`Opened` — the block forms' first step: a connection was checked out and BEGIN
  sent; ``value`` is the open attempt.
* :class:`Retry` — the attempt failed and running the unit again is safe and useful;
  ``decision`` carries the error's category and wait hint for the retry policy.
* :class:`Raise` — the unit ends with ``error`` (fatal, cancelled, deadline, in doubt).

The runner matches on the type; nothing is keyed by exception identity and nothing infers
success from "no exception".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from resilient_db.policies import RetryDecision

__all__ = ["Committed", "Ended", "Opened", "Outcome", "Raise", "Replayed", "Retry"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Committed(Generic[T]):
    value: T


@dataclass(frozen=True, slots=True)
class Replayed(Generic[T]):
    value: T


@dataclass(frozen=True, slots=True)
class Opened(Generic[T]):
    value: T


@dataclass(frozen=True, slots=True)
class Retry:
    error: Exception
    decision: RetryDecision


@dataclass(frozen=True, slots=True)
class Raise:
    error: BaseException


#: How an attempt that got as far as its body ends.
Ended = Committed[T] | Replayed[T] | Retry | Raise
#: Any step's outcome (the block forms' opening may also end :class:`Opened`).
Outcome = Committed[T] | Replayed[T] | Opened[T] | Retry | Raise
