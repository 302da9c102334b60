"""The console's pure parts: the tap, the bounded streams, the cluster's rate history."""

from __future__ import annotations

import json

from ipe.console import watchers as watchers_module
from ipe.console.service import _sum_histories
from ipe.console.tap import Tap
from ipe.console.watchers import QUEUE, RECENT, Watchers


def make() -> tuple[Tap, Watchers]:
    tap = Tap("n1")

    def changed(app_id: str, watched: bool) -> None:
        if watched:
            tap.apps[app_id] = float("inf")
        else:
            tap.apps.pop(app_id, None)

    watchers = Watchers(changed)
    tap.sink = watchers.deliver
    return tap, watchers


def records(stream) -> list[dict]:
    out = []
    while not stream.queue.empty():
        out.append(json.loads(stream.queue.get_nowait()[len(b"data: ") :]))
    return out


def test_records_are_numbered_per_node_and_reach_every_stream_of_their_app():
    tap, watchers = make()
    first, second = watchers.open("a"), watchers.open("a")
    other = watchers.open("b")
    for i in range(3):
        tap.api_message("a", "news", "e", json.dumps({"i": i}))
    assert [r["s"] for r in records(first)] == [1, 2, 3]
    assert [r["preview"] for r in records(second)] == ['{"i": 0}', '{"i": 1}', '{"i": 2}']
    assert records(other) == []


def test_a_new_stream_replays_only_the_last_records():
    tap, watchers = make()
    watchers.open("a")
    for i in range(RECENT + 10):
        tap.emit("a", "client_event", i=i)
    late = watchers.open("a")
    replayed = records(late)
    assert len(replayed) == RECENT and replayed[0]["i"] == 10


def test_a_slow_stream_loses_records_and_counts_them():
    tap, watchers = make()
    stream = watchers.open("a")
    for i in range(QUEUE + 5):
        tap.emit("a", "client_event", i=i)
    assert stream.queue.qsize() == QUEUE and stream.dropped == 5


def test_the_last_stream_takes_the_app_and_its_records_with_it():
    tap, watchers = make()
    one, two = watchers.open("a"), watchers.open("a")
    watchers.close(one)
    assert "a" in tap.apps
    watchers.close(two)
    assert tap.apps == {} and watchers.recent == {} and watchers.streams == {}


def test_streams_are_capped_per_process():
    _, watchers = make()
    opened = [watchers.open(f"app{i}") for i in range(watchers_module.MAX_STREAMS)]
    assert all(opened) and watchers.open("one-more") is None


def test_close_all_ends_even_a_full_stream():
    tap, watchers = make()
    stream = watchers.open("a")
    for i in range(QUEUE):
        tap.emit("a", "client_event", i=i)
    watchers.close_all()
    items = []
    while not stream.queue.empty():
        items.append(stream.queue.get_nowait())
    assert items[-1] == watchers_module.END


def test_webhook_outcomes_are_kept_per_target_and_bounded():
    tap = Tap()
    tap.deliveries = {}
    for i in range(60):
        tap.webhook("a", "a/0", "http://h/hook", 1, None if i % 2 else "HTTP 500", 1, 0.01, True)
    kept = tap.deliveries["a/0"]
    assert len(kept) == 50 and kept[0]["ok"] is True and kept[1]["status"] == "HTTP 500"
    assert (tap.webhooks_sent, tap.webhooks_failed) == (30, 30)


def test_node_histories_add_up_aligned_on_their_latest_points():
    a = [[10.0, 1.0, 2.0, 3], [12.0, 4.0, 5.0, 6]]
    b = [[12.1, 10.0, 20.0, 30]]
    assert _sum_histories([a, b]) == [[10.0, 1.0, 2.0, 3], [12.1, 14.0, 25.0, 36]]
    assert _sum_histories([]) == []
