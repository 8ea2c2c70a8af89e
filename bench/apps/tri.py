"""trichannels applications for the benchmark, written the way our docs tell users to.

Routes (the same paths as ``floor.py`` and the Django project):

* ``websocket /echo``        -- ``AsyncWebsocketConsumer`` echoing every frame.
* ``websocket /chat/<room>`` -- the Channels tutorial chat consumer: ``group_send`` on
  every message, ``chat_message`` sends to the socket.
* ``http *``                 -- ``AsyncHttpConsumer`` with a small fixed response.

``TRI_LAYER`` picks the default channel layer: ``memory`` (default), ``redis``
(``REDIS_URL``, default ``redis://127.0.0.1:6379/0``) or ``none``.  The layers are
opened by ``ProtocolTypeRouter``'s lifespan.
"""

from __future__ import annotations

import json
import os

from trichannels.generic.websocket import AsyncWebsocketConsumer
from trichannels.layers import channel_layers
from trichannels.routing import ProtocolTypeRouter, URLRouter, path

_LAYER = os.environ.get("TRI_LAYER", "memory")
_REDIS = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
if _LAYER == "redis":
    channel_layers.configure({"default": _REDIS})
elif _LAYER == "none":
    channel_layers.configure({})
else:
    channel_layers.configure({"default": "memory://"})


class EchoConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=text_data, bytes_data=bytes_data)


class ChatConsumer(AsyncWebsocketConsumer):
    """The Channels tutorial's chat consumer, unchanged but for the imports."""

    async def connect(self):
        self.room_name = self.scope["url_route"]["kwargs"]["room_name"]
        self.room_group_name = f"chat_{self.room_name}"
        await self.channel_layer.group_add(self.room_group_name, self.channel_name)
        await self.accept()

    async def disconnect(self, close_code):
        await self.channel_layer.group_discard(self.room_group_name, self.channel_name)

    async def receive(self, text_data):
        message = json.loads(text_data)["message"]
        await self.channel_layer.group_send(
            self.room_group_name, {"type": "chat.message", "message": message}
        )

    async def chat_message(self, event):
        await self.send(text_data=json.dumps({"message": event["message"]}))


_mapping = {
    "websocket": URLRouter(
        [
            path("echo", EchoConsumer.as_asgi()),
            path("chat/<str:room_name>", ChatConsumer.as_asgi()),
        ]
    ),
}

try:
    from trichannels.generic.http import AsyncHttpConsumer
except ImportError:  # not landed yet: S5 skips the trichannels targets
    AsyncHttpConsumer = None
else:

    class HelloConsumer(AsyncHttpConsumer):
        async def handle(self, body):
            await self.send_response(
                200, b"Hello, world!\n", headers=[(b"Content-Type", b"text/plain")]
            )

    _mapping["http"] = URLRouter([path("", HelloConsumer.as_asgi())])

HAS_HTTP = AsyncHttpConsumer is not None
application = ProtocolTypeRouter(_mapping)
