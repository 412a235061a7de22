"""What a pass tells its user: one line per action (`↓ a.md`, `↑ b.md merged`, `✗ c.md: 413 too
large`), or with --json one object per line ({"action", "path", "detail"}); failures are counted
for the exit code. On a terminal (and without -q or --json) the initial pull shows a progress
bar on stderr instead of a line per document: documents, MB and rate (`bar_line`). A wait for a
busy server is a line on stderr (`notice`: `… server busy (503), retrying in 5 s`)."""

from __future__ import annotations

import json
import sys
import time

SYMBOLS = {"pull": "↓", "push": "↑", "merge": "↑", "create": "+", "delete": "−", "trash": "−", "move": "→",
           "rename": "→", "restore": "↺", "skip": "✗", "error": "✗", "keep": "!"}
BAR_WIDTH = 24
BAR_EVERY = 0.1  # seconds between two redraws of the bar


def bar_line(done: int, total: int, nbytes: int, elapsed: float, width: int = BAR_WIDTH) -> str:
    """`[#########---------------]  120/300 documents · 1.2 MB · 45 documents/s`"""
    filled = width if total <= 0 else min(width, width * done // total)
    rate = done / elapsed if elapsed > 0 else 0.0
    return (f"[{'#' * filled}{'-' * (width - filled)}] {done:>{len(str(total))}}/{total} documents"
            f" · {nbytes / 1e6:.1f} MB · {rate:.0f} documents/s")


class Report:
    def __init__(self, quiet: bool = False, as_json: bool = False, dry_run: bool = False, progress: bool = False):
        """`progress`: draw the initial pull's bar (the caller says whether stderr is a terminal;
        never with `quiet` or `as_json`)."""
        self.quiet = quiet
        self.as_json = as_json
        self.dry_run = dry_run
        self.progress = progress and not quiet and not as_json
        self.failed: list[str] = []
        self.actions = 0
        self.bar: list | None = None  # [done, total, bytes, started, last drawn] while a bar is shown

    def __call__(self, action: str, path: str, detail: str = "") -> None:
        failure = action in ("error", "skip", "keep")
        if failure:
            self.failed.append(path)
        else:
            self.actions += 1
        if self.as_json:
            record = {"action": action, "path": path, "detail": detail or None}
            if self.dry_run:
                record["dry_run"] = True
            print(json.dumps(record, ensure_ascii=False), flush=True)
            return
        if self.quiet and not failure:
            return
        if self.bar is not None and action == "pull":
            return  # the bar counts it
        line = f"{SYMBOLS.get(action, '?')} {path}"
        if action == "merge":
            line += " merged"
        if detail:
            line += f": {detail}" if failure else f" ({detail})"
        if self.dry_run and not failure:
            line = "would " + line
        if self.bar is not None:
            sys.stderr.write("\r\033[K")  # the line goes above the bar, which is drawn again
        print(line, file=sys.stderr if failure else sys.stdout, flush=True)
        if self.bar is not None:
            self.draw(force=True)

    def notice(self, text: str) -> None:
        """What the pass is waiting for (a busy server): on stderr, neither an action nor a
        failure (stdout stays one line or JSON object per action); not with -q."""
        if self.quiet:
            return
        if self.bar is not None:
            sys.stderr.write("\r\033[K")
        print(f"… {text}", file=sys.stderr, flush=True)
        if self.bar is not None:
            self.draw(force=True)

    # -- the initial pull's bar
    def start_bar(self, total: int) -> None:
        if self.progress and total > 0:
            now = time.monotonic()
            self.bar = [0, total, 0, now, 0.0]
            self.draw(force=True)

    def advance(self, nbytes: int) -> None:
        if self.bar is not None:
            self.bar[0] += 1
            self.bar[2] += nbytes
            self.draw()

    def end_bar(self) -> None:
        if self.bar is not None:
            self.draw(force=True)
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.bar = None

    def draw(self, force: bool = False) -> None:
        done, total, nbytes, started, last = self.bar
        now = time.monotonic()
        if not force and now - last < BAR_EVERY and done < total:
            return
        self.bar[4] = now
        sys.stderr.write("\r" + bar_line(done, total, nbytes, now - started))
        sys.stderr.flush()
