"""HMAC-SHA256 signatures of the Pusher protocol, always compared in constant time. Pure."""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Any

from ipe.protocol import is_presence

REST_TIMESTAMP_WINDOW = 600  # seconds either side of now (docs/protocol-notes.md §6.2)
EMPTY_BODY_MD5 = hashlib.md5(b"").hexdigest()


@functools.lru_cache(maxsize=256)
def _keyed(secret: str) -> Any:
    """An HMAC-SHA256 that has taken `secret` and nothing else, to be copied per message.

    OpenSSL's HMAC object itself where the `hmac` module has one (its `copy` is then one C
    call instead of a Python method building a new wrapper)."""
    keyed = hmac.new(secret.encode(), digestmod=hashlib.sha256)
    return getattr(keyed, "_hmac", None) or keyed


def sign(secret: str, message: str | bytes) -> str:
    """Lowercase hex HMAC-SHA256 of `message` keyed with `secret`."""
    if isinstance(message, str):
        message = message.encode()
    # A copy of the keyed state skips hashing the padded key (two SHA-256 blocks) and
    # OpenSSL's lookup of the algorithm, which hmac.digest repeats on every call.
    keyed = _keyed(secret).copy()
    keyed.update(message)
    return keyed.hexdigest()


# One secret, or every secret an app accepts while one rotates out (the current one first).
Secrets = str | Sequence[str]


def _each(secrets: Secrets) -> Sequence[str]:
    return (secrets,) if isinstance(secrets, str) else secrets


def _token_valid(key: str, secret: Secrets, token: object, string_to_sign: str) -> bool:
    """Check a `key:hexdigest` token; the whole string is compared so the key must match too."""
    if not isinstance(token, str):
        return False
    given = token.encode()
    # Every secret is tried (no early exit), so timing tells nothing about which one matched.
    valid = False
    for one in _each(secret):
        expected = f"{key}:{sign(one, string_to_sign)}"
        valid |= hmac.compare_digest(expected.encode(), given)
    return valid


def channel_auth_valid(
    key: str,
    secret: Secrets,
    socket_id: str,
    channel: str,
    token: object,
    channel_data: str | None,
) -> bool:
    """Check a private/presence channel token over `socket_id:channel[:channel_data]`."""
    if channel_data is not None:
        if _token_valid(key, secret, token, f"{socket_id}:{channel}:{channel_data}"):
            return True
        # channel_data names a presence member: unsigned, anyone could claim any user id.
        # A private channel may be signed with or without it (php signs it).
        if is_presence(channel):
            return False
    return _token_valid(key, secret, token, f"{socket_id}:{channel}")


def signin_valid(key: str, secret: Secrets, socket_id: str, user_data: str, token: object) -> bool:
    """Check a `pusher:signin` token over `socket_id::user::user_data`."""
    return _token_valid(key, secret, token, f"{socket_id}::user::{user_data}")


def channel_string_to_sign(socket_id: str, channel: str, channel_data: str | None) -> str:
    """What a channel token signs, for error messages that tell a developer what went wrong."""
    if channel_data is None:
        return f"{socket_id}:{channel}"
    return f"{socket_id}:{channel}:{channel_data}"


def webhook_signature(secret: str, body: bytes) -> str:
    """`X-Pusher-Signature` of a webhook body: HMAC over exactly the bytes sent."""
    return sign(secret, body)


class RestAuthError(Exception):
    """A REST request whose authentication fails; `str()` is the message for the client."""


def rest_string_to_sign(method: str, path: str, params: Mapping[str, str]) -> str:
    """`METHOD\\npath\\nsorted query` with `auth_signature` left out and keys lowercased."""
    pairs = sorted([(k.lower(), v) for k, v in params.items()])
    query = "&".join([f"{k}={v}" for k, v in pairs if k != "auth_signature"])
    return f"{method.upper()}\n{path}\n{query}"


def verify_body_md5(params: Mapping[str, str], body: bytes) -> None:
    """Raise RestAuthError unless the signed `body_md5` matches `body` (absent: empty body)."""
    body_md5 = params.get("body_md5")
    if body:
        if body_md5 is None or not hmac.compare_digest(
            body_md5.encode(), hashlib.md5(body).hexdigest().encode()
        ):
            raise RestAuthError("body_md5 does not match the request body")
    elif body_md5 is not None and body_md5 != EMPTY_BODY_MD5:
        raise RestAuthError("body_md5 does not match the (empty) request body")


def verify_rest(
    key: str,
    secret: Secrets,
    method: str,
    paths: tuple[str, ...],
    params: Mapping[str, str],
    body: bytes | None,
    now: float,
) -> None:
    """Raise RestAuthError unless the request carries a valid auth_version 1.0 signature.

    `paths` lists the paths the client may have signed (the path as received, and without a
    deployment prefix); `params` are the percent-decoded query parameters. With `body` None
    only the query is checked: the signature covers `body_md5`, so a server can refuse a
    request before reading its body, then check the body with `verify_body_md5`.
    """
    if params.get("auth_key") != key:
        raise RestAuthError("Unknown or missing auth_key")
    if params.get("auth_version") != "1.0":
        raise RestAuthError("auth_version must be 1.0")
    raw_timestamp = params.get("auth_timestamp", "")
    # isascii+isdigit, not int(): int() also takes " 17", "1_700", "+17" and non-ASCII digits.
    # The length cap keeps int() from a 5,000-digit string (ValueError past 4,300 digits).
    if not (raw_timestamp.isascii() and raw_timestamp.isdigit() and len(raw_timestamp) <= 20):
        raise RestAuthError("Missing or invalid auth_timestamp")
    timestamp = int(raw_timestamp)
    if abs(now - timestamp) >= REST_TIMESTAMP_WINDOW:
        raise RestAuthError(
            f"Timestamp expired: Given timestamp ({timestamp}) not within "
            f"{REST_TIMESTAMP_WINDOW}s of server time ({int(now)})"
        )
    if body is not None:
        verify_body_md5(params, body)
    signature = params.get("auth_signature")
    if not isinstance(signature, str):
        raise RestAuthError("Missing auth_signature")
    given = signature.encode()
    valid = False
    for path in paths:
        string_to_sign = rest_string_to_sign(method, path, params)
        for one in _each(secret):
            valid |= hmac.compare_digest(sign(one, string_to_sign).encode(), given)
    if valid:
        return
    raise RestAuthError(
        "Invalid signature: you should have sent HmacSHA256Hex("
        f"{rest_string_to_sign(method, paths[0], params)!r}, your_secret_key)"
    )
