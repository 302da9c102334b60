"""REST request authentication (docs/protocol-notes.md §6.2) and routing, with hand-signed requests.

Every rejection must be Pusher's status with a JSON body {"error": "..."}.
"""

from __future__ import annotations

import hashlib
import time
import urllib.parse

import pytest
from support.rest import Api, raw_query, signed_query

from ipe import auth

EMPTY_MD5 = hashlib.md5(b"").hexdigest()
EVENT = {"name": "order-updated", "channels": ["orders"], "data": '{"id":7}'}


@pytest.fixture
def api(rest_server):
    return Api(rest_server)


# --- the signature itself ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "params", "expected"),
    [
        (
            "GET",
            "/apps/1001/channels",
            {"filter_by_prefix": "presence-", "info": "user_count"},
            "d02df96026971211d49f80cb7705a3e06906f82290faf3916b3d3006a3a1ffa0",
        ),
        (
            "GET",
            "/apps/1001/channels",
            {"body_md5": EMPTY_MD5, "filter_by_prefix": "presence-", "info": "user_count"},
            "7d826f9eb1fdbffec4c2d26f73f003ef8eaa8795030b6c0f8521d307a9363847",
        ),
        (
            "GET",
            "/apps/1001/channels/presence-room/users",
            {"body_md5": EMPTY_MD5},
            "51bee21470181efdc80106e3744c2d73bb7da9924ded8ac3edf926339560a29d",
        ),
        (
            "POST",
            "/apps/1001/events",
            {"body_md5": "1f9d263416474d44eb2979a1c0bc9d1d"},
            "886127bf31fcf17b64407a31b32f6ceb79aca19757062808a01096d9225cd564",
        ),
    ],
)
def test_protocol_vectors(method, path, params, expected):
    query = {"auth_key": "demo-key", "auth_timestamp": "1700000000", "auth_version": "1.0"}
    query.update(params)
    assert auth.sign("demo-secret", auth.rest_string_to_sign(method, path, query)) == expected
    # ...and the hand-signing helper of these tests agrees.
    body = b'{"name":"order-updated","channels":["orders"],"data":"{\\"id\\":7}"}' * (
        method == "POST"
    )
    helper = signed_query(
        method,
        path,
        {k: v for k, v in params.items() if k != "body_md5"},
        body,
        timestamp=1700000000,
        body_md5=params.get("body_md5"),
    )
    assert helper["auth_signature"] == expected


def test_docs_worked_example():
    query = {
        "auth_key": "278d425bdf160c739803",
        "auth_timestamp": "1353088179",
        "auth_version": "1.0",
        "body_md5": "ec365a775a4cd0599faeb73354201b6f",
    }
    string = auth.rest_string_to_sign("POST", "/apps/3/events", query)
    assert auth.sign("7ad3773142a6692b25b8", string) == (
        "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
    )


# --- accepted ------------------------------------------------------------------------------------


def test_node_style_get_without_body_md5(api):
    reply = api.get("/apps/1001/channels", {"filter_by_prefix": "presence-", "info": "user_count"})
    assert (reply.status, reply.json) == (200, {"channels": {}})


def test_python_style_get_signs_the_empty_body_md5(api):
    reply = api.get("/apps/1001/channels", body_md5=EMPTY_MD5)
    assert (reply.status, reply.json) == (200, {"channels": {}})


def test_php_style_percent_encoded_query_values(api):
    # Guzzle sends info=user_count%2Csubscription_count but signs the raw comma.
    reply = api.get(
        "/apps/1001/channels/presence-room",
        {"info": "user_count,subscription_count"},
        query=urllib.parse.urlencode,
    )
    assert reply.status == 200, reply
    assert reply.json == {"occupied": False, "user_count": 0, "subscription_count": 0}
    reply = api.get(
        "/apps/1001/channels",
        {"filter_by_prefix": "presence-a=b@c;d", "info": "user_count"},
        query=lambda q: urllib.parse.urlencode(q, quote_via=urllib.parse.quote),
    )
    assert (reply.status, reply.json) == (200, {"channels": {}})


def test_every_channel_character_in_the_path(api):
    channel = "presence-a=b@c;d,e.f_G-9"
    reply = api.get(f"/apps/1001/channels/{channel}/users")
    assert (reply.status, reply.json) == (200, {"users": []})
    reply = api.get(f"/apps/1001/channels/{channel}", {"info": "user_count"})
    assert (reply.status, reply.json) == (200, {"occupied": False, "user_count": 0})


def test_timestamp_inside_the_window(api):
    for skew in (-590, 590):
        reply = api.post("/apps/1001/events", EVENT, timestamp=int(time.time()) + skew)
        assert (reply.status, reply.json) == (200, {}), skew


def test_query_keys_in_any_order(api):
    # The server sorts the keys itself: the order on the wire does not matter.
    reply = api.post(
        "/apps/1001/events", EVENT, query=lambda q: raw_query(dict(reversed(q.items())))
    )
    assert (reply.status, reply.json) == (200, {})


# --- 401 -----------------------------------------------------------------------------------------


def test_missing_auth_key(api):
    reply = api.post("/apps/1001/events", EVENT, drop=("auth_key",))
    assert reply.status == 401
    assert "auth_key" in reply.error


def test_unknown_auth_key(api):
    reply = api.post("/apps/1001/events", EVENT, key="nobody", secret="demo-secret")
    assert reply.status == 401
    assert "auth_key" in reply.error


def test_another_apps_key_and_secret(api):
    # Correctly signed for app 1002, sent to app 1001: the key must belong to the app in the path.
    reply = api.post("/apps/1001/events", EVENT, key="other-key", secret="other-secret")
    assert reply.status == 401
    assert "auth_key" in reply.error
    reply = api.get("/apps/1001/channels", key="other-key", secret="other-secret")
    assert reply.status == 401


def test_wrong_secret(api):
    reply = api.post("/apps/1001/events", EVENT, secret="not-the-secret")
    assert reply.status == 401
    assert reply.error.startswith("Invalid signature")


@pytest.mark.parametrize("version", [None, "", "2.0", "1"])
def test_auth_version_must_be_1_0(api, version):
    if version is None:
        reply = api.get("/apps/1001/channels", drop=("auth_version",))
    else:
        reply = api.get("/apps/1001/channels", {"auth_version": version})
    assert reply.status == 401
    assert "auth_version" in reply.error


@pytest.mark.parametrize(
    "timestamp", [None, "", "abc", "17e8", "+1700000000", "-5", "1_700_000_000"]
)
def test_malformed_timestamp(api, timestamp):
    if timestamp is None:
        reply = api.get("/apps/1001/channels", drop=("auth_timestamp",))
    else:
        reply = api.get("/apps/1001/channels", {"auth_timestamp": timestamp})
    assert reply.status == 401
    assert "auth_timestamp" in reply.error


@pytest.mark.parametrize("skew", [-601, 610, -100000])  # +610: the timestamp is truncated
def test_timestamp_outside_the_600s_window(api, skew):
    reply = api.post("/apps/1001/events", EVENT, timestamp=int(time.time()) + skew)
    assert reply.status == 401
    assert reply.error.startswith("Timestamp expired")


def test_body_without_body_md5(api):
    reply = api.post("/apps/1001/events", EVENT, drop=("body_md5",))
    assert reply.status == 401
    assert "body_md5" in reply.error


def test_body_md5_of_another_body(api):
    reply = api.post("/apps/1001/events", EVENT, body_md5=hashlib.md5(b"{}").hexdigest())
    assert reply.status == 401
    assert "body_md5" in reply.error


def test_get_with_body_md5_of_a_body_it_does_not_have(api):
    reply = api.get("/apps/1001/channels", body_md5=hashlib.md5(b"{}").hexdigest())
    assert reply.status == 401
    assert "body_md5" in reply.error


def test_body_changed_after_signing(api):
    body = b'{"name":"a","channels":["orders"],"data":"1"}'
    query = raw_query(signed_query("POST", "/apps/1001/events", None, body))
    reply = api.raw("POST", f"/apps/1001/events?{query}", body.replace(b'"1"', b'"2"'))
    assert reply.status == 401
    assert "body_md5" in reply.error


def test_missing_signature(api):
    reply = api.get("/apps/1001/channels", query=lambda q: raw_query(q).split("&auth_signature")[0])
    assert reply.status == 401
    assert "auth_signature" in reply.error


def test_uppercase_signature(api):
    reply = api.get(
        "/apps/1001/channels",
        query=lambda q: raw_query({**q, "auth_signature": q["auth_signature"].upper()}),
    )
    assert reply.status == 401


def test_signature_over_another_path(api):
    reply = api.get("/apps/1001/channels", sign_path="/apps/1001/channels/x")
    assert reply.status == 401
    assert reply.error.startswith("Invalid signature")


def test_signature_over_another_method(api):
    signed = signed_query("POST", "/apps/1001/channels")
    reply = api.raw("GET", f"/apps/1001/channels?{raw_query(signed)}")
    assert reply.status == 401


def test_query_changed_after_signing(api):
    signed = signed_query("GET", "/apps/1001/channels", {"filter_by_prefix": "private-"})
    signed["filter_by_prefix"] = "presence-"
    reply = api.raw("GET", f"/apps/1001/channels?{raw_query(signed)}")
    assert reply.status == 401
    assert reply.error.startswith("Invalid signature")


def test_query_parameter_added_after_signing(api):
    signed = signed_query("GET", "/apps/1001/channels")
    reply = api.raw("GET", f"/apps/1001/channels?{raw_query(signed)}&info=user_count")
    assert reply.status == 401


def test_unknown_key_on_the_python_terminate_path(api):
    reply = api.post("/users/42/terminate_connections", {}, key="nobody")
    assert reply.status == 401
    assert "auth_key" in reply.error
    reply = api.post("/users/42/terminate_connections", {}, drop=("auth_key",))
    assert reply.status == 401


def test_python_terminate_path_with_a_wrong_signature(api):
    reply = api.post("/users/42/terminate_connections", {}, secret="other-secret")
    assert reply.status == 401


# --- 403 / 404 / 405 ----------------------------------------------------------------------------


def test_disabled_app(api):
    reply = api.post("/apps/1003/events", EVENT, key="off-key", secret="off-secret")
    assert reply.status == 403
    assert reply.error == "Application disabled"
    reply = api.post("/users/42/terminate_connections", {}, key="off-key", secret="off-secret")
    assert reply.status == 403


def test_disabled_app_still_checks_the_signature(api):
    reply = api.post("/apps/1003/events", EVENT, key="off-key", secret="wrong")
    assert reply.status == 401


@pytest.mark.parametrize(
    "path", ["/apps/9999/events", "/apps/9999/channels", "/apps/demo-key/channels/x/users"]
)
def test_unknown_app(api, path):
    method = "POST" if path.endswith("events") else "GET"
    reply = api.request(method, path, body=EVENT if method == "POST" else None)
    assert reply.status == 404
    assert "Unknown app" in reply.error


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/apps/1001/nothing"),
        ("POST", "/apps/1001/event"),
        ("GET", "/apps/1001/channels/orders/members"),
        ("GET", "/apps/1001/channels/"),
        ("POST", "/apps/1001/users/42/terminate"),
        ("GET", "/nothing"),
        ("POST", "/apps/1001/events/extra"),
    ],
)
def test_unknown_route(api, method, path):
    reply = api.request(method, path)
    assert reply.status == 404
    assert reply.error == "Not found"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/apps/1001/events", {"POST"}),
        ("PUT", "/apps/1001/events", {"POST"}),
        ("OPTIONS", "/apps/1001/batch_events", {"POST"}),
        ("POST", "/apps/1001/channels", {"GET", "HEAD"}),
        ("DELETE", "/apps/1001/channels/orders", {"GET", "HEAD"}),
        ("GET", "/apps/1001/users/42/terminate_connections", {"POST"}),
        ("GET", "/users/42/terminate_connections", {"POST"}),
    ],
)
def test_wrong_method(api, method, path, allowed):
    reply = api.request(method, path)
    assert reply.status == 405
    assert reply.error == "Method not allowed"
    assert {m.strip() for m in reply.headers["allow"].split(",")} == allowed
