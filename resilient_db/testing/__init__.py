"""Test helpers: private, throw-away PostgreSQL clusters for server-fault tests.

``PgCluster.create()`` runs ``initdb`` in a temporary directory (as the ``postgres`` OS user
when running as root) for a server on a free port of 127.0.0.1; ``create_standby()`` makes a
streaming standby with ``pg_basebackup``. The pytest fixtures are in the plugin
:mod:`resilient_db.pytest_plugin` (registered automatically). These helpers need the
PostgreSQL server binaries, psycopg 3 and psutil (the ``testing`` extra); they never touch
any other server.

Modules, one job each: ``_binaries`` (finding and running the server binaries),
``_procs`` (process trees, via psutil; run by path it is the watchdog, the process that
cleans up after a killed test run), ``_reaper`` (starting the watchdog, and the
finalizer), ``_templates`` (settings and the initdb template), ``_server`` (a
handle on one server's directory, its queries) and ``_cluster`` (creation, lifecycle,
faults).
"""

from __future__ import annotations

from resilient_db.testing._binaries import find_pg_bindir
from resilient_db.testing._cluster import ClusterPair, PgCluster, StopMode, free_port
from resilient_db.testing._failures import PgClusterConfigError, PgClusterError

__all__ = [
    "ClusterPair",
    "PgCluster",
    "PgClusterConfigError",
    "PgClusterError",
    "StopMode",
    "find_pg_bindir",
    "free_port",
]
