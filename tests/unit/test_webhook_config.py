"""The top-level `webhooks:` section: Pusher's defaults, overrides and clear errors."""

from __future__ import annotations

import pytest

from ipe import config
from ipe.config import ConfigError, WebhookSettings

APP = {"app_id": "1", "key": "k", "secret": "s"}


def parse(**top: object) -> config.Config:
    return config.parse({"apps": [APP], **top}, {})


def test_defaults_are_pushers():
    settings = parse().webhooks
    assert settings == WebhookSettings()
    assert (settings.batch_window, settings.max_batch_size) == (0.25, 20)
    assert (settings.grace_period, settings.retry_for, settings.timeout) == (3.0, 300.0, 4.0)


def test_every_key_can_be_set_and_strings_from_the_environment_count():
    settings = config.parse(
        {
            "apps": [APP],
            "webhooks": {
                "batch_window": 0,
                "max_batch_size": 50,
                "grace_period": "${GRACE}",
                "retry_for": 60,
                "retry_backoff": 0.5,
                "retry_backoff_max": 10,
                "timeout": 2.5,
                "queue_size": 100,
                "flush_timeout": 1,
            },
        },
        {"GRACE": "1.5"},
    ).webhooks
    assert settings == WebhookSettings(0.0, 50, 1.5, 60.0, 0.5, 10.0, 2.5, 100, 1.0)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"batch_windw": 1}, "webhooks.batch_windw: unknown key"),
        ({"grace_period": -1}, "webhooks.grace_period: must be at least 0"),
        ({"grace_period": "soon"}, "webhooks.grace_period: must be a number"),
        ({"timeout": True}, "webhooks.timeout: must be a number"),
        ({"timeout": 0}, "webhooks.timeout: must be at least 0.1"),
        ({"max_batch_size": 0}, "webhooks.max_batch_size: must be at least 1"),
        ({"queue_size": 1.5}, "webhooks.queue_size: must be an integer"),
        ({"retry_for": float("nan")}, "webhooks.retry_for: must be at least 0"),
        ([1], "webhooks: must be a mapping"),
    ],
)
def test_mistakes_name_the_key(section, message):
    with pytest.raises(ConfigError) as info:
        parse(webhooks=section)
    assert str(info.value) == message


def test_per_app_targets_keep_both_forms():
    ipe_form = config.parse(
        {"apps": [{**APP, "webhooks": {"enabled": True, "url": "http://h/hook"}}]}, {}
    )
    assert [t.url for t in ipe_form.apps[0].webhooks] == ["http://h/hook"]
    listed = config.parse(
        {
            "apps": [
                {
                    **APP,
                    "webhooks": [
                        {"url": "http://a/", "event_types": ["member_added"]},
                        {"url": "http://b/", "channel_prefix": "presence-"},
                    ],
                }
            ]
        },
        {},
    )
    assert [(t.url, t.event_types, t.channel_prefix) for t in listed.apps[0].webhooks] == [
        ("http://a/", ("member_added",), ""),
        ("http://b/", config.WEBHOOK_EVENT_TYPES, "presence-"),
    ]
