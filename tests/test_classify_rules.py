"""Pure-logic tests of the classifier: rules table, overrides, chain walking, docs drift.

Database behaviour is tested for real in ``test_classify_faults.py``; the exceptions built
here are Python/OS-level ones (cancellation, DNS, cycles) or user-defined ones.
"""

from __future__ import annotations

import asyncio
import importlib
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import resilient_db
from resilient_db import (
    Category,
    CircuitOpenError,
    Classification,
    Classifier,
    ConfigurationError,
    ErrorFacts,
    ErrorKind,
    Phase,
    Rule,
    classify,
)
from resilient_db.classify._default_rules import DEFAULT_RULES
from resilient_db.classify._docs import render_rules_markdown

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "classifier-rules.md"


def test_docs_table_matches_the_code() -> None:
    assert DOC.read_text(encoding="utf-8") == render_rules_markdown(), (
        "docs/classifier-rules.md is stale; regenerate it with "
        "`python -m resilient_db.classify._docs > docs/classifier-rules.md`"
    )


def test_regeneration_command_prints_the_doc_without_warnings() -> None:
    out = subprocess.run(
        [sys.executable, "-W", "error", "-m", "resilient_db.classify._docs"],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.stderr == ""
    assert out.stdout == DOC.read_text(encoding="utf-8")


def test_public_names_exported() -> None:
    for name in ("Classification", "Classifier", "ErrorKind", "Phase", "Rule", "classify"):
        assert name in resilient_db.__all__
        assert getattr(resilient_db, name) is not None


def test_enum_values_are_the_contract() -> None:
    assert [k.value for k in ErrorKind] == ["retryable", "fatal", "commit_unknown"]
    assert [p.value for p in Phase] == ["connect", "checkout", "statement", "commit"]
    assert str(ErrorKind.RETRYABLE) == "retryable"
    assert Phase("commit") is Phase.COMMIT


def test_every_dotted_type_name_in_the_default_rules_exists() -> None:
    for rule in DEFAULT_RULES:
        for t in rule.types:
            if isinstance(t, str):
                module, _, attr = t.rpartition(".")
                cls = getattr(importlib.import_module(module), attr)
                assert f"{cls.__module__}.{cls.__qualname__}" == t, t
                assert issubclass(cls, BaseException)


def test_rule_names_are_unique() -> None:
    names = [r.name for r in DEFAULT_RULES]
    assert len(names) == len(set(names))


def test_classification_is_frozen_and_has_retryable_property() -> None:
    c = classify(ConnectionResetError(104, "Connection reset by peer"))
    assert c.retryable
    assert c.kind is ErrorKind.RETRYABLE
    with pytest.raises(AttributeError):
        c.kind = ErrorKind.FATAL  # type: ignore[misc]
    assert isinstance(c, Classification)


# -- cancellation and non-Exceptions ------------------------------------------------------


@pytest.mark.parametrize(
    "exc", [asyncio.CancelledError(), KeyboardInterrupt(), SystemExit(1), GeneratorExit()]
)
def test_non_exceptions_are_fatal_cancelled_and_never_count(exc: BaseException) -> None:
    for phase in (None, "connect", "checkout", "statement"):
        c = classify(exc, phase=phase)
        assert (c.kind, c.category) == (ErrorKind.FATAL, "cancelled")
        assert not c.counts_toward_breaker
        assert not c.invalidate_pool
    at_commit = classify(exc, phase=Phase.COMMIT)
    assert (at_commit.kind, at_commit.category) == (ErrorKind.COMMIT_UNKNOWN, "cancelled")
    assert not at_commit.counts_toward_breaker


def test_cancelled_wrapping_a_database_error_is_still_cancelled() -> None:
    inner = ConnectionResetError(104, "reset")
    outer = asyncio.CancelledError()
    outer.__cause__ = inner
    assert classify(outer).category == "cancelled"


# -- OS-level connect errors (real exception types the OS raises) -------------------------


def test_gaierror_try_again_is_retryable_noname_is_fatal() -> None:
    again = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    c = classify(again, phase="connect")
    assert (c.kind, c.category, c.counts_toward_breaker) == (
        ErrorKind.RETRYABLE,
        "connect_failed",
        True,
    )
    noname = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    c = classify(noname, phase="connect")
    assert (c.kind, c.category, c.counts_toward_breaker) == (ErrorKind.FATAL, "config", True)


def test_real_resolver_failure_for_an_invalid_host() -> None:
    with pytest.raises(socket.gaierror) as info:
        socket.getaddrinfo("no-such-host.invalid", 5432)
    c = classify(info.value, phase="connect")
    if info.value.errno == socket.EAI_AGAIN:  # resolver unreachable in this sandbox
        assert c.kind is ErrorKind.RETRYABLE
    else:
        assert (c.kind, c.category) == (ErrorKind.FATAL, "config")


def test_timeout_error_by_phase() -> None:
    exc = TimeoutError()
    assert classify(exc, phase="statement").category == "timeout"
    assert classify(exc, phase="statement").kind is ErrorKind.RETRYABLE
    assert classify(exc, phase="connect").category == "connect_failed"
    assert classify(exc, phase="commit").kind is ErrorKind.COMMIT_UNKNOWN


def test_asyncio_multiple_connect_errors_are_connect_failed() -> None:
    # asyncio's message when every address of a host refused the connection.
    exc = OSError(
        "Multiple exceptions: [Errno 111] Connect call failed ('::1', 1, 0, 0), "
        "[Errno 111] Connect call failed ('127.0.0.1', 1)"
    )
    c = classify(exc)
    assert (c.kind, c.category) == (ErrorKind.RETRYABLE, "connect_failed")


def test_plain_oserror_from_application_code_is_not_a_network_fault() -> None:
    c = classify(FileNotFoundError(2, "No such file or directory"))
    assert (c.kind, c.category) == (ErrorKind.FATAL, "unknown")


# -- chain walking ------------------------------------------------------------------------


def test_cycle_in_the_chain_terminates() -> None:
    a = RuntimeError("a")
    b = RuntimeError("b")
    a.__cause__ = b
    b.__cause__ = a
    a.__context__ = b
    b.__context__ = a
    assert classify(a).category == "unknown"


def test_long_chain_is_bounded() -> None:
    top = ValueError("top")
    cur: BaseException = top
    for i in range(500):
        nxt = ValueError(str(i))
        cur.__cause__ = nxt
        cur = nxt
    cur.__cause__ = ConnectionResetError(104, "reset")
    assert classify(top).category == "unknown"  # beyond the walk bound: not seen


def _raise_while_handling(outer: BaseException, *, suppress: bool) -> None:
    try:
        raise ConnectionResetError(104, "reset")
    except ConnectionResetError:
        if suppress:
            raise outer from None
        raise outer  # noqa: B904 - the implicit context is the point


def test_explicit_chain_wins_over_context() -> None:
    with pytest.raises(asyncio.CancelledError) as info:
        _raise_while_handling(asyncio.CancelledError(), suppress=False)
    assert info.value.__context__ is not None
    assert classify(info.value).category == "cancelled"


def test_context_is_used_when_the_explicit_chain_is_unknown() -> None:
    with pytest.raises(RuntimeError) as info:
        _raise_while_handling(RuntimeError("while handling"), suppress=False)
    c = classify(info.value)
    assert (c.kind, c.category) == (ErrorKind.RETRYABLE, "connection_lost")


def test_suppressed_context_is_not_used() -> None:
    with pytest.raises(RuntimeError) as info:
        _raise_while_handling(RuntimeError("while handling"), suppress=True)
    # ``from None`` hides the context: the caller chose to.
    assert classify(info.value).category == "unknown"


def test_orig_attribute_is_followed() -> None:
    class Wrapper(Exception):
        def __init__(self, orig: BaseException) -> None:
            super().__init__("wrapped")
            self.orig = orig

    c = classify(Wrapper(ConnectionRefusedError(111, "refused")))
    assert c.category == "connect_failed"


def test_exception_group_takes_the_most_severe_member() -> None:
    group = ExceptionGroup("tg", [ConnectionResetError(104, "reset"), ValueError("bug")])
    assert classify(group).kind is ErrorKind.FATAL
    group = ExceptionGroup("tg", [ConnectionResetError(104, "reset")])
    assert classify(group).category == "connection_lost"


def test_circuit_open_is_retryable_with_its_hint() -> None:
    c = classify(CircuitOpenError("db", 2.5))
    assert (c.kind, c.category, c.retry_after) == (ErrorKind.RETRYABLE, "circuit_open", 2.5)
    assert not c.counts_toward_breaker


# -- phases -------------------------------------------------------------------------------


def test_phase_accepts_strings_and_members_and_rejects_others() -> None:
    exc = ConnectionResetError(104, "reset")
    assert classify(exc, phase="commit") == classify(exc, phase=Phase.COMMIT)
    with pytest.raises(ConfigurationError, match=r"phase='comit'.*'commit'"):
        classify(exc, phase="comit")


# -- rules and overrides ------------------------------------------------------------------


class AppTransientError(Exception):
    """A user-defined transient error."""


def test_user_rule_by_type_and_first_wins() -> None:
    rule = Rule(
        name="app_transient",
        types=(AppTransientError,),
        kind=ErrorKind.RETRYABLE,
        category="app",
        reason="the app said so",
    )
    assert classify(AppTransientError()).kind is ErrorKind.FATAL
    custom = Classifier().with_rules(rule)
    c = custom.classify(AppTransientError())
    assert (c.kind, c.category, c.rule) == (ErrorKind.RETRYABLE, "app", "app_transient")
    assert custom.rules[0] is rule
    assert Classifier().with_rules(rule, first=False).rules[-1] is rule


def test_rule_with_existing_name_replaces_it_in_place() -> None:
    base = Classifier()
    idx = [r.name for r in base.rules].index("deadlock")
    replacement = Rule(
        name="deadlock", sqlstates=("40P01",), kind=ErrorKind.FATAL, category="x", reason="r"
    )
    custom = base.with_rules(replacement)
    assert custom.rules[idx] is replacement
    assert len(custom.rules) == len(base.rules)


def test_without_rules_and_unknown_names() -> None:
    custom = Classifier().without_rules("connection_refused")
    assert "connection_refused" not in [r.name for r in custom.rules]
    assert custom.classify(ConnectionRefusedError(111, "x")).category == "connection_lost"
    with pytest.raises(ConfigurationError, match="no rule named 'nope'"):
        Classifier().without_rules("nope")


def test_predicate_and_message_rules() -> None:
    def odd_length(facts: ErrorFacts) -> bool:
        return len(str(facts.exc)) % 2 == 1

    rule = Rule(
        name="odd",
        types=(ValueError,),
        message=r"^boom",
        predicate=odd_length,
        when="odd message length",
        kind=ErrorKind.RETRYABLE,
        category="odd",
        reason="odd",
    )
    c = Classifier([rule])
    assert c.classify(ValueError("boom!")).category == "odd"
    assert c.classify(ValueError("boom")).category == "unknown"
    assert c.classify(ValueError("xboom!")).category == "unknown"
    assert c.classify(KeyError("boom!")).category == "unknown"
    assert "odd message length" in rule.describe_match()


def test_phase_restricted_rule() -> None:
    rule = Rule(
        name="commit_only",
        types=(ValueError,),
        phases=frozenset({Phase.COMMIT}),
        kind=ErrorKind.COMMIT_UNKNOWN,
        category="c",
        reason="r",
    )
    c = Classifier([rule])
    assert c.classify(ValueError(), phase="commit").kind is ErrorKind.COMMIT_UNKNOWN
    assert c.classify(ValueError(), phase="statement").kind is ErrorKind.FATAL


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "at least one matcher"),
        ({"sqlstates": ("4000",)}, "sqlstate '4000' is invalid"),
        ({"sqlstates": "40001"}, "must be a tuple of codes"),
        ({"message": "("}, "not a valid regular expression"),
        ({"types": ("NoDots",)}, "must be dotted"),
        ({"types": (int,)}, "exception classes or dotted names"),
        ({"types": (ValueError,), "retry_after": -1.0}, r"retry_after=-1\.0\) must be .*>= 0"),
        ({"types": (ValueError,), "phases": frozenset({"commit"})}, "Phase members"),
    ],
)
def test_bad_rules_are_rejected_with_a_clear_message(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        Rule(name="bad", kind=ErrorKind.FATAL, category="c", reason="r", **kwargs)  # type: ignore[arg-type]


def test_duplicate_rule_names_are_rejected() -> None:
    rule = Rule(name="a", types=(ValueError,), kind=ErrorKind.FATAL, category="c", reason="r")
    with pytest.raises(ConfigurationError, match="two rules are named 'a'"):
        Classifier([rule, rule])


def test_is_cheap() -> None:
    # A coarse guard only (the benchmark measures properly): well under 50 us per call.
    import time

    exc = ConnectionResetError(104, "reset")
    classify(exc, phase="statement")
    start = time.perf_counter()
    for _ in range(2000):
        classify(exc, phase="statement")
    assert (time.perf_counter() - start) / 2000 < 50e-6


# -- categories ---------------------------------------------------------------------------


def test_category_is_one_str_enum_shared_by_rules_and_verdicts() -> None:
    assert resilient_db.Category is Category
    assert "Category" in resilient_db.__all__
    as_text: str = Category.TIMEOUT
    assert as_text == "timeout"
    for rule in DEFAULT_RULES:
        assert isinstance(rule.category, Category), rule.name
    c = classify(ConnectionResetError(104, "reset"))
    assert c.category is Category.CONNECTION_LOST
    assert f"{c.category}" == "connection_lost"
    assert classify(ValueError()).category is Category.UNKNOWN
    # A string naming a member becomes the member; other strings stay user categories.
    named = Rule(name="n", types=(ValueError,), kind=ErrorKind.FATAL, category="data", reason="r")
    assert named.category is Category.DATA
    own = Rule(name="o", types=(ValueError,), kind=ErrorKind.FATAL, category="mine", reason="r")
    assert own.category == "mine"
    assert not isinstance(own.category, Category)
