"""A proxy that refuses the WebSocket upgrade sits between pusher-js and ipe: pusher-js, with
its default transports, falls back to HTTP by itself and receives events."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from nodejs import run_scenario
from support import IpeServer

FORBIDDEN = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class RefusingProxy:
    """A TCP proxy to ipe that answers 403 to any request asking for a WebSocket upgrade,
    as some corporate proxies do; everything else is passed through."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.refused = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = client.recv(65536)
            if not data:
                client.close()
                return
            head += data
        if b"upgrade: websocket" in head.lower():
            self.refused += 1
            client.sendall(FORBIDDEN)
            client.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.upstream))
        upstream.sendall(head)
        back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
        back.start()
        _pipe(client, upstream)
        back.join(30)
        client.close()
        upstream.close()

    def close(self) -> None:
        self.listener.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        # Either side ending ends both directions (the sockets are closed by _serve).
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def proxy(server: IpeServer) -> Iterator[RefusingProxy]:
    made = RefusingProxy(server.port)
    yield made
    made.close()


def test_pusher_js_falls_back_to_http_behind_a_proxy(server: IpeServer, proxy: Any) -> None:
    def trigger(data: dict[str, Any]) -> None:
        assert server.sdk().trigger(data["channel"], "news", {"via": "proxy"}) == {}

    seen = run_scenario(
        server, "fallback", {"trigger": trigger}, env={"PROXY_PORT": str(proxy.port)}, wait_ms=15000
    )
    assert proxy.refused >= 1  # pusher-js tried the WebSocket first
    assert seen["transport"] in ("xhr_streaming", "xhr_polling")
    assert seen["news"] == {"via": "proxy"}
