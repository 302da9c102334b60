"""Barriers and readings across one or more servers: settle, rosters, counts, sweeps, errors."""

from __future__ import annotations

import json
import time
from typing import Any

from support.auth import join, presence_auth
from support.client import WsClient
from support.server import IpeServer, metric, wait_until


def settle(*servers: IpeServer) -> None:
    """Return once every node has handled every message published before (a barrier)."""
    clients = []
    for server in servers:
        client = server.ws()
        client.subscribe("settle")
        clients.append(client)
    servers[0].sdk().trigger("settle", "done", "")
    for client in clients:
        client.expect("done", "settle")
        client.close()


def roster(message: dict[str, Any]) -> dict[str, Any]:
    """The presence hash of a subscription_succeeded message."""
    return json.loads(message["data"])["presence"]  # type: ignore[no-any-return]


def subscription_count(client: WsClient, channel: str, timeout: float | None = None) -> int:
    """The number in the next frame, a `pusher_internal:subscription_count` of `channel`."""
    message = client.expect("pusher_internal:subscription_count", channel, timeout)
    return json.loads(message["data"])["subscription_count"]  # type: ignore[no-any-return]


def rest_users(server: IpeServer, channel: str) -> set[str]:
    """The ids GET /channels/{channel}/users lists."""
    users = server.sdk().users_info(channel)["users"]
    return {u["id"] for u in users}


def occupied(server: IpeServer, channel: str) -> bool:
    return bool(server.sdk().channel_info(channel)["occupied"])


def after_sweeps(*servers: IpeServer) -> None:
    """Return once every server's janitor has completed one more pass (a barrier)."""
    before = [metric(s, "ipe_janitor_sweeps_total") for s in servers]
    for server, count in zip(servers, before, strict=True):
        wait_until(lambda s=server, c=count: metric(s, "ipe_janitor_sweeps_total") > c, 15)


def frames_until_pong(client: WsClient) -> list[dict[str, Any]]:
    """Every frame the server queued for `client` before answering a ping."""
    client.send("pusher:ping", {})
    frames = []
    while (frame := client.recv())["event"] != "pusher:pong":
        frames.append(frame)
    return frames


def crosses(sender: IpeServer, receiver: WsClient, channel: str, deadline: float) -> None:
    """Publish on `sender` until `receiver` (on another node) hears one, before `deadline`
    (time.monotonic()): delivery between nodes is back, e.g. after a Redis failover."""
    i = 0
    while True:
        assert time.monotonic() < deadline, f"no delivery to {channel} by the deadline"
        i += 1
        try:
            sender.sdk().trigger(channel, "probe", {"i": i})
        except Exception:  # noqa: BLE001 - a REST call may fail while Redis fails over
            pass
        try:
            receiver.wait_for("probe", channel, timeout=0.5)
            return
        except Exception:  # noqa: BLE001 - not yet: publish again
            continue


def unaffected(server: IpeServer, bystander: WsClient) -> None:
    """The bystander (the `bystander` fixture) still gets what is published after bad input."""
    server.sdk().trigger("orders", "after", "still here")
    assert bystander.expect("after", "orders")["data"] == "still here"


def error_code(client: WsClient) -> int | None:
    """The code of the next `pusher:error` (whose message must be a non-empty string)."""
    message = client.expect("pusher:error")
    assert isinstance(message["data"]["message"], str) and message["data"]["message"]
    return message["data"]["code"]  # type: ignore[no-any-return]


def members_come_and_go_once(
    watcher: WsClient, server: IpeServer, room: str, ann: WsClient
) -> None:
    """After a fault: "bob" joining `room` on `server`, then `ann` and bob leaving, reach the
    presence member `watcher` once each, in order, and nothing else does."""
    bob = join(server, room, "bob")
    added = watcher.expect("pusher_internal:member_added", room)
    assert json.loads(added["data"]) == {"user_id": "bob"}
    ann.close()
    removed = watcher.expect("pusher_internal:member_removed", room)
    assert json.loads(removed["data"]) == {"user_id": "ann"}
    bob.close()
    removed = watcher.expect("pusher_internal:member_removed", room)
    assert json.loads(removed["data"]) == {"user_id": "bob"}
    assert frames_until_pong(watcher) == []


def joins_at_once_heard_once(a: IpeServer, b: IpeServer, room: str, count: int = 40) -> None:
    """`count` members subscribe to presence `room` back to back, alternately on `a` and `b`:
    every socket hears of every other member exactly once (in its roster or a member_added
    after it), and both nodes' REST answers agree."""
    members = [f"u{i}" for i in range(count)]
    clients = [((a, b)[i % 2].ws(), user) for i, user in enumerate(members)]
    for client, user in clients:  # back to back: each node has many joins under way at once
        assert client.socket_id is not None
        auth, data = presence_auth(client.socket_id, room, user)
        client.send("pusher:subscribe", {"channel": room, "auth": auth, "channel_data": data})
    for client, user in clients:
        known: set[str] | None = None
        while known is None or len(known) < len(members):
            message = client.recv()
            if message["event"] == "pusher_internal:subscription_succeeded":
                known = set(roster(message)["hash"])
                assert user in known
            elif message["event"] == "pusher_internal:member_added":
                added = json.loads(message["data"])["user_id"]
                assert known is not None, f"{user} heard of {added} before its roster"
                assert added not in known, f"{user} was told about {added} twice"
                known.add(added)
    settle(a, b)  # every member event published is delivered everywhere by now
    for client, _user in clients:
        client.sync()  # nothing more: no member event twice
    for server in (a, b):
        assert rest_users(server, room) == set(members)
        info = server.sdk().channel_info(room, ["subscription_count"])
        assert info["subscription_count"] == count
