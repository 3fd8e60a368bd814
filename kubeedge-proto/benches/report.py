#!/usr/bin/env python3
"""Prints the BENCHMARKS.md table for benches/message.rs from criterion's saved estimates.

Run after: cargo bench -p kubeedge-proto --features codec --bench message
Usage:     python3 kubeedge-proto/benches/report.py [target/criterion]
"""
import json
import pathlib
import sys

ROOT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
SIZES = {"pod_insert": 3443, "keepalive": 195}  # captured payload bytes, newline excluded


def mean_ns(group, op, impl):
    path = ROOT / group / op / impl / "new" / "estimates.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())["mean"]["point_estimate"]


def main():
    print("| message | operation | kubeedge-proto | messages/s | MB/s | serde_json::Value | messages/s | MB/s | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for group, size in SIZES.items():
        for op in ("decode", "encode", "relay"):
            ours = mean_ns(group, op, "kubeedge-proto")
            base = mean_ns(group, op, "serde_json__Value")
            if ours is None or base is None:
                continue
            row = [group.replace("_", " "), op]
            for ns in (ours, base):
                row += [f"{ns / 1000:.3f} µs" if ns >= 1000 else f"{ns:.0f} ns",
                        f"{1e9 / ns:,.0f}", f"{size / ns * 1e3:,.0f}"]
            row.append(f"{base / ours:.1f}x")
            print("| " + " | ".join(row) + " |")
        lines = mean_ns(group, "json_lines_decode", "kubeedge-proto")
        if lines is not None:
            print(f"| {group.replace('_', ' ')} | JSON-lines codec decode | "
                  f"{lines / 1000:.3f} µs | {1e9 / lines:,.0f} | {size / lines * 1e3:,.0f} | | | | |")


if __name__ == "__main__":
    main()
