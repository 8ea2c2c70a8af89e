"""The scopes URLRouter hands on: the same as a straightforward router would build.

URLRouter matches through directly nested routers and makes a single scope copy,
and ProtocolTypeRouter routes through a URLRouter without calling it. These tests
compare what the application gets with a reference router written the plain way
(one route at a time through the public ``Route.match``), and check that no
caller's scope, and no other connection's ``url_route``, is touched.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from trichannels.routing import ProtocolTypeRouter, Route, URLRouter, path, re_path
from trichannels.types import ASGIApp, Message, Receive, Scope, Send


class Leaf:
    """A named app that records the scopes it gets."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)

    def __repr__(self) -> str:
        return f"Leaf({self.name!r})"


class FlaggedLeaf(Leaf):
    """Stands for middleware around a router: an enclosing router treats it as a prefix."""

    _path_routing = True


async def never_receive() -> Message:
    raise AssertionError("the app should not receive")


async def never_send(message: Message) -> None:
    raise AssertionError(f"the app should not send {message!r}")


UUID = "6f1c2b7e-3d4a-4b5c-9d8e-0123456789ab"

LEAVES = {
    name: (FlaggedLeaf if name == "mw" else Leaf)(name)
    for name in (
        "echo",
        "chat",
        "page",
        "obj",
        "files",
        "re-named",
        "re-args",
        "re-optional",
        "live",
        "deep",
        "apiv",
        "mw",
        "root",
        "catch-all",
    )
}


def tree() -> list[Route]:
    leaf = LEAVES
    return [
        path("echo", leaf["echo"]),
        path("", leaf["root"]),
        path("chat/<str:room>/", leaf["chat"]),
        path("page/<int:n>/", leaf["page"]),
        path("obj/<uuid:id>/", leaf["obj"]),
        path("files/<path:p>", leaf["files"]),
        re_path(r"^re/(?P<a>[a-z]+)/(?P<n>\d+)/$", leaf["re-named"]),
        re_path(r"^re/(\w+)/(\d+)/$", leaf["re-args"]),
        re_path(r"^items/(?:(?P<n>\d+)/)?$", leaf["re-optional"]),
        path(
            "room/<str:name>/",
            URLRouter(
                [
                    path("clash/<int:name>/", leaf["live"]),  # inner value wins
                    path("live/", leaf["live"]),
                    path("<int:n>/", leaf["live"]),
                    re_path(
                        r"^(\w+)/",
                        URLRouter([path("<slug:s>/", leaf["deep"])]),
                    ),
                ]
            ),
        ),
        re_path(r"^api", URLRouter([path("v<int:v>/", leaf["apiv"])])),
        path("", URLRouter([path("x/<str:x>/", leaf["deep"])])),
        path("mw/<str:m>/", leaf["mw"]),
        path("a.b/", leaf["echo"]),  # the '.' is literal
        re_path(r".*", leaf["catch-all"]),
    ]


ROUTES = tree()
ROUTES_WITHOUT_CATCH_ALL = ROUTES[:-1]

# -- the reference: the plain algorithm, one route at a time through Route.match ---------


def ref_match(
    routes: tuple[Route, ...] | list[Route], path_: str
) -> tuple[ASGIApp, str, str, tuple[Any, ...], dict[str, Any]] | None:
    stripped = path_.lstrip("/")
    offset = len(path_) - len(stripped)
    for route in routes:
        result = route.match(stripped)
        if result is None:
            continue
        end, args, kwargs = result
        if not route.is_prefix:
            return route.app, "", "", args, kwargs
        consumed, rest = path_[: offset + end], path_[offset + end :]
        if consumed.endswith("/"):
            consumed, rest = consumed[:-1], "/" + rest
        if not isinstance(route.app, URLRouter):
            return route.app, consumed, rest, args, kwargs
        inner = ref_match(route.app.routes, rest)
        if inner is not None:
            return (
                inner[0],
                consumed + inner[1],
                inner[2],
                args + inner[3],
                {**kwargs, **inner[4]},
            )
    return None


def ref_route(routes: list[Route], scope: Scope) -> tuple[ASGIApp, Scope] | str:
    """(app, scope it gets), or the ValueError's message."""
    full_path = scope.get("path")
    remaining = scope.get("path_remaining")
    if remaining is None:
        if full_path is None:
            return "No 'path' key in connection scope, cannot route URLs"
        root = scope.get("root_path", "").rstrip("/")
        if not root or full_path == root or full_path.startswith(f"{root}/"):
            remaining = full_path[len(root) :]
    found = None if remaining is None else ref_match(routes, remaining)
    if found is None:
        return f"No route found for path {full_path!r}."
    app, consumed, rest, args, kwargs = found
    root_path = scope.get("root_path", "")
    if consumed:
        root_path = root_path.rstrip("/") + consumed
    outer = scope.get("url_route") or {}
    return app, {
        **scope,
        "root_path": root_path,
        "path_remaining": rest,
        "url_route": {
            "args": (*outer.get("args", ()), *args),
            "kwargs": {**outer.get("kwargs", {}), **kwargs},
        },
    }


def leaves_of(routes: tuple[Route, ...] | list[Route]) -> set[Leaf]:
    found: set[Leaf] = set()
    for route in routes:
        if isinstance(route.app, URLRouter):
            found |= leaves_of(route.app.routes)
        else:
            assert isinstance(route.app, Leaf)
            found.add(route.app)
    return found


def typed(value: Any) -> Any:
    """``value`` with the type of every leaf spelled out, so 7 != "7" != 7.0."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, [typed(v) for v in value])
    return (type(value).__name__, value)


async def route_both(
    scope: Scope, via_protocol_router: bool, routes: list[Route] = ROUTES
) -> None:
    """Route ``scope`` with URLRouter (or through ProtocolTypeRouter) and the reference."""
    leaves = leaves_of(routes)
    for leaf in leaves:
        leaf.scopes.clear()
    expected = ref_route(routes, copy.deepcopy(scope))
    before = copy.deepcopy(scope)
    router: ASGIApp = URLRouter(routes)
    if via_protocol_router:
        router = ProtocolTypeRouter({"websocket": router}, lifespan_contexts=())
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
            await router(scope, never_receive, never_send)
    else:
        await router(scope, never_receive, never_send)
        app, expected_scope = expected
        [(got_app, got)] = [(leaf, s) for leaf in leaves for s in leaf.scopes]
        assert got_app is app
        assert got is not scope
        assert typed(got) == typed(expected_scope)
    assert typed(scope) == typed(before)  # the caller's scope is untouched


#: Paths that some route takes (or, for the last, only the catch-all).
EXAMPLES = [
    "/echo",
    "/",
    "/chat/lobby/",
    "/page/007/",
    f"/obj/{UUID}/",
    "/files/a/b/c",
    "/re/abc/5/",
    "/re/ABC/5/",
    "/items/",
    "/items/3/",
    "/room/lobby/live/",
    "/room/lobby/7/",
    "/room/lobby/clash/3/",
    "/room/lobby/sub/x-y/",
    "//room/lobby/sub/x-y/",
    "/apiv3/",
    "/x/y/",
    "/mw/m/rest/of/it",
    "/a.b/",
    "/axb/",
    "/nothing/matches/but/catch-all",
]


SEGMENTS = [
    "",
    "echo",
    "chat",
    "page",
    "obj",
    UUID,
    "files",
    "re",
    "items",
    "room",
    "live",
    "clash",
    "api",
    "apiv2",
    "v3",
    "x",
    "mw",
    "mount",
    "a.b",
    "axb",
    "lobby",
    "7",
    "007",
    "-4",
    "x-y_1",
    "caf\u00e9",
]


@st.composite
def scopes(draw: st.DrawFn) -> Scope:
    trailing = st.sampled_from(["", "/"])
    if draw(st.booleans()):
        segments = draw(st.lists(st.sampled_from(SEGMENTS), max_size=5))
        path_ = draw(st.sampled_from(["/", "//", ""])) + "/".join(segments)
        path_ += draw(trailing)
    else:  # at or near a path some route takes
        path_ = draw(st.sampled_from(EXAMPLES))
        if not draw(st.integers(0, 3)):
            path_ += draw(st.sampled_from(SEGMENTS)) + draw(trailing)
    remaining = path_
    scope: Scope = {"type": "websocket", "headers": [(b"host", b"example.com")]}
    root = draw(st.sampled_from([None, "", "/", "/mount", "/mount/"]))
    if root is not None:
        scope["root_path"] = root
        if root.strip("/") and draw(st.booleans()):
            path_ = root.rstrip("/") + path_
    if draw(st.integers(0, 9)):
        scope["path"] = path_
    if not draw(st.integers(0, 4)):  # as middleware between routers passes it
        scope["path_remaining"] = remaining
    if draw(st.booleans()):
        scope["url_route"] = draw(
            st.sampled_from(
                [
                    {},
                    {"args": ("outer",), "kwargs": {"room": "outer", "k": 1}},
                    {"kwargs": {"n": "outer"}},
                    {"args": ["a", "b"]},
                ]
            )
        )
    return scope


@settings(max_examples=500, deadline=None)
@given(scope=scopes(), via_protocol_router=st.booleans(), catch_all=st.booleans())
async def test_same_scopes_as_the_reference_router(
    scope: Scope, via_protocol_router: bool, catch_all: bool
) -> None:
    routes = ROUTES if catch_all else ROUTES_WITHOUT_CATCH_ALL
    await route_both(scope, via_protocol_router, routes)


@pytest.mark.parametrize("via_protocol_router", [False, True])
@pytest.mark.parametrize(
    "path_",
    EXAMPLES,
)
async def test_same_scopes_as_the_reference_router_examples(
    path_: str, via_protocol_router: bool
) -> None:
    await route_both({"type": "websocket", "path": path_}, via_protocol_router)
    await route_both(
        {"type": "websocket", "path": "/mount" + path_, "root_path": "/mount"},
        via_protocol_router,
    )


# -- per-connection independence ---------------------------------------------------------


@pytest.mark.parametrize("via_protocol_router", [False, True])
@pytest.mark.parametrize(
    "path_", ["/echo", "/chat/lobby/", "/re/a/1/", "/room/lobby/7/", "/items/"]
)
async def test_url_route_is_fresh_for_every_connection(
    path_: str, via_protocol_router: bool
) -> None:
    router: ASGIApp = URLRouter(tree())
    if via_protocol_router:
        router = ProtocolTypeRouter({"websocket": router}, lifespan_contexts=())
    got: list[Scope] = []
    for leaf in LEAVES.values():
        leaf.scopes = got
    for _ in range(2):
        await router({"type": "websocket", "path": path_}, never_receive, never_send)
    first, second = got
    assert first is not second
    assert first["url_route"] is not second["url_route"]
    assert first["url_route"]["kwargs"] is not second["url_route"]["kwargs"]
    expected = copy.deepcopy(second["url_route"])
    first["url_route"]["kwargs"]["mutated"] = True
    first["url_route"]["extra"] = 1
    await router({"type": "websocket", "path": path_}, never_receive, never_send)
    assert got[2]["url_route"] == expected == second["url_route"]


async def test_outer_url_route_dicts_are_not_reused() -> None:
    leaf = Leaf("leaf")
    outer_kwargs = {"k": "v"}
    outer = {"args": ("a",), "kwargs": outer_kwargs}
    scope: Scope = {"type": "websocket", "path": "/x/1/", "url_route": outer}
    await URLRouter([path("x/<int:n>/", leaf)])(scope, never_receive, never_send)
    got = leaf.scopes[0]["url_route"]
    assert got == {"args": ("a",), "kwargs": {"k": "v", "n": 1}}
    assert got is not outer
    assert got["kwargs"] is not outer_kwargs
    assert outer == {"args": ("a",), "kwargs": {"k": "v"}}


async def test_inner_router_does_not_mutate_the_scope_middleware_passes_it() -> None:
    leaf = Leaf("leaf")
    inner = URLRouter([path("<int:n>/", leaf)])
    passed: list[Scope] = []

    class Middleware:
        _path_routing = True

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            own = {**scope, "user": "alice"}
            passed.append(own)
            snapshot = copy.deepcopy(own)
            await inner(own, receive, send)
            assert own == snapshot

    await URLRouter([path("room/<str:r>/", Middleware())])(
        {"type": "websocket", "path": "/room/x/5/"}, never_receive, never_send
    )
    assert leaf.scopes[0] is not passed[0]
    assert leaf.scopes[0]["url_route"] == {"args": (), "kwargs": {"r": "x", "n": 5}}
    assert passed[0]["url_route"] == {"args": (), "kwargs": {"r": "x"}}
    assert passed[0]["path_remaining"] == "/5/"


# -- ProtocolTypeRouter in front of a URLRouter ------------------------------------------


async def test_protocol_type_router_keeps_url_router_errors() -> None:
    router = ProtocolTypeRouter(
        {"websocket": URLRouter([path("chat/", Leaf("chat"))])}, lifespan_contexts=()
    )
    with pytest.raises(ValueError, match=r"^No route found for path '/nope/'\.$"):
        await router({"type": "websocket", "path": "/nope/"}, never_receive, never_send)
    with pytest.raises(
        ValueError, match=r"^No 'path' key in connection scope, cannot route URLs$"
    ):
        await router({"type": "websocket"}, never_receive, never_send)


async def test_protocol_type_router_calls_a_url_router_subclass() -> None:
    calls: list[str] = []

    class LoggingRouter(URLRouter):
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            calls.append(scope["path"])
            await super().__call__(scope, receive, send)

    leaf = Leaf("chat")
    router = ProtocolTypeRouter(
        {"websocket": LoggingRouter([path("chat/", leaf)])}, lifespan_contexts=()
    )
    await router({"type": "websocket", "path": "/chat/"}, never_receive, never_send)
    assert calls == ["/chat/"]
    assert leaf.scopes[0]["path_remaining"] == ""


# -- routes built by hand ----------------------------------------------------------------


def hand_built() -> list[Route]:
    base = path("<str:room>/<int:n>/", Leaf("path-made"))
    return [
        # path()'s regex, a converter of its own: still what Route.match gives.
        dataclasses.replace(
            base, app=Leaf("upper"), converters={"room": str.upper, "n": int}
        ),
        # Converters over a regex path() would not make (extra group, other flags).
        Route(
            "x<str:a>",
            Leaf("own-regex"),
            re.compile(r"x(?P<a>[^/]+)(/)?"),
            {"a": str},
            False,
        ),
        Route(
            "y<str:a>/",
            Leaf("ignorecase"),
            re.compile(r"y(?P<a>[^/]+)/", re.IGNORECASE),
            {"a": str},
            False,
        ),
        base,
    ]


@pytest.mark.parametrize(
    "path_", ["/lobby/7/", "/xab", "/xab/", "/Yab/", "/yab/", "/lobby/x/"]
)
async def test_routes_built_by_hand_match_as_route_match_says(path_: str) -> None:
    await route_both({"type": "websocket", "path": path_}, False, hand_built())
