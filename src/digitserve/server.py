"""Running the app under uvicorn: workers, logging, shutdown, and the request head and admission.

The app itself bounds a request once its headers have arrived (`TrafficMiddleware`). Before that
uvicorn has no deadline at all: a client that opens a connection and sends half a request line
holds the socket forever, and one that sends megabytes of headers is buffered whole.
`HeaderDeadlineProtocol` gives each request's headers the same time limit, and a size limit; and it
admits a request under the in-flight bound only once its body has arrived (`Admission`).
"""

import asyncio
import ctypes
import functools
import gc
import logging
import math
import os
import signal
import sys
from types import FrameType
from typing import Any, ClassVar

import orjson
import uvicorn
from starlette.types import ASGIApp
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from digitserve.dataplane import DataPlane
from digitserve.errors import (
    PROBLEM_MEDIA_TYPE,
    DigitserveError,
    InvalidInput,
    RequestTimeout,
    problem,
)
from digitserve.hardening import NOSNIFF, STRICT_CSP
from digitserve.logs import logging_config, new_request_id, skip_unused_record_fields
from digitserve.middleware import ADMITTED_KEY, malloc_trim
from digitserve.settings import Settings

logger = logging.getLogger("digitserve")

MMAP_THRESHOLD_BYTES = 1024 * 1024
"""Blocks from this size up get a mapping of their own from glibc, unmapped when freed."""

TRIM_THRESHOLD_BYTES = 2 * MMAP_THRESHOLD_BYTES
"""Free memory past this at the top of a heap goes back to the system (glibc's own ratio)."""

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
"""glibc's `mallopt` parameter numbers (malloc.h)."""

WORKER_SILENCE_SECONDS = 60
"""How long gunicorn's arbiter waits for a silent worker (uvicorn checks in every second or so)
before replacing it: generous, as a request may hold the event loop for a large image."""


class Admission:
    """How many requests this worker has admitted and not yet answered, against the bound.

    One per worker process, shared by its connections (see `TrafficMiddleware` for what happens
    to a request the worker is too full to admit). A request is admitted when it is ready to run,
    that is when its body has arrived whole: a client that trickles its body holds no place, so
    slow uploads cannot lock other clients out, and the count means what `batching.MicroBatcher`
    needs it to mean (requests that can reach the model now).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def count(self) -> int:
        """Requests admitted and not yet answered (for `batching.MicroBatcher`)."""
        return self.held

    def admit(self, scope: Any) -> None:
        """Decide, once a request's body is complete, whether it takes a place (`ADMITTED_KEY`)."""
        admitted = self.held < self.limit
        scope[ADMITTED_KEY] = admitted
        self.held += admitted

    def counted(self, app: ASGI3Application) -> ASGI3Application:
        """The app, releasing an admitted request's place once the app is done with it."""

        async def release_when_done(scope: Any, receive: Any, send: Any) -> None:
            try:
                await app(scope, receive, send)
            finally:
                if scope.get(ADMITTED_KEY):
                    self.held -= 1
                # Answered before its body arrived: never admitted, also when the rest comes.
                scope[ADMITTED_KEY] = False

        return release_when_done


class HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a request head past `max_header_bytes`."""


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a time and a size limit on request heads, and admission.

    408 when a request's headers take too long: the clock starts when the connection opens and
    again when a request's first byte arrives on a kept-alive connection (uvicorn's own keep-alive
    timeout covers the idle time in between). 400 when they are too large. Both in the error
    envelope, and the connection is closed. A request is admitted once its body is complete.
    """

    def __init__(
        self,
        *args: Any,
        header_timeout: float,
        max_header_bytes: int,
        admission: "Admission",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.header_deadline: asyncio.TimerHandle | None = None
        self.max_header_bytes = max_header_bytes
        self.head_bytes = 0
        self.parsed_head_bytes = 0
        self.head_too_large = False
        self.admission = admission
        self.app = admission.counted(self.app)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock for the first request's headers."""
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        """Start the clock for a request on a kept-alive connection."""
        super().on_message_begin()
        self.parsed_head_bytes = 0
        if self.header_deadline is None:
            self._arm()

    def data_received(self, data: bytes) -> None:
        """Refuse a request head past `max_header_bytes`: httptools alone buffers any size.

        Two counts: what the parser has read of the head so far (`on_url`, `on_header`), which
        refuses a large head even when it arrives in one read; and the bytes received while a head
        is incomplete, which refuses one endless header line before httptools has buffered more
        than the limit plus one read. A body sent in the same read as its head never counts.
        """
        if self.header_deadline is not None:
            if self.head_bytes > self.max_header_bytes:
                self._refuse_head()
                return
            self.head_bytes += len(data)
        super().data_received(data)

    def on_url(self, url: bytes) -> None:
        """Count the request target towards the head's size."""
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count each header line (name, value, separator and line end) towards the head's size."""
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """Stop the clock (from here the app's own time limit applies).

        The request is admitted when its body is complete (`on_message_complete`), not here: a
        body still to come may never come. A request without a body completes in the same read
        as its head, so it is admitted before its task first runs.
        """
        self._disarm()
        self.scope[ADMITTED_KEY] = None  # type: ignore[literal-required]
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """Admit the request (or find the worker full) now that its body has arrived whole.

        Admission is decided here, as the request joins the queue: most requests are served on
        the event loop without yielding, so the app sees them one at a time and never the queue.
        Probes count too when admitted, but are never refused (the middleware exempts them).
        """
        cycle = self.cycle
        if (
            cycle is not None
            and cycle.scope is self.scope
            and self.scope.get(ADMITTED_KEY, False) is None
            and not cycle.response_complete
        ):
            self.admission.admit(self.scope)
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        """Refuse a malformed request (or a head over the limit) in the envelope, not plain text.

        `msg` is uvicorn's own fixed text, never the client's bytes.
        """
        error = (
            InvalidInput(
                f"the request line and headers exceed the limit of {self.max_header_bytes} bytes",
                limit=self.max_header_bytes,
            )
            if self.head_too_large
            else InvalidInput(f"malformed HTTP request: {msg.rstrip('.').lower()}")
        )
        self._disarm()
        self._write_problem(error, b"HTTP/1.1 400 Bad Request")

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the clock with the connection."""
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self.head_bytes = 0
        self.header_deadline = self.loop.call_later(self.header_timeout, self._headers_timed_out)

    def _disarm(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def _count_head(self, size: int) -> None:
        """Add parsed head bytes; past the limit, stop the parser (uvicorn then answers 400)."""
        self.parsed_head_bytes += size
        if self.parsed_head_bytes > self.max_header_bytes:
            self.head_too_large = True
            raise HeadTooLarge

    def _refuse_head(self) -> None:
        """Answer 400 for a head over the limit, and close."""
        self.head_too_large = True
        self.send_400_response("Request head too large.")

    def _headers_timed_out(self) -> None:
        """Answer 408 in the error envelope and close, unless a response is under way."""
        self.header_deadline = None
        if self.transport.is_closing() or (self.cycle and not self.cycle.response_complete):
            return
        error = RequestTimeout(
            f"the request headers were not received within {self.header_timeout:g} s",
            limit_seconds=self.header_timeout,
        )
        logger.warning(
            "request headers not received within %g s; answered 408 and closed",
            self.header_timeout,
            extra={"fields": {"client": ":".join(map(str, self.client or ())), "status": 408}},
        )
        self._write_problem(error, b"HTTP/1.1 408 Request Timeout")

    def _write_problem(self, error: DigitserveError, status_line: bytes) -> None:
        """Write an error envelope straight to the socket, outside any request, and close."""
        request_id = new_request_id()
        body = orjson.dumps(problem(error, request_id))
        self.transport.write(
            status_line
            + b"\r\ncontent-type: "
            + PROBLEM_MEDIA_TYPE.encode()
            + b"\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\nconnection: close\r\n"
            + b"".join(name + b": " + value + b"\r\n" for name, value in (NOSNIFF, STRICT_CSP))
            + b"x-request-id: "
            + request_id.encode()
            + b"\r\n\r\n"
            + body
        )
        self.transport.close()


def serve(settings: Settings, dataplane: DataPlane) -> None:
    """Serve until SIGINT or SIGTERM, in one process or in `settings.workers` worker processes.

    The data plane has loaded its models already, so a bad model stops start-up before the port
    opens.
    """
    from digitserve.app import create_app

    admission = Admission(settings.max_concurrent_requests)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": functools.partial(
            HeaderDeadlineProtocol,
            header_timeout=settings.request_timeout_seconds,
            max_header_bytes=settings.max_header_bytes,
            admission=admission,
        ),
        # asyncio's own loop, not uvloop: under 64 concurrent connections uvloop left a few
        # requests waiting seconds (p99 1.9-2.4 s against a p50 of 67-96 ms, every run), where
        # asyncio served them in turn (p99 1.2-1.5x p50) at the same throughput.
        "loop": "asyncio",
        "log_level": settings.log_level,
        "log_config": logging_config(settings.log_level, settings.log_format),
        # The service writes its own access log (JSON, with request ids); uvicorn's is off.
        "access_log": False,
        "timeout_graceful_shutdown": settings.shutdown_timeout_seconds,
        "server_header": False,
    }
    # uvicorn drains on SIGTERM, then re-raises the signal to the handler it found; with a no-op
    # handler there the process exits 0 after a clean stop, as orchestrators expect.
    signal.signal(signal.SIGTERM, _ignore)
    skip_unused_record_fields()
    fix_malloc_thresholds()
    one_blas_thread()
    dataplane.admitted = admission.count
    app = create_app(settings, dataplane=dataplane, handle_sigterm=True)
    give_back_load_memory()
    freeze_startup_objects()
    if settings.workers == 1:
        uvicorn.run(app, **options)
    else:
        serve_forked(app, settings, options)


def fix_malloc_thresholds() -> None:
    """Stop glibc's malloc from raising, as it runs, the sizes at which it gives memory back.

    glibc maps a large block on its own and raises that threshold to the size of each such block
    freed (up to 32 MiB), and the one past which it shrinks a heap to twice that. After a few
    10 MB bodies, then, a worker thread's heap kept its 17 MiB of free space for good: under the
    raised threshold, and out of `malloc_trim`'s reach (which does not shrink a thread's heap).
    Fixed, blocks of a MiB or more are unmapped when freed, and heaps shrink past 2 MiB free.
    Nothing to do under another C library (`mallopt` is glibc's).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)


def one_blas_thread() -> None:
    """Let BLAS (numpy's matrix products) use one thread, as ONNX Runtime does.

    A worker is the unit of parallelism (`--workers`); OpenBLAS's own threads, one per core by
    default, only contend with the other workers for the same cores.
    """
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    threadpool_limits(limits=1, user_api="blas")


def give_back_load_memory() -> None:
    """Return to the system the memory that loading the models used and freed.

    ONNX Runtime builds a session with temporary allocations that glibc keeps for reuse: for a
    forest of 200 trees, 24 of the 57 MB the session added (measured with `malloc_trim`). Forked
    workers would each inherit those pages too.
    """
    gc.collect()
    trim = malloc_trim()
    if trim is not None:
        trim(0)


def freeze_startup_objects() -> None:
    """Put every object made so far (imports, model, app) out of the garbage collector's reach.

    Those are some 140,000 objects that live as long as the process, and a full collection
    walked them all: 155-170 ms during which no request moved, about once in 20 s at 64
    connections, enough to set the p99 latency. After `gc.freeze` a full collection walks only
    what serving made since (well under a millisecond). In forked workers it also keeps the
    collector from writing to, and so copying, the pages they share with the arbiter.
    """
    gc.collect()
    gc.freeze()


def _ignore(signum: int, frame: FrameType | None) -> None:
    """A signal handler that does nothing (see `serve`)."""


def serve_forked(app: ASGIApp, settings: Settings, options: dict[str, Any]) -> None:
    """Serve from `settings.workers` processes forked from this one, which has loaded the model.

    gunicorn's arbiter forks the workers (each runs uvicorn with the options of a single process)
    and replaces any that dies. Forked after the imports and the model, the workers share that
    memory with this process copy-on-write, instead of each importing scikit-learn and loading
    the model again (about 150 MB each); `serve` has already frozen those objects for the
    garbage collector (`freeze_startup_objects`).
    """
    # Imported here: a single-process server has no use for gunicorn.
    from gunicorn.app.base import BaseApplication
    from uvicorn_worker import UvicornWorker

    worker_options = {
        key: value
        for key, value in options.items()
        if key not in ("host", "port", "log_config")  # gunicorn binds, and configures logging
    }

    class DigitserveWorker(UvicornWorker):  # type: ignore[misc]
        """uvicorn in a gunicorn worker, with the options (protocol, loop) of `serve`."""

        CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
            **worker_options,
            "lifespan": "on",
            "timeout_keep_alive": 5,  # uvicorn's own default, as in one process
        }

        def init_signals(self) -> None:
            """As in `serve`: no-op handlers for uvicorn to hand SIGTERM and SIGINT back to.

            A worker stopped either way then exits 0, and the arbiter logs no warning.
            """
            super().init_signals()
            signal.signal(signal.SIGTERM, _ignore)
            signal.signal(signal.SIGINT, _ignore)

        def run(self) -> None:
            """Serve, then leave without the C++ libraries' exit-time destructors.

            ONNX Runtime's environment was made in the arbiter, before the fork: its threads are
            not in this process, and at exit its destructor waits for them for ever (in
            `pthread_cond_destroy`), so the worker hung on SIGTERM until the arbiter gave up and
            left it running. By now the server has drained and every request is answered.
            """
            super().run()
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

    class Arbiter(BaseApplication):  # type: ignore[misc]
        """gunicorn run from code, serving the app built in this process."""

        def load_config(self) -> None:
            for key, value in _gunicorn_settings(settings, DigitserveWorker).items():
                self.cfg.set(key, value)

        def load(self) -> ASGIApp:
            return app

    Arbiter().run()


def _gunicorn_settings(settings: Settings, worker: type) -> dict[str, Any]:
    """Gunicorn's settings for `serve_forked`."""
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config = logging_config(settings.log_level, settings.log_format)
    quiet: dict[str, Any] = {"handlers": [], "propagate": False}
    config["loggers"] |= {
        "gunicorn.error": config["loggers"]["digitserve"],
        "gunicorn.access": quiet,
    }
    config["root"] = {"level": "WARNING", "handlers": []}
    return {
        "bind": [f"{host}:{settings.port}"],
        "workers": settings.workers,
        "worker_class": worker,
        "preload_app": True,
        "proc_name": "digitserve",
        "logconfig_dict": config,
        "loglevel": settings.log_level,
        # The workers' own grace (`shutdown_timeout_seconds`, after the drain delay) comes first.
        "graceful_timeout": math.ceil(
            settings.shutdown_delay_seconds + settings.shutdown_timeout_seconds + 5
        ),
        "timeout": WORKER_SILENCE_SECONDS,
        "control_socket_disable": True,
        "child_exit": _worker_exited,
    }


def _worker_exited(arbiter: Any, worker: Any) -> None:
    """In the arbiter, after a worker exits (`child_exit`): it holds no requests any more."""
    from digitserve.metrics import forget_process

    forget_process(worker.pid)
