"""The chaos suite: its invariant checker on broken ledgers, its metrics, and real quick runs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from chaos.__main__ import main
from chaos.invariants import INVARIANTS, Check, Evidence, LeakState, LedgerSnapshot
from chaos.invariants import check_invariants as check
from chaos.metrics import Phase, percentile, phase_metrics, recovery
from chaos.report import format_scenario, format_summary, to_json
from chaos.runner import Settings, run_suite
from chaos.scenarios import SCENARIOS, FaultContext, Scenario, by_name
from chaos.workload import OpRecord, Outcome

INITIAL = 100


def _op(
    op: str,
    outcome: Outcome = "acknowledged",
    *,
    src: int = 1,
    dst: int = 2,
    amount: int = 5,
    started: float = 0.0,
    ended: float = 0.01,
    xid: int | None = None,
    error: str | None = None,
) -> OpRecord:
    return OpRecord(
        op=op,
        worker=0,
        src=src,
        dst=dst,
        amount=amount,
        started=started,
        ended=ended,
        outcome=outcome,
        error_type=error,
        xid=xid,
    )


def _ledger(applied: Sequence[OpRecord]) -> LedgerSnapshot:
    balances = {1: INITIAL, 2: INITIAL, 3: INITIAL}
    for r in applied:
        balances[r.src] -= r.amount
        balances[r.dst] += r.amount
    return LedgerSnapshot(balances=balances, rows=[(r.op, r.src, r.dst, r.amount) for r in applied])


def _evidence(records: Sequence[OpRecord], applied: Sequence[OpRecord], **kw: object) -> Evidence:
    base: dict[str, object] = {
        "records": records,
        "ledger": _ledger(applied),
        "total": 3 * INITIAL,
        "initial_balance": INITIAL,
        "leaks": LeakState(pool_checked_out=0, server_sessions=0),
        "deadline": 1.0,
        "allowance": 2.0,
        "fault_end": 0.5,
    }
    base.update(kw)
    return Evidence(**base)  # type: ignore[arg-type]


def _failed(checks: list[Check]) -> set[str]:
    return {c.name for c in checks if not c.passed}


GOOD = [
    _op("a"),
    _op("b", src=2, dst=3, started=0.6, ended=0.7),
    _op("c", "failed", error="DeadlineExceeded", ended=2.9),
    _op("d", "unknown", xid=42, src=3, dst=1),
    _op("e", "unknown", xid=43),
]
GOOD_APPLIED = [GOOD[0], GOOD[1], GOOD[3]]
GOOD_STATUS = {"d": "committed", "e": "aborted"}


def test_a_consistent_ledger_passes_every_invariant() -> None:
    checks = check(_evidence(GOOD, GOOD_APPLIED, xact_status=GOOD_STATUS))
    assert [c.name for c in checks] == list(INVARIANTS)
    assert _failed(checks) == set(), checks


def test_a_duplicated_op_fails() -> None:
    applied = [*GOOD_APPLIED, GOOD[0]]  # "a" applied twice (and its money moved twice)
    failed = _failed(check(_evidence(GOOD, applied, xact_status=GOOD_STATUS)))
    assert failed == {"acknowledged_exactly_once", "no_duplicates_or_strays"}


def test_lost_money_fails() -> None:
    ledger = _ledger(GOOD_APPLIED)
    broken = LedgerSnapshot(balances={**ledger.balances, 3: INITIAL - 1}, rows=ledger.rows)
    checks = check(_evidence(GOOD, GOOD_APPLIED, ledger=broken, xact_status=GOOD_STATUS))
    assert _failed(checks) == {"money_conserved"}
    assert "lost or created -1" in next(c.detail for c in checks if not c.passed)


def test_a_balance_the_ledger_cannot_explain_fails_even_if_the_total_holds() -> None:
    ledger = _ledger(GOOD_APPLIED)
    moved = {**ledger.balances, 1: ledger.balances[1] - 7, 2: ledger.balances[2] + 7}
    broken = LedgerSnapshot(balances=moved, rows=ledger.rows)
    checks = check(_evidence(GOOD, GOOD_APPLIED, ledger=broken, xact_status=GOOD_STATUS))
    assert _failed(checks) == {"money_conserved"}


def test_a_lost_acknowledged_op_fails() -> None:
    failed = _failed(check(_evidence(GOOD, GOOD_APPLIED[1:], xact_status=GOOD_STATUS)))
    assert "acknowledged_exactly_once" in failed


def test_a_failed_op_that_was_applied_fails() -> None:
    failed = _failed(check(_evidence(GOOD, [*GOOD_APPLIED, GOOD[2]], xact_status=GOOD_STATUS)))
    assert failed == {"failed_absent"}


def test_an_unknown_op_contradicting_its_xid_fails() -> None:
    status = {"d": "aborted", "e": "aborted"}  # "d" is in the ledger
    checks = check(_evidence(GOOD, GOOD_APPLIED, xact_status=status))
    assert _failed(checks) == {"unknown_settled"}


def test_unknown_ops_without_xid_status_are_settled_by_op_id() -> None:
    checks = check(_evidence(GOOD, GOOD_APPLIED, xact_status={}))
    assert _failed(checks) == set()
    detail = next(c.detail for c in checks if c.name == "unknown_settled")
    assert "settled by op id" in detail


def test_a_stray_row_fails() -> None:
    stray = _op("zzz")
    failed = _failed(check(_evidence(GOOD, [*GOOD_APPLIED, stray], xact_status=GOOD_STATUS)))
    assert failed == {"no_duplicates_or_strays"}


def test_a_call_past_its_deadline_and_allowance_fails() -> None:
    late = [*GOOD[:2], replace(GOOD[2], ended=3.2), *GOOD[3:]]  # 3.2 s > 1 s + 2 s
    failed = _failed(check(_evidence(late, GOOD_APPLIED, xact_status=GOOD_STATUS)))
    assert failed == {"deadlines_held"}


def test_a_hung_call_fails() -> None:
    records = [*GOOD, _op("h", "hung", error="Hung", ended=9.0)]
    failed = _failed(check(_evidence(records, GOOD_APPLIED, xact_status=GOOD_STATUS)))
    assert "every_call_returned" in failed


@pytest.mark.parametrize(
    "leaks",
    [
        LeakState(pool_checked_out=1, server_sessions=0),
        LeakState(pool_checked_out=0, server_sessions=3, baseline=1, waited=10.0),
    ],
)
def test_a_leaked_connection_fails(leaks: LeakState) -> None:
    failed = _failed(check(_evidence(GOOD, GOOD_APPLIED, xact_status=GOOD_STATUS, leaks=leaks)))
    assert failed == {"no_leaked_connections"}


def test_no_success_after_the_fault_fails() -> None:
    failed = _failed(check(_evidence(GOOD, GOOD_APPLIED, xact_status=GOOD_STATUS, fault_end=0.65)))
    assert failed == {"recovered"}


def test_percentiles_and_phases() -> None:
    assert percentile([], 0.5) == 0.0
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 0.99) == 99.0
    records = [
        _op("a", started=0.1, ended=0.2),
        _op("b", "failed", started=1.1, ended=1.2, error="CircuitOpenError"),
        _op("c", "failed", started=1.2, ended=1.9, error="DeadlineExceeded"),
        _op("d", started=2.5, ended=2.6),
    ]
    phases = [
        Phase(name="before", start=0.0, end=1.0),
        Phase(name="during", start=1.0, end=2.0),
        Phase(name="after", start=2.0, end=3.0),
    ]
    before, during, after = phase_metrics(records, phases, connects=[0.05, 1.5, 1.6])
    assert (before.acknowledged, during.failed, after.acknowledged) == (1, 2, 1)
    assert during.fail_fast == 1
    assert during.errors == {"CircuitOpenError": 1, "DeadlineExceeded": 1}
    assert during.connects == 2
    assert during.max_ms == pytest.approx(700.0)


def test_recovery_times() -> None:
    records = [
        _op("x1", "failed", started=2.0, ended=2.1),
        _op("x2", "failed", started=2.3, ended=2.4),
        _op("x3", started=2.6, ended=2.7),
        _op("x4", started=2.8, ended=2.85),
    ]
    rec = recovery(records, 2.0, bucket=0.25)
    assert rec.first_success == pytest.approx(0.7)
    assert rec.to_95 == pytest.approx(0.5)
    assert recovery(records[:2], 2.0).first_success is None


def test_cli_lists_and_rejects_unknown_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert all(s.name in listed for s in SCENARIOS)
    assert main(["--scenario", "nope"]) == 2
    assert "unknown scenario(s) nope" in capsys.readouterr().err
    with pytest.raises(ValueError, match="known: baseline"):
        by_name(["baseline", "typo"])


QUICK = {"before": 0.5, "during": 1.5, "after": 1.5}


async def test_quick_suite_passes_on_real_faults(pg_url: str, tmp_path: Path) -> None:
    settings = Settings(url=pg_url, **QUICK)  # type: ignore[arg-type]
    with anyio.fail_after(60):
        suite = await run_suite(settings, by_name(["baseline", "down", "terminate_backends"]))
    text = "\n".join(format_scenario(r) for r in suite.results) + format_summary(suite)
    assert suite.passed, text
    down = next(r for r in suite.results if r.name == "down")
    assert any(t.state == "open" for t in down.transitions), text
    assert down.phases[1].fail_fast > 0
    kill = next(r for r in suite.results if r.name == "terminate_backends")
    assert kill.phases[1].connects > 3, text  # backends really died and were replaced
    data = json.loads(json.dumps(to_json(suite), default=str))
    assert data["passed"] is True
    assert {c["name"] for c in data["results"][0]["checks"]} >= set(INVARIANTS)


async def test_quick_faults_through_psycopg(psycopg_url: str) -> None:
    """The same invariants with the second driver: lost COMMITs mid-stream and a black hole."""
    settings = Settings(url=psycopg_url, **QUICK)  # type: ignore[arg-type]
    with anyio.fail_after(60):
        suite = await run_suite(settings, by_name(["limit_data", "black_hole"]))
    text = "\n".join(format_scenario(r) for r in suite.results) + format_summary(suite)
    assert suite.passed, text


@asynccontextmanager
async def _lose_an_op(ctx: FaultContext) -> AsyncIterator[None]:
    """A deliberately broken "fault": deletes one acknowledged transfer behind the library."""
    prefix = f"chaos_{ctx.app_name.removeprefix('rdb_chaos_')}_lose"
    await ctx.admin.aquery(
        f"DELETE FROM {prefix}_ops WHERE op IN (SELECT op FROM {prefix}_ops LIMIT 1)"
    )
    yield


async def test_the_suite_fails_when_the_ledger_is_broken(pg_url: str) -> None:
    scenario = Scenario(name="lose", summary="deletes one acknowledged op", fault=_lose_an_op)
    settings = Settings(url=pg_url, before=0.5, during=0.3, after=0.3)
    with anyio.fail_after(30):
        suite = await run_suite(settings, [scenario])
    (result,) = suite.results
    assert not suite.passed
    assert result.status == "FAIL", format_scenario(result)
    failed = {c.name for c in result.checks if not c.passed}
    assert failed == {"money_conserved", "acknowledged_exactly_once"}, format_scenario(result)


@pytest.mark.slow
def test_cli_quick_mode_end_to_end(pg_url: str, tmp_path: Path) -> None:
    report = tmp_path / "chaos.json"
    assert main(["--quick", "--url", pg_url, "--json", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["passed"] is True
    assert {r["name"] for r in data["results"]} == {s.name for s in SCENARIOS if s.quick}


@pytest.mark.slow
@pytest.mark.cluster
async def test_restart_and_failover_scenarios(pg_url: str) -> None:
    settings = Settings(url=pg_url, before=1.0, during=3.5, after=2.0)
    with anyio.fail_after(110):
        suite = await run_suite(settings, by_name(["restart", "failover"]))
    text = "\n".join(format_scenario(r) for r in suite.results)
    assert [r.status for r in suite.results] == ["PASS", "PASS"], text
    for r in suite.results:
        assert any(t.state == "open" for t in r.transitions), text


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
            suite = await run_suite(settings, by_name(["down"]))
        assert suite.environment["toxiproxy"] == "external"
        assert suite.environment["proxy"] == "postgres"
        (result,) = suite.results
        assert result.status == "PASS", format_scenario(result)
        assert result.phases[1].fail_fast > 0
        proxy = client.get_proxy("postgres")
        assert proxy.enabled
        assert proxy.toxics == ()
        cluster = await run_suite(settings, by_name(["restart"]))
        assert cluster.results[0].status == "SKIP"
        assert "external Toxiproxy" in (cluster.results[0].reason or "")
