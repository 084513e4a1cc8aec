"""An embedded Toxiproxy-compatible fault proxy, a client for it, and fault helpers.

The server speaks the HTTP API of Shopify's Toxiproxy 2.12 (so ``toxiproxy-python`` and the
real server's clients work against it) and applies the same toxics to TCP connections. It has
**no authentication** and binds to loopback by default.

Start it in-process (``async with ToxiproxyServer(port=0) as server``), in a background thread
for synchronous code (``with ToxiproxyServer.in_thread() as server``) or from the command line
(``resilient-db toxiproxy --host 127.0.0.1 --port 8474 --config proxies.json``).
The server runs on asyncio (under anyio, use the asyncio backend).

Where it differs from the reference, on purpose:

* ``reset_peer`` always ends with a TCP RST (``SO_LINGER`` 0) on both the client and the
  upstream socket, also on connections that were open before the toxic was added (the
  reference sends a plain FIN to those). An idle connection is never reset.
* Input that stalls or crashes the reference gets a 400 naming the attribute and its allowed
  range: ``slicer`` ``average_size`` 0 or ``size_variation`` > ``average_size``,
  ``bandwidth`` ``rate`` <= 0, negative or non-integer attributes, unknown attribute names,
  ``toxicity`` outside 0..1, malformed ``listen``/``upstream`` addresses, duplicate names in
  a populate array.
* A proxy created without ``listen`` binds ``127.0.0.1:0`` (loopback, ephemeral port).
"""

from __future__ import annotations

from resilient_db.toxiproxy._client import (
    AsyncToxiproxyClient,
    ProxyInfo,
    ToxicInfo,
    ToxiproxyAPIError,
    ToxiproxyClient,
)
from resilient_db.toxiproxy._server import VERSION, ThreadedToxiproxyServer, ToxiproxyServer
from resilient_db.toxiproxy._toxics import TOXIC_TYPES

__all__ = [
    "TOXIC_TYPES",
    "VERSION",
    "AsyncToxiproxyClient",
    "ProxyInfo",
    "ThreadedToxiproxyServer",
    "ToxicInfo",
    "ToxiproxyAPIError",
    "ToxiproxyClient",
    "ToxiproxyServer",
]
