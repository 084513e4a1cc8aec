"""Checks of ``Database``: its options at construction, and a unit function at call time."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from resilient_db._validate import check_callable, check_type, config_error, unknown_option
from resilient_db.classify import Classifier
from resilient_db.policies import CircuitBreaker, Clock, RetryBudget, RetryPolicy
from resilient_db.units._keys import Ledger
from resilient_db.units._options import _DEFAULT, _flag, _seconds

__all__ = ["BEGAN", "awaited", "check_options", "did_you_mean", "one_clock", "session_factory"]

#: ``session.info`` key of the attempt's ``began(connection)`` callback (``after_begin``).
BEGAN = "resilient_db.began"

F = TypeVar("F", bound=Callable[..., None])
T = TypeVar("T")


def did_you_mean(init: F) -> F:
    """Unknown keyword options get a did-you-mean instead of Python's bare TypeError."""
    known = tuple(p for p in inspect.signature(init).parameters if p != "self")

    @functools.wraps(init)
    def checked(self: Any, *args: Any, **kwargs: Any) -> None:
        for option in kwargs.keys() - set(known):
            raise unknown_option("Database", option, [k for k in known if k != "engine"])
        init(self, *args, **kwargs)

    return checked  # type: ignore[return-value]


def session_factory(engine: AsyncEngine, options: object) -> Callable[[], AsyncSession]:
    """``AsyncSession(engine, **options)``, with ``options`` checked now, not at a unit."""
    if options is None:
        options = {}
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise config_error(
            "Database",
            "session_options",
            options,
            "a dict of AsyncSession keyword arguments",
            "e.g. session_options={'autoflush': False}",
            wrong_type=True,
        )
    merged = {"expire_on_commit": False, **options}
    if "bind" in merged or "binds" in merged:
        raise config_error(
            "Database",
            "session_options",
            dict(options),
            "free of bind/binds (the session is bound to the Database's engine)",
            "pass that engine as Database(engine)",
        )
    known = [p for p in inspect.signature(AsyncSession.sync_session_class).parameters if p]
    for option in merged:
        if option not in known and option != "sync_session_class":
            raise unknown_option("Database(session_options=...) -> AsyncSession", option, known)
    try:
        AsyncSession(engine, **merged).sync_session.close()
    except (TypeError, ValueError) as exc:
        raise config_error(
            "Database",
            "session_options",
            dict(options),
            f"accepted by AsyncSession ({exc})",
            "see sqlalchemy.orm.Session() for its options",
        ) from None
    merged["sync_session_class"] = _unit_session_class(merged.get("sync_session_class", Session))
    return functools.partial(AsyncSession, engine, **merged)


_unit_classes: dict[type[Session], type[Session]] = {}


def _after_begin(session: Session, transaction: SessionTransaction, conn: Connection) -> None:
    began = session.info.get(BEGAN)
    if began is not None:
        began(conn)


def _unit_session_class(base: type[Session]) -> type[Session]:
    """A subclass of the session class whose ``after_begin`` tells the attempt that the
    checkout is over (its own listener: other sessions of ``base`` are not touched)."""
    cls = _unit_classes.get(base)
    if cls is None:
        cls = _unit_classes[base] = type(f"Unit{base.__name__}", (base,), {})
        event.listen(cls, "after_begin", _after_begin)
    return cls


def check_options(given: dict[str, Any]) -> None:
    """``Database(...)``'s arguments (its ``locals()``), in the house message format."""
    check_type(
        "Database",
        "engine",
        given["engine"],
        AsyncEngine,
        what="a SQLAlchemy AsyncEngine (Database() needs a SQLAlchemy AsyncEngine)",
        fix="create one with resilient_db.create_async_engine(url)",
    )
    for option in ("allowance", "resolve_timeout", "cleanup_timeout"):
        _seconds("Database", option, given[option], none_ok=False, fix=f"e.g. {option}=2.0")
    for option, kind, hint in (
        ("retry", RetryPolicy, "RetryPolicy(attempts=5, ...)"),
        ("breaker", CircuitBreaker, "CircuitBreaker('name', ...), or None for none"),
        ("budget", RetryBudget, "RetryBudget(...), or None for none"),
        ("classifier", Classifier, "Classifier().with_rules(...)"),
        ("ledger", Ledger, "Ledger(table='resilient_db_keys')"),
    ):
        if given[option] is not _DEFAULT:
            check_type(
                "Database",
                option,
                given[option],
                kind,
                allow_none=True,
                what=f"a {kind.__name__} or None",
                fix=f"pass e.g. {hint}",
            )
    listeners = given["listeners"]
    if not all(callable(listener) for listener in listeners):
        raise config_error(
            "Database",
            "listeners",
            list(listeners),
            "callables taking a UnitEvent",
            "e.g. listeners=[events.append]",
            wrong_type=True,
        )
    for option in ("idempotent", "read_only", "wait_for_breaker"):
        _flag("Database", option, given[option])
    _seconds(
        "Database",
        "deadline",
        given["deadline"],
        none_ok=True,
        fix="give seconds such as deadline=30.0, or None for no deadline",
    )
    check_callable(
        "Database",
        "clock",
        given["clock"],
        allow_none=True,
        fix="pass time.monotonic or a fake clock",
    )


def one_clock(retry: RetryPolicy | None, clock: Clock | None) -> tuple[RetryPolicy, Clock]:
    """The retry policy on the Database's one clock (the policy's own when none is given)."""
    policy = retry if retry is not None else RetryPolicy(deadline=None)
    clock = clock if clock is not None else policy.clock
    return (policy if policy.clock is clock else replace(policy, clock=clock)), clock


def awaited(fn: object, result: Awaitable[T]) -> Awaitable[T]:
    """``result`` of calling ``fn`` — an awaitable, or a clear error for a sync function."""
    if not hasattr(result, "__await__"):
        name = getattr(fn, "__name__", repr(fn))
        raise config_error(
            "Database.run",
            "fn",
            fn,
            f"an async function (Database.run() needs an async function; calling it returned "
            f"{type(result).__name__})",
            f"declare it 'async def {name}(session, ...)'",
            wrong_type=True,
        )
    return result
