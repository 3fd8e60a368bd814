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
        if isinstance(content, str) and content.startswith("{"):
            put("twin_payloads", content.encode())
        elif isinstance(content, dict) and "kind" not in content:
            put("twin_payloads", json.dumps(content, separators=(",", ":")).encode())
    # A stream of lines, prefixed by the chunk-size byte the json_lines target reads.
    put("json_lines", b"\x07" + b"".join(payloads[:12]))
    put("json_lines", b"\x40" + b"".join(payloads[40:60]))
    for line in (VECTORS / "mqtt-v1.22.2.jsonl").read_text().splitlines():
        put("twin_payloads", json.loads(line)["payload"].encode())
    put("twin_payloads", b'{"Object":{"kind":"Node"},"Err":null}')
    put("twin_payloads", b'{"Object":null,"Err":{"ErrStatus":{"message":"x","code":409}}}')
    frames = VECTORS / "frames-v1.22.jsonl"
    if frames.exists():
        for line in frames.read_text().splitlines():
            put("binary_frame", bytes.fromhex(json.loads(line)["frame_hex"]))
    put("dmi_messages", b"\x12\x0e\x0a\x06modbus\x22\x04/tmp")


if __name__ == "__main__":
    main()
