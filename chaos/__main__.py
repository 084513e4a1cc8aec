"""``python -m chaos``: this project's release suite (the transfer workload, every scenario).

Same options as ``resilient-db chaos`` (see ``--help``); the workload defaults to
``chaos.transfer:workload``. Unless ``--json``, ``--junit`` or ``--html`` is given, all three
reports are written to ``$RESILIENT_DB_CHAOS_REPORTS`` (default
``$TMPDIR/resilient_db-chaos``). Exit status 0 when every scenario passed or was skipped, 1
when one failed or errored, 2 on bad arguments.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from resilient_db.chaos import main as chaos_main

WORKLOAD = "chaos.transfer:workload"
_OWN = ("--json", "--junit", "--html", "--list", "-h", "--help")


def _with_reports(argv: list[str]) -> list[str]:
    if any(a.split("=", 1)[0] in _OWN for a in argv):
        return argv
    default = Path(tempfile.gettempdir()) / "resilient_db-chaos"
    folder = Path(os.environ.get("RESILIENT_DB_CHAOS_REPORTS") or default)
    folder.mkdir(parents=True, exist_ok=True)
    return [
        *argv,
        "--json",
        str(folder / "report.json"),
        "--junit",
        str(folder / "report.xml"),
        "--html",
        str(folder / "report.html"),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _with_reports(list(sys.argv[1:] if argv is None else argv))
    return chaos_main(args, default_workload=WORKLOAD, prog="chaos")


if __name__ == "__main__":
    sys.exit(main())
