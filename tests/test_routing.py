"""Tests for trichannels.routing: ProtocolTypeRouter (and lifespan), URLRouter, ChannelNameRouter."""

from __future__ import annotations

import copy
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import trio
from hypothesis import given, strategies as st

from trichannels.exceptions import ConfigurationError, UnexpectedMessage
from trichannels.routing import (
    ChannelNameRouter,
    ProtocolTypeRouter,
    Route,
    URLRouter,
    path,
    re_path,
)
from trichannels.types import Message, Receive, Scope, Send

# -- helpers -------------------------------------------------------------------


class Recorder:
    """An ASGI app that records the scopes it is called with."""

    def __init__(self, label: str = "app") -> None:
        self.label = label
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)

    @property
    def scope(self) -> Scope:
        assert len(self.scopes) == 1, self.scopes
        return self.scopes[0]


async def never_receive() -> Message:
    raise AssertionError("the app should not receive")


async def never_send(message: Message) -> None:
    raise AssertionError(f"the app should not send {message!r}")


async def call(app: Any, path_: str, **extra: Any) -> Scope:
    """Call ``app`` with a websocket scope for ``path_``; return the scope passed in."""
    scope: Scope = {"type": "websocket", "path": path_, **extra}
    await app(scope, never_receive, never_send)
    return scope


async def route_scope(route: Route, path_: str, **extra: Any) -> Scope:
    """Route ``path_`` through a one-route URLRouter; return the scope the app got."""
    assert isinstance(route.app, Recorder)
    await call(URLRouter([route]), path_, **extra)
    return route.app.scope


# -- URLRouter: converters -------------------------------------------------------

UUID = "6f1c2b7e-3d4a-4b5c-9d8e-0123456789ab"


@pytest.mark.parametrize(
    ("route", "path_", "kwargs"),
    [
        ("room/<room>/", "/room/lobby/", {"room": "lobby"}),
        ("room/<str:room>/", "/room/lob.by~!/", {"room": "lob.by~!"}),
        ("page/<int:n>/", "/page/42/", {"n": 42}),
        ("page/<int:n>/", "/page/007/", {"n": 7}),
        ("post/<slug:s>/", "/post/hello-world_2/", {"s": "hello-world_2"}),
        ("obj/<uuid:id>/", f"/obj/{UUID}/", {"id": uuid.UUID(UUID)}),
        ("files/<path:p>", "/files/a/b/c.txt", {"p": "a/b/c.txt"}),
        ("<str:a>/<int:b>/<slug:c>/", "/x/1/y/", {"a": "x", "b": 1, "c": "y"}),
    ],
)
async def test_path_converters(route: str, path_: str, kwargs: dict[str, Any]) -> None:
    scope = await route_scope(path(route, Recorder()), path_)
    assert scope["url_route"] == {"args": (), "kwargs": kwargs}
    assert all(
        type(scope["url_route"]["kwargs"][k]) is type(v) for k, v in kwargs.items()
    )


@pytest.mark.parametrize(
    ("route", "path_"),
    [
        ("room/<str:room>/", "/room/a/b/"),  # str stops at /
        ("room/<str:room>/", "/room//"),  # str needs one character
        ("page/<int:n>/", "/page/4x/"),
        ("page/<int:n>/", "/page/-4/"),
        ("page/<int:n>/", "/page/\u0663/"),  # a non-ASCII digit
        ("post/<slug:s>/", "/post/a.b/"),
        ("post/<slug:s>/", "/post/caf\u00e9/"),
        ("obj/<uuid:id>/", f"/obj/{UUID.upper()}/"),  # lowercase canonical form only
        ("obj/<uuid:id>/", f"/obj/{UUID.replace('-', '')}/"),
        ("files/<path:p>", "/files/"),
    ],
)
async def test_converters_reject(route: str, path_: str) -> None:
    with pytest.raises(ValueError, match=r"^No route found"):
        await call(URLRouter([path(route, Recorder())]), path_)


async def test_leaf_routes_match_the_whole_path() -> None:
    router = URLRouter([path("chat/", Recorder()), re_path(r"^api/", Recorder())])
    for p in ("/chat/extra/", "/api/v1/", "/xchat/"):
        with pytest.raises(ValueError, match=r"^No route found"):
            await call(router, p)


async def test_first_matching_route_wins_and_leaf_scope_keys() -> None:
    first, second = Recorder(), Recorder()
    router = URLRouter([path("a/<int:n>/", first), path("a/<str:s>/", second)])
    await call(router, "/a/1/")
    await call(router, "/a/b/")
    assert first.scope["url_route"]["kwargs"] == {"n": 1}
    assert second.scope["url_route"]["kwargs"] == {"s": "b"}
    # A leaf consumes the rest; root_path is only extended by prefix (nested) routes.
    assert first.scope["path_remaining"] == ""
    assert first.scope["root_path"] == ""
    assert first.scope["path"] == "/a/1/"


async def test_catch_all_route() -> None:
    leaf = Recorder()
    router = URLRouter([path("chat/", Recorder()), re_path(r".*", leaf)])
    for p in ("/", "/nope/", "/deep/er/"):
        await call(router, p)
    assert [s["path"] for s in leaf.scopes] == ["/", "/nope/", "/deep/er/"]


async def test_empty_route_matches_root() -> None:
    scope = await route_scope(path("", Recorder()), "/")
    assert scope["url_route"] == {"args": (), "kwargs": {}}


# -- URLRouter: re_path ------------------------------------------------------------


async def test_re_path_named_groups_are_kwargs_strings() -> None:
    scope = await route_scope(
        re_path(r"^chat/(?P<room>\w+)/(?P<n>\d+)/$", Recorder()), "/chat/lobby/5/"
    )
    assert scope["url_route"] == {"args": (), "kwargs": {"room": "lobby", "n": "5"}}


async def test_re_path_unnamed_groups_are_args() -> None:
    scope = await route_scope(
        re_path(r"^chat/(\w+)/(\d+)/$", Recorder()), "/chat/lobby/5/"
    )
    assert scope["url_route"] == {"args": ("lobby", "5"), "kwargs": {}}


async def test_re_path_named_groups_discard_unnamed_ones() -> None:
    scope = await route_scope(re_path(r"^(\w+)/(?P<n>\d+)/$", Recorder()), "/chat/5/")
    assert scope["url_route"] == {"args": (), "kwargs": {"n": "5"}}


async def test_re_path_drops_named_groups_that_did_not_match() -> None:
    scope = await route_scope(
        re_path(r"^items/(?:(?P<n>\d+)/)?$", Recorder()), "/items/"
    )
    assert scope["url_route"] == {"args": (), "kwargs": {}}


async def test_re_path_is_anchored_at_the_start() -> None:
    # Channels (Django) searches unanchored patterns; trichannels anchors them.
    router = URLRouter([re_path(r"bar/", Recorder())])
    with pytest.raises(ValueError, match=r"^No route found for path '/xx/bar/'\.$"):
        await call(router, "/xx/bar/")
    await call(router, "/bar/")


async def test_re_path_dollar_does_not_accept_trailing_newline() -> None:
    with pytest.raises(ValueError, match=r"^No route found"):
        await call(URLRouter([re_path(r"^a/$", Recorder())]), "/a/\n")


# -- URLRouter: nesting -------------------------------------------------------------


async def test_nesting_three_levels() -> None:
    leaf = Recorder()
    router = URLRouter(
        [
            path(
                "api/v<int:version>/",
                URLRouter(
                    [
                        re_path(
                            r"^rooms/(?P<room>[^/]+)/",
                            URLRouter([path("messages/<int:id>/", leaf)]),
                        ),
                    ]
                ),
            ),
        ]
    )
    await call(router, "/api/v2/rooms/lobby/messages/7/")
    assert leaf.scope["url_route"] == {
        "args": (),
        "kwargs": {"version": 2, "room": "lobby", "id": 7},
    }
    assert leaf.scope["root_path"] == "/api/v2/rooms/lobby"
    assert leaf.scope["path"] == "/api/v2/rooms/lobby/messages/7/"
    assert leaf.scope["path_remaining"] == ""


async def test_nesting_under_a_server_root_path() -> None:
    leaf = Recorder()
    router = URLRouter([path("chat/<str:room>/", URLRouter([path("live/", leaf)]))])
    await call(router, "/mount/chat/lobby/live/", root_path="/mount")
    await call(router, "/mount/chat/lobby/live/", root_path="/mount/")
    for scope in leaf.scopes:
        assert scope["root_path"] == "/mount/chat/lobby"
        assert scope["url_route"]["kwargs"] == {"room": "lobby"}


async def test_nesting_accumulates_args_and_inner_kwargs_win() -> None:
    leaf = Recorder()
    inner = URLRouter([re_path(r"^(\d+)/(\d+)/$", leaf)])
    await call(URLRouter([re_path(r"^(\w+)/", inner)]), "/a/1/2/")
    assert leaf.scope["url_route"] == {"args": ("a", "1", "2"), "kwargs": {}}

    leaf = Recorder()
    inner = URLRouter([path("<int:x>/", leaf)])
    await call(URLRouter([path("<str:x>/<str:y>/", inner)]), "/a/b/3/")
    assert leaf.scope["url_route"]["kwargs"] == {"x": 3, "y": "b"}


async def test_nested_prefix_without_trailing_slash() -> None:
    leaf = Recorder()
    await call(URLRouter([re_path(r"^api", URLRouter([path("v2/", leaf)]))]), "/apiv2/")
    assert leaf.scope["root_path"] == "/api"
    await call(URLRouter([path("", URLRouter([path("x/", leaf)]))]), "/x/")
    assert leaf.scopes[1]["root_path"] == ""


async def test_no_match_in_inner_router_tries_the_next_route() -> None:
    first, fallback = Recorder("first"), Recorder("fallback")
    router = URLRouter(
        [
            path("chat/", URLRouter([path("a/", first)])),
            path("chat/<str:x>/", fallback),
        ]
    )
    await call(router, "/chat/b/")
    assert not first.scopes
    assert fallback.scope["url_route"]["kwargs"] == {"x": "b"}
    assert fallback.scope["root_path"] == ""


async def test_middleware_flagged_for_path_routing_gets_prefix_scope() -> None:
    leaf = Recorder()
    inner = URLRouter([path("<int:n>/", leaf)])
    seen: list[Scope] = []

    class Middleware:
        _path_routing = True

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            seen.append(scope)
            await inner({**scope, "user": "alice"}, receive, send)

    await call(URLRouter([path("room/<str:r>/", Middleware())]), "/room/x/5/")
    assert seen[0]["root_path"] == "/room/x"
    assert seen[0]["path_remaining"] == "/5/"
    assert leaf.scope["url_route"]["kwargs"] == {"r": "x", "n": 5}
    assert leaf.scope["root_path"] == "/room/x"
    assert leaf.scope["user"] == "alice"

    with pytest.raises(ValueError, match=r"^No route found for path '/room/x/y/'\.$"):
        await call(URLRouter([path("room/<str:r>/", Middleware())]), "/room/x/y/")


async def test_outer_scope_is_not_mutated() -> None:
    leaf = Recorder()
    router = URLRouter([path("a/<int:n>/", URLRouter([path("<str:s>/", leaf)]))])
    scope: Scope = {
        "type": "websocket",
        "path": "/a/1/b/",
        "root_path": "",
        "url_route": {"args": ("outer",), "kwargs": {"k": "v"}},
        "headers": [(b"host", b"example.com")],
    }
    before = copy.deepcopy(scope)
    await router(scope, never_receive, never_send)
    assert scope == before
    assert leaf.scope is not scope
    assert leaf.scope["url_route"] == {
        "args": ("outer",),
        "kwargs": {"k": "v", "n": 1, "s": "b"},
    }


# -- URLRouter: root_path, percent-encoding, errors ------------------------------------


async def test_root_path_is_stripped_by_the_outermost_router() -> None:
    router = URLRouter([path("chat/", Recorder())])
    await call(router, "/base/chat/", root_path="/base")
    await call(router, "/base/chat/", root_path="/base/")
    for p in ("/other/chat/", "/basechat/"):
        with pytest.raises(
            ValueError, match=rf"^No route found for path {re.escape(repr(p))}\.$"
        ):
            await call(router, p, root_path="/base")


async def test_percent_encoded_path_matches_decoded_and_raw_path_is_untouched() -> None:
    leaf = Recorder()
    await call(
        URLRouter([path("chat/<str:room>/", leaf)]),
        "/chat/caf\u00e9 au lait/",
        raw_path=b"/chat/caf%C3%A9%20au%20lait/",
    )
    assert leaf.scope["url_route"]["kwargs"] == {"room": "caf\u00e9 au lait"}
    assert leaf.scope["raw_path"] == b"/chat/caf%C3%A9%20au%20lait/"


async def test_encoded_slash_is_a_slash_like_channels() -> None:
    # The server decodes %2F into the path, so it separates segments.
    router = URLRouter(
        [
            path("chat/<str:room>/", Recorder()),
            path("chat/<path:rest>", leaf := Recorder()),
        ]
    )
    await call(router, "/chat/a/b/", raw_path=b"/chat/a%2Fb/")
    assert leaf.scope["url_route"]["kwargs"] == {"rest": "a/b/"}
    assert leaf.scope["raw_path"] == b"/chat/a%2Fb/"


async def test_no_route_error_names_the_full_path() -> None:
    router = URLRouter([path("api/", URLRouter([path("x/", Recorder())]))])
    with pytest.raises(ValueError, match=r"^No route found for path '/nope/'\.$"):
        await call(router, "/nope/")
    with pytest.raises(ValueError, match=r"^No route found for path '/api/y/'\.$"):
        await call(router, "/api/y/")


async def test_scope_without_path() -> None:
    with pytest.raises(
        ValueError, match=r"^No 'path' key in connection scope, cannot route URLs$"
    ):
        await URLRouter([])({"type": "channel"}, never_receive, never_send)


def app_(scope: Scope, receive: Receive, send: Send) -> Any:
    return None


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: path("a/<foo:x>/", app_),
            r"path('a/<foo:x>/', ...) uses unknown converter 'foo'",
        ),
        (
            lambda: path("a/<int:1x>/", app_),
            r"path('a/<int:1x>/', ...): parameter name '1x'",
        ),
        (
            lambda: path("a/<x>/<int:x>/", app_),
            r"path('a/<x>/<int:x>/', ...): parameter name 'x'",
        ),
        (lambda: path("a/<int: x>/", app_), r"parameter name ' x'"),
        (lambda: path("a/<x/", app_), r"path('a/<x/', ...): unbalanced"),
        (
            lambda: path("/a/", app_),
            r"path('/a/', ...): patterns must not start with '/'",
        ),
        (
            lambda: re_path(r"^/a/", app_),
            r"re_path('^/a/', ...): patterns must not start with '/'",
        ),
        (
            lambda: re_path(r"^a/(?P<x", app_),
            r"re_path('^a/(?P<x', ...) is not a valid regular expression",
        ),
        (lambda: path(b"a/", app_), r"path() needs a str pattern, got b'a/'"),
        (lambda: re_path(None, app_), r"re_path() needs a str pattern, got None"),
        (
            lambda: path("a/", "myapp.consumers.Chat"),
            r"path('a/', ...): 'myapp.consumers.Chat' is not a callable",
        ),
        (lambda: re_path("a/", None), r"re_path('a/', ...): None is not a callable"),
        (
            lambda: URLRouter([path("a/", app_), ("b/", app_)]),
            r"made with path() or re_path(), got ('b/', <function app_",
        ),
        (
            lambda: URLRouter("a/"),
            r"URLRouter needs a list of path()/re_path() routes, got 'a/'",
        ),
        (
            lambda: URLRouter(None),
            r"URLRouter needs a list of path()/re_path() routes, got None",
        ),
    ],
)
def test_bad_routes_fail_at_construction(
    build: Callable[[], object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)) as info:
        build()
    assert isinstance(info.value, ValueError)


# -- URLRouter: property -----------------------------------------------------------------


@given(
    s=st.from_regex(r"[-a-zA-Z0-9_]+", fullmatch=True),
    n=st.integers(min_value=0, max_value=10**30),
)
async def test_slug_and_int_round_trip(s: str, n: int) -> None:
    scope = await route_scope(path("a/<slug:s>/<int:n>/", Recorder()), f"/a/{s}/{n}/")
    assert scope["url_route"]["kwargs"] == {"s": s, "n": n}


# -- ProtocolTypeRouter ----------------------------------------------------------------------


async def test_protocol_type_router_dispatches_on_type() -> None:
    http, ws = Recorder(), Recorder()
    router = ProtocolTypeRouter({"http": http, "websocket": ws}, lifespan_contexts=())
    scope = {"type": "websocket", "path": "/"}
    await router(scope, never_receive, never_send)
    assert ws.scope is scope  # passed through as is
    assert not http.scopes


async def test_protocol_type_router_unknown_type() -> None:
    router = ProtocolTypeRouter(
        {"websocket": Recorder(), "http": Recorder()}, lifespan_contexts=()
    )
    with pytest.raises(
        ValueError,
        match=r"^No application configured for scope type 'mqtt' \(configured: 'http', 'lifespan', 'websocket'\)$",
    ):
        await router({"type": "mqtt"}, never_receive, never_send)


async def test_protocol_type_router_mapped_lifespan_app_is_used() -> None:
    own = Recorder()
    router = ProtocolTypeRouter({"lifespan": own})
    await router({"type": "lifespan"}, never_receive, never_send)
    assert own.scope["type"] == "lifespan"


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (
            lambda: ProtocolTypeRouter({1: app_}),
            TypeError,
            "ProtocolTypeRouter keys must be str, got 1",
        ),
        (
            lambda: ProtocolTypeRouter({"http": "app"}),
            TypeError,
            "ProtocolTypeRouter maps 'http' to 'app', which is not a callable",
        ),
        (
            lambda: ProtocolTypeRouter([("http", app_)]),
            TypeError,
            "ProtocolTypeRouter needs a mapping",
        ),
        (
            lambda: ProtocolTypeRouter({}, lifespan_contexts=[None]),
            TypeError,
            "lifespan_contexts entries must be callables",
        ),
        (
            lambda: ProtocolTypeRouter({"lifespan": app_}, lifespan_contexts=()),
            ConfigurationError,
            "the mapping routes 'lifespan' to its own application",
        ),
        (
            lambda: ChannelNameRouter({"x": 3}),
            TypeError,
            "ChannelNameRouter maps 'x' to 3, which is not a callable",
        ),
        (
            lambda: ChannelNameRouter({None: app_}),
            TypeError,
            "ChannelNameRouter keys must be str, got None",
        ),
    ],
)
def test_bad_mappings_fail_at_construction(
    build: Callable[[], object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        build()


# -- ProtocolTypeRouter: lifespan ---------------------------------------------------------------

LIFESPAN_SCOPE = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}


def start_lifespan(
    nursery: trio.Nursery, app: ProtocolTypeRouter
) -> tuple[trio.MemorySendChannel[Message], trio.MemoryReceiveChannel[Message]]:
    """Run ``app``'s lifespan in ``nursery``; return (to_app, from_app) channels."""
    to_app, app_inbox = trio.open_memory_channel[Message](10)
    app_outbox, from_app = trio.open_memory_channel[Message](10)
    nursery.start_soon(app, dict(LIFESPAN_SCOPE), app_inbox.receive, app_outbox.send)
    return to_app, from_app


def recording_context(
    log: list[str], name: str, *, fail_enter: bool = False, fail_exit: bool = False
) -> Callable[[], Any]:
    @asynccontextmanager
    async def context() -> AsyncIterator[None]:
        log.append(f"enter {name}")
        if fail_enter:
            raise RuntimeError(f"{name} cannot start")
        try:
            yield
        finally:
            log.append(f"exit {name}")
        if fail_exit:
            raise OSError(f"{name} cannot stop")

    return context


async def test_lifespan_enters_in_order_and_exits_in_reverse() -> None:
    log: list[str] = []
    router = ProtocolTypeRouter(
        {}, lifespan_contexts=[recording_context(log, "a"), recording_context(log, "b")]
    )
    async with trio.open_nursery() as nursery:
        to_app, from_app = start_lifespan(nursery, router)
        await to_app.send({"type": "lifespan.startup"})
        assert await from_app.receive() == {"type": "lifespan.startup.complete"}
        assert log == ["enter a", "enter b"]
        await to_app.send({"type": "lifespan.shutdown"})
        assert await from_app.receive() == {"type": "lifespan.shutdown.complete"}
        assert log == ["enter a", "enter b", "exit b", "exit a"]


async def test_lifespan_without_contexts() -> None:
    router = ProtocolTypeRouter({}, lifespan_contexts=())
    async with trio.open_nursery() as nursery:
        to_app, from_app = start_lifespan(nursery, router)
        await to_app.send({"type": "lifespan.startup"})
        assert await from_app.receive() == {"type": "lifespan.startup.complete"}
        await to_app.send({"type": "lifespan.shutdown"})
        assert await from_app.receive() == {"type": "lifespan.shutdown.complete"}


async def test_lifespan_startup_failure(caplog: pytest.LogCaptureFixture) -> None:
    log: list[str] = []
    router = ProtocolTypeRouter(
        {},
        lifespan_contexts=[
            recording_context(log, "a"),
            recording_context(log, "b", fail_enter=True),
            recording_context(log, "c"),
        ],
    )
    with caplog.at_level(logging.ERROR, logger="trichannels.routing"):
        async with trio.open_nursery() as nursery:
            to_app, from_app = start_lifespan(nursery, router)
            await to_app.send({"type": "lifespan.startup"})
            assert await from_app.receive() == {
                "type": "lifespan.startup.failed",
                "message": "RuntimeError: b cannot start",
            }
            # What did start is closed before the failure is reported; the app returns.
    assert log == ["enter a", "enter b", "exit a"]
    [record] = caplog.records
    assert record.getMessage() == "Lifespan startup failed"
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)


async def test_lifespan_startup_failure_in_a_group_names_the_real_error() -> None:
    @asynccontextmanager
    async def context() -> AsyncIterator[None]:
        raise ExceptionGroup("unhandled errors", [KeyError("redis-url")])
        yield

    router = ProtocolTypeRouter({}, lifespan_contexts=[context])
    async with trio.open_nursery() as nursery:
        to_app, from_app = start_lifespan(nursery, router)
        await to_app.send({"type": "lifespan.startup"})
        assert await from_app.receive() == {
            "type": "lifespan.startup.failed",
            "message": "KeyError: 'redis-url'",
        }


async def test_lifespan_shutdown_failure(caplog: pytest.LogCaptureFixture) -> None:
    log: list[str] = []
    router = ProtocolTypeRouter(
        {},
        lifespan_contexts=[
            recording_context(log, "a"),
            recording_context(log, "b", fail_exit=True),
        ],
    )
    with caplog.at_level(logging.ERROR, logger="trichannels.routing"):
        async with trio.open_nursery() as nursery:
            to_app, from_app = start_lifespan(nursery, router)
            await to_app.send({"type": "lifespan.startup"})
            assert await from_app.receive() == {"type": "lifespan.startup.complete"}
            await to_app.send({"type": "lifespan.shutdown"})
            assert await from_app.receive() == {
                "type": "lifespan.shutdown.failed",
                "message": "OSError: b cannot stop",
            }
    assert log == ["enter a", "enter b", "exit b", "exit a"]
    assert [r.getMessage() for r in caplog.records] == ["Lifespan shutdown failed"]


async def test_lifespan_contexts_background_tasks_run_until_shutdown() -> None:
    """A context's task group lives inside the lifespan call, from startup to shutdown."""
    events: list[str] = []
    requests, inbox = trio.open_memory_channel[str](0)
    replies, outbox = trio.open_memory_channel[str](0)

    async def echo_worker() -> None:
        try:
            async for item in inbox:
                await replies.send(item.upper())
        finally:
            events.append("worker stopped")

    @asynccontextmanager
    async def background() -> AsyncIterator[None]:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo_worker)
            yield
            nursery.cancel_scope.cancel()

    router = ProtocolTypeRouter({}, lifespan_contexts=[background])
    async with trio.open_nursery() as nursery:
        to_app, from_app = start_lifespan(nursery, router)
        await to_app.send({"type": "lifespan.startup"})
        assert await from_app.receive() == {"type": "lifespan.startup.complete"}
        for word in ("ping", "pong"):  # the worker answers between startup and shutdown
            await requests.send(word)
            assert await outbox.receive() == word.upper()
        assert events == []
        await to_app.send({"type": "lifespan.shutdown"})
        assert await from_app.receive() == {"type": "lifespan.shutdown.complete"}
        assert events == ["worker stopped"]  # stopped before shutdown was reported


async def test_lifespan_background_crash_propagates_to_the_server() -> None:
    async def crash() -> None:
        await trio.lowlevel.checkpoint()
        raise RuntimeError("reader died")

    @asynccontextmanager
    async def background() -> AsyncIterator[None]:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(crash)
            yield

    router = ProtocolTypeRouter({}, lifespan_contexts=[background])
    to_app, app_inbox = trio.open_memory_channel[Message](10)
    app_outbox, from_app = trio.open_memory_channel[Message](10)
    await to_app.send({"type": "lifespan.startup"})
    with pytest.RaisesGroup(RuntimeError):
        await router(dict(LIFESPAN_SCOPE), app_inbox.receive, app_outbox.send)
    assert from_app.receive_nowait() == {"type": "lifespan.startup.complete"}
    with pytest.raises(trio.WouldBlock):  # no shutdown.failed was invented
        from_app.receive_nowait()


@pytest.mark.parametrize("first", ["lifespan.shutdown", "http.request"])
async def test_lifespan_unexpected_first_message(first: str) -> None:
    to_app, app_inbox = trio.open_memory_channel[Message](10)
    await to_app.send({"type": first})
    router = ProtocolTypeRouter({}, lifespan_contexts=())
    with pytest.raises(
        UnexpectedMessage, match=re.escape(f"unexpected message type {first!r}")
    ):
        await router(dict(LIFESPAN_SCOPE), app_inbox.receive, never_send)


# -- ChannelNameRouter -------------------------------------------------------------------------------


async def test_channel_name_router() -> None:
    thumbs, emails = Recorder(), Recorder()
    router = ChannelNameRouter({"thumbnails": thumbs, "emails": emails})
    scope = {"type": "channel", "channel": "thumbnails"}
    await router(scope, never_receive, never_send)
    assert thumbs.scope is scope
    assert not emails.scopes


async def test_channel_name_router_errors() -> None:
    router = ChannelNameRouter({"thumbnails": Recorder(), "emails": Recorder()})
    with pytest.raises(
        ValueError,
        match=r"without a 'channel' key.*only being used for 'channel' type messages",
    ):
        await router({"type": "websocket", "path": "/"}, never_receive, never_send)
    with pytest.raises(
        ValueError,
        match=r"^No application configured for channel name 'resize' \(configured: 'emails', 'thumbnails'\)$",
    ):
        await router(
            {"type": "channel", "channel": "resize"}, never_receive, never_send
        )


async def test_routers_nest_inside_each_other() -> None:
    leaf, worker = Recorder(), Recorder()
    app = ProtocolTypeRouter(
        {
            "websocket": URLRouter([path("ws/<str:room>/", leaf)]),
            "channel": ChannelNameRouter({"thumbnails": worker}),
        },
        lifespan_contexts=(),
    )
    await call(app, "/ws/lobby/")
    await app({"type": "channel", "channel": "thumbnails"}, never_receive, never_send)
    assert leaf.scope["url_route"]["kwargs"] == {"room": "lobby"}
    assert worker.scope["channel"] == "thumbnails"


# -- backend neutrality (trio and asyncio) ----------------------------------------------------------------


def test_url_router_on_any_backend(backend: str) -> None:
    leaf = Recorder()
    router = ProtocolTypeRouter(
        {
            "websocket": URLRouter(
                [path("api/<int:v>/", URLRouter([path("<slug:s>/", leaf)]))]
            )
        },
        lifespan_contexts=(),
    )

    async def body() -> None:
        await call(router, "/api/3/x-y/")

    anyio.run(body, backend=backend)
    assert leaf.scope["url_route"]["kwargs"] == {"v": 3, "s": "x-y"}
    assert leaf.scope["root_path"] == "/api/3"


def test_lifespan_on_any_backend(backend: str) -> None:
    events: list[str] = []

    @asynccontextmanager
    async def background() -> AsyncIterator[None]:
        async def tick() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                events.append("task cancelled")

        async with anyio.create_task_group() as tg:
            tg.start_soon(tick)
            events.append("started")
            yield
            tg.cancel_scope.cancel()

    router = ProtocolTypeRouter({}, lifespan_contexts=[background])

    async def body() -> None:
        to_app, app_inbox = anyio.create_memory_object_stream[Message](10)
        app_outbox, from_app = anyio.create_memory_object_stream[Message](10)
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                router, dict(LIFESPAN_SCOPE), app_inbox.receive, app_outbox.send
            )
            await to_app.send({"type": "lifespan.startup"})
            assert await from_app.receive() == {"type": "lifespan.startup.complete"}
            assert events == ["started"]
            await to_app.send({"type": "lifespan.shutdown"})
            assert await from_app.receive() == {"type": "lifespan.shutdown.complete"}
            assert events == ["started", "task cancelled"]
        for stream in (to_app, app_inbox, app_outbox, from_app):
            stream.close()

    anyio.run(body, backend=backend)
