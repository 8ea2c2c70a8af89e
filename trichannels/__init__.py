"""trichannels: Channels-style consumers and channel layers on structured concurrency.

The handful of names most applications import are re-exported here; every
other public name lives in its module (``trichannels.generic.websocket``,
``trichannels.layers``, ``trichannels.testing``, ...), as in Channels.
"""

from trichannels._version import __version__ as __version__
from trichannels.consumer import (
    AsyncConsumer as AsyncConsumer,
    SyncConsumer as SyncConsumer,
)
from trichannels.exceptions import (
    AcceptConnection as AcceptConnection,
    DenyConnection as DenyConnection,
    StopConsumer as StopConsumer,
)
from trichannels.layers import get_channel_layer as get_channel_layer
from trichannels.routing import (
    ChannelNameRouter as ChannelNameRouter,
    ProtocolTypeRouter as ProtocolTypeRouter,
    URLRouter as URLRouter,
    path as path,
    re_path as re_path,
)

__all__ = [
    "AcceptConnection",
    "AsyncConsumer",
    "ChannelNameRouter",
    "DenyConnection",
    "ProtocolTypeRouter",
    "StopConsumer",
    "SyncConsumer",
    "URLRouter",
    "__version__",
    "get_channel_layer",
    "path",
    "re_path",
]
