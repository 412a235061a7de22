"""Structured logs: one JSON object per line with the request id; never tokens or passwords.

The access log writes the path without its query string (WebSocket URLs carry `?token=`) and
without secret path parameters (a share link's token).
"""

from __future__ import annotations

import json
import logging
import sys

from aiohttp.abc import AbstractAccessLogger

from mdsync.api.middleware import loggable_path, request_id_var


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": request_id_var.get(),
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


def configure(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    import time
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
        path = loggable_path(request)
        self.logger.info(
            "%s %s %s", request.method, path, response.status,
            extra={"method": request.method, "path": path, "status": response.status,
                   "duration_ms": round(time * 1000, 2), "remote": request.remote},
        )
