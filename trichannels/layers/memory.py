"""``InMemoryChannelLayer``: the default layer, for one process (``memory://``).

Each channel is a FIFO ``deque`` of ``(expires_at, message, cloner)`` items
plus a FIFO of parked receivers, each woken by its own :class:`anyio.Event`.
There is no background task: expiry is lazy (a message is checked when it
reaches the head of its queue, and a heap of channel heads and memberships is
swept, in O(1) when nothing is due, at the start of every operation).

On asyncio, ``send``, ``group_send`` and a ``receive`` that finds a message
queued checkpoint with one ``asyncio.sleep(0)`` (anyio's own ``checkpoint()``
there) *before* they touch any state, then finish without awaiting again:
anyio's ``cancel_shielded_checkpoint`` costs a shielded cancel scope on every
call there, and could not stop a plain ``Task.cancel()`` anyway. Under trio
they keep trio's own order (cancel check, work, shielded schedule point).

Why not one anyio memory object stream per channel: a stream cannot drop an
expired item from its middle or report a channel's depth without a
receiver, every stream pair must be closed (or it warns), and on asyncio a
receiver cancelled between being handed an item and resuming loses that item.
Here a receiver cancelled in that window gives the item back (to the next
parked receiver, or to the front of the queue), so ``receive`` is
cancellation-safe on every backend: if it raises, it took nothing.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import typing
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from functools import partial
from typing import Any, Final, TypeAlias

import anyio
from sniffio import thread_local as _sniffio_thread

from trichannels.exceptions import ChannelFull
from trichannels.layers._names import (
    new_channel_name,
    require_valid_channel_name,
    require_valid_group_name,
)
from trichannels.layers.base import (
    BaseChannelLayer,
    ChannelPatterns,
    Delivery,
    LayerStatistics,
    MessageSerializer,
    MsgpackSerializer,
    _cloner,
    _Lowlevel,
    _lowlevel,
    _Waiter,
    require_valid_message,
)
from trichannels.types import Message

__all__ = ["InMemoryChannelLayer"]

_Cloner: TypeAlias = Callable[[dict[str, Any]], dict[str, Any]]
_Item: TypeAlias = tuple[float, dict[str, Any], _Cloner | None]
"""``(expires_at, message, cloner)``; ``cloner`` is None when the message is the receiver's own."""


def _wake_future(future: asyncio.Future[None]) -> None:
    # A future cancelled with its task is done already: that task gives the item back.
    if not future.done():
        future.set_result(None)


def _loop_or_lowlevel() -> asyncio.AbstractEventLoop | _Lowlevel:
    """The running asyncio loop; else the running backend's primitives (see ``_lowlevel``).

    Trio sets sniffio's thread-local name for as long as it runs (also as a
    guest on an asyncio loop), so this agrees with anyio's own choice of backend.
    """
    if _sniffio_thread.name is None:
        loop = asyncio._get_running_loop()
        if loop is not None:
            return loop
    return _lowlevel()


_CLOSED: Final[_Item] = (0.0, {}, None)
"""Handed to parked receivers by ``aclose()``."""


class _Channel:
    __slots__ = ("capacity", "name", "queue", "waiters")

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self.capacity = capacity
        self.queue: deque[_Item] = deque()
        self.waiters: deque[_Waiter[_Item]] = deque()


@typing.final
class InMemoryChannelLayer(BaseChannelLayer):
    """A channel layer inside one process; the default (``memory://``).

    Messages are validated and deep-copied at ``send`` exactly as they would
    come back from the wire (see :class:`~trichannels.layers.base.MsgpackSerializer`),
    so an unserialisable payload fails at the sender and the receiver can
    never mutate the sender's object. ``group_send`` copies once and gives
    each receiver its own clone when it receives.

    Behaviour, beyond :class:`~trichannels.layers.base.BaseChannelLayer`:

    - ``receive`` is cancellation-safe on every anyio backend; several
      receivers on one channel are served first come, first served.
    - A message expires ``expiry`` seconds after ``send`` (it is never
      delivered at or after that instant) and is then counted in
      ``messages_expired``; when a message expires on a channel, that
      channel is also removed from every group (as in Channels).
    - A membership lasts until ``group_expiry`` seconds after its latest
      ``group_add``.
    - A channel with nothing queued and no parked receiver is forgotten, so
      many ``new_channel()`` calls do not grow memory.
    - Only at-most-once delivery; process-specific (``!``) channels are
      ordinary channels here, each with its own capacity.
    - No background task: usable without ``async with``, and ``aclose()``
      wakes parked receivers with :class:`anyio.ClosedResourceError`.
      ``statistics()`` and ``record_dropped()`` still work after closing.
    """

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
        super().__init__(
            expiry=expiry,
            group_expiry=group_expiry,
            capacity=capacity,
            channel_capacity=channel_capacity,
            channel_delivery=channel_delivery,
            serializer=serializer,
            clock=clock,
        )
        self._channels: dict[str, _Channel] = {}
        self._groups: dict[str, dict[str, float]] = {}  # group -> {channel: joined_at}
        self._member_of: dict[str, set[str]] = {}  # channel -> groups
        self._queued = 0
        self._members = 0
        # Lazy expiry: (due, channel) for channels whose head may expire, at most one
        # entry per name; (due, group, channel) for memberships; both swept when due.
        self._heap: list[tuple[float, str]] = []
        self._in_heap: set[str] = set()
        self._group_heap: list[tuple[float, str, str]] = []
        self._next_due = math.inf
        self._fast_copy = type(self.serializer) is MsgpackSerializer

    # ------------------------------------------------------------------ internals

    def _get_channel(self, name: str) -> _Channel:
        ch = self._channels.get(name)
        if ch is None:
            ch = self._channels[name] = _Channel(name, self.get_capacity(name))
        return ch

    def _forget_if_idle(self, ch: _Channel) -> None:
        if not ch.queue and not ch.waiters and self._channels.get(ch.name) is ch:
            del self._channels[ch.name]

    def _schedule(self, name: str, due: float) -> None:
        """Make sure the sweep looks at channel ``name`` by ``due``."""
        if name not in self._in_heap:
            self._in_heap.add(name)
            heapq.heappush(self._heap, (due, name))
            if due < self._next_due:
                self._next_due = due

    def _put(self, ch: _Channel, item: _Item) -> None:
        """Hand ``item`` to a parked receiver or queue it; ``ChannelFull`` if neither."""
        if ch.waiters:
            waiter = ch.waiters.popleft()
            waiter.item = item
            waiter.wake()
        elif len(ch.queue) >= ch.capacity:
            raise ChannelFull(ch.name, ch.capacity)
        else:
            if not ch.queue:
                self._schedule(ch.name, item[0])
            ch.queue.append(item)
            self._queued += 1
        self._counters.sent += 1

    def _give_back(self, name: str, item: _Item) -> None:
        """Return an item a cancelled receiver was handed, keeping it first in line."""
        ch = self._get_channel(name)
        if ch.waiters:
            waiter = ch.waiters.popleft()
            waiter.item = item
            waiter.wake()
            return
        self._schedule(name, item[0])
        ch.queue.appendleft(item)
        self._queued += 1

    def _expire_head(self, ch: _Channel, now: float) -> None:
        """Drop expired messages at the head of ``ch``; on any, leave all groups."""
        queue = ch.queue
        expired = 0
        while queue and queue[0][0] <= now:
            queue.popleft()
            expired += 1
        if expired:
            self._queued -= expired
            self._counters.expired += expired
            for group in self._member_of.pop(ch.name, ()):
                self._remove_member(group, ch.name, forget=False)

    def _remove_member(self, group: str, channel: str, *, forget: bool = True) -> None:
        members = self._groups.get(group)
        if members is None or members.pop(channel, None) is None:
            return
        self._members -= 1
        if not members:
            del self._groups[group]
        if forget:
            groups = self._member_of.get(channel)
            if groups is not None:
                groups.discard(group)
                if not groups:
                    del self._member_of[channel]

    def _open_now(self, clock: Callable[[], float]) -> float:
        """Raise if closed; return the time (``clock``'s, or the injected one) after expiring what is due."""
        if self._closed:
            self._check_open()
        now = clock() if self._custom_clock is None else self._custom_clock()
        if now >= self._next_due:
            self._sweep(now)
        return now

    def _sweep(self, now: float) -> None:
        """Expire what is due: channel heads and memberships; called only when something is."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, name = heapq.heappop(heap)
            ch = self._channels.get(name)
            if ch is not None:
                self._expire_head(ch, now)
                if ch.queue:  # re-arm for the new head
                    heapq.heappush(heap, (ch.queue[0][0], name))
                    continue
                self._forget_if_idle(ch)
            self._in_heap.discard(name)
        gheap = self._group_heap
        while gheap and gheap[0][0] <= now:
            _, group, channel = heapq.heappop(gheap)
            joined = self._groups.get(group, {}).get(channel)
            if joined is None:
                continue
            due = joined + self.group_expiry
            if due <= now:
                self._remove_member(group, channel)
            else:
                heapq.heappush(gheap, (due, group, channel))
        self._next_due = min(
            heap[0][0] if heap else math.inf, gheap[0][0] if gheap else math.inf
        )

    def _clear_schedule(self) -> None:
        self._heap.clear()
        self._in_heap.clear()
        self._group_heap.clear()
        self._next_due = math.inf

    def _copy(self, message: Mapping[str, Any]) -> dict[str, Any]:
        return self.serializer.copy(require_valid_message(message))

    def _shared(self, message: dict[str, Any]) -> tuple[dict[str, Any], _Cloner | None]:
        """Prepare one copy for many receivers: each gets its own clone on receipt."""
        if not self._fast_copy:
            return message, self.serializer.copy
        return message, _cloner(message)

    # ------------------------------------------------------------------ API

    async def send(self, channel: str, message: Message) -> None:
        """Queue ``message`` on ``channel``, or hand it to a parked receiver. A checkpoint.

        Raises:
            ChannelFull: the channel already holds its capacity.
            InvalidChannelName: ``channel`` breaks the naming rules.
            InvalidMessage: ``message`` is malformed or not serialisable (the field is named).
            anyio.ClosedResourceError: the layer is closed.
        """
        require_valid_channel_name(channel)
        copy = self._copy(message)
        ll = _loop_or_lowlevel()
        if isinstance(ll, _Lowlevel):
            await ll.checkpoint_if_cancelled()
            now = self._open_now(ll.current_time)
        else:  # asyncio: ``ll`` is the running loop; checkpoint before queueing
            await asyncio.sleep(0)
            now = self._open_now(ll.time)
        ch = self._channels.get(channel)
        if ch is None:
            ch = self._channels[channel] = _Channel(channel, self.get_capacity(channel))
        try:
            self._put(ch, (now + self.expiry, copy, None))
        except ChannelFull:
            if isinstance(ll, _Lowlevel):
                # Cannot raise Cancelled, so ChannelFull is never replaced.
                await ll.cancel_shielded_checkpoint()  # noqa: ASYNC120 - shielded
            raise
        if isinstance(ll, _Lowlevel):
            await ll.cancel_shielded_checkpoint()

    async def receive(self, channel: str) -> dict[str, Any]:
        """Wait for the next message on ``channel``; cancellation-safe. A checkpoint.

        Raises:
            InvalidChannelName: ``channel`` breaks the naming rules.
            anyio.ClosedResourceError: the layer is closed, or closes while waiting.
        """
        require_valid_channel_name(channel)
        ll = _loop_or_lowlevel()
        ch = self._channels.get(channel)
        # Nothing queued: the wait below is the checkpoint (a cancelled caller
        # is cancelled there, and leaves nothing behind).
        if isinstance(ll, _Lowlevel):
            if ch is not None and ch.queue:
                await ll.checkpoint_if_cancelled()
            now = self._open_now(ll.current_time)
        else:  # asyncio: ``ll`` is the running loop
            if ch is not None and ch.queue:
                # Something is queued: checkpoint before taking it (and take it
                # without awaiting again), so a cancellation can never lose it.
                # If it is gone when this task resumes, the wait below follows.
                await asyncio.sleep(0)
            now = self._open_now(ll.time)
        ch = self._channels.get(channel)
        if ch is not None:
            queue = ch.queue
            if queue and queue[0][0] <= now:
                self._expire_head(ch, now)
            if queue:
                _, message, cloner = queue.popleft()
                self._queued -= 1
                self._counters.received += 1
                if not queue and not ch.waiters:
                    del self._channels[channel]
                if isinstance(ll, _Lowlevel):
                    await ll.cancel_shielded_checkpoint()
                # Reached only if something was queued at the top, so a checkpoint
                # ran above (nothing is awaited between the two looks).
                return message if cloner is None else cloner(message)  # noqa: ASYNC910
        else:
            ch = self._channels[channel] = _Channel(channel, self.get_capacity(channel))
        waiter: _Waiter[_Item]
        wait: Awaitable[Any]
        if isinstance(ll, _Lowlevel):
            wake, wait = ll.park()
            waiter = _Waiter(wake)
        else:
            future: asyncio.Future[None] = ll.create_future()
            waiter = _Waiter(partial(_wake_future, future))
            wait = future
        ch.waiters.append(waiter)
        try:
            await wait
        except BaseException:
            item = waiter.item
            if item is None:
                try:
                    ch.waiters.remove(waiter)
                except (
                    ValueError
                ):  # pragma: no cover - only a handed waiter leaves the deque
                    pass
                self._forget_if_idle(ch)
            elif item is not _CLOSED:
                # Handed a message, then cancelled before resuming (asyncio): give it back.
                self._give_back(channel, item)
            raise
        item = waiter.item
        self._forget_if_idle(ch)
        if item is _CLOSED or item is None:
            msg = "InMemoryChannelLayer was closed while receive() waited"
            raise anyio.ClosedResourceError(msg)
        self._counters.received += 1
        _, message, cloner = item
        return message if cloner is None else cloner(message)

    async def new_channel(self, prefix: str = "specific.") -> str:
        """Return a new unique ``"{prefix}.inmemory!{token}"`` channel name. A checkpoint."""
        ll = _lowlevel()
        await ll.checkpoint_if_cancelled()
        name = self._new_channel_now(prefix)
        await ll.cancel_shielded_checkpoint()
        return name

    _names_channels_now = True

    def _receive_nowait(self, channel: str) -> dict[str, Any] | None:
        if self._closed:
            return None
        ch = self._channels.get(channel)
        if ch is None or not ch.queue:
            return None
        queue = ch.queue
        now = anyio.current_time()
        if queue[0][0] <= now:
            self._expire_head(ch, now)
        if not queue:
            return None
        _, message, cloner = queue.popleft()
        self._queued -= 1
        self._counters.received += 1
        if not queue and not ch.waiters:
            del self._channels[channel]
        return message if cloner is None else cloner(message)

    def _new_channel_now(self, prefix: str = "specific.") -> str:
        if self._closed:
            self._check_open()
        name = new_channel_name(prefix, "inmemory")
        while name in self._channels:  # pragma: no cover - 96 random bits
            name = new_channel_name(prefix, "inmemory")
        return name

    async def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group``, or refresh its membership. A checkpoint."""
        require_valid_group_name(group)
        require_valid_channel_name(channel)
        ll = _lowlevel()
        await ll.checkpoint_if_cancelled()
        now = self._open_now(ll.current_time)
        members = self._groups.setdefault(group, {})
        if channel not in members:
            self._members += 1
            self._member_of.setdefault(channel, set()).add(group)
            due = now + self.group_expiry
            heapq.heappush(self._group_heap, (due, group, channel))
            if due < self._next_due:
                self._next_due = due
        members[channel] = now
        await ll.cancel_shielded_checkpoint()

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``; a no-op if it is not a member. A checkpoint."""
        require_valid_group_name(group)
        require_valid_channel_name(channel)
        ll = _lowlevel()
        await ll.checkpoint_if_cancelled()
        if self._closed:
            self._check_open()
        self._remove_member(group, channel)
        await ll.cancel_shielded_checkpoint()

    def _group_put(
        self, group: str, message: dict[str, Any], cloner: _Cloner | None, now: float
    ) -> None:
        members = self._groups.get(group)
        if not members:
            return
        item: _Item = (now + self.expiry, message, cloner)
        cutoff = now - self.group_expiry
        stale: list[str] = []
        dropped = 0
        channels = self._channels
        for channel, joined in members.items():
            if joined <= cutoff:
                stale.append(channel)
                continue
            ch = channels.get(channel)
            if ch is None:
                ch = self._get_channel(channel)
            try:
                self._put(ch, item)
            except ChannelFull:
                dropped += 1
        for channel in stale:
            self._remove_member(group, channel)
        self._counters.dropped += dropped

    async def group_send(self, group: str, message: Message) -> None:
        """Send to every live member of ``group``; full members' copies are dropped and counted.

        A checkpoint. An unknown or empty group is a no-op.

        Raises:
            InvalidGroupName: ``group`` breaks the naming rules.
            InvalidMessage: ``message`` is malformed or not serialisable (the field is named).
            anyio.ClosedResourceError: the layer is closed.
        """
        require_valid_group_name(group)
        copy, cloner = self._shared(self._copy(message))
        ll = _loop_or_lowlevel()
        if isinstance(ll, _Lowlevel):
            await ll.checkpoint_if_cancelled()
            now = self._open_now(ll.current_time)
        else:  # asyncio: ``ll`` is the running loop; checkpoint before queueing
            await asyncio.sleep(0)
            now = self._open_now(ll.time)
        self._group_put(group, copy, cloner, now)
        if isinstance(ll, _Lowlevel):
            await ll.cancel_shielded_checkpoint()

    async def send_many(self, channel_messages: Iterable[tuple[str, Message]]) -> None:
        """Send each ``(channel, message)`` pair in order; one checkpoint for all.

        Everything is validated first (nothing is queued if any name or
        message is bad). Every message whose channel has room is queued; then
        ``ChannelFull`` is raised for the first channel that had none.
        """
        pairs = [
            (require_valid_channel_name(channel), self._copy(message))
            for channel, message in channel_messages
        ]
        ll = _lowlevel()
        await ll.checkpoint_if_cancelled()
        now = self._open_now(ll.current_time)
        expires = now + self.expiry
        first_full: ChannelFull | None = None
        for channel, copy in pairs:
            ch = self._get_channel(channel)
            try:
                self._put(ch, (expires, copy, None))
            except ChannelFull as exc:
                first_full = first_full or exc
        await ll.cancel_shielded_checkpoint()
        if first_full is not None:
            raise first_full

    async def group_send_many(
        self, group_messages: Iterable[tuple[str, Message]]
    ) -> None:
        """``group_send`` each ``(group, message)`` pair in order; validated first; one checkpoint."""
        prepared = [
            (require_valid_group_name(group), *self._shared(self._copy(message)))
            for group, message in group_messages
        ]
        ll = _lowlevel()
        await ll.checkpoint_if_cancelled()
        now = self._open_now(ll.current_time)
        for group, copy, cloner in prepared:
            self._group_put(group, copy, cloner, now)
        await ll.cancel_shielded_checkpoint()

    async def flush(self) -> None:
        """Drop every queued message and every group. A checkpoint.

        Receivers already waiting keep waiting, on the now-empty channels.
        """
        ll = _lowlevel()
        await ll.checkpoint_if_cancelled()
        if self._closed:
            self._check_open()
        for ch in list(self._channels.values()):
            ch.queue.clear()
            if not ch.waiters:
                del self._channels[ch.name]
        self._clear_schedule()
        self._groups.clear()
        self._member_of.clear()
        self._queued = 0
        self._members = 0
        await ll.cancel_shielded_checkpoint()

    def statistics(self) -> LayerStatistics:
        """Snapshot of channels, queued messages, groups, members and counters; does not block.

        Expired messages count as queued until an operation notices them.
        """
        return self._make_statistics(
            channels=len(self._channels),
            queued_messages=self._queued,
            groups=len(self._groups),
            members=self._members,
        )

    async def _aclose(self) -> None:  # noqa: ASYNC910 - a hook: aclose() checkpoints after it
        for ch in self._channels.values():
            while ch.waiters:
                waiter = ch.waiters.popleft()
                waiter.item = _CLOSED
                waiter.wake()
        self._channels.clear()
        self._clear_schedule()
        self._groups.clear()
        self._member_of.clear()
        self._queued = 0
        self._members = 0
