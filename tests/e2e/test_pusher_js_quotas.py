"""End to end: quotas, allowed origins and authorized connections as pusher-js 8.6.0 and the
official Node SDK see them (tests/e2e/scenarios/quotas.js), against a real ipe process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import IpeServer, config_with
from nodejs import run_scenario, shared_server

APPS = [
    {
        "name": "Quota",
        "app_id": "2001",
        "key": "quota-key",
        "secret": "quota-secret",
        "limits": {
            "max_connections": 2,
            "max_subscriptions_per_connection": 2,
            "max_backend_events_per_second": 3,
        },
    },
    {
        "name": "Guarded",
        "app_id": "2002",
        "key": "guarded-key",
        "secret": "guarded-secret",
        "allowed_origins": ["https://example.com"],
    },
    {
        "name": "Signed",
        "app_id": "2003",
        "key": "signed-key",
        "secret": "signed-secret",
        "authorized_connections": True,
        "signin_timeout": 3,
    },
]


@pytest.fixture(scope="module")
def ipe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IpeServer]:
    config = config_with()
    config["apps"] += APPS
    with shared_server(tmp_path_factory.mktemp("e2e-quotas"), config) as server:
        yield server


NOT_RECONNECTING = {"state": "disconnected", "retry_scheduled": False, "connecting": False}


def test_quotas_origins_and_authorized_connections_under_pusher_js(ipe: IpeServer) -> None:
    seen = run_scenario(ipe, "quotas", deadline=30)
    error = seen["over_quota_error"]
    assert error["type"] == "WebSocketError", error
    assert error["error"] == {
        "type": "PusherError",
        "data": {"code": 4004, "message": "Over connection quota"},
    }
    assert seen["over_quota_state"] == "disconnected"
    assert seen["over_quota_reconnect"] == NOT_RECONNECTING

    refusal = seen["subscription_refusal"]
    assert (refusal["type"], refusal["status"]) == ("LimitReached", 4301), refusal
    assert isinstance(refusal["error"], str) and refusal["error"]
    assert seen["after_refusal_state"] == "connected"

    rate = seen["rate_refusal"]
    assert rate is not None and rate["status"] == 429, rate
    assert list(rate["body"]) == ["error"]
    # Nothing of the refused trigger was published: the first tick is the one that passed.
    assert seen["first_tick"] == {"n": 2}

    assert seen["fourth_state"] == "connected"

    origin = seen["origin_error"]
    assert origin["error"]["data"] == {"code": 4009, "message": "Origin not allowed"}, origin

    late = seen["signin_timeout_error"]
    # pusher-js reports the pusher:error it read on the open socket, then the close.
    assert late == {
        "type": "PusherError",
        "data": {"code": 4009, "message": "Connection not signed in within the timeout"},
    }
    assert seen["signed_in_state"] == "connected"
    assert seen["lurker_reconnect"] == NOT_RECONNECTING
