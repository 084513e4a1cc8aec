"""The errors of the test tooling: a cluster that failed, and a bad argument to one."""

from __future__ import annotations

from collections.abc import Callable

from resilient_db._errors import ConfigurationError, ResilientDBError

__all__ = ["PgClusterConfigError", "PgClusterError", "checked"]


class PgClusterError(ResilientDBError):
    """A private test cluster could not be created, started, stopped or queried in time.

    The message says what was attempted and ends with the tail of the server log.
    """


class PgClusterConfigError(PgClusterError, ConfigurationError):
    """A bad argument to a :class:`PgCluster` method (``Owner(name=value) must be ...``)."""


def checked(check: Callable[[], object]) -> None:
    """Run a ``resilient_db._validate`` check; its error becomes a PgClusterConfigError."""
    try:
        check()
    except ConfigurationError as exc:
        raise PgClusterConfigError(str(exc)) from None
