"""A private PgBouncer (Debian's ``pgbouncer``) in transaction-pooling mode, for scenarios.

It listens on a free loopback port, trusts every user, runs as the ``postgres`` OS user when
started by root (PgBouncer refuses to run as root) and is only ever stopped by the engine that
started it. The admin console commands (``PAUSE``, ``RESUME``, ``RECONNECT``, ``RELOAD``) go
through ``psql`` from the server binaries (the console speaks only the simple protocol).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from resilient_db.testing import PgClusterError, find_pg_bindir, free_port

__all__ = ["PgBouncer", "pgbouncer_missing"]


def pgbouncer_missing() -> str | None:
    """Why no PgBouncer can run here, or ``None``."""
    if shutil.which("pgbouncer") is None and not Path("/usr/sbin/pgbouncer").exists():
        return "no pgbouncer binary (apt-get install pgbouncer)"
    try:
        find_pg_bindir()
    except PgClusterError as exc:
        return f"no PostgreSQL client binaries for the PgBouncer console ({exc})"
    return None


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class PgBouncer:
    """One PgBouncer process in front of ``127.0.0.1:<upstream>``, database ``dbname``."""

    def __init__(self, *, upstream: int, dbname: str = "postgres") -> None:
        self.binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        self.port = free_port()
        self.dbname = dbname
        self.upstream = upstream
        self.dir = Path(tempfile.mkdtemp(prefix="rdb_pgbouncer_"))
        self.proc: subprocess.Popen[bytes] | None = None
        self._psql = str(Path(find_pg_bindir()) / "psql")
        self._write_config()

    def _write_config(self) -> None:
        (self.dir / "users.txt").write_text('"postgres" ""\n')
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"{self.dbname} = host=127.0.0.1 port={self.upstream} dbname={self.dbname}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.dir / 'users.txt'}\n"
            "pool_mode = transaction\nmax_client_conn = 500\ndefault_pool_size = 20\n"
            "admin_users = postgres\nserver_reset_query =\nignore_startup_parameters = "
            "extra_float_digits,options,statement_timeout,idle_in_transaction_session_timeout\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\nserver_connect_timeout = 3\n"
            "server_login_retry = 1\n"
        )
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            for f in self.dir.iterdir():
                shutil.chown(f, "postgres")

    def start(self, *, timeout: float = 15.0) -> None:
        """Start the process and wait until it accepts connections."""
        cmd = [self.binary, str(self.dir / "pgbouncer.ini")]
        if os.geteuid() == 0:
            cmd[1:1] = ["-u", "postgres"]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while not _port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise PgClusterError(f"pgbouncer did not start: {self.log_tail()}")
            time.sleep(0.05)  # bounded poll

    def kill(self) -> None:
        """SIGKILL the process (only ever ours) and wait for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def repoint(self, upstream: int) -> None:
        """Point the pooled database at another server port (then ``RELOAD``)."""
        self.upstream = upstream
        self._write_config()
        self.console("RELOAD")

    def console(self, command: str, *, timeout: float = 10.0) -> str:
        """Run one admin console command (``PAUSE``, ``RESUME``, ``RECONNECT``...); its rows
        as ``|``-separated lines."""
        where = ["-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "pgbouncer"]
        out = subprocess.run(
            [self._psql, "-X", "-At", *where, "-c", command],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if out.returncode != 0:
            raise PgClusterError(f"pgbouncer {command}: {out.stderr.decode(errors='replace')}")
        return out.stdout.decode(errors="replace")

    def clients(self) -> int:
        """Client connections to the pooled database (the console itself not counted)."""
        rows = [line.split("|") for line in self.console("SHOW CLIENTS").splitlines()]
        return sum(1 for r in rows if len(r) > 2 and r[2] != "pgbouncer")

    def log_tail(self, lines: int = 5) -> str:
        """The last lines of PgBouncer's log."""
        try:
            text = (self.dir / "pgbouncer.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:])

    def destroy(self) -> None:
        """Stop the process and remove its directory."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
