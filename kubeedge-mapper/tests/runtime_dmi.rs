//! End to end with the real edge side: a kubeedge-twin node (TwinEngine, EventBus on mosquitto,
//! DmiServer, SQLite store) holding the Device and DeviceModel that KubeEdge v1.22.2's cloud
//! sent in the golden capture (thermo-1, pointed at a pymodbus device), and the mapper runtime
//! in DMI mode: it registers, gets thermo-1, writes its desired value, and its reports make the
//! twin that MQTT clients read; a desired value changed in the cloud reaches the device through
//! DMI `UpdateDevice`; a property that fails makes the device `unhealthy` in the cloud's state
//! reports until it reads again.

mod common;
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use kubeedge_proto::{DeviceId, Message, NodeName};
use kubeedge_store::{FullPolicy, MetaManager, MetaManagerConfig, Outbox, Store, StoreConfig};
use kubeedge_twin::eventbus::{CloudInput, CloudOut, EventBus};
use kubeedge_twin::mqtt::{DEFAULT_SUBSCRIPTIONS, MqttBus, MqttConfig, MqttMode};
use kubeedge_twin::{
    DmiConfig, DmiServer, Ingress, IngressConfig, MapperRegistry, TwinConfig, TwinEngine,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn node_name() -> NodeName {
    NodeName::new(NODE).unwrap()
}

use common::PyModbus;
use kubeedge_mapper::Result;
use kubeedge_mapper::modbus::{ModbusConfig, ModbusDriver};
use kubeedge_mapper::runtime::{DeviceInstance, MapperConfig, MapperRuntime, ReportTarget};
use kubeedge_testkit::{Mosquitto, mosquitto_pub_ok, wait_until, within};
use support::{MqttProbe, Running};

const NODE: &str = "ke-edge-test";

/// The cloud as the node sees it: what it is sent lands in a channel.
#[derive(Clone)]
struct CloudSink(mpsc::UnboundedSender<Message>);

impl CloudOut for CloudSink {
    async fn queued(&self, messages: Vec<Message>) {
        for m in messages {
            let _ = self.0.send(m);
        }
    }

    async fn send(&self, message: Message) -> kubeedge_twin::Result<()> {
        let _ = self.0.send(message);
        Ok(())
    }
}

struct Node {
    _dir: tempfile::TempDir,
    store: Store,
    cloud_tx: mpsc::Sender<CloudInput>,
    cloud_rx: mpsc::UnboundedReceiver<Message>,
    dmi_socket: PathBuf,
    stop: CancellationToken,
}

/// An edge node on the external broker at `port`, as kubeedge-twin's own tests start it.
async fn start_node(port: u16) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path().join("edge.db"))).unwrap();
    let outbox = Outbox::new(store.clone(), 10_000, FullPolicy::Reject);
    let engine = TwinEngine::open(store.clone(), outbox, TwinConfig::new(node_name()))
        .await
        .unwrap();
    let (ingress, ingress_rx) = Ingress::new(IngressConfig::default());
    let stop = CancellationToken::new();
    let mut config = MqttConfig::new(
        MqttMode::External,
        format!("127.0.0.1:{port}"),
        kubeedge_twin::mqtt::DEFAULT_INTERNAL_ADDR,
    );
    config.reconnect_interval = Duration::from_millis(200);
    let subscriptions = DEFAULT_SUBSCRIPTIONS
        .iter()
        .map(|s| s.to_string())
        .collect();
    let bus = MqttBus::start(config, subscriptions, ingress.clone(), stop.clone())
        .await
        .unwrap();
    let handle = bus.handle();
    within("node MQTT connected", handle.connected())
        .await
        .unwrap();
    let dmi_socket = dir.path().join("dmi.sock");
    let mappers = MapperRegistry::with_timeouts(
        store.clone(),
        Duration::from_secs(2),
        Duration::from_secs(5),
    );
    let mut dmi_config = DmiConfig::new(node_name());
    dmi_config.socket_path = dmi_socket.clone();
    let dmi = DmiServer::new(dmi_config, store.clone(), ingress, mappers.clone());
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
    Node {
        _dir: dir,
        store,
        cloud_tx,
        cloud_rx,
        dmi_socket,
        stop,
    }
}

/// A captured cloud message (`tests/fixtures/ws-v1.22.2-seq<seq>.json` of kubeedge-twin), as
/// JSON to adjust.
fn fixture(seq: u32) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "../kubeedge-twin/tests/fixtures/ws-v1.22.2-seq{seq}.json"
    ));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn message(value: &Value) -> Message {
    Message::from_json(value.to_string().as_bytes()).expect("a KubeEdge message")
}

/// The captured thermo-1 insert, its Modbus device at 127.0.0.1:`port` (the capture's device
/// names only `slaveID`).
fn thermo_1(port: u16) -> Value {
    let mut msg = fixture(39);
    let config = &mut msg["content"]["spec"]["protocol"]["configData"];
    config["ip"] = json!("127.0.0.1");
    config["port"] = json!(port);
    config["timeout"] = json!(500);
    msg
}

fn modbus(device: &DeviceInstance) -> Result<ModbusDriver> {
    let config = ModbusConfig::from_protocol_config(&device.protocol.config_data)?;
    Ok(ModbusDriver::new(config.retries(0)))
}

/// `twin/get` over MQTT, as an application asks: the node's answer on `twin/get/result`.
async fn twin_get(port: u16, probe: &MqttProbe, event_id: &str) -> Value {
    let topic = "$hw/events/device/default/thermo-1/twin/get";
    let request = json!({"event_id": event_id, "timestamp": 1}).to_string();
    mosquitto_pub_ok(port, topic, request.as_bytes()).await;
    let result = format!("{topic}/result");
    probe
        .wait("twin/get/result", |s| {
            s.topic == result && s.json["event_id"] == event_id
        })
        .await
        .json
}

/// Asks `twin/get` until the twin's `temperature` reports `value`.
async fn twin_reports(port: u16, probe: &MqttProbe, value: &str) -> Value {
    let mut n = 0;
    within(&format!("the twin reports {value}"), async {
        loop {
            n += 1;
            let answer = twin_get(port, probe, &format!("get-{value}-{n}")).await;
            if answer["twin"]["temperature"]["actual"]["value"] == value {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
}

/// The cloud makes thermo-1 (`device`: its insert message) a member of `node` and sends its
/// model and itself; the MetaManager stores both (no mapper is registered yet to forward them
/// to). Then the mapper starts in DMI mode (devices and reports) and registers.
async fn start_mapper(node: &Node, device: Value) -> (Running, tempfile::TempDir, MetaManager) {
    let membership = json!({"event_id": "m", "timestamp": 1, "removed_devices": null,
        "added_devices": [{"id": "default/thermo-1", "name": "thermo-1", "description": "thermometer"}]});
    node.cloud_tx
        .send(CloudInput::Message(Box::new(Message::new(
            kubeedge_proto::Source::DeviceController,
            kubeedge_proto::Group::Twin,
            kubeedge_proto::Operation::Update,
            "membership",
            kubeedge_proto::Content::json(&membership).unwrap(),
        ))))
        .await
        .unwrap();
    let metamanager = MetaManager::new(node.store.clone(), MetaManagerConfig::new(node_name()));
    for msg in [fixture(37), device] {
        metamanager.from_cloud(message(&msg)).await.unwrap();
    }
    within("the node's DMI socket", async {
        while !node.dmi_socket.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let mapper_dir = tempfile::tempdir().unwrap();
    let mut config = MapperConfig::new("modbus-mapper", "modbus");
    config.report = ReportTarget::Dmi;
    config.edgecore_socket = node.dmi_socket.clone();
    config.mapper_socket = Some(mapper_dir.path().join("modbus.sock"));
    config.operation_timeout = Duration::from_secs(2);
    config.backoff_initial = Duration::from_millis(100);
    config.backoff_max = Duration::from_millis(500);
    config.property_backoff_max = Duration::from_millis(500);
    let running = Running::start(MapperRuntime::new(config, modbus));
    (running, mapper_dir, metamanager)
}

/// The next device state the node sends the cloud for thermo-1.
async fn next_state(cloud: &mut mpsc::UnboundedReceiver<Message>) -> String {
    within("a state report to the cloud", async {
        loop {
            let m = cloud.recv().await.unwrap();
            if m.route.resource == "device/default/thermo-1/state/update" {
                let content: Value = serde_json::from_str(
                    &m.content.decode::<String>().expect("a JSON string content"),
                )
                .unwrap();
                return content["device"]["state"]
                    .as_str()
                    .expect("a state")
                    .to_owned();
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dmi_mapper_runs_the_cloud_device_and_its_reports_make_the_twin() {
    let server = PyModbus::tcp(0).await;
    let broker = Mosquitto::start().await;
    let probe = MqttProbe::start(broker.port()).await;
    let mut node = start_node(broker.port()).await;
    let (running, mapper_dir, metamanager) = start_mapper(&node, thermo_1(server.port())).await;
    let id = DeviceId::new("default", "thermo-1").unwrap();
    wait_until("thermo-1 arrives with MapperRegister", || {
        running.handle.devices() == [id.clone()]
    })
    .await;
    let instance = running.handle.device(&id).unwrap();
    assert_eq!(instance.model, "thermo-model");
    assert_eq!(instance.properties[0].desired.as_deref(), Some("20"));

    // The Device's desired value (20) is written to its register (offset 2) when it starts...
    let check = ModbusDriver::new(ModbusConfig::tcp(format!("127.0.0.1:{}", server.port()), 1));
    within("desired 20 in the register", async {
        while check.read_holding_registers(2, 1).await.unwrap() != [20] {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // ...read back and reported over DMI: the node's twin has it.
    let answer = twin_reports(broker.port(), &probe, "20").await;
    assert_eq!(answer["twin"]["temperature"]["expected"]["value"], "20");
    // The device state went to the cloud too.
    assert_eq!(next_state(&mut node.cloud_rx).await, "online");

    // The cloud changes the desired value: the MetaManager stores the update and forwards it,
    // the node calls the mapper's UpdateDevice, the mapper writes 30 and reports it.
    let mut update = thermo_1(server.port());
    update["route"]["operation"] = json!("update");
    update["header"]["msg_id"] = json!(kubeedge_proto::new_message_id());
    update["header"]["resourceversion"] = json!("274");
    update["content"]["metadata"]["resourceVersion"] = json!("274");
    update["content"]["spec"]["properties"][0]["desired"]["value"] = json!("30");
    let forward = metamanager
        .from_cloud(message(&update))
        .await
        .unwrap()
        .forward
        .expect("forwarded to the twin");
    node.cloud_tx
        .send(CloudInput::Message(Box::new(forward.message)))
        .await
        .unwrap();
    within("desired 30 in the register", async {
        while check.read_holding_registers(2, 1).await.unwrap() != [30] {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let answer = twin_reports(broker.port(), &probe, "30").await;
    assert_eq!(answer["twin"]["temperature"]["expected"]["value"], "30");

    // GetDevice answers with the device and what it reported.
    let mut client =
        kubeedge_twin::dmi::grpc::device_mapper_service_client::DeviceMapperServiceClient::new(
            kubeedge_twin::dmi::unix_channel(
                mapper_dir.path().join("modbus.sock"),
                Duration::from_secs(2),
                Duration::from_secs(5),
            ),
        );
    let device = client
        .get_device(kubeedge_proto::dmi::GetDeviceRequest {
            device_name: "thermo-1".into(),
            device_namespace: "default".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .device
        .unwrap();
    let twin = &device.status.unwrap().twins[0];
    assert_eq!(twin.property_name, "temperature");
    assert_eq!(twin.reported.as_ref().unwrap().value, "30");
    assert_eq!(twin.observed_desired.as_ref().unwrap().value, "30");

    // The cloud deletes the device: the mapper stops it.
    let mut delete = thermo_1(server.port());
    delete["route"]["operation"] = json!("delete");
    delete["header"]["msg_id"] = json!(kubeedge_proto::new_message_id());
    delete["header"]["resourceversion"] = json!("275");
    let forward = metamanager
        .from_cloud(message(&delete))
        .await
        .unwrap()
        .forward
        .expect("forwarded to the twin");
    node.cloud_tx
        .send(CloudInput::Message(Box::new(forward.message)))
        .await
        .unwrap();
    wait_until("thermo-1 removed", || running.handle.devices().is_empty()).await;

    running.stop().await;
    assert!(
        !mapper_dir.path().join("modbus.sock").exists(),
        "the mapper's socket is removed when it stops"
    );
    node.stop.cancel();
}

/// A property that fails over DMI: exception 04 to the temperature's reads makes the device
/// `unhealthy` (DMI `ReportDeviceStates`, through the node to the cloud), the twin keeps the
/// last good value, and the mapper keeps reading it: once the device answers, the state is
/// `online` again and a new value reaches the twin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_property_is_reported_unhealthy_over_dmi_and_recovers() {
    let server = PyModbus::tcp(0).await;
    let broker = Mosquitto::start().await;
    let probe = MqttProbe::start(broker.port()).await;
    let mut node = start_node(broker.port()).await;
    let mut device = thermo_1(server.port());
    let property = &mut device["content"]["spec"]["properties"][0];
    property["collectCycle"] = json!(100);
    property["reportCycle"] = json!(200);
    let (running, _mapper_dir, _metamanager) = start_mapper(&node, device).await;
    twin_reports(broker.port(), &probe, "20").await;
    assert_eq!(next_state(&mut node.cloud_rx).await, "online");

    server.fault(2, 2, None);
    assert_eq!(next_state(&mut node.cloud_rx).await, "unhealthy");
    let before = server.logged("exc");
    wait_until("the temperature read again while failing", || {
        server.logged("exc") >= before + 2
    })
    .await;
    let answer = twin_reports(broker.port(), &probe, "20").await;
    assert_eq!(answer["twin"]["temperature"]["actual"]["value"], "20");

    // Another value in the register, then the device answers again: it reaches the twin.
    let check = ModbusDriver::new(ModbusConfig::tcp(format!("127.0.0.1:{}", server.port()), 1));
    check.write_single_register(2, 21).await.unwrap();
    server.heal();
    assert_eq!(next_state(&mut node.cloud_rx).await, "online");
    twin_reports(broker.port(), &probe, "21").await;
    running.stop().await;
    node.stop.cancel();
}

/// edgecore's calls on the mapper's `DeviceMapperService`, made directly: models first, then
/// devices; a model change restarts its devices (or is refused, keeping them running, when
/// they cannot take it); removal; `GetDevice`. No edgecore runs: registration keeps retrying
/// in the background and reports fail, which must not matter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_mapper_service_changes_the_running_devices() {
    use kubeedge_proto::dmi;
    use kubeedge_twin::dmi::convert;
    use kubeedge_twin::dmi::grpc::device_mapper_service_client::DeviceMapperServiceClient;
    use tonic::Code;

    let server = PyModbus::tcp(0).await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/modbus.sock");
    let mut config = MapperConfig::new("modbus-mapper", "modbus");
    config.report = ReportTarget::Dmi;
    config.edgecore_socket = dir.path().join("nobody.sock");
    config.mapper_socket = Some(socket.clone());
    config.operation_timeout = Duration::from_secs(2);
    config.backoff_initial = Duration::from_millis(100);
    config.backoff_max = Duration::from_millis(500);
    let running = Running::start(MapperRuntime::new(config, modbus));
    within("the mapper's socket", async {
        while !socket.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut client = DeviceMapperServiceClient::new(kubeedge_twin::dmi::unix_channel(
        socket.clone(),
        Duration::from_secs(2),
        Duration::from_secs(5),
    ));

    let model_json = fixture(37)["content"].clone();
    let device_json = thermo_1(server.port())["content"].clone();
    let model = convert::device_model_from_json(&model_json).unwrap();
    let device = convert::device_from_json(
        &convert::apply_model_defaults(&device_json, &model_json).unwrap(),
    )
    .unwrap();

    // A device whose model the mapper has not been given is refused.
    let err = client
        .register_device(dmi::RegisterDeviceRequest {
            device: Some(device.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("DeviceModel default/thermo-model not found"),
        "{err:?}"
    );

    let created = client
        .create_device_model(dmi::CreateDeviceModelRequest {
            model: Some(model.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.device_model_name, "thermo-model");
    let registered = client
        .register_device(dmi::RegisterDeviceRequest {
            device: Some(device.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            registered.device_namespace.as_str(),
            registered.device_name.as_str()
        ),
        ("default", "thermo-1")
    );
    let id = DeviceId::new("default", "thermo-1").unwrap();
    let handle = running.handle.clone();
    let value = |id: &DeviceId| {
        handle.device_status(id).and_then(|s| {
            s.properties
                .get("temperature")
                .and_then(|p| p.value.clone())
        })
    };
    wait_until("the desired 20 read back", || {
        value(&id).as_deref() == Some("20")
    })
    .await;
    let got = client
        .get_device(dmi::GetDeviceRequest {
            device_name: "thermo-1".into(),
            device_namespace: "default".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .device
        .unwrap();
    assert_eq!(
        got.spec.as_ref().unwrap().device_model_reference,
        "thermo-model"
    );
    assert_eq!(
        got.status.unwrap().twins[0]
            .reported
            .as_ref()
            .unwrap()
            .value,
        "20"
    );

    // The model's property becomes BOOLEAN: the device restarts with it (and its desired "20"
    // no longer fits, so it is refused, not written).
    let mut boolean = model.clone();
    boolean.spec.as_mut().unwrap().properties[0].r#type = "BOOLEAN".into();
    client
        .update_device_model(dmi::UpdateDeviceModelRequest {
            model: Some(boolean),
        })
        .await
        .unwrap();
    wait_until("read as BOOLEAN", || value(&id).as_deref() == Some("true")).await;
    let status = running.handle.device_status(&id).unwrap();
    assert!(
        status.properties["temperature"]
            .write_error
            .as_deref()
            .is_some_and(|e| e.contains("does not fit property type BOOLEAN")),
        "{status:?}"
    );

    // A model the device cannot take (a FLOAT in one register) is refused; it keeps running.
    let mut float = model.clone();
    float.spec.as_mut().unwrap().properties[0].r#type = "FLOAT".into();
    let err = client
        .update_device_model(dmi::UpdateDeviceModelRequest { model: Some(float) })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .contains("Device default/thermo-1: property temperature"),
        "{err:?}"
    );
    assert_eq!(running.handle.devices(), std::slice::from_ref(&id));

    // Removing the model leaves the device running; removing the device stops it.
    client
        .remove_device_model(dmi::RemoveDeviceModelRequest {
            model_name: "thermo-model".into(),
            model_namespace: "default".into(),
        })
        .await
        .unwrap();
    assert_eq!(running.handle.devices(), std::slice::from_ref(&id));
    let remove = || dmi::RemoveDeviceRequest {
        device_name: "thermo-1".into(),
        device_namespace: "default".into(),
    };
    client.remove_device(remove()).await.unwrap();
    assert!(running.handle.devices().is_empty());
    let err = client.remove_device(remove()).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .get_device(dmi::GetDeviceRequest {
            device_name: "thermo-1".into(),
            device_namespace: "default".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Names that could not be MQTT topic levels are refused.
    let err = client
        .remove_device(dmi::RemoveDeviceRequest {
            device_name: "a/b".into(),
            device_namespace: "default".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    running.stop().await;
}
