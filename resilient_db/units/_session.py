"""Construction-time checks of ``Database``: unknown options and the session's options."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from resilient_db._validate import config_error, unknown_option

__all__ = ["did_you_mean", "session_factory"]

F = TypeVar("F", bound=Callable[..., None])


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
    return functools.partial(AsyncSession, engine, **merged)
