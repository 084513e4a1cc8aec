"""One named proxy: its listener, the upstream it dials for each client, toxics and links.

An upstream address is not checked when the proxy is created: it is dialled for every accepted
client, and a failed dial closes that client (connect succeeds, then EOF), as the reference
does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
from collections.abc import Callable
from typing import Any, Final

from resilient_db.toxiproxy._link import Link
from resilient_db.toxiproxy._toxics import ApiError, Toxic

__all__ = ["Accepted", "Listener", "Proxy", "check_address", "is_loopback", "listen_socket"]

logger = logging.getLogger("resilient_db")

_DIAL_TIMEOUT: Final = 10.0


def check_address(text: str, *, what: str, status: int = 400) -> tuple[str, int]:
    """``host:port`` split, or an :class:`ApiError` naming ``what``.

    ``status`` 400 (strict input checks: "bad request body: ...") or 500 (a listen address
    that cannot be bound, as the reference answers).
    """
    problem = _address_problem(text)
    if problem is None:
        host, _, port = text.rpartition(":")
        return (host[1:-1] if host.startswith("[") and host.endswith("]") else host), int(port)
    if status == 400:
        raise ApiError(400, f"bad request body: {what} {text!r} {problem}")
    raise ApiError(status, f"{what}: address {text}: {problem}")


def _address_problem(text: str) -> str | None:
    _, sep, port_text = text.rpartition(":")
    if not sep:
        return "must be host:port"
    if not port_text.isdigit():
        return f"has an invalid port {port_text!r}"
    if not 0 <= int(port_text) <= 65535:
        return "port must be 0..65535"
    return None


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


class Accepted:
    """An accepted socket, then its stream writer: whatever must be closed on shutdown."""

    __slots__ = ("sock", "writer")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.writer: asyncio.StreamWriter | None = None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
        self.sock.close()


class Listener:
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


async def listen_socket(host: str, port: int, *, backlog: int = 1024) -> socket.socket:
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

    def __init__(self, *, name: str, listen: str, upstream: str, rng: random.Random) -> None:
        self.rng = rng
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.enabled = False
        self.toxics: dict[str, Toxic] = {}
        self.links: set[Link] = set()
        self._listener: Listener | None = None
        # accepted clients whose upstream is being dialled
        self._dialing: dict[asyncio.Task[None], Accepted] = {}

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
        return [t for t in values if t.direction == "upstream"] + [
            t for t in values if t.direction == "downstream"
        ]

    def toxics_json(self) -> list[dict[str, Any]]:
        """The toxics as the reference lists them."""
        return [t.to_json() for t in self._ordered_toxics()]

    async def start(self) -> None:
        """Bind the listen address and accept clients (no-op when already enabled)."""
        if self.enabled:
            return
        host, port = check_address(self.listen, what="listen tcp", status=500)
        try:
            sock = await listen_socket(host, port)
        except OSError as exc:
            raise ApiError(500, f"listen tcp {self.listen}: bind: {exc.strerror or exc}") from None
        except UnicodeError as exc:  # absurd host names
            raise ApiError(500, f"listen tcp {self.listen}: {exc}") from None
        listener = Listener(sock, self._on_client)
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

    async def update(self, *, listen: str, upstream: str, enabled: bool) -> None:
        """Apply an update as the reference does.

        A new ``listen`` or ``upstream`` restarts the proxy (open connections close); if the
        restart fails (e.g. the new port is busy) the :class:`ApiError` propagates and the
        proxy is left disabled with the new address stored.
        """
        if listen != self.listen or upstream != self.upstream:
            await self.stop()
            self.listen, self.upstream = listen, upstream
        if enabled and not self.enabled:
            await self.start()
        elif not enabled and self.enabled:
            await self.stop()

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
        accepted = Accepted(conn)
        task = asyncio.get_running_loop().create_task(self._dial(accepted))
        self._dialing[task] = accepted
        task.add_done_callback(self._dial_done)

    def _dial_done(self, task: asyncio.Task[None]) -> None:
        self._dialing.pop(task, None)

    async def _dial(self, accepted: Accepted) -> None:
        reader, writer = await asyncio.open_connection(sock=accepted.sock, limit=1 << 20)
        accepted.writer = writer
        link = Link(self.toxics, reader, writer, self.rng)
        try:
            host, port = check_address(self.upstream, what="dial tcp", status=502)
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
            writer.close()  # the client sees its connect succeed, then EOF
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
        for link in list(self.links):
            link.toxic_updated(toxic, toxicity_changed=toxicity_changed)

    def remove_toxic(self, name: str) -> None:
        """Remove a toxic (with its removal effects on open links)."""
        toxic = self.toxics.pop(name)
        for link in list(self.links):
            link.toxic_removed(toxic)
