//! `cloudcore --config FILE`: the part of KubeEdge's `cloudcore.yaml` that cloudcore acts on,
//! and how it combines with the defaults and the flags.
//!
//! What cloudcore runs with is a [`Settings`]: today's defaults ([`Settings::default`]), then
//! the config file ([`Settings::apply_file`]), then the command-line flags
//! ([`Settings::apply_flags`]); [`Settings::from_flags`] does all three. A flag always wins
//! over the file, and a key the file leaves out keeps the default, which is what cloudcore does
//! without a file.
//!
//! A KubeEdge `cloudcore.yaml` (KubeEdge's `cloudcore --defaultconfig` output, or what keadm
//! writes) is read as it is: keys cloudcore has no use for (buffers, workers, `unixsocket`,
//! `featureGates`, ...) are ignored. A key it does use with a wrong type or a bad value is an
//! error naming the key, such as `modules.cloudHub.nodeLimit: must be at least 1`. Files larger
//! than [`MAX_CONFIG_BYTES`] are refused. [`DEFAULT_CONFIG`] is a commented file with every key
//! below at its default (`cloudcore --defaultconfig` prints it).
//!
//! | key | default | what cloudcore does with it | flag |
//! |---|---|---|---|
//! | `apiVersion` | | `cloudcore.config.kubeedge.io/v1alpha1`, or `v1alpha2` as keadm's chart writes; may be left out | |
//! | `kind` | | `CloudCore`; may be left out | |
//! | `kubeAPIConfig.kubeConfig` | `""`: `KUBECONFIG`, `~/.kube/config`, else in-cluster | the cluster's kubeconfig | `--kubeconfig` |
//! | `kubeAPIConfig.master` | `""` | must be empty: the API server comes from the kubeconfig | |
//! | `kubeAPIConfig.qps`, `kubeAPIConfig.burst` | | accepted, not applied: the kube client has no client-side rate limiter | |
//! | `commonConfig.monitorServer.bindAddress` | none (KubeEdge: `127.0.0.1:9091`) | `/metrics` (Prometheus) and `/healthz`; `""` serves none | `--metrics-listen` |
//! | `modules.cloudHub.enable` | `true` | must be true | |
//! | `modules.cloudHub.advertiseAddress` | `[127.0.0.1]` | the IP addresses in the server certificate | `--advertise-address` |
//! | `modules.cloudHub.dnsNames` | `[]` | the DNS names in the server certificate, beside `localhost`; empty entries are skipped | |
//! | `modules.cloudHub.nodeLimit` | 500 | the most nodes one replica holds, at least 1 | `--node-limit` |
//! | `modules.cloudHub.keepaliveInterval` | 30 | seconds without a message before a node's session ends, at least 1 | |
//! | `modules.cloudHub.tlsCAFile`, `tlsCAKeyFile` | `ca.pem`, `ca-key.pem` in `--pki-dir` | the cluster CA (PEM), both or neither; created when neither file exists | `--pki-dir` |
//! | `modules.cloudHub.tlsCertFile`, `tlsPrivateKeyFile` | issued at start | cloudcore's server certificate, both or neither: loaded when both files exist (it must be a server certificate of the CA), else issued from the CA at start (not written) | |
//! | `modules.cloudHub.edgeCertSigningDuration` | 365 | days the certificates issued to edges are valid, at least 1 | |
//! | `modules.cloudHub.tokenRefreshDuration` | 12 | hours; `cloudcore gettoken` tokens are valid twice that, at least 1 | |
//! | `modules.cloudHub.websocket.{enable,address,port}` | `true`, `0.0.0.0`, 10000 | CloudHub, where edges connect; must be enabled | `--listen` |
//! | `modules.cloudHub.https.{enable,address,port}` | `true`, `0.0.0.0`, 10002 | the join server (`/ca.crt`, `/edge.crt`); `enable: false` serves no join | `--https-listen` |
//! | `modules.cloudHub.quic.enable` | `false` | QUIC is not implemented: `true` is a warning | |
//! | `modules.edgeController.enable` | `true` | must be true: it is cloudcore's controller | |
//! | `modules.deviceController.enable` | `true` | `false`: Devices and DeviceModels are neither watched nor sent to edges | |
//! | `modules.{cloudStream,router,dynamicController,taskManager}.enable` | `false` | not implemented: `true` is a warning | |
//! | `kubeedgeRs.manifests.dir` | none | manifest mode: the folder of YAML instead of a cluster | `--manifests` |
//! | `kubeedgeRs.manifests.statusDir` | `dir/../status` | where what edges report is written | `--status-dir` |
//! | `kubeedgeRs.manifests.scanIntervalMs` | 1000 | how often the folder is scanned, at least 1 | `--scan-interval-ms` |
//! | `kubeedgeRs.installCRDs` | `false` | apply the device CRDs to the cluster first | `--install-crds` |
//! | `kubeedgeRs.inventoryGraceMs` | 2000 | how long to wait for a connecting node's inventory | `--inventory-grace-ms` |
//! | `kubeedgeRs.deviceLimits.{maxStringBytes,maxSpecBytes,maxProperties,maxCycle}` | 64 KiB, 1 MiB, 1024, one day in ns | the bounds of kubeedge-cloud's device checks: a Device or DeviceModel beyond them is not sent to its node | |
//! | `kubeedgeRs.sessionTakeovers.{burst,refillEveryMs}` | 3, 10000 | how often a new connection of a node may take over its established session (kubeedge-hub's `TakeoverLimit`); over it the new connection is refused with 429 | |
//! | `kubeedgeRs.sessionTakeovers.unlimited` | `false` | `true`: the newer connection always wins, as in KubeEdge | |
//! | `kubeedgeRs.sentRecords` | true | keep a record of what each node without an inventory (a KubeEdge edge) was sent, so that any replica tells it the deletes it missed | `--sent-records` |
//!
//! `kubeedgeRs` is a kubeedge-rs extension: KubeEdge has no manifest mode and no such key.
//! Durations follow KubeEdge's units: seconds, days and hours as above, and milliseconds in the
//! extension.
//!
//! ```
//! use kubeedge_config::cloudcore::{CloudCoreConfig, Settings};
//!
//! let file = CloudCoreConfig::from_yaml(
//!     "apiVersion: cloudcore.config.kubeedge.io/v1alpha1
//! kind: CloudCore
//! modules:
//!   cloudHub:
//!     nodeLimit: 100
//!     websocket: {address: 127.0.0.1, port: 10010}
//!     someKeyOfANewerKubeEdge: 7
//! ",
//! )?;
//! let mut settings = Settings::default();
//! settings.apply_file(&file)?;
//! assert_eq!(settings.node_limit, 100);
//! assert_eq!(settings.listen.to_string(), "127.0.0.1:10010");
//! assert_eq!(settings.https_listen.unwrap().to_string(), "0.0.0.0:10002");
//! # Ok::<(), kubeedge_config::Error>(())
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kubeedge_hub::join::CertificateAuthority;
use serde::Deserialize;

pub use crate::pki::MAX_PEM_BYTES;
use crate::pki::{self, read_bounded};
use crate::{Error, Result};

/// The largest config file read: 1 MiB.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The `apiVersion`s accepted: KubeEdge's, and the `v1alpha2` that keadm's Helm chart writes
/// (same keys).
pub const API_VERSIONS: [&str; 2] = [
    "cloudcore.config.kubeedge.io/v1alpha1",
    "cloudcore.config.kubeedge.io/v1alpha2",
];

/// The `kind` accepted.
pub const KIND: &str = "CloudCore";

/// The flags of `cloudcore` (without `--`), all taking a value; see [`Settings::apply_flags`].
/// cloudcore's command-line flags (each overrides its key of the `--config` file). With the
/// `cli` feature they parse with clap (`#[command(flatten)]`); they can also be set in code.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct CloudCoreFlags {
    /// KubeEdge's cloudcore.yaml (unknown keys are ignored).
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub config: Option<PathBuf>,
    /// The cluster CA's directory (`ca.pem`, `ca-key.pem`; made on first start).
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub pki_dir: Option<PathBuf>,
    /// The CloudHub's address (`modules.cloudHub.websocket`).
    #[cfg_attr(feature = "cli", arg(long, value_name = "ADDR"))]
    pub listen: Option<SocketAddr>,
    /// The join server's address (`modules.cloudHub.https`).
    #[cfg_attr(feature = "cli", arg(long, value_name = "ADDR"))]
    pub https_listen: Option<SocketAddr>,
    /// The server certificate's IP addresses, comma-separated (`advertiseAddress`).
    #[cfg_attr(
        feature = "cli",
        arg(long, value_name = "IP,...", value_delimiter = ',')
    )]
    pub advertise_address: Vec<IpAddr>,
    /// Serve `/metrics` and `/healthz` here (`commonConfig.monitorServer.bindAddress`).
    #[cfg_attr(feature = "cli", arg(long, value_name = "ADDR"))]
    pub metrics_listen: Option<SocketAddr>,
    /// The cluster's kubeconfig (`kubeAPIConfig.kubeConfig`).
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub kubeconfig: Option<PathBuf>,
    /// Apply the device CRDs at start (`kubeedgeRs.installCRDs`).
    #[cfg_attr(feature = "cli", arg(long, value_name = "BOOL"))]
    pub install_crds: Option<bool>,
    /// Objects from this folder of YAML instead of a cluster (`kubeedgeRs.manifests.dir`).
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub manifests: Option<PathBuf>,
    /// Where manifest mode writes what nodes report (default `DIR/../status`).
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub status_dir: Option<PathBuf>,
    /// How often manifest mode rescans the folder, in ms.
    #[cfg_attr(feature = "cli", arg(long, value_name = "MS"))]
    pub scan_interval_ms: Option<u64>,
    /// How long the cloud waits for a connecting node's inventory, in ms.
    #[cfg_attr(feature = "cli", arg(long, value_name = "MS"))]
    pub inventory_grace_ms: Option<u64>,
    /// Keep a record of what was sent to each node (`kubeedgeRs.sentRecords`).
    #[cfg_attr(feature = "cli", arg(long, value_name = "BOOL"))]
    pub sent_records: Option<bool>,
    /// The most nodes this replica holds (`modules.cloudHub.nodeLimit`).
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub node_limit: Option<usize>,
}

/// What `cloudcore --minconfig` prints: the keys an operator usually sets, at their defaults
/// (KubeEdge's `--minconfig` is likewise the short form). Read back, it gives
/// [`Settings::default`].
pub const MIN_CONFIG: &str = r#"# cloudcore (kubeedge-rs): the keys usually set. `cloudcore --defaultconfig` lists them all.
apiVersion: cloudcore.config.kubeedge.io/v1alpha1
kind: CloudCore
kubeAPIConfig:
  kubeConfig: ""
modules:
  cloudHub:
    advertiseAddress:
    - 127.0.0.1
    websocket:
      address: 0.0.0.0
      port: 10000
    https:
      address: 0.0.0.0
      port: 10002
"#;

/// What `cloudcore --defaultconfig` prints: a commented config file with every key cloudcore
/// reads at its default. Read back, it gives [`Settings::default`].
pub const DEFAULT_CONFIG: &str = r#"# cloudcore (kubeedge-rs) configuration: the part of KubeEdge's cloudcore.yaml that cloudcore
# uses, at its defaults. Command-line flags override these values. A KubeEdge cloudcore.yaml is
# accepted as it is: keys not listed here are ignored.
apiVersion: cloudcore.config.kubeedge.io/v1alpha1
kind: CloudCore
kubeAPIConfig:
  # The cluster's kubeconfig; "" = KUBECONFIG, ~/.kube/config, else the in-cluster service
  # account. (--kubeconfig)
  kubeConfig: ""
  # The API server comes from the kubeconfig: master must stay "".
  master: ""
  # qps and burst are accepted and not applied (no client-side rate limiter).
  # qps: 2500
  # burst: 5000
commonConfig:
  monitorServer:
    # /metrics (Prometheus) and /healthz; "" serves none. KubeEdge's default is
    # 127.0.0.1:9091. (--metrics-listen)
    bindAddress: ""
modules:
  cloudHub:
    enable: true
    # The IP addresses in cloudcore's server certificate: what edges dial. (--advertise-address)
    advertiseAddress:
    - 127.0.0.1
    # DNS names in the server certificate, beside localhost.
    dnsNames: []
    # The most edge nodes one replica holds. (--node-limit)
    nodeLimit: 500
    # Seconds without a message from a node before its session ends.
    keepaliveInterval: 30
    # The cluster CA (PEM), both or neither; created when neither file exists. Without them the
    # CA is ca.pem and ca-key.pem in --pki-dir (default /etc/kubeedge/pki). KubeEdge's paths:
    # tlsCAFile: /etc/kubeedge/ca/rootCA.crt
    # tlsCAKeyFile: /etc/kubeedge/ca/rootCA.key
    # cloudcore's server certificate, both or neither: loaded when both files exist, else
    # issued from the CA at every start for advertiseAddress and dnsNames. KubeEdge's paths:
    # tlsCertFile: /etc/kubeedge/certs/server.crt
    # tlsPrivateKeyFile: /etc/kubeedge/certs/server.key
    # Days the certificates issued to edge nodes are valid.
    edgeCertSigningDuration: 365
    # Hours; a token from `cloudcore gettoken` is valid twice that.
    tokenRefreshDuration: 12
    # CloudHub: edges connect here (mutual TLS WebSocket). (--listen)
    websocket:
      enable: true
      address: 0.0.0.0
      port: 10000
    # The join server: /ca.crt and /edge.crt. (--https-listen)
    https:
      enable: true
      address: 0.0.0.0
      port: 10002
  edgeController:
    enable: true
  # false: Devices and DeviceModels are neither watched nor sent to edges.
  deviceController:
    enable: true
# kubeedge-rs extension (not a KubeEdge key).
kubeedgeRs:
  # Manifest mode: a folder of YAML (Pods, ConfigMaps, Secrets, Devices, DeviceModels) instead
  # of a cluster; what edges report is written under statusDir (default dir/../status).
  # manifests:
  #   dir: /var/lib/cloudcore/manifests       (--manifests)
  #   statusDir: /var/lib/cloudcore/status    (--status-dir)
  #   scanIntervalMs: 1000                    (--scan-interval-ms)
  # Apply the device CRDs to the cluster first. (--install-crds)
  installCRDs: false
  # How long to wait for a connecting node's inventory, in ms. (--inventory-grace-ms)
  inventoryGraceMs: 2000
  # Keep a record (one ConfigMap in the kubeedge namespace) of what each node without an
  # inventory (a KubeEdge edge) was sent, so that any replica tells it the deletes it missed.
  # (--sent-records)
  sentRecords: true
  # Devices and DeviceModels with values out of range are not sent to nodes (a Warning Event
  # says why). The bounds, at their defaults:
  # deviceLimits:
  #   maxStringBytes: 65536          (any string or key in a spec)
  #   maxSpecBytes: 1048576          (the whole spec as JSON)
  #   maxProperties: 1024            (properties or methods)
  #   maxCycle: 86400000000000       (collectCycle / reportCycle: one day in ns)
  # A new connection of a node that has a session takes it over (the newer wins, as in
  # KubeEdge) at most `burst` times at once and then once every `refillEveryMs`; beyond that
  # it is refused with HTTP 429 and the established session is kept. `unlimited: true` lets
  # the newer always win.
  # sessionTakeovers:
  #   burst: 3
  #   refillEveryMs: 10000
  #   unlimited: false
"#;

/// A `cloudcore.yaml` as read: every key optional, unknown keys ignored. Turn it into what
/// cloudcore runs with by [`Settings::apply_file`], which also checks the values.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct CloudCoreConfig {
    /// `apiVersion`: one of [`API_VERSIONS`], or absent.
    pub api_version: Option<String>,
    /// `kind`: [`KIND`], or absent.
    pub kind: Option<String>,
    /// `kubeAPIConfig`.
    #[serde(rename = "kubeAPIConfig")]
    pub kube_api_config: Option<KubeApiConfig>,
    /// `commonConfig`.
    pub common_config: Option<CommonConfig>,
    /// `modules`.
    pub modules: Option<Modules>,
    /// `kubeedgeRs`: the kubeedge-rs extension.
    pub kubeedge_rs: Option<Extension>,
}

/// `kubeAPIConfig`: how to reach the Kubernetes API server.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct KubeApiConfig {
    /// `kubeConfig`: the kubeconfig path; `""` means the usual search.
    pub kube_config: Option<PathBuf>,
    /// `master`: must be empty.
    pub master: Option<String>,
    /// `qps`: accepted, not applied.
    pub qps: Option<u32>,
    /// `burst`: accepted, not applied.
    pub burst: Option<u32>,
}

/// `commonConfig`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct CommonConfig {
    /// `monitorServer`.
    pub monitor_server: Option<MonitorServer>,
}

/// `commonConfig.monitorServer`: the metrics endpoint.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct MonitorServer {
    /// `bindAddress`: `IP:port`; `""` serves no metrics.
    pub bind_address: Option<String>,
}

/// `modules`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Modules {
    /// `cloudHub`.
    pub cloud_hub: Option<CloudHub>,
    /// `edgeController`: must stay enabled.
    pub edge_controller: Option<Module>,
    /// `deviceController`: disabled, Devices and DeviceModels are not watched.
    pub device_controller: Option<Module>,
    /// `cloudStream`: not implemented (a warning when enabled).
    pub cloud_stream: Option<Module>,
    /// `router`: not implemented (a warning when enabled).
    pub router: Option<Module>,
    /// `dynamicController`: not implemented (a warning when enabled).
    pub dynamic_controller: Option<Module>,
    /// `taskManager`: not implemented (a warning when enabled).
    pub task_manager: Option<Module>,
}

/// A module of which only `enable` is read.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Module {
    /// `enable`.
    pub enable: Option<bool>,
}

/// `modules.cloudHub`: CloudHub, the join server and the certificates.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct CloudHub {
    /// `enable`: must be true.
    pub enable: Option<bool>,
    /// `advertiseAddress`: IP addresses (null and `""` entries are skipped).
    pub advertise_address: Option<Vec<Option<String>>>,
    /// `dnsNames`: DNS names (null and `""` entries are skipped; KubeEdge writes `[""]`).
    pub dns_names: Option<Vec<Option<String>>>,
    /// `nodeLimit`.
    pub node_limit: Option<u32>,
    /// `keepaliveInterval`, seconds.
    pub keepalive_interval: Option<u32>,
    /// `tlsCAFile` (also read as `tlsCaFile`, the edge's spelling).
    #[serde(rename = "tlsCAFile", alias = "tlsCaFile")]
    pub tls_ca_file: Option<PathBuf>,
    /// `tlsCAKeyFile` (also read as `tlsCaKeyFile`).
    #[serde(rename = "tlsCAKeyFile", alias = "tlsCaKeyFile")]
    pub tls_ca_key_file: Option<PathBuf>,
    /// `tlsCertFile`.
    pub tls_cert_file: Option<PathBuf>,
    /// `tlsPrivateKeyFile`.
    pub tls_private_key_file: Option<PathBuf>,
    /// `edgeCertSigningDuration`, days.
    pub edge_cert_signing_duration: Option<u32>,
    /// `tokenRefreshDuration`, hours.
    pub token_refresh_duration: Option<u32>,
    /// `websocket`.
    pub websocket: Option<Listener>,
    /// `https`.
    pub https: Option<Listener>,
    /// `quic`: not implemented (a warning when enabled).
    pub quic: Option<Listener>,
}

/// `modules.cloudHub.{websocket,https,quic}`: a server socket.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Listener {
    /// `enable`.
    pub enable: Option<bool>,
    /// `address`: an IP address.
    pub address: Option<String>,
    /// `port`: 1 to 65535.
    pub port: Option<u32>,
}

/// `kubeedgeRs`: the kubeedge-rs extension.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Extension {
    /// `manifests`: manifest mode.
    pub manifests: Option<Manifests>,
    /// `installCRDs`.
    #[serde(rename = "installCRDs")]
    pub install_crds: Option<bool>,
    /// `inventoryGraceMs`.
    pub inventory_grace_ms: Option<u64>,
    /// `sentRecords`.
    pub sent_records: Option<bool>,
    /// `deviceLimits`: what a Device or DeviceModel may hold before the cloud refuses to send it.
    pub device_limits: Option<DeviceLimitsFile>,
    /// `sessionTakeovers`: how often a node's session may change hands.
    pub session_takeovers: Option<SessionTakeoversFile>,
}

/// `kubeedgeRs.sessionTakeovers`: kubeedge-hub's `TakeoverLimit`; a key left out keeps its
/// default.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct SessionTakeoversFile {
    /// `burst`: takeovers allowed at once (default 3; 0: the established session always wins).
    pub burst: Option<u32>,
    /// `refillEveryMs`: one more takeover is allowed this often (default 10000, at least 1).
    pub refill_every_ms: Option<u64>,
    /// `unlimited`: the newer connection always wins, as in KubeEdge (default false).
    pub unlimited: Option<bool>,
}

impl SessionTakeoversFile {
    /// The limit this asks for, over kubeedge-hub's default; `None` when `unlimited`.
    pub fn limit(&self) -> Option<kubeedge_hub::TakeoverLimit> {
        if self.unlimited == Some(true) {
            return None;
        }
        let mut limit = kubeedge_hub::TakeoverLimit::default();
        if let Some(burst) = self.burst {
            limit.burst = burst;
        }
        if let Some(ms) = self.refill_every_ms {
            limit.refill_every = Duration::from_millis(ms);
        }
        Some(limit)
    }
}

/// `kubeedgeRs.deviceLimits`: bounds on Devices and DeviceModels (kubeedge-cloud's
/// `DeviceLimits`); a key left out keeps the cloud's default.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct DeviceLimitsFile {
    /// `maxStringBytes`: the longest string or key in a spec (default 64 KiB).
    pub max_string_bytes: Option<usize>,
    /// `maxSpecBytes`: the largest spec as JSON (default 1 MiB).
    pub max_spec_bytes: Option<usize>,
    /// `maxProperties`: the most properties or methods (default 1024).
    pub max_properties: Option<usize>,
    /// `maxCycle`: the longest `collectCycle` / `reportCycle` (default one day in ns).
    pub max_cycle: Option<i64>,
}

/// `kubeedgeRs.manifests`: a folder of YAML instead of a cluster.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Manifests {
    /// `dir`: the folder.
    pub dir: Option<PathBuf>,
    /// `statusDir`: where edge reports are written.
    pub status_dir: Option<PathBuf>,
    /// `scanIntervalMs`.
    pub scan_interval_ms: Option<u64>,
}

impl CloudCoreConfig {
    /// Reads and parses `path` (at most [`MAX_CONFIG_BYTES`]); errors start with the path.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = read_bounded(path, MAX_CONFIG_BYTES)?;
        let text =
            String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8 text", path.display()))?;
        Self::from_yaml(&text).map_err(|e| Error::file(path, e))
    }

    /// Parses a config file's text: one YAML document, unknown keys ignored, a wrong type an
    /// error naming the key (`modules.cloudHub.nodeLimit: invalid type: ...`). `apiVersion`
    /// and `kind`, when given, must be KubeEdge's. Values are checked by
    /// [`Settings::apply_file`].
    pub fn from_yaml(text: &str) -> Result<Self> {
        // An empty file (or one of comments only) is no document at all: the defaults.
        let config: Option<Self> = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        let config = config.unwrap_or_default();
        if let Some(version) = &config.api_version
            && !API_VERSIONS.contains(&version.as_str())
        {
            return Err(Error::Invalid(format!(
                "apiVersion: {version:?} is not a cloudcore config (expected {})",
                API_VERSIONS.join(" or ")
            )));
        }
        if let Some(kind) = &config.kind
            && kind != KIND
        {
            return Err(Error::Invalid(format!("kind: {kind:?} is not {KIND:?}")));
        }
        Ok(config)
    }
}

/// Where the cluster CA is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaSource {
    /// `ca.pem` and `ca-key.pem` in a folder (`--pki-dir`): generated, both, when either is
    /// missing (see [`pki::load_or_create_ca`]).
    Dir(PathBuf),
    /// KubeEdge's `tlsCAFile` and `tlsCAKeyFile`: loaded when both exist, generated when
    /// neither does, an error when only one does.
    Files {
        /// The certificate (PEM).
        cert: PathBuf,
        /// The private key (PEM).
        key: PathBuf,
    },
}

impl CaSource {
    /// Where the join server records single-use tokens as spent: `spent-tokens` beside the CA
    /// key, so that replicas sharing the CA share the record.
    pub fn spent_tokens_path(&self) -> PathBuf {
        let dir = match self {
            Self::Dir(dir) => dir.as_path(),
            Self::Files { key, .. } => key.parent().unwrap_or(std::path::Path::new(".")),
        };
        dir.join("spent-tokens")
    }
}

/// What cloudcore runs with: the defaults, then the config file, then the flags.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// The cluster CA (`--pki-dir`, `tlsCAFile` + `tlsCAKeyFile`).
    pub ca: CaSource,
    /// cloudcore's server certificate and key files (`tlsCertFile`, `tlsPrivateKeyFile`):
    /// loaded when both exist; `None` or missing files: issued at start.
    pub server_cert: Option<(PathBuf, PathBuf)>,
    /// CloudHub's address (`--listen`, `websocket`).
    pub listen: SocketAddr,
    /// The join server's address (`--https-listen`, `https`); `None`: no join server.
    pub https_listen: Option<SocketAddr>,
    /// The IP addresses in the server certificate (`--advertise-address`,
    /// `advertiseAddress`).
    pub advertise: Vec<IpAddr>,
    /// The DNS names in the server certificate besides `localhost` (`dnsNames`).
    pub dns_names: Vec<String>,
    /// The metrics endpoint (`--metrics-listen`, `monitorServer.bindAddress`).
    pub metrics_listen: Option<SocketAddr>,
    /// The kubeconfig (`--kubeconfig`, `kubeAPIConfig.kubeConfig`); `None`: the usual search.
    pub kubeconfig: Option<PathBuf>,
    /// `kubeAPIConfig.qps`: accepted, not applied (the kube client has no client-side rate
    /// limiter).
    pub kube_qps: Option<u32>,
    /// `kubeAPIConfig.burst`: accepted, not applied.
    pub kube_burst: Option<u32>,
    /// Apply the device CRDs first (`--install-crds`, `installCRDs`).
    pub install_crds: bool,
    /// Manifest mode's folder (`--manifests`, `manifests.dir`).
    pub manifests: Option<PathBuf>,
    /// Manifest mode's status folder (`--status-dir`, `manifests.statusDir`); `None`:
    /// `status` beside the manifest folder.
    pub status_dir: Option<PathBuf>,
    /// How often the manifest folder is scanned (`--scan-interval-ms`,
    /// `manifests.scanIntervalMs`).
    pub scan_interval: Duration,
    /// How long to wait for a connecting node's inventory (`--inventory-grace-ms`,
    /// `inventoryGraceMs`).
    pub inventory_grace: Duration,
    /// Whether sent records are kept (`--sent-records`, `sentRecords`).
    pub sent_records: bool,
    /// `kubeedgeRs.deviceLimits`, applied over the cloud's defaults.
    pub device_limits: DeviceLimitsFile,
    /// How often a node's session may be taken over (`kubeedgeRs.sessionTakeovers`); `None`:
    /// the newer connection always wins.
    pub takeover_limit: Option<kubeedge_hub::TakeoverLimit>,
    /// The most nodes one replica holds (`--node-limit`, `nodeLimit`).
    pub node_limit: usize,
    /// A node's session ends after this long without a message (`keepaliveInterval`).
    pub keepalive: Duration,
    /// The validity of the certificates issued to edges, in days (`edgeCertSigningDuration`).
    pub edge_cert_validity_days: u32,
    /// Tokens are refreshed this often and valid twice as long (`tokenRefreshDuration`).
    pub token_refresh: Duration,
    /// Watch Devices and DeviceModels and send them to edges (`deviceController.enable`).
    pub devices: bool,
    /// What the config file asked for that cloudcore does not do (QUIC, cloudStream, ...), to
    /// be logged.
    pub warnings: Vec<String>,
}

impl Default for Settings {
    /// cloudcore's defaults, with neither a config file nor flags.
    fn default() -> Self {
        Self {
            ca: CaSource::Dir(PathBuf::from("/etc/kubeedge/pki")),
            server_cert: None,
            listen: SocketAddr::from(([0, 0, 0, 0], 10_000)),
            https_listen: Some(SocketAddr::from(([0, 0, 0, 0], 10_002))),
            advertise: vec![IpAddr::from([127, 0, 0, 1])],
            dns_names: Vec::new(),
            metrics_listen: None,
            kubeconfig: None,
            kube_qps: None,
            kube_burst: None,
            install_crds: false,
            manifests: None,
            status_dir: None,
            scan_interval: Duration::from_millis(1000),
            inventory_grace: Duration::from_millis(2000),
            sent_records: true,
            device_limits: DeviceLimitsFile::default(),
            takeover_limit: Some(kubeedge_hub::TakeoverLimit::default()),
            node_limit: 500,
            keepalive: Duration::from_secs(30),
            edge_cert_validity_days: kubeedge_hub::join::DEFAULT_EDGE_CERT_VALIDITY_DAYS,
            token_refresh: kubeedge_hub::join::Token::DEFAULT_REFRESH,
            devices: true,
            warnings: Vec::new(),
        }
    }
}

impl Settings {
    /// The defaults, then the file of `--config` if given, then the other flags.
    pub fn from_flags(flags: &CloudCoreFlags) -> Result<Self> {
        let mut settings = Self::default();
        if let Some(path) = &flags.config {
            let file = CloudCoreConfig::load(path)?;
            settings
                .apply_file(&file)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            tracing::info!(file = %path.display(), "config read");
        }
        settings.apply_flags(flags)?;
        Ok(settings)
    }

    /// Takes the values `file` gives (see the [module docs](self)), checking each; an error
    /// names the key. Keys the file leaves out keep their value.
    pub fn apply_file(&mut self, file: &CloudCoreConfig) -> Result<()> {
        if let Some(kube) = &file.kube_api_config {
            if let Some(path) = &kube.kube_config {
                self.kubeconfig = (!path.as_os_str().is_empty()).then(|| path.clone());
            }
            if kube.master.as_deref().is_some_and(|m| !m.is_empty()) {
                return Err(
                    "kubeAPIConfig.master: not supported; put the API server in the \
                            kubeconfig (kubeAPIConfig.kubeConfig) and leave master empty"
                        .into(),
                );
            }
            self.kube_qps = kube.qps.or(self.kube_qps);
            self.kube_burst = kube.burst.or(self.kube_burst);
        }
        let monitor = file
            .common_config
            .as_ref()
            .and_then(|c| c.monitor_server.as_ref());
        if let Some(address) = monitor.and_then(|m| m.bind_address.as_deref()) {
            self.metrics_listen = if address.is_empty() {
                None
            } else {
                Some(address.parse().map_err(|e| {
                    format!(
                        "commonConfig.monitorServer.bindAddress: {address:?}: {e} \
                         (expected IP:port)"
                    )
                })?)
            };
        }
        if let Some(modules) = &file.modules {
            self.apply_modules(modules)?;
        }
        if let Some(ext) = &file.kubeedge_rs {
            if let Some(m) = &ext.manifests {
                if let Some(dir) = &m.dir {
                    self.manifests = Some(non_empty_path("kubeedgeRs.manifests.dir", dir)?);
                }
                if let Some(dir) = &m.status_dir {
                    self.status_dir = Some(non_empty_path("kubeedgeRs.manifests.statusDir", dir)?);
                }
                if let Some(ms) = m.scan_interval_ms {
                    let ms = at_least_1("kubeedgeRs.manifests.scanIntervalMs", ms)?;
                    self.scan_interval = Duration::from_millis(ms);
                }
            }
            if let Some(install) = ext.install_crds {
                self.install_crds = install;
            }
            if let Some(ms) = ext.inventory_grace_ms {
                self.inventory_grace = Duration::from_millis(ms);
            }
            if let Some(limits) = ext.device_limits {
                self.device_limits = limits;
            }
            if let Some(takeovers) = ext.session_takeovers {
                if let Some(ms) = takeovers.refill_every_ms {
                    at_least_1("kubeedgeRs.sessionTakeovers.refillEveryMs", ms)?;
                }
                self.takeover_limit = takeovers.limit();
            }
            if let Some(on) = ext.sent_records {
                self.sent_records = on;
            }
        }
        Ok(())
    }

    fn apply_modules(&mut self, modules: &Modules) -> Result<()> {
        if let Some(hub) = &modules.cloud_hub {
            self.apply_cloud_hub(hub)?;
        }
        if enabled(&modules.edge_controller) == Some(false) {
            return Err(
                "modules.edgeController.enable: false is not supported: the edge \
                        controller is what cloudcore runs"
                    .into(),
            );
        }
        if let Some(devices) = enabled(&modules.device_controller) {
            self.devices = devices;
        }
        for (name, module) in [
            ("cloudStream", &modules.cloud_stream),
            ("router", &modules.router),
            ("dynamicController", &modules.dynamic_controller),
            ("taskManager", &modules.task_manager),
        ] {
            if enabled(module) == Some(true) {
                self.warnings.push(format!(
                    "modules.{name}.enable: true is ignored: kubeedge-rs has no {name}"
                ));
            }
        }
        Ok(())
    }

    fn apply_cloud_hub(&mut self, hub: &CloudHub) -> Result<()> {
        const HUB: &str = "modules.cloudHub";
        if hub.enable == Some(false) {
            return Err(Error::Invalid(format!(
                "{HUB}.enable: false is not supported: CloudHub is what edges connect to"
            )));
        }
        if let Some(list) = &hub.advertise_address {
            let advertise = list
                .iter()
                .flatten()
                .filter(|ip| !ip.trim().is_empty())
                .map(|ip| {
                    ip.trim().parse().map_err(|e| {
                        format!("{HUB}.advertiseAddress: {ip:?}: {e} (expected IP addresses)")
                    })
                })
                .collect::<Result<Vec<IpAddr>, _>>()?;
            if advertise.is_empty() {
                return Err(Error::Invalid(format!(
                    "{HUB}.advertiseAddress: needs an IP address (edges dial it)"
                )));
            }
            self.advertise = advertise;
        }
        if let Some(list) = &hub.dns_names {
            self.dns_names = list
                .iter()
                .flatten()
                .map(|name| name.trim())
                .filter(|name| !name.is_empty())
                .map(|name| {
                    if name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-.*".contains(c))
                    {
                        Ok(name.to_owned())
                    } else {
                        Err(Error::Invalid(format!(
                            "{HUB}.dnsNames: {name:?} is not a DNS name"
                        )))
                    }
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(limit) = hub.node_limit {
            let limit = at_least_1(&format!("{HUB}.nodeLimit"), limit)?;
            self.node_limit = usize::try_from(limit).unwrap_or(usize::MAX);
        }
        if let Some(secs) = hub.keepalive_interval {
            let secs = at_least_1(&format!("{HUB}.keepaliveInterval"), secs)?;
            self.keepalive = Duration::from_secs(secs.into());
        }
        match (&hub.tls_ca_file, &hub.tls_ca_key_file) {
            (None, None) => {}
            (Some(cert), Some(key)) => {
                self.ca = CaSource::Files {
                    cert: non_empty_path(&format!("{HUB}.tlsCAFile"), cert)?,
                    key: non_empty_path(&format!("{HUB}.tlsCAKeyFile"), key)?,
                };
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(Error::Invalid(format!(
                    "{HUB}.tlsCAFile and {HUB}.tlsCAKeyFile: give both or neither"
                )));
            }
        }
        match (&hub.tls_cert_file, &hub.tls_private_key_file) {
            (None, None) => {}
            (Some(cert), Some(key)) => {
                self.server_cert = Some((
                    non_empty_path(&format!("{HUB}.tlsCertFile"), cert)?,
                    non_empty_path(&format!("{HUB}.tlsPrivateKeyFile"), key)?,
                ));
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(Error::Invalid(format!(
                    "{HUB}.tlsCertFile and {HUB}.tlsPrivateKeyFile: give both or neither"
                )));
            }
        }
        if let Some(days) = hub.edge_cert_signing_duration {
            self.edge_cert_validity_days =
                at_least_1(&format!("{HUB}.edgeCertSigningDuration"), days)?;
        }
        if let Some(hours) = hub.token_refresh_duration {
            let hours = at_least_1(&format!("{HUB}.tokenRefreshDuration"), hours)?;
            self.token_refresh = Duration::from_secs(u64::from(hours) * 3600);
        }
        if let Some(ws) = &hub.websocket {
            if ws.enable == Some(false) {
                return Err(Error::Invalid(format!(
                    "{HUB}.websocket.enable: false is not supported: edges connect over \
                     WebSocket (kubeedge-rs has no QUIC)"
                )));
            }
            self.listen = listener(&format!("{HUB}.websocket"), ws, self.listen)?;
        }
        if let Some(https) = &hub.https {
            let current = self
                .https_listen
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 10_002)));
            let address = listener(&format!("{HUB}.https"), https, current)?;
            self.https_listen = (https.enable != Some(false)).then_some(address);
        }
        if hub.quic.as_ref().and_then(|q| q.enable) == Some(true) {
            self.warnings.push(format!(
                "{HUB}.quic.enable: true is ignored: kubeedge-rs serves edges over WebSocket only"
            ));
        }
        Ok(())
    }

    /// Takes the flags given (each overrides the file's value); see [`CloudCoreFlags`]. `--config` is
    /// read by [`Settings::from_flags`], not here.
    pub fn apply_flags(&mut self, flags: &CloudCoreFlags) -> Result<()> {
        if let Some(dir) = &flags.pki_dir {
            self.ca = CaSource::Dir(dir.clone());
        }
        self.listen = flags.listen.unwrap_or(self.listen);
        if flags.https_listen.is_some() {
            self.https_listen = flags.https_listen;
        }
        if !flags.advertise_address.is_empty() {
            self.advertise = flags.advertise_address.clone();
        }
        if flags.metrics_listen.is_some() {
            self.metrics_listen = flags.metrics_listen;
        }
        if let Some(path) = &flags.kubeconfig {
            self.kubeconfig = Some(path.clone());
        }
        self.install_crds = flags.install_crds.unwrap_or(self.install_crds);
        if let Some(dir) = &flags.manifests {
            self.manifests = Some(dir.clone());
        }
        if let Some(dir) = &flags.status_dir {
            self.status_dir = Some(dir.clone());
        }
        if let Some(ms) = flags.scan_interval_ms {
            self.scan_interval = Duration::from_millis(ms);
        }
        if let Some(ms) = flags.inventory_grace_ms {
            self.inventory_grace = Duration::from_millis(ms);
        }
        self.sent_records = flags.sent_records.unwrap_or(self.sent_records);
        if let Some(n) = flags.node_limit {
            if n == 0 {
                return Err("--node-limit: must be at least 1".into());
            }
            self.node_limit = n;
        }
        Ok(())
    }

    /// The server certificate and key (PEM) from [`Settings::server_cert`] when both files
    /// exist, checked against `ca`: it must be signed by it and be a server certificate (an
    /// edge node writes its client certificate to the same default paths as KubeEdge's
    /// cloudcore reads). `None`: issue one.
    pub fn read_server_cert(&self, ca: &CertificateAuthority) -> Result<Option<ServerCert>> {
        let Some((cert_path, key_path)) = &self.server_cert else {
            return Ok(None);
        };
        match (cert_path.exists(), key_path.exists()) {
            (false, false) => return Ok(None),
            (true, true) => {}
            (present, _) => {
                let (there, missing) = if present {
                    (cert_path, key_path)
                } else {
                    (key_path, cert_path)
                };
                return Err(Error::Invalid(format!(
                    "{} exists but {} does not (modules.cloudHub.tlsCertFile and \
                     tlsPrivateKeyFile go together)",
                    there.display(),
                    missing.display()
                )));
            }
        }
        let cert = read_bounded(cert_path, MAX_PEM_BYTES)?;
        let key = read_bounded(key_path, MAX_PEM_BYTES)?;
        check_server_cert(&cert, ca).map_err(|e| format!("{}: {e}", cert_path.display()))?;
        Ok(Some(ServerCert {
            cert_pem: cert,
            key_pem: key,
        }))
    }
}

/// cloudcore's server certificate and key as read by [`Settings::read_server_cert`], PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerCert {
    /// The certificate (`tlsCertFile`).
    pub cert_pem: Vec<u8>,
    /// The private key (`tlsPrivateKeyFile`).
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCert")
            .field("cert_pem", &String::from_utf8_lossy(&self.cert_pem))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Checks that `cert_pem` is signed by `ca` and allowed for serverAuth.
fn check_server_cert(cert_pem: &[u8], ca: &CertificateAuthority) -> Result<()> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(cert_pem).map_err(|e| format!("not PEM: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| format!("not a certificate: {e}"))?;
    let (_, ca_cert) =
        X509Certificate::from_der(ca.cert_der()).map_err(|e| format!("the CA certificate: {e}"))?;
    cert.verify_signature(Some(ca_cert.public_key()))
        .map_err(|_| "not signed by the cluster CA (edges would refuse it)".to_owned())?;
    let eku = cert
        .extended_key_usage()
        .map_err(|e| format!("extended key usage: {e}"))?;
    if let Some(eku) = eku
        && !(eku.value.server_auth || eku.value.any)
    {
        return Err(
            "not a server certificate (no serverAuth usage); is it an edge \
                    node's certificate?"
                .into(),
        );
    }
    Ok(())
}

/// The cluster CA of `source`: see [`CaSource`] and [`pki::load_or_create_ca`].
pub fn load_or_create_ca(source: &CaSource) -> Result<CertificateAuthority> {
    match source {
        CaSource::Dir(dir) => pki::load_or_create_ca_in(dir),
        CaSource::Files { cert, key } => pki::load_or_create_ca(cert, key),
    }
}

/// `Some(enable)` of a module that says.
fn enabled(module: &Option<Module>) -> Option<bool> {
    module.as_ref().and_then(|m| m.enable)
}

fn at_least_1<T: PartialOrd + From<u8>>(key: &str, value: T) -> Result<T> {
    if value < T::from(1) {
        return Err(Error::Invalid(format!("{key}: must be at least 1")));
    }
    Ok(value)
}

fn non_empty_path(key: &str, path: &Path) -> Result<PathBuf> {
    if path.as_os_str().is_empty() {
        return Err(Error::Invalid(format!("{key}: must not be empty")));
    }
    Ok(path.to_path_buf())
}

/// `address:port` of `listener` at `key`, each defaulting to `current`'s.
fn listener(key: &str, listener: &Listener, current: SocketAddr) -> Result<SocketAddr> {
    let ip = match listener.address.as_deref().map(str::trim) {
        None | Some("") => current.ip(),
        Some(address) => address
            .parse()
            .map_err(|e| format!("{key}.address: {address:?}: {e} (expected an IP address)"))?,
    };
    let port = match listener.port {
        None => current.port(),
        Some(port) => u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{key}.port: {port} is not a port (1 to 65535)"))?,
    };
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A KubeEdge `cloudcore --defaultconfig`, as KubeEdge writes it.
    const KUBEEDGE: &str = include_str!("../tests/fixtures/kubeedge-cloudcore.yaml");

    #[cfg(feature = "cli")]
    fn flags(args: &[&str]) -> CloudCoreFlags {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            flags: CloudCoreFlags,
        }
        Cli::try_parse_from(std::iter::once("cloudcore").chain(args.iter().copied()))
            .unwrap()
            .flags
    }

    fn settings(yaml: &str) -> Result<Settings, String> {
        let mut settings = Settings::default();
        settings.apply_file(&CloudCoreConfig::from_yaml(yaml)?)?;
        Ok(settings)
    }

    #[test]
    fn kubeedge_default_config_is_read_as_it_is() {
        let s = settings(KUBEEDGE).unwrap();
        let expected = Settings {
            ca: CaSource::Files {
                cert: "/etc/kubeedge/ca/rootCA.crt".into(),
                key: "/etc/kubeedge/ca/rootCA.key".into(),
            },
            server_cert: Some((
                "/etc/kubeedge/certs/server.crt".into(),
                "/etc/kubeedge/certs/server.key".into(),
            )),
            listen: "0.0.0.0:10000".parse().unwrap(),
            https_listen: Some("0.0.0.0:10002".parse().unwrap()),
            advertise: vec!["192.0.2.10".parse().unwrap()],
            // KubeEdge's `dnsNames: [""]` is no name.
            dns_names: vec![],
            metrics_listen: Some("127.0.0.1:9091".parse().unwrap()),
            // `kubeConfig: ""`: the usual search.
            kubeconfig: None,
            kube_qps: Some(2500),
            kube_burst: Some(5000),
            node_limit: 500,
            keepalive: Duration::from_secs(30),
            edge_cert_validity_days: 365,
            token_refresh: Duration::from_secs(12 * 3600),
            devices: true,
            // quic, cloudStream, router, dynamicController, taskManager: all disabled.
            warnings: vec![],
            ..Settings::default()
        };
        assert_eq!(s, expected);
    }

    #[test]
    fn keadm_chart_spelling_is_read_too() {
        // keadm's Helm chart writes v1alpha2 and a null dnsNames entry.
        let s = settings(
            "apiVersion: cloudcore.config.kubeedge.io/v1alpha2
kind: CloudCore
kubeAPIConfig:
  kubeConfig: \"\"
  master: \"\"
modules:
  cloudHub:
    advertiseAddress:
    - 198.51.100.7
    dnsNames:
    -
    nodeLimit: 1000
featureGates:
  requireAuthorization: false
",
        )
        .unwrap();
        assert_eq!(s.advertise, vec![IpAddr::from([198, 51, 100, 7])]);
        assert!(s.dns_names.is_empty());
        assert_eq!(s.node_limit, 1000);
    }

    #[test]
    fn default_config_reads_back_as_the_defaults() {
        assert_eq!(settings(DEFAULT_CONFIG).unwrap(), Settings::default());
        assert_eq!(settings(MIN_CONFIG).unwrap(), Settings::default());
    }

    #[cfg(feature = "cli")]
    #[test]
    fn no_file_and_no_flags_is_today() {
        assert_eq!(
            Settings::from_flags(&flags(&[])).unwrap(),
            Settings::default()
        );
        let d = Settings::default();
        assert_eq!(d.ca, CaSource::Dir("/etc/kubeedge/pki".into()));
        assert_eq!(d.listen.to_string(), "0.0.0.0:10000");
        assert_eq!(d.https_listen.unwrap().to_string(), "0.0.0.0:10002");
        assert_eq!(d.advertise, vec![IpAddr::from([127, 0, 0, 1])]);
        assert_eq!(d.metrics_listen, None);
        assert_eq!(d.node_limit, 500);
        assert_eq!(d.scan_interval, Duration::from_secs(1));
        assert_eq!(d.inventory_grace, Duration::from_secs(2));
    }

    const SUBSET: &str = "apiVersion: cloudcore.config.kubeedge.io/v1alpha1
kind: CloudCore
kubeAPIConfig:
  kubeConfig: /etc/kubeedge/kubeconfig.yaml
  qps: 100
  burst: 200
commonConfig:
  monitorServer:
    bindAddress: 127.0.0.1:19091
modules:
  cloudHub:
    advertiseAddress: [10.0.0.5, \"fd00::5\"]
    dnsNames: [cloudcore.example.com, \"\"]
    nodeLimit: 20
    keepaliveInterval: 45
    tlsCAFile: /srv/ca/rootCA.crt
    tlsCAKeyFile: /srv/ca/rootCA.key
    edgeCertSigningDuration: 30
    tokenRefreshDuration: 6
    websocket: {enable: true, address: 10.0.0.5, port: 20000}
    https: {enable: false, port: 20002}
    quic: {enable: true}
  edgeController: {enable: true}
  deviceController: {enable: false}
  cloudStream: {enable: true}
kubeedgeRs:
  manifests:
    dir: /srv/manifests
    statusDir: /srv/status
    scanIntervalMs: 250
  installCRDs: true
  inventoryGraceMs: 500
";

    #[test]
    fn the_subset_maps_onto_the_settings() {
        let s = settings(SUBSET).unwrap();
        assert_eq!(
            s.kubeconfig.as_deref(),
            Some(Path::new("/etc/kubeedge/kubeconfig.yaml"))
        );
        assert_eq!((s.kube_qps, s.kube_burst), (Some(100), Some(200)));
        assert_eq!(s.metrics_listen, Some("127.0.0.1:19091".parse().unwrap()));
        assert_eq!(
            s.advertise,
            vec![
                "10.0.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        assert_eq!(s.dns_names, vec!["cloudcore.example.com".to_owned()]);
        assert_eq!(s.node_limit, 20);
        assert_eq!(s.keepalive, Duration::from_secs(45));
        assert_eq!(
            s.ca,
            CaSource::Files {
                cert: "/srv/ca/rootCA.crt".into(),
                key: "/srv/ca/rootCA.key".into()
            }
        );
        assert_eq!(s.server_cert, None);
        assert_eq!(s.edge_cert_validity_days, 30);
        assert_eq!(s.token_refresh, Duration::from_secs(6 * 3600));
        assert_eq!(s.listen, "10.0.0.5:20000".parse().unwrap());
        assert_eq!(s.https_listen, None, "https.enable: false");
        assert!(!s.devices);
        assert_eq!(s.manifests.as_deref(), Some(Path::new("/srv/manifests")));
        assert_eq!(s.status_dir.as_deref(), Some(Path::new("/srv/status")));
        assert_eq!(s.scan_interval, Duration::from_millis(250));
        assert!(s.install_crds);
        assert_eq!(s.inventory_grace, Duration::from_millis(500));
        assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
        assert!(s.warnings[0].contains("modules.cloudHub.quic.enable"));
        assert!(s.warnings[1].contains("modules.cloudStream.enable"));
    }

    #[test]
    fn session_takeovers_are_read_over_the_hubs_default() {
        let default = kubeedge_hub::TakeoverLimit::default();
        assert_eq!(settings("").unwrap().takeover_limit, Some(default));
        let s = settings("kubeedgeRs: {sessionTakeovers: {burst: 0}}").unwrap();
        let limit = s.takeover_limit.unwrap();
        assert_eq!(limit.burst, 0);
        assert_eq!(limit.refill_every, default.refill_every);
        let s = settings("kubeedgeRs: {sessionTakeovers: {burst: 5, refillEveryMs: 250}}").unwrap();
        let limit = s.takeover_limit.unwrap();
        assert_eq!(
            (limit.burst, limit.refill_every),
            (5, Duration::from_millis(250))
        );
        let s = settings("kubeedgeRs: {sessionTakeovers: {unlimited: true}}").unwrap();
        assert_eq!(s.takeover_limit, None);
        let e = settings("kubeedgeRs: {sessionTakeovers: {refillEveryMs: 0}}").unwrap_err();
        assert!(
            e.contains("kubeedgeRs.sessionTakeovers.refillEveryMs: must be at least 1"),
            "{e}"
        );
    }

    #[test]
    fn a_partial_listener_keeps_the_rest_of_the_default() {
        let s = settings(
            "modules: {cloudHub: {websocket: {port: 10010}, https: {address: 127.0.0.1}}}",
        )
        .unwrap();
        assert_eq!(s.listen, "0.0.0.0:10010".parse().unwrap());
        assert_eq!(s.https_listen, Some("127.0.0.1:10002".parse().unwrap()));
    }

    #[cfg(feature = "cli")]
    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cloudcore.yaml");
        std::fs::write(&path, SUBSET).unwrap();
        let config = path.to_str().unwrap();

        // The file alone.
        let s = Settings::from_flags(&flags(&["--config", config])).unwrap();
        assert_eq!(s.node_limit, 20);

        let s = Settings::from_flags(&flags(&[
            "--config",
            config,
            "--pki-dir",
            "/tmp/pki",
            "--listen",
            "127.0.0.1:1",
            "--https-listen",
            "127.0.0.1:2",
            "--advertise-address",
            "192.0.2.1,192.0.2.2",
            "--metrics-listen",
            "127.0.0.1:3",
            "--kubeconfig",
            "/k",
            "--install-crds",
            "false",
            "--manifests",
            "/m",
            "--status-dir",
            "/s",
            "--scan-interval-ms",
            "5",
            "--inventory-grace-ms",
            "6",
            "--node-limit",
            "7",
        ]))
        .unwrap();
        assert_eq!(s.ca, CaSource::Dir("/tmp/pki".into()));
        assert_eq!(s.listen, "127.0.0.1:1".parse().unwrap());
        // The flag serves the join server the file disabled.
        assert_eq!(s.https_listen, Some("127.0.0.1:2".parse().unwrap()));
        assert_eq!(
            s.advertise,
            vec![IpAddr::from([192, 0, 2, 1]), IpAddr::from([192, 0, 2, 2])]
        );
        assert_eq!(s.metrics_listen, Some("127.0.0.1:3".parse().unwrap()));
        assert_eq!(s.kubeconfig.as_deref(), Some(Path::new("/k")));
        assert!(!s.install_crds);
        assert_eq!(s.manifests.as_deref(), Some(Path::new("/m")));
        assert_eq!(s.status_dir.as_deref(), Some(Path::new("/s")));
        assert_eq!(s.scan_interval, Duration::from_millis(5));
        assert_eq!(s.inventory_grace, Duration::from_millis(6));
        assert_eq!(s.node_limit, 7);
        // What no flag sets stays the file's.
        assert_eq!(s.keepalive, Duration::from_secs(45));
        assert_eq!(s.edge_cert_validity_days, 30);
        assert!(!s.devices);
    }

    #[test]
    fn bad_values_are_errors_naming_the_key() {
        let cases = [
            (
                "modules: {cloudHub: {nodeLimit: 0}}",
                "modules.cloudHub.nodeLimit: must be at least 1",
            ),
            (
                "modules: {cloudHub: {nodeLimit: many}}",
                "modules.cloudHub.nodeLimit: invalid type",
            ),
            (
                "modules: {cloudHub: {nodeLimit: -5}}",
                "modules.cloudHub.nodeLimit: invalid type: integer `-5`",
            ),
            (
                "modules: {cloudHub: {keepaliveInterval: 0}}",
                "modules.cloudHub.keepaliveInterval: must be at least 1",
            ),
            (
                "modules: {cloudHub: {websocket: {address: cloud.example}}}",
                "modules.cloudHub.websocket.address: \"cloud.example\"",
            ),
            (
                "modules: {cloudHub: {websocket: {port: 70000}}}",
                "modules.cloudHub.websocket.port: 70000 is not a port",
            ),
            (
                "modules: {cloudHub: {https: {port: 0}}}",
                "modules.cloudHub.https.port: 0 is not a port",
            ),
            (
                "modules: {cloudHub: {https: {enable: maybe}}}",
                "modules.cloudHub.https.enable: invalid type",
            ),
            (
                "modules: {cloudHub: {websocket: {enable: false}}}",
                "modules.cloudHub.websocket.enable: false is not supported",
            ),
            (
                "modules: {cloudHub: {enable: false}}",
                "modules.cloudHub.enable: false is not supported",
            ),
            (
                "modules: {cloudHub: {advertiseAddress: [10.0.0.300]}}",
                "modules.cloudHub.advertiseAddress: \"10.0.0.300\"",
            ),
            (
                "modules: {cloudHub: {advertiseAddress: [\"\"]}}",
                "modules.cloudHub.advertiseAddress: needs an IP address",
            ),
            (
                "modules: {cloudHub: {advertiseAddress: 10.0.0.1}}",
                "modules.cloudHub.advertiseAddress: invalid type",
            ),
            (
                "modules: {cloudHub: {dnsNames: [\"a b\"]}}",
                "modules.cloudHub.dnsNames: \"a b\"",
            ),
            (
                "modules: {cloudHub: {tlsCAFile: /ca.crt}}",
                "modules.cloudHub.tlsCAFile and modules.cloudHub.tlsCAKeyFile",
            ),
            (
                "modules: {cloudHub: {tlsPrivateKeyFile: /k}}",
                "modules.cloudHub.tlsCertFile and modules.cloudHub.tlsPrivateKeyFile",
            ),
            (
                "modules: {cloudHub: {tlsCAFile: \"\", tlsCAKeyFile: /k}}",
                "modules.cloudHub.tlsCAFile: must not be empty",
            ),
            (
                "modules: {cloudHub: {edgeCertSigningDuration: 0}}",
                "modules.cloudHub.edgeCertSigningDuration: must be at least 1",
            ),
            (
                "modules: {cloudHub: {tokenRefreshDuration: 12h}}",
                "modules.cloudHub.tokenRefreshDuration: invalid type",
            ),
            (
                "modules: {edgeController: {enable: false}}",
                "modules.edgeController.enable: false is not supported",
            ),
            (
                "modules: {deviceController: {enable: 1}}",
                "modules.deviceController.enable: invalid type",
            ),
            ("modules: [cloudHub]", "modules: invalid type"),
            (
                "commonConfig: {monitorServer: {bindAddress: \"9091\"}}",
                "commonConfig.monitorServer.bindAddress: \"9091\"",
            ),
            (
                "kubeAPIConfig: {master: \"https://10.0.0.1:6443\"}",
                "kubeAPIConfig.master: not supported",
            ),
            (
                "kubeAPIConfig: {qps: fast}",
                "kubeAPIConfig.qps: invalid type",
            ),
            (
                "kubeedgeRs: {manifests: {scanIntervalMs: 0}}",
                "kubeedgeRs.manifests.scanIntervalMs: must be at least 1",
            ),
            (
                "kubeedgeRs: {manifests: {dir: \"\"}}",
                "kubeedgeRs.manifests.dir: must not be empty",
            ),
            (
                "kubeedgeRs: {installCRDs: yes please}",
                "kubeedgeRs.installCRDs: invalid type",
            ),
            (
                "apiVersion: edgecore.config.kubeedge.io/v1alpha2",
                "apiVersion: \"edgecore.config.kubeedge.io/v1alpha2\"",
            ),
            ("kind: EdgeCore", "kind: \"EdgeCore\""),
            ("just a string", "invalid type"),
            ("a: 1\n---\nb: 2\n", "more than one document"),
        ];
        for (yaml, expected) in cases {
            let err = settings(yaml).expect_err(yaml);
            assert!(
                err.contains(expected),
                "{yaml:?}: {err:?} lacks {expected:?}"
            );
        }
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        assert_eq!(settings("").unwrap(), Settings::default());
        assert_eq!(settings("# nothing\n").unwrap(), Settings::default());
    }

    #[test]
    fn an_oversized_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.yaml");
        let mut text = String::from("kind: CloudCore\n");
        while (text.len() as u64) <= MAX_CONFIG_BYTES {
            text.push_str("# padding padding padding padding padding padding padding\n");
        }
        std::fs::write(&path, &text).unwrap();
        let err = CloudCoreConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("larger than 1048576 bytes"), "{err}");
        // The same file within the limit is fine.
        text.truncate(MAX_CONFIG_BYTES as usize - 1);
        text.push('\n');
        std::fs::write(&path, &text).unwrap();
        CloudCoreConfig::load(&path).unwrap();
    }

    #[cfg(feature = "cli")]
    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cloudcore.yaml");
        std::fs::write(&path, "modules: {cloudHub: {nodeLimit: x}}").unwrap();
        let err = Settings::from_flags(&flags(&["--config", path.to_str().unwrap()]))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("{}: modules.cloudHub.nodeLimit", path.display())),
            "{err}"
        );
        std::fs::write(&path, "modules: {cloudHub: {nodeLimit: 0}}").unwrap();
        let err = Settings::from_flags(&flags(&["--config", path.to_str().unwrap()]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "{}: modules.cloudHub.nodeLimit: must be at least 1",
                path.display()
            )
        );
        let missing = dir.path().join("missing.yaml");
        let err = CloudCoreConfig::load(&missing).unwrap_err().to_string();
        assert!(err.starts_with(&missing.display().to_string()), "{err}");
        std::fs::write(&path, [0xff, 0xfe, 0x00]).unwrap();
        assert!(
            CloudCoreConfig::load(&path)
                .unwrap_err()
                .to_string()
                .contains("not UTF-8")
        );
    }

    #[test]
    fn ca_files_are_created_then_loaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let source = CaSource::Files {
            cert: dir.path().join("ca/rootCA.crt"),
            key: dir.path().join("ca/rootCA.key"),
        };
        let created = load_or_create_ca(&source).unwrap();
        let mode = std::fs::metadata(dir.path().join("ca/rootCA.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the CA key is private: {mode:o}");
        let loaded = load_or_create_ca(&source).unwrap();
        assert_eq!(loaded.cert_der(), created.cert_der());
        assert_eq!(loaded.key_der(), created.key_der());

        // Half a CA is not replaced.
        std::fs::remove_file(dir.path().join("ca/rootCA.key")).unwrap();
        let err = load_or_create_ca(&source).unwrap_err().to_string();
        assert!(err.contains("rootCA.key does not"), "{err}");
        assert_eq!(
            std::fs::read(dir.path().join("ca/rootCA.crt")).unwrap(),
            created.cert_pem().as_bytes()
        );
    }

    #[test]
    fn a_server_certificate_is_loaded_only_from_the_ca() {
        use base64::Engine;
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
        let ca = CertificateAuthority::generate().unwrap();
        let mut s = Settings {
            server_cert: Some((cert.clone(), key.clone())),
            ..Settings::default()
        };
        // Neither file: issue one.
        assert_eq!(s.read_server_cert(&ca).unwrap(), None);

        let issued = ca
            .issue_server_cert(&[IpAddr::from([127, 0, 0, 1])], &["localhost"])
            .unwrap();
        std::fs::write(&cert, &issued.cert_pem).unwrap();
        let err = s.read_server_cert(&ca).unwrap_err().to_string();
        assert!(err.contains("server.key does not"), "{err}");
        std::fs::write(&key, &issued.key_pem).unwrap();
        let read = s.read_server_cert(&ca).unwrap().unwrap();
        assert_eq!(read.cert_pem, issued.cert_pem.into_bytes());
        assert_eq!(read.key_pem, issued.key_pem.into_bytes());

        // Another CA's certificate.
        let other = CertificateAuthority::generate().unwrap();
        let foreign = other
            .issue_server_cert(&[IpAddr::from([127, 0, 0, 1])], &["localhost"])
            .unwrap();
        std::fs::write(&cert, &foreign.cert_pem).unwrap();
        let err = s.read_server_cert(&ca).unwrap_err().to_string();
        assert!(err.contains("not signed by the cluster CA"), "{err}");

        // An edge node's certificate, where edgecore writes it by default.
        let csr = kubeedge_hub::join::EdgeCsr::new("edge-1").unwrap();
        let der = ca
            .sign_edge_csr(&csr.csr_der, kubeedge_hub::join::ExtKeyUsage::DEFAULT, 365)
            .unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        );
        std::fs::write(&cert, pem).unwrap();
        std::fs::write(&key, &csr.key_pem).unwrap();
        let err = s.read_server_cert(&ca).unwrap_err().to_string();
        assert!(err.contains("not a server certificate"), "{err}");

        s.server_cert = None;
        assert_eq!(s.read_server_cert(&ca).unwrap(), None);
    }
}
