"""HTTP consumers and WsgiToAsgi under Hypercorn's trio worker, with httpx as the client.

Real sockets: real clock, an outer ``trio.fail_after`` guard, no autojump clock.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import httpx
import pytest
import trio
import trio.lowlevel

from tests.test_sse import Event, parse
from trichannels.generic.http import AsyncHttpConsumer
from trichannels.routing import ProtocolTypeRouter, URLRouter, path
from trichannels.testing import LiveServer, live_server
from trichannels.wsgi import WsgiToAsgi

GUARD = 10  # each test takes about 0.05-0.15 s: not marked slow


class Echo(AsyncHttpConsumer):
    channel_layer_alias = None
    max_body_size = 64 * 1024

    async def handle(self, body: bytes) -> None:
        await self.send_response(
            200, body, headers=[(b"content-type", b"application/octet-stream")]
        )


class Gated(AsyncHttpConsumer):
    """Streams three chunks from a child task, each only once the test opens the gate."""

    channel_layer_alias = None
    gate: ClassVar[trio.Semaphore]
    finished: ClassVar[trio.Event]
    sent: ClassVar[list[int]]

    async def handle(self, body: bytes) -> None:
        await self.send_headers(200, [(b"content-type", b"text/plain")])
        self.start_soon(self.stream)

    async def stream(self) -> None:
        try:
            for n in (1, 2, 3):
                await self.gate.acquire()
                await self.send_body(f"chunk {n};".encode(), more_body=True)
                self.sent.append(n)
            await self.send_body(b"")
        finally:
            self.finished.set()


class Events(AsyncHttpConsumer):
    channel_layer_alias = None

    async def handle(self, body: bytes) -> None:
        await self.start_event_stream()
        self.start_soon(self.stream)

    async def stream(self) -> None:
        await self.send_comment("hello")
        await self.send_event("first line\nsecond line", event="greeting", id=1)
        await self.send_event("caf\u00e9 \u2603", id="two", retry=2500)
        await self.send_body(b"")


class Broken(AsyncHttpConsumer):
    channel_layer_alias = None

    async def handle(self, body: bytes) -> None:
        raise ZeroDivisionError("live boom")


class BreaksMidway(AsyncHttpConsumer):
    channel_layer_alias = None

    async def handle(self, body: bytes) -> None:
        await self.send_headers(200)
        await self.send_body(b"partial", more_body=True)
        raise KeyError("midway")


def legacy_app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    """A WSGI app: echoes its mount point, path, and the request body in chunks."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield f"{environ['SCRIPT_NAME']}|{environ['PATH_INFO']}|".encode()
    while chunk := environ["wsgi.input"].read(4096):
        yield chunk


application = ProtocolTypeRouter(
    {
        "http": URLRouter(
            [
                path("echo/", Echo.as_asgi()),
                path("stream/", Gated.as_asgi()),
                path("events/", Events.as_asgi()),
                path("broken/", Broken.as_asgi()),
                path("midway/", BreaksMidway.as_asgi()),
                path("legacy/", WsgiToAsgi(legacy_app)),
            ]
        ),
    },
    lifespan_contexts=(),
)


@pytest.fixture
async def server() -> AsyncIterator[LiveServer]:
    Gated.gate = trio.Semaphore(0)
    Gated.finished = trio.Event()
    Gated.sent = []
    async with live_server(application) as live:
        yield live


@pytest.fixture
async def client(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url) as http:
        yield http


async def test_body_size_limit_gives_413(client: httpx.AsyncClient) -> None:
    """A body over max_body_size gets 413, whether announced by Content-Length or streamed."""
    with trio.fail_after(GUARD):
        small = await client.post("/echo/", content=b"x" * 1000)
        assert (small.status_code, len(small.content)) == (200, 1000)

        declared = await client.post("/echo/", content=b"x" * 200_000)
        assert declared.status_code == 413
        assert declared.text == "Request body exceeds the limit of 65536 bytes"

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(20):
                yield b"y" * 4096

        streamed = await client.post(
            "/echo/", content=chunks()
        )  # chunked: no Content-Length
        assert streamed.status_code == 413


async def test_streaming_response_read_chunk_by_chunk(
    client: httpx.AsyncClient,
) -> None:
    """Each chunk reaches the client before the consumer sends the next one."""
    with trio.fail_after(GUARD):
        async with client.stream("GET", "/stream/") as response:
            assert response.status_code == 200
            Gated.gate.release()
            received = []
            async for chunk in response.aiter_raw():
                received.append(chunk)
                assert len(Gated.sent) <= len(
                    received
                )  # nothing sent ahead of the gate
                Gated.gate.release()
        assert b"".join(received) == b"chunk 1;chunk 2;chunk 3;"
        assert len(received) == 3
        await Gated.finished.wait()


async def test_client_disconnect_mid_stream_cancels_child(server: LiveServer) -> None:
    """Closing the connection mid-stream cancels the consumer's streaming task (its finally runs).

    A raw socket client: httpx's streaming iterators cannot be abandoned
    mid-body without leaving async generators to the garbage collector.
    """
    with trio.fail_after(GUARD):
        stream = await trio.open_tcp_stream(server.host, server.port)
        async with stream:
            await stream.send_all(b"GET /stream/ HTTP/1.1\r\nHost: test\r\n\r\n")
            Gated.gate.release()
            received = b""
            while b"chunk 1;" not in received:
                data = await stream.receive_some()
                assert data, f"connection closed early after {received!r}"
                received += data
            assert received.startswith(b"HTTP/1.1 200 ")
        # The connection is closed; the server delivers http.disconnect.
        await Gated.finished.wait()
    assert Gated.sent == [1]


async def test_sse_framing_parsed_by_client(client: httpx.AsyncClient) -> None:
    """A real client receives text/event-stream headers and well-framed events."""
    with trio.fail_after(GUARD):
        async with client.stream("GET", "/events/") as response:
            assert (
                response.headers["content-type"] == "text/event-stream; charset=utf-8"
            )
            assert response.headers["cache-control"] == "no-cache"
            stream = b"".join([chunk async for chunk in response.aiter_raw()])
    parsed = parse(stream)
    assert parsed.comments == ["hello"]
    assert parsed.events == [
        Event("first line\nsecond line", "greeting", "1"),
        Event("caf\u00e9 \u2603", "message", "two", 2500),
    ]


async def test_exception_gives_500(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception before the response started: the client gets 500, the error is logged."""
    with trio.fail_after(GUARD):
        response = await client.get("/broken/")
    assert (response.status_code, response.text) == (500, "Internal Server Error")
    ours = [
        r
        for r in caplog.records
        if r.name == "trichannels.consumer" and r.levelno == logging.ERROR
    ]
    assert len(ours) == 1
    assert "/broken/" in ours[0].getMessage()


async def test_exception_after_start_aborts_response(client: httpx.AsyncClient) -> None:
    """An exception mid-response cuts the connection: the client sees an incomplete body."""
    with trio.fail_after(GUARD), pytest.raises(httpx.RemoteProtocolError):
        await client.get("/midway/")


async def test_wsgi_app_behind_the_same_router(client: httpx.AsyncClient) -> None:
    """A WSGI app mounted under the URLRouter serves GET and streams a POST body back."""
    with trio.fail_after(GUARD):
        get = await client.get("/legacy/some/page")
        assert (get.status_code, get.text) == (200, "/legacy|/some/page|")

        async def upload() -> AsyncIterator[bytes]:
            for n in range(50):
                yield f"{n:04d}".encode() * 1000
                await trio.lowlevel.checkpoint()

        post = await client.post("/legacy/upload", content=upload())
        expected = b"".join(f"{n:04d}".encode() * 1000 for n in range(50))
        assert post.content == b"/legacy|/upload|" + expected
