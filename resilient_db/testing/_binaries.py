"""Finding the PostgreSQL server binaries, and running them as the server's OS user."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
from pathlib import Path
from typing import Final

from resilient_db.testing._failures import PgClusterError

__all__ = ["SERVER_USER", "find_pg_bindir", "give_to_server_user", "run_tool"]

SERVER_USER: Final = "postgres"
_DEFAULT_SEARCH: Final = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin")
_NEEDED: Final = ("initdb", "pg_ctl", "pg_basebackup", "postgres")


def _version_of(path: str) -> int:
    digits = "".join(ch if ch.isdigit() else " " for ch in path).split()
    return int(digits[0]) if digits else 0


def _complete(path: str) -> bool:
    return all(os.access(os.path.join(path, name), os.X_OK) for name in _NEEDED)


def _candidates(version: int | None) -> list[str]:
    found: list[str] = []
    for pattern in _DEFAULT_SEARCH:
        found.extend(glob.glob(pattern))
    found.sort(key=_version_of, reverse=True)
    pg_config = shutil.which("pg_config")
    if pg_config and version is None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out:
                found.insert(0, out)
    return found


def find_pg_bindir(version: int | None = None) -> str:
    """Return the directory holding ``initdb``, ``pg_ctl``, ``pg_basebackup`` and ``postgres``.

    Looks at ``$RESILIENT_DB_PG_BINDIR`` first, then ``pg_config --bindir`` on ``PATH``, then
    the usual package locations (``/usr/lib/postgresql/<version>/bin`` on Debian/Ubuntu,
    ``/usr/pgsql-<version>/bin`` on RHEL), preferring the newest version unless ``version`` is
    given. Raises :class:`PgClusterError` naming the places it looked.
    """
    looked: list[str] = []
    env = os.environ.get("RESILIENT_DB_PG_BINDIR")
    if env:
        looked.append(f"$RESILIENT_DB_PG_BINDIR={env}")
        if _complete(env):
            return env
    for path in _candidates(version):
        if version is not None and _version_of(path) != version:
            continue
        looked.append(path)
        if _complete(path):
            return path
    raise PgClusterError(
        "no PostgreSQL server binaries found (need initdb, pg_ctl, pg_basebackup, postgres"
        f"{'' if version is None else f' of version {version}'}); looked in: "
        f"{', '.join(looked) or ', '.join(_DEFAULT_SEARCH)}. Install the server package "
        "(e.g. apt-get install postgresql) or set RESILIENT_DB_PG_BINDIR."
    )


def _server_uid_gid() -> tuple[int, int] | None:
    """(uid, gid) of the ``postgres`` user when running as root, else ``None``."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVER_USER)
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
        return [runuser, "-u", SERVER_USER, "--"]
    raise PgClusterError("running as root but neither setpriv nor runuser is on PATH")


def give_to_server_user(path: Path) -> None:
    """``chown`` ``path`` to the server user (when running as root); directories 0700."""
    ids = _server_uid_gid()
    if ids is not None:
        os.chown(path, *ids)
    if path.is_dir():
        path.chmod(0o700)


def run_tool(cmd: list[str], *, timeout: float, cwd: Path) -> None:
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
