"""WebSocket consumers: the Channels API on a per-connection task group.

Four classes, as in Channels:

* :class:`AsyncWebsocketConsumer` and :class:`WebsocketConsumer` (its handlers
  are plain methods run on the instance's worker thread);
* :class:`AsyncJsonWebsocketConsumer` and :class:`JsonWebsocketConsumer`, which
  decode incoming text frames as JSON and encode outgoing content.

Override ``connect``, ``receive`` (or ``receive_json``) and ``disconnect``, and
call ``accept``, ``send`` (or ``send_json``), ``close`` and ``deny``. Add one
method per channel-layer event type you handle (``"chat.message"`` ->
``chat_message``).

What the server sees, and when the instance ends:

* Every outgoing message is checked where it is made
  (``trichannels._validation.validate_outgoing``), so ``send(text_data=b"x")``
  raises :class:`TypeError` in your handler, not somewhere inside the server.
* Sending a frame before ``accept()`` raises
  :class:`~trichannels.exceptions.UnexpectedMessage`. Once the consumer has
  closed the connection, or the client has gone, frames are dropped (logged at
  debug level): a group broadcast racing a close is not an error.
* After the consumer closes (``close``, ``deny``, ``send(close=True)``) the
  instance ends when the server's ``websocket.disconnect`` arrives; if none
  arrives within ``close_timeout`` seconds, one is synthesized (code 1006), so
  the instance always ends.
* When the instance ends with the socket still open it is closed: with 1000
  after a clean end (``StopConsumer``), with 1011 after an unhandled exception.
  An exception before the handshake was answered refuses it (with an HTTP 500
  denial response where the server supports the ``websocket.http.response``
  extension). The exception is logged once and propagates to the server.
* ``groups`` are joined before ``connect()`` runs and left before
  ``disconnect()`` runs, and, whatever happens, when the instance ends.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any, Final

import anyio
import anyio.lowlevel

from trichannels._validation import validate_outgoing
from trichannels.consumer import AsyncConsumer, SyncConsumer
from trichannels.exceptions import (
    AcceptConnection,
    DenyConnection,
    InvalidChannelLayerError,
    UnexpectedMessage,
)
from trichannels.sync import async_to_sync
from trichannels.types import Message

__all__ = [
    "AsyncJsonWebsocketConsumer",
    "AsyncWebsocketConsumer",
    "JsonWebsocketConsumer",
    "WebsocketConsumer",
]

logger = logging.getLogger("trichannels.generic.websocket")

_DENIAL_EXTENSION: Final = "websocket.http.response"
_PREVIEW_LIMIT: Final = 64

# Connection states (module constants: compared by identity on every frame).
_CONNECTING: Final = "connecting"  # the handshake has not been answered
_OPEN: Final = "open"  # accepted
_CLOSING: Final = "closing"  # the consumer closed or refused; waiting for the server
_CLOSED: Final = "closed"  # the client is gone (websocket.disconnect noticed)


def _preview(data: str | bytes | None) -> str:
    """A bounded repr of a frame for log lines: never the whole payload."""
    if data is None:
        return "None"
    if len(data) <= _PREVIEW_LIMIT:
        return repr(data)
    unit = "chars" if isinstance(data, str) else "bytes"
    return f"{data[:_PREVIEW_LIMIT]!r}... ({len(data)} {unit})"


def _send_message(text_data: str | None, bytes_data: bytes | None) -> Message:
    if bytes_data is None:
        message: Message = {"type": "websocket.send", "text": text_data}
    elif text_data is None:
        message = {"type": "websocket.send", "bytes": bytes_data}
    else:
        message = {"type": "websocket.send", "text": text_data, "bytes": bytes_data}
    validate_outgoing("websocket", message)
    return message


def _close_message(code: int | None, reason: str | None) -> Message:
    message: dict[str, Any] = {"type": "websocket.close"}
    if code is not None:
        message["code"] = code
    if reason is not None:
        message["reason"] = reason
    validate_outgoing("websocket", message)
    return message


def _close_from_send_flag(close: bool | int) -> Message | None:
    """Channels' ``send(..., close=...)``: ``True`` closes, an int closes with that code."""
    if not close:
        return None
    return _close_message(None if close is True else close, None)


class _WebsocketCore(AsyncConsumer):
    """State, groups and the messages shared by the sync and async WebSocket consumers.

    The ``_do_*`` coroutines run on the event loop (the sync consumer reaches
    them through ``async_to_sync``), so every state change happens there, with
    no checkpoint between the check and the change.
    """

    groups: Sequence[str] = ()
    """Group names joined before ``connect()`` and left when the connection ends."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._ws_state: str = _CONNECTING
        self._joined: list[str] = []

    # -- message builders (pure; run wherever the caller runs) ---------------------

    def _accept_message(
        self, subprotocol: str | None, headers: Iterable[tuple[bytes, bytes]] | None
    ) -> Message:
        message: dict[str, Any] = {
            "type": "websocket.accept",
            "subprotocol": subprotocol,
        }
        if headers is not None:
            message["headers"] = headers
        validate_outgoing("websocket", message)
        if subprotocol is not None:
            offered = self.scope.get("subprotocols") or ()
            if subprotocol not in offered:
                msg = f"accept() subprotocol {subprotocol!r} was not offered by the client (offered: {list(offered)!r})"
                raise ValueError(msg)
        return message

    def _deny_messages(
        self, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] | None
    ) -> tuple[Message, Message] | None:
        """The denial response, or ``None`` if the server cannot send one."""
        start = {
            "type": "websocket.http.response.start",
            "status": status,
            "headers": [] if headers is None else headers,
        }
        validate_outgoing("websocket", start)
        end = {"type": "websocket.http.response.body", "body": body, "more_body": False}
        validate_outgoing("websocket", end)
        if _DENIAL_EXTENSION not in (self.scope.get("extensions") or {}):
            return None
        return start, end

    # -- sending (on the event loop) -------------------------------------------------

    async def _do_send(self, message: Message) -> None:
        state = self._ws_state
        if state is _OPEN:
            await self.base_send(message)
        elif state is _CONNECTING:
            raise UnexpectedMessage(
                message["type"],
                "the handshake has not been accepted yet; call accept() first",
            )
        else:
            logger.debug(
                "%s: dropping a frame for %s: the connection is %s",
                type(self).__qualname__,
                self.scope.get("path"),
                state,
            )
            await anyio.lowlevel.checkpoint()

    async def _do_accept(self, message: Message) -> None:
        state = self._ws_state
        if state is _CONNECTING:
            self._ws_state = _OPEN
            await self.base_send(message)
        elif state is _OPEN:
            raise UnexpectedMessage(
                message["type"], "the connection was already accepted"
            )
        elif state is _CLOSING:
            raise UnexpectedMessage(
                message["type"], "the connection was already closed or refused"
            )
        else:  # _CLOSED: the client left before the answer; nothing to send.
            await anyio.lowlevel.checkpoint()

    async def _do_close(self, message: Message) -> None:
        if self._ws_state is _CLOSING or self._ws_state is _CLOSED:
            await anyio.lowlevel.checkpoint()
            return
        self._ws_state = _CLOSING
        await self.base_send(message)
        self._expect_disconnect()

    async def _do_deny(self, start: Message, end: Message) -> None:
        state = self._ws_state
        if state is _CLOSED:
            await anyio.lowlevel.checkpoint()
            return
        if state is not _CONNECTING:
            raise UnexpectedMessage(
                start["type"],
                "a denial response is only possible before the handshake is answered",
            )
        self._ws_state = _CLOSING
        await self.base_send(start)
        await self.base_send(end)
        self._expect_disconnect()

    def _expect_disconnect(self) -> None:
        if self._can_spawn():
            self.start_soon(
                self._synthesize_disconnect, name="websocket close watchdog"
            )

    async def _synthesize_disconnect(self) -> None:
        await anyio.sleep(self.close_timeout)
        logger.debug(
            "%s: no websocket.disconnect from the server %ss after closing %s; ending the instance",
            type(self).__qualname__,
            self.close_timeout,
            self.scope.get("path"),
        )
        self._notice_disconnect(
            {"type": "websocket.disconnect", "code": 1006, "reason": ""}
        )

    def _notice_disconnect(self, message: Message) -> None:
        self._ws_state = _CLOSED
        super()._notice_disconnect(message)

    async def _send_going_away(self, code: int, reason: str) -> None:
        # Server shutdown (trichannels.consumer.close_websockets): close through
        # the state machine, so later frames are dropped and the watchdog runs.
        try:
            await self._do_close(
                {"type": "websocket.close", "code": code, "reason": reason}
            )
        except Exception as exc:  # the connection may already be gone
            logger.debug("could not send going-away close: %r", exc)
            await anyio.lowlevel.checkpoint()

    # -- groups ----------------------------------------------------------------------

    async def _join_groups(self) -> None:  # noqa: ASYNC910 - the loop runs at least once
        groups = self.groups
        if not groups:
            await anyio.lowlevel.checkpoint()
            return
        if isinstance(groups, str):
            msg = f"{type(self).__qualname__}.groups must be a list of group names, got the str {groups!r}"
            raise TypeError(msg)
        layer = self.channel_layer
        if layer is None:
            msg = (
                f"{type(self).__qualname__}.groups is {list(groups)!r} but no channel layer is "
                f"configured for channel_layer_alias={self.channel_layer_alias!r}"
            )
            raise InvalidChannelLayerError(msg)
        if "groups" not in layer.extensions:
            msg = (
                f"{type(self).__qualname__}.groups is set but the channel layer "
                f"{self.channel_layer_alias!r} ({type(layer).__name__}) does not support groups"
            )
            raise InvalidChannelLayerError(msg)
        for group in groups:
            await layer.group_add(group, self.channel_name)
            self._joined.append(group)

    async def _leave_groups(self) -> None:  # noqa: ASYNC910 - the loop runs at least once
        joined, self._joined = self._joined, []
        layer = self.channel_layer
        if layer is None or not joined:
            await anyio.lowlevel.checkpoint()
            return
        for group in joined:
            try:
                await layer.group_discard(group, self.channel_name)
            except Exception:
                logger.warning(
                    "%s: could not leave group %r for %s; it expires with the layer's group_expiry",
                    type(self).__qualname__,
                    group,
                    self.channel_name,
                    exc_info=True,
                )

    # -- end of the instance ---------------------------------------------------------

    async def _instance_cleanup(self) -> None:
        # The core runs this shielded and bounded by close_timeout.
        try:
            await self._close_on_exit()
        finally:
            try:
                await self._leave_groups()  # noqa: ASYNC102 - shielded by the caller
            finally:
                await super()._instance_cleanup()  # noqa: ASYNC102 - shielded by the caller

    async def _close_on_exit(self) -> None:
        """Close (or refuse) a connection the instance leaves behind."""
        state = self._ws_state
        if state is _CLOSING or state is _CLOSED:
            await anyio.lowlevel.checkpoint()
            return
        self._ws_state = _CLOSING
        failed = self._error is not None
        try:
            if state is _OPEN:
                await self.base_send(
                    {"type": "websocket.close", "code": 1011 if failed else 1000}
                )
            elif failed and _DENIAL_EXTENSION in (self.scope.get("extensions") or {}):
                await self.base_send(
                    {
                        "type": "websocket.http.response.start",
                        "status": 500,
                        "headers": [],
                    }
                )
                await self.base_send(
                    {
                        "type": "websocket.http.response.body",
                        "body": b"",
                        "more_body": False,
                    }
                )
            else:
                await self.base_send({"type": "websocket.close"})
        except Exception:
            logger.debug(
                "%s: could not close %s as the instance ended",
                type(self).__qualname__,
                self.scope.get("path"),
                exc_info=True,
            )
            await anyio.lowlevel.checkpoint()


class AsyncWebsocketConsumer(_WebsocketCore):
    """A WebSocket consumer with ``async def`` handlers (Channels' API).

    Override :meth:`connect`, :meth:`receive` and :meth:`disconnect`; add
    ``async def`` methods for channel-layer events. See the module docstring
    for when the instance ends and what is sent on errors.

    Example::

        class Echo(AsyncWebsocketConsumer):
            groups = ["echoes"]

            async def receive(self, text_data=None, bytes_data=None):
                await self.send(text_data=text_data, bytes_data=bytes_data)
    """

    async def websocket_connect(self, message: Message) -> None:
        """Join ``groups``, then run :meth:`connect` (handling Accept/DenyConnection)."""
        await self._join_groups()
        try:
            await self.connect()
        except AcceptConnection:
            await self.accept()
        except DenyConnection:
            await self.close()

    async def connect(self) -> None:
        """Called when the client opens the handshake. The default accepts it.

        Answer with :meth:`accept`, :meth:`close` (refuse), :meth:`deny`, or
        raise :class:`~trichannels.exceptions.AcceptConnection` /
        :class:`~trichannels.exceptions.DenyConnection`.
        """
        await self.accept()

    async def accept(
        self,
        subprotocol: str | None = None,
        headers: Iterable[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Accept the handshake, optionally choosing a subprotocol and adding headers.

        Args:
            subprotocol: one of ``self.scope["subprotocols"]`` (what the client offered).
            headers: extra response headers as ``(bytes, bytes)`` pairs (ASGI
                WebSocket spec 2.1); not ``sec-websocket-protocol``.

        Raises:
            TypeError, ValueError: a malformed value (the message names it), or
                a subprotocol the client did not offer.
            UnexpectedMessage: the handshake was already answered.
        """
        await self._do_accept(self._accept_message(subprotocol, headers))

    async def websocket_receive(self, message: Message) -> None:
        """Pass a frame to :meth:`receive` as ``text_data`` or ``bytes_data``."""
        text = message.get("text")
        if text is not None:
            await self.receive(text_data=text)
            return
        data = message.get("bytes")
        if data is None:
            msg = f"websocket.receive carries neither 'text' nor 'bytes': {message!r}"
            raise ValueError(msg)
        await self.receive(bytes_data=data)

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None
    ) -> None:
        """Called with each frame from the client: exactly one argument is not ``None``."""

    async def send(  # type: ignore[override]
        self,
        text_data: str | None = None,
        bytes_data: bytes | None = None,
        close: bool | int = False,
    ) -> None:
        """Send one frame (exactly one of ``text_data``/``bytes_data``), then optionally close.

        Args:
            text_data: a text frame (``str``).
            bytes_data: a binary frame (``bytes``).
            close: ``True`` closes the connection after the frame; an int closes
                with that code.

        Raises:
            TypeError, ValueError: both or neither payloads, or one of the wrong
                type, or an invalid close code.
            UnexpectedMessage: the handshake has not been accepted yet.
        """
        if not close and self._ws_state is _OPEN:
            # The usual frame, checked inline: one frame of ours, not four.
            if bytes_data is None and type(text_data) is str:
                await self.base_send({"type": "websocket.send", "text": text_data})
                return
            if text_data is None and type(bytes_data) is bytes:
                await self.base_send({"type": "websocket.send", "bytes": bytes_data})
                return
        message = _send_message(text_data, bytes_data)
        closing = _close_from_send_flag(close) if close else None
        await self._do_send(message)
        if closing is not None:
            await self._do_close(closing)

    async def close(self, code: int | None = None, reason: str | None = None) -> None:
        """Close the connection, or refuse the handshake if it was not accepted yet.

        After accepting, the client receives ``code`` (default 1000) and
        ``reason`` in the close frame. Before, the handshake is refused (HTTP
        403 on most servers; the code and reason do not reach the client: use
        :meth:`deny` to send a response body). Closing twice, or after the
        client left, does nothing.

        Raises:
            TypeError, ValueError: a code that may not be sent (1000-1003,
                1007-1014 and 3000-4999 may), or a reason that is not a str or
                is over 123 UTF-8 bytes.
        """
        await self._do_close(_close_message(code, reason))

    async def deny(
        self,
        status: int = 403,
        body: bytes = b"",
        headers: Iterable[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Refuse the handshake with an HTTP response (the ``websocket.http.response`` extension).

        Only possible before the handshake is answered. Where the server does
        not advertise the extension in ``scope["extensions"]`` (daphne, for
        one), this falls back to :meth:`close`: the client sees the server's
        own refusal (usually 403) and ``status``/``body`` are not sent.

        Args:
            status: the HTTP status, 100-599.
            body: the response body.
            headers: response headers as ``(bytes, bytes)`` pairs.

        Raises:
            TypeError, ValueError: a malformed value (the message names it).
            UnexpectedMessage: the handshake was already answered.
        """
        messages = self._deny_messages(status, body, headers)
        if messages is None:
            await self.close()
        else:
            await self._do_deny(*messages)

    async def websocket_disconnect(self, message: Message) -> None:
        """Leave ``groups``, then call :meth:`disconnect` with the close code."""
        self._ws_state = _CLOSED
        await self._leave_groups()
        await self.disconnect(message.get("code", 1005))

    async def disconnect(self, code: int) -> None:
        """Called once the connection is closed (by either side), with its close code."""


class AsyncJsonWebsocketConsumer(AsyncWebsocketConsumer):
    """An :class:`AsyncWebsocketConsumer` that speaks JSON in text frames.

    Incoming text frames are decoded with :meth:`decode_json` and passed to
    :meth:`receive_json`. A frame that cannot be decoded (including an empty
    frame) or a binary frame goes to :meth:`invalid_frame` instead, which by
    default logs a warning and closes the connection with code 1007.
    """

    async def receive(
        self,
        text_data: str | None = None,
        bytes_data: bytes | None = None,
        **kwargs: Any,
    ) -> None:
        """Decode a text frame and call :meth:`receive_json`; see :meth:`invalid_frame`."""
        if text_data is None:
            size = 0 if bytes_data is None else len(bytes_data)
            error = ValueError(
                f"expected a JSON text frame, got a binary frame of {size} bytes"
            )
            await self.invalid_frame(text_data, bytes_data, error)
            return
        try:
            content = await self.decode_json(text_data)
        except ValueError as exc:
            await self.invalid_frame(text_data, bytes_data, exc)
            return
        await self.receive_json(content, **kwargs)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Called with each decoded JSON frame."""

    async def invalid_frame(
        self, text_data: str | None, bytes_data: bytes | None, error: Exception
    ) -> None:
        """Called for a frame that is not valid JSON text, instead of :meth:`receive_json`.

        The default logs a warning (with a truncated preview of the frame, never
        all of it) and closes with 1007 (invalid frame payload data). Override
        it to reply with an error message and keep the connection open, say.

        Args:
            text_data: the text frame, or ``None`` for a binary frame.
            bytes_data: the binary frame, or ``None`` for a text frame.
            error: why it was refused (:meth:`decode_json`'s ``ValueError``).
        """
        logger.warning(
            "%s: invalid frame on %s, closing with 1007: %s (frame: %s)",
            type(self).__qualname__,
            self.scope.get("path"),
            error,
            _preview(text_data if text_data is not None else bytes_data),
        )
        reason = (
            "invalid JSON" if text_data is not None else "expected a JSON text frame"
        )
        await self.close(code=1007, reason=reason)

    async def send_json(self, content: Any, close: bool | int = False) -> None:
        """Encode ``content`` with :meth:`encode_json` and send it as a text frame."""
        await self.send(text_data=await self.encode_json(content), close=close)

    # Async (as in Channels) so that overrides may await; the defaults are not
    # checkpoints, to keep two scheduler round trips off every JSON frame.

    @classmethod
    async def decode_json(cls, text_data: str) -> Any:
        """Decode a text frame (``json.loads``); raise ``ValueError`` for invalid input."""
        return json.loads(text_data)  # noqa: ASYNC910

    @classmethod
    async def encode_json(cls, content: Any) -> str:
        """Encode content for a text frame (``json.dumps``)."""
        return json.dumps(content)  # noqa: ASYNC910


class WebsocketConsumer(_WebsocketCore, SyncConsumer):
    """A WebSocket consumer with synchronous handlers (Channels' API).

    Every handler runs on this connection's worker thread (see
    :class:`~trichannels.consumer.SyncConsumer`); :meth:`accept`, :meth:`send`,
    :meth:`close` and :meth:`deny` block that thread until the server has the
    message. Use :func:`trichannels.sync.async_to_sync` to call the channel
    layer. Otherwise it behaves exactly like :class:`AsyncWebsocketConsumer`.
    """

    def websocket_connect(self, message: Message) -> None:
        """Join ``groups``, then run :meth:`connect` (handling Accept/DenyConnection)."""
        async_to_sync(self._join_groups)()
        try:
            self.connect()
        except AcceptConnection:
            self.accept()
        except DenyConnection:
            self.close()

    def connect(self) -> None:
        """Called when the client opens the handshake. The default accepts it."""
        self.accept()

    def accept(
        self,
        subprotocol: str | None = None,
        headers: Iterable[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Accept the handshake; see :meth:`AsyncWebsocketConsumer.accept`."""
        async_to_sync(self._do_accept)(self._accept_message(subprotocol, headers))

    def websocket_receive(self, message: Message) -> None:
        """Pass a frame to :meth:`receive` as ``text_data`` or ``bytes_data``."""
        text = message.get("text")
        if text is not None:
            self.receive(text_data=text)
            return
        data = message.get("bytes")
        if data is None:
            msg = f"websocket.receive carries neither 'text' nor 'bytes': {message!r}"
            raise ValueError(msg)
        self.receive(bytes_data=data)

    def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None
    ) -> None:
        """Called with each frame from the client: exactly one argument is not ``None``."""

    def send(  # type: ignore[override]
        self,
        text_data: str | None = None,
        bytes_data: bytes | None = None,
        close: bool | int = False,
    ) -> None:
        """Send one frame, then optionally close; see :meth:`AsyncWebsocketConsumer.send`."""
        message = _send_message(text_data, bytes_data)
        closing = _close_from_send_flag(close) if close else None
        async_to_sync(self._do_send)(message)
        if closing is not None:
            async_to_sync(self._do_close)(closing)

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        """Close or refuse; see :meth:`AsyncWebsocketConsumer.close`."""
        async_to_sync(self._do_close)(_close_message(code, reason))

    def deny(
        self,
        status: int = 403,
        body: bytes = b"",
        headers: Iterable[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Refuse with an HTTP response; see :meth:`AsyncWebsocketConsumer.deny`."""
        messages = self._deny_messages(status, body, headers)
        if messages is None:
            self.close()
        else:
            async_to_sync(self._do_deny)(*messages)

    def websocket_disconnect(self, message: Message) -> None:
        """Leave ``groups``, then call :meth:`disconnect` with the close code."""
        self._ws_state = _CLOSED
        async_to_sync(self._leave_groups)()
        self.disconnect(message.get("code", 1005))

    def disconnect(self, code: int) -> None:
        """Called once the connection is closed (by either side), with its close code."""


class JsonWebsocketConsumer(WebsocketConsumer):
    """A :class:`WebsocketConsumer` that speaks JSON; see :class:`AsyncJsonWebsocketConsumer`.

    Here :meth:`decode_json`, :meth:`encode_json`, :meth:`receive_json` and
    :meth:`invalid_frame` are plain methods.
    """

    def receive(
        self,
        text_data: str | None = None,
        bytes_data: bytes | None = None,
        **kwargs: Any,
    ) -> None:
        """Decode a text frame and call :meth:`receive_json`; see :meth:`invalid_frame`."""
        if text_data is None:
            size = 0 if bytes_data is None else len(bytes_data)
            error = ValueError(
                f"expected a JSON text frame, got a binary frame of {size} bytes"
            )
            self.invalid_frame(text_data, bytes_data, error)
            return
        try:
            content = self.decode_json(text_data)
        except ValueError as exc:
            self.invalid_frame(text_data, bytes_data, exc)
            return
        self.receive_json(content, **kwargs)

    def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Called with each decoded JSON frame."""

    def invalid_frame(
        self, text_data: str | None, bytes_data: bytes | None, error: Exception
    ) -> None:
        """Called for a frame that is not valid JSON text; the default warns and closes with 1007."""
        logger.warning(
            "%s: invalid frame on %s, closing with 1007: %s (frame: %s)",
            type(self).__qualname__,
            self.scope.get("path"),
            error,
            _preview(text_data if text_data is not None else bytes_data),
        )
        reason = (
            "invalid JSON" if text_data is not None else "expected a JSON text frame"
        )
        self.close(code=1007, reason=reason)

    def send_json(self, content: Any, close: bool | int = False) -> None:
        """Encode ``content`` with :meth:`encode_json` and send it as a text frame."""
        self.send(text_data=self.encode_json(content), close=close)

    @classmethod
    def decode_json(cls, text_data: str) -> Any:
        """Decode a text frame (``json.loads``); raise ``ValueError`` for invalid input."""
        return json.loads(text_data)

    @classmethod
    def encode_json(cls, content: Any) -> str:
        """Encode content for a text frame (``json.dumps``)."""
        return json.dumps(content)
