"""Per-message CPU cost of the consumer dispatch path in one process (no sockets).

Usage: python bench/dispatch.py [N]. Drives a bare ASGI echo function (the floor)
and an AsyncWebsocketConsumer echo through in-memory receive/send and prints
CPU microseconds per message for each.
"""

import sys
import time

import trio

from trichannels.generic.websocket import AsyncWebsocketConsumer

N = int(sys.argv[1]) if len(sys.argv) > 1 else 50000


class Echo(AsyncWebsocketConsumer):
    channel_layer_alias = None

    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=text_data)


async def floor_app(scope, receive, send):
    while True:
        m = await receive()
        if m["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif m["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": m["text"]})
        else:
            return


async def run(app):
    to_app_s, to_app_r = trio.open_memory_channel(0)
    from_app_s, from_app_r = trio.open_memory_channel(0)
    async with trio.open_nursery() as n:
        n.start_soon(
            app,
            {"type": "websocket", "path": "/", "headers": [], "subprotocols": []},
            to_app_r.receive,
            from_app_s.send,
        )
        await to_app_s.send({"type": "websocket.connect"})
        await from_app_r.receive()
        msg = {"type": "websocket.receive", "text": "x" * 32}
        t0 = time.process_time()
        for _ in range(N):
            await to_app_s.send(msg)
            await from_app_r.receive()
        dt = time.process_time() - t0
        await to_app_s.send({"type": "websocket.disconnect", "code": 1000})
    return dt / N * 1e6


async def main():
    for name, app in [("floor", floor_app), ("Echo consumer", Echo.as_asgi())]:
        print(f"{name}: {await run(app):.1f} us/msg")


trio.run(main)
