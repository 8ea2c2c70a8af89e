"""Bridges between synchronous and asynchronous code.

:func:`sync_to_async` runs a blocking function in a worker thread and lets a task
await it; :func:`async_to_sync` lets that worker thread (or any plain thread) call
back into async code. :class:`ThreadSensitiveContext` scopes the thread that
thread-sensitive calls share.

Which thread runs a ``sync_to_async`` call:

* ``thread_sensitive=False``: a thread of anyio's worker pool
  (:func:`anyio.to_thread.run_sync`, bounded by ``limiter`` or anyio's default
  limiter).
* ``thread_sensitive=True`` (the default), in priority order:

  1. if the call is made, directly or through child tasks, by an async function
     that :func:`async_to_sync` is running on behalf of a thread of the same scope,
     that very thread: it is blocked waiting for the async function, so it runs the
     call meanwhile (sync -> async -> sync nesting cannot deadlock);
  2. otherwise the dedicated thread of the innermost open
     :class:`ThreadSensitiveContext`;
  3. outside any context, one process-wide thread that every such call in the
     process shares, one call at a time (what asgiref does too). It starts on first
     use and is joined at interpreter exit.

Thread-sensitive calls of one scope run one at a time, in the order they were
made, on the same OS thread, so thread-bound resources (database connections,
thread-locals) behave.

Context variables cross both ways: the function sees the caller's variables, and
the changes it makes are copied back into the caller's context when it returns
(whether it returns or raises). The same holds for :func:`async_to_sync` in the
other direction. Exceptions propagate with their original traceback.

Cancellation. Running Python code in a thread cannot be interrupted. When the task
awaiting a ``sync_to_async`` call is cancelled, the call is *abandoned*:

* the awaiting task raises its cancellation at once; it never waits for the thread;
* a thread-sensitive call that has not started yet never runs;
* a call that is running keeps running until it returns; its result or exception
  is discarded. It can notice the abandonment by calling :func:`check_cancelled`,
  and :func:`async_to_sync` raises :class:`CallAbandoned` in it (an async function
  it was awaiting is cancelled with the awaiting task);
* an abandoned pool call keeps its ``limiter`` token until it returns; an abandoned
  thread-sensitive call keeps its scope's thread busy, and
  :class:`ThreadSensitiveContext` waits for it on exit.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import math
import queue
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar, cast, overload

import anyio
import anyio.lowlevel
import anyio.to_thread
import sniffio

__all__ = [
    "CallAbandoned",
    "ThreadSensitiveContext",
    "async_to_sync",
    "check_cancelled",
    "sync_to_async",
]

P = ParamSpec("P")
R = TypeVar("R")


class CallAbandoned(BaseException):
    """Raised in a worker thread whose ``sync_to_async`` caller was cancelled.

    :func:`check_cancelled` and :func:`async_to_sync` raise it so cooperative sync
    code can stop early. Like the event loop's own cancellation exceptions it
    derives from :class:`BaseException`, so ``except Exception`` does not swallow
    it. It never reaches async code: the abandoned call's result is discarded.
    """


# -- scopes and their threads -------------------------------------------------------


class _Home:
    """The one thread on which a scope runs its thread-sensitive calls.

    A single-worker executor: its thread starts on the first submission, and the
    stdlib joins it at interpreter exit if it was never shut down.
    """

    __slots__ = ("_executor", "closed", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._executor: ThreadPoolExecutor | None = None  # created on first use
        self.closed = False

    @property
    def used(self) -> bool:
        return self._executor is not None

    def submit(self, call: _Call) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=self.name
            )
        self._executor.submit(call.run)

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)


_PROCESS_HOME = _Home("trichannels-sync")
_current_home: contextvars.ContextVar[_Home] = contextvars.ContextVar(
    "trichannels_sync_home", default=_PROCESS_HOME
)


class ThreadSensitiveContext:
    """Scope in which thread-sensitive calls share one dedicated thread.

    ``async with ThreadSensitiveContext():`` gives the calls made inside it
    (including by child tasks started inside it) their own thread, so two scopes run
    in parallel while calls within one scope run one at a time, in call order, on
    the same thread. A nested context is a new scope with its own thread. Consumers
    open one per connection.

    Entering is cheap: the thread starts on the first thread-sensitive call. The
    thread never outlives the ``async with``: on exit (even when cancelled) the
    context waits until the thread has finished the call it has in hand, if any, and
    then joins it. So an abandoned call that never returns holds the exit; sync code
    that may run long should poll :func:`check_cancelled`.

    No thread is started and forgotten: a context's thread is joined by its exit,
    the process-wide thread (used outside any context) is a
    :class:`~concurrent.futures.ThreadPoolExecutor` worker that the standard library
    joins at interpreter exit, and pool threads belong to anyio. Calls queued by cancelled
    callers are skipped. Making a thread-sensitive call in a context that has exited
    (from a task that outlived it) raises :class:`RuntimeError`.
    """

    def __init__(self) -> None:
        self._home: _Home | None = None
        self._reset: contextvars.Token[_Home] | None = None

    async def __aenter__(self) -> Self:
        await anyio.lowlevel.checkpoint()
        return self._enter()

    def _enter(self) -> Self:
        if self._home is not None:
            msg = "this ThreadSensitiveContext is already in use; create a new one"
            raise RuntimeError(msg)
        self._home, self._reset = _open_home()
        return self

    async def __aexit__(  # noqa: ASYNC910 - no cancel point: never mask the body's exception
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        home, reset = self._home, self._reset
        assert home is not None, "exit without enter"
        assert reset is not None, "exit without enter"
        if _leave_home(home, reset):
            await _join_home(home)  # noqa: ASYNC102 - shielded inside


def _open_home() -> tuple[_Home, contextvars.Token[_Home]]:
    """Enter a thread-sensitive scope without a checkpoint (a consumer instance's
    first await on the server is its checkpoint).

    Leave it with :func:`_leave_home`, then, if that says so, await :func:`_join_home`.
    """
    home = _Home("trichannels-sensitive")
    return home, _current_home.set(home)


def _leave_home(home: _Home, reset: contextvars.Token[_Home]) -> bool:
    """Leave a scope entered with :func:`_open_home`; True if its thread must be joined."""
    _current_home.reset(reset)
    home.closed = True
    return home.used


async def _join_home(home: _Home) -> None:
    """Wait (shielded, without blocking the event loop) until a used home's thread is idle; join it."""
    drain = _Call(_noop, (), {}, home)
    home.submit(drain)
    with anyio.CancelScope(shield=True):
        await drain.result()
    home.shutdown()


def _noop() -> None:
    pass


# -- one call and its messages ------------------------------------------------------


class _Outcome:
    """The result of a sync or async call, with the context it ended in."""

    __slots__ = ("context", "error", "value")

    def __init__(
        self,
        value: Any = None,
        error: BaseException | None = None,
        context: contextvars.Context | None = None,
    ) -> None:
        self.value = value
        self.error = error
        self.context = context

    def unwrap(self) -> Any:
        if self.error is not None:
            error, self.error = self.error, None
            try:
                raise error
            finally:
                del error  # drop the traceback -> frame -> error cycle
        return self.value


def _abandoned_error() -> CallAbandoned:
    return CallAbandoned("the task awaiting this sync_to_async call was cancelled")


def _abandoned() -> _Outcome:
    return _Outcome(error=_abandoned_error())


class _Request:
    """An ``async_to_sync`` call made in a worker thread, served on the event loop.

    While the thread waits for the answer it runs the thread-sensitive calls the
    async function makes for its scope (they are put in the same inbox).
    """

    def __init__(self, afn: Callable[[], Awaitable[Any]], home: _Home | None) -> None:
        self.afn = afn
        self.home = home
        self.context = contextvars.copy_context()
        self.inbox: queue.SimpleQueue[_Call | _Outcome] = queue.SimpleQueue()
        # Touched on the event loop only: once answered, nothing more is put in.
        self.open = True

    def answer(self, outcome: _Outcome) -> None:
        self.open = False
        self.inbox.put(outcome)

    def wait(self) -> _Outcome:
        while isinstance(item := self.inbox.get(), _Call):
            item.run()
        return item


class _Local(threading.local):
    call: _Call | None = None


_local = _Local()
_waiting: contextvars.ContextVar[_Request | None] = contextvars.ContextVar(
    "trichannels_sync_waiting", default=None
)
# Bookkeeping that must not be copied between the thread's and the loop's contexts.
_PRIVATE_VARS = (sniffio.current_async_library_cvar, _current_home, _waiting)
_MISSING = object()


def _restore(context: contextvars.Context) -> None:
    """Copy into the current context the variables that differ in *context*."""
    for var, value in context.items():
        if var not in _PRIVATE_VARS and var.get(_MISSING) is not value:
            var.set(value)


class _Call:
    """One ``sync_to_async`` call, shared by the awaiting task and the thread.

    The thread posts messages (async_to_sync requests, then the outcome) to the
    awaiting task through the event loop's token. Posting never waits for the loop,
    so a thread whose caller and loop are gone cannot hang; a request that cannot
    be delivered is answered with :class:`CallAbandoned`.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        home: _Home | None,
    ) -> None:
        self.fn, self.args, self.kwargs, self.home = fn, args, kwargs, home
        self.context = contextvars.copy_context()
        # The thread is not in async context, whatever the loop's context says.
        self.context.run(sniffio.current_async_library_cvar.set, None)
        self.token = anyio.lowlevel.current_token()
        self.abandoned = False
        self._send, self._receive = anyio.create_memory_object_stream[
            _Request | _Outcome
        ](math.inf)

    # -- in the worker thread

    def run(self) -> None:
        if self.abandoned:
            return
        outer, _local.call = _local.call, self
        try:
            value = self.context.run(self.fn, *self.args, **self.kwargs)
            if inspect.iscoroutine(value):
                value.close()
                msg = f"sync_to_async() got a function that returned a coroutine: {self.fn!r}"
                raise TypeError(msg)
            outcome = _Outcome(value)
        except BaseException as exc:  # noqa: ASYNC103 - a worker thread: nothing to cancel here
            outcome = _Outcome(error=exc)
        finally:
            _local.call = outer
        self.post(outcome)

    def post(self, message: _Request | _Outcome) -> None:
        try:
            self.token.backend_class.run_sync_soon(
                self._deliver, (message,), self.token.native_token
            )
        except anyio.RunFinishedError:
            if isinstance(message, _Request):
                message.answer(_abandoned())

    # -- on the event loop

    def _deliver(self, message: _Request | _Outcome) -> None:
        try:
            self._send.send_nowait(message)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            if isinstance(message, _Request):
                message.answer(_abandoned())

    async def result(
        self, host: Callable[[], Coroutine[Any, Any, object]] | None = None
    ) -> Any:
        """Serve the thread's requests until its outcome arrives; return or raise it."""
        outcome: _Outcome | None = None
        try:
            async with anyio.create_task_group() as tg:
                if host is not None:
                    tg.start_soon(host)
                async for message in self._receive:
                    if isinstance(message, _Outcome):
                        outcome = message
                        break
                    tg.start_soon(_serve, message)
        except BaseException:
            self._abandon()
            raise
        self._send.close()
        self._receive.close()
        assert outcome is not None, "the outcome is the only way out of the loop"
        _restore(self.context)
        return outcome.unwrap()

    def _abandon(self) -> None:
        self.abandoned = True
        self._send.close()
        while True:
            try:
                message = self._receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
            if isinstance(message, _Request):
                message.answer(_abandoned())
        self._receive.close()


async def _serve(request: _Request) -> None:  # noqa: ASYNC910 - a task body, not an API
    """Run an async_to_sync request as a child of the awaiting task."""
    _restore(request.context)
    if request.home is not None:
        _waiting.set(request)
    try:
        value = await request.afn()
    except anyio.get_cancelled_exc_class():
        request.answer(_abandoned())
        raise
    except BaseException as exc:
        request.answer(_Outcome(error=exc, context=contextvars.copy_context()))
    else:
        request.answer(_Outcome(value, context=contextvars.copy_context()))


# -- sync_to_async ------------------------------------------------------------------


def _is_async_callable(obj: Callable[..., object]) -> bool:
    # An instance whose class has an async __call__ is async too; a class is not.
    return inspect.iscoroutinefunction(obj) or (
        not isinstance(obj, type) and inspect.iscoroutinefunction(type(obj).__call__)
    )


def _require_callable(obj: object, function: str, kind: str) -> None:
    if not callable(obj):
        msg = f"{function}() expects {kind} callable, got {obj!r}"
        raise TypeError(msg)


async def _call_sensitive(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    home = _current_home.get()
    if home.closed:
        msg = "thread-sensitive call made in a ThreadSensitiveContext that has already exited"
        raise RuntimeError(msg)
    call = _Call(fn, args, kwargs, home)
    waiting = _waiting.get()
    if waiting is not None and waiting.home is home and waiting.open:
        waiting.inbox.put(call)
    else:
        home.submit(call)
    return await call.result()


async def _call_in_pool(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    limiter: anyio.CapacityLimiter | None,
) -> Any:
    call = _Call(fn, args, kwargs, None)
    host = functools.partial(
        anyio.to_thread.run_sync, call.run, abandon_on_cancel=True, limiter=limiter
    )
    return await call.result(host)


@overload
def sync_to_async(
    fn: Callable[P, R],
    *,
    thread_sensitive: bool = True,
    limiter: anyio.CapacityLimiter | None = None,
) -> Callable[P, Coroutine[Any, Any, R]]: ...


@overload
def sync_to_async(
    fn: None = None,
    *,
    thread_sensitive: bool = True,
    limiter: anyio.CapacityLimiter | None = None,
) -> Callable[[Callable[P, R]], Callable[P, Coroutine[Any, Any, R]]]: ...


def sync_to_async(
    fn: Callable[P, R] | None = None,
    *,
    thread_sensitive: bool = True,
    limiter: anyio.CapacityLimiter | None = None,
) -> (
    Callable[P, Coroutine[Any, Any, R]]
    | Callable[[Callable[P, R]], Callable[P, Coroutine[Any, Any, R]]]
):
    """Turn a blocking function into a coroutine function that runs it in a thread.

    Usable as ``sync_to_async(fn)``, ``@sync_to_async`` and
    ``@sync_to_async(thread_sensitive=False)``, including on methods (the result is
    a plain ``async def`` function, so it binds ``self`` like any method).

    See the module documentation for which thread runs the call, how context
    variables cross, and what cancelling the awaiting task does: in short, the
    awaiting task returns at once and the running function is abandoned.

    Args:
        fn: The sync callable. Omit it to get a decorator.
        thread_sensitive: Run the call on the current scope's dedicated thread
            (see :class:`ThreadSensitiveContext`), one at a time, in call order.
            When false, run it on anyio's worker pool.
        limiter: Capacity limiter for the worker pool (only with
            ``thread_sensitive=False``); anyio's default limiter if omitted.

    Returns:
        A coroutine function with the signature of *fn*, or a decorator.

    Raises:
        TypeError: *fn* is not callable or is async, or *limiter* was given with
            ``thread_sensitive=True``.
    """
    if limiter is not None and thread_sensitive:
        msg = "sync_to_async(): limiter= only applies with thread_sensitive=False"
        raise TypeError(msg)

    def decorate(fn: Callable[P, R]) -> Callable[P, Coroutine[Any, Any, R]]:
        _require_callable(fn, "sync_to_async", "a sync")
        if _is_async_callable(fn):
            msg = f"sync_to_async() expects a sync callable, but {fn!r} is async: await it directly"
            raise TypeError(msg)

        @functools.wraps(fn)
        async def run_in_thread(*args: P.args, **kwargs: P.kwargs) -> R:
            if thread_sensitive:
                result = await _call_sensitive(fn, args, kwargs)
            else:
                result = await _call_in_pool(fn, args, kwargs, limiter)
            return cast("R", result)

        return run_in_thread

    return decorate if fn is None else decorate(fn)


def check_cancelled() -> None:
    """Raise :class:`CallAbandoned` if the caller of the current call was cancelled.

    Call it from sync code running through :func:`sync_to_async` (either kind) to
    stop early once nobody waits for the result. In pool threads,
    :func:`anyio.from_thread.check_cancelled` works too; in thread-sensitive threads
    only this one does.

    Raises:
        CallAbandoned: The task awaiting this call was cancelled.
        RuntimeError: The current thread is not running a ``sync_to_async`` call.
    """
    call = _local.call
    if call is None:
        msg = "check_cancelled() must be called from a function run by sync_to_async()"
        raise RuntimeError(msg)
    if call.abandoned:
        raise _abandoned_error()


# -- async_to_sync ------------------------------------------------------------------


def _is_plain_function(obj: object) -> bool:
    while isinstance(obj, functools.partial):
        obj = obj.func
    return inspect.isroutine(obj) and not inspect.iscoroutinefunction(obj)


def _event_loop_running_here() -> bool:
    # sniffio knows every backend (our worker threads clear its context variable),
    # so this module need not import trio or asyncio to ask.
    try:
        sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return False
    return True


def _run_own_loop(afn: Callable[[], Awaitable[R]], backend: str) -> R:
    context: contextvars.Context | None = None

    async def main() -> R:
        nonlocal context
        try:
            return await afn()
        finally:
            context = contextvars.copy_context()

    try:
        return anyio.run(main, backend=backend)
    finally:
        if context is not None:
            _restore(context)


def async_to_sync(
    afn: Callable[P, Awaitable[R]], *, backend: str = "trio"
) -> Callable[P, R]:
    """Turn a coroutine function into a blocking function.

    Where the returned function runs *afn*:

    * in a worker thread running a :func:`sync_to_async` call (either kind): back on
      that call's event loop, as a child of the task awaiting the call, so it can
      use the loop's objects and is cancelled with that task (the thread then gets
      :class:`CallAbandoned`). Thread-sensitive calls *afn* makes for the thread's
      own scope run in the waiting thread itself;
    * in any other thread with no event loop (including threads anyio started
      directly): in a new event loop of its own, ``anyio.run(..., backend=backend)``,
      that lasts for the call;
    * in a thread running an event loop: it raises :class:`RuntimeError`, because
      blocking there would deadlock the loop.

    Context variables cross both ways and exceptions keep their traceback. The
    result is a plain function, so it also works as a method.

    Args:
        afn: The coroutine function (or callable returning an awaitable).
        backend: The anyio backend of the event loop started when the calling
            thread has none to go back to.

    Returns:
        A sync function with the signature of *afn*.

    Raises:
        TypeError: *afn* is not callable, or is a plain (non-async) function.
    """
    _require_callable(afn, "async_to_sync", "an async")
    if _is_plain_function(afn):
        msg = f"async_to_sync() expects an async callable, but {afn!r} is a plain function: call it directly"
        raise TypeError(msg)

    @functools.wraps(afn)
    def run_blocking(*args: P.args, **kwargs: P.kwargs) -> R:
        if _event_loop_running_here():
            msg = (
                "async_to_sync() cannot be called in the event loop's own thread: "
                "await the coroutine function directly instead"
            )
            raise RuntimeError(msg)

        async def bound() -> R:
            awaitable: object = afn(*args, **kwargs)
            if not inspect.isawaitable(awaitable):
                msg = f"async_to_sync() got a callable that did not return an awaitable: {afn!r}"
                raise TypeError(msg)
            return cast("R", await awaitable)

        call = _local.call
        if call is None:
            return _run_own_loop(bound, backend)
        if call.abandoned:
            raise _abandoned_error()
        request = _Request(bound, call.home)
        call.post(request)
        outcome = request.wait()
        if outcome.context is not None:
            _restore(outcome.context)
        return cast("R", outcome.unwrap())

    return run_blocking
