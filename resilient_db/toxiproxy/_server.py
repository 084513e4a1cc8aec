"""The embedded Toxiproxy-compatible server: the API's listener and the proxies' lifecycle.

The API has **no authentication**: anyone who can reach it can redirect or break traffic.
It binds to loopback by default; bind it elsewhere only on a trusted network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from resilient_db._errors import ConfigurationError
from resilient_db._validate import config_error
from resilient_db.toxiproxy._api import VERSION, Api
from resilient_db.toxiproxy._http import serve_connection
from resilient_db.toxiproxy._proxy import Accepted, Listener, Proxy, is_loopback, listen_socket

__all__ = ["VERSION", "ThreadedToxiproxyServer", "ToxiproxyServer", "is_loopback"]

logger = logging.getLogger("resilient_db")

#: Seconds an API connection may stay silent (idle keep-alive, or a request half sent).
IDLE_TIMEOUT: Final = 60.0


class ToxiproxyServer:
    """An embedded, Toxiproxy 2.12-compatible server (HTTP API + TCP fault proxies).

    Use ``async with ToxiproxyServer(port=0) as server:`` (``server.url``, ``server.port``)
    inside an asyncio event loop, or :meth:`in_thread` from synchronous code. ``config`` is a
    populate array (a list of proxy objects, or the path of a JSON file holding one) applied at
    start, like ``toxiproxy-server -config``. ``strict=True`` answers 400 to likely mistakes
    the reference accepts (:data:`~resilient_db.toxiproxy.STRICT_CHECKS`); ``idle_timeout``
    closes API connections silent that long (seconds).

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
        strict: bool = False,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise config_error(
                "ToxiproxyServer",
                "port",
                port,
                "an integer in 0..65535",
                "pass e.g. port=8474, or port=0 for a free port",
            )
        if (
            isinstance(idle_timeout, bool)
            or not isinstance(idle_timeout, int | float)
            or not idle_timeout > 0
        ):
            raise config_error(
                "ToxiproxyServer",
                "idle_timeout",
                idle_timeout,
                "a number of seconds > 0",
                "pass e.g. idle_timeout=60",
            )
        self.host = host
        self.strict = strict
        self.idle_timeout = idle_timeout
        self._requested_port = port
        self._config = None if config is None else _load_config(config)
        self.rng = random.Random(seed)
        self.api = Api(rng=self.rng, strict=strict)
        self._listener: Listener | None = None
        self._api_conns: dict[asyncio.Task[None], Accepted] = {}
        self._port: int | None = None

    @property
    def proxies(self) -> dict[str, Proxy]:
        """The proxies by name (read them; change them through the API)."""
        return self.api.proxies

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
        sock = await listen_socket(self.host, self._requested_port, backlog=128)
        self._listener = Listener(sock, self._on_api_client)
        self._port = self._listener.address[1]
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
        response = await self.api.populate(data)
        if response.status >= 400:
            error = json.loads(response.body)["error"]
            raise ConfigurationError(f"Toxiproxy config rejected: {error}")

    async def aclose(self) -> None:
        """Stop the API and every proxy; no task or socket is left behind."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
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
        if self._listener is None:
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
        strict: bool = False,
        idle_timeout: float = IDLE_TIMEOUT,
        start_timeout: float = 10.0,
    ) -> ThreadedToxiproxyServer:
        """A server running its own event loop in a daemon thread, for synchronous code.

        ``with ToxiproxyServer.in_thread() as server: ...`` (``server.url``, ``server.port``);
        the port defaults to 0 (an ephemeral port).
        """
        return ThreadedToxiproxyServer(
            lambda: cls(
                host=host,
                port=port,
                config=config,
                seed=seed,
                strict=strict,
                idle_timeout=idle_timeout,
            ),
            start_timeout=start_timeout,
        )

    # -- HTTP ----------------------------------------------------------------------------
    def _on_api_client(self, conn: socket.socket) -> None:
        if self._listener is None:  # closing
            conn.close()
            return
        accepted = Accepted(conn)
        task = asyncio.get_running_loop().create_task(self._serve_http(accepted))
        self._api_conns[task] = accepted
        task.add_done_callback(lambda t: self._api_conns.pop(t, None))

    async def _serve_http(self, accepted: Accepted) -> None:
        reader, writer = await asyncio.open_connection(sock=accepted.sock)
        accepted.writer = writer
        try:
            await serve_connection(reader, writer, self.api, idle_timeout=self.idle_timeout)
        except OSError:
            pass
        finally:
            writer.transport.abort()


def _load_config(config: str | os.PathLike[str] | Sequence[dict[str, Any]]) -> list[Any]:
    if isinstance(config, str | os.PathLike):
        path = Path(config)
        try:
            data: Any = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"cannot read Toxiproxy config {str(path)!r}: {exc}") from None
        if not isinstance(data, list):
            raise ConfigurationError(
                f"Toxiproxy config {str(path)!r} must hold a JSON array of proxies "
                '(e.g. [{"name": "pg", "listen": "127.0.0.1:15432", "upstream": "db:5432"}])'
            )
        return data
    return list(config)


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
