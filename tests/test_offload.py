"""CPU work off the event loop: a token is held until its thread is done, come what may."""

import asyncio
import gc
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Callable

import anyio
import anyio.to_thread
import pytest

from digitserve.offload import run_sync


class Gate:
    """A blocking job that counts how many of its kind run at once, until the gate opens."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.started = 0

    def __call__(self) -> str:
        with self.lock:
            self.running += 1
            self.started += 1
            self.most = max(self.most, self.running)
        try:
            self.opened.wait(10)
            return "done"
        finally:
            with self.lock:
                self.running -= 1


async def until(condition: Callable[[], bool], limit: float = 5.0) -> None:
    """Yield to the loop until a condition holds (bounded)."""
    deadline = time.monotonic() + limit
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.005)


def test_anyio_gives_the_token_back_while_its_thread_still_runs() -> None:
    # Why `offload` exists: asyncio's cancellation (a request's time limit) goes through anyio's
    # shield, and the thread works on without its token.
    gate = Gate()

    async def scenario() -> tuple[int, int]:
        limiter = anyio.CapacityLimiter(1)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await anyio.to_thread.run_sync(gate, limiter=limiter)
        borrowed, running = limiter.borrowed_tokens, gate.running
        gate.opened.set()
        await until(lambda: gate.running == 0)
        return borrowed, running

    assert asyncio.run(scenario()) == (0, 1)


def test_a_caller_out_of_time_leaves_the_token_held_until_its_thread_is_done() -> None:
    gate = Gate()

    async def scenario() -> None:
        limiter = anyio.CapacityLimiter(2)
        timed_out = 0

        async def request() -> None:
            nonlocal timed_out
            try:
                async with asyncio.timeout(0.05):
                    await run_sync(gate, limiter=limiter)
            except TimeoutError:
                timed_out += 1

        # Three waves of callers, each out of time while the threads of the first still block.
        for _ in range(3):
            await asyncio.gather(*(request() for _ in range(4)))
            assert limiter.borrowed_tokens == 2
            assert gate.running == 2
        assert (timed_out, gate.started, gate.most) == (12, 2, 2)
        gate.opened.set()
        await until(lambda: limiter.borrowed_tokens == 0)
        assert limiter.borrowed_tokens == 0
        # Free again: the next caller gets its result.
        assert await run_sync(gate, limiter=limiter) == "done"

    asyncio.run(scenario())


def test_results_and_errors_reach_the_caller() -> None:
    def fail(message: str) -> None:
        raise ValueError(message)

    async def scenario() -> None:
        limiter = anyio.CapacityLimiter(1)
        assert await run_sync(sum, [1, 2, 3], limiter=limiter) == 6
        with pytest.raises(ValueError, match="refused"):
            await run_sync(fail, "refused", limiter=limiter)
        assert limiter.borrowed_tokens == 0

    asyncio.run(scenario())


def test_what_an_error_holds_is_freed_at_once_not_by_the_garbage_collector() -> None:
    # A refused 10 MB body is in the frames of the error's traceback: a reference cycle through
    # the future would keep it until a full collection, which an idle server may never make.
    class Body:
        """Stands for a request body."""

    def refuse(body: Body) -> None:
        raise ValueError("refused")

    async def scenario() -> weakref.ref[Body]:
        body = Body()
        alive = weakref.ref(body)
        with pytest.raises(ValueError, match="refused"):
            await run_sync(refuse, body, limiter=anyio.CapacityLimiter(1))
        del body
        return alive

    gc.disable()
    try:
        alive = asyncio.run(scenario())
        # The worker thread lets go of the error once its hand-back call returns, which may be
        # just after the caller resumed: give it a moment, never a collection.
        deadline = time.monotonic() + 2
        while alive() is not None and time.monotonic() < deadline:
            time.sleep(0.001)
        assert alive() is None
    finally:
        gc.enable()


def test_threads_are_reused_not_multiplied() -> None:
    before = threading.active_count()

    async def scenario() -> None:
        limiter = anyio.CapacityLimiter(1)
        for _ in range(20):
            await run_sync(threading.get_ident, limiter=limiter)

    asyncio.run(scenario())
    assert threading.active_count() <= before + 1


def test_a_thread_still_working_does_not_hold_the_process_at_exit() -> None:
    # A decode still running when the server has shut down must not keep the process alive:
    # anyio's and concurrent.futures' threads would be joined at exit, this one is not.
    script = textwrap.dedent(
        """
        import asyncio, time
        import anyio
        from digitserve.offload import run_sync

        async def main():
            try:
                async with asyncio.timeout(0.1):
                    await run_sync(time.sleep, 60, limiter=anyio.CapacityLimiter(1))
            except TimeoutError:
                print("timed out", flush=True)

        asyncio.run(main())
        """
    )
    started = time.monotonic()
    finished = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, timeout=50, check=False
    )
    assert (finished.returncode, finished.stdout) == (0, b"timed out\n"), finished.stderr
    assert time.monotonic() - started < 30


def test_a_forked_child_starts_threads_of_its_own() -> None:
    # The parent's idle thread does not come along into a forked child (gunicorn's workers).
    script = textwrap.dedent(
        """
        import asyncio, os, sys
        import anyio
        from digitserve.offload import run_sync

        async def once():
            async with asyncio.timeout(10):
                return await run_sync(os.getpid, limiter=anyio.CapacityLimiter(1))

        asyncio.run(once())  # leaves an idle thread in this process
        child = os.fork()
        if child == 0:
            os._exit(0 if asyncio.run(once()) == os.getpid() else 1)
        _, status = os.waitpid(child, 0)
        print(os.waitstatus_to_exitcode(status), flush=True)
        """
    )
    finished = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, timeout=50, check=False
    )
    assert (finished.returncode, finished.stdout) == (0, b"0\n"), finished.stderr
