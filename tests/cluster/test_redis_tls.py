"""Redis over TLS (rediss://): verified against a CA file, or unverified as on Heroku."""

from __future__ import annotations

import shutil

import pytest
from support import ready_status, redis_config, wait_ready, wait_until

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is missing")


def test_nodes_deliver_through_redis_over_tls(make_server, make_redis):
    redis_server = make_redis(start=False)
    cert = redis_server.use_tls()
    redis_server.start()
    url = redis_server.url
    assert url.startswith("rediss://")
    verified = make_server(
        redis_config(), name="verified", env={"REDIS_URL": url, "REDIS_TLS_CA_FILE": str(cert)}
    )
    # Heroku Redis: a certificate nobody can verify, accepted with ssl_cert_reqs=none.
    unverified = make_server(
        redis_config(), name="unverified", env={"REDIS_URL": url + "?ssl_cert_reqs=none"}
    )
    # The system's CAs do not know our certificate: this node must refuse the connection.
    refused = make_server(redis_config(), name="refused", env={"REDIS_URL": url})
    for server in (verified, unverified):
        wait_ready(server)

    client = verified.ws()
    client.subscribe("orders")
    unverified.sdk().trigger("orders", "update", "over TLS")
    assert client.expect("update", "orders")["data"] == "over TLS"
    client.sync()

    wait_until(lambda: "certificate verify failed" in refused.log(), message="a TLS error")
    assert ready_status(refused) == 503
