//! The real parts the end-to-end tests run: a cluster CA, a CloudHub with the controller on a
//! loopback port, and a test edge (EdgeHub + ReliableEdge + a MetaManager over a real SQLite
//! file) that stores what the cloud sends, ACKs only after the write, sends its inventory on
//! every connect and its requests through the durable outbox.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kubeedge_cloud::{CloudConfig, CloudController, CloudMetrics, ClusterWriter, ObjectEvent};
use kubeedge_hub::bootstrap::EdgeCredentials;
use kubeedge_hub::join::{CertificateAuthority, EdgeCsr, ExtKeyUsage};
use kubeedge_hub::{
    CloudHub, CloudHubConfig, DeliveryConfig, EdgeHub, EdgeHubConfig, ReliableCloud, ReliableEdge,
    ReliableEdgeHandle, UpstreamConfig, UpstreamEvent, tls,
};
use kubeedge_proto::{Message, NodeName};
use kubeedge_store::{MetaManager, MetaManagerConfig, Outbox, Store, StoreConfig};
use rustls::pki_types::ServerName;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Deadline for anything a test waits for.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub struct Pki {
    ca: CertificateAuthority,
}

impl Pki {
    pub fn new() -> Self {
        Self {
            ca: CertificateAuthority::generate().unwrap(),
        }
    }

    pub fn server_tls(&self) -> Arc<rustls::ServerConfig> {
        let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let cert = self.ca.issue_server_cert(&[ip], &[] as &[&str]).unwrap();
        tls::server_config(
            cert.cert_pem.as_bytes(),
            cert.key_pem.as_bytes(),
            self.ca.cert_pem().as_bytes(),
        )
        .unwrap()
    }

    pub fn edge_tls(&self, node: &str) -> Arc<rustls::ClientConfig> {
        let csr = EdgeCsr::new(node).unwrap();
        let cert = self
            .ca
            .sign_edge_csr(&csr.csr_der, &[ExtKeyUsage::ClientAuth], 365)
            .unwrap();
        EdgeCredentials::from_der(self.ca.cert_der(), &cert, &csr.key_der)
            .unwrap()
            .client_config()
            .unwrap()
    }
}

/// A CloudHub + ReliableCloud + CloudController on a free loopback port.
pub struct Cloud {
    pub addr: SocketAddr,
    pub metrics: CloudMetrics,
    pub stop: CancellationToken,
}

impl Cloud {
    pub async fn start<W: ClusterWriter>(
        pki: &Pki,
        writer: W,
        objects: mpsc::Receiver<ObjectEvent>,
        config: CloudConfig,
        listen: SocketAddr,
    ) -> Self {
        let stop = CancellationToken::new();
        let (hub, raw, raw_events) = CloudHub::bind(CloudHubConfig::new(listen, pki.server_tls()))
            .await
            .unwrap();
        let addr = hub.local_addr().unwrap();
        let (reliable, handle, delivery) = ReliableCloud::new(
            raw,
            raw_events,
            DeliveryConfig {
                retry_interval: Duration::from_millis(500),
                ..DeliveryConfig::default()
            },
        );
        tokio::spawn(hub.run(stop.clone()));
        tokio::spawn(reliable.run(stop.clone()));
        let controller = CloudController::new(config, writer, handle, delivery, objects);
        let metrics = controller.metrics();
        tokio::spawn(controller.run(stop.clone()));
        Self {
            addr,
            metrics,
            stop,
        }
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The edge side: what a kubeedge-rs edgecore runs between its EdgeHub and its store.
pub struct TestEdge {
    pub node: String,
    pub meta: MetaManager,
    pub handle: ReliableEdgeHandle<Outbox>,
    /// Messages the MetaManager forwarded to local modules (edged, twin), in order.
    pub forwarded: Arc<Mutex<Vec<Message>>>,
    pub stop: CancellationToken,
}

impl TestEdge {
    pub async fn start(pki: &Pki, cloud: SocketAddr, node: &str, db: &Path) -> Self {
        let stop = CancellationToken::new();
        let store = Store::open(StoreConfig::new(db)).unwrap();
        let meta = MetaManager::new(store, MetaManagerConfig::new(NodeName::new(node).unwrap()));
        let mut config = EdgeHubConfig::new(
            cloud.to_string(),
            ServerName::IpAddress(cloud.ip().into()),
            pki.edge_tls(node),
            NodeName::new(node).unwrap(),
        );
        config.min_backoff = Duration::from_millis(20);
        config.max_backoff = Duration::from_millis(300);
        let (hub, link, raw) = EdgeHub::new(config);
        tokio::spawn(hub.run(stop.clone()));
        let journal = Arc::new(meta.outbox().clone());
        let upstream = UpstreamConfig {
            resend_interval: Duration::from_millis(500),
            ..UpstreamConfig::default()
        };
        let (layer, handle, mut events) = ReliableEdge::new(link, raw, journal, upstream);
        tokio::spawn(layer.run(stop.clone()));
        let forwarded = Arc::new(Mutex::new(Vec::new()));
        let (mm, h, fw, st) = (
            meta.clone(),
            handle.clone(),
            Arc::clone(&forwarded),
            stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    () = st.cancelled() => return,
                    event = events.recv() => match event { Some(e) => e, None => return },
                };
                match event {
                    UpstreamEvent::Connected { .. } => {
                        let inventory = mm.inventory().await.unwrap();
                        let _ = h.send(inventory.to_message().unwrap()).await;
                        h.replay();
                    }
                    UpstreamEvent::Disconnected { .. } => {}
                    UpstreamEvent::Message(msg) => match mm.from_cloud(msg).await {
                        Ok(outcome) => {
                            if let Some(ack) = outcome.ack {
                                let _ = h.send(ack).await;
                            }
                            if let Some(forward) = outcome.forward {
                                fw.lock().unwrap().push(forward.message);
                            }
                        }
                        Err(err) => eprintln!("edge: {err}"),
                    },
                }
            }
        });
        Self {
            node: node.to_owned(),
            meta,
            handle,
            forwarded,
            stop,
        }
    }

    /// Queues a request through the MetaManager (durable outbox) and wakes the sender.
    pub async fn request(&self, msg: Message) {
        self.meta.from_edge(msg, true).await.unwrap();
        self.handle.replay();
    }

    /// The stored object JSON at `key`, if any.
    pub async fn stored(&self, key: &str) -> Option<serde_json::Value> {
        let key = key.to_owned();
        let row = self
            .meta
            .store()
            .read(move |db| kubeedge_store::meta::get(db, &key))
            .await
            .unwrap()?;
        serde_json::from_str(&row.value).ok()
    }

    /// Messages still waiting in the outbox.
    pub async fn outbox_len(&self) -> usize {
        self.meta.outbox().len().await.unwrap()
    }
}

impl Drop for TestEdge {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Polls `check` until it is true; fails at [`DEADLINE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
