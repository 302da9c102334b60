"""Config loading: IPÊ's YAML format, ipe's additions, and one clear line for every mistake."""

from __future__ import annotations

import re
from typing import Any

import pytest

from ipe import config
from ipe.config import ConfigError, Limits, WebhookTarget


def app(**overrides: Any) -> dict[str, Any]:
    """One valid app entry."""
    return {"app_id": "1", "key": "k", "secret": "s", **overrides}


def parse(raw: Any = None, env: dict[str, str] | None = None, **top: Any) -> config.Config:
    """Parse `raw` (default: one valid app plus `top`) with an explicit, empty-by-default env."""
    if raw is None:
        raw = {"apps": [app()], **top}
    return config.parse(raw, env or {})


def fails(message: str, raw: Any = None, env: dict[str, str] | None = None, **top: Any) -> None:
    """Parsing fails with a ConfigError whose one-line message matches `message`."""
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        parse(raw, env, **top)
    assert "\n" not in str(info.value)


# --- the minimal file and defaults --------------------------------------------------------------


def test_minimal_config_gets_pushers_defaults():
    cfg = parse()
    (only,) = cfg.apps
    assert (only.app_id, only.key, only.secret) == ("1", "k", "s")
    assert only.enabled and not only.only_ssl and only.user_events
    assert not only.subscription_count  # off by default, as Pusher's toggle
    assert only.webhooks == ()
    assert only.limits == Limits()
    assert (cfg.host, cfg.port) == ("", 8080)
    assert cfg.redis is None
    assert cfg.activity_timeout > 0 and cfg.pong_timeout > 0


def test_pushers_default_limits():
    limits = Limits()
    assert limits.max_message_size == 10240
    assert limits.max_presence_members == 100
    assert limits.max_user_info_size == 1024
    assert limits.max_channel_name_length == 200
    assert limits.client_events_per_second == 10
    assert limits.max_watchlist_size == 100


def test_ipe_format_is_read_unchanged():
    cfg = parse(
        {
            "host": ":8080",
            "profiling": False,
            "ssl": {"enabled": False, "host": ":4433", "key_file": "", "cert_file": ""},
            "apps": [
                {
                    "name": "Sample Application",
                    "enabled": True,
                    "only_ssl": True,
                    "key": "app-key",
                    "secret": "app-secret",
                    "app_id": "1",
                    "user_events": False,
                    "webhooks": {"enabled": True, "url": "http://127.0.0.1:5000/hook"},
                }
            ],
        }
    )
    (only,) = cfg.apps
    assert only.name == "Sample Application"
    assert only.only_ssl and not only.user_events
    assert only.webhooks == (WebhookTarget(url="http://127.0.0.1:5000/hook"),)


def test_subscription_counting_is_a_per_app_switch():
    on, off = parse({"apps": [app(subscription_count="yes"), app(app_id="2", key="k2")]}).apps
    assert on.subscription_count is True and off.subscription_count is False
    (only,) = parse(
        {"apps": [app(webhooks=[{"url": "u", "event_types": ["subscription_count"]}])]}
    ).apps
    assert only.webhooks[0].event_types == ("subscription_count",)


def test_numeric_values_become_strings_where_strings_are_expected():
    (only,) = parse({"apps": [app(app_id=1001, key=123)]}).apps
    assert (only.app_id, only.key) == ("1001", "123")


def test_secret_is_hidden_from_repr():
    assert "s3cr3t" not in repr(parse({"apps": [app(secret="s3cr3t")]}))


def test_apps_are_found_by_key_and_by_id():
    cfg = parse({"apps": [app(), app(app_id="2", key="k2")]})
    assert cfg.app_by_key("k2").app_id == "2"
    assert cfg.app_by_id("1").key == "k"
    assert cfg.app_by_key("nope") is None and cfg.app_by_id("nope") is None


def test_load_reads_a_yaml_file(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text('host: "127.0.0.1:9000"\napps:\n  - {app_id: "1", key: k, secret: s}\n')
    cfg = config.load(str(path), env={})
    assert (cfg.host, cfg.port) == ("127.0.0.1", 9000)


def test_load_names_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(str(tmp_path / "absent.yml"), env={})


def test_load_names_invalid_yaml(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("apps: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        config.load(str(path), env={})


# --- host ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (":8080", ("", 8080)),
        ("0.0.0.0:9000", ("0.0.0.0", 9000)),
        ("7000", ("", 7000)),
        ("[::1]:8081", ("::1", 8081)),
    ],
)
def test_host_is_host_and_port(value, expected):
    cfg = parse(host=value)
    assert (cfg.host, cfg.port) == expected


@pytest.mark.parametrize("value", ["localhost", ":http", ":0", ":70000"])
def test_bad_host_fails_naming_host(value):
    fails("host:", host=value)


# --- unknown and missing keys -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"apps": [app()], "hots": ":80"}, "hots: unknown key"),
        ({"apps": [app(secert="x")]}, "apps[0].secert: unknown key"),
        ({"apps": [app(limits={"max_members": 5})]}, "apps[0].limits.max_members: unknown key"),
        ({"apps": [app()], "limits": {"nope": 1}}, "limits.nope: unknown key"),
        ({"apps": [app()], "ssl": {"enabled": False, "port": 1}}, "ssl.port: unknown key"),
        (
            {"apps": [app(webhooks={"enabled": True, "url": "u", "x": 1})]},
            "apps[0].webhooks.x: unknown key",
        ),
        (
            {"apps": [app(webhooks=[{"url": "u", "filter": "x"}])]},
            "apps[0].webhooks[0].filter: unknown key",
        ),
        ({"apps": [app()], "redis": {"hots": "x"}}, "redis.hots: unknown key"),
    ],
)
def test_unknown_key_fails_naming_it(raw, message):
    fails(message, raw)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "apps: missing required key"),
        (None, "apps: missing required key"),
        ({"apps": []}, "apps: must be a non-empty list"),
        ({"apps": {"app_id": "1"}}, "apps: must be a non-empty list"),
        ({"apps": [{"key": "k", "secret": "s"}]}, "apps[0].app_id: missing required key"),
        ({"apps": [app(), {"app_id": "2", "secret": "s"}]}, "apps[1].key: missing required key"),
        ({"apps": [{"app_id": "1", "key": "k"}]}, "apps[0].secret: missing required key"),
        ({"apps": [app(secret="")]}, "apps[0].secret: must not be empty"),
        (
            {"apps": [app(webhooks=[{"event_types": ["cache_miss"]}])]},
            "apps[0].webhooks[0].url: missing required key",
        ),
    ],
)
def test_missing_required_key_fails_naming_it(raw, message):
    if raw is None:
        with pytest.raises(ConfigError, match=re.escape(message)):
            config.parse(None, {})
        return
    fails(message, raw)


# --- wrong types --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"apps": [app(enabled="maybe")]}, "apps[0].enabled: must be true or false"),
        ({"apps": [app(only_ssl=1)]}, "apps[0].only_ssl: must be true or false"),
        (
            {"apps": [app(subscription_count="sometimes")]},
            "apps[0].subscription_count: must be true or false",
        ),
        ({"apps": [app(key=["k"])]}, "apps[0].key: must be a string"),
        ({"apps": [app(secret=True)]}, "apps[0].secret: must be a string"),
        ({"apps": [app()], "activity_timeout": "soon"}, "activity_timeout: must be an integer"),
        ({"apps": [app()], "activity_timeout": True}, "activity_timeout: must be an integer"),
        ({"apps": [app()], "activity_timeout": 1.5}, "activity_timeout: must be an integer"),
        ({"apps": [app()], "activity_timeout": 0}, "activity_timeout: must be at least 1"),
        ({"apps": [app()], "pong_timeout": -1}, "pong_timeout: must be at least 1"),
        ({"apps": [app()], "max_outbox_bytes": 10}, "max_outbox_bytes: must be at least 1024"),
        (
            {"apps": [app(limits={"max_message_size": 0})]},
            "apps[0].limits.max_message_size: must be at least 1",
        ),
        ({"apps": [app(limits=[1])]}, "apps[0].limits: must be a mapping"),
        ({"apps": [app()], "ssl": "on"}, "ssl: must be a mapping"),
        ({"apps": ["app"]}, "apps[0]: must be a mapping"),
        ({"apps": [app(webhooks="http://x")]}, "apps[0].webhooks: must be a mapping"),
        (
            {"apps": [app(webhooks=[{"url": "u", "event_types": ["everything"]}])]},
            "apps[0].webhooks[0].event_types: unknown event type",
        ),
        (
            {"apps": [app(webhooks=[{"url": "u", "event_types": []}])]},
            "apps[0].webhooks[0].event_types: must be a non-empty list",
        ),
        (
            {"apps": [app(webhooks=[{"url": "u", "headers": ["a"]}])]},
            "apps[0].webhooks[0].headers: must be a mapping",
        ),
        ({"apps": [app()], "redis": {"port": "six"}}, "redis.port: must be an integer"),
        ({"apps": [app()], "redis": {"addrs": 5}}, "redis.addrs: must be a list"),
    ],
)
def test_wrong_type_fails_naming_the_key(raw, message):
    fails(message, raw)


@pytest.mark.parametrize(
    ("text", "value"), [("true", True), ("Yes", True), ("off", False), ("0", False)]
)
def test_booleans_may_be_strings_from_the_environment(text, value):
    (only,) = parse({"apps": [app(enabled="${FLAG}")]}, env={"FLAG": text}).apps
    assert only.enabled is value


def test_integers_may_be_strings_from_the_environment():
    cfg = parse({"apps": [app()], "activity_timeout": "${T}"}, env={"T": " 45 "})
    assert cfg.activity_timeout == 45


def test_webhook_headers_cannot_override_the_signature():
    fails(
        "X-Pusher-Signature is set by ipe",
        {"apps": [app(webhooks=[{"url": "u", "headers": {"X-Pusher-Signature": "x"}}])]},
    )


def test_ssl_enabled_needs_its_files():
    fails("ssl.cert_file: required", {"apps": [app()], "ssl": {"enabled": True, "key_file": "k"}})


# --- duplicates ---------------------------------------------------------------------------------


def test_duplicate_app_id_fails_naming_the_second():
    fails("apps[1].app_id: duplicate value '1'", {"apps": [app(), app(key="k2")]})


def test_duplicate_key_fails_naming_the_second():
    fails(
        "apps[2].key: duplicate value 'k'",
        {"apps": [app(), app(app_id="2", key="k2"), app(app_id="3")]},
    )


# --- ${VAR} expansion ---------------------------------------------------------------------------


def test_variables_expand_inside_string_values():
    cfg = parse(
        {"host": "${HOST}:${PORT}", "apps": [app(key="${KEY}", secret="pre-${S}-post")]},
        env={"HOST": "127.0.0.1", "PORT": "9001", "KEY": "from-env", "S": "x"},
    )
    assert (cfg.host, cfg.port) == ("127.0.0.1", 9001)
    assert (cfg.apps[0].key, cfg.apps[0].secret) == ("from-env", "pre-x-post")


def test_unset_variable_fails_naming_key_and_variable():
    fails(
        "apps[0].secret: environment variable APP_SECRET is not set",
        {"apps": [app(secret="${APP_SECRET}")]},
    )


def test_default_applies_only_when_the_variable_is_unset():
    raw = {"apps": [app(key="${KEY:-fallback}", secret="${S:-}x")]}
    assert parse(raw).apps[0].key == "fallback"
    assert parse(raw).apps[0].secret == "x"  # an empty default is a default
    assert parse(raw, env={"KEY": "set", "S": ""}).apps[0].key == "set"


def test_dollar_signs_that_are_not_variables_stay_as_written():
    (only,) = parse({"apps": [app(secret="pa$$word$HOME${")]}, env={"HOME": "/root"}).apps
    assert only.secret == "pa$$word$HOME${"


def test_expanded_values_are_not_expanded_again():
    (only,) = parse({"apps": [app(secret="${A}")]}, env={"A": "${B}", "B": "no"}).apps
    assert only.secret == "${B}"


def test_variables_expand_in_lists_of_webhooks():
    (only,) = parse(
        {"apps": [app(webhooks=[{"url": "${HOOK}", "headers": {"Authorization": "Bearer ${T}"}}])]},
        env={"HOOK": "http://h/x", "T": "tok"},
    ).apps
    assert only.webhooks[0].url == "http://h/x"
    assert only.webhooks[0].headers == (("Authorization", "Bearer tok"),)


def test_unset_variable_in_a_list_names_its_index():
    fails(
        "apps[0].webhooks[1].url: environment variable NOPE is not set",
        {"apps": [app(webhooks=[{"url": "a"}, {"url": "${NOPE}"}])]},
    )


# --- limits -------------------------------------------------------------------------------------


def test_top_level_limits_apply_to_every_app_and_apps_override_single_keys():
    cfg = parse(
        {
            "limits": {"max_presence_members": 7, "client_events_per_second": 3},
            "apps": [app(), app(app_id="2", key="k2", limits={"max_presence_members": 1000})],
        }
    )
    first, second = cfg.apps
    assert first.limits.max_presence_members == 7
    assert first.limits.client_events_per_second == 3
    assert second.limits.max_presence_members == 1000
    assert second.limits.client_events_per_second == 3  # inherited
    assert second.limits.max_message_size == Limits().max_message_size  # Pusher's default


# --- webhooks -----------------------------------------------------------------------------------


def test_ipe_webhook_form_disabled_means_no_targets():
    (only,) = parse({"apps": [app(webhooks={"enabled": False, "url": "http://x"})]}).apps
    assert only.webhooks == ()


def test_ipe_webhook_form_enabled_needs_a_url():
    fails("apps[0].webhooks.url: missing required key", {"apps": [app(webhooks={"enabled": True})]})


def test_list_webhook_form_with_filters():
    (only,) = parse(
        {
            "apps": [
                app(
                    webhooks=[
                        {"url": "http://a"},
                        {
                            "url": "http://b",
                            "event_types": "member_added",
                            "channel_prefix": "presence-",
                        },
                    ]
                )
            ]
        }
    ).apps
    first, second = only.webhooks
    assert first == WebhookTarget(url="http://a")
    assert "cache_miss" in first.event_types and first.channel_prefix == ""
    assert "subscription_count" in first.event_types
    assert second.event_types == ("member_added",)
    assert second.channel_prefix == "presence-"


# --- redis --------------------------------------------------------------------------------------


def test_no_redis_section_and_no_variables_means_one_process():
    assert parse().redis is None


def test_redis_section_alone_turns_redis_on():
    redis = parse(redis={"host": "cache", "port": 6380, "prefix": "p"}).redis
    assert (redis.host, redis.port, redis.prefix, redis.tls) == ("cache", 6380, "p", False)


def test_redis_url_with_tls_credentials_and_database():
    redis = parse(redis={"url": "rediss://user:p%40ss@cache.example:6380/2"}).redis
    assert (redis.host, redis.port, redis.db) == ("cache.example", 6380, 2)
    assert (redis.username, redis.password) == ("user", "p@ss")
    assert redis.tls and redis.tls_verify


def test_redis_url_defaults():
    redis = parse(env={"REDIS_URL": "redis://h"}).redis
    assert (redis.host, redis.port, redis.db, redis.tls) == ("h", 6379, 0, False)
    assert redis.password is None and redis.username is None


def test_redis_url_password_without_user():
    redis = parse(env={"REDIS_URL": "rediss://:secret@h:1234"}).redis
    assert (redis.username, redis.password, redis.tls) == (None, "secret", True)


def test_redis_url_variable_wins_over_the_file():
    redis = parse(
        redis={"url": "redis://file:1/1", "prefix": "kept"}, env={"REDIS_URL": "rediss://env:2/3"}
    ).redis
    assert (redis.host, redis.port, redis.db, redis.tls, redis.prefix) == (
        "env",
        2,
        3,
        True,
        "kept",
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h:1", "expected a redis:// or rediss:// URL"),
        ("redis://h:1/zero", "database in the URL must be a number"),
    ],
)
def test_bad_redis_url_fails(url, message):
    fails(f"REDIS_URL: {message}", env={"REDIS_URL": url})
    fails(f"redis.url: {message}", redis={"url": url})


def test_ipe_redis_variables():
    redis = parse(
        env={
            "REDIS_HOST": "r1",
            "REDIS_PORT": "7000",
            "REDIS_PASSWORD": "pw",
            "REDIS_DB": "4",
            "REDIS_TLS_ENABLED": "true",
            "REDIS_TLS_SKIP_VERIFY": "true",
            "REDIS_PREFIX": "x",
        }
    ).redis
    assert (redis.host, redis.port, redis.password, redis.db, redis.prefix) == (
        "r1",
        7000,
        "pw",
        4,
        "x",
    )
    assert redis.tls and not redis.tls_verify


def test_redis_cluster_addresses():
    redis = parse(env={"REDIS_CLUSTER_MODE": "true", "REDIS_ADDRS": "a:7000, b:7001"}).redis
    assert redis.cluster
    assert redis.addrs == (("a", 7000), ("b", 7001))


def test_redis_cluster_without_addresses_uses_host_and_port():
    redis = parse(redis={"cluster": True, "host": "c", "port": 7005}).redis
    assert redis.addrs == (("c", 7005),)


def test_bad_redis_variable_fails_naming_it():
    fails("REDIS_PORT: must be an integer", env={"REDIS_PORT": "six"})


def test_empty_redis_variables_are_ignored():
    assert parse(env={"REDIS_HOST": "", "REDIS_URL": ""}).redis is None


def test_other_programs_redis_variables_neither_fail_nor_turn_redis_on():
    # The official redis image exports REDIS_VERSION; Heroku adds REDIS_TLS_URL.
    env = {"REDIS_VERSION": "7.2.4", "REDIS_DOWNLOAD_SHA": "abc"}
    assert parse(env=env).redis is None


# --- other top-level keys -----------------------------------------------------------------------


def test_log_level_and_instance_id_come_from_the_file_or_environment():
    assert parse(env={"IPE_LOG_LEVEL": "DEBUG", "IPE_INSTANCE_ID": "n1"}).log_level == "debug"
    assert parse(env={"IPE_INSTANCE_ID": "n1"}).instance_id == "n1"
    assert parse(log_level="WARNING").log_level == "warning"


def test_sample_config_is_valid():
    cfg = config.load(str(config.__file__).replace("ipe/config.py", "config.yml.sample"), env={})
    assert cfg.apps and cfg.apps[0].key == "app-key"


def test_drain_seconds_default_and_the_stop_budget_it_sets():
    assert parse().drain_seconds == 10
    cfg = parse(drain_seconds=2, webhooks={"flush_timeout": 1})
    # gunicorn's graceful_timeout: drain, last closing handshakes (3 s), flush, margin (2 s).
    assert cfg.stop_seconds == 2 + 3 + 1 + 2
    fails("drain_seconds: must be at least 0", drain_seconds=-1)


def test_log_format_comes_from_the_file_or_environment():
    assert parse().log_format == "text"
    assert parse(log_format="JSON").log_format == "json"
    assert parse(env={"IPE_LOG_FORMAT": "json"}, log_format="text").log_format == "json"
    fails("log_format: must be text or json", log_format="xml")
    fails("IPE_LOG_FORMAT: must be text or json", env={"IPE_LOG_FORMAT": "yaml"})
