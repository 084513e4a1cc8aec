"""``python -m chaos``: this project's release suite (the transfer workload, every scenario).

Same options as ``resilient-db chaos`` (see ``--help``); the workload defaults to
``chaos.transfer:workload``. Exit status 0 when every scenario passed or was skipped, 1 when
one failed or errored, 2 on bad arguments.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from resilient_db.chaos import main as chaos_main

WORKLOAD = "chaos.transfer:workload"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    return chaos_main(argv, default_workload=WORKLOAD, prog="chaos")


if __name__ == "__main__":
    sys.exit(main())
