"""RedisBreakerStore: breaker decisions and a fleet-wide probe lease on Redis.

What is shared (per service and breaker name, keys ``<prefix>:<service>:<breaker>``):

* **decisions**, not windows: "open until T" on Redis server time, and a generation bumped
  by each decision (Lua, atomic: two instances opening at once make one decision);
* a **probe lease** (``SET NX PX``): one owner at a time, expiring after the probe interval,
  so that one instance of the whole fleet probes per interval. An instance that dies holding
  it blocks probing for at most the lease.

The breaker's hot path never waits on Redis: decisions are read by a background refresh
(every ``refresh_interval``) and pushed to the breakers; writes are queued and sent by a
background writer (the latest decision per breaker wins); only the probe task awaits the
lease. Every Redis call is bounded by ``call_timeout`` of its own. When Redis cannot be
reached the breakers keep deciding locally (their own windows and probes: never "closed
with zero failures"), a ``fleet.degraded`` event is emitted, pending writes are kept, and
when Redis answers again ``fleet.recovered`` is emitted and sharing resumes (no restart).
The retry budget stays per process (see ``docs/breaker.md``).

redis-py's asyncio client: the store runs on asyncio (anyio's asyncio backend included).
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from resilient_db._errors import ConfigurationError
from resilient_db._validate import check_callable, check_callables, config_error
from resilient_db.fleet._scripts import PUBLISH, READ
from resilient_db.policies import DecisionSink, FleetDecision

__all__ = ["FleetEvent", "FleetListener", "FleetStatistics", "RedisBreakerStore"]

logger = logging.getLogger("resilient_db")


@dataclass(frozen=True, kw_only=True, slots=True)
class FleetEvent:
    """``fleet.degraded`` (Redis unreachable: local decisions) or ``fleet.recovered``."""

    name: str
    service: str
    error_type: str | None
    at: float


FleetListener = Callable[[FleetEvent], None]


@dataclass(frozen=True, kw_only=True, slots=True)
class FleetStatistics:
    """A snapshot of a :class:`RedisBreakerStore`."""

    degraded: bool
    reads: int
    writes: int
    leases_won: int
    leases_lost: int
    failures: int
    pending_writes: int


def _seconds(option: str, value: object, example: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise config_error(
            "RedisBreakerStore",
            option,
            value,
            "a finite number of seconds > 0",
            f"pass e.g. {option}={example}",
        )
    return float(value)


def _client(redis: Any, call_timeout: float) -> Any:
    if not isinstance(redis, str):
        return redis
    try:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
    except ImportError as exc:  # pragma: no cover - the extra is missing
        raise ConfigurationError(
            "RedisBreakerStore needs redis-py >= 5: pip install 'resilient-db[redis]'"
        ) from exc
    return Redis.from_url(
        redis,
        socket_timeout=call_timeout,
        socket_connect_timeout=call_timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


class RedisBreakerStore:
    """A :class:`~resilient_db.BreakerStore` on Redis (see the module documentation).

    ``redis`` is a ``redis://`` URL or a ``redis.asyncio.Redis`` client; ``service`` names
    the application (keys are ``<prefix>:<service>:<breaker name>``); ``refresh_interval``
    (default 0.1 s) is how often shared decisions are read; ``call_timeout`` (default 0.1 s)
    bounds every Redis call; ``key_ttl`` (default 1 h) expires idle keys.
    """

    def __init__(
        self,
        redis: Any = "redis://127.0.0.1:6379/0",
        *,
        service: str,
        prefix: str = "resilient_db",
        refresh_interval: float = 0.1,
        call_timeout: float = 0.1,
        key_ttl: float = 3600.0,
        listeners: Iterable[FleetListener] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for option, text in (("service", service), ("prefix", prefix)):
            if not isinstance(text, str) or not text or any(c in text for c in " {}"):
                raise config_error(
                    "RedisBreakerStore",
                    option,
                    text,
                    "a non-empty str without spaces or braces",
                    f"pass e.g. {option}='billing-api'",
                )
        self.service = service
        self.prefix = prefix
        self.refresh_interval = _seconds("refresh_interval", refresh_interval, "0.1")
        self.call_timeout = _seconds("call_timeout", call_timeout, "0.05")
        self.key_ttl = _seconds("key_ttl", key_ttl, "3600")
        self.listeners = list(
            check_callables(
                "RedisBreakerStore",
                "listeners",
                listeners,
                fix="pass a list of callables taking a FleetEvent, e.g. listeners=[on_event]",
            )
        )
        check_callable("RedisBreakerStore", "clock", clock, fix="pass time.monotonic or a fake")
        self._clock = clock
        self._redis = _client(redis, self.call_timeout)
        self._token = secrets.token_hex(8)
        self._sinks: dict[str, list[DecisionSink]] = {}
        self._seen: dict[str, tuple[str, int]] = {}
        self._seq: dict[str, int] = {}
        self._pending: dict[str, tuple[float | None, float]] = {}
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._degraded = False
        self._reads = self._writes = self._won = self._lost = self._failures = 0
        self._read_script: Any = self._redis.register_script(READ)
        self._publish_script: Any = self._redis.register_script(PUBLISH)

    def key(self, name: str) -> str:
        """The Redis key of breaker ``name``."""
        return f"{self.prefix}:{self.service}:{name}"

    # --- the BreakerStore protocol (never blocks) ----------------------------------------

    def bind(self, name: str, on_decision: DecisionSink) -> None:
        self._sinks.setdefault(name, []).append(on_decision)
        self._maybe_start()

    def publish(self, name: str, *, open_for: float | None) -> None:
        self._pending[name] = (open_for, self._clock())
        self._maybe_start()
        if self._wake is not None:
            self._wake.set()

    async def acquire_probe_lease(self, name: str, ttl: float) -> bool:
        self._maybe_start()
        try:
            async with asyncio.timeout(self.call_timeout):
                won = await self._redis.set(
                    f"{self.key(name)}:lease", self._token, nx=True, px=max(1, int(ttl * 1000))
                )
        except Exception as exc:
            await self._failed_call(exc)
            return True  # unreachable: probe locally
        self._recovered()
        if won:
            self._won += 1
            return True
        self._lost += 1
        return False

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background refresh and writer (also started on first use in a loop)."""
        self._maybe_start()
        await self.refresh()

    def _maybe_start(self) -> None:
        if self._tasks or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._wake = asyncio.Event()
        self._tasks = [
            loop.create_task(self._refresh_loop(), name="resilient_db.fleet_refresh"),
            loop.create_task(self._writer_loop(), name="resilient_db.fleet_writer"),
        ]

    async def aclose(self) -> None:
        """Stop the background tasks and close the client (pending writes are dropped)."""
        tasks, self._tasks = self._tasks, []
        self._closed = True
        while tasks:
            # Cancel until they end: on Python 3.11 an asyncio.timeout() firing at the same
            # moment may turn one cancellation into its TimeoutError.
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=0.1)
            tasks = [task for task in tasks if not task.done()]
        try:
            async with asyncio.timeout(max(self.call_timeout, 1.0)):
                await self._redis.connection_pool.disconnect(inuse_connections=True)
                await self._redis.aclose()
        except Exception:  # pragma: no cover - closing a dead connection
            logger.debug("fleet.close_failed")

    async def __aenter__(self) -> RedisBreakerStore:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- background work -------------------------------------------------------------------

    async def _refresh_loop(self) -> None:
        while not self._closed:
            await self.refresh()
            await asyncio.sleep(self.refresh_interval)

    async def refresh(self) -> None:
        """Read every bound breaker's shared decision once (bounded by ``call_timeout``)."""
        names = list(self._sinks)
        if not names:
            return
        try:
            async with asyncio.timeout(self.call_timeout):
                out = await self._read_script(keys=[self.key(n) for n in names])
        except Exception as exc:
            await self._failed_call(exc)
            return
        self._recovered()
        self._reads += 1
        now = int(out[0])
        for i, name in enumerate(names):
            gen, until, epoch = out[1 + 3 * i : 4 + 3 * i]
            self._deliver(name, _text(epoch), int(gen), int(until), now)

    async def _writer_loop(self) -> None:
        assert self._wake is not None
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                name, (open_for, at) = next(iter(self._pending.items()))
                if not await self._write(name, open_for, at):
                    await asyncio.sleep(self.refresh_interval)  # Redis away: retry later
                    break

    async def _write(self, name: str, open_for: float | None, at: float) -> bool:
        if open_for is not None:
            open_for = max(0.001, open_for - (self._clock() - at))
        args = [
            "closed" if open_for is None else "open",
            0 if open_for is None else max(1, int(open_for * 1000)),
            int(self.key_ttl * 1000),
            secrets.token_hex(4),
        ]
        try:
            async with asyncio.timeout(self.call_timeout):
                gen, until, now, epoch = await self._publish_script(
                    keys=[self.key(name)], args=args
                )
        except Exception as exc:
            await self._failed_call(exc)
            if self._wake is not None:
                self._wake.set()
            return False
        self._recovered()
        self._writes += 1
        if self._pending.get(name, (None, None))[1] == at:
            del self._pending[name]
        self._deliver(name, _text(epoch), int(gen), int(until), int(now))
        return True

    def _deliver(self, name: str, epoch: str, gen: int, until: int, now: int) -> None:
        if not epoch:
            return  # nothing shared yet
        if self._seen.get(name) == (epoch, gen):
            return
        self._seen[name] = (epoch, gen)
        seq = self._seq[name] = self._seq.get(name, 0) + 1  # monotonic across epochs
        # An open decision stands after "until" (callers may come back, and with a health
        # check only a passing probe leaves OPEN); only an explicit close (until 0) closes.
        remaining = max(0.0, (until - now) / 1000.0)
        decision = FleetDecision(is_open=until != 0, generation=seq, remaining=remaining)
        for sink in tuple(self._sinks.get(name, ())):
            try:
                sink(decision)
            except Exception:
                logger.exception("fleet.sink_failed", extra={"breaker": name})

    # --- health of the store ---------------------------------------------------------------

    async def _failed_call(self, exc: BaseException) -> None:
        """A call failed or ran out of budget: drop the client's sockets (a timed-out call
        leaves its connection mid-reply), bounded, then record the failure."""
        self._failed(exc)
        try:
            async with asyncio.timeout(self.call_timeout):
                await self._redis.connection_pool.disconnect(inuse_connections=True)
        except Exception:
            logger.debug("fleet.disconnect_failed")

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        if not self._degraded:
            self._degraded = True
            self._event("fleet.degraded", type(exc).__qualname__, logging.WARNING)

    def _recovered(self) -> None:
        if self._degraded:
            self._degraded = False
            self._event("fleet.recovered", None, logging.INFO)
            for name in self._sinks:  # re-read everything, as if new
                self._seen.pop(name, None)

    def _event(self, name: str, error_type: str | None, level: int) -> None:
        logger.log(level, name, extra={"service": self.service, "error_type": error_type})
        event = FleetEvent(name=name, service=self.service, error_type=error_type, at=self._clock())
        for listener in tuple(self.listeners):
            try:
                listener(event)
            except Exception:
                logger.exception("fleet.listener_failed", extra={"service": self.service})

    @property
    def degraded(self) -> bool:
        """True while Redis cannot be reached (breakers decide locally)."""
        return self._degraded

    def statistics(self) -> FleetStatistics:
        return FleetStatistics(
            degraded=self._degraded,
            reads=self._reads,
            writes=self._writes,
            leases_won=self._won,
            leases_lost=self._lost,
            failures=self._failures,
            pending_writes=len(self._pending),
        )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
