"""Presence channels (protocol-notes.md §2.4, §2.5): members counted per user, not per socket."""

from __future__ import annotations

import json
from typing import Any

import pytest
import support
from support import config_with, token

ROOM = "presence-room"


@pytest.fixture
def server(app_server):
    """An app of its own on the module's shared server (channels and users are per app)."""
    return app_server


def join(server, user_id: Any, user_info: Any = None, channel: str = ROOM, key: str | None = None):
    """A new socket that joined `channel` as `user_id`; returns (client, presence data)."""
    client = support.join(server, channel, user_id, user_info, key)
    return client, client.joined


def member_added(client, channel: str = ROOM) -> dict[str, Any]:
    message = client.expect("pusher_internal:member_added", channel)
    assert isinstance(message["data"], str)
    return json.loads(message["data"])  # type: ignore[no-any-return]


def member_removed(client, channel: str = ROOM) -> dict[str, Any]:
    message = client.wait_for("pusher_internal:member_removed", channel)
    assert isinstance(message["data"], str)
    return json.loads(message["data"])  # type: ignore[no-any-return]


def test_roster_has_ids_hash_and_count_including_the_joiner(server):
    _, roster = join(server, "7", {"name": "Bob"})
    assert roster == {"ids": ["7"], "hash": {"7": {"name": "Bob"}}, "count": 1}
    _, roster = join(server, "42", {"name": "Ann"})
    assert sorted(roster["ids"]) == ["42", "7"]
    assert roster["hash"] == {"7": {"name": "Bob"}, "42": {"name": "Ann"}}
    assert roster["count"] == 2


def test_member_without_user_info_is_kept_in_the_hash_as_null(server):
    join(server, "7")
    _, roster = join(server, "42", {"name": "Ann"})
    assert roster["hash"] == {"7": None, "42": {"name": "Ann"}}


def test_member_added_goes_to_the_others_not_to_the_joiner(server):
    observer, _ = join(server, "7")
    joiner, _ = join(server, "42", {"name": "Ann"})
    assert member_added(observer) == {"user_id": "42", "user_info": {"name": "Ann"}}
    joiner.sync()


def test_member_removed_when_a_member_unsubscribes(server):
    observer, _ = join(server, "7")
    leaver, _ = join(server, "42")
    member_added(observer)
    leaver.send("pusher:unsubscribe", {"channel": ROOM})
    assert member_removed(observer) == {"user_id": "42"}


def test_member_removed_when_a_member_disconnects_without_a_close_frame(server):
    observer, _ = join(server, "7")
    leaver, _ = join(server, "42")
    member_added(observer)
    leaver.ws.sock.close()  # the TCP connection just ends
    assert member_removed(observer) == {"user_id": "42"}


def test_three_sockets_of_one_user_are_one_member(server):
    observer, _ = join(server, "7")
    tabs = [join(server, "42", {"name": "Ann"}) for _ in range(3)]
    assert member_added(observer)["user_id"] == "42"
    observer.sync()  # only the first tab was announced
    for _, roster in tabs[1:]:
        assert roster["count"] == 2 and sorted(roster["ids"]) == ["42", "7"]
    _, roster = join(server, "9")
    assert roster["count"] == 3

    tabs[0][0].send("pusher:unsubscribe", {"channel": ROOM})
    tabs[1][0].close()
    observer.wait_for("pusher_internal:member_added")  # user 9
    observer.sync()  # two of three tabs gone: user 42 is still there
    _, roster = join(server, "10")
    assert roster["count"] == 4

    tabs[2][0].close()
    assert member_removed(observer) == {"user_id": "42"}
    _, roster = join(server, "11")
    assert "42" not in roster["ids"] and roster["count"] == 4


def test_rejoining_after_the_last_socket_left_announces_the_member_again(server):
    observer, _ = join(server, "7")
    first, _ = join(server, "42")
    member_added(observer)
    first.close()
    member_removed(observer)
    join(server, "42")
    assert member_added(observer)["user_id"] == "42"


def test_resubscribing_confirms_with_the_roster_and_announces_nothing(server):
    observer, _ = join(server, "7")
    client, _ = join(server, "42")
    member_added(observer)
    reply = client.subscribe_signed(server.sdk(), ROOM, {"user_id": "42"})
    assert json.loads(reply["data"])["presence"]["count"] == 2
    observer.sync()


def test_integer_user_id_from_laravel_becomes_a_string_everywhere(server):
    observer, _ = join(server, "7")
    client, roster = join(server, 42, {"name": "Ann"})
    assert sorted(roster["ids"]) == ["42", "7"]
    assert roster["hash"]["42"] == {"name": "Ann"}
    assert member_added(observer) == {"user_id": "42", "user_info": {"name": "Ann"}}
    client.close()
    assert member_removed(observer) == {"user_id": "42"}


def test_integer_and_string_spellings_of_an_id_are_one_member(server):
    join(server, 42)
    _, roster = join(server, "42")
    assert roster["count"] == 1


def test_channel_data_is_signed_byte_for_byte_in_node_form_too(server):
    client = server.ws()
    data = '{"user_id":"42","user_info":{"name":"Ann"}}'
    without_data = server.sdk().authenticate(ROOM, client.socket_id)["auth"]
    reply = client.subscribe(ROOM, without_data, data)
    assert client.expect_refusal(ROOM, reply)["status"] == 401
    reply = client.subscribe(ROOM, token(f"{client.socket_id}:{ROOM}:{data}", client.key), data)
    assert json.loads(reply["data"])["presence"]["hash"] == {"42": {"name": "Ann"}}


def test_members_are_per_channel_and_per_app(server):
    join(server, "1", channel="presence-a")
    _, roster = join(server, "2", channel="presence-b")
    assert roster["ids"] == ["2"]
    _, roster = join(server, "3", channel="presence-a", key="other-key")
    assert roster["ids"] == ["3"]


# --- refusals -----------------------------------------------------------------------------------


def refused(server, channel_data: str | None, status: int = 401, kind: str = "AuthError"):
    client = server.ws()
    string = f"{client.socket_id}:{ROOM}" + ("" if channel_data is None else f":{channel_data}")
    reply = client.subscribe(ROOM, token(string, client.key), channel_data)
    refusal = client.expect_refusal(ROOM, reply)
    assert (refusal["type"], refusal["status"]) == (kind, status)
    client.sync()
    return refusal


def test_presence_without_channel_data_needs_a_signed_in_socket(server):
    refused(server, None)


def test_channel_data_without_user_id_is_refused(server):
    refused(server, '{"user_info":{"name":"Ann"}}')
    refused(server, '{"user_id":""}')
    refused(server, '{"user_id":null}')


def test_channel_data_that_is_not_a_json_object_is_refused(server):
    refused(server, "not json")
    refused(server, '["42"]')


def test_user_id_of_a_wrong_type_is_refused(server):
    refused(server, '{"user_id":true}')
    refused(server, '{"user_id":{"id":1}}')


def test_user_id_longer_than_128_characters_is_refused(server):
    refused(server, json.dumps({"user_id": "u" * 129}), status=4009, kind="LimitReached")
    _, roster = join(server, "u" * 128)
    assert roster["count"] == 1


def test_user_info_over_1_kb_is_refused(server):
    refused(
        server, json.dumps({"user_id": "1", "user_info": {"bio": "x" * 1020}}), 4301, "LimitReached"
    )
    _, roster = join(server, "1", {"bio": "x" * 1000})
    assert roster["count"] == 1


@pytest.fixture
def small_room(make_server):
    """A server whose main app allows two members per presence channel."""
    config = config_with()
    config["apps"][0]["limits"] = {"max_presence_members": 2}
    return make_server(config)


def test_member_limit_refuses_new_users_but_not_new_tabs_of_members(small_room):
    server = small_room
    observer, _ = join(server, "1")
    join(server, "2")
    member_added(observer)
    client = server.ws()
    reply = client.subscribe_signed(server.sdk(), ROOM, {"user_id": "3"})
    refusal = client.expect_refusal(ROOM, reply)
    assert (refusal["type"], refusal["status"]) == ("LimitReached", 4100)
    _, roster = join(server, "2")  # a second tab of a member is no new member
    assert roster["count"] == 2
    observer.sync()  # nobody was announced
    _, roster = join(server, "3", channel="presence-other")  # the limit is per channel
    assert roster["count"] == 1
