"""The channel-layer contract and the pieces every layer shares.

:class:`BaseChannelLayer` is the API Channels users know (``send``,
``receive``, ``new_channel``, ``group_add``, ``group_discard``,
``group_send``, ``flush``, ``close``) plus bulk sends, ``receive_delivery``
for workers and ``statistics()``. It also holds what every layer configures
the same way: ``expiry``, ``group_expiry``, ``capacity``,
``channel_capacity``, ``channel_delivery``, the serializer and the clock, and
the validation of names and messages, so that every layer rejects the same
inputs with the same errors.

Writing a layer: subclass, implement the abstract coroutines (each must be a
checkpoint), validate with :meth:`~BaseChannelLayer.require_valid_channel_name`
/ :meth:`~BaseChannelLayer.require_valid_group_name` /
:meth:`~BaseChannelLayer.require_valid_message`, call
:meth:`~BaseChannelLayer._check_open` first in each operation, count with the
``_count_*`` helpers, and, if the layer needs background tasks, override
:meth:`~BaseChannelLayer._lifespan` (it runs for as long as the layer is open
under ``async with``) and set ``requires_open = True``. Run
:func:`trichannels.testing.check_channel_layer` against it.
"""

from __future__ import annotations

import abc
import contextlib
import fnmatch
import math
import re
import sys
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from types import TracebackType
from typing import (
    Any,
    ClassVar,
    Final,
    Generic,
    Literal,
    NamedTuple,
    Protocol,
    Self,
    TypeAlias,
    TypeVar,
    cast,
)

import anyio
import anyio.abc
import anyio.lowlevel
import attrs
import msgpack
from sniffio import thread_local as _sniffio_thread

from trichannels.exceptions import ChannelFull, InvalidChannelLayerError, InvalidMessage
from trichannels.layers._names import (
    MAX_NAME_LENGTH,
    non_local_name,
    require_valid_channel_name,
    require_valid_group_name,
)
from trichannels.types import Message

__all__ = [
    "BaseChannelLayer",
    "ChannelPatterns",
    "Delivery",
    "LayerStatistics",
    "MessageSerializer",
    "MsgpackSerializer",
    "normalised_copy",
    "require_valid_message",
]

Delivery: TypeAlias = Literal["at-most-once", "at-least-once"]
"""Delivery guarantee of a channel; see ``channel_delivery``."""

_V = TypeVar("_V")
_T = TypeVar("_T")
_Pattern: TypeAlias = str | re.Pattern[str]
ChannelPatterns: TypeAlias = Mapping[_Pattern, _V] | Sequence[tuple[_Pattern, _V]]
"""Per-channel settings: ``{pattern: value}`` or ``[(pattern, value), ...]``.

A ``str`` pattern is a glob (``fnmatch``, case-sensitive, matching the whole
name); a compiled regex is matched with ``pattern.match`` (anchored at the
start only, as in Channels). The first matching pattern wins, in the order
given.
"""

_DELIVERIES: Final = ("at-most-once", "at-least-once")
_RESERVED_KEY: Final = "__asgi_channel__"


# --------------------------------------------------------------------------- statistics


@attrs.frozen
class LayerStatistics:
    """A snapshot of a layer's state and counters, from :meth:`BaseChannelLayer.statistics`.

    Counters are per layer object (per process for out-of-process layers) and
    start at zero. Until ``flush()`` discards queued messages,
    ``messages_sent == messages_received + messages_expired + queued_messages``
    holds on the in-memory layer.

    Attributes:
        channels: channels that currently exist (have queued messages or waiting receivers).
        queued_messages: messages queued and not yet received (expired ones included until noticed).
        groups: groups with at least one member.
        members: group memberships, summed over groups.
        messages_sent: messages queued on a channel (each group copy counts once).
        messages_received: messages handed to a receiver.
        messages_dropped: group copies dropped because the member was full, plus
            messages a consumer took and could not dispatch (:meth:`BaseChannelLayer.record_dropped`).
        messages_expired: messages discarded because they outlived ``expiry``.
    """

    channels: int = 0
    queued_messages: int = 0
    groups: int = 0
    members: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    messages_dropped: int = 0
    messages_expired: int = 0


# --------------------------------------------------------------------------- messages


def require_valid_message(message: object) -> Mapping[str, Any]:
    """Return ``message`` if it is a mapping whose ``type`` is a non-empty str, else raise.

    This checks the shape only; serialisability is the serializer's job
    (:meth:`MessageSerializer.copy` / :meth:`MessageSerializer.dumps`).

    Raises:
        InvalidMessage: naming what is wrong.
    """
    if type(message) is dict or isinstance(message, Mapping):
        kind = message.get("type")
        if type(kind) is str and kind and _RESERVED_KEY not in message:
            return cast("Mapping[str, Any]", message)
        if "type" not in message:
            msg = "message has no 'type' key"
        elif type(kind) is not str:
            msg = f"message['type'] is {kind!r}, which is not a str"
        elif not kind:
            msg = "message['type'] must not be empty"
        else:
            msg = f"message must not contain the reserved key {_RESERVED_KEY!r}"
    else:
        msg = f"message must be a mapping, not {type(message).__name__}"
    raise InvalidMessage(msg)


class _Unserialisable(Exception):
    """Raised inside the copier; ``path`` is filled in while unwinding."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str | int] = []


_INT_MIN: Final = -(1 << 63)
_INT_MAX: Final = (1 << 63) - 1
MAX_DEPTH: Final = 64
"""A container reached by more than this many subscripts is refused (also catches cycles)."""


def _copy_value(value: object, depth: int) -> Any:
    # Exact types first: this is the hot path of every in-memory send.
    t = type(value)
    if t is str or t is float or t is bool or value is None or t is bytes:
        return value
    if t is int:
        if _INT_MIN <= value <= _INT_MAX:  # type: ignore[operator]
            return value
        msg = f"is {value!r}, outside the signed 64-bit integer range"
        raise _Unserialisable(msg)
    if isinstance(value, dict):
        if depth > MAX_DEPTH:
            msg = f"is nested more than {MAX_DEPTH} levels deep"
            raise _Unserialisable(msg)
        return _copy_dict(value, depth)
    if isinstance(value, list | tuple):
        if depth > MAX_DEPTH:
            msg = f"is nested more than {MAX_DEPTH} levels deep"
            raise _Unserialisable(msg)
        out: list[Any] = []
        for index, item in enumerate(value):
            try:
                out.append(_copy_value(item, depth + 1))
            except _Unserialisable as exc:
                exc.path.append(index)
                raise
        return out
    # Subclasses of the scalar types (StrEnum, IntEnum, ...) travel as their base value.
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):  # pragma: no cover - bool cannot be subclassed
        return bool(value)
    if isinstance(value, int):
        return _copy_value(int.__int__(value), depth)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    msg = f"is of type {t.__name__}, which cannot be serialised"
    raise _Unserialisable(msg)


_PLAIN: Final = frozenset({str, float, bool, type(None), bytes})


def _copy_dict(value: Mapping[Any, Any], depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if type(key) is not str:
            if not isinstance(key, str):
                msg = f"has key {key!r} of type {type(key).__name__}, which cannot be serialised (keys must be str)"
                raise _Unserialisable(msg)
            key = str.__str__(key)
        t = type(item)
        if t in _PLAIN or (t is int and _INT_MIN <= item <= _INT_MAX):
            out[key] = item
            continue
        try:
            out[key] = _copy_value(item, depth + 1)
        except _Unserialisable as exc:
            exc.path.append(key)
            raise
    return out


def _format_path(path: list[str | int]) -> str:
    return "message" + "".join(f"[{part!r}]" for part in reversed(path))


def normalised_copy(message: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-copy ``message`` exactly as it would come back from the wire.

    Dicts (keys must be ``str``) become ``dict``, lists and tuples become
    ``list``, ``bytearray`` becomes ``bytes``, subclasses of ``str``, ``int``,
    ``float`` become the base type; ``bytes``, ``str``, ``bool``, ``None``,
    ``float`` and 64-bit signed ints are kept. Anything else is refused.

    Raises:
        InvalidMessage: naming the path of the first offending field, e.g.
            ``"message['payload'][2] is of type set, which cannot be serialised"``.
    """
    try:
        return _copy_dict(message, 0)
    except _Unserialisable as exc:
        msg = f"{_format_path(exc.path)} {exc.reason}"
        raise InvalidMessage(msg) from None
    except RecursionError:  # pragma: no cover - MAX_DEPTH keeps well clear of it
        msg = f"message is nested more than {MAX_DEPTH} levels deep"
        raise InvalidMessage(msg) from None


# --------------------------------------------------------------------------- serializers


class MessageSerializer(abc.ABC):
    """Turns messages into bytes and back; pluggable with the ``serializer`` option.

    ``dumps`` must refuse, with :class:`~trichannels.exceptions.InvalidMessage`
    naming the offending field, anything ``loads`` could not give back
    unchanged, so that a bad payload fails at ``send``, not at the receiver.
    In-process layers call :meth:`copy` instead, which by default is
    ``loads(dumps(message))``: the receiver gets what it would get over the wire.
    """

    name: ClassVar[str] = "custom"

    @abc.abstractmethod
    def dumps(self, message: Mapping[str, Any]) -> bytes:
        """Encode ``message``; raise ``InvalidMessage`` naming the field that cannot be encoded."""

    @abc.abstractmethod
    def loads(self, data: bytes) -> dict[str, Any]:
        """Decode bytes produced by :meth:`dumps`; raise ``InvalidMessage`` if they are not."""

    def copy(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """Return an independent copy of ``message`` as a receiver would see it."""
        return self.loads(self.dumps(message))


class MsgpackSerializer(MessageSerializer):
    """The default serializer: msgpack, with the Channels spec's types enforced strictly.

    Allowed: ``dict`` with ``str`` keys, ``list`` (tuples become lists),
    ``str``, ``bytes`` (``bytearray`` becomes ``bytes``), ``int`` in the signed
    64-bit range, ``float``, ``bool``, ``None``; nesting up to 64 levels.
    ``copy`` validates and copies in one pass without encoding.
    """

    name: ClassVar[str] = "msgpack"

    def dumps(self, message: Mapping[str, Any]) -> bytes:
        """Encode ``message`` (see the class docstring for what is allowed)."""
        return cast("bytes", msgpack.packb(normalised_copy(message), use_bin_type=True))

    def loads(self, data: bytes) -> dict[str, Any]:
        """Decode ``data``; ``InvalidMessage`` if it is not an encoded message."""
        try:
            value = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except Exception as exc:
            msg = f"could not decode a message: {exc}"
            raise InvalidMessage(msg) from exc
        if type(value) is not dict:
            msg = f"could not decode a message: got {type(value).__name__}, not a map"
            raise InvalidMessage(msg)
        return cast("dict[str, Any]", value)

    def copy(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """Validate and deep-copy ``message`` as :func:`normalised_copy` does."""
        return normalised_copy(message)


_SERIALIZERS: Final[dict[str, Callable[[], MessageSerializer]]] = {
    "msgpack": MsgpackSerializer
}


def _make_serializer(value: object) -> MessageSerializer:
    if value is None:
        return MsgpackSerializer()
    if isinstance(value, MessageSerializer):
        return value
    if isinstance(value, str) and value in _SERIALIZERS:
        return _SERIALIZERS[value]()
    known = ", ".join(repr(k) for k in _SERIALIZERS)
    msg = f"serializer {value!r} is neither a MessageSerializer nor one of {known}"
    raise InvalidChannelLayerError(msg)


# --------------------------------------------------------------------------- patterns


def _compile_patterns(
    option: str, patterns: object, check: Callable[[str, object], _V]
) -> list[tuple[re.Pattern[str], _V]]:
    """Compile ``channel_capacity`` / ``channel_delivery`` into ``[(regex, value)]``."""
    if patterns is None:
        return []
    items: list[Any]
    if isinstance(patterns, Mapping):
        items = list(patterns.items())
    elif isinstance(patterns, Sequence) and not isinstance(patterns, str | bytes):
        items = list(patterns)
        for item in items:
            if not (isinstance(item, tuple) and len(item) == 2):
                msg = f"{option} entry {item!r} is not a (pattern, value) pair"
                raise InvalidChannelLayerError(msg)
    else:
        msg = f"{option} must be a mapping or a sequence of (pattern, value) pairs, not {type(patterns).__name__}"
        raise InvalidChannelLayerError(msg)
    compiled: list[tuple[re.Pattern[str], _V]] = []
    for pattern, value in items:
        if isinstance(pattern, str):
            regex = re.compile(fnmatch.translate(pattern))
        elif isinstance(pattern, re.Pattern) and isinstance(pattern.pattern, str):
            regex = pattern
        else:
            msg = f"{option} pattern {pattern!r} is neither a glob str nor a compiled str regex"
            raise InvalidChannelLayerError(msg)
        compiled.append((regex, check(f"{option}[{pattern!r}]", value)))
    return compiled


def _check_positive_int(name: str, value: object) -> int:
    if type(value) is not int or value < 1:
        msg = f"{name} is {value!r}, which is not an int >= 1"
        raise InvalidChannelLayerError(msg)
    return value


def _check_duration(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (0 < value < math.inf)
    ):
        msg = f"{name} is {value!r}, which is not a positive finite number of seconds"
        raise InvalidChannelLayerError(msg)
    return float(value)


def _check_delivery(name: str, value: object) -> Delivery:
    if value not in _DELIVERIES:
        msg = (
            f"{name} is {value!r}, which is not one of 'at-most-once', 'at-least-once'"
        )
        raise InvalidChannelLayerError(msg)
    return "at-most-once" if value == "at-most-once" else "at-least-once"


# --------------------------------------------------------------------------- copies


def _clone(value: Any) -> Any:
    """Deep-copy a decoded (normalised) message value: only dicts and lists are mutable."""
    t = type(value)
    if t is dict:
        return {k: _clone(v) for k, v in value.items()}
    if t is list:
        return [_clone(v) for v in value]
    return value


def _clone_deep(message: dict[str, Any]) -> dict[str, Any]:
    return {k: _clone(v) for k, v in message.items()}


def _cloner(message: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """How to give one more receiver its own copy of a decoded ``message``, cheaply.

    Valid for what the default (msgpack) serializer produces: nested values
    are dicts, lists and immutable scalars.
    """
    for value in message.values():
        t = type(value)
        if t is dict or t is list:
            return _clone_deep
    return dict.copy


# --------------------------------------------------------------------------- lowlevel


class _Event(Protocol):
    def set(self) -> None: ...
    def is_set(self) -> bool: ...
    async def wait(self) -> None: ...


class _Lowlevel(NamedTuple):
    checkpoint_if_cancelled: Callable[[], Awaitable[None]]
    cancel_shielded_checkpoint: Callable[[], Awaitable[None]]
    current_time: Callable[[], float]
    Event: Callable[[], _Event]
    # park() -> (wake, wait): awaiting ``wait`` blocks the calling task until
    # ``wake()`` (call it once) or a cancellation; an Event without the Event.
    park: Callable[[], tuple[Callable[[], object], Awaitable[None]]]


class _Waiter(Generic[_T]):
    """A receiver parked on a layer's buffer: ``item`` is filled in before ``wake()`` (called once)."""

    __slots__ = ("item", "wake")

    def __init__(self, wake: Callable[[], object]) -> None:
        self.item: _T | None = None
        self.wake = wake


def _park_on_event() -> tuple[Callable[[], object], Awaitable[None]]:
    event = anyio.Event()
    return event.set, event.wait()


_ANYIO_LOWLEVEL: Final = _Lowlevel(
    anyio.lowlevel.checkpoint_if_cancelled,
    anyio.lowlevel.cancel_shielded_checkpoint,
    anyio.current_time,
    anyio.Event,
    _park_on_event,
)
_trio_lowlevel: _Lowlevel | None = None


def _lowlevel() -> _Lowlevel:
    """The running backend's checkpoint, clock and event primitives, fetched in ~0.2 us.

    anyio's generic ``checkpoint_if_cancelled`` / ``cancel_shielded_checkpoint``
    / ``current_time`` / ``Event`` look the backend up on every call and wrap
    trio's objects in another layer: measured on trio, that costs about 3 us
    per layer operation, more than the operation itself. Under trio this returns
    trio's own functions (the same ones anyio calls, taken from the already
    imported module, so no trio import is added); under any other backend it
    returns anyio's. Semantics are identical either way. Trio sets sniffio's
    thread-local name for as long as it runs (also as a guest on an asyncio
    loop), the cheapest way to tell.
    """
    global _trio_lowlevel
    if _sniffio_thread.name != "trio":
        return _ANYIO_LOWLEVEL
    if _trio_lowlevel is None:
        trio: Any = sys.modules["trio"]
        current_task = trio.lowlevel.current_task
        reschedule = trio.lowlevel.reschedule
        wait_task_rescheduled = trio.lowlevel.wait_task_rescheduled
        succeeded = trio.lowlevel.Abort.SUCCEEDED

        class Parked:
            """One parked task: what trio.Event's wait and set do for it, without the Event."""

            __slots__ = ("aborted", "task")

            def __init__(self) -> None:
                self.task = current_task()
                self.aborted = False

            def wake(self) -> None:
                if not self.aborted:  # a cancelled task resumes by itself
                    reschedule(self.task)

            def abort(self, _: object) -> object:
                self.aborted = True
                return succeeded

        def park() -> tuple[Callable[[], object], Awaitable[None]]:
            parked = Parked()
            return parked.wake, wait_task_rescheduled(parked.abort)

        _trio_lowlevel = _Lowlevel(
            trio.lowlevel.checkpoint_if_cancelled,
            trio.lowlevel.cancel_shielded_checkpoint,
            trio.current_time,
            trio.Event,
            park,
        )
    return _trio_lowlevel


# --------------------------------------------------------------------------- the base class


@attrs.define
class _Counters:
    sent: int = 0
    received: int = 0
    dropped: int = 0
    expired: int = 0


class BaseChannelLayer(anyio.abc.AsyncResource):
    """The channel-layer API; subclass it to write a layer.

    A layer is an async resource. ``async with layer:`` opens it (starting any
    background tasks, which live inside the ``async with``) and closes it on
    exit; ``await layer.aclose()`` (or Channels' ``close()``) closes it. After
    closing, every operation raises :class:`anyio.ClosedResourceError`, and
    receivers already waiting are woken with it. Layers that need no
    background task (``requires_open = False``, e.g. the in-memory layer) may
    also be used without ``async with``, as in Channels.

    Every coroutine method is a checkpoint, including those that cannot block.

    Args:
        expiry: seconds a message may wait in a channel before it is dropped (counted as expired).
        group_expiry: seconds a group membership lasts after its latest ``group_add``.
        capacity: messages a channel may hold before ``send`` raises ``ChannelFull``.
        channel_capacity: per-channel capacities, as :data:`ChannelPatterns`; first match wins.
        channel_delivery: per-channel delivery (``"at-most-once"`` / ``"at-least-once"``) as
            :data:`ChannelPatterns`; everything else is at-most-once. A layer refuses a
            guarantee it cannot give (``supported_deliveries``).
        serializer: a :class:`MessageSerializer`, or the name of a built-in one (``"msgpack"``).
        clock: returns the current time in seconds; defaults to :func:`anyio.current_time`,
            so trio's ``MockClock`` drives expiry in tests.

    Raises:
        InvalidChannelLayerError: if an option is invalid, naming it and its value.
    """

    extensions: ClassVar[list[str]] = ["groups", "flush"]
    MAX_NAME_LENGTH: ClassVar[int] = MAX_NAME_LENGTH
    supported_deliveries: ClassVar[frozenset[Delivery]] = frozenset({"at-most-once"})
    requires_open: ClassVar[bool] = False
    """True for layers that must be opened with ``async with`` before use."""
    close_timeout: ClassVar[float] = 5.0
    """Seconds ``aclose()`` gives :meth:`_aclose` (shielded from cancellation) before cutting it short."""

    def __init__(
        self,
        *,
        expiry: float = 60,
        group_expiry: float = 86400,
        capacity: int = 100,
        channel_capacity: ChannelPatterns[int] | None = None,
        channel_delivery: ChannelPatterns[Delivery] | None = None,
        serializer: MessageSerializer | str | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.expiry = _check_duration("expiry", expiry)
        self.group_expiry = _check_duration("group_expiry", group_expiry)
        self.capacity = _check_positive_int("capacity", capacity)
        self._capacities = _compile_patterns(
            "channel_capacity", channel_capacity, _check_positive_int
        )
        self._deliveries = _compile_patterns(
            "channel_delivery", channel_delivery, _check_delivery
        )
        for regex, delivery in self._deliveries:
            if delivery not in self.supported_deliveries:
                supported = ", ".join(sorted(self.supported_deliveries))
                msg = f"{type(self).__name__} supports only {supported} delivery, but channel_delivery asks {delivery} for {regex.pattern!r}"
                raise InvalidChannelLayerError(msg)
        self.serializer = _make_serializer(serializer)
        given_clock: object = clock
        if given_clock is not None and not callable(given_clock):
            msg = f"clock is {clock!r}, which is not callable"
            raise InvalidChannelLayerError(msg)
        self._custom_clock: Callable[[], float] | None = clock
        self._counters = _Counters()
        self._entered = False
        self._closed = False
        self._exit_stack: contextlib.AsyncExitStack | None = None

    # ----------------------------------------------------------- configuration lookups

    def get_capacity(self, channel: str) -> int:
        """The capacity in force for ``channel``: the first matching pattern's, else ``capacity``."""
        for regex, capacity in self._capacities:
            if regex.match(channel):
                return capacity
        return self.capacity

    def get_delivery(self, channel: str) -> Delivery:
        """The delivery guarantee of ``channel`` (``"at-most-once"`` unless configured)."""
        for regex, delivery in self._deliveries:
            if regex.match(channel):
                return delivery
        return "at-most-once"

    def now(self) -> float:
        """The layer's clock (``clock`` option); must be called inside the event loop."""
        if self._custom_clock is not None:
            return self._custom_clock()
        return _lowlevel().current_time()

    # ----------------------------------------------------------- validation

    @staticmethod
    def require_valid_channel_name(name: object) -> str:
        """Return ``name`` if valid (see :mod:`trichannels.layers._names`), else ``InvalidChannelName``."""
        return require_valid_channel_name(name)

    @staticmethod
    def require_valid_group_name(name: object) -> str:
        """Return ``name`` if valid, else raise ``InvalidGroupName``."""
        return require_valid_group_name(name)

    @staticmethod
    def require_valid_message(message: object) -> Mapping[str, Any]:
        """Return ``message`` if it is a mapping with a non-empty str ``type``, else ``InvalidMessage``."""
        return require_valid_message(message)

    non_local_name = staticmethod(non_local_name)

    # ----------------------------------------------------------- lifecycle

    @property
    def closed(self) -> bool:
        """True once ``aclose()`` has started."""
        return self._closed

    def _check_open(self) -> None:
        """Raise unless operations are allowed now; call it first in every operation.

        Raises:
            anyio.ClosedResourceError: the layer was closed.
            InvalidChannelLayerError: ``requires_open`` and the layer was never opened.
        """
        if self._closed:
            msg = f"{type(self).__name__} is closed"
            raise anyio.ClosedResourceError(msg)
        if self.requires_open and not self._entered:
            msg = f"{type(self).__name__} is not open; use 'async with layer:' or trichannels.layers.open_channel_layers()"
            raise InvalidChannelLayerError(msg)

    @contextlib.asynccontextmanager
    async def _lifespan(self) -> AsyncIterator[None]:  # noqa: ASYNC911 - a hook: __aenter__ and aclose() checkpoint around it
        """Runs while the layer is open under ``async with``; override to own background tasks.

        Typical override::

            @contextlib.asynccontextmanager
            async def _lifespan(self):
                async with anyio.create_task_group() as tg:
                    await tg.start(self._reader)
                    yield
                    tg.cancel_scope.cancel()

        It is exited after :meth:`_aclose` has run.
        """
        yield  # noqa: ASYNC911 - no checkpoint in a no-op hook (see above)

    async def _aclose(self) -> None:
        """Release resources and wake waiting receivers; override in layers.

        Called once, by ``aclose()``, after ``closed`` became True, inside a
        cancel scope shielded from the caller's cancellation but with a
        deadline of ``close_timeout`` seconds; if cut short it must still leave
        the layer closed.
        """

    async def __aenter__(self) -> Self:
        """Open the layer (starting its background tasks, if any); blocks until they run."""
        if self._closed:
            msg = f"{type(self).__name__} is closed and cannot be reopened"
            raise anyio.ClosedResourceError(msg)
        if self._entered:
            msg = f"{type(self).__name__} is already open"
            raise RuntimeError(msg)
        await anyio.lowlevel.checkpoint()
        stack = contextlib.AsyncExitStack()
        try:
            await stack.enter_async_context(self._lifespan())
        except BaseException:
            await stack.aclose()
            raise
        self._exit_stack = stack
        self._entered = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        """Close the layer and stop its background tasks; a checkpoint."""
        stack, self._exit_stack = self._exit_stack, None
        if stack is None:
            await self.aclose()
            return
        # Exits _lifespan() after aclose(), even if aclose() raised. Not shielded:
        # aclose() already shielded (and bounded) the graceful part, and what is
        # left is stopping a task group, which must stay cancellable.
        async with stack:  # noqa: ASYNC102 - see above
            await self.aclose()

    async def aclose(self) -> None:
        """Close the layer; idempotent, always a checkpoint, closes even if cancelled.

        Waiting receivers are woken with :class:`anyio.ClosedResourceError`.
        """
        if not self._closed:
            self._closed = True
            # The graceful part runs shielded, bounded by close_timeout; a
            # cancellation of the caller is delivered by the checkpoint after it.
            with anyio.CancelScope(shield=True) as scope:
                scope.deadline = anyio.current_time() + self.close_timeout
                await self._aclose()
        await anyio.lowlevel.checkpoint()

    async def close(self) -> None:
        """Channels' name for :meth:`aclose`."""
        await self.aclose()

    # ----------------------------------------------------------- counters

    def record_dropped(self, n: int = 1) -> None:
        """Count ``n`` messages taken from the layer that could not be dispatched.

        The consumer core calls this for layer messages it received but could
        not hand to a handler (the instance stopped first), so that their loss
        shows in ``statistics().messages_dropped``.
        """
        if n < 0:
            msg = f"n is {n!r}, which is negative"
            raise ValueError(msg)
        self._counters.dropped += n

    def _make_statistics(
        self, *, channels: int, queued_messages: int, groups: int, members: int
    ) -> LayerStatistics:
        c = self._counters
        return LayerStatistics(
            channels=channels,
            queued_messages=queued_messages,
            groups=groups,
            members=members,
            messages_sent=c.sent,
            messages_received=c.received,
            messages_dropped=c.dropped,
            messages_expired=c.expired,
        )

    # ----------------------------------------------------------- the API

    @abc.abstractmethod
    async def send(self, channel: str, message: Message) -> None:
        """Queue ``message`` on ``channel``; never waits for room. A checkpoint.

        Raises:
            ChannelFull: the channel holds ``get_capacity(channel)`` messages already.
            InvalidChannelName: ``channel`` breaks the naming rules.
            InvalidMessage: ``message`` is malformed or cannot be serialised (the field is named).
            MessageTooLarge: the encoded message exceeds the layer's limit (out-of-process layers).
            anyio.ClosedResourceError: the layer is closed.
        """

    @abc.abstractmethod
    async def receive(self, channel: str) -> dict[str, Any]:
        """Wait for and return the next message on ``channel``. A checkpoint.

        Cancellation-safe: if the call is cancelled, no message was taken.
        Several receivers on one channel compete; each message goes to one.

        Raises:
            InvalidChannelName: ``channel`` breaks the naming rules.
            anyio.ClosedResourceError: the layer is or becomes closed.
        """

    @abc.abstractmethod
    async def new_channel(self, prefix: str = "specific.") -> str:
        """Return a new, unique process-specific channel name starting with ``prefix``. A checkpoint."""

    # Layers that can name a channel without awaiting set this and implement
    # _new_channel_now(); a consumer instance then names its channel only when the
    # name is first read (most HTTP instances never read it).
    _names_channels_now: ClassVar[bool] = False

    def _new_channel_now(self, prefix: str = "specific.") -> str:
        """:meth:`new_channel` without the checkpoint (event-loop thread only)."""
        raise NotImplementedError

    def _receive_nowait(self, channel: str) -> dict[str, Any] | None:
        """The next message already queued for this process on ``channel``, or None.

        Never waits (event-loop thread only). A consumer instance uses it at a
        disconnect to handle, within the grace period, the layer messages that
        arrived before it. Layers that cannot tell return None.
        """
        return None

    @abc.abstractmethod
    async def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group`` (idempotent; refreshes the membership's expiry). A checkpoint."""

    @abc.abstractmethod
    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``; nothing happens if it is not a member. A checkpoint."""

    @abc.abstractmethod
    async def group_send(self, group: str, message: Message) -> None:
        """Send a copy of ``message`` to every member of ``group``. A checkpoint.

        Never raises ``ChannelFull``: a full member's copy is dropped and counted
        in ``statistics().messages_dropped``. An unknown group is a no-op.
        """

    async def send_many(self, channel_messages: Iterable[tuple[str, Message]]) -> None:
        """Send each ``(channel, message)`` pair, in order (one round trip where the layer can).

        Every name and message is validated before anything is queued. A full
        channel does not stop the others: every message whose channel has room
        is queued, then ``ChannelFull`` is raised for the first full one. A
        checkpoint. Layers override this; the default calls :meth:`send`.
        """
        pairs = [
            (self.require_valid_channel_name(c), self.require_valid_message(m))
            for c, m in channel_messages
        ]
        for _, message in pairs:
            self.serializer.copy(message)
        await self._send_each(pairs)

    async def _send_each(self, pairs: Sequence[tuple[str, Message]]) -> None:  # noqa: ASYNC910 - each send() checkpoints; no pairs: below
        first_full: ChannelFull | None = None
        for channel, message in pairs:
            try:
                await self.send(channel, message)
            except ChannelFull as exc:
                if first_full is None:
                    first_full = exc
        if first_full is not None:
            raise first_full
        if not pairs:
            self._check_open()
            await anyio.lowlevel.checkpoint()

    async def group_send_many(  # noqa: ASYNC910 - each group_send() checkpoints; no pairs: below
        self, group_messages: Iterable[tuple[str, Message]]
    ) -> None:
        """``group_send`` each ``(group, message)`` pair, in order; validated up front. A checkpoint.

        Layers override this; the default calls :meth:`group_send`.
        """
        pairs = [
            (self.require_valid_group_name(g), self.require_valid_message(m))
            for g, m in group_messages
        ]
        for _, message in pairs:
            self.serializer.copy(message)
        for group, message in pairs:
            await self.group_send(group, message)
        if not pairs:
            self._check_open()
            await anyio.lowlevel.checkpoint()

    @abc.abstractmethod
    async def flush(self) -> None:
        """Drop every queued message and every group (the ``flush`` extension). A checkpoint."""

    @abc.abstractmethod
    def statistics(self) -> LayerStatistics:
        """Return a snapshot of the layer's state and counters; does not block."""

    def receive_delivery(
        self, channel: str
    ) -> contextlib.AbstractAsyncContextManager[dict[str, Any]]:
        """``async with layer.receive_delivery(channel) as message:`` — receive for workers.

        On at-least-once channels (``channel_delivery``) the message is
        acknowledged when the block exits cleanly, and is redelivered later if
        the block raises, is cancelled or the process dies. On at-most-once
        channels (the default) this is just :meth:`receive`: the message is
        gone once taken, whatever the block does. Entering is a checkpoint and
        cancellation-safe like ``receive``.
        """
        return self._receive_at_most_once(channel)

    @contextlib.asynccontextmanager
    async def _receive_at_most_once(  # noqa: ASYNC911 - a context manager: entering checkpoints, exiting must not
        self, channel: str
    ) -> AsyncIterator[dict[str, Any]]:
        yield await self.receive(channel)
