"""Commit-outcome resolution (DESIGN §7).

Before COMMIT of a transaction that wrote, read the transaction id and the backend pid (one
round trip). If the connection dies during COMMIT, ask a fresh connection
``pg_xact_status(xid)``: ``committed`` → the unit succeeded; ``aborted`` → safe to retry;
``in progress`` → the old backend is still alive behind a dead socket: terminate it by pid
and ask again; ``NULL``/error → unknown (e.g. the xid was lost in a failover).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Generic, TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from resilient_db.classify import default_classifier
from resilient_db.policies import RetryPolicy

__all__ = [
    "ASK_TIMEOUT",
    "CommitOutcome",
    "CommitResolutions",
    "Doubts",
    "TxnIdentity",
    "capture_identity",
    "end_holder",
    "fresh_connection",
    "resolve_commit",
    "transaction_status",
    "transient_error",
]

logger = logging.getLogger("resilient_db")

R = TypeVar("R")  # what a resolution starts from (an operation key's record)
S = TypeVar("S")  # what it finds (the key's state)

# The WAL timeline (the first 8 hex digits of the current WAL file name) tells a resolution
# whether it talks to the same history: a standby promoted after a failover starts a new
# timeline and may hand out the *same* xid numbers again to other transactions. The
# server's start time (after '@') tells it whether the server restarted: after a crash, an
# xid whose WAL was never flushed may be handed out again too (measured by the chaos
# suite's restart scenario), so "committed" then no longer proves that *our* COMMIT won.
_TIMELINE = (
    "substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) || '@' || "
    "extract(epoch FROM pg_postmaster_start_time())::text"
)
_CAPTURE = text(f"SELECT pg_current_xact_id_if_assigned()::text, pg_backend_pid(), {_TIMELINE}")
_CAPTURE_NO_TIMELINE = text("SELECT pg_current_xact_id_if_assigned()::text, pg_backend_pid(), NULL")
_STATUS = text(
    "SELECT pg_xact_status(CAST(CAST(:xid AS text) AS xid8)), "
    f"CASE WHEN pg_is_in_recovery() THEN NULL ELSE {_TIMELINE} END"
)
_STATUS_NO_TIMELINE = text(
    "SELECT pg_xact_status(CAST(CAST(:xid AS text) AS xid8)), "
    "CASE WHEN pg_is_in_recovery() THEN NULL ELSE '' END"
)
# Only the backend that still holds *this* transaction (never a reused pid, never a process
# on another server after a failover).
_TERMINATE = text(
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
    "WHERE pid = :pid AND backend_xid = CAST(CAST(:xid32 AS text) AS xid)"
)


class CommitOutcome(StrEnum):
    """What the server did with a transaction whose COMMIT reply was lost."""

    COMMITTED = "committed"
    ABORTED = "aborted"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class TxnIdentity:
    """The server-side identity of a writing transaction, captured before COMMIT."""

    xid: int
    backend_pid: int
    #: WAL timeline of the server when the xid was captured (``None``: unknown).
    timeline: str | None = None


async def capture_identity(
    session: AsyncSession, *, with_timeline: bool = True
) -> TxnIdentity | None:
    """One round trip: the transaction's xid (``None`` when it wrote nothing), backend pid
    and WAL timeline (only ``with_timeline``: a server without WAL functions would fail the
    statement, and with it the caller's transaction)."""
    row = (await session.execute(_CAPTURE if with_timeline else _CAPTURE_NO_TIMELINE)).one()
    if row[0] is None:
        return None
    return TxnIdentity(xid=int(row[0]), backend_pid=int(row[1]), timeline=row[2])


@asynccontextmanager
async def fresh_connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection whose release stays cancellable (``async with engine.connect()`` would
    shield its close, which a frozen socket can hold forever); invalidated on any error."""
    conn = await engine.connect()
    try:
        yield conn
        await conn.rollback()
    except BaseException:
        try:
            await conn.invalidate()
        except Exception:
            logger.debug("commit.invalidate_failed")
        raise
    finally:
        await conn.close()


async def _status(engine: AsyncEngine, ident: TxnIdentity) -> str | None:
    """``pg_xact_status`` of ``ident``; ``"other timeline"`` when the server's history is not
    the one the xid was assigned in, ``"in recovery"`` on a standby (not authoritative)."""
    async with fresh_connection(engine) as conn:
        query = _STATUS if ident.timeline is not None else _STATUS_NO_TIMELINE
        row: Any = (await conn.execute(query, {"xid": str(ident.xid)})).one()
    value, timeline = row
    if timeline is None:
        return "in recovery"
    if ident.timeline is not None and timeline != ident.timeline:
        if timeline.partition("@")[0] != ident.timeline.partition("@")[0]:
            return "other timeline"
        return _after_restart(None if value is None else str(value))
    return None if value is None else str(value)


def _after_restart(value: str | None) -> str | None:
    """The status of our xid on a server that restarted since it was captured.

    A COMMIT that reached the disk keeps its xid from being handed out again, so only
    "committed" is ambiguous (ours, or another transaction's that was given the number after
    the crash lost ours). Aborted or in progress: ours did not commit (an in-progress owner
    is another transaction: never terminate it).
    """
    if value == "committed":
        return "restarted"
    if value in ("aborted", "in progress"):
        return "aborted"
    return value


async def _terminate(engine: AsyncEngine, ident: TxnIdentity) -> None:
    async with fresh_connection(engine) as conn:
        await end_holder(conn, ident.backend_pid, ident.xid)


async def end_holder(conn: AsyncConnection, pid: int, xid: int) -> bool:
    """Terminate backend ``pid`` if it still holds transaction ``xid``; True if it did."""
    params = {"pid": pid, "xid32": str(xid & 0xFFFFFFFF)}
    return (await conn.execute(_TERMINATE, params)).first() is not None


def transient_error(exc: BaseException) -> bool:
    """Whether asking again may get an answer (the classifier's verdict on ``exc``)."""
    return default_classifier().classify(exc).retryable


#: The resolution's own polling: the retry policy's backoff, without jitter (50 ms doubling
#: to 0.5 s), so a server that is coming back is asked promptly and a dead one gently.
#: Each question gets this long: a connection attempt stuck on a frozen network is dropped
#: and the next poll opens a new one (which reaches the server once the network heals).
ASK_TIMEOUT: Final = 1.0
_POLL: Final = RetryPolicy(initial=0.05, multiplier=2.0, max_backoff=0.5, jitter="none")


async def resolve_commit(
    engine: AsyncEngine, ident: TxnIdentity, *, timeout: float
) -> CommitOutcome:
    """Ask the server what became of ``ident``; at most ``timeout`` seconds.

    Runs on fresh pool connections (the one that failed was invalidated). Never raises for
    database errors: they make the outcome ``UNKNOWN``.
    """
    outcome = CommitOutcome.UNKNOWN
    try:
        async with asyncio.timeout(max(timeout, 0.0)):
            outcome = await _poll(engine, ident)
    except TimeoutError:
        pass
    return outcome


async def _poll(engine: AsyncEngine, ident: TxnIdentity) -> CommitOutcome:
    terminated = False
    polls = 0
    while True:
        polls += 1
        try:
            async with asyncio.timeout(ASK_TIMEOUT):  # a frozen socket: ask again, anew
                status = await _status(engine, ident)
        except Exception as exc:
            if not isinstance(exc, TimeoutError) and not transient_error(exc):
                logger.warning(
                    "commit.resolve_failed",
                    extra={"xid": ident.xid, "error_type": type(exc).__qualname__},
                )
                return CommitOutcome.UNKNOWN
            logger.info(
                "commit.resolve_retry",
                extra={"xid": ident.xid, "error_type": type(exc).__qualname__},
            )
            status = "unreachable"
        if status == "committed":
            return CommitOutcome.COMMITTED
        if status == "aborted":
            return CommitOutcome.ABORTED
        if status == "other timeline":
            logger.warning(
                "commit.timeline_changed",
                extra={"xid": ident.xid},
            )
            return CommitOutcome.UNKNOWN  # a failover: the number may name another transaction
        if status == "restarted":
            logger.warning("commit.server_restarted", extra={"xid": ident.xid})
            return CommitOutcome.UNKNOWN  # a crash restart: the number may have been reused
        if status not in ("in progress", "in recovery", "unreachable"):
            return CommitOutcome.UNKNOWN  # NULL: too old or unknown here
        if status == "in progress" and not terminated:
            # The old backend still holds the transaction open behind a dead socket.
            try:
                await _terminate(engine, ident)
            except Exception as exc:
                logger.info(
                    "commit.terminate_failed",
                    extra={"xid": ident.xid, "error_type": type(exc).__qualname__},
                )
            else:
                terminated = True
        await asyncio.sleep(_POLL.backoff(polls))  # bounded poll: the caller's timeout


class CommitResolutions:
    """Background resolutions of lost COMMITs for one engine, and their outcomes.

    A unit whose COMMIT is in doubt at its deadline raises ``CommitOutcomeUnknown`` at once;
    its resolution goes on here (bounded by its own timeout), reports ``commit.resolved``
    through ``report`` and stays answerable through :meth:`lookup` (the last ``keep``). A
    keyed unit's resolution asks the ledger (a :class:`Doubts` task, answered by
    ``Ledger.lookup``) and is handed to :meth:`track`, so :meth:`drain` waits for it too.
    """

    __slots__ = ("_done", "_engine", "_keep", "_running", "_tracked")

    def __init__(self, engine: AsyncEngine, *, keep: int = 1024) -> None:
        self._engine = engine
        self._keep = keep
        self._running: dict[int, asyncio.Task[CommitOutcome]] = {}
        self._done: OrderedDict[int, tuple[str | None, CommitOutcome]] = OrderedDict()
        self._tracked: set[asyncio.Future[Any]] = set()

    def track(self, task: asyncio.Future[Any]) -> None:
        """Let :meth:`drain` wait for ``task`` too (a resolution that runs elsewhere)."""
        if not task.done():
            self._tracked.add(task)
            task.add_done_callback(self._tracked.discard)

    def start(
        self,
        ident: TxnIdentity,
        *,
        timeout: float,
        report: Callable[[CommitOutcome], None],
    ) -> asyncio.Task[CommitOutcome]:
        """Resolve ``ident`` in a task of its own (joins one already running for it)."""
        task = self._running.get(ident.xid)
        if task is None:
            task = asyncio.ensure_future(self._resolve(ident, timeout, report))
            self._running[ident.xid] = task
        return task

    async def _resolve(
        self, ident: TxnIdentity, timeout: float, report: Callable[[CommitOutcome], None]
    ) -> CommitOutcome:
        try:
            outcome = await resolve_commit(self._engine, ident, timeout=timeout)
        finally:
            self._running.pop(ident.xid, None)
        self._done[ident.xid] = (ident.timeline, outcome)
        while len(self._done) > self._keep:
            self._done.popitem(last=False)
        try:
            report(outcome)  # before the task completes: waiters see the event first
        except Exception:
            logger.exception("commit.report_failed", extra={"xid": ident.xid})
        return outcome

    def lookup(
        self, xid: int, timeline: str | None
    ) -> asyncio.Task[CommitOutcome] | CommitOutcome | None:
        """A running resolution of ``xid``, its settled outcome, or None (never heard of)."""
        task = self._running.get(xid)
        if task is not None:
            return task
        done = self._done.get(xid)
        if done is None or (timeline is not None and done[0] not in (None, timeline)):
            return None
        return done[1]

    async def drain(self, seconds: float) -> None:
        """Wait (at most ``seconds``) for the running resolutions."""
        pending: list[asyncio.Future[Any]] = [*self._running.values(), *self._tracked]
        if pending:
            await asyncio.wait(pending, timeout=seconds)


class Doubts(Generic[R, S]):
    """Background resolutions found by name (an operation key's), for one engine: those
    running in this process, and the records of those that gave up (the last ``keep``), so
    that a later question can still end the backend that may hold the transaction."""

    __slots__ = ("_keep", "running", "unsettled")

    def __init__(self, *, keep: int = 1024) -> None:
        self._keep = keep
        self.running: dict[tuple[Hashable, Hashable], asyncio.Task[S | None]] = {}
        self.unsettled: OrderedDict[Hashable, R] = OrderedDict()

    def start(
        self,
        name: Hashable,
        ident: Hashable,
        record: R,
        work: Callable[[], Awaitable[S | None]],
        report: Callable[[S | None], None],
    ) -> asyncio.Task[S | None]:
        """Run ``work`` in a task of its own (joins one running for ``(name, ident)``);
        ``report`` hears its answer (``None``: it gave up) before the task ends."""

        async def run() -> S | None:
            try:
                state = await work()
            finally:
                self.running.pop((name, ident), None)
            self.unsettled.pop(name, None)
            if state is None:
                self.unsettled[name] = record
                while len(self.unsettled) > self._keep:
                    self.unsettled.popitem(last=False)
            try:
                report(state)  # before the task completes: waiters see the event first
            except Exception:
                logger.exception("commit.report_failed")
            return state

        task = self.running.get((name, ident))
        if task is None:
            task = self.running[(name, ident)] = asyncio.ensure_future(run())
        return task

    async def wait(self, name: Hashable, timeout: float) -> tuple[S | None, R | None]:
        """Wait for ``name``'s running resolutions: the state one found, else the record of
        one that gave up; raises :class:`TimeoutError` when they outlast ``timeout``."""
        tasks = [task for (n, _), task in self.running.items() if n == name]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(timeout, 0.0))
            if pending:
                raise TimeoutError(f"the resolution did not end within {timeout:g}s")
            for task in tasks:
                if (state := task.result()) is not None:
                    return state, None
        return None, self.unsettled.get(name)


async def transaction_status(
    engine: AsyncEngine, xid: int, *, timeout: float, timeline: str | None = None
) -> CommitOutcome:
    """``pg_xact_status(xid)`` as a :class:`CommitOutcome` (``UNKNOWN`` on any doubt, and
    when ``timeline`` is given and the server is on another one)."""
    status: str | None = None
    try:
        async with asyncio.timeout(timeout):
            status = await _status(engine, TxnIdentity(xid=xid, backend_pid=0, timeline=timeline))
    except Exception as exc:  # TimeoutError included
        logger.info(
            "commit.status_failed",
            extra={"xid": xid, "error_type": type(exc).__qualname__},
        )
    if status == "committed":
        return CommitOutcome.COMMITTED
    if status == "aborted":
        return CommitOutcome.ABORTED
    return CommitOutcome.UNKNOWN
