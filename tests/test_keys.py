"""The operation-key ledger against the real PostgreSQL (both drivers)."""

from __future__ import annotations

import pickle
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Literal

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

import resilient_db
from resilient_db import AlreadyApplied, ConfigurationError, Ledger, create_async_engine
from resilient_db.units._keys import KeyRecord
from tests._relay import relay_to


@pytest.fixture(params=["asyncpg", "psycopg"])
async def engine(request: pytest.FixtureRequest, pg_url: str) -> AsyncIterator[AsyncEngine]:
    url = pg_url if request.param == "asyncpg" else pg_url.replace("+asyncpg", "+psycopg", 1)
    eng = create_async_engine(url, pool_size=20, max_overflow=5)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture
async def ledger(engine: AsyncEngine) -> AsyncIterator[Ledger]:
    led = await resilient_db.create_ledger(engine, Ledger(table=f"keys_{secrets.token_hex(4)}"))
    try:
        yield led
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TABLE IF EXISTS {led.name}"))


async def _apply(engine: AsyncEngine, ledger: Ledger, key: str, result: object) -> KeyRecord:
    async with engine.connect() as conn:
        rec = await ledger.record(conn, key, result)
        if rec.inserted:
            await conn.commit()
        else:
            await conn.rollback()
    return rec


async def test_create_is_idempotent_and_ddl_is_plain_sql(engine: AsyncEngine) -> None:
    led = Ledger(schema="public", table=f"keys_{secrets.token_hex(4)}")
    assert led.name == f'"public"."{led.table}"'
    assert all(stmt.startswith("CREATE ") and "IF NOT EXISTS" in stmt for stmt in led.ddl())
    try:
        await resilient_db.create_ledger(engine, led)
        await resilient_db.create_ledger(engine, led)
        assert not (await led.lookup(engine, "nothing")).committed
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TABLE {led.name}"))


async def test_sequential_same_key_applies_once_and_replays_result(
    engine: AsyncEngine, ledger: Ledger
) -> None:
    first = await _apply(engine, ledger, "order-1", {"id": 7, "items": [1, 2]})
    assert first.inserted
    assert first.backend_pid
    assert first.xid
    second = await _apply(engine, ledger, "order-1", {"id": 8})
    assert not second.inserted
    assert second.previous is not None
    assert second.previous.committed
    assert second.previous.replay() == {"id": 7, "items": [1, 2]}
    assert second.previous.recorded_at is not None
    error = second.previous.already_applied()
    assert error.has_result
    assert error.result == {"id": 7, "items": [1, 2]}
    assert "the earlier result is in .result" in str(error)
    state = await ledger.lookup(engine, "order-1")
    assert state.committed
    assert state.result == {"id": 7, "items": [1, 2]}


@pytest.mark.parametrize("result", [None, 0, "", [], "text", 1.5])
async def test_falsy_and_none_results_are_stored(
    engine: AsyncEngine, ledger: Ledger, result: object
) -> None:
    await _apply(engine, ledger, "k", result)
    again = await _apply(engine, ledger, "k", "other")
    assert again.previous is not None
    assert again.previous.has_result
    assert again.previous.replay() == result


async def test_without_a_stored_result_replay_raises_already_applied(engine: AsyncEngine) -> None:
    led = await resilient_db.create_ledger(
        engine, Ledger(table=f"keys_{secrets.token_hex(4)}", store_results=False)
    )
    try:
        await _apply(engine, led, "pay-1", {"ok": True})
        again = await _apply(engine, led, "pay-1", {"ok": True})
        assert again.previous is not None
        with pytest.raises(AlreadyApplied) as info:
            again.previous.replay()
        assert info.value.key == "pay-1"
        assert info.value.recorded_at is not None
        assert "already applied" in str(info.value)
        assert "store_results" in str(info.value)
        assert isinstance(info.value, resilient_db.ResilientDBError)
        copy = pickle.loads(pickle.dumps(info.value))
        assert copy.key == "pay-1"
        assert copy.recorded_at == info.value.recorded_at
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TABLE {led.name}"))


async def test_a_result_that_is_not_json_is_not_stored(engine: AsyncEngine, ledger: Ledger) -> None:
    await _apply(engine, ledger, "obj", object())
    again = await _apply(engine, ledger, "obj", None)
    assert again.previous is not None
    assert not again.previous.has_result
    with pytest.raises(AlreadyApplied):
        again.previous.replay()
    assert ledger.encode_result(float("nan")) is None


async def test_concurrent_same_key_waits_then_sees_the_committed_one(
    engine: AsyncEngine, ledger: Ledger
) -> None:
    recorded = anyio.Event()
    async with engine.connect() as first:
        rec = await ledger.record(first, "c-1", "first")
        assert rec.inserted
        second: list[KeyRecord] = []

        async def other() -> None:
            second.append(await _apply(engine, ledger, "c-1", "second"))
            recorded.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(other)
            await _wait_blocked(engine)  # the second insert waits on the key's index
            assert not recorded.is_set()
            await first.commit()
    assert not second[0].inserted
    assert second[0].previous is not None
    assert second[0].previous.replay() == "first"


async def test_concurrent_same_key_after_a_rollback_is_inserted(
    engine: AsyncEngine, ledger: Ledger
) -> None:
    async with engine.connect() as first:
        assert (await ledger.record(first, "c-2", "first")).inserted
        second: list[KeyRecord] = []

        async def other() -> None:
            second.append(await _apply(engine, ledger, "c-2", "second"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(other)
            await _wait_blocked(engine)
            await first.rollback()
    assert second[0].inserted
    assert (await ledger.lookup(engine, "c-2")).result == "second"


async def test_sixteen_concurrent_units_with_one_key_apply_once(
    engine: AsyncEngine, ledger: Ledger
) -> None:
    table = f"applied_{secrets.token_hex(4)}"
    async with engine.begin() as conn:
        await conn.execute(text(f"CREATE TABLE {table} (worker int)"))
    outcomes: list[bool] = []

    async def unit(worker: int) -> None:
        async with engine.connect() as conn:
            await conn.execute(text(f"INSERT INTO {table} VALUES (:w)"), {"w": worker})
            rec = await ledger.record(conn, "once", {"worker": worker})
            outcomes.append(rec.inserted)
            await (conn.commit() if rec.inserted else conn.rollback())

    try:
        async with anyio.create_task_group() as tg:
            for worker in range(16):
                tg.start_soon(unit, worker)
        async with engine.connect() as conn:
            rows = (await conn.execute(text(f"SELECT worker FROM {table}"))).all()
        assert outcomes.count(True) == 1
        assert len(outcomes) == 16
        assert len(rows) == 1
        assert (await ledger.lookup(engine, "once")).result == {"worker": rows[0][0]}
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TABLE {table}"))


async def test_resolve_ends_a_backend_still_holding_the_key(
    engine: AsyncEngine, ledger: Ledger
) -> None:
    async with engine.connect() as stuck:
        rec = await ledger.record(stuck, "held", 1)
        state = await ledger.resolve(engine, rec, timeout=10)
        assert state is not None
        assert not state.committed
        with pytest.raises(Exception):  # noqa: B017 - the backend was terminated
            await stuck.execute(text("SELECT 1"))
    # The retry that "absent" allows applies it.
    assert (await _apply(engine, ledger, "held", 2)).inserted


async def test_resolve_after_commit_is_committed(engine: AsyncEngine, ledger: Ledger) -> None:
    rec = await _apply(engine, ledger, "done", [1])
    state = await ledger.resolve(engine, rec, timeout=10)
    assert state is not None
    assert state.committed
    assert state.result == [1]


async def test_expired_entries_are_cleaned_and_may_apply_again(
    engine: AsyncEngine, ledger: Ledger
) -> None:
    for key in ("old-1", "old-2", "fresh"):
        await _apply(engine, ledger, key, key)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                f"UPDATE {ledger.name} SET expires_at = now() - interval '1 second' "
                "WHERE key LIKE 'old-%'"
            )
        )
    assert (await _apply(engine, ledger, "old-2", "again")).inserted  # expired: replaced
    assert await ledger.cleanup(engine, batch=1) == 1
    assert not (await ledger.lookup(engine, "old-1")).committed
    assert (await ledger.lookup(engine, "old-2")).result == "again"
    assert (await ledger.lookup(engine, "fresh")).committed
    assert await ledger.forget(engine, "fresh")
    assert not await ledger.forget(engine, "fresh")


async def test_a_missing_table_names_the_helper(engine: AsyncEngine) -> None:
    led = Ledger(table="no_such_ledger_table")
    async with engine.connect() as conn:
        with pytest.raises(ConfigurationError, match="create_ledger"):
            await led.record(conn, "k", None)


def test_keys_are_validated_without_io() -> None:
    assert Ledger.normalize_key(12) == "12"
    u = uuid.uuid4()
    assert Ledger.normalize_key(u) == str(u)
    for bad in ("", "x" * 513, "a\x00b", True, 1.5, None, b"k"):
        with pytest.raises(ConfigurationError, match="operation key"):
            Ledger.normalize_key(bad)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"table": "a-b"}, "table must be a plain SQL identifier"),
        ({"schema": 'x"; drop'}, "schema must be"),
        ({"ttl": 0}, "ttl"),
        ({"ttl": True}, "ttl"),
        ({"store_results": 1}, "store_results"),
    ],
)
def test_bad_ledger_options_name_the_fix(options: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        Ledger(**options)  # type: ignore[arg-type]


async def _wait_blocked(engine: AsyncEngine, timeout: float = 10.0) -> None:
    """Until some backend of this database waits on a lock (bounded)."""
    with anyio.fail_after(timeout):
        while True:
            async with engine.connect() as conn:
                waiting = (
                    await conn.execute(
                        text(
                            "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                            "current_database() AND wait_event_type = 'Lock'"
                        )
                    )
                ).scalar_one()
            if waiting:
                return
            await anyio.sleep(0.02)  # bounded poll


@pytest.mark.parametrize("cut", ["before", "after"])
async def test_a_commit_cut_by_the_network_is_settled_by_its_key(
    engine: AsyncEngine, ledger: Ledger, cut: Literal["before", "after"]
) -> None:
    """COMMIT dropped on the way in (rolled back) or its answer dropped (committed): the key
    tells which, on a fresh connection."""
    url = engine.url
    async with relay_to(url.host or "127.0.0.1", url.port or 5432) as relay:
        proxied = create_async_engine(url.set(host="127.0.0.1", port=relay.port), pool_size=2)
        try:
            conn = await proxied.connect()
            rec = await ledger.record(conn, f"cut-{cut}", {"cut": cut})
            relay.cut_commit = cut
            with pytest.raises(Exception):  # noqa: B017 - the driver's connection-lost error
                await conn.commit()
            await conn.invalidate()
            await conn.close()
            state = await ledger.resolve(proxied, rec, timeout=10)
        finally:
            await proxied.dispose()
    assert state is not None
    assert state.committed is (cut == "after")
    if cut == "after":
        assert state.result == {"cut": cut}
