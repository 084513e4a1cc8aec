"""Bounded waiting for tests: poll a condition until it holds or a deadline passes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def poll(predicate: Callable[[], object], timeout: float, *, every: float = 0.02) -> bool:
    """Whether ``predicate()`` became true within ``timeout`` seconds (checked every
    ``every`` seconds, and once more at the end)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        await asyncio.sleep(every)  # bounded poll
    return bool(predicate())
