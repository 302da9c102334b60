"""The console's access rules, through Flask's test client on the real app (no server).

Every route needs a session (pages redirect to the login, data answers 401), every POST a CSRF
token, failed logins are throttled per address, sessions expire, and no response ever holds
an app's secret.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.security import generate_password_hash

from ipe import config as config_module
from ipe.app import build_app, build_state
from ipe.console.auth import THROTTLE_FAILURES

SECRET = "s3cr3t-of-the-app-WXYZ"
PREFIX = "/console"


def make_app(**console: Any) -> Flask:
    raw = {
        "apps": [
            {"app_id": "1001", "key": "demo-key", "secret": SECRET, "name": "Main"},
            {
                "app_id": "1002",
                "key": "hooked-key",
                "secret": SECRET + "2",
                "webhooks": [{"url": "http://user:pw@127.0.0.1:9/hook?token=x"}],
            },
        ],
        "console": {
            "enabled": True,
            "secret_key": "a-long-console-secret-key",
            "users": [
                {"username": "admin", "password": "plain-pw"},
                {"username": "hashed", "password": generate_password_hash("hashed-pw")},
            ],
            **console,
        },
    }
    app = build_app(build_state(config_module.parse(raw, {})))
    app.testing = True
    return app


@pytest.fixture
def app() -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> Iterator[FlaskClient]:
    with app.test_client() as client:
        yield client


def csrf_of(client: FlaskClient) -> str:
    page = client.get(PREFIX + "/login").get_data(as_text=True)
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def log_in(client: FlaskClient, user: str = "admin", password: str = "plain-pw") -> str:
    """Log in; returns the session's CSRF token (a new one, made at login)."""
    response = client.post(
        PREFIX + "/login",
        data={"username": user, "password": password, "csrf": csrf_of(client)},
    )
    assert response.status_code == 303, response.get_data(as_text=True)
    page = client.get(PREFIX + "/").get_data(as_text=True)
    return re.search(r'data-csrf="([^"]+)"', page).group(1)  # type: ignore[union-attr]


def console_routes(app: Flask) -> list[tuple[str, str]]:
    """(method, url) of every console route but the login and static files."""
    routes = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(PREFIX) or rule.endpoint in (
            "console.login",
            "console.login_post",
            "console.static",
        ):
            continue
        url = rule.rule.replace("<app_id>", "1001")
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):  # type: ignore[operator]
            routes.append((method, url))
    return routes


def test_every_route_refuses_a_request_without_a_session(app: Flask, client: FlaskClient):
    routes = console_routes(app)
    assert len(routes) >= 10, routes
    for method, url in routes:
        response = client.open(url, method=method)
        if "/api/" in url or method == "POST":
            assert response.status_code == 401, (method, url)
            assert response.get_json() == {"error": "Not logged in"}
        else:
            assert response.status_code == 302, (method, url)
            assert response.headers["Location"].endswith(PREFIX + "/login")


def test_login_page_and_static_files_are_public(client: FlaskClient):
    assert client.get(PREFIX + "/login").status_code == 200
    for name in ("console.js", "console.css"):
        response = client.get(f"{PREFIX}/static/{name}")
        response.close()  # a file response holds the file open until closed
        assert response.status_code == 200


def test_login_with_plain_and_hashed_passwords(app: Flask):
    for user, password in (("admin", "plain-pw"), ("hashed", "hashed-pw")):
        with app.test_client() as client:
            log_in(client, user, password)
            assert client.get(PREFIX + "/api/overview").status_code == 200


def test_wrong_password_and_unknown_user_are_refused(client: FlaskClient):
    for user, password in (("admin", "wrong"), ("nobody", "plain-pw"), ("hashed", "plain-pw")):
        response = client.post(
            PREFIX + "/login",
            data={"username": user, "password": password, "csrf": csrf_of(client)},
        )
        assert response.status_code == 401
        assert client.get(PREFIX + "/api/overview").status_code == 401


def test_login_without_or_with_a_wrong_csrf_token_is_refused(client: FlaskClient):
    csrf_of(client)
    for data in (
        {"username": "admin", "password": "plain-pw"},
        {"username": "admin", "password": "plain-pw", "csrf": "forged"},
    ):
        assert client.post(PREFIX + "/login", data=data).status_code == 403
    assert client.get(PREFIX + "/api/overview").status_code == 401


def test_posts_of_a_session_need_its_csrf_token(client: FlaskClient):
    token = log_in(client)
    send = {"channel": "c", "event": "e", "data": "{}"}
    url = PREFIX + "/api/apps/1001/events"
    assert client.post(url, json=send).status_code == 403
    assert client.post(url, json=send, headers={"X-CSRF-Token": "forged"}).status_code == 403
    assert client.post(url, json=send, headers={"X-CSRF-Token": token}).status_code == 200
    # Logging out is a POST too: without the token the session stays.
    assert client.post(PREFIX + "/logout").status_code == 403
    assert client.get(PREFIX + "/api/overview").status_code == 200


def test_a_token_from_before_login_is_not_the_sessions(client: FlaskClient):
    before = csrf_of(client)
    after = log_in(client)
    assert before != after
    url = PREFIX + "/api/apps/1001/events"
    send = {"channel": "c", "event": "e", "data": "{}"}
    assert client.post(url, json=send, headers={"X-CSRF-Token": before}).status_code == 403


def test_logout_ends_the_session(client: FlaskClient):
    token = log_in(client)
    response = client.post(PREFIX + "/logout", data={"csrf": token})
    assert response.status_code == 303
    assert client.get(PREFIX + "/api/overview").status_code == 401
    assert client.get(PREFIX + "/").status_code == 302


def test_failed_logins_are_throttled_per_address(app: Flask):
    attacker = {"REMOTE_ADDR": "10.0.0.1"}
    with app.test_client() as client:
        for _ in range(THROTTLE_FAILURES):
            response = client.post(
                PREFIX + "/login",
                data={"username": "admin", "password": "guess", "csrf": csrf_of(client)},
                environ_base=attacker,
            )
            assert response.status_code == 401
        # Now even the right password is refused from that address...
        response = client.post(
            PREFIX + "/login",
            data={"username": "admin", "password": "plain-pw", "csrf": csrf_of(client)},
            environ_base=attacker,
        )
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) > 0
        assert client.get(PREFIX + "/api/overview").status_code == 401
    # ...but not from another one.
    with app.test_client() as client:
        log_in(client)


def test_the_throttle_table_is_bounded():
    from ipe.console.auth import Throttle

    throttle = Throttle(failures=2, window=60, size=100)
    for i in range(1000):
        throttle.failed(f"10.0.{i // 256}.{i % 256}", now=1.0)
    assert len(throttle._seen) == 100
    assert throttle.retry_after("10.0.3.231", now=2.0) == 0  # one failure: not throttled yet
    throttle.failed("10.0.3.231", now=2.0)
    assert throttle.retry_after("10.0.3.231", now=2.0) > 0
    assert throttle.retry_after("10.0.3.231", now=70.0) == 0


def test_a_session_expires_session_hours_after_login(app: Flask):
    with app.test_client() as client:
        log_in(client)
        assert client.get(PREFIX + "/api/overview").status_code == 200
        # The same cookie as the app would sign it, for a login 13 hours ago (limit: 12).
        serializer = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]
        old = {"user": "admin", "t": int(time.time()) - 13 * 3600, "csrf": "x"}
        client.set_cookie("ipe_console", serializer.dumps(old), path=PREFIX)
        assert client.get(PREFIX + "/api/overview").status_code == 401
        assert client.get(PREFIX + "/").status_code == 302
        fresh = {**old, "t": int(time.time()) - 11 * 3600}
        client.set_cookie("ipe_console", serializer.dumps(fresh), path=PREFIX)
        assert client.get(PREFIX + "/api/overview").status_code == 200


def test_a_session_of_another_deployment_is_refused():
    ours, theirs = make_app(), make_app(secret_key="another-deployment-key")
    with theirs.test_client() as client:
        log_in(client)
        cookie = client.get_cookie("ipe_console", path=PREFIX)
        assert cookie is not None
    with ours.test_client() as client:
        client.set_cookie("ipe_console", cookie.value, path=PREFIX)
        assert client.get(PREFIX + "/api/overview").status_code == 401


def test_the_session_cookie_is_httponly_strict_and_secure_over_https(app: Flask):
    with app.test_client() as client:
        response = client.post(
            PREFIX + "/login",
            data={"username": "admin", "password": "plain-pw", "csrf": csrf_of(client)},
        )
        cookie = response.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
        assert f"Path={PREFIX}" in cookie
    with app.test_client() as client:
        https = "https://localhost"
        page = client.get(PREFIX + "/login", base_url=https).get_data(as_text=True)
        token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        response = client.post(
            PREFIX + "/login",
            data={"username": "admin", "password": "plain-pw", "csrf": token},
            base_url=https,
        )
        assert "Secure" in response.headers["Set-Cookie"]


def test_no_response_holds_an_app_secret(app: Flask, client: FlaskClient):
    token = log_in(client)
    bodies = []
    for method, url in console_routes(app):
        if url.endswith("/events") or method == "POST":
            continue  # the stream and the POSTs are read below
        response = client.open(url + ("?name=presence-x" if url.endswith("/channel") else ""))
        assert response.status_code == 200, url
        bodies.append(response.get_data(as_text=True))
    client.post(
        PREFIX + "/api/apps/1001/events",
        json={"channel": "c", "event": "e", "data": "{}"},
        headers={"X-CSRF-Token": token},
    )
    stream = client.get(PREFIX + "/api/apps/1001/events")
    assert stream.status_code == 200
    assert stream.headers["Content-Type"].startswith("text/event-stream")
    chunk = next(stream.response)  # type: ignore[call-overload]
    stream.close()
    bodies.append(chunk.decode())
    text = "\n".join(bodies)
    assert "WXYZ" in text  # the last four characters are shown...
    assert SECRET not in text and SECRET[:-4] not in text  # ...never the rest
    assert "pw@" not in text and "token=x" not in text  # nor webhook URL credentials


def test_send_event_goes_through_restish_checks(client: FlaskClient):
    token = log_in(client)
    url = PREFIX + "/api/apps/1001/events"
    headers = {"X-CSRF-Token": token}
    bad_channel = client.post(
        url, json={"channel": "a b", "event": "e", "data": "{}"}, headers=headers
    )
    assert bad_channel.status_code == 400 and "channel" in bad_channel.get_json()["error"]
    big = client.post(
        url, json={"channel": "c", "event": "e", "data": '"' + "x" * 20000 + '"'}, headers=headers
    )
    assert big.status_code == 413
    assert (
        client.post(
            url, json={"channel": "c", "event": "e", "data": "{nope"}, headers=headers
        ).status_code
        == 400
    )
    assert (
        client.post(PREFIX + "/api/apps/9999/events", json={}, headers=headers).status_code == 404
    )


def test_streams_are_capped(app: Flask, client: FlaskClient):
    from ipe.console.watchers import MAX_STREAMS

    log_in(client)
    streams = [client.get(PREFIX + "/api/apps/1001/events") for _ in range(MAX_STREAMS)]
    assert all(s.status_code == 200 for s in streams)
    assert client.get(PREFIX + "/api/apps/1001/events").status_code == 503
    for s in streams:
        s.close()
    assert client.get(PREFIX + "/api/apps/1001/events").status_code == 200


def test_an_idle_console_watches_no_app(app: Flask, client: FlaskClient):
    state = app.extensions["ipe"]
    log_in(client)
    assert state.tap.apps == {}
    stream = client.get(PREFIX + "/api/apps/1001/events")
    assert "1001" in state.tap.apps
    stream.close()
    assert state.tap.apps == {}
