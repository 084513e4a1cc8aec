"""The resilient_db chaos suite: real faults, a transfer workload and invariants.

Run it with ``./scripts/chaos`` (or ``python -m chaos --help``). The pieces:

* :mod:`chaos.workload` — transfers between accounts through :class:`resilient_db.Database`,
  one record per operation (acknowledged / failed / unknown);
* :mod:`chaos.scenarios` — one fault per scenario (Toxiproxy toxics and server faults);
* :mod:`chaos.invariants` — the checks run after every scenario;
* :mod:`chaos.metrics` — per-phase throughput, errors, latency and recovery figures;
* :mod:`chaos.runner` — sets up the proxy, runs scenarios, collects results;
* :mod:`chaos.report` — the text table and the JSON report.
"""

from __future__ import annotations
