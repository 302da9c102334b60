"""ipe processes for tests: `python -m ipe` or gunicorn, on free loopback ports.

Nothing here mocks ipe: every integration test talks to a real process over real sockets.
"""

from __future__ import annotations

import copy
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pusher
import yaml

from support.apps import APP_ID, KEY, POOL_APPS, ROOT, SECRET, config_with
from support.client import WsClient

# 64 hex digits: an HMAC-SHA256 (channel auth, REST auth_signature, webhook signature).
SIGNATURE = re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")


def run_ipe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m ipe ARGS` (a command that exits by itself: --check-config, reload, apps)
    to its end, with the environment less PORT and IPE_CONFIG (plus `env`)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("PORT", "IPE_CONFIG")}
    return subprocess.run(
        [sys.executable, "-m", "ipe", *args],
        cwd=ROOT,
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


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

    # The app `ws()` and `sdk()` use by default (an AppServer has its own).
    app_id, key, secret = APP_ID, KEY, SECRET

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
        """Start the process and (with `wait`) wait for /health.

        free_port() only finds a port free at that moment: any process on the machine (other
        test workers included) may take it before ipe binds it. Then ipe exits at once; that
        start is retried on a fresh port, twice at most, with the failed log set aside.
        """
        for attempt in range(3):
            self.spawn()
            if not wait:
                break
            try:
                self.wait_healthy()
                break
            except AssertionError:
                if attempt == 2 or not self._lost_its_port():
                    raise
        return self

    def spawn(self) -> None:
        """Start the process on self.port (subclasses start it another way)."""
        with open(self.log_path, "ab") as log:
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

    def _lost_its_port(self) -> bool:
        """True (and a fresh port) when the process exited because its port was taken."""
        assert self.proc is not None
        if self.proc.poll() is None or "Address already in use" not in self.log():
            return False
        self.log_path.rename(self.log_path.with_suffix(f".port-{self.port}-taken"))
        self.port = free_port()
        return True

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
        return _scrape(self)[1]

    def metric(self, name: str, required: bool = False) -> float:
        """`metric(self, name, required)`: see there."""
        return metric(self, name, required)

    def ready(self) -> int:
        """The HTTP status of GET /ready (200 serving, 503 not ready or draining)."""
        return ready_status(self)

    def log_since(self, offset: int) -> str:
        return self.log()[offset:]

    def sdk(
        self,
        app_id: str | None = None,
        key: str | None = None,
        secret: str | None = None,
        **kwargs: Any,
    ) -> pusher.Pusher:
        """The official Python server SDK pointed at this server (default: this server's app)."""
        return pusher.Pusher(
            app_id=app_id or self.app_id,
            key=key or self.key,
            secret=secret or self.secret,
            host="127.0.0.1",
            port=self.port,
            ssl=False,
            **kwargs,
        )

    def ws(
        self,
        key: str | None = None,
        query: str = "protocol=7&client=js&version=8.6.0&flash=false",
        path: str | None = None,
        origin: str | None = None,
        **kwargs: Any,
    ) -> WsClient:
        """A raw WebSocket client connected to this server (or to `origin`, e.g. a wss:// one),
        for app `key` (default: this server's)."""
        key = key or self.key
        path = path if path is not None else f"/app/{key}"
        origin = origin or f"ws://127.0.0.1:{self.port}"
        url = f"{origin}{path}" + (f"?{query}" if query else "")
        client = WsClient(url, key=key, **kwargs)
        self.clients.append(client)
        return client


class AppServer:
    """One app of a shared IpeServer, standing in for a server of its own: `ws()` and `sdk()`
    default to this app's key and credentials; everything else is the shared server's."""

    def __init__(self, server: IpeServer, app: dict[str, Any]) -> None:
        self.shared = server
        self.app_id, self.key, self.secret = app["app_id"], app["key"], app["secret"]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.shared, name)

    def ws(self, key: str | None = None, **kwargs: Any) -> WsClient:
        return IpeServer.ws(self, key, **kwargs)  # type: ignore[arg-type]

    def sdk(self, *args: Any, **kwargs: Any) -> pusher.Pusher:
        return IpeServer.sdk(self, *args, **kwargs)  # type: ignore[arg-type]


class Gunicorn(IpeServer):
    """ipe under `gunicorn -c gunicorn.conf.py ipe.wsgi:app`, as the Procfile runs it."""

    def spawn(self) -> None:
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


def parse_sample(line: str) -> tuple[str, dict[str, str], float]:
    """One line of the Prometheus text format: (name, labels, value)."""
    head, _, value = line.rpartition(" ")
    name, _, labels = head.partition("{")
    pairs = re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels)
    return name, dict(pairs), float(value)


def _scrape(server: IpeServer) -> tuple[set[str], list[tuple[str, dict[str, str], float]]]:
    """(the metric families /metrics declares, every sample)."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    families = {line.split()[2] for line in lines if line.startswith("# TYPE ")}
    return families, [parse_sample(line) for line in lines if line and line[0] != "#"]


def metric(server: IpeServer, name: str, required: bool = False) -> float:
    """The sum of one metric's series on the server's /metrics whose labels include those
    given (`ipe_x_total{code="4100"}`; a bare name sums every series, e.g. over apps).

    No series yet counts 0 when /metrics declares the family (a labelled counter before its
    first increment), unless `required`; a name /metrics does not declare at all fails, so a
    typo cannot pass as zero.
    """
    wanted_name, wanted = parse_sample(name + " 0")[:2]
    families, samples = _scrape(server)
    values = [
        value
        for sample_name, labels, value in samples
        if sample_name == wanted_name and wanted.items() <= labels.items()
    ]
    if values:
        return sum(values)
    assert not required, f"no {name} on /metrics of {server.url}"
    declared = any(wanted_name == f or wanted_name.startswith(f + "_") for f in families)
    assert declared, f"/metrics of {server.url} declares no {name}"
    return 0.0


def ready_status(server: IpeServer) -> int:
    """The HTTP status of GET /ready."""
    try:
        with urllib.request.urlopen(server.url + "/ready", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def wait_ready(server: IpeServer, timeout: float = 15.0) -> None:
    """Wait until GET /ready answers 200 (e.g. subscribed to Redis)."""
    wait_until(lambda: ready_status(server) == 200, timeout, 0.05, f"{server.url}/ready = 200")


def assert_no_traceback(server: IpeServer, since: int = 0) -> None:
    """Fail when the server logged a traceback (after log offset `since`)."""
    if not server.allow_tracebacks:
        log = server.log()[since:]
        assert "Traceback" not in log, f"{server.log_path}:\n{log}"


def stop_all(servers: list[IpeServer]) -> None:
    """Close every client, stop every server, then check their logs."""
    for server in servers:
        for client in server.clients:
            client.close()
        server.clients.clear()
        server.stop()
    for server in servers:
        assert_no_traceback(server)


@contextmanager
def running(
    workdir: Path, config: dict[str, Any] | None = None, name: str = "ipe", **kwargs: Any
) -> Iterator[IpeServer]:
    """One started ipe process, e.g. for a whole test module; stopped and its log checked
    at the end."""
    server = IpeServer(config or config_with(), workdir, name, **kwargs).start()
    try:
        yield server
    finally:
        stop_all([server])


@contextmanager
def pooled(
    workdir: Path, config: dict[str, Any] | None = None, name: str = "pool"
) -> Iterator[IpeServer]:
    """`running`, with POOL_APPS added to `config` and handed out one per test by the
    `app_server` fixture (see tests/conftest.py)."""
    config = config or config_with()
    config["apps"] = config["apps"] + copy.deepcopy(POOL_APPS)
    with running(workdir, config, name) as server:
        server.free_apps = list(POOL_APPS)  # type: ignore[attr-defined]
        yield server


@contextmanager
def within_test(server: IpeServer) -> Iterator[IpeServer]:
    """One test's use of a shared server: fails at once if the process has died, then closes
    the test's clients and checks the log it wrote meanwhile."""
    if server.proc is None or server.proc.poll() is not None:
        raise AssertionError(f"the shared ipe process has exited:\n{server.log()}")
    offset = len(server.log())
    try:
        yield server
    finally:
        for client in server.clients:
            client.close()
        server.clients.clear()
    assert_no_traceback(server, offset)
