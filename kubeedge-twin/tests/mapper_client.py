#!/usr/bin/env python3
"""A KubeEdge-style mapper/application written with Debian's python3-paho-mqtt (1.6), not with
our code: it drives the device twin topics of an edge node over a real MQTT broker and checks
every answer field by field, as a KubeEdge mapper would read them.

Usage: mapper_client.py <host> <port> <node> <namespace> <device>
Exit status 0 when every check passed; otherwise the failed check is printed on stderr.
"""

import json
import queue
import re
import sys
import time

import paho.mqtt.client as mqtt

HOST, PORT, NODE, NS, NAME = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
DEV = f"$hw/events/device/{NS}/{NAME}"
OTHER = f"$hw/events/device/{NS}/no-such-device"
DEADLINE = 20.0
REASON_VALUE = ("The value of twin must only include upper or lowercase letters, number, english, "
                "and special letter - _ . , : / @ # and the length of value should be less than "
                "512 bytes")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

inbox = queue.Queue()
connected = queue.Queue()


def on_connect(client, _userdata, _flags, rc):
    if rc != 0:
        fail(f"connect refused: {rc}")
    for topic in (f"{DEV}/twin/update/+", f"{DEV}/twin/get/result", f"{DEV}/state/update/result",
                  f"{OTHER}/twin/update/result", f"$hw/events/node/{NODE}/membership/get/result"):
        client.subscribe(topic, qos=1)
    # The last SUBACK tells us every subscription is in place.
    connected.put(True)


def on_subscribe(_client, _userdata, mid, _granted):
    inbox.put(("<suback>", mid))


def on_message(_client, _userdata, msg):
    inbox.put((msg.topic, msg.payload))


def fail(why):
    print(f"mapper_client: FAILED: {why}", file=sys.stderr)
    sys.exit(1)


def check(cond, why):
    if not cond:
        fail(why)


def expect(topics):
    """Waits for one publish on each topic in `topics`; returns {topic: decoded JSON}."""
    want = set(topics)
    got = {}
    end = time.monotonic() + DEADLINE
    while want:
        left = end - time.monotonic()
        if left <= 0:
            fail(f"no publish on {sorted(want)}")
        try:
            topic, payload = inbox.get(timeout=left)
        except queue.Empty:
            continue
        if topic in want:
            want.discard(topic)
            got[topic] = json.loads(payload)
    return got


def publish(client, topic, payload):
    body = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
    client.publish(topic, body, qos=1).wait_for_publish()


def no_versions(twin):
    for key, value in twin.items():
        if value is not None:
            check("expected_version" not in value and "actual_version" not in value,
                  f"versions leaked into MQTT for {key}")


def main():
    client = mqtt.Client(client_id=f"mapper-{NAME}", clean_session=True)
    client.on_connect = on_connect
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.connect(HOST, PORT, keepalive=30)
    client.loop_start()
    connected.get(timeout=DEADLINE)
    # Wait for the five SUBACKs.
    for _ in range(5):
        topic, _ = inbox.get(timeout=DEADLINE)
        check(topic == "<suback>", f"unexpected publish before subscriptions: {topic}")

    # 1. A reported value with a type: result and document echo the event id.
    publish(client, f"{DEV}/twin/update",
            {"event_id": "m1", "timestamp": 1,
             "twin": {"temperature": {"actual": {"value": "25"}, "metadata": {"type": "int"}}}})
    got = expect([f"{DEV}/twin/update/result", f"{DEV}/twin/update/document"])
    res, doc = got[f"{DEV}/twin/update/result"], got[f"{DEV}/twin/update/document"]
    check(res["event_id"] == "m1", "result must echo the event id")
    t = res["twin"]["temperature"]
    check(t["actual"]["value"] == "25", "actual value")
    check(isinstance(t["actual"]["metadata"]["timestamp"], int), "actual timestamp")
    check(t["optional"] is True and t["metadata"] == {"type": "int"}, "optional/metadata")
    check("expected" not in t, "no expected side")
    no_versions(res["twin"])
    check(doc["event_id"] == "m1", "document echoes the event id")
    check(doc["twin"]["temperature"]["last"] is None, "document last is null for a new twin")
    check(doc["twin"]["temperature"]["current"]["actual"]["value"] == "25", "document current")

    # 2. A value with a space is refused with 400 and KubeEdge's reason; nothing changes.
    publish(client, f"{DEV}/twin/update",
            {"event_id": "m2", "timestamp": 2, "twin": {"temperature": {"actual": {"value": "a b"}}}})
    err = expect([f"{DEV}/twin/update/result"])[f"{DEV}/twin/update/result"]
    check(err["code"] == 400 and err["reason"] == REASON_VALUE, f"error result {err}")
    check(err["event_id"] == "", "KubeEdge leaves the event id empty for unparsable updates")

    # 3. Malformed JSON: 400 on the same result topic.
    publish(client, f"{DEV}/twin/update", b"{not json")
    err = expect([f"{DEV}/twin/update/result"])[f"{DEV}/twin/update/result"]
    check(err["code"] == 400, f"malformed JSON result {err}")

    # 4. Expected and actual differ: result, document and a delta with a fresh event id.
    publish(client, f"{DEV}/twin/update",
            {"event_id": "m4", "timestamp": 4,
             "twin": {"setpoint": {"expected": {"value": "40"}, "actual": {"value": "38"},
                                   "metadata": {"type": "int"}}}})
    got = expect([f"{DEV}/twin/update/result", f"{DEV}/twin/update/document",
                  f"{DEV}/twin/update/delta"])
    delta = got[f"{DEV}/twin/update/delta"]
    check(UUID.match(delta["event_id"]), "delta carries a fresh UUID")
    check(delta["delta"] == {"setpoint": "40"}, f"delta {delta['delta']}")
    check(set(delta["twin"]) == {"setpoint"}, "delta lists twins with an expected value")
    no_versions(delta["twin"])

    # 5. Another update of temperature re-publishes the setpoint delta (KubeEdge does).
    publish(client, f"{DEV}/twin/update",
            {"event_id": "m5", "timestamp": 5,
             "twin": {"temperature": {"actual": {"value": "26"}, "metadata": {"type": "int"}}}})
    got = expect([f"{DEV}/twin/update/result", f"{DEV}/twin/update/document",
                  f"{DEV}/twin/update/delta"])
    doc = got[f"{DEV}/twin/update/document"]["twin"]["temperature"]
    check(doc["last"]["actual"]["value"] == "25" and doc["current"]["actual"]["value"] == "26",
          "document last/current")

    # 6. State: result with a fresh event id and an RFC 3339 lastOnlineTime.
    publish(client, f"{DEV}/state/update", {"event_id": "m6", "timestamp": 6, "state": "online"})
    st = expect([f"{DEV}/state/update/result"])[f"{DEV}/state/update/result"]
    check(UUID.match(st["event_id"]), "state result carries a fresh UUID")
    check(st["device"]["name"] == NAME and st["device"]["state"] == "online", f"state {st}")
    check(RFC3339.match(st["device"]["lastOnlineTime"]), "lastOnlineTime")

    # 7. Malformed state update: 400 on the state result topic.
    publish(client, f"{DEV}/state/update", b"[1,2")
    st = expect([f"{DEV}/state/update/result"])[f"{DEV}/state/update/result"]
    check(st["code"] == 400, f"bad state result {st}")

    # 8. Get: both twins, no versions, event id echoed.
    publish(client, f"{DEV}/twin/get", {"event_id": "m8", "timestamp": 8})
    get = expect([f"{DEV}/twin/get/result"])[f"{DEV}/twin/get/result"]
    check(get["event_id"] == "m8", "get echoes the event id")
    check(set(get["twin"]) == {"temperature", "setpoint"}, f"get twins {get['twin']}")
    check(get["twin"]["temperature"]["actual"]["value"] == "26", "get value")
    no_versions(get["twin"])

    # 9. Malformed get: 400.
    publish(client, f"{DEV}/twin/get", b"\xff\xfe")
    get = expect([f"{DEV}/twin/get/result"])[f"{DEV}/twin/get/result"]
    check(get["code"] == 400, f"bad get {get}")

    # 10. Unknown device: 404 on its own result topic.
    publish(client, f"{OTHER}/twin/update",
            {"event_id": "m10", "timestamp": 10, "twin": {"x": {"actual": {"value": "1"}}}})
    nf = expect([f"{OTHER}/twin/update/result"])[f"{OTHER}/twin/update/result"]
    check(nf["code"] == 404 and nf["event_id"] == "m10", f"unknown device {nf}")

    # 11. Membership get.
    publish(client, f"$hw/events/node/{NODE}/membership/get", {"event_id": "m11", "timestamp": 11})
    topic = f"$hw/events/node/{NODE}/membership/get/result"
    mg = expect([topic])[topic]
    check(mg["event_id"] == "m11", "membership get echoes the event id")
    devices = {d["id"]: d for d in mg["devices"]}
    me = devices.get(f"{NS}/{NAME}")
    check(me is not None and me["state"] == "online", f"membership devices {mg['devices']}")
    check("twin" not in me, "membership get lists no twins")

    # 12. An upload for the cloud (checked on the Rust side).
    publish(client, "app1/user/hello", "plain text payload <&> é")

    client.loop_stop()
    client.disconnect()
    print("mapper_client: all checks passed")


if __name__ == "__main__":
    main()
