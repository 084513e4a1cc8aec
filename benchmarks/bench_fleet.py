"""A fleet sharing breaker decisions on Redis (``python benchmarks/bench_fleet.py``).

1. Happy path, one process: ``acquire()`` + ``success()`` (and ``acquire_async()``) on a
   breaker with a :class:`~resilient_db.RedisBreakerStore` vs the in-process breaker
   (interleaved rounds, medians, ns per call). The store adds nothing to the hot path.
2. Total outage, 4 worker processes x 16 tasks (``db.run`` SELECT 1 through the embedded
   fault proxy, which is then disabled): connection attempts per second for the whole
   fleet (pool connects + health probes) with the store vs without it, and each process's
   first success after the database returns.

Needs the local PostgreSQL (``RESILIENT_DB_BENCH_URL``) and Redis at 127.0.0.1:6379
(``RESILIENT_DB_BENCH_REDIS``); uses its own key prefix and deletes its keys.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import os
import secrets
import statistics
import time
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url

URL = os.environ.get("RESILIENT_DB_BENCH_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("RESILIENT_DB_BENCH_REDIS", "redis://127.0.0.1:6379/0")
PREFIX = f"rdb_bench_{secrets.token_hex(4)}"


# --- 1. happy path --------------------------------------------------------------------


async def _loop(breaker: Any, n: int, use_async: bool) -> float:
    t0 = time.perf_counter_ns()
    if use_async:
        for _ in range(n):
            (await breaker.acquire_async()).success()
    else:
        for _ in range(n):
            breaker.acquire().success()
    return (time.perf_counter_ns() - t0) / n


async def happy_path(n: int, rounds: int) -> None:
    from resilient_db import CircuitBreaker, RedisBreakerStore

    print(f"1. Happy path: ns per call (median of {rounds} interleaved rounds of {n})")
    store = RedisBreakerStore(REDIS, service="bench", prefix=PREFIX)
    async with store:
        local = CircuitBreaker("db")
        shared = CircuitBreaker("db", store=store)
        for use_async in (False, True):
            a: list[float] = []
            b: list[float] = []
            for _ in range(rounds):
                a.append(await _loop(local, n, use_async))
                b.append(await _loop(shared, n, use_async))
            ma, mb = statistics.median(a), statistics.median(b)
            label = "acquire_async()+success()" if use_async else "acquire()+success()      "
            print(
                f"   {label}  in-process {ma:7.1f} ns   with Redis store {mb:7.1f} ns   "
                f"diff {mb - ma:+6.1f} ns ({mb / ma:.2f}x)"
            )


# --- 2. outage, several processes -----------------------------------------------------


async def _worker_main(
    url: str, use_store: bool, service: str, tasks: int, ctl: Any, out: Any
) -> None:
    from resilient_db import (
        CircuitBreaker,
        Database,
        RedisBreakerStore,
        RetryPolicy,
        create_async_engine,
        endpoint_key,
        engine_health_check,
    )

    engine = create_async_engine(url, connect_timeout=2, pool_timeout=2)
    attempts: list[tuple[float, str]] = []
    event.listen(
        engine.sync_engine, "do_connect", lambda *a: attempts.append((time.monotonic(), "pool"))
    )
    check = engine_health_check(engine)

    async def counted_check() -> None:
        attempts.append((time.monotonic(), "probe"))
        await check()

    store = (
        RedisBreakerStore(
            REDIS,
            service=service.split("|")[1],
            prefix=service.split("|")[0],
            refresh_interval=0.1,
        )
        if use_store
        else None
    )
    transitions: list[tuple[float, str]] = []
    breaker = CircuitBreaker(
        str(endpoint_key(engine)),
        health_check=counted_check,
        store=store,
        listeners=[lambda e: transitions.append((time.monotonic(), f"{e.state}:{e.reason}"))],
    )
    db = Database(
        engine, breaker=breaker, deadline=5.0, retry=RetryPolicy(attempts=5, max_backoff=1.0)
    )
    if store is not None:
        await store.start()
    results: list[tuple[float, bool]] = []
    stop = asyncio.Event()

    async def select_1(session: Any) -> int:
        return int((await session.execute(text("SELECT 1"))).scalar_one())

    async def caller() -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(db.run(select_1), 10)
            except Exception:
                results.append((time.monotonic(), False))
                await asyncio.sleep(0.01)  # the next request arrives
            else:
                results.append((time.monotonic(), True))

    running = [asyncio.create_task(caller()) for _ in range(tasks)]
    out.put(("ready", os.getpid()))
    while not ctl.is_set():  # noqa: ASYNC110 - a multiprocessing flag, polled
        await asyncio.sleep(0.05)  # bounded poll: the parent's stop flag
    stop.set()
    await asyncio.gather(*running, return_exceptions=True)
    await breaker.wait_probe()
    if store is not None:
        await store.aclose()
    await engine.dispose()
    attempts.extend(transitions)
    out.put(("done", attempts, results))


def _worker(url: str, use_store: bool, service: str, tasks: int, ctl: Any, out: Any) -> None:
    logging.getLogger("resilient_db").setLevel(logging.ERROR)
    asyncio.run(_worker_main(url, use_store, service, tasks, ctl, out))


def _outage_run(
    label: str, client: Any, url: str, use_store: bool, procs: int, tasks: int, seconds: float
) -> None:
    ctx = mp.get_context("spawn")
    ctl = ctx.Event()
    out = ctx.Queue()
    service = f"{PREFIX}|bench-{secrets.token_hex(3)}"  # spawned children re-import PREFIX
    workers = [
        ctx.Process(target=_worker, args=(url, use_store, service, tasks, ctl, out))
        for _ in range(procs)
    ]
    for w in workers:
        w.start()
    for _ in workers:
        out.get(timeout=60)  # ready
    time.sleep(1.0)  # warm
    client.disable("fleet")
    down_at = time.monotonic()
    time.sleep(seconds)
    client.enable("fleet")
    up_at = time.monotonic()
    time.sleep(3.0)
    ctl.set()
    reports = [out.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=30)
    steady_from = down_at + 1.0
    span = max(up_at - steady_from, 1e-9)
    kinds = [k for _, a, _ in reports for t, k in a if steady_from <= t < up_at]
    if os.environ.get("BENCH_FLEET_DEBUG"):
        import collections

        print("     transitions:", collections.Counter(k for k in kinds if ":" in k))
    kinds = [k for k in kinds if ":" not in k]
    rate = len(kinds) / span
    probes = kinds.count("probe") / span
    firsts = [
        min((t for t, ok in r if ok and t >= up_at), default=float("inf")) - up_at
        for _, _, r in reports
    ]
    print(f"   {label}")
    print(
        f"     fleet connection attempts during the outage: {rate:6.2f} /s "
        f"(probes {probes:.2f} /s, pool connects {rate - probes:.2f} /s)"
    )
    print(
        "     first success per process after the return:  "
        + ", ".join(f"{f:.3f}" for f in sorted(firsts))
        + f" s (max {max(firsts):.3f})"
    )


def outage(procs: int, tasks: int, seconds: float) -> None:
    from resilient_db.toxiproxy import ToxiproxyClient, ToxiproxyServer

    print(f"\n2. Total outage: {procs} processes x {tasks} tasks, {seconds:g} s (proxy disabled)")
    upstream = make_url(URL)
    with ToxiproxyServer.in_thread() as server:
        client = ToxiproxyClient(server.url)
        proxy = client.create_proxy(
            name="fleet",
            upstream=f"{upstream.host or '127.0.0.1'}:{upstream.port or 5432}",
            listen="127.0.0.1:0",
        )
        url = upstream.set(host="127.0.0.1", port=proxy.listen_port).render_as_string(
            hide_password=False
        )
        _outage_run("with RedisBreakerStore", client, url, True, procs, tasks, seconds)
        _outage_run(
            "without a store (a breaker per process)", client, url, False, procs, tasks, seconds
        )


async def _cleanup() -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS)
    try:
        keys = [k async for k in client.scan_iter(match=f"{PREFIX}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--outage", type=float, default=6.0)
    parser.add_argument("--skip-outage", action="store_true")
    args = parser.parse_args()
    logging.getLogger("resilient_db").setLevel(logging.ERROR)
    try:
        asyncio.run(happy_path(args.n, args.rounds))
        if not args.skip_outage:
            outage(args.procs, args.tasks, args.outage)
    finally:
        asyncio.run(_cleanup())


if __name__ == "__main__":
    main()
