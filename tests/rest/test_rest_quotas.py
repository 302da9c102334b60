"""Per-app REST rates: max_backend_events_per_second and max_read_requests_per_second.

A request that would exceed a rate gets 429 with `{"error": ...}` and `Retry-After`, and
publishes nothing of itself; other apps are not limited by it. Both official SDKs see the 429.
"""

from __future__ import annotations

import json

import pytest
from conftest import IpeServer, WsClient, config_with
from rest_support import Api, PythonSdk, SdkError, node_sdk

LIMITED = {
    "name": "Limited",
    "app_id": "2101",
    "key": "limited-key",
    "secret": "limited-secret",
    "limits": {"max_backend_events_per_second": 5, "max_read_requests_per_second": 3},
}
CREDENTIALS = {"key": "limited-key", "secret": "limited-secret"}
EVENTS = "/apps/2101/events"


@pytest.fixture
def server(make_server) -> IpeServer:
    config = config_with()
    config["apps"].append(LIMITED)
    return make_server(config)


def subscriber(server: IpeServer, *channels: str) -> WsClient:
    client = server.ws(key="limited-key")
    for channel in channels:
        assert client.subscribe(channel)["event"] == "pusher_internal:subscription_succeeded"
    return client


def assert_429(reply) -> None:
    assert reply.status == 429, reply
    assert reply.headers.get("retry-after") == "1", reply.headers
    assert "max_backend_events_per_second" in reply.error or "max_read" in reply.error


def test_a_trigger_to_more_channels_than_the_rate_is_refused_whole(server):
    api = Api(server)
    channels = [f"ch-{i}" for i in range(6)]
    client = subscriber(server, *channels)
    reply = api.post(EVENTS, {"name": "e", "data": "x", "channels": channels}, **CREDENTIALS)
    assert_429(reply)  # 6 events (one per channel) > 5
    assert "max_backend_events_per_second" in reply.error
    # Nothing of it was published, and it used nothing of the second's quota: the next
    # request (5 events) passes, and is the first thing the subscriber sees.
    reply = api.post(EVENTS, {"name": "ok", "data": "y", "channels": channels[:5]}, **CREDENTIALS)
    assert reply.status == 200, reply
    assert client.expect("ok")["channel"] == "ch-0"


def test_a_batch_counts_each_item(server):
    api = Api(server)
    client = subscriber(server, "b")
    batch = [{"name": "e", "channel": "b", "data": str(i)} for i in range(6)]
    assert_429(api.post("/apps/2101/batch_events", {"batch": batch}, **CREDENTIALS))
    assert api.post("/apps/2101/batch_events", {"batch": batch[:5]}, **CREDENTIALS).status == 200
    assert [client.expect("e", "b")["data"] for _ in range(5)] == ["0", "1", "2", "3", "4"]


def test_python_sdk_triggers_beyond_the_rate_get_429(server):
    sdk = PythonSdk(server, app_id="2101", **CREDENTIALS)
    statuses = []
    for _ in range(20):
        try:
            sdk.trigger("c", "e", {})
            statuses.append(200)
        except SdkError as exc:
            statuses.append(exc.status)
            break
    assert statuses[-1] == 429, statuses
    # Within one second 5 pass; a second boundary in the middle lets at most 10 through.
    assert 5 <= statuses.count(200) <= 10, statuses


def test_node_sdk_triggers_beyond_the_rate_get_429(server):
    calls = [["trigger", "c", "e", {"n": i}] for i in range(20)]
    results = node_sdk(server, *calls, appId="2101", **CREDENTIALS)
    statuses = [r.get("status") for r in results]
    assert 429 in statuses, results
    assert statuses.count(200) <= 10, statuses
    refused = results[statuses.index(429)]
    assert "max_backend_events_per_second" in refused["body"]


def test_reads_beyond_the_rate_get_429_and_writes_are_not_reads(server):
    api = Api(server)
    statuses = [api.get("/apps/2101/channels", **CREDENTIALS) for _ in range(12)]
    limited = [r for r in statuses if r.status == 429]
    assert limited, statuses
    assert limited[0].headers.get("retry-after") == "1"
    assert "max_read_requests_per_second" in limited[0].error
    assert sum(r.status == 200 for r in statuses) <= 6
    # Publishing is counted separately: a trigger passes while reads are refused.
    assert api.post(EVENTS, {"name": "e", "data": "x", "channel": "c"}, **CREDENTIALS).status == 200


def test_other_apps_are_not_limited_by_one_apps_rate(server):
    api = Api(server)
    reads, writes = [], []
    for _ in range(12):
        reads.append(api.get("/apps/2101/channels", **CREDENTIALS).status)
        writes.append(api.post(EVENTS, {"name": "e", "data": "x", "channel": "c"}, **CREDENTIALS))
    assert 429 in reads and 429 in [w.status for w in writes]
    other = server.ws()
    assert other.subscribe("news")["event"] == "pusher_internal:subscription_succeeded"
    sdk = server.sdk()
    for i in range(20):
        assert sdk.trigger("news", "tick", {"i": i}) == {}
        assert sdk.channels_info() is not None
    for i in range(20):
        assert json.loads(other.expect("tick", "news")["data"]) == {"i": i}
    assert (
        server.metric('ipe_rate_limited_total{app_id="1001",limit="max_read_requests_per_second"}')
        == 0
    )
    assert (
        server.metric('ipe_rate_limited_total{app_id="2101",limit="max_read_requests_per_second"}')
        >= 1
    )
