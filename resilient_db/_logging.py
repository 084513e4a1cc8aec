"""Readable log records: every record of the ``resilient_db`` logger says what happened.

The library logs stable event names (``retry.scheduled``, ``breaker.opened``...) with the
data in ``extra``. A :class:`logging.Filter` installed once on that logger (on import of
``resilient_db``) turns each record's message into a sentence that stands on its own: the
event name, a short phrase, and the key facts (unit, attempt, category, SQLSTATE, sleep,
breaker...) as ``key=value``. Nothing else changes: the data stays on the record (``extra``),
and the stable name is kept in ``record.event``::

    retry.scheduled: retrying after a failed attempt (unit=transfer attempt=1
    category=serialization error_type=OperationalError sleep=0.012s)

Only the facts listed in :data:`FACTS` are rendered, never free text such as an exception's
message, so SQL text, parameters and passwords never reach the message.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Final

__all__ = ["FACTS", "PHRASES", "EventMessageFilter", "install", "render"]

LOGGER_NAME: Final = "resilient_db"

#: The facts rendered into a message, in this order, with the unit appended to a number.
FACTS: Final[tuple[tuple[str, str], ...]] = (
    ("unit", ""),
    ("retry_name", ""),
    ("breaker", ""),
    ("previous_state", ""),
    ("state", ""),
    ("attempt", ""),
    ("attempts", ""),
    ("kind", ""),
    ("category", ""),
    ("sqlstate", ""),
    ("error_type", ""),
    ("reason", ""),
    ("stop_reason", ""),
    ("outcome", ""),
    ("xid", ""),
    ("sleep", "s"),
    ("open_for", "s"),
    ("elapsed", "s"),
    ("failure_rate", ""),
    ("scope", ""),
    ("hook", ""),
    ("proxy", ""),
    ("listen", ""),
    ("upstream", ""),
    ("host", ""),
    ("port", ""),
    ("role", ""),
    ("mode", ""),
    ("cluster_port", ""),
    ("status", ""),
    ("problem", ""),
    ("primary_port", ""),
    ("previous", ""),
    ("ledger", ""),
    ("deleted", ""),
    ("service", ""),
    ("method", ""),
    ("backend_pid", ""),
    ("pid", ""),
    ("pids", ""),
)

#: A short phrase per known event; an event not listed gets its facts only.
PHRASES: Final[dict[str, str]] = {
    "unit.attempt_failed": "an attempt of a unit of work failed",
    "unit.deadline_exceeded": "a unit of work ran out of time",
    "unit.listener_failed": "a unit listener raised (ignored)",
    "unit.close_failed": "closing the session failed; its connection was dropped",
    "unit.invalidate_failed": "invalidating a broken connection failed; the pool may still "
    "count it as checked out",
    "retry.scheduled": "retrying after a failed attempt",
    "retry.gave_up": "gave up retrying; the last error is raised",
    "retry.hook_failed": "a retry hook raised (ignored)",
    "breaker.opened": "circuit breaker opened: calls fail fast",
    "breaker.half_opened": "circuit breaker half-open: admitting probes",
    "breaker.closed": "circuit breaker closed: calls flow again",
    "breaker.forced_open": "circuit breaker forced open",
    "breaker.disabled": "circuit breaker disabled",
    "breaker.metrics_only": "circuit breaker in metrics-only mode",
    "breaker.would_open": "circuit breaker would open (metrics-only mode)",
    "breaker.probe_failed": "a breaker health-check probe failed",
    "breaker.listener_failed": "a breaker listener raised (ignored)",
    "breaker.is_failure_failed": "a breaker is_failure predicate raised",
    "commit.resolved": "settled a COMMIT whose connection was lost",
    "commit.unknown": "the outcome of a COMMIT is unknown",
    "commit.resolve_retry": "the server is not reachable yet to settle a COMMIT; asking again",
    "commit.resolve_failed": "could not ask the server how a COMMIT ended",
    "commit.timeline_changed": "the server's timeline changed (failover): xid not comparable",
    "commit.server_restarted": "the server restarted since the COMMIT: its xid may be reused",
    "commit.terminate_failed": "could not terminate the backend of a COMMIT in progress",
    "commit.status_failed": "could not read a transaction's status",
    "pool.recycled": "the connection pool was recycled",
    "pool.kept": "the connection pool was kept",
    "pool.ping_failed": "a pool pre-ping failed",
    "pool.timeline_probe_failed": "reading the server's timeline failed",
    "http.problem": "answered a database error with an HTTP problem response",
    "breaker.probe_crashed": "a breaker health-check probe crashed (treated as failed)",
    "commit.invalidate_failed": "invalidating the connection of a COMMIT in doubt failed",
    "commit.report_failed": "reporting a background COMMIT resolution failed",
    "engine.host_changed": "new connections go to another host (failover)",
    "engine.host_skipped": "a host of a multi-host URL could not serve; trying the next",
    "fleet.close_failed": "closing the fleet breaker store failed",
    "fleet.disconnect_failed": "disconnecting from the fleet breaker store failed",
    "fleet.listener_failed": "a fleet store listener raised (ignored)",
    "fleet.sink_failed": "writing a breaker decision to the fleet store failed",
    "keys.already_applied": "an operation key was already applied; its stored result is used",
    "keys.cleaned": "expired operation keys were deleted from the ledger",
    "keys.holder_terminated": "terminated the backend still holding an operation key",
    "keys.lookup_failed": "could not ask the ledger whether an operation key was applied",
    "keys.lookup_retry": "the ledger is not reachable yet; asking again",
    "keys.result_not_stored": "a unit's result is not JSON-serialisable; stored without it",
    "cluster.created": "created a private PostgreSQL cluster",
    "cluster.standby_created": "created a streaming standby of a private cluster",
    "cluster.started": "started a private PostgreSQL cluster",
    "cluster.stopped": "stopped a private PostgreSQL cluster",
    "cluster.crashed": "crashed a private PostgreSQL cluster (SIGKILL)",
    "cluster.backend_crashed": "crashed one backend of a private cluster",
    "cluster.promoted": "promoted a private standby to primary",
    "cluster.destroyed": "destroyed a private PostgreSQL cluster",
    "toxiproxy.api_started": "the fault proxy's HTTP API is listening",
    "toxiproxy.api_failed": "a fault proxy API request failed (answered 500)",
    "toxiproxy.proxy_started": "a fault proxy is listening",
    "toxiproxy.accept_failed": "the fault proxy could not accept a connection",
    "toxiproxy.upstream_dial_failed": "the fault proxy could not reach its upstream",
    "toxiproxy.unauthenticated_api_exposed": (
        "the fault proxy's API listens beyond loopback without authentication"
    ),
}

_EVENT: Final = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")


def _value(value: object, unit: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        shown = f"{value:.3g}" if abs(value) < 1 else f"{value:.3f}".rstrip("0").rstrip(".")
        return shown + unit
    if isinstance(value, int):
        return f"{value}{unit}"
    text = getattr(value, "value", value)  # enums
    return str(text)


def render(event: str, data: dict[str, object]) -> str:
    """The message for ``event`` with facts from ``data`` (a record's ``__dict__``)."""
    facts = []
    for key, unit in FACTS:
        shown = _value(data.get(key), unit)
        if shown is not None:
            facts.append(f"{key}={shown}")
    phrase = PHRASES.get(event)
    text = f"{event}: {phrase}" if phrase else event
    if facts:
        text += f" ({' '.join(facts)})" if phrase else ": " + " ".join(facts)
    return text


class EventMessageFilter(logging.Filter):
    """Renders a readable message for records whose message is a bare event name.

    Keeps every record (returns True); keeps the stable name in ``record.event``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        data = record.__dict__
        if not isinstance(record.msg, str):
            return True
        message = record.msg
        if _EVENT.fullmatch(message) and not record.args:
            data.setdefault("event", message)
            record.msg = render(message, data)
            return True
        # Already a sentence ("unit.close_failed: closing ... %s"): keep it, name the event.
        head = message.split(":", 1)[0]
        if head != message and _EVENT.fullmatch(head):
            data.setdefault("event", head)
        return True


def install() -> None:
    """Install the filter on the ``resilient_db`` logger (once; safe to call again)."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(f, EventMessageFilter) for f in logger.filters):
        logger.addFilter(EventMessageFilter())


install()
