"""Managing apps from the console (`app_manager: driver: redis`) on a running two-node cluster:
add, rotate, edit, disable, remove through the console's forms of one node, served by both
nodes within a second; bad input gets a form error; and with `driver: config` the console
shows the apps read-only.

Real ipe processes, a real redis-server, the raw WebSocket client and the official `pusher`
SDK; the console is driven over HTTP as a browser would (cookie, CSRF token, forms).
"""

from __future__ import annotations

import html
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pusher
import pytest
from cluster.cluster_support import FIXTURES, redis_config
from conftest import APP_ID, KEY, SECRET, IpeServer, wait_until
from console_support import CONSOLE, ConsoleUser, console_config
from support import ConnectionClosed, wait_ready

make_redis, redis_server, nodes = FIXTURES

APP, APP_KEY = "3001", "console-key-3001"


def _config(redis_url: str) -> dict[str, Any]:
    config = redis_config(redis_url)
    config["apps"] = []
    config["app_manager"] = {"driver": "redis"}
    config["console"] = CONSOLE
    return config


@pytest.fixture
def cluster(redis_server: Any, make_server: Any) -> list[IpeServer]:
    servers = [make_server(_config(redis_server.url), name=f"node{i}") for i in range(2)]
    for server in servers:
        wait_ready(server)
    return servers


@pytest.fixture
def user(cluster: list[IpeServer]) -> Iterator[ConsoleUser]:
    """Logged in to the first node's console."""
    made = ConsoleUser(cluster[0])
    assert made.log_in() == 303
    yield made
    made.close()


def connects(server: IpeServer, key: str) -> bool:
    client = server.ws(key=key)
    established = client.established is not None
    client.close()
    return established


def trigger_status(
    server: IpeServer, secret: str, event: str = "tick", channel: str = "probe"
) -> int:
    """What the official SDK signing with `secret` gets for one trigger: 200, 400 or 401."""
    client = server.sdk(app_id=APP, key=APP_KEY, secret=secret)
    try:
        client.trigger(channel, event, {})
        return 200
    except pusher.errors.PusherBadAuth:
        return 401
    except pusher.errors.PusherBadRequest:
        return 400
    finally:
        client._pusher_client.http.session.close()


def shown_secret(page: str) -> str:
    found = re.search(r'<pre id="new-secret">([^<]+)</pre>', page)
    assert found, page
    return html.unescape(found.group(1))


def form_error(page: str) -> str:
    found = re.search(r'<p class="notice bad" id="form-error">([^<]*)</p>', page)
    assert found, page
    return html.unescape(found.group(1))


def expect_closed(client: Any, code: int) -> None:
    with pytest.raises(ConnectionClosed) as closed:
        client.wait_for("never", timeout=3)
    assert closed.value.code == code


def test_an_app_added_rotated_disabled_and_removed_from_the_console(
    cluster: list[IpeServer], user: ConsoleUser
) -> None:
    a, b = cluster
    status, page = user.page("/apps")
    assert status == 200 and 'id="add-form"' in page and "No apps yet." in page
    assert not connects(a, APP_KEY)

    # Add: the random secret is shown this once; both nodes serve the key within a second.
    status, _, page = user.post_form("/apps", {"app_id": APP, "name": "Shop", "key": APP_KEY})
    assert status == 200, page
    secret = shown_secret(page)
    added = time.monotonic()
    for server in cluster:
        wait_until(lambda s=server: connects(s, APP_KEY), 1.0, 0.05, "the new key on both nodes")
    assert time.monotonic() - added < 2.0
    for path in ("/apps", f"/apps/{APP}/settings", f"/apps/{APP}/remove", f"/apps/{APP}"):
        status, page = user.page(path)
        assert status == 200, path
        assert secret not in page and secret[:-4] not in page, path  # only the last four
    assert f"…{secret[-4:]}" in user.page("/apps")[1]

    listeners = [server.ws(key=APP_KEY) for server in cluster]
    for listener in listeners:
        listener.subscribe("feed")
    assert trigger_status(b, secret, "hello", "feed") == 200
    for listener in listeners:
        listener.wait_for("hello", "feed")

    # Rotate: a new first secret, shown once; the old one still works until dropped.
    status, _, page = user.post_form(f"/apps/{APP}/rotate-secret")
    assert status == 200, page
    new_secret = shown_secret(page)
    assert new_secret != secret
    wait_until(lambda: all(trigger_status(s, new_secret) == 200 for s in cluster), 1.0, 0.05, "new")
    assert trigger_status(a, secret) == 200 and trigger_status(b, secret) == 200
    status, page = user.page(f"/apps/{APP}/settings")
    assert f"…{new_secret[-4:]} …{secret[-4:]}" in page and 'id="drop-old"' in page
    status, headers, _ = user.post_form(f"/apps/{APP}/drop-old-secrets")
    assert status == 303 and headers["Location"].endswith(f"/apps/{APP}/settings?done=dropped")
    wait_until(lambda: all(trigger_status(s, secret) == 401 for s in cluster), 1.0, 0.05, "old")
    assert trigger_status(b, new_secret) == 200
    for listener in listeners:
        listener.sync()  # rotating closed nobody

    # Edit a limit: every node applies it to new requests.
    status, page = user.page(f"/apps/{APP}/settings")
    settings = {"name": "Shop", "key": APP_KEY, "user_events": "on"}
    settings["limits.max_event_name_length"] = "8"
    status, _, page = user.post_form(f"/apps/{APP}/settings", settings)
    assert status == 303, page
    wait_until(
        lambda: all(trigger_status(s, new_secret, "a-long-event") == 400 for s in cluster),
        1.0,
        0.05,
        "the new limit on both nodes",
    )
    assert trigger_status(a, new_secret, "short") == 200
    status, page = user.page(f"/apps/{APP}/settings")
    assert 'name="limits.max_event_name_length"' in page and 'value="8"' in page

    # Disable: the app's sockets on both nodes are closed with 4003; enable serves it again.
    status, _, _ = user.post_form(f"/apps/{APP}/disable")
    assert status == 303
    for listener in listeners:
        expect_closed(listener, 4003)
    assert "disabled" in user.page(f"/apps/{APP}/settings")[1]
    status, _, _ = user.post_form(f"/apps/{APP}/enable")
    assert status == 303
    wait_until(lambda: connects(a, APP_KEY) and connects(b, APP_KEY), 1.0, 0.05, "enabled")

    # Remove, after a confirmation step: 4001 on both nodes.
    clients = [server.ws(key=APP_KEY) for server in cluster]
    status, page = user.page(f"/apps/{APP}/remove")
    assert status == 200 and 'id="remove-confirm"' in page
    status, _, page = user.post_form(f"/apps/{APP}/remove")
    assert status == 400 and "confirm" in form_error(page)
    status, _, page = user.post_form(f"/apps/{APP}/remove", {"confirm": "3002"})
    assert status == 400
    for client in clients:
        client.sync()  # not confirmed: not removed
    status, headers, _ = user.post_form(f"/apps/{APP}/remove", {"confirm": APP})
    assert status == 303 and headers["Location"].endswith("/apps?done=removed")
    for client in clients:
        expect_closed(client, 4001)
    assert not connects(b, APP_KEY)
    assert user.page(f"/apps/{APP}/settings")[0] == 404
    for server in cluster:  # the console logs what it did, never a secret
        log = server.log()
        assert secret not in log and new_secret not in log
    assert f"console: admin added app {APP}" in a.log()


def test_a_given_secret_is_not_shown_and_a_bad_form_gets_a_form_error(
    cluster: list[IpeServer], user: ConsoleUser
) -> None:
    a, _ = cluster
    given = "a-secret-the-operator-chose-0001"
    status, headers, _ = user.post_form(
        "/apps", {"app_id": APP, "key": APP_KEY, "secret": given, "disabled": "on"}
    )
    assert status == 303 and headers["Location"].endswith(f"/apps/{APP}/settings?done=added")
    status, page = user.page(f"/apps/{APP}/settings")
    assert given not in page and "…0001" in page and 'id="enable"' in page

    # Each refusal: 400 with the config file's message, nothing stored, no traceback.
    for fields, message in (
        ({"app_id": "", "key": "k"}, "app.app_id: must not be empty"),
        ({"app_id": "3002", "key": APP_KEY}, f"is already the key of app {APP}"),
        ({"app_id": APP, "key": "other"}, f"app {APP} exists already"),
    ):
        status, _, page = user.post_form("/apps", fields)
        assert status == 400, fields
        assert message in form_error(page), fields
    base = {"name": "Shop", "key": APP_KEY}
    for fields, message in (
        ({"limits.max_batch_size": "0"}, "app.limits.max_batch_size: must be at least 1"),
        ({"limits.max_connections": "many"}, "app.limits.max_connections: must be an integer"),
        ({"signin_timeout": "soon"}, "app.signin_timeout: must be a number"),
        ({"key": ""}, "app.key: must not be empty"),
        ({"webhooks": "- url: [unclosed"}, "app.webhooks: not valid YAML"),
        ({"webhooks": "- event_types: [channel_occupied]"}, "url: missing required key"),
        ({"allowed_origins": "not an origin://"}, "allowed_origins[0]"),
    ):
        status, _, page = user.post_form(f"/apps/{APP}/settings", {**base, **fields})
        assert status == 400, fields
        assert message in form_error(page), (fields, form_error(page))
    # The refused value is shown again for correcting; the stored app did not change.
    status, _, page = user.post_form(
        f"/apps/{APP}/settings", {**base, "limits.max_batch_size": "0"}
    )
    assert 'id="set-limits-max_batch_size" inputmode="numeric" placeholder="10" value="0"' in page
    assert 'value="0"' not in user.page(f"/apps/{APP}/settings")[1]
    status, _, _ = user.post_form(f"/apps/{APP}/rotate-secret", {"secret": given})
    assert status == 400  # the new secret is the current one: listed twice
    assert user.post_form("/apps/9999/disable")[0] == 404
    assert user.post_form("/apps/9999/settings", base)[0] == 404

    # Webhook targets replaced from YAML are shown without credentials.
    hooks = "- url: https://user:pw@hooks.example/in?token=t\n  event_types: [channel_occupied]"
    status, _, page = user.post_form(f"/apps/{APP}/settings", {**base, "webhooks": hooks})
    assert status == 303, page
    wait_until(lambda: "hooks.example" in user.page(f"/apps/{APP}/settings")[1], 2.0, 0.05, "hook")
    page = user.page(f"/apps/{APP}/settings")[1]
    assert "pw@" not in page and "token=t" not in page and "channel_occupied" in page


def test_the_console_refuses_changes_without_a_session_or_its_csrf_token(
    cluster: list[IpeServer], user: ConsoleUser
) -> None:
    a, _ = cluster
    stranger = ConsoleUser(a)
    assert stranger.request("GET", "/apps")[0] == 302
    fields = {"app_id": APP, "key": APP_KEY}
    status, _, body = stranger.post_form("/apps", fields, csrf="")
    assert status == 401 and '"Not logged in"' in body
    assert user.post_form("/apps", fields, csrf="")[0] == 403
    assert user.post_form("/apps", fields, csrf="forged")[0] == 403
    assert "No apps yet." in user.page("/apps")[1]  # none of them added anything
    assert not connects(a, APP_KEY)
    # ...and the session's token works.
    assert user.post_form("/apps", fields)[0] == 200


def test_with_driver_config_the_console_shows_apps_read_only(make_server: Any) -> None:
    server = make_server(console_config())
    user = ConsoleUser(server)
    assert user.log_in() == 303
    status, page = user.page("/apps")
    assert status == 200 and 'id="read-only"' in page and "config file" in page
    assert 'id="add-form"' not in page and f"<code>{KEY}</code>" in page
    status, page = user.page(f"/apps/{APP_ID}/settings")
    assert status == 200 and "<fieldset disabled>" in page and 'id="rotate"' not in page
    assert SECRET not in page and '<code id="secret-hints">…</code>' in page  # short: no hint
    for path, fields in (
        ("/apps", {"app_id": "9", "key": "nine"}),
        (f"/apps/{APP_ID}/settings", {"key": KEY}),
        (f"/apps/{APP_ID}/disable", {}),
        (f"/apps/{APP_ID}/rotate-secret", {}),
        (f"/apps/{APP_ID}/remove", {"confirm": APP_ID}),
    ):
        status, _, page = user.post_form(path, fields)
        assert status == 409, path
        assert "driver config" in form_error(page) and "config file" in form_error(page)
    client = server.ws()  # nothing changed: the app is served as before
    assert client.established is not None
    client.sync()


def test_with_driver_sql_the_console_says_where_apps_are_managed(
    make_server: Any, tmp_path: Path
) -> None:
    path = tmp_path / "apps.db"
    with sqlite3.connect(path) as db:  # soketi's required columns, one app
        db.execute(
            "CREATE TABLE apps (id varchar(255) PRIMARY KEY, key varchar(255), "
            "secret varchar(255), max_connections integer, enable_client_messages smallint, "
            "enabled smallint, max_backend_events_per_sec integer, "
            "max_client_events_per_sec integer, max_read_req_per_sec integer, webhooks text)"
        )
        db.execute(
            "INSERT INTO apps VALUES ('6001', 'sql-key', 'sql-secret-0123456789', -1, 1, 1, "
            "-1, -1, -1, NULL)"
        )
    server = make_server(
        console_config(apps=[], app_manager={"driver": "sql", "url": f"sqlite:///{path}"})
    )
    user = ConsoleUser(server)
    assert user.log_in() == 303
    status, page = user.page("/apps")
    assert status == 200 and "SQL table &#39;apps&#39;" in page and "<code>sql-key</code>" in page
    assert "sql-secret" not in page and "…6789" in page
    status, _, page = user.post_form("/apps/6001/disable")
    assert status == 409 and "driver sql" in form_error(page)
    assert server.ws(key="sql-key").established is not None
