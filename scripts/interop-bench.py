#!/usr/bin/env python3
"""Pod dispatch through a real kube-apiserver, for our cloudcore and KubeEdge's, in one run.

For each cloud: a fresh control plane from ../shared/peers (etcd + kube-apiserver v1.32, the
KubeEdge CRDs; `control-plane.sh`), the cloud (ours: `cloudcore --kubeconfig`; KubeEdge's
v1.23.1: `real-cloudcore.sh`), NODES Node objects labelled as edge nodes, and `edge-swarm`: NODES
simulated edge nodes in one process, each a real mutual-TLS WebSocket speaking KubeEdge's
protocol with a certificate from the cloud's CA (ours: the pki dir; KubeEdge's: its Secret
kubeedge/casecret), ACKing every tracked message and logging when. Once all are connected the
cloud's RSS is read, then PODS pods per node are created through the API as fast as 8 keep-alive
connections go, and each pod's time from the API's 201 to its ACK leaving the simulated node is
recorded. Prints p50/p90/p99/max, when the last pod arrived, and the cloud's RSS before the
nodes (once it serves), with the nodes connected, and after the pods, with the cost per node
(its connection and its Node object) and per dispatched pod. Everything runs on 127.0.0.0/8;
every wait is bounded.

usage: scripts/interop-bench.py [--nodes 1000] [--pods 1] [--clouds ours,kubeedge]
                                [--bin-dir target/release] [--peers ../shared/peers]
"""

import argparse
import base64
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import free_port, pct, rss_kib, wait


def exports(text):
    out = {}
    for line in text.splitlines():
        if line.startswith("export "):
            for part in line[len("export "):].split(" "):
                if "=" in part:
                    k, v = part.split("=", 1)
                    out[k] = v.strip("'\"")
    return out


class Api:
    """The admin's requests to the kube-apiserver (the static token control-plane.sh made)."""

    def __init__(self, url, token):
        self.token = token
        self.host, self.port = url.replace("https://", "").split(":")
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE

    def conn(self):
        return http.client.HTTPSConnection(self.host, int(self.port), context=self.ctx, timeout=60)

    def request(self, conn, method, path, body=None):
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers=headers)
        r = conn.getresponse()
        return r.status, r.read()


def run_cloud(kind, args, peers_bin, crds, harness):
    run_dir = tempfile.mkdtemp(prefix="kp-bench-")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDCORE_", "ETCD_", "APISERVER_"))}
    env.update({"PEERS_BIN": peers_bin, "PEERS_CRDS": crds, "RUN_DIR": run_dir,
                "ETCD_PORT": str(free_port()), "ETCD_PEER_PORT": str(free_port()),
                "APISERVER_PORT": str(free_port())})
    procs = []
    try:
        cp = subprocess.run([f"{harness}/control-plane.sh"], env=env, capture_output=True, text=True,
                            timeout=300)
        if cp.returncode:
            sys.exit(f"control-plane.sh failed:\n{cp.stderr[-2000:]}")
        cpe = exports(cp.stdout)
        with open(os.path.join(run_dir, "pki", "admin.token")) as f:
            api = Api(cpe["APISERVER"], f.read().strip())
        kubeconfig = cpe["KUBECONFIG"]
        pki = os.path.join(run_dir, "bench-pki")
        os.makedirs(pki)
        if kind == "ours":
            hub, https = free_port(), free_port()
            log = open(os.path.join(run_dir, "ours-cloudcore.log"), "w")
            cloud = subprocess.Popen(
                [os.path.join(args.bin_dir, "cloudcore"), "--pki-dir", pki,
                 "--listen", f"127.0.0.1:{hub}", "--https-listen", f"127.0.0.1:{https}",
                 "--advertise-address", "127.0.0.1", "--kubeconfig", kubeconfig,
                 "--node-limit", str(args.nodes + 100), "--sent-records", args.sent_records],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "warn"})
            procs.append(cloud)
            cloud_pid = cloud.pid

            def serving():
                with socket.socket() as s:
                    return s.connect_ex(("127.0.0.1", hub)) == 0
            wait("our cloudcore", serving, 120)
        else:
            env2 = dict(env, CLOUDCORE_WS_PORT=str(free_port()), CLOUDCORE_HTTPS_PORT=str(free_port()),
                        CLOUDCORE_MONITOR_PORT=str(free_port()), CLOUDCORE_QUIC_PORT=str(free_port()),
                        CLOUDCORE_NODE_LIMIT=str(args.nodes + 100))
            cc = subprocess.run([f"{harness}/real-cloudcore.sh"], env=env2, capture_output=True,
                                text=True, timeout=300)
            if cc.returncode:
                sys.exit(f"real-cloudcore.sh failed:\n{cc.stderr[-2000:]}")
            hub = int(exports(cc.stdout)["CLOUDCORE_WS"].split(":")[1])
            with open(os.path.join(run_dir, "pids", "cloudcore.pid")) as f:
                cloud_pid = int(f.readline())
            # KubeEdge's CA lives in the Secret kubeedge/casecret (DER): PEM for edge-swarm.
            conn = api.conn()
            status, body = api.request(conn, "GET", "/api/v1/namespaces/kubeedge/secrets/casecret")
            secret = json.loads(body)
            for key, out, tool in (("cadata", "ca.pem", ["openssl", "x509", "-inform", "der"]),
                                   ("cakeydata", "ca-key.pem", ["openssl", "pkey", "-inform", "der"])):
                der = base64.b64decode(secret["data"][key])
                pem = subprocess.run(tool, input=der, capture_output=True, check=True).stdout
                with open(os.path.join(pki, out), "wb") as f:
                    f.write(pem)

        time.sleep(2)
        empty = rss_kib(cloud_pid)
        # The Node objects, as edge nodes.
        conn = api.conn()
        for i in range(args.nodes):
            node = {"apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": f"swarm-{i}", "labels": {"node-role.kubernetes.io/edge": ""}}}
            status, body = api.request(conn, "POST", "/api/v1/nodes", node)
            if status not in (201, 409):
                sys.exit(f"creating node swarm-{i}: {status} {body[:200]}")

        acks = os.path.join(run_dir, "acks.log")
        ips = ",".join(f"127.0.0.{i + 2}" for i in range(16))
        swarm = subprocess.Popen(
            [os.path.join(args.bin_dir, "edge-swarm"), "--pki-dir", pki, "--nodes", str(args.nodes),
             "--server", f"127.0.0.1:{hub}", "--source-ips", ips, "--duration-secs", "3600",
             "--ack-log", acks, "--report-every-secs", "5"],
            stdout=open(os.path.join(run_dir, "swarm.log"), "w"), stderr=subprocess.STDOUT)
        procs.append(swarm)

        def connected():
            try:
                with open(os.path.join(run_dir, "swarm.log")) as f:
                    counts = re.findall(r"\] started \d+, connected (\d+),", f.read())
                return bool(counts) and int(counts[-1]) >= args.nodes
            except OSError:
                return False
        t0 = time.time()
        wait("the swarm connected", connected, 600)
        print(f"[{kind}] {args.nodes} nodes connected in {time.time() - t0:.1f} s", flush=True)
        time.sleep(10)
        idle = rss_kib(cloud_pid)

        created = {}
        lock = threading.Lock()
        total = args.nodes * args.pods
        names = [f"bench-{i}" for i in range(total)]

        def create(chunk):
            c = api.conn()
            for i in chunk:
                pod = {"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": names[i], "namespace": "default"},
                       "spec": {"nodeName": f"swarm-{i % args.nodes}",
                                "containers": [{"name": "c", "image": "edged.test/busybox:1"}]}}
                status, body = api.request(c, "POST", "/api/v1/namespaces/default/pods", pod)
                now = time.time()
                if status != 201:
                    print(f"pod {names[i]}: {status} {body[:200]}", file=sys.stderr)
                    continue
                with lock:
                    created[f"default/pod/{names[i]}"] = now
        start = time.time()
        threads = [threading.Thread(target=create, args=(range(k, total, 8),)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        burst = time.time() - start

        acked = {}

        def all_acked():
            with open(acks) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 4 and parts[2] in ("insert", "update") and parts[3] in created:
                        acked.setdefault(parts[3], int(parts[0]) / 1e6)
            return len(acked) >= len(created)
        wait("every pod at its node", all_acked, 1800)
        lat = sorted((acked[k] - created[k]) * 1000 for k in created)
        last = max(acked.values()) - start
        time.sleep(5)
        after = rss_kib(cloud_pid)
        print(f"[{kind}] {len(created)} pods created in {burst:.2f} s; API 201 -> edge ACK "
              f"p50 {pct(lat, 50):.0f} ms, p90 {pct(lat, 90):.0f} ms, p99 {pct(lat, 99):.0f} ms, "
              f"max {lat[-1]:.0f} ms; all at their nodes {last:.2f} s after the first create; "
              f"RSS {empty / 1024:.1f} MiB without nodes, {idle / 1024:.1f} MiB with the nodes "
              f"idle ({(idle - empty) / args.nodes:.1f} KiB per node), {after / 1024:.1f} MiB after "
              f"({(after - idle) / max(len(created), 1):.1f} KiB per pod)", flush=True)
        return kind, pct(lat, 50), pct(lat, 99), lat[-1], last, idle, after
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run([f"{harness}/down.sh", run_dir], env=env, capture_output=True, timeout=300)
        shutil.rmtree(run_dir, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--pods", type=int, default=1, help="pods per node")
    ap.add_argument("--clouds", default="ours,kubeedge")
    ap.add_argument("--bin-dir", default="target/release")
    ap.add_argument("--peers", default="../shared/peers")
    ap.add_argument("--sent-records", default="true", help="our cloudcore's --sent-records")
    args = ap.parse_args()
    unpack = subprocess.run([os.path.join(args.peers, "unpack.sh")], capture_output=True, text=True,
                            check=True)
    e = exports(unpack.stdout)
    harness = os.path.abspath(os.path.join(args.peers, "harness"))
    rows = [run_cloud(kind, args, e["PEERS_BIN"], e["PEERS_CRDS"], harness)
            for kind in args.clouds.split(",")]
    print("| cloud | p50 | p99 | max | all delivered after | RSS idle | RSS after |")
    print("|---|---|---|---|---|---|---|")
    for kind, p50, p99, mx, last, idle, after in rows:
        print(f"| {kind} | {p50:.0f} ms | {p99:.0f} ms | {mx:.0f} ms | {last:.2f} s | "
              f"{idle / 1024:.1f} MiB | {after / 1024:.1f} MiB |")


if __name__ == "__main__":
    main()
