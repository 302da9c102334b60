"""The Redis settings ipe adds to IPÊ's: TLS CA file, skip-verify, prefix, intervals. Pure."""

from __future__ import annotations

import pytest
from support import BASE_CONFIG

from ipe.config import ConfigError, parse


def redis_of(section=None, env=None):
    raw = dict(BASE_CONFIG)
    if section is not None:
        raw["redis"] = section
    return parse(raw, env or {}).redis


def test_defaults_detect_a_dead_node_within_30_seconds():
    redis = redis_of({"host": "r"})
    assert redis.heartbeat_interval + redis.node_timeout <= 30
    assert (redis.prefix, redis.sharded_pubsub, redis.tls_ca_file) == ("ipe", "auto", "")


def test_heroku_rediss_url_can_skip_verification():
    assert not redis_of(env={"REDIS_URL": "rediss://:pw@h:1?ssl_cert_reqs=none"}).tls_verify
    assert redis_of(env={"REDIS_URL": "rediss://:pw@h:1"}).tls_verify
    redis = redis_of(env={"REDIS_URL": "rediss://h:1", "REDIS_TLS_SKIP_VERIFY": "true"})
    assert redis.tls and not redis.tls_verify


def test_ca_file_turns_tls_on():
    redis = redis_of(env={"REDIS_HOST": "h", "REDIS_TLS_CA_FILE": "/ca.pem"})
    assert redis.tls and redis.tls_verify and redis.tls_ca_file == "/ca.pem"
    assert redis_of({"tls_ca_file": "/x.pem"}).tls


def test_intervals_and_prefix_from_the_file():
    redis = redis_of(
        {
            "url": "redis://h:1/2",
            "prefix": "shop",
            "heartbeat_interval": 0.5,
            "node_timeout": "2",
            "timeout": 1,
            "sharded_pubsub": False,
        }
    )
    assert (redis.host, redis.db, redis.prefix) == ("h", 2, "shop")
    assert (redis.heartbeat_interval, redis.node_timeout, redis.timeout) == (0.5, 2.0, 1.0)
    assert redis.sharded_pubsub == "false"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"prefix": "a{b}"}, "redis.prefix"),
        ({"prefix": ""}, "redis.prefix"),
        ({"heartbeat_interval": 5, "node_timeout": 6}, "redis.node_timeout"),
        ({"sharded_pubsub": "sometimes"}, "redis.sharded_pubsub"),
        ({"cluster": True, "db": 1}, "redis.db"),
        ({"timeout": "soon"}, "redis.timeout: must be a number"),
        ({"url": "redis://h:port"}, "invalid port"),
    ],
)
def test_bad_settings_name_the_key(section, message):
    with pytest.raises(ConfigError, match=message.replace("{", r"\{")):
        redis_of(section)


def test_other_programs_redis_variables_do_not_turn_redis_on():
    # The official redis image exports REDIS_VERSION; Heroku adds REDIS_TLS_URL.
    assert redis_of(env={"REDIS_VERSION": "7.2.4", "REDIS_TLS_URL": "rediss://x:1"}) is None


def test_sentinel_from_the_file_and_from_the_variables():
    redis = redis_of(
        {
            "sentinel": {
                "master": "mymaster",
                "addrs": ["s1:26379", "s2:26380"],
                "password": "pw",
                "sentinel_password": "spw",
            }
        }
    )
    assert redis.sentinel_master == "mymaster"
    assert redis.sentinel_addrs == (("s1", 26379), ("s2", 26380))
    assert (redis.password, redis.sentinel_password) == ("pw", "spw")
    assert "mymaster" in redis.describe() and "spw" not in repr(redis)
    redis = redis_of(
        env={
            "REDIS_SENTINEL_ADDRS": "a:1, b:2",
            "REDIS_SENTINEL_MASTER": "m",
            "REDIS_SENTINEL_PASSWORD": "s",
        }
    )
    assert (redis.sentinel_master, redis.sentinel_addrs) == ("m", (("a", 1), ("b", 2)))
    assert redis.sentinel_password == "s"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"sentinel": {"master": "m"}}, "redis.sentinel.addrs"),
        ({"sentinel": {"addrs": ["a:1"]}}, "redis.sentinel.master"),
        ({"sentinel": {"master": "m", "addrs": ["a:1"], "nope": 1}}, "nope"),
        ({"cluster": True, "sentinel": {"master": "m", "addrs": ["a:1"]}}, "redis.sentinel"),
    ],
)
def test_bad_sentinel_settings_name_the_key(section, message):
    with pytest.raises(ConfigError, match=message):
        redis_of(section)
