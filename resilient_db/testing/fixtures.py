"""pytest fixtures built on :class:`~resilient_db.testing.PgCluster`.

Register them once for a whole test suite (root ``conftest.py``)::

    pytest_plugins = ["resilient_db.testing.fixtures"]

Fixtures:

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

from collections.abc import Iterator

import pytest

from resilient_db.testing._cluster import ClusterPair, PgCluster

__all__ = ["resilient_db_cluster", "resilient_db_cluster_pair", "resilient_db_shared_pair"]


def _start_pair() -> ClusterPair:
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
