"""ipe.channels: per kind of channel, who is let in, as who, and the refusal others get."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ipe import auth, protocol
from ipe.channels import Refused, Subscriber, admit, check_room
from ipe.config import AppConfig, Limits
from ipe.presence import InMemoryPresence

APP = AppConfig(app_id="1001", key="demo-key", secret="demo-secret")
SOCKET = "123.456"
ANON = Subscriber(SOCKET)
ANN = Subscriber(SOCKET, "42", {"id": "42", "user_info": {"name": "Ann"}})


def token(channel: str, channel_data: str | None = None, socket_id: str = SOCKET) -> str:
    signed = f"{socket_id}:{channel}" + ("" if channel_data is None else f":{channel_data}")
    return f"demo-key:{auth.sign('demo-secret', signed)}"


def refusal(who: Subscriber, channel: str, payload: dict, app: AppConfig = APP) -> tuple:
    with pytest.raises(Refused) as caught:
        admit(who, app, app.limits, channel, payload)
    return caught.value.kind, caught.value.status


@pytest.mark.parametrize("channel", ["orders", "cache-orders", "a-b_c=d@e,f.g;h"])
def test_public_and_cache_channels_need_nothing(channel):
    assert admit(ANON, APP, APP.limits, channel, {"auth": ""}) is None
    # `auth` is ignored on public channels
    assert admit(ANON, APP, APP.limits, channel, {"auth": "demo-key:nonsense"}) is None


@pytest.mark.parametrize(
    "channel",
    ["private-orders", "private-cache-orders", "private-encrypted-orders",
     "private-encrypted-cache-orders"],
)
def test_private_kinds_need_the_signature_over_socket_and_channel(channel):
    assert admit(ANON, APP, APP.limits, channel, {"auth": token(channel)}) is None
    assert refusal(ANON, channel, {"auth": token(channel, socket_id="1.2")}) == (
        protocol.SUB_AUTH_ERROR,
        401,
    )
    assert refusal(ANON, channel, {}) == ("AuthError", 401)


def test_a_secret_rotating_out_still_signs():
    rotating = replace(APP, secret="new-secret", previous_secrets=("demo-secret",))
    channel = "private-orders"
    assert admit(ANON, rotating, APP.limits, channel, {"auth": token(channel)}) is None
    assert refusal(ANON, channel, {"auth": token(channel)}, replace(APP, secret="other")) == (
        "AuthError",
        401,
    )


def test_a_bad_signature_says_what_should_have_been_signed():
    with pytest.raises(Refused) as caught:
        admit(ANON, APP, APP.limits, "private-orders", {"auth": "demo-key:abc"})
    assert caught.value.error == (
        "Invalid signature: Expected HMAC SHA256 hex digest of 123.456:private-orders, "
        "but got demo-key:abc"
    )


def test_private_with_channel_data_signs_it_too():
    data = '{"x":1}'
    payload = {"auth": token("private-orders", data), "channel_data": data}
    assert admit(ANON, APP, APP.limits, "private-orders", payload) is None
    assert refusal(ANON, "private-orders", {"auth": token("private-orders", data),
                                            "channel_data": {"x": 1}}) == ("AuthError", 401)


def test_presence_joins_as_the_member_in_channel_data():
    data = '{"user_id":"42","user_info":{"name":"Ann"}}'
    payload = {"auth": token("presence-room", data), "channel_data": data}
    assert admit(ANON, APP, APP.limits, "presence-room", payload) == ("42", {"name": "Ann"})


def test_presence_member_ids_are_strings():
    data = '{"user_id":7}'  # Laravel sends integers
    assert admit(ANON, APP, APP.limits, "presence-room",
                 {"auth": token("presence-room", data), "channel_data": data}) == ("7", None)


@pytest.mark.parametrize(
    "data", ['{"user_info":{}}', '{"user_id":""}', "[1]", "not json", '{"user_id":true}',
             '{"user_id":{"a":1}}'],
)
def test_presence_channel_data_without_a_usable_user_id_is_refused(data):
    payload = {"auth": token("presence-room", data), "channel_data": data}
    assert refusal(ANON, "presence-room", payload) == ("AuthError", 401)


def test_presence_without_channel_data_joins_as_the_signed_in_user():
    payload = {"auth": token("presence-room")}
    assert admit(ANN, APP, APP.limits, "presence-room", payload) == ("42", {"name": "Ann"})
    assert refusal(ANON, "presence-room", payload) == ("AuthError", 401)


def test_presence_limits_on_user_id_and_user_info():
    app = replace(APP, limits=Limits(max_user_id_length=3, max_user_info_size=10))
    long_id = '{"user_id":"1234"}'
    big_info = '{"user_id":"1","user_info":{"name":"Annabelle"}}'
    for data, status in ((long_id, protocol.UNAUTHORIZED), (big_info, 4301)):
        payload = {"auth": token("presence-room", data), "channel_data": data}
        assert refusal(ANON, "presence-room", payload, app) == ("LimitReached", status)


def test_server_to_user_channel_only_for_that_user():
    assert admit(ANN, APP, APP.limits, "#server-to-user-42", {"auth": ""}) is None
    assert refusal(ANON, "#server-to-user-42", {}) == ("AuthError", 401)
    assert refusal(ANN, "#server-to-user-7", {}) == ("AuthError", 401)


def test_names_are_checked_first():
    app = replace(APP, limits=Limits(max_channel_name_length=10))
    assert refusal(ANON, "private-" + "x" * 10, {}, app) == ("LimitReached", 4009)
    assert refusal(ANON, "bad name", {}) == ("InvalidChannel", 400)
    assert refusal(ANON, "#other", {}) == ("InvalidChannel", 400)


def test_a_full_presence_channel_refuses_newcomers_but_not_returning_users():
    app = replace(APP, limits=Limits(max_presence_members=2))
    presence = InMemoryPresence()
    presence.join(app.app_id, "presence-room", "1", None)
    presence.join(app.app_id, "presence-room", "2", None)
    check_room(presence, app.app_id, app.limits, "presence-room", "2")  # already a member: fits
    with pytest.raises(Refused) as caught:
        check_room(presence, app.app_id, app.limits, "presence-room", "3")
    assert (caught.value.kind, caught.value.status) == ("LimitReached", 4100)
    assert caught.value.error == "The maximum members per presence channel limit was reached"
