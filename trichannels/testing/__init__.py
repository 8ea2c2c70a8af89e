"""Testing helpers: communicators, the channel-layer conformance battery, live servers."""

from __future__ import annotations

from trichannels.testing._communicators import (
    ApplicationCommunicator as ApplicationCommunicator,
    HttpCommunicator as HttpCommunicator,
    WebsocketCommunicator as WebsocketCommunicator,
)

__all__ = [
    "ApplicationCommunicator",
    "HttpCommunicator",
    "WebsocketCommunicator",
]
