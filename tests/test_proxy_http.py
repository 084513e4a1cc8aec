"""The API's HTTP layer: malformed framing, bounded heads, idle timeouts, the browser 403.

Runs against the embedded server, and against a real Toxiproxy when ``--toxiproxy-url`` or
``TOXIPROXY_URL`` is given (the idle-timeout test is embedded only: the reference has none).
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import time

import pytest

from resilient_db.toxiproxy import ToxiproxyServer
from resilient_db.toxiproxy._api import Api
from resilient_db.toxiproxy._http import Request

_POST = b"POST /proxies HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def _address(api: str) -> tuple[str, int]:
    host, _, port = api.removeprefix("http://").partition(":")
    return host, int(port)


def _raw(api: str, data: bytes) -> bytes:
    """Send raw bytes, read the answer until the server closes (bounded)."""
    with socket.create_connection(_address(api), timeout=10) as sock:
        # the server may answer and close before reading everything
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        answer = bytearray()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
        return bytes(answer)


def _status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1."), answer[:200]
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (_POST + b"Content-Length: abc\r\n\r\n{}", 400),
        (_POST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n{}", 400),
        (_POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400),
        (b"GET /version HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400),
        (b"GET /version HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 21) + b"\r\n\r\n", 431),
        (
            b"GET /version HTTP/1.1\r\nHost: x\r\nUser-Agent: Mozilla/5.0 (X11)\r\n"
            b"Connection: close\r\n\r\n",
            403,
        ),
    ],
    ids=[
        "bad-content-length",
        "two-lengths",
        "bad-chunk-size",
        "no-colon",
        "big-header",
        "browser",
    ],
)
def test_malformed_http_gets_the_right_status(api: str, data: bytes, status: int) -> None:
    host, port = _address(api)
    other = http.client.HTTPConnection(host, port, timeout=10)  # another client, kept alive
    try:
        other.request("GET", "/version")
        assert other.getresponse().read()
        assert _status(_raw(api, data)) == status
        other.request("GET", "/version")  # the server still serves the other client
        response = other.getresponse()
        assert response.status == 200
        response.read()
    finally:
        other.close()
    fresh = http.client.HTTPConnection(host, port, timeout=10)
    try:
        fresh.request("GET", "/proxies")
        assert fresh.getresponse().status == 200
    finally:
        fresh.close()


def test_chunked_body_is_accepted(api: str) -> None:
    body = b'{"name": "rdb_http_chunked", "upstream": "127.0.0.1:9", "listen": "127.0.0.1:0"}'
    data = _POST + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    data += f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    try:
        assert _status(_raw(api, data)) == 201
    finally:
        _raw(
            api,
            b"DELETE /proxies/rdb_http_chunked HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )


def test_idle_keep_alive_connections_are_closed() -> None:
    with ToxiproxyServer.in_thread(idle_timeout=0.3) as server:
        host, port = _address(server.url)
        with socket.create_connection((host, port), timeout=10) as idle:
            idle.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
            first = idle.recv(65536)
            assert _status(first) == 200
            start = time.monotonic()
            assert idle.recv(10) == b""  # closed by the server after the idle timeout
            assert time.monotonic() - start < 5
        with socket.create_connection((host, port), timeout=10) as half:
            half.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n")  # never finished
            assert half.recv(10) == b""


async def test_api_is_a_function_from_request_to_response() -> None:
    import random

    api = Api(rng=random.Random(1))
    response = await api(Request("GET", "/version"))
    assert (response.status, response.content_type) == (200, "application/json")
    response = await api(Request("PUT", "/version"))
    assert (response.status, response.body) == (405, b"")
    response = await api(Request("GET", "/proxies/nope"))
    assert response.status == 404
    assert response.content_type == "text/plain; charset=utf-8"
    response = await api(Request("POST", "/proxies", {"user-agent": "Mozilla/5.0"}, b"{}"))
    assert response.status == 403
