"""Per-connection pipelines: one accepted client, its upstream connection, two streams.

Each stream has a reader task. With no toxic active on the stream the reader writes straight to
the destination (the fast path). Otherwise chunks are queued with their read time and a
processor task runs them through the stream's active toxics in order. Every wait inside a toxic
is interruptible: when a toxic is added, updated or removed the processor restarts the current
chunk (minus the bytes already written) on the new chain, so changes act on open connections at
once and removing a latency toxic flushes held data immediately.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from resilient_db.toxiproxy._toxics import Toxic

if TYPE_CHECKING:
    from resilient_db.toxiproxy._server import Proxy

__all__ = ["Link"]

_READ_SIZE = 65536
_QUEUE_HIGH = 1 << 20  # bytes queued in a toxic pipeline before the reader pauses
CloseMode = Literal["graceful", "abort", "reset"]


class _Restart(Exception):
    """The toxic chain changed while a chunk was in it."""


class _Closed(Exception):
    """The link was closed by a toxic; stop processing."""


class _ToxicState:
    """One toxic as seen by one stream of one connection (its per-link state)."""

    __slots__ = ("count", "fired", "generation", "next_time", "pipe", "timer", "toxic")

    def __init__(self, toxic: Toxic, pipe: _Pipe) -> None:
        self.toxic = toxic
        self.pipe = pipe
        self.generation = toxic.generation
        self.count = 0  # limit_data: bytes passed so far
        self.fired = False  # reset_peer: first chunk seen
        self.next_time = 0.0  # bandwidth: virtual clock
        self.timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self.toxic.type == "timeout":
            self.restart_idle_timer()

    def restart_idle_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        ms = self.toxic.attributes["timeout"]
        if ms > 0:
            self.timer = asyncio.get_running_loop().call_later(
                ms / 1000, self.pipe.link.close, "graceful"
            )

    def stop(self, *, removed: bool = False) -> None:
        if removed and self.toxic.type == "reset_peer" and self.fired:
            # As the reference: once reset_peer has swallowed its first chunk, the reset is
            # committed (its wait is not interruptible); removing the toxic does not leave a
            # connection with a lost chunk hanging.
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


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
        self.active: dict[str, _ToxicState] = {}
        self.drawn: dict[str, bool] = {}
        self.queue: deque[tuple[bytes | None, float]] = deque()
        self.queued_bytes = 0
        self.busy = False
        self.written = 0  # bytes of the current chunk already written
        self.changed = asyncio.Event()
        self.has_data = asyncio.Event()
        self.has_space = asyncio.Event()
        self.has_space.set()
        self.processor: asyncio.Task[None] | None = None

    # -- toxic changes -------------------------------------------------------------------
    def toxic_added(self, toxic: Toxic) -> None:
        active = toxic.draw(self.link.rng)
        self.drawn[toxic.name] = active
        if active:
            state = _ToxicState(toxic, self)
            self.active[toxic.name] = state
            state.start()
        self.changed.set()

    def toxic_updated(self, toxic: Toxic, *, toxicity_changed: bool) -> None:
        state = self.active.get(toxic.name)
        if toxicity_changed:
            active = toxic.draw(self.link.rng)
            self.drawn[toxic.name] = active
            if active and state is None:
                # keep the chain in the proxy's order
                self.active[toxic.name] = state = _ToxicState(toxic, self)
                order = list(self.link.proxy.toxics)
                self.active = dict(sorted(self.active.items(), key=lambda i: order.index(i[0])))
                state.start()
            elif not active and state is not None:
                del self.active[toxic.name]
                state.stop()
                state = None
        if state is not None and toxic.type == "timeout":
            state.restart_idle_timer()
        self.changed.set()

    def toxic_removed(self, toxic: Toxic) -> bool:
        """Forget ``toxic``; True when the removal must close the link (timeout toxic)."""
        self.drawn.pop(toxic.name, None)
        state = self.active.pop(toxic.name, None)
        self.changed.set()
        if state is None:
            return False
        state.stop(removed=True)
        return toxic.type == "timeout"

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
                    self.changed.clear()
                    chain = list(self.active.values())
                    try:
                        if original is None:
                            await self._eof(chain)
                            self.link.close("graceful")
                            return
                        await self._run(chain, 0, original[self.written :], ts)
                        break
                    except _Restart:
                        continue
                self.queue.popleft()
                self.queued_bytes -= len(original)
                if self.queued_bytes <= _QUEUE_HIGH // 2:
                    self.has_space.set()
        except _Closed:
            return
        except (OSError, RuntimeError):
            self.link.close("abort")

    async def _sleep(self, seconds: float) -> None:
        if self.changed.is_set():
            raise _Restart
        if seconds <= 0:
            return
        try:
            async with asyncio.timeout(seconds):
                await self.changed.wait()
        except TimeoutError:
            return
        raise _Restart

    async def _write(self, data: bytes) -> None:
        if self.link.closed:
            raise _Closed
        if data:
            self.writer.write(data)
            self.written += len(data)
            await self.writer.drain()

    async def _run(self, chain: list[_ToxicState], index: int, data: bytes, ts: float) -> None:
        if index == len(chain):
            await self._write(data)
            return
        state = chain[index]
        attrs = state.toxic.attributes
        kind = state.toxic.type
        if kind == "latency":
            latency_ms = attrs["latency"]
            jitter = attrs["jitter"]
            if jitter:
                latency_ms += self.link.rng.randint(-jitter, jitter)
            await self._sleep(ts + latency_ms / 1000 - time.monotonic())
            await self._run(chain, index + 1, data, ts)
        elif kind == "bandwidth":
            rate = attrs["rate"] * 1000  # bytes per second
            step = max(1, rate // 10)  # pieces of about 100 ms
            for start in range(0, len(data), step):
                piece = data[start : start + step]
                now = time.monotonic()
                state.next_time = max(state.next_time, now) + len(piece) / rate
                await self._sleep(state.next_time - now)
                await self._run(chain, index + 1, piece, ts)
        elif kind == "slicer":
            average = attrs["average_size"]
            variation = attrs["size_variation"]
            pause = attrs["delay"] / 1_000_000
            start = 0
            while start < len(data):
                size = average + (self.link.rng.randint(-variation, variation) if variation else 0)
                size = max(1, size)
                await self._run(chain, index + 1, data[start : start + size], ts)
                start += size
                if start < len(data):
                    await self._sleep(pause)
        elif kind == "limit_data":
            limit = attrs["bytes"]
            remaining = limit - state.count
            if remaining > 0:
                piece = data[:remaining]
                state.count += len(piece)
                await self._run(chain, index + 1, piece, ts)
            if state.count >= limit:
                self.link.close("graceful")
                raise _Closed
        elif kind == "timeout":
            state.restart_idle_timer()  # drop the chunk
        elif kind == "reset_peer":
            if not state.fired:
                state.fired = True
                ms = attrs["timeout"]
                loop = asyncio.get_running_loop()
                state.timer = loop.call_later(ms / 1000, self.link.close, "reset")
        else:  # noop, slow_close
            await self._run(chain, index + 1, data, ts)

    async def _eof(self, chain: list[_ToxicState]) -> None:
        for state in chain:
            if state.toxic.type == "slow_close":
                await self._sleep(state.toxic.attributes["delay"] / 1000)


class Link:
    """One accepted client connection and its upstream connection."""

    def __init__(
        self,
        proxy: Proxy,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        rng: random.Random,
    ) -> None:
        self.proxy = proxy
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
        for toxic in self.proxy.toxics.values():
            self.pipes[toxic.stream].toxic_added(toxic)
        loop = asyncio.get_running_loop()
        for pipe in self.pipes.values():
            task = loop.create_task(pipe.read_loop())
            self.tasks.add(task)

    def toxic_added(self, toxic: Toxic) -> None:
        """A toxic was added to the proxy."""
        if not self.closed and self.pipes:
            self.pipes[toxic.stream].toxic_added(toxic)

    def toxic_updated(self, toxic: Toxic, *, toxicity_changed: bool) -> None:
        """A toxic of the proxy changed its attributes or toxicity."""
        if not self.closed and self.pipes:
            self.pipes[toxic.stream].toxic_updated(toxic, toxicity_changed=toxicity_changed)

    def toxic_removed(self, toxic: Toxic) -> None:
        """A toxic was removed; a timeout toxic closes the connections it was on."""
        if not self.closed and self.pipes and self.pipes[toxic.stream].toxic_removed(toxic):
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
