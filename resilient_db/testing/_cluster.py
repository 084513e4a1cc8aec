"""Private, throw-away PostgreSQL clusters for server-fault tests.

A :class:`PgCluster` is a data directory in a temporary directory, initialised with the
server binaries of the local installation (``initdb``, ``pg_ctl``, ``pg_basebackup``) and run
as the ``postgres`` OS user when the tests run as root. It listens on 127.0.0.1 only, on a
free port, with its Unix socket inside its own directory, so it never touches another server.

Every wait is bounded; a failure raises :class:`PgClusterError` carrying the tail of the
server log. ``destroy()`` (also run by the context manager and, as a last resort, by a
finalizer at interpreter exit) kills leftover server processes and removes the directory.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from resilient_db._errors import ConfigurationError, ResilientDBError
from resilient_db._validate import check_choice, check_int

if TYPE_CHECKING:
    import psycopg

__all__ = ["ClusterPair", "PgCluster", "PgClusterError", "StopMode", "find_pg_bindir", "free_port"]

_log = logging.getLogger("resilient_db")

StopMode = Literal["smart", "fast", "immediate"]
"""Shutdown modes of ``pg_ctl stop`` (see the PostgreSQL manual, *pg_ctl*)."""

_DEFAULT_SEARCH = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin")
_LOG_TAIL_LINES = 40
_PORT_RETRIES = 3
_SERVER_USER = "postgres"

# Settings written into every new cluster; ``settings=`` passed to ``create`` override them.
_BASE_SETTINGS: dict[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "50",
    "shared_buffers": "16MB",
    "fsync": "off",
    "full_page_writes": "off",
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "wal_keep_size": "128MB",
    "hot_standby": "on",
    "wal_receiver_status_interval": "1s",
    "wal_retrieve_retry_interval": "200ms",
    "restart_after_crash": "on",
    "logging_collector": "off",
    "log_line_prefix": "'%m [%p] '",
    "log_min_messages": "warning",
    "lc_messages": "'C'",
    "timezone": "'UTC'",
}

_HBA = """\
# written by resilient_db.testing: trust, local socket and 127.0.0.1 only
local   all             all                                     trust
host    all             all             127.0.0.1/32            trust
local   replication     all                                     trust
host    replication     all             127.0.0.1/32            trust
"""

# The local file holds what differs between a primary and its standbys (pg_basebackup copies
# the data directory, and this file is rewritten in the copy).
_LOCAL_CONF = "resilient_db_local.conf"


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterPair:
    """A running primary and its streaming standby (see the pytest fixtures)."""

    primary: PgCluster
    standby: PgCluster


class PgClusterError(ResilientDBError):
    """A private test cluster could not be created, started, stopped or queried in time.

    The message says what was attempted and ends with the tail of the server log.
    """


class PgClusterConfigError(PgClusterError, ConfigurationError):
    """A bad argument to a :class:`PgCluster` method (``Owner(name=value) must be ...``)."""


def _checked(check: Callable[[], object]) -> None:
    """Run a ``resilient_db._validate`` check; its error becomes a PgClusterConfigError."""
    try:
        check()
    except ConfigurationError as exc:
        raise PgClusterConfigError(str(exc)) from None


def find_pg_bindir(version: int | None = None) -> str:
    """Return the directory holding ``initdb``, ``pg_ctl``, ``pg_basebackup`` and ``postgres``.

    Looks at ``$RESILIENT_DB_PG_BINDIR`` first, then ``pg_config --bindir`` on ``PATH``, then
    the usual package locations (``/usr/lib/postgresql/<version>/bin`` on Debian/Ubuntu,
    ``/usr/pgsql-<version>/bin`` on RHEL), preferring the newest version unless ``version`` is
    given. Raises :class:`PgClusterError` naming the places it looked.
    """
    needed = ("initdb", "pg_ctl", "pg_basebackup", "postgres")

    def complete(path: str) -> bool:
        return all(os.access(os.path.join(path, name), os.X_OK) for name in needed)

    looked: list[str] = []
    env = os.environ.get("RESILIENT_DB_PG_BINDIR")
    if env:
        looked.append(f"$RESILIENT_DB_PG_BINDIR={env}")
        if complete(env):
            return env
    candidates: list[str] = []
    for pattern in _DEFAULT_SEARCH:
        candidates.extend(glob.glob(pattern))

    def version_of(path: str) -> int:
        digits = "".join(ch if ch.isdigit() else " " for ch in path).split()
        return int(digits[0]) if digits else 0

    candidates.sort(key=version_of, reverse=True)
    pg_config = shutil.which("pg_config")
    if pg_config and version is None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out:
                candidates.insert(0, out)
    for path in candidates:
        if version is not None and version_of(path) != version:
            continue
        looked.append(path)
        if complete(path):
            return path
    raise PgClusterError(
        "no PostgreSQL server binaries found (need initdb, pg_ctl, pg_basebackup, postgres"
        f"{'' if version is None else f' of version {version}'}); looked in: "
        f"{', '.join(looked) or ', '.join(_DEFAULT_SEARCH)}. Install the server package "
        "(e.g. apt-get install postgresql) or set RESILIENT_DB_PG_BINDIR."
    )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _port_accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (Linux ``/proc``; empty elsewhere)."""
    found: list[int] = []
    for entry in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(entry, encoding="ascii", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry.split("/")[2]))
    return found


def _read_pid(datadir: Path) -> int | None:
    try:
        first = (datadir / "postmaster.pid").read_text(encoding="ascii").split("\n", 1)[0]
        return int(first)
    except (OSError, ValueError):
        return None


def _kill_tree(pid: int) -> list[int]:
    """SIGKILL a postmaster and every child it has; return the PIDs signalled."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGSTOP)  # no more forks while we collect the children
    victims = [pid, *_children(pid)]
    for victim in victims:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(victim, signal.SIGKILL)
    return victims


def _wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# A watchdog process per cluster: it blocks reading its stdin, a pipe from the test process.
# When that process ends in any way (even SIGKILL, where no finalizer runs) the pipe closes,
# and the watchdog kills the server's processes and removes the directory. Standard library
# only, so it starts in a few milliseconds. argv: datadir, root.
_WATCHDOG = """
import os, shutil, signal, sys, time
datadir, root = sys.argv[1], sys.argv[2]
signal.signal(signal.SIGINT, signal.SIG_IGN)
try:
    sys.stdin.buffer.read()
except BaseException:
    pass
try:
    with open(os.path.join(datadir, "postmaster.pid")) as fh:
        pid = int(fh.readline())
except (OSError, ValueError):
    pid = None
if pid is not None:
    victims = [pid]
    try:
        os.kill(pid, signal.SIGSTOP)
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as fh:
                        fields = fh.read().rsplit(")", 1)[-1].split()
                except OSError:
                    continue
                if fields[1] == str(pid):
                    victims.append(int(entry))
    except OSError:
        pass
    for victim in victims:
        try:
            os.kill(victim, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{v}") for v in victims):
        time.sleep(0.02)
shutil.rmtree(root, ignore_errors=True)
"""


def _start_watchdog(datadir: Path, root: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(datadir), str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # no Ctrl-C from the terminal: it must outlive the tests
        close_fds=True,
    )


def _finalize(root: Path, datadir: Path, watchdog: subprocess.Popen[bytes]) -> None:
    """Cleanup on destroy(), garbage collection or interpreter exit: kill and remove."""
    pid = _read_pid(datadir)
    if pid is not None and _alive(pid):
        victims = _kill_tree(pid)
        _wait_until(lambda: not any(_alive(v) for v in victims), 5.0)
    shutil.rmtree(root, ignore_errors=True)
    if watchdog.stdin is not None:
        with contextlib.suppress(OSError):
            watchdog.stdin.close()
    try:
        watchdog.wait(timeout=10)
    except subprocess.TimeoutExpired:
        watchdog.kill()
        watchdog.wait()


_MIN_TMPFS_FREE = 1 << 30


def _default_base_dir() -> str | None:
    """``$RESILIENT_DB_CLUSTER_DIR``, else ``/dev/shm`` when it has >= 1 GiB free, else None.

    A memory file system makes a cluster ~10x quicker to create than a slow disk (``initdb``
    and copies write ~1,000 files); ``None`` means the system temporary directory.
    """
    env = os.environ.get("RESILIENT_DB_CLUSTER_DIR")
    if env:
        return env
    shm = "/dev/shm"
    try:
        stat = os.statvfs(shm)
    except OSError:
        return None
    if os.access(shm, os.W_OK | os.X_OK) and stat.f_bavail * stat.f_frsize >= _MIN_TMPFS_FREE:
        return shm
    return None


_INITDB_ARGS = ("-U", _SERVER_USER, "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C")
_templates: dict[str, Path] = {}
_templates_lock = threading.Lock()


def _run_tool(cmd: list[str], *, timeout: float, cwd: Path) -> None:
    """Run a command as the server user; raise ``PgClusterError`` with its output on failure."""
    full = [*_as_server_user(), *cmd]
    name = os.path.basename(cmd[0])
    try:
        proc = subprocess.run(
            full,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise PgClusterError(f"{name} {' '.join(cmd[1:2])} did not finish in {timeout} s") from exc
    except OSError as exc:
        raise PgClusterError(f"cannot run {name}: {exc}") from exc
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip()
        raise PgClusterError(
            f"{name} {' '.join(cmd[1:2])} failed (exit {proc.returncode}): {output}"
        )


def _copy_template(bindir: str, datadir: Path, *, timeout: float) -> None:
    """Fill ``datadir`` with a fresh cluster: ``initdb`` once per process, then copies.

    A copy takes 0.05-0.7 s where ``initdb`` takes 0.5-1.2 s (tmpfs vs disk). The template is
    removed at exit.
    """
    with _templates_lock:
        template = _templates.get(bindir)
        if template is None or not template.is_dir():
            root = Path(tempfile.mkdtemp(prefix="rdb-pg-template-", dir=datadir.parent.parent))
            template = root / "data"
            # Removed at exit, or by its watchdog if this process is killed.
            atexit.register(_finalize, root, template, _start_watchdog(template, root))
            _give_to_server_user(root)
            _run_tool(
                [os.path.join(bindir, "initdb"), "-D", str(template), *_INITDB_ARGS],
                timeout=timeout,
                cwd=root,
            )
            _templates[bindir] = template
    _run_tool(["cp", "-a", str(template), str(datadir)], timeout=timeout, cwd=datadir.parent)


class PgCluster:
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
        self._bindir = bindir
        self._root = root
        self._datadir = datadir
        self._port = port
        self._port_chosen = port_chosen
        self._role: Literal["primary", "standby"] = role
        self._destroyed = False
        self._standbys: list[PgCluster] = []
        scratch = root if owns_root else datadir
        self._finalizer = weakref.finalize(
            self, _finalize, scratch, datadir, _start_watchdog(datadir, scratch)
        )

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
            _checked(
                lambda: check_int("PgCluster.create", "port", port, min=1024, max=65535, fix=fix)
            )
        bindir = bindir or find_pg_bindir()
        root = Path(tempfile.mkdtemp(prefix="rdb-pg-", dir=base_dir or _default_base_dir()))
        try:
            _give_to_server_user(root)
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
            _copy_template(bindir, datadir, timeout=timeout)
            conf = {**_BASE_SETTINGS, **(settings or {})}
            lines = [f"{key} = {value}" for key, value in conf.items()]
            cluster._append(
                "postgresql.conf",
                "\n# resilient_db.testing\n"
                + "\n".join(lines)
                + f"\ninclude_if_exists = '{_LOCAL_CONF}'\n",
            )
            cluster._write("pg_hba.conf", _HBA)
            cluster._write_local_conf()
        except BaseException:
            cluster.destroy()
            raise
        _log.info(
            "cluster.created",
            extra={"cluster_port": cluster.port, "cluster_dir": str(root), "role": "primary"},
        )
        return cluster

    def create_standby(self, *, port: int | None = None, timeout: float = 60.0) -> PgCluster:
        """Make a streaming standby of this (running) cluster and return it, not started.

        Uses ``pg_basebackup -R -X stream`` into a new temporary directory next to this
        cluster's; the standby follows this cluster through ``primary_conninfo``. Start it with
        :meth:`start` (or ``with``), then use :meth:`wait_for_replay` to wait for it.
        """
        self._require_running("create a standby")
        root = Path(tempfile.mkdtemp(prefix="rdb-pg-standby-", dir=self._root.parent))
        try:
            _give_to_server_user(root)
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
                f"host=127.0.0.1 port={self._port} user={_SERVER_USER} "
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
        return f"postgresql://{_SERVER_USER}@127.0.0.1:{self._port}/{database}"

    def url(
        self, driver: Literal["asyncpg", "psycopg"] = "asyncpg", database: str = "postgres"
    ) -> str:
        """SQLAlchemy URL, e.g. ``postgresql+asyncpg://postgres@127.0.0.1:<port>/postgres``."""
        _checked(lambda: check_choice("PgCluster.url", "driver", driver, ("asyncpg", "psycopg")))
        return f"postgresql+{driver}://{_SERVER_USER}@127.0.0.1:{self._port}/{database}"

    @property
    def pid(self) -> int | None:
        """PID of the running postmaster, or ``None``."""
        pid = _read_pid(self._datadir)
        return pid if pid is not None and _alive(pid) else None

    def is_running(self) -> bool:
        """True if the postmaster process of this cluster is alive."""
        return not self._destroyed and self.pid is not None

    # ------------------------------------------------------------------ lifecycle

    def start(self, *, timeout: float = 30.0) -> None:
        """Start the server and wait (at most ``timeout`` s) until it accepts connections.

        A standby counts as started when it accepts read-only connections. If the port was
        chosen automatically and another process took it meanwhile, a new port is chosen.
        """
        self._require_alive()
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
        _checked(
            lambda: check_choice("PgCluster.stop", "mode", mode, ("smart", "fast", "immediate"))
        )
        pid = self.pid
        if pid is None:
            return
        victims = [pid, *_children(pid)]
        self._run(
            "pg_ctl",
            ["stop", "-D", str(self._datadir), "-m", mode, "-w", "-t", str(max(1, round(timeout)))],
            timeout=timeout + 10,
        )
        if not _wait_until(lambda: not any(_alive(v) for v in victims), timeout):
            raise self._error(f"server processes still alive {timeout} s after stop -m {mode}")
        _log.info("cluster.stopped", extra={"cluster_port": self._port, "mode": mode})

    def restart(self, mode: StopMode = "fast", *, timeout: float = 30.0) -> None:
        """:meth:`stop` with ``mode`` (if running), then :meth:`start`."""
        self.stop(mode, timeout=timeout)
        self.start(timeout=timeout)

    def crash(self, *, timeout: float = 10.0) -> None:
        """SIGKILL the postmaster and all its processes, like a power loss of the server.

        Clients see their connections drop with no SQLSTATE. The cluster stays down;
        :meth:`start` brings it back through crash recovery.
        """
        pid = self.pid
        if pid is None:
            raise self._error("crash() needs a running server")
        victims = _kill_tree(pid)
        if not _wait_until(lambda: not any(_alive(v) for v in victims), timeout):
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
            if pid not in _children(postmaster):
                raise self._error(f"pid {pid} is not a process of this server")
            os.kill(pid, signal.SIGKILL)
        finally:
            if helper is not None:
                with contextlib.suppress(Exception):
                    helper.close()
        # Wait until the postmaster has reaped the backend (it then is in crash mode and
        # refuses connections), then until recovery has ended.
        killed = pid
        if not _wait_until(lambda: not os.path.exists(f"/proc/{killed}"), timeout):
            raise self._error(f"backend {killed} was not reaped {timeout} s after SIGKILL")
        self._wait_ready(timeout)
        _log.info("cluster.backend_crashed", extra={"cluster_port": self._port, "pid": pid})
        return pid

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

        if not _wait_until(promoted, timeout, 0.05):
            raise self._error(f"still in recovery {timeout} s after pg_ctl promote")
        self._role = "primary"
        _log.info("cluster.promoted", extra={"cluster_port": self._port})

    def wait_for_replay(self, standby: PgCluster, *, timeout: float = 30.0) -> None:
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

        if not _wait_until(caught_up, timeout, 0.02):
            raise standby._error(f"standby did not replay up to {target} within {timeout} s")

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

    # ------------------------------------------------------------------ queries

    def connect(
        self, *, database: str = "postgres", timeout: float = 10.0
    ) -> psycopg.Connection[tuple[Any, ...]]:
        """A sync psycopg autocommit connection as ``postgres`` (close it yourself)."""
        import psycopg

        return psycopg.connect(
            host="127.0.0.1",
            port=self._port,
            user=_SERVER_USER,
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

    def _require_alive(self) -> None:
        if self._destroyed:
            raise PgClusterError(f"{self!r} was destroyed; create a new cluster")

    def _require_running(self, action: str) -> None:
        self._require_alive()
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
            _run_tool([os.path.join(self._bindir, tool), *args], timeout=timeout, cwd=self._root)
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

        if not _wait_until(answers, timeout, 0.05):
            raise self._error(f"server not accepting connections after {timeout} s: {last!r}")

    def _write(self, name: str, text: str) -> None:
        path = self._datadir / name
        path.write_text(text, encoding="utf-8")
        _give_to_server_user(path)

    def _append(self, name: str, text: str) -> None:
        with open(self._datadir / name, "a", encoding="utf-8") as fh:
            fh.write(text)

    def _write_local_conf(self) -> None:
        sock = self.socket_dir
        sock.mkdir(exist_ok=True)
        _give_to_server_user(sock)
        self._write(
            _LOCAL_CONF,
            "# per-cluster settings (rewritten for each standby)\n"
            f"port = {self._port}\nunix_socket_directories = '{sock}'\n",
        )

    def _kill_leftovers(self) -> None:
        pid = _read_pid(self._datadir)
        if pid is not None and _alive(pid):
            victims = _kill_tree(pid)
            _wait_until(lambda: not any(_alive(v) for v in victims), 10.0)
        self._remove_stale_locks()

    def _remove_stale_locks(self) -> None:
        """Remove lock files of a killed postmaster.

        The server refuses to start while the PID in ``postmaster.pid`` exists, and a killed
        postmaster can linger as a zombie when nothing reaps orphans (PID 1 in containers).
        """
        pid = _read_pid(self._datadir)
        if pid is None or _alive(pid):
            return
        with contextlib.suppress(FileNotFoundError):
            (self._datadir / "postmaster.pid").unlink()
        for lock in self.socket_dir.glob(".s.PGSQL.*.lock"):
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()


def _server_uid_gid() -> tuple[int, int] | None:
    """(uid, gid) of the ``postgres`` user when running as root, else ``None``."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(_SERVER_USER)
    except KeyError as exc:
        raise PgClusterError(
            "running as root, but there is no 'postgres' OS user to run the server as "
            "(PostgreSQL refuses to run as root): create it (useradd postgres) or run the "
            "tests as an unprivileged user"
        ) from exc
    return entry.pw_uid, entry.pw_gid


def _as_server_user() -> list[str]:
    ids = _server_uid_gid()
    if ids is None:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv:
        return [setpriv, f"--reuid={ids[0]}", f"--regid={ids[1]}", "--init-groups", "--"]
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", _SERVER_USER, "--"]
    raise PgClusterError("running as root but neither setpriv nor runuser is on PATH")


def _give_to_server_user(path: Path) -> None:
    ids = _server_uid_gid()
    if ids is not None:
        os.chown(path, *ids)
    if path.is_dir():
        path.chmod(0o700)
