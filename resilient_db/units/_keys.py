"""The operation-key ledger: a unit's key recorded in its own transaction.

A key names one logical operation (an HTTP request's ``Idempotency-Key``, a message id, a
transfer id). The unit of work inserts it into the ledger table inside its own transaction,
right before COMMIT; the row commits or vanishes with the unit's writes. After a lost COMMIT
the key is looked up on whichever primary answers — the row lives in the data, so the answer
stays true across a failover, where an xid captured on the old primary cannot be trusted.

What a unit of work calls, and when (``ledger`` is a :class:`Ledger`, ``key`` the call's key
as given by the user, ``result`` the body's return value):

1. Once per call, before the first attempt: ``key = ledger.normalize_key(key)`` (raises
   :class:`~resilient_db.ConfigurationError` for a bad key; no I/O).
2. In every attempt, after the body returned and the session was flushed, *instead of* the
   xid capture: ``rec = await ledger.record(session, key, result)``. One statement: it
   inserts the key with the JSON result (when ``store_results`` and serialisable) and, if the
   key is already there, returns what is stored. A unit with a key always records (even if
   its body wrote nothing: the key itself is the write).
3. ``if not rec.inserted``: the operation was applied by an earlier call. ROLL BACK the
   attempt (the body's writes must not commit twice) and ``return rec.previous.replay()``:
   the stored result, or :class:`~resilient_db.AlreadyApplied` when none is stored (a
   ``db.transaction(key=...)`` block, which returns nothing, raises
   ``rec.previous.already_applied()``: the error carries the stored result). Never retry it.
4. If COMMIT fails with an unknown outcome, settle it in a task of its own
   (``key_doubts(engine).start(...)`` running ``ledger.resolve(engine, rec, timeout=...)``)
   waited for within the deadline. ``state.committed`` → the unit succeeded: return
   ``result``. Absent → it did not commit: retry the unit (safe even if the old transaction
   were still in flight: the retry's key insert waits on the key's unique index). ``None``,
   or the deadline came first → raise :class:`~resilient_db.CommitOutcomeUnknown` with
   ``key=key`` at once; the task goes on (bounded) and :meth:`Ledger.lookup` waits for it.

``db.run(fn, ..., key=...)``, ``db.transaction(key=...)`` and ``@transactional(key=...)``
follow these steps (``tests/test_keys_units.py``, ``test_keys_doubt.py``, ``test_multihost.py``).

The first attempt of a *new* call with an already-applied key runs its body and then rolls it
back at step 3; :meth:`Ledger.peek` lets a unit look first (one more statement) when the body
has effects outside the database. Entries expire after ``ttl`` seconds: :meth:`Ledger.cleanup`
deletes expired rows in batches; a key whose entry expired may be applied again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from resilient_db._errors import AlreadyApplied, ConfigurationError
from resilient_db._validate import config_error
from resilient_db.units._commit import (
    ASK_TIMEOUT,
    Doubts,
    end_holder,
    fresh_connection,
    transient_error,
)

__all__ = ["DEFAULT_KEY_TTL", "KeyRecord", "KeyState", "Ledger", "create_ledger", "key_doubts"]

logger = logging.getLogger("resilient_db")

#: Default lifetime of a ledger entry: one day (longer than any sane client retry window).
DEFAULT_KEY_TTL = 86_400.0
MAX_KEY_LENGTH = 512
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

KeyValue = str | int | uuid.UUID


@dataclass(frozen=True, kw_only=True, slots=True)
class KeyState:
    """What the ledger holds for a key: ``committed`` (with the stored result) or absent."""

    key: str
    committed: bool
    #: Whether ``result`` is the stored result (``False``: none was stored, or absent).
    has_result: bool = False
    result: Any = None
    recorded_at: datetime | None = None

    def replay(self) -> Any:
        """The stored result of a committed key; raises :class:`AlreadyApplied` without one."""
        if not self.committed:
            raise ValueError(f"key {self.key!r} is not in the ledger; there is nothing to replay")
        if self.has_result:
            return self.result
        raise self.already_applied()

    def already_applied(self) -> AlreadyApplied:
        """The error carrying all that is known (for a block, which has no result to return)."""
        return AlreadyApplied(
            self.key, recorded_at=self.recorded_at, has_result=self.has_result, result=self.result
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class KeyRecord:
    """The answer of :meth:`Ledger.record` inside a unit's transaction."""

    key: str
    #: True: this transaction inserted the key. False: it was already applied (``previous``).
    inserted: bool
    previous: KeyState | None = None
    #: The backend and transaction that inserted it (to end that backend if it outlives a
    #: lost COMMIT on the same server).
    backend_pid: int | None = None
    xid: int | None = None


def _identifier(what: str, value: object) -> str:
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        raise ConfigurationError(
            f"ledger {what} must be a plain SQL identifier (letters, digits, '_', at most 63, "
            f"not starting with a digit), got {value!r}"
        )
    return f'"{value}"'


class Ledger:
    """Where operation keys live: ``schema.table`` (default: ``resilient_db_keys`` on the
    search path), entries kept ``ttl`` seconds, results stored as JSON when
    ``store_results`` (and when they are JSON-serialisable; a replay then returns what JSON
    round-trips: a tuple comes back as a list)."""

    __slots__ = ("_lookup", "_record", "_reread", "name", "schema", "store_results", "table", "ttl")

    def __init__(
        self,
        *,
        schema: str | None = None,
        table: str = "resilient_db_keys",
        ttl: float = DEFAULT_KEY_TTL,
        store_results: bool = True,
    ) -> None:
        quoted = _identifier("table", table)
        if schema is not None:
            quoted = f"{_identifier('schema', schema)}.{quoted}"
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl < 1e10:
            raise config_error(
                "Ledger", "ttl", ttl, "a number of seconds > 0", "pass e.g. ttl=86400 (one day)"
            )
        if not isinstance(store_results, bool):
            raise config_error(
                "Ledger",
                "store_results",
                store_results,
                "True or False",
                "pass store_results=True or False",
                wrong_type=True,
            )
        self.schema, self.table, self.name = schema, table, quoted
        self.ttl, self.store_results = float(ttl), store_results
        self._record = text(
            f"WITH ins AS (INSERT INTO {quoted} AS l (key, result, expires_at) "
            "VALUES (CAST(:key AS text), CAST(:result AS jsonb), "
            "now() + CAST(:ttl AS double precision) * interval '1 second') "
            "ON CONFLICT (key) DO UPDATE SET result = EXCLUDED.result, recorded_at = now(), "
            "expires_at = EXCLUDED.expires_at WHERE l.expires_at <= now() "
            "RETURNING pg_backend_pid() AS pid, pg_current_xact_id()::text AS xid) "
            "SELECT true, ins.pid, ins.xid, NULL::text, NULL::timestamptz FROM ins "
            f"UNION ALL SELECT false, NULL, NULL, l.result::text, l.recorded_at FROM {quoted} l "
            "WHERE l.key = CAST(:key AS text) AND NOT EXISTS (SELECT FROM ins)"
        )
        self._reread = text(
            f"SELECT false, NULL, NULL, result::text, recorded_at FROM {quoted} "
            "WHERE key = CAST(:key AS text)"
        )
        self._lookup = text(
            "SELECT pg_is_in_recovery(), l.key IS NOT NULL, l.result::text, l.recorded_at "
            f"FROM (SELECT 1) AS one LEFT JOIN {quoted} AS l ON l.key = CAST(:key AS text)"
        )

    def __repr__(self) -> str:
        return f"Ledger(name={self.name}, ttl={self.ttl:g}, store_results={self.store_results})"

    @staticmethod
    def normalize_key(key: object) -> str:
        """``key`` as stored: a non-empty string of at most 512 characters (ints and UUIDs
        are turned into their text form). No I/O."""
        if isinstance(key, bool) or not isinstance(key, str | int | uuid.UUID):
            raise ConfigurationError(
                f"an operation key must be a str, int or UUID, got {type(key).__name__}; "
                "derive one from the request (e.g. its Idempotency-Key header)"
            )
        value = str(key)
        if not value or len(value) > MAX_KEY_LENGTH or "\x00" in value:
            raise ConfigurationError(
                f"an operation key must be 1..{MAX_KEY_LENGTH} characters without NUL, got "
                f"{len(value)} characters"
            )
        return value

    def ddl(self) -> tuple[str, ...]:
        """The statements that create the ledger (idempotent; for Alembic ``op.execute``)."""
        index = f'"{self.table}_expires_at"'
        return (
            f"CREATE TABLE IF NOT EXISTS {self.name} ("
            "key text PRIMARY KEY, result jsonb, "
            "recorded_at timestamptz NOT NULL DEFAULT now(), expires_at timestamptz NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS {index} ON {self.name} (expires_at)",
        )

    def encode_result(self, result: object) -> str | None:
        """The JSON text stored for ``result``; ``None`` when not storing or not serialisable."""
        if not self.store_results:
            return None
        try:
            return json.dumps(result, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            logger.debug("keys.result_not_stored", extra={"error_type": type(exc).__name__})
            return None

    async def record(
        self, conn: AsyncSession | AsyncConnection, key: str, result: object = None
    ) -> KeyRecord:
        """Insert ``key`` (a :meth:`normalize_key` value) in the caller's open transaction.

        One statement, plus one only when a concurrent transaction committed the same key
        while this one waited on it (READ COMMITTED re-reads it). The caller must COMMIT when
        ``inserted`` and ROLL BACK otherwise. A missing ledger table raises
        :class:`~resilient_db.ConfigurationError` (the transaction is then aborted).
        """
        params = {"key": key, "result": self.encode_result(result), "ttl": self.ttl}
        try:
            row = (await conn.execute(self._record, params)).first()
            if row is None:  # committed concurrently, after this statement's snapshot
                row = (await conn.execute(self._reread, {"key": key})).first()
        except DBAPIError as exc:
            raise self._missing_table(exc) from exc
        if row is None:  # pragma: no cover - the key vanished (cleanup raced a waiter)
            return KeyRecord(key=key, inserted=False, previous=KeyState(key=key, committed=True))
        inserted, pid, xid, stored, recorded_at = row
        if inserted:
            return KeyRecord(key=key, inserted=True, backend_pid=int(pid), xid=int(xid))
        logger.info("keys.already_applied", extra={"ledger": self.table})
        return KeyRecord(key=key, inserted=False, previous=_state(key, True, stored, recorded_at))

    def _missing_table(self, exc: DBAPIError) -> Exception:
        if getattr(exc.orig, "sqlstate", None) == "42P01" or "42P01" in str(
            getattr(exc.orig, "pgcode", "")
        ):
            return ConfigurationError(
                f"the operation-key ledger table {self.name} does not exist; create it once "
                "with `await resilient_db.create_ledger(engine)` or the DDL in docs/keys.md "
                "(Ledger.ddl())"
            )
        return exc

    async def peek(self, conn: AsyncSession | AsyncConnection, key: str) -> KeyState:
        """The key's state as the caller's transaction sees it (one statement)."""
        try:
            row = (await conn.execute(self._lookup, {"key": key})).one()
        except DBAPIError as exc:
            raise self._missing_table(exc) from exc
        return _state(key, bool(row[1]), row[2], row[3])

    async def lookup(self, engine: AsyncEngine, key: str, *, timeout: float = 10.0) -> KeyState:
        """The key's state on a primary (a standby's answer is not authoritative: waits for
        a primary, bounded by ``timeout``; raises :class:`TimeoutError` after it).

        The answer to ``CommitOutcomeUnknown(key=...)``: it waits for the key's resolution
        still running in this process, and after one that gave up it first ends the backend
        that may still hold the key (as :meth:`resolve` does), so "absent" is final.
        """
        doubts, hold, left = _doubts.get(engine.sync_engine), None, timeout
        if doubts is not None:
            started = asyncio.get_running_loop().time()
            state, hold = await doubts.wait((self.name, key), timeout)
            if state is not None:
                return state  # settled just now by the unit's own resolution
            left = timeout - (asyncio.get_running_loop().time() - started)
        state = await self._poll(engine, key, timeout=left, hold=hold)
        if state is None:
            raise TimeoutError(f"no primary answered the ledger lookup within {timeout:g}s")
        if doubts is not None and hold is not None:
            doubts.unsettled.pop((self.name, key), None)
        return state

    async def resolve(
        self, engine: AsyncEngine, record: KeyRecord, *, timeout: float
    ) -> KeyState | None:
        """Settle a lost COMMIT of the transaction that inserted ``record``.

        Asks fresh connections until a primary answers (``None`` when none did within
        ``timeout``). If the key is absent while the old backend still holds its transaction
        on this server (a dead socket, a live backend), that backend is terminated first and
        the key looked up again, so "absent" is final. Never raises database errors.
        """
        return await self._poll(engine, record.key, timeout=timeout, hold=record)

    async def _poll(
        self, engine: AsyncEngine, key: str, *, timeout: float, hold: KeyRecord | None
    ) -> KeyState | None:
        wait = 0.05
        with anyio.move_on_after(max(timeout, 0.0)):
            while True:
                try:  # each question bounded: a frozen socket is dropped, the next one is new
                    async with asyncio.timeout(ASK_TIMEOUT), fresh_connection(engine) as conn:
                        row = (await conn.execute(self._lookup, {"key": key})).one()
                        held = False
                        if not row[0] and not row[1] and hold is not None:
                            held = await _end_holder(conn, hold)
                except Exception as exc:
                    if not isinstance(exc, TimeoutError) and not transient_error(exc):
                        logger.warning(
                            "keys.lookup_failed",
                            extra={"error_type": type(exc).__qualname__, "ledger": self.table},
                        )
                        return None
                    logger.info("keys.lookup_retry", extra={"error_type": type(exc).__qualname__})
                    held = True  # not reachable yet: ask again
                else:
                    if not row[0] and not held:
                        return _state(key, bool(row[1]), row[2], row[3])
                await anyio.sleep(wait)  # bounded poll (the enclosing move_on_after)
                wait = min(wait * 2, 0.5)
        return None

    async def cleanup(self, engine: AsyncEngine, *, batch: int = 10_000) -> int:
        """Delete expired entries, ``batch`` rows per transaction; returns how many.

        Safe to run from several processes at once (``SKIP LOCKED``); schedule it (cron, a
        periodic task) about as often as the TTL.
        """
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ConfigurationError(f"batch must be an integer >= 1, got {batch!r}")
        delete = text(
            f"DELETE FROM {self.name} WHERE key IN (SELECT key FROM {self.name} "
            "WHERE expires_at <= now() LIMIT :n FOR UPDATE SKIP LOCKED)"
        )
        total = 0
        while True:
            async with engine.begin() as conn:
                count = (await conn.execute(delete, {"n": batch})).rowcount
            total += count
            if count < batch:
                break
        logger.info("keys.cleaned", extra={"ledger": self.table, "deleted": total})
        return total

    async def forget(self, engine: AsyncEngine, key: str) -> bool:
        """Delete one key (an operator's tool); True if it was there."""
        delete = text(f"DELETE FROM {self.name} WHERE key = CAST(:key AS text)")
        async with engine.begin() as conn:
            return bool((await conn.execute(delete, {"key": key})).rowcount)


async def create_ledger(engine: AsyncEngine, ledger: Ledger | None = None) -> Ledger:
    """Create the ledger's table and index if missing (idempotent); returns the ledger.

    Needs CREATE on the schema; under migrations, run :meth:`Ledger.ddl` from Alembic.
    """
    ledger = ledger if ledger is not None else Ledger()
    async with engine.begin() as conn:
        for statement in ledger.ddl():
            await conn.execute(text(statement))
    return ledger


_doubts: weakref.WeakKeyDictionary[Any, Doubts[KeyRecord, KeyState]] = weakref.WeakKeyDictionary()


def key_doubts(engine: AsyncEngine) -> Doubts[KeyRecord, KeyState]:
    """``engine``'s lost COMMITs of keyed units being settled in this process, by
    ``(ledger.name, key)``: a unit starts them, :meth:`Ledger.lookup` waits for them."""
    doubts = _doubts.get(engine.sync_engine)
    if doubts is None:
        doubts = _doubts[engine.sync_engine] = Doubts()
    return doubts


async def _end_holder(conn: AsyncConnection, hold: KeyRecord) -> bool:
    """Terminate the backend still holding ``hold``'s transaction here; True if it was."""
    if hold.backend_pid is None or hold.xid is None:
        return False
    if found := await end_holder(conn, hold.backend_pid, hold.xid):
        logger.info("keys.holder_terminated", extra={"backend_pid": hold.backend_pid})
    return found


def _state(key: str, committed: bool, stored: str | None, recorded_at: Any) -> KeyState:
    if not committed:
        return KeyState(key=key, committed=False)
    return KeyState(
        key=key,
        committed=True,
        has_result=stored is not None,
        result=json.loads(stored) if stored is not None else None,
        recorded_at=recorded_at,
    )
