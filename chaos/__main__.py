"""``python -m chaos``: run the chaos suite and print the report (exit 1 if anything failed).

Environment: ``RESILIENT_DB_CHAOS_DATABASE_URL`` (the database, default the local ``test``
database), ``TOXIPROXY_URL`` (a real Toxiproxy; default: the embedded server).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import anyio

from chaos.report import format_scenario, format_summary, write_json
from chaos.runner import DEFAULT_URL, EXTERNAL_PROXY, ScenarioResult, Settings, run_suite
from chaos.scenarios import SCENARIOS, by_name


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chaos",
        description="Chaos suite for resilient_db: real network and server faults under a "
        "transfer workload, with invariants (nothing lost, nothing applied twice, no leaked "
        "connection, no call past its deadline).",
    )
    p.add_argument("--quick", action="store_true", help="short phases, CI subset (<= 60 s)")
    p.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="NAME",
        help="run only this scenario (repeatable; see --list)",
    )
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument(
        "--url",
        default=os.environ.get("RESILIENT_DB_CHAOS_DATABASE_URL", DEFAULT_URL),
        help="SQLAlchemy URL of the database behind the proxy "
        "(env RESILIENT_DB_CHAOS_DATABASE_URL; default %(default)s)",
    )
    p.add_argument(
        "--toxiproxy-url",
        default=os.environ.get("TOXIPROXY_URL") or None,
        help="API URL of a real Toxiproxy (env TOXIPROXY_URL); default: the embedded server",
    )
    p.add_argument(
        "--proxy",
        default=EXTERNAL_PROXY,
        help="with --toxiproxy-url: the pre-created proxy in front of --url (%(default)s)",
    )
    p.add_argument("--json", metavar="FILE", help="write the full report as JSON")
    p.add_argument("--concurrency", type=int, default=8, help="workers (default %(default)s)")
    p.add_argument(
        "--rate", type=float, default=25.0, help="ops/s per worker (default %(default)s)"
    )
    p.add_argument("--seed", type=int, default=1, help="random seed (default %(default)s)")
    p.add_argument(
        "--deadline", type=float, default=3.0, help="unit deadline, seconds (%(default)s)"
    )
    p.add_argument(
        "--phase",
        type=float,
        nargs=3,
        metavar=("BEFORE", "DURING", "AFTER"),
        help="phase durations in seconds (default 2 5 5; --quick 1 3.2 3)",
    )
    p.add_argument("--verbose", action="store_true", help="resilient_db logs on stderr")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.list:
        for s in SCENARIOS:
            tags = [s.needs] + (["quick"] if s.quick else [])
            print(f"{s.name:20} [{', '.join(tags)}] {s.summary}")
        return 0
    try:
        if args.scenario:
            scenarios = by_name(args.scenario)
        else:
            scenarios = [s for s in SCENARIOS if s.quick or not args.quick]
        overrides: dict[str, object] = {
            "url": args.url,
            "toxiproxy_url": args.toxiproxy_url,
            "proxy_name": args.proxy,
            "concurrency": args.concurrency,
            "rate": args.rate,
            "seed": args.seed,
            "deadline": args.deadline,
        }
        if args.phase:
            overrides.update(before=args.phase[0], during=args.phase[1], after=args.phase[2])
        settings = Settings.quick(**overrides) if args.quick else Settings(**overrides)  # type: ignore[arg-type]
    except ValueError as exc:
        print(f"chaos: {exc}", file=sys.stderr)
        return 2
    log = logging.getLogger("resilient_db")
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    else:
        log.propagate = False  # the report counts the library's log events instead
    print(
        f"chaos: {len(scenarios)} scenario(s), phases {settings.before:g}/{settings.during:g}/"
        f"{settings.after:g}s, {settings.concurrency} workers x {settings.rate:g} ops/s, "
        f"deadline {settings.deadline:g}s",
        flush=True,
    )

    def show(result: ScenarioResult) -> None:
        print(format_scenario(result), flush=True)

    suite = anyio.run(lambda: run_suite(settings, scenarios, on_result=show))
    print(format_summary(suite))
    if args.json:
        write_json(suite, args.json)
        print(f"  report written to {args.json}")
    return 0 if suite.passed else 1


if __name__ == "__main__":
    sys.exit(main())
