"""Reloading the config file at runtime (SIGHUP, `ipe reload`): apps added, changed, disabled
and removed without a restart, sockets of unchanged apps untouched, invalid files refused."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pusher
import pytest
import yaml
from support import (
    APP_ID,
    KEY,
    SECRET,
    ConnectionClosed,
    IpeServer,
    WsClient,
    config_with,
    run_ipe,
    wait_until,
)

NEW_APP = {"name": "New", "app_id": "2001", "key": "new-key", "secret": "new-secret"}


def reload_with(server: IpeServer, config: dict[str, Any]) -> None:
    """Write `config` over the server's file, SIGHUP it, and wait for its reload log line."""
    before = server.log().count("reload")
    server.config_path.write_text(yaml.safe_dump(config))
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: server.log().count("reload") > before, 5, message="the reload log line")


def connects(server: IpeServer, key: str) -> bool:
    """True if a socket with `key` gets connection_established (not an error and close)."""
    client = server.ws(key=key)
    established = client.established is not None
    client.close()
    return established


def still_open(client: WsClient, server: IpeServer, channel: str) -> None:
    """Prove `client` kept its socket and subscription: a REST event on `channel` reaches it."""
    client.sync()
    server.sdk().trigger(channel, "after-reload", {"n": 1})
    message = client.wait_for("after-reload", channel)
    assert json.loads(message["data"]) == {"n": 1}


def test_an_added_app_is_served_and_other_sockets_are_not_touched(make_server: Any) -> None:
    server = make_server()
    client = server.ws()
    client.subscribe("orders")
    assert not connects(server, NEW_APP["key"])

    config = config_with()
    config["apps"].append(NEW_APP)
    reload_with(server, config)

    assert wait_until(lambda: connects(server, NEW_APP["key"]), 1.0, 0.05, "the new app's key")
    still_open(client, server, "orders")
    sdk = server.sdk(app_id="2001", key="new-key", secret="new-secret")
    assert sdk.trigger("news", "hello", {}) == {}


def test_ten_reloads_leave_an_unchanged_apps_socket_alone(make_server: Any) -> None:
    server = make_server()
    client = server.ws()
    client.subscribe("orders")
    config = config_with()
    for i in range(10):
        config["apps"][1]["name"] = f"Other {i}"  # a change to another app every time
        reload_with(server, config)
    still_open(client, server, "orders")
    assert server.log().count("reloaded") == 10


def test_a_disabled_app_is_closed_with_4003_and_a_removed_one_with_4001(
    make_server: Any,
) -> None:
    server = make_server()
    main = server.ws()
    main.subscribe("orders")
    other = server.ws(key="other-key")
    other.subscribe("things")
    quiet = server.ws(key="quiet-key")

    config = config_with()
    config["apps"][1]["enabled"] = False  # Other
    config["apps"] = [a for a in config["apps"] if a["key"] != "quiet-key"]
    reload_with(server, config)

    with pytest.raises(ConnectionClosed) as disabled:
        other.wait_for("never")
    assert disabled.value.code == 4003
    with pytest.raises(ConnectionClosed) as removed:
        quiet.wait_for("never")
    assert removed.value.code == 4001
    still_open(main, server, "orders")
    refused = server.ws(key="other-key")
    assert refused.first["data"]["code"] == 4003


def test_a_changed_apps_new_limits_apply_to_new_requests(make_server: Any) -> None:
    server = make_server()
    assert server.sdk().trigger("orders", "big", "x" * 200) == {}
    config = config_with()
    config["apps"][0]["limits"] = {"max_message_size": 100}
    reload_with(server, config)
    with pytest.raises(pusher.errors.PusherError, match="413|too large|larger"):
        server.sdk().trigger("orders", "big", "x" * 200)


def test_an_invalid_file_is_refused_and_the_old_config_stays(make_server: Any) -> None:
    server = make_server()
    client = server.ws()
    client.subscribe("orders")
    config = config_with()
    config["apps"].append({**NEW_APP, "colour": "blue"})
    reload_with(server, config)
    assert "reload refused" in server.log()
    assert "apps[6].colour: unknown key" in server.log()
    assert not connects(server, NEW_APP["key"])
    still_open(client, server, "orders")
    assert connects(server, "other-key")


def test_ipe_reload_signals_the_process_in_the_pid_file(make_server: Any, tmp_path: Path) -> None:
    pid_file = tmp_path / "ipe.pid"
    server = make_server(config_with(pid_file=str(pid_file)))
    wait_until(pid_file.exists, 5, message="the pid file")
    assert pid_file.read_text().strip() == str(server.proc.pid)
    config = config_with(pid_file=str(pid_file))
    config["apps"].append(NEW_APP)
    server.config_path.write_text(yaml.safe_dump(config))
    done = run_ipe("reload", "--pid-file", str(pid_file))
    assert done.returncode == 0, done.stderr
    assert wait_until(lambda: connects(server, NEW_APP["key"]), 2.0, 0.05, "the new app's key")
    server.stop()
    assert not pid_file.exists()


def test_ipe_reload_without_a_pid_file_says_so() -> None:
    done = run_ipe("reload", "--config", "config.yml.sample", env={"IPE_PID_FILE": ""})
    assert done.returncode == 2
    assert "no pid file" in done.stderr


# --- secrets that rotate ----------------------------------------------------------------------


def _rest(server: IpeServer, secret: str) -> int:
    sdk = pusher.Pusher(
        app_id=APP_ID, key=KEY, secret=secret, host="127.0.0.1", port=server.port, ssl=False
    )
    try:
        sdk.trigger("orders", "rotated", {})
    except pusher.errors.PusherBadAuth:
        return 401
    return 200


def with_secrets(*secrets: str) -> dict[str, Any]:
    config = config_with()
    app = config["apps"][0]
    del app["secret"]
    app["secrets"] = list(secrets)
    return config


def test_every_listed_secret_signs_rest_channel_auth_and_signin(make_server: Any) -> None:
    server = make_server(with_secrets("new-secret", SECRET))
    assert _rest(server, "new-secret") == 200
    assert _rest(server, SECRET) == 200
    assert _rest(server, "wrong-secret") == 401
    for secret in ("new-secret", SECRET):
        client = server.ws()
        sdk = server.sdk(secret=secret)
        auth = sdk.authenticate(channel="private-rotated", socket_id=client.socket_id)
        reply = client.subscribe("private-rotated", auth["auth"])
        assert reply["event"] == "pusher_internal:subscription_succeeded", reply
        user = sdk.authenticate_user(client.socket_id, {"id": "u1"})
        client.send("pusher:signin", user)
        assert client.wait_for("pusher:signin_success")["event"] == "pusher:signin_success"


def test_rotation_by_reload_keeps_sockets_and_drops_the_old_secret(make_server: Any) -> None:
    server = make_server()
    client = server.ws()
    reload_with(server, with_secrets("new-secret", SECRET))
    # A socket opened before the rotation accepts tokens signed with the new secret.
    auth = server.sdk(secret="new-secret").authenticate(
        channel="private-rotated", socket_id=client.socket_id
    )
    reply = client.subscribe("private-rotated", auth["auth"])
    assert reply["event"] == "pusher_internal:subscription_succeeded", reply
    reload_with(server, with_secrets("new-secret"))
    assert _rest(server, SECRET) == 401
    assert _rest(server, "new-secret") == 200
    client.sync()  # the socket itself lived through both reloads


def test_a_secret_listed_with_secrets_is_refused_at_start(make_server: Any) -> None:
    config = with_secrets("a", "b")
    config["apps"][0]["secret"] = "c"
    server = make_server(config, start=False)
    server.start(wait=False)
    assert server.proc.wait(20) == 2
    assert "apps[0].secrets: give either secret or secrets, not both" in server.log()
