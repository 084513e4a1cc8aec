"""Per-connection pipelines: one accepted client, its upstream connection, two streams.

Each stream has a reader task. With no toxic active on the stream the reader writes straight to
the destination (the fast path). Otherwise chunks are queued with their read time and a
processor task runs them through the stream's active toxics in order (each toxic is an
``Effect`` of ``_effects``). Every wait inside a toxic is interruptible: when a toxic is added,
updated or removed the processor restarts the current chunk (minus the bytes already written)
on the new chain, so changes act on open connections at once and removing a latency toxic
flushes held data immediately.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Mapping

from resilient_db.toxiproxy._effects import Closed, CloseMode, Restart, ToxicState
from resilient_db.toxiproxy._toxics import Toxic

__all__ = ["Link"]

_READ_SIZE = 65536
_QUEUE_HIGH = 1 << 20  # bytes queued in a toxic pipeline before the reader pauses


def _wake(waiter: asyncio.Future[bool], changed: bool) -> None:
    if not waiter.done():
        waiter.set_result(changed)


class _Pipe:
    """One direction of a link: reader → [toxics] → destination writer."""

    def __init__(
        self,
        link: Link,
        stream: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.link = link
        self.stream = stream
        self.reader = reader
        self.writer = writer
        self.rng = link.rng
        self.active: dict[str, ToxicState] = {}
        self.chain: list[ToxicState] = []
        self.drawn: dict[str, bool] = {}
        self.queue: deque[tuple[bytes | None, float]] = deque()
        self.queued_bytes = 0
        self.busy = False
        self.written = 0  # bytes of the current chunk already written
        self.changed = False
        self._waiter: asyncio.Future[bool] | None = None
        self.has_data = asyncio.Event()
        self.has_space = asyncio.Event()
        self.has_space.set()
        self.processor: asyncio.Task[None] | None = None

    # -- toxic changes -------------------------------------------------------------------
    def _changed(self) -> None:
        self.changed = True
        if self._waiter is not None:
            _wake(self._waiter, True)

    def _new_state(self, toxic: Toxic) -> ToxicState:
        state = ToxicState(toxic, self, at_accept=self.link.accepted_with(toxic))
        state.effect.start(state)
        return state

    def toxic_added(self, toxic: Toxic) -> None:
        active = toxic.draw(self.link.rng)
        self.drawn[toxic.name] = active
        if active:
            self.active[toxic.name] = self._new_state(toxic)
        self._changed()

    def toxic_updated(self, toxic: Toxic, *, toxicity_changed: bool) -> None:
        state = self.active.get(toxic.name)
        if toxicity_changed:
            active = toxic.draw(self.link.rng)
            self.drawn[toxic.name] = active
            if active and state is None:
                # keep the chain in the proxy's order
                self.active[toxic.name] = state = self._new_state(toxic)
                order = list(self.link.toxics)
                self.active = dict(sorted(self.active.items(), key=lambda i: order.index(i[0])))
            elif not active and state is not None:
                del self.active[toxic.name]
                state.stop()
                state = None
        if state is not None:
            state.effect.changed(state)
        self._changed()

    def toxic_removed(self, toxic: Toxic) -> bool:
        """Forget ``toxic``; True when the removal must close the link (timeout toxic)."""
        self.drawn.pop(toxic.name, None)
        state = self.active.pop(toxic.name, None)
        self._changed()
        if state is None:
            return False
        state.stop(removed=True)
        return state.effect.closes_on_removal

    def stop(self) -> None:
        for state in self.active.values():
            state.stop()

    # -- reading -------------------------------------------------------------------------
    async def read_loop(self) -> None:
        link = self.link
        try:
            while not link.closed:
                data = await self.reader.read(_READ_SIZE)
                if not data:
                    if not self.active and not self.queue and not self.busy:
                        link.close("graceful")
                        return
                    self._enqueue(None)
                    return
                if not self.active and not self.queue and not self.busy:
                    self.writer.write(data)
                    await self.writer.drain()
                else:
                    self._enqueue(data)
                    if self.queued_bytes > _QUEUE_HIGH:
                        self.has_space.clear()
                        await self.has_space.wait()
        except (OSError, RuntimeError):
            link.close("abort")

    def _enqueue(self, data: bytes | None) -> None:
        self.queue.append((data, time.monotonic()))
        if data is not None:
            self.queued_bytes += len(data)
        self.has_data.set()
        if self.processor is None:
            self.processor = asyncio.get_running_loop().create_task(self.process_loop())
            self.link.tasks.add(self.processor)

    # -- processing ----------------------------------------------------------------------
    async def process_loop(self) -> None:
        try:
            while True:
                while not self.queue:
                    self.busy = False
                    self.has_data.clear()
                    await self.has_data.wait()
                self.busy = True
                original, ts = self.queue[0]
                self.written = 0
                while True:
                    self.changed = False
                    self.chain = list(self.active.values())
                    try:
                        if original is None:
                            for state in self.chain:
                                await state.effect.eof(self, state)
                            self.link.close("graceful")
                            return
                        await self.forward(0, original[self.written :], ts)
                        break
                    except Restart:
                        continue
                self.queue.popleft()
                self.queued_bytes -= len(original)
                if self.queued_bytes <= _QUEUE_HIGH // 2:
                    self.has_space.set()
        except Closed:
            return
        except (OSError, RuntimeError):
            self.link.close("abort")

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (``inf``: until a change); :class:`Restart` when the chain changes."""
        if self.changed:
            raise Restart
        if seconds <= 0:
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiter = waiter
        handle = None if seconds == math.inf else loop.call_later(seconds, _wake, waiter, False)
        try:
            changed = await waiter
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()
        if changed:
            raise Restart

    async def _write(self, data: bytes) -> None:
        if self.link.closed:
            raise Closed
        if data:
            self.writer.write(data)
            self.written += len(data)
            await self.writer.drain()

    async def forward(self, index: int, data: bytes, ts: float) -> None:
        """Run ``data`` through the current chain from position ``index``, then write it."""
        chain = self.chain
        if index == len(chain):
            await self._write(data)
            return
        state = chain[index]
        await state.effect.run(self, state, index, data, ts)

    def close_link(self, mode: CloseMode) -> None:
        self.link.close(mode)


class Link:
    """One accepted client connection and its upstream connection."""

    def __init__(
        self,
        toxics: Mapping[str, Toxic],
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        rng: random.Random,
    ) -> None:
        #: The proxy's toxics, live (their order is the chain order).
        self.toxics = toxics
        self._initial: tuple[Toxic, ...] = ()
        self.rng = rng
        self.client_reader = client_reader
        self.client_writer = client_writer
        self.upstream_writer: asyncio.StreamWriter | None = None
        self.pipes: dict[str, _Pipe] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        self.on_close: Callable[[Link], None] | None = None

    def start(
        self, upstream_reader: asyncio.StreamReader, upstream_writer: asyncio.StreamWriter
    ) -> None:
        """Start both pipelines with the proxy's current toxics."""
        self.upstream_writer = upstream_writer
        self.pipes = {
            "upstream": _Pipe(self, "upstream", self.client_reader, upstream_writer),
            "downstream": _Pipe(self, "downstream", upstream_reader, self.client_writer),
        }
        self._initial = tuple(self.toxics.values())
        for toxic in self._initial:
            self.pipes[toxic.direction].toxic_added(toxic)
        loop = asyncio.get_running_loop()
        for pipe in self.pipes.values():
            task = loop.create_task(pipe.read_loop())
            self.tasks.add(task)

    def accepted_with(self, toxic: Toxic) -> bool:
        """Whether ``toxic`` existed when this connection was accepted."""
        return any(t is toxic for t in self._initial)

    def toxic_added(self, toxic: Toxic) -> None:
        """A toxic was added to the proxy."""
        if not self.closed and self.pipes:
            self.pipes[toxic.direction].toxic_added(toxic)

    def toxic_updated(self, toxic: Toxic, *, toxicity_changed: bool) -> None:
        """A toxic of the proxy changed its attributes or toxicity."""
        if not self.closed and self.pipes:
            self.pipes[toxic.direction].toxic_updated(toxic, toxicity_changed=toxicity_changed)

    def toxic_removed(self, toxic: Toxic) -> None:
        """A toxic was removed; a timeout toxic closes the connections it was on."""
        if not self.closed and self.pipes and self.pipes[toxic.direction].toxic_removed(toxic):
            self.close("graceful")

    def close(self, mode: CloseMode = "abort") -> None:
        """Close both sockets: ``graceful`` flushes then FIN, ``reset`` sends an RST."""
        if self.closed:
            return
        self.closed = True
        current = asyncio.current_task()
        for pipe in self.pipes.values():
            pipe.stop()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        writers = [self.client_writer]
        if self.upstream_writer is not None:
            writers.append(self.upstream_writer)
        for writer in writers:
            _close_writer(writer, mode)
        if self.on_close is not None:
            self.on_close(self)

    def abort_transports(self) -> None:
        """Force-close both sockets now (server shutdown), even if a graceful close waits."""
        for writer in (self.client_writer, self.upstream_writer):
            if writer is not None:
                writer.transport.abort()


def _close_writer(writer: asyncio.StreamWriter, mode: CloseMode) -> None:
    transport = writer.transport
    if mode == "graceful":
        writer.close()
        return
    if mode == "reset":
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
