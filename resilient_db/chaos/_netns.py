"""Packet-level faults through a network namespace of our own (root and ``ip netns`` only).

The workload's connections cross a veth pair into a namespace the engine creates: the client
connects to the namespace's address, where a relay (the embedded Toxiproxy-compatible server,
run with ``ip netns exec``) forwards back over the veth to a host-side proxy in front of the
database. Faults act on that veth only — taking the namespace's end down (the peer stops
acknowledging: packets vanish, nothing is reset) or adding ``tc netem`` loss — so only
addresses inside the namespace the engine created are ever affected. Everything is deleted
afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["RELAY_PORT", "NetNamespace", "netem_missing", "netns_missing"]

RELAY_PORT = 15432
_netem: list[str | None] = []


def _ip(
    *args: str, netns: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", *args] if netns is None else ["ip", "netns", "exec", netns, "ip", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=15, check=check)


def netns_missing() -> str | None:
    """Why no namespace can be made here (one line), or ``None``."""
    if os.geteuid() != 0:
        return "packet-level faults need root (ip netns)"
    if shutil.which("ip") is None:
        return "packet-level faults need the ip command (iproute2)"
    if _ip("netns", "list", check=False).returncode != 0:
        return "ip netns is not usable here"
    return None


def netem_missing() -> str | None:
    """Why ``tc netem`` is unavailable (probed once on a dummy link), or ``None``."""
    if not _netem:
        reason = netns_missing() or (None if shutil.which("tc") else "no tc command")
        if reason is None:
            name = f"rdbcp{os.getpid() % 100000}"
            _ip("link", "add", name, "type", "veth", "peer", "name", f"{name}p", check=False)
            try:
                tc = subprocess.run(
                    ["tc", "qdisc", "add", "dev", name, "root", "netem", "loss", "1%"],
                    capture_output=True,
                    text=True,
                    timeout=15,
                    check=False,
                )
                if tc.returncode != 0:
                    reason = f"tc netem unavailable ({tc.stderr.strip() or 'no sch_netem'})"
            finally:
                _ip("link", "del", name, check=False)
        _netem.append(reason)
    return _netem[0]


class NetNamespace:
    """A namespace ``rdbc<run>`` joined to the host by a veth pair on a private /30."""

    def __init__(self, run_id: str, index: int) -> None:
        self.name = f"rdbc{run_id}"[:12]
        self.host_if, self.ns_if = f"{self.name}h", f"{self.name}n"
        octet = (int(run_id, 16) + index) % 200 + 20
        self.host_ip, self.ns_ip = f"10.213.{octet}.1", f"10.213.{octet}.2"
        self.dir = Path(tempfile.mkdtemp(prefix="rdb_netns_"))
        self.relay: subprocess.Popen[str] | None = None

    def create(self) -> None:
        """Make the namespace, the veth pair and the addresses."""
        _ip("netns", "add", self.name)
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        _ip("link", "set", self.ns_if, "netns", self.name)
        _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        _ip("addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if, netns=self.name)
        _ip("link", "set", self.ns_if, "up", netns=self.name)
        _ip("link", "set", "lo", "up", netns=self.name)

    def start_relay(self, upstream: str) -> None:
        """The relay in the namespace: ``ns_ip:RELAY_PORT`` → ``upstream`` (host side)."""
        config = self.dir / "relay.json"
        config.write_text(
            json.dumps(
                [
                    {
                        "name": "relay",
                        "listen": f"{self.ns_ip}:{RELAY_PORT}",
                        "upstream": upstream,
                        "enabled": True,
                    }
                ]
            )
        )
        self.relay = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.name,
                sys.executable,
                "-m",
                "resilient_db",
                "toxiproxy",
                "--host",
                self.ns_ip,
                "--port",
                "8474",
                "--config",
                str(config),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.relay.stdout is not None
        line = self.relay.stdout.readline()  # printed once the API (and the proxy) listen
        if "listening" not in line:
            raise RuntimeError(f"the namespace relay did not start: {line!r}")

    def link(self, up: bool) -> None:
        """Bring the namespace's end of the veth up or down."""
        _ip("link", "set", self.ns_if, "up" if up else "down", netns=self.name)

    def netem(self, spec: list[str] | None) -> None:
        """Set (``["loss", "20%"]``) or clear (``None``) netem on both ends of the veth."""
        for netns, dev in ((None, self.host_if), (self.name, self.ns_if)):
            base = ["tc", "qdisc", "replace" if spec else "del", "dev", dev, "root"]
            cmd = [*base, "netem", *spec] if spec else base
            if netns is not None:
                cmd = ["ip", "netns", "exec", netns, *cmd]
            subprocess.run(cmd, capture_output=True, timeout=15, check=spec is not None)

    def destroy(self) -> None:
        """Stop the relay (ours) and delete the namespace and the veth pair."""
        if self.relay is not None:
            self.relay.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.relay.wait(timeout=10)
            if self.relay.poll() is None:
                self.relay.kill()
                self.relay.wait(timeout=10)
            if self.relay.stdout is not None:
                self.relay.stdout.close()
        _ip("netns", "del", self.name, check=False)
        _ip("link", "del", self.host_if, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
