"""Cookies and sessions: ``scope["cookies"]``, ``scope["session"]`` and pluggable session stores.

* :class:`CookieMiddleware` parses the request's ``Cookie`` header(s) into
  ``scope["cookies"]``; :func:`set_cookie` and :func:`delete_cookie` add a
  ``set-cookie`` header to a response's header list.
* :class:`SessionMiddleware` puts a :class:`Session` (a mutable mapping with
  ``await session.save()``) in ``scope["session"]``, backed by a
  :class:`SessionStore`:

  - :class:`SignedCookieSessionStore` keeps the data in the cookie itself,
    signed with HMAC-SHA256 and timestamped (nothing to run; a tampered or
    expired cookie is rejected, logged and treated as an empty session);
  - :class:`RedisSessionStore` keeps it in Redis (through coredis) under a
    random key, with a TTL.

When the session cookie reaches the client: a modified session is saved and
its cookie set automatically on ``http.response.start`` (HTTP) and on
``websocket.accept`` (the WebSocket handshake response). After that the
cookie can no longer change: see :class:`Session` for what ``save()`` does
then.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    Literal,
    Protocol,
    final,
    runtime_checkable,
)

import anyio.lowlevel

from trichannels.exceptions import ConfigurationError, TrichannelsError
from trichannels.middleware import BaseMiddleware

if TYPE_CHECKING:
    import coredis
    from coredis.tokens import PureToken

    from trichannels.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "CookieMiddleware",
    "RedisSessionStore",
    "Session",
    "SessionGone",
    "SessionMiddleware",
    "SessionMiddlewareStack",
    "SessionStore",
    "SignedCookieSessionStore",
    "delete_cookie",
    "parse_cookie",
    "set_cookie",
]

logger = logging.getLogger("trichannels.sessions")

_DEFAULT_MAX_AGE: Final = 14 * 24 * 3600  # two weeks, Django's SESSION_COOKIE_AGE
_EPOCH: Final = "Thu, 01 Jan 1970 00:00:00 GMT"

# RFC 6265 §4.1.1: cookie-name is an RFC 7230 token; cookie-octet excludes
# controls, whitespace, DQUOTE, comma, semicolon, backslash and non-ASCII.
_TOKEN_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_OCTETS: Final = r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*"
_COOKIE_VALUE_RE: Final = re.compile(rf'"{_OCTETS}"|{_OCTETS}')
_PATH_RE: Final = re.compile(r"[\x20-\x3a\x3c-\x7e]*")  # any printable ASCII but ';'
_DOMAIN_RE: Final = re.compile(
    r"\.?[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
)
_SAMESITE: Final = {"strict": "Strict", "lax": "Lax", "none": "None"}
_QUOTED_ESCAPE_RE: Final = re.compile(r"\\(?:([0-7]{3})|(.))")


# -- cookies --------------------------------------------------------------------------


def _unquote(value: str) -> str:
    """Strip one pair of surrounding double quotes and undo ``\\ooo``/``\\x`` escapes.

    The escapes are the ones Python's :mod:`http.cookies` (and so Django) writes.
    """
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    return _QUOTED_ESCAPE_RE.sub(
        lambda m: chr(int(m.group(1), 8)) if m.group(1) else m.group(2), value[1:-1]
    )


def parse_cookie(header: str) -> dict[str, str]:
    """Parse the value of a ``Cookie`` request header into a ``{name: value}`` dict.

    Lenient, as browsers are: pairs are split on ``;``, names and values are
    stripped of surrounding whitespace, a value may contain ``=``, one pair of
    double quotes around a value is removed, a chunk without ``=`` is a cookie
    with an empty name (Django's rule), empty chunks are skipped. When a name
    repeats, the **first** occurrence wins: browsers send the most specific
    cookie (longest path) first (RFC 6265 §5.4).

    Example::

        >>> parse_cookie('a=1; b="x y"; a=2')
        {'a': '1', 'b': 'x y'}
    """
    cookies: dict[str, str] = {}
    for chunk in header.split(";"):
        name, sep, value = chunk.partition("=")
        if not sep:
            name, value = "", chunk
        name, value = name.strip(), value.strip()
        if name or value:
            cookies.setdefault(name, _unquote(value))
    return cookies


def _check_headers_list(headers: object) -> list[tuple[bytes, bytes]]:
    if not isinstance(headers, list):
        raise TypeError(
            f"headers must be a list of (bytes, bytes) pairs to append to, got {headers!r}"
        )
    return headers


def _format_cookie(
    name: str,
    value: str,
    *,
    max_age: int | timedelta | None,
    expires: datetime | str | None,
    path: str | None,
    domain: str | None,
    secure: bool,
    httponly: bool,
    samesite: str | None,
) -> bytes:
    if not isinstance(name, str):
        raise TypeError(f"cookie name must be a str, got {name!r}")
    if not _TOKEN_RE.fullmatch(name):
        raise ValueError(
            f"invalid cookie name {name!r}: it must be a non-empty token of ASCII letters, "
            "digits and !#$%&'*+-.^_`|~"
        )
    if not isinstance(value, str):
        raise TypeError(f"cookie value must be a str, got {value!r}")
    if not _COOKIE_VALUE_RE.fullmatch(value):
        raise ValueError(
            f"invalid cookie value {value!r}: only printable ASCII without spaces, '\"', ',', "
            "';' or '\\' is allowed; encode it first (URL-safe base64, for example)"
        )
    parts = [f"{name}={value}"]
    if path is not None:
        if not isinstance(path, str) or not _PATH_RE.fullmatch(path):
            raise ValueError(
                f"invalid cookie path {path!r}: it must be printable ASCII without ';'"
            )
        parts.append(f"Path={path}")
    if domain is not None:
        if not isinstance(domain, str) or not _DOMAIN_RE.fullmatch(domain):
            raise ValueError(
                f"invalid cookie domain {domain!r}: it must be a host name such as "
                "'example.com' or '.example.com'"
            )
        parts.append(f"Domain={domain}")
    if max_age is not None:
        if isinstance(max_age, timedelta):
            seconds = max_age.total_seconds()
        elif isinstance(max_age, int) and not isinstance(max_age, bool):
            seconds = max_age
        else:
            raise TypeError(
                f"max_age must be an int (seconds) or a timedelta, got {max_age!r}"
            )
        if seconds < 0:
            raise ValueError(f"invalid max_age {max_age!r}: it must be >= 0")
        parts.append(f"Max-Age={int(seconds)}")
    if expires is not None:
        if isinstance(expires, datetime):
            if expires.tzinfo is None or expires.utcoffset() is None:
                raise ValueError(
                    f"invalid expires {expires!r}: it must be a timezone-aware datetime"
                )
            parts.append(
                f"Expires={format_datetime(expires.astimezone(UTC), usegmt=True)}"
            )
        elif expires == _EPOCH:
            parts.append(f"Expires={_EPOCH}")
        else:
            raise TypeError(
                f"expires must be a timezone-aware datetime, got {expires!r}"
            )
    if secure:
        parts.append("Secure")
    if httponly:
        parts.append("HttpOnly")
    if samesite is not None:
        label = _SAMESITE.get(samesite.lower()) if isinstance(samesite, str) else None
        if label is None:
            raise ValueError(
                f"invalid samesite {samesite!r}: it must be 'strict', 'lax', 'none' or None"
            )
        if label == "None" and not secure:
            raise ValueError(
                "samesite='none' needs secure=True (browsers reject SameSite=None cookies "
                "without Secure)"
            )
        parts.append(f"SameSite={label}")
    lowered = name.lower()
    if lowered.startswith("__secure-") and not secure:
        raise ValueError(
            f"cookie {name!r} uses the __Secure- prefix and needs secure=True"
        )
    if lowered.startswith("__host-") and (
        not secure or path != "/" or domain is not None
    ):
        raise ValueError(
            f"cookie {name!r} uses the __Host- prefix and needs secure=True, path='/' "
            "and no domain"
        )
    return "; ".join(parts).encode("ascii")


def set_cookie(
    headers: list[tuple[bytes, bytes]],
    name: str,
    value: str,
    *,
    max_age: int | timedelta | None = None,
    expires: datetime | None = None,
    path: str | None = "/",
    domain: str | None = None,
    secure: bool = False,
    httponly: bool = False,
    samesite: str | None = "lax",
) -> None:
    """Append a ``set-cookie`` header to an HTTP response's ``headers`` list.

    Use it on the ``headers`` of an ``http.response.start`` message (or of a
    ``websocket.accept``, where the server supports accept headers). The header
    name is lowercase, as ASGI requires. Not a checkpoint.

    Args:
        headers: the response's header list, modified in place.
        name: the cookie name, an RFC 6265 token.
        value: the cookie value: printable ASCII without spaces, ``"``, ``,``,
            ``;`` or ``\\`` (optionally wrapped in double quotes). Encode
            anything else first; nothing is quoted for you.
        max_age: lifetime in seconds (or a :class:`~datetime.timedelta`);
            ``0`` deletes the cookie. ``None`` (and no ``expires``) makes a
            browser-session cookie.
        expires: an absolute, timezone-aware expiry time.
        path: the ``Path`` attribute, or ``None`` to leave it out.
        domain: the ``Domain`` attribute (``"example.com"`` also covers its
            subdomains), or ``None`` for a host-only cookie.
        secure: add ``Secure`` (HTTPS only).
        httponly: add ``HttpOnly`` (hidden from JavaScript).
        samesite: ``"strict"``, ``"lax"``, ``"none"`` (needs ``secure=True``)
            or ``None`` to leave the attribute out.

    Raises:
        TypeError: ``headers`` is not a list, or an argument has the wrong type.
        ValueError: an invalid name, value, path, domain, ``max_age``,
            ``expires`` or ``samesite``, or a ``__Secure-``/``__Host-`` prefix
            whose rules are not met; the message names the value.

    Example::

        headers = [(b"content-type", b"text/plain")]
        set_cookie(headers, "theme", "dark", max_age=3600, secure=True, httponly=True)
        # headers[-1] == (b"set-cookie",
        #     b"theme=dark; Path=/; Max-Age=3600; Secure; HttpOnly; SameSite=Lax")
    """
    target = _check_headers_list(headers)
    header = _format_cookie(
        name,
        value,
        max_age=max_age,
        expires=expires,
        path=path,
        domain=domain,
        secure=secure,
        httponly=httponly,
        samesite=samesite,
    )
    target.append((b"set-cookie", header))


def delete_cookie(
    headers: list[tuple[bytes, bytes]],
    name: str,
    *,
    path: str | None = "/",
    domain: str | None = None,
    secure: bool = False,
    httponly: bool = False,
    samesite: str | None = "lax",
) -> None:
    """Append a ``set-cookie`` header that makes the browser forget cookie ``name``.

    The cookie is sent empty with ``Max-Age=0`` and an ``Expires`` in 1970.
    ``path`` and ``domain`` must be the ones the cookie was set with.

    Raises:
        TypeError, ValueError: as :func:`set_cookie`.
    """
    target = _check_headers_list(headers)
    header = _format_cookie(
        name,
        "",
        max_age=0,
        expires=_EPOCH,
        path=path,
        domain=domain,
        secure=secure,
        httponly=httponly,
        samesite=samesite,
    )
    target.append((b"set-cookie", header))


class CookieMiddleware(BaseMiddleware):
    """Parse the request's cookies into ``scope["cookies"]`` (a ``dict[str, str]``).

    Applies to ``http`` and ``websocket`` connections; other scopes pass through
    untouched. Every ``cookie`` header is read: HTTP/2 clients may split cookies
    over several, which are joined with ``"; "`` as RFC 9113 §8.2.3 says. Header
    bytes are decoded as UTF-8 (invalid bytes become U+FFFD). Parsing follows
    :func:`parse_cookie`. An existing ``scope["cookies"]`` is replaced.

    Raises:
        ValueError: at call time, an ``http``/``websocket`` scope without
            ``headers`` (a server bug).
    """

    scope_types = frozenset({"http", "websocket"})

    async def populate_scope(self, scope: Scope) -> None:
        """Set ``scope["cookies"]`` from the ``cookie`` headers."""
        headers = scope.get("headers")
        if headers is None:
            raise ValueError(
                f"CookieMiddleware was passed a {scope.get('type')!r} scope without a "
                "'headers' key"
            )
        values = [value for name, value in headers if name.lower() == b"cookie"]
        scope["cookies"] = parse_cookie(b"; ".join(values).decode("utf-8", "replace"))
        await anyio.lowlevel.checkpoint()


# -- session stores ---------------------------------------------------------------------


class SessionGone(TrichannelsError):
    """A store could not update a session because its record no longer exists.

    Raised by :meth:`SessionStore.save` when asked to update a key that expired
    or was deleted (a logout in another tab, say) after the session was loaded.
    :meth:`Session.save` handles it: the changes are dropped (never resurrecting
    the ended session), the session becomes empty, and a warning is logged.
    """

    def __init__(self) -> None:
        super().__init__("the session record was deleted or expired while in use")


@runtime_checkable
class SessionStore(Protocol):
    """What :class:`SessionMiddleware` needs from a session store.

    A *session key* is the value of the session cookie. For a server-side
    store it names a record; for a cookie store it is the (signed) data itself.
    All three methods may do I/O and are checkpoints.
    """

    data_in_cookie: bool
    """``True`` when the cookie holds the session data itself (nothing server side)."""

    async def load(self, session_key: str, *, max_age: int) -> dict[str, Any] | None:
        """Return the data for ``session_key``, or ``None`` if it is unknown, invalid or expired."""
        ...

    async def save(
        self, session_key: str | None, data: Mapping[str, Any], *, max_age: int
    ) -> str:
        """Store ``data`` and return the session key the client must hold from now on.

        ``session_key=None`` asks for a new session (a new random key for a
        server-side store). A store raises :class:`SessionGone` when told to
        update a key whose record no longer exists; it must never re-create it.
        """
        ...

    async def delete(self, session_key: str) -> None:
        """Forget the session ``session_key`` (a no-op for stores without server state)."""
        ...


def _encode_data(data: Mapping[str, Any]) -> bytes:
    try:
        return json.dumps(data, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        for key, value in data.items():
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError):
                raise TypeError(
                    f"session value for key {key!r} is not JSON-serialisable: {exc}"
                ) from exc
        raise TypeError(f"session data is not JSON-serialisable: {exc}") from exc


def _decode_data(raw: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_SIGNED_RE: Final = re.compile(r"([A-Za-z0-9_-]*)\.([0-9]{1,12})\.([A-Za-z0-9_-]{43})")
_COOKIE_SIZE_LIMIT: Final = 4000


@final
class SignedCookieSessionStore:
    """Keep the session data in the cookie itself, signed and timestamped.

    The cookie is ``<data>.<timestamp>.<signature>``: the data is JSON in URL-safe
    base64 (readable by the client: it is signed, **not encrypted**, so keep
    secrets out of it), the timestamp is the Unix time of the save, and the
    signature is HMAC-SHA256 over both with a key derived from a secret key and
    ``salt``.

    * **Key rotation**: new cookies are signed with ``secret_keys[0]``; a cookie
      signed with any key in the list is accepted. To rotate, put the new key
      first, keep the old one second until every cookie signed with it has
      expired (``max_age``), then drop it.
    * **Rejection**: a malformed cookie, a bad signature (tampering, or a key
      that was dropped) or a timestamp older than ``max_age`` is rejected:
      :meth:`load` returns ``None``, so the session is empty, and a warning is
      logged on ``trichannels.sessions`` naming the reason, never the cookie.
      Data from a rejected cookie is never used.
    * **No revocation**: :meth:`delete` can do nothing, since nothing is stored
      server side; a copied cookie stays valid until it expires. Use
      :class:`RedisSessionStore` when logging out must end the session
      everywhere.
    * Values must be JSON-serialisable, and the cookie must stay under 4000
      bytes (browsers drop bigger ones silently); :meth:`save` raises instead.

    Args:
        secret_keys: a non-empty sequence of keys (``str`` or ``bytes``, each at
            least 32 bytes long); the first signs.
        salt: separates these signatures from any other use of the same keys.
        clock: returns the current Unix time; for tests.

    Raises:
        ConfigurationError: ``secret_keys`` is a single string, empty, or holds
            a key that is not ``str``/``bytes`` or is too short (named by
            position; key material is never put in a message).
    """

    data_in_cookie = True

    def __init__(
        self,
        secret_keys: Sequence[str | bytes],
        *,
        salt: str = "trichannels.sessions.SignedCookieSessionStore",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(secret_keys, str | bytes):
            raise ConfigurationError(
                "secret_keys must be a sequence of keys, not a single str or bytes; "
                "wrap it in a list"
            )
        keys = list(secret_keys)
        if not keys:
            raise ConfigurationError(
                "secret_keys is empty; give at least one key (the first one signs)"
            )
        if not isinstance(salt, str) or not salt:
            raise ConfigurationError(f"salt must be a non-empty str, got {salt!r}")
        derived: list[bytes] = []
        for index, key in enumerate(keys):
            if isinstance(key, str):
                key = key.encode("utf-8")
            elif not isinstance(key, bytes):
                raise ConfigurationError(
                    f"secret_keys[{index}] must be str or bytes, got {type(key).__name__}"
                )
            if len(key) < 32:
                raise ConfigurationError(
                    f"secret_keys[{index}] is {len(key)} bytes long; use at least 32 random "
                    "bytes, e.g. secrets.token_urlsafe(32)"
                )
            derived.append(
                hmac.digest(
                    key,
                    b"trichannels.sessions.signed-cookie|" + salt.encode(),
                    "sha256",
                )
            )
        self._keys = derived
        self._clock = clock

    def _sign(self, key: bytes, body: str) -> bytes:
        return hmac.digest(key, body.encode("ascii"), hashlib.sha256)

    async def load(self, session_key: str, *, max_age: int) -> dict[str, Any] | None:
        """Verify the cookie and return its data, or ``None`` (logged) if it is rejected.

        A checkpoint, like every store method, although it does no I/O.
        """
        await anyio.lowlevel.checkpoint()
        match = _SIGNED_RE.fullmatch(session_key)
        if match is None:
            logger.warning(
                "rejected a signed session cookie: malformed; the session is empty"
            )
            return None
        payload, stamp, signature = match.groups()
        body = f"{payload}.{stamp}"
        given = _b64decode(signature)
        if not any(
            hmac.compare_digest(self._sign(key, body), given) for key in self._keys
        ):
            logger.warning(
                "rejected a signed session cookie: bad signature (tampered with, or signed "
                "with a key no longer in secret_keys); the session is empty"
            )
            return None
        age = self._clock() - int(stamp)
        if age > max_age:
            logger.warning(
                "rejected a signed session cookie: expired (age %d s, max_age %d s); "
                "the session is empty",
                age,
                max_age,
            )
            return None
        try:
            data = _decode_data(_b64decode(payload))
        except binascii.Error:
            data = None
        if data is None:  # signed by us, so only a bug or a changed format gets here
            logger.warning(
                "rejected a signed session cookie: undecodable data; the session is empty"
            )
        return data

    async def save(
        self, session_key: str | None, data: Mapping[str, Any], *, max_age: int
    ) -> str:
        """Return a freshly signed cookie holding ``data`` (``session_key`` is ignored).

        Raises:
            TypeError: a value is not JSON-serialisable (its key is named).
            ValueError: the cookie would exceed 4000 bytes.
        """
        del session_key, max_age
        await anyio.lowlevel.checkpoint()
        body = f"{_b64encode(_encode_data(data))}.{int(self._clock())}"
        cookie = f"{body}.{_b64encode(self._sign(self._keys[0], body))}"
        if len(cookie) > _COOKIE_SIZE_LIMIT:
            raise ValueError(
                f"the signed session cookie would be {len(cookie)} bytes, over the "
                f"{_COOKIE_SIZE_LIMIT}-byte limit browsers enforce; keep less in the session "
                "or use RedisSessionStore"
            )
        return cookie

    async def delete(self, session_key: str) -> None:
        """Do nothing (but checkpoint): a signed cookie cannot be revoked server side."""
        del session_key
        await anyio.lowlevel.checkpoint()


_REDIS_KEY_RE: Final = re.compile(r"[A-Za-z0-9_-]{43}")


@final
class RedisSessionStore:
    """Keep sessions in Redis, under random keys, with a TTL of ``max_age``.

    The cookie holds only the session key, 32 random bytes from :mod:`secrets`
    (``secrets.token_urlsafe(32)``); the data is JSON under
    ``key_prefix + session_key`` and expires ``max_age`` seconds after the last
    save. A cookie that is not a well-formed key is rejected without asking
    Redis (logged at warning); an unknown or expired key gives an empty
    session, and the client is never allowed to choose its own key: a new
    session always gets a new random one. An update of a record that vanished
    meanwhile raises :class:`SessionGone` instead of re-creating it, so a
    logout elsewhere cannot be undone by a request in flight.

    Args:
        client: a coredis client (``coredis.Redis`` or ``coredis.RedisCluster``),
            opened by the application (``async with client:``, for example in a
            lifespan context). The store never opens or closes it.
        key_prefix: prepended to every session key in Redis.

    Redis errors (``coredis.exceptions.ConnectionError``, ...) propagate
    unchanged.
    """

    data_in_cookie = False

    def __init__(
        self,
        client: coredis.Redis[Any] | coredis.RedisCluster[Any],
        *,
        key_prefix: str = "trichannels:session:",
    ) -> None:
        try:
            from coredis.tokens import PureToken  # coredis is an optional extra
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "RedisSessionStore needs coredis: pip install 'trichannels[redis]'"
            ) from exc

        if not isinstance(key_prefix, str):
            raise ConfigurationError(f"key_prefix must be a str, got {key_prefix!r}")
        self.client = client
        self.key_prefix = key_prefix
        self._nx: Literal[PureToken.NX] = PureToken.NX
        self._xx: Literal[PureToken.XX] = PureToken.XX

    def _valid(self, session_key: str) -> bool:
        return _REDIS_KEY_RE.fullmatch(session_key) is not None

    async def load(self, session_key: str, *, max_age: int) -> dict[str, Any] | None:
        """Return the stored data, or ``None`` for a malformed, unknown or expired key."""
        del max_age  # Redis expires the record itself
        if not self._valid(session_key):
            logger.warning("rejected a session cookie: not a well-formed session key")
            await anyio.lowlevel.checkpoint()
            return None
        raw = await self.client.get(self.key_prefix + session_key)
        if raw is None:
            logger.debug("no session for the presented key (expired or deleted)")
            return None
        data = _decode_data(raw.encode("utf-8") if isinstance(raw, str) else raw)
        if data is None:
            logger.warning("discarded an undecodable session record")
        return data

    async def save(
        self, session_key: str | None, data: Mapping[str, Any], *, max_age: int
    ) -> str:
        """Write ``data`` with a TTL of ``max_age``; return the (possibly new) key.

        Raises:
            SessionGone: ``session_key``'s record no longer exists.
            TypeError: a value is not JSON-serialisable (its key is named).
        """
        payload = _encode_data(data)
        if session_key is not None:
            if not self._valid(session_key):
                raise SessionGone
            updated = await self.client.set(
                self.key_prefix + session_key, payload, condition=self._xx, ex=max_age
            )
            if not updated:
                raise SessionGone
            return session_key
        while True:  # a collision of 256-bit random keys will not happen; loop anyway
            new_key = secrets.token_urlsafe(32)
            if await self.client.set(
                self.key_prefix + new_key, payload, condition=self._nx, ex=max_age
            ):
                return new_key

    async def delete(self, session_key: str) -> None:
        """Delete the record (nothing happens if it does not exist)."""
        if self._valid(session_key):
            await self.client.delete([self.key_prefix + session_key])
        else:
            await anyio.lowlevel.checkpoint()


# -- the session object -----------------------------------------------------------------


class _Unchanged:
    pass


_UNCHANGED: Final = _Unchanged()


@final
class Session(MutableMapping[str, Any]):
    """The session of one connection: a mutable mapping with ``await save()``.

    Built by :class:`SessionMiddleware` and found in ``scope["session"]``. Keys
    are strings and values must be JSON-serialisable (tuples come back as
    lists). Setting or deleting a key marks the session :attr:`modified`;
    mutating a value in place (``session["cart"].append(...)``) does not, so
    set ``session.modified = True`` yourself then.

    When changes reach the client:

    * **HTTP**: a modified session is saved, and its cookie set, when the
      application sends ``http.response.start`` (not for a 500 response).
    * **WebSocket**: a modified session is saved, and its cookie set, when the
      application accepts the handshake (``websocket.accept`` headers; change
      the session in ``connect()`` before accepting). After that the cookie
      cannot change. :meth:`save` still writes to the store: with
      :class:`RedisSessionStore` the record under the client's key is updated,
      so the changes last; with :class:`SignedCookieSessionStore`, whose data
      travels in the cookie, they cannot reach the client: they last only until
      this connection closes, and ``save()`` logs a warning saying so.
      :meth:`cycle_key` (and so :func:`trichannels.auth.login`) raises then.

    The session key (the cookie value) is a credential: it never appears in
    ``repr()`` or in log messages.
    """

    def __init__(
        self,
        store: SessionStore,
        session_key: str | None,
        data: Mapping[str, Any],
        *,
        max_age: int = _DEFAULT_MAX_AGE,
        client_cookie: str | None = None,
    ) -> None:
        self._store = store
        self._max_age = max_age
        self._key = session_key
        self._data: dict[str, Any] = dict(data)
        self._client_cookie = client_cookie
        # What the client should be told at the handshake/response start:
        # _UNCHANGED, None (delete the cookie) or the new cookie value.
        self._pending: str | _Unchanged | None = _UNCHANGED
        if client_cookie is not None and session_key is None:
            self._pending = None  # a rejected cookie: tell the client to drop it
        self._cycle = False
        self._locked = False
        self.modified = False
        """Whether the session changed since it was loaded or last saved."""

    # -- mapping -----------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise TypeError(f"session keys must be str, got {key!r}")
        self._data[key] = value
        self.modified = True

    def __delitem__(self, key: str) -> None:
        del self._data[key]
        self.modified = True

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        state = "modified" if self.modified else "unmodified"
        return f"<Session with {len(self._data)} keys, {state}>"

    # -- state -------------------------------------------------------------------

    @property
    def session_key(self) -> str | None:
        """The key of the stored session, or ``None`` if none is stored yet."""
        return self._key

    @property
    def is_empty(self) -> bool:
        """Whether the session holds no data."""
        return not self._data

    @property
    def cookie_settable(self) -> bool:
        """Whether the session cookie can still be sent (before the response starts or the handshake is answered)."""
        return not self._locked

    # -- operations --------------------------------------------------------------

    async def save(self) -> None:
        """Write the session to its store now (a checkpoint when the store does I/O).

        An empty session deletes its stored record instead. If the record was
        deleted meanwhile (:class:`SessionGone`), the changes are dropped, the
        session becomes empty and a warning is logged.

        Raises:
            TypeError: a value is not JSON-serialisable (its key is named).
            ValueError: a signed cookie would be too big.
        """
        if not self._data:
            if self._key is not None:
                await self._store.delete(self._key)
            else:
                await anyio.lowlevel.checkpoint()
            self._key = None
            self._cycle = False
            self._client_should_hold(None)
            self.modified = False
            return
        old_key = self._key
        try:
            new_key = await self._store.save(
                None if self._cycle else old_key, self._data, max_age=self._max_age
            )
        except SessionGone:
            logger.warning(
                "the session was deleted while in use (expired, or logged out elsewhere); "
                "its unsaved changes were dropped"
            )
            self._data.clear()
            self._key = None
            self._cycle = False
            self.modified = False
            self._client_should_hold(None)
            await anyio.lowlevel.checkpoint()
            return
        if self._cycle and old_key is not None and old_key != new_key:
            await self._store.delete(old_key)
        self._key = new_key
        self._cycle = False
        self.modified = False
        self._client_should_hold(new_key)

    async def flush(self) -> None:
        """Delete the stored session and empty this one; the next save starts a new key.

        The client's cookie is deleted when the response starts (HTTP) or the
        handshake is accepted (WebSocket).
        """
        key, self._key = self._key, None
        self._data.clear()
        self._cycle = False
        self.modified = True
        if key is not None:
            await self._store.delete(key)
        else:
            await anyio.lowlevel.checkpoint()

    def cycle_key(self) -> None:
        """Move the data to a new session key at the next save, deleting the old record.

        This is what defeats session fixation: call it whenever the privilege
        level changes (login). Not a checkpoint.

        Raises:
            RuntimeError: the session cookie was already sent, so the client
                could never learn the new key.
        """
        if self._locked:
            raise RuntimeError(
                "cannot rotate the session key after the session cookie was sent (after "
                "the HTTP response started or the WebSocket handshake was answered); do it "
                "before, e.g. in connect() before accept()"
            )
        self._cycle = True
        self.modified = True

    # -- used by SessionMiddleware -------------------------------------------------

    def _client_should_hold(self, value: str | None) -> None:
        if value == self._client_cookie:
            self._pending = _UNCHANGED
            return
        if not self._locked:
            self._pending = value
            return
        if self._store.data_in_cookie:
            if value is None:
                logger.warning(
                    "the session was emptied after its cookie was sent: the client keeps its "
                    "old signed cookie, which stays valid until it expires"
                )
            else:
                logger.warning(
                    "session saved after its cookie was sent (after the WebSocket handshake "
                    "or the HTTP response start): the store keeps the data in the cookie, so "
                    "these changes last only until this connection closes"
                )
        elif value is not None:
            logger.warning(
                "a new session was stored after the session cookie was sent: the client "
                "cannot learn its key, so the next connection will not see it"
            )

    def _take_cookie_change(self) -> str | _Unchanged | None:
        pending, self._pending = self._pending, _UNCHANGED
        if not isinstance(pending, _Unchanged):
            self._client_cookie = pending
        self._locked = True
        return pending

    def _lock(self) -> None:
        self._locked = True


# -- the middleware -----------------------------------------------------------------------

_COOKIE_MESSAGES: Final = frozenset(
    {
        "http.response.start",
        "websocket.accept",
        "websocket.http.response.start",
    }
)


class SessionMiddleware(BaseMiddleware):
    """Put a :class:`Session` in ``scope["session"]``, loaded from the session cookie.

    Needs ``scope["cookies"]``, so wrap it in :class:`CookieMiddleware` (or use
    :func:`SessionMiddlewareStack`). Applies to ``http`` and ``websocket``
    connections; other scopes, and scopes that already hold a ``"session"`` (an
    outer SessionMiddleware), pass through untouched.

    The session is loaded **eagerly**, once per connection, before the inner
    application runs (one store read when the request carries a cookie, none
    otherwise). Saving and setting the cookie are described on
    :class:`Session`.

    Args:
        inner: the application to wrap.
        store: where sessions live (:class:`SignedCookieSessionStore`,
            :class:`RedisSessionStore`, or your own :class:`SessionStore`).
        cookie_name: the session cookie's name.
        max_age: the session lifetime in seconds: the store's expiry and the
            cookie's ``Max-Age``.
        expire_at_browser_close: leave ``Max-Age`` out of the cookie (the store
            still expires sessions after ``max_age``).
        cookie_path: the cookie's ``Path`` attribute.
        cookie_domain: the cookie's ``Domain`` attribute, or ``None`` for a
            host-only cookie.
        cookie_secure: add ``Secure`` to the cookie (HTTPS only).
        cookie_httponly: add ``HttpOnly`` to the cookie (hidden from JavaScript).
        cookie_samesite: the cookie's ``SameSite`` attribute: ``"strict"``,
            ``"lax"``, ``"none"`` (needs ``cookie_secure=True``) or ``None``
            (see :func:`set_cookie`).
        save_every_request: save (and so extend) a non-empty session on every
            response, not only when it changed.

    Raises:
        TypeError: ``store`` does not implement :class:`SessionStore`.
        ConfigurationError: an invalid ``max_age`` or cookie setting (named).
    """

    scope_types = frozenset({"http", "websocket"})

    def __init__(
        self,
        inner: ASGIApp,
        store: SessionStore,
        *,
        cookie_name: str = "sessionid",
        max_age: int = _DEFAULT_MAX_AGE,
        expire_at_browser_close: bool = False,
        cookie_path: str = "/",
        cookie_domain: str | None = None,
        cookie_secure: bool = False,
        cookie_httponly: bool = True,
        cookie_samesite: str | None = "lax",
        save_every_request: bool = False,
    ) -> None:
        super().__init__(inner)
        if not isinstance(store, SessionStore):
            raise TypeError(
                f"store must implement SessionStore (data_in_cookie, async load/save/delete), "
                f"got {store!r}"
            )
        if not isinstance(max_age, int) or isinstance(max_age, bool) or max_age <= 0:
            raise ConfigurationError(
                f"invalid max_age {max_age!r}: it must be a positive int (seconds)"
            )
        self.store = store
        self.cookie_name = cookie_name
        self.max_age = max_age
        self.expire_at_browser_close = expire_at_browser_close
        self.cookie_path = cookie_path
        self.cookie_domain = cookie_domain
        self.cookie_secure = cookie_secure
        self.cookie_httponly = cookie_httponly
        self.cookie_samesite = cookie_samesite
        self.save_every_request = save_every_request
        try:  # validate every cookie setting now, not on the first response
            self._add_cookie_header([], "x")
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"invalid session cookie setting: {exc}") from exc

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the inner application with ``scope["session"]`` set."""
        if "session" in scope:
            await self.inner(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    async def populate_scope(self, scope: Scope) -> None:
        """Load the session named by the cookie into ``scope["session"]``."""
        cookies = scope.get("cookies")
        if cookies is None:
            raise ValueError(
                "SessionMiddleware needs scope['cookies']: wrap it in CookieMiddleware "
                "(or use SessionMiddlewareStack)"
            )
        cookie = cookies.get(self.cookie_name) or None
        data = None
        if cookie is not None:
            data = await self.store.load(cookie, max_age=self.max_age)
        else:
            await anyio.lowlevel.checkpoint()
        scope["session"] = Session(
            self.store,
            cookie if data is not None else None,
            data or {},
            max_age=self.max_age,
            client_cookie=cookie,
        )

    def wrap_send(self, scope: Scope, send: Send) -> Send:
        """Return a ``send`` that saves the session and sets its cookie when the response starts."""
        session: Session = scope["session"]

        async def send_with_session(message: Message) -> None:
            kind = message.get("type")
            if kind in _COOKIE_MESSAGES and session.cookie_settable:
                if message.get("status") != 500 and (
                    session.modified
                    or (self.save_every_request and not session.is_empty)
                ):
                    await session.save()
                message = self._attach_cookie(session, message)
            elif kind == "websocket.close":
                session._lock()
            await send(message)

        return send_with_session

    def _attach_cookie(self, session: Session, message: Message) -> Message:
        change = session._take_cookie_change()
        if isinstance(change, _Unchanged):
            return message
        headers = list(message.get("headers") or [])
        self._add_cookie_header(headers, change)
        return {**message, "headers": headers}

    def _add_cookie_header(
        self, headers: list[tuple[bytes, bytes]], value: str | None
    ) -> None:
        attributes: dict[str, Any] = {
            "path": self.cookie_path,
            "domain": self.cookie_domain,
            "secure": self.cookie_secure,
            "httponly": self.cookie_httponly,
            "samesite": self.cookie_samesite,
        }
        if value is None:
            delete_cookie(headers, self.cookie_name, **attributes)
        else:
            max_age = None if self.expire_at_browser_close else self.max_age
            set_cookie(headers, self.cookie_name, value, max_age=max_age, **attributes)


def SessionMiddlewareStack(
    inner: ASGIApp, store: SessionStore, **kwargs: Any
) -> ASGIApp:  # Channels' name
    """``CookieMiddleware(SessionMiddleware(inner, store, **kwargs))``."""
    return CookieMiddleware(SessionMiddleware(inner, store, **kwargs))
