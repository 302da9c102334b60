"""Webhooks of an app whose secret rotates are signed with the first listed secret."""

from __future__ import annotations

from typing import Any

import pusher
from support import APP_ID, KEY, SECRET, Receiver, config_with, wait_until


def test_webhooks_are_signed_with_the_first_secret(make_server: Any) -> None:
    receiver = Receiver(secret="new-secret")  # validates every request with the official SDK
    try:
        _signed_with_the_first(receiver, make_server)
    finally:
        receiver.close()


def _signed_with_the_first(receiver: Receiver, make_server: Any) -> None:
    config = config_with(webhooks={"batch_window": 0.05})
    app = config["apps"][0]
    del app["secret"]
    app["secrets"] = ["new-secret", SECRET]
    app["webhooks"] = [{"url": receiver.url, "event_types": ["channel_occupied"]}]
    server = make_server(config)
    client = server.ws()
    client.subscribe("hooked")
    (hook,) = wait_until(receiver.delivered, 5, message="the webhook")
    old = pusher.Pusher(app_id=APP_ID, key=KEY, secret=SECRET)
    assert old.validate_webhook(KEY, hook.headers["X-Pusher-Signature"], hook.body) is None
