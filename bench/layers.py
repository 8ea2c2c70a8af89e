"""Channel-layer throughput: send+receive pairs/s and group_send deliveries/s.

Measures trichannels' layers alone, in one process, no sockets::

    python bench/layers.py                      # memory layer, trio, 3 rounds
    python bench/layers.py --layer all          # memory, and Redis if trichannels.layers.redis exists
    python bench/layers.py --layer redis --rounds 5 --duration 2
    python bench/layers.py --backend asyncio    # the same through anyio on asyncio

Scenarios (each prints the median and the range over the rounds, as wall-clock
rate and as CPU time per operation; the CPU figure is the one least disturbed
by other processes on a shared machine):

``pairs``
    one task: ``send`` then ``receive`` on one process-specific channel, in a
    loop (the shape of Channels' own measurement; ~132k pairs/s for Channels'
    InMemoryChannelLayer on the reference machine).
``pairs x10``
    ten such tasks at once, each on its own channel (a server's many
    connections): the event loop runs them in batches.
``group``
    one task: ``group_send`` to a group of ``--members`` channels, then
    ``receive`` on each; counts deliveries (~35k/s for Channels).
``group x100``
    ``group_send`` from one task, one receiving task per member (how
    consumers actually receive).
``pairs via redis`` / ``pairs x10 via redis`` / ``group x100 via redis``
    (Redis layer only) the same, but the receiving channels belong to a
    second layer instance, as if in another process: every message makes
    the round trip through Redis. The plain scenarios above send to the
    sender's own ``!`` channels, which the Redis layer delivers in-process
    (``local_delivery``); these show the cross-process path.
``floor``
    (trio only) two bare ``trio.lowlevel.cancel_shielded_checkpoint()`` calls
    per iteration: the scheduler's cost of the two checkpoints every pair
    must make, an upper bound for single-task ``pairs``.

``REDIS_URL`` (default ``redis://127.0.0.1:6379/9``) selects the Redis server;
the Redis layer is opened through the registry, exactly as ``redis://`` URLs
are in production, and flushed before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio

from trichannels.layers import BaseChannelLayer, ChannelLayerManager

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/9")
PAIR_MESSAGE = {"type": "bench.ping", "text": "x" * 32}
GROUP_MESSAGE = {"type": "chat.message", "message": "x" * 32}

Result = tuple[int, float, float]  # operations, wall seconds, cpu seconds


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- layers


def redis_available() -> bool:
    return importlib.util.find_spec("trichannels.layers.redis") is not None


@contextlib.asynccontextmanager
async def open_layer(kind: str) -> AsyncIterator[BaseChannelLayer]:
    manager = ChannelLayerManager()
    manager.configure(
        {"default": "memory://?capacity=1000" if kind == "memory" else REDIS_URL}
    )
    async with manager.open() as opened:
        layer = opened["default"]
        await layer.flush()
        try:
            yield layer
        finally:
            with anyio.CancelScope(shield=True):
                await layer.flush()


@contextlib.asynccontextmanager
async def open_peer() -> AsyncIterator[BaseChannelLayer]:
    """A second Redis layer instance: to Redis, another process."""
    manager = ChannelLayerManager()
    manager.configure({"default": REDIS_URL})
    async with manager.open() as opened:
        yield opened["default"]


# ----------------------------------------------------------------------------- scenarios


async def timed(duration: float, step: Callable[[], Awaitable[int]]) -> Result:
    """Run ``step`` (returning the operations it did) until ``duration`` has passed."""
    ops = 0
    c0, t0 = time.process_time(), time.perf_counter()
    deadline = t0 + duration
    while time.perf_counter() < deadline:
        ops += await step()
    return ops, time.perf_counter() - t0, time.process_time() - c0


async def pairs(layer: BaseChannelLayer, duration: float, _members: int) -> Result:
    channel = await layer.new_channel()

    async def step() -> int:
        for _ in range(64):
            await layer.send(channel, PAIR_MESSAGE)
            await layer.receive(channel)
        return 64

    await timed(min(0.3, duration / 4), step)  # warm-up
    return await timed(duration, step)


async def pairs_concurrent(
    layer: BaseChannelLayer, duration: float, _members: int, tasks: int = 10
) -> Result:
    channels = [await layer.new_channel() for _ in range(tasks)]
    counts = [0] * tasks
    stop = anyio.Event()

    async def worker(i: int, channel: str) -> None:
        while not stop.is_set():
            for _ in range(16):
                await layer.send(channel, PAIR_MESSAGE)
                await layer.receive(channel)
            counts[i] += 16

    async with anyio.create_task_group() as tg:
        for i, channel in enumerate(channels):
            tg.start_soon(worker, i, channel)
        await anyio.sleep(min(0.3, duration / 4))  # warm-up
        start = sum(counts)
        c0, t0 = time.process_time(), time.perf_counter()
        await anyio.sleep(duration)
        ops = sum(counts) - start
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        stop.set()
    return ops, wall, cpu


async def group(layer: BaseChannelLayer, duration: float, members: int) -> Result:
    name = f"bench{os.getpid()}"
    channels = [await layer.new_channel() for _ in range(members)]
    for channel in channels:
        await layer.group_add(name, channel)

    async def step() -> int:
        await layer.group_send(name, GROUP_MESSAGE)
        for channel in channels:
            await layer.receive(channel)
        return members

    await timed(min(0.3, duration / 4), step)
    result = await timed(duration, step)
    for channel in channels:
        await layer.group_discard(name, channel)
    return result


async def group_concurrent(
    layer: BaseChannelLayer,
    duration: float,
    members: int,
    receiver: BaseChannelLayer | None = None,
) -> Result:
    name = f"benchc{os.getpid()}"
    peer = layer if receiver is None else receiver
    channels = [await peer.new_channel() for _ in range(members)]
    for channel in channels:
        await layer.group_add(name, channel)
    received = 0
    round_done = anyio.Event()
    pending = members

    async def member(channel: str) -> None:
        nonlocal received, pending, round_done
        while True:
            await peer.receive(channel)
            received += 1
            pending -= 1
            if pending == 0:
                round_done.set()

    async def step() -> int:
        nonlocal pending, round_done
        pending, round_done = members, anyio.Event()
        await layer.group_send(name, GROUP_MESSAGE)
        await round_done.wait()
        return members

    async with anyio.create_task_group() as tg:
        for channel in channels:
            tg.start_soon(member, channel)
        await anyio.wait_all_tasks_blocked()
        await timed(min(0.3, duration / 4), step)
        result = await timed(duration, step)
        tg.cancel_scope.cancel()
    for channel in channels:
        await layer.group_discard(name, channel)
    return result


async def pairs_via_redis(
    layer: BaseChannelLayer, duration: float, _members: int, tasks: int = 1
) -> Result:
    async with open_peer() as peer:
        channels = [await peer.new_channel() for _ in range(tasks)]
        counts = [0] * tasks
        stop = anyio.Event()

        async def worker(i: int, channel: str) -> None:
            while not stop.is_set():
                for _ in range(16):
                    await layer.send(channel, PAIR_MESSAGE)
                    await peer.receive(channel)
                counts[i] += 16

        async with anyio.create_task_group() as tg:
            for i, channel in enumerate(channels):
                tg.start_soon(worker, i, channel)
            await anyio.sleep(min(0.3, duration / 4))  # warm-up
            start = sum(counts)
            c0, t0 = time.process_time(), time.perf_counter()
            await anyio.sleep(duration)
            ops = sum(counts) - start
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            stop.set()
    return ops, wall, cpu


async def pairs_via_redis_concurrent(
    layer: BaseChannelLayer, duration: float, members: int
) -> Result:
    return await pairs_via_redis(layer, duration, members, tasks=10)


async def group_via_redis(
    layer: BaseChannelLayer, duration: float, members: int
) -> Result:
    async with open_peer() as peer:
        return await group_concurrent(layer, duration, members, receiver=peer)


async def floor(
    _layer: BaseChannelLayer | None, duration: float, _members: int
) -> Result:
    import trio

    async def step() -> int:
        for _ in range(64):
            await trio.lowlevel.cancel_shielded_checkpoint()
            await trio.lowlevel.cancel_shielded_checkpoint()
        return 64

    await timed(min(0.3, duration / 4), step)
    return await timed(duration, step)


SCENARIOS: dict[
    str, tuple[str, Callable[[BaseChannelLayer, float, int], Awaitable[Result]]]
] = {
    "pairs": ("pairs/s", pairs),
    "pairs x10": ("pairs/s", pairs_concurrent),
    "group": ("deliveries/s", group),
    "group x100": ("deliveries/s", group_concurrent),
    "pairs via redis": ("pairs/s", pairs_via_redis),
    "pairs x10 via redis": ("pairs/s", pairs_via_redis_concurrent),
    "group x100 via redis": ("deliveries/s", group_via_redis),
    "floor": ("pairs/s", floor),
}
REDIS_ONLY = {"pairs via redis", "pairs x10 via redis", "group x100 via redis"}


# ----------------------------------------------------------------------------- driver


def summarise(label: str, unit: str, results: list[Result]) -> dict[str, Any]:
    rates = [ops / wall for ops, wall, _ in results]
    cpu_us = [cpu / ops * 1e6 for ops, _, cpu in results]
    cpu_rates = [1e6 / us for us in cpu_us]
    med = statistics.median(rates)
    print(
        f"  {label:<20} {med:>10,.0f} {unit:<12} (range {min(rates):,.0f}-{max(rates):,.0f}; "
        f"CPU {statistics.median(cpu_us):.2f} us/op = {statistics.median(cpu_rates):,.0f}/s of CPU, "
        f"range {min(cpu_rates):,.0f}-{max(cpu_rates):,.0f})",
        flush=True,
    )
    return {
        "scenario": label,
        "median": med,
        "min": min(rates),
        "max": max(rates),
        "cpu_us": statistics.median(cpu_us),
    }


async def run(args: argparse.Namespace) -> None:
    kinds = ["memory", "redis"] if args.layer == "all" else [args.layer]
    if "redis" in kinds and not redis_available():
        progress(
            "trichannels.layers.redis does not exist (yet): skipping the Redis layer"
        )
        kinds.remove("redis")
        if not kinds:
            return
    for kind in kinds:
        names = [
            s
            for s in SCENARIOS
            if s in args.scenarios
            and s != "floor"
            and (kind == "redis" or s not in REDIS_ONLY)
        ]
        print(
            f"{kind} layer on {args.backend} ({args.rounds} rounds of {args.duration:g} s, median and range):",
            flush=True,
        )
        results: dict[str, list[Result]] = {name: [] for name in names}
        # Rounds interleave the scenarios so that a burst of load on the machine hits them alike.
        for round_no in range(1, args.rounds + 1):
            for name in names:
                progress(f"  [{kind}] round {round_no}/{args.rounds}: {name} ...")
                async with open_layer(kind) as layer:
                    results[name].append(
                        await SCENARIOS[name][1](layer, args.duration, args.members)
                    )
        for name in names:
            summarise(name, SCENARIOS[name][0], results[name])
    if "floor" in args.scenarios and args.backend == "trio":
        print("trio scheduler alone (no layer):", flush=True)
        floors: list[Result] = []
        for round_no in range(1, args.rounds + 1):
            progress(f"  round {round_no}/{args.rounds}: floor ...")
            floors.append(await floor(None, args.duration, args.members))
        summarise("floor", SCENARIOS["floor"][0], floors)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--layer",
        choices=["memory", "redis", "all"],
        default="memory",
        help="which layer(s) to measure (default: memory)",
    )
    parser.add_argument(
        "--backend",
        choices=["trio", "asyncio"],
        default="trio",
        help="event loop (default: trio)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds per scenario, at least 3 (default: 3)",
    )
    parser.add_argument(
        "--duration", type=float, default=1.0, help="seconds per round (default: 1)"
    )
    parser.add_argument(
        "--members", type=int, default=100, help="group size (default: 100)"
    )
    parser.add_argument(
        "--scenarios",
        type=lambda text: [s.strip() for s in text.split(",")],
        default=list(SCENARIOS),
        help=f"comma-separated subset of: {', '.join(SCENARIOS)}",
    )
    args = parser.parse_args()
    if args.rounds < 3:
        parser.error(
            "--rounds must be at least 3 (the median of fewer is not worth printing)"
        )
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    anyio.run(run, args, backend=args.backend)


if __name__ == "__main__":
    main()
