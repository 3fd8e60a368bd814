//! Helpers shared by the hub's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use kubeedge_hub::{
    CloudHub, CloudHubConfig, DeliveryConfig, DeliveryEvent, EdgeEvent, EdgeHub, EdgeHubConfig,
    EdgeHubHandle, ReliableCloud, ReliableCloudHandle, tls,
};
use kubeedge_proto::{Content, Message, NodeName};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::ServerName;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};

/// Deadline for anything a test waits for; a hung test fails here instead of hanging.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A cluster CA and the certificates a test needs, made with rcgen.
pub struct Pki {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "KubeEdge");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn server(&self) -> Pair {
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "KubeEdge");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    pub fn node(&self, node: &str) -> Pair {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "system:nodes");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("system:node:{node}"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    pub fn sign(&self, params: CertificateParams) -> Pair {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    pub fn client_tls(&self, node: &str) -> Arc<rustls::ClientConfig> {
        let pair = self.node(node);
        tls::client_config(
            self.ca_pem.as_bytes(),
            pair.cert_pem.as_bytes(),
            pair.key_pem.as_bytes(),
        )
        .unwrap()
    }
}

impl Pki {
    /// The CloudHub's TLS configuration for 127.0.0.1.
    pub fn server_tls(&self) -> Arc<rustls::ServerConfig> {
        let server = self.server();
        tls::server_config(
            server.cert_pem.as_bytes(),
            server.key_pem.as_bytes(),
            self.ca_pem.as_bytes(),
        )
        .unwrap()
    }
}

impl Pki {
    /// An EdgeHub configuration for `node` against the hub at `cloud`, reconnecting quickly.
    pub fn edge_config(&self, cloud: SocketAddr, node: &str) -> EdgeHubConfig {
        let mut config = EdgeHubConfig::new(
            cloud.to_string(),
            ServerName::IpAddress(cloud.ip().into()),
            self.client_tls(node),
            NodeName::new(node).unwrap(),
        );
        config.min_backoff = Duration::from_millis(20);
        config.max_backoff = Duration::from_millis(200);
        config
    }

    /// A CloudHub on a free loopback port with a ReliableCloud on top, both running until
    /// `stop`: its address, the reliable handle and the application's events.
    pub async fn reliable_cloud(
        &self,
        delivery: DeliveryConfig,
        stop: &CancellationToken,
    ) -> (
        SocketAddr,
        ReliableCloudHandle,
        mpsc::Receiver<DeliveryEvent>,
    ) {
        let config = CloudHubConfig::new("127.0.0.1:0".parse().unwrap(), self.server_tls());
        let (hub, hub_handle, raw) = CloudHub::bind(config).await.unwrap();
        let addr = hub.local_addr().unwrap();
        tokio::spawn(hub.run(stop.clone()));
        let (reliable, cloud, events) = ReliableCloud::new(hub_handle, raw, delivery);
        tokio::spawn(reliable.run(stop.clone()));
        (addr, cloud, events)
    }
}

impl Pki {
    /// An EdgeHub for `node` against the hub at `cloud`, unthrottled, running until `stop`, whose
    /// application shows every message to `on_message` and then acknowledges it.
    pub fn acking_edge(
        &self,
        cloud: SocketAddr,
        node: &str,
        stop: &CancellationToken,
        mut on_message: impl FnMut(&Message) + Send + 'static,
    ) -> EdgeHubHandle {
        let mut config = self.edge_config(cloud, node);
        config.rate_limit = None;
        let (edge, handle, mut events) = EdgeHub::new(config);
        tokio::spawn(edge.run(stop.clone()));
        let acks = handle.clone();
        tokio::spawn(async move {
            let mut to_cloud = acks.to_cloud();
            while let Some(event) = events.recv().await {
                if let EdgeEvent::Message(msg) = event {
                    on_message(&msg);
                    to_cloud
                        .ready()
                        .await
                        .unwrap()
                        .call(msg.ack())
                        .await
                        .unwrap();
                }
            }
        });
        handle
    }
}

/// Version `rv` of ConfigMap `uid` (named as its uid), as the cloud sends it: ACK-tracked.
pub fn object(uid: &str, rv: u64) -> Message {
    let json = format!(
        r#"{{"metadata":{{"name":"{uid}","namespace":"default","uid":"{uid}","resourceVersion":"{rv}"}}}}"#
    );
    Message::new(
        "edgecontroller",
        "resource",
        "update",
        format!("default/configmap/{uid}"),
        Content::try_from(json.as_str()).unwrap(),
    )
    .with_resource_version(rv.to_string())
}

/// The uid and resourceVersion of a message made by [`object`].
pub fn rv_of(msg: &Message) -> (String, u64) {
    let v: serde_json::Value = msg.content.decode().unwrap();
    let uid = v["metadata"]["uid"].as_str().unwrap().to_owned();
    (uid, msg.header.resource_version.parse().unwrap())
}
