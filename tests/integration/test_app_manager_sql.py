"""`app_manager: driver: sql`: apps from a table in soketi's layout, read through SQLAlchemy from
a SQLite file and from a real PostgreSQL server started by the test."""

from __future__ import annotations

import glob
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pusher
import pytest
from support import ConnectionClosed, IpeServer, config_with, free_port, wait_until

# soketi's apps table (its MySQL/PostgreSQL migration), with the optional columns.
SOKETI_TABLE = """
CREATE TABLE apps (
    id varchar(255) PRIMARY KEY,
    key varchar(255) NOT NULL,
    secret varchar(255) NOT NULL,
    max_connections integer NOT NULL,
    enable_client_messages smallint NOT NULL,
    enabled smallint NOT NULL,
    max_backend_events_per_sec integer NOT NULL,
    max_client_events_per_sec integer NOT NULL,
    max_read_req_per_sec integer NOT NULL,
    webhooks text,
    max_presence_members_per_channel integer,
    max_presence_member_size_in_kb integer,
    max_channel_name_length integer,
    max_event_channels_at_once integer,
    max_event_name_length integer,
    max_event_payload_in_kb integer,
    max_event_batch_size integer,
    enable_user_authentication smallint
)
"""
INSERT = (
    "INSERT INTO apps (id, key, secret, max_connections, enable_client_messages, enabled, "
    "max_backend_events_per_sec, max_client_events_per_sec, max_read_req_per_sec, webhooks, "
    "max_event_payload_in_kb) VALUES ('5001', 'sk', 'ss', -1, 1, 1, -1, -1, -1, %s, 1)"
)
HOOKS = json.dumps([{"url": "http://127.0.0.1:9/hook", "event_types": ["channel_occupied"]}])


def _sdk(server: IpeServer) -> pusher.Pusher:
    return server.sdk(app_id="5001", key="sk", secret="ss")


def _serves_the_row(server: IpeServer) -> None:
    client = server.ws(key="sk")
    assert client.established is not None, client.first
    client.subscribe("rows")
    assert _sdk(server).trigger("rows", "e", {"n": 1}) == {}
    client.wait_for("e", "rows")
    # max_event_payload_in_kb = 1: 1024 bytes of data at most, as soketi reads the column.
    with pytest.raises(pusher.errors.PusherError, match="413|larger"):
        _sdk(server).trigger("rows", "big", "x" * 2000)


def test_a_sqlite_table_in_soketis_layout(make_server: Any, tmp_path: Path) -> None:
    path = tmp_path / "apps.db"
    with sqlite3.connect(path) as db:
        db.execute(SOKETI_TABLE)
        db.execute(INSERT.replace("%s", "?"), (HOOKS,))
    config = config_with(
        apps=[], app_manager={"driver": "sql", "url": f"sqlite:///{path}", "cache_ttl": 0.3}
    )
    server = make_server(config)
    _serves_the_row(server)
    client = server.ws(key="sk")
    with sqlite3.connect(path) as db:
        db.execute("UPDATE apps SET enabled = 0 WHERE id = '5001'")
    with pytest.raises(ConnectionClosed) as closed:
        client.wait_for("never", timeout=5)
    assert closed.value.code == 4003
    # The table goes away: the apps read last are still served, and it is logged.
    with sqlite3.connect(path) as db:
        db.execute("UPDATE apps SET enabled = 1 WHERE id = '5001'")
    wait_until(lambda: server.ws(key="sk").established is not None, 5, message="enabled again")
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE apps RENAME TO apps_gone")
    wait_until(lambda: "app source sql failed" in server.log(), 5, message="the failure log")
    assert server.ws(key="sk").established is not None


# --- PostgreSQL -------------------------------------------------------------------------------


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@pytest.fixture
def postgres() -> Iterator[str]:
    """A PostgreSQL server of the test's own (initdb + pg_ctl as the postgres user); its URL."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    workdir = tempfile.mkdtemp(prefix="ipe-pg-")
    os.chmod(workdir, 0o755)
    data = os.path.join(workdir, "data")
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres", "postgres")
    port = free_port()
    run = {"check": True, "capture_output": True, "timeout": 120}
    subprocess.run([*as_postgres, initdb, "-D", data, "-U", "ipe", "-A", "trust"], **run)
    log = os.path.join(workdir, "pg.log")
    options = f"-p {port} -h 127.0.0.1 -k {workdir} -c fsync=off"
    start = [*as_postgres, pg_ctl, "-D", data, "-l", log, "-o", options, "-w", "start"]
    subprocess.run(start, **run)
    try:
        yield f"postgresql+pg8000://ipe@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_postgres, pg_ctl, "-D", data, "-m", "immediate", "stop"], **run)
        shutil.rmtree(workdir, ignore_errors=True)


def test_a_postgresql_table_in_soketis_layout(postgres: str, make_server: Any) -> None:
    # postgres first: torn down last, so ipe is stopped before its database goes away.
    import sqlalchemy

    engine = sqlalchemy.create_engine(postgres)
    with engine.begin() as db:
        db.execute(sqlalchemy.text(SOKETI_TABLE))
        db.execute(sqlalchemy.text(INSERT.replace("%s", ":hooks")), {"hooks": HOOKS})
    server = make_server(config_with(apps=[], app_manager={"driver": "sql", "url": postgres}))
    _serves_the_row(server)
    with engine.begin() as db:  # a row added later: found by its key at the first connection
        db.execute(
            sqlalchemy.text(
                "INSERT INTO apps (id, key, secret, max_connections, enable_client_messages, "
                "enabled, max_backend_events_per_sec, max_client_events_per_sec, "
                "max_read_req_per_sec) VALUES ('5002', 'later', 'ls', 10, 0, 1, 100, 5, 100)"
            )
        )
    assert server.ws(key="later").established is not None
    engine.dispose()
