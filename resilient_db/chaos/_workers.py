"""The workload driver: workers calling the workload's operations, one record per call."""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import anyio
from sqlalchemy import event

from resilient_db._errors import CommitOutcomeUnknown
from resilient_db.chaos._admin import error_name
from resilient_db.chaos._metrics import BreakerTransition
from resilient_db.chaos._model import OpRecord, Outcome, Workload
from resilient_db.policies import BreakerEvent
from resilient_db.units import Database

__all__ = ["Driver", "Probe"]


@dataclass(kw_only=True, slots=True)
class Probe:
    """What the engine observes of the application's Database (all times since ``origin``)."""

    origin: float
    connects: list[float] = field(default_factory=list)
    transitions: list[BreakerTransition] = field(default_factory=list)
    breaker_samples: list[tuple[float, str]] = field(default_factory=list)
    unit_events: Counter[str] = field(default_factory=Counter)
    _handler: logging.Handler = field(init=False, repr=False)
    _level: int = field(init=False, repr=False, default=logging.NOTSET)

    def __post_init__(self) -> None:
        self._handler = _UnitEvents(self.unit_events)

    def now(self) -> float:
        """Seconds since the origin."""
        return time.monotonic() - self.origin

    def attach(self, db: Database) -> None:
        """Listen to the Database's engine and breaker, and to the library's unit events
        (its log records: stable event names, data in ``extra``; a Database built by the
        user's own factory takes no listener after construction)."""
        event.listen(db.engine.sync_engine, "do_connect", self._on_connect)
        log = logging.getLogger("resilient_db")
        self._level = log.level
        if not log.isEnabledFor(logging.INFO):
            log.setLevel(logging.INFO)  # unit events are INFO records; restored by detach()
        log.addHandler(self._handler)
        if db.breaker is not None:
            db.breaker.add_listener(self._on_breaker)

    def detach(self, db: Database) -> None:
        """Stop listening (the Database is being disposed)."""
        event.remove(db.engine.sync_engine, "do_connect", self._on_connect)
        log = logging.getLogger("resilient_db")
        log.removeHandler(self._handler)
        log.setLevel(self._level)

    def _on_connect(self, *args: Any) -> None:
        self.connects.append(round(self.now(), 4))

    def _on_breaker(self, ev: BreakerEvent) -> None:
        self.transitions.append(
            BreakerTransition(
                at=round(self.now(), 3),
                previous=ev.previous.value,
                state=ev.state.value,
                reason=ev.reason,
            )
        )

    async def sample(self, db: Database, stop: anyio.Event, every: float = 0.1) -> None:
        """Sample the breaker state every ``every`` seconds until ``stop``."""
        if db.breaker is None:
            return
        while not stop.is_set():
            self.breaker_samples.append((round(self.now(), 3), db.breaker.state.value))
            with anyio.move_on_after(every):
                await stop.wait()


class _UnitEvents(logging.Handler):
    """Counts ``unit.*``, ``retry.*`` and ``commit.*`` events as ``event(category|outcome)``."""

    def __init__(self, counts: Counter[str]) -> None:
        super().__init__(logging.DEBUG)
        self.counts = counts

    def emit(self, record: logging.LogRecord) -> None:
        name = str(getattr(record, "event", record.msg))
        if name.startswith(("unit.", "retry.", "commit.")):
            detail = getattr(record, "outcome" if name.startswith("commit.") else "category", None)
            self.counts[f"{name}({detail})" if detail else name] += 1


class Driver:
    """``concurrency`` workers calling the workload's operations at ``rate``/s each."""

    def __init__(
        self,
        db: Database,
        workload: Workload,
        *,
        prefix: str,
        concurrency: int,
        rate: float,
        seed: int,
        origin: float,
        process: int = 0,
    ) -> None:
        self.db, self.workload, self.prefix = db, workload, prefix
        self.concurrency, self.seed, self.origin, self.process = concurrency, seed, origin, process
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.records: list[OpRecord] = []
        self.in_flight: dict[str, tuple[str, int, float]] = {}

    def now(self) -> float:
        """Seconds since the origin."""
        return time.monotonic() - self.origin

    async def run(self, stop: anyio.Event) -> None:
        """Run every worker until ``stop`` is set and every call in flight ended."""
        async with anyio.create_task_group() as tg:
            for n in range(self.concurrency):
                tg.start_soon(self._worker, n, stop)

    def abandon(self) -> None:
        """Record every call still in flight as ``hung``."""
        now = self.now()
        for op, (name, worker, started) in self.in_flight.items():
            self.records.append(
                OpRecord(
                    op=op,
                    operation=name,
                    worker=worker,
                    started=started,
                    ended=now,
                    outcome="hung",
                    error_type="Hung",
                    process=self.process,
                )
            )
        self.in_flight.clear()

    async def _call(self, op: str, n: int, rng: random.Random) -> OpRecord | None:
        ops = self.workload.operations
        operation = rng.choices(ops, weights=[o.weight for o in ops])[0]
        started = self.now()
        self.in_flight[op] = (operation.name, n, started)
        outcome: Outcome = "acknowledged"
        error = returned = timeline = None
        xid: int | None = None
        try:
            result = await operation.call(self.db, op)
            returned = result if isinstance(result, str) else None
        except CommitOutcomeUnknown as exc:
            outcome, error, xid, timeline = "unknown", error_name(exc), exc.xid, exc.timeline
        except Exception as exc:
            outcome, error = "failed", error_name(exc)
        if self.in_flight.pop(op, None) is None:
            return None  # abandoned meanwhile: already recorded as hung
        return OpRecord(
            op=op,
            operation=operation.name,
            worker=n,
            started=started,
            ended=self.now(),
            outcome=outcome,
            error_type=error,
            xid=xid,
            timeline=timeline,
            returned=returned,
            process=self.process,
        )

    async def _worker(self, n: int, stop: anyio.Event) -> None:
        rng = random.Random(self.seed * 100_003 + self.process * 1_009 + n)
        seq = 0
        next_at = self.now()
        while not stop.is_set():
            seq += 1
            record = await self._call(f"{self.prefix}-{self.process}-{n}-{seq}", n, rng)
            if record is None:
                return
            self.records.append(record)
            if self.interval:
                next_at = max(next_at + self.interval, self.now())
                delay = next_at - self.now()
                if delay > 0:
                    with anyio.move_on_after(delay):
                        await stop.wait()
