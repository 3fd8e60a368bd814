//! The whole device side on a real broker: MQTT client, EventBus, twin engine and SQLite, driven
//! by a mapper that is not our code (`tests/mapper_client.py`, python3-paho-mqtt) and by
//! mosquitto_pub/mosquitto_sub, against a real mosquitto and against the embedded broker.

#![cfg(feature = "store")]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kubeedge_proto::{Content, Group, Message, NodeName, Operation, Source};
use kubeedge_store::{FullPolicy, Outbox, Store, StoreConfig};
use kubeedge_testkit::{
    DEADLINE, Mosquitto, MosquittoSub, debian_python, free_port, mosquitto_pub,
    mosquitto_pub_lines, publish_until_received, within,
};
use kubeedge_twin::eventbus::{CloudInput, CloudOut, EventBus, stored_subscriptions};
use kubeedge_twin::mqtt::{DEFAULT_SUBSCRIPTIONS, MqttBus, MqttConfig, MqttMode};
use kubeedge_twin::{
    DmiConfig, DmiServer, Ingress, IngressConfig, MapperRegistry, TwinConfig, TwinEngine,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const NODE: &str = "edge-1";

/// The cloud as the bus sees it: everything queued or sent lands in a channel.
#[derive(Clone)]
struct CloudSink(mpsc::UnboundedSender<(bool, Message)>);

impl CloudOut for CloudSink {
    async fn queued(&self, messages: Vec<Message>) {
        for m in messages {
            let _ = self.0.send((true, m));
        }
    }

    async fn send(&self, message: Message) -> kubeedge_twin::Result<()> {
        let _ = self.0.send((false, message));
        Ok(())
    }
}

struct Node {
    _dir: tempfile::TempDir,
    store: Store,
    outbox: Outbox,
    ingress: Ingress,
    cloud_tx: mpsc::Sender<CloudInput>,
    cloud_rx: mpsc::UnboundedReceiver<(bool, Message)>,
    port: u16,
    dmi_socket: PathBuf,
    stop: CancellationToken,
}

async fn start_node(mode: MqttMode, broker_port: Option<u16>) -> Node {
    start_node_with(mode, broker_port, IngressConfig::default()).await
}

async fn start_node_with(
    mode: MqttMode,
    broker_port: Option<u16>,
    ingress_config: IngressConfig,
) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path().join("edge.db"))).unwrap();
    let outbox = Outbox::new(store.clone(), 10_000, FullPolicy::Reject);
    let engine = TwinEngine::open(
        store.clone(),
        outbox.clone(),
        TwinConfig::new(NodeName::new(NODE).unwrap()),
    )
    .await
    .unwrap();
    let (ingress, ingress_rx) = Ingress::new(ingress_config);
    let stop = CancellationToken::new();
    let internal_port = free_port();
    let mut config = MqttConfig::new(
        mode,
        format!("127.0.0.1:{}", broker_port.unwrap_or(1)),
        format!("127.0.0.1:{internal_port}").parse().unwrap(),
    );
    config.reconnect_interval = Duration::from_millis(200);
    let mut subscriptions: Vec<String> = DEFAULT_SUBSCRIPTIONS
        .iter()
        .map(|s| s.to_string())
        .collect();
    subscriptions.extend(stored_subscriptions(&store).await.unwrap());
    let bus = MqttBus::start(config, subscriptions, ingress.clone(), stop.clone())
        .await
        .unwrap();
    let handle = bus.handle();
    within("MQTT connected", handle.connected()).await.unwrap();
    let dmi_socket = dir.path().join("dmi.sock");
    let mappers = MapperRegistry::new(store.clone());
    let mut dmi_config = DmiConfig::new(NodeName::new(NODE).unwrap());
    dmi_config.socket_path = dmi_socket.clone();
    let dmi = DmiServer::new(dmi_config, store.clone(), ingress.clone(), mappers.clone());
    tokio::spawn(dmi.serve(stop.clone()));
    let (cloud_tx, cloud_in) = mpsc::channel(64);
    let (sink, cloud_rx) = mpsc::unbounded_channel();
    let eventbus =
        EventBus::new(engine, store.clone(), handle, CloudSink(sink)).with_mappers(mappers);
    let run_stop = stop.clone();
    tokio::spawn(async move {
        let _bus = bus;
        eventbus.run(ingress_rx, cloud_in, run_stop).await
    });
    let port = broker_port.unwrap_or(internal_port);
    Node {
        _dir: dir,
        store,
        outbox,
        ingress,
        cloud_tx,
        cloud_rx,
        port,
        dmi_socket,
        stop,
    }
}

fn membership(ids: &[&str]) -> CloudInput {
    let added: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| {
            let name = id.split('/').nth(1).unwrap();
            serde_json::json!({"id": id, "name": name, "description": "test device"})
        })
        .collect();
    let content = serde_json::json!({
        "event_id": "m", "timestamp": 1, "added_devices": added, "removed_devices": null
    });
    CloudInput::Message(Box::new(Message::new(
        Source::DeviceController,
        Group::Twin,
        Operation::Update,
        "membership",
        Content::json(&content).unwrap(),
    )))
}

fn cloud_user(op: Operation, topic: &str, content: Content) -> CloudInput {
    CloudInput::Message(Box::new(Message::new(
        Source::RouterEventBus,
        Group::User,
        op,
        topic,
        content,
    )))
}

/// Waits for `mosquitto_sub` to report the membership update, so the device exists before the
/// mapper starts.
async fn add_devices(node: &Node, ids: &[&str]) {
    let sub = MosquittoSub::start(
        node.port,
        &format!("$hw/events/node/{NODE}/membership/updated"),
    );
    let tx = node.cloud_tx.clone();
    let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    let ids = Arc::new(ids);
    publish_until_received(vec![sub], || {
        let (tx, ids) = (tx.clone(), Arc::clone(&ids));
        async move {
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            tx.send(membership(&refs)).await.unwrap();
        }
    })
    .await;
}

async fn run_mapper(port: u16) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mapper_client.py");
    let out = within(
        "the python mapper",
        tokio::process::Command::new(debian_python())
            .arg(&script)
            .args(["127.0.0.1", &port.to_string(), NODE, "default", "thermo-1"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("python3 runs");
    assert!(
        out.status.success(),
        "mapper failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Collects cloud messages until `done` says enough (or the deadline fails the test).
async fn collect_cloud(
    node: &mut Node,
    mut done: impl FnMut(&[(bool, Message)]) -> bool,
) -> Vec<(bool, Message)> {
    let mut got = Vec::new();
    within("cloud messages", async {
        while !done(&got) {
            got.push(node.cloud_rx.recv().await.unwrap());
        }
    })
    .await;
    got
}

async fn mapper_scenario(mut node: Node) {
    add_devices(&node, &["default/thermo-1"]).await;
    run_mapper(node.port).await;

    // What the cloud got: three twin reports and a state report (journaled), and the upload.
    let got = collect_cloud(&mut node, |got| {
        got.iter()
            .any(|(_, m)| m.route.resource == "app1/user/hello")
    })
    .await;
    let journaled: Vec<&str> = got
        .iter()
        .filter(|(queued, _)| *queued)
        .map(|(_, m)| m.route.resource.as_str())
        .collect();
    assert_eq!(
        journaled,
        [
            "device/default/thermo-1/twin/edge_updated",
            "device/default/thermo-1/twin/edge_updated",
            "device/default/thermo-1/twin/edge_updated",
            "device/default/thermo-1/state/update",
        ]
    );
    assert_eq!(node.outbox.len().await.unwrap(), 4);
    let upload = &got.last().unwrap().1;
    assert_eq!(upload.route.source, Some(Source::Bus));
    assert_eq!(upload.route.group, Some(Group::User));
    assert_eq!(upload.route.operation, Some(Operation::Upload));
    assert_eq!(
        upload.content.as_json(),
        r#""plain text payload \u003c\u0026\u003e é""#.as_bytes()
    );

    // The cloud subscribes a topic: it is kept in sub_topics and its traffic is uploaded.
    node.cloud_tx
        .send(cloud_user(
            Operation::Subscribe,
            "factory/line-1/#",
            Content::null(),
        ))
        .await
        .unwrap();
    let port = node.port;
    within("subscribed topic uploads", async {
        loop {
            mosquitto_pub(port, "factory/line-1/temp", b"21.5").await;
            if let Ok(Some((false, m))) =
                tokio::time::timeout(Duration::from_millis(300), node.cloud_rx.recv()).await
                && m.route.resource == "factory/line-1/temp"
            {
                assert_eq!(m.content.as_str().unwrap(), "21.5");
                break;
            }
        }
    })
    .await;
    assert_eq!(
        stored_subscriptions(&node.store).await.unwrap(),
        ["factory/line-1/#"]
    );
    // ...and an unsubscribe removes it (the bus keeps its own set for reconnects too).
    node.cloud_tx
        .send(cloud_user(
            Operation::Unsubscribe,
            "factory/line-1/#",
            Content::null(),
        ))
        .await
        .unwrap();
    let store = node.store.clone();
    within("unsubscribed", async {
        while !stored_subscriptions(&store).await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // A publish the cloud asks for on a wildcard topic is refused; the bus goes on.
    node.cloud_tx
        .send(cloud_user(
            Operation::Publish,
            "factory/+/cmd",
            Content::string("x"),
        ))
        .await
        .unwrap();

    // The cloud publishes: a mosquitto_sub receives the exact content.
    let sub = MosquittoSub::start(node.port, "factory/line-1/cmd");
    let tx = node.cloud_tx.clone();
    let out = publish_until_received(vec![sub], || {
        let tx = tx.clone();
        async move {
            tx.send(cloud_user(
                Operation::Publish,
                "factory/line-1/cmd",
                Content::string("start"),
            ))
            .await
            .unwrap();
        }
    })
    .await;
    assert_eq!(out[0], b"start");

    // A confirmation from the cloud removes a report from the outbox.
    let first = got.iter().find(|(q, _)| *q).unwrap().1.clone();
    let confirm = Message::new(
        Source::DeviceController,
        Group::Twin,
        Operation::Response,
        "twin",
        Content::string("OK"),
    )
    .with_parent(first.header.id.clone());
    node.cloud_tx
        .send(CloudInput::Message(Box::new(confirm)))
        .await
        .unwrap();
    within("the confirmed report leaves the outbox", async {
        while node.outbox.len().await.unwrap() != 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    node.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapper_against_mosquitto() {
    let broker = Mosquitto::start().await;
    let node = start_node(MqttMode::External, Some(broker.port())).await;
    mapper_scenario(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapper_against_the_embedded_broker() {
    let node = start_node(MqttMode::Internal, None).await;
    mapper_scenario(node).await;
}

/// Asks `twin/get` of `default/<device>` with mosquitto_pub until mosquitto_sub sees the answer.
async fn twin_get(port: u16, device: &str, event_id: &str) -> serde_json::Value {
    let topic = format!("$hw/events/device/default/{device}/twin/get");
    let sub = MosquittoSub::start(port, &format!("{topic}/result"));
    let request = format!(r#"{{"event_id":"{event_id}","timestamp":1}}"#);
    let out = publish_until_received(vec![sub], || {
        let (topic, request) = (topic.clone(), request.clone());
        async move {
            mosquitto_pub(port, &topic, request.as_bytes()).await;
        }
    })
    .await;
    serde_json::from_slice(&out[0]).unwrap()
}

/// One device floods its update topic; another device's `twin/get` is still answered, and the
/// bounded queue drops (and counts) what it cannot hold instead of growing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_one_device_does_not_stall_another() {
    let broker = Mosquitto::start().await;
    let node = start_node(MqttMode::External, Some(broker.port())).await;
    add_devices(&node, &["default/noisy", "default/quiet"]).await;

    // 20,000 updates in one mosquitto_pub process (-l: one message per stdin line).
    let mut lines = String::new();
    for i in 0..20_000 {
        lines.push_str(&format!(
            r#"{{"event_id":"f{i}","timestamp":1,"twin":{{"v":{{"actual":{{"value":"{i}"}}}}}}}}"#
        ));
        lines.push('\n');
    }
    let port = node.port;
    let flood = tokio::spawn(async move {
        let topic = "$hw/events/device/default/noisy/twin/update";
        mosquitto_pub_lines(port, topic, 0, lines.as_bytes()).await
    });

    // While it floods, the quiet device asks for its twins and gets an answer.
    let answer = twin_get(port, "quiet", "q").await;
    assert_eq!(answer["event_id"], "q");
    assert!(within("flood done", flood).await.unwrap().success());

    // The node is still serving the noisy device too.
    let answer = twin_get(port, "noisy", "n").await;
    assert_eq!(answer["event_id"], "n");
    assert!(answer["twin"]["v"]["actual"]["value"].is_string());
    eprintln!(
        "flood: {} updates dropped by the ingress queue",
        node.ingress.dropped()
    );
    node.stop.cancel();
}

/// Four publishers update one twin at once: every update is applied in turn (the edge counter
/// counts all of them) and every one is reported to the cloud.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_to_one_twin_all_count() {
    const PUBLISHERS: usize = 4;
    const EACH: usize = 100;
    let broker = Mosquitto::start().await;
    let roomy = IngressConfig {
        per_flow: 4096,
        max_flows: 64,
    };
    let node = start_node_with(MqttMode::External, Some(broker.port()), roomy).await;
    add_devices(&node, &["default/shared"]).await;
    let port = node.port;
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let mut lines = String::new();
        for i in 0..EACH {
            lines.push_str(&format!(
                r#"{{"event_id":"p{p}-{i}","timestamp":1,"twin":{{"v":{{"actual":{{"value":"p{p}-{i}"}}}}}}}}"#
            ));
            lines.push('\n');
        }
        publishers.push(tokio::spawn(async move {
            let topic = "$hw/events/device/default/shared/twin/update";
            mosquitto_pub_lines(port, topic, 1, lines.as_bytes()).await
        }));
    }
    for p in publishers {
        assert!(within("publisher", p).await.unwrap().success());
    }
    within("every update reported", async {
        while node.outbox.len().await.unwrap() < PUBLISHERS * EACH {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let version: String = node
        .store
        .read(|db| {
            Ok(db.query_row(
                "SELECT actual_version FROM device_twin WHERE deviceid = 'default/shared' AND name = 'v'",
                [],
                |r| r.get(0),
            )?)
        })
        .await
        .unwrap();
    assert_eq!(
        version,
        format!(r#"{{"cloud":0,"edge":{}}}"#, PUBLISHERS * EACH)
    );
    assert_eq!(node.outbox.len().await.unwrap(), PUBLISHERS * EACH);
    assert_eq!(node.ingress.dropped(), 0);
    node.stop.cancel();
}

/// A DMI mapper: the edge pushes it the Device and DeviceModel the cloud sent (the captured
/// ones, through the MetaManager), and its status and state reports become twin updates that
/// MQTT clients see and the cloud is told about.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dmi_mapper_gets_its_devices_and_reports_twins() {
    use common::recording_mapper::{Call, next_call, start_mapper};
    use kubeedge_proto::dmi;
    use kubeedge_store::{MetaManager, MetaManagerConfig};
    use kubeedge_twin::dmi::grpc::device_manager_service_client::DeviceManagerServiceClient;
    use kubeedge_twin::dmi::unix_channel;

    let mut node = start_node(MqttMode::Internal, None).await;
    add_devices(&node, &["default/thermo-1"]).await;

    // A modbus mapper serves its own socket and registers with the edge.
    let mapper_dir = tempfile::tempdir().unwrap();
    let mapper_socket = mapper_dir.path().join("modbus.sock");
    let (mut calls, _mapper) = start_mapper(&mapper_socket, node.stop.clone());
    within("the DMI socket", async {
        while !node.dmi_socket.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut edge =
        DeviceManagerServiceClient::new(unix_channel(node.dmi_socket.clone(), DEADLINE, DEADLINE));
    edge.mapper_register(dmi::MapperRegisterRequest {
        with_data: false,
        mapper: Some(dmi::MapperInfo {
            name: "modbus-mapper".into(),
            version: "v1".into(),
            api_version: "v1beta1".into(),
            protocol: "modbus".into(),
            address: mapper_socket.to_str().unwrap().as_bytes().to_vec(),
            state: "ok".into(),
        }),
    })
    .await
    .unwrap();

    // The cloud sends the model and the device; the MetaManager stores them and forwards them
    // to the twin side, which pushes them to the mapper.
    let metamanager = MetaManager::new(
        node.store.clone(),
        MetaManagerConfig::new(NodeName::new(NODE).unwrap()),
    );
    for seq in [37, 39] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/fixtures/ws-v1.22.2-seq{seq}.json"));
        let bytes = std::fs::read(path).unwrap();
        let msg = Message::from_json(bytes.trim_ascii_end()).unwrap();
        let outcome = metamanager.from_cloud(msg).await.unwrap();
        let forward = outcome.forward.expect("forwarded to the twin");
        node.cloud_tx
            .send(CloudInput::Message(Box::new(forward.message)))
            .await
            .unwrap();
    }
    match next_call(&mut calls).await {
        Call::CreateModel(model) => assert_eq!(model.name, "thermo-model"),
        other => panic!("expected the model first, got {other:?}"),
    }
    // The device's registration sends its model again first (the mapper may have missed it).
    match next_call(&mut calls).await {
        Call::CreateModel(model) => assert_eq!(model.name, "thermo-model"),
        other => panic!("expected the model before the device, got {other:?}"),
    }
    match next_call(&mut calls).await {
        Call::RegisterDevice(device) => {
            assert_eq!(
                (device.namespace.as_str(), device.name.as_str()),
                ("default", "thermo-1")
            );
        }
        other => panic!("expected the device, got {other:?}"),
    }

    // The mapper reports what it read and what it applied, and that the device is online.
    edge.report_device_status(dmi::ReportDeviceStatusRequest {
        device_name: "thermo-1".into(),
        device_namespace: "default".into(),
        reported_device: Some(dmi::DeviceStatus {
            twins: vec![dmi::Twin {
                property_name: "temperature".into(),
                observed_desired: Some(dmi::TwinProperty {
                    value: "20".into(),
                    metadata: Default::default(),
                }),
                reported: Some(dmi::TwinProperty {
                    value: "25".into(),
                    metadata: Default::default(),
                }),
            }],
            report_to_cloud: true,
            report_cycle: 10_000,
        }),
    })
    .await
    .unwrap();
    edge.report_device_states(dmi::ReportDeviceStatesRequest {
        device_name: "thermo-1".into(),
        device_namespace: "default".into(),
        state: "online".into(),
    })
    .await
    .unwrap();

    // MQTT clients see the twin; the cloud gets both reports.
    let port = node.port;
    let answer = twin_get(port, "thermo-1", "d").await;
    assert_eq!(answer["twin"]["temperature"]["actual"]["value"], "25");
    assert_eq!(answer["twin"]["temperature"]["expected"]["value"], "20");
    let got = collect_cloud(&mut node, |got| {
        got.iter().filter(|(queued, _)| *queued).count() == 2
    })
    .await;
    let reports: Vec<&str> = got
        .iter()
        .filter(|(queued, _)| *queued)
        .map(|(_, m)| m.route.resource.as_str())
        .collect();
    assert_eq!(
        reports,
        [
            "device/default/thermo-1/twin/edge_updated",
            "device/default/thermo-1/state/update"
        ]
    );
    // What KubeEdge's devicecontroller reads into DeviceStatus: the values themselves.
    let (_, update) = got
        .iter()
        .find(|(queued, m)| *queued && m.route.resource.ends_with("edge_updated"))
        .unwrap();
    let update: serde_json::Value = update.content.decode().unwrap();
    eprintln!("edge_updated: {update}");
    assert_eq!(
        update["twin"]["temperature"]["actual"]["value"], "25",
        "{update}"
    );
    node.stop.cancel();
}
