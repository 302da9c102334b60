"""The targets (issues 6 and 16) from one `scripts/bench --soketi` run: ipe as a ratio of soketi.

usage: python scripts/bench_targets.py RESULTS_DIR   (the directory holding soketi/ and ipe/,
and optionally ipe-Nw/ from a `--workers N` run); prints Markdown: the target table, then a
Mermaid chart of the ratios. Medians over the repeats of each run. Standard library only.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _runs(directory: Path, name: str) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob(f"{name}.r*.json"))]


def _median(directory: Path, name: str, pick: Callable[[dict[str, Any]], float]) -> float | None:
    values = []
    for run in _runs(directory, name):
        try:
            values.append(float(pick(run["result"])))
        except (KeyError, TypeError, ValueError):
            continue
    return statistics.median(values) if values else None


def _cpu_us_per_delivery(result: dict[str, Any]) -> float:
    window = result["publish_window"]
    cpu_seconds = window["server_cpu_pct"] / 100 * window["seconds"]
    return cpu_seconds / result["delivery"]["deliveries_received"] * 1e6


def _requests_per_s(result: dict[str, Any]) -> float:
    return float(result["publish"]["requests"] / result["publish"]["seconds"])


def _batch_events(result: dict[str, Any]) -> float:
    return float(result["publish"]["event_rate_achieved"])


def _cpu_us_per_request(result: dict[str, Any]) -> float:
    window = result["publish_window"]
    cpu_seconds = window["server_cpu_pct"] / 100 * window["seconds"]
    return float(cpu_seconds / result["publish"]["requests"] * 1e6)


# (target, run name, how to read it, unit, better: "higher" or "lower", bound on the ratio)
TARGETS: list[tuple[str, str, Callable[[dict[str, Any]], float], str, str, float]] = [
    ("fan-out 1k subscribers, max rate: deliveries/s", "fanout-1k-max",
     lambda r: r["delivery"]["delivered_per_s"], "msg/s", "higher", 1.0),
    ("fan-out 5k subscribers, max rate: deliveries/s", "fanout-5k-max",
     lambda r: r["delivery"]["delivered_per_s"], "msg/s", "higher", 1.0),
    ("fan-out 1k at 100 events/s: p50 latency", "fanout-1k-100ps",
     lambda r: r["delivery"]["latency_ms"]["p50"], "ms", "lower", 1.0),
    ("fan-out 1k at 100 events/s: p99 latency", "fanout-1k-100ps",
     lambda r: r["delivery"]["latency_ms"]["p99"], "ms", "lower", 1.0),
    ("fan-out 1k at 100 events/s: server CPU per delivery", "fanout-1k-100ps",
     _cpu_us_per_delivery, "µs", "lower", 1.0),
    ("10k idle connections: memory per connection", "connect-10k",
     lambda r: r["server_bytes_per_conn"], "bytes", "lower", 2.0),
    ("connect 5k: connections/s", "connect-5k",
     lambda r: r["connect"]["conns_per_s"], "conn/s", "higher", 0.7),
    ("500 private pairs, client events at max rate: msg/s", "client-1k-max",
     lambda r: r["delivery"]["delivered_per_s"], "msg/s", "higher", 0.7),
    ("1k presence members: join p99", "presence-1000",
     lambda r: r["join_ms"]["p99"], "ms", "lower", 1.0),
    ("REST, one event a request, max rate: requests/s", "channels-1k-max",
     _requests_per_s, "req/s", "higher", 1.0),
    ("REST, batches of 10, max rate: events/s", "channels-1k-max-batch10",
     _batch_events, "ev/s", "higher", 1.0),
    ("REST at 2,000 requests/s: server CPU per request", "channels-1k-2000ps",
     _cpu_us_per_request, "µs", "lower", 1.0),
    ("REST at 2,000 requests/s: p99 latency", "channels-1k-2000ps",
     lambda r: r["delivery"]["latency_ms"]["p99"], "ms", "lower", 1.0),
]


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}"


def report(root: Path) -> str:
    """The Markdown report for the results under `root`."""
    soketi, ipe = root / "soketi", root / "ipe"
    lines = [
        "| target | soketi | ipe | ipe / soketi | goal | met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    chart: list[tuple[str, float]] = []
    for label, run, pick, unit, better, bound in TARGETS:
        theirs, ours = _median(soketi, run, pick), _median(ipe, run, pick)
        ratio = ours / theirs if ours is not None and theirs else None
        goal = f"{'≥' if better == 'higher' else '≤'} {bound}"
        met = "–"
        if ratio is not None:
            met = "yes" if (ratio >= bound if better == "higher" else ratio <= bound) else "no"
            # Charted as ipe's advantage: above 1 means ipe does better, whichever way is better.
            chart.append((label, ratio if better == "higher" else 1 / ratio))
        lines.append(
            f"| {label} (`{run}`) | {_fmt(theirs)} {unit} | {_fmt(ours)} {unit} | "
            f"{_fmt(ratio)} | {goal} | {met} |"
        )
    missing = [
        _median(ipe, "presence-1000", lambda r: r["member_added"]["missing"]),
        _median(soketi, "presence-1000", lambda r: r["member_added"]["missing"]),
    ]
    lines.append("")
    lines.append(
        f"presence-1000 member_added missing (median): ipe {_fmt(missing[0])}, "
        f"soketi {_fmt(missing[1])}."
    )
    base = root / "ipe-base"
    if base.is_dir():
        lines += ["", "| REST before and after (same run) | before | after | after / before |",
                  "| --- | --- | --- | --- |"]
        for label, run, pick, unit, _, _ in TARGETS:
            if run.startswith("channels-"):
                old, new = _median(base, run, pick), _median(ipe, run, pick)
                ratio = new / old if old and new else None
                lines.append(
                    f"| {label} | {_fmt(old)} {unit} | {_fmt(new)} {unit} | {_fmt(ratio)} |"
                )
    workers = sorted(
        (int(d.name[4:-1]), d) for d in root.glob("ipe-*w") if d.name[4:-1].isdigit()
    )
    if workers:
        lines += ["", "| REST: one process, or gunicorn + Redis | req/s | events/s (batch 10) |",
                  "| --- | --- | --- |"]
        for name, directory in [("one process, no Redis", ipe)] + [
            (f"{n} worker{'s' if n > 1 else ''} + Redis", d) for n, d in workers
        ]:
            single = _median(directory, "channels-1k-max", _requests_per_s)
            batched = _median(directory, "channels-1k-max-batch10", _batch_events)
            lines.append(f"| {name} | {_fmt(single)} | {_fmt(batched)} |")
    two = root / "ipe-2w"
    if two.is_dir():
        lines += ["", "| two workers + Redis vs one process | one | two | two / one |",
                  "| --- | --- | --- | --- |"]
        for run in ("fanout-1k-max", "fanout-5k-max", "client-1k-max"):
            def pick(r: dict[str, Any]) -> float:
                return float(r["delivery"]["delivered_per_s"])

            one, both = _median(ipe, run, pick), _median(two, run, pick)
            scale = both / one if one and both else None
            lines.append(f"| `{run}` deliveries/s | {_fmt(one)} | {_fmt(both)} | {_fmt(scale)} |")
    title = '    title "ipe vs soketi, same run (above 1: ipe better)"'
    lines += ["", "```mermaid", "xychart-beta", title]
    labels = ", ".join(f'"{i + 1}"' for i in range(len(chart)))
    lines.append(f"    x-axis [{labels}]")
    lines.append('    y-axis "advantage" 0 --> ' + _fmt(max([2.0] + [r for _, r in chart])))
    lines.append("    bar [" + ", ".join(f"{r:.2f}" for _, r in chart) + "]")
    lines.append("```")
    lines.append("")
    lines += [f"{i + 1}. {name}" for i, (name, _) in enumerate(chart)]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Print the report for the directory given on the command line."""
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print(report(Path(sys.argv[1])), end="")


if __name__ == "__main__":
    main()
