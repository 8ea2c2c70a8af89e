"""CPU cost per call of ``InMemoryChannelLayer`` hot paths, on trio and on asyncio.

One process, no sockets; every figure is CPU time (``time.process_time``)
divided by operations, the median over ``--rounds`` rounds::

    python bench/memory_receive.py                  # both backends, 3 rounds
    python bench/memory_receive.py --backend asyncio --rounds 5

Scenarios:

``pair``
    one task: ``send`` then ``receive`` on one channel (us per pair).
``receive ready``
    ``receive`` when a message is already queued: the channel is filled
    untimed, then only the receives are timed (us per receive).
``send``
    ``send`` to a channel nobody is receiving on; the receives that drain
    it are untimed (us per send).
``group 100``
    ``group_send`` to 100 members, each member its own task parked in
    ``receive`` (how consumers receive a broadcast); us per delivery, the
    ``group_send`` and the 100 wake-ups included.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio

from trichannels.layers.memory import InMemoryChannelLayer

MESSAGE = {"type": "bench.ping", "text": "x" * 32}
BATCH = 500


async def pair(layer: InMemoryChannelLayer, ops: int) -> float:
    channel = await layer.new_channel()
    c0 = time.process_time()
    for _ in range(ops):
        await layer.send(channel, MESSAGE)
        await layer.receive(channel)
    return time.process_time() - c0


async def receive_ready(layer: InMemoryChannelLayer, ops: int) -> float:
    channel = await layer.new_channel()
    cpu = 0.0
    for _ in range(max(1, ops // BATCH)):
        for _ in range(BATCH):
            await layer.send(channel, MESSAGE)
        c0 = time.process_time()
        for _ in range(BATCH):
            await layer.receive(channel)
        cpu += time.process_time() - c0
    return cpu


async def send(layer: InMemoryChannelLayer, ops: int) -> float:
    channel = await layer.new_channel()
    cpu = 0.0
    for _ in range(max(1, ops // BATCH)):
        c0 = time.process_time()
        for _ in range(BATCH):
            await layer.send(channel, MESSAGE)
        cpu += time.process_time() - c0
        for _ in range(BATCH):
            await layer.receive(channel)
    return cpu


async def group_100(layer: InMemoryChannelLayer, ops: int) -> float:
    members = 100
    channels = [await layer.new_channel() for _ in range(members)]
    for channel in channels:
        await layer.group_add("bench", channel)
    pending = members
    round_done = anyio.Event()

    async def member(channel: str) -> None:
        nonlocal pending
        while True:
            await layer.receive(channel)
            pending -= 1
            if pending == 0:
                round_done.set()

    async with anyio.create_task_group() as tg:
        for channel in channels:
            tg.start_soon(member, channel)
        await anyio.wait_all_tasks_blocked()
        c0 = time.process_time()
        for _ in range(max(1, ops // members)):
            pending, round_done = members, anyio.Event()
            await layer.group_send("bench", MESSAGE)
            await round_done.wait()
        cpu = time.process_time() - c0
        tg.cancel_scope.cancel()
    return cpu


SCENARIOS: dict[str, Callable[[InMemoryChannelLayer, int], Awaitable[float]]] = {
    "pair": pair,
    "receive ready": receive_ready,
    "send": send,
    "group 100": group_100,
}


async def measure(ops: int, rounds: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {name: [] for name in SCENARIOS}
    for scenario in SCENARIOS.values():  # warm-up
        await scenario(InMemoryChannelLayer(capacity=BATCH), ops // 10)
    for _ in range(rounds):  # rounds interleave the scenarios
        for name, scenario in SCENARIOS.items():
            cpu = await scenario(InMemoryChannelLayer(capacity=BATCH), ops)
            done = ops if name == "pair" else (ops // BATCH or 1) * BATCH
            if name == "group 100":
                done = (ops // 100 or 1) * 100
            results[name].append(cpu / done * 1e6)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--backend", choices=["trio", "asyncio", "both"], default="both"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ops", type=int, default=50_000, help="operations per round")
    args = parser.parse_args()
    backends = ["trio", "asyncio"] if args.backend == "both" else [args.backend]
    for backend in backends:
        results = anyio.run(measure, args.ops, args.rounds, backend=backend)
        print(f"{backend} (CPU us per op, median of {args.rounds}; range):")
        for name, values in results.items():
            print(
                f"  {name:<14} {statistics.median(values):6.2f}"
                f"  ({min(values):.2f}-{max(values):.2f})",
                flush=True,
            )


if __name__ == "__main__":
    main()
