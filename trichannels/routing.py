"""Routers: pick the ASGI application that handles a connection.

Every router is itself an ASGI 3 application, so they nest freely::

    application = ProtocolTypeRouter({
        "websocket": URLRouter([
            path("chat/<str:room>/", ChatConsumer.as_asgi()),
            path("api/v<int:version>/", URLRouter([
                path("events/", EventsConsumer.as_asgi()),
            ])),
        ]),
        "channel": ChannelNameRouter({"thumbnails": ThumbnailConsumer.as_asgi()}),
    })

- :class:`ProtocolTypeRouter` routes on ``scope["type"]`` and answers the
  ASGI ``lifespan`` protocol itself, opening the channel layers (and any other
  async context managers you give it) for the life of the server.
- :class:`URLRouter` routes on the URL path with :func:`path` and
  :func:`re_path` routes and puts what they capture in ``scope["url_route"]``.
- :class:`ChannelNameRouter` routes worker (``channel``) scopes on
  ``scope["channel"]``.
"""

from __future__ import annotations

import importlib
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from trichannels.consumer import handler_watchdog
from trichannels.exceptions import ConfigurationError, UnexpectedMessage
from trichannels.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "ChannelNameRouter",
    "LifespanContext",
    "ProtocolTypeRouter",
    "Route",
    "URLRouter",
    "path",
    "re_path",
]

logger = logging.getLogger(__name__)

LifespanContext = Callable[[], AbstractAsyncContextManager[object]]
"""A zero-argument callable returning an async context manager held open for
the life of the server (between lifespan startup and shutdown)."""


def _open_channel_layers() -> AbstractAsyncContextManager[object]:
    """Open every configured channel layer (the default lifespan context)."""
    # Imported lazily: the routers do not need the layers package to be importable.
    layers = importlib.import_module("trichannels.layers")
    return cast("AbstractAsyncContextManager[object]", layers.open_channel_layers())


def _app_mapping(mapping: object, what: str) -> dict[str, ASGIApp]:
    """Validate a ``{name: ASGI application}`` mapping, raising TypeError naming the bad key."""
    if not isinstance(mapping, Mapping):
        msg = f"{what} needs a mapping of names to ASGI applications, got {mapping!r}"
        raise TypeError(msg)
    for key, app in mapping.items():
        if not isinstance(key, str):
            msg = f"{what} keys must be str, got {key!r}"
            raise TypeError(msg)
        if not callable(app):
            msg = f"{what} maps {key!r} to {app!r}, which is not a callable ASGI application"
            raise TypeError(msg)
    return dict(cast("Mapping[str, ASGIApp]", mapping))


def _describe(exc: BaseException) -> str:
    """Name an exception for a lifespan ``message``, looking inside single-error groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


def _lifespan_factories(contexts: Iterable[object]) -> tuple[LifespanContext, ...]:
    factories = tuple(contexts)
    for factory in factories:
        if not callable(factory):
            msg = f"lifespan_contexts entries must be callables returning async context managers, got {factory!r}"
            raise TypeError(msg)
    return cast("tuple[LifespanContext, ...]", factories)


async def _expect(receive: Receive, expected: str) -> None:
    message = await receive()
    if message["type"] != expected:
        raise UnexpectedMessage(
            message["type"], f"the lifespan protocol expected {expected!r} here"
        )


class ProtocolTypeRouter:
    """Route each connection to an application by its ``scope["type"]``.

    Unless the mapping has a ``"lifespan"`` key, the router answers the ASGI
    lifespan protocol itself: on ``lifespan.startup`` it enters the async
    context managers made by ``lifespan_contexts`` (in order), and on
    ``lifespan.shutdown`` it exits them (in reverse order). They stay open
    inside the lifespan call in between, so background tasks they own (a
    channel layer's reader, say) have a parent that outlives every
    connection. Before them it opens
    :func:`trichannels.consumer.handler_watchdog`, the one watcher of busy
    handlers for all consumer instances of the process.

    Args:
        application_mapping: scope type (``"http"``, ``"websocket"``,
            ``"channel"``, ...) to ASGI application.
        lifespan_contexts: zero-argument callables, each returning an async
            context manager to hold open from startup to shutdown. ``None``
            (the default) opens the configured channel layers
            (:func:`trichannels.layers.open_channel_layers`); ``()`` opens
            nothing.

    Raises:
        TypeError: the mapping is not a mapping, a key is not a ``str``, a
            value or a lifespan context factory is not callable.
        ConfigurationError: ``lifespan_contexts`` is given although the
            mapping routes ``"lifespan"`` to an application of its own.
    """

    def __init__(
        self,
        application_mapping: Mapping[str, ASGIApp],
        *,
        lifespan_contexts: Iterable[LifespanContext] | None = None,
    ) -> None:
        self.application_mapping = _app_mapping(
            application_mapping, "ProtocolTypeRouter"
        )
        if lifespan_contexts is None:
            contexts: tuple[LifespanContext, ...] = (_open_channel_layers,)
        else:
            if "lifespan" in self.application_mapping:
                msg = "lifespan_contexts would never be opened: the mapping routes 'lifespan' to its own application"
                raise ConfigurationError(msg)
            contexts = _lifespan_factories(lifespan_contexts)
        self.lifespan_contexts = contexts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Hand the connection to the application mapped to its scope type.

        Raises:
            ValueError: no application is configured for the scope type.
        """
        app = self.application_mapping.get(scope["type"])
        if app is None:
            await self._unmapped(scope, receive, send)
            return
        if type(app) is URLRouter:
            # Route here rather than through the router's own coroutine: one
            # frame less held per connection, and one less on every resume.
            app, scope = app._route(scope)
        await app(scope, receive, send)

    async def _unmapped(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type = scope["type"]
        if scope_type == "lifespan":
            await self._lifespan(receive, send)
            return
        known = ", ".join(
            repr(name) for name in sorted({*self.application_mapping, "lifespan"})
        )
        msg = f"No application configured for scope type {scope_type!r} (configured: {known})"
        raise ValueError(msg)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await _expect(receive, "lifespan.startup")
        phase: Literal["startup", "running", "shutdown"] = "startup"
        try:
            async with AsyncExitStack() as stack:
                # Watches busy consumer handlers for the whole process (see
                # trichannels.consumer.handler_watchdog).
                await stack.enter_async_context(handler_watchdog())
                for factory in self.lifespan_contexts:
                    await stack.enter_async_context(factory())
                phase = "running"
                await send({"type": "lifespan.startup.complete"})
                await _expect(receive, "lifespan.shutdown")
                phase = "shutdown"
        except Exception as exc:
            if phase == "running":
                # Not an answer to startup or shutdown (a background task died,
                # the server misbehaved): let the server see and log it.
                raise
            logger.exception("Lifespan %s failed", phase)
            await send({"type": f"lifespan.{phase}.failed", "message": _describe(exc)})
            return
        await send({"type": "lifespan.shutdown.complete"})


# -- URL routing ---------------------------------------------------------------

_CONVERTERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "str": ("[^/]+", str),
    "int": ("[0-9]+", int),
    "slug": ("[-a-zA-Z0-9_]+", str),
    "uuid": ("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", uuid.UUID),
    "path": (".+", str),
}
_PARAMETER = re.compile(r"<(?:(?P<converter>[^>:]+):)?(?P<name>[^>]+)>")


@dataclass(frozen=True, slots=True)
class Route:
    """One compiled URL route; build it with :func:`path` or :func:`re_path`.

    Attributes:
        pattern: the route or regular expression as written.
        app: the ASGI application it leads to.
        name: an optional name, for the reader's benefit.
        regex: the compiled regular expression.
        converters: for :func:`path` routes, parameter name to converter
            (``int``, ``uuid.UUID``, ``str``); ``None`` for :func:`re_path`.
        is_prefix: the app routes further on the URL (a nested
            :class:`URLRouter`, or anything with ``_path_routing = True``),
            so the route matches a prefix instead of the whole path.
    """

    pattern: str
    app: ASGIApp
    regex: re.Pattern[str] = field(repr=False)
    converters: Mapping[str, Callable[[str], Any]] | None = field(repr=False)
    is_prefix: bool = field(repr=False)
    name: str | None = None

    def match(self, path: str) -> tuple[int, tuple[Any, ...], dict[str, Any]] | None:
        """Match ``path`` (no leading ``/``); return ``(end, args, kwargs)`` or ``None``."""
        m = self.regex.match(path) if self.is_prefix else self.regex.fullmatch(path)
        if m is None:
            return None
        if self.converters is not None:
            return (
                m.end(),
                (),
                {name: convert(m[name]) for name, convert in self.converters.items()},
            )
        # Django's rule: named groups win; positional ones only when there are none.
        kwargs = m.groupdict()
        args = () if kwargs else m.groups()
        return m.end(), args, {k: v for k, v in kwargs.items() if v is not None}


def _check_route(kind: str, pattern: object, app: object) -> str:
    if not isinstance(pattern, str):
        msg = f"{kind}() needs a str pattern, got {pattern!r}"
        raise ConfigurationError(msg)
    if not callable(app):
        msg = f"{kind}({pattern!r}, ...): {app!r} is not a callable ASGI application"
        raise ConfigurationError(msg)
    if pattern.lstrip("^").startswith("/"):
        msg = f"{kind}({pattern!r}, ...): patterns must not start with '/' (the router strips it from the path)"
        raise ConfigurationError(msg)
    return pattern


def _is_prefix(app: object) -> bool:
    return getattr(app, "_path_routing", False) is True


def path(route: str, app: ASGIApp, *, name: str | None = None) -> Route:
    """A Django-style route such as ``"chat/<str:room>/<int:page>/"``.

    Converters: ``str`` (the default; one segment, no ``/``), ``int`` (digits,
    gives an ``int``), ``slug`` (ASCII letters, digits, ``-``, ``_``), ``uuid``
    (lowercase canonical form, gives a :class:`uuid.UUID`) and ``path`` (the
    rest, ``/`` included). Converted values land in
    ``scope["url_route"]["kwargs"]``.

    The route must match the whole remaining path, unless ``app`` is itself a
    :class:`URLRouter`: then it matches a prefix and the inner router matches
    the rest.

    Args:
        route: the route, without a leading ``/``.
        app: the ASGI application to call.
        name: an optional name for the route.

    Raises:
        ConfigurationError: the route is not a ``str``, names an unknown
            converter, has a bad parameter, or ``app`` is not callable.
    """
    pattern = _check_route("path", route, app)
    regex, converters = _path_regex(pattern)
    return Route(pattern, app, re.compile(regex), converters, _is_prefix(app), name)


def _path_regex(pattern: str) -> tuple[str, dict[str, Callable[[str], Any]]]:
    """The regular expression and converters of the path() route ``pattern``."""
    parts: list[str] = []
    converters: dict[str, Callable[[str], Any]] = {}
    pos = 0
    for m in [*_PARAMETER.finditer(pattern), None]:
        literal = pattern[pos : m.start() if m else len(pattern)]
        if "<" in literal or ">" in literal:
            msg = f"path({pattern!r}, ...): unbalanced '<' or '>'"
            raise ConfigurationError(msg)
        parts.append(re.escape(literal))
        if m is None:
            break
        converter, param = m["converter"] or "str", m["name"]
        if converter not in _CONVERTERS:
            msg = f"path({pattern!r}, ...) uses unknown converter {converter!r}; known: {', '.join(sorted(_CONVERTERS))}"
            raise ConfigurationError(msg)
        if not param.isidentifier() or param in converters:
            msg = f"path({pattern!r}, ...): parameter name {param!r} is not a unique Python identifier"
            raise ConfigurationError(msg)
        regex, convert = _CONVERTERS[converter]
        converters[param] = convert
        parts.append(f"(?P<{param}>{regex})")
        pos = m.end()
    return "".join(parts), converters


def re_path(regex: str, app: ASGIApp, *, name: str | None = None) -> Route:
    """A regular-expression route such as ``r"^chat/(?P<room>[^/]+)/$"``.

    Named groups land in ``scope["url_route"]["kwargs"]`` as strings (groups
    that did not take part are left out); unnamed groups land in ``args``,
    but only when the pattern has no named groups (Django's rule). The
    pattern is anchored at the start of the remaining path and must match all
    of it, unless ``app`` is itself a :class:`URLRouter` (then it matches a
    prefix).

    Args:
        regex: the regular expression, without a leading ``/``.
        app: the ASGI application to call.
        name: an optional name for the route.

    Raises:
        ConfigurationError: the pattern is not a ``str`` or not a valid
            regular expression, or ``app`` is not callable.
    """
    pattern = _check_route("re_path", regex, app)
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        msg = f"re_path({pattern!r}, ...) is not a valid regular expression: {exc}"
        raise ConfigurationError(msg) from exc
    return Route(pattern, app, compiled, None, _is_prefix(app), name)


# How a route's match becomes ``(args, kwargs)``; see _plan().
_PATH = 0  # path(): groupdict() is the kwargs; apply the non-str conversions
_RE_NAMED = 1  # re_path() with named groups: kwargs (None dropped), no args
_RE_ARGS = 2  # re_path() without named groups: args only
_CONVERT = 3  # a Route built by hand: apply every converter, as Route.match does

_Plan = tuple[
    str,  # a literal the path must start with for the regex to match (may be "")
    Callable[[str], "re.Match[str] | None"],  # regex.match, or .fullmatch for a leaf
    ASGIApp,
    "URLRouter | None",  # the app, when the router can match into it directly
    bool,  # is_prefix
    int,  # _PATH, _RE_NAMED, _RE_ARGS or _CONVERT
    tuple[tuple[str, Callable[[str], Any]], ...],  # (name, converter), for path()
]
_Found = tuple[ASGIApp, str, str, tuple[Any, ...], dict[str, Any]]
"""(app, consumed, remaining, args, kwargs); ``consumed`` is appended to root_path."""


def _made_by_path(route: Route) -> bool:
    """Whether ``route`` has the regex and parameters path() makes of its pattern."""
    try:
        regex, converters = _path_regex(route.pattern)
    except ConfigurationError:
        return False
    return (
        route.regex == re.compile(regex)
        and route.converters is not None
        and list(route.converters) == list(converters)
    )


def _plan(route: Route) -> _Plan:
    """What matching ``route`` needs at call time, worked out once."""
    regex = route.regex
    matcher = regex.match if route.is_prefix else regex.fullmatch
    inner = route.app if route.is_prefix and isinstance(route.app, URLRouter) else None
    if route.converters is not None:
        conversions = tuple(route.converters.items())
        if not _made_by_path(route):
            return "", matcher, route.app, inner, route.is_prefix, _CONVERT, conversions
        # path() escapes the literal parts and its converter patterns have no
        # groups, so groupdict() holds exactly the parameters, in order; only
        # the converters that are not ``str`` need applying.
        conversions = tuple((n, c) for n, c in conversions if c is not str)
        # The text before the first parameter is matched literally: checking
        # it first skips the regex call for most routes that cannot match.
        literal = route.pattern.partition("<")[0]
        return literal, matcher, route.app, inner, route.is_prefix, _PATH, conversions
    kind = _RE_NAMED if regex.groupindex else _RE_ARGS
    return "", matcher, route.app, inner, route.is_prefix, kind, ()


def _routes(routes: object) -> tuple[Route, ...]:
    if isinstance(routes, (str, bytes)) or not isinstance(routes, Iterable):
        msg = f"URLRouter needs a list of path()/re_path() routes, got {routes!r}"
        raise ConfigurationError(msg)
    checked = tuple(routes)
    for route in checked:
        if not isinstance(route, Route):
            msg = (
                f"URLRouter routes must be made with path() or re_path(), got {route!r}"
            )
            raise ConfigurationError(msg)
    return checked


class URLRouter:
    """Route a connection on its URL path to the first matching route.

    The outermost router matches ``scope["path"]`` (already percent-decoded
    by the server; ``raw_path`` is left alone) minus ``scope["root_path"]``;
    a nested router matches ``scope["path_remaining"]``. Leading slashes are
    ignored. The application is called with a copy of the scope that has:

    - ``url_route``: ``{"args": (...), "kwargs": {...}}``, what this and any
      enclosing routers captured (inner values win on a name clash);
    - ``root_path``: extended by the prefixes that nested routes consumed;
    - ``path_remaining``: what is left of the path after them.

    Routes are tried in order; when a prefix route's inner router has no
    match, the next route is tried.

    Directly nested routers (and a :class:`ProtocolTypeRouter` above them)
    do not call each other: the outermost one matches through them all and
    makes the one copy of the scope that the application gets.

    Args:
        routes: routes made with :func:`path` and :func:`re_path`.

    Raises:
        ConfigurationError: ``routes`` is not an iterable of routes.
    """

    #: Tells an enclosing URLRouter to treat this app's route as a prefix.
    #: Middleware wrapping a URLRouter can set it too (as in Channels).
    _path_routing = True

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = _routes(routes)
        self._plans = tuple(_plan(route) for route in self.routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Call the application of the first route matching the path.

        Raises:
            ValueError: the scope has no ``path``, or no route matches it.
        """
        # Only the app and its scope stay referenced while the app runs.
        app, inner_scope = self._route(scope)
        await app(inner_scope, receive, send)

    def _route(self, scope: Scope) -> tuple[ASGIApp, Scope]:
        """Pick the application and build the (one) scope copy it is called with."""
        root_path = scope.get("root_path", "")
        remaining = scope.get("path_remaining")
        if remaining is None:
            remaining = scope.get("path")
            if remaining is None:
                msg = "No 'path' key in connection scope, cannot route URLs"
                raise ValueError(msg)
            if root_path:
                root = root_path.rstrip("/")
                if (
                    not root
                    or remaining == root
                    or (remaining.startswith(root) and remaining[len(root)] == "/")
                ):
                    remaining = remaining[len(root) :]
                else:
                    remaining = None
        found = None if remaining is None else self._match(remaining)
        if found is None:
            msg = f"No route found for path {scope.get('path')!r}."
            raise ValueError(msg)
        app, consumed, remaining, args, kwargs = found
        if consumed:
            root_path = root_path.rstrip("/") + consumed
        outer = scope.get("url_route")
        if outer:
            args = (*outer.get("args", ()), *args)
            kwargs = {**outer.get("kwargs", {}), **kwargs}
        return app, {
            **scope,
            "root_path": root_path,
            "path_remaining": remaining,
            "url_route": {"args": args, "kwargs": kwargs},
        }

    def _match(self, path: str) -> _Found | None:
        """Match ``path`` against the routes, descending into nested routers.

        The ``kwargs`` returned is a new dict the caller owns.
        """
        stripped = path.lstrip("/")
        offset = len(path) - len(stripped)
        for literal, matcher, app, inner, is_prefix, kind, conversions in self._plans:
            if literal and not stripped.startswith(literal):
                continue
            m = matcher(stripped)
            if m is None:
                continue
            args: tuple[Any, ...] = ()
            if kind == _PATH:
                kwargs = m.groupdict()
                for name, convert in conversions:
                    kwargs[name] = convert(kwargs[name])
            elif kind == _RE_NAMED:  # Django's rule: named groups win
                kwargs = m.groupdict()
                if None in kwargs.values():  # groups that did not take part
                    kwargs = {k: v for k, v in kwargs.items() if v is not None}
            elif kind == _RE_ARGS:
                args, kwargs = m.groups(), {}
            else:
                kwargs = {name: convert(m[name]) for name, convert in conversions}
            if not is_prefix:
                return app, "", "", args, kwargs
            cut = offset + m.end()
            if cut and path[cut - 1] == "/":  # keep root_path slash-free at the end
                cut -= 1
            if inner is None:  # e.g. middleware around a router
                return app, path[:cut], path[cut:], args, kwargs
            found = inner._match(path[cut:])
            if found is not None:
                leaf, consumed, remaining, inner_args, inner_kwargs = found
                kwargs.update(inner_kwargs)  # ours: made by this match
                return leaf, path[:cut] + consumed, remaining, args + inner_args, kwargs
        return None


class ChannelNameRouter:
    """Route worker (``channel``) scopes on ``scope["channel"]``.

    Used by ``trichannels worker`` for background-task channels, typically
    mapped under ``"channel"`` in a :class:`ProtocolTypeRouter`.

    Args:
        application_mapping: channel name to ASGI application.

    Raises:
        TypeError: the mapping is not a mapping, a key is not a ``str`` or a
            value is not callable.
    """

    def __init__(self, application_mapping: Mapping[str, ASGIApp]) -> None:
        self.application_mapping = _app_mapping(
            application_mapping, "ChannelNameRouter"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Hand the scope to the application mapped to its channel.

        Raises:
            ValueError: the scope has no ``channel`` key, or no application
                is configured for that channel.
        """
        if "channel" not in scope:
            msg = (
                "ChannelNameRouter got a scope without a 'channel' key. "
                "Did you make sure it's only being used for 'channel' type messages?"
            )
            raise ValueError(msg)
        channel = scope["channel"]
        app = self.application_mapping.get(channel)
        if app is None:
            known = ", ".join(map(repr, sorted(self.application_mapping)))
            msg = f"No application configured for channel name {channel!r} (configured: {known})"
            raise ValueError(msg)
        await app(scope, receive, send)
