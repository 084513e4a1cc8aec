"""Robustness: many connections, vanishing clients, shutdown with connections open, CLI."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import subprocess
import sys
import time

import asyncpg
import pytest

from resilient_db.toxiproxy import ToxiproxyServer
from resilient_db.toxiproxy._cli import register
from tests._toxiproxy_support import (
    Upstream,
    call,
    connect,
    embedded,
    read_all,
    read_exactly,
    wait_for,
)


async def test_200_concurrent_connections() -> None:
    async with embedded() as (server, client), Upstream() as echo:
        proxy = await client.create_proxy(name="p", upstream=echo.address)

        async def one(i: int) -> None:
            async with connect(proxy.listen_port) as (reader, writer):
                payload = f"{i:06d}".encode() * 500
                writer.write(payload)
                assert await read_exactly(reader, len(payload), timeout=20) == payload

        async with asyncio.timeout(60):
            await asyncio.gather(*(one(i) for i in range(200)))
        await wait_for(lambda: not server.proxies["p"].links)


async def test_concurrent_asyncpg_connections(pg_dsn: str) -> None:
    async with embedded() as (_, client):
        port = int(pg_dsn.rsplit("/", 1)[0].rpartition(":")[2])
        proxy = await client.create_proxy(name="pg", upstream=f"127.0.0.1:{port}")
        await client.add_toxic("pg", type="latency", attributes={"latency": 20, "jitter": 5})
        db = pg_dsn.rsplit("/", 1)[1]

        async def one(i: int) -> None:
            conn = await asyncpg.connect(
                host="127.0.0.1",
                port=proxy.listen_port,
                user="postgres",
                database=db,
                timeout=10,
                ssl=False,
            )
            try:
                assert await conn.fetchval("SELECT $1::int * 2", i, timeout=10) == i * 2
            finally:
                await conn.close(timeout=5)

        async with asyncio.timeout(60):
            await asyncio.gather(*(one(i) for i in range(20)))


async def test_client_vanishing_mid_stream() -> None:
    upstream_done = asyncio.Event()

    async def firehose(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                writer.write(b"z" * 65536)
                await writer.drain()
        except OSError:
            pass
        finally:
            upstream_done.set()

    async with embedded() as (server, client), Upstream(firehose) as upstream:
        proxy = await client.create_proxy(name="p", upstream=upstream.address)
        for toxics in ([], [{"type": "latency", "attributes": {"latency": 5}}]):
            upstream_done.clear()
            for t in toxics:
                await client.add_toxic("p", type=str(t["type"]), attributes=t["attributes"])  # type: ignore[arg-type]
            async with connect(proxy.listen_port) as (reader, writer):
                await read_exactly(reader, 100_000)
                writer.transport.abort()  # vanish (RST) mid-stream
            async with asyncio.timeout(5):
                await upstream_done.wait()  # the proxy closed the upstream side too
            await wait_for(lambda: not server.proxies["p"].links)


async def test_shutdown_with_connections_open_leaves_nothing_behind() -> None:
    before = set(asyncio.all_tasks())
    async with Upstream() as echo:
        server = ToxiproxyServer(port=0)
        await server.start()
        from resilient_db.toxiproxy import AsyncToxiproxyClient

        client = AsyncToxiproxyClient(server.url)
        plain = await client.create_proxy(name="plain", upstream=echo.address)
        slow = await client.create_proxy(name="slow", upstream=echo.address)
        hole = await client.create_proxy(name="hole", upstream=echo.address)
        await client.add_toxic("slow", type="latency", attributes={"latency": 60_000})
        await client.add_toxic("hole", type="timeout", attributes={"timeout": 0})
        conns = []
        for info in (plain, slow, hole):
            for _ in range(3):
                reader, writer = await asyncio.open_connection("127.0.0.1", info.listen_port)
                writer.write(b"data in flight")
                conns.append((reader, writer))
        await wait_for(lambda: sum(len(p.links) for p in server.proxies.values()) == 9)
        await server.aclose()
        for reader, writer in conns:
            with contextlib.suppress(ConnectionResetError):
                await read_all(reader, timeout=5)
            writer.close()
            await writer.wait_closed()
        for info in (plain, slow, hole):  # ports released
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", info.listen_port)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", server.port)
    await asyncio.sleep(0)
    leftover = set(asyncio.all_tasks()) - before - {asyncio.current_task()}
    assert not leftover, leftover
    gc.collect()  # a leaked socket would raise ResourceWarning (an error in this suite)


def test_threaded_server_shutdown_with_open_connections() -> None:
    import socket

    with ToxiproxyServer.in_thread() as server:
        status, proxy = call(
            server.url, "POST", "/proxies", {"name": "p", "upstream": f"127.0.0.1:{server.port}"}
        )
        assert status == 201
        port = int(proxy["listen"].rpartition(":")[2])
        socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(5)]
    try:
        for sock in socks:
            sock.settimeout(5)
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(10) in (b"", b"H")  # EOF (or the start of an HTTP answer)
    finally:
        for sock in socks:
            sock.close()
    gc.collect()


def test_cli_register_and_run(tmp_path: object) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="resilient-db")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["toxiproxy", "--port", "0", "--config", "x.json"])
    assert (args.host, args.port, args.config, args.strict) == ("127.0.0.1", 0, "x.json", False)
    assert parser.parse_args(["toxiproxy", "--strict"]).strict is True
    assert callable(args.func)
    with pytest.raises(SystemExit):
        parser.parse_args(["toxiproxy", "--port", "70000"])


def test_cli_process_serves_and_stops() -> None:
    env = dict(os.environ, PYTHONWARNINGS="error")
    proc = subprocess.Popen(
        [sys.executable, "-m", "resilient_db", "toxiproxy", "--port", "0", "--strict"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 20
        line = ""
        while "listening on" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
        assert "listening on" in line, (line, proc.stderr.read() if proc.stderr else "")
        url = line.rsplit(" ", 1)[1].strip()
        assert call(url, "GET", "/version")[0] == 200
        status, _ = call(url, "POST", "/proxies", {"name": "p", "upstream": "no port"})
        assert status == 400  # --strict
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
