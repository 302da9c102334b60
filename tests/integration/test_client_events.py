"""Client events (protocol-notes.md §5): client- prefix, private and presence only, never echoed."""

from __future__ import annotations

import json

import pytest
from support import wait_until

MASTER_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="


@pytest.fixture
def server(app_server):
    """An app of its own on the module's shared server (channels and users are per app)."""
    return app_server


def pair(server, channel: str, key: str | None = None):
    """Two sockets on `channel` (presence members "1" and "2"); returns (sender, receiver)."""
    if key is None:
        sdk = server.sdk(encryption_master_key_base64=MASTER_KEY)
    else:
        sdk = server.sdk("1005", "quiet-key", "quiet-secret")
    clients = []
    for user_id in ("1", "2"):
        client = server.ws(key=key)
        member = {"user_id": user_id} if channel.startswith("presence-") else None
        reply = client.subscribe_signed(sdk, channel, member)
        assert reply["event"] == "pusher_internal:subscription_succeeded", reply
        if "cache-" in channel:
            client.expect("pusher:cache_miss", channel)
        clients.append(client)
    if channel.startswith("presence-"):
        clients[0].expect("pusher_internal:member_added", channel)
    return clients[0], clients[1]


def rejected(client, code: int = 4301) -> str:
    """A pusher:error with `code` for the sender, whose socket stays open."""
    error = client.expect("pusher:error")
    assert error["data"]["code"] == code, error
    client.sync()
    return error["data"]["message"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("channel", ["private-chat", "private-cache-chat"])
def test_client_event_reaches_others_unchanged_and_never_the_sender(server, channel):
    sender, receiver = pair(server, channel)
    third = server.ws()
    third.subscribe_signed(server.sdk(), channel)
    sender.send("client-typing", {"on": True, "text": "é"}, channel=channel)
    expected = {"event": "client-typing", "channel": channel, "data": {"on": True, "text": "é"}}
    assert receiver.recv() == expected
    assert third.wait_for("client-typing", channel) == expected
    sender.sync()


@pytest.mark.parametrize("channel", ["presence-chat", "presence-cache-chat"])
def test_client_event_on_presence_carries_the_senders_user_id(server, channel):
    sender, receiver = pair(server, channel)
    sender.send("client-typing", "raw string", channel=channel)
    assert receiver.recv() == {
        "event": "client-typing",
        "channel": channel,
        "data": "raw string",
        "user_id": "1",
    }
    sender.sync()


def test_integer_user_id_is_sent_as_a_string(server):
    sender, receiver = server.ws(), server.ws()
    sender.subscribe_signed(server.sdk(), "presence-chat", {"user_id": 42})
    receiver.subscribe_signed(server.sdk(), "presence-chat", {"user_id": 7})
    sender.expect("pusher_internal:member_added")
    sender.send("client-x", {}, channel="presence-chat")
    assert receiver.expect("client-x", "presence-chat")["user_id"] == "42"


@pytest.mark.parametrize(
    "channel",
    ["public-chat", "cache-chat", "private-encrypted-chat", "private-encrypted-cache-chat"],
)
def test_client_event_is_rejected_on_public_and_encrypted_channels(server, channel):
    sender, receiver = pair(server, channel)
    sender.send("client-typing", {}, channel=channel)
    assert "only supported on private and presence channels" in rejected(sender)
    receiver.sync()


def test_client_event_on_a_channel_the_sender_is_not_subscribed_to_is_rejected(server):
    _, receiver = pair(server, "private-chat")
    outsider = server.ws()
    outsider.send("client-typing", {}, channel="private-chat")
    rejected(outsider)
    receiver.sync()


def test_client_event_after_unsubscribing_is_rejected(server):
    sender, receiver = pair(server, "private-chat")
    sender.send("pusher:unsubscribe", {"channel": "private-chat"})
    sender.send("client-typing", {}, channel="private-chat")
    rejected(sender)
    receiver.sync()


def test_client_event_without_a_channel_is_rejected(server):
    sender, _ = pair(server, "private-chat")
    sender.send("client-typing", {})
    rejected(sender)


def test_client_events_are_rejected_when_the_app_turns_them_off(server):
    sender, receiver = pair(server, "private-chat", key="quiet-key")
    sender.send("client-typing", {}, channel="private-chat")
    assert "enable" in rejected(sender)
    receiver.sync()


def test_eleventh_client_event_within_a_second_gets_4301_and_the_socket_stays_open(server):
    sender, receiver = pair(server, "private-chat")
    frames = [
        json.dumps({"event": "client-n", "channel": "private-chat", "data": {"n": n}})
        for n in range(11)
    ]
    # One TCP write: the server reads all eleven at once, well inside one second.
    sender.send_wire(b"".join(masked_text(frame) for frame in frames))
    assert rejected(sender) == "Client event rejected due to rate limit"
    for n in range(10):
        assert receiver.expect("client-n", "private-chat")["data"] == {"n": n}
    receiver.sync()

    def one_gets_through() -> bool:
        sender.send("client-later", {}, channel="private-chat")
        sender.send("pusher:ping", {})
        if sender.recv()["event"] == "pusher:pong":
            return True
        sender.expect("pusher:pong")
        return False

    wait_until(one_gets_through, timeout=5, interval=0.2, message="the rate window to pass")
    receiver.wait_for("client-later", "private-chat")


def test_the_rate_limit_counts_per_connection(server):
    pairs = {channel: pair(server, channel) for channel in ("private-a", "private-b")}
    for channel, (sender, _) in pairs.items():
        frame = masked_text(json.dumps({"event": "client-n", "channel": channel}))
        sender.send_wire(frame * 10)
    for channel, (sender, receiver) in pairs.items():
        sender.sync()  # ten each, from two sockets of one app: no error
        for _ in range(10):
            receiver.expect("client-n", channel)


def test_client_event_data_over_10_kb_is_rejected(server):
    sender, receiver = pair(server, "private-chat")
    sender.send("client-big", "é" * 5121, channel="private-chat")  # 10242 bytes
    assert "too large" in rejected(sender)
    sender.send("client-big", {"text": "x" * 10230}, channel="private-chat")  # 10241 as JSON
    assert "too large" in rejected(sender)
    receiver.sync()
    sender.send("client-fits", "x" * 10240, channel="private-chat")
    assert receiver.expect("client-fits", "private-chat")["data"] == "x" * 10240
    sender.send("client-fits", {"text": "x" * 10229}, channel="private-chat")
    assert receiver.expect("client-fits", "private-chat")["data"] == {"text": "x" * 10229}


def test_client_event_name_over_200_characters_is_rejected(server):
    sender, receiver = pair(server, "private-chat")
    sender.send("client-" + "x" * 194, {}, channel="private-chat")
    rejected(sender)
    sender.send("client-" + "x" * 193, {}, channel="private-chat")
    receiver.expect("client-" + "x" * 193, "private-chat")


def test_client_events_are_not_cached(server):
    sender, _ = pair(server, "private-cache-chat")
    sender.send("client-typing", {}, channel="private-cache-chat")
    sender.sync()
    late = server.ws()
    late.subscribe_signed(server.sdk(), "private-cache-chat")
    late.expect("pusher:cache_miss", "private-cache-chat")


def test_events_without_the_client_prefix_are_not_forwarded(server):
    sender, receiver = pair(server, "private-chat")
    sender.send("typing", {}, channel="private-chat")
    sender.send("Client-typing", {}, channel="private-chat")
    sender.sync()
    receiver.sync()


def masked_text(text: str) -> bytes:
    """One masked text frame (zero mask key) of a short message."""
    payload = text.encode()
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload
