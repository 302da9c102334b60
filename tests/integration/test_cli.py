"""The `ipe` command line: config errors, --check-config, -config and $PORT.

Each case runs `python -m ipe` as a deployment would; a config error must be one line on
stderr that names the key, with exit status 2, and never a traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import ROOT, IpeServer, config_with, free_port, run_ipe, stop_all

APP = {"app_id": "77", "key": "cli-key", "secret": "cli-secret"}


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "ipe.yml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("text", "message", "check"),
    [
        (
            "activity_timeout: soon\napps: [{app_id: '1', key: k, secret: s}]\n",
            "activity_timeout: must be an integer",
            False,
        ),
        (
            "apps: [{app_id: '1', key: k, secret: s, colour: red}]\n",
            "apps[0].colour: unknown key",
            True,
        ),
        ("apps: [{app_id: '1', key: k}]\n", "apps[0].secret: missing required key", False),
        (
            "redis: {url: 'http://127.0.0.1:1'}\napps: [{app_id: '1', key: k, secret: s}]\n",
            "redis.url: expected a redis:// or rediss:// URL",
            True,
        ),
        ("apps: []\n", "apps: must be a non-empty list", False),
        # Not a key: the file itself. Still one line, with where the YAML broke.
        ("apps:\n  - app_id: '1'\n    key: [unclosed\n", "invalid YAML at line 4, column 1", True),
    ],
    ids=["integer", "unknown-key", "missing-key", "redis-url", "no-apps", "yaml"],
)
def test_a_config_error_is_one_line_naming_the_key_and_exit_status_2(
    tmp_path, text, message, check
):
    path = write(tmp_path, text)
    # Serving and --check-config (`check`) load the config alike: the cases take both paths.
    done = run_ipe("--config", path, "--port", str(free_port()), *(["--check-config"] * check))
    assert done.returncode == 2, done
    assert done.stdout == ""
    assert done.stderr.endswith("\n") and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("ipe: config error: "), done.stderr
    assert message in done.stderr, done.stderr


def test_a_missing_config_file_is_one_line_and_exit_status_2(tmp_path):
    done = run_ipe("--config", str(tmp_path / "absent.yml"))
    assert done.returncode == 2
    assert done.stderr == f"ipe: config error: {tmp_path / 'absent.yml'}: cannot read " + (
        "(No such file or directory)\n"
    )


def test_check_config_validates_prints_a_summary_and_exits(tmp_path):
    path = write(tmp_path, yaml.safe_dump({"host": "127.0.0.1:8080", "apps": [APP]}))
    done = run_ipe("--check-config", "--config", path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"{path}: OK"
    assert lines[1].endswith("listening on http://127.0.0.1:8080")
    assert any("app_id=77 key=cli-key" in line for line in lines), done.stdout
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("env", "args", "port"),
    [
        ({}, [], 8080),  # the config's host: port
        ({"PORT": "9123"}, [], 9123),  # $PORT (Heroku) beats the config
        ({"PORT": "9123"}, ["--port", "9124"], 9124),  # --port beats $PORT
    ],
)
def test_port_comes_from_the_flag_then_PORT_then_the_config(tmp_path, env, args, port):  # noqa: N802
    path = write(tmp_path, yaml.safe_dump({"host": "127.0.0.1:8080", "apps": [APP]}))
    done = run_ipe("-config", path, "--check-config", *args, env=env)
    assert done.returncode == 0, done.stderr
    assert f"listening on http://127.0.0.1:{port}\n" in done.stdout


class PlainIpe(IpeServer):
    """`python -m ipe -config FILE` with the port in $PORT, as a Heroku-style deploy runs it."""

    def spawn(self) -> None:
        self.env["PORT"] = str(self.port)
        self.env.pop("IPE_CONFIG", None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ipe", "-config", str(self.config_path)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )


def test_dash_config_and_PORT_choose_what_is_served(tmp_path):  # noqa: N802
    # The config's own port (8080) is not what gets served: $PORT is.
    config = config_with(apps=[APP])
    server = PlainIpe(config, tmp_path, "plain")
    server.key, server.app_id, server.secret = APP["key"], APP["app_id"], APP["secret"]
    try:
        server.start()
        client = server.ws()  # the key exists only in the file given with -config
        assert client.socket_id is not None
        client.subscribe("orders")
        assert server.sdk().trigger("orders", "hello", "1") == {}
        assert client.expect("hello", "orders")["data"] == "1"
        assert f"serving {tmp_path / 'plain.yml'}" in server.log()
    finally:
        stop_all([server])
