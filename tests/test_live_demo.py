"""The chat demo end to end over real sockets: in one process, then across two on Redis.

The cross-process test starts two ``trichannels demo --layer redis://...``
processes, exactly as a user would, and proves that a message posted on one
reaches a client of the other, that member counts span both, and that SIGTERM
closes the WebSockets with 1001 and exits 0. It uses Redis database
:data:`REDIS_DB` (no other test uses it) and a unique room, whose keys it
deletes afterwards. Without a reachable Redis it skips loudly, except under
``CI=true``, where it fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import pytest
import trio
import trio_websocket

from trichannels.demo import make_application
from trichannels.layers import InMemoryChannelLayer
from trichannels.testing import live_server, open_websocket

REDIS_URL: Final = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_DB: Final = 13
"""The Redis database of the cross-process test (other tests use 0 and 9)."""

pytestmark = pytest.mark.slow


async def send_json(ws: trio_websocket.WebSocketConnection, data: Any) -> None:
    await ws.send_message(json.dumps(data))


async def recv_json(ws: trio_websocket.WebSocketConnection) -> dict[str, Any]:
    message = await ws.get_message()
    assert isinstance(message, str)
    data: dict[str, Any] = json.loads(message)
    return data


async def recv_until(
    ws: trio_websocket.WebSocketConnection, kind: str
) -> dict[str, Any]:
    """The next frame of type ``kind``, skipping others (presence frames may interleave)."""
    while True:
        data = await recv_json(ws)
        if data["type"] == kind:
            return data


async def closed_reason(
    ws: trio_websocket.WebSocketConnection,
) -> trio_websocket.CloseReason | None:
    """Read (and drop) frames until the server closes the connection; return why."""
    try:
        while True:
            await ws.get_message()
    except trio_websocket.ConnectionClosed as closed:
        return closed.reason


async def join(ws: trio_websocket.WebSocketConnection, nick: str) -> dict[str, Any]:
    await send_json(ws, {"type": "join", "nick": nick})
    welcome = await recv_json(ws)
    assert welcome["type"] == "welcome", welcome
    return welcome


# -- (a) one process, real Hypercorn ---------------------------------------------------------


async def test_two_clients_chat_through_a_live_server(
    channel_layer: InMemoryChannelLayer,
) -> None:
    """Two WebSocket clients of a real server in one room see each other and exchange messages."""
    with trio.fail_after(20):
        async with live_server(make_application(history=5)) as server:
            url = server.ws_url + "/ws/chat/live/"
            async with open_websocket(url) as ada, open_websocket(url) as bob:
                assert (await join(ada, "ada"))["members"] == 1
                await join(bob, "bob")
                assert await recv_json(ada) == {
                    "type": "joined",
                    "nick": "bob",
                    "members": 2,
                }
                assert await recv_json(bob) == {
                    "type": "members",
                    "count": 2,
                    "nicks": ["ada", "bob"],
                }
                await send_json(ada, {"type": "say", "text": "hello bob"})
                await send_json(bob, {"type": "say", "text": "hi ada"})
                for ws in (ada, bob):
                    got = [await recv_json(ws), await recv_json(ws)]
                    assert [(m["type"], m["nick"], m["text"]) for m in got] == [
                        ("message", "ada", "hello bob"),
                        ("message", "bob", "hi ada"),
                    ]
                await bob.aclose()
                assert await recv_json(ada) == {
                    "type": "left",
                    "nick": "bob",
                    "members": 1,
                }


# -- (b) two processes sharing rooms through Redis -------------------------------------------


def _redis_url(db: int) -> str:
    parts = urlsplit(REDIS_URL)
    return urlunsplit(parts._replace(path=f"/{db}"))


async def _require_redis() -> None:
    parts = urlsplit(REDIS_URL)
    try:
        with trio.fail_after(2):
            stream = await trio.open_tcp_stream(
                parts.hostname or "127.0.0.1", parts.port or 6379
            )
            await stream.aclose()
    except (OSError, trio.TooSlowError) as exc:
        message = (
            f"Redis is not reachable at {REDIS_URL} ({exc!r}); "
            "cross-process fan-out of the demo is UNTESTED"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


class DemoProcess:
    """One ``trichannels demo`` child process and the URL it printed."""

    def __init__(self, process: trio.Process, url: str, log: Path) -> None:
        self.process = process
        self.url = url
        self.log = log

    def ws_url(self, path: str) -> str:
        return self.url.replace("http://", "ws://", 1) + path


async def _read_first_line(stream: trio.abc.ReceiveStream) -> str:
    data = b""
    while b"\n" not in data:
        chunk = await stream.receive_some()
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").partition("\n")[0]


@pytest.fixture
async def start_demo(tmp_path: Path) -> AsyncIterator[Any]:
    """``await start_demo(layer_url)`` starts a demo process; all are killed if still running."""
    processes: list[DemoProcess] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TRICHANNELS_LAYERS", None)

    async def start(layer: str) -> DemoProcess:
        log = tmp_path / f"demo-{len(processes)}.log"
        with log.open("wb") as stderr:
            process = await trio.lowlevel.open_process(
                [
                    sys.executable,
                    "-m",
                    "trichannels.cli",
                    "demo",
                    "--layer",
                    layer,
                    "--bind",
                    "127.0.0.1:0",
                    "--graceful-timeout",
                    "5",
                    "--ping-interval",
                    "0",
                ],
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env,
            )
        assert process.stdout is not None
        with trio.fail_after(15):
            line = await _read_first_line(process.stdout)
        assert line.startswith("trichannels "), (line, log.read_text())
        demo = DemoProcess(process, line.rsplit(" on ", 1)[1].strip(), log)
        processes.append(demo)
        return demo

    try:
        yield start
    finally:
        with trio.CancelScope(shield=True):
            for demo in processes:
                if demo.process.returncode is None:
                    demo.process.kill()
                await demo.process.wait()
                if demo.process.stdout is not None:
                    await demo.process.stdout.aclose()


@pytest.fixture
async def redis_room() -> AsyncIterator[str]:
    """A unique room name; Redis keys mentioning it are deleted after the test.

    Skips loudly without a reachable Redis, fails under ``CI=true``.
    """
    await _require_redis()
    room = f"xproc-{uuid.uuid4().hex[:12]}"
    yield room
    import coredis

    client: coredis.Redis[bytes] = coredis.Redis.from_url(_redis_url(REDIS_DB))
    with trio.fail_after(5):
        async with client:
            keys = [key async for key in client.scan_iter(match=f"*{room}*")]
            if keys:
                await client.delete(keys)


@pytest.mark.redis
async def test_two_demo_processes_share_rooms_through_redis(
    start_demo: Any, redis_room: str
) -> None:
    """A client on process A posts, a client on process B receives; counts span both; SIGTERM -> 1001, exit 0."""
    layer = _redis_url(REDIS_DB)
    room = redis_room
    path = f"/ws/chat/{room}/"
    with trio.fail_after(45):
        started: dict[str, DemoProcess] = {}

        async def start(name: str) -> None:
            started[name] = await start_demo(layer)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(start, "a")
            nursery.start_soon(start, "b")
        a, b = started["a"], started["b"]
        assert a.url != b.url
        async with (
            open_websocket(a.ws_url(path)) as ada,
            open_websocket(b.ws_url(path)) as bob,
        ):
            assert (await join(ada, "ada"))["members"] == 1
            await join(bob, "bob")
            # ada (on A) learns of bob (on B), and bob learns of ada: presence spans processes.
            assert await recv_until(ada, "joined") == {
                "type": "joined",
                "nick": "bob",
                "members": 2,
            }
            assert await recv_until(bob, "members") == {
                "type": "members",
                "count": 2,
                "nicks": ["ada", "bob"],
            }

            await send_json(ada, {"type": "say", "text": "posted on A"})
            got = await recv_until(bob, "message")
            assert (got["nick"], got["text"]) == ("ada", "posted on A")
            assert (await recv_until(ada, "message"))["id"] == got["id"]

            await send_json(bob, {"type": "say", "text": "answered from B"})
            got = await recv_until(ada, "message")
            assert (got["nick"], got["text"]) == ("bob", "answered from B")

            # A third member on A sees the count of the whole room and the history.
            async with open_websocket(a.ws_url(path)) as cy:
                welcome = await join(cy, "cy")
                members = await recv_until(cy, "members")
                while members["count"] < 3:
                    members = await recv_until(cy, "members")
                assert members["nicks"] == ["ada", "bob", "cy"]
                history = [m["text"] for m in welcome["history"]]
                assert history == ["posted on A", "answered from B"]
            assert (await recv_until(bob, "left"))["members"] == 2

            # Graceful shutdown of both processes: 1001 on each socket, exit status 0.
            for demo in (a, b):
                demo.process.send_signal(signal.SIGTERM)
            for ws in (ada, bob):
                reason = await closed_reason(ws)
                assert reason is not None
                assert reason.code == 1001
        for demo in (a, b):
            status = await demo.process.wait()
            assert status == 0, demo.log.read_text()
