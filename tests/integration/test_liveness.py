"""Ping, pong and the activity timeout (protocol-notes.md §1.5): silence earns a ping, then 4201."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import websocket
from support import config_with, pooled


@pytest.fixture(scope="module")
def pool_server(tmp_path_factory):
    """A server that pings after 1 s of silence and gives up 2 s later."""
    config = config_with(activity_timeout=1, pong_timeout=2)
    with pooled(tmp_path_factory.mktemp("liveness"), config) as server:
        yield server


@pytest.fixture
def server(app_server):
    """An app of its own on the module's server."""
    return app_server


def test_pusher_ping_gets_pusher_pong(server):
    client = server.ws()
    client.send("pusher:ping", {})
    assert client.recv() == {"event": "pusher:pong", "data": {}}


def test_ping_without_data_as_the_java_client_sends_it_gets_pong(server):
    client = server.ws()
    client.send_raw('{"event": "pusher:ping"}')
    client.expect("pusher:pong")


def test_websocket_ping_gets_websocket_pong_with_its_payload(server):
    client = server.ws()
    client.ws.ping("hello")
    opcode, data = client.ws.recv_data(control_frame=True)
    assert (opcode, data) == (websocket.ABNF.OPCODE_PONG, b"hello")


def test_activity_timeout_is_advertised(server):
    assert server.ws().established["activity_timeout"] == 1


def test_silent_client_gets_a_ping_then_4201(server):
    client = server.ws()
    assert client.recv(timeout=10) == {"event": "pusher:ping", "data": {}}
    error = client.recv(timeout=10)
    assert error == {
        "event": "pusher:error",
        "data": {"code": 4201, "message": "Pong reply not received"},
    }
    assert client.expect_close(timeout=10) == (4201, "Pong reply not received")


def test_any_frame_answers_a_server_ping(server):
    answers = {
        "pusher:pong": lambda c: c.send("pusher:pong", {}),
        "pusher:ping": lambda c: c.send("pusher:ping", {}),
        "websocket ping": lambda c: c.ws.ping(b"x"),
        "websocket pong": lambda c: c.ws.pong(b"x"),
        "subscribe": lambda c: c.send("pusher:subscribe", {"channel": "x", "auth": ""}),
        "unknown event": lambda c: c.send("hello", {}),
    }
    clients = {name: server.ws() for name in answers}
    for name, client in clients.items():
        client.expect("pusher:ping", timeout=10)
        answers[name](client)
    for name, client in clients.items():
        # Answered: the next thing from the server is another ping, not 4201.
        message = client.wait_for("pusher:ping", timeout=10)
        assert message["event"] == "pusher:ping", name


def test_silent_presence_member_is_removed_for_the_others(server):
    observer, silent = server.ws(), server.ws()
    observer.subscribe_signed(server.sdk(), "presence-room", {"user_id": "1"})
    silent.subscribe_signed(server.sdk(), "presence-room", {"user_id": "2"})
    # The silent one reads (that is no activity) and so answers the closing handshake at once.
    with ThreadPoolExecutor(1) as pool:
        closed = pool.submit(silent.expect_close, 10)
        while True:  # the observer answers its pings
            message = observer.recv(timeout=10)
            if message["event"] == "pusher:ping":
                observer.send("pusher:pong", {})
            elif message["event"] == "pusher_internal:member_removed":
                assert json.loads(message["data"]) == {"user_id": "2"}
                break
        assert closed.result()[0] == 4201


def test_shutdown_tells_every_client_to_reconnect_at_once_with_4200(make_server):
    server = make_server()  # its own: it stops the process
    clients = [server.ws() for _ in range(3)]
    clients[0].subscribe("orders")
    with ThreadPoolExecutor(1) as pool:
        stopped = pool.submit(server.stop)  # SIGTERM; returns once the process has exited
        for client in clients:
            assert client.recv(timeout=10) == {
                "event": "pusher:error",
                "data": {"code": 4200, "message": "Server is shutting down"},
            }
            assert client.expect_close(timeout=10) == (4200, "Server is shutting down")
        assert stopped.result() == 0
