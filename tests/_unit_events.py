"""Run a real unit of work with its start and end told to the database's listeners.

The telemetry integrations open a unit's span on ``unit.started`` and close it (and record
its duration) on ``unit.finished``. Until the library emits those two events itself, this
helper emits them around the real unit, to every listener of the ``Database``; the events in
between (attempt failures, retries, commit resolution) are the library's own. Once the
library documents ``unit.started`` on :class:`~resilient_db.UnitEvent`, it does nothing
extra.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from resilient_db import Database, UnitEvent

T = TypeVar("T")

LIBRARY_EMITS_START: bool = "unit.started" in (UnitEvent.__doc__ or "")


def _tell(db: Database, event: UnitEvent) -> None:
    for listener in db.listeners:
        listener(event)


async def run_unit(
    db: Database, fn: Callable[[AsyncSession], Awaitable[T]], events: list[UnitEvent]
) -> T:
    """``await db.run(fn)``; ``events`` must be one of ``db``'s listeners (a list's append)."""
    if LIBRARY_EMITS_START:
        return await db.run(fn)
    name = db.options.name
    seen = len(events)
    started = time.monotonic()
    _tell(db, UnitEvent(event="unit.started", name=name, attempt=0, elapsed=0.0))
    try:
        result = await db.run(fn)
    except BaseException as exc:
        failed = sum(e.event == "unit.attempt_failed" for e in events[seen:])
        _tell(
            db,
            UnitEvent(
                event="unit.finished",
                name=name,
                attempt=max(1, failed),
                elapsed=time.monotonic() - started,
                outcome="error",
                error_type=type(exc).__qualname__,
            ),
        )
        raise
    attempts = 1 + sum(e.event == "retry.scheduled" for e in events[seen:])
    _tell(
        db,
        UnitEvent(
            event="unit.finished",
            name=name,
            attempt=attempts,
            elapsed=time.monotonic() - started,
            outcome="ok",
        ),
    )
    return result
