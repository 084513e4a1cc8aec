"""#9 kill storm: every backend terminated every 100-200 ms on a healthy server.

The breaker (keyed per endpoint, trips confirmed by a probe of the server on a fresh
connection) must never open, on both drivers. ``benchmarks/bench_kill_storm.py`` repeats
the storm 20 times and prints the figures.
"""

from __future__ import annotations

import pytest

from tests._kill_storm import run_storm

pytestmark = pytest.mark.slow


@pytest.fixture(params=["asyncpg", "psycopg"])
def url(request: pytest.FixtureRequest, pg_url: str, psycopg_url: str) -> str:
    return pg_url if request.param == "asyncpg" else psycopg_url


@pytest.mark.timeout(240)
async def test_kill_storm_never_opens_the_breaker(url: str) -> None:
    # A hair-trigger breaker (1 failure) would trip again and again during the storm:
    # every trip must be refuted by the probe, none may open it.
    result = await run_storm(url, units=320, consecutive_failures=1, min_kills=5)
    assert result.opened == 0, result.line()
    assert result.kills >= 5, result.line()
    assert result.total_balance_ok, result.line()


@pytest.mark.timeout(240)
async def test_kill_storm_units_succeed(url: str) -> None:
    # The acceptance figure (>= 99 % in 20 consecutive runs) is measured by
    # benchmarks/bench_kill_storm.py; on a loaded 2-core machine some units run out of the
    # retry policy's 5 attempts (every connection dies within 100-200 ms), so the test's
    # bound is looser. The budget must refuse none of these retries (connection_lost).
    result = await run_storm(url, units=320, min_kills=5)
    assert result.opened == 0, result.line()
    assert result.budget_refused == 0, result.line()
    assert result.success_rate >= 0.85, result.line()
