"""Server-sent events: text/event-stream framing, and the consumer's SSE helpers."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import anyio
import pytest
import trio
import trio.testing
from hypothesis import given, strategies as st

from trichannels.exceptions import UnexpectedMessage
from trichannels.generic.http import AsyncHttpConsumer, format_comment, format_event
from trichannels.testing import HttpCommunicator


@dataclass
class Event:
    data: str
    event: str = "message"
    id: str = ""
    retry: int | None = None


@dataclass
class EventStreamParser:
    """The WHATWG "interpret an event stream" algorithm, enough to check our framing."""

    events: list[Event] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    last_id: str = ""
    retry: int | None = None
    _data: list[str] = field(default_factory=list)
    _event: str = ""

    def feed(self, stream: bytes) -> None:
        for line in re.split(r"\r\n|\r|\n", stream.decode("utf-8")):
            self._line(line)

    def _line(self, line: str) -> None:
        if not line:
            if self._data:
                self.events.append(
                    Event(
                        "\n".join(self._data),
                        self._event or "message",
                        self.last_id,
                        self.retry,
                    )
                )
            self._data, self._event = [], ""
            return
        if line.startswith(":"):
            self.comments.append(line[1:].removeprefix(" "))
            return
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)


# Every async test runs with and without a handler watchdog (see conftest).
BOTH_INSTANCE_MODES = True


def parse(stream: bytes) -> EventStreamParser:
    parser = EventStreamParser()
    parser.feed(stream)
    return parser


# -- framing -------------------------------------------------------------------------------


def test_simple_event() -> None:
    """One line of data, the default event type."""
    assert format_event("hello") == b"data: hello\n\n"


def test_all_fields_in_order() -> None:
    """event, id, retry, then data; terminated by a blank line."""
    framed = format_event("x", event="update", id="42", retry=1500)
    assert framed == b"event: update\nid: 42\nretry: 1500\ndata: x\n\n"
    assert parse(framed).events == [Event("x", "update", "42", 1500)]


def test_int_id() -> None:
    """An int id is written in decimal."""
    assert format_event("x", id=7) == b"id: 7\ndata: x\n\n"


def test_empty_id_resets_last_event_id() -> None:
    """id='' is sent (it resets the client's Last-Event-ID)."""
    assert format_event("x", id="") == b"id: \ndata: x\n\n"


@pytest.mark.parametrize(
    ("data", "framed"),
    [
        ("a\nb", b"data: a\ndata: b\n\n"),
        ("a\r\nb", b"data: a\ndata: b\n\n"),
        ("a\rb", b"data: a\ndata: b\n\n"),
        ("a\n\nb\n", b"data: a\ndata: \ndata: b\ndata: \n\n"),
        ("", b"data: \n\n"),
        (" leading space", b"data:  leading space\n\n"),
        ("caf\u00e9 \u2603", "data: caf\u00e9 \u2603\n\n".encode()),
    ],
)
def test_multiline_data_and_newline_normalisation(data: str, framed: bytes) -> None:
    """Each line becomes a data: field; \\r\\n and \\r count as newlines."""
    assert format_event(data) == framed


@given(st.text())
def test_data_round_trips_through_a_spec_parser(data: str) -> None:
    """Whatever the text, a conforming client reads back the data with newlines as \\n."""
    parser = parse(format_event(data, event="e", id="1") + format_event("next"))
    expected = re.sub(r"\r\n|\r", "\n", data)
    assert parser.events == [Event(expected, "e", "1"), Event("next", "message", "1")]


@pytest.mark.parametrize(
    ("text", "framed"),
    [
        ("", b":\n\n"),
        ("keep-alive", b": keep-alive\n\n"),
        ("two\nlines", b": two\n: lines\n\n"),
        ("a\r\n\rb", b": a\n:\n: b\n\n"),
    ],
)
def test_comments(text: str, framed: bytes) -> None:
    """Comments are ':'-prefixed lines that clients ignore."""
    assert format_comment(text) == framed
    parsed = parse(framed + format_event("after"))
    assert [e.data for e in parsed.events] == ["after"]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"data": b"x"},
            TypeError,
            r"send_event\(\) data must be a str, got bytes b'x'",
        ),
        (
            {"data": None},
            TypeError,
            r"send_event\(\) data must be a str, got NoneType None",
        ),
        (
            {"event": "a\nb"},
            ValueError,
            r"send_event\(\) event must not contain a newline, got 'a\\nb'",
        ),
        (
            {"event": "a\rb"},
            ValueError,
            r"send_event\(\) event must not contain a newline, got 'a\\rb'",
        ),
        ({"event": 3}, TypeError, r"send_event\(\) event must be a str, got int 3"),
        (
            {"id": "1\r\n2"},
            ValueError,
            r"send_event\(\) id must not contain a newline, got '1\\r\\n2'",
        ),
        (
            {"id": "a\0b"},
            ValueError,
            r"send_event\(\) id must not contain NUL, got 'a\\x00b'",
        ),
        (
            {"id": 1.5},
            TypeError,
            r"send_event\(\) id must be a str or int, got float 1.5",
        ),
        (
            {"id": True},
            TypeError,
            r"send_event\(\) id must be a str or int, got bool True",
        ),
        (
            {"retry": -1},
            ValueError,
            r"send_event\(\) retry must be >= 0 milliseconds, got -1",
        ),
        (
            {"retry": "1000"},
            TypeError,
            r"send_event\(\) retry must be an int \(milliseconds\), got str '1000'",
        ),
        (
            {"retry": 1.5},
            TypeError,
            r"send_event\(\) retry must be an int \(milliseconds\), got float 1.5",
        ),
        (
            {"retry": False},
            TypeError,
            r"send_event\(\) retry must be an int \(milliseconds\), got bool False",
        ),
    ],
)
def test_bad_event_fields(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    """Bad event fields raise a specific error naming the field and the value."""
    arguments = {"data": "x", **kwargs}
    with pytest.raises(error, match=f"^{message}$"):
        format_event(**arguments)


def test_bad_comment() -> None:
    """A comment must be text."""
    with pytest.raises(
        TypeError, match=r"^send_comment\(\) text must be a str, got bytes b'hi'$"
    ):
        format_comment(b"hi")  # type: ignore[arg-type]


# -- the consumer ---------------------------------------------------------------------------


class Clock(AsyncHttpConsumer):
    """Streams one event per second from a child task, with a keep-alive comment between."""

    channel_layer_alias = None
    count: ClassVar[int] = 3
    log: ClassVar[list[str]] = []

    async def handle(self, body: bytes) -> None:
        await self.start_event_stream(headers=[(b"x-stream", b"clock")])
        self.start_soon(self.tick)

    async def tick(self) -> None:
        try:
            for n in range(1, self.count + 1):
                await anyio.sleep(1)
                await self.send_event(
                    f"tick {n}\nat {trio.current_time():g}", event="tick", id=n
                )
                await self.send_comment("keep-alive")
            await self.send_body(b"")
        finally:
            self.log.append("tick finally")


async def test_event_stream_from_child_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """start_event_stream headers, then events and comments, then the end of the stream."""
    Clock.log = []
    async with HttpCommunicator(Clock.as_asgi(), "GET", "/events/") as comm:
        await comm.send_input({"type": "http.request"})
        start = await comm.receive_output()
        assert start["headers"] == [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            (b"x-stream", b"clock"),
        ]
        stream = b""
        chunks = 0
        while True:
            part = await comm.receive_output(timeout=5)
            stream += part["body"]
            chunks += 1
            if not part["more_body"]:
                break
        await comm.wait()
    parsed = parse(stream)
    assert parsed.events == [
        Event(f"tick {n}\nat {n}", "tick", str(n)) for n in (1, 2, 3)
    ]
    assert parsed.comments == ["keep-alive"] * 3
    assert chunks == 7  # one chunk per event and per comment, plus the end
    assert Clock.log == ["tick finally"]


async def test_send_event_starts_the_stream() -> None:
    """send_event before any headers starts a text/event-stream response itself."""

    class Once(AsyncHttpConsumer):
        channel_layer_alias = None

        async def handle(self, body: bytes) -> None:
            await self.send_event("only", retry=10_000)
            await self.send_body(b"")

    async with HttpCommunicator(Once.as_asgi(), "GET", "/") as comm:
        response = await comm.get_response()
    assert response["status"] == 200
    assert (
        dict(response["headers"])[b"content-type"]
        == b"text/event-stream; charset=utf-8"
    )
    assert response["body"] == b"retry: 10000\ndata: only\n\n"


async def test_start_event_stream_header_overrides() -> None:
    """A header given to start_event_stream replaces the default of the same name."""

    class Custom(AsyncHttpConsumer):
        channel_layer_alias = None

        async def handle(self, body: bytes) -> None:
            await self.start_event_stream({"Cache-Control": "no-store"}, status=201)
            await self.send_body(b"")

    async with HttpCommunicator(Custom.as_asgi(), "GET", "/") as comm:
        response = await comm.get_response()
    assert response["status"] == 201
    assert response["headers"] == [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"x-accel-buffering", b"no"),
        (b"cache-control", b"no-store"),
    ]


async def test_event_after_stream_ended_is_refused() -> None:
    """Once the stream ended, send_event raises UnexpectedMessage."""

    class Ended(AsyncHttpConsumer):
        channel_layer_alias = None

        async def handle(self, body: bytes) -> None:
            await self.send_event("one")
            await self.send_body(b"")
            await self.send_event("two")

    async def scenario() -> None:
        async with HttpCommunicator(Ended.as_asgi(), "GET", "/") as comm:
            await comm.get_response()
            await comm.wait()

    with pytest.raises(
        UnexpectedMessage,
        match=r"^unexpected message type 'http.response.body': the response is already complete$",
    ):
        await scenario()


async def test_bad_event_in_consumer_aborts_the_stream() -> None:
    """A bad send_event argument raises in the handler; the started stream is aborted."""

    class Bad(AsyncHttpConsumer):
        channel_layer_alias = None

        async def handle(self, body: bytes) -> None:
            await self.send_event("fine")
            await self.send_event("x", event="two\nlines")

    outputs: list[Any] = []

    async def scenario() -> None:
        async with HttpCommunicator(Bad.as_asgi(), "GET", "/") as comm:
            await comm.send_input({"type": "http.request"})
            while True:
                outputs.append(await comm.receive_output())

    with pytest.raises(
        ValueError,
        match=r"^send_event\(\) event must not contain a newline, got 'two\\nlines'$",
    ):
        await scenario()
    assert [m["type"] for m in outputs] == ["http.response.start", "http.response.body"]


async def test_keepalive_comments_until_client_leaves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A keep-alive loop in handle() sends a comment every 15 s and stops when the client leaves."""
    stopped: list[float] = []

    class Idle(AsyncHttpConsumer):
        channel_layer_alias = None

        async def handle(self, body: bytes) -> None:
            await self.start_event_stream()
            try:
                while True:
                    await anyio.sleep(15)
                    await self.send_comment()
            finally:
                stopped.append(trio.current_time())

    async with HttpCommunicator(Idle.as_asgi(), "GET", "/") as comm:
        await comm.send_input({"type": "http.request"})
        await comm.receive_output()
        for n in (1, 2):
            assert (await comm.receive_output(timeout=20))["body"] == b":\n\n"
            assert trio.current_time() == 15 * n
        await comm.send_input({"type": "http.disconnect"})
        await comm.wait()
    assert stopped == [30]
