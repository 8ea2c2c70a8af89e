"""Per-event CPU cost of trichannels' consumer path in one process (no sockets).

Usage: python bench/dispatch.py [N] [--backend trio|asyncio]

Drives, through in-memory receive/send, the bare ASGI function doing the same
job (the floor) and the trichannels consumer, and prints CPU microseconds per
operation for each and the difference:

* ws echo: one WebSocket connection, N text frames echoed by an
  ``AsyncWebsocketConsumer``;
* http: N requests, each a fresh application instance answering a small
  response from ``AsyncHttpConsumer.handle``.

trichannels runs twice: as served (``handler_watchdog()`` open, as
``ProtocolTypeRouter``'s lifespan opens it: instances run hosted, without a
task group of their own) and without a lifespan (each instance opens its own
task group), shown as "no lifespan".
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import anyio

from trichannels.consumer import handler_watchdog
from trichannels.generic.http import AsyncHttpConsumer
from trichannels.generic.websocket import AsyncWebsocketConsumer


class Echo(AsyncWebsocketConsumer):
    channel_layer_alias = None

    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=text_data)


class Hello(AsyncHttpConsumer):
    channel_layer_alias = None

    async def handle(self, body):
        await self.send_response(
            200, b"hello", headers=[(b"content-type", b"text/plain")]
        )


async def ws_floor(scope, receive, send):
    while True:
        m = await receive()
        if m["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif m["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": m["text"]})
        else:
            return


async def http_floor(scope, receive, send):
    await receive()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")],
        }
    )
    await send({"type": "http.response.body", "body": b"hello"})


async def run_ws(app: Any, n: int) -> float:
    to_app_s, to_app_r = anyio.create_memory_object_stream[Any](0)
    from_app_s, from_app_r = anyio.create_memory_object_stream[Any](0)
    scope = {"type": "websocket", "path": "/", "headers": [], "subprotocols": []}
    async with anyio.create_task_group() as tg:
        tg.start_soon(app, scope, to_app_r.receive, from_app_s.send)
        await to_app_s.send({"type": "websocket.connect"})
        await from_app_r.receive()
        msg = {"type": "websocket.receive", "text": "x" * 32}
        t0 = time.process_time()
        for _ in range(n):
            await to_app_s.send(msg)
            await from_app_r.receive()
        dt = time.process_time() - t0
        await to_app_s.send({"type": "websocket.disconnect", "code": 1000})
    return dt / n * 1e6


async def run_http(app: Any, n: int) -> float:
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [],
        "query_string": b"",
        "http_version": "1.1",
    }
    request = {"type": "http.request", "body": b"", "more_body": False}
    sent: list[Any] = []

    async def receive():  # noqa: RUF029 - the ASGI interface is async; no server cost here
        return request

    async def send(message):  # noqa: RUF029 - as receive
        sent.append(message)

    t0 = time.process_time()
    for _ in range(n):
        await app(scope, receive, send)
    dt = time.process_time() - t0
    assert len(sent) == 2 * n, len(sent)
    return dt / n * 1e6


async def main(n: int) -> None:
    for name, runner, floor, app in [
        ("ws echo", run_ws, ws_floor, Echo.as_asgi()),
        ("http", run_http, http_floor, Hello.as_asgi()),
    ]:
        f = await runner(floor, n)
        async with handler_watchdog():
            t = await runner(app, n)
        bare = await runner(app, n)
        print(
            f"{name:8} floor {f:6.1f} us/op  trichannels {t:6.1f} us/op  (+{t - f:.1f})"
            f"  no lifespan {bare:6.1f} us/op  (+{bare - f:.1f})"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "n", nargs="?", type=int, default=20000, help="operations per target"
    )
    parser.add_argument("--backend", choices=["trio", "asyncio"], default="trio")
    args = parser.parse_args()
    print(f"backend {args.backend}, {args.n} operations each")
    anyio.run(main, args.n, backend=args.backend)
