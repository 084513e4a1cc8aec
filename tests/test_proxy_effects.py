"""Toxic effects in isolation: the slicer's pieces and pacing, the bandwidth stall."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator

import pytest

from resilient_db.toxiproxy import AsyncToxiproxyClient, ToxiproxyServer
from resilient_db.toxiproxy._effects import EFFECTS, Effect, slice_bounds
from resilient_db.toxiproxy._toxics import TOXIC_TYPES
from tests._toxiproxy_support import Upstream, connect, embedded, read_exactly


@pytest.fixture
async def tp() -> AsyncIterator[tuple[ToxiproxyServer, AsyncToxiproxyClient]]:
    async with embedded(seed=7) as pair:
        yield pair


def test_one_effect_object_per_toxic_type() -> None:
    assert set(EFFECTS) == set(TOXIC_TYPES)
    assert all(isinstance(e, Effect) for e in EFFECTS.values())
    assert len({type(e) for n, e in EFFECTS.items() if n != "noop"}) == len(EFFECTS) - 1


@pytest.mark.parametrize(
    ("size", "average", "variation"), [(300, 8, 6), (1, 8, 6), (65536, 100, 0), (17, 1, 1)]
)
def test_slice_bounds_cover_the_chunk(size: int, average: int, variation: int) -> None:
    bounds = slice_bounds(size, average, variation, random.Random(3))
    assert bounds[-1] == size
    pieces = [b - a for a, b in zip([0, *bounds], bounds, strict=False)]
    assert all(1 <= p <= average + variation for p in pieces), pieces
    assert sum(pieces) == size


def test_slice_bounds_halve_like_the_reference() -> None:
    # 300 bytes, average 8, variation 6: pieces of 7..14 bytes (not ~8 ± 6), about 30 of them
    bounds = slice_bounds(300, 8, 6, random.Random(1))
    assert 20 <= len(bounds) <= 45


async def test_slicer_paces_pieces(tp: tuple[ToxiproxyServer, AsyncToxiproxyClient]) -> None:
    _, client = tp
    async with Upstream() as echo:
        proxy = await client.create_proxy(name="p", upstream=echo.address)
        # 200 bytes in 10-byte pieces, 3 ms apart downstream: at least ~19 pauses of 3 ms
        attrs = {"average_size": 10, "size_variation": 0, "delay": 3000}
        await client.add_toxic("p", type="slicer", attributes=attrs)
        async with connect(proxy.listen_port) as (reader, writer):
            start = time.monotonic()
            writer.write(b"s" * 200)
            assert await read_exactly(reader, 200, timeout=10) == b"s" * 200
            assert time.monotonic() - start >= 0.05
