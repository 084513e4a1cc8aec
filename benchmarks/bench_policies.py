"""Policy-engine overhead, side by side in one process (``python benchmarks/bench_policies.py``).

Happy path: bare ``await``; our ``retry_call`` + ``CircuitBreaker`` (the pattern the
Database layer uses) and the breaker's decorator / ``async with`` forms; tenacity
``AsyncRetrying``; stamina; aiobreaker; purgatory. Fail fast: each breaker OPEN. Memory:
tracemalloc over 1,000,000 rejected calls. Figures are ns per call, best of ``--repeat``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import aiobreaker
import purgatory
import stamina
import tenacity
from purgatory.domain.model import OpenedState

from resilient_db import CircuitBreaker, CircuitOpenError, RetryBudget, RetryPolicy
from resilient_db.policies._retry import RetryDecision, retry_call

Loop = Callable[[int], Awaitable[None]]


async def work() -> int:
    return 1


def decide(exc: BaseException) -> RetryDecision | None:
    return RetryDecision() if isinstance(exc, OSError) else None


async def measure(loop: Loop, n: int, repeat: int) -> float:
    best = float("inf")
    await loop(1000)  # warm up
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter_ns()
        await loop(n)
        best = min(best, (time.perf_counter_ns() - t0) / n)
    return best


def happy_paths() -> dict[str, Loop]:
    policy = RetryPolicy()
    budget = RetryBudget()
    breaker = CircuitBreaker("bench")
    dec_breaker = CircuitBreaker("bench-decorator")
    cm_breaker = CircuitBreaker("bench-cm")
    guarded = dec_breaker(work)

    async def bare(n: int) -> None:
        for _ in range(n):
            await work()

    async def ours_retry(n: int) -> None:
        for _ in range(n):
            await retry_call(work, policy=policy, decide=decide)

    async def ours_retry_breaker(n: int) -> None:
        acquire = breaker.acquire
        for _ in range(n):
            permit = acquire()
            await retry_call(work, policy=policy, decide=decide, budget=budget)
            permit.success()

    async def ours_decorator(n: int) -> None:
        for _ in range(n):
            await guarded()

    async def ours_async_with(n: int) -> None:
        for _ in range(n):
            async with cm_breaker:
                await work()

    retrying_fn = tenacity.retry(
        stop=tenacity.stop_after_attempt(5),
        wait=tenacity.wait_random_exponential(multiplier=0.05, max=5.0),
        retry=tenacity.retry_if_exception_type(OSError),
    )(work)

    async def tenacity_async_retrying(n: int) -> None:
        for _ in range(n):
            await retrying_fn()

    stamina_fn = stamina.retry(on=OSError, attempts=5)(work)

    async def stamina_retry(n: int) -> None:
        for _ in range(n):
            await stamina_fn()

    aio = aiobreaker.CircuitBreaker(fail_max=5, timeout_duration=timedelta(seconds=60))

    async def aiobreaker_call(n: int) -> None:
        for _ in range(n):
            await aio.call_async(work)

    factory = purgatory.AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=60)
    purg_fn = factory("bench")(work)

    async def purgatory_decorator(n: int) -> None:
        for _ in range(n):
            await purg_fn()

    return {
        "bare await": bare,
        "ours: retry_call": ours_retry,
        "ours: breaker.acquire + retry_call + budget": ours_retry_breaker,
        "ours: @breaker": ours_decorator,
        "ours: async with breaker": ours_async_with,
        "tenacity AsyncRetrying (@retry)": tenacity_async_retrying,
        "stamina @retry": stamina_retry,
        "aiobreaker call_async": aiobreaker_call,
        "purgatory @breaker": purgatory_decorator,
    }


async def opened_breakers() -> dict[str, Loop]:
    ours = CircuitBreaker("open", open_for=3600.0, open_for_max=3600.0)
    ours.force_open()
    ours_cm = CircuitBreaker("open-cm", open_for=3600.0, open_for_max=3600.0)
    ours_cm.force_open()

    async def ours_acquire(n: int) -> None:
        for _ in range(n):
            try:  # noqa: SIM105 (try/except is the cheapest way to catch)
                ours.acquire()
            except CircuitOpenError:
                pass

    async def ours_async_with(n: int) -> None:
        for _ in range(n):
            try:
                async with ours_cm:
                    await work()
            except CircuitOpenError:
                pass

    aio = aiobreaker.CircuitBreaker(fail_max=1, timeout_duration=timedelta(hours=1))

    async def boom() -> None:
        raise OSError("down")

    try:  # noqa: SIM105 (try/except is the cheapest way to catch)
        await aio.call_async(boom)
    except aiobreaker.CircuitBreakerError:
        pass

    async def aiobreaker_open(n: int) -> None:
        for _ in range(n):
            try:  # noqa: SIM105 (try/except is the cheapest way to catch)
                await aio.call_async(work)
            except aiobreaker.CircuitBreakerError:
                pass

    factory = purgatory.AsyncCircuitBreakerFactory(default_threshold=1, default_ttl=3600)
    purg_boom = factory("open")(boom)
    purg_work = factory("open")(work)
    try:  # noqa: SIM105 (try/except is the cheapest way to catch)
        await purg_boom()
    except OSError:
        pass

    async def purgatory_open(n: int) -> None:
        for _ in range(n):
            try:  # noqa: SIM105 (try/except is the cheapest way to catch)
                await purg_work()
            except OpenedState:
                pass

    return {
        "ours: acquire() -> CircuitOpenError": ours_acquire,
        "ours: async with (open)": ours_async_with,
        "aiobreaker (open)": aiobreaker_open,
        "purgatory (open)": purgatory_open,
    }


async def memory(loop: Loop, n: int) -> tuple[int, int]:
    """(retained bytes after ``n`` rejected calls, peak bytes above the start)."""
    await loop(1000)
    gc.collect()
    tracemalloc.start()
    start, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    await loop(n)
    gc.collect()
    end, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return end - start, peak - start


def show(title: str, rows: dict[str, float], base: float) -> None:
    print(f"\n{title}")
    print(f"{'':48} {'ns/call':>10} {'over bare':>10} {'x bare':>8}")
    for label, ns in rows.items():
        print(f"{label:48} {ns:10.0f} {ns - base:10.0f} {ns / base:8.2f}")


async def main(args: Any) -> None:
    logging.getLogger("resilient_db").setLevel(logging.ERROR)  # no transition log lines
    paths = happy_paths()
    happy = {label: await measure(loop, args.n, args.repeat) for label, loop in paths.items()}
    base = happy["bare await"]
    show("Happy path (success on the first attempt)", happy, base)
    opened = await opened_breakers()
    fast = {label: await measure(loop, args.n, args.repeat) for label, loop in opened.items()}
    show("Fail fast (breaker open)", fast, base)
    print(f"\nMemory over rejected calls (tracemalloc; ours: {args.memory_n:,} calls)")
    for label, calls in (
        ("ours: acquire() -> CircuitOpenError", args.memory_n),
        ("ours: async with (open)", args.memory_n),
        ("aiobreaker (open)", args.memory_n // 10),
        ("purgatory (open)", args.memory_n // 10),
    ):
        retained, peak = await memory(opened[label], calls)
        print(f"{label:40} calls={calls:>9,} retained={retained:>9,} B peak={peak:>9,} B")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200_000, help="calls per measurement")
    parser.add_argument("--repeat", type=int, default=5, help="measurements (best is kept)")
    parser.add_argument("--memory-n", type=int, default=1_000_000, help="rejected calls")
    asyncio.run(main(parser.parse_args()))
