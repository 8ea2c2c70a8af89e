"""Cookies, sessions and the two session stores (the Redis one against a real server)."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import uuid4

import coredis
import pytest
import trio
import trio.testing

from trichannels.exceptions import ConfigurationError
from trichannels.sessions import (
    CookieMiddleware,
    RedisSessionStore,
    Session,
    SessionMiddleware,
    SessionMiddlewareStack,
    SessionStore,
    SignedCookieSessionStore,
    delete_cookie,
    parse_cookie,
    set_cookie,
)
from trichannels.testing import (
    HttpCommunicator,
    WebsocketCommunicator,
)
from trichannels.types import ASGIApp, Message, Receive, Scope, Send

KEY_A = "a" * 32
KEY_B = "b" * 32
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


# -- helpers -------------------------------------------------------------------------------


class Clock:
    """A settable clock for the signed-cookie store."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def set_cookies(response: dict[str, Any]) -> list[bytes]:
    """The raw set-cookie header values of a response."""
    return [value for name, value in response["headers"] if name == b"set-cookie"]


def cookie_value(response: dict[str, Any], name: str = "sessionid") -> str | None:
    """The value a response's set-cookie gives cookie ``name`` ("" when it deletes it)."""
    for raw in set_cookies(response):
        pair = raw.decode().split(";", 1)[0]
        key, _, value = pair.partition("=")
        if key == name:
            return value
    return None


def session_app(
    action: Callable[[Session], None] | None = None, *, status: int = 200
) -> ASGIApp:
    """An HTTP app that applies ``action`` to the session and answers with its contents."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        session: Session = scope["session"]
        if action is not None:
            action(session)
        body = repr(sorted(session.items())).encode()
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return app


def increment(session: Session) -> None:
    session["n"] = session.get("n", 0) + 1


async def request(app: ASGIApp, cookie: str | None = None) -> dict[str, Any]:
    headers = [] if cookie is None else [(b"cookie", f"sessionid={cookie}".encode())]
    async with HttpCommunicator(app, "GET", "/", headers=headers) as comm:
        response = await comm.get_response()
    return response


# -- cookie parsing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("", {}),
        ("a=1", {"a": "1"}),
        ("a=1; b=2", {"a": "1", "b": "2"}),
        ("  a = 1 ;b=2  ", {"a": "1", "b": "2"}),
        ("a=1;;b=2;", {"a": "1", "b": "2"}),
        ("a=b=c", {"a": "b=c"}),
        ("a=", {"a": ""}),
        ('a="x y"', {"a": "x y"}),
        ('a="\\"q\\""', {"a": '"q"'}),
        ('a="\\073"', {"a": ";"}),
        ('a="unterminated', {"a": '"unterminated'}),
        ("abc", {"": "abc"}),
        ("=v", {"": "v"}),
        ("a=1; a=2", {"a": "1"}),
        ("a=1, b=2", {"a": "1, b=2"}),
        ("caf\u00e9=cr\u00e8me", {"caf\u00e9": "cr\u00e8me"}),
    ],
)
def test_parse_cookie(header: str, expected: dict[str, str]) -> None:
    """parse_cookie follows browser leniency; the first of a repeated name wins."""
    assert parse_cookie(header) == expected


def cookies_app(seen: list[Scope]) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            return
        await receive()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], {}),
        ([(b"cookie", b"a=1; b=2")], {"a": "1", "b": "2"}),
        ([(b"cookie", b"a=1"), (b"cookie", b"b=2")], {"a": "1", "b": "2"}),
        ([(b"cookie", b"a=1"), (b"cookie", b"a=2")], {"a": "1"}),
        ([(b"cookie", "n=\u00e9t\u00e9".encode())], {"n": "\u00e9t\u00e9"}),
        ([(b"cookie", b"n=\xff")], {"n": "\ufffd"}),
        ([(b"x-cookie", b"a=1")], {}),
    ],
)
async def test_cookie_middleware(
    headers: list[tuple[bytes, bytes]], expected: dict[str, str]
) -> None:
    """CookieMiddleware merges every cookie header (HTTP/2 splits them) into scope['cookies']."""
    seen: list[Scope] = []
    async with HttpCommunicator(
        CookieMiddleware(cookies_app(seen)), "GET", "/", headers=headers
    ) as comm:
        await comm.get_response()
    assert seen[0]["cookies"] == expected


async def test_cookie_middleware_websocket() -> None:
    """WebSocket handshakes get scope['cookies'] too."""
    seen: list[Scope] = []
    app = CookieMiddleware(cookies_app(seen))
    async with WebsocketCommunicator(app, "/", headers=[(b"cookie", b"x=1")]) as comm:
        assert (await comm.connect())[0]
    assert seen[0]["cookies"] == {"x": "1"}


async def test_cookie_middleware_needs_headers() -> None:
    """An http scope without headers is a server bug, reported clearly."""
    middleware = CookieMiddleware(cookies_app([]))

    async def receive() -> Message:
        raise AssertionError("not called")

    async def send(message: Message) -> None:
        raise AssertionError("not called")

    with pytest.raises(
        ValueError,
        match=r"^CookieMiddleware was passed a 'http' scope without a 'headers' key$",
    ):
        await middleware({"type": "http"}, receive, send)


# -- set_cookie ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, b"k=v; Path=/; SameSite=Lax"),
        ({"path": None, "samesite": None}, b"k=v"),
        ({"max_age": 3600}, b"k=v; Path=/; Max-Age=3600; SameSite=Lax"),
        ({"max_age": timedelta(hours=2)}, b"k=v; Path=/; Max-Age=7200; SameSite=Lax"),
        (
            {
                "expires": datetime(
                    2030, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))
                )
            },
            b"k=v; Path=/; Expires=Wed, 02 Jan 2030 01:04:05 GMT; SameSite=Lax",
        ),
        (
            {
                "domain": ".example.com",
                "path": "/app",
                "secure": True,
                "httponly": True,
            },
            b"k=v; Path=/app; Domain=.example.com; Secure; HttpOnly; SameSite=Lax",
        ),
        ({"samesite": "STRICT"}, b"k=v; Path=/; SameSite=Strict"),
        ({"samesite": "none", "secure": True}, b"k=v; Path=/; Secure; SameSite=None"),
    ],
)
def test_set_cookie_attributes(kwargs: dict[str, Any], expected: bytes) -> None:
    """set_cookie appends one lowercase set-cookie header with the requested attributes."""
    headers = [(b"content-type", b"text/plain")]
    set_cookie(headers, "k", "v", **kwargs)
    assert headers == [(b"content-type", b"text/plain"), (b"set-cookie", expected)]


def test_set_cookie_prefixes_and_quoted_value() -> None:
    """__Host-/__Secure- cookies that follow the rules, and quoted values, are accepted."""
    headers: list[tuple[bytes, bytes]] = []
    set_cookie(headers, "__Host-id", '"abc"', secure=True)
    set_cookie(headers, "__Secure-id", "", secure=True, domain="example.com")
    assert headers == [
        (b"set-cookie", b'__Host-id="abc"; Path=/; Secure; SameSite=Lax'),
        (
            b"set-cookie",
            b"__Secure-id=; Path=/; Domain=example.com; Secure; SameSite=Lax",
        ),
    ]


def test_delete_cookie() -> None:
    """delete_cookie sends an empty value that expires at once."""
    headers: list[tuple[bytes, bytes]] = []
    delete_cookie(headers, "k", path="/app")
    assert headers == [
        (
            b"set-cookie",
            b"k=; Path=/app; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; SameSite=Lax",
        )
    ]


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "match"),
    [
        (
            ("", "v"),
            {},
            ValueError,
            r"^invalid cookie name '': it must be a non-empty token of ASCII letters, digits and !#\$%&'\*\+-\.\^_`\|~$",
        ),
        (("a b", "v"), {}, ValueError, r"^invalid cookie name 'a b': .*$"),
        (("a;b", "v"), {}, ValueError, r"^invalid cookie name 'a;b': .*$"),
        ((1, "v"), {}, TypeError, r"^cookie name must be a str, got 1$"),
        (
            ("k", "a b"),
            {},
            ValueError,
            r"^invalid cookie value 'a b': only printable ASCII without spaces, '\"', ',', ';' or '\\' is allowed; encode it first \(URL-safe base64, for example\)$",
        ),
        (("k", "a;b"), {}, ValueError, r"^invalid cookie value 'a;b': .*$"),
        (("k", "caf\u00e9"), {}, ValueError, r"^invalid cookie value 'caf\u00e9': .*$"),
        (("k", b"v"), {}, TypeError, r"^cookie value must be a str, got b'v'$"),
        (
            ("k", "v"),
            {"samesite": "loose"},
            ValueError,
            r"^invalid samesite 'loose': it must be 'strict', 'lax', 'none' or None$",
        ),
        (
            ("k", "v"),
            {"samesite": "none"},
            ValueError,
            r"^samesite='none' needs secure=True \(browsers reject SameSite=None cookies without Secure\)$",
        ),
        (
            ("k", "v"),
            {"max_age": -1},
            ValueError,
            r"^invalid max_age -1: it must be >= 0$",
        ),
        (
            ("k", "v"),
            {"max_age": "60"},
            TypeError,
            r"^max_age must be an int \(seconds\) or a timedelta, got '60'$",
        ),
        (
            ("k", "v"),
            {"max_age": True},
            TypeError,
            r"^max_age must be an int \(seconds\) or a timedelta, got True$",
        ),
        (
            ("k", "v"),
            {"expires": datetime(2030, 1, 1)},
            ValueError,
            r"^invalid expires datetime\.datetime\(2030, 1, 1, 0, 0\): it must be a timezone-aware datetime$",
        ),
        (
            ("k", "v"),
            {"expires": "tomorrow"},
            TypeError,
            r"^expires must be a timezone-aware datetime, got 'tomorrow'$",
        ),
        (
            ("k", "v"),
            {"path": "/a;b"},
            ValueError,
            r"^invalid cookie path '/a;b': it must be printable ASCII without ';'$",
        ),
        (
            ("k", "v"),
            {"domain": "exa mple.com"},
            ValueError,
            r"^invalid cookie domain 'exa mple.com': it must be a host name such as 'example.com' or '.example.com'$",
        ),
        (
            ("__Secure-k", "v"),
            {},
            ValueError,
            r"^cookie '__Secure-k' uses the __Secure- prefix and needs secure=True$",
        ),
        (
            ("__Host-k", "v"),
            {"secure": True, "path": "/app"},
            ValueError,
            r"^cookie '__Host-k' uses the __Host- prefix and needs secure=True, path='/' and no domain$",
        ),
        (
            ("__host-k", "v"),
            {"secure": True, "domain": "example.com"},
            ValueError,
            r"^cookie '__host-k' uses the __Host- prefix .*$",
        ),
    ],
)
def test_set_cookie_rejects(
    args: tuple[Any, ...], kwargs: dict[str, Any], exc: type[Exception], match: str
) -> None:
    """Every invalid argument raises, naming the value, and nothing is appended."""
    headers: list[tuple[bytes, bytes]] = []
    with pytest.raises(exc, match=match):
        set_cookie(headers, *args, **kwargs)
    assert headers == []


def test_set_cookie_needs_a_list() -> None:
    """The headers argument must be a list to append to."""
    with pytest.raises(
        TypeError,
        match=r"^headers must be a list of \(bytes, bytes\) pairs to append to, got \(\)$",
    ):
        set_cookie((), "k", "v")  # type: ignore[arg-type]


# -- signed-cookie sessions ------------------------------------------------------------------


async def test_signed_session_round_trip() -> None:
    """The cookie from response 1, sent with request 2, brings the session back."""
    app = SessionMiddlewareStack(
        session_app(increment), SignedCookieSessionStore([KEY_A])
    )
    first = await request(app)
    assert first["body"] == b"[('n', 1)]"
    cookie = cookie_value(first)
    assert cookie
    [header] = set_cookies(first)
    assert header.endswith(b"; Path=/; Max-Age=1209600; HttpOnly; SameSite=Lax")
    second = await request(app, cookie)
    assert second["body"] == b"[('n', 2)]"
    assert cookie_value(second) not in (None, cookie)


async def test_unmodified_session_sets_no_cookie() -> None:
    """Reading a session (or not touching it) sends no set-cookie."""
    store = SignedCookieSessionStore([KEY_A])
    cookie = await store.save(None, {"n": 5}, max_age=60)
    app = SessionMiddlewareStack(session_app(), store)
    assert set_cookies(await request(app)) == []
    response = await request(app, cookie)
    assert response["body"] == b"[('n', 5)]"
    assert set_cookies(response) == []


def tamper(cookie: str, part: int) -> str:
    # Change the first character: the last one of unpadded base64 may carry
    # only padding bits, and changing those leaves the decoded bytes as they were.
    pieces = cookie.split(".")
    text = pieces[part]
    pieces[part] = ("A" if text[0] != "A" else "B") + text[1:]
    return ".".join(pieces)


@pytest.mark.parametrize("part", [0, 1, 2])
async def test_tampered_cookie_rejected_and_logged(
    part: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A cookie changed anywhere is rejected, logged without its value, and deleted."""
    store = SignedCookieSessionStore([KEY_A])
    good = await store.save(None, {"user": "alice"}, max_age=60)
    bad = tamper(good, part)
    app = SessionMiddlewareStack(session_app(), store)
    with caplog.at_level(logging.DEBUG):
        response = await request(app, bad)
    assert response["body"] == b"[]"
    assert cookie_value(response) == ""  # the client is told to drop it
    [record] = [r for r in caplog.records if r.name == "trichannels.sessions"]
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith("rejected a signed session cookie: ")
    assert bad not in caplog.text
    assert good.split(".")[2] not in caplog.text


@pytest.mark.parametrize("garbage", ["x", "a.b.c", "..", "eyJ9.12.short", "a" * 5000])
async def test_malformed_signed_cookie(
    garbage: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Malformed cookies give an empty session and a warning that does not repeat them."""
    store = SignedCookieSessionStore([KEY_A])
    with caplog.at_level(logging.WARNING, logger="trichannels.sessions"):
        assert await store.load(garbage, max_age=60) is None
    assert caplog.messages == [
        "rejected a signed session cookie: malformed; the session is empty"
    ]
    assert garbage not in caplog.text


async def test_expired_cookie_rejected_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A cookie older than max_age is rejected (logged without its value); one within it is not."""
    clock = Clock()
    store = SignedCookieSessionStore([KEY_A], clock=clock)
    cookie = await store.save(None, {"n": 1}, max_age=100)
    clock.now += 100
    assert await store.load(cookie, max_age=100) == {"n": 1}
    clock.now += 1
    with caplog.at_level(logging.WARNING, logger="trichannels.sessions"):
        assert await store.load(cookie, max_age=100) is None
    assert caplog.messages == [
        "rejected a signed session cookie: expired (age 101 s, max_age 100 s); the session is empty"
    ]
    assert cookie not in caplog.text


async def test_key_rotation(caplog: pytest.LogCaptureFixture) -> None:
    """Sign with the first key, verify with any; a dropped key's cookies are rejected."""
    old = SignedCookieSessionStore([KEY_A])
    rotating = SignedCookieSessionStore([KEY_B, KEY_A])
    new_only = SignedCookieSessionStore([KEY_B])
    old_cookie = await old.save(None, {"v": 1}, max_age=60)
    assert await rotating.load(old_cookie, max_age=60) == {"v": 1}
    new_cookie = await rotating.save(None, {"v": 2}, max_age=60)
    assert await new_only.load(new_cookie, max_age=60) == {"v": 2}
    assert await old.load(new_cookie, max_age=60) is None
    assert await new_only.load(old_cookie, max_age=60) is None
    assert "bad signature" in caplog.text


async def test_salt_separates_signatures() -> None:
    """The same key with another salt does not accept the cookie."""
    cookie = await SignedCookieSessionStore([KEY_A]).save(None, {"v": 1}, max_age=60)
    assert (
        await SignedCookieSessionStore([KEY_A], salt="other").load(cookie, max_age=60)
        is None
    )


async def test_signed_cookie_too_large() -> None:
    """A session that would not fit in a cookie raises instead of being dropped by the browser."""
    store = SignedCookieSessionStore([KEY_A])
    with pytest.raises(
        ValueError,
        match=r"^the signed session cookie would be \d+ bytes, over the 4000-byte limit browsers enforce; keep less in the session or use RedisSessionStore$",
    ):
        await store.save(None, {"blob": "x" * 4000}, max_age=60)


async def test_unserialisable_value_names_key() -> None:
    """A value JSON cannot hold is refused, naming its key."""
    store = SignedCookieSessionStore([KEY_A])
    with pytest.raises(
        TypeError,
        match=r"^session value for key 'when' is not JSON-serialisable: Object of type datetime is not JSON serializable$",
    ):
        await store.save(None, {"ok": 1, "when": datetime.now(UTC)}, max_age=60)


@pytest.mark.parametrize(
    ("keys", "kwargs", "match"),
    [
        (
            KEY_A,
            {},
            r"^secret_keys must be a sequence of keys, not a single str or bytes; wrap it in a list$",
        ),
        (
            [],
            {},
            r"^secret_keys is empty; give at least one key \(the first one signs\)$",
        ),
        (
            [KEY_A, "short"],
            {},
            r"^secret_keys\[1\] is 5 bytes long; use at least 32 random bytes, e\.g\. secrets\.token_urlsafe\(32\)$",
        ),
        ([KEY_A, 42], {}, r"^secret_keys\[1\] must be str or bytes, got int$"),
        ([KEY_A], {"salt": ""}, r"^salt must be a non-empty str, got ''$"),
    ],
)
def test_signed_store_configuration(
    keys: Any, kwargs: dict[str, Any], match: str
) -> None:
    """Bad keys are refused at construction, by position, without echoing key material."""
    with pytest.raises(ConfigurationError, match=match) as info:
        SignedCookieSessionStore(keys, **kwargs)
    assert "short" not in str(info.value)


async def test_session_mapping_rules() -> None:
    """Keys must be str; set/delete mark modified; repr hides data and key."""
    session = Session(SignedCookieSessionStore([KEY_A]), "secret-key", {"a": 1})
    initially_modified = session.modified
    assert not initially_modified
    with pytest.raises(TypeError, match=r"^session keys must be str, got 1$"):
        session[1] = "x"  # type: ignore[index]
    session["b"] = 2
    assert session.modified
    del session["a"]
    assert dict(session) == {"b": 2}
    assert repr(session) == "<Session with 1 keys, modified>"
    assert isinstance(SignedCookieSessionStore([KEY_A]), SessionStore)


async def test_operations_are_checkpoints() -> None:
    """Store methods and Session.save/flush are checkpoints even when they do no I/O."""
    store = SignedCookieSessionStore([KEY_A])
    with trio.testing.assert_checkpoints():
        cookie = await store.save(None, {"a": 1}, max_age=60)
    with trio.testing.assert_checkpoints():
        assert await store.load(cookie, max_age=60) == {"a": 1}
    with trio.testing.assert_checkpoints():
        await store.delete(cookie)
    session = Session(store, None, {})
    with trio.testing.assert_checkpoints():
        await session.save()
    with trio.testing.assert_checkpoints():
        await session.flush()
    with trio.testing.assert_no_checkpoints():
        session["x"] = 1
        session.cycle_key()


class BlockingStore:
    """A store whose save never returns (to test cancellation)."""

    data_in_cookie = False

    async def load(self, session_key: str, *, max_age: int) -> dict[str, Any] | None:
        await trio.lowlevel.checkpoint()
        return {"n": 1}

    async def save(self, session_key: str | None, data: Any, *, max_age: int) -> str:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def delete(self, session_key: str) -> None:
        await trio.lowlevel.checkpoint()


async def test_cancelled_save_leaves_session_unsaved(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A save cancelled mid-write keeps key, data and 'modified', so a later save can retry."""
    session = Session(BlockingStore(), "k" * 43, {"n": 1}, client_cookie="k" * 43)
    session["n"] = 2
    session.cycle_key()
    with trio.move_on_after(5) as scope:
        await session.save()
    assert scope.cancelled_caught
    assert trio.current_time() == 5
    assert (session.session_key, dict(session), session.modified) == (
        "k" * 43,
        {"n": 2},
        True,
    )
    assert session.cookie_settable


async def test_no_save_on_500() -> None:
    """A 500 response does not save the session or set a cookie."""
    app = SessionMiddlewareStack(
        session_app(increment, status=500), SignedCookieSessionStore([KEY_A])
    )
    assert set_cookies(await request(app)) == []


async def test_flush_deletes_cookie() -> None:
    """Emptying a session that came with a cookie deletes the cookie."""
    store = SignedCookieSessionStore([KEY_A])
    cookie = await store.save(None, {"n": 1}, max_age=60)
    app = SessionMiddlewareStack(session_app(lambda s: s.clear()), store)
    response = await request(app, cookie)
    [header] = set_cookies(response)
    assert header.startswith(b"sessionid=; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970")


async def test_cookie_settings() -> None:
    """Cookie name and attributes come from the middleware's settings."""
    app = CookieMiddleware(
        SessionMiddleware(
            session_app(increment),
            SignedCookieSessionStore([KEY_A]),
            cookie_name="sid",
            expire_at_browser_close=True,
            cookie_domain="example.com",
            cookie_secure=True,
            cookie_samesite="strict",
            cookie_httponly=False,
        )
    )
    [header] = set_cookies(await request(app))
    assert header.startswith(b"sid=")
    assert header.endswith(b"; Path=/; Domain=example.com; Secure; SameSite=Strict")


async def test_save_every_request_refreshes() -> None:
    """save_every_request re-signs a non-empty session on every response."""
    clock = Clock()
    store = SignedCookieSessionStore([KEY_A], clock=clock)
    cookie = await store.save(None, {"n": 1}, max_age=60)
    clock.now += 10
    app = CookieMiddleware(
        SessionMiddleware(session_app(), store, save_every_request=True)
    )
    fresh = cookie_value(await request(app, cookie))
    assert fresh not in (None, cookie)
    assert set_cookies(await request(app)) == []  # an empty session is not saved


async def test_websocket_session_set_at_handshake(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Changes before accept ride on the accept headers; after it, save warns and cycle_key raises."""
    sessions: list[Session] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        session: Session = scope["session"]
        sessions.append(session)
        await receive()
        session["joined"] = True
        await send({"type": "websocket.accept", "subprotocol": None})
        assert not session.cookie_settable
        session["later"] = True
        with caplog.at_level(logging.WARNING, logger="trichannels.sessions"):
            await session.save()
        with pytest.raises(
            RuntimeError,
            match=r"^cannot rotate the session key after the session cookie was sent .*$",
        ):
            session.cycle_key()
        await send({"type": "websocket.send", "text": "done"})
        await receive()

    store = SignedCookieSessionStore([KEY_A])
    async with WebsocketCommunicator(
        SessionMiddlewareStack(app, store), "/ws/"
    ) as comm:
        assert await comm.connect() == (True, None)
        assert await comm.receive_from() == "done"
        assert comm.response_headers is not None
        [(name, header)] = comm.response_headers
    assert name == b"set-cookie"
    cookie = header.decode().split(";")[0].removeprefix("sessionid=")
    assert await store.load(cookie, max_age=60) == {"joined": True}
    assert caplog.messages == [
        "session saved after its cookie was sent (after the WebSocket handshake or the HTTP "
        "response start): the store keeps the data in the cookie, so these changes last only "
        "until this connection closes"
    ]


async def test_websocket_refusal_locks_cookie() -> None:
    """A close before accept sends no cookie and ends cookie changes."""
    sessions: list[Session] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        sessions.append(scope["session"])
        await receive()
        scope["session"]["x"] = 1
        await send({"type": "websocket.close", "code": 4000})

    store = SignedCookieSessionStore([KEY_A])
    async with WebsocketCommunicator(
        SessionMiddlewareStack(app, store), "/ws/"
    ) as comm:
        assert await comm.connect() == (False, 4000)
    assert not sessions[0].cookie_settable


async def test_session_middleware_requires_cookies() -> None:
    """SessionMiddleware without CookieMiddleware says what to do."""
    app = SessionMiddleware(session_app(), SignedCookieSessionStore([KEY_A]))
    with pytest.raises(
        ValueError,
        match=r"^SessionMiddleware needs scope\['cookies'\]: wrap it in CookieMiddleware \(or use SessionMiddlewareStack\)$",
    ):
        await request(app)


async def test_nested_session_middleware_passes_through() -> None:
    """An inner SessionMiddleware leaves an existing scope['session'] alone."""
    store = SignedCookieSessionStore([KEY_A])
    seen: list[Session] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["session"])
        await session_app(increment)(scope, receive, send)

    outer = SessionMiddlewareStack(SessionMiddlewareStack(app, store), store)
    assert len(set_cookies(await request(outer))) == 1


def test_session_middleware_configuration() -> None:
    """Bad stores and cookie settings are refused at construction, named."""
    store = SignedCookieSessionStore([KEY_A])
    with pytest.raises(
        TypeError,
        match=r"^store must implement SessionStore \(data_in_cookie, async load/save/delete\), got 'redis'$",
    ):
        SessionMiddleware(session_app(), "redis")  # type: ignore[arg-type]
    with pytest.raises(
        ConfigurationError,
        match=r"^invalid max_age 0: it must be a positive int \(seconds\)$",
    ):
        SessionMiddleware(session_app(), store, max_age=0)
    with pytest.raises(
        ConfigurationError,
        match=r"^invalid session cookie setting: invalid samesite 'sometimes': it must be 'strict', 'lax', 'none' or None$",
    ):
        SessionMiddleware(session_app(), store, cookie_samesite="sometimes")
    with pytest.raises(
        ConfigurationError,
        match=r"^invalid session cookie setting: invalid cookie name 'session id': .*$",
    ):
        SessionMiddleware(session_app(), store, cookie_name="session id")


# -- Redis sessions (a real server) -------------------------------------------------------------


@pytest.fixture
async def redis_client() -> AsyncIterator[coredis.Redis[bytes]]:
    """An open coredis client; skipped loudly without Redis locally, a failure under CI=true."""
    host, _, port = REDIS_URL.removeprefix("redis://").split("/")[0].rpartition(":")
    try:
        with trio.fail_after(2):
            stream = await trio.open_tcp_stream(host, int(port))
            await stream.aclose()
    except (OSError, trio.TooSlowError) as exc:
        message = f"Redis is not reachable at {REDIS_URL} ({exc!r}); RedisSessionStore is UNTESTED"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    client: coredis.Redis[bytes] = coredis.Redis.from_url(REDIS_URL)
    async with client:
        yield client


@pytest.fixture
async def redis_store(
    redis_client: coredis.Redis[bytes],
) -> AsyncIterator[RedisSessionStore]:
    """A store under a key prefix unique to the test; its keys are deleted afterwards."""
    prefix = f"trichannels-test:{uuid4().hex}:"
    yield RedisSessionStore(redis_client, key_prefix=prefix)
    keys = [key async for key in redis_client.scan_iter(match=prefix + "*")]
    if keys:
        await redis_client.delete(keys)


@pytest.mark.redis
async def test_redis_round_trip_and_ttl(
    redis_store: RedisSessionStore, redis_client: coredis.Redis[bytes]
) -> None:
    """A Redis session survives across two requests; the record has the session TTL."""
    app = CookieMiddleware(
        SessionMiddleware(session_app(increment), redis_store, max_age=300)
    )
    first = await request(app)
    key = cookie_value(first)
    assert key is not None
    assert len(key) == 43
    ttl = await redis_client.ttl(redis_store.key_prefix + key)
    assert 295 <= ttl <= 300
    second = await request(app, key)
    assert second["body"] == b"[('n', 2)]"
    assert set_cookies(second) == []  # same key: nothing to tell the client
    assert await redis_store.load(key, max_age=300) == {"n": 2}


@pytest.mark.redis
async def test_redis_unknown_key_not_adopted(redis_store: RedisSessionStore) -> None:
    """A well-formed but unknown key gives an empty session saved under a fresh random key."""
    planted = "A" * 43
    response = await request(
        CookieMiddleware(SessionMiddleware(session_app(increment), redis_store)),
        planted,
    )
    assert response["body"] == b"[('n', 1)]"
    new_key = cookie_value(response)
    assert new_key not in (None, planted)
    assert await redis_store.load(planted, max_age=60) is None


@pytest.mark.redis
async def test_redis_malformed_key(
    redis_store: RedisSessionStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A cookie that is not a session key is rejected without its value in the log."""
    with caplog.at_level(logging.WARNING, logger="trichannels.sessions"):
        assert await redis_store.load("../../etc/passwd", max_age=60) is None
    assert caplog.messages == [
        "rejected a session cookie: not a well-formed session key"
    ]
    assert "passwd" not in caplog.text


@pytest.mark.redis
async def test_redis_cycle_key_and_flush(redis_store: RedisSessionStore) -> None:
    """cycle_key moves the data to a new key and deletes the old record; flush deletes it."""
    key = await redis_store.save(None, {"a": 1}, max_age=60)
    session = Session(redis_store, key, {"a": 1}, max_age=60, client_cookie=key)
    session.cycle_key()
    await session.save()
    assert session.session_key not in (None, key)
    assert await redis_store.load(key, max_age=60) is None
    new_key = session.session_key
    assert new_key is not None
    assert await redis_store.load(new_key, max_age=60) == {"a": 1}
    await session.flush()
    assert await redis_store.load(new_key, max_age=60) is None
    assert session.is_empty


@pytest.mark.redis
async def test_redis_session_gone_is_not_resurrected(
    redis_store: RedisSessionStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A record deleted mid-request (logout elsewhere) is not re-created by the save."""
    key = await redis_store.save(None, {"user": 1}, max_age=60)

    def logout_elsewhere_then_modify(session: Session) -> None:
        session["x"] = 1

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await redis_store.delete(key)
        await session_app(logout_elsewhere_then_modify)(scope, receive, send)

    with caplog.at_level(logging.WARNING, logger="trichannels.sessions"):
        response = await request(
            CookieMiddleware(SessionMiddleware(app, redis_store)), key
        )
    assert cookie_value(response) == ""
    assert await redis_store.load(key, max_age=60) is None
    assert caplog.messages == [
        "the session was deleted while in use (expired, or logged out elsewhere); its unsaved changes were dropped"
    ]


@pytest.mark.redis
async def test_redis_websocket_save_after_accept_persists(
    redis_store: RedisSessionStore,
) -> None:
    """Over a WebSocket, save() after accept updates the record under the client's key."""
    key = await redis_store.save(None, {"n": 1}, max_age=60)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        scope["session"]["n"] = 2
        await scope["session"].save()
        await send({"type": "websocket.send", "text": "saved"})
        await receive()

    headers = [(b"cookie", f"sessionid={key}".encode())]
    async with WebsocketCommunicator(
        SessionMiddlewareStack(app, redis_store), "/", headers=headers
    ) as comm:
        assert (await comm.connect())[0]
        assert await comm.receive_from() == "saved"
        assert comm.response_headers == []
    assert await redis_store.load(key, max_age=60) == {"n": 2}
