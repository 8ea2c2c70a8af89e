"""Per-connection cost of routing: CPU per routed call and bytes kept per held connection.

    python bench/routing.py                          # the routers in trichannels/routing.py
    python bench/routing.py --impl /tmp/old.py       # also an older routing.py, side by side
    python bench/routing.py --calls 100000 --conns 2000 --runs 3

No server and no event loop: a router is called with a scope shaped like the one
uvicorn/Hypercorn build for a WebSocket (14 keys), and its coroutine is driven by
hand. Scenarios:

* ``flat``   -- ProtocolTypeRouter > URLRouter([path("echo"), path("chat/<str:room_name>")]),
  path ``/chat/lobby`` (bench/apps/tri.py's shape);
* ``http``   -- ProtocolTypeRouter > URLRouter([path("", ...)]), path ``/`` (S5's shape);
* ``nested`` -- ProtocolTypeRouter > URLRouter([path("room/<str:name>/",
  URLRouter([path("live/"), path("<int:n>/")]))]), path ``/room/lobby/7/``;
* ``wide``   -- twelve path() routes, the last one matches (``/chat/lobby/``);
* ``direct`` -- the app called with the server's scope, no routing (the floor).

CPU: us of process CPU time per call of a trivial app that returns at once (the routing cost is the
difference to ``direct``). Memory: ``--conns`` coroutines parked in an app that
holds its scope (as a consumer does), bytes still allocated per connection
(tracemalloc) beyond ``direct``: the routers' suspended frames, the scope copy,
``url_route``. Each figure is the median of ``--runs`` runs.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import sys
import time
import tracemalloc
import types
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def load(file: str | None) -> types.ModuleType:
    if file is None:
        import trichannels.routing

        return trichannels.routing
    spec = importlib.util.spec_from_file_location(f"routing_{abs(hash(file))}", file)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def server_scope(path: str) -> dict[str, Any]:
    """A fresh WebSocket scope, built as uvicorn builds it (one dict display, 14 keys)."""
    return {
        "type": "websocket",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "scheme": "ws",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000")],
        "subprotocols": [],
        "state": {},
        "extensions": {"websocket.http.response": {}},
    }


async def receive() -> Any:
    """Never awaited: the apps here do not receive."""


async def send(message: Any) -> None:
    pass


async def quick(scope: Any, receive: Any, send: Any) -> None:
    pass


@types.coroutine
def _park() -> Generator[None, None, None]:
    yield


class Idle:
    """An app that keeps its scope (as a consumer does) and parks until resumed."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scope = scope
        await _park()


SCENARIOS: dict[str, tuple[str, Callable[[types.ModuleType, Any], Any]]] = {
    "flat": (
        "/chat/lobby",
        lambda r, app: r.ProtocolTypeRouter(
            {
                "websocket": r.URLRouter(
                    [r.path("echo", app), r.path("chat/<str:room_name>", app)]
                )
            },
            lifespan_contexts=(),
        ),
    ),
    "http": (
        "/",
        lambda r, app: r.ProtocolTypeRouter(
            {"websocket": r.URLRouter([r.path("", app)])}, lifespan_contexts=()
        ),
    ),
    "nested": (
        "/room/lobby/7/",
        lambda r, app: r.ProtocolTypeRouter(
            {
                "websocket": r.URLRouter(
                    [
                        r.path(
                            "room/<str:name>/",
                            r.URLRouter(
                                [r.path("live/", app), r.path("<int:n>/", app)]
                            ),
                        )
                    ]
                )
            },
            lifespan_contexts=(),
        ),
    ),
    "wide": (
        "/chat/lobby/",
        lambda r, app: r.ProtocolTypeRouter(
            {
                "websocket": r.URLRouter(
                    [r.path(f"api/v{i}/<str:x>/", app) for i in range(11)]
                    + [r.path("chat/<str:room_name>/", app)]
                )
            },
            lifespan_contexts=(),
        ),
    ),
    "direct": ("/chat/lobby", lambda r, app: app),
}


def cpu_us(router: Any, path: str, calls: int) -> float:
    scope = server_scope(path)
    start = time.process_time()
    for _ in range(calls):
        coro = router(scope, receive, send)
        try:
            coro.send(None)
        except StopIteration:
            pass
    return (time.process_time() - start) / calls * 1e6


def bytes_per_conn(module: types.ModuleType, name: str, conns: int) -> float:
    path, build = SCENARIOS[name]
    scopes = [server_scope(path) for _ in range(conns)]
    apps = [Idle() for _ in range(conns)]
    # Built before tracing: the routers are not a per-connection cost.
    routers = [build(module, app) for app in apps]
    held = []
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for router, scope in zip(routers, scopes, strict=True):
        coro = router(scope, receive, send)
        coro.send(None)  # runs to the park: routed, scope held, frames suspended
        held.append(coro)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert all(app.scope["path"] == path for app in apps)
    for coro in held:
        coro.close()
    return (after - before) / conns


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--impl", action="append", default=[], help="another routing.py")
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    impls = {"current": load(None)} | {f: load(f) for f in args.impl}

    cpu: dict[tuple[str, str], list[float]] = {}
    mem: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.runs):  # interleaved, so drift hits every implementation alike
        for label, module in impls.items():
            for name, (path, build) in SCENARIOS.items():
                router = build(module, quick)
                cpu.setdefault((label, name), []).append(
                    cpu_us(router, path, args.calls)
                )
                mem.setdefault((label, name), []).append(
                    bytes_per_conn(module, name, args.conns)
                )

    print(f"Python {sys.version.split()[0]}; median of {args.runs} runs")
    print(
        f"{'impl':<10} {'scenario':<8} {'us/call':>8} {'routing us':>10} "
        f"{'B/conn':>8} {'routing B':>9}"
    )
    for label in impls:
        floor_cpu = statistics.median(cpu[label, "direct"])
        floor_mem = statistics.median(mem[label, "direct"])
        for name in SCENARIOS:
            c = statistics.median(cpu[label, name])
            m = statistics.median(mem[label, name])
            print(
                f"{label[-10:]:<10} {name:<8} {c:8.3f} {c - floor_cpu:10.3f} "
                f"{m:8.0f} {m - floor_mem:9.0f}"
            )


if __name__ == "__main__":
    main()
