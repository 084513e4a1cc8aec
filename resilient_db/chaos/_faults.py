"""Faults: async context managers that inject a fault on entry and remove it on exit.

A fault gets a :class:`FaultContext`: the Toxiproxy client and proxy in front of the database,
admin access to the database, and the private servers the engine started for the scenario
(cluster, standby, PgBouncer). A fault only ever stops or restarts servers found here, i.e.
the ones the engine started itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio

from resilient_db.chaos._admin import Admin
from resilient_db.chaos._netns import NetNamespace
from resilient_db.chaos._pgbouncer import PgBouncer
from resilient_db.testing import PgCluster
from resilient_db.toxiproxy import AsyncToxiproxyClient

__all__ = ["Fault", "FaultContext", "toxic"]


@dataclass(kw_only=True, slots=True)
class FaultContext:
    """What a fault can act on (mutable: a failover re-points ``admin`` and ``direct_url``)."""

    admin: Admin
    app_name: str
    direct_url: str
    proxy: AsyncToxiproxyClient | None = None
    proxy_name: str = ""
    primary: PgCluster | None = None
    standby: PgCluster | None = None
    pgbouncer: PgBouncer | None = None
    netns: NetNamespace | None = None
    notes: list[str] = field(default_factory=list)

    def require_proxy(self) -> AsyncToxiproxyClient:
        """The Toxiproxy client (the scenario declared it needs a proxy)."""
        assert self.proxy is not None, "scenario needs a proxy"
        return self.proxy

    def promoted(self, standby: PgCluster) -> None:
        """Point the checks at ``standby`` (now the primary)."""
        self.admin = Admin(standby.dsn)
        self.direct_url = _same_driver(self.direct_url, standby.url())


Fault = Callable[[FaultContext], AbstractAsyncContextManager[None]]


def _same_driver(old: str, new: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(new).set(drivername=make_url(old).drivername).render_as_string(False)


async def _thread(fn: Callable[[], Any]) -> Any:
    return await anyio.to_thread.run_sync(fn)


@asynccontextmanager
async def no_fault(ctx: FaultContext) -> AsyncIterator[None]:
    """Nothing: the workload alone."""
    yield


@asynccontextmanager
async def toxic(
    ctx: FaultContext,
    type: str,
    attributes: dict[str, int],
    *,
    streams: Sequence[str] = ("downstream",),
    toxicity: float = 1.0,
) -> AsyncIterator[None]:
    """A Toxiproxy toxic on the scenario's proxy, on each of ``streams``."""
    proxy, names = ctx.require_proxy(), []
    try:
        for stream in streams:
            info = await proxy.add_toxic(
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
                await proxy.remove_toxic(ctx.proxy_name, name)


@asynccontextmanager
async def down(ctx: FaultContext) -> AsyncIterator[None]:
    """Proxy disabled: connects refused, open connections dropped."""
    proxy = ctx.require_proxy()
    await proxy.disable(ctx.proxy_name)
    try:
        yield
    finally:
        with anyio.CancelScope(shield=True):
            await proxy.enable(ctx.proxy_name)


TERMINATE = (
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
    "WHERE application_name = %s AND pid <> pg_backend_pid()"
)


@asynccontextmanager
async def slow_close(ctx: FaultContext) -> AsyncIterator[None]:
    """Every backend terminated while the proxy delays each close by 2 s."""
    async with toxic(ctx, "slow_close", {"delay": 2000}):
        killed = await ctx.admin.ascalar(TERMINATE, (ctx.app_name,))
        ctx.notes.append(f"terminated {killed} backend(s) behind a slow close")
        yield


@asynccontextmanager
async def every(
    ctx: FaultContext, interval: float, action: Callable[[], Any]
) -> AsyncIterator[None]:
    """Run the async ``action`` every ``interval`` seconds while the fault is on."""
    stop = anyio.Event()

    async def loop() -> None:
        while not stop.is_set():
            await action()
            with anyio.move_on_after(interval):
                await stop.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(loop)
        try:
            yield
        finally:
            stop.set()


@asynccontextmanager
async def terminate_backends(ctx: FaultContext) -> AsyncIterator[None]:
    """``pg_terminate_backend`` of every engine backend every 100 ms."""
    killed = 0

    async def kill() -> None:
        nonlocal killed
        killed += int(await ctx.admin.ascalar(TERMINATE, (ctx.app_name,)) or 0)

    async with every(ctx, 0.1, kill):
        yield
    ctx.notes.append(f"terminated {killed} backend(s)")


@asynccontextmanager
async def restart(ctx: FaultContext) -> AsyncIterator[None]:
    """Private cluster: fast restart, immediate stop for the phase, start."""
    cluster = ctx.primary
    assert cluster is not None
    await _thread(lambda: cluster.restart("fast"))
    ctx.notes.append("fast restart done; immediate stop, down for the phase")
    await _thread(lambda: cluster.stop("immediate"))
    try:
        yield
    finally:
        with anyio.CancelScope(shield=True):
            await _thread(cluster.start)


@asynccontextmanager
async def failover(ctx: FaultContext) -> AsyncIterator[None]:
    """Primary stopped (immediate); at the end the standby is promoted, the proxy re-pointed."""
    primary, standby = ctx.primary, ctx.standby
    assert primary is not None
    assert standby is not None
    await _thread(lambda: primary.stop("immediate"))
    ctx.notes.append("primary stopped (immediate); standby promoted at the end of the phase")
    try:
        yield
    finally:
        with anyio.CancelScope(shield=True):
            await _thread(standby.promote)
            if ctx.proxy is not None:
                await ctx.proxy.set_upstream(ctx.proxy_name, f"127.0.0.1:{standby.port}")
            ctx.promoted(standby)


@asynccontextmanager
async def multihost_failover(ctx: FaultContext) -> AsyncIterator[None]:
    """Primary stopped (immediate), standby promoted at the end; the URL lists both hosts."""
    primary, standby = ctx.primary, ctx.standby
    assert primary is not None
    assert standby is not None
    await _thread(lambda: primary.stop("immediate"))
    ctx.notes.append("primary stopped (immediate); standby promoted; no proxy re-pointing")
    try:
        yield
    finally:
        with anyio.CancelScope(shield=True):
            await _thread(standby.promote)
            ctx.promoted(standby)


def _bouncer(ctx: FaultContext) -> PgBouncer:
    assert ctx.pgbouncer is not None, "scenario needs a PgBouncer"
    return ctx.pgbouncer


@asynccontextmanager
async def pgbouncer_restart(ctx: FaultContext) -> AsyncIterator[None]:
    """PgBouncer killed (SIGKILL), down for the phase, started again."""
    bouncer = _bouncer(ctx)
    await _thread(bouncer.kill)
    try:
        yield
    finally:
        with anyio.CancelScope(shield=True):
            await _thread(bouncer.start)


@asynccontextmanager
async def pgbouncer_pause(ctx: FaultContext) -> AsyncIterator[None]:
    """``PAUSE`` (clients wait for a server connection) for the phase, then ``RESUME``."""
    bouncer = _bouncer(ctx)
    async with anyio.create_task_group() as tg:
        # PAUSE returns once every server connection is released: do not block on it
        tg.start_soon(_thread, lambda: bouncer.console("PAUSE", timeout=30))
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                await _thread(lambda: bouncer.console("RESUME"))


@asynccontextmanager
async def pgbouncer_reconnect(ctx: FaultContext) -> AsyncIterator[None]:
    """``RECONNECT`` every 300 ms: server connections closed as soon as they are released."""
    bouncer, count = _bouncer(ctx), 0

    async def reconnect() -> None:
        nonlocal count
        await _thread(lambda: bouncer.console("RECONNECT"))
        count += 1

    async with every(ctx, 0.3, reconnect):
        yield
    ctx.notes.append(f"RECONNECT sent {count} time(s)")


@asynccontextmanager
async def pgbouncer_promotion(ctx: FaultContext) -> AsyncIterator[None]:
    """Behind PgBouncer: the primary is fenced read-only for the phase (its pooled
    connections answer 25006); at the end the standby is promoted, PgBouncer re-pointed
    (``RELOAD``) and ``RECONNECT`` replaces the pooled connections to the old primary."""
    primary, standby, bouncer = ctx.primary, ctx.standby, _bouncer(ctx)
    assert primary is not None
    assert standby is not None
    await _thread(lambda: primary.execute("ALTER SYSTEM SET default_transaction_read_only = on"))
    await _thread(lambda: primary.execute("SELECT pg_reload_conf()"))
    ctx.notes.append("old primary fenced read-only (25006 until the pooler reconnects)")
    try:
        yield
    finally:
        with anyio.CancelScope(shield=True):
            await _thread(standby.promote)
            await _thread(lambda: bouncer.repoint(standby.port))
            await _thread(lambda: bouncer.console("RECONNECT"))
            ctx.promoted(standby)
            ctx.notes.append("standby promoted, PgBouncer re-pointed (RELOAD) and RECONNECT")


def _namespace(ctx: FaultContext) -> NetNamespace:
    assert ctx.netns is not None, "scenario needs a network namespace"
    return ctx.netns


@asynccontextmanager
async def packet_black_hole(ctx: FaultContext) -> AsyncIterator[None]:
    """The namespace's end of the veth down: the peer stops acknowledging (no RST, no FIN)."""
    ns = _namespace(ctx)
    await _thread(lambda: ns.link(False))
    try:
        yield
    finally:
        with anyio.CancelScope(shield=True):
            await _thread(lambda: ns.link(True))


@asynccontextmanager
async def packet_loss(ctx: FaultContext) -> AsyncIterator[None]:
    """``tc netem`` 20 % packet loss on both ends of the veth."""
    ns = _namespace(ctx)
    await _thread(lambda: ns.netem(["loss", "20%"]))
    try:
        yield
    finally:
        with anyio.CancelScope(shield=True):
            await _thread(lambda: ns.netem(None))
