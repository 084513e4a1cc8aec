"""What each toxic does to the bytes of one stream: one object per toxic type.

A stream's pipeline (``_link``) runs each chunk through the active toxics in order; every
toxic is an :class:`Effect` that receives the chunk and passes it (or pieces of it) on with
``pipe.forward``. Per-connection state lives in a :class:`ToxicState`. Waits go through
``pipe.sleep``, which raises :class:`Restart` when the toxic chain changes, so a change acts on
open connections at once.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Mapping
from typing import Final, Literal, Protocol

from resilient_db.toxiproxy._toxics import Toxic

__all__ = ["EFFECTS", "CloseMode", "Closed", "Effect", "PipeOps", "Restart", "ToxicState"]

CloseMode = Literal["graceful", "abort", "reset"]

#: Waits shorter than this are batched: the event loop's timers are only this precise
#: (epoll rounds every timeout up to a millisecond).
_TIMER_RESOLUTION: Final = 0.001


class Restart(Exception):
    """The toxic chain changed while a chunk was in it."""


class Closed(Exception):
    """The link was closed by a toxic; stop processing."""


class PipeOps(Protocol):
    """What an effect may do with the stream it sits on."""

    rng: random.Random

    async def sleep(self, seconds: float) -> None:
        """Wait (``math.inf``: until the chain changes); raises :class:`Restart` on a change."""

    async def forward(self, index: int, data: bytes, ts: float) -> None:
        """Run ``data`` through the rest of the chain, from position ``index``."""

    def close_link(self, mode: CloseMode) -> None:
        """Close both sides of the connection."""


class ToxicState:
    """One toxic as seen by one stream of one connection."""

    __slots__ = ("at_accept", "count", "fired", "next_time", "pipe", "timer", "toxic")

    def __init__(self, toxic: Toxic, pipe: PipeOps, *, at_accept: bool) -> None:
        self.toxic = toxic
        self.pipe = pipe
        #: The toxic existed when the connection was accepted (reset_peer: RST, else FIN).
        self.at_accept = at_accept
        self.count = 0  # limit_data: bytes passed so far
        self.fired = False  # reset_peer: first chunk seen
        self.next_time = 0.0  # bandwidth, slicer: virtual clock
        self.timer: asyncio.TimerHandle | None = None

    @property
    def effect(self) -> Effect:
        return EFFECTS[self.toxic.type]

    def close_later(self, ms: int, mode: CloseMode) -> None:
        """Close the link after ``ms`` milliseconds (replacing a pending close)."""
        self.cancel_timer()
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(max(ms, 0) / 1000, self.pipe.close_link, mode)

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def stop(self, *, removed: bool = False) -> None:
        if not (removed and self.effect.committed(self)):
            self.cancel_timer()


class Effect:
    """A toxic type's behaviour (the base passes data untouched: ``noop``)."""

    #: Removing the toxic closes every connection it was on.
    closes_on_removal = False

    def start(self, state: ToxicState) -> None:
        """The toxic became active on a stream."""

    def changed(self, state: ToxicState) -> None:
        """The toxic's attributes changed."""

    def committed(self, state: ToxicState) -> bool:
        """Whether a pending close survives the toxic's removal."""
        return False

    async def run(
        self, pipe: PipeOps, state: ToxicState, index: int, data: bytes, ts: float
    ) -> None:
        """Handle one chunk read at ``ts``; pass it on with ``pipe.forward(index + 1, ...)``."""
        await pipe.forward(index + 1, data, ts)

    async def eof(self, pipe: PipeOps, state: ToxicState) -> None:
        """The source closed; return when the close may be passed on."""


class Latency(Effect):
    async def run(
        self, pipe: PipeOps, state: ToxicState, index: int, data: bytes, ts: float
    ) -> None:
        attrs = state.toxic.attributes
        delay = attrs["latency"]
        if attrs["jitter"] > 0:
            delay += pipe.rng.randint(-attrs["jitter"], attrs["jitter"])
        await pipe.sleep(ts + delay / 1000 - time.monotonic())
        await pipe.forward(index + 1, data, ts)


class Bandwidth(Effect):
    async def run(
        self, pipe: PipeOps, state: ToxicState, index: int, data: bytes, ts: float
    ) -> None:
        rate = state.toxic.attributes["rate"] * 1000  # bytes per second
        if rate <= 0:  # the reference stalls the stream until the toxic goes
            await pipe.sleep(math.inf)
        step = max(1, rate // 10)  # pieces of about 100 ms
        for start in range(0, len(data), step):
            piece = data[start : start + step]
            now = time.monotonic()
            state.next_time = max(state.next_time, now) + len(piece) / rate
            await pipe.sleep(state.next_time - now)
            await pipe.forward(index + 1, piece, ts)


def slice_bounds(size: int, average: int, variation: int, rng: random.Random) -> list[int]:
    """Piece boundaries of a chunk, split in halves as the reference does.

    A piece is final once it is at most ``average + variation`` bytes; each split point is
    moved by up to ± ``variation``.
    """
    bounds: list[int] = []
    stack = [(0, size)]
    while stack:
        start, end = stack.pop()
        if end - start - average <= variation:
            bounds.append(end)
            continue
        mid = start + (end - start) // 2
        if variation > 0:
            mid += rng.randint(-variation, variation - 1)
        mid = min(max(mid, start + 1), end - 1)
        stack.append((mid, end))
        stack.append((start, mid))
    return bounds


class Slicer(Effect):
    async def run(
        self, pipe: PipeOps, state: ToxicState, index: int, data: bytes, ts: float
    ) -> None:
        attrs = state.toxic.attributes
        pause = max(attrs["delay"], 0) / 1_000_000
        state.next_time = max(state.next_time, time.monotonic())
        start = 0
        for end in slice_bounds(
            len(data), attrs["average_size"], attrs["size_variation"], pipe.rng
        ):
            wait = state.next_time - time.monotonic()
            if wait >= _TIMER_RESOLUTION:
                await pipe.sleep(wait)
            await pipe.forward(index + 1, data[start:end], ts)
            start = end
            state.next_time += pause


class LimitData(Effect):
    async def run(
        self, pipe: PipeOps, state: ToxicState, index: int, data: bytes, ts: float
    ) -> None:
        limit = state.toxic.attributes["bytes"]
        remaining = limit - state.count
        if remaining > 0:
            piece = data[:remaining]
            state.count += len(piece)
            await pipe.forward(index + 1, piece, ts)
        if state.count >= limit:
            pipe.close_link("graceful")
            raise Closed


class Timeout(Effect):
    closes_on_removal = True

    def start(self, state: ToxicState) -> None:
        self._restart(state)

    def changed(self, state: ToxicState) -> None:
        self._restart(state)

    def _restart(self, state: ToxicState) -> None:
        if state.toxic.attributes["timeout"] > 0:
            state.close_later(state.toxic.attributes["timeout"], "graceful")
        else:
            state.cancel_timer()

    async def run(
        self, pipe: PipeOps, state: ToxicState, index: int, data: bytes, ts: float
    ) -> None:
        self._restart(state)  # the chunk is dropped


class ResetPeer(Effect):
    def committed(self, state: ToxicState) -> bool:
        # As the reference: once reset_peer has swallowed its first chunk the close is
        # committed; removing the toxic does not leave a connection with a lost chunk hanging.
        return state.fired

    async def run(
        self, pipe: PipeOps, state: ToxicState, index: int, data: bytes, ts: float
    ) -> None:
        if not state.fired:  # every chunk is dropped; the first one arms the close
            state.fired = True
            mode: CloseMode = "reset" if state.at_accept else "graceful"
            state.close_later(state.toxic.attributes["timeout"], mode)


class SlowClose(Effect):
    async def eof(self, pipe: PipeOps, state: ToxicState) -> None:
        await pipe.sleep(state.toxic.attributes["delay"] / 1000)


EFFECTS: Final[Mapping[str, Effect]] = {
    "latency": Latency(),
    "bandwidth": Bandwidth(),
    "slow_close": SlowClose(),
    "timeout": Timeout(),
    "reset_peer": ResetPeer(),
    "slicer": Slicer(),
    "limit_data": LimitData(),
    "noop": Effect(),
}
