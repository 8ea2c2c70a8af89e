"""How the Redis layer fans an inbox entry out to the ``!`` channels of its process.

Against a real Redis server (``REDIS_URL``), like ``test_layers_redis_link.py``.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import trio
import trio.testing

from tests.test_layers_redis_link import (
    MakeLayer,
    _HalfWriter,
    make_layer,
    prefix,
    redis,
)
from trichannels.exceptions import ChannelFull
from trichannels.layers.base import MessageSerializer, MsgpackSerializer
from trichannels.layers.redis import RedisChannelLayer, _ChainedReply, _Link

__all__ = ["make_layer", "prefix", "redis"]

pytestmark = pytest.mark.redis

NESTED: dict[str, Any] = {
    "type": "test.nested",
    "payload": {"list": [1, {"deep": [2, 3]}], "text": "x"},
    "items": [[1], {"a": "b"}],
    "raw": b"bytes",
}
FLAT: dict[str, Any] = {"type": "test.flat", "text": "hello", "n": 3}


class _CountingSerializer(MsgpackSerializer):
    """msgpack, but not the default class: the layer decodes for each receiver."""

    name = "counting"

    def __init__(self) -> None:
        self.loads_calls = 0

    def loads(self, data: bytes) -> dict[str, Any]:
        self.loads_calls += 1
        return super().loads(data)


def _mutate(message: dict[str, Any]) -> None:
    """Change every mutable part of a received message, and the message itself."""
    for value in list(message.values()):
        if isinstance(value, dict):
            value.clear()
            value["changed"] = True
        elif isinstance(value, list):
            if value and isinstance(value[0], list):
                value[0].append("changed")
            value.append("changed")
    message["type"] = "changed"
    message["added"] = 1


async def _group_members_each_own_their_copy(
    make_layer: MakeLayer, serializer: MessageSerializer | None, *, peer: bool
) -> None:
    members = 5
    with trio.fail_after(10):
        async with (
            make_layer(serializer=serializer) as sender,
            make_layer(serializer=serializer) as receiver,
        ):
            if not peer:
                receiver = sender
            channels = [await receiver.new_channel() for _ in range(members)]
            for channel in channels:
                await receiver.group_add("fan", channel)
            for sent in (NESTED, FLAT):
                await sender.group_send("fan", sent)
                got = []
                for channel in channels:
                    message = await receiver.receive(channel)
                    assert message == sent
                    got.append(message)
                    _mutate(message)  # before the next member receives its copy
                assert len({id(m) for m in got}) == members


@pytest.mark.parametrize("peer", [True, False], ids=["through-inbox", "local"])
async def test_group_members_each_own_their_copy(
    make_layer: MakeLayer, peer: bool
) -> None:
    """One group_send reaches 5 members of one process (one inbox entry): a member
    that changes its message, nested lists and dicts included, changes no other's."""
    await _group_members_each_own_their_copy(make_layer, None, peer=peer)


@pytest.mark.parametrize("peer", [True, False], ids=["through-inbox", "local"])
async def test_custom_serializer_decodes_for_each_member(
    make_layer: MakeLayer, peer: bool
) -> None:
    """With a serializer other than the default, each member's copy is its own decoding."""
    serializer = _CountingSerializer()
    await _group_members_each_own_their_copy(make_layer, serializer, peer=peer)
    assert serializer.loads_calls == 2 * 5


async def test_one_inbox_entry_for_many_targets_is_decoded_once(
    make_layer: MakeLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the default serializer, the 5 members' copies come from one decoding."""
    calls = 0
    original = MsgpackSerializer.loads

    def loads(self: MsgpackSerializer, data: bytes) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return original(self, data)

    with trio.fail_after(10):
        async with make_layer() as sender, make_layer() as receiver:
            channels = [await receiver.new_channel() for _ in range(5)]
            for channel in channels:
                await receiver.group_add("fan", channel)
            monkeypatch.setattr(MsgpackSerializer, "loads", loads)
            await sender.group_send("fan", copy.deepcopy(NESTED))
            for channel in channels:
                assert await receiver.receive(channel) == NESTED
            monkeypatch.undo()
    assert calls == 1


async def _buffered(layer: RedisChannelLayer, count: int) -> None:
    """Wait until ``count`` messages sit in the layer's local buffers."""
    while layer.statistics().queued_messages < count:  # noqa: ASYNC110 - no event
        await trio.sleep(0.005)


@pytest.mark.parametrize("peer", [True, False], ids=["through-inbox", "local"])
async def test_cancelled_receive_leaves_buffered_messages(
    make_layer: MakeLayer, peer: bool
) -> None:
    """A receive cancelled before it starts takes nothing from a non-empty buffer."""
    with trio.fail_after(10):
        async with make_layer() as sender, make_layer() as receiver:
            if not peer:
                receiver = sender
            channel = await receiver.new_channel()
            for n in range(2):
                await sender.send(channel, {"type": "test.n", "n": n})
            await _buffered(receiver, 2)
            with trio.CancelScope() as scope:
                scope.cancel()
                await receiver.receive(channel)
            assert scope.cancelled_caught
            assert receiver.statistics().queued_messages == 2
            assert (await receiver.receive(channel))["n"] == 0
            assert (await receiver.receive(channel))["n"] == 1
            assert receiver.statistics().messages_received == 2


async def test_parked_receive_cancelled_then_handed_a_message_gives_it_back(
    make_layer: MakeLayer, nursery: trio.Nursery
) -> None:
    """Invariant: a receiver parked on a ``!`` channel whose cancellation was delivered
    but which has not run yet is not woken by a message arriving meanwhile: the message
    goes back to the front of the buffer, and the next receive gets it, in order."""
    with trio.fail_after(10):
        async with make_layer() as layer:
            channel = await layer.new_channel()
            outcome: list[str] = []
            scope = trio.CancelScope()

            async def receiver() -> None:
                with scope:
                    await layer.receive(channel)
                    outcome.append("received")  # pragma: no cover - must not happen
                outcome.append("cancelled")

            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()  # delivered now; the receiver has not resumed yet
            await layer.send(channel, {"type": "test.n", "n": 0})  # handed to it
            await layer.send(channel, {"type": "test.n", "n": 1})
            await trio.testing.wait_all_tasks_blocked()
            assert outcome == ["cancelled"]
            assert (await layer.receive(channel))["n"] == 0
            assert (await layer.receive(channel))["n"] == 1


@pytest.mark.parametrize("peer", [True, False], ids=["through-inbox", "local"])
async def test_expired_buffered_messages_are_skipped(
    make_layer: MakeLayer, peer: bool
) -> None:
    """Buffered messages past their deadline (the ``clock`` option) are counted, not received."""
    now = [1000.0]
    with trio.fail_after(10):
        async with (
            make_layer() as sender,
            make_layer(clock=lambda: now[0], expiry=5) as receiver,
        ):
            if not peer:
                receiver = sender = receiver
            channel = await receiver.new_channel()
            for n in range(2):
                await sender.send(channel, {"type": "test.n", "n": n})
            await _buffered(receiver, 2)
            now[0] += 10
            await sender.send(channel, {"type": "test.n", "n": 2})
            await _buffered(receiver, 3)
            assert (await receiver.receive(channel))["n"] == 2
            stats = receiver.statistics()
            assert (stats.messages_expired, stats.messages_received) == (2, 1)
            assert stats.queued_messages == 0


async def test_draining_a_full_buffer_unmarks_it(make_layer: MakeLayer) -> None:
    """A peer's buffer that filled is marked full (sends raise ChannelFull) until
    receives drain it to half its capacity."""
    with trio.fail_after(10):
        async with (
            make_layer() as sender,
            make_layer(channel_capacity={"*": 4}) as receiver,
        ):
            channel = await receiver.new_channel()
            for n in range(4):
                await sender.send(channel, {"type": "test.n", "n": n})
            await _buffered(receiver, 4)
            while True:  # the owner marks it full one round trip later
                try:
                    await sender.send(channel, {"type": "test.over"})
                except ChannelFull:
                    break
                await trio.sleep(0.005)
            got = [(await receiver.receive(channel))["n"] for _ in range(2)]
            assert got == [0, 1]
            while True:  # unmarked one round trip later
                try:
                    await sender.send(channel, {"type": "test.n", "n": 4})
                except ChannelFull:
                    await trio.sleep(0.005)
                else:
                    break
            got = []
            while len(got) < 3:
                message = await receiver.receive(channel)
                if message["type"] == "test.n":  # a test.over may have got in
                    got.append(message["n"])
            assert got == [2, 3, 4]


def _inbox_link(layer: RedisChannelLayer) -> _Link:
    """The link of ``layer``'s inbox reader: the one with a chained read pending."""
    for link in layer._links:
        conn = link._conn
        if conn is not None and any(
            isinstance(r, _ChainedReply) for r in conn._requests
        ):
            return link
    raise AssertionError("no inbox read is pending")


async def test_inbox_reads_chain_in_the_connections_reader_task(
    make_layer: MakeLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under trio the inbox reader task issues one read: every later XREAD is written by
    the connection's reader task as it routes the previous reply."""
    calls: list[Any] = []
    original = _Link.call

    async def call(self: _Link, *command: Any, **options: Any) -> Any:
        if options.get("then") is not None:
            calls.append(command[0])
        return await original(self, *command, **options)

    monkeypatch.setattr(_Link, "call", call)
    with trio.fail_after(10):
        async with make_layer() as sender, make_layer() as receiver:
            channel = await receiver.new_channel()
            for n in range(30):
                await sender.send(channel, {"type": "test.n", "n": n})
                assert (await receiver.receive(channel))["n"] == n
            stats = receiver.redis_statistics()
    # One chained read per instance (sender and receiver each have an inbox).
    assert calls == [b"XREAD", b"XREAD"]
    assert stats.reconnects == 0


async def test_inbox_read_written_in_part_reconnects_and_loses_nothing(
    make_layer: MakeLayer,
) -> None:
    """The reader task wrote half of the next XREAD: the connection is dropped, the inbox
    reader reconnects and reads on from its cursor, so every message arrives, in order."""
    with trio.fail_after(10):
        async with make_layer() as sender, make_layer() as receiver:
            channel = await receiver.new_channel()
            await sender.send(channel, {"type": "test.n", "n": -1})
            assert (await receiver.receive(channel))["n"] == -1
            link = _inbox_link(receiver)
            first = link._conn
            link._sock = _HalfWriter(link._sock)  # type: ignore[assignment]
            for n in range(20):
                await sender.send(channel, {"type": "test.n", "n": n})
            got = [(await receiver.receive(channel))["n"] for _ in range(20)]
            assert got == list(range(20))
            assert receiver.redis_statistics().reconnects == 1
            assert _inbox_link(receiver)._conn is not first
