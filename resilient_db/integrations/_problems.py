"""Database errors as HTTP answers: RFC 9457 problem details, framework-neutral.

:func:`problem_for` maps what a unit of work raises to the answer a web client should get:

==============================================  ======  ==========================================
error                                           status  notes
==============================================  ======  ==========================================
:class:`~resilient_db.CircuitOpenError`          503     ``Retry-After``: whole seconds, rounded up
:class:`~resilient_db.DeadlineExceeded`          504
a retryable database error (retries exhausted)  503     the classifier's category and SQLSTATE
:class:`~resilient_db.CommitOutcomeUnknown`      500     ``xid`` (and ``timeline``, ``key``)
:class:`~resilient_db.AlreadyApplied`            409     the operation ``key``
anything else (fatal errors, your own)          None    untouched: your handlers decide
==============================================  ======  ==========================================

Bodies never carry SQL text, parameters, host names or the driver's message.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy.exc import SQLAlchemyError

from resilient_db._errors import (
    AlreadyApplied,
    CircuitOpenError,
    CommitOutcomeUnknown,
)
from resilient_db.classify import Classifier, ErrorKind, default_classifier
from resilient_db.units import DeadlineExceeded

__all__ = ["PROBLEM_JSON", "Problem", "problem_for", "retry_after_seconds"]

#: The media type of a problem details body (RFC 9457).
PROBLEM_JSON: Final = "application/problem+json"
_TYPE: Final = "urn:resilient-db:problem:"


@dataclass(frozen=True, kw_only=True, slots=True)
class Problem:
    """An RFC 9457 problem: ``status``, ``type``, ``title``, ``detail``, extension members
    (``extensions``) and the response headers to send (``headers``, e.g. ``Retry-After``)."""

    status: int
    type: str
    title: str
    detail: str
    extensions: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        """The JSON object: the standard members first, then the extensions."""
        return {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            **self.extensions,
        }

    def encode(self) -> bytes:
        """The body as UTF-8 JSON bytes."""
        return json.dumps(self.body(), separators=(",", ":")).encode()

    def header_list(self) -> list[tuple[bytes, bytes]]:
        """All response headers (``content-type`` included) as ASGI byte pairs."""
        pairs = [(b"content-type", PROBLEM_JSON.encode())]
        pairs += [(k.lower().encode(), v.encode("latin-1")) for k, v in self.headers.items()]
        return pairs


def retry_after_seconds(seconds: float) -> int | None:
    """``Retry-After`` for a wait of ``seconds``: whole seconds rounded up, at least 1
    (a client told 0 retries into a breaker that is still probing); None when unknown
    (infinite, e.g. a forced-open breaker, or not a number)."""
    if not isinstance(seconds, int | float) or not math.isfinite(seconds):
        return None
    return max(1, math.ceil(seconds))


def _circuit_open(exc: CircuitOpenError) -> Problem:
    seconds = retry_after_seconds(exc.retry_after)
    when = f"retry in {seconds} s" if seconds is not None else "retry later"
    return Problem(
        status=503,
        type=_TYPE + "database-unavailable",
        title="Database unavailable",
        detail=f"the database is failing, so requests fail fast for now; {when}",
        extensions={"reason": "circuit_open", "breaker_state": exc.state},
        headers={"Retry-After": str(seconds)} if seconds is not None else {},
    )


def _deadline(exc: DeadlineExceeded) -> Problem:
    return Problem(
        status=504,
        type=_TYPE + "deadline-exceeded",
        title="Database deadline exceeded",
        detail=f"the database work did not finish within its deadline of {exc.deadline:g} s",
        extensions={"attempts": exc.attempts},
    )


def _commit_unknown(exc: CommitOutcomeUnknown) -> Problem:
    extensions: dict[str, Any] = {"xid": exc.xid}
    if exc.timeline is not None:
        extensions["timeline"] = exc.timeline
    key = getattr(exc, "key", None)
    if key is not None:
        extensions["key"] = key
    return Problem(
        status=500,
        type=_TYPE + "commit-outcome-unknown",
        title="Commit outcome unknown",
        detail=(
            "the connection to the database was lost during COMMIT and the server could not "
            "say whether the change was applied; check before sending the request again"
        ),
        extensions=extensions,
    )


def _already_applied(exc: AlreadyApplied) -> Problem:
    return Problem(
        status=409,
        type=_TYPE + "already-applied",
        title="Already applied",
        detail="a request with this operation key was already applied; it was not applied again",
        extensions={"key": exc.key},
    )


def _from_database(exc: Exception) -> bool:
    """A SQLAlchemy error, or one a unit of work gave up on (its retry note says so): an
    ``OSError`` from the application's own HTTP client is none of the database's business."""
    if isinstance(exc, SQLAlchemyError):
        return True
    return any(str(note).startswith("resilient_db:") for note in getattr(exc, "__notes__", ()))


def problem_for(exc: BaseException, *, classifier: Classifier | None = None) -> Problem | None:
    """The HTTP answer for ``exc`` (see the module table), or None to leave it alone.

    A database error is a 503 only when ``classifier`` (default: the library's rules) calls
    it retryable: the unit of work already retried it, so the database is struggling; a
    fatal error (constraint, syntax, permissions...) is a bug or bad input, not ours.
    """
    if isinstance(exc, CircuitOpenError):
        return _circuit_open(exc)
    if isinstance(exc, DeadlineExceeded):
        return _deadline(exc)
    if isinstance(exc, CommitOutcomeUnknown):
        return _commit_unknown(exc)
    if isinstance(exc, AlreadyApplied):
        return _already_applied(exc)
    if not isinstance(exc, Exception) or not _from_database(exc):
        return None  # cancellation, KeyboardInterrupt, an error of the application's own
    cls = (classifier or default_classifier()).classify(exc)
    if cls.kind is not ErrorKind.RETRYABLE:
        return None
    return Problem(
        status=503,
        type=_TYPE + "database-error",
        title="Database temporarily unavailable",
        detail="the database failed with a transient error after retries; try again shortly",
        extensions={"category": str(cls.category), "sqlstate": cls.sqlstate},
    )
