"""Tests for trichannels.layers.memory.InMemoryChannelLayer and the shared base (validation, serializer)."""

from __future__ import annotations

import enum
import json
import random
import re
from collections.abc import Mapping
from typing import Any

import anyio
import msgpack
import pytest
import trio
import trio.testing
from hypothesis import given, settings, strategies as st

from trichannels.exceptions import (
    ChannelFull,
    InvalidChannelLayerError,
    InvalidChannelName,
    InvalidGroupName,
    InvalidMessage,
)
from trichannels.layers.base import (
    LayerStatistics,
    MessageSerializer,
    MsgpackSerializer,
    normalised_copy,
)
from trichannels.layers.memory import InMemoryChannelLayer
from trichannels.testing import check_channel_layer


@pytest.fixture
def layer() -> InMemoryChannelLayer:
    return InMemoryChannelLayer()


def _nonzero(s: LayerStatistics) -> dict[str, int]:
    fields = (
        "channels",
        "queued_messages",
        "groups",
        "members",
        "messages_sent",
        "messages_received",
        "messages_dropped",
        "messages_expired",
    )
    return {f: getattr(s, f) for f in fields if getattr(s, f)}


# -- the conformance battery -------------------------------------------------------


@pytest.mark.slow
async def test_battery_memory() -> None:
    """The in-memory layer passes every check of the conformance battery, none skipped."""
    report = await check_channel_layer(InMemoryChannelLayer)
    assert report.skipped == ()
    assert len(report.passed) == 16


@pytest.mark.slow
def test_battery_memory_neutral(backend: str) -> None:
    """The battery passes on asyncio as well as trio (the library is backend-neutral)."""

    async def body() -> None:
        report = await check_channel_layer(InMemoryChannelLayer)
        assert report.skipped == ()

    anyio.run(body, backend=backend)


# -- basics ------------------------------------------------------------------------


async def test_send_receive_and_statistics(layer: InMemoryChannelLayer) -> None:
    """A message sent is received once; counters and idle-channel cleanup follow."""
    await layer.send("a", {"type": "x", "n": 1})
    assert _nonzero(layer.statistics()) == {
        "channels": 1,
        "queued_messages": 1,
        "messages_sent": 1,
    }
    assert await layer.receive("a") == {"type": "x", "n": 1}
    assert _nonzero(layer.statistics()) == {"messages_sent": 1, "messages_received": 1}


async def test_receiver_wakes_on_send(
    layer: InMemoryChannelLayer, nursery: trio.Nursery
) -> None:
    """A parked receiver is woken by a send, and send is a checkpoint."""
    got: list[dict[str, Any]] = []

    async def receiver() -> None:
        got.append(await layer.receive("a"))

    nursery.start_soon(receiver)
    await trio.testing.wait_all_tasks_blocked()
    assert got == []
    assert layer.statistics().channels == 1
    with trio.testing.assert_checkpoints():
        await layer.send("a", {"type": "x"})
    await trio.testing.wait_all_tasks_blocked()
    assert got == [{"type": "x"}]
    assert layer.statistics().channels == 0


async def test_competing_receivers_fifo(
    layer: InMemoryChannelLayer, nursery: trio.Nursery
) -> None:
    """Parked receivers on one channel are served in the order they parked, one message each."""
    got: list[tuple[int, int]] = []

    async def receiver(k: int) -> None:
        while True:
            got.append((k, (await layer.receive("work"))["i"]))

    for k in range(3):
        nursery.start_soon(receiver, k)
        await trio.testing.wait_all_tasks_blocked()
    for i in range(6):
        await layer.send("work", {"type": "job", "i": i})
    await trio.testing.wait_all_tasks_blocked()
    assert sorted(i for _, i in got) == list(range(6))
    assert [k for k, _ in got[:3]] == [0, 1, 2]
    nursery.cancel_scope.cancel()


async def test_new_channel_names(layer: InMemoryChannelLayer) -> None:
    """new_channel() gives unique names with the prefix, no doubled dot (Channels' bug)."""
    names = {await layer.new_channel() for _ in range(200)}
    assert len(names) == 200
    for name in names:
        assert re.fullmatch(r"specific\.inmemory![A-Za-z0-9_\-]{16}", name), name
    assert (await layer.new_channel("chat")).startswith("chat.inmemory!")
    assert (await layer.new_channel("")).startswith("inmemory!")
    assert layer.statistics().channels == 0


async def test_idle_channels_are_forgotten(layer: InMemoryChannelLayer) -> None:
    """Channels with nothing queued and nobody waiting do not accumulate."""
    for _ in range(500):
        name = await layer.new_channel()
        with trio.move_on_after(0):
            await layer.receive(name)
        await layer.send(name, {"type": "x"})
        await layer.receive(name)
    with trio.CancelScope() as scope:
        scope.cancel()
        await layer.receive("parked")
    assert _nonzero(layer.statistics()) == {
        "messages_sent": 500,
        "messages_received": 500,
    }


async def test_receiver_cancelled_while_parked_leaves_no_channel(
    layer: InMemoryChannelLayer, autojump_clock: trio.testing.MockClock
) -> None:
    """Invariant: a receive cancelled while parked leaves no channel and no waiter behind."""
    with trio.move_on_after(1) as scope:
        await layer.receive("a")
    assert scope.cancelled_caught
    assert layer.statistics().channels == 0
    await layer.send("a", {"type": "x"})
    assert await layer.receive("a") == {"type": "x"}


def test_receive_in_a_cancelled_scope_takes_nothing(backend: str) -> None:
    """Invariant: receive() called in an already-cancelled scope raises the cancellation,
    with an empty channel (where the wait is the checkpoint) and with a queued message
    (which stays queued), and leaves no waiter behind."""

    async def body() -> None:
        async with InMemoryChannelLayer() as layer:
            with anyio.CancelScope() as scope:
                scope.cancel()
                await layer.receive("empty")
            assert scope.cancelled_caught
            await layer.send("full", {"type": "kept"})
            with anyio.CancelScope() as scope:
                scope.cancel()
                await layer.receive("full")
            assert scope.cancelled_caught
            # "full" only, still holding its message:
            assert layer.statistics().channels == 1
            await layer.send("empty", {"type": "x"})
            assert await layer.receive("empty") == {"type": "x"}
            assert await layer.receive("full") == {"type": "kept"}

    anyio.run(body, backend=backend)


# -- copies --------------------------------------------------------------------------


class Colour(enum.StrEnum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


async def test_messages_are_deep_copied(layer: InMemoryChannelLayer) -> None:
    """Neither side can mutate the other's message; values come back as from the wire."""
    sent: dict[str, Any] = {
        "type": "x",
        "items": [1, {"k": [2]}],
        "t": (1, 2),
        "c": Colour.RED,
        "l": Level.HIGH,
        "b": bytearray(b"ab"),
    }
    await layer.send("a", sent)
    sent["items"][1]["k"].append(99)
    got = await layer.receive("a")
    assert got == {
        "type": "x",
        "items": [1, {"k": [2]}],
        "t": [1, 2],
        "c": "red",
        "l": 3,
        "b": b"ab",
    }
    assert type(got["c"]) is str
    assert type(got["l"]) is int
    assert type(got["b"]) is bytes


async def test_group_members_get_their_own_copies(layer: InMemoryChannelLayer) -> None:
    """Each group member receives an independent copy, nested or flat."""
    for ch in ("a", "b", "c"):
        await layer.group_add("g", ch)
    await layer.group_send("g", {"type": "deep", "d": {"l": [1]}})
    await layer.group_send("g", {"type": "flat", "v": 1})
    first = await layer.receive("a")
    first["d"]["l"].append(2)
    flat = await layer.receive("a")
    flat["v"] = 2
    assert await layer.receive("b") == {"type": "deep", "d": {"l": [1]}}
    assert await layer.receive("b") == {"type": "flat", "v": 1}
    assert await layer.receive("c") == {"type": "deep", "d": {"l": [1]}}


class JsonSerializer(MessageSerializer):
    """A custom serializer: the layer copies through dumps/loads."""

    name = "json"

    def dumps(self, message: Mapping[str, Any]) -> bytes:
        try:
            return json.dumps(message).encode()
        except TypeError as exc:
            raise InvalidMessage(str(exc)) from None

    def loads(self, data: bytes) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(data)
        return value


async def test_custom_serializer() -> None:
    """A custom serializer decides what passes and what receivers see."""
    layer = InMemoryChannelLayer(serializer=JsonSerializer())
    await layer.group_add("g", "a")
    await layer.group_add("g", "b")
    await layer.group_send("g", {"type": "x", "t": (1, 2)})
    got = await layer.receive("a")
    got["t"].append(3)
    assert await layer.receive("b") == {"type": "x", "t": [1, 2]}
    with pytest.raises(
        InvalidMessage, match=r"^Object of type bytes is not JSON serializable$"
    ):
        await layer.send("a", {"type": "x", "b": b"1"})


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=5)
    | st.binary(max_size=5),
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(payload=json_values)
def test_copy_matches_msgpack_round_trip(payload: object) -> None:
    """The in-memory copy is exactly what a msgpack round trip would give."""
    message = {"type": "x", "payload": payload}
    serializer = MsgpackSerializer()
    assert normalised_copy(message) == serializer.loads(serializer.dumps(message))
    assert serializer.copy(message) == msgpack.unpackb(
        msgpack.packb(message), raw=False
    )


def test_msgpack_loads_rejects_garbage() -> None:
    """Decoding something that is not an encoded message is an InvalidMessage."""
    serializer = MsgpackSerializer()
    with pytest.raises(
        InvalidMessage, match=r"^could not decode a message: got list, not a map$"
    ):
        serializer.loads(msgpack.packb([1]))
    with pytest.raises(InvalidMessage, match=r"^could not decode a message: "):
        serializer.loads(b"\xc1")


# -- capacity ------------------------------------------------------------------------


async def test_capacity_and_channel_capacity() -> None:
    """ChannelFull names the channel and capacity; patterns (glob, regex) apply, first match wins."""
    layer = InMemoryChannelLayer(
        capacity=3,
        channel_capacity=[("big.*", 5), (re.compile(r"big\.huge"), 50), ("*.tiny", 1)],
    )
    assert [
        layer.get_capacity(c) for c in ("x", "big.huge", "big.x", "a.tiny", "a.tiny.x")
    ] == [3, 5, 5, 1, 3]
    layer = InMemoryChannelLayer(
        capacity=3, channel_capacity={re.compile(r"big\.huge"): 50, "big.*": 5}
    )
    assert layer.get_capacity("big.huge") == 50
    assert layer.get_capacity("big.huger") == 50  # regexes use .match, as in Channels
    for _ in range(5):
        await layer.send("big.x", {"type": "x"})
    with (
        trio.testing.assert_checkpoints(),
        pytest.raises(
            ChannelFull, match=r"^channel 'big\.x' is full \(capacity 5\)$"
        ) as info,
    ):
        await layer.send("big.x", {"type": "x"})
    assert (info.value.channel, info.value.capacity) == ("big.x", 5)


async def test_group_send_drops_full_members_and_counts(
    layer: InMemoryChannelLayer,
) -> None:
    """group_send never raises ChannelFull; each dropped copy is counted."""
    small = InMemoryChannelLayer(capacity=1)
    await small.group_add("g", "a")
    await small.group_add("g", "b")
    await small.send("a", {"type": "first"})
    await small.group_send("g", {"type": "g"})
    await small.group_send("g", {"type": "g"})
    s = small.statistics()
    assert (s.messages_sent, s.messages_dropped, s.queued_messages) == (2, 3, 2)
    small.record_dropped(4)
    assert small.statistics().messages_dropped == 7
    with pytest.raises(ValueError, match=r"^n is -1, which is negative$"):
        small.record_dropped(-1)


async def test_send_many_semantics(layer: InMemoryChannelLayer) -> None:
    """send_many validates first, queues what fits, then raises ChannelFull for the first full channel."""
    small = InMemoryChannelLayer(capacity=1)
    await small.send("full", {"type": "x"})
    with pytest.raises(ChannelFull, match=r"^channel 'full' is full \(capacity 1\)$"):
        await small.send_many(
            [
                ("a", {"type": "1"}),
                ("full", {"type": "2"}),
                ("b", {"type": "3"}),
                ("full", {"type": "4"}),
            ]
        )
    assert await small.receive("a") == {"type": "1"}
    assert await small.receive("b") == {"type": "3"}
    with pytest.raises(
        InvalidMessage,
        match=r"^message\['p'\] is of type set, which cannot be serialised$",
    ):
        await small.send_many([("a", {"type": "1"}), ("b", {"type": "x", "p": set()})])
    assert small.statistics().queued_messages == 1
    with pytest.raises(InvalidGroupName):
        await small.group_send_many([("g", {"type": "1"}), ("g!", {"type": "x"})])


# -- expiry (virtual time) ---------------------------------------------------------------


async def test_message_expiry_exact(autojump_clock: trio.testing.MockClock) -> None:
    """A message is deliverable until exactly `expiry` seconds after send, then counted as expired."""
    layer = InMemoryChannelLayer(expiry=60)
    await layer.send("a", {"type": "x", "n": 1})
    await layer.send("b", {"type": "x", "n": 2})
    await trio.sleep(59.5)
    assert await layer.receive("a") == {"type": "x", "n": 1}
    await trio.sleep(0.5)
    assert trio.current_time() == 60
    with trio.move_on_after(1) as scope:
        await layer.receive("b")
    assert scope.cancelled_caught
    assert trio.current_time() == 61
    assert _nonzero(layer.statistics()) == {
        "messages_sent": 2,
        "messages_received": 1,
        "messages_expired": 1,
    }


async def test_expiry_sweeps_abandoned_channels_and_memberships(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Expired messages on channels nobody reads are swept by any later operation; their memberships go too."""
    layer = InMemoryChannelLayer(expiry=10)
    for i in range(100):
        await layer.group_add("room", f"dead{i}")
        await layer.send(f"dead{i}", {"type": "x"})
    await layer.group_add("room", "alive")
    await trio.sleep(9)
    await layer.send("alive", {"type": "fresh"})
    await trio.sleep(1)
    await layer.group_send("room", {"type": "after"})  # sweeps first
    assert _nonzero(layer.statistics()) == {
        "channels": 1,
        "queued_messages": 2,
        "groups": 1,
        "members": 1,
        "messages_sent": 102,
        "messages_expired": 100,
    }
    assert await layer.receive("alive") == {"type": "fresh"}
    assert await layer.receive("alive") == {"type": "after"}


async def test_group_expiry_exact(autojump_clock: trio.testing.MockClock) -> None:
    """A membership lasts exactly group_expiry after the latest group_add."""
    layer = InMemoryChannelLayer(group_expiry=100, expiry=1000)
    await layer.group_add("g", "a")
    await layer.group_add("g", "b")
    await trio.sleep(50)
    await layer.group_add("g", "b")  # refresh: b now lasts until 150
    await trio.sleep(49.5)
    await layer.group_send("g", {"type": "m", "at": 99.5})
    await trio.sleep(0.5)
    assert trio.current_time() == 100
    await layer.group_send("g", {"type": "m", "at": 100})
    await trio.sleep(50)
    await layer.group_send("g", {"type": "m", "at": 150})
    assert await layer.receive("a") == {"type": "m", "at": 99.5}
    assert await layer.receive("b") == {"type": "m", "at": 99.5}
    assert await layer.receive("b") == {"type": "m", "at": 100}
    assert _nonzero(layer.statistics()) == {"messages_sent": 3, "messages_received": 3}


async def test_group_expiry_sweep_without_group_send(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Memberships of groups nobody sends to are swept too (no unbounded growth)."""
    layer = InMemoryChannelLayer(group_expiry=5)
    for i in range(50):
        await layer.group_add(f"g{i}", "a")
    assert layer.statistics().members == 50
    await trio.sleep(5)
    await layer.group_discard("unrelated", "a")
    await layer.send("a", {"type": "x"})
    assert (layer.statistics().groups, layer.statistics().members) == (0, 0)


async def test_injected_clock() -> None:
    """The clock option drives expiry without MockClock."""
    now = [1000.0]
    layer = InMemoryChannelLayer(expiry=5, clock=lambda: now[0])
    await layer.send("a", {"type": "old"})
    now[0] += 5
    await layer.send("a", {"type": "new"})
    assert await layer.receive("a") == {"type": "new"}
    assert layer.statistics().messages_expired == 1
    assert layer.now() == 1005


# -- cancellation safety ----------------------------------------------------------------


async def test_receive_cancelled_after_handoff_gives_message_back(
    layer: InMemoryChannelLayer, nursery: trio.Nursery
) -> None:
    """Invariant: a receiver cancelled after a message was handed to it puts it back, first in line."""
    outcome: list[str] = []
    scope = trio.CancelScope()

    async def receiver() -> None:
        with scope:
            await layer.receive("a")
            outcome.append("received")  # pragma: no cover - must not happen
        outcome.append("cancelled")

    nursery.start_soon(receiver)
    await trio.testing.wait_all_tasks_blocked()
    scope.cancel()  # the receiver is aborted but has not run yet: its waiter is still queued
    await layer.send("a", {"type": "first"})
    await layer.send("a", {"type": "second"})
    await trio.testing.wait_all_tasks_blocked()
    assert outcome == ["cancelled"]
    assert await layer.receive("a") == {"type": "first"}
    assert await layer.receive("a") == {"type": "second"}
    s = layer.statistics()
    assert (s.messages_sent, s.messages_received, s.channels) == (2, 2, 0)


def test_receive_cancelled_after_handoff_neutral(backend: str) -> None:
    """The give-back path works on asyncio too, where a woken task can still be cancelled."""

    async def body() -> None:
        layer = InMemoryChannelLayer()
        outcome: list[str] = []
        async with anyio.create_task_group() as tg:
            scope = anyio.CancelScope()

            async def receiver() -> None:
                with scope:
                    await layer.receive("a")
                    outcome.append("received")
                outcome.append("done")

            tg.start_soon(receiver)
            await anyio.wait_all_tasks_blocked()
            scope.cancel()
            await layer.send("a", {"type": "first"})
        assert outcome == ["done"]
        assert layer.statistics().queued_messages == 1
        assert await layer.receive("a") == {"type": "first"}
        assert layer.statistics().messages_received == 1

    anyio.run(body, backend=backend)


@pytest.mark.slow
async def test_cancellation_safety_under_load(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """10k messages, 4 competing receivers with random tiny deadlines: each message received exactly once."""
    layer = InMemoryChannelLayer(capacity=50)
    total = 10_000
    rng = random.Random(7)
    got: list[list[int]] = [[] for _ in range(4)]
    cancelled = 0
    all_in = trio.Event()

    async def receiver(k: int) -> None:
        nonlocal cancelled
        while True:
            with trio.move_on_after(rng.choice((0, 1e-6, 1e-5, 1e-3))) as scope:
                got[k].append((await layer.receive("load"))["i"])
                if sum(map(len, got)) == total:
                    all_in.set()
            cancelled += scope.cancelled_caught

    async with trio.open_nursery() as nursery:
        for k in range(4):
            nursery.start_soon(receiver, k)
        i = 0
        while i < total:
            try:
                await layer.send("load", {"type": "load", "i": i})
            except ChannelFull:
                await trio.sleep(1e-5)
                continue
            i += 1
            if rng.random() < 0.1:
                await trio.sleep(rng.choice((0, 1e-6, 1e-4)))
        await all_in.wait()
        nursery.cancel_scope.cancel()
    flat = [i for part in got for i in part]
    assert sorted(flat) == list(range(total))
    for part in got:
        assert part == sorted(part)  # each receiver sees channel order
    assert cancelled > 1000
    s = layer.statistics()
    assert (s.messages_sent, s.messages_received, s.queued_messages, s.channels) == (
        total,
        total,
        0,
        0,
    )


@pytest.mark.slow
def test_cancellation_safety_under_load_neutral(backend: str) -> None:
    """The same on asyncio with real time (fewer messages)."""

    async def body() -> None:
        layer = InMemoryChannelLayer(capacity=50)
        total = 2000
        rng = random.Random(3)
        got: list[int] = []
        all_in = anyio.Event()

        async def receiver() -> None:
            while True:
                with anyio.move_on_after(rng.choice((0, 1e-6, 1e-5, 1e-4))):
                    got.append((await layer.receive("load"))["i"])
                    if len(got) == total:
                        all_in.set()

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(receiver)
            i = 0
            while i < total:
                try:
                    await layer.send("load", {"type": "load", "i": i})
                except ChannelFull:
                    await anyio.sleep(1e-4)
                    continue
                i += 1
            with anyio.fail_after(5):
                await all_in.wait()
            tg.cancel_scope.cancel()
        assert sorted(got) == list(range(total))
        assert layer.statistics().queued_messages == 0

    anyio.run(body, backend=backend)


# -- checkpoints ---------------------------------------------------------------------------


async def test_every_operation_is_a_checkpoint(layer: InMemoryChannelLayer) -> None:
    """Each async method checkpoints, even when it need not wait; statistics() does not."""
    with trio.testing.assert_checkpoints():
        await layer.send("a", {"type": "x"})
    with trio.testing.assert_checkpoints():
        await layer.receive("a")
    with trio.testing.assert_checkpoints():
        await layer.new_channel()
    with trio.testing.assert_checkpoints():
        await layer.group_add("g", "a")
    with trio.testing.assert_checkpoints():
        await layer.group_send("g", {"type": "x"})
    with trio.testing.assert_checkpoints():
        await layer.group_send("nobody", {"type": "x"})
    with trio.testing.assert_checkpoints():
        await layer.group_discard("g", "a")
    with trio.testing.assert_checkpoints():
        await layer.send_many([("a", {"type": "x"})])
    with trio.testing.assert_checkpoints():
        await layer.send_many([])
    with trio.testing.assert_checkpoints():
        await layer.group_send_many([("g", {"type": "x"})])
    with trio.testing.assert_checkpoints():
        async with layer.receive_delivery("a") as message:
            assert message == {"type": "x"}
    with trio.testing.assert_checkpoints():
        await layer.flush()
    with trio.testing.assert_no_checkpoints():
        layer.statistics()
    with trio.testing.assert_checkpoints():
        await layer.aclose()
    with trio.testing.assert_checkpoints():
        await layer.close()


async def test_cancelled_send_queues_nothing(layer: InMemoryChannelLayer) -> None:
    """A send called in a cancelled scope raises Cancelled and queues nothing."""
    with trio.CancelScope() as scope:
        scope.cancel()
        await layer.send("a", {"type": "x"})
    assert scope.cancelled_caught
    assert _nonzero(layer.statistics()) == {}


# -- bad input -------------------------------------------------------------------------------


ALLOWED = r"only ASCII letters, digits, '-', '_' and '\.' \(plus one '!'\) are allowed"


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        (5, r"^invalid channel name 5: must be a str, not int$"),
        (None, r"^invalid channel name None: must be a str, not NoneType$"),
        ("", r"^invalid channel name '': must not be empty$"),
        (
            "a" * 100,
            r"^invalid channel name 'a{100}': must be shorter than 100 characters, not 100$",
        ),
        (
            "chat\n",
            rf"^invalid channel name 'chat\\n': contains '\\n' at index 4; {ALLOWED}$",
        ),
        (
            "chat\u0663",
            rf"^invalid channel name 'chat\u0663': contains '\u0663' at index 4; {ALLOWED}$",
        ),
        (
            "a!\u00e9",
            rf"^invalid channel name 'a!\u00e9': contains '\u00e9' at index 2; {ALLOWED}$",
        ),
        ("a b", rf"^invalid channel name 'a b': contains ' ' at index 1; {ALLOWED}$"),
        (
            "a!b!c",
            r"^invalid channel name 'a!b!c': contains a second '!' at index 3; at most one is allowed$",
        ),
        (
            "!x",
            r"^invalid channel name '!x': must have at least one character before '!'$",
        ),
    ],
)
async def test_invalid_channel_names(
    layer: InMemoryChannelLayer, name: Any, pattern: str
) -> None:
    """Every channel-name rule gives InvalidChannelName naming the value and the rule."""
    errors: list[InvalidChannelName] = []
    for call in (
        layer.send(name, {"type": "x"}),
        layer.receive(name),
        layer.group_add("g", name),
        layer.group_discard("g", name),
    ):
        with pytest.raises(InvalidChannelName, match=pattern) as info:
            await call
        errors.append(info.value)
    assert [e.name for e in errors] == [name] * 4
    assert all(isinstance(e, ValueError) for e in errors)


async def test_valid_channel_name_edges(layer: InMemoryChannelLayer) -> None:
    """99 characters, a trailing '!', and every allowed character are fine."""
    for name in ("a" * 99, "a!", "Az09-_.!Az09-_.", "x.y!z"):
        await layer.send(name, {"type": "x"})
        assert await layer.receive(name) == {"type": "x"}


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        (
            "g!x",
            r"^invalid group name 'g!x': contains '!' at index 1, which only channel names may use$",
        ),
        ("", r"^invalid group name '': must not be empty$"),
        (
            "g" * 100,
            r"^invalid group name 'g{100}': must be shorter than 100 characters, not 100$",
        ),
        (
            "bad group",
            r"^invalid group name 'bad group': contains ' ' at index 3; only ASCII letters, digits, '-', '_' and '\.' are allowed$",
        ),
        (b"g", r"^invalid group name b'g': must be a str, not bytes$"),
    ],
)
async def test_invalid_group_names(
    layer: InMemoryChannelLayer, name: Any, pattern: str
) -> None:
    """Every group-name rule gives InvalidGroupName naming the value and the rule."""
    for call in (
        layer.group_add(name, "a"),
        layer.group_discard(name, "a"),
        layer.group_send(name, {"type": "x"}),
    ):
        with pytest.raises(InvalidGroupName, match=pattern) as info:
            await call
        assert info.value.name == name


async def test_invalid_new_channel_prefix(layer: InMemoryChannelLayer) -> None:
    """A prefix with disallowed characters is refused."""
    with pytest.raises(
        InvalidChannelName,
        match=r"^invalid channel name 'a!': prefix may contain only ASCII letters, digits, '-', '_' and '\.'$",
    ):
        await layer.new_channel("a!")
    with pytest.raises(
        InvalidChannelName,
        match=r"^invalid channel name 5: prefix must be a str, not int$",
    ):
        await layer.new_channel(5)  # type: ignore[arg-type]
    with pytest.raises(
        InvalidChannelName,
        match=r"^invalid channel name 'p{90}\.inmemory!.{16}': must be shorter than 100 characters, not 116$",
    ):
        await layer.new_channel("p" * 90)


deep: dict[str, Any] = {"type": "x"}
_node = deep
for _ in range(70):
    _node["d"] = {}
    _node = _node["d"]
loop: list[Any] = []
loop.append(loop)


@pytest.mark.parametrize(
    ("message", "pattern"),
    [
        (["type", "x"], r"^message must be a mapping, not list$"),
        ({"text": "hi"}, r"^message has no 'type' key$"),
        ({"type": 5}, r"^message\['type'\] is 5, which is not a str$"),
        ({"type": ""}, r"^message\['type'\] must not be empty$"),
        (
            {"type": "x", "__asgi_channel__": "a"},
            r"^message must not contain the reserved key '__asgi_channel__'$",
        ),
        (
            {"type": "x", "payload": [1, 2, {3}]},
            r"^message\['payload'\]\[2\] is of type set, which cannot be serialised$",
        ),
        (
            {"type": "x", "p": {1: "a"}},
            r"^message\['p'\] has key 1 of type int, which cannot be serialised \(keys must be str\)$",
        ),
        (
            {"type": "x", "n": 2**63},
            r"^message\['n'\] is 9223372036854775808, outside the signed 64-bit integer range$",
        ),
        (
            {"type": "x", "n": -(2**63) - 1},
            r"^message\['n'\] is -9223372036854775809, outside the signed 64-bit integer range$",
        ),
        (
            {"type": "x", "o": object()},
            r"^message\['o'\] is of type object, which cannot be serialised$",
        ),
        (
            {"type": "x", "m": memoryview(b"")},
            r"^message\['m'\] is of type memoryview, which cannot be serialised$",
        ),
        (deep, r"^message(\['d'\]){65} is nested more than 64 levels deep$"),
        (
            {"type": "x", "loop": loop},
            r"^message\['loop'\](\[0\]){64} is nested more than 64 levels deep$",
        ),
    ],
)
async def test_invalid_messages(
    layer: InMemoryChannelLayer, message: Any, pattern: str
) -> None:
    """Every malformed or unserialisable message fails at send (and group_send) with the field named."""
    await layer.group_add("g", "a")
    for call in (layer.send("a", message), layer.group_send("g", message)):
        with pytest.raises(InvalidMessage, match=pattern):
            await call
    assert layer.statistics().queued_messages == 0


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"capacity": 0}, r"^capacity is 0, which is not an int >= 1$"),
        ({"capacity": True}, r"^capacity is True, which is not an int >= 1$"),
        (
            {"expiry": -1},
            r"^expiry is -1, which is not a positive finite number of seconds$",
        ),
        (
            {"group_expiry": float("inf")},
            r"^group_expiry is inf, which is not a positive finite number of seconds$",
        ),
        (
            {"channel_capacity": {"a*": 0}},
            r"^channel_capacity\['a\*'\] is 0, which is not an int >= 1$",
        ),
        (
            {"channel_capacity": 5},
            r"^channel_capacity must be a mapping or a sequence of \(pattern, value\) pairs, not int$",
        ),
        (
            {"channel_capacity": [("a", 1, 2)]},
            r"^channel_capacity entry \('a', 1, 2\) is not a \(pattern, value\) pair$",
        ),
        (
            {"channel_capacity": {5: 1}},
            r"^channel_capacity pattern 5 is neither a glob str nor a compiled str regex$",
        ),
        (
            {"channel_delivery": {"jobs": "exactly-once"}},
            r"^channel_delivery\['jobs'\] is 'exactly-once', which is not one of 'at-most-once', 'at-least-once'$",
        ),
        (
            {"channel_delivery": {"jobs": "at-least-once"}},
            r"^InMemoryChannelLayer supports only at-most-once delivery, but channel_delivery asks at-least-once for '\(\?s:jobs\)\\\\Z'$",
        ),
        (
            {"serializer": "pickle"},
            r"^serializer 'pickle' is neither a MessageSerializer nor one of 'msgpack'$",
        ),
        ({"clock": 5}, r"^clock is 5, which is not callable$"),
    ],
)
def test_invalid_options(options: dict[str, Any], pattern: str) -> None:
    """Bad constructor options raise InvalidChannelLayerError naming the option and value."""
    with pytest.raises(InvalidChannelLayerError, match=pattern):
        InMemoryChannelLayer(**options)


def test_valid_options() -> None:
    """Options are stored as given; at-most-once may be declared explicitly."""
    layer = InMemoryChannelLayer(
        expiry=1.5,
        group_expiry=2,
        capacity=7,
        channel_delivery={"x": "at-most-once"},
        serializer="msgpack",
    )
    assert (layer.expiry, layer.group_expiry, layer.capacity) == (1.5, 2.0, 7)
    assert layer.get_delivery("x") == "at-most-once"
    assert layer.get_delivery("y") == "at-most-once"
    assert layer.extensions == ["groups", "flush"]
    assert layer.non_local_name("a.b!c") == "a.b!"
    assert layer.non_local_name("a.b") == "a.b"


# -- flush and close -------------------------------------------------------------------------


async def test_flush_keeps_parked_receivers(
    layer: InMemoryChannelLayer, nursery: trio.Nursery
) -> None:
    """flush() empties queues and groups; receivers already parked keep waiting and get later messages."""
    got: list[dict[str, Any]] = []

    async def receiver() -> None:
        got.append(await layer.receive("waiting"))

    await layer.send("a", {"type": "old"})
    await layer.group_add("g", "waiting")
    nursery.start_soon(receiver)
    await trio.testing.wait_all_tasks_blocked()
    await layer.flush()
    assert _nonzero(layer.statistics()) == {"channels": 1, "messages_sent": 1}
    await layer.group_send("g", {"type": "nobody"})
    await layer.send("waiting", {"type": "new"})
    await trio.testing.wait_all_tasks_blocked()
    assert got == [{"type": "new"}]


async def test_close_wakes_parked_receivers_and_refuses_use(
    nursery: trio.Nursery,
) -> None:
    """aclose() wakes every parked receiver with ClosedResourceError; later calls raise it too."""
    layer = InMemoryChannelLayer()
    errors: list[str] = []

    async def receiver(channel: str) -> None:
        try:
            await layer.receive(channel)
        except anyio.ClosedResourceError as exc:
            errors.append(str(exc))

    for channel in ("a", "a", "b"):
        nursery.start_soon(receiver, channel)
    await trio.testing.wait_all_tasks_blocked()
    await layer.send("c", {"type": "lost"})
    async with layer:
        pass
    await trio.testing.wait_all_tasks_blocked()
    assert errors == ["InMemoryChannelLayer was closed while receive() waited"] * 3
    assert layer.closed
    with pytest.raises(
        anyio.ClosedResourceError, match=r"^InMemoryChannelLayer is closed$"
    ):
        await layer.send("a", {"type": "x"})
    with pytest.raises(
        anyio.ClosedResourceError,
        match=r"^InMemoryChannelLayer is closed and cannot be reopened$",
    ):
        async with layer:
            pass  # pragma: no cover
    s = layer.statistics()
    assert (s.channels, s.queued_messages, s.messages_sent) == (0, 0, 1)
    layer.record_dropped(1)  # still allowed after closing


async def test_async_with_and_aclose_when_cancelled() -> None:
    """async with opens and closes; aclose() in a cancelled scope still closes (AsyncResource semantics)."""
    states: list[bool] = []
    async with InMemoryChannelLayer() as layer:
        states.append(layer.closed)
        with pytest.raises(
            RuntimeError, match=r"^InMemoryChannelLayer is already open$"
        ):
            await layer.__aenter__()
        await layer.send("a", {"type": "x"})
    states.append(layer.closed)
    assert states == [False, True]
    other = InMemoryChannelLayer()
    with trio.CancelScope() as scope:
        scope.cancel()
        await other.aclose()
    assert scope.cancelled_caught
    assert other.closed


async def test_receive_nowait_skips_expired_and_never_waits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """_receive_nowait (used at a consumer's disconnect) takes what is queued, in order, unexpired."""
    async with InMemoryChannelLayer(expiry=1) as layer:
        channel = await layer.new_channel()
        assert layer._receive_nowait(channel) is None
        await layer.send(channel, {"type": "m", "n": 0})
        await trio.sleep(2)
        await layer.send(channel, {"type": "m", "n": 1})
        assert layer._receive_nowait(channel) == {"type": "m", "n": 1}
        assert layer._receive_nowait(channel) is None
        stats = layer.statistics()
        assert (stats.messages_received, stats.messages_expired) == (1, 1)
