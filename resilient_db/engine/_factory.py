"""The production engine factory: SQLAlchemy's ``create_async_engine`` with safe defaults.

Every default below exists because a real fault showed the SQLAlchemy default is unsafe on a
sick network (see DESIGN §6): a black-holed socket hangs ``pool_pre_ping``, queries and
checkouts forever unless the driver has a connect and a command timeout; the default 30 s
``pool_timeout`` makes callers beyond the pool sit out a whole outage in the queue.
"""

from __future__ import annotations

import math
import os
import uuid
import warnings
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import create_async_engine as _sa_create_async_engine

from resilient_db._validate import config_error, unknown_option
from resilient_db.engine._multihost import install_multihost_connect
from resilient_db.engine._urls import Driver, check_url, host_list

__all__ = [
    "EngineSettings",
    "ShortPoolRecycleWarning",
    "create_async_engine",
    "default_pool_size",
    "engine_settings",
    "short_recycle_message",
]

#: Ratio of time a request waits on the database to the time it computes; the pool formula
#: multiplies the core count by ``1 + IO_WAIT_RATIO`` (an async worker keeps that many
#: connections busy per core when it waits on I/O that much longer than it computes).
IO_WAIT_RATIO = 2
#: Bounds for the computed pool size (per process).
POOL_SIZE_BOUNDS = (2, 20)

DEFAULT_POOL_TIMEOUT = 10.0
DEFAULT_POOL_RECYCLE = 1800.0
POOL_RECYCLE_WARN_BELOW = 300.0
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_COMMAND_TIMEOUT = 30.0
DEFAULT_APPLICATION_NAME = "resilient_db"

# Options SQLAlchemy's create_engine / create_async_engine take that we pass through as is.
_PASSTHROUGH = frozenset(
    {
        "creator",
        "echo",
        "echo_pool",
        "enable_from_linting",
        "execution_options",
        "hide_parameters",
        "insertmanyvalues_page_size",
        "isolation_level",
        "json_deserializer",
        "json_serializer",
        "label_length",
        "logging_name",
        "max_identifier_length",
        "module",
        "paramstyle",
        "plugins",
        "pool",
        "poolclass",
        "pool_logging_name",
        "pool_reset_on_return",
        "pool_use_lifo",
        "query_cache_size",
        "skip_autocommit_rollback",
        "use_insertmanyvalues",
        "async_creator",
    }
)
_OWN = frozenset(
    {
        "pool_size",
        "max_overflow",
        "pool_timeout",
        "pool_recycle",
        "pool_pre_ping",
        "connect_timeout",
        "command_timeout",
        "statement_timeout",
        "application_name",
        "pgbouncer",
        "connect_args",
        "future",
    }
)


@dataclass(frozen=True, kw_only=True, slots=True)
class EngineSettings:
    """The resilience-relevant settings an engine was created with (for ``doctor``)."""

    driver: Driver
    pool_size: int
    max_overflow: int
    pool_timeout: float
    pool_recycle: float
    pool_pre_ping: bool
    connect_timeout: float | None
    command_timeout: float | None
    statement_timeout: float | None
    application_name: str
    pgbouncer: bool
    connect_args: Mapping[str, Any] = field(default_factory=dict)


class ShortPoolRecycleWarning(UserWarning):
    """``pool_recycle`` is under 300 s (``doctor`` reports it as the finding
    ``short_pool_recycle`` instead of warning)."""


def short_recycle_message(pool_recycle: float) -> str:
    """Why a ``pool_recycle`` under :data:`POOL_RECYCLE_WARN_BELOW` is a mistake."""
    return (
        f"pool_recycle={pool_recycle:g}s is under {POOL_RECYCLE_WARN_BELOW:g}s: every "
        "connection is replaced that often, which costs connects and server memory for "
        "no safety (pool_pre_ping already catches dead idle connections); use 300 s or "
        "more unless your proxy's idle limit is lower"
    )


_SETTINGS: weakref.WeakKeyDictionary[Any, EngineSettings] = weakref.WeakKeyDictionary()


def engine_settings(engine: AsyncEngine) -> EngineSettings | None:
    """Settings of an engine made by :func:`create_async_engine`; ``None`` for others."""
    return _SETTINGS.get(engine.sync_engine)


def default_pool_size(cpu_count: int | None = None) -> int:
    """Pool size per process: ``clamp(cores × (1 + IO_WAIT_RATIO), 2, 20)``.

    With ``IO_WAIT_RATIO = 2`` a 2-core worker gets 6 connections and an 8-core one 20 (the
    cap: more connections than that per process rarely raise throughput and quickly exhaust
    the server's ``max_connections`` across processes — run ``resilient-db doctor``).
    """
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    low, high = POOL_SIZE_BOUNDS
    return max(low, min(high, cores * (1 + IO_WAIT_RATIO)))


def _positive(name: str, value: object, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    fix = f"pass e.g. {name}=5" + (", or None to disable it" if allow_none else "")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise config_error(
            "create_async_engine", name, value, "a number of seconds > 0", fix, wrong_type=True
        )
    if not math.isfinite(value) or value <= 0:
        raise config_error(
            "create_async_engine", name, value, "a finite number of seconds > 0", fix
        )
    return float(value)


def _count(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise config_error(
            "create_async_engine",
            name,
            value,
            f"an integer >= {minimum}",
            f"pass e.g. {name}={max(minimum, 5)}",
            wrong_type=not isinstance(value, int) or isinstance(value, bool),
        )
    return value


def _unknown_option(name: str) -> TypeError:
    return unknown_option("create_async_engine", name, _OWN | _PASSTHROUGH)


def _asyncpg_connect_args(s: EngineSettings) -> dict[str, Any]:
    args: dict[str, Any] = {}
    if s.connect_timeout is not None:
        args["timeout"] = s.connect_timeout
    if s.command_timeout is not None:
        args["command_timeout"] = s.command_timeout
    server_settings = {"application_name": s.application_name}
    if s.statement_timeout is not None:
        server_settings["statement_timeout"] = str(int(s.statement_timeout * 1000))
    args["server_settings"] = server_settings
    if s.pgbouncer:
        # PgBouncer in transaction mode hands each transaction to any server connection:
        # a prepared statement cached on one backend does not exist on the next, so turn
        # both caches off and give every statement a name that cannot collide.
        args["statement_cache_size"] = 0
        args["prepared_statement_cache_size"] = 0
        args["prepared_statement_name_func"] = _unique_statement_name
    return args


def _unique_statement_name() -> str:
    return f"__rdb_{uuid.uuid4().hex}__"


def _psycopg_connect_args(s: EngineSettings) -> dict[str, Any]:
    args: dict[str, Any] = {"application_name": s.application_name}
    if s.connect_timeout is not None:
        # libpq counts whole seconds and treats values below 2 as 2.
        args["connect_timeout"] = max(2, math.ceil(s.connect_timeout))
    options = []
    if s.statement_timeout is not None:
        options.append(f"-c statement_timeout={int(s.statement_timeout * 1000)}")
    if options:
        args["options"] = " ".join(options)
    if s.command_timeout is not None:
        # psycopg has no client-side statement timer; bound a dead peer at the TCP layer:
        # unacknowledged data fails after tcp_user_timeout, an idle dead peer after the
        # keepalive probes. A live-but-silent peer is bounded by the unit's deadline.
        args["tcp_user_timeout"] = int(s.command_timeout * 1000)
        args["keepalives"] = 1
        args["keepalives_idle"] = max(1, int(s.command_timeout))
        args["keepalives_interval"] = max(1, int(s.command_timeout / 3))
        args["keepalives_count"] = 3
    if s.pgbouncer:
        args["prepare_threshold"] = None
    return args


def create_async_engine(url: str | URL, **options: Any) -> AsyncEngine:
    """Create a SQLAlchemy :class:`AsyncEngine` for PostgreSQL with production defaults.

    A drop-in for :func:`sqlalchemy.ext.asyncio.create_async_engine`: it takes the same URL
    and options and returns a plain ``AsyncEngine``. Differences, each for a reason:

    * Only ``postgresql+asyncpg://`` and ``postgresql+psycopg://`` URLs are accepted; a sync
      driver or another database is refused with the prefix to use.
    * ``pool_pre_ping=True``: a connection killed while idle in the pool (server restart,
      failover, idle timeout) is noticed at checkout instead of failing the caller's query.
    * ``pool_recycle=1800`` s: connections are replaced before the idle/age limits of common
      load balancers and proxies; values under 300 s warn (they churn connections).
    * ``pool_size`` = cores × (1 + 2), clamped to 2..20 (see :func:`default_pool_size`);
      ``max_overflow`` = half of it; ``pool_timeout=10`` s instead of 30 s, so a saturated
      pool fails fast enough for a deadline to matter.
    * ``connect_timeout=5`` s and ``command_timeout=30`` s are always set, mapped to each
      driver (asyncpg: ``timeout``/``command_timeout``; psycopg: libpq ``connect_timeout``
      plus ``tcp_user_timeout`` and keepalives). A black-holed socket then cannot hang a
      pre-ping, a query or a checkout forever. ``statement_timeout`` (server side) is off
      unless given.
    * ``application_name="resilient_db"`` so the connections are identifiable in
      ``pg_stat_activity``.
    * ``pgbouncer=True`` turns off prepared-statement caches and uses unique statement names,
      as PgBouncer's transaction pooling requires.
    * Multi-host URLs (``?host=h1:5432&host=h2:5432``, or libpq's ``?host=h1:5432,h2:5432``)
      get ``target_session_attrs=read-write`` unless they ask otherwise; new connections try
      the hosts one by one (own connect timeout each, last good host first), so after a
      promotion the pool finds the new primary with no restart (docs/keys.md).

    User ``connect_args`` win over the defaults. ``future=True`` (from 1.4-era examples) is
    accepted and ignored. Unknown options raise :class:`TypeError`; out-of-range values raise
    :class:`~resilient_db.ConfigurationError` naming the option and its range.
    """
    parsed, driver = check_url(url)
    for name in options:
        if name not in _OWN and name not in _PASSTHROUGH:
            raise _unknown_option(name)
    options.pop("future", None)
    settings = _settings(driver, options)  # takes our own options out of ``options``
    pool_options: dict[str, Any] = {}
    if "poolclass" not in options and "pool" not in options:
        pool_options = {
            "pool_size": settings.pool_size,
            "max_overflow": settings.max_overflow,
            "pool_timeout": settings.pool_timeout,
        }
    engine = _sa_create_async_engine(
        parsed,
        pool_recycle=settings.pool_recycle,
        pool_pre_ping=settings.pool_pre_ping,
        connect_args=dict(settings.connect_args),
        **pool_options,
        **options,
    )
    _SETTINGS[engine.sync_engine] = settings
    if len(host_list(parsed)) > 1:
        install_multihost_connect(engine)
    return engine


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise config_error(
            "create_async_engine",
            name,
            value,
            "True or False",
            f"pass {name}=True or False",
            wrong_type=True,
        )
    return value


def _settings(driver: Driver, options: dict[str, Any]) -> EngineSettings:
    """The validated settings, popped out of ``options`` (what is left passes through)."""
    pool_size = _count("pool_size", options.pop("pool_size", default_pool_size()), minimum=1)
    max_overflow = _count(
        "max_overflow", options.pop("max_overflow", max(2, pool_size // 2)), minimum=0
    )
    pool_timeout = _positive("pool_timeout", options.pop("pool_timeout", DEFAULT_POOL_TIMEOUT))
    pool_recycle = _positive("pool_recycle", options.pop("pool_recycle", DEFAULT_POOL_RECYCLE))
    assert pool_timeout is not None
    assert pool_recycle is not None
    if pool_recycle < POOL_RECYCLE_WARN_BELOW:
        warnings.warn(short_recycle_message(pool_recycle), ShortPoolRecycleWarning, stacklevel=3)
    application_name = options.pop("application_name", DEFAULT_APPLICATION_NAME)
    if not isinstance(application_name, str) or not application_name:
        raise config_error(
            "create_async_engine",
            "application_name",
            application_name,
            "a non-empty string",
            "pass e.g. application_name='billing-api' (shown in pg_stat_activity)",
        )
    user_args = options.pop("connect_args", None) or {}
    if not isinstance(user_args, Mapping):
        raise config_error(
            "create_async_engine",
            "connect_args",
            user_args,
            "a mapping",
            "pass a dict of driver keyword arguments, e.g. connect_args={'ssl': 'require'}",
            wrong_type=True,
        )
    settings = EngineSettings(
        driver=driver,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        pool_recycle=pool_recycle,
        pool_pre_ping=_flag("pool_pre_ping", options.pop("pool_pre_ping", True)),
        connect_timeout=_positive(
            "connect_timeout", options.pop("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
        ),
        command_timeout=_positive(
            "command_timeout", options.pop("command_timeout", DEFAULT_COMMAND_TIMEOUT)
        ),
        statement_timeout=_positive(
            "statement_timeout", options.pop("statement_timeout", None), allow_none=True
        ),
        application_name=application_name,
        pgbouncer=_flag("pgbouncer", options.pop("pgbouncer", False)),
    )
    return replace(settings, connect_args=_connect_args(settings, user_args))


def _connect_args(settings: EngineSettings, user_args: Mapping[str, Any]) -> dict[str, Any]:
    """The driver defaults for ``settings``, overridden by the user's ``connect_args``."""
    if settings.driver == "asyncpg":
        defaults = _asyncpg_connect_args(settings)
    else:
        defaults = _psycopg_connect_args(settings)
    connect_args = {**defaults, **user_args}
    if isinstance(defaults.get("server_settings"), dict) and "server_settings" in user_args:
        connect_args["server_settings"] = {
            **defaults["server_settings"],
            **user_args["server_settings"],
        }
    return connect_args
