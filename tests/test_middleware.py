"""BaseMiddleware: the inner application gets a copy; the outer scope never changes."""

from __future__ import annotations

import copy
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import trio

from trichannels.auth import AnonymousUser, AuthMiddlewareStack, TokenAuthMiddleware
from trichannels.middleware import BaseMiddleware
from trichannels.security import OriginValidator
from trichannels.sessions import SignedCookieSessionStore
from trichannels.testing import HttpCommunicator, WebsocketCommunicator
from trichannels.types import ASGIApp, Message, Receive, Scope, Send

KEY = "k" * 40


def recording_app(seen: list[Scope]) -> ASGIApp:
    """A raw ASGI app that records its scope, mutates it, and answers HTTP or accepts a WebSocket."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)
        scope["inner_was_here"] = True
        if scope["type"] == "http":
            await receive()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
        elif scope["type"] == "websocket":
            assert (await receive())["type"] == "websocket.connect"
            await send({"type": "websocket.accept"})
            while (await receive())["type"] != "websocket.disconnect":
                pass

    return app


class AddsKey(BaseMiddleware):
    """Adds scope["added"] and counts populate_scope calls."""

    scope_types = frozenset({"http", "websocket"})

    def __init__(self, inner: ASGIApp) -> None:
        super().__init__(inner)
        self.calls = 0

    async def populate_scope(self, scope: Scope) -> None:
        self.calls += 1
        scope["added"] = self.calls


def feeder(*messages: Message) -> tuple[Receive, Send, list[Message]]:
    """A receive returning ``messages`` in order (then parking) and a send that records."""
    pending = list(messages)
    sent: list[Message] = []

    async def receive() -> Message:
        if pending:
            await trio.lowlevel.checkpoint()
            return pending.pop(0)
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        await trio.lowlevel.checkpoint()
        sent.append(message)

    return receive, send, sent


async def test_inner_gets_copy_with_additions() -> None:
    """The inner app sees the additions on a copy; the outer scope is unchanged."""
    seen: list[Scope] = []
    middleware = AddsKey(recording_app(seen))
    scope: Scope = {"type": "http", "path": "/", "headers": []}
    receive, send, _ = feeder({"type": "http.request", "body": b""})
    await middleware(scope, receive, send)
    assert seen[0] is not scope
    assert seen[0]["added"] == 1
    assert seen[0]["inner_was_here"] is True
    assert scope == {"type": "http", "path": "/", "headers": []}


async def test_other_scope_types_pass_through_same_object() -> None:
    """A scope type outside scope_types reaches the inner app as the very same object."""
    seen: list[Scope] = []
    middleware = AddsKey(recording_app(seen))
    scope: Scope = {"type": "lifespan"}
    receive, send, _ = feeder()
    await middleware(scope, receive, send)
    assert seen == [scope]
    assert seen[0] is scope
    assert middleware.calls == 0


async def test_populate_scope_runs_once_per_connection() -> None:
    """populate_scope runs once per connection, and connections do not share scopes."""
    seen: list[Scope] = []
    middleware = AddsKey(recording_app(seen))
    for _ in range(2):
        async with WebsocketCommunicator(middleware, "/ws/") as comm:
            assert await comm.connect() == (True, None)
            await comm.send_to(text_data="x")
            await comm.disconnect()
    assert middleware.calls == 2
    assert [s["added"] for s in seen] == [1, 2]


async def test_wrap_send_is_used() -> None:
    """wrap_send's callable is what the inner application sends through."""

    class Tagger(BaseMiddleware):
        def wrap_send(self, scope: Scope, send: Send) -> Send:
            async def tagged(message: Message) -> None:
                await send({**message, "tag": scope["path"]})

            return tagged

    async with HttpCommunicator(Tagger(recording_app([])), "GET", "/p") as comm:
        await comm.send_input({"type": "http.request", "body": b""})
        start = await comm.receive_output()
    assert start["tag"] == "/p"


async def test_channels_style_subclass_overriding_call() -> None:
    """A Channels-style subclass that copies, adds, and calls super().__call__ still works."""

    class Legacy(BaseMiddleware):
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            scope = dict(scope)
            scope["legacy"] = "yes"
            await super().__call__(scope, receive, send)

    seen: list[Scope] = []
    outer: Scope = {"type": "http", "path": "/", "headers": []}
    receive, send, _ = feeder({"type": "http.request", "body": b""})
    await Legacy(recording_app(seen))(outer, receive, send)
    assert seen[0]["legacy"] == "yes"
    assert "legacy" not in outer


async def test_full_stack_never_mutates_outer_scope() -> None:
    """Origin check, token auth, cookies, session and auth together leave the caller's scope intact."""
    seen: list[Scope] = []

    async def get_user(scope: Scope) -> Any:
        return None

    async def authenticate(token: str) -> Any:
        return {"name": "alice"} if token == "secret-token" else None

    app = OriginValidator(
        TokenAuthMiddleware(
            AuthMiddlewareStack(
                recording_app(seen), get_user, SignedCookieSessionStore([KEY])
            ),
            authenticate,
        ),
        ["https://example.com"],
    )
    headers = [
        (b"origin", b"https://example.com"),
        (b"cookie", b"a=1; sessionid=garbage"),
        (b"sec-websocket-protocol", b"access_token.secret-token, chat"),
    ]
    scope: Scope = {
        "type": "websocket",
        "path": "/ws/",
        "query_string": b"token=secret-token&room=1",
        "headers": headers,
        "subprotocols": ["access_token.secret-token", "chat"],
    }
    snapshot = copy.deepcopy(scope)
    receive, send, sent = feeder(
        {"type": "websocket.connect"}, {"type": "websocket.disconnect"}
    )
    await app(scope, receive, send)
    assert scope == snapshot
    assert scope["headers"] is headers
    assert sent[0]["type"] == "websocket.accept"
    inner = seen[0]
    assert inner["user"] == AnonymousUser()  # AuthMiddleware (inside) resolves last
    assert inner["cookies"] == {"a": "1", "sessionid": "garbage"}
    assert inner["subprotocols"] == ["chat"]
    assert inner["query_string"] == b"room=1"


def test_inner_must_be_callable() -> None:
    """A non-callable inner application is refused at construction."""
    with pytest.raises(
        TypeError,
        match=r"^inner must be an ASGI application \(a callable\), got 'nope'$",
    ):
        BaseMiddleware("nope")  # type: ignore[arg-type]


def test_middleware_stack_neutral(backend: str) -> None:
    """Origin check, token auth, cookies, sessions and auth work the same on asyncio and trio."""

    async def body() -> None:
        async def get_user(scope: Scope) -> Any:
            await anyio.lowlevel.checkpoint()
            return scope["session"].get("name")

        async def authenticate(token: str) -> Any:
            await anyio.lowlevel.checkpoint()
            return "bob" if token == "t0k" else None

        async def inner(scope: Scope, receive: Receive, send: Send) -> None:
            await receive()
            if scope["type"] == "http":
                scope["session"]["name"] = "alice"
                await send(
                    {"type": "http.response.start", "status": 200, "headers": []}
                )
                await send({"type": "http.response.body", "body": b""})
                return
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": f"{scope['user']}"})
            await receive()

        store = SignedCookieSessionStore([KEY])
        http_app = AuthMiddlewareStack(inner, get_user, store)
        async with HttpCommunicator(http_app, "GET", "/") as http:
            response = await http.get_response()
        [(_, cookie)] = response["headers"]
        cookie_header = cookie.split(b";")[0]
        ws_app = OriginValidator(
            AuthMiddlewareStack(inner, get_user, store), ["good.test"]
        )
        headers = [(b"origin", b"https://good.test"), (b"cookie", cookie_header)]
        async with WebsocketCommunicator(ws_app, "/", headers=headers) as comm:
            assert (await comm.connect())[0]
            assert await comm.receive_from() == "alice"
        token_app = OriginValidator(
            TokenAuthMiddleware(inner, authenticate), ["good.test"]
        )
        async with WebsocketCommunicator(
            token_app, "/?token=t0k", headers=headers[:1]
        ) as comm:
            assert (await comm.connect())[0]
            assert await comm.receive_from() == "bob"
        async with WebsocketCommunicator(
            ws_app, "/", headers=[(b"origin", b"https://x.test")]
        ) as comm:
            assert await comm.connect() == (False, 403)

    anyio.run(body, backend=backend)
