"""The chat demo's consumer, routing and page."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict, deque
from importlib import resources
from typing import Any, Final

from trichannels.generic.websocket import AsyncJsonWebsocketConsumer
from trichannels.routing import ProtocolTypeRouter, URLRouter, path
from trichannels.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ChatConsumer", "RoomHistory", "make_application"]

MAX_NICK: Final = 32
MAX_TEXT: Final = 2000


class RoomHistory:
    """The last ``size`` messages of each room seen by this process, without duplicates."""

    def __init__(self, size: int) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"history size must be an int >= 0, got {size!r}")
        self.size = size
        self._rooms: dict[str, OrderedDict[str, dict[str, Any]]] = {}

    def add(self, room: str, message: dict[str, Any]) -> bool:
        """Remember ``message``; return False if it was already known."""
        if self.size == 0:
            return True
        kept = self._rooms.setdefault(room, OrderedDict())
        if message["id"] in kept:
            return False
        kept[message["id"]] = message
        while len(kept) > self.size:
            kept.popitem(last=False)
        return True

    def get(self, room: str) -> list[dict[str, Any]]:
        """The room's remembered messages, oldest first."""
        messages = list(self._rooms.get(room, {}).values())
        messages.sort(key=lambda m: (m["ts"], m["id"]))
        return messages[-self.size :] if self.size else []


class ChatConsumer(AsyncJsonWebsocketConsumer):
    """One chat participant: joins a room, relays messages, tracks who is there."""

    history: RoomHistory = RoomHistory(50)
    # Only these methods may be reached by channel-layer messages.
    layer_event_handlers = frozenset(
        {"chat_message", "room_join", "room_here", "room_leave"}
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.room = ""
        self.nick: str | None = None
        self.members: dict[str, str] = {}  # channel name -> nickname
        self.seen: deque[str] = deque(maxlen=1000)

    @property
    def room_group(self) -> str:
        return f"chat.{self.room}"

    async def websocket_connect(self, message: Message) -> None:
        self.room = self.scope["url_route"]["kwargs"]["room"]
        self.groups = [self.room_group]
        await super().websocket_connect(message)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if not isinstance(content, dict) or not isinstance(content.get("type"), str):
            await self.send_json(
                {"type": "error", "reason": "expected an object with a 'type'"}
            )
            return
        if content["type"] == "join":
            await self.join(content.get("nick"))
        elif content["type"] == "say":
            await self.say(content.get("text"))
        else:
            await self.send_json(
                {"type": "error", "reason": f"unknown type {content['type']!r}"}
            )

    async def join(self, nick: object) -> None:
        if self.nick is not None:
            await self.send_json({"type": "error", "reason": "already joined"})
            return
        if (
            not isinstance(nick, str)
            or not nick.strip()
            or len(nick.strip()) > MAX_NICK
        ):
            await self.send_json(
                {"type": "error", "reason": f"a nickname is 1 to {MAX_NICK} characters"}
            )
            return
        assert self.channel_layer is not None
        self.nick = nick.strip()
        self.members[self.channel_name] = self.nick
        await self.send_json(
            {
                "type": "welcome",
                "room": self.room,
                "nick": self.nick,
                "history": self.history.get(self.room),
                "members": len(self.members),
            }
        )
        await self.channel_layer.group_send(
            self.room_group,
            {"type": "room.join", "channel": self.channel_name, "nick": self.nick},
        )

    async def say(self, text: object) -> None:
        if self.nick is None:
            await self.send_json({"type": "error", "reason": "join first"})
            return
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
            await self.send_json(
                {"type": "error", "reason": f"a message is 1 to {MAX_TEXT} characters"}
            )
            return
        assert self.channel_layer is not None
        await self.channel_layer.group_send(
            self.room_group,
            {
                "type": "chat.message",
                "id": uuid.uuid4().hex,
                "nick": self.nick,
                "text": text,
                "ts": time.time(),
            },
        )

    # Handlers need not be checkpoints (the consumer checkpoints as it waits for
    # each event), hence the ASYNC910 noqa's below.

    async def disconnect(self, code: int) -> None:  # noqa: ASYNC910 - a handler
        if self.nick is not None and self.channel_layer is not None:
            await self.channel_layer.group_send(
                self.room_group,
                {"type": "room.leave", "channel": self.channel_name, "nick": self.nick},
            )

    # -- channel-layer events -----------------------------------------------------------

    async def chat_message(self, event: Message) -> None:  # noqa: ASYNC910 - a handler
        message = {k: event[k] for k in ("id", "nick", "text", "ts")}
        self.history.add(self.room, message)
        if self.nick is not None:
            await self.send_json({"type": "message", **message})

    async def room_join(self, event: Message) -> None:
        if self.nick is None or event["channel"] == self.channel_name:
            return  # noqa: ASYNC910 - a handler
        assert self.channel_layer is not None
        self.members[event["channel"]] = event["nick"]
        await self.send_json(
            {"type": "joined", "nick": event["nick"], "members": len(self.members)}
        )
        await self.channel_layer.send(
            event["channel"],
            {
                "type": "room.here",
                "channel": self.channel_name,
                "nick": self.nick,
                "history": self.history.get(self.room),
            },
        )

    async def room_here(self, event: Message) -> None:
        if self.nick is None:
            return  # noqa: ASYNC910 - a handler
        self.members[event["channel"]] = event["nick"]
        learnt = [m for m in event["history"] if self.history.add(self.room, m)]
        if learnt:
            await self.send_json({"type": "history", "messages": learnt})
        await self.send_json(
            {
                "type": "members",
                "count": len(self.members),
                "nicks": sorted(self.members.values()),
            }
        )

    async def room_leave(self, event: Message) -> None:  # noqa: ASYNC910 - a handler
        if (
            self.members.pop(event["channel"], None) is not None
            and self.nick is not None
        ):
            await self.send_json(
                {"type": "left", "nick": event["nick"], "members": len(self.members)}
            )


def _page() -> bytes:
    return (
        resources.files("trichannels.demo").joinpath("static/index.html").read_bytes()
    )


async def page(scope: Scope, receive: Receive, send: Send) -> None:
    """Serve the demo page at ``/`` (and 404 elsewhere)."""
    if scope["type"] != "http":
        raise ValueError(f"the page app serves HTTP only, got {scope['type']!r}")
    if scope["path"] in ("/", "/index.html") and scope["method"] in ("GET", "HEAD"):
        status, body, ctype = 200, _page(), b"text/html; charset=utf-8"
    elif scope["path"] == "/healthz":
        status, body, ctype = 200, b"ok\n", b"text/plain"
    else:
        status, body, ctype = 404, b"not found\n", b"text/plain"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", ctype),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send(
        {
            "type": "http.response.body",
            "body": b"" if scope["method"] == "HEAD" else body,
        }
    )


def make_application(*, history: int = 50) -> ASGIApp:
    """Build the demo application; ``history`` messages per room are replayed on join."""
    consumer = ChatConsumer.as_asgi(history=RoomHistory(history))
    return ProtocolTypeRouter(
        {
            "http": page,
            "websocket": URLRouter([path("ws/chat/<slug:room>/", consumer)]),
        }
    )
