"""Behaviour of every toxic, through raw sockets and a real PostgreSQL connection (asyncpg)."""

from __future__ import annotations

import asyncio
import errno
import statistics
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from resilient_db.toxiproxy import AsyncToxiproxyClient, ProxyInfo, ToxiproxyServer
from tests._toxiproxy_support import (
    TCP_ESTABLISHED,
    Upstream,
    connect,
    embedded,
    read_all,
    read_exactly,
    tcp_state,
    wait_for,
)


@pytest.fixture
async def tp() -> AsyncIterator[tuple[ToxiproxyServer, AsyncToxiproxyClient]]:
    async with embedded(seed=1234) as pair:
        yield pair


@pytest.fixture
async def echo() -> AsyncIterator[Upstream]:
    async with Upstream() as upstream:
        yield upstream


async def _proxy(client: AsyncToxiproxyClient, upstream: str, name: str = "p") -> ProxyInfo:
    return await client.create_proxy(name=name, upstream=upstream)


async def _round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
    start = time.perf_counter()
    writer.write(b"ping")
    assert await read_exactly(reader, 4) == b"ping"
    return time.perf_counter() - start


def _pg_port(pg_dsn: str) -> int:
    return int(pg_dsn.rsplit("/", 1)[0].rpartition(":")[2])


async def _pg_connect(pg_dsn: str, port: int) -> asyncpg.Connection:
    db = pg_dsn.rsplit("/", 1)[1]
    return await asyncpg.connect(
        host="127.0.0.1", port=port, user="postgres", database=db, timeout=5, ssl=False
    )


async def test_noop_passes_data(
    tp: tuple[ToxiproxyServer, AsyncToxiproxyClient], echo: Upstream
) -> None:
    _, client = tp
    proxy = await _proxy(client, echo.address)
    await client.add_toxic("p", type="noop")
    await client.add_toxic("p", type="noop", stream="upstream")
    async with connect(proxy.listen_port) as (reader, writer):
        payload = bytes(range(256)) * 1000
        writer.write(payload)
        assert await read_exactly(reader, len(payload)) == payload


async def test_latency_on_warm_asyncpg_statement(
    tp: tuple[ToxiproxyServer, AsyncToxiproxyClient], pg_dsn: str
) -> None:
    _, client = tp
    proxy = await _proxy(client, f"127.0.0.1:{_pg_port(pg_dsn)}")
    conn = await _pg_connect(pg_dsn, proxy.listen_port)
    try:
        stmt = await conn.prepare("SELECT 1")

        async def timed() -> float:
            start = time.perf_counter()
            async with asyncio.timeout(5):
                assert await stmt.fetchval() == 1
            return time.perf_counter() - start

        base = statistics.median([await timed() for _ in range(5)])
        await client.add_toxic("p", type="latency", attributes={"latency": 100})  # open conn
        slow = statistics.median([await timed() for _ in range(3)])
        assert 0.1 <= slow - base < 0.5, (base, slow)  # generous upper bound: a loaded CI
        await client.remove_toxic("p", "latency_downstream")
        assert min([await timed() for _ in range(3)]) < 0.09  # the 100 ms are gone
    finally:
        await conn.close(timeout=5)


async def test_latency_is_not_cumulative_and_removal_flushes(
    tp: tuple[ToxiproxyServer, AsyncToxiproxyClient],
) -> None:
    dripped = asyncio.Event()

    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(2)
        for i in range(5):
            writer.write(bytes([i]))
            await writer.drain()
            dripped.set()
            await asyncio.sleep(0.02)  # pacing the drip, not waiting (bounded)
        await reader.read()

    _, client = tp
    async with Upstream(drip) as upstream:
        proxy = await _proxy(client, upstream.address)
        await client.add_toxic("p", type="latency", attributes={"latency": 150})
        async with connect(proxy.listen_port) as (reader, writer):
            start = time.perf_counter()
            writer.write(b"go")
            assert await read_exactly(reader, 5) == bytes(range(5))
            elapsed = time.perf_counter() - start
            # 150 ms + about 80 ms of dripping; 5 x 150 ms if it were cumulative
            assert 0.15 <= elapsed < 0.5, elapsed

        await client.update_toxic("p", "latency_downstream", attributes={"latency": 10_000})
        async with connect(proxy.listen_port) as (reader, writer):
            dripped.clear()
            writer.write(b"go")
            async with asyncio.timeout(2):  # the first bytes are on their way into the toxic
                await dripped.wait()
            start = time.perf_counter()
            await client.remove_toxic("p", "latency_downstream")
            assert await read_exactly(reader, 5, timeout=2) == bytes(range(5))
            assert time.perf_counter() - start < 1.0


async def test_latency_jitter_bounds(
    tp: tuple[ToxiproxyServer, AsyncToxiproxyClient], echo: Upstream
) -> None:
    _, client = tp
    proxy = await _proxy(client, echo.address)
    await client.add_toxic("p", type="latency", attributes={"latency": 60, "jitter": 40})
    async with connect(proxy.listen_port) as (reader, writer):
        times = [await _round_trip(reader, writer) for _ in range(8)]
    assert all(0.018 <= t < 0.2 for t in times), times
    assert max(times) - min(times) > 0.005  # jitter varies per chunk


async def test_bandwidth_paces(tp: tuple[ToxiproxyServer, AsyncToxiproxyClient]) -> None:
    size = 60_000

    async def blob(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(1)
        writer.write(b"x" * size)
        await writer.drain()
        await reader.read()

    _, client = tp
    async with Upstream(blob) as upstream:
        proxy = await _proxy(client, upstream.address)
        await client.add_toxic("p", type="bandwidth", attributes={"rate": 200})  # 200 KB/s
        async with connect(proxy.listen_port) as (reader, writer):
            start = time.perf_counter()
            writer.write(b"g")
            assert len(await read_exactly(reader, size)) == size
            elapsed = time.perf_counter() - start
    assert 0.2 <= elapsed < 0.8, elapsed  # 60 KB at 200 KB/s = 0.3 s


async def test_slow_close_delays_the_close(
    tp: tuple[ToxiproxyServer, AsyncToxiproxyClient],
) -> None:
    async def say_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(1)
        writer.write(b"bye")
        await writer.drain()

    _, client = tp
    async with Upstream(say_and_close) as upstream:
        proxy = await _proxy(client, upstream.address)
        await client.add_toxic("p", type="slow_close", attributes={"delay": 200})
        async with connect(proxy.listen_port) as (reader, writer):
            start = time.perf_counter()
            writer.write(b"g")
            assert await read_exactly(reader, 3) == b"bye"
            fast = time.perf_counter() - start
            assert await read_all(reader) == b""
            closed = time.perf_counter() - start
    assert fast < 0.1
    assert 0.2 <= closed < 0.6, closed


async def test_timeout_closes_after_idle(
    tp: tuple[ToxiproxyServer, AsyncToxiproxyClient], echo: Upstream
) -> None:
    _, client = tp
    proxy = await _proxy(client, echo.address)
    await client.add_toxic("p", type="timeout", stream="upstream", attributes={"timeout": 150})
    async with connect(proxy.listen_port) as (reader, writer):
        start = time.perf_counter()
        writer.write(b"dropped")
        assert await read_all(reader) == b""  # nothing came back, then closed
        assert 0.14 <= time.perf_counter() - start < 0.6


async def test_black_hole_raw_socket(
    tp: tuple[ToxiproxyServer, AsyncToxiproxyClient], echo: Upstream
) -> None:
    _, client = tp
    proxy = await _proxy(client, echo.address)
    async with connect(proxy.listen_port) as (reader, writer):
        await _round_trip(reader, writer)
        await client.add_toxic("p", type="timeout", attributes={"timeout": 0})
        writer.write(b"hello?")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await reader.read(1)
        assert tcp_state(writer) == TCP_ESTABLISHED  # silent, not closed
        await client.remove_toxic("p", "timeout_downstream")  # removal closes it
        assert await read_all(reader, timeout=2) == b""


async def test_black_hole_asyncpg_hangs_until_client_timeout(
    tp: tuple[ToxiproxyServer, AsyncToxiproxyClient], pg_dsn: str
) -> None:
    _, client = tp
    proxy = await _proxy(client, f"127.0.0.1:{_pg_port(pg_dsn)}")
    conn = await _pg_connect(pg_dsn, proxy.listen_port)
    try:
        assert await conn.fetchval("SELECT 1") == 1
        await client.add_toxic(
            "p", type="timeout", name="bh_up", stream="upstream", attributes={"timeout": 0}
        )
        await client.add_toxic("p", type="timeout", name="bh_down", attributes={"timeout": 0})
        start = time.perf_counter()
        with pytest.raises(TimeoutError):
            await conn.fetchval("SELECT 1", timeout=0.3)
        assert 0.29 <= time.perf_counter() - start < 1.0
        transport = conn._transport  # the driver's socket is still ESTABLISHED
        sock = transport.get_extra_info("socket")
        import socket as socket_module

        assert (
            sock.getsockopt(socket_module.IPPROTO_TCP, socket_module.TCP_INFO, 8)[0]
            == TCP_ESTABLISHED
        )
    finally:
        conn.terminate()


async def test_reset_peer_gives_econnreset(
    tp: tuple[ToxiproxyServer, AsyncToxiproxyClient], echo: Upstream
) -> None:
    _, client = tp
    proxy = await _proxy(client, echo.address)
    await client.add_toxic("p", type="reset_peer", attributes={"timeout": 50})
    async with connect(proxy.listen_port) as (reader, writer):
        writer.write(b"x")
        start = time.perf_counter()
        with pytest.raises(ConnectionResetError) as info:
            async with asyncio.timeout(2):
                await reader.read(10)
        assert info.value.errno == errno.ECONNRESET
        assert time.perf_counter() - start >= 0.04


async def test_reset_peer_removed_during_its_wait_still_resets(
    tp: tuple[ToxiproxyServer, AsyncToxiproxyClient], echo: Upstream
) -> None:
    """As the reference: the first chunk is swallowed and the reset is committed; removing
    the toxic during the wait must not leave the connection hanging with a lost chunk."""
    _, client = tp
    proxy = await _proxy(client, echo.address)
    await client.add_toxic("p", type="reset_peer", name="rp", attributes={"timeout": 200})
    async with connect(proxy.listen_port) as (reader, writer):
        writer.write(b"x")
        await writer.drain()
        await asyncio.sleep(0.1)  # bounded: let the proxy read the chunk first
        await client.remove_toxic("p", "rp")
        with pytest.raises(ConnectionResetError):
            async with asyncio.timeout(2):
                await reader.read(10)


async def test_reset_peer_idle_connection_is_not_reset(
    tp: tuple[ToxiproxyServer, AsyncToxiproxyClient], echo: Upstream
) -> None:
    _, client = tp
    proxy = await _proxy(client, echo.address)
    await client.add_toxic("p", type="reset_peer", attributes={"timeout": 0})
    async with connect(proxy.listen_port) as (reader, writer):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await reader.read(1)
        assert tcp_state(writer) == TCP_ESTABLISHED


async def test_reset_peer_asyncpg(
    tp: tuple[ToxiproxyServer, AsyncToxiproxyClient], pg_dsn: str
) -> None:
    _, client = tp
    proxy = await _proxy(client, f"127.0.0.1:{_pg_port(pg_dsn)}")
    conn = await _pg_connect(pg_dsn, proxy.listen_port)
    try:
        await client.add_toxic("p", type="reset_peer", stream="upstream", attributes={"timeout": 0})
        with pytest.raises((ConnectionResetError, asyncpg.exceptions.ConnectionDoesNotExistError)):
            async with asyncio.timeout(5):
                await conn.fetchval("SELECT 1")
    finally:
        conn.terminate()


async def test_slicer_keeps_data_intact(
    tp: tuple[ToxiproxyServer, AsyncToxiproxyClient], echo: Upstream, pg_dsn: str
) -> None:
    _, client = tp
    proxy = await _proxy(client, echo.address)
    await client.add_toxic(
        "p", type="slicer", attributes={"average_size": 100, "size_variation": 50, "delay": 1000}
    )
    async with connect(proxy.listen_port) as (reader, writer):
        payload = bytes(range(256)) * 20  # 5120 bytes → about 51 pieces, 1 ms apart
        start = time.perf_counter()
        writer.write(payload)
        assert await read_exactly(reader, len(payload)) == payload
        assert time.perf_counter() - start >= 0.03
    pg = await _proxy(client, f"127.0.0.1:{_pg_port(pg_dsn)}", name="pg")
    await client.add_toxic("pg", type="slicer", attributes={"average_size": 3, "size_variation": 2})
    conn = await _pg_connect(pg_dsn, pg.listen_port)
    try:
        assert await conn.fetchval("SELECT repeat('ab', 500)", timeout=10) == "ab" * 500
    finally:
        await conn.close(timeout=5)


async def test_limit_data_passes_exactly_n_bytes(
    tp: tuple[ToxiproxyServer, AsyncToxiproxyClient],
) -> None:
    async def firehose(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(1)
        for _ in range(50):
            writer.write(b"y" * 10_000)
            await writer.drain()
        await reader.read()

    _, client = tp
    async with Upstream(firehose) as upstream:
        proxy = await _proxy(client, upstream.address)
        await client.add_toxic("p", type="limit_data", attributes={"bytes": 12_345})
        for _ in range(2):  # per connection
            async with connect(proxy.listen_port) as (reader, writer):
                writer.write(b"g")
                assert len(await read_all(reader)) == 12_345
        await client.update_toxic("p", "limit_data_downstream", attributes={"bytes": 0})
        async with connect(proxy.listen_port) as (reader, writer):
            writer.write(b"g")
            assert await read_all(reader) == b""


async def test_down_refuses_and_reenables_same_port(
    tp: tuple[ToxiproxyServer, AsyncToxiproxyClient], echo: Upstream
) -> None:
    _, client = tp
    proxy = await _proxy(client, echo.address)
    async with connect(proxy.listen_port) as (reader, writer):
        await _round_trip(reader, writer)
        await client.disable("p")
        assert await read_all(reader) == b""  # open connection dropped
    with pytest.raises(ConnectionRefusedError) as info:
        await asyncio.open_connection("127.0.0.1", proxy.listen_port)
    assert info.value.errno == errno.ECONNREFUSED
    again = await client.enable("p")
    assert again.listen == proxy.listen
    async with connect(proxy.listen_port) as (reader, writer):
        await _round_trip(reader, writer)


async def test_upstream_change_drops_open_connections(
    tp: tuple[ToxiproxyServer, AsyncToxiproxyClient], echo: Upstream
) -> None:
    async def shout(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(100):
            writer.write(data.upper())
            await writer.drain()

    _, client = tp
    proxy = await _proxy(client, echo.address)
    async with Upstream(shout) as other, connect(proxy.listen_port) as (reader, writer):
        await _round_trip(reader, writer)
        await client.set_upstream("p", other.address)
        assert await read_all(reader) == b""
        async with connect(proxy.listen_port) as (reader2, writer2):
            writer2.write(b"abc")
            assert await read_exactly(reader2, 3) == b"ABC"


async def test_failed_dial_closes_the_client(
    tp: tuple[ToxiproxyServer, AsyncToxiproxyClient],
) -> None:
    _, client = tp
    async with Upstream() as gone:
        address = gone.address
    proxy = await _proxy(client, address)  # nothing listens there any more
    async with connect(proxy.listen_port) as (reader, _):
        assert await read_all(reader) == b""  # connect succeeded, then EOF


async def test_toxicity_drawn_once_per_connection(
    tp: tuple[ToxiproxyServer, AsyncToxiproxyClient], echo: Upstream
) -> None:
    _, client = tp
    proxy = await _proxy(client, echo.address)
    await client.add_toxic("p", type="latency", toxicity=0.5, attributes={"latency": 60})
    slow = 0
    for _ in range(16):
        async with connect(proxy.listen_port) as (reader, writer):
            first, second = await _round_trip(reader, writer), await _round_trip(reader, writer)
            assert (first > 0.05) == (second > 0.05), (first, second)
            slow += first > 0.05
    assert 1 <= slow <= 15, slow

    await client.update_toxic("p", "latency_downstream", toxicity=0.0)
    async with connect(proxy.listen_port) as (reader, writer):
        assert await _round_trip(reader, writer) < 0.05


async def test_toxic_added_to_open_connection_and_timeout_removal_closes_idle(
    tp: tuple[ToxiproxyServer, AsyncToxiproxyClient], echo: Upstream
) -> None:
    server, client = tp
    proxy = await _proxy(client, echo.address)
    async with connect(proxy.listen_port) as (reader, writer):
        await _round_trip(reader, writer)
        await client.add_toxic("p", type="timeout", attributes={"timeout": 0})
        await client.remove_toxic("p", "timeout_downstream")
        assert await read_all(reader) == b""
    await wait_for(lambda: not server.proxies["p"].links)
