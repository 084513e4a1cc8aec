"""Cleaning up after a cluster: its watchdog process, and the finalizer that kills and removes.

Three lines of defence, all ending in :func:`finalize`'s work: ``destroy()``, a
``weakref.finalize`` / ``atexit`` hook, and (when the test process is SIGKILLed and no hook
runs) the watchdog, a child process that waits for its stdin pipe to close.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from pathlib import Path

from resilient_db.testing._procs import alive, kill_tree, read_pid, wait_gone

__all__ = ["finalize", "start_watchdog"]


def start_watchdog(datadir: Path, root: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m resilient_db.testing._watchdog`` for a cluster in ``datadir``."""
    return subprocess.Popen(
        [sys.executable, "-m", "resilient_db.testing._watchdog", str(datadir), str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # no Ctrl-C from the terminal: it must outlive the tests
        close_fds=True,
    )


def finalize(root: Path, datadir: Path, watchdog: subprocess.Popen[bytes]) -> None:
    """Cleanup on destroy(), garbage collection or interpreter exit: kill and remove."""
    pid = read_pid(datadir)
    if pid is not None and alive(pid):
        wait_gone(kill_tree(pid), 5.0)
    shutil.rmtree(root, ignore_errors=True)
    if watchdog.stdin is not None:
        with contextlib.suppress(OSError):
            watchdog.stdin.close()
    try:
        watchdog.wait(timeout=10)
    except subprocess.TimeoutExpired:
        watchdog.kill()
        watchdog.wait()
