"""Units of work, side by side in one process (``python benchmarks/bench_database.py``).

1. Happy path: a SELECT-1 transaction through ``db.run`` vs a bare ``AsyncSession`` +
   ``begin()`` (the reference), vs the leanest bare form (autobegin + ``commit()``, one
   greenlet switch fewer than ``begin()``: ``db.run`` opens its transaction that way too),
   vs the bare one wrapped in tenacity ``AsyncRetrying`` (interleaved rounds, medians).
2. Round trips: statements sent per writing / read-only unit vs the bare transaction.
3. Total outage (the embedded fault proxy disabled) with 64 concurrent callers:
   connection attempts per second with ``Database`` (breaker + budget) vs tenacity alone;
   then recovery: time to the first success and to 95 % success after the database returns.
4. Frozen network (the proxy swallows every byte both ways, sockets stay open) with 64
   callers on a default ``Database`` (deadline 2 s), then the heal: the longest call vs
   deadline + allowance, the first success after the heal, failures after the heal.

Needs the local PostgreSQL (``RESILIENT_DB_BENCH_URL``, default
``postgresql+asyncpg://postgres@127.0.0.1:5432/test``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import tenacity
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from resilient_db import Database, RetryPolicy, create_async_engine
from resilient_db.toxiproxy import ToxiproxyClient, ToxiproxyPostgres, ToxiproxyServer

URL = os.environ.get("RESILIENT_DB_BENCH_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
SELECT_1 = text("SELECT 1")


async def select_1(session: AsyncSession) -> int:
    return int((await session.execute(SELECT_1)).scalar_one())


async def bare_unit(engine: AsyncEngine) -> int:
    async with AsyncSession(engine, expire_on_commit=False) as session, session.begin():
        return await select_1(session)


async def bare_autobegin(engine: AsyncEngine) -> int:
    """The leanest bare unit: SQLAlchemy's autobegin, then commit() (no begin() block)."""
    async with AsyncSession(engine, expire_on_commit=False) as session:
        result = await select_1(session)
        await session.commit()
        return result


async def timed(loop: Callable[[], Awaitable[Any]], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        await loop()
    return (time.perf_counter() - t0) / n * 1e6


async def happy_path(engine: AsyncEngine, n: int, rounds: int) -> None:
    db = Database(engine)
    retrying_kwargs: dict[str, Any] = {
        "stop": tenacity.stop_after_attempt(5),
        "wait": tenacity.wait_random_exponential(0.05, 5),
        "reraise": True,
    }

    no_deadline = db.with_options(deadline=None)

    async def ours() -> int:
        return await db.run(select_1)

    async def ours_no_deadline() -> int:
        return await no_deadline.run(select_1)

    async def bare() -> int:
        return await bare_unit(engine)

    async def autobegin() -> int:
        return await bare_autobegin(engine)

    async def with_tenacity() -> int:
        async for attempt in tenacity.AsyncRetrying(**retrying_kwargs):
            with attempt:
                return await bare_unit(engine)
        raise AssertionError("unreachable")

    paths = {
        "bare AsyncSession + begin()": bare,
        "bare AsyncSession, autobegin": autobegin,
        "db.run": ours,
        "db.run, deadline=None": ours_no_deadline,
        "tenacity AsyncRetrying": with_tenacity,
    }
    for fn in paths.values():
        await timed(fn, 200)  # warm up: pool, statement caches
    # Interleave single calls (rotating the order) and keep every duration: the per-call
    # median is robust to the noise of a shared machine.
    samples: dict[str, list[float]] = {name: [] for name in paths}
    names = list(paths)
    clock = time.perf_counter
    for i in range(n * rounds):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            fn = paths[name]
            t0 = clock()
            await fn()
            samples[name].append((clock() - t0) * 1e6)
    base = statistics.median(samples["bare AsyncSession + begin()"])
    lean = statistics.median(samples["bare AsyncSession, autobegin"])
    print(f"\n1. Happy path: SELECT-1 transaction, median of {n * rounds} interleaved calls")
    print(f"   {'path':<30} {'us/unit':>9} {'vs bare':>9} {'vs autobegin':>13}")
    for name, values in samples.items():
        med = statistics.median(values)
        print(
            f"   {name:<30} {med:9.1f} {100 * (med / base - 1):+8.2f}% "
            f"{100 * (med / lean - 1):+12.2f}%"
        )


async def round_trips(engine: AsyncEngine) -> None:
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement)

    await engine.dispose()
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TEMP TABLE IF NOT EXISTS bench_rt (x int)"))
    db = Database(engine)
    event.listen(engine.sync_engine, "before_cursor_execute", record)

    async def write(session: AsyncSession) -> None:
        await session.execute(text("CREATE TABLE IF NOT EXISTS bench_rt_w (x int)"))
        await session.execute(text("INSERT INTO bench_rt_w VALUES (1)"))

    async def read(session: AsyncSession) -> int:
        return await select_1(session)

    counts: dict[str, int] = {}
    for label, fn in (("writing unit", write), ("read-only unit", read)):
        sent.clear()
        await db.run(fn)
        ours = len(sent)
        sent.clear()
        async with AsyncSession(engine) as session, session.begin():
            await fn(session)
        counts[label] = ours - len(sent)
    event.remove(engine.sync_engine, "before_cursor_execute", record)
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS bench_rt_w"))
    print("\n2. Extra round trips per unit vs a bare transaction (statements sent)")
    for label, extra in counts.items():
        print(f"   {label:<16} +{extra}")


async def outage(callers: int, seconds: float) -> None:
    print(f"\n3. Total outage with {callers} concurrent callers ({seconds:g} s, proxy disabled)")
    upstream = make_url(URL)
    async with ToxiproxyServer(port=0) as server:
        client = ToxiproxyClient(server.url)
        proxy = await asyncio.to_thread(
            client.create_proxy,
            name="bench",
            upstream=f"{upstream.host or '127.0.0.1'}:{upstream.port or 5432}",
            listen="127.0.0.1:0",
        )
        url = upstream.set(host="127.0.0.1", port=proxy.listen_port)
        for label in ("Database (breaker + budget)", "tenacity alone"):
            await _outage_run(label, client, url, callers, seconds)


async def _outage_run(
    label: str, client: ToxiproxyClient, url: Any, callers: int, seconds: float
) -> None:
    engine = create_async_engine(url, connect_timeout=2, pool_timeout=2)
    connects: list[float] = []
    event.listen(engine.sync_engine, "do_connect", lambda *a: connects.append(time.monotonic()))
    db = Database(engine, deadline=5.0, retry=RetryPolicy(attempts=5, max_backoff=1.0))

    async def call_ours() -> None:
        await db.run(select_1)

    async def call_tenacity() -> None:
        async for attempt in tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(5) | tenacity.stop_after_delay(5),
            wait=tenacity.wait_random_exponential(0.05, 1.0),
            reraise=True,
        ):
            with attempt:
                await bare_unit(engine)

    call = call_ours if label.startswith("Database") else call_tenacity
    results: list[tuple[float, bool]] = []
    stop = asyncio.Event()

    async def caller() -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(call(), 10)
            except Exception:
                results.append((time.monotonic(), False))
                await asyncio.sleep(0.01)  # the next request arrives
            else:
                results.append((time.monotonic(), True))

    def probes() -> int:  # the breaker's probes open connections of their own
        return db.breaker.statistics().probes if db.breaker is not None else 0

    tasks = [asyncio.create_task(caller()) for _ in range(callers)]
    await asyncio.sleep(1.0)
    await asyncio.to_thread(client.disable, "bench")
    down_at = time.monotonic()
    await asyncio.sleep(1.0)
    probes_from = probes() if call is call_ours else 0
    await asyncio.sleep(max(seconds - 1.0, 0.0))
    probes_steady = probes() - probes_from if call is call_ours else 0
    await asyncio.to_thread(client.enable, "bench")
    up_at = time.monotonic()
    await asyncio.sleep(3.0)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    await engine.dispose()

    steady = [t for t in connects if down_at + 1.0 <= t < up_at]
    rate = (len(steady) + probes_steady) / max(up_at - down_at - 1.0, 1e-9)
    first_ok = min((t for t, ok in results if ok and t >= up_at), default=float("inf"))
    window = [ok for t, ok in results if up_at + 1.0 <= t < up_at + 2.0]
    success_1s = sum(window) / len(window) if window else 0.0
    t95 = float("inf")
    # time until 95 % of the calls finishing in a 100 ms bin succeed
    bins: dict[int, list[bool]] = {}
    for t, ok in results:
        if t >= up_at:
            bins.setdefault(int((t - up_at) * 10), []).append(ok)
    for b in sorted(bins):
        oks = bins[b]
        if sum(oks) / len(oks) >= 0.95:
            t95 = b / 10
            break
    print(f"   {label}")
    print(f"     connection attempts during the outage: {rate:8.1f} /s (pool + probes)")
    print(f"     first success after the return:        {first_ok - up_at:8.3f} s")
    print(f"     95 % of calls succeed from:            {t95:8.1f} s after the return")
    print(f"     success rate 1-2 s after the return:    {100 * success_1s:7.1f} %")


async def frozen(callers: int, seconds: float) -> None:
    print(f"\n4. Frozen network with {callers} concurrent callers ({seconds:g} s), then heal")
    async with ToxiproxyServer(port=0) as server:
        client = ToxiproxyClient(server.url)
        pg = await asyncio.to_thread(ToxiproxyPostgres.create, client, URL)
        engine = create_async_engine(pg.url)
        db = Database(engine, deadline=2.0)
        durations: list[float] = []
        results: list[tuple[float, bool]] = []
        stop = asyncio.Event()

        async def caller() -> None:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    await asyncio.wait_for(db.run(select_1), 10)
                    ok = True
                except Exception:
                    ok = False
                t1 = time.monotonic()
                durations.append(t1 - t0)
                results.append((t1, ok))
                if not ok:
                    await asyncio.sleep(0.01)

        tasks = [asyncio.create_task(caller()) for _ in range(callers)]
        await asyncio.sleep(1.0)
        hole = pg.black_hole()
        await asyncio.to_thread(hole.__enter__)
        await asyncio.sleep(seconds)
        await asyncio.to_thread(hole.__exit__, None, None, None)
        healed = time.monotonic()
        await asyncio.sleep(3.0)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await db.aclose()
        await asyncio.to_thread(pg.cleanup)
    first_ok = min((t for t, ok in results if ok and t >= healed), default=float("inf"))
    late = [ok for t, ok in results if t >= healed + 1.0]
    print(f"   longest call:                    {max(durations):6.3f} s (deadline 2 s + 0.25 s)")
    print(f"   first success after the heal:    {first_ok - healed:6.3f} s")
    print(f"   failures from 1 s after the heal: {late.count(False):5} of {len(late)}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--outage", type=float, default=6.0)
    parser.add_argument("--skip-outage", action="store_true")
    args = parser.parse_args()
    logging.getLogger("resilient_db").setLevel(logging.ERROR)
    engine = create_async_engine(URL, pool_size=2)
    try:
        await happy_path(engine, args.n, args.rounds)
        await round_trips(engine)
    finally:
        await engine.dispose()
    if not args.skip_outage:
        await outage(args.callers, args.outage)
        await frozen(args.callers, args.outage)


if __name__ == "__main__":
    asyncio.run(main())
