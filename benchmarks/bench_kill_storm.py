"""#9 kill storm, repeated: ``python benchmarks/bench_kill_storm.py [--runs 20]``.

Each run: 16 workers, 640 money transfers through ``db.run`` while every backend of the
database is terminated every 100-200 ms (``pg_terminate_backend``), for each driver. Prints
one line per run (units that succeeded, breaker opens, trips refuted by the health probe,
retry-budget refusals and free retries) and a summary: runs with >= 99 % success and no
breaker open. Needs the local PostgreSQL (``RESILIENT_DB_BENCH_PG``, default
``postgresql://postgres@127.0.0.1:5432``); creates and drops its own database.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
from pathlib import Path

import anyio
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests._kill_storm import StormResult, run_storm

BASE = os.environ.get("RESILIENT_DB_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")


async def main(runs: int, units: int) -> int:
    name = f"rdb_bench_storm_{secrets.token_hex(3)}"
    with psycopg.connect(f"{BASE}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    results: dict[str, list[StormResult]] = {"asyncpg": [], "psycopg": []}
    try:
        for i in range(runs):
            for driver in results:
                url = f"{BASE.replace('postgresql://', f'postgresql+{driver}://', 1)}/{name}"
                r = await run_storm(url, units=units)
                results[driver].append(r)
                print(f"run {i + 1:2}  {r.line()}", flush=True)
    finally:
        with psycopg.connect(f"{BASE}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    ok_all = True
    for driver, rs in results.items():
        good = sum(1 for r in rs if r.success_rate >= 0.99 and r.opened == 0)
        never_opened = sum(1 for r in rs if r.opened == 0)
        worst = min(r.success_rate for r in rs)
        mean = sum(r.success_rate for r in rs) / len(rs)
        print(
            f"{driver:8} runs={len(rs)} breaker never opened in {never_opened}/{len(rs)}; "
            f">=99 % and no open in {good}/{len(rs)}; success mean {mean:.1%} worst {worst:.1%}"
        )
        ok_all = ok_all and good == len(rs)
    return 0 if ok_all else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--units", type=int, default=640)
    args = parser.parse_args()
    logging.getLogger("resilient_db").setLevel(logging.ERROR)
    sys.exit(anyio.run(main, args.runs, args.units))
