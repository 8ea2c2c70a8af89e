"""validate_outgoing: every rule, its exception type, and a message naming the field."""

from __future__ import annotations

import timeit
from typing import Any

import pytest

from trichannels._validation import (
    HTTP_MESSAGE_TYPES,
    WEBSOCKET_MESSAGE_TYPES,
    validate_outgoing,
)

VALID: list[tuple[str, dict[str, Any]]] = [
    ("websocket", {"type": "websocket.accept"}),
    ("websocket", {"type": "websocket.accept", "subprotocol": None, "headers": []}),
    (
        "websocket",
        {"type": "websocket.accept", "subprotocol": "v1", "headers": [(b"x-a", b"1")]},
    ),
    ("websocket", {"type": "websocket.accept", "headers": ([b"x-a", b"1"],)}),
    ("websocket", {"type": "websocket.send", "text": ""}),
    ("websocket", {"type": "websocket.send", "bytes": b""}),
    ("websocket", {"type": "websocket.send", "text": "x", "bytes": None}),
    ("websocket", {"type": "websocket.send", "text": None, "bytes": b"x"}),
    ("websocket", {"type": "websocket.send", "text": "x", "extra": object()}),
    ("websocket", {"type": "websocket.close"}),
    ("websocket", {"type": "websocket.close", "code": 1000, "reason": ""}),
    ("websocket", {"type": "websocket.close", "code": 1014}),
    ("websocket", {"type": "websocket.close", "code": 3000}),
    ("websocket", {"type": "websocket.close", "code": 4999, "reason": "é" * 61 + "x"}),
    ("websocket", {"type": "websocket.close", "reason": "x" * 123}),
    ("websocket", {"type": "websocket.http.response.start", "status": 403}),
    (
        "websocket",
        {
            "type": "websocket.http.response.start",
            "status": 100,
            "headers": [(b"a", b"b")],
        },
    ),
    ("websocket", {"type": "websocket.http.response.body"}),
    (
        "websocket",
        {"type": "websocket.http.response.body", "body": b"x", "more_body": True},
    ),
    ("http", {"type": "http.response.start", "status": 599}),
    (
        "http",
        {"type": "http.response.start", "status": 200, "headers": [], "trailers": True},
    ),
    ("http", {"type": "http.response.body"}),
    ("http", {"type": "http.response.body", "body": b"x", "more_body": False}),
    ("http", {"type": "http.response.trailers", "headers": [], "more_trailers": False}),
    ("http", {"type": "http.response.pathsend", "path": "/srv/file"}),
    ("http", {"type": "http.response.push", "path": "/style.css", "headers": []}),
    ("http", {"type": "http.response.early_hint", "links": [b"</a.css>; rel=preload"]}),
    ("mqtt", {"type": "mqtt.publish", "anything": 1}),
]


@pytest.mark.parametrize(("scope_type", "message"), VALID)
def test_valid_messages_pass(scope_type: str, message: dict[str, Any]) -> None:
    """Well-formed messages (extra keys included, as the spec requires) pass."""
    validate_outgoing(scope_type, message)


INVALID: list[tuple[str, object, type[Exception], str]] = [
    # the message itself
    (
        "websocket",
        ["websocket.send"],
        TypeError,
        r"^an ASGI message must be a mapping, got list \['websocket\.send'\]$",
    ),
    (
        "websocket",
        "websocket.send",
        TypeError,
        r"^an ASGI message must be a mapping, got str 'websocket\.send'$",
    ),
    (
        "websocket",
        {"text": "x"},
        ValueError,
        r"^an ASGI message needs a 'type' key, got \{'text': 'x'\}$",
    ),
    (
        "websocket",
        {"type": b"websocket.send"},
        TypeError,
        r"^message 'type' must be a str, got bytes b'websocket\.send'$",
    ),
    ("mqtt", {"type": 1}, TypeError, r"^message 'type' must be a str, got int 1$"),
    (
        "websocket",
        {"type": ["x"]},
        TypeError,
        r"^message 'type' must be a str, got list \['x'\]$",
    ),
    # unknown type for the protocol
    (
        "websocket",
        {"type": "http.response.start", "status": 200},
        ValueError,
        r"^unknown message type 'http\.response\.start' for a 'websocket' connection; expected one of "
        r"'websocket\.send', 'websocket\.accept', 'websocket\.close', "
        r"'websocket\.http\.response\.start', 'websocket\.http\.response\.body'$",
    ),
    (
        "http",
        {"type": "websocket.send", "text": "x"},
        ValueError,
        r"^unknown message type 'websocket\.send' for a 'http' connection; expected one of "
        r"'http\.response\.start', 'http\.response\.body', 'http\.response\.trailers', "
        r"'http\.response\.pathsend', 'http\.response\.push', 'http\.response\.early_hint'$",
    ),
    # websocket.send
    (
        "websocket",
        {"type": "websocket.send", "text": "a", "bytes": b"b"},
        ValueError,
        r"^websocket\.send needs exactly one of 'text' or 'bytes', got both$",
    ),
    (
        "websocket",
        {"type": "websocket.send"},
        ValueError,
        r"^websocket\.send needs one of 'text' or 'bytes', got neither$",
    ),
    (
        "websocket",
        {"type": "websocket.send", "text": None, "bytes": None},
        ValueError,
        r"^websocket\.send needs one of 'text' or 'bytes', got neither$",
    ),
    (
        "websocket",
        {"type": "websocket.send", "text": 1},
        TypeError,
        r"^websocket\.send 'text' must be a str, got int 1$",
    ),
    (
        "websocket",
        {"type": "websocket.send", "text": b"x"},
        TypeError,
        r"^websocket\.send 'text' must be a str, got bytes b'x'$",
    ),
    (
        "websocket",
        {"type": "websocket.send", "bytes": "x"},
        TypeError,
        r"^websocket\.send 'bytes' must be bytes, got str 'x'$",
    ),
    (
        "websocket",
        {"type": "websocket.send", "bytes": bytearray(b"x")},
        TypeError,
        r"^websocket\.send 'bytes' must be bytes, got bytearray bytearray\(b'x'\)$",
    ),
    (
        "websocket",
        {"type": "websocket.send", "bytes": memoryview(b"x")},
        TypeError,
        r"^websocket\.send 'bytes' must be bytes, got memoryview <memory at 0x[0-9a-f]+>$",
    ),
    # websocket.accept
    (
        "websocket",
        {"type": "websocket.accept", "subprotocol": b"v1"},
        TypeError,
        r"^websocket\.accept 'subprotocol' must be a str or None, got bytes b'v1'$",
    ),
    (
        "websocket",
        {"type": "websocket.accept", "headers": {b"a": b"b"}},
        TypeError,
        r"^websocket\.accept 'headers' must be a list of \(bytes, bytes\) pairs, got dict \{b'a': b'b'\}$",
    ),
    (
        "websocket",
        {"type": "websocket.accept", "headers": [("a", "b")]},
        TypeError,
        r"^websocket\.accept 'headers\[0\]' must be a \(bytes, bytes\) pair, got tuple \('a', 'b'\)$",
    ),
    (
        "websocket",
        {"type": "websocket.accept", "headers": [(b"a", b"b"), (b"c",)]},
        TypeError,
        r"^websocket\.accept 'headers\[1\]' must be a \(bytes, bytes\) pair, got tuple \(b'c',\)$",
    ),
    (
        "websocket",
        {"type": "websocket.accept", "headers": [(b"a", b"b", b"c")]},
        TypeError,
        r"^websocket\.accept 'headers\[0\]' must be a \(bytes, bytes\) pair, got tuple \(b'a', b'b', b'c'\)$",
    ),
    (
        "websocket",
        {"type": "websocket.accept", "headers": [b"a: b"]},
        TypeError,
        r"^websocket\.accept 'headers\[0\]' must be a \(bytes, bytes\) pair, got bytes b'a: b'$",
    ),
    (
        "websocket",
        {"type": "websocket.accept", "headers": [(b":status", b"101")]},
        ValueError,
        r"^websocket\.accept 'headers\[0\]' name b':status' is a pseudo-header, which an application must not send$",
    ),
    (
        "websocket",
        {"type": "websocket.accept", "headers": [(b"Sec-WebSocket-Protocol", b"v1")]},
        ValueError,
        r"^websocket\.accept 'headers\[0\]' is 'sec-websocket-protocol', which the server sets from 'subprotocol'$",
    ),
    # websocket.close
    (
        "websocket",
        {"type": "websocket.close", "code": "1000"},
        TypeError,
        r"^websocket\.close 'code' must be an int, got str '1000'$",
    ),
    (
        "websocket",
        {"type": "websocket.close", "code": True},
        TypeError,
        r"^websocket\.close 'code' must be an int, got bool True$",
    ),
    (
        "websocket",
        {"type": "websocket.close", "code": 1000.0},
        TypeError,
        r"^websocket\.close 'code' must be an int, got float 1000\.0$",
    ),
    *[
        (
            "websocket",
            {"type": "websocket.close", "code": code},
            ValueError,
            rf"^websocket\.close 'code' must be 1000-1003, 1007-1014 or 3000-4999, got {code}$",
        )
        for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000)
    ],
    (
        "websocket",
        {"type": "websocket.close", "reason": 1},
        TypeError,
        r"^websocket\.close 'reason' must be a str, got int 1$",
    ),
    (
        "websocket",
        {"type": "websocket.close", "reason": "x" * 124},
        ValueError,
        r"^websocket\.close 'reason' must be at most 123 bytes encoded as UTF-8, got 124$",
    ),
    (
        "websocket",
        {"type": "websocket.close", "reason": "€" * 42},
        ValueError,
        r"^websocket\.close 'reason' must be at most 123 bytes encoded as UTF-8, got 126$",
    ),
    # websocket denial response
    (
        "websocket",
        {"type": "websocket.http.response.start"},
        TypeError,
        r"^websocket\.http\.response\.start 'status' must be an int, got NoneType None$",
    ),
    (
        "websocket",
        {"type": "websocket.http.response.start", "status": 700},
        ValueError,
        r"^websocket\.http\.response\.start 'status' must be between 100 and 599, got 700$",
    ),
    (
        "websocket",
        {"type": "websocket.http.response.start", "status": 403, "headers": None},
        TypeError,
        r"^websocket\.http\.response\.start 'headers' must be a list of \(bytes, bytes\) pairs, got NoneType None$",
    ),
    (
        "websocket",
        {"type": "websocket.http.response.body", "body": "no"},
        TypeError,
        r"^websocket\.http\.response\.body 'body' must be bytes, got str 'no'$",
    ),
    (
        "websocket",
        {"type": "websocket.http.response.body", "more_body": 0},
        TypeError,
        r"^websocket\.http\.response\.body 'more_body' must be a bool, got int 0$",
    ),
    # http
    (
        "http",
        {"type": "http.response.start", "status": "200"},
        TypeError,
        r"^http\.response\.start 'status' must be an int, got str '200'$",
    ),
    (
        "http",
        {"type": "http.response.start", "status": True},
        TypeError,
        r"^http\.response\.start 'status' must be an int, got bool True$",
    ),
    (
        "http",
        {"type": "http.response.start", "status": 99},
        ValueError,
        r"^http\.response\.start 'status' must be between 100 and 599, got 99$",
    ),
    (
        "http",
        {"type": "http.response.start", "status": 600},
        ValueError,
        r"^http\.response\.start 'status' must be between 100 and 599, got 600$",
    ),
    (
        "http",
        {"type": "http.response.start", "status": 200, "headers": [(b"a", "b")]},
        TypeError,
        r"^http\.response\.start 'headers\[0\]' must be a \(bytes, bytes\) pair, got tuple \(b'a', 'b'\)$",
    ),
    (
        "http",
        {"type": "http.response.start", "status": 200, "headers": [(b":path", b"/")]},
        ValueError,
        r"^http\.response\.start 'headers\[0\]' name b':path' is a pseudo-header, which an application must not send$",
    ),
    (
        "http",
        {"type": "http.response.start", "status": 200, "trailers": "yes"},
        TypeError,
        r"^http\.response\.start 'trailers' must be a bool, got str 'yes'$",
    ),
    (
        "http",
        {"type": "http.response.body", "body": "text"},
        TypeError,
        r"^http\.response\.body 'body' must be bytes, got str 'text'$",
    ),
    (
        "http",
        {"type": "http.response.body", "body": None},
        TypeError,
        r"^http\.response\.body 'body' must be bytes, got NoneType None$",
    ),
    (
        "http",
        {"type": "http.response.body", "more_body": 1},
        TypeError,
        r"^http\.response\.body 'more_body' must be a bool, got int 1$",
    ),
    (
        "http",
        {"type": "http.response.body", "more_body": None},
        TypeError,
        r"^http\.response\.body 'more_body' must be a bool, got NoneType None$",
    ),
    (
        "http",
        {"type": "http.response.trailers", "headers": "x"},
        TypeError,
        r"^http\.response\.trailers 'headers' must be a list of \(bytes, bytes\) pairs, got str 'x'$",
    ),
    (
        "http",
        {"type": "http.response.trailers", "more_trailers": 1},
        TypeError,
        r"^http\.response\.trailers 'more_trailers' must be a bool, got int 1$",
    ),
    (
        "http",
        {"type": "http.response.pathsend", "path": b"/f"},
        TypeError,
        r"^http\.response\.pathsend 'path' must be a str, got bytes b'/f'$",
    ),
    (
        "http",
        {"type": "http.response.push", "path": None},
        TypeError,
        r"^http\.response\.push 'path' must be a str, got NoneType None$",
    ),
    (
        "http",
        {"type": "http.response.early_hint", "links": b"x"},
        TypeError,
        r"^http\.response\.early_hint 'links' must be a list of bytes, got bytes b'x'$",
    ),
    (
        "http",
        {"type": "http.response.early_hint", "links": ["x"]},
        TypeError,
        r"^http\.response\.early_hint 'links\[0\]' must be bytes, got str 'x'$",
    ),
]


@pytest.mark.parametrize(("scope_type", "message", "exc", "pattern"), INVALID)
def test_invalid_messages_raise_naming_the_field(
    scope_type: str, message: Any, exc: type[Exception], pattern: str
) -> None:
    """Each rule raises its own TypeError/ValueError, naming the message type and field."""
    with pytest.raises(exc, match=pattern) as info:
        validate_outgoing(scope_type, message)
    assert type(info.value) is exc


def test_long_values_are_truncated_in_messages() -> None:
    """A huge offending value is shown truncated, never in full."""
    with pytest.raises(TypeError) as info:
        validate_outgoing(
            "websocket", {"type": "websocket.send", "text": b"x" * 10_000}
        )
    assert len(str(info.value)) < 120
    assert str(info.value).endswith("...")


def test_tables_cover_the_spec() -> None:
    """Every message an application may send on each protocol has a check."""
    assert set(WEBSOCKET_MESSAGE_TYPES) == {
        "websocket.accept",
        "websocket.send",
        "websocket.close",
        "websocket.http.response.start",
        "websocket.http.response.body",
    }
    assert {"http.response.start", "http.response.body"} <= set(HTTP_MESSAGE_TYPES)


def test_validation_is_cheap() -> None:
    """A websocket.send check costs a few microseconds at most (it runs on every frame)."""
    message = {"type": "websocket.send", "text": "hello"}
    runs = 20_000
    best = min(
        timeit.repeat(
            lambda: validate_outgoing("websocket", message), number=runs, repeat=5
        )
    )
    assert best / runs < 5e-6
