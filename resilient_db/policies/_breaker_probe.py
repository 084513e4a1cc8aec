"""Running the breaker's health probe in a task of its own.

A probe must not live in a caller's cancel scope: a caller whose deadline (or whose
``task.cancel()``) ends first would cancel the probe, and a breaker whose probes are always
cut short never closes. :func:`spawn` starts the probe as a detached task of the running
event loop (asyncio: ``loop.create_task`` with a strong reference; trio: a system task); the
probe is bounded by its own timeout, and callers only *wait* for its result.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio

from resilient_db._errors import CircuitOpenError
from resilient_db.policies._breaker_events import BreakerState
from resilient_db.policies._breaker_states import PROBE, BreakerPermit, State
from resilient_db.policies._breaker_store import BreakerStore
from resilient_db.policies._clock import Clock

__all__ = ["ProbeHost", "probe_and_admit", "spawn", "start_probe", "wait_idle"]

logger = logging.getLogger("resilient_db")

# Strong references to running probe tasks (asyncio keeps only weak ones).
_TASKS: set[asyncio.Task[Any]] = set()


async def _guarded(fn: Callable[[], Awaitable[None]]) -> None:
    try:
        await fn()
    except Exception:  # pragma: no cover - the probe body catches its own errors
        logger.exception("breaker.probe_crashed")


def spawn(fn: Callable[[], Awaitable[None]]) -> bool:
    """Run ``fn()`` in its own task on the running loop; False when none can start (no
    loop is running, or a trio run is past its system tasks)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        task = loop.create_task(_guarded(fn), name="resilient_db.breaker_probe")
        _TASKS.add(task)
        task.add_done_callback(_TASKS.discard)
        return True
    trio: Any = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_trio_token()  # RuntimeError: not in a trio run
        # RuntimeError too once the run is shutting down: its system nursery is closed
        # while trio finalizes leftover async generators (whose cleanup may trip us).
        trio.lowlevel.spawn_system_task(_guarded, fn, name="resilient_db.breaker_probe")
    except RuntimeError:
        return False
    return True


class ProbeHost(Protocol):
    """What a probe uses of its breaker (``CircuitBreaker`` provides it)."""

    name: str
    _s: State
    _state: BreakerState
    _clock: Clock
    _store: BreakerStore | None
    _probing: bool
    _probe_done: anyio.Event | None
    _next_probe_at: float
    _probe_interval: float
    _probe_timeout: float
    _confirm_timeout: float
    _n_probes: int
    _n_probe_failures: int
    _n_rejected: int

    @property
    def _health_check(self) -> Callable[[], Awaitable[object]] | None: ...
    def _reject(self, state: BreakerState, retry_after: float) -> CircuitOpenError: ...


def start_probe(b: ProbeHost, *, confirm: bool, delay: float | None = None) -> bool:
    """Start the health probe in its own task; False if none can run now.

    A probe's answer is about the server, so it applies to whatever state the breaker is in
    when it ends (CONFIRMING and OPEN act on it; the others ignore it). A confirming probe
    waits for the next probe slot (``probe_interval`` after the last probe) and is bounded
    by ``confirm_timeout``; an open-state probe by ``probe_timeout``.

    While OPEN, a failed (or fleet-skipped) probe schedules the next one ``probe_interval``
    later as long as callers were rejected meanwhile: recovery is noticed within one probe
    interval even when every caller is asleep in a backoff. An open-state probe holds its
    slot one interval at most (:func:`_ask_within_interval`): probes *start* one interval
    apart, so a check frozen on a dead network never delays the next one.
    """
    health_check = b._health_check
    if health_check is None:
        return False
    if b._probing:
        return True  # a probe is already asking the server
    if delay is None:
        delay = max(0.0, b._next_probe_at - b._clock()) if confirm else 0.0
    timeout = b._confirm_timeout if confirm else b._probe_timeout

    async def run() -> None:
        # A confirming probe is this instance's own evidence (once per trip): no lease.
        await _run_probe(b, health_check, delay, timeout, lease=not confirm)

    if not spawn(run):
        return False
    b._probing = True
    b._probe_done = anyio.Event()
    return True


async def _run_probe(
    b: ProbeHost,
    health_check: Callable[[], Awaitable[object]],
    delay: float,
    timeout: float,
    *,
    lease: bool,
) -> None:
    ok: bool | None = False
    demand = b._n_rejected
    try:
        if delay > 0.0:
            await anyio.sleep(min(delay, b._probe_interval))
        store = b._store
        if (
            lease
            and store is not None
            and not await store.acquire_probe_lease(b.name, b._probe_interval)
        ):
            ok = None  # another instance of the fleet probes this interval
        elif lease:  # an open-state probe: its slot lasts one interval at most
            b._n_probes += 1
            ok = await _ask_within_interval(b, health_check, timeout)
        else:
            b._n_probes += 1
            with anyio.fail_after(timeout):
                await health_check()
            ok = True
    except Exception as exc:
        _failed(b, exc)
    finally:
        b._probing = False
        now = b._clock()
        # Still asking after a whole interval (ok is None on a frozen network): the next
        # probe may start now, so probes start one interval apart whatever each one does.
        b._next_probe_at = now + (b._probe_interval if ok is not None or not lease else 0.0)
        done, b._probe_done = b._probe_done, None
        if done is not None:
            done.set()
    if ok is not None:
        b._s.probed(b, ok, now)  # type: ignore[arg-type]  # b is the Core too
    if b._state is BreakerState.OPEN and b._n_rejected > demand:
        start_probe(b, confirm=False, delay=max(0.0, b._next_probe_at - now))


def _failed(b: ProbeHost, exc: BaseException) -> None:
    b._n_probe_failures += 1
    logger.info(
        "breaker.probe_failed",
        extra={"breaker": b.name, "error_type": type(exc).__qualname__},
    )


#: Health checks still asking after their slot ended, per breaker (``wait_probe`` waits).
_LATE: dict[int, set[anyio.Event]] = {}


async def _ask_within_interval(
    b: ProbeHost, health_check: Callable[[], Awaitable[object]], timeout: float
) -> bool | None:
    """The open-state check's answer, or None when it is still asking after one probe
    interval (a frozen network: the connection neither answers nor fails). The check then
    goes on in a task of its own, bounded by ``timeout``, and a late success still ends
    OPEN; but the next probe may start meanwhile, on a fresh connection — so a network that
    heals is noticed within one interval, not after the frozen check's whole timeout, and
    connection attempts stay at one per interval."""
    answered = anyio.Event()
    answer: list[bool] = []
    late = False

    async def ask() -> None:
        try:
            with anyio.fail_after(timeout):
                await health_check()
            answer.append(True)
        except Exception as exc:
            _failed(b, exc)
            answer.append(False)
        finally:
            answered.set()
            if late:
                _forget_late(b, answered)
        if late and answer[0] and b._state is BreakerState.OPEN:
            b._s.probed(b, True, b._clock())  # type: ignore[arg-type]  # b is the Core too

    if not spawn(ask):  # pragma: no cover - the probe itself runs on a loop
        await ask()
    with anyio.move_on_after(b._probe_interval):
        await answered.wait()
    if answer:
        return answer[0]
    late = True
    _LATE.setdefault(id(b), set()).add(answered)
    return None


async def wait_idle(b: ProbeHost) -> None:
    """Wait until no probe of ``b`` runs, late checks included (each is bounded)."""
    done = b._probe_done
    if done is not None:
        await done.wait()
    for event in list(_LATE.get(id(b), ())):
        await event.wait()


def _forget_late(b: ProbeHost, answered: anyio.Event) -> None:
    """A late check has answered: drop it (and the breaker's entry once none is left)."""
    pending = _LATE.get(id(b))
    if pending is not None:
        pending.discard(answered)
        if not pending:
            del _LATE[id(b)]


async def probe_and_admit(b: ProbeHost) -> BreakerPermit:
    """OPEN and a probe is due: start it, wait for its answer, then ask for admission."""
    if not start_probe(b, confirm=False):  # pragma: no cover - a loop is running
        raise b._reject(b._state, b._s.retry_after(b, b._clock()))  # type: ignore[arg-type]
    done = b._probe_done
    if done is not None:
        await done.wait()  # cancellable: the probe itself runs on
    if b._state is BreakerState.OPEN:
        raise b._reject(b._state, b._s.retry_after(b, b._clock()))  # type: ignore[arg-type]
    permit = b._s.admit(b, False)  # type: ignore[arg-type]
    assert permit is not PROBE
    return permit  # type: ignore[return-value]
