"""Pool policy: SQLAlchemy event listeners installed once per engine.

* ``handle_error``: SQLAlchemy recycles the *whole* pool on any disconnect. With
  ``pool_pre_ping`` on, that is unnecessary for one killed backend (each pooled connection is
  pinged at checkout anyway), so the listener keeps the rest of the pool. A write that hits
  a hot standby (SQLSTATE 25006 on a server reporting ``in_hot_standby=on``) is the opposite
  case: every pooled connection points at the old primary, now a standby after a failover,
  so the listener forces a pool-wide recycle.
* ``before_cursor_execute``: marks the connection as having written in its current
  transaction (any statement that does not start with ``SELECT``/``SHOW``), so only writing
  transactions pay the round trip that captures their xid before COMMIT.
* Pre-ping: SQLAlchemy's ``pool_pre_ping`` recycles the *whole* pool whenever one ping
  fails, so one backend killed while idle (``pg_terminate_backend``, an idle timeout) makes
  every other healthy connection reconnect. When the engine has ``pool_pre_ping`` on, the
  policy takes the ping over (same ping, in a ``checkout`` listener) and decides: a ping
  that fails *fast* (the peer closed or reset the socket, the server ended the session)
  invalidates that one connection; a ping that *times out* (a black-holed network: the other
  connections would hang the same way) recycles the whole pool.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import Connection, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine

from resilient_db.classify import default_classifier

__all__ = [
    "TIMELINE_SQL",
    "WROTE_KEY",
    "install_pool_policy",
    "pre_ping_enabled",
    "server_in_hot_standby",
    "timeline_supported",
]

logger = logging.getLogger("resilient_db")

#: ``Connection.info`` key set to True once the current transaction ran a writing statement.
WROTE_KEY = "resilient_db.wrote"
_FRESH_KEY = "resilient_db.fresh"
_READS = ("SELECT", "SHOW", "select", "show")

_installed: weakref.WeakSet[Any] = weakref.WeakSet()
#: Engines whose server answered the WAL-timeline probe (PostgreSQL with WAL functions; not
#: e.g. Aurora). Probed on new connections until one answers.
_timeline_ok: weakref.WeakSet[Any] = weakref.WeakSet()
TIMELINE_SQL = "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"


def timeline_supported(engine: AsyncEngine) -> bool:
    """Whether xid captures on ``engine`` may include the WAL timeline (see ``_commit``)."""
    return engine.sync_engine in _timeline_ok


_pinging: weakref.WeakSet[Any] = weakref.WeakSet()


def pre_ping_enabled(engine: AsyncEngine) -> bool:
    """Whether checkouts of ``engine`` are pinged (by SQLAlchemy or by this policy)."""
    sync = engine.sync_engine
    # no public API: SQLAlchemy keeps pool_pre_ping only as the pool's private flag
    return sync in _pinging or bool(getattr(sync.pool, "_pre_ping", False))


def server_in_hot_standby(driver_connection: Any) -> bool | None:
    """Whether the server behind a driver connection reports ``in_hot_standby=on``.

    PostgreSQL 14+ reports the parameter to clients (and updates it on promotion), so this
    costs no round trip. ``None`` when unknown (older server, other driver).
    """
    value: Any = None
    try:
        info = getattr(driver_connection, "info", None)
        if info is not None and hasattr(info, "parameter_status"):  # psycopg 3
            value = info.parameter_status("in_hot_standby")
        elif hasattr(driver_connection, "get_settings"):  # asyncpg
            value = getattr(driver_connection.get_settings(), "in_hot_standby", None)
    except Exception:  # a broken connection: unknown
        return None
    if isinstance(value, bytes):
        value = value.decode()
    if value is None:
        return None
    return str(value).lower() == "on"


def _on_error(ctx: ExceptionContext) -> None:
    conn = ctx.connection
    original = ctx.original_exception
    if conn is not None and default_classifier().classify(original).sqlstate == "25006":
        try:
            driver = conn.connection.driver_connection
        except Exception:
            driver = None
        if server_in_hot_standby(driver):
            ctx.is_disconnect = True
            ctx.invalidate_pool_on_disconnect = True
            logger.warning(
                "pool.recycled",
                extra={"reason": "write_on_standby", "sqlstate": "25006"},
            )
            return
    if ctx.is_disconnect and ctx.invalidate_pool_on_disconnect:
        pool = ctx.engine.pool if ctx.engine is not None else None
        # no public API: SQLAlchemy keeps pool_pre_ping only as the pool's private flag
        if pool is not None and getattr(pool, "_pre_ping", False):
            # Keep the other pooled connections: pre-ping checks each one at checkout.
            ctx.invalidate_pool_on_disconnect = False
            logger.debug("pool.kept", extra={"reason": "single_disconnect"})


def _track_writes(
    conn: Connection,
    cursor: Any,
    statement: str,
    parameters: Any,
    context: Any,
    executemany: bool,
) -> None:
    if not statement.lstrip().startswith(_READS):
        conn.info[WROTE_KEY] = True


def install_pool_policy(engine: AsyncEngine) -> None:
    """Install the listeners on ``engine`` (idempotent)."""
    sync = engine.sync_engine
    if sync in _installed:
        return
    event.listen(sync, "handle_error", _on_error)
    event.listen(sync, "before_cursor_execute", _track_writes)

    def probe_timeline(dbapi_connection: Any, record: Any) -> None:
        if sync in _timeline_ok:
            return
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(TIMELINE_SQL)
            cursor.fetchone()
        except Exception as exc:  # a standby, or a server without WAL functions
            logger.debug("pool.timeline_probe_failed", extra={"error_type": type(exc).__name__})
        else:
            _timeline_ok.add(sync)
        finally:
            cursor.close()
            dbapi_connection.rollback()

    event.listen(sync, "connect", probe_timeline)
    pool: Any = sync.pool
    # no public API: SQLAlchemy keeps pool_pre_ping only as the pool's private flag
    if getattr(pool, "_pre_ping", False):
        dialect = sync.dialect

        def on_connect(dbapi_connection: Any, record: Any) -> None:
            record.info[_FRESH_KEY] = True

        def on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
            if record.info.pop(_FRESH_KEY, False):
                return  # just connected: nothing to ping (as SQLAlchemy's own pre-ping)
            try:
                dialect.do_ping(dbapi_connection)
            except Exception as err:
                whole_pool = default_classifier().classify(err).category == "timeout"
                logger.info(
                    "pool.ping_failed",
                    extra={
                        "scope": "pool" if whole_pool else "connection",
                        "error_type": type(err).__qualname__,
                    },
                )
                failure = exc.DisconnectionError("pre-ping failed: " + type(err).__qualname__)
                failure.invalidate_pool = whole_pool
                raise failure from err

        event.listen(sync, "connect", on_connect)
        event.listen(sync, "checkout", on_checkout)
        # no public API: SQLAlchemy keeps pool_pre_ping only as the pool's private flag
        pool._pre_ping = False  # the listener above pings instead (recreate() keeps it off)
        _pinging.add(sync)
    _installed.add(sync)
