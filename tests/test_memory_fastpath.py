"""InMemoryChannelLayer's per-backend hot paths: ``receive`` with a message already
queued, ``send`` and ``group_send``.

Under trio these keep trio's order (cancel check, work, shielded schedule
point). Under asyncio they checkpoint first with ``asyncio.sleep(0)`` and then
finish without awaiting again, so that neither an anyio cancel scope nor a
plain ``Task.cancel()`` (uvicorn, ``asyncio.timeout``) can lose or duplicate a
message. Each test states the invariant it checks.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest
import trio
import trio.testing

from trichannels.exceptions import ChannelFull
from trichannels.layers.memory import InMemoryChannelLayer


def _counts(layer: InMemoryChannelLayer) -> tuple[int, int, int, int, int]:
    s = layer.statistics()
    return (
        s.channels,
        s.queued_messages,
        s.messages_sent,
        s.messages_received,
        s.messages_expired,
    )


# -- on both backends -------------------------------------------------------------------


def test_cancelled_calls_take_and_queue_nothing_neutral(backend: str) -> None:
    """Invariant: receive/send/group_send called in a cancelled scope raise the
    backend's cancellation and change nothing, even with a message waiting."""

    async def body() -> None:
        layer = InMemoryChannelLayer()
        await layer.group_add("g", "a")
        await layer.send("a", {"type": "waiting"})
        before = _counts(layer)
        for call in (
            lambda: layer.receive("a"),
            lambda: layer.send("a", {"type": "x"}),
            lambda: layer.group_send("g", {"type": "x"}),
        ):
            with anyio.CancelScope() as scope:
                scope.cancel()
                await call()
            assert scope.cancelled_caught
            assert _counts(layer) == before
        assert await layer.receive("a") == {"type": "waiting"}

    anyio.run(body, backend=backend)


def test_receive_ready_lets_other_tasks_run_neutral(backend: str) -> None:
    """Invariant: receive is a schedule point even when it need not wait."""

    async def body() -> None:
        layer = InMemoryChannelLayer(capacity=10)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            for _ in range(10):
                await layer.send("a", {"type": "x"})
            start = ticks
            for _ in range(10):
                await layer.receive("a")
            # Each receive yields once, so the ticker runs about once per receive
            # (give or take the order within the scheduler's first and last batch).
            assert ticks - start >= 5
            tg.cancel_scope.cancel()

    anyio.run(body, backend=backend)


def test_expired_head_is_skipped_on_the_fast_path_neutral(backend: str) -> None:
    """Invariant: a message is never delivered at or after its expiry, whether the
    receiver finds it queued or not; expired messages are counted."""

    async def body() -> None:
        now = [100.0]
        layer = InMemoryChannelLayer(expiry=5, clock=lambda: now[0])
        await layer.send("a", {"type": "old"})
        now[0] += 4.999
        await layer.send("a", {"type": "new"})
        now[0] += 0.001  # "old" expires exactly now
        assert await layer.receive("a") == {"type": "new"}
        assert _counts(layer) == (0, 0, 2, 1, 1)
        await layer.send("a", {"type": "late"})
        now[0] += 5
        with anyio.move_on_after(0.05) as scope:
            await layer.receive("a")
        assert scope.cancelled_caught
        assert _counts(layer) == (0, 0, 3, 1, 2)

    anyio.run(body, backend=backend)


def test_channel_full_is_raised_after_the_checkpoint_neutral(backend: str) -> None:
    """Invariant: ChannelFull leaves the queue and counters as they were, and the
    next send after a receive is accepted."""

    async def body() -> None:
        layer = InMemoryChannelLayer(capacity=2)
        await layer.send("a", {"type": "1"})
        await layer.send("a", {"type": "2"})
        with pytest.raises(ChannelFull):
            await layer.send("a", {"type": "3"})
        assert _counts(layer) == (1, 2, 2, 0, 0)
        assert await layer.receive("a") == {"type": "1"}
        await layer.send("a", {"type": "3"})
        assert [(await layer.receive("a"))["type"] for _ in range(2)] == ["2", "3"]

    anyio.run(body, backend=backend)


def test_competing_receivers_for_one_queued_message_neutral(backend: str) -> None:
    """Invariant: two receivers started together for one queued message: one gets
    it, the other waits for (and gets) the next; nothing is duplicated."""

    async def body() -> None:
        layer = InMemoryChannelLayer()
        got: list[str] = []

        async def receiver() -> None:
            got.append((await layer.receive("a"))["type"])

        await layer.send("a", {"type": "first"})
        async with anyio.create_task_group() as tg:
            tg.start_soon(receiver)
            tg.start_soon(receiver)
            await anyio.wait_all_tasks_blocked()
            assert got == ["first"]
            await layer.send("a", {"type": "second"})
        assert got == ["first", "second"]
        assert _counts(layer) == (0, 0, 2, 2, 0)

    anyio.run(body, backend=backend)


# -- asyncio without anyio: plain Task.cancel() --------------------------------------------


async def _cancel_soon(coro: Any) -> asyncio.Task[Any]:
    """Start ``coro`` as a plain asyncio task, let it reach its first await, cancel it."""
    task = asyncio.ensure_future(coro)
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return task


def test_plain_task_cancel_never_loses_a_queued_message() -> None:
    """Invariant: Task.cancel() on a receive that found a message queued leaves it queued."""

    async def body() -> None:
        layer = InMemoryChannelLayer()
        await layer.send("a", {"type": "x"})
        await _cancel_soon(layer.receive("a"))
        assert _counts(layer) == (1, 1, 1, 0, 0)
        assert await layer.receive("a") == {"type": "x"}

    asyncio.run(body())


def test_plain_task_cancel_of_send_queues_nothing() -> None:
    """Invariant: Task.cancel() on a send (or group_send) before it completes queues nothing."""

    async def body() -> None:
        layer = InMemoryChannelLayer()
        await layer.group_add("g", "a")
        await _cancel_soon(layer.send("a", {"type": "x"}))
        await _cancel_soon(layer.group_send("g", {"type": "x"}))
        assert _counts(layer) == (0, 0, 0, 0, 0)

    asyncio.run(body())


def test_plain_task_cancel_after_handoff_gives_the_message_back() -> None:
    """Invariant: a parked receiver handed a message and then cancelled with
    Task.cancel() before it resumes puts the message back, first in line.

    (On asyncio ``send`` hands the message over after its checkpoint and
    returns without yielding again, so the receiver has not resumed yet.)
    """

    async def body() -> None:
        layer = InMemoryChannelLayer()
        task = asyncio.ensure_future(layer.receive("a"))
        await asyncio.sleep(0)  # parked
        await layer.send("a", {"type": "first"})  # handed to the parked receiver
        task.cancel()  # before it resumes
        with pytest.raises(asyncio.CancelledError):
            await task
        await layer.send("a", {"type": "second"})
        assert await layer.receive("a") == {"type": "first"}
        assert await layer.receive("a") == {"type": "second"}
        assert _counts(layer) == (0, 0, 2, 2, 0)

    asyncio.run(body())


def test_close_while_receive_checkpoints() -> None:
    """Invariant: a receive that found a message queued but is still at its
    checkpoint when the layer closes raises ClosedResourceError, never returns it."""

    async def body() -> None:
        layer = InMemoryChannelLayer()
        await layer.send("a", {"type": "x"})
        task = asyncio.ensure_future(layer.receive("a"))
        await asyncio.sleep(0)  # the receiver reaches its checkpoint
        await layer.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await task

    asyncio.run(body())


def test_trio_as_a_guest_on_asyncio_uses_trio() -> None:
    """Invariant: under trio's guest mode on an asyncio loop (where asyncio reports
    a running loop) the layer still uses trio's primitives in trio tasks."""

    async def trio_main() -> list[str]:
        layer = InMemoryChannelLayer()
        got: list[str] = []

        async def receiver() -> None:
            got.append((await layer.receive("a"))["type"])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            await layer.send("a", {"type": "handed"})
        await layer.send("a", {"type": "queued"})
        got.append((await layer.receive("a"))["type"])
        return got

    async def host() -> list[str]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        trio.lowlevel.start_guest_run(
            trio_main,
            run_sync_soon_threadsafe=loop.call_soon_threadsafe,
            done_callback=done.set_result,
            host_uses_signal_set_wakeup_fd=True,
        )
        outcome = await done
        result: list[str] = outcome.unwrap()
        return result

    assert asyncio.run(host()) == ["handed", "queued"]
