"""The chaos engine: real faults under your application's operations, then invariants.

Point it at your code with a :class:`Workload` (your production ``Database`` factory, your
repository methods as :class:`Operation` objects, table setup/teardown, how to count what each
operation left behind, your own :class:`Invariant` checks) and :func:`run` the
:data:`SCENARIOS` (Toxiproxy toxics, backend kills, restarts, failovers, multi-host URLs,
PgBouncer faults, a fleet of processes). The result is a :class:`Report`: text, JSON, JUnit
XML and a self-contained HTML page with one timeline per scenario.

From the command line: ``resilient-db chaos --workload myapp.chaos:workload`` (or a
``[tool.resilient_db.chaos]`` table in pyproject.toml). From pytest: the ``chaos`` fixture of
:mod:`resilient_db.chaos.pytest_plugin`. Needs the ``chaos`` extra (psycopg for its checks).

Safety: it refuses a database host that is not loopback unless ``allow_remote``; it creates
only tables named after the run id (your ``setup``/``teardown`` get ``WorkloadContext.prefix``)
and drops them; it stops and restarts only servers it started itself; it never prints a
password. Docs: docs/chaos.md.
"""

from __future__ import annotations

from resilient_db.chaos._api import run
from resilient_db.chaos._cli import main
from resilient_db.chaos._faults import Fault, FaultContext, toxic
from resilient_db.chaos._html import render_html, write_html
from resilient_db.chaos._invariants import BUILTIN_INVARIANTS
from resilient_db.chaos._load import load_workload
from resilient_db.chaos._metrics import BreakerTransition, PhaseMetrics, Recovery, Timeline
from resilient_db.chaos._model import (
    Check,
    Evidence,
    Invariant,
    LeakState,
    Operation,
    OpRecord,
    Outcome,
    Workload,
    WorkloadContext,
    WorkloadFactory,
)
from resilient_db.chaos._report import (
    format_scenario,
    format_summary,
    to_json,
    write_json,
    write_junit,
)
from resilient_db.chaos._report_model import Report, ScenarioReport, Status
from resilient_db.chaos._scenarios import SCENARIOS, Observed, Scenario, by_name
from resilient_db.chaos._settings import Settings

__all__ = [
    "BUILTIN_INVARIANTS",
    "SCENARIOS",
    "BreakerTransition",
    "Check",
    "Evidence",
    "Fault",
    "FaultContext",
    "Invariant",
    "LeakState",
    "Observed",
    "OpRecord",
    "Operation",
    "Outcome",
    "PhaseMetrics",
    "Recovery",
    "Report",
    "Scenario",
    "ScenarioReport",
    "Settings",
    "Status",
    "Timeline",
    "Workload",
    "WorkloadContext",
    "WorkloadFactory",
    "by_name",
    "format_scenario",
    "format_summary",
    "load_workload",
    "main",
    "render_html",
    "run",
    "to_json",
    "toxic",
    "write_html",
    "write_json",
    "write_junit",
]
