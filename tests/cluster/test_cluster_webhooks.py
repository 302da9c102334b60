"""Webhooks of a cluster: occupancy and member events once per cluster, dead nodes included."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from support import after_sweeps, join, redis_config, settle, wait_ready, wait_until


class Hooks:
    """A webhook receiver in a thread of the test: every event posted, in arrival order."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        lock = threading.Lock()
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    hooks.events.extend(json.loads(body)["events"])
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def named(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in list(self.events)
            if e["name"] == name and all(e.get(k) == v for k, v in fields.items())
        ]

    def wait(self, name: str, **fields: Any) -> None:
        wait_until(lambda: self.named(name, **fields), 30, message=f"webhook {name} {fields}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    receiver = Hooks()
    yield receiver
    receiver.close()


def mark(server, hooks: Hooks, name: str) -> None:
    """A webhook barrier: once it arrives, so has every webhook the server emitted before."""
    client = server.ws()
    client.subscribe(name)
    hooks.wait("channel_occupied", channel=name)


def test_webhooks_fire_once_per_cluster_also_for_a_killed_node(redis_server, make_server, hooks):
    config = redis_config(redis_server.url)
    config["apps"][0]["webhooks"] = [{"url": hooks.url}]
    config["webhooks"] = {"batch_window": 0.05, "grace_period": 0}
    a, b, c = (make_server(config, name=f"node{i}") for i in range(3))
    for server in (a, b, c):
        wait_ready(server)

    for server in (a, b, c):
        server.ws().subscribe("orders")
    watcher = join(a, "presence-room", "watcher")
    settle(a, b, c)
    join(b, "presence-room", "ann")
    watcher.expect("pusher_internal:member_added", "presence-room")
    b.ws().subscribe("only-b")
    for server in (a, b, c):
        mark(server, hooks, f"mark-{server.port}")
    assert len(hooks.named("channel_occupied", channel="orders")) == 1
    assert len(hooks.named("channel_occupied", channel="presence-room")) == 1
    assert len(hooks.named("member_added", channel="presence-room", user_id="ann")) == 1

    b.kill()
    watcher.expect("pusher_internal:member_removed", "presence-room", timeout=30)
    hooks.wait("member_removed", user_id="ann")
    hooks.wait("channel_vacated", channel="only-b")
    after_sweeps(a, c)  # the other janitor had its chance to reap b again
    for server in (a, c):
        mark(server, hooks, f"after-{server.port}")
    assert len(hooks.named("member_removed", user_id="ann")) == 1
    assert len(hooks.named("channel_vacated", channel="only-b")) == 1
    assert len(hooks.named("channel_vacated", channel=f"mark-{b.port}")) == 1
    assert hooks.named("channel_vacated", channel="orders") == []
    assert hooks.named("channel_vacated", channel="presence-room") == []
