"""A tiny TCP relay the test controls: forward, or black-hole (accept bytes, answer nothing).

Used before/independently of the fault proxy to make a live-but-silent peer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Literal

CutMode = Literal["before", "after"]


class Relay:
    """Forwards 127.0.0.1:<port> to an upstream until :attr:`black_hole` is set."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.black_hole = asyncio.Event()
        #: Cut the link at the next COMMIT the client sends: "before" drops the COMMIT (the
        #: server never commits), "after" forwards it and drops the server's answer (the
        #: server committed, the client never hears). Reset to None after one cut.
        self.cut_commit: CutMode | None = None
        #: After the cut, black-hole everything (new connections included).
        self.black_hole_after_cut = False
        self.cuts = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        client_side: bool,
        pair: list[asyncio.StreamWriter],
        state: dict[str, bool],
    ) -> None:
        try:
            while data := await reader.read(65536):
                if self.black_hole.is_set():
                    continue  # swallow: the peer stays connected and silent
                if client_side and self.cut_commit is not None and b"COMMIT" in data.upper():
                    mode, self.cut_commit = self.cut_commit, None
                    self.cuts += 1
                    if mode == "before":
                        break  # never forwarded: close both sides
                    state["drop_next_reply"] = True
                if not client_side and state.get("drop_next_reply"):
                    if self.black_hole_after_cut:
                        self.black_hole.set()
                    break  # the server answered the COMMIT: drop it and cut the client
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            for w in pair:
                w.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        if self.black_hole.is_set():
            # accept and never answer
            with contextlib.suppress(ConnectionError, OSError):
                while await reader.read(65536):
                    pass
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        pair = [writer, up_writer]
        state: dict[str, bool] = {}
        for task in (
            asyncio.create_task(
                self._pipe(reader, up_writer, client_side=True, pair=pair, state=state)
            ),
            asyncio.create_task(
                self._pipe(up_reader, writer, client_side=False, pair=pair, state=state)
            ),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)
        await asyncio.wait_for(self._server.wait_closed(), 5)


@contextlib.asynccontextmanager
async def relay_to(host: str, port: int) -> AsyncIterator[Relay]:
    """``async with relay_to("127.0.0.1", 5432) as r:`` then connect to ``r.port``."""
    async with Relay(host, port) as relay:
        yield relay
