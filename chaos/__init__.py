"""This project's own chaos release suite, built on the public engine :mod:`resilient_db.chaos`.

* :mod:`chaos.transfer` — the transfer workload (money between accounts, one op id each) and
  its ``money_conserved`` invariant;
* ``python -m chaos`` / ``./scripts/chaos`` — every scenario of
  :data:`resilient_db.chaos.SCENARIOS` against it (``--quick``: the CI subset).
"""

from __future__ import annotations
