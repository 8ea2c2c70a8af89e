"""WebSocket consumers under a real server: Hypercorn's trio worker and a trio-websocket client.

Each test serves the application with ``trichannels.testing.live_server`` on an
ephemeral port and talks to it over TCP. Real sockets, so the real clock (no
``autojump_clock``) and an outer ``trio.fail_after`` guard.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio_websocket

from trichannels.exceptions import DenyConnection
from trichannels.generic.websocket import (
    AsyncJsonWebsocketConsumer,
    AsyncWebsocketConsumer,
    WebsocketConsumer,
)
from trichannels.layers import InMemoryChannelLayer, channel_layers
from trichannels.routing import ProtocolTypeRouter, URLRouter, path
from trichannels.testing import LiveServer, live_server, open_websocket

GUARD = 10


class Ended:
    """Collects disconnect codes and lets a test wait for the next one."""

    def __init__(self) -> None:
        self.codes: list[int] = []
        self._event = trio.Event()

    def add(self, code: int) -> None:
        self.codes.append(code)
        self._event.set()

    async def wait(self) -> list[int]:
        await self._event.wait()
        self._event = trio.Event()
        return self.codes


class Echo(AsyncWebsocketConsumer):
    """Accepts with the first offered subprotocol and a header; commands in text frames."""

    ended: Ended | None = None

    async def connect(self) -> None:
        offered = self.scope["subprotocols"]
        await self.accept(
            subprotocol=offered[-1] if offered else None,
            headers=[(b"x-served-by", b"trichannels")],
        )

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None
    ) -> None:
        if text_data == "close please":
            await self.close(code=4001, reason="asked to close")
        elif text_data == "crash please":
            raise RuntimeError("crashed on request")
        else:
            await self.send(text_data=text_data, bytes_data=bytes_data)

    async def disconnect(self, code: int) -> None:
        if self.ended is not None:
            self.ended.add(code)


class SyncEcho(WebsocketConsumer):
    def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None
    ) -> None:
        if text_data == "close please":
            self.close(code=4002, reason="sync close")
        else:
            self.send(text_data=text_data, bytes_data=bytes_data)


class Refuse(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        raise DenyConnection


class Deny(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.deny(
            status=401,
            body=b"token expired",
            headers=[
                (b"content-type", b"text/plain"),
                (b"www-authenticate", b"Bearer"),
            ],
        )

    ended: Ended | None = None

    async def disconnect(self, code: int) -> None:
        if self.ended is not None:
            self.ended.add(code)


class CrashEarly(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        raise RuntimeError("crashed before accepting")


class Json(AsyncJsonWebsocketConsumer):
    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        await self.send_json({"echo": content})


class Room(AsyncWebsocketConsumer):
    groups = ["lobby"]

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None
    ) -> None:
        assert self.channel_layer is not None
        await self.channel_layer.group_send(
            "lobby", {"type": "lobby.message", "text": text_data}
        )

    async def lobby_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["text"])


def make_application(ended: Ended | None = None) -> ProtocolTypeRouter:
    return ProtocolTypeRouter(
        {
            "websocket": URLRouter(
                [
                    path("echo/", Echo.as_asgi(ended=ended)),
                    path("sync/", SyncEcho.as_asgi()),
                    path("refuse/", Refuse.as_asgi()),
                    path("deny/", Deny.as_asgi(ended=ended)),
                    path("crash-early/", CrashEarly.as_asgi()),
                    path("json/", Json.as_asgi()),
                    path("room/", Room.as_asgi()),
                ]
            )
        },
        lifespan_contexts=(),
    )


@pytest.fixture
async def ended() -> Ended:
    """Disconnect codes seen by the Echo consumer."""
    return Ended()


@pytest.fixture
async def server(ended: Ended) -> AsyncIterator[LiveServer]:
    """The application under Hypercorn's trio worker, for one test."""
    async with live_server(make_application(ended)) as running:
        yield running


async def test_echo_subprotocol_and_accept_headers(server: LiveServer) -> None:
    """Subprotocol negotiation and accept() headers reach a real client; frames echo."""
    with trio.fail_after(GUARD):
        async with open_websocket(
            server.ws_url + "/echo/", subprotocols=["v1", "v2"]
        ) as ws:
            assert ws.subprotocol == "v2"
            assert (b"x-served-by", b"trichannels") in ws.handshake_headers
            await ws.send_message("hello")
            assert await ws.get_message() == "hello"
            await ws.send_message(b"\x00\xff")
            assert await ws.get_message() == b"\x00\xff"


async def test_no_subprotocol_offered(server: LiveServer) -> None:
    """Without offered subprotocols, none is chosen."""
    with trio.fail_after(GUARD):
        async with open_websocket(server.ws_url + "/echo/") as ws:
            assert ws.subprotocol is None


async def test_refusal_is_403(server: LiveServer) -> None:
    """DenyConnection (a close before accept) refuses the handshake: the client sees 403."""
    with trio.fail_after(GUARD):
        with pytest.raises(trio_websocket.ConnectionRejected) as info:
            async with open_websocket(server.ws_url + "/refuse/"):
                pass  # pragma: no cover - never reached
    assert info.value.status_code == 403


async def test_denial_response_reaches_client(server: LiveServer, ended: Ended) -> None:
    """deny() sends a real HTTP response: status, headers and body reach the client."""
    with trio.fail_after(GUARD):
        with pytest.raises(trio_websocket.ConnectionRejected) as info:
            async with open_websocket(server.ws_url + "/deny/"):
                pass  # pragma: no cover - never reached
        # open_websocket closes the refused connection's socket, so the server
        # reports the disconnect and the instance ends at once.
        assert await ended.wait() == [1000]
    assert info.value.status_code == 401
    assert info.value.body == b"token expired"
    assert (b"www-authenticate", b"Bearer") in info.value.headers


async def test_close_code_and_reason_reach_client(
    server: LiveServer, ended: Ended
) -> None:
    """close(4001, reason) after accept: the client's close frame carries both."""
    with trio.fail_after(GUARD):
        async with open_websocket(server.ws_url + "/echo/") as ws:
            await ws.send_message("close please")
            with pytest.raises(trio_websocket.ConnectionClosed) as info:
                await ws.get_message()
        assert info.value.reason.code == 4001
        assert info.value.reason.reason == "asked to close"
        # Hypercorn confirms the close with a websocket.disconnect, well within
        # close_timeout, so the instance ends promptly.
        assert await ended.wait() == [1000]


async def test_sync_consumer_close_reaches_client(server: LiveServer) -> None:
    """The sync consumer's close(code, reason) reaches the client too."""
    with trio.fail_after(GUARD):
        async with open_websocket(server.ws_url + "/sync/") as ws:
            await ws.send_message("ping")
            assert await ws.get_message() == "ping"
            await ws.send_message("close please")
            with pytest.raises(trio_websocket.ConnectionClosed) as info:
                await ws.get_message()
    assert (info.value.reason.code, info.value.reason.reason) == (4002, "sync close")


async def test_client_close_ends_instance(server: LiveServer, ended: Ended) -> None:
    """The client closing ends the instance through disconnect()."""
    with trio.fail_after(GUARD):
        async with open_websocket(server.ws_url + "/echo/") as ws:
            await ws.aclose(code=4000)
        # Hypercorn does not pass the client's code on: it reports 1006 for a
        # close the client started (see the topic docs).
        assert await ended.wait() == [1006]


async def test_exception_after_accept_is_1011(
    server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An unhandled exception closes the socket with 1011 and is logged once by trichannels."""
    with trio.fail_after(GUARD):
        async with open_websocket(server.ws_url + "/echo/") as ws:
            await ws.send_message("crash please")
            with pytest.raises(trio_websocket.ConnectionClosed) as info:
                await ws.get_message()
    assert info.value.reason.code == 1011
    ours = [
        r
        for r in caplog.records
        if r.name.startswith("trichannels") and r.levelno >= logging.ERROR
    ]
    assert len(ours) == 1
    assert ours[0].exc_info is not None
    assert str(ours[0].exc_info[1]) == "crashed on request"


async def test_exception_before_accept_is_500(server: LiveServer) -> None:
    """An exception before the handshake is answered: the client sees HTTP 500."""
    with trio.fail_after(GUARD):
        with pytest.raises(trio_websocket.ConnectionRejected) as info:
            async with open_websocket(server.ws_url + "/crash-early/"):
                pass  # pragma: no cover - never reached
    assert info.value.status_code == 500


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("{oops", "invalid JSON"),
        ("", "invalid JSON"),
        (b"\x00", "expected a JSON text frame"),
    ],
)
async def test_json_error_is_1007(
    server: LiveServer, frame: str | bytes, reason: str
) -> None:
    """Invalid JSON, an empty frame or a binary frame closes with 1007 and a reason."""
    with trio.fail_after(GUARD):
        async with open_websocket(server.ws_url + "/json/") as ws:
            await ws.send_message('{"a": 1}')
            assert await ws.get_message() == '{"echo": {"a": 1}}'
            await ws.send_message(frame)
            with pytest.raises(trio_websocket.ConnectionClosed) as info:
                await ws.get_message()
    assert (info.value.reason.code, info.value.reason.reason) == (1007, reason)


async def test_groups_across_connections() -> None:
    """Two real clients in one group hear each other through the in-memory layer."""
    with trio.fail_after(GUARD):
        async with InMemoryChannelLayer() as layer:
            previous = channel_layers.set("default", layer)
            try:
                async with (
                    live_server(make_application()) as running,
                    open_websocket(running.ws_url + "/room/") as alice,
                    open_websocket(running.ws_url + "/room/") as bob,
                ):
                    await alice.send_message("hi bob")
                    assert await bob.get_message() == "hi bob"
                    assert await alice.get_message() == "hi bob"
            finally:
                channel_layers.set("default", previous)
            assert layer.statistics().members == 0


async def test_live_server_urls_and_clean_exit() -> None:
    """The yielded URLs point at the server; nothing of it survives the block."""
    with trio.fail_after(GUARD):
        async with live_server(make_application()) as running:
            assert running.url == f"http://127.0.0.1:{running.port}"
            assert running.ws_url == f"ws://127.0.0.1:{running.port}"
            assert running.port > 0
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", running.port)


async def test_live_server_block_error_propagates_unwrapped() -> None:
    """An exception in the block comes out as itself, not inside an exception group."""
    with trio.fail_after(GUARD):
        with pytest.raises(LookupError, match=r"^from the test body$"):
            async with live_server(make_application()):
                raise LookupError("from the test body")


async def test_live_server_without_lifespan() -> None:
    """lifespan=False serves a bare consumer that does not speak the lifespan protocol."""
    with trio.fail_after(GUARD):
        async with (
            live_server(Echo.as_asgi(), lifespan=False) as running,
            open_websocket(running.ws_url + "/anything/") as ws,
        ):
            await ws.send_message("bare")
            assert await ws.get_message() == "bare"


async def test_open_websocket_needs_ws_url() -> None:
    """open_websocket() refuses anything but a ws:// URL, naming it."""
    with pytest.raises(
        ValueError,
        match=r"^open_websocket\(\) needs a ws://host\[:port\]/path URL, got 'http://x/'$",
    ):
        async with open_websocket("http://x/"):
            pass  # pragma: no cover - never reached
