"""Log formats: JSON for machines, text for a terminal, the request id on every line."""

import io
import json
import logging
import logging.config
import sys
from collections.abc import Iterator

import pytest

from digitserve.logs import (
    REQUEST_ID,
    JsonFormatter,
    TextFormatter,
    logging_config,
    new_request_id,
    resolve_format,
    skip_unused_record_fields,
)


def record(message: str = "hello %s", *args: object, **fields: object) -> logging.LogRecord:
    """A log record as a logger call would make it."""
    made = logging.LogRecord("digitserve.test", logging.WARNING, __file__, 1, message, args, None)
    if fields:
        made.fields = fields
    return made


def test_json_line_has_time_level_message_request_id_pid_and_fields() -> None:
    token = REQUEST_ID.set("req-9")
    try:
        line = JsonFormatter().format(record("hello %s", "world", status=200, images=2))
    finally:
        REQUEST_ID.reset(token)
    document = json.loads(line)
    assert "\n" not in line
    assert document["time"].endswith("Z")
    assert {key: document[key] for key in ("level", "logger", "message", "request_id")} == {
        "level": "warning",
        "logger": "digitserve.test",
        "message": "hello world",
        "request_id": "req-9",
    }
    assert isinstance(document["pid"], int)
    assert (document["status"], document["images"]) == (200, 2)


def test_json_time_is_rfc3339_utc_with_milliseconds_across_seconds() -> None:
    times = []
    for created in (1_700_000_000.1234, 1_700_000_000.9996, 1_700_000_001.25, 1_699_999_999.5):
        made = record()
        made.created = created
        times.append(json.loads(JsonFormatter().format(made))["time"])
    assert times == [
        "2023-11-14T22:13:20.123Z",
        "2023-11-14T22:13:20.999Z",
        "2023-11-14T22:13:21.250Z",
        "2023-11-14T22:13:19.500Z",
    ]


def test_request_ids_are_32_random_hex_digits() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(value) == 32 and int(value, 16) >= 0 for value in ids)


@pytest.fixture
def record_switches() -> Iterator[None]:
    """Restore logging's process-wide record switches after a test changes them."""
    saved = (logging._srcfile, logging.logThreads, logging.logMultiprocessing)
    yield
    logging._srcfile, logging.logThreads, logging.logMultiprocessing = saved


@pytest.mark.usefixtures("record_switches")
def test_skipping_unused_record_fields_keeps_every_field_a_line_shows() -> None:
    skip_unused_record_fields()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("digitserve.test.switches")
    logger.addHandler(handler)
    logger.propagate = False
    records: list[logging.LogRecord] = []

    def keep(made: logging.LogRecord) -> bool:
        records.append(made)
        return True

    handler.addFilter(keep)
    try:
        logger.warning("served %s", "x", extra={"fields": {"status": 200}})
    finally:
        logger.removeHandler(handler)
    document = json.loads(stream.getvalue())
    assert (document["message"], document["status"], document["pid"]) == (
        "served x",
        200,
        records[0].process,
    )
    assert isinstance(document["pid"], int)
    # What was skipped: the caller's place and the thread.
    assert (records[0].funcName, records[0].lineno, records[0].thread) == (
        "(unknown function)",
        0,
        None,
    )


def test_json_traceback_stays_on_one_line() -> None:
    try:
        raise ValueError("bad thing")
    except ValueError:
        failed = record("failed")
        failed.exc_info = sys.exc_info()
    line = JsonFormatter().format(failed)
    assert "\n" not in line
    assert "ValueError: bad thing" in json.loads(line)["exception"]
    assert json.loads(line)["request_id"] is None


def test_text_line_for_people() -> None:
    token = REQUEST_ID.set("req-1")
    try:
        line = TextFormatter().format(
            record("GET /x %d", 200, status=200, route="/x", code=None, images=1)
        )
    finally:
        REQUEST_ID.reset(token)
    assert line.split()[1:] == [
        "WARNING",
        "GET",
        "/x",
        "200",
        "request_id=req-1",
        "route=/x",
        "images=1",
    ]


class Stream(io.StringIO):
    """A stream that says whether it is a terminal."""

    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        """As configured."""
        return self.tty


@pytest.mark.parametrize(
    ("setting", "tty", "expected"),
    [
        ("auto", True, "text"),
        ("auto", False, "json"),
        ("json", True, "json"),
        ("text", False, "text"),
    ],
)
def test_auto_is_text_in_a_terminal_and_json_elsewhere(
    setting: str, tty: bool, expected: str
) -> None:
    assert resolve_format(setting, Stream(tty)) == expected  # type: ignore[arg-type]


def test_logging_config_applies_and_silences_uvicorns_access_log() -> None:
    config = logging_config("warning", "json")
    assert config["formatters"]["default"]["()"] == "digitserve.logs.JsonFormatter"
    assert config["loggers"]["uvicorn.access"] == {"handlers": [], "propagate": False}
    saved = {name: logging.getLogger(name).__dict__.copy() for name in config["loggers"]}
    try:
        logging.config.dictConfig(config)
        logger = logging.getLogger("digitserve")
        assert logger.level == logging.WARNING
        assert isinstance(logger.handlers[0].formatter, JsonFormatter)
    finally:
        for name, state in saved.items():
            logging.getLogger(name).__dict__.update(state)


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_an_access_line_written_directly_is_the_line_logging_writes(log_format: str) -> None:
    from digitserve.logs import FIELDS_ATTRIBUTE, log_access

    config = logging_config("info", log_format)  # type: ignore[arg-type]
    config["handlers"]["default"]["stream"] = "ext://sys.stdout"
    parent = logging.getLogger("digitserve")
    saved = (parent.handlers[:], parent.level, parent.propagate)
    logging.config.dictConfig(config)
    stream = io.StringIO()
    parent.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    access = logging.getLogger("digitserve.access")
    fields = {"protocol": "http", "status": 200, "route": "/v1/models/{name}:predict"}
    token = REQUEST_ID.set("req-7")
    try:
        log_access(access, logging.INFO, "%s %s %d %.1f ms", ("POST", "/v1", 200, 1.25), fields)
        access.log(
            logging.INFO,
            "%s %s %d %.1f ms",
            "POST",
            "/v1",
            200,
            1.25,
            extra={FIELDS_ATTRIBUTE: fields},
        )
        # A handler an embedding application adds is honoured: the line goes through logging.
        extra = io.StringIO()
        added = logging.StreamHandler(extra)
        access.addHandler(added)
        log_access(access, logging.INFO, "%s %s %d %.1f ms", ("GET", "/x", 404, 0.5), {})
        access.removeHandler(added)
    finally:
        REQUEST_ID.reset(token)
        parent.handlers[:], parent.level, parent.propagate = saved
    direct, through_logging, third = stream.getvalue().splitlines()
    assert extra.getvalue() == "GET /x 404 0.5 ms\n"
    assert "404" in third
    if log_format == "json":
        ours, theirs = json.loads(direct), json.loads(through_logging)
        assert ours.pop("time")[:19] == theirs.pop("time")[:19]  # the same second, at least
        assert ours == theirs
        assert ours["request_id"] == "req-7"
        assert ours["message"] == "POST /v1 200 1.2 ms"
    else:
        assert direct.split(" ", 1)[1] == through_logging.split(" ", 1)[1]
