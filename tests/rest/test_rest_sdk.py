"""Every REST endpoint through the official Python and Node SDKs, checked against real sockets.

Each test runs once per SDK on a fresh server, so counts are exact. WebSocket clients are
signed with the same SDK (authorizeChannel / authenticateUser).
"""

from __future__ import annotations

import base64
import json

import nacl.secret
import pytest
from support import sign_in as sign_in_as
from support import wait_until
from support.rest import SDKS, NodeSdk, PythonSdk, SdkError, sign_in, subscribe

MASTER_KEY = base64.b64encode(bytes(range(32))).decode()


@pytest.fixture
def server(app_server):
    """An app of its own on the module's shared server (channels and users are per app)."""
    return app_server


@pytest.fixture(params=sorted(SDKS))
def sdk(request, server):
    return SDKS[request.param](server)


def room(server, sdk):
    """presence-room with users 42 (two sockets) and 7; orders with two sockets; one private.

    Returns the clients (a, b, c): a and b are user 42, c is user 7; a and b also on orders,
    a on private-orders.
    """
    a, b, c = server.ws(), server.ws(), server.ws()
    subscribe(a, sdk, "presence-room", {"user_id": "42", "user_info": {"name": "Ann"}})
    subscribe(b, sdk, "presence-room", {"user_id": "42", "user_info": {"name": "Ann"}})
    subscribe(c, sdk, "presence-room", {"user_id": "7"})
    a.expect("pusher_internal:member_added", "presence-room")  # 7 joined
    b.expect("pusher_internal:member_added", "presence-room")
    for client in (a, b):
        subscribe(client, sdk, "orders")
    subscribe(a, sdk, "private-orders")
    return a, b, c


# --- events --------------------------------------------------------------------------------------


def test_trigger_reaches_every_subscriber(server, sdk):
    a, b, c = room(server, sdk)
    assert sdk.trigger(["orders", "presence-room"], "order-updated", {"id": 7}) == {}
    for client in (a, b):
        got = [client.expect("order-updated"), client.expect("order-updated")]
        assert {m["channel"] for m in got} == {"orders", "presence-room"}
        assert all(json.loads(m["data"]) == {"id": 7} for m in got)
    assert json.loads(c.expect("order-updated", "presence-room")["data"]) == {"id": 7}
    c.sync()


def test_trigger_one_channel_with_string_data(server, sdk):
    client = server.ws()
    subscribe(client, sdk, "orders")
    assert sdk.trigger("orders", "App\\Events\\OrderShipped", '{"raw":"string"}') == {}
    message = client.expect("App\\Events\\OrderShipped", "orders")
    assert message == {
        "event": "App\\Events\\OrderShipped",
        "channel": "orders",
        "data": '{"raw":"string"}',
    }


def test_socket_id_excludes_only_that_connection(server, sdk):
    a, b = server.ws(), server.ws()
    for client in (a, b):
        subscribe(client, sdk, "orders")
    assert sdk.trigger("orders", "order-updated", "1", socket_id=a.socket_id) == {}
    b.expect("order-updated", "orders")
    a.sync()  # the event was published before the REST reply: it would be before the pong
    # An unknown (well-formed) socket id excludes nobody.
    assert sdk.trigger("orders", "order-updated", "2", socket_id="123.456") == {}
    assert a.expect("order-updated", "orders")["data"] == "2"
    assert b.expect("order-updated", "orders")["data"] == "2"


def test_trigger_info_counts(server):
    # Only the Node SDK can ask for `info` on a trigger (python has no such option).
    sdk = NodeSdk(server)
    room(server, sdk)
    reply = sdk.trigger(
        ["orders", "presence-room", "nobody-here"],
        "order-updated",
        {"id": 7},
        info="user_count,subscription_count",
    )
    assert reply == {
        "channels": {
            "orders": {"subscription_count": 2},
            "presence-room": {"user_count": 2, "subscription_count": 3},
            "nobody-here": {"subscription_count": 0},
        }
    }
    reply = sdk.trigger("presence-room", "x", "1", info="user_count")
    assert reply == {"channels": {"presence-room": {"user_count": 2}}}


def test_trigger_batch(server, sdk):
    a, b, c = room(server, sdk)
    batch = [
        {"channel": "orders", "name": "first", "data": {"n": 1}},
        {"channel": "presence-room", "name": "second", "data": "2", "socket_id": a.socket_id},
        {"channel": "private-orders", "name": "third", "data": "3"},
    ]
    assert sdk.trigger_batch(batch) == {}
    assert json.loads(a.expect("first", "orders")["data"]) == {"n": 1}
    assert a.expect("third", "private-orders")["data"] == "3"
    a.sync()  # excluded from "second"
    assert b.expect("first", "orders")
    assert b.expect("second", "presence-room")["data"] == "2"
    assert c.expect("second", "presence-room")["data"] == "2"


def test_trigger_batch_info_in_request_order(server, sdk):
    # Both SDKs pass the items through, `info` included.
    room(server, sdk)
    batch = [
        {"channel": "orders", "name": "e", "data": "1", "info": "subscription_count"},
        {"channel": "presence-room", "name": "e", "data": "2"},
        {"channel": "presence-room", "name": "e", "data": "3", "info": "user_count"},
        {"channel": "orders", "name": "e", "data": "4", "info": "user_count"},
        {
            "channel": "presence-room",
            "name": "e",
            "data": "5",
            "info": "user_count,subscription_count",
        },
    ]
    assert sdk.trigger_batch(batch) == {
        "batch": [
            {"subscription_count": 2},
            {},
            {"user_count": 2},
            {},
            {"user_count": 2, "subscription_count": 3},
        ]
    }


def test_send_to_user_reaches_every_signed_in_socket_of_that_user(server, sdk):
    a, b, other, anonymous = server.ws(), server.ws(), server.ws(), server.ws()
    sign_in(a, sdk, "42")
    sign_in(b, sdk, "42")
    sign_in(other, sdk, "7")
    # pusher-js subscribes to its own #server-to-user- channel after signing in; b does not.
    assert a.subscribe("#server-to-user-42")["event"] == "pusher_internal:subscription_succeeded"
    assert sdk.send_to_user("42", "notice", {"text": "hi"}) == {}
    for client in (a, b):
        message = client.expect("notice", "#server-to-user-42")
        assert json.loads(message["data"]) == {"text": "hi"}
    other.sync()
    anonymous.sync()
    # Users' own channels are no channels of the app.
    assert sdk.channels_info() == {"channels": {}}


# --- channel queries -----------------------------------------------------------------------------


def test_channels_info(server, sdk):
    assert sdk.channels_info() == {"channels": {}}
    a, b, c = room(server, sdk)
    assert sdk.channels_info() == {
        "channels": {"presence-room": {}, "orders": {}, "private-orders": {}}
    }
    assert sdk.channels_info("presence-", ("user_count",)) == {
        "channels": {"presence-room": {"user_count": 2}}
    }
    assert sdk.channels_info("pri") == {"channels": {"private-orders": {}}}
    assert sdk.channels_info("nothing-") == {"channels": {}}
    assert sdk.channels_info(None, ("subscription_count",)) == {
        "channels": {
            "presence-room": {"subscription_count": 3},
            "orders": {"subscription_count": 2},
            "private-orders": {"subscription_count": 1},
        }
    }
    with pytest.raises(SdkError) as raised:
        sdk.channels_info(None, ("user_count",))
    assert raised.value.status == 400
    # user_count counts users, not sockets: user 42 leaving one of two sockets changes nothing.
    a.close()
    wait_until(
        lambda: (
            sdk.channels_info(None, ("subscription_count",))["channels"]["orders"]
            == {"subscription_count": 1}
        ),
        message="a's subscriptions to go",
    )
    assert sdk.channels_info("presence-", ("user_count",)) == {
        "channels": {"presence-room": {"user_count": 2}}
    }
    c.close()
    wait_until(
        lambda: (
            sdk.channels_info("presence-", ("user_count",))
            == {"channels": {"presence-room": {"user_count": 1}}}
        ),
        message="user 7 to leave",
    )
    assert "private-orders" not in sdk.channels_info()["channels"]  # vacated: not listed


def test_channel_info(server, sdk):
    assert sdk.channel_info("orders") == {"occupied": False}
    assert sdk.channel_info("orders", ("subscription_count",)) == {
        "occupied": False,
        "subscription_count": 0,
    }
    room(server, sdk)
    assert sdk.channel_info("orders") == {"occupied": True}
    assert sdk.channel_info("orders", ("subscription_count",)) == {
        "occupied": True,
        "subscription_count": 2,
    }
    assert sdk.channel_info("presence-room", ("user_count", "subscription_count")) == {
        "occupied": True,
        "user_count": 2,
        "subscription_count": 3,
    }
    with pytest.raises(SdkError) as raised:
        sdk.channel_info("orders", ("user_count",))
    assert raised.value.status == 400


def test_cache_channel_info_and_replay(server, sdk):
    first = server.ws()
    subscribe(first, sdk, "cache-prices")
    first.expect("pusher:cache_miss", "cache-prices")
    assert sdk.channel_info("cache-prices", ("cache",)) == {"occupied": True, "cache": None}
    assert sdk.trigger("cache-prices", "price", {"eur": 7}) == {}
    first.expect("price", "cache-prices")
    info = sdk.channel_info("cache-prices", ("cache", "subscription_count"))
    assert info["occupied"] is True and info["subscription_count"] == 1
    assert json.loads(info["cache"]["data"]) == {"eur": 7}
    assert 0 < info["cache"]["ttl"] <= 1800
    # A new subscriber gets the cached event instead of a cache miss.
    late = server.ws()
    subscribe(late, sdk, "cache-prices")
    assert json.loads(late.expect("price", "cache-prices")["data"]) == {"eur": 7}
    # The cache outlives its subscribers.
    first.close()
    late.close()
    wait_until(lambda: sdk.channel_info("cache-prices")["occupied"] is False)
    cached = sdk.channel_info("cache-prices", ("cache",))["cache"]
    assert json.loads(cached["data"]) == {"eur": 7}


def test_users_info(server, sdk):
    assert sdk.users_info("presence-room") == {"users": []}
    a, b, c = room(server, sdk)
    users = sdk.users_info("presence-room")
    assert sorted(users["users"], key=lambda u: u["id"]) == [{"id": "42"}, {"id": "7"}]
    with pytest.raises(SdkError) as raised:
        sdk.users_info("orders")
    assert raised.value.status == 400
    c.close()
    wait_until(lambda: sdk.users_info("presence-room") == {"users": [{"id": "42"}]})


# --- terminate -----------------------------------------------------------------------------------


def test_terminate_closes_only_that_users_signed_in_sockets(server, sdk):
    a, b, other = server.ws(), server.ws(), server.ws()
    sign_in(a, sdk, "42")
    sign_in(b, sdk, "42")
    sign_in(other, sdk, "7")
    # In presence as user 42 through channel_data only, not signed in: not terminated.
    member_only = server.ws()
    subscribe(member_only, sdk, "presence-room", {"user_id": "42"})
    assert sdk.terminate_user_connections("42") == {}
    for client in (a, b):
        assert client.expect_close() == (4009, "You got disconnected by the app.")
    other.sync()
    member_only.sync()
    assert sdk.users_info("presence-room") == {"users": [{"id": "42"}]}
    # Nobody is signed in as 42 any more: terminating again is fine and closes nothing.
    assert sdk.terminate_user_connections("42") == {}
    other.sync()


def test_terminate_an_unknown_user(server, sdk):
    assert sdk.terminate_user_connections("nobody") == {}


# --- errors as the SDKs surface them --------------------------------------------------------------


@pytest.mark.parametrize(
    ("app_id", "key", "secret", "status"),
    [
        ("1001", "demo-key", "wrong-secret", 401),
        ("1001", "other-key", "other-secret", 401),
        ("1003", "off-key", "off-secret", 403),
        ("9999", "demo-key", "demo-secret", 404),
    ],
)
def test_sdk_errors(server, app_id, key, secret, status):
    python = PythonSdk(server, app_id=app_id, key=key, secret=secret)
    node = NodeSdk(server, appId=app_id, key=key, secret=secret)
    if status != 403 and secret != "wrong-secret":
        # python's terminate path has no app id: the (valid) key alone names the app.
        assert python.terminate_user_connections("42") == {}
    # Watchers on app 1001, the app named by the path or the key: no refused call reaches them.
    watchers = [server.ws(key="demo-key"), server.ws(key="demo-key")]
    watchers[0].subscribe("orders")
    sign_in_as(watchers[1], "42")
    for sdk in (python, node):
        calls = {
            "trigger": lambda s=sdk: s.trigger("orders", "e", "1"),
            "channels": lambda s=sdk: s.channels_info(),
            "terminate": lambda s=sdk: s.terminate_user_connections("42"),
        }
        if sdk is python and status != 403 and secret != "wrong-secret":
            del calls["terminate"]  # accepted, above
        for name, call in calls.items():
            with pytest.raises(SdkError) as raised:
                call()
            assert raised.value.status == status, (sdk.name, name, raised.value.body)
            assert list(json.loads(raised.value.body)) == ["error"], (sdk.name, name)
    for watcher in watchers:
        watcher.sync()  # no event, and still connected


def test_data_over_10kb_is_413(server, sdk):
    client = server.ws()
    subscribe(client, sdk, "orders")
    with pytest.raises(SdkError) as raised:
        sdk.trigger("orders", "e", "x" * 10241)
    assert raised.value.status == 413
    assert json.loads(raised.value.body) == {"error": "Event data larger than 10240 bytes"}
    client.sync()  # nothing was published


# --- encrypted channels -------------------------------------------------------------------------


@pytest.mark.parametrize("sdk_name", sorted(SDKS))
def test_encrypted_trigger_reaches_the_client_untouched(server, sdk_name):
    """The server relays the SDK's ciphertext as is; the client's shared secret decrypts it."""
    if sdk_name == "python":
        sdk = PythonSdk(server, encryption_master_key_base64=MASTER_KEY)
    else:
        sdk = NodeSdk(server, encryptionMasterKeyBase64=MASTER_KEY)
    client = server.ws()
    channel = "private-encrypted-orders"
    token = sdk.authorize_channel(client.socket_id, channel)
    assert client.subscribe(channel, token["auth"])["event"] == (
        "pusher_internal:subscription_succeeded"
    )
    assert sdk.trigger(channel, "secret", {"card": "4242"}) == {}
    payload = json.loads(client.expect("secret", channel)["data"])
    box = nacl.secret.SecretBox(base64.b64decode(token["shared_secret"]))
    plain = box.decrypt(base64.b64decode(payload["ciphertext"]), base64.b64decode(payload["nonce"]))
    assert json.loads(plain) == {"card": "4242"}
