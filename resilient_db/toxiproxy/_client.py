"""A client for the Toxiproxy HTTP API (embedded or real server), sync and async.

It is a thin layer over ``toxiproxy-python`` 0.1.1 (whose API layer carries every request
when it is installed) that fills that library's gaps: a per-instance API address instead of
class globals, a timeout on every request, errors that say what failed (never a ``KeyError``
on a 500), changing a proxy's upstream or listen address (failover), updating a toxic, and
async use. :meth:`ToxiproxyClient.legacy` hands out a ``toxiproxy.Toxiproxy`` object pointed
at this client's server for code written against that library.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import anyio.to_thread

from resilient_db._errors import ConfigurationError, ResilientDBError

__all__ = [
    "AsyncToxiproxyClient",
    "ProxyInfo",
    "ToxicInfo",
    "ToxiproxyAPIError",
    "ToxiproxyClient",
]

_LEGACY_LOCK = threading.Lock()


def _path(proxy: str, *rest: str) -> str:
    """An API path under ``/proxies/<proxy>``, every segment URL-quoted."""
    return "/proxies/" + "/".join(quote(part, safe="") for part in (proxy, *rest))


def _api_consumer() -> Any:
    """toxiproxy-python's ``APIConsumer`` class, or None when the library is not installed."""
    try:
        from toxiproxy.api import APIConsumer
    except ImportError:
        return None
    return APIConsumer


class ToxiproxyAPIError(ResilientDBError):
    """The Toxiproxy API answered with an error status, or could not be reached.

    ``status`` is the HTTP status (0 when the server could not be reached), ``message`` the
    server's error text, ``method`` and ``path`` the request.
    """

    def __init__(self, *, status: int, message: str, method: str, path: str) -> None:
        self.status = status
        self.message = message
        self.method = method
        self.path = path
        super().__init__(f"Toxiproxy API {method} {path} failed ({status}): {message}")


@dataclass(frozen=True, kw_only=True, slots=True)
class ToxicInfo:
    """A toxic as the API reports it."""

    name: str
    type: str
    stream: str
    toxicity: float
    attributes: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ToxicInfo:
        """Build from the API's JSON object."""
        return cls(
            name=data["name"],
            type=data["type"],
            stream=data.get("stream", "downstream"),
            toxicity=float(data.get("toxicity", 1.0)),
            attributes=dict(data.get("attributes") or {}),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class ProxyInfo:
    """A proxy as the API reports it (``listen`` carries the real bound port)."""

    name: str
    listen: str
    upstream: str
    enabled: bool
    toxics: tuple[ToxicInfo, ...] = ()

    @property
    def listen_host(self) -> str:
        """Host part of :attr:`listen` (brackets of IPv6 literals removed)."""
        host = self.listen.rpartition(":")[0]
        return host[1:-1] if host.startswith("[") else host

    @property
    def listen_port(self) -> int:
        """Port part of :attr:`listen`."""
        return int(self.listen.rpartition(":")[2])

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProxyInfo:
        """Build from the API's JSON object."""
        return cls(
            name=data["name"],
            listen=data["listen"],
            upstream=data["upstream"],
            enabled=bool(data["enabled"]),
            toxics=tuple(ToxicInfo.from_json(t) for t in data.get("toxics") or ()),
        )


class ToxiproxyClient:
    """A blocking client bound to one Toxiproxy API (``http://host:port``).

    Every request has a ``timeout`` (seconds). Errors raise :class:`ToxiproxyAPIError`.
    """

    def __init__(self, url: str = "http://127.0.0.1:8474", *, timeout: float = 10.0) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname:
            raise ConfigurationError(
                f"Toxiproxy url must look like http://host:port, got {url!r}; "
                "the API has no TLS, use http://"
            )
        if not timeout > 0:
            raise ConfigurationError(f"timeout must be > 0 seconds, got {timeout!r}")
        self.host = parts.hostname
        self.port = parts.port or 8474
        self.timeout = timeout
        self.url = f"http://{parts.netloc}"

    def __repr__(self) -> str:
        return f"ToxiproxyClient({self.url!r}, timeout={self.timeout})"

    # -- transport -----------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request; the decoded JSON answer (``None`` for 204).

        Requests go through toxiproxy-python's own API layer (``toxiproxy.api.APIConsumer``)
        when that library is installed (the ``chaos`` and ``test`` extras), pointed at this
        client's server and given this client's timeout; otherwise through the standard
        library. Both raise :class:`ToxiproxyAPIError` for every failure.
        """
        if _api_consumer() is not None:
            status, data = self._via_toxiproxy_python(method, path, body)
        else:
            status, data = self._via_http_client(method, path, body)
        decoded: Any = None
        if data:
            try:
                decoded = json.loads(data)
            except ValueError:
                decoded = data.decode("utf-8", "replace").strip()
        if status >= 400:
            message = decoded.get("error") if isinstance(decoded, dict) else decoded
            raise ToxiproxyAPIError(
                status=status, message=str(message or ""), method=method, path=path
            )
        return decoded

    def _unreachable(self, method: str, path: str, exc: BaseException) -> ToxiproxyAPIError:
        return ToxiproxyAPIError(
            status=0,
            message=f"cannot reach the Toxiproxy API at {self.url}: {exc}",
            method=method,
            path=path,
        )

    def _via_toxiproxy_python(self, method: str, path: str, body: Any) -> tuple[int, bytes]:
        import requests
        from toxiproxy import exceptions as tp_errors

        consumer = _api_consumer()
        assert consumer is not None
        # The library's API layer speaks GET, POST and DELETE; the Toxiproxy API takes POST
        # wherever it takes PATCH (proxy and toxic updates).
        verb = "post" if method in ("POST", "PATCH") else method.lower()
        kwargs: dict[str, Any] = {"timeout": self.timeout}
        if body is not None:
            kwargs["json"] = body
        known = {
            tp_errors.ProxyExists: 409,
            tp_errors.NotFound: 404,
            tp_errors.InvalidToxic: 400,
        }
        with _LEGACY_LOCK:  # its address lives in class attributes
            saved = (consumer.host, consumer.port)
            consumer.host, consumer.port = self.host, self.port
            try:
                response = getattr(consumer, verb)(path, **kwargs)
            except tuple(known) as exc:
                content = exc.args[0] if exc.args else b""
                raw = content if isinstance(content, bytes) else str(content).encode()
                return known[type(exc)], raw
            except requests.RequestException as exc:
                raise self._unreachable(method, path, exc) from exc
            finally:
                consumer.host, consumer.port = saved
        return int(response.status_code), bytes(response.content)

    def _via_http_client(self, method: str, path: str, body: Any) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Accept": "application/json"}
            if payload is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(method, path, exc) from exc
        finally:
            conn.close()

    # -- server --------------------------------------------------------------------------
    def version(self) -> str:
        """The server's version string."""
        return str(self.request("GET", "/version")["version"])

    def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        self.request("POST", "/reset")

    def proxies(self) -> dict[str, ProxyInfo]:
        """Every proxy by name."""
        data = self.request("GET", "/proxies")
        return {name: ProxyInfo.from_json(p) for name, p in data.items()}

    def populate(self, proxies: Sequence[Mapping[str, Any]]) -> list[ProxyInfo]:
        """Create or replace proxies (same name, listen and upstream: left as they are)."""
        data = self.request("POST", "/populate", [dict(p) for p in proxies])
        return [ProxyInfo.from_json(p) for p in data["proxies"]]

    # -- proxies -------------------------------------------------------------------------
    def create_proxy(
        self, *, name: str, upstream: str, listen: str = "127.0.0.1:0", enabled: bool = True
    ) -> ProxyInfo:
        """Create a proxy; ``listen`` port 0 picks a free port (see ``ProxyInfo.listen``)."""
        body = {"name": name, "upstream": upstream, "listen": listen, "enabled": enabled}
        return ProxyInfo.from_json(self.request("POST", "/proxies", body))

    def get_proxy(self, name: str) -> ProxyInfo:
        """One proxy (404 → :class:`ToxiproxyAPIError`)."""
        return ProxyInfo.from_json(self.request("GET", _path(name)))

    def update_proxy(
        self,
        name: str,
        *,
        upstream: str | None = None,
        listen: str | None = None,
        enabled: bool | None = None,
    ) -> ProxyInfo:
        """Change a proxy. A new upstream or listen address closes every open connection."""
        body: dict[str, Any] = {}
        if upstream is not None:
            body["upstream"] = upstream
        if listen is not None:
            body["listen"] = listen
        if enabled is not None:
            body["enabled"] = enabled
        return ProxyInfo.from_json(self.request("PATCH", _path(name), body))

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
        self.request("DELETE", _path(name))

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
        data = self.request("GET", _path(proxy, "toxics"))
        return [ToxicInfo.from_json(t) for t in data]

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
        body: dict[str, Any] = {
            "type": type,
            "stream": stream,
            "toxicity": toxicity,
            "attributes": dict(attributes or {}),
        }
        if name is not None:
            body["name"] = name
        path = _path(proxy, "toxics")
        return ToxicInfo.from_json(self.request("POST", path, body))

    def get_toxic(self, proxy: str, name: str) -> ToxicInfo:
        """One toxic."""
        path = _path(proxy, "toxics", name)
        return ToxicInfo.from_json(self.request("GET", path))

    def update_toxic(
        self,
        proxy: str,
        name: str,
        *,
        attributes: Mapping[str, int] | None = None,
        toxicity: float | None = None,
    ) -> ToxicInfo:
        """Merge new attributes / toxicity into a toxic; open connections see it at once."""
        body: dict[str, Any] = {}
        if attributes is not None:
            body["attributes"] = dict(attributes)
        if toxicity is not None:
            body["toxicity"] = toxicity
        path = _path(proxy, "toxics", name)
        return ToxicInfo.from_json(self.request("PATCH", path, body))

    def remove_toxic(self, proxy: str, name: str) -> None:
        """Remove a toxic (removing ``timeout`` closes the connections it held)."""
        path = _path(proxy, "toxics", name)
        self.request("DELETE", path)

    @contextmanager
    def toxic(
        self,
        proxy: str,
        *,
        type: str,
        name: str | None = None,
        stream: str = "downstream",
        toxicity: float = 1.0,
        attributes: Mapping[str, int] | None = None,
    ) -> Iterator[ToxicInfo]:
        """Add a toxic for the ``with`` block; it is removed even on error."""
        info = self.add_toxic(
            proxy,
            type=type,
            name=name,
            stream=stream,
            toxicity=toxicity,
            attributes=attributes,
        )
        try:
            yield info
        finally:
            try:
                self.remove_toxic(proxy, info.name)
            except ToxiproxyAPIError as exc:
                if exc.status != 404:  # already gone (deleted proxy, reset)
                    raise

    # -- toxiproxy-python ------------------------------------------------------------------
    @contextmanager
    def legacy(self) -> Iterator[Any]:
        """A ``toxiproxy.Toxiproxy`` (toxiproxy-python) aimed at this server.

        That library keeps the address in class attributes, so this holds a process-wide lock
        for the ``with`` block: do not nest it or keep the object beyond the block.
        """
        try:
            from toxiproxy.api import APIConsumer
            from toxiproxy.server import Toxiproxy
        except ImportError as exc:  # pragma: no cover - optional dependency
            raise ConfigurationError(
                "toxiproxy-python is not installed; pip install 'resilient-db[chaos]'"
            ) from exc
        with _LEGACY_LOCK:
            saved = (APIConsumer.host, APIConsumer.port)
            APIConsumer.host, APIConsumer.port = self.host, self.port
            try:
                yield Toxiproxy()
            finally:
                APIConsumer.host, APIConsumer.port = saved


class AsyncToxiproxyClient:
    """The async twin of :class:`ToxiproxyClient` (each call runs in a worker thread)."""

    def __init__(self, url: str = "http://127.0.0.1:8474", *, timeout: float = 10.0) -> None:
        self.sync = ToxiproxyClient(url, timeout=timeout)
        self.url = self.sync.url

    def __repr__(self) -> str:
        return f"AsyncToxiproxyClient({self.url!r}, timeout={self.sync.timeout})"

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request; the decoded JSON answer."""
        return await anyio.to_thread.run_sync(self.sync.request, method, path, body)

    async def version(self) -> str:
        """The server's version string."""
        return await anyio.to_thread.run_sync(self.sync.version)

    async def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        await anyio.to_thread.run_sync(self.sync.reset)

    async def proxies(self) -> dict[str, ProxyInfo]:
        """Every proxy by name."""
        return await anyio.to_thread.run_sync(self.sync.proxies)

    async def populate(self, proxies: Sequence[Mapping[str, Any]]) -> list[ProxyInfo]:
        """Create or replace proxies."""
        return await anyio.to_thread.run_sync(self.sync.populate, proxies)

    async def create_proxy(
        self, *, name: str, upstream: str, listen: str = "127.0.0.1:0", enabled: bool = True
    ) -> ProxyInfo:
        """Create a proxy."""
        return await anyio.to_thread.run_sync(
            lambda: self.sync.create_proxy(
                name=name, upstream=upstream, listen=listen, enabled=enabled
            )
        )

    async def get_proxy(self, name: str) -> ProxyInfo:
        """One proxy."""
        return await anyio.to_thread.run_sync(self.sync.get_proxy, name)

    async def update_proxy(
        self,
        name: str,
        *,
        upstream: str | None = None,
        listen: str | None = None,
        enabled: bool | None = None,
    ) -> ProxyInfo:
        """Change a proxy (a new upstream/listen drops open connections)."""
        return await anyio.to_thread.run_sync(
            lambda: self.sync.update_proxy(name, upstream=upstream, listen=listen, enabled=enabled)
        )

    async def set_upstream(self, name: str, upstream: str) -> ProxyInfo:
        """Point a proxy at another server (failover)."""
        return await self.update_proxy(name, upstream=upstream)

    async def enable(self, name: str) -> ProxyInfo:
        """Accept connections again."""
        return await self.update_proxy(name, enabled=True)

    async def disable(self, name: str) -> ProxyInfo:
        """Refuse new connections and drop open ones."""
        return await self.update_proxy(name, enabled=False)

    async def delete_proxy(self, name: str) -> None:
        """Delete a proxy."""
        await anyio.to_thread.run_sync(self.sync.delete_proxy, name)

    async def toxics(self, proxy: str) -> list[ToxicInfo]:
        """Toxics of a proxy."""
        return await anyio.to_thread.run_sync(self.sync.toxics, proxy)

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
        """Add a toxic."""
        return await anyio.to_thread.run_sync(
            lambda: self.sync.add_toxic(
                proxy,
                type=type,
                name=name,
                stream=stream,
                toxicity=toxicity,
                attributes=attributes,
            )
        )

    async def update_toxic(
        self,
        proxy: str,
        name: str,
        *,
        attributes: Mapping[str, int] | None = None,
        toxicity: float | None = None,
    ) -> ToxicInfo:
        """Merge attributes / toxicity into a toxic."""
        return await anyio.to_thread.run_sync(
            lambda: self.sync.update_toxic(proxy, name, attributes=attributes, toxicity=toxicity)
        )

    async def remove_toxic(self, proxy: str, name: str) -> None:
        """Remove a toxic."""
        await anyio.to_thread.run_sync(self.sync.remove_toxic, proxy, name)
