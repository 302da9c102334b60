"""The single-file bundle works on a host without network: copy one file, run it, connect.

`scripts/bundle` builds dist/ipe-<version>-<python>-<platform>.pyz (reused when its sources
have not changed, so only the first run needs PyPI). The test copies it into a temporary
directory outside the repository and, inside a network namespace with only loopback
(`unshare -n`), runs it with the interpreter below this venv in isolated mode (`-I`: none of
the venv's or the user's packages), checks `--version` and `--check-config`, serves, and has
pusher-js connect, subscribe and receive an event triggered with the Node server SDK -
through a redis-server in the same namespace when one is installed (scripts/test installs it),
so that the Redis engine and its compiled parser are exercised from the bundle too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest
import yaml
from support import (
    APP_ID,
    KEY,
    ROOT,
    SECRET,
    SIGNATURE,
    config_with,
    free_port,
    wait_until,
)

from ipe import __version__

pytestmark = [pytest.mark.bundle, pytest.mark.timeout(900)]

E2E_MODULES = ROOT / "tests" / "e2e" / "node_modules"
DRIVER = r"""
set -u
ip link set lo up
py="$1"; pyz="$2"; port="$3"
if "$py" -I -c 'import socket; socket.create_connection(("1.1.1.1", 443), timeout=2)' 2>/dev/null
then echo "network: reachable"; else echo "network: none"; fi
"$py" -I "$pyz" --version
"$py" -I "$pyz" --config config.yml --check-config || echo "check-config failed: $?"
if [ -n "$8" ]; then  # the Redis engine too: redis-py and its compiled parser from the bundle
  "$8" --port "$9" --bind 127.0.0.1 --save "" --appendonly no > redis.log 2>&1 &
  redis=$!
  export REDIS_URL="redis://127.0.0.1:$9"
fi
"$py" -I "$pyz" --config config.yml --port "$port" > server.log 2>&1 &
pid=$!
"$py" -I -c '
import sys, time, urllib.request
deadline = time.monotonic() + 60
while True:
    try:  # /ready: with Redis, only once the broker is subscribed
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/ready", timeout=1)
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("server did not answer /ready")
        time.sleep(0.1)
' "$port"
node "$4" "$port" "$5" "$6" "$7"
echo "client exit: $?"
kill -TERM "$pid"
wait "$pid"
echo "server exit: $?"
[ -n "$8" ] && kill -TERM "$redis" && wait "$redis"
"""


def _base_python() -> str:
    """The interpreter this venv was made from: a plain Python without ipe's packages."""
    return getattr(sys, "_base_executable", None) or sys.executable


@pytest.fixture(scope="module")
def bundle() -> Path:
    result = subprocess.run(
        [str(ROOT / "scripts" / "bundle")], cwd=ROOT, capture_output=True, text=True, timeout=880
    )
    assert result.returncode == 0, result.stdout + result.stderr
    built = sorted((ROOT / "dist").glob(f"ipe-{__version__}-*.pyz"))
    assert built, result.stdout + result.stderr
    wheelhouse = built[-1].with_name(built[-1].stem + "-wheelhouse.tar.gz")
    assert wheelhouse.exists()
    return built[-1]


def test_the_bundle_holds_every_module_of_ipe(bundle: Path) -> None:
    with zipfile.ZipFile(bundle) as pyz:
        packed = {name.split("site-packages/", 1)[1] for name in pyz.namelist() if "/ipe/" in name}
    sources = {str(p.relative_to(ROOT)) for p in (ROOT / "ipe").rglob("*.py")}
    assert sources <= packed, sources - packed


def test_the_bundle_serves_pusher_js_without_network(bundle: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0 or subprocess.run(["unshare", "-n", "true"]).returncode != 0:
        pytest.skip("needs `unshare -n` (root)")
    if shutil.which("node") is None or not E2E_MODULES.exists():
        pytest.skip("needs node and tests/e2e/node_modules (scripts/test installs them)")
    host = tmp_path / "host"
    host.mkdir()
    pyz = host / bundle.name
    shutil.copy(bundle, pyz)
    (host / "config.yml").write_text(yaml.safe_dump(config_with()))
    client = host / "offline_client.js"
    shutil.copy(Path(__file__).with_name("offline_client.js"), client)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(host),
        "SHIV_ROOT": str(host / "shiv"),  # where the bundle unpacks its compiled parts
        "NODE_PATH": str(E2E_MODULES),
    }
    redis_server = shutil.which("redis-server") or ""
    args = [_base_python(), str(pyz), str(free_port()), str(client), KEY, SECRET, APP_ID]
    args += [redis_server, str(free_port())]
    result = subprocess.run(
        ["unshare", "-n", "bash", "-c", DRIVER, "driver", *args],
        cwd=host,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    out = result.stdout
    log = (host / "server.log").read_text() if (host / "server.log").exists() else ""
    report = f"{out}\n{result.stderr}\n--- server.log\n{log}"
    assert "network: none" in out, report
    assert f"ipe {__version__}" in out, report
    assert "config.yml: OK" in out, report
    assert re.search(r"^connected \d+\.\d+$", out, re.M), report
    assert "subscribed\nreceived\nclient exit: 0" in out, report
    assert "server exit: 0" in out, report
    assert "POST /apps/1001/events 200" in log, report
    if redis_server:
        assert "engine: Redis at redis://127.0.0.1:" in log, report
    assert "Traceback" not in log, report
    assert SECRET not in log and not SIGNATURE.search(log), report


def _unit_lines() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in (ROOT / "deploy" / "ipe.service").read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_the_units_commands_serve_json_logs_and_stop_in_time(bundle: Path, tmp_path: Path):
    """deploy/ipe.service's ExecStartPre and ExecStart, with its environment, as systemd would
    run them (paths moved into a temporary directory; no systemd here to run the unit)."""
    unit = _unit_lines()
    pyz = tmp_path / "ipe.pyz"
    shutil.copy(bundle, pyz)
    port = free_port()
    config = config_with(host=f"127.0.0.1:{port}")
    (tmp_path / "config.yml").write_text(yaml.safe_dump(config))

    def command(line: str) -> list[str]:
        line = line.replace("/opt/ipe/ipe.pyz", str(pyz))
        line = line.replace("/etc/ipe/config.yml", str(tmp_path / "config.yml"))
        return [_base_python() if word == "/usr/bin/python3" else word for word in line.split()]

    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    for assignment in unit["Environment"]:
        name, _, value = assignment.partition("=")
        env[name] = value
    env["SHIV_ROOT"] = str(tmp_path / "cache")  # CacheDirectory= in the unit
    assert env.get("IPE_LOG_FORMAT") == "json"

    check = subprocess.run(
        command(unit["ExecStartPre"][0]), env=env, capture_output=True, text=True, timeout=120
    )
    assert check.returncode == 0, check.stdout + check.stderr
    log_path = tmp_path / "journal.log"
    with open(log_path, "wb") as journal:
        proc = subprocess.Popen(
            command(unit["ExecStart"][0]), env=env, stdout=journal, stderr=subprocess.STDOUT
        )
    try:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert proc.poll() is None, log_path.read_text()
            try:
                with urllib.request.urlopen(url + "/ready", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_until(ready, 60, 0.1, "the unit's ExecStart to serve")
        assert unit["KillSignal"] == ["SIGTERM"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(int(unit["TimeoutStopSec"][0])) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert any(line["message"].startswith("serving ") for line in lines), lines
    assert any(line.get("path") == "/ready" and line.get("status") == 200 for line in lines)
    assert lines[-1]["message"] == "stopped", lines[-1]
