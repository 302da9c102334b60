"""cache_ttl: a cache channel's last event is replayed to new subscribers until it expires,
then they get pusher:cache_miss; with Redis the event is shared by every node and its key
expires in Redis too (nothing is left behind)."""

from __future__ import annotations

from support import IpeServer, config_with, redis_config, wait_ready, wait_until

TTL = {"cache_ttl": 1}  # seconds; the smallest the config takes
CHANNEL = "cache-prices"


def first_frame_after_subscribing(server: IpeServer) -> dict:
    """What a new subscriber to CHANNEL gets right after its subscription_succeeded."""
    client = server.ws()
    assert client.subscribe(CHANNEL)["event"] == "pusher_internal:subscription_succeeded"
    frame = client.recv()
    client.close()
    return frame


def replayed(server: IpeServer) -> bool:
    frame = first_frame_after_subscribing(server)
    if frame["event"] == "pusher:cache_miss":
        return False
    assert frame == {"event": "last", "channel": CHANNEL, "data": "2"}, frame
    return True


def test_the_cached_event_expires_after_cache_ttl(make_server):
    server = make_server(config_with(limits=TTL))
    server.sdk().trigger(CHANNEL, "first", "1")
    server.sdk().trigger(CHANNEL, "last", "2")
    assert replayed(server)  # cached...
    # ...until cache_ttl has passed (polled with new subscribers, bounded).
    wait_until(lambda: not replayed(server), 15, 0.2, "the cached event to expire")
    assert first_frame_after_subscribing(server)["event"] == "pusher:cache_miss"


def test_with_redis_every_node_replays_it_until_it_expires_in_redis(make_server, redis_server):
    config = redis_config(redis_server.url)
    config["limits"] = TTL
    a, b = make_server(config, name="a"), make_server(config, name="b")
    for node in (a, b):
        wait_ready(node)
    a.sdk().trigger(CHANNEL, "first", "1")
    a.sdk().trigger(CHANNEL, "last", "2")
    redis = redis_server.client()
    assert list(redis.scan_iter(match=f"*cache:{CHANNEL}")), "the event is kept in Redis"
    assert replayed(b)  # b never saw the publish: its replay comes from Redis
    wait_until(
        lambda: not list(redis.scan_iter(match=f"*cache:{CHANNEL}")), 15, 0.2, "the key to expire"
    )
    for node in (a, b):
        assert not replayed(node)
