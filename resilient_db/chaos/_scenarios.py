"""Scenarios: one fault each, with what it needs and what is expected besides the invariants.

``needs`` tells the engine what to set up:

* ``proxy`` — a Toxiproxy proxy in front of the database (embedded or external server);
* ``server`` — the database behind the proxy (``pg_terminate_backend``);
* ``cluster`` / ``standby`` — a private PostgreSQL cluster (and its synchronous standby);
* ``multihost`` — a private primary and standby, the engine given both hosts in one URL;
* ``pgbouncer`` / ``pgbouncer_standby`` — a private PgBouncer (transaction pooling) in front
  of a private cluster (and its standby);
* ``netns`` / ``netns_netem`` — a network namespace of the engine's own between the workload
  and the database (root, ``ip netns``; ``tc netem`` for the second).

``processes`` > 0 makes it a fleet scenario: that many worker processes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Literal

from resilient_db.chaos import _faults as f
from resilient_db.chaos._faults import Fault, FaultContext
from resilient_db.chaos._metrics import BreakerTransition, PhaseMetrics, Recovery
from resilient_db.chaos._model import Check, OpRecord

__all__ = ["SCENARIOS", "Expect", "Observed", "Scenario", "by_name"]

Needs = Literal[
    "proxy",
    "server",
    "cluster",
    "standby",
    "multihost",
    "pgbouncer",
    "pgbouncer_standby",
    "netns",
    "netns_netem",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class Observed:
    """What a scenario's ``expect`` may look at."""

    phases: Sequence[PhaseMetrics]
    recovery: Recovery | None
    transitions: Sequence[BreakerTransition]
    records: Sequence[OpRecord] = ()
    fault_start: float = 0.0
    fault_end: float = 0.0
    fleet: dict[str, float] = field(default_factory=dict)

    def phase(self, name: str) -> PhaseMetrics:
        """The metrics of phase ``name``."""
        return next(p for p in self.phases if p.phase == name)


Expect = Callable[[Observed], list[Check]]


@dataclass(frozen=True, kw_only=True, slots=True)
class Scenario:
    """One chaos scenario: a fault, what it needs, and the expectations beyond the invariants."""

    name: str
    summary: str
    fault: Fault
    needs: Needs = "proxy"
    quick: bool = False
    expect: Expect | None = None
    processes: int = 0


def expect_clean(obs: Observed) -> list[Check]:
    """No failed or unknown call in any phase."""
    bad = {p.phase: p.failed + p.unknown for p in obs.phases if p.failed + p.unknown}
    return [
        Check(
            name="expect: no errors without a fault",
            passed=not bad,
            detail="no failed or unknown op" if not bad else f"errors by phase: {bad}",
            source="scenario",
        )
    ]


def expect_healthy_before(obs: Observed) -> list[Check]:
    """Every call of the ``before`` phase (ended before the fault) succeeded."""
    before = obs.phase("before")
    bad = before.ops - before.acknowledged
    done = [r for r in obs.records if r.ended < obs.fault_start]
    return [
        Check(
            name="expect: healthy before the fault",
            passed=bad == 0 and before.ops > 0,
            detail=f"{before.acknowledged} ok, {bad} not",
            offenders=tuple(r.op for r in done if r.outcome != "acknowledged")[:5],
            source="scenario",
        )
    ]


def expect_breaker(obs: Observed) -> list[Check]:
    """The breaker opened and failed fast during the fault."""
    during = obs.phase("during")
    opened = [t for t in obs.transitions if t.state == "open"]
    return [
        Check(
            name="expect: breaker opened and failed fast",
            passed=bool(opened) and during.fail_fast > 0,
            detail=f"{len(opened)} open transition(s), {during.fail_fast} fail-fast during",
            source="scenario",
        )
    ]


def expect_fleet(obs: Observed) -> list[Check]:
    """The fleet's connection attempts per second during the outage were measured."""
    rate = obs.fleet.get("connects_per_s_during")
    return [
        Check(
            name="expect: fleet connection attempts/s during the outage measured",
            passed=rate is not None,
            detail=f"{rate:.1f} attempts/s across {obs.fleet.get('processes', 0):g} processes"
            if rate is not None
            else "no fleet figures",
            source="scenario",
        )
    ]


def both(*fns: Expect) -> Expect:
    """The checks of every ``fns``."""

    def run(obs: Observed) -> list[Check]:
        return [c for fn in fns for c in fn(obs)]

    return run


def _tox(
    type: str, attrs: dict[str, int], streams: Sequence[str] = ("downstream",)
) -> Callable[[FaultContext], AbstractAsyncContextManager[None]]:
    def fault(ctx: FaultContext) -> AbstractAsyncContextManager[None]:
        return f.toxic(ctx, type, attrs, streams=streams)

    return fault


_BOTH = ("downstream", "upstream")
_healthy, _breaker = expect_healthy_before, both(expect_healthy_before, expect_breaker)

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        name="baseline",
        summary="no fault: the workload alone",
        fault=f.no_fault,
        quick=True,
        expect=expect_clean,
    ),
    Scenario(
        name="latency",
        summary="latency 100 ms ± 50 ms towards the client",
        fault=_tox("latency", {"latency": 100, "jitter": 50}),
        quick=True,
        expect=expect_clean,
    ),
    Scenario(
        name="down",
        summary="proxy disabled (refused connects, open ones dropped)",
        fault=f.down,
        quick=True,
        expect=_breaker,
    ),
    Scenario(
        name="reset_peer",
        summary="every connection reset (TCP RST) after 300 ms",
        fault=_tox("reset_peer", {"timeout": 300}),
        quick=True,
        expect=_healthy,
    ),
    Scenario(
        name="black_hole",
        summary="timeout 0 both ways: data swallowed, nothing closes",
        fault=_tox("timeout", {"timeout": 0}, _BOTH),
        quick=True,
        expect=_healthy,
    ),
    Scenario(
        name="bandwidth",
        summary="4 KB/s per connection towards the client",
        fault=_tox("bandwidth", {"rate": 4}),
        expect=_healthy,
    ),
    Scenario(
        name="slicer",
        summary="packets sliced into ~8-byte pieces 200 µs apart",
        fault=_tox("slicer", {"average_size": 8, "size_variation": 6, "delay": 200}, _BOTH),
        expect=expect_clean,
    ),
    Scenario(
        name="limit_data",
        summary="each connection closed after 3000 more bytes "
        "(random mid-query and mid-COMMIT losses)",
        fault=_tox("limit_data", {"bytes": 3000}),
        quick=True,
        expect=_healthy,
    ),
    Scenario(
        name="slow_close",
        summary="every backend terminated behind a 2 s slow close",
        fault=f.slow_close,
        expect=_healthy,
    ),
    Scenario(
        name="terminate_backends",
        summary="pg_terminate_backend every 100 ms",
        fault=f.terminate_backends,
        needs="server",
        quick=True,
        expect=_healthy,
    ),
    Scenario(
        name="restart",
        summary="private cluster: fast restart, immediate stop, start",
        fault=f.restart,
        needs="cluster",
        expect=_healthy,
    ),
    Scenario(
        name="failover",
        summary="primary stopped, sync standby promoted, proxy re-pointed",
        fault=f.failover,
        needs="standby",
        expect=_healthy,
    ),
    Scenario(
        name="multihost_failover",
        summary="URL with both hosts "
        "(target_session_attrs=read-write): primary stopped, standby promoted",
        fault=f.multihost_failover,
        needs="multihost",
        expect=_healthy,
    ),
    Scenario(
        name="pgbouncer_restart",
        summary="PgBouncer (transaction pooling) killed, restarted",
        fault=f.pgbouncer_restart,
        needs="pgbouncer",
        expect=_healthy,
    ),
    Scenario(
        name="pgbouncer_pause",
        summary="PgBouncer PAUSE for the phase, then RESUME",
        fault=f.pgbouncer_pause,
        needs="pgbouncer",
        expect=_healthy,
    ),
    Scenario(
        name="pgbouncer_reconnect",
        summary="PgBouncer RECONNECT every 300 ms",
        fault=f.pgbouncer_reconnect,
        needs="pgbouncer",
        expect=_healthy,
    ),
    Scenario(
        name="pgbouncer_promotion",
        summary="behind PgBouncer: primary fenced read-only "
        "(25006), standby promoted, RELOAD + RECONNECT",
        fault=f.pgbouncer_promotion,
        needs="pgbouncer_standby",
        expect=_healthy,
    ),
    Scenario(
        name="packet_black_hole",
        summary="network namespace: the peer stops acknowledging (veth down), no RST/FIN",
        fault=f.packet_black_hole,
        needs="netns",
        expect=_healthy,
    ),
    Scenario(
        name="packet_loss",
        summary="network namespace: 20 % packet loss both ways (tc netem)",
        fault=f.packet_loss,
        needs="netns_netem",
        expect=_healthy,
    ),
    Scenario(
        name="fleet_down",
        summary="4 worker processes, proxy disabled: fleet-level connection attempts/s",
        fault=f.down,
        processes=4,
        expect=both(expect_healthy_before, expect_fleet),
    ),
)


def by_name(names: Sequence[str], catalogue: Sequence[Scenario] = SCENARIOS) -> list[Scenario]:
    """The scenarios named (in catalogue order); ``ValueError`` naming the known ones."""
    known = {s.name: s for s in catalogue}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(known)} (see --list)"
        )
    wanted = set(names)
    return [s for s in catalogue if s.name in wanted]
