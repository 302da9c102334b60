"""The wire format: channel names and kinds, socket ids, frames (protocol-notes.md §1-§2)."""

from __future__ import annotations

import json

import pytest

from ipe import protocol

# --- channel names (§2.1) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "orders",
        "private-App.Models.User.1",
        "presence-a=b@c;d,e.f",
        "cache-_-",
        "A-Za-z0-9_-=@,.;",
        "#server-to-user-42",
        "#server-to-user-user@example.com",
        "x" * 200,
    ],
)
def test_valid_channel_names(name):
    assert protocol.valid_channel_name(name, 200)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * 201,
        "with space",
        "slash/name",
        "colon:name",
        "ünïcode",
        "tab\tname",
        "new\nline",
        "#reserved",
        "orders#1",
        "#server-to-user-",
        "#server-to-user-a b",
        None,
        42,
        ["orders"],
    ],
)
def test_invalid_channel_names(name):
    assert not protocol.valid_channel_name(name, 200)


def test_channel_name_limit_is_configurable():
    assert protocol.valid_channel_name("x" * 164, 164)
    assert not protocol.valid_channel_name("x" * 165, 164)


# --- socket ids (§1.3) ----------------------------------------------------------------------------


@pytest.mark.parametrize("socket_id", ["123.456", "0.0", "1234567890.9876543210"])
def test_valid_socket_ids(socket_id):
    assert protocol.valid_socket_id(socket_id)


@pytest.mark.parametrize(
    "socket_id",
    [
        "",
        "123",
        "123.",
        ".456",
        "1.2.3",
        "a.b",
        "123.456 ",
        " 123.456",
        "123.456\n",
        "-1.2",
        "١٢٣.٤٥٦",
        123.456,
        None,
    ],
)
def test_invalid_socket_ids(socket_id):
    assert not protocol.valid_socket_id(socket_id)


def test_new_socket_ids_have_pushers_shape_and_differ():
    ids = {protocol.new_socket_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(protocol.valid_socket_id(socket_id) for socket_id in ids)


# --- channel types (§2.2) -------------------------------------------------------------------------

# name: (private signature, presence, encrypted, cache, client events)
CHANNEL_TYPES = {
    "orders": (False, False, False, False, False),
    "cache-orders": (False, False, False, True, False),
    "private-orders": (True, False, False, False, True),
    "private-cache-orders": (True, False, False, True, True),
    "private-encrypted-orders": (True, False, True, False, False),
    "private-encrypted-cache-orders": (True, False, True, True, False),
    "presence-room": (False, True, False, False, True),
    "presence-cache-room": (False, True, False, True, True),
    "#server-to-user-42": (False, False, False, False, False),
    "privateorders": (False, False, False, False, False),
    "presenceroom": (False, False, False, False, False),
    "cacheorders": (False, False, False, False, False),
    "public-cache-orders": (False, False, False, False, False),
}


@pytest.mark.parametrize(("channel", "expected"), CHANNEL_TYPES.items())
def test_channel_type_predicates(channel, expected):
    private, presence, encrypted, cache, client_events = expected
    assert protocol.is_private(channel) is private
    assert protocol.is_presence(channel) is presence
    assert protocol.is_encrypted(channel) is encrypted
    assert protocol.is_cache(channel) is cache
    assert protocol.allows_client_events(channel) is client_events


def test_server_to_user_channels_name_their_user():
    assert protocol.server_to_user_id("#server-to-user-42") == "42"
    assert protocol.server_to_user_id("server-to-user-42") is None
    assert protocol.server_to_user_id("private-42") is None


# --- server frames (§1.3, §1.4) -------------------------------------------------------------------


def test_connection_established_data_is_a_json_string():
    message = json.loads(protocol.connection_established("1.2", 30))
    assert message["event"] == "pusher:connection_established"
    assert isinstance(message["data"], str)
    assert json.loads(message["data"]) == {"socket_id": "1.2", "activity_timeout": 30}


def test_events_are_compact_json_and_always_carry_data():
    assert protocol.encode_event("pusher:pong") == b'{"event":"pusher:pong","data":{}}'
    assert (
        protocol.encode_event("e", "c", "d", user_id="7")
        == b'{"event":"e","channel":"c","data":"d","user_id":"7"}'
    )


def test_encoded_events_keep_unicode_as_utf8():
    assert protocol.encode_event("e", "c", "é") == '{"event":"e","channel":"c","data":"é"}'.encode()


def test_error_code_is_a_number_or_null():
    assert json.loads(protocol.encode_error(4301, "slow down")) == {
        "event": "pusher:error",
        "data": {"code": 4301, "message": "slow down"},
    }
    assert json.loads(protocol.encode_error(None, "x"))["data"]["code"] is None


def test_subscription_error_has_the_shape_echo_receives():
    assert json.loads(protocol.subscription_error("private-a", "AuthError", "no", 401)) == {
        "event": "pusher:subscription_error",
        "channel": "private-a",
        "data": {"type": "AuthError", "error": "no", "status": 401},
    }


def test_subscription_count_data_is_a_json_string_of_pushers_shape():
    assert protocol.subscription_count("orders", 3) == (
        b'{"event":"pusher_internal:subscription_count","channel":"orders",'
        b'"data":"{\\"subscription_count\\":3}"}'
    )


def test_presence_data_lists_ids_hash_and_count_keeping_null_info():
    data = json.loads(protocol.presence_data({"42": {"name": "Ann"}, "7": None}))
    assert data == {
        "presence": {"ids": ["42", "7"], "hash": {"42": {"name": "Ann"}, "7": None}, "count": 2}
    }


def test_presence_data_from_encoded_infos_is_the_same_text():
    members = {"42": {"name": "Ann", "é": "\u2028"}, 'q"7': None, "x": [1, 2.5]}
    encoded = [(user_id, protocol.dumps(info)) for user_id, info in members.items()]
    assert protocol.presence_data_encoded(encoded) == protocol.presence_data(members)
    assert protocol.presence_data_encoded([]) == protocol.presence_data({})


# --- client frames --------------------------------------------------------------------------------


def test_client_message_parses_into_event_channel_and_data():
    raw = '{"event":"client-a","channel":"private-x","data":{"on":true}}'
    assert protocol.parse_client_message(raw) == ("client-a", "private-x", {"on": True})
    assert protocol.parse_client_message('{"event":"pusher:ping"}') == ("pusher:ping", None, None)


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "",
        "[1, 2]",
        '"pusher:ping"',
        "null",
        "{}",
        '{"event": 5}',
        '{"event": ""}',
        '{"event": null}',
        '{"event": "client-a", "channel": 5}',
        '{"event": "client-a", "channel": ["x"]}',
    ],
)
def test_malformed_client_messages_raise_pusher_error_4200(raw):
    with pytest.raises(protocol.PusherError) as info:
        protocol.parse_client_message(raw)
    assert info.value.code == protocol.GENERIC_RECONNECT


def test_pusher_event_data_may_be_an_object_or_a_json_string():
    assert protocol.event_data_object({"channel": "a"}) == {"channel": "a"}
    assert protocol.event_data_object('{"channel": "a"}') == {"channel": "a"}
    for bad in ("nope", "[1]", 5, None, ["a"]):
        assert protocol.event_data_object(bad) is None


def test_close_codes_match_the_protocol_table():
    assert (protocol.SSL_ONLY, protocol.APP_NOT_FOUND, protocol.APP_DISABLED) == (4000, 4001, 4003)
    assert (protocol.PATH_NOT_FOUND, protocol.INVALID_VERSION) == (4005, 4006)
    assert (protocol.UNSUPPORTED_PROTOCOL, protocol.NO_PROTOCOL) == (4007, 4008)
    assert (protocol.UNAUTHORIZED, protocol.OVER_CAPACITY) == (4009, 4100)
    assert (protocol.PONG_NOT_RECEIVED, protocol.CLIENT_EVENT_REJECTED) == (4201, 4301)
    assert protocol.WATCHLIST_LIMIT == 4302


@pytest.mark.parametrize(
    "data",
    [{"on": True, "é": '"quoted"'}, 'a "string" with é and \\', [1, 2.5, None], 7, {}],
)
@pytest.mark.parametrize("user_id", [None, "42", 'odd "id"'])
def test_encode_client_event_matches_encode_event(data, user_id):
    """The client-event fast path reuses the data's JSON text; the bytes must not change."""
    data_json = protocol.dumps(data)
    assert protocol.encode_client_event(
        "client-typing", "presence-é", data_json, user_id
    ) == protocol.encode_event("client-typing", "presence-é", data, user_id)
