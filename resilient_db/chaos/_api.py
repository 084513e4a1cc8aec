""":func:`run`: scenarios against a workload, one after the other, into a :class:`Report`."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict

from resilient_db.chaos._env import Environment
from resilient_db.chaos._load import resolve
from resilient_db.chaos._model import Workload, WorkloadFactory
from resilient_db.chaos._report_model import Report, ScenarioReport
from resilient_db.chaos._run import run_scenario
from resilient_db.chaos._scenarios import SCENARIOS, Scenario
from resilient_db.chaos._settings import Settings, redact

__all__ = ["run"]


def _factory(workload: Workload | WorkloadFactory | str) -> tuple[str, WorkloadFactory]:
    if isinstance(workload, str):
        return workload, resolve(workload)
    if isinstance(workload, Workload):
        fixed = workload
        return fixed.name, lambda ctx: fixed
    return getattr(workload, "__qualname__", "workload"), workload


async def run(
    workload: Workload | WorkloadFactory | str,
    scenarios: Sequence[Scenario] | None = None,
    *,
    settings: Settings | None = None,
    on_result: Callable[[ScenarioReport], object] | None = None,
) -> Report:
    """Run ``scenarios`` (default: every built-in one) against ``workload``.

    ``workload`` is a :class:`Workload`, a factory taking a :class:`WorkloadContext`, or a
    ``module:factory`` string (required by fleet scenarios, whose worker processes import
    it). Runs on the asyncio backend. ``on_result`` is called after each scenario; with
    ``settings.fail_fast`` the run stops after the first failing scenario.
    """
    s = settings or Settings()
    name, factory = _factory(workload)
    if isinstance(workload, str) and s.workload_spec is None:
        s = s.with_(workload_spec=workload)
    started = time.monotonic()
    results: list[ScenarioReport] = []
    async with Environment(s) as env:
        for scenario in SCENARIOS if scenarios is None else scenarios:
            result = await run_scenario(env, scenario, factory)
            results.append(result)
            if on_result is not None:
                on_result(result)
            if s.fail_fast and result.status in ("FAIL", "ERROR"):
                break
        info = env.info
    shown = asdict(s)
    shown["url"] = redact(s.url)
    return Report(
        workload=name,
        settings=shown,
        environment=info,
        results=results,
        seconds=round(time.monotonic() - started, 2),
    )
