"""Process trees of a private server, through psutil: alive, children, kill, wait.

Used by the clusters and, run as a script, as the watchdog of one cluster (:func:`main`),
so both kill the same way: stop the postmaster (no more forks), collect its children,
SIGKILL them all, wait until they are gone (bounded).

The watchdog is started once per cluster as ``python -P .../testing/_procs.py DATADIR ROOT``
(by path, not ``-m``: ``-m`` would first import the ``resilient_db`` package and SQLAlchemy
with it). So this module imports the standard library and psutil only, never the package.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

__all__ = [
    "alive",
    "children",
    "kill_tree",
    "main",
    "read_pid",
    "reaped",
    "wait_gone",
    "wait_until",
]


def read_pid(datadir: Path) -> int | None:
    """The postmaster PID written in ``datadir/postmaster.pid`` (``None`` if there is none)."""
    try:
        first = (datadir / "postmaster.pid").read_text(encoding="ascii").split("\n", 1)[0]
        return int(first)
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def reaped(pid: int) -> bool:
    """True once ``pid`` no longer exists at all (not even as a zombie awaiting its parent)."""
    return not psutil.pid_exists(pid)


def children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (direct children: a postmaster's backends)."""
    try:
        return [child.pid for child in psutil.Process(pid).children()]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def kill_tree(pid: int) -> list[int]:
    """SIGKILL a postmaster and every child it has; return the PIDs signalled."""
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    with contextlib.suppress(psutil.Error):
        parent.suspend()  # SIGSTOP: no more forks while we collect the children
    try:
        victims = [parent, *parent.children()]
    except psutil.Error:
        victims = [parent]
    for victim in victims:
        with contextlib.suppress(psutil.Error):
            victim.kill()
    return [v.pid for v in victims]


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)  # bounded poll


def wait_gone(pids: Iterable[int], timeout: float) -> bool:
    """Wait (at most ``timeout`` s) until none of ``pids`` is alive; True if they all went."""
    pending = list(pids)
    return wait_until(lambda: not any(alive(p) for p in pending), timeout, 0.02)


def main(argv: list[str]) -> int:
    """The watchdog: wait for EOF on stdin, then kill the server of ``argv[0]``, remove ``argv[1]``.

    Its stdin is a pipe from the test process. When that process ends in any way (even
    SIGKILL, where no finalizer runs) the pipe closes and the watchdog cleans up. A pipe
    already closed when it starts makes it clean up at once, so its start-up opens no window.
    """
    datadir, root = Path(argv[0]), Path(argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(BaseException):
        sys.stdin.buffer.read()
    pid = read_pid(datadir)
    if pid is not None:
        wait_gone(kill_tree(pid), 5.0)
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
