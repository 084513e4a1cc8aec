"""pytest support: run one chaos scenario against one repository method, verdict as a test.

Load it in your ``conftest.py``::

    pytest_plugins = ["resilient_db.chaos.pytest_plugin"]

    async def test_place_order_survives_a_lost_commit(chaos):
        await chaos.check(orders_workload, "limit_data", url="postgresql+asyncpg://...")

``chaos.check`` runs the scenario (quick phases unless told otherwise) and fails the test with
the failed invariants named (skips it when the scenario cannot run here, with the reason).
Runs on the asyncio backend.
"""

from __future__ import annotations

from typing import Any

import pytest

from resilient_db.chaos._api import run
from resilient_db.chaos._model import Workload, WorkloadFactory
from resilient_db.chaos._report import format_scenario
from resilient_db.chaos._report_model import ScenarioReport
from resilient_db.chaos._scenarios import Scenario, by_name
from resilient_db.chaos._settings import Settings

__all__ = ["ChaosFixture", "chaos"]


class ChaosFixture:
    """The ``chaos`` fixture: :meth:`check` one scenario, or :meth:`run` it for the report."""

    async def run(
        self,
        workload: Workload | WorkloadFactory | str,
        scenario: str | Scenario,
        *,
        quick: bool = True,
        **settings: Any,
    ) -> ScenarioReport:
        """Run ``scenario`` against ``workload``; its report (no verdict applied)."""
        chosen = by_name([scenario])[0] if isinstance(scenario, str) else scenario
        s = Settings.quick(**settings) if quick else Settings(**settings)
        report = await run(workload, [chosen], settings=s)
        return report.results[0]

    async def check(
        self,
        workload: Workload | WorkloadFactory | str,
        scenario: str | Scenario,
        *,
        quick: bool = True,
        **settings: Any,
    ) -> ScenarioReport:
        """Run ``scenario``; fail the test naming the failed invariants, skip if it cannot run."""
        result = await self.run(workload, scenario, quick=quick, **settings)
        if result.status == "SKIP":
            pytest.skip(f"chaos scenario {result.name}: {result.reason}")
        if result.status != "PASS":
            failed = ", ".join(result.failed_checks) or result.reason or result.status
            pytest.fail(
                f"chaos scenario {result.name} {result.status}: {failed}\n"
                f"{format_scenario(result)}",
                pytrace=False,
            )
        return result


@pytest.fixture
def chaos() -> ChaosFixture:
    """Run chaos scenarios from a test (see the module docstring)."""
    return ChaosFixture()
