"""The fault proxy (embedded or external Toxiproxy) and the targets scenarios run against.

A target is what one scenario's workload connects to: the user's database through a proxy,
or private servers the engine starts for the scenario (a cluster, a standby, a PgBouncer) and
destroys afterwards. Nothing else is ever stopped or restarted.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import sqlalchemy
from sqlalchemy.engine import make_url

from resilient_db._errors import ConfigurationError
from resilient_db.chaos._admin import Admin, admin_dsn
from resilient_db.chaos._netns import RELAY_PORT, NetNamespace, netem_missing, netns_missing
from resilient_db.chaos._pgbouncer import PgBouncer, pgbouncer_missing
from resilient_db.chaos._scenarios import Scenario
from resilient_db.chaos._settings import Settings, check_loopback, redact
from resilient_db.testing import PgCluster, PgClusterError, find_pg_bindir
from resilient_db.toxiproxy import AsyncToxiproxyClient, ThreadedToxiproxyServer, ToxiproxyServer

__all__ = ["Environment", "Target"]

_CLUSTERS = ("cluster", "standby", "multihost", "pgbouncer", "pgbouncer_standby")
_TERMINATE_COUNT = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"


@dataclass(kw_only=True, slots=True)
class Target:
    """Where one scenario's workload connects, and how the engine reaches the servers."""

    admin: Admin
    engine_url: str
    direct_url: str
    proxy_name: str = ""
    primary: PgCluster | None = None
    standby: PgCluster | None = None
    pgbouncer: PgBouncer | None = None
    netns: NetNamespace | None = None

    async def sessions(self, app_name: str) -> int:
        """Open sessions of the workload: PgBouncer clients, or server backends."""
        if self.pgbouncer is not None:
            return await anyio.to_thread.run_sync(self.pgbouncer.clients)
        return int(await self.admin.ascalar(_TERMINATE_COUNT, (app_name,)))


def multihost_refusal(url: str) -> str | None:
    """Why the engine factory refuses a two-host URL, or ``None``."""
    from resilient_db.engine import create_async_engine

    try:
        engine = create_async_engine(url)
    except (ConfigurationError, ValueError, TypeError) as exc:
        return f"create_async_engine refuses multi-host URLs yet ({str(exc).splitlines()[0]})"
    del engine  # never connected: nothing to dispose
    return None


class Environment:
    """Owns the fault proxy for a run; makes a :class:`Target` per scenario."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.external = settings.toxiproxy_url is not None
        self._server: ThreadedToxiproxyServer | None = None
        self.client: AsyncToxiproxyClient | None = None
        self.proxy_host = "127.0.0.1"
        self.proxy_name = settings.proxy_name
        self.info: dict[str, Any] = {}
        self.run_id = secrets.token_hex(3)
        self._namespaces = 0

    async def __aenter__(self) -> Environment:
        s = self.settings
        check_loopback(s.database_url, allow_remote=s.allow_remote)
        if s.toxiproxy_url is not None:
            self.client = AsyncToxiproxyClient(s.toxiproxy_url, timeout=10.0)
            self.proxy_host = urlsplit(self.client.url).hostname or "127.0.0.1"
            await self._clean(s.proxy_name)
        else:
            server = ToxiproxyServer.in_thread(seed=s.seed)
            await anyio.to_thread.run_sync(server.start)
            self._server = server
            self.client = AsyncToxiproxyClient(server.url, timeout=10.0)
            self.proxy_name = f"chaos_{self.run_id}"
            db = make_url(s.database_url)
            await self.client.create_proxy(
                name=self.proxy_name, upstream=f"{db.host or '127.0.0.1'}:{db.port or 5432}"
            )
        self.info = {
            "run_id": self.run_id,
            "toxiproxy": "external" if self.external else "embedded",
            "toxiproxy_url": self.client.url,
            "toxiproxy_version": await self.client.version(),
            "database": redact(s.database_url),
            "driver": s.driver_name,
            "server_version": await Admin(admin_dsn(s.database_url)).ascalar("SHOW server_version"),
            "sqlalchemy": sqlalchemy.__version__,
            "python": sys.version.split()[0],
        }
        return self

    async def __aexit__(self, *exc: object) -> None:
        with anyio.CancelScope(shield=True):
            if self.client is not None and self.external:
                await self._clean(self.settings.proxy_name)
            if self._server is not None:
                await anyio.to_thread.run_sync(self._server.close)

    async def _clean(self, name: str) -> None:
        assert self.client is not None
        for toxic in await self.client.toxics(name):
            await self.client.remove_toxic(name, toxic.name)
        await self.client.enable(name)

    def _via(self, url: str, port: int, host: str | None = None) -> str:
        u = make_url(url).set(
            drivername=make_url(self.settings.database_url).drivername,
            host=host or self.proxy_host,
            port=port,
        )
        return u.render_as_string(hide_password=False)

    def skip_reason(self, scenario: Scenario) -> str | None:
        """Why ``scenario`` cannot run here (one line), or ``None``."""
        if scenario.needs in _CLUSTERS:
            try:
                find_pg_bindir()
            except PgClusterError as exc:
                return f"no local PostgreSQL server binaries ({str(exc).splitlines()[0]})"
        if scenario.needs.startswith("pgbouncer"):
            return pgbouncer_missing()
        if scenario.processes and self.settings.workload_spec is None:
            return "fleet scenarios need the workload as module:factory (worker processes)"
        if scenario.needs == "multihost":
            url = self._multihost_url(5432, 5433)
            return multihost_refusal(url)
        if scenario.needs == "netns":
            return netns_missing()
        if scenario.needs == "netns_netem":
            return netem_missing()
        return None

    def _multihost_url(self, p1: int, p2: int) -> str:
        driver = make_url(self.settings.database_url).drivername
        return (
            f"{driver}://postgres@/postgres?host=127.0.0.1:{p1}&host=127.0.0.1:{p2}"
            "&target_session_attrs=read-write"
        )

    @asynccontextmanager
    async def target(self, scenario: Scenario) -> AsyncIterator[Target]:
        """The target of ``scenario`` (private servers made here and destroyed after)."""
        assert self.client is not None
        if scenario.needs.startswith("netns"):
            async with self._netns_target(scenario) as target:
                yield target
            return
        if scenario.needs not in _CLUSTERS:
            await self._clean(self.proxy_name)
            info = await self.client.get_proxy(self.proxy_name)
            url = self.settings.database_url
            yield Target(
                admin=Admin(admin_dsn(url)),
                engine_url=self._via(url, info.listen_port),
                direct_url=url,
                proxy_name=self.proxy_name,
            )
            return
        async with AsyncExitStack() as stack:
            primary, standby = await _clusters(stack, scenario.needs)
            yield await self._cluster_target(stack, scenario, primary, standby)

    @asynccontextmanager
    async def _netns_target(self, scenario: Scenario) -> AsyncIterator[Target]:
        assert self.client is not None
        url = self.settings.database_url
        db = make_url(url)
        self._namespaces += 1
        ns = NetNamespace(self.run_id, self._namespaces)
        async with AsyncExitStack() as stack:
            stack.push_async_callback(_in_thread(ns.destroy))
            await anyio.to_thread.run_sync(ns.create)
            name = f"chaos_{self.run_id}_{scenario.name}"
            info = await self.client.create_proxy(
                name=name,
                upstream=f"{db.host or '127.0.0.1'}:{db.port or 5432}",
                listen=f"{ns.host_ip}:0",
            )
            stack.push_async_callback(self.client.delete_proxy, name)
            await anyio.to_thread.run_sync(ns.start_relay, f"{ns.host_ip}:{info.listen_port}")
            yield Target(
                admin=Admin(admin_dsn(url)),
                engine_url=self._via(url, RELAY_PORT, ns.ns_ip),
                direct_url=url,
                netns=ns,
            )

    async def _cluster_target(
        self, stack: AsyncExitStack, scenario: Scenario, primary: PgCluster, standby: Any
    ) -> Target:
        assert self.client is not None
        direct = self._via(primary.url(), primary.port, "127.0.0.1")
        base = Target(admin=Admin(primary.dsn), engine_url="", direct_url=direct)
        base.primary, base.standby = primary, standby
        if scenario.needs == "multihost":
            base.engine_url = self._multihost_url(primary.port, standby.port)
        elif scenario.needs.startswith("pgbouncer"):
            bouncer = PgBouncer(upstream=primary.port)
            stack.push_async_callback(_in_thread(bouncer.destroy))
            await anyio.to_thread.run_sync(bouncer.start)
            base.pgbouncer = bouncer
            base.engine_url = self._via(primary.url(), bouncer.port, "127.0.0.1")
        else:
            name = f"chaos_{self.run_id}_{scenario.name}"
            info = await self.client.create_proxy(name=name, upstream=f"127.0.0.1:{primary.port}")
            stack.push_async_callback(self.client.delete_proxy, name)
            base.proxy_name = name
            base.engine_url = self._via(primary.url(), info.listen_port)
        return base


def _in_thread(fn: Callable[[], object]) -> Callable[[], Awaitable[object]]:
    async def run() -> object:
        with anyio.CancelScope(shield=True):
            result = await anyio.to_thread.run_sync(fn)
        return result

    return run


async def _clusters(stack: AsyncExitStack, needs: str) -> tuple[PgCluster, PgCluster | None]:
    def make() -> tuple[PgCluster, PgCluster | None]:
        primary = PgCluster.create(settings={"max_connections": "100"})
        try:
            primary.start()
            standby = None
            if needs in ("standby", "multihost", "pgbouncer_standby"):
                standby = primary.create_standby()
                standby.start()
                primary.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
                primary.execute("SELECT pg_reload_conf()")
                primary.wait_for_replay(standby)
        except BaseException:
            primary.destroy()
            raise
        return primary, standby

    primary, standby = await anyio.to_thread.run_sync(make)
    stack.push_async_callback(_in_thread(primary.destroy))
    if standby is not None:
        stack.push_async_callback(_in_thread(standby.destroy))
    return primary, standby
