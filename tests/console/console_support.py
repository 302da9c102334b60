"""A console user for tests against a real ipe process: logs in over HTTP, reads the SSE stream."""

from __future__ import annotations

import http.client
import json
import queue
import re
import socket
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any

from conftest import IpeServer, config_with

USER, PASSWORD = "admin", "console-test-password"
CONSOLE = {
    "enabled": True,
    "secret_key": "console-test-secret-key-0123456789",
    "users": [{"username": USER, "password": PASSWORD}],
}


def console_config(**overrides: Any) -> dict[str, Any]:
    """BASE_CONFIG with the console on."""
    return config_with(console=CONSOLE, **overrides)


class ConsoleUser:
    """One logged-in browser, as far as HTTP goes: its cookie and CSRF token."""

    def __init__(self, server: IpeServer) -> None:
        self.server = server
        self.cookie = ""
        self.csrf = ""
        self.streams: list[EventStream] = []

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        try:
            all_headers = {"Cookie": self.cookie, **(headers or {})}
            conn.request(method, "/console" + path, body=body, headers=all_headers)
            response = conn.getresponse()
            data = response.read()
            cookie = response.getheader("Set-Cookie")
            if cookie:
                self.cookie = cookie.split(";", 1)[0]
            return response.status, dict(response.getheaders()), data
        finally:
            conn.close()

    def log_in(self, password: str = PASSWORD) -> int:
        _, _, page = self.request("GET", "/login")
        token = re.search(rb'name="csrf" value="([^"]+)"', page).group(1).decode()  # type: ignore[union-attr]
        form = urllib.parse.urlencode({"username": USER, "password": password, "csrf": token})
        status, _, _ = self.request(
            "POST",
            "/login",
            form.encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        if status == 303:
            _, _, page = self.request("GET", "/")
            self.csrf = re.search(rb'data-csrf="([^"]+)"', page).group(1).decode()  # type: ignore[union-attr]
        return status

    def post_form(
        self, path: str, fields: dict[str, str] | None = None, csrf: str | None = None
    ) -> tuple[int, dict[str, str], str]:
        """POST a form as the browser does, with the session's CSRF token unless `csrf` is
        given ("" sends none); (status, headers, page)."""
        token = self.csrf if csrf is None else csrf
        form = {**(fields or {}), **({"csrf": token} if token else {})}
        status, headers, body = self.request(
            "POST",
            path,
            urllib.parse.urlencode(form).encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        return status, headers, body.decode()

    def page(self, path: str) -> tuple[int, str]:
        """GET a page: (status, HTML)."""
        status, _, body = self.request("GET", path)
        return status, body.decode()

    def get_json(self, path: str) -> Any:
        status, _, body = self.request("GET", "/api" + path)
        assert status == 200, (path, status, body)
        return json.loads(body)

    def send(self, app_id: str, channel: str, event: str, data: str) -> tuple[int, Any]:
        body = json.dumps({"channel": channel, "event": event, "data": data}).encode()
        status, _, answer = self.request(
            "POST",
            f"/api/apps/{app_id}/events",
            body,
            {"Content-Type": "application/json", "X-CSRF-Token": self.csrf},
        )
        return status, json.loads(answer)

    def stream(self, app_id: str) -> EventStream:
        stream = EventStream(self, app_id)
        self.streams.append(stream)
        return stream

    def close(self) -> None:
        for stream in self.streams:
            stream.close()


class EventStream:
    """One SSE stream, read by a thread into a queue of records."""

    def __init__(self, user: ConsoleUser, app_id: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", user.server.port, timeout=30)
        self.conn.request(
            "GET", f"/console/api/apps/{app_id}/events", headers={"Cookie": user.cookie}
        )
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.headers = dict(self.response.getheaders())
        self.records: queue.Queue[dict[str, Any]] = queue.Queue()
        self.raw: list[bytes] = []
        self.opened = threading.Event()
        if self.status == 200:
            threading.Thread(target=self._read, daemon=True).start()
            assert self.opened.wait(10), "the stream sent nothing"

    def _read(self) -> None:
        try:
            while True:
                line = self.response.fp.readline()
                if not line:
                    return
                self.raw.append(line)
                self.opened.set()
                if line.startswith(b"data: "):
                    self.records.put(json.loads(line[6:]))
        except (OSError, ValueError, AttributeError):  # AttributeError: closed under us
            return

    def expect(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        """The next record that `match`es (the ones before it are skipped)."""
        while True:
            try:
                record = self.records.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError("no matching console record in time") from None
            if match(record):
                return record

    def close(self) -> None:
        sock = self.conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the reader thread's file holds it open
            except OSError:
                pass
        self.conn.close()
