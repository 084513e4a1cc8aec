"""The classifier: an ordered table of rules, the first match decides.

``classify(exc, phase=...)`` walks the exception chain (``.orig``, ``__cause__``, then
``__context__``), finds the first SQLSTATE the *server* sent, and asks an ordered table of
rules (``resilient_db.classify._default_rules.DEFAULT_RULES``) which one applies first. The
answer is a frozen :class:`Classification`.

Hot-path design: the static part of rule matching (exception types and SQLSTATE) is computed
once per (chain of exception types, SQLSTATE) and cached, so a repeated classification costs
one chain walk, one dict lookup and the rule's dynamic checks (phase, message, predicate).
Messages are only rendered when a candidate rule has a message pattern.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from resilient_db._errors import ConfigurationError
from resilient_db._validate import config_error, did_you_mean
from resilient_db.classify._categories import Category, Classification, ErrorKind, Phase
from resilient_db.classify._default_rules import DEFAULT_RULES
from resilient_db.classify._facts import (
    ErrorFacts,
    explicit_chain,
    first_sqlstate,
    type_matches,
    with_context,
)
from resilient_db.classify._rule import Rule

__all__ = ["Classifier", "classify", "default_classifier"]


@dataclass(frozen=True, slots=True)
class _Compiled:
    index: int
    rule: Rule
    regex: re.Pattern[str] | None
    exact: frozenset[str]
    classes: frozenset[str]
    cache: dict[tuple[ErrorKind, Category | str, str | None], Classification] = field(
        default_factory=dict, compare=False
    )


_PHASES: Final[dict[object, Phase]] = {p.value: p for p in Phase}

_FALLBACK_REASON: Final = (
    "no rule recognises this error, so it is treated as a program error and not retried; "
    "add a Rule with Classifier.with_rules() if it is transient"
)
_GROUP_ORDER: Final = {ErrorKind.FATAL: 0, ErrorKind.COMMIT_UNKNOWN: 1, ErrorKind.RETRYABLE: 2}
_CACHE_LIMIT: Final = 2048
_CONNECT_AS_FAILED: Final = frozenset({Category.CONNECTION_LOST, Category.TIMEOUT})


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

    ``Classifier()`` uses the default table (``_default_rules.DEFAULT_RULES``, rendered in
    ``docs/classifier-rules.md``).
    Exceptions no rule matches are fatal with category ``unknown``. Instances are immutable
    and safe to share between tasks and threads.
    """

    __slots__ = ("_by_key", "_by_sqlstate", "_by_type", "_compiled", "_rules")

    def __init__(self, rules: Sequence[Rule] | None = None) -> None:
        rules = DEFAULT_RULES if rules is None else tuple(rules)
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
                c.index for c in self._compiled if any(type_matches(cls, t) for t in c.rule.types)
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
        if facts.phase is Phase.CONNECT and category in _CONNECT_AS_FAILED:
            # Nothing was connected yet: the pool holds nothing this error poisoned.
            category = Category.CONNECT_FAILED
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
                max_retries=rule.max_retries,
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
                max_retries=rule.max_retries,
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
        explicit = explicit_chain(exc)
        sqlstate = first_sqlstate(explicit)
        facts = ErrorFacts(
            exc, explicit, sqlstate, phase=ph, in_recovery=in_recovery, own_timeout=own_timeout
        )
        verdict = self._match(facts)
        if verdict is None:
            full = with_context(explicit)
            if len(full) > len(explicit):
                # Nothing in the explicit chain is recognised: an error raised while handling
                # a database error (``__context__``) inherits that error's classification.
                facts = ErrorFacts(
                    exc,
                    full,
                    sqlstate or first_sqlstate(full),
                    phase=ph,
                    in_recovery=in_recovery,
                    own_timeout=own_timeout,
                )
                verdict = self._match(facts)
        if verdict is None:
            verdict = Classification(
                kind=ErrorKind.FATAL,
                category=Category.UNKNOWN,
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
