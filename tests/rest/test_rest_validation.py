"""REST parameters and limits (protocol-notes.md §6.3, §8): 400 and 413, each with a JSON error.

Hand-signed requests, so that the SDKs' own client-side checks don't hide the server's.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
from support.rest import TIGHT, Api, raw_query, signed_query

from ipe import protocol, rest
from ipe.config import Limits


@pytest.fixture
def api(rest_server):
    return Api(rest_server)


def event(**overrides):
    body = {"name": "order-updated", "channels": ["orders"], "data": '{"id":7}'}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


# --- bodies that are not what the endpoint takes -----------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b'{"name": "a",}',
        b"not json",
        b'{"name":"a","channels":["orders"],"data":NaN}',
        b'{"name":"a","channels":["orders"],"data":Infinity}',
        b'{"name":"a","channels":["orders"],"data":"\xff\xfe"}',
        b'{"name":"a","channels":["orders"],"data":"\xed\xa0\x80"}',
        '{"name":"a","channels":["orders"],"data":"x"}'.encode("utf-16"),
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    ],
    ids=[
        "empty",
        "truncated",
        "trailing-comma",
        "text",
        "NaN",
        "Infinity",
        "bad-utf8",
        "utf8-surrogate",
        "utf16",
        "deep-list",
        "deep-object",
    ],
)
@pytest.mark.parametrize("path", ["/apps/1001/events", "/apps/1001/batch_events"])
def test_malformed_json(api, path, body):
    reply = api.post(path, body)
    assert reply.status == 400
    assert reply.error == "Request body is not valid JSON"


@pytest.mark.parametrize("body", [b"[]", b'"event"', b"42", b"null"])
@pytest.mark.parametrize("path", ["/apps/1001/events", "/apps/1001/batch_events"])
def test_json_that_is_not_an_object(api, path, body):
    reply = api.post(path, body)
    assert reply.status == 400
    assert reply.error == "Request body must be a JSON object"


# --- events --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (event(name=None), "Missing event name"),
        (event(name=""), "Missing event name"),
        (event(name=7), "Missing event name"),
        (event(name="x" * 201), "Event name longer than 200 characters"),
        (event(data=None), "Missing event data"),
        (event(channels=None), "Missing channel or channels"),
        (event(channels=[]), "channels must be a non-empty list"),
        (event(channels="orders"), "channels must be a non-empty list"),
        (event(channels=[f"c{i}" for i in range(101)]), "More than 100 channels"),
        (event(channels=["orders", "bad channel"]), "Invalid channel name: 'bad channel'"),
        (event(channels=["x" * 201]), "Invalid channel name"),
        (event(channels=["#orders"]), "Invalid channel name: '#orders'"),
        (event(channels=["#server-to-user-"]), "Invalid channel name"),
        (event(channels=["#server-to-user-a b"]), "Invalid channel name"),
        (event(channels=["ordérs"]), "Invalid channel name"),
        (event(channels=[7]), "Invalid channel name"),
        (event(channels=None, channel="bad/channel"), "Invalid channel name"),
        (event(socket_id="abc"), "Invalid socket_id"),
        (event(socket_id="1."), "Invalid socket_id"),
        (event(socket_id="1.2.3"), "Invalid socket_id"),
        (event(socket_id="١٢.٣"), "Invalid socket_id"),
        (event(socket_id=12), "Invalid socket_id"),
        (event(info="user_count,members"), "Unsupported info attribute: members"),
        (event(info="cache"), "Unsupported info attribute: cache"),
        (event(info=["user_count"]), "info must be a comma-separated string"),
    ],
)
def test_invalid_event(api, body, message):
    reply = api.trigger(**body)
    assert reply.status == 400, reply
    assert reply.error.startswith(message)


def test_lone_surrogates_in_name_or_data(api):
    # Valid JSON escapes, but no UTF-8 can carry them to a client: 400, never a crash.
    reply = api.post("/apps/1001/events", b'{"name":"a","channels":["orders"],"data":"\\ud800"}')
    assert (reply.status, reply.error) == (400, "Event data is not valid Unicode")
    reply = api.post("/apps/1001/events", b'{"name":"\\udfff","channels":["orders"],"data":"x"}')
    assert (reply.status, reply.error) == (400, "Event name is not valid Unicode")
    reply = api.post("/apps/1001/events", b'{"name":"a","channels":["orders"],"data":["\\ud800"]}')
    assert (reply.status, reply.error) == (400, "Event data is not valid Unicode")


def test_accepted_at_the_limits(api, rest_server):
    client = rest_server.ws()
    name = "App\\Events\\" + "x" * 189  # 200 characters, Laravel-style: no character rule
    channels = ["limits-" + "c" * 193] + [f"limits-{i}" for i in range(99)]  # 100, one of 200 chars
    client.subscribe(channels[0])
    data = "é" * 5120  # 5120 characters, 10240 UTF-8 bytes
    reply = api.trigger(**event(name=name, channels=channels, data=data, socket_id=""))
    assert (reply.status, reply.json) == (200, {})
    message = client.expect(name, channels[0])
    assert message["data"] == data


@pytest.mark.parametrize(
    "data",
    ["x" * 10241, "é" * 5121, {"text": "x" * 10240}],
    ids=["ascii", "utf8-bytes-not-characters", "object"],
)
def test_data_over_10kb(api, data):
    reply = api.trigger(**event(data=data))
    assert reply.status == 413
    assert reply.error == "Event data larger than 10240 bytes"


def test_channel_or_channels(api, rest_server):
    client = rest_server.ws()
    client.subscribe("single-channel")
    reply = api.trigger(**event(channels=None, channel="single-channel"))
    assert (reply.status, reply.json) == (200, {})
    client.expect("order-updated", "single-channel")


def test_a_watcher_sees_a_publish_the_reply_denies(rest_server):
    """The check every rejection here gets can fail: a publish reaches the watchers."""

    class Pretending(Api):
        def _send(self, *args, **kwargs):
            reply = super()._send(*args, **kwargs)
            assert reply.status == 200, reply
            reply.status = 400  # as if refused: the watchers must have seen the event
            return reply

    with pytest.raises(AssertionError, match="expected nothing before the pong"):
        Pretending(rest_server).trigger(**event(channels=["watched"]))


def test_duplicate_channels_deliver_once(rest_server):
    api = Api(rest_server)  # asks for counts: no watchers, who would count as subscribers
    client = rest_server.ws()
    client.subscribe("dup-channel")
    reply = api.trigger(**event(channels=["dup-channel", "dup-channel"], info="subscription_count"))
    assert reply.json == {"channels": {"dup-channel": {"subscription_count": 1}}}
    client.expect("order-updated", "dup-channel")
    client.sync()


# --- batches -------------------------------------------------------------------------------------


def item(**overrides):
    body = {"name": "tick", "channel": "batch-a", "data": "1"}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({}, 400, "Missing batch"),
        ({"batch": {"name": "tick"}}, 400, "Missing batch"),
        ({"batch": [item()] * 11}, 400, "Cannot batch-send more than 10 events"),
        ({"batch": [item(), "tick"]}, 400, "Each event must be a JSON object"),
        ({"batch": [item(), item(channel=None)]}, 400, "Missing channel"),
        ({"batch": [item(), item(channel=None, channels=["batch-a"])]}, 400, "Missing channel"),
        ({"batch": [item(), item(channel="bad channel")]}, 400, "Invalid channel name"),
        ({"batch": [item(), item(name=None)]}, 400, "Missing event name"),
        ({"batch": [item(), item(data=None)]}, 400, "Missing event data"),
        ({"batch": [item(), item(socket_id="x")]}, 400, "Invalid socket_id"),
        ({"batch": [item(), item(info="nope")]}, 400, "Unsupported info attribute: nope"),
        ({"batch": [item(), item(data="x" * 10241)]}, 413, "Event data larger than 10240 bytes"),
    ],
)
def test_one_invalid_item_rejects_the_whole_batch(api, rest_server, body, status, message):
    client = rest_server.ws()
    client.subscribe("batch-a")
    reply = api.post("/apps/1001/batch_events", body)
    assert reply.status == status, reply
    assert reply.error.startswith(message)
    client.sync()  # the valid first item was not published either


def test_full_batch_of_maximal_events_fits_the_body_cap(api, rest_server):
    # Ten events of 10 KB data made of control characters: each escapes to 60 KB of JSON.
    client = rest_server.ws()
    client.subscribe("batch-big")
    data = "\x01" * 10240
    body = json.dumps({"batch": [item(channel="batch-big", data=data)] * 10}).encode()
    assert len(body) > 600_000
    reply = api.post("/apps/1001/batch_events", body)
    assert (reply.status, reply.json) == (200, {})
    for _ in range(10):
        assert client.expect("tick", "batch-big")["data"] == data


def test_empty_batch(api):
    reply = api.post("/apps/1001/batch_events", {"batch": []})
    assert (reply.status, reply.json) == (200, {})


# --- channel queries -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"info": "user_count"}, "info=user_count requires filter_by_prefix=presence-"),
        ({"info": "user_count", "filter_by_prefix": "private-"}, "info=user_count requires"),
        ({"info": "user_count", "filter_by_prefix": "presence"}, "info=user_count requires"),
        ({"info": "occupied"}, "Unsupported info attribute: occupied"),
        ({"info": "cache", "filter_by_prefix": "cache-"}, "Unsupported info attribute: cache"),
    ],
)
def test_invalid_channels_query(api, params, message):
    reply = api.get("/apps/1001/channels", params)
    assert reply.status == 400
    assert reply.error.startswith(message)


@pytest.mark.parametrize(
    ("channel", "params", "message"),
    [
        ("orders", {"info": "user_count"}, "info=user_count is only available for presence"),
        ("private-orders", {"info": "user_count"}, "info=user_count is only available"),
        ("orders", {"info": "cache"}, "info=cache is only available for cache channels"),
        ("presence-room", {"info": "cache"}, "info=cache is only available"),
        ("orders", {"info": "members"}, "Unsupported info attribute: members"),
        ("x" * 201, {}, "Invalid channel name"),
        ("#orders", {}, "Invalid channel name"),
    ],
)
def test_invalid_channel_query(api, channel, params, message):
    path = f"/apps/1001/channels/{channel}"
    reply = api.get(path.replace("#", "%23"), params, sign_path=path)
    assert reply.status == 400, reply
    assert reply.error.startswith(message)


@pytest.mark.parametrize("channel", ["orders", "private-orders", "cache-orders", "x" * 201])
def test_users_of_a_non_presence_channel(api, channel):
    reply = api.get(f"/apps/1001/channels/{channel}/users")
    assert reply.status == 400
    assert reply.error.startswith(("Users are only available", "Invalid channel name"))


@pytest.mark.parametrize("user_id", ["a%20b", "%C3%A9"])
def test_terminate_an_invalid_user_id(api, user_id):
    for path in (
        f"/apps/1001/users/{user_id}/terminate_connections",
        f"/users/{user_id}/terminate_connections",
    ):
        reply = api.post(path, {}, sign_path=path.replace("%20", " ").replace("%C3%A9", "é"))
        assert reply.status == 400, (path, reply)
        assert reply.error == "Invalid user id"


# --- the body cap --------------------------------------------------------------------------------


def test_declared_body_over_the_cap_is_refused_unread(api, rest_server):
    """A huge Content-Length gets 413 at once: nothing of the body is sent or read."""
    query = raw_query(signed_query("POST", "/apps/1001/events", None, b"{}"))
    watchers = api.watchers("/apps/1001/events", json.dumps(event()).encode())
    with socket.create_connection(("127.0.0.1", rest_server.port), timeout=10) as sock:
        sock.sendall(
            f"POST /apps/1001/events?{query} HTTP/1.1\r\nHost: ipe\r\n"
            "Content-Type: application/json\r\nContent-Length: 100000000000\r\n\r\n".encode()
        )
        head, body = read_response(sock)
    assert head.startswith(b"HTTP/1.1 413 ")
    cap = rest.body_cap(Limits())
    assert json.loads(body) == {"error": f"Request body larger than {cap} bytes"}
    for watcher in watchers:
        watcher.sync()  # nothing was published


def test_chunked_body_over_the_cap(api, rest_server):
    """Without a Content-Length the cap holds while reading: 413, not a truncated body."""
    cap = rest.body_cap(Limits())
    body = json.dumps(event(data="x" * (cap + 10))).encode()
    query = raw_query(signed_query("POST", "/apps/1001/events", None, body))
    watchers = api.watchers("/apps/1001/events", body)
    with socket.create_connection(("127.0.0.1", rest_server.port), timeout=10) as sock:
        sock.sendall(
            f"POST /apps/1001/events?{query} HTTP/1.1\r\nHost: ipe\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        for start in range(0, len(body), 65536):
            chunk = body[start : start + 65536]
            try:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except OSError:
                break  # the server answered and closed before reading everything
        else:
            sock.sendall(b"0\r\n\r\n")
        head, reply = read_response(sock)
    assert head.startswith(b"HTTP/1.1 413 ")
    assert json.loads(reply) == {"error": f"Request body larger than {cap} bytes"}
    assert watchers
    for watcher in watchers:
        watcher.sync()  # nothing was published


def test_chunked_body_under_the_cap(api, rest_server):
    client = rest_server.ws()
    client.subscribe("chunked")
    body = json.dumps(event(channels=["chunked"])).encode()
    query = raw_query(signed_query("POST", "/apps/1001/events", None, body))
    with socket.create_connection(("127.0.0.1", rest_server.port), timeout=10) as sock:
        sock.sendall(
            f"POST /apps/1001/events?{query} HTTP/1.1\r\nHost: ipe\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            + b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in (body[:9], body[9:]))
            + b"0\r\n\r\n"
        )
        head, reply = read_response(sock)
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert json.loads(reply) == {}
    client.expect("order-updated", "chunked")


def read_response(sock):
    """(status line and headers, body) of one HTTP/1.1 response with a Content-Length."""
    data = b""
    deadline = time.monotonic() + 10
    while b"\r\n\r\n" not in data:
        assert time.monotonic() < deadline, data
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the body"
        body += chunk
    return head, body[:length]


# --- limits from the app's config ----------------------------------------------------------------


def tight(api, path, body):
    return api.post(path, body, key=TIGHT["key"], secret=TIGHT["secret"])


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (event(name="tick", data="x" * 101), 413, "Event data larger than 100 bytes"),
        (event(name="tick", channels=["a", "b", "c", "d"]), 400, "More than 3 channels"),
        (event(name="tick", channels=["c" * 21]), 400, "Invalid channel name"),
        (event(name="n" * 11), 400, "Event name longer than 10 characters"),
    ],
)
def test_limits_are_per_app(api, body, status, message):
    reply = tight(api, "/apps/1006/events", body)
    assert reply.status == status, reply
    assert reply.error.startswith(message)
    # The same request is fine for an app with Pusher's defaults.
    assert api.trigger(**body).status == 200


def test_batch_limit_is_per_app(api):
    reply = tight(api, "/apps/1006/batch_events", {"batch": [item()] * 3})
    assert (reply.status, reply.error) == (400, "Cannot batch-send more than 2 events")
    reply = tight(api, "/apps/1006/batch_events", {"batch": [item()] * 2})
    assert (reply.status, reply.json) == (200, {})


def test_body_cap_follows_the_limits():
    assert rest.body_cap(Limits(max_message_size=100, max_batch_size=2)) < rest.body_cap(Limits())
    assert rest.body_cap(Limits(max_message_size=1 << 20)) > 10 * 6 * (1 << 20)


@pytest.mark.parametrize(
    ("name", "data"),
    [("e", ""), ("App\\Events\\X", '{"a":"\\"é\\u0001"}'), ("ünï", "\U0001f600\n\t</script>")],
)
def test_encode_events_matches_encode_event(name, data):
    channels = ["orders", "presence-a=b@c;d,e.f", "#server-to-user-42"]
    assert protocol.encode_events(name, channels, data) == [
        protocol.encode_event(name, channel, data) for channel in channels
    ]
