"""A rule: one row of the classification table (its matchers, its verdict, its checks)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from resilient_db._validate import (
    check_callable,
    check_int,
    check_number,
    check_text,
    check_type,
    config_error,
)
from resilient_db.classify._categories import Category, ErrorKind, Phase, as_category
from resilient_db.classify._facts import ErrorFacts

__all__ = ["Predicate", "RetryAfter", "Rule"]

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
    ``category`` (a :class:`Category`, or a string of your own; a string naming a member
    becomes that member), ``reason``, ``counts_toward_breaker``, ``invalidate_pool``, an
    optional ``retry_after`` hint (seconds, or a function of the facts) and an optional
    ``max_retries`` cap (retries of this error within one call).
    """

    name: str
    kind: ErrorKind
    category: Category | str
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
    max_retries: int | None = None

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
        object.__setattr__(self, "category", as_category(self.category))
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
        if self.max_retries is not None:
            check_int("Rule", "max_retries", self.max_retries, min=0, fix="use e.g. 1, or None")

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
