"""Per-app quotas on WebSockets, allowed origins and authorized connections (one process).

Every refusal is seen by a raw WebSocket client as the protocol's answer (a `pusher:error`
and a close code, or a `pusher:subscription_error`) while a client of another app, or a
well-behaved client of the same app, goes on undisturbed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from typing import Any

import pytest
from conftest import IpeServer, WsClient, config_with, wait_until

CAPPED = {
    "name": "Capped",
    "app_id": "2001",
    "key": "capped-key",
    "secret": "capped-secret",
    "limits": {"max_connections": 10, "max_subscriptions_per_connection": 3},
}
GUARDED = {
    "name": "Guarded",
    "app_id": "2002",
    "key": "guarded-key",
    "secret": "guarded-secret",
    "allowed_origins": ["https://example.com", "https://*.example.com", "http://localhost:3000"],
}
SIGNED = {
    "name": "Signed",
    "app_id": "2003",
    "key": "signed-key",
    "secret": "signed-secret",
    "authorized_connections": True,
    "signin_timeout": 2,
}


def quota_config() -> dict[str, Any]:
    config = config_with()
    config["apps"] += [CAPPED, GUARDED, SIGNED]
    return config


@pytest.fixture
def server(make_server) -> IpeServer:
    return make_server(quota_config())


def connect(server: IpeServer, key: str, origin: str | None = None) -> WsClient:
    """A raw client; with `origin` it sends that Origin header, with "" none at all."""
    url = f"ws://127.0.0.1:{server.port}/app/{key}?protocol=7&client=js&version=8.6.0"
    options: dict[str, Any] = {}
    if origin == "":
        options["suppress_origin"] = True
    elif origin is not None:
        options["origin"] = origin
    client = WsClient(url, **options)
    server.clients.append(client)
    return client


def refused(client: WsClient, code: int) -> str:
    """The client got `pusher:error` with `code`, then a close with `code`; the message."""
    assert client.socket_id is None, "connection_established was sent"
    first = client.first
    assert first["event"] == "pusher:error", first
    assert first["data"]["code"] == code, first
    assert client.expect_close() == (code, first["data"]["message"])
    return str(first["data"]["message"])


def rate_limited(server: IpeServer, app_id: str, limit: str) -> float:
    return server.metric(f'ipe_rate_limited_total{{app_id="{app_id}",limit="{limit}"}}')


# --- max_connections ----------------------------------------------------------------------------


def test_100_connections_against_max_connections_10(server):
    started = time.monotonic()
    clients = [connect(server, "capped-key") for _ in range(100)]
    elapsed = time.monotonic() - started
    admitted = [c for c in clients if c.socket_id is not None]
    assert len(admitted) == 10
    for client in clients:
        if client.socket_id is None:
            assert refused(client, 4004) == "Over connection quota"
    for client in admitted:
        client.sync()  # still served
    # Another app is not limited by this one's quota.
    other = server.ws()
    assert other.subscribe("news")["event"] == "pusher_internal:subscription_succeeded"
    assert rate_limited(server, "2001", "max_connections") == 90
    # Logged, but at most once a second per app and limit.
    lines = len(re.findall("reached its max_connections quota", server.log()))
    assert 1 <= lines <= int(elapsed) + 2

    # Once one closes, a new one connects (the count is released when the socket ends).
    admitted[0].close()
    wait_until(lambda: connect(server, "capped-key").socket_id is not None, 5)


OPEN = 'ipe_connections{app_id="2001"}'


def test_a_refused_connection_counts_nothing(server):
    for _ in range(3):  # every refusal is released: the quota never creeps down
        clients = [connect(server, "capped-key") for _ in range(11)]
        assert sum(c.socket_id is not None for c in clients) == 10
        assert server.metric(OPEN) == 10
        for client in clients:
            client.close()
        # The gauge counts sockets the hub still holds; each releases its quota as it goes.
        wait_until(lambda: server.metric(OPEN) == 0, 5)


# --- max_subscriptions_per_connection -----------------------------------------------------------


def test_subscriptions_beyond_the_cap_are_refused_and_the_socket_stays(server):
    client = connect(server, "capped-key")
    for name in ("a", "b", "c"):
        assert client.subscribe(name)["event"] == "pusher_internal:subscription_succeeded"
    error = client.expect_refusal("d", client.subscribe("d"))
    assert error["type"] == "LimitReached" and error["status"] == 4301, error
    assert "3" in error["error"]
    # Subscribing again to a channel it holds is not a new subscription.
    assert client.subscribe("a")["event"] == "pusher_internal:subscription_succeeded"
    client.send("pusher:unsubscribe", {"channel": "a"})
    assert client.subscribe("d")["event"] == "pusher_internal:subscription_succeeded"
    client.sync()
    # The refused channel was never subscribed: events on it do not reach the socket.
    sdk = server.sdk(app_id="2001", key="capped-key", secret="capped-secret")
    sdk.trigger(["a", "d"], "tick", {})
    assert client.expect("tick")["channel"] == "d"
    client.sync()
    assert rate_limited(server, "2001", "max_subscriptions_per_connection") == 1
    # Another socket of the same app has its own cap.
    other = connect(server, "capped-key")
    assert other.subscribe("a")["event"] == "pusher_internal:subscription_succeeded"


def test_default_cap_of_1000_subscriptions(shared_server):
    client = shared_server.ws()
    for i in range(1000):
        client.send("pusher:subscribe", {"channel": f"many-{i}"})
    for i in range(1000):
        client.expect("pusher_internal:subscription_succeeded", f"many-{i}")
    error = client.expect_refusal("many-1000", client.subscribe("many-1000"))
    assert (error["type"], error["status"]) == ("LimitReached", 4301)
    client.sync()


# --- allowed_origins ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        "https://example.com",
        "https://app.EXAMPLE.com",
        "https://a.b.example.com:443",
        "http://localhost:3000",
    ],
)
def test_allowed_origins_connect(server, origin):
    client = connect(server, "guarded-key", origin)
    assert client.socket_id is not None
    assert client.subscribe("news")["event"] == "pusher_internal:subscription_succeeded"


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.com",
        "http://example.com",
        "https://example.com:8443",
        "https://example.com.evil.com",
        "http://localhost:3001",
        "null",
        "",
    ],
)
def test_foreign_or_missing_origin_gets_4009_before_connection_established(server, origin):
    client = connect(server, "guarded-key", origin)
    assert refused(client, 4009) == "Origin not allowed"


def test_apps_without_a_list_accept_any_origin(server):
    assert connect(server, "demo-key", "https://evil.com").socket_id is not None
    assert connect(server, "demo-key", "").socket_id is not None


# --- authorized_connections ---------------------------------------------------------------------


def _signin(client: WsClient, user_id: str, secret: str = "signed-secret") -> dict[str, Any]:
    user_data = json.dumps({"id": user_id})
    signed = f"{client.socket_id}::user::{user_data}"
    digest = hmac.new(secret.encode(), signed.encode(), hashlib.sha256).hexdigest()
    client.send("pusher:signin", {"auth": f"signed-key:{digest}", "user_data": user_data})
    return client.recv()


def test_a_socket_that_never_signs_in_is_closed_with_4009(server):
    signed = connect(server, "signed-key")
    idle = connect(server, "signed-key")
    other_app = server.ws()
    assert _signin(signed, "ann")["event"] == "pusher:signin_success"
    # A subscription alone is not a sign-in.
    assert idle.subscribe("news")["event"] == "pusher_internal:subscription_succeeded"
    error = idle.expect("pusher:error", timeout=10)
    assert error["data"]["code"] == 4009, error
    assert idle.expect_close()[0] == 4009
    # The signed-in socket and the other app's socket, connected as long, are still served.
    signed.sync()
    other_app.sync()


def test_a_failed_signin_does_not_stop_the_clock(server):
    client = connect(server, "signed-key")
    reply = _signin(client, "ann", secret="wrong")
    assert reply["event"] == "pusher:error" and reply["data"]["code"] == 4009
    error = client.expect("pusher:error", timeout=10)
    assert error["data"]["code"] == 4009
    assert client.expect_close()[0] == 4009


# --- sign-in user ids ---------------------------------------------------------------------------


@pytest.mark.parametrize("user_id", ["has space", "slash/y", "ünï", "a#b", "new\nline"])
def test_signin_refuses_ids_that_cannot_name_a_user_channel(shared_server, user_id):
    from conftest import KEY, SECRET

    client = shared_server.ws()
    user_data = json.dumps({"id": user_id})
    signed = f"{client.socket_id}::user::{user_data}"
    digest = hmac.new(SECRET.encode(), signed.encode(), hashlib.sha256).hexdigest()
    client.send("pusher:signin", {"auth": f"{KEY}:{digest}", "user_data": user_data})
    reply = client.expect("pusher:error")
    assert reply["data"]["code"] == 4009, reply
    client.sync()


# --- pusher-js's HTTP fallback sessions count as connections ------------------------------------


def test_http_fallback_sessions_count_against_max_connections(server):
    import requests

    query = "?protocol=7&client=js&version=8.6.0&flash=false"
    sockets = [connect(server, "capped-key") for _ in range(9)]
    assert all(s.socket_id for s in sockets)

    def poll(sid: str) -> list[str]:
        url = f"{server.url}/pusher/app/capped-key/{sid}/xhr{query}"
        answer = requests.post(url, timeout=10)
        assert answer.status_code == 200, answer.text
        return answer.text.splitlines()

    assert poll("1/first") == ["o"]
    (established,) = json.loads(poll("1/first")[0][1:])
    assert json.loads(established)["event"] == "pusher:connection_established"
    # The eleventh client, over HTTP, gets what a WebSocket gets: 4004.
    assert poll("2/second") == ["o"]
    (error,) = json.loads(poll("2/second")[0][1:])
    assert json.loads(error)["data"]["code"] == 4004
    assert poll("2/second") == ['c[4004,"Over connection quota"]']
    # And a WebSocket is refused while the HTTP session holds the tenth slot.
    assert refused(connect(server, "capped-key"), 4004) == "Over connection quota"
