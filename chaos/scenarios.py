"""The scenarios: one fault each, injected for the ``during`` phase and then removed.

A scenario's ``fault`` is an async context manager factory: entering it injects the fault,
leaving it removes it (restores the network or the server). The runner keeps the workload
running before, during and after. ``needs`` tells the runner what the fault acts on:

* ``proxy`` — a Toxiproxy proxy in front of the database (embedded or real server);
* ``server`` — the database behind the proxy (``pg_terminate_backend``);
* ``cluster`` — a private PostgreSQL cluster (restart); ``standby`` — a private primary and
  its synchronous streaming standby (failover). Both need local server binaries.

``expect`` adds scenario-specific checks (e.g. the breaker must open while the database is
down) to the common invariants.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import anyio

from chaos.invariants import Check
from chaos.metrics import BreakerTransition, PhaseMetrics, Recovery
from chaos.workload import Admin, OpRecord
from resilient_db.toxiproxy import AsyncToxiproxyClient

if TYPE_CHECKING:
    from resilient_db.testing import PgCluster

__all__ = [
    "SCENARIOS",
    "FaultContext",
    "Observed",
    "Scenario",
    "by_name",
]

Needs = Literal["proxy", "server", "cluster", "standby"]


@dataclass(kw_only=True, slots=True)
class FaultContext:
    """What a fault can act on (mutable: a failover re-points ``admin``)."""

    proxy: AsyncToxiproxyClient
    proxy_name: str
    admin: Admin
    app_name: str
    primary: PgCluster | None = None
    standby: PgCluster | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True, slots=True)
class Observed:
    """What a scenario's ``expect`` may look at."""

    phases: Sequence[PhaseMetrics]
    recovery: Recovery | None
    transitions: Sequence[BreakerTransition]
    records: Sequence[OpRecord] = ()
    fault_start: float = 0.0

    def phase(self, name: str) -> PhaseMetrics:
        """The metrics of phase ``name``."""
        return next(p for p in self.phases if p.phase == name)


Fault = Callable[[FaultContext], AbstractAsyncContextManager[None]]
Expect = Callable[[Observed], list[Check]]


@dataclass(frozen=True, kw_only=True, slots=True)
class Scenario:
    """One chaos scenario."""

    name: str
    summary: str
    fault: Fault
    needs: Needs = "proxy"
    quick: bool = False
    expect: Expect | None = None


# -- faults --------------------------------------------------------------------------------


@asynccontextmanager
async def _no_fault(ctx: FaultContext) -> AsyncIterator[None]:
    yield


@asynccontextmanager
async def _toxic(
    ctx: FaultContext,
    type: str,
    attributes: dict[str, int],
    *,
    streams: Sequence[str] = ("downstream",),
    toxicity: float = 1.0,
) -> AsyncIterator[None]:
    names: list[str] = []
    try:
        for stream in streams:
            info = await ctx.proxy.add_toxic(
                ctx.proxy_name,
                type=type,
                name=f"chaos_{type}_{stream}",
                stream=stream,
                toxicity=toxicity,
                attributes=attributes,
            )
            names.append(info.name)
        yield
    finally:
        with anyio.CancelScope(shield=True):
            for name in names:
                await ctx.proxy.remove_toxic(ctx.proxy_name, name)


def _latency(ctx: FaultContext) -> AbstractAsyncContextManager[None]:
    return _toxic(ctx, "latency", {"latency": 100, "jitter": 50})


@asynccontextmanager
async def _down(ctx: FaultContext) -> AsyncIterator[None]:
    await ctx.proxy.disable(ctx.proxy_name)
    try:
        yield
    finally:
        with anyio.CancelScope(shield=True):
            await ctx.proxy.enable(ctx.proxy_name)


def _reset_peer(ctx: FaultContext) -> AbstractAsyncContextManager[None]:
    # every connection is reset (RST) 300 ms after the toxic reaches it
    return _toxic(ctx, "reset_peer", {"timeout": 300})


def _black_hole(ctx: FaultContext) -> AbstractAsyncContextManager[None]:
    # timeout 0: data is swallowed and the connection never closes (half-open sockets)
    return _toxic(ctx, "timeout", {"timeout": 0}, streams=("downstream", "upstream"))


def _bandwidth(ctx: FaultContext) -> AbstractAsyncContextManager[None]:
    return _toxic(ctx, "bandwidth", {"rate": 4})  # KB/s per connection


def _slicer(ctx: FaultContext) -> AbstractAsyncContextManager[None]:
    return _toxic(
        ctx,
        "slicer",
        {"average_size": 8, "size_variation": 6, "delay": 200},
        streams=("downstream", "upstream"),
    )


def _limit_data(ctx: FaultContext) -> AbstractAsyncContextManager[None]:
    # each connection is closed after 3000 more bytes towards the client: mid-query and
    # mid-COMMIT losses at random points
    return _toxic(ctx, "limit_data", {"bytes": 3000})


_TERMINATE = (
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
    "WHERE application_name = %s AND pid <> pg_backend_pid()"
)


@asynccontextmanager
async def _slow_close(ctx: FaultContext) -> AsyncIterator[None]:
    # the server ends every session (57P01) but the proxy delays each close by 2 s
    async with _toxic(ctx, "slow_close", {"delay": 2000}):
        killed = await ctx.admin.ascalar(_TERMINATE, (ctx.app_name,))
        ctx.notes.append(f"terminated {killed} backend(s) behind a slow close")
        yield


@asynccontextmanager
async def _terminate_backends(ctx: FaultContext) -> AsyncIterator[None]:
    stop = anyio.Event()
    killed = 0

    async def killer() -> None:
        nonlocal killed
        while not stop.is_set():
            killed += int(await ctx.admin.ascalar(_TERMINATE, (ctx.app_name,)) or 0)
            with anyio.move_on_after(0.1):
                await stop.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(killer)
        try:
            yield
        finally:
            stop.set()
    ctx.notes.append(f"terminated {killed} backend(s)")


@asynccontextmanager
async def _restart(ctx: FaultContext) -> AsyncIterator[None]:
    cluster = ctx.primary
    assert cluster is not None
    await anyio.to_thread.run_sync(lambda: cluster.restart("fast"))
    ctx.notes.append("fast restart done; immediate stop, down for the phase")
    await anyio.to_thread.run_sync(lambda: cluster.stop("immediate"))
    try:
        yield
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(cluster.start)


@asynccontextmanager
async def _failover(ctx: FaultContext) -> AsyncIterator[None]:
    primary, standby = ctx.primary, ctx.standby
    assert primary is not None
    assert standby is not None
    await anyio.to_thread.run_sync(lambda: primary.stop("immediate"))
    ctx.notes.append("primary stopped (immediate); standby promoted at the end of the phase")
    try:
        yield
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(standby.promote)
            await ctx.proxy.set_upstream(ctx.proxy_name, f"127.0.0.1:{standby.port}")
            ctx.admin = Admin(standby.dsn)


# -- expectations ----------------------------------------------------------------------------


def _expect_clean(obs: Observed) -> list[Check]:
    bad = {p.phase: p.failed + p.unknown for p in obs.phases if p.failed + p.unknown}
    return [
        Check(
            name="expect: no errors without a fault",
            passed=not bad,
            detail="no failed or unknown op" if not bad else f"errors by phase: {bad}",
        )
    ]


def _expect_breaker(obs: Observed) -> list[Check]:
    during = obs.phase("during")
    opened = [t for t in obs.transitions if t.state == "open"]
    closed_at_end = not obs.transitions or obs.transitions[-1].state == "closed"
    return [
        Check(
            name="expect: breaker opened and failed fast",
            passed=bool(opened) and during.fail_fast > 0,
            detail=f"{len(opened)} open transition(s), {during.fail_fast} fail-fast during",
        ),
        Check(
            name="expect: breaker closed again",
            passed=closed_at_end,
            detail="closed at the end"
            if closed_at_end
            else f"last state {obs.transitions[-1].state}",
        ),
    ]


def _expect_healthy_before(obs: Observed) -> list[Check]:
    # calls that *ended* before the fault (one running when it started may fail by it)
    done = [r for r in obs.records if r.ended < obs.fault_start]
    bad = [r for r in done if r.outcome != "acknowledged"]
    return [
        Check(
            name="expect: healthy before the fault",
            passed=not bad and len(done) > 0,
            detail=f"{len(done) - len(bad)} ok, {len(bad)} not",
            offenders=tuple(r.op for r in bad[:5]),
        )
    ]


def _both(*fns: Expect) -> Expect:
    def run(obs: Observed) -> list[Check]:
        return [c for fn in fns for c in fn(obs)]

    return run


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        name="baseline",
        summary="no fault: the workload alone (every op must succeed)",
        fault=_no_fault,
        quick=True,
        expect=_expect_clean,
    ),
    Scenario(
        name="latency",
        summary="Toxiproxy latency 100 ms ± 50 ms jitter towards the client",
        fault=_latency,
        quick=True,
        expect=_expect_clean,
    ),
    Scenario(
        name="down",
        summary="proxy disabled (refused connects, open ones dropped): breaker opens, "
        "fails fast, recovers",
        fault=_down,
        quick=True,
        expect=_both(_expect_healthy_before, _expect_breaker),
    ),
    Scenario(
        name="reset_peer",
        summary="every connection reset (TCP RST) 300 ms after the toxic reaches it",
        fault=_reset_peer,
        quick=True,
        expect=_expect_healthy_before,
    ),
    Scenario(
        name="black_hole",
        summary="timeout toxic with timeout 0: half-open sockets, data swallowed, no close",
        fault=_black_hole,
        quick=True,
        expect=_expect_healthy_before,
    ),
    Scenario(
        name="bandwidth",
        summary="bandwidth limited to 4 KB/s per connection towards the client",
        fault=_bandwidth,
        expect=_expect_healthy_before,
    ),
    Scenario(
        name="slicer",
        summary="every packet sliced into ~8-byte pieces 200 µs apart, both directions",
        fault=_slicer,
        expect=_expect_clean,
    ),
    Scenario(
        name="limit_data",
        summary="each connection closed after 3000 more bytes to the client (random "
        "mid-query and mid-COMMIT losses)",
        fault=_limit_data,
        quick=True,
        expect=_expect_healthy_before,
    ),
    Scenario(
        name="slow_close",
        summary="every backend terminated while the proxy delays each close by 2 s",
        fault=_slow_close,
        expect=_expect_healthy_before,
    ),
    Scenario(
        name="terminate_backends",
        summary="pg_terminate_backend on every suite backend every 100 ms",
        fault=_terminate_backends,
        needs="server",
        quick=True,
        expect=_expect_healthy_before,
    ),
    Scenario(
        name="restart",
        summary="private cluster: fast restart, then immediate stop for the phase, start",
        fault=_restart,
        needs="cluster",
        expect=_expect_healthy_before,
    ),
    Scenario(
        name="failover",
        summary="private primary + synchronous standby: primary stopped (immediate), standby "
        "promoted, proxy re-pointed with set_upstream",
        fault=_failover,
        needs="standby",
        expect=_expect_healthy_before,
    ),
)


def by_name(names: Sequence[str]) -> list[Scenario]:
    """The scenarios named (in suite order); ``ValueError`` naming the known ones."""
    known = {s.name: s for s in SCENARIOS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(known)} (see --list)"
        )
    wanted = set(names)
    return [s for s in SCENARIOS if s.name in wanted]
