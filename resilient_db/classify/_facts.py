"""Chain facts: the exceptions an error wraps, the server's SQLSTATE, and their messages.

The chain is walked ``.orig`` (SQLAlchemy), ``__cause__``, then ``__context__``; only a code
the *server* sent counts as a SQLSTATE (one extractor per exception type, cached). Driver
types may be named by dotted path, so matching never imports a driver.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Final

from resilient_db.classify._categories import Phase

__all__ = ["ErrorFacts", "explicit_chain", "first_sqlstate", "type_matches", "with_context"]


_SA_STATEMENT_ERROR: type[BaseException] | None = None


def _sa_statement_error() -> type[BaseException]:
    global _SA_STATEMENT_ERROR
    if _SA_STATEMENT_ERROR is None:
        from sqlalchemy.exc import StatementError

        _SA_STATEMENT_ERROR = StatementError
    return _SA_STATEMENT_ERROR


def _message_of(exc: BaseException) -> str:
    """The driver's message, never SQLAlchemy's (which embeds SQL and parameters)."""
    if isinstance(exc, _sa_statement_error()):
        # The driver exception is in the chain on its own; StatementError.__str__ would
        # render the SQL text and bound parameters, which must not be matched or logged.
        return ""
    try:
        return str(exc)
    except Exception:  # a broken __str__ must not break classification
        return ""


class ErrorFacts:
    """What the classifier knows about one exception; the argument of rule predicates.

    ``chain`` is the exceptions considered, outermost first; ``sqlstate`` the first
    server-sent SQLSTATE among them; ``phase``, ``in_recovery`` and ``own_timeout`` the
    context the caller supplied.
    """

    __slots__ = ("_messages", "chain", "exc", "in_recovery", "own_timeout", "phase", "sqlstate")

    def __init__(
        self,
        exc: BaseException,
        chain: tuple[BaseException, ...],
        sqlstate: str | None,
        *,
        phase: Phase | None,
        in_recovery: bool | None,
        own_timeout: bool | None,
    ) -> None:
        self.exc = exc
        self.chain = chain
        self.sqlstate = sqlstate
        self.phase = phase
        self.in_recovery = in_recovery
        self.own_timeout = own_timeout
        self._messages: tuple[str, ...] | None = None

    @property
    def messages(self) -> tuple[str, ...]:
        """The message of each exception in ``chain`` (SQLAlchemy wrappers give ``""``)."""
        if self._messages is None:
            self._messages = tuple(_message_of(e) for e in self.chain)
        return self._messages

    def find(self, cls: type[BaseException] | str) -> BaseException | None:
        """The first exception in the chain that is an instance of ``cls``.

        ``cls`` may be a dotted class name (``"asyncpg.exceptions.InterfaceError"``), which
        matches without importing the driver.
        """
        for exc in self.chain:
            if type_matches(type(exc), cls):
                return exc
        return None


def _qualnames(cls: type) -> frozenset[str]:
    names = set()
    for base in cls.__mro__:
        names.add(f"{base.__module__}.{base.__qualname__}")
    return frozenset(names)


_QUALNAMES: dict[type, frozenset[str]] = {}


def type_matches(cls: type, target: type[BaseException] | str) -> bool:
    if isinstance(target, str):
        # A dotted name matches without importing its module: resolve it only when the
        # module is loaded (then public aliases work too), else compare the MRO's names.
        module, _, attr = target.rpartition(".")
        loaded = sys.modules.get(module)
        resolved = getattr(loaded, attr, None) if loaded is not None else None
        if isinstance(resolved, type):
            return issubclass(cls, resolved)
        names = _QUALNAMES.get(cls)
        if names is None:
            names = _QUALNAMES[cls] = _qualnames(cls)
        return target in names
    return issubclass(cls, target)


# -- server SQLSTATE extraction, one extractor per exception type (cached) ----------------

_Extractor = Callable[[BaseException], object] | None


def _asyncpg_sqlstate(exc: BaseException) -> object:
    # asyncpg sets the server's fields on the instance; a class attribute (08003 on
    # ConnectionDoesNotExistError, 08000 on PostgresConnectionError...) is client-side.
    return getattr(exc, "__dict__", {}).get("sqlstate")


def _psycopg_sqlstate(exc: BaseException) -> object:
    return getattr(exc, "sqlstate", None)


def _generic_sqlstate(exc: BaseException) -> object:
    # psycopg2 and other DB-API drivers: ``pgcode``; anything else exposing ``sqlstate``.
    code = getattr(exc, "pgcode", None)
    if code is None:
        code = getattr(exc, "sqlstate", None)
    return code


def _extractor_for(cls: type) -> _Extractor:
    root = cls.__module__.partition(".")[0]
    if root == "asyncpg":
        return _asyncpg_sqlstate
    if root == "psycopg":
        return _psycopg_sqlstate
    if root == "sqlalchemy" or root == "builtins":
        # SQLAlchemy's asyncpg adapter copies the driver's (possibly client-side) code; the
        # driver exception itself is further down the chain.
        return None
    if hasattr(cls, "pgcode") or hasattr(cls, "sqlstate"):
        return _generic_sqlstate
    return None


_EXTRACTORS: dict[type, _Extractor] = {}


def _server_sqlstate(exc: BaseException) -> str | None:
    cls = type(exc)
    try:
        extractor = _EXTRACTORS[cls]
    except KeyError:
        extractor = _EXTRACTORS[cls] = _extractor_for(cls)
    if extractor is None:
        return None
    code = extractor(exc)
    if isinstance(code, str) and len(code) == 5:
        return code
    return None


_MAX_CHAIN: Final = 32


def _walk_explicit(exc: BaseException, out: list[BaseException]) -> None:
    """Append ``exc`` and what it explicitly wraps (``.orig``, ``__cause__``) to ``out``."""
    current: BaseException | None = exc
    while current is not None and len(out) < _MAX_CHAIN:
        for seen in out:  # chains are short: identity scan beats a set of ids
            if seen is current:
                return
        out.append(current)
        cause = current.__cause__
        orig = getattr(current, "orig", None)
        if orig is not None and orig is not cause and isinstance(orig, BaseException):
            # ``.orig`` (SQLAlchemy) normally *is* the cause; when it is not, follow both.
            _walk_explicit(orig, out)
        current = cause


def explicit_chain(exc: BaseException) -> tuple[BaseException, ...]:
    """``exc`` and the exceptions it explicitly wraps, outermost first."""
    cause = exc.__cause__
    if cause is None and getattr(exc, "orig", None) is None:
        return (exc,)
    out: list[BaseException] = []
    _walk_explicit(exc, out)
    return tuple(out)


def with_context(explicit: tuple[BaseException, ...]) -> tuple[BaseException, ...]:
    """The explicit chain plus implicit ``__context__`` links (and what those wrap)."""
    full = list(explicit)
    i = 0
    while i < len(full) < _MAX_CHAIN:
        item = full[i]
        ctx = item.__context__
        if ctx is not None and not item.__suppress_context__:
            _walk_explicit(ctx, full)
        i += 1
    return tuple(full)


def first_sqlstate(chain: Iterable[BaseException]) -> str | None:
    for item in chain:
        code = _server_sqlstate(item)
        if code is not None:
            return code
    return None
