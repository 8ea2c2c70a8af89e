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

__all__ = [
    "ApplicationCommunicator",
    "HttpCommunicator",
    "LayerCheckReport",
    "WebsocketCommunicator",
    "check_channel_layer",
]
