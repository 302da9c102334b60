"""Per-node Pub/Sub metrics: messages received from Redis, and those that had to be dropped."""

from __future__ import annotations

from support import APP_ID, wait_until


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
