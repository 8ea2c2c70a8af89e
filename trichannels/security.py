"""Origin checks for WebSocket handshakes (cross-site WebSocket hijacking protection).

Browsers attach cookies to a WebSocket handshake whatever page opened it, and
the same-origin policy does not apply to WebSockets, so a hostile page can open
an authenticated socket to your server. The ``Origin`` header is what tells the
server which page did. :class:`OriginValidator` admits a handshake only when
that origin is on an allow list; :class:`AllowedHostsOriginValidator` takes
the list in Django's ``ALLOWED_HOSTS`` form.

Only ``websocket`` connections are checked: ``http`` (and every other type)
passes through untouched, with the very same scope object. Protect HTTP
endpoints with CSRF tokens or CORS instead.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final, Literal

import attrs

from trichannels._validation import short_repr
from trichannels.exceptions import ConfigurationError

if TYPE_CHECKING:
    from trichannels.types import ASGIApp, Receive, Scope, Send

__all__ = ["AllowedHostsOriginValidator", "OriginValidator"]

logger = logging.getLogger("trichannels.security")

_DEFAULT_PORTS: Final = {"http": 80, "ws": 80, "https": 443, "wss": 443}
_SCHEME_RE: Final = re.compile(r"[a-z][a-z0-9+.-]*")
_HOST_RE: Final = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_ORIGIN_RE: Final = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>\[[0-9a-f:.]+\]|[a-z0-9_-]+(?:\.[a-z0-9_-]+)*)"
    r"(?::(?P<port>[0-9]{1,5}))?"
)
_MISSING: Final = "no Origin header"
_DENIAL_BODY: Final = b"Forbidden: this origin may not open a WebSocket here\n"
_LOG_LIMIT: Final = 100


@attrs.frozen
class _Origin:
    scheme: str
    host: str  # lowercase; IPv6 without brackets
    port: int | None  # the effective port: explicit, or the scheme's default

    def serialise(self) -> str:
        """Return ``scheme://host:port`` (with the effective port), or ``null``."""
        if self.is_null:
            return "null"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}" + (
            "" if self.port is None else f":{self.port}"
        )

    @property
    def is_null(self) -> bool:
        """Whether this is the opaque origin, serialised as ``null``."""
        return self.scheme == "null"

    @classmethod
    def parse(cls, text: str) -> _Origin | None:
        """Parse a serialised origin, ``scheme://host[:port]`` or ``null`` (RFC 6454); ``None`` if malformed."""
        if text.lower() == "null":
            return _NULL
        match = _ORIGIN_RE.fullmatch(text.lower())
        if match is None:
            return None
        host = _parse_host(match["host"])
        port = _parse_port(match["port"])
        if host is None or port is False:
            return None
        scheme = match["scheme"]
        return cls(scheme, host, _DEFAULT_PORTS.get(scheme) if port is None else port)


_NULL: Final = _Origin("null", "", None)


def _parse_host(host: str) -> str | None:
    if host.startswith("["):
        try:
            return str(ipaddress.IPv6Address(host[1:-1]))
        except ValueError:
            return None
    return host


def _parse_port(port: str | None) -> int | Literal[False] | None:
    if port is None:
        return None
    number = int(port)
    return number if 0 < number <= 65535 else False


@attrs.frozen
class _Pattern:
    kind: Literal["any", "null", "host"]
    scheme: str | None = None
    host: str = ""
    host_mode: Literal["exact", "domain", "subdomains"] = "exact"
    port: int | None = (
        None  # effective port to require; None: any (bare host without port)
    )

    def matches(self, origin: _Origin) -> bool:
        if self.kind == "any":
            return not origin.is_null
        if self.kind == "null" or origin.is_null:
            return self.kind == "null" and origin.is_null
        if self.scheme is not None and origin.scheme != self.scheme:
            return False
        if self.port is not None and origin.port != self.port:
            return False
        if self.host_mode == "exact":
            return origin.host == self.host
        if self.host_mode == "subdomains":
            return origin.host.endswith("." + self.host)
        return origin.host == self.host or origin.host.endswith("." + self.host)


def _parse_pattern(pattern: object, *, what: str, hosts_only: bool) -> _Pattern:
    def bad(reason: str) -> ConfigurationError:
        return ConfigurationError(f"invalid {what} {pattern!r}: {reason}")

    if not isinstance(pattern, str):
        raise bad("it must be a str")
    if pattern == "*":
        return _Pattern("any")
    if not pattern:
        raise bad("it is empty")
    if not pattern.isascii():
        raise bad("write international domain names in their punycode (xn--) form")
    text = pattern.lower()
    if text == "null" and not hosts_only:
        return _Pattern("null")
    scheme: str | None = None
    if "://" in text:
        if hosts_only:
            raise bad(
                "an allowed host has no scheme; use OriginValidator for 'scheme://host'"
            )
        scheme, _, text = text.partition("://")
        if not _SCHEME_RE.fullmatch(scheme):
            raise bad(f"{scheme!r} is not a URL scheme")
    if any(c in text for c in "/?#@"):
        raise bad("an origin has no path, query, fragment or user info")
    port: int | None = None
    host = text
    if text.startswith("["):
        host, _, rest = text.partition("]")
        host += "]"
        if rest:
            if not rest.startswith(":"):
                raise bad("unexpected text after the IPv6 address")
            port = _pattern_port(rest[1:])
            if port is None:
                raise bad("the port must be a number from 1 to 65535")
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
        port = _pattern_port(port_text)
        if port is None:
            raise bad("the port must be a number from 1 to 65535")
    if port is not None and hosts_only:
        raise bad("an allowed host has no port (any port is allowed)")
    host_mode: Literal["exact", "domain", "subdomains"] = "exact"
    if host.startswith("*."):
        host_mode, host = "subdomains", host[2:]
    elif host.startswith("."):
        host_mode, host = "domain", host[1:]
    if "*" in host:
        raise bad(
            "'*' is allowed only alone or as a leading '*.' label ('*.example.com')"
        )
    if host.startswith("["):
        if host_mode != "exact":
            raise bad("an IP address cannot have subdomains")
        parsed = _parse_host(host)
        if parsed is None:
            raise bad(f"{host!r} is not an IPv6 address")
        host = parsed
    elif not _HOST_RE.fullmatch(host):
        raise bad(f"{host!r} is not a host name")
    if port is None and scheme is not None:
        port = _DEFAULT_PORTS.get(scheme)
    return _Pattern("host", scheme, host, host_mode, port)


def _pattern_port(text: str) -> int | None:
    return int(text) if text.isdigit() and 0 < int(text) <= 65535 else None


def _origin_of(scope: Scope) -> _Origin | str:
    """Return the parsed origin, or a string saying why there is none."""
    values = [
        value for name, value in scope.get("headers") or [] if name.lower() == b"origin"
    ]
    if not values:
        return _MISSING
    if len(values) > 1:
        return f"{len(values)} Origin headers"
    raw = values[0]
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        return f"malformed Origin header {_short(raw)}"
    origin = _Origin.parse(text)
    if origin is None:
        return f"malformed Origin header {_short(raw)}"
    return origin


def _short(value: object) -> str:
    return short_repr(value, _LOG_LIMIT)


class OriginValidator:
    """Admit a WebSocket handshake only from an allowed ``Origin``.

    Each entry of ``allowed_origins`` is one of:

    ``"*"``
        any well-formed origin (not ``null``, not a missing or malformed
        header).
    ``"null"``
        the opaque origin browsers send from sandboxed frames and ``file:``
        pages (``Origin: null``). Admit it only deliberately.
    ``"example.com"``
        that host, with any scheme and port.
    ``".example.com"``
        ``example.com`` and all its subdomains, any scheme and port
        (Django's notation).
    ``"*.example.com"``
        the subdomains of ``example.com`` (at any depth), not
        ``example.com`` itself.
    ``"example.com:8080"``
        the host (or a ``.``/``*.`` pattern) on that port only, any scheme.
    ``"https://example.com"``, ``"https://*.example.com:8443"``
        scheme, host pattern and port must all match; a missing port means
        the scheme's default (80 for ``http``/``ws``, 443 for
        ``https``/``wss``), so ``https://example.com`` admits
        ``https://example.com:443`` but not ``https://example.com:8443``.

    Host names compare case-insensitively; IPv6 addresses go in brackets
    (``"[::1]"``). International names must be written in punycode, as
    browsers send them.

    The ``Origin`` header must be a serialised origin, ``scheme://host[:port]``
    (RFC 6454), exactly once. A missing header is refused unless
    ``allow_missing_origin=True`` (non-browser clients often send none; a
    browser always does). Several ``Origin`` headers, or a malformed one, are
    always refused.

    Refusal happens before accept: the validator reads ``websocket.connect``
    and answers with an HTTP 403 response through the
    ``websocket.http.response`` extension when the server offers it (Hypercorn
    does), or else with ``websocket.close`` (code 1008), which servers turn into
    a 403. The inner application is never called, and the refusal is logged at
    info on ``trichannels.security`` (origin and path, truncated).

    Differences from Channels: ``"*.example.com"`` works; ``"*"`` no longer
    admits a missing or malformed ``Origin`` (use ``allow_missing_origin``);
    a port in a bare-host pattern is honoured instead of ignored; several
    ``Origin`` headers are refused instead of using the last; non-WebSocket
    connections pass through instead of raising ``ValueError``.

    Args:
        app: the ASGI application to protect.
        allowed_origins: the origin patterns above (an iterable of ``str``).
        allow_missing_origin: admit handshakes without an ``Origin`` header.

    Raises:
        TypeError: ``app`` is not callable.
        ConfigurationError: ``allowed_origins`` is a single string, is empty,
            or holds an invalid pattern (named, with the reason).

    Example::

        application = ProtocolTypeRouter({
            "websocket": OriginValidator(
                URLRouter(websocket_urls),
                ["https://example.com", "https://*.example.com"],
            ),
        })
    """

    _what = "origin pattern"
    _hosts_only = False

    def __init__(
        self,
        app: ASGIApp,
        allowed_origins: Iterable[str],
        *,
        allow_missing_origin: bool = False,
    ) -> None:
        if not callable(app):
            raise TypeError(
                f"app must be an ASGI application (a callable), got {app!r}"
            )
        name = "allowed_hosts" if self._hosts_only else "allowed_origins"
        if isinstance(allowed_origins, str | bytes):
            raise ConfigurationError(
                f"{name} must be a list of patterns, not the single string {allowed_origins!r}"
            )
        patterns = list(allowed_origins)
        if not patterns:
            raise ConfigurationError(
                f"{name} is empty, so every WebSocket handshake would be refused; "
                "list at least one pattern"
            )
        self.app = app
        self.allowed_origins = patterns
        self.allow_missing_origin = allow_missing_origin
        self._patterns = [
            _parse_pattern(p, what=self._what, hosts_only=self._hosts_only)
            for p in patterns
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check a ``websocket`` connection's origin; pass anything else straight through."""
        if scope.get("type") != "websocket":
            await self.app(scope, receive, send)
            return
        origin = _origin_of(scope)
        if isinstance(origin, _Origin):
            if any(pattern.matches(origin) for pattern in self._patterns):
                await self.app(scope, receive, send)
                return
            reason = f"origin {_short(origin.serialise())} is not allowed"
        elif origin == _MISSING and self.allow_missing_origin:
            await self.app(scope, receive, send)
            return
        else:
            reason = origin
        logger.info(
            "refused a WebSocket handshake to %s: %s",
            _short(scope.get("path", "")),
            reason,
        )
        await self._deny(scope, receive, send)

    def valid_origin(self, origin: str | None) -> bool:
        """Return whether a handshake with this ``Origin`` header value (``None``: absent) is admitted.

        Not a checkpoint. Useful in tests and for checking configuration.
        """
        if origin is None:
            return self.allow_missing_origin
        parsed = _Origin.parse(origin.strip())
        return parsed is not None and any(p.matches(parsed) for p in self._patterns)

    @staticmethod
    async def _deny(scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message.get("type") != "websocket.connect":
            return  # the client left before the handshake was answered
        if "websocket.http.response" in (scope.get("extensions") or {}):
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": 403,
                    "headers": [
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", str(len(_DENIAL_BODY)).encode("ascii")),
                    ],
                }
            )
            await send({"type": "websocket.http.response.body", "body": _DENIAL_BODY})
        else:
            await send({"type": "websocket.close", "code": 1008})


class AllowedHostsOriginValidator(OriginValidator):
    """:class:`OriginValidator` configured with host names in Django's ``ALLOWED_HOSTS`` form.

    Each entry is ``"*"``, a host (``"example.com"``, ``"127.0.0.1"``,
    ``"[::1]"``), ``".example.com"`` (the domain and its subdomains) or
    ``"*.example.com"`` (subdomains only); any scheme and any port match.
    Unlike Channels there is no settings module and no ``DEBUG`` fallback: pass
    the list (``["localhost", "127.0.0.1", "[::1]"]`` for development).

    Args:
        app: the ASGI application to protect.
        allowed_hosts: the host patterns.
        allow_missing_origin: admit handshakes without an ``Origin`` header.

    Raises:
        TypeError: ``app`` is not callable.
        ConfigurationError: ``allowed_hosts`` is a single string, is empty, or
            holds an entry with a scheme, a port or another error (named).
    """

    _what = "allowed host"
    _hosts_only = True

    def __init__(
        self,
        app: ASGIApp,
        allowed_hosts: Iterable[str],
        *,
        allow_missing_origin: bool = False,
    ) -> None:
        super().__init__(app, allowed_hosts, allow_missing_origin=allow_missing_origin)
