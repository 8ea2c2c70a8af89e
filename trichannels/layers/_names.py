"""Channel and group name rules, shared by every channel layer.

The rules are Channels' (``channels/layers.py``), made strict:

- a name is a ``str`` of 1 to 99 characters (Channels: ``len(name) < 100``);
- it uses only ASCII letters, ASCII digits, ``-``, ``_`` and ``.`` — checked
  with ``re.fullmatch`` over explicit ASCII classes, so the trailing ``"\\n"``
  and Unicode digits or letters that Channels' regexes let through are refused;
- a *channel* name may contain one ``!``, with at least one character before
  it, marking a process-specific channel (``"specific.abc!xyz"``); the part up
  to and including the ``!`` is the non-local part;
- a *group* name may not contain ``!``.

Every check raises :class:`~trichannels.exceptions.InvalidChannelName` or
:class:`~trichannels.exceptions.InvalidGroupName` with the rule that was
broken as ``reason``.
"""

from __future__ import annotations

import re
import secrets

from trichannels.exceptions import InvalidChannelName, InvalidGroupName

__all__ = [
    "MAX_NAME_LENGTH",
    "new_channel_name",
    "non_local_name",
    "require_valid_channel_name",
    "require_valid_group_name",
]

MAX_NAME_LENGTH = 100
"""Names must be strictly shorter than this (Channels' ``MAX_NAME_LENGTH``)."""

_ALLOWED = "ASCII letters, digits, '-', '_' and '.'"
_CHANNEL_RE = re.compile(r"[A-Za-z0-9_.\-]+(?:![A-Za-z0-9_.\-]*)?")
_GROUP_RE = re.compile(r"[A-Za-z0-9_.\-]+")
_ALLOWED_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
)


def _reason(name: object, *, channel: bool) -> str | None:
    """Return the first rule ``name`` breaks, or None if it is valid."""
    if not isinstance(name, str):
        return f"must be a str, not {type(name).__name__}"
    if not name:
        return "must not be empty"
    if len(name) >= MAX_NAME_LENGTH:
        return f"must be shorter than {MAX_NAME_LENGTH} characters, not {len(name)}"
    if (_CHANNEL_RE if channel else _GROUP_RE).fullmatch(name):
        return None
    bangs = 0
    for index, char in enumerate(name):
        if char == "!":
            if not channel:
                return (
                    f"contains '!' at index {index}, which only channel names may use"
                )
            if index == 0:
                return "must have at least one character before '!'"
            bangs += 1
            if bangs > 1:
                return f"contains a second '!' at index {index}; at most one is allowed"
        elif char not in _ALLOWED_CHARS:
            extra = " (plus one '!')" if channel else ""
            return f"contains {char!r} at index {index}; only {_ALLOWED}{extra} are allowed"
    return None  # pragma: no cover - the regex and the scan agree


_recent_valid: dict[str, None] = {}
"""Channel names that passed recently: a bounded cache, cleared when it fills."""
_RECENT_MAX = 4096


def require_valid_channel_name(name: object) -> str:
    """Return ``name`` if it is a valid channel name, else raise.

    Full process-specific names (``"specific.abc!xyz"``) are valid for
    ``send`` and ``receive`` alike, as in Channels 4, whose consumers receive
    on the full name returned by ``new_channel()``.

    Raises:
        InvalidChannelName: naming the value and the rule it breaks.
    """
    if type(name) is str:
        if name in _recent_valid:
            return name
        if 0 < len(name) < MAX_NAME_LENGTH and _CHANNEL_RE.fullmatch(name):
            if len(_recent_valid) >= _RECENT_MAX:
                _recent_valid.clear()
            _recent_valid[name] = None
            return name
    reason = _reason(name, channel=True)
    if reason is None:  # pragma: no cover - fast path and scan agree
        assert isinstance(name, str)
        return name
    raise InvalidChannelName(name, reason)


def require_valid_group_name(name: object) -> str:
    """Return ``name`` if it is a valid group name, else raise.

    Raises:
        InvalidGroupName: naming the value and the rule it breaks.
    """
    if (
        type(name) is str
        and 0 < len(name) < MAX_NAME_LENGTH
        and _GROUP_RE.fullmatch(name)
    ):
        return name
    reason = _reason(name, channel=False)
    if reason is None:  # pragma: no cover - fast path and scan agree
        assert isinstance(name, str)
        return name
    raise InvalidGroupName(name, reason)


def non_local_name(name: str) -> str:
    """The part of ``name`` up to and including ``!``, or all of it if it has none."""
    bang = name.find("!")
    return name if bang < 0 else name[: bang + 1]


def new_channel_name(prefix: str, middle: str) -> str:
    """Build a fresh process-specific channel name ``"{prefix}.{middle}!{token}"``.

    A trailing ``.`` on ``prefix`` is not doubled (Channels' in-memory layer
    returns ``"specific..inmemory!..."``); an empty prefix gives
    ``"{middle}!{token}"``. The token is 16 URL-safe random characters.

    Raises:
        InvalidChannelName: if ``prefix`` or ``middle`` is not made of allowed
            characters, or the result would be too long.
    """
    if not isinstance(prefix, str):
        raise InvalidChannelName(
            prefix, f"prefix must be a str, not {type(prefix).__name__}"
        )
    if prefix and not _GROUP_RE.fullmatch(prefix):
        raise InvalidChannelName(prefix, f"prefix may contain only {_ALLOWED}")
    head = prefix.rstrip(".")
    base = f"{head}.{middle}!" if head else f"{middle}!"
    return require_valid_channel_name(base + secrets.token_urlsafe(12))
