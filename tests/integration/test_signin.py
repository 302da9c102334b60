"""User sign-in (protocol-notes.md §4): signin, #server-to-user-{id}, watchlists, terminate."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support import token


@pytest.fixture
def server(app_server):
    """An app of its own on the module's shared server (channels and users are per app)."""
    return app_server


def signed_in(server, user_data: dict[str, Any]):
    """A new socket signed in with `user_data`; the signin_success is checked and consumed."""
    client = server.ws()
    reply = client.sign_in(server.sdk(), user_data)
    assert reply["event"] == "pusher:signin_success", reply
    if "watchlist" in user_data:
        client.expect("pusher_internal:watchlist_events")
    return client


def signin_refused(client) -> None:
    """pusher:error 4009, the socket stays open, and it is not signed in."""
    error = client.expect("pusher:error")
    assert error["data"]["code"] == 4009, error
    client.sync()
    reply = client.subscribe("#server-to-user-42")
    client.expect_refusal("#server-to-user-42", reply)


def watchlist_events(client) -> list[dict[str, Any]]:
    message = client.expect("pusher_internal:watchlist_events")
    assert "channel" not in message
    data = message["data"]
    return (json.loads(data) if isinstance(data, str) else data)["events"]  # type: ignore


# --- pusher:signin ------------------------------------------------------------------------------


def test_signin_success_echoes_user_data_byte_for_byte(server):
    client = server.ws()
    user = {"id": "42", "user_info": {"name": "Ann"}}
    sdk_token = server.sdk().authenticate_user(client.socket_id, user)
    client.send("pusher:signin", sdk_token)
    reply = client.recv()
    assert reply == {
        "event": "pusher:signin_success",
        "data": {"user_data": sdk_token["user_data"]},  # python's spacing, kept as sent
    }


def test_signin_with_compact_user_data_as_node_signs_it(server):
    client = server.ws()
    user_data = '{"id":"42","user_info":{"name":"Ann"}}'
    client.send(
        "pusher:signin",
        {
            "auth": token(f"{client.socket_id}::user::{user_data}", client.key),
            "user_data": user_data,
        },
    )
    assert client.recv()["data"] == {"user_data": user_data}


def test_signin_data_may_be_a_json_string(server):
    client = server.ws()
    sdk_token = server.sdk().authenticate_user(client.socket_id, {"id": "42"})
    client.send("pusher:signin", json.dumps(sdk_token))
    assert client.expect("pusher:signin_success")["data"]["user_data"] == sdk_token["user_data"]


def test_signin_with_a_bad_signature_gets_4009(server):
    client = server.ws()
    client.send("pusher:signin", {"auth": f"{client.key}:" + "0" * 64, "user_data": '{"id":"42"}'})
    signin_refused(client)


def test_signin_token_of_another_socket_gets_4009(server):
    first, second = server.ws(), server.ws()
    sdk_token = server.sdk().authenticate_user(first.socket_id, {"id": "42"})
    second.send("pusher:signin", sdk_token)
    signin_refused(second)


@pytest.mark.parametrize(
    "user_data",
    ["{}", '{"id":""}', '{"id":42}', '{"id":null}', '{"id":["42"]}', "[]", "not json", '"42"'],
    ids=["no-id", "empty-id", "number-id", "null-id", "list-id", "array", "text", "string"],
)
def test_signin_without_a_non_empty_string_id_gets_4009(server, user_data):
    client = server.ws()
    client.send(
        "pusher:signin",
        {
            "auth": token(f"{client.socket_id}::user::{user_data}", client.key),
            "user_data": user_data,
        },
    )
    signin_refused(client)


def test_signing_in_again_as_another_user_gets_4009(server):
    client = signed_in(server, {"id": "42"})
    assert client.sign_in(server.sdk(), {"id": "7"})["data"]["code"] == 4009
    client.sync()  # still signed in as 42:
    assert client.subscribe("#server-to-user-42")["event"] == (
        "pusher_internal:subscription_succeeded"
    )


def test_signing_in_again_as_the_same_user_succeeds_again(server):
    client = signed_in(server, {"id": "42"})
    assert client.sign_in(server.sdk(), {"id": "42"})["event"] == "pusher:signin_success"


# --- #server-to-user-{id} -----------------------------------------------------------------------


def test_server_to_user_channel_is_for_that_signed_in_user_only(server):
    ann = signed_in(server, {"id": "42"})
    reply = ann.subscribe("#server-to-user-42")
    assert reply == {
        "event": "pusher_internal:subscription_succeeded",
        "channel": "#server-to-user-42",
        "data": "{}",
    }
    assert (
        ann.expect_refusal("#server-to-user-7", ann.subscribe("#server-to-user-7"))["status"] == 401
    )
    anonymous = server.ws()
    reply = anonymous.subscribe("#server-to-user-42")
    assert anonymous.expect_refusal("#server-to-user-42", reply)["type"] == "AuthError"


def test_server_to_user_event_reaches_every_socket_of_that_user(server):
    subscribed = signed_in(server, {"id": "42"})
    subscribed.subscribe("#server-to-user-42")
    not_subscribed = signed_in(server, {"id": "42"})
    someone_else = signed_in(server, {"id": "7"})
    server.sdk().send_to_user("42", "notice", {"n": 1})
    for client in (subscribed, not_subscribed):
        message = client.expect("notice", "#server-to-user-42")
        assert json.loads(message["data"]) == {"n": 1}
    someone_else.sync()


def test_server_to_user_event_does_not_reach_a_presence_member_with_that_id(server):
    member = server.ws()
    member.subscribe_signed(server.sdk(), "presence-room", {"user_id": "42"})
    server.sdk().send_to_user("42", "notice", {})
    member.sync()


def test_server_to_user_event_is_per_app(server):
    other = server.ws(key="other-key")
    other.sign_in(server.sdk("1002", "other-key", "other-secret"), {"id": "42"})
    server.sdk().send_to_user("42", "notice", {})
    other.sync()


# --- presence for signed-in sockets -------------------------------------------------------------


def test_signed_in_socket_joins_presence_without_channel_data(server):
    client = signed_in(server, {"id": "42", "user_info": {"name": "Ann"}})
    auth = server.sdk().authenticate("presence-room", client.socket_id)["auth"]
    reply = client.subscribe("presence-room", auth)
    assert json.loads(reply["data"])["presence"] == {
        "ids": ["42"],
        "hash": {"42": {"name": "Ann"}},
        "count": 1,
    }


# --- watchlist ----------------------------------------------------------------------------------


def test_watchlist_gets_the_initial_state_then_online_and_offline(server):
    signed_in(server, {"id": "7"})
    watcher = server.ws()
    watcher.sign_in(server.sdk(), {"id": "1", "watchlist": ["7", "9"]})
    assert watchlist_events(watcher) == [
        {"name": "online", "user_ids": ["7"]},
        {"name": "offline", "user_ids": ["9"]},
    ]

    tabs = [signed_in(server, {"id": "9"}) for _ in range(2)]
    assert watchlist_events(watcher) == [{"name": "online", "user_ids": ["9"]}]
    watcher.sync()  # the second tab changed nothing

    tabs[0].close()
    watcher.sync()  # still online
    tabs[1].ws.sock.close()  # the last one just drops
    assert watchlist_events(watcher) == [{"name": "offline", "user_ids": ["9"]}]


def test_every_socket_of_a_watcher_is_told(server):
    watchers = []
    for _ in range(2):
        watcher = server.ws()
        watcher.sign_in(server.sdk(), {"id": "1", "watchlist": ["9"]})
        watchlist_events(watcher)
        watchers.append(watcher)
    signed_in(server, {"id": "9"})
    for watcher in watchers:
        assert watchlist_events(watcher) == [{"name": "online", "user_ids": ["9"]}]


def test_watchlist_of_more_than_100_ids_keeps_the_first_100_with_4302(server):
    watcher = server.ws()
    ids = [f"u{n}" for n in range(101)]
    assert watcher.sign_in(server.sdk(), {"id": "1", "watchlist": ids})["event"] == (
        "pusher:signin_success"
    )
    assert watcher.expect("pusher:error")["data"]["code"] == 4302
    assert watchlist_events(watcher) == [{"name": "offline", "user_ids": ids[:100]}]
    signed_in(server, {"id": "u100"})
    watcher.sync()  # the 101st is not watched
    signed_in(server, {"id": "u99"})
    assert watchlist_events(watcher) == [{"name": "online", "user_ids": ["u99"]}]


def test_watchlists_are_per_app(server):
    watcher = server.ws()
    watcher.sign_in(server.sdk(), {"id": "1", "watchlist": ["9"]})
    watchlist_events(watcher)
    other = server.ws(key="other-key")
    other.sign_in(server.sdk("1002", "other-key", "other-secret"), {"id": "9"})
    watcher.sync()


# --- terminate_connections ----------------------------------------------------------------------


def test_terminate_closes_that_users_signed_in_sockets_with_4009_and_no_others(server):
    tabs = [signed_in(server, {"id": "42"}) for _ in range(2)]
    other_user = signed_in(server, {"id": "7"})
    presence_only = server.ws()
    presence_only.subscribe_signed(server.sdk(), "presence-room", {"user_id": "42"})
    assert server.sdk().terminate_user_connections("42") == {}
    for tab in tabs:
        error = tab.expect("pusher:error")
        assert error["data"]["code"] == 4009
        assert tab.expect_close()[0] == 4009
    other_user.sync()
    presence_only.sync()


def test_terminate_tells_watchers_the_user_went_offline(server):
    watcher = server.ws()
    watcher.sign_in(server.sdk(), {"id": "1", "watchlist": ["42"]})
    watchlist_events(watcher)
    target = signed_in(server, {"id": "42"})
    assert watchlist_events(watcher) == [{"name": "online", "user_ids": ["42"]}]
    server.sdk().terminate_user_connections("42")
    assert target.expect_close(timeout=5)[0] == 4009
    assert watchlist_events(watcher) == [{"name": "offline", "user_ids": ["42"]}]
