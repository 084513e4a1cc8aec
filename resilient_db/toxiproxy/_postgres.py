"""A proxy in front of a PostgreSQL server, with fault helpers that always clean up.

``ToxiproxyPostgres.create(client, url)`` (or the pytest plugin's ``toxiproxy_postgres(url)``
fixture) creates a proxy to the URL's host and port and returns an object whose ``.url`` is
the same URL through the proxy::

    db = ToxiproxyPostgres.create(client, "postgresql+asyncpg://app@127.0.0.1:5432/app")
    engine = create_async_engine(db.url)   # db.dsn: the libpq form, no driver suffix
    with db.latency(200):
        ...
    with db.down():
        ...
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from resilient_db._validate import config_error
from resilient_db.toxiproxy._base import ProxyInfo, ToxicInfo, ToxiproxyAPIError
from resilient_db.toxiproxy._client import ToxiproxyClient

__all__ = ["ToxiproxyPostgres"]

_counter = itertools.count(1)


@dataclass(kw_only=True, slots=True)
class ToxiproxyPostgres:
    """A proxy in front of a PostgreSQL server, with fault helpers.

    ``url`` is the original URL with host and port replaced by the proxy's. Every helper is a
    context manager that removes its fault on exit, also when the block raises.
    """

    client: ToxiproxyClient
    name: str
    original_url: str
    url: str
    host: str
    port: int
    owned: bool = True
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def dsn(self) -> str:
        """The proxied URL as a plain libpq DSN (``postgresql://…``, no driver suffix)."""
        scheme, rest = self.url.split("://", 1)
        return f"{scheme.split('+', 1)[0]}://{rest}"

    @classmethod
    def create(
        cls,
        client: ToxiproxyClient,
        url: str,
        *,
        name: str | None = None,
        upstream: str | None = None,
        listen: str = "127.0.0.1:0",
    ) -> ToxiproxyPostgres:
        """A proxy to the URL's host:port (or ``upstream``); ``.url`` goes through it.

        A ``name`` that already exists on the server (e.g. the ``postgres`` proxy of
        docker-compose) is reused as is: :meth:`cleanup` then only cleans it, never deletes it.
        """
        existing: Any = None
        if name is not None:
            try:
                existing = client.get_proxy(name)
            except ToxiproxyAPIError as exc:
                if exc.status != 404:
                    raise
        if existing is not None:
            info, owned = existing, False
        else:
            proxy_name = name or f"resilient_db_pg_{os.getpid()}_{next(_counter)}"
            info = client.create_proxy(
                name=proxy_name, upstream=upstream or _upstream_of(url), listen=listen
            )
            owned = True
        host = info.listen_host
        if host in ("", "0.0.0.0", "::"):
            host = urlsplit(client.url).hostname or "127.0.0.1"
        return cls(
            client=client,
            name=info.name,
            original_url=url,
            url=_replace_host(url, host, info.listen_port),
            host=host,
            port=info.listen_port,
            owned=owned,
        )

    def info(self) -> ProxyInfo:
        """The proxy as the server reports it now."""
        return self.client.get_proxy(self.name)

    def toxic(
        self,
        type: str,
        *,
        stream: str = "downstream",
        toxicity: float = 1.0,
        name: str | None = None,
        **attributes: int,
    ) -> contextlib.AbstractContextManager[ToxicInfo]:
        """Any toxic for the ``with`` block (attributes as keyword arguments)."""
        return self.client.toxic(
            self.name,
            type=type,
            name=name or f"{type}_{stream}_{next(self._names)}",
            stream=stream,
            toxicity=toxicity,
            attributes=attributes,
        )

    def latency(
        self, ms: int, *, jitter: int = 0, stream: str = "downstream", toxicity: float = 1.0
    ) -> contextlib.AbstractContextManager[ToxicInfo]:
        """Delay every chunk by ``ms`` ± ``jitter`` milliseconds."""
        return self.toxic("latency", stream=stream, toxicity=toxicity, latency=ms, jitter=jitter)

    def bandwidth(
        self, rate_kb: int, *, stream: str = "downstream"
    ) -> contextlib.AbstractContextManager[ToxicInfo]:
        """Limit the stream to ``rate_kb`` KB/s (1 KB = 1000 bytes)."""
        return self.toxic("bandwidth", stream=stream, rate=rate_kb)

    def slicer(
        self,
        average_size: int,
        *,
        size_variation: int = 0,
        delay_us: int = 0,
        stream: str = "downstream",
    ) -> contextlib.AbstractContextManager[ToxicInfo]:
        """Cut data into pieces of about ``average_size`` bytes, ``delay_us`` apart."""
        return self.toxic(
            "slicer",
            stream=stream,
            average_size=average_size,
            size_variation=size_variation,
            delay=delay_us,
        )

    def slow_close(
        self, delay_ms: int, *, stream: str = "downstream"
    ) -> contextlib.AbstractContextManager[ToxicInfo]:
        """Pass a close on only after ``delay_ms``."""
        return self.toxic("slow_close", stream=stream, delay=delay_ms)

    def timeout(
        self, ms: int, *, stream: str = "downstream"
    ) -> contextlib.AbstractContextManager[ToxicInfo]:
        """Drop data; close the connection after ``ms`` without data (0: never)."""
        return self.toxic("timeout", stream=stream, timeout=ms)

    def limit_data(
        self, nbytes: int, *, stream: str = "downstream"
    ) -> contextlib.AbstractContextManager[ToxicInfo]:
        """Close each connection once ``nbytes`` bytes passed on the stream."""
        return self.toxic("limit_data", stream=stream, bytes=nbytes)

    def reset_peer(
        self, timeout_ms: int = 0, *, stream: str = "downstream"
    ) -> contextlib.AbstractContextManager[ToxicInfo]:
        """Reset (TCP RST) each connection on its next data, after ``timeout_ms``."""
        return self.toxic("reset_peer", stream=stream, timeout=timeout_ms)

    @contextlib.contextmanager
    def black_hole(self) -> Iterator[None]:
        """Swallow all data both ways; sockets stay open and silent (a half-open peer).

        Leaving the block closes the connections that were black-holed, as Toxiproxy does.
        """
        with (
            self.toxic("timeout", stream="upstream", timeout=0),
            self.toxic("timeout", stream="downstream", timeout=0),
        ):
            yield

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """Refuse connections (ECONNREFUSED) and drop open ones; re-enabled on exit."""
        with self.client.down(self.name):
            yield

    def set_upstream(self, upstream: str) -> ProxyInfo:
        """Point the proxy at another ``host:port`` (failover); open connections drop."""
        return self.client.set_upstream(self.name, upstream)

    def cleanup(self) -> None:
        """Remove every toxic and re-enable the proxy; delete it when this object made it."""
        try:
            if self.owned:
                self.client.delete_proxy(self.name)
                return
            for toxic in self.client.toxics(self.name):
                self.client.remove_toxic(self.name, toxic.name)
            self.client.enable(self.name)
        except ToxiproxyAPIError as exc:
            if exc.status != 404:
                raise


def _replace_host(url: str, host: str, port: int) -> str:
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    shown = f"[{host}]" if ":" in host else host
    netloc = f"{userinfo}@{shown}:{port}" if userinfo else f"{shown}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _upstream_of(url: str) -> str:
    parts = urlsplit(url)
    if not parts.hostname:
        raise config_error(
            "toxiproxy_postgres",
            "url",
            url,
            "a URL with a TCP host",
            "pass a host:port URL, or the proxy's target as upstream='host:port'",
        )
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{parts.port or 5432}"
