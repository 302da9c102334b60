"""The fixtures every test may use, declared once. The helpers behind them live in `support`
(tests/support/); import those from there.

Nothing here mocks ipe: every integration test talks to `python -m ipe` (or gunicorn) over
real sockets, with real redis-server processes and the official SDKs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import (  # noqa: F401 (older tests import these from conftest)
    APP_ID,
    BASE_CONFIG,
    KEY,
    POOL_APPS,
    ROOT,
    SECRET,
    SIGNATURE,
    AppServer,
    ConnectionClosed,
    Gunicorn,
    IpeServer,
    Receivers,
    WsClient,
    config_with,
    free_port,
    parse_sample,
    pooled,
    running,
    stop_all,
    wait_until,
    within_test,
)
from support import redis_server as _redis
from support import rest as _rest


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., IpeServer]]:
    """Start ipe processes with a given config; stops them and checks their logs afterwards."""
    servers: list[IpeServer] = []

    def make(
        config: dict[str, Any] | None = None,
        start: bool = True,
        name: str | None = None,
        env: dict[str, str] | None = None,
        launcher: type[IpeServer] = IpeServer,
    ) -> IpeServer:
        server = launcher(config or config_with(), tmp_path, name or f"ipe{len(servers)}", env)
        servers.append(server)
        return server.start() if start else server

    yield make
    stop_all(servers)


@pytest.fixture
def server(make_server: Callable[..., IpeServer]) -> IpeServer:
    """One ipe process with BASE_CONFIG, for this test alone."""
    return make_server()


@pytest.fixture
def bystander(server: IpeServer) -> WsClient:
    """Another client of the test's `server`, subscribed to `orders` (see support.unaffected)."""
    client = server.ws()
    client.subscribe("orders")
    return client


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IpeServer]:
    """One BASE_CONFIG process for every test of a module; use it through `shared_server`."""
    with running(tmp_path_factory.mktemp("shared"), name="shared") as server:
        yield server


@pytest.fixture
def shared_server(module_server: IpeServer) -> Iterator[IpeServer]:
    """One BASE_CONFIG process for every test of a module (saves a start per test).

    For tests whose outcome does not depend on what earlier tests left behind: each test uses
    channel names and user ids of its own. The test's clients are closed afterwards, and a
    traceback logged during the test fails that test.
    """
    with within_test(module_server) as server:
        yield server


@pytest.fixture(scope="module")
def pool_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IpeServer]:
    """One process with BASE_CONFIG plus POOL_APPS for a module; use it through `app_server`."""
    with pooled(tmp_path_factory.mktemp("pool")) as server:
        yield server


@pytest.fixture
def app_server(pool_server: IpeServer) -> Iterator[AppServer]:
    """An app of its own on a server shared by the module: as good as a fresh server for a test
    whose state is per app (channels, members, users, counts), without the start.

    Not for tests of process-wide things (metrics, logs of other tests, connection limits).
    The test's clients are closed afterwards; a traceback logged meanwhile fails the test.
    """
    if not pool_server.free_apps:  # type: ignore[attr-defined]
        pytest.fail(f"more than {len(POOL_APPS)} tests in one module use app_server")
    app = pool_server.free_apps.pop(0)  # type: ignore[attr-defined]
    with within_test(pool_server):
        yield AppServer(pool_server, app)


make_redis = pytest.fixture(_redis.make_redis)
redis_server = pytest.fixture(_redis.redis_server)
nodes = pytest.fixture(_redis.nodes)
rest_server = pytest.fixture(scope="module")(_rest.rest_server)


@pytest.fixture
def receivers() -> Iterator[Receivers]:
    """Make webhook receivers (`receivers()` -> a listening Receiver); all closed afterwards."""
    made = Receivers()
    yield made
    made.close()
