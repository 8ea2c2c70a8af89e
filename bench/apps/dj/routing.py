from django.urls import path, re_path

from . import consumers

websocket_urlpatterns = [
    path("echo", consumers.EchoConsumer.as_asgi()),
    re_path(r"^chat/(?P<room_name>\w+)$", consumers.ChatConsumer.as_asgi()),
]
http_urlpatterns = [
    re_path(r"", consumers.HelloConsumer.as_asgi()),
]
