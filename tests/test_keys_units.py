"""Operation keys through the unit-of-work API (``db.run(key=)``, ``@transactional(key=)``,
``db.transaction(key=)``) against the real PostgreSQL; each part skips until it is wired."""

from __future__ import annotations

import inspect
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from resilient_db import (
    INJECTED,
    AlreadyApplied,
    ConfigurationError,
    Database,
    Ledger,
    create_async_engine,
    create_ledger,
    transactional,
)
from tests._relay import relay_to


def _takes_key(fn: Callable[..., Any]) -> bool:
    return "key" in inspect.signature(fn).parameters


needs_run_key = pytest.mark.skipif(
    not _takes_key(Database.run), reason="db.run(..., key=...) is not wired yet"
)
needs_transaction_key = pytest.mark.skipif(
    not _takes_key(Database.transaction), reason="db.transaction(key=...) is not wired yet"
)
needs_transactional_key = pytest.mark.skipif(
    not _takes_key(transactional), reason="@transactional(key=...) is not wired yet"
)


@pytest.fixture(params=["asyncpg", "psycopg"])
async def engine(request: pytest.FixtureRequest, pg_url: str) -> AsyncIterator[AsyncEngine]:
    url = pg_url if request.param == "asyncpg" else pg_url.replace("+asyncpg", "+psycopg", 1)
    eng = create_async_engine(url, pool_size=20, max_overflow=5)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture
async def table(engine: AsyncEngine) -> AsyncIterator[str]:
    name = f"keyed_{secrets.token_hex(4)}"
    async with engine.begin() as conn:
        await conn.execute(text(f"CREATE TABLE {name} (op text NOT NULL)"))
    await create_ledger(engine)
    try:
        yield name
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TABLE {name}"))


async def _rows(engine: AsyncEngine, table: str) -> list[str]:
    async with engine.connect() as conn:
        return [str(r[0]) for r in await conn.execute(text(f"SELECT op FROM {table}"))]


def _insert(table: str) -> Callable[[AsyncSession, str], Any]:
    async def insert(session: AsyncSession, op: str) -> dict[str, str]:
        await session.execute(text(f"INSERT INTO {table} VALUES (:op)"), {"op": op})
        return {"op": op}

    return insert


@needs_run_key
async def test_run_with_the_same_key_twice_applies_once(engine: AsyncEngine, table: str) -> None:
    db = Database(engine)
    run: Any = db.run
    key = f"k-{secrets.token_hex(4)}"
    assert await run(_insert(table), "first", key=key) == {"op": "first"}
    assert await run(_insert(table), "second", key=key) == {"op": "first"}  # stored result
    assert await _rows(engine, table) == ["first"]


@needs_run_key
async def test_run_with_the_same_key_concurrently_applies_once(
    engine: AsyncEngine, table: str
) -> None:
    db = Database(engine)
    run: Any = db.run
    key = f"k-{secrets.token_hex(4)}"
    results: list[Any] = []

    async def call(n: int) -> None:
        results.append(await run(_insert(table), f"op{n}", key=key))

    async with anyio.create_task_group() as tg:
        for n in range(8):
            tg.start_soon(call, n)
    rows = await _rows(engine, table)
    assert len(rows) == 1
    assert results == [{"op": rows[0]}] * 8  # everyone gets the one applied result


@needs_run_key
async def test_without_a_stored_result_the_second_call_raises_already_applied(
    engine: AsyncEngine, table: str
) -> None:
    db = Database(engine, ledger=Ledger(store_results=False))
    run: Any = db.run
    key = f"k-{secrets.token_hex(4)}"
    await run(_insert(table), "first", key=key)
    with pytest.raises(AlreadyApplied) as info:
        await run(_insert(table), "second", key=key)
    assert info.value.key == key
    assert await _rows(engine, table) == ["first"]


@needs_run_key
@pytest.mark.parametrize("cut", ["before", "after"])
async def test_a_lost_commit_with_a_key_is_settled(
    engine: AsyncEngine, table: str, cut: str
) -> None:
    url = engine.url
    async with relay_to(url.host or "127.0.0.1", url.port or 5432) as relay:
        proxied = create_async_engine(url.set(host="127.0.0.1", port=relay.port), pool_size=2)
        try:
            db = Database(proxied, breaker=None)
            run: Any = db.run
            calls = 0

            async def body(session: AsyncSession, op: str) -> dict[str, str]:
                nonlocal calls
                calls += 1
                if calls == 1:
                    relay.cut_commit = cut  # type: ignore[assignment]
                return await _insert(table)(session, op)  # type: ignore[no-any-return]

            assert await run(body, "op", key=f"cut-{secrets.token_hex(4)}") == {"op": "op"}
        finally:
            await proxied.dispose()
    assert await _rows(engine, table) == ["op"]
    assert calls == (2 if cut == "before" else 1)


@needs_transaction_key
async def test_transaction_block_with_an_applied_key_raises_and_rolls_back(
    engine: AsyncEngine, table: str
) -> None:
    db = Database(engine)
    key = f"k-{secrets.token_hex(4)}"
    transaction: Any = db.transaction
    async with transaction(key=key) as session:
        await session.execute(text(f"INSERT INTO {table} VALUES ('first')"))
    with pytest.raises(AlreadyApplied):
        async with transaction(key=key) as session:
            await session.execute(text(f"INSERT INTO {table} VALUES ('second')"))
    assert await _rows(engine, table) == ["first"]


@needs_transactional_key
async def test_transactional_key_from_the_call_arguments(engine: AsyncEngine, table: str) -> None:
    db = Database(engine)
    decorate: Any = transactional

    async def _ship(op: str, *, session: AsyncSession = INJECTED) -> str:
        await session.execute(text(f"INSERT INTO {table} VALUES (:op)"), {"op": op})
        return op

    ship: Callable[[str], Any] = decorate(database=db, key=lambda op, **_: f"ship:{table}:{op}")(
        _ship
    )

    assert await ship("a") == "a"
    assert await ship("a") == "a"  # replayed
    assert await ship("b") == "b"
    assert sorted(await _rows(engine, table)) == ["a", "b"]


@needs_run_key
async def test_commit_status_by_key(engine: AsyncEngine, table: str) -> None:
    """``db.commit_status(key=exc.key)`` answers a keyed CommitOutcomeUnknown as the xid
    form answers an xid: committed when the ledger holds the key, aborted otherwise."""
    db = Database(engine)
    run: Any = db.run
    key = f"k-{secrets.token_hex(4)}"
    await run(_insert(table), "first", key=key)
    assert await db.commit_status(key=key) == "committed"
    assert await db.commit_status(key=f"never-{secrets.token_hex(4)}") == "aborted"
    with pytest.raises(ConfigurationError, match=r"commit_status\(xid=7\).*key="):
        await db.commit_status(7, key=key)
    with pytest.raises(ConfigurationError, match="commit_status"):
        await db.commit_status()


async def test_run_once_is_run_with_a_key_that_type_checkers_see(
    engine: AsyncEngine, table: str
) -> None:
    db = Database(engine)
    key = f"k-{secrets.token_hex(4)}"
    first: dict[str, str] = await db.run_once(key, _insert(table), "first")
    assert first == {"op": "first"}
    assert await db.run_once(key, _insert(table), "second") == {"op": "first"}
    assert await _rows(engine, table) == ["first"]
    with pytest.raises(ConfigurationError, match="operation key"):
        await db.run_once(None, _insert(table), "third")  # type: ignore[arg-type]
