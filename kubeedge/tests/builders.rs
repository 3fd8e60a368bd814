//! The builders with a vendor's parts plugged in, over real sockets on loopback: a CloudCore
//! fed by its own `ClusterSource` (objects pushed by the test) and an EdgeCore whose EventBus
//! publishes through its own `MqttOut`, joined to that cloud with a token, with mutual TLS.
//! A Device sent from the custom source reaches the edge's store and its twin, which announces
//! it on the custom MQTT link; the cloud's metrics endpoint counts the node.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use kubeedge::cloud::{CloudCore, ClusterSource};
use kubeedge::config::cloudcore::{CaSource, Settings};
use kubeedge::config::edgecore::EdgeCoreFile;
use kubeedge::controllers::{Kind, ManifestConfig, ManifestSource, Object, ObjectEvent};
use kubeedge::edge::{self, EdgeCore, MqttContext};
use kubeedge::hub::join::{Token, TokenScope};
use kubeedge::twin::eventbus::MqttOut;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Deadline for a hung test; nothing here is timed.
const DEADLINE: Duration = Duration::from_secs(60);

/// A vendor's source: what the test pushes.
struct PushedObjects(mpsc::Receiver<ObjectEvent>);

impl ClusterSource for PushedObjects {
    async fn run(
        mut self,
        events: mpsc::Sender<ObjectEvent>,
        shutdown: CancellationToken,
    ) -> kubeedge::controllers::Result<()> {
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                event = self.0.recv() => event,
            };
            let Some(event) = event else {
                shutdown.cancelled().await;
                return Ok(());
            };
            if events.send(event).await.is_err() {
                return Err(kubeedge::controllers::Error::Stopped);
            }
        }
    }
}

/// A vendor's MQTT link: it hands every topic published to the test.
struct RecordingBroker {
    published: mpsc::UnboundedSender<String>,
    _context: MqttContext,
}

impl MqttOut for RecordingBroker {
    async fn publish(&self, topic: &str, _payload: Bytes) -> kubeedge::twin::Result<()> {
        let _ = self.published.send(topic.to_owned());
        Ok(())
    }

    async fn subscribe(&self, _filter: &str) -> kubeedge::twin::Result<()> {
        Ok(())
    }

    async fn unsubscribe(&self, _filter: &str) -> kubeedge::twin::Result<()> {
        Ok(())
    }
}

fn object(kind: Kind, value: serde_json::Value) -> Object {
    Object::new(kind, value).unwrap()
}

/// One GET over plain HTTP/1.1; the body.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    text
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    tokio::time::timeout(DEADLINE, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within {DEADLINE:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_source_and_a_custom_mqtt_link_carry_a_device_to_the_edge() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let shutdown = CancellationToken::new();

    // The cloud: the vendor's source, node reports written as files.
    let settings = Settings {
        ca: CaSource::Dir(pki.clone()),
        listen: "127.0.0.1:0".parse().unwrap(),
        https_listen: Some("127.0.0.1:0".parse().unwrap()),
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Settings::default()
    };
    std::fs::create_dir_all(dir.path().join("manifests")).unwrap();
    let (_, writer) = ManifestSource::open(ManifestConfig::new(
        dir.path().join("manifests"),
        dir.path().join("status"),
    ))
    .unwrap();
    let (objects, pushed) = mpsc::channel(16);
    let cloud = CloudCore::builder(settings)
        .cluster(PushedObjects(pushed), writer)
        .build()
        .await
        .unwrap();
    let (hub_addr, join_addr) = (cloud.local_addr(), cloud.join_addr().unwrap());
    let metrics_addr = cloud.metrics_addr().unwrap();
    let cloud_handle = cloud.handle();
    let cloud_task = tokio::spawn(cloud.run(shutdown.clone()));
    for kind in Kind::ALL {
        let listed = ObjectEvent::Listed {
            kind,
            objects: vec![],
        };
        objects.send(listed).await.unwrap();
    }

    // The edge: joined with a token, no pods, its EventBus on the vendor's MQTT link.
    let ca = kubeedge::config::pki::load_or_create_ca_in(&pki).unwrap();
    let validity = Token::validity_for_refresh(Token::DEFAULT_REFRESH);
    let token =
        Token::issue_with(&ca, validity, SystemTime::now(), &TokenScope::default()).unwrap();
    let root = dir.path().join("edge");
    let mut file = EdgeCoreFile::for_join(
        "edge-1",
        &hub_addr.to_string(),
        &format!("https://{join_addr}"),
        &token,
        Some(&root),
    );
    file.modules.edged.enable = false;
    edge::join_and_save(&file, &root.join("config/edgecore.yaml"))
        .await
        .unwrap();
    let (published, mut topics) = mpsc::unbounded_channel();
    let core = EdgeCore::builder(file)
        .mqtt(move |context| RecordingBroker {
            published,
            _context: context,
        })
        .build()
        .unwrap();
    assert_eq!(core.node_name(), "edge-1");
    let edge = core.handle();
    let edge_task = tokio::spawn(core.run(shutdown.clone()));
    edge.started().await;
    eventually("the edge connects", || async { edge.connected() }).await;
    eventually("the cloud counts the node", || async {
        cloud_handle.metrics().connected_nodes() == 1
    })
    .await;

    // A Device of edge-1 from the vendor's source.
    let model = json!({
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "DeviceModel",
        "metadata": {"name": "thermo-model", "namespace": "default", "uid": "u-model", "resourceVersion": "4"},
        "spec": {"protocol": "modbus", "properties": [{"name": "temperature", "type": "INT", "accessMode": "ReadWrite"}]},
    });
    let device = json!({
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "Device",
        "metadata": {"name": "thermo-1", "namespace": "default", "uid": "u-thermo", "resourceVersion": "5"},
        "spec": {
            "nodeName": "edge-1",
            "deviceModelRef": {"name": "thermo-model"},
            "protocol": {"protocolName": "modbus", "configData": {"ip": "127.0.0.1", "port": 1502, "slaveID": 1}},
            "properties": [{
                "name": "temperature",
                "desired": {"value": "20"},
                "visitors": {"protocolName": "modbus", "configData": {"register": "HoldingRegister", "offset": 2, "limit": 1}},
            }],
        },
    });
    let applied_before = edge.applied();
    let send = |o| ObjectEvent::Applied(o);
    objects
        .send(send(object(Kind::DeviceModel, model)))
        .await
        .unwrap();
    objects
        .send(send(object(Kind::Device, device)))
        .await
        .unwrap();
    eventually("the edge stores the device", || async {
        edge.applied() > applied_before
    })
    .await;
    let membership = tokio::time::timeout(DEADLINE, async {
        while let Some(topic) = topics.recv().await {
            if topic == "$hw/events/node/edge-1/membership/updated" {
                return topic;
            }
        }
        panic!("the recording broker closed");
    })
    .await
    .expect("the twin announces the device on the custom MQTT link");
    assert!(membership.ends_with("membership/updated"));

    // The cloud's metrics, rendered by prometheus-client.
    let text = http_get(metrics_addr, "/metrics").await;
    assert!(text.contains("application/openmetrics-text"), "{text}");
    assert!(text.contains("\ncloudcore_connected_nodes 1\n"), "{text}");
    assert!(
        text.contains("\n# TYPE cloudcore_downstream_messages counter\n"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    assert!(http_get(metrics_addr, "/healthz").await.ends_with("ok\n"));
    let edge_text = kubeedge::metrics::render(&edge.registry());
    assert!(
        edge_text.contains("\nedgecore_connected 1\n"),
        "{edge_text}"
    );

    shutdown.cancel();
    edge_task.await.unwrap().unwrap();
    cloud_task.await.unwrap().unwrap();
}
