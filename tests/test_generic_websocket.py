"""WebSocket consumers (sync, async, JSON) driven through WebsocketCommunicator.

Most behaviour tests run against both the async and the sync consumer: the
probe consumers below are the same script written twice. A probe's ``connect``
runs the calls in ``on_connect``; a text frame ``"call:(name, kwargs)"`` makes
``receive`` call ``self.name(**kwargs)``; any other frame is echoed.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
import trio
import trio.testing

from trichannels.consumer import RefusedLayerMessage, close_websockets
from trichannels.exceptions import (
    AcceptConnection,
    DenyConnection,
    InvalidChannelLayerError,
    StopConsumer,
    UnexpectedMessage,
)
from trichannels.generic.websocket import (
    AsyncJsonWebsocketConsumer,
    AsyncWebsocketConsumer,
    JsonWebsocketConsumer,
    WebsocketConsumer,
)
from trichannels.layers import InMemoryChannelLayer, channel_layers
from trichannels.testing import WebsocketCommunicator

Calls = Sequence[tuple[str, dict[str, Any]]]


# Every async test runs with and without a handler watchdog (see conftest).
BOTH_INSTANCE_MODES = True


def _parse_call(text: str) -> tuple[str, dict[str, Any]]:
    name, kwargs = ast.literal_eval(text.removeprefix("call:"))
    return name, kwargs


def call(name: str, **kwargs: Any) -> str:
    """The text frame that makes a probe call ``self.name(**kwargs)``."""
    return "call:" + repr((name, kwargs))


class AsyncProbe(AsyncWebsocketConsumer):
    on_connect: Calls | None = None
    events: list[Any] | None = None

    def record(self, *event: Any) -> None:
        if self.events is not None:
            self.events.append(event)

    async def fail(self, message: str) -> None:
        raise RuntimeError(message)

    async def connect(self) -> None:
        if self.on_connect is None:
            await super().connect()
            return
        for name, kwargs in self.on_connect:
            if name == "raise":
                raise kwargs["exc"]
            await getattr(self, name)(**kwargs)

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None
    ) -> None:
        if text_data is not None and text_data.startswith("call:"):
            name, kwargs = _parse_call(text_data)
            await getattr(self, name)(**kwargs)
        else:
            await self.send(text_data=text_data, bytes_data=bytes_data)

    async def disconnect(self, code: int) -> None:
        self.record("disconnect", code)


class SyncProbe(WebsocketConsumer):
    on_connect: Calls | None = None
    events: list[Any] | None = None

    def record(self, *event: Any) -> None:
        if self.events is not None:
            self.events.append(event)

    def fail(self, message: str) -> None:
        raise RuntimeError(message)

    def connect(self) -> None:
        if self.on_connect is None:
            super().connect()
            return
        for name, kwargs in self.on_connect:
            if name == "raise":
                raise kwargs["exc"]
            getattr(self, name)(**kwargs)

    def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None
    ) -> None:
        if text_data is not None and text_data.startswith("call:"):
            name, kwargs = _parse_call(text_data)
            getattr(self, name)(**kwargs)
        else:
            self.send(text_data=text_data, bytes_data=bytes_data)

    def disconnect(self, code: int) -> None:
        self.record("disconnect", code)


class AsyncJsonProbe(AsyncJsonWebsocketConsumer):
    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if isinstance(content, dict) and "close" in content:
            await self.send_json({"bye": True}, close=content["close"])
        else:
            await self.send_json({"echo": content})


class SyncJsonProbe(JsonWebsocketConsumer):
    def receive_json(self, content: Any, **kwargs: Any) -> None:
        if isinstance(content, dict) and "close" in content:
            self.send_json({"bye": True}, close=content["close"])
        else:
            self.send_json({"echo": content})


@pytest.fixture(params=["async", "sync"])
def probe(request: pytest.FixtureRequest) -> type[AsyncProbe | SyncProbe]:
    """The probe consumer class, async or sync."""
    return AsyncProbe if request.param == "async" else SyncProbe


@pytest.fixture(params=["async", "sync"])
def json_probe(
    request: pytest.FixtureRequest,
) -> type[AsyncJsonProbe | SyncJsonProbe]:
    """The JSON probe consumer class, async or sync."""
    return AsyncJsonProbe if request.param == "async" else SyncJsonProbe


@pytest.fixture
def no_layer() -> Iterator[None]:
    """Make sure no channel layer is configured for the default alias."""
    previous = channel_layers.set("default", None)
    try:
        yield
    finally:
        channel_layers.set("default", previous)


@pytest.fixture
async def layer() -> AsyncIterator[InMemoryChannelLayer]:
    """An open in-memory layer installed as the default alias (restored after)."""
    async with InMemoryChannelLayer() as installed:
        previous = channel_layers.set("default", installed)
        try:
            yield installed
        finally:
            channel_layers.set("default", previous)


def _error_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- handshake ----------------------------------------------------------------------


async def test_connect_accepts_by_default_and_echoes(probe: type[AsyncProbe]) -> None:
    """connect() accepts by default; text and binary frames reach receive() as such."""
    async with WebsocketCommunicator(probe.as_asgi(), "/ws/") as comm:
        assert await comm.connect() == (True, None)
        await comm.send_to(text_data="hello")
        assert await comm.receive_from() == "hello"
        await comm.send_to(bytes_data=b"\x00\x01")
        assert await comm.receive_from() == b"\x00\x01"
        await comm.send_to(text_data="")
        assert await comm.receive_from() == ""


async def test_accept_subprotocol_and_headers(probe: type[AsyncProbe]) -> None:
    """accept(subprotocol, headers) chooses an offered subprotocol and sends the headers."""
    app = probe.as_asgi(
        on_connect=[
            ("accept", {"subprotocol": "v2", "headers": [(b"x-server", b"probe")]})
        ]
    )
    async with WebsocketCommunicator(app, "/ws/", subprotocols=["v1", "v2"]) as comm:
        assert await comm.connect() == (True, "v2")
        assert comm.response_headers == [(b"x-server", b"probe")]


async def test_accept_without_headers_sends_no_headers_key(
    probe: type[AsyncProbe],
) -> None:
    """accept() sends Channels' message: the subprotocol key, and headers only when given."""
    async with WebsocketCommunicator(probe.as_asgi(), "/ws/") as comm:
        await comm.send_input({"type": "websocket.connect"})
        assert await comm.receive_output() == {
            "type": "websocket.accept",
            "subprotocol": None,
        }


async def test_accept_subprotocol_not_offered(probe: type[AsyncProbe]) -> None:
    """Choosing a subprotocol the client did not offer is a ValueError at the call site."""
    app = probe.as_asgi(on_connect=[("accept", {"subprotocol": "v3"})])
    pattern = r"^accept\(\) subprotocol 'v3' was not offered by the client \(offered: \['v1'\]\)$"
    async with WebsocketCommunicator(app, "/ws/", subprotocols=["v1"]) as comm:
        assert await comm.connect() == (False, 500)
        with pytest.raises(ValueError, match=pattern):
            await comm.wait()


async def test_accept_twice_is_an_error(probe: type[AsyncProbe]) -> None:
    """A second accept() raises UnexpectedMessage instead of confusing the server."""
    app = probe.as_asgi(on_connect=[("accept", {}), ("accept", {})])
    async with WebsocketCommunicator(app, "/ws/") as comm:
        assert await comm.connect() == (True, None)
        assert await comm.receive_output() == {"type": "websocket.close", "code": 1011}
        with pytest.raises(
            UnexpectedMessage,
            match=r"^unexpected message type 'websocket\.accept': the connection was already accepted$",
        ):
            await comm.wait()


async def test_close_before_accept_refuses(probe: type[AsyncProbe]) -> None:
    """close() before accept() refuses the handshake, carrying code and reason."""
    app = probe.as_asgi(on_connect=[("close", {"code": 4003, "reason": "nope"})])
    async with WebsocketCommunicator(app, "/ws/") as comm:
        assert await comm.connect() == (False, 4003)
        assert comm.close_reason == "nope"


async def test_deny_connection_and_accept_connection(probe: type[AsyncProbe]) -> None:
    """DenyConnection from connect() refuses; AcceptConnection accepts."""
    events: list[Any] = []
    denied = probe.as_asgi(
        on_connect=[("raise", {"exc": DenyConnection()})], events=events
    )
    async with WebsocketCommunicator(denied, "/ws/") as comm:
        assert await comm.connect() == (False, 1000)
        await comm.disconnect(code=1006)
    assert events == [("disconnect", 1006)]
    accepted = probe.as_asgi(on_connect=[("raise", {"exc": AcceptConnection()})])
    async with WebsocketCommunicator(accepted, "/ws/") as comm:
        assert await comm.connect() == (True, None)


async def test_deny_sends_http_response(probe: type[AsyncProbe]) -> None:
    """deny() answers the handshake with an HTTP response when the server supports it."""
    app = probe.as_asgi(
        on_connect=[
            (
                "deny",
                {
                    "status": 401,
                    "body": b"log in first",
                    "headers": [(b"x-why", b"auth")],
                },
            )
        ]
    )
    async with WebsocketCommunicator(app, "/ws/") as comm:
        assert await comm.connect() == (False, 401)
        assert comm.denial_response == {
            "status": 401,
            "headers": [(b"x-why", b"auth")],
            "body": b"log in first",
        }


async def test_deny_without_extension_falls_back_to_close(
    probe: type[AsyncProbe],
) -> None:
    """Without the websocket.http.response extension, deny() is a plain refusal."""
    app = probe.as_asgi(on_connect=[("deny", {"status": 401, "body": b"x"})])
    comm = WebsocketCommunicator(app, "/ws/")
    del comm.scope["extensions"]
    async with comm:
        assert await comm.connect() == (False, 1000)
        assert comm.denial_response is None


async def test_deny_after_accept_is_an_error(probe: type[AsyncProbe]) -> None:
    """deny() after accept() raises UnexpectedMessage naming the message."""
    app = probe.as_asgi(on_connect=[("accept", {}), ("deny", {})])
    async with WebsocketCommunicator(app, "/ws/") as comm:
        assert await comm.connect() == (True, None)
        assert await comm.receive_output() == {"type": "websocket.close", "code": 1011}
        with pytest.raises(
            UnexpectedMessage,
            match=r"^unexpected message type 'websocket\.http\.response\.start': a denial "
            r"response is only possible before the handshake is answered$",
        ):
            await comm.wait()


async def test_deny_rejects_bad_status(probe: type[AsyncProbe]) -> None:
    """deny() validates its status before sending anything."""
    app = probe.as_asgi(on_connect=[("deny", {"status": 99})])
    async with WebsocketCommunicator(app, "/ws/") as comm:
        # The failure refuses the handshake with a 500 of its own.
        assert await comm.connect() == (False, 500)
        with pytest.raises(
            ValueError,
            match=r"^websocket\.http\.response\.start 'status' must be between 100 and 599, got 99$",
        ):
            await comm.wait()


# -- sending and closing ------------------------------------------------------------


async def test_close_with_code_and_reason(probe: type[AsyncProbe]) -> None:
    """close(code, reason) after accept sends both to the client."""
    async with WebsocketCommunicator(probe.as_asgi(), "/ws/") as comm:
        await comm.connect()
        await comm.send_to(text_data=call("close", code=4001, reason="bye"))
        assert await comm.receive_output() == {
            "type": "websocket.close",
            "code": 4001,
            "reason": "bye",
        }


@pytest.mark.parametrize(
    ("close", "expected"),
    [
        (True, {"type": "websocket.close"}),
        (4002, {"type": "websocket.close", "code": 4002}),
    ],
)
async def test_send_then_close(
    probe: type[AsyncProbe], close: bool | int, expected: dict[str, Any]
) -> None:
    """send(close=True) closes after the frame; send(close=code) closes with that code."""
    async with WebsocketCommunicator(probe.as_asgi(), "/ws/") as comm:
        await comm.connect()
        await comm.send_to(text_data=call("send", text_data="last", close=close))
        assert await comm.receive_from() == "last"
        assert await comm.receive_output() == expected


async def test_send_after_close_is_dropped_and_close_is_idempotent(
    probe: type[AsyncProbe],
) -> None:
    """After close(), frames are dropped and a second close() sends nothing."""
    async with WebsocketCommunicator(probe.as_asgi(), "/ws/") as comm:
        await comm.connect()
        await comm.send_to(text_data=call("close", code=1000))
        assert (await comm.receive_output())["type"] == "websocket.close"
        await comm.send_to(text_data="late")
        await comm.send_to(text_data=call("close", code=4000))
        assert await comm.receive_nothing()


async def test_send_before_accept_is_an_error(probe: type[AsyncProbe]) -> None:
    """Sending a frame before accept() raises UnexpectedMessage at the call site."""
    app = probe.as_asgi(on_connect=[("send", {"text_data": "too early"})])
    async with WebsocketCommunicator(app, "/ws/") as comm:
        assert await comm.connect() == (False, 500)
        with pytest.raises(
            UnexpectedMessage,
            match=r"^unexpected message type 'websocket\.send': the handshake has not been "
            r"accepted yet; call accept\(\) first$",
        ):
            await comm.wait()


@pytest.mark.parametrize(
    ("kwargs", "exc", "pattern"),
    [
        (
            {"text_data": "a", "bytes_data": b"b"},
            ValueError,
            r"^websocket\.send needs exactly one of 'text' or 'bytes', got both$",
        ),
        (
            {},
            ValueError,
            r"^websocket\.send needs one of 'text' or 'bytes', got neither$",
        ),
        (
            {"text_data": b"raw"},
            TypeError,
            r"^websocket\.send 'text' must be a str, got bytes b'raw'$",
        ),
        (
            {"bytes_data": "text"},
            TypeError,
            r"^websocket\.send 'bytes' must be bytes, got str 'text'$",
        ),
        (
            {"text_data": "x", "close": 1005},
            ValueError,
            r"^websocket\.close 'code' must be 1000-1003, 1007-1014 or 3000-4999, got 1005$",
        ),
    ],
)
async def test_send_validates_at_call_site(
    probe: type[AsyncProbe], kwargs: dict[str, Any], exc: type[Exception], pattern: str
) -> None:
    """A malformed send() raises in the handler, nothing reaches the server, the socket closes 1011."""
    async with WebsocketCommunicator(probe.as_asgi(), "/ws/") as comm:
        await comm.connect()
        await comm.send_to(text_data=call("send", **kwargs))
        assert await comm.receive_output() == {
            "type": "websocket.close",
            "code": 1011,
        }
        with pytest.raises(exc, match=pattern):
            await comm.wait()


@pytest.mark.parametrize(
    ("kwargs", "exc", "pattern"),
    [
        (
            {"code": 1006},
            ValueError,
            r"^websocket\.close 'code' must be 1000-1003, 1007-1014 or 3000-4999, got 1006$",
        ),
        (
            {"code": "4000"},
            TypeError,
            r"^websocket\.close 'code' must be an int, got str '4000'$",
        ),
        (
            {"reason": "é" * 62},
            ValueError,
            r"^websocket\.close 'reason' must be at most 123 bytes encoded as UTF-8, got 124$",
        ),
        (
            {"reason": b"x"},
            TypeError,
            r"^websocket\.close 'reason' must be a str, got bytes b'x'$",
        ),
    ],
)
async def test_close_validates_at_call_site(
    probe: type[AsyncProbe], kwargs: dict[str, Any], exc: type[Exception], pattern: str
) -> None:
    """close() refuses codes that may not be sent and bad reasons, naming the field."""
    async with WebsocketCommunicator(probe.as_asgi(), "/ws/") as comm:
        await comm.connect()
        await comm.send_to(text_data=call("close", **kwargs))
        assert await comm.receive_output() == {
            "type": "websocket.close",
            "code": 1011,
        }
        with pytest.raises(exc, match=pattern):
            await comm.wait()


async def test_receive_without_payload_is_an_error(probe: type[AsyncProbe]) -> None:
    """A websocket.receive with neither text nor bytes (a server bug) fails loudly."""
    async with WebsocketCommunicator(probe.as_asgi(), "/ws/") as comm:
        await comm.connect()
        await comm.send_input({"type": "websocket.receive", "text": None})
        with pytest.raises(
            ValueError, match=r"^websocket\.receive carries neither 'text' nor 'bytes'"
        ):
            await comm.wait()


# -- disconnects and the end of the instance ----------------------------------------


async def test_disconnect_receives_code_and_ends_instance(
    probe: type[AsyncProbe],
) -> None:
    """The client's close code reaches disconnect(code); then the instance ends."""
    events: list[Any] = []
    async with WebsocketCommunicator(probe.as_asgi(events=events), "/ws/") as comm:
        await comm.connect()
        await comm.disconnect(code=4321)
        assert comm.finished
    assert events == [("disconnect", 4321)]


async def test_instance_ends_when_server_confirms_close(
    probe: type[AsyncProbe],
) -> None:
    """After close(), the instance keeps running until the server's websocket.disconnect."""
    events: list[Any] = []
    async with WebsocketCommunicator(probe.as_asgi(events=events), "/ws/") as comm:
        await comm.connect()
        await comm.send_to(text_data=call("close", code=4000))
        assert (await comm.receive_output())["code"] == 4000
        with pytest.raises(TimeoutError):
            await comm.wait(timeout=0.05)
        await comm.send_input({"type": "websocket.disconnect", "code": 4000})
        await comm.wait()
    assert events == [("disconnect", 4000)]


async def test_disconnect_synthesized_after_close_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """If the server never confirms a close, a disconnect (1006) is synthesized after close_timeout."""
    events: list[Any] = []
    app = AsyncProbe.as_asgi(events=events, close_timeout=3.0)
    async with WebsocketCommunicator(app, "/ws/") as comm:
        await comm.connect()
        start = trio.current_time()
        await comm.send_to(text_data=call("close"))
        assert (await comm.receive_output())["type"] == "websocket.close"
        await comm.wait(timeout=10)
        assert trio.current_time() - start == pytest.approx(3.0)
    assert events == [("disconnect", 1006)]


@pytest.mark.slow
async def test_disconnect_synthesized_sync() -> None:
    """The sync consumer's close() also arms the synthesized disconnect."""
    events: list[Any] = []
    app = SyncProbe.as_asgi(events=events, close_timeout=0.2)
    with trio.fail_after(10):
        async with WebsocketCommunicator(app, "/ws/") as comm:
            await comm.connect()
            await comm.send_to(text_data=call("close"))
            assert (await comm.receive_output())["type"] == "websocket.close"
            await comm.wait(timeout=5)
    assert events == [("disconnect", 1006)]


async def test_exception_after_accept_closes_1011_and_logs_once(
    probe: type[AsyncProbe], caplog: pytest.LogCaptureFixture
) -> None:
    """An unhandled exception closes with 1011, is logged once, and propagates."""
    async with WebsocketCommunicator(probe.as_asgi(), "/ws/") as comm:
        await comm.connect()
        await comm.send_to(text_data=call("fail", message="boom"))
        assert await comm.receive_output() == {
            "type": "websocket.close",
            "code": 1011,
        }
        with pytest.raises(RuntimeError, match=r"^boom$"):
            await comm.wait()
    errors = _error_records(caplog)
    assert len(errors) == 1
    assert errors[0].name == "trichannels.consumer"


class _Boom(AsyncWebsocketConsumer):
    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None
    ) -> None:
        raise KeyError("boom")


async def test_exception_handler_closes_1011(caplog: pytest.LogCaptureFixture) -> None:
    """A handler raising after accept: close 1011 reaches the client before the exception."""
    async with WebsocketCommunicator(_Boom.as_asgi(), "/ws/") as comm:
        await comm.connect()
        await comm.send_to(text_data="x")
        assert await comm.receive_output() == {
            "type": "websocket.close",
            "code": 1011,
        }
        with pytest.raises(KeyError, match=r"^'boom'$"):
            await comm.wait()
    assert len(_error_records(caplog)) == 1


async def test_exception_before_accept_refuses_with_500(
    probe: type[AsyncProbe],
) -> None:
    """An exception before the handshake is answered refuses it (HTTP 500 where possible)."""
    app = probe.as_asgi(on_connect=[("raise", {"exc": RuntimeError("db down")})])
    async with WebsocketCommunicator(app, "/ws/") as comm:
        assert await comm.connect() == (False, 500)
        assert comm.denial_response == {"status": 500, "headers": [], "body": b""}
        with pytest.raises(RuntimeError, match=r"^db down$"):
            await comm.wait()


async def test_exception_before_accept_without_extension_closes() -> None:
    """Without the denial extension, an early exception refuses with websocket.close."""
    app = AsyncProbe.as_asgi(on_connect=[("raise", {"exc": RuntimeError("db down")})])
    comm = WebsocketCommunicator(app, "/ws/")
    del comm.scope["extensions"]
    async with comm:
        assert await comm.connect() == (False, 1000)
        with pytest.raises(RuntimeError, match=r"^db down$"):
            await comm.wait()


async def test_stop_consumer_closes_cleanly(probe: type[AsyncProbe]) -> None:
    """StopConsumer from a handler ends the instance and closes the socket with 1000."""
    app = probe.as_asgi(on_connect=[("accept", {}), ("raise", {"exc": StopConsumer()})])
    async with WebsocketCommunicator(app, "/ws/") as comm:
        assert await comm.connect() == (True, None)
        assert await comm.receive_output() == {"type": "websocket.close", "code": 1000}
        await comm.wait()


async def test_going_away_goes_through_state(probe: type[AsyncProbe]) -> None:
    """close_websockets() closes with 1001; later frames are dropped; disconnect ends it."""
    events: list[Any] = []
    async with WebsocketCommunicator(probe.as_asgi(events=events), "/ws/") as comm:
        await comm.connect()
        assert close_websockets() >= 1
        assert await comm.receive_output() == {
            "type": "websocket.close",
            "code": 1001,
            "reason": "server shutting down",
        }
        await comm.send_to(text_data="after shutdown began")
        assert await comm.receive_nothing()
        await comm.disconnect(code=1001)
    assert events == [("disconnect", 1001)]


# -- groups ---------------------------------------------------------------------------


class AsyncRoom(AsyncWebsocketConsumer):
    groups = ["room"]

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None
    ) -> None:
        assert self.channel_layer is not None
        await self.channel_layer.group_send(
            "room", {"type": "room.message", "text": text_data}
        )

    async def room_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["text"])


class SyncRoom(WebsocketConsumer):
    groups = ["room"]

    def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None
    ) -> None:
        from trichannels.sync import async_to_sync

        assert self.channel_layer is not None
        async_to_sync(self.channel_layer.group_send)(
            "room", {"type": "room.message", "text": text_data}
        )

    def room_message(self, event: dict[str, Any]) -> None:
        self.send(text_data=event["text"])


@pytest.fixture(params=["async", "sync"])
def room(request: pytest.FixtureRequest) -> type[AsyncRoom | SyncRoom]:
    """A consumer in the group "room", async or sync."""
    return AsyncRoom if request.param == "async" else SyncRoom


async def test_groups_joined_on_connect_and_left_on_disconnect(
    room: type[AsyncRoom], layer: InMemoryChannelLayer
) -> None:
    """Two members of a group hear each other; leaving empties the group."""
    async with (
        WebsocketCommunicator(room.as_asgi(), "/ws/") as alice,
        WebsocketCommunicator(room.as_asgi(), "/ws/") as bob,
    ):
        await alice.connect()
        await bob.connect()
        assert layer.statistics().members == 2
        await alice.send_to(text_data="hi all")
        assert await alice.receive_from() == "hi all"
        assert await bob.receive_from() == "hi all"
        await alice.disconnect()
        assert layer.statistics().members == 1
        await bob.disconnect()
    assert layer.statistics().members == 0


async def test_groups_left_when_instance_fails(layer: InMemoryChannelLayer) -> None:
    """Group membership is discarded however the instance ends (here: an exception)."""

    class Failing(AsyncRoom):
        async def receive(
            self, text_data: str | None = None, bytes_data: bytes | None = None
        ) -> None:
            raise RuntimeError("handler bug")

    async with WebsocketCommunicator(Failing.as_asgi(), "/ws/") as comm:
        await comm.connect()
        assert layer.statistics().members == 1
        await comm.send_to(text_data="x")
        with pytest.raises(RuntimeError, match=r"^handler bug$"):
            await comm.wait()
    assert layer.statistics().members == 0


async def test_groups_left_when_instance_cancelled(layer: InMemoryChannelLayer) -> None:
    """Cancelling the instance from outside (server shutdown) still leaves its groups."""
    with trio.move_on_after(0.1) as scope:
        async with WebsocketCommunicator(AsyncRoom.as_asgi(), "/ws/") as comm:
            await comm.connect()
            assert layer.statistics().members == 1
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert layer.statistics().members == 0


async def test_groups_from_as_asgi(layer: InMemoryChannelLayer) -> None:
    """groups can be set per route with as_asgi(groups=[...])."""
    async with WebsocketCommunicator(
        AsyncRoom.as_asgi(groups=["a", "b"]), "/ws/"
    ) as comm:
        await comm.connect()
        assert layer.statistics().groups == 2
        await layer.group_send("b", {"type": "room.message", "text": "to b"})
        assert await comm.receive_from() == "to b"


async def test_groups_without_layer_is_a_clear_error(
    room: type[AsyncRoom], no_layer: None
) -> None:
    """groups set but no layer configured: InvalidChannelLayerError naming the alias."""
    pattern = (
        rf"^{room.__qualname__}\.groups is \['room'\] but no channel layer is configured "
        r"for channel_layer_alias='default'$"
    )
    async with WebsocketCommunicator(room.as_asgi(), "/ws/") as comm:
        assert await comm.connect() == (False, 500)
        with pytest.raises(InvalidChannelLayerError, match=pattern):
            await comm.wait()


async def test_groups_as_str_is_a_type_error(layer: InMemoryChannelLayer) -> None:
    """groups = "room" (a str, not a list) is refused rather than joining r, o, o, m."""
    pattern = r"^AsyncRoom\.groups must be a list of group names, got the str 'room'$"
    async with WebsocketCommunicator(AsyncRoom.as_asgi(groups="room"), "/ws/") as comm:
        await comm.connect()
        with pytest.raises(TypeError, match=pattern):
            await comm.wait()


async def test_layer_message_cannot_call_consumer_api(
    layer: InMemoryChannelLayer,
) -> None:
    """A layer message typed "close" never reaches close(): refused, logged, socket closed 1011."""
    async with WebsocketCommunicator(AsyncRoom.as_asgi(), "/ws/") as comm:
        await comm.connect()
        await layer.group_send("room", {"type": "close", "code": 4000})
        assert await comm.receive_output() == {"type": "websocket.close", "code": 1011}
        with pytest.raises(
            RefusedLayerMessage,
            match=r"^refusing channel-layer message of type 'close': 'close' is part of "
            r"the consumer's own API, not an event handler$",
        ):
            await comm.wait()


# -- JSON -----------------------------------------------------------------------------


async def test_json_round_trip(json_probe: type[AsyncJsonProbe]) -> None:
    """receive_json gets decoded content; send_json encodes it."""
    async with WebsocketCommunicator(json_probe.as_asgi(), "/ws/") as comm:
        await comm.connect()
        await comm.send_json_to({"n": [1, 2.5, None, "é"]})
        assert await comm.receive_json_from() == {"echo": {"n": [1, 2.5, None, "é"]}}


async def test_send_json_close(json_probe: type[AsyncJsonProbe]) -> None:
    """send_json(content, close=code) sends then closes."""
    async with WebsocketCommunicator(json_probe.as_asgi(), "/ws/") as comm:
        await comm.connect()
        await comm.send_json_to({"close": 4005})
        assert await comm.receive_json_from() == {"bye": True}
        assert await comm.receive_output() == {"type": "websocket.close", "code": 4005}


@pytest.mark.parametrize(
    ("frame", "reason", "logged"),
    [
        ({"text_data": "{not json"}, "invalid JSON", "'{not json'"),
        ({"text_data": ""}, "invalid JSON", "''"),
        ({"bytes_data": b"{}"}, "expected a JSON text frame", "b'{}'"),
    ],
)
async def test_invalid_frame_closes_1007(
    json_probe: type[AsyncJsonProbe],
    caplog: pytest.LogCaptureFixture,
    frame: dict[str, Any],
    reason: str,
    logged: str,
) -> None:
    """Invalid JSON, an empty frame or a binary frame: warning logged, close 1007, no crash."""
    caplog.set_level(logging.WARNING, logger="trichannels.generic.websocket")
    async with WebsocketCommunicator(json_probe.as_asgi(), "/ws/") as comm:
        await comm.connect()
        await comm.send_to(**frame)
        assert await comm.receive_output() == {
            "type": "websocket.close",
            "code": 1007,
            "reason": reason,
        }
        await comm.disconnect(code=1007)
    [record] = [r for r in caplog.records if r.name == "trichannels.generic.websocket"]
    assert record.levelno == logging.WARNING
    assert f"(frame: {logged})" in record.getMessage()


async def test_invalid_frame_log_is_truncated(caplog: pytest.LogCaptureFixture) -> None:
    """A huge invalid frame is never logged in full."""
    caplog.set_level(logging.WARNING, logger="trichannels.generic.websocket")
    secret = "x" * 10_000
    async with WebsocketCommunicator(AsyncJsonProbe.as_asgi(), "/ws/") as comm:
        await comm.connect()
        await comm.send_to(text_data=secret)
        assert (await comm.receive_output())["code"] == 1007
    [record] = caplog.records
    message = record.getMessage()
    assert secret not in message
    assert "... (10000 chars)" in message
    assert len(message) < 300


async def test_invalid_frame_hook_can_keep_connection_open() -> None:
    """Overriding invalid_frame replaces the default (here: reply and carry on)."""

    class Lenient(AsyncJsonProbe):
        async def invalid_frame(
            self, text_data: str | None, bytes_data: bytes | None, error: Exception
        ) -> None:
            await self.send_json({"error": type(error).__name__})

    async with WebsocketCommunicator(Lenient.as_asgi(), "/ws/") as comm:
        await comm.connect()
        await comm.send_to(text_data="nope")
        assert await comm.receive_json_from() == {"error": "JSONDecodeError"}
        await comm.send_to(bytes_data=b"\x00")
        assert await comm.receive_json_from() == {"error": "ValueError"}
        await comm.send_json_to(1)
        assert await comm.receive_json_from() == {"echo": 1}


async def test_encode_decode_overrides() -> None:
    """encode_json/decode_json are overridable classmethods (async in the async class)."""

    class Compact(AsyncJsonProbe):
        @classmethod
        async def encode_json(cls, content: Any) -> str:
            import json

            return json.dumps(content, separators=(",", ":"), sort_keys=True)

        @classmethod
        async def decode_json(cls, text_data: str) -> Any:
            if text_data == "ping":
                return {"ping": True}
            return await super().decode_json(text_data)

    async with WebsocketCommunicator(Compact.as_asgi(), "/ws/") as comm:
        await comm.connect()
        await comm.send_to(text_data="ping")
        assert await comm.receive_from() == '{"echo":{"ping":true}}'


def test_sync_encode_decode_are_plain_classmethods() -> None:
    """The sync JSON consumer's encode/decode are plain classmethods."""
    assert JsonWebsocketConsumer.encode_json({"a": 1}) == '{"a": 1}'
    assert JsonWebsocketConsumer.decode_json("[1]") == [1]
    with pytest.raises(ValueError, match="Expecting value"):
        JsonWebsocketConsumer.decode_json("")


async def test_sync_handlers_run_off_the_event_loop() -> None:
    """Sync consumer handlers run in a worker thread, not the event loop's thread."""
    import threading

    loop_thread = threading.get_ident()
    seen: list[int] = []

    class Where(WebsocketConsumer):
        def receive(
            self, text_data: str | None = None, bytes_data: bytes | None = None
        ) -> None:
            seen.append(threading.get_ident())
            self.send(text_data="ok")

    with trio.fail_after(10):
        async with WebsocketCommunicator(Where.as_asgi(), "/ws/") as comm:
            await comm.connect()
            await comm.send_to(text_data="?")
            assert await comm.receive_from() == "ok"
    assert seen
    assert seen[0] != loop_thread


def test_public_names() -> None:
    """The module exports Channels' four class names."""
    from trichannels.generic import websocket

    assert sorted(websocket.__all__) == [
        "AsyncJsonWebsocketConsumer",
        "AsyncWebsocketConsumer",
        "JsonWebsocketConsumer",
        "WebsocketConsumer",
    ]


def test_websocket_consumers_neutral(backend: str) -> None:
    """Async, sync and JSON consumers behave the same on asyncio and trio."""
    import anyio

    async def body() -> None:
        with anyio.fail_after(10):
            for cls in (AsyncProbe, SyncProbe):
                events: list[Any] = []
                async with WebsocketCommunicator(
                    cls.as_asgi(events=events), "/ws/"
                ) as comm:
                    assert await comm.connect() == (True, None)
                    await comm.send_to(bytes_data=b"x")
                    assert await comm.receive_from() == b"x"
                    await comm.send_to(text_data=call("close", code=4000, reason="r"))
                    assert await comm.receive_output() == {
                        "type": "websocket.close",
                        "code": 4000,
                        "reason": "r",
                    }
                    await comm.disconnect(code=4000)
                assert events == [("disconnect", 4000)]
            for json_cls in (AsyncJsonProbe, SyncJsonProbe):
                async with WebsocketCommunicator(json_cls.as_asgi(), "/ws/") as comm:
                    await comm.connect()
                    await comm.send_json_to([1])
                    assert await comm.receive_json_from() == {"echo": [1]}
                    await comm.send_to(text_data="")
                    assert (await comm.receive_output())["code"] == 1007

    anyio.run(body, backend=backend)
