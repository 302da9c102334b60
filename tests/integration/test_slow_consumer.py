"""A client that stops reading is closed with 4100 and cannot stall anyone else (issue 2 item 6)."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor

from support import config_with, wait_until

EVENT_DATA = "x" * 10000


def read_until_end(client) -> int:
    """Read `flood` events until the `end` marker; returns how many arrived."""
    count = 0
    while True:
        message = client.recv(timeout=20)
        if message["event"] == "end":
            return count
        assert message["event"] == "flood", message
        count += 1


def test_reader_that_stops_is_closed_with_4100_while_others_get_everything(make_server):
    server = make_server(config_with(max_outbox_bytes=65536))
    sdk = server.sdk()
    # A tiny receive buffer, so that the kernel cannot hide the backlog for long.
    slow = server.ws(sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    slow.subscribe("flood")
    fast = server.ws()
    fast.subscribe("flood")
    published = 0

    def publish_until_the_slow_one_is_cut() -> bool:
        nonlocal published
        sdk.trigger_batch([{"channel": "flood", "name": "flood", "data": EVENT_DATA}] * 10)
        published += 10
        return server.metric("ipe_slow_consumer_closes_total") >= 1

    with ThreadPoolExecutor(1) as pool:
        received = pool.submit(read_until_end, fast)
        wait_until(
            publish_until_the_slow_one_is_cut,
            timeout=60,
            interval=0,
            message="the slow consumer to be closed",
        )
        sdk.trigger("flood", "end", "")
        assert received.result() == published

    assert slow.expect_close(timeout=20)[0] == 4100
    fast.sync()
    assert server.metric("ipe_slow_consumer_closes_total") == 1
    assert server.metric('ipe_disconnections_total{code="4100"}') == 1
