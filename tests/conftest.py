"""Shared fixtures: real ipe processes on free ports, and a raw WebSocket client for them.

Nothing here mocks ipe: every integration test talks to `python -m ipe` over real sockets.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pusher
import pytest
import websocket
import yaml

ROOT = Path(__file__).resolve().parent.parent

# The credentials of docs/protocol-notes.md's test vectors.
APP_ID, KEY, SECRET = "1001", "demo-key", "demo-secret"

BASE_CONFIG: dict[str, Any] = {
    "host": "127.0.0.1:8080",  # --port overrides it
    "activity_timeout": 30,
    "pong_timeout": 30,
    # Close every socket at once on SIGTERM, so that stopping a server never waits: the
    # spread-out drain has its own tests (tests/integration/test_drain.py).
    "drain_seconds": 0,
    "apps": [
        {"name": "Main", "app_id": APP_ID, "key": KEY, "secret": SECRET, "user_events": True},
        {"name": "Other", "app_id": "1002", "key": "other-key", "secret": "other-secret"},
        {
            "name": "Off",
            "app_id": "1003",
            "key": "off-key",
            "secret": "off-secret",
            "enabled": False,
        },
        {
            "name": "TLS",
            "app_id": "1004",
            "key": "tls-key",
            "secret": "tls-secret",
            "only_ssl": True,
        },
        {
            "name": "Quiet",
            "app_id": "1005",
            "key": "quiet-key",
            "secret": "quiet-secret",
            "user_events": False,
        },
        {
            "name": "Counted",
            "app_id": "1007",
            "key": "counted-key",
            "secret": "counted-secret",
            "subscription_count": True,
        },
    ],
}


SIGNATURE = re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")


def parse_sample(line: str) -> tuple[str, dict[str, str], float]:
    """One line of the Prometheus text format: (name, labels, value)."""
    head, _, value = line.rpartition(" ")
    name, _, labels = head.partition("{")
    pairs = re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels)
    return name, dict(pairs), float(value)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition",
) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


class IpeServer:
    """One `python -m ipe` process with its own config file and log."""

    def __init__(
        self,
        config: dict[str, Any],
        workdir: Path,
        name: str = "ipe",
        env: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.port = free_port()
        self.workdir = workdir
        self.config_path = workdir / f"{name}.yml"
        self.log_path = workdir / f"{name}.log"
        self.config_path.write_text(yaml.safe_dump(config))
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.allow_tracebacks = False
        self.clients: list[WsClient] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> IpeServer:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ipe",
                "--config",
                str(self.config_path),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "debug",
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        log.close()
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 20.0) -> None:
        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"ipe exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_until(healthy, timeout, 0.05, "ipe to answer /health")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Signal the process and wait for it; then check its log (every server of the suite
        passes here) for secrets and signatures."""
        if self.proc is None:
            return None
        try:
            if self.proc.poll() is not None:
                return self.proc.returncode
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait(5)
        finally:
            self.assert_no_secrets_logged()

    def assert_no_secrets_logged(self) -> None:
        """No app secret and nothing shaped like a signature (64 hex digits: channel auth,
        REST auth_signature, webhook signature) anywhere in this server's log."""
        log = self.log()
        for app in self.config.get("apps", ()):
            secret = str(app.get("secret", ""))
            assert len(secret) < 6 or secret not in log, f"secret logged in {self.log_path}"
        found = SIGNATURE.search(log)
        assert found is None, f"a signature logged in {self.log_path}: {found.group()}"

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def metrics(self) -> list[tuple[str, dict[str, str], float]]:
        """Every sample on /metrics: (name, labels, value)."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as r:
            text = r.read().decode()
        return [parse_sample(line) for line in text.splitlines() if line and line[0] != "#"]

    def metric(self, name: str, required: bool = False) -> float:
        """The sum of one metric's series on /metrics whose labels include those given (as
        exported: `name{code="4100"}`; a bare name sums every series); 0 when there is none,
        unless `required`."""
        wanted_name, wanted = parse_sample(name + " 0")[:2]
        values = [
            value
            for sample_name, labels, value in self.metrics()
            if sample_name == wanted_name and wanted.items() <= labels.items()
        ]
        if required and not values:
            raise AssertionError(f"no {name} in /metrics")
        return sum(values)

    def sdk(
        self, app_id: str = APP_ID, key: str = KEY, secret: str = SECRET, **kwargs: Any
    ) -> pusher.Pusher:
        """The official Python server SDK pointed at this server."""
        return pusher.Pusher(
            app_id=app_id,
            key=key,
            secret=secret,
            host="127.0.0.1",
            port=self.port,
            ssl=False,
            **kwargs,
        )

    def ws(
        self,
        key: str = KEY,
        query: str = "protocol=7&client=js&version=8.6.0&flash=false",
        path: str | None = None,
        origin: str | None = None,
        **kwargs: Any,
    ) -> WsClient:
        """A raw WebSocket client connected to this server (or to `origin`, e.g. a wss:// one)."""
        path = path if path is not None else f"/app/{key}"
        origin = origin or f"ws://127.0.0.1:{self.port}"
        url = f"{origin}{path}" + (f"?{query}" if query else "")
        client = WsClient(url, **kwargs)
        self.clients.append(client)
        return client


class Gunicorn(IpeServer):
    """ipe under `gunicorn -c gunicorn.conf.py ipe.wsgi:app`, as the Procfile runs it."""

    def start(self, wait: bool = True) -> Gunicorn:
        env = {
            **self.env,
            "IPE_CONFIG": str(self.config_path),
            "GUNICORN_BIND": f"127.0.0.1:{self.port}",
        }
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "ipe.wsgi:app"],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        if wait:
            self.wait_healthy()
        return self


class WsClient:
    """A raw WebSocket client: JSON frames in and out, close codes, bounded waits."""

    def __init__(
        self,
        url: str,
        header: list[str] | None = None,
        timeout: float = 5.0,
        handshake: bool = True,
        **options: Any,
    ) -> None:
        # websocket-client validates UTF-8 in pure Python (~2 ms per 10 KB frame); recv()'s
        # json.loads decodes the bytes as strict UTF-8 anyway. `options` go to
        # websocket.create_connection (sockopt, sslopt, ...).
        self.ws = websocket.create_connection(
            url,
            timeout=timeout,
            header=header or [],
            enable_multithread=True,
            skip_utf8_validation=True,
            **options,
        )
        self.timeout = timeout
        self.socket_id: str | None = None
        self.established: dict[str, Any] | None = None
        if handshake:
            first = self.recv()
            if first.get("event") == "pusher:connection_established":
                self.established = json.loads(first["data"])
                self.socket_id = self.established["socket_id"]
            else:
                self.first = first

    def send(self, event: str, data: Any = None, channel: str | None = None) -> None:
        message: dict[str, Any] = {"event": event}
        if data is not None:
            message["data"] = data
        if channel is not None:
            message["channel"] = channel
        self.ws.send(json.dumps(message))

    def send_raw(self, text: str | bytes, opcode: int = websocket.ABNF.OPCODE_TEXT) -> None:
        self.ws.send(text, opcode)

    def recv(self, timeout: float | None = None) -> dict[str, Any]:
        """The next frame as JSON; fails if none arrives within `timeout`."""
        self.ws.settimeout(timeout or self.timeout)
        opcode, data = self.ws.recv_data(control_frame=False)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            raise ConnectionClosed(*_close_info(data))
        return json.loads(data)  # type: ignore[no-any-return]

    def expect(
        self, event: str, channel: str | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """The next frame, asserting its event (and channel)."""
        message = self.recv(timeout)
        assert message.get("event") == event, f"expected {event}, got {message}"
        if channel is not None:
            assert message.get("channel") == channel, f"expected channel {channel}: {message}"
        return message

    def wait_for(
        self, event: str, channel: str | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """Skip frames until one with `event` (and `channel`) arrives."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {event} within {timeout or self.timeout}s")
            message = self.recv(left)
            if message.get("event") == event and (
                channel is None or message.get("channel") == channel
            ):
                return message

    def subscribe(
        self, channel: str, auth: str | None = None, channel_data: str | None = None
    ) -> dict[str, Any]:
        data: dict[str, Any] = {"channel": channel, "auth": auth or ""}
        if channel_data is not None:
            data["channel_data"] = channel_data
        self.send("pusher:subscribe", data)
        return self.recv()

    def sync(self) -> None:
        """Round-trip a pusher:ping: every frame the server queued before is read before."""
        self.send("pusher:ping", {})
        message = self.recv()
        assert message["event"] == "pusher:pong", f"expected nothing before the pong: {message}"

    def subscribe_signed(
        self, sdk: pusher.Pusher, channel: str, custom_data: Any = None
    ) -> dict[str, Any]:
        """Subscribe with a token from the SDK's `authenticate` (channel_data for presence)."""
        token = sdk.authenticate(channel, self.socket_id, custom_data)
        return self.subscribe(channel, token["auth"], token.get("channel_data"))

    def expect_refusal(self, channel: str, reply: dict[str, Any] | None = None) -> dict[str, Any]:
        """A refused subscription: `pusher:subscription_error` on the channel (what Echo's
        `.error()` gets; pass it as `reply` if already read, e.g. from `subscribe`), then
        Pusher's own `pusher:error` with code null. Returns the former's data."""
        refusal = reply or self.expect("pusher:subscription_error", channel)
        assert refusal["event"] == "pusher:subscription_error", refusal
        assert refusal["channel"] == channel, refusal
        error = self.expect("pusher:error")
        assert error["data"] == {"code": None, "message": refusal["data"]["error"]}, error
        return refusal["data"]  # type: ignore[no-any-return]

    def sign_in(self, sdk: pusher.Pusher, user_data: dict[str, Any]) -> dict[str, Any]:
        """Send pusher:signin with the SDK's `authenticate_user` token; returns the reply."""
        token = sdk.authenticate_user(self.socket_id, user_data)
        self.send("pusher:signin", {"auth": token["auth"], "user_data": token["user_data"]})
        return self.recv()

    def send_wire(self, data: bytes) -> None:
        """Write raw bytes to the TCP socket (hand-made frames, broken framing)."""
        self.ws.sock.sendall(data)

    def send_frame(
        self,
        opcode: int,
        payload: bytes = b"",
        fin: bool = True,
        rsv: int = 0,
        mask: bool = True,
        length: int | None = None,
    ) -> None:
        """One hand-made frame: any opcode, reserved bits, unmasked, or a false `length`."""
        n = len(payload) if length is None else length
        head = bytes([(0x80 if fin else 0) | (rsv & 7) << 4 | opcode])
        bit = 0x80 if mask else 0
        if n < 126:
            head += bytes([bit | n])
        elif n < 65536:
            head += bytes([bit | 126]) + n.to_bytes(2, "big")
        else:
            head += bytes([bit | 127]) + n.to_bytes(8, "big")
        if mask:
            key = os.urandom(4)
            head += key
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        self.send_wire(head + payload)

    def expect_close(self, timeout: float | None = None) -> tuple[int | None, str]:
        """Read until the server's close frame; returns (code, reason)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("connection was not closed")
            try:
                self.recv(left)
            except ConnectionClosed as closed:
                return closed.code, closed.reason
            except websocket.WebSocketConnectionClosedException:
                return None, ""

    def close(self) -> None:
        try:
            self.ws.close(timeout=1)
        except Exception:
            pass
        finally:
            self.ws.shutdown()


class ConnectionClosed(Exception):
    """The server sent a close frame."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


def _close_info(data: bytes) -> tuple[int | None, str]:
    if len(data) >= 2:
        return int.from_bytes(data[:2], "big"), data[2:].decode(errors="replace")
    return None, ""


def config_with(**overrides: Any) -> dict[str, Any]:
    """BASE_CONFIG with top-level keys replaced (deep copies, so tests cannot leak)."""
    config = copy.deepcopy(BASE_CONFIG)
    config.update(copy.deepcopy(overrides))
    return config


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., IpeServer]]:
    """Start ipe processes with a given config; stops them and checks their logs afterwards."""
    servers: list[IpeServer] = []

    def make(
        config: dict[str, Any] | None = None,
        start: bool = True,
        name: str | None = None,
        env: dict[str, str] | None = None,
        launcher: type[IpeServer] = IpeServer,
    ) -> IpeServer:
        server = launcher(config or config_with(), tmp_path, name or f"ipe{len(servers)}", env)
        servers.append(server)
        return server.start() if start else server

    yield make
    for server in servers:
        for client in server.clients:
            client.close()
        server.stop()
    for server in servers:
        if not server.allow_tracebacks:
            assert "Traceback" not in server.log(), f"{server.log_path}:\n{server.log()}"


@pytest.fixture
def server(make_server: Callable[..., IpeServer]) -> IpeServer:
    """One ipe process with BASE_CONFIG."""
    return make_server()


@pytest.fixture(scope="module")
def _module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IpeServer]:
    server = IpeServer(config_with(), tmp_path_factory.mktemp("shared"), "shared").start()
    yield server
    server.stop()


@pytest.fixture
def shared_server(_module_server: IpeServer) -> Iterator[IpeServer]:
    """One BASE_CONFIG process for every test of a module (saves a start per test).

    For tests whose outcome does not depend on what earlier tests left behind (channels,
    members, signed-in users): the test's clients are closed afterwards, and a traceback
    logged during the test fails that test.
    """
    server = _module_server
    if server.proc is None or server.proc.poll() is not None:
        pytest.fail(f"the shared ipe process has exited:\n{server.log()}")
    offset = len(server.log())
    yield server
    for client in server.clients:
        client.close()
    server.clients.clear()
    log = server.log()[offset:]
    assert "Traceback" not in log, f"{server.log_path}:\n{log}"
