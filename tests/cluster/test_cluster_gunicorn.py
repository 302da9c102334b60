"""gunicorn with several workers: Redis makes them one server; without Redis they refuse;
SIGHUP to the master reloads the config in every worker in place."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from support import (
    BASE_CONFIG,
    ROOT,
    Gunicorn,
    RedisServer,
    free_port,
    ready_status,
    redis_config,
    run_ipe,
    stop_all,
    wait_until,
)


@pytest.fixture
def gunicorns(tmp_path: Path) -> Iterator[list[Gunicorn]]:
    servers: list[Gunicorn] = []
    yield servers
    stop_all(servers)


def _workers_with(redis_server: RedisServer, channel: str) -> set[str]:
    """Nodes (workers) holding at least one subscription to `channel`, as Redis counts them."""
    client = redis_server.client()
    nodes = {n.decode() for n in client.smembers("{ipe:1001}:nodes")}
    return {n for n in nodes if int(client.hget(f"{{ipe:1001}}:node:{n}:subs", channel) or 0)}


def _clients_on_both_workers(server, redis_server: RedisServer, channel: str, least: int = 1):
    """Connect and subscribe until both workers hold clients, and at least `least` of them.

    The kernel hands each accept to either worker; on a loaded machine one of them can take
    dozens in a row, so this goes on for up to 400 clients or 30 seconds."""
    clients = []
    deadline = time.monotonic() + 30
    while len(clients) < 400 and time.monotonic() < deadline:
        client = server.ws()
        client.subscribe(channel)
        clients.append(client)
        if len(clients) >= least and len(_workers_with(redis_server, channel)) == 2:
            return clients
    raise AssertionError(f"all {len(clients)} clients landed on one worker")


def test_two_workers_with_redis_are_one_server(gunicorns, redis_server, tmp_path):
    server = Gunicorn(
        redis_config(redis_server.url), tmp_path, "gunicorn", {"WEB_CONCURRENCY": "2"}
    )
    gunicorns.append(server)
    server.start()
    wait_until(lambda: ready_status(server) == 200, 20, message="/ready")

    clients = _clients_on_both_workers(server, redis_server, "orders")

    # Trigger on fresh connections until both workers have served one; each trigger reaches
    # every client of both workers exactly once.
    def served() -> set[str]:
        return set(re.findall(r"\[(\d+)\] \[INFO\] POST /apps/1001/events 200", server.log()))

    for i in range(60):
        sdk = server.sdk()  # a new HTTP connection: either worker may accept it
        try:
            assert sdk.trigger("orders", "update", str(i)) == {}
        finally:
            # An idle keep-alive connection would hold gunicorn's shutdown for its
            # graceful_timeout.
            sdk._pusher_client.http.session.close()
        for client in clients:
            assert client.expect("update", "orders")["data"] == str(i)
        if len(served()) == 2:
            break
    assert len(served()) == 2, "every REST call landed on one worker"
    for client in clients:
        client.sync()


def test_two_workers_without_redis_refuse_to_start(tmp_path):
    config = tmp_path / "one.yml"
    config.write_text(yaml.safe_dump(BASE_CONFIG))
    env = {**os.environ, "IPE_CONFIG": str(config), "WEB_CONCURRENCY": "2"}
    env["GUNICORN_BIND"] = f"127.0.0.1:{free_port()}"
    for name in [k for k in env if k.startswith("REDIS_")]:
        del env[name]
    done = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "ipe.wsgi:app"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert b"2 workers need Redis" in done.stdout + done.stderr


def test_metrics_sum_every_worker(gunicorns, redis_server, tmp_path):
    """With PROMETHEUS_MULTIPROC_DIR, a scrape of either worker counts the sockets of both."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    server = Gunicorn(
        redis_config(redis_server.url),
        tmp_path,
        "gunicorn",
        {"WEB_CONCURRENCY": "2", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
    )
    gunicorns.append(server)
    server.start()
    wait_until(lambda: ready_status(server) == 200, 20, message="/ready")
    clients = _clients_on_both_workers(server, redis_server, "counted", least=4)
    # Each worker folds its count in within a second; every scrape (a new connection, so
    # either worker) must then show the sum.
    wait_until(
        lambda: server.metric("ipe_connections") == len(clients),
        10,
        message=f"ipe_connections == {len(clients)}",
    )
    for _ in range(6):
        assert server.metric("ipe_connections") == len(clients)


NEW_APP = {"name": "New", "app_id": "2001", "key": "new-key", "secret": "new-secret"}


def test_sighup_reloads_every_worker_without_restarting_them(gunicorns, redis_server, tmp_path):
    pid_file = tmp_path / "gunicorn.pid"
    config = redis_config(redis_server.url)
    server = Gunicorn(
        config, tmp_path, "gunicorn", {"WEB_CONCURRENCY": "2", "IPE_PID_FILE": str(pid_file)}
    )
    gunicorns.append(server)
    server.start()
    wait_until(lambda: ready_status(server) == 200, 20, message="/ready")
    clients = _clients_on_both_workers(server, redis_server, "orders")
    booted = re.findall(r"Booting worker with pid: (\d+)", server.log())
    assert len(booted) == 2

    config["apps"].append(NEW_APP)
    server.config_path.write_text(yaml.safe_dump(config))
    done = run_ipe("reload", "--pid-file", str(pid_file))
    assert done.returncode == 0, done.stderr
    wait_until(lambda: server.log().count("reloaded ") == 2, 5, message="both workers reloaded")
    assert re.findall(r"Booting worker with pid: (\d+)", server.log()) == booted

    # The new app is served by both workers, and its events cross between them.
    new_clients = []
    for _ in range(20):
        client = server.ws(key="new-key")
        assert client.established is not None, client.first
        client.subscribe("news")
        new_clients.append(client)
    sdk = server.sdk(app_id="2001", key="new-key", secret="new-secret")
    assert sdk.trigger("news", "hello", {"n": 1}) == {}
    sdk._pusher_client.http.session.close()
    for client in new_clients:
        client.wait_for("hello", "news")
    # Sockets of the unchanged app lived through it on both workers.
    old = server.sdk()
    assert old.trigger("orders", "still-here", {}) == {}
    old._pusher_client.http.session.close()
    for client in clients:
        client.wait_for("still-here", "orders")
