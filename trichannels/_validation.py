"""Checks on the ASGI messages an application sends, run at the call site.

A malformed outgoing message (a ``websocket.send`` carrying both ``text`` and
``bytes``, a status of ``"200"``, headers given as ``str``) is otherwise
reported much later, inside the server, with an error that names neither the
consumer nor the field. :func:`validate_outgoing` raises a specific
:class:`TypeError` (a value of the wrong type) or :class:`ValueError` (a value
of the right type that breaks a rule) whose message names the message type and
the field.

The checks are shape checks only: whether a message is allowed *now* (a frame
before the handshake was accepted, a second response start) is the state the
consumer tracks, not this module. Extra keys are ignored, as the ASGI
specification requires.

These run on every frame a consumer sends, so each check is a dictionary
lookup plus a few ``isinstance`` calls; error messages are only built when a
check fails.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final, NoReturn

from trichannels.types import Message

__all__ = [
    "HTTP_MESSAGE_TYPES",
    "MAX_CLOSE_REASON_BYTES",
    "WEBSOCKET_MESSAGE_TYPES",
    "validate_outgoing",
]

MAX_CLOSE_REASON_BYTES: Final = 123
"""A close frame's payload is at most 125 bytes, two of which hold the code."""

_REPR_LIMIT: Final = 60

_Check = Callable[[Message], None]


def short_repr(value: object, limit: int = _REPR_LIMIT) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages and logs."""
    text = repr(value)
    if len(text) > limit:
        return text[: limit - 3] + "..."
    return text


def _wrong_type(kind: str, field: str, expected: str, value: object) -> NoReturn:
    msg = f"{kind} {field!r} must be {expected}, got {type(value).__name__} {short_repr(value)}"
    raise TypeError(msg)


# -- field checks ----------------------------------------------------------------------


def _check_headers(kind: str, headers: object, field: str = "headers") -> None:
    if type(headers) is not list and type(headers) is not tuple:
        _wrong_type(kind, field, "a list of (bytes, bytes) pairs", headers)
    for index, header in enumerate(headers):
        if (
            (type(header) is not tuple and type(header) is not list)
            or len(header) != 2
            or type(header[0]) is not bytes
            or type(header[1]) is not bytes
        ):
            _wrong_type(kind, f"{field}[{index}]", "a (bytes, bytes) pair", header)
        if header[0][:1] == b":":
            msg = (
                f"{kind} '{field}[{index}]' name {header[0]!r} is a pseudo-header, "
                "which an application must not send"
            )
            raise ValueError(msg)


def _check_status(kind: str, status: object) -> None:
    if type(status) is not int:
        _wrong_type(kind, "status", "an int", status)
    if not 100 <= status <= 599:
        msg = f"{kind} 'status' must be between 100 and 599, got {status}"
        raise ValueError(msg)


def _check_body(kind: str, message: Message) -> None:
    body = message.get("body", b"")
    if type(body) is not bytes:
        _wrong_type(kind, "body", "bytes", body)
    more_body = message.get("more_body", False)
    if more_body is not True and more_body is not False:
        _wrong_type(kind, "more_body", "a bool", more_body)


def _check_bool(kind: str, message: Message, field: str) -> None:
    value = message.get(field, False)
    if value is not True and value is not False:
        _wrong_type(kind, field, "a bool", value)


# Close codes an endpoint may send (RFC 6455 section 7.4, IANA registry):
# 1004 is reserved; 1005, 1006 and 1015 must never appear in a close frame;
# 3000-3999 are registered for libraries, 4000-4999 are private.
_SENDABLE_PROTOCOL_CODES: Final = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)


def _check_close_code(kind: str, code: object) -> None:
    if type(code) is not int:
        _wrong_type(kind, "code", "an int", code)
    if code not in _SENDABLE_PROTOCOL_CODES and not 3000 <= code <= 4999:
        msg = f"{kind} 'code' must be 1000-1003, 1007-1014 or 3000-4999, got {code}"
        raise ValueError(msg)


def _check_close_reason(kind: str, reason: object) -> None:
    if type(reason) is not str:
        _wrong_type(kind, "reason", "a str", reason)
    # Every character is at most 4 UTF-8 bytes: short reasons need no encoding.
    if len(reason) * 4 > MAX_CLOSE_REASON_BYTES:
        size = len(reason.encode("utf-8", "surrogatepass"))
        if size > MAX_CLOSE_REASON_BYTES:
            msg = (
                f"{kind} 'reason' must be at most {MAX_CLOSE_REASON_BYTES} bytes "
                f"encoded as UTF-8, got {size}"
            )
            raise ValueError(msg)


# -- websocket -------------------------------------------------------------------------


def _websocket_send(message: Message) -> None:
    text = message.get("text")
    data = message.get("bytes")
    if text is None:
        if data is None:
            msg = "websocket.send needs one of 'text' or 'bytes', got neither"
            raise ValueError(msg)
        if type(data) is not bytes:
            _wrong_type("websocket.send", "bytes", "bytes", data)
        return
    if data is not None:
        msg = "websocket.send needs exactly one of 'text' or 'bytes', got both"
        raise ValueError(msg)
    if type(text) is not str:
        _wrong_type("websocket.send", "text", "a str", text)


def _websocket_accept(message: Message) -> None:
    subprotocol = message.get("subprotocol")
    if subprotocol is not None and type(subprotocol) is not str:
        _wrong_type("websocket.accept", "subprotocol", "a str or None", subprotocol)
    headers = message.get("headers")
    if headers is not None:
        _check_headers("websocket.accept", headers)
        for index, (name, _) in enumerate(headers):
            if name.lower() == b"sec-websocket-protocol":
                msg = (
                    f"websocket.accept 'headers[{index}]' is 'sec-websocket-protocol', "
                    "which the server sets from 'subprotocol'"
                )
                raise ValueError(msg)


def _websocket_close(message: Message) -> None:
    code = message.get("code")
    if code is not None:
        _check_close_code("websocket.close", code)
    reason = message.get("reason")
    if reason is not None:
        _check_close_reason("websocket.close", reason)


def _websocket_response_start(message: Message) -> None:
    _check_status("websocket.http.response.start", message.get("status"))
    _check_headers("websocket.http.response.start", message.get("headers", []))


def _websocket_response_body(message: Message) -> None:
    _check_body("websocket.http.response.body", message)


# -- http ------------------------------------------------------------------------------


def _http_response_start(message: Message) -> None:
    _check_status("http.response.start", message.get("status"))
    _check_headers("http.response.start", message.get("headers", []))
    _check_bool("http.response.start", message, "trailers")


def _http_response_body(message: Message) -> None:
    _check_body("http.response.body", message)


def _http_response_trailers(message: Message) -> None:
    _check_headers("http.response.trailers", message.get("headers", []))
    _check_bool("http.response.trailers", message, "more_trailers")


def _http_response_pathsend(message: Message) -> None:
    path = message.get("path")
    if type(path) is not str:
        _wrong_type("http.response.pathsend", "path", "a str", path)


def _http_response_push(message: Message) -> None:
    path = message.get("path")
    if type(path) is not str:
        _wrong_type("http.response.push", "path", "a str", path)
    _check_headers("http.response.push", message.get("headers", []))


def _http_response_early_hint(message: Message) -> None:
    links = message.get("links")
    if type(links) is not list:
        _wrong_type("http.response.early_hint", "links", "a list of bytes", links)
    for index, link in enumerate(links):
        if type(link) is not bytes:
            _wrong_type("http.response.early_hint", f"links[{index}]", "bytes", link)


WEBSOCKET_MESSAGE_TYPES: Final[Mapping[str, _Check]] = {
    "websocket.send": _websocket_send,
    "websocket.accept": _websocket_accept,
    "websocket.close": _websocket_close,
    "websocket.http.response.start": _websocket_response_start,
    "websocket.http.response.body": _websocket_response_body,
}
"""The messages an application may send on a ``websocket`` connection, with their checks."""

HTTP_MESSAGE_TYPES: Final[Mapping[str, _Check]] = {
    "http.response.start": _http_response_start,
    "http.response.body": _http_response_body,
    "http.response.trailers": _http_response_trailers,
    "http.response.pathsend": _http_response_pathsend,
    "http.response.push": _http_response_push,
    "http.response.early_hint": _http_response_early_hint,
}
"""The messages an application may send on an ``http`` connection, with their checks."""

_BY_SCOPE: Final[Mapping[str, Mapping[str, _Check]]] = {
    "websocket": WEBSOCKET_MESSAGE_TYPES,
    "http": HTTP_MESSAGE_TYPES,
}


def _malformed(message: object) -> NoReturn:
    if not isinstance(message, Mapping):
        msg = f"an ASGI message must be a mapping, got {type(message).__name__} {short_repr(message)}"
        raise TypeError(msg) from None
    msg = f"an ASGI message needs a 'type' key, got {short_repr(message)}"
    raise ValueError(msg) from None


def validate_outgoing(scope_type: str, message: Message) -> None:
    """Check that ``message`` is a well-formed ASGI event to send on a ``scope_type`` connection.

    ``http`` and ``websocket`` messages are checked field by field (see the
    module docstring); for any other scope type only the ``type`` key is
    checked, since trichannels cannot know the protocol.

    Raises:
        TypeError: ``message`` is not a mapping, its ``type`` is not a str, or a
            field has the wrong type (the message names the field).
        ValueError: ``type`` is not a message of the protocol, or a field's value
            breaks a rule: both or neither of ``text``/``bytes``, a status outside
            100..599, a close code that may not be sent, a close reason over
            123 UTF-8 bytes, a pseudo-header (the message names the field).
    """
    try:
        kind = message["type"]
    except (KeyError, TypeError):
        _malformed(message)
    checks = _BY_SCOPE.get(scope_type)
    if checks is None:
        if type(kind) is not str:
            _wrong_type("message", "type", "a str", kind)
        return
    try:
        check = checks[kind]
    except (KeyError, TypeError):
        if type(kind) is not str:
            _wrong_type("message", "type", "a str", kind)
        allowed = ", ".join(map(repr, checks))
        msg = f"unknown message type {kind!r} for a {scope_type!r} connection; expected one of {allowed}"
        raise ValueError(msg) from None
    check(message)
