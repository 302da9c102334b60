"""Handshake (protocol-notes.md §1.1-§1.3): who may connect; the codes reach those who may not."""

from __future__ import annotations

import json
import re

import pytest

OK_QUERY = "protocol=7&client=js&version=8.6.0&flash=false"


@pytest.fixture
def server(shared_server):
    """These tests leave nothing behind that matters to the next, so they share one process."""
    return shared_server


def refused(client, code: int) -> str:
    """The first frame is pusher:error with `code`, then a close frame with the same code."""
    first = getattr(client, "first", None)
    assert client.established is None, "the connection must not be established"
    assert first is not None and first["event"] == "pusher:error", first
    assert first["data"]["code"] == code, first
    close_code, reason = client.expect_close()
    assert close_code == code
    assert reason == first["data"]["message"]
    return reason


def test_connection_established_data_is_a_json_string_with_socket_id_and_timeout(server):
    client = server.ws(handshake=False)
    opcode, raw = client.ws.recv_data()
    message = json.loads(raw)
    assert message["event"] == "pusher:connection_established"
    assert isinstance(message["data"], str)
    data = json.loads(message["data"])
    assert re.fullmatch(r"[0-9]+\.[0-9]+", data["socket_id"])
    assert data["activity_timeout"] == server.config["activity_timeout"]


def test_every_connection_gets_its_own_socket_id(server):
    ids = {server.ws().socket_id for _ in range(5)}
    assert len(ids) == 5


@pytest.mark.parametrize("version", ["4", "5", "6", "7"])
def test_supported_protocol_versions_connect(server, version):
    assert server.ws(query=f"protocol={version}").socket_id


def test_a_path_prefix_before_app_is_accepted(server):
    # pusher-js prepends its `wsPath` option.
    client = server.ws(path="/ws/pusher/app/demo-key")
    assert client.subscribe("orders")["event"] == "pusher_internal:subscription_succeeded"


@pytest.mark.parametrize(
    ("path", "query", "code"),
    [
        ("/app/nope", OK_QUERY, 4001),
        ("/app/off-key", OK_QUERY, 4003),
        ("/nope/demo-key", OK_QUERY, 4005),
        ("/app/demo-key/extra", OK_QUERY, 4005),
        ("/app/", OK_QUERY, 4005),
        ("/app/demo-key", "protocol=seven", 4006),
        ("/app/demo-key", "protocol=7.0", 4006),
        ("/app/demo-key", "protocol=-7", 4006),
        ("/app/demo-key", "protocol=%C2%B2", 4006),  # a Unicode digit that int() refuses
        ("/app/demo-key", "protocol=%D9%A7", 4006),  # ARABIC-INDIC DIGIT SEVEN
        ("/app/demo-key", "protocol=3", 4007),
        ("/app/demo-key", "protocol=8", 4007),
        ("/app/demo-key", "protocol=99999999999999999999", 4007),
        ("/app/demo-key", "client=js&version=8.6.0", 4008),
        ("/app/demo-key", "protocol=", 4008),
        ("/app/demo-key", "", 4008),
    ],
    ids=[
        "unknown-key",
        "disabled-app",
        "wrong-path",
        "extra-path",
        "no-key",
        "non-integer-protocol",
        "decimal-protocol",
        "negative-protocol",
        "superscript-protocol",
        "arabic-digit-protocol",
        "old-protocol",
        "future-protocol",
        "huge-protocol",
        "no-protocol",
        "empty-protocol",
        "no-query",
    ],
)
def test_refused_handshakes_send_pusher_error_then_close_with_the_same_code(
    server, path, query, code
):
    refused(server.ws(path=path, query=query), code)


def test_unknown_key_is_named_in_the_message(server):
    assert "Application does not exist" in refused(server.ws(key="nope"), 4001)


def test_app_checks_come_before_protocol_checks(server):
    refused(server.ws(key="nope", query="protocol=1"), 4001)
    refused(server.ws(key="off-key", query="protocol=1"), 4003)


def test_only_ssl_app_refuses_plain_ws_with_4000(server):
    reason = refused(server.ws(key="tls-key"), 4000)
    assert "wss://" in reason


@pytest.mark.parametrize("proto", ["https", "HTTPS", "https, http", "wss"])
def test_only_ssl_app_accepts_connections_forwarded_from_tls(server, proto):
    client = server.ws(key="tls-key", header=[f"X-Forwarded-Proto: {proto}"])
    assert client.subscribe("orders")["event"] == "pusher_internal:subscription_succeeded"


def test_only_ssl_app_refuses_connections_forwarded_from_plain_http(server):
    refused(server.ws(key="tls-key", header=["X-Forwarded-Proto: http"]), 4000)


def test_a_refused_connection_does_not_disturb_others(server):
    client = server.ws()
    client.subscribe("orders")
    refused(server.ws(key="nope"), 4001)
    server.sdk().trigger("orders", "ping", "x")
    assert client.expect("ping", "orders")["data"] == "x"
