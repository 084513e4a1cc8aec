"""Connection lost during COMMIT, before and after the server committed: same exception,
so the classifier must say ``commit_unknown`` for both (only the phase tells).

A tiny PostgreSQL-protocol-aware TCP relay, private to this module, sits between the client
and the server and cuts both sides either when the client sends COMMIT (the server never
sees it: rolled back) or when the server's CommandComplete for COMMIT passes (committed, but
the client never hears it). The test checks on the server which of the two really happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import struct
from collections.abc import AsyncIterator, Iterator
from typing import Literal

import asyncpg
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from resilient_db import ErrorKind, Phase, classify

Mode = Literal["before", "after"]
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
WAIT = 20.0


class CommitCutter:
    """Relays one PostgreSQL connection at a time and cuts it around COMMIT."""

    def __init__(self, upstream_port: int, mode: Mode) -> None:
        self.upstream_port = upstream_port
        self.mode = mode
        self.cut = asyncio.Event()
        self._commit_sent = False
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._abort()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    def _abort(self) -> None:
        for w in self._writers:
            w.transport.abort()

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        self._writers.append(c_writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            s_reader, s_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            self._writers.append(s_writer)
            # Startup: SSL/GSS negotiation requests get a single unframed byte back.
            while True:
                head = await c_reader.readexactly(8)
                length, code = struct.unpack("!ii", head)
                body = await c_reader.readexactly(length - 8)
                s_writer.write(head + body)
                if code in (SSL_REQUEST, GSSENC_REQUEST):
                    c_writer.write(await s_reader.readexactly(1))
                    continue
                break
            await asyncio.gather(
                self._pump(c_reader, s_writer, client=True),
                self._pump(s_reader, c_writer, client=False),
            )
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._abort()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, client: bool
    ) -> None:
        while True:
            head = await reader.readexactly(5)
            kind, length = head[:1], struct.unpack("!i", head[1:])[0]
            body = await reader.readexactly(length - 4)
            if client and _is_commit(kind, body):
                if self.mode == "before":
                    self._cut()
                    return
                self._commit_sent = True
            if (
                not client
                and self.mode == "after"
                and self._commit_sent
                and kind == b"C"
                and body.startswith(b"COMMIT\0")
            ):
                self._cut()
                return
            writer.write(head + body)
            await writer.drain()

    def _cut(self) -> None:
        self.cut.set()
        self._abort()


def _is_commit(kind: bytes, body: bytes) -> bool:
    if kind == b"Q":
        query = body
    elif kind == b"P":  # Parse: statement name \0 query \0 ...
        parts = body.split(b"\0", 2)
        query = parts[1] if len(parts) > 1 else b""
    else:
        return False
    return query.lstrip().upper().startswith(b"COMMIT")


@pytest.fixture(scope="module")
def commit_table(pg_dsn: str) -> Iterator[str]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS clf_commit_cut (marker text PRIMARY KEY)")
    yield "clf_commit_cut"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS clf_commit_cut")


@contextlib.asynccontextmanager
async def cutter(pg_dsn: str, mode: Mode) -> AsyncIterator[tuple[CommitCutter, str]]:
    port = int(pg_dsn.rsplit(":", 1)[1].split("/", 1)[0])
    relay = CommitCutter(port, mode)
    relay_port = await relay.start()
    db = pg_dsn.rsplit("/", 1)[1]
    try:
        yield relay, f"postgresql://postgres@127.0.0.1:{relay_port}/{db}"
    finally:
        await relay.close()


async def _write_and_commit(driver: str, dsn: str, marker: str) -> BaseException:
    """Insert ``marker`` and COMMIT through ``driver``; return what COMMIT raised."""
    sql = f"INSERT INTO clf_commit_cut VALUES ('{marker}')"
    if driver == "asyncpg":
        conn = await asyncpg.connect(dsn, ssl=False, timeout=10)
        try:
            tr = conn.transaction()
            await tr.start()
            await conn.execute(sql)
            try:
                await tr.commit()
            except Exception as exc:
                return exc
        finally:
            conn.terminate()
        raise AssertionError("COMMIT did not fail")
    name = driver.removeprefix("sa_")
    args: dict[str, object] = (
        {"ssl": False} if name == "asyncpg" else {"sslmode": "disable", "gssencmode": "disable"}
    )
    engine = create_async_engine(
        dsn.replace("postgresql://", f"postgresql+{name}://", 1), connect_args=args
    )
    try:
        async with engine.connect() as sa:
            await sa.execute(text(sql))
            try:
                await sa.commit()
            except Exception as exc:
                return exc
    finally:
        await engine.dispose()
    raise AssertionError("COMMIT did not fail")


@pytest.mark.parametrize("driver", ["asyncpg", "sa_asyncpg", "sa_psycopg"])
@pytest.mark.parametrize("mode", ["before", "after"])
async def test_connection_lost_during_commit_is_commit_unknown(
    driver: str, mode: Mode, pg_dsn: str, commit_table: str
) -> None:
    marker = f"{driver}-{mode}-{secrets.token_hex(4)}"
    async with asyncio.timeout(WAIT), cutter(pg_dsn, mode) as (relay, dsn):
        exc = await _write_and_commit(driver, dsn, marker)
        assert relay.cut.is_set(), "the relay did not see the COMMIT"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute(
            f"SELECT count(*) FROM {commit_table} WHERE marker = %s", (marker,)
        ).fetchone()
    assert row is not None
    assert row[0] == (1 if mode == "after" else 0), "the cut happened at the wrong moment"

    c = classify(exc, phase=Phase.COMMIT)
    assert (c.kind, c.category) == (ErrorKind.COMMIT_UNKNOWN, "connection_lost"), (c, exc)
    assert c.counts_toward_breaker
    assert c.sqlstate is None  # nothing the server said: the link was cut
    # The same exception outside COMMIT is a plain retryable connection loss.
    assert classify(exc, phase=Phase.STATEMENT).kind is ErrorKind.RETRYABLE
