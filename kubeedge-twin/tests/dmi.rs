//! The DMI server and mapper client over real unix sockets, with a real SQLite store holding the
//! Device and DeviceModel KubeEdge v1.22.2's cloud sent in the golden capture
//! (`tests/fixtures/ws-v1.22.2-seq*.json`, copied from `ws-v1.22.2.jsonl`).

#![cfg(feature = "store")]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::recording_mapper::{Call, next_call, start_mapper};
use hyper_util::rt::TokioIo;
use kubeedge_proto::device::{DeviceState, DeviceStateUpdate};
use kubeedge_proto::dmi::google::protobuf::{FloatValue, StringValue};
use kubeedge_proto::dmi::{self, google::protobuf::Any};
use kubeedge_proto::twin::DeviceTwinUpdate;
use kubeedge_proto::{Message, NodeName, Operation};
use kubeedge_store::{MetaManager, MetaManagerConfig, Store, StoreConfig, meta};
use kubeedge_twin::dmi::convert::any_to_json;
use kubeedge_twin::dmi::grpc::device_manager_service_client::DeviceManagerServiceClient;
use kubeedge_twin::dmi::{RateLimit, mapper_meta_key};
use kubeedge_twin::{
    DmiConfig, DmiServer, Error, Ingress, IngressConfig, IngressReceiver, MapperRegistry,
};
use prost::Name;
use serde_json::{Value, json};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

/// The bound on every wait.
const WAIT: Duration = Duration::from_secs(10);
const NODE: &str = "ke-edge-test";

// ---------------------------------------------------------------------------------------------
// Fixtures and harness
// ---------------------------------------------------------------------------------------------

fn fixture(seq: u32) -> Message {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/ws-v1.22.2-seq{seq}.json"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Message::from_json(bytes.trim_ascii_end()).expect("fixture is a KubeEdge message")
}

/// A store file with the capture's DeviceModel (seq 37) and Device (seq 39) applied by the
/// MetaManager, plus the messages it forwarded to the twin.
async fn store_with_vectors(dir: &Path) -> (Store, MetaManager, Vec<Message>) {
    let store = Store::open(StoreConfig::new(dir.join("edge.db"))).expect("store opens");
    let metamanager = MetaManager::new(
        store.clone(),
        MetaManagerConfig::new(NodeName::new(NODE).unwrap()),
    );
    let mut forwarded = Vec::new();
    for seq in [37, 39] {
        forwarded.push(
            apply(&metamanager, seq)
                .await
                .expect("forwarded to the twin"),
        );
    }
    (store, metamanager, forwarded)
}

/// Applies a captured cloud message; returns what the MetaManager forwards to the twin.
async fn apply(metamanager: &MetaManager, seq: u32) -> Option<Message> {
    let outcome = metamanager
        .from_cloud(fixture(seq))
        .await
        .expect("MetaManager applies the vector");
    outcome.forward.map(|f| f.message)
}

struct Harness {
    socket: PathBuf,
    rx: IngressReceiver,
    registry: MapperRegistry,
    shutdown: CancellationToken,
    server: JoinHandle<kubeedge_twin::Result<()>>,
}

fn start(
    dir: &Path,
    store: Store,
    tweak: impl FnOnce(&mut DmiConfig),
    ingress: IngressConfig,
) -> Harness {
    let socket = dir.join("run/kubeedge/dmi.sock");
    let mut config = DmiConfig::new(NodeName::new(NODE).unwrap());
    config.socket_path = socket.clone();
    tweak(&mut config);
    let (ingress, rx) = Ingress::new(ingress);
    let registry = MapperRegistry::new(store.clone());
    let shutdown = CancellationToken::new();
    let server = DmiServer::new(config, store, ingress, registry.clone());
    let server = tokio::spawn(server.serve(shutdown.clone()));
    Harness {
        socket,
        rx,
        registry,
        shutdown,
        server,
    }
}

impl Harness {
    async fn stop(self) -> PathBuf {
        self.shutdown.cancel();
        timeout(WAIT, self.server)
            .await
            .expect("server stops after cancellation")
            .expect("server task")
            .expect("server ends cleanly");
        self.socket
    }
}

fn uds_endpoint(
    path: &Path,
) -> impl tower::Service<Uri, Response = TokioIo<UnixStream>, Error = std::io::Error, Future = impl Send>
+ Send
+ 'static {
    let path = path.to_owned();
    service_fn(move |_: Uri| {
        let path = path.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
    })
}

/// A mapper-side client of edgecore's DMI socket, once the server listens.
async fn dmi_client(path: &Path) -> DeviceManagerServiceClient<Channel> {
    timeout(WAIT, async {
        loop {
            let endpoint = Endpoint::from_static("http://[::]:50051");
            match endpoint.connect_with_connector(uds_endpoint(path)).await {
                Ok(channel) => return DeviceManagerServiceClient::new(channel),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("DMI server listens")
}

fn mapper(name: &str, protocol: &str, address: &Path) -> dmi::MapperInfo {
    dmi::MapperInfo {
        name: name.into(),
        version: "v1.0.0".into(),
        api_version: "v1beta1".into(),
        protocol: protocol.into(),
        address: address.as_os_str().as_encoded_bytes().to_vec(),
        state: "running".into(),
    }
}

fn register_request(info: dmi::MapperInfo, with_data: bool) -> dmi::MapperRegisterRequest {
    dmi::MapperRegisterRequest {
        with_data,
        mapper: Some(info),
    }
}

fn unpack(value: &Option<dmi::CustomizedValue>, key: &str) -> (String, Value) {
    let any: &Any = &value.as_ref().expect("configData").data[key];
    (
        any.type_url.clone(),
        any_to_json(any).expect("a wrapper value"),
    )
}

/// Checks the DMI form of the capture's `thermo-1` (desired value `desired`).
fn assert_thermo_1(device: &dmi::Device, desired: &str) {
    assert_eq!(device.name, "thermo-1");
    assert_eq!(device.namespace, "default");
    let spec = device.spec.as_ref().expect("spec");
    assert_eq!(spec.device_model_reference, "thermo-model");
    let protocol = spec.protocol.as_ref().expect("protocol");
    assert_eq!(protocol.protocol_name, "modbus");
    // Go decodes JSON numbers as float64 and dataToAny narrows them to FloatValue.
    assert_eq!(
        unpack(&protocol.config_data, "slaveID"),
        (FloatValue::type_url(), json!(1.0))
    );
    assert_eq!(spec.properties.len(), 1);
    let property = &spec.properties[0];
    assert_eq!(property.name, "temperature");
    let wanted = dmi::TwinProperty {
        value: desired.into(),
        metadata: [("type".to_owned(), "int".to_owned())].into(),
    };
    assert_eq!(property.desired.as_ref(), Some(&wanted));
    let visitors = property.visitors.as_ref().expect("visitors");
    assert_eq!(visitors.protocol_name, "modbus");
    let config = &visitors.config_data;
    assert_eq!(config.as_ref().map(|c| c.data.len()), Some(3));
    assert_eq!(
        unpack(config, "limit"),
        (FloatValue::type_url(), json!(1.0))
    );
    assert_eq!(
        unpack(config, "offset"),
        (FloatValue::type_url(), json!(2.0))
    );
    assert_eq!(
        unpack(config, "register"),
        (StringValue::type_url(), json!("HoldingRegister"))
    );
    assert_eq!(property.report_cycle, 10_000);
    assert_eq!(property.collect_cycle, 10_000);
    assert!(property.report_to_cloud);
    assert_eq!(property.push_method, None);
    assert!(spec.methods.is_empty());
}

fn assert_thermo_model(model: &dmi::DeviceModel) {
    assert_eq!(model.name, "thermo-model");
    assert_eq!(model.namespace, "default");
    let spec = model.spec.as_ref().expect("model spec");
    assert_eq!(
        spec.properties,
        [dmi::ModelProperty {
            name: "temperature".into(),
            description: "temperature in degree celsius".into(),
            r#type: "INT".into(),
            access_mode: "ReadWrite".into(),
            minimum: "-40".into(),
            maximum: "120".into(),
            unit: "degree celsius".into(),
        }]
    );
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapper_register_returns_the_devices_of_its_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _mm, _) = store_with_vectors(dir.path()).await;
    let h = start(dir.path(), store.clone(), |_| {}, IngressConfig::default());
    let mut client = dmi_client(&h.socket).await;

    let modbus_sock = dir.path().join("modbus.sock");
    let response = client
        .mapper_register(register_request(
            mapper("modbus-mapper", "modbus", &modbus_sock),
            true,
        ))
        .await
        .expect("modbus mapper registers")
        .into_inner();
    assert_eq!(response.device_list.len(), 1);
    assert_eq!(response.model_list.len(), 1);
    assert_thermo_1(&response.device_list[0], "20");
    assert_thermo_model(&response.model_list[0]);
    // The capture's device has no status yet: an empty DeviceStatus, as Go's round trip makes.
    assert_eq!(
        response.device_list[0].status,
        Some(dmi::DeviceStatus::default())
    );

    // Stored where KubeEdge stores it, as Go's json.Marshal writes it.
    let row = store
        .read(|conn| meta::get(conn, &mapper_meta_key("modbus-mapper")))
        .await
        .unwrap()
        .expect("mapper record stored");
    assert_eq!(row.key, "node/nodeID/namespace/devicemapper/modbus-mapper");
    assert_eq!(row.kind, "devicemapper");
    let record: Value = serde_json::from_str(&row.value).unwrap();
    assert_eq!(record["protocol"], "modbus");
    assert_eq!(record["api_version"], "v1beta1");
    let address = kubeedge_twin::dmi::convert::mapper_info_from_json(&row.value)
        .unwrap()
        .address;
    assert_eq!(address, modbus_sock.as_os_str().as_encoded_bytes());
    assert_eq!(
        h.registry.mapper("modbus").map(|m| m.address),
        Some(address)
    );

    // Another protocol: registered, but no devices.
    let opcua = client
        .mapper_register(register_request(
            mapper("opcua-mapper", "opcua", &dir.path().join("opcua.sock")),
            true,
        ))
        .await
        .expect("opcua mapper registers")
        .into_inner();
    assert!(opcua.device_list.is_empty() && opcua.model_list.is_empty());

    // Without withData: nothing returned.
    let quiet = client
        .mapper_register(register_request(
            mapper("modbus-mapper", "modbus", &modbus_sock),
            false,
        ))
        .await
        .expect("re-registration")
        .into_inner();
    assert!(quiet.device_list.is_empty());

    // No protocol, no mapper info: refused.
    let err = client
        .mapper_register(register_request(mapper("nameless", "", &modbus_sock), true))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("protocol is nil"), "{err:?}");
    let err = client
        .mapper_register(dmi::MapperRegisterRequest {
            with_data: true,
            mapper: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .mapper_register(register_request(
            mapper("a/b", "modbus", &modbus_sock),
            false,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    h.stop().await;

    // A restart finds the mappers again.
    let reloaded = MapperRegistry::new(store.clone());
    assert_eq!(reloaded.load().await.unwrap(), 2);
    let protocols: Vec<String> = reloaded.mappers().into_iter().map(|m| m.protocol).collect();
    assert_eq!(protocols, ["modbus", "opcua"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_become_twin_and_state_events() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _mm, _) = store_with_vectors(dir.path()).await;
    let mut h = start(dir.path(), store, |_| {}, IngressConfig::default());
    let mut client = dmi_client(&h.socket).await;

    let twin = |name: &str, desired: &str, reported: &str| dmi::Twin {
        property_name: name.into(),
        observed_desired: Some(dmi::TwinProperty {
            value: desired.into(),
            metadata: Default::default(),
        }),
        reported: Some(dmi::TwinProperty {
            value: reported.into(),
            metadata: [("timestamp".to_owned(), "1".to_owned())].into(),
        }),
    };
    client
        .report_device_status(dmi::ReportDeviceStatusRequest {
            device_name: "thermo-1".into(),
            device_namespace: "default".into(),
            reported_device: Some(dmi::DeviceStatus {
                twins: vec![twin("temperature", "20", "25")],
                report_to_cloud: true,
                report_cycle: 10_000,
            }),
        })
        .await
        .expect("status accepted");
    let event = timeout(WAIT, h.rx.recv()).await.unwrap().unwrap();
    assert_eq!(
        event.topic,
        "$hw/events/device/default/thermo-1/twin/update"
    );
    // Go's field order, event_id always written.
    assert!(
        event.payload.starts_with(br#"{"event_id":"","timestamp":"#),
        "{:?}",
        event.payload
    );
    let update = DeviceTwinUpdate::parse(&event.payload).expect("the twin engine accepts it");
    assert_eq!(update.event_id, "");
    assert!(update.timestamp > 0);
    assert_eq!(update.twin.len(), 1);
    let temperature = update.twin["temperature"].as_ref().expect("a twin");
    let value =
        |v: &Option<kubeedge_proto::twin::TwinValue>| v.as_ref().and_then(|v| v.value.clone());
    assert_eq!(value(&temperature.expected).as_deref(), Some("20"));
    assert_eq!(value(&temperature.actual).as_deref(), Some("25"));
    assert_eq!(temperature.metadata, None);

    // One event per twin, as KubeEdge sends them.
    client
        .report_device_status(dmi::ReportDeviceStatusRequest {
            device_name: "thermo-1".into(),
            device_namespace: "default".into(),
            reported_device: Some(dmi::DeviceStatus {
                twins: vec![twin("temperature", "20", "26"), twin("humidity", "", "40")],
                ..Default::default()
            }),
        })
        .await
        .expect("status accepted");
    let mut keys = Vec::new();
    for _ in 0..2 {
        let event = timeout(WAIT, h.rx.recv()).await.unwrap().unwrap();
        let update = DeviceTwinUpdate::parse(&event.payload).unwrap();
        keys.extend(update.twin.into_keys());
    }
    assert_eq!(keys, ["temperature", "humidity"]);

    client
        .report_device_states(dmi::ReportDeviceStatesRequest {
            device_name: "thermo-1".into(),
            device_namespace: "default".into(),
            state: "online".into(),
        })
        .await
        .expect("state accepted");
    let event = timeout(WAIT, h.rx.recv()).await.unwrap().unwrap();
    assert_eq!(
        event.topic,
        "$hw/events/device/default/thermo-1/state/update"
    );
    let state = DeviceStateUpdate::parse(&event.payload).unwrap();
    assert_eq!(state.state().unwrap(), DeviceState::Online);
    assert_eq!(state.event_id, "");
    assert!(state.timestamp > 0);

    // No twins, no state: refused, nothing queued.
    let err = client
        .report_device_status(dmi::ReportDeviceStatusRequest {
            device_name: "thermo-1".into(),
            device_namespace: "default".into(),
            reported_device: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .report_device_states(dmi::ReportDeviceStatesRequest {
            device_name: "thermo-1".into(),
            device_namespace: "default".into(),
            state: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(h.rx.is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_device_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _mm, _) = store_with_vectors(dir.path()).await;
    let h = start(dir.path(), store, |_| {}, IngressConfig::default());
    let mut client = dmi_client(&h.socket).await;

    let names = ["a/b", "x+", "#", "", "a\0b", "../x", "a b"];
    for name in names {
        let err = client
            .report_device_states(dmi::ReportDeviceStatesRequest {
                device_name: name.into(),
                device_namespace: "default".into(),
                state: "online".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "state of {name:?}: {err:?}"
        );
        let err = client
            .report_device_status(dmi::ReportDeviceStatusRequest {
                device_name: name.into(),
                device_namespace: "default".into(),
                reported_device: Some(dmi::DeviceStatus {
                    twins: vec![dmi::Twin {
                        property_name: "temperature".into(),
                        observed_desired: None,
                        reported: Some(dmi::TwinProperty {
                            value: "1".into(),
                            metadata: Default::default(),
                        }),
                    }],
                    ..Default::default()
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "status of {name:?}: {err:?}"
        );
    }
    for namespace in ["", "+", "ns/x", "#"] {
        let err = client
            .report_device_states(dmi::ReportDeviceStatesRequest {
                device_name: "thermo-1".into(),
                device_namespace: namespace.into(),
                state: "online".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "namespace {namespace:?}");
    }
    assert!(h.rx.is_empty(), "nothing reached the ingress");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_are_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _mm, _) = store_with_vectors(dir.path()).await;
    // KubeEdge's limiter (1 per second, burst 100); an ingress large enough not to interfere.
    let big = IngressConfig {
        per_flow: 10_000,
        max_flows: 16,
    };
    let h = start(dir.path(), store.clone(), |_| {}, big);
    let mut client = dmi_client(&h.socket).await;
    let state = dmi::ReportDeviceStatesRequest {
        device_name: "thermo-1".into(),
        device_namespace: "default".into(),
        state: "online".into(),
    };
    let (mut ok, mut exhausted) = (0, 0);
    for _ in 0..150 {
        match client.report_device_states(state.clone()).await {
            Ok(_) => ok += 1,
            Err(e) if e.code() == Code::ResourceExhausted => {
                assert!(e.message().contains("too many request"), "{e:?}");
                exhausted += 1;
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert!(ok >= 100, "the burst is served ({ok})");
    assert!(exhausted > 0, "the flood beyond the burst is refused");
    assert_eq!(h.rx.len(), ok);
    h.stop().await;

    // A configured limit: exactly the burst, then nothing (no refill within the hour).
    let strict = |c: &mut DmiConfig| {
        c.rate = RateLimit {
            every: Duration::from_secs(3600),
            burst: 5,
        }
    };
    let h = start(dir.path(), store.clone(), strict, IngressConfig::default());
    let mut client = dmi_client(&h.socket).await;
    let mut codes = Vec::new();
    for _ in 0..8 {
        codes.push(match client.report_device_states(state.clone()).await {
            Ok(_) => Code::Ok,
            Err(e) => e.code(),
        });
    }
    assert_eq!(codes[..5], [Code::Ok; 5]);
    assert_eq!(codes[5..], [Code::ResourceExhausted; 3]);
    h.stop().await;

    // A full ingress (the twin engine is behind) is RESOURCE_EXHAUSTED too.
    let small = IngressConfig {
        per_flow: 1,
        max_flows: 16,
    };
    let h = start(dir.path(), store, |_| {}, small);
    let mut client = dmi_client(&h.socket).await;
    client.report_device_states(state.clone()).await.unwrap();
    let err = client.report_device_states(state).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(h.rx.len(), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_changes_reach_the_mapper() {
    let dir = tempfile::tempdir().unwrap();
    let (store, metamanager, forwarded) = store_with_vectors(dir.path()).await;
    let h = start(dir.path(), store, |_| {}, IngressConfig::default());
    let mut client = dmi_client(&h.socket).await;

    let mapper_sock = dir.path().join("modbus-mapper.sock");
    let mapper_stop = CancellationToken::new();
    let (mut calls, mapper_task) = start_mapper(&mapper_sock, mapper_stop.clone());
    client
        .mapper_register(register_request(
            mapper("modbus-mapper", "modbus", &mapper_sock),
            false,
        ))
        .await
        .expect("mapper registers");

    // What the MetaManager forwarded for seq 37 (model insert) and seq 39 (device insert).
    let [model_insert, device_insert] = &forwarded[..] else {
        panic!("two forwards")
    };
    assert_eq!(device_insert.route.resource, "default/device/thermo-1");
    assert_eq!(device_insert.route.operation, Some(Operation::Insert));

    h.registry.apply_meta_message(model_insert).await.unwrap();
    match next_call(&mut calls).await {
        Call::CreateModel(model) => assert_thermo_model(&model),
        other => panic!("expected CreateDeviceModel, got {other:?}"),
    }

    // A device insert sends its model again first: the mapper may have registered after the
    // model arrived and never got it.
    h.registry.apply_meta_message(device_insert).await.unwrap();
    match next_call(&mut calls).await {
        Call::CreateModel(model) => assert_thermo_model(&model),
        other => panic!("expected CreateDeviceModel before the device, got {other:?}"),
    }
    match next_call(&mut calls).await {
        Call::RegisterDevice(device) => assert_thermo_1(&device, "20"),
        other => panic!("expected RegisterDevice, got {other:?}"),
    }

    // seq 42: the cloud changes the desired value -> UpdateDevice.
    let update = apply(&metamanager, 42).await.expect("forwarded");
    assert_eq!(update.route.operation, Some(Operation::Update));
    h.registry.apply_meta_message(&update).await.unwrap();
    match next_call(&mut calls).await {
        Call::UpdateDevice(device) => assert_thermo_1(&device, "30"),
        other => panic!("expected UpdateDevice, got {other:?}"),
    }

    // seq 48: the cloud echoes a twin report as a status-only update: not sent to the mapper
    // (the next call the mapper sees is the model removal).
    let status_only = apply(&metamanager, 48).await.expect("forwarded");
    h.registry.apply_meta_message(&status_only).await.unwrap();

    // A device of a protocol without a mapper: a returned error.
    let mut orphan = fixture(39);
    let mut content: Value = orphan.content.decode().unwrap();
    content["metadata"]["name"] = json!("thermo-2");
    content["spec"]["protocol"]["protocolName"] = json!("opcua");
    orphan.content = kubeedge_proto::Content::json(&content).unwrap();
    orphan.route.resource = "default/device/thermo-2".into();
    let err = h.registry.apply_meta_message(&orphan).await.unwrap_err();
    assert!(
        matches!(&err, Error::Dmi(m) if m.contains("no mapper registered for protocol \"opcua\"")),
        "{err:?}"
    );

    // seq 115 / 118: the model and the device are deleted.
    let model_delete = apply(&metamanager, 115).await.expect("forwarded");
    h.registry.apply_meta_message(&model_delete).await.unwrap();
    assert_eq!(
        next_call(&mut calls).await,
        Call::RemoveModel("default".into(), "thermo-model".into())
    );
    let device_delete = apply(&metamanager, 118).await.expect("forwarded");
    assert_eq!(device_delete.route.operation, Some(Operation::Delete));
    h.registry.apply_meta_message(&device_delete).await.unwrap();
    assert_eq!(
        next_call(&mut calls).await,
        Call::RemoveDevice("default".into(), "thermo-1".into())
    );

    // A model update goes to the mapper of the model's protocol.
    let model: Value = fixture(37).content.decode().unwrap();
    h.registry.update_model(&model).await.unwrap();
    match next_call(&mut calls).await {
        Call::UpdateModel(model) => assert_thermo_model(&model),
        other => panic!("expected UpdateDeviceModel, got {other:?}"),
    }

    // Malformed messages are errors; other resource types are ignored.
    let mut bad = fixture(39);
    bad.route.resource = "default/device".into();
    assert!(matches!(
        h.registry.apply_meta_message(&bad).await,
        Err(Error::InvalidMessage(_))
    ));
    let mut other = fixture(39);
    other.route.resource = "default/configmap/x".into();
    h.registry.apply_meta_message(&other).await.unwrap();

    // A mapper that went away: the call fails within the timeouts.
    mapper_stop.cancel();
    timeout(WAIT, mapper_task).await.unwrap().unwrap();
    let _ = std::fs::remove_file(&mapper_sock);
    let device: Value = fixture(39).content.decode().unwrap();
    let err = timeout(WAIT, h.registry.register_device(&device))
        .await
        .expect("bounded by the timeouts")
        .unwrap_err();
    assert!(matches!(err, Error::Dmi(_)), "{err:?}");
    assert!(calls.try_recv().is_err(), "no unexpected calls");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _mm, _) = store_with_vectors(dir.path()).await;
    let socket = dir.path().join("run/kubeedge/dmi.sock");

    // A socket file left by a crashed run: bound once, nobody listening.
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());

    let h = start(dir.path(), store.clone(), |_| {}, IngressConfig::default());
    let mut client = dmi_client(&h.socket).await;
    client
        .mapper_register(register_request(
            mapper("m", "modbus", &dir.path().join("m.sock")),
            false,
        ))
        .await
        .expect("the stale socket was replaced");

    // A second server on a live socket refuses to steal it.
    let (ingress, _rx) = Ingress::new(IngressConfig::default());
    let mut config = DmiConfig::new(NodeName::new(NODE).unwrap());
    config.socket_path = socket.clone();
    let second = DmiServer::new(
        config,
        store.clone(),
        ingress,
        MapperRegistry::new(store.clone()),
    );
    let err = timeout(WAIT, second.serve(CancellationToken::new()))
        .await
        .expect("refused at once")
        .unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    assert!(socket.exists());

    drop(client);
    let path = h.stop().await;
    assert_eq!(path, socket);
    assert!(!socket.exists(), "the socket file is removed on shutdown");

    // A path that is not a socket is left alone.
    std::fs::write(&socket, b"not a socket").unwrap();
    let (ingress, _rx) = Ingress::new(IngressConfig::default());
    let mut config = DmiConfig::new(NodeName::new(NODE).unwrap());
    config.socket_path = socket.clone();
    let third = DmiServer::new(config, store.clone(), ingress, MapperRegistry::new(store));
    let err = timeout(WAIT, third.serve(CancellationToken::new()))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&socket).unwrap(), b"not a socket");
}

/// The cloud sends a model and its device on separate queues: when the device arrives first,
/// its registration fails for want of the model, and it is registered when the model comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_arrives_before_its_model_is_registered_when_the_model_comes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path().join("edge.db"))).unwrap();
    let metamanager = MetaManager::new(
        store.clone(),
        MetaManagerConfig::new(NodeName::new(NODE).unwrap()),
    );
    let h = start(dir.path(), store, |_| {}, IngressConfig::default());
    let mut client = dmi_client(&h.socket).await;
    let mapper_sock = dir.path().join("modbus-mapper.sock");
    let mapper_stop = CancellationToken::new();
    let (mut calls, mapper_task) = start_mapper(&mapper_sock, mapper_stop.clone());
    client
        .mapper_register(register_request(
            mapper("modbus-mapper", "modbus", &mapper_sock),
            false,
        ))
        .await
        .expect("mapper registers");

    // The device (seq 39) first: stored, but the mapper cannot be given it yet.
    let device_insert = apply(&metamanager, 39).await.expect("forwarded");
    let err = h
        .registry
        .apply_meta_message(&device_insert)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Dmi(m) if m.contains("not found")),
        "{err:?}"
    );

    // Then its model (seq 37): the model, then the waiting device, reach the mapper.
    let model_insert = apply(&metamanager, 37).await.expect("forwarded");
    h.registry.apply_meta_message(&model_insert).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next_call(&mut calls).await);
    }
    assert!(matches!(&seen[0], Call::CreateModel(_)), "{seen:?}");
    assert!(matches!(&seen[1], Call::CreateModel(_)), "{seen:?}");
    match &seen[2] {
        Call::RegisterDevice(device) => assert_thermo_1(device, "20"),
        other => panic!("expected RegisterDevice, got {other:?}"),
    }

    // Only once: another model update registers nothing again.
    h.registry.apply_meta_message(&model_insert).await.unwrap();
    assert!(matches!(next_call(&mut calls).await, Call::CreateModel(_)));
    mapper_stop.cancel();
    timeout(WAIT, mapper_task).await.unwrap().unwrap();
    h.stop().await;
}
