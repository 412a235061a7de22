"""Top frames of a py-spy profile in collapsed ("raw") format: self time and inclusive time per
function, as shares of all samples.

    python bench/collab/top_frames.py profile.txt [--top 25]
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

# "function (path/to/file.py:123)" -> "function (file.py)"
# a thread waiting (for a queue, a lock, the poller): py-spy --native cannot tell it is idle
IDLE = ("PyThread_acquire_lock_timed", "epoll_pwait", "epoll_wait", "clock_nanosleep", "select (",
        "pthread_cond_timedwait", "pthread_cond_wait", "sem_wait", "sem_timedwait")
_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^():]*?)(?::\d+)?\)$")


def short(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "mdsync/", "lib/python3"):
        if marker in path:
            path = path[path.index(marker):]
            break
    return f"{m.group('fn')} ({path})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    own: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    total = 0
    for line in Path(args.profile).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        if any(marker in stack for marker in IDLE):
            continue
        total += n
        frames = [short(f) for f in stack.split(";")]
        if frames and frames[0].startswith("process "):
            frames = frames[1:]
        if frames and frames[0].startswith("thread "):
            frames = frames[1:]
        if not frames:
            continue
        own[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    print(f"{total} busy samples (waiting threads left out)")
    print("self %  | function")
    for f, n in own.most_common(args.top):
        print(f"{100 * n / total:6.1f} | {f}")
    print("incl %  | function")
    for f, n in inclusive.most_common(args.top):
        print(f"{100 * n / total:6.1f} | {f}")


if __name__ == "__main__":
    main()
