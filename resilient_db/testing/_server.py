"""A handle on one private server: paths, state, queries, faults done to its processes.

:class:`~resilient_db.testing.PgCluster` builds on it with creation and the ``pg_ctl``
lifecycle (start, stop, restart, promote, destroy); this part knows where things are, how to
ask the server, and how to kill its processes (:meth:`ServerDir.crash`,
:meth:`ServerDir.crash_backend`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from resilient_db._validate import check_choice
from resilient_db.testing._binaries import SERVER_USER, give_to_server_user, run_tool
from resilient_db.testing._failures import PgClusterError, checked
from resilient_db.testing._procs import (
    alive,
    children,
    kill_tree,
    read_pid,
    reaped,
    wait_gone,
    wait_until,
)
from resilient_db.testing._reaper import finalize, start_watchdog
from resilient_db.testing._templates import LOCAL_CONF

if TYPE_CHECKING:
    import psycopg

__all__ = ["ServerDir"]

_log = logging.getLogger("resilient_db")

_LOG_TAIL_LINES = 40


class ServerDir:
    """The directory, port and role of one private server, and how to query it."""

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
        """Internal: use ``PgCluster.create`` or ``create_standby``."""
        self._bindir = bindir
        self._root = root
        self._datadir = datadir
        self._port = port
        self._port_chosen = port_chosen
        self._role: Literal["primary", "standby"] = role
        self._destroyed = False
        scratch = root if owns_root else datadir
        self._finalizer = weakref.finalize(
            self, finalize, scratch, datadir, start_watchdog(datadir, scratch)
        )

    # ------------------------------------------------------------------ properties

    @property
    def port(self) -> int:
        """TCP port on 127.0.0.1."""
        return self._port

    @property
    def host(self) -> str:
        """Always ``127.0.0.1``."""
        return "127.0.0.1"

    @property
    def datadir(self) -> Path:
        """The data directory (``PGDATA``)."""
        return self._datadir

    @property
    def socket_dir(self) -> Path:
        """Directory of the Unix-domain socket (inside the cluster's temporary directory)."""
        return self._root / "sock"

    @property
    def log_path(self) -> Path:
        """The server log file."""
        return self._root / "server.log"

    @property
    def role(self) -> Literal["primary", "standby"]:
        """``"standby"`` until :meth:`promote` succeeds, ``"primary"`` otherwise."""
        return self._role

    @property
    def dsn(self) -> str:
        """libpq/asyncpg DSN of the ``postgres`` database: ``postgresql://postgres@...``."""
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        """libpq/asyncpg DSN of ``database`` on this cluster."""
        return f"postgresql://{SERVER_USER}@127.0.0.1:{self._port}/{database}"

    def url(
        self, driver: Literal["asyncpg", "psycopg"] = "asyncpg", database: str = "postgres"
    ) -> str:
        """SQLAlchemy URL, e.g. ``postgresql+asyncpg://postgres@127.0.0.1:<port>/postgres``."""
        checked(lambda: check_choice("PgCluster.url", "driver", driver, ("asyncpg", "psycopg")))
        return f"postgresql+{driver}://{SERVER_USER}@127.0.0.1:{self._port}/{database}"

    @property
    def pid(self) -> int | None:
        """PID of the running postmaster, or ``None``."""
        pid = read_pid(self._datadir)
        return pid if pid is not None and alive(pid) else None

    def is_running(self) -> bool:
        """True if the postmaster process of this cluster is alive."""
        return not self._destroyed and self.pid is not None

    # ------------------------------------------------------------------ process faults

    def crash(self, *, timeout: float = 10.0) -> None:
        """SIGKILL the postmaster and all its processes, like a power loss of the server.

        Clients see their connections drop with no SQLSTATE. The cluster stays down;
        :meth:`start` brings it back through crash recovery.
        """
        pid = self.pid
        if pid is None:
            raise self._error("crash() needs a running server")
        victims = kill_tree(pid)
        if not wait_gone(victims, timeout):
            raise self._error(f"server processes survived SIGKILL for {timeout} s")
        self._remove_stale_locks()
        _log.info("cluster.crashed", extra={"cluster_port": self._port, "pids": len(victims)})

    def crash_backend(self, pid: int | None = None, *, timeout: float = 30.0) -> int:
        """SIGKILL one backend process; the postmaster then restarts the whole server.

        Every other session gets ``57P02`` (*terminating connection because of crash of
        another server process*), the killed one loses its connection. ``pid`` is a backend
        PID (``pg_backend_pid()``); by default a fresh helper connection's backend is killed.
        Returns the PID killed, after waiting until the server accepts connections again.
        """
        postmaster = self.pid
        if postmaster is None:
            raise self._error("crash_backend() needs a running server")
        helper: psycopg.Connection[tuple[Any, ...]] | None = None
        try:
            if pid is None:
                helper = self.connect(timeout=timeout)
                row = helper.execute("SELECT pg_backend_pid()").fetchone()
                assert row is not None
                pid = int(row[0])
            if pid not in children(postmaster):
                raise self._error(f"pid {pid} is not a process of this server")
            os.kill(pid, signal.SIGKILL)
        finally:
            if helper is not None:
                with contextlib.suppress(Exception):
                    helper.close()
        # Wait until the postmaster has reaped the backend (it then is in crash mode and
        # refuses connections), then until recovery has ended.
        killed = pid
        if not wait_until(lambda: reaped(killed), timeout):
            raise self._error(f"backend {killed} was not reaped {timeout} s after SIGKILL")
        self._wait_ready(timeout)
        _log.info("cluster.backend_crashed", extra={"cluster_port": self._port, "pid": pid})
        return pid

    def wait_for_replay(self, standby: ServerDir, *, timeout: float = 30.0) -> None:
        """Wait until ``standby`` has replayed everything this primary has written so far."""
        rows = self.execute("SELECT pg_current_wal_lsn()::text", timeout=timeout)
        target = str(rows[0][0])

        def caught_up() -> bool:
            got = standby.execute(
                "SELECT coalesce(pg_last_wal_replay_lsn() >= %s::pg_lsn, false)",
                (target,),
                timeout=timeout,
            )
            return got == [(True,)]

        if not wait_until(caught_up, timeout, 0.02):
            raise standby._error(f"standby did not replay up to {target} within {timeout} s")

    # ------------------------------------------------------------------ queries

    def connect(
        self, *, database: str = "postgres", timeout: float = 10.0
    ) -> psycopg.Connection[tuple[Any, ...]]:
        """A sync psycopg autocommit connection as ``postgres`` (close it yourself)."""
        import psycopg

        return psycopg.connect(
            host="127.0.0.1",
            port=self._port,
            user=SERVER_USER,
            dbname=database,
            autocommit=True,
            connect_timeout=max(1, round(timeout)),
        )

    def execute(
        self,
        sql: str,
        params: Sequence[object] | None = None,
        *,
        database: str = "postgres",
        timeout: float = 10.0,
    ) -> list[tuple[Any, ...]]:
        """Run one statement in autocommit mode and return its rows (``[]`` if none)."""
        import psycopg

        with self.connect(database=database, timeout=timeout) as conn:
            conn.execute(
                psycopg.sql.SQL("SET statement_timeout = {}").format(
                    psycopg.sql.Literal(f"{max(1, round(timeout * 1000))}ms")
                )
            )
            cur = conn.execute(sql.encode(), params)  # bytes: any SQL text, typed as query
            return cur.fetchall() if cur.description is not None else []

    def server_log(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server log."""
        text = self._log_text(0)
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------------ internals

    def _requirealive(self) -> None:
        if self._destroyed:
            raise PgClusterError(f"{self!r} was destroyed; create a new cluster")

    def _require_running(self, action: str) -> None:
        self._requirealive()
        if not self.is_running():
            raise self._error(f"cannot {action}: the server is not running (call start())")

    def _error(self, message: str) -> PgClusterError:
        tail = self.server_log()
        return PgClusterError(
            f"{message} [cluster 127.0.0.1:{self._port}, {self._datadir}]"
            + (f"\n--- server log (tail) ---\n{tail}" if tail else "\n(server log is empty)")
        )

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def _log_text(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                return fh.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def _run(self, tool: str, args: list[str], *, timeout: float) -> None:
        try:
            run_tool([os.path.join(self._bindir, tool), *args], timeout=timeout, cwd=self._root)
        except PgClusterError as exc:
            raise self._error(str(exc)) from exc

    def _wait_ready(self, timeout: float) -> None:
        """Poll with a real query until the server answers (bounded by ``timeout``)."""
        last: list[BaseException] = []

        def answers() -> bool:
            if self.pid is None:
                raise self._error("the server exited while starting")
            try:
                return self.execute("SELECT 1", timeout=min(timeout, 5.0)) == [(1,)]
            except Exception as exc:  # any connection error: not ready yet
                last[:] = [exc]
                return False

        if not wait_until(answers, timeout, 0.05):
            raise self._error(f"server not accepting connections after {timeout} s: {last!r}")

    def _write(self, name: str, text: str) -> None:
        path = self._datadir / name
        path.write_text(text, encoding="utf-8")
        give_to_server_user(path)

    def _append(self, name: str, text: str) -> None:
        with open(self._datadir / name, "a", encoding="utf-8") as fh:
            fh.write(text)

    def _write_local_conf(self) -> None:
        sock = self.socket_dir
        sock.mkdir(exist_ok=True)
        give_to_server_user(sock)
        self._write(
            LOCAL_CONF,
            "# per-cluster settings (rewritten for each standby)\n"
            f"port = {self._port}\nunix_socket_directories = '{sock}'\n",
        )

    def _kill_leftovers(self) -> None:
        pid = read_pid(self._datadir)
        if pid is not None and alive(pid):
            wait_gone(kill_tree(pid), 10.0)
        self._remove_stale_locks()

    def _remove_stale_locks(self) -> None:
        """Remove lock files of a killed postmaster.

        The server refuses to start while the PID in ``postmaster.pid`` exists, and a killed
        postmaster can linger as a zombie when nothing reaps orphans (PID 1 in containers).
        """
        pid = read_pid(self._datadir)
        if pid is None or alive(pid):
            return
        with contextlib.suppress(FileNotFoundError):
            (self._datadir / "postmaster.pid").unlink()
        for lock in self.socket_dir.glob(".s.PGSQL.*.lock"):
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
