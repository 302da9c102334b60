"""`app_manager: driver: http`: ipe asks a real HTTP endpoint (served by the test) for each app,
signed like a Pusher REST call, and caches the answers."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from support import ConnectionClosed, IpeServer, config_with, wait_until

SHARED = "endpoint-secret"


class AppEndpoint:
    """A real HTTP app endpoint: checks each request's signature, answers from `apps`."""

    def __init__(self) -> None:
        self.apps: dict[str, dict[str, Any]] = {}
        self.asked: Counter[str] = Counter()
        self.bad_signatures = 0
        self.lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                endpoint.answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ipe/apps"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        path, _, query = handler.path.partition("?")
        params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
        signature = params.pop("auth_signature", "")
        signed = "&".join(f"{k}={v}" for k, v in sorted(params.items()))
        expected = hmac.new(SHARED.encode(), f"GET\n{path}\n{signed}".encode(), hashlib.sha256)
        if not hmac.compare_digest(expected.hexdigest(), signature):
            with self.lock:
                self.bad_signatures += 1
            return self._send(handler, 401, {"error": "bad signature"})
        wanted = params.get("key") or params.get("app_id") or ""
        with self.lock:
            self.asked[wanted] += 1
            found = next((a for a in self.apps.values() if wanted in (a["key"], a["app_id"])), None)
        if found is None:
            return self._send(handler, 404, {"error": "no such app"})
        return self._send(handler, 200, found)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Any:
    made = AppEndpoint()
    made.apps["4001"] = {"app_id": "4001", "key": "hk", "secret": "hs", "name": "Remote"}
    yield made
    made.close()


def _server(make_server: Any, endpoint: AppEndpoint, **manager: Any) -> IpeServer:
    config = config_with(
        apps=[],
        app_manager={"driver": "http", "url": endpoint.url, "secret": SHARED, **manager},
    )
    return make_server(config)


def test_apps_come_from_the_endpoint_one_lookup_per_key(make_server: Any, endpoint: Any) -> None:
    server = _server(make_server, endpoint)
    clients = [server.ws(key="hk") for _ in range(20)]
    assert all(c.established is not None for c in clients)
    assert endpoint.asked["hk"] == 1  # a burst of connections costs one look-up
    for client in clients:
        client.subscribe("remote")
    assert server.sdk(app_id="4001", key="hk", secret="hs").trigger("remote", "e", {}) == {}
    for client in clients:
        client.wait_for("e", "remote")
    unknown = [server.ws(key="nope") for _ in range(10)]
    assert all(c.first["data"]["code"] == 4001 for c in unknown)
    assert endpoint.asked["nope"] == 1  # the miss is remembered for miss_ttl
    assert endpoint.bad_signatures == 0


def test_an_unreachable_endpoint_leaves_cached_apps_served(make_server: Any, endpoint: Any) -> None:
    server = _server(make_server, endpoint, cache_ttl=0.2)
    assert server.ws(key="hk").established is not None
    endpoint.close()
    wait_until(lambda: "app source http failed" in server.log(), 5, message="the failure log")
    assert server.ws(key="hk").established is not None
    assert server.sdk(app_id="4001", key="hk", secret="hs").trigger("remote", "e", {}) == {}
    import urllib.request

    with urllib.request.urlopen(server.url + "/ready", timeout=5) as answer:
        ready = json.loads(answer.read())
    assert ready["ready"] is True and "unreachable" in ready["apps"]


def test_a_disabled_app_is_closed_once_the_cache_expires(make_server: Any, endpoint: Any) -> None:
    server = _server(make_server, endpoint, cache_ttl=0.3)
    client = server.ws(key="hk")
    endpoint.apps["4001"] = {**endpoint.apps["4001"], "enabled": False}
    with pytest.raises(ConnectionClosed) as closed:
        client.wait_for("never", timeout=5)
    assert closed.value.code == 4003
    assert server.ws(key="hk").first["data"]["code"] == 4003


def test_the_driver_refuses_a_config_without_its_secret(make_server: Any) -> None:
    config = config_with(apps=[], app_manager={"driver": "http", "url": "http://127.0.0.1:1/"})
    server = make_server(config, start=False)
    server.start(wait=False)
    assert server.proc.wait(20) == 2
    assert "app_manager.secret: required by driver http" in server.log()
