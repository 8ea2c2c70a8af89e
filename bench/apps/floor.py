"""The floor: bare ASGI 3 applications doing each benchmark's job with no framework.

Served by the same servers as the framework targets (Hypercorn's trio worker and
uvicorn), they give the limit a framework can approach but not pass on that server.

Routes (same paths as ``tri.py`` and the Django project):

* ``websocket /echo``       -- echo every text/bytes frame back.
* ``websocket /chat/<room>``-- the tutorial chat: parse ``{"message": m}`` once, serialise
  ``{"message": m}`` once and send it to every member of the room (in-process, no layer).
* ``http *``                -- a small fixed ``200 text/plain`` response.

Only the standard library: no anyio, no trio, no asyncio imports, so the same function
runs unchanged on both servers.
"""

from __future__ import annotations

import json

_BODY = b"Hello, world!\n"
_HEADERS = [
    (b"content-type", b"text/plain"),
    (b"content-length", str(len(_BODY)).encode()),
]

# room name -> {connection id: ASGI send callable}
_ROOMS: dict[str, dict[int, object]] = {}


async def _lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _http(receive, send):
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})


async def _echo(receive, send):
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "websocket.receive":
            text = message.get("text")
            if text is not None:
                await send({"type": "websocket.send", "text": text})
            else:
                await send({"type": "websocket.send", "bytes": message.get("bytes")})
        elif kind == "websocket.disconnect":
            return


async def _chat(room_name, receive, send):
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    room = _ROOMS.setdefault(room_name, {})
    me = id(send)
    room[me] = send
    try:
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                text = json.loads(message.get("text") or "{}").get("message", "")
                event = {
                    "type": "websocket.send",
                    "text": json.dumps({"message": text}),
                }
                for member_send in list(room.values()):
                    try:
                        await member_send(event)
                    except Exception:  # a member that is going away
                        pass
            elif kind == "websocket.disconnect":
                return
    finally:
        room.pop(me, None)


async def application(scope, receive, send):
    kind = scope["type"]
    if kind == "http":
        await _http(receive, send)
    elif kind == "websocket":
        path = scope["path"]
        if path.startswith("/chat/"):
            await _chat(path[len("/chat/") :].strip("/"), receive, send)
        else:
            await _echo(receive, send)
    elif kind == "lifespan":
        await _lifespan(receive, send)
