"""pusher-js's HTTP sessions across processes: a session opened on node A and then sent to and
received from through node B (two `python -m ipe` nodes sharing one redis-server), as happens
when gunicorn workers or hosts behind a load balancer take turns with one session's requests.
The requests are made here by hand, exactly as pusher-js makes them."""

from __future__ import annotations

import http.client
import json
import queue
import threading
import time
from typing import Any

import redis
from support import KEY, IpeServer, RedisServer, redis_config, wait_ready, wait_until
from test_redis_cluster import redis_cluster  # noqa: F401 (a fixture)

SESSION_TIMEOUT = 3


class Receive:
    """One receive request (`xhr_streaming` or `xhr`) read line by line in a thread."""

    def __init__(self, server: IpeServer, path: str) -> None:
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        self.status: int | None = None
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        self.conn.request("POST", path, body=b"", headers={"Content-Length": "0"})
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            response = self.conn.getresponse()
            self.status = response.status
            while True:
                line = response.readline()
                if not line:
                    break
                self.lines.put(line)
        except Exception:  # hung up by close(): the read fails in one of many ways
            pass
        self.lines.put(None)

    def line(self, timeout: float = 10.0) -> bytes | None:
        """The next line (None: the response ended)."""
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout}s") from None

    def events(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The events of the next `a[...]` line (heartbeats skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.line(max(0.1, deadline - time.monotonic()))
            assert line is not None, "the response ended"
            if line == b"h\n":
                continue
            assert line.startswith(b"a["), line
            return [json.loads(text) for text in json.loads(line[1:])]

    def wait_event(self, name: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events(max(0.1, deadline - time.monotonic())):
                if event["event"] == name:
                    return event

    def close(self) -> None:
        """Hang up, as pusher-js's disconnect() (an aborted request) does."""
        sock = self.conn.sock
        if sock is not None:
            import socket

            sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()


class Session:
    """One pusher-js HTTP session, whose requests go to whichever node the test says."""

    def __init__(self, session: str = "abcd1234") -> None:
        self.base = f"/pusher/app/{KEY}/123/{session}"
        self.sid = f"{KEY}/123/{session}"
        self.receivers: list[Receive] = []

    def receive(self, server: IpeServer, kind: str = "xhr_streaming") -> Receive:
        receiver = Receive(server, f"{self.base}/{kind}?protocol=7&client=js&version=8.6.0")
        self.receivers.append(receiver)
        return receiver

    def send(self, server: IpeServer, *events: dict[str, Any]) -> int:
        body = json.dumps([json.dumps(e) for e in events]).encode()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            conn.request("POST", f"{self.base}/xhr_send", body=body)
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    def close(self) -> None:
        for receiver in self.receivers:
            receiver.close()


def _owner_keys(redis_server: RedisServer) -> dict[str, str]:
    client = redis_server.client()
    found = {k.decode(): client.get(k) for k in client.keys("ipe:http:*/*")}
    return {k: v.decode() for k, v in found.items() if v is not None}  # not deleted since


def _two_nodes(
    make_server: Any, redis_server: RedisServer, **settings: Any
) -> tuple[IpeServer, IpeServer]:
    """Nodes a and b on `redis_server`, ready, with top-level `settings` in their config."""
    config = {**redis_config(redis_server.url), **settings}
    a = make_server(config, name="a")
    b = make_server(config, name="b")
    wait_ready(a)
    wait_ready(b)
    return a, b


def test_stream_opened_on_a_is_sent_to_and_received_through_b(
    make_server: Any, redis_server: RedisServer
) -> None:
    a, b = _two_nodes(make_server, redis_server, http_session_timeout=SESSION_TIMEOUT)
    _stream_through_b(a, b, redis_server.client())


def test_stream_through_b_on_a_redis_cluster(
    redis_cluster: list[RedisServer],  # noqa: F811 (the fixture imported above)
    make_server: Any,
) -> None:
    """The same over three Redis Cluster masters: the node channels are sharded Pub/Sub."""
    addrs = ",".join(f"127.0.0.1:{s.port}" for s in redis_cluster)
    env = {"REDIS_CLUSTER_MODE": "true", "REDIS_ADDRS": addrs}
    config = redis_config()
    config["http_session_timeout"] = SESSION_TIMEOUT
    a = make_server(config, name="a", env=env)
    b = make_server(config, name="b", env=env)
    wait_ready(a)
    wait_ready(b)
    first = redis_cluster[0]
    _stream_through_b(a, b, redis.RedisCluster(host="127.0.0.1", port=first.port))


def _stream_through_b(a: IpeServer, b: IpeServer, client: Any) -> None:
    def owners() -> dict[str, str]:
        found = {k.decode(): client.get(k) for k in client.keys("ipe:http:*/*")}
        return {k: v.decode() for k, v in found.items() if v is not None}  # not deleted since

    session = Session()
    try:
        first = session.receive(a)
        assert first.line() == b"o\n"
        socket_id = json.loads(first.events()[0]["data"])["socket_id"]
        assert list(owners()) == [f"ipe:http:{session.sid}"]
        assert client.pttl(f"ipe:http:{session.sid}") > 0

        # A subscribe sent through B reaches the session on A (its answer on A's stream).
        assert session.send(b, {"event": "pusher:subscribe", "data": {"channel": "news"}}) == 204
        assert first.wait_event("pusher_internal:subscription_succeeded")["channel"] == "news"

        # The stream recycled through B: A's response ends, B relays the session's lines.
        relayed = session.receive(b)
        assert first.line() is None
        assert a.sdk().trigger("news", "headline", {"n": 1}) == {}
        event = relayed.wait_event("headline")
        assert (event["channel"], json.loads(event["data"])) == ("news", {"n": 1})
        assert session.send(b, {"event": "pusher:ping", "data": {}}) == 204
        relayed.wait_event("pusher:pong")

        # A REST trigger excluding this socket: not relayed; the next one is.
        assert b.sdk().trigger("news", "skip", {}, socket_id=socket_id) == {}
        assert b.sdk().trigger("news", "after", {}) == {}
        assert relayed.events()[0]["event"] == "after"

        # The client hangs up on B: A detaches it and ends the session after the grace,
        # its owner record gone.
        relayed.close()
        wait_until(lambda: not owners(), 10, message="owner record deleted")
        assert f"HTTP session {session.sid} abandoned" in a.log()
    finally:
        session.close()


def test_polling_session_moves_between_nodes(make_server: Any, redis_server: RedisServer) -> None:
    a, b = _two_nodes(make_server, redis_server, http_session_timeout=SESSION_TIMEOUT)
    session = Session("poll0001")
    try:
        opened = session.receive(a, "xhr")
        assert opened.line() == b"o\n"
        assert opened.line() is None
        # Each poll to either node; sends to either node; all one session on A.
        poll = session.receive(b, "xhr")
        established = poll.events()
        assert established[0]["event"] == "pusher:connection_established"
        assert poll.line() is None
        assert session.send(b, {"event": "pusher:subscribe", "data": {"channel": "polls"}}) == 204
        poll = session.receive(b, "xhr")
        assert poll.events()[0]["event"] == "pusher_internal:subscription_succeeded"
        assert poll.line() is None
        poll = session.receive(b, "xhr")  # waits on A for the next message
        assert b.sdk().trigger("polls", "tick", {"n": 2}) == {}
        assert [e["event"] for e in poll.events()] == ["tick"]
        assert poll.line() is None
        assert session.send(a, {"event": "pusher:ping", "data": {}}) == 204
        poll = session.receive(b, "xhr")
        assert [e["event"] for e in poll.events()] == ["pusher:pong"]
        assert "opened for" in a.log() and "opened for" not in b.log()  # one session, on A
        assert list(_owner_keys(redis_server)) == [f"ipe:http:{session.sid}"]
    finally:
        session.close()


def test_owner_gone_the_next_node_opens_the_session_again(
    make_server: Any, redis_server: RedisServer
) -> None:
    """A node that dies takes its sessions along: a request for one of them on another node
    finds the owner silent and opens the session there, so pusher-js hears a second "o"
    ("Server lost session") and reconnects, as with an unknown session on one process."""
    a, b = _two_nodes(make_server, redis_server)
    a.allow_tracebacks = True
    session = Session("gone0001")
    try:
        opened = session.receive(a, "xhr")
        assert opened.line() == b"o\n"
        a.kill()
        poll = session.receive(b, "xhr")
        assert poll.line(15) == b"o\n"
        assert list(_owner_keys(redis_server)) == [f"ipe:http:{session.sid}"]
        assert "does not answer; opening it here" in b.log()
        # Sends now reach the session on B.
        assert session.send(b, {"event": "pusher:ping", "data": {}}) == 204
        assert session.receive(b, "xhr").wait_event("pusher:pong")
    finally:
        session.close()


def test_relay_node_gone_the_owner_lets_the_session_go(
    make_server: Any, redis_server: RedisServer
) -> None:
    """B relays A's session and dies: A's next line reaches no listener, so A takes the
    request as hung up and ends the session after the grace, as if its client had left."""
    a, b = _two_nodes(make_server, redis_server)
    b.allow_tracebacks = True
    session = Session("dies0001")
    try:
        first = session.receive(a)
        assert first.line() == b"o\n"
        assert first.events()[0]["event"] == "pusher:connection_established"
        relayed = session.receive(b)
        assert first.line() is None  # A's own response gave way to the relayed one
        assert session.send(a, {"event": "pusher:subscribe", "data": {"channel": "news"}}) == 204
        relayed.wait_event("pusher_internal:subscription_succeeded")
        b.kill()
        assert a.sdk().trigger("news", "unheard", {}) == {}
        # The default session timeout is 30 s: only the hang-up grace can end it this soon.
        wait_until(
            lambda: f"HTTP session {session.sid} abandoned" in a.log(), 10, message="abandoned"
        )
        wait_until(lambda: not _owner_keys(redis_server), 5, message="owner record deleted")
    finally:
        session.close()
