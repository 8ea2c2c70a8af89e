"""pytest fixtures for testing trichannels applications.

Installing trichannels registers this module as a pytest plugin (the
``pytest11`` entry point ``trichannels``), so the fixtures are available in
every test suite without a ``conftest.py`` import:

``channel_layer``
    A fresh :class:`~trichannels.layers.InMemoryChannelLayer`, open and
    installed as the ``"default"`` layer for the test, closed and removed
    after it (whatever was installed before is put back). Options for the
    layer come from the ``channel_layer`` marker::

        @pytest.mark.channel_layer(capacity=5, expiry=10)
        async def test_small_channels(channel_layer): ...

``live_server_factory``
    Serves applications with Hypercorn's trio worker on ephemeral ports for
    the duration of the test (see :func:`~trichannels.testing.live_server`)::

        async def test_chat(channel_layer, live_server_factory):
            server = await live_server_factory(application)
            async with open_websocket(server.ws_url + "/ws/chat/lobby/") as ws:
                ...

    The servers run in a task group owned by the fixture; at teardown they
    shut down gracefully (open connections get ``graceful_timeout`` seconds)
    and nothing they started survives the test.

The fixtures are async and function-scoped; they are meant for tests run by
pytest-trio (``trio_mode = true``, or ``@pytest.mark.trio`` on the test).
``live_server_factory`` is trio-specific, like Hypercorn's trio worker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest
import trio

from trichannels.exceptions import InvalidChannelLayerError
from trichannels.layers import (
    DEFAULT_CHANNEL_LAYER,
    InMemoryChannelLayer,
    channel_layers,
)
from trichannels.testing._live import LiveServer, live_server
from trichannels.types import ASGIApp

__all__ = ["LiveServerFactory", "channel_layer", "live_server_factory"]


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``channel_layer`` marker (so ``--strict-markers`` accepts it)."""
    config.addinivalue_line(
        "markers",
        "channel_layer(**options): options for the InMemoryChannelLayer of the "
        "channel_layer fixture (capacity, expiry, group_expiry, channel_capacity, ...)",
    )


@pytest.fixture
async def channel_layer(
    request: pytest.FixtureRequest,
) -> AsyncIterator[InMemoryChannelLayer]:
    """A fresh in-memory channel layer installed as ``"default"`` for the test."""
    marker = request.node.get_closest_marker("channel_layer")
    if marker is not None and marker.args:
        msg = (
            f"the channel_layer marker takes keyword options only, got {marker.args!r}"
        )
        raise TypeError(msg)
    options: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    async with InMemoryChannelLayer(**options) as layer:
        previous = channel_layers.set(DEFAULT_CHANNEL_LAYER, layer)
        try:
            yield layer
        finally:
            _restore(previous)


def _restore(previous: Any) -> None:
    """Remove the test's layer and reinstall ``previous`` if it had been installed."""
    channel_layers.set(DEFAULT_CHANNEL_LAYER, None)
    if previous is None:
        return
    try:
        current = channel_layers.lookup(DEFAULT_CHANNEL_LAYER)
    except InvalidChannelLayerError:
        current = None
    # ``previous`` may be a layer opened by a lifespan, still reachable without
    # being installed; only a layer that was installed with set() goes back.
    if current is not previous:
        channel_layers.set(DEFAULT_CHANNEL_LAYER, previous)


class LiveServerFactory:
    """What the ``live_server_factory`` fixture yields: ``await factory(app)`` serves ``app``.

    Each call starts one more server (its own ephemeral port) in the
    fixture's task group and returns its :class:`~trichannels.testing.LiveServer`.
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._stop = trio.Event()
        self.servers: list[LiveServer] = []
        """The servers started so far, in order."""

    async def __call__(
        self,
        app: ASGIApp,
        *,
        host: str = "127.0.0.1",
        lifespan: bool = True,
        graceful_timeout: float = 1.0,
    ) -> LiveServer:
        """Serve ``app`` until the end of the test; returns where it listens.

        The keyword arguments are those of :func:`~trichannels.testing.live_server`.

        Raises:
            RuntimeError: the fixture is being torn down.
        """
        if self._stop.is_set():
            msg = "live_server_factory is shutting down; it cannot start another server"
            raise RuntimeError(msg)
        server: LiveServer = await self._nursery.start(
            partial(
                self._serve,
                app,
                host=host,
                lifespan=lifespan,
                graceful_timeout=graceful_timeout,
            )
        )
        self.servers.append(server)
        return server

    async def _serve(  # noqa: ASYNC114 - private, only started by __call__
        self,
        app: ASGIApp,
        *,
        host: str,
        lifespan: bool,
        graceful_timeout: float,
        task_status: trio.TaskStatus[LiveServer] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with live_server(
            app, host=host, lifespan=lifespan, graceful_timeout=graceful_timeout
        ) as server:
            task_status.started(server)
            await self._stop.wait()

    def _shutdown(self) -> None:
        self._stop.set()


@pytest.fixture
async def live_server_factory() -> AsyncIterator[LiveServerFactory]:
    """Start live servers with ``await live_server_factory(app)``; they stop after the test."""
    async with trio.open_nursery() as nursery:
        factory = LiveServerFactory(nursery)
        try:
            yield factory
        finally:
            factory._shutdown()
