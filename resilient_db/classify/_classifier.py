"""Error classification: every exception a database call can raise, sorted into three kinds.

``classify(exc, phase=...)`` walks the exception chain (``.orig``, ``__cause__``, then
``__context__``), finds the first SQLSTATE the *server* sent, and asks an ordered table of
rules (``resilient_db.classify._rules.DEFAULT_RULES``) which one applies first. The answer
is a frozen :class:`Classification`.

Hot-path design: the static part of rule matching (exception types and SQLSTATE) is computed
once per (chain of exception types, SQLSTATE) and cached, so a repeated classification costs
one chain walk, one dict lookup and the rule's dynamic checks (phase, message, predicate).
Messages are only rendered when a candidate rule has a message pattern.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from resilient_db._errors import ConfigurationError
from resilient_db._validate import (
    check_callable,
    check_number,
    check_text,
    check_type,
    config_error,
    did_you_mean,
)

__all__ = [
    "Classification",
    "Classifier",
    "ErrorFacts",
    "ErrorKind",
    "Phase",
    "Rule",
    "classify",
]


class ErrorKind(StrEnum):
    """What a caller may do after an error."""

    RETRYABLE = "retryable"
    """Re-running the whole unit of work may succeed."""
    FATAL = "fatal"
    """Re-running cannot help (or must not happen): raise the original exception."""
    COMMIT_UNKNOWN = "commit_unknown"
    """The error hit COMMIT and the transaction may or may not have been applied."""


class Phase(StrEnum):
    """Where in a unit of work the error was raised (plain strings are accepted too)."""

    CONNECT = "connect"
    CHECKOUT = "checkout"
    STATEMENT = "statement"
    COMMIT = "commit"


@dataclass(frozen=True, slots=True, kw_only=True)
class Classification:
    """The verdict on one exception.

    ``sqlstate`` is only ever a code the server sent (asyncpg's client-side 08003 on
    ``ConnectionDoesNotExistError`` is not one). ``reason`` is one sentence a person can act
    on. ``retry_after`` is an optional hint in seconds (0.0 = retry at once).
    """

    kind: ErrorKind
    category: str
    sqlstate: str | None
    reason: str
    counts_toward_breaker: bool
    invalidate_pool: bool
    retry_after: float | None = None
    rule: str | None = None
    """Name of the rule that decided (``None`` for the built-in fallback)."""

    @property
    def retryable(self) -> bool:
        """True when ``kind`` is :attr:`ErrorKind.RETRYABLE`."""
        return self.kind is ErrorKind.RETRYABLE


# --------------------------------------------------------------------------- facts


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
            if _type_matches(type(exc), cls):
                return exc
        return None


def _qualnames(cls: type) -> frozenset[str]:
    names = set()
    for base in cls.__mro__:
        names.add(f"{base.__module__}.{base.__qualname__}")
    return frozenset(names)


_QUALNAMES: dict[type, frozenset[str]] = {}


def _type_matches(cls: type, target: type[BaseException] | str) -> bool:
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


def _explicit_chain(exc: BaseException, out: list[BaseException]) -> None:
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
            _explicit_chain(orig, out)
        current = cause


def _explicit(exc: BaseException) -> tuple[BaseException, ...]:
    """``exc`` and the exceptions it explicitly wraps, outermost first."""
    cause = exc.__cause__
    if cause is None and getattr(exc, "orig", None) is None:
        return (exc,)
    out: list[BaseException] = []
    _explicit_chain(exc, out)
    return tuple(out)


def _with_context(explicit: tuple[BaseException, ...]) -> tuple[BaseException, ...]:
    """The explicit chain plus implicit ``__context__`` links (and what those wrap)."""
    full = list(explicit)
    i = 0
    while i < len(full) < _MAX_CHAIN:
        item = full[i]
        ctx = item.__context__
        if ctx is not None and not item.__suppress_context__:
            _explicit_chain(ctx, full)
        i += 1
    return tuple(full)


def _first_sqlstate(chain: Iterable[BaseException]) -> str | None:
    for item in chain:
        code = _server_sqlstate(item)
        if code is not None:
            return code
    return None


# --------------------------------------------------------------------------- rules

_SQLSTATE_RE: Final = re.compile(r"[0-9A-Z]{2}(?:[0-9A-Z]{3})?")

Predicate = Callable[[ErrorFacts], bool]
RetryAfter = float | Callable[[ErrorFacts], float | None] | None


@dataclass(frozen=True, kw_only=True, slots=True)
class Rule:
    """One row of the classification table.

    Matchers (every one given must match; at least one is required):

    - ``sqlstates``: server SQLSTATEs, exact (``"40001"``) or a two-character class
      (``"08"``).
    - ``types``: exception classes or dotted class names, matched against every exception
      in the chain.
    - ``message``: a regular expression searched (case-insensitively) in the message of an
      exception of one of ``types`` (of any chain member when ``types`` is empty).
    - ``predicate``: a function of :class:`ErrorFacts`; describe it in ``when`` for the docs.
    - ``phases``: the rule applies only in these phases.

    Outcome: ``kind`` (``at_commit`` replaces it in the commit phase when given),
    ``category``, ``reason``, ``counts_toward_breaker``, ``invalidate_pool`` and an
    optional ``retry_after`` hint (seconds, or a function of the facts).
    """

    name: str
    kind: ErrorKind
    category: str
    reason: str
    sqlstates: tuple[str, ...] = ()
    types: tuple[type[BaseException] | str, ...] = ()
    message: str | None = None
    predicate: Predicate | None = None
    when: str = ""
    phases: frozenset[Phase] | None = None
    at_commit: ErrorKind | None = None
    counts_toward_breaker: bool = False
    invalidate_pool: bool = False
    retry_after: RetryAfter = None

    def __post_init__(self) -> None:
        check_text("Rule", "name", self.name, fix="name the rule, e.g. name='app_transient'")
        check_type(
            "Rule",
            "kind",
            self.kind,
            ErrorKind,
            fix="use ErrorKind.RETRYABLE, ErrorKind.FATAL or ErrorKind.COMMIT_UNKNOWN",
        )
        check_type("Rule", "at_commit", self.at_commit, ErrorKind, allow_none=True)
        check_text("Rule", "category", self.category, fix="name the category, e.g. 'app'")
        if not (self.sqlstates or self.types or self.message or self.predicate or self.phases):
            raise config_error(
                "Rule",
                "name",
                self.name,
                "a rule with at least one matcher",
                "give sqlstates, types, message, predicate or phases; a rule that matches "
                "everything would hide every other rule",
            )
        _check_sqlstates(self.sqlstates)
        _check_types(self.types)
        _check_message(self.message)
        _check_phases(self.phases)
        check_callable("Rule", "predicate", self.predicate, allow_none=True)
        if not callable(self.retry_after):
            check_number(
                "Rule", "retry_after", self.retry_after, min=0, allow_none=True, unit="seconds"
            )

    def describe_match(self) -> str:
        """A one-line human description of when the rule applies (used in the docs)."""
        parts: list[str] = []
        if self.sqlstates:
            codes = ", ".join(c if len(c) == 5 else f"class {c}" for c in self.sqlstates)
            parts.append(f"SQLSTATE {codes}")
        if self.types:
            names = ", ".join(t if isinstance(t, str) else _type_name(t) for t in self.types)
            parts.append(f"type {names}")
        if self.message:
            parts.append(f"message ~ /{self.message}/")
        if self.phases:
            parts.append("phase " + "/".join(sorted(p.value for p in self.phases)))
        if self.predicate is not None:
            parts.append(self.when or getattr(self.predicate, "__name__", "predicate"))
        return "; ".join(parts)


def _type_name(t: type) -> str:
    if t.__module__ == "builtins":
        return t.__qualname__
    return f"{t.__module__}.{t.__qualname__}"


def _check_sqlstates(sqlstates: object) -> None:
    fix = "use 5-character codes such as '40001' or 2-character classes such as '08'"
    if isinstance(sqlstates, str):
        raise config_error(
            "Rule",
            "sqlstates",
            sqlstates,
            "a tuple of codes",
            f"write ({sqlstates!r},)",
            wrong_type=True,
        )
    if not isinstance(sqlstates, tuple):
        raise config_error("Rule", "sqlstates", sqlstates, "a tuple of codes", fix, wrong_type=True)
    for code in sqlstates:
        if not isinstance(code, str) or not _SQLSTATE_RE.fullmatch(code):
            raise config_error(
                "Rule",
                "sqlstates",
                sqlstates,
                f"SQLSTATE codes (digits and capitals; sqlstate {code!r} is invalid)",
                fix,
            )


def _check_types(types: object) -> None:
    if not isinstance(types, tuple):
        raise config_error(
            "Rule",
            "types",
            types,
            "a tuple of exception classes or dotted names",
            "write types=(MyError,)",
            wrong_type=True,
        )
    for t in types:
        if isinstance(t, str):
            if "." not in t:
                raise config_error(
                    "Rule",
                    "types",
                    types,
                    f"dotted names (type name {t!r} must be dotted)",
                    "write the full name, e.g. 'asyncpg.exceptions.InterfaceError'",
                )
        elif not (isinstance(t, type) and issubclass(t, BaseException)):
            raise config_error(
                "Rule",
                "types",
                types,
                f"exception classes or dotted names (got {t!r})",
                "pass exception classes (ValueError) or their dotted names",
                wrong_type=True,
            )


def _check_message(message: object) -> None:
    if message is None:
        return
    check_text("Rule", "message", message, fix="pass a regular expression as a str, or None")
    assert isinstance(message, str)
    try:
        re.compile(message)
    except re.error as exc:
        raise config_error(
            "Rule",
            "message",
            message,
            f"a regular expression (this is not a valid regular expression: {exc})",
            "escape special characters with re.escape()",
        ) from None


def _check_phases(phases: object) -> None:
    if phases is None:
        return
    if (
        not isinstance(phases, frozenset)
        or not phases
        or any(not isinstance(p, Phase) for p in phases)
    ):
        raise config_error(
            "Rule",
            "phases",
            phases,
            "a non-empty frozenset of Phase members, or None",
            "write e.g. frozenset({Phase.COMMIT})",
        )


@dataclass(frozen=True, slots=True)
class _Compiled:
    index: int
    rule: Rule
    regex: re.Pattern[str] | None
    exact: frozenset[str]
    classes: frozenset[str]
    cache: dict[tuple[ErrorKind, str, str | None], Classification] = field(
        default_factory=dict, compare=False
    )


_PHASES: Final[dict[object, Phase]] = {p.value: p for p in Phase}

_FALLBACK_REASON: Final = (
    "no rule recognises this error, so it is treated as a program error and not retried; "
    "add a Rule with Classifier.with_rules() if it is transient"
)
_GROUP_ORDER: Final = {ErrorKind.FATAL: 0, ErrorKind.COMMIT_UNKNOWN: 1, ErrorKind.RETRYABLE: 2}
_CACHE_LIMIT: Final = 2048


def _coerce_phase(phase: Phase | str | None) -> Phase | None:
    if phase is None:
        return None
    try:
        return _PHASES[phase]
    except (KeyError, TypeError):
        pass
    best = did_you_mean(phase, [p.value for p in Phase]) if isinstance(phase, str) else None
    raise config_error(
        "classify",
        "phase",
        phase,
        f"one of {', '.join(repr(p.value) for p in Phase)}, a resilient_db.Phase member or None",
        (f"use {best!r}" if best else "pick one of the phases") + " (None when unknown)",
    )


class Classifier:
    """An ordered list of :class:`Rule`; the first rule that matches decides.

    ``Classifier()`` uses the default table
    (``resilient_db.classify._rules.DEFAULT_RULES``, rendered in ``docs/classifier-rules.md``).
    Exceptions no rule matches are fatal with category ``unknown``. Instances are immutable
    and safe to share between tasks and threads.
    """

    __slots__ = ("_by_key", "_by_sqlstate", "_by_type", "_compiled", "_rules")

    def __init__(self, rules: Sequence[Rule] | None = None) -> None:
        if rules is None:
            from resilient_db.classify._rules import DEFAULT_RULES

            rules = DEFAULT_RULES
        rules = tuple(rules)
        names: set[str] = set()
        for rule in rules:
            if not isinstance(rule, Rule):
                raise config_error(
                    "Classifier",
                    "rules",
                    rules,
                    f"Rule objects (got a {type(rule).__name__})",
                    "build each row with resilient_db.Rule(...)",
                    wrong_type=True,
                    shown="...",
                )
            if rule.name in names:
                raise config_error(
                    "Classifier",
                    "rules",
                    rules,
                    f"rules with unique names (two rules are named {rule.name!r})",
                    "rename one, or use with_rules() to replace a rule by name",
                    shown="...",
                )
            names.add(rule.name)
        self._rules: tuple[Rule, ...] = rules
        self._compiled: tuple[_Compiled, ...] = tuple(
            _Compiled(
                index=i,
                rule=r,
                regex=re.compile(r.message, re.IGNORECASE) if r.message else None,
                exact=frozenset(c for c in r.sqlstates if len(c) == 5),
                classes=frozenset(c for c in r.sqlstates if len(c) == 2),
            )
            for i, r in enumerate(rules)
        )
        self._by_type: dict[type, frozenset[int]] = {}
        self._by_sqlstate: dict[str | None, frozenset[int]] = {}
        self._by_key: dict[tuple[object, ...], tuple[_Compiled, ...]] = {}

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The rules, in the order they are tried."""
        return self._rules

    def with_rules(self, *rules: Rule, first: bool = True) -> Classifier:
        """A new classifier with ``rules`` added.

        A rule whose name equals an existing rule's replaces it in place; the others go
        before the existing rules (``first=True``, so they win) or after them.
        """
        by_name = {r.name: r for r in rules}
        if len(by_name) != len(rules):
            raise config_error(
                "Classifier.with_rules",
                "rules",
                rules,
                "rules with unique names",
                "pass each rule name once",
                shown="...",
            )
        existing = []
        for rule in self._rules:
            existing.append(by_name.pop(rule.name, rule))
        added = [r for r in rules if r.name in by_name]
        return Classifier([*added, *existing] if first else [*existing, *added])

    def without_rules(self, *names: str) -> Classifier:
        """A new classifier without the rules named ``names`` (unknown names are an error)."""
        known = {r.name for r in self._rules}
        missing = sorted(set(names) - known)
        if missing:
            raise config_error(
                "Classifier.without_rules",
                "names",
                names,
                f"names of existing rules (no rule named {', '.join(map(repr, missing))})",
                "see [r.name for r in Classifier().rules] for the names",
            )
        return Classifier([r for r in self._rules if r.name not in names])

    # -- static matching (cached) ----------------------------------------------------

    def _type_rules(self, cls: type) -> frozenset[int]:
        found = self._by_type.get(cls)
        if found is None:
            found = frozenset(
                c.index for c in self._compiled if any(_type_matches(cls, t) for t in c.rule.types)
            )
            if len(self._by_type) > _CACHE_LIMIT:
                self._by_type.clear()
            self._by_type[cls] = found
        return found

    def _sqlstate_rules(self, sqlstate: str | None) -> frozenset[int]:
        found = self._by_sqlstate.get(sqlstate)
        if found is None:
            if sqlstate is None:
                found = frozenset()
            else:
                klass = sqlstate[:2]
                found = frozenset(
                    c.index for c in self._compiled if sqlstate in c.exact or klass in c.classes
                )
            if len(self._by_sqlstate) > _CACHE_LIMIT:
                self._by_sqlstate.clear()
            self._by_sqlstate[sqlstate] = found
        return found

    def _candidates(
        self, chain: tuple[BaseException, ...], sqlstate: str | None
    ) -> tuple[_Compiled, ...]:
        key = (sqlstate, *[type(e) for e in chain])
        found = self._by_key.get(key)
        if found is None:
            type_hits: set[int] = set()
            for exc in chain:
                type_hits |= self._type_rules(type(exc))
            sql_hits = self._sqlstate_rules(sqlstate)
            found = tuple(
                c
                for c in self._compiled
                if (not c.rule.types or c.index in type_hits)
                and (not c.rule.sqlstates or c.index in sql_hits)
            )
            if len(self._by_key) > _CACHE_LIMIT:
                self._by_key.clear()
            self._by_key[key] = found
        return found

    def _message_matches(self, c: _Compiled, facts: ErrorFacts) -> bool:
        assert c.regex is not None
        messages = facts.messages
        for exc, msg in zip(facts.chain, messages, strict=True):
            if c.rule.types and c.index not in self._type_rules(type(exc)):
                continue
            if msg and c.regex.search(msg):
                return True
        return False

    def _match(self, facts: ErrorFacts) -> Classification | None:
        phase = facts.phase
        for c in self._candidates(facts.chain, facts.sqlstate):
            rule = c.rule
            if rule.phases is not None and phase not in rule.phases:
                continue
            if c.regex is not None and not self._message_matches(c, facts):
                continue
            if rule.predicate is not None and not rule.predicate(facts):
                continue
            return self._verdict(c, facts)
        return None

    def _verdict(self, c: _Compiled, facts: ErrorFacts) -> Classification:
        rule = c.rule
        kind = rule.kind
        if facts.phase is Phase.COMMIT and rule.at_commit is not None:
            kind = rule.at_commit
        category = rule.category
        invalidate = rule.invalidate_pool
        if facts.phase is Phase.CONNECT and category in ("connection_lost", "timeout"):
            # Nothing was connected yet: the pool holds nothing this error poisoned.
            category = "connect_failed"
            invalidate = False
        if callable(rule.retry_after):
            return Classification(
                kind=kind,
                category=category,
                sqlstate=facts.sqlstate,
                reason=rule.reason,
                counts_toward_breaker=rule.counts_toward_breaker,
                invalidate_pool=invalidate,
                retry_after=rule.retry_after(facts),
                rule=rule.name,
            )
        key = (kind, category, facts.sqlstate)
        verdict = c.cache.get(key)
        if verdict is None:
            verdict = Classification(
                kind=kind,
                category=category,
                sqlstate=facts.sqlstate,
                reason=rule.reason,
                counts_toward_breaker=rule.counts_toward_breaker,
                invalidate_pool=invalidate,
                retry_after=rule.retry_after,
                rule=rule.name,
            )
            if len(c.cache) > _CACHE_LIMIT:
                c.cache.clear()
            c.cache[key] = verdict
        return verdict

    # -- public ----------------------------------------------------------------------

    def classify(
        self,
        exc: BaseException,
        *,
        phase: Phase | str | None = None,
        in_recovery: bool | None = None,
        own_timeout: bool | None = None,
    ) -> Classification:
        """Classify ``exc`` (any exception) raised in ``phase``.

        ``in_recovery``: whether the server was a standby (``pg_is_in_recovery()``), which
        decides 25006; ``own_timeout``: whether a 57014 came from our own deadline (True) or
        from a limit or a session that is not ours (False). ``None`` means unknown.
        """
        ph = phase if phase.__class__ is Phase else _coerce_phase(phase)
        if isinstance(exc, BaseExceptionGroup):
            return self._classify_group(
                exc, phase=ph, in_recovery=in_recovery, own_timeout=own_timeout
            )
        explicit = _explicit(exc)
        sqlstate = _first_sqlstate(explicit)
        facts = ErrorFacts(
            exc, explicit, sqlstate, phase=ph, in_recovery=in_recovery, own_timeout=own_timeout
        )
        verdict = self._match(facts)
        if verdict is None:
            full = _with_context(explicit)
            if len(full) > len(explicit):
                # Nothing in the explicit chain is recognised: an error raised while handling
                # a database error (``__context__``) inherits that error's classification.
                facts = ErrorFacts(
                    exc,
                    full,
                    sqlstate or _first_sqlstate(full),
                    phase=ph,
                    in_recovery=in_recovery,
                    own_timeout=own_timeout,
                )
                verdict = self._match(facts)
        if verdict is None:
            verdict = Classification(
                kind=ErrorKind.FATAL,
                category="unknown",
                sqlstate=facts.sqlstate,
                reason=_FALLBACK_REASON,
                counts_toward_breaker=False,
                invalidate_pool=False,
            )
        return verdict

    def _classify_group(
        self,
        group: BaseExceptionGroup[BaseException],
        *,
        phase: Phase | None,
        in_recovery: bool | None,
        own_timeout: bool | None,
    ) -> Classification:
        # A task group's errors: the most severe verdict wins (fatal, then commit unknown,
        # then retryable), the first of equals.
        verdicts = [
            self.classify(e, phase=phase, in_recovery=in_recovery, own_timeout=own_timeout)
            for e in group.exceptions
        ]
        if not verdicts:  # pragma: no cover - exception groups cannot be empty
            raise ConfigurationError("cannot classify an empty exception group")
        return min(verdicts, key=lambda v: _GROUP_ORDER[v.kind])


_DEFAULT: Classifier | None = None


def default_classifier() -> Classifier:
    """The shared classifier with the default rules (built on first use)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Classifier()
    return _DEFAULT


def classify(
    exc: BaseException,
    *,
    phase: Phase | str | None = None,
    in_recovery: bool | None = None,
    own_timeout: bool | None = None,
) -> Classification:
    """Classify ``exc`` with the default rules: retryable, fatal or commit outcome unknown.

    Pure and cheap (a few microseconds). ``phase`` is where the error was raised
    (``"connect"``, ``"checkout"``, ``"statement"``, ``"commit"`` or a :class:`Phase`;
    ``None`` when unknown): connection loss, client timeouts and cancellation during
    ``"commit"`` are ``commit_unknown``. ``in_recovery`` tells whether the server was a
    standby (decides 25006); ``own_timeout`` whether a 57014 came from our own deadline.
    """
    classifier = _DEFAULT if _DEFAULT is not None else default_classifier()
    return classifier.classify(exc, phase=phase, in_recovery=in_recovery, own_timeout=own_timeout)
