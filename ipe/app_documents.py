"""An app as a mapping (the config file's shape, as `driver: redis` stores it): the edits that
`ipe apps` and the console make to one, and how its secrets may be shown.

Nothing here validates: the store checks every edited mapping with `ipe.config.parse_app`,
exactly as the config file's apps are checked.
"""

from __future__ import annotations

import secrets
from typing import Any

import yaml

from ipe.config import ConfigError

# What may be shown of a secret: enough to tell two apart, never enough to use.
SHOWN_SECRET_CHARS = 4


class NoSuchApp(LookupError):
    """No stored app has this id."""

    def __init__(self, app_id: str) -> None:
        super().__init__(f"no app {app_id}")


def new_secret() -> str:
    """A fresh random secret (40 hex characters, like the ones Pusher hands out)."""
    return secrets.token_hex(20)


def secret_hint(secret: str) -> str:
    """`…` and the last four characters; a short secret shows nothing (four would be most of it)."""
    if len(secret) >= 4 * SHOWN_SECRET_CHARS:
        return f"…{secret[-SHOWN_SECRET_CHARS:]}"
    return "…"


def secrets_of(document: dict[str, Any]) -> list[str]:
    """The mapping's secrets, the current one first (`secret: S` or `secrets: [new, old]`)."""
    if "secrets" in document:
        listed = document["secrets"]
        return list(listed) if isinstance(listed, list) else []
    secret = document.get("secret")
    return [secret] if secret else []


def shown(document: dict[str, Any]) -> dict[str, Any]:
    """The mapping with each secret replaced by its hint."""
    result = {k: v for k, v in document.items() if k not in ("secret", "secrets")}
    result["secrets"] = [secret_hint(str(s)) for s in secrets_of(document)]
    return result


def assign(document: dict[str, Any], assignment: str) -> None:
    """Apply `PATH=VALUE` (`limits.max_connections=100`; VALUE read as YAML) to the mapping."""
    path, sep, text = assignment.partition("=")
    if not sep or not path:
        raise ConfigError(f"--set {assignment!r}: expected PATH=VALUE")
    *parents, last = path.split(".")
    node = document
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {path}: {part} is not a mapping")
    try:
        node[last] = yaml.safe_load(text) if text else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {path}: not valid YAML ({_first_line(exc)})") from None


def new_app(
    app_id: str, key: str, secret: str, name: str = "", enabled: bool = True
) -> dict[str, Any]:
    """The mapping of a new app with one secret."""
    return {"app_id": app_id, "key": key, "secrets": [secret], "name": name, "enabled": enabled}


def rotate(document: dict[str, Any], secret: str) -> None:
    """Put `secret` first; the previous ones stay valid until `drop_old_secrets`."""
    current = secrets_of(document)
    document.pop("secret", None)
    document["secrets"] = [secret, *current]


def drop_old_secrets(document: dict[str, Any]) -> int:
    """Keep only the current secret; how many old ones were dropped."""
    current = secrets_of(document)
    document.pop("secret", None)
    document["secrets"] = current[:1]
    return max(len(current) - 1, 0)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
