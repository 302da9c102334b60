"""REST API helpers: raw signed HTTP requests, and the official Python and Node SDKs behind
one interface. The Python SDK alone comes from `server.sdk()`."""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pusher.errors
import pusher.signature
import pytest

from support import auth
from support.apps import APP_ID, KEY, ROOT, SECRET, TIGHT, config_with
from support.client import WsClient
from support.server import IpeServer, running

NODE_SDK = ROOT / "tests" / "e2e" / "node_sdk.js"


def rest_config() -> dict[str, Any]:
    """BASE_CONFIG plus the Tight app."""
    config = config_with()
    config["apps"].append(TIGHT)
    return config


# app_id -> key of the apps of rest_config() a plain ws:// client can connect to, for the
# watchers of a request.
# (Not an app that counts subscriptions: a watcher would change the counts its clients hear.)
APP_KEYS = {
    app["app_id"]: app["key"]
    for app in [*config_with()["apps"], TIGHT]
    if app.get("enabled", True) and not app.get("only_ssl") and not app.get("subscription_count")
}


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
    """Query parameters signed as docs/protocol-notes.md §6.2 describes, built here piece by
    piece (so a test can break any piece) and signed by the SDK's `pusher.signature.sign`."""
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
    query["auth_signature"] = pusher.signature.sign(secret, message)
    return query


class Api:
    """Raw HTTP against one ipe process: nothing is encoded or checked that the test didn't ask.

    Every request it sends is watched: clients subscribe beforehand to the channels the body
    names (as the app of the path) and sign in as the user of a /users/ path; when the reply
    is a rejection (4xx/5xx), each must have received nothing and still be connected (a ping
    round trip proves it without waiting: the server publishes before it answers).
    """

    def __init__(self, server: IpeServer, watch: bool = True) -> None:
        self.server = server
        self.watch = watch
        self.watched = 0  # rejections checked to have published nothing

    def raw(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """Send `method target` as given (target = path plus raw query string)."""
        watchers = self.watchers(target, body) if self.watch else []
        try:
            reply = self._send(method, target, body, headers)
            if reply.status >= 400 and watchers:
                for watcher in watchers:
                    watcher.sync()  # fails on any event, or if the socket was closed
                self.watched += 1
            return reply
        finally:
            for watcher in watchers:
                watcher.close()

    def watchers(self, target: str, body: bytes) -> list[WsClient]:
        """Clients placed to see what a request to `target` with `body` might publish or
        terminate (for requests a test writes to a socket itself)."""
        path = target.split("?", 1)[0].split("/")
        key = APP_KEYS.get(path[2]) if len(path) > 2 and path[1] == "apps" else KEY
        watchers = []
        if "users" in path and path.index("users") + 1 < len(path):
            # terminate_connections or send_to_user: a socket signed in as that user
            user_id = path[path.index("users") + 1]
            if key is not None and user_id:
                client = self.server.ws(key=key)
                try:
                    auth.sign_in(client, {"id": urllib.parse.unquote(user_id)})
                    watchers.append(client)
                except Exception:  # an id the server refuses: nobody can be signed in as it
                    client.close()
        if key is None:
            return watchers  # an app this server does not have: nothing to watch
        for channel in _channels_named(body):
            client = self.server.ws(key=key)
            try:
                auth.subscribe(client, channel)
            except Exception:  # a name the server refuses (or encrypted): not watchable
                client.close()
                continue
            watchers.append(client)
        return watchers

    def _send(
        self, method: str, target: str, body: bytes, headers: Mapping[str, str] | None
    ) -> Reply:
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


def _channels_named(body: bytes) -> list[str]:
    """The channels a REST body names (events and batch_events) that a watcher can join
    unseen: none when the request asks for counts (`info`), which a watcher would change, and
    no presence channel (a watcher would be announced) or cache channel (it would get a
    cache_miss)."""
    try:
        parsed = json.loads(body) if body else None
    except (ValueError, RecursionError):
        return []
    items = parsed.get("batch") if isinstance(parsed, dict) else None
    items = items if isinstance(items, list) else [parsed]
    names: list[str] = []
    if any(isinstance(item, dict) and "info" in item for item in items):
        return []
    for item in items:
        if not isinstance(item, dict):
            continue
        channels = item.get("channels")
        for name in [item.get("channel"), *(channels if isinstance(channels, list) else [])]:
            if not isinstance(name, str) or not 0 < len(name) <= 164 or name in names:
                continue
            if not name.startswith("presence-") and "cache-" not in name:
                names.append(name)
    return names[:20]


def raw_query(params: Mapping[str, str]) -> str:
    """The query as node and python write it: values unescaped."""
    return "&".join(f"{k}={v}" for k, v in params.items())


def signed_target(method: str, path: str, body: bytes = b"") -> str:
    """`path?query` signed for the main app, as a raw request line's target."""
    return f"{path}?{raw_query(signed_query(method, path, None, body))}"


def rest_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IpeServer]:
    """One ipe process (with the Tight app) for tests that change no channel state."""
    with running(tmp_path_factory.mktemp("rest"), rest_config(), "rest") as server:
        yield server


def node_sdk(server: IpeServer, *calls: list[Any], **options: Any) -> list[dict[str, Any]]:
    """Run `calls` ([method, *args]) through the official Node SDK; one result per call."""
    node = shutil.which("node")
    if node is None or not (NODE_SDK.parent / "node_modules" / "pusher").is_dir():
        pytest.fail("the Node SDK needs node and `npm ci` in tests/e2e (scripts/test does both)")
    config = {
        "appId": server.app_id,
        "key": server.key,
        "secret": server.secret,
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
