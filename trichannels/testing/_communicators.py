"""Communicators: drive one ASGI application instance from a test, in-process.

Every communicator is an async context manager. Entering it starts the
application instance as a task in a task group the communicator owns, inside
the caller's task; leaving it ends the instance (sending a disconnect where the
protocol has one, then cancelling) so that nothing keeps running::

    async with WebsocketCommunicator(app, "/ws/chat/") as comm:
        connected, _ = await comm.connect()
        await comm.send_to(text_data="hi")
        assert await comm.receive_from() == "hi"

For code ported from Channels that creates a communicator without ``async with``,
pass ``task_group=`` (a nursery the test owns): the instance then starts lazily
on first use and lives in that task group.

Timeouts raise :class:`TimeoutError` naming what was awaited and do **not**
cancel the application, so the communicator stays usable afterwards. An
exception raised by the application is re-raised by the next communicator call
(after any output it sent before failing has been read) and, if no call
surfaced it, when the ``async with`` block exits.
"""

from __future__ import annotations

import json
import math
from collections import deque
from types import TracebackType
from typing import Any, Final, Self, final
from urllib.parse import unquote, urlsplit

import anyio
from anyio.abc import TaskGroup

from trichannels.types import ASGIApp, Message, Scope

__all__ = [
    "ApplicationCommunicator",
    "HttpCommunicator",
    "WebsocketCommunicator",
]

_EXIT_GRACE: Final = 1.0


class ApplicationCommunicator:
    """Run an ASGI application with an in-memory ``receive``/``send`` pair.

    Args:
        application: the ASGI 3 application to run.
        scope: the connection scope; a shallow copy is given to the application.
        task_group: run the application in this task group instead of one the
            communicator opens with ``async with``.

    Raises:
        TypeError: ``application`` is not callable or ``scope`` is not a mapping
            with a string ``type``.
    """

    def __init__(
        self, application: ASGIApp, scope: Scope, *, task_group: TaskGroup | None = None
    ) -> None:
        if not callable(application):
            raise TypeError(
                f"application must be an ASGI callable, got {application!r}"
            )
        if not hasattr(scope, "keys") or not isinstance(scope.get("type"), str):
            raise TypeError(f"scope must be a mapping with a str 'type', got {scope!r}")
        self.application = application
        self.scope = scope
        self._input_send, self._input_receive = anyio.create_memory_object_stream[
            Message
        ](math.inf)
        self._output_send, self._output_receive = anyio.create_memory_object_stream[
            Message
        ](math.inf)
        self._peeked: deque[Message] = deque()
        self._external_tg = task_group
        self._own_tg: TaskGroup | None = None
        self._started = False
        self._done = anyio.Event()
        self._exception: BaseException | None = None
        self._exception_surfaced = False

    # -- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._started:
            raise RuntimeError("this communicator has already been started")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._own_tg = tg
        self._start(tg)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tg = self._own_tg
        assert tg is not None
        try:
            if not self._done.is_set():
                # Bounded by _EXIT_GRACE inside _finish(). Shielded only when the
                # body raised, so that a cancelled clean exit is still cut short.
                with anyio.CancelScope(shield=exc is not None):
                    await self._finish()  # noqa: ASYNC102 - see above
        finally:
            tg.cancel_scope.cancel()
            # The test body's exception (if any) is not handed to the task group,
            # so it propagates unwrapped rather than inside an exception group.
            # Not shielded: the group is cancelled already, so exiting only waits
            # for the cancelled application, and a shield would not bound that.
            try:
                await tg.__aexit__(None, None, None)  # noqa: ASYNC102 - see above
            finally:
                # Also when cancelled from outside: a cancelled exit re-raises there.
                self._close_streams()
        if exc is None:
            self._raise_unsurfaced()

    def _close_streams(self) -> None:
        for stream in (
            self._input_send,
            self._input_receive,
            self._output_send,
            self._output_receive,
        ):
            stream.close()

    async def _finish(self) -> None:
        """Ask the application to end (protocol-specific), wait briefly, then give up."""
        await self._request_end()
        with anyio.move_on_after(_EXIT_GRACE):
            await self._done.wait()

    async def _request_end(self) -> None:
        """Tell the application its connection ended, where the protocol has a way to."""
        kind = self.scope["type"]
        if kind == "websocket":
            self._input_send.send_nowait(
                {"type": "websocket.disconnect", "code": 1000, "reason": ""}
            )
        elif kind == "http":
            self._input_send.send_nowait({"type": "http.disconnect"})
        await anyio.lowlevel.checkpoint()

    def _start(self, tg: TaskGroup) -> None:
        self._started = True
        tg.start_soon(self._run_application)

    def _ensure_started(self) -> None:
        if self._started:
            return
        if self._external_tg is None:
            raise RuntimeError(
                f"{type(self).__name__} is not running: use 'async with "
                f"{type(self).__name__}(...) as comm:' or pass task_group=..."
            )
        self._start(self._external_tg)

    async def _run_application(self) -> None:  # noqa: ASYNC910 - a task body, not an API
        try:
            await self.application(
                dict(self.scope), self._input_receive.receive, self._send_output
            )
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:
            self._exception = exc
        finally:
            self._output_send.close()
            self._done.set()

    async def _send_output(self, message: Message) -> None:
        await self._output_send.send(message)

    def _raise_unsurfaced(self) -> None:
        if self._exception is not None and not self._exception_surfaced:
            self._exception_surfaced = True
            raise self._exception

    # -- API ---------------------------------------------------------------------

    async def send_input(self, message: Message) -> None:
        """Give ``message`` to the application's ``receive`` (a checkpoint).

        Raises:
            TypeError: the message is not a mapping with a string ``type``.
            RuntimeError: the application has already returned.
            Exception: the application's own exception, if it failed.
        """
        if not hasattr(message, "keys") or not isinstance(message.get("type"), str):
            raise TypeError(
                f"message must be a mapping with a str 'type', got {message!r}"
            )
        self._ensure_started()
        if self._done.is_set():
            self._raise_unsurfaced()
            raise RuntimeError(
                f"the application has already returned; cannot send {message.get('type')!r}"
            )
        self._input_send.send_nowait(dict(message))
        await anyio.lowlevel.checkpoint()

    async def receive_output(self, timeout: float = 1) -> Message:  # noqa: ASYNC109 - Channels parity
        """Return the next message the application sent, waiting up to ``timeout`` seconds.

        Raises:
            TimeoutError: nothing arrived in time (the application keeps running).
            RuntimeError: the application returned without sending anything more.
            Exception: the application's own exception, once its earlier output
                has been read.
        """
        return await self._next_output(timeout, "receive_output()")

    async def _next_output(self, timeout: float, waiting_in: str) -> Message:  # noqa: ASYNC109 - Channels parity
        self._ensure_started()
        if self._peeked:
            await anyio.lowlevel.checkpoint()
            return self._peeked.popleft()
        try:
            with anyio.fail_after(timeout):
                return await self._output_receive.receive()
        except anyio.EndOfStream:
            self._raise_unsurfaced()
            raise RuntimeError(
                f"the application returned without sending more output (waiting in {waiting_in})"
            ) from None
        except TimeoutError:
            raise TimeoutError(
                f"no output from the application within {timeout} s (waiting in {waiting_in})"
            ) from None

    async def receive_nothing(
        self,
        timeout: float = 0.1,  # noqa: ASYNC109 - Channels parity
        interval: float = 0.01,
    ) -> bool:
        """Return ``True`` if the application sends nothing within ``timeout`` seconds.

        A message that does arrive is kept for the next ``receive_*`` call.
        ``interval`` is accepted for compatibility and ignored: the wait is
        event-driven, not polled.
        """
        del interval
        self._ensure_started()
        if self._peeked:
            await anyio.lowlevel.checkpoint()
            return False
        with anyio.move_on_after(timeout):
            try:
                message = await self._output_receive.receive()
            except anyio.EndOfStream:
                self._raise_unsurfaced()
                return True  # noqa: ASYNC910 - receive() checkpointed before raising
            self._peeked.append(message)
            return False
        return True

    async def wait(self, timeout: float = 1) -> None:  # noqa: ASYNC109 - Channels parity
        """Wait up to ``timeout`` seconds for the application to return.

        Raises:
            TimeoutError: it is still running (it is not cancelled).
            Exception: the application's own exception.
        """
        self._ensure_started()
        try:
            with anyio.fail_after(timeout):
                await self._done.wait()
        except TimeoutError:
            raise TimeoutError(
                f"the application did not return within {timeout} s (waiting in wait())"
            ) from None
        self._raise_unsurfaced()

    @property
    def finished(self) -> bool:
        """Whether the application instance has returned."""
        return self._done.is_set()


def _split_path(path: object) -> tuple[str, bytes, bytes]:
    if not isinstance(path, str):
        raise TypeError(f"path must be a str, got {path!r}")
    parts = urlsplit(path)
    return (
        unquote(parts.path),
        parts.path.encode("ascii", "ignore"),
        parts.query.encode("utf-8"),
    )


def _check_headers(headers: object) -> list[tuple[bytes, bytes]]:
    if headers is None:
        return []
    if not isinstance(headers, list | tuple):
        raise TypeError(
            f"headers must be a list of (bytes, bytes) pairs, got {headers!r}"
        )
    checked: list[tuple[bytes, bytes]] = []
    for header in headers:
        if (
            not isinstance(header, list | tuple)
            or len(header) != 2
            or not all(isinstance(part, bytes) for part in header)
        ):
            raise TypeError(
                f"each header must be a (bytes, bytes) pair, got {header!r}"
            )
        checked.append((header[0].lower(), header[1]))
    return checked


@final
class WebsocketCommunicator(ApplicationCommunicator):
    """Drive a WebSocket application: connect, exchange frames, disconnect.

    Args:
        application: the ASGI application.
        path: the request path, optionally with a query string.
        headers: handshake headers as ``(bytes, bytes)`` pairs.
        subprotocols: subprotocols the client offers.
        spec_version: ASGI WebSocket spec version placed in ``scope["asgi"]``.
        task_group: see :class:`ApplicationCommunicator`.

    After :meth:`connect`, ``response_headers`` holds the accept headers and
    ``close_reason`` the reason of a refusal; after a refusal that used the
    ``websocket.http.response`` extension, ``denial_response`` holds
    ``{"status", "headers", "body"}``.

    Raises:
        TypeError: a bad ``path``, ``headers`` or ``subprotocols`` value (named).
    """

    def __init__(
        self,
        application: ASGIApp,
        path: str,
        headers: list[tuple[bytes, bytes]] | None = None,
        subprotocols: list[str] | None = None,
        spec_version: str = "2.4",
        *,
        task_group: TaskGroup | None = None,
    ) -> None:
        decoded, raw, query = _split_path(path)
        if subprotocols is not None and (
            not isinstance(subprotocols, list | tuple)
            or not all(isinstance(p, str) for p in subprotocols)
        ):
            raise TypeError(f"subprotocols must be a list of str, got {subprotocols!r}")
        scope: Scope = {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": spec_version},
            "http_version": "1.1",
            "scheme": "ws",
            "path": decoded,
            "raw_path": raw,
            "root_path": "",
            "query_string": query,
            "headers": _check_headers(headers),
            "client": ("127.0.0.1", 51000),
            "server": ("testserver", 80),
            "subprotocols": list(subprotocols or []),
            "extensions": {"websocket.http.response": {}},
        }
        super().__init__(application, scope, task_group=task_group)
        self.connected = False
        self.closed = False
        self.response_headers: list[tuple[bytes, bytes]] | None = None
        self.close_reason: str | None = None
        self.denial_response: dict[str, Any] | None = None

    async def connect(self, timeout: float = 1) -> tuple[bool, int | str | None]:  # noqa: ASYNC109 - Channels parity
        """Send the handshake; return ``(True, subprotocol)`` or ``(False, close_code)``.

        A refusal sent as an HTTP response returns ``(False, status)``.
        """
        await self.send_input({"type": "websocket.connect"})
        response = await self._next_output(timeout, "connect()")
        kind = response["type"]
        if kind == "websocket.close":
            self.closed = True
            self.close_reason = response.get("reason") or None
            return False, response.get("code", 1000)
        if kind == "websocket.http.response.start":
            body = bytearray()
            while True:
                part = await self._next_output(
                    timeout, "connect() reading the denial body"
                )
                body += part.get("body", b"")
                if not part.get("more_body", False):
                    break
            self.closed = True
            self.denial_response = {
                "status": response["status"],
                "headers": list(response.get("headers", [])),
                "body": bytes(body),
            }
            return False, response["status"]
        if kind != "websocket.accept":
            raise AssertionError(
                f"expected 'websocket.accept' or 'websocket.close' after connect, got {kind!r}"
            )
        self.connected = True
        self.response_headers = list(response.get("headers", []))
        return True, response.get("subprotocol")

    async def send_to(
        self, text_data: str | None = None, bytes_data: bytes | None = None
    ) -> None:
        """Send one frame: exactly one of ``text_data`` (str) or ``bytes_data`` (bytes).

        Empty frames are allowed.
        """
        if (text_data is None) == (bytes_data is None):
            raise TypeError("send_to() needs exactly one of text_data or bytes_data")
        if text_data is not None and not isinstance(text_data, str):
            raise TypeError(f"text_data must be a str, got {text_data!r}")
        if bytes_data is not None and not isinstance(bytes_data, bytes):
            raise TypeError(f"bytes_data must be bytes, got {bytes_data!r}")
        if text_data is not None:
            await self.send_input({"type": "websocket.receive", "text": text_data})
        else:
            await self.send_input({"type": "websocket.receive", "bytes": bytes_data})

    async def send_json_to(self, data: Any) -> None:
        """Send ``data`` encoded as JSON in a text frame."""
        await self.send_to(text_data=json.dumps(data))

    async def receive_from(self, timeout: float = 1) -> str | bytes:  # noqa: ASYNC109 - Channels parity
        """Return the payload of the next frame the application sent (str or bytes)."""
        response = await self._next_output(timeout, "receive_from()")
        kind = response["type"]
        if kind == "websocket.close":
            self.closed = True
            raise AssertionError(
                "expected a 'websocket.send' frame but the application closed the "
                f"connection with code {response.get('code', 1000)}"
            )
        if kind != "websocket.send":
            raise AssertionError(f"expected a 'websocket.send' frame, got {kind!r}")
        text: str | None = response.get("text")
        data: bytes | None = response.get("bytes")
        if (text is None) == (data is None):
            raise AssertionError(
                f"a 'websocket.send' message needs exactly one of 'text' or 'bytes': {response!r}"
            )
        if text is not None:
            return text
        assert data is not None
        return data

    async def receive_json_from(self, timeout: float = 1) -> Any:  # noqa: ASYNC109 - Channels parity
        """Return the next frame decoded as JSON (it must be a text frame)."""
        payload = await self.receive_from(timeout)
        if not isinstance(payload, str):
            raise AssertionError(
                f"expected a JSON text frame, got a binary frame {payload!r}"
            )
        return json.loads(payload)

    async def disconnect(self, code: int = 1000, timeout: float = 1) -> None:  # noqa: ASYNC109 - Channels parity
        """Tell the application the client disconnected, then wait for it to return."""
        if not isinstance(code, int) or isinstance(code, bool):
            raise TypeError(f"code must be an int, got {code!r}")
        self._ensure_started()
        if not self._done.is_set():
            self._input_send.send_nowait(
                {"type": "websocket.disconnect", "code": code, "reason": ""}
            )
        self.closed = True
        await self.wait(timeout)


@final
class HttpCommunicator(ApplicationCommunicator):
    """Drive an HTTP application through one request/response.

    Args:
        application: the ASGI application.
        method: the HTTP method, e.g. ``"GET"``.
        path: the request path, optionally with a query string.
        body: the whole request body (sent as one ``http.request``), or an
            iterable of ``bytes`` chunks sent as several.
        headers: request headers as ``(bytes, bytes)`` pairs.
        task_group: see :class:`ApplicationCommunicator`.

    Raises:
        TypeError: a bad ``method``, ``path``, ``body`` or ``headers`` value (named).
    """

    def __init__(
        self,
        application: ASGIApp,
        method: str,
        path: str,
        body: bytes | list[bytes] = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
        *,
        task_group: TaskGroup | None = None,
    ) -> None:
        if not isinstance(method, str) or not method.isalpha():
            raise TypeError(f"method must be a str such as 'GET', got {method!r}")
        decoded, raw, query = _split_path(path)
        if isinstance(body, bytes):
            chunks = [body]
        elif isinstance(body, list) and all(isinstance(c, bytes) for c in body):
            chunks = list(body) or [b""]
        else:
            raise TypeError(f"body must be bytes or a list of bytes, got {body!r}")
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": method.upper(),
            "scheme": "http",
            "path": decoded,
            "raw_path": raw,
            "root_path": "",
            "query_string": query,
            "headers": _check_headers(headers),
            "client": ("127.0.0.1", 51000),
            "server": ("testserver", 80),
        }
        super().__init__(application, scope, task_group=task_group)
        self._chunks = chunks
        self._sent_request = False

    async def get_response(self, timeout: float = 1) -> dict[str, Any]:  # noqa: ASYNC109 - Channels parity
        """Send the request and return ``{"status", "headers", "body"}`` of the response.

        Each received message has its own ``timeout``. Streamed bodies are joined.
        """
        if not self._sent_request:
            self._sent_request = True
            last = len(self._chunks) - 1
            for index, chunk in enumerate(self._chunks):
                await self.send_input(
                    {"type": "http.request", "body": chunk, "more_body": index < last}
                )
        start = await self._next_output(
            timeout, "get_response() awaiting the response start"
        )
        if start["type"] != "http.response.start":
            raise AssertionError(
                f"expected 'http.response.start', got {start['type']!r}"
            )
        body = bytearray()
        while True:
            part = await self._next_output(
                timeout, "get_response() awaiting the response body"
            )
            if part["type"] != "http.response.body":
                raise AssertionError(
                    f"expected 'http.response.body', got {part['type']!r}"
                )
            body += part.get("body", b"")
            if not part.get("more_body", False):
                break
        return {
            "status": start["status"],
            "headers": list(start.get("headers", [])),
            "body": bytes(body),
        }
