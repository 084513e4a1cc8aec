"""The FastAPI integration and the example app, over HTTP (a real uvicorn on loopback),
against the real PostgreSQL; faults through the embedded fault proxy."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from resilient_db import (
    CircuitBreaker,
    CircuitOpenError,
    CommitOutcomeUnknown,
    DeadlineExceeded,
    ResilientDBError,
    RetryPolicy,
)
from resilient_db.integrations import PROBLEM_JSON, problem_for

fastapi = pytest.importorskip("fastapi", reason="fastapi is not installed (the [fastapi] extra)")
httpx = pytest.importorskip("httpx", reason="httpx is not installed (the test extra)")

from fastapi import Request  # noqa: E402

from examples.fastapi_app import create_app  # noqa: E402
from resilient_db.integrations.fastapi import (  # noqa: E402
    SUPPORTS_DEPENDENCY_SCOPE,
    get_database,
    unit_of_work,
)
from tests._shop import shop_url  # noqa: E402, F401  (the fixture)
from tests._uvicorn import serve  # noqa: E402

FAST_RETRY = RetryPolicy(attempts=2, initial=0.01, max_backoff=0.02)


async def test_example_app_serves_reads_writes_and_readiness(shop_url: str) -> None:  # noqa: F811
    app = create_app(shop_url, retry=FAST_RETRY)
    async with serve(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        assert (await client.get("/accounts/1")).json() == {"id": 1, "balance": 100}
        moved = await client.post("/transfers", json={"src": 1, "dst": 2, "amount": 30})
        assert moved.status_code == 200, moved.text
        assert moved.json() == {"src": 1, "balance": 70}
        # Committed before the response was sent: the next request sees it.
        assert (await client.get("/accounts/2")).json()["balance"] == 130
        # An HTTPException in the endpoint rolls the request's unit back.
        broke = await client.post("/transfers", json={"src": 1, "dst": 2, "amount": 1000})
        assert broke.status_code == 409
        assert (await client.get("/accounts/1")).json()["balance"] == 70
        ready = await client.get("/ready")
        assert ready.status_code == 200
        body = ready.json()
        assert body["status"] == "ready"
        assert [b["state"] for b in body["breakers"]] == ["closed"]
        opened = await client.put("/accounts/3", params={"balance": 5})
        assert opened.status_code == 201
        # A fatal error (unique violation) is not ours: untouched, the server's plain 500.
        again = await client.put("/accounts/3", params={"balance": 5})
        assert again.status_code == 500
        assert again.headers["content-type"] != PROBLEM_JSON


async def test_lifespan_disposes_of_the_engine_at_shutdown(shop_url: str) -> None:  # noqa: F811
    app = create_app(shop_url)
    seen: dict[str, Any] = {}

    @app.get("/pool")
    async def pool(request: Request) -> dict[str, int]:
        db = get_database(request)
        seen["engine"], seen["db"] = db.engine, db
        async with db.transaction() as session:
            await session.execute(text("SELECT 1"))
        return {"checked_in": db.engine.pool.checkedin()}  # type: ignore[attr-defined]

    async with serve(app) as base, httpx.AsyncClient(base_url=base) as client:
        assert (await client.get("/pool")).json()["checked_in"] >= 1
    # After shutdown the pool holds no connection and the Database is closed (aclose()).
    assert seen["engine"].pool.checkedin() == 0
    with pytest.raises(ResilientDBError, match=r"closed by aclose\(\)"):
        async with seen["db"].transaction():
            pass


async def test_errors_become_problem_details(
    shop_url: str,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="resilient_db")
    app = create_app(shop_url, retry=FAST_RETRY, breaker=None)
    slow = unit_of_work(deadline=0.3)

    @app.get("/slow")
    async def sleepy(session: Any = slow) -> dict[str, str]:
        await session.execute(text("SELECT pg_sleep(5)"))
        return {"never": "reached"}

    @app.get("/lost-commit")
    async def lost_commit() -> None:
        raise CommitOutcomeUnknown("lost", xid=4242, attempts=1, timeline="00000002")

    @app.get("/conflict")
    async def conflict(request: Request) -> None:
        async def body(session: Any) -> None:
            await session.execute(
                text("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '40001', MESSAGE = 'c'; END $$")
            )

        await get_database(request).run(body)

    async with serve(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        started = time.monotonic()
        timed_out = await client.get("/slow")
        assert timed_out.status_code == 504, timed_out.text
        assert time.monotonic() - started < 4
        assert timed_out.headers["content-type"] == PROBLEM_JSON
        assert timed_out.json()["type"] == "urn:resilient-db:problem:deadline-exceeded"

        lost = await client.get("/lost-commit")
        assert lost.status_code == 500
        assert lost.headers["content-type"] == PROBLEM_JSON
        problem = lost.json()
        assert problem["xid"] == 4242
        assert problem["timeline"] == "00000002"
        assert problem["status"] == 500
        assert problem["title"] == "Commit outcome unknown"

        exhausted = await client.get("/conflict")
        assert exhausted.status_code == 503, exhausted.text
        assert exhausted.json()["sqlstate"] == "40001"
        assert exhausted.json()["category"] == "serialization"
        assert "retry-after" not in exhausted.headers
    logged = [r for r in caplog.records if r.__dict__.get("event") == "http.problem"]
    assert [r.getMessage() for r in logged][-1] == (
        "http.problem: answered a database error with an HTTP problem response "
        "(error_type=DBAPIError status=503 problem=database-error)"
    )


@pytest.mark.parametrize(
    ("retry_after", "header"), [(0.2, "1"), (1.0, "1"), (1.01, "2"), (0.0, "1"), (29.5, "30")]
)
def test_open_breaker_retry_after_is_whole_seconds_rounded_up(
    retry_after: float, header: str
) -> None:
    problem = problem_for(CircuitOpenError("db", retry_after))
    assert problem is not None
    assert problem.status == 503
    assert problem.headers == {"Retry-After": header}
    assert "db" not in problem.detail  # the breaker's name (host:port) stays inside


def test_problem_for_leaves_unknown_and_application_errors_alone() -> None:
    assert problem_for(ValueError("mine")) is None
    assert problem_for(ConnectionRefusedError("my HTTP client's")) is None  # no unit's note
    forced = problem_for(CircuitOpenError("db", math.inf, state="forced_open"))
    assert forced is not None
    assert forced.headers == {}
    deadline = problem_for(DeadlineExceeded("late", name="u", deadline=2.0, attempts=3))
    assert deadline is not None
    assert (deadline.status, deadline.extensions) == (504, {"attempts": 3})


def test_dependency_scope_follows_the_installed_fastapi() -> None:
    dep = unit_of_work()
    if SUPPORTS_DEPENDENCY_SCOPE:
        assert dep.scope == "function"  # commit before the response is sent
        assert unit_of_work(commit="after_response").scope == "request"


async def test_outage_through_the_fault_proxy_503_with_retry_after_then_200(
    shop_url: str,  # noqa: F811
    toxiproxy_postgres: Any,
) -> None:
    proxied = toxiproxy_postgres(shop_url)
    breaker = CircuitBreaker(
        "example-db", consecutive_failures=2, open_for=0.5, open_for_max=1.0, open_jitter=0.0
    )
    app = create_app(
        proxied.url,
        retry=FAST_RETRY,
        breaker=breaker,
        deadline=3.0,
        engine_options={"connect_timeout": 1},
    )
    async with serve(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        assert (await client.get("/accounts/1")).status_code == 200
        with proxied.down():
            deadline = time.monotonic() + 20
            while True:
                answer = await client.get("/accounts/1")
                assert answer.status_code == 503, answer.text
                assert answer.headers["content-type"] == PROBLEM_JSON
                if "retry-after" in answer.headers:
                    break
                assert time.monotonic() < deadline, "the breaker never opened"
            seconds = answer.headers["retry-after"]
            assert seconds.isdigit()
            assert int(seconds) >= 1
            assert answer.json()["breaker_state"] == "open"
            ready = await client.get("/ready")
            assert ready.status_code == 503
            assert ready.json()["breakers"][0]["state"] == "open"
        deadline = time.monotonic() + 20
        while (answer := await client.get("/accounts/1")).status_code != 200:
            assert answer.status_code == 503, answer.text
            assert time.monotonic() < deadline, "no 200 within 20 s after the outage"
            await _pause(0.05)
        assert answer.json() == {"id": 1, "balance": 100}
        assert (await client.get("/ready")).status_code == 200


async def _pause(seconds: float) -> None:
    import anyio

    await anyio.sleep(seconds)  # bounded poll


async def test_problem_middleware_answers_for_any_asgi_app() -> None:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from resilient_db.integrations.asgi import ProblemMiddleware

    async def refused(request: Request) -> PlainTextResponse:
        raise CircuitOpenError("db", 2.5)

    async def mine(request: Request) -> PlainTextResponse:
        raise KeyError("the application's own")

    async def fine(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[Route("/r", refused), Route("/m", mine), Route("/f", fine)],
        middleware=[Middleware(ProblemMiddleware)],  # inside Starlette's own 500 handler
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        answer = await client.get("/r")
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "3"
        assert answer.headers["content-type"] == PROBLEM_JSON
        assert answer.json()["status"] == 503
        assert (await client.get("/m")).status_code == 500  # untouched: the server's 500
        assert (await client.get("/f")).text == "ok"


def test_bad_configuration_is_refused_with_the_one_message_format(pg_url: str) -> None:
    from starlette.requests import Request as StarletteRequest

    from resilient_db import ConfigurationError
    from resilient_db.integrations.asgi import database_lifespan
    from resilient_db.integrations.fastapi import repository

    with pytest.raises(ConfigurationError, match=r"^unit_of_work\(commit='later'\) must be"):
        unit_of_work(commit="later")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^repository\(factory=3\) must be callable; fix:"):
        repository(3)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"state_key='no-dash'\) must be a Python"):
        database_lifespan(pg_url, state_key="no-dash")
    bare = StarletteRequest({"type": "http", "state": {}})
    with pytest.raises(ConfigurationError, match=r"lifespan=database_lifespan\(url\)"):
        get_database(bare)


async def test_idempotency_key_header_applies_a_request_once(shop_url: str) -> None:  # noqa: F811
    import anyio
    from sqlalchemy.ext.asyncio import create_async_engine as sa_engine

    from resilient_db import create_ledger

    setup = sa_engine(shop_url)
    try:
        await create_ledger(setup)
    finally:
        await setup.dispose()
    app = create_app(shop_url, retry=FAST_RETRY)
    move = {"src": 1, "dst": 2, "amount": 10}
    async with serve(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        first = await client.post("/transfers", json=move, headers={"Idempotency-Key": "k-1"})
        assert first.status_code == 200, first.text
        again = await client.post("/transfers", json=move, headers={"Idempotency-Key": "k-1"})
        assert again.status_code == 409, again.text
        assert again.headers["content-type"] == PROBLEM_JSON
        assert again.json()["type"] == "urn:resilient-db:problem:already-applied"
        answers: list[int] = []

        async def send() -> None:
            sent = await client.post("/transfers", json=move, headers={"Idempotency-Key": "k-2"})
            answers.append(sent.status_code)

        async with anyio.create_task_group() as tg:  # the same key, concurrently
            for _ in range(4):
                tg.start_soon(send)
        assert sorted(answers) == [200, 409, 409, 409], answers
        other = await client.post("/transfers", json=move)  # no key: applied as usual
        assert other.status_code == 200
        bad = await client.post("/transfers", json=move, headers={"Idempotency-Key": "a b"})
        assert bad.status_code == 400
        balance = (await client.get("/accounts/1")).json()["balance"]
    assert balance == 100 - 3 * 10  # k-1 once, k-2 once, the unkeyed one


@pytest.mark.slow
async def test_commit_lost_in_doubt_is_a_500_problem_with_the_xid(
    shop_url: str,  # noqa: F811
) -> None:
    from tests._relay import relay_to

    url = make_url(shop_url)
    async with relay_to(url.host or "127.0.0.1", url.port or 5432) as relay:
        proxied = url.set(host="127.0.0.1", port=relay.port).render_as_string(False)
        app = create_app(
            proxied,
            retry=FAST_RETRY,
            breaker=None,
            deadline=1.0,
            resolve_timeout=0.5,
            cleanup_timeout=0.5,
            engine_options={"command_timeout": 30, "connect_timeout": 30},
        )

        request_unit = unit_of_work()

        @app.post("/bump")
        async def bump(session: Any = request_unit) -> dict[str, str]:
            await session.execute(text("UPDATE account SET balance = balance + 1 WHERE id = 1"))
            relay.cut_commit = "after"  # the server commits; the answer never arrives...
            relay.black_hole_after_cut = True  # ...and nothing else does either
            return {"never": "sent"}

        try:
            async with serve(app) as base, httpx.AsyncClient(base_url=base, timeout=20) as c:
                answer = await c.post("/bump")
                relay.black_hole.clear()
        finally:
            relay.black_hole.clear()
    assert answer.status_code == 500, answer.text
    assert answer.headers["content-type"] == PROBLEM_JSON
    problem = answer.json()
    assert problem["type"] == "urn:resilient-db:problem:commit-outcome-unknown"
    assert isinstance(problem["xid"], int)
