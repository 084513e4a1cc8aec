"""The ``resilient-db`` command line (also ``python -m resilient_db``)."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from resilient_db.engine import DoctorReport, Severity, doctor

__all__ = ["main"]

Handler = Callable[[argparse.Namespace], int]


def _doctor_command(args: argparse.Namespace) -> int:
    url = args.url or os.environ.get("DATABASE_URL")
    if not url:
        print(
            "resilient-db doctor: no URL; pass --url postgresql+asyncpg://user@host/db "
            "or set DATABASE_URL",
            file=sys.stderr,
        )
        return 2
    options: dict[str, Any] = {}
    for name in ("pool_size", "max_overflow", "pool_recycle", "connect_timeout"):
        value = getattr(args, name)
        if value is not None:
            options[name] = value

    async def run() -> DoctorReport:
        return await doctor(url, processes=args.processes, timeout=args.timeout, **options)

    report = anyio.run(run)
    if args.json:
        print(json.dumps(_report_json(report), indent=2))
    else:
        print(f"resilient-db doctor: {report.url} ({report.processes} process(es))")
        for where, role in report.hosts.items():
            print(f"  host {where}: {role}")
        for f in report.findings:
            print(f"  {f.severity.value.upper():<7} {f.code}: {f.message}")
        errors = sum(f.severity is Severity.ERROR for f in report.findings)
        warnings = sum(f.severity is Severity.WARNING for f in report.findings)
        print(f"{errors} error(s), {warnings} warning(s)")
    return 0 if report.ok else 1


def _report_json(report: DoctorReport) -> dict[str, Any]:
    return {
        "url": report.url,
        "ok": report.ok,
        "processes": report.processes,
        "primary": report.primary,
        "hosts": dict(report.hosts),
        "server": dict(report.server),
        "findings": [
            {"severity": f.severity.value, "code": f.code, "message": f.message}
            for f in report.findings
        ],
    }


def _int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low``, with a message naming the range."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="resilient-db",
        description="Resilience tools for SQLAlchemy async + PostgreSQL.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "doctor",
        help="compare the engine configuration with the live server",
        description="Connect to the server and check pool size against max_connections, "
        "pool_recycle against idle_session_timeout, timeouts and driver; with a multi-host "
        "URL (?host=h1:5432,h2:5432) say which host is the primary. Exits 1 on errors.",
    )
    p.add_argument("--url", help="database URL (default: $DATABASE_URL); password never shown")
    p.add_argument(
        "--processes",
        type=_positive_int,
        default=1,
        help="how many processes each open such a pool (default 1)",
    )
    p.add_argument("--pool-size", type=_positive_int, dest="pool_size")
    p.add_argument("--max-overflow", type=_non_negative_int, dest="max_overflow")
    p.add_argument("--pool-recycle", type=_positive_float, dest="pool_recycle")
    p.add_argument("--connect-timeout", type=_positive_float, dest="connect_timeout")
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=15.0,
        help="seconds the whole check may take (default 15)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_doctor_command)

    for register in _plugins():
        register(sub)
    return parser


def _plugins() -> list[Callable[[Any], None]]:
    registrars: list[Callable[[Any], None]] = []
    for module_name in ("resilient_db.toxiproxy._cli", "resilient_db.chaos._cli"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # pragma: no cover - optional part not installed
            continue
        registrars.append(module.register)
    return registrars


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``resilient-db`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.func
    return handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
