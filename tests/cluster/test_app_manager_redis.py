"""`app_manager: driver: redis`: apps stored in Redis, changed by `ipe apps` on a running
two-node cluster, served by both nodes within a second, with no restart."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pusher
import pytest
import yaml
from support import (
    ConnectionClosed,
    IpeServer,
    RedisServer,
    redis_config,
    run_ipe,
    wait_ready,
    wait_until,
)


def _config(redis_server: RedisServer) -> dict[str, Any]:
    config = redis_config(redis_server.url)
    config["apps"] = []
    config["app_manager"] = {"driver": "redis"}
    return config


def ipe_apps(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `ipe apps ARGS` against the config file, as an operator would."""
    return run_ipe("apps", "--config", str(config_path), *args)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


def connects(server: IpeServer, key: str) -> bool:
    client = server.ws(key=key)
    established = client.established is not None
    client.close()
    return established


def sdk(server: IpeServer, secret: str) -> pusher.Pusher:
    return server.sdk(app_id="3001", key="k3", secret=secret)


def status(server: IpeServer, secret: str) -> int:
    client = sdk(server, secret)
    try:
        client.trigger("feed", "tick", {})
        return 200
    except pusher.errors.PusherBadAuth:
        return 401
    finally:
        client._pusher_client.http.session.close()


@pytest.fixture
def cluster(redis_server: RedisServer, make_server: Any) -> list[IpeServer]:
    servers = [make_server(_config(redis_server), name=f"node{i}") for i in range(2)]
    for server in servers:
        wait_ready(server)
    return servers


def test_added_app_is_served_by_every_node_within_a_second(cluster: list[IpeServer]) -> None:
    a, b = cluster
    assert not connects(a, "k3")
    ok(ipe_apps(a.config_path, "add", "--id", "3001", "--key", "k3", "--secret", "s3"))
    added = time.monotonic()
    for server in cluster:
        wait_until(lambda s=server: connects(s, "k3"), 1.0, 0.05, "the new key on both nodes")
    assert time.monotonic() - added < 2.0
    listener = b.ws(key="k3")
    listener.subscribe("feed")
    assert sdk(a, "s3").trigger("feed", "hello", {"n": 1}) == {}
    listener.wait_for("hello", "feed")
    assert "3001\tk3\tenabled" in ok(ipe_apps(a.config_path, "list"))
    long_secret = "0123456789abcdef-long-secret"
    ok(ipe_apps(a.config_path, "add", "--id", "3002", "--key", "k4", "--secret", long_secret))
    shown = ok(ipe_apps(a.config_path, "show", "3002"))
    assert long_secret not in shown and "…cret" in shown
    assert "s3" not in ok(ipe_apps(a.config_path, "show", "3001"))


def test_rotation_disable_and_remove_on_a_running_cluster(cluster: list[IpeServer]) -> None:
    a, b = cluster
    path = a.config_path
    ok(ipe_apps(path, "add", "--id", "3001", "--key", "k3", "--secret", "s3"))
    wait_until(lambda: connects(a, "k3") and connects(b, "k3"), 2.0, 0.05, "the app")
    bystander = a.ws()  # an app of the config file is not served: driver redis has none
    assert bystander.established is None
    clients = [server.ws(key="k3") for server in cluster]

    out = ok(ipe_apps(path, "rotate-secret", "3001"))
    new_secret = out.split("secret: ")[1].strip()
    wait_until(lambda: all(status(s, new_secret) == 200 for s in cluster), 2.0, 0.05, "new")
    assert status(a, "s3") == 200 and status(b, "s3") == 200  # the old one still works
    ok(ipe_apps(path, "rotate-secret", "3001", "--drop-old"))
    wait_until(lambda: all(status(s, "s3") == 401 for s in cluster), 2.0, 0.05, "old refused")
    assert status(b, new_secret) == 200
    for client in clients:
        client.sync()  # rotation closed nobody

    ok(ipe_apps(path, "disable", "3001"))
    for client in clients:
        with pytest.raises(ConnectionClosed) as closed:
            client.wait_for("never", timeout=3)
        assert closed.value.code == 4003
    ok(ipe_apps(path, "enable", "3001"))
    wait_until(lambda: connects(a, "k3") and connects(b, "k3"), 2.0, 0.05, "enabled again")
    again = b.ws(key="k3")
    ok(ipe_apps(path, "remove", "3001"))
    with pytest.raises(ConnectionClosed) as removed:
        again.wait_for("never", timeout=3)
    assert removed.value.code == 4001
    assert "3001" not in ok(ipe_apps(path, "list"))


def test_ipe_apps_refuses_bad_input_with_one_line(cluster: list[IpeServer], tmp_path: Path) -> None:
    path = cluster[0].config_path
    ok(ipe_apps(path, "add", "--id", "3001", "--key", "k3"))
    taken = ipe_apps(path, "add", "--id", "3002", "--key", "k3")
    assert taken.returncode == 2 and "already the key of app 3001" in taken.stderr
    bad = ipe_apps(path, "update", "3001", "--set", "limits.max_batch_size=0")
    assert bad.returncode == 2 and "limits.max_batch_size: must be at least 1" in bad.stderr
    missing = ipe_apps(path, "show", "9999")
    assert missing.returncode == 1 and "no app 9999" in missing.stderr
    file_config = tmp_path / "file.yml"
    file_config.write_text(yaml.safe_dump({"apps": [{"app_id": "1", "key": "k", "secret": "s"}]}))
    wrong = ipe_apps(file_config, "list")
    assert wrong.returncode == 2 and "driver: redis" in wrong.stderr
