"""ipe under gunicorn (as the Procfile runs it) stopping on SIGTERM with clients attached.

gunicorn.conf.py's post_worker_init makes the worker's SIGTERM handler close every WebSocket
with 4200 (reconnect at once, elsewhere), and /ready answers 503 from then on, so a load
balancer stops sending new clients; then the worker and the master exit cleanly.
"""

from __future__ import annotations

import http.client
import json
import signal

from support import Gunicorn, config_with, stop_all, wait_ready, wait_until

# Closes may be spread over a drain period (drain_seconds), so allow for the longest.
CLOSE_WITHIN = 40


def test_sigterm_closes_every_client_with_4200_says_503_and_exits_cleanly(tmp_path):
    server = Gunicorn(config_with(), tmp_path, "gunicorn", {"WEB_CONCURRENCY": "1"})
    try:
        server.start()
        wait_ready(server)
        clients = [server.ws() for _ in range(3)]
        clients[0].subscribe("orders")
        clients[1].subscribe_signed(server.sdk(), "presence-room", {"user_id": "1"})
        for client in clients:
            client.sync()
        # A keep-alive HTTP connection made before the signal: gunicorn stops accepting new
        # ones at once, but a balancer's open health-check connection still gets answers.
        probe = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)

        def ready() -> int:
            probe.request("GET", "/ready")
            response = probe.getresponse()
            body = json.loads(response.read())
            assert body["ready"] is (response.status == 200), body
            return response.status

        assert ready() == 200
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: ready() == 503, 10, 0.05, "/ready to answer 503 while draining")
        probe.close()  # an open connection would hold the worker until graceful_timeout

        for client in clients:
            code, _ = client.expect_close(timeout=CLOSE_WITHIN)
            assert code == 4200
        assert server.proc.wait(CLOSE_WITHIN) == 0
        log = server.log()
        assert "Worker exiting" in log and "Shutting down: Master" in log, log
    finally:
        stop_all([server])
