"""The integrations stage: web frameworks and telemetry, above the units of work.

Each integration is its own module, imported on its own (its dependencies are extras):

* :mod:`resilient_db.integrations.asgi` — framework-neutral ASGI lifespan, problem-details
  middleware and readiness report (no extra);
* :mod:`resilient_db.integrations.fastapi` — FastAPI/Starlette dependencies, exception
  handlers and a readiness route (``[fastapi]``);
* :mod:`resilient_db.integrations.otel` — OpenTelemetry spans and metrics (``[otel]``);
* :mod:`resilient_db.integrations.prometheus` — Prometheus metrics (``[prometheus]``).

This surface imports none of the optional dependencies.
"""

from resilient_db.integrations._problems import PROBLEM_JSON, Problem, problem_for

__all__ = ["PROBLEM_JSON", "Problem", "problem_for"]
