"""What one connection can make the server hold or re-send (issue 10 item 2): fragments are
capped, frames arriving in pieces are reassembled, JSON that is not plain JSON (NaN, Infinity,
1e999, nesting past the recursion limit, lone surrogates) gets the protocol's error and reaches
nobody else. The fixtures fail a test whose server logged a traceback.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import socket

import pytest
from conftest import APP_ID, KEY, SECRET, wait_until
from support import error_code, unaffected
from support.rest import signed_target
from test_client_events import pair

TEXT, CONTINUATION = 0x1, 0x0


@pytest.fixture
def server(shared_server):
    """Nothing here leaves state that matters to the next test: one process for all."""
    return shared_server


# --- frames ---------------------------------------------------------------------------------


def test_fragment_flood_is_closed_with_1009(server, bystander):
    """Empty continuation frames cost nothing against the size limit; their number is capped."""
    client = server.ws()
    client.send_frame(TEXT, b'{"event":"pusher:ping",', fin=False)
    for _ in range(1000):
        client.send_frame(CONTINUATION, b"", fin=False)
    code, reason = client.expect_close()
    assert code == 1009 and "fragments" in reason
    unaffected(server, bystander)


def test_message_in_many_fragments_under_the_cap_is_fine(server):
    client = server.ws()
    raw = b'{"event":"pusher:ping","data":{}}'
    for i, byte in enumerate(raw):
        last = i == len(raw) - 1
        client.send_frame(TEXT if i == 0 else CONTINUATION, bytes([byte]), fin=last)
    assert client.expect("pusher:pong")


def test_large_frame_arriving_in_small_pieces_is_reassembled(server):
    """A 60 KB frame written 100 bytes at a time (each its own TCP segment)."""
    client = server.ws()
    client.ws.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    message = {"event": "pusher:subscribe", "data": {"channel": "pieces"}, "pad": "p" * 60000}
    payload = json.dumps(message).encode()
    head = bytes([0x81, 0x80 | 127]) + len(payload).to_bytes(8, "big") + b"\x00" * 4
    wire = head + payload  # mask key 0: the payload goes as it is
    for start in range(0, len(wire), 100):
        client.send_wire(wire[start : start + 100])
    client.expect("pusher_internal:subscription_succeeded", "pieces")


# --- JSON that is not plain JSON --------------------------------------------------------------


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
def test_client_event_with_non_finite_number_gets_4200_and_reaches_nobody(server, number):
    sender, receiver = pair(server, "private-numbers")
    sender.send_raw('{"event":"client-n","channel":"private-numbers","data":{"v":' + number + "}}")
    assert error_code(sender) == 4200
    sender.send("client-ok", {"v": 1}, channel="private-numbers")
    # The refused event would have come first: the next thing the receiver gets is the good one.
    assert receiver.expect("client-ok", "private-numbers")["data"] == {"v": 1}


@pytest.mark.parametrize("number", ["NaN", "1e999"])
def test_subscribe_with_non_finite_number_gets_4200(server, number):
    client = server.ws()
    client.send_raw('{"event":"pusher:subscribe","data":{"channel":"x","n":' + number + "}}")
    assert error_code(client) == 4200
    client.sync()


def test_deeply_nested_message_gets_4200(server, bystander):
    client = server.ws()
    depth = 30000  # 60 KB: within the frame limit, far past the recursion limit
    client.send_raw(
        '{"event":"client-x","channel":"private-n","data":' + "[" * depth + "]" * depth + "}"
    )
    assert error_code(client) == 4200
    client.sync()
    unaffected(server, bystander)


def test_deeply_nested_data_string_gets_4200(server):
    """Old clients send `data` as a JSON string: it is parsed by the same rules."""
    client = server.ws()
    client.send("pusher:subscribe", "[" * 20000 + "]" * 20000)
    assert error_code(client) == 4200
    client.sync()


@pytest.mark.parametrize(
    "raw",
    [
        '{"event":"pusher:subscribe","data":{"channel":"\\ud800"}}',
        '{"event":"pusher:subscribe","data":{"channel":"a\\udfff"}}',
        '{"event":"client-\\ud800","channel":"private-x","data":{}}',
        '{"event":"pusher:subscribe","channel":"\\udc00","data":{"channel":"x"}}',
    ],
    ids=["channel-high", "channel-low", "event-name", "outer-channel"],
)
def test_lone_surrogates_get_4200(server, bystander, raw):
    client = server.ws()
    client.send_raw(raw)
    assert error_code(client) == 4200
    client.sync()
    unaffected(server, bystander)


def test_surrogate_pair_is_fine(server):
    client = server.ws()
    client.send_raw('{"event":"pusher:subscribe","data":{"channel":"orders"},"x":"\\ud83d\\ude00"}')
    client.expect("pusher_internal:subscription_succeeded", "orders")


def test_lone_surrogate_presence_user_id_is_refused(server):
    client = server.ws()
    reply = client.subscribe_signed(server.sdk(), "presence-lone", {"user_id": "\ud800"})
    assert client.expect_refusal("presence-lone", reply)["status"] == 401


def test_lone_surrogate_signin_user_id_is_refused(server):
    """Signed by hand: the SDK itself refuses to sign such an id."""
    client = server.ws()
    user_data = '{"id":"\\udfff"}'
    digest = hmac.new(
        SECRET.encode(), f"{client.socket_id}::user::{user_data}".encode(), hashlib.sha256
    ).hexdigest()
    client.send("pusher:signin", {"auth": f"{KEY}:{digest}", "user_data": user_data})
    reply = client.recv()
    assert reply["event"] == "pusher:error" and reply["data"]["code"] == 4009, reply
    client.sync()


# --- REST ---------------------------------------------------------------------------------------


def rest(server, method: str, target: str, body: bytes = b"") -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, target, body or None, {"Content-Type": "application/json"})
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        conn.close()


def test_rest_timestamp_of_thousands_of_digits_gets_401(server):
    target = (
        f"/apps/{APP_ID}/channels?auth_key={KEY}&auth_version=1.0"
        f"&auth_timestamp={'9' * 5000}&auth_signature=00"
    )
    status, body = rest(server, "GET", target)
    assert status == 401 and "auth_timestamp" in body["error"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"name":"e","channels":["c"],"data":{"v":1e999}}',
        b'{"name":"e","channels":["c"],"data":{"v":NaN}}',
        b'{"name":"e","channels":["c"],"data":{"v":-Infinity}}',
        b'{"name":"e","channels":["c"],"data":{"v":1' + b"0" * 5000 + b"}}",
        b'{"name":"e","channels":["\\ud800"],"data":"x"}',
        b'{"name":"e","channels":["c"],"data":{"v":"\\udc00"}}',
        b'{"name":"e","channels":["c"],"data":' + b"[" * 40000 + b"]" * 40000 + b"}",
    ],
    ids=["1e999", "nan", "infinity", "5000-digits", "lone-channel", "lone-data", "nested"],
)
def test_rest_body_with_absurd_json_gets_400(server, bystander, body):
    path = f"/apps/{APP_ID}/events"
    status, reply = rest(server, "POST", signed_target("POST", path, body), body)
    assert status == 400 and reply["error"], reply
    unaffected(server, bystander)


# --- metrics --------------------------------------------------------------------------------------


def test_close_codes_chosen_by_clients_share_one_label(make_server):
    """A client picks the code it closes with (and ipe echoes it): those it made up count in
    their range, so that clients cannot create series."""
    server = make_server()
    for code in (4567, 4568, 3999):
        client = server.ws()
        client.ws.send_close(code, b"")
        assert client.expect_close()[0] == code
    series = 'ipe_disconnections_total{app_id="1001",code="%s"}'
    wait_until(lambda: server.metric(series % "4400-4999") == 2)
    wait_until(lambda: server.metric(series % "3000-3999") == 1)
    assert server.metric(series % "4567") == 0
