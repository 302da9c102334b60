"""Subscribe and unsubscribe for every channel type (docs/protocol-notes.md §2.2-§2.6, §3)."""

from __future__ import annotations

import base64
import json

import nacl.secret
import pytest

MASTER_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
BAD_TOKEN = "demo-key:" + "0" * 64


@pytest.fixture
def server(shared_server):
    """One process for the module; the cache tests, which leave state behind, use an app of
    their own (app_server)."""
    return shared_server


def succeeded(reply, channel: str) -> None:
    assert reply == {
        "event": "pusher_internal:subscription_succeeded",
        "channel": channel,
        "data": "{}",
    }


def sdk(server):
    """The Python SDK, able to authorize and publish on encrypted channels too."""
    return server.sdk(encryption_master_key_base64=MASTER_KEY)


def gets_only(client, server, channel: str, other: str) -> None:
    """Publishes to `other` then `channel`: the client must see exactly the second."""
    sdk(server).trigger(other, "not-for-you", "x")
    sdk(server).trigger(channel, "marker", "m")
    assert client.expect("marker", channel)["data"] == "m"


# --- public -------------------------------------------------------------------------------------


def test_public_channel_subscription_succeeds_with_string_data(server):
    succeeded(server.ws().subscribe("orders"), "orders")


def test_public_channel_ignores_any_auth(server):
    succeeded(server.ws().subscribe("orders", auth=BAD_TOKEN), "orders")


def test_subscribe_data_may_be_a_json_string(server):
    client = server.ws()
    client.send("pusher:subscribe", json.dumps({"channel": "orders", "auth": ""}))
    succeeded(client.recv(), "orders")


def test_rest_event_reaches_every_subscriber_with_data_unchanged(server):
    clients = [server.ws() for _ in range(3)]
    for client in clients:
        client.subscribe("orders")
    server.sdk().trigger("orders", "order-updated", '{"id":7}')
    for client in clients:
        assert client.expect("order-updated", "orders") == {
            "event": "order-updated",
            "channel": "orders",
            "data": '{"id":7}',
        }


def test_unsubscribe_has_no_reply_and_stops_delivery(server):
    client = server.ws()
    client.subscribe("orders")
    client.subscribe("news")
    client.send("pusher:unsubscribe", {"channel": "orders"})
    client.sync()
    gets_only(client, server, "news", "orders")


def test_unsubscribe_data_may_be_a_json_string(server):
    client = server.ws()
    client.subscribe("orders")
    client.subscribe("news")
    client.send("pusher:unsubscribe", json.dumps({"channel": "orders"}))
    client.sync()
    gets_only(client, server, "news", "orders")


def test_unsubscribing_a_channel_never_subscribed_is_silent(server):
    client = server.ws()
    for channel in ("orders", "private-a", "presence-a", "private-encrypted-a", "#x"):
        client.send("pusher:unsubscribe", {"channel": channel})
    client.sync()
    succeeded(client.subscribe("orders"), "orders")


def test_resubscribing_confirms_again_and_delivers_once(server):
    client = server.ws()
    succeeded(client.subscribe("orders"), "orders")
    succeeded(client.subscribe("orders"), "orders")
    server.sdk().trigger("orders", "once", "x")
    client.expect("once", "orders")
    client.sync()  # no second copy


def test_one_unsubscribe_after_two_subscribes_leaves_the_channel(server):
    client = server.ws()
    client.subscribe("orders")
    client.subscribe("orders")
    client.subscribe("news")
    client.send("pusher:unsubscribe", {"channel": "orders"})
    client.sync()  # unsubscribe has no reply: the pong says it was handled
    gets_only(client, server, "news", "orders")


def test_resubscribing_after_unsubscribe_works(server):
    client = server.ws()
    client.subscribe("orders")
    client.send("pusher:unsubscribe", {"channel": "orders"})
    succeeded(client.subscribe("orders"), "orders")
    server.sdk().trigger("orders", "back", "x")
    client.expect("back", "orders")


def test_rest_socket_id_excludes_that_connection(server):
    sender, other = server.ws(), server.ws()
    sender.subscribe("orders")
    other.subscribe("orders")
    server.sdk().trigger("orders", "e", "x", socket_id=sender.socket_id)
    other.expect("e", "orders")
    sender.sync()


# --- private ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "channel", ["private-orders", "private-App.Models.User.1", "private-cache-x=y@z;a,b.c"]
)
def test_private_channel_with_sdk_token_succeeds(server, channel):
    client = server.ws()
    succeeded(client.subscribe_signed(server.sdk(), channel), channel)
    server.sdk().trigger(channel, "secret", "s")
    if channel.startswith("private-cache-"):
        client.expect("pusher:cache_miss", channel)
    client.expect("secret", channel)


def test_private_channel_token_may_also_sign_channel_data(server):
    # pusher-http-php's authorizeChannel($channel, $socket_id, $custom_data) signs it.
    client = server.ws()
    token = server.sdk().authenticate("private-orders", client.socket_id, {"user_id": "1"})
    succeeded(
        client.subscribe("private-orders", token["auth"], token["channel_data"]), "private-orders"
    )


@pytest.mark.parametrize(
    "channel",
    [
        "private-orders",
        "private-encrypted-orders",
        "private-cache-orders",
        "private-encrypted-cache-orders",
        "presence-room",
        "presence-cache-room",
    ],
)
def test_bad_signature_gets_subscription_error_and_the_socket_stays_open(server, channel):
    client = server.ws()
    data = '{"user_id":"1"}' if channel.startswith("presence-") else None
    refusal = client.expect_refusal(channel, client.subscribe(channel, BAD_TOKEN, data))
    assert refusal["type"] == "AuthError"
    assert refusal["status"] == 401
    assert isinstance(refusal["error"], str) and refusal["error"]
    # Not subscribed, still connected.
    client.subscribe("orders")
    gets_only(client, server, "orders", channel)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(None, id="no-auth"),
        pytest.param("", id="empty-auth"),
        pytest.param("other-key:" + "0" * 64, id="other-key"),
    ],
)
def test_private_channel_without_a_valid_token_is_refused(server, token):
    client = server.ws()
    data = {"channel": "private-orders"}
    if token is not None:
        data["auth"] = token
    client.send("pusher:subscribe", data)
    assert client.expect_refusal("private-orders")["status"] == 401


def test_token_for_another_socket_is_refused(server):
    first, second = server.ws(), server.ws()
    token = server.sdk().authenticate("private-orders", first.socket_id)
    reply = second.subscribe("private-orders", token["auth"])
    assert second.expect_refusal("private-orders", reply)["type"] == "AuthError"


def test_token_for_another_channel_is_refused(server):
    client = server.ws()
    token = server.sdk().authenticate("private-orders", client.socket_id)
    reply = client.subscribe("private-other", token["auth"])
    assert client.expect_refusal("private-other", reply)["type"] == "AuthError"


def test_token_signed_with_another_apps_secret_is_refused(server):
    client = server.ws()
    other = server.sdk(app_id="1002", key="demo-key", secret="other-secret")
    reply = client.subscribe_signed(other, "private-orders")
    assert client.expect_refusal("private-orders", reply)["type"] == "AuthError"


def test_refusal_message_tells_the_developer_what_to_sign(server):
    client = server.ws()
    reply = client.subscribe("private-orders", BAD_TOKEN)
    error = client.expect_refusal("private-orders", reply)["error"]
    assert f"{client.socket_id}:private-orders" in error


# --- encrypted ----------------------------------------------------------------------------------


def test_encrypted_channel_forwards_ciphertext_untouched(server):
    client = server.ws()
    token = sdk(server).authenticate("private-encrypted-orders", client.socket_id)
    succeeded(
        client.subscribe("private-encrypted-orders", token["auth"]), "private-encrypted-orders"
    )
    sdk(server).trigger("private-encrypted-orders", "order-shipped", '{"id":7}')
    message = client.expect("order-shipped", "private-encrypted-orders")
    payload = json.loads(message["data"])
    box = nacl.secret.SecretBox(base64.b64decode(token["shared_secret"]))
    plain = box.decrypt(base64.b64decode(payload["ciphertext"]), base64.b64decode(payload["nonce"]))
    assert plain == b'{"id":7}'


# --- cache channels -----------------------------------------------------------------------------


CACHE_CHANNELS = [
    "cache-orders",
    "private-cache-orders",
    "private-encrypted-cache-orders",
    "presence-cache-room",
]


def subscribe_any(client, server, channel: str):
    """Subscribe to a channel of any type with the SDK's token; returns the reply."""
    if channel.startswith("presence-"):
        return client.subscribe_signed(sdk(server), channel, {"user_id": client.socket_id})
    if channel.startswith("private-"):
        return client.subscribe_signed(sdk(server), channel)
    return client.subscribe(channel)


@pytest.mark.parametrize("channel", CACHE_CHANNELS)
def test_empty_cache_channel_sends_cache_miss_after_success(app_server, channel):
    server = app_server
    client = server.ws()
    reply = subscribe_any(client, server, channel)
    assert reply["event"] == "pusher_internal:subscription_succeeded"
    miss = client.expect("pusher:cache_miss", channel)
    assert set(miss) <= {"event", "channel", "data"}
    client.sync()


@pytest.mark.parametrize("channel", CACHE_CHANNELS)
def test_cache_channel_replays_the_last_rest_event_to_a_new_subscriber(app_server, channel):
    server = app_server
    early = server.ws()
    subscribe_any(early, server, channel)
    early.expect("pusher:cache_miss", channel)
    sdk(server).trigger(channel, "first", "1")
    sdk(server).trigger(channel, "last", '{"n":2}')
    early.expect("first", channel)
    last = early.expect("last", channel)
    late = server.ws()
    assert subscribe_any(late, server, channel)["event"] == (
        "pusher_internal:subscription_succeeded"
    )
    assert late.recv() == last  # byte for byte what the live subscriber got
    late.sync()


def test_cache_replays_batch_events_too(app_server):
    server = app_server
    server.sdk().trigger_batch(
        [
            {"channel": "cache-a", "name": "x", "data": "1"},
            {"channel": "cache-a", "name": "y", "data": "2"},
        ]
    )
    client = server.ws()
    client.subscribe("cache-a")
    assert client.expect("y", "cache-a")["data"] == "2"


def test_cache_is_per_channel(app_server):
    server = app_server
    server.sdk().trigger("cache-a", "x", "1")
    client = server.ws()
    client.subscribe("cache-b")
    client.expect("pusher:cache_miss", "cache-b")


def test_non_cache_channels_replay_nothing(app_server):
    server = app_server
    server.sdk().trigger("orders", "x", "1")
    client = server.ws()
    client.subscribe("orders")
    client.sync()


def test_cache_channel_subscribers_also_get_live_events(app_server):
    server = app_server
    client = server.ws()
    client.subscribe("cache-orders")
    client.expect("pusher:cache_miss", "cache-orders")
    server.sdk().trigger("cache-orders", "live", "1")
    client.expect("live", "cache-orders")


# --- many channels, many apps -------------------------------------------------------------------


def test_one_socket_can_hold_many_channel_types_at_once(server):
    client = server.ws()
    channels = ["orders", "private-a", "presence-b", "private-encrypted-c"]
    for channel in channels:
        assert subscribe_any(client, server, channel)["event"] == (
            "pusher_internal:subscription_succeeded"
        )
    for channel in channels:
        sdk(server).trigger(channel, "hello", channel)
        assert client.expect("hello", channel)["channel"] == channel


def test_an_event_for_one_app_never_reaches_another_apps_channel_of_the_same_name(server):
    main = server.ws()
    other = server.ws(key="other-key")
    main.subscribe("orders")
    other.subscribe("orders")
    server.sdk().trigger("orders", "for-main", "x")
    main.expect("for-main", "orders")
    other.sync()
    server.sdk(app_id="1002", key="other-key", secret="other-secret").trigger(
        "orders", "for-other", "y"
    )
    other.expect("for-other", "orders")
    main.sync()


def test_cache_is_per_app(app_server):
    server = app_server
    server.sdk().trigger("cache-orders", "x", "1")
    other = server.ws(key="other-key")
    other.subscribe("cache-orders")
    other.expect("pusher:cache_miss", "cache-orders")


def test_another_apps_token_does_not_open_a_private_channel(server):
    other = server.ws(key="other-key")
    reply = other.subscribe_signed(server.sdk(), "private-orders")
    assert other.expect_refusal("private-orders", reply)["type"] == "AuthError"
