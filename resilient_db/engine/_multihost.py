"""Multi-host connects: one host at a time, each with its own connect timeout, last good first.

Both drivers take a host list, but they spend the connect timeout differently: asyncpg
bounds the *whole* list by one ``timeout``, so a silent first host (a crashed machine whose
packets are dropped, the usual failover) uses it all and the promoted standby further down
the list is never tried; libpq spends ``connect_timeout`` on each host, in order, on every
new connection. The engine's ``do_connect`` listener (SQLAlchemy's public hook) therefore
connects to one host at a time through the dialect, with the driver's own checks
(``target_session_attrs``) and timeout per host, starting with the host that last accepted
a connection. After a failover only the first new connection pays for the dead host.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["host_list", "install_multihost_connect"]

logger = logging.getLogger("resilient_db")


def host_list(driver: str, cparams: dict[str, Any]) -> list[tuple[str, Any]]:
    """The (host, port) pairs of a multi-host connect (empty for a single host)."""
    host, port = cparams.get("host"), cparams.get("port")
    if driver == "asyncpg":
        if isinstance(host, list) and isinstance(port, list) and len(host) == len(port) > 1:
            return list(zip(host, port, strict=True))
        return []
    if isinstance(host, str) and "," in host:  # psycopg: libpq's comma lists
        hosts = host.split(",")
        ports = str(port).split(",") if port is not None else ["5432"] * len(hosts)
        if len(ports) == len(hosts):
            return list(zip(hosts, ports, strict=True))
    return []


def install_multihost_connect(engine: AsyncEngine) -> None:
    """Connect ``engine``'s new connections host by host (no-op for a single-host URL)."""
    sync = engine.sync_engine
    driver = sync.dialect.driver
    preferred: list[tuple[str, Any]] = []  # the host that last accepted a connection

    def do_connect(dialect: Dialect, record: Any, cargs: list[Any], cparams: dict[str, Any]) -> Any:
        hosts = host_list(driver, cparams)
        if not hosts:
            return None  # let the dialect connect as usual
        order = preferred + [h for h in hosts if h not in preferred]
        last: BaseException | None = None
        tried: list[str] = []
        for host, port in order:
            try:
                connection = dialect.connect(*cargs, **{**cparams, "host": host, "port": port})
            except Exception as exc:  # this host cannot serve us: try the next one
                logger.info(
                    "engine.host_skipped",
                    extra={"host": f"{host}:{port}", "error_type": type(exc).__qualname__},
                )
                tried.append(f"{host}:{port} {type(exc).__name__}")
                last = exc
                continue
            if preferred != [(host, port)]:
                if preferred:
                    old_host, old_port = preferred[0]
                    logger.warning(
                        "engine.host_changed",
                        extra={"host": f"{host}:{port}", "previous": f"{old_host}:{old_port}"},
                    )
                preferred[:] = [(host, port)]
            return connection
        assert last is not None
        last.add_note(f"resilient_db: no listed host accepted the connection ({'; '.join(tried)})")
        raise last

    event.listen(sync, "do_connect", do_connect)
