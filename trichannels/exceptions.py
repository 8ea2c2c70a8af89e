"""Exceptions raised by trichannels.

The hierarchy::

    TrichannelsError(Exception)                  raised by trichannels itself
    +-- ConfigurationError(ValueError)           a setting or argument is wrong
    |   +-- InvalidChannelLayerError             a channel layer is misconfigured or not open
    +-- ChannelLayerError                        a channel-layer operation failed
    |   +-- ChannelFull                          .channel, .capacity
    |   +-- MessageTooLarge                      .size, .limit
    |   +-- InvalidChannelName(ValueError)       .name, .reason
    |   +-- InvalidGroupName(ValueError)         .name, .reason
    |   +-- InvalidMessage(ValueError)           .reason
    |   +-- LayerConnectionError                 the backend is unreachable or broken
    +-- UnexpectedMessage                        an ASGI message not valid in this state
    +-- RequestAborted                           the client went away mid-request
        +-- RequestTimeout                       the client was too slow to send its body

    StopConsumer, AcceptConnection, DenyConnection (Exception)
        control flow for consumers, deliberately outside TrichannelsError so
        that ``except TrichannelsError`` never swallows them.

Cancellation is never wrapped: the backend's own cancellation exception
(``trio.Cancelled``, ``asyncio.CancelledError``) always passes through
trichannels unchanged. Timeouts raised by ``anyio.fail_after`` stay
``TimeoutError``.
"""

from __future__ import annotations

__all__ = [
    "AcceptConnection",
    "ChannelFull",
    "ChannelLayerError",
    "ConfigurationError",
    "DenyConnection",
    "InvalidChannelLayerError",
    "InvalidChannelName",
    "InvalidGroupName",
    "InvalidMessage",
    "LayerConnectionError",
    "MessageTooLarge",
    "RequestAborted",
    "RequestTimeout",
    "StopConsumer",
    "TrichannelsError",
    "UnexpectedMessage",
]


class TrichannelsError(Exception):
    """Base class of every error trichannels raises on its own account.

    Control-flow exceptions (:class:`StopConsumer`, :class:`AcceptConnection`,
    :class:`DenyConnection`) are not subclasses, so a broad
    ``except TrichannelsError`` cannot swallow them.
    """


class ConfigurationError(TrichannelsError, ValueError):
    """A setting or constructor argument is invalid.

    Raised at the point of configuration (constructing a router, a layer, a
    consumer via ``as_asgi``), never later at request time.
    """


class InvalidChannelLayerError(ConfigurationError):
    """A channel layer is misconfigured, unknown, or not open.

    Raised by :func:`trichannels.layers.get_channel_layer` when the alias is
    not configured or its layer has not been opened, and when a layer's
    configuration (backend path, URL, options) is invalid.
    """


class ChannelLayerError(TrichannelsError):
    """Base class for failures of a channel-layer operation."""


class ChannelFull(ChannelLayerError):
    """A ``send`` found the channel at its capacity.

    The message was not queued. ``group_send`` never raises this: a full
    member's copy is dropped and counted in the layer's statistics instead.

    Attributes:
        channel: the channel that is full.
        capacity: the capacity in force for that channel.
    """

    def __init__(self, channel: str, capacity: int) -> None:
        self.channel = channel
        self.capacity = capacity
        super().__init__(f"channel {channel!r} is full (capacity {capacity})")


class MessageTooLarge(ChannelLayerError):
    """An encoded message exceeds the layer's size limit.

    Attributes:
        size: the encoded size in bytes.
        limit: the configured limit in bytes.
    """

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"message of {size} bytes exceeds the limit of {limit} bytes")


class _InvalidName(ChannelLayerError, ValueError):
    """Shared shape of the two name errors: the value, the rule, one message."""

    _kind = "name"

    def __init__(self, name: object, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"invalid {self._kind} name {name!r}: {reason}")


class InvalidChannelName(_InvalidName):
    """A channel name breaks the naming rules.

    Attributes:
        name: the offending value (may not even be a string).
        reason: which rule it breaks.
    """

    _kind = "channel"


class InvalidGroupName(_InvalidName):
    """A group name breaks the naming rules.

    Attributes:
        name: the offending value (may not even be a string).
        reason: which rule it breaks.
    """

    _kind = "group"


class InvalidMessage(ChannelLayerError, ValueError):
    """A channel-layer message is malformed or cannot be serialised.

    Raised at ``send`` / ``group_send`` time, so the sender, not the
    receiver, learns about it.

    Attributes:
        reason: what is wrong, naming the field where one is at fault.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class LayerConnectionError(ChannelLayerError):
    """The layer's backend (e.g. Redis) is unreachable or broke mid-operation.

    Raised ``from`` the client library's own exception, which is kept as
    ``__cause__``.
    """


class UnexpectedMessage(TrichannelsError):
    """An application sent an ASGI message that is not valid in the current state.

    Attributes:
        message_type: the ``type`` of the offending message.
    """

    def __init__(self, message_type: object, detail: str) -> None:
        self.message_type = message_type
        super().__init__(f"unexpected message type {message_type!r}: {detail}")


class RequestAborted(TrichannelsError):
    """The client disconnected before the request body was fully received."""


class RequestTimeout(RequestAborted):
    """The client took too long to send the request body."""


class StopConsumer(Exception):  # Channels' name, kept for porting
    """Raise from a consumer handler to end the application instance cleanly.

    Not an error: the instance's task group is closed, its child tasks are
    cancelled and awaited, and ``__call__`` returns normally.
    """


class AcceptConnection(Exception):  # Channels' name, kept for porting
    """Raise from a WebSocket consumer's ``connect`` to accept the handshake."""


class DenyConnection(Exception):  # Channels' name, kept for porting
    """Raise from a WebSocket consumer's ``connect`` to refuse the handshake.

    The client sees the handshake refused (HTTP 403 on servers that answer
    refusals that way).
    """
