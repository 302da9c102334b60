"""A real HTTP webhook receiver for tests: validates every request with the official SDK.

It runs `http.server` in a thread of the test process on a free loopback port. Each request is
recorded with its headers and raw body and checked with pusher-http-python's
`validate_webhook(key, signature, body)`; `mode` makes it answer 200, fail with a status, or
hang (never answer until released), to play the receiver faults.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pusher

from support.apps import APP_ID, KEY, SECRET, config_with
from support.server import wait_until


@dataclass
class Hook:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    valid: dict[str, Any] | None  # validate_webhook's answer: the parsed body, or None

    @property
    def events(self) -> list[dict[str, Any]]:
        return list(json.loads(self.body)["events"])


@dataclass
class Receiver:
    """One listening receiver; `hooks` holds every request in arrival order."""

    key: str = KEY
    secret: str = SECRET
    app_id: str = APP_ID
    port: int = 0
    status: int = 200
    hang: bool = False
    hooks: list[Hook] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.received = 0  # requests that arrived, answered or not yet
        self.released = threading.Event()
        self.validator = pusher.Pusher(app_id=self.app_id, key=self.key, secret=self.secret)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.record(self, body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def record(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        headers = dict(handler.headers.items())
        with self.lock:
            self.received += 1
            status, hang = self.status, self.hang
        if hang:
            # Never answer while hanging; the sender must time out. Released at teardown.
            self.released.wait(60)
            with self.lock:
                self.hooks.append(Hook(handler.path, headers, body, -1, None))
            return
        valid = self.validator.validate_webhook(
            headers.get("X-Pusher-Key", ""), headers.get("X-Pusher-Signature", ""), body
        )
        with self.lock:
            self.hooks.append(Hook(handler.path, headers, body, status, valid))
        handler.send_response(status)
        handler.send_header("Content-Length", "2")
        handler.end_headers()
        handler.wfile.write(b"{}")

    def answer(self, status: int = 200, hang: bool = False) -> None:
        """Change how the following requests are answered."""
        with self.lock:
            self.status, self.hang = status, hang

    def delivered(self) -> list[Hook]:
        """Requests answered 2xx; each one must have passed validate_webhook."""
        with self.lock:
            hooks = [h for h in self.hooks if 200 <= h.status < 300]
        for hook in hooks:
            assert hook.valid is not None, f"validate_webhook rejected {hook.headers} {hook.body!r}"
        return hooks

    def events(self, name: str | None = None, **fields: Any) -> list[dict[str, Any]]:
        """Events of the delivered requests, in order, optionally filtered by name and fields."""
        found = []
        for hook in self.delivered():
            for event in hook.events:
                if name is not None and event["name"] != name:
                    continue
                if all(event.get(k) == v for k, v in fields.items()):
                    found.append(event)
        return found

    def wait_event(self, name: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        """The first delivered event `name` with `fields`; fails after `timeout` seconds."""
        events = wait_until(
            lambda: self.events(name, **fields), timeout, message=f"webhook {name} {fields}"
        )
        return events[0]  # type: ignore[no-any-return]

    def attempts(self) -> int:
        """Requests that arrived, including those still hanging."""
        with self.lock:
            return self.received

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


class Receivers:
    """Every receiver one test made; all closed at teardown."""

    def __init__(self) -> None:
        self.all: list[Receiver] = []

    def __call__(self, **kwargs: Any) -> Receiver:
        receiver = Receiver(**kwargs)
        self.all.append(receiver)
        return receiver

    def close(self) -> None:
        for receiver in self.all:
            receiver.close()


def hook_config(targets: Any, other: Any = None, **settings: Any) -> dict[str, Any]:
    """BASE_CONFIG with app 1001's `webhooks` (and app 1002's `other`) and global `settings`."""
    config = config_with(webhooks=settings)
    config["apps"][0]["webhooks"] = targets
    if other is not None:
        config["apps"][1]["webhooks"] = other
    return config
