"""End to end: pusher-js 8.6.0 and Laravel Echo 2.5.0 under Node against a real ipe process.

Each test runs one scenario (tests/e2e/scenarios/NAME.js) once and asserts on what it observed;
the scenario itself fails on any wait that times out. One ipe serves the whole module: every
scenario uses channel and user names of its own.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from nodejs import MASTER_KEY, run_scenario, shared_server
from support import IpeServer, config_with, wait_until


@pytest.fixture(scope="module")
def ipe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IpeServer]:
    with shared_server(tmp_path_factory.mktemp("e2e")) as server:
        yield server


# pusher-js's connection manager after a "refused" close: no timer, no attempt under way.
NOT_RECONNECTING = {"state": "disconnected", "retry_scheduled": False, "connecting": False}


def test_public_channel_receives_python_and_node_triggers(ipe: IpeServer) -> None:
    def trigger(data: dict[str, Any]) -> None:
        assert ipe.sdk().trigger(data["channel"], "headline", {"from": "python", "n": 1}) == {}

    seen = run_scenario(ipe, "public", {"trigger": trigger})
    assert seen["subscribed"] is True
    assert seen["succeeded_data"] == {}
    assert seen["from_python"] == {"from": "python", "n": 1}
    assert seen["from_node"] == {"from": "node", "tags": ["a", "b"]}


def test_private_channel_auth_and_bad_signature(ipe: IpeServer) -> None:
    seen = run_scenario(ipe, "private")
    assert seen["private_event"] == {"id": 7}
    assert len(seen["auth_requests"]) == 1 and seen["auth_requests"][0].startswith("private-")
    # The endpoint answered 200 with a wrong signature: the refusal is ipe's, on the channel.
    assert len(seen["bad_auth_requested"]) == 1
    error = seen["subscription_error"]
    assert error["type"] == "AuthError" and error["status"] == 401, error
    assert isinstance(error["error"], str) and error["error"]
    assert seen["vault_subscribed"] is False
    assert seen["bad_client_state"] == "connected"
    echo_error = seen["echo_error"]
    assert (echo_error["type"], echo_error["status"]) == ("AuthError", 401), echo_error
    assert ":private-echo-vault-" in echo_error["error"], echo_error
    assert seen["echo_event"] == {"total": 12.5}


def test_presence_members_and_one_user_in_two_tabs(ipe: IpeServer) -> None:
    seen = run_scenario(ipe, "presence")
    alice_id = seen["alice_alone"]["me"]["id"]
    bob_id = seen["bob_joined"]["me"]["id"]
    alice = {"name": "Alice"}
    bob = {"name": "Bob"}
    assert seen["alice_alone"] == {
        "count": 1,
        "me": {"id": alice_id, "info": alice},
        "members": {alice_id: alice},
    }
    assert seen["bob_joined"]["count"] == 2
    assert seen["bob_joined"]["members"] == {alice_id: alice, bob_id: bob}
    assert seen["alice_sees_bob_added"] == {"id": bob_id, "info": bob}
    assert seen["alice_after_bob"]["count"] == 2
    assert seen["alice_after_bob"]["members"] == {alice_id: alice, bob_id: bob}
    # A second tab of alice: the snapshot counts her once, bob hears of no new member.
    assert seen["alice_tab2_joined"]["count"] == 2
    assert seen["alice_tab2_joined"]["members"] == {alice_id: alice, bob_id: bob}
    assert seen["bob_after_alice_tab2"] == {"added": [], "count": 2}
    # Closing one of her tabs removes nobody; closing the last removes her.
    assert seen["bob_after_alice_tab1_left"] == {"removed": [], "count": 2}
    assert seen["bob_sees_alice_removed"] == {"id": alice_id, "info": alice}
    assert seen["bob_at_end"]["count"] == 1
    assert seen["bob_at_end"]["members"] == {bob_id: bob}


def test_client_events_between_two_clients(ipe: IpeServer) -> None:
    seen = run_scenario(ipe, "client_events")
    assert seen["private_received"] == {"on": True}
    assert seen["private_metadata"] == {}
    assert seen["private_ack"] == {"seen": True}
    assert seen["private_echoed_to_sender"] == 0
    assert seen["presence_received"] == {"to": "bob"}
    assert seen["presence_metadata"]["user_id"].startswith("alice-")


def test_encrypted_channel_decrypted_by_pusher_js(ipe: IpeServer) -> None:
    def trigger(data: dict[str, Any]) -> None:
        sdk = ipe.sdk(encryption_master_key_base64=MASTER_KEY)
        assert sdk.trigger(data["channel"], "secret", {"from": "python", "n": 2}) == {}

    seen = run_scenario(ipe, "encrypted", {"trigger": trigger})
    assert seen["from_node"] == {"from": "node", "n": 1}
    assert seen["from_python"] == {"from": "python", "n": 2}
    assert seen["wire_fields"] == [["ciphertext", "nonce"], ["ciphertext", "nonce"]]
    assert seen["auth_requests"] == 1


def test_signin_send_to_user_and_watchlist(ipe: IpeServer) -> None:
    def send_to_user(data: dict[str, Any]) -> None:
        assert ipe.sdk().send_to_user(data["user_id"], "notice", {"text": "from python"}) == {}

    seen = run_scenario(ipe, "signin", {"send_to_user": send_to_user})
    alice_id = seen["alice_user_data"]["id"]
    bob_id = seen["bob_online"]["user_ids"][0]
    assert seen["alice_channel"] == f"#server-to-user-{alice_id}"
    assert seen["alice_user_data"] == {
        "id": alice_id,
        "user_info": {"name": "Alice"},
        "watchlist": [bob_id],
    }
    assert seen["watchlist_at_signin"] == {"name": "offline", "user_ids": [bob_id]}
    assert seen["from_node"] == {"text": "hello alice"}
    assert seen["from_python"] == {"text": "from python"}
    assert seen["presence_from_signin"] == {
        "count": 1,
        "me": {"id": alice_id, "info": {"name": "Alice"}},
        "members": {alice_id: {"name": "Alice"}},
    }
    assert seen["both_tabs"] == [{"text": "both tabs"}, {"text": "both tabs"}]
    assert seen["bob_online"] == {"name": "online", "user_ids": [bob_id]}
    assert seen["bob_offline"] == {"name": "offline", "user_ids": [bob_id]}


def test_rest_trigger_excludes_socket_id(ipe: IpeServer) -> None:
    def trigger_excluding(data: dict[str, Any]) -> None:
        sdk = ipe.sdk()
        sdk.trigger(data["channel"], "update", {"n": 3}, socket_id=data["socket_id"])
        sdk.trigger(data["channel"], "update", {"n": 4})

    seen = run_scenario(ipe, "exclusion", {"trigger_excluding": trigger_excluding})
    assert seen["node_b"] == [{"n": 1}, {"n": 2}]
    assert seen["node_a"] == {"n": 2}
    assert seen["python_a"] == [{"n": 3}, {"n": 4}]
    assert seen["python_b"] == {"n": 4}


def test_terminate_connections_stops_only_that_user(ipe: IpeServer) -> None:
    def terminate(data: dict[str, Any]) -> None:
        assert ipe.sdk().terminate_user_connections(data["user_id"]) == {}

    seen = run_scenario(ipe, "terminate", {"terminate": terminate})
    for who in ("alice", "carol"):
        assert seen[f"{who}_left_connected_for"] == "disconnected"
        # The last error is pusher-js acting on the close code itself ("refused").
        last = seen[f"{who}_errors"][-1]
        assert last["type"] == "WebSocketError", seen[f"{who}_errors"]
        assert last["error"]["data"]["code"] == 4009
        assert seen[f"{who}_reconnect"] == NOT_RECONNECTING
    assert seen["bob_news"] == {"n": 1}
    assert seen["bob_states"] == ["connecting", "connected"]
    assert seen["terminated_states"] == {
        "alice": ["connecting", "connected", "disconnected"],
        "carol": ["connecting", "connected", "disconnected"],
    }


def test_handshake_refusals_stop_pusher_js(ipe: IpeServer) -> None:
    seen = run_scenario(ipe, "refusals")
    for name, code in (("unknown", 4001), ("disabled", 4003)):
        error = seen[f"{name}_error"]
        assert error["type"] == "WebSocketError", error
        assert error["error"]["type"] == "PusherError"
        assert error["error"]["data"]["code"] == code
        assert seen[f"{name}_stopped_in"] == "disconnected"
        assert seen[f"{name}_reconnect"] == NOT_RECONNECTING
        assert seen[f"{name}_states"] == ["connecting", "disconnected"]


def test_cache_channel_miss_then_replay(ipe: IpeServer) -> None:
    seen = run_scenario(ipe, "cache")
    assert seen["first_events"][0] == "pusher:subscription_succeeded"
    assert seen["first_events"][1]["event"] == "pusher:cache_miss"
    assert seen["late_events"] == [
        "pusher:subscription_succeeded",
        {"event": "score", "data": {"home": 2}},
    ]
    assert seen["late_next"] == {"event": "score", "data": {"home": 3}}


def test_subscription_count_reaches_pusher_js_bind(ipe: IpeServer) -> None:
    seen = run_scenario(ipe, "subscription_count")
    assert seen["first_events"] == [
        "pusher:subscription_succeeded",
        {"event": "pusher:subscription_count", "data": {"subscription_count": 1}},
    ]
    assert seen["second_count"] == {"subscription_count": 2}
    assert seen["first_sees_second"] == {"subscription_count": 2}
    assert seen["first_subscription_count"] == 2
    assert seen["first_after_second_left"] == {"subscription_count": 1}


def test_scenario_runner_reports_failures(ipe: IpeServer) -> None:
    """The harness itself: a scenario that waits for nothing fails with its reason."""
    with pytest.raises(pytest.fail.Exception, match="timed out after 200 ms waiting for"):
        run_scenario(ipe, "selftest_timeout", wait_ms=200)


def test_laravel_echo_presence_and_whispers(ipe: IpeServer) -> None:
    seen = run_scenario(ipe, "echo_presence")
    taylor, jess = {"name": "Taylor"}, {"name": "Jess"}
    assert seen["taylor_here"] == [taylor]
    assert seen["jess_here"] == [taylor, jess]
    assert seen["taylor_sees_joining"] == jess
    assert seen["whisper"] == {"typing": True}
    # Laravel's user ids are integers; ipe hands them on as strings, like Pusher.
    assert seen["whisper_metadata"] == {"user_id": "2"}
    assert seen["taylor_sees_leaving"] == jess
    assert seen["jess_whispers_heard"] == 0


def test_reloads_leave_pusher_js_sockets_alone(make_server: Any) -> None:
    server = make_server()
    config = config_with()

    def reload(_data: Any = None) -> None:
        before = server.log().count("reloaded ")
        server.config_path.write_text(yaml.safe_dump(config))
        server.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: server.log().count("reloaded ") > before, 5, message="a reload")

    def round_(data: dict[str, Any]) -> None:
        config["apps"][4]["name"] = f"Quiet {data['round']}"  # another app changes each time
        reload()

    def disable_other(_data: Any) -> None:
        config["apps"][1]["enabled"] = False
        reload()

    seen = run_scenario(server, "reload", {"reload": round_, "disable_other": disable_other})
    assert [seen[f"tick_{i}"] for i in range(10)] == list(range(10))
    assert seen["states"] == ["connecting", "connected"]
    assert seen["same_socket"] is True
    assert seen["other_error"] == 4003
    assert seen["other_plan"] == NOT_RECONNECTING
