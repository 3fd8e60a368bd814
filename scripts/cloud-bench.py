#!/usr/bin/env python3
"""Cloud dispatch benchmark: cloudcore in manifest mode against an edge-swarm of simulated nodes.

Starts `cloudcore --manifests` and `edge-swarm --ack-log` (release builds), waits until every
node is connected, records cloudcore's RSS, then creates pods (one YAML file per node with
PODS pods bound to it, RATE pods per second) and measures, per pod, the time from its file
being written to its ACK leaving the simulated node. Prints p50/p90/p99/max and cloudcore's
RSS before and after. Everything runs on 127.0.0.0/8; every wait is bounded.

usage: scripts/cloud-bench.py [--nodes 1000] [--pods 10] [--rate 1000] [--scan-ms 100]
                              [--bin-dir target/release] [--source-ips 16]
"""

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from benchlib import free_port, pct, rss_kib, wait


def metric(port, name):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return int(line.split()[1])
    except OSError:
        return -1
    return -1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--pods", type=int, default=10, help="pods per node")
    ap.add_argument("--rate", type=float, default=1000, help="pods created per second")
    ap.add_argument("--scan-ms", type=int, default=100)
    ap.add_argument("--bin-dir", default="target/release")
    ap.add_argument("--source-ips", type=int, default=16)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="cloud-bench-")
    pki, manifests, status = (os.path.join(work, d) for d in ("pki", "manifests", "status"))
    os.makedirs(manifests)
    acks = os.path.join(work, "acks.log")
    hub, join, metrics = free_port(), free_port(), free_port()
    cloud_log = open(os.path.join(work, "cloudcore.log"), "w")
    cloud = subprocess.Popen(
        [os.path.join(args.bin_dir, "cloudcore"), "--pki-dir", pki, "--listen", f"127.0.0.1:{hub}",
         "--https-listen", f"127.0.0.1:{join}", "--metrics-listen", f"127.0.0.1:{metrics}",
         "--manifests", manifests, "--status-dir", status, "--scan-interval-ms", str(args.scan_ms),
         "--node-limit", str(args.nodes + 100)],
        stdout=cloud_log, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "warn"})
    swarm = None
    try:
        wait("cloudcore metrics", lambda: metric(metrics, "cloudcore_connected_nodes") >= 0, 60)
        ips = ",".join(f"127.0.0.{i + 2}" for i in range(args.source_ips))
        swarm_log = open(os.path.join(work, "swarm.log"), "w")
        swarm = subprocess.Popen(
            [os.path.join(args.bin_dir, "edge-swarm"), "--pki-dir", pki, "--nodes", str(args.nodes),
             "--server", f"127.0.0.1:{hub}", "--source-ips", ips, "--duration-secs", "3600",
             "--ack-log", acks, "--report-every-secs", "30"],
            stdout=swarm_log, stderr=subprocess.STDOUT)
        t0 = time.time()
        wait("all nodes connected",
             lambda: metric(metrics, "cloudcore_connected_nodes") == args.nodes, 600)
        print(f"{args.nodes} nodes connected in {time.time() - t0:.1f} s")
        time.sleep(5)
        idle = rss_kib(cloud.pid)
        print(f"cloudcore RSS, {args.nodes} nodes connected, no pods: {idle / 1024:.1f} MiB"
              f" ({idle / args.nodes:.1f} KiB per node)")

        created = {}
        per_file = args.pods
        interval = per_file / args.rate
        start = time.time()
        for i in range(args.nodes):
            node = f"swarm-{i}"
            docs = []
            for j in range(args.pods):
                name = f"bench-{i}-{j}"
                docs.append(f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n"
                            f"spec:\n  nodeName: {node}\n  containers:\n  - name: app\n    image: busybox\n")
            path = os.path.join(manifests, f"{node}.yaml")
            with open(path + ".tmp", "w") as f:
                f.write("---\n".join(docs))
            now = time.time()
            os.rename(path + ".tmp", path)
            for j in range(args.pods):
                created[f"default/pod/bench-{i}-{j}"] = now
            target = start + (i + 1) * interval
            delay = target - time.time()
            if delay > 0:
                time.sleep(delay)
        total = len(created)
        print(f"created {total} pods in {time.time() - start:.1f} s")

        acked = {}
        def all_acked():
            with open(acks) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 4 and parts[2] == "insert" and parts[3] in created:
                        acked.setdefault(parts[3], int(parts[0]) / 1e6)
            return len(acked) >= total
        wait("every pod acknowledged", all_acked, 600)
        lat = sorted((acked[k] - created[k]) * 1000 for k in created)
        print(f"pod created -> ACK at the node (ms): p50 {pct(lat, 50):.1f}, p90 {pct(lat, 90):.1f}, "
              f"p99 {pct(lat, 99):.1f}, max {lat[-1]:.1f} ({total} pods)")
        time.sleep(2)
        after = rss_kib(cloud.pid)
        print(f"cloudcore RSS with {total} pods: {after / 1024:.1f} MiB")
    finally:
        for p in (swarm, cloud):
            if p is not None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
        if args.keep:
            print(f"work directory: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
