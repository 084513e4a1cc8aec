"""``toxiproxy-python`` aimed at one server, without touching that library's classes.

toxiproxy-python 0.1.1 keeps the API address in class attributes of ``APIConsumer`` (one
server per process) and sends its requests without a timeout. Rather than rewriting those
attributes (which needs a process-wide lock held for as long as the objects live), this loads
a private copy of its ``api``, ``proxy`` and ``server`` modules per (address, timeout): the
copy's ``APIConsumer`` points at that server, and its ``requests`` calls carry the timeout.
The library's exceptions and helpers are shared, so ``except toxiproxy.exceptions.NotFound``
works as usual. Objects from different copies can be used at the same time, from any thread.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
import threading
import types
from typing import Any

from resilient_db._errors import ConfigurationError

__all__ = ["legacy_toxiproxy"]

_cache: dict[tuple[str, int, float], Any] = {}
_cache_lock = threading.Lock()  # held only while a copy is built, never across user code
_numbers = itertools.count(1)


class _Requests:
    """``requests`` as the copied modules see it: the same calls, with a default timeout."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def _call(self, method: str, **kwargs: Any) -> Any:
        import requests

        kwargs.setdefault("timeout", self.timeout)
        return getattr(requests, method)(**kwargs)

    def get(self, **kwargs: Any) -> Any:
        return self._call("get", **kwargs)

    def post(self, **kwargs: Any) -> Any:
        return self._call("post", **kwargs)

    def delete(self, **kwargs: Any) -> Any:
        return self._call("delete", **kwargs)


def _copy(host: str, port: int, timeout: float) -> Any:
    try:
        import toxiproxy
        import toxiproxy.api
        import toxiproxy.exceptions
        import toxiproxy.proxy
        import toxiproxy.server
        import toxiproxy.toxic
        import toxiproxy.utils
    except ImportError as exc:
        raise ConfigurationError(
            "toxiproxy-python is not installed; pip install 'resilient-db[chaos]'"
        ) from exc
    name = f"_resilient_db_toxiproxy_{next(_numbers)}"
    package = types.ModuleType(name)
    package.__path__ = list(toxiproxy.__path__)
    sys.modules[name] = package
    for shared in (toxiproxy.exceptions, toxiproxy.utils, toxiproxy.toxic):
        sys.modules[f"{name}.{shared.__name__.rpartition('.')[2]}"] = shared
    copies: dict[str, types.ModuleType] = {}
    for sub, original in (
        ("api", toxiproxy.api),
        ("proxy", toxiproxy.proxy),
        ("server", toxiproxy.server),
    ):
        spec = importlib.util.spec_from_file_location(f"{name}.{sub}", original.__file__)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        copies[sub] = module
    api: Any = copies["api"]
    api.APIConsumer.host, api.APIConsumer.port = host, port  # the private copy's class
    api.requests = _Requests(timeout)
    return copies["server"].Toxiproxy


def legacy_toxiproxy(host: str, port: int, timeout: float) -> Any:
    """A ``Toxiproxy`` object (toxiproxy-python's API) for the server at ``host:port``."""
    key = (host, port, timeout)
    with _cache_lock:
        cls = _cache.get(key)
        if cls is None:
            cls = _cache[key] = _copy(host, port, timeout)
    return cls()
