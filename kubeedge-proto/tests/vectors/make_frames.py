#!/usr/bin/env python3
"""Generate frames-v1.22.jsonl: KubeEdge viaduct binary frames (compat.md 2.5) with their JSON twins.

A frame is a 10-byte big-endian header (version u32 = 0x01010100 for packer 1.1.1, type u8 0x01 =
message, flags u8 0x00, payload length u32) followed by the protobuf (proto3) encoding of viaduct's
`message.Message`:

    Message       { MessageHeader header = 1; MessageRouter router = 2; bytes Content = 3; }
    MessageHeader { string ID = 1; string ParentID = 2; sint64 Timestamp = 3; bool Sync = 4;
                    string MessageType = 5; }
    MessageRouter { string Source = 1; string Group = 2; string Operation = 3; string Resouce = 4; }

as golang/protobuf's Marshal writes it (pkg/viaduct/pkg/translator/message.go Encode): fields in
field-number order; proto3 scalars equal to their default ("" / 0 / false / empty bytes) omitted;
sint64 as a zigzag varint; `header` and `router` are always set (non-nil) by the translator, so
they are written even when empty (tag + length 0); Content: a string content travels as its raw
bytes, an object as its Go json.Marshal bytes (HTML-escaped), nil as no field at all. The frame
does not carry resourceversion (nor destination).

Each record: {"name", "note", "json", "frame_hex"} where "json" is the equivalent beehive message
in our JSON form (Go encoding, no trailing newline; header keys msg_id, parent_msg_id, timestamp,
sync, type as present) and "frame_hex" the lowercase hex of header + payload.

Usage: python3 make_frames.py   # writes frames-v1.22.jsonl next to this file, then decodes every
                                # frame back and checks it against its "json".
Stdlib only, deterministic. Reuses the Go JSON encoder of make_extra.py (same directory).
"""

import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # leave no __pycache__ next to the vectors
from make_extra import T0, go_json, uid  # noqa: E402  (stdlib-only sibling module)

OUT = os.path.join(HERE, "frames-v1.22.jsonl")

PACKER_VERSION = (1 << 24) | (1 << 16) | (1 << 8)  # 0x01010100
TYPE_MESSAGE = 0x01


# --------------------------------------------------------------------------------------------
# Minimal proto3 encoder.
# --------------------------------------------------------------------------------------------

def varint(n):
    assert n >= 0
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def zigzag64(n):
    assert -(1 << 63) <= n < (1 << 63)
    return 2 * n if n >= 0 else -2 * n - 1  # == (n << 1) ^ (n >> 63)


def tag(field, wire):
    return varint((field << 3) | wire)


def f_string(field, s):
    """proto3 string: omitted when ""."""
    if not s:
        return b""
    b = s.encode("utf-8")
    return tag(field, 2) + varint(len(b)) + b


def f_bytes(field, b):
    if not b:
        return b""
    return tag(field, 2) + varint(len(b)) + b


def f_sint64(field, n):
    if n == 0:
        return b""
    return tag(field, 0) + varint(zigzag64(n))


def f_bool(field, v):
    if not v:
        return b""
    return tag(field, 0) + b"\x01"


def f_message(field, body):
    """A set sub-message: always written, even when its body is empty."""
    return tag(field, 2) + varint(len(body)) + body


def content_bytes(content):
    """translator.modelToProto: []byte as is, string as its bytes, anything else json.Marshal, nil -> none."""
    if content is None:
        return b""
    if isinstance(content, str):
        return content.encode("utf-8")
    return go_json(content).encode("utf-8")


def encode_payload(msg):
    h = msg["header"]
    r = msg["route"]
    header = (f_string(1, h.get("msg_id", "")) + f_string(2, h.get("parent_msg_id", "")) +
              f_sint64(3, h.get("timestamp", 0)) + f_bool(4, h.get("sync", False)) +
              f_string(5, h.get("type", "")))
    router = (f_string(1, r.get("source", "")) + f_string(2, r.get("group", "")) +
              f_string(3, r.get("operation", "")) + f_string(4, r.get("resource", "")))
    return f_message(1, header) + f_message(2, router) + f_bytes(3, content_bytes(msg["content"]))


def encode_frame(msg):
    payload = encode_payload(msg)
    return struct.pack(">IBBI", PACKER_VERSION, TYPE_MESSAGE, 0x00, len(payload)) + payload


# --------------------------------------------------------------------------------------------
# Independent decoder, for the check.
# --------------------------------------------------------------------------------------------

def read_varint(b, i):
    shift = n = 0
    while True:
        x = b[i]
        i += 1
        n |= (x & 0x7F) << shift
        shift += 7
        if not x & 0x80:
            return n, i


def fields(b):
    i, out = 0, []
    while i < len(b):
        key, i = read_varint(b, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, i = read_varint(b, i)
        elif wire == 2:
            ln, i = read_varint(b, i)
            v, i = b[i:i + ln], i + ln
        else:
            raise ValueError("unexpected wire type %d" % wire)
        out.append((num, wire, v))
    nums = [n for n, _, _ in out]
    assert nums == sorted(nums) and len(set(nums)) == len(nums), nums
    return out


def unzigzag(z):
    return (z >> 1) ^ -(z & 1)


def decode_frame(raw):
    version, typ, flags, ln = struct.unpack(">IBBI", raw[:10])
    assert (version, typ, flags) == (PACKER_VERSION, TYPE_MESSAGE, 0), (hex(version), typ, flags)
    payload = raw[10:]
    assert ln == len(payload)
    top = {n: v for n, _, v in fields(payload)}
    assert 1 in top and 2 in top, "header and router are always present"
    hf = {n: v for n, _, v in fields(top[1])}
    rf = {n: v for n, _, v in fields(top[2])}
    return {
        "id": hf.get(1, b"").decode(), "parent": hf.get(2, b"").decode(),
        "timestamp": unzigzag(hf.get(3, 0)), "sync": bool(hf.get(4, 0)), "type": hf.get(5, b"").decode(),
        "source": rf.get(1, b"").decode(), "group": rf.get(2, b"").decode(),
        "operation": rf.get(3, b"").decode(), "resource": rf.get(4, b"").decode(),
        "content": top.get(3, b""),
    }


def json_of(msg):
    """Our JSON form of the message: beehive key order, omitempty as in Go."""
    h = msg["header"]
    header = {"msg_id": h.get("msg_id", "")}
    if h.get("parent_msg_id"):
        header["parent_msg_id"] = h["parent_msg_id"]
    header["timestamp"] = h.get("timestamp", 0)
    if h.get("sync"):
        header["sync"] = True
    if h.get("type"):
        header["type"] = h["type"]
    route = {k: msg["route"][k] for k in ("source", "group", "operation", "resource") if msg["route"].get(k)}
    return go_json({"header": header, "route": route, "content": msg["content"]})


# --------------------------------------------------------------------------------------------
# The frames.
# --------------------------------------------------------------------------------------------

def rt(source, group, operation, resource):
    return {"source": source, "group": group, "operation": operation, "resource": resource}


def build():
    pod_uid = uid("frame/pod/default/nginx")
    small_pod = {
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": "nginx", "namespace": "default", "uid": pod_uid, "resourceVersion": "412",
                     "creationTimestamp": "2026-11-23T04:35:20Z",
                     "annotations": {"note": "a<b & c>d"}},
        "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27", "resources": {}}],
                 "nodeName": "ke-edge-test"},
        "status": {"phase": "Pending", "qosClass": "BestEffort"},
    }
    insert_id = uid("frame/pod-insert")
    return [
        ("frame-keepalive",
         "Edge keepalive (compat.md 2.6) as a viaduct frame: content \"ping\" travels as the 4 raw bytes "
         "70696e67, not JSON-quoted. Header has ID and Timestamp only (ParentID empty, Sync false: omitted).",
         {"header": {"msg_id": uid("frame/keepalive"), "timestamp": T0 + 15002},
          "route": rt("websocket", "resource", "keepalive", "node"), "content": "ping"}),
        ("frame-ack",
         "ACK (compat.md 3.3): ParentID (field 2) set, content \"OK\" as raw bytes 4f4b.",
         {"header": {"msg_id": uid("frame/ack"), "parent_msg_id": insert_id, "timestamp": T0 + 20021},
          "route": rt("edgecontroller", "resource", "response", "default/pod/nginx"), "content": "OK"}),
        ("frame-pod-insert",
         "Cloud pod insert with a small Pod: Content = Go json.Marshal bytes of the object (HTML-escaped: "
         "the annotation's < & > become \\u003c \\u0026 \\u003e inside the bytes). The WS form would carry "
         "header.resourceversion \"412\", but the frame has no field for it, so the json twin has none. "
         "Content > 127 bytes: two-byte length varints.",
         {"header": {"msg_id": insert_id, "timestamp": T0 + 20010},
          "route": rt("edgecontroller", "resource", "insert", "default/pod/nginx"), "content": small_pod}),
        ("frame-sync-unixpacket",
         "Header with Sync=true (field 4, varint 1) and MessageType \"unixpacket\" (field 5), nil content "
         "(no field 3; json content null). For decoders: KubeEdge's own translator.modelToProto copies Sync "
         "but never MessageType, so a real KubeEdge sender writes no field 5 (and WS senders force sync "
         "false); the json twin shows header.sync and header.type as beehive would.",
         {"header": {"msg_id": uid("frame/sync"), "timestamp": T0 + 30000, "sync": True, "type": "unixpacket"},
          "route": rt("edged", "meta", "query", "default/configmap/cm-demo"), "content": None}),
        ("frame-negative-timestamp",
         "Negative sint64 Timestamp -1795408500123: zigzag = 2*1795408500123-1 = 3590817000245, a 6-byte "
         "varint. (Never produced by KubeEdge; exercises the zigzag decoder.)",
         {"header": {"msg_id": uid("frame/negative"), "timestamp": -(T0 + 123)},
          "route": rt("websocket", "resource", "keepalive", "node"), "content": "ping"}),
        ("frame-timestamp-minus-one",
         "Timestamp -1: zigzag 1, the one-byte varint 01 (versus +1 -> 02).",
         {"header": {"msg_id": uid("frame/minus-one"), "timestamp": -1},
          "route": rt("websocket", "resource", "keepalive", "node"), "content": "ping"}),
        ("frame-empty-route",
         "Empty router: every MessageRouter field is \"\", so the set sub-message is written as tag 0x12 + "
         "length 0 (1200); json route {}. Header and content are normal.",
         {"header": {"msg_id": uid("frame/empty-route"), "timestamp": T0 + 40000},
          "route": {}, "content": "ping"}),
        ("frame-empty-message",
         "The zero beehive message edgecore emits on shutdown (capture seq 97/98/128: "
         "{\"header\":{\"msg_id\":\"\",\"timestamp\":0},\"route\":{},\"content\":null}) as a frame: empty "
         "header and router still present (0a00 1200), no content -> payload 0a001200, frame length 14.",
         {"header": {"msg_id": "", "timestamp": 0}, "route": {}, "content": None}),
    ]


def hand_decode(frame_hex):
    """Print a field-by-field walk of one frame, as a human check."""
    raw = bytes.fromhex(frame_hex)
    v, t, f, n = struct.unpack(">IBBI", raw[:10])
    print("    header: version=%#010x type=%#04x flags=%#04x payload_len=%d" % (v, t, f, n))
    p = raw[10:]
    for num, wire, val in fields(p):
        name = {1: "header", 2: "router", 3: "Content"}[num]
        print("    field %d (%s) wire %d len %d" % (num, name, wire, len(val)))
        if num in (1, 2):
            names = ({1: "ID", 2: "ParentID", 3: "Timestamp", 4: "Sync", 5: "MessageType"} if num == 1 else
                     {1: "Source", 2: "Group", 3: "Operation", 4: "Resouce"})
            for sn, sw, sv in fields(val):
                shown = unzigzag(sv) if (num, sn) == (1, 3) else (sv if sw == 0 else sv.decode())
                print("      %-11s = %r" % (names[sn], shown))
        else:
            print("      = %r" % val.decode())


def main():
    recs = []
    for name, note, msg in build():
        frame = encode_frame(msg)
        recs.append({"name": name, "note": note, "json": json_of(msg), "frame_hex": frame.hex()})
    with open(OUT, "w", encoding="utf-8", newline="\n") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")

    # Check: decode every frame independently and compare with its json twin.
    with open(OUT, encoding="utf-8") as f:
        back = [json.loads(l) for l in f]
    for r in back:
        d = decode_frame(bytes.fromhex(r["frame_hex"]))
        j = json.loads(r["json"])
        assert go_json(j) == r["json"], r["name"]  # the json twin is Go-encoded
        assert "resourceversion" not in j["header"]
        h, ro = j["header"], j["route"]
        assert d["id"] == h["msg_id"] and d["parent"] == h.get("parent_msg_id", ""), r["name"]
        assert d["timestamp"] == h["timestamp"] and d["sync"] == h.get("sync", False), r["name"]
        assert d["type"] == h.get("type", ""), r["name"]
        for k in ("source", "group", "operation", "resource"):
            assert d[k] == ro.get(k, ""), (r["name"], k)
        c = j["content"]
        expect = b"" if c is None else (c.encode() if isinstance(c, str) else go_json(c).encode())
        assert d["content"] == expect, r["name"]
        # Re-encoding the decoded message gives the same bytes.
        assert encode_frame(j).hex() == r["frame_hex"], r["name"]
    print("frames-v1.22.jsonl: %d frames; each decodes back to its json twin and re-encodes identically"
          % len(back))
    for r in back:
        print("  %-26s %4d bytes  %s%s" % (r["name"], len(r["frame_hex"]) // 2, r["frame_hex"][:48],
                                          "..." if len(r["frame_hex"]) > 48 else ""))
    ack = next(r for r in back if r["name"] == "frame-ack")
    print("hand decode of frame-ack:")
    hand_decode(ack["frame_hex"])
    empty = next(r for r in back if r["name"] == "frame-empty-message")
    assert empty["frame_hex"] == "01010100" "01" "00" "00000004" "0a001200", empty["frame_hex"]
    neg = next(r for r in back if r["name"] == "frame-timestamp-minus-one")
    assert "1801" in neg["frame_hex"]  # field 3 varint tag 0x18, zigzag(-1) = 1


if __name__ == "__main__":
    main()
