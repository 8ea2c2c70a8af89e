"""S3: a channel layer alone, in one process, no sockets.

The same measurement code runs against Channels' layers (asyncio, in the
``bench/.venv-channels`` venv) and ours (trio, in the project venv). Every
``pairs*`` test is the same sequential loop -- ``send`` one message (a 32-character
text), then ``receive`` it -- and reports pairs/s and CPU microseconds per pair (the
process's CPU time, so both ends of the pair are counted); only the channel differs:

* ``pairs``  -- a ``!`` channel of the one layer instance that sends and receives
  (``new_channel()``; the anchors' E5 measurement). trichannels' Redis layer
  delivers a send to its own ``!`` channel in-process (``local_delivery``), so for
  ``tri-redis`` this row is recorded as ``pairs-local``: no Redis round trip.
  channels_redis has no such path: its own-channel pairs go through Redis.
* ``pairs-peer`` -- (Redis layers) a ``!`` channel created by a *second* layer
  instance in the same process (to Redis, another process: its own inbox / client
  prefix): the sender's instance sends, the peer's receives, so every message
  makes the cross-process trip through Redis, and the CPU of both ends is counted.
* ``pairs-normal`` -- (Redis layers with worker channels: ``tri-redis``,
  ``channels-redis``) a plain channel name without ``!`` (a worker channel: a
  stream read through a consumer group for us, a sorted-set list with BZPOPMIN for
  channels_redis); one instance sends and receives, always through Redis.
* ``group``  -- ``group_send`` to a group of 100 members of this instance, then
  ``receive`` on each of the 100 channels: deliveries/s. For ``tri-redis`` this is
  one Redis round trip per ``group_send`` (the membership lives in Redis) and the
  100 copies are delivered in-process (``local_delivery``); channels_redis core
  sends every copy through Redis, its pub/sub layer one message per group_send.
* ``group-peer`` -- (Redis layers) the same, but the 100 members are ``!`` channels
  of a second instance, which adds them to the group and receives: every
  delivery crosses Redis (channels_redis core stores one entry per member; our
  layer one inbox entry per receiving instance, and the pub/sub layer publishes
  once, each fanned out by the receiving instance).

Each is run for a fixed time after a short warm-up; the result is one JSON line
(``sub`` is the row name, ``path`` how the messages travelled: a key of ``PATHS``).
The layer under test is chosen with ``--impl``:

========================  =====================================================
``channels-memory``       ``channels.layers.InMemoryChannelLayer``
``channels-redis``        ``channels_redis.core.RedisChannelLayer``
``channels-pubsub``       ``channels_redis.pubsub.RedisPubSubChannelLayer``
``tri-memory``            ``trichannels.layers.memory.InMemoryChannelLayer``
``tri-redis``             ``trichannels.layers.redis.RedisChannelLayer``
========================  =====================================================

Usage: ``python bench/s3_layers.py --impl tri-memory --test pairs --duration 2`` (the
runner picks the right interpreter for each implementation).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/10")
PREFIX = "benchs3"

TESTS = ["pairs", "pairs-peer", "pairs-normal", "group", "group-peer"]
REDIS_IMPLS = ("tri-redis", "channels-redis", "channels-pubsub")
PAIR_MESSAGE = {"type": "bench.ping", "text": "x" * 32}

# What each row (``sub`` in the JSON lines) measures, and how its messages travel
# (``path``); shared with run.py and report.py so that the log, the JSON lines and the
# README agree.
ROWS = {
    "pairs": "the sender's own ! channel (one instance)",
    "pairs-local": "the sender's own ! channel (one instance)",
    "pairs-peer": "a ! channel of a second instance (as in another process)",
    "pairs-normal": "a plain channel name (worker channel), one instance",
    "group": "group_send to 100 ! channels of the sending instance, receive each",
    "group-peer": "group_send to 100 ! channels of a second instance, which receives",
}
PATHS = {
    "memory": "in process (memory layer)",
    "local": "in process: no Redis round trip",
    "redis+local": "one Redis round trip per group_send, the copies delivered in process",
    "redis-fanout": "through Redis, one message per group_send and receiving instance, "
    "which copies it to its members",
    "redis": "every message (every copy) through Redis",
}


def applies(impl: str, test: str) -> bool:
    """Whether ``test`` exists for ``impl``."""
    if test in ("pairs-peer", "group-peer"):
        return impl in REDIS_IMPLS
    if test == "pairs-normal":
        # channels_redis' pub/sub layer has no worker channels: a plain name is a
        # pub/sub topic, and a send before the first receive subscribes is lost.
        return impl in ("tri-redis", "channels-redis")
    return test in ("pairs", "group")


def row_name(impl: str, test: str) -> str:
    """The row a result is recorded under (``sub`` in the JSON lines)."""
    if impl == "tri-redis" and test == "pairs":
        return "pairs-local"
    return test


def path_of(impl: str, row: str) -> str:
    """How the messages of ``impl``'s test or row ``row`` travel (a key of ``PATHS``)."""
    if impl not in REDIS_IMPLS:
        return "memory"
    if impl == "tri-redis" and row in ("pairs", "pairs-local"):
        return "local"
    if impl == "tri-redis" and row == "group":
        return "redis+local"
    if row.startswith("group") and impl != "channels-redis":
        # Ours stores one inbox entry per receiving instance for all its members;
        # channels_redis' pub/sub layer publishes once per group_send.
        return "redis-fanout"
    return "redis"


async def _pairs(
    sender, receiver, channel: str, duration: float, warmup: float
) -> dict:
    """Sequential pairs: ``sender.send(channel, msg)`` then ``receiver.receive(channel)``."""
    msg = PAIR_MESSAGE
    end_warm = time.perf_counter() + warmup
    while time.perf_counter() < end_warm:
        await sender.send(channel, msg)
        await receiver.receive(channel)
    n = 0
    c0 = time.process_time()
    t0 = time.perf_counter()
    deadline = t0 + duration
    while True:
        await sender.send(channel, msg)
        await receiver.receive(channel)
        n += 1
        if n % 16 == 0 and time.perf_counter() >= deadline:
            break
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    return {
        "pairs": n,
        "rate": n / wall,
        "wall_s": wall,
        "cpu_s": cpu,
        "cpu_us_per_op": cpu / n * 1e6,
    }


async def _run_test(args, layer, peer) -> dict:
    """Run ``args.test`` on ``layer`` (``peer``: the second instance, for ``pairs-peer``)."""
    if args.test == "pairs":
        channel = await layer.new_channel()
        return await _pairs(layer, layer, channel, args.duration, args.warmup)
    if args.test == "pairs-peer":
        channel = await peer.new_channel()
        return await _pairs(layer, peer, channel, args.duration, args.warmup)
    if args.test == "pairs-normal":
        channel = f"{PREFIX}.pairs.{os.getpid()}"
        return await _pairs(layer, layer, channel, args.duration, args.warmup)
    if args.test == "group-peer":
        return await _group(layer, peer, args.duration, args.warmup, args.members)
    return await _group(layer, layer, args.duration, args.warmup, args.members)


async def _group(layer, receiver, duration: float, warmup: float, members: int) -> dict:
    """``layer.group_send`` to ``members`` channels of ``receiver``, which receives each.

    The channels' owner adds them to the group, as a consumer does (channels_redis'
    pub/sub layer refuses ``group_add`` for another instance's channel)."""
    group = f"g{os.getpid()}"
    channels = [await receiver.new_channel() for _ in range(members)]
    for ch in channels:
        await receiver.group_add(group, ch)
    msg = {"type": "chat.message", "message": "x" * 32}

    async def one_round() -> None:
        await layer.group_send(group, msg)
        for ch in channels:
            await receiver.receive(ch)

    end_warm = time.perf_counter() + warmup
    while time.perf_counter() < end_warm:
        await one_round()
    rounds = 0
    c0 = time.process_time()
    t0 = time.perf_counter()
    deadline = t0 + duration
    while time.perf_counter() < deadline:
        await one_round()
        rounds += 1
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    n = rounds * members
    for ch in channels:
        await receiver.group_discard(group, ch)
    return {
        "group_sends": rounds,
        "members": members,
        "deliveries": n,
        "rate": n / wall,
        "wall_s": wall,
        "cpu_s": cpu,
        "cpu_us_per_op": cpu / n * 1e6,
    }


# ------------------------------------------------------------------ Channels' layers (asyncio)


def _channels_layer(impl: str):
    if impl == "channels-memory":
        from channels.layers import InMemoryChannelLayer

        return InMemoryChannelLayer()
    if impl == "channels-redis":
        from channels_redis.core import RedisChannelLayer

        return RedisChannelLayer(
            hosts=[{"address": REDIS_URL, "socket_timeout": None}], prefix=PREFIX
        )
    if impl == "channels-pubsub":
        from channels_redis.pubsub import RedisPubSubChannelLayer

        return RedisPubSubChannelLayer(hosts=[REDIS_URL], prefix=PREFIX)
    raise ValueError(impl)


async def _close_channels(layer) -> None:
    with contextlib.suppress(Exception):
        await layer.flush()
    close = getattr(layer, "close_pools", None) or getattr(layer, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()


async def _run_channels(args) -> dict:
    layer = _channels_layer(args.impl)
    peer = _channels_layer(args.impl) if args.test.endswith("-peer") else None
    try:
        return await _run_test(args, layer, peer)
    finally:
        if peer is not None:
            await _close_channels(peer)
        await _close_channels(layer)


# ------------------------------------------------------------------ trichannels' layers (trio)


def _tri_layer(impl: str):
    if impl == "tri-memory":
        from trichannels.layers.memory import InMemoryChannelLayer

        return InMemoryChannelLayer()
    if impl == "tri-redis":
        # Built exactly as the registry builds it from a redis:// URL.
        from trichannels.layers import ChannelLayerManager

        manager = ChannelLayerManager()
        manager.configure({"default": REDIS_URL})
        return manager
    raise ValueError(impl)


def _opened(opened):
    return (
        opened["default"]
        if isinstance(opened, dict) or hasattr(opened, "keys")
        else opened
    )


async def _run_tri(args) -> dict:
    made = _tri_layer(args.impl)
    # A ChannelLayerManager is opened as the lifespan opens it; a bare layer is its own context.
    cm = made.open() if hasattr(made, "open") else made
    async with contextlib.AsyncExitStack() as stack:
        layer = _opened(await stack.enter_async_context(cm))
        peer = None
        if args.test.endswith("-peer"):
            # A second layer instance, opened the same way: its own inbox in Redis.
            peer = _opened(
                await stack.enter_async_context(_tri_layer(args.impl).open())
            )
        try:
            return await _run_test(args, layer, peer)
        finally:
            with contextlib.suppress(Exception):
                await layer.flush()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--impl",
        required=True,
        choices=[
            "channels-memory",
            "channels-redis",
            "channels-pubsub",
            "tri-memory",
            "tri-redis",
        ],
    )
    ap.add_argument("--test", choices=TESTS, required=True)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--members", type=int, default=100)
    args = ap.parse_args()
    if not applies(args.impl, args.test):
        ap.error(f"--test {args.test} does not apply to --impl {args.impl}")
    if args.impl.startswith("channels-"):
        import asyncio

        result = asyncio.run(_run_channels(args))
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        import trio

        result = trio.run(_run_tri, args)
    result.update(
        {
            "impl": args.impl,
            "test": args.test,
            "sub": row_name(args.impl, args.test),
            "path": path_of(args.impl, args.test),
            "payload_chars": len(PAIR_MESSAGE["text"]),
        }
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
