"""The channel-layer conformance battery: :func:`check_channel_layer`.

One battery for every layer, ours or a user's, in the spirit of Trio's
``check_two_way_stream``. It uses only anyio and real time, so it runs on any
backend and against out-of-process layers (Redis) as well as the in-memory
one. It never relies on sleeping to "let things happen": to show that a
channel holds nothing unexpected it sends a sentinel and checks that the
sentinel is what comes next (channels are FIFO).
"""

from __future__ import annotations

import inspect
import random
import re
import secrets
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Final

import anyio
import anyio.lowlevel
import attrs

from trichannels.exceptions import (
    ChannelFull,
    InvalidChannelName,
    InvalidGroupName,
    InvalidMessage,
)
from trichannels.layers.base import BaseChannelLayer, LayerStatistics

__all__ = ["LayerCheckReport", "check_channel_layer"]

MakeLayer = Callable[..., AbstractAsyncContextManager[BaseChannelLayer]]

_CHECK_TIMEOUT: Final = 10.0
_OPTION_NAMES: Final = ("capacity", "channel_capacity", "expiry")


@attrs.frozen
class LayerCheckReport:
    """What :func:`check_channel_layer` ran.

    Attributes:
        passed: names of the checks that ran and passed.
        skipped: ``(name, reason)`` for checks that could not run against this ``make_layer``.
    """

    passed: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]


class _Skip(Exception):
    pass


def _expect(condition: object, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def _accepts_options(make_layer: MakeLayer) -> bool:
    try:
        signature = inspect.signature(make_layer)
    except (TypeError, ValueError):
        return False
    try:
        signature.bind(**dict.fromkeys(_OPTION_NAMES))
    except TypeError:
        return False
    return True


class _Names:
    """Unique channel and group names for one battery run (Redis state may outlive a layer)."""

    def __init__(self) -> None:
        self.run = secrets.token_hex(4)
        self._n = 0

    def __call__(self, kind: str) -> str:
        self._n += 1
        return f"battery.{self.run}.{kind}{self._n}"


async def _expect_next(
    layer: BaseChannelLayer, channel: str, expected: dict[str, Any], what: str
) -> None:
    got = await layer.receive(channel)
    _expect(
        got == expected,
        f"{what}: expected {expected!r} next on {channel!r}, got {got!r}",
    )


async def _expect_empty(layer: BaseChannelLayer, channel: str, what: str) -> None:
    """Show that ``channel`` holds nothing: a fresh sentinel is what comes next."""
    sentinel = {"type": "battery.sentinel", "token": secrets.token_hex(8)}
    await layer.send(channel, sentinel)
    await _expect_next(layer, channel, sentinel, what)


async def _raises(
    exc_type: type[BaseException],
    call: Callable[..., Awaitable[object]],
    what: str,
    *args: Any,
) -> BaseException:
    try:
        await call(*args)
    except exc_type as exc:
        # Validation errors are raised before the operation's checkpoint.
        await anyio.lowlevel.checkpoint()
        return exc
    except Exception as exc:
        msg = f"{what}: expected {exc_type.__name__}, got {type(exc).__name__}: {exc}"
        raise AssertionError(msg) from exc
    msg = f"{what}: expected {exc_type.__name__}, nothing was raised"
    raise AssertionError(msg)


# --------------------------------------------------------------------------- checks


async def _check_send_receive(make: MakeLayer, names: _Names) -> None:
    async with make() as layer:
        ch = names("ch")
        sent: dict[str, Any] = {
            "type": "test.message",
            "text": "hello",
            "n": 1,
            "nested": {"list": [1, 2.5, None, True, b"raw"]},
        }
        await layer.send(ch, sent)
        got = await layer.receive(ch)
        _expect(got == sent, f"receive returned {got!r}, sent {sent!r}")
        _expect(
            type(got) is dict, f"receive returned a {type(got).__name__}, not a dict"
        )
        got["nested"]["list"].append("mutated")
        _expect(
            sent["nested"]["list"] == [1, 2.5, None, True, b"raw"],
            "the receiver's message shares objects with the sender's",
        )
        tup = {"type": "test.tuple", "items": (1, 2)}
        await layer.send(ch, tup)
        await _expect_next(
            layer,
            ch,
            {"type": "test.tuple", "items": [1, 2]},
            "a tuple travels as a list",
        )
        big = {"type": "test.big", "body": "x" * 1_000_000}
        await layer.send(ch, big)
        await _expect_next(layer, ch, big, "a 1 MB message (the spec's minimum)")
        _expect(
            {"groups", "flush"} <= set(layer.extensions),
            f"extensions {layer.extensions!r} lack groups/flush",
        )


async def _check_ordering(make: MakeLayer, names: _Names) -> None:
    async with make() as layer:
        ch, other = names("ch"), names("ch")
        n = min(30, layer.get_capacity(ch), layer.get_capacity(other))
        for i in range(n):
            await layer.send(ch, {"type": "test.seq", "i": i})
            await layer.send(other, {"type": "test.seq", "i": -i})
        got = [(await layer.receive(ch))["i"] for _ in range(n)]
        _expect(got == list(range(n)), f"channel order not kept: {got!r}")
        got = [(await layer.receive(other))["i"] for _ in range(n)]
        _expect(got == [-i for i in range(n)], f"channel order not kept: {got!r}")


async def _check_new_channel(make: MakeLayer, names: _Names) -> None:
    async with make() as layer:
        default = await layer.new_channel()
        _expect(
            default.startswith("specific.") and "!" in default,
            f"new_channel() gave {default!r}",
        )
        made = {await layer.new_channel(prefix="battery.") for _ in range(50)}
        _expect(len(made) == 50, "new_channel() repeated a name")
        for name in made:
            _expect(
                name.startswith("battery.") and "!" in name,
                f"new_channel('battery.') gave {name!r}",
            )
            _expect(
                layer.require_valid_channel_name(name) == name,
                f"new_channel() gave invalid {name!r}",
            )
        ch = sorted(made)[0]
        await _expect_empty(layer, ch, "a new channel")
        await layer.send(ch, {"type": "test.local", "v": 1})
        await _expect_next(
            layer,
            ch,
            {"type": "test.local", "v": 1},
            "send/receive on a process-specific channel",
        )


async def _check_groups(make: MakeLayer, names: _Names) -> None:
    async with make() as layer:
        group = names("group")
        a, b = await layer.new_channel(), await layer.new_channel()
        await layer.group_add(group, a)
        await layer.group_add(group, a)  # idempotent
        await layer.group_add(group, b)
        msg = {"type": "test.group", "n": 1}
        await layer.group_send(group, msg)
        await _expect_next(layer, a, msg, "group_send to member a")
        await _expect_next(layer, b, msg, "group_send to member b")
        await _expect_empty(layer, a, "a member added twice gets one copy")
        await layer.group_discard(group, b)
        await layer.group_discard(group, b)  # no-op
        await layer.group_discard(names("nogroup"), a)  # no-op
        await layer.group_send(group, {"type": "test.group", "n": 2})
        await _expect_next(
            layer, a, {"type": "test.group", "n": 2}, "group_send after a discard"
        )
        await _expect_empty(layer, b, "a discarded member")
        await layer.group_send(names("nogroup"), {"type": "test.nobody"})  # no-op
        # Each member's copy is its own.
        await layer.group_add(group, b)
        await layer.group_send(group, {"type": "test.copy", "items": [1]})
        got_a = await layer.receive(a)
        got_a["items"].append(2)
        await _expect_next(
            layer,
            b,
            {"type": "test.copy", "items": [1]},
            "members share one message object",
        )


async def _check_group_many_members(make: MakeLayer, names: _Names) -> None:
    async with make() as layer:
        group = names("group")
        members = [await layer.new_channel() for _ in range(60)]
        for member in members:
            await layer.group_add(group, member)
        for n in range(3):
            await layer.group_send(group, {"type": "test.fanout", "n": n})
        for member in members:
            for n in range(3):
                await _expect_next(
                    layer,
                    member,
                    {"type": "test.fanout", "n": n},
                    "group_send to 60 members",
                )


async def _fill(layer: BaseChannelLayer, channel: str) -> int:
    capacity = layer.get_capacity(channel)
    for i in range(capacity):
        await layer.send(channel, {"type": "test.fill", "i": i})
    return capacity  # noqa: ASYNC910 - capacities are >= 1: the loop sent


async def _check_capacity(make: MakeLayer, names: _Names) -> None:
    async with make() as layer:
        ch = names("cap")
        capacity = await _fill(layer, ch)
        exc = await _raises(
            ChannelFull,
            lambda: layer.send(ch, {"type": "test.over"}),
            f"send beyond capacity {capacity}",
        )
        assert isinstance(exc, ChannelFull)
        _expect(
            exc.channel == ch, f"ChannelFull.channel is {exc.channel!r}, not {ch!r}"
        )
        _expect(
            exc.capacity == capacity,
            f"ChannelFull.capacity is {exc.capacity!r}, not {capacity}",
        )
        # group_send never raises ChannelFull; the full member's copy is dropped.
        group = names("group")
        spare = await layer.new_channel()
        await layer.group_add(group, ch)
        await layer.group_add(group, spare)
        await layer.group_send(group, {"type": "test.group.full"})
        await _expect_next(
            layer, spare, {"type": "test.group.full"}, "group_send with a full member"
        )
        got = [(await layer.receive(ch))["i"] for _ in range(capacity)]
        _expect(
            got == list(range(capacity)), "a full channel lost or reordered messages"
        )
        await _expect_empty(
            layer, ch, "a full member's group copy is dropped, not queued"
        )
        await layer.send(ch, {"type": "test.room"})  # room again after receiving
        await _expect_next(
            layer, ch, {"type": "test.room"}, "send after the channel drained"
        )


async def _check_channel_capacity(make: MakeLayer, names: _Names) -> None:
    if not _accepts_options(make):
        msg = "make_layer does not accept capacity=/channel_capacity=/expiry= keyword options"
        raise _Skip(msg)
    patterns = {
        f"battery.{names.run}.glob*": 2,
        re.compile(rf"battery\.{names.run}\.re"): 3,
    }
    async with make(capacity=5, channel_capacity=patterns) as layer:
        for prefix, expected in (("glob", 2), ("re", 3), ("plain", 5)):
            ch = names(prefix)
            _expect(
                layer.get_capacity(ch) == expected,
                f"get_capacity({ch!r}) is {layer.get_capacity(ch)}, not {expected}",
            )
            await _fill(layer, ch)
            exc = await _raises(
                ChannelFull,
                layer.send,
                f"channel_capacity for {ch!r}",
                ch,
                {"type": "test.over"},
            )
            assert isinstance(exc, ChannelFull)
            _expect(
                exc.capacity == expected,
                f"ChannelFull.capacity for {ch!r} is {exc.capacity}, not {expected}",
            )


async def _check_expiry(make: MakeLayer, names: _Names) -> None:
    if not _accepts_options(make):
        msg = "make_layer does not accept capacity=/channel_capacity=/expiry= keyword options"
        raise _Skip(msg)
    async with make(expiry=0.1) as layer:
        ch = names("exp")
        await layer.send(ch, {"type": "test.stale"})
        await anyio.sleep(0.25)
        await layer.send(ch, {"type": "test.fresh"})
        await _expect_next(
            layer, ch, {"type": "test.fresh"}, "an expired message is never delivered"
        )


async def _check_validation(make: MakeLayer, names: _Names) -> None:
    async with make() as layer:
        loose: Any = layer  # the checks pass deliberately ill-typed arguments
        good = names("ch")
        bad_channels: list[object] = [
            "",
            "a" * 100,
            "has space",
            "a!b!c",
            "!x",
            "chat\n",
            "caf\u00e9",
            "\u0663",
            123,
            None,
        ]
        for bad in bad_channels:
            exc = await _raises(
                InvalidChannelName,
                loose.send,
                f"send to {bad!r}",
                bad,
                {"type": "x"},
            )
            _expect(
                getattr(exc, "name", None) == bad,
                f"InvalidChannelName.name is {getattr(exc, 'name', None)!r}, not {bad!r}",
            )
            await _raises(
                InvalidChannelName,
                loose.receive,
                f"receive on {bad!r}",
                bad,
            )
            await _raises(
                InvalidChannelName,
                loose.group_add,
                f"group_add of {bad!r}",
                "g",
                bad,
            )
        longest = "c" * 99
        await layer.send(longest, {"type": "test.long"})
        await _expect_next(layer, longest, {"type": "test.long"}, "a 99-character name")
        for bad in ["g!x", "", "g" * 100, "bad group", 7]:
            exc = await _raises(
                InvalidGroupName,
                loose.group_add,
                f"group_add to {bad!r}",
                bad,
                good,
            )
            _expect(
                getattr(exc, "name", None) == bad,
                f"InvalidGroupName.name is {getattr(exc, 'name', None)!r}",
            )
            await _raises(
                InvalidGroupName,
                loose.group_send,
                f"group_send to {bad!r}",
                bad,
                {"type": "x"},
            )
            await _raises(
                InvalidGroupName,
                loose.group_discard,
                f"group_discard from {bad!r}",
                bad,
                good,
            )
        bad_messages: list[object] = [
            ["type", "x"],
            {"text": "no type"},
            {"type": 5},
            {"type": ""},
        ]
        for message in bad_messages:
            await _raises(
                InvalidMessage,
                loose.send,
                f"send of {message!r}",
                good,
                message,
            )
            await _raises(
                InvalidMessage,
                loose.group_send,
                f"group_send of {message!r}",
                "g",
                message,
            )
        payload = {"type": "test.bad", "payload": [1, 2, {3}]}
        for label, call in (
            ("send", lambda: layer.send(good, payload)),
            ("group_send", lambda: layer.group_send("g", payload)),
            ("send_many", lambda: layer.send_many([(good, payload)])),
        ):
            exc = await _raises(
                InvalidMessage, call, f"{label} of an unserialisable payload"
            )
            _expect(
                "message['payload'][2]" in str(exc),
                f"{label}: the error does not name message['payload'][2]: {exc}",
            )
        exc = await _raises(
            InvalidMessage,
            lambda: layer.send(good, {"type": "x", "k": {1: "int key"}}),
            "an int dict key",
        )
        _expect(
            "message['k']" in str(exc), f"the error does not name message['k']: {exc}"
        )
        await _expect_empty(layer, good, "rejected messages are not queued")


async def _check_flush(make: MakeLayer, names: _Names) -> None:
    async with make() as layer:
        ch, group = await layer.new_channel(), names("group")
        await layer.send(ch, {"type": "test.old"})
        await layer.group_add(group, ch)
        await layer.flush()
        await layer.group_send(group, {"type": "test.after.flush"})
        await _expect_empty(layer, ch, "flush drops queued messages and groups")
        await layer.send(ch, {"type": "test.works"})
        await _expect_next(
            layer, ch, {"type": "test.works"}, "the layer works after flush"
        )


async def _check_cancelled_receive(make: MakeLayer, names: _Names) -> None:
    async with make() as layer:
        ch = names("cancel")
        with anyio.move_on_after(0.01) as scope:
            await layer.receive(ch)
        _expect(scope.cancelled_caught, "receive on an empty channel returned")
        await layer.send(ch, {"type": "test.after.cancel"})
        await _expect_next(
            layer,
            ch,
            {"type": "test.after.cancel"},
            "a receive cancelled earlier took the message",
        )
        # Under load: a receiver whose deadlines keep expiring must still get every message once, in order.
        total = 300
        rng = random.Random(4)
        got: list[int] = []

        async def sender() -> None:  # noqa: ASYNC910 - a task body, not an API
            i = 0
            while i < total:
                try:
                    await layer.send(ch, {"type": "test.load", "i": i})
                except ChannelFull:
                    await anyio.sleep(0.001)
                else:
                    i += 1
                    if rng.random() < 0.3:
                        await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(sender)
            while len(got) < total:
                with anyio.move_on_after(
                    rng.choice((0, 0, 0.00001, 0.0001, 0.0005, 0.002))
                ):
                    got.append((await layer.receive(ch))["i"])
        _expect(
            got == list(range(total)),
            f"cancelled receives lost or duplicated messages: {len(got)} received, first gap near {next((i for i, v in enumerate(got) if v != i), None)}",
        )
        await _expect_empty(layer, ch, "after the load")


async def _check_competing_receivers(make: MakeLayer, names: _Names) -> None:
    async with make() as layer:
        ch = names("compete")
        total = min(60, layer.get_capacity(ch))
        got: list[int] = []
        done = anyio.Event()

        async def worker() -> None:
            while True:
                got.append((await layer.receive(ch))["i"])
                if len(got) >= total:
                    done.set()

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(worker)
            await anyio.wait_all_tasks_blocked()
            for i in range(total):
                await layer.send(ch, {"type": "test.compete", "i": i})
            await done.wait()
            tg.cancel_scope.cancel()
        _expect(
            sorted(got) == list(range(total)),
            f"competing receivers: {len(got)} deliveries for {total} messages",
        )
        await _expect_empty(layer, ch, "after competing receivers were cancelled")


async def _check_bulk(make: MakeLayer, names: _Names) -> None:
    async with make() as layer:
        a, b = names("bulk"), names("bulk")
        await layer.send_many(
            [
                (a, {"type": "m", "i": 0}),
                (b, {"type": "m", "i": 0}),
                (a, {"type": "m", "i": 1}),
            ]
        )
        await _expect_next(layer, a, {"type": "m", "i": 0}, "send_many")
        await _expect_next(layer, a, {"type": "m", "i": 1}, "send_many keeps order")
        await _expect_next(layer, b, {"type": "m", "i": 0}, "send_many")
        await layer.send_many([])
        await _raises(
            InvalidChannelName,
            lambda: layer.send_many([(a, {"type": "m"}), ("bad name", {"type": "m"})]),
            "send_many with a bad name",
        )
        await _expect_empty(
            layer, a, "send_many validates everything before queuing anything"
        )
        # A full channel does not stop the others; ChannelFull names it afterwards.
        full = names("bulkfull")
        capacity = await _fill(layer, full)
        exc = await _raises(
            ChannelFull,
            lambda: layer.send_many(
                [(full, {"type": "m"}), (b, {"type": "m", "i": 9})]
            ),
            "send_many to a full channel",
        )
        assert isinstance(exc, ChannelFull)
        _expect(
            exc.channel == full and exc.capacity == capacity,
            f"send_many raised {exc!r}",
        )
        await _expect_next(
            layer,
            b,
            {"type": "m", "i": 9},
            "send_many queues the messages whose channel has room",
        )
        g1, g2 = names("group"), names("group")
        await layer.group_add(g1, a)
        await layer.group_add(g2, a)
        await layer.group_add(g2, b)
        await layer.group_send_many(
            [(g1, {"type": "g", "n": 1}), (g2, {"type": "g", "n": 2})]
        )
        await _expect_next(layer, a, {"type": "g", "n": 1}, "group_send_many")
        await _expect_next(
            layer, a, {"type": "g", "n": 2}, "group_send_many keeps order"
        )
        await _expect_next(layer, b, {"type": "g", "n": 2}, "group_send_many")
        await _raises(
            InvalidGroupName,
            lambda: layer.group_send_many(
                [(g1, {"type": "g"}), ("bad!", {"type": "g"})]
            ),
            "group_send_many with a bad name",
        )
        await _expect_empty(
            layer, a, "group_send_many validates everything before sending"
        )


async def _check_receive_delivery(make: MakeLayer, names: _Names) -> None:
    async with make() as layer:
        ch = names("delivery")
        await layer.send(ch, {"type": "test.work", "n": 1})
        async with layer.receive_delivery(ch) as message:
            _expect(
                message == {"type": "test.work", "n": 1},
                f"receive_delivery gave {message!r}",
            )
        await _expect_empty(layer, ch, "after receive_delivery")


async def _check_statistics(make: MakeLayer, names: _Names) -> None:
    async with make() as layer:
        before = layer.statistics()
        _expect(
            isinstance(before, LayerStatistics),
            f"statistics() returned {type(before).__name__}",
        )
        ch = names("stats")
        for i in range(3):
            await layer.send(ch, {"type": "test.stats", "i": i})
        for _ in range(2):
            await layer.receive(ch)
        after = layer.statistics()
        _expect(
            after.messages_sent - before.messages_sent == 3,
            f"messages_sent went {before.messages_sent} -> {after.messages_sent} for 3 sends",
        )
        _expect(
            after.messages_received - before.messages_received == 2,
            f"messages_received went {before.messages_received} -> {after.messages_received} for 2 receives",
        )
        full, group = names("statsfull"), names("group")
        await _fill(layer, full)
        await layer.group_add(group, full)
        before = layer.statistics()
        await layer.group_send(group, {"type": "test.dropped"})
        layer.record_dropped(2)
        after = layer.statistics()
        _expect(
            after.messages_dropped - before.messages_dropped == 3,
            f"messages_dropped went {before.messages_dropped} -> {after.messages_dropped} (1 full member + record_dropped(2))",
        )


async def _check_closed(make: MakeLayer, names: _Names) -> None:
    async with make() as layer:
        ch = names("closed")
        outcome: list[BaseException | None] = []

        async def waiting_receiver() -> None:  # noqa: ASYNC910 - a task body, not an API
            try:
                await layer.receive(ch)
            except anyio.ClosedResourceError as exc:
                outcome.append(exc)
            else:
                outcome.append(None)

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiting_receiver)
            await anyio.wait_all_tasks_blocked()
            await layer.aclose()
        _expect(
            outcome and outcome[0] is not None,
            f"a pending receive was not woken with ClosedResourceError: {outcome!r}",
        )
        await layer.aclose()  # idempotent
        await layer.close()
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "send": lambda: layer.send(ch, {"type": "x"}),
            "receive": lambda: layer.receive(ch),
            "new_channel": lambda: layer.new_channel(),
            "group_add": lambda: layer.group_add("g", ch),
            "group_discard": lambda: layer.group_discard("g", ch),
            "group_send": lambda: layer.group_send("g", {"type": "x"}),
            "send_many": lambda: layer.send_many([(ch, {"type": "x"})]),
            "group_send_many": lambda: layer.group_send_many([("g", {"type": "x"})]),
            "flush": lambda: layer.flush(),
        }
        for name, call in calls.items():
            await _raises(anyio.ClosedResourceError, call, f"{name} after aclose()")


_CHECKS: Final[
    tuple[tuple[str, Callable[[MakeLayer, _Names], Awaitable[None]]], ...]
] = (
    ("send_receive", _check_send_receive),
    ("ordering", _check_ordering),
    ("new_channel", _check_new_channel),
    ("groups", _check_groups),
    ("group_many_members", _check_group_many_members),
    ("capacity", _check_capacity),
    ("channel_capacity", _check_channel_capacity),
    ("expiry", _check_expiry),
    ("validation", _check_validation),
    ("flush", _check_flush),
    ("cancelled_receive", _check_cancelled_receive),
    ("competing_receivers", _check_competing_receivers),
    ("bulk", _check_bulk),
    ("receive_delivery", _check_receive_delivery),
    ("statistics", _check_statistics),
    ("closed", _check_closed),
)


async def check_channel_layer(make_layer: MakeLayer) -> LayerCheckReport:
    """Run the channel-layer contract checks against fresh layers from ``make_layer``.

    Args:
        make_layer: returns an async context manager yielding a fresh, empty,
            open layer; called once per check. It must work with no arguments.
            If it also accepts ``capacity=``, ``channel_capacity=`` and
            ``expiry=`` keyword options (a layer class does, and so does a
            ``functools.partial`` of one), the ``channel_capacity`` and
            ``expiry`` checks run too; otherwise they are reported as skipped.

    Covers: send/receive and copy isolation, 1 MB messages, per-channel
    ordering, ``new_channel`` uniqueness and prefix, groups (idempotent add,
    discard, fan-out to 60 members, per-member copies), capacity and
    ``ChannelFull.channel``/``.capacity``, group_send dropping a full member's
    copy, ``channel_capacity`` globs and regexes, expiry, name and message
    validation (including an unserialisable payload rejected at send with the
    field named), flush, cancellation safety of ``receive`` under load,
    competing receivers, ``send_many``/``group_send_many``,
    ``receive_delivery``, statistics counters, and use after ``aclose()``.

    Runs on any anyio backend, in real time (about 0.5 s for the in-memory
    layer); each check has a 10 s deadline.

    Returns:
        which checks passed and which were skipped.

    Raises:
        AssertionError: the first failed check, with its name in a note.
    """
    names = _Names()
    passed: list[str] = []
    skipped: list[tuple[str, str]] = []
    for name, check in _CHECKS:
        try:
            with anyio.fail_after(_CHECK_TIMEOUT):
                await check(make_layer, names)
        except _Skip as exc:
            skipped.append((name, str(exc)))
            continue
        except Exception as exc:
            exc.add_note(f"in channel-layer check {name!r}")
            raise
        passed.append(name)
    # _CHECKS is a non-empty constant and its first check opens a layer and sends.
    return LayerCheckReport(passed=tuple(passed), skipped=tuple(skipped))  # noqa: ASYNC910
