"""The lean REST front end (ipe.rest_wsgi) answers exactly as the Flask one does.

Publishing and the channel reads bypass Flask; the rest of the API (terminate_connections,
errors of routing) is still Flask's. Each pair below asks both front ends for the same
rejection or success, and the two answers must match byte for byte (status line, headers,
body), so a client cannot tell which one answered. Keep-alive and pipelined requests mix both.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import threading
import time

import pytest
from rest_support import Api, raw_query, shared_server, signed_query

from ipe import rest
from ipe.config import Limits

rest_server = pytest.fixture(scope="module")(shared_server)

EVENT = {"name": "lean", "channels": ["lean-a"], "data": "1"}


@pytest.fixture
def api(rest_server):
    return Api(rest_server)


def exchange(server, method, path, body=b"", *, headers=None, **signing):
    """One signed request on its own connection: (status line, headers but Date, body)."""
    if isinstance(body, dict):
        body = json.dumps(body, separators=(",", ":")).encode()
    query = raw_query(signed_query(method, path, None, body, **signing))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.putrequest(method, f"{path}?{query}", skip_accept_encoding=True)
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            conn.putheader(name, value)
        conn.endheaders(body or None)
        response = conn.getresponse()
        dates = [v for k, v in response.getheaders() if k.lower() == "date"]
        assert len(dates) == 1 and dates[0].endswith(" GMT"), response.getheaders()
        kept = [(k, v) for k, v in response.getheaders() if k.lower() != "date"]
        return f"{response.status} {response.reason}", kept, response.read()
    finally:
        conn.close()


LEAN = "/apps/{app}/events"  # answered by ipe.rest_wsgi
FLASK = "/apps/{app}/users/someone/terminate_connections"  # answered by Flask


@pytest.mark.parametrize(
    ("case", "app", "body", "signing"),
    [
        ("200", "1001", EVENT, {}),
        ("404 unknown app", "9999", EVENT, {}),
        ("403 disabled app", "1003", EVENT, {"key": "off-key", "secret": "off-secret"}),
        ("401 unknown key", "1001", EVENT, {"key": "nobody"}),
        ("401 body_md5", "1001", EVENT, {"body_md5": "0" * 32}),
        ("401 old timestamp", "1001", EVENT, {"timestamp": 1}),
    ],
)
def test_same_answer_from_both_front_ends(rest_server, case, app, body, signing):
    lean = exchange(rest_server, "POST", LEAN.format(app=app), body, **signing)
    flask = exchange(rest_server, "POST", FLASK.format(app=app), body, **signing)
    assert lean == flask
    assert lean[1][0] == ("Content-Type", "application/json")
    assert lean[0].split()[0] == case.split()[0]


def test_same_413_from_both_front_ends(rest_server):
    headers = {"Content-Length": "100000000000"}  # declared, never sent: refused unread
    lean = exchange(rest_server, "POST", LEAN.format(app="1001"), headers=headers)
    flask = exchange(rest_server, "POST", FLASK.format(app="1001"), headers=headers)
    assert lean == flask
    assert lean[0] == "413 REQUEST ENTITY TOO LARGE"
    cap = rest.body_cap(Limits())
    assert json.loads(lean[2]) == {"error": f"Request body larger than {cap} bytes"}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error"),
    [
        ("POST", "/apps/1001/events", b"{", 400, "Request body is not valid JSON"),
        ("POST", "/apps/1001/batch_events", b"[]", 400, "Request body must be a JSON object"),
        ("POST", "/apps/1001/events", {**EVENT, "data": "x" * 10241}, 413, "Event data larger"),
        ("GET", "/apps/1001/channels/bad%20name", b"", 400, "Invalid channel name"),
        ("GET", "/apps/1001/channels/orders/users", b"", 400, "Users are only available"),
        ("GET", "/apps/1001/channels", b"", 401, "Invalid signature"),
        ("GET", "/apps/9999/channels/x", b"", 404, "Unknown app: 9999"),
    ],
)
def test_error_bodies_on_the_lean_routes(rest_server, method, path, body, status, error):
    signing = {"secret": "wrong"} if status == 401 else {}
    if "%20" in path:
        signing["sign_path"] = path.replace("%20", " ")  # the path as routed
    status_line, headers, raw = exchange(rest_server, method, path, body, **signing)
    assert int(status_line.split()[0]) == status, raw
    assert dict(headers)["Content-Type"] == "application/json"
    assert int(dict(headers)["Content-Length"]) == len(raw)
    assert raw.endswith(b"}\n")  # jsonify's layout: compact, one newline
    reply = json.loads(raw)
    assert list(reply) == ["error"] and reply["error"].startswith(error), raw


def test_other_methods_and_paths_still_reach_flask(api):
    assert api.request("HEAD", "/apps/1001/channels").status == 200
    reply = api.request("PUT", "/apps/1001/events")
    assert (reply.status, reply.headers["allow"]) == (405, "POST")
    assert api.request("POST", "/apps/1001/events/").status == 404
    assert api.request("GET", "/apps/1001/channels/orders/").status == 404


def _request_bytes(method, path, body=b""):
    query = raw_query(signed_query(method, path, None, body))
    head = f"{method} {path}?{query} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _read_response(reader):
    status = int(reader.readline().split()[1])
    length = 0
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return status, json.loads(reader.read(length))


def test_pipelined_requests_on_one_keep_alive_connection(rest_server):
    client = rest_server.ws()
    client.subscribe("lean-a")
    event = json.dumps(EVENT).encode()
    batch = json.dumps({"batch": [{"name": "lean", "channel": "lean-a", "data": "2"}]}).encode()
    requests = [
        (_request_bytes("POST", "/apps/1001/events", event), 200, {}),
        (_request_bytes("POST", "/apps/1001/events", b"{"), 400, None),
        (_request_bytes("POST", "/apps/1001/users/u/terminate_connections"), 200, {}),
        (_request_bytes("GET", "/apps/1001/channels/lean-a"), 200, {"occupied": True}),
        (_request_bytes("GET", "/apps/1001/nothing"), 404, {"error": "Not found"}),
        (_request_bytes("POST", "/apps/1001/batch_events", batch), 200, {}),
    ]
    with socket.create_connection(("127.0.0.1", rest_server.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        for _ in range(2):  # all at once, then again on the same connection
            sock.sendall(b"".join(request for request, _, _ in requests))
            for _, status, body in requests:
                got_status, got_body = _read_response(reader)
                assert got_status == status
                if body is not None:
                    assert got_body == body
                else:
                    assert list(got_body) == ["error"]
            assert client.expect("lean", "lean-a")["data"] == "1"
            assert client.expect("lean", "lean-a")["data"] == "2"
    client.sync()


def test_lean_requests_are_counted_in_metrics(api, rest_server):
    name = 'ipe_http_requests_total{app_id="1001",endpoint="rest.trigger",status="400"}'
    unknown = 'ipe_http_requests_total{app_id="",endpoint="rest.trigger",status="404"}'
    before, before_unknown = rest_server.metric(name), rest_server.metric(unknown)
    for _ in range(3):
        assert api.post("/apps/1001/events", b"{").status == 400
    assert api.post("/apps/nope/events", b"{").status == 404
    assert rest_server.metric(name) == before + 3
    assert rest_server.metric(unknown) == before_unknown + 1  # no label for a made-up id


def test_body_md5_of_an_empty_get(rest_server):
    md5 = hashlib.md5(b"").hexdigest()
    status_line, _, raw = exchange(rest_server, "GET", "/apps/1001/channels", body_md5=md5)
    assert status_line == "200 OK", raw


def _raw_exchange(server, head: bytes, body: bytes) -> tuple[bytes, list[bytes], bytes]:
    """One raw request on its own connection, read to the end of the stream: (status line,
    header lines with Date's value blanked, body)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + body)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    top, _, payload = received.partition(b"\r\n\r\n")
    status, *lines = top.split(b"\r\n")
    return status, [b"Date: -" if line.startswith(b"Date: ") else line for line in lines], payload


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
@pytest.mark.parametrize("unknown_key", [False, True])
def test_same_bytes_from_both_front_ends_in_order(rest_server, version, unknown_key):
    """The lean reply is written by the handler itself for HTTP/1.1 (and by pywsgi for 1.0,
    which adds a Connection header): status line, headers in the same order with Date last,
    body, byte for byte as Flask's answer through pywsgi."""
    answers = []
    for path in (LEAN.format(app="1001"), FLASK.format(app="1001")):
        body = json.dumps(EVENT).encode()
        signing = {"key": "nobody"} if unknown_key else {}
        query = raw_query(signed_query("POST", path, None, body, **signing))
        close = "Connection: close\r\n" if version == "HTTP/1.1" else ""
        head = f"POST {path}?{query} {version}\r\nHost: x\r\n{close}"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        answers.append(_raw_exchange(rest_server, head.encode(), body))
    lean, flask = answers
    assert lean == flask
    assert lean[1][-1] == b"Date: -"
    assert lean[0] == (b"HTTP/1.1 401 UNAUTHORIZED" if unknown_key else b"HTTP/1.1 200 OK")


@pytest.mark.parametrize("path", [LEAN.format(app="1001"), FLASK.format(app="1001")])
def test_a_kept_connection_is_told_how_long_it_stays_open(rest_server, path):
    """`Keep-Alive: timeout=5` (http_keepalive_timeout's default) on a kept HTTP/1.1
    connection, from both front ends; none on a connection the response closes. Node's
    http.Agent (keep-alive by default since Node 19) drops an idle socket a second before
    the hint instead of reusing it just as ipe closes it."""
    _, kept, _ = exchange(rest_server, "POST", path, EVENT)
    assert [v for k, v in kept if k.lower() == "keep-alive"] == ["timeout=5"]
    _, closing, _ = exchange(rest_server, "POST", path, EVENT, headers={"Connection": "close"})
    assert [k for k, _ in closing if k.lower() == "keep-alive"] == []


def test_requests_behind_another_kind_are_all_answered(rest_server):
    """A Flask request, then more publishes than one read buffer holds, in one write: the
    event loop reads them all at once, hands them to the connection's handler, and every
    one is answered once the connection is idle again."""
    client = rest_server.ws()
    client.subscribe("lean-behind")
    publishes = [
        _request_bytes(
            "POST",
            "/apps/1001/events",
            json.dumps({"name": "lean", "channels": ["lean-behind"], "data": str(n)}).encode(),
        )
        for n in range(60)
    ]
    assert sum(map(len, publishes)) > 16384
    with (
        socket.create_connection(("127.0.0.1", rest_server.port), timeout=10) as sock,
        sock.makefile("rb") as reader,
    ):
        sock.sendall(_request_bytes("POST", "/apps/1001/events", b"{"))  # then idle
        assert _read_response(reader)[0] == 400
        sock.sendall(_request_bytes("GET", "/apps/1001/nothing") + b"".join(publishes))
        assert _read_response(reader) == (404, {"error": "Not found"})
        for _ in publishes:
            assert _read_response(reader) == (200, {})
        for n in range(60):
            assert client.expect("lean", "lean-behind")["data"] == str(n)
        sock.sendall(publishes[0])  # and the connection goes on as before
        assert _read_response(reader) == (200, {})
        assert client.expect("lean", "lean-behind")["data"] == "0"
    client.sync()


def test_replies_the_socket_cannot_take_at_once_all_arrive(rest_server):
    """Pipelined channel listings (80 KB a reply) that the client does not read until ipe
    has stopped answering, because its sends no longer fit: what a send did not take is
    finished by the connection's handler, and every reply arrives whole and in order."""
    names = [f"lean-wide-{n:03d}-" + "x" * 180 for n in range(400)]
    subscriber = rest_server.ws()
    for name in names:
        subscriber.subscribe(name)
    path, params = "/apps/1001/channels", {"filter_by_prefix": "lean-wide-"}
    query = raw_query(signed_query("GET", path, params))
    request = f"GET {path}?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    answered = 'ipe_http_requests_total{app_id="1001",endpoint="rest.channels",status="200"}'
    count = 1000
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)  # no room for a reply
    sock.settimeout(30)
    sock.connect(("127.0.0.1", rest_server.port))
    with sock, sock.makefile("rb") as reader:
        sock.sendall(request)  # one first: the connection then waits in the event loop
        assert sorted(_read_response(reader)[1]["channels"]) == names
        before = rest_server.metric(answered)
        writer = threading.Thread(target=sock.sendall, args=(request * count,))
        writer.start()
        # Not reading until ipe has stopped answering (a bounded wait for the count to
        # settle): then a reply did not fit.
        deadline = time.monotonic() + 20
        seen = -1.0
        while (now := rest_server.metric(answered)) != seen or now == before:
            assert time.monotonic() < deadline, "ipe kept answering, or never started"
            seen = now
            time.sleep(0.2)
        assert now - before < count
        for _ in range(count):
            status, body = _read_response(reader)
            assert status == 200
            assert sorted(body["channels"]) == names
        writer.join(timeout=20)
        assert not writer.is_alive()
