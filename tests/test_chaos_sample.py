"""Acceptance: a user's project (tests/sample_project) under ``resilient-db chaos``.

The project is installed beside the library (copied into a site directory on PYTHONPATH) and
run from another directory through the console script: PASS for the correct repository
method, FAIL naming the right invariant for the two unsafe ones. The same workloads also run
through the pytest fixture.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from resilient_db.chaos.pytest_plugin import ChaosFixture, chaos

__all__ = ["chaos"]  # the fixture, used below

SAMPLE = Path(__file__).parent / "sample_project"
CLI = Path(sys.executable).with_name("resilient-db")
PHASES = ["--phase", "1", "2", "1.5"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample project "installed": its package copied into a fresh site directory."""
    target = tmp_path_factory.mktemp("site")
    shutil.copytree(SAMPLE / "shop", target / "shop")
    return target


def _chaos(site: Path, cwd: Path, pg_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(site), RESILIENT_DB_CHAOS_DATABASE_URL=pg_url)
    return subprocess.run(
        [str(CLI), "chaos", *PHASES, "--quiet", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_correct_repository_method_passes(site: Path, tmp_path: Path, pg_url: str) -> None:
    out = _chaos(
        site,
        tmp_path,
        pg_url,
        "--workload",
        "shop.chaos:workload",
        "--scenario",
        "terminate_backends",
        "--junit",
        str(tmp_path / "j.xml"),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PASS  terminate_backends" in out.stdout
    suite = ET.parse(tmp_path / "j.xml").getroot()
    assert (suite.get("tests"), suite.get("failures")) == ("1", "0")


def test_a_side_effect_per_attempt_fails_the_users_invariant(
    site: Path, tmp_path: Path, pg_url: str
) -> None:
    out = _chaos(
        site,
        tmp_path,
        pg_url,
        "--workload",
        "shop.chaos:mailing_per_attempt",
        "--scenario",
        "terminate_backends",
        "--junit",
        str(tmp_path / "j.xml"),
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "FAIL  terminate_backends" in out.stdout
    assert "(one_email_per_order)" in out.stdout, out.stdout
    failure = ET.parse(tmp_path / "j.xml").getroot().find("testcase/failure")
    assert failure is not None
    assert failure.get("message") == "one_email_per_order"


def test_swallowed_errors_fail_acknowledged_exactly_once(
    site: Path, tmp_path: Path, pg_url: str
) -> None:
    out = _chaos(
        site, tmp_path, pg_url, "--workload", "shop.chaos:swallowing_errors", "--scenario", "down"
    )
    assert out.returncode == 1, out.stdout + out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("  FAIL  down"))
    assert "acknowledged_exactly_once" in line
    assert "one_email_per_order" not in line  # the orders and e-mails agree: only lies


@pytest.mark.slow
def test_pyproject_table_names_the_workload(site: Path, tmp_path: Path, pg_url: str) -> None:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(SAMPLE / "pyproject.toml", project / "pyproject.toml")
    out = _chaos(site, project, pg_url)  # workload and scenarios from [tool.resilient_db.chaos]
    assert out.returncode == 0, out.stdout + out.stderr
    assert "chaos: shop.chaos:workload, 1 scenario(s)" in out.stdout


@pytest.fixture
def shop_path(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(site))


@pytest.mark.usefixtures("shop_path")
async def test_the_pytest_fixture_gives_the_verdict(chaos: ChaosFixture, pg_url: str) -> None:
    kill = "terminate_backends"
    result = await chaos.check(
        "shop.chaos:workload", kill, url=pg_url, before=1.0, during=2.0, after=1.5
    )
    assert result.status == "PASS"
    with pytest.raises(pytest.fail.Exception, match="one_email_per_order"):
        await chaos.check(
            "shop.chaos:mailing_per_attempt", kill, url=pg_url, before=1.0, during=2.0, after=1.5
        )
