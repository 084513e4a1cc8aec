"""How a chaos run is configured, and the safety rules it enforces before touching anything."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import Any, Literal

from sqlalchemy.engine import make_url

from resilient_db._errors import ConfigurationError

__all__ = ["DEFAULT_URL", "Settings", "check_loopback", "redact"]

DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
Driver = Literal["asyncpg", "psycopg"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    """How the engine runs. Times in seconds; ``rate`` is per worker (ops/s)."""

    url: str = DEFAULT_URL
    #: ``None``: the URL's driver.
    driver: Driver | None = None
    toxiproxy_url: str | None = None
    proxy_name: str = "postgres"
    concurrency: int = 8
    rate: float = 25.0
    seed: int = 1
    before: float = 2.0
    during: float = 5.0
    after: float = 5.0
    deadline: float = 3.0
    allowance: float = 2.0
    drain: float = 10.0
    leak_wait: float = 10.0
    allow_remote: bool = False
    fail_fast: bool = False
    #: Fleet scenarios: worker processes (``None``: the scenario's own number).
    processes: int | None = None
    #: ``module:factory`` of the workload (needed by fleet scenarios: workers import it).
    workload_spec: str | None = None

    def __post_init__(self) -> None:
        for name in ("before", "during", "after", "deadline", "allowance", "rate"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value <= 0:
                raise ConfigurationError(f"{name} must be a number of seconds > 0, got {value!r}")
        if not 1 <= self.concurrency <= 200:
            raise ConfigurationError(f"concurrency must be in 1..200, got {self.concurrency!r}")
        if self.driver not in (None, "asyncpg", "psycopg"):
            raise ConfigurationError(f"driver must be asyncpg or psycopg, got {self.driver!r}")
        if self.processes is not None and not 1 <= self.processes <= 32:
            raise ConfigurationError(f"processes must be in 1..32, got {self.processes!r}")

    @classmethod
    def quick(cls, **overrides: Any) -> Settings:
        """Short phases for CI (``during`` still outlasts the deadline)."""
        return cls(**{"before": 0.5, "during": 3.2, "after": 3.0, **overrides})

    @property
    def database_url(self) -> str:
        """:attr:`url` with :attr:`driver` applied."""
        if self.driver is None:
            return self.url
        url = make_url(self.url).set(drivername=f"postgresql+{self.driver}")
        return url.render_as_string(hide_password=False)

    @property
    def driver_name(self) -> str:
        """The driver in use (``asyncpg`` or ``psycopg``)."""
        return make_url(self.database_url).get_driver_name()

    def with_(self, **changes: Any) -> Settings:
        """A copy with ``changes``."""
        return replace(self, **changes)


def _loopback(host: str) -> bool:
    if not host or host.startswith("/") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_part(hostport: str) -> str:
    if hostport.startswith("["):  # [v6]:port
        return hostport[1:].split("]", 1)[0]
    return hostport.rsplit(":", 1)[0] if hostport.count(":") == 1 else hostport


def check_loopback(url: str, *, allow_remote: bool) -> None:
    """Refuse a database host that is not loopback (unless ``allow_remote``)."""
    if allow_remote:
        return
    u = make_url(url)
    hosts = [u.host or ""]
    extra = u.query.get("host")
    hosts += [extra] if isinstance(extra, str) else list(extra or ())
    for h in hosts:
        name = _host_part(h)
        if not _loopback(name):
            raise ConfigurationError(
                f"refusing to inject faults against {name!r}: not a loopback host. The chaos "
                "engine creates tables and kills sessions; pass --allow-remote (or "
                "allow_remote=True) if this database is yours to break"
            )


def redact(url: str) -> str:
    """``url`` with its password masked (safe to print)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable URL>"
