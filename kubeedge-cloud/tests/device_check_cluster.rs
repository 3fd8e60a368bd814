//! Refused Devices against a real Kubernetes v1.32 kube-apiserver (with KubeEdge v1.23.1's own
//! device CRDs, from `../shared/peers`): the controller watches the cluster through
//! `KubeSource`, writes through `KubeWriter`, and serves an honest test edge over a real
//! CloudHub. A valid Device reaches the node; an absurd one (port 9999999999999,
//! collectCycle -5, a 100 KB desired value), which the API server stores as it is, does not,
//! and a Warning Event with the reasons is in the API server, once; fixed, it reaches the
//! node. Skipped (saying so) without the peers unless `KUBEEDGE_REQUIRE_PEERS=1`.

#![cfg(feature = "kube")]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Cloud, Pki, TestEdge, eventually};
use kubeedge_cloud::{CloudConfig, KubeSource, KubeSourceConfig, KubeWriter};
use kubeedge_testkit::peers::{ControlPlane, ControlPlaneOptions, Peers};
use serde_json::Value;
use tokio::sync::mpsc;

const NODE: &str = "edge-1";

const MODEL: &str = "apiVersion: devices.kubeedge.io/v1beta1
kind: DeviceModel
metadata: {name: thermo-model, namespace: default}
spec:
  protocol: modbus
  properties:
  - {name: temperature, type: INT, accessMode: ReadWrite, minimum: '0', maximum: '100'}
";

/// A Modbus TCP thermometer on `NODE` with `port`, `collect_cycle` and desired `value`.
fn device(name: &str, port: &str, collect_cycle: i64, value: &str) -> String {
    format!(
        "apiVersion: devices.kubeedge.io/v1beta1
kind: Device
metadata: {{name: {name}, namespace: default}}
spec:
  deviceModelRef: {{name: thermo-model}}
  nodeName: {NODE}
  protocol:
    protocolName: modbus
    configData: {{ip: 127.0.0.1, port: {port}, slaveID: 1}}
  properties:
  - name: temperature
    collectCycle: {collect_cycle}
    reportCycle: 1000
    desired: {{value: \"{value}\"}}
    visitors:
      protocolName: modbus
      configData: {{register: HoldingRegister, offset: 2, limit: 1, scale: 1}}
"
    )
}

/// The Events about `name` in `default`.
async fn events_about(cp: &ControlPlane, name: &str) -> Vec<Value> {
    let selector = format!("involvedObject.name={name}");
    cp.get_json(&["events", "-n", "default", "--field-selector", &selector])
        .await
        .and_then(|list| list["items"].as_array().cloned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_device_stays_in_the_cloud_with_an_event_until_it_is_fixed() {
    let Some(peers) = Peers::find() else { return };
    let cp = ControlPlane::start(&peers, ControlPlaneOptions::default()).await;
    let client = kubeedge_cloud::client(Some(cp.kubeconfig())).await.unwrap();

    let pki = Pki::new();
    let (tx, rx) = mpsc::channel(1024);
    let config = CloudConfig {
        inventory_grace: Duration::from_millis(200),
        tick: Duration::from_millis(50),
        ..CloudConfig::default()
    };
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let cloud = Cloud::start(&pki, KubeWriter::new(client.clone()), rx, config, listen).await;
    tokio::spawn(KubeSource::new(client, KubeSourceConfig::default()).run(tx, cloud.stop.clone()));
    let dir = tempfile::tempdir().unwrap();
    let edge = TestEdge::start(&pki, cloud.addr, NODE, &dir.path().join("edge.db")).await;

    cp.apply(MODEL).await.unwrap();
    cp.apply(&device("good-thermo", "1502", 1000, "20"))
        .await
        .unwrap();
    let big = "x".repeat(100 * 1024);
    cp.apply(&device("absurd-thermo", "9999999999999", -5, &big))
        .await
        .unwrap();
    // The API server stored it as it is: the CRD's schema lets all three through.
    let stored = cp
        .get_json(&["device", "-n", "default", "absurd-thermo"])
        .await
        .unwrap();
    assert_eq!(
        stored["spec"]["protocol"]["configData"]["port"],
        9_999_999_999_999_u64
    );
    assert_eq!(stored["spec"]["properties"][0]["collectCycle"], -5);
    let uid = stored["metadata"]["uid"].as_str().unwrap().to_owned();
    let rv = stored["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();

    eventually("the valid Device and its model at the node", || async {
        edge.stored("default/device/good-thermo").await.is_some()
            && edge
                .stored("default/devicemodel/thermo-model")
                .await
                .is_some()
    })
    .await;
    eventually("the Warning Event about the absurd Device", || async {
        !events_about(&cp, "absurd-thermo").await.is_empty()
    })
    .await;
    let events = events_about(&cp, "absurd-thermo").await;
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "InvalidDevice");
    assert_eq!(event["involvedObject"]["kind"], "Device");
    assert_eq!(event["involvedObject"]["uid"], uid.as_str());
    assert_eq!(event["involvedObject"]["resourceVersion"], rv.as_str());
    let message = event["message"].as_str().unwrap();
    for reason in [
        "spec.protocol.configData.port: 9999999999999 is out of range 1..=65535",
        "spec.properties[0].collectCycle: -5 is negative",
        "spec.properties[0].desired.value: a string of 102400 bytes (at most 65536)",
    ] {
        assert!(message.contains(reason), "{reason} not in {message}");
    }
    assert!(message.len() <= 1024, "{}", message.len());

    // The node's queue is in order: once a later change of the valid Device is there, the
    // absurd one would have been before it.
    cp.apply(&device("good-thermo", "1503", 1000, "21"))
        .await
        .unwrap();
    eventually("the valid Device's update at the node", || async {
        edge.stored("default/device/good-thermo")
            .await
            .is_some_and(|d| d["spec"]["protocol"]["configData"]["port"] == 1503)
    })
    .await;
    assert!(
        edge.stored("default/device/absurd-thermo").await.is_none(),
        "the absurd Device reached the node"
    );

    // Fixed: it flows, and no further Event is written for the valid version.
    cp.apply(&device("absurd-thermo", "1504", 1000, "22"))
        .await
        .unwrap();
    eventually("the fixed Device at the node", || async {
        edge.stored("default/device/absurd-thermo")
            .await
            .is_some_and(|d| {
                d["spec"]["protocol"]["configData"]["port"] == 1504
                    && d["spec"]["properties"][0]["collectCycle"] == 1000
            })
    })
    .await;
    assert_eq!(events_about(&cp, "absurd-thermo").await.len(), 1);
    assert_eq!(cloud.metrics.refused_devices(), 1);
}
