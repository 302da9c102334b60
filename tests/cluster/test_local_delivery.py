"""Local delivery never waits on Redis: a paused Redis (SIGSTOP) delays no event between
clients of one node, and after it resumes no client hears anything twice."""

from __future__ import annotations

import threading
import time

from cluster_support import FIXTURES, RedisServer, private_auth, ready_status, settle, wait_ready
from conftest import IpeServer, WsClient, wait_until
from support.observe import frames_until_pong

make_redis, redis_server, nodes = FIXTURES

# The bound for an event between two clients of one node while Redis is paused.
LOCAL_BOUND = 0.1



def _rest_reaches(server: IpeServer, client: WsClient, channel: str, name: str) -> None:
    """Trigger over REST (in a thread: the HTTP answer is not what is measured) and expect
    `client` to have the event within LOCAL_BOUND."""
    sdk = server.sdk()
    thread = threading.Thread(target=sdk.trigger, args=(channel, name, {"at": name}))
    thread.start()
    try:
        client.expect(name, channel, timeout=LOCAL_BOUND)
    finally:
        thread.join(10)


def test_paused_redis_delays_nothing_on_one_node_and_repeats_nothing(
    nodes, redis_server: RedisServer
):
    a, b = nodes(2)
    on_a, on_b = a.ws(), b.ws()
    for client in (on_a, on_b):
        client.subscribe("ticks")
    sender, peer = a.ws(), a.ws()
    for client in (sender, peer):
        assert client.socket_id is not None
        client.subscribe("private-chat", private_auth(client.socket_id, "private-chat"))
    far = b.ws()
    assert far.socket_id is not None
    far.subscribe("private-chat", private_auth(far.socket_id, "private-chat"))
    settle(a, b)

    redis_server.pause()  # SIGSTOP: connections stay open and nothing answers
    try:
        # Before the node has noticed (its PUBLISH hangs), and after (/ready is 503).
        _rest_reaches(a, on_a, "ticks", "stalled")
        sender.send("client-typing", {"n": 1}, channel="private-chat")
        assert peer.expect("client-typing", "private-chat", timeout=LOCAL_BOUND)["data"] == {"n": 1}
        wait_until(lambda: ready_status(a) == 503, 15, message="/ready to be 503")
        _rest_reaches(a, on_a, "ticks", "noticed")
        sender.send("client-typing", {"n": 2}, channel="private-chat")
        assert peer.expect("client-typing", "private-chat", timeout=LOCAL_BOUND)["data"] == {"n": 2}
    finally:
        redis_server.resume()
    for server in (a, b):
        wait_ready(server)
    settle(a, b)
    a.sdk().trigger("ticks", "after", {})
    sender.send("client-typing", {"n": 3}, channel="private-chat")
    # B may or may not have heard what A published during the pause; nobody hears it twice.
    for client, channel, last in (
        (on_a, "ticks", "after"),
        (on_b, "ticks", "after"),
        (peer, "private-chat", "client-typing"),
        (far, "private-chat", "client-typing"),
    ):
        seen = []
        deadline = time.monotonic() + 10
        while True:
            frames = frames_until_pong(client)
            seen += [
                (f["event"], str(f.get("data"))) for f in frames if f.get("channel") == channel
            ]
            if (last == "after" and ("after", "{}") in seen) or (
                last != "after" and (last, "{'n': 3}") in seen
            ):
                break
            assert time.monotonic() < deadline, f"no final event on {channel}: {seen}"
        assert len(seen) == len(set(seen)), f"an event arrived twice: {seen}"
    # The node's own clients got everything once, in order.
    assert frames_until_pong(sender) == []
