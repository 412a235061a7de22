"""A real Redis server for the tests of several nodes: Debian's `redis-server` on 127.0.0.1 and a
free port, nothing saved to disk, stopped by its pid (and dying with the test process).

    redis = RedisServer(workdir).start()
    redis.url                      # "redis://127.0.0.1:PORT/0"
    redis.pause(); redis.resume()  # SIGSTOP / SIGCONT: a Redis that stops answering
    redis.stop()
"""

from __future__ import annotations

import shutil
import signal
import socket
import time
from pathlib import Path

from tests.processes import ChildProcess, ends_with_parent, free_port


def missing_reason() -> str | None:
    """None when a Redis server can be started here, else why not."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (.ci/run installs the Debian package redis-server)"
    return None


class RedisServer(ChildProcess):
    what = "redis-server"

    def __init__(self, workdir: Path):
        super().__init__()
        self.workdir = workdir
        self.port = free_port()
        self.log = workdir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log, "ab")
        self.launch(["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                     "--appendonly", "no", "--dir", str(self.workdir), "--protected-mode", "yes"],
                    {"PATH": "/usr/bin:/bin"}, log, preexec_fn=ends_with_parent(signal.SIGTERM))
        log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited at start:\n{self.log.read_text(errors='replace')[-2000:]}")
            if self.command("PING") == b"+PONG":
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError("redis-server did not start")

    def command(self, *words: str) -> bytes | None:
        """One inline command, its first reply line (None: no answer within a second)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall((" ".join(words) + "\r\n").encode())
                return sock.recv(65536).split(b"\r\n", 1)[0]
        except OSError:
            return None

    def pause(self) -> None:
        """SIGSTOP: Redis keeps its connections open and answers nothing."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def flushall(self) -> None:
        assert self.command("FLUSHALL") == b"+OK"

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
        code = super().stop(timeout)
        shutil.rmtree(self.workdir, ignore_errors=True)
        return code
