"""The chat demo, driven through communicators on the in-memory layer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from trichannels.demo import make_application
from trichannels.demo.app import RoomHistory
from trichannels.layers import channel_layers
from trichannels.layers.memory import InMemoryChannelLayer
from trichannels.testing import HttpCommunicator, WebsocketCommunicator


@pytest.fixture
async def layer() -> AsyncIterator[InMemoryChannelLayer]:
    async with InMemoryChannelLayer() as layer:
        previous = channel_layers.set("default", layer)
        try:
            yield layer
        finally:
            channel_layers.set("default", previous)


async def _joined(comm: WebsocketCommunicator, nick: str) -> dict[str, Any]:
    connected, _ = await comm.connect()
    assert connected
    await comm.send_json_to({"type": "join", "nick": nick})
    welcome: dict[str, Any] = await comm.receive_json_from()
    assert welcome["type"] == "welcome"
    return welcome


async def test_two_members_chat(layer: InMemoryChannelLayer) -> None:
    """Two members of a room see each other join, talk, and leave; counts follow."""
    app = make_application(history=10)
    with trio.fail_after(5):
        async with (
            WebsocketCommunicator(app, "/ws/chat/lobby/") as ada,
            WebsocketCommunicator(app, "/ws/chat/lobby/") as bob,
        ):
            assert (await _joined(ada, "ada"))["members"] == 1
            welcome = await _joined(bob, "bob")
            assert welcome == {
                "type": "welcome",
                "room": "lobby",
                "nick": "bob",
                "history": [],
                "members": 1,
            }
            assert await ada.receive_json_from() == {
                "type": "joined",
                "nick": "bob",
                "members": 2,
            }
            assert await bob.receive_json_from() == {
                "type": "members",
                "count": 2,
                "nicks": ["ada", "bob"],
            }

            await ada.send_json_to({"type": "say", "text": "hello bob"})
            for comm in (ada, bob):
                got = await comm.receive_json_from()
                assert (got["type"], got["nick"], got["text"]) == (
                    "message",
                    "ada",
                    "hello bob",
                )

            await bob.disconnect()
            assert await ada.receive_json_from() == {
                "type": "left",
                "nick": "bob",
                "members": 1,
            }


async def test_history_replayed_on_join(layer: InMemoryChannelLayer) -> None:
    """A newcomer gets the room's last N messages, oldest first."""
    app = make_application(history=2)
    with trio.fail_after(5):
        async with WebsocketCommunicator(app, "/ws/chat/room-1/") as ada:
            await _joined(ada, "ada")
            for text in ["one", "two", "three"]:
                await ada.send_json_to({"type": "say", "text": text})
                assert (await ada.receive_json_from())["text"] == text
            async with WebsocketCommunicator(app, "/ws/chat/room-1/") as cy:
                welcome = await _joined(cy, "cy")
                assert [m["text"] for m in welcome["history"]] == ["two", "three"]


async def test_rooms_are_separate(layer: InMemoryChannelLayer) -> None:
    """A message in one room does not reach another room."""
    app = make_application()
    with trio.fail_after(5):
        async with (
            WebsocketCommunicator(app, "/ws/chat/a/") as ada,
            WebsocketCommunicator(app, "/ws/chat/b/") as bob,
        ):
            await _joined(ada, "ada")
            await _joined(bob, "bob")
            await ada.send_json_to({"type": "say", "text": "only a"})
            assert (await ada.receive_json_from())["text"] == "only a"
            assert await bob.receive_nothing()


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ({"type": "say", "text": "hi"}, "join first"),
        ({"type": "join", "nick": ""}, "a nickname is 1 to 32 characters"),
        ({"type": "join", "nick": "x" * 33}, "a nickname is 1 to 32 characters"),
        ({"type": "dance"}, "unknown type 'dance'"),
        (["not", "an", "object"], "expected an object with a 'type'"),
    ],
)
async def test_bad_frames_get_errors(
    layer: InMemoryChannelLayer, frame: Any, reason: str
) -> None:
    """Bad client frames are answered with an error and the connection stays open."""
    app = make_application()
    with trio.fail_after(5):
        async with WebsocketCommunicator(app, "/ws/chat/lobby/") as comm:
            assert (await comm.connect())[0]
            await comm.send_json_to(frame)
            assert await comm.receive_json_from() == {"type": "error", "reason": reason}
            await _joined_after_error(comm)


async def _joined_after_error(comm: WebsocketCommunicator) -> None:
    await comm.send_json_to({"type": "join", "nick": "ok"})
    assert (await comm.receive_json_from())["type"] == "welcome"


async def test_page_served() -> None:
    """The page is served at / and unknown paths are 404."""
    app = make_application()
    async with HttpCommunicator(app, "GET", "/") as comm:
        response = await comm.get_response()
    assert response["status"] == 200
    assert b"<title>trichannels chat</title>" in response["body"]
    async with HttpCommunicator(app, "GET", "/nope") as comm:
        assert (await comm.get_response())["status"] == 404


def test_room_history_bad_size() -> None:
    """RoomHistory refuses a negative or non-int size, naming it."""
    with pytest.raises(ValueError, match=r"^history size must be an int >= 0, got -1$"):
        RoomHistory(-1)
