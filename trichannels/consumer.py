"""Consumers: one application instance per connection, one task group per instance.

A consumer class is turned into an ASGI application with :meth:`AsyncConsumer.as_asgi`.
Each connection gets a fresh instance whose :meth:`~AsyncConsumer.__call__` opens a
task group. Events are dispatched **one at a time, in arrival order**, to the method
named after the event's ``type`` (``"chat.message"`` -> ``chat_message``). The task
that reads an event runs its handler itself when no other handler is running, so an
event costs no task switch; an event that arrives while a handler runs waits in the
instance's queue and is handled by that handler's task as soon as it returns. A
spare task sleeps meanwhile and takes over reading the server's events when a handler
has run for more than 0.1 s, so a busy handler never hides a disconnect.

Guarantees:

* Nothing the instance starts outlives it: child tasks started with
  :meth:`AsyncConsumer.start_soon` are cancelled and awaited before ``__call__``
  returns.
* The disconnect event is never starved. The instance notices a disconnect at
  most 0.2 s after the server delivers it, even while a handler is busy (at once
  when no handler has been running for 0.1 s). Events that arrived before it
  are still handled, in order, for at most :attr:`AsyncConsumer.close_timeout` seconds;
  then the running handler is cancelled, the remaining events are dropped, and the
  disconnect handler runs (bounded by the same timeout) before the instance ends.
  Channel-layer reading stops at the disconnect.
* An unhandled exception in a handler or a child task is logged once (with the
  scope's type and path), every other task of the instance is cancelled, and the
  exception propagates to the server unchanged (not wrapped in an exception group).
* Channel-layer events may only reach methods a consumer defines for events: a layer
  message whose type names one of trichannels' own consumer methods (``send``,
  ``close``, ``accept``, ``dispatch``, protocol handlers such as
  ``websocket_receive``, ...) is refused with a :class:`RefusedLayerMessage` error and
  a log line, and the method is never called.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import sys
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Final, cast

import anyio
from anyio.abc import TaskGroup
from sniffio import thread_local as _sniffio_thread

from trichannels._validation import short_repr, validate_outgoing
from trichannels.exceptions import StopConsumer
from trichannels.sync import (
    _join_home,
    _leave_home,
    _open_home,
    async_to_sync,
    sync_to_async,
)
from trichannels.types import Message

if TYPE_CHECKING:
    from trichannels.layers import ChannelLayerManager
    from trichannels.layers.base import BaseChannelLayer
    from trichannels.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "AsyncConsumer",
    "RefusedLayerMessage",
    "SyncConsumer",
    "close_websockets",
    "get_handler_name",
    "handler_watchdog",
]

logger = logging.getLogger("trichannels.consumer")

_REPR_LIMIT: Final = 200


def _short_repr(value: object) -> str:
    return short_repr(value, _REPR_LIMIT)


class RefusedLayerMessage(ValueError):
    """A channel-layer message named a method that is not an event handler.

    Raised (and logged) when a layer message's ``type`` maps to one of the
    consumer's own API methods, or to something that is not a method. The
    method is never called. Protocol events from the server are not subject
    to this rule.

    Attributes:
        message_type: the ``type`` of the refused message.
        handler_name: the attribute name it mapped to.
    """

    def __init__(self, message_type: str, handler_name: str, reason: str) -> None:
        self.message_type = message_type
        self.handler_name = handler_name
        super().__init__(
            f"refusing channel-layer message of type {message_type!r}: "
            f"{handler_name!r} {reason}"
        )


# Handler names already worked out, by event type (bounded: types come from code).
_handler_names: dict[str, str] = {}
_CACHE_LIMIT: Final = 4096


def get_handler_name(message: object) -> str:
    """Return the handler method name for an event: its ``type`` with ``.`` -> ``_``.

    Raises:
        TypeError: the message is not a mapping, or its ``type`` is not a string.
        ValueError: the message has no ``type``, or the handler name would start
            with an underscore (private names are never dispatched to).
    """
    if type(message) is dict:
        message_type = message.get("type")
        if type(message_type) is str:
            cached = _handler_names.get(message_type)
            if cached is not None:
                return cached
    if not isinstance(message, Mapping):
        raise TypeError(
            f"an event must be a mapping with a 'type' key, got {_short_repr(message)}"
        )
    try:
        message_type = message["type"]
    except KeyError:
        raise ValueError(f"event has no 'type' key: {_short_repr(message)}") from None
    if not isinstance(message_type, str):
        raise TypeError(
            f"event 'type' must be a str, got {_short_repr(message_type)} in {_short_repr(message)}"
        )
    name = message_type.replace(".", "_")
    if name.startswith("_"):
        raise ValueError(
            f"event type {message_type!r} maps to handler name {name!r}, which starts "
            "with an underscore; private methods are never dispatched to"
        )
    if len(_handler_names) < _CACHE_LIMIT:
        _handler_names[message_type] = name
    return name


_HANDLED: Final = {"type": "channel.handled"}

# trichannels.layers.channel_layers, imported on first use (it imports this module).
_channel_layers: ChannelLayerManager | None = None

# Refusal reasons (or None) by (consumer class, handler name, protocol, allowlist).
_refusals: dict[
    tuple[type[AsyncConsumer], str, object, frozenset[str] | None], str | None
] = {}

# Running WebSocket instances of this process, for close_websockets() at shutdown.
_live_websockets: weakref.WeakSet[AsyncConsumer] = weakref.WeakSet()


def _is_disconnect(message: Mapping[str, Any]) -> bool:
    message_type = message.get("type")
    return isinstance(message_type, str) and message_type.endswith(".disconnect")


# How long an event handler may keep the reader of the server's events busy before
# the instance's spare task takes over reading (so a disconnect is noticed while a
# handler is stuck). The spare task sleeps until then: no timer per event.
_TAKEOVER_AFTER: Final = 0.1
# How long the spare task stays after the instance went idle; it is started again
# by the next handler run. An idle connection then holds no spare task (~6 KB).
_RETIRE_AFTER: Final = 1.0


def _loop_key() -> object:
    """The running event loop's identity (compared with ``is``).

    trio's token under trio (sniffio's thread-local name says so, in guest mode
    too), else the running asyncio loop: the two event loops anyio runs on.
    Cheaper than anyio's token, which looks the backend up and makes an object.
    """
    if _sniffio_thread.name == "trio":
        return sys.modules["trio"].lowlevel.current_trio_token()
    return sys.modules["asyncio"].get_running_loop()


class _Watchdog:
    """One task per event loop that notices handlers running for too long.

    Without it every instance needs a spare task of its own to take over reading
    when a handler is stuck (a task, two cancel scopes and an event per connection).
    With it, an instance whose reader starts a handler registers the run (a dict
    insert); the watchdog wakes every _TAKEOVER_AFTER seconds while any run is
    registered and starts the spare only for an instance whose same run was
    already registered at its previous wake.
    """

    def __init__(self, key: object, tg: TaskGroup) -> None:
        self.key = key
        self.closed = False
        # The host: instances started while the watchdog runs start their tasks
        # here instead of in a task group of their own (and wait for them).
        self.tg = tg
        self._busy: dict[AsyncConsumer, int] = {}
        self._wake: anyio.Event | None = None
        self.instances: set[AsyncConsumer] = set()  # the instances it hosts
        # What hosted instances make their cancel scopes with: the event loop's
        # own class (no backend lookup per scope, no wrapper under trio).
        self.new_scope = _scope_class()

    def watch(self, instance: AsyncConsumer) -> None:
        self._busy[instance] = instance._dispatch_seq
        if self._wake is not None:
            self._wake.set()
            self._wake = None

    def unwatch(self, instance: AsyncConsumer) -> None:
        self._busy.pop(instance, None)

    async def run(self) -> None:
        seen: dict[AsyncConsumer, int] = {}
        while True:
            if not self._busy:
                seen = {}
                self._wake = anyio.Event()
                await self._wake.wait()
            await anyio.sleep(_TAKEOVER_AFTER)
            for instance, seq in list(self._busy.items()):
                if seen.get(instance) == seq == instance._dispatch_seq:
                    del self._busy[instance]
                    instance._start_spare(takeover_seq=seq)
            seen = dict(self._busy)

    def close(self) -> None:
        """Stop hosting: every hosted instance ends, as at a server's shutdown.

        Their tasks in the host are cancelled next (by the caller); nobody waits
        for them here.
        """
        self.closed = True
        self._busy = {}
        for instance in list(self.instances):
            instance._host_closed()


_watchdogs: list[_Watchdog] = []


def _scope_class() -> Callable[..., anyio.CancelScope]:
    """The running event loop's cancel scope class, called as ``anyio.CancelScope`` is.

    Under trio that is trio's own (anyio's trio scopes wrap one, so both nest
    freely); elsewhere the class of the scopes anyio makes for this loop, whose
    constructor takes the same arguments.
    """
    if _sniffio_thread.name == "trio":
        trio = sys.modules["trio"]  # running: imported
        return cast("Callable[..., anyio.CancelScope]", trio.CancelScope)
    return type(anyio.CancelScope())


class _NoTaskGroup:
    """Stands in for a task group in a hosted instance: entering and leaving cost nothing."""

    async def __aenter__(self) -> None:
        return None  # noqa: ASYNC910 - the reading that follows checkpoints

    async def __aexit__(self, *exc_info: object) -> None:
        return None


_NO_TASK_GROUP: Final = _NoTaskGroup()


def _find_watchdog() -> _Watchdog | None:
    key = _loop_key()
    for watchdog in _watchdogs:
        if watchdog.key is key and not watchdog.closed:
            return watchdog
    return None


@contextlib.asynccontextmanager
async def handler_watchdog() -> AsyncIterator[None]:
    """Run one watcher for busy handlers in this event loop while the block runs.

    :class:`~trichannels.routing.ProtocolTypeRouter` opens it for the life of
    the server (in its lifespan), and :func:`~trichannels.worker.run_worker`
    for the life of the worker. Consumer instances started meanwhile then need
    no spare task of their own to notice a disconnect while a handler is busy:
    the watcher starts one only for an instance whose handler has run for
    0.1 to 0.2 s. Without it (no lifespan, test communicators) each instance starts
    its own spare task with its first handler run. Entering it again in the same
    event loop while one runs does nothing more.
    """
    if _find_watchdog() is not None:
        await anyio.lowlevel.checkpoint()
        yield
        return  # noqa: ASYNC911 - the checkpoint above is the one on entry
    error: Exception | None = None
    async with anyio.create_task_group() as tg:
        watchdog = _Watchdog(_loop_key(), tg)
        tg.start_soon(watchdog.run)
        _watchdogs.append(watchdog)
        try:
            yield
        except Exception as exc:
            # Raised below, outside the task group: not wrapped in a group.
            error = exc
        finally:
            _watchdogs.remove(watchdog)
            watchdog.close()
            tg.cancel_scope.cancel()
    if error is not None:
        raise error


class AsyncConsumer:
    """Base class of every consumer; handlers are ``async def`` methods.

    Subclass it and define one ``async def`` method per event type you handle
    (``websocket.receive`` -> ``websocket_receive``). Serve it with
    :meth:`as_asgi`.

    The class attributes ``channel_layer_alias``, ``close_timeout``,
    ``max_pending_events`` and ``layer_event_handlers`` may each be
    overridden per route with ``as_asgi(name=value)``; ``scope``,
    ``channel_layer`` and ``channel_name`` are set on each instance.

    Attributes:
        channel_layer_alias: which configured channel layer to attach
            (``None`` for none). When the alias is not configured at all the
            consumer simply has no layer (``self.channel_layer is None``).
        close_timeout: seconds that events queued before a disconnect may keep
            being handled after it, and seconds the disconnect handler may take.
        max_pending_events: how many received events may wait for dispatch
            before the instance stops reading (back-pressure towards the server).
        layer_event_handlers: if not ``None``, the only method names channel-layer
            messages may reach (a strict allowlist).
        scope: the connection scope.
        channel_layer: the attached layer, or ``None``.
    """

    channel_layer_alias: ClassVar[str | None] = "default"
    close_timeout: ClassVar[float] = 5.0
    max_pending_events: ClassVar[int] = 64
    layer_event_handlers: ClassVar[frozenset[str] | None] = None

    _reserved_cache: ClassVar[frozenset[str] | None] = None
    # Sync handlers read channel_name in a worker thread, where no task can be
    # started: SyncConsumer reads its channel from the start.
    _eager_layer_reader: ClassVar[bool] = False
    # Whether a handler run by the reader starts the spare reader if it is not
    # running. The HTTP consumer starts it only once a response streams or a child
    # task runs (see _start_spare).
    _spare_on_dispatch: ClassVar[bool] = True
    # Whether the instance may end after any handler returns (_ended_by_handler);
    # the HTTP consumer ends once its response is complete.
    _may_end_after_handler: ClassVar[bool] = False

    scope: Scope
    _channel_name: str
    base_send: Send

    # Per-instance state. The defaults live on the class: an instance stores
    # only what it changes (less to write per connection, a smaller __dict__).
    channel_layer: BaseChannelLayer | None = None
    _task_group: TaskGroup | None = None
    _error: BaseException | None = None
    _stopping = False
    _disconnect_message: Message | None = None
    _stopped = False
    _grace_deadline = math.inf
    _layer_reader_started = False
    # Dispatch state (see _read_protocol).
    _reader: anyio.CancelScope | None = None
    _dispatch_scope: anyio.CancelScope | None = None
    _dispatch_seq = 0
    _pending: deque[tuple[bool, Message]] | None = None  # made when needed
    _space: anyio.Event | None = None
    _idle: anyio.Event | None = None
    _watcher: anyio.CancelScope | None = None
    _wake: anyio.Event | None = None
    _watching: anyio.CancelScope | None = None  # the watcher's agent
    _noticing: anyio.CancelScope | None = None  # the agent that read the disconnect
    _watch_armed = False
    _armed_seq = -1
    _cut_short = False
    _spare_running = False
    _disconnect_started = False
    _watched: _Watchdog | None = None  # where this handler run is registered
    _others_started = False  # any task besides the instance's own
    # Hosted mode (a watchdog runs in this event loop): no task group of the
    # instance's own; its tasks run in the watchdog's, each in a cancel scope
    # the instance holds, and the instance waits for them before it returns.
    _host: _Watchdog | None = None
    _hosted = 0  # hosted tasks started and not yet finished
    _hosted_scopes: set[anyio.CancelScope] | None = None
    _hosted_cancelled = False
    _hosted_done: anyio.Event | None = None
    _ending: anyio.CancelScope | None = None  # around _after_disconnect
    _layer_reading = False
    _layer_done: anyio.Event | None = None
    _allowed_name: str | None = None  # the handler name of the last layer event allowed
    # Makes the instance's cancel scopes (hosted: the host's, see _Watchdog).
    _new_scope: Callable[..., anyio.CancelScope] = anyio.CancelScope

    # Whether the class's dispatch() is AsyncConsumer's own (set per subclass).
    _plain_dispatch: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._plain_dispatch = cls.dispatch is AsyncConsumer.dispatch

    def __init__(self, **kwargs: Any) -> None:
        if kwargs:
            _check_initkwargs(type(self), kwargs)
            for key, value in kwargs.items():
                setattr(self, key, value)
        self._agents: list[anyio.CancelScope] = []

    # -- construction ----------------------------------------------------------

    @classmethod
    def as_asgi(cls, **initkwargs: Any) -> ASGIApp:
        """Return an ASGI application that runs a fresh instance per connection.

        ``initkwargs`` override class attributes on each instance. They are
        checked now, not when the first connection arrives.

        Raises:
            TypeError: a keyword names no class attribute, or would replace a
                method of the consumer.
        """
        _check_initkwargs(cls, initkwargs)

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            consumer = cls(**initkwargs)
            await consumer(scope, receive, send)

        app.consumer_class = cls  # type: ignore[attr-defined]
        app.consumer_initkwargs = initkwargs  # type: ignore[attr-defined]
        functools.update_wrapper(app, cls, updated=())
        return app

    # -- the instance ----------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run this instance for one connection; returns when the connection ends."""
        self.scope = scope
        self.base_send = send
        self._is_worker = scope.get("type") == "channel"
        layer = self._attach_layer()
        if layer is not None:
            self.channel_layer = layer
            if self._eager_layer_reader or not layer._names_channels_now:
                self._channel_name = await layer.new_channel()
            # else: named when channel_name is first read
        # The instance's thread-sensitive scope (see ThreadSensitiveContext),
        # entered inline: no frame for the instance's whole life.
        home, home_reset = _open_home()
        websocket = scope.get("type") == "websocket"
        try:
            host = _find_watchdog() if _watchdogs else None
            try:
                if host is None:
                    tasks: TaskGroup | _NoTaskGroup = anyio.create_task_group()
                else:
                    # No task group of its own (entering and leaving one costs a
                    # scheduler pass): tasks, if any, run in the host and are
                    # cancelled and awaited below, as a task group's would be.
                    tasks = _NO_TASK_GROUP
                    self._host = host
                    self._new_scope = host.new_scope
                    host.instances.add(self)
                try:
                    async with tasks as tg:
                        self._task_group = tg
                        if websocket:
                            _live_websockets.add(self)
                        self._receive = receive
                        if layer is not None and self._eager_layer_reader:
                            self._start_layer_reader()
                        try:
                            await self._read_protocol(receive)
                            if (
                                self._disconnect_message is not None
                                and not self._stopped
                            ):
                                with self._new_scope() as self._ending:
                                    await self._after_disconnect()
                        except StopConsumer:
                            pass
                        except Exception as exc:
                            self._fail(exc)
                        # Ending: no more going-away closes (the task group may
                        # close to new tasks before __call__ returns).
                        if websocket:
                            _live_websockets.discard(self)
                        if self._others_started:
                            self._cancel_tasks()
                finally:
                    if host is not None:
                        try:
                            if self._hosted:
                                self._cancel_hosted()
                                await self._join_hosted()  # noqa: ASYNC102 - shielded inside, as a task group's exit
                        finally:
                            host.instances.discard(self)
            finally:
                if websocket:
                    _live_websockets.discard(self)
                self._task_group = None
                self._host = None
                self._stopping = True
                try:
                    if self._has_cleanup():
                        # Shielded from outside cancellation, bounded by close_timeout.
                        with anyio.CancelScope(
                            shield=True,
                            deadline=anyio.current_time() + self.close_timeout,
                        ):
                            try:
                                await self._instance_cleanup()
                            except Exception as exc:
                                self._fail(exc)
                finally:
                    self._drop_undelivered(layer)
        finally:
            if _leave_home(home, home_reset):
                await _join_home(home)  # noqa: ASYNC102 - shielded inside, as ThreadSensitiveContext's exit
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    @property
    def channel_name(self) -> str:
        """This instance's channel on the layer; other code sends to it or adds it to groups.

        The instance starts reading the channel the first time the name is read
        (nothing can address the channel before anyone knows its name), so an
        instance that never uses its layer costs no reader task.

        Raises:
            AttributeError: the instance is not running with a channel layer.
        """
        try:
            name = self._channel_name
        except AttributeError:
            layer = self.channel_layer
            if layer is not None and not self._stopping:
                self._channel_name = name = layer._new_channel_now()
                self._start_layer_reader()
                return name
            raise AttributeError(
                f"{type(self).__qualname__}.channel_name is only set while the instance "
                "runs with a channel layer (channel_layer_alias is None or not configured)"
            ) from None
        if not self._layer_reader_started:
            self._start_layer_reader()
        return name

    def _start_layer_reader(self) -> None:
        layer = self.channel_layer
        if (
            self._layer_reader_started
            or layer is None
            or not self._can_spawn()
            or self._disconnect_message is not None
        ):
            return
        self._layer_reader_started = True
        self._spawn(self._read_layer, layer, agent=True)

    def _attach_layer(self) -> BaseChannelLayer | None:
        alias = self.channel_layer_alias
        if alias is None:
            return None
        global _channel_layers  # imported on first use (import cycle)
        if _channel_layers is None:
            from trichannels.layers import channel_layers

            _channel_layers = channel_layers
        return _channel_layers.lookup(alias)

    # -- the instance's tasks ------------------------------------------------------

    def _can_spawn(self) -> bool:
        """Whether the instance may start a task now (it runs and is not ending)."""
        if self._stopping:
            return False
        if self._task_group is not None:
            return True
        host = self._host
        return host is not None and not host.closed

    def _spawn(
        self,
        fn: Callable[..., Awaitable[Any]],
        *args: Any,
        name: object = None,
        agent: bool = False,
    ) -> None:
        """Start ``fn(*args)`` as one of the instance's tasks (check _can_spawn first).

        ``agent``: ``fn`` is a reader that runs inside an agent scope of its own
        and calls :meth:`_agent_task_ended` when it ends; hosted, it needs no
        wrapping scope.
        """
        self._others_started = True
        tg = self._task_group
        if tg is not None:
            tg.start_soon(fn, *args, name=name)  # type: ignore[arg-type]
            return
        host = self._host
        assert host is not None
        self._hosted += 1
        try:
            if agent:
                host.tg.start_soon(fn, *args, name=name)  # type: ignore[arg-type]
            else:
                host.tg.start_soon(
                    self._hosted_task,
                    fn,
                    args,
                    name=name if name is not None else getattr(fn, "__qualname__", fn),
                )
        except BaseException:
            self._hosted -= 1
            raise

    def _agent_started(self, agent: anyio.CancelScope) -> None:
        """A reader task's agent scope is open (cancelled at once if the instance is ending)."""
        self._agents.append(agent)
        if self._hosted_cancelled:
            agent.cancel()

    def _agent_task_ended(self) -> None:
        """A reader task started with ``_spawn(agent=True)`` is ending."""
        if self._host is not None:
            self._hosted -= 1
            if self._hosted == 0:
                self._wake_joiner()

    async def _hosted_task(  # noqa: ASYNC910 - a task body, not an API
        self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]
    ) -> None:
        try:
            with self._new_scope() as scope:
                scopes = self._hosted_scopes
                if scopes is None:
                    scopes = self._hosted_scopes = set()
                scopes.add(scope)
                if self._hosted_cancelled:
                    scope.cancel()
                try:
                    await fn(*args)
                finally:
                    scopes.discard(scope)
        except anyio.get_cancelled_exc_class():
            raise  # the host's: it goes on there
        except BaseException as exc:
            if not self._keep_from_host(exc):
                raise
        finally:
            self._hosted -= 1
            if self._hosted == 0:
                self._wake_joiner()

    def _keep_from_host(self, exc: BaseException) -> bool:
        """Take over ``exc``, ending a task this instance runs in its host, if it must not reach the host.

        Exceptions go to :meth:`_fail` inside the tasks, and a cancellation
        comes from the host and goes on there (the callers re-raise it). What
        is left is a BaseException such as KeyboardInterrupt or SystemExit,
        which must not reach the host: its task group holds every hosted
        instance and, under a server, the lifespan with the channel layers.
        The instance ends and its ``__call__`` raises it (True), in the server's
        task for this connection, as an instance with a task group of its own
        does. False (not hosted, or a group that holds a cancellation): the
        caller re-raises it.
        """
        if self._host is None or (
            isinstance(exc, BaseExceptionGroup)
            and exc.subgroup(anyio.get_cancelled_exc_class()) is not None
        ):
            return False
        if self._error is None:
            self._error = exc
        self._stop()
        return True

    def _cancel_tasks(self) -> None:
        """Cancel every task of the instance, its own included (as a task group's cancel)."""
        tg = self._task_group
        if tg is not None:
            tg.cancel_scope.cancel()
            return
        if self._ending is not None:
            self._ending.cancel()
        self._cancel_hosted()  # the readers' agents, the instance's own included

    def _cancel_hosted(self) -> None:
        """Cancel the hosted tasks and every agent (a reader started later starts cancelled)."""
        self._hosted_cancelled = True
        for scope in self._hosted_scopes or ():
            scope.cancel()
        for agent in self._agents:  # readers started with _spawn(agent=True)
            agent.cancel()

    async def _join_hosted(self) -> None:  # noqa: ASYNC910 - only waits if tasks remain
        """Wait, shielded, until the hosted tasks (all cancelled) have finished."""
        host = self._host
        assert host is not None
        with anyio.CancelScope(shield=True):
            while self._hosted and not host.closed:
                self._hosted_done = anyio.Event()
                try:
                    await self._hosted_done.wait()
                finally:
                    self._hosted_done = None

    def _wake_joiner(self) -> None:
        if self._hosted_done is not None:
            self._hosted_done.set()

    def _host_closed(self) -> None:
        """The host is shutting down (called from its task): end this instance."""
        self._others_started = True  # the caller is not the instance's task: cancel it
        self._stop()
        self._wake_joiner()

    # How events reach handlers. One task reads the server's events and, when no
    # handler is running, handles the event itself (no task switch per event);
    # otherwise it queues it for the running handler's task, which drains the queue
    # in order before it reads again. If the reader is still in a handler
    # _TAKEOVER_AFTER seconds later, a spare task takes over reading, so a
    # disconnect is noticed however long a handler takes; the process's watchdog
    # (handler_watchdog) starts that spare, or, without one, the instance keeps a
    # spare of its own that sleeps while it is not needed.
    # The layer reader (once started) handles or queues layer events the same way.
    # Each of these tasks runs inside its own long-lived cancel scope (an "agent"):
    # at a disconnect the busy one gets the grace deadline, the others are cancelled.

    async def _read_protocol(  # noqa: ASYNC910 - a task body
        self, receive: Receive, spare: bool = False, takeover_seq: int = -1
    ) -> None:
        try:
            with self._new_scope() as agent:
                self._agent_started(agent)
                if self._reader is None:
                    self._reader = agent
                elif takeover_seq == self._dispatch_seq and self._reader_busy():
                    # Started by the watchdog for a handler run that is still going.
                    self._reader = agent
                try:
                    while self._disconnect_message is None and not self._stopped:
                        if self._reader is not agent:
                            if not await self._watch(agent, spare):
                                break  # retired: the instance is idle
                            continue
                        message = await receive()
                        name = get_handler_name(message)  # validates the message
                        if name.endswith("_disconnect") and _is_disconnect(message):
                            self._noticing = agent
                            self._notice_disconnect(message)
                            break
                        if self._dispatch_scope is None:  # the usual case: run it now
                            await self._dispatch_now(agent, False, message)
                        else:
                            await self._handle(agent, False, message)
                except Exception as exc:
                    self._fail(exc)
                finally:
                    if spare:
                        self._agents.remove(agent)
                        self._spare_running = False
            self._agent_done(agent)
        except anyio.get_cancelled_exc_class():
            raise  # the host's (or the task group's): it goes on there
        except BaseException as exc:
            if not (spare and self._keep_from_host(exc)):
                raise
        finally:
            if spare:
                self._agent_task_ended()

    async def _watch(self, agent: anyio.CancelScope, spare: bool) -> bool:  # noqa: ASYNC910 - woken, not polled
        """Sleep while another agent reads; take over if it is stuck in a handler.

        Woken by its deadline (armed when the reader starts a handler), or by
        :meth:`_release_watcher` when reading ends: then it returns without an
        exception, which costs far less than cancelling a parked task. Returns
        True once this agent reads, False when the spare task should end (reading
        ended, or the instance has been idle for _RETIRE_AFTER).
        """
        retire_seq = -1
        while self._disconnect_message is None and not self._stopped:
            busy = self._reader_busy()
            if spare and not busy and retire_seq == self._dispatch_seq:
                return False  # noqa: ASYNC910 - idle for _RETIRE_AFTER (woken, not polled)
            with self._new_scope() as wait:
                self._watcher, self._watching = wait, agent
                self._wake = wake = anyio.Event()
                self._watch_armed = False
                if busy:
                    self._arm(wait)
                elif spare:
                    retire_seq = self._dispatch_seq
                    wait.deadline = anyio.current_time() + _RETIRE_AFTER
                try:
                    await wake.wait()
                finally:
                    self._watcher = self._watching = self._wake = None
            if self._reader_busy() and self._dispatch_seq == self._armed_seq:
                # The same handler run has lasted _TAKEOVER_AFTER: read in its place.
                self._reader = agent
                return True
        return False  # noqa: ASYNC910 - reading ended

    def _reader_busy(self) -> bool:
        """Whether the agent that reads the server's events is running a handler."""
        return self._dispatch_scope is not None and self._dispatch_scope is self._reader

    def _release_watcher(self) -> None:
        if self._wake is not None:
            self._wake.set()
            self._wake = None

    def _start_spare(self, takeover_seq: int = -1) -> None:
        """Start the spare reader: it sleeps while this task reads and handles events.

        With ``takeover_seq`` (from the watchdog) it reads at once if that
        handler run is still going.
        """
        if (
            self._spare_running
            or self._stopped
            or self._disconnect_message is not None
            or not self._can_spawn()
        ):
            return
        self._spare_running = True
        self._spawn(self._read_protocol, self._receive, True, takeover_seq, agent=True)

    def _arm(self, wait: anyio.CancelScope) -> None:
        self._watch_armed = True
        self._armed_seq = self._dispatch_seq
        wait.deadline = anyio.current_time() + _TAKEOVER_AFTER

    async def _read_layer(self, layer: BaseChannelLayer) -> None:  # noqa: ASYNC910 - a task body
        self._layer_reading = True
        try:
            with self._new_scope() as agent:
                self._agent_started(agent)
                try:
                    while self._disconnect_message is None and not self._stopped:
                        message = await layer.receive(self._channel_name)
                        if (
                            self._dispatch_scope is None
                            and self._disconnect_message is None
                        ):
                            await self._dispatch_now(agent, True, message)
                        else:
                            await self._handle(agent, True, message)
                except Exception as exc:
                    self._fail(exc)
            self._agent_done(agent)
        except anyio.get_cancelled_exc_class():
            raise  # the host's: it goes on there
        except BaseException as exc:
            if not self._keep_from_host(exc):
                raise
        finally:
            self._layer_reading = False
            if self._layer_done is not None:
                self._layer_done.set()
            self._agent_task_ended()

    async def _handle(
        self, agent: anyio.CancelScope, from_layer: bool, message: Message
    ) -> None:
        """Handle ``message`` now, or queue it behind the running handler."""
        if self._disconnect_message is not None:
            # Taken as the disconnect was noticed (a layer message): it may only
            # run before the disconnect handler, from the queue.
            if (
                self._disconnect_started
                or len(self._pending or ()) >= self.max_pending_events
            ):
                if from_layer:
                    self._dropped_in_hand(message)
                await anyio.lowlevel.checkpoint()
                return
            if self._pending is None:
                self._pending = deque()
            self._pending.append((from_layer, message))
            return  # noqa: ASYNC910 - the reader's await on its source was the checkpoint
        if self._dispatch_scope is not None:
            pending = self._pending
            if pending is None:
                pending = self._pending = deque()
            limit = self.max_pending_events
            while self._dispatch_scope is not None and len(pending) >= limit:
                if self._space is None:
                    self._space = anyio.Event()
                try:
                    await self._space.wait()
                except BaseException:
                    if from_layer:
                        self._dropped_in_hand(message)
                    raise
            if self._dispatch_scope is not None:
                pending.append((from_layer, message))
                return  # noqa: ASYNC910 - the reader's await on its source was the checkpoint
        await self._dispatch_now(agent, from_layer, message)

    async def _dispatch_now(
        self, agent: anyio.CancelScope, from_layer: bool, message: Message
    ) -> None:
        """Run handlers in this agent's task: ``message``, then everything queued meanwhile."""
        self._dispatch_scope = agent
        self._dispatch_seq += 1
        if agent is self._reader:
            if not self._watch_armed and self._watcher is not None:
                self._arm(self._watcher)
            elif not self._spare_running and self._spare_on_dispatch:
                watchdog = self._host  # a hosting watchdog also watches
                if watchdog is None or watchdog.closed:
                    self._start_spare()  # it arms itself when it first runs
                else:
                    watchdog.watch(self)
                    self._watched = watchdog
        try:
            while True:
                if from_layer:
                    # Inline (a frame less per delivery): refuse what may not
                    # reach a handler, then call it.
                    name = get_handler_name(message)
                    if name is not self._allowed_name:
                        self._allow(name, message)
                    if self._plain_dispatch:
                        await self._handler_named(name, message)(message)
                    else:
                        await self.dispatch(message)
                else:
                    if self._plain_dispatch:
                        # dispatch() is not overridden: call the handler (a frame less).
                        await self._get_handler(message)(message)
                    else:
                        await self.dispatch(message)
                    if self._is_worker:
                        # Tell the worker the message was handled (it acknowledges it).
                        await self.base_send(_HANDLED)
                if self._may_end_after_handler and self._ended_by_handler():
                    # Ends the instance as StopConsumer would, without raising.
                    self._stop()
                    return
                pending = self._pending
                if not pending:
                    return
                from_layer, message = pending.popleft()
                if self._space is not None:
                    self._space.set()
                    self._space = None
        except anyio.get_cancelled_exc_class():
            self._cut_short = True
            raise
        finally:
            self._dispatch_scope = None
            watched = self._watched
            if watched is not None:
                self._watched = None
                watched.unwatch(self)
            if self._space is not None:
                self._space.set()
                self._space = None
            if self._idle is not None:
                self._idle.set()
                self._idle = None

    def _agent_done(self, agent: anyio.CancelScope) -> None:
        if self._cut_short and agent.cancelled_caught:
            self._cut_short = False
            if self._grace_deadline != -math.inf:
                logger.warning(
                    "%s: handler still running %ss after the client disconnected from %s %s; cancelled",
                    type(self).__qualname__,
                    self.close_timeout,
                    self.scope.get("type"),
                    self.scope.get("path"),
                )

    async def _after_disconnect(self) -> None:
        """Once reading ended at a disconnect: let queued events finish, then run its handler."""
        disconnect = self._disconnect_message
        if disconnect is None or self._stopped:
            # Stopped: the task group is cancelled, a checkpoint would raise for nothing.
            return  # noqa: ASYNC910 - the reading loop awaited the server
        while self._layer_reading:
            # Cancelled at the disconnect; a message it had just taken is queued
            # as it ends, before what is still waiting on the channel.
            self._layer_done = anyio.Event()
            await self._layer_done.wait()
        self._take_layer_backlog()
        while True:
            while self._dispatch_scope is not None:
                # Another agent is handling events queued before the disconnect;
                # its scope carries the grace deadline.
                self._idle = anyio.Event()
                await self._idle.wait()
            if not self._pending or self._grace_deadline <= anyio.current_time():
                break
            # Events that arrived before the disconnect while no handler ran (layer
            # messages taken at the disconnect): run them within the grace period.
            with self._new_scope(deadline=self._grace_deadline) as agent:
                from_layer, message = self._pending.popleft()
                await self._dispatch_now(agent, from_layer, message)
            self._agent_done(agent)
            if self._stopped:  # the handler may have ended the instance
                return  # type: ignore[unreachable]  # (mypy keeps the narrowing above)
        self._disconnect_started = True  # what is taken from now on is dropped
        name = get_handler_name(disconnect)
        if not callable(getattr(self, name, None)):
            # No handler: the connection is over anyway.
            await anyio.lowlevel.checkpoint()
            return
        with anyio.move_on_after(self.close_timeout) as scope:
            await self.dispatch(disconnect)
        if scope.cancelled_caught:
            logger.warning(
                "%s: disconnect handler for %s %s did not finish within close_timeout=%ss; cancelled",
                type(self).__qualname__,
                self.scope.get("type"),
                self.scope.get("path"),
                self.close_timeout,
            )

    def _notice_disconnect(self, message: Message) -> None:
        """Record the disconnect and make sure no handler can starve it.

        Reading stops (the server's events and the layer channel: both are
        cancellation-safe); the agent running a handler, if any, keeps going
        until the grace deadline, ``close_timeout`` from now.
        """
        if self._disconnect_message is not None:
            return
        self._disconnect_message = message
        self._grace_deadline = anyio.current_time() + self.close_timeout
        self._release_watcher()
        for agent in self._agents:
            if agent is self._dispatch_scope:
                agent.deadline = min(agent.deadline, self._grace_deadline)
            elif agent is not self._watching and agent is not self._noticing:
                # Parked on the server or the layer (both cancellation-safe).
                agent.cancel()

    def _take_layer_backlog(self) -> None:
        """Queue the layer messages that arrived before the disconnect, to run in its grace.

        Reading the layer stops at a disconnect; once the layer reader has
        ended, what was already waiting on the instance's channel (while a
        handler ran) is still handled, up to max_pending_events queued events in all.
        """
        layer = self.channel_layer
        if layer is None or not self._layer_reader_started:
            return
        pending = self._pending
        if pending is None:
            pending = self._pending = deque()
        while len(pending) < self.max_pending_events:
            message = layer._receive_nowait(self._channel_name)
            if message is None:
                break
            pending.append((True, message))

    def _end_grace(self) -> None:
        """Stop dispatching now: cancel the busy handler, drop the queued events.

        Runs by itself when the grace period after a disconnect runs out;
        subclasses for protocols where nothing can reach the client any more
        (HTTP) call it as soon as the disconnect is noticed. The disconnect
        handler still runs.
        """
        self._grace_deadline = -math.inf
        for agent in self._agents:
            agent.cancel()

    def _dropped_in_hand(self, message: Message) -> None:
        """A layer message was taken from the layer but will never be handled."""
        layer = self.channel_layer
        if layer is not None:
            layer.record_dropped(1)
        logger.warning(
            "%s: dropped 1 channel-layer message of type %r for %s: the instance ended",
            type(self).__qualname__,
            message.get("type"),
            self._channel_name,
        )

    def _drop_undelivered(self, layer: BaseChannelLayer | None) -> None:
        if not self._pending:
            return
        pending = self._pending
        dropped = sum(from_layer for from_layer, _ in pending)
        self._pending = None
        if dropped and layer is not None:
            layer.record_dropped(dropped)
            logger.warning(
                "%s: dropped %d undispatched channel-layer message(s) for %s: the instance ended",
                type(self).__qualname__,
                dropped,
                self._channel_name,
            )

    def _fail(self, exc: Exception) -> None:
        """Record the first unhandled exception, log it once, and end the instance."""
        if isinstance(exc, StopConsumer):
            self._stop()
            return
        if self._error is None:
            self._error = exc
            logger.error(
                "Unhandled exception in %s for %s %s",
                type(self).__qualname__,
                self.scope.get("type"),
                self.scope.get("path", ""),
                exc_info=exc,
            )
        self._stop()

    def _stop(self) -> None:
        self._stopped = True
        self._release_watcher()
        # With no other task ever started, the caller is the instance's own task,
        # which ends by itself: cancelling would only cost a Cancelled later.
        if self._others_started:
            self._cancel_tasks()

    def _going_away(self, code: int, reason: str) -> None:
        """Start closing this WebSocket because the server is shutting down."""
        if self._can_spawn():
            self._spawn(self._send_going_away, code, reason)

    async def _send_going_away(self, code: int, reason: str) -> None:  # noqa: ASYNC910 - a task body, not an API
        try:
            await self.base_send(
                {"type": "websocket.close", "code": code, "reason": reason}
            )
        except Exception as exc:  # the connection may already be gone
            logger.debug("could not send going-away close: %r", exc)

    def _ended_by_handler(self) -> bool:
        """Whether the handler that just returned ended the instance (see _may_end_after_handler)."""
        return False

    def _has_cleanup(self) -> bool:
        """Whether :meth:`_instance_cleanup` has anything to do (saves a scope per instance)."""
        return type(self)._instance_cleanup is not AsyncConsumer._instance_cleanup

    async def _instance_cleanup(self) -> None:
        """Hook run once when the instance ends, however it ends.

        Runs shielded from cancellation and bounded by :attr:`close_timeout`.
        Generic consumers use it to leave their groups.
        """

    # -- dispatch --------------------------------------------------------------

    async def dispatch(self, message: Message) -> None:
        """Call the handler for ``message`` (a protocol event or an allowed layer event).

        Raises:
            ValueError: no handler is defined for the message's type (or the
                type maps to a private name).
            TypeError: the message is not a mapping with a string ``type``.
        """
        await self._get_handler(message)(message)

    def _get_handler(self, message: Message) -> Callable[[Message], Any]:
        return self._handler_named(get_handler_name(message), message)

    def _handler_named(self, name: str, message: Message) -> Callable[[Message], Any]:
        handler = getattr(self, name, None)
        if handler is None or not callable(handler):
            raise ValueError(
                f"no handler for message type {message['type']!r}: "
                f"{type(self).__qualname__} has no method {name!r}"
            )
        return handler  # type: ignore[no-any-return]

    def _allow(self, name: str, message: Message) -> None:
        """Raise :class:`RefusedLayerMessage` if a layer event may not reach handler ``name``."""
        reason = self._refusal_reason(name)
        if reason is not None:
            # Logged once, with the scope, where the instance records the failure.
            raise RefusedLayerMessage(message["type"], name, reason)
        self._allowed_name = name  # the next message of this type skips the lookup

    def _refusal_reason(self, name: str) -> str | None:
        key = (type(self), name, self.scope.get("type"), self.layer_event_handlers)
        try:
            return _refusals[key]
        except KeyError:
            pass
        except TypeError:  # an unhashable allowlist (a set given to as_asgi())
            return self._find_refusal_reason(name)
        reason = self._find_refusal_reason(name)
        if len(_refusals) < _CACHE_LIMIT:
            _refusals[key] = reason
        return reason

    def _find_refusal_reason(self, name: str) -> str | None:
        allowed = self.layer_event_handlers
        if allowed is not None:
            if name in allowed:
                return None
            return "is not in the consumer's layer_event_handlers"
        if name in _reserved_names(type(self)):
            return "is part of the consumer's own API, not an event handler"
        protocol = self.scope.get("type")
        if isinstance(protocol, str) and name.startswith(protocol + "_"):
            return f"handles {protocol!r} protocol events from the server, not layer events"
        return None

    # -- API for handlers --------------------------------------------------------

    async def send(self, message: Message) -> None:
        """Send an ASGI event to the server for this connection (a checkpoint).

        Raises:
            TypeError, ValueError: the message is malformed for the connection's
                protocol (see :func:`trichannels._validation.validate_outgoing`);
                nothing is sent.
        """
        validate_outgoing(self.scope["type"], message)
        await self.base_send(message)

    def start_soon(
        self, fn: Callable[..., Awaitable[Any]], *args: Any, name: object = None
    ) -> None:
        """Run ``fn(*args)`` as a child task of this instance.

        The task is cancelled (and awaited) when the instance ends. If it raises,
        the exception is treated like one from a handler: logged once, the
        instance ends, and the exception propagates to the server. Raising
        :class:`~trichannels.exceptions.StopConsumer` in it ends the instance
        cleanly.

        Raises:
            RuntimeError: the instance is not running (called before
                ``__call__`` or after it ended).
        """
        if not self._can_spawn():
            if self._host is not None and not self._stopping:
                raise RuntimeError(
                    f"{type(self).__qualname__}.start_soon() called while the server "
                    "is shutting down (the handler watchdog that hosts the instance's "
                    "tasks has ended)"
                )
            raise RuntimeError(
                f"{type(self).__qualname__}.start_soon() called while the instance is not running"
            )
        self._spawn(self._guard_child, fn, args, name=name)

    async def _guard_child(  # noqa: ASYNC910 - a task body, not an API
        self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]
    ) -> None:
        try:
            await fn(*args)
        except Exception as exc:
            self._fail(exc)


class SyncConsumer(AsyncConsumer):
    """A consumer whose handlers are plain (synchronous) methods.

    Handlers run through :func:`trichannels.sync.sync_to_async` in thread-sensitive
    mode, on one thread per application instance (two connections do not queue
    behind each other). Inside a handler, :meth:`send` is synchronous; use
    :func:`trichannels.sync.async_to_sync` to call async APIs such as
    ``self.channel_layer.group_send``.
    """

    _eager_layer_reader = True

    async def dispatch(self, message: Message) -> None:
        """Call the (synchronous) handler for ``message`` on the instance's thread.

        Raises:
            ValueError, TypeError: as :meth:`AsyncConsumer.dispatch`.
        """
        await sync_to_async(self._get_handler(message))(message)

    def send(self, message: Message) -> None:  # type: ignore[override]
        """Send an ASGI event to the server; blocks the handler's thread until sent.

        Raises:
            TypeError, ValueError: the message is malformed for the connection's
                protocol; nothing is sent.
        """
        validate_outgoing(self.scope["type"], message)
        async_to_sync(self.base_send)(message)


# -- helpers ----------------------------------------------------------------------


def _reserved_names(cls: type[AsyncConsumer]) -> frozenset[str]:
    """Every attribute name trichannels' own consumer classes define."""
    cached = cls.__dict__.get("_reserved_cache")
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    names: set[str] = set(dir(object))
    for klass in cls.__mro__:
        if klass.__module__.startswith("trichannels."):
            names.update(vars(klass))
    frozen = frozenset(names)
    cls._reserved_cache = frozen
    return frozen


def _check_initkwargs(cls: type[AsyncConsumer], initkwargs: Mapping[str, Any]) -> None:
    unknown = sorted(key for key in initkwargs if not hasattr(cls, key))
    if unknown:
        raise TypeError(
            f"{cls.__qualname__}.as_asgi() got unexpected keyword argument(s) "
            f"{', '.join(map(repr, unknown))}; only existing class attributes can be set"
        )
    methods = sorted(key for key in initkwargs if callable(getattr(cls, key)))
    if methods:
        raise TypeError(
            f"{cls.__qualname__}.as_asgi() keyword argument(s) {', '.join(map(repr, methods))} "
            "would replace method(s) of the consumer"
        )


def close_websockets(code: int = 1001, reason: str = "server shutting down") -> int:
    """Ask every running WebSocket consumer instance in this process to close.

    Used at graceful shutdown (``trichannels serve`` calls it on SIGTERM/SIGINT):
    each instance sends ``websocket.close`` with ``code`` (1001, "going away", by
    default) from its own task group, then ends when the server reports the
    disconnect. Does not block; returns how many instances were asked.

    Raises:
        ValueError: ``code`` is not 1000 or in 3000..4999 / 1001 (the codes an
            application may send), or ``reason`` is longer than 123 bytes.
    """
    if not isinstance(code, int) or not (code in (1000, 1001) or 3000 <= code <= 4999):
        raise ValueError(
            f"close code must be 1000, 1001 or in 3000..4999, got {code!r}"
        )
    if not isinstance(reason, str) or len(reason.encode()) > 123:
        raise ValueError(
            f"close reason must be a str of at most 123 UTF-8 bytes, got {reason!r}"
        )
    instances = list(_live_websockets)
    for instance in instances:
        instance._going_away(code, reason)
    return len(instances)
