"""Dispatch order under mixed sources and handler durations (property-based, virtual time)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings, strategies as st

from trichannels.consumer import AsyncConsumer, handler_watchdog
from trichannels.layers import channel_layers
from trichannels.layers.memory import InMemoryChannelLayer
from trichannels.testing import ApplicationCommunicator
from trichannels.types import Message

SCOPE = {"type": "websocket", "path": "/ws/"}

steps = st.lists(
    st.tuples(
        st.sampled_from(["ws", "layer"]),
        st.sampled_from([0.0, 0.05, 0.3, 2.0]),  # how long the handler takes
        st.sampled_from([0.0, 0.05, 0.5]),  # pause before the next event
    ),
    min_size=1,
    max_size=14,
)


class Recorder(AsyncConsumer):
    close_timeout = 1000.0

    def __init__(self, log: list[tuple[str, str, float]]) -> None:
        super().__init__()
        self.log = log

    async def websocket_connect(self, message: Message) -> None:
        await self.send({"type": "websocket.accept"})
        await self.send({"type": "websocket.send", "text": self.channel_name})

    async def _run_event(self, event_id: str, duration: float) -> None:
        self.log.append(("start", event_id, trio.current_time()))
        await trio.sleep(duration)
        self.log.append(("end", event_id, trio.current_time()))

    async def websocket_receive(self, message: Message) -> None:
        event_id, duration = message["text"].split("/")
        await self._run_event(event_id, float(duration))

    async def ev_x(self, event: Message) -> None:
        await self._run_event(event["id"], event["duration"])

    async def websocket_disconnect(self, message: Message) -> None:
        self.log.append(("disconnect", "", trio.current_time()))


def _run(
    plan: list[tuple[str, float, float]], watchdog: bool
) -> tuple[list[tuple[str, str, float]], int]:
    """Run the plan; return the handlers' log and how many layer messages were dropped."""
    log: list[tuple[str, str, float]] = []
    dropped = 0

    async def main() -> None:
        nonlocal dropped
        async with InMemoryChannelLayer() as layer:
            previous = channel_layers.set("default", layer)
            try:
                watching = handler_watchdog() if watchdog else contextlib.nullcontext()
                async with (
                    watching,
                    ApplicationCommunicator(Recorder(log), SCOPE) as comm,
                ):
                    await comm.send_input({"type": "websocket.connect"})
                    await comm.receive_output()
                    channel = (await comm.receive_output())["text"]
                    for n, (source, duration, gap) in enumerate(plan):
                        event_id = f"{source}{n}"
                        if source == "ws":
                            text = f"{event_id}/{duration}"
                            await comm.send_input(
                                {"type": "websocket.receive", "text": text}
                            )
                        else:
                            event = {
                                "type": "ev.x",
                                "id": event_id,
                                "duration": duration,
                            }
                            await layer.send(channel, event)
                        await trio.sleep(gap)
                    await comm.send_input(
                        {"type": "websocket.disconnect", "code": 1000}
                    )
                    await comm.wait(timeout=10_000)
                dropped = layer.statistics().messages_dropped
            finally:
                channel_layers.set("default", previous)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return log, dropped


@pytest.mark.parametrize("watchdog", [False, True], ids=["own-spare", "watchdog"])
@settings(max_examples=60, deadline=None)
@given(plan=steps)
def test_events_run_one_at_a_time_in_order_and_none_is_lost(
    plan: list[tuple[str, float, float]], watchdog: bool
) -> None:
    """Whatever the timing, handlers never overlap, each source keeps its order, nothing is lost unseen."""
    log, dropped = _run(plan, watchdog)
    assert log[-1][0] == "disconnect"
    assert [entry for entry in log if entry[0] == "disconnect"] == [log[-1]]
    runs = log[:-1]
    # One at a time: start, end, start, end ... of the same event.
    assert [kind for kind, _, _ in runs] == ["start", "end"] * (len(runs) // 2)
    for start, end in zip(runs[::2], runs[1::2], strict=True):
        assert start[1] == end[1]
    handled = [event_id for kind, event_id, _ in runs if kind == "start"]
    sent = [f"{source}{n}" for n, (source, _, _) in enumerate(plan)]
    assert len(handled) == len(set(handled))
    assert set(handled) <= set(sent)
    missing = set(sent) - set(handled)
    # Only a layer message taken as the disconnect handler started may be
    # missing, and it is counted as dropped.
    assert all(event_id.startswith("layer") for event_id in missing)
    assert len(missing) == dropped
    for source in ("ws", "layer"):
        mine = [event_id for event_id in handled if event_id.startswith(source)]
        assert mine == sorted(mine, key=lambda event_id: int(event_id[len(source) :]))
    # Nothing waits for no reason: a handler starts as soon as the previous one ended
    # or its event was sent, whichever is later (within the watchdog's 0.2 s).
    sent_at: dict[str, float] = {}
    t = 0.0
    for n, (source, _, gap) in enumerate(plan):
        sent_at[f"{source}{n}"] = t
        t += gap
    previous_end = 0.0
    base = runs[0][2] - sent_at[runs[0][1]] if runs else 0.0
    for start, end in zip(runs[::2], runs[1::2], strict=True):
        ready = max(previous_end, base + sent_at[start[1]])
        assert start[2] - ready <= 0.2 + 1e-9, (start, ready)
        previous_end = end[2]


def test_plan_strategy_is_used() -> None:
    """Keeps the module's helpers honest: one fixed plan through both paths."""
    plan: Any = [
        ("ws", 2.0, 0.0),
        ("layer", 0.0, 0.0),
        ("ws", 0.0, 0.5),
        ("layer", 0.3, 0.0),
    ]
    for watchdog in (False, True):
        log, dropped = _run(plan, watchdog)
        assert dropped == 0
        starts = [event_id for kind, event_id, _ in log if kind == "start"]
        assert starts == ["ws0", "layer1", "ws2", "layer3"]
