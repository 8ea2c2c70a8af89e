"""A receiver that runs ``read_take`` itself while the worker reader is parked.

Against a real Redis server (``REDIS_URL``), like ``test_layers_redis_link.py``.
"""

from __future__ import annotations

from typing import Any, Literal

import coredis
import pytest
import trio
import trio.testing

from tests.test_layers_redis_link import MakeLayer, make_layer, prefix, redis
from trichannels.layers.redis import RedisChannelLayer, _Link, _Reply

__all__ = ["make_layer", "prefix", "redis"]

pytestmark = pytest.mark.redis


def _watch_read_take(
    monkeypatch: pytest.MonkeyPatch,
    *,
    before: Any = None,
    after: Any = None,
    lose_reply: bool = False,
) -> list[tuple[trio.lowlevel.Task, int]]:
    """Record each ``read_take`` script call: (calling task, calls in flight at its start).

    ``before`` / ``after``: async callables run around the real call;
    ``lose_reply``: the first call raises ConnectionError after the script ran.
    """
    original = _Link.script
    calls: list[tuple[trio.lowlevel.Task, int]] = []
    in_flight = [0]

    async def script(self: _Link, name: str, keys: Any, args: Any) -> Any:
        if name != "read_take":
            return await original(self, name, keys, args)
        calls.append((trio.lowlevel.current_task(), in_flight[0]))
        in_flight[0] += 1
        try:
            if before is not None:
                await before()
            result = await original(self, name, keys, args)
            if after is not None:
                await after()
            if lose_reply and len(calls) == 1:
                raise coredis.exceptions.ConnectionError("injected: reply lost")
            return result
        finally:
            in_flight[0] -= 1

    monkeypatch.setattr(_Link, "script", script)
    return calls


async def _warm(layer: RedisChannelLayer) -> None:
    """One message through the reader, so that it has claimed and parked."""
    await layer.send("jobs", {"type": "warm"})
    with trio.fail_after(10):
        assert await layer.receive("jobs") == {"type": "warm"}
    await trio.testing.wait_all_tasks_blocked()


async def _assert_drained(
    layer: RedisChannelLayer, redis: coredis.Redis[bytes]
) -> None:
    """Nothing buffered for ``jobs`` and nothing left in its stream."""
    wc = layer._workers["jobs"]
    assert not wc.queue.items
    assert wc.outstanding == 0
    assert await redis.xlen(layer._worker_key("jobs")) == 0


async def test_receiver_runs_read_take_itself(
    make_layer: MakeLayer, monkeypatch: pytest.MonkeyPatch, redis: coredis.Redis[bytes]
) -> None:
    """With the reader parked, a receive fetches in its own task; the message arrives once."""
    async with make_layer() as layer:
        await _warm(layer)
        calls = _watch_read_take(monkeypatch)
        await layer.send("jobs", {"type": "one"})
        with trio.fail_after(10), trio.testing.assert_checkpoints():
            assert await layer.receive("jobs") == {"type": "one"}
        assert [task for task, _ in calls] == [trio.lowlevel.current_task()]
        await _assert_drained(layer, redis)


@pytest.mark.parametrize("stage", ["before", "writing", "reply", "after"])
async def test_cancelled_fetching_receiver_loses_nothing(
    make_layer: MakeLayer,
    monkeypatch: pytest.MonkeyPatch,
    redis: coredis.Redis[bytes],
    stage: Literal["before", "writing", "reply", "after"],
) -> None:
    """A receiver cancelled at any point of its own read_take: both messages arrive, in order, once.

    ``reply``: cancelled as the script's reply arrives; the taken entry is
    buffered at once (not left to the reader's hand-over recovery).
    """
    async with make_layer() as layer:
        await _warm(layer)
        scope = trio.CancelScope()
        armed = [False]

        async def cancel() -> None:
            scope.cancel()

        async def arm() -> None:
            armed[0] = True

        original_consume = _Reply.consume

        def consume(self: _Reply, response: Any) -> None:
            if armed[0]:
                armed[0] = False
                scope.cancel()  # before the waiting receiver is woken
            original_consume(self, response)

        monkeypatch.setattr(_Reply, "consume", consume)
        calls = _watch_read_take(
            monkeypatch,
            before={"writing": cancel, "reply": arm}.get(stage),
            after=cancel if stage == "after" else None,
        )
        await layer.send("jobs", {"type": "one"})
        await layer.send("jobs", {"type": "two"})
        me = trio.lowlevel.current_task()
        with scope:
            if stage == "before":
                scope.cancel()
            await layer.receive("jobs")
        assert scope.cancelled_caught
        wc = layer._workers["jobs"]
        if stage == "before":
            assert calls == []  # cancelled before fetching: nothing taken
        else:
            assert [task for task, _ in calls] == [me]
        if stage in ("reply", "after"):
            assert [i.message for i in wc.queue.items] == [{"type": "one"}]
            assert wc.handover_unknown is None
        with trio.fail_after(10):
            assert await layer.receive("jobs") == {"type": "one"}
            assert await layer.receive("jobs") == {"type": "two"}
        await _assert_drained(layer, redis)


async def test_reader_waits_while_a_receiver_fetches(
    make_layer: MakeLayer, monkeypatch: pytest.MonkeyPatch, redis: coredis.Redis[bytes]
) -> None:
    """A second receiver wakes the reader mid-fetch: no two read_take calls at once, both served."""
    async with make_layer() as layer:
        await _warm(layer)
        gate = trio.Event()
        calls = _watch_read_take(monkeypatch, before=gate.wait)
        await layer.send("jobs", {"type": "one"})
        await layer.send("jobs", {"type": "two"})
        got: list[dict[str, Any]] = []

        async def receive() -> None:
            got.append(await layer.receive("jobs"))

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                try:  # the gate is waited on in a shielded call: always open it
                    nursery.start_soon(receive)
                    await trio.testing.wait_all_tasks_blocked()
                    assert len(calls) == 1  # the first receiver is held at the gate
                    nursery.start_soon(receive)
                    await trio.testing.wait_all_tasks_blocked()
                    assert (
                        len(calls) == 1
                    )  # the reader did not start a second read_take
                finally:
                    gate.set()
        assert sorted(m["type"] for m in got) == ["one", "two"]
        assert [n for _, n in calls] == [0] * len(calls)
        await _assert_drained(layer, redis)


async def test_receivers_lost_read_take_reply_is_recovered_by_the_reader(
    make_layer: MakeLayer, monkeypatch: pytest.MonkeyPatch, redis: coredis.Redis[bytes]
) -> None:
    """The reply of a receiver's own read_take is lost: the reader recovers the batch, delivered once."""
    async with make_layer() as layer:
        await _warm(layer)
        calls = _watch_read_take(monkeypatch, lose_reply=True)
        await layer.send("jobs", {"type": "lost reply"})
        with trio.fail_after(10):
            assert await layer.receive("jobs") == {"type": "lost reply"}
        assert calls[0][0] is trio.lowlevel.current_task()
        assert layer._workers["jobs"].handover_unknown is None
        await _assert_drained(layer, redis)
