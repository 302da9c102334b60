"""pusher-js's browser build in a real headless Chromium with WebSockets removed from the page:
it falls back to xhr_streaming by itself (or polls when told to), cross-origin to ipe, and
receives the events the Python SDK triggers on a public and a private channel.

The test serves the page, pusher-js's dist/web build and the channel auth endpoint (signed with
the Python SDK) from its own HTTP server, a different origin than ipe's, so every request to ipe
is a CORS one and `allowed_origins` decides. Chromium is Debian's `chromium` (scripts/test
installs it), driven by puppeteer-core from tests/e2e/scenarios/browser.js.
"""

from __future__ import annotations

import copy
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest
from nodejs import E2E_DIR, run_scenario
from support import APP_ID, BASE_CONFIG, KEY, IpeServer, config_with
from support.auth import sdk_for

PUSHER_JS = E2E_DIR / "node_modules" / "pusher-js" / "dist" / "web" / "pusher.min.js"

# The app's page: pusher-js as a web app would set it up, pointed at ipe for both the WebSocket
# and the HTTP transports; what it sees is kept in `window.page` for the scenario to read.
PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>ipe over HTTP</title></head>
<body>
<script src="/pusher.min.js"></script>
<script>
  const q = new URLSearchParams(location.search);
  window.page = { states: [], errors: [], subscribed: [], received: [] };
  const options = {
    cluster: '',
    wsHost: q.get('host'), wsPort: Number(q.get('port')),
    httpHost: q.get('host'), httpPort: Number(q.get('port')),
    forceTLS: false,
    enableStats: false,
    channelAuthorization: { endpoint: '/pusher/auth', transport: 'ajax' },
  };
  if (q.get('transports')) options.enabledTransports = JSON.parse(q.get('transports'));
  window.pusher = new Pusher(q.get('key'), options);
  pusher.connection.bind('state_change', (s) => page.states.push(s.current));
  // A plain copy of each error, as the scenario reads them back through JSON.
  pusher.connection.bind('error', (e) => page.errors.push(JSON.parse(JSON.stringify(e))));
  for (const name of JSON.parse(q.get('channels'))) {
    const channel = pusher.subscribe(name);
    channel.bind('pusher:subscription_succeeded', () => page.subscribed.push(name));
    channel.bind('news', (data) => page.received.push({ channel: name, data }));
  }
</script>
</body></html>
"""


class PageServer:
    """The app's web server: the page, pusher-js, and POST /pusher/auth (the Python SDK signs)."""

    def __init__(self) -> None:
        self.auth_requests: list[str] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path == "/":
                    self._answer(200, "text/html; charset=utf-8", PAGE)
                elif path == "/pusher.min.js":
                    self._answer(200, "application/javascript", PUSHER_JS.read_bytes())
                elif path == "/favicon.ico":  # Chromium asks; a 404 would be a console error
                    self._answer(204, "image/x-icon", b"")
                else:
                    self._answer(404, "text/plain", b"not found")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode())
                channel = form.get("channel_name", [""])[0]
                socket_id = form.get("socket_id", [""])[0]
                if self.path != "/pusher/auth" or not channel.startswith("private-"):
                    self._answer(403, "text/plain", b"forbidden")
                    return
                server.auth_requests.append(channel)
                answer = sdk_for(KEY).authenticate(channel, socket_id)
                self._answer(200, "application/json", json.dumps(answer).encode())

            def _answer(self, status: int, kind: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # quiet: pytest shows failures itself
                pass

        return Handler

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None or not (E2E_DIR / "node_modules" / "puppeteer-core").is_dir():
        pytest.fail("chromium and tests/e2e/node_modules are required: run scripts/test", False)
    return path


def allowing(*origins: str) -> dict[str, Any]:
    """BASE_CONFIG with the main app's `allowed_origins` set."""
    apps = copy.deepcopy(BASE_CONFIG["apps"])
    for app in apps:
        if app["app_id"] == APP_ID:
            app["allowed_origins"] = list(origins)
    return config_with(apps=apps)


@pytest.fixture
def page_server() -> Iterator[PageServer]:
    made = PageServer()
    yield made
    made.close()


def in_chromium(
    server: IpeServer, page: PageServer, transports: str = "", expect: str = "events"
) -> dict[str, Any]:
    def trigger(data: dict[str, Any]) -> None:
        sdk = server.sdk()
        assert sdk.trigger(data["public"], "news", {"to": "public"}) == {}
        assert sdk.trigger(data["private"], "news", {"to": "private"}) == {}

    steps: dict[str, Callable[[Any], Any]] = {"trigger": trigger}
    env = {
        "CHROMIUM": chromium(),
        "PAGE_URL": page.origin,
        "BROWSER_TRANSPORTS": transports,
        "BROWSER_EXPECT": expect,
    }
    return run_scenario(server, "browser", steps, env=env, wait_ms=15000, deadline=60)


@pytest.mark.parametrize(
    ("transports", "used"),
    [("", "xhr_streaming"), ('["xhr_polling"]', "xhr_polling")],
    ids=["default-transports", "xhr_polling"],
)
def test_a_page_without_websockets_receives_events(
    make_server: Callable[..., IpeServer], page_server: PageServer, transports: str, used: str
) -> None:
    server = make_server(allowing(page_server.origin))
    seen = in_chromium(server, page_server, transports)
    assert seen["websocket_api"] == "undefined"
    assert seen["websockets_created"] == 0
    assert seen["transport"] == used
    assert seen["request_kinds"] == sorted({used.replace("_polling", ""), "xhr_send"})
    assert len(seen["subscribed"]) == 2
    assert seen["received"] == [
        {"channel": seen["subscribed"][0], "data": {"to": "public"}},
        {"channel": seen["subscribed"][1], "data": {"to": "private"}},
    ]
    assert page_server.auth_requests == [seen["subscribed"][1]]
    assert seen["states"][-1] == "connected"
    assert seen["page_errors"] == []


def test_a_page_from_an_origin_not_allowed_is_refused(
    make_server: Callable[..., IpeServer], page_server: PageServer
) -> None:
    server = make_server(allowing("https://app.example.com"))
    seen = in_chromium(server, page_server, expect="refusal")
    assert seen["websocket_api"] == "undefined"
    # pusher-js reports it as over a WebSocket: the transport's error carrying the pusher:error.
    assert seen["errors"][0]["error"]["data"] == {"code": 4009, "message": "Origin not allowed"}
    assert seen["states"] == ["disconnected"]
