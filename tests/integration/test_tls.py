"""The TLS listener (IPÊ's `ssl:` section): wss:// for only_ssl apps, same protocol, same codes."""

from __future__ import annotations

import json

import pytest
from support import config_with, running, within_test
from support.tls import NO_VERIFY, tls_listener


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """A server with its TLS listener on, for the module; yields (server, wss origin)."""
    workdir = tmp_path_factory.mktemp("tls")
    port, ssl_section = tls_listener(workdir)
    with running(workdir, config_with(ssl=ssl_section), "tls") as server:
        yield server, f"wss://127.0.0.1:{port}"


@pytest.fixture
def tls(tls_server):
    """(server, wss origin); the test's clients are closed afterwards."""
    server, origin = tls_server
    with within_test(server):
        yield server, origin


def test_only_ssl_app_connects_over_wss_and_receives_events(tls):
    server, origin = tls
    client = server.ws(key="tls-key", origin=origin, **NO_VERIFY)
    assert client.subscribe("orders")["event"] == "pusher_internal:subscription_succeeded"
    server.sdk("1004", "tls-key", "tls-secret").trigger("orders", "hello", {"n": 1})
    assert json.loads(client.expect("hello", "orders")["data"]) == {"n": 1}


def test_large_events_and_close_codes_cross_tls(tls):
    server, origin = tls
    client = server.ws(origin=origin, **NO_VERIFY)
    client.subscribe("orders")
    server.sdk().trigger_batch([{"channel": "orders", "name": "big", "data": "x" * 10000}] * 10)
    for _ in range(10):
        assert client.expect("big", "orders")["data"] == "x" * 10000
    client.send_raw("x" * 100000)
    assert client.expect_close()[0] == 1009


def test_refusals_reach_tls_clients_too(tls):
    server, origin = tls
    client = server.ws(key="nope", origin=origin, **NO_VERIFY)
    assert client.first["data"]["code"] == 4001
    assert client.expect_close()[0] == 4001
