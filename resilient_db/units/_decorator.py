"""``@transactional``: the repository-method decorator.

The session is injected as the keyword argument ``session`` so the decorated function keeps
its exact signature for type checkers (ParamSpec): declare it with the :data:`INJECTED`
default and callers never pass it::

    class Accounts:
        def __init__(self, database: Database) -> None:
            self.database = database

        @transactional
        async def deposit(
            self, account: int, amount: int, *, session: AsyncSession = INJECTED
        ) -> None:
            await session.execute(...)

The decorator finds its :class:`Database` (in this order): the ``database=`` given to the
decorator (a ``Database`` or a zero-argument callable returning one, resolved at call time,
so the class may be defined before any engine exists); the ``database`` attribute of the
first positional argument (``self``). Inside an active unit on the same task it joins that
unit's session: one transaction, one retry loop (only the outermost unit retries). A caller
that passes ``session=`` explicitly runs the function on that session as is.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, overload

from resilient_db._errors import ConfigurationTypeError
from resilient_db._validate import config_error
from resilient_db.policies import RetryPolicy
from resilient_db.units._context import joinable
from resilient_db.units._database import Database
from resilient_db.units._options import _DEFAULT, UnitOptions

__all__ = ["INJECTED", "transactional"]

P = ParamSpec("P")
T = TypeVar("T")

DatabaseSource = Database | Callable[[], Database]


class _Injected:
    __slots__ = ()

    def __repr__(self) -> str:
        return "INJECTED"

    def __bool__(self) -> bool:
        return False


#: Default value for the ``session`` parameter of a ``@transactional`` function.
INJECTED: Any = _Injected()


def _find_database(source: DatabaseSource | None, args: tuple[Any, ...], fn: Any) -> Database:
    if source is not None:
        given: object = source if isinstance(source, Database) else source()
        if isinstance(given, Database):
            return given
        raise config_error(
            f"transactional[{fn.__qualname__}]",
            "database",
            given,
            "a Database (@transactional(database=...) must give a Database)",
            "database=lambda: app.database",
            wrong_type=True,
        )
    if args:
        found: object = getattr(args[0], "database", None)
        if isinstance(found, Database):
            return found
    raise ConfigurationTypeError(
        f"@transactional could not find a Database for {fn.__qualname__}(): give the instance a "
        "'database' attribute (self.database = Database(engine)), or decorate with "
        "@transactional(database=lambda: app.database)"
    )


def _check_function(func: Callable[..., Any]) -> None:
    """An ``async def`` with a ``session`` parameter to inject the session into."""
    if not inspect.iscoroutinefunction(func):
        raise config_error(
            "transactional",
            "fn",
            func,
            "an async function (@transactional needs an async function)",
            "declare it with 'async def'",
            wrong_type=True,
        )
    params = inspect.signature(func).parameters
    session = params.get("session")
    if session is not None and session.kind in (
        inspect.Parameter.KEYWORD_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        return
    if session is None and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    raise config_error(
        "transactional",
        "fn",
        func,
        f"a function with a 'session' parameter ({func.__qualname__}() has none to inject "
        "the unit's session into)",
        "add '*, session: AsyncSession = INJECTED'",
        wrong_type=True,
    )


def _validate(database: object, *options: object) -> None:
    """The decorator's options, checked at decoration, not at the first call."""
    names = ("deadline", "idempotent", "read_only", "retry", "name")
    given: dict[str, Any] = {k: v for k, v in zip(names, options, strict=True) if v is not _DEFAULT}
    UnitOptions(**given)
    if database is not None and not (isinstance(database, Database) or callable(database)):
        raise config_error(
            "transactional",
            "database",
            database,
            "a Database or a zero-argument callable returning one "
            "(@transactional(database=...) must be a Database)",
            "database=lambda: app.database",
            wrong_type=True,
        )


@overload
def transactional(fn: Callable[P, Awaitable[T]], /) -> Callable[P, Awaitable[T]]: ...


@overload
def transactional(
    *,
    database: DatabaseSource | None = None,
    deadline: float | None = ...,
    idempotent: bool = ...,
    read_only: bool = ...,
    retry: RetryPolicy | None = ...,
    name: str | None = None,
    key: object = None,
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]: ...


def transactional(
    fn: Callable[P, Awaitable[T]] | None = None,
    /,
    *,
    database: DatabaseSource | None = None,
    deadline: float | None = _DEFAULT,
    idempotent: bool = _DEFAULT,
    read_only: bool = _DEFAULT,
    retry: RetryPolicy | None = _DEFAULT,
    name: str | None = None,
    key: object = None,
) -> Any:
    """Make an async function or method one unit of work (see the module docstring).

    ``key``: the operation key (see ``Database.run``) — a value, or a function of the
    call's arguments (``key=lambda self, order_id, **_: f"ship:{order_id}"``; called
    without ``session``).
    """

    _validate(database, deadline, idempotent, read_only, retry, name)

    def decorate(func: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        _check_function(func)
        unit_name = name or func.__qualname__
        overrides = {
            "deadline": deadline,
            "idempotent": idempotent,
            "read_only": read_only,
            "retry": retry,
            "name": unit_name,
        }

        @functools.wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            if kwargs.get("session", INJECTED) is not INJECTED:
                return await func(*args, **kwargs)
            db = _find_database(database, args, func)
            op_key = key(*args, **kwargs) if callable(key) else key
            active = joinable(db._ctx.key)
            if active is not None:
                if op_key is not None:
                    await db._record_joined(active.session, op_key)
                kwargs["session"] = active.session
                return await func(*args, **kwargs)

            def body(session: Any) -> Awaitable[T]:
                kwargs["session"] = session
                return func(*args, **kwargs)

            return await db._run_unit(body, db._call_options(**overrides), op_key)

        return wrapper

    if fn is not None:
        return decorate(fn)
    return decorate
