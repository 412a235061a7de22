"""The access log's direct line (made without a LogRecord under `logs.configure`'s setup) is the
line the JSON formatter makes of the record, and any other logging setup still gets records."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from mdsync import logs
from mdsync.api.middleware import request_id_var

TRICKY_PATH = '/api/v1/a"b\\c\u00e9\u2028\x7f'  # quote, backslash, non-ASCII, U+2028, DEL


@pytest.fixture
def configured():
    """`logs.configure` writing to a buffer; the root's handlers and levels restored after."""
    root = logging.getLogger()
    access = logging.getLogger(logs.ACCESS_LOGGER)
    saved = root.handlers[:], root.level, access.level, logging.Formatter.converter
    logs.configure("info", "json")
    handler = root.handlers[0]
    handler.stream = io.StringIO()
    yield handler
    handler.close()
    root.handlers[:], root.level, _, logging.Formatter.converter = saved
    access.setLevel(saved[2])
    logs._json_handler = None


@contextlib.contextmanager
def only(handler, records_allowed: bool):
    """Only `configure`'s handler on the root for a moment (pytest adds its capture handler to
    every test phase); with `records_allowed` False, making a LogRecord fails the test."""
    root = logging.getLogger()
    saved, record_class = root.handlers[:], logging.LogRecord

    def no_record(*args, **kwargs):
        raise AssertionError("a LogRecord was made for the access line")

    root.handlers[:] = [handler]
    if not records_allowed:
        logging.LogRecord = no_record
    try:
        yield
    finally:
        root.handlers[:] = saved
        logging.LogRecord = record_class


def access_line(handler, path: str = TRICKY_PATH, status: int = 201, direct: bool = True) -> str:
    request = make_mocked_request("POST", path)
    token = request_id_var.set("rid-1")
    try:
        with only(handler, records_allowed=not direct):
            logs.AccessLogger(logging.getLogger(logs.ACCESS_LOGGER), "").log(request, web.Response(status=status),
                                                                             0.0123)
    finally:
        request_id_var.reset(token)
    handler.flush()
    lines = handler.stream.getvalue().split("\n")[:-1]  # not splitlines: U+2028 is no line end in JSON text
    assert len(lines) == 1, lines
    return lines[0]


def test_the_direct_access_line_is_the_formatted_record(configured):
    entry = json.loads(access_line(configured))
    assert entry["path"] == TRICKY_PATH and entry["method"] == "POST" and entry["status"] == 201
    assert entry["msg"] == f"POST {TRICKY_PATH} 201" and entry["request_id"] == "rid-1"
    assert entry["duration_ms"] == 12.3 and entry["logger"] == "aiohttp.access" and entry["level"] == "info"
    # the same text the formatter makes of the equivalent record
    record = logging.LogRecord(logs.ACCESS_LOGGER, logging.INFO, __file__, 0, "%s %s %s",
                               ("POST", TRICKY_PATH, 201), None)
    record.method, record.path, record.status, record.duration_ms = "POST", TRICKY_PATH, 201, 12.3
    record.remote, record.request_id = entry["remote"], "rid-1"
    formatted = json.loads(configured.formatter.format(record))
    assert {k: v for k, v in formatted.items() if k != "ts"} == {k: v for k, v in entry.items() if k != "ts"}
    assert list(formatted) == list(entry)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["ts"]), entry["ts"]


def test_a_secret_path_segment_is_hidden_on_the_direct_line_too(configured):
    entry = json.loads(access_line(configured, "/api/v1/share/mds_secret-share-token"))
    assert "secret" not in json.dumps(entry) and entry["path"] == "/api/v1/share/{token}"


def test_another_logging_setup_gets_records(configured):
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record)

    keep = Keep()
    logging.getLogger(logs.ACCESS_LOGGER).addHandler(keep)  # e.g. a test's caplog, an embedding app's handler
    try:
        line = access_line(configured, direct=False)
    finally:
        logging.getLogger(logs.ACCESS_LOGGER).removeHandler(keep)
    assert [r.getMessage() for r in seen] == [f"POST {TRICKY_PATH} 201"]
    assert seen[0].request_id == "rid-1" and seen[0].path == TRICKY_PATH
    assert json.loads(line)["path"] == TRICKY_PATH  # and the JSON handler wrote its line from the record
