"""The apps and base config every test server starts from."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent

# The credentials of docs/protocol-notes.md's test vectors.
APP_ID, KEY, SECRET = "1001", "demo-key", "demo-secret"
# A second app, to prove nothing crosses between apps.
OTHER_APP_ID, OTHER_KEY, OTHER_SECRET = "1002", "other-key", "other-secret"
# An app that counts subscriptions (pusher_internal:subscription_count).
COUNTED_APP_ID, COUNTED_KEY, COUNTED_SECRET = "1007", "counted-key", "counted-secret"

BASE_CONFIG: dict[str, Any] = {
    "host": "127.0.0.1:8080",  # --port overrides it
    "activity_timeout": 30,
    "pong_timeout": 30,
    # Close every socket at once on SIGTERM, so that stopping a server never waits: the
    # spread-out drain has its own tests (tests/integration/test_drain.py).
    "drain_seconds": 0,
    "apps": [
        {"name": "Main", "app_id": APP_ID, "key": KEY, "secret": SECRET, "user_events": True},
        {"name": "Other", "app_id": OTHER_APP_ID, "key": OTHER_KEY, "secret": OTHER_SECRET},
        {
            "name": "Off",
            "app_id": "1003",
            "key": "off-key",
            "secret": "off-secret",
            "enabled": False,
        },
        {
            "name": "TLS",
            "app_id": "1004",
            "key": "tls-key",
            "secret": "tls-secret",
            "only_ssl": True,
        },
        {
            "name": "Quiet",
            "app_id": "1005",
            "key": "quiet-key",
            "secret": "quiet-secret",
            "user_events": False,
        },
        {
            "name": "Counted",
            "app_id": COUNTED_APP_ID,
            "key": COUNTED_KEY,
            "secret": COUNTED_SECRET,
            "subscription_count": True,
        },
    ],
}

# Copies of the main app, each for one test on a shared server (`app_server`): channels, members
# and users are per app, so a test sees only its own, counts included.
POOL_APPS: list[dict[str, Any]] = [
    {
        "name": f"Pool{i}",
        "app_id": str(5000 + i),
        "key": f"pool{i}-key",
        "secret": f"pool{i}-secret",
        "user_events": True,
    }
    for i in range(64)
]

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


# The secret of each app above by key, so that signing needs only the key.
SECRETS = {app["key"]: app["secret"] for app in [*BASE_CONFIG["apps"], *POOL_APPS, TIGHT]}
APP_IDS = {app["key"]: app["app_id"] for app in [*BASE_CONFIG["apps"], *POOL_APPS, TIGHT]}


def pool_config() -> dict[str, Any]:
    """BASE_CONFIG plus POOL_APPS."""
    config = config_with()
    config["apps"] += copy.deepcopy(POOL_APPS)
    return config


def config_with(**overrides: Any) -> dict[str, Any]:
    """BASE_CONFIG with top-level keys replaced (deep copies, so tests cannot leak)."""
    config = copy.deepcopy(BASE_CONFIG)
    config.update(copy.deepcopy(overrides))
    return config
