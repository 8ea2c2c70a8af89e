"""Authentication: ``scope["user"]`` from a session or from a bearer token.

trichannels has no user model and no database: the application supplies an
async callable that turns a connection into a user object (whatever it
likes), and trichannels puts the result in ``scope["user"]``, or an
:class:`AnonymousUser` when there is none.

* :class:`AuthMiddleware` calls ``get_user(scope)``; with
  :func:`AuthMiddlewareStack` (cookies + session + auth) the user id lives in
  the session, written by :func:`login` and cleared by :func:`logout`.
* :class:`TokenAuthMiddleware` reads a bearer token from an
  ``Authorization`` header, a ``Sec-WebSocket-Protocol`` entry or the query
  string (browsers cannot set headers on a WebSocket handshake), resolves it
  with ``authenticate(token)``, and strips it from the scope the inner
  application sees.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, final
from urllib.parse import unquote_plus

import anyio.lowlevel

from trichannels.exceptions import ConfigurationError
from trichannels.middleware import BaseMiddleware
from trichannels.sessions import (
    CookieMiddleware,
    Session,
    SessionMiddleware,
    SessionStore,
)

if TYPE_CHECKING:
    from trichannels.types import ASGIApp, Scope

__all__ = [
    "SESSION_KEY",
    "AnonymousUser",
    "AuthMiddleware",
    "AuthMiddlewareStack",
    "TokenAuthMiddleware",
    "get_session_user_id",
    "login",
    "logout",
]

logger = logging.getLogger("trichannels.auth")

SESSION_KEY: Final = "_auth_user_id"
"""The session key under which :func:`login` stores the user id (Django's name)."""


@final
class AnonymousUser:
    """The user of a connection nobody is logged in on.

    All instances are equal and interchangeable. ``is_authenticated`` is
    ``False``, ``is_anonymous`` is ``True`` and ``id`` is ``None``, the attribute
    names Django's ``AnonymousUser`` uses, so templates and checks port over.
    Give your own user class ``is_authenticated = True`` to match.
    """

    id: Final = None
    is_authenticated: Final = False
    is_anonymous: Final = True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AnonymousUser)

    def __hash__(self) -> int:
        return hash(AnonymousUser)

    def __repr__(self) -> str:
        return "AnonymousUser()"


def _require_session(scope: Scope, caller: str) -> Session:
    session = scope.get("session")
    if not isinstance(session, Session):
        raise ValueError(
            f"{caller} needs scope['session']: wrap the application in SessionMiddleware "
            "(or AuthMiddlewareStack)"
        )
    return session


def get_session_user_id(scope: Scope) -> Any:
    """Return the user id :func:`login` stored in the session, or ``None``.

    The usual first line of a ``get_user`` for :class:`AuthMiddleware`::

        async def get_user(scope):
            user_id = get_session_user_id(scope)
            return None if user_id is None else await db.fetch_user(user_id)

    Raises:
        ValueError: there is no ``scope["session"]``.
    """
    return _require_session(scope, "get_session_user_id()").get(SESSION_KEY)


async def login(scope: Scope, user_id: str | int, *, user: object = None) -> None:
    """Log ``user_id`` in on this connection's session, rotating the session key.

    The id is stored under :data:`SESSION_KEY`. If the session belonged to
    another user its data is flushed first; in every case the session key is
    rotated (:meth:`Session.cycle_key`), so a session id planted in the
    browser beforehand (session fixation) is worthless afterwards. The session
    is saved when the HTTP response starts or the WebSocket handshake is
    accepted; call it in a WebSocket consumer's ``connect()`` *before*
    ``accept()``. Pass ``user`` to also set ``scope["user"]`` for the rest of
    this connection (otherwise it is left as it is).

    Raises:
        ValueError: there is no ``scope["session"]``.
        TypeError: ``user_id`` is not a ``str`` or ``int``.
        RuntimeError: the session cookie was already sent (after the response
            started or the handshake was accepted), so the key cannot rotate.
    """
    session = _require_session(scope, "login()")
    if not isinstance(user_id, str | int) or isinstance(user_id, bool):
        raise TypeError(f"user_id must be a str or int, got {user_id!r}")
    session.cycle_key()  # raises before anything changes if it is too late
    current = session.get(SESSION_KEY)
    if current is not None and current != user_id:
        await session.flush()
        session.cycle_key()
    else:
        await anyio.lowlevel.checkpoint()
    session[SESSION_KEY] = user_id
    if user is not None:
        scope["user"] = user


async def logout(scope: Scope) -> None:
    """Flush the session (deleting it from its store) and make ``scope["user"]`` anonymous.

    With :class:`~trichannels.sessions.RedisSessionStore` the session ends
    everywhere at once; with
    :class:`~trichannels.sessions.SignedCookieSessionStore` the client's cookie
    is deleted with the response, but a copy of it stays valid until it
    expires (signed cookies cannot be revoked), and over an accepted WebSocket
    the cookie cannot be deleted at all (a warning is logged).

    Raises:
        ValueError: there is no ``scope["session"]``.
    """
    session = _require_session(scope, "logout()")
    await session.flush()
    if not session.cookie_settable:
        # Nothing can reach the client any more: delete server-side state now.
        await session.save()
    if "user" in scope:
        scope["user"] = AnonymousUser()


class AuthMiddleware(BaseMiddleware):
    """Set ``scope["user"]`` from the application's ``get_user(scope)``.

    ``get_user`` is an async callable receiving the inner application's scope
    (with ``scope["session"]`` when SessionMiddleware is outside) and returning
    the user object, or ``None`` for :class:`AnonymousUser`. It is called
    **eagerly, exactly once per connection**, before the inner application
    starts: a WebSocket connection resolves its user once at the handshake,
    however many messages follow. An existing ``scope["user"]`` is replaced.
    Exceptions from ``get_user`` propagate (the connection fails). Applies to
    ``http`` and ``websocket`` connections; other scopes pass through.

    Args:
        inner: the application to wrap.
        get_user: ``async def get_user(scope) -> user | None``.

    Raises:
        TypeError: ``get_user`` is not callable.
    """

    scope_types = frozenset({"http", "websocket"})

    def __init__(
        self, inner: ASGIApp, get_user: Callable[[Scope], Awaitable[Any]]
    ) -> None:
        super().__init__(inner)
        if not callable(get_user):
            raise TypeError(f"get_user must be an async callable, got {get_user!r}")
        self.get_user = get_user

    async def populate_scope(self, scope: Scope) -> None:
        """Resolve the user and set ``scope["user"]``."""
        user = await self.get_user(scope)
        scope["user"] = AnonymousUser() if user is None else user


def AuthMiddlewareStack(  # Channels' name
    inner: ASGIApp,
    get_user: Callable[[Scope], Awaitable[Any]],
    store: SessionStore,
    **session_kwargs: Any,
) -> ASGIApp:
    """``CookieMiddleware(SessionMiddleware(AuthMiddleware(inner, get_user), store, **session_kwargs))``.

    Example::

        async def get_user(scope):
            user_id = get_session_user_id(scope)
            return None if user_id is None else await users.get(user_id)

        application = AuthMiddlewareStack(router, get_user, RedisSessionStore(redis))
    """
    return CookieMiddleware(
        SessionMiddleware(AuthMiddleware(inner, get_user), store, **session_kwargs)
    )


_BEARER_RE: Final = re.compile(rb"[Bb][Ee][Aa][Rr][Ee][Rr] +(\S+) *")
_QUERY_PARAM_RE: Final = re.compile(r"[A-Za-z0-9._~-]+")
_TOKEN_CHARS_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class TokenAuthMiddleware(BaseMiddleware):
    """Set ``scope["user"]`` from a bearer token, and hide the token from the inner application.

    Browsers cannot set headers on a WebSocket handshake, so the token is looked
    for, in this order (the first one found is used):

    1. an ``Authorization: Bearer <token>`` header;
    2. (WebSocket) an offered subprotocol ``<subprotocol_prefix><token>``, e.g.
       ``new WebSocket(url, ["access_token." + token, "chat"])``;
    3. the query-string parameter ``query_param`` (``?token=...``).

    Every carrier found is stripped from the scope the inner application
    receives: the ``Authorization: Bearer`` header, the subprotocol entry
    (from ``scope["subprotocols"]`` and from the ``sec-websocket-protocol``
    header, so the application can never echo it back) and the query
    parameter (from ``scope["query_string"]``; other parameters keep their
    exact bytes). Tokens are never logged.

    The browser requires the server to select one of the subprotocols it
    offered, so offer a real one next to the token entry and accept with it
    (``accept(subprotocol="chat")``).

    ``authenticate(token)`` is called once per connection when a token is
    present; it returns the user, or ``None`` for an invalid token (it should
    not raise for one: exceptions propagate and fail the connection, and their
    messages end up in server logs). Without a token, or with an invalid one,
    ``scope["user"]`` is an :class:`AnonymousUser`; refusing such
    connections is the inner application's decision. An existing
    ``scope["user"]`` is replaced.

    A query-string token appears in server access logs and browser history;
    prefer the subprotocol, and short-lived, single-use tokens for either.

    Args:
        inner: the application to wrap.
        authenticate: ``async def authenticate(token: str) -> user | None``.
        query_param: the query parameter to read, or ``None`` to not read one.
        subprotocol_prefix: the subprotocol prefix to read, or ``None``.
        authorization_header: read the ``Authorization: Bearer`` header.

    Raises:
        TypeError: ``authenticate`` is not callable.
        ConfigurationError: an empty or invalid ``query_param`` or
            ``subprotocol_prefix`` (named).
    """

    scope_types = frozenset({"http", "websocket"})

    def __init__(
        self,
        inner: ASGIApp,
        authenticate: Callable[[str], Awaitable[Any]],
        *,
        query_param: str | None = "token",
        subprotocol_prefix: str | None = "access_token.",
        authorization_header: bool = True,
    ) -> None:
        super().__init__(inner)
        if not callable(authenticate):
            raise TypeError(
                f"authenticate must be an async callable, got {authenticate!r}"
            )
        if query_param is not None and (
            not isinstance(query_param, str)
            or not _QUERY_PARAM_RE.fullmatch(query_param)
        ):
            raise ConfigurationError(
                f"invalid query_param {query_param!r}: use a non-empty name of ASCII letters, "
                "digits and ._~- (or None)"
            )
        if subprotocol_prefix is not None and (
            not isinstance(subprotocol_prefix, str)
            or not _TOKEN_CHARS_RE.fullmatch(subprotocol_prefix)
        ):
            raise ConfigurationError(
                f"invalid subprotocol_prefix {subprotocol_prefix!r}: use a non-empty HTTP "
                "token such as 'access_token.' (or None)"
            )
        self.authenticate = authenticate
        self.query_param = query_param
        self.subprotocol_prefix = subprotocol_prefix
        self.authorization_header = authorization_header

    async def populate_scope(self, scope: Scope) -> None:
        """Find and strip the token, resolve it, and set ``scope["user"]``."""
        found: list[tuple[str, str]] = []  # (carrier, token), in precedence order
        if self.authorization_header:
            found += self._strip_authorization(scope)
        if self.subprotocol_prefix is not None and scope.get("type") == "websocket":
            found += self._strip_subprotocol(scope, self.subprotocol_prefix)
        if self.query_param is not None:
            found += self._strip_query(scope, self.query_param)
        user = None
        if found:
            carrier, token = found[0]
            user = await self.authenticate(token)
            if user is None:
                logger.info("token authentication failed (token from the %s)", carrier)
        else:
            await anyio.lowlevel.checkpoint()
        scope["user"] = AnonymousUser() if user is None else user

    @staticmethod
    def _strip_authorization(scope: Scope) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        kept: list[tuple[bytes, bytes]] = []
        for name, value in scope.get("headers") or []:
            if name.lower() == b"authorization":
                match = _BEARER_RE.fullmatch(value)
                if match is not None:
                    found.append(
                        ("authorization header", match.group(1).decode("latin-1"))
                    )
                    continue
            kept.append((name, value))
        if found:
            scope["headers"] = kept
        return found

    @staticmethod
    def _strip_subprotocol(scope: Scope, prefix: str) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        offered = list(scope.get("subprotocols") or [])
        remaining = []
        for entry in offered:
            if entry.startswith(prefix):
                if entry[len(prefix) :]:
                    found.append(("subprotocol", entry[len(prefix) :]))
            else:
                remaining.append(entry)
        if len(remaining) == len(offered):
            return found
        scope["subprotocols"] = remaining
        headers: list[tuple[bytes, bytes]] = []
        for name, value in scope.get("headers") or []:
            if name.lower() == b"sec-websocket-protocol":
                entries = [e.strip() for e in value.split(b",")]
                entries = [
                    e for e in entries if e and not e.startswith(prefix.encode("ascii"))
                ]
                if not entries:
                    continue
                value = b", ".join(entries)
            headers.append((name, value))
        scope["headers"] = headers
        return found

    @staticmethod
    def _strip_query(scope: Scope, param: str) -> list[tuple[str, str]]:
        query = scope.get("query_string") or b""
        if not query:
            return []
        found: list[tuple[str, str]] = []
        kept: list[bytes] = []
        for part in query.split(b"&"):
            raw_name, _, raw_value = part.partition(b"=")
            if unquote_plus(raw_name.decode("latin-1")) == param:
                value = unquote_plus(raw_value.decode("latin-1"))
                if value:
                    found.append(("query string", value))
                continue
            kept.append(part)
        if len(kept) != len(query.split(b"&")):
            scope["query_string"] = b"&".join(kept)
        return found
