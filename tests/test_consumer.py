"""AsyncConsumer / SyncConsumer: dispatch, lifetimes, errors, cancellation."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
import trio
import trio.testing

from trichannels.consumer import (
    _TAKEOVER_AFTER,
    AsyncConsumer,
    RefusedLayerMessage,
    SyncConsumer,
    get_handler_name,
    handler_watchdog,
)
from trichannels.exceptions import StopConsumer
from trichannels.testing import ApplicationCommunicator
from trichannels.types import Message

# Every async test runs with and without a handler watchdog (see conftest).
BOTH_INSTANCE_MODES = True


async def _in_mode(body: Callable[[], Awaitable[None]], hosted: bool) -> None:
    """Run ``body`` inside a handler watchdog (instances hosted) or without one."""
    if hosted:
        async with handler_watchdog():
            await body()
    else:
        await body()


SCOPE = {"type": "websocket", "path": "/ws/test/"}


class Recorder(AsyncConsumer):
    """Records every event it handles; echoes 'websocket.receive' as 'websocket.send'."""

    channel_layer_alias = None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.events: list[str] = []

    async def websocket_connect(self, message: Message) -> None:
        self.events.append("connect")
        await self.send({"type": "websocket.accept"})

    async def websocket_receive(self, message: Message) -> None:
        self.events.append(message["text"])
        await self.send({"type": "websocket.send", "text": message["text"]})

    async def websocket_disconnect(self, message: Message) -> None:
        self.events.append("disconnect")
        raise StopConsumer


async def test_events_dispatched_in_order() -> None:
    """Events reach their handlers one at a time, in arrival order."""
    consumer = Recorder()
    async with ApplicationCommunicator(consumer, SCOPE) as comm:
        await comm.send_input({"type": "websocket.connect"})
        for text in ["a", "b", "c"]:
            await comm.send_input({"type": "websocket.receive", "text": text})
        assert (await comm.receive_output())["type"] == "websocket.accept"
        assert [(await comm.receive_output())["text"] for _ in range(3)] == [
            "a",
            "b",
            "c",
        ]
        await comm.send_input({"type": "websocket.disconnect", "code": 1000})
        await comm.wait()
    assert consumer.events == ["connect", "a", "b", "c", "disconnect"]


async def test_as_asgi_makes_fresh_instance_per_connection() -> None:
    """as_asgi() builds one instance per connection and applies initkwargs to it."""
    seen: list[int] = []

    class Counter(AsyncConsumer):
        channel_layer_alias = None
        start = 0

        async def websocket_connect(self, message: Message) -> None:
            seen.append(id(self))
            self.start += 1
            await self.send(
                {"type": "websocket.accept", "subprotocol": str(self.start)}
            )

    app = Counter.as_asgi(start=41)
    for _ in range(2):
        async with ApplicationCommunicator(app, SCOPE) as comm:
            await comm.send_input({"type": "websocket.connect"})
            assert (await comm.receive_output())["subprotocol"] == "42"
    assert len(set(seen)) == 2
    assert app.consumer_class is Counter  # type: ignore[attr-defined]
    assert app.__name__ == "Counter"


def test_as_asgi_rejects_unknown_initkwargs() -> None:
    """Unknown initkwargs fail at as_asgi() time, naming them."""
    with pytest.raises(
        TypeError,
        match=r"^Recorder\.as_asgi\(\) got unexpected keyword argument\(s\) 'bogus', 'other'; only existing class attributes can be set$",
    ):
        Recorder.as_asgi(other=1, bogus=2)


def test_as_asgi_rejects_method_override() -> None:
    """An initkwarg may not replace a method of the consumer."""
    with pytest.raises(
        TypeError,
        match=r"^Recorder\.as_asgi\(\) keyword argument\(s\) 'send' would replace",
    ):
        Recorder.as_asgi(send=print)


@pytest.mark.parametrize(
    ("message", "exc", "pattern"),
    [
        (
            "not a dict",
            TypeError,
            r"^an event must be a mapping with a 'type' key, got 'not a dict'$",
        ),
        ({"text": "x"}, ValueError, r"^event has no 'type' key: \{'text': 'x'\}$"),
        (
            {"type": 5},
            TypeError,
            r"^event 'type' must be a str, got 5 in \{'type': 5\}$",
        ),
        (
            {"type": "_secret"},
            ValueError,
            r"^event type '_secret' maps to handler name '_secret', which starts with an underscore",
        ),
        (
            {"type": ".x"},
            ValueError,
            r"^event type '\.x' maps to handler name '_x', which starts with an underscore",
        ),
    ],
)
def test_get_handler_name_bad_input(
    message: Any, exc: type[Exception], pattern: str
) -> None:
    """Malformed events raise a specific exception naming the value."""
    with pytest.raises(exc, match=pattern):
        get_handler_name(message)


async def test_missing_handler_raises_naming_type(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An event with no handler ends the instance with ValueError naming the type."""
    async with ApplicationCommunicator(Recorder(), SCOPE) as comm:
        await comm.send_input({"type": "websocket.frobnicate"})
        with pytest.raises(
            ValueError,
            match=r"^no handler for message type 'websocket\.frobnicate': Recorder has no method 'websocket_frobnicate'$",
        ):
            await comm.wait()


async def test_malformed_protocol_event_ends_instance() -> None:
    """A server event without 'type' surfaces as an error from the instance."""
    async with ApplicationCommunicator(Recorder(), SCOPE) as comm:
        comm._input_send.send_nowait({"no": "type"})  # bypass send_input's own check
        with pytest.raises(ValueError, match=r"^event has no 'type' key"):
            await comm.wait()


async def test_handler_exception_propagates_and_nothing_keeps_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler's exception is logged once, cancels child tasks, and propagates unwrapped."""
    child_finally = trio.Event()

    class Boom(Recorder):
        async def websocket_connect(self, message: Message) -> None:
            self.start_soon(self.child)
            await trio.testing.wait_all_tasks_blocked()
            raise KeyError("boom")

        async def child(self) -> None:
            try:
                await trio.sleep_forever()
            finally:
                child_finally.set()

    caplog.set_level(logging.ERROR, logger="trichannels.consumer")
    async with ApplicationCommunicator(Boom(), SCOPE) as comm:
        await comm.send_input({"type": "websocket.connect"})
        with pytest.raises(KeyError, match="boom"):
            await comm.wait()
    assert child_finally.is_set()
    records = [r for r in caplog.records if r.name == "trichannels.consumer"]
    assert len(records) == 1
    assert (
        records[0].getMessage()
        == "Unhandled exception in test_handler_exception_propagates_and_nothing_keeps_running.<locals>.Boom for websocket /ws/test/"
    )


async def test_child_task_exception_ends_instance() -> None:
    """A child task's exception ends the instance like a handler's would."""

    class ChildFails(Recorder):
        async def websocket_connect(self, message: Message) -> None:
            self.start_soon(self.child)

        async def child(self) -> None:
            raise RuntimeError("child failed")

    async with ApplicationCommunicator(ChildFails(), SCOPE) as comm:
        await comm.send_input({"type": "websocket.connect"})
        with pytest.raises(RuntimeError, match=r"^child failed$"):
            await comm.wait()


async def test_child_task_cancelled_on_disconnect() -> None:
    """A child task is cancelled when the client disconnects, and its finally runs."""
    log: list[str] = []

    class WithChild(Recorder):
        async def websocket_connect(self, message: Message) -> None:
            self.start_soon(self.heartbeat)
            await self.send({"type": "websocket.accept"})

        async def heartbeat(self) -> None:
            try:
                log.append("started")
                await trio.sleep_forever()
            finally:
                log.append("finally")

    async with ApplicationCommunicator(WithChild(), SCOPE) as comm:
        await comm.send_input({"type": "websocket.connect"})
        await comm.receive_output()
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["started"]
        await comm.send_input({"type": "websocket.disconnect", "code": 1000})
        await comm.wait()
    assert log == ["started", "finally"]


async def test_stop_consumer_from_child_ends_cleanly() -> None:
    """StopConsumer raised in a child task ends the instance without an error."""

    class Stops(Recorder):
        async def websocket_connect(self, message: Message) -> None:
            self.start_soon(self.stopper)

        async def stopper(self) -> None:
            raise StopConsumer

    async with ApplicationCommunicator(Stops(), SCOPE) as comm:
        await comm.send_input({"type": "websocket.connect"})
        await comm.wait()
    assert comm.finished


async def test_busy_handler_cancelled_after_close_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A handler still busy at disconnect gets close_timeout seconds, then is cancelled."""
    log: list[tuple[str, float]] = []

    class Slow(Recorder):
        close_timeout = 3.0

        async def websocket_receive(self, message: Message) -> None:
            try:
                await trio.sleep_forever()
            finally:
                log.append(("handler cancelled", trio.current_time()))

        async def websocket_disconnect(self, message: Message) -> None:
            log.append(("disconnect", trio.current_time()))

    start = trio.current_time()
    async with ApplicationCommunicator(Slow(), SCOPE) as comm:
        await comm.send_input({"type": "websocket.receive", "text": "x"})
        await trio.sleep(1)
        await comm.send_input({"type": "websocket.disconnect", "code": 1001})
        await comm.wait(timeout=10)
    assert log == [("handler cancelled", start + 4.0), ("disconnect", start + 4.0)]


async def test_events_queued_before_disconnect_run_until_grace_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Events queued before a disconnect still run in order until close_timeout; then the busy one is cancelled."""
    log: list[tuple[str, float]] = []

    class Slowish(Recorder):
        close_timeout = 3.0

        async def websocket_receive(self, message: Message) -> None:
            try:
                await trio.sleep(2)
                log.append((f"done {message['text']}", trio.current_time()))
            except trio.Cancelled:
                log.append((f"cancelled {message['text']}", trio.current_time()))
                raise

        async def websocket_disconnect(self, message: Message) -> None:
            log.append(("disconnect", trio.current_time()))

    start = trio.current_time()
    async with ApplicationCommunicator(Slowish(), SCOPE) as comm:
        for text in ["a", "b", "c"]:
            await comm.send_input({"type": "websocket.receive", "text": text})
        await comm.send_input({"type": "websocket.disconnect", "code": 1001})
        await comm.wait(timeout=10)
    # "a" is handled by the task that reads the server's events; the spare task
    # takes over reading _TAKEOVER_AFTER later and notices the disconnect then.
    noticed = start + _TAKEOVER_AFTER
    assert log == [
        ("done a", start + 2.0),
        ("cancelled b", noticed + 3.0),
        ("disconnect", noticed + 3.0),
    ]


async def test_last_message_before_disconnect_is_handled() -> None:
    """A client that sends a frame and disconnects at once still has the frame handled."""
    consumer = Recorder()
    async with ApplicationCommunicator(consumer, SCOPE) as comm:
        await comm.send_input({"type": "websocket.connect"})
        await comm.send_input({"type": "websocket.receive", "text": "bye"})
        await comm.send_input({"type": "websocket.disconnect", "code": 1000})
        await comm.wait()
    assert consumer.events == ["connect", "bye", "disconnect"]


async def test_stuck_disconnect_handler_and_child_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After disconnect, a stuck disconnect handler is cancelled at close_timeout; the instance returns."""
    log: list[tuple[str, float]] = []

    class Stuck(Recorder):
        close_timeout = 2.5

        async def websocket_connect(self, message: Message) -> None:
            self.start_soon(self.child)

        async def child(self) -> None:
            try:
                await trio.sleep_forever()
            finally:
                log.append(("child cancelled", trio.current_time()))

        async def websocket_disconnect(self, message: Message) -> None:
            try:
                await trio.sleep_forever()
            finally:
                log.append(("disconnect cancelled", trio.current_time()))

    start = trio.current_time()
    async with ApplicationCommunicator(Stuck(), SCOPE) as comm:
        await comm.send_input({"type": "websocket.connect"})
        await comm.send_input({"type": "websocket.disconnect", "code": 1000})
        await comm.wait(timeout=10)
    assert log == [
        ("disconnect cancelled", start + 2.5),
        ("child cancelled", start + 2.5),
    ]


async def test_start_soon_outside_instance() -> None:
    """start_soon() before the instance runs raises RuntimeError."""

    async def nothing() -> None:
        pass

    with pytest.raises(
        RuntimeError,
        match=r"^Recorder\.start_soon\(\) called while the instance is not running$",
    ):
        Recorder().start_soon(nothing)


async def test_cancellation_passes_through() -> None:
    """Cancelling the server's task cancels the instance; Cancelled is not swallowed."""
    finally_ran = False

    class Waits(Recorder):
        async def websocket_connect(self, message: Message) -> None:
            nonlocal finally_ran
            try:
                await trio.sleep_forever()
            finally:
                finally_ran = True

    send_in, receive_in = trio.open_memory_channel[Message](1)
    await send_in.send({"type": "websocket.connect"})

    async def server_send(message: Message) -> None:
        pass

    with trio.move_on_after(0.5) as scope:
        await Waits()(dict(SCOPE), receive_in.receive, server_send)
    assert scope.cancelled_caught
    assert finally_ran


class ThreadRecorder(SyncConsumer):
    channel_layer_alias = None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threads: list[int] = []

    def websocket_connect(self, message: Message) -> None:
        self.threads.append(threading.get_ident())
        self.send({"type": "websocket.accept"})

    def websocket_receive(self, message: Message) -> None:
        self.threads.append(threading.get_ident())
        self.send({"type": "websocket.send", "text": message["text"].upper()})

    def websocket_disconnect(self, message: Message) -> None:
        self.threads.append(threading.get_ident())
        raise StopConsumer


async def test_sync_consumer_handlers_on_one_thread_per_instance() -> None:
    """All sync handlers of one connection run on one thread, not the loop's; send is sync."""
    consumers = [ThreadRecorder(), ThreadRecorder()]
    with trio.fail_after(10):
        async with (
            ApplicationCommunicator(consumers[0], SCOPE) as a,
            ApplicationCommunicator(consumers[1], SCOPE) as b,
        ):
            for comm in (a, b):
                await comm.send_input({"type": "websocket.connect"})
                assert (await comm.receive_output())["type"] == "websocket.accept"
            for text in ["x", "y"]:
                for comm in (a, b):
                    await comm.send_input({"type": "websocket.receive", "text": text})
                    assert (await comm.receive_output())["text"] == text.upper()
            for comm in (a, b):
                await comm.send_input({"type": "websocket.disconnect", "code": 1000})
                await comm.wait()
    for consumer in consumers:
        assert len(consumer.threads) == 4
        assert len(set(consumer.threads)) == 1
        assert consumer.threads[0] != threading.get_ident()


async def test_sync_consumers_do_not_queue_behind_each_other() -> None:
    """Two connections' sync handlers run concurrently (each instance has its own thread)."""
    barrier = threading.Barrier(2, timeout=5)

    class Meets(SyncConsumer):
        channel_layer_alias = None

        def websocket_connect(self, message: Message) -> None:
            barrier.wait()  # deadlocks (BrokenBarrierError) if the two run one after another
            self.send({"type": "websocket.accept"})

    with trio.fail_after(10):
        async with (
            ApplicationCommunicator(Meets(), SCOPE) as a,
            ApplicationCommunicator(Meets(), SCOPE) as b,
        ):
            await a.send_input({"type": "websocket.connect"})
            await b.send_input({"type": "websocket.connect"})
            assert (await a.receive_output(timeout=5))["type"] == "websocket.accept"
            assert (await b.receive_output(timeout=5))["type"] == "websocket.accept"


@pytest.mark.parametrize("hosted", [False, True], ids=["own task group", "hosted"])
def test_consumer_neutral(backend: str, hosted: bool) -> None:
    """Dispatch, child-task cancellation and errors behave the same on asyncio and trio."""

    async def body() -> None:
        log: list[str] = []

        class Neutral(Recorder):
            async def websocket_connect(self, message: Message) -> None:
                self.start_soon(self.child)
                await self.send({"type": "websocket.accept"})

            async def child(self) -> None:
                try:
                    await anyio.sleep_forever()
                finally:
                    log.append("child finally")

        async with ApplicationCommunicator(Neutral(), SCOPE) as comm:
            await comm.send_input({"type": "websocket.connect"})
            assert (await comm.receive_output())["type"] == "websocket.accept"
            await comm.send_input({"type": "websocket.receive", "text": "hi"})
            assert (await comm.receive_output())["text"] == "hi"
            await comm.send_input({"type": "websocket.disconnect", "code": 1000})
            await comm.wait()
        assert log == ["child finally"]

        class Fails(Recorder):
            async def websocket_connect(self, message: Message) -> None:
                raise ZeroDivisionError("nope")

        async with ApplicationCommunicator(Fails(), SCOPE) as comm:
            await comm.send_input({"type": "websocket.connect"})
            with pytest.raises(ZeroDivisionError, match=re.escape("nope")):
                await comm.wait()

    anyio.run(_in_mode, body, hosted, backend=backend)


async def test_close_websockets_sends_going_away() -> None:
    """close_websockets() makes every running WebSocket instance send close 1001."""
    from trichannels.consumer import close_websockets

    async with (
        ApplicationCommunicator(Recorder(), SCOPE) as a,
        ApplicationCommunicator(Recorder(), SCOPE) as b,
    ):
        for comm in (a, b):
            await comm.send_input({"type": "websocket.connect"})
            assert (await comm.receive_output())["type"] == "websocket.accept"
        assert close_websockets() == 2
        for comm in (a, b):
            assert await comm.receive_output() == {
                "type": "websocket.close",
                "code": 1001,
                "reason": "server shutting down",
            }
            await comm.send_input({"type": "websocket.disconnect", "code": 1001})
            await comm.wait()
    assert close_websockets() == 0


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (
            {"code": 1006},
            r"^close code must be 1000, 1001 or in 3000\.\.4999, got 1006$",
        ),
        (
            {"code": "1001"},
            r"^close code must be 1000, 1001 or in 3000\.\.4999, got '1001'$",
        ),
        (
            {"reason": "x" * 124},
            r"^close reason must be a str of at most 123 UTF-8 bytes, got 'x+'$",
        ),
    ],
)
def test_close_websockets_bad_input(kwargs: dict[str, Any], pattern: str) -> None:
    """close_websockets() refuses codes an application may not send and overlong reasons."""
    from trichannels.consumer import close_websockets

    with pytest.raises(ValueError, match=pattern):
        close_websockets(**kwargs)


async def test_raw_send_is_validated() -> None:
    """A malformed ASGI message from a raw consumer fails at the call site, naming the field."""

    class BadSend(Recorder):
        async def websocket_connect(self, message: Message) -> None:
            await self.send({"type": "websocket.send", "text": b"not str"})

    async with ApplicationCommunicator(BadSend(), SCOPE) as comm:
        await comm.send_input({"type": "websocket.connect"})
        with pytest.raises(TypeError, match=r"'text'"):
            await comm.wait()
        assert await comm.receive_nothing()


class LayerUser(AsyncConsumer):
    """Accepts, reports its channel name, and has one real layer-event handler."""

    channel_layer_alias = "default"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: list[str] = []

    async def websocket_connect(self, message: Message) -> None:
        await self.send({"type": "websocket.accept"})
        await self.send({"type": "websocket.send", "text": self.channel_name})

    async def websocket_receive(self, message: Message) -> None:
        self.calls.append("websocket_receive")

    async def websocket_disconnect(self, message: Message) -> None:
        raise StopConsumer

    async def chat_message(self, event: Message) -> None:
        self.calls.append("chat_message")
        await self.send({"type": "websocket.send", "text": event["text"]})

    async def helper_method(self, event: Message) -> None:
        self.calls.append("helper_method")


@pytest.fixture
async def memory_layer() -> Any:
    from trichannels.layers import channel_layers
    from trichannels.layers.memory import InMemoryChannelLayer

    async with InMemoryChannelLayer() as layer:
        previous = channel_layers.set("default", layer)
        try:
            yield layer
        finally:
            channel_layers.set("default", previous)


async def test_layer_events_reach_handlers(memory_layer: Any) -> None:
    """A layer message whose type names a handler is dispatched in order with client events."""
    consumer = LayerUser()
    async with ApplicationCommunicator(consumer, SCOPE) as comm:
        await comm.send_input({"type": "websocket.connect"})
        await comm.receive_output()
        channel = (await comm.receive_output())["text"]
        await memory_layer.send(
            channel, {"type": "chat.message", "text": "from the layer"}
        )
        assert (await comm.receive_output())["text"] == "from the layer"
    assert consumer.calls == ["chat_message"]


@pytest.mark.parametrize(
    ("message_type", "pattern"),
    [
        (
            "send",
            r"^refusing channel-layer message of type 'send': 'send' is part of the consumer's own API, not an event handler$",
        ),
        ("dispatch", r"'dispatch' is part of the consumer's own API"),
        ("start.soon", r"'start_soon' is part of the consumer's own API"),
        (
            "websocket.receive",
            r"'websocket_receive' handles 'websocket' protocol events from the server, not layer events$",
        ),
    ],
)
async def test_layer_messages_cannot_call_api_methods(
    memory_layer: Any, message_type: str, pattern: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A layer message naming an API or protocol method is refused, logged, and never called."""
    from trichannels.consumer import RefusedLayerMessage

    consumer = LayerUser()
    async with ApplicationCommunicator(consumer, SCOPE) as comm:
        await comm.send_input({"type": "websocket.connect"})
        await comm.receive_output()
        channel = (await comm.receive_output())["text"]
        await memory_layer.send(channel, {"type": message_type, "text": "crafted"})
        with pytest.raises(RefusedLayerMessage, match=pattern):
            await comm.wait()
        assert await comm.receive_nothing()
    assert consumer.calls == []
    records = [r for r in caplog.records if r.name == "trichannels.consumer"]
    assert len(records) == 1
    assert records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], RefusedLayerMessage)


async def test_layer_event_allowlist(memory_layer: Any) -> None:
    """With layer_event_handlers set, only the listed methods can be reached from the layer."""
    from trichannels.consumer import RefusedLayerMessage

    class Strict(LayerUser):
        layer_event_handlers = frozenset({"chat_message"})

    consumer = Strict()
    async with ApplicationCommunicator(consumer, SCOPE) as comm:
        await comm.send_input({"type": "websocket.connect"})
        await comm.receive_output()
        channel = (await comm.receive_output())["text"]
        await memory_layer.send(channel, {"type": "chat.message", "text": "ok"})
        assert (await comm.receive_output())["text"] == "ok"
        await memory_layer.send(channel, {"type": "helper.method"})
        with pytest.raises(
            RefusedLayerMessage,
            match=r"'helper_method' is not in the consumer's layer_event_handlers$",
        ):
            await comm.wait()
    assert consumer.calls == ["chat_message"]


async def test_undispatched_layer_messages_are_counted_as_dropped(
    memory_layer: Any, autojump_clock: trio.testing.MockClock
) -> None:
    """Layer messages taken but never dispatched when the instance ends show up as dropped."""

    class Busy(LayerUser):
        max_pending_events = 1
        close_timeout = 0.01

        async def websocket_receive(self, message: Message) -> None:
            await trio.sleep_forever()

    async with ApplicationCommunicator(Busy(), SCOPE) as comm:
        await comm.send_input({"type": "websocket.connect"})
        await comm.receive_output()
        channel = (await comm.receive_output())["text"]
        await comm.send_input({"type": "websocket.receive", "text": "stuck"})
        await trio.testing.wait_all_tasks_blocked()
        for n in range(5):
            await memory_layer.send(channel, {"type": "chat.message", "text": str(n)})
        await trio.testing.wait_all_tasks_blocked()
        await comm.send_input({"type": "websocket.disconnect", "code": 1000})
        await comm.wait(timeout=1)
    stats = memory_layer.statistics()
    # The protocol handler is busy: one layer message waits in the queue behind
    # it, one is held by the layer reader waiting for room, three stay in the layer.
    assert stats.messages_dropped == 2
    assert stats.queued_messages == 3
    assert stats.messages_received == 2


async def test_layer_channel_is_read_only_once_its_name_is_used(
    memory_layer: Any,
) -> None:
    """An instance that never reads channel_name parks no receiver on the layer."""

    class Quiet(AsyncConsumer):
        async def websocket_connect(self, message: Message) -> None:
            await self.send({"type": "websocket.accept"})

        async def websocket_receive(self, message: Message) -> None:
            await self.send({"type": "websocket.send", "text": self.channel_name})

        async def chat_message(self, event: Message) -> None:
            await self.send({"type": "websocket.send", "text": event["text"]})

    async with ApplicationCommunicator(Quiet(), SCOPE) as comm:
        await comm.send_input({"type": "websocket.connect"})
        await comm.receive_output()
        await trio.testing.wait_all_tasks_blocked()
        assert memory_layer.statistics().channels == 0
        await comm.send_input({"type": "websocket.receive", "text": "name?"})
        channel = (await comm.receive_output())["text"]
        await trio.testing.wait_all_tasks_blocked()
        assert memory_layer.statistics().channels == 1
        await memory_layer.send(channel, {"type": "chat.message", "text": "reached"})
        assert (await comm.receive_output())["text"] == "reached"


def test_channel_name_outside_an_instance() -> None:
    """channel_name before the instance runs (or without a layer) is a clear AttributeError."""
    with pytest.raises(
        AttributeError,
        match=r"^Recorder\.channel_name is only set while the instance runs with a channel layer",
    ):
        Recorder().channel_name  # noqa: B018


# -- who reads and who handles: the spare reader ----------------------------------


async def test_readers_swap_when_a_handler_is_stuck(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A slow handler makes the spare task read; later events still run in order, in time."""
    log: list[tuple[str, float]] = []

    class Slow(Recorder):
        async def websocket_receive(self, message: Message) -> None:
            if message["text"].startswith("slow"):
                await trio.sleep(1)
            log.append((message["text"], trio.current_time()))
            await self.send({"type": "websocket.send", "text": message["text"]})

        async def websocket_disconnect(self, message: Message) -> None:
            log.append(("disconnect", trio.current_time()))

    start = trio.current_time()
    async with ApplicationCommunicator(Slow(), SCOPE) as comm:
        await comm.send_input({"type": "websocket.connect"})
        await comm.receive_output()
        await comm.send_input({"type": "websocket.receive", "text": "slow 1"})
        await trio.sleep(
            2
        )  # the spare took over reading at 0.1, the slow one ended at 1
        await comm.send_input({"type": "websocket.receive", "text": "fast 1"})
        await trio.testing.wait_all_tasks_blocked()
        await comm.send_input({"type": "websocket.receive", "text": "slow 2"})
        await trio.sleep(0.5)  # the first task takes reading back at 2.1
        await comm.send_input({"type": "websocket.receive", "text": "fast 2"})
        await comm.send_input({"type": "websocket.disconnect", "code": 1000})
        texts = [(await comm.receive_output(timeout=10))["text"] for _ in range(4)]
        await comm.wait(timeout=10)
    assert texts == ["slow 1", "fast 1", "slow 2", "fast 2"]
    assert log == [
        ("slow 1", start + 1),
        ("fast 1", start + 2),
        ("slow 2", start + 3),
        ("fast 2", start + 3),
        ("disconnect", start + 3),
    ]


async def test_events_from_both_sources_queue_behind_a_busy_handler(
    memory_layer: Any, autojump_clock: trio.testing.MockClock
) -> None:
    """Layer and protocol events arriving during a handler run after it, in arrival order."""
    release = trio.Event()

    class Ordered(LayerUser):
        async def websocket_receive(self, message: Message) -> None:
            self.calls.append(message["text"])
            if message["text"] == "block":
                await release.wait()

        async def chat_message(self, event: Message) -> None:
            self.calls.append(f"layer {event['text']}")

    consumer = Ordered()
    async with ApplicationCommunicator(consumer, SCOPE) as comm:
        await comm.send_input({"type": "websocket.connect"})
        await comm.receive_output()
        channel = (await comm.receive_output())["text"]
        await comm.send_input({"type": "websocket.receive", "text": "block"})
        await trio.testing.wait_all_tasks_blocked()
        await memory_layer.send(channel, {"type": "chat.message", "text": "1"})
        await trio.sleep(1)  # the spare reader takes over and reads the next one
        await comm.send_input({"type": "websocket.receive", "text": "after"})
        await memory_layer.send(channel, {"type": "chat.message", "text": "2"})
        await trio.sleep(1)
        assert consumer.calls == ["block"]
        release.set()
        await trio.sleep(1)
        assert consumer.calls == ["block", "layer 1", "after", "layer 2"]
        await comm.send_input({"type": "websocket.disconnect", "code": 1000})
        await comm.wait(timeout=10)


async def test_idle_instance_is_never_woken(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After its events are handled, an idle instance's tasks stay asleep (no polling)."""
    steps: list[str] = []
    me = trio.lowlevel.current_task()

    class CountSteps(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            if task is not me:
                steps.append(task.name)

    async with ApplicationCommunicator(Recorder(), SCOPE) as comm:
        await comm.send_input({"type": "websocket.connect"})
        await comm.receive_output()
        for n in range(3):
            await comm.send_input({"type": "websocket.receive", "text": str(n)})
            await comm.receive_output()
        await trio.testing.wait_all_tasks_blocked()
        instrument = CountSteps()
        trio.lowlevel.add_instrument(instrument)
        try:
            await trio.sleep(100)
        finally:
            trio.lowlevel.remove_instrument(instrument)
        # At most two wake-ups of the spare reader (it stops watching the last
        # handler, then retires after _RETIRE_AFTER idle), not one per 0.1 s.
        assert len(steps) <= 2, steps
        await comm.send_input({"type": "websocket.receive", "text": "again"})
        assert (await comm.receive_output())["text"] == "again"
        await comm.send_input({"type": "websocket.disconnect", "code": 1000})
        await comm.wait()


async def test_stuck_handler_after_idle_still_hides_no_disconnect(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The spare reader retires when idle and comes back for the next handler run."""
    log: list[tuple[str, float]] = []

    class StuckLater(Recorder):
        close_timeout = 2.0

        async def websocket_receive(self, message: Message) -> None:
            if message["text"] == "stuck":
                try:
                    await trio.sleep_forever()
                finally:
                    log.append(("cancelled", trio.current_time()))
            await self.send({"type": "websocket.send", "text": message["text"]})

    async with ApplicationCommunicator(StuckLater(), SCOPE) as comm:
        await comm.send_input({"type": "websocket.connect"})
        await comm.receive_output()
        await trio.sleep(60)  # idle: the spare reader retires
        start = trio.current_time()
        await comm.send_input({"type": "websocket.receive", "text": "stuck"})
        await trio.sleep(1)
        await comm.send_input({"type": "websocket.disconnect", "code": 1000})
        await comm.wait(timeout=10)
    assert log == [("cancelled", start + 1 + 2.0)]


@pytest.mark.parametrize("hosted", [False, True], ids=["own task group", "hosted"])
def test_stuck_handler_and_disconnect_neutral(backend: str, hosted: bool) -> None:
    """On asyncio and trio, a disconnect during a stuck handler is noticed and bounds it."""

    async def body() -> None:
        log: list[str] = []

        class Stuck(Recorder):
            close_timeout = 0.2

            async def websocket_receive(self, message: Message) -> None:
                try:
                    await anyio.sleep_forever()
                finally:
                    log.append("handler cancelled")

            async def websocket_disconnect(self, message: Message) -> None:
                log.append("disconnect")

        with anyio.fail_after(5):
            async with ApplicationCommunicator(Stuck(), SCOPE) as comm:
                await comm.send_input({"type": "websocket.connect"})
                await comm.receive_output()
                await comm.send_input({"type": "websocket.receive", "text": "x"})
                await comm.send_input({"type": "websocket.disconnect", "code": 1000})
                await comm.wait(timeout=3)
        assert log == ["handler cancelled", "disconnect"]

    anyio.run(_in_mode, body, hosted, backend=backend)


@pytest.mark.parametrize("allowed", [frozenset({"other"}), {"other"}])
async def test_refusal_follows_each_instances_allowlist(
    memory_layer: Any, allowed: Any
) -> None:
    """One class, two allowlists: each instance refuses by its own (a plain set works too)."""

    async def deliver(consumer: LayerUser) -> str:
        async with ApplicationCommunicator(consumer, SCOPE) as comm:
            await comm.send_input({"type": "websocket.connect"})
            await comm.receive_output()
            channel = (await comm.receive_output())["text"]
            await memory_layer.send(channel, {"type": "chat.message", "text": "hi"})
            try:
                text: str = (await comm.receive_output())["text"]
            except RefusedLayerMessage as exc:
                return f"refused {exc.handler_name}"
            await comm.send_input({"type": "websocket.disconnect", "code": 1000})
            await comm.wait()
            return text

    for _ in range(2):  # the second time, the answers come from the cache
        allows = LayerUser(layer_event_handlers=frozenset({"chat_message"}))
        assert await deliver(allows) == "hi"
        assert (
            await deliver(LayerUser(layer_event_handlers=allowed))
            == "refused chat_message"
        )


async def test_layer_messages_waiting_at_a_disconnect_still_run(
    memory_layer: Any, autojump_clock: trio.testing.MockClock
) -> None:
    """Layer messages that arrived while a layer handler ran are handled in the grace period."""
    log: list[tuple[str, float]] = []

    class SlowLayer(LayerUser):
        async def chat_message(self, event: Message) -> None:
            if event["text"] == "slow":
                await trio.sleep(1)
            log.append((event["text"], trio.current_time()))

        async def websocket_disconnect(self, message: Message) -> None:
            log.append(("disconnect", trio.current_time()))

    async with ApplicationCommunicator(SlowLayer(), SCOPE) as comm:
        await comm.send_input({"type": "websocket.connect"})
        await comm.receive_output()
        channel = (await comm.receive_output())["text"]
        start = trio.current_time()
        for text in ("slow", "second", "third"):
            await memory_layer.send(channel, {"type": "chat.message", "text": text})
        await trio.sleep(0.5)
        await comm.send_input({"type": "websocket.disconnect", "code": 1000})
        await comm.wait(timeout=10)
    assert log == [
        ("slow", start + 1),
        ("second", start + 1),
        ("third", start + 1),
        ("disconnect", start + 1),
    ]
    assert memory_layer.statistics().messages_dropped == 0
