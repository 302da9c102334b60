"""Real `redis-server` processes on free loopback ports, and ipe nodes that share one.

Each test (or module) gets its own Redis or Redis Cluster, so nothing leaks between them. The
heartbeat and janitor intervals are shortened so that a dead node is noticed in seconds.
"""

from __future__ import annotations

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

from support.apps import config_with
from support.server import IpeServer, wait_ready, wait_until

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
