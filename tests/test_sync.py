"""Tests for trichannels.sync: sync_to_async, async_to_sync, ThreadSensitiveContext.

Real threads are used throughout, so ordering is forced with threading/trio events
and ``wait_all_tasks_blocked``, never with sleeps, and every async test runs under
an outer ``trio.fail_after`` guard.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import threading
import traceback
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest
import sniffio
import trio
import trio.testing

from trichannels.sync import (
    CallAbandoned,
    ThreadSensitiveContext,
    async_to_sync,
    check_cancelled,
    sync_to_async,
)

var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

GUARD = 5


def ident() -> int:
    return threading.get_ident()


def current_thread() -> threading.Thread:
    return threading.current_thread()


def raise_value_error(message: str) -> None:
    raise ValueError(message)


async def araise_key_error(message: str) -> None:
    await anyio.lowlevel.checkpoint()
    raise KeyError(message)


async def aident() -> int:
    await anyio.lowlevel.checkpoint()
    return threading.get_ident()


async def wait_thread_event(event: threading.Event) -> None:
    """Wait for a threading.Event without blocking the loop."""
    assert await anyio.to_thread.run_sync(event.wait, GUARD)


def assert_thread_gone(thread: threading.Thread) -> None:
    assert not thread.is_alive()
    assert thread not in threading.enumerate()


@asynccontextmanager
async def blocked_call(
    thread_sensitive: bool = True,
) -> AsyncIterator[tuple[trio.CancelScope, threading.Event, dict[str, Any]]]:
    """Start a sync call that blocks until released; yield once it is running.

    Yields the cancel scope around the awaiting task, the release event, and a dict
    the function fills in: ``thread``, ``finished``, and what ``check_cancelled``
    raised after release (``seen``).
    """
    started, release, finished = threading.Event(), threading.Event(), threading.Event()
    record: dict[str, Any] = {"finished": finished}

    def blocker() -> str:
        record["thread"] = threading.current_thread()
        check_cancelled()  # not cancelled yet: no-op
        started.set()
        release.wait(GUARD)
        try:
            check_cancelled()
        except CallAbandoned as exc:
            record["seen"] = exc
        finished.set()
        return "result"

    async def awaiter(scope: trio.CancelScope) -> None:
        with scope:
            record["result"] = await sync_to_async(
                blocker, thread_sensitive=thread_sensitive
            )()

    scope = trio.move_on_after(GUARD)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(awaiter, scope)
        await wait_thread_event(started)
        yield scope, release, record


# -- thread selection -----------------------------------------------------------


async def test_thread_sensitive_calls_share_one_thread_per_context() -> None:
    with trio.fail_after(GUARD):
        async with ThreadSensitiveContext():
            first = await sync_to_async(current_thread)()
            second = await sync_to_async(current_thread)()
            from_children: list[threading.Thread] = []

            async def child() -> None:
                from_children.append(await sync_to_async(current_thread)())

            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(child)
        assert first is second
        assert from_children == [first] * 3
        assert first.ident != threading.get_ident()
        assert first.name.startswith("trichannels-sensitive")
        assert_thread_gone(first)


async def test_contexts_run_concurrently_on_different_threads() -> None:
    barrier = threading.Barrier(2, timeout=GUARD)
    threads: list[threading.Thread] = []

    def meet() -> None:
        threads.append(threading.current_thread())
        barrier.wait()  # both calls are running at the same time, or this times out

    async def one_context() -> None:
        async with ThreadSensitiveContext():
            await sync_to_async(meet)()

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one_context)
            nursery.start_soon(one_context)
    assert len({t.ident for t in threads}) == 2


async def test_nested_context_is_a_new_scope_with_its_own_thread() -> None:
    with trio.fail_after(GUARD):
        async with ThreadSensitiveContext():
            outer = await sync_to_async(ident)()
            async with ThreadSensitiveContext():
                inner = await sync_to_async(ident)()
            assert await sync_to_async(ident)() == outer
        assert inner != outer


async def test_outside_any_context_calls_share_the_process_thread() -> None:
    with trio.fail_after(GUARD):
        first = await sync_to_async(current_thread)()
        second = await sync_to_async(current_thread)()
        async with ThreadSensitiveContext():
            inside = await sync_to_async(current_thread)()
    assert first is second
    assert first.name.startswith("trichannels-sync")
    assert inside is not first


async def test_context_starts_no_thread_until_used() -> None:
    def dedicated_threads() -> list[threading.Thread]:
        return [
            t
            for t in threading.enumerate()
            if t.name.startswith("trichannels-sensitive")
        ]

    with trio.fail_after(GUARD):
        async with ThreadSensitiveContext():
            await trio.lowlevel.checkpoint()
            assert dedicated_threads() == []
            async with ThreadSensitiveContext():
                await sync_to_async(ident)()
                assert len(dedicated_threads()) == 1
            assert dedicated_threads() == []


async def test_thread_sensitive_calls_run_one_at_a_time_in_call_order() -> None:
    release = threading.Event()
    order: list[int] = []
    running = [0, 0]  # current, maximum

    def work(i: int) -> None:
        running[0] += 1
        running[1] = max(running)
        if i == 0:
            release.wait(GUARD)
        order.append(i)
        running[0] -= 1

    with trio.fail_after(GUARD):
        async with ThreadSensitiveContext(), trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(sync_to_async(work), i)
                # Task i has submitted its call before task i + 1 starts.
                await trio.testing.wait_all_tasks_blocked()
            release.set()
    assert order == list(range(6))
    assert running[1] == 1


async def test_not_thread_sensitive_uses_the_worker_pool() -> None:
    barrier = threading.Barrier(2, timeout=GUARD)
    threads: list[int] = []

    def meet() -> None:
        threads.append(threading.get_ident())
        barrier.wait()

    with trio.fail_after(GUARD):
        async with ThreadSensitiveContext():
            dedicated = await sync_to_async(ident)()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sync_to_async(meet, thread_sensitive=False))
                nursery.start_soon(sync_to_async(meet, thread_sensitive=False))
    assert len(set(threads)) == 2
    assert dedicated not in threads


async def test_limiter_bounds_pool_calls() -> None:
    limiter = anyio.CapacityLimiter(1)
    release = threading.Event()
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                sync_to_async(release.wait, thread_sensitive=False, limiter=limiter),
                GUARD,
            )
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(
                sync_to_async(release.wait, thread_sensitive=False, limiter=limiter),
                GUARD,
            )
            await trio.testing.wait_all_tasks_blocked()
            assert limiter.borrowed_tokens == 1
            assert limiter.statistics().tasks_waiting == 1
            release.set()
    assert limiter.borrowed_tokens == 0


def test_limiter_requires_thread_sensitive_false() -> None:
    with pytest.raises(
        TypeError,
        match=r"^sync_to_async\(\): limiter= only applies with thread_sensitive=False$",
    ):
        sync_to_async(ident, limiter=anyio.CapacityLimiter(1))


# -- decorator forms --------------------------------------------------------------


class Greeter:
    def __init__(self, name: str) -> None:
        self.name = name

    @sync_to_async
    def hello(self, greeting: str) -> tuple[str, int]:
        return f"{greeting}, {self.name}", threading.get_ident()

    @sync_to_async(thread_sensitive=False)
    def pooled(self) -> str:
        return self.name

    @async_to_sync
    async def blocking_hello(self, greeting: str) -> str:
        await anyio.lowlevel.checkpoint()
        return f"{greeting}, {self.name}"


async def test_decorator_forms_and_methods() -> None:
    @sync_to_async
    def bare(x: int) -> int:
        return x + 1

    @sync_to_async(thread_sensitive=False)
    def configured(x: int) -> int:
        return x * 2

    with trio.fail_after(GUARD):
        assert await bare(1) == 2
        assert await configured(3) == 6
        assert await sync_to_async(bare.__wrapped__)(4) == 5  # type: ignore[attr-defined]
        greeter = Greeter("Ada")
        greeting, thread = await greeter.hello("Hi")
        assert greeting == "Hi, Ada"
        assert thread != threading.get_ident()
        assert await greeter.pooled() == "Ada"
        assert (
            await sync_to_async(greeter.blocking_hello, thread_sensitive=False)("Bye")
            == "Bye, Ada"
        )
    assert inspect.iscoroutinefunction(bare)
    assert bare.__name__ == "bare"
    assert inspect.iscoroutinefunction(Greeter.hello)
    assert list(inspect.signature(Greeter.hello).parameters) == ["self", "greeting"]
    assert not inspect.iscoroutinefunction(Greeter.blocking_hello)


# -- context variables ------------------------------------------------------------


async def test_sync_to_async_copies_context_variables_both_ways() -> None:
    def read_and_write(new: str) -> str:
        seen = var.get()
        var.set(new)
        return seen

    def write_and_fail() -> None:
        var.set("set before failing")
        raise ValueError("boom")

    with trio.fail_after(GUARD):
        async with ThreadSensitiveContext():
            var.set("caller")
            assert await sync_to_async(read_and_write)("sensitive") == "caller"
            assert var.get() == "sensitive"
            assert (
                await sync_to_async(read_and_write, thread_sensitive=False)("pool")
                == "sensitive"
            )
            assert var.get() == "pool"
            with pytest.raises(ValueError, match=r"^boom$"):
                await sync_to_async(write_and_fail)()
            assert var.get() == "set before failing"


async def test_sync_code_in_threads_does_not_look_async() -> None:
    def library() -> str | None:
        try:
            return sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            return None

    with trio.fail_after(GUARD):
        assert await sync_to_async(library)() is None
        assert await sync_to_async(library, thread_sensitive=False)() is None
        assert sniffio.current_async_library() == "trio"


@pytest.mark.parametrize("thread_sensitive", [True, False])
async def test_async_to_sync_copies_context_variables_both_ways(
    thread_sensitive: bool,
) -> None:
    async def aread_and_write(new: str) -> str:
        seen = var.get()
        var.set(new)
        return seen

    def sync_code() -> tuple[str, str]:
        var.set("thread")
        seen_in_loop = async_to_sync(aread_and_write)("loop")
        return seen_in_loop, var.get()

    with trio.fail_after(GUARD):
        var.set("caller")
        seen_in_loop, seen_back_in_thread = await sync_to_async(
            sync_code, thread_sensitive=thread_sensitive
        )()
    assert seen_in_loop == "thread"
    assert seen_back_in_thread == "loop"
    assert var.get() == "loop"


def test_async_to_sync_in_plain_thread_copies_context_variables_both_ways() -> None:
    async def aread_and_write(new: str) -> str:
        seen = var.get()
        var.set(new)
        return seen

    results: list[str] = []

    def plain() -> None:
        var.set("plain thread")
        results.append(async_to_sync(aread_and_write)("own loop"))
        results.append(var.get())

    thread = threading.Thread(target=plain)
    thread.start()
    thread.join(GUARD)
    assert results == ["plain thread", "own loop"]


# -- exceptions --------------------------------------------------------------------


@pytest.mark.parametrize("thread_sensitive", [True, False])
async def test_sync_to_async_exception_keeps_traceback(thread_sensitive: bool) -> None:
    with (
        trio.fail_after(GUARD),
        pytest.raises(ValueError, match=r"^from the thread$") as info,
    ):
        await sync_to_async(raise_value_error, thread_sensitive=thread_sensitive)(
            "from the thread"
        )
    names = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert names[-1] == "raise_value_error"


async def test_async_to_sync_exception_keeps_traceback() -> None:
    def sync_code() -> None:
        async_to_sync(araise_key_error)("from the loop")

    with trio.fail_after(GUARD), pytest.raises(KeyError, match="from the loop") as info:
        await sync_to_async(sync_code)()
    names = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert names[-1] == "araise_key_error"
    assert "sync_code" in names


def test_async_to_sync_in_plain_thread_exception_keeps_traceback() -> None:
    caught: list[BaseException] = []

    def plain() -> None:
        try:
            async_to_sync(araise_key_error)("own loop")
        except KeyError as exc:
            caught.append(exc)

    thread = threading.Thread(target=plain)
    thread.start()
    thread.join(GUARD)
    [exc] = caught
    assert [frame.name for frame in traceback.extract_tb(exc.__traceback__)][
        -1
    ] == "araise_key_error"


# -- async_to_sync: where it runs ----------------------------------------------------


@pytest.mark.parametrize("thread_sensitive", [True, False])
async def test_async_to_sync_from_worker_thread_runs_on_the_loop(
    thread_sensitive: bool,
) -> None:
    def sync_code() -> tuple[int, int]:
        return threading.get_ident(), async_to_sync(aident)()

    with trio.fail_after(GUARD):
        async with ThreadSensitiveContext():
            worker, in_async = await sync_to_async(
                sync_code, thread_sensitive=thread_sensitive
            )()
    assert in_async == threading.get_ident()
    assert worker != in_async


@pytest.mark.parametrize("loop_backend", ["trio", "asyncio"])
def test_async_to_sync_from_plain_thread_runs_its_own_loop(loop_backend: str) -> None:
    results: list[tuple[int, str, int]] = []

    async def where() -> tuple[int, str, int]:
        in_worker = await sync_to_async(ident)()
        return threading.get_ident(), sniffio.current_async_library(), in_worker

    def plain() -> None:
        if loop_backend == "trio":
            results.append(async_to_sync(where)())  # the default
        else:
            results.append(async_to_sync(where, backend=loop_backend)())

    thread = threading.Thread(target=plain)
    thread.start()
    thread.join(GUARD)
    [(loop_thread, library, in_worker)] = results
    assert loop_thread == thread.ident
    assert library == loop_backend
    assert in_worker != thread.ident


LOOP_THREAD_ERROR = (
    r"^async_to_sync\(\) cannot be called in the event loop's own thread: "
    r"await the coroutine function directly instead$"
)


async def test_async_to_sync_in_the_loop_thread_raises() -> None:
    with pytest.raises(RuntimeError, match=LOOP_THREAD_ERROR):
        async_to_sync(aident)()


# -- nesting --------------------------------------------------------------------------


async def test_nested_sync_async_sync_runs_on_the_waiting_thread() -> None:
    def innermost() -> int:
        return threading.get_ident()

    async def middle() -> tuple[int, int]:
        # Two concurrent thread-sensitive calls made on behalf of the waiting thread.
        results: list[int] = []

        async def call() -> None:
            results.append(await sync_to_async(innermost)())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            nursery.start_soon(call)
        assert results[0] == results[1]
        return results[0], await sync_to_async(outer_again)()

    def outer_again() -> int:
        # One level deeper: sync -> async -> sync -> async -> sync.
        return async_to_sync(sync_to_async(innermost))()

    def outer() -> tuple[int, int, int]:
        inner, deeper = async_to_sync(middle)()
        return threading.get_ident(), inner, deeper

    with trio.fail_after(GUARD):
        async with ThreadSensitiveContext():
            outer_thread, inner, deeper = await sync_to_async(outer)()
        assert outer_thread == inner == deeper
        # Outside any context the process-wide thread nests the same way.
        outer_thread, inner, deeper = await sync_to_async(outer)()
        assert outer_thread == inner == deeper


async def test_nesting_through_a_pool_thread_reaches_the_waiting_thread() -> None:
    def sensitive() -> int:
        return threading.get_ident()

    def pooled() -> int:
        return async_to_sync(sync_to_async(sensitive))()

    def outer() -> tuple[int, int]:
        return threading.get_ident(), async_to_sync(
            sync_to_async(pooled, thread_sensitive=False)
        )()

    with trio.fail_after(GUARD):
        async with ThreadSensitiveContext():
            outer_thread, inner = await sync_to_async(outer)()
    assert outer_thread == inner


async def test_other_tasks_calls_queue_behind_a_waiting_thread() -> None:
    """Only calls made on behalf of the waiting thread run inside its wait."""
    order: list[str] = []
    in_middle = trio.Event()
    proceed = trio.Event()

    async def middle() -> None:
        in_middle.set()
        await proceed.wait()

    def outer() -> None:
        order.append("outer start")
        async_to_sync(middle)()
        order.append("outer end")

    def other() -> None:
        order.append("other")

    with trio.fail_after(GUARD):
        async with ThreadSensitiveContext(), trio.open_nursery() as nursery:
            nursery.start_soon(sync_to_async(outer))
            await in_middle.wait()
            nursery.start_soon(sync_to_async(other))
            await trio.testing.wait_all_tasks_blocked()
            proceed.set()
    assert order == ["outer start", "outer end", "other"]


# -- cancellation ------------------------------------------------------------------------


async def test_cancelled_awaiter_returns_at_once_and_the_call_is_abandoned() -> None:
    with trio.fail_after(GUARD):
        async with ThreadSensitiveContext():
            async with blocked_call() as (scope, release, record):
                cancelled_at = trio.current_time()
                scope.deadline = cancelled_at  # the move_on_after expires now
                await trio.testing.wait_all_tasks_blocked()
                assert scope.cancelled_caught
                assert trio.current_time() - cancelled_at < 1
                assert not record["finished"].is_set()  # still running in its thread
                assert record["thread"].is_alive()
            release.set()
        # The context waited for the in-hand call, then joined its thread.
        assert record["finished"].is_set()
        assert isinstance(record["seen"], CallAbandoned)
        assert "result" not in record
        assert_thread_gone(record["thread"])


async def test_queued_call_of_a_cancelled_caller_never_runs() -> None:
    ran: list[str] = []
    with trio.fail_after(GUARD):
        async with ThreadSensitiveContext():
            async with blocked_call() as (_, release, record):
                with trio.CancelScope() as queued_scope:
                    queued_scope.cancel()
                    # Submitted, then cancelled at its first checkpoint: never started.
                    await sync_to_async(ran.append)("queued")
                release.set()
            assert await sync_to_async(lambda: ran.append("later") or "ok")() == "ok"
    assert record["result"] == "result"
    assert ran == ["later"]


async def test_async_to_sync_in_an_abandoned_call_raises_call_abandoned() -> None:
    entered = trio.Event()
    outcome: list[BaseException | str] = []
    cancelled_in_loop: list[bool] = []

    async def long_running() -> str:
        entered.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled_in_loop.append(True)
            raise
        return "unreachable"

    def sync_code() -> None:
        try:
            outcome.append(async_to_sync(long_running)())
        except CallAbandoned as exc:
            outcome.append(exc)
        try:
            async_to_sync(aident)()  # a later call is refused at once
        except CallAbandoned as exc:
            outcome.append(exc)

    with trio.fail_after(GUARD):
        async with ThreadSensitiveContext():
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(sync_to_async(sync_code))
                    await entered.wait()
                    scope.cancel()
        # The context exit waited for sync_code to finish.
    assert cancelled_in_loop == [True]
    assert len(outcome) == 2
    assert all(isinstance(exc, CallAbandoned) for exc in outcome)


async def test_cancelled_pool_call_is_abandoned() -> None:
    with trio.fail_after(GUARD):
        async with blocked_call(thread_sensitive=False) as (scope, release, record):
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert scope.cancelled_caught
            assert not record["finished"].is_set()
            release.set()
        await wait_thread_event(record["finished"])
    assert isinstance(record["seen"], CallAbandoned)


async def test_anyio_check_cancelled_works_in_pool_threads() -> None:
    started, release, done = threading.Event(), threading.Event(), threading.Event()
    seen: list[BaseException] = []

    def blocker() -> None:
        started.set()
        release.wait(GUARD)
        try:
            anyio.from_thread.check_cancelled()
        except trio.Cancelled as exc:
            seen.append(exc)
        done.set()

    with trio.fail_after(GUARD):
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sync_to_async(blocker, thread_sensitive=False))
                await wait_thread_event(started)
                scope.cancel()
        release.set()
        await wait_thread_event(done)
    assert len(seen) == 1


def test_check_cancelled_outside_a_call_raises() -> None:
    with pytest.raises(
        RuntimeError,
        match=r"^check_cancelled\(\) must be called from a function run by sync_to_async\(\)$",
    ):
        check_cancelled()


async def test_context_refuses_calls_after_exit_and_reuse() -> None:
    go = trio.Event()
    errors: list[BaseException] = []

    async def late_caller() -> None:
        await go.wait()
        try:
            await sync_to_async(ident)()
        except RuntimeError as exc:
            errors.append(exc)

    context = ThreadSensitiveContext()
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as outer:
            async with context:
                outer.start_soon(late_caller)  # inherits the context, outlives it
                with pytest.raises(RuntimeError, match="already in use"):
                    async with context:
                        pass
            go.set()
    [error] = errors
    assert "has already exited" in str(error)


# -- bad inputs ------------------------------------------------------------------------


class AsyncCallable:
    async def __call__(self) -> None:
        pass


def plain_function() -> None:
    pass


def test_sync_to_async_rejects_async_and_non_callables() -> None:
    with pytest.raises(
        TypeError,
        match=r"^sync_to_async\(\) expects a sync callable, but <function aident .*> is async: await it directly$",
    ):
        sync_to_async(aident)
    with pytest.raises(
        TypeError, match=r"^sync_to_async\(\) expects a sync callable, got 42$"
    ):
        sync_to_async(42)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="AsyncCallable object"):
        sync_to_async(AsyncCallable())
    with pytest.raises(TypeError, match="is async"):
        sync_to_async(functools.partial(araise_key_error, "x"))
    with pytest.raises(TypeError, match="is async"):
        sync_to_async(thread_sensitive=False)(aident)


def test_async_to_sync_rejects_plain_functions_and_non_callables() -> None:
    with pytest.raises(
        TypeError,
        match=r"^async_to_sync\(\) expects an async callable, but <function plain_function .*> is a plain function: call it directly$",
    ):
        async_to_sync(plain_function)
    with pytest.raises(
        TypeError, match=r"^async_to_sync\(\) expects an async callable, got 'text'$"
    ):
        async_to_sync("text")  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match=r"functools.partial.*plain_function.*is a plain function"
    ):
        async_to_sync(functools.partial(plain_function))
    async_to_sync(AsyncCallable())  # accepted


async def test_wrong_kinds_discovered_at_call_time() -> None:
    class ReturnsNumber:
        def __call__(self) -> int:
            return 1

    def returns_coroutine() -> object:
        return aident()

    def sync_code() -> None:
        async_to_sync(ReturnsNumber())()  # type: ignore[arg-type]

    with trio.fail_after(GUARD):
        with pytest.raises(TypeError, match="did not return an awaitable"):
            await sync_to_async(sync_code)()
        with pytest.raises(TypeError, match="returned a coroutine"):
            await sync_to_async(returns_coroutine)()


# -- backend neutrality (trio and asyncio) ------------------------------------------------


def run_on(backend: str, body: Callable[[], Any]) -> None:
    async def guarded() -> None:
        with anyio.fail_after(GUARD):
            await body()

    anyio.run(guarded, backend=backend)


def test_neutral_same_thread_per_context(backend: str) -> None:
    async def body() -> None:
        barrier = threading.Barrier(2, timeout=GUARD)
        threads: list[list[int]] = [[], []]

        def meet(slot: int) -> None:
            threads[slot].append(threading.get_ident())
            barrier.wait()

        async def one_context(slot: int) -> None:
            async with ThreadSensitiveContext():
                await sync_to_async(meet)(slot)
                threads[slot].append(await sync_to_async(ident)())

        async with anyio.create_task_group() as tg:
            tg.start_soon(one_context, 0)
            tg.start_soon(one_context, 1)
        assert threads[0][0] == threads[0][1]
        assert threads[1][0] == threads[1][1]
        assert threads[0][0] != threads[1][0]

    run_on(backend, body)


def test_neutral_async_to_sync_round_trip(backend: str) -> None:
    async def body() -> None:
        loop_thread = threading.get_ident()

        def outer() -> tuple[int, int, int]:
            return (
                threading.get_ident(),
                async_to_sync(aident)(),
                async_to_sync(sync_to_async(ident))(),
            )

        async with ThreadSensitiveContext():
            worker, in_loop, nested = await sync_to_async(outer)()
        assert in_loop == loop_thread
        assert worker == nested != loop_thread

    run_on(backend, body)


def test_neutral_context_variables(backend: str) -> None:
    async def body() -> None:
        async def aswap(new: str) -> str:
            seen = var.get()
            var.set(new)
            return seen

        def swap() -> tuple[str, str, str]:
            seen = var.get()
            var.set("thread")
            return seen, async_to_sync(aswap)("loop"), var.get()

        var.set("caller")
        for thread_sensitive in (True, False):
            assert await sync_to_async(swap, thread_sensitive=thread_sensitive)() == (
                "caller",
                "thread",
                "loop",
            )
            assert var.get() == "loop"
            var.set("caller")

    run_on(backend, body)


def test_neutral_exceptions(backend: str) -> None:
    async def body() -> None:
        with pytest.raises(ValueError, match=r"^neutral$") as info:
            await sync_to_async(raise_value_error)("neutral")
        assert (
            traceback.extract_tb(info.value.__traceback__)[-1].name
            == "raise_value_error"
        )

        def sync_code() -> None:
            async_to_sync(araise_key_error)("neutral")

        with pytest.raises(KeyError) as key_info:
            await sync_to_async(sync_code, thread_sensitive=False)()
        assert (
            traceback.extract_tb(key_info.value.__traceback__)[-1].name
            == "araise_key_error"
        )

    run_on(backend, body)


def test_neutral_cancellation(backend: str) -> None:
    async def body() -> None:
        started, release = threading.Event(), threading.Event()
        threads: list[threading.Thread] = []

        def blocker() -> None:
            threads.append(threading.current_thread())
            started.set()
            release.wait(GUARD)

        async with ThreadSensitiveContext():
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(sync_to_async(blocker))
                    await wait_thread_event(started)
                    scope.cancel()
            assert scope.cancelled_caught
            assert threads[0].is_alive()
            release.set()
        assert_thread_gone(threads[0])

    run_on(backend, body)


def test_neutral_async_to_sync_in_the_loop_thread_raises(backend: str) -> None:
    async def body() -> None:
        with pytest.raises(RuntimeError, match=LOOP_THREAD_ERROR):
            async_to_sync(aident)()

    run_on(backend, body)


def test_neutral_abandoned_call_can_outlive_its_event_loop(backend: str) -> None:
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def blocker() -> None:
        started.set()
        release.wait(GUARD)
        finished.set()

    async def abandon() -> None:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(sync_to_async(blocker))  # on the process-wide thread
                await wait_thread_event(started)
                scope.cancel()

    run_on(backend, abandon)
    release.set()  # the loop is gone: the outcome has nowhere to go
    assert finished.wait(GUARD)

    async def later() -> None:
        await sync_to_async(ident)()  # the process-wide thread is free again

    run_on(backend, later)
