"""Structured logs: one JSON object per line with the request id; never tokens or passwords.

The access log writes the path without its query string (WebSocket URLs carry `?token=`) and
without secret path parameters (a share link's token).

Lines are written in batches (`BufferedHandler`): a write to stderr per line was a fifth of the
cost of a small request (bench/README.md, "REST per-request cost"). A line waits at most
`FLUSH_SECONDS`; warnings and errors are written at once, and everything buffered is written at
exit (logging's shutdown flushes every handler) and when `mdsync serve` stops.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time

from aiohttp.abc import AbstractAccessLogger

from mdsync.api.middleware import loggable_path, request_id_var


class JsonFormatter(logging.Formatter):
    _second = (-1, "")  # (whole second, its formatted time): strftime once a second, not per line

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if self._second[0] != second:
            self._second = (second, self.formatTime(record, "%Y-%m-%dT%H:%M:%S"))
        entry = {
            "ts": self._second[1] + f".{int(record.msecs):03d}Z",
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
        return json.dumps(entry, ensure_ascii=False)


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
        self._lines: list[str] = []
        self._pending = threading.Event()
        threading.Thread(target=self._flusher, name="log-flusher", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        with self.lock:
            self._lines.append(line)
        if record.levelno >= logging.WARNING:
            self.flush()
        else:
            self._pending.set()

    def flush(self) -> None:
        with self.lock:
            lines, self._lines = self._lines, []
            if lines and self.stream is not None:
                try:
                    self.stream.write("".join(lines))
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


def configure(level: str = "info", fmt: str = "json") -> None:
    handler = BufferedHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.Formatter.converter = time.gmtime
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(level.upper())


class AccessLogger(AbstractAccessLogger):
    @property
    def enabled(self) -> bool:
        # asked once per connection: below info level, aiohttp skips the per-request call
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request, response, time: float) -> None:
        # the record is made directly: Logger.info would walk the stack for a caller nobody reads
        path = loggable_path(request)
        method, status = request.method, response.status
        record = logging.LogRecord(self.logger.name, logging.INFO, __file__, 0, "%s %s %s", (method, path, status),
                                   None, "log")
        record.method, record.path, record.status = method, path, status
        record.duration_ms = round(time * 1000, 2)
        record.remote = request.remote
        record.request_id = request_id_var.get()
        self.logger.handle(record)
