"""S3: a channel layer alone, in one process, no sockets.

The same measurement code runs against Channels' layers (asyncio, in the
``bench/.venv-channels`` venv) and ours (trio, in the project venv):

* ``pairs``  -- ``send`` then ``receive`` on one process-specific channel, sequentially
  (a ping-pong, as in the anchors' E5 measurement): pairs/s.
* ``group``  -- ``group_send`` to a group of 100 members of this process, then
  ``receive`` on each of the 100 channels: deliveries/s.

Each is run for a fixed time after a short warm-up; the result is one JSON line.
The layer under test is chosen with ``--impl``:

========================  =====================================================
``channels-memory``       ``channels.layers.InMemoryChannelLayer``
``channels-redis``        ``channels_redis.core.RedisChannelLayer``
``channels-pubsub``       ``channels_redis.pubsub.RedisPubSubChannelLayer``
``tri-memory``            ``trichannels.layers.memory.InMemoryChannelLayer``
``tri-redis``             ``trichannels.layers.redis.RedisChannelLayer``
========================  =====================================================

Usage: ``python bench/s3_layers.py --impl tri-memory --duration 2`` (the runner picks
the right interpreter for each implementation).
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


async def _pairs(layer, duration: float, warmup: float) -> dict:
    channel = await layer.new_channel()
    msg = {"type": "bench.ping", "text": "x" * 32}
    end_warm = time.perf_counter() + warmup
    while time.perf_counter() < end_warm:
        await layer.send(channel, msg)
        await layer.receive(channel)
    n = 0
    c0 = time.process_time()
    t0 = time.perf_counter()
    deadline = t0 + duration
    while True:
        await layer.send(channel, msg)
        await layer.receive(channel)
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


async def _group(layer, duration: float, warmup: float, members: int) -> dict:
    group = f"g{os.getpid()}"
    channels = [await layer.new_channel() for _ in range(members)]
    for ch in channels:
        await layer.group_add(group, ch)
    msg = {"type": "chat.message", "message": "x" * 32}

    async def one_round() -> None:
        await layer.group_send(group, msg)
        for ch in channels:
            await layer.receive(ch)

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
        await layer.group_discard(group, ch)
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


async def _run_channels(args) -> dict:
    layer = _channels_layer(args.impl)
    try:
        if args.test == "pairs":
            return await _pairs(layer, args.duration, args.warmup)
        return await _group(layer, args.duration, args.warmup, args.members)
    finally:
        with contextlib.suppress(Exception):
            await layer.flush()
        close = getattr(layer, "close_pools", None) or getattr(layer, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()


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


async def _run_tri(args) -> dict:
    made = _tri_layer(args.impl)
    # A ChannelLayerManager is opened as the lifespan opens it; a bare layer is its own context.
    cm = made.open() if hasattr(made, "open") else made
    async with cm as opened:
        layer = (
            opened["default"]
            if isinstance(opened, dict) or hasattr(opened, "keys")
            else opened
        )
        try:
            if args.test == "pairs":
                return await _pairs(layer, args.duration, args.warmup)
            return await _group(layer, args.duration, args.warmup, args.members)
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
    ap.add_argument("--test", choices=["pairs", "group"], required=True)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--members", type=int, default=100)
    args = ap.parse_args()
    if args.impl.startswith("channels-"):
        import asyncio

        result = asyncio.run(_run_channels(args))
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        import trio

        result = trio.run(_run_tri, args)
    result.update({"impl": args.impl, "test": args.test})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
