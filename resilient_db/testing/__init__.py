"""Test helpers: private, throw-away PostgreSQL clusters for server-fault tests.

``PgCluster.create()`` runs ``initdb`` in a temporary directory (as the ``postgres`` OS user
when running as root) for a server on a free port of 127.0.0.1; ``create_standby()`` makes a
streaming standby with ``pg_basebackup``. pytest fixtures are in
:mod:`resilient_db.testing.fixtures`. These helpers need the PostgreSQL server binaries and
psycopg 3 (the ``test`` extra); they never touch any other server.
"""

from __future__ import annotations

from resilient_db.testing._cluster import (
    ClusterPair,
    PgCluster,
    PgClusterError,
    StopMode,
    find_pg_bindir,
    free_port,
)

__all__ = [
    "ClusterPair",
    "PgCluster",
    "PgClusterError",
    "StopMode",
    "find_pg_bindir",
    "free_port",
]
