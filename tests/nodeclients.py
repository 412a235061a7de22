"""The real npm clients (yjs, y-websocket's WebsocketProvider, @hocuspocus/provider) driven from
Node by the interop tests: the scripts in tests/interop, run against a real server.

    pytestmark = needs_node                       # skip here / fail in CI without node or `npm ci`
    result = await run_node("scenario.mjs", "converge", {"url": ..., "doc": ...}, timeout=90)

Each script takes a scenario name and a JSON config, prints one JSON object as the last line of its
stdout (`{"error": ...}` when the scenario failed) and stops itself at `config.timeoutMs`
(tests/interop/harness.mjs); `run_node` also kills it at `timeout`.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

from tests import prerequisites

INTEROP = Path(__file__).resolve().parent / "interop"


def why_missing() -> str | None:
    """Why the npm clients cannot run on this machine, or None when they can."""
    if shutil.which("node") is None:
        return "node is not installed (the interop tests run the real npm clients)"
    wanted = json.loads((INTEROP / "package.json").read_text())["dependencies"]
    absent = [name for name in wanted if not (INTEROP / "node_modules" / name / "package.json").is_file()]
    if absent:
        return f"npm packages missing in tests/interop ({', '.join(absent)}): run `npm ci` there (.ci/run does it)"
    return None


needs_node = prerequisites.requires(why_missing())


async def run_node(script: str, scenario: str, config: dict, timeout: float = 60.0) -> dict:
    """Run tests/interop/`script` on `scenario` with `config`; its JSON result. Fails the test when
    the script overruns `timeout` seconds, prints nothing, or reports an error."""
    config = {"timeoutMs": int(timeout * 1000) - 2000, **config}  # the script gives up first, with its JSON
    proc = await asyncio.create_subprocess_exec(
        "node", str(INTEROP / script), scenario, json.dumps(config), cwd=INTEROP,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"node {script} {scenario} did not finish in {timeout} s") from None
    lines = out.decode().strip().splitlines()
    assert lines, f"node {script} {scenario} printed nothing (exit {proc.returncode}): {err.decode()[-2000:]}"
    result = json.loads(lines[-1])
    assert "error" not in result, f"{script} {scenario}: {lines[-1][-4000:]} {err.decode()[-2000:]}"
    return result
