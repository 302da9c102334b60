"""The Pusher HTTP API: signed requests in, events to the broker, channel state out.

Every rejection is the status Pusher gives with a JSON body `{"error": "..."}`.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from typing import TYPE_CHECKING, Any, NoReturn

from flask import Blueprint, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from ipe import auth, logs, protocol
from ipe.hub import EVENT, TERMINATE

if TYPE_CHECKING:
    from ipe.app import State
    from ipe.config import AppConfig, Limits

log = logging.getLogger(__name__)

blueprint = Blueprint("rest", __name__)

CHANNEL_INFO = frozenset({"user_count", "subscription_count", "cache"})
CHANNELS_INFO = frozenset({"user_count", "subscription_count"})
EVENT_INFO = frozenset({"user_count", "subscription_count"})


class ApiError(Exception):
    """A request rejected with an HTTP status and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _state() -> State:
    return current_app.extensions["ipe"]  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=64)
def body_cap(limits: Limits) -> int:
    """The largest body a valid request can have under `limits`; larger ones get 413 unread.

    Bounds the worst legitimate JSON: a full batch (or one event to every allowed channel)
    whose data is at the size limit and escaped at worst 6 bytes per byte (`\\u001f`), whose
    names are escaped at worst 12 bytes per character (an astral character as two `\\uXXXX`).
    """
    event = 6 * limits.max_message_size + 12 * limits.max_event_name_length + 256
    one = event + limits.max_channels_per_event * (limits.max_channel_name_length + 3)
    batch = limits.max_batch_size * (event + limits.max_channel_name_length + 16)
    return max(one, batch) + 4096


def _read_body(limits: Limits) -> bytes:
    """The request body, refused with 413 before reading if it is declared too large.

    A chunked body has no declared length: werkzeug stops reading at the limit and returns
    what it read, so one byte more is allowed through to tell "too large" from "exactly full".
    """
    cap = body_cap(limits)
    request.max_content_length = cap + 1
    try:
        body = request.get_data(cache=True)
    except RequestEntityTooLarge:
        body = None
    if body is None or len(body) > cap:
        raise ApiError(413, f"Request body larger than {cap} bytes")
    return body


def _authenticate(app: AppConfig, body: bytes) -> None:
    """Check the request signature (401) and that the app is enabled (403)."""
    paths = [request.path]
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    if raw:
        raw_path = raw.split("?", 1)[0]
        if raw_path != request.path:
            paths.append(raw_path)
    try:
        auth.verify_rest(
            app.key,
            app.secrets,
            request.method,
            tuple(paths),
            request.args.to_dict(flat=True),
            body,
            time.time(),
        )
    except auth.RestAuthError as exc:
        raise ApiError(401, str(exc)) from None
    if not app.enabled:
        raise ApiError(403, "Application disabled")


def _app(app_id: str) -> tuple[AppConfig, bytes]:
    """The app of the path, after authenticating the request; and the request body."""
    app = _state().apps.by_id(app_id)
    if app is None:
        raise ApiError(404, f"Unknown app: {app_id[:64]}")
    g.ipe_app_id = app.app_id  # a served app's id: a bounded metrics label
    body = _read_body(app.limits)
    _authenticate(app, body)
    return app, body


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


# One decoder for every request (json.loads with options builds a new one per call).
_decode_json = json.JSONDecoder(parse_constant=_reject_constant).decode


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        # Strict UTF-8: json.loads(bytes) would also take UTF-16/32 and decode UTF-8-encoded
        # surrogates ("surrogatepass").
        parsed = _decode_json(body.decode())
    except (ValueError, RecursionError):
        # RecursionError: a body of 100 000 nested brackets is within the size cap.
        raise ApiError(400, "Request body is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise ApiError(400, "Request body must be a JSON object")
    return parsed


def _info(value: Any, allowed: frozenset[str]) -> set[str]:
    if value in (None, ""):
        return set()
    if not isinstance(value, str):
        raise ApiError(400, "info must be a comma-separated string")
    attrs = {a.strip() for a in value.split(",") if a.strip()}
    unknown = attrs - allowed
    if unknown:
        raise ApiError(400, f"Unsupported info attribute: {sorted(unknown)[0]}")
    return attrs


def _channel(name: Any, limits: Limits) -> str:
    if not protocol.valid_channel_name(name, limits.max_channel_name_length):
        shown = name[:64] if isinstance(name, str) else name
        raise ApiError(400, f"Invalid channel name: {shown!r}")
    return name  # type: ignore[no-any-return]


# --- events -------------------------------------------------------------------------------------


class _Event:
    """One validated event of a trigger or batch request."""

    __slots__ = ("name", "data", "channels", "socket_id", "info")

    def __init__(self, raw: Any, limits: Limits, batch: bool) -> None:
        """Validate `raw`; a batch item names one `channel`, a trigger `channels` or `channel`."""
        if not isinstance(raw, dict):
            raise ApiError(400, "Each event must be a JSON object")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "Missing event name")
        if len(name) > limits.max_event_name_length:
            raise ApiError(400, f"Event name longer than {limits.max_event_name_length} characters")
        if not name.isascii() and not _encodable(name):
            raise ApiError(400, "Event name is not valid Unicode")
        if "data" not in raw:
            raise ApiError(400, "Missing event data")
        data = raw["data"]
        if not isinstance(data, str):
            data = protocol.dumps(data)
        # Measured in UTF-8 bytes, as Pusher does; ASCII data (the usual case) needs no copy.
        if data.isascii():
            size = len(data)
        else:
            try:
                size = len(data.encode())
            except UnicodeEncodeError:
                raise ApiError(400, "Event data is not valid Unicode") from None
        if size > limits.max_message_size:
            raise ApiError(413, f"Event data larger than {limits.max_message_size} bytes")
        if batch:
            channel = raw.get("channel")
            if channel is None:
                raise ApiError(400, "Missing channel")
            channels = [channel]
        else:
            channels = raw.get("channels")
            if channels is None:
                channel = raw.get("channel")
                if channel is None:
                    raise ApiError(400, "Missing channel or channels")
                channels = [channel]
            if not isinstance(channels, list) or not channels:
                raise ApiError(400, "channels must be a non-empty list")
            if len(channels) > limits.max_channels_per_event:
                raise ApiError(400, f"More than {limits.max_channels_per_event} channels")
        socket_id = raw.get("socket_id")
        if socket_id == "":
            socket_id = None  # pusher-http-go before 5.0 always sends "socket_id": ""
        if socket_id is not None and not protocol.valid_socket_id(socket_id):
            raise ApiError(400, f"Invalid socket_id: {str(socket_id)[:64]!r}")
        self.name = name
        self.data = data
        self.channels = list(dict.fromkeys(_channel(c, limits) for c in channels))
        self.socket_id = socket_id
        self.info = _info(raw.get("info"), EVENT_INFO)

    def publish(self, state: State, app: AppConfig) -> None:
        """Encode once per channel and hand each to the broker (and the cache)."""
        app_id = app.app_id
        payloads = protocol.encode_events(self.name, self.channels, self.data)
        for channel, payload in zip(self.channels, payloads, strict=True):
            if protocol.is_cache(channel):
                state.cache.put(app_id, channel, self.name, self.data, app.limits.cache_ttl)
            state.broker.publish(app_id, EVENT, channel, payload, self.socket_id)
            if app_id in state.tap.apps:
                state.tap.api_message(app_id, channel, self.name, self.data)


def _encodable(text: str) -> bool:
    """False for strings with lone surrogates (JSON "\\ud800"), which UTF-8 cannot carry."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _counts(state: State, app: AppConfig, channel: str, attrs: set[str]) -> dict[str, int]:
    """The `info` attributes of one published-to channel (user_count only for presence)."""
    counts = {}
    if "user_count" in attrs and protocol.is_presence(channel):
        counts["user_count"] = len(state.presence.members(app.app_id, channel))
    if "subscription_count" in attrs:
        counts["subscription_count"] = state.presence.subscription_count(app.app_id, channel)
    return counts


@blueprint.post("/apps/<app_id>/events", provide_automatic_options=False)
def trigger(app_id: str) -> Response:
    """Publish one event to up to 100 channels."""
    app, body = _app(app_id)
    state = _state()
    event = _Event(_json_object(body), app.limits, batch=False)
    event.publish(state, app)
    if event.info:
        return jsonify(
            {"channels": {ch: _counts(state, app, ch, event.info) for ch in event.channels}}
        )
    return jsonify({})


@blueprint.post("/apps/<app_id>/batch_events", provide_automatic_options=False)
def trigger_batch(app_id: str) -> Response:
    """Publish up to 10 events; one invalid event rejects the whole batch."""
    app, body = _app(app_id)
    state = _state()
    batch = _json_object(body).get("batch")
    if not isinstance(batch, list):
        raise ApiError(400, "Missing batch")
    if len(batch) > app.limits.max_batch_size:
        raise ApiError(400, f"Cannot batch-send more than {app.limits.max_batch_size} events")
    events = [_Event(raw, app.limits, batch=True) for raw in batch]
    for event in events:
        event.publish(state, app)
    if any(e.info for e in events):
        return jsonify({"batch": [_counts(state, app, e.channels[0], e.info) for e in events]})
    return jsonify({})


# --- channels -----------------------------------------------------------------------------------


@blueprint.get("/apps/<app_id>/channels", provide_automatic_options=False)
def channels(app_id: str) -> Response:
    """Occupied channels, optionally filtered by prefix, with optional user counts."""
    app, _ = _app(app_id)
    state = _state()
    prefix = request.args.get("filter_by_prefix", "")
    attrs = _info(request.args.get("info"), CHANNELS_INFO)
    if "user_count" in attrs and not prefix.startswith("presence-"):
        raise ApiError(400, "info=user_count requires filter_by_prefix=presence-")
    result = {}
    for channel, count in state.presence.channels(app.app_id).items():
        if count <= 0 or not channel.startswith(prefix):
            continue
        if channel.startswith(protocol.SERVER_TO_USER_PREFIX):
            continue
        info: dict[str, int] = {}
        if "user_count" in attrs:
            info["user_count"] = len(state.presence.members(app.app_id, channel))
        if "subscription_count" in attrs:
            info["subscription_count"] = count
        result[channel] = info
    return jsonify({"channels": result})


@blueprint.get("/apps/<app_id>/channels/<channel>", provide_automatic_options=False)
def channel(app_id: str, channel: str) -> Response:
    """One channel's state: occupied, and the requested counts and cache."""
    app, _ = _app(app_id)
    state = _state()
    channel = _channel(channel, app.limits)
    attrs = _info(request.args.get("info"), CHANNEL_INFO)
    if "user_count" in attrs and not protocol.is_presence(channel):
        raise ApiError(400, "info=user_count is only available for presence channels")
    if "cache" in attrs and not protocol.is_cache(channel):
        raise ApiError(400, "info=cache is only available for cache channels")
    count = state.presence.subscription_count(app.app_id, channel)
    result: dict[str, Any] = {"occupied": count > 0}
    if "user_count" in attrs:
        result["user_count"] = len(state.presence.members(app.app_id, channel))
    if "subscription_count" in attrs:
        result["subscription_count"] = count
    if "cache" in attrs:
        cached = state.cache.get(app.app_id, channel)
        result["cache"] = None if cached is None else {"data": cached.data, "ttl": cached.ttl}
    return jsonify(result)


@blueprint.get("/apps/<app_id>/channels/<channel>/users", provide_automatic_options=False)
def users(app_id: str, channel: str) -> Response:
    """The distinct user ids of a presence channel."""
    app, _ = _app(app_id)
    channel = _channel(channel, app.limits)
    if not protocol.is_presence(channel):
        raise ApiError(400, "Users are only available for presence channels")
    members = _state().presence.members(app.app_id, channel)
    return jsonify({"users": [{"id": user_id} for user_id in members]})


# --- users --------------------------------------------------------------------------------------


def _terminate(app: AppConfig, user_id: str) -> Response:
    if not protocol.CHANNEL_NAME_RE.fullmatch(user_id):
        raise ApiError(400, "Invalid user id")
    _state().broker.publish(app.app_id, TERMINATE, user_id)
    return jsonify({})


@blueprint.post(
    "/apps/<app_id>/users/<user_id>/terminate_connections", provide_automatic_options=False
)
def terminate(app_id: str, user_id: str) -> Response:
    """Close every connection signed in as `user_id`."""
    app, _ = _app(app_id)
    return _terminate(app, user_id)


@blueprint.post("/users/<user_id>/terminate_connections", provide_automatic_options=False)
def terminate_without_app(user_id: str) -> Response:
    """The path pusher-http-python 3.3.x signs: the app is found by its auth_key."""
    app = _state().apps.by_key(request.args.get("auth_key", ""))
    if app is not None:
        g.ipe_app_id = app.app_id
    if app is None:
        # No app id in the path: an unknown key is a credentials problem (401), not a 404.
        raise ApiError(401, "Unknown or missing auth_key")
    _authenticate(app, _read_body(app.limits))
    return _terminate(app, user_id)


# --- errors and logging -------------------------------------------------------------------------


@blueprint.app_errorhandler(ApiError)
def _api_error(exc: ApiError) -> tuple[Response, int]:
    return jsonify({"error": exc.message}), exc.status


@blueprint.app_errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    """Routing and body-size errors of werkzeug, with ipe's JSON body (and `Allow` on 405)."""
    status = exc.code or 500
    messages = {404: "Not found", 405: "Method not allowed", 413: "Request body too large"}
    response = jsonify({"error": messages.get(status, exc.name)})
    response.status_code = status
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


@blueprint.app_errorhandler(Exception)
def _unexpected(exc: Exception) -> tuple[Response, int]:
    log.exception("error serving %s %s", request.method, request.path)
    return jsonify({"error": "Internal server error"}), 500


@blueprint.before_app_request
def _start_timer() -> None:
    g.ipe_started = time.monotonic()


@blueprint.after_app_request
def _log_request(response: Response) -> Response:
    started = g.get("ipe_started")
    elapsed = (time.monotonic() - started) * 1000 if started else 0.0
    endpoint = request.endpoint or "unknown"
    app_id = (request.view_args or {}).get("app_id")
    _state().metrics.http_requests.labels(
        app_id=g.get("ipe_app_id", ""), endpoint=endpoint, status=str(response.status_code)
    ).inc()
    log.info(
        "%s %s %d %.1fms",
        request.method,
        request.path,
        response.status_code,
        elapsed,
        extra={
            "app_id": str(app_id)[:64] if app_id is not None else None,
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "duration_ms": round(elapsed, 1),
            "remote_addr": logs.remote_address(request.environ),
        },
    )
    return response
