"""``resilient-db toxiproxy``: run the embedded server like ``toxiproxy-server``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any

from resilient_db.toxiproxy._server import IDLE_TIMEOUT, ToxiproxyServer, is_loopback
from resilient_db.toxiproxy._toxics import STRICT_CHECKS

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``toxiproxy`` sub-command to the ``resilient-db`` parser."""
    parser = subparsers.add_parser(
        "toxiproxy",
        help="run a Toxiproxy-compatible fault proxy server (no authentication)",
        description=(
            "Run an embedded server speaking the Toxiproxy 2.12 HTTP API, so toxiproxy "
            "clients can create proxies and inject network faults. WARNING: the API has no "
            "authentication; anyone who can reach it can break or reroute traffic. It binds "
            "to 127.0.0.1 by default; bind elsewhere only on a trusted network."
        ),
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address of the HTTP API (default 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=_port, default=8474, help="port of the HTTP API (default 8474)"
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="JSON file with a populate array of proxies to create at start",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help=(
            "answer 400 to likely mistakes the reference accepts: "
            + "; ".join(STRICT_CHECKS)
            + " (default: behave as Toxiproxy 2.12)"
        ),
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=IDLE_TIMEOUT,
        metavar="SECONDS",
        help=f"close API connections silent this long (default {IDLE_TIMEOUT:g})",
    )
    parser.set_defaults(func=run)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port 0..65535, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0..65535, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; exit code 0, or 1 when the server cannot start."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not is_loopback(args.host):
        print(
            f"resilient-db toxiproxy: WARNING: the API on {args.host} has no authentication",
            file=sys.stderr,
        )
    try:
        server = ToxiproxyServer(
            host=args.host,
            port=args.port,
            config=args.config,
            strict=args.strict,
            idle_timeout=args.idle_timeout,
        )
    except ValueError as exc:
        print(f"resilient-db toxiproxy: {exc}", file=sys.stderr)
        return 1

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        try:
            await server.start()
        except (OSError, ValueError) as exc:
            print(f"resilient-db toxiproxy: cannot start: {exc}", file=sys.stderr)
            return 1
        print(f"resilient-db toxiproxy: API listening on {server.url}", flush=True)
        try:
            await stop.wait()
        finally:
            await server.aclose()
        return 0

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:  # pragma: no cover - signal handler normally catches it
        return 0
