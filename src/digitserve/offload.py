"""Running CPU work off the event loop under a bound that holds until the thread is done.

`anyio.to_thread.run_sync(func, limiter=...)` counts a thread against its limiter only while the
calling task waits for it. When asyncio cancels that task (a request out of time, cut short by
`asyncio.timeout` in `middleware`), anyio's shield does not stop it: the token is given back at
once while the thread works on, uncounted, and a client that lets its requests time out keeps any
number of threads busy. `run_sync` here ties the token to the thread instead: a caller out of time
stops waiting, but the token comes back only when the thread has returned, so no more threads than
tokens ever work, and new callers wait for one within their own time limit.

Its threads are daemon threads, started as needed and reused: anyio's and `concurrent.futures`'
threads are joined at interpreter exit, so one still working after the shutdown grace period
would keep the process alive until it finished.
"""

import asyncio
import contextlib
import os
import queue
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar, TypeVarTuple

from anyio import CapacityLimiter

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

Work = Callable[[], Callable[[], None]]
"""A job for a worker thread: it runs the caller's function and returns what hands the outcome
back to the caller's event loop."""


async def run_sync(func: Callable[[*Ts], T], *args: *Ts, limiter: CapacityLimiter) -> T:
    """Run `func(*args)` on a worker thread that holds one of `limiter`'s tokens until it returns.

    Cancelled while waiting for a token, the caller gives up its place; cancelled once the thread
    has started, it stops waiting for the result, and the result (or error) is dropped.
    """
    borrower = object()
    await limiter.acquire_on_behalf_of(borrower)
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    try:
        _THREADS.submit(
            partial(_work, loop, partial(_settle, limiter, borrower, future), future, func, args)
        )
    except BaseException:
        limiter.release_on_behalf_of(borrower)
        raise
    try:
        return await future
    finally:
        # An error raised here holds this frame in its traceback, and the future holds the
        # error: a reference cycle, which would keep a refused body for the cyclic garbage
        # collector to find (`_work` takes the same care).
        del future


def _work(
    loop: asyncio.AbstractEventLoop,
    settle: Callable[[Callable[[], None]], None],
    future: "asyncio.Future[T]",
    func: Callable[[*Ts], T],
    args: tuple[*Ts],
) -> Callable[[], None]:
    """On a worker thread: call the function; return what hands its outcome back to the loop."""
    try:
        deliver = partial(future.set_result, func(*args))
    except BaseException as exc:  # the caller's to handle, on its loop
        deliver = partial(future.set_exception, exc)
    try:
        return partial(_call_soon, loop, settle, deliver)
    finally:
        del deliver, future, settle  # an error's traceback holds this frame: no way back to it


def _settle(
    limiter: CapacityLimiter,
    borrower: object,
    future: "asyncio.Future[Any]",
    deliver: Callable[[], None],
) -> None:
    """On the loop, once the thread is done: free the token, then answer any caller left."""
    limiter.release_on_behalf_of(borrower)
    if not future.cancelled():
        deliver()


def _call_soon(
    loop: asyncio.AbstractEventLoop,
    settle: Callable[[Callable[[], None]], None],
    deliver: Callable[[], None],
) -> None:
    """Hand an outcome back to its loop, from a worker thread."""
    # A closed loop raises RuntimeError: nobody waits any more, and its limiter is gone with it.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(settle, deliver)


class _Threads:
    """Daemon worker threads, started when no idle one is left and reused after."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[Work] = queue.SimpleQueue()
        self._idle = 0

    def submit(self, work: Work) -> None:
        """Queue a job, first starting a thread for it when none is idle."""
        if self._pid != os.getpid():  # forked: the parent's threads did not come along
            self._reset()
        with self._lock:
            start = self._idle == 0
            if not start:
                self._idle -= 1
        if start:  # before queueing: a thread that fails to start leaves no job behind
            threading.Thread(target=self._serve, name="digitserve-offload", daemon=True).start()
        self._jobs.put(work)

    def _serve(self) -> None:
        """Run jobs for as long as the process lives."""
        while True:
            hand_back = self._jobs.get()()
            with self._lock:
                # Counted idle before its caller hears of it: the token freed then may bring a
                # new job at once, which must find this thread rather than start another.
                self._idle += 1
            hand_back()
            del hand_back  # an idle thread holds no result


_THREADS = _Threads()
