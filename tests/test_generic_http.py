"""AsyncHttpConsumer: bodies and limits, responses, streaming, errors, long polling."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import anyio
import pytest
import trio
import trio.testing

from trichannels.exceptions import UnexpectedMessage
from trichannels.generic.http import AsyncHttpConsumer
from trichannels.layers import InMemoryChannelLayer, channel_layers
from trichannels.testing import ApplicationCommunicator, HttpCommunicator
from trichannels.types import Message, Scope

# Every async test runs with and without a handler watchdog (see conftest).
BOTH_INSTANCE_MODES = True


def http_scope(**overrides: Any) -> Scope:
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/upload/",
        "raw_path": b"/upload/",
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "client": ("127.0.0.1", 51000),
        "server": ("testserver", 80),
    }
    scope.update(overrides)
    return scope


class Echo(AsyncHttpConsumer):
    """Answers with the request body; records disconnect() calls."""

    channel_layer_alias = None
    disconnects: ClassVar[list[str]] = []

    async def handle(self, body: bytes) -> None:
        await self.send_response(
            200,
            body,
            headers={
                "Content-Type": "application/octet-stream",
                "X-Len": str(len(body)),
            },
        )

    async def disconnect(self) -> None:
        self.disconnects.append(self.scope["path"])


@pytest.fixture(autouse=True)
def _reset_records() -> None:
    Echo.disconnects.clear()


# -- requests and responses ----------------------------------------------------------------


async def test_send_response_with_headers() -> None:
    """send_response sends status, lowercased headers (bytes or str) and the body."""
    async with HttpCommunicator(
        Echo.as_asgi(), "POST", "/echo/", body=b"hello"
    ) as comm:
        response = await comm.get_response()
        await comm.wait()
    assert response == {
        "status": 200,
        "headers": [
            (b"content-type", b"application/octet-stream"),
            (b"x-len", b"5"),
            (b"content-length", b"5"),
        ],
        "body": b"hello",
    }
    assert Echo.disconnects == ["/echo/"]


async def test_body_gathered_from_chunks() -> None:
    """handle() gets the whole body, joined from every http.request chunk."""
    chunks = [b"ab", b"", b"cde", b"f"]
    async with HttpCommunicator(Echo.as_asgi(), "POST", "/", body=chunks) as comm:
        assert (await comm.get_response())["body"] == b"abcdef"


async def test_instance_ends_after_final_body() -> None:
    """Once the final body is sent and handle() returns, the instance ends (disconnect() runs once)."""
    after: list[str] = []

    class Continues(AsyncHttpConsumer):
        channel_layer_alias = None

        async def handle(self, body: bytes) -> None:
            await self.send_response(204, b"")
            after.append("handle went on after the response")  # not cut short

        async def disconnect(self) -> None:
            after.append("disconnect")

    async with HttpCommunicator(Continues.as_asgi(), "GET", "/") as comm:
        assert (await comm.get_response())["status"] == 204
        await comm.wait()
    assert after == ["handle went on after the response", "disconnect"]


async def test_response_state_properties() -> None:
    """response_started / response_complete follow the messages sent."""
    seen: list[tuple[bool, bool]] = []

    class Watch(AsyncHttpConsumer):
        channel_layer_alias = None

        async def handle(self, body: bytes) -> None:
            seen.append((self.response_started, self.response_complete))
            await self.send_headers(200, [(b"content-type", b"text/plain")])
            seen.append((self.response_started, self.response_complete))
            await self.send_body(b"a", more_body=True)
            await self.send_body(b"b")
            seen.append((self.response_started, self.response_complete))

    async with HttpCommunicator(Watch.as_asgi(), "GET", "/") as comm:
        assert (await comm.get_response())["body"] == b"ab"
    assert seen == [(False, False), (True, False), (True, True)]


async def test_handle_not_implemented_gives_500() -> None:
    """A consumer without handle() raises NotImplementedError after answering 500."""

    class Nothing(AsyncHttpConsumer):
        channel_layer_alias = None

    responses: list[dict[str, Any]] = []

    async def scenario() -> None:
        async with HttpCommunicator(Nothing.as_asgi(), "GET", "/") as comm:
            responses.append(await comm.get_response())

    with pytest.raises(
        NotImplementedError,
        match=r"^Subclasses of AsyncHttpConsumer must provide a handle\(\) method\.$",
    ):
        await scenario()
    assert [(r["status"], r["body"]) for r in responses] == [
        (500, b"Internal Server Error")
    ]


async def test_trailers_complete_the_response() -> None:
    """With trailers announced, the response completes at the last trailers message."""

    class Trailing(AsyncHttpConsumer):
        channel_layer_alias = None

        async def handle(self, body: bytes) -> None:
            await self.send(
                {"type": "http.response.start", "status": 200, "trailers": True}
            )
            await self.send_body(b"data")
            assert not self.response_complete
            await self.send(
                {"type": "http.response.trailers", "headers": [(b"x-sum", b"1")]}
            )

    async with ApplicationCommunicator(Trailing.as_asgi(), http_scope()) as comm:
        await comm.send_input({"type": "http.request"})
        kinds = [(await comm.receive_output())["type"] for _ in range(3)]
        await comm.wait()
    assert kinds == [
        "http.response.start",
        "http.response.body",
        "http.response.trailers",
    ]


# -- body size limit -------------------------------------------------------------------------


class CountingReceive:
    """A server ``receive`` producing ``count`` body chunks on demand, counting how many were taken."""

    def __init__(self, count: int, size: int) -> None:
        self.count = count
        self.size = size
        self.pulled = 0
        self.finished = trio.Event()

    async def __call__(self) -> Message:
        if self.pulled < self.count:
            self.pulled += 1
            return {
                "type": "http.request",
                "body": b"x" * self.size,
                "more_body": self.pulled < self.count,
            }
        await self.finished.wait()
        return {"type": "http.disconnect"}


class Collect:
    """A server ``send`` collecting messages."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])


async def test_streamed_body_over_limit_gets_413_without_reading_the_rest() -> None:
    """A 1 MB chunked upload against a 10 KiB limit: 413 after ~11 chunks, the rest never read."""
    receive = CountingReceive(count=1000, size=1024)
    send = Collect()
    app = Echo.as_asgi(max_body_size=10 * 1024)
    with trio.fail_after(5):
        await app(http_scope(), receive, send)
    assert send.status == 413
    assert send.body == b"Request body exceeds the limit of 10240 bytes"
    assert send.messages[0]["headers"] == [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"45"),
    ]
    # 11 chunks cross the limit; at most max_pending_events (2) + 1 more are read ahead.
    assert 11 <= receive.pulled <= 14
    assert Echo.disconnects == ["/upload/"]


async def test_declared_content_length_over_limit_gets_413_at_once() -> None:
    """A Content-Length over the limit is refused before any body is gathered."""
    receive = CountingReceive(count=1000, size=1024)
    send = Collect()
    scope = http_scope(headers=[(b"content-length", b"1024000")])
    with trio.fail_after(5):
        await Echo.as_asgi(max_body_size=1000)(scope, receive, send)
    assert send.status == 413
    assert receive.pulled <= 4


async def test_body_exactly_at_limit_is_accepted() -> None:
    """A body of exactly max_body_size bytes is handled."""
    app = Echo.as_asgi(max_body_size=6)
    async with HttpCommunicator(app, "POST", "/", body=[b"abc", b"def"]) as comm:
        assert (await comm.get_response())["body"] == b"abcdef"
    async with HttpCommunicator(app, "POST", "/", body=[b"abc", b"defg"]) as comm:
        assert (await comm.get_response())["status"] == 413


async def test_no_limit_with_none() -> None:
    """max_body_size=None accepts any size."""
    async with HttpCommunicator(
        Echo.as_asgi(max_body_size=None), "POST", "/", body=[b"x" * 100_000] * 40
    ) as comm:
        assert len((await comm.get_response())["body"]) == 4_000_000


async def test_zero_limit_refuses_any_body() -> None:
    """max_body_size=0 allows only empty bodies."""
    app = Echo.as_asgi(max_body_size=0)
    async with HttpCommunicator(app, "GET", "/") as comm:
        assert (await comm.get_response())["status"] == 200
    async with HttpCommunicator(app, "POST", "/", body=b"x") as comm:
        assert (await comm.get_response())["status"] == 413


# -- streaming ----------------------------------------------------------------------------------


class Ticker(AsyncHttpConsumer):
    """Streams ``ticks`` chunks, one per second, from a child task."""

    channel_layer_alias = None
    ticks: ClassVar[int | None] = 3
    log: ClassVar[list[str]] = []

    async def handle(self, body: bytes) -> None:
        await self.send_headers(200, [(b"content-type", b"text/plain")])
        self.start_soon(self.stream)
        self.log.append("handle returned")

    async def stream(self) -> None:
        n = 0
        try:
            while self.ticks is None or n < self.ticks:
                await anyio.sleep(1)
                n += 1
                await self.send_body(f"tick {n}\n".encode(), more_body=True)
            await self.send_body(b"")
        finally:
            self.log.append(f"stream finally after {n}")

    async def disconnect(self) -> None:
        self.log.append("disconnect")


@pytest.fixture
def ticker_log() -> list[str]:
    Ticker.log = []
    return Ticker.log


async def test_streaming_from_child_task(
    autojump_clock: trio.testing.MockClock, ticker_log: list[str]
) -> None:
    """A child task streams the body chunk by chunk; the instance ends after the last one."""
    async with HttpCommunicator(Ticker.as_asgi(), "GET", "/") as comm:
        await comm.send_input({"type": "http.request"})
        assert (await comm.receive_output())["status"] == 200
        for n in (1, 2, 3):
            chunk = await comm.receive_output(timeout=5)
            assert (chunk["body"], chunk["more_body"]) == (f"tick {n}\n".encode(), True)
            assert trio.current_time() == n
        assert await comm.receive_output() == {
            "type": "http.response.body",
            "body": b"",
            "more_body": False,
        }
        await comm.wait()
    assert ticker_log == ["handle returned", "stream finally after 3", "disconnect"]


async def test_disconnect_mid_stream_cancels_child_task(
    autojump_clock: trio.testing.MockClock, ticker_log: list[str]
) -> None:
    """http.disconnect cancels the streaming child at once (no close_timeout wait); its finally runs."""
    async with HttpCommunicator(Ticker.as_asgi(ticks=None), "GET", "/") as comm:
        await comm.send_input({"type": "http.request"})
        await comm.receive_output()
        assert (await comm.receive_output(timeout=5))["body"] == b"tick 1\n"
        await comm.send_input({"type": "http.disconnect"})
        await comm.wait()
        assert trio.current_time() == 1  # ended without waiting out close_timeout
        assert await comm.receive_nothing(timeout=10)
    assert ticker_log == ["handle returned", "stream finally after 1", "disconnect"]


async def test_disconnect_cancels_a_handle_that_streams_itself(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A handle() that loops forever is cancelled as soon as the client disconnects."""
    log: list[str] = []

    class Forever(AsyncHttpConsumer):
        channel_layer_alias = None

        async def handle(self, body: bytes) -> None:
            await self.send_headers()
            try:
                while True:
                    await self.send_body(b".", more_body=True)
                    await anyio.sleep(1)
            finally:
                log.append(f"handle finally at {trio.current_time()}")

        async def disconnect(self) -> None:
            log.append("disconnect")

    async with HttpCommunicator(Forever.as_asgi(), "GET", "/") as comm:
        await comm.send_input({"type": "http.request"})
        for _ in range(4):
            await comm.receive_output(timeout=5)
        await comm.send_input({"type": "http.disconnect"})
        await comm.wait()
    assert log == ["handle finally at 2.0", "disconnect"]


async def test_disconnect_while_handle_waits_after_headers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A handle() that sent its headers and waits (long polling) is cancelled within 0.2 s of a disconnect."""
    log: list[str] = []

    class Waits(AsyncHttpConsumer):
        channel_layer_alias = None

        async def handle(self, body: bytes) -> None:
            await self.send_headers()
            try:
                await anyio.sleep(60)
            finally:
                log.append(f"handle finally at {trio.current_time():.1f}")

    async with HttpCommunicator(Waits.as_asgi(), "GET", "/") as comm:
        await comm.send_input({"type": "http.request"})
        await comm.receive_output()
        await trio.sleep(5)
        await comm.send_input({"type": "http.disconnect"})
        await comm.wait(timeout=1)
    assert log == ["handle finally at 5.0"]


async def test_handle_that_has_sent_nothing_finishes_its_work(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Before anything is sent, handle() is not watched: its work completes, and the server gets the late response."""
    log: list[str] = []

    class Computes(AsyncHttpConsumer):
        channel_layer_alias = None

        async def handle(self, body: bytes) -> None:
            await anyio.sleep(10)  # stands for a slow query
            log.append(f"computed at {trio.current_time():.1f}")
            await self.send_response(200, b"late")

        async def disconnect(self) -> None:
            log.append("disconnect")

    async with HttpCommunicator(Computes.as_asgi(), "GET", "/") as comm:
        await comm.send_input({"type": "http.request"})
        await trio.sleep(1)
        await comm.send_input({"type": "http.disconnect"})
        await comm.wait(timeout=20)
        assert (await comm.receive_output())["status"] == 200
        assert (await comm.receive_output())["body"] == b"late"
    assert log == ["computed at 10.0", "disconnect"]


async def test_send_after_client_gone_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A send once the client has disconnected is dropped, not passed to the server."""

    class Late(AsyncHttpConsumer):
        channel_layer_alias = None

        async def handle(self, body: bytes) -> None:
            await self.send_headers()
            await anyio.sleep_forever()

        async def disconnect(self) -> None:
            await self.send_body(b"too late")

    caplog.set_level(logging.DEBUG, logger="trichannels.generic.http")
    async with HttpCommunicator(Late.as_asgi(), "GET", "/") as comm:
        await comm.send_input({"type": "http.request"})
        assert (await comm.receive_output())["type"] == "http.response.start"
        await comm.send_input({"type": "http.disconnect"})
        await comm.wait()
        assert await comm.receive_nothing(timeout=0)
    assert (
        "dropping 'http.response.body': the client has disconnected" in caplog.messages
    )


# -- errors -------------------------------------------------------------------------------------


async def test_exception_before_response_gives_500_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An error before the response started: 500 to the client, logged once, then it propagates."""

    class Broken(AsyncHttpConsumer):
        channel_layer_alias = None

        async def handle(self, body: bytes) -> None:
            raise ZeroDivisionError("boom")

    responses: list[dict[str, Any]] = []

    async def scenario() -> None:
        async with HttpCommunicator(Broken.as_asgi(), "GET", "/broken/") as comm:
            responses.append(await comm.get_response())

    with pytest.raises(ZeroDivisionError, match=r"^boom$"):
        await scenario()
    assert responses == [
        {
            "status": 500,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", b"21"),
            ],
            "body": b"Internal Server Error",
        }
    ]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "/broken/" in errors[0].getMessage()


async def test_exception_after_response_started_aborts() -> None:
    """An error mid-stream (in a child task): no more body, no 500, the error propagates."""

    class BreaksMidway(AsyncHttpConsumer):
        channel_layer_alias = None

        async def handle(self, body: bytes) -> None:
            await self.send_headers(200)
            self.start_soon(self.stream)

        async def stream(self) -> None:
            await self.send_body(b"partial", more_body=True)
            raise KeyError("midway")

    outputs: list[Message] = []

    async def scenario() -> None:
        async with HttpCommunicator(BreaksMidway.as_asgi(), "GET", "/") as comm:
            await comm.send_input({"type": "http.request"})
            while True:
                outputs.append(await comm.receive_output())

    with pytest.raises(KeyError, match=r"^'midway'$"):
        await scenario()
    assert [m["type"] for m in outputs] == ["http.response.start", "http.response.body"]
    assert outputs[1]["more_body"] is True


async def test_disconnect_hook_error_is_logged_and_propagates(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception from disconnect() is logged and reaches the server."""

    class BadCleanup(AsyncHttpConsumer):
        channel_layer_alias = None

        async def handle(self, body: bytes) -> None:
            await self.send_response(200, b"ok")

        async def disconnect(self) -> None:
            raise OSError("cleanup failed")

    async def scenario() -> None:
        async with HttpCommunicator(BadCleanup.as_asgi(), "GET", "/") as comm:
            assert (await comm.get_response())["body"] == b"ok"
            await comm.wait()

    with pytest.raises(OSError, match=r"^cleanup failed$"):
        await scenario()
    assert [
        m
        for m in caplog.messages
        if m.endswith("BadCleanup.disconnect() raised for GET /")
    ]


async def test_handle_returning_without_response_is_an_error() -> None:
    """handle() returning with nothing sent and nothing left to send: 500 and a clear error."""

    class Forgetful(AsyncHttpConsumer):
        channel_layer_alias = None

        async def handle(self, body: bytes) -> None:
            pass

    responses: list[dict[str, Any]] = []

    async def scenario() -> None:
        async with HttpCommunicator(Forgetful.as_asgi(), "GET", "/") as comm:
            responses.append(await comm.get_response())

    with pytest.raises(
        RuntimeError,
        match=r"^test_handle_returning_without_response_is_an_error.<locals>.Forgetful never sent a "
        r"response: handle\(\) and its child tasks have returned, and with no channel layer "
        r"nothing else can send one$",
    ):
        await scenario()
    assert [r["status"] for r in responses] == [500]


async def test_child_ending_with_response_unfinished_is_an_error() -> None:
    """The last child task ending with the response unfinished aborts it with a clear error."""

    class Unfinished(AsyncHttpConsumer):
        channel_layer_alias = None

        async def handle(self, body: bytes) -> None:
            await self.send_headers()
            self.start_soon(self.stream)

        async def stream(self) -> None:
            await self.send_body(b"half", more_body=True)

    outputs: list[Message] = []

    async def scenario() -> None:
        async with HttpCommunicator(Unfinished.as_asgi(), "GET", "/") as comm:
            await comm.send_input({"type": "http.request"})
            while True:
                outputs.append(await comm.receive_output())

    with pytest.raises(
        RuntimeError,
        match=r"^test_child_ending_with_response_unfinished_is_an_error.<locals>.Unfinished left the "
        r"response unfinished: handle\(\) and its child tasks have returned, and with no channel "
        r"layer nothing else can finish it$",
    ):
        await scenario()
    assert [m["type"] for m in outputs] == ["http.response.start", "http.response.body"]


# -- ordering and bad inputs -------------------------------------------------------------------


class Scripted(AsyncHttpConsumer):
    """Runs the ``script`` coroutine function as its handle()."""

    channel_layer_alias = None
    script: ClassVar[Any] = None

    async def handle(self, body: bytes) -> None:
        await type(self).script(self)


async def run_script(script: Any) -> None:
    """Run ``script(consumer)`` as handle() and surface its exception."""

    class This(Scripted):
        pass

    This.script = script
    async with HttpCommunicator(This.as_asgi(), "GET", "/") as comm:
        await comm.send_input({"type": "http.request"})
        await comm.wait()


async def _body_first(c: AsyncHttpConsumer) -> None:
    await c.send_body(b"x")


async def _start_twice(c: AsyncHttpConsumer) -> None:
    await c.send_headers()
    await c.send_headers()


async def _after_complete(c: AsyncHttpConsumer) -> None:
    await c.send_response(200, b"done")
    await c.send_body(b"more")


async def _response_twice(c: AsyncHttpConsumer) -> None:
    await c.send_headers()
    await c.send_response(200, b"")


@pytest.mark.parametrize(
    ("script", "message"),
    [
        (
            _body_first,
            r"unexpected message type 'http.response.body': send the response start "
            r"\(send_headers\(\)\) first",
        ),
        (
            _start_twice,
            r"unexpected message type 'http.response.start': the response has already started",
        ),
        (
            _after_complete,
            r"unexpected message type 'http.response.body': the response is already complete",
        ),
        (
            _response_twice,
            r"unexpected message type 'http.response.start': the response has already started",
        ),
    ],
)
async def test_out_of_order_sends_are_refused(script: Any, message: str) -> None:
    """Responses go start, body..., final body; anything else raises UnexpectedMessage."""
    with pytest.raises(UnexpectedMessage, match=f"^{message}$"):
        await run_script(script)


def _sender(**kwargs: Any) -> Any:
    async def script(c: AsyncHttpConsumer) -> None:
        if "body" in kwargs:
            await c.send_headers()
            await c.send_body(**kwargs)
        else:
            await c.send_headers(**kwargs)

    return script


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"status": "200"},
            TypeError,
            r"http.response.start 'status' must be an int, got str '200'",
        ),
        (
            {"status": 99},
            ValueError,
            r"http.response.start 'status' must be between 100 and 599, got 99",
        ),
        (
            {"status": True},
            TypeError,
            r"http.response.start 'status' must be an int, got bool True",
        ),
        (
            {"headers": "x-a: b"},
            TypeError,
            r"headers must be \(name, value\) pairs or a mapping, got str 'x-a: b'",
        ),
        (
            {"headers": [(b"x-a",)]},
            TypeError,
            r"each header must be a \(name, value\) pair, got \(b'x-a',\)",
        ),
        (
            {"headers": [(1, b"v")]},
            TypeError,
            r"header name must be bytes or str, got int 1",
        ),
        (
            {"headers": [(b"x a", b"v")]},
            ValueError,
            r"header name b'x a' is not a valid HTTP token",
        ),
        (
            {"headers": [("caf\u00e9", b"v")]},
            ValueError,
            r"header name 'caf\u00e9' is not ASCII",
        ),
        (
            {"headers": [(b"x-a", 5)]},
            TypeError,
            r"header b'x-a' value must be bytes or str, got int 5",
        ),
        (
            {"headers": [(b"x-a", b"v\r\nset-cookie: a=b")]},
            ValueError,
            r"header b'x-a' value contains CR, LF or NUL: b'v\\r\\nset-cookie: a=b'",
        ),
        (
            {"headers": [("x-a", "\u2603")]},
            ValueError,
            r"header 'x-a' value '\u2603' is not latin-1; encode it yourself",
        ),
        (
            {"body": "text"},
            TypeError,
            r"http.response.body 'body' must be bytes, got str 'text'",
        ),
        (
            {"body": b"", "more_body": "yes"},
            TypeError,
            r"http.response.body 'more_body' must be a bool, got str 'yes'",
        ),
    ],
)
async def test_bad_send_arguments_name_the_field(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    """send_headers / send_body check their arguments and name what is wrong."""
    with pytest.raises(error, match=f"^{message}$"):
        await run_script(_sender(**kwargs))


async def test_send_response_checks_body_before_sending_anything() -> None:
    """send_response with a str body fails before the status line goes out."""
    outputs: list[Message] = []

    class Bad(AsyncHttpConsumer):
        channel_layer_alias = None

        async def handle(self, body: bytes) -> None:
            await self.send_response(200, "not bytes")  # type: ignore[arg-type]

    async def scenario() -> None:
        async with HttpCommunicator(Bad.as_asgi(), "GET", "/") as comm:
            await comm.send_input({"type": "http.request"})
            outputs.append(await comm.receive_output())

    with pytest.raises(
        TypeError,
        match=r"^http.response.body 'body' must be bytes, got str 'not bytes'$",
    ):
        await scenario()
    assert [m.get("status") for m in outputs] == [
        500
    ]  # only the 500; never a 200 start


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (-1, ValueError, r"max_body_size must be >= 0 bytes, got -1"),
        (
            "10MB",
            TypeError,
            r"max_body_size must be an int \(bytes\) or None, got str '10MB'",
        ),
        (
            1.5,
            TypeError,
            r"max_body_size must be an int \(bytes\) or None, got float 1.5",
        ),
        (
            True,
            TypeError,
            r"max_body_size must be an int \(bytes\) or None, got bool True",
        ),
    ],
)
def test_bad_max_body_size(value: object, error: type[Exception], message: str) -> None:
    """as_asgi checks max_body_size at configuration time."""
    with pytest.raises(error, match=f"^{message}$"):
        Echo.as_asgi(max_body_size=value)


def test_bad_max_body_size_on_class() -> None:
    """A subclass with a bad max_body_size fails at as_asgi(), naming the value."""

    class Huge(Echo):
        max_body_size = -5

    with pytest.raises(ValueError, match=r"^max_body_size must be >= 0 bytes, got -5$"):
        Huge.as_asgi()


def test_unknown_as_asgi_keyword() -> None:
    """Unknown as_asgi keywords are refused by the core, naming them."""
    with pytest.raises(
        TypeError,
        match=r"^Echo.as_asgi\(\) got unexpected keyword argument\(s\) 'max_size'; "
        r"only existing class attributes can be set$",
    ):
        Echo.as_asgi(max_size=10)


async def test_raw_send_is_validated() -> None:
    """self.send() of a message that is not an HTTP response message raises, naming its type."""

    async def script(c: AsyncHttpConsumer) -> None:
        await c.send({"type": "websocket.send", "text": "hi"})

    with pytest.raises(
        ValueError,
        match=r"^unknown message type 'websocket.send' for a 'http' connection; expected one of "
        r"'http.response.start', .*$",
    ):
        await run_script(script)


async def test_bad_event_stream_headers() -> None:
    """start_event_stream checks its extra headers like send_headers does."""

    async def script(c: AsyncHttpConsumer) -> None:
        await c.start_event_stream(headers=[(b"x-a", None)])  # type: ignore[list-item]

    with pytest.raises(
        TypeError,
        match=r"^header b'x-a' value must be bytes or str, got NoneType None$",
    ):
        await run_script(script)


@pytest.mark.parametrize("scope_type", ["websocket", "lifespan"])
async def test_non_http_scope_refused(scope_type: str) -> None:
    """The HTTP consumer only serves 'http' scopes."""

    async def receive() -> Message:  # pragma: no cover
        raise AssertionError

    with pytest.raises(
        ValueError,
        match=rf"^Echo can only serve 'http' scopes, got scope type '{scope_type}'$",
    ):
        await Echo()({"type": scope_type, "path": "/"}, receive, Collect())


# -- long polling ----------------------------------------------------------------------------


class Mailbox:
    """Something a long-poll waits on: ``put`` wakes every waiter."""

    def __init__(self) -> None:
        self._event = anyio.Event()
        self.value = b""

    def put(self, value: bytes) -> None:
        self.value = value
        self._event.set()
        self._event = anyio.Event()

    async def wait(self) -> bytes:
        await self._event.wait()
        return self.value


class EventLongPoll(AsyncHttpConsumer):
    """Waits for the mailbox up to ``poll_timeout`` seconds; 200 with the value, else 204."""

    channel_layer_alias = None
    mailbox: ClassVar[Mailbox] = Mailbox()
    poll_timeout: ClassVar[float] = 30.0

    async def handle(self, body: bytes) -> None:
        with anyio.move_on_after(self.poll_timeout):
            value = await self.mailbox.wait()
            await self.send_response(200, value)
            return
        await self.send_response(204, b"")


async def test_long_poll_on_event_times_out_with_204(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Nothing happens: the poll answers 204 exactly at its timeout."""
    async with HttpCommunicator(
        EventLongPoll.as_asgi(mailbox=Mailbox()), "GET", "/poll/"
    ) as comm:
        response = await comm.get_response(timeout=60)
        assert (response["status"], trio.current_time()) == (204, 30)


async def test_long_poll_on_event_answers_when_woken(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """A put() while the poll waits answers it at once with 200."""
    mailbox = Mailbox()

    async def later() -> None:
        await trio.sleep(7)
        mailbox.put(b"news")

    nursery.start_soon(later)
    async with HttpCommunicator(
        EventLongPoll.as_asgi(mailbox=mailbox), "GET", "/poll/"
    ) as comm:
        response = await comm.get_response(timeout=60)
    assert (response["status"], response["body"], trio.current_time()) == (
        200,
        b"news",
        7,
    )


class LayerLongPoll(AsyncHttpConsumer):
    """Joins a group, answers the first group event with 200, or 204 after ``poll_timeout``."""

    channel_layer_alias = "longpoll"
    poll_timeout: ClassVar[float] = 30.0
    group: ClassVar[str] = "updates"

    async def handle(self, body: bytes) -> None:
        assert self.channel_layer is not None
        await self.channel_layer.group_add(self.group, self.channel_name)
        self.start_soon(self.time_out)

    async def time_out(self) -> None:
        await anyio.sleep(self.poll_timeout)
        if not self.response_started:
            await self.send_response(204, b"")

    async def update_ready(self, event: Message) -> None:  # "update.ready" events
        if self.response_started:
            return
        await self.send_response(
            200, event["text"].encode(), headers=[(b"content-type", b"text/plain")]
        )

    async def disconnect(self) -> None:
        assert self.channel_layer is not None
        await self.channel_layer.group_discard(self.group, self.channel_name)


@pytest.fixture
async def longpoll_layer() -> AsyncIterator[InMemoryChannelLayer]:
    layer = InMemoryChannelLayer()
    channel_layers.set("longpoll", layer)
    try:
        async with layer:
            yield layer
    finally:
        channel_layers.set("longpoll", None)


async def test_long_poll_on_layer_answers_group_event(
    autojump_clock: trio.testing.MockClock,
    longpoll_layer: InMemoryChannelLayer,
    nursery: trio.Nursery,
) -> None:
    """A group_send while the poll waits answers it with 200; the timeout task is cancelled."""

    async def publish() -> None:
        await trio.sleep(12)
        await longpoll_layer.group_send(
            "updates", {"type": "update.ready", "text": "v2"}
        )

    nursery.start_soon(publish)
    async with HttpCommunicator(LayerLongPoll.as_asgi(), "GET", "/poll/") as comm:
        response = await comm.get_response(timeout=60)
        await comm.wait()
    assert (response["status"], response["body"], trio.current_time()) == (
        200,
        b"v2",
        12,
    )
    assert longpoll_layer.statistics().members == 0  # disconnect() left the group


async def test_long_poll_on_layer_times_out_with_204(
    autojump_clock: trio.testing.MockClock, longpoll_layer: InMemoryChannelLayer
) -> None:
    """No group event: 204 at the timeout, and the group is left."""
    async with HttpCommunicator(
        LayerLongPoll.as_asgi(poll_timeout=25.0), "GET", "/poll/"
    ) as comm:
        response = await comm.get_response(timeout=60)
        await comm.wait()
    assert (response["status"], trio.current_time()) == (204, 25)
    assert longpoll_layer.statistics().members == 0


async def test_long_poll_client_gone_leaves_group(
    autojump_clock: trio.testing.MockClock, longpoll_layer: InMemoryChannelLayer
) -> None:
    """The client leaving mid-poll ends the instance at once and leaves the group."""
    async with HttpCommunicator(LayerLongPoll.as_asgi(), "GET", "/poll/") as comm:
        await comm.send_input({"type": "http.request"})
        assert await comm.receive_nothing(timeout=5)
        assert longpoll_layer.statistics().members == 1
        await comm.send_input({"type": "http.disconnect"})
        await comm.wait()
    assert trio.current_time() == 5
    assert longpoll_layer.statistics().members == 0


def test_runs_on_asyncio_too(backend: str) -> None:
    """Body gathering, a child-task stream and a disconnect behave the same on asyncio."""
    log: list[str] = []

    class Stream(AsyncHttpConsumer):
        channel_layer_alias = None

        async def handle(self, body: bytes) -> None:
            await self.send_headers()
            self.start_soon(self.stream, body)

        async def stream(self, body: bytes) -> None:
            try:
                await self.send_body(body, more_body=True)
                await anyio.sleep_forever()
            finally:
                log.append("stream cancelled")

        async def disconnect(self) -> None:
            log.append("disconnect")

    async def main() -> list[Message]:
        outputs = []
        with anyio.fail_after(5):
            async with HttpCommunicator(Stream.as_asgi(), "POST", "/") as comm:
                await comm.send_input({"type": "http.request", "body": b"ab"})
                outputs.append(await comm.receive_output())
                outputs.append(await comm.receive_output())
                await comm.send_input({"type": "http.disconnect"})
                await comm.wait()
        return outputs

    outputs = anyio.run(main, backend=backend)
    assert [m.get("body") for m in outputs] == [None, b"ab"]
    assert log == ["stream cancelled", "disconnect"]


async def test_send_response_keeps_an_explicit_content_length() -> None:
    """send_response adds content-length only when the caller did not give one."""

    class Sized(AsyncHttpConsumer):
        channel_layer_alias = None

        async def handle(self, body: bytes) -> None:
            await self.send_response(200, b"abc", headers=[(b"content-length", b"3")])

    async with HttpCommunicator(Sized.as_asgi(), "GET", "/") as comm:
        response = await comm.get_response()
    assert response["headers"] == [(b"content-length", b"3")]


async def test_send_response_goes_through_an_overridden_send() -> None:
    """A subclass's send() sees both messages of send_response, checked and in order."""
    seen: list[str] = []

    class Logged(AsyncHttpConsumer):
        channel_layer_alias = None

        async def send(self, message: Message) -> None:
            seen.append(message["type"])
            await super().send(message)

        async def handle(self, body: bytes) -> None:
            await self.send_response(201, b"made")

    async with HttpCommunicator(Logged.as_asgi(), "POST", "/") as comm:
        response = await comm.get_response()
    assert seen == ["http.response.start", "http.response.body"]
    assert response["status"] == 201
    assert response["body"] == b"made"


async def test_request_body_in_chunks_and_in_one_message() -> None:
    """handle() gets the whole body whether it came in one message or in several."""
    bodies: list[bytes] = []

    class Echo(AsyncHttpConsumer):
        channel_layer_alias = None

        async def handle(self, body: bytes) -> None:
            bodies.append(body)
            await self.send_response(200, body)

    app = Echo.as_asgi()
    async with ApplicationCommunicator(app, http_scope(method="POST")) as comm:
        for chunk, more in [(b"ab", True), (b"", True), (b"cd", True), (b"", False)]:
            await comm.send_input(
                {"type": "http.request", "body": chunk, "more_body": more}
            )
        await comm.receive_output()
        assert (await comm.receive_output())["body"] == b"abcd"
        await comm.wait()
    async with ApplicationCommunicator(app, http_scope(method="POST")) as comm:
        await comm.send_input({"type": "http.request", "body": b"whole"})
        await comm.receive_output()
        assert (await comm.receive_output())["body"] == b"whole"
        await comm.wait()
    assert bodies == [b"abcd", b"whole"]
