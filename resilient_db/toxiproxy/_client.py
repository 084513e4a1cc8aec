"""The Toxiproxy clients: :class:`ToxiproxyClient` (blocking) and its async twin.

Every method of one has a twin of the same name and arguments in the other (a test holds them
to it); both build their requests with the shared ``Ops`` and send them through the shared
transport of ``ClientBase``. No lock is held by either, so calls may run concurrently from any
number of threads or tasks, and inside :meth:`ToxiproxyClient.legacy`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Required, TypedDict, Unpack

from resilient_db.toxiproxy._base import ClientBase, Ops, ProxyInfo, ToxicInfo, ToxiproxyAPIError
from resilient_db.toxiproxy._legacy import legacy_toxiproxy

__all__ = ["AsyncToxiproxyClient", "ToxiproxyClient"]


class ToxicSpec(TypedDict, total=False):
    """The keyword arguments of ``add_toxic`` (its defaults apply), which ``toxic`` forwards."""

    type: Required[str]
    name: str | None
    stream: str
    toxicity: float
    attributes: Mapping[str, int] | None


def _gone(exc: ToxiproxyAPIError) -> None:
    if exc.status != 404:  # already gone (deleted proxy, reset)
        raise exc


class ToxiproxyClient(ClientBase):
    """A blocking client bound to one Toxiproxy API (``http://host:port``).

    Every request has a ``timeout`` (seconds). Errors raise :class:`ToxiproxyAPIError`.
    """

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request; the decoded JSON answer (``None`` for an empty body)."""
        return self._call(Ops.raw(method, path, body))

    # -- server --------------------------------------------------------------------------
    def version(self) -> str:
        """The server's version string."""
        return self._call(Ops.version())

    def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        self._call(Ops.reset())

    def proxies(self) -> dict[str, ProxyInfo]:
        """Every proxy by name."""
        return self._call(Ops.proxies())

    def populate(self, proxies: Sequence[Mapping[str, Any]]) -> list[ProxyInfo]:
        """Create or replace proxies (same name, listen and upstream: left as they are)."""
        return self._call(Ops.populate(proxies))

    # -- proxies -------------------------------------------------------------------------
    def create_proxy(
        self, *, name: str, upstream: str, listen: str = "127.0.0.1:0", enabled: bool = True
    ) -> ProxyInfo:
        """Create a proxy; ``listen`` port 0 picks a free port (see ``ProxyInfo.listen``)."""
        return self._call(Ops.create_proxy(name, upstream, listen, enabled))

    def get_proxy(self, name: str) -> ProxyInfo:
        """One proxy (404 → :class:`ToxiproxyAPIError`)."""
        return self._call(Ops.get_proxy(name))

    def update_proxy(
        self,
        name: str,
        *,
        upstream: str | None = None,
        listen: str | None = None,
        enabled: bool | None = None,
    ) -> ProxyInfo:
        """Change a proxy. A new upstream or listen address closes every open connection."""
        return self._call(Ops.update_proxy(name, upstream, listen, enabled))

    def set_upstream(self, name: str, upstream: str) -> ProxyInfo:
        """Point a proxy at another server (failover); open connections are dropped."""
        return self.update_proxy(name, upstream=upstream)

    def enable(self, name: str) -> ProxyInfo:
        """Accept connections again, on the same port."""
        return self.update_proxy(name, enabled=True)

    def disable(self, name: str) -> ProxyInfo:
        """Refuse new connections and drop open ones."""
        return self.update_proxy(name, enabled=False)

    def delete_proxy(self, name: str) -> None:
        """Delete a proxy, closing its connections and releasing its port."""
        self._call(Ops.delete_proxy(name))

    @contextmanager
    def down(self, name: str) -> Iterator[None]:
        """Disable the proxy for the ``with`` block; it is re-enabled even on error."""
        self.disable(name)
        try:
            yield
        finally:
            self.enable(name)

    # -- toxics --------------------------------------------------------------------------
    def toxics(self, proxy: str) -> list[ToxicInfo]:
        """Toxics of a proxy."""
        return self._call(Ops.toxics(proxy))

    def add_toxic(
        self,
        proxy: str,
        *,
        type: str,
        name: str | None = None,
        stream: str = "downstream",
        toxicity: float = 1.0,
        attributes: Mapping[str, int] | None = None,
    ) -> ToxicInfo:
        """Add a toxic (``name`` defaults to ``<type>_<stream>``)."""
        return self._call(Ops.add_toxic(proxy, type, name, stream, toxicity, attributes))

    def get_toxic(self, proxy: str, name: str) -> ToxicInfo:
        """One toxic."""
        return self._call(Ops.get_toxic(proxy, name))

    def update_toxic(
        self,
        proxy: str,
        name: str,
        *,
        attributes: Mapping[str, int] | None = None,
        toxicity: float | None = None,
    ) -> ToxicInfo:
        """Merge new attributes / toxicity into a toxic; open connections see it at once."""
        return self._call(Ops.update_toxic(proxy, name, attributes, toxicity))

    def remove_toxic(self, proxy: str, name: str) -> None:
        """Remove a toxic (removing ``timeout`` closes the connections it held)."""
        self._call(Ops.remove_toxic(proxy, name))

    @contextmanager
    def toxic(self, proxy: str, **spec: Unpack[ToxicSpec]) -> Iterator[ToxicInfo]:
        """:meth:`add_toxic` for the ``with`` block; the toxic is removed even on error."""
        info = self.add_toxic(proxy, **spec)
        try:
            yield info
        finally:
            try:
                self.remove_toxic(proxy, info.name)
            except ToxiproxyAPIError as exc:
                _gone(exc)

    # -- toxiproxy-python ----------------------------------------------------------------
    @contextmanager
    def legacy(self) -> Iterator[Any]:
        """A toxiproxy-python ``Toxiproxy`` object aimed at this client's server.

        It comes from a private copy of that library's modules bound to this address and
        timeout (the library's own classes are left alone), so no lock is held: other calls,
        other clients and nested ``legacy()`` blocks work inside the block.
        """
        yield legacy_toxiproxy(self.host, self.port, self.timeout)


class AsyncToxiproxyClient(ClientBase):
    """The async twin of :class:`ToxiproxyClient` (requests run in a worker thread)."""

    @property
    def sync(self) -> ToxiproxyClient:
        """A blocking client for the same server and timeout."""
        return ToxiproxyClient(self.url, timeout=self.timeout)

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request; the decoded JSON answer (``None`` for an empty body)."""
        return await self._acall(Ops.raw(method, path, body))

    # -- server --------------------------------------------------------------------------
    async def version(self) -> str:
        """The server's version string."""
        return await self._acall(Ops.version())

    async def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        await self._acall(Ops.reset())

    async def proxies(self) -> dict[str, ProxyInfo]:
        """Every proxy by name."""
        return await self._acall(Ops.proxies())

    async def populate(self, proxies: Sequence[Mapping[str, Any]]) -> list[ProxyInfo]:
        """Create or replace proxies (same name, listen and upstream: left as they are)."""
        return await self._acall(Ops.populate(proxies))

    # -- proxies -------------------------------------------------------------------------
    async def create_proxy(
        self, *, name: str, upstream: str, listen: str = "127.0.0.1:0", enabled: bool = True
    ) -> ProxyInfo:
        """Create a proxy; ``listen`` port 0 picks a free port (see ``ProxyInfo.listen``)."""
        return await self._acall(Ops.create_proxy(name, upstream, listen, enabled))

    async def get_proxy(self, name: str) -> ProxyInfo:
        """One proxy (404 → :class:`ToxiproxyAPIError`)."""
        return await self._acall(Ops.get_proxy(name))

    async def update_proxy(
        self,
        name: str,
        *,
        upstream: str | None = None,
        listen: str | None = None,
        enabled: bool | None = None,
    ) -> ProxyInfo:
        """Change a proxy. A new upstream or listen address closes every open connection."""
        return await self._acall(Ops.update_proxy(name, upstream, listen, enabled))

    async def set_upstream(self, name: str, upstream: str) -> ProxyInfo:
        """Point a proxy at another server (failover); open connections are dropped."""
        return await self.update_proxy(name, upstream=upstream)

    async def enable(self, name: str) -> ProxyInfo:
        """Accept connections again, on the same port."""
        return await self.update_proxy(name, enabled=True)

    async def disable(self, name: str) -> ProxyInfo:
        """Refuse new connections and drop open ones."""
        return await self.update_proxy(name, enabled=False)

    async def delete_proxy(self, name: str) -> None:
        """Delete a proxy, closing its connections and releasing its port."""
        await self._acall(Ops.delete_proxy(name))

    @asynccontextmanager
    async def down(self, name: str) -> AsyncIterator[None]:
        """Disable the proxy for the ``async with`` block; it is re-enabled even on error."""
        await self.disable(name)
        try:
            yield
        finally:
            await self.enable(name)

    # -- toxics --------------------------------------------------------------------------
    async def toxics(self, proxy: str) -> list[ToxicInfo]:
        """Toxics of a proxy."""
        return await self._acall(Ops.toxics(proxy))

    async def add_toxic(
        self,
        proxy: str,
        *,
        type: str,
        name: str | None = None,
        stream: str = "downstream",
        toxicity: float = 1.0,
        attributes: Mapping[str, int] | None = None,
    ) -> ToxicInfo:
        """Add a toxic (``name`` defaults to ``<type>_<stream>``)."""
        return await self._acall(Ops.add_toxic(proxy, type, name, stream, toxicity, attributes))

    async def get_toxic(self, proxy: str, name: str) -> ToxicInfo:
        """One toxic."""
        return await self._acall(Ops.get_toxic(proxy, name))

    async def update_toxic(
        self,
        proxy: str,
        name: str,
        *,
        attributes: Mapping[str, int] | None = None,
        toxicity: float | None = None,
    ) -> ToxicInfo:
        """Merge new attributes / toxicity into a toxic; open connections see it at once."""
        return await self._acall(Ops.update_toxic(proxy, name, attributes, toxicity))

    async def remove_toxic(self, proxy: str, name: str) -> None:
        """Remove a toxic (removing ``timeout`` closes the connections it held)."""
        await self._acall(Ops.remove_toxic(proxy, name))

    @asynccontextmanager
    async def toxic(self, proxy: str, **spec: Unpack[ToxicSpec]) -> AsyncIterator[ToxicInfo]:
        """:meth:`add_toxic` for the ``async with`` block; the toxic is removed even on error."""
        info = await self.add_toxic(proxy, **spec)
        try:
            yield info
        finally:
            try:
                await self.remove_toxic(proxy, info.name)
            except ToxiproxyAPIError as exc:
                _gone(exc)

    # -- toxiproxy-python ----------------------------------------------------------------
    @contextmanager
    def legacy(self) -> Iterator[Any]:
        """A toxiproxy-python ``Toxiproxy`` object (blocking calls) aimed at this server."""
        yield legacy_toxiproxy(self.host, self.port, self.timeout)
