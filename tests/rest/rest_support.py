"""Helpers of the REST API tests: hand-signed HTTP requests and the official Node SDK.

A module, not a conftest.py: a second conftest would shadow tests/conftest.py for every
`from conftest import ...`. The official Python SDK comes from `server.sdk()`.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pusher.errors
import pytest
from conftest import APP_ID, KEY, ROOT, SECRET, IpeServer, WsClient, config_with

NODE_SDK = ROOT / "tests" / "e2e" / "node_sdk.js"

# An app with small limits, to prove every limit is read from the app's config.
TIGHT = {
    "name": "Tight",
    "app_id": "1006",
    "key": "tight-key",
    "secret": "tight-secret",
    "limits": {
        "max_message_size": 100,
        "max_channels_per_event": 3,
        "max_channel_name_length": 20,
        "max_event_name_length": 10,
        "max_batch_size": 2,
    },
}


def rest_config() -> dict[str, Any]:
    """BASE_CONFIG plus the Tight app."""
    config = config_with()
    config["apps"].append(TIGHT)
    return config


class Reply:
    """One HTTP response: status, headers and the body parsed as JSON (None if it is not)."""

    def __init__(self, status: int, headers: Mapping[str, str], raw: bytes) -> None:
        self.status = status
        self.headers = headers
        self.raw = raw
        try:
            self.json: Any = json.loads(raw)
        except ValueError:
            self.json = None

    @property
    def error(self) -> str:
        """The `error` of a rejection, asserting the body is exactly {"error": "<text>"}."""
        assert self.headers.get("content-type", "").startswith("application/json"), self.headers
        assert isinstance(self.json, dict) and list(self.json) == ["error"], self.raw
        assert isinstance(self.json["error"], str) and self.json["error"], self.raw
        return self.json["error"]

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.raw[:300]!r})"


def signed_query(
    method: str,
    path: str,
    params: Mapping[str, str] | None = None,
    body: bytes = b"",
    *,
    key: str = KEY,
    secret: str = SECRET,
    timestamp: int | None = None,
    body_md5: str | None = None,
    sign_path: str | None = None,
    drop: tuple[str, ...] = (),
) -> dict[str, str]:
    """Query parameters signed as docs/protocol-notes.md §6.2 describes, built here with hmac."""
    query = {
        "auth_key": key,
        "auth_timestamp": str(int(time.time()) if timestamp is None else timestamp),
        "auth_version": "1.0",
        **(params or {}),
    }
    if body_md5 is not None:
        query["body_md5"] = body_md5
    elif body:
        query["body_md5"] = hashlib.md5(body).hexdigest()
    for name in drop:
        query.pop(name, None)
    to_sign = "&".join(f"{k}={v}" for k, v in sorted(query.items()))
    message = f"{method}\n{sign_path or path}\n{to_sign}"
    query["auth_signature"] = hmac.new(
        secret.encode(), message.encode(), hashlib.sha256
    ).hexdigest()
    return query


class Api:
    """Raw HTTP against one ipe process: nothing is encoded or checked that the test didn't ask."""

    def __init__(self, server: IpeServer) -> None:
        self.server = server

    def raw(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """Send `method target` as given (target = path plus raw query string)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        try:
            conn.putrequest(method, target, skip_accept_encoding=True)
            all_headers = {"Content-Length": str(len(body)), **(headers or {})}
            for name, value in all_headers.items():
                conn.putheader(name, value)
            conn.endheaders(body or None)
            response = conn.getresponse()
            return Reply(
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                response.read(),
            )
        finally:
            conn.close()

    def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None = None,
        body: bytes | dict[str, Any] | None = None,
        *,
        query: Callable[[dict[str, str]], str] | None = None,
        headers: Mapping[str, str] | None = None,
        **signing: Any,
    ) -> Reply:
        """A signed request; `body` dicts are sent as compact JSON; `signing` → signed_query."""
        if isinstance(body, dict):
            body = json.dumps(body, separators=(",", ":")).encode()
        body = body or b""
        signed = signed_query(method, path, params, body, **signing)
        query_string = (query or raw_query)(signed)
        headers = {"Content-Type": "application/json", **(headers or {})} if body else headers
        return self.raw(method, f"{path}?{query_string}", body, headers)

    def post(self, path: str, body: bytes | dict[str, Any], **kwargs: Any) -> Reply:
        return self.request("POST", path, None, body, **kwargs)

    def get(self, path: str, params: Mapping[str, str] | None = None, **kwargs: Any) -> Reply:
        return self.request("GET", path, params, **kwargs)

    def trigger(self, app_id: str = APP_ID, **event: Any) -> Reply:
        """POST /apps/{app_id}/events with `event` as the body, signed with the main app."""
        return self.post(f"/apps/{app_id}/events", event)


def raw_query(params: Mapping[str, str]) -> str:
    """The query as node and python write it: values unescaped."""
    return "&".join(f"{k}={v}" for k, v in params.items())


def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IpeServer]:
    """One ipe process (with the Tight app) for tests that change no channel state."""
    server = IpeServer(rest_config(), tmp_path_factory.mktemp("rest"), "rest").start()
    yield server
    for client in server.clients:
        client.close()
    server.stop()
    assert "Traceback" not in server.log(), f"{server.log_path}:\n{server.log()}"


def node_sdk(server: IpeServer, *calls: list[Any], **options: Any) -> list[dict[str, Any]]:
    """Run `calls` ([method, *args]) through the official Node SDK; one result per call."""
    node = shutil.which("node")
    if node is None or not (NODE_SDK.parent / "node_modules" / "pusher").is_dir():
        pytest.fail("the Node SDK needs node and `npm ci` in tests/e2e (scripts/test does both)")
    config = {
        "appId": APP_ID,
        "key": KEY,
        "secret": SECRET,
        "host": "127.0.0.1",
        "port": str(server.port),
        "useTLS": False,
        **options,
    }
    argv = [node, str(NODE_SDK), json.dumps(config), *(json.dumps(call) for call in calls)]
    done = subprocess.run(argv, capture_output=True, timeout=60, cwd=NODE_SDK.parent)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    results = json.loads(done.stdout)
    assert len(results) == len(calls)
    return results  # type: ignore[no-any-return]


# --- the two official SDKs behind one interface --------------------------------------------------


class SdkError(Exception):
    """A request an SDK reported as failed, with the HTTP status (None: failed before sending)."""

    def __init__(self, status: int | None, body: str) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body


class PythonSdk:
    """The official Python SDK (`pusher` from PyPI), as `server.sdk()` builds it."""

    name = "python"

    def __init__(self, server: IpeServer, **kwargs: Any) -> None:
        self.client = server.sdk(**kwargs)

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self.client, method)(*args)
        except pusher.errors.PusherBadRequest as exc:
            raise SdkError(400, str(exc)) from None
        except pusher.errors.PusherBadAuth as exc:
            raise SdkError(401, str(exc)) from None
        except pusher.errors.PusherForbidden as exc:
            raise SdkError(403, str(exc)) from None
        except pusher.errors.PusherBadStatus as exc:
            status, _, body = str(exc).partition(": ")
            raise SdkError(int(status), body) from None

    def trigger(self, channels: Any, event: str, data: Any, socket_id: str | None = None) -> Any:
        return self._call("trigger", channels, event, data, socket_id)

    def trigger_batch(self, batch: list[dict[str, Any]]) -> Any:
        return self._call("trigger_batch", batch)

    def send_to_user(self, user_id: str, event: str, data: Any) -> Any:
        return self._call("send_to_user", user_id, event, data)

    def channels_info(self, prefix: str | None = None, attributes: tuple[str, ...] = ()) -> Any:
        return self._call("channels_info", prefix, list(attributes))

    def channel_info(self, channel: str, attributes: tuple[str, ...] = ()) -> Any:
        return self._call("channel_info", channel, list(attributes))

    def users_info(self, channel: str) -> Any:
        return self._call("users_info", channel)

    def terminate_user_connections(self, user_id: str) -> Any:
        return self._call("terminate_user_connections", user_id)

    def authorize_channel(self, socket_id: str, channel: str, data: Any = None) -> dict[str, str]:
        return self.client.authenticate(channel, socket_id, data)  # type: ignore[no-any-return]

    def authenticate_user(self, socket_id: str, user_data: dict[str, Any]) -> dict[str, str]:
        return self.client.authenticate_user(socket_id, user_data)  # type: ignore[no-any-return]


class NodeSdk:
    """The official Node SDK (`pusher` from npm), one `node` process per call."""

    name = "node"

    def __init__(self, server: IpeServer, **options: Any) -> None:
        self.server = server
        self.options = options

    def _call(self, method: str, *args: Any) -> Any:
        result = node_sdk(self.server, [method, *args], **self.options)[0]
        if "error" in result:
            raise SdkError(result.get("status"), result.get("body") or result["error"])
        return result["body"] if "status" in result else result["value"]

    def trigger(
        self,
        channels: Any,
        event: str,
        data: Any,
        socket_id: str | None = None,
        info: str | None = None,
    ) -> Any:
        params = {"socket_id": socket_id, "info": info}
        return self._call(
            "trigger", channels, event, data, {k: v for k, v in params.items() if v is not None}
        )

    def trigger_batch(self, batch: list[dict[str, Any]]) -> Any:
        return self._call("triggerBatch", batch)

    def send_to_user(self, user_id: str, event: str, data: Any) -> Any:
        return self._call("sendToUser", user_id, event, data)

    def _get(self, path: str, params: dict[str, str]) -> Any:
        return self._call("get", {"path": path, "params": params})

    def channels_info(self, prefix: str | None = None, attributes: tuple[str, ...] = ()) -> Any:
        params = {"filter_by_prefix": prefix} if prefix else {}
        if attributes:
            params["info"] = ",".join(attributes)
        return self._get("/channels", params)

    def channel_info(self, channel: str, attributes: tuple[str, ...] = ()) -> Any:
        params = {"info": ",".join(attributes)} if attributes else {}
        return self._get(f"/channels/{channel}", params)

    def users_info(self, channel: str) -> Any:
        return self._get(f"/channels/{channel}/users", {})

    def terminate_user_connections(self, user_id: str) -> Any:
        return self._call("terminateUserConnections", user_id)

    def authorize_channel(self, socket_id: str, channel: str, data: Any = None) -> dict[str, str]:
        args = [socket_id, channel] + ([data] if data is not None else [])
        return self._call("authorizeChannel", *args)  # type: ignore[no-any-return]

    def authenticate_user(self, socket_id: str, user_data: dict[str, Any]) -> dict[str, str]:
        return self._call("authenticateUser", socket_id, user_data)  # type: ignore[no-any-return]


SDKS = {"python": PythonSdk, "node": NodeSdk}


# --- WebSocket clients signed with an SDK ------------------------------------------------------


def sign_in(client: WsClient, sdk: PythonSdk | NodeSdk, user_id: str) -> None:
    """pusher:signin as `user_id`, signed by the SDK's authenticateUser."""
    assert client.socket_id is not None
    client.send("pusher:signin", sdk.authenticate_user(client.socket_id, {"id": user_id}))
    client.expect("pusher:signin_success")


def subscribe(
    client: WsClient, sdk: PythonSdk | NodeSdk, channel: str, member: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Subscribe to any channel, signed by the SDK's authorizeChannel when it needs a signature."""
    assert client.socket_id is not None
    if channel.startswith(("private-", "presence-")):
        token = sdk.authorize_channel(client.socket_id, channel, member)
        reply = client.subscribe(channel, token["auth"], token.get("channel_data"))
    else:
        reply = client.subscribe(channel)
    assert reply["event"] == "pusher_internal:subscription_succeeded", reply
    return reply
