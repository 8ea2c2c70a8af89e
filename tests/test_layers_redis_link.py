"""The Redis layer's direct connection path (``_Link``) and the fast paths built on it.

Against a real Redis server (``REDIS_URL``), like ``test_layers_redis.py``:
every test uses its own key prefix and deletes its keys; deadlines are
bounded with ``trio.fail_after``.
"""

from __future__ import annotations

import secrets
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import coredis
import pytest
import trio
import trio.testing
from coredis.retry import NoRetryPolicy

from tests.test_layers_redis import (
    MakeLayer,
    _free_port,
    _redis_server,
    make_layer,
    prefix,
)
from trichannels.exceptions import ChannelFull, LayerConnectionError
from trichannels.layers.redis import RedisChannelLayer, _Link

__all__ = ["MakeLayer", "make_layer", "prefix", "redis"]  # fixtures, shared

pytestmark = pytest.mark.redis


@pytest.fixture
async def redis(redis_url: str, prefix: str) -> AsyncIterator[coredis.Redis[bytes]]:
    """A plain coredis client whose replies time out after 5 s (the link tests rely
    on it); the test's keys are deleted afterwards. Overrides test_layers_redis's."""
    client = coredis.Redis.from_url(
        redis_url, retry_policy=NoRetryPolicy(), pool_timeout=5, stream_timeout=5
    )
    async with client:
        yield client
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.unlink(keys)


# --------------------------------------------------------------------------- _Link


async def test_link_pipelines_concurrent_calls_and_matches_replies(
    redis: coredis.Redis[bytes], prefix: str
) -> None:
    """200 concurrent calls on one connection: each caller gets its own reply."""
    link = _Link(redis)
    got: dict[int, bytes] = {}

    async def one(i: int) -> None:
        await link.call(b"SET", f"{prefix}:k{i}", str(i))
        got[i] = await link.call(b"GET", f"{prefix}:k{i}")  # type: ignore[assignment]

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(one, i)
    assert got == {i: str(i).encode() for i in range(200)}


async def test_link_writes_a_command_larger_than_the_socket_buffer(
    redis: coredis.Redis[bytes], prefix: str
) -> None:
    """A partial write goes on through the stream; concurrent calls wait their turn."""
    link = _Link(redis)
    big = secrets.token_bytes(1 << 20) * 8
    got: list[Any] = []

    async def small() -> None:
        got.append(await link.call(b"ECHO", b"small"))

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.call, b"SET", f"{prefix}:big", big)
            for _ in range(5):
                nursery.start_soon(small)
        assert await link.call(b"GET", f"{prefix}:big") == big
    assert got == [b"small"] * 5


async def test_link_call_cancelled_before_writing_sends_nothing(
    redis: coredis.Redis[bytes], prefix: str
) -> None:
    link = _Link(redis)
    await link.call(b"PING")  # connected: the next call takes the fast path
    with trio.CancelScope() as scope:
        scope.cancel()
        await link.call(b"SET", f"{prefix}:never", b"1")
    assert scope.cancelled_caught
    assert await link.call(b"EXISTS", f"{prefix}:never") == 0


async def test_link_reply_of_a_cancelled_call_is_not_given_to_the_next(
    redis: coredis.Redis[bytes], prefix: str
) -> None:
    """A non-blocking call cancelled while waiting: its late reply is consumed in order."""
    link = _Link(redis)
    await link.call(b"PING")
    with trio.fail_after(5):
        with trio.move_on_after(0.05):
            # BLPOP that waits 0.3 s server-side, sent as an ordinary call.
            await link.call(b"BLPOP", f"{prefix}:empty", 0.3)
        assert await link.call(b"ECHO", b"mine") == b"mine"


@pytest.mark.parametrize("chained", [False, True], ids=["direct", "chained"])
async def test_link_cancelled_blocking_call_closes_its_connection(
    redis: coredis.Redis[bytes], prefix: str, chained: bool
) -> None:
    """``blocking=True``: the cancelled read's connection is dropped, so the next call is
    not stuck behind it; also when the read was sent by the reader task (``then``)."""
    link = _Link(redis)
    await link.call(b"PING")
    first = link._conn
    read = (b"XREAD", b"BLOCK", 10_000, b"STREAMS", f"{prefix}:s", b"$")
    seen: list[Any] = []

    def then(reply: Any) -> tuple[Any, ...]:
        seen.append(reply)
        return read

    with trio.move_on_after(0.2):
        if chained:
            await link.call(b"PING", blocking=True, then=then)
        else:
            await link.call(*read, blocking=True)
    assert seen == ([b"PONG"] if chained else [])
    with trio.fail_after(2):  # would wait ~10 s behind the XREAD
        assert await link.call(b"PING") == b"PONG"
    assert link._conn is not first


async def test_link_replaces_a_killed_connection(
    redis: coredis.Redis[bytes], prefix: str
) -> None:
    link = _Link(redis)
    await link.call(b"CLIENT", b"SETNAME", f"{prefix}-link")
    conn_id = await link.call(b"CLIENT", b"ID")
    await redis.client_kill(identifier=int(conn_id))  # type: ignore[arg-type]
    with trio.fail_after(5):
        while True:
            try:
                assert await link.call(b"PING") == b"PONG"
                break
            except (coredis.exceptions.ConnectionError, TimeoutError):
                await trio.sleep(0.01)
        assert await link.call(b"CLIENT", b"ID") != conn_id


async def test_link_expire_fails_overdue_replies_and_reconnects(
    redis: coredis.Redis[bytes], prefix: str
) -> None:
    """expire(): a reply past its deadline fails with TimeoutError; the next call reconnects."""
    link = _Link(redis)  # the redis fixture's stream_timeout: 5 s
    await link.call(b"PING")
    first = link._conn
    link.expire(time.monotonic())  # nothing pending: nothing happens
    assert link._conn is first
    outcome: list[BaseException] = []

    async def stuck() -> None:
        try:
            await link.call(b"BLPOP", f"{prefix}:empty", 30)
        except TimeoutError as exc:
            outcome.append(exc)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stuck)
            await trio.testing.wait_all_tasks_blocked()
            link.expire(time.monotonic() + 1)  # not overdue yet
            assert not outcome
            link.expire(time.monotonic() + 6)  # overdue
        assert len(outcome) == 1
        assert "no reply from Redis within 5" in str(outcome[0])
        assert await link.call(b"PING") == b"PONG"
    assert link._conn is not first


class _HalfWriter:
    """Stands in for a link's socket: writes the first half of the next ``send`` through
    the real socket and reports that, as a full socket buffer would; then passes
    everything through. (The kernel gives no way to force a partial write on demand.)"""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.armed = True

    def send(self, data: bytes) -> int:
        if self.armed:
            self.armed = False
            return int(self.sock.send(data[: len(data) // 2]))
        return int(self.sock.send(data))

    def fileno(self) -> int:
        return int(self.sock.fileno())


async def test_link_then_chains_commands_without_waking_the_caller(
    redis: coredis.Redis[bytes], prefix: str
) -> None:
    """``then`` sends the next command from the reader task; the caller gets the last reply."""
    link = _Link(redis)
    key = f"{prefix}:n"
    seen: list[Any] = []

    def then(reply: Any) -> tuple[bytes, str] | None:
        seen.append(reply)
        return (b"INCR", key) if reply < 5 else None

    with trio.fail_after(5):
        assert await link.call(b"INCR", key, then=then) == 5
    assert seen == [1, 2, 3, 4, 5]
    assert await link.call(b"GET", key) == b"5"


async def test_link_then_fallback_returns_the_reply_that_asked_for_more(
    redis: coredis.Redis[bytes], prefix: str
) -> None:
    """No plain socket to write to at once (TLS, asyncio): the reader task writes nothing."""
    link = _Link(redis)
    await link.call(b"PING")
    sock = link._sock
    key = f"{prefix}:n"
    seen: list[Any] = []

    def then(reply: Any) -> tuple[bytes, str]:
        seen.append(reply)
        link._sock = None  # as on a TLS stream
        return (b"INCR", key)

    with trio.fail_after(5):
        assert await link.call(b"INCR", key, then=then) == 1
        link._sock = sock
        assert seen == [1]
        assert await link.call(b"GET", key) == b"1"  # the INCR asked for was not sent


async def test_link_chained_writes_never_interleave_with_a_large_write(
    redis: coredis.Redis[bytes], prefix: str
) -> None:
    """Chained commands while another task writes 8 MB values in part: every chained INCR
    runs exactly once (one that could not be written then is sent by the caller) and the
    large values arrive intact."""
    link = _Link(redis)
    await link.call(b"PING")
    key = f"{prefix}:n"
    big = secrets.token_bytes(1 << 20) * 8
    total = 300

    def then(reply: Any) -> tuple[bytes, str] | None:
        return (b"INCR", key) if reply < total else None

    async def counter() -> None:
        n = 0
        while n < total:
            n = await link.call(b"INCR", key, then=then)  # type: ignore[assignment]

    async def writer() -> None:
        for i in range(3):
            await link.call(b"SET", f"{prefix}:big{i}", big)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(counter)
            nursery.start_soon(writer)
        assert await link.call(b"GET", key) == str(total).encode()
        for i in range(3):
            assert await link.call(b"GET", f"{prefix}:big{i}") == big


async def test_link_then_exception_is_raised_in_the_caller(
    redis: coredis.Redis[bytes], prefix: str
) -> None:
    """An exception from ``then`` reaches the caller; the connection's reader survives it."""
    link = _Link(redis)

    def then(reply: Any) -> None:
        raise ValueError(f"bad reply {reply!r}")

    with trio.fail_after(5):
        with pytest.raises(ValueError, match="bad reply b'PONG'"):
            await link.call(b"PING", then=then)
        conn = link._conn
        assert await link.call(b"ECHO", b"still") == b"still"
    assert link._conn is conn


async def test_link_then_is_not_given_an_error_reply(
    redis: coredis.Redis[bytes], prefix: str
) -> None:
    """A command that fails raises its error in the caller; ``then`` never sees it."""
    link = _Link(redis)
    key = f"{prefix}:text"
    await link.call(b"SET", key, b"abc")
    seen: list[Any] = []

    def then(reply: Any) -> None:
        seen.append(reply)

    with trio.fail_after(5), pytest.raises(coredis.exceptions.ResponseError):
        await link.call(b"INCR", key, then=then)
    assert seen == []


async def test_link_chained_write_taken_in_part_drops_the_connection(
    redis: coredis.Redis[bytes], prefix: str
) -> None:
    """Half a chained command written: the caller gets a ConnectionError and the next
    call reconnects, so nothing is written after half a command."""
    link = _Link(redis)
    await link.call(b"PING")
    first = link._conn
    key = f"{prefix}:n"

    def then(reply: Any) -> tuple[bytes, str] | None:
        if reply == b"PONG":
            link._sock = _HalfWriter(link._sock)  # type: ignore[assignment]
            return (b"INCR", key)
        return None

    with trio.fail_after(5):
        with pytest.raises(coredis.exceptions.ConnectionError, match="written in part"):
            await link.call(b"PING", then=then)
        assert await link.call(b"GET", key) is None  # half an INCR never ran
    assert link._conn is not first


# --------------------------------------------------------------------------- the layer on the link


async def test_concurrent_sends_each_get_their_own_status(
    make_layer: MakeLayer,
) -> None:
    """Concurrent sends to full and free channels: exactly the full ones raise ChannelFull."""
    async with make_layer(capacity=1) as layer:
        for i in range(0, 40, 2):
            await layer.send(f"full{i}", {"type": "fill"})
        outcome: dict[int, str] = {}

        async def one(i: int) -> None:
            channel = f"full{i}" if i % 2 == 0 else f"free{i}"
            try:
                await layer.send(channel, {"type": "m", "i": i})
            except ChannelFull:
                outcome[i] = "full"
            else:
                outcome[i] = "sent"

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for i in range(40):
                    nursery.start_soon(one, i)
        assert outcome == {i: "full" if i % 2 == 0 else "sent" for i in range(40)}
        for i in range(1, 40, 2):
            assert await layer.receive(f"free{i}") == {"type": "m", "i": i}


async def test_cancelled_send_through_redis_sends_nothing(
    make_layer: MakeLayer,
) -> None:
    async with make_layer() as sender, make_layer() as receiver:
        channel = await receiver.new_channel()
        for target in (channel, "work"):
            await sender.send(target, {"type": "warm"})
            assert await receiver.receive(target) == {"type": "warm"}
            with trio.CancelScope() as scope:
                scope.cancel()
                await sender.send(target, {"type": "cancelled"})
            await sender.send(target, {"type": "after"})
            with trio.fail_after(5):
                assert await receiver.receive(target) == {"type": "after"}


# --------------------------------------------------------------------------- read_take


def _fail_read_take(
    monkeypatch: pytest.MonkeyPatch, *, after_running: bool
) -> list[int]:
    """Make the next ``read_take`` script call fail as if its connection died.

    ``after_running``: the script ran in Redis and its reply was lost; else it never ran.
    Returns a list that counts the failures injected (at most one).
    """
    original = _Link.script
    failed: list[int] = []

    async def script(
        self: _Link, name: str, keys: Any, args: Any, **kwargs: Any
    ) -> Any:
        if name == "read_take" and not failed:
            failed.append(1)
            if after_running:
                await original(self, name, keys, args, **kwargs)
            raise coredis.exceptions.ConnectionError("injected: connection lost")
        return await original(self, name, keys, args, **kwargs)

    monkeypatch.setattr(_Link, "script", script)
    return failed


async def test_read_take_reply_lost_with_the_connection_is_recovered(
    make_layer: MakeLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entries a lost read_take reply carried are delivered after reconnecting, once."""
    async with make_layer() as layer:
        await layer.send("jobs", {"type": "before"})
        assert await layer.receive("jobs") == {"type": "before"}
        failed = _fail_read_take(monkeypatch, after_running=True)
        await layer.send("jobs", {"type": "lost reply"})
        with trio.fail_after(10):
            assert await layer.receive("jobs") == {"type": "lost reply"}
        assert failed == [1]
        await layer.send("jobs", {"type": "next"})
        with trio.fail_after(5):
            assert await layer.receive("jobs") == {"type": "next"}


async def test_read_take_never_redelivers_a_batch_that_was_received(
    make_layer: MakeLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read_take that fails before running: the previous (delivered) batch is not delivered again."""
    async with make_layer() as layer:
        await layer.send("jobs", {"type": "first"})
        assert await layer.receive("jobs") == {"type": "first"}
        failed = _fail_read_take(monkeypatch, after_running=False)
        await layer.send("jobs", {"type": "second"})
        with trio.fail_after(10):
            assert await layer.receive("jobs") == {"type": "second"}
        assert failed == [1]
        with trio.move_on_after(0.3):  # and nothing more
            extra = await layer.receive("jobs")
            pytest.fail(f"delivered again: {extra}")


@pytest.mark.slow
async def test_a_hung_server_times_out_and_the_layer_recovers(prefix: str) -> None:
    """A server that stops answering: the send fails after socket_timeout, then the layer reconnects."""
    port = _free_port()
    with _redis_server(port) as server:
        layer = RedisChannelLayer(
            hosts=[f"redis://127.0.0.1:{port}/0"], prefix=prefix, socket_timeout=0.5
        )
        async with layer:
            await layer.send("work", {"type": "before"})
            server.send_signal(signal.SIGSTOP)
            try:
                with (
                    trio.fail_after(10),
                    pytest.raises(
                        LayerConnectionError, match=r"no reply from Redis within 0\.5"
                    ),
                ):
                    await layer.send("work", {"type": "hung"})
            finally:
                server.send_signal(signal.SIGCONT)
            with trio.fail_after(10):
                await layer.send("work", {"type": "after"})
                assert await layer.receive("work") == {"type": "before"}
