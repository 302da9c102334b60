"""deploy/: the systemd unit passes `systemd-analyze verify`; the Dockerfile, compose file and
load balancer agree with the Procfile, with each other and with the drain's time budget.
(Docker cannot run here: the container files are checked for consistency, not built.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml
from support import ROOT

from ipe import config as ipe_config

DEPLOY = ROOT / "deploy"
SAMPLE = ipe_config.load(str(ROOT / "config.yml.sample"), env={})


def _unit() -> dict[str, list[str]]:
    """deploy/ipe.service as key -> values (a key may repeat)."""
    values: dict[str, list[str]] = {}
    for line in (DEPLOY / "ipe.service").read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_systemd_unit_verifies():
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is missing (scripts/test installs Debian's systemd as root)")
    result = subprocess.run(
        [analyze, "verify", str(DEPLOY / "ipe.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify exits 0 on settings it ignores ("Failed to parse ..., ignoring"): no output at all.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


def test_systemd_unit_runs_as_a_service_should():
    unit = _unit()
    assert unit["User"] == ["ipe"] and unit["Restart"] == ["on-failure"]
    assert int(unit["LimitNOFILE"][0]) >= 65536
    assert unit["KillSignal"] == ["SIGTERM"]
    # systemd must wait for the whole drain before it kills.
    assert int(unit["TimeoutStopSec"][0]) >= SAMPLE.stop_seconds
    for hardening in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "ProtectHome"):
        assert hardening in unit, hardening
    assert "--config" in unit["ExecStart"][0]


def test_dockerfile_runs_the_procfile_command_as_a_user_with_a_healthcheck():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    procfile = (ROOT / "Procfile").read_text().split(":", 1)[1].split()
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert cmd is not None and json.loads(cmd.group(1)) == procfile
    assert re.search(r"^FROM python:3\.1[1-9]-slim", dockerfile, re.M)
    user = re.search(r"^USER (\S+)$", dockerfile, re.M)
    assert user is not None and user.group(1) not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*/health", dockerfile, re.M)


def test_compose_runs_redis_and_two_nodes_behind_the_load_balancer():
    compose = yaml.safe_load((DEPLOY / "compose.yml").read_text())
    services = compose["services"]
    nodes = [name for name, s in services.items() if "build" in s]
    assert len(nodes) >= 2 and "redis" in services
    for name in nodes:
        node = services[name]
        assert node["build"]["dockerfile"] == "deploy/Dockerfile"
        assert node["environment"]["REDIS_URL"].startswith("redis://redis:")
        assert int(node["stop_grace_period"].rstrip("s")) >= SAMPLE.stop_seconds
    haproxy = (DEPLOY / "haproxy.cfg").read_text()
    assert set(re.findall(r"^\s*server \S+ (\w+):8080 check", haproxy, re.M)) == set(nodes)
    assert "option httpchk GET /ready" in haproxy
    assert any("haproxy.cfg" in v for v in services["lb"]["volumes"])
