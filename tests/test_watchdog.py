"""The process-wide watcher of busy handlers (trichannels.consumer.handler_watchdog)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import trio
import trio.testing

from trichannels.consumer import AsyncConsumer, _find_watchdog, handler_watchdog
from trichannels.routing import ProtocolTypeRouter
from trichannels.testing import ApplicationCommunicator
from trichannels.types import Message

SCOPE = {"type": "websocket", "path": "/ws/"}


class Stuck(AsyncConsumer):
    """Echoes; a frame "stuck" blocks its handler until cancelled."""

    channel_layer_alias = None
    close_timeout = 2.0

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, float]] = []

    async def websocket_connect(self, message: Message) -> None:
        await self.send({"type": "websocket.accept"})

    async def websocket_receive(self, message: Message) -> None:
        if message["text"] == "stuck":
            try:
                await anyio.sleep_forever()
            finally:
                self.log.append(("cancelled", anyio.current_time()))
        await self.send({"type": "websocket.send", "text": message["text"]})

    async def websocket_disconnect(self, message: Message) -> None:
        self.log.append(("disconnect", anyio.current_time()))


async def test_short_handlers_start_no_spare_task() -> None:
    """With the watchdog open, an instance whose handlers return promptly runs in one task."""
    consumer = Stuck()
    async with handler_watchdog(), ApplicationCommunicator(consumer, SCOPE) as comm:
        await comm.send_input({"type": "websocket.connect"})
        await comm.receive_output()
        for n in range(20):
            await comm.send_input({"type": "websocket.receive", "text": str(n)})
            assert (await comm.receive_output())["text"] == str(n)
        await trio.testing.wait_all_tasks_blocked()
        assert not consumer._spare_running
        assert not consumer._others_started
        await comm.send_input({"type": "websocket.disconnect", "code": 1000})
        await comm.wait()


async def test_stuck_handler_gets_a_spare_from_the_watchdog(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The watchdog starts a spare reader for a stuck handler; the disconnect bounds it."""
    consumer = Stuck()
    async with handler_watchdog(), ApplicationCommunicator(consumer, SCOPE) as comm:
        await comm.send_input({"type": "websocket.connect"})
        await comm.receive_output()
        start = trio.current_time()
        await comm.send_input({"type": "websocket.receive", "text": "stuck"})
        await trio.sleep(1)
        assert consumer._spare_running  # started within 0.1 to 0.2 s
        await comm.send_input({"type": "websocket.disconnect", "code": 1000})
        await comm.wait(timeout=10)
    assert consumer.log == [("cancelled", start + 3.0), ("disconnect", start + 3.0)]


async def test_closing_the_watchdog_ends_the_instances_it_hosts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An instance started while the watchdog runs ends with it, busy or idle."""
    busy, idle = Stuck(), Stuck()
    async with (
        ApplicationCommunicator(busy, SCOPE) as busy_comm,
        ApplicationCommunicator(idle, SCOPE) as idle_comm,
    ):
        async with handler_watchdog():
            for comm in (busy_comm, idle_comm):
                await comm.send_input({"type": "websocket.connect"})
                await comm.receive_output()
            await busy_comm.send_input({"type": "websocket.receive", "text": "stuck"})
            await trio.testing.wait_all_tasks_blocked()
            closed_at = trio.current_time()
        # Both end at once, as at a server's shutdown: the stuck handler is
        # cancelled, and no disconnect handler runs (there was no disconnect).
        await busy_comm.wait(timeout=1)
        await idle_comm.wait(timeout=1)
        assert trio.current_time() == closed_at
    assert busy.log == [("cancelled", closed_at)]
    assert idle.log == []


async def test_hosted_tasks_end_with_their_instance() -> None:
    """With the watchdog, an instance's child tasks run in its host and are awaited by the instance."""
    events: list[str] = []

    class Parent(Stuck):
        async def websocket_receive(self, message: Message) -> None:
            self.start_soon(self.child)

        async def child(self) -> None:
            events.append("child started")
            try:
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    await trio.testing.wait_all_tasks_blocked()
                events.append("child ended")

    consumer = Parent()
    async with handler_watchdog():
        watchdog = _find_watchdog()
        assert watchdog is not None
        async with ApplicationCommunicator(consumer, SCOPE) as comm:
            await comm.send_input({"type": "websocket.connect"})
            await comm.receive_output()
            await comm.send_input({"type": "websocket.receive", "text": "go"})
            await trio.testing.wait_all_tasks_blocked()
            assert consumer._task_group is None  # no task group of its own
            assert consumer in watchdog.instances
            assert consumer._hosted == 1
            await comm.send_input({"type": "websocket.disconnect", "code": 1000})
            await comm.wait()
            # __call__ returned only after the child had finished its cleanup.
            assert events == ["child started", "child ended"]
            assert consumer._hosted == 0
            assert consumer not in watchdog.instances


async def test_start_soon_after_the_watchdog_closed_says_why() -> None:
    """A hosted instance cannot start tasks once its host has ended; the error says so."""
    errors: list[BaseException] = []

    class Late(Stuck):
        async def websocket_receive(self, message: Message) -> None:
            try:
                await anyio.sleep_forever()
            finally:
                try:
                    self.start_soon(anyio.sleep, 1)
                except RuntimeError as exc:
                    errors.append(exc)

    consumer = Late()
    async with ApplicationCommunicator(consumer, SCOPE) as comm:
        async with handler_watchdog():
            await comm.send_input({"type": "websocket.connect"})
            await comm.receive_output()
            await comm.send_input({"type": "websocket.receive", "text": "x"})
            await trio.testing.wait_all_tasks_blocked()
        await comm.wait(timeout=1)
    assert len(errors) == 1
    assert "shutting down" in str(errors[0])


async def test_watchdog_is_one_per_event_loop() -> None:
    """Entering it again while one runs does nothing more; it is gone after the block."""
    assert _find_watchdog() is None
    async with handler_watchdog():
        first = _find_watchdog()
        assert first is not None
        async with handler_watchdog():
            assert _find_watchdog() is first
        assert _find_watchdog() is first
    assert _find_watchdog() is None


async def test_body_errors_leave_the_watchdog_unwrapped() -> None:
    """An exception in the block comes out as itself, not in an exception group."""
    with pytest.raises(KeyError, match="boom"):
        async with handler_watchdog():
            raise KeyError("boom")
    assert _find_watchdog() is None


async def test_protocol_type_router_lifespan_runs_the_watchdog() -> None:
    """The router's lifespan opens the watchdog at startup and closes it at shutdown."""
    router = ProtocolTypeRouter({"websocket": Stuck.as_asgi()}, lifespan_contexts=())
    async with ApplicationCommunicator(router, {"type": "lifespan"}) as comm:
        await comm.send_input({"type": "lifespan.startup"})
        assert await comm.receive_output() == {"type": "lifespan.startup.complete"}
        assert _find_watchdog() is not None
        await comm.send_input({"type": "lifespan.shutdown"})
        assert await comm.receive_output() == {"type": "lifespan.shutdown.complete"}
        await comm.wait()
    assert _find_watchdog() is None


def test_watchdog_neutral(backend: str) -> None:
    """On asyncio and trio the watchdog rescues a stuck handler's disconnect."""

    async def body() -> None:
        consumer = Stuck()
        consumer.close_timeout = 0.2  # type: ignore[misc]
        with anyio.fail_after(5):
            async with (
                handler_watchdog(),
                ApplicationCommunicator(consumer, SCOPE) as comm,
            ):
                await comm.send_input({"type": "websocket.connect"})
                await comm.receive_output()
                await comm.send_input({"type": "websocket.receive", "text": "stuck"})
                await comm.send_input({"type": "websocket.disconnect", "code": 1000})
                await comm.wait(timeout=3)
        assert [event for event, _ in consumer.log] == ["cancelled", "disconnect"]

    anyio.run(body, backend=backend)


async def test_spare_from_the_watchdog_keeps_the_instances_context() -> None:
    """Handlers run by a watchdog-started spare see middleware's variables and the instance's thread.

    The spare is started from the watchdog's task, but trio and anyio give a task
    started in a task group the context of the group's own task, not the caller's.
    """
    import contextvars
    import threading
    import time

    from trichannels.consumer import SyncConsumer

    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")
    seen: list[tuple[str, str, int]] = []

    class Slow(SyncConsumer):
        channel_layer_alias = None

        def websocket_connect(self, message: Message) -> None:
            self.send({"type": "websocket.accept"})

        def websocket_receive(self, message: Message) -> None:
            if message["text"] == "slow":
                time.sleep(0.5)  # real time: the watchdog starts the spare meanwhile
            seen.append(
                (message["text"], request_id.get("unset"), threading.get_ident())
            )
            self.send({"type": "websocket.send", "text": message["text"]})

    async def with_request_id(scope: Any, receive: Any, send: Any) -> None:
        request_id.set("r-42")
        await app(scope, receive, send)

    consumers: list[Slow] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        consumer = Slow()
        consumers.append(consumer)
        await consumer(scope, receive, send)

    async with (
        handler_watchdog(),
        ApplicationCommunicator(with_request_id, SCOPE) as comm,
    ):
        await comm.send_input({"type": "websocket.connect"})
        await comm.receive_output()
        await comm.send_input({"type": "websocket.receive", "text": "slow"})
        assert (await comm.receive_output(timeout=30))["text"] == "slow"
        assert consumers[0]._spare_running  # so "next" is read and run by the spare
        await comm.send_input({"type": "websocket.receive", "text": "next"})
        assert (await comm.receive_output(timeout=30))["text"] == "next"
        await comm.send_input({"type": "websocket.disconnect", "code": 1000})
        await comm.wait(timeout=30)
    assert [(text, rid) for text, rid, _ in seen] == [
        ("slow", "r-42"),
        ("next", "r-42"),
    ]
    assert seen[0][2] == seen[1][2]  # the instance's own thread both times


async def test_hosted_layer_reader_is_awaited_and_cancelled_with_its_instance() -> None:
    """A hosted instance's layer reader runs in the host without a wrapping scope; it ends with the instance."""
    from trichannels.layers import channel_layers
    from trichannels.layers.memory import InMemoryChannelLayer

    class Listener(Stuck):
        channel_layer_alias = "default"

        async def websocket_connect(self, message: Message) -> None:
            await self.send({"type": "websocket.accept"})
            await self.send({"type": "websocket.send", "text": self.channel_name})

        async def note_this(self, event: Message) -> None:
            await self.send({"type": "websocket.send", "text": event["text"]})

    async with InMemoryChannelLayer() as layer:
        previous = channel_layers.set("default", layer)
        try:
            consumer = Listener()
            async with (
                handler_watchdog(),
                ApplicationCommunicator(consumer, SCOPE) as comm,
            ):
                await comm.send_input({"type": "websocket.connect"})
                await comm.receive_output()
                channel = (await comm.receive_output())["text"]
                await layer.send(channel, {"type": "note.this", "text": "hi"})
                assert (await comm.receive_output())["text"] == "hi"
                assert consumer._hosted == 1  # the layer reader, in the host
                assert consumer._hosted_scopes is None  # no wrapping scope
                await comm.send_input({"type": "websocket.disconnect", "code": 1000})
                await comm.wait()
                assert consumer._hosted == 0
                assert not consumer._layer_reading
        finally:
            channel_layers.set("default", previous)


class Halt(BaseException):
    """Not an Exception, as KeyboardInterrupt and SystemExit are not."""


@pytest.mark.parametrize("where", ["child", "layer", "spare"])
async def test_base_exception_in_a_hosted_task_ends_its_instance_not_the_host(
    where: str, autojump_clock: trio.testing.MockClock
) -> None:
    """A BaseException that is not a cancellation (KeyboardInterrupt, SystemExit) raised
    in a task the instance runs in its host leaves through the instance's own call, as
    from an instance with a task group of its own: the host, and the other instances it
    hosts, go on (the host is the server's lifespan, which holds the channel layers)."""
    from trichannels.layers import channel_layers
    from trichannels.layers.memory import InMemoryChannelLayer

    class Halting(Stuck):
        channel_layer_alias = "default"

        async def websocket_connect(self, message: Message) -> None:
            await self.send({"type": "websocket.accept"})
            await self.send({"type": "websocket.send", "text": self.channel_name})

        async def websocket_receive(self, message: Message) -> None:
            if message["text"] == "child":
                self.start_soon(self.halt)
            elif message["text"] == "halt":
                raise Halt
            elif message["text"] == "slow":
                await anyio.sleep(1)
            else:
                await super().websocket_receive(message)

        async def halt(self, event: Message | None = None) -> None:
            raise Halt

        async def do_halt(self, event: Message) -> None:
            raise Halt

    async with InMemoryChannelLayer() as layer:
        previous = channel_layers.set("default", layer)
        try:
            halting, bystander = Halting(), Halting()
            async with handler_watchdog():
                watchdog = _find_watchdog()
                async with ApplicationCommunicator(bystander, SCOPE) as other:
                    await other.send_input({"type": "websocket.connect"})
                    await other.receive_output()
                    await other.receive_output()
                    # The communicator lets a BaseException through, as a server does.
                    with pytest.RaisesGroup(Halt):
                        async with ApplicationCommunicator(halting, SCOPE) as comm:
                            await comm.send_input({"type": "websocket.connect"})
                            await comm.receive_output()
                            channel = (await comm.receive_output())["text"]
                            if where == "child":
                                await comm.send_input(
                                    {"type": "websocket.receive", "text": "child"}
                                )
                            elif where == "layer":
                                await layer.send(channel, {"type": "do.halt"})
                            else:  # a handler run by the spare the watchdog started
                                await comm.send_input(
                                    {"type": "websocket.receive", "text": "slow"}
                                )
                                await trio.sleep(0.5)
                                assert halting._spare_running
                                await trio.sleep(1)  # the slow handler is done:
                                # the spare reads now, and runs what it reads.
                                await comm.send_input(
                                    {"type": "websocket.receive", "text": "halt"}
                                )
                            await comm.wait(timeout=5)
                    assert halting._hosted == 0
                    assert _find_watchdog() is watchdog  # the host goes on
                    await other.send_input({"type": "websocket.receive", "text": "on"})
                    assert (await other.receive_output())["text"] == "on"
                    await other.send_input(
                        {"type": "websocket.disconnect", "code": 1000}
                    )
                    await other.wait(timeout=5)
        finally:
            channel_layers.set("default", previous)
