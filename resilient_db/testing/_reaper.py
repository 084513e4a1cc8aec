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
from typing import Final

from resilient_db.testing._procs import alive, kill_tree, read_pid, wait_gone

__all__ = ["finalize", "start_watchdog", "watchdog_command"]

#: The watchdog script: ``_procs.py`` run by path imports only the standard library and
#: psutil (``-m`` would import the whole package first, ~0.5 s of CPU per cluster).
_WATCHDOG: Final = str(Path(__file__).with_name("_procs.py"))


def watchdog_command(datadir: Path, root: Path) -> list[str]:
    """The watchdog's command line (``-P``: its folder is not put on ``sys.path``)."""
    return [sys.executable, "-P", _WATCHDOG, str(datadir), str(root)]


def start_watchdog(datadir: Path, root: Path) -> subprocess.Popen[bytes]:
    """Start the watchdog (:func:`~resilient_db.testing._procs.main`) of a cluster."""
    return subprocess.Popen(
        watchdog_command(datadir, root),
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
