"""pusher-js's HTTP fallback transports on the wire: the framing pusher-js parses, bounded
sessions, CORS, refusals, cleanup of abandoned sessions, and fan-out to 100 HTTP subscribers.
(pusher-js itself runs every scenario over them in tests/e2e/test_http_transports.py.)"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from support import IpeServer, config_with, wait_until
from support.tls import tls_listener

QUERY = "?protocol=7&client=js&version=8.6.0&flash=false"


class HttpSession:
    """A raw client of one HTTP session: polls (or streams) and sends like pusher-js does."""

    def __init__(self, server: IpeServer, key: str = "demo-key", sid: str = "123/abcdefgh") -> None:
        self.base = f"{server.url}/pusher/app/{key}/{sid}"
        self.http = requests.Session()

    def poll(self, timeout: float = 30) -> list[str]:
        """One xhr poll: its lines."""
        answer = self.http.post(f"{self.base}/xhr{QUERY}", timeout=timeout)
        assert answer.status_code == 200, answer.text
        return answer.text.splitlines()

    def events(self, timeout: float = 30) -> list[dict[str, Any]]:
        """Poll until a line of messages arrives; its events."""
        while True:
            for line in self.poll(timeout):
                if line.startswith("a"):
                    return [json.loads(m) for m in json.loads(line[1:])]
                assert line == "h", line

    def send(self, event: str, data: Any = None, channel: str | None = None) -> int:
        message: dict[str, Any] = {"event": event, "data": data}
        if channel is not None:
            message["channel"] = channel
        body = json.dumps([json.dumps(message)])
        return self.http.post(f"{self.base}/xhr_send", data=body, timeout=10).status_code

    def open(self) -> str:
        """Open the session; the socket id from connection_established."""
        assert self.poll() == ["o"]
        (established,) = self.events()
        assert established["event"] == "pusher:connection_established"
        return str(json.loads(established["data"])["socket_id"])


@pytest.fixture
def quick(make_server: Any) -> IpeServer:
    return make_server(config_with(http_session_timeout=2))


def test_a_polling_session_opens_once_subscribes_and_receives(quick: IpeServer) -> None:
    session = HttpSession(quick)
    socket_id = session.open()
    assert session.send("pusher:subscribe", {"channel": "orders"}) == 204
    (succeeded,) = session.events()
    assert succeeded["event"] == "pusher_internal:subscription_succeeded"
    assert quick.sdk().trigger("orders", "made", {"n": 1}) == {}
    (made,) = session.events()
    assert (made["event"], json.loads(made["data"])) == ("made", {"n": 1})
    # Excluded by its socket id, like a WebSocket.
    quick.sdk().trigger("orders", "not-for-me", {}, socket_id=socket_id)
    quick.sdk().trigger("orders", "for-me", {})
    (only,) = session.events()
    assert only["event"] == "for-me"
    assert session.send("pusher:ping", {}) == 204
    assert session.events()[0]["event"] == "pusher:pong"


def test_a_stream_opens_once_and_a_recycled_stream_does_not_open_again(quick: IpeServer) -> None:
    url = f"{quick.url}/pusher/app/demo-key/7/stream01/xhr_streaming{QUERY}"
    base = url.split("/xhr_streaming")[0]

    def send(event: str, data: Any) -> None:
        body = json.dumps([json.dumps({"event": event, "data": data})])
        assert requests.post(f"{base}/xhr_send", data=body, timeout=10).status_code == 204

    with requests.post(url, stream=True, timeout=10) as first:
        lines = first.iter_lines()
        assert next(lines) == b"o"
        assert b"connection_established" in next(lines)
        send("pusher:subscribe", {"channel": "orders"})
        assert b"subscription_succeeded" in next(lines)
    # pusher-js replaces a full stream with a new request for the same session.
    quick.sdk().trigger("orders", "between", {})
    with requests.post(url, stream=True, timeout=10) as second:
        lines = second.iter_lines()
        send("pusher:ping", {})
        assert next(lines) == b"h"  # no "o" again: pusher-js would drop the session
        seen = b""
        while b"pusher:pong" not in seen:
            line = next(lines)
            assert line.startswith(b"a"), line
            seen += line
        assert b"between" in seen  # what came between the two streams waited for the second


def test_a_full_stream_leaves_what_follows_to_the_next_one(quick: IpeServer) -> None:
    """pusher-js aborts a stream once it has read more than 256 KB of it and opens another for
    the session: a line written to the aborted one would be lost, so what comes after the
    line that filled a stream waits for the next stream."""
    url = f"{quick.url}/pusher/app/demo-key/7/full0001/xhr_streaming{QUERY}"
    base = url.split("/xhr_streaming")[0]
    sdk = quick.sdk()
    subscribe = json.dumps([json.dumps({"event": "pusher:subscribe", "data": {"channel": "bulk"}})])
    with requests.post(url, stream=True, timeout=10) as first:
        lines = first.iter_lines()
        read = 0  # characters of the response, as pusher-js counts its responseText

        def line() -> bytes:
            nonlocal read
            got: bytes = next(lines)
            read += len(got) + 1
            return got

        assert line() == b"o"
        assert b"connection_established" in line()
        assert requests.post(f"{base}/xhr_send", data=subscribe, timeout=10).status_code == 204
        assert b"subscription_succeeded" in line()
        while read <= 256 * 1024:  # pusher-js's MAX_BUFFER_LENGTH
            sdk.trigger("bulk", "fill", "x" * 9000)
            assert b"fill" in line()
        sdk.trigger("bulk", "after", {})
        with requests.post(url, stream=True, timeout=10) as second:
            later = second.iter_lines()
            assert next(later) == b"h"
            assert b"after" in next(later)
        assert list(lines) == []  # the full stream ended with nothing more on it


def test_refusals_are_an_error_then_a_close_frame(quick: IpeServer) -> None:
    session = HttpSession(quick, key="no-such-key")
    assert session.poll() == ["o"]
    (error,) = session.events()
    assert error["event"] == "pusher:error" and error["data"]["code"] == 4001
    assert session.poll() == ['c[4001,"Application does not exist: no-such-key"]']


def test_bad_requests_get_statuses_not_tracebacks(quick: IpeServer) -> None:
    base = f"{quick.url}/pusher/app/demo-key/1/unknown0"
    assert requests.post(f"{base}/xhr_send", data="[]", timeout=5).status_code == 404
    session = HttpSession(quick)
    session.open()
    for body in ("not json", '{"a": 1}', "[1, 2]", ""):
        answer = session.http.post(f"{session.base}/xhr_send", data=body, timeout=5)
        assert answer.status_code == 400, body
    assert requests.put(f"{base}/xhr", timeout=5).status_code == 405
    # A message that is not Pusher's JSON gets the protocol's error, over the same session.
    answer = session.http.post(f"{session.base}/xhr_send", data='["{nope"]', timeout=5)
    assert answer.status_code == 204
    assert session.events()[0]["event"] == "pusher:error"


def test_cors_for_the_browser_build(quick: IpeServer) -> None:
    url = f"{quick.url}/pusher/app/demo-key/1/corsabcd/xhr_send"
    origin = "https://app.example.com"
    answer = requests.options(
        url, headers={"Origin": origin, "Access-Control-Request-Method": "POST"}, timeout=5
    )
    assert answer.status_code == 204
    assert answer.headers["Access-Control-Allow-Origin"] == origin
    assert answer.headers["Access-Control-Allow-Credentials"] == "true"
    assert "content-type" in answer.headers["Access-Control-Allow-Headers"].lower()
    poll = requests.post(url.replace("xhr_send", "xhr") + QUERY, headers={"Origin": origin})
    assert poll.headers["Access-Control-Allow-Origin"] == origin


def test_an_abandoned_session_is_cleaned_up_like_a_dropped_socket(quick: IpeServer) -> None:
    watcher = quick.ws()
    sdk = quick.sdk()
    auth = sdk.authenticate(
        channel="presence-room", socket_id=watcher.socket_id, custom_data={"user_id": "w"}
    )
    watcher.subscribe("presence-room", auth["auth"], auth["channel_data"])
    session = HttpSession(quick)
    socket_id = session.open()
    auth = sdk.authenticate(
        channel="presence-room", socket_id=socket_id, custom_data={"user_id": "gone"}
    )
    session.send("pusher:subscribe", {"channel": "presence-room", **auth})
    assert session.events()[0]["event"] == "pusher_internal:subscription_succeeded"
    watcher.wait_for("pusher_internal:member_added", "presence-room")
    wait_until(lambda: quick.metric("ipe_http_sessions") == 1, 5, message="one session")
    # The client vanishes without a word and without closing anything: within
    # http_session_timeout (2 s) + 5 s its member is removed and its session freed.
    removed = watcher.wait_for("pusher_internal:member_removed", "presence-room", timeout=7)
    assert json.loads(removed["data"]) == {"user_id": "gone"}
    users = sdk.users_info("presence-room")
    assert users == {"users": [{"id": "w"}]}
    wait_until(lambda: quick.metric("ipe_http_sessions") == 0, 5, message="no session")
    assert quick.metric("ipe_connections") == 1  # the watcher


def test_a_session_whose_client_hangs_up_ends_at_once(make_server: Any) -> None:
    server = make_server(config_with(http_session_timeout=60))  # the timeout cannot do it
    watcher = server.ws()
    watcher.subscribe("left")
    raw = socket.create_connection(("127.0.0.1", server.port))
    raw.sendall(
        b"POST /pusher/app/demo-key/5/hangup01/xhr_streaming?protocol=7 HTTP/1.1\r\n"
        b"Host: x\r\nContent-Length: 0\r\n\r\n"
    )
    wait_until(lambda: b"connection_established" in raw.recv(4096), 5, message="the stream")
    wait_until(lambda: server.metric("ipe_http_sessions") == 1, 5, message="the session")
    raw.close()  # what pusher-js's disconnect() does: abort the request
    wait_until(lambda: server.metric("ipe_http_sessions") == 0, 5, message="its end")


def test_too_many_sessions_are_refused_with_503(make_server: Any) -> None:
    server = make_server(config_with(http_max_sessions=2))
    for n in range(2):
        HttpSession(server, sid=f"1/full{n}").open()
    answer = requests.post(f"{server.url}/pusher/app/demo-key/1/full9/xhr{QUERY}", timeout=5)
    assert answer.status_code == 503 and answer.json() == {"error": "Too many HTTP sessions"}
    assert server.ws().established is not None  # WebSockets are not affected


def test_a_session_that_does_not_poll_is_closed_with_4100(make_server: Any) -> None:
    server = make_server(config_with(max_outbox_bytes=4096))
    session = HttpSession(server)
    session.open()
    session.send("pusher:subscribe", {"channel": "flood"})
    assert session.events()[0]["event"] == "pusher_internal:subscription_succeeded"
    sdk = server.sdk()
    for n in range(20):
        sdk.trigger("flood", "big", {"n": n, "pad": "x" * 400})
    lines = session.poll()
    while not lines[-1].startswith("c"):
        lines = session.poll()
    assert lines[-1] == 'c[4100,"Client is not reading fast enough"]'


def open_stream(server: IpeServer, sid: str) -> socket.socket:
    """A raw xhr_streaming request, read up to its connection_established."""
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    raw.sendall(
        f"POST /pusher/app/demo-key/{sid}/xhr_streaming?protocol=7 HTTP/1.1\r\n"
        "Host: x\r\nContent-Length: 0\r\n\r\n".encode()
    )
    got = b""
    while b"connection_established" not in got:
        chunk = raw.recv(4096)
        assert chunk, got
        got += chunk
    return raw


def subscribe(server: IpeServer, sid: str, channel: str) -> None:
    body = json.dumps([json.dumps({"event": "pusher:subscribe", "data": {"channel": channel}})])
    url = f"{server.url}/pusher/app/demo-key/{sid}/xhr_send"
    assert requests.post(url, data=body, timeout=10).status_code == 204


def test_a_stream_whose_client_does_not_read_is_closed_with_4100(make_server: Any) -> None:
    """The stream's socket is written from the publishing path: what the kernel (or the
    client, past a full stream's 256 KB) does not take waits within max_outbox_bytes, then
    the session is closed (4100) and let go."""
    server = make_server(config_with(max_outbox_bytes=4096, http_timeout=1, http_session_timeout=2))
    raw = open_stream(server, "3/notread0")
    subscribe(server, "3/notread0", "flood")
    got = b""
    while b"subscription_succeeded" not in got:
        got += raw.recv(4096)
    sdk = server.sdk()
    pad = "x" * 9000
    for n in range(3000):  # far more than the kernel's buffers hold
        sdk.trigger("flood", "big", {"n": n, "pad": pad})
        if n % 10 == 9 and server.metric("ipe_slow_consumer_closes_total"):
            break
    assert server.metric("ipe_slow_consumer_closes_total") == 1
    # The stream ends (its writer gives up after http_timeout, a full one after RECYCLE_WAIT,
    # 10 s), and the session after http_session_timeout.
    wait_until(lambda: server.metric("ipe_http_sessions") == 0, 20, message="its end")
    raw.settimeout(10)
    while raw.recv(65536):
        pass  # what the kernel held, then the end: the server let the socket go
    raw.close()
    assert server.ws().established is not None  # nobody else was held up


def test_a_backlog_the_client_does_not_read_is_given_up_after_http_timeout(
    make_server: Any,
) -> None:
    """What waited for a stream goes out as one line; the part the kernel does not take (its
    send buffer grows to 4 MB) is written by a greenlet with http_timeout, and counts against
    max_outbox_bytes meanwhile."""
    server = make_server(
        config_with(max_outbox_bytes=8_000_000, http_timeout=1, http_session_timeout=2)
    )
    session = HttpSession(server, sid="3/backlog0")
    session.open()
    session.send("pusher:subscribe", {"channel": "pile"})
    assert session.events()[0]["event"] == "pusher_internal:subscription_succeeded"
    sdk = server.sdk()
    pad = "x" * 9000

    def batch(name: str, n: int) -> None:
        sdk.trigger_batch([{"channel": "pile", "name": name, "data": {"pad": pad}}] * n)

    for _ in range(70):  # about 6.5 MB waits for the session's next request
        batch("piled", 10)
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(10)
    raw.connect(("127.0.0.1", server.port))
    raw.sendall(
        f"POST /pusher/app/demo-key/3/backlog0/xhr_streaming{QUERY} HTTP/1.1\r\n"
        "Host: x\r\nContent-Length: 0\r\n\r\n".encode()
    )
    for _ in range(100):  # what the kernel did not take and these pass max_outbox_bytes
        batch("more", 10)
        if server.metric("ipe_slow_consumer_closes_total"):
            break
    assert server.metric("ipe_slow_consumer_closes_total") == 1
    # The writer gives up after http_timeout (1 s; not a full stream's RECYCLE_WAIT, 10 s),
    # the session ends http_session_timeout (2 s) later.
    wait_until(lambda: server.metric("ipe_http_sessions") == 0, 8, message="its end")
    got = b""
    while chunk := raw.recv(65536):
        got += chunk
    assert b"piled" in got and len(got) < 6_000_000  # cut short: the server let it go
    raw.close()


def test_a_full_stream_nobody_replaces_ends_and_the_session_goes_on(quick: IpeServer) -> None:
    """A client that never recycles a full stream (256 KB) gets a complete response (the
    chunked body's end) after RECYCLE_WAIT (10 s), and the next stream takes what waited."""
    url = f"{quick.url}/pusher/app/demo-key/4/recycle0/xhr_streaming{QUERY}"
    with requests.post(url, stream=True, timeout=30) as first:
        assert first.headers["Connection"] == "close"
        lines = first.iter_lines()
        assert next(lines) == b"o"
        assert b"connection_established" in next(lines)
        subscribe(quick, "4/recycle0", "big")
        assert b"subscription_succeeded" in next(lines)
        sdk = quick.sdk()
        pad = "x" * 9000
        for n in range(40):  # about 370 KB of lines
            sdk.trigger("big", "chunk", {"n": n, "pad": pad})
        received = sum(line.count(b"chunk") for line in lines)  # ends without an error
        assert 20 < received < 40
    with requests.post(url, stream=True, timeout=10) as second:
        lines = second.iter_lines()
        assert next(lines) == b"h"
        rest = 0
        while rest < 40 - received:  # the events the first stream did not carry
            rest += next(lines).count(b"chunk")
        assert rest == 40 - received


def test_a_stream_to_an_http_1_0_client_is_not_chunked(quick: IpeServer) -> None:
    raw = socket.create_connection(("127.0.0.1", quick.port), timeout=10)
    raw.sendall(
        b"POST /pusher/app/demo-key/5/old00000/xhr_streaming?protocol=7 HTTP/1.0\r\n"
        b"Host: x\r\nContent-Length: 0\r\n\r\n"
    )
    got = b""
    while b"connection_established" not in got:
        chunk = raw.recv(4096)
        assert chunk, got
        got += chunk
    head, body = got.split(b"\r\n\r\n", 1)
    assert b"chunked" not in head.lower()
    assert body.startswith(b"o\na["), body  # the lines themselves, no chunk sizes
    raw.close()


def test_waiting_polls_keep_their_connection_alive(quick: IpeServer) -> None:
    """A poll that waits is answered from the publishing path, and its connection then
    serves the next poll (keep-alive), as pusher-js's browser build expects of XHRs."""
    conn = http.client.HTTPConnection("127.0.0.1", quick.port, timeout=30)
    path = f"/pusher/app/demo-key/9/keepalv0/xhr{QUERY}"

    def poll() -> bytes:
        response = conn.getresponse()
        assert response.status == 200
        return response.read()

    conn.request("POST", path, body=b"")
    assert poll() == b"o\n"
    conn.request("POST", path, body=b"")
    assert b"connection_established" in poll()
    peer = conn.sock.getsockname()
    subscribe(quick, "9/keepalv0", "alive")
    conn.request("POST", path, body=b"")
    assert b"subscription_succeeded" in poll()
    sdk = quick.sdk()
    for n in range(5):
        conn.request("POST", path, body=b"")  # nothing waits for it: it waits
        sdk.trigger("alive", "tick", {"n": n})
        (tick,) = [json.loads(m) for m in json.loads(poll()[1:])]
        assert json.loads(tick["data"]) == {"n": n}
    assert conn.sock.getsockname() == peer  # one connection throughout
    conn.close()


def test_a_waiting_poll_whose_client_hangs_up_ends_the_session(make_server: Any) -> None:
    server = make_server(config_with(http_session_timeout=60))  # the timeout cannot do it
    session = HttpSession(server, sid="2/hangpoll")
    session.open()
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    raw.sendall(
        f"POST /pusher/app/demo-key/2/hangpoll/xhr{QUERY} HTTP/1.1\r\n"
        "Host: x\r\nContent-Length: 0\r\n\r\n".encode()
    )
    wait_until(lambda: server.metric("ipe_http_sessions") == 1, 5, message="the session")
    raw.close()
    wait_until(lambda: server.metric("ipe_http_sessions") == 0, 5, message="its end")


def test_a_waiting_poll_on_a_kept_connection_whose_client_hangs_up_ends_the_session(
    make_server: Any,
) -> None:
    """The same, when the poll is not the connection's first request (it then arrives while
    the connection waits in the event loop, which hands its bytes to the handler)."""
    server = make_server(config_with(http_session_timeout=60))  # the timeout cannot do it
    session = HttpSession(server, sid="2/hangkept")
    session.open()
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    raw.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    reply = b""
    while not reply.endswith(b'{"ok":true}\n'):
        chunk = raw.recv(65536)
        assert chunk, reply
        reply += chunk
    raw.sendall(
        f"POST /pusher/app/demo-key/2/hangkept/xhr{QUERY} HTTP/1.1\r\n"
        "Host: x\r\nContent-Length: 0\r\n\r\n".encode()
    )
    wait_until(lambda: server.metric("ipe_http_sessions") == 1, 5, message="the session")
    raw.close()
    wait_until(lambda: server.metric("ipe_http_sessions") == 0, 5, message="its end")


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_a_stream_over_tls_still_streams(make_server: Any, tmp_path: Any) -> None:
    """A TLS stream stays with its handler greenlet (its socket cannot be taken): same lines."""
    port, tls = tls_listener(tmp_path)
    server = make_server(config_with(ssl=tls))
    url = f"https://127.0.0.1:{port}/pusher/app/demo-key/6/tlsstrm0/xhr_streaming{QUERY}"
    with requests.post(url, stream=True, timeout=10, verify=False) as stream:
        lines = stream.iter_lines()
        assert next(lines) == b"o"
        assert b"connection_established" in next(lines)
        body = json.dumps([json.dumps({"event": "pusher:subscribe", "data": {"channel": "t"}})])
        send = url.replace("xhr_streaming", "xhr_send")
        assert requests.post(send, data=body, timeout=10, verify=False).status_code == 204
        assert b"subscription_succeeded" in next(lines)
        server.sdk().trigger("t", "over-tls", {})
        assert b"over-tls" in next(lines)


def test_an_idle_stream_gets_heartbeats(quick: IpeServer) -> None:
    """Nothing to say for HEARTBEAT (25 s): an `h` line (pusher-js answers with a send)."""
    raw = open_stream(quick, "8/heartbt0")
    raw.settimeout(40)
    started = time.monotonic()
    got = b""
    while b"2\r\nh\n\r\n" not in got:
        chunk = raw.recv(4096)
        assert chunk, got
        got += chunk
    assert time.monotonic() - started > 20  # not before its time
    raw.close()


@pytest.fixture
def streams(quick: IpeServer) -> Iterator[list[Any]]:
    opened: list[Any] = []
    yield opened
    for stream in opened:
        stream.close()


def test_a_rest_trigger_reaches_100_http_subscribers(quick: IpeServer, streams: list[Any]) -> None:
    received: list[str] = []
    lock = threading.Lock()
    ready = threading.Semaphore(0)

    def subscriber(n: int) -> None:
        base = f"{quick.url}/pusher/app/demo-key/{n}/fanout{n:02d}"
        stream = requests.post(f"{base}/xhr_streaming{QUERY}", stream=True, timeout=30)
        streams.append(stream)
        lines = stream.iter_lines()
        assert next(lines) == b"o" and b"connection_established" in next(lines)
        body = json.dumps([json.dumps({"event": "pusher:subscribe", "data": {"channel": "f"}})])
        requests.post(f"{base}/xhr_send", data=body, timeout=10)
        assert b"subscription_succeeded" in next(lines)
        ready.release()
        for line in lines:
            if b"fanned" in line:
                with lock:
                    received.append(line.decode())
                return

    threads = [threading.Thread(target=subscriber, args=(n,), daemon=True) for n in range(100)]
    for thread in threads:
        thread.start()
    for _ in threads:
        assert ready.acquire(timeout=30)
    assert quick.sdk().trigger("f", "fanned", {"to": "all"}) == {}
    for thread in threads:
        thread.join(15)
    assert len(received) == 100
    assert len(set(received)) == 1  # the same bytes for everyone (escaped once)
    with urllib.request.urlopen(quick.url + "/health", timeout=5) as health:
        assert health.status == 200
