"""What the Toxiproxy clients share: infos, errors, every request, one transport.

Both clients (``_client``) share one base: the address and timeout of the instance, one
transport (the standard library's ``http.client``, a connection per request, so concurrent
calls never wait for each other and no lock is held), the decoding of answers and errors, and
the definition of every request (:class:`Ops`). The async client runs the same transport in a
worker thread, so it works under any anyio backend.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlsplit

import anyio.to_thread

from resilient_db._errors import ResilientDBError
from resilient_db._validate import config_error

__all__ = ["ClientBase", "Ops", "ProxyInfo", "ToxicInfo", "ToxiproxyAPIError"]

T = TypeVar("T")


def _path(proxy: str, *rest: str) -> str:
    """An API path under ``/proxies/<proxy>``, every segment URL-quoted."""
    return "/proxies/" + "/".join(quote(part, safe="") for part in (proxy, *rest))


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


@dataclass(frozen=True, slots=True)
class _Call(Generic[T]):
    """One API request and how to read its answer."""

    method: str
    path: str
    body: Any
    read: Callable[[Any], T]


def _none(data: Any) -> None:
    return None


def _proxies(data: Any) -> dict[str, ProxyInfo]:
    return {name: ProxyInfo.from_json(p) for name, p in data.items()}


def _populated(data: Any) -> list[ProxyInfo]:
    return [ProxyInfo.from_json(p) for p in data.get("proxies") or ()]


def _toxics(data: Any) -> list[ToxicInfo]:
    return [ToxicInfo.from_json(t) for t in data or ()]


class Ops:
    """Every API request, defined once for both clients."""

    @staticmethod
    def raw(method: str, path: str, body: Any) -> _Call[Any]:
        return _Call(method, path, body, lambda d: d)

    @staticmethod
    def version() -> _Call[str]:
        return _Call("GET", "/version", None, lambda d: str(d["version"]))

    @staticmethod
    def reset() -> _Call[None]:
        return _Call("POST", "/reset", None, _none)

    @staticmethod
    def proxies() -> _Call[dict[str, ProxyInfo]]:
        return _Call("GET", "/proxies", None, _proxies)

    @staticmethod
    def populate(proxies: Sequence[Mapping[str, Any]]) -> _Call[list[ProxyInfo]]:
        return _Call("POST", "/populate", [dict(p) for p in proxies], _populated)

    @staticmethod
    def create_proxy(name: str, upstream: str, listen: str, enabled: bool) -> _Call[ProxyInfo]:
        body = {"name": name, "upstream": upstream, "listen": listen, "enabled": enabled}
        return _Call("POST", "/proxies", body, ProxyInfo.from_json)

    @staticmethod
    def get_proxy(name: str) -> _Call[ProxyInfo]:
        return _Call("GET", _path(name), None, ProxyInfo.from_json)

    @staticmethod
    def update_proxy(
        name: str, upstream: str | None, listen: str | None, enabled: bool | None
    ) -> _Call[ProxyInfo]:
        given = {"upstream": upstream, "listen": listen, "enabled": enabled}
        body = {k: v for k, v in given.items() if v is not None}
        return _Call("PATCH", _path(name), body, ProxyInfo.from_json)

    @staticmethod
    def delete_proxy(name: str) -> _Call[None]:
        return _Call("DELETE", _path(name), None, _none)

    @staticmethod
    def toxics(proxy: str) -> _Call[list[ToxicInfo]]:
        return _Call("GET", _path(proxy, "toxics"), None, _toxics)

    @staticmethod
    def add_toxic(
        proxy: str,
        type: str,
        name: str | None,
        stream: str,
        toxicity: float,
        attributes: Mapping[str, int] | None,
    ) -> _Call[ToxicInfo]:
        body: dict[str, Any] = {
            "type": type,
            "stream": stream,
            "toxicity": toxicity,
            "attributes": dict(attributes or {}),
        }
        if name is not None:
            body["name"] = name
        return _Call("POST", _path(proxy, "toxics"), body, ToxicInfo.from_json)

    @staticmethod
    def get_toxic(proxy: str, name: str) -> _Call[ToxicInfo]:
        return _Call("GET", _path(proxy, "toxics", name), None, ToxicInfo.from_json)

    @staticmethod
    def update_toxic(
        proxy: str, name: str, attributes: Mapping[str, int] | None, toxicity: float | None
    ) -> _Call[ToxicInfo]:
        body: dict[str, Any] = {}
        if attributes is not None:
            body["attributes"] = dict(attributes)
        if toxicity is not None:
            body["toxicity"] = toxicity
        return _Call("PATCH", _path(proxy, "toxics", name), body, ToxicInfo.from_json)

    @staticmethod
    def remove_toxic(proxy: str, name: str) -> _Call[None]:
        return _Call("DELETE", _path(proxy, "toxics", name), None, _none)


class ClientBase:
    """Address, timeout and transport shared by :class:`ToxiproxyClient` and its async twin."""

    def __init__(self, url: str = "http://127.0.0.1:8474", *, timeout: float = 10.0) -> None:
        if not isinstance(url, str):
            raise config_error(
                type(self).__name__,
                "url",
                url,
                "a str such as 'http://127.0.0.1:8474'",
                "pass the Toxiproxy API address",
                wrong_type=True,
            )
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname:
            raise config_error(
                type(self).__name__,
                "url",
                url,
                "an address like http://host:port",
                "use http:// (the Toxiproxy API has no TLS), e.g. 'http://127.0.0.1:8474'",
            )
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout < float("inf")
        ):
            raise config_error(
                type(self).__name__,
                "timeout",
                timeout,
                "a finite number of seconds > 0",
                "pass e.g. timeout=10.0",
            )
        self.host = parts.hostname
        self.port = parts.port or 8474
        self.timeout = timeout
        self.url = f"http://{parts.netloc}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, timeout={self.timeout})"

    def _exchange(self, method: str, path: str, body: Any) -> Any:
        """Send one request on a fresh connection; the decoded answer (raises on errors)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Accept": "application/json", "User-Agent": "resilient-db"}
            if payload is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            status, data = response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ToxiproxyAPIError(
                status=0,
                message=f"cannot reach the Toxiproxy API at {self.url}: {exc}",
                method=method,
                path=path,
            ) from exc
        finally:
            conn.close()
        return _decode(status, data, method=method, path=path)

    def _call(self, call: _Call[T]) -> T:
        return call.read(self._exchange(call.method, call.path, call.body))

    async def _acall(self, call: _Call[T]) -> T:
        data = await anyio.to_thread.run_sync(self._exchange, call.method, call.path, call.body)
        return call.read(data)


def _decode(status: int, data: bytes, *, method: str, path: str) -> Any:
    """The JSON answer; plain-text bodies (the reference's 404 page, 403) as text."""
    decoded: Any = None
    if data:
        try:
            decoded = json.loads(data)
        except ValueError:
            decoded = data.decode("utf-8", "replace").strip()
    if status >= 400:
        message = decoded.get("error") if isinstance(decoded, dict) else decoded
        if not message:
            message = http.client.responses.get(status, "error").lower()
        raise ToxiproxyAPIError(status=status, message=str(message), method=method, path=path)
    return decoded
