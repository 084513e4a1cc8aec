"""The Toxiproxy-compatible HTTP API server and the proxies it manages (asyncio).

The API has **no authentication**: anyone who can reach it can redirect or break traffic.
It binds to loopback by default; bind it elsewhere only on a trusted network.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import random
import socket
import threading
import warnings
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import unquote

from resilient_db.toxiproxy._link import Link
from resilient_db.toxiproxy._toxics import ApiError, Toxic, parse_toxic, update_toxic

__all__ = ["VERSION", "Proxy", "ThreadedToxiproxyServer", "ToxiproxyServer"]

logger = logging.getLogger("resilient_db")

#: The Toxiproxy release whose API and semantics this server follows.
VERSION: Final = "2.12.0"
_DIAL_TIMEOUT: Final = 10.0
_MAX_BODY: Final = 16 * 1024 * 1024
_REASONS: Final = {
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Payload Too Large",
    500: "Internal Server Error",
}


def _split_address(text: str, *, what: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ApiError(400, f"bad request body: {what} {text!r} must be host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ApiError(
            400, f"bad request body: {what} {text!r} has an invalid port {port_text!r}"
        ) from None
    if not 0 <= port <= 65535:
        raise ApiError(400, f"bad request body: {what} {text!r}: port must be 0..65535")
    return host, port


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """True when ``host`` is a loopback name or address."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Accepted:
    """An accepted socket, then its stream writer: whatever must be closed on shutdown."""

    __slots__ = ("sock", "writer")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.writer: asyncio.StreamWriter | None = None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
        self.sock.close()


class _Listener:
    """A listening socket whose accepts run synchronously in a reader callback.

    Unlike ``asyncio.Server`` (whose deferred accept tasks can leak a socket when the server
    closes at the wrong moment on Python 3.11), every accepted socket is handed to
    ``on_accept`` at once, and :meth:`close` is synchronous: nothing is accepted afterwards.
    """

    def __init__(self, sock: socket.socket, on_accept: Callable[[socket.socket], None]) -> None:
        self.sock = sock
        self._on_accept = on_accept
        self._loop = asyncio.get_running_loop()
        self._retry: asyncio.TimerHandle | None = None
        self._loop.add_reader(sock.fileno(), self._readable)

    @property
    def address(self) -> tuple[str, int]:
        name = self.sock.getsockname()
        return str(name[0]), int(name[1])

    def _readable(self) -> None:
        for _ in range(128):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: back off instead of spinning
                logger.warning(
                    "toxiproxy.accept_failed",
                    extra={"event": "toxiproxy.accept_failed", "error": str(exc)},
                )
                self._loop.remove_reader(self.sock.fileno())
                self._retry = self._loop.call_later(0.1, self._resume)
                return
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._on_accept(conn)

    def _resume(self) -> None:
        self._retry = None
        if self.sock.fileno() >= 0:
            self._loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        if self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()


async def _listen(host: str, port: int, *, backlog: int = 1024) -> socket.socket:
    """A bound, listening, non-blocking socket (SO_REUSEADDR, so a port can be re-bound)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    if not infos:  # pragma: no cover - getaddrinfo raises instead
        raise OSError(f"cannot resolve {host!r}")
    family, type_, proto, _, address = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Proxy:
    """One named proxy: a listener, an upstream address, toxics and open links."""

    def __init__(self, server: ToxiproxyServer, *, name: str, listen: str, upstream: str) -> None:
        self.server = server
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.enabled = False
        self.toxics: dict[str, Toxic] = {}
        self.links: set[Link] = set()
        self._listener: _Listener | None = None
        # accepted clients whose upstream is being dialled
        self._dialing: dict[asyncio.Task[None], _Accepted] = {}

    def to_json(self) -> dict[str, Any]:
        """The reference's JSON form of the proxy, toxics included."""
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "toxics": [t.to_json() for t in self._ordered_toxics()],
        }

    def _ordered_toxics(self) -> list[Toxic]:
        # the reference lists upstream toxics first, then downstream, each in added order
        values = list(self.toxics.values())
        return [t for t in values if t.stream == "upstream"] + [
            t for t in values if t.stream == "downstream"
        ]

    def toxics_json(self) -> list[dict[str, Any]]:
        """The toxics as the reference lists them."""
        return [t.to_json() for t in self._ordered_toxics()]

    async def start(self) -> None:
        """Bind the listen address and accept clients (no-op when already enabled)."""
        if self.enabled:
            return
        host, port = _split_address(self.listen, what="listen")
        try:
            sock = await _listen(host, port)
        except OSError as exc:
            raise ApiError(500, f"listen tcp {self.listen}: bind: {exc.strerror or exc}") from None
        except UnicodeError as exc:  # absurd host names
            raise ApiError(400, f"bad request body: listen {self.listen!r}: {exc}") from None
        listener = _Listener(sock, self._on_client)
        bound_host, bound_port = listener.address
        if host in ("", "0.0.0.0", "::"):
            self.listen = _format_address(host or bound_host, bound_port)
        else:
            self.listen = _format_address(bound_host, bound_port)
        self._listener = listener
        self.enabled = True
        logger.info(
            "toxiproxy.proxy_started",
            extra={"event": "toxiproxy.proxy_started", "proxy": self.name, "listen": self.listen},
        )

    async def stop(self) -> None:
        """Close the listener and every connection (new connects are refused)."""
        self.enabled = False
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        await self.close_links()

    async def close_links(self) -> None:
        """Close every open connection of the proxy and wait for its tasks."""
        dialing = list(self._dialing.items())
        for task, _ in dialing:
            task.cancel()
        links = list(self.links)
        for link in links:
            link.close("abort")
        tasks = [t for link in links for t in link.tasks] + [t for t, _ in dialing]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        # only now: a socket closed under a transport being created would break the loop
        for _, accepted in dialing:
            accepted.close()
        self.links.clear()

    def abort_all(self) -> None:
        """Force every socket of the proxy closed (server shutdown)."""
        for link in list(self.links):
            link.abort_transports()

    def _on_client(self, conn: socket.socket) -> None:
        if not self.enabled:
            conn.close()
            return
        accepted = _Accepted(conn)
        task = asyncio.get_running_loop().create_task(self._dial(accepted))
        self._dialing[task] = accepted
        task.add_done_callback(self._dial_done)

    def _dial_done(self, task: asyncio.Task[None]) -> None:
        self._dialing.pop(task, None)

    async def _dial(self, accepted: _Accepted) -> None:
        reader, writer = await asyncio.open_connection(sock=accepted.sock, limit=1 << 20)
        accepted.writer = writer
        link = Link(self, reader, writer, self.server.rng)
        try:
            host, port = _split_address(self.upstream, what="upstream")
            async with asyncio.timeout(_DIAL_TIMEOUT):
                up_reader, up_writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError, ApiError, UnicodeError) as exc:
            logger.warning(
                "toxiproxy.upstream_dial_failed",
                extra={
                    "event": "toxiproxy.upstream_dial_failed",
                    "proxy": self.name,
                    "upstream": self.upstream,
                    "error": str(exc),
                },
            )
            writer.transport.abort()
            return
        except asyncio.CancelledError:
            writer.transport.abort()
            raise
        if not self.enabled or writer.transport.is_closing():
            up_writer.transport.abort()
            writer.transport.abort()
            return
        link.on_close = self.links.discard
        self.links.add(link)
        link.start(up_reader, up_writer)

    # -- toxics --------------------------------------------------------------------------
    def add_toxic(self, toxic: Toxic) -> None:
        """Add a validated toxic and apply it to every open link."""
        self.toxics[toxic.name] = toxic
        for link in list(self.links):
            link.toxic_added(toxic)

    def update_toxic(self, toxic: Toxic, attributes: dict[str, int], toxicity: float) -> None:
        """Change a toxic in place; open links see the change at once."""
        toxicity_changed = toxicity != toxic.toxicity
        toxic.attributes = attributes
        toxic.toxicity = toxicity
        toxic.generation += 1
        for link in list(self.links):
            link.toxic_updated(toxic, toxicity_changed=toxicity_changed)

    def remove_toxic(self, name: str) -> None:
        """Remove a toxic (with its removal effects on open links)."""
        toxic = self.toxics.pop(name)
        for link in list(self.links):
            link.toxic_removed(toxic)


Handler = Callable[..., Awaitable[tuple[int, Any]]]


class ToxiproxyServer:
    """An embedded, Toxiproxy 2.12-compatible server (HTTP API + TCP fault proxies).

    Use ``async with ToxiproxyServer(port=0) as server:`` (``server.url``, ``server.port``)
    inside an asyncio event loop, or :meth:`in_thread` from synchronous code. ``config`` is a
    populate array (a list of proxy objects, or the path of a JSON file holding one) applied at
    start, like ``toxiproxy-server -config``.

    Security: the API has no authentication. It binds to ``127.0.0.1`` by default; binding to
    another address logs a warning and lets anyone who can reach the port reroute traffic.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 8474,
        config: str | os.PathLike[str] | Sequence[dict[str, Any]] | None = None,
        seed: int | None = None,
    ) -> None:
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an integer in 0..65535, got {port!r}")
        self.host = host
        self._requested_port = port
        self._config = None if config is None else _load_config(config)
        self.rng = random.Random(seed)
        self.proxies: dict[str, Proxy] = {}
        self._api: _Listener | None = None
        self._api_conns: dict[asyncio.Task[None], _Accepted] = {}
        self._lock = asyncio.Lock()
        self._port: int | None = None

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The API port actually bound (after start)."""
        if self._port is None:
            raise RuntimeError("the Toxiproxy server is not started; use 'async with' first")
        return self._port

    @property
    def url(self) -> str:
        """The API base URL, e.g. ``http://127.0.0.1:8474``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind the API and apply the ``config`` populate array."""
        if not is_loopback(self.host):
            warnings.warn(
                f"the Toxiproxy API is bound to {self.host!r}, a non-loopback address; it has "
                "no authentication, so anyone who can reach it can break or reroute traffic",
                UserWarning,
                stacklevel=2,
            )
            logger.warning(
                "toxiproxy.unauthenticated_api_exposed",
                extra={"event": "toxiproxy.unauthenticated_api_exposed", "host": self.host},
            )
        sock = await _listen(self.host, self._requested_port, backlog=128)
        self._api = _Listener(sock, self._on_api_client)
        self._port = self._api.address[1]
        logger.info(
            "toxiproxy.api_started",
            extra={"event": "toxiproxy.api_started", "host": self.host, "port": self._port},
        )
        if self._config is not None:
            try:
                await self._apply_config(self._config)
            except BaseException:
                await self.aclose()
                raise

    async def _apply_config(self, data: list[Any]) -> None:
        async with self._lock:
            status, body = await self._populate(data)
        if status >= 400:
            raise ValueError(f"Toxiproxy config rejected: {body['error']}")

    async def aclose(self) -> None:
        """Stop the API and every proxy; no task or socket is left behind."""
        api, self._api = self._api, None
        if api is not None:
            api.close()
        conns = list(self._api_conns.items())
        for task, _ in conns:
            task.cancel()
        if conns:
            await asyncio.gather(*(t for t, _ in conns), return_exceptions=True)
        for _, accepted in conns:
            accepted.close()
        for proxy in list(self.proxies.values()):
            await proxy.stop()
            proxy.abort_all()
        self.proxies.clear()
        # let the transports' connection_lost callbacks run so every socket is closed
        # and connections accepted just before the listeners closed get refused
        for _ in range(5):
            await asyncio.sleep(0)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def serve_forever(self) -> None:
        """Start (if needed) and serve until cancelled."""
        if self._api is None:
            await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.aclose()

    @classmethod
    def in_thread(
        cls,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        config: str | os.PathLike[str] | Sequence[dict[str, Any]] | None = None,
        seed: int | None = None,
        start_timeout: float = 10.0,
    ) -> ThreadedToxiproxyServer:
        """A server running its own event loop in a daemon thread, for synchronous code.

        ``with ToxiproxyServer.in_thread() as server: ...`` (``server.url``, ``server.port``);
        the port defaults to 0 (an ephemeral port).
        """
        return ThreadedToxiproxyServer(
            lambda: cls(host=host, port=port, config=config, seed=seed),
            start_timeout=start_timeout,
        )

    # -- HTTP ----------------------------------------------------------------------------
    def _on_api_client(self, conn: socket.socket) -> None:
        if self._api is None:  # closing
            conn.close()
            return
        accepted = _Accepted(conn)
        task = asyncio.get_running_loop().create_task(self._serve_http(accepted))
        self._api_conns[task] = accepted
        task.add_done_callback(lambda t: self._api_conns.pop(t, None))

    async def _serve_http(self, accepted: _Accepted) -> None:
        reader, writer = await asyncio.open_connection(sock=accepted.sock)
        accepted.writer = writer
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                method, target, _headers, body, keep_alive = request
                if isinstance(body, ApiError):
                    status, payload = body.status, {"error": body.message, "status": body.status}
                    keep_alive = False
                else:
                    status, payload = await self.handle(method, target, body)
                writer.write(_render(status, payload, keep_alive=keep_alive))
                await writer.drain()
                if not keep_alive:
                    break
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.transport.abort()

    async def handle(self, method: str, target: str, body: bytes) -> tuple[int, Any]:
        """Answer one API request: ``(status, JSON-able payload or None)``."""
        path = target.split("?", 1)[0]
        parts = [unquote(p) for p in path.split("/")[1:]] if path.startswith("/") else []
        route = self._route(parts)
        if route is None:
            return 404, {"error": "404 page not found", "status": 404}
        handlers, args = route
        handler = handlers.get(method.upper())
        if handler is None:
            return 405, {"error": "method not allowed", "status": 405}
        try:
            async with self._lock:
                return await handler(*args, body)
        except ApiError as exc:
            return exc.status, {"error": exc.message, "status": exc.status}

    def _route(self, parts: list[str]) -> tuple[dict[str, Handler], tuple[str, ...]] | None:
        n = len(parts)
        if parts == ["version"]:
            return {"GET": self._version}, ()
        if parts == ["reset"]:
            return {"POST": self._reset}, ()
        if parts == ["populate"]:
            return {"POST": self._populate_handler}, ()
        if parts == ["proxies"]:
            return {"GET": self._proxy_index, "POST": self._proxy_create}, ()
        if n >= 2 and parts[0] == "proxies" and parts[1]:
            if n == 2:
                return {
                    "GET": self._proxy_show,
                    "POST": self._proxy_update,
                    "PATCH": self._proxy_update,
                    "DELETE": self._proxy_delete,
                }, (parts[1],)
            if n == 3 and parts[2] == "toxics":
                return {"GET": self._toxic_index, "POST": self._toxic_create}, (parts[1],)
            if n == 4 and parts[2] == "toxics" and parts[3]:
                return {
                    "GET": self._toxic_show,
                    "POST": self._toxic_update,
                    "PATCH": self._toxic_update,
                    "DELETE": self._toxic_delete,
                }, (parts[1], parts[3])
        return None

    # -- endpoints -----------------------------------------------------------------------
    async def _version(self, body: bytes) -> tuple[int, Any]:
        return 200, {"version": VERSION}

    async def _proxy_index(self, body: bytes) -> tuple[int, Any]:
        return 200, {name: p.to_json() for name, p in self.proxies.items()}

    def _get(self, name: str) -> Proxy:
        proxy = self.proxies.get(name)
        if proxy is None:
            raise ApiError(404, "proxy not found")
        return proxy

    async def _proxy_create(self, body: bytes) -> tuple[int, Any]:
        data = _json_object(body)
        name, listen, upstream, enabled = _proxy_fields(data, defaults=("127.0.0.1:0", True))
        if not name:
            raise ApiError(400, "missing required field: name")
        if not upstream:
            raise ApiError(400, "missing required field: upstream")
        if name in self.proxies:
            raise ApiError(409, "proxy already exists")
        proxy = await self._new_proxy(name=name, listen=listen, upstream=upstream, enabled=enabled)
        self.proxies[name] = proxy
        return 201, proxy.to_json()

    async def _new_proxy(self, *, name: str, listen: str, upstream: str, enabled: bool) -> Proxy:
        _split_address(listen, what="listen")
        _split_address(upstream, what="upstream")
        proxy = Proxy(self, name=name, listen=listen, upstream=upstream)
        if enabled:
            await proxy.start()
        return proxy

    async def _proxy_show(self, name: str, body: bytes) -> tuple[int, Any]:
        return 200, self._get(name).to_json()

    async def _proxy_update(self, name: str, body: bytes) -> tuple[int, Any]:
        proxy = self._get(name)
        data = _json_object(body)
        _, listen, upstream, enabled = _proxy_fields(data, defaults=(proxy.listen, proxy.enabled))
        listen = listen or proxy.listen
        upstream = upstream or proxy.upstream
        _split_address(listen, what="listen")
        _split_address(upstream, what="upstream")
        if listen != proxy.listen:
            old = proxy.listen
            was_enabled = proxy.enabled
            await proxy.stop()
            proxy.listen = listen
            proxy.upstream = upstream
            if enabled:
                try:
                    await proxy.start()
                except ApiError:
                    proxy.listen = old
                    if was_enabled:
                        with contextlib.suppress(ApiError):
                            await proxy.start()
                    raise
        elif upstream != proxy.upstream:
            proxy.upstream = upstream
            await proxy.close_links()
            if enabled:
                await proxy.start()
            else:
                await proxy.stop()
        elif enabled and not proxy.enabled:
            await proxy.start()
        elif not enabled and proxy.enabled:
            await proxy.stop()
        return 200, proxy.to_json()

    async def _proxy_delete(self, name: str, body: bytes) -> tuple[int, Any]:
        proxy = self._get(name)
        del self.proxies[name]
        await proxy.stop()
        return 204, None

    async def _toxic_index(self, name: str, body: bytes) -> tuple[int, Any]:
        return 200, self._get(name).toxics_json()

    async def _toxic_create(self, name: str, body: bytes) -> tuple[int, Any]:
        proxy = self._get(name)
        toxic = parse_toxic(_json_any(body))
        if toxic.name in proxy.toxics:
            raise ApiError(409, "toxic already exists")
        proxy.add_toxic(toxic)
        return 200, toxic.to_json()

    def _get_toxic(self, proxy: Proxy, name: str) -> Toxic:
        toxic = proxy.toxics.get(name)
        if toxic is None:
            raise ApiError(404, "toxic not found")
        return toxic

    async def _toxic_show(self, name: str, toxic_name: str, body: bytes) -> tuple[int, Any]:
        proxy = self._get(name)
        return 200, self._get_toxic(proxy, toxic_name).to_json()

    async def _toxic_update(self, name: str, toxic_name: str, body: bytes) -> tuple[int, Any]:
        proxy = self._get(name)
        toxic = self._get_toxic(proxy, toxic_name)
        attributes, toxicity = update_toxic(toxic, _json_any(body))
        proxy.update_toxic(toxic, attributes, toxicity)
        return 200, toxic.to_json()

    async def _toxic_delete(self, name: str, toxic_name: str, body: bytes) -> tuple[int, Any]:
        proxy = self._get(name)
        self._get_toxic(proxy, toxic_name)
        proxy.remove_toxic(toxic_name)
        return 204, None

    async def _reset(self, body: bytes) -> tuple[int, Any]:
        for proxy in list(self.proxies.values()):
            await proxy.start()
            for toxic_name in list(proxy.toxics):
                proxy.remove_toxic(toxic_name)
        return 204, None

    async def _populate_handler(self, body: bytes) -> tuple[int, Any]:
        return await self._populate(_json_any(body))

    async def _populate(self, data: Any) -> tuple[int, Any]:
        if not isinstance(data, list):
            raise ApiError(400, "bad request body: expected a JSON array of proxies")
        wanted: list[tuple[str, str, str, bool]] = []
        seen: set[str] = set()
        for i, item in enumerate(data, start=1):
            if not isinstance(item, dict):
                raise ApiError(400, f"bad request body: proxy {i} must be a JSON object")
            name, listen, upstream, enabled = _proxy_fields(item, defaults=("127.0.0.1:0", True))
            if not name:
                raise ApiError(400, f"missing required field: name at proxy {i}")
            if not upstream:
                raise ApiError(400, f"missing required field: upstream at proxy {i}")
            if name in seen:
                raise ApiError(400, f"bad request body: duplicate proxy name {name!r}")
            seen.add(name)
            _split_address(listen, what=f"listen at proxy {i}")
            _split_address(upstream, what=f"upstream at proxy {i}")
            wanted.append((name, listen, upstream, enabled))
        done: list[Proxy] = []
        for name, listen, upstream, enabled in wanted:
            existing = self.proxies.get(name)
            if (
                existing is not None
                and existing.listen == listen
                and (existing.upstream == upstream)
            ):
                done.append(existing)
                continue
            if existing is not None:
                del self.proxies[name]
                await existing.stop()
            try:
                proxy = await self._new_proxy(
                    name=name, listen=listen, upstream=upstream, enabled=enabled
                )
            except ApiError as exc:
                return exc.status, {
                    "error": exc.message,
                    "status": exc.status,
                    "proxies": [p.to_json() for p in done],
                }
            self.proxies[name] = proxy
            done.append(proxy)
        return 201, {"proxies": [p.to_json() for p in done]}


def _load_config(config: str | os.PathLike[str] | Sequence[dict[str, Any]]) -> list[Any]:
    if isinstance(config, str | os.PathLike):
        path = Path(config)
        try:
            data: Any = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read Toxiproxy config {str(path)!r}: {exc}") from None
        if not isinstance(data, list):
            raise ValueError(
                f"Toxiproxy config {str(path)!r} must hold a JSON array of proxies "
                '(e.g. [{"name": "pg", "listen": "127.0.0.1:15432", "upstream": "db:5432"}])'
            )
        return data
    return list(config)


def _proxy_fields(
    data: dict[str, Any], *, defaults: tuple[str, bool]
) -> tuple[str, str, str, bool]:
    values: dict[str, str] = {}
    for key in ("name", "listen", "upstream"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise ApiError(400, f"bad request body: field {key!r} must be a string, got {value!r}")
        values[key] = value or ""
    enabled = data.get("enabled")
    if enabled is None:
        enabled = defaults[1]
    elif not isinstance(enabled, bool):
        raise ApiError(
            400, f"bad request body: field 'enabled' must be true or false, got {enabled!r}"
        )
    return values["name"], values["listen"] or defaults[0], values["upstream"], enabled


def _json_any(body: bytes) -> Any:
    if not body.strip():
        raise ApiError(400, "bad request body: EOF")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"bad request body: invalid JSON: {exc}") from None


def _json_object(body: bytes) -> dict[str, Any]:
    data = _json_any(body)
    if not isinstance(data, dict):
        raise ApiError(400, "bad request body: expected a JSON object")
    return data


async def _read_request(
    reader: asyncio.StreamReader,
) -> tuple[str, str, dict[str, str], bytes | ApiError, bool] | None:
    line = await reader.readline()
    while line in (b"\r\n", b"\n"):
        line = await reader.readline()
    if not line:
        return None
    try:
        method, target, version = line.decode("latin-1").split()
    except ValueError:
        raise ValueError("malformed request line") from None
    headers: dict[str, str] = {}
    while True:
        raw = await reader.readline()
        if raw in (b"\r\n", b"\n", b""):
            break
        key, _, value = raw.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip()
        if len(headers) > 100:
            raise ValueError("too many headers")
    connection = headers.get("connection", "").lower()
    keep_alive = (version == "HTTP/1.1" and connection != "close") or (connection == "keep-alive")
    body: bytes | ApiError = b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = bytearray()
        while True:
            size_line = await reader.readline()
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                break
            if len(chunks) + size > _MAX_BODY:
                return method, target, headers, ApiError(413, "request body too large"), False
            chunks += await reader.readexactly(size)
            await reader.readline()
        body = bytes(chunks)
    elif "content-length" in headers:
        length = int(headers["content-length"])
        if length < 0:
            raise ValueError("negative Content-Length")
        if length > _MAX_BODY:
            return method, target, headers, ApiError(413, "request body too large"), False
        body = await reader.readexactly(length)
    return method, target, headers, body, keep_alive


def _render(status: int, payload: Any, *, keep_alive: bool) -> bytes:
    head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
    data = b""
    if status != 204:
        data = json.dumps(payload).encode() + b"\n"
        head.append("Content-Type: application/json")
        head.append(f"Content-Length: {len(data)}")
    head.append("Connection: keep-alive" if keep_alive else "Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data


class ThreadedToxiproxyServer:
    """A :class:`ToxiproxyServer` running in its own event loop on a daemon thread.

    Create it with :meth:`ToxiproxyServer.in_thread`; use it as a context manager or call
    :meth:`start` and :meth:`close`.
    """

    def __init__(self, factory: Callable[[], ToxiproxyServer], *, start_timeout: float) -> None:
        self._factory = factory
        self._start_timeout = start_timeout
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.server: ToxiproxyServer | None = None

    @property
    def url(self) -> str:
        """The API base URL."""
        return self._started().url

    @property
    def port(self) -> int:
        """The API port."""
        return self._started().port

    @property
    def host(self) -> str:
        """The API host."""
        return self._started().host

    def _started(self) -> ToxiproxyServer:
        if self.server is None:
            raise RuntimeError("the Toxiproxy server thread is not started")
        return self.server

    def start(self) -> None:
        """Start the thread and wait until the API accepts connections."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(
            target=self._run, name="resilient-db-toxiproxy", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(self._start_timeout):
            raise TimeoutError("the Toxiproxy server thread did not start in time")
        if self._error is not None:
            self._thread.join(self._start_timeout)
            raise self._error

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            server = self._factory()
            try:
                await server.start()
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                return
            self.server = server
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await server.aclose()

        asyncio.run(main())

    def close(self, timeout: float = 10.0) -> None:
        """Stop the server (closing every proxy and connection) and join the thread."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError("the Toxiproxy server thread did not stop in time")
        self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
