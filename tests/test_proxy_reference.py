"""Contract tests of the reference's behaviour where the embedded server used to differ.

Each test runs against the embedded server (default mode) and, when ``--toxiproxy-url`` or
``TOXIPROXY_URL`` names a real Toxiproxy on this machine, against it too (marker
``toxiproxy_external``). The expectations are those of ``shared/toxiproxy-api.md``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from resilient_db.toxiproxy import AsyncToxiproxyClient
from tests._toxiproxy_support import (
    Upstream,
    call,
    connect,
    create_proxy,
    exchange,
    listen_port,
    read_exactly,
    wait_for,
)


@pytest.fixture
def name(api: str) -> Iterator[str]:
    value = f"rdb_ref_{secrets.token_hex(4)}"
    yield value
    for suffix in ("", "_b"):
        call(api, "DELETE", f"/proxies/{value}{suffix}")


@pytest.fixture
async def echo() -> AsyncIterator[Upstream]:
    async with Upstream() as upstream:
        yield upstream


def _toxic(api: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
    status, toxic = call(api, "POST", f"/proxies/{name}/toxics", body)
    assert status == 200, toxic
    assert isinstance(toxic, dict)
    return toxic


# -- input the reference accepts ----------------------------------------------------------


def test_lenient_toxic_input_is_accepted_as_the_reference(api: str, name: str) -> None:
    create_proxy(api, name)
    toxic = _toxic(api, name, {"type": "noop", "stream": "UPSTREAM"})
    assert (toxic["stream"], toxic["name"]) == ("UPSTREAM", "noop_UPSTREAM")  # echoed as sent
    toxic = _toxic(api, name, {"type": "noop", "name": "seven", "toxicity": 7})
    assert toxic["toxicity"] == 7
    toxic = _toxic(api, name, {"type": "noop", "name": "minus", "toxicity": -1})
    assert toxic["toxicity"] == -1
    toxic = _toxic(api, name, {"type": "latency", "attributes": {"latency": -5, "what": 3}})
    assert toxic["attributes"] == {"latency": -5, "jitter": 0}  # unknown key ignored
    toxic = _toxic(api, name, {"type": "bandwidth", "attributes": {"rate": 0}})
    assert toxic["attributes"] == {"rate": 0}
    status, listed = call(api, "GET", f"/proxies/{name}/toxics")
    assert status == 200
    assert len(listed) == 5


def test_unparsable_upstream_is_accepted_and_dialled_per_connection(api: str, name: str) -> None:
    proxy = create_proxy(api, name, upstream="not an address")
    assert proxy["upstream"] == "not an address"
    with socket.create_connection(("127.0.0.1", listen_port(proxy)), timeout=5) as sock:
        assert sock.recv(10) == b""  # connect succeeded, then EOF (not refused)


def test_listen_that_cannot_be_bound_is_a_500(api: str, name: str) -> None:
    body = {"name": name, "listen": "127.0.0.1:99999", "upstream": "127.0.0.1:9"}
    status, answer = call(api, "POST", "/proxies", body)
    assert status == 500, answer
    assert answer["status"] == 500
    assert call(api, "GET", f"/proxies/{name}")[0] == 404  # nothing created


def test_duplicate_names_in_one_populate(api: str, name: str) -> None:
    item = {"name": name, "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"}
    status, body = call(api, "POST", "/populate", [item, {**item, "upstream": "127.0.0.1:10"}])
    assert status == 201, body
    assert [p["name"] for p in body["proxies"]] == [name, name]
    status, proxy = call(api, "GET", f"/proxies/{name}")
    assert (status, proxy["upstream"]) == (200, "127.0.0.1:10")  # the last one wins


async def test_bandwidth_rate_zero_stalls_until_removed(
    api: str, name: str, echo: Upstream
) -> None:
    proxy = create_proxy(api, name, upstream=echo.address)
    _toxic(api, name, {"type": "bandwidth", "attributes": {"rate": 0}})
    async with connect(listen_port(proxy)) as (reader, writer):
        writer.write(b"ping")
        with pytest.raises(TimeoutError):
            await read_exactly(reader, 4, timeout=0.5)  # stalled
        assert call(api, "DELETE", f"/proxies/{name}/toxics/bandwidth_downstream")[0] == 204
        assert await read_exactly(reader, 4) == b"ping"  # flows once the toxic is gone


async def test_toxicity_outside_range_acts_as_bounds(api: str, name: str, echo: Upstream) -> None:
    proxy = create_proxy(api, name, upstream=echo.address)
    _toxic(api, name, {"type": "timeout", "name": "never", "toxicity": -1})  # acts as 0
    _toxic(api, name, {"type": "latency", "toxicity": 7, "attributes": {"latency": -50}})
    async with connect(listen_port(proxy)) as (reader, writer):
        writer.write(b"ping")
        assert await read_exactly(reader, 4) == b"ping"


# -- bodies, content types, status codes ---------------------------------------------------


def test_error_bodies_are_json_served_as_text(api: str) -> None:
    status, headers, data = exchange(api, "GET", "/proxies/rdb_ref_missing")
    assert status == 404
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert json.loads(data) == {"error": "proxy not found", "status": 404}
    status, headers, data = exchange(api, "GET", "/version")
    assert status == 200
    assert headers["Content-Type"] == "application/json"


def test_populate_answers(api: str, name: str) -> None:
    status, headers, data = exchange(api, "POST", "/populate", [])
    assert (status, json.loads(data)) == (201, {"proxies": None})
    assert headers["Content-Type"] == "application/json"
    status, headers, data = exchange(api, "POST", "/populate", [{"upstream": "127.0.0.1:9"}])
    assert status == 400
    assert headers["Content-Type"] == "application/json"
    body = json.loads(data)
    assert body == {
        "error": "missing required field: name at proxy 1",
        "status": 400,
        "proxies": None,
    }


def test_failed_listen_change_leaves_the_proxy_disabled_at_the_new_address(
    api: str, name: str
) -> None:
    first = create_proxy(api, name)
    other = create_proxy(api, f"{name}_b")
    status, body = call(api, "PATCH", f"/proxies/{name}", {"listen": other["listen"]})
    assert status == 500, body
    status, proxy = call(api, "GET", f"/proxies/{name}")
    assert status == 200
    assert proxy["enabled"] is False
    assert proxy["listen"] == other["listen"]
    with socket.socket() as sock:
        sock.settimeout(5)
        assert sock.connect_ex(("127.0.0.1", listen_port(first))) != 0  # the old port is closed


def test_browser_user_agent_is_refused(api: str, name: str) -> None:
    body = {"name": name, "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"}
    browser = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0"}
    status, _, data = exchange(api, "POST", "/proxies", body, headers=browser)
    assert status == 403
    assert data.decode().strip() == "User agent not allowed"
    assert call(api, "GET", f"/proxies/{name}")[0] == 404  # nothing created


# -- reset_peer: RST for connections accepted under the toxic, FIN for older ones ------------


async def test_reset_peer_added_to_an_open_connection_sends_fin(
    api: str, name: str, echo: Upstream
) -> None:
    proxy = create_proxy(api, name, upstream=echo.address)
    async with connect(listen_port(proxy)) as (reader, writer):
        writer.write(b"ping")
        assert await read_exactly(reader, 4) == b"ping"
        _toxic(api, name, {"type": "reset_peer", "attributes": {"timeout": 0}})
        writer.write(b"pong")
        async with asyncio.timeout(5):
            assert await reader.read(10) == b""  # a plain FIN: EOF, no ECONNRESET

    async with connect(listen_port(proxy)) as (reader, writer):  # accepted with the toxic in place
        writer.write(b"ping")
        with pytest.raises(ConnectionResetError):
            async with asyncio.timeout(5):
                await reader.read(10)


async def test_concurrent_api_calls_from_20_tasks(api: str, name: str) -> None:
    create_proxy(api, name)
    client = AsyncToxiproxyClient(api, timeout=10)

    async def one(i: int) -> None:
        async with client.toxic(name, type="noop", name=f"n{i}") as toxic:
            assert (await client.get_toxic(name, toxic.name)).name == f"n{i}"

    async with asyncio.timeout(60):
        await asyncio.gather(*(one(i) for i in range(20)))
    await wait_for(lambda: call(api, "GET", f"/proxies/{name}/toxics") == (200, []))
