"""``python -m resilient_db.chaos``: same as ``resilient-db chaos``."""

import sys

from resilient_db.chaos._cli import main

sys.exit(main())
