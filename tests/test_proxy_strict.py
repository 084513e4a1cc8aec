"""Input that crashes the reference (a 400 in every mode) and the embedded server's strict mode.

Embedded only: the reference would crash on the first kind, and has no strict mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from resilient_db.toxiproxy import STRICT_CHECKS, ToxiproxyServer
from tests._toxiproxy_support import call


@pytest.fixture
def embedded_api() -> Iterator[str]:
    with ToxiproxyServer.in_thread() as server:
        yield server.url


@pytest.fixture
def strict_api() -> Iterator[str]:
    with ToxiproxyServer.in_thread(strict=True) as server:
        yield server.url


def _create(api: str, name: str, upstream: str = "127.0.0.1:9") -> None:
    body = {"name": name, "listen": "127.0.0.1:0", "upstream": upstream}
    status, answer = call(api, "POST", "/proxies", body)
    assert status == 201, answer


def test_strict_checks_are_documented() -> None:
    assert len(STRICT_CHECKS) == 7
    assert any("bandwidth" in check for check in STRICT_CHECKS)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        # these crash the reference's whole server: a 400 in every mode
        ({"type": "slicer", "attributes": {"average_size": 0}}, "'average_size' must be >= 1"),
        ({"type": "slicer"}, "average_size"),
        (
            {"type": "slicer", "attributes": {"average_size": 5, "size_variation": 6}},
            "'size_variation' must be between 0 and 'average_size' (5)",
        ),
        (
            {"type": "slicer", "attributes": {"average_size": 5, "size_variation": -1}},
            "size_variation",
        ),
        # a known field of the wrong JSON type: a 400 in the reference too
        ({"type": "latency", "attributes": {"latency": 1.5}}, "integer"),
        ({"type": "latency", "attributes": {"latency": "10"}}, "integer"),
        ({"type": "latency", "attributes": {"latency": True}}, "integer"),
        ({"type": "latency", "attributes": []}, "attributes"),
        ({"type": "noop", "toxicity": "x"}, "toxicity"),
        ({"type": "noop", "stream": 5}, "stream"),
    ],
)
@pytest.mark.parametrize("mode", ["default", "strict"])
def test_bad_toxic_input_is_400(mode: str, body: dict[str, Any], fragment: str) -> None:
    with ToxiproxyServer.in_thread(strict=mode == "strict") as server:
        _create(server.url, "p")
        status, answer = call(server.url, "POST", "/proxies/p/toxics", body)
        assert status == 400, answer
        assert fragment in answer["error"]
        assert answer["status"] == 400
        assert call(server.url, "GET", "/proxies/p/toxics") == (200, [])


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"type": "bandwidth", "attributes": {"rate": 0}}, "rate"),
        ({"type": "bandwidth"}, "rate"),
        ({"type": "latency", "attributes": {"latency": -1}}, "latency"),
        ({"type": "latency", "attributes": {"delay": 10}}, "allowed: latency, jitter"),
        ({"type": "noop", "toxicity": 2}, "toxicity"),
        ({"type": "noop", "toxicity": -0.5}, "toxicity"),
        ({"type": "limit_data", "attributes": {"bytes": -5}}, "bytes"),
        ({"type": "noop", "stream": "UPSTREAM"}, "stream"),
    ],
)
def test_strict_mode_rejects_likely_mistakes(
    strict_api: str, body: dict[str, Any], fragment: str
) -> None:
    _create(strict_api, "p")
    status, answer = call(strict_api, "POST", "/proxies/p/toxics", body)
    assert status == 400, answer
    assert fragment in answer["error"]
    assert call(strict_api, "GET", "/proxies/p/toxics") == (200, [])


def test_bad_toxic_update_is_400(embedded_api: str) -> None:
    _create(embedded_api, "p")
    call(
        embedded_api,
        "POST",
        "/proxies/p/toxics",
        {"type": "slicer", "attributes": {"average_size": 5}},
    )
    status, answer = call(
        embedded_api,
        "PATCH",
        "/proxies/p/toxics/slicer_downstream",
        {"attributes": {"average_size": 0}},
    )
    assert status == 400
    assert "average_size" in answer["error"]
    status, toxic = call(embedded_api, "GET", "/proxies/p/toxics/slicer_downstream")
    assert toxic["attributes"]["average_size"] == 5  # unchanged


def test_strict_mode_rejects_bad_addresses_and_duplicates(strict_api: str) -> None:
    status, body = call(strict_api, "POST", "/proxies", {"name": "a", "upstream": "nohost"})
    assert status == 400
    assert "upstream" in body["error"]
    status, body = call(
        strict_api,
        "POST",
        "/proxies",
        {"name": "a", "upstream": "h:1", "listen": "127.0.0.1:99999"},
    )
    assert status == 400
    assert "listen" in body["error"]
    twice = {"name": "d", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"}
    status, body = call(strict_api, "POST", "/populate", [twice, twice])
    assert status == 400
    assert "duplicate" in body["error"]
    assert body["proxies"] is None
    assert call(strict_api, "GET", "/proxies") == (200, {})
