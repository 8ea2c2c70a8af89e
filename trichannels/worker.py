"""Background workers: run the consumers of named channels against a channel layer.

A worker takes messages from one or more channels of a layer and hands each to
the application (usually a :class:`~trichannels.routing.ChannelNameRouter`)
as a fresh application instance whose scope is::

    {"type": "channel", "channel": "<channel name>"}

The instance's ``receive`` returns the message once. A consumer's handler for
the message (``type`` ``"thumbnail.make"`` -> ``thumbnail_make``) runs as usual;
when it returns, the consumer reports ``{"type": "channel.handled"}`` through
``send`` and the instance ends. A plain ASGI function may simply return.

Delivery: on at-least-once channels (the layer's ``channel_delivery``) the message
is acknowledged only after the handler returned; if it raises, or the worker is
stopped or killed mid-message, the layer redelivers it later. On at-most-once
channels a message taken is gone whatever happens.

Up to ``concurrency`` messages are handled at once per worker. Stopping the worker
(cancelling :func:`run_worker`, or SIGTERM/SIGINT under :func:`serve_worker`)
stops taking new messages; messages in hand get ``grace_period`` seconds to finish
and, on at-least-once channels, to be acknowledged.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

from trichannels.consumer import handler_watchdog
from trichannels.exceptions import ConfigurationError

if TYPE_CHECKING:
    from trichannels.layers.base import BaseChannelLayer
    from trichannels.types import ASGIApp, Message

__all__ = ["run_worker", "serve_worker"]

logger = logging.getLogger("trichannels.worker")


def _check_args(
    channels: Sequence[str], concurrency: int, grace_period: float
) -> list[str]:
    if isinstance(channels, str):
        raise TypeError(
            f"channels must be a sequence of channel names, not the str {channels!r}"
        )
    names = list(channels)
    if not names:
        raise ConfigurationError("a worker needs at least one channel name")
    from trichannels.layers.base import BaseChannelLayer  # import here: import cycle

    for name in names:
        BaseChannelLayer.require_valid_channel_name(name)
        if "!" in name:
            raise ConfigurationError(
                f"worker channel {name!r} is process-local ('!'); workers serve normal channels"
            )
    if (
        not isinstance(concurrency, int)
        or isinstance(concurrency, bool)
        or concurrency < 1
    ):
        raise ConfigurationError(
            f"concurrency must be a positive int, got {concurrency!r}"
        )
    if not isinstance(grace_period, int | float) or grace_period < 0:
        raise ConfigurationError(
            f"grace_period must be a number >= 0, got {grace_period!r}"
        )
    return names


async def run_worker(
    application: ASGIApp,
    channels: Sequence[str],
    *,
    layer: BaseChannelLayer | None = None,
    alias: str = "default",
    concurrency: int = 10,
    grace_period: float = 10.0,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``channels`` until cancelled; supports ``task_group.start``.

    Args:
        application: the ASGI application (e.g. a ``ChannelNameRouter``).
        channels: the channel names to take messages from.
        layer: the open layer to use; by default ``get_channel_layer(alias)``.
        alias: the configured layer alias when ``layer`` is not given.
        concurrency: at most this many messages are handled at once.
        grace_period: seconds a message in hand may still take once the worker
            is told to stop.

    Raises:
        ConfigurationError: bad channels, concurrency or grace period.
        InvalidChannelName: a channel name breaks the naming rules.
        InvalidChannelLayerError: no open layer under ``alias``.
    """
    names = _check_args(channels, concurrency, grace_period)
    if layer is None:
        from trichannels.layers import get_channel_layer  # import here: import cycle

        layer = get_channel_layer(alias)
    stop = _Stop(grace_period)
    # One watcher of busy handlers for all the worker's instances: an instance
    # whose handler returns promptly then runs in a single task.
    async with handler_watchdog(), anyio.create_task_group() as tg:
        for name in names:
            for _ in range(concurrency):
                tg.start_soon(_take_messages, application, layer, name, stop)
        logger.info("worker serving %s (concurrency %d)", ", ".join(names), concurrency)
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            # Runs before the task group cancels its children, so handlers that are
            # mid-message start their grace period now.
            stop.begin()


class _Stop:
    """The worker's stop: once begun, each message in hand gets ``grace`` more seconds.

    The grace period is a deadline on the shielded scope around each message in
    hand, set when the stop begins (or when the scope opens, if later): no timer
    task per message.
    """

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.deadline: float | None = None
        self._in_hand: set[anyio.CancelScope] = set()

    def begin(self) -> None:
        self.deadline = anyio.current_time() + self.grace
        for scope in self._in_hand:
            scope.deadline = self.deadline

    @contextlib.contextmanager
    def in_hand(self) -> Iterator[anyio.CancelScope]:
        """A scope shielded from the worker's cancellation, bounded once the stop begins."""
        with anyio.CancelScope(shield=True) as scope:
            if self.deadline is not None:
                scope.deadline = self.deadline
            self._in_hand.add(scope)
            try:
                yield scope
            finally:
                self._in_hand.discard(scope)


async def _take_messages(
    application: ASGIApp, layer: BaseChannelLayer, channel: str, stop: _Stop
) -> None:
    await anyio.lowlevel.checkpoint()
    while stop.deadline is None:
        try:
            async with layer.receive_delivery(channel) as message:
                with stop.in_hand() as in_hand:
                    await _handle(application, channel, message)
                if in_hand.cancelled_caught:
                    # Leaving the delivery with an error: not acknowledged.
                    raise _Abandoned
        except _Abandoned:
            logger.warning(
                "a message on %r was not finished within grace_period=%ss of the stop; "
                "abandoned (redelivered later if the channel is at-least-once)",
                channel,
                stop.grace,
            )
            return
        except Exception:
            logger.exception("handler for a message on %r failed", channel)


class _Abandoned(Exception):
    """A message in hand did not finish within the grace period after stop."""


async def _handle(application: ASGIApp, channel: str, message: dict[str, Any]) -> None:
    delivered = False
    with anyio.CancelScope() as instance:

        async def receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                await anyio.lowlevel.checkpoint()
                return message
            await anyio.sleep_forever()
            raise AssertionError("unreachable")  # pragma: no cover

        async def send(event: Message) -> None:
            if event.get("type") == "channel.handled":
                instance.cancel()
            await anyio.lowlevel.checkpoint()

        await application({"type": "channel", "channel": channel}, receive, send)


async def serve_worker(
    application: ASGIApp,
    channels: Sequence[str],
    *,
    layer: BaseChannelLayer | None = None,
    alias: str = "default",
    concurrency: int = 10,
    grace_period: float = 10.0,
) -> None:
    """Run :func:`run_worker` until SIGTERM or SIGINT, then stop gracefully.

    Messages in hand get ``grace_period`` seconds to finish; the function then
    returns normally.
    """
    _check_args(channels, concurrency, grace_period)
    async with anyio.create_task_group() as tg:
        await tg.start(
            lambda task_status: run_worker(
                application,
                channels,
                layer=layer,
                alias=alias,
                concurrency=concurrency,
                grace_period=grace_period,
                task_status=task_status,
            )
        )
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                logger.info(
                    "received %s; finishing messages in hand",
                    signal.Signals(signum).name,
                )
                break
        tg.cancel_scope.cancel()
