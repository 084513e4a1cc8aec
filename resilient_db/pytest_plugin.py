"""The pytest plugin for fault tests (registered through the ``pytest11`` entry point).

Every fixture and option it adds is prefixed with ``toxiproxy`` or ``resilient_db``.
Importing it is cheap and starts nothing (nor imports psutil or psycopg): the embedded
server starts the first time a test asks for a ``toxiproxy*`` fixture, a cluster the first
time a test asks for a ``resilient_db_cluster*`` fixture. With plugin autoloading disabled
(``PYTEST_DISABLE_PLUGIN_AUTOLOAD``), load it with ``-p resilient_db.pytest_plugin``.

Fault-proxy fixtures:

``toxiproxy_server`` (session)
    The API URL of the server: an external Toxiproxy when ``--toxiproxy-url`` or the
    ``TOXIPROXY_URL`` environment variable is given, else an embedded server in a background
    thread on 127.0.0.1 (an ephemeral port).
``toxiproxy``
    A :class:`~resilient_db.toxiproxy.ToxiproxyClient` for that server; ``POST /reset`` after
    the test.
``toxiproxy_postgres``
    A factory: ``db = toxiproxy_postgres(pg_url)`` puts a proxy in front of a PostgreSQL URL
    (``postgresql+asyncpg://…`` or a libpq DSN) and returns a :class:`ToxiproxyPostgres` whose
    ``url`` goes through the proxy, with fault helpers that always clean up::

        with db.latency(200):
            ...
        with db.down():
            ...

    Proxies it created are deleted after the test.

Private-cluster fixtures (:class:`~resilient_db.testing.PgCluster`, the ``testing`` extra):

``resilient_db_cluster``
    A fresh, started primary for one test; destroyed afterwards. Use it for destructive
    faults (``stop``, ``crash``, ``crash_backend``, ``restart``).
``resilient_db_cluster_pair``
    A fresh primary and a streaming standby for one test, both started and destroyed
    afterwards. Use it for promotion / failover.
``resilient_db_shared_pair``
    One primary + standby for the whole session (cheap). Read/write the primary, read the
    standby, expect 25006 there; do NOT stop, crash, restart or promote either server and
    use table names unique to your module. It is checked to be running before each use.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from resilient_db._validate import config_error

if TYPE_CHECKING:
    from resilient_db.testing import ClusterPair, PgCluster
    from resilient_db.toxiproxy import ProxyInfo, ToxicInfo, ToxiproxyClient

__all__ = ["ToxiproxyPostgres"]

_ENV = "TOXIPROXY_URL"
_counter = itertools.count(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--toxiproxy-url``."""
    group = parser.getgroup("resilient_db", "resilient_db fault testing")
    group.addoption(
        "--toxiproxy-url",
        dest="toxiproxy_url",
        default=None,
        help=f"API URL of an external Toxiproxy (default: ${_ENV}, else an embedded server)",
    )


def toxiproxy_external_url(config: pytest.Config) -> str | None:
    """The external Toxiproxy API URL from ``--toxiproxy-url`` or ``TOXIPROXY_URL``."""
    value = config.getoption("toxiproxy_url", default=None) or os.environ.get(_ENV)
    return str(value) if value else None


@pytest.fixture(scope="session")
def toxiproxy_server(pytestconfig: pytest.Config) -> Iterator[str]:
    """API URL of the Toxiproxy server for this session (external or embedded)."""
    external = toxiproxy_external_url(pytestconfig)
    if external:
        yield external if "://" in external else f"http://{external}"
        return
    from resilient_db.toxiproxy import ToxiproxyServer

    with ToxiproxyServer.in_thread(host="127.0.0.1", port=0) as server:
        yield server.url


@pytest.fixture
def toxiproxy(toxiproxy_server: str) -> Iterator[ToxiproxyClient]:
    """A client for the session's Toxiproxy; the server is reset after the test."""
    from resilient_db.toxiproxy import ToxiproxyClient

    client = ToxiproxyClient(toxiproxy_server, timeout=10.0)
    try:
        yield client
    finally:
        client.reset()


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
        from resilient_db.toxiproxy import ToxiproxyAPIError

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


@pytest.fixture
def toxiproxy_postgres(
    toxiproxy: ToxiproxyClient,
) -> Iterator[Callable[..., ToxiproxyPostgres]]:
    """Factory: ``toxiproxy_postgres(url, *, name=None, upstream=None, listen=None)``.

    Creates a proxy to the URL's host:port (or ``upstream``) and returns a
    :class:`ToxiproxyPostgres`. A ``name`` that already exists on the server (e.g. the
    ``postgres`` proxy of docker-compose) is reused as is and only cleaned, not deleted.
    """
    made: list[ToxiproxyPostgres] = []
    api_host = urlsplit(toxiproxy.url).hostname or "127.0.0.1"

    def factory(
        url: str,
        *,
        name: str | None = None,
        upstream: str | None = None,
        listen: str = "127.0.0.1:0",
    ) -> ToxiproxyPostgres:
        from resilient_db.toxiproxy import ToxiproxyAPIError

        existing: Any = None
        if name is not None:
            try:
                existing = toxiproxy.get_proxy(name)
            except ToxiproxyAPIError as exc:
                if exc.status != 404:
                    raise
        if existing is not None:
            info, owned = existing, False
        else:
            proxy_name = name or f"resilient_db_pg_{os.getpid()}_{next(_counter)}"
            info = toxiproxy.create_proxy(
                name=proxy_name, upstream=upstream or _upstream_of(url), listen=listen
            )
            owned = True
        host = info.listen_host
        if host in ("", "0.0.0.0", "::"):
            host = api_host
        db = ToxiproxyPostgres(
            client=toxiproxy,
            name=info.name,
            original_url=url,
            url=_replace_host(url, host, info.listen_port),
            host=host,
            port=info.listen_port,
            owned=owned,
        )
        made.append(db)
        return db

    try:
        yield factory
    finally:
        for db in reversed(made):
            db.cleanup()


# --------------------------------------------------------------------------- clusters


def _start_pair() -> ClusterPair:
    from resilient_db.testing import ClusterPair, PgCluster

    primary = PgCluster.create()
    try:
        primary.start()
        standby = primary.create_standby()
        standby.start()
    except BaseException:
        primary.destroy()
        raise
    return ClusterPair(primary=primary, standby=standby)


@pytest.fixture
def resilient_db_cluster() -> Iterator[PgCluster]:
    """A fresh, started private primary, destroyed after the test."""
    from resilient_db.testing import PgCluster

    with PgCluster.create() as cluster:
        yield cluster


@pytest.fixture
def resilient_db_cluster_pair() -> Iterator[ClusterPair]:
    """A fresh primary and streaming standby, both started, destroyed after the test."""
    pair = _start_pair()
    try:
        yield pair
    finally:
        pair.primary.destroy()


@pytest.fixture(scope="session")
def _resilient_db_session_pair() -> Iterator[ClusterPair]:
    pair = _start_pair()
    try:
        yield pair
    finally:
        pair.primary.destroy()


@pytest.fixture
def resilient_db_shared_pair(_resilient_db_session_pair: ClusterPair) -> ClusterPair:
    """The session's shared primary + standby (do not stop, crash or promote them)."""
    pair = _resilient_db_session_pair
    for cluster in (pair.primary, pair.standby):
        if not cluster.is_running() or cluster.role != (
            "primary" if cluster is pair.primary else "standby"
        ):
            pytest.fail(
                f"the shared cluster pair was changed by an earlier test ({cluster!r}); "
                "use resilient_db_cluster / resilient_db_cluster_pair for destructive faults"
            )
    return pair
