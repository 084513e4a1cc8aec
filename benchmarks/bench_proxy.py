"""Overhead of the embedded Toxiproxy-compatible proxy (no toxics), direct vs proxied.

Run: ``.venv/bin/python benchmarks/bench_proxy.py [--round-trips N] [--megabytes M]``

Prints the round-trip latency percentiles (64-byte ping-pong over loopback) and the bulk
throughput of a one-way stream, each measured directly against the upstream and through the
proxy. Targets: added latency p50 <= 100 µs, throughput >= 100 MB/s.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable

from resilient_db.toxiproxy import ToxiproxyClient, ToxiproxyServer


class _ThreadServer:
    """A blocking TCP server: one thread per connection running ``handler``."""

    def __init__(self, handler: Callable[[socket.socket], None]) -> None:
        self.handler = handler
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            thread = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            self.handler(conn)

    def close(self) -> None:
        self.sock.close()
        self._accepter.join(5)
        for thread in self._threads:
            thread.join(5)


def _echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


def _source(megabytes: int) -> Callable[[socket.socket], None]:
    block = memoryview(b"\xab" * (1 << 20))

    def handler(conn: socket.socket) -> None:
        conn.recv(1)
        for _ in range(megabytes):
            conn.sendall(block)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)

    return handler


def _round_trips(port: int, n: int) -> list[float]:
    payload = b"p" * 64
    samples: list[float] = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(n + 200):
            start = time.perf_counter()
            sock.sendall(payload)
            got = 0
            while got < len(payload):
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("echo closed")
                got += len(chunk)
            if i >= 200:  # warm-up
                samples.append(time.perf_counter() - start)
    return samples


def _throughput(port: int, megabytes: int) -> float:
    buffer = bytearray(1 << 20)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"g")
        start = time.perf_counter()
        total = 0
        while n := sock.recv_into(buffer):
            total += n
        elapsed = time.perf_counter() - start
    if total != megabytes << 20:
        raise RuntimeError(f"received {total} bytes, expected {megabytes << 20}")
    return total / elapsed / 1e6


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--round-trips", type=int, default=5000)
    parser.add_argument("--megabytes", type=int, default=512)
    args = parser.parse_args(argv)

    echo = _ThreadServer(_echo)
    source = _ThreadServer(_source(args.megabytes))
    try:
        with ToxiproxyServer.in_thread() as server:
            client = ToxiproxyClient(server.url)
            p_echo = client.create_proxy(name="echo", upstream=f"127.0.0.1:{echo.port}")
            p_source = client.create_proxy(name="source", upstream=f"127.0.0.1:{source.port}")

            direct = _round_trips(echo.port, args.round_trips)
            proxied = _round_trips(p_echo.listen_port, args.round_trips)
            print(f"round trip, 64 B ping-pong, {args.round_trips} samples (µs)")
            print(f"  {'':8} {'p50':>8} {'p90':>8} {'p99':>8} {'mean':>8}")
            for label, s in (("direct", direct), ("proxied", proxied)):
                print(
                    f"  {label:8} {_pct(s, 0.5) * 1e6:8.1f} {_pct(s, 0.9) * 1e6:8.1f} "
                    f"{_pct(s, 0.99) * 1e6:8.1f} {statistics.fmean(s) * 1e6:8.1f}"
                )
            added = (_pct(proxied, 0.5) - _pct(direct, 0.5)) * 1e6
            print(f"  added latency p50: {added:.1f} µs (target <= 100 µs)")

            d_rate = _throughput(source.port, args.megabytes)
            p_rate = _throughput(p_source.listen_port, args.megabytes)
            print(f"bulk throughput, {args.megabytes} MiB one way (MB/s)")
            print(f"  direct   {d_rate:10.1f}")
            print(f"  proxied  {p_rate:10.1f}   (target >= 100 MB/s)")
            ok = added <= 100 and p_rate >= 100
    finally:
        echo.close()
        source.close()
    print("OK" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
