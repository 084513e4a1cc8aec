"""Private, throw-away PostgreSQL clusters for server-fault tests: creation and lifecycle.

A :class:`PgCluster` is a data directory in a temporary directory, initialised with the
server binaries of the local installation (``initdb``, ``pg_ctl``, ``pg_basebackup``) and run
as the ``postgres`` OS user when the tests run as root. It listens on 127.0.0.1 only, on a
free port, with its Unix socket inside its own directory, so it never touches another server.

Every wait is bounded; a failure raises :class:`PgClusterError` carrying the tail of the
server log. ``destroy()`` (also run by the context manager and, as a last resort, by a
finalizer at interpreter exit or the cluster's watchdog process) kills leftover server
processes and removes the directory.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self

from resilient_db._validate import check_choice, check_int
from resilient_db.testing._binaries import SERVER_USER, find_pg_bindir, give_to_server_user
from resilient_db.testing._failures import PgClusterError, checked
from resilient_db.testing._procs import children, wait_gone, wait_until
from resilient_db.testing._server import ServerDir
from resilient_db.testing._templates import (
    BASE_SETTINGS,
    HBA,
    LOCAL_CONF,
    copy_template,
    default_base_dir,
)

if TYPE_CHECKING:
    pass

__all__ = ["ClusterPair", "PgCluster", "StopMode", "free_port"]

_log = logging.getLogger("resilient_db")

StopMode = Literal["smart", "fast", "immediate"]
"""Shutdown modes of ``pg_ctl stop`` (see the PostgreSQL manual, *pg_ctl*)."""

_PORT_RETRIES = 3


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterPair:
    """A running primary and its streaming standby (see the pytest fixtures)."""

    primary: PgCluster
    standby: PgCluster


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PgCluster(ServerDir):
    """A private PostgreSQL cluster (primary or streaming standby) for fault tests.

    Create one with :meth:`create` (a primary) or :meth:`create_standby` (a standby of a
    running primary). As a context manager it is started on entry and destroyed on exit::

        with PgCluster.create() as primary, primary.create_standby() as standby:
            primary.execute("CREATE TABLE t (x int)")
            primary.wait_for_replay(standby)
            standby.promote()

    Connections: :attr:`dsn` (libpq / asyncpg), :meth:`url` (SQLAlchemy), :meth:`connect`
    (a sync psycopg autocommit connection), :meth:`execute` (one statement, rows back).
    Faults: :meth:`stop` (``smart``/``fast``/``immediate``), :meth:`crash` (SIGKILL of the
    postmaster and all its processes), :meth:`crash_backend` (SIGKILL one backend: the
    server goes through crash recovery and every other session gets SQLSTATE 57P02),
    :meth:`restart`, :meth:`promote`.

    The methods block (subprocesses, bounded polling; most take 0.05-0.3 s). In an async test
    whose other tasks must keep running during the fault, call them in a thread:
    ``await asyncio.to_thread(primary.stop, "immediate")``.
    """

    def __init__(
        self,
        *,
        bindir: str,
        root: Path,
        datadir: Path,
        port: int,
        port_chosen: bool,
        owns_root: bool,
        role: Literal["primary", "standby"],
    ) -> None:
        """Internal: use :meth:`create` or :meth:`create_standby`."""
        super().__init__(
            bindir=bindir,
            root=root,
            datadir=datadir,
            port=port,
            port_chosen=port_chosen,
            owns_root=owns_root,
            role=role,
        )
        self._standbys: list[PgCluster] = []

    # ------------------------------------------------------------------ creation

    @classmethod
    def create(
        cls,
        *,
        bindir: str | None = None,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
        base_dir: str | None = None,
        timeout: float = 60.0,
    ) -> PgCluster:
        """Run ``initdb`` for a new primary (not started: call :meth:`start` or use ``with``).

        ``port`` defaults to a free port (re-chosen if another process takes it before the
        server binds it). ``settings`` are extra ``postgresql.conf`` lines, values written
        verbatim (quote strings yourself: ``{"log_statement": "'all'"}``), overriding the
        defaults: trust auth for the local socket and 127.0.0.1, superuser ``postgres``,
        ``wal_level=replica``, ``max_wal_senders=10``, ``hot_standby=on``, ``fsync=off``.
        ``base_dir`` is where the temporary directory is made (default:
        ``$RESILIENT_DB_CLUSTER_DIR``, else ``/dev/shm`` if it has >= 1 GiB free, else the
        system temporary directory); it must be traversable by the ``postgres`` user.
        """
        if port is not None:
            fix = "use a port in 1024..65535, or None for a free one"
            checked(
                lambda: check_int("PgCluster.create", "port", port, min=1024, max=65535, fix=fix)
            )
        bindir = bindir or find_pg_bindir()
        root = Path(tempfile.mkdtemp(prefix="rdb-pg-", dir=base_dir or default_base_dir()))
        try:
            give_to_server_user(root)
            datadir = root / "data"
            cluster = cls(
                bindir=bindir,
                root=root,
                datadir=datadir,
                port=port or free_port(),
                port_chosen=port is None,
                owns_root=True,
                role="primary",
            )
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        try:
            copy_template(bindir, datadir, timeout=timeout)
            cluster._configure(settings or {})
        except BaseException:
            cluster.destroy()
            raise
        _log.info(
            "cluster.created",
            extra={"cluster_port": cluster.port, "cluster_dir": str(root), "role": "primary"},
        )
        return cluster

    def _configure(self, settings: Mapping[str, str]) -> None:
        """Write the settings (defaults overridden by ``settings``) and the pg_hba.conf."""
        conf = {**BASE_SETTINGS, **settings}
        lines = [f"{key} = {value}" for key, value in conf.items()]
        self._append(
            "postgresql.conf",
            "\n# resilient_db.testing\n"
            + "\n".join(lines)
            + f"\ninclude_if_exists = '{LOCAL_CONF}'\n",
        )
        self._write("pg_hba.conf", HBA)
        self._write_local_conf()

    def create_standby(self, *, port: int | None = None, timeout: float = 60.0) -> PgCluster:
        """Make a streaming standby of this (running) cluster and return it, not started.

        Uses ``pg_basebackup -R -X stream`` into a new temporary directory next to this
        cluster's; the standby follows this cluster through ``primary_conninfo``. Start it with
        :meth:`start` (or ``with``), then use :meth:`wait_for_replay` to wait for it.
        """
        self._require_running("create a standby")
        root = Path(tempfile.mkdtemp(prefix="rdb-pg-standby-", dir=self._root.parent))
        try:
            give_to_server_user(root)
            standby = PgCluster(
                bindir=self._bindir,
                root=root,
                datadir=root / "data",
                port=port or free_port(),
                port_chosen=port is None,
                owns_root=True,
                role="standby",
            )
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        try:
            conninfo = (
                f"host=127.0.0.1 port={self._port} user={SERVER_USER} "
                f"application_name=standby_{standby._port}"
            )
            self._run(
                "pg_basebackup",
                [
                    "-D",
                    str(standby._datadir),
                    "-d",
                    conninfo,
                    "-R",
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                    "--no-sync",
                    "--no-verify-checksums",
                ],
                timeout=timeout,
            )
            standby._write_local_conf()
        except BaseException:
            standby.destroy()
            raise
        self._standbys.append(standby)
        _log.info(
            "cluster.standby_created",
            extra={"cluster_port": standby.port, "primary_port": self._port, "role": "standby"},
        )
        return standby

    # ------------------------------------------------------------------ lifecycle

    def start(self, *, timeout: float = 30.0) -> None:
        """Start the server and wait (at most ``timeout`` s) until it accepts connections.

        A standby counts as started when it accepts read-only connections. If the port was
        chosen automatically and another process took it meanwhile, a new port is chosen.
        """
        self._requirealive()
        if self.is_running():
            return
        self._remove_stale_locks()
        for attempt in range(_PORT_RETRIES):
            log_offset = self._log_size()
            try:
                self._run(
                    "pg_ctl",
                    [
                        "start",
                        "-D",
                        str(self._datadir),
                        "-l",
                        str(self.log_path),
                        "-w",
                        "-t",
                        str(max(1, round(timeout))),
                    ],
                    timeout=timeout + 10,
                )
                self._wait_ready(timeout)
            except PgClusterError:
                bind_failed = "could not bind" in self._log_text(log_offset)
                if self._port_chosen and bind_failed and attempt + 1 < _PORT_RETRIES:
                    self._kill_leftovers()
                    self._port = free_port()
                    self._write_local_conf()
                    continue
                self._kill_leftovers()
                raise
            break
        _log.info("cluster.started", extra={"cluster_port": self._port, "role": self._role})

    def stop(self, mode: StopMode = "fast", *, timeout: float = 30.0) -> None:
        """Stop the server with ``pg_ctl stop -m <mode>`` and wait until it is gone.

        ``smart`` waits for clients to disconnect, ``fast`` terminates sessions and shuts down
        cleanly (clients get SQLSTATE 57P01), ``immediate`` quits without a shutdown checkpoint
        (clients lose the connection; the next start runs crash recovery). Stopping a stopped
        cluster does nothing.
        """
        checked(
            lambda: check_choice("PgCluster.stop", "mode", mode, ("smart", "fast", "immediate"))
        )
        pid = self.pid
        if pid is None:
            return
        victims = [pid, *children(pid)]
        self._run(
            "pg_ctl",
            ["stop", "-D", str(self._datadir), "-m", mode, "-w", "-t", str(max(1, round(timeout)))],
            timeout=timeout + 10,
        )
        if not wait_gone(victims, timeout):
            raise self._error(f"server processes still alive {timeout} s after stop -m {mode}")
        _log.info("cluster.stopped", extra={"cluster_port": self._port, "mode": mode})

    def restart(self, mode: StopMode = "fast", *, timeout: float = 30.0) -> None:
        """:meth:`stop` with ``mode`` (if running), then :meth:`start`."""
        self.stop(mode, timeout=timeout)
        self.start(timeout=timeout)

    def promote(self, *, timeout: float = 30.0) -> None:
        """Promote this standby (``pg_ctl promote``) and wait until it accepts writes."""
        self._require_running("promote")
        self._run(
            "pg_ctl",
            ["promote", "-D", str(self._datadir), "-w", "-t", str(max(1, round(timeout)))],
            timeout=timeout + 10,
        )

        def promoted() -> bool:
            return self.execute("SELECT pg_is_in_recovery()", timeout=timeout) == [(False,)]

        if not wait_until(promoted, timeout, 0.05):
            raise self._error(f"still in recovery {timeout} s after pg_ctl promote")
        self._role = "primary"
        _log.info("cluster.promoted", extra={"cluster_port": self._port})

    def destroy(self) -> None:
        """Stop the server (``immediate``; SIGKILL if that fails) and remove its directory.

        Also destroys the standbys made from this cluster. Safe to call more than once.
        """
        if self._destroyed:
            return
        for standby in self._standbys:
            standby.destroy()
        self._standbys.clear()
        with contextlib.suppress(PgClusterError):
            self.stop("immediate", timeout=10)
        self._kill_leftovers()
        self._destroyed = True
        self._finalizer()
        _log.info("cluster.destroyed", extra={"cluster_port": self._port})

    def __enter__(self) -> Self:
        """Start the cluster (destroying it if the start fails)."""
        try:
            self.start()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Destroy the cluster."""
        self.destroy()

    def __repr__(self) -> str:
        state = "destroyed" if self._destroyed else ("running" if self.is_running() else "stopped")
        return f"<PgCluster {self._role} 127.0.0.1:{self._port} {state} {self._root}>"
