"""Helpers for many ipe nodes sharing Redis: real `redis-server` processes on free ports.

Each test gets its own Redis (or Redis Cluster), so nothing leaks between tests. The
heartbeat and janitor intervals are shortened so that a dead node is noticed in seconds.
The fixtures are plain functions here; a test module declares those it uses with
`FIXTURES`, e.g. `make_redis, redis_server, nodes = FIXTURES` (a conftest.py here would
shadow tests/conftest.py for every `from conftest import`).
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import KEY, SECRET, IpeServer, WsClient, config_with, wait_until

REDIS_SERVER = shutil.which("redis-server") or (
    "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
)
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"

# Fast failure detection for tests; the defaults (5 s, 15 s) are for production.
FAST = {
    "heartbeat_interval": 0.5,
    "node_timeout": 3,
    "health_check_interval": 1,
    "timeout": 1,
}


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_low_port() -> int:
    """A free port whose +10000 (a Redis Cluster bus port) is free too."""
    while True:
        port = random.randint(20000, 45000)
        if _free(port) and _free(port + 10000):
            return port


class RedisServer:
    """One `redis-server` process on a loopback port, without persistence."""

    def __init__(self, workdir: Path, name: str, args: tuple[str, ...] = ()) -> None:
        self.port = free_low_port()
        self.dir = workdir / name
        self.dir.mkdir()
        self.log_path = self.dir / "redis.log"
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.tls: dict[str, Any] = {}

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        assert REDIS_SERVER is not None
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    REDIS_SERVER,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.dir),
                    *self.args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._answers, 10, 0.05, f"redis-server on port {self.port}")
        return self

    def use_tls(self) -> Path:
        """Serve TLS only, with a throwaway self-signed certificate; returns the cert path."""
        cert, key = self.dir / "cert.pem", self.dir / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
            + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
            + ["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
            check=True,
            capture_output=True,
        )
        self.args += ("--port", "0", "--tls-port", str(self.port))
        self.args += ("--tls-cert-file", str(cert), "--tls-key-file", str(key))
        self.args += ("--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no")
        self.tls = {"ssl": True, "ssl_ca_certs": str(cert)}
        return cert

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"redis-server exited:\n{self.log_path.read_text()}")
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, **self.tls)

    def stop(self) -> None:
        """Stop the server (SIGTERM); nothing is saved, so a restart starts empty."""
        if self.proc is not None and self.proc.poll() is None:
            if self.paused:
                self.resume()
            self.proc.terminate()
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def make_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start redis-server processes (skips the test when redis-server is not installed)."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    servers: list[RedisServer] = []

    def make(*args: str, start: bool = True) -> RedisServer:
        server = RedisServer(tmp_path, f"redis{len(servers)}", args)
        servers.append(server)
        return server.start() if start else server

    yield make
    for server in servers:
        server.kill()


def redis_server(make_redis: Callable[..., RedisServer]) -> RedisServer:
    """One redis-server."""
    return make_redis()


def redis_config(url: str | None = None, **redis: Any) -> dict[str, Any]:
    """BASE_CONFIG with a `redis:` section using the fast test intervals."""
    section: dict[str, Any] = {**FAST, **redis}
    if url is not None:
        section["url"] = url
    return config_with(redis=section)


def nodes(
    redis_server: RedisServer, make_server: Callable[..., IpeServer]
) -> Callable[..., list[IpeServer]]:
    """Start `n` ipe nodes sharing `redis_server`, each ready (subscribed to Redis).

    Redis comes first, so it is stopped after the nodes: their shutdown still reaches it."""

    def start(n: int = 2, **redis: Any) -> list[IpeServer]:
        servers = [
            make_server(redis_config(redis_server.url, **redis), name=f"node{i}") for i in range(n)
        ]
        for server in servers:
            wait_ready(server)
        return servers

    return start


def ready_status(server: IpeServer) -> int:
    """The HTTP status of GET /ready."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(server.url + "/ready", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def wait_ready(server: IpeServer, timeout: float = 15.0) -> None:
    wait_until(lambda: ready_status(server) == 200, timeout, 0.05, f"{server.url}/ready = 200")


def presence_auth(socket_id: str, channel: str, user_id: str, info: Any = None) -> tuple[str, str]:
    """(auth, channel_data) for a presence subscription, signed with the main app's secret."""
    import hashlib
    import hmac

    member: dict[str, Any] = {"user_id": user_id}
    if info is not None:
        member["user_info"] = info
    channel_data = json.dumps(member, separators=(",", ":"))
    signed = f"{socket_id}:{channel}:{channel_data}"
    digest = hmac.new(SECRET.encode(), signed.encode(), hashlib.sha256).hexdigest()
    return f"{KEY}:{digest}", channel_data


def private_auth(socket_id: str, channel: str) -> str:
    import hashlib
    import hmac

    digest = hmac.new(
        SECRET.encode(), f"{socket_id}:{channel}".encode(), hashlib.sha256
    ).hexdigest()
    return f"{KEY}:{digest}"


def signin(client: WsClient, user_id: str, watchlist: list[str] | None = None) -> dict[str, Any]:
    """Sign `client` in as `user_id` (with an optional watchlist); returns signin_success."""
    import hashlib
    import hmac

    user: dict[str, Any] = {"id": user_id}
    if watchlist is not None:
        user["watchlist"] = watchlist
    user_data = json.dumps(user, separators=(",", ":"))
    signed = f"{client.socket_id}::user::{user_data}"
    digest = hmac.new(SECRET.encode(), signed.encode(), hashlib.sha256).hexdigest()
    client.send("pusher:signin", {"auth": f"{KEY}:{digest}", "user_data": user_data})
    return client.expect("pusher:signin_success")


def join(server: IpeServer, channel: str, user_id: str, info: Any = None) -> WsClient:
    """A new client on `server`, subscribed to a presence channel as `user_id`."""
    client = server.ws()
    assert client.socket_id is not None
    auth, data = presence_auth(client.socket_id, channel, user_id, info)
    reply = client.subscribe(channel, auth, data)
    assert reply["event"] == "pusher_internal:subscription_succeeded", reply
    client.sync()  # the node has handled the whole subscribe, member_added published included
    return client


def settle(*servers: IpeServer) -> None:
    """Return once every node has handled every message published before (a barrier)."""
    clients = []
    for server in servers:
        client = server.ws()
        client.subscribe("settle")
        clients.append(client)
    servers[0].sdk().trigger("settle", "done", "")
    for client in clients:
        client.expect("done", "settle")
        client.close()


def roster(message: dict[str, Any]) -> dict[str, Any]:
    """The presence hash of a subscription_succeeded message."""
    return json.loads(message["data"])["presence"]  # type: ignore[no-any-return]


def subscription_count(client: WsClient, channel: str, timeout: float | None = None) -> int:
    """The number in the next frame, a `pusher_internal:subscription_count` of `channel`."""
    message = client.expect("pusher_internal:subscription_count", channel, timeout)
    return json.loads(message["data"])["subscription_count"]  # type: ignore[no-any-return]


def rest_users(server: IpeServer, channel: str) -> set[str]:
    users = server.sdk().users_info(channel)["users"]
    return {u["id"] for u in users}


def occupied(server: IpeServer, channel: str) -> bool:
    return bool(server.sdk().channel_info(channel)["occupied"])


def metric(server: IpeServer, name: str) -> float:
    """The value of a metric in the server's /metrics (summed over its labels)."""
    return server.metric(name, required=True)


def after_sweeps(*servers: IpeServer) -> None:
    """Return once every server's janitor has completed one more pass (a barrier)."""
    before = [metric(s, "ipe_janitor_sweeps_total") for s in servers]
    for server, count in zip(servers, before, strict=True):
        wait_until(lambda s=server, c=count: metric(s, "ipe_janitor_sweeps_total") > c, 15)


FIXTURES = tuple(pytest.fixture(f) for f in (make_redis, redis_server, nodes))
