"""The server, pooler and fleet scenarios on private clusters (slow: each starts servers)."""

from __future__ import annotations

import anyio
import pytest

from resilient_db.chaos import Report, Settings, by_name, format_scenario, run

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

TRANSFER = "chaos.transfer:workload"
PHASES = {"before": 1.0, "during": 3.2, "after": 3.0}


def _text(report: Report) -> str:
    return "\n".join(format_scenario(r) for r in report.results)


async def _run(url: str, names: list[str], **settings: object) -> Report:
    s = Settings(url=url, **{**PHASES, **settings})  # type: ignore[arg-type]
    with anyio.fail_after(90 * len(names)):
        return await run(TRANSFER, by_name(names), settings=s)


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_restart_failover_and_multihost_failover(pg_url: str, driver: str) -> None:
    report = await _run(pg_url, ["restart", "failover", "multihost_failover"], driver=driver)
    text = _text(report)
    restart, failover, multihost = report.results
    assert (restart.status, failover.status) == ("PASS", "PASS"), text
    assert multihost.status == "PASS" or (
        multihost.status == "SKIP" and "multi-host" in (multihost.reason or "")
    ), text
    for r in report.results:
        if r.status == "PASS":
            assert r.breaker["opens"] >= 1, text


async def test_pgbouncer_scenarios(pg_url: str) -> None:
    names = ["pgbouncer_restart", "pgbouncer_pause", "pgbouncer_reconnect", "pgbouncer_promotion"]
    report = await _run(pg_url, names)
    if all(r.status == "SKIP" for r in report.results):
        pytest.skip(report.results[0].reason or "no PgBouncer")
    assert [r.status for r in report.results] == ["PASS"] * 4, _text(report)
    promotion = report.results[3]
    assert any("25006" in e for p in promotion.phases for e in p.errors) or (
        promotion.unit_events
    ), _text(report)


async def test_fleet_reports_connection_attempts_per_second(pg_url: str) -> None:
    report = await _run(pg_url, ["fleet_down"], processes=3)
    (fleet,) = report.results
    assert fleet.status == "PASS", format_scenario(fleet)
    assert fleet.fleet["processes"] == 3
    assert fleet.fleet["connects_per_s_during"] > 0
    assert fleet.ops > 0


async def test_cluster_scenarios_with_an_external_toxiproxy(pg_url: str) -> None:
    """With ``TOXIPROXY_URL`` the restart scenario creates its own proxy through the API
    (the server reaches private clusters on loopback) and deletes it afterwards."""
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
        report = await _run(pg_url, ["restart"], toxiproxy_url=server.url)
        assert report.environment["toxiproxy"] == "external"
        (restart,) = report.results
        assert restart.status == "PASS", format_scenario(restart)
        assert set(ToxiproxyClient(server.url).proxies()) == {"postgres"}  # ours deleted


async def test_packet_level_faults_in_a_namespace_of_our_own(pg_url: str) -> None:
    report = await _run(pg_url, ["packet_black_hole", "packet_loss"])
    black_hole, loss = report.results
    if black_hole.status == "SKIP":
        pytest.skip(black_hole.reason or "no network namespaces here")
    assert black_hole.status == "PASS", format_scenario(black_hole)
    assert loss.status in ("PASS", "SKIP"), format_scenario(loss)
    if loss.status == "SKIP":
        assert "netem" in (loss.reason or "")
    listed = await anyio.run_process(["ip", "netns", "list"])
    assert f"rdbc{report.environment['run_id']}"[:12] not in listed.stdout.decode()  # deleted
