#!/usr/bin/env python3
"""Prints Switchboard's and Janus's load reports side by side, as a Markdown table, with the
ratio ours / Janus for each figure (and which way is better).

    python3 benches/ratios.py target/compare meeting livestream ...

reads <dir>/<scenario>.switchboard.json and <dir>/<scenario>.janus.json (from
`switchboard loadtest --json`).
"""
import json
import sys
from pathlib import Path

# (label, how to read it from a report, unit, True when more is better)
FIGURES = [
    ("egress packets per server CPU-second", lambda r: r["received_packets_per_server_cpu_second"], "", True),
    ("server CPU (cores)", lambda r: r["server_cpu_share"], "", False),
    ("packets received in the window", lambda r: r["window_packets_received"], "", True),
    ("loss", lambda r: r["loss"] * 100, "%", False),
    ("forwarding delay p50", lambda r: r["delay_us"]["p50"], "µs", False),
    ("forwarding delay p99", lambda r: r["delay_us"]["p99"], "µs", False),
    ("join → first media p50", lambda r: r["join_to_media_us"]["p50"] / 1000, "ms", False),
    ("join → first media p99", lambda r: r["join_to_media_us"]["p99"] / 1000, "ms", False),
    ("memory per subscribed track", lambda r: (r["memory_per_subscribed_track_bytes"] or 0) / 1000, "KB", False),
    ("server RSS", lambda r: r["server"]["rss_bytes"] / 1048576, "MiB", False),
    ("clients connected / started", lambda r: f'{r["connected"]} / {r["clients"]}', "", None),
]


def number(value):
    if isinstance(value, str):
        return value
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def main():
    folder = Path(sys.argv[1])
    for scenario in sys.argv[2:]:
        ours = json.loads((folder / f"{scenario}.switchboard.json").read_text())
        theirs = json.loads((folder / f"{scenario}.janus.json").read_text())
        print(f"\n### {scenario}\n")
        print("| figure | Switchboard | Janus | ours / Janus |")
        print("| --- | ---: | ---: | ---: |")
        for label, read, unit, more_is_better in FIGURES:
            try:
                a, b = read(ours), read(theirs)
            except (KeyError, TypeError):
                continue
            ratio = ""
            if more_is_better is not None and isinstance(a, (int, float)) and b:
                ratio = f"{a / b:.2f}×"
            suffix = f" {unit}" if unit else ""
            print(f"| {label} | {number(a)}{suffix} | {number(b)}{suffix} | {ratio} |")


if __name__ == "__main__":
    main()
