"""A quota reached by one app leaves another app's webhooks untouched."""

from __future__ import annotations

from collections.abc import Iterator

import pusher.errors
import pytest
from conftest import WsClient
from receiver import Receivers, hook_config

FAST = {"batch_window": 0.05, "grace_period": 0}


@pytest.fixture
def receivers() -> Iterator[Receivers]:
    made = Receivers()
    yield made
    made.close()


def test_a_capped_app_does_not_hold_up_another_apps_webhooks(receivers, make_server):
    main, capped = receivers(), receivers(key="other-key", secret="other-secret", app_id="1002")
    config = hook_config([{"url": main.url}], [{"url": capped.url}], **FAST)
    config["apps"][1]["limits"] = {
        "max_connections": 1,
        "max_subscriptions_per_connection": 1,
        "max_backend_events_per_second": 1,
        "max_read_requests_per_second": 1,
    }
    server = make_server(config)

    # App 1002 at every quota: one socket with one channel, more sockets and channels refused,
    # REST over its rates.
    holder = server.ws(key="other-key")
    holder.subscribe("full")
    url = f"ws://127.0.0.1:{server.port}/app/other-key?protocol=7"
    for _ in range(20):
        extra = WsClient(url)
        server.clients.append(extra)
        assert extra.socket_id is None
    holder.send("pusher:subscribe", {"channel": "second"})
    assert holder.wait_for("pusher:subscription_error", "second")["data"]["status"] == 4301
    sdk = server.sdk(app_id="1002", key="other-key", secret="other-secret")
    with pytest.raises(pusher.errors.PusherBadStatus, match="429"):
        sdk.trigger(["a", "b"], "e", {})  # two events > one a second
    with pytest.raises(pusher.errors.PusherBadStatus, match="429"):
        for _ in range(5):
            sdk.channels_info()

    # App 1001's webhooks flow as ever.
    client = server.ws()
    client.subscribe("orders")
    assert main.wait_event("channel_occupied", channel="orders")["channel"] == "orders"
    client.close()
    main.wait_event("channel_vacated", channel="orders")
    # And app 1002's own webhook for the channel it did get went out.
    capped.wait_event("channel_occupied", channel="full")
