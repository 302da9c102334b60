"""Driver of the Node scenarios (tests/e2e/scenarios/*.js) against a real ipe process.

`run_scenario(server, "public", steps={...})` starts `node run.js public` once, answers the
scenario's steps (e.g. a trigger with the Python SDK), and returns what it observed; any failure
(a scenario timeout, a non-zero exit, no result line) fails the test with node's output and the
tail of the ipe log.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, NoReturn

import pytest
from support import IpeServer, running

E2E_DIR = Path(__file__).resolve().parent
# Pinned in tests/e2e/package.json; it is also the master key docs/protocol-notes.md's vectors use.
MASTER_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="

Step = Callable[[Any], Any]


def shared_server(
    workdir: Path, config: dict[str, Any] | None = None
) -> AbstractContextManager[IpeServer]:
    """One ipe process for a whole test module; fails if its log shows a Traceback."""
    return running(workdir, config, "ipe-e2e")


class Observations(dict[str, Any]):
    """What a scenario observed, by name, plus its whole output for messages."""

    def __init__(self, values: dict[str, Any], output: list[str]) -> None:
        super().__init__(values)
        self.output = output

    def __missing__(self, name: str) -> Any:
        raise AssertionError(f"scenario made no observation {name!r}:\n" + "\n".join(self.output))


def run_scenario(
    server: IpeServer,
    name: str,
    steps: dict[str, Step] | None = None,
    wait_ms: int = 5000,
    deadline: float = 20.0,
    env: dict[str, str] | None = None,
) -> Observations:
    """Run tests/e2e/scenarios/{name}.js against `server`; returns its observations.

    `steps` answers the scenario's `t.step(name, data)` calls: the handler gets `data` and may
    return a JSON value for the scenario. `wait_ms` bounds each wait inside the scenario and
    `deadline` (seconds) the whole of it.
    """
    node = shutil.which("node")
    if node is None or not (E2E_DIR / "node_modules" / "pusher-js").is_dir():
        pytest.fail("node and tests/e2e/node_modules are required: run scripts/test", False)
    proc = subprocess.Popen(
        [node, str(E2E_DIR / "run.js"), name],
        cwd=E2E_DIR,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "IPE_PORT": str(server.port),
            "IPE_MASTER_KEY": MASTER_KEY,
            "E2E_WAIT_MS": str(wait_ms),
            "E2E_DEADLINE_MS": str(int(deadline * 1000)),
            **(env or {}),
        },
    )
    run = _Run(name, server)
    lines: queue.Queue[str | None] = queue.Queue()
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, lines.put), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, run.stderr.append), daemon=True),
    ]
    for pump in pumps:
        pump.start()
    observed: dict[str, Any] = {}
    result: dict[str, Any] | None = None
    # A margin over the scenario's own deadline, so that its own reason is what gets reported.
    limit = time.monotonic() + deadline + 10
    try:
        while result is None:
            try:
                line = lines.get(timeout=max(0.0, limit - time.monotonic()))
            except queue.Empty:
                run.fail(f"no result within {deadline + 10:.0f}s")
            if line is None:
                break
            run.output.append(line.rstrip("\n"))
            message = _parse(line)
            if "observe" in message:
                observed[message["observe"]] = message["value"]
            elif "step" in message:
                handler = (steps or {}).get(message["step"])
                if handler is None:
                    run.fail(f"no handler for step {message['step']!r}")
                reply = handler(message["data"])
                assert proc.stdin is not None
                proc.stdin.write(json.dumps(reply if reply is not None else {}) + "\n")
                proc.stdin.flush()
            elif "result" in message:
                result = message
        code = proc.wait(timeout=max(1.0, limit - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pump in pumps:  # they end at EOF, which the exit above guarantees
            pump.join(5)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            try:
                if stream is not None:
                    stream.close()
            except OSError:  # stdin of a process that is gone: nothing left to flush
                pass
    if result is None:
        run.fail(f"node exited with {code} before a result line")
    if result["result"] != "pass" or code != 0:
        run.fail(result.get("reason", f"exit status {code}"))
    return Observations(observed, run.output)


class _Run:
    """The output of one scenario run, for the failure message."""

    def __init__(self, name: str, server: IpeServer) -> None:
        self.name = name
        self.server = server
        self.output: list[str] = []
        self.stderr: list[str | None] = []

    def fail(self, reason: str) -> NoReturn:
        log = "\n".join(self.server.log().splitlines()[-40:])
        stderr = "".join(line for line in self.stderr if line is not None)
        stdout = "\n".join(self.output)
        pytest.fail(
            f"scenario {self.name} failed: {reason}\n--- node stdout ---\n{stdout}\n"
            f"--- node stderr ---\n{stderr}--- ipe log (tail) ---\n{log}",
            pytrace=False,
        )


def _pump(stream: Any, put: Callable[[Any], None]) -> None:
    for line in stream:
        put(line)
    put(None)


def _parse(line: str) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except ValueError:
        return {}
    return message if isinstance(message, dict) else {}
