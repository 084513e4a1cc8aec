"""One way to validate: the validators' message format, and bad values at public entry points."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable
from typing import Any

import pytest

import resilient_db
from resilient_db import ConfigurationError, ConfigurationTypeError, ResilientDBError
from resilient_db._validate import (
    check_bool,
    check_callable,
    check_callables,
    check_choice,
    check_int,
    check_number,
    check_text,
    check_type,
    config_error,
    unknown_option,
)

FORMAT = re.compile(r"^\w[\w.]*\((\w+)=.+\) must be .+; fix: .+$", re.DOTALL)


def test_error_classes_fit_the_tree() -> None:
    assert issubclass(ConfigurationError, ResilientDBError)
    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(ConfigurationTypeError, ConfigurationError)
    assert issubclass(ConfigurationTypeError, TypeError)
    assert resilient_db.ConfigurationTypeError is ConfigurationTypeError


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: check_number("P", "x", -1, min=0), ConfigurationError),
        (lambda: check_number("P", "x", 0, min=0, min_open=True), ConfigurationError),
        (lambda: check_number("P", "x", 2, max=1), ConfigurationError),
        (lambda: check_number("P", "x", math.nan), ConfigurationError),
        (lambda: check_number("P", "x", math.inf, min=0), ConfigurationError),
        (lambda: check_number("P", "x", "1"), ConfigurationTypeError),
        (lambda: check_number("P", "x", True), ConfigurationTypeError),
        (lambda: check_number("P", "x", None), ConfigurationTypeError),
        (lambda: check_int("P", "x", 1.5), ConfigurationTypeError),
        (lambda: check_int("P", "x", 0, min=1), ConfigurationError),
        (lambda: check_bool("P", "x", 1), ConfigurationTypeError),
        (lambda: check_text("P", "x", ""), ConfigurationError),
        (lambda: check_text("P", "x", 3), ConfigurationTypeError),
        (lambda: check_choice("P", "x", "fsat", ("fast", "smart")), ConfigurationError),
        (lambda: check_callable("P", "x", 3), ConfigurationTypeError),
        (lambda: check_callables("P", "x", print), ConfigurationTypeError),  # type: ignore[arg-type]
        (lambda: check_callables("P", "x", [print, 3]), ConfigurationTypeError),
        (lambda: check_callables("P", "x", "ab"), ConfigurationTypeError),
        (lambda: check_type("P", "x", 3, str), ConfigurationTypeError),
    ],
)
def test_every_check_speaks_one_format(call: object, error: type[Exception]) -> None:
    assert callable(call)
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    match = FORMAT.match(message)
    assert match, message
    assert match.group(1) == "x"


def test_checks_return_good_values() -> None:
    assert check_number("P", "x", 0, min=0) == 0
    assert check_number("P", "x", None, allow_none=True) is None
    assert check_number("P", "x", 0.5, min=0, max=1, max_open=True) == 0.5
    assert check_int("P", "x", 3, min=1) == 3
    assert check_bool("P", "x", False) is False
    assert check_text("P", "x", "a") == "a"
    assert check_choice("P", "x", "fast", ("fast", "smart")) == "fast"
    assert check_callable("P", "x", print) is print
    assert check_callable("P", "x", None, allow_none=True) is None
    assert check_callables("P", "x", iter([print])) == (print,)
    assert check_callables("P", "x", ()) == ()
    assert check_type("P", "x", "s", str) == "s"


def test_did_you_mean_and_unknown_options() -> None:
    with pytest.raises(ConfigurationError, match=r"fix: use 'fast'"):
        check_choice("P", "mode", "fsat", ("fast", "smart"))
    err = unknown_option("create_async_engine", "pool_sise", ["pool_size", "echo"])
    assert isinstance(err, TypeError)
    assert "unknown option 'pool_sise'; did you mean 'pool_size'" in str(err)
    assert FORMAT.match(str(err))
    far = unknown_option("X", "zzz", ["alpha", "beta"])
    assert "use one of: alpha, beta" in str(far)


def test_large_values_are_elided_and_bad_reprs_survive() -> None:
    class BadRepr:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    assert "(x=...)" in str(config_error("P", "x", list(range(1000)), "short", "shorten it"))
    assert "(x=<BadRepr>)" in str(config_error("P", "x", BadRepr(), "nice", "fix it"))


# --------------------------------------------------------------------------- entry points


def _engine() -> Any:
    from sqlalchemy.ext.asyncio import create_async_engine

    return create_async_engine("postgresql+asyncpg://u@127.0.0.1:1/db")  # never connects


def _rule(**bad: object) -> object:
    fields: dict[str, Any] = {
        "name": "r",
        "kind": resilient_db.ErrorKind.FATAL,
        "category": "c",
        "reason": "r",
        "types": (ValueError,),
    }
    return resilient_db.Rule(**{**fields, **bad})


def _db(**bad: Any) -> object:
    return resilient_db.Database(_engine(), **bad)


async def _commit_status(xid: Any) -> object:
    engine = _engine()
    try:
        return await resilient_db.Database(engine).commit_status(xid)
    finally:
        await engine.dispose()


def _testing() -> Any:
    import resilient_db.testing as testing

    return testing


def _redis_store(**bad: Any) -> object:
    # The options are checked before the client is built; nothing connects.
    return resilient_db.RedisBreakerStore("redis://127.0.0.1:1/0", **{"service": "s", **bad})


URL = "postgresql+asyncpg://u@127.0.0.1:1/db"

#: (case id, the call with one bad value, the option its message must name). Every case is
#: a public constructor or configuration entry point of resilient_db, its toxiproxy or its
#: testing package, and speaks the one format of resilient_db._validate.
CASES: list[tuple[str, Callable[[], object], str]] = [
    ("Rule.retry_after", lambda: _rule(retry_after=-1.0), "retry_after"),
    ("Rule.max_retries", lambda: _rule(max_retries=-1), "max_retries"),
    ("Rule.kind", lambda: _rule(kind="fatal"), "kind"),
    ("Rule.category", lambda: _rule(category=""), "category"),
    ("Rule.sqlstates", lambda: _rule(sqlstates=("4000",)), "sqlstates"),
    ("Rule.types", lambda: _rule(types=(int,)), "types"),
    ("Rule.message", lambda: _rule(message="("), "message"),
    ("Rule.phases", lambda: _rule(phases={"commit"}), "phases"),
    ("Rule.predicate", lambda: _rule(predicate=3), "predicate"),
    ("Classifier.rules", lambda: resilient_db.Classifier([1]), "rules"),  # type: ignore[list-item]
    ("Classifier.without_rules", lambda: resilient_db.Classifier().without_rules("x"), "names"),
    ("classify.phase", lambda: resilient_db.classify(ValueError(), phase="comit"), "phase"),
    ("PgCluster.create.port", lambda: _testing().PgCluster.create(port=80), "port"),
    (
        "CategoryBackoff.initial",
        lambda: resilient_db.CategoryBackoff(initial=-1.0, max_backoff=1.0),
        "initial",
    ),
    ("RetryPolicy.attempts", lambda: resilient_db.RetryPolicy(attempts=0), "attempts"),
    ("RetryPolicy.jitter", lambda: resilient_db.RetryPolicy(jitter="x"), "jitter"),  # type: ignore[arg-type]
    ("RetryPolicy.deadline", lambda: resilient_db.RetryPolicy(deadline=-1.0), "deadline"),
    ("set_testing.attempts", lambda: resilient_db.set_testing(True, attempts=0), "attempts"),
    ("Database.retry", lambda: _db(retry=3), "retry"),
    ("Database.idempotent", lambda: _db(idempotent="yes"), "idempotent"),
    ("UnitOptions.deadline", lambda: resilient_db.UnitOptions(deadline=-1.0), "deadline"),
    ("transactional.deadline", lambda: resilient_db.transactional(deadline=-1.0), "deadline"),
    ("Database.commit_status.xid", lambda: asyncio.run(_commit_status("x")), "xid"),
    ("CircuitBreaker.name.empty", lambda: resilient_db.CircuitBreaker(""), "name"),
    ("CircuitBreaker.name.type", lambda: resilient_db.CircuitBreaker(3), "name"),  # type: ignore[arg-type]
    (
        "CircuitBreaker.listeners.one",
        lambda: resilient_db.CircuitBreaker("db", listeners=print),  # type: ignore[arg-type]
        "listeners",
    ),
    (
        "CircuitBreaker.listeners.item",
        lambda: resilient_db.CircuitBreaker("db", listeners=[3]),  # type: ignore[list-item]
        "listeners",
    ),
    (
        "CircuitBreaker.open_for_max",
        lambda: resilient_db.CircuitBreaker("db", open_for=10.0, open_for_max=5.0),
        "open_for_max",
    ),
    (
        "CircuitBreaker.confirm_trips.type",
        lambda: resilient_db.CircuitBreaker("db", confirm_trips="yes"),  # type: ignore[arg-type]
        "confirm_trips",
    ),
    (
        "CircuitBreaker.confirm_trips.no_check",
        lambda: resilient_db.CircuitBreaker("db", confirm_trips=True),
        "confirm_trips",
    ),
    ("CircuitBreaker.clock", lambda: resilient_db.CircuitBreaker("db", clock=3), "clock"),  # type: ignore[arg-type]
    ("CircuitBreaker.store", lambda: resilient_db.CircuitBreaker("db", store=3), "store"),  # type: ignore[arg-type]
    ("LocalBreakerStore.clock", lambda: resilient_db.LocalBreakerStore(clock=3), "clock"),  # type: ignore[arg-type]
    ("RetryBudget.clock", lambda: resilient_db.RetryBudget(clock=3), "clock"),  # type: ignore[arg-type]
    (
        "RetryBudget.free_categories",
        lambda: resilient_db.RetryBudget(free_categories="connection_lost"),
        "free_categories",
    ),
    ("RetryPolicy.sleep", lambda: resilient_db.RetryPolicy(sleep=3), "sleep"),  # type: ignore[arg-type]
    ("RedisBreakerStore.service", lambda: _redis_store(service=""), "service"),
    ("RedisBreakerStore.call_timeout", lambda: _redis_store(call_timeout=0), "call_timeout"),
    ("RedisBreakerStore.clock", lambda: _redis_store(clock=3), "clock"),
    ("RedisBreakerStore.listeners.one", lambda: _redis_store(listeners=print), "listeners"),
    ("RedisBreakerStore.listeners.item", lambda: _redis_store(listeners=[3]), "listeners"),
]


def _toxiproxy() -> Any:
    import resilient_db.toxiproxy as toxiproxy

    return toxiproxy


MORE_CASES: list[tuple[str, Callable[[], object], str]] = [
    ("RetryBudget.max_tokens", lambda: resilient_db.RetryBudget(max_tokens=0.5), "max_tokens"),
    ("RetryBudget.token_ratio", lambda: resilient_db.RetryBudget(token_ratio=-1.0), "token_ratio"),
    (
        "CircuitBreaker.failure_rate",
        lambda: resilient_db.CircuitBreaker("db", failure_rate=2.0),
        "failure_rate",
    ),
    (
        "engine_health_check.timeout",
        lambda: resilient_db.engine_health_check(_engine(), timeout=-1.0),
        "timeout",
    ),
    (
        "create_async_engine.pool_size",
        lambda: resilient_db.create_async_engine("postgresql+asyncpg://u@h/db", pool_size=-1),
        "pool_size",
    ),
    (
        "create_async_engine.unknown",
        lambda: resilient_db.create_async_engine("postgresql+asyncpg://u@h/db", pool_sise=5),
        "pool_sise",
    ),
    (
        "doctor.processes",
        lambda: asyncio.run(resilient_db.doctor("postgresql+asyncpg://u@h/db", processes=0)),
        "processes",
    ),
    (
        "doctor.admin_reserve",
        lambda: asyncio.run(resilient_db.doctor("postgresql+asyncpg://u@h/db", admin_reserve=2.0)),
        "admin_reserve",
    ),
    ("Ledger.ttl", lambda: resilient_db.Ledger(ttl=-1.0), "ttl"),
    (
        "ToxiproxyClient.timeout",
        lambda: _toxiproxy().ToxiproxyClient(timeout=-1.0),
        "timeout",
    ),
    (
        "AsyncToxiproxyClient.timeout",
        lambda: _toxiproxy().AsyncToxiproxyClient(timeout=-1.0),
        "timeout",
    ),
    ("ToxiproxyClient.url", lambda: _toxiproxy().ToxiproxyClient("https://h:8474"), "url"),
    ("ToxiproxyClient.url type", lambda: _toxiproxy().ToxiproxyClient(8474), "url"),
    ("ToxiproxyServer.port", lambda: _toxiproxy().ToxiproxyServer(port=-1), "port"),
    (
        "ToxiproxyServer.idle_timeout",
        lambda: _toxiproxy().ToxiproxyServer(idle_timeout=-1.0),
        "idle_timeout",
    ),
]


@pytest.mark.parametrize(
    ("call", "option"), [c[1:] for c in MORE_CASES], ids=[c[0] for c in MORE_CASES]
)
def test_more_entry_points_speak_the_format(call: Callable[[], object], option: str) -> None:
    with pytest.raises(ResilientDBError) as info:
        call()
    message = str(info.value)
    assert f"({option}=" in message, message
    assert "; fix: " in message, message


@pytest.mark.parametrize(("call", "option"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_values_raise_our_error_naming_the_option_and_the_fix(
    call: Callable[[], object], option: str
) -> None:
    with pytest.raises(ResilientDBError) as info:
        call()
    message = str(info.value)
    assert f"({option}=" in message, message
    assert "; fix: " in message, message
    assert FORMAT.match(message), message
