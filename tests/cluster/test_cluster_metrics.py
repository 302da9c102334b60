"""Per-node Pub/Sub metrics: messages received from Redis, and those that had to be dropped."""

from __future__ import annotations

import re

from support import APP_ID, wait_until
from support.auth import join


def test_pubsub_messages_received_and_dropped_per_node(nodes, redis_server):
    a, b = nodes(2)
    client = b.ws()
    client.subscribe("orders")
    sdk = a.sdk()
    for n in range(3):
        sdk.trigger("orders", "order", str(n))
    for _ in range(3):
        client.expect("order", "orders")
    # B, which holds the subscriber, receives them; A, which holds none, receives nothing
    # (routing by interest: its own publishes reached its own clients without Redis).
    wait_until(
        lambda: b.metric("ipe_pubsub_messages_received_total") >= 3,
        message="3 messages received",
    )
    assert a.metric("ipe_pubsub_messages_received_total") == 0
    for server in (a, b):
        assert server.metric("ipe_pubsub_messages_dropped_total") == 0
    assert b.metric(f'ipe_ws_messages_sent_total{{app_id="{APP_ID}"}}') == 3

    # Every node listens to the app's control channel.
    redis_server.client().publish(f"ipe:app:{APP_ID}", b"not a message")
    for server in (a, b):
        wait_until(
            lambda s=server: s.metric("ipe_pubsub_messages_dropped_total") == 1,
            message="the malformed message dropped",
        )
    client.sync()  # and nothing reached the client


def _envelopes(redis_server, channel: str):
    """A raw Pub/Sub connection that sees every message; returns a function that waits for
    the next envelope naming `channel` and returns its header line."""
    pubsub = redis_server.client().pubsub()
    pubsub.psubscribe("*")
    wait_until(lambda: pubsub.get_message(timeout=0.1) is not None, message="psubscribed")

    def next_header() -> bytes:
        found: list[bytes] = []

        def arrived() -> bool:
            message = pubsub.get_message(timeout=0.1)
            if message and message["type"] == "pmessage":
                header = message["data"].split(b"\n", 1)[0]
                if f'"c":"{channel}"'.encode() in header:
                    found.append(header)
            return bool(found)

        wait_until(arrived, message=f"an envelope for {channel}")
        return found[0]

    return next_header


def test_a_node_knows_its_own_echo_by_the_first_bytes(nodes, redis_server):
    """The envelope starts with the publishing node's id, so that node drops its echo
    without parsing it; a message it must hear back (a member event) starts with "o"."""
    (a,) = nodes(1)
    next_header = _envelopes(redis_server, "echo")
    client = a.ws()
    client.subscribe("echo")
    before = a.metric("ipe_pubsub_messages_received_total")
    a.sdk().trigger("echo", "said", "once")
    assert client.expect("said", "echo")["data"] == "once"
    header = next_header()
    assert re.match(rb'\{"n":"[^"]+","k":"e","c":"echo"', header), header
    wait_until(
        lambda: a.metric("ipe_pubsub_messages_received_total") >= before + 1,
        message="the echo received",
    )
    assert a.metric("ipe_pubsub_messages_dropped_total") == 0
    client.sync()  # the echo reached nobody

    next_member = _envelopes(redis_server, "presence-echo")
    join(a, "presence-echo", "u1")
    assert next_member().startswith(b'{"o":1,"n":"')
