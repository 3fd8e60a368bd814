"""Helpers the benchmark scripts share: free loopback ports, a process's RSS, bounded waits,
percentiles."""

import socket
import sys
import time


def free_port():
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    """VmRSS of process `pid`, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait(what, check, timeout):
    """Polls `check` every 0.2 s; exits with a message after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.2)
    sys.exit(f"timed out waiting for {what}")


def pct(sorted_values, p):
    """The p-th percentile (nearest rank) of sorted values."""
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, int(round(p / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[i]
