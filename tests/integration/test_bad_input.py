"""Bad input on the socket (issue 2 item 7): the protocol's answer, never a crash, and nothing
lost for anyone else. The `server` fixture fails a test whose server logged a traceback.
"""

from __future__ import annotations

import json

import pytest
import websocket
from support import error_code, unaffected

TEXT, BINARY, CLOSE, PING = 0x1, 0x2, 0x8, 0x9
CONTINUATION = 0x0


@pytest.fixture
def server(shared_server):
    """These tests leave nothing behind that matters to the next, so they share one process."""
    return shared_server


def still_open(client) -> None:
    client.sync()
    assert client.subscribe("open-check")["event"] == "pusher_internal:subscription_succeeded"


# --- messages that are not Pusher messages: pusher:error 4200, socket stays open ----------------


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "{",
        "",
        '{"event": "pusher:ping"',
        "[1, 2]",
        '"pusher:ping"',
        "null",
        "42",
        "{}",
        '{"event": 5}',
        '{"event": null}',
        '{"event": ["pusher:ping"]}',
        '{"event": "client-x", "channel": 5, "data": {}}',
        '{"event": "pusher:subscribe", "channel": {"a": 1}, "data": {"channel": "x"}}',
    ],
    ids=[
        "text",
        "brace",
        "empty",
        "truncated",
        "array",
        "string",
        "null",
        "number",
        "no-event",
        "event-number",
        "event-null",
        "event-list",
        "channel-number",
        "channel-object",
    ],
)
def test_malformed_message_gets_4200_and_the_socket_stays_open(server, bystander, raw):
    client = server.ws()
    client.send_raw(raw)
    assert error_code(client) == 4200
    still_open(client)
    unaffected(server, bystander)


@pytest.mark.parametrize(
    "event", ["pusher:unknown", "pusher_internal:member_added", "pusher:cache_miss", "hello"]
)
def test_unknown_events_are_ignored_silently(server, bystander, event):
    client = server.ws()
    client.send(event, {"channel": "orders"}, channel="orders")
    client.sync()  # nothing came back before the pong
    unaffected(server, bystander)


def test_client_pong_is_accepted_silently(server):
    client = server.ws()
    client.send("pusher:pong", {})
    client.sync()


def test_unicode_text_is_fine(server, bystander):
    client = server.ws()
    client.send_raw('{"event":"pusher:subscribe","data":{"channel":"orders"},"x":"é😀"}')
    client.expect("pusher_internal:subscription_succeeded", "orders")


# --- bad pusher:subscribe / pusher:unsubscribe / pusher:signin ----------------------------------


@pytest.mark.parametrize(
    "data",
    [
        None,
        "not json",
        "[1]",
        5,
        ["orders"],
        {},
        {"channel": None},
        {"channel": 5},
        {"channel": ["orders"]},
        {"channel": {"name": "orders"}},
        {"channel": ""},
    ],
    ids=[
        "no-data",
        "string",
        "json-array-string",
        "number",
        "list",
        "no-channel",
        "null-channel",
        "number-channel",
        "list-channel",
        "object-channel",
        "empty-channel",
    ],
)
def test_subscribe_without_a_string_channel_gets_4200(server, bystander, data):
    client = server.ws()
    client.send("pusher:subscribe", data)
    assert error_code(client) == 4200
    still_open(client)
    unaffected(server, bystander)


@pytest.mark.parametrize("data", [None, {}, {"channel": 5}, "nope"])
def test_unsubscribe_without_a_string_channel_gets_4200(server, bystander, data):
    client = server.ws()
    client.subscribe("news")
    client.send("pusher:unsubscribe", data)
    assert error_code(client) == 4200
    server.sdk().trigger("news", "after", "x")
    client.expect("after", "news")  # still subscribed
    unaffected(server, bystander)


@pytest.mark.parametrize(
    "data",
    [
        None,
        "nope",
        5,
        {},
        {"auth": "demo-key:00"},
        {"user_data": '{"id":"1"}'},
        {"auth": 5, "user_data": {"id": "1"}},
    ],
    ids=["no-data", "string", "number", "empty", "no-user-data", "no-auth", "wrong-types"],
)
def test_signin_without_valid_data_gets_4009(server, bystander, data):
    client = server.ws()
    client.send("pusher:signin", data)
    assert error_code(client) == 4009
    still_open(client)
    unaffected(server, bystander)


def test_subscribe_with_invalid_channel_name_is_refused_on_the_channel(server, bystander):
    client = server.ws()
    client.send("pusher:subscribe", {"channel": "bad name!", "auth": ""})
    assert client.expect_refusal("bad name!")["type"] == "InvalidChannel"
    still_open(client)
    unaffected(server, bystander)


def test_subscribe_with_too_long_channel_name_is_refused(server):
    client = server.ws()
    name = "x" * 201
    client.send("pusher:subscribe", {"channel": name, "auth": ""})
    assert client.expect_refusal(name)["type"] == "LimitReached"
    still_open(client)


def test_subscribe_with_wrong_auth_and_channel_data_types_is_refused(server):
    client = server.ws()
    client.send("pusher:subscribe", {"channel": "private-a", "auth": 5})
    assert client.expect_refusal("private-a")["status"] == 401
    client.send("pusher:subscribe", {"channel": "presence-a", "auth": "x", "channel_data": {}})
    assert client.expect_refusal("presence-a")["status"] == 401
    still_open(client)


# --- frames: closes with the RFC 6455 code, which really reaches the client --------------------


def closed_with(client, code: int) -> None:
    assert client.expect_close()[0] == code


def test_oversize_frame_closes_with_1009(server, bystander):
    client = server.ws()
    client.send_raw("x" * 80000)  # over the 76 KiB frame cap of the default limits
    closed_with(client, 1009)
    unaffected(server, bystander)


def test_huge_frame_closes_with_1009_while_the_client_still_sends(server, bystander):
    client = server.ws()
    client.send_raw(json.dumps({"event": "client-x", "data": "x" * 2_000_000}))
    closed_with(client, 1009)
    unaffected(server, bystander)


def test_frame_announcing_a_gigabyte_closes_with_1009_before_the_payload(server, bystander):
    client = server.ws()
    client.send_frame(TEXT, b"{}", length=1 << 30)
    closed_with(client, 1009)
    unaffected(server, bystander)


def test_oversize_message_in_fragments_closes_with_1009(server, bystander):
    client = server.ws()
    for n in range(8):
        client.send_frame(TEXT if n == 0 else CONTINUATION, b"x" * 10000, fin=False)
    client.send_frame(CONTINUATION, b"x" * 10000)
    closed_with(client, 1009)
    unaffected(server, bystander)


def test_invalid_utf8_closes_with_1007(server, bystander):
    client = server.ws()
    client.send_frame(TEXT, b'{"event":"pusher:ping","data":"\xff\xfe"}')
    closed_with(client, 1007)
    unaffected(server, bystander)


def test_utf8_split_across_fragments_is_fine(server):
    client = server.ws()
    raw = '{"event":"pusher:ping","data":"é"}'.encode()
    cut = raw.index(b"\xa9")  # between the two bytes of é
    client.send_frame(TEXT, raw[:cut], fin=False)
    client.send_frame(CONTINUATION, raw[cut:])
    client.expect("pusher:pong")


def test_binary_frame_closes_with_1003(server, bystander):
    client = server.ws()
    client.send_raw(b'{"event":"pusher:ping"}', websocket.ABNF.OPCODE_BINARY)
    closed_with(client, 1003)
    unaffected(server, bystander)


@pytest.mark.parametrize(
    "frame",
    [
        {"opcode": TEXT, "payload": b'{"event":"pusher:ping"}', "mask": False},
        {"opcode": TEXT, "payload": b'{"event":"pusher:ping"}', "rsv": 4},
        {"opcode": TEXT, "payload": b'{"event":"pusher:ping"}', "rsv": 1},
        {"opcode": 0x3, "payload": b"x"},
        {"opcode": 0xB, "payload": b"x"},
        {"opcode": CONTINUATION, "payload": b"x"},
        {"opcode": PING, "payload": b"x" * 126},
        {"opcode": PING, "payload": b"x", "fin": False},
        {"opcode": CLOSE, "payload": b"\x03\xe8" + b"x" * 124},
    ],
    ids=[
        "unmasked",
        "rsv1",
        "rsv3",
        "opcode-3",
        "opcode-11",
        "lone-continuation",
        "long-ping",
        "fragmented-ping",
        "long-close",
    ],
)
def test_broken_framing_closes_with_1002(server, bystander, frame):
    client = server.ws()
    client.send_frame(**frame)
    closed_with(client, 1002)
    unaffected(server, bystander)


def test_new_message_inside_a_fragmented_one_closes_with_1002(server, bystander):
    client = server.ws()
    client.send_frame(TEXT, b'{"event":', fin=False)
    client.send_frame(TEXT, b'{"event":"pusher:ping"}')
    closed_with(client, 1002)
    unaffected(server, bystander)


def test_ping_between_fragments_is_answered_and_the_message_completes(server):
    client = server.ws()
    client.send_frame(TEXT, b'{"event":"pusher', fin=False)
    client.send_frame(PING, b"mid")
    client.send_frame(CONTINUATION, b':ping","data":{}}')
    opcode, data = client.ws.recv_data(control_frame=True)
    assert (opcode, data) == (websocket.ABNF.OPCODE_PONG, b"mid")
    client.expect("pusher:pong")


def test_bad_frames_from_many_clients_at_once_leave_the_server_serving(server, bystander):
    clients = [server.ws() for _ in range(10)]
    for i, client in enumerate(clients):
        if i % 3 == 0:
            client.send_raw("x" * 80000)
        elif i % 3 == 1:
            client.send_frame(TEXT, b"\xff")
        else:
            client.send_raw("nope")
    for i, client in enumerate(clients):
        if i % 3 == 2:
            assert error_code(client) == 4200
        else:
            assert client.expect_close()[0] in (1009, 1007)
    unaffected(server, bystander)


def test_client_close_code_is_echoed(server):
    client = server.ws()
    client.ws.send_close(4321, b"bye")
    assert client.expect_close() == (4321, "")


def test_abrupt_disconnect_mid_frame_is_cleaned_up(server, bystander):
    client = server.ws()
    client.subscribe("orders")
    client.send_wire(b"\x81\xfe\x10\x00abcd" + b"x" * 100)  # announces 4096 bytes, sends 100
    client.ws.sock.close()
    unaffected(server, bystander)
