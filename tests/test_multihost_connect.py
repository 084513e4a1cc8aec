"""Multi-host connects host by host: a silent first host costs its own connect timeout once,
never the whole list (no private cluster needed: a listener that never answers + the local
server)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from resilient_db import create_async_engine


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose TCP handshake completes (kernel backlog) but that never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port: int = listener.getsockname()[1]
        yield port


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_a_silent_first_host_is_skipped_then_avoided(
    driver: str, pg_url: str, silent_port: int
) -> None:
    live = make_url(pg_url)
    url = (
        f"postgresql+{driver}://{live.username}@/{live.database}"
        f"?host=127.0.0.1:{silent_port},{live.host}:{live.port}"
    )
    engine = create_async_engine(url, connect_timeout=1, pool_size=2, max_overflow=0)
    try:
        started = time.perf_counter()
        async with engine.connect() as conn:  # pays the silent host's timeout once
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
        first = time.perf_counter() - started
        started = time.perf_counter()
        async with engine.connect() as a, engine.connect() as b:  # b is a new connection
            for conn in (a, b):
                assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
        second = time.perf_counter() - started
    finally:
        await engine.dispose()
    assert first < 4.0, f"the first connect took {first:.2f}s"
    assert second < 0.8, f"a new connection still tried the silent host first ({second:.2f}s)"


async def test_every_host_failing_lists_them_all(silent_port: int) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused = closed.getsockname()[1]
    url = f"postgresql+asyncpg://u@/db?host=127.0.0.1:{refused},127.0.0.1:{silent_port}"
    engine = create_async_engine(url, connect_timeout=0.5)
    try:
        with pytest.raises(Exception) as info:  # the driver's own error
            async with engine.connect():
                pass
    finally:
        await engine.dispose()
    notes = " ".join(getattr(info.value, "__notes__", []))
    assert f"127.0.0.1:{refused} ConnectionRefusedError" in notes
    assert f"127.0.0.1:{silent_port} TimeoutError" in notes
