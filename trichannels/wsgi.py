"""Run a WSGI application inside an ASGI server, on anyio worker threads.

:class:`WsgiToAsgi` wraps a WSGI (PEP 3333) application so that it can sit
behind the same :class:`~trichannels.routing.ProtocolTypeRouter` /
:class:`~trichannels.routing.URLRouter` as your consumers::

    from trichannels.routing import ProtocolTypeRouter, URLRouter, path
    from trichannels.wsgi import WsgiToAsgi

    application = ProtocolTypeRouter({
        "http": URLRouter([
            path("events/", EventsConsumer.as_asgi()),
            path("", WsgiToAsgi(legacy_wsgi_app)),   # everything else
        ]),
    })

Each request runs the WSGI application in one anyio worker thread (drawn
from ``limiter``, anyio's default limiter when ``None``). Nothing is
buffered whole:

* the request body reaches ``environ["wsgi.input"]`` through a small bounded
  memory stream; when the application does not read, the wrapper stops
  reading from the server (back-pressure), and
* every chunk the response iterable yields (or ``write()`` is given) is sent
  to the server as soon as it is produced.

When the client disconnects (``http.disconnect``), the wrapper stops iterating
the response at the next chunk and calls the iterable's ``close()``; a
``write()`` or a read of ``wsgi.input`` after that raises
:class:`~trichannels.exceptions.RequestAborted`. The ASGI call returns only
once the worker thread has finished: a thread is never abandoned.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Coroutine, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from anyio.streams.memory import MemoryObjectSendStream

from trichannels.exceptions import RequestAborted, UnexpectedMessage

if TYPE_CHECKING:
    from trichannels.types import Message, Receive, Scope, Send

__all__ = ["WsgiToAsgi"]

logger = logging.getLogger("trichannels.wsgi")

ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse: TypeAlias = Callable[..., Callable[[bytes], None]]
WSGIApp: TypeAlias = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

#: Request-body chunks buffered between the server and ``wsgi.input``.
_BODY_BUFFER_CHUNKS: Final = 1
_STATUS: Final = re.compile(r"([1-5][0-9][0-9]) ([^\r\n]*)", re.ASCII)
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: PEP 3333: "Applications ... are forbidden from using HTTP/1.1 hop-by-hop headers".
_HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_SERVER_ERROR: Final = b"Internal Server Error"

_SendResult: TypeAlias = Literal["sent", "complete", "disconnected"]


class WsgiToAsgi:
    """Wrap a WSGI application as an ASGI 3 application (``http`` scopes only).

    The WSGI environ follows PEP 3333: ``SCRIPT_NAME`` is the scope's
    ``root_path``, ``PATH_INFO`` the rest of the path (both as latin-1
    "bytes-as-str" of the UTF-8 path), ``QUERY_STRING``, ``CONTENT_TYPE`` and
    ``CONTENT_LENGTH`` from the headers, ``HTTP_*`` for the other headers
    (repeated headers joined with ``", "``, cookies with ``"; "``; header
    names containing ``_`` are dropped so they cannot pose as ``-`` ones),
    ``SERVER_NAME``/``SERVER_PORT``, ``REMOTE_ADDR``/``REMOTE_PORT``,
    ``wsgi.url_scheme``, ``wsgi.input_terminated = True`` (reading
    ``wsgi.input`` to EOF is safe even without ``Content-Length``), and
    ``asgi.scope`` (the ASGI scope itself).

    Under a :class:`~trichannels.routing.URLRouter` the wrapper matches as a
    *prefix* (like a nested router): ``path("legacy/", WsgiToAsgi(app))``
    mounts ``app`` at ``/legacy`` with ``SCRIPT_NAME="/legacy"``, and
    ``path("", WsgiToAsgi(app))`` is a catch-all.

    Response: ``start_response(status, headers, exc_info=None)`` is checked
    when called; the status line and headers are sent with the first
    non-empty body chunk (so a later ``start_response(..., exc_info)`` can
    still replace them, per PEP 3333). With a ``Content-Length`` header the
    body is cut at that length and iteration stops there. If the application
    raises before the response started, the client gets a 500; after, the
    response is aborted. Either way the exception is logged once and
    propagates to the server.

    Args:
        wsgi_app: the WSGI application, ``app(environ, start_response)``.
        limiter: the :class:`anyio.CapacityLimiter` that bounds how many
            requests run at once (each holds one worker thread); ``None`` uses
            anyio's default thread limiter.

    Raises:
        TypeError: ``wsgi_app`` is not callable, or ``limiter`` is neither
            ``None`` nor an :class:`anyio.CapacityLimiter`.
    """

    #: A URLRouter route to this application matches a path prefix.
    _path_routing = True

    def __init__(
        self, wsgi_app: WSGIApp, *, limiter: anyio.CapacityLimiter | None = None
    ) -> None:
        _check_arguments(wsgi_app, limiter)
        self.wsgi_app = wsgi_app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one HTTP request; returns when the response is done and the thread ended.

        Raises:
            ValueError: the scope is not an ``http`` scope.
            UnexpectedMessage: the server sent something other than
                ``http.request`` / ``http.disconnect``.
            Exception: whatever the WSGI application raised.
        """
        if scope.get("type") != "http":
            msg = f"WsgiToAsgi can only serve 'http' scopes, got scope type {scope.get('type')!r}"
            raise ValueError(msg)
        await _WsgiRequest(self, scope, receive, send).run()

    def __repr__(self) -> str:
        return f"WsgiToAsgi({self.wsgi_app!r})"


class _WsgiRequest:
    """One request: a body reader task on the loop, the application in a worker thread.

    State shared between the two sides is only touched from the event loop,
    or from the thread strictly between two ``from_thread.run`` calls, so
    the cross-thread calls order every access.
    """

    def __init__(
        self, wrapper: WsgiToAsgi, scope: Scope, receive: Receive, send: Send
    ) -> None:
        self.wrapper = wrapper
        self.scope = scope
        self.receive = receive
        self.send = send
        self.body_send, self.body_receive = anyio.create_memory_object_stream[bytes](
            _BODY_BUFFER_CHUNKS
        )
        self.body_complete = False
        self.disconnected = False
        # Set by start_response (in the thread).
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        # Set when http.response.start goes out (on the loop).
        self.response_started = False
        self.remaining: int | None = None  # bytes still allowed by Content-Length
        self.error: Exception | None = None

    # -- the loop side -----------------------------------------------------------

    async def run(self) -> None:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read_request)
                try:
                    await anyio.to_thread.run_sync(
                        self._run_in_thread, limiter=self.wrapper.limiter
                    )
                except RequestAborted as exc:
                    if not self.disconnected:  # not ours to swallow
                        self._record(exc)
                except Exception as exc:
                    self._record(exc)
                tg.cancel_scope.cancel()
        finally:
            self.body_send.close()
            self.body_receive.close()
        if self.error is None:
            return
        if not self.response_started and not self.disconnected:
            with anyio.CancelScope(shield=True):
                await self._send_server_error()
        raise self.error

    def _record(self, exc: Exception) -> None:
        if self.error is not None:
            return
        self.error = exc
        logger.error(
            "Error serving WSGI application %r for %s %s",
            self.wrapper.wsgi_app,
            self.scope.get("method"),
            self.scope.get("path"),
            exc_info=exc,
        )

    async def _send_server_error(self) -> None:
        try:
            await self.send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", str(len(_SERVER_ERROR)).encode("ascii")),
                    ],
                }
            )
            await self.send({"type": "http.response.body", "body": _SERVER_ERROR})
        except Exception:
            # The server could not take it; the original error matters more.
            logger.debug("could not send the 500 response", exc_info=True)
            await anyio.lowlevel.checkpoint()

    async def _read_request(self) -> None:
        try:
            await self._read_body(self.body_send)
            while not self.disconnected:
                await self._receive_one()
        except Exception as exc:
            self._record(exc)
            self.disconnected = True
            await anyio.lowlevel.checkpoint()

    async def _read_body(self, body: MemoryObjectSendStream[bytes]) -> None:
        await anyio.lowlevel.checkpoint()
        with body:
            while not self.disconnected:
                message = await self._receive_one()
                if message is None:
                    return
                chunk = message.get("body", b"")
                if not isinstance(chunk, bytes | bytearray | memoryview):
                    msg = f"http.request 'body' must be bytes, got {chunk!r}"
                    raise TypeError(msg)
                if chunk:
                    try:
                        await body.send(bytes(chunk))
                    except anyio.BrokenResourceError:
                        pass  # the application finished without reading: discard
                if not message.get("more_body", False):
                    self.body_complete = True
                    return

    async def _receive_one(self) -> Message | None:
        """Receive one event; ``None`` means the client disconnected."""
        message = await self.receive()
        message_type = message.get("type")
        if message_type == "http.disconnect":
            self.disconnected = True
            return None
        if message_type == "http.request":
            return message
        raise UnexpectedMessage(
            message_type,
            "a WSGI request only receives 'http.request' and 'http.disconnect'",
        )

    async def _next_body_chunk(self) -> bytes | None:
        try:
            return await self.body_receive.receive()
        except anyio.EndOfStream:
            pass  # receive() checkpointed before it found the stream closed
        if self.body_complete:
            return None  # noqa: ASYNC910 - receive() checkpointed before raising
        msg = "the client disconnected before sending the whole request body"
        raise RequestAborted(msg)

    async def _send_chunk(self, data: bytes) -> _SendResult:
        if self.disconnected:
            await anyio.lowlevel.checkpoint()
            return "disconnected"
        if not self.response_started:
            await self._start_response()
        if self.remaining is not None:
            if len(data) >= self.remaining:
                data = data[: self.remaining]
                self.remaining = 0
                await self.send(
                    {"type": "http.response.body", "body": data, "more_body": True}
                )
                return "complete"
            self.remaining -= len(data)
        await self.send({"type": "http.response.body", "body": data, "more_body": True})
        return "sent"

    async def _finish(self) -> None:
        if self.disconnected:
            await anyio.lowlevel.checkpoint()
            return
        if not self.response_started:
            if self.status is None:
                msg = "the WSGI application returned without calling start_response()"
                raise RuntimeError(msg)
            await self._start_response()
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _start_response(self) -> None:
        assert self.status is not None
        for name, value in self.headers:
            if name == b"content-length":
                try:
                    self.remaining = int(value)
                except ValueError:
                    self.remaining = None
        self.response_started = True
        await self.send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": self.headers,
            }
        )

    # -- the thread side ---------------------------------------------------------

    def _run_in_thread(self) -> None:
        environ = self._build_environ()
        result: Iterable[object] = self.wrapper.wsgi_app(
            environ, self._start_response_callable
        )
        try:
            for chunk in result:
                if not isinstance(chunk, bytes):
                    msg = f"the WSGI response iterable must yield bytes, got {chunk!r}"
                    raise TypeError(msg)
                if chunk and anyio.from_thread.run(self._send_chunk, chunk) != "sent":
                    break
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        anyio.from_thread.run(self._finish)

    def _start_response_callable(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = None,
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.response_started:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # break the traceback cycle (PEP 3333)
        elif self.status is not None:
            msg = "start_response() called a second time without exc_info"
            raise RuntimeError(msg)
        self.status = _parse_status(status)
        self.headers = _encode_headers(headers)
        return self._write

    def _write(self, data: object) -> None:
        if self.status is None:
            msg = "write() called before start_response()"
            raise RuntimeError(msg)
        if not isinstance(data, bytes):
            msg = f"write() needs bytes, got {data!r}"
            raise TypeError(msg)
        if not data:
            return
        if self.remaining == 0 and self.response_started:
            msg = (
                f"write() of {len(data)} bytes goes past the response's Content-Length"
            )
            raise ValueError(msg)
        if anyio.from_thread.run(self._send_chunk, data) == "disconnected":
            msg = "the client disconnected; write() cannot send the response"
            raise RequestAborted(msg)

    def _build_environ(self) -> dict[str, Any]:
        scope = self.scope
        root_path: str = scope.get("root_path", "") or ""
        path: str = scope["path"]
        if root_path and (
            path == root_path or path.startswith(root_path.rstrip("/") + "/")
        ):
            path = path[len(root_path.rstrip("/")) :]
        query: bytes = scope.get("query_string", b"") or b""
        scheme: str = scope.get("scheme") or "http"
        environ: dict[str, Any] = {
            "REQUEST_METHOD": scope["method"],
            "SCRIPT_NAME": _latin1(root_path.rstrip("/")),
            "PATH_INFO": _latin1(path),
            "QUERY_STRING": query.decode("latin-1"),
            "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": scheme,
            "wsgi.input": _WsgiInput(self._next_body_chunk),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            "asgi.scope": scope,
        }
        joined: dict[str, list[str]] = {}
        for raw_name, raw_value in scope.get("headers", ()):
            name = raw_name.decode("latin-1").lower()
            if "_" in name:
                continue
            joined.setdefault(name, []).append(raw_value.decode("latin-1"))
        for name, values in joined.items():
            value = ("; " if name == "cookie" else ", ").join(values)
            if name == "content-type":
                environ["CONTENT_TYPE"] = value
            elif name == "content-length":
                environ["CONTENT_LENGTH"] = value
            else:
                environ["HTTP_" + name.upper().replace("-", "_")] = value
        server = scope.get("server")
        if server is not None and server[1] is not None:
            environ["SERVER_NAME"], environ["SERVER_PORT"] = (
                str(server[0]),
                str(server[1]),
            )
        else:
            host = environ.get("HTTP_HOST", "localhost").rpartition(":")
            environ["SERVER_NAME"] = host[0] or host[2]
            default_port = "443" if scheme == "https" else "80"
            environ["SERVER_PORT"] = (
                host[2] if host[0] and host[2].isdigit() else default_port
            )
        client = scope.get("client")
        if client is not None:
            environ["REMOTE_ADDR"] = str(client[0])
            environ["REMOTE_PORT"] = str(client[1])
        return environ


def _check_arguments(wsgi_app: object, limiter: object) -> None:
    if not callable(wsgi_app):
        msg = f"wsgi_app must be a callable WSGI application, got {wsgi_app!r}"
        raise TypeError(msg)
    if limiter is not None and not isinstance(limiter, anyio.CapacityLimiter):
        msg = f"limiter must be an anyio.CapacityLimiter or None, got {limiter!r}"
        raise TypeError(msg)


def _latin1(text: str) -> str:
    """PEP 3333 "bytes as str": the UTF-8 bytes of ``text`` decoded as latin-1."""
    return text.encode("utf-8").decode("latin-1")


def _parse_status(status: object) -> int:
    if not isinstance(status, str):
        msg = f"start_response() status must be a str such as '200 OK', got {status!r}"
        raise TypeError(msg)
    match = _STATUS.fullmatch(status)
    if match is None:
        msg = (
            "start_response() status must be a 3-digit code (100-599), a space and a "
            f"reason phrase, such as '200 OK', got {status!r}"
        )
        raise ValueError(msg)
    return int(match[1])


def _encode_headers(headers: object) -> list[tuple[bytes, bytes]]:
    if not isinstance(headers, list):
        msg = f"start_response() headers must be a list of (str, str) tuples, got {headers!r}"
        raise TypeError(msg)
    encoded: list[tuple[bytes, bytes]] = []
    for header in headers:
        if (
            not isinstance(header, tuple | list)
            or len(header) != 2
            or not all(isinstance(part, str) for part in header)
        ):
            msg = f"start_response() headers must be (str, str) tuples, got {header!r}"
            raise TypeError(msg)
        name, value = header
        if _TOKEN.fullmatch(name) is None:
            msg = f"start_response() header name {name!r} is not a valid HTTP token"
            raise ValueError(msg)
        if name.lower() in _HOP_BY_HOP:
            msg = f"start_response() header {name!r} is hop-by-hop, which WSGI applications may not set"
            raise ValueError(msg)
        if "\r" in value or "\n" in value or "\0" in value:
            msg = f"start_response() header {name!r} has a value with CR, LF or NUL: {value!r}"
            raise ValueError(msg)
        try:
            encoded_value = value.encode("latin-1")
        except UnicodeEncodeError:
            msg = f"start_response() header {name!r} has a value that is not latin-1: {value!r}"
            raise ValueError(msg) from None
        encoded.append((name.lower().encode("ascii"), encoded_value))
    return encoded


class _WsgiInput:
    """``wsgi.input``: a read-only binary stream fed from the event loop chunk by chunk.

    Each refill is one ``anyio.from_thread.run`` call, so the stream may only
    be read from the worker thread running the application.
    """

    def __init__(
        self, next_chunk: Callable[[], Coroutine[Any, Any, bytes | None]]
    ) -> None:
        self._next_chunk = next_chunk
        self._buffer = bytearray()
        self._eof = False

    def _fill(self) -> bool:
        """Append the next chunk to the buffer; ``False`` at end of body."""
        if self._eof:
            return False
        chunk = anyio.from_thread.run(self._next_chunk)
        if chunk is None:
            self._eof = True
            return False
        self._buffer += chunk
        return True

    def _take(self, size: int) -> bytes:
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def read(self, size: int | None = -1) -> bytes:
        """Read up to ``size`` bytes (all that is left if ``size`` is ``None`` or negative)."""
        if size is None or size < 0:
            while self._fill():
                pass
            return self._take(len(self._buffer))
        while len(self._buffer) < size and self._fill():
            pass
        return self._take(size)

    def readline(self, size: int | None = -1) -> bytes:
        """Read one line, including its ``\\n``, of at most ``size`` bytes if given."""
        limit = -1 if size is None else size
        scanned = 0
        newline = self._buffer.find(b"\n")
        while newline < 0:
            scanned = len(self._buffer)
            if (0 <= limit <= scanned) or not self._fill():
                break
            newline = self._buffer.find(b"\n", scanned)
        end = newline + 1 if newline >= 0 else len(self._buffer)
        if limit >= 0:
            end = min(end, limit)
        return self._take(end)

    def readlines(self, hint: int = -1) -> list[bytes]:
        """Read lines until end of body, or until about ``hint`` bytes were read."""
        lines: list[bytes] = []
        total = 0
        for line in self:
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line
