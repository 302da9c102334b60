"""Every signature check against the test vectors of docs/protocol-notes.md §3.4, §6.2 and §7."""

from __future__ import annotations

import hashlib

import pusher
import pytest

from ipe import auth

KEY, SECRET, SOCKET = "demo-key", "demo-secret", "123.456"
NOW = 1700000000
EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"

PRESENCE_DATA = '{"user_id":"42","user_info":{"name":"Ann"}}'
PRESENCE_DATA_PY = '{"user_id": "42", "user_info": {"name": "Ann"}}'
USER_DATA = '{"id":"42"}'
USER_DATA_PY = '{"id": "42"}'


def channel_ok(channel: str, token: object, channel_data: str | None = None) -> bool:
    return auth.channel_auth_valid(KEY, SECRET, SOCKET, channel, token, channel_data)


# --- §3.4 channel and user signatures -----------------------------------------------------------


def test_private_channel_vector():
    token = "demo-key:a819e6ede611736f19f33be5f2521a3f5d202e3b80efd8c4e187508d01b3d0a2"
    assert auth.sign(SECRET, "123.456:private-orders") == token.split(":")[1]
    assert channel_ok("private-orders", token)


@pytest.mark.parametrize(
    ("channel_data", "token"),
    [
        (PRESENCE_DATA, "603927b09249c56850e47e752773e8d9c13ae08951ee561bee67ed463f7a8632"),
        (PRESENCE_DATA_PY, "dbc40d025c0e3e1ec88683b0d76e3c4a34cb900277f4aa7a7ef9687c5b21c1ac"),
    ],
    ids=["node-form", "python-form"],
)
def test_presence_vectors_sign_channel_data_byte_for_byte(channel_data, token):
    assert channel_ok("presence-room", f"demo-key:{token}", channel_data)
    other = PRESENCE_DATA_PY if channel_data == PRESENCE_DATA else PRESENCE_DATA
    assert not channel_ok("presence-room", f"demo-key:{token}", other)
    assert not channel_ok("presence-room", f"demo-key:{token}", None)


@pytest.mark.parametrize(
    ("user_data", "token"),
    [
        (USER_DATA, "1af8c0709a6518321de11698824176dbb92371c4da88aa99a005a846e9e64469"),
        (USER_DATA_PY, "1eb126a9b915604c55d4c1c09effbe15b100080bdc742ccf45178d771a7afac5"),
    ],
    ids=["node-form", "python-form"],
)
def test_user_signin_vectors(user_data, token):
    assert auth.signin_valid(KEY, SECRET, SOCKET, user_data, f"demo-key:{token}")
    assert not auth.signin_valid(KEY, SECRET, "123.457", user_data, f"demo-key:{token}")
    assert not auth.signin_valid(KEY, SECRET, SOCKET, user_data + " ", f"demo-key:{token}")


def test_encrypted_channel_is_authorized_like_a_private_channel():
    token = "demo-key:9db1288a084b4c0de095618554349a26f32a2a50b063336e8fd78ff53a7912ae"
    assert channel_ok("private-encrypted-orders", token)


def test_python_sdk_tokens_pass_for_every_channel_kind():
    sdk = pusher.Pusher(
        app_id="1001",
        key=KEY,
        secret=SECRET,
        encryption_master_key_base64="AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    )
    private = sdk.authenticate("private-encrypted-orders", SOCKET)
    assert private["shared_secret"] == b"Rp+JW0P1Y4Dbn8NPhcFo88FAzz3QPb3PZ646obzmrp4="
    assert channel_ok("private-encrypted-orders", private["auth"])
    presence = sdk.authenticate(
        "presence-room", SOCKET, {"user_id": "42", "user_info": {"name": "Ann"}}
    )
    assert presence["channel_data"] == PRESENCE_DATA_PY
    assert channel_ok("presence-room", presence["auth"], presence["channel_data"])
    user = sdk.authenticate_user(SOCKET, {"id": "42"})
    assert auth.signin_valid(KEY, SECRET, SOCKET, user["user_data"], user["auth"])


def test_presence_token_without_channel_data_does_not_vouch_for_added_channel_data():
    # The token a signed-in socket gets for presence (over socket:channel) must not let it
    # join as whatever user it writes into channel_data.
    token = f"demo-key:{auth.sign(SECRET, '123.456:presence-room')}"
    assert channel_ok("presence-room", token, None)
    assert not channel_ok("presence-room", token, PRESENCE_DATA)
    cache_token = f"demo-key:{auth.sign(SECRET, '123.456:presence-cache-room')}"
    assert not channel_ok("presence-cache-room", cache_token, PRESENCE_DATA)


def test_private_channel_signed_with_or_without_channel_data():
    data = '{"user_id":"1"}'
    with_data = f"demo-key:{auth.sign(SECRET, f'123.456:private-orders:{data}')}"
    without = "demo-key:a819e6ede611736f19f33be5f2521a3f5d202e3b80efd8c4e187508d01b3d0a2"
    assert channel_ok("private-orders", with_data, data)
    assert channel_ok("private-orders", without, data)


@pytest.mark.parametrize(
    "token",
    [
        "other-key:a819e6ede611736f19f33be5f2521a3f5d202e3b80efd8c4e187508d01b3d0a2",
        "a819e6ede611736f19f33be5f2521a3f5d202e3b80efd8c4e187508d01b3d0a2",
        "demo-key:a819e6ede611736f19f33be5f2521a3f5d202e3b80efd8c4e187508d01b3d0a3",
        "demo-key:",
        "",
        None,
        42,
        ["demo-key:a819e6ede611736f19f33be5f2521a3f5d202e3b80efd8c4e187508d01b3d0a2"],
    ],
    ids=["wrong-key", "no-key", "wrong-digest", "empty-digest", "empty", "none", "int", "list"],
)
def test_bad_channel_tokens_are_refused(token):
    assert not channel_ok("private-orders", token)


def test_token_for_another_channel_or_socket_is_refused():
    token = "demo-key:a819e6ede611736f19f33be5f2521a3f5d202e3b80efd8c4e187508d01b3d0a2"
    assert not channel_ok("private-order", token)
    assert not auth.channel_auth_valid(KEY, SECRET, "123.4567", "private-orders", token, None)


def test_token_signed_with_another_secret_is_refused():
    token = f"demo-key:{auth.sign('other-secret', '123.456:private-orders')}"
    assert not channel_ok("private-orders", token)


def test_channel_string_to_sign_for_error_messages():
    assert auth.channel_string_to_sign(SOCKET, "private-a", None) == "123.456:private-a"
    assert auth.channel_string_to_sign(SOCKET, "presence-a", "{}") == "123.456:presence-a:{}"


# --- §6.2 REST request signatures ---------------------------------------------------------------

REST_VECTORS = [
    (
        "GET",
        "/apps/1001/channels",
        {"filter_by_prefix": "presence-", "info": "user_count"},
        "GET\n/apps/1001/channels\nauth_key=demo-key&auth_timestamp=1700000000&auth_version=1.0"
        "&filter_by_prefix=presence-&info=user_count",
        "d02df96026971211d49f80cb7705a3e06906f82290faf3916b3d3006a3a1ffa0",
    ),
    (
        "GET",
        "/apps/1001/channels",
        {"body_md5": EMPTY_MD5, "filter_by_prefix": "presence-", "info": "user_count"},
        "GET\n/apps/1001/channels\nauth_key=demo-key&auth_timestamp=1700000000&auth_version=1.0"
        f"&body_md5={EMPTY_MD5}&filter_by_prefix=presence-&info=user_count",
        "7d826f9eb1fdbffec4c2d26f73f003ef8eaa8795030b6c0f8521d307a9363847",
    ),
    (
        "GET",
        "/apps/1001/channels/presence-room/users",
        {"body_md5": EMPTY_MD5},
        "GET\n/apps/1001/channels/presence-room/users\nauth_key=demo-key"
        f"&auth_timestamp=1700000000&auth_version=1.0&body_md5={EMPTY_MD5}",
        "51bee21470181efdc80106e3744c2d73bb7da9924ded8ac3edf926339560a29d",
    ),
    (
        "POST",
        "/apps/1001/events",
        {"body_md5": "1f9d263416474d44eb2979a1c0bc9d1d"},
        "POST\n/apps/1001/events\nauth_key=demo-key&auth_timestamp=1700000000&auth_version=1.0"
        "&body_md5=1f9d263416474d44eb2979a1c0bc9d1d",
        "886127bf31fcf17b64407a31b32f6ceb79aca19757062808a01096d9225cd564",
    ),
]
EVENTS_BODY = b'{"name":"order-updated","channels":["orders"],"data":"{\\"id\\":7}"}'


def rest_params(extra: dict[str, str], signature: str | None = None, **auth_params: str):
    params = {"auth_key": KEY, "auth_timestamp": str(NOW), "auth_version": "1.0", **extra}
    params.update(auth_params)
    if signature is not None:
        params["auth_signature"] = signature
    return params


def body_for(method: str) -> bytes:
    return EVENTS_BODY if method == "POST" else b""


def test_events_body_vector_has_the_documented_md5():
    assert hashlib.md5(EVENTS_BODY).hexdigest() == "1f9d263416474d44eb2979a1c0bc9d1d"


@pytest.mark.parametrize(("method", "path", "extra", "string", "signature"), REST_VECTORS)
def test_rest_string_to_sign_and_signature_vectors(method, path, extra, string, signature):
    params = rest_params(extra, signature)
    assert auth.rest_string_to_sign(method, path, params) == string
    assert auth.sign(SECRET, string) == signature
    auth.verify_rest(KEY, SECRET, method, (path,), params, body_for(method), NOW)


@pytest.mark.parametrize(("method", "path", "extra", "string", "signature"), REST_VECTORS)
def test_rest_signature_over_another_path_or_method_fails(method, path, extra, string, signature):
    params = rest_params(extra, signature)
    with pytest.raises(auth.RestAuthError, match="Invalid signature"):
        auth.verify_rest(KEY, SECRET, method, (path + "x",), params, body_for(method), NOW)
    other = "PUT" if method == "POST" else "POST"
    with pytest.raises(auth.RestAuthError):
        auth.verify_rest(KEY, SECRET, other, (path,), params, body_for(method), NOW)


def test_docs_worked_example():
    body = b'{"name":"foo","channels":["project-3"],"data":"{\\"some\\":\\"data\\"}"}'
    params = {
        "auth_key": "278d425bdf160c739803",
        "auth_timestamp": "1353088179",
        "auth_version": "1.0",
        "body_md5": "ec365a775a4cd0599faeb73354201b6f",
        "auth_signature": "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c",
    }
    auth.verify_rest(
        "278d425bdf160c739803",
        "7ad3773142a6692b25b8",
        "POST",
        ("/apps/3/events",),
        params,
        body,
        1353088179,
    )


def test_rest_params_are_sorted_with_lowercased_keys_and_without_the_signature():
    string = auth.rest_string_to_sign(
        "get", "/p", {"b": "2", "A": "1", "auth_signature": "x", "c": "a,b"}
    )
    assert string == "GET\n/p\na=1&b=2&c=a,b"


def test_rest_signature_over_a_prefix_stripped_path_is_accepted():
    _, path, extra, _, signature = REST_VECTORS[2]
    params = rest_params(extra, signature)
    auth.verify_rest(KEY, SECRET, "GET", ("/pusher" + path, path), params, b"", NOW)


@pytest.mark.parametrize("offset", [-599, 0, 599])
def test_rest_timestamp_inside_the_window_is_accepted(offset):
    method, path, extra, _, signature = REST_VECTORS[3]
    auth.verify_rest(
        KEY, SECRET, method, (path,), rest_params(extra, signature), EVENTS_BODY, NOW + offset
    )


@pytest.mark.parametrize("offset", [-600, 600, 100000])
def test_rest_timestamp_outside_the_window_is_refused(offset):
    method, path, extra, _, signature = REST_VECTORS[3]
    with pytest.raises(auth.RestAuthError, match="Timestamp expired"):
        auth.verify_rest(
            KEY, SECRET, method, (path,), rest_params(extra, signature), EVENTS_BODY, NOW + offset
        )


@pytest.mark.parametrize("timestamp", ["", "soon", "1.5e9"])
def test_rest_invalid_timestamp_is_refused(timestamp):
    method, path, extra, _, signature = REST_VECTORS[3]
    params = rest_params(extra, signature, auth_timestamp=timestamp)
    with pytest.raises(auth.RestAuthError, match="auth_timestamp"):
        auth.verify_rest(KEY, SECRET, method, (path,), params, EVENTS_BODY, NOW)


def test_rest_missing_timestamp_is_refused():
    method, path, extra, _, signature = REST_VECTORS[3]
    params = rest_params(extra, signature)
    del params["auth_timestamp"]
    with pytest.raises(auth.RestAuthError, match="auth_timestamp"):
        auth.verify_rest(KEY, SECRET, method, (path,), params, EVENTS_BODY, NOW)


def test_rest_wrong_or_missing_key_is_refused():
    method, path, extra, _, signature = REST_VECTORS[3]
    for params in (rest_params(extra, signature, auth_key="other"), {"auth_signature": "x"}):
        with pytest.raises(auth.RestAuthError, match="auth_key"):
            auth.verify_rest(KEY, SECRET, method, (path,), params, EVENTS_BODY, NOW)


def test_rest_other_auth_version_is_refused():
    method, path, extra, _, signature = REST_VECTORS[3]
    with pytest.raises(auth.RestAuthError, match="auth_version"):
        auth.verify_rest(
            KEY,
            SECRET,
            method,
            (path,),
            rest_params(extra, signature, auth_version="2.0"),
            EVENTS_BODY,
            NOW,
        )


def test_rest_missing_signature_is_refused():
    method, path, extra, _, _ = REST_VECTORS[3]
    with pytest.raises(auth.RestAuthError, match="auth_signature"):
        auth.verify_rest(KEY, SECRET, method, (path,), rest_params(extra), EVENTS_BODY, NOW)


def test_rest_error_names_the_expected_string_to_sign_but_not_the_secret():
    method, path, extra, string, _ = REST_VECTORS[3]
    with pytest.raises(auth.RestAuthError) as info:
        auth.verify_rest(
            KEY, SECRET, method, (path,), rest_params(extra, "0" * 64), EVENTS_BODY, NOW
        )
    assert repr(string) in str(info.value)
    assert SECRET not in str(info.value)


# body_md5 rules (§6.2 step 4)


def signed(method: str, path: str, params: dict[str, str]) -> dict[str, str]:
    return {
        **params,
        "auth_signature": auth.sign(SECRET, auth.rest_string_to_sign(method, path, params)),
    }


def test_body_md5_must_match_a_non_empty_body():
    params = signed("POST", "/apps/1001/events", rest_params({"body_md5": EMPTY_MD5}))
    with pytest.raises(auth.RestAuthError, match="body_md5"):
        auth.verify_rest(KEY, SECRET, "POST", ("/apps/1001/events",), params, EVENTS_BODY, NOW)


def test_body_md5_is_required_with_a_non_empty_body():
    params = signed("POST", "/apps/1001/events", rest_params({}))
    with pytest.raises(auth.RestAuthError, match="body_md5"):
        auth.verify_rest(KEY, SECRET, "POST", ("/apps/1001/events",), params, EVENTS_BODY, NOW)


def test_empty_body_may_carry_the_md5_of_nothing_or_no_md5():
    path = "/apps/1001/channels"
    for extra in ({}, {"body_md5": EMPTY_MD5}):
        auth.verify_rest(
            KEY, SECRET, "GET", (path,), signed("GET", path, rest_params(extra)), b"", NOW
        )


def test_empty_body_with_another_md5_is_refused():
    path = "/apps/1001/channels"
    params = signed("GET", path, rest_params({"body_md5": "1f9d263416474d44eb2979a1c0bc9d1d"}))
    with pytest.raises(auth.RestAuthError, match="body_md5"):
        auth.verify_rest(KEY, SECRET, "GET", (path,), params, b"", NOW)


# --- §7 webhook signature -----------------------------------------------------------------------


def test_webhook_signature_vector():
    body = b'{"time_ms":1700000000123,"events":[{"name":"channel_occupied","channel":"orders"}]}'
    assert (
        auth.webhook_signature(SECRET, body)
        == "a416264d213b25872a9d0f48ace11bcee6bb3e1d79ecf66066ca8812cff24d39"
    )
