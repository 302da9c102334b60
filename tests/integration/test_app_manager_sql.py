"""`app_manager: driver: sql`: apps from a table in soketi's layout, read through SQLAlchemy from
a SQLite file and from real PostgreSQL and MariaDB servers started by the tests."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
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


# --- MySQL (MariaDB) --------------------------------------------------------------------------

# soketi's MySQL migration, word for word but for the optional columns it adds later.
SOKETI_MYSQL_TABLE = """
CREATE TABLE IF NOT EXISTS `apps` (
    `id` varchar(255) NOT NULL,
    `key` varchar(255) NOT NULL,
    `secret` varchar(255) NOT NULL,
    `max_connections` integer(10) NOT NULL,
    `enable_client_messages` tinyint(1) NOT NULL,
    `enabled` tinyint(1) NOT NULL,
    `max_backend_events_per_sec` integer(10) NOT NULL,
    `max_client_events_per_sec` integer(10) NOT NULL,
    `max_read_req_per_sec` integer(10) NOT NULL,
    `webhooks` json,
    `max_event_payload_in_kb` integer(10) NULL,
    `enable_user_authentication` tinyint(1) NOT NULL DEFAULT 0,
    PRIMARY KEY (`id`)
)
"""


@pytest.fixture
def mariadb() -> Iterator[str]:
    """A MariaDB server of the test's own (mariadb-install-db + mariadbd as the mysql user, in a
    temp dir, no grant tables: anyone on 127.0.0.1 may connect); its database URL."""
    install = shutil.which("mariadb-install-db")
    server = shutil.which("mariadbd") or (
        "/usr/sbin/mariadbd" if os.path.exists("/usr/sbin/mariadbd") else None
    )
    if install is None or server is None or shutil.which("runuser") is None:
        pytest.skip("MariaDB is not installed (apt-get install mariadb-server)")
    as_mysql = ["runuser", "-u", "mysql", "--"] if os.geteuid() == 0 else []
    workdir = tempfile.mkdtemp(prefix="ipe-mariadb-")
    os.chmod(workdir, 0o755)
    if os.geteuid() == 0:
        shutil.chown(workdir, "mysql", "mysql")
    data = os.path.join(workdir, "data")
    subprocess.run(
        [*as_mysql, install, "--no-defaults", f"--datadir={data}", "--skip-test-db"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = free_port()
    log = open(os.path.join(workdir, "server.log"), "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [
            *as_mysql,
            server,
            "--no-defaults",
            f"--datadir={data}",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            f"--socket={workdir}/mysqld.sock",
            f"--pid-file={workdir}/mysqld.pid",
            "--skip-grant-tables",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=16M",
            "--innodb-flush-log-at-trx-commit=0",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def accepts() -> bool:
        assert proc.poll() is None, open(log.name, errors="replace").read()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False

    try:
        wait_until(accepts, 60, 0.1, "mariadbd to listen")
        import pymysql

        with pymysql.connect(host="127.0.0.1", port=port, user="root") as db, db.cursor() as cur:
            cur.execute("CREATE DATABASE ipe")
        yield f"mysql+pymysql://root@127.0.0.1:{port}/ipe"
    finally:
        proc.terminate()  # runuser passes SIGTERM on and waits for mariadbd to shut down
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def test_a_mysql_table_in_soketis_layout(mariadb: str, make_server: Any) -> None:
    # mariadb first: torn down last, so ipe is stopped before its database goes away.
    import sqlalchemy

    engine = sqlalchemy.create_engine(mariadb)
    with engine.begin() as db:
        db.execute(sqlalchemy.text(SOKETI_MYSQL_TABLE))
        insert = INSERT.replace("INTO apps (id, key,", "INTO apps (id, `key`,")
        db.execute(sqlalchemy.text(insert.replace("%s", ":hooks")), {"hooks": HOOKS})
    server = make_server(config_with(apps=[], app_manager={"driver": "sql", "url": mariadb}))
    _serves_the_row(server)
    with engine.begin() as db:  # a row added later: found by its key (a reserved word there)
        db.execute(
            sqlalchemy.text(
                "INSERT INTO apps (id, `key`, secret, max_connections, enable_client_messages, "
                "enabled, max_backend_events_per_sec, max_client_events_per_sec, "
                "max_read_req_per_sec) VALUES ('5002', 'later', 'ls', 10, 0, 1, 100, 5, 100)"
            )
        )
    assert server.ws(key="later").established is not None
    engine.dispose()
