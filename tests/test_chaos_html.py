"""The HTML report renders in a real headless browser: every timeline drawn, no script error."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from resilient_db.chaos import Check, OpRecord, Report, ScenarioReport, render_html, write_html
from resilient_db.chaos._metrics import BreakerTransition, phase_metrics, timeline

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")


def _scenario(name: str, errors: bool) -> ScenarioReport:
    records = [
        OpRecord(
            op=f"{name}-{i}",
            operation="t",
            worker=0,
            started=i * 0.05,
            ended=i * 0.05 + 0.02,
            outcome="failed" if errors and 40 <= i < 60 else "acknowledged",
            error_type="CircuitOpenError" if errors and 40 <= i < 60 else None,
        )
        for i in range(100)
    ]
    samples = [(0.0, "closed"), (2.1, "open"), (3.1, "half_open"), (3.2, "closed")]
    return ScenarioReport(
        name=name,
        summary=f"<b>{name}</b> & co",
        status="FAIL" if errors else "PASS",
        driver="asyncpg",
        seconds=5.0,
        ops=len(records),
        phases=phase_metrics(records, connects=[0.1, 2.5], fault_start=2.0, fault_end=3.0, end=5.0),
        transitions=[BreakerTransition(at=2.1, previous="closed", state="open", reason="x")],
        checks=[Check(name="acknowledged_exactly_once", passed=not errors, detail="d </script>")],
        timeline=timeline(
            records,
            connects=[0.1, 2.5, 2.6],
            breaker=samples,
            fault_start=2.0,
            fault_end=3.0,
            end=5.0,
        ),
    )


def _report() -> Report:
    return Report(
        workload="sample",
        settings={},
        environment={"driver": "asyncpg"},
        seconds=10.0,
        results=[
            _scenario("down", True),
            _scenario("baseline", False),
            ScenarioReport(name="pgbouncer_pause", summary="s", status="SKIP", reason="no"),
        ],
    )


def test_the_html_is_self_contained() -> None:
    html = render_html(_report())
    assert "data-timelines-expected='2'" in html
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", html)  # nothing fetched
    assert "<b>down</b>" not in html  # escaped
    assert '</script>"' not in html


@pytest.mark.skipif(BROWSER is None, reason="no chromium (apt-get install chromium)")
def test_every_timeline_draws_in_headless_chromium(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    write_html(_report(), page)
    assert BROWSER is not None
    out = subprocess.run(
        [
            BROWSER,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    dom = out.stdout
    assert 'data-timelines-drawn="2"' in dom, out.stderr[-2000:]
    assert 'data-script-errors="0"' in dom, out.stderr[-2000:]
    assert dom.count("<svg") == 2
    assert dom.count('class="fault"') == 2 * 4  # the fault window shaded in every panel
    assert "<polyline" in dom
