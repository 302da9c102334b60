"""Slow and half-open HTTP clients (issue 10 item 1): every request has a deadline, idle
keep-alives are closed, and a flood of half-open sockets cannot stop anyone else.

Raw TCP sockets against the real server, with small `http_timeout` values in the config.
Every wait is bounded; nothing sleeps to synchronise.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import ssl
import time
import urllib.request

import pytest
import requests
from conftest import APP_ID, KEY, config_with
from support.rest import signed_target
from support.tls import tls_listener

TIMEOUT = 1.0  # http_timeout of these servers
KEEPALIVE = 0.5
# How long a test waits for the server to close a socket: far beyond the deadline, so that a
# loaded machine cannot fail it, and far below "never" (without a deadline: minutes).
CLOSE_BOUND = 8.0


_opened: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_sockets():
    yield
    while _opened:
        _opened.pop().close()


@pytest.fixture
def server(make_server):
    return make_server(config_with(http_timeout=TIMEOUT, http_keepalive_timeout=KEEPALIVE))


def connect(server, port: int | None = None) -> socket.socket:
    """A raw TCP connection to the server (closed after the test)."""
    sock = socket.create_connection(("127.0.0.1", port or server.port), timeout=CLOSE_BOUND)
    _opened.append(sock)
    return sock


def read_until_closed(sock: socket.socket, bound: float = CLOSE_BOUND) -> bytes:
    """Everything the server sends until it closes the connection; fails after `bound` s."""
    deadline = time.monotonic() + bound
    received = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"still open after {bound}s; received {received[:200]!r}")
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return received
        if not data:
            return received
        received += data


def health(server) -> bool:
    with urllib.request.urlopen(server.url + "/health", timeout=CLOSE_BOUND) as reply:
        return reply.status == 200


def test_idle_tcp_connection_is_closed_within_http_timeout(server):
    sock = connect(server)
    assert read_until_closed(sock) == b""


def test_half_request_line_is_closed(server):
    sock = connect(server)
    sock.sendall(b"GET /hea")
    assert read_until_closed(sock) == b""


def test_request_trickled_a_byte_at_a_time_is_closed(server):
    """Each byte arrives well within the deadline; the request as a whole does not."""
    sock = connect(server)
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 200 + b"\r\n\r\n"
    deadline = time.monotonic() + CLOSE_BOUND
    for byte in request:
        assert time.monotonic() < deadline, "never closed"
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return
        readable, _, _ = select.select([sock], [], [], 0.1)
        if readable:
            assert sock.recv(65536) == b"", "the trickled request was answered"
            return
    raise AssertionError("the whole trickled request went through")


def test_slow_body_of_a_signed_rest_request_is_closed(server):
    body = b'{"name":"e","channels":["c"],"data":"x"}'
    target = signed_target("POST", f"/apps/{APP_ID}/events", body)
    sock = connect(server)
    sock.sendall(
        f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body[:5]
    )
    assert b"200 OK" not in read_until_closed(sock)


def test_unsigned_rest_request_is_refused_before_its_body_is_read(server):
    """The body never comes; the answer does not wait for it (the signature covers
    body_md5, so nothing unsigned makes ipe read or wait for a body)."""
    sock = connect(server)
    sock.sendall(
        f"POST /apps/{APP_ID}/events?auth_key={KEY}&auth_timestamp=1&auth_version=1.0"
        "&auth_signature=00 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 100000\r\n\r\n".encode()
    )
    reply = read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 401"), reply


def test_signed_rest_request_still_works(server):
    body = b'{"name":"e","channels":["c"],"data":"x"}'
    client = server.ws()
    client.subscribe("c")
    sock = connect(server)
    sock.sendall(
        f"POST {signed_target('POST', f'/apps/{APP_ID}/events', body)} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    assert client.expect("e", "c")["data"] == "x"


def _publish_bytes(data: str, *, cut: int | None = None) -> bytes:
    """A signed publish of `data` to channel "c" as raw bytes (its body cut after `cut`)."""
    body = json.dumps({"name": "e", "channels": ["c"], "data": data}).encode()
    head = (
        f"POST {signed_target('POST', f'/apps/{APP_ID}/events', body)} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body[:cut]


def _read_published(reader) -> None:
    """Read one reply to a publish from `reader`: 200, its headers, the body `{}`."""
    assert reader.readline().startswith(b"HTTP/1.1 200")
    while reader.readline() not in (b"\r\n", b""):
        pass
    assert reader.read(3) == b"{}\n"


def test_kept_connection_publishes_one_after_another(server):
    """Each publish arrives whole after the last answer (an SDK's keep-alive connection)."""
    client = server.ws()
    client.subscribe("c")
    sock = connect(server)
    reader = sock.makefile("rb")
    for n in range(3):
        sock.sendall(_publish_bytes(str(n)))
        _read_published(reader)
        assert client.expect("e", "c")["data"] == str(n)


def test_slow_body_on_a_kept_connection_is_closed(server):
    """The second request of a kept connection has the deadline of a first one."""
    sock = connect(server)
    sock.sendall(_publish_bytes("1"))
    reply = b""
    while not reply.endswith(b"{}\n"):
        chunk = sock.recv(65536)
        assert chunk, reply
        reply += chunk
    assert reply.startswith(b"HTTP/1.1 200")
    sock.sendall(_publish_bytes("2", cut=5))
    assert read_until_closed(sock) == b""


def test_body_arriving_later_on_a_kept_connection_is_answered(make_server):
    """Half a publish on a kept connection (the event loop reads it and hands it to the
    handler), then the rest within the deadline: answered as one request."""
    server = make_server(config_with(http_timeout=CLOSE_BOUND, http_keepalive_timeout=KEEPALIVE))
    client = server.ws()
    client.subscribe("c")
    sock = connect(server)
    reader = sock.makefile("rb")
    whole = _publish_bytes("3")
    sock.sendall(whole)  # a first request: the connection then waits in the event loop
    _read_published(reader)
    assert client.expect("e", "c")["data"] == "3"
    sock.sendall(whole[:-5])
    # Nothing can be answered yet (a bounded look, well within the deadline).
    assert select.select([sock], [], [], 0.2)[0] == []
    sock.sendall(whole[-5:])
    _read_published(reader)
    assert client.expect("e", "c")["data"] == "3"


def test_idle_keep_alive_connection_is_closed(server):
    sock = connect(server)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    reply = read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 200") and b'"ok":true' in reply


def test_keep_alive_serves_several_requests(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=CLOSE_BOUND)
    try:
        for _ in range(3):
            conn.request("GET", "/health")
            reply = conn.getresponse()
            assert reply.status == 200 and reply.read() == b'{"ok":true}\n'
            assert not reply.will_close
    finally:
        conn.close()


def test_websocket_outlives_the_http_deadline(server):
    """The deadline ends with the 101: an open WebSocket is not an HTTP request."""
    client = server.ws()
    client.subscribe("lives")
    sock = connect(server)
    assert read_until_closed(sock) == b""  # one http_timeout has passed
    client.sync()
    server.sdk().trigger("lives", "still", "here")
    assert client.expect("still", "lives")["data"] == "here"


def test_tls_handshake_has_the_deadline_too(make_server, tmp_path):
    port, ssl_section = tls_listener(tmp_path)
    server = make_server(config_with(ssl=ssl_section, http_timeout=TIMEOUT))
    silent = connect(server, port)
    assert read_until_closed(silent) == b""
    half = connect(server, port)
    half.sendall(b"\x16\x03\x01\x00\xff")  # a TLS record header, and then nothing
    read_until_closed(half)
    # TLS itself still works: a wss:// client connects and is greeted.
    client = server.ws(
        origin=f"wss://127.0.0.1:{port}",
        sslopt={"cert_reqs": ssl.CERT_NONE, "check_hostname": False},
    )
    assert client.socket_id


def test_half_open_flood_does_not_stop_websockets_rest_or_health(make_server):
    """Far more half-open sockets than http_max_connections, each of which would wait a full
    minute: the oldest are closed to make room, and a normal client notices nothing."""
    server = make_server(config_with(http_timeout=60, http_max_connections=100))
    flood: list[socket.socket] = []
    sdk = server.sdk()
    for round_ in range(6):
        for _ in range(100):
            sock = connect(server)
            if round_ % 2:
                sock.sendall(b"GET /hea")  # half a request line
            flood.append(sock)
        client = server.ws()
        client.subscribe(f"room-{round_}")
        sdk.trigger(f"room-{round_}", "tick", str(round_))
        assert client.expect("tick", f"room-{round_}")["data"] == str(round_)
        assert health(server)
        client.close()
    # The cap held: the oldest 400 of the 600 have been closed by the server.
    for sock in flood[:400]:
        assert read_until_closed(sock) == b""


def test_http_fallback_stream_outlives_the_http_deadline(server):
    """pusher-js's xhr_streaming keeps its 200 response open: the HTTP phase ended with it."""
    query = "?protocol=7&client=js&version=8.6.0&flash=false"
    base = f"{server.url}/pusher/app/{KEY}/7/stream01"
    with requests.post(f"{base}/xhr_streaming{query}", stream=True, timeout=CLOSE_BOUND) as stream:
        lines = stream.iter_lines()
        assert next(lines) == b"o"
        assert b"connection_established" in next(lines)
        body = json.dumps([json.dumps({"event": "pusher:subscribe", "data": {"channel": "s"}})])
        assert requests.post(f"{base}/xhr_send", data=body, timeout=CLOSE_BOUND).status_code == 204
        assert b"subscription_succeeded" in next(lines)
        assert read_until_closed(connect(server)) == b""  # one http_timeout has passed
        server.sdk().trigger("s", "late", "still streaming")
        assert b"still streaming" in next(lines)


def _read_response(sock: socket.socket, buffered: bytes = b"") -> tuple[bytes, bytes]:
    """One response with a Content-Length (head and body), and what followed it."""
    data = buffered
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed mid-response: {data[:200]!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed mid-body"
        rest += chunk
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


def _read_text_frame(sock: socket.socket, buffered: bytes) -> tuple[dict, bytes]:
    """One unmasked short text frame from the server, parsed as JSON; and what followed."""
    data = buffered
    while len(data) < 2 or len(data) < 2 + (data[1] & 0x7F) + (2 if data[1] & 0x7F == 126 else 0):
        chunk = sock.recv(65536)
        assert chunk, "closed mid-frame"
        data += chunk
    size, start = data[1] & 0x7F, 2
    if size == 126:
        size, start = int.from_bytes(data[2:4], "big"), 4
    while len(data) < start + size:
        chunk = sock.recv(65536)
        assert chunk, "closed mid-frame"
        data += chunk
    assert data[0] == 0x81
    return json.loads(data[start : start + size]), data[start + size :]


def test_websocket_upgraded_on_a_kept_connection_outlives_the_http_deadline(server):
    """A WebSocket after plain requests on the same connection: the per-write timeout of
    those responses does not carry over to it (its reads would time out when idle)."""
    sock = connect(server)
    rest = b""
    for _ in range(2):
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        reply, rest = _read_response(sock, rest)
        assert reply.startswith(b"HTTP/1.1 200")
    sock.sendall(
        f"GET /app/{KEY}?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    while b"\r\n\r\n" not in rest:
        rest += sock.recv(65536)
    head, _, rest = rest.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    established, rest = _read_text_frame(sock, rest)
    assert established["event"] == "pusher:connection_established"
    assert read_until_closed(connect(server)) == b""  # one http_timeout has passed
    text = json.dumps({"event": "pusher:ping", "data": {}}).encode()
    mask = b"\x01\x02\x03\x04"
    sock.sendall(
        bytes([0x81, 0x80 | len(text)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(text))
    )
    pong, _ = _read_text_frame(sock, rest)
    assert pong["event"] == "pusher:pong"


def test_a_shorter_deadline_armed_later_is_not_kept_waiting(make_server):
    """With `http_keepalive_timeout` above `http_timeout`, a new connection's deadline falls
    before that of an idle keep-alive connection made earlier: it is closed on time, and
    the kept connection stays open until its own deadline."""
    server = make_server(config_with(http_timeout=1.0, http_keepalive_timeout=6.0))
    kept = connect(server)
    kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    reply, rest = _read_response(kept)
    assert reply.startswith(b"HTTP/1.1 200") and rest == b""
    # One http_timeout passes: the earlier deadlines are gone, the kept one is the next due.
    assert read_until_closed(connect(server)) == b""
    silent = connect(server)
    assert read_until_closed(silent, bound=5.0) == b""  # well before the kept one's 6 s
    readable, _, _ = select.select([kept], [], [], 0)
    assert not readable, "the kept connection was closed with the new one"
    assert read_until_closed(kept) == b""  # and it is closed at its own deadline
