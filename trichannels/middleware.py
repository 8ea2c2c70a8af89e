"""Middleware: an ASGI application that wraps another and adds to its scope.

A middleware sits between the server (or a router) and an inner application.
It is itself an ASGI 3 application, so middleware, routers and consumers nest
in any order::

    application = CookieMiddleware(SessionMiddleware(AuthMiddleware(router, ...), store))

:class:`BaseMiddleware` gives every middleware the same contract:

* the inner application receives a **shallow copy** of the scope with the
  middleware's additions; the scope the middleware itself was called with is
  never mutated, so an outer application (a router, a server, a test) sees
  exactly what it passed in;
* one middleware instance serves every connection, so per-connection state
  belongs in the scope copy (or in a closure around ``send``), never on
  ``self``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from trichannels.types import ASGIApp, Receive, Scope, Send

__all__ = ["BaseMiddleware"]


class BaseMiddleware:
    """Base class for middleware that adds keys to the scope an inner application sees.

    Subclasses override one or both hooks:

    * :meth:`populate_scope` (``async``): add or replace keys in the copy of the
      scope the inner application will receive. It may do I/O (load a session,
      look up a user); it runs once per connection, before the inner application
      is called.
    * :meth:`wrap_send`: return a ``send`` callable the inner application will use
      instead of the server's, to add headers to a response, for example.

    Then :meth:`__call__` does the rest: it copies the scope, runs the hooks on the
    copy and awaits the inner application with it.

    The copy is shallow. Replace nested values (``scope["headers"]``,
    ``scope["subprotocols"]``) with new objects instead of mutating them in
    place, or the outer scope would change too.

    Set :attr:`scope_types` to the connection types the middleware applies to;
    any other connection (``lifespan``, say) is passed to the inner application
    untouched, with the very same scope object.

    Channels-style subclasses that override ``__call__``, build their own copy and
    call ``await super().__call__(scope, receive, send)`` keep working.

    Args:
        inner: the ASGI application to wrap.

    Raises:
        TypeError: ``inner`` is not callable.

    Example::

        class ClientIPMiddleware(BaseMiddleware):
            scope_types = frozenset({"http", "websocket"})

            async def populate_scope(self, scope: Scope) -> None:
                scope["client_ip"] = scope["client"][0] if scope.get("client") else None
    """

    scope_types: ClassVar[frozenset[str] | None] = None
    """Connection types (``scope["type"]``) this middleware acts on; ``None`` means all."""

    def __init__(self, inner: ASGIApp) -> None:
        if not callable(inner):
            raise TypeError(
                f"inner must be an ASGI application (a callable), got {inner!r}"
            )
        self.inner = inner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the inner application with a copy of ``scope`` carrying this middleware's additions.

        Checkpoints exactly as the hooks and the inner application do.
        """
        if self.scope_types is not None and scope.get("type") not in self.scope_types:
            await self.inner(scope, receive, send)
            return
        inner_scope = dict(scope)
        await self.populate_scope(inner_scope)
        await self.inner(inner_scope, receive, self.wrap_send(inner_scope, send))

    async def populate_scope(self, scope: Scope) -> None:
        """Add this middleware's keys to ``scope``, the inner application's copy.

        The default adds nothing. Called once per connection.
        """

    def wrap_send(self, scope: Scope, send: Send) -> Send:
        """Return the ``send`` the inner application will use for this connection.

        ``scope`` is the inner application's copy, after :meth:`populate_scope`.
        The default returns ``send`` unchanged.
        """
        del scope
        return send
