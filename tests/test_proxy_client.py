"""The clients: no lock across user code, per-instance address, sync and async twins."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import secrets
import threading
from collections.abc import Iterator

import pytest

from resilient_db.toxiproxy import (
    AsyncToxiproxyClient,
    ToxiproxyAPIError,
    ToxiproxyClient,
    ToxiproxyServer,
)
from resilient_db.toxiproxy._base import _decode


@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    with ToxiproxyServer.in_thread() as server:
        yield server.url


@pytest.fixture
def name(api: str) -> Iterator[str]:
    value = f"rdb_client_{secrets.token_hex(4)}"
    yield value
    with contextlib.suppress(ToxiproxyAPIError):
        ToxiproxyClient(api).delete_proxy(value)


def test_api_calls_inside_legacy_do_not_deadlock(api: str, name: str) -> None:
    client = ToxiproxyClient(api, timeout=5)
    done = threading.Event()
    errors: list[BaseException] = []

    def add(i: int) -> None:
        try:
            client.add_toxic(name, type="noop", name=f"t{i}")
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    def body() -> None:
        with client.legacy() as tp:
            tp.create(upstream="127.0.0.1:9", name=name)
            assert client.get_proxy(name).name == name  # our client inside the block
            with ToxiproxyClient(api).legacy() as nested:  # and a nested legacy()
                assert name in nested.proxies()
            threads = [threading.Thread(target=add, args=(i,)) for i in range(20)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            if len(client.toxics(name)) != 20:
                errors.append(AssertionError("not every toxic was added"))
        done.set()

    worker = threading.Thread(target=body, daemon=True)
    worker.start()
    assert done.wait(60), "API calls inside legacy() deadlocked"
    worker.join(5)
    assert not errors, errors


async def test_async_calls_inside_legacy_and_from_20_tasks(api: str, name: str) -> None:
    client = AsyncToxiproxyClient(api, timeout=5)
    await client.create_proxy(name=name, upstream="127.0.0.1:9")
    with client.legacy() as tp:
        assert tp.get_proxy(name).name == name

        async def one(i: int) -> None:
            async with client.toxic(name, type="latency", name=f"l{i}") as toxic:
                assert (await client.get_toxic(name, toxic.name)).attributes["latency"] == 0

        async with asyncio.timeout(60):
            await asyncio.gather(*(one(i) for i in range(20)))
    assert await client.toxics(name) == []
    async with client.down(name):
        assert (await client.get_proxy(name)).enabled is False
    assert (await client.get_proxy(name)).enabled is True


def test_legacy_leaves_toxiproxy_python_alone(api: str) -> None:
    from toxiproxy.api import APIConsumer

    before = (APIConsumer.host, APIConsumer.port)
    with ToxiproxyClient(api).legacy() as tp:
        assert tp.running()
        assert (APIConsumer.host, APIConsumer.port) == before
    assert (APIConsumer.host, APIConsumer.port) == before


def test_two_clients_two_servers(api: str) -> None:
    with ToxiproxyServer.in_thread() as other:
        a, b = ToxiproxyClient(api, timeout=3), ToxiproxyClient(other.url, timeout=7)
        assert (a.port, b.port) != (b.port, a.port)
        assert (a.timeout, b.timeout) == (3, 7)
        with a.legacy() as ta, b.legacy() as tb:
            ta.create(upstream="127.0.0.1:9", name="only_on_b_not")
            try:
                assert "only_on_b_not" not in tb.proxies()
            finally:
                a.delete_proxy("only_on_b_not")


def test_sync_and_async_clients_have_the_same_methods() -> None:
    def public(cls: type) -> dict[str, inspect.Signature]:
        return {
            n: inspect.signature(f)
            for n, f in inspect.getmembers(cls, callable)
            if not n.startswith("_")
        }

    sync, aio = public(ToxiproxyClient), public(AsyncToxiproxyClient)
    assert set(sync) == set(aio)
    for method, signature in sync.items():
        assert list(signature.parameters) == list(aio[method].parameters), method
    for method in ("get_toxic", "toxic", "down"):
        assert method in aio


async def test_toxic_blocks_take_the_arguments_of_add_toxic(api: str, name: str) -> None:
    sync, aio = ToxiproxyClient(api, timeout=5), AsyncToxiproxyClient(api, timeout=5)
    sync.create_proxy(name=name, upstream="127.0.0.1:9")
    with sync.toxic(name, type="latency") as plain:  # add_toxic's defaults apply
        assert (plain.name, plain.stream, plain.toxicity) == ("latency_downstream", "downstream", 1)
        assert sync.toxics(name) == [plain]
    async with aio.toxic(
        name, type="bandwidth", name="bw", stream="upstream", toxicity=0.5, attributes={"rate": 7}
    ) as full:  # and every argument is forwarded
        assert (full.name, full.stream, full.toxicity) == ("bw", "upstream", 0.5)
        assert full.attributes["rate"] == 7
        assert await aio.get_toxic(name, "bw") == full
    assert sync.toxics(name) == []  # both removed at the end of their block
    with pytest.raises(TypeError), sync.toxic(name, type="noop", nmae="x"):  # type: ignore[call-arg]
        pass
    assert sync.toxics(name) == []


def test_plain_text_error_bodies_are_understood() -> None:
    with pytest.raises(ToxiproxyAPIError) as page:
        _decode(404, b"404 page not found\n", method="GET", path="/x")
    assert (page.value.status, page.value.message) == (404, "404 page not found")
    with pytest.raises(ToxiproxyAPIError) as empty:
        _decode(405, b"", method="PUT", path="/version")
    assert empty.value.message == "method not allowed"
    with pytest.raises(ToxiproxyAPIError) as json_text:
        _decode(400, b'{"error": "invalid toxic type", "status": 400}\n', method="P", path="/")
    assert json_text.value.message == "invalid toxic type"
