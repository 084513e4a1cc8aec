"""The chaos engine: invariants on broken evidence, metrics, reports, safety, real quick runs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from xml.etree import ElementTree as ET

import anyio
import pytest

from chaos.__main__ import main
from resilient_db import ConfigurationError
from resilient_db.chaos import (
    BUILTIN_INVARIANTS,
    SCENARIOS,
    Evidence,
    FaultContext,
    LeakState,
    OpRecord,
    Outcome,
    Scenario,
    Settings,
    by_name,
    format_scenario,
    format_summary,
    render_html,
    run,
    to_json,
    write_junit,
)
from resilient_db.chaos._invariants import builtin_checks
from resilient_db.chaos._metrics import percentile, phase_metrics, recovery, timeline
from resilient_db.chaos._settings import check_loopback, redact

TRANSFER = "chaos.transfer:workload"


def _op(
    op: str,
    outcome: Outcome = "acknowledged",
    *,
    started: float = 0.0,
    ended: float = 0.01,
    xid: int | None = None,
    error: str | None = None,
) -> OpRecord:
    return OpRecord(
        op=op,
        operation="t",
        worker=0,
        started=started,
        ended=ended,
        outcome=outcome,
        error_type=error,
        xid=xid,
    )


def _ev(records: Sequence[OpRecord], applied: Mapping[str, int] | None, **kw: object) -> Evidence:
    values: dict[str, object] = {
        "records": records,
        "applied": applied,
        "deadline": 3.0,
        "allowance": 2.0,
        "leaks": LeakState(pool_checked_out=0, server_sessions=0),
        "fault_start": 0.0,
        "fault_end": 0.0,
        "breaker_state": "closed",
    }
    values.update(kw)
    return Evidence(**values)  # type: ignore[arg-type]


GOOD = [
    _op("a", ended=0.5),
    _op("b", "failed", error="DBAPIError"),
    _op("c", "unknown", xid=10),
    _op("d", "unknown", xid=11),
    _op("e", started=0.7, ended=0.8),
]
GOOD_APPLIED = {"a": 1, "c": 1, "e": 1}
GOOD_STATUS = {"c": "committed", "d": "aborted"}


def _failed(ev: Evidence) -> set[str]:
    return {c.name for c in builtin_checks(ev) if not c.passed}


def test_consistent_evidence_passes_every_builtin_invariant() -> None:
    checks = builtin_checks(_ev(GOOD, GOOD_APPLIED, xact_status=GOOD_STATUS, fault_end=0.6))
    assert [c.name for c in checks] == list(BUILTIN_INVARIANTS)
    assert all(c.passed for c in checks), checks


@pytest.mark.parametrize(
    ("applied", "status", "expected"),
    [
        (
            {**GOOD_APPLIED, "a": 2},
            GOOD_STATUS,
            {"acknowledged_exactly_once", "no_duplicates_or_strays"},
        ),
        ({"c": 1, "e": 1}, GOOD_STATUS, {"acknowledged_exactly_once"}),
        ({**GOOD_APPLIED, "b": 1}, GOOD_STATUS, {"failed_absent"}),
        ({**GOOD_APPLIED, "zz": 1}, GOOD_STATUS, {"no_duplicates_or_strays"}),
        (GOOD_APPLIED, {"c": "aborted", "d": "aborted"}, set()),  # op id is the authority
        (
            {**GOOD_APPLIED, "d": 2},
            {"c": "committed"},
            {"unknown_settled", "no_duplicates_or_strays"},
        ),
    ],
)
def test_broken_evidence_fails_the_right_invariant(
    applied: dict[str, int], status: dict[str, str], expected: set[str]
) -> None:
    assert _failed(_ev(GOOD, applied, xact_status=status, fault_end=0.6)) == expected


def test_time_leak_breaker_and_recovery_invariants() -> None:
    base = {"xact_status": GOOD_STATUS, "fault_end": 0.6}
    late = [*GOOD, _op("x", started=0.0, ended=5.5)]
    assert _failed(_ev(late, {**GOOD_APPLIED, "x": 1}, **base)) == {"deadlines_held"}
    hung = [*GOOD, _op("h", "hung", error="Hung", ended=9.0)]
    assert "every_call_returned" in _failed(_ev(hung, GOOD_APPLIED, **base))
    leaks = LeakState(pool_checked_out=0, server_sessions=3, baseline=1, waited=10.0)
    assert _failed(_ev(GOOD, GOOD_APPLIED, leaks=leaks, **base)) == {"no_leaked_connections"}
    assert _failed(_ev(GOOD, GOOD_APPLIED, xact_status=GOOD_STATUS, fault_end=0.75)) == {
        "recovered"
    }
    assert _failed(_ev(GOOD, GOOD_APPLIED, breaker_state="open", **base)) == {"breaker_closed"}


def test_without_applied_only_the_general_invariants_run() -> None:
    names = {c.name for c in builtin_checks(_ev(GOOD, None, fault_end=0.6))}
    assert "acknowledged_exactly_once" not in names
    assert {"deadlines_held", "no_leaked_connections", "breaker_closed"} <= names


def test_phases_table_matches_the_healthy_before_rule() -> None:
    """A call that started before the fault and failed by it belongs to ``during``: the
    before row and the "healthy before" check can no longer disagree."""
    records = [
        _op("a", started=0.1, ended=0.2),
        _op("b", "failed", started=0.9, ended=1.2, error="DBAPIError"),
        _op("c", "failed", started=1.2, ended=1.9, error="CircuitOpenError"),
        _op("d", started=2.5, ended=2.6),
    ]
    before, during, after = phase_metrics(
        records, fault_start=1.0, fault_end=2.0, end=3.0, connects=[0.05, 1.5, 1.6]
    )
    assert (before.ops, before.failed, during.failed, after.acknowledged) == (1, 0, 2, 1)
    assert during.fail_fast == 1
    assert during.connects == 2
    obs_check = by_name(["down"])[0].expect
    assert obs_check is not None
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.0
    tl = timeline(
        records,
        fault_start=1.0,
        fault_end=2.0,
        end=3.0,
        connects=[1.5],
        breaker=[(0.0, "closed"), (1.3, "open")],
    )
    assert sum(tl.connects) == 1
    assert tl.errors["CircuitOpenError"][int(1.9 / tl.bucket)] == 1
    rec = recovery(records, 2.0)
    assert rec.first_success == pytest.approx(0.6)


def test_safety_refuses_remote_hosts_and_masks_passwords() -> None:
    check_loopback("postgresql+asyncpg://u:p@127.0.0.1/db", allow_remote=False)
    check_loopback("postgresql+asyncpg://u@localhost/db", allow_remote=False)
    check_loopback(
        "postgresql+asyncpg://u@/db?host=127.0.0.1:5432&host=[::1]:5433", allow_remote=False
    )
    with pytest.raises(ConfigurationError, match="--allow-remote"):
        check_loopback("postgresql+asyncpg://u@db.example.com/db", allow_remote=False)
    with pytest.raises(ConfigurationError, match=r"10\.0\.0\.5"):
        check_loopback(
            "postgresql+asyncpg://u@/db?host=127.0.0.1:1&host=10.0.0.5:2", allow_remote=False
        )
    check_loopback("postgresql+asyncpg://u@db.example.com/db", allow_remote=True)
    assert "s3cret" not in redact("postgresql+asyncpg://u:s3cret@127.0.0.1/db")


def test_cli_lists_rejects_and_refuses(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert all(s.name in listed for s in SCENARIOS)
    assert main(["--scenario", "nope"]) == 2
    assert "unknown scenario(s) nope" in capsys.readouterr().err
    assert (
        main(["--url", "postgresql+asyncpg://u:hunter2@db.example.com/x", "--scenario", "baseline"])
        == 2
    )
    err = capsys.readouterr()
    assert "--allow-remote" in err.err
    assert "hunter2" not in err.out + err.err
    assert main(["--workload", "no_such_module_xyz:factory"]) == 2
    assert "cannot import" in capsys.readouterr().err


QUICK = {"before": 1.0, "during": 1.5, "after": 1.5}


async def test_quick_run_on_real_faults(pg_url: str, tmp_path: Path) -> None:
    secret = pg_url.replace("postgres@", "postgres:pw-s3cr3t@", 1)  # trust auth ignores it
    settings = Settings(url=secret, **QUICK)  # type: ignore[arg-type]
    with anyio.fail_after(60):
        report = await run(
            TRANSFER, by_name(["baseline", "down", "terminate_backends"]), settings=settings
        )
    text = "\n".join(format_scenario(r) for r in report.results) + format_summary(report)
    assert report.passed, text
    down = next(r for r in report.results if r.name == "down")
    assert down.breaker["opens"] >= 1, text  # not the consecutive-trips counter (0 once closed)
    assert down.phases[1].fail_fast > 0
    kill = next(r for r in report.results if r.name == "terminate_backends")
    assert kill.phases[1].connects > 3, text  # backends really died and were replaced
    data = json.loads(json.dumps(to_json(report), default=str))
    assert data["passed"] is True
    assert {c["name"] for c in data["results"][0]["checks"]} >= {
        *BUILTIN_INVARIANTS,
        "money_conserved",
    }
    assert "pw-s3cr3t" not in json.dumps(data) + render_html(report) + text  # never printed
    write_junit(report, tmp_path / "junit.xml")
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "0", "0")


async def test_quick_faults_through_psycopg(psycopg_url: str) -> None:
    """The same invariants with the second driver: lost COMMITs mid-stream and a black hole."""
    settings = Settings(url=psycopg_url, **QUICK)  # type: ignore[arg-type]
    with anyio.fail_after(60):
        report = await run(TRANSFER, by_name(["limit_data", "black_hole"]), settings=settings)
    text = "\n".join(format_scenario(r) for r in report.results)
    assert report.passed, text
    assert {r.driver for r in report.results} == {"psycopg"}


@asynccontextmanager
async def _lose_an_op(ctx: FaultContext) -> AsyncIterator[None]:
    """A deliberately broken "fault": deletes one acknowledged transfer behind the library."""
    prefix = f"chaos_{ctx.app_name.removeprefix('rdb_chaos_')}_lose"
    await ctx.admin.aquery(
        f"DELETE FROM {prefix}_ops WHERE op IN (SELECT op FROM {prefix}_ops LIMIT 1)"
    )
    yield


async def test_the_run_fails_when_the_ledger_is_broken(pg_url: str) -> None:
    scenario = Scenario(name="lose", summary="deletes one acknowledged op", fault=_lose_an_op)
    settings = Settings(url=pg_url, before=1.0, during=0.3, after=0.5, fail_fast=True)
    with anyio.fail_after(30):
        report = await run(TRANSFER, [scenario, by_name(["baseline"])[0]], settings=settings)
    (result,) = report.results  # --fail-fast: stopped after the failure
    assert report.exit_code == 1
    assert result.status == "FAIL", format_scenario(result)
    assert set(result.failed_checks) == {"money_conserved", "acknowledged_exactly_once"}


@pytest.mark.slow
def test_cli_quick_mode_end_to_end(pg_url: str, tmp_path: Path) -> None:
    report = tmp_path / "chaos.json"
    assert main(["--quick", "--url", pg_url, "--json", str(report), "--quiet"]) == 0
    data = json.loads(report.read_text())
    assert data["passed"] is True
    assert {r["name"] for r in data["results"]} == {s.name for s in SCENARIOS if s.quick}


async def test_external_toxiproxy_mode_uses_the_pre_created_proxy(pg_url: str) -> None:
    """The ``TOXIPROXY_URL`` path: a server that already has a ``postgres`` proxy (as the
    docker-compose file sets up), driven through its API only; the proxy is left clean."""
    from sqlalchemy.engine import make_url

    from resilient_db.toxiproxy import ToxiproxyClient, ToxiproxyServer

    db = make_url(pg_url)
    config = [
        {
            "name": "postgres",
            "listen": "127.0.0.1:0",
            "upstream": f"{db.host}:{db.port or 5432}",
            "enabled": True,
        }
    ]
    with ToxiproxyServer.in_thread(config=config) as server:
        client = ToxiproxyClient(server.url)
        client.add_toxic("postgres", type="latency", name="left_over", attributes={"latency": 1})
        settings = Settings(url=pg_url, toxiproxy_url=server.url, **QUICK)  # type: ignore[arg-type]
        with anyio.fail_after(30):
            report = await run(TRANSFER, by_name(["down"]), settings=settings)
        assert report.environment["toxiproxy"] == "external"
        (result,) = report.results
        assert result.status == "PASS", format_scenario(result)
        assert result.phases[1].fail_fast > 0
        proxy = client.get_proxy("postgres")
        assert proxy.enabled
        assert proxy.toxics == ()


def test_missing_components_skip_with_one_line_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    from resilient_db.chaos import _env, _netns, _pgbouncer

    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr("pathlib.Path.exists", lambda self: False)
    assert _pgbouncer.pgbouncer_missing() == "no pgbouncer binary (apt-get install pgbouncer)"

    def refuse(url: str) -> object:
        raise ConfigurationError("one host per URL\nmore detail")

    monkeypatch.setattr("resilient_db.engine.create_async_engine", refuse)
    reason = _env.multihost_refusal("postgresql+asyncpg://u@/d?host=a:1&host=b:2")
    assert reason == "create_async_engine refuses multi-host URLs yet (one host per URL)"
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert _netns.netns_missing() == "packet-level faults need root (ip netns)"
    env = _env.Environment(Settings())
    fleet = by_name(["fleet_down"])[0]
    assert "module:factory" in (env.skip_reason(fleet) or "")
