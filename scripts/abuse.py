"""Abusive clients for scripts/bench-abuse: half-open TCP sockets and a subscribe flood.

    python scripts/abuse.py --port P [--half-open 2000] [--reopen-rate 200]
                            [--flood-rate 1000] [--key K]

Holds `--half-open` TCP connections that never finish a request (half of them send half a
request line), opening a new one (at most `--reopen-rate` per second) whenever the server
closes one; and one WebSocket that subscribes and unsubscribes `--flood-rate` times a second
(0: as fast as it can), reading what comes back. The rates are capped by default because the
abuser shares the benchmark's 2 cores: unbounded, its own CPU would be what slows the others.
Runs until SIGTERM or SIGINT, then prints one JSON line of counts.
"""

from __future__ import annotations

import argparse
import json
import selectors
import signal
import socket
import threading
import time

import websocket

stop = threading.Event()
counts = {"opened": 0, "closed_by_server": 0, "subscribes": 0, "ws_reconnects": 0}


def half_open(port: int, target: int, reopen_rate: float) -> None:
    """Keep `target` connections open that never complete a request."""
    selector = selectors.DefaultSelector()
    budget, last = float(target), time.monotonic()
    n = 0
    while not stop.is_set():
        now = time.monotonic()
        budget = min(float(target), budget + (now - last) * reopen_rate)
        last = now
        while len(selector.get_map()) < target and budget >= 1:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=2)
            except OSError:
                break
            budget -= 1
            n += 1
            if n % 2:
                sock.sendall(b"GET /hea")  # half a request line
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
            counts["opened"] += 1
        for key, _ in selector.select(timeout=0.05):
            sock = key.fileobj
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if not data:
                selector.unregister(sock)
                sock.close()
                counts["closed_by_server"] += 1
    for key in list(selector.get_map().values()):
        key.fileobj.close()


def subscribe_flood(port: int, key: str, rate: float) -> None:
    """One socket subscribing and unsubscribing `rate` times a second; reconnects if closed."""
    url = f"ws://127.0.0.1:{port}/app/{key}?protocol=7&client=js&version=8.6.0"
    while not stop.is_set():
        try:
            ws = websocket.create_connection(url, timeout=5)
        except OSError:
            time.sleep(0.5)
            continue
        counts["ws_reconnects"] += 1
        reader = threading.Thread(target=_drain, args=(ws,), daemon=True)
        reader.start()
        try:
            i = 0
            started = time.monotonic()
            while not stop.is_set():
                if rate and i % 50 == 0:
                    ahead = i / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
                channel = f"flood-{i % 100}"
                ws.send(json.dumps({"event": "pusher:subscribe", "data": {"channel": channel}}))
                ws.send(json.dumps({"event": "pusher:unsubscribe", "data": {"channel": channel}}))
                counts["subscribes"] += 1
                i += 1
        except (OSError, websocket.WebSocketException):
            pass
        finally:
            ws.close()


def _drain(ws: websocket.WebSocket) -> None:
    try:
        while True:
            ws.recv()
    except (OSError, websocket.WebSocketException):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--half-open", type=int, default=2000)
    parser.add_argument("--reopen-rate", type=float, default=200.0)
    parser.add_argument("--flood-rate", type=float, default=1000.0)
    parser.add_argument("--key", default="bench-key")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threads = [
        threading.Thread(target=half_open, args=(args.port, args.half_open, args.reopen_rate)),
        threading.Thread(target=subscribe_flood, args=(args.port, args.key, args.flood_rate)),
    ]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    while not stop.wait(1.0):
        pass
    for thread in threads:
        thread.join(10)
    print(json.dumps({**counts, "seconds": round(time.monotonic() - started, 1)}), flush=True)


if __name__ == "__main__":
    main()
