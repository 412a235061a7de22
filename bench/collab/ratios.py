"""mdsync / anchor ratios from yload JSON lines measured in one run, written into bench/README.md
under "## Collaboration (bench/collab)" (the section is replaced, the rest of the file kept).

    python bench/collab/ratios.py --anchors results/anchors-X.jsonl ... --mdsync results/mdsync-Y.jsonl ... \
        --readme bench/README.md

A ratio below 1 means mdsync is lower (better for latency, CPU, memory, time); the verdict column
says whether mdsync matches or beats Hocuspocus on that row (within 10 %, as runs vary that much).
"""

from __future__ import annotations

import argparse
import json
import statistics
import re
from pathlib import Path

HEADING = "## Collaboration (bench/collab)"
ANCHORS = ("hocuspocus", "hocuspocus-sqlite", "ywebsocket", "pycrdt")

# (row name, function of a label's scenario rows → number, lower is better)
ROWS = [
    ("S1 fan-out latency p50 ms", lambda r: r["s1"]["latency_ms"]["p50"]),
    ("S1 fan-out latency p99 ms", lambda r: r["s1"]["latency_ms"]["p99"]),
    ("S1 server CPU % (edit phase)", lambda r: r["s1"]["server"]["cpu_edit_pct"]),
    ("S1 server CPU µs per delivered update",
     lambda r: 1e6 * r["s1"]["server"]["cpu_edit_s"] / r["s1"]["deliveries_observed"]),
    ("S2 connect+sync p99 ms", lambda r: r["s2"]["connect"]["sync_ms"]["p99"]),
    ("S2 server CPU s in the edit phase (3000 edits)", lambda r: r["s2"]["server"]["cpu_edit_s"]),
    ("S2 edit propagation p99 ms", lambda r: r["s2"]["latency_ms"]["p99"]),
    ("S2 server RSS per connection KB", lambda r: r["s2"]["server"]["rss_per_client_kb"]),
    ("S2 server CPU s for 1000 connects", lambda r: r["s2"]["server"]["cpu_connect_s"]),
    ("S3 fresh sync of the 1 MB doc p50 ms", lambda r: r["s3"]["fresh_sync_ms"]["p50"]),
    ("S3 ingest of 10k edits s", lambda r: r["s3"]["fill_ingest_s"]),
]


def load(paths: list[str]) -> dict[str, list[dict[str, dict]]]:
    """label -> one {scenario: row} per file (a round)."""
    by_label: dict[str, list[dict[str, dict]]] = {}
    for path in paths:
        rounds: dict[str, dict[str, dict]] = {}
        for line in Path(path).read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rounds.setdefault(row["label"], {})[row["scenario"]] = row
        for label, rows in rounds.items():
            by_label.setdefault(label, []).append(rows)
    return by_label


def value(fn, rounds) -> float | None:
    """The median over the rounds that have the number."""
    values = []
    for rows in rounds:
        try:
            values.append(float(fn(rows)))
        except (KeyError, TypeError, ValueError):
            pass
    return statistics.median(values) if values else None


def load_average() -> str:
    try:
        return " / ".join(Path("/proc/loadavg").read_text().split()[:3]) + " (1 / 5 / 15 min)"
    except OSError:
        return "unknown"


def section(anchors: dict, mdsync_rows: list, anchors_files: list[str], mdsync_files: list[str]) -> str:
    present = [a for a in ANCHORS if a in anchors]
    out = [HEADING, "",
           "`bench/collab/run.sh`: the shared scenarios (`../shared/bench`, S1 1 doc x 50 clients, S2 500 docs x 2",
           "clients, S3 1 MB doc) against the anchors and against `mdsync serve` (auth on every socket,",
           "every update persisted to the SQLite update log), alternating in one run on this machine;",
           f"medians over {len(mdsync_rows)} round(s). Raw JSON lines (in the work copy's `results/`):",
           ", ".join(f"`{Path(f).name}`" for f in anchors_files + mdsync_files) + ".",
           "Ratio = mdsync / anchor (below 1: mdsync lower, i.e. better on every row here).", "",
           "| metric | mdsync | " + " | ".join(present) + " | ratio vs " + " | ratio vs ".join(present)
           + " | ratio vs best peer | vs Hocuspocus |",
           "|---|---:|" + "---:|" * (2 * len(present) + 1) + "---|"]
    for name, fn in ROWS:
        mine = value(fn, mdsync_rows)
        theirs = [value(fn, anchors[a]) for a in present]
        ratios = [f"{mine / t:.2f}" if mine is not None and t else "–" for t in theirs]
        best = min((t for t in theirs if t), default=None)
        ratios.append(f"**{mine / best:.2f}**" if mine is not None and best else "–")
        hp = value(fn, anchors.get("hocuspocus", []))
        verdict = "–" if mine is None or hp is None else ("beats" if mine < hp * 0.9 else "matches" if mine <= hp * 1.1 else "**behind**")
        fmt = lambda x: "–" if x is None else f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}"  # noqa: E731
        out.append(f"| {name} | {fmt(mine)} | " + " | ".join(fmt(t) for t in theirs) + " | " + " | ".join(ratios) + f" | {verdict} |")
    ok = {s: all(r.get(s, {}).get("ok") for r in mdsync_rows) for s in ("s1", "s2", "s3")}
    out += ["", "mdsync scenarios ok in every round (no errors, converged): "
            + ", ".join(f"{s} {'yes' if v else 'NO'}" for s, v in ok.items()), "",
            "Caveats: the load client, the servers and whatever else runs on the machine share its cores",
            f"(load average at the end of this run: {load_average()}); single rows move 10-30 % between rounds",
            "(S3 more, see `../shared/bench/README.md`), hence alternating rounds and medians. The anchors run",
            "without authentication and (except hocuspocus-sqlite) without persistence; mdsync with both.", ""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--anchors", required=True, nargs="+")
    ap.add_argument("--mdsync", required=True, nargs="+")
    ap.add_argument("--readme", required=True)
    args = ap.parse_args()
    anchors = load(args.anchors)
    mine = load(args.mdsync)
    label = next(iter(mine))
    text = section(anchors, mine[label], args.anchors, args.mdsync)
    readme = Path(args.readme)
    current = readme.read_text() if readme.exists() else "# mdsync benchmarks\n"
    pattern = re.compile(re.escape(HEADING) + r".*?(?=\n## |\Z)", re.S)
    if pattern.search(current):
        current = pattern.sub(lambda _m: text.rstrip("\n") + "\n", current)
    else:
        current = current.rstrip("\n") + "\n\n" + text
    readme.write_text(current.rstrip("\n") + "\n")
    print(text)


if __name__ == "__main__":
    main()
