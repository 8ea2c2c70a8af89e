"""The Redis channel layer: Redis streams through coredis, shaped for structured concurrency.

Key schema (``P`` is the ``prefix`` option, default ``"trichannels"``; the
braces are Redis Cluster hash tags, so every key of one channel, process or
group lives in one slot)::

    P:{c:<channel>}         STREAM  a normal (worker) channel; consumer group "w";
                                    PEXPIRE expiry on every send
    P:{c:<channel>}:dead    STREAM  dead letters of an at-least-once channel
    P:{c:<channel>}:h:<process>  LIST  the last batch a process fetched and took
                                    from the channel (at-most-once; see read_take)
    P:{p:<process>}:in      STREAM  the inbox of one layer instance: every "!" channel
                                    it created; fields t (target channels, comma
                                    separated) and m (body); kept alive by its owner
    P:{p:<process>}:full    SET     its "!" channels that are at capacity
    P:{g:<group>}           ZSET    members stored on this host, score = deadline (ms)
    P:{g:<group>}:cap       HASH    capacity of normal-channel members

Every write is one Lua script call (``EVALSHA``) per host; the scripts are
below, with the reasoning for each.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import logging
import math
import random
import re
import socket
import sys
import time
import typing
import uuid
from bisect import bisect_right
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, Final, TypeAlias, cast
from urllib.parse import urlsplit

import anyio
import anyio.abc
import anyio.lowlevel
import attrs
import coredis
import coredis.exceptions
from coredis.commands.constants import CommandName
from coredis.connection import BaseConnection, TCPLocation
from coredis.retry import NoRetryPolicy
from coredis.typing import ResponseType
from sniffio import thread_local as _sniffio_thread

from trichannels.exceptions import (
    ChannelFull,
    InvalidChannelLayerError,
    InvalidChannelName,
    InvalidMessage,
    LayerConnectionError,
    MessageTooLarge,
)
from trichannels.layers._names import new_channel_name
from trichannels.layers.base import (
    BaseChannelLayer,
    ChannelPatterns,
    Delivery,
    LayerStatistics,
    MessageSerializer,
    MsgpackSerializer,
    _check_positive_int,
    _cloner,
    _Event,
    _lowlevel,
    _Waiter,
)
from trichannels.types import Message

if typing.TYPE_CHECKING:
    from cryptography.fernet import MultiFernet

__all__ = ["DeadLetter", "RedisChannelLayer", "RedisLayerStatistics"]

_log = logging.getLogger(__name__)

_Client: TypeAlias = "coredis.Redis[bytes]"
HostsConfig: TypeAlias = (
    str | Sequence[str | tuple[str, int] | Mapping[str, Any]] | Mapping[str, Any] | None
)

_GROUP: Final = b"w"
"""The consumer group of every worker stream."""

_REDIS_ERRORS: Final = (
    coredis.exceptions.RedisError,
    OSError,
    TimeoutError,
    anyio.ClosedResourceError,
    anyio.BrokenResourceError,
)
"""What coredis raises when Redis is unreachable, slow or refuses a command.

The anyio errors escape coredis 6.9 when a command is written to a
connection whose tasks were already cancelled (e.g. while the layer is
closed under an expired deadline).
"""

_PREFIX_RE: Final = re.compile(r"[A-Za-z0-9_.\-]{1,64}")

# --------------------------------------------------------------------------- Lua scripts

_SEND_MANY: Final = """
-- Queue one message per KEYS[i]. ARGV[1] = expiry (ms); then 4 ARGV per
-- message: kind ('n' normal channel, 'i' inbox, 'r' requeue), capacity,
-- target channel (inbox only), body. Returns one status per message
-- (1 queued, 0 channel full, -1 no such inbox, -2 inbox full) followed by
-- the number of entries
-- trimmed because they outlived expiry. Expiry, the capacity check, the
-- append and the TTL are one atomic step, so capacity cannot be overshot.
local expiry = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
local expired = 0
for i = 1, #KEYS do
  local key = KEYS[i]
  local base = 1 + (i - 1) * 4
  local kind = ARGV[base + 1]
  local cap = tonumber(ARGV[base + 2])
  local target = ARGV[base + 3]
  local status = nil
  if redis.call('EXISTS', key) == 0 then
    if kind == 'i' then
      status = -1
    else
      redis.call('XGROUP', 'CREATE', key, 'w', '0', 'MKSTREAM')
    end
  else
    expired = expired + redis.call('XTRIM', key, 'MINID', now - expiry)
  end
  if status == nil then
    if kind ~= 'r' and redis.call('XLEN', key) >= cap then
      if kind == 'i' then status = -2 else status = 0 end
    elseif kind == 'i' then
      if redis.call('SISMEMBER', string.sub(key, 1, -3) .. 'full', target) == 1 then
        status = 0
      else
        redis.call('XADD', key, '*', 't', target, 'm', ARGV[base + 4])
        status = 1
      end
    else
      redis.call('XADD', key, '*', 'm', ARGV[base + 4])
      redis.call('PEXPIRE', key, expiry)
      status = 1
    end
  end
  out[i] = status
end
out[#KEYS + 1] = expired
return out
"""

_GROUP_SEND_MANY: Final = """
-- Fan one body per group out to every member stored on this host.
-- KEYS: per group, its member zset and its capacity hash. ARGV[1] = key
-- prefix, ARGV[2] = expiry (ms), ARGV[3] = inbox capacity, ARGV[4] =
-- default capacity, ARGV[5] = the sending process ('' for none), ARGV[5 + g]
-- = body for group g. Members of one process share one inbox entry (t =
-- comma-separated targets); members of the sending process are returned
-- instead, for it to deliver itself. Full or vanished destinations are
-- skipped and counted, never raised. Returns {copies queued, copies
-- dropped, entries expired, then per group: n, n sender-local members}.
local prefix = ARGV[1]
local expiry = tonumber(ARGV[2])
local icap = tonumber(ARGV[3])
local dcap = tonumber(ARGV[4])
local me = ARGV[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local sent, dropped, expired = 0, 0, 0
local mine = {}
for g = 1, #KEYS / 2 do
  local gkey = KEYS[2 * g - 1]
  local ckey = KEYS[2 * g]
  local body = ARGV[5 + g]
  local stale = redis.call('ZRANGEBYSCORE', gkey, '-inf', now)
  if #stale > 0 then
    redis.call('ZREMRANGEBYSCORE', gkey, '-inf', now)
    for i = 1, #stale, 1000 do
      redis.call('HDEL', ckey, unpack(stale, i, math.min(i + 999, #stale)))
    end
  end
  local inboxes = {}
  local order = {}
  for _, m in ipairs(redis.call('ZRANGE', gkey, 0, -1)) do
    local bang = string.find(m, '!', 1, true)
    if bang then
      local p = string.match(string.sub(m, 1, bang - 1), '([^.]*)$')
      local list = inboxes[p]
      if list == nil then
        list = {}
        inboxes[p] = list
        order[#order + 1] = p
      end
      list[#list + 1] = m
    else
      local key = prefix .. ':{c:' .. m .. '}'
      local cap = tonumber(redis.call('HGET', ckey, m)) or dcap
      if redis.call('EXISTS', key) == 0 then
        redis.call('XGROUP', 'CREATE', key, 'w', '0', 'MKSTREAM')
      else
        expired = expired + redis.call('XTRIM', key, 'MINID', now - expiry)
      end
      if redis.call('XLEN', key) >= cap then
        dropped = dropped + 1
      else
        redis.call('XADD', key, '*', 'm', body)
        redis.call('PEXPIRE', key, expiry)
        sent = sent + 1
      end
    end
  end
  local own = inboxes[me] or {}
  mine[#mine + 1] = #own
  for _, target in ipairs(own) do mine[#mine + 1] = target end
  inboxes[me] = nil
  for _, p in ipairs(order) do
    local key = prefix .. ':{p:' .. p .. '}:in'
    local targets = inboxes[p]
    if targets == nil then
      -- the sender's own members: returned below
    elseif redis.call('EXISTS', key) == 0 then
      dropped = dropped + #targets
    else
      expired = expired + redis.call('XTRIM', key, 'MINID', now - expiry)
      if redis.call('XLEN', key) >= icap then
        dropped = dropped + #targets
      else
        local fkey = prefix .. ':{p:' .. p .. '}:full'
        local ok = {}
        for _, target in ipairs(targets) do
          if redis.call('SISMEMBER', fkey, target) == 1 then
            dropped = dropped + 1
          else
            ok[#ok + 1] = target
          end
        end
        if #ok > 0 then
          redis.call('XADD', key, '*', 't', table.concat(ok, ','), 'm', body)
          sent = sent + #ok
        end
      end
    end
  end
end
local out = {sent, dropped, expired}
for _, v in ipairs(mine) do out[#out + 1] = v end
return out
"""

_GROUP_ADD: Final = """
-- KEYS[1] group zset, KEYS[2] capacity hash; ARGV = channel, group expiry
-- (ms), capacity ('' for process-local channels). The score is the deadline.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return 1
"""

_GROUP_DISCARD: Final = """
redis.call('HDEL', KEYS[2], ARGV[1])
return redis.call('ZREM', KEYS[1], ARGV[1])
"""

_ENSURE_GROUP: Final = """
-- Make sure the worker stream KEYS[1] and its consumer group exist.
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[1], 'w', '0', 'MKSTREAM')
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  return 1
end
redis.pcall('XGROUP', 'CREATE', KEYS[1], 'w', '0')
return 0
"""

_ACK: Final = """
-- Acknowledge and delete entries ARGV of worker stream KEYS[1] (idempotent).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('XACK', KEYS[1], 'w', unpack(ARGV))
return redis.call('XDEL', KEYS[1], unpack(ARGV))
"""

_TAKE: Final = """
-- At-most-once hand-over: acknowledge and delete the entries ARGV[2..] of
-- worker stream KEYS[1] that consumer ARGV[1] still owns. Per entry:
-- 1 = taken now, 0 = no longer pending (acknowledged already), -1 = owned by
-- another consumer (claimed after visibility_timeout: it is theirs now).
local out = {}
if redis.call('EXISTS', KEYS[1]) == 0 then
  for i = 2, #ARGV do out[#out + 1] = 0 end
  return out
end
for i = 2, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], 'w', ARGV[i], ARGV[i], 1)
  if p[1] == nil then
    out[#out + 1] = 0
  elseif p[1][2] == ARGV[1] then
    redis.call('XACK', KEYS[1], 'w', ARGV[i])
    redis.call('XDEL', KEYS[1], ARGV[i])
    out[#out + 1] = 1
  else
    out[#out + 1] = -1
  end
end
return out
"""

_READ_TAKE: Final = """
-- At-most-once fetch in one step: read up to ARGV[2] new entries of worker
-- stream KEYS[1] for consumer ARGV[1] and acknowledge and delete them. The
-- batch is also kept in the consumer's hand-over list KEYS[2] (ARGV[3] =
-- token of this call, then id, body, ...) until its next call, so that a
-- reply lost with the connection can be recovered. Returns {{id, body}...}.
redis.call('DEL', KEYS[2])
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local res = redis.pcall('XREADGROUP', 'GROUP', 'w', ARGV[1], 'COUNT', ARGV[2],
  'STREAMS', KEYS[1], '>')
if not res or res['err'] then return {} end
local out = {}
local saved = {ARGV[3]}
for _, e in ipairs(res[1][2]) do
  local id = e[1]
  local fields = e[2]
  local body = ''
  for i = 1, #fields, 2 do
    if fields[i] == 'm' then body = fields[i + 1] end
  end
  redis.call('XACK', KEYS[1], 'w', id)
  redis.call('XDEL', KEYS[1], id)
  out[#out + 1] = {id, body}
  saved[#saved + 1] = id
  saved[#saved + 1] = body
end
if #out > 0 then
  redis.call('RPUSH', KEYS[2], unpack(saved))
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
return out
"""

_CLAIM: Final = """
-- Take over entries of worker stream KEYS[1] idle for ARGV[2] ms (their
-- consumer died or stopped renewing), at most ARGV[3] of them, for consumer
-- ARGV[1]. An entry whose delivery count would exceed ARGV[4] (0 = no limit)
-- goes to the dead-letter stream KEYS[2] instead. Returns
-- {{id, body, deliveries}..., dead-lettered count}.
if redis.call('EXISTS', KEYS[1]) == 0 then return {{}, 0} end
local max = tonumber(ARGV[4])
local res = redis.call('XAUTOCLAIM', KEYS[1], 'w', ARGV[1], ARGV[2], '0-0', 'COUNT', ARGV[3])
local out = {}
local dead = 0
for _, e in ipairs(res[2]) do
  local id = e[1]
  local fields = e[2]
  if fields then
    local body = fields[2]
    local p = redis.call('XPENDING', KEYS[1], 'w', id, id, 1)
    local n = 1
    if p[1] then n = tonumber(p[1][4]) end
    if max > 0 and n > max then
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'm', body, 'id', id, 'deliveries', n - 1)
      redis.call('PEXPIRE', KEYS[2], ARGV[6])
      redis.call('XACK', KEYS[1], 'w', id)
      redis.call('XDEL', KEYS[1], id)
      dead = dead + 1
    else
      out[#out + 1] = {id, body, n}
    end
  end
end
return {out, dead}
"""

_RENEW: Final = """
-- Reset the idle time of entries ARGV[2..] that consumer ARGV[1] still owns
-- (never steal one back). Returns the ids it no longer owns.
if redis.call('EXISTS', KEYS[1]) == 0 then
  local lost = {}
  for i = 2, #ARGV do lost[#lost + 1] = ARGV[i] end
  return lost
end
local lost = {}
for i = 2, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], 'w', ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[1] then
    redis.call('XCLAIM', KEYS[1], 'w', ARGV[1], 0, ARGV[i], 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
"""

_KEEPALIVE: Final = """
-- Keep the inbox KEYS[1] (and its full-flag set KEYS[2]) alive for ARGV[1]
-- ms; recreate it empty if it vanished. Returns 1 if it was recreated.
local created = 0
if redis.call('EXISTS', KEYS[1]) == 0 then
  local id = redis.call('XADD', KEYS[1], '*', 't', '', 'm', '')
  redis.call('XDEL', KEYS[1], id)
  created = 1
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[1]) end
return created
"""

_FLAGS: Final = """
-- Set (ARGV[3..2+n]) and clear (the rest) "!" channels in the full set KEYS[1].
local n = tonumber(ARGV[2])
for i = 3, 2 + n do redis.call('SADD', KEYS[1], ARGV[i]) end
for i = 3 + n, #ARGV do redis.call('SREM', KEYS[1], ARGV[i]) end
if n > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return 1
"""

_FLUSH: Final = """
-- Empty inboxes in place (their owners are alive and keep reading them) and
-- unlink every other key in ARGV.
local n = 0
for _, key in ipairs(ARGV) do
  if string.sub(key, -3) == ':in' and redis.call('TYPE', key)['ok'] == 'stream' then
    redis.call('XTRIM', key, 'MAXLEN', 0)
  else
    n = n + redis.call('UNLINK', key)
  end
end
return n
"""

_MARK: Final = """
-- Add and delete an empty entry in the inbox KEYS[1]; its id is newer than
-- every entry sent so far (flush() drops anything up to it).
local id = redis.call('XADD', KEYS[1], '*', 't', '', 'm', '')
redis.call('XDEL', KEYS[1], id)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return id
"""

_TIME: Final = "return redis.call('TIME')"


@attrs.frozen
class _Script:
    text: str
    sha: str = attrs.field(init=False)

    @sha.default
    def _sha(self) -> str:
        return hashlib.sha1(self.text.encode(), usedforsecurity=False).hexdigest()


_SCRIPTS: Final = {
    name: _Script(text)
    for name, text in {
        "send_many": _SEND_MANY,
        "group_send_many": _GROUP_SEND_MANY,
        "group_add": _GROUP_ADD,
        "group_discard": _GROUP_DISCARD,
        "ensure_group": _ENSURE_GROUP,
        "ack": _ACK,
        "take": _TAKE,
        "read_take": _READ_TAKE,
        "claim": _CLAIM,
        "renew": _RENEW,
        "keepalive": _KEEPALIVE,
        "flags": _FLAGS,
        "flush": _FLUSH,
        "mark": _MARK,
        "time": _TIME,
    }.items()
}

# --------------------------------------------------------------------------- records


@attrs.frozen
class DeadLetter:
    """A message that exhausted ``max_deliveries`` on an at-least-once channel.

    Attributes:
        message: the message, decoded (``None`` if it could not be decoded).
        entry_id: the stream entry id it had on the channel.
        deliveries: how many times it was delivered before being given up.
    """

    message: dict[str, Any] | None
    entry_id: str
    deliveries: int


@attrs.frozen
class RedisLayerStatistics:
    """Counters specific to :class:`RedisChannelLayer` (per layer object).

    Attributes:
        reconnects: times a reader re-established its Redis connection after losing it.
        rejected: bodies refused because they failed decryption or decoding (never delivered).
        local_overflow: copies dropped because a ``!`` channel's local buffer was full.
        requeued: worker-channel messages handed back to Redis because their receiver left.
        dead_lettered: at-least-once messages this process moved to a dead-letter stream.
        connected: whether every reader currently has a working connection.
    """

    reconnects: int = 0
    rejected: int = 0
    local_overflow: int = 0
    requeued: int = 0
    dead_lettered: int = 0
    connected: bool = True


@attrs.define
class _Counts:
    reconnects: int = 0
    rejected: int = 0
    local_overflow: int = 0
    requeued: int = 0
    dead_lettered: int = 0


# --------------------------------------------------------------------------- hosts


def _redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (safe for logs and errors)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    userinfo, at, hostpart = netloc.rpartition("@")
    if not at:
        return url
    user, colon, _password = userinfo.partition(":")
    redacted = f"{user}:***" if colon else "***"
    return f"{scheme}://{redacted}@{hostpart}{slash}{tail}"


_CLIENT_OPTIONS: Final = frozenset(
    {
        "username",
        "password",
        "db",
        "ssl_context",
        "ssl_keyfile",
        "ssl_certfile",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_check_hostname",
    }
)


@attrs.frozen
class _Host:
    """One configured Redis host (or Sentinel-managed primary)."""

    label: str
    """Redacted identity: used in logs, errors and the hash ring."""
    url: str | None = None
    options: Mapping[str, Any] = attrs.field(factory=dict)
    sentinels: tuple[tuple[str, int], ...] = ()
    service_name: str = ""
    sentinel_options: Mapping[str, Any] = attrs.field(factory=dict)
    secrets: tuple[str, ...] = ()


def _check_options(options: Mapping[str, Any], where: str) -> dict[str, Any]:
    unknown = sorted(set(options) - _CLIENT_OPTIONS)
    if unknown:
        allowed = ", ".join(sorted(_CLIENT_OPTIONS))
        msg = f"{where}: unknown option(s) {', '.join(unknown)}; allowed: {allowed}"
        raise InvalidChannelLayerError(msg)
    return dict(options)


def _parse_url(url: str, options: Mapping[str, Any]) -> _Host:
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        msg = f"invalid Redis URL {_redact(url)!r}: {exc}"
        raise InvalidChannelLayerError(msg) from None
    secrets: list[str] = []
    if parts.password:
        secrets.append(parts.password)
    if isinstance(options.get("password"), str):
        secrets.append(options["password"])
    if parts.scheme == "sentinel":
        return _parse_sentinel_url(url, parts.netloc, parts.path, options, secrets)
    if parts.scheme not in {"redis", "rediss", "unix"}:
        msg = f"Redis URL {_redact(url)!r} has scheme {parts.scheme!r}; expected redis://, rediss://, unix:// or sentinel://"
        raise InvalidChannelLayerError(msg)
    if parts.scheme == "unix":
        db = dict(
            pair.split("=", 1) for pair in parts.query.split("&") if "=" in pair
        ).get("db", "0")
        label = f"unix://{parts.path}?db={db}"
    else:
        try:
            port = parts.port or 6379
        except ValueError:
            msg = f"Redis URL {_redact(url)!r} has an invalid port"
            raise InvalidChannelLayerError(msg) from None
        if not parts.hostname:
            msg = f"Redis URL {_redact(url)!r} has no host"
            raise InvalidChannelLayerError(msg)
        db = parts.path.strip("/") or str(options.get("db", 0))
        if not db.isdigit():
            msg = (
                f"Redis URL {_redact(url)!r} has database {db!r}, which is not a number"
            )
            raise InvalidChannelLayerError(msg)
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        label = f"{parts.scheme}://{host}:{port}/{db}"
    return _Host(label=label, url=url, options=dict(options), secrets=tuple(secrets))


def _parse_sentinel_url(
    url: str, netloc: str, path: str, options: Mapping[str, Any], secrets: list[str]
) -> _Host:
    """``sentinel://[user:password@]host:port[,host:port...]/service_name[/db]``."""
    userinfo, _, hostlist = netloc.rpartition("@")
    sentinels = _parse_sentinel_list(hostlist.split(","), url)
    segments = [s for s in path.split("/") if s]
    if not segments or len(segments) > 2:
        msg = f"Sentinel URL {_redact(url)!r} must name the service: sentinel://host:port/service_name[/db]"
        raise InvalidChannelLayerError(msg)
    service = segments[0]
    db = segments[1] if len(segments) == 2 else "0"
    if not db.isdigit():
        msg = (
            f"Sentinel URL {_redact(url)!r} has database {db!r}, which is not a number"
        )
        raise InvalidChannelLayerError(msg)
    merged = dict(options)
    merged["db"] = int(db)
    if userinfo:
        user, colon, password = userinfo.partition(":")
        if colon:
            merged["password"] = password
            if user:
                merged["username"] = user
        else:
            merged["password"] = user
            secrets.append(user)
    return _Host(
        label=f"sentinel:{service}/{db}",
        sentinels=sentinels,
        service_name=service,
        options=merged,
        secrets=tuple(secrets),
    )


def _parse_sentinel_list(
    items: Iterable[object], where: str
) -> tuple[tuple[str, int], ...]:
    out: list[tuple[str, int]] = []
    for item in items:
        if isinstance(item, str):
            host, _, port = item.rpartition(":")
            if not host or not port.isdigit():
                msg = (
                    f"sentinel address {item!r} in {_redact(where)!r} is not host:port"
                )
                raise InvalidChannelLayerError(msg)
            out.append((host.strip("[]"), int(port)))
        elif (
            isinstance(item, tuple | list)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], int)
        ):
            out.append((item[0], item[1]))
        else:
            msg = f"sentinel address {item!r} is neither 'host:port' nor (host, port)"
            raise InvalidChannelLayerError(msg)
    if not out:
        msg = f"no sentinel addresses in {_redact(where)!r}"
        raise InvalidChannelLayerError(msg)
    return tuple(out)


def _parse_host(entry: object) -> _Host:
    if isinstance(entry, str):
        return _parse_url(entry, {})
    if (
        isinstance(entry, tuple)
        and len(entry) == 2
        and isinstance(entry[0], str)
        and isinstance(entry[1], int)
    ):
        return _parse_url(f"redis://{entry[0]}:{entry[1]}/0", {})
    if isinstance(entry, Mapping):
        config = dict(entry)
        if "sentinels" in config:
            sentinels = _parse_sentinel_list(config.pop("sentinels"), "sentinels")
            service = config.pop("master_name", None) or config.pop(
                "service_name", None
            )
            if not isinstance(service, str) or not service:
                msg = "a Sentinel host needs 'master_name' (the monitored service)"
                raise InvalidChannelLayerError(msg)
            sentinel_options = config.pop("sentinel_kwargs", None) or {}
            if not isinstance(sentinel_options, Mapping):
                msg = "'sentinel_kwargs' must be a mapping"
                raise InvalidChannelLayerError(msg)
            options = _check_options(config, f"Sentinel host {service!r}")
            secrets = tuple(
                v
                for v in (options.get("password"), sentinel_options.get("password"))
                if isinstance(v, str) and v
            )
            return _Host(
                label=f"sentinel:{service}/{options.get('db', 0)}",
                sentinels=sentinels,
                service_name=service,
                options=options,
                sentinel_options=_check_options(sentinel_options, "sentinel_kwargs"),
                secrets=secrets,
            )
        address = config.pop("address", None)
        if not isinstance(address, str):
            msg = f"host entry {_scrub_mapping(entry)!r} needs an 'address' URL or 'sentinels'"
            raise InvalidChannelLayerError(msg)
        return _parse_url(address, _check_options(config, _redact(address)))
    msg = f"host entry {entry!r} is not a URL, a (host, port) pair or a mapping"
    raise InvalidChannelLayerError(msg)


def _scrub_mapping(entry: Mapping[Any, Any]) -> dict[Any, Any]:
    return {k: ("***" if k == "password" else v) for k, v in entry.items()}


def _parse_hosts(hosts: object) -> list[_Host]:
    if hosts is None:
        entries: list[object] = ["redis://127.0.0.1:6379/0"]
    elif isinstance(hosts, str | Mapping):
        entries = [hosts]
    elif isinstance(hosts, Sequence):
        entries = list(hosts)
    else:
        msg = f"hosts must be a URL, a list of hosts or a host mapping, not {type(hosts).__name__}"
        raise InvalidChannelLayerError(msg)
    if not entries:
        msg = "hosts is empty; give at least one Redis URL"
        raise InvalidChannelLayerError(msg)
    parsed = [_parse_host(entry) for entry in entries]
    labels = [h.label for h in parsed]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        msg = f"hosts lists {', '.join(duplicates)} more than once"
        raise InvalidChannelLayerError(msg)
    return parsed


class _Ring:
    """Consistent hashing: 160 points per host on a 64-bit ring (blake2b).

    Points depend on each host's redacted identity, not on its position in
    the list, so reordering ``hosts`` moves nothing and adding a host moves
    about ``1/N`` of the keys.
    """

    POINTS: Final = 160

    def __init__(self, labels: Sequence[str]) -> None:
        points = sorted(
            (self._hash(f"{label}#{i}"), index)
            for index, label in enumerate(labels)
            for i in range(self.POINTS)
        )
        self._keys = [p for p, _ in points]
        self._owners = [o for _, o in points]
        self._single = len(labels) == 1

    @staticmethod
    def _hash(value: str) -> int:
        return int.from_bytes(
            hashlib.blake2b(value.encode(), digest_size=8).digest(), "big"
        )

    def lookup(self, key: str) -> int:
        if self._single:
            return 0
        i = bisect_right(self._keys, self._hash(key))
        return self._owners[i % len(self._owners)]


# --------------------------------------------------------------------------- internals


def _raw(response: ResponseType, **_: Any) -> ResponseType:
    return response


def _entry_ms(entry_id: bytes) -> int:
    return int(entry_id.partition(b"-")[0])


def _id_key(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or b"0")


def _next_id(entry_id: bytes) -> bytes:
    ms, _, seq = entry_id.partition(b"-")
    return ms + b"-" + str(int(seq or b"0") + 1).encode()


def _inbox_id(channel: str) -> str:
    """The process a ``!`` channel belongs to: the segment between the last ``.`` and the ``!``."""
    return channel[: channel.index("!")].rpartition(".")[2]


@attrs.define(eq=False)
class _Item:
    """A message waiting in a local buffer."""

    deadline: float
    message: dict[str, Any]
    entry_id: bytes | None = None


_HANDOFF_GRACE: Final = 1.0
"""Seconds a worker-channel entry fetched for a receiver that left waits for another local one."""

_WAKE: Final = _Item(math.inf, {})
"""Handed to parked receivers to make them re-check (see ``_wake_receivers``)."""


class _Queue:
    """A local buffer: FIFO items plus FIFO parked receivers.

    Not an anyio memory object stream: there, on asyncio, a receiver
    cancelled after being handed an item but before resuming loses it. Here
    it gives the item back (to the next parked receiver, or to the front), so
    :meth:`get` is cancellation-safe on every backend: if it raises, it took
    nothing. (The in-memory layer uses the same scheme.)
    """

    __slots__ = ("capacity", "items", "waiters")

    def __init__(self, capacity: float) -> None:
        self.capacity = capacity
        self.items: deque[_Item] = deque()
        self.waiters: deque[_Waiter[_Item]] = deque()

    def put_nowait(self, item: _Item) -> bool:
        """Hand ``item`` to the first parked receiver, else queue it; False if full."""
        if self.waiters:
            waiter = self.waiters.popleft()
            waiter.item = item
            waiter.wake()
            return True
        if len(self.items) >= self.capacity:
            return False
        self.items.append(item)
        return True

    def give_back(self, item: _Item) -> None:
        """Return an item a cancelled receiver was handed: it stays first in line."""
        if item is _WAKE:
            return
        if self.waiters:
            waiter = self.waiters.popleft()
            waiter.item = item
            waiter.wake()
        else:
            self.items.appendleft(item)

    def wake_all(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            waiter.item = _WAKE
            waiter.wake()

    def drain(self) -> list[_Item]:
        items = list(self.items)
        self.items.clear()
        return items

    async def get(self) -> _Item:
        """The next item, waiting if there is none; cancellation-safe. A checkpoint."""
        ll = _lowlevel()
        if self.items:
            await ll.checkpoint_if_cancelled()
            item = self.items.popleft()  # still there: nothing yielded
            await ll.cancel_shielded_checkpoint()
            return item
        # Nothing buffered: the wait is the checkpoint (a cancelled caller is
        # cancelled there and leaves no waiter behind).
        wake, wait = ll.park()
        waiter: _Waiter[_Item] = _Waiter(wake)
        self.waiters.append(waiter)
        try:
            await wait
        except BaseException:
            if waiter.item is None:
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)
            else:  # handed an item, then cancelled before resuming (asyncio)
                self.give_back(waiter.item)
            raise
        assert waiter.item is not None
        return waiter.item


@attrs.define(eq=False)
class _PendingSend:
    """One ``send`` waiting for the per-host batcher."""

    key: str
    kind: str
    capacity: int
    target: str
    body: bytes
    done: _Event | None = None
    """Set once the batcher has sent it: made only for a send that goes through the batcher."""
    taken: bool = False
    status: int | None = None
    error: BaseException | None = None

    def finish(self) -> None:
        """Wake its sender (queued for the batcher, so ``done`` exists)."""
        if self.done is not None:
            self.done.set()


class _Reply:
    """A pending reply on a :class:`_Link` connection (what coredis' ``Request`` does, minus
    its per-call telemetry, statistics and weak proxy): the connection's reader task
    resolves it in FIFO order through ``consume`` / ``fail``."""

    __slots__ = ("complete", "deadline", "error", "result", "wake")

    current_decode = False
    current_encoding = "utf-8"

    def __init__(self, deadline: float) -> None:
        self.complete = False
        self.wake: typing.Callable[[], object] = _nothing
        """Resumes the caller once it waits (see ``_Lowlevel.park``); called once."""
        self.deadline = deadline
        """When it times out, on the :func:`time.monotonic` clock (see ``_Link.expire``)."""
        self.result: ResponseType = None
        self.error: BaseException | None = None

    def consume(self, response: ResponseType | BaseException) -> None:
        if isinstance(response, BaseException):
            self.error = response
        else:
            self.result = response
        self.complete = True
        self.wake()

    def fail(self, error: BaseException) -> None:
        if not self.complete:
            self.error = error
            self.complete = True
            self.wake()


class _Chain:
    """The replies of one :meth:`_Link.call` made with ``then``: each reply's handler runs in
    the connection's reader task and may write the next command there, so the caller's
    task sleeps through a whole series of commands (see :meth:`_Link.call`)."""

    __slots__ = ("current", "link", "then")

    def __init__(
        self,
        link: _Link,
        then: typing.Callable[[ResponseType], Sequence[str | bytes | float] | None],
    ) -> None:
        self.link = link
        self.then = then
        self.current: _ChainedReply  # set by each new reply
        """The reply the chain is waiting for, or the last one it got."""


class _ChainedReply(_Reply):
    """A reply of a :class:`_Chain`: handed to ``then`` in the reader task, which returns
    the next command (written at once, its reply handled the same way) or None (the
    caller's task is woken with this reply). An error reply, an exception raised by
    ``then``, or a next command that cannot be written at once also wakes the caller."""

    __slots__ = ("chain",)

    def __init__(self, deadline: float, chain: _Chain) -> None:
        super().__init__(deadline)
        self.chain = chain
        chain.current = self

    def consume(self, response: ResponseType | BaseException) -> None:
        if not isinstance(response, BaseException):
            try:
                command = self.chain.then(response)
            except Exception as exc:  # raised in the caller's task, not the reader's
                response = exc
            else:
                if command is not None and self.chain.link._chain(command, self):
                    self.complete = True  # its successor wakes the caller
                    return
        super().consume(response)


def _reply_deadline(conn: BaseConnection) -> float:
    """When a reply to a command written now is overdue (``_Link.expire``), on :func:`time.monotonic`."""
    timeout = conn._stream_timeout
    return math.inf if timeout is None else time.monotonic() + timeout


def _nothing() -> None:
    """A reply's ``wake`` until its caller waits."""


def _deadline_scope(deadline: float) -> contextlib.AbstractContextManager[Any]:
    """A cancel scope with ``deadline``: trio's own under trio (anyio's wrapper costs ~3 us)."""
    if _sniffio_thread.name == "trio":
        return cast(
            "contextlib.AbstractContextManager[Any]",
            sys.modules["trio"].CancelScope(deadline=deadline),
        )
    return anyio.CancelScope(deadline=deadline)


def _shield_scope() -> contextlib.AbstractContextManager[Any]:
    """A shielded cancel scope: trio's own under trio (see ``_deadline_scope``)."""
    if _sniffio_thread.name == "trio":
        return cast(
            "contextlib.AbstractContextManager[Any]",
            sys.modules["trio"].CancelScope(shield=True),
        )
    return anyio.CancelScope(shield=True)


def _raw_socket(conn: BaseConnection) -> socket.socket | None:
    """The plain socket under ``conn``'s stream, under trio; else None.

    Only under trio: there a socket is touched only when its owner reads or
    writes (asyncio's transports read on their own). None for TLS streams.
    """
    stream = conn.stream
    if _sniffio_thread.name == "trio" and isinstance(stream, anyio.abc.SocketStream):
        return stream.extra(anyio.abc.SocketAttribute.raw_socket)
    return None


async def _read_replies(conn: BaseConnection) -> None:  # noqa: ASYNC910 - a task body
    """A :class:`_Link` connection's reader task: coredis' own, minus a deadline scope and
    statistics per read (the layer sets no idle timeout and reads no push messages). On
    a plain socket it waits for readability and then reads, instead of trying a read
    that fails first."""
    sock = _raw_socket(conn)
    lost: tuple[type[BaseException], ...] = (
        anyio.EndOfStream,
        anyio.ClosedResourceError,
        anyio.BrokenResourceError,
        OSError,
    )
    wait_readable: Any = None
    if sock is not None:
        # Under trio (see _raw_socket): trio's own wait, without anyio's backend
        # lookup and exception translation on every read.
        trio: Any = sys.modules["trio"]
        wait_readable = trio.lowlevel.wait_readable
        lost += (trio.ClosedResourceError,)
    while (stream := conn.stream) is not None:
        try:
            if sock is None:
                data = await stream.receive()
            else:
                await wait_readable(sock)
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                if not data:
                    raise anyio.EndOfStream
        except lost as err:
            conn._transport_failed = True
            msg = "Connection lost while receiving response"
            raise coredis.exceptions.ConnectionError(msg) from err
        except Exception:
            conn._transport_failed = True
            raise
        conn._data_received(data)


class _Link:
    """One coredis connection used directly, for the layer's hot commands.

    ``Redis.execute_command`` costs, per call, a command object, a telemetry
    span, the retry policy, a pool lease (a lock and a deadline scope), a hop
    through the connection's writer task and a callback. Here the calling
    task packs the command and writes it to the connection's socket itself,
    registers a :class:`_Reply` in the connection's FIFO of pending replies,
    and waits for the connection's reader task to fill it in. Concurrent
    calls pipeline on the one connection. coredis still connects (TLS,
    ``HELLO``/``AUTH``, ``SELECT``, client name, Sentinel discovery) and parses.
    The connection runs in the client's pool task group, so it ends with the
    client; a dead one is replaced on the next call. Never retries: a failure
    raises what coredis raises (``ConnectionError``; the command's own error).

    Reply deadlines (the client's ``stream_timeout``) are not a cancel scope
    per call (trio's costs ~15 us, a sixth of a round trip's CPU): each reply
    records its deadline, and the owner calls :meth:`expire` periodically,
    which fails overdue replies with ``TimeoutError`` and drops the
    connection. So a reply times out up to one sweep interval late.
    """

    __slots__ = ("_client", "_conn", "_connect_lock", "_sock", "_write_lock")

    def __init__(self, client: _Client) -> None:
        self._client = client
        self._conn: BaseConnection | None = None
        self._sock: socket.socket | None = None
        self._connect_lock = anyio.Lock()
        self._write_lock = anyio.Lock()

    async def _connect(self) -> BaseConnection:
        async with self._connect_lock:
            conn = self._conn
            if conn is not None and conn.usable:
                return conn
            if conn is not None:
                conn.invalidate()
                self._conn = None
            pool = self._client.connection_pool
            # coredis is pinned to 6.9.x: the private parts used here are stable.
            conn = cast("BaseConnection", await pool._construct_connection())
            # An instance attribute: run() starts self._reader_task.
            conn._reader_task = functools.partial(_read_replies, conn)  # type: ignore[method-assign]
            await pool.task_group.start(conn.run)
            self._conn = conn
            self._sock = _raw_socket(conn)
            return conn

    async def call(
        self,
        *command: str | bytes | float,
        blocking: bool = False,
        then: typing.Callable[[ResponseType], Sequence[str | bytes | float] | None]
        | None = None,
    ) -> ResponseType:
        """Send ``command`` (name first) and return its raw reply. A checkpoint.

        A call cancelled before its command is written sends nothing.
        ``blocking``: a command that waits server-side (``XREAD BLOCK``);
        cancelling it while it waits closes the connection, as the reply
        would otherwise hold up every command queued behind it.

        ``then``: called with each successful reply in the connection's reader
        task; it returns the next command to send, or None to return. The next
        command is written right there when the socket takes it at once (under
        trio, on a plain socket), and its reply goes to ``then`` in turn, so the
        calling task is not woken between the commands of a series. Otherwise
        (or when ``then`` returns None, raises, or a reply is an error) the call
        returns the last reply or raises; the caller then sends the command that
        ``then`` returned, if any, itself. ``then`` must not block or await.
        """
        conn = self._conn
        if conn is None or not conn.usable:
            conn = await self._connect()
        ll = _lowlevel()
        lock = self._write_lock
        held = lock.locked()
        if held:
            await lock.acquire()  # another call's write is still going on
        else:
            # Nothing yields from here until the write is done, so a write
            # that completes at once needs no lock; one that does not takes it.
            await ll.checkpoint_if_cancelled()
        timeout = conn._stream_timeout
        deadline = _reply_deadline(conn)
        chain = None if then is None else _Chain(self, then)
        reply = _Reply(deadline) if chain is None else _ChainedReply(deadline, chain)
        try:
            try:
                stream = conn.stream
                if stream is None or not conn.usable:
                    msg = "Connection not usable"
                    raise coredis.exceptions.ConnectionError(msg)
                packed = conn._packer.pack_command(
                    cast("bytes", command[0]), *command[1:]
                )
                conn._requests.append(reply)  # type: ignore[arg-type]
                data = b"".join(packed)
                sent = 0
                sock = self._sock
                if sock is not None:
                    # A plain socket: write without a scheduler pass when the
                    # socket buffer has room (it nearly always has).
                    with contextlib.suppress(BlockingIOError):
                        sent = sock.send(data)
                if sent < len(data):
                    if not held:
                        lock.acquire_nowait()
                        held = True
                    # Nothing has yielded since the checkpoint above, so this
                    # write is cancelled only while the socket buffer is full.
                    with _deadline_scope(
                        math.inf if timeout is None else ll.current_time() + timeout
                    ) as scope:
                        await stream.send(data[sent:])
                    if scope.cancelled_caught:
                        conn.invalidate()
                        msg = f"sending a request took over {timeout} s"
                        raise TimeoutError(msg)
            finally:
                if held:
                    lock.release()
        except (coredis.exceptions.ConnectionError, TimeoutError):
            raise
        except Exception as exc:
            conn.invalidate()
            msg = f"Connection lost while sending a request: {exc!r}"
            raise coredis.exceptions.ConnectionError(msg) from exc
        except BaseException:
            # Cancelled part-way through a write: the connection is unusable.
            conn.invalidate()
            raise
        if chain is not None:
            reply = chain.current  # (a successor, after a write that yielded)
        if not reply.complete:  # (it may be, after a write that yielded)
            reply.wake, wait = ll.park()  # a successor takes the wake over
            try:
                await wait
            except BaseException:
                if chain is not None:
                    reply = chain.current
                if blocking and not reply.complete:
                    conn.invalidate()
                raise
            if chain is not None:
                reply = chain.current
        if reply.error is not None:
            raise reply.error
        return reply.result

    def _chain(
        self, command: Sequence[str | bytes | float], prev: _ChainedReply
    ) -> bool:
        """In the reader task: write ``command``, its reply to be handled as ``prev``'s was.

        Only when the whole command goes into the socket buffer at once, with no other
        write under way. False: nothing was written; ``prev``'s caller is woken and
        writes the command itself. A write that took part of the command drops the
        connection (nothing may follow half a command): the new reply fails with a
        ``ConnectionError``, which wakes the caller.
        """
        conn = self._conn
        sock = self._sock
        if (
            sock is None
            or conn is None
            or not conn.usable
            or conn.stream is None
            or self._write_lock.locked()
        ):
            return False
        data = b"".join(
            conn._packer.pack_command(cast("bytes", command[0]), *command[1:])
        )
        try:
            sent = sock.send(data)
        except OSError:  # BlockingIOError: nothing written; others: call() reports them
            return False
        reply = _ChainedReply(_reply_deadline(conn), prev.chain)
        reply.wake = prev.wake
        conn._requests.append(reply)  # type: ignore[arg-type]
        if sent < len(data):
            conn.invalidate()
            reply.fail(
                coredis.exceptions.ConnectionError(
                    f"a request was written in part ({sent} of {len(data)} bytes)"
                )
            )
        return True

    def connected(self) -> bool:
        """True if a call would not have to (re)connect first."""
        conn = self._conn
        return conn is not None and conn.usable

    def expire(self, now: float) -> None:
        """Fail replies overdue at ``now`` (:func:`time.monotonic`) and drop the connection.

        The replies come in order, so the oldest pending one decides. Once
        one is overdue the connection is no longer trusted: every pending
        reply fails and the next call reconnects.
        """
        conn = self._conn
        if conn is None:
            return
        pending = conn._requests
        if not pending:
            return
        oldest = pending[0]
        if isinstance(oldest, _Reply) and oldest.deadline < now:
            error = TimeoutError(f"no reply from Redis within {conn._stream_timeout} s")
            for reply in list(pending):
                reply.fail(error)
            self._conn = None
            conn.invalidate()

    async def script(
        self,
        name: str,
        keys: Sequence[str],
        args: Sequence[str | bytes | float],
    ) -> ResponseType:
        """Run a script by SHA, loading it first if the server lost it (NOSCRIPT means it did not run)."""
        script = _SCRIPTS[name]
        try:
            return await self.call(b"EVALSHA", script.sha, len(keys), *keys, *args)
        except coredis.exceptions.NoScriptError:
            await self.call(b"SCRIPT", b"LOAD", script.text)
            return await self.call(b"EVALSHA", script.sha, len(keys), *keys, *args)


@attrs.define(eq=False)
class _Shard:
    index: int
    host: _Host
    write: _Client | None = None
    link: _Link | None = None
    sentinel: coredis.Sentinel[bytes] | None = None
    queue: deque[_PendingSend] = attrs.field(factory=deque)
    in_flight: int = 0
    wakeup: anyio.Event = attrs.field(factory=anyio.Event)


@attrs.define(eq=False)
class _LocalChannel:
    """The local buffer of one ``!`` channel of this process."""

    name: str
    capacity: int
    queue: _Queue
    last_active: float
    last_deadline: float = -math.inf
    waiting: int = 0
    flagged: bool = False


@attrs.define(eq=False)
class _WorkerChannel:
    """Local state of one normal channel this process receives on."""

    name: str
    key: str
    shard: _Shard
    delivery: Delivery
    queue: _Queue
    last_active: float
    demand: _Event = attrs.field(factory=lambda: _lowlevel().Event())
    waiting: int = 0
    reader_running: bool = False
    leased: set[bytes] = attrs.field(factory=set)
    outstanding: int = 0
    """Items put into the buffer and not yet taken out."""
    next_claim: float = 0.0
    handover_token: int = 0
    handover_unknown: int | None = None
    """The token of a ``read_take`` call whose reply has not been processed."""
    link: _Link | None = None
    """The reader's connection while the reader is parked (see ``_fetch_for_receiver``)."""
    fetching: bool = False
    """A receiver is running ``read_take`` itself (the reader must not run one)."""


# --------------------------------------------------------------------------- the layer


@typing.final
class RedisChannelLayer(BaseChannelLayer):
    """A channel layer on Redis streams (Redis >= 7.0), through coredis.

    ``async with RedisChannelLayer(hosts=["redis://localhost:6379/0"]) as layer:``
    opens it: it connects, loads its scripts, and starts its background tasks
    (one inbox reader, one housekeeper, one send batcher per host, and one
    reader per normal channel being received) in a task group that lives
    inside the ``async with``. Using it unopened raises
    :class:`~trichannels.exceptions.InvalidChannelLayerError`; after it is
    closed, :class:`anyio.ClosedResourceError`. Opening fails with
    :class:`~trichannels.exceptions.LayerConnectionError` if a host is
    unreachable.

    **Guarantees** (exactly what is implemented):

    - *Process-local channels* (``new_channel()``, names with ``!``) are
      multiplexed on one inbox stream per layer instance, read by one task
      with a blocking ``XREAD`` (finite block time, own connection, a cursor
      that only moves past entries already handed to local buffers). A
      message is delivered at most once. It is lost only if it outlives
      ``expiry``, if the inbox is at ``inbox_capacity`` or the channel was
      marked full when it was sent (``send`` raises ``ChannelFull``), if it
      reaches a local buffer that is full (dropped, counted in
      ``messages_dropped`` and ``redis_statistics().local_overflow``, logged),
      if its process is gone (no inbox: counted as dropped), or if the
      process exits with it still buffered. A cancelled ``receive`` never
      takes a message, on trio or asyncio. A connection loss loses nothing
      Redis accepted: the reader resumes from its cursor.
    - *Local delivery* (``local_delivery=True``, the default): what this layer
      instance sends to its own ``!`` channels (``send``, ``send_many``, and
      its own members' copies of a ``group_send``) goes straight into the
      local buffer, without a round trip through Redis; ``send`` then raises
      ``ChannelFull`` exactly at ``get_capacity(name)``. Everything this
      instance sends to its own channels takes that path, so its order is
      kept.
    - *Capacity of* ``!`` *channels*: each has a local buffer of
      ``get_capacity(name)``. When the owner sees the buffer full it marks the
      channel full in Redis (one round trip later), and ``send`` then raises
      ``ChannelFull`` until the buffer drains to half. Copies arriving in that
      window are dropped and counted.
    - *Normal channels* are one stream each, read through a consumer group,
      so each message goes to exactly one receiver across all processes.
      ``send`` enforces ``get_capacity(channel)`` atomically (entries not yet
      acknowledged count). A reader fetches only as many entries as there are
      receivers waiting in this process. **At-most-once** (the default): the
      entry is acknowledged and deleted before it is handed over, and only if
      this process still owns it, so it is never delivered twice. Entries
      already waiting are fetched, acknowledged and deleted in one script
      call, which also keeps the batch in a per-process hand-over list until
      the next call: if the reply is lost with the connection, the batch is
      recovered from there on reconnecting. Entries that arrive while the
      reader blocks are fetched first and acknowledged next; if the process
      dies (or loses Redis) between the two, another process claims them
      after ``visibility_timeout`` (never handed over, so not a duplicate).
      If the process dies after acknowledging and before handing over, the
      entries are lost. A fetched entry
      whose receiver was cancelled stays buffered for the next receiver in
      this process; if none comes within a second (or the layer closes) it is
      appended to the stream again (it then loses its place in the order) and
      counted in ``redis_statistics().requeued``.
    - **At-least-once** channels (``channel_delivery``): with
      ``async with layer.receive_delivery(channel) as message:`` the entry is
      acknowledged (``XACK`` + ``XDEL``) only after the block exits without an
      exception. While the block runs, this process renews the entry's lease
      every ``visibility_timeout / 3``. If the block raises or is cancelled,
      or the process dies or stalls for ``visibility_timeout``, any reader
      of the channel claims it (``XAUTOCLAIM``) and delivers it again; the
      delivery count grows each time, and an entry that would be delivered
      more than ``max_deliveries`` times is moved to the dead-letter stream
      instead (:meth:`dead_letters`). Handlers must therefore be idempotent.
      A plain ``receive()`` on such a channel acknowledges right after
      handing the message over. Expiry still applies: an entry older than
      ``expiry`` is trimmed even if it is pending.
    - *Ordering*: per channel, messages from one sender arrive in the order
      sent (stream ids). Requeued and redelivered entries come out of order.
    - *Groups*: a membership lasts ``group_expiry`` after its latest
      ``group_add``. It is stored on the host of the member's destination, and
      ``group_send`` runs one script per host, which fans out to every member
      there; members of one process share one inbox entry. A full or
      vanished member's copy is dropped and counted, never raised.
    - *Expiry* uses the Redis server's clock (stream ids and ``TIME``): old
      entries are trimmed by every send to the same stream, skipped by the
      readers, and abandoned keys vanish through TTLs. The ``clock`` option
      only times the process-local buffers.
    - *Sends are never retried* automatically: a ``send`` that fails with
      :class:`~trichannels.exceptions.LayerConnectionError` may or may not
      have been queued. Idempotent housekeeping (acks, trims, lease renewals)
      is retried.
    - *Connection loss*: readers reconnect with exponential backoff (50 ms
      doubling to 2 s, jittered). Receivers keep waiting; with
      ``reconnect_deadline`` set, receivers waiting on an empty buffer raise
      ``LayerConnectionError`` once the layer has been disconnected that long.

    Args:
        hosts: a URL (``redis://[[user]:password@]host:port/db``, ``rediss://``,
            ``unix://path?db=0``, ``sentinel://host:port[,host:port]/service[/db]``),
            a ``(host, port)`` pair, a mapping (``{"address": url, "password": ...,
            "ssl_context": ...}`` or ``{"sentinels": [(host, port)], "master_name":
            ..., "sentinel_kwargs": {...}, "db": 0}``), or a list of those to shard
            over with consistent hashing. Default ``redis://127.0.0.1:6379/0``.
        prefix: key prefix (letters, digits, ``-_.``).
        symmetric_encryption_keys: a list of secrets; bodies are encrypted with
            Fernet using the first and decrypted with any (``MultiFernet``), so
            keys can be rotated. A body that fails to decrypt is logged, counted
            and never delivered. Needs ``cryptography``.
        inbox_capacity: unread entries a process's inbox may hold before sends
            to any of its ``!`` channels raise ``ChannelFull``.
        visibility_timeout: seconds before an unacknowledged entry of a worker
            channel may be claimed by another reader.
        max_deliveries: deliveries of an at-least-once entry before it is dead-lettered.
        reconnect_deadline: seconds of disconnection after which waiting
            receivers fail with ``LayerConnectionError``; ``None`` waits forever.
        max_message_size: largest encoded (and encrypted) body in bytes.
        socket_timeout: seconds to wait for a reply to a command.
        connect_timeout: seconds to wait for a TCP connection.
        pool_timeout: seconds to wait for a free pooled connection.
        max_connections: size of each host's connection pool for commands.
        block_time: seconds each blocking read waits before looping.
        local_delivery: deliver what this layer instance sends to its own ``!``
            channels (``send``, ``send_many``, and its own members' copies of a
            ``group_send``) in-process, without a round trip through Redis. Set
            ``False`` to route them through the inbox like any other message.
        expiry: as in :class:`~trichannels.layers.base.BaseChannelLayer`.
        group_expiry: as in ``BaseChannelLayer``.
        capacity: as in ``BaseChannelLayer``.
        channel_capacity: as in ``BaseChannelLayer``.
        channel_delivery: as in ``BaseChannelLayer``; ``"at-least-once"`` is supported.
        serializer: as in ``BaseChannelLayer``.
        clock: times only the process-local buffers (Redis-side expiry follows
            the server's clock); defaults to :func:`time.monotonic`.

    Raises:
        InvalidChannelLayerError: if an option is invalid.
    """

    supported_deliveries: typing.ClassVar[frozenset[Delivery]] = frozenset(
        {"at-most-once", "at-least-once"}
    )
    requires_open: typing.ClassVar[bool] = True

    def __init__(
        self,
        hosts: HostsConfig = None,
        *,
        prefix: str = "trichannels",
        expiry: float = 60,
        group_expiry: float = 86400,
        capacity: int = 100,
        channel_capacity: ChannelPatterns[int] | None = None,
        channel_delivery: ChannelPatterns[Delivery] | None = None,
        serializer: MessageSerializer | str | None = None,
        clock: typing.Callable[[], float] | None = None,
        symmetric_encryption_keys: Sequence[str | bytes] | None = None,
        inbox_capacity: int = 10_000,
        visibility_timeout: float = 30.0,
        max_deliveries: int = 5,
        reconnect_deadline: float | None = None,
        max_message_size: int = 1 << 20,
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        pool_timeout: float = 5.0,
        max_connections: int = 32,
        block_time: float = 1.0,
        local_delivery: bool = True,
    ) -> None:
        super().__init__(
            expiry=expiry,
            group_expiry=group_expiry,
            capacity=capacity,
            channel_capacity=channel_capacity,
            channel_delivery=channel_delivery,
            serializer=serializer,
            clock=clock,
        )
        if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
            msg = f"prefix is {prefix!r}; it must be 1 to 64 ASCII letters, digits, '-', '_' or '.'"
            raise InvalidChannelLayerError(msg)
        self.prefix = prefix
        self._hosts = _parse_hosts(hosts)
        self._ring = _Ring([h.label for h in self._hosts])
        self._secrets = tuple(s for h in self._hosts for s in h.secrets)
        self.inbox_capacity = _check_positive_int("inbox_capacity", inbox_capacity)
        self.visibility_timeout = _positive_float(
            "visibility_timeout", visibility_timeout
        )
        self.max_deliveries = _check_positive_int("max_deliveries", max_deliveries)
        self.reconnect_deadline = (
            None
            if reconnect_deadline is None
            else _positive_float("reconnect_deadline", reconnect_deadline)
        )
        self.max_message_size = _check_positive_int(
            "max_message_size", max_message_size
        )
        self.socket_timeout = _positive_float("socket_timeout", socket_timeout)
        self.connect_timeout = _positive_float("connect_timeout", connect_timeout)
        self.pool_timeout = _positive_float("pool_timeout", pool_timeout)
        self.max_connections = _check_positive_int("max_connections", max_connections)
        self.block_time = _positive_float("block_time", block_time)
        self._fernet = _make_fernet(symmetric_encryption_keys)
        given: object = local_delivery
        if not isinstance(given, bool):
            msg = f"local_delivery is {local_delivery!r}, which is not a bool"
            raise InvalidChannelLayerError(msg)
        self.local_delivery = local_delivery
        # Local buffers need only a monotonic clock; time.monotonic is cheaper
        # than the event loop's (the hot path reads it on every receive).
        self._now: typing.Callable[[], float] = (
            clock if clock is not None else time.monotonic
        )
        self._fast_copy = type(self.serializer) is MsgpackSerializer
        """Copies of a decoded message may be made without decoding again (``_fan_out``)."""

        self._proc = uuid.uuid4().hex
        self._shards = [_Shard(i, h) for i, h in enumerate(self._hosts)]
        self._inbox_shard = self._shards[self._ring.lookup(self._proc)]
        self._inbox_key = f"{prefix}:{{p:{self._proc}}}:in"
        self._full_key = f"{prefix}:{{p:{self._proc}}}:full"
        self._inbox_ttl_ms = int(max(self.expiry, 15.0) * 1000)
        self._expiry_ms = max(1, int(self.expiry * 1000))
        self._local: dict[str, _LocalChannel] = {}
        self._workers: dict[str, _WorkerChannel] = {}
        self._memberships: dict[str, dict[str, float]] = {}
        """group -> {channel: local deadline}: what this process added (statistics only)."""
        self._tg: anyio.abc.TaskGroup | None = None
        self._hk_event = anyio.Event()
        self._trim_to: bytes | None = None
        self._untrimmed = 0
        self._inbox_floor: tuple[int, int] | None = None
        self._inbox_cursor = b"0-0"
        """The ID of the last inbox entry read."""
        self._inbox_failures = 0
        self._inbox_block_ms = max(1, int(self.block_time * 1000))
        self._flush_epoch = 0
        self._flag_changes: dict[str, bool] = {}
        self._pending_acks: dict[str, list[bytes]] = {}
        self._clock_offset_ms = 0.0
        self._down_since: dict[str, float] = {}
        self._last_error: dict[str, tuple[_Shard, BaseException | None]] = {}
        self._broken: LayerConnectionError | None = None
        self._counts = _Counts()
        self._links: set[_Link] = set()
        """Every connection used directly, for the reply watchdog (``_expire_replies``)."""
        self._last_overflow_log: dict[str, float] = {}

    # ----------------------------------------------------------- small helpers

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _connection_error(
        self, shard: _Shard, action: str, exc: BaseException
    ) -> LayerConnectionError:
        detail = self._scrub(f"{type(exc).__name__}: {exc}")
        return LayerConnectionError(
            f"Redis {shard.host.label} failed while {action}: {detail}"
        )

    def _worker_key(self, channel: str) -> str:
        return f"{self.prefix}:{{c:{channel}}}"

    def _group_keys(self, group: str) -> tuple[str, str]:
        key = f"{self.prefix}:{{g:{group}}}"
        return key, key + ":cap"

    def _shard_for(self, channel: str, owner: str | None = None) -> _Shard:
        """The host of ``channel``; ``owner``: the process of a ``!`` channel, if known."""
        if "!" in channel:
            return self._shards[self._ring.lookup(owner or _inbox_id(channel))]
        return self._shards[self._ring.lookup(channel)]

    def _server_now_ms(self) -> float:
        return time.time() * 1000.0 + self._clock_offset_ms

    def _client_name(self, role: str) -> str:
        return f"trichannels-{self._proc[:12]}-{role}"

    def _make_client(self, shard: _Shard, role: str, *, blocking: bool) -> _Client:
        host = shard.host
        common: dict[str, Any] = {
            "connect_timeout": self.connect_timeout,
            "stream_timeout": self.socket_timeout
            + (self.block_time if blocking else 0.0),
            "max_connections": 2 if blocking else self.max_connections,
            "client_name": self._client_name(role),
        }
        if host.url is not None:
            return coredis.Redis.from_url(
                host.url,
                decode_responses=False,
                retry_policy=NoRetryPolicy(),
                pool_timeout=self.pool_timeout,
                **common,
                **host.options,
            )
        assert shard.sentinel is not None
        return shard.sentinel.primary_for(
            host.service_name, timeout=self.pool_timeout, **common, **host.options
        )

    async def _script(
        self,
        client: _Client,
        name: str,
        keys: Sequence[str],
        args: Sequence[str | bytes | int | float],
    ) -> ResponseType:
        """Run a script by SHA, loading it first if the server lost it (NOSCRIPT means it did not run)."""
        script = _SCRIPTS[name]
        try:
            return await client.evalsha(script.sha, keys, args)
        except coredis.exceptions.NoScriptError:
            await client.script_load(script.text)
            return await client.evalsha(script.sha, keys, args)

    async def _run(
        self,
        shard: _Shard,
        action: str,
        name: str,
        keys: Sequence[str],
        args: Sequence[str | bytes | int | float],
    ) -> ResponseType:
        """Run a script on ``shard``'s shared client, translating failures."""
        assert shard.link is not None
        try:
            return await shard.link.script(name, keys, args)
        except _REDIS_ERRORS as exc:
            raise self._connection_error(shard, action, exc) from exc

    async def _run_idempotent(
        self,
        shard: _Shard,
        action: str,
        name: str,
        keys: Sequence[str],
        args: Sequence[str | bytes | int | float],
        *,
        attempts: int = 6,
    ) -> ResponseType:
        """Like :meth:`_run`, retried with backoff: only for scripts safe to repeat."""
        for attempt in range(attempts):
            try:
                return await self._run(shard, action, name, keys, args)
            except LayerConnectionError:
                if attempt == attempts - 1:
                    raise
                await anyio.sleep(_backoff(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _serialize(self, message: Message) -> bytes:
        body = self.serializer.dumps(message)
        if len(body) > self.max_message_size:
            raise MessageTooLarge(len(body), self.max_message_size)
        return body

    def _encrypt(self, plain: bytes) -> bytes:
        return plain if self._fernet is None else self._fernet.encrypt(plain)

    def _encode(self, message: Message) -> bytes:
        return self._encrypt(self._serialize(message))

    def _is_local(self, channel: str) -> bool:
        """Whether a send to ``channel`` is delivered in-process (``local_delivery``)."""
        return (
            self.local_delivery and "!" in channel and _inbox_id(channel) == self._proc
        )

    def _fan_out(self, plain: bytes, targets: Iterable[str], deadline: float) -> int:
        """Deliver one body to ``!`` channels of this process; the number delivered.

        The body is decoded once; with the default (msgpack) serializer every
        further target gets a copy of the decoded message (only dicts and lists
        are mutable), with any other serializer its own decoding. Each receiver
        thus owns its message. Targets that are empty or belong to another
        process are skipped; full buffers drop their copy (counted, logged).
        """
        local_channels = self._local
        first: dict[str, Any] | None = None
        clone: typing.Callable[[dict[str, Any]], dict[str, Any]] | None = None
        delivered = 0
        for target in targets:
            local = local_channels.get(target)
            if local is None:
                if not target or _inbox_id(target) != self._proc:
                    continue
                local = self._local_channel(target)
            if first is None:
                first = self._loads(plain, target)
                if first is None:
                    break
                message = first
                if self._fast_copy:
                    clone = _cloner(first)
            elif clone is not None:
                message = clone(first)
            else:
                decoded = self._loads(plain, target)
                if decoded is None:
                    break
                message = decoded
            queue = local.queue
            if queue.put_nowait(_Item(deadline, message)):
                local.last_deadline = deadline
                delivered += 1
                if len(queue.items) >= local.capacity:
                    self._check_full(local)
            else:
                self._overflow(local)
        return delivered

    def _put_local(self, channel: str, plain: bytes) -> None:
        """Queue a ``send`` to a ``!`` channel of this process; ``ChannelFull`` if its buffer is full."""
        message = self.serializer.loads(plain)
        local = self._local_channel(channel)
        if not local.queue.put_nowait(_Item(self._now() + self.expiry, message)):
            raise ChannelFull(channel, local.capacity)
        local.last_deadline = self._now() + self.expiry
        self._counters.sent += 1
        self._check_full(local)

    def _decode(self, body: bytes, where: str) -> bytes | None:
        """Decrypt ``body``; ``None`` (logged, counted) if it was tampered with or garbled."""
        if self._fernet is None:
            return body
        from cryptography.fernet import InvalidToken

        try:
            return self._fernet.decrypt(body)
        except InvalidToken:
            self._counts.rejected += 1
            self._counters.dropped += 1
            _log.warning(
                "rejected a message on %s: it failed decryption (tampered with, or "
                "encrypted with a key not in symmetric_encryption_keys)",
                where,
            )
            return None

    def _loads(self, plain: bytes, where: str) -> dict[str, Any] | None:
        try:
            return self.serializer.loads(plain)
        except InvalidMessage as exc:
            self._counts.rejected += 1
            self._counters.dropped += 1
            _log.warning("rejected a message on %s: %s", where, exc)
            return None

    def _wake(self) -> None:
        self._hk_event.set()

    # ----------------------------------------------------------- lifecycle

    @contextlib.asynccontextmanager
    async def _lifespan(self) -> AsyncIterator[None]:
        # coredis wraps anything raised inside a client's ``async with`` in an
        # ExceptionGroup (hazard H7), so a failure to connect is carried out of
        # the client blocks and raised plain.
        failure: LayerConnectionError | None = None
        async with contextlib.AsyncExitStack() as stack:
            try:
                await self._connect(stack)
            except LayerConnectionError as exc:
                failure = exc
            if failure is None:
                try:
                    async with anyio.create_task_group() as tg:
                        self._tg = tg
                        tg.start_soon(self._expire_replies)
                        try:
                            await tg.start(self._inbox_reader)
                        except* LayerConnectionError as group:
                            failure = cast("LayerConnectionError", group.exceptions[0])
                        if failure is None:
                            tg.start_soon(self._housekeeper)
                            for shard in self._shards:
                                tg.start_soon(self._batcher, shard)
                            try:
                                yield
                            finally:
                                tg.cancel_scope.cancel()
                finally:
                    self._tg = None
        if failure is not None:
            raise failure

    async def _connect(self, stack: contextlib.AsyncExitStack) -> None:
        """Open a client per host, load the scripts, create the inbox, read the clock."""
        for shard in self._shards:
            try:
                if shard.host.sentinels:
                    shard.sentinel = coredis.Sentinel(
                        sentinels=[TCPLocation(h, p) for h, p in shard.host.sentinels],
                        sentinel_kwargs={
                            "connect_timeout": self.connect_timeout,
                            "stream_timeout": self.socket_timeout,
                            "pool_timeout": self.pool_timeout,
                            **shard.host.sentinel_options,
                        },
                    )
                    await stack.enter_async_context(shard.sentinel)
                shard.write = self._make_client(shard, "cmd", blocking=False)
                await stack.enter_async_context(shard.write)
                shard.link = _Link(shard.write)
                self._links.add(shard.link)
                for script in _SCRIPTS.values():
                    await shard.write.script_load(script.text)
            except _REDIS_ERRORS as exc:
                raise self._connection_error(shard, "connecting", exc) from exc
        # Before the task group (and its reply watchdog) runs: bounded here.
        with anyio.move_on_after(2 * self.socket_timeout) as scope:
            await self._run(
                self._inbox_shard,
                "creating the inbox",
                "keepalive",
                [self._inbox_key, self._full_key],
                [self._inbox_ttl_ms],
            )
            await self._sync_clock()
        if scope.cancelled_caught:
            raise self._connection_error(
                self._inbox_shard,
                "creating the inbox",
                TimeoutError(f"no reply within {2 * self.socket_timeout:g} s"),
            )

    async def _expire_replies(self) -> None:
        """Time out Redis replies that are overdue (see ``_Link.expire``).

        Sweeps every connection the layer uses directly, every quarter of
        ``socket_timeout`` (at most every second).
        """
        interval = min(1.0, self.socket_timeout / 4)
        while True:
            await anyio.sleep(interval)
            now = time.monotonic()
            for link in list(self._links):
                link.expire(now)

    async def _aclose(self) -> None:
        self._wake_receivers()
        for shard in self._shards:
            while shard.queue:
                item = shard.queue.popleft()
                item.error = anyio.ClosedResourceError("RedisChannelLayer is closed")
                item.finish()
        lost = 0
        for local in self._local.values():
            lost += len(local.queue.items)
        if lost:
            self._counters.dropped += lost
            _log.info("closing with %d undelivered message(s) in local buffers", lost)
        await anyio.lowlevel.cancel_shielded_checkpoint()
        if self._tg is not None:
            with anyio.move_on_after(2.0, shield=True):
                await self._release_workers()
                # Delete the inbox so that senders see this process as gone at once.
                shard = self._inbox_shard
                assert shard.write is not None
                try:
                    await shard.write.unlink([self._inbox_key, self._full_key])
                except _REDIS_ERRORS as exc:
                    _log.info(
                        "could not delete the inbox on close (it expires in %d s): %s",
                        self._inbox_ttl_ms // 1000,
                        self._scrub(str(exc)),
                    )

    async def _release_workers(self) -> None:
        """Hand buffered worker-channel entries back to Redis when closing."""
        await anyio.lowlevel.cancel_shielded_checkpoint()
        for wc in list(self._workers.values()):
            items = _drain_worker(wc)
            if wc.delivery == "at-most-once" and items:
                await self._requeue(wc, items)
            wc.leased.clear()

    # ----------------------------------------------------------- connection state

    def _note_down(self, source: str, shard: _Shard, exc: BaseException | None) -> None:
        """Record that ``source`` (a reader) lost Redis; logs once per outage."""
        if source not in self._down_since:
            self._down_since[source] = self._now()
            _log.warning(
                "lost Redis connection (%s on %s): %s; reconnecting",
                source,
                shard.host.label,
                self._scrub(f"{type(exc).__name__}: {exc}"),
            )
        self._last_error[source] = (shard, exc)
        self._check_deadline()

    def _check_deadline(self) -> None:
        """Fail waiting receivers once disconnected for longer than ``reconnect_deadline``."""
        if (
            self.reconnect_deadline is None
            or self._broken is not None
            or not self._down_since
        ):
            return
        source, since = min(self._down_since.items(), key=lambda kv: kv[1])
        if self._now() - since < self.reconnect_deadline:
            return
        shard, exc = self._last_error.get(source, (self._inbox_shard, None))
        error = self._connection_error(
            shard,
            f"reconnecting for over {self.reconnect_deadline:g} s",
            exc if exc is not None else TimeoutError("no connection"),
        )
        error.__cause__ = exc
        self._broken = error
        self._wake_receivers()

    def _wake_receivers(self) -> None:
        """Wake every waiting receiver so that it re-checks ``closed`` / ``_broken``."""
        for local in self._local.values():
            local.queue.wake_all()
        for wc in self._workers.values():
            wc.queue.wake_all()

    def _note_up(self, source: str, shard: _Shard) -> None:
        if source in self._down_since:
            del self._down_since[source]
            self._last_error.pop(source, None)
            self._counts.reconnects += 1
            _log.info("reconnected to Redis (%s on %s)", source, shard.host.label)
            if not self._down_since:
                self._broken = None

    async def _sync_clock(self) -> None:
        shard = self._inbox_shard
        before = time.time()
        reply = await self._run(shard, "reading the server clock", "time", [], [])
        after = time.time()
        seconds, micros = cast("list[bytes]", reply)
        server_ms = int(seconds) * 1000 + int(micros) / 1000
        self._clock_offset_ms = server_ms - (before + after) * 500.0

    # ----------------------------------------------------------- the API

    async def new_channel(self, prefix: str = "specific.") -> str:
        """Return a new ``!`` channel owned by this layer instance. A checkpoint."""
        await anyio.lowlevel.checkpoint()
        return self._new_channel_now(prefix)

    _names_channels_now = True

    def _receive_nowait(self, channel: str) -> dict[str, Any] | None:
        local = self._local.get(channel)
        if local is None or self._closed:
            return None
        item = self._pop_live(local.queue.items, self._now())
        return None if item is None else item.message

    def _pop_live(self, items: deque[_Item], now: float) -> _Item | None:
        """Take the next live item from a local buffer (counted), skipping markers and expired ones."""
        while items:
            item = items.popleft()
            if item is _WAKE:
                continue
            if item.deadline < now:
                self._counters.expired += 1
                continue
            self._counters.received += 1
            return item
        return None

    def _new_channel_now(self, prefix: str = "specific.") -> str:
        self._check_open()
        name = new_channel_name(prefix, self._proc)
        self._local_channel(name)
        return name

    async def send(self, channel: str, message: Message) -> None:
        """Queue ``message`` on ``channel`` in one script call (batched per host). A checkpoint.

        Raises:
            ChannelFull: the channel (for ``!`` channels: the owner's inbox, or the
                channel marked full by its owner) has no room.
            LayerConnectionError: Redis failed; the message may or may not be queued.
        """
        self._check_open()
        channel = self.require_valid_channel_name(channel)
        owner = _inbox_id(channel) if "!" in channel else None
        if owner == self._proc and self.local_delivery:
            plain = self._serialize(self.require_valid_message(message))
            await (
                anyio.lowlevel.checkpoint()
            )  # before queuing: a cancelled send sends nothing
            self._check_open()
            self._put_local(channel, plain)
            return
        body = self._encode(self.require_valid_message(message))
        shard = self._shard_for(channel, owner)
        item = self._pending(channel, body, owner)
        if not shard.queue and not shard.in_flight:
            # Nothing else is being sent: go straight to Redis, no batcher hop.
            shard.in_flight += 1
            try:
                [item.status] = await self._send_batch(shard, [item])
            finally:
                shard.in_flight -= 1
        else:
            item.done = _lowlevel().Event()
            shard.queue.append(item)
            shard.wakeup.set()
            try:
                await item.done.wait()
            except BaseException:
                if not item.taken and not item.done.is_set():
                    # Never written: the cancelled send sent nothing.
                    shard.queue.remove(item)
                raise
        self._finish_send(channel, item)

    def _pending(
        self, channel: str, body: bytes, owner: str | None = None
    ) -> _PendingSend:
        """What a send queues; ``owner``: the process of a ``!`` channel, if known."""
        if "!" in channel:
            return _PendingSend(
                key=f"{self.prefix}:{{p:{owner or _inbox_id(channel)}}}:in",
                kind="i",
                capacity=self.inbox_capacity,
                target=channel,
                body=body,
            )
        return _PendingSend(
            key=self._worker_key(channel),
            kind="n",
            capacity=self.get_capacity(channel),
            target="",
            body=body,
        )

    def _finish_send(self, channel: str, item: _PendingSend) -> None:
        if item.error is not None:
            raise item.error
        if item.status == 1:
            self._counters.sent += 1
        elif item.status == 0:
            raise ChannelFull(channel, self.get_capacity(channel))
        elif item.status == -2:
            raise ChannelFull(channel, self.inbox_capacity)
        else:
            self._counters.dropped += 1
            _log.debug(
                "dropped a message for %s: its process has no inbox (gone)", channel
            )

    async def _batcher(self, shard: _Shard) -> None:
        """Send queued ``send`` calls for one host, many per script call when they pile up."""
        while True:
            await shard.wakeup.wait()
            shard.wakeup = anyio.Event()
            while shard.queue:
                batch: list[_PendingSend] = []
                size = 0
                while shard.queue and len(batch) < 256 and size < 4_000_000:
                    item = shard.queue.popleft()
                    item.taken = True
                    batch.append(item)
                    size += len(item.body)
                shard.in_flight += 1
                try:
                    statuses = await self._send_batch(shard, batch)
                except LayerConnectionError as exc:
                    for item in batch:
                        item.error = LayerConnectionError(*exc.args)
                        item.error.__cause__ = exc.__cause__
                        item.finish()
                except BaseException:
                    for item in batch:
                        item.error = anyio.ClosedResourceError(
                            "RedisChannelLayer is closed"
                        )
                        item.finish()
                    raise
                else:
                    for item, status in zip(batch, statuses, strict=True):
                        item.status = status
                        item.finish()
                finally:
                    shard.in_flight -= 1

    async def _send_batch(
        self, shard: _Shard, batch: Sequence[_PendingSend]
    ) -> list[int]:
        args: list[str | bytes | int] = [self._expiry_ms]
        for item in batch:
            args += [item.kind, item.capacity, item.target, item.body]
        reply = cast(
            "list[int]",
            await self._run(
                shard, "sending", "send_many", [i.key for i in batch], args
            ),
        )
        self._counters.expired += reply[-1]
        return reply[:-1]

    async def send_many(self, channel_messages: Iterable[tuple[str, Message]]) -> None:
        """Send every ``(channel, message)`` pair with one script call per host.

        Everything is validated and encoded first. Every message whose channel
        has room is queued; then ``ChannelFull`` is raised for the first full one.
        A checkpoint.
        """
        self._check_open()
        pending: list[tuple[str, _PendingSend]] = []
        local: list[tuple[str, bytes]] = []
        for channel, message in channel_messages:
            name = self.require_valid_channel_name(channel)
            plain = self._serialize(self.require_valid_message(message))
            if self._is_local(name):
                local.append((name, plain))
            else:
                pending.append((name, self._pending(name, self._encrypt(plain))))
        by_shard: dict[int, list[_PendingSend]] = {}
        for name, item in pending:
            by_shard.setdefault(self._shard_for(name).index, []).append(item)
        first: ChannelFull | None = None
        await (
            anyio.lowlevel.checkpoint()
        )  # before queuing: a cancelled call sends nothing
        self._check_open()
        if local:
            for name, plain in local:
                try:
                    self._put_local(name, plain)
                except ChannelFull as exc:
                    first = first or exc

        async def one(index: int, items: list[_PendingSend]) -> None:
            for item, status in zip(
                items, await self._send_batch(self._shards[index], items), strict=True
            ):
                item.status = status

        if by_shard:
            await _concurrently(
                [functools.partial(one, i, its) for i, its in by_shard.items()]
            )
        for name, item in pending:
            try:
                self._finish_send(name, item)
            except ChannelFull as exc:
                first = first or exc
        if first is not None:
            raise first

    async def receive(self, channel: str) -> dict[str, Any]:
        """Wait for the next message on ``channel``; cancellation-safe. A checkpoint.

        Raises:
            InvalidChannelName: the name is invalid, or it is a ``!`` channel of
                another process (only its creator can receive on it).
            LayerConnectionError: ``reconnect_deadline`` passed while disconnected.
        """
        self._check_open()
        # A known local buffer's name was validated when the buffer was made.
        local = self._local.get(channel) if type(channel) is str else None
        if local is None:
            channel = self.require_valid_channel_name(channel)
            if "!" in channel:
                local = self._local_channel(channel)
        if local is not None:
            items = local.queue.items
            if items:
                # Something is buffered: take it without the waiting machinery.
                # Nothing can take it between the cancellation check and here.
                ll = _lowlevel()
                await ll.checkpoint_if_cancelled()
                now = self._now()
                item = self._pop_live(items, now)
                if item is not None:
                    local.last_active = now
                    if local.flagged:
                        self._check_drained(local)
                    await ll.cancel_shielded_checkpoint()
                    return item.message
            local.waiting += 1
            try:
                item = await self._take(local.queue)
            finally:
                local.waiting -= 1
                local.last_active = self._now()
            if local.flagged:
                self._check_drained(local)
            return item.message
        wc = self._worker(channel)
        item = await self._take_worker(wc)
        if item.entry_id is not None:
            self._pending_acks.setdefault(wc.name, []).append(item.entry_id)
            self._wake()
        return item.message

    def receive_delivery(
        self, channel: str
    ) -> contextlib.AbstractAsyncContextManager[dict[str, Any]]:
        """``async with layer.receive_delivery(channel) as message:`` for workers.

        On at-least-once channels the entry is acknowledged when the block exits
        cleanly and redelivered (after ``visibility_timeout``) if it raises, is
        cancelled or the process dies; see the class docstring. Elsewhere it is
        :meth:`receive`. Entering is a cancellation-safe checkpoint; exiting
        cleanly waits for the acknowledgement (retried; a failure is logged
        and the message will be delivered again).
        """
        channel = self.require_valid_channel_name(channel)
        if "!" in channel or self.get_delivery(channel) == "at-most-once":
            return self._receive_at_most_once(channel)
        return self._receive_acked(channel)

    @contextlib.asynccontextmanager
    async def _receive_acked(self, channel: str) -> AsyncIterator[dict[str, Any]]:
        self._check_open()
        wc = self._worker(channel)
        item = await self._take_worker(wc)
        assert item.entry_id is not None
        try:
            yield item.message
        except BaseException:
            wc.leased.discard(item.entry_id)
            raise
        with anyio.move_on_after(self.visibility_timeout, shield=True):
            try:
                await self._run_idempotent(
                    wc.shard, "acknowledging", "ack", [wc.key], [item.entry_id]
                )
            except LayerConnectionError as exc:
                _log.warning(
                    "could not acknowledge a message on %s; it will be delivered again: %s",
                    channel,
                    exc,
                )
        wc.leased.discard(item.entry_id)
        await anyio.lowlevel.cancel_shielded_checkpoint()

    async def _take(self, queue: _Queue, wc: _WorkerChannel | None = None) -> _Item:
        """Take the next live item; cancellation-safe (no checkpoint after taking it)."""
        while True:
            self._check_open()
            if self._broken is not None and not queue.items:
                raise LayerConnectionError(
                    *self._broken.args
                ) from self._broken.__cause__
            item = await queue.get()
            if item is _WAKE:
                continue  # closed, or disconnected past reconnect_deadline: re-check
            if wc is not None:
                wc.outstanding -= 1
            if item.deadline < self._now():
                self._counters.expired += 1
                continue
            if (
                wc is not None
                and item.entry_id is not None
                and item.entry_id not in wc.leased
            ):
                continue  # its lease was lost: another reader has delivered it again
            self._counters.received += 1
            return item

    async def _take_worker(self, wc: _WorkerChannel) -> _Item:
        wc.waiting += 1
        wc.last_active = self._now()
        try:
            if (
                wc.link is not None
                and wc.waiting == 1
                and not wc.queue.items
                and not wc.fetching
                and wc.handover_unknown is None
                and wc.delivery == "at-most-once"
                and self._broken is None
                and not self._closed
                and self._now() < wc.next_claim
                and wc.link.connected()  # never connect in a shielded call
            ):
                item = await self._fetch_for_receiver(wc, wc.link)
                if item is not None:
                    return item
            wc.demand.set()
            self._start_worker_reader(wc)
            return await self._take(wc.queue, wc)
        finally:
            wc.waiting -= 1
            wc.last_active = self._now()
            if not wc.waiting and wc.queue.items:
                wc.demand.set()  # entries were fetched for receivers that left

    async def _fetch_for_receiver(
        self, wc: _WorkerChannel, link: _Link
    ) -> _Item | None:
        """Run ``read_take`` in the receiving task itself while the reader is parked.

        Saves waking the reader task and then the receiver (two scheduler passes
        per message). Only one ``read_take`` runs per channel at a time
        (``wc.fetching``; the reader waits while it is set). The call is
        shielded: once the script may have run, its reply is always processed,
        so entries it took are buffered even if this receiver is cancelled (they
        are then delivered to another receiver or handed back like any
        stranded entry). The wait is bounded by the link's reply deadline
        (``_Link.expire``). A Redis error leaves ``handover_unknown`` set; the
        reader, woken by the fallback, recovers the batch (``_recover_pending``).
        Returns None when nothing came for this receiver: it then waits as usual.
        """
        ll = _lowlevel()
        await ll.checkpoint_if_cancelled()
        wc.fetching = True
        try:
            with _shield_scope():
                try:
                    await self._read_take(wc, link, 1)
                except _REDIS_ERRORS as exc:
                    _log.debug(
                        "read_take for a receiver on %s failed: %s", wc.name, exc
                    )
        finally:
            wc.fetching = False
            if wc.waiting > 1 or wc.handover_unknown is not None:
                wc.demand.set()  # the reader waited for this call to finish
        # Cancelled meanwhile: whatever came stays buffered (see _take_worker).
        await ll.checkpoint_if_cancelled()
        return self._take_nowait(wc.queue, wc)

    def _take_nowait(self, queue: _Queue, wc: _WorkerChannel) -> _Item | None:
        """Take the next live buffered item without waiting (as ``_take`` does), or None."""
        items = queue.items
        while items:
            item = items.popleft()
            if item is _WAKE:
                continue
            wc.outstanding -= 1
            if item.deadline < self._now():
                self._counters.expired += 1
                continue
            if item.entry_id is not None and item.entry_id not in wc.leased:
                continue
            self._counters.received += 1
            return item
        return None

    # ----------------------------------------------------------- groups

    async def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group`` on the host of the channel's destination. A checkpoint."""
        self._check_open()
        group = self.require_valid_group_name(group)
        channel = self.require_valid_channel_name(channel)
        keys = self._group_keys(group)
        capacity = "" if "!" in channel else str(self.get_capacity(channel))
        await self._run(
            self._shard_for(channel),
            "adding to a group",
            "group_add",
            keys,
            [channel, max(1, int(self.group_expiry * 1000)), capacity],
        )
        self._memberships.setdefault(group, {})[channel] = (
            self._now() + self.group_expiry
        )

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``; nothing happens if it is not a member. A checkpoint."""
        self._check_open()
        group = self.require_valid_group_name(group)
        channel = self.require_valid_channel_name(channel)
        await self._run(
            self._shard_for(channel),
            "leaving a group",
            "group_discard",
            self._group_keys(group),
            [channel],
        )
        members = self._memberships.get(group)
        if members is not None:
            members.pop(channel, None)
            if not members:
                del self._memberships[group]

    async def group_send(self, group: str, message: Message) -> None:
        """Send ``message`` to every member of ``group``: one script per host. A checkpoint."""
        await self.group_send_many([(group, message)])

    async def group_send_many(
        self, group_messages: Iterable[tuple[str, Message]]
    ) -> None:
        """``group_send`` every ``(group, message)`` pair in one script call per host. A checkpoint."""
        self._check_open()
        keys: list[str] = []
        plains: list[bytes] = []
        for group, message in group_messages:
            keys.extend(self._group_keys(self.require_valid_group_name(group)))
            plains.append(self._serialize(self.require_valid_message(message)))
        if not plains:
            await anyio.lowlevel.checkpoint()
            return
        args: list[str | bytes | int] = [
            self.prefix,
            self._expiry_ms,
            self.inbox_capacity,
            self.capacity,
            self._proc if self.local_delivery else "",
            *map(self._encrypt, plains),
        ]

        async def one(shard: _Shard) -> None:
            reply = cast(
                "list[Any]",
                await self._run(
                    shard, "sending to a group", "group_send_many", keys, args
                ),
            )
            self._counters.sent += reply[0]
            self._counters.dropped += reply[1]
            self._counters.expired += reply[2]
            # Members in this process: delivered here, without a round trip.
            position = 3
            for plain in plains:
                count = reply[position]
                if count:
                    self._counters.sent += self._fan_out(
                        plain,
                        [
                            t.decode()
                            for t in reply[position + 1 : position + 1 + count]
                        ],
                        self._now() + self.expiry,
                    )
                position += 1 + count
            if reply[1]:
                _log.info(
                    "%d group copies dropped (member full or gone) on %s",
                    reply[1],
                    shard.host.label,
                )

        await _concurrently([functools.partial(one, shard) for shard in self._shards])

    # ----------------------------------------------------------- flush, statistics, dead letters

    async def flush(self) -> None:
        """Delete every key under ``prefix`` on every host (``SCAN``, never ``KEYS``) and local buffers.

        Inboxes are emptied rather than deleted, so live processes keep
        receiving. Other processes' local buffers are not touched. A checkpoint.
        """
        self._check_open()
        self._flush_epoch += 1
        marker = await self._run(
            self._inbox_shard,
            "marking the inbox",
            "mark",
            [self._inbox_key],
            [self._inbox_ttl_ms],
        )
        self._inbox_floor = _id_key(cast("bytes", marker))
        pattern = f"{self.prefix}:*"
        for shard in self._shards:
            assert shard.write is not None
            try:
                batch: list[bytes] = []
                async for key in shard.write.scan_iter(match=pattern, count=1000):
                    batch.append(key)
                    if len(batch) >= 500:
                        await self._script(shard.write, "flush", [], batch)
                        batch = []
                if batch:
                    await self._script(shard.write, "flush", [], batch)
            except _REDIS_ERRORS as exc:
                raise self._connection_error(shard, "flushing", exc) from exc
        for local in self._local.values():
            local.queue.drain()
            local.flagged = False
        for wc in self._workers.values():
            _drain_worker(wc)
            wc.leased.clear()
        self._flag_changes.clear()
        self._pending_acks.clear()
        self._memberships.clear()

    def statistics(self) -> LayerStatistics:
        """This process's view: local buffers, and memberships it added (expiry not tracked)."""
        queued = sum(len(c.queue.items) for c in self._local.values())
        queued += sum(len(w.queue.items) for w in self._workers.values())
        return self._make_statistics(
            channels=len(self._local) + len(self._workers),
            queued_messages=queued,
            groups=len(self._memberships),
            members=sum(len(m) for m in self._memberships.values()),
        )

    def redis_statistics(self) -> RedisLayerStatistics:
        """Counters specific to this layer: reconnects, rejected bodies, overflows, ..."""
        c = self._counts
        return RedisLayerStatistics(
            reconnects=c.reconnects,
            rejected=c.rejected,
            local_overflow=c.local_overflow,
            requeued=c.requeued,
            dead_lettered=c.dead_lettered,
            connected=not self._down_since,
        )

    async def dead_letters(self, channel: str, *, count: int = 100) -> list[DeadLetter]:
        """The oldest ``count`` dead letters of an at-least-once ``channel``. A checkpoint.

        The stream is ``<prefix>:{c:<channel>}:dead`` (capped near 10,000
        entries, kept 7 days after the latest addition); delete entries with
        ``XDEL`` once handled.
        """
        self._check_open()
        channel = self.require_valid_channel_name(channel)
        shard = self._shard_for(channel)
        assert shard.write is not None
        request = shard.write.create_request(
            CommandName.XRANGE,
            self._worker_key(channel) + ":dead",
            b"-",
            b"+",
            b"COUNT",
            count,
            callback=_raw,
        )
        try:
            entries = cast(
                "list[list[Any]]", await shard.write.execute_command(request)
            )
        except _REDIS_ERRORS as exc:
            raise self._connection_error(shard, "reading dead letters", exc) from exc
        out: list[DeadLetter] = []
        for _, flat in entries:
            fields: dict[bytes, bytes] = dict(zip(flat[::2], flat[1::2], strict=True))
            plain = self._decode(fields[b"m"], channel)
            message = None if plain is None else self._loads(plain, channel)
            out.append(
                DeadLetter(
                    message=message,
                    entry_id=fields[b"id"].decode(),
                    deliveries=int(fields[b"deliveries"]),
                )
            )
        return out

    # ----------------------------------------------------------- process-local channels

    def _local_channel(self, name: str) -> _LocalChannel:
        local = self._local.get(name)
        if local is None:
            if _inbox_id(name) != self._proc:
                raise InvalidChannelName(
                    name,
                    "is a process-specific channel of another layer instance; "
                    "only the layer whose new_channel() created it can receive on it",
                )
            capacity = self.get_capacity(name)
            local = _LocalChannel(name, capacity, _Queue(capacity), self._now())
            self._local[name] = local
        return local

    async def _inbox_reader(  # noqa: ASYNC114 - started in _lifespan, not user-facing
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The one blocking reader of this process's inbox: fans entries out to local buffers.

        Supports ``TaskGroup.start``: started once its connection works.
        """
        shard = self._inbox_shard
        started = False
        while True:
            error: BaseException | None = None
            try:
                async with self._make_client(shard, "inbox", blocking=True) as client:
                    link = _Link(client)
                    self._links.add(link)
                    try:
                        await link.call(
                            b"PING"
                        )  # connected: report it now, not after BLOCK
                        if not started:
                            task_status.started()
                            started = True
                        self._note_up("inbox", shard)
                        while True:
                            # Each reply is routed by _inbox_reply in the connection's
                            # reader task, which sends the next XREAD itself when it
                            # can: this task wakes only when it could not.
                            await link.call(
                                *self._inbox_read(),
                                blocking=True,
                                then=self._inbox_reply,
                            )
                    except _REDIS_ERRORS as exc:
                        error = exc
                    finally:
                        self._links.discard(link)
            except* _REDIS_ERRORS as group:
                error = group.exceptions[0]
            await anyio.lowlevel.checkpoint_if_cancelled()
            if not started:
                assert error is not None
                raise self._connection_error(shard, "connecting", error) from error
            self._note_down("inbox", shard, error)
            await anyio.sleep(_backoff(self._inbox_failures))
            self._inbox_failures += 1

    def _inbox_read(self) -> tuple[bytes, bytes, int, bytes, int, bytes, str, bytes]:
        """The inbox's next blocking ``XREAD``, from the cursor on."""
        return (
            b"XREAD",
            b"COUNT",
            100,
            b"BLOCK",
            self._inbox_block_ms,
            b"STREAMS",
            self._inbox_key,
            self._inbox_cursor,
        )

    def _inbox_reply(
        self, reply: ResponseType
    ) -> tuple[bytes, bytes, int, bytes, int, bytes, str, bytes]:
        """Route an inbox ``XREAD`` reply; the next ``XREAD`` (a ``then`` of ``_Link.call``).

        Runs in the inbox connection's reader task. Entries routed here are in
        local buffers before the next read is sent, so none is lost if it fails.
        """
        self._note_up("inbox", self._inbox_shard)
        self._inbox_failures = 0
        if reply:
            entries = next(iter(cast("dict[bytes, list[Any]]", reply).values()))
            cursor = self._route_inbox(entries)
            self._inbox_cursor = cursor
            self._trim_to = _next_id(cursor)
            self._untrimmed += len(entries)
            if self._untrimmed >= 64:
                self._wake()
        return self._inbox_read()

    def _route_inbox(self, entries: Sequence[tuple[bytes, Any]]) -> bytes:
        now_ms = self._server_now_ms()
        now = self._now()
        last = b"0-0"
        floor = self._inbox_floor
        for entry_id, fields in entries:
            last = entry_id
            if not fields or (floor is not None and _id_key(entry_id) <= floor):
                continue  # an empty marker, or sent before the latest flush()
            values = dict(zip(fields[::2], fields[1::2], strict=True))
            targets = values.get(b"t", b"").decode().split(",")
            age = (now_ms - _entry_ms(entry_id)) / 1000.0
            remaining = self.expiry - age
            if remaining <= 0:
                self._counters.expired += len(targets)
                continue
            plain = self._decode(values.get(b"m", b""), targets[0])
            if plain is None:
                continue
            self._fan_out(plain, targets, now + remaining)
        return last

    def _overflow(self, local: _LocalChannel) -> None:
        """Count and log a message dropped because ``local``'s buffer is full."""
        self._counters.dropped += 1
        self._counts.local_overflow += 1
        now = self._now()
        target = local.name
        if now - self._last_overflow_log.get(target, -math.inf) > 10.0:
            self._last_overflow_log[target] = now
            _log.warning(
                "dropped a message for %s: its buffer is full (capacity %d); "
                "the consumer is not keeping up",
                target,
                local.capacity,
            )
        self._check_full(local)

    def _check_drained(self, local: _LocalChannel) -> None:
        """Unmark ``local`` in Redis once its buffer is down to half (see ``_check_full``)."""
        if local.flagged and len(local.queue.items) <= local.capacity // 2:
            local.flagged = False
            self._flag_changes[local.name] = False
            self._wake()

    def _check_full(self, local: _LocalChannel) -> None:
        """Mark ``local`` full in Redis once its buffer is full (see the class docstring)."""
        if not local.flagged and len(local.queue.items) >= local.capacity:
            local.flagged = True
            self._flag_changes[local.name] = True
            self._wake()

    # ----------------------------------------------------------- worker channels

    def _worker(self, channel: str) -> _WorkerChannel:
        wc = self._workers.get(channel)
        if wc is None:
            wc = _WorkerChannel(
                name=channel,
                key=self._worker_key(channel),
                shard=self._shard_for(channel),
                delivery=self.get_delivery(channel),
                queue=_Queue(math.inf),
                last_active=self._now(),
            )
            self._workers[channel] = wc
        return wc

    def _start_worker_reader(self, wc: _WorkerChannel) -> None:
        if not wc.reader_running and self._tg is not None:
            wc.reader_running = True
            self._tg.start_soon(self._worker_reader, wc)

    async def _worker_reader(self, wc: _WorkerChannel) -> None:
        """The blocking reader of one normal channel; fetches only what waiting receivers need."""
        await anyio.lowlevel.checkpoint()
        source = f"channel {wc.name}"
        failures = 0
        try:
            while not self._closed:
                error: BaseException | None = None
                try:
                    async with self._make_client(
                        wc.shard, "worker", blocking=True
                    ) as client:
                        link = _Link(client)
                        self._links.add(link)
                        try:
                            while True:
                                try:
                                    await link.script(
                                        "ensure_group",
                                        [wc.key],
                                        [self._expiry_ms],
                                    )
                                    await self._recover_pending(wc, link)
                                    self._note_up(source, wc.shard)
                                    failures = 0
                                    if not await self._worker_loop(wc, link):
                                        return
                                except (
                                    coredis.exceptions.StreamConsumerGroupError,
                                    coredis.exceptions.UnblockedError,
                                ):
                                    # The stream expired or was flushed: recreate the group.
                                    await anyio.lowlevel.checkpoint()
                        except _REDIS_ERRORS as exc:
                            error = exc
                        finally:
                            self._links.discard(link)
                except* _REDIS_ERRORS as group:
                    error = group.exceptions[0]
                # coredis turns a cancelled connection attempt into ConnectionError:
                # let a pending cancellation (shutdown) win before reporting anything.
                await anyio.lowlevel.checkpoint_if_cancelled()
                self._note_down(source, wc.shard, error)
                await anyio.sleep(_backoff(failures))
                failures += 1
        finally:
            wc.reader_running = False
            self._down_since.pop(source, None)

    async def _worker_loop(self, wc: _WorkerChannel, link: _Link) -> bool:
        """Serve ``wc`` until it has been idle for ``visibility_timeout`` (returns False)."""
        await anyio.lowlevel.checkpoint()
        block_ms = max(1, int(min(self.block_time, self.visibility_timeout / 2) * 1000))
        while True:
            if self._closed:
                return False
            if wc.handover_unknown is not None and not wc.fetching:
                # A receiver's read_take (_fetch_for_receiver) lost its reply.
                await self._recover_pending(wc, link)
                continue
            # Receivers still waiting, minus items fetched for them and not yet
            # taken (a receiver handed an item may not have resumed yet).
            need = wc.waiting - wc.outstanding
            if need <= 0 or wc.fetching:
                grace = min(_HANDOFF_GRACE, self.visibility_timeout)
                stranded = wc.waiting == 0 and bool(wc.queue.items)
                ll = _lowlevel()
                wc.link = link  # receivers may run read_take meanwhile
                try:
                    with _deadline_scope(
                        ll.current_time()
                        + (grace if stranded else self.visibility_timeout)
                    ):
                        await wc.demand.wait()
                finally:
                    wc.link = None
                wc.demand = ll.Event()
                idle = self._now() - wc.last_active
                if wc.waiting == 0 and wc.queue.items and idle >= grace:
                    # Fetched for receivers that left: let other processes have them.
                    items = _drain_worker(wc)
                    if wc.delivery == "at-most-once":
                        await self._requeue(wc, items)
                    else:  # no longer renewed: claimable after visibility_timeout
                        wc.leased.difference_update(
                            i.entry_id for i in items if i.entry_id
                        )
                if wc.waiting == 0 and idle >= self.visibility_timeout:
                    return False
                continue
            now = self._now()
            if now >= wc.next_claim:
                wc.next_claim = now + self.visibility_timeout / 2
                if await self._claim(wc, link, need):
                    continue
            if wc.delivery == "at-most-once" and await self._read_take(wc, link, need):
                continue
            epoch = self._flush_epoch
            reply = await link.call(
                b"XREADGROUP",
                b"GROUP",
                _GROUP,
                self._proc,
                b"COUNT",
                need,
                b"BLOCK",
                block_ms,
                b"STREAMS",
                wc.key,
                b">",
                blocking=True,
            )
            if reply:
                entries = next(iter(cast("dict[bytes, list[Any]]", reply).values()))
                await self._accept(wc, [(e[0], e[1]) for e in entries], epoch)

    def _handover_key(self, wc: _WorkerChannel) -> str:
        return f"{wc.key}:h:{self._proc}"

    async def _read_take(self, wc: _WorkerChannel, link: _Link, need: int) -> bool:
        """Fetch and take waiting at-most-once entries in one script call; True if any came.

        One round trip instead of two (a read, then ``take``). The script
        also keeps the batch in this consumer's hand-over key until the next
        call, so that a reply lost with the connection is recovered by
        :meth:`_recover_pending` (the entries are no longer pending for
        anyone to claim).
        """
        wc.handover_token += 1
        token = wc.handover_token
        wc.handover_unknown = token
        epoch = self._flush_epoch
        reply = cast(
            "list[list[Any]]",
            await link.script(
                "read_take",
                [wc.key, self._handover_key(wc)],
                [self._proc, need, token, self._expiry_ms],
            ),
        )
        wc.handover_unknown = None
        entries = [(e[0], [b"m", e[1]]) for e in reply]
        await self._accept(wc, entries, epoch, taken=True)
        return bool(entries)

    async def _recover_pending(self, wc: _WorkerChannel, link: _Link) -> None:
        """Deliver entries fetched for this process whose reply was lost with a connection."""
        epoch = self._flush_epoch
        if wc.handover_unknown is not None:
            # The reply of a read_take call never arrived: its batch, if it ran.
            saved = cast(
                "list[bytes]",
                await link.call(b"LRANGE", self._handover_key(wc), 0, -1),
            )
            if saved and int(saved[0]) == wc.handover_unknown:
                entries = [
                    (entry_id, [b"m", body])
                    for entry_id, body in zip(saved[1::2], saved[2::2], strict=True)
                ]
                await self._accept(wc, entries, epoch, taken=True)
            wc.handover_unknown = None
        reply = await link.call(
            b"XREADGROUP",
            b"GROUP",
            _GROUP,
            self._proc,
            b"COUNT",
            10_000,
            b"STREAMS",
            wc.key,
            b"0",
        )
        if not reply:
            return
        entries = next(iter(cast("dict[bytes, list[Any]]", reply).values()))
        fresh = [(e[0], e[1]) for e in entries if e[0] not in wc.leased]
        gone = [entry_id for entry_id, fields in fresh if not fields]
        if gone:  # deleted (trimmed) while pending: drop the dangling references
            await link.script("ack", [wc.key], gone)
        await self._accept(wc, [(i, f) for i, f in fresh if f], epoch)

    async def _claim(self, wc: _WorkerChannel, link: _Link, need: int) -> bool:
        """Claim entries idle past ``visibility_timeout``; True if any were delivered."""
        max_deliveries = self.max_deliveries if wc.delivery == "at-least-once" else 0
        epoch = self._flush_epoch
        reply = cast(
            "list[Any]",
            await link.script(
                "claim",
                [wc.key, wc.key + ":dead"],
                [
                    self._proc,
                    int(self.visibility_timeout * 1000),
                    need,
                    max_deliveries,
                    10_000,
                    7 * 86_400_000,
                ],
            ),
        )
        claimed, dead = reply
        if dead:
            self._counts.dead_lettered += dead
            _log.warning(
                "moved %d message(s) of %s to its dead-letter stream after %d deliveries",
                dead,
                wc.name,
                self.max_deliveries,
            )
        entries = [(e[0], [b"m", e[1]]) for e in claimed if e[0] not in wc.leased]
        for e in claimed:
            if e[0] in wc.leased:  # still ours (renewal was late): keep it
                continue
            if wc.delivery == "at-least-once":
                _log.info(
                    "redelivering %s entry %s (delivery %d)",
                    wc.name,
                    e[0].decode(),
                    e[2],
                )
        await self._accept(wc, entries, epoch)
        return bool(entries)

    async def _accept(  # noqa: ASYNC910 - taken=True: the read_take call was the checkpoint
        self,
        wc: _WorkerChannel,
        entries: Sequence[tuple[bytes, Any]],
        epoch: int,
        *,
        taken: bool = False,
    ) -> None:
        """Decode fetched entries and buffer them (acknowledging first if at-most-once).

        ``taken``: at-most-once entries already acknowledged and deleted
        (``read_take``, whose call was the checkpoint). Entries read before a
        ``flush()`` that completed meanwhile are dropped.
        """
        if not taken:
            await anyio.lowlevel.checkpoint()
        if not entries or epoch != self._flush_epoch:
            return  # noqa: ASYNC910 - see taken above
        if wc.delivery == "at-most-once" and not taken:
            ours = await self._ack_until_done(wc, [e[0] for e in entries])
            entries = [e for e in entries if e[0] in ours]
        now_ms = self._server_now_ms()
        now = self._now()
        drop: list[bytes] = []
        for entry_id, fields in entries:
            values = dict(zip(fields[::2], fields[1::2], strict=True))
            remaining = self.expiry - (now_ms - _entry_ms(entry_id)) / 1000.0
            if remaining <= 0:
                self._counters.expired += 1
                drop.append(entry_id)
                continue
            plain = self._decode(values.get(b"m", b""), wc.name)
            message = None if plain is None else self._loads(plain, wc.name)
            if message is None:
                drop.append(entry_id)
                continue
            if wc.delivery == "at-least-once":
                wc.leased.add(entry_id)
                wc.queue.put_nowait(_Item(now + remaining, message, entry_id))
                wc.outstanding += 1
            else:
                wc.queue.put_nowait(_Item(now + remaining, message))
                wc.outstanding += 1
        if drop and wc.delivery == "at-least-once":
            await self._run_idempotent(wc.shard, "acknowledging", "ack", [wc.key], drop)
        if self._closed and wc.delivery == "at-most-once":
            # Fetched while closing: _release_workers may already have run.
            await self._requeue(wc, _drain_worker(wc))

    async def _ack_until_done(
        self, wc: _WorkerChannel, ids: Sequence[bytes]
    ) -> set[bytes]:
        """Take at-most-once entries (acknowledge and delete) before handing them over.

        Retried until it works. Returns the ids that are this process's to
        deliver: never one that another process claimed meanwhile, so an
        entry is never delivered twice.
        """
        failures = 0
        started = self._now()
        while True:
            try:
                reply = await self._run(
                    wc.shard, "acknowledging", "take", [wc.key], [self._proc, *ids]
                )
            except LayerConnectionError as exc:
                self._note_down(f"channel {wc.name}", wc.shard, exc)
                await anyio.sleep(_backoff(failures))
                failures += 1
                continue
            if failures:
                self._note_up(f"channel {wc.name}", wc.shard)
            # "No longer pending" after a retry: our lost attempt took it, unless
            # it has been idle long enough for another process to claim it.
            ours_if_gone = (
                failures > 0 and self._now() - started < self.visibility_timeout
            )
            taken = {
                entry_id
                for entry_id, status in zip(ids, cast("list[int]", reply), strict=True)
                if status == 1 or (status == 0 and ours_if_gone)
            }
            if len(taken) < len(ids):
                _log.info(
                    "%d message(s) of %s fetched by this process were taken over "
                    "by another process (or flushed) before this one could take them",
                    len(ids) - len(taken),
                    wc.name,
                )
            return taken

    async def _requeue(self, wc: _WorkerChannel, items: Sequence[_Item]) -> None:
        """Append stranded at-most-once messages to their stream again (order is lost)."""
        await anyio.lowlevel.checkpoint()
        batch = [
            _PendingSend(
                key=wc.key,
                kind="r",
                capacity=0,
                target="",
                body=self._encode(item.message),
            )
            for item in items
        ]
        try:
            await self._send_batch(wc.shard, batch)
        except LayerConnectionError as exc:
            self._counters.dropped += len(batch)
            _log.warning(
                "lost %d buffered message(s) of %s: %s", len(batch), wc.name, exc
            )
        else:
            self._counts.requeued += len(batch)

    # ----------------------------------------------------------- housekeeping

    async def _housekeeper(self) -> None:
        """Trims the inbox, keeps it alive, renews leases, flushes acks and flags, sweeps buffers."""
        refresh = min(self._inbox_ttl_ms / 4000.0, 5.0)
        renew = self.visibility_timeout / 3
        tick = min(1.0, refresh, renew)
        next_keepalive = next_renew = next_sweep = next_clock = 0.0
        failures = 0
        while True:
            with anyio.move_on_after(tick if failures == 0 else _backoff(failures)):
                await self._hk_event.wait()
            self._hk_event = anyio.Event()
            now = self._now()
            self._check_deadline()
            try:
                await self._flush_trim()
                await self._flush_flags()
                await self._flush_acks()
                if now >= next_keepalive:
                    next_keepalive = now + refresh
                    created = await self._run(
                        self._inbox_shard,
                        "keeping the inbox alive",
                        "keepalive",
                        [self._inbox_key, self._full_key],
                        [self._inbox_ttl_ms],
                    )
                    if created:
                        _log.warning(
                            "the inbox %s had vanished and was recreated",
                            self._inbox_key,
                        )
                if now >= next_renew:
                    next_renew = now + renew
                    await self._renew_leases()
                if now >= next_sweep:
                    next_sweep = now + min(self.expiry, 10.0)
                    self._sweep()
                if now >= next_clock:
                    next_clock = now + 60.0
                    await self._sync_clock()
                failures = 0
            except LayerConnectionError as exc:
                failures += 1
                next_keepalive = next_renew = next_clock = (
                    0.0  # retry all after the backoff
                )
                _log.debug("housekeeping failed (will retry): %s", exc)

    async def _flush_trim(self) -> None:
        await anyio.lowlevel.checkpoint()
        if self._trim_to is None:
            return
        trim_to, self._trim_to = self._trim_to, None
        self._untrimmed = 0
        shard = self._inbox_shard
        assert shard.link is not None
        try:
            await shard.link.call(b"XTRIM", self._inbox_key, b"MINID", trim_to)
        except _REDIS_ERRORS as exc:
            if self._trim_to is None:
                self._trim_to = trim_to
            raise self._connection_error(shard, "trimming the inbox", exc) from exc

    async def _flush_flags(self) -> None:
        await anyio.lowlevel.checkpoint()
        if not self._flag_changes:
            return
        changes, self._flag_changes = self._flag_changes, {}
        adds = [c for c, full in changes.items() if full]
        removes = [c for c, full in changes.items() if not full]
        try:
            await self._run(
                self._inbox_shard,
                "marking full channels",
                "flags",
                [self._full_key],
                [self._inbox_ttl_ms, len(adds), *adds, *removes],
            )
        except LayerConnectionError:
            for channel, full in changes.items():
                self._flag_changes.setdefault(channel, full)
            raise

    async def _flush_acks(self) -> None:
        await anyio.lowlevel.checkpoint()
        while self._pending_acks:
            channel, ids = self._pending_acks.popitem()
            wc = self._workers.get(channel)
            if wc is None:
                continue
            try:
                await self._run(wc.shard, "acknowledging", "ack", [wc.key], ids)
            except LayerConnectionError:
                self._pending_acks.setdefault(channel, []).extend(ids)
                raise
            wc.leased.difference_update(ids)

    async def _renew_leases(self) -> None:
        await anyio.lowlevel.checkpoint()
        for wc in list(self._workers.values()):
            if not wc.leased:
                continue
            ids = sorted(wc.leased)
            lost = cast(
                "list[bytes]",
                await self._run(
                    wc.shard, "renewing leases", "renew", [wc.key], [self._proc, *ids]
                ),
            )
            if lost:
                wc.leased.difference_update(lost)
                _log.warning(
                    "lost the lease of %d message(s) on %s (held past visibility_timeout "
                    "without renewal); another reader may deliver them again",
                    len(lost),
                    wc.name,
                )

    def _sweep(self) -> None:
        """Forget ``!`` buffers nobody has waited on for ``expiry`` whose messages all expired."""
        now = self._now()
        for group, members in list(self._memberships.items()):
            for channel, deadline in list(members.items()):
                if deadline <= now:
                    del members[channel]
            if not members:
                del self._memberships[group]
        for name, local in list(self._local.items()):
            if (
                local.waiting == 0
                and now - local.last_active > self.expiry
                and local.last_deadline < now
            ):
                self._counters.expired += len(local.queue.drain())
                del self._local[name]
                self._last_overflow_log.pop(name, None)
                if local.flagged:
                    self._flag_changes[name] = False
        for name, wc in list(self._workers.items()):
            if (
                not wc.reader_running
                and wc.waiting == 0
                and not wc.leased
                and not wc.queue.items
                and now - wc.last_active > self.expiry
            ):
                del self._workers[name]


# --------------------------------------------------------------------------- module helpers


async def _concurrently(
    calls: Sequence[typing.Callable[[], typing.Awaitable[None]]],
) -> None:
    """Await ``calls`` concurrently (one per host); re-raise the first failure plain.

    The others still run to completion: a multi-host operation that fails on
    one host may have succeeded on the rest.
    """
    if len(calls) == 1:
        await calls[0]()
        return
    errors: list[Exception] = []

    async def run(call: typing.Callable[[], typing.Awaitable[None]]) -> None:
        try:
            await call()
        except Exception as exc:  # collected, re-raised below
            errors.append(exc)
            await anyio.lowlevel.cancel_shielded_checkpoint()

    async with anyio.create_task_group() as tg:
        for call in calls:
            tg.start_soon(run, call)
    if errors:
        raise errors[0]


def _drain_worker(wc: _WorkerChannel) -> list[_Item]:
    items = wc.queue.drain()
    wc.outstanding -= len(items)
    return items


def _backoff(failures: int) -> float:
    """50 ms doubling to 2 s, with jitter in [50 %, 100 %]."""
    return min(2.0, 0.05 * (1 << min(failures, 10))) * random.uniform(0.5, 1.0)


def _positive_float(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value < math.inf
    ):
        msg = f"{name} is {value!r}, which is not a positive finite number"
        raise InvalidChannelLayerError(msg)
    return float(value)


def _make_fernet(keys: Sequence[str | bytes] | None) -> MultiFernet | None:
    if keys is None:
        return None
    if isinstance(keys, str | bytes) or not isinstance(keys, Sequence):
        msg = "symmetric_encryption_keys must be a list of keys (the first encrypts, all decrypt), not a single key"
        raise InvalidChannelLayerError(msg)
    if not keys:
        msg = "symmetric_encryption_keys is empty; give at least one key or None"
        raise InvalidChannelLayerError(msg)
    try:
        from cryptography.fernet import Fernet, MultiFernet
    except ImportError:  # pragma: no cover - cryptography is a declared extra
        msg = "symmetric_encryption_keys needs the 'cryptography' package (pip install trichannels[crypto])"
        raise InvalidChannelLayerError(msg) from None
    fernets = []
    for key in keys:
        if not isinstance(key, str | bytes) or not key:
            msg = "each symmetric encryption key must be a non-empty str or bytes"
            raise InvalidChannelLayerError(msg)
        raw = key.encode() if isinstance(key, str) else key
        fernets.append(Fernet(base64.urlsafe_b64encode(hashlib.sha256(raw).digest())))
    return MultiFernet(fernets)
