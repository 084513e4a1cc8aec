"""The Toxiproxy 2.12 HTTP API as a function from a request to a response.

:class:`Api` knows nothing of sockets or HTTP framing (``_http`` does that): it routes a
:class:`Request` to an endpoint that acts on the proxies and renders the reference's answer
(status, body, content type). Every request runs under one lock, so the API is serialised as
in the reference.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final
from urllib.parse import unquote

from resilient_db.toxiproxy._http import Request, Response
from resilient_db.toxiproxy._proxy import Proxy, check_address
from resilient_db.toxiproxy._toxics import ApiError, Toxic, parse_toxic, type_name, update_toxic

__all__ = ["VERSION", "Api"]

logger = logging.getLogger("resilient_db")

#: The Toxiproxy release whose API and semantics this server follows.
VERSION: Final = "2.12.0"
_DEFAULT_LISTEN: Final = "127.0.0.1:0"

Endpoint = Callable[..., Awaitable[Response]]


def _json(body: bytes) -> Any:
    if not body.strip():
        raise ApiError(400, "bad request body: EOF")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"bad request body: invalid JSON: {exc}") from None


def _object(body: bytes) -> dict[str, Any]:
    data = _json(body)
    if not isinstance(data, dict):
        raise ApiError(400, f"bad request body: expected a JSON object, got {type_name(data)}")
    return data


def _fields(data: Mapping[str, Any], *, listen: str, enabled: bool) -> tuple[str, str, str, bool]:
    """``name, listen, upstream, enabled`` of a proxy body, absent ones defaulted."""
    values: dict[str, str] = {}
    for key in ("name", "listen", "upstream"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise ApiError(
                400, f"bad request body: field {key!r} must be a string, got {type_name(value)}"
            )
        values[key] = value or ""
    flag = data.get("enabled")
    if flag is not None and not isinstance(flag, bool):
        raise ApiError(
            400, f"bad request body: field 'enabled' must be true or false, got {flag!r}"
        )
    return (
        values["name"],
        values["listen"] or listen,
        values["upstream"],
        enabled if flag is None else flag,
    )


class Api:
    """The API over a set of proxies; ``await api(request)`` gives the response."""

    def __init__(self, *, rng: random.Random, strict: bool = False) -> None:
        self.rng = rng
        self.strict = strict
        self.proxies: dict[str, Proxy] = {}
        self._lock = asyncio.Lock()
        self._routes: list[tuple[tuple[str, ...], dict[str, Endpoint]]] = [
            (("version",), {"GET": self._version}),
            (("reset",), {"POST": self._reset}),
            (("populate",), {"POST": self._populate_request}),
            (("proxies",), {"GET": self._proxy_index, "POST": self._proxy_create}),
            (
                ("proxies", "*"),
                {
                    "GET": self._proxy_show,
                    "POST": self._proxy_update,
                    "PATCH": self._proxy_update,
                    "DELETE": self._proxy_delete,
                },
            ),
            (("proxies", "*", "toxics"), {"GET": self._toxic_index, "POST": self._toxic_create}),
            (
                ("proxies", "*", "toxics", "*"),
                {
                    "GET": self._toxic_show,
                    "POST": self._toxic_update,
                    "PATCH": self._toxic_update,
                    "DELETE": self._toxic_delete,
                },
            ),
        ]

    async def __call__(self, request: Request) -> Response:
        """Answer one request as the reference would."""
        if request.headers.get("user-agent", "").startswith("Mozilla/"):
            return Response.text(403, "User agent not allowed")  # no driving it from a browser
        path = request.target.split("?", 1)[0]
        parts = [unquote(p) for p in path.split("/")[1:]] if path.startswith("/") else []
        for pattern, endpoints in self._routes:
            if len(pattern) != len(parts):
                continue
            if all(p == s or (p == "*" and s) for p, s in zip(pattern, parts, strict=True)):
                endpoint = endpoints.get(request.method.upper())
                if endpoint is None:
                    return Response(405)  # empty body, as the reference's router
                args = [s for p, s in zip(pattern, parts, strict=True) if p == "*"]
                try:
                    async with self._lock:
                        return await endpoint(*args, request.body)
                except ApiError as exc:
                    return Response.error(exc.status, exc.message)
                except Exception as exc:  # a bug: answer 500 and keep serving
                    logger.exception(
                        "toxiproxy.api_failed",
                        extra={"event": "toxiproxy.api_failed", "method": request.method},
                    )
                    return Response.error(500, f"internal error: {type(exc).__name__}")
        return Response.text(404, "404 page not found")

    def _check(self, listen: str, upstream: str, *, at: str = "") -> None:
        if self.strict:
            check_address(listen, what=f"listen{at}")
            check_address(upstream, what=f"upstream{at}")

    def _get(self, name: str) -> Proxy:
        proxy = self.proxies.get(name)
        if proxy is None:
            raise ApiError(404, "proxy not found")
        return proxy

    @staticmethod
    def _get_toxic(proxy: Proxy, name: str) -> Toxic:
        toxic = proxy.toxics.get(name)
        if toxic is None:
            raise ApiError(404, "toxic not found")
        return toxic

    # -- server --------------------------------------------------------------------------
    async def _version(self, body: bytes) -> Response:
        return Response.json(200, {"version": VERSION})

    async def _reset(self, body: bytes) -> Response:
        for proxy in list(self.proxies.values()):
            await proxy.start()
            for toxic_name in list(proxy.toxics):
                proxy.remove_toxic(toxic_name)
        return Response(204)

    # -- proxies -------------------------------------------------------------------------
    async def _proxy_index(self, body: bytes) -> Response:
        return Response.json(200, {name: p.to_json() for name, p in self.proxies.items()})

    async def _proxy_create(self, body: bytes) -> Response:
        name, listen, upstream, enabled = _fields(
            _object(body), listen=_DEFAULT_LISTEN, enabled=True
        )
        if not name:
            raise ApiError(400, "missing required field: name")
        if not upstream:
            raise ApiError(400, "missing required field: upstream")
        self._check(listen, upstream)
        if name in self.proxies:
            raise ApiError(409, "proxy already exists")
        proxy = Proxy(name=name, listen=listen, upstream=upstream, rng=self.rng)
        if enabled:
            await proxy.start()
        self.proxies[name] = proxy
        return Response.json(201, proxy.to_json())

    async def _proxy_show(self, name: str, body: bytes) -> Response:
        return Response.json(200, self._get(name).to_json())

    async def _proxy_update(self, name: str, body: bytes) -> Response:
        proxy = self._get(name)
        _, listen, upstream, enabled = _fields(
            _object(body), listen=proxy.listen, enabled=proxy.enabled
        )
        upstream = upstream or proxy.upstream
        self._check(listen, upstream)
        await proxy.update(listen=listen, upstream=upstream, enabled=enabled)
        return Response.json(200, proxy.to_json())

    async def _proxy_delete(self, name: str, body: bytes) -> Response:
        proxy = self._get(name)
        del self.proxies[name]
        await proxy.stop()
        return Response(204)

    # -- toxics --------------------------------------------------------------------------
    async def _toxic_index(self, name: str, body: bytes) -> Response:
        return Response.json(200, self._get(name).toxics_json())

    async def _toxic_create(self, name: str, body: bytes) -> Response:
        proxy = self._get(name)
        toxic = parse_toxic(_json(body), strict=self.strict)
        if toxic.name in proxy.toxics:
            raise ApiError(409, "toxic already exists")
        proxy.add_toxic(toxic)
        return Response.json(200, toxic.to_json())

    async def _toxic_show(self, name: str, toxic_name: str, body: bytes) -> Response:
        return Response.json(200, self._get_toxic(self._get(name), toxic_name).to_json())

    async def _toxic_update(self, name: str, toxic_name: str, body: bytes) -> Response:
        proxy = self._get(name)
        toxic = self._get_toxic(proxy, toxic_name)
        attributes, toxicity = update_toxic(toxic, _json(body), strict=self.strict)
        proxy.update_toxic(toxic, attributes, toxicity)
        return Response.json(200, toxic.to_json())

    async def _toxic_delete(self, name: str, toxic_name: str, body: bytes) -> Response:
        proxy = self._get(name)
        self._get_toxic(proxy, toxic_name)
        proxy.remove_toxic(toxic_name)
        return Response(204)

    # -- populate ------------------------------------------------------------------------
    async def _populate_request(self, body: bytes) -> Response:
        try:
            data = _json(body)
        except ApiError as exc:
            return self._populate_answer(exc, None)
        return await self.populate(data)

    @staticmethod
    def _populate_answer(error: ApiError | None, done: list[Proxy] | None) -> Response:
        proxies = [p.to_json() for p in done] if done else None
        if error is None:
            return Response.json(201, {"proxies": proxies})
        payload = {"error": error.message, "status": error.status, "proxies": proxies}
        return Response.json(error.status, payload)

    def _validate_populate(self, data: Any) -> list[tuple[str, str, str, bool]]:
        if not isinstance(data, list):
            raise ApiError(400, f"bad request body: expected a JSON array, got {type_name(data)}")
        wanted: list[tuple[str, str, str, bool]] = []
        seen: set[str] = set()
        for i, item in enumerate(data, start=1):
            if not isinstance(item, dict):
                raise ApiError(400, f"bad request body: proxy {i} must be a JSON object")
            name, listen, upstream, enabled = _fields(item, listen=_DEFAULT_LISTEN, enabled=True)
            if not name:
                raise ApiError(400, f"missing required field: name at proxy {i}")
            if not upstream:
                raise ApiError(400, f"missing required field: upstream at proxy {i}")
            if self.strict and name in seen:
                raise ApiError(400, f"bad request body: duplicate proxy name {name!r} (strict)")
            seen.add(name)
            self._check(listen, upstream, at=f" at proxy {i}")
            wanted.append((name, listen, upstream, enabled))
        return wanted

    async def populate(self, data: Any) -> Response:
        """Create or replace proxies from a populate array (also the server's ``config``)."""
        try:
            wanted = self._validate_populate(data)
        except ApiError as exc:
            return self._populate_answer(exc, None)
        done: list[Proxy] = []
        for name, listen, upstream, enabled in wanted:
            existing = self.proxies.get(name)
            if existing is not None and (existing.listen, existing.upstream) == (listen, upstream):
                done.append(existing)  # left exactly as it is
                continue
            if existing is not None:
                await existing.stop()
            proxy = Proxy(name=name, listen=listen, upstream=upstream, rng=self.rng)
            try:
                if enabled:
                    await proxy.start()
            except ApiError as exc:
                return self._populate_answer(exc, done)
            self.proxies[name] = proxy
            done.append(proxy)
        return self._populate_answer(None, done)
