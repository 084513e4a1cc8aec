"""An embedded Toxiproxy-compatible fault proxy, a client for it, and fault helpers.

The server speaks the HTTP API of Shopify's Toxiproxy 2.12 (so ``toxiproxy-python`` and the
real server's clients work against it) and applies the same toxics to TCP connections. It has
**no authentication** and binds to loopback by default.

Start it in-process (``async with ToxiproxyServer(port=0) as server``), in a background thread
for synchronous code (``with ToxiproxyServer.in_thread() as server``) or from the command line
(``resilient-db toxiproxy --host 127.0.0.1 --port 8474 --config proxies.json``).
The server runs on asyncio (under anyio, use the asyncio backend).

By default it behaves as the reference for every input the reference handles without crashing
or wedging its process, stalls included (``bandwidth`` ``rate`` 0 holds the stream until the
toxic is removed). Input that crashes the reference gets a 400 naming the attribute and its
range (``slicer`` ``average_size`` <= 0, ``size_variation`` outside 0..``average_size``).
``strict=True`` (``--strict`` on the command line, ``--toxiproxy-strict`` in the pytest
plugin) also rejects likely mistakes with a 400; the list is :data:`STRICT_CHECKS`.

Where it differs from the reference, on purpose:

* A proxy created without ``listen`` binds ``127.0.0.1:0`` (loopback, ephemeral port).
* ``slicer`` delays shorter than the event loop's timer resolution (1 ms) are batched: the
  pieces keep their sizes and order and the pacing over a chunk is the same, but pieces due
  within the same millisecond leave together.

For a PostgreSQL URL, :class:`ToxiproxyPostgres` (the pytest plugin's ``toxiproxy_postgres``
fixture returns one) gives the proxied URL as ``.url`` and fault helpers::

    db = ToxiproxyPostgres.create(client, "postgresql+asyncpg://app@127.0.0.1:5432/app")
    engine = create_async_engine(db.url)
    with db.latency(200):
        ...
"""

from __future__ import annotations

from resilient_db.toxiproxy._api import VERSION
from resilient_db.toxiproxy._base import ProxyInfo, ToxicInfo, ToxiproxyAPIError
from resilient_db.toxiproxy._client import AsyncToxiproxyClient, ToxiproxyClient
from resilient_db.toxiproxy._postgres import ToxiproxyPostgres
from resilient_db.toxiproxy._server import ThreadedToxiproxyServer, ToxiproxyServer
from resilient_db.toxiproxy._toxics import STRICT_CHECKS, TOXIC_TYPES

__all__ = [
    "STRICT_CHECKS",
    "TOXIC_TYPES",
    "VERSION",
    "AsyncToxiproxyClient",
    "ProxyInfo",
    "ThreadedToxiproxyServer",
    "ToxicInfo",
    "ToxiproxyAPIError",
    "ToxiproxyClient",
    "ToxiproxyPostgres",
    "ToxiproxyServer",
]
