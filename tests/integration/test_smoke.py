"""The shortest path through ipe: connect, subscribe, publish with the SDK, receive."""

from __future__ import annotations

import json


def test_public_channel_receives_sdk_trigger(server):
    client = server.ws()
    assert client.established["activity_timeout"] == 30
    assert client.subscribe("orders")["event"] == "pusher_internal:subscription_succeeded"
    assert server.sdk().trigger("orders", "order-updated", {"id": 7}) == {}
    message = client.expect("order-updated", "orders")
    assert json.loads(message["data"]) == {"id": 7}
