"""Logs: stable event names, data in ``extra``, never SQL parameters or passwords."""

from __future__ import annotations

import logging
import secrets

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from resilient_db import CircuitBreaker, Database, RetryPolicy, create_async_engine
from resilient_db._logging import EventMessageFilter, install, render

SECRET = "s3cr3t-" + secrets.token_hex(4)


def _all_text(records: list[logging.LogRecord]) -> str:
    parts = []
    for r in records:
        parts.append(r.getMessage())
        parts.append(repr(r.__dict__))
        if r.exc_info and r.exc_info[1] is not None:
            parts.append(repr(r.exc_info[1]))
    return "\n".join(parts)


async def test_retry_and_failure_logs_hold_no_parameters_or_passwords(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = make_url(pg_url).set(password=SECRET)
    engine = create_async_engine(url, pool_size=1)
    db = Database(
        engine,
        retry=RetryPolicy(attempts=3, initial=0.001, max_backoff=0.002),
        breaker=None,
        name="logs",
    )

    fn = f"rdb_conflict_{secrets.token_hex(3)}"
    async with engine.begin() as conn:
        await conn.execute(
            text(
                f"CREATE FUNCTION {fn}(v text) RETURNS int LANGUAGE plpgsql AS $$ BEGIN "
                "RAISE EXCEPTION USING ERRCODE = '40001', MESSAGE = 'conflict'; END $$"
            )
        )

    async def body(session: AsyncSession, value: str) -> None:
        # a server-raised 40001 for a statement that binds the secret as a parameter
        await session.execute(text(f"SELECT {fn}(:v)"), {"v": value})

    caplog.set_level(logging.DEBUG, logger="resilient_db")
    try:
        with pytest.raises(DBAPIError):
            await db.with_options(name="logs").run(body, SECRET)
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP FUNCTION {fn}(text)"))
        await engine.dispose()
    ours = [r for r in caplog.records if r.name == "resilient_db"]
    events = [r.__dict__.get("event") for r in ours]
    assert "retry.scheduled" in events
    assert "retry.gave_up" in events
    assert "unit.attempt_failed" in events
    failed = next(r for r in ours if r.__dict__.get("event") == "unit.attempt_failed")
    assert failed.__dict__["category"] == "serialization"
    assert failed.__dict__["sqlstate"] == "40001"
    assert SECRET not in _all_text(ours)
    # Every message stands on its own: the event name and the key facts, from a real failure.
    assert failed.getMessage() == (
        "unit.attempt_failed: an attempt of a unit of work failed (unit=logs attempt=1 "
        "kind=retryable category=serialization sqlstate=40001 error_type=DBAPIError)"
    ), failed.getMessage()
    scheduled = next(r for r in ours if r.__dict__.get("event") == "retry.scheduled")
    message = scheduled.getMessage()
    assert message.startswith("retry.scheduled: retrying after a failed attempt (retry_name=logs ")
    assert "attempt=1 category=serialization" in message
    assert f"sleep={scheduled.__dict__['sleep']:.3g}s" in message
    gave_up = next(r for r in ours if r.__dict__.get("event") == "retry.gave_up")
    assert "attempts=3 category=serialization" in gave_up.getMessage()
    assert "stop_reason=attempts" in gave_up.getMessage()


def test_breaker_transition_message_names_breaker_states_and_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="resilient_db")
    breaker = CircuitBreaker("orders-db")
    breaker.force_open()
    record = next(r for r in caplog.records if r.__dict__.get("event") == "breaker.forced_open")
    assert record.getMessage() == (
        "breaker.forced_open: circuit breaker forced open (breaker=orders-db "
        "previous_state=closed state=forced_open reason=manual failure_rate=0)"
    ), record.getMessage()
    assert record.__dict__["breaker"] == "orders-db"  # the data stays in extra


def test_render_shows_only_listed_facts_and_leaves_other_records_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="resilient_db")
    log = logging.getLogger("resilient_db")
    log.info("some.event", extra={"unit": "u", "sleep": 1.5, "error": f"password={SECRET}"})
    log.info("plain text %s", "kept")
    log.info("unit.close_failed: closing raised %s; dropped", "OSError")
    log.info("Not an event name")
    install()  # a second install adds no second filter
    assert sum(isinstance(f, EventMessageFilter) for f in log.filters) == 1
    event, plain, written, sentence = caplog.records[-4:]
    assert written.getMessage() == "unit.close_failed: closing raised OSError; dropped"
    assert written.__dict__["event"] == "unit.close_failed"  # named, message kept
    assert event.getMessage() == "some.event: unit=u sleep=1.5s"
    assert event.__dict__["event"] == "some.event"
    assert SECRET not in event.getMessage()
    assert plain.getMessage() == "plain text kept"
    assert sentence.getMessage() == "Not an event name"
    assert render("x.y", {"open_for": 5.0, "failure_rate": 0.625, "attempt": 2}) == (
        "x.y: attempt=2 open_for=5s failure_rate=0.625"
    )


def _logged_events() -> dict[str, str]:
    """Every bare event name the package logs (``logger.info("x.y", extra=...)``), by file."""
    import ast
    import pathlib
    import re

    import resilient_db

    bare = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")
    levels = {"debug", "info", "warning", "error", "exception", "critical"}
    found: dict[str, str] = {}
    root = pathlib.Path(resilient_db.__file__).parent
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in levels
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and bare.fullmatch(node.args[0].value)
            ):
                found[node.args[0].value] = str(path.relative_to(root))
    return found


def test_every_logged_event_has_a_phrase() -> None:
    from resilient_db._logging import PHRASES

    events = _logged_events()
    assert len(events) > 30  # the scan sees the package's log calls
    missing = {event: where for event, where in events.items() if event not in PHRASES}
    assert not missing, f"add a phrase to resilient_db._logging.PHRASES for: {missing}"
