#!/usr/bin/env python3
"""Our edgecore beside KubeEdge's, in one run, under KubeEdge's real cloudcore: memory side by side.

A fresh control plane of ../shared/peers (etcd + kube-apiserver v1.32, KubeEdge's CRDs;
`control-plane.sh`), KubeEdge v1.23.1's cloudcore (`real-cloudcore.sh`), then two edge nodes
joined to it with tokens from that cloud:

  kubeedge  KubeEdge v1.23.1's edgecore (`real-edgecore.sh`: edged off, the EventBus on its own
            mosquitto, metaServer/edgeStream/serviceBus off): the peer's own setup
  ours      our edgecore (`edgecore join` with KubeEdge's token, then edgecore.yaml edited to
            the same setup: edged off, `eventBus.mqttMode: 2` on a mosquitto of its own)

Both are sampled (/proc/<pid>/status VmRSS, RssAnon, RssFile, threads; CPU) once a second for
WINDOW s after SETTLE s, in two states: idle (connected), and with DEVICES Devices of one
DeviceModel bound to each node through the API (3 twin properties each, one with a desired
value; reached when each edge's database holds them all). The ratio is KubeEdge's VmRSS over
ours. No mapper runs. Everything on 127.0.0.1; every wait is bounded.

usage: /usr/bin/python3 scripts/edge-peer-footprint.py [--bin-dir target/release]
        [--edgecore BIN] [--devices 100] [--settle 5] [--window 20] [--peers ../shared/peers]
"""

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
_spec = importlib.util.spec_from_file_location("edge_footprint", os.path.join(HERE, "edge-footprint.py"))
fp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fp)
_spec = importlib.util.spec_from_file_location("interop_bench", os.path.join(HERE, "interop-bench.py"))
ib = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ib)

OURS, THEIRS = "fp-ours", "fp-kubeedge"


class Pid:
    """A process started by the harness, known by its pid (for `sample`)."""

    def __init__(self, pid):
        self.pid = pid

    def alive(self):
        return os.path.exists(f"/proc/{self.pid}")


def devices_yaml(node, n):
    """The footprint script's DeviceModel and Devices, bound to `node`, names prefixed by it."""
    text = fp.devices_yaml(n).replace("fp-thermostat-model", f"{node}-model")
    return text.replace(f"nodeName: {fp.NODE}", f"nodeName: {node}").replace("name: fp-dev-", f"name: {node}-dev-")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release"))
    ap.add_argument("--edgecore", help="our edgecore binary (default: BIN_DIR/edgecore)")
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--settle", type=float, default=5)
    ap.add_argument("--window", type=float, default=20)
    ap.add_argument("--peers", default=os.path.join(HERE, "..", "..", "shared", "peers"))
    ap.add_argument("--keep", action="store_true", help="keep the run directory")
    args = ap.parse_args()
    edgecore = os.path.abspath(args.edgecore or os.path.join(args.bin_dir, "edgecore"))
    peers = os.path.abspath(args.peers)
    harness = os.path.join(peers, "harness")
    unpacked = subprocess.run([os.path.join(peers, "unpack.sh")], capture_output=True, text=True, check=True)
    pe = ib.exports(unpacked.stdout)

    run_dir = tempfile.mkdtemp(prefix="kp-edgefp-")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CLOUDCORE_", "EDGECORE_", "ETCD_", "APISERVER_", "MQTT_"))}
    env.update({"PEERS_BIN": pe["PEERS_BIN"], "PEERS_CRDS": pe["PEERS_CRDS"], "RUN_DIR": run_dir,
                "ETCD_PORT": str(fp.free_port()), "ETCD_PEER_PORT": str(fp.free_port()),
                "APISERVER_PORT": str(fp.free_port())})
    ours, brokers = None, []
    try:
        def script(name, *argv, extra=None):
            r = subprocess.run([os.path.join(harness, name), *argv], env=dict(env, **(extra or {})),
                               capture_output=True, text=True, timeout=300)
            if r.returncode:
                sys.exit(f"{name} failed:\n{r.stderr[-3000:]}")
            return ib.exports(r.stdout)

        cp = script("control-plane.sh")
        env["KUBECONFIG"] = cp["KUBECONFIG"]
        with open(os.path.join(run_dir, "pki", "admin.token")) as f:
            api = ib.Api(cp["APISERVER"], f.read().strip())
        cc = script("real-cloudcore.sh", extra={
            "CLOUDCORE_WS_PORT": str(fp.free_port()), "CLOUDCORE_HTTPS_PORT": str(fp.free_port()),
            "CLOUDCORE_MONITOR_PORT": str(fp.free_port()), "CLOUDCORE_QUIC_PORT": str(fp.free_port())})
        ws, https, token = cc["CLOUDCORE_WS"], cc["CLOUDCORE_HTTPS"], cc["CLOUDCORE_TOKEN"]
        fp.log(f"KubeEdge cloudcore: cloudhub {ws}, https {https}")

        theirs = script("real-edgecore.sh", THEIRS, ws, token,
                        extra={"CLOUD_HTTPS_PORT": https.split(":")[1]})
        with open(os.path.join(run_dir, "pids", f"edgecore-{THEIRS}.pid")) as f:
            theirs_pid = int(f.readline())
        fp.log(f"KubeEdge edgecore connected (pid {theirs_pid})")

        # Ours: its Node as real-edgecore.sh makes one (edged off registers none), then the join.
        conn = api.conn()
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": OURS, "labels": {"node-role.kubernetes.io/edge": ""}}}
        status, body = api.request(conn, "POST", "/api/v1/nodes", node)
        if status not in (201, 409):
            sys.exit(f"creating node {OURS}: {status} {body[:300]}")
        root = os.path.join(run_dir, "ours")
        metrics = fp.free_port()
        join = subprocess.run([edgecore, "join", f"--cloudcore={ws}", f"--https-port={https.split(':')[1]}",
                               f"--token={token}", f"--node={OURS}", f"--root={root}",
                               f"--metrics-listen=127.0.0.1:{metrics}"],
                              capture_output=True, text=True, timeout=60)
        if join.returncode:
            sys.exit(f"edgecore join: {join.stderr}")
        port = fp.free_port()
        conf = os.path.join(run_dir, "ours-mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n")
        brokers.append(fp.Proc("mosquitto", ["mosquitto", "-c", conf], os.path.join(run_dir, "ours-mosquitto.log")))
        config = os.path.join(root, "config", "edgecore.yaml")
        with open(config) as f:
            text = f.read()
        for key, value in (("modules.edged.enable", "false"), ("modules.eventBus.mqttMode", "2"),
                           ("modules.eventBus.mqttServerExternal", f"tcp://127.0.0.1:{port}")):
            text = fp.set_yaml(text, key, value)
        with open(config, "w") as f:
            f.write(text)
        ours = fp.Proc("edgecore", [edgecore, f"--root={root}"], os.path.join(run_dir, "ours-edgecore.log"),
                       {"RUST_LOG": "info"})
        fp.wait("our edgecore connected", lambda: fp.metric(metrics, "edgecore_connected") == 1, 60)
        procs = {"ours": ours, "kubeedge": Pid(theirs_pid)}

        def measure(stage):
            fp.log(f"{stage}: settling {args.settle} s, then sampling {args.window} s")
            time.sleep(args.settle)
            r = fp.sample(procs, args.window, 1)
            fp.show(stage, r)
            a, b = r["ours"]["VmRSS"]["median"], r["kubeedge"]["VmRSS"]["median"]
            print(f"{stage:8} KubeEdge's edgecore / ours: {b / a:.1f}x VmRSS "
                  f"({b / 1024:.1f} MiB / {a / 1024:.1f} MiB)", flush=True)
            return r

        results = {"idle": measure("idle")}
        if args.devices:
            for n in (OURS, THEIRS):
                r = subprocess.run(["kubectl", "apply", "-f", "-"], input=devices_yaml(n, args.devices),
                                   env=env, capture_output=True, text=True, timeout=120)
                if r.returncode:
                    sys.exit(f"kubectl apply devices for {n}: {r.stderr[-2000:]}")
            dbs = {OURS: os.path.join(root, "edgecore.db"), THEIRS: theirs["EDGECORE_DB"]}
            for n, db in dbs.items():
                fp.wait(f"{args.devices} devices in {n}'s database",
                        lambda db=db: (fp.device_rows(db) or (0,))[0] >= args.devices, 120)
            results["devices"] = measure("devices")
        print(json.dumps({stage: {name: r["VmRSS"]["median"] for name, r in res.items()}
                          for stage, res in results.items()}))
    finally:
        if ours:
            ours.stop()
        for b in brokers:
            b.stop()
        subprocess.run([os.path.join(harness, "down.sh"), run_dir], env=env, capture_output=True, timeout=120)
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
