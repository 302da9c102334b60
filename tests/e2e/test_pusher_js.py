"""End to end: pusher-js 8.6.0 and Laravel Echo 2.5.0 under Node against a real ipe process.

Each test runs one scenario (tests/e2e/scenarios/NAME.js) once and asserts on what it observed;
the scenario itself fails on any wait that times out. One ipe serves the whole module: every
scenario uses channel and user names of its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import IpeServer
from nodejs import run_scenario, shared_server


@pytest.fixture(scope="module")
def ipe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IpeServer]:
    with shared_server(tmp_path_factory.mktemp("e2e")) as server:
        yield server


def test_scenario_runner_reports_failures(ipe: IpeServer) -> None:
    """The harness itself: a scenario that waits for nothing fails with its reason."""
    with pytest.raises(pytest.fail.Exception, match="timed out after 200 ms waiting for"):
        run_scenario(ipe, "selftest_timeout", wait_ms=200)
