"""The live log against real ipe processes: every kind of record, in order, from every node,
and nothing recorded while nobody watches."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from cluster.cluster_support import FIXTURES, redis_config
from conftest import SECRET, IpeServer, wait_until
from console_support import CONSOLE, ConsoleUser, console_config
from support.server import Gunicorn

make_redis, redis_server, nodes = FIXTURES


@pytest.fixture
def users() -> Iterator[list[ConsoleUser]]:
    made: list[ConsoleUser] = []
    yield made
    for user in made:
        user.close()


def logged_in(server: IpeServer, users: list[ConsoleUser]) -> ConsoleUser:
    user = ConsoleUser(server)
    users.append(user)
    assert user.log_in() == 303
    return user


def test_every_kind_of_record_reaches_the_stream(make_server, users):
    server = make_server(console_config())
    user = logged_in(server, users)
    stream = user.stream("1001")
    assert stream.headers["Content-Type"].startswith("text/event-stream")
    assert stream.headers["X-Accel-Buffering"] == "no"

    client = server.ws(header=["Origin: https://shop.example"], suppress_origin=True)
    opened = stream.expect(lambda r: r["k"] == "connected")
    assert opened["origin"] == "https://shop.example"
    socket_id = opened["socket_id"]

    signed = server.sdk().authenticate(
        channel="presence-room",
        socket_id=client.socket_id,
        custom_data={"user_id": "ada", "user_info": {"name": "Ada"}},
    )
    client.send(
        "pusher:subscribe",
        {
            "channel": "presence-room",
            "auth": signed["auth"],
            "channel_data": signed["channel_data"],
        },
    )
    client.wait_for("pusher_internal:subscription_succeeded", "presence-room")
    added = stream.expect(lambda r: r["k"] == "member_added")
    assert (added["channel"], added["user_id"]) == ("presence-room", "ada")
    subscribed = stream.expect(lambda r: r["k"] == "subscribed")
    assert (subscribed["channel"], subscribed["socket_id"]) == ("presence-room", socket_id)

    server.sdk().trigger("presence-room", "price", {"eur": 12.5})
    api = stream.expect(lambda r: r["k"] == "api_message")
    assert (api["channel"], api["event"]) == ("presence-room", "price")
    assert json.loads(api["preview"]) == {"eur": 12.5} and api["size"] == len(api["preview"])

    for i in range(12):  # the limit is 10 a second: the 11th is refused
        client.send("client-typing", {"i": i}, channel="presence-room")
    sent = stream.expect(lambda r: r["k"] == "client_event")
    assert (sent["event"], sent["socket_id"]) == ("client-typing", socket_id)
    limited = stream.expect(lambda r: r["k"] == "rate_limited")
    assert limited["limit"] == "client_events_per_second"

    client.send("pusher:subscribe", {"channel": "private-vault", "auth": "demo-key:forged"})
    refused = stream.expect(lambda r: r["k"] == "subscription_refused")
    assert refused["channel"] == "private-vault" and refused["reason"].startswith("AuthError 401")
    assert SECRET not in refused["reason"]

    client.send("pusher:unsubscribe", {"channel": "presence-room"})
    removed = stream.expect(lambda r: r["k"] == "member_removed")
    assert removed["user_id"] == "ada"
    assert stream.expect(lambda r: r["k"] == "unsubscribed")["socket_id"] == socket_id

    client.ws.close(status=4321)  # websocket-client sends this close code
    closed = stream.expect(lambda r: r["k"] == "disconnected")
    assert (closed["socket_id"], closed["code"]) == (socket_id, 4321)
    assert SECRET not in "".join(line.decode() for line in stream.raw)
    assert SECRET not in server.log()  # (at debug level)


def test_records_of_one_node_arrive_in_order(make_server, users):
    server = make_server(console_config())
    stream = logged_in(server, users).stream("1001")
    client = server.ws()
    client.subscribe("ticks")
    stream.expect(lambda r: r["k"] == "subscribed")
    sdk = server.sdk()
    for i in range(50):
        sdk.trigger("ticks", "tick", {"i": i})
    seen = [stream.expect(lambda r: r["k"] == "api_message")["preview"] for _ in range(50)]
    assert [json.loads(p)["i"] for p in seen] == list(range(50))


def test_nothing_is_recorded_while_nobody_watches(make_server, users):
    server = make_server(console_config())
    user = logged_in(server, users)
    server.sdk().trigger("ticks", "before", {})
    stream = user.stream("1001")  # replays what was recorded: nothing, nobody watched
    server.sdk().trigger("ticks", "during", {})
    assert stream.expect(lambda r: r["k"] == "api_message")["event"] == "during"


def test_the_send_form_publishes_like_rest(make_server, users):
    server = make_server(console_config())
    user = logged_in(server, users)
    client = server.ws()
    client.subscribe("news")
    assert user.send("1001", "news", "from-console", '{"hello": "world"}') == (200, {"ok": True})
    assert json.loads(client.expect("from-console", "news")["data"]) == {"hello": "world"}
    status, answer = user.send("1003", "news", "e", "{}")  # app 1003 is disabled
    assert (status, answer) == (403, {"error": "Application disabled"})


def test_events_of_two_nodes_reach_one_console_in_order_per_node(redis_server, make_server, users):
    config = redis_config(redis_server.url)
    config["console"] = CONSOLE
    a = make_server(config, name="node-a")
    b = make_server(config, name="node-b")
    stream = logged_in(a, users).stream("1001")
    # The lease reaches node b within moments; until then b records nothing.
    wait_until(lambda: _b_reports(b, stream), 15, 0.1, "node b's records")
    for i in range(30):
        (a if i % 2 else b).sdk().trigger("ticks", "tick", {"i": i})
    seen: dict[str, list[int]] = {}
    count = 0
    while count < 30:
        record = stream.expect(lambda r: r["k"] == "api_message" and r["event"] == "tick")
        seen.setdefault(record["n"], []).append(json.loads(record["preview"])["i"])
        count += 1
    assert len(seen) == 2
    for numbers in seen.values():
        assert numbers == sorted(numbers)
    overview = ConsoleUser(a)
    users.append(overview)
    overview.log_in()
    wait_until(
        lambda: (
            len([n for n in overview.get_json("/overview")["nodes"] if "connections" in n]) == 2
        ),
        15,
        0.2,
        "both nodes' numbers on the overview",
    )


def _b_reports(b: IpeServer, stream) -> bool:
    b.sdk().trigger("warmup", "ping", {})
    try:
        stream.expect(lambda r: r["k"] == "api_message" and r["channel"] == "warmup", 0.3)
        return True
    except AssertionError:
        return False


@pytest.fixture
def receivers():
    from webhooks.receiver import Receivers

    made = Receivers()
    yield made
    made.close()


FAST_HOOKS = {"batch_window": 0.02, "grace_period": 0, "retry_backoff": 0.1}


def _webhooks_config(url: str, redis_url: str | None = None):
    config = redis_config(redis_url) if redis_url else console_config()
    config["console"] = CONSOLE
    config["webhooks"] = FAST_HOOKS
    config["apps"][0]["webhooks"] = [{"url": url, "event_types": ["channel_occupied"]}]
    return config


def test_webhook_attempts_reach_the_log_and_deliveries_the_webhooks_page(
    make_server, users, receivers
):
    hook = receivers()
    hook.answer(500)
    server = make_server(_webhooks_config(hook.url + "?token=pw"))
    user = logged_in(server, users)
    stream = user.stream("1001")
    server.ws().subscribe("orders")
    failed = stream.expect(lambda r: r["k"] == "webhook_failed")
    assert (failed["status"], failed["attempt"], failed["events"]) == ("HTTP 500", 1, 1)
    assert "pw" not in failed["url"]  # no query string (nor credentials) in the console
    hook.answer(200)
    sent = stream.expect(lambda r: r["k"] == "webhook_sent")
    assert sent["status"] == "2xx" and sent["attempt"] >= 2
    target = user.get_json("/apps/1001/webhooks")["targets"][0]
    assert "pw" not in target["url"]
    latest = target["deliveries"][0]
    assert latest["ok"] is True and latest["attempts"] == sent["attempt"]
    assert latest["latency_ms"] >= 0


def test_webhook_deliveries_are_shared_by_the_nodes(redis_server, make_server, users, receivers):
    hook = receivers()
    config = _webhooks_config(hook.url, redis_server.url)
    a = make_server(config, name="node-a")
    b = make_server(config, name="node-b")
    b.ws().subscribe("orders")  # node b (or a: the cluster sends it once) delivers the hook
    hook.wait_event("channel_occupied", channel="orders")
    user = logged_in(a, users)
    wait_until(
        lambda: user.get_json("/apps/1001/webhooks")["targets"][0]["deliveries"],
        10,
        0.1,
        "the delivery on node a's webhooks page",
    )


def test_under_gunicorn_one_stream_shows_every_worker_unbuffered(redis_server, tmp_path, users):
    config = redis_config(redis_server.url)
    config["console"] = CONSOLE
    server = Gunicorn(config, tmp_path, "gunicorn", {"WEB_CONCURRENCY": "2"}).start()
    try:
        stream = logged_in(server, users).stream("1001")
        nodes: set[str] = set()
        deadline = time.monotonic() + 30
        i = 0
        # Each REST request lands on either worker (the kernel picks); each record must come
        # through the stream on its own, not held back until more accumulate.
        while len(nodes) < 2 and time.monotonic() < deadline:
            i += 1
            server.sdk().trigger("ticks", "tick", {"i": i})
            try:
                record = stream.expect(
                    lambda r, i=i: r["k"] == "api_message" and r["preview"] == f'{{"i": {i}}}', 2
                )
            except AssertionError:
                continue  # the other worker had no lease yet: it recorded nothing
            nodes.add(record["n"])
        assert len(nodes) == 2, nodes
    finally:
        for user in users:
            user.close()
        server.stop()
    assert "Traceback" not in server.log()
