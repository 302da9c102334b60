"""Routing by interest: a node hears from Redis only what its own sockets want."""

from __future__ import annotations

import json

from cluster_support import FIXTURES, metric, settle
from conftest import wait_until

make_redis, redis_server, nodes = FIXTURES


def test_a_node_without_subscribers_of_a_channel_receives_none_of_its_messages(nodes):
    a, b = nodes(2)
    busy = a.ws()
    busy.subscribe("busy")
    watcher_a, watcher_b = a.ws(), b.ws()
    for client in (watcher_a, watcher_b):
        client.subscribe("other")
    settle(a, b)
    before_a = metric(a, "ipe_pubsub_messages_received_total")
    before_b = metric(b, "ipe_pubsub_messages_received_total")

    sdk = a.sdk()
    for i in range(20):
        sdk.trigger("busy", "tick", {"i": i})
    sdk.trigger("other", "marker", {})  # after the ticks, on the same Redis connection
    for i in range(20):
        assert json.loads(busy.expect("tick", "busy")["data"]) == {"i": i}
    watcher_b.expect("marker", "other")
    watcher_a.expect("marker", "other")

    # B heard the marker and nothing of "busy"; A hears its own 20 echoes (and skips them:
    # its clients had them already), so the counter does count what a subscriber hears.
    assert metric(b, "ipe_pubsub_messages_received_total") - before_b == 1
    wait_until(lambda: metric(a, "ipe_pubsub_messages_received_total") - before_a >= 20, 10)
    b_topics = metric(b, "ipe_broker_topics")
    busy.close()
    other_b = b.ws()
    other_b.subscribe("busy")  # B wants it now: one more topic, and it hears A's publishes
    assert metric(b, "ipe_broker_topics") == b_topics + 1
    sdk.trigger("busy", "late", {})
    other_b.expect("late", "busy")
