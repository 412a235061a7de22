"""Structured logs: one JSON object per line with the request id; never tokens or passwords.

The access log writes the path without its query string (WebSocket URLs carry `?token=`) and
without secret path parameters (a share link's token).

Lines are written in batches (`BufferedHandler`): a write to stderr per line was a fifth of the
cost of a small request (bench/README.md, "REST per-request cost"). A line waits at most
`FLUSH_SECONDS`; warnings and errors are written at once, and everything buffered is written at
exit (logging's shutdown flushes every handler) and when `mdsync serve` stops.

The access line of each request is made without a `LogRecord` when the logging is the one
`configure` set up (JSON lines to one `BufferedHandler`): the request keeps its fields (a tuple)
in the buffer, and the flusher makes them into the very line `JsonFormatter.format` would make of
the record, in its batch, off the request's path. Any other logging setup (a test's, an embedding
application's) gets ordinary records.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from json.encoder import encode_basestring

from aiohttp.abc import AbstractAccessLogger

from mdsync.api.middleware import loggable_path, request_id_var


# json.dumps(..., ensure_ascii=False) builds a new encoder per call; this one is made once
_encode = json.JSONEncoder(ensure_ascii=False).encode
ACCESS_LOGGER = "aiohttp.access"


class JsonFormatter(logging.Formatter):
    _second = (-1, "")  # (whole second, its formatted time): strftime once a second, not per line

    def _timestamp(self, created: float, msecs: float) -> str:
        second = int(created)
        if self._second[0] != second:
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return self._second[1] + f".{int(msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self._timestamp(record.created, record.msecs),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            # the access log captures it on the record (it is written after the request's context)
            "request_id": getattr(record, "request_id", None) or request_id_var.get(),
        }
        for key in ("method", "path", "status", "duration_ms", "remote"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _encode(entry)

    def access_line(self, created: float, request_id: str, method: str, path: str, status: int,
                    duration_ms: float, remote: str | None) -> str:
        """What `format` makes of an access record, without the record: the same keys in the same
        order, the strings escaped by the same encoder. One %-template; the message's escaped
        text is the method's and the path's (escaping works character by character)."""
        method_s, path_s = encode_basestring(method), encode_basestring(path)
        return _ACCESS_TEMPLATE % (self._timestamp(created, (created - int(created)) * 1000), method_s[:-1],
                                   path_s[1:-1], status, encode_basestring(request_id), method_s, path_s, status,
                                   duration_ms, "null" if remote is None else encode_basestring(remote))


_ACCESS_TEMPLATE = ('{"ts": "%s", "level": "info", "logger": "' + ACCESS_LOGGER + '", "msg": %s %s %d", '
                    '"request_id": %s, "method": %s, "path": %s, "status": %d, "duration_ms": %r, "remote": %s}')


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")


FLUSH_SECONDS = 0.05


class BufferedHandler(logging.StreamHandler):
    """A StreamHandler that formats each record at once but writes the lines in batches: from a
    flusher thread at most `FLUSH_SECONDS` after the first buffered line, at once for warnings and
    above, and on `flush()` (logging's shutdown at exit, `mdsync serve` stopping)."""

    def __init__(self, stream=None, flush_seconds: float = FLUSH_SECONDS):
        super().__init__(stream)
        self.flush_seconds = flush_seconds
        # formatted lines, and the fields of access lines (tuples) still to format, in order
        self._lines: list[str | tuple] = []
        self._pending = threading.Event()
        threading.Thread(target=self._flusher, name="log-flusher", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self.emit_line(line, record.levelno)

    def emit_line(self, line: str, level: int = logging.INFO) -> None:
        """Buffer one formatted line (with its terminator)."""
        with self.lock:
            self._lines.append(line)
        if level >= logging.WARNING:
            self.flush()
        elif not self._pending.is_set():  # once per batch: set() takes the event's lock and wakes a thread
            self._pending.set()

    def emit_access(self, fields: tuple) -> None:
        """Buffer an access line by its fields (`JsonFormatter.access_line`'s arguments): it is
        formatted when the batch is written."""
        with self.lock:
            self._lines.append(fields)
        if not self._pending.is_set():
            self._pending.set()

    def flush(self) -> None:
        with self.lock:
            lines, self._lines = self._lines, []
            if lines and self.stream is not None:
                formatter = self.formatter if isinstance(self.formatter, JsonFormatter) else _ACCESS_FORMATTER
                try:
                    self.stream.write("".join(
                        line if line.__class__ is str else formatter.access_line(*line) + self.terminator
                        for line in lines))
                except Exception:  # a closed or broken stderr: nothing better to do with the lines
                    pass
            if self.stream is not None and hasattr(self.stream, "flush"):
                try:
                    self.stream.flush()
                except Exception:
                    pass

    def _flusher(self) -> None:
        while True:  # a daemon thread: ends with the process (whose shutdown flushes what is left)
            self._pending.wait()
            self._pending.clear()
            time.sleep(self.flush_seconds)  # gather the lines of this burst
            self.flush()


# the handler `configure` installed with the JSON format: access lines go to it without records
_json_handler: BufferedHandler | None = None
_ACCESS_FORMATTER = JsonFormatter()  # for access lines buffered before a handler's formatter changed


def configure(level: str = "info", fmt: str = "json") -> None:
    global _json_handler
    handler = BufferedHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    _json_handler = handler if fmt == "json" else None
    logging.Formatter.converter = time.gmtime
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(level.upper())


def _direct_handler(logger: logging.Logger) -> BufferedHandler | None:
    """The handler `configure` installed, when an INFO record of `logger` would reach it and
    nothing else: no handler or filter on the way, the root's only handler, its JSON formatter."""
    handler = _json_handler
    if handler is None or handler.filters or handler.level > logging.INFO \
            or type(handler.formatter) is not JsonFormatter:
        return None
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters or node.disabled:
            return None
        if node.handlers:
            return handler if node is logging.root and node.handlers == [handler] else None
        if not node.propagate:
            return None
        node = node.parent
    return None


class AccessLogger(AbstractAccessLogger):
    @property
    def enabled(self) -> bool:
        # asked once per connection: below info level, aiohttp skips the per-request call
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request, response, time: float) -> None:
        path = loggable_path(request)
        method, status = request.method, response.status
        duration_ms = round(time * 1000, 2)
        handler = _direct_handler(self.logger)
        if handler is not None and self.logger.name == ACCESS_LOGGER:
            # the line `JsonFormatter.format` would make of the record below, made in the batch
            handler.emit_access((_now(), request_id_var.get(), method, path, status, duration_ms, request.remote))
            return
        # the record is made directly: Logger.info would walk the stack for a caller nobody reads
        record = logging.LogRecord(self.logger.name, logging.INFO, __file__, 0, "%s %s %s", (method, path, status),
                                   None, "log")
        record.method, record.path, record.status = method, path, status
        record.duration_ms = duration_ms
        record.remote = request.remote
        record.request_id = request_id_var.get()
        self.logger.handle(record)


_now = time.time
