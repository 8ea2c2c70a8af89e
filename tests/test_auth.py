"""AuthMiddleware, login/logout with key rotation, and bearer-token authentication."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import coredis
import pytest
import trio
import trio.testing

from trichannels.auth import (
    SESSION_KEY,
    AnonymousUser,
    AuthMiddleware,
    AuthMiddlewareStack,
    TokenAuthMiddleware,
    get_session_user_id,
    login,
    logout,
)
from trichannels.exceptions import ConfigurationError
from trichannels.sessions import RedisSessionStore, Session, SignedCookieSessionStore
from trichannels.testing import HttpCommunicator, WebsocketCommunicator
from trichannels.types import ASGIApp, Receive, Scope, Send

KEY = "s" * 32
TOKEN = "tok.EN-0123456789abcdef"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
USERS = {1: "alice", 2: "bob"}


class User:
    """A minimal application user."""

    is_authenticated = True

    def __init__(self, user_id: int) -> None:
        self.id = user_id
        self.name = USERS[user_id]


class CountingGetUser:
    """get_user for AuthMiddleware: reads the session's user id, counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Scope) -> User | None:
        self.calls += 1
        await trio.lowlevel.checkpoint()
        user_id = get_session_user_id(scope)
        return None if user_id is None else User(user_id)


def ws_user_app(seen: list[Scope]) -> ASGIApp:
    """Accepts (with 'chat' if offered), reports the user's name for every frame."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)
        await receive()
        subprotocol = "chat" if "chat" in scope.get("subprotocols", []) else None
        await send({"type": "websocket.accept", "subprotocol": subprotocol})
        while (await receive())["type"] == "websocket.receive":
            user = scope["user"]
            await send(
                {"type": "websocket.send", "text": getattr(user, "name", "anonymous")}
            )

    return app


def http_app(seen: list[Scope], action: Any = None) -> ASGIApp:
    """Runs ``await action(scope)``, then answers with the user's name."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)
        await receive()
        if action is not None:
            await action(scope)
        name = getattr(scope["user"], "name", "anonymous")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": name.encode()})

    return app


def session_cookie(response: dict[str, Any]) -> str | None:
    for name, value in response["headers"]:
        if name == b"set-cookie" and value.startswith(b"sessionid="):
            return str(value.decode().split(";")[0].removeprefix("sessionid="))
    return None


async def get(app: ASGIApp, cookie: str | None = None) -> dict[str, Any]:
    headers = [] if cookie is None else [(b"cookie", f"sessionid={cookie}".encode())]
    async with HttpCommunicator(app, "GET", "/", headers=headers) as comm:
        response = await comm.get_response()
    return response


# -- AnonymousUser and AuthMiddleware ------------------------------------------------------------


def test_anonymous_user() -> None:
    """AnonymousUser instances are equal, unauthenticated and have no id."""
    user = AnonymousUser()
    assert user == AnonymousUser()
    assert hash(user) == hash(AnonymousUser())
    assert user != object()
    assert (user.id, user.is_authenticated, user.is_anonymous) == (None, False, True)
    assert repr(user) == "AnonymousUser()"


async def test_user_resolved_once_per_connection() -> None:
    """get_user runs once per WebSocket connection, however many messages follow."""
    calls: list[Scope] = []
    seen: list[Scope] = []

    async def get_user(scope: Scope) -> User:
        calls.append(scope)
        await trio.lowlevel.checkpoint()
        return User(2)

    app = AuthMiddleware(ws_user_app(seen), get_user)
    async with WebsocketCommunicator(app, "/ws/") as comm:
        assert (await comm.connect())[0]
        for _ in range(5):
            await comm.send_to(text_data="who")
            assert await comm.receive_from() == "bob"
    assert len(calls) == 1
    assert calls[0] is seen[0]  # get_user sees the inner application's scope
    async with WebsocketCommunicator(app, "/ws/") as comm:
        assert (await comm.connect())[0]
    assert len(calls) == 2


async def test_none_user_is_anonymous() -> None:
    """get_user returning None gives AnonymousUser; lifespan scopes pass through untouched."""
    seen: list[Scope] = []

    async def nobody(scope: Scope) -> None:
        await trio.lowlevel.checkpoint()

    response = await get(AuthMiddleware(http_app(seen), nobody))
    assert response["body"] == b"anonymous"
    assert seen[0]["user"] == AnonymousUser()


async def test_get_user_sees_session_via_stack() -> None:
    """With AuthMiddlewareStack, login over HTTP logs the next request in."""
    get_user = CountingGetUser()
    store = SignedCookieSessionStore([KEY])

    async def do_login(scope: Scope) -> None:
        await login(scope, 1, user=User(1))

    seen: list[Scope] = []
    login_app = AuthMiddlewareStack(http_app(seen, do_login), get_user, store)
    first = await get(login_app)
    assert first["body"] == b"alice"  # user= updates scope["user"] at once
    cookie = session_cookie(first)
    assert cookie is not None
    second = await get(AuthMiddlewareStack(http_app(seen), get_user, store), cookie)
    assert second["body"] == b"alice"
    assert get_user.calls == 2


async def test_login_other_user_flushes_data() -> None:
    """Logging in a different user drops the previous user's session data."""
    store = SignedCookieSessionStore([KEY])
    cookie = await store.save(None, {SESSION_KEY: 1, "cart": ["x"]}, max_age=60)
    sessions: list[Session] = []

    async def switch(scope: Scope) -> None:
        await login(scope, 2)
        sessions.append(scope["session"])

    response = await get(
        AuthMiddlewareStack(http_app([], switch), CountingGetUser(), store), cookie
    )
    assert response["body"] == b"alice"  # no user= given: scope["user"] unchanged
    assert dict(sessions[0]) == {SESSION_KEY: 2}


async def test_login_same_user_keeps_data() -> None:
    """Logging the same user in again keeps the session data (but still re-issues the cookie)."""
    now = [1_000_000.0]
    store = SignedCookieSessionStore([KEY], clock=lambda: now[0])
    cookie = await store.save(None, {SESSION_KEY: 1, "cart": ["x"]}, max_age=60)
    now[0] += 1

    async def again(scope: Scope) -> None:
        await login(scope, 1)

    response = await get(
        AuthMiddlewareStack(http_app([], again), CountingGetUser(), store), cookie
    )
    new_cookie = session_cookie(response)
    assert new_cookie not in (None, cookie)
    assert await store.load(new_cookie or "", max_age=60) == {
        SESSION_KEY: 1,
        "cart": ["x"],
    }


async def test_logout() -> None:
    """logout empties the session, deletes the cookie and makes the user anonymous."""
    store = SignedCookieSessionStore([KEY])
    cookie = await store.save(None, {SESSION_KEY: 1}, max_age=60)
    seen: list[Scope] = []

    async def do_logout(scope: Scope) -> None:
        assert scope["user"].name == "alice"
        await logout(scope)

    response = await get(
        AuthMiddlewareStack(http_app(seen, do_logout), CountingGetUser(), store), cookie
    )
    assert response["body"] == b"anonymous"
    assert session_cookie(response) == ""
    assert seen[0]["session"].is_empty


async def test_login_in_connect_before_accept() -> None:
    """Over a WebSocket, login before accept rotates the key and sets the cookie on the handshake."""
    store = SignedCookieSessionStore([KEY])

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await login(scope, 2, user=User(2))
        await send({"type": "websocket.accept"})
        with pytest.raises(
            RuntimeError,
            match=r"^cannot rotate the session key after the session cookie was sent \(after the HTTP response started or the WebSocket handshake was answered\); do it before, e\.g\. in connect\(\) before accept\(\)$",
        ):
            await login(scope, 1)
        await send({"type": "websocket.send", "text": scope["user"].name})
        await receive()

    async with WebsocketCommunicator(
        AuthMiddlewareStack(app, CountingGetUser(), store), "/"
    ) as comm:
        assert (await comm.connect())[0]
        assert await comm.receive_from() == "bob"
        assert comm.response_headers is not None
        [(_, header)] = comm.response_headers
    cookie = header.decode().split(";")[0].removeprefix("sessionid=")
    assert await store.load(cookie, max_age=60) == {SESSION_KEY: 2}


async def test_logout_after_handshake_warns_for_signed_cookies(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Logging out over an accepted WebSocket cannot clear a signed cookie, and says so."""
    store = SignedCookieSessionStore([KEY])
    cookie = await store.save(None, {SESSION_KEY: 1}, max_age=60)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await logout(scope)
        await send({"type": "websocket.send", "text": repr(scope["user"])})
        await receive()

    headers = [(b"cookie", f"sessionid={cookie}".encode())]
    with caplog.at_level(logging.WARNING, logger="trichannels.sessions"):
        async with WebsocketCommunicator(
            AuthMiddlewareStack(app, CountingGetUser(), store), "/", headers=headers
        ) as comm:
            assert (await comm.connect())[0]
            assert await comm.receive_from() == "AnonymousUser()"
    assert caplog.messages == [
        "the session was emptied after its cookie was sent: the client keeps its old signed "
        "cookie, which stays valid until it expires"
    ]


async def test_login_logout_are_checkpoints() -> None:
    """login and logout are checkpoints even when no store I/O is needed."""
    scope: Scope = {
        "session": Session(SignedCookieSessionStore([KEY]), None, {}),
        "user": None,
    }
    with trio.testing.assert_checkpoints():
        await login(scope, 1)
    with trio.testing.assert_checkpoints():
        await logout(scope)
    assert scope["user"] == AnonymousUser()
    assert scope["session"].is_empty


async def test_session_helpers_need_session() -> None:
    """login/logout/get_session_user_id without SessionMiddleware say what is missing."""
    scope: Scope = {"type": "http"}
    with pytest.raises(
        ValueError,
        match=r"^login\(\) needs scope\['session'\]: wrap the application in SessionMiddleware \(or AuthMiddlewareStack\)$",
    ):
        await login(scope, 1)
    with pytest.raises(ValueError, match=r"^logout\(\) needs scope\['session'\]: .*$"):
        await logout(scope)
    with pytest.raises(
        ValueError, match=r"^get_session_user_id\(\) needs scope\['session'\]: .*$"
    ):
        get_session_user_id(scope)


@pytest.mark.parametrize("bad", [None, 1.5, True, ["1"]])
async def test_login_user_id_type(bad: Any) -> None:
    """login refuses user ids that are not str or int, naming the value."""
    scope: Scope = {"session": Session(SignedCookieSessionStore([KEY]), None, {})}
    with pytest.raises(
        TypeError,
        match=rf"^user_id must be a str or int, got {bad!r}$".replace(
            "[", r"\["
        ).replace("]", r"\]"),
    ):
        await login(scope, bad)


def test_auth_middleware_configuration() -> None:
    """A get_user that is not callable is refused at construction."""
    with pytest.raises(
        TypeError, match=r"^get_user must be an async callable, got 'x'$"
    ):
        AuthMiddleware(http_app([]), "x")  # type: ignore[arg-type]


# -- session fixation with the Redis store ----------------------------------------------------------


@pytest.fixture
async def redis_store() -> AsyncIterator[RedisSessionStore]:
    """A RedisSessionStore on a unique prefix; skipped loudly without Redis, failing under CI=true."""
    host, _, port = REDIS_URL.removeprefix("redis://").split("/")[0].rpartition(":")
    try:
        with trio.fail_after(2):
            stream = await trio.open_tcp_stream(host, int(port))
            await stream.aclose()
    except (OSError, trio.TooSlowError) as exc:
        message = f"Redis is not reachable at {REDIS_URL} ({exc!r}); login key rotation on Redis is UNTESTED"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    prefix = f"trichannels-test:{uuid4().hex}:"
    client: coredis.Redis[bytes] = coredis.Redis.from_url(REDIS_URL)
    async with client:
        yield RedisSessionStore(client, key_prefix=prefix)
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(keys)


@pytest.mark.redis
async def test_login_defeats_session_fixation(redis_store: RedisSessionStore) -> None:
    """A session key planted before login is worthless after it: login rotates the key."""
    planted = await redis_store.save(None, {"theme": "dark"}, max_age=60)

    async def do_login(scope: Scope) -> None:
        await login(scope, 1)

    get_user = CountingGetUser()
    response = await get(
        AuthMiddlewareStack(http_app([], do_login), get_user, redis_store), planted
    )
    fresh = session_cookie(response)
    assert fresh not in (None, planted)
    assert await redis_store.load(planted, max_age=60) is None
    assert await redis_store.load(fresh or "", max_age=60) == {
        "theme": "dark",
        SESSION_KEY: 1,
    }
    # The attacker's copy of the planted key logs nobody in.
    assert (
        await get(AuthMiddlewareStack(http_app([]), get_user, redis_store), planted)
    )["body"] == b"anonymous"
    assert (await get(AuthMiddlewareStack(http_app([]), get_user, redis_store), fresh))[
        "body"
    ] == b"alice"


@pytest.mark.redis
async def test_logout_ends_redis_session_everywhere(
    redis_store: RedisSessionStore,
) -> None:
    """With Redis, logout over an accepted WebSocket deletes the record at once."""
    key = await redis_store.save(None, {SESSION_KEY: 1}, max_age=60)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await logout(scope)
        await send({"type": "websocket.send", "text": "out"})
        await receive()

    headers = [(b"cookie", f"sessionid={key}".encode())]
    async with WebsocketCommunicator(
        AuthMiddlewareStack(app, CountingGetUser(), redis_store), "/", headers=headers
    ) as comm:
        assert (await comm.connect())[0]
        assert await comm.receive_from() == "out"
    assert await redis_store.load(key, max_age=60) is None


# -- TokenAuthMiddleware -----------------------------------------------------------------------------


class Authenticator:
    """authenticate(token) for TokenAuthMiddleware; records what it was given."""

    def __init__(self) -> None:
        self.tokens: list[str] = []

    async def __call__(self, token: str) -> User | None:
        self.tokens.append(token)
        await trio.lowlevel.checkpoint()
        return User(1) if token == TOKEN else None


def scope_text(scope: Scope) -> str:
    return repr(sorted((k, v) for k, v in scope.items() if k != "user"))


async def test_token_from_query_string_is_stripped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A ?token= is used once, and removed from the query string the app sees; other params keep their bytes."""
    seen: list[Scope] = []
    authenticate = Authenticator()
    app = TokenAuthMiddleware(ws_user_app(seen), authenticate)
    with caplog.at_level(logging.DEBUG):
        async with WebsocketCommunicator(
            app, f"/ws/?room=a%20b&token={TOKEN}&x=1"
        ) as comm:
            assert (await comm.connect())[0]
            await comm.send_to(text_data="?")
            assert await comm.receive_from() == "alice"
    assert authenticate.tokens == [TOKEN]
    assert seen[0]["query_string"] == b"room=a%20b&x=1"
    assert TOKEN not in scope_text(seen[0])
    assert TOKEN not in caplog.text


async def test_token_from_subprotocol_is_stripped() -> None:
    """An access_token.<token> subprotocol is used and removed from subprotocols and headers."""
    seen: list[Scope] = []
    authenticate = Authenticator()
    app = TokenAuthMiddleware(ws_user_app(seen), authenticate)
    headers = [(b"sec-websocket-protocol", f"access_token.{TOKEN}, chat".encode())]
    async with WebsocketCommunicator(
        app, "/ws/", headers=headers, subprotocols=[f"access_token.{TOKEN}", "chat"]
    ) as comm:
        assert await comm.connect() == (True, "chat")
        await comm.send_to(text_data="?")
        assert await comm.receive_from() == "alice"
    assert authenticate.tokens == [TOKEN]
    assert seen[0]["subprotocols"] == ["chat"]
    assert seen[0]["headers"] == [(b"sec-websocket-protocol", b"chat")]
    assert TOKEN not in scope_text(seen[0])


async def test_token_only_subprotocol_drops_header() -> None:
    """When the token was the only subprotocol, the protocol header disappears entirely."""
    seen: list[Scope] = []
    headers = [
        (b"sec-websocket-protocol", f"access_token.{TOKEN}".encode()),
        (b"host", b"x"),
    ]
    app = TokenAuthMiddleware(ws_user_app(seen), Authenticator())
    async with WebsocketCommunicator(
        app, "/ws/", headers=headers, subprotocols=[f"access_token.{TOKEN}"]
    ) as comm:
        assert await comm.connect() == (True, None)
    assert seen[0]["subprotocols"] == []
    assert seen[0]["headers"] == [(b"host", b"x")]


async def test_token_from_authorization_header_http() -> None:
    """An Authorization: Bearer header authenticates HTTP too, and is removed."""
    seen: list[Scope] = []
    authenticate = Authenticator()
    headers = [(b"authorization", f"bearer {TOKEN}".encode()), (b"accept", b"*/*")]
    async with HttpCommunicator(
        TokenAuthMiddleware(http_app(seen), authenticate), "GET", "/", headers=headers
    ) as comm:
        assert (await comm.get_response())["body"] == b"alice"
    assert seen[0]["headers"] == [(b"accept", b"*/*")]


async def test_other_authorization_schemes_untouched() -> None:
    """A Basic Authorization header is neither used nor stripped."""
    seen: list[Scope] = []
    authenticate = Authenticator()
    headers = [(b"authorization", b"Basic dXNlcjpwdw==")]
    async with HttpCommunicator(
        TokenAuthMiddleware(http_app(seen), authenticate), "GET", "/", headers=headers
    ) as comm:
        assert (await comm.get_response())["body"] == b"anonymous"
    assert authenticate.tokens == []
    assert seen[0]["headers"] == headers


async def test_token_precedence_and_all_carriers_stripped() -> None:
    """Header beats subprotocol beats query; every carrier is stripped regardless."""
    seen: list[Scope] = []
    authenticate = Authenticator()
    headers = [
        (b"authorization", f"Bearer {TOKEN}".encode()),
        (b"sec-websocket-protocol", b"access_token.second"),
    ]
    app = TokenAuthMiddleware(ws_user_app(seen), authenticate)
    async with WebsocketCommunicator(
        app, "/?token=third", headers=headers, subprotocols=["access_token.second"]
    ) as comm:
        assert (await comm.connect())[0]
    assert authenticate.tokens == [TOKEN]
    assert seen[0]["headers"] == []
    assert seen[0]["subprotocols"] == []
    assert seen[0]["query_string"] == b""


async def test_invalid_token_is_anonymous_and_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A rejected token gives AnonymousUser; the log names the carrier, never the token."""
    seen: list[Scope] = []
    bad = "not-the-right-token-xyz"
    with caplog.at_level(logging.DEBUG):
        async with WebsocketCommunicator(
            TokenAuthMiddleware(ws_user_app(seen), Authenticator()), f"/?token={bad}"
        ) as comm:
            assert (await comm.connect())[0]
    assert seen[0]["user"] == AnonymousUser()
    assert caplog.messages == [
        "token authentication failed (token from the query string)"
    ]
    assert bad not in caplog.text


async def test_no_token_no_call() -> None:
    """Without any token (or an empty one) authenticate is not called."""
    seen: list[Scope] = []
    authenticate = Authenticator()
    app = TokenAuthMiddleware(ws_user_app(seen), authenticate)
    async with WebsocketCommunicator(app, "/?token=&a=1") as comm:
        assert (await comm.connect())[0]
    assert authenticate.tokens == []
    assert seen[0]["user"] == AnonymousUser()
    assert seen[0]["query_string"] == b"a=1"


async def test_disabled_carriers_are_left_alone() -> None:
    """With query_param=None and subprotocol_prefix=None those places are not read or changed."""
    seen: list[Scope] = []
    authenticate = Authenticator()
    app = TokenAuthMiddleware(
        ws_user_app(seen), authenticate, query_param=None, subprotocol_prefix=None
    )
    async with WebsocketCommunicator(
        app, f"/?token={TOKEN}", subprotocols=[f"access_token.{TOKEN}"]
    ) as comm:
        assert (await comm.connect())[0]
    assert authenticate.tokens == []
    assert seen[0]["query_string"] == f"token={TOKEN}".encode()


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (
            {"query_param": ""},
            ConfigurationError,
            r"^invalid query_param '': use a non-empty name of ASCII letters, digits and \._~- \(or None\)$",
        ),
        (
            {"query_param": "a&b"},
            ConfigurationError,
            r"^invalid query_param 'a&b': .*$",
        ),
        (
            {"subprotocol_prefix": ""},
            ConfigurationError,
            r"^invalid subprotocol_prefix '': use a non-empty HTTP token such as 'access_token\.' \(or None\)$",
        ),
        (
            {"subprotocol_prefix": "a b"},
            ConfigurationError,
            r"^invalid subprotocol_prefix 'a b': .*$",
        ),
    ],
)
def test_token_middleware_configuration(
    kwargs: dict[str, Any], exc: type[Exception], match: str
) -> None:
    """Bad options are refused at construction, naming the value."""
    with pytest.raises(exc, match=match):
        TokenAuthMiddleware(http_app([]), Authenticator(), **kwargs)


def test_token_middleware_needs_callable() -> None:
    """authenticate must be callable."""
    with pytest.raises(
        TypeError, match=r"^authenticate must be an async callable, got None$"
    ):
        TokenAuthMiddleware(http_app([]), None)  # type: ignore[arg-type]
