"""``resilient-db chaos`` (and ``python -m chaos`` for this project's own release suite).

Exit status: 0 when every scenario passed or was skipped, 1 when one failed or errored, 2 on
bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import anyio

from resilient_db._errors import ConfigurationError
from resilient_db.chaos._api import run
from resilient_db.chaos._html import write_html
from resilient_db.chaos._load import load_workload, pyproject_config
from resilient_db.chaos._report import (
    format_scenario,
    format_summary,
    progress_line,
    write_json,
    write_junit,
)
from resilient_db.chaos._report_model import Report, ScenarioReport
from resilient_db.chaos._scenarios import SCENARIOS, Scenario, by_name
from resilient_db.chaos._settings import DEFAULT_URL, Settings

__all__ = ["add_arguments", "main", "register"]

_KEYS = {
    "workload",
    "url",
    "driver",
    "scenarios",
    "concurrency",
    "rate",
    "deadline",
    "seed",
    "html",
    "junit",
    "json",
    "allow_remote",
    "quick",
    "processes",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The chaos options (shared by ``resilient-db chaos`` and ``python -m chaos``)."""
    a = p.add_argument
    a(
        "--workload",
        metavar="MODULE:FACTORY",
        help="your workload factory (or pyproject.toml [tool.resilient_db.chaos] workload = ...)",
    )
    a("--quick", action="store_true", default=None, help="short phases, the quick scenarios")
    a("--scenario", action="append", default=[], metavar="NAME", help="repeatable; see --list")
    a("--list", action="store_true", help="list the scenarios and exit")
    a(
        "--url",
        help="SQLAlchemy URL of the database (env RESILIENT_DB_CHAOS_DATABASE_URL; "
        f"default {DEFAULT_URL})",
    )
    a("--driver", choices=("asyncpg", "psycopg"), help="driver for every scenario")
    a(
        "--toxiproxy-url",
        default=os.environ.get("TOXIPROXY_URL") or None,
        help="a real Toxiproxy's API (env TOXIPROXY_URL); default: the embedded server",
    )
    a("--proxy", default="postgres", help="with --toxiproxy-url: the proxy in front of --url")
    a("--concurrency", type=int, help="workers (default 8)")
    a("--rate", type=float, help="ops/s per worker (default 25)")
    a("--seed", type=int, help="random seed (default 1)")
    a("--deadline", type=float, help="unit deadline, seconds (default 3)")
    a(
        "--phase",
        type=float,
        nargs=3,
        metavar=("BEFORE", "DURING", "AFTER"),
        help="phase durations (default 2 5 5; --quick 0.5 3.2 3, after a warm-up)",
    )
    a("--processes", type=int, help="worker processes of fleet scenarios")
    a("--json", metavar="FILE", help="write the report as JSON")
    a("--junit", metavar="FILE", help="write JUnit XML")
    a("--html", metavar="FILE", help="write the self-contained HTML report")
    a("--fail-fast", action="store_true", help="stop after the first failing scenario")
    a(
        "--allow-remote",
        action="store_true",
        default=None,
        help="allow a database host that is not loopback (it will be broken on purpose)",
    )
    a("--verbose", action="store_true", help="resilient_db logs on stderr")
    a("--quiet", action="store_true", help="only the progress lines and the summary")


def _config(args: argparse.Namespace) -> dict[str, Any]:
    conf = pyproject_config()
    unknown = set(conf) - _KEYS
    if unknown:
        raise ConfigurationError(
            f"[tool.resilient_db.chaos]: unknown key(s) {sorted(unknown)}; known: {sorted(_KEYS)}"
        )
    for key in _KEYS - {"scenarios"}:
        value = getattr(args, key, None)
        if value is not None:
            conf[key] = value
    if args.scenario:
        conf["scenarios"] = args.scenario
    return conf


def _settings(args: argparse.Namespace, conf: dict[str, Any]) -> Settings:
    url = conf.get("url") or os.environ.get("RESILIENT_DB_CHAOS_DATABASE_URL") or DEFAULT_URL
    opts: dict[str, Any] = {
        "url": url,
        "toxiproxy_url": args.toxiproxy_url,
        "proxy_name": args.proxy,
        "fail_fast": args.fail_fast,
    }
    for key in ("driver", "concurrency", "rate", "seed", "deadline", "allow_remote", "processes"):
        if conf.get(key) is not None:
            opts[key] = conf[key]
    if args.phase:
        opts.update(before=args.phase[0], during=args.phase[1], after=args.phase[2])
    if conf.get("workload"):
        opts["workload_spec"] = conf["workload"]
    return Settings.quick(**opts) if conf.get("quick") else Settings(**opts)


def _scenarios(conf: dict[str, Any]) -> list[Scenario]:
    names = conf.get("scenarios")
    if names:
        return by_name(list(names))
    return [s for s in SCENARIOS if s.quick or not conf.get("quick")]


def _write(report: Report, conf: dict[str, Any]) -> None:
    for key, writer in (("json", write_json), ("junit", write_junit), ("html", write_html)):
        if conf.get(key):
            writer(report, conf[key])
            print(f"  {key} report written to {conf[key]}")


def _list() -> int:
    for s in SCENARIOS:
        tags = [s.needs, *(["quick"] if s.quick else [])]
        tags += [f"{s.processes} processes"] if s.processes else []
        print(f"{s.name:22} [{', '.join(tags)}] {s.summary}")
    return 0


def _prepare(
    args: argparse.Namespace, default_workload: str | None
) -> tuple[dict[str, Any], Settings, list[Scenario]]:
    conf = _config(args)
    conf.setdefault("workload", default_workload)
    if not conf.get("workload"):
        raise ConfigurationError(
            "no workload: pass --workload package.module:factory or set workload in "
            "[tool.resilient_db.chaos] of your pyproject.toml"
        )
    settings, scenarios = _settings(args, conf), _scenarios(conf)
    load_workload(conf["workload"])  # fail early on a bad spec; run() resolves it again
    return conf, settings, scenarios


def _run(
    args: argparse.Namespace, conf: dict[str, Any], settings: Settings, scenarios: list[Scenario]
) -> Report:
    done = [0]

    def show(result: ScenarioReport) -> None:
        done[0] += 1
        if not args.quiet:
            print(format_scenario(result), flush=True)
        print(progress_line(done[0], len(scenarios), result), flush=True)

    return anyio.run(lambda: run(conf["workload"], scenarios, settings=settings, on_result=show))


def execute(args: argparse.Namespace, *, default_workload: str | None = None) -> int:
    """Run the chaos command for parsed ``args``; the exit status."""
    if args.list:
        return _list()
    try:
        conf, settings, scenarios = _prepare(args, default_workload)
    except (ConfigurationError, ValueError) as exc:
        print(f"resilient-db chaos: {exc}", file=sys.stderr)
        return 2
    _logging(args.verbose)
    print(
        f"chaos: {conf['workload']}, {len(scenarios)} scenario(s), driver "
        f"{settings.driver_name}, phases {settings.before:g}/{settings.during:g}/"
        f"{settings.after:g}s, {settings.concurrency} workers x {settings.rate:g} ops/s, "
        f"deadline {settings.deadline:g}s",
        flush=True,
    )
    try:
        report = _run(args, conf, settings, scenarios)
    except (ConfigurationError, OSError) as exc:
        print(f"resilient-db chaos: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not _unreachable(exc):
            raise
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        print(
            f"resilient-db chaos: cannot reach the database ({first}); is it running? "
            "(--url / RESILIENT_DB_CHAOS_DATABASE_URL)",
            file=sys.stderr,
        )
        return 2
    print(format_summary(report))
    _write(report, conf)
    return report.exit_code


def _unreachable(exc: BaseException) -> bool:
    """True for the driver's "cannot connect" errors raised before any scenario ran."""
    return type(exc).__name__ in ("OperationalError", "ConnectionRefusedError", "InterfaceError")


def _logging(verbose: bool) -> None:
    log = logging.getLogger("resilient_db")
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    else:
        log.propagate = False  # the report counts the library's log events instead


def register(sub: Any) -> None:
    """Add ``chaos`` to the ``resilient-db`` sub-commands."""
    p = sub.add_parser(
        "chaos",
        help="run chaos scenarios against your own workload",
        description="Real network, server and pooler faults under your application's "
        "operations, then invariants (nothing lost or doubled, no leak, deadlines held).",
    )
    add_arguments(p)
    p.set_defaults(func=execute)


def main(
    argv: Sequence[str] | None = None,
    *,
    default_workload: str | None = None,
    prog: str = "resilient-db chaos",
) -> int:
    """Standalone entry point (``python -m resilient_db.chaos``)."""
    p = argparse.ArgumentParser(prog=prog, description="Chaos scenarios against a workload.")
    add_arguments(p)
    return execute(p.parse_args(argv), default_workload=default_workload)
