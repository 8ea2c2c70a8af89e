"""Live servers for tests: an application served by Hypercorn's trio worker, plus a client.

:func:`live_server` runs the application exactly as production does
(``hypercorn --worker-class trio``) on an ephemeral port of the loopback
interface, in a task group opened inside the caller's task, so the server
cannot outlive the ``async with`` block::

    async with live_server(application) as server:
        async with open_websocket(server.ws_url + "/ws/chat/") as ws:
            await ws.send_message("hello")
            assert await ws.get_message() == "hello"

This module is trio-specific (Hypercorn's trio worker, trio-websocket); the
rest of the library is backend-neutral.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from functools import partial
from typing import TYPE_CHECKING, Final, cast
from urllib.parse import urlsplit

import attrs
import trio
import trio_websocket
from hypercorn.config import Config
from hypercorn.trio import serve

from trichannels.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from hypercorn.typing import Framework

__all__ = ["LiveServer", "live_server", "open_websocket"]

_CONNECT_TIMEOUT: Final = 5.0


@attrs.frozen
class LiveServer:
    """Where a :func:`live_server` listens.

    Attributes:
        host: the interface it is bound to.
        port: the ephemeral port the system chose.

    The properties :attr:`url` and :attr:`ws_url` are the base URLs, without a
    trailing slash: append a path.
    """

    host: str
    port: int

    @property
    def _netloc(self) -> str:
        return (
            f"[{self.host}]:{self.port}"
            if ":" in self.host
            else f"{self.host}:{self.port}"
        )

    @property
    def url(self) -> str:
        """The HTTP base URL, e.g. ``http://127.0.0.1:41234``."""
        return f"http://{self._netloc}"

    @property
    def ws_url(self) -> str:
        """The WebSocket base URL, e.g. ``ws://127.0.0.1:41234``."""
        return f"ws://{self._netloc}"


def _without_lifespan(app: ASGIApp) -> ASGIApp:
    """Answer the lifespan protocol for an application that does not speak it."""

    async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    return wrapper


@contextlib.asynccontextmanager
async def live_server(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    lifespan: bool = True,
    graceful_timeout: float = 1.0,
) -> AsyncIterator[LiveServer]:
    """Serve ``app`` with Hypercorn's trio worker on an ephemeral port for the block's duration.

    The server runs in a task group opened in the caller's task. Leaving the
    block triggers Hypercorn's graceful shutdown (connections still open get
    ``graceful_timeout`` seconds, then are cancelled) and waits for it, so no
    server task survives the block. If the block raises, the server is
    cancelled at once and the block's exception propagates unchanged.

    Hypercorn's error log goes to the ``hypercorn.error`` logger (so pytest's
    ``caplog`` sees it); the access log is off.

    Args:
        app: the ASGI application, e.g. a ``ProtocolTypeRouter``.
        host: the interface to bind; the port is always chosen by the system.
        lifespan: whether ``app`` speaks the ASGI lifespan protocol. Pass
            ``False`` for a bare consumer: the lifespan events are then
            answered for it.
        graceful_timeout: seconds open connections get to finish at shutdown.

    Yields:
        a :class:`LiveServer` with the URLs to connect to.
    """
    config = Config()
    config.bind = [f"[{host}]:0" if ":" in host else f"{host}:0"]
    config.graceful_timeout = graceful_timeout
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    served = app if lifespan else _without_lifespan(app)
    shutdown = trio.Event()
    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            partial(
                serve, cast("Framework", served), config, shutdown_trigger=shutdown.wait
            )
        )
        port = int(binds[0].rsplit(":", 1)[1])
        try:
            yield LiveServer(host=host, port=port)
        except BaseException as exc:  # noqa: ASYNC103 - re-raised below
            # Re-raised below, outside the nursery, so that it is not wrapped
            # in an exception group together with the server's cancellation.
            body_error = exc
            nursery.cancel_scope.cancel()
        finally:
            shutdown.set()
    if body_error is not None:
        try:
            raise body_error
        finally:
            body_error = None


def _split_ws_url(url: str) -> tuple[str, int, str, str]:
    """``(host, port, Host header, resource)`` of a ``ws://`` URL."""
    parts = urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname:
        msg = f"open_websocket() needs a ws://host[:port]/path URL, got {url!r}"
        raise ValueError(msg)
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    return parts.hostname, parts.port or 80, parts.netloc, resource


def _unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The only exception of a one-exception group, nested groups included."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


@contextlib.asynccontextmanager
async def open_websocket(
    url: str,
    *,
    subprotocols: Iterable[str] | None = None,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    connect_timeout: float = _CONNECT_TIMEOUT,
    disconnect_timeout: float = _CONNECT_TIMEOUT,
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """Open a trio-websocket client connection to a ``ws://`` URL for the block's duration.

    The connection's ``subprotocol``, ``handshake_headers`` and, once closed,
    ``closed.code`` / ``closed.reason`` show what the server did. A refused
    handshake raises ``trio_websocket.ConnectionRejected`` (with
    ``status_code``, ``headers`` and ``body``). Leaving the block closes the
    connection (code 1000) and the socket.

    Unlike ``trio_websocket.open_websocket_url``, the TCP connection is
    owned here, so it is closed after a refused handshake too (trio-websocket
    0.12 leaves that socket to the garbage collector, which
    ``filterwarnings = error`` turns into a ``ResourceWarning`` failure), and
    the ``Host`` header carries the port.

    Args:
        url: a ``ws://`` URL, e.g. ``server.ws_url + "/ws/chat/"``.
        subprotocols: subprotocols to offer.
        extra_headers: extra handshake headers as ``(bytes, bytes)`` pairs
            (``origin``, ``cookie``, ...).
        connect_timeout: seconds allowed for the TCP connection and handshake
            (``trio_websocket.ConnectionTimeout`` after that).
        disconnect_timeout: seconds allowed for the closing handshake.

    Raises:
        ValueError: ``url`` is not a ``ws://`` URL.
    """
    host, port, netloc, resource = _split_ws_url(url)
    try:
        with trio.fail_after(connect_timeout):
            stream = await trio.open_tcp_stream(host, port)
    except trio.TooSlowError:
        raise trio_websocket.ConnectionTimeout from None
    async with stream:
        try:
            async with trio.open_nursery() as nursery:
                try:
                    with trio.fail_after(connect_timeout):
                        connection = await trio_websocket.wrap_client_stream(
                            nursery,
                            stream,
                            netloc,
                            resource,
                            subprotocols=subprotocols,
                            extra_headers=extra_headers,
                        )
                except trio.TooSlowError:
                    raise trio_websocket.ConnectionTimeout from None
                try:
                    yield connection
                finally:
                    with (
                        trio.CancelScope(shield=True),
                        trio.move_on_after(disconnect_timeout),
                    ):
                        await connection.aclose()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The reader task's error (a refusal) or the block's own exception,
            # alone in the group: raise it as itself.
            inner = _unwrap(group)
            if inner is group:
                raise
            context = inner.__context__
            try:
                raise inner
            finally:
                inner.__context__ = context
                del inner, context, group
