"""pusher-js's HTTP fallbacks over two gunicorn workers sharing one port and a redis-server:
pusher-js's Node build makes every request on a new connection, so the requests of one session
land on either worker, and the worker that does not hold the session routes them through Redis
to the one that does. The pusher-js scenarios of tests/e2e run unchanged over each transport."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import REDIS_SERVER, Gunicorn, RedisServer, ready_status, redis_config, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))
from nodejs import run_scenario  # noqa: E402


@pytest.fixture(scope="module", params=["xhr_streaming", "xhr_polling"])
def workers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gunicorn, dict[str, str]]]:
    """Two gunicorn workers with Redis, and the scenario environment for one transport. The
    session timeout is short for the same reason as in tests/e2e/test_http_transports.py: a
    poller that leaves has no request to abort."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    workdir = tmp_path_factory.mktemp(request.param)
    redis = RedisServer(workdir, "redis").start()
    config = redis_config(redis.url)
    config["http_session_timeout"] = 2
    env = {"WEB_CONCURRENCY": "2", "IPE_LOG_LEVEL": "debug"}
    server = Gunicorn(config, workdir, "gunicorn", env)
    try:
        server.start()
        wait_until(lambda: ready_status(server) == 200, 20, message="/ready")
        env = {"E2E_TRANSPORTS": f'["{request.param}"]'}
        yield server, env

        # The scenarios really went across workers: sends forwarded, and polls relayed (a
        # stream is one request until pusher-js recycles it at 256 KB; test_cluster_http_sessions
        # relays one).
        def crossed() -> bool:
            log = server.log()
            relayed = request.param != "xhr_polling" or "relaying xhr from" in log
            return "forwarding a send to" in log and relayed

        # Which worker accepts a connection is the kernel's pick, and on a loaded machine one
        # worker can take every connection for a while: more sessions (bounded) until both show.
        for _ in range(5):
            if crossed():
                break
            run_scenario(server, "client_events", env=env)
        assert crossed(), "every request of every session on one worker"
    finally:
        server.stop()
        redis.kill()
    assert "Traceback" not in server.log(), server.log()


def test_public_channel_events(workers: tuple[Gunicorn, dict[str, str]]) -> None:
    server, env = workers

    def trigger(data: dict[str, Any]) -> None:
        sdk = server.sdk()
        try:
            assert sdk.trigger(data["channel"], "headline", {"from": "python", "n": 1}) == {}
        finally:
            sdk._pusher_client.http.session.close()

    seen = run_scenario(server, "public", {"trigger": trigger}, env=env)
    assert seen["from_python"] == {"from": "python", "n": 1}
    assert seen["from_node"] == {"from": "node", "tags": ["a", "b"]}


def test_client_events_between_two_clients(workers: tuple[Gunicorn, dict[str, str]]) -> None:
    server, env = workers
    seen = run_scenario(server, "client_events", env=env)
    assert seen["private_received"] == {"on": True}
    assert seen["private_ack"] == {"seen": True}
    assert seen["private_echoed_to_sender"] == 0
    assert seen["presence_received"] == {"to": "bob"}


def test_presence_members_join_and_leave(workers: tuple[Gunicorn, dict[str, str]]) -> None:
    server, env = workers
    seen = run_scenario(server, "presence", env=env, deadline=40.0)
    alice_id = seen["alice_alone"]["me"]["id"]
    bob_id = seen["bob_joined"]["me"]["id"]
    assert seen["bob_joined"]["members"] == {alice_id: {"name": "Alice"}, bob_id: {"name": "Bob"}}
    assert seen["alice_sees_bob_added"] == {"id": bob_id, "info": {"name": "Bob"}}
    assert seen["bob_after_alice_tab2"] == {"added": [], "count": 2}
    assert seen["bob_after_alice_tab1_left"] == {"removed": [], "count": 2}
    assert seen["bob_sees_alice_removed"] == {"id": alice_id, "info": {"name": "Alice"}}
