"""WsgiToAsgi: environ, streaming both ways, disconnects, start_response errors.

The WSGI application runs in real worker threads, so these tests use the real
clock (never ``autojump_clock``) with an outer ``trio.fail_after`` guard.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import demo_app

import anyio
import pytest
import trio
import trio.testing

from trichannels.exceptions import RequestAborted, UnexpectedMessage
from trichannels.testing import ApplicationCommunicator, HttpCommunicator
from trichannels.types import Message, Scope
from trichannels.wsgi import WsgiToAsgi

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], None]]
GUARD = 10


def http_scope(**overrides: Any) -> Scope:
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "client": ("127.0.0.1", 51000),
        "server": ("testserver", 80),
    }
    scope.update(overrides)
    return scope


async def read_response(comm: ApplicationCommunicator) -> dict[str, Any]:
    """Read one whole response from a communicator: status, headers, body chunks."""
    start = await comm.receive_output()
    assert start["type"] == "http.response.start"
    chunks: list[bytes] = []
    while True:
        part = await comm.receive_output()
        assert part["type"] == "http.response.body"
        chunks.append(part.get("body", b""))
        if not part.get("more_body", False):
            break
    return {"status": start["status"], "headers": start["headers"], "chunks": chunks}


def capture_environ(
    seen: list[Environ],
) -> Callable[[Environ, StartResponse], list[bytes]]:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        seen.append(environ)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    return app


# -- a real WSGI application --------------------------------------------------------


async def test_wsgiref_demo_app() -> None:
    """The stdlib's wsgiref demo app answers through the wrapper."""
    with trio.fail_after(GUARD):
        async with HttpCommunicator(
            WsgiToAsgi(demo_app),
            "GET",
            "/hello?x=1",
            headers=[(b"host", b"example.com")],
        ) as comm:
            response = await comm.get_response()
    assert response["status"] == 200
    assert (b"content-type", b"text/plain; charset=utf-8") in response["headers"]
    body = response["body"].decode()
    assert body.startswith("Hello world!\n")
    assert "PATH_INFO = '/hello'" in body
    assert "QUERY_STRING = 'x=1'" in body
    assert "HTTP_HOST = 'example.com'" in body


# -- environ ----------------------------------------------------------------------------


async def test_environ_is_built_per_pep_3333() -> None:
    """SCRIPT_NAME, PATH_INFO, QUERY_STRING, CONTENT_*, HTTP_*, SERVER_*, REMOTE_*, scheme."""
    seen: list[Environ] = []
    scope = http_scope(
        method="POST",
        scheme="https",
        http_version="2",
        root_path="/app",
        path="/app/caf\u00e9/x",
        query_string=b"a=1&b=%20",
        headers=[
            (b"host", b"example.com"),
            (b"content-type", b"text/plain"),
            (b"content-length", b"2"),
            (b"accept", b"text/html"),
            (b"accept", b"application/json"),
            (b"cookie", b"a=1"),
            (b"cookie", b"b=2"),
            (b"x_forwarded_for", b"spoofed"),
            (b"x-custom-thing", b"yes"),
        ],
        client=("10.0.0.7", 4321),
        server=("srv.local", 8443),
    )
    with trio.fail_after(GUARD):
        async with ApplicationCommunicator(
            WsgiToAsgi(capture_environ(seen)), scope
        ) as comm:
            await comm.send_input({"type": "http.request", "body": b"hi"})
            assert (await read_response(comm))["chunks"] == [b"ok", b""]
    (environ,) = seen
    expected = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "/app",
        "PATH_INFO": "/caf\u00c3\u00a9/x",  # UTF-8 bytes as latin-1 (PEP 3333)
        "QUERY_STRING": "a=1&b=%20",
        "SERVER_PROTOCOL": "HTTP/2",
        "CONTENT_TYPE": "text/plain",
        "CONTENT_LENGTH": "2",
        "HTTP_HOST": "example.com",
        "HTTP_ACCEPT": "text/html, application/json",
        "HTTP_COOKIE": "a=1; b=2",
        "HTTP_X_CUSTOM_THING": "yes",
        "SERVER_NAME": "srv.local",
        "SERVER_PORT": "8443",
        "REMOTE_ADDR": "10.0.0.7",
        "REMOTE_PORT": "4321",
        "wsgi.url_scheme": "https",
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
    }
    assert {key: environ[key] for key in expected} == expected
    assert "HTTP_X_FORWARDED_FOR" not in environ  # '_' names cannot pose as '-' ones
    assert "HTTP_CONTENT_TYPE" not in environ
    assert "HTTP_CONTENT_LENGTH" not in environ
    assert environ["asgi.scope"]["path"] == "/app/caf\u00e9/x"


async def test_environ_without_server_uses_host_header() -> None:
    """With no scope['server'], SERVER_NAME/PORT come from Host (or the scheme's port)."""
    seen: list[Environ] = []
    app = WsgiToAsgi(capture_environ(seen))
    cases = [
        ([(b"host", b"example.com:8080")], "http", ("example.com", "8080")),
        ([(b"host", b"example.com")], "https", ("example.com", "443")),
        ([], "http", ("localhost", "80")),
    ]
    with trio.fail_after(GUARD):
        for headers, scheme, _ in cases:
            scope = http_scope(server=None, client=None, headers=headers, scheme=scheme)
            async with ApplicationCommunicator(app, scope) as comm:
                await comm.send_input({"type": "http.request"})
                await read_response(comm)
    assert [(e["SERVER_NAME"], e["SERVER_PORT"]) for e in seen] == [c[2] for c in cases]
    assert all("REMOTE_ADDR" not in e for e in seen)


async def test_root_path_not_a_prefix_of_path_is_left_alone() -> None:
    """A root_path that does not prefix the path (e.g. '/app' vs '/application') is not stripped."""
    seen: list[Environ] = []
    scope = http_scope(root_path="/app", path="/application")
    with trio.fail_after(GUARD):
        async with ApplicationCommunicator(
            WsgiToAsgi(capture_environ(seen)), scope
        ) as comm:
            await comm.send_input({"type": "http.request"})
            await read_response(comm)
    assert (seen[0]["SCRIPT_NAME"], seen[0]["PATH_INFO"]) == ("/app", "/application")


async def test_mounted_under_url_router_with_script_name() -> None:
    """Under a URLRouter the wrapper matches a prefix: SCRIPT_NAME is the mount point."""
    from trichannels.routing import URLRouter, path

    seen: list[Environ] = []
    router = URLRouter([path("legacy/", WsgiToAsgi(capture_environ(seen)))])
    with trio.fail_after(GUARD):
        async with HttpCommunicator(router, "GET", "/legacy/a/b?q=1") as comm:
            assert (await comm.get_response())["body"] == b"ok"
    assert (seen[0]["SCRIPT_NAME"], seen[0]["PATH_INFO"], seen[0]["QUERY_STRING"]) == (
        "/legacy",
        "/a/b",
        "q=1",
    )


# -- request body -------------------------------------------------------------------


def echo_in_chunks(size: int) -> Callable[[Environ, StartResponse], Iterator[bytes]]:
    """Reads wsgi.input ``size`` bytes at a time and yields each piece back."""

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        stream = environ["wsgi.input"]
        while piece := stream.read(size):
            yield piece

    return app


async def test_request_body_echoed_in_chunks() -> None:
    """wsgi.input.read(n) returns the body across chunk boundaries, then b''."""
    body = [b"abcdefg", b"", b"hij", b"klmnopqrstu"]
    with trio.fail_after(GUARD):
        async with HttpCommunicator(
            WsgiToAsgi(echo_in_chunks(4)), "POST", "/", body=body
        ) as comm:
            response = await comm.get_response()
    assert response["body"] == b"".join(body)


async def test_wsgi_input_readline_readlines_and_iteration() -> None:
    """readline(), readline(size), readlines() and iteration follow the file protocol."""
    results: dict[str, Any] = {}

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        stream = environ["wsgi.input"]
        results["line"] = stream.readline()
        results["capped"] = stream.readline(3)
        results["rest_of_line"] = stream.readline()
        results["lines"] = stream.readlines(1)
        results["iterated"] = list(stream)
        results["eof"] = (stream.read(), stream.read(10), stream.readline())
        start_response("204 No Content", [])
        return []

    chunks = [b"one\ntw", b"o-lon", b"g\nthr", b"ee\nfour\nfive"]
    with trio.fail_after(GUARD):
        async with HttpCommunicator(WsgiToAsgi(app), "POST", "/", body=chunks) as comm:
            assert (await comm.get_response())["status"] == 204
    assert results == {
        "line": b"one\n",
        "capped": b"two",
        "rest_of_line": b"-long\n",
        "lines": [b"three\n"],
        "iterated": [b"four\n", b"five"],
        "eof": (b"", b"", b""),
    }


class LazyBody:
    """A server ``receive`` that produces ``count`` chunks on demand and counts them."""

    def __init__(self, count: int, size: int = 1024) -> None:
        self.count = count
        self.size = size
        self.pulled = 0
        self.done = trio.Event()

    async def __call__(self) -> Message:
        if self.pulled < self.count:
            self.pulled += 1
            more = self.pulled < self.count
            return {"type": "http.request", "body": b"x" * self.size, "more_body": more}
        await self.done.wait()
        return {"type": "http.disconnect"}


async def test_request_body_is_not_buffered_whole() -> None:
    """While the app reads slowly, the wrapper pulls at most a couple of chunks ahead."""
    body = LazyBody(200)
    lead: list[int] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        stream = environ["wsgi.input"]
        read = 0
        while stream.read(body.size):
            read += 1
            lead.append(anyio.from_thread.run_sync(lambda: body.pulled) - read)
        start_response("200 OK", [])
        return [str(read).encode()]

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)
        if not message.get("more_body", False):
            body.done.set()

    with trio.fail_after(GUARD):
        await WsgiToAsgi(app)(http_scope(method="POST"), body, send)
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b"200"
    assert len(lead) == 200
    assert max(lead) <= 2


async def test_unread_body_is_not_pulled_from_the_server() -> None:
    """An app that ignores a large body answers without the wrapper reading it all."""
    body = LazyBody(1000)

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ignored your body"]

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    with trio.fail_after(GUARD):
        await WsgiToAsgi(app)(http_scope(method="POST"), body, send)
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert body.pulled <= 3


async def test_disconnect_before_body_complete_aborts_read() -> None:
    """A client gone mid-body makes wsgi.input raise RequestAborted; nothing is sent."""
    errors: list[BaseException] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        try:
            environ["wsgi.input"].read()
        except RequestAborted as exc:
            errors.append(exc)
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    scope = http_scope(method="POST")
    with trio.fail_after(GUARD):
        async with ApplicationCommunicator(WsgiToAsgi(app), scope) as comm:
            await comm.send_input(
                {"type": "http.request", "body": b"part", "more_body": True}
            )
            await comm.send_input({"type": "http.disconnect"})
            await comm.wait(timeout=GUARD)
            assert await comm.receive_nothing(timeout=0)
    assert [str(e) for e in errors] == [
        "the client disconnected before sending the whole request body"
    ]


# -- response streaming ----------------------------------------------------------------


class GatedStream:
    """A response iterable that yields one chunk each time the test opens the gate."""

    def __init__(self, limit: int | None = None) -> None:
        self.gate = threading.Semaphore(0)
        self.produced = 0
        self.limit = limit
        self.closed = threading.Event()

    def __call__(self, environ: Environ, start_response: StartResponse) -> GatedStream:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return self

    def __iter__(self) -> Iterator[bytes]:
        while self.limit is None or self.produced < self.limit:
            if not self.gate.acquire(timeout=GUARD):  # pragma: no cover
                raise TimeoutError("test never opened the gate")
            self.produced += 1
            yield f"chunk {self.produced}\n".encode()

    def close(self) -> None:
        self.closed.set()


async def test_response_streamed_chunk_by_chunk() -> None:
    """Each chunk reaches the server before the app produces the next one."""
    stream = GatedStream(limit=3)
    with trio.fail_after(GUARD):
        async with HttpCommunicator(WsgiToAsgi(stream), "GET", "/") as comm:
            await comm.send_input({"type": "http.request"})
            stream.gate.release()
            start = await comm.receive_output(timeout=GUARD)
            assert (start["type"], start["status"]) == ("http.response.start", 200)
            for n in (1, 2, 3):
                chunk = await comm.receive_output(timeout=GUARD)
                assert chunk == {
                    "type": "http.response.body",
                    "body": f"chunk {n}\n".encode(),
                    "more_body": True,
                }
                assert stream.produced == n  # nothing produced ahead of the client
                stream.gate.release()
            end = await comm.receive_output(timeout=GUARD)
            assert end == {
                "type": "http.response.body",
                "body": b"",
                "more_body": False,
            }
            await comm.wait(timeout=GUARD)
    assert stream.closed.is_set()


async def test_disconnect_mid_stream_stops_iteration_and_closes() -> None:
    """After http.disconnect the iterable is not advanced again and its close() runs."""
    stream = GatedStream()
    with trio.fail_after(GUARD):
        async with HttpCommunicator(WsgiToAsgi(stream), "GET", "/") as comm:
            await comm.send_input({"type": "http.request"})
            stream.gate.release()
            assert (await comm.receive_output(timeout=GUARD))[
                "type"
            ] == "http.response.start"
            assert (await comm.receive_output(timeout=GUARD))["body"] == b"chunk 1\n"
            await comm.send_input({"type": "http.disconnect"})
            await trio.testing.wait_all_tasks_blocked()
            stream.gate.release()  # lets the app produce one more chunk, which is dropped
            await comm.wait(timeout=GUARD)
            assert await comm.receive_nothing(timeout=0)
    assert stream.produced == 2
    assert stream.closed.is_set()


async def test_write_callable_streams() -> None:
    """The write() callable from start_response sends its data immediately, in order."""

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        write = start_response("200 OK", [])
        write(b"one ")
        write(b"")
        write(b"two ")
        return [b"three"]

    with trio.fail_after(GUARD):
        async with HttpCommunicator(WsgiToAsgi(app), "GET", "/") as comm:
            await comm.send_input({"type": "http.request"})
            response = await read_response(comm)
    assert response["chunks"] == [b"one ", b"two ", b"three", b""]


async def test_write_after_disconnect_raises_request_aborted_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """write() once the client left raises RequestAborted in the app; nothing is logged."""
    gate = threading.Event()
    raised: list[BaseException] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        write = start_response("200 OK", [])
        write(b"first")
        gate.wait(GUARD)
        try:
            write(b"second")
        except RequestAborted as exc:
            raised.append(exc)
            raise
        return []  # pragma: no cover

    with trio.fail_after(GUARD):
        async with HttpCommunicator(WsgiToAsgi(app), "GET", "/") as comm:
            await comm.send_input({"type": "http.request"})
            await comm.receive_output(timeout=GUARD)
            assert (await comm.receive_output(timeout=GUARD))["body"] == b"first"
            await comm.send_input({"type": "http.disconnect"})
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
            await comm.wait(timeout=GUARD)
    assert [str(e) for e in raised] == [
        "the client disconnected; write() cannot send the response"
    ]
    assert not [r for r in caplog.records if r.name == "trichannels.wsgi"]


async def test_content_length_clamps_body_and_stops_iteration() -> None:
    """With Content-Length, the body is cut at that length and iteration stops (PEP 3333)."""
    advanced: list[int] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Length", "7")])
        for n in range(5):
            advanced.append(n)
            yield b"hello "

    with trio.fail_after(GUARD):
        async with HttpCommunicator(WsgiToAsgi(app), "GET", "/") as comm:
            response = await comm.get_response()
    assert response["body"] == b"hello h"
    assert advanced == [0, 1]


async def test_write_past_content_length_raises() -> None:
    """A write() after Content-Length bytes were sent raises, naming the limit."""

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        write = start_response("200 OK", [("Content-Length", "2")])
        write(b"ok")
        write(b"more")
        return []  # pragma: no cover

    async def scenario() -> None:
        async with HttpCommunicator(WsgiToAsgi(app), "GET", "/") as comm:
            await comm.send_input({"type": "http.request"})
            await comm.receive_output()
            assert (await comm.receive_output())["body"] == b"ok"
            await comm.wait(timeout=GUARD)

    with (
        trio.fail_after(GUARD),
        pytest.raises(
            ValueError,
            match=r"^write\(\) of 4 bytes goes past the response's Content-Length$",
        ),
    ):
        await scenario()


async def test_empty_iterable_sends_headers_and_empty_body() -> None:
    """An empty response iterable still sends the status line and ends the body."""

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("304 Not Modified", [("ETag", '"abc"')])
        return []

    with trio.fail_after(GUARD):
        async with HttpCommunicator(WsgiToAsgi(app), "GET", "/") as comm:
            await comm.send_input({"type": "http.request"})
            response = await read_response(comm)
    assert response == {
        "status": 304,
        "headers": [(b"etag", b'"abc"')],
        "chunks": [b""],
    }


# -- errors ------------------------------------------------------------------------------


async def test_exception_before_response_gives_500_and_propagates(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An app error before any body: the client gets a 500, the error reaches the server, logged once."""

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        raise ZeroDivisionError("boom")

    responses: list[dict[str, Any]] = []

    async def scenario() -> None:
        async with HttpCommunicator(WsgiToAsgi(app), "GET", "/broken") as comm:
            responses.append(await comm.get_response())

    with trio.fail_after(GUARD), pytest.raises(ZeroDivisionError, match=r"^boom$"):
        await scenario()
    assert [(r["status"], r["body"]) for r in responses] == [
        (500, b"Internal Server Error")
    ]
    records = [r for r in caplog.records if r.name == "trichannels.wsgi"]
    assert len(records) == 1
    assert records[0].levelno == logging.ERROR
    assert "GET /broken" in records[0].getMessage()


async def test_exception_after_response_started_aborts() -> None:
    """An error mid-stream: no more body and no end-of-body; the server sees the error."""

    class Failing:
        closed = False

        def __call__(self, environ: Environ, start_response: StartResponse) -> Failing:
            start_response("200 OK", [])
            return self

        def __iter__(self) -> Iterator[bytes]:
            yield b"partial"
            raise KeyError("mid-stream")

        def close(self) -> None:
            self.closed = True

    failing = Failing()

    async def scenario() -> None:
        async with HttpCommunicator(WsgiToAsgi(failing), "GET", "/") as comm:
            await comm.send_input({"type": "http.request"})
            assert (await comm.receive_output())["status"] == 200
            assert (await comm.receive_output())["body"] == b"partial"
            await comm.receive_output()  # raises: nothing more was sent

    with trio.fail_after(GUARD), pytest.raises(KeyError, match=r"^'mid-stream'$"):
        await scenario()
    assert failing.closed


async def test_returning_without_start_response_is_an_error() -> None:
    """Returning a body without ever calling start_response gives a 500 and a clear error."""

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        return []

    with (
        trio.fail_after(GUARD),
        pytest.raises(
            RuntimeError,
            match=r"^the WSGI application returned without calling start_response\(\)$",
        ),
    ):
        async with HttpCommunicator(WsgiToAsgi(app), "GET", "/") as comm:
            assert (await comm.get_response())["status"] == 500


async def test_iterable_yielding_str_is_an_error() -> None:
    """A response iterable must yield bytes; a str is named in the error."""

    def app(environ: Environ, start_response: StartResponse) -> list[str]:
        start_response("200 OK", [])
        return ["text"]

    with (
        trio.fail_after(GUARD),
        pytest.raises(
            TypeError,
            match=r"^the WSGI response iterable must yield bytes, got 'text'$",
        ),
    ):
        async with HttpCommunicator(WsgiToAsgi(app), "GET", "/") as comm:  # type: ignore[arg-type]
            assert (await comm.get_response())["status"] == 500


def start_response_app(
    *calls: tuple[Any, ...],
) -> Callable[[Environ, StartResponse], list[bytes]]:
    """An app that calls start_response with each argument tuple in turn."""

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        for args in calls:
            start_response(*args)
        return [b"unreachable"]

    return app


@pytest.mark.parametrize(
    ("calls", "error", "message"),
    [
        (
            [("200 OK", []), ("404 Not Found", [])],
            RuntimeError,
            r"start_response\(\) called a second time without exc_info",
        ),
        (
            [(200, [])],
            TypeError,
            r"start_response\(\) status must be a str such as '200 OK', got 200",
        ),
        (
            [("200", [])],
            ValueError,
            r"start_response\(\) status must be a 3-digit code \(100-599\), a space and a "
            r"reason phrase, such as '200 OK', got '200'",
        ),
        (
            [("", [])],
            ValueError,
            r"start_response\(\) status must be a 3-digit code \(100-599\), a space and a "
            r"reason phrase, such as '200 OK', got ''",
        ),
        (
            [("700 Nope", [])],
            ValueError,
            r"start_response\(\) status must be a 3-digit code \(100-599\), a space and a "
            r"reason phrase, such as '200 OK', got '700 Nope'",
        ),
        (
            [("200 OK", {"a": "b"})],
            TypeError,
            r"start_response\(\) headers must be a list of \(str, str\) tuples, got \{'a': 'b'\}",
        ),
        (
            [("200 OK", [("X-Count", 1)])],
            TypeError,
            r"start_response\(\) headers must be \(str, str\) tuples, got \('X-Count', 1\)",
        ),
        (
            [("200 OK", [(b"x", b"y")])],
            TypeError,
            r"start_response\(\) headers must be \(str, str\) tuples, got \(b'x', b'y'\)",
        ),
        (
            [("200 OK", ["X-A: b"])],
            TypeError,
            r"start_response\(\) headers must be \(str, str\) tuples, got 'X-A: b'",
        ),
        (
            [("200 OK", [("Bad Name", "v")])],
            ValueError,
            r"start_response\(\) header name 'Bad Name' is not a valid HTTP token",
        ),
        (
            [("200 OK", [("X-A", "a\r\nSet-Cookie: evil=1")])],
            ValueError,
            r"start_response\(\) header 'X-A' has a value with CR, LF or NUL: "
            r"'a\\r\\nSet-Cookie: evil=1'",
        ),
        (
            [("200 OK", [("X-A", "\u2603")])],
            ValueError,
            r"start_response\(\) header 'X-A' has a value that is not latin-1: '\u2603'",
        ),
        (
            [("200 OK", [("Connection", "close")])],
            ValueError,
            r"start_response\(\) header 'Connection' is hop-by-hop, which WSGI "
            r"applications may not set",
        ),
    ],
)
async def test_start_response_errors_are_clear(
    calls: list[tuple[Any, ...]], error: type[Exception], message: str
) -> None:
    """Each misuse of start_response raises a specific error naming the value."""
    with trio.fail_after(GUARD), pytest.raises(error, match=f"^{message}$"):
        async with HttpCommunicator(
            WsgiToAsgi(start_response_app(*calls)), "GET", "/"
        ) as comm:
            assert (await comm.get_response())["status"] == 500


async def test_exc_info_before_headers_sent_replaces_response() -> None:
    """start_response(..., exc_info) before any body replaces status and headers (PEP 3333)."""

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/html")])
        try:
            raise ValueError("template failed")
        except ValueError:
            start_response("500 Oops", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"sorry"]

    with trio.fail_after(GUARD):
        async with HttpCommunicator(WsgiToAsgi(app), "GET", "/") as comm:
            response = await comm.get_response()
    assert (response["status"], response["headers"], response["body"]) == (
        500,
        [(b"content-type", b"text/plain")],
        b"sorry",
    )


async def test_exc_info_after_headers_sent_reraises() -> None:
    """start_response(..., exc_info) after the body started re-raises the original error."""

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"started"
        try:
            raise LookupError("late failure")
        except LookupError:
            start_response("500 Oops", [], sys.exc_info())
        yield b"unreachable"  # pragma: no cover

    async def scenario() -> None:
        async with HttpCommunicator(WsgiToAsgi(app), "GET", "/") as comm:
            await comm.send_input({"type": "http.request"})
            assert (await comm.receive_output())["status"] == 200
            assert (await comm.receive_output())["body"] == b"started"
            await comm.wait(timeout=GUARD)

    with trio.fail_after(GUARD), pytest.raises(LookupError, match=r"^late failure$"):
        await scenario()


async def test_write_of_non_bytes_is_an_error() -> None:
    """write() needs bytes and names what it got."""

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [])(["not", "bytes"])  # type: ignore[arg-type]
        return []  # pragma: no cover

    with (
        trio.fail_after(GUARD),
        pytest.raises(
            TypeError, match=r"^write\(\) needs bytes, got \['not', 'bytes'\]$"
        ),
    ):
        async with HttpCommunicator(WsgiToAsgi(app), "GET", "/") as comm:
            await comm.get_response()


async def test_unexpected_server_message_is_an_error() -> None:
    """A server message other than http.request/http.disconnect raises UnexpectedMessage."""

    async def scenario() -> None:
        async with ApplicationCommunicator(
            WsgiToAsgi(echo_in_chunks(4)), http_scope()
        ) as comm:
            await comm.send_input({"type": "websocket.connect"})
            await comm.wait(timeout=GUARD)

    with (
        trio.fail_after(GUARD),
        pytest.raises(
            UnexpectedMessage,
            match=r"^unexpected message type 'websocket.connect': a WSGI request only receives "
            r"'http.request' and 'http.disconnect'$",
        ),
    ):
        await scenario()


# -- bad arguments -----------------------------------------------------------------------


def test_constructor_rejects_non_callable() -> None:
    """WsgiToAsgi needs a callable WSGI application."""
    with pytest.raises(
        TypeError, match=r"^wsgi_app must be a callable WSGI application, got 'app'$"
    ):
        WsgiToAsgi("app")  # type: ignore[arg-type]


def test_constructor_rejects_bad_limiter() -> None:
    """limiter must be an anyio.CapacityLimiter (or None)."""
    with pytest.raises(
        TypeError, match=r"^limiter must be an anyio.CapacityLimiter or None, got 4$"
    ):
        WsgiToAsgi(demo_app, limiter=4)  # type: ignore[arg-type]


@pytest.mark.parametrize("scope_type", ["websocket", "lifespan"])
async def test_non_http_scope_rejected(scope_type: str) -> None:
    """Only 'http' scopes can be served; the error names the scope type."""
    with pytest.raises(
        ValueError,
        match=rf"^WsgiToAsgi can only serve 'http' scopes, got scope type '{scope_type}'$",
    ):
        await WsgiToAsgi(demo_app)({"type": scope_type}, _never_receive, _never_send)


async def _never_receive() -> Message:  # pragma: no cover
    raise AssertionError("receive() called")


async def _never_send(message: Message) -> None:  # pragma: no cover
    raise AssertionError("send() called")


def test_repr_names_the_app() -> None:
    """The wrapper's repr names the wrapped application."""
    assert re.fullmatch(
        r"WsgiToAsgi\(<function demo_app at 0x[0-9a-f]+>\)", repr(WsgiToAsgi(demo_app))
    )


# -- threads ----------------------------------------------------------------------------


async def test_limiter_bounds_concurrent_requests() -> None:
    """With CapacityLimiter(1), a second request waits for the first one's thread."""
    limiter = anyio.CapacityLimiter(1)
    release = threading.Event()
    first_running = trio.Event()
    running: list[str] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        running.append(environ["PATH_INFO"])
        anyio.from_thread.run_sync(first_running.set)
        release.wait(GUARD)
        start_response("200 OK", [])
        return [environ["PATH_INFO"].encode()]

    wrapped = WsgiToAsgi(app, limiter=limiter)
    with trio.fail_after(GUARD):
        async with HttpCommunicator(wrapped, "GET", "/first") as first:
            try:
                await (
                    first_running.wait()
                )  # the app starts at once; the body is streamed to it
                async with HttpCommunicator(wrapped, "GET", "/second") as second:
                    await trio.testing.wait_all_tasks_blocked()
                    assert running == ["/first"]
                    assert limiter.borrowed_tokens == 1
                    assert limiter.statistics().tasks_waiting == 1
                    release.set()
                    assert (await first.get_response())["body"] == b"/first"
                    assert (await second.get_response())["body"] == b"/second"
            finally:
                release.set()
    assert running == ["/first", "/second"]


def test_runs_on_asyncio_too(backend: str) -> None:
    """The wrapper only uses anyio: the same request works on trio and on asyncio."""

    async def main() -> dict[str, Any]:
        async with HttpCommunicator(
            WsgiToAsgi(echo_in_chunks(3)), "POST", "/", body=[b"ab", b"cdef"]
        ) as comm:
            response = await comm.get_response()
        return response

    response = anyio.run(main, backend=backend)
    assert response["body"] == b"abcdef"
