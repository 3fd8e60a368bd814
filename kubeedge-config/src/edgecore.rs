//! `edgecore.yaml`: the subset of KubeEdge's edgecore configuration
//! (`edgecore.config.kubeedge.io/v1alpha2`, kind `EdgeCore`) that kubeedge-rs's edgecore acts on.
//!
//! The key names and defaults are KubeEdge's, so a file written for KubeEdge's edgecore (or by
//! `keadm join`) loads: keys this edgecore has no use for (`metaServer`, `serviceBus`,
//! `edgeStream`, most of `tailoredKubeletConfig`, ...) are accepted and ignored. A key that is
//! used but holds a wrong type or value is an error that names it.
//!
//! | key | used for |
//! |---|---|
//! | `database.dataSource` | the SQLite store (KubeEdge's `edgecore.db` tables) |
//! | `modules.edgeHub.websocket.server` | CloudHub's `host:port` (10000) |
//! | `modules.edgeHub.httpServer` | the join/certificate server, `https://host:10002` |
//! | `modules.edgeHub.token` | the join token, used when no usable certificate is on disk |
//! | `modules.edgeHub.rotateCertificates` | renew the node certificate at 70-90 % of its lifetime |
//! | `modules.edgeHub.tlsCaFile`, `tlsCertFile`, `tlsPrivateKeyFile` | where the node's certificates are kept |
//! | `modules.edgeHub.heartbeat`, `messageQPS`, `messageBurst`, `projectID`, `websocket.handshakeTimeout` | the link |
//! | `modules.edged.enable`, `hostnameOverride` (the node name), `rootDirectory`, `nodeIP`, `tailoredKubeletConfig.containerRuntimeEndpoint`, `registerSchedulable`, `maxPods`, `labels` | pods and the node |
//! | `modules.eventBus.enable`, `mqttMode` (0 embedded broker, 1 both, 2 external), `mqttServerExternal`, `mqttServerInternal` | the MQTT EventBus |
//! | `modules.deviceTwin.enable`, `dmiSockPath` | the twin and the DMI server (`<dmiSockPath>/dmi.sock` when it names a directory) |
//! | `modules.eventBus.embeddedBroker` (kubeedge-rs): `connectTimeoutSeconds`, `maxPending`, `maxClients`, `maxSubscriptionsPerClient`, `maxFilters`, `maxQueuedBytes`, `username` + `password` | the embedded broker's limits and login (defaults: `kubeedge_twin::mqtt::BrokerConfig`) |
//! | `metricsAddress` (kubeedge-rs) | where `/metrics` and `/healthz` are served; empty: not served |
//!
//! Our default `mqttMode` is 0 (the embedded broker, so a node needs no mosquitto); KubeEdge's
//! is 2.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use kubeedge_twin::mqtt::{BrokerAuth, BrokerConfig};

use kubeedge_proto::NodeName;

use crate::{Error, Result};

/// The longest configuration file read.
pub const MAX_CONFIG_LEN: u64 = 1024 * 1024;

/// KubeEdge's `apiVersion` of the file.
pub const API_VERSION: &str = "edgecore.config.kubeedge.io/v1alpha2";

/// The whole file.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EdgeCoreFile {
    /// `edgecore.config.kubeedge.io/v1alpha2`.
    pub api_version: String,
    /// `EdgeCore`.
    pub kind: String,
    /// The store.
    pub database: Database,
    /// The modules.
    pub modules: Modules,
    /// kubeedge-rs: where `/metrics` and `/healthz` are served (`127.0.0.1:10550`-style); empty
    /// for nowhere.
    pub metrics_address: String,
}

impl Default for EdgeCoreFile {
    fn default() -> Self {
        Self {
            api_version: API_VERSION.to_owned(),
            kind: "EdgeCore".to_owned(),
            database: Database::default(),
            modules: Modules::default(),
            metrics_address: String::new(),
        }
    }
}

/// `database`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Database {
    /// The SQLite file (`/var/lib/kubeedge/edgecore.db`).
    pub data_source: PathBuf,
}

impl Default for Database {
    fn default() -> Self {
        Self {
            data_source: PathBuf::from("/var/lib/kubeedge/edgecore.db"),
        }
    }
}

/// `modules`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Modules {
    /// `edgeHub`.
    pub edge_hub: EdgeHubModule,
    /// `edged`.
    pub edged: EdgedModule,
    /// `eventBus`.
    pub event_bus: EventBusModule,
    /// `deviceTwin`.
    pub device_twin: DeviceTwinModule,
}

/// `modules.edgeHub`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EdgeHubModule {
    /// Keepalive period in seconds (15).
    pub heartbeat: u64,
    /// Upstream messages per second (30).
    #[serde(rename = "messageQPS")]
    pub message_qps: f64,
    /// Upstream burst (60).
    pub message_burst: u32,
    /// `projectID`.
    #[serde(rename = "projectID")]
    pub project_id: String,
    /// The cluster CA (`/etc/kubeedge/ca/rootCA.crt`).
    pub tls_ca_file: PathBuf,
    /// The node's certificate (`/etc/kubeedge/certs/server.crt`).
    pub tls_cert_file: PathBuf,
    /// The node's key (`/etc/kubeedge/certs/server.key`).
    pub tls_private_key_file: PathBuf,
    /// `websocket`.
    pub websocket: WebSocket,
    /// The certificate server, `https://<cloudcore>:10002`.
    pub http_server: String,
    /// The join token (`<caHash>.<JWT>`).
    pub token: String,
    /// Renew the node certificate before it expires (true).
    pub rotate_certificates: bool,
}

impl Default for EdgeHubModule {
    fn default() -> Self {
        Self {
            heartbeat: 15,
            message_qps: 30.0,
            message_burst: 60,
            project_id: kubeedge_hub::DEFAULT_PROJECT_ID.to_owned(),
            tls_ca_file: PathBuf::from("/etc/kubeedge/ca/rootCA.crt"),
            tls_cert_file: PathBuf::from("/etc/kubeedge/certs/server.crt"),
            tls_private_key_file: PathBuf::from("/etc/kubeedge/certs/server.key"),
            websocket: WebSocket::default(),
            http_server: String::new(),
            token: String::new(),
            rotate_certificates: true,
        }
    }
}

/// `modules.edgeHub.websocket`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WebSocket {
    /// CloudHub, `host:port`.
    pub server: String,
    /// Seconds a connection attempt may take (30).
    pub handshake_timeout: u64,
}

impl Default for WebSocket {
    fn default() -> Self {
        Self {
            server: String::new(),
            handshake_timeout: 30,
        }
    }
}

/// `modules.edged`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EdgedModule {
    /// Run pods (and register the node).
    pub enable: bool,
    /// The node name.
    pub hostname_override: String,
    /// Edged's directory: pod volumes and container logs (`/var/lib/kubelet`).
    pub root_directory: PathBuf,
    /// The node's `InternalIP`; empty: detected.
    #[serde(rename = "nodeIP")]
    pub node_ip: String,
    /// `registerSchedulable` (true).
    pub register_schedulable: bool,
    /// Extra node labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// `tailoredKubeletConfig`.
    pub tailored_kubelet_config: TailoredKubeletConfig,
}

impl Default for EdgedModule {
    fn default() -> Self {
        Self {
            enable: true,
            hostname_override: String::new(),
            root_directory: PathBuf::from("/var/lib/kubelet"),
            node_ip: String::new(),
            register_schedulable: true,
            labels: Default::default(),
            tailored_kubelet_config: TailoredKubeletConfig::default(),
        }
    }
}

/// `modules.edged.tailoredKubeletConfig` (the keys edged uses).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TailoredKubeletConfig {
    /// The CRI socket (`unix:///run/containerd/containerd.sock`).
    pub container_runtime_endpoint: String,
    /// `maxPods` (110).
    pub max_pods: u32,
}

impl Default for TailoredKubeletConfig {
    fn default() -> Self {
        Self {
            container_runtime_endpoint: "unix:///run/containerd/containerd.sock".to_owned(),
            max_pods: 110,
        }
    }
}

/// `modules.eventBus`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EventBusModule {
    /// Run the EventBus.
    pub enable: bool,
    /// 0: embedded broker (our default), 1: both, 2: external (KubeEdge's default).
    pub mqtt_mode: u8,
    /// The external broker (`tcp://127.0.0.1:1883`).
    pub mqtt_server_external: String,
    /// The embedded broker (`tcp://127.0.0.1:1884`).
    pub mqtt_server_internal: String,
    /// The embedded broker's limits and login (kubeedge-rs; KubeEdge's internal broker has
    /// none): keys left out keep [`BrokerConfig::default`]'s values.
    #[serde(skip_serializing_if = "EmbeddedBrokerFile::is_empty")]
    pub embedded_broker: EmbeddedBrokerFile,
}

/// `modules.eventBus.embeddedBroker` (kubeedge-rs): what [`BrokerConfig`] sets, in the file's
/// units (seconds, bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EmbeddedBrokerFile {
    /// Seconds a new connection has to send CONNECT.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout_seconds: Option<u64>,
    /// Connections that have not sent CONNECT yet; the oldest is closed beyond it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pending: Option<usize>,
    /// Connected clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_clients: Option<usize>,
    /// Topic filters one client may hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_subscriptions_per_client: Option<usize>,
    /// Distinct topic filters in the whole broker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_filters: Option<usize>,
    /// Bytes queued for one client before its QoS 0 messages are dropped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queued_bytes: Option<usize>,
    /// The user name clients must log in with (with `password`); empty: no login.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub username: String,
    /// The password of `username`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub password: String,
}

impl EmbeddedBrokerFile {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl Default for EventBusModule {
    fn default() -> Self {
        Self {
            enable: true,
            mqtt_mode: 0,
            mqtt_server_external: "tcp://127.0.0.1:1883".to_owned(),
            mqtt_server_internal: "tcp://127.0.0.1:1884".to_owned(),
            embedded_broker: EmbeddedBrokerFile::default(),
        }
    }
}

/// `modules.deviceTwin`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeviceTwinModule {
    /// Run the twin and the DMI server.
    pub enable: bool,
    /// The DMI socket, or the directory holding `dmi.sock` (`/etc/kubeedge/`).
    pub dmi_sock_path: PathBuf,
}

impl Default for DeviceTwinModule {
    fn default() -> Self {
        Self {
            enable: true,
            dmi_sock_path: PathBuf::from("/etc/kubeedge/"),
        }
    }
}

/// This host's name, lower-cased: the node name when none is given (as KubeEdge's
/// `hostnameOverride` default).
pub fn host_name() -> std::io::Result<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_lowercase())
}

/// `edgecore join`'s flags: where the cloud is, the token, and what the written config file
/// should say. With the `cli` feature they parse with clap; they can also be set in code.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct JoinFlags {
    /// The CloudHub, HOST:PORT.
    #[cfg_attr(feature = "cli", arg(long, value_name = "HOST:PORT"))]
    pub cloudcore: String,
    /// A token from `cloudcore gettoken`.
    #[cfg_attr(feature = "cli", arg(long))]
    pub token: String,
    /// The node's name [default: the host name].
    #[cfg_attr(feature = "cli", arg(long))]
    pub node: Option<String>,
    /// Keep the config and all state under DIR (else KubeEdge's places).
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub root: Option<PathBuf>,
    /// Where to write the config file [default: see [`EdgeCoreFile::path`]].
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub config: Option<PathBuf>,
    /// The join server's port on the cloudcore host [default: 10002].
    #[cfg_attr(feature = "cli", arg(long, value_name = "PORT"))]
    pub https_port: Option<u16>,
    /// The container runtime's CRI endpoint (`containerRuntimeEndpoint`).
    #[cfg_attr(feature = "cli", arg(long, value_name = "unix:///PATH"))]
    pub cri_endpoint: Option<String>,
    /// The embedded MQTT broker's address (`mqttServerInternal`).
    #[cfg_attr(feature = "cli", arg(long, value_name = "tcp://IP:PORT"))]
    pub mqtt_internal: Option<String>,
    /// Serve /metrics and /healthz here (`metricsAddress`).
    #[cfg_attr(feature = "cli", arg(long, value_name = "ADDR"))]
    pub metrics_listen: Option<SocketAddr>,
}

impl JoinFlags {
    /// The config file these flags describe, checked.
    pub fn file(&self) -> Result<EdgeCoreFile> {
        let node = match &self.node {
            Some(node) => node.clone(),
            None => host_name().map_err(|e| format!("host name: {e} (give --node)"))?,
        };
        let (host, _) = self
            .cloudcore
            .rsplit_once(':')
            .ok_or_else(|| format!("--cloudcore {:?}: expected HOST:PORT", self.cloudcore))?;
        let https = format!("https://{host}:{}", self.https_port.unwrap_or(10002));
        let root = self.root.as_deref();
        let mut file = EdgeCoreFile::for_join(&node, &self.cloudcore, &https, &self.token, root);
        if let Some(endpoint) = &self.cri_endpoint {
            let kubelet = &mut file.modules.edged.tailored_kubelet_config;
            kubelet.container_runtime_endpoint = endpoint.clone();
        }
        if let Some(internal) = &self.mqtt_internal {
            file.modules.event_bus.mqtt_server_internal = internal.clone();
        }
        if let Some(addr) = self.metrics_listen {
            file.metrics_address = addr.to_string();
        }
        file.check()?;
        Ok(file)
    }

    /// Where the config file goes.
    pub fn config_path(&self) -> PathBuf {
        EdgeCoreFile::path(self.config.as_deref(), self.root.as_deref())
    }
}

/// What `edgecore --minconfig` prints: the keys a node usually sets (KubeEdge's
/// `--minconfig` is likewise the short form); the rest keep their defaults.
pub const MIN_CONFIG: &str = r#"# edgecore (kubeedge-rs): the keys usually set. `edgecore --defaultconfig` lists them all.
apiVersion: edgecore.config.kubeedge.io/v1alpha2
kind: EdgeCore
database:
  dataSource: /var/lib/kubeedge/edgecore.db
modules:
  edgeHub:
    httpServer: https://<cloudcore>:10002
    token: ''
    websocket:
      server: <cloudcore>:10000
  edged:
    hostnameOverride: ''
    tailoredKubeletConfig:
      containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
  eventBus:
    mqttMode: 0
"#;

impl EdgeCoreFile {
    /// The config file's path: `config` if given, else `root/config/edgecore.yaml`, else
    /// KubeEdge's `/etc/kubeedge/config/edgecore.yaml`.
    pub fn path(config: Option<&Path>, root: Option<&Path>) -> PathBuf {
        match (config, root) {
            (Some(config), _) => config.to_owned(),
            (None, Some(root)) => root.join("config").join("edgecore.yaml"),
            (None, None) => PathBuf::from("/etc/kubeedge/config/edgecore.yaml"),
        }
    }

    /// What `edgecore --defaultconfig` prints: every key at its default, the cloud's address
    /// left as `<cloudcore>`.
    pub fn default_yaml() -> Result<String> {
        let mut file = Self::default();
        file.modules.edge_hub.websocket.server = "<cloudcore>:10000".into();
        file.modules.edge_hub.http_server = "https://<cloudcore>:10002".into();
        file.to_yaml()
    }

    /// Reads and checks `path` (at most [`MAX_CONFIG_LEN`] bytes).
    pub fn load(path: &Path) -> Result<Self> {
        use std::io::Read;
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut text = String::new();
        file.take(MAX_CONFIG_LEN + 1)
            .read_to_string(&mut text)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if text.len() as u64 > MAX_CONFIG_LEN {
            return Err(Error::Invalid(format!(
                "{}: longer than {MAX_CONFIG_LEN} bytes",
                path.display()
            )));
        }
        Self::parse(&text).map_err(|e| Error::file(path, e))
    }

    /// Parses and checks a configuration.
    pub fn parse(text: &str) -> Result<Self> {
        let file: Self = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        file.check()?;
        Ok(file)
    }

    /// The file as YAML.
    pub fn to_yaml(&self) -> Result<String> {
        serde_yaml_ng::to_string(self).map_err(|e| Error::Invalid(e.to_string()))
    }

    /// Checks the values edgecore uses.
    pub fn check(&self) -> Result<()> {
        if !self.kind.is_empty() && self.kind != "EdgeCore" {
            return Err(Error::Invalid(format!(
                "kind: {:?} is not EdgeCore",
                self.kind
            )));
        }
        let hub = &self.modules.edge_hub;
        if hub.websocket.server.is_empty() {
            return Err("modules.edgeHub.websocket.server: the CloudHub address (host:port) is required (run `edgecore join` to write it)".into());
        }
        self.cloud_host()?;
        if !hub.http_server.is_empty() && !hub.http_server.starts_with("https://") {
            return Err(Error::Invalid(format!(
                "modules.edgeHub.httpServer: {:?} is not https://host:port",
                hub.http_server
            )));
        }
        if hub.heartbeat == 0 {
            return Err("modules.edgeHub.heartbeat: must be at least 1 second".into());
        }
        if hub.message_qps.is_nan() || hub.message_qps < 0.0 {
            return Err("modules.edgeHub.messageQPS: must be 0 (no limit) or more".into());
        }
        if !self.modules.edged.hostname_override.is_empty() {
            self.node_name()?;
        }
        kubeedge_twin::mqtt::MqttMode::from_kubeedge(self.modules.event_bus.mqtt_mode)
            .map_err(|e| format!("modules.eventBus.mqttMode: {e}"))?;
        self.internal_broker()?;
        self.broker_config()?;
        if !self.modules.edged.node_ip.is_empty() {
            self.modules
                .edged
                .node_ip
                .parse::<std::net::IpAddr>()
                .map_err(|e| format!("modules.edged.nodeIP: {e}"))?;
        }
        if !self.metrics_address.is_empty() {
            self.metrics_address
                .parse::<SocketAddr>()
                .map_err(|e| format!("metricsAddress: {e}"))?;
        }
        Ok(())
    }

    /// The node name: `modules.edged.hostnameOverride`, else the host name.
    pub fn node_name(&self) -> Result<NodeName> {
        let name = if self.modules.edged.hostname_override.is_empty() {
            host_name().unwrap_or_default()
        } else {
            self.modules.edged.hostname_override.clone()
        };
        NodeName::new(name.as_str()).map_err(|e| {
            Error::Invalid(format!(
                "modules.edged.hostnameOverride: {name:?} is not a valid node name ({e})"
            ))
        })
    }

    /// The embedded broker's configuration: [`BrokerConfig::default`] with what
    /// `modules.eventBus.embeddedBroker` sets.
    pub fn broker_config(&self) -> Result<BrokerConfig> {
        let file = &self.modules.event_bus.embedded_broker;
        let mut config = BrokerConfig::default();
        if let Some(secs) = file.connect_timeout_seconds {
            config.connect_timeout = std::time::Duration::from_secs(secs);
        }
        let set = |target: &mut usize, value: Option<usize>| {
            if let Some(value) = value {
                *target = value;
            }
        };
        set(&mut config.max_pending, file.max_pending);
        set(&mut config.max_clients, file.max_clients);
        set(
            &mut config.max_subscriptions_per_client,
            file.max_subscriptions_per_client,
        );
        set(&mut config.max_filters, file.max_filters);
        set(&mut config.max_queued_bytes, file.max_queued_bytes);
        match (file.username.is_empty(), file.password.is_empty()) {
            (true, true) => {}
            (false, _) => {
                config.auth = Some(BrokerAuth::new(&file.username, &file.password));
            }
            (true, false) => {
                return Err(Error::Invalid(
                    "modules.eventBus.embeddedBroker: a password needs a username".to_owned(),
                ));
            }
        }
        config
            .validate()
            .map_err(|e| Error::Invalid(format!("modules.eventBus.embeddedBroker: {e}")))?;
        Ok(config)
    }

    /// Where the node's certificates are kept (`tlsCaFile`, `tlsCertFile`,
    /// `tlsPrivateKeyFile`).
    pub fn cert_paths(&self) -> kubeedge_hub::bootstrap::CertPaths {
        let hub = &self.modules.edge_hub;
        kubeedge_hub::bootstrap::CertPaths {
            ca: hub.tls_ca_file.clone(),
            cert: hub.tls_cert_file.clone(),
            key: hub.tls_private_key_file.clone(),
        }
    }

    /// The node's name as edgecore runs it. Once the node has a certificate, its name is the
    /// certificate's: a config that names another node (`modules.edged.hostnameOverride`) is an
    /// error ([`kubeedge_hub::Error::IdentityMismatch`]'s text), and a config without a name (a
    /// damaged file falls back to the host name) takes the certificate's. Without a
    /// certificate: [`node_name`](Self::node_name).
    pub fn node_identity(&self) -> Result<NodeName> {
        let paths = self.cert_paths();
        let Some(owner) = paths
            .certificate_node()
            .map_err(|e| Error::Invalid(e.to_string()))?
        else {
            return self.node_name();
        };
        let configured = &self.modules.edged.hostname_override;
        if !configured.is_empty() && *configured != owner {
            return Err(Error::Invalid(
                kubeedge_hub::Error::IdentityMismatch {
                    certificate: owner,
                    configured: configured.clone(),
                    path: paths.cert,
                }
                .to_string(),
            ));
        }
        NodeName::new(owner.as_str())
            .map_err(|e| Error::Invalid(format!("{}: {e}", paths.cert.display())))
    }

    /// The host part of `websocket.server` (what the cloud's certificate must name).
    pub fn cloud_host(&self) -> Result<String> {
        let server = &self.modules.edge_hub.websocket.server;
        let bad = || format!("modules.edgeHub.websocket.server: {server:?} is not host:port");
        let (host, port) = server.rsplit_once(':').ok_or_else(bad)?;
        port.parse::<u16>().map_err(|_| bad())?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(Error::Invalid(bad()));
        }
        Ok(host.to_owned())
    }

    /// The embedded broker's listen address (`mqttServerInternal` without `tcp://`).
    pub fn internal_broker(&self) -> Result<SocketAddr> {
        let url = &self.modules.event_bus.mqtt_server_internal;
        let (host, port) = kubeedge_twin::mqtt::parse_broker(url)
            .map_err(|e| format!("modules.eventBus.mqttServerInternal: {e}"))?;
        let ip: std::net::IpAddr = if host == "localhost" {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            host.parse().map_err(|_| {
                format!("modules.eventBus.mqttServerInternal: {url:?} must name an IP address")
            })?
        };
        Ok(SocketAddr::new(ip, port))
    }

    /// The DMI socket: `dmiSockPath`, or `<dmiSockPath>/dmi.sock` when it names a directory
    /// (ends with `/` or is one).
    pub fn dmi_socket(&self) -> PathBuf {
        let path = &self.modules.device_twin.dmi_sock_path;
        if path.as_os_str().to_string_lossy().ends_with('/') || path.is_dir() {
            path.join("dmi.sock")
        } else {
            path.clone()
        }
    }

    /// The configuration `edgecore join` writes: everything under `root` (config, certificates,
    /// database, edged's directory, the DMI socket), or KubeEdge's places when `root` is
    /// `None`.
    pub fn for_join(
        node: &str,
        cloudhub: &str,
        https: &str,
        token: &str,
        root: Option<&Path>,
    ) -> Self {
        let mut file = Self::default();
        let hub = &mut file.modules.edge_hub;
        hub.websocket.server = cloudhub.to_owned();
        hub.http_server = https.to_owned();
        hub.token = token.to_owned();
        file.modules.edged.hostname_override = node.to_owned();
        if let Some(root) = root {
            let certs = kubeedge_hub::bootstrap::CertPaths::in_dir(root);
            hub.tls_ca_file = certs.ca;
            hub.tls_cert_file = certs.cert;
            hub.tls_private_key_file = certs.key;
            file.database.data_source = root.join("edgecore.db");
            file.modules.edged.root_directory = root.join("kubelet");
            file.modules.device_twin.dmi_sock_path = root.join("dmi.sock");
        }
        file
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_config_is_the_default_with_the_cloud_named() {
        let min = EdgeCoreFile::parse(MIN_CONFIG).unwrap();
        let mut expected = EdgeCoreFile::default();
        expected.modules.edge_hub.websocket.server = "<cloudcore>:10000".into();
        expected.modules.edge_hub.http_server = "https://<cloudcore>:10002".into();
        assert_eq!(min, expected);
    }

    /// What `keadm join` writes for KubeEdge v1.22 (abridged, keys we ignore included).
    const KUBEEDGE_FILE: &str = r#"
apiVersion: edgecore.config.kubeedge.io/v1alpha2
kind: EdgeCore
database:
  aliasName: default
  dataSource: /var/lib/kubeedge/edgecore.db
  driverName: sqlite3
modules:
  dbTest:
    enable: false
  deviceTwin:
    dmiSockPath: /etc/kubeedge/
    enable: true
  edgeHub:
    enable: true
    heartbeat: 15
    httpServer: https://192.168.1.10:10002
    messageBurst: 60
    messageQPS: 30
    projectID: e632aba927ea4ac2b575ec1603d56f10
    quic:
      enable: false
      server: 192.168.1.10:10001
    rotateCertificates: true
    tlsCaFile: /etc/kubeedge/ca/rootCA.crt
    tlsCertFile: /etc/kubeedge/certs/server.crt
    tlsPrivateKeyFile: /etc/kubeedge/certs/server.key
    token: ""
    websocket:
      enable: true
      handshakeTimeout: 30
      readDeadline: 15
      server: 192.168.1.10:10000
      writeDeadline: 15
  edgeStream:
    enable: false
  edged:
    enable: true
    hostnameOverride: edge-node-1
    registerNodeNamespace: default
    rootDirectory: /var/lib/kubelet
    tailoredKubeletConfig:
      cgroupDriver: cgroupfs
      containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
      maxPods: 110
  eventBus:
    enable: true
    mqttMode: 2
    mqttServerExternal: tcp://127.0.0.1:1883
    mqttServerInternal: tcp://127.0.0.1:1884
  metaManager:
    metaServer:
      enable: false
"#;

    #[test]
    fn a_kubeedge_file_loads_with_the_keys_it_uses() {
        let file = EdgeCoreFile::parse(KUBEEDGE_FILE).unwrap();
        assert_eq!(file.node_name().unwrap(), "edge-node-1");
        assert_eq!(file.cloud_host().unwrap(), "192.168.1.10");
        assert_eq!(file.modules.event_bus.mqtt_mode, 2);
        assert_eq!(file.dmi_socket(), PathBuf::from("/etc/kubeedge/dmi.sock"));
        assert_eq!(
            file.internal_broker().unwrap(),
            "127.0.0.1:1884".parse().unwrap()
        );
        assert_eq!(file.modules.edge_hub.message_qps, 30.0);
    }

    #[test]
    fn a_used_key_with_a_bad_value_is_named() {
        for (from, to, key) in [
            ("mqttMode: 2", "mqttMode: 7", "mqttMode"),
            (
                "server: 192.168.1.10:10000",
                "server: nowhere",
                "websocket.server",
            ),
            (
                "hostnameOverride: edge-node-1",
                "hostnameOverride: Edge_1",
                "hostnameOverride",
            ),
            ("heartbeat: 15", "heartbeat: soon", "heartbeat"),
            ("httpServer: https://", "httpServer: http://", "httpServer"),
        ] {
            let text = KUBEEDGE_FILE.replace(from, to);
            let err = EdgeCoreFile::parse(&text).unwrap_err().to_string();
            assert!(err.contains(key), "{to}: {err}");
        }
    }

    #[test]
    fn the_joined_file_round_trips_and_keeps_everything_under_its_root() {
        let root = Path::new("/tmp/edge-a");
        let file = EdgeCoreFile::for_join(
            "edge-a",
            "127.0.0.1:10000",
            "https://127.0.0.1:10002",
            "abc.def.ghi.jkl",
            Some(root),
        );
        let again = EdgeCoreFile::parse(&file.to_yaml().unwrap()).unwrap();
        assert_eq!(again, file);
        assert_eq!(again.dmi_socket(), root.join("dmi.sock"));
        assert!(again.database.data_source.starts_with(root));
        assert!(again.modules.edge_hub.tls_cert_file.starts_with(root));
        assert_eq!(again.modules.event_bus.mqtt_mode, 0);
    }

    #[test]
    fn an_oversized_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edgecore.yaml");
        let mut text = KUBEEDGE_FILE.to_owned();
        text.push_str(&format!("# {}\n", "x".repeat(MAX_CONFIG_LEN as usize)));
        std::fs::write(&path, text).unwrap();
        assert!(
            EdgeCoreFile::load(&path)
                .unwrap_err()
                .to_string()
                .contains("longer than")
        );
    }

    proptest::proptest! {
        /// A damaged file (bytes flipped, cut short) is an error or a checked config, never a
        /// panic.
        #[test]
        fn a_damaged_file_is_refused_or_checked_never_a_panic(
            cut in 0usize..2000,
            flips in proptest::collection::vec((0usize..2000, proptest::prelude::any::<u8>()), 0..8),
        ) {
            let mut bytes = KUBEEDGE_FILE.as_bytes().to_vec();
            for (at, byte) in flips {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
            bytes.truncate(cut.min(bytes.len()));
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(file) = EdgeCoreFile::parse(&text) {
                proptest::prop_assert!(file.check().is_ok());
            }
        }
    }

    #[test]
    fn the_embedded_broker_takes_its_limits_and_login_from_the_file() {
        let mut file = EdgeCoreFile::default();
        file.modules.edge_hub.websocket.server = "127.0.0.1:10000".to_owned();
        assert_eq!(file.broker_config().unwrap(), BrokerConfig::default());
        let yaml = file.to_yaml().unwrap();
        assert!(!yaml.contains("embeddedBroker"), "{yaml}");

        file.modules.event_bus.embedded_broker = EmbeddedBrokerFile {
            max_clients: Some(8),
            connect_timeout_seconds: Some(3),
            username: "edge".to_owned(),
            password: "secret".to_owned(),
            ..EmbeddedBrokerFile::default()
        };
        let config = file.broker_config().unwrap();
        assert_eq!(config.max_clients, 8);
        assert_eq!(config.connect_timeout, std::time::Duration::from_secs(3));
        assert_eq!(config.auth, Some(BrokerAuth::new("edge", "secret")));
        let again = EdgeCoreFile::parse(&file.to_yaml().unwrap()).unwrap();
        assert_eq!(again, file);

        file.modules.event_bus.embedded_broker.username.clear();
        let e = file.broker_config().unwrap_err().to_string();
        assert!(e.contains("a password needs a username"), "{e}");
    }
}
