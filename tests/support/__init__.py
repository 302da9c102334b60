"""Everything tests share, in one place: import from `support`.

- apps: the test apps (APP_ID, KEY, SECRET, ...), BASE_CONFIG and config_with
- server: ipe and gunicorn processes, free_port, wait_until, metric, /ready
- client: WsClient, the raw WebSocket client
- auth: the one way to sign (the official `pusher` SDK): subscribe, join, sign_in, token
- observe: barriers and readings (settle, roster, subscription_count, after_sweeps)
- redis_server: redis-server processes, redis_config, nodes sharing one Redis
- webhooks: a real webhook receiver that validates with the SDK
- rest: raw signed REST requests, the Python and Node SDKs behind one interface

The fixtures built from these (server, shared_server, make_server, make_redis, redis_server,
nodes, receivers, rest_server) are declared once, in tests/conftest.py.
"""

from support.apps import (
    APP_ID,
    BASE_CONFIG,
    COUNTED_APP_ID,
    COUNTED_KEY,
    COUNTED_SECRET,
    KEY,
    OTHER_APP_ID,
    OTHER_KEY,
    OTHER_SECRET,
    POOL_APPS,
    ROOT,
    SECRET,
    config_with,
    pool_config,
)
from support.auth import (
    channel_auth,
    join,
    presence_auth,
    presence_member,
    private_auth,
    sdk_for,
    sign_in,
    subscribe,
    token,
)
from support.client import ConnectionClosed, WsClient
from support.observe import (
    after_sweeps,
    crosses,
    error_code,
    frames_until_pong,
    occupied,
    rest_users,
    roster,
    settle,
    subscription_count,
    unaffected,
)
from support.redis_server import (
    FAST,
    REDIS_CLI,
    REDIS_SERVER,
    RedisServer,
    free_low_port,
    redis_config,
)
from support.server import (
    SIGNATURE,
    AppServer,
    Gunicorn,
    IpeServer,
    assert_no_traceback,
    free_port,
    metric,
    parse_sample,
    pooled,
    ready_status,
    run_ipe,
    running,
    stop_all,
    wait_ready,
    wait_until,
    within_test,
)
from support.webhooks import Hook, Receiver, Receivers, hook_config

__all__ = [
    "crosses",
    "frames_until_pong",
    "APP_ID",
    "BASE_CONFIG",
    "COUNTED_APP_ID",
    "COUNTED_KEY",
    "COUNTED_SECRET",
    "FAST",
    "KEY",
    "OTHER_APP_ID",
    "OTHER_KEY",
    "OTHER_SECRET",
    "POOL_APPS",
    "REDIS_CLI",
    "REDIS_SERVER",
    "ROOT",
    "SIGNATURE",
    "SECRET",
    "AppServer",
    "ConnectionClosed",
    "Gunicorn",
    "Hook",
    "IpeServer",
    "Receiver",
    "Receivers",
    "RedisServer",
    "WsClient",
    "after_sweeps",
    "error_code",
    "unaffected",
    "assert_no_traceback",
    "channel_auth",
    "config_with",
    "free_low_port",
    "free_port",
    "hook_config",
    "join",
    "metric",
    "occupied",
    "parse_sample",
    "pool_config",
    "pooled",
    "presence_auth",
    "presence_member",
    "private_auth",
    "ready_status",
    "redis_config",
    "rest_users",
    "roster",
    "run_ipe",
    "running",
    "sdk_for",
    "settle",
    "sign_in",
    "stop_all",
    "subscribe",
    "subscription_count",
    "token",
    "wait_ready",
    "wait_until",
    "within_test",
]
