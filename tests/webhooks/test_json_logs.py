"""`log_format: json` / IPE_LOG_FORMAT=json: one JSON object per line, with the fields that
matter, and never a secret or a signature. (Here because it needs the webhook receiver.)"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from support import (
    APP_ID,
    SECRET,
    Gunicorn,
    IpeServer,
    Receivers,
    hook_config,
    subscribe,
    wait_until,
)

SIGNATURE = re.compile(r"[0-9a-f]{64}")  # an HMAC-SHA256 in hex: auth, REST or webhook


def _lines(log: str) -> list[dict[str, Any]]:
    """Every line of the log parsed as JSON (fails on the first that is not an object)."""
    parsed = []
    for number, line in enumerate(log.splitlines(), 1):
        record = json.loads(line)  # raises on any non-JSON line
        assert isinstance(record, dict), f"line {number}: {line}"
        for key in ("time", "level", "logger", "message"):
            assert key in record, f"line {number} has no {key}: {line}"
        parsed.append(record)
    return parsed


def _one(lines: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    found = [r for r in lines if all(r.get(k) == v for k, v in fields.items())]
    assert found, f"no log line with {fields}"
    return found[0]


@pytest.mark.parametrize("how", ["config", "env", "gunicorn"])
def test_json_lines_carry_the_fields_and_no_secret(how, make_server):
    receivers = Receivers()
    try:
        hook = receivers()
        config = hook_config([{"url": hook.url}], batch_window=0.05, grace_period=0)
        env = {}
        launcher: type[IpeServer] = IpeServer
        if how == "config":
            config["log_format"] = "json"
        else:
            env["IPE_LOG_FORMAT"] = "json"
        if how == "gunicorn":  # gunicorn's own lines must be JSON too
            launcher = Gunicorn
            env["IPE_LOG_LEVEL"] = "debug"
        server = make_server(config, env=env, launcher=launcher)

        client = server.ws()  # a connection: connected, subscribed, disconnected
        subscribe(client, "private-orders")
        hook.wait_event("channel_occupied", channel="private-orders")  # a webhook
        server.sdk().trigger("private-orders", "order", {"id": 1})  # a REST call
        client.wait_for("order", "private-orders")
        client.send("pusher:subscribe", {"channel": "private-bad", "auth": "x:" + "0" * 64})
        client.wait_for("pusher:subscription_error", "private-bad")
        client.close()
        wait_until(lambda: "disconnected" in server.log(), message="the disconnect logged")
        assert server.stop() == 0
    finally:
        receivers.close()

    log = server.log()
    lines = _lines(log)
    socket_id = client.socket_id
    connected = _one(lines, message=f"connected {socket_id} app={APP_ID}")
    assert connected["app_id"] == APP_ID and connected["socket_id"] == socket_id
    assert connected["remote_addr"] == "127.0.0.1"
    assert connected["level"] == "debug" and connected["logger"] == "ipe.session"
    assert connected["pid"] > 0 and connected["time"].endswith("Z")
    if how == "gunicorn":
        assert _one(lines, logger="gunicorn.error")["message"].startswith("Starting gunicorn")
    subscribed = _one(lines, socket_id=socket_id, channel="private-orders")
    assert subscribed["app_id"] == APP_ID
    refused = _one(lines, socket_id=socket_id, channel="private-bad")
    assert refused["status"] == 401
    ended = _one(lines, socket_id=socket_id, status=1000)
    assert ended["message"].startswith("disconnected") and ended["duration_ms"] >= 0

    rest = _one(lines, method="POST", path=f"/apps/{APP_ID}/events")
    assert rest["status"] == 200 and rest["app_id"] == APP_ID
    assert rest["remote_addr"] == "127.0.0.1" and rest["duration_ms"] >= 0

    sent = _one(lines, message=f"webhook delivered: app {APP_ID}, 1 event(s), {hook.url}")
    assert sent["app_id"] == APP_ID and sent["url"] == hook.url and sent["attempts"] == 1

    assert SECRET not in log
    assert not SIGNATURE.search(log), SIGNATURE.search(log)
    assert "auth_signature" not in log


def test_an_unknown_log_format_is_refused(make_server):
    server = make_server(env={"IPE_LOG_FORMAT": "xml"}, start=False)
    server.start(wait=False)
    assert server.proc is not None
    assert server.proc.wait(10) == 2
    assert "IPE_LOG_FORMAT: must be text or json" in server.log()
