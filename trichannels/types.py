"""ASGI 3 typing used across trichannels.

An ASGI application is ``async def app(scope, receive, send) -> None``. The
scope is a mapping describing one connection; ``receive`` waits for the next
event from the server; ``send`` hands an event to the server. These aliases
are deliberately loose (plain mappings), as the ASGI specification is: a
consumer may receive extension keys the spec does not name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, TypeAlias

__all__ = [
    "ASGIApp",
    "Message",
    "Receive",
    "Scope",
    "Send",
]

Scope: TypeAlias = MutableMapping[str, Any]
"""The connection scope: ``type``, ``path``, ``headers``, ... (ASGI 3)."""

Message: TypeAlias = Mapping[str, Any]
"""One ASGI event or channel-layer message; always carries a ``type`` string."""

Receive: TypeAlias = Callable[[], Awaitable[Message]]
"""Waits for and returns the next event from the server (a checkpoint)."""

Send: TypeAlias = Callable[[Message], Awaitable[None]]
"""Hands one event to the server (a checkpoint)."""

ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]
"""An ASGI 3 application: ``await app(scope, receive, send)``."""
