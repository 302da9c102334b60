"""Kept so that `from cluster_support import ...` goes on working: the helpers are in
`support` and the fixtures (make_redis, redis_server, nodes) in tests/conftest.py."""

import pytest
from support import *  # noqa: F403
from support import redis_server as _redis
from support.auth import sign_in as signin  # noqa: F401
from support.server import metric, ready_status, wait_ready  # noqa: F401

FIXTURES = tuple(pytest.fixture(f) for f in (_redis.make_redis, _redis.redis_server, _redis.nodes))
