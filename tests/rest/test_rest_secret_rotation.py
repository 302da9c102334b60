"""An app that lists `secrets: [new, old]` accepts REST calls signed with either, from both
official server SDKs (Python and Node); any other secret gets 401."""

from __future__ import annotations

from typing import Any

import pusher
import pytest
from support import APP_ID, KEY, SECRET, config_with
from support.rest import node_sdk


def test_both_sdks_sign_with_the_old_and_the_new_secret(make_server: Any) -> None:
    config = config_with()
    app = config["apps"][0]
    del app["secret"]
    app["secrets"] = ["rotated-secret", SECRET]
    server = make_server(config)
    client = server.ws()
    client.subscribe("rotation")
    for secret in ("rotated-secret", SECRET):
        python = server.sdk(secret=secret)
        assert python.trigger("rotation", "python", {"secret": secret[:3]}) == {}
        assert client.wait_for("python", "rotation")
        (result,) = node_sdk(server, ["trigger", "rotation", "node", {}], secret=secret)
        assert result["status"] == 200, result
        assert client.wait_for("node", "rotation")
    (refused,) = node_sdk(server, ["trigger", "rotation", "node", {}], secret="wrong")
    assert refused["status"] == 401, refused
    wrong = pusher.Pusher(
        app_id=APP_ID, key=KEY, secret="wrong", host="127.0.0.1", port=server.port, ssl=False
    )
    with pytest.raises(pusher.errors.PusherBadAuth):
        wrong.trigger("rotation", "python", {})
