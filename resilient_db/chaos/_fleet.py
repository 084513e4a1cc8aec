"""Fleet scenarios: N worker processes against one database, fleet-level figures.

The parent starts ``python -m resilient_db.chaos._fleet CONFIG`` per process. Each worker
imports the workload (``module:factory``), builds the application's Database, prints
``ready`` and waits; the parent then sends the common origin (wall clock) on stdin, runs the
phases and injects the fault, and sends ``stop``. Each worker drains its calls and writes its
records, connection attempts and breaker transitions to a JSON file. Times are seconds since
the common origin.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import anyio

from resilient_db.chaos._env import Environment, Target
from resilient_db.chaos._faults import FaultContext
from resilient_db.chaos._judge import RunData
from resilient_db.chaos._metrics import BreakerTransition
from resilient_db.chaos._model import OpRecord, WorkloadContext
from resilient_db.chaos._scenarios import Scenario
from resilient_db.chaos._workers import Probe

__all__ = ["run_fleet"]


def _spawn(config: dict[str, Any], path: Path) -> subprocess.Popen[bytes]:
    path.write_text(json.dumps(config))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.Popen(
        [sys.executable, "-m", "resilient_db.chaos._fleet", str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )


def _send(procs: list[subprocess.Popen[bytes]], line: str) -> None:
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(line.encode() + b"\n")
        p.stdin.flush()


def _wait_ready(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline()  # the worker prints one line when ready (or exits)
        if line.strip() != b"ready" or time.monotonic() > deadline:
            raise RuntimeError(f"fleet worker did not start (exit {p.poll()}): {line!r}")


async def run_fleet(
    env: Environment,
    scenario: Scenario,
    target: Target,
    wctx: WorkloadContext,
    fctx: FaultContext,
) -> RunData:
    """Run the phases with ``processes`` workers; inject the fault from here."""
    s = env.settings
    n = s.processes or scenario.processes
    tmp = Path(tempfile.mkdtemp(prefix="rdb_fleet_"))
    baseline = await target.sessions(wctx.application_name)
    procs = []
    for i in range(n):
        config = {
            "spec": s.workload_spec,
            "context": asdict(wctx),
            "process": i + 1,
            "concurrency": max(2, s.concurrency // n),
            "rate": s.rate,
            "seed": s.seed,
            "drain": s.deadline + s.allowance + s.drain,
            "out": str(tmp / f"{i}.json"),
        }
        procs.append(_spawn(config, tmp / f"{i}.cfg"))
    try:
        await anyio.to_thread.run_sync(_wait_ready, procs, 120.0)
        origin_wall = time.time()
        probe = Probe(origin=time.monotonic())
        _send(procs, repr(origin_wall))
        await anyio.sleep(s.before)
        fault_start = probe.now()
        async with scenario.fault(fctx):
            await anyio.sleep(s.during)
        fault_end = probe.now()
        await anyio.sleep(s.after)
        end = probe.now()
        _send(procs, "stop")
        patience = s.deadline + s.allowance + s.drain + 30
        for p in procs:
            await anyio.to_thread.run_sync(functools.partial(p.wait, timeout=patience))
    finally:
        for p in procs:  # only our own children
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
            for pipe in (p.stdin, p.stdout):
                if pipe is not None:
                    pipe.close()
    try:
        return _merge(tmp, n, probe, baseline, fault_start, fault_end, end)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _merge(
    tmp: Path,
    n: int,
    probe: Probe,
    baseline: int,
    fault_start: float,
    fault_end: float,
    end: float,
) -> RunData:
    records: list[OpRecord] = []
    checked_out, states = 0, []
    for i in range(n):
        data = json.loads((tmp / f"{i}.json").read_text())
        records += [OpRecord(**r) for r in data["records"]]
        probe.connects += data["connects"]
        probe.transitions += [BreakerTransition(**t) for t in data["transitions"]]
        probe.unit_events.update(data["unit_events"])
        checked_out += data["checked_out"]
        states.append(data["breaker_state"])
    probe.connects.sort()
    probe.transitions.sort(key=lambda t: t.at)
    during = [t for t in probe.connects if fault_start <= t < fault_end]
    per_second = [
        sum(1 for t in during if k <= t - fault_start < k + 1)
        for k in range(int(fault_end - fault_start) + 1)
    ]
    fleet = {
        "processes": float(n),
        "connects_during": float(len(during)),
        "connects_per_s_during": round(len(during) / max(fault_end - fault_start, 1e-9), 2),
        "peak_connects_in_1s_during": float(max(per_second, default=0)),
        "connects_total": float(len(probe.connects)),
    }
    state = "closed" if all(x in (None, "closed") for x in states) else "open"
    return RunData(
        records=records,
        probe=probe,
        fault_start=fault_start,
        fault_end=fault_end,
        end=end,
        pool_checked_out=checked_out,
        breaker_state=state if any(states) else None,
        baseline_sessions=baseline,
        fleet=fleet,
    )


async def _worker_main(config: dict[str, Any]) -> dict[str, Any]:
    from resilient_db.chaos._engines import build_database
    from resilient_db.chaos._load import load_workload
    from resilient_db.chaos._workers import Driver

    logging.getLogger("resilient_db").propagate = False  # the parent reports; keep stderr clean
    wctx = WorkloadContext(**config["context"])
    workload = load_workload(config["spec"])(wctx)
    db = build_database(workload, wctx)
    print("ready", flush=True)
    origin_wall = float(await anyio.to_thread.run_sync(sys.stdin.readline))
    origin = time.monotonic() - (time.time() - origin_wall)
    probe = Probe(origin=origin)
    probe.attach(db)
    driver = Driver(
        db,
        workload,
        prefix=wctx.prefix,
        concurrency=config["concurrency"],
        rate=config["rate"],
        seed=config["seed"],
        origin=origin,
        process=config["process"],
    )
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(driver.run, stop)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        stop.set()
        with anyio.move_on_after(config["drain"]):
            while driver.in_flight:  # noqa: ASYNC110 - no event to wait on
                await anyio.sleep(0.05)  # bounded poll
        driver.abandon()
        tg.cancel_scope.cancel()
    checked_out = int(db.engine.sync_engine.pool.checkedout())  # type: ignore[attr-defined]
    state = db.breaker.state.value if db.breaker is not None else None
    await db.engine.dispose()
    return {
        "records": [asdict(r) for r in driver.records],
        "connects": probe.connects,
        "transitions": [asdict(t) for t in probe.transitions],
        "unit_events": dict(probe.unit_events),
        "checked_out": checked_out,
        "breaker_state": state,
    }


if __name__ == "__main__":
    _config = json.loads(Path(sys.argv[1]).read_text())
    _result = anyio.run(_worker_main, _config)
    Path(_config["out"]).write_text(json.dumps(_result))
