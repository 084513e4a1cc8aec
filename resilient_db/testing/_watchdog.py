"""The watchdog of one private cluster: ``python -m resilient_db.testing._watchdog DATADIR ROOT``.

It blocks reading its stdin, a pipe from the test process. When that process ends in any
way (even SIGKILL, where no finalizer runs) the pipe closes, and the watchdog kills the
server's processes (the same :mod:`~resilient_db.testing._procs` helpers the cluster uses)
and removes the directory. A pipe already closed when it starts makes it clean up at once,
so its start-up time opens no window.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
from pathlib import Path

from resilient_db.testing._procs import kill_tree, read_pid, wait_gone

__all__ = ["main"]


def main(argv: list[str]) -> int:
    """Wait for EOF on stdin, then kill the server of ``argv[0]`` and remove ``argv[1]``."""
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
