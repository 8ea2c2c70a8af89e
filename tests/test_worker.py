"""Workers: ChannelNameRouter consumers run against a channel layer."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from trichannels.consumer import AsyncConsumer
from trichannels.exceptions import ConfigurationError, InvalidChannelName
from trichannels.layers.memory import InMemoryChannelLayer
from trichannels.routing import ChannelNameRouter
from trichannels.types import Message
from trichannels.worker import run_worker


@pytest.fixture
async def layer() -> AsyncIterator[InMemoryChannelLayer]:
    async with InMemoryChannelLayer() as layer:
        yield layer


def make_app(log: list[Any], *, delay: float = 0, fail_on: str | None = None) -> Any:
    class Jobs(AsyncConsumer):
        channel_layer_alias = None

        async def job_run(self, message: Message) -> None:
            log.append(("start", message["n"], trio.current_time()))
            if message["n"] == fail_on:
                raise RuntimeError(f"job {message['n']} failed")
            await trio.sleep(delay)
            log.append(("done", message["n"], trio.current_time()))

    return ChannelNameRouter({"jobs": Jobs.as_asgi(), "other": Jobs.as_asgi()})


async def test_messages_are_handled(
    layer: InMemoryChannelLayer, nursery: trio.Nursery
) -> None:
    """Every message sent to a served channel reaches its consumer once."""
    log: list[Any] = []
    await nursery.start(
        lambda task_status: run_worker(
            make_app(log), ["jobs", "other"], layer=layer, task_status=task_status
        )
    )
    for n in range(5):
        await layer.send("jobs", {"type": "job.run", "n": f"j{n}"})
    await layer.send("other", {"type": "job.run", "n": "o"})
    await trio.testing.wait_all_tasks_blocked()
    assert sorted(entry[1] for entry in log if entry[0] == "done") == [
        "j0",
        "j1",
        "j2",
        "j3",
        "j4",
        "o",
    ]
    nursery.cancel_scope.cancel()


async def test_concurrency_limit(
    layer: InMemoryChannelLayer,
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
) -> None:
    """At most `concurrency` messages are in hand at once."""
    log: list[Any] = []
    start = trio.current_time()
    await nursery.start(
        lambda task_status: run_worker(
            make_app(log, delay=1),
            ["jobs"],
            layer=layer,
            concurrency=2,
            task_status=task_status,
        )
    )
    for n in range(4):
        await layer.send("jobs", {"type": "job.run", "n": n})
    await trio.sleep(10)
    done_times = sorted(t - start for kind, _, t in log if kind == "done")
    assert done_times == [1, 1, 2, 2]
    nursery.cancel_scope.cancel()


async def test_failing_handler_is_logged_and_worker_continues(
    layer: InMemoryChannelLayer, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler exception is logged (without the message body) and the next message is handled."""
    log: list[Any] = []
    caplog.set_level(logging.ERROR)
    await nursery.start(
        lambda task_status: run_worker(
            make_app(log, fail_on="bad"),
            ["jobs"],
            layer=layer,
            concurrency=1,
            task_status=task_status,
        )
    )
    await layer.send("jobs", {"type": "job.run", "n": "bad"})
    await layer.send("jobs", {"type": "job.run", "n": "good"})
    await trio.testing.wait_all_tasks_blocked()
    assert ("done", "good") in [(k, n) for k, n, _ in log]
    assert any(
        r.getMessage() == "handler for a message on 'jobs' failed"
        for r in caplog.records
    )
    nursery.cancel_scope.cancel()


async def test_stop_finishes_message_in_hand(
    layer: InMemoryChannelLayer, autojump_clock: trio.testing.MockClock
) -> None:
    """Stopping the worker lets the message in hand finish within the grace period."""
    log: list[Any] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_worker(
                make_app(log, delay=3),
                ["jobs"],
                layer=layer,
                grace_period=5,
                task_status=task_status,
            )
        )
        await layer.send("jobs", {"type": "job.run", "n": 1})
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert [(k, n) for k, n, _ in log] == [("start", 1), ("done", 1)]
    assert log[1][2] - log[0][2] == 3


async def test_stop_abandons_message_after_grace(
    layer: InMemoryChannelLayer,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A message still running grace_period seconds after the stop is cancelled and logged."""
    log: list[Any] = []
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_worker(
                make_app(log, delay=100),
                ["jobs"],
                layer=layer,
                grace_period=2,
                task_status=task_status,
            )
        )
        await layer.send("jobs", {"type": "job.run", "n": 1})
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert trio.current_time() - start == 3
    assert [k for k, _, _ in log] == ["start"]
    assert any(
        "not finished within grace_period=2s" in r.getMessage() for r in caplog.records
    )


@pytest.mark.parametrize(
    ("kwargs", "exc", "pattern"),
    [
        (
            {"channels": "jobs"},
            TypeError,
            r"^channels must be a sequence of channel names, not the str 'jobs'$",
        ),
        (
            {"channels": []},
            ConfigurationError,
            r"^a worker needs at least one channel name$",
        ),
        (
            {"channels": ["bad name"]},
            InvalidChannelName,
            r"^invalid channel name 'bad name'",
        ),
        (
            {"channels": ["local!"]},
            ConfigurationError,
            r"^worker channel 'local!' is process-local",
        ),
        (
            {"concurrency": 0},
            ConfigurationError,
            r"^concurrency must be a positive int, got 0$",
        ),
        (
            {"grace_period": -1},
            ConfigurationError,
            r"^grace_period must be a number >= 0, got -1$",
        ),
    ],
)
async def test_bad_arguments(
    layer: InMemoryChannelLayer,
    kwargs: dict[str, Any],
    exc: type[Exception],
    pattern: str,
) -> None:
    """Bad worker arguments fail at once, naming the value."""
    args: dict[str, Any] = {"channels": ["jobs"], **kwargs}
    channels = args.pop("channels")
    with pytest.raises(exc, match=pattern):
        await run_worker(make_app([]), channels, layer=layer, **args)


async def test_prompt_handlers_run_in_one_task(
    layer: InMemoryChannelLayer, nursery: trio.Nursery
) -> None:
    """The worker watches busy handlers for all instances: none starts a spare reader."""
    spares: list[bool] = []

    class Quick(AsyncConsumer):
        channel_layer_alias = None

        async def job_run(self, message: Message) -> None:
            spares.append(self._spare_running or self._others_started)

    await nursery.start(
        lambda task_status: run_worker(
            ChannelNameRouter({"jobs": Quick.as_asgi()}),
            ["jobs"],
            layer=layer,
            task_status=task_status,
        )
    )
    for n in range(3):
        await layer.send("jobs", {"type": "job.run", "n": n})
    await trio.testing.wait_all_tasks_blocked()
    assert spares == [False, False, False]
    nursery.cancel_scope.cancel()
