"""HTTP/1.1 framing of the API on ``h11``: requests in, responses out, nothing else.

Malformed framing (a bad ``Content-Length`` or chunk size, a header line without a colon)
gets a 400, an oversized request head a 431, an oversized body a 413, each followed by a
close. Every read is bounded by ``idle_timeout``, so idle keep-alive connections and
half-sent requests are dropped. What a request means is the ``handler``'s business.
"""

from __future__ import annotations

import asyncio
import http
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import h11

__all__ = ["MAX_BODY", "MAX_HEAD", "Handler", "Request", "Response", "serve_connection"]

#: Largest request head (request line and headers) accepted, in bytes.
MAX_HEAD: Final = 64 * 1024
#: Largest request body accepted, in bytes.
MAX_BODY: Final = 16 * 1024 * 1024
_TEXT: Final = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Request:
    """One API request (header names in lower case)."""

    method: str
    target: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Response:
    """One API response."""

    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, status: int, payload: Any, *, content_type: str = "application/json") -> Response:
        """A JSON body (with a trailing newline, as the reference writes it)."""
        return cls(status, json.dumps(payload).encode() + b"\n", content_type)

    @classmethod
    def text(cls, status: int, text: str) -> Response:
        """A plain-text body, as Go's ``http.Error`` writes it."""
        return cls(status, text.encode() + b"\n", _TEXT, (("X-Content-Type-Options", "nosniff"),))

    @classmethod
    def error(cls, status: int, message: str) -> Response:
        """The reference's error body: JSON served as ``text/plain`` (``nosniff``)."""
        body = json.dumps({"error": message, "status": status})
        return cls.text(status, body)


Handler = Callable[[Request], Awaitable[Response]]


class _Reject(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _head(response: Response) -> list[tuple[str, str]]:
    headers = list(response.headers)
    if response.content_type is not None:
        headers.append(("Content-Type", response.content_type))
    if response.status not in (204, 304):
        headers.append(("Content-Length", str(len(response.body))))
    return headers


async def _send(conn: h11.Connection, writer: asyncio.StreamWriter, response: Response) -> None:
    head = h11.Response(
        status_code=response.status, headers=_head(response), reason=_reason(response.status)
    )
    data = conn.send(head) or b""
    if response.body:
        data += conn.send(h11.Data(data=response.body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    writer.write(data)
    await writer.drain()


async def _receive(
    conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
) -> Request | None:
    """The next complete request, or None when the client closed or idled out."""
    start: h11.Request | None = None
    body = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise _Reject(exc.error_status_hint, f"malformed HTTP request: {exc}") from None
        if event is h11.NEED_DATA:
            if conn.they_are_waiting_for_100_continue:
                go_on = h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
                writer.write(conn.send(go_on) or b"")
            try:
                async with asyncio.timeout(timeout):
                    data = await reader.read(65536)
            except TimeoutError:
                return None
            conn.receive_data(data)
        elif isinstance(event, h11.Request):
            start = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                raise _Reject(413, "request body too large")
        elif isinstance(event, h11.EndOfMessage):
            assert start is not None
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in start.headers}
            return Request(
                method=start.method.decode("ascii", "replace"),
                target=start.target.decode("latin-1"),
                headers=headers,
                body=bytes(body),
            )
        else:  # ConnectionClosed, PAUSED
            return None


async def serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    handler: Handler,
    *,
    idle_timeout: float,
) -> None:
    """Serve requests on one connection until it closes, idles out or breaks the protocol."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    while True:
        try:
            request = await _receive(conn, reader, writer, idle_timeout)
        except _Reject as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                text = Response.text(exc.status, f"{exc.status} {exc.message}")
                close = (*text.headers, ("Connection", "close"))
                await _send(
                    conn, writer, Response(text.status, text.body, text.content_type, close)
                )
            return
        if request is None:
            return
        await _send(conn, writer, await handler(request))
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return  # keep-alive is over (Connection: close, HTTP/1.0, unread body)
        conn.start_next_cycle()
