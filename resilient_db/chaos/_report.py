"""Reports: the text blocks and progress line, JSON, and JUnit XML."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from resilient_db.chaos._report_model import Report, ScenarioReport

__all__ = [
    "format_scenario",
    "format_summary",
    "progress_line",
    "to_json",
    "write_json",
    "write_junit",
]

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


def _phase_lines(result: ScenarioReport) -> list[str]:
    lines = [_row([name for name, _ in _COLUMNS])]
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
            lines.append(
                f"  errors {p.phase}: " + ", ".join(f"{k} {v}" for k, v in p.errors.items())
            )
    return lines


def format_scenario(result: ScenarioReport) -> str:
    """The text block of one scenario."""
    lines = [
        f"== {result.name} [{result.status}] ({result.driver}) — {result.summary} "
        f"({result.seconds:.1f}s)"
    ]
    if result.reason:
        lines.append(f"  reason: {result.reason}")
    if result.phases:
        lines += _phase_lines(result)
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
        lines.append("  breaker stats: " + ", ".join(f"{k} {v}" for k, v in result.breaker.items()))
    if result.fleet:
        lines.append("  fleet: " + ", ".join(f"{k} {v:g}" for k, v in result.fleet.items()))
    if result.unit_events:
        lines.append(
            "  unit events: " + ", ".join(f"{k} {v}" for k, v in result.unit_events.items())
        )
    lines += [f"  note: {note}" for note in result.notes]
    for c in result.checks:
        extra = f" [{', '.join(c.offenders)}]" if c.offenders and not c.passed else ""
        lines.append(f"  {'PASS' if c.passed else 'FAIL'} {c.name}: {c.detail}{extra}")
    return "\n".join(lines)


def progress_line(done: int, total: int, result: ScenarioReport) -> str:
    """One line per finished scenario: ``[3/7] PASS down (7.2s)``."""
    why = f" — {', '.join(result.failed_checks)}" if result.failed_checks else ""
    why = why or (f" — {result.reason}" if result.reason else "")
    return f"[{done}/{total}] {result.status} {result.name} ({result.seconds:.1f}s){why}"


def format_summary(report: Report) -> str:
    """The closing summary: one line per scenario and the overall verdict."""
    env = report.environment
    keys = ("toxiproxy", "toxiproxy_version", "server_version", "driver", "sqlalchemy")
    lines = [
        "",
        f"== summary ({report.workload})",
        "  " + ", ".join(f"{k} {env[k]}" for k in keys if k in env),
    ]
    for r in report.results:
        why = f" ({', '.join(r.failed_checks)})" if r.failed_checks else ""
        why = why or (f" ({r.reason})" if r.reason else "")
        lines.append(f"  {r.status:5} {r.name} {r.seconds:.1f}s{why}")
    counts = {
        k: sum(r.status == k for r in report.results) for k in ("PASS", "FAIL", "ERROR", "SKIP")
    }
    verdict = "PASS" if report.passed else "FAIL"
    tally = ", ".join(f"{v} {k.lower()}" for k, v in counts.items() if v)
    lines.append(
        f"  {verdict}: {len(report.results)} scenario(s) ({tally}) in {report.seconds:.1f}s"
    )
    return "\n".join(lines)


def to_json(report: Report) -> dict[str, Any]:
    """The whole report as JSON-ready data."""
    data = dataclasses.asdict(report)
    data["passed"] = report.passed
    return data


def write_json(report: Report, path: str | Path) -> None:
    """Write :func:`to_json` to ``path``."""
    Path(path).write_text(json.dumps(to_json(report), indent=2, default=str) + "\n")


def write_junit(report: Report, path: str | Path) -> None:
    """JUnit XML: one test suite per run, one test case per scenario."""
    statuses = [r.status for r in report.results]
    suite = ET.Element(
        "testsuite",
        name=f"resilient_db.chaos[{report.workload}]",
        tests=str(len(statuses)),
        failures=str(statuses.count("FAIL")),
        errors=str(statuses.count("ERROR")),
        skipped=str(statuses.count("SKIP")),
        time=f"{report.seconds:.2f}",
    )
    for r in report.results:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"chaos.{r.driver or 'db'}",
            name=r.name,
            time=f"{r.seconds:.2f}",
        )
        if r.status == "FAIL":
            ET.SubElement(
                case, "failure", message=", ".join(r.failed_checks)
            ).text = format_scenario(r)
        elif r.status == "ERROR":
            ET.SubElement(case, "error", message=r.reason or "error").text = format_scenario(r)
        elif r.status == "SKIP":
            ET.SubElement(case, "skipped", message=r.reason or "skipped")
        else:
            ET.SubElement(case, "system-out").text = format_scenario(r)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
