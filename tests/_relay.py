"""A tiny PostgreSQL-protocol-aware TCP relay the tests control.

It forwards whole protocol messages, so it can act on exactly the right one:

* :attr:`Relay.black_hole`: accept bytes, answer nothing (a live-but-silent peer);
* :attr:`Relay.cut_commit`: cut the link at the next COMMIT the client sends — ``"before"``
  drops the COMMIT (the server never sees it: rolled back), ``"after"`` forwards it and drops
  the server's CommandComplete for it (committed, but the client never hears it).

Used before, and independently of, the fault proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from typing import Literal

CutMode = Literal["before", "after"]

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104


def is_commit(kind: bytes, body: bytes) -> bool:
    """Whether a frontend message runs COMMIT (simple Query, or Parse of the extended one)."""
    if kind == b"Q":
        query = body
    elif kind == b"P":  # Parse: statement name \0 query \0 ...
        parts = body.split(b"\0", 2)
        query = parts[1] if len(parts) > 1 else b""
    else:
        return False
    return query.lstrip().upper().startswith(b"COMMIT")


class Relay:
    """Forwards 127.0.0.1:<port> to an upstream PostgreSQL, under the test's control."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.black_hole = asyncio.Event()
        #: Cut the link at the next COMMIT ("before" / "after"); reset to None after one cut.
        self.cut_commit: CutMode | None = None
        #: After the cut, black-hole everything (new connections included).
        self.black_hole_after_cut = False
        self.cuts = 0
        self.cut = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        client: bool,
        state: dict[str, bool],
    ) -> None:
        while True:
            head = await reader.readexactly(5)
            kind, length = head[:1], struct.unpack("!i", head[1:])[0]
            body = await reader.readexactly(length - 4)
            if self.black_hole.is_set():
                continue  # swallow: the peer stays connected and silent
            if client and self.cut_commit is not None and is_commit(kind, body):
                mode, self.cut_commit = self.cut_commit, None
                self.cuts += 1
                self.cut.set()
                if mode == "before":
                    return  # never forwarded: both sides are closed
                state["commit_sent"] = True
            if (
                not client
                and state.get("commit_sent")
                and kind == b"C"
                and body.startswith(b"COMMIT\0")
            ):
                if self.black_hole_after_cut:
                    self.black_hole.set()
                return  # the server committed: drop its answer and cut the client
            writer.write(head + body)
            await writer.drain()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self.black_hole.is_set():
                while await reader.read(65536):  # accept and never answer
                    pass
                return
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            self._writers.add(up_writer)
            # Startup: SSL/GSS negotiation requests get a single unframed byte back.
            while True:
                head = await reader.readexactly(8)
                length, code = struct.unpack("!ii", head)
                up_writer.write(head + await reader.readexactly(length - 8))
                if code not in (SSL_REQUEST, GSSENC_REQUEST):
                    break
                writer.write(await up_reader.readexactly(1))
            state: dict[str, bool] = {}
            pumps = [
                asyncio.ensure_future(self._pump(reader, up_writer, client=True, state=state)),
                asyncio.ensure_future(self._pump(up_reader, writer, client=False, state=state)),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
            up_writer.transport.abort()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()
            self._tasks.discard(task)

    async def __aenter__(self) -> Relay:
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


@contextlib.asynccontextmanager
async def relay_to(host: str, port: int) -> AsyncIterator[Relay]:
    """``async with relay_to("127.0.0.1", 5432) as r:`` then connect to ``r.port``."""
    async with Relay(host, port) as relay:
        yield relay
