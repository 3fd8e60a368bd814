#!/usr/bin/env python3
"""Fills fuzz/corpus/<target>/ with seeds taken from the golden vectors.

Run from anywhere: python3 fuzz/seed_corpus.py
The corpus directories are not committed (see .gitignore); libFuzzer grows them.
"""
import hashlib
import json
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
VECTORS = HERE.parent / "kubeedge-proto" / "tests" / "vectors"


def put(target, data):
    d = HERE / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def main():
    ws = [json.loads(l) for l in (VECTORS / "ws-v1.22.2.jsonl").read_text().splitlines()]
    payloads = [r["payload"].encode() for r in ws if r["kind"] == "message"]
    for p in payloads:
        put("json_message", p)
        msg = json.loads(p)
        res = msg["route"].get("resource", "")
        if res:
            put("resource_path", res.encode())
            put("resource_path", ("node/ke-edge-test/" + res).encode())
        content = msg["content"]
        if isinstance(content, dict) and content.get("kind") in ("Device", "DeviceModel"):
            put("twin_inputs", json.dumps(content, separators=(",", ":")).encode())
        if isinstance(content, str) and content.startswith("{"):
            put("twin_payloads", content.encode())
        elif isinstance(content, dict) and "kind" not in content:
            put("twin_payloads", json.dumps(content, separators=(",", ":")).encode())
    # A stream of lines, prefixed by the chunk-size byte the json_lines target reads.
    put("json_lines", b"\x07" + b"".join(payloads[:12]))
    put("json_lines", b"\x40" + b"".join(payloads[40:60]))
    for line in (VECTORS / "mqtt-v1.22.2.jsonl").read_text().splitlines():
        rec = json.loads(line)
        put("twin_payloads", rec["payload"].encode())
        put("twin_inputs", rec["payload"].encode())
        put("twin_inputs", rec["topic"].encode())
    put("twin_payloads", b'{"Object":{"kind":"Node"},"Err":null}')
    put("twin_payloads", b'{"Object":null,"Err":{"ErrStatus":{"message":"x","code":409}}}')
    frames = VECTORS / "frames-v1.22.jsonl"
    if frames.exists():
        for line in frames.read_text().splitlines():
            put("binary_frame", bytes.fromhex(json.loads(line)["frame_hex"]))
    for text in [b"\x00apiVersion: devices.kubeedge.io/v1beta1\nkind: DeviceModel\nmetadata: {name: m}\nspec:\n  protocol: modbus\n  properties:\n  - {name: t, type: INT, accessMode: ReadWrite}\n---\napiVersion: devices.kubeedge.io/v1beta1\nkind: Device\nmetadata: {name: d, namespace: default}\nspec:\n  deviceModelRef: {name: m}\n  protocol: {protocolName: modbus, configData: {ip: 127.0.0.1, port: 502, slaveID: 1}}\n  properties:\n  - name: t\n    collectCycle: 1000\n    reportCycle: 1000\n    visitors: {protocolName: modbus, configData: {register: HoldingRegister, offset: 0, limit: 1}}\n",
                 b"\x40\x00\x19\x41\xc8\x00\x00", b"\x81{\"a\":{\"b\":[0,{\"c\":21.5}]}}", b"\xc2T=21.5", b"\xc0H,45,%"]:
        put("mapper_inputs", text)
    put("dmi_messages", b"\x12\x0e\x0a\x06modbus\x22\x04/tmp")
    # Pods as the cloud stores them on the edge (the captured pod inserts), and quantities.
    for p in payloads:
        msg = json.loads(p)
        content = msg.get("content")
        if isinstance(content, dict) and content.get("kind") == "Pod":
            put("edged_pod_spec", json.dumps(content).encode())
    for q in [b"500m", b"128Mi", b"1.5e3", b"$(A)x$$(B)"]:
        put("edged_pod_spec", q)
    # What edge nodes send the cloud: the captured edge->cloud messages, and the requests of
    # a kubeedge-rs edge (registration, status patches, lease, delete, queries, inventory).
    for r in ws:
        if r["kind"] == "message" and r["dir"] == "edge->cloud":
            put("cloud_upstream", r["payload"].encode())
    def req(op, resource, content):
        return json.dumps({"header": {"msg_id": "m", "timestamp": 1},
                           "route": {"source": "edged", "group": "meta", "operation": op, "resource": resource},
                           "content": content}).encode()
    put("cloud_upstream", req("insert", "default/node/n1", {"kind": "Node", "metadata": {"name": "n1"}}))
    put("cloud_upstream", req("patch", "default/nodepatch/n1", json.dumps({"status": {"conditions": []}})))
    put("cloud_upstream", req("patch", "default/podpatch/p1", json.dumps({"metadata": {"uid": "p1"}, "status": {"phase": "Running"}})))
    put("cloud_upstream", req("delete", "default/pod/p1", {"gracePeriodSeconds": 0, "preconditions": {"uid": "p1"}}))
    put("cloud_upstream", req("query", "default/configmap/cm", None))
    put("cloud_upstream", req("update", "kube-node-lease/lease/n1", {"metadata": {"name": "n1"}, "spec": {}}))
    put("cloud_upstream", json.dumps({"header": {"msg_id": "i", "timestamp": 1},
        "route": {"source": "metamanager", "group": "resource", "operation": "list", "resource": "inventory"},
        "content": {"objects": [{"key": "default/pod/p1", "uid": "p1", "resourceVersion": 1},
                                {"key": "default/pod/gone", "uid": "g", "resourceVersion": 9}]}}).encode())
    # Token and lease queries of a KubeEdge edge, and what clouds answer edges.
    put("cloud_upstream", req("query", "default/serviceaccounttoken/default",
        {"spec": {"expirationSeconds": 3607, "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p1", "uid": "p1"}}}))
    put("cloud_upstream", req("query", "kube-node-lease/lease/n1", None))
    for seed in [
        b'{"Object":{"metadata":{"name":"n1","resourceVersion":"7"}},"Err":null}',
        b'{"ErrStatus":{"status":"Failure","reason":"NotFound","code":404,"message":"x"}}',
        b'"OK"',
        b'{"spec":{"expirationSeconds":3607,"boundObjectRef":{"kind":"Pod","name":"p","uid":"u"}},'
        b'"status":{"token":"t","expirationTimestamp":"2030-01-01T00:00:00Z"}}',
        b"inventory, x",
        b"default/pod/web u1\nnull/node/n u\ndefault/configmap/c u2\n",
    ]:
        put("cloud_replies", seed)
    # edgecore.yaml (first byte even) and cloudcore.yaml (odd), as keadm and KubeEdge write them.
    root = HERE.parent
    put("config_files", b"\x01" + (root / "kubeedge-config" / "tests" / "fixtures" / "kubeedge-cloudcore.yaml").read_bytes())
    put("config_files", b"\x00apiVersion: edgecore.config.kubeedge.io/v1alpha2\nkind: EdgeCore\n"
        b"database: {dataSource: /var/lib/kubeedge/edgecore.db}\nmodules:\n  edgeHub:\n"
        b"    httpServer: https://192.0.2.1:10002\n    token: abc.def.ghi.jkl\n"
        b"    websocket: {server: 192.0.2.1:10000}\n  edged: {hostnameOverride: edge-1}\n"
        b"  eventBus: {mqttMode: 2, mqttServerExternal: tcp://127.0.0.1:1883}\n")
    # Modbus TCP requests to the simulated thermostat: read holding 0..2, read input 0, write
    # the setpoint, a bad function.
    for pdu in [b"\x03\x00\x00\x00\x02", b"\x04\x00\x00\x00\x01", b"\x06\x00\x00\x00\xdc",
                b"\x10\x00\x00\x00\x01\x02\x00\xdc", b"\x2b\x0e\x01\x00"]:
        put("modbus_device_frames", b"\x00\x07\x00\x00" + (len(pdu) + 1).to_bytes(2, "big") + b"\x01" + pdu)
    # The join request: NodeName, Authorization, ExtKeyUsages, then the CSR.
    put("join_request", b"edge-1\nBearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJleHAiOjE5MDAwMDAwMDB9.x\n[2]\n0\x82")
    # Stream tunnel frames: varint connect id, varint type, data (a LOGS_CONNECT request, DATA,
    # REMOVE_CONNECT, an EXEC_CONNECT with its method).
    logs = (b'{"MessID":3,"url":{"Scheme":"https","Host":"127.0.0.1:10003",'
            b'"Path":"/containerLogs/default/web/nginx","RawQuery":"follow=true\\u0026tailLines=10"},'
            b'"header":{"Accept":["*/*"]}}')
    put("stream_tunnel", b"\x03\x00" + logs)
    put("stream_tunnel", b"\xac\x02\x03log line\n")
    put("stream_tunnel", b"\x03\x04")
    put("stream_tunnel", b"\x09\x01" + b'{"MessID":9,"url":{"Path":"/exec/ns/p/c","RawQuery":"command=sh"},'
                                       b'"header":null,"method":"POST"}')


if __name__ == "__main__":
    main()
