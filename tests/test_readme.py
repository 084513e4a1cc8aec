"""The README's Quickstart runs as written, against the real PostgreSQL."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import psycopg

README = Path(__file__).resolve().parent.parent / "README.md"


def _quickstart() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Quickstart") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "the Quickstart has no python block"
    return match.group(1)


def test_readme_has_exactly_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## The two commands") : text.index("## Quickstart")]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert [c for c in commands if c] == ["./scripts/chaos", "./scripts/test"]
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "./scripts/test" in ci  # CI proves the README's test command
    assert "./scripts/chaos" in ci


async def test_quickstart_runs(pg_url: str, pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE account (id int PRIMARY KEY, balance bigint NOT NULL)")
        conn.execute("INSERT INTO account VALUES (1, 1000), (2, 1000)")
        conn.execute("CREATE TABLE audit (event text NOT NULL)")
    try:
        code = _quickstart().replace("postgresql+asyncpg://app@db.internal/shop", pg_url)
        source = (
            "async def main():\n"
            + textwrap.indent(code, "    ")
            + "\n    moved = await Accounts(db).move(1, 2)\n"
            + "    await engine.dispose()\n"
            + "    return moved\n"
        )
        namespace: dict[str, Any] = {}
        exec(compile(source, str(README), "exec"), namespace)
        moved = await namespace["main"]()
        assert moved == 1000 + 100 + 100 + 5 + 1
        with psycopg.connect(pg_dsn) as conn:
            balances: dict[Any, Any] = dict(
                conn.execute("SELECT id, balance FROM account").fetchall()
            )
            audits = conn.execute("SELECT count(*) FROM audit").fetchone()
        assert balances == {1: 1000 - 206, 2: 1000 + 206}
        assert audits == (1,)
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS account, audit")
