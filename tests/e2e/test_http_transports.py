"""pusher-js's HTTP fallbacks (xhr_streaming, xhr_polling) against a real ipe: every scenario of
test_pusher_js.py runs again with pusher-js restricted to one HTTP transport, and asserts the
same. Code above the transport cannot tell an HTTP session from a WebSocket."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from nodejs import shared_server
from support import IpeServer, config_with

# The same tests, collected again here with this module's `ipe` fixture.
from test_pusher_js import (  # noqa: F401
    test_cache_channel_miss_then_replay,
    test_client_events_between_two_clients,
    test_encrypted_channel_decrypted_by_pusher_js,
    test_handshake_refusals_stop_pusher_js,
    test_laravel_echo_presence_and_whispers,
    test_presence_members_and_one_user_in_two_tabs,
    test_private_channel_auth_and_bad_signature,
    test_public_channel_receives_python_and_node_triggers,
    test_rest_trigger_excludes_socket_id,
    test_signin_send_to_user_and_watchlist,
    test_subscription_count_reaches_pusher_js_bind,
    test_terminate_connections_stops_only_that_user,
)


@pytest.fixture(scope="module", params=["xhr_streaming", "xhr_polling"])
def ipe(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
    IpeServer
]:
    """One ipe for every scenario of one transport. pusher-js's disconnect() only aborts its
    request; a poller between two polls has none to abort, so the scenarios' 5 s waits for a
    departure need a session timeout well below them."""
    config = config_with(http_session_timeout=2)
    os.environ["E2E_TRANSPORTS"] = f'["{request.param}"]'
    try:
        with shared_server(tmp_path_factory.mktemp(request.param), config) as server:
            yield server
            # pusher-js really used the transport (it has no other one enabled).
            assert server.log().count("HTTP session ") > 20
    finally:
        del os.environ["E2E_TRANSPORTS"]
