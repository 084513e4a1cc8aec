"""The README's Quickstart runs as written against the real PostgreSQL, and its ``transfer``
does not deadlock under concurrency; the setup scripts install only when needed."""

from __future__ import annotations

import ast
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from resilient_db import Database, RetryPolicy, UnitEvent

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _quickstart() -> str:
    section = README.split("## Quickstart", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "the Quickstart has no python code block"
    return match.group(1)


def test_readme_has_exactly_two_commands() -> None:
    section = README[README.index("## The two commands") : README.index("## Quickstart")]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert [c for c in commands if c] == ["./scripts/chaos", "./scripts/test"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "./scripts/test" in ci  # CI proves the README's test command
    assert "./scripts/chaos" in ci


@pytest.fixture
def shop_url(admin_conn: psycopg.Connection[tuple[object, ...]], pg_url: str) -> Iterator[str]:
    """A database of its own with the Quickstart's tables (dropped afterwards)."""
    name = f"rdb_readme_{secrets.token_hex(3)}"
    admin_conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    try:
        with psycopg.connect(
            make_url(url).set(drivername="postgresql").render_as_string(hide_password=False),
            autocommit=True,
        ) as conn:
            conn.execute("CREATE TABLE account (id int PRIMARY KEY, balance int NOT NULL)")
            conn.execute("INSERT INTO account SELECT g, 1000 FROM generate_series(1, 4) g")
            conn.execute("CREATE TABLE audit (what text NOT NULL)")
        yield url
    finally:
        admin_conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def quickstart(shop_url: str) -> AsyncIterator[dict[str, Any]]:
    """The Quickstart's code, run once as written (its URL pointed at ``shop_url``)."""
    code = _quickstart()
    assert '"postgresql+asyncpg://app@db.internal/shop"' in code
    code = code.replace('"postgresql+asyncpg://app@db.internal/shop"', repr(shop_url))
    namespace: dict[str, Any] = {"__name__": "readme_quickstart"}
    compiled = compile(code, "README.md#quickstart", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(compiled, namespace)
    if result is not None:
        await result
    try:
        yield namespace
    finally:
        await namespace["engine"].dispose()


async def test_quickstart_runs_as_written(quickstart: dict[str, Any]) -> None:
    db: Database = quickstart["db"]
    accounts = quickstart["Accounts"](db)
    assert await accounts.move(3, 4) == 1001
    async with db.transaction() as session:
        rows = (await session.execute(text("SELECT id, balance FROM account"))).all()
        balances: dict[int, int] = {row[0]: row[1] for row in rows}
        audit = (await session.execute(text("SELECT count(*) FROM audit"))).scalar_one()
    # two transfers of 100 and one block of 5 from 1 to 2; the move of 1 from 3 to 4
    assert balances == {1: 795, 2: 1205, 3: 999, 4: 1001}
    assert audit == 1


async def test_quickstart_transfer_does_not_deadlock_under_concurrency(
    quickstart: dict[str, Any],
) -> None:
    transfer = quickstart["transfer"]
    events: list[UnitEvent] = []
    db = Database(
        quickstart["engine"],
        retry=RetryPolicy(attempts=10, initial=0.001, max_backoff=0.01),
        breaker=None,
        budget=None,
        listeners=[events.append],
        name="transfer",
    )

    async def worker(src: int, dst: int) -> None:
        for _ in range(15):
            await db.run(transfer, src, dst, 1)

    async with anyio.create_task_group() as tg:
        for _ in range(4):  # opposite directions over the same two rows
            tg.start_soon(worker, 1, 2)
            tg.start_soon(worker, 2, 1)
    deadlocks = [e for e in events if e.sqlstate == "40P01"]
    assert deadlocks == [], deadlocks
    async with db.transaction() as session:
        total = (
            await session.execute(text("SELECT sum(balance) FROM account WHERE id IN (1, 2)"))
        ).scalar_one()
    assert total == 2000


def test_bootstrap_installs_only_when_pyproject_changes(tmp_path: Path) -> None:
    # A copy of the script in a project of its own, whose venv's python records each call
    # instead of running pip (the control flow is under test, not pip).
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "bootstrap", tmp_path / "scripts" / "bootstrap")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "demo"\n')
    bindir = tmp_path / ".venv" / "bin"
    bindir.mkdir(parents=True)
    calls = tmp_path / "calls.log"
    (bindir / "python").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bindir / "python").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "RESILIENT_DB_REINSTALL"}
    env["PYTHON"] = sys.executable

    def bootstrap() -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(tmp_path / "scripts" / "bootstrap"), ".venv"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done

    first = bootstrap()
    assert "installing" in first.stderr or "updating" in first.stderr, first.stderr
    assert calls.read_text().count("-m pip install") == 1
    again = bootstrap()
    assert (again.stdout, again.stderr) == ("", "")  # up to date: silent, no pip
    assert calls.read_text().count("-m pip install") == 1
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "demo"\nversion = "2"\n')
    changed = bootstrap()
    assert "pyproject.toml changed" in changed.stderr
    assert calls.read_text().count("-m pip install") == 2


def _block_after(heading: str) -> str:
    section = README.split(heading, 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, f"no python block after {heading!r}"
    return match.group(1)


async def test_logging_structlog_snippet_renders_json_with_the_event_and_data(
    pg_url: str,
) -> None:
    pytest.importorskip("structlog", reason="structlog is not installed (the test extra)")
    import io
    import json
    import logging

    from sqlalchemy.ext.asyncio import AsyncSession

    from resilient_db import create_async_engine

    log = logging.getLogger("resilient_db")
    before = list(log.handlers)
    exec(compile(_block_after("## Logging"), "README.md#logging", "exec"), {})
    (handler,) = [h for h in log.handlers if h not in before]
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    handler.setStream(stream)
    level = log.level
    log.setLevel(logging.INFO)
    engine = create_async_engine(pg_url)
    calls = 0

    async def body(session: AsyncSession) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await session.execute(
                text("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '40001'; END $$")
            )

    try:
        db = Database(engine, retry=RetryPolicy(attempts=2, initial=0.001), name="transfer")
        await db.run(body)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        await engine.dispose()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    failed = next(line for line in lines if line["event"] == "unit.attempt_failed")
    assert failed["unit"] == "transfer"
    assert failed["attempt"] == 1
    assert failed["sqlstate"] == "40001"
    assert failed["category"] == "serialization"
    assert failed["level"] == "info"


async def test_integration_snippets_run(pg_url: str) -> None:
    pytest.importorskip("fastapi", reason="fastapi is not installed (the [fastapi] extra)")
    pytest.importorskip("prometheus_client", reason="prometheus_client is not installed")
    pytest.importorskip("opentelemetry", reason="opentelemetry-api is not installed")
    from resilient_db import create_async_engine

    class AccountsRepo:
        def __init__(self, database: Database) -> None:
            self.database = database

    web: dict[str, Any] = {"AccountsRepo": AccountsRepo}
    exec(compile(_block_after("### FastAPI and Starlette"), "README.md", "exec"), web)
    assert {r.path for r in web["app"].routes} >= {"/ready"}
    engine = create_async_engine(pg_url)
    try:
        telemetry: dict[str, Any] = {"engine": engine, "Database": Database}
        exec(
            compile(_block_after("### OpenTelemetry and Prometheus"), "README.md", "exec"),
            telemetry,
        )
        assert telemetry["telemetry"] in telemetry["db"].listeners
    finally:
        await engine.dispose()
