#!/usr/bin/env bash
# A real CRI endpoint (containerd's CRI plugin, runtime.v1) for kubeedge-edged's tests and CI,
# on Debian 12 as root, without Docker, systemd or a container registry.
#
# Usage:
#   scripts/containerd-env.sh up     install the packages if missing, build two test images,
#                                    start containerd, import the images, run a smoke container
#   scripts/containerd-env.sh down   remove every container and sandbox, stop containerd and its
#                                    shims, unmount, delete the bridge and the directory; leaves
#                                    no process, mount, netns or bridge behind, also when
#                                    containerd had died (it is restarted to clean up, and runc
#                                    deletes what is left if even that fails)
# `up` on a running environment does nothing; `up` over a dead one runs `down` first.
# Assumes no other containerd uses $EDGED_CTRD_DIR or the bridge name edgedbr0.
#
# After `up`:
#   CRI endpoint  unix://$EDGED_CTRD_DIR/containerd.sock  (default /tmp/edged-ctrd/containerd.sock)
#   images        edged.test/busybox:1 (Cmd ["sh"]; busybox has sh, httpd, nc, sleep, ...)
#                 edged.test/pause:1   (Cmd ["sleep","infinity"]; the sandbox image)
#                 both in containerd namespace k8s.io, where the CRI plugin looks
#   pod network   CNI bridge edgedbr0 + host-local IPAM, pods get 10.88.77.0/24 and the host
#                 reaches them through the bridge (the gateway 10.88.77.1)
#
# Facts this setup depends on (measured on Debian 12, containerd 1.6.20, runc 1.1.5):
# - PullImage always asks the registry; nothing is pulled, the images are built here as OCI
#   archives (tar + gzip + sha256sum) from busybox-static and imported with ctr.
# - The machine's capability bounding set lacks CAP_SYS_RESOURCE, so runc cannot set the
#   negative oom_score_adj containerd asks for (-998 for sandboxes):
#   restrict_oom_score_adj = true clamps it at 0.
# - Pod networking needs a CNI config that gives eth0 an IP (a loopback-only one fails).
# - netns_mounts_under_state_dir keeps the pods' network namespaces under $D/state, so `down`
#   finds exactly its own and never touches /var/run/netns.
set -euo pipefail

D=${EDGED_CTRD_DIR:-/tmp/edged-ctrd}
SOCK=$D/containerd.sock
BRIDGE=edgedbr0
SUBNET=10.88.77.0/24

ctr_() { ctr -a "$SOCK" "$@"; }
log() { printf 'containerd-env: %s\n' "$*" >&2; }

# mkimage ROOTFS NAME OUT CMD_JSON: a single-layer OCI image archive for `ctr images import`.
mkimage() {
    local rootfs=$1 name=$2 out=$3 cmd=$4 w
    w=$(mktemp -d)
    mkdir -p "$w/blobs/sha256"
    sha() { sha256sum "$1" | cut -d' ' -f1; }
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$rootfs" -cf "$w/layer.tar" .
    local diff_id layer layer_size config config_size manifest manifest_size
    diff_id=$(sha "$w/layer.tar")
    gzip -n -c "$w/layer.tar" >"$w/layer.tgz"
    rm "$w/layer.tar"
    layer=$(sha "$w/layer.tgz")
    layer_size=$(stat -c %s "$w/layer.tgz")
    mv "$w/layer.tgz" "$w/blobs/sha256/$layer"
    printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
        "$cmd" "$diff_id" >"$w/config"
    config=$(sha "$w/config")
    config_size=$(stat -c %s "$w/config")
    mv "$w/config" "$w/blobs/sha256/$config"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
        "$config" "$config_size" "$layer" "$layer_size" >"$w/manifest"
    manifest=$(sha "$w/manifest")
    manifest_size=$(stat -c %s "$w/manifest")
    mv "$w/manifest" "$w/blobs/sha256/$manifest"
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
        "$manifest" "$manifest_size" "$name" "${name##*:}" >"$w/index.json"
    echo '{"imageLayoutVersion":"1.0.0"}' >"$w/oci-layout"
    tar -C "$w" -cf "$out" oci-layout index.json blobs
    rm -rf "$w"
}

# Is the containerd of $D alive (not a zombie, and not another process that got its PID)?
running() {
    [[ -f "$D/containerd.pid" ]] || return 1
    local pid state
    pid=$(cat "$D/containerd.pid")
    state=$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]] &&
        { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF -- "--config $D/config.toml"
}

# "<namespace> <id>" of every task containerd started for $D (its task state directories).
own_tasks() {
    local dir
    for dir in "$D"/state/io.containerd.runtime.v2.task/*/*; do
        [[ -d $dir ]] && echo "$(basename "$(dirname "$dir")") $(basename "$dir")"
    done
    return 0
}

# Starts containerd on $D/config.toml and waits until it answers (at most 10 s).
start_containerd() {
    mkdir -p "$D/logs"
    containerd --config "$D/config.toml" >>"$D/logs/containerd.log" 2>&1 </dev/null &
    echo $! >"$D/containerd.pid"
    for _ in $(seq 100); do
        ctr_ version >/dev/null 2>&1 && return 0
        running || break
        sleep 0.1
    done
    log "containerd did not answer on $SOCK; the end of its log:"
    tail -n 40 "$D/logs/containerd.log" >&2
    return 1
}

up() {
    if [[ $(id -u) != 0 ]]; then
        log "must run as root (containerd, runc and CNI need it)"
        exit 1
    fi
    if running && ctr_ version >/dev/null 2>&1; then
        log "already up: CRI endpoint unix://$SOCK (containerd pid $(cat "$D/containerd.pid"))"
        return 0
    fi
    # A directory left by an earlier run that died: clean it first.
    [[ -e "$D" ]] && down

    if ! command -v containerd >/dev/null || ! command -v runc >/dev/null ||
        [[ ! -x /usr/lib/cni/bridge || ! -x /usr/lib/cni/host-local || ! -x /bin/busybox ]]; then
        log "installing containerd runc containernetworking-plugins busybox-static"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends \
            containerd runc containernetworking-plugins busybox-static >/dev/null
    fi

    mkdir -p "$D"/{root,state,opt,cni/net.d,cni/ipam,logs,img/rootfs/bin}
    # The test rootfs: static busybox and its applets.
    local r=$D/img/rootfs
    cp /bin/busybox "$r/bin/"
    mkdir -p "$r"/{etc,proc,sys,dev,tmp,root,var/www}
    chmod 1777 "$r/tmp"
    local applet
    for applet in $(/bin/busybox --list); do
        [[ $applet == busybox ]] || ln -sf busybox "$r/bin/$applet"
    done
    echo 'root:x:0:0:root:/root:/bin/sh' >"$r/etc/passwd"
    echo 'root:x:0:' >"$r/etc/group"
    mkimage "$r" edged.test/busybox:1 "$D/img/busybox.tar" '["sh"]'
    mkimage "$r" edged.test/pause:1 "$D/img/pause.tar" '["sleep","infinity"]'
    # The image of the pod in the captured KubeEdge traffic (kubeedge-proto/tests/vectors), so
    # that edged can replay that traffic without a registry. Its own command keeps its image id
    # apart from edged.test/busybox:1 (one id with two names would be reported by either name).
    mkimage "$r" docker.io/library/busybox:1.36 "$D/img/busybox-1.36.tar" '["/bin/sh"]'

    cat >"$D/config.toml" <<EOT
version = 2
root = "$D/root"
state = "$D/state"
[grpc]
  address = "$SOCK"
[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "edged.test/pause:1"
    # No CAP_SYS_RESOURCE in the bounding set: a negative oom_score_adj fails in runc.
    restrict_oom_score_adj = true
    # Pods' network namespaces under $D/state/netns instead of /var/run/netns.
    netns_mounts_under_state_dir = true
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "$D/cni/net.d"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
  [plugins."io.containerd.internal.v1.opt"]
    path = "$D/opt"
EOT
    cat >"$D/cni/net.d/10-edged.conflist" <<EOT
{"cniVersion":"0.4.0","name":"edged-test","plugins":[{"type":"bridge","bridge":"$BRIDGE","isGateway":true,"ipMasq":false,
 "ipam":{"type":"host-local","ranges":[[{"subnet":"$SUBNET"}]],"routes":[{"dst":"0.0.0.0/0"}],"dataDir":"$D/cni/ipam"}}]}
EOT

    start_containerd || exit 1
    ctr_ -n k8s.io images import "$D/img/busybox.tar" >/dev/null
    ctr_ -n k8s.io images import "$D/img/pause.tar" >/dev/null
    ctr_ -n k8s.io images import "$D/img/busybox-1.36.tar" >/dev/null
    local out
    out=$(ctr_ -n k8s.io run --rm edged.test/busybox:1 edged-env-smoke echo runtime-ok)
    if [[ $out != runtime-ok ]]; then
        log "smoke container printed ${out@Q}, not 'runtime-ok'"
        exit 1
    fi
    log "up: CRI endpoint unix://$SOCK (containerd pid $(cat "$D/containerd.pid"))"
}

# PIDs of the processes started for this directory: containerd and its shims (the shims are
# started with `-address $SOCK` and outlive containerd).
own_pids() {
    local p
    for p in /proc/[0-9]*; do
        { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -qF -- "-address $SOCK " && echo "${p#/proc/}"
    done
    return 0
}

down() {
    # containerd died and left its containers running: start it again on the same state, so it
    # can remove them properly.
    if ! running && [[ -f "$D/config.toml" && -n "$(own_pids)$(own_tasks)" ]]; then
        log "containerd is not running but its containers may be: restarting it to clean up"
        start_containerd || true
    fi
    if running; then
        # Remove everything through containerd first; it tears down what it set up.
        local ns t c
        for ns in k8s.io default; do
            for t in $(ctr_ -n "$ns" tasks ls -q 2>/dev/null); do
                ctr_ -n "$ns" tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
            done
            for t in $(ctr_ -n "$ns" tasks ls -q 2>/dev/null); do
                ctr_ -n "$ns" tasks delete -f "$t" >/dev/null 2>&1 || true
            done
            for c in $(ctr_ -n "$ns" containers ls -q 2>/dev/null); do
                ctr_ -n "$ns" containers delete "$c" >/dev/null 2>&1 || true
            done
        done
        local pid
        pid=$(cat "$D/containerd.pid")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do running || break; sleep 0.1; done
        running && kill -KILL "$pid" 2>/dev/null
    fi
    # What survived (containerd could not be started again): delete the containers with runc
    # (it kills their processes and removes their cgroups), then end the shims by PID and remove
    # their sockets (/run/containerd/s/<sha256 of "$SOCK/<namespace>/<id>">, fixed in 1.6).
    local ns id p
    while read -r ns id; do
        [[ -n $id ]] || continue
        runc --root "/run/containerd/runc/$ns" delete -f "$id" >/dev/null 2>&1 || true
        rm -f "/run/containerd/s/$(printf '%s' "$SOCK/$ns/$id" | sha256sum | cut -d' ' -f1)"
    done < <(own_tasks)
    for p in $(own_pids); do kill -KILL "$p" 2>/dev/null || true; done
    # Mounts under $D: rootfs overlays, shm, the pods' network namespaces (deepest first).
    if [[ -n $D && -d $D ]]; then
        awk -v d="$D/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r |
            while read -r m; do umount -l "$m" 2>/dev/null || true; done
    fi
    ip link delete "$BRIDGE" 2>/dev/null || true
    # The empty parent cgroups containerd made for the pods (rmdir fails on any non-empty one).
    rmdir /sys/fs/cgroup/*/k8s.io 2>/dev/null || true
    # The shims' fixed directories, if empty (a system containerd would keep them in use).
    rmdir /run/containerd/runc/k8s.io /run/containerd/runc/default /run/containerd/runc \
        /run/containerd/fifo /run/containerd/s /run/containerd 2>/dev/null || true
    rm -rf "$D"
    log "down: $D removed"
}

case "${1:-}" in
up) up ;;
down) down ;;
*)
    echo "usage: $0 up|down" >&2
    exit 2
    ;;
esac
