//! Helpers shared by the hub's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use kubeedge_hub::{
    CloudHub, CloudHubConfig, DeliveryConfig, DeliveryEvent, EdgeHubConfig, ReliableCloud,
    ReliableCloudHandle, tls,
};
use kubeedge_proto::NodeName;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::ServerName;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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
