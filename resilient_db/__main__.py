"""``python -m resilient_db`` runs the ``resilient-db`` command line."""

from __future__ import annotations

import sys

from resilient_db._cli import main

sys.exit(main())
