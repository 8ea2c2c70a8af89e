"""Testing helpers: communicators, the channel-layer conformance battery, live servers."""

from __future__ import annotations

from trichannels.testing._communicators import (
    ApplicationCommunicator as ApplicationCommunicator,
    HttpCommunicator as HttpCommunicator,
    WebsocketCommunicator as WebsocketCommunicator,
)
from trichannels.testing._layers import (
    LayerCheckReport as LayerCheckReport,
    check_channel_layer as check_channel_layer,
)
from trichannels.testing._live import (
    LiveServer as LiveServer,
    live_server as live_server,
    open_websocket as open_websocket,
)

__all__ = [
    "ApplicationCommunicator",
    "HttpCommunicator",
    "LayerCheckReport",
    "LiveServer",
    "WebsocketCommunicator",
    "check_channel_layer",
    "live_server",
    "open_websocket",
]


def _claim_exports() -> None:
    """Present the re-exported names as living here (docs, reprs, pickling paths)."""
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("trichannels.testing._"):
            obj.__module__ = __name__


_claim_exports()
