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
    thread on 127.0.0.1 (an ephemeral port); ``--toxiproxy-strict`` runs the embedded one in
    strict mode (400 for likely mistakes the reference accepts, see
    :data:`~resilient_db.toxiproxy.STRICT_CHECKS`).
``toxiproxy``
    A :class:`~resilient_db.toxiproxy.ToxiproxyClient` for that server; ``POST /reset`` after
    the test.
``toxiproxy_postgres``
    A factory: ``db = toxiproxy_postgres(pg_url)`` puts a proxy in front of a PostgreSQL URL
    (``postgresql+asyncpg://…`` or a libpq DSN) and returns a
    :class:`~resilient_db.toxiproxy.ToxiproxyPostgres` whose ``url`` goes through the proxy,
    with fault helpers that always clean up::

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

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from resilient_db.testing import ClusterPair, PgCluster
    from resilient_db.toxiproxy import ToxiproxyClient, ToxiproxyPostgres

__all__ = ["ToxiproxyPostgres"]

_ENV = "TOXIPROXY_URL"


def __getattr__(name: str) -> Any:
    # ``from resilient_db.pytest_plugin import ToxiproxyPostgres`` keeps working, while
    # importing the plugin stays cheap (the class lives in resilient_db.toxiproxy)
    if name == "ToxiproxyPostgres":
        from resilient_db.toxiproxy import ToxiproxyPostgres

        return ToxiproxyPostgres
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--toxiproxy-url``."""
    group = parser.getgroup("resilient_db", "resilient_db fault testing")
    group.addoption(
        "--toxiproxy-url",
        dest="toxiproxy_url",
        default=None,
        help=f"API URL of an external Toxiproxy (default: ${_ENV}, else an embedded server)",
    )
    group.addoption(
        "--toxiproxy-strict",
        dest="toxiproxy_strict",
        action="store_true",
        default=False,
        help="run the embedded server in strict mode (400 for likely mistakes; "
        "no effect on an external Toxiproxy)",
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

    strict = bool(pytestconfig.getoption("toxiproxy_strict", default=False))
    with ToxiproxyServer.in_thread(host="127.0.0.1", port=0, strict=strict) as server:
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


@pytest.fixture
def toxiproxy_postgres(
    toxiproxy: ToxiproxyClient,
) -> Iterator[Callable[..., ToxiproxyPostgres]]:
    """Factory: ``toxiproxy_postgres(url, *, name=None, upstream=None, listen=None)``.

    Creates a proxy to the URL's host:port (or ``upstream``) and returns a
    :class:`ToxiproxyPostgres`. A ``name`` that already exists on the server (e.g. the
    ``postgres`` proxy of docker-compose) is reused as is and only cleaned, not deleted.
    """
    from resilient_db.toxiproxy import ToxiproxyPostgres

    made: list[ToxiproxyPostgres] = []

    def factory(
        url: str,
        *,
        name: str | None = None,
        upstream: str | None = None,
        listen: str = "127.0.0.1:0",
    ) -> ToxiproxyPostgres:
        db = ToxiproxyPostgres.create(toxiproxy, url, name=name, upstream=upstream, listen=listen)
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
