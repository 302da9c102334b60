"""The debug console in a real headless Chromium: log in, watch, send, log out; one console
showing the events of two nodes that share a real redis-server; and an app added by hand on the
Manage apps page (`app_manager: driver: redis`), used by pusher-js, then disabled.

Debian's `chromium` (scripts/test installs it) is driven by puppeteer-core from Node
(tests/e2e/console_browser.js); pusher-js and the Node server SDK play the app.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cluster.cluster_support import FIXTURES, redis_config
from conftest import APP_ID, KEY, SECRET, IpeServer, config_with

make_redis, redis_server, nodes = FIXTURES

E2E_DIR = Path(__file__).resolve().parent
USER, PASSWORD = "admin", "correct horse battery staple"
CONSOLE = {
    "enabled": True,
    "secret_key": "${IPE_SECRET_KEY}",
    "users": [{"username": USER, "password": "${IPE_CONSOLE_PASSWORD}"}],
}
ENV = {"IPE_SECRET_KEY": "e2e-console-secret-key-0123456789", "IPE_CONSOLE_PASSWORD": PASSWORD}


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None or not (E2E_DIR / "node_modules" / "puppeteer-core").is_dir():
        pytest.fail("chromium and tests/e2e/node_modules are required: run scripts/test", False)
    return path


def run_browser(servers: list[IpeServer], mode: str) -> dict[str, Any]:
    """Run console_browser.js; returns its observations, fails with its output otherwise."""
    env = {
        **os.environ,
        "CONSOLE_URLS": ",".join(s.url for s in servers),
        "CONSOLE_USER": USER,
        "CONSOLE_PASSWORD": PASSWORD,
        "APP_ID": APP_ID,
        "APP_KEY": KEY,
        "APP_SECRET": SECRET,
        "CHROMIUM": chromium(),
        "CONSOLE_MODE": mode,
    }
    proc = subprocess.run(
        ["node", str(E2E_DIR / "console_browser.js")],
        cwd=E2E_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    seen: dict[str, Any] = {}
    result = None
    for line in proc.stdout.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if "observe" in item:
            seen[item["observe"]] = item["value"]
        elif "result" in item:
            result = item
    logs = "\n".join(s.log()[-3000:] for s in servers)
    assert result == {"result": "pass"}, f"{result}\n{proc.stdout}\n{proc.stderr[-3000:]}\n{logs}"
    return seen


def test_console_in_chromium(make_server):
    server = make_server(config_with(console=CONSOLE), env=ENV)
    seen = run_browser([server], "single")
    assert seen["redirected_to_login"] == "/console/login"
    assert seen["after_login"] == "/console/"
    assert seen["connections_after"] == seen["connections_before"] + 1
    assert seen["sdk_event_in_log_ms"] <= 1000
    assert seen["pusher_js_received"] == {"hello": "browser"}
    assert seen["members"] == [["ada", '{"name":"Ada Lovelace"}']]
    assert seen["secret_in_page"] is False
    assert seen["after_logout"] == "/console/login"
    assert seen["page_after_logout"] == "/console/login"
    assert seen["data_after_logout"] == 401
    assert seen["page_errors"] == []


def test_one_console_shows_the_events_of_two_nodes(redis_server, make_server):
    config = redis_config(redis_server.url)
    config["console"] = CONSOLE
    a = make_server(config, name="node-a", env=ENV)
    b = make_server(config, name="node-b", env=ENV)
    seen = run_browser([a, b], "cluster")
    assert len(seen["api_message_nodes"]) == 2, seen
    assert len(seen["connected_nodes"]) == 2, seen
    assert len(seen["overview_nodes"]) >= 2, seen
    assert seen["overview_connections"] == 2
    assert seen["page_errors"] == []


def test_an_app_added_in_the_browser_serves_pusher_js(redis_server, make_server):
    config = redis_config(redis_server.url)
    config["console"] = CONSOLE
    config["apps"] = []
    config["app_manager"] = {"driver": "redis"}
    server = make_server(config, env=ENV)
    seen = run_browser([server], "apps")
    assert seen["after_login"] == "/console/"
    assert seen["secret_length"] == 40
    assert seen["pusher_js_received"] == {"n": 1}
    assert seen["secret_hints"].startswith("…") and len(seen["secret_hints"]) == 5
    assert seen["secret_in_page"] is False
    assert seen["close_code"] == 4003
    assert seen["state_after_disable"] == "disabled"
    assert seen["page_errors"] == []
