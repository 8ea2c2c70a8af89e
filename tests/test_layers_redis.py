"""RedisChannelLayer against a real Redis server (``REDIS_URL``, default ``redis://127.0.0.1:6379/0``).

Every test uses its own key prefix and deletes only its own keys. Redis is
real, so time is real: deadlines are bounded with ``trio.fail_after``, never
``autojump_clock``. Extra servers (sharding, Sentinel, restarts) are
``redis-server`` subprocesses on ephemeral ports.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import coredis
import coredis.exceptions
import pytest
import trio
import trio.lowlevel
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from coredis.commands.constants import CommandName
from coredis.retry import NoRetryPolicy

from trichannels.exceptions import (
    ChannelFull,
    InvalidChannelLayerError,
    InvalidChannelName,
    LayerConnectionError,
    MessageTooLarge,
)
from trichannels.layers import redis as redis_layer
from trichannels.layers.redis import RedisChannelLayer, _redact
from trichannels.testing import check_channel_layer

pytestmark = pytest.mark.redis

REPO = Path(__file__).resolve().parent.parent
REDIS_SERVER = shutil.which("redis-server")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses."""
    return f"t{secrets.token_hex(5)}"


async def _delete_prefix(url: str, prefix: str) -> None:
    client = coredis.Redis.from_url(url, retry_policy=NoRetryPolicy(), pool_timeout=5)
    async with client:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.unlink(keys)


@pytest.fixture
async def redis(redis_url: str, prefix: str) -> AsyncIterator[coredis.Redis[bytes]]:
    """A plain coredis client on the test server; the test's keys are deleted afterwards."""
    client = coredis.Redis.from_url(
        redis_url, retry_policy=NoRetryPolicy(), pool_timeout=5
    )
    async with client:
        yield client
    await _delete_prefix(redis_url, prefix)


MakeLayer = Callable[..., RedisChannelLayer]

COREDIS_LEAKS = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning"
)
"""For tests with failed connection attempts: coredis leaks their memory streams (hazard H9)."""


@pytest.fixture
def collect_leaks() -> Iterator[None]:
    """Collect garbage at teardown, so that coredis's leaked streams are reported here (H9)."""
    yield
    gc.collect()


@pytest.fixture
def make_layer(redis_url: str, prefix: str, redis: coredis.Redis[bytes]) -> MakeLayer:
    """``make_layer(**options)``: a new (unopened) layer on the test server and prefix."""

    def make(**options: Any) -> RedisChannelLayer:
        options.setdefault("hosts", [redis_url])
        options.setdefault("prefix", prefix)
        return RedisChannelLayer(**options)

    return make


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, *, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            msg = f"redis-server on port {port} did not start"
            raise RuntimeError(msg)
        time.sleep(0.02)


@contextlib.contextmanager
def _redis_server(
    port: int, *extra: str, sentinel_config: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``redis-server`` on ``port`` (or a Sentinel with ``sentinel_config``) until exit."""
    if REDIS_SERVER is None:
        reason = "REDIS TESTS NOT RUN: redis-server is not installed (needed for extra servers)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true: Redis tests must not be skipped)")
        pytest.skip(reason)
    if sentinel_config is not None:
        argv = [REDIS_SERVER, str(sentinel_config), "--sentinel"]
    else:
        argv = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", *extra]
    process = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port)
        yield process
    finally:
        process.terminate()
        process.wait(5)


@pytest.fixture(scope="module")
def second_server(redis_url: str) -> Iterator[str]:
    """A second redis-server on an ephemeral port, for sharding."""
    port = _free_port()
    with _redis_server(port):
        yield f"redis://127.0.0.1:{port}/0"


async def _kill_by_name(client: coredis.Redis[bytes], *names: str) -> int:
    """``CLIENT KILL`` every connection whose client name starts with one of ``names``."""
    listing = await client.execute_command(
        client.create_request(CommandName.CLIENT_LIST, callback=lambda r, **_: r)
    )
    text = listing.decode() if isinstance(listing, bytes) else str(listing)
    killed = 0
    for line in text.splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        if fields.get("name", "").startswith(names):
            await client.execute_command(
                client.create_request(
                    CommandName.CLIENT_KILL,
                    b"ID",
                    fields["id"],
                    callback=lambda r, **_: r,
                )
            )
            killed += 1
    return killed


async def _kill_layer_connections(
    client: coredis.Redis[bytes], *layers: RedisChannelLayer
) -> int:
    """``CLIENT KILL`` every connection the given layers hold (found by client name)."""
    return await _kill_by_name(
        client, *(f"trichannels-{layer._proc[:12]}" for layer in layers)
    )


class _Lines:
    """Line reader over a subprocess's stdout."""

    def __init__(self, process: Process) -> None:
        assert process.stdout is not None
        self._stream = BufferedByteReceiveStream(process.stdout)

    async def next(self) -> str:
        return (await self._stream.receive_until(b"\n", 65536)).decode()


async def _wait_connected(layer: RedisChannelLayer) -> None:
    while not layer.redis_statistics().connected:  # noqa: ASYNC110 - no event to wait on
        await trio.sleep(0.01)


def _script_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# --------------------------------------------------------------------------- conformance


@pytest.mark.slow
@pytest.mark.parametrize("local_delivery", [True, False])
async def test_conformance_battery(make_layer: MakeLayer, local_delivery: bool) -> None:
    """The shared channel-layer battery passes against the real Redis server, nothing skipped.

    Run twice: with ``!`` channels delivered in-process (the default) and
    with every message going through Redis.
    """
    report = await check_channel_layer(
        functools.partial(make_layer, local_delivery=local_delivery)
    )
    assert report.skipped == ()
    assert "cancelled_receive" in report.passed


@pytest.mark.slow
def test_conformance_battery_on_asyncio(redis_url: str, prefix: str) -> None:
    """The battery passes on asyncio too: the layer is written against anyio, not trio.

    Every message goes through Redis (``local_delivery=False``), so the
    readers, the batcher and coredis all run on asyncio.
    """

    def make(**options: Any) -> RedisChannelLayer:
        return RedisChannelLayer(
            hosts=[redis_url], prefix=prefix, local_delivery=False, **options
        )

    async def body() -> None:
        try:
            report = await check_channel_layer(make)
            assert report.skipped == ()
        finally:
            await _delete_prefix(redis_url, prefix)

    anyio.run(body, backend="asyncio")


# --------------------------------------------------------------------------- basics


@pytest.mark.slow
async def test_ordering_per_sender_on_both_kinds_of_channel(
    make_layer: MakeLayer,
) -> None:
    """Three concurrent senders: each sender's messages arrive in order, on a normal and a ! channel."""
    async with make_layer(capacity=1000) as layer:
        local = await layer.new_channel()
        for channel in (local, "ordered"):

            async def sender(who: int, channel: str = channel) -> None:
                for i in range(100):
                    await layer.send(channel, {"type": "seq", "who": who, "i": i})

            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    for who in range(3):
                        nursery.start_soon(sender, who)
                got: dict[int, list[int]] = {0: [], 1: [], 2: []}
                for _ in range(300):
                    message = await layer.receive(channel)
                    got[message["who"]].append(message["i"])
            assert got == {who: list(range(100)) for who in range(3)}


async def _send_until_full(
    layer: RedisChannelLayer, channel: str
) -> tuple[int, ChannelFull]:
    """Send until ``ChannelFull``; return how many sends succeeded and the error."""
    sent = 0
    while True:
        try:
            await layer.send(channel, {"type": "fill", "i": sent})
        except ChannelFull as exc:
            return sent, exc
        sent += 1
        if sent >= 4:
            await trio.sleep(0.01)  # the flag reaches Redis one round trip later


async def test_local_channel_capacity_marks_channel_full(make_layer: MakeLayer) -> None:
    """Another process sends to a ! channel: its owner marks it full in Redis once its buffer fills.

    Sends succeed until the flag arrives (one round trip after the buffer
    filled); copies in that window are dropped and counted. The flag is
    cleared when the buffer drains to half.
    """
    options = {"channel_capacity": {"specific.*": 4}}
    async with make_layer(**options) as owner, make_layer(**options) as sender:
        channel = await owner.new_channel()
        with trio.fail_after(5):
            sent, full = await _send_until_full(sender, channel)
            assert (full.channel, full.capacity, sent >= 4) == (channel, 4, True)
            got = [(await owner.receive(channel))["i"] for _ in range(3)]
            assert got == [0, 1, 2]  # copies beyond the capacity were dropped
            while True:  # at half capacity the flag is cleared
                try:
                    await sender.send(channel, {"type": "room"})
                    break
                except ChannelFull:
                    await trio.sleep(0.01)
        dropped = sent - 4
        assert owner.redis_statistics().local_overflow == dropped
        assert owner.statistics().messages_dropped == dropped


async def test_local_delivery_capacity_is_exact(make_layer: MakeLayer) -> None:
    """A layer sending to its own ! channel delivers in-process: ChannelFull exactly at capacity."""
    async with make_layer(channel_capacity={"specific.*": 4}) as layer:
        channel = await layer.new_channel()
        await layer.send_many([(channel, {"type": "fill", "i": i}) for i in range(4)])
        with pytest.raises(ChannelFull, match=r"\(capacity 4\)$"):
            await layer.send(channel, {"type": "over"})
        await layer.group_add("g", channel)
        await layer.group_send(
            "g", {"type": "dropped"}
        )  # a full member's copy is dropped
        assert [(await layer.receive(channel))["i"] for _ in range(4)] == [0, 1, 2, 3]
        await layer.group_send("g", {"type": "room"})
        assert await layer.receive(channel) == {"type": "room"}
        assert layer.statistics().messages_dropped == 1


async def test_inbox_capacity_and_vanished_process(
    make_layer: MakeLayer, redis: coredis.Redis[bytes], prefix: str
) -> None:
    """A stalled process's inbox refuses sends at inbox_capacity; a gone process's sends are dropped."""
    stalled = "0" * 32
    await redis.xadd(f"{prefix}:{{p:{stalled}}}:in", {"t": "", "m": ""})
    async with make_layer(inbox_capacity=3) as layer:
        target = f"specific.{stalled}!abc"
        for i in range(2):  # the marker entry counts as one
            await layer.send(target, {"type": "x", "i": i})
        with pytest.raises(
            ChannelFull, match=rf"^channel '{target}' is full \(capacity 3\)$"
        ):
            await layer.send(target, {"type": "x"})
        before = layer.statistics().messages_dropped
        await layer.send(f"specific.{'1' * 32}!abc", {"type": "nobody home"})
        assert layer.statistics().messages_dropped == before + 1


@pytest.mark.slow
@pytest.mark.parametrize("local_delivery", [True, False])
async def test_expiry_of_local_and_group_messages(
    make_layer: MakeLayer, local_delivery: bool
) -> None:
    """Messages older than expiry are never delivered, whether they wait in Redis or locally.

    (A stream whose key outlives its TTL vanishes whole; only expiry this
    process observes is counted.)
    """
    async with make_layer(expiry=0.3, local_delivery=local_delivery) as layer:
        local = await layer.new_channel()
        await layer.send(local, {"type": "stale"})
        await layer.group_add("g", "worker")
        await layer.group_send("g", {"type": "stale"})
        await trio.sleep(0.5)
        await layer.send(local, {"type": "fresh"})
        await layer.group_send("g", {"type": "fresh"})
        with trio.fail_after(5):
            assert await layer.receive(local) == {"type": "fresh"}
            assert await layer.receive("worker") == {"type": "fresh"}
        assert layer.statistics().messages_expired >= 1


@pytest.mark.slow
async def test_group_expiry_and_refresh(make_layer: MakeLayer) -> None:
    """A membership lasts group_expiry after its latest group_add."""
    async with make_layer(group_expiry=0.4) as layer:
        stays, goes = await layer.new_channel(), await layer.new_channel()
        await layer.group_add("room", stays)
        await layer.group_add("room", goes)
        await trio.sleep(0.25)
        await layer.group_add("room", stays)  # refreshed
        await trio.sleep(0.25)
        await layer.group_send("room", {"type": "hello"})
        with trio.fail_after(5):
            assert await layer.receive(stays) == {"type": "hello"}
            await layer.send(goes, {"type": "sentinel"})
            assert await layer.receive(goes) == {"type": "sentinel"}


@pytest.mark.slow
async def test_flush_touches_only_its_prefix(
    make_layer: MakeLayer, redis: coredis.Redis[bytes], prefix: str
) -> None:
    """flush() deletes the layer's keys (SCAN, in batches) and nothing under another prefix."""
    other = f"{prefix}x"
    await redis.set(f"{other}:keep", "1")
    try:
        async with make_layer() as layer:
            await redis.mset({f"{prefix}:junk{i}": "1" for i in range(1200)})
            await layer.send("work", {"type": "x"})
            await layer.flush()
            assert await redis.exists([f"{other}:keep"]) == 1
            remaining = [k async for k in redis.scan_iter(match=f"{prefix}:*")]
            assert all(k.endswith(b":in") for k in remaining), remaining
            await layer.send("work", {"type": "after"})
            with trio.fail_after(5):
                assert await layer.receive("work") == {"type": "after"}
    finally:
        await redis.delete([f"{other}:keep"])


# --------------------------------------------------------------------------- validation


def test_configuration_errors(redis_url: str) -> None:
    """Bad options fail at construction with a message naming the option (and no password)."""
    cases: list[tuple[dict[str, Any], str]] = [
        ({"hosts": []}, r"^hosts is empty; give at least one Redis URL$"),
        (
            {"hosts": "http://x"},
            r"^Redis URL 'http://x' has scheme 'http'; expected redis://, rediss://, unix:// or sentinel://$",
        ),
        (
            {"hosts": "redis://:hunter2@h:99999/0"},
            r"^Redis URL 'redis://:\*\*\*@h:99999/0' has an invalid port$",
        ),
        (
            {"hosts": [redis_url, redis_url]},
            r"^hosts lists redis://127\.0\.0\.1:6379/0 more than once$",
        ),
        ({"hosts": [{"address": redis_url, "nope": 1}]}, r"unknown option\(s\) nope"),
        (
            {"hosts": [{"sentinels": [("h", 1)]}]},
            r"^a Sentinel host needs 'master_name' \(the monitored service\)$",
        ),
        (
            {"prefix": "bad prefix"},
            r"^prefix is 'bad prefix'; it must be 1 to 64 ASCII letters",
        ),
        (
            {"symmetric_encryption_keys": "one-key"},
            r"^symmetric_encryption_keys must be a list of keys",
        ),
        ({"symmetric_encryption_keys": []}, r"^symmetric_encryption_keys is empty"),
        (
            {"visibility_timeout": 0},
            r"^visibility_timeout is 0, which is not a positive finite number$",
        ),
        ({"inbox_capacity": 0}, r"^inbox_capacity is 0, which is not an int >= 1$"),
        (
            {"channel_delivery": {"x": "exactly-once"}},
            r"channel_delivery\['x'\] is 'exactly-once'",
        ),
    ]
    for options, pattern in cases:
        with pytest.raises(InvalidChannelLayerError, match=pattern):
            RedisChannelLayer(**options)


def test_redact_hides_passwords() -> None:
    """Passwords never reach logs or error messages."""
    assert _redact("redis://user:pw@host:6379/0") == "redis://user:***@host:6379/0"
    assert _redact("rediss://:pw@host/1") == "rediss://:***@host/1"
    assert _redact("redis://host:6379") == "redis://host:6379"
    assert (
        _redact("sentinel://:pw@a:1,b:2/mymaster") == "sentinel://:***@a:1,b:2/mymaster"
    )


async def test_operational_errors(make_layer: MakeLayer) -> None:
    """Unopened layers, foreign ! channels and oversize messages raise specific errors."""
    layer = make_layer(max_message_size=1000)
    with pytest.raises(
        InvalidChannelLayerError, match=r"^RedisChannelLayer is not open"
    ):
        await layer.send("x", {"type": "x"})
    async with layer:
        foreign = f"specific.{'f' * 32}!abc"
        with pytest.raises(
            InvalidChannelName,
            match=r"is a process-specific channel of another layer instance",
        ):
            await layer.receive(foreign)
        with pytest.raises(
            MessageTooLarge,
            match=r"^message of \d+ bytes exceeds the limit of 1000 bytes$",
        ):
            await layer.send("x", {"type": "x", "blob": b"x" * 2000})


@COREDIS_LEAKS
async def test_passwords_are_never_shown(
    prefix: str, caplog: pytest.LogCaptureFixture, collect_leaks: None
) -> None:
    """A refused AUTH fails the open with LayerConnectionError; no password appears anywhere."""
    right, wrong = "right-" + secrets.token_hex(4), "wrong-" + secrets.token_hex(4)
    port = _free_port()
    with _redis_server(port, "--requirepass", right), caplog.at_level(logging.DEBUG):
        layer = RedisChannelLayer(
            hosts=[f"redis://:{wrong}@127.0.0.1:{port}/0"], prefix=prefix
        )
        with pytest.raises(LayerConnectionError) as info:
            async with layer:
                pass
        async with RedisChannelLayer(
            hosts=[f"redis://:{right}@127.0.0.1:{port}/0"], prefix=prefix
        ) as good:
            channel = await good.new_channel()
            await good.send(channel, {"type": "authenticated"})
            with trio.fail_after(5):
                assert await good.receive(channel) == {"type": "authenticated"}
    assert str(info.value).startswith(
        f"Redis redis://127.0.0.1:{port}/0 failed while connecting: "
    )
    text = f"{info.value} {info.value.__cause__!r} {caplog.text}"
    assert wrong not in text
    assert right not in text


# --------------------------------------------------------------------------- cancellation safety


async def _cancelled_receivers(
    layer: RedisChannelLayer, channel: str, rng: random.Random, total: int
) -> tuple[list[int], int]:
    """Send ``total`` messages while 4 receivers with random deadlines take them."""
    got: list[int] = []
    cancelled = 0

    async def receiver() -> None:
        nonlocal cancelled
        while len(got) < total:
            with trio.move_on_after(rng.choice((0, 0.0001, 0.001, 0.003))) as scope:
                got.append((await layer.receive(channel))["i"])
            cancelled += scope.cancelled_caught

    async def sender() -> None:
        for start in range(0, total, 100):
            batch = [
                (channel, {"type": "load", "i": i}) for i in range(start, start + 100)
            ]
            await layer.send_many(batch)
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(receiver)
        nursery.start_soon(sender)
    return got, cancelled


@pytest.mark.slow
async def test_receive_cancellation_safe_under_load(make_layer: MakeLayer) -> None:
    """3000 messages, 4 receivers per channel cancelled at random: every message exactly once.

    Receivers wait on local memory streams, never on Redis: the shared
    client's pool keeps all its slots (no cancelled blocking read, H1).
    """
    rng = random.Random(7)
    async with make_layer(capacity=10_000, local_delivery=False) as layer:
        local = await layer.new_channel()
        write_pool = layer._shards[0].write.connection_pool  # type: ignore[union-attr]
        slots_before = len(write_pool._available_connections)
        for channel in (local, "load"):
            with trio.fail_after(20):
                got, cancelled = await _cancelled_receivers(layer, channel, rng, 1500)
            assert sorted(got) == list(range(1500)), (
                f"{len(got)} received, {len(set(got))} distinct"
            )
            assert cancelled > 100
        assert len(write_pool._available_connections) == slots_before


# --------------------------------------------------------------------------- encryption


async def test_encryption_round_trip_rotation_and_tampering(
    make_layer: MakeLayer,
    redis: coredis.Redis[bytes],
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Bodies are encrypted at rest; rotated keys still decrypt; a tampered body is rejected, logged, counted."""
    async with (
        make_layer(symmetric_encryption_keys=["old"]) as old,
        make_layer(symmetric_encryption_keys=["new", "old"]) as new,
        make_layer(symmetric_encryption_keys=["other"]) as stranger,
    ):
        await old.send("enc", {"type": "secret", "text": "plaintext-marker"})
        raw = await redis.xrange(f"{prefix}:{{c:enc}}")
        assert b"plaintext-marker" not in raw[0].field_values[b"m"]
        with trio.fail_after(5):
            assert await new.receive("enc") == {
                "type": "secret",
                "text": "plaintext-marker",
            }
            # Rotation: "new" encrypts with its first key; "old" cannot read that,
            # "new" reads what "old" encrypts.
            mine, theirs = await new.new_channel(), await old.new_channel()
            await old.send(mine, {"type": "from old"})
            assert await new.receive(mine) == {"type": "from old"}
            await new.send(theirs, {"type": "from new"})
            await new.send(theirs, {"type": "undecryptable"})
            while old.redis_statistics().rejected < 2:  # noqa: ASYNC110
                await trio.sleep(0.01)
            await new.send(theirs, {"type": "nothing was delivered"})
            await old.send(theirs, {"type": "sentinel"})  # in-process: not via Redis
            assert await old.receive(theirs) == {"type": "sentinel"}
        # Tampered and foreign-key bodies are rejected before any receiver sees them.
        await redis.xadd(f"{prefix}:{{c:enc}}", {"m": b"gAAAAAtampered"})
        await stranger.send("enc", {"type": "foreign"})
        await old.send("enc", {"type": "genuine"})
        with caplog.at_level(logging.WARNING), trio.fail_after(5):
            assert await new.receive("enc") == {"type": "genuine"}
        assert new.redis_statistics().rejected == 2
        assert new.statistics().messages_dropped == 2
        assert caplog.text.count("rejected a message on enc: it failed decryption") == 2


# --------------------------------------------------------------------------- connection loss


async def _send_through_kills(
    redis: coredis.Redis[bytes],
    sender: RedisChannelLayer,
    receiver: RedisChannelLayer,
    channel: str,
) -> tuple[set[int], list[int]]:
    """Send 600 messages while every connection of both layers is killed twice."""
    accepted: set[int] = set()
    got: list[int] = []

    async def send_all() -> None:
        for i in range(600):
            try:
                await sender.send(channel, {"type": "n", "i": i})
            except LayerConnectionError:
                continue  # not accepted (or unknown): may or may not arrive
            accepted.add(i)
            if i % 50 == 0:
                await trio.sleep(0.005)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_all)
        await trio.sleep(0.05)
        assert await _kill_layer_connections(redis, receiver, sender) >= 2
        await trio.sleep(0.05)
        await _kill_layer_connections(redis, receiver, sender)
    while not accepted <= set(got):
        got.append((await receiver.receive(channel))["i"])
    with trio.move_on_after(0.2):  # and nothing more than once
        while True:
            got.append((await receiver.receive(channel))["i"])
    return accepted, got


@pytest.mark.slow
async def test_reconnect_after_client_kill_loses_nothing_accepted(
    make_layer: MakeLayer, redis: coredis.Redis[bytes]
) -> None:
    """CLIENT KILL of every connection mid-stream: each message whose send returned arrives exactly once."""
    async with (
        make_layer(capacity=10_000) as receiver,
        make_layer(capacity=10_000) as sender,
    ):
        local = await receiver.new_channel()
        for channel in (local, "survivor"):
            with trio.fail_after(20):
                accepted, got = await _send_through_kills(
                    redis, sender, receiver, channel
                )
            assert len(got) == len(set(got)), "a message was delivered twice"
            assert accepted <= set(got)
            assert len(accepted) > 500
        with trio.fail_after(5):  # the last kill may still be in its reconnect backoff
            await _wait_connected(receiver)
        assert receiver.redis_statistics().reconnects >= 1


@pytest.mark.slow
@COREDIS_LEAKS
async def test_reconnect_deadline_and_recovery(
    prefix: str, collect_leaks: None
) -> None:
    """With the server down, a receive fails after reconnect_deadline; after a restart the layer works again."""
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with _redis_server(port) as server:
        layer = RedisChannelLayer(
            hosts=[url], prefix=prefix, reconnect_deadline=0.5, connect_timeout=0.3
        )
        async with layer:
            channel = await layer.new_channel()
            server.terminate()
            server.wait(5)
            started = time.monotonic()
            with (
                trio.fail_after(6),
                pytest.raises(
                    LayerConnectionError, match=r"reconnecting for over 0\.5 s"
                ),
            ):
                await layer.receive(channel)
            assert time.monotonic() - started < 4
            assert not layer.redis_statistics().connected
            with _redis_server(port):
                with trio.fail_after(10):
                    await _wait_connected(layer)
                    await layer.send(channel, {"type": "back"})
                    assert await layer.receive(channel) == {"type": "back"}


# --------------------------------------------------------------------------- sharding


def _layers_on_each_shard(
    make: Callable[[], RedisChannelLayer], shards: int
) -> list[RedisChannelLayer]:
    """Make layers until there is one whose inbox lives on each shard."""
    found: dict[int, RedisChannelLayer] = {}
    for _ in range(64):
        layer = make()
        found.setdefault(layer._inbox_shard.index, layer)
        if len(found) == shards:
            return [found[i] for i in range(shards)]
    raise AssertionError("consistent hashing never used one of the shards")


@pytest.mark.slow
async def test_sharding_two_hosts(
    make_layer: MakeLayer, redis_url: str, second_server: str, prefix: str
) -> None:
    """Normal channels, ! channels (channels#1492) and groups all find the right one of two hosts."""
    hosts = [redis_url, second_server]
    receivers = _layers_on_each_shard(lambda: make_layer(hosts=hosts), 2)
    try:
        async with (
            make_layer(hosts=hosts) as sender,
            receivers[0] as r0,
            receivers[1] as r1,
        ):
            # ! channels: one process's inbox on each shard; sends from a third process arrive.
            locals_ = [await r.new_channel() for r in (r0, r1) for _ in range(5)]
            for i, channel in enumerate(locals_):
                await sender.send(channel, {"type": "direct", "i": i})
            with trio.fail_after(5):
                for i, channel in enumerate(locals_):
                    owner = r0 if channel in r0._local else r1
                    assert await owner.receive(channel) == {"type": "direct", "i": i}
            for index, r in enumerate((r0, r1)):
                client = coredis.Redis.from_url(hosts[index], pool_timeout=5)
                async with client:
                    assert await client.exists([r._inbox_key]) == 1
            # Normal channels spread over both hosts.
            names = [f"work{i}" for i in range(40)]
            await sender.send_many([(n, {"type": "w", "n": n}) for n in names])
            used = {sender._shard_for(n).index for n in names}
            assert used == {0, 1}
            with trio.fail_after(10):
                for n in names:
                    assert await r1.receive(n) == {"type": "w", "n": n}
            # A group with members on both shards: one script per host.
            for channel in locals_:
                await sender.group_add("everyone", channel)
            await sender.group_add("everyone", "work0")
            await sender.group_send("everyone", {"type": "all"})
            with trio.fail_after(5):
                for channel in locals_:
                    owner = r0 if channel in r0._local else r1
                    assert await owner.receive(channel) == {"type": "all"}
                assert await r0.receive("work0") == {"type": "all"}
            assert sender.statistics().messages_sent == 10 + 40 + 11
    finally:
        await _delete_prefix(second_server, prefix)


# --------------------------------------------------------------------------- at-least-once

WORKER_SCRIPT = r"""
import sys, trio
from trichannels.layers.redis import RedisChannelLayer

async def main(url, prefix, channel):
    layer = RedisChannelLayer(
        hosts=[url], prefix=prefix, channel_delivery={channel: "at-least-once"},
        visibility_timeout=0.5,
    )
    async with layer:
        print("ready", flush=True)
        async with layer.receive_delivery(channel) as message:
            print("got", message["n"], flush=True)
            await trio.sleep_forever()

trio.run(main, *sys.argv[1:])
"""


@pytest.mark.slow
async def test_at_least_once_redelivery_after_sigkill(
    make_layer: MakeLayer, redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker process killed with SIGKILL mid-message: another worker gets it after the visibility timeout."""
    command = [sys.executable, "-c", WORKER_SCRIPT, redis_url, prefix, "thumbnails"]
    async with make_layer(
        channel_delivery={"thumb*": "at-least-once"}, visibility_timeout=0.5
    ) as layer:
        process = await anyio.open_process(
            command, env=_script_env(), stderr=subprocess.DEVNULL
        )
        try:
            lines = _Lines(process)
            with trio.fail_after(15):
                assert await lines.next() == "ready"
                await layer.send("thumbnails", {"type": "thumb", "n": 1})
                assert await lines.next() == "got 1"
        finally:
            process.send_signal(signal.SIGKILL)
            await process.wait()
            await process.aclose()
        killed_at = time.monotonic()
        with caplog.at_level(logging.INFO), trio.fail_after(5):
            async with layer.receive_delivery("thumbnails") as message:
                assert message == {"type": "thumb", "n": 1}
        assert time.monotonic() - killed_at >= 0.3  # not before the visibility timeout
        assert "redelivering thumbnails entry" in caplog.text
        assert "(delivery 2)" in caplog.text
        await layer.send("thumbnails", {"type": "sentinel"})
        with trio.fail_after(5):
            assert await layer.receive("thumbnails") == {
                "type": "sentinel"
            }  # acknowledged: not redelivered


@pytest.mark.slow
async def test_dead_letter_after_max_deliveries(make_layer: MakeLayer) -> None:
    """A handler that keeps failing: delivered max_deliveries times, then dead-lettered."""
    options = {
        "channel_delivery": {"jobs": "at-least-once"},
        "visibility_timeout": 0.2,
        "max_deliveries": 2,
    }
    attempts = 0

    async def failing_handler(layer: RedisChannelLayer) -> None:
        nonlocal attempts
        async with layer.receive_delivery("jobs") as message:
            attempts += 1
            assert message == {"type": "poison"}
            raise RuntimeError("handler failed")

    async with make_layer(**options) as layer:
        await layer.send("jobs", {"type": "poison"})
        with trio.fail_after(8):
            for _ in range(2):
                with pytest.raises(RuntimeError, match=r"^handler failed$"):
                    await failing_handler(layer)
            while not await layer.dead_letters("jobs"):
                with trio.move_on_after(0.1):
                    await failing_handler(layer)
        assert attempts == 2
        [dead] = await layer.dead_letters("jobs")
        assert (dead.message, dead.deliveries) == ({"type": "poison"}, 2)
        assert layer.redis_statistics().dead_lettered == 1


@pytest.mark.slow
async def test_at_least_once_ack_and_lease_renewal(make_layer: MakeLayer) -> None:
    """A handler slower than visibility_timeout keeps its lease; a clean exit acknowledges."""
    async with (
        make_layer(
            channel_delivery={"slow": "at-least-once"}, visibility_timeout=0.15
        ) as layer,
        make_layer(
            channel_delivery={"slow": "at-least-once"}, visibility_timeout=0.15
        ) as other,
    ):
        await layer.send("slow", {"type": "long job"})
        with trio.fail_after(5):
            async with layer.receive_delivery("slow") as message:
                assert message == {"type": "long job"}
                with trio.move_on_after(
                    0.4
                ) as stolen:  # another worker must not get it meanwhile
                    await other.receive("slow")
                assert stolen.cancelled_caught
            await layer.send("slow", {"type": "next"})
            assert await other.receive("slow") == {"type": "next"}


async def _strand_one(
    layer: RedisChannelLayer, other: RedisChannelLayer, channel: str
) -> None:
    """Make ``layer`` fetch one entry of ``channel`` for a receiver that then leaves.

    The "receiver" is simulated by the reader's demand counter, so that the
    fetch certainly happens after it is gone: a race a real cancelled
    receive only sometimes wins.
    """
    with trio.move_on_after(0.2):
        await layer.receive(channel)  # starts the channel's reader, then leaves
    layer._workers[channel].waiting += 1
    layer._workers[channel].demand.set()
    await other.send(channel, {"type": "orphan"})
    with trio.fail_after(5):
        while not layer.statistics().queued_messages:  # noqa: ASYNC110
            await trio.sleep(0.01)
    layer._workers[channel].waiting -= 1
    layer._workers[channel].demand.set()  # as a leaving receiver does


async def test_at_most_once_take_never_takes_a_claimed_entry(
    make_layer: MakeLayer, redis: coredis.Redis[bytes], prefix: str
) -> None:
    """The at-most-once hand-over script acknowledges only entries this process still owns.

    An entry another process claimed (its fetcher was cut off past
    visibility_timeout) is left to that process, so nobody delivers it twice.
    """
    key = f"{prefix}:{{c:owned}}"
    await redis.xgroup_create(key, "w", "0", mkstream=True)
    entry = await redis.xadd(key, {"m": "x"})
    await redis.xreadgroup("w", "someone-else", {key: ">"}, count=1)
    async with make_layer() as layer:
        shard = layer._shards[0]
        take = functools.partial(layer._run, shard, "testing", "take", [key])
        assert await take([layer._proc, entry]) == [-1]  # another consumer's
        await redis.xclaim(key, "w", layer._proc, 0, [entry])
        assert await take([layer._proc, entry]) == [1]  # ours: taken
        assert await take([layer._proc, entry]) == [0]  # gone
        assert await redis.xlen(key) == 0


@pytest.mark.slow
async def test_stranded_message_is_requeued(
    make_layer: MakeLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry fetched for a receiver that left goes back to Redis: after the hand-off
    grace if no other local receiver comes, or when the layer closes."""
    monkeypatch.setattr(redis_layer, "_HANDOFF_GRACE", 0.1)
    async with make_layer() as other:
        async with make_layer() as layer:
            await _strand_one(layer, other, "handoff")
            with trio.fail_after(5):
                assert await other.receive("handoff") == {"type": "orphan"}
            assert layer.redis_statistics().requeued == 1
            await _strand_one(layer, other, "closing")
        assert layer.redis_statistics().requeued == 2
        with trio.fail_after(5):
            assert await other.receive("closing") == {"type": "orphan"}


# --------------------------------------------------------------------------- two processes

MEMBER_SCRIPT = r"""
import json, sys, trio
from trichannels.layers.redis import RedisChannelLayer

async def main(url, prefix, group):
    async with RedisChannelLayer(hosts=[url], prefix=prefix) as layer:
        channel = await layer.new_channel()
        await layer.group_add(group, channel)
        print("ready", flush=True)
        with trio.fail_after(10):
            message = await layer.receive(channel)
        print(json.dumps(message), flush=True)

trio.run(main, *sys.argv[1:])
"""


@pytest.mark.slow
async def test_group_message_reaches_members_in_two_processes(
    make_layer: MakeLayer, redis_url: str, prefix: str
) -> None:
    """Two processes on one Redis: one group_send reaches a member in each."""
    command = [sys.executable, "-c", MEMBER_SCRIPT, redis_url, prefix, "lobby"]
    async with make_layer() as layer:
        mine = await layer.new_channel()
        await layer.group_add("lobby", mine)
        process = await anyio.open_process(
            command, env=_script_env(), stderr=subprocess.DEVNULL
        )
        async with process:
            lines = _Lines(process)
            with trio.fail_after(15):
                assert await lines.next() == "ready"
                await layer.group_send(
                    "lobby", {"type": "chat.message", "text": "hi both"}
                )
                assert json.loads(await lines.next()) == {
                    "type": "chat.message",
                    "text": "hi both",
                }
                assert await layer.receive(mine) == {
                    "type": "chat.message",
                    "text": "hi both",
                }
                assert await process.wait() == 0


# --------------------------------------------------------------------------- Sentinel


@pytest.mark.slow
async def test_sentinel_discovers_the_primary(tmp_path: Path, prefix: str) -> None:
    """A sentinel:// URL: the layer asks Sentinel for the primary and works through it."""
    primary, sentinel = _free_port(), _free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {sentinel}\nbind 127.0.0.1\nsentinel monitor svc 127.0.0.1 {primary} 1\n"
    )
    with _redis_server(primary), _redis_server(sentinel, sentinel_config=config):
        url = f"sentinel://127.0.0.1:{sentinel}/svc/0"
        async with RedisChannelLayer(hosts=url, prefix=prefix) as layer:
            channel = await layer.new_channel()
            await layer.group_add("g", channel)
            await layer.group_send("g", {"type": "via sentinel"})
            with trio.fail_after(5):
                assert await layer.receive(channel) == {"type": "via sentinel"}
            assert layer._hosts[0].label == "sentinel:svc/0"


# --------------------------------------------------------------------------- coredis hazards


@pytest.mark.slow
@pytest.mark.coredis_hazard
async def test_hazard_cancelled_blocking_read_leaks_pool_slot(redis_url: str) -> None:
    """H1: every cancelled blocking read loses its pool slot; with the pool empty commands time out.

    Why the layer runs blocking reads only in long-lived reader tasks, on
    their own clients, and always sets pool_timeout.
    """
    client = coredis.Redis.from_url(
        redis_url, max_connections=2, pool_timeout=0.2, retry_policy=NoRetryPolicy()
    )
    async with client:
        for _ in range(2):
            with trio.move_on_after(0.05):
                await client.xread({"hazard:none": "$"}, block=1000)
        with trio.fail_after(2), pytest.raises(TimeoutError):
            await client.ping()


@pytest.mark.slow
@pytest.mark.coredis_hazard
async def test_hazard_killed_blocking_read_leaks_pool_slot(
    redis_url: str, redis: coredis.Redis[bytes]
) -> None:
    """H1b: a connection killed under a blocking read is not returned either.

    Why each reader rebuilds its client after any connection error.
    """
    name = f"hazard-h1b-{secrets.token_hex(4)}"
    client = coredis.Redis.from_url(
        redis_url,
        max_connections=1,
        pool_timeout=0.2,
        retry_policy=NoRetryPolicy(),
        client_name=name,
    )
    async with client:
        async with trio.open_nursery() as nursery:

            async def blocked_read() -> None:
                with pytest.raises(coredis.exceptions.ConnectionError):
                    await client.xread({"hazard:none": "$"}, block=2000)

            nursery.start_soon(blocked_read)
            await trio.sleep(0.1)
            assert await _kill_by_name(redis, name) == 1
        with trio.fail_after(2), pytest.raises(TimeoutError):
            await client.ping()


_SLOW_XADD = """
local t0 = redis.call('TIME')
local start = tonumber(t0[1]) * 1000000 + tonumber(t0[2])
while true do
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000000 + tonumber(t[2]) - start > 30000 then break end
end
return redis.call('XADD', KEYS[1], '*', 'n', '1')
"""


async def _write_while_read_is_cancelled(client: coredis.Redis[bytes], key: str) -> str:
    """One slow XADD (30 ms in Lua) while a blocking read on the same client is cancelled."""
    outcome = "ok"

    async def writer() -> None:
        nonlocal outcome
        try:
            await client.eval(_SLOW_XADD, [key], [])
        except coredis.exceptions.ConnectionError:
            outcome = "ConnectionError"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.sleep(
            0.005
        )  # the XADD is in flight; its connection went back to the pool
        with trio.move_on_after(
            0.01
        ):  # the read takes that connection, and is cancelled
            await client.xread({f"{key}:none": "$"}, block=1000)
    return outcome


@pytest.mark.slow
@pytest.mark.coredis_hazard
@COREDIS_LEAKS
async def test_hazard_retry_policy_duplicates_a_write(
    redis_url: str, prefix: str, redis: coredis.Redis[bytes], collect_leaks: None
) -> None:
    """H2: a cancelled blocking read tears down the connection an in-flight write shares;
    coredis's default retry policy sends the write again: one XADD, two entries.

    Why the layer's clients have no retry policy (the write then fails with
    ConnectionError: applied or not, the caller is told) and blocking reads
    have clients of their own.
    """
    results: dict[bool, list[tuple[str, int]]] = {True: [], False: []}
    for retrying in (True, False):
        options: dict[str, Any] = {} if retrying else {"retry_policy": NoRetryPolicy()}
        for attempt in range(6):  # the race is timing-dependent: usually hit at once
            key = f"{prefix}:h2:{retrying}:{attempt}"
            client = coredis.Redis.from_url(
                redis_url, max_connections=2, pool_timeout=2, **options
            )
            async with client:
                with trio.fail_after(5):
                    outcome = await _write_while_read_is_cancelled(client, key)
                    await trio.sleep(0.1)  # let a retried write finish
            results[retrying].append((outcome, await redis.xlen(key)))
            if results[retrying][-1] in {("ok", 2), ("ConnectionError", 1)}:
                break
    assert ("ok", 2) in results[True], results  # reported success, written twice
    assert all(n <= 1 for _, n in results[False]), results  # never written twice
    assert ("ConnectionError", 1) in results[False], results  # the caller hears of it


@pytest.mark.coredis_hazard
async def test_hazard_time_misscales_microseconds(redis: coredis.Redis[bytes]) -> None:
    """H3: Redis.time() turns the microseconds into thousandths of that; the layer uses Lua TIME."""
    for _ in range(3):
        now = await redis.time()
        assert now.microsecond < 1000


@pytest.mark.coredis_hazard
async def test_hazard_pending_entry_of_deleted_entry_crashes_parser(
    redis: coredis.Redis[bytes], prefix: str
) -> None:
    """H6: xreadgroup() on the pending list raises TypeError when an entry was trimmed.

    Why the layer sends XREADGROUP/XREAD raw and parses the reply itself.
    """
    key = f"{prefix}:h6"
    await redis.xgroup_create(key, "w", "0", mkstream=True)
    await redis.xadd(key, {"m": "a"})
    await redis.xadd(key, {"m": "b"})
    await redis.xreadgroup("w", "c", {key: ">"}, count=10)
    await redis.xtrim(key, coredis.PureToken.MAXLEN, 1)
    with pytest.raises(TypeError):
        await redis.xreadgroup("w", "c", {key: "0"}, count=10)


@pytest.mark.coredis_hazard
async def test_hazard_errors_leave_client_block_as_exception_groups(
    redis_url: str,
) -> None:
    """H7: anything raised inside ``async with client:`` comes out wrapped in an ExceptionGroup.

    Why the readers catch Redis errors inside the client block.
    """
    client = coredis.Redis.from_url(redis_url, retry_policy=NoRetryPolicy())
    with pytest.RaisesGroup(KeyError):
        async with client:
            raise KeyError("inside")


@pytest.mark.coredis_hazard
async def test_hazard_cancelled_connect_becomes_connection_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """H8: cancelling a connection attempt raises ConnectionError (and logs an ERROR), not Cancelled.

    Why the readers let a pending cancellation win before reporting a lost connection.
    """

    async def silent_server(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(
            functools.partial(trio.serve_tcp, silent_server, 0, host="127.0.0.1")
        )
        port = listener.socket.getsockname()[1]
        client = coredis.Redis(
            host="127.0.0.1", port=port, retry_policy=NoRetryPolicy(), connect_timeout=5
        )
        with caplog.at_level(logging.ERROR, logger="coredis"):
            async with client:
                with (
                    trio.move_on_after(0.2) as scope,
                    pytest.raises(coredis.exceptions.ConnectionError),
                ):
                    await client.ping()
        assert not scope.cancelled_caught  # the deadline's Cancelled was replaced
        assert "Connection attempt failed unexpectedly!" in caplog.text
        nursery.cancel_scope.cancel()


@pytest.mark.coredis_hazard
def test_hazard_failed_connect_leaks_unclosed_streams() -> None:
    """H9: each failed connection attempt leaves coredis's internal memory streams unclosed.

    They warn (ResourceWarning) when collected, so the tests that make
    connections fail collect garbage themselves and ignore those warnings.
    """

    async def attempt() -> None:
        client = coredis.Redis(
            host="127.0.0.1", port=_free_port(), retry_policy=NoRetryPolicy()
        )
        async with client:
            with pytest.raises(coredis.exceptions.ConnectionError):
                await client.ping()

    with pytest.warns(ResourceWarning, match="^Unclosed <MemoryObject"):  # noqa: PT031
        trio.run(attempt)
        gc.collect()


# ------------------------------------------------------------ consumers on this layer


async def test_consumer_names_its_channel_only_when_used(make_layer: MakeLayer) -> None:
    """A consumer instance that never reads channel_name creates no channel on the layer."""
    from trichannels.consumer import AsyncConsumer
    from trichannels.layers import channel_layers
    from trichannels.testing import ApplicationCommunicator

    class Http(AsyncConsumer):
        async def http_request(self, message: dict[str, Any]) -> None:
            if message.get("body") == b"name":
                await self.channel_layer.send(  # type: ignore[union-attr]
                    self.channel_name, {"type": "reply", "text": self.channel_name}
                )
            else:
                await self.reply({"text": "anonymous"})

        async def reply(self, event: dict[str, Any]) -> None:
            await self.send({"type": "http.response.start", "status": 200})
            await self.send(
                {"type": "http.response.body", "body": event["text"].encode()}
            )

    scope = {"type": "http", "method": "POST", "path": "/"}
    with trio.fail_after(10):
        async with make_layer() as layer:
            previous = channel_layers.set("default", layer)
            try:
                async with ApplicationCommunicator(Http(), scope) as comm:
                    await comm.send_input({"type": "http.request", "body": b""})
                    await comm.receive_output()
                    assert (await comm.receive_output())["body"] == b"anonymous"
                    assert layer._local == {}
                async with ApplicationCommunicator(Http(), scope) as comm:
                    await comm.send_input({"type": "http.request", "body": b"name"})
                    await comm.receive_output()
                    name = (await comm.receive_output())["body"].decode()
                    assert name.startswith("specific.")
                    assert "!" in name
                    assert list(layer._local) == [name]
            finally:
                channel_layers.set("default", previous)


async def test_receive_nowait_takes_only_what_is_already_here(
    make_layer: MakeLayer,
) -> None:
    """_receive_nowait (used at a consumer's disconnect) never waits and takes in order."""
    with trio.fail_after(10):
        async with make_layer() as layer:
            channel = await layer.new_channel()
            assert layer._receive_nowait(channel) is None
            assert layer._receive_nowait("specific.nobody!x") is None
            for n in range(2):
                await layer.send(channel, {"type": "m", "n": n})
            assert layer._receive_nowait(channel) == {"type": "m", "n": 0}
            assert layer._receive_nowait(channel) == {"type": "m", "n": 1}
            assert layer._receive_nowait(channel) is None
            assert layer.statistics().messages_received == 2
