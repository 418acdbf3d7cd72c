"""Draining on SIGTERM: readiness turns false at once, the listener closes only after a delay.

uvicorn stops accepting connections as soon as SIGTERM arrives. Behind a load balancer that is too
early: the balancer still routes here until it sees /readyz fail. So the server's own SIGTERM
handler is wrapped: the first SIGTERM marks the app as draining (/readyz answers 503, requests
are still served, each response says `Connection: close`), and only after
`shutdown_delay_seconds` is the signal handed on to uvicorn, which closes the listener and lets
in-flight requests finish within `shutdown_timeout_seconds`. A second SIGTERM hands it on at once.
Threads still decoding then (see `offload`) do not hold the exit: they are daemon threads.
"""

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)


def drain_on_sigterm(on_drain: Callable[[], None], delay: float) -> Callable[[], None]:
    """Wrap the running server's SIGTERM handler; return a function that puts it back.

    Does nothing off the main thread (signals cannot be caught there) or when no Python handler is
    installed (no server to hand the signal to).
    """
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        return lambda: None
    loop = asyncio.get_running_loop()
    received = False

    def handle(signum: int, frame: FrameType | None) -> None:
        nonlocal received
        on_drain()
        if received or delay <= 0:
            previous(signum, frame)
            return
        received = True
        # A signal handler may interrupt the loop anywhere: only the thread-safe call is safe here.
        loop.call_soon_threadsafe(_drain, loop, delay, previous, signum)

    signal.signal(signal.SIGTERM, handle)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is handle:
            signal.signal(signal.SIGTERM, previous)

    return restore


def _drain(
    loop: asyncio.AbstractEventLoop, delay: float, hand_on: Callable[..., Any], signum: int
) -> None:
    """On the loop: say what is happening, and hand the signal on after the delay."""
    logger.info(
        "SIGTERM: readiness is now false; serving on for %g s before closing the listener", delay
    )
    loop.call_later(delay, hand_on, signum, None)
