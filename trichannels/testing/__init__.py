"""Testing helpers: communicators, the channel-layer conformance battery, live servers."""

from __future__ import annotations

__all__: list[str] = []
