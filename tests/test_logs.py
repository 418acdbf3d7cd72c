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
