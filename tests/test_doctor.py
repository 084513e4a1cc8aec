"""`doctor` and the `resilient-db` CLI against the real server."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine

from resilient_db import DoctorReport, Severity, create_async_engine, doctor
from resilient_db._cli import main

PASSWORD = "hunter2-" + secrets.token_hex(4)


def _with_password(url: str) -> str:
    return make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)


def _codes(report: Any) -> dict[str, Severity]:
    return {f.code: f.severity for f in report.findings}


@pytest.fixture
def max_connections(admin_conn: psycopg.Connection[tuple[object, ...]]) -> int:
    row = admin_conn.execute("SHOW max_connections").fetchone()
    assert row is not None
    return int(str(row[0]))


async def test_oversized_pool_is_an_error(pg_url: str, max_connections: int) -> None:
    report = await doctor(pg_url, processes=max_connections, pool_size=2, max_overflow=0)
    assert not report.ok
    assert _codes(report)["pool_too_large"] is Severity.ERROR
    message = next(f.message for f in report.findings if f.code == "pool_too_large")
    assert f"max_connections {max_connections}" in message
    assert f"{max_connections} process(es) x (pool_size 2 + max_overflow 0)" in message
    assert report.server["max_connections"] == str(max_connections)


async def test_small_pool_fits(pg_url: str) -> None:
    report = await doctor(pg_url, processes=1, pool_size=2, max_overflow=1)
    assert report.ok, report.findings
    assert _codes(report)["pool_capacity"] is Severity.INFO


async def test_pool_near_limit_warns(pg_url: str, max_connections: int) -> None:
    usable = max_connections - 3 - -(-(max_connections - 3) * 15 // 100)
    report = await doctor(pg_url, processes=1, pool_size=usable - 1, max_overflow=0)
    assert report.ok
    assert _codes(report)["pool_near_limit"] is Severity.WARNING


@pytest.fixture
def limited_role(admin_conn: psycopg.Connection[tuple[object, ...]]) -> Iterator[str]:
    role = f"rdb_limited_{secrets.token_hex(3)}"
    admin_conn.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 2')
    try:
        yield role
    finally:
        admin_conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
        )
        admin_conn.execute(f'DROP ROLE "{role}"')


async def test_role_connection_limit_is_checked(pg_url: str, limited_role: str) -> None:
    url = make_url(pg_url).set(username=limited_role)
    report = await doctor(url, pool_size=3, max_overflow=0)
    assert _codes(report)["role_connection_limit"] is Severity.ERROR


async def test_recycle_against_idle_session_timeout(
    pg_url: str, pg_database: str, admin_conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    admin_conn.execute(f"ALTER DATABASE \"{pg_database}\" SET idle_session_timeout = '120s'")
    try:
        report = await doctor(pg_url, pool_recycle=600)
        assert _codes(report)["recycle_vs_idle_session_timeout"] is Severity.WARNING
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a finding, never a raw UserWarning
            report = await doctor(pg_url, pool_recycle=100, connect_timeout=5)
        assert "recycle_vs_idle_session_timeout" not in _codes(report)
        assert _codes(report)["short_pool_recycle"] is Severity.WARNING
        message = next(f.message for f in report.findings if f.code == "short_pool_recycle")
        assert "pool_recycle=100s is under 300s" in message
    finally:
        admin_conn.execute(f'ALTER DATABASE "{pg_database}" RESET idle_session_timeout')


async def test_engine_without_timeouts_is_flagged(pg_url: str) -> None:
    engine = sa_create_async_engine(pg_url)
    try:
        report = await doctor(engine)
    finally:
        await engine.dispose()
    codes = _codes(report)
    assert codes["timeouts_unknown"] is Severity.WARNING
    assert codes["no_pre_ping"] is Severity.WARNING


async def test_timeouts_overridden_to_none_are_errors(pg_url: str) -> None:
    engine = create_async_engine(pg_url, connect_args={"timeout": None, "command_timeout": None})
    try:
        report = await doctor(engine)
    finally:
        await engine.dispose()
    codes = _codes(report)
    assert codes["no_connect_timeout"] is Severity.ERROR
    assert codes["no_command_timeout"] is Severity.ERROR


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_unreachable_server_is_an_error_without_password() -> None:
    url = f"postgresql+asyncpg://app:{PASSWORD}@127.0.0.1:{_closed_port()}/db"
    report = await doctor(url, timeout=5, connect_timeout=1)
    assert not report.ok
    assert _codes(report)["connect"] is Severity.ERROR
    assert PASSWORD not in repr(report)


def test_cli_reports_oversized_pool_and_exits_nonzero(
    pg_url: str, max_connections: int, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _with_password(pg_url)
    rc = main(["doctor", "--url", url, "--processes", str(max_connections), "--pool-size", "2"])
    out = capsys.readouterr()
    assert rc == 1
    assert "ERROR   pool_too_large" in out.out
    assert PASSWORD not in out.out + out.err
    assert ":***@" in out.out


def test_cli_json_output(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["doctor", "--url", _with_password(pg_url), "--json", "--pool-size", "2"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert data["ok"] is True
    assert PASSWORD not in json.dumps(data)


def test_cli_refuses_sync_url(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["doctor", "--url", f"postgresql://app:{PASSWORD}@localhost/db"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "postgresql+asyncpg://" in out
    assert PASSWORD not in out


def test_cli_rejects_bad_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["doctor", "--url", "postgresql+asyncpg://u@h/d", "--processes", "0"])
    assert info.value.code == 2
    assert "expected an integer >= 1, got '0'" in capsys.readouterr().err


def test_python_dash_m_runs_the_cli(pg_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    proc = subprocess.run(
        [sys.executable, "-m", "resilient_db", "doctor", "--url", pg_url, "--pool-size", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 error(s)" in proc.stdout


def _message(report: DoctorReport, code: str) -> str:
    return next(f.message for f in report.findings if f.code == code)


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_connect_refused_says_the_real_time_and_one_line(driver: str) -> None:
    url = f"postgresql+{driver}://app:{PASSWORD}@127.0.0.1:{_closed_port()}/db"
    started = time.perf_counter()
    report = await doctor(url, timeout=15, connect_timeout=2)
    assert time.perf_counter() - started < 10
    message = _message(report, "connect")
    assert "within 15s" not in message
    assert "failed after 0." in message
    assert "\n" not in message
    assert "sqlalche.me" not in message
    assert "Background on this error" not in message
    assert "is the server up, on that host and port?" in message
    assert PASSWORD not in message


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_missing_database_gets_its_own_hint(driver: str, pg_url: str) -> None:
    url = make_url(pg_url).set(drivername=f"postgresql+{driver}", database="rdb_no_such_db")
    message = _message(await doctor(url, timeout=10), "connect")
    assert "the database 'rdb_no_such_db' does not exist" in message
    assert 'CREATE DATABASE "rdb_no_such_db"' in message
    assert "sqlalche.me" not in message


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_missing_role_gets_its_own_hint(driver: str, pg_url: str) -> None:
    url = make_url(pg_url).set(
        drivername=f"postgresql+{driver}", username="rdb_no_such_role", password=PASSWORD
    )
    message = _message(await doctor(url, timeout=10), "connect")
    assert "the role 'rdb_no_such_role' does not exist" in message
    assert 'CREATE ROLE "rdb_no_such_role" LOGIN' in message
    assert PASSWORD not in message


async def test_a_silent_server_says_doctors_own_timeout() -> None:
    with socket.socket() as listener:  # accepts (kernel backlog) and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port: int = listener.getsockname()[1]
        report = await doctor(
            f"postgresql+asyncpg://u@127.0.0.1:{port}/db", timeout=0.5, connect_timeout=30
        )
    assert "no answer within 0.5s (doctor's timeout)" in _message(report, "connect")


async def test_too_many_processes_never_advise_zero(pg_url: str) -> None:
    report = await doctor(pg_url, processes=100_000, pool_size=1, max_overflow=0)
    message = _message(report, "pool_too_large")
    assert "at most 0" not in message
    assert "cannot give each of 100000 processes even one connection" in message
    assert "PgBouncer" in message


async def test_single_host_reports_the_primary(pg_url: str) -> None:
    report = await doctor(pg_url, pool_size=2)
    where = f"{make_url(pg_url).host}:{make_url(pg_url).port}"
    assert report.primary == where
    assert report.hosts == {where: "primary"}


async def test_multi_host_url_reports_each_host(pg_url: str) -> None:
    live = make_url(pg_url)
    dead = _closed_port()
    url = f"postgresql+asyncpg://{live.username}@/{live.database}"
    url += f"?host=127.0.0.1:{dead},{live.host}:{live.port}"
    report = await doctor(url, pool_size=2, timeout=10)
    assert report.ok, report.findings
    assert report.primary == f"{live.host}:{live.port}"
    assert report.hosts[f"127.0.0.1:{dead}"].startswith("unreachable: ConnectionRefusedError")
    assert _codes(report)["hosts"] is Severity.INFO


async def test_multi_host_url_without_a_primary_is_an_error() -> None:
    ports = [_closed_port(), _closed_port()]
    url = f"postgresql+psycopg://u@/db?host=127.0.0.1:{ports[0]}&host=127.0.0.1:{ports[1]}"
    report = await doctor(url, timeout=10, connect_timeout=2)
    assert _codes(report)["no_primary"] is Severity.ERROR
    assert report.primary is None
    assert _codes(report)["connect"] is Severity.ERROR


def test_cli_prints_hosts_and_json_primary(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["doctor", "--url", pg_url, "--pool-size", "2", "--timeout", "20"])
    out = capsys.readouterr().out
    assert rc == 0
    assert ": primary" in out
    main(["doctor", "--url", pg_url, "--pool-size", "2", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["primary"] == f"{make_url(pg_url).host}:{make_url(pg_url).port}"


async def test_multi_host_url_that_accepts_a_standby_warns(pg_url: str) -> None:
    live = make_url(pg_url)
    url = f"postgresql+asyncpg://{live.username}@/{live.database}"
    url += f"?host={live.host}:{live.port},127.0.0.1:{_closed_port()}&target_session_attrs=any"
    report = await doctor(url, pool_size=2, timeout=10)
    assert _codes(report)["target_session_attrs"] is Severity.WARNING
    assert "target_session_attrs=read-write" in _message(report, "target_session_attrs")
