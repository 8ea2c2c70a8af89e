"""OriginValidator / AllowedHostsOriginValidator: matching rules, refusal before accept, config errors."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

from trichannels.exceptions import ConfigurationError
from trichannels.security import AllowedHostsOriginValidator, OriginValidator
from trichannels.testing import (
    ApplicationCommunicator,
    HttpCommunicator,
    WebsocketCommunicator,
)
from trichannels.types import ASGIApp, Message, Receive, Scope, Send


def echo_app(calls: list[Scope]) -> ASGIApp:
    """Accepts WebSockets and answers HTTP; records every scope it is called with."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(scope)
        if scope["type"] == "http":
            await receive()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"hello"})
            return
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await receive()

    return app


def app_ok() -> ASGIApp:
    return echo_app([])


# -- the matching table -----------------------------------------------------------------------------

MATCHING = [
    # bare host: any scheme, any port (Channels' is_same_domain)
    (["allowed-domain.com"], "http://allowed-domain.com", True),
    (["allowed-domain.com"], "https://allowed-domain.com:8443", True),
    (["allowed-domain.com"], "http://disallowed-domain.com", False),
    (["allowed-domain.com"], "http://www.allowed-domain.com", False),
    (["allowed-domain.com"], "http://allowed-domain.com.evil.com", False),
    # leading dot: the domain and its subdomains
    ([".allowed-domain.com"], "http://allowed-domain.com", True),
    ([".allowed-domain.com"], "http://www.allowed-domain.com", True),
    ([".allowed-domain.com"], "http://a.b.allowed-domain.com", True),
    ([".allowed-domain.com"], "http://notallowed-domain.com", False),
    # *. wildcard: subdomains only
    (["*.example.com"], "https://a.example.com", True),
    (["*.example.com"], "https://a.b.example.com", True),
    (["*.example.com"], "https://example.com", False),
    (["*.example.com"], "https://badexample.com", False),
    (["*.example.com"], "https://example.com.evil.org", False),
    # scheme + host: scheme and (default) port must match
    (["http://allowed-domain.com"], "http://allowed-domain.com", True),
    (["http://allowed-domain.com"], "http://allowed-domain.com:80", True),
    (["http://allowed-domain.com"], "https://allowed-domain.com", False),
    (["http://allowed-domain.com"], "http://allowed-domain.com:8080", False),
    (["https://allowed-domain.com"], "https://allowed-domain.com:443", True),
    (["https://allowed-domain.com"], "https://allowed-domain.com:80", False),
    (["http://allowed-domain.com:8080"], "http://allowed-domain.com:8080", True),
    (["http://allowed-domain.com:8080"], "http://allowed-domain.com", False),
    (["ws://allowed-domain.com"], "http://allowed-domain.com", False),
    (["http://.allowed-domain.com"], "http://www.allowed-domain.com", True),
    (["https://*.example.com"], "https://a.example.com", True),
    (["https://*.example.com"], "http://a.example.com", False),
    (["https://*.example.com"], "https://a.example.com:8443", False),
    (["https://*.example.com:8443"], "https://a.example.com:8443", True),
    # bare host with a port: that port, any scheme
    (["example.com:8080"], "http://example.com:8080", True),
    (["example.com:8080"], "https://example.com:8080", True),
    (["example.com:8080"], "http://example.com", False),
    (["example.com:443"], "https://example.com", True),
    # other schemes have no default port
    (["chrome-extension://abcdefgh"], "chrome-extension://abcdefgh", True),
    (["chrome-extension://abcdefgh"], "chrome-extension://other", False),
    # IP addresses
    (["127.0.0.1"], "http://127.0.0.1:8000", True),
    (["[::1]"], "http://[::1]:8000", True),
    (["[::1]"], "http://[0:0:0:0:0:0:0:1]", True),
    (["http://[::1]:8000"], "http://[::1]:8000", True),
    (["localhost"], "http://127.0.0.1", False),
    # case-insensitive
    (["EXAMPLE.com"], "https://Example.COM", True),
    (["HTTPS://example.com"], "https://example.com", True),
    # several patterns: any may match
    (["a.com", "https://b.com"], "https://b.com", True),
    (["a.com", "https://b.com"], "http://b.com", False),
    # "*": any well-formed origin, never null
    (["*"], "http://anything.example", True),
    (["*"], "chrome-extension://abc", True),
    (["*"], "null", False),
    # "null" only where listed
    (["null"], "null", True),
    (["null"], "NULL", True),
    (["null"], "http://null", False),
    (["example.com"], "null", False),
    # malformed origins: refused even by "*"
    (["*"], "example.com", False),
    (["*"], "//example.com", False),
    (["*"], "http://", False),
    (["*"], "http://exa mple.com", False),
    (["*"], "http://example.com/", False),
    (["*"], "http://example.com/path", False),
    (["*"], "http://user@example.com", False),
    (["*"], "http://example.com:99999", False),
    (["*"], "http://example.com:0", False),
    (["*"], "http://example.com:", False),
    (["*"], "http://[zz]", False),
    (["*"], "", False),
    (["*"], "something-invalid", False),
]


@pytest.mark.parametrize(("allowed", "origin", "expected"), MATCHING)
def test_origin_matching(allowed: list[str], origin: str, expected: bool) -> None:
    """The matching rules, case by case (valid_origin is the same check the handshake uses)."""
    assert OriginValidator(app_ok(), allowed).valid_origin(origin) is expected


@pytest.mark.parametrize(("allowed", "origin", "expected"), MATCHING[::4])
async def test_origin_matching_through_handshake(
    allowed: list[str], origin: str, expected: bool
) -> None:
    """A sample of the table, through a real handshake: admitted or refused with 403."""
    calls: list[Scope] = []
    app = OriginValidator(echo_app(calls), allowed)
    async with WebsocketCommunicator(
        app, "/ws/", headers=[(b"origin", origin.encode())]
    ) as comm:
        result = await comm.connect()
    assert result == ((True, None) if expected else (False, 403))
    assert len(calls) == int(expected)


@pytest.mark.parametrize(
    ("hosts", "origin", "expected"),
    [
        (["example.com"], "https://example.com:8443", True),
        (["example.com"], "https://www.example.com", False),
        ([".example.com"], "http://www.example.com", True),
        (["*.example.com"], "http://example.com", False),
        (["localhost", "127.0.0.1", "[::1]"], "http://[::1]:8000", True),
        (["localhost", "127.0.0.1", "[::1]"], "http://localhost:3000", True),
        (["*"], "http://anywhere.test", True),
        (["*"], "null", False),
    ],
)
def test_allowed_hosts_matching(hosts: list[str], origin: str, expected: bool) -> None:
    """AllowedHostsOriginValidator takes ALLOWED_HOSTS-style entries: any scheme, any port."""
    assert AllowedHostsOriginValidator(app_ok(), hosts).valid_origin(origin) is expected


# -- refusal, and what passes through ----------------------------------------------------------------


async def test_refusal_is_403_before_accept(caplog: pytest.LogCaptureFixture) -> None:
    """A refused handshake gets an HTTP 403 denial; the app never runs; the refusal is logged."""
    calls: list[Scope] = []
    app = OriginValidator(echo_app(calls), ["https://example.com"])
    with caplog.at_level(logging.INFO, logger="trichannels.security"):
        async with WebsocketCommunicator(
            app, "/ws/chat/", headers=[(b"origin", b"https://evil.example")]
        ) as comm:
            assert await comm.connect() == (False, 403)
            assert comm.denial_response is not None
            assert comm.denial_response["status"] == 403
            assert (
                comm.denial_response["body"]
                == b"Forbidden: this origin may not open a WebSocket here\n"
            )
            assert comm.connected is False
    assert calls == []
    assert caplog.messages == [
        "refused a WebSocket handshake to '/ws/chat/': origin 'https://evil.example:443' is not allowed"
    ]


async def test_refusal_without_denial_extension_closes() -> None:
    """Without the websocket.http.response extension the refusal is a close before accept."""
    scope: Scope = {
        "type": "websocket",
        "path": "/",
        "headers": [(b"origin", b"http://evil.test")],
    }
    async with ApplicationCommunicator(
        OriginValidator(app_ok(), ["good.test"]), scope
    ) as comm:
        await comm.send_input({"type": "websocket.connect"})
        assert await comm.receive_output() == {"type": "websocket.close", "code": 1008}
        await comm.wait()


async def test_client_gone_before_handshake_answer() -> None:
    """If the client leaves before the refusal is sent, the validator just returns."""
    scope: Scope = {"type": "websocket", "path": "/", "headers": []}
    async with ApplicationCommunicator(
        OriginValidator(app_ok(), ["good.test"]), scope
    ) as comm:
        await comm.send_input({"type": "websocket.disconnect", "code": 1001})
        await comm.wait()
        assert await comm.receive_nothing()


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([], "no Origin header"),
        (
            [(b"origin", b"https://good.test"), (b"origin", b"https://good.test")],
            "2 Origin headers",
        ),
        (
            [(b"origin", b"https://good.test/")],
            "malformed Origin header b'https://good.test/'",
        ),
        (
            [(b"origin", "https://g\u00f6\u00f6d.test".encode())],
            "malformed Origin header b'https://g\\xc3\\xb6\\xc3\\xb6d.test'",
        ),
        ([(b"origin", b"null")], "origin 'null' is not allowed"),
    ],
)
async def test_missing_or_malformed_origin_refused(
    headers: list[tuple[bytes, bytes]], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A missing, repeated, malformed or null Origin is refused, even with '*'."""
    app = OriginValidator(app_ok(), ["*", "https://good.test"])
    with caplog.at_level(logging.INFO, logger="trichannels.security"):
        async with WebsocketCommunicator(app, "/", headers=headers) as comm:
            assert await comm.connect() == (False, 403)
    assert caplog.messages == [f"refused a WebSocket handshake to '/': {reason}"]


async def test_allow_missing_origin() -> None:
    """allow_missing_origin admits handshakes without Origin, and only those."""
    app = OriginValidator(app_ok(), ["https://good.test"], allow_missing_origin=True)
    async with WebsocketCommunicator(app, "/") as comm:
        assert await comm.connect() == (True, None)
    async with WebsocketCommunicator(
        app, "/", headers=[(b"origin", b"https://bad.test")]
    ) as comm:
        assert await comm.connect() == (False, 403)
    assert app.valid_origin(None) is True
    assert OriginValidator(app_ok(), ["*"]).valid_origin(None) is False


@pytest.mark.parametrize("validator", [OriginValidator, AllowedHostsOriginValidator])
async def test_http_passes_through_untouched(validator: Any) -> None:
    """HTTP requests reach the app with the very same scope, whatever their Origin."""
    calls: list[Scope] = []
    app = validator(echo_app(calls), ["good.test"])
    scope: Scope = {
        "type": "http",
        "path": "/",
        "headers": [(b"origin", b"https://evil.test")],
    }
    sent: list[Message] = []
    pending: list[Message] = [{"type": "http.request", "body": b""}]

    async def receive() -> Message:
        await trio.lowlevel.checkpoint()
        return pending.pop(0)

    async def send(message: Message) -> None:
        await trio.lowlevel.checkpoint()
        sent.append(message)

    await app(scope, receive, send)
    assert calls == [scope]
    assert calls[0] is scope
    assert sent[0]["status"] == 200
    async with HttpCommunicator(
        app, "GET", "/", headers=[(b"origin", b"https://evil.test")]
    ) as comm:
        assert (await comm.get_response())["body"] == b"hello"


async def test_lifespan_passes_through() -> None:
    """Non-WebSocket scopes of any type reach the app unchanged."""
    calls: list[Scope] = []
    scope: Scope = {"type": "lifespan"}

    async def receive() -> Message:
        raise AssertionError("not called")

    async def send(message: Message) -> None:
        raise AssertionError("not called")

    await OriginValidator(echo_app(calls), ["x.test"])(scope, receive, send)
    assert calls == [scope]


# -- configuration errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allowed", "match"),
    [
        (
            "example.com",
            r"^allowed_origins must be a list of patterns, not the single string 'example\.com'$",
        ),
        (
            [],
            r"^allowed_origins is empty, so every WebSocket handshake would be refused; list at least one pattern$",
        ),
        ([""], r"^invalid origin pattern '': it is empty$"),
        ([1], r"^invalid origin pattern 1: it must be a str$"),
        (
            ["ok.com", "http://example.com/path"],
            r"^invalid origin pattern 'http://example\.com/path': an origin has no path, query, fragment or user info$",
        ),
        (
            ["https://user@example.com"],
            r"^invalid origin pattern 'https://user@example\.com': an origin has no path, query, fragment or user info$",
        ),
        (
            ["example.com/"],
            r"^invalid origin pattern 'example\.com/': an origin has no path, query, fragment or user info$",
        ),
        (
            ["foo.*.com"],
            r"^invalid origin pattern 'foo\.\*\.com': '\*' is allowed only alone or as a leading '\*\.' label \('\*\.example\.com'\)$",
        ),
        (
            ["*example.com"],
            r"^invalid origin pattern '\*example\.com': '\*' is allowed only alone or as a leading '\*\.' label \('\*\.example\.com'\)$",
        ),
        (
            ["https://*"],
            r"^invalid origin pattern 'https://\*': '\*' is allowed only alone or as a leading '\*\.' label \('\*\.example\.com'\)$",
        ),
        (
            ["example.com:0"],
            r"^invalid origin pattern 'example\.com:0': the port must be a number from 1 to 65535$",
        ),
        (
            ["example.com:99999"],
            r"^invalid origin pattern 'example\.com:99999': the port must be a number from 1 to 65535$",
        ),
        (
            ["https://example.com:https"],
            r"^invalid origin pattern 'https://example\.com:https': the port must be a number from 1 to 65535$",
        ),
        (
            ["ht tp://x.com"],
            r"^invalid origin pattern 'ht tp://x\.com': 'ht tp' is not a URL scheme$",
        ),
        (
            ["exa mple.com"],
            r"^invalid origin pattern 'exa mple\.com': 'exa mple\.com' is not a host name$",
        ),
        (["https://"], r"^invalid origin pattern 'https://': '' is not a host name$"),
        (
            ["example..com"],
            r"^invalid origin pattern 'example\.\.com': 'example\.\.com' is not a host name$",
        ),
        (
            ["b\u00fccher.de"],
            r"^invalid origin pattern 'b\u00fccher\.de': write international domain names in their punycode \(xn--\) form$",
        ),
        (
            ["[zz]"],
            r"^invalid origin pattern '\[zz\]': '\[zz\]' is not an IPv6 address$",
        ),
        (
            ["[::1]x"],
            r"^invalid origin pattern '\[::1\]x': unexpected text after the IPv6 address$",
        ),
        (["*.[::1]"], r"^invalid origin pattern '\*\.\[::1\]': .*$"),
    ],
)
def test_origin_validator_configuration(allowed: Any, match: str) -> None:
    """Every bad allowed_origins value raises ConfigurationError naming the pattern and the rule."""
    with pytest.raises(ConfigurationError, match=match):
        OriginValidator(app_ok(), allowed)


@pytest.mark.parametrize(
    ("hosts", "match"),
    [
        (
            "localhost",
            r"^allowed_hosts must be a list of patterns, not the single string 'localhost'$",
        ),
        (
            [],
            r"^allowed_hosts is empty, so every WebSocket handshake would be refused; list at least one pattern$",
        ),
        (
            ["https://example.com"],
            r"^invalid allowed host 'https://example\.com': an allowed host has no scheme; use OriginValidator for 'scheme://host'$",
        ),
        (
            ["example.com:8000"],
            r"^invalid allowed host 'example\.com:8000': an allowed host has no port \(any port is allowed\)$",
        ),
        (
            ["ex*ample.com"],
            r"^invalid allowed host 'ex\*ample\.com': '\*' is allowed only alone .*$",
        ),
    ],
)
def test_allowed_hosts_configuration(hosts: Any, match: str) -> None:
    """AllowedHostsOriginValidator refuses schemes, ports and malformed hosts, naming them."""
    with pytest.raises(ConfigurationError, match=match):
        AllowedHostsOriginValidator(app_ok(), hosts)


def test_app_must_be_callable() -> None:
    """A non-callable app is a TypeError."""
    with pytest.raises(
        TypeError, match=r"^app must be an ASGI application \(a callable\), got None$"
    ):
        OriginValidator(None, ["*"])  # type: ignore[arg-type]


# -- live: Hypercorn's trio worker and a real WebSocket client ------------------------------------------


@pytest.fixture
async def live_url(nursery: trio.Nursery) -> str:
    """Serve a validated app plus a session-setting app under Hypercorn's trio worker; yield ws://host:port."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    from trichannels.sessions import SessionMiddlewareStack, SignedCookieSessionStore

    async def set_session(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        scope["session"]["seen"] = True
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "hi"})
        await receive()

    guarded = OriginValidator(echo_app([]), ["https://good.test"])
    sessions = SessionMiddlewareStack(set_session, SignedCookieSessionStore(["k" * 32]))

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": message["type"] + ".complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        target = sessions if scope["path"] == "/session/" else guarded
        await target(scope, receive, send)

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.test")
    binds = await nursery.start(serve, app, config)
    return str(binds[0]).replace("http://", "ws://")


async def raw_handshake(url: str, origin: bytes) -> bytes:
    """Send a WebSocket upgrade request by hand; return the whole HTTP response.

    (trio-websocket 0.12 leaves its socket open when a handshake is rejected.)
    """
    host, _, port = url.removeprefix("ws://").rpartition(":")
    request = (
        b"GET /ws/ HTTP/1.1\r\nHost: " + url.removeprefix("ws://").encode() + b"\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Origin: " + origin + b"\r\n\r\n"
    )
    response = b""
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(request)
        while not response.endswith(b"WebSocket here\n"):  # the end of the denial body
            chunk = await stream.receive_some()
            if not chunk:
                break
            response += chunk
    return response


async def test_live_refusal_is_http_403(live_url: str) -> None:
    """Under Hypercorn, a refused origin gets HTTP 403 (with the body); an allowed one connects."""
    from trio_websocket import open_websocket_url

    with trio.fail_after(5):
        response = await raw_handshake(live_url, b"https://evil.test")
        assert response.startswith(b"HTTP/1.1 403 ")
        assert response.endswith(
            b"\r\n\r\nForbidden: this origin may not open a WebSocket here\n"
        )
        async with open_websocket_url(
            live_url + "/ws/", extra_headers=[(b"origin", b"https://good.test")]
        ) as ws:
            assert not ws.closed


async def test_live_session_cookie_on_handshake(live_url: str) -> None:
    """Under Hypercorn, the session cookie set on websocket.accept reaches the client in the 101 response."""
    from trio_websocket import open_websocket_url

    with trio.fail_after(5):
        async with open_websocket_url(live_url + "/session/") as ws:
            assert await ws.get_message() == "hi"
            cookies = [v for k, v in ws.handshake_headers if k.lower() == b"set-cookie"]
    [cookie] = cookies
    assert cookie.startswith(b"sessionid=")
    assert cookie.endswith(b"; Path=/; Max-Age=1209600; HttpOnly; SameSite=Lax")
