"""The embedded Toxiproxy-compatible proxy, side by side with direct and a real Toxiproxy.

Run: ``.venv/bin/python benchmarks/bench_proxy.py [--round-trips N] [--megabytes M]``
(``TOXIPROXY_URL=http://127.0.0.1:8474`` adds a column for a real Toxiproxy on this machine).

Prints, per server: round-trip latency (64-byte ping-pong over loopback, no toxic), the bulk
throughput of a one-way stream, and the rate of 300-byte round trips through the chaos suite's
``slicer`` toxic (~8-byte pieces 200 µs apart, both directions). Targets: added latency
p50 <= 100 µs, throughput >= 100 MB/s, slicer rate at least the reference's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
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


def _slicer_rate(port: int, seconds: float) -> tuple[float, float]:
    """Sequential 300-byte round trips for ``seconds``: (round trips/s, p50 ms)."""
    payload = b"q" * 300
    samples: list[float] = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            start = time.perf_counter()
            sock.sendall(payload)
            got = 0
            while got < len(payload):
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("echo closed")
                got += len(chunk)
            samples.append(time.perf_counter() - start)
    return len(samples) / sum(samples), _pct(samples, 0.5) * 1e3


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


#: The chaos suite's slicer scenario: ~8-byte pieces 200 µs apart, both directions.
_SLICER = {"average_size": 8, "size_variation": 6, "delay": 200}


def _measure(
    url: str, echo: _ThreadServer, source: _ThreadServer, args: argparse.Namespace
) -> dict[str, float]:
    """Every figure for the server at ``url`` (proxies created, then deleted)."""
    client = ToxiproxyClient(url)
    tag = f"bench_{int(time.time() * 1000) % 10**8}"
    p_echo = client.create_proxy(name=f"{tag}_echo", upstream=f"127.0.0.1:{echo.port}")
    p_source = client.create_proxy(name=f"{tag}_source", upstream=f"127.0.0.1:{source.port}")
    p_slice = client.create_proxy(name=f"{tag}_slice", upstream=f"127.0.0.1:{echo.port}")
    try:
        for stream in ("upstream", "downstream"):
            client.add_toxic(p_slice.name, type="slicer", stream=stream, attributes=_SLICER)
        rt = _round_trips(p_echo.listen_port, args.round_trips)
        rate, p50 = _slicer_rate(p_slice.listen_port, args.seconds)
        return {
            "rt_p50": _pct(rt, 0.5) * 1e6,
            "rt_p99": _pct(rt, 0.99) * 1e6,
            "mbps": _throughput(p_source.listen_port, args.megabytes),
            "slicer_rate": rate,
            "slicer_p50": p50,
        }
    finally:
        for info in (p_echo, p_source, p_slice):
            client.delete_proxy(info.name)


_ROWS = (
    ("round trip p50, 64 B (µs)", "rt_p50", "{:.1f}"),
    ("round trip p99, 64 B (µs)", "rt_p99", "{:.1f}"),
    ("bulk throughput (MB/s)", "mbps", "{:.0f}"),
    ("slicer round trips/s, 300 B", "slicer_rate", "{:.1f}"),
    ("slicer round trip p50 (ms)", "slicer_p50", "{:.2f}"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--round-trips", type=int, default=5000)
    parser.add_argument("--megabytes", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=5.0, help="slicer phase length")
    args = parser.parse_args(argv)
    external = os.environ.get("TOXIPROXY_URL")

    echo = _ThreadServer(_echo)
    source = _ThreadServer(_source(args.megabytes))
    try:
        direct = _round_trips(echo.port, args.round_trips)
        columns: dict[str, dict[str, float]] = {
            "direct": {
                "rt_p50": _pct(direct, 0.5) * 1e6,
                "rt_p99": _pct(direct, 0.99) * 1e6,
                "mbps": _throughput(source.port, args.megabytes),
            }
        }
        with ToxiproxyServer.in_thread() as server:
            columns["embedded"] = _measure(server.url, echo, source, args)
        if external:
            columns["reference"] = _measure(
                external if "://" in external else f"http://{external}", echo, source, args
            )
    finally:
        echo.close()
        source.close()
    print(f"{'':32}" + "".join(f"{name:>12}" for name in columns))
    for label, key, fmt in _ROWS:
        cells = "".join(f"{fmt.format(c[key]) if key in c else '-':>12}" for c in columns.values())
        print(f"{label:32}{cells}")
    if "reference" in columns:
        ratio = columns["embedded"]["slicer_rate"] / columns["reference"]["slicer_rate"]
        print(f"slicer round trips/s, embedded / reference: {ratio:.2f}")
    else:
        print("(set TOXIPROXY_URL to a real Toxiproxy on this machine to compare side by side)")
    embedded = columns["embedded"]
    added = embedded["rt_p50"] - columns["direct"]["rt_p50"]
    print(f"added latency p50: {added:.1f} µs (target <= 100 µs); proxied bulk target >= 100 MB/s")
    ok = added <= 100 and embedded["mbps"] >= 100
    print("OK" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
