"""The chat demo: multi-room chat with nicknames, presence and history.

Run it with ``trichannels demo`` (in-memory layer) or
``trichannels demo --layer redis://127.0.0.1:6379/0`` (several processes share
rooms). The page is plain HTML/CSS/JS served by the same application.

The wire protocol (JSON text frames on ``/ws/chat/<room>/``):

client -> server
    ``{"type": "join", "nick": "ada"}`` first, then ``{"type": "say", "text": "hi"}``.
server -> client
    ``welcome`` (room, nick, history, members), ``message`` (id, nick, text, ts),
    ``history`` (messages learnt from other members), ``joined``/``left`` (nick,
    members), ``error`` (reason).

Presence is built on the channel layer alone, so it works across processes:
a newcomer announces itself to the room's group, every member answers it
directly with its nickname and the history it holds, and leavers announce
that they leave. A process that dies without its members leaving leaves
them counted until the room's group expires (a known limit of the demo).
"""

from __future__ import annotations

from trichannels.demo.app import make_application as make_application

__all__ = ["application", "make_application"]

application = make_application()
"""The demo application with default settings (``trichannels.demo:application``)."""
