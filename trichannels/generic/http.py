"""The HTTP consumer: request bodies, responses, streaming and server-sent events.

Subclass :class:`AsyncHttpConsumer` and override :meth:`~AsyncHttpConsumer.handle`::

    class HelloConsumer(AsyncHttpConsumer):
        async def handle(self, body: bytes) -> None:
            await self.send_response(200, b"Hello", headers=[(b"content-type", b"text/plain")])

What the server sees, and when the instance ends:

* The request body is gathered chunk by chunk up to
  ``max_body_size`` bytes. A larger body (announced by
  ``Content-Length`` or found while reading) is answered at once with
  **413** and the instance ends: the rest is never read into memory.
* ``handle(body)`` runs once the whole body has arrived. Unlike Channels, the
  instance does **not** end when ``handle`` returns: it ends when the response
  is complete (the body sent with ``more_body=False``) and the code that
  completed it returns, whether that was ``handle``, a channel-layer event
  handler, or a child task started with :meth:`~trichannels.consumer.AsyncConsumer.start_soon`. So
  ``handle`` may start a response and leave it to a child task or a later
  layer event to finish (streaming, server-sent events, long polling).
* When the client disconnects (``http.disconnect``), whatever is running for
  the request (``handle``, child tasks) is cancelled at once, since nothing
  more can reach the client, and the instance ends. While ``handle`` runs, the
  disconnect is watched for (and noticed within 0.2 s) once it has sent the
  headers alone, streamed a body chunk or started a child task; before that,
  ``handle`` is not interrupted (a request answered in one go costs no watcher
  task): work it does before sending anything completes, and the server drops
  a response for a client that has gone.
* :meth:`~AsyncHttpConsumer.disconnect` runs exactly once when the instance
  ends, however it ends (shielded from cancellation, bounded by
  ``close_timeout``).
* Every outgoing message is checked where it is made
  (``trichannels._validation.validate_outgoing``), and the response's
  order is enforced: a body before the headers, a second start, or anything
  after the response completed raises
  :class:`~trichannels.exceptions.UnexpectedMessage`.
* An unhandled exception before the response started gives the client a
  **500**; after it started, the response is aborted (nothing more is sent,
  the server sees the exception and cuts the connection). Either way the
  exception is logged once and propagates to the server.

Server-sent events (``text/event-stream``) are framed by
:meth:`~AsyncHttpConsumer.send_event` and :meth:`~AsyncHttpConsumer.send_comment`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Final

import anyio
import anyio.lowlevel

from trichannels._validation import _check_status, validate_outgoing
from trichannels.consumer import AsyncConsumer
from trichannels.exceptions import StopConsumer, UnexpectedMessage

if TYPE_CHECKING:
    from trichannels.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["AsyncHttpConsumer", "HeadersArg", "format_comment", "format_event"]

logger = logging.getLogger("trichannels.generic.http")

HeadersArg = (
    Iterable[tuple[bytes | str, bytes | str]]
    | Mapping[str, bytes | str]
    | Mapping[bytes, bytes | str]
    | None
)
"""Response headers, as ``(name, value)`` pairs or a mapping, names and values bytes or str."""

_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NEWLINES: Final = re.compile(r"\r\n|\r|\n")
_SERVER_ERROR: Final = b"Internal Server Error"
_DEFAULT_MAX_BODY_SIZE: Final = (
    2_621_440  # 2.5 MiB, Django's DATA_UPLOAD_MAX_MEMORY_SIZE
)
_EVENT_STREAM_HEADERS: Final = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # ask nginx-style proxies not to buffer the stream
)


class AsyncHttpConsumer(AsyncConsumer):
    """A consumer for one HTTP request; override :meth:`handle`.

    Both class attributes may be overridden per route with
    ``as_asgi(name=value)``.

    Attributes:
        max_body_size: the largest request body accepted, in bytes (default
            2.5 MiB); ``None`` for no limit. Over it the client gets 413.
        max_pending_events: kept small (2) so that a too-large body is not
            read ahead into memory while the instance answers 413.
    """

    max_body_size: ClassVar[int | None] = _DEFAULT_MAX_BODY_SIZE
    max_pending_events: ClassVar[int] = 2

    # Per-request state; the defaults live on the class (see AsyncConsumer).
    _body: list[bytes] | None = None  # the chunks so far, made when needed
    _body_size = 0
    _request_seen = False
    _response_started = False
    _trailers_pending = False
    _response_complete = False
    _disconnected = False
    _handled = False  # handle() has returned
    _children = 0  # child tasks still running
    _whole_response = False  # send_response() is sending start and body

    @classmethod
    def as_asgi(cls, **initkwargs: Any) -> ASGIApp:
        """Return an ASGI application running a fresh instance per request.

        Raises:
            TypeError: a keyword names no class attribute, replaces a method,
                or ``max_body_size`` is not an int or ``None``.
            ValueError: ``max_body_size`` is negative.
        """
        _check_max_body_size(initkwargs.get("max_body_size", cls.max_body_size))
        return super().as_asgi(**initkwargs)

    @property
    def response_started(self) -> bool:
        """Whether the response's status and headers have been sent."""
        return self._response_started

    @property
    def response_complete(self) -> bool:
        """Whether the response's final body (``more_body=False``) has been sent."""
        return self._response_complete

    # -- the instance ----------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one HTTP request; returns when the instance has ended.

        Raises:
            ValueError: the scope is not an ``http`` scope.
            Exception: whatever a handler or child task raised (after a 500
                was sent, if the response had not started).
        """
        if scope.get("type") != "http":
            msg = f"{type(self).__qualname__} can only serve 'http' scopes, got scope type {scope.get('type')!r}"
            raise ValueError(msg)
        limit = self.max_body_size
        if limit is not None and (type(limit) is not int or limit < 0):
            _check_max_body_size(limit)  # raises (as_asgi() checked the class's)
        try:
            await super().__call__(scope, receive, send)
        except Exception:
            if not self._response_started and not self._disconnected:
                self._response_started = True
                with anyio.CancelScope(shield=True):
                    await _send_server_error(send)
            raise

    def start_soon(
        self, fn: Callable[..., Awaitable[Any]], *args: Any, name: object = None
    ) -> None:
        """Run ``fn(*args)`` as a child task; see :meth:`trichannels.consumer.AsyncConsumer.start_soon`.

        When the task returns after the response is complete, the instance ends.
        It is cancelled when the client disconnects.
        """

        async def child() -> None:
            try:
                await fn(*args)
            finally:
                self._children -= 1
            if self._response_complete:
                raise StopConsumer
            self._check_not_orphaned()

        super().start_soon(child, name=name if name is not None else _task_name(fn))
        self._children += 1
        self._start_spare()  # the child may outlive handle(): watch for a disconnect

    def _check_not_orphaned(self) -> None:
        """Fail if nothing is left that could ever complete the response."""
        if (
            self._handled
            and not self._response_complete
            and self._children == 0
            and self.channel_layer is None
        ):
            if self._response_started:
                problem, verb = "left the response unfinished", "finish it"
            else:
                problem, verb = "never sent a response", "send one"
            msg = (
                f"{type(self).__qualname__} {problem}: handle() and its child tasks "
                f"have returned, and with no channel layer nothing else can {verb}"
            )
            raise RuntimeError(msg)

    _spare_on_dispatch = False  # see send() and start_soon()
    _may_end_after_handler = True  # once the response is complete

    def _ended_by_handler(self) -> bool:
        return self._response_complete

    def _notice_disconnect(self, message: Message) -> None:
        # Nothing more can reach an HTTP client that went away: cancel whatever
        # is running at once (no grace period), then run the disconnect handler.
        self._disconnected = True
        super()._notice_disconnect(message)
        self._end_grace()

    def _has_cleanup(self) -> bool:
        cls = type(self)
        return (
            cls.disconnect is not AsyncHttpConsumer.disconnect
            or cls._instance_cleanup is not AsyncHttpConsumer._instance_cleanup
        )

    async def _instance_cleanup(self) -> None:
        try:
            await self.disconnect()
        except Exception:
            logger.exception(
                "%s.disconnect() raised for %s %s",
                type(self).__qualname__,
                self.scope.get("method"),
                self.scope.get("path"),
            )
            raise

    # -- protocol handlers --------------------------------------------------------------

    async def http_request(self, message: Message) -> None:
        """Gather one chunk of the request body; call :meth:`handle` after the last.

        Answers 413 (and ends the instance) as soon as the body is known to
        exceed ``max_body_size``.
        """
        limit = self.max_body_size
        if not self._request_seen:
            self._request_seen = True
            declared = _content_length(self.scope)
            if limit is not None and declared is not None and declared > limit:
                await self._reject_too_large(declared)
                return
        chunk = message.get("body", b"")
        if type(chunk) is not bytes:
            msg = f"http.request 'body' must be bytes, got {type(chunk).__name__}"
            raise TypeError(msg)
        self._body_size += len(chunk)
        if limit is not None and self._body_size > limit:
            self._body = None
            await self._reject_too_large(None)
            return
        chunks = self._body
        if message.get("more_body", False):
            if chunk:
                if chunks is None:
                    chunks = self._body = []
                chunks.append(chunk)
            await anyio.lowlevel.checkpoint()
            return
        if chunks is not None:
            chunks.append(chunk)
            body = b"".join(chunks)
            self._body = None
        else:
            body = chunk  # the whole body came in one message
        await self.handle(body)
        self._handled = True
        self._check_not_orphaned()

    async def http_disconnect(self, message: Message) -> None:
        """The client went away: end the instance (:meth:`disconnect` runs at cleanup)."""
        raise StopConsumer

    async def _reject_too_large(self, declared: int | None) -> None:
        size = f"{declared} bytes" if declared is not None else "more than that"
        logger.info(
            "%s: refusing %s %s with 413: request body of %s exceeds max_body_size=%s",
            type(self).__qualname__,
            self.scope.get("method"),
            self.scope.get("path"),
            size,
            self.max_body_size,
        )
        body = f"Request body exceeds the limit of {self.max_body_size} bytes".encode()
        await self.send_response(
            413,
            body,
            headers=[(b"content-type", b"text/plain; charset=utf-8")],
        )

    # -- hooks ----------------------------------------------------------------------------

    async def handle(self, body: bytes) -> None:
        """Handle the request, whose whole body is ``body``; override this.

        Send a response with :meth:`send_response`, or :meth:`send_headers`
        then :meth:`send_body` (possibly from a child task or a later
        channel-layer event handler).
        """
        msg = "Subclasses of AsyncHttpConsumer must provide a handle() method."
        raise NotImplementedError(msg)

    async def disconnect(self) -> None:
        """Called once when the instance ends, however it ends; override for cleanup.

        The response is complete or the client is gone: do not send from here.
        """

    # -- sending --------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        """Send one ASGI message to the server, checked first (a checkpoint).

        Once the client has gone, messages are dropped (logged at debug level).

        Raises:
            TypeError, ValueError: the message is malformed (the error names the field).
            UnexpectedMessage: the message is out of order: a body before the
                start, a second start, or anything after the response completed.
        """
        validate_outgoing("http", message)
        self._follow(message, whole=self._whole_response)
        await self._deliver(message)

    def _follow(self, message: Message, *, whole: bool) -> None:
        """Advance the response's state with a checked ``message``, or raise if out of order.

        ``whole``: the message is the start of a response whose body is sent
        right after it (no need to watch for a disconnect in between).
        """
        kind = message["type"]
        if self._response_complete:
            raise UnexpectedMessage(kind, "the response is already complete")
        if kind == "http.response.start":
            if self._response_started:
                raise UnexpectedMessage(kind, "the response has already started")
            self._response_started = True
            self._trailers_pending = message.get("trailers", False)
            if not whole:
                # The body follows later: watch for the client leaving meanwhile.
                self._start_spare()
        elif kind == "http.response.body":
            if not self._response_started:
                raise UnexpectedMessage(
                    kind, "send the response start (send_headers()) first"
                )
            if message.get("more_body", False):
                self._start_spare()  # streaming
            elif not self._trailers_pending:
                self._response_complete = True
        elif kind == "http.response.trailers":
            if not self._trailers_pending:
                raise UnexpectedMessage(
                    kind, "the response start did not announce trailers"
                )
            if not message.get("more_trailers", False):
                self._response_complete = True

    async def _deliver(self, message: Message) -> None:
        """Hand a checked, in-order message to the server (dropped once the client is gone)."""
        if self._disconnected:
            logger.debug("dropping %r: the client has disconnected", message["type"])
            await anyio.lowlevel.checkpoint()
            return
        await self.base_send(message)

    async def send_headers(self, status: int = 200, headers: HeadersArg = None) -> None:
        """Start the response: send the status and headers (a checkpoint).

        Args:
            status: the HTTP status, an int in 100..599.
            headers: ``(name, value)`` pairs or a mapping; names and values may
                be bytes or str (str names must be ASCII, str values latin-1).
                Names are lowercased, as ASGI requires.

        Raises:
            TypeError, ValueError: a bad status or header (named).
            UnexpectedMessage: the response has already started.
        """
        await self.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": _encode_headers(headers),
            }
        )

    async def send_body(self, body: bytes, *, more_body: bool = False) -> None:
        """Send a chunk of the response body (a checkpoint).

        With ``more_body=False`` (the default) this is the last chunk: the
        response is complete and the instance ends when the code that sent it
        returns.

        Raises:
            TypeError: ``body`` is not bytes or ``more_body`` not a bool.
            UnexpectedMessage: the headers were not sent yet, or the response
                is already complete.
        """
        await self.send(
            {"type": "http.response.body", "body": body, "more_body": more_body}
        )

    async def send_response(
        self, status: int, body: bytes, headers: HeadersArg = None
    ) -> None:
        """Send a whole response: :meth:`send_headers`, then :meth:`send_body` (a checkpoint).

        Raises:
            TypeError, ValueError: a bad status, header or body (named), checked
                before anything is sent.
            UnexpectedMessage: the response has already started.
        """
        encoded = _encode_headers(headers)
        body_message = {"type": "http.response.body", "body": body, "more_body": False}
        if type(body) is not bytes:
            validate_outgoing("http", body_message)  # raises, naming the field
        for name, _ in encoded:
            if name == b"content-length":
                break
        else:
            # The whole body is known: saves the server a chunked encoding.
            encoded.append((b"content-length", b"%d" % len(body)))
        start = {"type": "http.response.start", "status": status, "headers": encoded}
        if type(self).send is not AsyncHttpConsumer.send:
            # A subclass's send() sees both messages.
            self._whole_response = True
            try:
                await self.send(start)
            finally:
                self._whole_response = False
            await self.send(body_message)
            return
        # The headers were checked as they were encoded: only the status is left.
        _check_status("http.response.start", status)
        self._follow(start, whole=True)
        await self._deliver(start)
        self._follow(body_message, whole=False)
        await self._deliver(body_message)

    # -- server-sent events ---------------------------------------------------------------

    async def start_event_stream(
        self, headers: HeadersArg = None, *, status: int = 200
    ) -> None:
        """Start a ``text/event-stream`` response (server-sent events; a checkpoint).

        Sends ``content-type: text/event-stream; charset=utf-8``,
        ``cache-control: no-cache`` and ``x-accel-buffering: no``; a header of
        the same name in ``headers`` replaces the default. Then send events
        with :meth:`send_event`, keep-alives with :meth:`send_comment`, and
        end the stream with ``send_body(b"")``.

        Raises:
            TypeError, ValueError: a bad status or header (named).
            UnexpectedMessage: the response has already started.
        """
        extra = _encode_headers(headers)
        given = {name for name, _ in extra}
        defaults = [
            (name, value) for name, value in _EVENT_STREAM_HEADERS if name not in given
        ]
        await self.send_headers(status, defaults + extra)

    async def send_event(
        self,
        data: str,
        *,
        event: str | None = None,
        id: str | int | None = None,  # noqa: A002 - the SSE field's name
        retry: int | None = None,
    ) -> None:
        """Send one server-sent event (a checkpoint).

        Starts the event stream first (:meth:`start_event_stream`) if the
        response has not started. ``data`` may span lines: each line (after
        ``\\r\\n`` and ``\\r`` are normalised to ``\\n``) becomes its own
        ``data:`` field, and the client joins them back with ``\\n``.

        Args:
            data: the event's payload.
            event: the event type (the client's ``addEventListener`` name);
                ``None`` for the default ``message``.
            id: the event id (the client's ``Last-Event-ID``); ``""`` resets it.
            retry: the client's reconnection delay, in milliseconds.

        Raises:
            TypeError: ``data`` or ``event`` is not a str, ``id`` not a str or
                int, ``retry`` not an int.
            ValueError: ``event`` or ``id`` contains a newline (or ``id`` a
                NUL), or ``retry`` is negative.
            UnexpectedMessage: the response is complete.
        """
        await self._send_stream_chunk(
            format_event(data, event=event, id=id, retry=retry)
        )

    async def send_comment(self, text: str = "") -> None:
        """Send an SSE comment, ignored by clients; use it as a keep-alive (a checkpoint).

        Raises:
            TypeError: ``text`` is not a str.
            UnexpectedMessage: the response is complete.
        """
        await self._send_stream_chunk(format_comment(text))

    async def _send_stream_chunk(self, chunk: bytes) -> None:
        if not self._response_started:
            await self.start_event_stream()
        await self.send_body(chunk, more_body=True)


# -- server-sent event framing ------------------------------------------------------------


def format_event(
    data: str,
    *,
    event: str | None = None,
    id: str | int | None = None,  # noqa: A002 - the SSE field's name
    retry: int | None = None,
) -> bytes:
    """Frame one server-sent event as UTF-8 bytes (see :meth:`AsyncHttpConsumer.send_event`).

    Raises:
        TypeError, ValueError: as :meth:`AsyncHttpConsumer.send_event`.
    """
    lines: list[str] = []
    if event is not None:
        lines.append(f"event: {_single_line('event', event)}")
    if id is not None:
        id_text = _single_line("id", _id_text(id), allow_int=True)
        if "\0" in id_text:
            msg = f"send_event() id must not contain NUL, got {id_text!r}"
            raise ValueError(msg)
        lines.append(f"id: {id_text}")
    if retry is not None:
        lines.append(f"retry: {_check_retry(retry)}")
    lines.extend(
        f"data: {line}" for line in _NEWLINES.split(_text("send_event() data", data))
    )
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def format_comment(text: str = "") -> bytes:
    """Frame an SSE comment (each line prefixed with ``:``) as UTF-8 bytes.

    Raises:
        TypeError: ``text`` is not a str.
    """
    lines = _NEWLINES.split(_text("send_comment() text", text))
    return ("\n".join(f": {line}" if line else ":" for line in lines) + "\n\n").encode(
        "utf-8"
    )


def _text(what: str, value: object) -> str:
    if not isinstance(value, str):
        msg = f"{what} must be a str, got {type(value).__name__} {value!r}"
        raise TypeError(msg)
    return value


def _id_text(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _check_retry(retry: object) -> int:
    if not isinstance(retry, int) or isinstance(retry, bool):
        msg = f"send_event() retry must be an int (milliseconds), got {type(retry).__name__} {retry!r}"
        raise TypeError(msg)
    if retry < 0:
        msg = f"send_event() retry must be >= 0 milliseconds, got {retry}"
        raise ValueError(msg)
    return retry


def _single_line(field: str, value: object, *, allow_int: bool = False) -> str:
    if not isinstance(value, str):
        expected = "a str or int" if allow_int else "a str"
        msg = f"send_event() {field} must be {expected}, got {type(value).__name__} {value!r}"
        raise TypeError(msg)
    if "\n" in value or "\r" in value:
        msg = f"send_event() {field} must not contain a newline, got {value!r}"
        raise ValueError(msg)
    return value


# -- helpers ------------------------------------------------------------------------------


def _check_max_body_size(value: object) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        msg = f"max_body_size must be an int (bytes) or None, got {type(value).__name__} {value!r}"
        raise TypeError(msg)
    if value is not None and value < 0:
        msg = f"max_body_size must be >= 0 bytes, got {value}"
        raise ValueError(msg)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _encode_headers(headers: object) -> list[tuple[bytes, bytes]]:
    if headers is None:
        return []
    if type(headers) is list:  # the usual shape: skip the abstract-class checks
        encoded: list[tuple[bytes, bytes]] = []
        for pair in headers:
            if type(pair) is not tuple or len(pair) != 2:
                break
            name, value = pair
            raw = _encode_name(name)
            if (
                type(value) is not bytes
                or b"\r" in value
                or b"\n" in value
                or b"\0" in value
            ):
                value = _encode_value(name, value)  # encodes a str, or raises
            encoded.append((raw, value))
        else:
            return encoded
    if isinstance(headers, Mapping):
        pairs: Iterable[object] = headers.items()
    elif isinstance(headers, str | bytes) or not isinstance(headers, Iterable):
        msg = f"headers must be (name, value) pairs or a mapping, got {type(headers).__name__} {headers!r}"
        raise TypeError(msg)
    else:
        pairs = headers
    encoded = []
    for pair in pairs:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            msg = f"each header must be a (name, value) pair, got {pair!r}"
            raise TypeError(msg)
        encoded.append((_encode_name(pair[0]), _encode_value(pair[0], pair[1])))
    return encoded


# Header names already checked and lowercased, by the name given (bounded).
_names: dict[object, bytes] = {}
_NAMES_LIMIT: Final = 1024


def _encode_name(name: object) -> bytes:
    if type(name) is bytes or type(name) is str:
        known = _names.get(name)
        if known is not None:
            return known
        raw = _check_name(name)
        if len(_names) < _NAMES_LIMIT:
            _names[name] = raw
        return raw
    return _check_name(name)


def _check_name(name: object) -> bytes:
    if isinstance(name, str):
        try:
            raw = name.encode("ascii")
        except UnicodeEncodeError:
            msg = f"header name {name!r} is not ASCII"
            raise ValueError(msg) from None
    elif isinstance(name, bytes):
        raw = name
    else:
        msg = f"header name must be bytes or str, got {type(name).__name__} {name!r}"
        raise TypeError(msg)
    if _TOKEN.fullmatch(raw) is None:
        msg = f"header name {name!r} is not a valid HTTP token"
        raise ValueError(msg)
    return raw.lower()


def _encode_value(name: object, value: object) -> bytes:
    if isinstance(value, str):
        try:
            raw = value.encode("latin-1")
        except UnicodeEncodeError:
            msg = f"header {name!r} value {value!r} is not latin-1; encode it yourself"
            raise ValueError(msg) from None
    elif isinstance(value, bytes):
        raw = value
    else:
        msg = f"header {name!r} value must be bytes or str, got {type(value).__name__} {value!r}"
        raise TypeError(msg)
    if b"\r" in raw or b"\n" in raw or b"\0" in raw:
        msg = f"header {name!r} value contains CR, LF or NUL: {value!r}"
        raise ValueError(msg)
    return raw


def _task_name(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


async def _send_server_error(send: Send) -> None:
    try:
        await send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(_SERVER_ERROR)).encode("ascii")),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _SERVER_ERROR})
    except Exception:
        # The server could not take it; the original error matters more.
        logger.debug("could not send the 500 response", exc_info=True)
        await anyio.lowlevel.checkpoint()
