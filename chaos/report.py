"""The suite's report: a readable text table per scenario, and the same data as JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from chaos.runner import ScenarioResult, SuiteResult

__all__ = ["format_scenario", "format_summary", "to_json", "write_json"]

_COLUMNS = (
    ("phase", 7),
    ("secs", 5),
    ("ops", 5),
    ("ok", 5),
    ("failed", 6),
    ("unknown", 7),
    ("ok/s", 6),
    ("fastfail", 8),
    ("p50ms", 7),
    ("p95ms", 7),
    ("p99ms", 7),
    ("maxms", 7),
    ("connects", 8),
    ("breaker", 7),
)


def _row(values: list[str]) -> str:
    return "  " + " ".join(
        v.ljust(w) if i == 0 else v.rjust(w)
        for i, (v, (_, w)) in enumerate(zip(values, _COLUMNS, strict=True))
    )


def format_scenario(result: ScenarioResult) -> str:
    """The text block of one scenario."""
    lines = [f"== {result.name} [{result.status}] — {result.summary} ({result.seconds:.1f}s)"]
    if result.reason:
        lines.append(f"  reason: {result.reason}")
    if result.phases:
        lines.append(_row([name for name, _ in _COLUMNS]))
        for p in result.phases:
            lines.append(
                _row(
                    [
                        p.phase,
                        f"{p.seconds:.1f}",
                        str(p.ops),
                        str(p.acknowledged),
                        str(p.failed),
                        str(p.unknown),
                        f"{p.ops_per_s:.0f}",
                        str(p.fail_fast),
                        f"{p.p50_ms:.0f}",
                        f"{p.p95_ms:.0f}",
                        f"{p.p99_ms:.0f}",
                        f"{p.max_ms:.0f}",
                        str(p.connects),
                        str(p.breaker_transitions),
                    ]
                )
            )
        for p in result.phases:
            if p.errors:
                errs = ", ".join(f"{k} {v}" for k, v in p.errors.items())
                lines.append(f"  errors {p.phase}: {errs}")
    if result.recovery is not None:
        r = result.recovery
        first = "never" if r.first_success is None else f"{r.first_success:.2f}s"
        to95 = "never" if r.to_95 is None else f"{r.to_95:.2f}s"
        lines.append(f"  recovery: first success {first}, >=95% success from {to95}")
    if result.transitions:
        path = " → ".join(f"{t.state}@{t.at:.2f}s({t.reason})" for t in result.transitions[:8])
        more = f" … +{len(result.transitions) - 8}" if len(result.transitions) > 8 else ""
        lines.append(f"  breaker: {path}{more}")
    if result.breaker:
        b = result.breaker
        lines.append(
            f"  breaker stats: failures {b['failures_total']}, rejected {b['rejected_total']}, "
            f"probes {b['probes']} ({b['probe_failures']} failed), state {b['state']}"
        )
    if result.unit_events:
        events = ", ".join(f"{k} {v}" for k, v in result.unit_events.items())
        lines.append(f"  unit events: {events}")
    for u in result.unknown_ops[:5]:
        lines.append(
            f"  unknown op {u['op']}: xid {u['xid']} → {u['xact_status']}, rows {u['rows']}"
        )
    for note in result.notes:
        lines.append(f"  note: {note}")
    for c in result.checks:
        verdict = "PASS" if c.passed else "FAIL"
        extra = f" [{', '.join(c.offenders)}]" if c.offenders and not c.passed else ""
        lines.append(f"  {verdict} {c.name}: {c.detail}{extra}")
    return "\n".join(lines)


def format_summary(suite: SuiteResult) -> str:
    """The closing summary: one line per scenario and the overall verdict."""
    env = suite.environment
    lines = [
        "",
        "== summary",
        "  "
        + ", ".join(
            f"{k} {env[k]}"
            for k in ("toxiproxy", "toxiproxy_version", "server_version", "sqlalchemy")
            if k in env
        ),
    ]
    for r in suite.results:
        failed = [c.name for c in r.checks if not c.passed]
        why = f" ({', '.join(failed)})" if failed else (f" ({r.reason})" if r.reason else "")
        lines.append(f"  {r.status:5} {r.name}{why}")
    verdict = "PASS" if suite.passed else "FAIL"
    lines.append(f"  {verdict}: {len(suite.results)} scenario(s) in {suite.seconds:.1f}s")
    return "\n".join(lines)


def to_json(suite: SuiteResult) -> dict[str, Any]:
    """The whole result as JSON-ready data."""
    data = dataclasses.asdict(suite)
    data["passed"] = suite.passed
    data["settings"]["url"] = suite.environment.get("database", "")
    return data


def write_json(suite: SuiteResult, path: str | Path) -> None:
    """Write :func:`to_json` to ``path``."""
    Path(path).write_text(json.dumps(to_json(suite), indent=2, default=str) + "\n")
