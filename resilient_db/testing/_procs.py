"""Process trees of a private server, through psutil: alive, children, kill, wait.

Used by the clusters and by their watchdog process (``python -m
resilient_db.testing._watchdog``), so both kill the same way: stop the postmaster (no more
forks), collect its children, SIGKILL them all, wait until they are gone (bounded).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

__all__ = ["alive", "children", "kill_tree", "read_pid", "reaped", "wait_gone", "wait_until"]


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
