"""The real npm clients (yjs, y-websocket's WebsocketProvider, @hocuspocus/provider) driven from
Node by the interop tests: the scripts in tests/interop, run against a real server.

    pytestmark = needs_node                       # skip here / fail in CI without node or `npm ci`
    result = await run_node("scenario.mjs", "converge", {"url": ..., "doc": ...}, timeout=90)

Each script takes a scenario name and a JSON config, prints one JSON object as the last line of its
stdout (`{"error": ...}` when the scenario failed) and stops itself at `config.timeoutMs`
(tests/interop/harness.mjs); `run_node` also kills it at `timeout`.

`Fleet` keeps many clients of tests/interop/fleet.mjs alive in one Node process, spread over several
servers, and drives them command by command (type, move, state) while the test acts on the servers.
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


class Fleet:
    """Many npm clients in one Node process (tests/interop/fleet.mjs), spread over several servers
    and driven one command at a time while the test does things to the servers:

        async with Fleet([node.base for node in cluster.nodes]) as fleet:
            await fleet.ask("open", clients=[{"id": "c0", "kind": "hp", "node": 0, "doc": d, "token": t}])
            await fleet.ask("type", interval=300)
            state = await fleet.ask("state")
    """

    def __init__(self, bases: list[str]):
        self.bases = bases
        self.proc: asyncio.subprocess.Process | None = None
        self.asked = 0

    async def __aenter__(self) -> Fleet:
        config = json.dumps({"nodes": self.bases, "timeoutMs": 900_000})
        self.proc = await asyncio.create_subprocess_exec(
            "node", str(INTEROP / "fleet.mjs"), "fleet", config, cwd=INTEROP, limit=64 << 20,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert (await self._line(30)).get("ready"), "fleet.mjs did not start"
        return self

    async def _line(self, timeout: float) -> dict:
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except TimeoutError:
            raise AssertionError(f"fleet.mjs said nothing in {timeout} s") from None
        if not line:
            err = await self.proc.stderr.read()
            raise AssertionError(f"fleet.mjs ended (exit {await self.proc.wait()}): {err.decode()[-3000:]}")
        return json.loads(line)

    async def ask(self, cmd: str, timeout: float = 60.0, **args) -> dict:
        """Send one command, wait for its answer (AssertionError on an error or a timeout)."""
        self.asked += 1
        self.proc.stdin.write((json.dumps({"re": self.asked, "cmd": cmd, **args}) + "\n").encode())
        await self.proc.stdin.drain()
        while True:
            answer = await self._line(timeout)
            if answer.get("re") == self.asked:
                break
        assert "error" not in answer, f"fleet {cmd}: {answer['error'][-3000:]}"
        return answer

    async def __aexit__(self, *exc) -> None:
        if self.proc.returncode is None:
            try:
                await self.ask("close", timeout=10)
                await asyncio.wait_for(self.proc.wait(), 10)
            except (AssertionError, TimeoutError, ConnectionError):
                pass
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
