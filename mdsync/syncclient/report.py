"""What a pass tells its user: one line per action (`↓ a.md`, `↑ b.md merged`, `✗ c.md: 413 too
large`), or with --json one object per line ({"action", "path", "detail"}); failures are counted
for the exit code."""

from __future__ import annotations

import json
import sys

SYMBOLS = {"pull": "↓", "push": "↑", "merge": "↑", "create": "+", "delete": "−", "trash": "−", "move": "→",
           "rename": "→", "restore": "↺", "skip": "✗", "error": "✗", "keep": "!"}


class Report:
    def __init__(self, quiet: bool = False, as_json: bool = False, dry_run: bool = False):
        self.quiet = quiet
        self.as_json = as_json
        self.dry_run = dry_run
        self.failed: list[str] = []
        self.actions = 0

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
        line = f"{SYMBOLS.get(action, '?')} {path}"
        if action == "merge":
            line += " merged"
        if detail:
            line += f": {detail}" if failure else f" ({detail})"
        if self.dry_run and not failure:
            line = "would " + line
        print(line, file=sys.stderr if failure else sys.stdout, flush=True)
