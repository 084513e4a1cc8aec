"""Contract tests of the Toxiproxy HTTP API (every endpoint, status and error body).

The same tests run against the embedded server and, when ``TOXIPROXY_URL`` is set, against an
external Toxiproxy (marker ``toxiproxy_external``). Tests of input that crashes the reference,
and of the embedded server's strict mode, run against the embedded server only.
"""

from __future__ import annotations

import errno
import http.client
import secrets
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from resilient_db.toxiproxy import ToxiproxyAPIError, ToxiproxyClient, ToxiproxyServer
from tests._toxiproxy_support import call, create_proxy, exchange, listen_port


@pytest.fixture
def embedded_api() -> Iterator[str]:
    with ToxiproxyServer.in_thread() as server:
        yield server.url


@pytest.fixture
def name(api: str) -> Iterator[str]:
    """A unique proxy name, deleted after the test."""
    value = f"rdb_contract_{secrets.token_hex(4)}"
    yield value
    call(api, "DELETE", f"/proxies/{value}")


def _connect_errno(port: int) -> int:
    with socket.socket() as sock:
        sock.settimeout(5)
        return sock.connect_ex(("127.0.0.1", port))


def test_version(api: str) -> None:
    status, body = call(api, "GET", "/version")
    assert status == 200
    assert isinstance(body["version"], str)
    assert body["version"]


def test_create_show_list_delete(api: str, name: str) -> None:
    proxy = create_proxy(api, name)
    assert proxy["name"] == name
    assert proxy["upstream"] == "127.0.0.1:9"
    assert proxy["enabled"] is True
    assert proxy["toxics"] == []
    port = listen_port(proxy)
    assert port != 0
    assert _connect_errno(port) == 0  # already accepting

    status, shown = call(api, "GET", f"/proxies/{name}")
    assert (status, shown) == (200, proxy)
    status, index = call(api, "GET", "/proxies")
    assert status == 200
    assert index[name] == proxy

    status, body = call(api, "DELETE", f"/proxies/{name}")
    assert (status, body) == (204, None)
    assert _connect_errno(port) == errno.ECONNREFUSED  # port released
    status, body = call(api, "GET", f"/proxies/{name}")
    assert status == 404
    assert body == {"error": "proxy not found", "status": 404}
    status, body = call(api, "DELETE", f"/proxies/{name}")
    assert status == 404
    assert body["error"] == "proxy not found"


def test_empty_index_is_an_object(embedded_api: str) -> None:
    assert call(embedded_api, "GET", "/proxies") == (200, {})


def test_create_errors(api: str, name: str) -> None:
    status, body = call(api, "POST", "/proxies", {"upstream": "127.0.0.1:9"})
    assert (status, body["status"]) == (400, 400)
    assert body["error"] == "missing required field: name"
    status, body = call(api, "POST", "/proxies", {"name": name})
    assert (status, body["error"]) == (400, "missing required field: upstream")
    status, body = call(api, "POST", "/proxies", raw=b"{not json")
    assert status == 400
    assert body["error"].startswith("bad request body")
    status, body = call(api, "POST", "/proxies", {"name": 5, "upstream": "127.0.0.1:9"})
    assert status == 400  # a known field of the wrong JSON type

    proxy = create_proxy(api, name)
    status, body = call(
        api, "POST", "/proxies", {"name": name, "upstream": "127.0.0.1:9", "listen": "127.0.0.1:0"}
    )
    assert (status, body) == (409, {"error": "proxy already exists", "status": 409})

    # the listen address is taken: 500, nothing created
    other = f"{name}_b"
    status, body = call(
        api,
        "POST",
        "/proxies",
        {"name": other, "upstream": "127.0.0.1:9", "listen": proxy["listen"]},
    )
    assert status == 500
    assert body["status"] == 500
    assert body["error"]
    assert call(api, "GET", f"/proxies/{other}")[0] == 404


def test_create_disabled_and_unknown_fields_ignored(api: str, name: str) -> None:
    proxy = create_proxy(api, name, enabled=False, whatever={"x": 1})
    assert proxy["enabled"] is False


def test_disable_enable_same_port(api: str, name: str) -> None:
    proxy = create_proxy(api, name)
    port = listen_port(proxy)
    status, body = call(api, "PATCH", f"/proxies/{name}", {"enabled": False})
    assert status == 200
    assert body["enabled"] is False
    assert _connect_errno(port) == errno.ECONNREFUSED
    status, body = call(api, "POST", f"/proxies/{name}", {"enabled": True})  # POST also updates
    assert status == 200
    assert body["enabled"] is True
    assert listen_port(body) == port
    assert _connect_errno(port) == 0


def test_update_upstream_and_listen(api: str, name: str) -> None:
    proxy = create_proxy(api, name)
    status, body = call(api, "PATCH", f"/proxies/{name}", {"upstream": "127.0.0.1:10"})
    assert status == 200
    assert body["upstream"] == "127.0.0.1:10"
    assert body["listen"] == proxy["listen"]
    status, body = call(api, "PATCH", f"/proxies/{name}", {"listen": "127.0.0.1:0"})
    assert status == 200
    assert body["upstream"] == "127.0.0.1:10"
    assert listen_port(body) != 0
    assert _connect_errno(listen_port(body)) == 0


def test_update_errors(api: str, name: str) -> None:
    status, body = call(api, "PATCH", "/proxies/rdb_nope_nope", {"enabled": False})
    assert (status, body["error"]) == (404, "proxy not found")
    create_proxy(api, name)
    status, body = call(api, "PATCH", f"/proxies/{name}", raw=b"[")
    assert status == 400
    status, body = call(api, "PATCH", f"/proxies/{name}", {"enabled": "no"})
    assert status == 400


def test_toxic_crud(api: str, name: str) -> None:
    create_proxy(api, name)
    base = f"/proxies/{name}/toxics"
    assert call(api, "GET", base) == (200, [])
    status, toxic = call(api, "POST", base, {"type": "latency", "attributes": {"latency": 50}})
    assert status == 200
    assert toxic == {
        "attributes": {"latency": 50, "jitter": 0},
        "name": "latency_downstream",
        "type": "latency",
        "stream": "downstream",
        "toxicity": 1.0,
    }
    status, toxic2 = call(
        api,
        "POST",
        base,
        {
            "type": "slicer",
            "name": "cut",
            "stream": "upstream",
            "toxicity": 0.5,
            "attributes": {"average_size": 10},
        },
    )
    assert status == 200
    assert toxic2["attributes"] == {"average_size": 10, "size_variation": 0, "delay": 0}
    assert toxic2["toxicity"] == 0.5
    status, listed = call(api, "GET", base)
    assert status == 200
    assert {t["name"] for t in listed} == {"latency_downstream", "cut"}
    assert call(api, "GET", f"{base}/cut") == (200, toxic2)
    status, proxy = call(api, "GET", f"/proxies/{name}")
    assert {t["name"] for t in proxy["toxics"]} == {"latency_downstream", "cut"}

    # update merges attributes; name, type and stream cannot change
    status, updated = call(
        api,
        "PATCH",
        f"{base}/latency_downstream",
        {"attributes": {"jitter": 5}, "type": "noop", "stream": "upstream", "name": "x"},
    )
    assert status == 200
    assert updated["attributes"] == {"latency": 50, "jitter": 5}
    assert (updated["name"], updated["type"], updated["stream"]) == (
        "latency_downstream",
        "latency",
        "downstream",
    )
    status, updated = call(api, "POST", f"{base}/cut", {"toxicity": 1.0})
    assert status == 200
    assert updated["toxicity"] == 1.0
    assert updated["attributes"]["average_size"] == 10

    assert call(api, "DELETE", f"{base}/cut") == (204, None)
    status, body = call(api, "DELETE", f"{base}/cut")
    assert (status, body["error"]) == (404, "toxic not found")
    status, body = call(api, "GET", f"{base}/cut")
    assert (status, body) == (404, {"error": "toxic not found", "status": 404})


def test_toxic_errors(api: str, name: str) -> None:
    status, body = call(api, "GET", "/proxies/rdb_nope_nope/toxics")
    assert (status, body["error"]) == (404, "proxy not found")
    status, body = call(api, "POST", "/proxies/rdb_nope_nope/toxics", {"type": "noop"})
    assert (status, body["error"]) == (404, "proxy not found")
    status, body = call(api, "GET", "/proxies/rdb_nope_nope/toxics/x")
    assert (status, body["error"]) == (404, "proxy not found")
    status, body = call(api, "PATCH", "/proxies/rdb_nope_nope/toxics/x", {})
    assert (status, body["error"]) == (404, "proxy not found")
    create_proxy(api, name)
    base = f"/proxies/{name}/toxics"
    status, body = call(api, "POST", base, {"type": "nonsense"})
    assert (status, body) == (400, {"error": "invalid toxic type", "status": 400})
    status, body = call(api, "POST", base, {"attributes": {}})
    assert (status, body["error"]) == (400, "invalid toxic type")
    status, body = call(api, "POST", base, {"type": "noop", "stream": "sideways"})
    assert status == 400
    assert "stream" in body["error"]
    status, body = call(api, "POST", base, raw=b"{")
    assert status == 400
    assert body["error"].startswith("bad request body")
    assert call(api, "POST", base, {"type": "noop"})[0] == 200
    status, body = call(api, "POST", base, {"type": "noop"})
    assert (status, body) == (409, {"error": "toxic already exists", "status": 409})
    # names are unique across both streams
    status, body = call(
        api, "POST", base, {"type": "noop", "name": "noop_downstream", "stream": "upstream"}
    )
    assert status == 409
    status, body = call(api, "PATCH", f"{base}/missing", {"toxicity": 0.5})
    assert (status, body["error"]) == (404, "toxic not found")


def test_reset(api: str, name: str) -> None:
    proxy = create_proxy(api, name)
    call(api, "POST", f"/proxies/{name}/toxics", {"type": "latency", "attributes": {"latency": 1}})
    call(api, "PATCH", f"/proxies/{name}", {"enabled": False})
    assert call(api, "POST", "/reset") == (204, None)
    status, body = call(api, "GET", f"/proxies/{name}")
    assert status == 200  # proxies stay
    assert body["enabled"] is True
    assert body["toxics"] == []
    assert body["listen"] == proxy["listen"]
    assert _connect_errno(listen_port(body)) == 0


def test_populate(api: str, name: str) -> None:
    keep, change = f"{name}", f"{name}_c"
    try:
        status, body = call(
            api,
            "POST",
            "/populate",
            [
                {"name": keep, "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"},
                {"name": change, "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"},
            ],
        )
        assert status == 201, body
        assert [p["name"] for p in body["proxies"]] == [keep, change]
        kept = body["proxies"][0]
        call(api, "POST", f"/proxies/{keep}/toxics", {"type": "noop"})
        call(api, "PATCH", f"/proxies/{keep}", {"enabled": False})

        # same name, listen and upstream: left exactly as it is; other: replaced
        status, body = call(
            api,
            "POST",
            "/populate",
            [
                {"name": keep, "listen": kept["listen"], "upstream": "127.0.0.1:9"},
                {"name": change, "listen": "127.0.0.1:0", "upstream": "127.0.0.1:10"},
            ],
        )
        assert status == 201, body
        by_name = {p["name"]: p for p in body["proxies"]}
        assert by_name[keep]["enabled"] is False
        assert [t["name"] for t in by_name[keep]["toxics"]] == ["noop_downstream"]
        assert by_name[change]["upstream"] == "127.0.0.1:10"

        # 400: validated first, nothing created
        fresh = f"{name}_fresh"
        status, body = call(
            api,
            "POST",
            "/populate",
            [
                {"name": fresh, "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"},
                {"upstream": "x:1"},
            ],
        )
        assert status == 400
        assert "missing required field: name" in body["error"]
        assert call(api, "GET", f"/proxies/{fresh}")[0] == 404
        status, body = call(api, "POST", "/populate", raw=b"{")
        assert status == 400

        # 500 midway: the processed proxies are returned
        taken = by_name[change]["listen"]
        status, body = call(
            api,
            "POST",
            "/populate",
            [
                {"name": fresh, "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"},
                {"name": f"{name}_clash", "listen": taken, "upstream": "127.0.0.1:9"},
            ],
        )
        assert status == 500
        assert [p["name"] for p in body["proxies"]] == [fresh]
        assert call(api, "GET", f"/proxies/{name}_clash")[0] == 404
    finally:
        for n in (change, f"{name}_fresh", f"{name}_clash"):
            call(api, "DELETE", f"/proxies/{n}")


def test_unknown_path_and_wrong_method(api: str) -> None:
    for path in ("/nothing/here", "/proxies/a/toxics/b/c", "/proxies/"):
        status, headers, data = exchange(api, "GET", path)
        assert (status, data) == (404, b"404 page not found\n")  # plain text, as Go's router
        assert headers["Content-Type"] == "text/plain; charset=utf-8"
    for method, path in (("DELETE", "/proxies"), ("PUT", "/version"), ("GET", "/reset")):
        status, _, data = exchange(api, method, path)
        assert (status, data) == (405, b"")  # empty body


def test_keep_alive(api: str) -> None:
    host, _, port = api.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        for _ in range(3):
            conn.request("GET", "/version")
            response = conn.getresponse()
            assert response.status == 200
            response.read()
        conn.request("POST", "/reset")
        response = conn.getresponse()
        assert response.status == 204
        response.read()
        conn.request("GET", "/proxies")
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_toxiproxy_python_client(api: str, name: str) -> None:
    """The reference Python client drives the server (through legacy(), no lock)."""
    from toxiproxy.exceptions import NotFound, ProxyExists

    client = ToxiproxyClient(api)
    with client.legacy() as tp:
        assert tp.running()
        assert b"version" in tp.version()
        proxy = tp.create(upstream="127.0.0.1:9", name=name)
        assert name in tp.proxies()
        with pytest.raises(ProxyExists):
            tp.create(upstream="127.0.0.1:9", name=name)
        proxy.add_toxic(type="latency", attributes={"latency": 10})
        assert set(proxy.toxics()) == {"latency_downstream"}
        proxy.destroy_toxic("latency_downstream")
        assert proxy.toxics() == {}
        with proxy.down():
            assert tp.get_proxy(name).enabled is False
        assert tp.get_proxy(name).enabled is True
        assert tp.reset()
        with pytest.raises(NotFound):
            proxy.destroy_toxic("nope")
        made = tp.populate(
            [{"name": f"{name}_p", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"}]
        )
        assert [p.name for p in made] == [f"{name}_p"]
        tp.destroy(made[0])


def test_client_wrapper(api: str, name: str) -> None:
    client = ToxiproxyClient(api, timeout=5)
    assert client.version()
    info = client.create_proxy(name=name, upstream="127.0.0.1:9")
    assert info.listen_port > 0
    assert info.listen_host == "127.0.0.1"
    assert client.get_proxy(name) == info
    moved = client.set_upstream(name, "127.0.0.1:11")
    assert moved.upstream == "127.0.0.1:11"
    assert moved.listen == info.listen
    with client.toxic(name, type="latency", attributes={"latency": 5}) as toxic:
        assert client.toxics(name) == [toxic]
        updated = client.update_toxic(name, toxic.name, attributes={"latency": 7}, toxicity=0.5)
        assert updated.attributes == {"latency": 7, "jitter": 0}
        assert updated.toxicity == 0.5
    assert client.toxics(name) == []
    with client.down(name):
        assert client.get_proxy(name).enabled is False
    assert client.get_proxy(name).enabled is True
    with pytest.raises(ToxiproxyAPIError) as info_exc:
        client.get_proxy(f"{name}_missing")
    assert info_exc.value.status == 404
    assert info_exc.value.message == "proxy not found"
    with pytest.raises(ToxiproxyAPIError) as info_exc:
        client.create_proxy(name=f"{name}_x", upstream="127.0.0.1:9", listen=info.listen)
    assert info_exc.value.status == 500


def test_client_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = ToxiproxyClient(f"http://127.0.0.1:{port}", timeout=2)
    with pytest.raises(ToxiproxyAPIError) as info:
        client.version()
    assert info.value.status == 0
    assert "cannot reach" in str(info.value)


def test_config_file_populates(tmp_path: Any) -> None:
    path = tmp_path / "proxies.json"
    path.write_text('[{"name": "pg", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:5432"}]')
    with ToxiproxyServer.in_thread(config=path) as server:
        status, body = call(server.url, "GET", "/proxies")
        assert status == 200
        assert body["pg"]["upstream"] == "127.0.0.1:5432"
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "pg"}')
    with pytest.raises(ValueError, match="JSON array"):
        ToxiproxyServer(config=bad)
