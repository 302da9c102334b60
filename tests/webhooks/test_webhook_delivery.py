"""Webhook delivery under receiver faults: retried until acknowledged, never blocking clients.

The receiver answers 500, refuses connections or never answers for a while; afterwards every
webhook arrives at least once, and meanwhile WebSocket traffic goes on. Waits are bounded and
follow what the receiver or the server log saw, never the clock.
"""

from __future__ import annotations

import json
import re

from support import Receiver, free_port, hook_config, metric, wait_until

# Short back-off so that a fault of a few attempts costs well under a second of retries.
RETRY = {
    "batch_window": 0.02,
    "grace_period": 0,
    "retry_backoff": 0.1,
    "retry_backoff_max": 0.3,
}


def publish_reaches_subscriber(server, channel: str = "live") -> None:
    """A subscriber gets an SDK publish: the WebSocket side is unaffected."""
    client = server.ws()
    client.subscribe(channel)
    server.sdk().trigger(channel, "tick", {"n": 1})
    assert json.loads(client.expect("tick", channel)["data"]) == {"n": 1}


def occupied(hook: Receiver) -> list[str]:
    return [e["channel"] for e in hook.events("channel_occupied")]


def test_answers_500_for_a_while_then_everything_arrives(receivers, make_server):
    hook = receivers()
    hook.answer(500)
    server = make_server(hook_config([{"url": hook.url}], **RETRY))
    client = server.ws()
    client.subscribe("c1")
    wait_until(lambda: hook.attempts() >= 3, message="three attempts answered 500")
    client.subscribe("c2")  # more events while the receiver fails
    publish_reaches_subscriber(server)
    hook.answer(200)
    wait_until(lambda: sorted(occupied(hook)) == ["c1", "c2", "live"], message="all events")
    # Every attempt was signed and valid, and a retry resent the very same bytes: same time_ms.
    with hook.lock:
        hooks = list(hook.hooks)
    assert all(h.valid is not None for h in hooks)
    failed = [h for h in hooks if h.status == 500]
    first_delivered = hook.delivered()[0]
    assert failed[0].body == first_delivered.body
    assert "c1" in [e["channel"] for e in first_delivered.events]


def test_refused_connections_then_everything_arrives(receivers, make_server):
    port = free_port()  # nothing listens there yet
    server = make_server(hook_config([{"url": f"http://127.0.0.1:{port}/hook"}], **RETRY))
    client = server.ws()
    client.subscribe("c1")
    wait_until(
        lambda: server.log().count("webhook to http://127.0.0.1") >= 2,
        message="two refused attempts in the log",
    )
    publish_reaches_subscriber(server)
    hook = receivers(port=port)
    wait_until(lambda: sorted(occupied(hook)) == ["c1", "live"], message="all events")


def test_never_answering_receiver_times_out_and_clients_go_on(receivers, make_server):
    hook = receivers()
    hook.answer(hang=True)
    server = make_server(hook_config([{"url": hook.url}], timeout=0.5, **RETRY))
    client = server.ws()
    client.subscribe("c1")
    wait_until(lambda: hook.attempts() >= 2, message="a timed-out attempt and a retry")
    publish_reaches_subscriber(server)  # while the receiver still hangs
    assert hook.delivered() == []
    hook.answer(200)
    wait_until(lambda: sorted(occupied(hook)) == ["c1", "live"], message="all events")
    assert "no answer within 0.5s" in server.log()


def test_a_webhook_given_up_is_counted_and_logged(receivers, make_server):
    hook = receivers()
    hook.answer(503)
    server = make_server(hook_config([{"url": hook.url}], retry_for=0.5, **RETRY))
    server.ws().subscribe("c1")
    wait_until(lambda: metric(server, "ipe_webhooks_failed_total") == 1, message="a give-up")
    assert re.search(
        r"webhook given up: app 1001, 1 event\(s\) to http://127\.0\.0\.1:\d+/hook "
        r"after \d+ attempt\(s\) in [0-9.]+s; last error: HTTP 503",
        server.log(),
    )
    assert hook.attempts() >= 2  # it was retried before being given up
    hook.answer(200)
    publish_reaches_subscriber(server)
    wait_until(lambda: occupied(hook) == ["live"], message="later events still delivered")
    # The receiver records the request before ipe has read its 200 and counted it.
    wait_until(lambda: metric(server, "ipe_webhooks_sent_total") == 1, message="one sent")
    assert metric(server, "ipe_webhooks_failed_total") == 1


def test_a_full_queue_drops_with_a_counter_and_never_blocks(receivers, make_server):
    hook = receivers()
    hook.answer(hang=True)
    server = make_server(hook_config([{"url": hook.url}], queue_size=3, timeout=1, **RETRY))
    client = server.ws()
    channels = [f"c{i}" for i in range(1, 12)]
    for channel in channels:
        # Every subscription is confirmed at once although no webhook can leave.
        assert client.subscribe(channel)["event"] == "pusher_internal:subscription_succeeded"
    # c1 is in flight, c2 and c3 wait: the queue holds 3, the other 8 are dropped.
    assert metric(server, "ipe_webhooks_dropped_total") == 8
    assert "webhook queue full (3 events): dropped 1 event(s)" in server.log()
    publish_reaches_subscriber(server)
    hook.answer(200)
    wait_until(lambda: occupied(hook) == ["c1", "c2", "c3"], message="the queued events")


def test_shutdown_flushes_what_waits(receivers, make_server):
    hook = receivers()
    # Nothing would leave for 30 s on its own: a long batch window and a long grace period.
    server = make_server(
        hook_config([{"url": hook.url}], batch_window=30, grace_period=30, flush_timeout=5)
    )
    stays = server.ws()
    stays.subscribe("orders")
    leaves = server.ws()
    leaves.subscribe("news")
    leaves.send("pusher:unsubscribe", {"channel": "news"})
    leaves.sync()
    assert server.stop() == 0
    # Sent before the process exited: the waiting occupied events, the vacated one held for
    # its grace period, and the vacated one of the client that shutdown disconnected.
    assert sorted((e["name"], e["channel"]) for e in hook.events()) == [
        ("channel_occupied", "news"),
        ("channel_occupied", "orders"),
        ("channel_vacated", "news"),
        ("channel_vacated", "orders"),
    ]


def test_retries_back_off_doubling_up_to_retry_backoff_max(receivers, make_server):
    # Each failed attempt logs the wait the server chose before the next one: 0.2 s, then
    # doubling, capped at 0.8 s, each shortened by up to a fifth (the jitter).
    hook = receivers()
    hook.answer(500)
    settings = {**RETRY, "retry_backoff": 0.2, "retry_backoff_max": 0.8}
    server = make_server(hook_config([{"url": hook.url}], **settings))
    server.ws().subscribe("c1")
    pattern = re.compile(r"webhook to \S+ failed \(HTTP 500\); attempt (\d+), next in ([0-9.]+)s")
    wait_until(lambda: len(pattern.findall(server.log())) >= 5, 15, message="five failed attempts")
    waits = {int(n): float(s) for n, s in pattern.findall(server.log())}
    for attempt in range(1, 6):
        expected = min(0.8, 0.2 * 2 ** (attempt - 1))
        # Logged with one decimal: allow its rounding around [0.8, 1.0] x expected.
        assert 0.8 * expected - 0.05 <= waits[attempt] <= expected + 0.05, (attempt, waits)
