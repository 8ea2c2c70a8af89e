"""Generic consumers: :mod:`trichannels.generic.websocket` and :mod:`trichannels.generic.http`.

As in Channels, import the classes from their modules, e.g.
``from trichannels.generic.websocket import AsyncWebsocketConsumer``.
"""

__all__: list[str] = []
