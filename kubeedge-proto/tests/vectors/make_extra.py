#!/usr/bin/env python3
"""Generate extra-v1.22.jsonl: KubeEdge v1.22 WebSocket messages missing from the real capture.

The capture in ws-v1.22.2.jsonl was taken with edged disabled, so it has no node registration,
no status patches, no lease and no edge->cloud queries. This script builds those messages the way
KubeEdge v1.22 (cloudcore + edgecore, vendoring Kubernetes v1.32.10) produces them, and writes
them as JSON Lines: one record per line,

    {"name": ..., "dir": "edge->cloud" | "cloud->edge", "note": ..., "payload": "<text>\\n"}

where `payload` is the exact WebSocket text frame: Go `json.Marshal(msg)` plus the "\\n" that
gorilla's `WriteJSON` appends.

These are *synthetic* vectors (only the capture is real). The KubeEdge-level facts (routes,
resources, header keys, message ids and parents, content shapes, which replies get an "OK" ACK)
follow the KubeEdge sources; the Kubernetes object bodies (quantities, digests, times) are
plausible values, not copied from a live cluster. See each record's `note`.

Usage: python3 make_extra.py          # writes extra-v1.22.jsonl next to this file and validates it
       python3 make_extra.py --check  # only validates the existing file (and the real capture)

Stdlib only, deterministic: fixed UUIDs (derived from names), fixed timestamps.
"""

import datetime
import hashlib
import json
import os
import sys
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "extra-v1.22.jsonl")
CAPTURE = os.path.join(HERE, "ws-v1.22.2.jsonl")

NODE = "ke-edge-test"

# --------------------------------------------------------------------------------------------
# Go encoding/json compatible encoder (json.Marshal: compact, HTML-escaping on).
# --------------------------------------------------------------------------------------------

_SHORT = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t",
          "\b": "\\b", "\f": "\\f"}  # \b and \f short forms: Go >= 1.22


def go_str(s):
    """Quote a string the way Go's encoding/json does with escapeHTML=true."""
    out = ['"']
    for ch in s:
        c = ord(ch)
        if ch in _SHORT:
            out.append(_SHORT[ch])
        elif c < 0x20:
            out.append("\\u%04x" % c)  # lowercase hex, as Go
        elif ch in "<>&":
            out.append("\\u%04x" % c)  # \u003c \u003e \u0026
        elif c in (0x2028, 0x2029):
            out.append("\\u%04x" % c)  # \u2028 \u2029
        elif 0xD800 <= c <= 0xDFFF:
            raise ValueError("lone surrogate cannot be valid UTF-8: %r" % s)
        else:
            out.append(ch)  # everything else raw (incl. DEL 0x7f and U+FFFD)
    out.append('"')
    return "".join(out)


def go_json(v):
    """Encode a value (dicts keep insertion order = Go struct field order) like json.Marshal."""
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        raise TypeError("floats are not used in these vectors (Go's float format differs)")
    if isinstance(v, str):
        return go_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(go_json(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(go_str(k) + ":" + go_json(x) for k, x in v.items()) + "}"
    raise TypeError("cannot encode %r" % type(v))


def go_map(d):
    """A Go map[string]...: json.Marshal sorts map keys (byte order; code-point order for str)."""
    return {k: d[k] for k in sorted(d)}


def sorted_deep(v):
    """Sort every object's keys recursively: what json.Marshal gives for map[string]interface{}
    (e.g. a strategic-merge patch built by CreateTwoWayMergePatch)."""
    if isinstance(v, dict):
        return {k: sorted_deep(v[k]) for k in sorted(v)}
    if isinstance(v, list):
        return [sorted_deep(x) for x in v]
    return v


# --------------------------------------------------------------------------------------------
# Deterministic ids and times.
# --------------------------------------------------------------------------------------------

def uid(name):
    """A fixed UUID v4 (random-looking, version/variant bits set) derived from a name."""
    return str(uuid.UUID(bytes=hashlib.sha256(b"kubeedge-rs extra vectors/" + name.encode()).digest()[:16],
                         version=4))


def rfc3339(ms):
    """metav1.Time: second precision, UTC, 'Z'."""
    t = datetime.datetime.fromtimestamp(ms // 1000, tz=datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def micro(us):
    """metav1.MicroTime: 2006-01-02T15:04:05.000000Z07:00."""
    t = datetime.datetime.fromtimestamp(us // 1_000_000, tz=datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + ".%06dZ" % (us % 1_000_000)


T0 = 1795408500000  # 2026-11-23T04:35:00Z, a few minutes after the real capture
NODE_CREATED = T0 + 126  # when the apiserver created the Node (first registration)


# --------------------------------------------------------------------------------------------
# Beehive message model.
# --------------------------------------------------------------------------------------------

def message(msg_id, ts, route, content, parent=None, rv=None):
    header = {"msg_id": msg_id}
    if parent:
        header["parent_msg_id"] = parent
    header["timestamp"] = ts
    if rv:
        header["resourceversion"] = rv
    r = {}
    for k in ("source", "group", "operation", "resource"):  # "destination" never on the wire
        if route.get(k):
            r[k] = route[k]
    return {"header": header, "route": r, "content": content}


def route(source, group, operation, resource):
    return {"source": source, "group": group, "operation": operation, "resource": resource}


def resp_by_message(req_msg, msg_id, ts, content):
    """beehive model.NewRespByMessage(req, content): new id, parent = req id, source/group/resource
    copied from req, operation "response"."""
    rr = req_msg["route"]
    return message(msg_id, ts, route(rr.get("source"), rr.get("group"), "response", rr.get("resource")),
                   content, parent=req_msg["header"]["msg_id"])


# --------------------------------------------------------------------------------------------
# Kubernetes objects (Go struct field order; maps sorted).
# --------------------------------------------------------------------------------------------

NODE_UID = uid("node/ke-edge-test")
NODE_IP = "192.0.2.2"  # the VM's address in the capture (Node annotation cloudcore: 192.0.2.2)

NODE_LABELS = go_map({
    "beta.kubernetes.io/arch": "amd64",
    "beta.kubernetes.io/os": "linux",
    "kubernetes.io/arch": "amd64",
    "kubernetes.io/hostname": NODE,
    "kubernetes.io/os": "linux",
    "node-role.kubernetes.io/agent": "",
    "node-role.kubernetes.io/edge": "",
})
NODE_ANNOTATIONS = go_map({"volumes.kubernetes.io/controller-managed-attach-detach": "true"})

CAPACITY = go_map({"cpu": "4", "ephemeral-storage": "61202244Ki", "hugepages-1Gi": "0",
                   "hugepages-2Mi": "0", "memory": "8131448Ki", "pods": "110"})
ALLOCATABLE = go_map({"cpu": "4", "ephemeral-storage": "56403988070", "hugepages-1Gi": "0",
                      "hugepages-2Mi": "0", "memory": "8029048Ki", "pods": "110"})

NODE_INFO = {
    "machineID": hashlib.md5(b"ke-edge-test machine-id").hexdigest(),
    "systemUUID": uid("node/system-uuid"),
    "bootID": uid("node/boot-id"),
    "kernelVersion": "6.1.0-27-amd64",
    "osImage": "Debian GNU/Linux 12 (bookworm)",
    "containerRuntimeVersion": "containerd://1.7.24",
    "kubeletVersion": "v1.32.10-kubeedge-v1.22.2",
    "kubeProxyVersion": "",
    "operatingSystem": "linux",
    "architecture": "amd64",
    "swap": {"capacity": 0},
}


def node_conditions(hb_ms, ready):
    t = rfc3339(hb_ms)
    conds = [
        {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": t, "lastTransitionTime": rfc3339(T0),
         "reason": "KubeletHasSufficientMemory", "message": "kubelet has sufficient memory available"},
        {"type": "DiskPressure", "status": "False", "lastHeartbeatTime": t, "lastTransitionTime": rfc3339(T0),
         "reason": "KubeletHasNoDiskPressure", "message": "kubelet has no disk pressure"},
        {"type": "PIDPressure", "status": "False", "lastHeartbeatTime": t, "lastTransitionTime": rfc3339(T0),
         "reason": "KubeletHasSufficientPID", "message": "kubelet has sufficient PID available"},
    ]
    if ready:
        conds.append({"type": "Ready", "status": "True", "lastHeartbeatTime": t, "lastTransitionTime": t,
                      "reason": "KubeletReady", "message": "kubelet is posting ready status"})
    else:
        conds.append({"type": "Ready", "status": "False", "lastHeartbeatTime": t, "lastTransitionTime": t,
                      "reason": "KubeletNotReady",
                      "message": "container runtime status check may not have completed yet"})
    return conds


def node_status(hb_ms, ready):
    return {
        "capacity": CAPACITY,
        "allocatable": ALLOCATABLE,
        "conditions": node_conditions(hb_ms, ready),
        "addresses": [{"type": "InternalIP", "address": NODE_IP}, {"type": "Hostname", "address": NODE}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10350}},
        "nodeInfo": NODE_INFO,
    }


def kubelet_initial_node(ms):
    """kubelet initialNode() + setNodeStatus(): built in Go without TypeMeta, so no kind/apiVersion,
    and the zero creationTimestamp marshals as null."""
    return {
        "metadata": {"name": NODE, "creationTimestamp": None, "labels": NODE_LABELS,
                     "annotations": NODE_ANNOTATIONS},
        "spec": {},
        "status": node_status(ms, ready=False),
    }


def fields_keys(prefix, keys):
    d = {".": {}}
    for k in sorted(keys):
        d[prefix + k] = {}
    return d


NODE_CREATE_FIELDS = {
    "f:metadata": {
        "f:annotations": fields_keys("f:", NODE_ANNOTATIONS),
        "f:labels": fields_keys("f:", NODE_LABELS),
    },
    "f:spec": {"f:taints": {}},
    "f:status": {
        "f:addresses": {
            ".": {},
            'k:{"type":"Hostname"}': {".": {}, "f:address": {}, "f:type": {}},
            'k:{"type":"InternalIP"}': {".": {}, "f:address": {}, "f:type": {}},
        },
        "f:allocatable": fields_keys("f:", ALLOCATABLE),
        "f:capacity": fields_keys("f:", CAPACITY),
        "f:conditions": dict([(".", {})] + [
            ('k:{"type":"%s"}' % t, {".": {}, "f:lastHeartbeatTime": {}, "f:lastTransitionTime": {},
                                     "f:message": {}, "f:reason": {}, "f:status": {}, "f:type": {}})
            for t in ("DiskPressure", "MemoryPressure", "PIDPressure", "Ready")]),
        "f:daemonEndpoints": {"f:kubeletEndpoint": {"f:Port": {}}},
        "f:nodeInfo": {"f:architecture": {}, "f:bootID": {}, "f:containerRuntimeVersion": {},
                       "f:kernelVersion": {}, "f:kubeProxyVersion": {}, "f:kubeletVersion": {},
                       "f:machineID": {}, "f:operatingSystem": {}, "f:osImage": {},
                       "f:swap": {".": {}, "f:capacity": {}}, "f:systemUUID": {}},
    },
}


def managed(manager, api_version, ms, fields, subresource=None):
    e = {"manager": manager, "operation": "Update", "apiVersion": api_version, "time": rfc3339(ms),
         "fieldsType": "FieldsV1", "fieldsV1": fields}
    if subresource:
        e["subresource"] = subresource
    return e


def apiserver_node(rv, created_ms, status, extra_managed=()):
    """The Node as client-go's typed Create/Patch returns it to cloudcore: the decoder clears
    TypeMeta (no kind/apiVersion); the TaintNodesByCondition admission added the not-ready taint."""
    return {
        "metadata": {
            "name": NODE, "uid": NODE_UID, "resourceVersion": rv,
            "creationTimestamp": rfc3339(created_ms),
            "labels": NODE_LABELS, "annotations": NODE_ANNOTATIONS,
            "managedFields": [managed("cloudcore", "v1", created_ms, NODE_CREATE_FIELDS)] + list(extra_managed),
        },
        "spec": {"taints": [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]},
        "status": status,
    }


def empty_node():
    """A zero v1.Node, as json.Marshal writes it: what client-go's Create returns with an error."""
    return {
        "metadata": {"creationTimestamp": None},
        "spec": {},
        "status": {
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {"machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "osImage": "",
                         "containerRuntimeVersion": "", "kubeletVersion": "", "kubeProxyVersion": "",
                         "operatingSystem": "", "architecture": ""},
        },
    }


# The Pod: same shape as pod-demo in the real capture (seq 13), new uid / resourceVersion.
POD_UID = uid("pod/default/pod-demo")
POD_CREATED = T0 - 4000
_LAST_APPLIED = ('{"apiVersion":"v1","kind":"Pod","metadata":{"annotations":{},"labels":{"app":"demo"},'
                 '"name":"pod-demo","namespace":"default"},"spec":{"containers":[{"command":["sleep","3600"],'
                 '"env":[{"name":"KEY1","valueFrom":{"configMapKeyRef":{"key":"key1","name":"cm-demo"}}}],'
                 '"image":"busybox:1.36","name":"main","volumeMounts":[{"mountPath":"/etc/cfg","name":"cfg"},'
                 '{"mountPath":"/etc/sec","name":"sec","readOnly":true}]}],"nodeName":"ke-edge-test",'
                 '"volumes":[{"configMap":{"name":"cm-demo"},"name":"cfg"},{"name":"sec","secret":'
                 '{"secretName":"secret-demo"}}]}}\n')
_POD_APPLY_FIELDS = json.loads(
    '{"f:metadata":{"f:annotations":{".":{},"f:kubectl.kubernetes.io/last-applied-configuration":{}},'
    '"f:labels":{".":{},"f:app":{}}},"f:spec":{"f:containers":{"k:{\\"name\\":\\"main\\"}":{".":{},'
    '"f:command":{},"f:env":{".":{},"k:{\\"name\\":\\"KEY1\\"}":{".":{},"f:name":{},"f:valueFrom":{".":{},'
    '"f:configMapKeyRef":{}}}},"f:image":{},"f:imagePullPolicy":{},"f:name":{},"f:resources":{},'
    '"f:terminationMessagePath":{},"f:terminationMessagePolicy":{},"f:volumeMounts":{".":{},'
    '"k:{\\"mountPath\\":\\"/etc/cfg\\"}":{".":{},"f:mountPath":{},"f:name":{}},'
    '"k:{\\"mountPath\\":\\"/etc/sec\\"}":{".":{},"f:mountPath":{},"f:name":{},"f:readOnly":{}}}}},'
    '"f:dnsPolicy":{},"f:enableServiceLinks":{},"f:nodeName":{},"f:restartPolicy":{},"f:schedulerName":{},'
    '"f:securityContext":{},"f:terminationGracePeriodSeconds":{},"f:volumes":{".":{},'
    '"k:{\\"name\\":\\"cfg\\"}":{".":{},"f:configMap":{".":{},"f:defaultMode":{},"f:name":{}},"f:name":{}},'
    '"k:{\\"name\\":\\"sec\\"}":{".":{},"f:name":{},"f:secret":{".":{},"f:defaultMode":{},'
    '"f:secretName":{}}}}}}')
POD_SPEC = json.loads(
    '{"volumes":[{"name":"cfg","configMap":{"name":"cm-demo","defaultMode":420}},{"name":"sec","secret":'
    '{"secretName":"secret-demo","defaultMode":420}}],"containers":[{"name":"main","image":"busybox:1.36",'
    '"command":["sleep","3600"],"env":[{"name":"KEY1","valueFrom":{"configMapKeyRef":{"name":"cm-demo",'
    '"key":"key1"}}}],"resources":{},"volumeMounts":[{"name":"cfg","mountPath":"/etc/cfg"},{"name":"sec",'
    '"readOnly":true,"mountPath":"/etc/sec"}],"terminationMessagePath":"/dev/termination-log",'
    '"terminationMessagePolicy":"File","imagePullPolicy":"IfNotPresent"}],"restartPolicy":"Always",'
    '"terminationGracePeriodSeconds":30,"dnsPolicy":"ClusterFirst","nodeName":"ke-edge-test",'
    '"securityContext":{},"schedulerName":"default-scheduler","tolerations":[{"key":'
    '"node.kubernetes.io/not-ready","operator":"Exists","effect":"NoExecute","tolerationSeconds":300},'
    '{"key":"node.kubernetes.io/unreachable","operator":"Exists","effect":"NoExecute",'
    '"tolerationSeconds":300}],"priority":0,"enableServiceLinks":true,'
    '"preemptionPolicy":"PreemptLowerPriority"}')
POD_IP = "10.88.0.5"
CONTAINER_ID = "containerd://" + hashlib.sha256(b"pod-demo/main container").hexdigest()
IMAGE_ID = "docker.io/library/busybox@sha256:" + hashlib.sha256(b"busybox:1.36 image").hexdigest()


def pod_running_status(started_ms, ready_ms):
    """PodStatus as the kubelet (v1.32) reports it once the container runs (Go struct order)."""
    cond = lambda t, ms: {"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": rfc3339(ms)}
    return {
        "phase": "Running",
        "conditions": [cond("PodReadyToStartContainers", ready_ms), cond("Initialized", started_ms),
                       cond("Ready", ready_ms), cond("ContainersReady", ready_ms),
                       cond("PodScheduled", started_ms)],
        "hostIP": NODE_IP,
        "hostIPs": [{"ip": NODE_IP}],
        "podIP": POD_IP,
        "podIPs": [{"ip": POD_IP}],
        "startTime": rfc3339(started_ms),
        "containerStatuses": [{
            "name": "main",
            "state": {"running": {"startedAt": rfc3339(ready_ms)}},
            "lastState": {},
            "ready": True,
            "restartCount": 0,
            "image": "docker.io/library/busybox:1.36",
            "imageID": IMAGE_ID,
            "containerID": CONTAINER_ID,
            "started": True,
            "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"},
                             {"name": "sec", "mountPath": "/etc/sec", "readOnly": True,
                              "recursiveReadOnly": "Disabled"}],
        }],
        "qosClass": "BestEffort",
    }


def apiserver_pod(rv, status, extra_managed=()):
    """The Pod as the typed Patch returns it to cloudcore (no kind/apiVersion, see apiserver_node)."""
    return {
        "metadata": {
            "name": "pod-demo", "namespace": "default", "uid": POD_UID, "resourceVersion": rv,
            "creationTimestamp": rfc3339(POD_CREATED),
            "labels": {"app": "demo"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": _LAST_APPLIED},
            "managedFields": [managed("kubectl-client-side-apply", "v1", POD_CREATED, _POD_APPLY_FIELDS)]
                             + list(extra_managed),
        },
        "spec": POD_SPEC,
        "status": status,
    }


def status_error(message_text, reason, details, code):
    """A *k8s StatusError as Go marshals it: {"ErrStatus": metav1.Status} with empty TypeMeta
    (client-go's decoder drops it) and the always-present ListMeta "metadata":{}."""
    return {"ErrStatus": {"metadata": {}, "status": "Failure", "message": message_text, "reason": reason,
                          "details": details, "code": code}}


def object_resp(obj, err):
    """cloud/pkg/edgecontroller/controller/upstream.go ObjectResp{Object metaV1.Object; Err error}."""
    return {"Object": obj, "Err": err}


# --------------------------------------------------------------------------------------------
# The records.
# --------------------------------------------------------------------------------------------

def build():
    recs = []

    def add(name, direction, note, msg):
        recs.append({"name": name, "dir": direction, "note": note, "payload": go_json(msg) + "\n", "_msg": msg})
        return msg

    E2C, C2E = "edge->cloud", "cloud->edge"

    # (a)/(b) node registration ------------------------------------------------------------------
    t = T0 + 117
    reg = add("node-register-insert", E2C,
              "(a) Node registration. kubelet registerWithAPIServer -> edged NodesBridge.Create -> metaclient "
              "Nodes(metav1.NamespaceDefault).Create: BuildMsg(group meta, source edged, insert, "
              "resource default/node/<node>) - the namespace segment is 'default', not 'null' (kubeclientbridge "
              "node_bridge.go; compat.md 8.2 says null/node/<node>). Metamanager processInsert (source edged) -> "
              "processRemote: message.UpdateID() gives it a NEW msg_id (edged's own id never reaches the wire), "
              "timestamp kept, SendSync to websocket (sync forced false on write). Content is the kubelet's "
              "initialNode(): built without TypeMeta, so no kind/apiVersion, creationTimestamp null; labels "
              "incl. node-role.kubernetes.io/edge and /agent; Ready=False at first registration. Synthetic.",
              message(uid("msg/node-register-insert"), t, route("edged", "meta", "insert", "default/node/" + NODE),
                      kubelet_initial_node(t)))
    created = apiserver_node("341", NODE_CREATED, node_status(t, ready=False))
    reply = add("node-register-reply", C2E,
                "(b) Reply to node-register-insert. upstream.go registerNode: model.NewMessage(req.ID) (new id, "
                "parent = request id), BuildRouter(edgecontroller, resource, req resource, response), "
                "FillBody(&ObjectResp{Object: created, Err: nil}); no SetResourceVersion, so no resourceversion "
                "header. CloudHub TrimMessage strips node/<id>/ -> resource default/node/ke-edge-test (same as "
                "the request; NOT node/ke-edge-test/null/node/ke-edge-test). No-ack path (node, op != update). "
                "Object is what client-go's typed Create returned: TypeMeta cleared (no kind/apiVersion), with "
                "uid/resourceVersion/creationTimestamp/managedFields (manager cloudcore) and the not-ready "
                "NoSchedule taint from the TaintNodesByCondition admission. Err nil -> null.",
                message(uid("msg/node-register-reply"), t + 14,
                        route("edgecontroller", "resource", "response", "default/node/" + NODE),
                        object_resp(created, None), parent=reg["header"]["msg_id"]))
    add("node-register-reply-ack", E2C,
        "ACK of node-register-reply. The reply is delivered (edgehub: group resource + parent -> SendResp) to "
        "metamanager's processRemote waiter, which persists it and calls feedbackResponse: "
        "NewRespByMessage(reply, \"OK\") -> source/group/resource copied from the reply, op response, parent = "
        "the reply's msg_id. Sent for every remote-call reply (insert/query/lease), even an error ObjectResp; "
        "the cloud ignores it (no-ack message).",
        resp_by_message(reply, uid("msg/node-register-reply-ack"), t + 18, "OK"))

    # (c) the same registration after an edgecore restart: AlreadyExists -----------------------------
    t2 = T0 + 120204
    reg2 = add("node-register-insert-again", E2C,
               "(c, request) Registration after an edgecore restart (Node already exists). Same path as "
               "node-register-insert; new msg_id and time.",
               message(uid("msg/node-register-insert-again"), t2,
                       route("edged", "meta", "insert", "default/node/" + NODE), kubelet_initial_node(t2)))
    err409 = status_error('nodes "%s" already exists' % NODE, "AlreadyExists", {"name": NODE, "kind": "nodes"}, 409)
    rep2 = add("node-register-reply-already-exists", C2E,
               "(c) ObjectResp error reply as registerNode really sends it: Err is the *StatusError from the "
               "apiserver ({\"ErrStatus\":{...}}, no kind/apiVersion in the Status because client-go's decoder "
               "drops TypeMeta); Object is NOT null: client-go's typed Create returns its zero &v1.Node{} "
               "alongside the error, which marshals as metadata{creationTimestamp:null}, spec{}, and status with "
               "daemonEndpoints Port 0 and an all-empty nodeInfo. edged's NodeResp decodes Err and kubelet then "
               "Gets the existing node. Route/resource as node-register-reply.",
               message(uid("msg/node-register-reply-already-exists"), t2 + 15,
                       route("edgecontroller", "resource", "response", "default/node/" + NODE),
                       object_resp(empty_node(), err409), parent=reg2["header"]["msg_id"]))
    add("node-register-reply-already-exists-ack", E2C,
        "ACK of the error reply: processRemote sees an ObjectResp with Err != nil and still calls "
        "feedbackResponse, so an \"OK\" ACK goes to the cloud (parent = reply id).",
        resp_by_message(rep2, uid("msg/node-register-reply-already-exists-ack"), t2 + 19, "OK"))

    # (f) lease: query (NotFound, Object null) then create --------------------------------------------
    tq = T0 + 412
    lq = add("lease-query", E2C,
             "kubelet lease controller ensureLease: Get first. edged LeaseBridge.Get -> metaclient Leases"
             "(kube-node-lease).Get: query, content nil -> null. Metamanager processQuery: lease is a "
             "remote-query type and the edge is connected -> processRemote (new msg_id), source edged group meta "
             "kept.",
             message(uid("msg/lease-query"), tq,
                     route("edged", "meta", "query", "kube-node-lease/lease/" + NODE), None))
    err404 = status_error('lease.coordination.k8s.io "%s" not found' % NODE, "NotFound",
                          {"name": NODE, "group": "coordination.k8s.io", "kind": "lease"}, 404)
    lqr = add("lease-query-reply-not-found", C2E,
              "ObjectResp with \"Object\":null. upstream.go queryLease: kubeClientGet returns (nil, err) from "
              "the lease lister (errors.NewNotFound(coordinationv1.Resource(\"lease\"), name): singular "
              "resource, group in details), so Object is a nil interface -> null. This is the real path that "
              "yields Object null; a failed Create/Patch never does (see node-register-reply-already-exists). "
              "No resourceversion. Resource kube-node-lease/lease/ke-edge-test.",
              message(uid("msg/lease-query-reply-not-found"), tq + 8,
                      route("edgecontroller", "resource", "response", "kube-node-lease/lease/" + NODE),
                      object_resp(None, err404), parent=lq["header"]["msg_id"]))
    add("lease-query-reply-not-found-ack", E2C,
        "ACK of the NotFound reply (processRemote -> feedbackResponse, even with Err set).",
        resp_by_message(lqr, uid("msg/lease-query-reply-not-found-ack"), tq + 11, "OK"))

    tl = T0 + 425
    renew_us = (T0 + 424) * 1000 + 871
    lease_req = {
        "metadata": {"name": NODE, "namespace": "kube-node-lease", "creationTimestamp": None,
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": NODE_UID}]},
        "spec": {"holderIdentity": NODE, "leaseDurationSeconds": 40, "renewTime": micro(renew_us)},
    }
    li = add("lease-insert", E2C,
             "(f) Lease create. edged LeaseBridge.Create -> metaclient Leases(kube-node-lease).Create: insert, "
             "resource kube-node-lease/lease/<node>. Metamanager processInsert (source edged) -> processRemote "
             "(new msg_id). Content: the kubelet's newLease(): no TypeMeta (no kind/apiVersion), "
             "creationTimestamp null, ownerReferences to the Node, leaseDurationSeconds 40, renewTime as "
             "MicroTime (6 fractional digits).",
             message(uid("msg/lease-insert"), tl,
                     route("edged", "meta", "insert", "kube-node-lease/lease/" + NODE), lease_req))
    lease_created = {
        "metadata": {
            "name": NODE, "namespace": "kube-node-lease", "uid": uid("lease/ke-edge-test"),
            "resourceVersion": "342", "creationTimestamp": rfc3339(tl + 6),
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": NODE_UID}],
            "managedFields": [managed("cloudcore", "coordination.k8s.io/v1", tl + 6, {
                "f:metadata": {"f:ownerReferences": {".": {}, 'k:{"uid":"%s"}' % NODE_UID: {}}},
                "f:spec": {"f:holderIdentity": {}, "f:leaseDurationSeconds": {}, "f:renewTime": {}}})],
        },
        "spec": {"holderIdentity": NODE, "leaseDurationSeconds": 40, "renewTime": micro(renew_us)},
    }
    lir = add("lease-insert-reply", C2E,
              "Reply to lease-insert. upstream.go createOrUpdateLease: NewMessage(req.ID).FillBody(&ObjectResp{"
              "Object: resp, Err: nil}), route edgecontroller/resource response kube-node-lease/lease/<node>, no "
              "resourceversion (no-ack path: lease). Object = typed Create result (no kind/apiVersion).",
              message(uid("msg/lease-insert-reply"), tl + 12,
                      route("edgecontroller", "resource", "response", "kube-node-lease/lease/" + NODE),
                      object_resp(lease_created, None), parent=li["header"]["msg_id"]))
    add("lease-insert-reply-ack", E2C,
        "ACK of lease-insert-reply (processRemote -> feedbackResponse).",
        resp_by_message(lir, uid("msg/lease-insert-reply-ack"), tl + 15, "OK"))

    # (d) node status patch ------------------------------------------------------------------------
    tp = T0 + 10143
    hb = rfc3339(tp)
    patch_node = sorted_deep({"status": {
        "$setElementOrder/conditions": [{"type": "MemoryPressure"}, {"type": "DiskPressure"},
                                        {"type": "PIDPressure"}, {"type": "Ready"}],
        "conditions": [
            {"type": "MemoryPressure", "lastHeartbeatTime": hb},
            {"type": "DiskPressure", "lastHeartbeatTime": hb},
            {"type": "PIDPressure", "lastHeartbeatTime": hb},
            {"type": "Ready", "lastHeartbeatTime": hb, "lastTransitionTime": hb, "status": "True",
             "reason": "KubeletReady", "message": "kubelet is posting ready status"},
        ]}})
    np = add("nodepatch-status", E2C,
             "(d) Node status heartbeat. kubelet PatchNodeStatus -> edged NodesBridge.Patch -> metaclient "
             "Nodes(default).Patch: BuildMsg(meta, edged, patch, default/nodepatch/<node>, string(patchBytes)) "
             "- content is a JSON *string*. The patch is strategicpatch.CreateTwoWayMergePatch output "
             "(json.Marshal of a map: keys sorted, so $setElementOrder/conditions first). Here Ready turns "
             "True. Metamanager processPatch stores it and forwards the SAME message (same msg_id) to the "
             "cloud; if disconnected it answers edged with an error instead.",
             message(uid("msg/nodepatch-status"), tp,
                     route("edged", "meta", "patch", "default/nodepatch/" + NODE), go_json(patch_node)))
    cond_fields = {"f:lastHeartbeatTime": {}}
    node_patched = apiserver_node("344", NODE_CREATED, {
        "capacity": CAPACITY, "allocatable": ALLOCATABLE,
        "conditions": node_conditions(tp, ready=True),
        "addresses": [{"type": "InternalIP", "address": NODE_IP}, {"type": "Hostname", "address": NODE}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10350}},
        "nodeInfo": NODE_INFO,
    }, extra_managed=[managed("cloudcore", "v1", tp + 9, {"f:status": {"f:conditions": {
        'k:{"type":"DiskPressure"}': dict(cond_fields),
        'k:{"type":"MemoryPressure"}': dict(cond_fields),
        'k:{"type":"PIDPressure"}': dict(cond_fields),
        'k:{"type":"Ready"}': {"f:lastHeartbeatTime": {}, "f:lastTransitionTime": {}, "f:message": {},
                               "f:reason": {}, "f:status": {}}}}}, subresource="status")])
    # Ready's lastTransitionTime moved to the patch time; the others keep T0.
    add("nodepatch-reply", C2E,
        "Reply to nodepatch-status. upstream.go patchNode: Nodes().Patch(StrategicMergePatchType, "
        "subresource status), then NewMessage(req.ID).SetResourceVersion(node.ResourceVersion).FillBody("
        "&ObjectResp{Object: node, Err: err}), route edgecontroller/resource response with the request's "
        "resource: default/nodepatch/ke-edge-test on the wire (compat.md 8.2's node/<id>/null/nodepatch/<node> "
        "is the cloud-internal form before TrimMessage, and the namespace is 'default'). resourceversion header "
        "= the patched Node's rv. No-ack path (nodepatch). Delivered by edgehub straight to edged's SendSync "
        "waiter (same msg_id as the patch); metamanager is not involved, so NO \"OK\" ACK follows.",
        message(uid("msg/nodepatch-reply"), tp + 15,
                route("edgecontroller", "resource", "response", "default/nodepatch/" + NODE),
                object_resp(node_patched, None), parent=np["header"]["msg_id"], rv="344"))

    # (e) pod status patch ---------------------------------------------------------------------------
    tpp = T0 + 12307
    started, ready = T0 + 10912, T0 + 12001
    running = pod_running_status(started, ready)
    new_status = {k: running[k] for k in ("conditions", "containerStatuses", "hostIP", "hostIPs", "phase",
                                          "podIP", "podIPs", "startTime")}  # qosClass unchanged
    pod_patch = sorted_deep({"metadata": {"uid": POD_UID}, "status": new_status})
    pp = add("podpatch-status", E2C,
             "(e) Pod status. kubelet status manager PatchPodStatus -> edged PodsBridge.Patch -> metaclient "
             "Pods(ns).Patch: BuildMsg(meta, edged, patch, <ns>/podpatch/<pod>, string(patchBytes)), content a "
             "JSON string. Patch = CreateTwoWayMergePatch(Pod{Status: old}, Pod{UID, Status: new}): "
             "metadata.uid precondition, only changed status fields (qosClass unchanged is absent), keys sorted, "
             "lastProbeTime null kept, no $setElementOrder because the old status had no conditions. "
             "Metamanager processPatch forwards the same msg_id.",
             message(uid("msg/podpatch-status"), tpp,
                     route("edged", "meta", "patch", "default/podpatch/pod-demo"), go_json(pod_patch)))
    status_fields = {"f:status": {
        "f:conditions": dict([(".", {})] + [
            ('k:{"type":"%s"}' % ty, {".": {}, "f:lastProbeTime": {}, "f:lastTransitionTime": {},
                                      "f:status": {}, "f:type": {}})
            for ty in ("ContainersReady", "Initialized", "PodReadyToStartContainers", "PodScheduled", "Ready")]),
        "f:containerStatuses": {}, "f:hostIP": {}, "f:hostIPs": {}, "f:phase": {}, "f:podIP": {},
        "f:podIPs": {".": {}, 'k:{"ip":"%s"}' % POD_IP: {".": {}, "f:ip": {}}}, "f:startTime": {}}}
    pod_patched = apiserver_pod("346", running,
                                extra_managed=[managed("cloudcore", "v1", tpp + 8, status_fields,
                                                       subresource="status")])
    add("podpatch-reply", C2E,
        "Reply to podpatch-status. upstream.go patchPod: Pods(ns).Patch(..., \"status\"), NewMessage(req.ID)"
        ".SetResourceVersion(updatedPod.ResourceVersion).FillBody(&ObjectResp{Object: updatedPod, Err: nil}), "
        "resource default/podpatch/pod-demo. The Pod has no kind/apiVersion (client-go decoder; edged's "
        "updatePodDB sets Kind/APIVersion itself before storing it under default/pod/pod-demo). Goes straight "
        "to edged's waiter: no \"OK\" ACK.",
        message(uid("msg/podpatch-reply"), tpp + 15,
                route("edgecontroller", "resource", "response", "default/podpatch/pod-demo"),
                object_resp(pod_patched, None), parent=pp["header"]["msg_id"], rv="346"))

    # (g) configmap query ----------------------------------------------------------------------------
    tc = T0 + 11020
    cm_created = T0 - 10000
    cq = add("configmap-query", E2C,
             "(g) ConfigMap read by edged. metaclient ConfigMaps(ns).Get: BuildMsg(meta, edged, query, "
             "<ns>/configmap/<name>, nil). Metamanager processQuery: configmap is a remote-query type and the "
             "edge is connected -> processRemote: UpdateID() (new msg_id), the route stays source edged / "
             "group meta (metamanager does not rewrite it), content null. compat.md 5.2 calls this the "
             "metamanager remote query; on the wire it looks like edged's own request.",
             message(uid("msg/configmap-query"), tc,
                     route("edged", "meta", "query", "default/configmap/cm-demo"), None))
    cm = {
        "kind": "ConfigMap", "apiVersion": "v1",
        "metadata": {
            "name": "cm-demo", "namespace": "default", "uid": uid("configmap/default/cm-demo"),
            "resourceVersion": "338", "creationTimestamp": rfc3339(cm_created),
            "managedFields": [managed("kubectl-create", "v1", cm_created,
                                      {"f:data": {".": {}, "f:config.json": {}, "f:html": {}, "f:key1": {},
                                                  "f:unicode": {}}})],
        },
        "data": go_map({"config.json": '{"a":1}', "html": "<b>x&amp;y</b>", "key1": "value1",
                        "unicode": "héllo ✓ 日本"}),
    }
    cqr = add("configmap-query-reply", C2E,
              "Reply to configmap-query. upstream.go queryInner: object from the informer lister + "
              "util.SetMetaType, so kind/apiVersion ARE present (unlike Create/Patch replies); "
              "NewMessage(req.ID).SetResourceVersion(obj rv).FillBody(object): content is the bare ConfigMap, "
              "not an ObjectResp. resourceversion = metadata.resourceVersion. Ack path (configmap response), so "
              "cloudhub resends it every 5 s until the ACK.",
              message(uid("msg/configmap-query-reply"), tc + 7,
                      route("edgecontroller", "resource", "response", "default/configmap/cm-demo"),
                      cm, parent=cq["header"]["msg_id"], rv="338"))
    add("configmap-query-reply-ack", E2C,
        "ACK of configmap-query-reply (compat.md 5.2): processRemote stores the object under "
        "default/configmap/cm-demo, answers edged (parent = edged's original id), then sends "
        "NewRespByMessage(reply, \"OK\"): source edgecontroller, group resource, op response, same resource, "
        "parent = the reply's msg_id. This is what stops the cloud's retries and records the ObjectSync.",
        resp_by_message(cqr, uid("msg/configmap-query-reply-ack"), tc + 11, "OK"))

    # (h) error messages -------------------------------------------------------------------------------
    te = T0 + 30555
    failed_update = {"header": {"msg_id": uid("msg/failed-cloud-update"), "timestamp": te - 6,
                                "resourceversion": "351"},
                     "route": route("edgecontroller", "resource", "update", "default/configmap/cm-demo")}
    errtext = "insert or update meta failed, database is locked"
    add("error-newerrormessage-bare", E2C,
        "(h) model.NewErrorMessage(orig, text) exactly: NewMessage(orig.Header.ParentID) - the parent is the "
        "ORIGINAL's parent_msg_id, not its msg_id (compat.md 1.1 says parent = orig id), so for a cloud "
        "update (no parent) parent_msg_id is absent - then SetResourceOperation(orig resource, \"error\") and "
        "FillBody(text): the route has only operation and resource, content is the error text string. Here "
        "orig = a cloud update of default/configmap/cm-demo that failed to persist. Note metamanager never "
        "sends this bare form: see error-metamanager-feedback.",
        message(uid("msg/error-newerrormessage-bare"), te,
                {"operation": "error", "resource": failed_update["route"]["resource"]}, errtext))
    add("error-metamanager-feedback", E2C,
        "(h) What edgecore really sends for that failure: metamanager feedbackError(err, request) = "
        "NewErrorMessage(&request, err.Error()).SetRoute(\"metamanager\", request group) -> source "
        "metamanager, group resource, operation error, resource of the request, no parent (the request had "
        "none). For a request from a non-edged source it goes to the cloud (sendToCloud); cloudhub's "
        "DispatchUpstream only logs op error. Error text from handleMessage.",
        message(uid("msg/error-metamanager-feedback"), te + 1,
                route("metamanager", "resource", "error", failed_update["route"]["resource"]), errtext))

    # (i) content needing Go escaping ------------------------------------------------------------------
    tx = T0 + 40010
    cmx_created = tx - 2000
    data = go_map({
        "html": "<script>&</script>",
        "tab": "col1\tcol2",
        "newline": "line1\nline2\r\n",
        "u2028": "a\u2028b\u2029c",
        "emoji": "smile \U0001F642 ok",
        "ctrl": "\u0001\u001f\u007f",
        "bf": "\b\f",
        "quote": 'say "hi" \\ back /',
        "unicode": "héllo ✓ 日本",
        "replacement": "\ufffd",
    })
    cmx = {
        "kind": "ConfigMap", "apiVersion": "v1",
        "metadata": {
            "name": "cm-escape", "namespace": "default", "uid": uid("configmap/default/cm-escape"),
            "resourceVersion": "360", "creationTimestamp": rfc3339(cmx_created),
            "managedFields": [managed("kubectl-create", "v1", cmx_created,
                                      {"f:data": fields_keys("f:", data)})],
        },
        "data": data,
    }
    upd = add("configmap-update-escapes", C2E,
              "(i) Cloud->edge ConfigMap update (edgecontroller/resource update, resourceversion = object rv, "
              "like capture seq 17) whose data needs Go escaping: < > & as \\u003c \\u003e \\u0026; tab, "
              "newline, CR, \\b, \\f as short escapes (Go >= 1.22); other C0 controls as \\u00XX lowercase "
              "(\\u0001 \\u001f); DEL 0x7f raw; U+2028/U+2029 as \\u2028 \\u2029; quote and backslash "
              "escaped; '/' NOT escaped; non-ASCII (é ✓ 日本, U+1F642 emoji, U+FFFD) raw UTF-8. Data keys "
              "sorted (Go map).",
              message(uid("msg/configmap-update-escapes"), tx,
                      route("edgecontroller", "resource", "update", "default/configmap/cm-escape"), cmx, rv="360"))
    add("configmap-update-escapes-ack", E2C,
        "ACK of configmap-update-escapes: metamanager processUpdate (source edgecontroller) persists, "
        "forwards to edged, then NewRespByMessage(msg, \"OK\").",
        resp_by_message(upd, uid("msg/configmap-update-escapes-ack"), tx + 11, "OK"))

    return recs


# --------------------------------------------------------------------------------------------
# Validation.
# --------------------------------------------------------------------------------------------

def check_payload(p):
    assert p.endswith("\n") and not p[:-1].endswith("\n"), "payload must end with exactly one \\n"
    text = p[:-1]
    v = json.loads(text)
    again = go_json(v)
    if again != text:
        i = 0
        while i < min(len(again), len(text)) and again[i] == text[i]:
            i += 1
        raise AssertionError("re-encoding differs at %d: %r vs %r" % (i, again[i - 30:i + 30], text[i - 30:i + 30]))
    assert list(v) == ["header", "route", "content"], list(v)
    hk = list(v["header"])
    order = ["msg_id", "parent_msg_id", "timestamp", "resourceversion", "sync", "type"]
    assert hk == [k for k in order if k in hk], hk
    rk = list(v["route"])
    rorder = ["source", "destination", "group", "operation", "resource"]
    assert rk == [k for k in rorder if k in rk], rk
    return v


def validate(path):
    ids = {}
    names = set()
    n = 0
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    assert lines[-1] == "", "file must end with a newline"
    for line in lines[:-1]:
        rec = json.loads(line)
        assert list(rec) == ["name", "dir", "note", "payload"], list(rec)
        assert rec["name"] not in names, rec["name"]
        names.add(rec["name"])
        assert rec["dir"] in ("edge->cloud", "cloud->edge")
        v = check_payload(rec["payload"])
        h = v["header"]
        uuid.UUID(h["msg_id"])
        assert uuid.UUID(h["msg_id"]).version == 4
        assert abs(h["timestamp"] - T0) < 3_600_000
        if "parent_msg_id" in h:
            assert h["parent_msg_id"] in ids, (rec["name"], "parent not in file")
            pdir = ids[h["parent_msg_id"]]
            assert pdir != rec["dir"], (rec["name"], "a reply goes the other way")
        if "resourceversion" in h:
            assert rec["dir"] == "cloud->edge"
            c = v["content"]
            obj = c["Object"] if isinstance(c, dict) and "Object" in c else c
            assert obj["metadata"]["resourceVersion"] == h["resourceversion"], rec["name"]
        if v["route"].get("operation") == "patch":
            assert isinstance(v["content"], str)
            json.loads(v["content"])  # the string is itself JSON
        ids[h["msg_id"]] = rec["dir"]
        n += 1
    return n


def validate_capture():
    """Sanity check of the encoder: it must reproduce the 79 real messages byte for byte."""
    if not os.path.exists(CAPTURE):
        return None
    n = 0
    with open(CAPTURE, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("kind") == "message":
                p = rec["payload"]
                assert go_json(json.loads(p[:-1])) + "\n" == p, rec["seq"]
                n += 1
    return n


def main():
    if "--check" not in sys.argv:
        recs = build()
        with open(OUT, "w", encoding="utf-8", newline="\n") as f:
            for r in recs:
                out = {k: r[k] for k in ("name", "dir", "note", "payload")}
                f.write(json.dumps(out, ensure_ascii=False) + "\n")
    n = validate(OUT)
    cap = validate_capture()
    with open(OUT, encoding="utf-8") as f:
        recs = [json.loads(l) for l in f]
    print("extra-v1.22.jsonl: %d records, every payload = Go re-encoding + \\n; parents/resourceversions consistent"
          % n)
    for r in recs:
        v = json.loads(r["payload"])
        rt = v["route"]
        print("  %-40s %-11s %-14s %-8s %-36s %5d bytes" % (
            r["name"], r["dir"], "/".join(x for x in (rt.get("source", ""), rt.get("group", "")) if x) or "-",
            rt.get("operation", ""), rt.get("resource", ""), len(r["payload"].encode())))
    if cap is not None:
        print("encoder self-check: %d/%d real capture messages re-encode byte-identically" % (cap, cap))


if __name__ == "__main__":
    main()
