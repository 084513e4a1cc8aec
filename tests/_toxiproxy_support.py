"""Helpers for the toxiproxy tests: echo/sink upstreams, raw HTTP calls, socket state."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from resilient_db.toxiproxy import AsyncToxiproxyClient, ToxiproxyServer

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def exchange(
    url: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One HTTP request: ``(status, response headers, raw body)``."""
    host, _, port = url.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        payload = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        sent = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=payload, headers=sent)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def decode(data: bytes) -> Any:
    """A body as JSON, or as text when it is not JSON (the reference's plain-text 404)."""
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return data.decode("utf-8", "replace").strip()


def call(url: str, method: str, path: str, body: Any = None, *, raw: bytes | None = None) -> Any:
    """One HTTP request: ``(status, decoded JSON, text for a plain-text body, or None)``."""
    status, _, data = exchange(url, method, path, body, raw=raw)
    return status, decode(data)


def create_proxy(
    api: str, name: str, upstream: str = "127.0.0.1:9", **extra: Any
) -> dict[str, Any]:
    """Create proxy ``name`` (listening on a free port) through the raw API; its JSON."""
    body = {"name": name, "listen": "127.0.0.1:0", "upstream": upstream, **extra}
    status, proxy = call(api, "POST", "/proxies", body)
    assert status == 201, proxy
    assert isinstance(proxy, dict)
    return proxy


def listen_port(proxy: dict[str, Any]) -> int:
    """The port a proxy (its API JSON) listens on."""
    return int(str(proxy["listen"]).rpartition(":")[2])


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


class TcpServer:
    """The tests' one TCP server: 127.0.0.1, an ephemeral port, ``handler`` per connection.

    Echo by default. It counts connections, and on exit closes the listener, aborts every
    connection and waits (bounded) for the handlers. A relay or a fake upstream is a handler.
    """

    def __init__(self, handler: Handler = _echo) -> None:
        self.handler = handler
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        self._writers.add(writer)
        try:
            await self.handler(reader, writer)
        finally:
            self._writers.discard(writer)
            writer.transport.abort()
            self._tasks.discard(task)

    async def __aenter__(self) -> TcpServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        await asyncio.wait_for(self._server.wait_closed(), 5)
        await asyncio.sleep(0)


#: The name the toxiproxy tests use for it: the server a proxy forwards to.
Upstream = TcpServer


@contextlib.asynccontextmanager
async def embedded(
    seed: int | None = None,
) -> AsyncIterator[tuple[ToxiproxyServer, AsyncToxiproxyClient]]:
    """An embedded server in this event loop and an async client for it."""
    async with ToxiproxyServer(port=0, seed=seed) as server:
        yield server, AsyncToxiproxyClient(server.url, timeout=10)


@contextlib.asynccontextmanager
async def connect(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A raw client connection to 127.0.0.1:port, aborted on exit."""
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.transport.abort()
        await asyncio.sleep(0)


async def read_all(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Read until EOF (bounded)."""
    chunks = bytearray()
    async with asyncio.timeout(timeout):
        while data := await reader.read(65536):
            chunks += data
    return bytes(chunks)


async def read_exactly(reader: asyncio.StreamReader, n: int, timeout: float = 5.0) -> bytes:
    async with asyncio.timeout(timeout):
        return await reader.readexactly(n)


def tcp_state(writer: asyncio.StreamWriter) -> int:
    """Linux TCP state of the writer's socket (1 = ESTABLISHED)."""
    sock = writer.transport.get_extra_info("socket")
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    return int(info[0])


TCP_ESTABLISHED = 1


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` until true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)  # poll with a deadline
