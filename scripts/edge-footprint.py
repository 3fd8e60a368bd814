#!/usr/bin/env python3
"""Footprint of the whole system: edgecore's (and cloudcore's) memory at rest, with pods and twins.

Starts the release `cloudcore` in manifest mode and a release `edgecore` joined to it (node
`footprint-1`, its root, embedded MQTT broker and /metrics on free loopback ports, pods on the
containerd of `scripts/containerd-env.sh`), then samples /proc/<pid>/status of both (VmRSS,
RssAnon, RssFile, Threads; CPU from /proc/<pid>/stat) once a second over a window, in three
states, each measured after a settle period:

  idle     connected, 0 pods, 0 devices
  pods     + PODS pods (busybox `sleep`, each with a one-key ConfigMap volume), all Running
           (the cloud's status files `status/pods/default_<name>.json`, `status.phase`)
  devices  + one DeviceModel and DEVICES Devices bound to the node, 3 twin properties each (one
           with a desired value); reached when the edge database (read-only) holds every Device
           and the DeviceModel in `meta` and, with the twin on, a `device` row per member (the
           cloud's membership update), and `edgecore_cloud_applied_total` has then not moved for
           3 s. No mapper runs: the DMI server logs that none is registered for the protocol

Then it deletes the manifests, waits for the pods' containers to stop (the cloud's graceful
delete, carried out by the edge), stops both processes (SIGTERM) and checks with `ctr` that no
task of this run's pods is left. Every wait is bounded. Network: 127.0.0.1 only.

Variants for finding where the memory goes:
  --set modules.eventBus.enable=false   edit the generated <root>/config/edgecore.yaml (repeatable)
  --env MALLOC_ARENA_MAX=2              environment of edgecore (repeatable)
  --mosquitto                           the EventBus on an external mosquitto (mqttMode 2) instead
                                        of the embedded broker (mosquitto's RSS reported too)
  --smaps                               per-mapping breakdown of edgecore's RSS in each state
  --referenced                          with --smaps: what of it was accessed during the window
  --sections                            the binary's resident pages by ELF section (pagemap, root)
  --text-by-crate                       the binary's code size by crate (nm), then exit
  --edgecore BIN                        another edgecore build (e.g. a smaller profile)
  --wrap 'heaptrack -o FILE'            run edgecore under a tool (--wrap-cloudcore: cloudcore)

usage: /usr/bin/python3 scripts/edge-footprint.py [--bin-dir DIR] [--cri unix:///PATH]
        [--pods 10] [--devices 100] [--settle 5] [--window 20] [--set KEY=VALUE]...
        [--env NAME=VALUE]... [--mosquitto] [--edgecore BIN] [--wrap CMD] [--wrap-cloudcore CMD]
        [--smaps [--referenced]] [--sections] [--text-by-crate] [--json FILE] [--keep]
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

NODE = "footprint-1"
POD_PREFIX = "fp-pod-"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid):
    """VmRSS, RssAnon, RssFile, RssShmem, VmHWM (KiB) and Threads of a process."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM", "Threads"):
                out[key] = int(rest.split()[0])
    return out


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15)


def smaps(pid, binary, field="Rss"):
    """RSS (KiB) of a process by kind of mapping, from /proc/<pid>/smaps (with `field`
    "Referenced": the part of it accessed since the last write to /proc/<pid>/clear_refs).

    Anonymous mappings are told apart by shape: a thread stack is a read-write mapping right
    above a PROT_NONE guard page; a glibc malloc arena (not the main one, which is [heap]) is
    a read-write mapping followed by a PROT_NONE reservation, both inside one 64 MiB-aligned
    region."""
    maps = []
    with open(f"/proc/{pid}/smaps") as f:
        cur = None
        for line in f:
            head = re.match(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \d+\s*(.*)$", line)
            if head:
                cur = {
                    "start": int(head.group(1), 16),
                    "end": int(head.group(2), 16),
                    "perms": head.group(3),
                    "path": head.group(4).strip(),
                    "Rss": 0,
                    "Anonymous": 0,
                    "Referenced": 0,
                }
                maps.append(cur)
                continue
            key, _, rest = line.partition(":")
            if cur is not None and key in ("Rss", "Anonymous", "Referenced"):
                cur[key] = int(rest.split()[0])
    real_binary = os.path.realpath(binary)
    out = {}

    def add(kind, kib):
        if kib:
            out[kind] = out.get(kind, 0) + kib

    for i, m in enumerate(maps):
        path = m["path"]
        if field != "Rss":
            # Referenced pages are not split into file and anonymous: count them as the
            # mapping's kind (file-backed mappings are mostly clean file pages).
            m = dict(m, Rss=m[field], Anonymous=min(m["Anonymous"], m[field]))
        file_kib = m["Rss"] - m["Anonymous"]
        if path and not path.startswith("["):
            name = "binary" if os.path.realpath(path.split(" (deleted)")[0]) == real_binary else (
                "libc/ld/libgcc" if re.search(r"/(libc|ld-linux|libgcc|libm)[.-]", path) else "other files")
            add(f"{name}: file pages", file_kib)
            add(f"{name}: written data (anon)", m["Anonymous"])
        elif path == "[heap]":
            add("main malloc heap [heap]", m["Rss"])
        elif path == "[stack]":
            add("main thread stack", m["Rss"])
        elif path.startswith("["):
            add(path, m["Rss"])
        else:
            prev = maps[i - 1] if i > 0 else None
            nxt = maps[i + 1] if i + 1 < len(maps) else None
            if (prev and prev["perms"].startswith("---") and prev["end"] == m["start"]
                    and not prev["path"] and prev["end"] - prev["start"] <= 64 * 1024):
                add("thread stacks", m["Rss"])
            elif (nxt and nxt["perms"].startswith("---") and nxt["start"] == m["end"]
                  and not nxt["path"] and m["start"] % (64 << 20) == 0
                  or m["start"] % (64 << 20) == 0 and (m["end"] - m["start"]) == (64 << 20)):
                add("malloc arenas (threads)", m["Rss"])
            else:
                add("other anonymous mmap", m["Rss"])
    return out


def elf_sections(binary):
    """(file offset start, end, name) of the ELF sections that occupy the file, from readelf."""
    out = subprocess.run(["readelf", "-S", "-W", binary], capture_output=True, text=True, check=True).stdout
    secs = []
    for line in out.splitlines():
        m = re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+(\S+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+([0-9a-f]+)", line)
        if m and m.group(2) != "NOBITS" and int(m.group(4), 16):
            off, size = int(m.group(3), 16), int(m.group(4), 16)
            secs.append((off, off + size, m.group(1)))
    return secs


def resident_sections(pid, binary):
    """{section: (mapped KiB, resident KiB)} of the executable's mappings, from
    /proc/<pid>/pagemap (a page counts for the section that holds its first byte)."""
    exe = os.path.realpath(binary)
    secs = elf_sections(exe)
    out = {}
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for line in maps:
            p = line.split()
            if len(p) < 6 or os.path.realpath(p[5]) != exe:
                continue
            start, end = (int(x, 16) for x in p[0].split("-"))
            offset = int(p[2], 16)
            pagemap.seek(start // 4096 * 8)
            entries = pagemap.read((end - start) // 4096 * 8)
            for i in range(len(entries) // 8):
                fo = offset + i * 4096
                name = next((n for s, e, n in secs if s <= fo < e or fo <= s < fo + 4096), "(other)")
                mapped, resident = out.get(name, (0, 0))
                present = int.from_bytes(entries[i * 8:i * 8 + 8], "little") >> 63
                out[name] = (mapped + 4, resident + 4 * present)
    return out


def text_by_crate(binary):
    """KiB of code symbols (`nm -S -C`) by crate: the first path segment of the symbol, of the type
    for trait impls, drop glue and closures; C symbols (SQLite, ring's C and assembly) apart."""
    out = subprocess.run(["nm", "-S", "-C", "--size-sort", binary], capture_output=True, text=True,
                         check=True).stdout
    by = {}
    wrappers = re.compile(r"(?:core::ptr::drop_in_place|core::ops::function::\w+::call(?:_once|_mut)?"
                          r"|tokio::runtime::task::\w+::\w+|std::panicking::\w+"
                          r"|core::panic::unwind_safe::AssertUnwindSafe)<(.*)$")
    for line in out.splitlines():
        p = line.split(None, 3)
        if len(p) < 4 or p[2] not in "tTwW":
            continue
        name = p[3]
        if "::" not in name:
            crate = "(C, asm) ring" if re.match(
                r"(ring_core|_?x25519|fe_|ge_|sc_|p256|p384|ecp_|bn_|aes|gcm|chacha|poly1305|sha|LIMBS|CRYPTO)",
                name, re.I) else "(C) SQLite and other C"
        else:
            for _ in range(5):
                m = wrappers.match(name)
                if not m:
                    break
                name = m.group(1)
            m = re.match(r"[<&\s]*(?:mut |dyn |const )?\(?([A-Za-z_][A-Za-z0-9_]*)", name)
            crate = m.group(1) if m else "?"
        by[crate] = by.get(crate, 0) + int(p[1], 16)
    return {c: v // 1024 for c, v in by.items()}


def metric(port, name):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return int(float(line.split()[1]))
    except OSError:
        return None
    return None


def wait(what, check, timeout, every=0.5):
    deadline = time.time() + timeout
    while True:
        v = check()
        if v:
            log(f"ok: {what}")
            return v
        if time.time() >= deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for: {what}")
        time.sleep(every)


def set_yaml(text, dotted, value):
    """Sets `a.b.c: value` in block YAML as edgecore writes it (two-space indents, existing keys)."""
    keys = dotted.split(".")
    lines = text.split("\n")
    start, indent = 0, 0
    for depth, key in enumerate(keys):
        for i in range(start, len(lines)):
            line = lines[i]
            stripped = line.lstrip(" ")
            ind = len(line) - len(stripped)
            if stripped and ind < indent and i > start:
                break
            if ind == indent and stripped.startswith(key + ":"):
                if depth == len(keys) - 1:
                    lines[i] = " " * ind + f"{key}: {value}"
                    return "\n".join(lines)
                start, indent = i + 1, indent + 2
                break
        else:
            raise KeyError(dotted)
    raise KeyError(dotted)


def pods_yaml(n):
    docs = []
    for i in range(n):
        name = f"{POD_PREFIX}{i}"
        docs.append(f"""apiVersion: v1
kind: ConfigMap
metadata: {{name: {name}-config, namespace: default}}
data: {{greeting: "hello from {name}"}}
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default}}
spec:
  nodeName: {NODE}
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: edged.test/busybox:1
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "cat /config/greeting; exec sleep 1000000"]
    volumeMounts: [{{name: config, mountPath: /config}}]
  volumes:
  - name: config
    configMap: {{name: {name}-config}}
""")
    return "---\n".join(docs)


def devices_yaml(n):
    docs = ["""apiVersion: devices.kubeedge.io/v1beta1
kind: DeviceModel
metadata: {name: fp-thermostat-model, namespace: default}
spec:
  protocol: modbus
  properties:
  - {name: temperature, type: INT, accessMode: ReadOnly}
  - {name: humidity, type: INT, accessMode: ReadOnly}
  - {name: setpoint, type: INT, accessMode: ReadWrite, minimum: "0", maximum: "1000"}
"""]
    for i in range(n):
        props = []
        for j, (prop, reg) in enumerate((("temperature", "InputRegister"), ("humidity", "HoldingRegister"),
                                         ("setpoint", "HoldingRegister"))):
            desired = f'\n    desired: {{value: "{20 + i % 10}", metadata: {{type: int}}}}' if prop == "setpoint" else ""
            props.append(f"""  - name: {prop}{desired}
    visitors: {{protocolName: modbus, configData: {{register: {reg}, offset: {j}, limit: 1}}}}
    collectCycle: 10000
    reportCycle: 10000
    reportToCloud: true""")
        docs.append(f"""apiVersion: devices.kubeedge.io/v1beta1
kind: Device
metadata: {{name: fp-dev-{i}, namespace: default}}
spec:
  deviceModelRef: {{name: fp-thermostat-model}}
  nodeName: {NODE}
  protocol:
    protocolName: modbus
    configData: {{ip: 127.0.0.1, port: 5020, slaveID: {1 + i % 247}, timeout: 1000}}
  properties:
""" + "\n".join(props) + "\n")
    return "---\n".join(docs)


def write_atomic(path, text):
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def device_rows(db):
    """(Device objects, DeviceModel objects, twin `device` rows) in the edge's database, read
    only; None while unreadable."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            q = "SELECT count(*) FROM meta WHERE type = ?"
            return (con.execute(q, ("device",)).fetchone()[0], con.execute(q, ("devicemodel",)).fetchone()[0],
                    con.execute("SELECT count(*) FROM device").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return None


class Ctr:
    def __init__(self, socket_path):
        self.base = ["ctr", "-a", socket_path, "-n", "k8s.io"]

    def tasks(self):
        """{container id: status} of every task in the k8s.io namespace."""
        out = subprocess.run(self.base + ["tasks", "ls"], capture_output=True, text=True, timeout=30)
        tasks = {}
        for line in out.stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 3:
                tasks[parts[0]] = parts[2]
        return tasks

    def pod_uid(self, cid):
        out = subprocess.run(self.base + ["containers", "info", cid], capture_output=True, text=True,
                             timeout=30)
        try:
            return json.loads(out.stdout).get("Labels", {}).get("io.kubernetes.pod.uid")
        except ValueError:
            return None

    def ours(self, uids):
        """Tasks (sandboxes and containers) of the pods with these uids: {id: status}."""
        return {cid: st for cid, st in self.tasks().items() if self.pod_uid(cid) in uids}

    def kill(self, cid):
        subprocess.run(self.base + ["tasks", "kill", "-s", "SIGKILL", cid], capture_output=True,
                       timeout=30)


def descendant(root, exe):
    """The pid of a descendant of `root` running `exe`, if any."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError):
                pass
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        try:
            if os.path.realpath(f"/proc/{pid}/exe") == exe:
                return pid
        except OSError:
            pass
        todo.extend(children.get(pid, []))
    return None


class Proc:
    def __init__(self, name, argv, logpath, env=None, wrap=None):
        """`wrap` (argv prefix, e.g. heaptrack): the process measured and signalled is then the
        wrapper's descendant running argv[0]."""
        self.name = name
        self.logf = open(logpath, "ab")
        full_env = dict(os.environ)
        full_env.setdefault("RUST_LOG", "info,rumqttd=warn")
        full_env.update(env or {})
        self.p = subprocess.Popen((wrap or []) + argv, stdin=subprocess.DEVNULL, stdout=self.logf,
                                  stderr=self.logf, env=full_env)
        self.pid = self.p.pid
        self.wrapped = bool(wrap)
        if wrap:
            exe = os.path.realpath(argv[0])
            self.pid = wait(f"{name} started under {wrap[0]}", lambda: descendant(self.p.pid, exe), 30, 0.1)

    def alive(self):
        return self.p.poll() is None and os.path.exists(f"/proc/{self.pid}")

    def stop(self, timeout=15):
        if self.wrapped:
            timeout = 120  # the wrapper may have work left after the process ends
        if self.p.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} did not stop on SIGTERM within {timeout} s: SIGKILL")
                self.p.kill()
                self.p.wait(10)
        self.logf.close()


def sample(procs, window, interval, smaps_of=None, referenced=False):
    """Samples /proc/<pid>/status of each process every `interval` s for `window` s. With
    `referenced`, also what of edgecore's RSS was accessed during the window (its accessed
    bits cleared through /proc/<pid>/clear_refs at the start)."""
    rows = {name: [] for name in procs}
    if referenced:
        with open(f"/proc/{procs['edgecore'].pid}/clear_refs", "w") as f:
            f.write("1")
    ticks0 = {name: cpu_ticks(p.pid) for name, p in procs.items()}
    t0 = time.time()
    while True:
        for name, p in procs.items():
            if not p.alive():
                raise RuntimeError(f"{name} exited while being measured")
            rows[name].append(proc_status(p.pid))
        if time.time() - t0 >= window:
            break
        time.sleep(interval)
    elapsed = time.time() - t0
    result = {}
    for name, p in procs.items():
        samples = rows[name]
        r = {"samples": len(samples),
             "cpu_pct": 100.0 * (cpu_ticks(p.pid) - ticks0[name]) / CLK_TCK / elapsed}
        for key in ("VmRSS", "RssAnon", "RssFile", "Threads"):
            values = [s[key] for s in samples]
            r[key] = {"median": statistics.median(values), "max": max(values), "min": min(values)}
        r["VmHWM"] = samples[-1]["VmHWM"]
        result[name] = r
    if smaps_of:
        name, binary = smaps_of
        result[name]["smaps"] = smaps(procs[name].pid, binary)
        if referenced:
            result[name]["referenced"] = smaps(procs[name].pid, binary, "Referenced")
    return result


def show(stage, result):
    for name, r in result.items():
        print(f"{stage:8} {name:9} VmRSS median {r['VmRSS']['median'] / 1024:6.2f} MiB "
              f"(min {r['VmRSS']['min'] / 1024:.2f}, max {r['VmRSS']['max'] / 1024:.2f}; "
              f"{r['VmRSS']['median']:.0f} KiB) | RssAnon {r['RssAnon']['median'] / 1024:5.2f} MiB "
              f"(max {r['RssAnon']['max'] / 1024:.2f}) | RssFile {r['RssFile']['median'] / 1024:5.2f} MiB "
              f"| threads {r['Threads']['median']:.0f} | CPU {r['cpu_pct']:.2f} % | "
              f"VmHWM {r['VmHWM'] / 1024:.2f} MiB | {r['samples']} samples", flush=True)
        if "smaps" in r:
            ref = r.get("referenced")
            if ref:
                print(f"{'':8} {'':9}   {'':38} {'RSS':>11} {'accessed in the window':>24}")
            for kind, kib in sorted(r["smaps"].items(), key=lambda kv: -kv[1]):
                extra = f" {ref.get(kind, 0):20} KiB" if ref else ""
                print(f"{'':8} {'':9}   {kind:38} {kib:7} KiB{extra}", flush=True)
            if ref:
                print(f"{'':8} {'':9}   {'total':38} {sum(r['smaps'].values()):7} KiB"
                      f" {sum(ref.values()):20} KiB", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_bins = os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release")
    ap.add_argument("--bin-dir", default=default_bins)
    ap.add_argument("--cri", default="unix:///tmp/edged-ctrd/containerd.sock")
    ap.add_argument("--pods", type=int, default=10)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--settle", type=float, default=5, help="seconds after a state is reached")
    ap.add_argument("--window", type=float, default=20, help="seconds of sampling per state")
    ap.add_argument("--interval", type=float, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="edit the generated edgecore.yaml (dotted key)")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="environment of edgecore")
    ap.add_argument("--edgecore", help="another edgecore binary (default: BIN_DIR/edgecore)")
    ap.add_argument("--wrap", help="run edgecore under this command (e.g. 'heaptrack -o FILE'); "
                    "its figures then include the wrapper's cost")
    ap.add_argument("--mosquitto", action="store_true",
                    help="the EventBus on an external mosquitto (mqttMode 2, KubeEdge's default) "
                    "started on a free port, instead of the embedded broker; its RSS is reported too")
    ap.add_argument("--wrap-cloudcore", help="run cloudcore under this command")
    ap.add_argument("--smaps", action="store_true", help="edgecore's RSS by mapping in each state")
    ap.add_argument("--referenced", action="store_true",
                    help="with --smaps: also what of it was accessed during the window (clear_refs)")
    ap.add_argument("--sections", action="store_true",
                    help="edgecore's binary: mapped and resident KiB by ELF section in each state (pagemap)")
    ap.add_argument("--text-by-crate", action="store_true",
                    help="print edgecore's code size by crate (nm) and exit")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()

    cloudcore = os.path.join(args.bin_dir, "cloudcore")
    edgecore = args.edgecore or os.path.join(args.bin_dir, "edgecore")
    for b in (cloudcore, edgecore):
        if not os.access(b, os.X_OK):
            sys.exit(f"{b}: not found (cargo build --release -p kubeedge-examples --bin cloudcore --bin edgecore)")
    if args.text_by_crate:
        sizes = text_by_crate(edgecore)
        print(f"{edgecore}: {sum(sizes.values())} KiB of code symbols")
        for crate, kib in sorted(sizes.items(), key=lambda kv: -kv[1])[:40]:
            print(f"{kib:7} KiB  {crate}")
        return 0
    cri_socket = args.cri.removeprefix("unix://")
    if not os.path.exists(cri_socket):
        sys.exit(f"{cri_socket}: no containerd (scripts/containerd-env.sh up)")
    ctr = Ctr(cri_socket)
    edge_env = dict(kv.split("=", 1) for kv in args.env)

    work = tempfile.mkdtemp(prefix="edge-footprint-")
    pki, manifests, status, root = (os.path.join(work, d) for d in ("pki", "manifests", "status", "edge"))
    os.makedirs(manifests)
    hub, https, cloud_metrics, edge_metrics, mqtt = (free_port() for _ in range(5))
    log(f"work directory {work}; cloudhub 127.0.0.1:{hub}, join {https}, edge metrics {edge_metrics}, "
        f"mqtt {mqtt}")

    cloud = edge = broker = None
    pods_written = False
    uids, containers = set(), {}
    results = {"config": {"set": args.set, "env": args.env, "pods": args.pods, "devices": args.devices,
                          "settle": args.settle, "window": args.window, "edgecore": edgecore},
               "states": {}}
    pods_file, devices_file = os.path.join(manifests, "pods.yaml"), os.path.join(manifests, "devices.yaml")
    ok = False
    try:
        cloud = Proc("cloudcore", [
            cloudcore, f"--pki-dir={pki}", f"--listen=127.0.0.1:{hub}", f"--https-listen=127.0.0.1:{https}",
            "--advertise-address=127.0.0.1", f"--metrics-listen=127.0.0.1:{cloud_metrics}",
            f"--manifests={manifests}", f"--status-dir={status}", "--scan-interval-ms=200",
        ], os.path.join(work, "cloudcore.log"), wrap=args.wrap_cloudcore.split() if args.wrap_cloudcore else None)
        wait("cloudcore serving", lambda: metric(cloud_metrics, "cloudcore_connected_nodes") is not None, 30)
        token = subprocess.run([cloudcore, "gettoken", f"--pki-dir={pki}"], capture_output=True, text=True,
                               timeout=30, check=True).stdout.strip()
        join = subprocess.run([
            edgecore, "join", f"--cloudcore=127.0.0.1:{hub}", f"--https-port={https}", f"--token={token}",
            f"--node={NODE}", f"--root={root}", f"--cri-endpoint={args.cri}",
            f"--mqtt-internal=tcp://127.0.0.1:{mqtt}", f"--metrics-listen=127.0.0.1:{edge_metrics}",
        ], capture_output=True, text=True, timeout=60)
        if join.returncode != 0:
            raise RuntimeError(f"edgecore join: {join.stderr}")
        config = os.path.join(root, "config", "edgecore.yaml")
        if args.mosquitto:
            port = free_port()
            conf = os.path.join(work, "mosquitto.conf")
            with open(conf, "w") as f:
                f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n")
            broker = Proc("mosquitto", ["mosquitto", "-c", conf], os.path.join(work, "mosquitto.log"))
            args.set = [f"modules.eventBus.mqttMode=2",
                        f"modules.eventBus.mqttServerExternal=tcp://127.0.0.1:{port}"] + args.set
        if args.set:
            with open(config) as f:
                text = f.read()
            for kv in args.set:
                key, value = kv.split("=", 1)
                text = set_yaml(text, key, value)
            with open(config, "w") as f:
                f.write(text)
            log(f"edgecore.yaml: {', '.join(args.set)}")
        with open(config) as f:
            text = f.read()
        edged_on = re.search(r"^  edged:\n(?:    .*\n)*?    enable: true", text, re.M) is not None
        twin_on = all(re.search(rf"^  {m}:\n(?:    .*\n)*?    enable: true", text, re.M)
                      for m in ("deviceTwin", "eventBus"))

        edge = Proc("edgecore", [edgecore, f"--root={root}"], os.path.join(work, "edgecore.log"), edge_env,
                    args.wrap.split() if args.wrap else None)
        procs = {"edgecore": edge, "cloudcore": cloud}
        if broker:
            procs["mosquitto"] = broker
        wait("edgecore connected", lambda: metric(edge_metrics, "edgecore_connected") == 1, 60)
        if edged_on:
            wait("the node registered in the cloud",
                 lambda: os.path.exists(os.path.join(status, "nodes", f"{NODE}.json")), 60)

        def measure(stage):
            log(f"{stage}: settling {args.settle} s, then sampling {args.window} s")
            time.sleep(args.settle)
            r = sample(procs, args.window, args.interval, ("edgecore", edgecore) if args.smaps else None,
                       args.referenced)
            r["edgecore"]["applied"] = metric(edge_metrics, "edgecore_cloud_applied_total")
            r["edgecore"]["outbox"] = metric(edge_metrics, "edgecore_outbox_messages")
            results["states"][stage] = r
            show(stage, r)
            if args.sections:
                secs = resident_sections(edge.pid, edgecore)
                r["edgecore"]["sections"] = secs
                for name, (mapped, resident) in sorted(secs.items(), key=lambda kv: -kv[1][0]):
                    print(f"{'':8} {'':9}   {name:24} mapped {mapped:7} KiB, resident {resident:7} KiB")

        measure("idle")

        if args.pods and edged_on:
            write_atomic(pods_file, pods_yaml(args.pods))
            pods_written = True

            def all_running():
                for i in range(args.pods):
                    pod = read_json(os.path.join(status, "pods", f"default_{POD_PREFIX}{i}.json"))
                    if not pod or pod.get("status", {}).get("phase") != "Running":
                        return False
                    uids.add(pod["metadata"]["uid"])
                    for c in pod["status"].get("containerStatuses", []):
                        if c.get("containerID"):
                            containers[c["containerID"].removeprefix("containerd://")] = pod["metadata"]["name"]
                return True

            t0 = time.time()
            wait(f"{args.pods} pods Running", all_running, 240)
            results["pods_running_after_s"] = round(time.time() - t0, 1)
            measure("pods")
        elif args.pods:
            log("edged disabled: no pods state")

        if args.devices:
            before = metric(edge_metrics, "edgecore_cloud_applied_total") or 0
            write_atomic(devices_file, devices_yaml(args.devices))
            db = os.path.join(root, "edgecore.db")
            # Device objects are stored by the MetaManager whatever the twin; the twin adds a
            # `device` row per member (the cloud's membership update).
            want = (args.devices, 1, args.devices if twin_on else 0)
            wait(f"{args.devices} Devices and the DeviceModel stored on the edge"
                 + (f", {args.devices} twin members" if twin_on else ""),
                 lambda: device_rows(db) == want, 120)
            last = {"v": None, "since": time.time()}

            def applied_still():
                v = metric(edge_metrics, "edgecore_cloud_applied_total")
                if v != last["v"]:
                    last["v"], last["since"] = v, time.time()
                return v is not None and v > before and time.time() - last["since"] >= 3

            wait("edgecore_cloud_applied_total unchanged for 3 s", applied_still, 120)
            results["devices_applied"] = last["v"] - before
            log(f"device state reached: {last['v'] - before} messages applied, (Device, DeviceModel, twin member rows) = {device_rows(db)}")
            measure("devices")
        ok = True
    finally:
        # Cleanup: the pods go through the cloud's graceful delete and the edge.
        try:
            # Every pod the cloud has a status for (Running or not, e.g. after a failed wait).
            for n in range(args.pods):
                pod = read_json(os.path.join(status, "pods", f"default_{POD_PREFIX}{n}.json")) or {}
                if pod.get("metadata", {}).get("uid"):
                    uids.add(pod["metadata"]["uid"])
                for c in pod.get("status", {}).get("containerStatuses") or []:
                    if c.get("containerID"):
                        containers[c["containerID"].removeprefix("containerd://")] = pod["metadata"]["name"]
            for f in (devices_file, pods_file):
                if os.path.exists(f):
                    os.remove(f)
            if uids and edge and edge.alive():
                def pods_gone():
                    running = [cid for cid, st in ctr.tasks().items() if cid in containers and st == "RUNNING"]
                    left = [n for n in range(args.pods)
                            if os.path.exists(os.path.join(status, "pods", f"default_{POD_PREFIX}{n}.json"))]
                    return not running and not left
                try:
                    wait("the pods deleted (containers stopped, pod objects gone)", pods_gone, 120, every=1)
                except TimeoutError as e:
                    log(str(e))
                try:
                    wait("no task of this run's pods left (sandboxes included)", lambda: not ctr.ours(uids), 60,
                         every=2)
                except TimeoutError as e:
                    log(str(e))
        finally:
            for p in (edge, cloud, broker):
                if p:
                    p.stop()
        if uids:
            left = ctr.ours(uids)
            if left:
                log(f"tasks of this run's pods still there after the edge stopped: {left}; killing them")
                for cid in left:
                    ctr.kill(cid)
                ok = False
            else:
                log("ctr: no task of this run's pods left")
            results["tasks_left"] = left
        if pods_written and not uids:
            log(f"pods of this run may be left without a status in the cloud: check "
                f"`ctr -a {cri_socket} -n k8s.io containers ls` for pods named {POD_PREFIX}*")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
        if args.keep or not ok:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
