"""/metrics: per-app values after known traffic, and series that clients cannot multiply."""

from __future__ import annotations

import json
import random
import re
import urllib.error
import urllib.request

from support import APP_ID, ROOT, wait_until

from ipe.metrics import close_code_label

OTHER = "1002"


def test_per_app_counts_after_known_traffic(server):
    a, b = server.ws(), server.ws()
    other = server.ws(key="other-key")
    for client in (a, b):
        assert client.subscribe("orders")["event"] == "pusher_internal:subscription_succeeded"
    sdk = server.sdk()
    for n in range(3):
        sdk.trigger("orders", "order", {"n": n})
    for client in (a, b):
        for _ in range(3):
            client.expect("order", "orders")
        client.sync()
    other.sync()
    try:
        urllib.request.urlopen(f"{server.url}/apps/{APP_ID}/events?auth_key=x", b"{}", 5)
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
    try:
        urllib.request.urlopen(f"{server.url}/apps/999/channels", timeout=5)
    except urllib.error.HTTPError as exc:
        assert exc.code == 404

    def m(name: str, **labels: str) -> float:
        selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
        return server.metric(f"{name}{{{selector}}}" if selector else name)

    assert m("ipe_connections", app_id=APP_ID) == 2
    assert m("ipe_connections", app_id=OTHER) == 1
    assert m("ipe_connections_opened_total", app_id=APP_ID) == 2
    # a and b: subscribe and ping each; other: one ping.
    assert m("ipe_ws_messages_received_total", app_id=APP_ID) == 4
    assert m("ipe_ws_messages_received_total", app_id=OTHER) == 1
    assert m("ipe_ws_messages_sent_total", app_id=APP_ID) == 6  # 3 events x 2 subscribers
    assert m("ipe_ws_messages_sent_total", app_id=OTHER) == 0
    frame = len(json.dumps({"event": "order", "channel": "orders", "data": '{"n": 0}'}))
    assert m("ipe_ws_bytes_sent_total", app_id=APP_ID) >= 6 * frame
    assert (
        m("ipe_ws_bytes_received_total", app_id=APP_ID)
        > m("ipe_ws_bytes_received_total", app_id=OTHER)
        > 0
    )
    assert m("ipe_http_requests_total", app_id=APP_ID, status="200") == 3
    assert m("ipe_http_requests_total", app_id=APP_ID, status="401") == 1
    # An unknown app id is not a label value of its own.
    assert m("ipe_http_requests_total", app_id="999") == 0
    assert m("ipe_http_requests_total", app_id="", status="404") == 1
    assert m("ipe_info") == 1

    a.close()
    wait_until(lambda: m("ipe_connections", app_id=APP_ID) == 1, message="a's close counted")
    assert m("ipe_disconnections_total", app_id=APP_ID, code="1000") == 1


def test_random_close_codes_cannot_create_series(server):
    codes = [random.choice(range(3000, 5000)) for _ in range(60)] + [4200, 1000, 4999]
    for code in codes:
        client = server.ws()
        client.ws.close(status=code, timeout=2)
    wait_until(
        lambda: server.metric("ipe_disconnections_total") == len(codes),
        message="every close counted",
    )
    series = {
        labels["code"]: value
        for name, labels, value in server.metrics()
        if name == "ipe_disconnections_total" and labels["app_id"] == APP_ID
    }
    assert sum(series.values()) == len(codes)
    allowed = {"3000-3999", "4000-4099", "4100-4199", "4200-4299", "4300-4399", "4400-4999"}
    # Codes ipe itself uses (4200, 1000, ...) keep their own label; a random pick may hit some.
    named = {str(code) for code in codes if close_code_label(code) == str(code)}
    assert set(series) <= allowed | named, set(series) - allowed - named
    assert len(series) <= len(allowed) + len(named)
    assert series["4200"] >= 1 and series["1000"] >= 1


def test_close_code_labels_are_bounded():
    labels = {close_code_label(code) for code in range(0, 70000)}
    # The RFC's 16, ipe's Pusher codes, six ranges and "other".
    assert len(labels) <= 16 + 20 + 6 + 1
    assert close_code_label(4100) == "4100" and close_code_label(4150) == "4100-4199"
    assert close_code_label(3333) == "3000-3999" and close_code_label(2000) == "other"


def test_dashboard_and_readme_name_only_served_metrics(server):
    with urllib.request.urlopen(server.url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    # Every metric has a TYPE line, even one whose labelled series do not exist yet.
    served = {n.removesuffix("_total") for n in re.findall(r"^# TYPE (\w+) ", text, re.M)}
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {n.removesuffix("_total") for e in exprs for n in re.findall(r"\bipe_\w+", e)}
    assert used and used <= served, used - served
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("### Metrics") : readme.index("### Logs")]
    listed = {n.removesuffix("_total") for n in re.findall(r"`(ipe_\w+)`", table)}
    exported = {n for n in served if n.startswith("ipe_")}
    assert listed == exported, listed ^ exported
