"""A TLS connection stops being read while its messages wait (issue 10 item 2), as a plain one
does: with Redis slowed down, each message's handler waits, and a client that keeps sending
finds its socket full instead of filling the server's memory."""

from __future__ import annotations

import json
import threading

import websocket
from cluster_support import FIXTURES, redis_config, wait_ready
from support.tls import NO_VERIFY, tls_listener

make_redis, redis_server, nodes = FIXTURES

# What a client may push before the server stops reading: the kernel's socket buffers (a few
# MB each way on loopback) plus 64 queued messages. Without back-pressure the server reads on
# and the client reaches this far larger bound.
BOUND = 64 << 20




def test_tls_reader_pauses_while_the_handler_is_behind(make_server, make_redis, tmp_path):
    redis_server = make_redis("--enable-debug-command", "yes")
    port, tls = tls_listener(tmp_path)
    # Slow, not gone: no health check or heartbeat may declare Redis unreachable (ipe would
    # then stop waiting for it), and commands wait longer than Redis sleeps.
    config = redis_config(
        redis_server.url,
        timeout=5,
        health_check_interval=60,
        heartbeat_interval=30,
        node_timeout=60,
    )
    config["ssl"] = tls
    server = make_server(config)
    wait_ready(server)
    client = server.ws(origin=f"wss://127.0.0.1:{port}", **NO_VERIFY)
    # Redis answers, but only every ~0.8 s (within ipe's command timeout): every
    # subscription to a new channel waits that long, far slower than the client sends.
    slow = threading.Event()

    def stall() -> None:
        admin = redis_server.client()
        while not slow.is_set():
            admin.execute_command("DEBUG", "SLEEP", "0.8")

    staller = threading.Thread(target=stall)
    staller.start()
    sent = 0
    try:
        client.ws.sock.settimeout(3.0)
        while sent < BOUND:
            message = json.dumps(
                {"event": "pusher:subscribe", "data": {"channel": f"c-{sent}"}, "pad": "p" * 1000}
            )
            try:
                client.send_raw(message)
            except (TimeoutError, websocket.WebSocketTimeoutException):
                break
            sent += len(message)
    finally:
        slow.set()
        staller.join()
        client.ws.shutdown()
    assert sent < BOUND, f"the server read {sent} bytes while its handler was stalled"
    # Nothing stays stuck: once Redis is back, TLS clients are served again.
    wait_ready(server)
    other = server.ws(origin=f"wss://127.0.0.1:{port}", **NO_VERIFY)
    assert other.subscribe("after")["event"] == "pusher_internal:subscription_succeeded"
