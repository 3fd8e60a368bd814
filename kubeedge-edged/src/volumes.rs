//! Pod volumes on disk: [`VolumeManager`].
//!
//! Volumes live where the kubelet keeps them,
//! `<root>/pods/<pod-uid>/volumes/<plugin dir>/<volume name>`, with the kubelet's plugin directory
//! names ([`KIND_CONFIGMAP`], [`KIND_SECRET`], [`KIND_PROJECTED`], [`KIND_DOWNWARD_API`],
//! [`KIND_EMPTY_DIR`]). `hostPath` volumes are not copied: their mount source is the host path
//! itself, after the `type` check.
//!
//! ## Supported volume types
//! - `configMap`, `secret`: the object's keys (or `items`), from [`ObjectLookup`].
//! - `downwardAPI`: `fieldRef` (`metadata.name`, `metadata.namespace`, `metadata.uid`,
//!   `metadata.labels`, `metadata.annotations`, `metadata.labels['k']`,
//!   `metadata.annotations['k']`; whole maps as the kubelet writes them, sorted `key="value"`
//!   lines with Go-quoted values) and `resourceFieldRef` (`limits.*`/`requests.*` of `cpu`,
//!   `memory`, `ephemeral-storage`, `hugepages-<size>`, with `containerName` and `divisor`; the
//!   same code as env `resourceFieldRef`s). An unset limit is the node's allocatable value from
//!   [`ObjectLookup::node_allocatable`], or an error when that is not known.
//! - `projected`: sources `configMap`, `secret`, `downwardAPI` and `serviceAccountToken` merged
//!   into one volume (the `kube-api-access-*` volume every pod gets from ServiceAccount
//!   admission). Tokens are not requested here: they come from
//!   [`ObjectLookup::service_account_token`], and [`pod_needs`] lists what a pod needs from the
//!   cloud. A path given by two sources is refused (`conflicting duplicate paths`). The token
//!   file has the volume's `defaultMode` (the kubelet's `0600` under `fsGroup` is not applied:
//!   edged changes no ownership).
//! - `emptyDir`, `hostPath`.
//!
//! Not supported, with an error naming the type: every other volume type (they need a volume
//! plugin, an attach/mount step or a CSI driver that edged does not have), the projected source
//! `clusterTrustBundle` (KubeEdge's cloud does not send ClusterTrustBundle objects to edge
//! nodes) and sources of types newer than the Kubernetes API edged is built for (1.33).
//!
//! ## Writing
//! ConfigMap, Secret, downwardAPI and projected volumes are written like the kubelet's
//! `AtomicWriter`: the files go into a fresh hidden directory `..<timestamp>.<n>`, a `..data`
//! symlink is switched to it with one `rename`, and each user-visible top-level name is a
//! symlink into `..data`. A container that bind-mounts the volume directory therefore sees
//! either the old or the new content, never a mix, and an update replaces the content (keys that
//! disappeared disappear). A `subPath` mount of such a volume is resolved to the real file at
//! mount time and, as in Kubernetes, does not follow later updates.
//!
//! Everything that comes from an object (keys, `items[].path`, `subPath`, the pod uid, volume
//! names) is checked before it becomes a path: no absolute paths, no `..`, no NUL, and symlinks
//! met while resolving a `subPath` must stay inside the volume. Content is bounded by
//! [`MAX_VOLUME_BYTES`] per ConfigMap, Secret or token (the size limit of a ConfigMap or Secret in
//! Kubernetes) and by [`MAX_PROJECTED_BYTES`] per projected or downwardAPI volume.
//!
//! Errors are [`Error::Volume`] with the volume's name and a message in the kubelet's words
//! (`configmap "x" not found`), ready for the pod status. A projected or downwardAPI volume
//! reports every failing source at once, as the kubelet does (`[a, b]`), and writes nothing then.
//!
//! Content is refreshed only when [`VolumeManager::setup_pod_volumes`] runs again (unchanged
//! content is not rewritten, so calling it on every sync is cheap): a renewed token, a changed
//! ConfigMap or changed pod labels reach the files on the next call.
//!
//! `emptyDir` with `medium: Memory` is a plain directory here (no tmpfs is mounted: edged mounts
//! nothing itself), so its content is on disk and survives like any other emptyDir until
//! [`VolumeManager::remove_pod_dir`].

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, HostPathVolumeSource, KeyToPath, Pod,
    ProjectedVolumeSource, Secret, ServiceAccountTokenProjection, Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::pod_spec::{pod_metadata_field, resource_field_value};
use crate::runtime::Mount;
use crate::{Error, Result};

/// Largest total size (keys plus values) of a ConfigMap or Secret volume, as in Kubernetes.
pub const MAX_VOLUME_BYTES: usize = 1024 * 1024;
/// File mode when neither `items[].mode` nor `defaultMode` is set (`0644`).
pub const DEFAULT_MODE: u32 = 0o644;
/// Plugin directory of ConfigMap volumes (the kubelet's name).
pub const KIND_CONFIGMAP: &str = "kubernetes.io~configmap";
/// Plugin directory of Secret volumes.
pub const KIND_SECRET: &str = "kubernetes.io~secret";
/// Plugin directory of emptyDir volumes.
pub const KIND_EMPTY_DIR: &str = "kubernetes.io~empty-dir";
/// Plugin directory of projected volumes.
pub const KIND_PROJECTED: &str = "kubernetes.io~projected";
/// Plugin directory of downwardAPI volumes.
pub const KIND_DOWNWARD_API: &str = "kubernetes.io~downward-api";
/// Largest total content of one projected or downwardAPI volume. Edged's own bound (Kubernetes
/// has none): each ConfigMap or Secret in it is also bounded by [`MAX_VOLUME_BYTES`].
pub const MAX_PROJECTED_BYTES: usize = 8 * MAX_VOLUME_BYTES;
/// `expirationSeconds` of a service-account token when the projection sets none (one hour).
pub const DEFAULT_TOKEN_EXPIRATION_SECONDS: i64 = 3600;
/// Shortest `expirationSeconds` Kubernetes accepts (ten minutes).
pub const MIN_TOKEN_EXPIRATION_SECONDS: i64 = 600;
/// Longest `expirationSeconds` Kubernetes accepts (2^32 seconds).
const MAX_TOKEN_EXPIRATION_SECONDS: i64 = 1 << 32;

/// The symlink that points at the current content of an atomically written volume.
const DATA_LINK: &str = "..data";
/// The symlink built next to `..data` and renamed over it.
const DATA_TMP_LINK: &str = "..data_tmp";
/// Longest relative path inside a volume.
const MAX_PATH_LEN: usize = 4096;
/// Longest single path segment.
const MAX_SEGMENT_LEN: usize = 255;

/// Where edged finds what volumes (and env) refer to: ConfigMaps, Secrets, service-account
/// tokens and the node's allocatable resources (the local store, usually).
pub trait ObjectLookup {
    /// The ConfigMap `namespace/name`, if known.
    fn config_map(&self, namespace: &str, name: &str) -> Option<ConfigMap>;
    /// The Secret `namespace/name`, if known.
    fn secret(&self, namespace: &str, name: &str) -> Option<Secret>;
    /// The token for `source` of `pod` (a bound service-account token the cloud issued), if known.
    fn service_account_token(&self, pod: &Pod, source: &TokenSource) -> Option<String> {
        let _ = (pod, source);
        None
    }
    /// The node's allocatable resources (`cpu`, `memory`, `ephemeral-storage`), if known. A
    /// `resourceFieldRef` to a limit the container does not set gives this value, as in the
    /// kubelet; without it, such a reference is an error.
    fn node_allocatable(&self) -> Option<BTreeMap<String, Quantity>> {
        None
    }
}

/// A service-account token a projected volume asks for: what the cloud is asked to issue
/// (`TokenRequest` for the pod) and where the token goes in the volume.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenSource {
    /// The pod's `spec.serviceAccountName` (else the deprecated `spec.serviceAccount`, else
    /// `default`).
    pub service_account: String,
    /// The token's audience; `None` for the API server's default audiences.
    pub audience: Option<String>,
    /// The requested lifetime (default [`DEFAULT_TOKEN_EXPIRATION_SECONDS`]; Kubernetes accepts
    /// no less than [`MIN_TOKEN_EXPIRATION_SECONDS`]).
    pub expiration_seconds: i64,
    /// The file's path inside the volume.
    pub path: String,
}

impl TokenSource {
    /// The token `projection` (a `serviceAccountToken` source of a projected volume) of `pod`.
    pub fn new(pod: &Pod, projection: &ServiceAccountTokenProjection) -> Self {
        let spec = pod.spec.as_ref();
        let service_account = spec
            .and_then(|s| s.service_account_name.as_deref())
            .filter(|n| !n.is_empty())
            .or_else(|| {
                spec.and_then(|s| s.service_account.as_deref())
                    .filter(|n| !n.is_empty())
            })
            .unwrap_or("default")
            .to_owned();
        Self {
            service_account,
            audience: projection.audience.clone().filter(|a| !a.is_empty()),
            expiration_seconds: projection
                .expiration_seconds
                .unwrap_or(DEFAULT_TOKEN_EXPIRATION_SECONDS),
            path: projection.path.clone(),
        }
    }
}

/// Something a pod needs from the cloud before its volumes and environment can be set up; see
/// [`pod_needs`]. ConfigMaps and Secrets are in the pod's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodNeed {
    /// A ConfigMap.
    ConfigMap {
        /// Its name.
        name: String,
        /// Whether every reference to it is optional (the pod can run without it).
        optional: bool,
    },
    /// A Secret.
    Secret {
        /// Its name.
        name: String,
        /// Whether every reference to it is optional.
        optional: bool,
    },
    /// A service-account token for a projected volume.
    Token(TokenSource),
}

/// What `pod` needs from the cloud: the ConfigMaps and Secrets its `configMap`, `secret` and
/// `projected` volumes and its containers' and init containers' `env[].valueFrom` and `envFrom`
/// refer to, and the service-account tokens of its projected volumes. Each appears once (a
/// ConfigMap or Secret is optional only when every reference to it is): ConfigMaps by name, then
/// Secrets by name, then tokens. Image pull secrets are not listed (edged pulls nothing with
/// them); nor are ephemeral containers (edged does not run them).
pub fn pod_needs(pod: &Pod) -> Vec<PodNeed> {
    let mut config_maps: BTreeMap<&str, bool> = BTreeMap::new();
    let mut secrets: BTreeMap<&str, bool> = BTreeMap::new();
    let mut tokens: BTreeSet<TokenSource> = BTreeSet::new();
    fn add<'a>(map: &mut BTreeMap<&'a str, bool>, name: &'a str, optional: Option<bool>) {
        if name.is_empty() {
            return;
        }
        let optional = optional.unwrap_or(false);
        map.entry(name)
            .and_modify(|o| *o &= optional)
            .or_insert(optional);
    }
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    for volume in spec.volumes.iter().flatten() {
        if let Some(src) = &volume.config_map {
            add(&mut config_maps, &src.name, src.optional);
        }
        if let Some(src) = &volume.secret {
            let name = src.secret_name.as_deref().unwrap_or_default();
            add(&mut secrets, name, src.optional);
        }
        for source in volume
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
        {
            if let Some(src) = &source.config_map {
                add(&mut config_maps, &src.name, src.optional);
            }
            if let Some(src) = &source.secret {
                add(&mut secrets, &src.name, src.optional);
            }
            if let Some(src) = &source.service_account_token {
                tokens.insert(TokenSource::new(pod, src));
            }
        }
    }
    for container in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
        for from in container.env_from.iter().flatten() {
            if let Some(r) = &from.config_map_ref {
                add(&mut config_maps, &r.name, r.optional);
            }
            if let Some(r) = &from.secret_ref {
                add(&mut secrets, &r.name, r.optional);
            }
        }
        for from in container
            .env
            .iter()
            .flatten()
            .filter_map(|v| v.value_from.as_ref())
        {
            if let Some(r) = &from.config_map_key_ref {
                add(&mut config_maps, &r.name, r.optional);
            }
            if let Some(r) = &from.secret_key_ref {
                add(&mut secrets, &r.name, r.optional);
            }
        }
    }
    let config_maps = config_maps
        .into_iter()
        .map(|(name, optional)| PodNeed::ConfigMap {
            name: name.to_owned(),
            optional,
        });
    let secrets = secrets.into_iter().map(|(name, optional)| PodNeed::Secret {
        name: name.to_owned(),
        optional,
    });
    config_maps
        .chain(secrets)
        .chain(tokens.into_iter().map(PodNeed::Token))
        .collect()
}

/// An [`ObjectLookup`] made of two closures `(namespace, name) -> Option<_>` (it knows no
/// tokens and no node allocatable).
#[derive(Clone, Debug)]
pub struct LookupFns<C, S> {
    /// Finds ConfigMaps.
    pub config_map: C,
    /// Finds Secrets.
    pub secret: S,
}

impl<C, S> ObjectLookup for LookupFns<C, S>
where
    C: Fn(&str, &str) -> Option<ConfigMap>,
    S: Fn(&str, &str) -> Option<Secret>,
{
    fn config_map(&self, namespace: &str, name: &str) -> Option<ConfigMap> {
        (self.config_map)(namespace, name)
    }

    fn secret(&self, namespace: &str, name: &str) -> Option<Secret> {
        (self.secret)(namespace, name)
    }
}

/// Materialises pod volumes under a root directory (edged's `rootDirectory`, for instance
/// `/var/lib/kubelet`) and computes container mounts.
#[derive(Clone, Debug)]
pub struct VolumeManager {
    root: PathBuf,
}

/// One file of an atomically written volume.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileData {
    data: Vec<u8>,
    mode: u32,
}

type Payload = BTreeMap<String, FileData>;

impl VolumeManager {
    /// A manager for pods under `<root>/pods`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/pods/<uid>`; the uid must be one plain path segment.
    pub fn pod_dir(&self, uid: &str) -> Result<PathBuf> {
        check_segment(uid).map_err(|m| Error::Spec(format!("pod uid {uid:?}: {m}")))?;
        Ok(self.root.join("pods").join(uid))
    }

    /// Writes (or refreshes) every volume of `pod`. Every volume is attempted; the first error
    /// is returned. Content that did not change is not rewritten, so this can run on every sync;
    /// it is also the only way a renewed token, a changed ConfigMap or Secret, or changed pod
    /// labels and annotations reach the files.
    pub fn setup_pod_volumes(&self, pod: &Pod, lookup: &impl ObjectLookup) -> Result<()> {
        let mut first = None;
        for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            if let Err(e) = self.setup_volume(pod, volume, lookup) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Writes (or refreshes) one volume of `pod` and returns its directory on the host (for
    /// `hostPath`: the host path).
    pub fn setup_volume(
        &self,
        pod: &Pod,
        volume: &Volume,
        lookup: &impl ObjectLookup,
    ) -> Result<PathBuf> {
        let name = volume.name.as_str();
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let dir = self.volume_path(pod, volume)?;
        if let Some(src) = &volume.config_map {
            let entries = lookup
                .config_map(namespace, &src.name)
                .map(|o| config_map_entries(&o));
            let payload = object_payload(
                name,
                &format!("configmap {:?}", src.name),
                entries,
                src.items.as_deref(),
                src.default_mode,
                src.optional.unwrap_or(false),
            )?;
            write_atomic(name, &dir, &payload)?;
        } else if let Some(src) = &volume.secret {
            let secret_name = src.secret_name.as_deref().unwrap_or_default();
            let entries = lookup
                .secret(namespace, secret_name)
                .map(|o| secret_entries(&o));
            let payload = object_payload(
                name,
                &format!("secret {secret_name:?}"),
                entries,
                src.items.as_deref(),
                src.default_mode,
                src.optional.unwrap_or(false),
            )?;
            write_atomic(name, &dir, &payload)?;
        } else if let Some(src) = &volume.projected {
            let payload = projected_payload(pod, name, src, lookup)?;
            write_atomic(name, &dir, &payload)?;
        } else if let Some(src) = &volume.downward_api {
            let default_mode = check_mode(name, src.default_mode, DEFAULT_MODE)?;
            let items = src.items.as_deref().unwrap_or_default();
            let payload = downward_volume_payload(pod, name, items, default_mode, lookup)?;
            write_atomic(name, &dir, &payload)?;
        } else if volume.empty_dir.is_some() {
            if !dir.is_dir() {
                fs::create_dir_all(&dir).map_err(|e| io_err(name, "create the directory", e))?;
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))
                    .map_err(|e| io_err(name, "chmod the directory", e))?;
            }
        } else if let Some(src) = &volume.host_path {
            check_host_path(name, src)?;
        }
        Ok(dir)
    }

    /// Where `volume` of `pod` is on the host, whether or not it was set up yet. Fails for
    /// volume types edged does not support (the message names the type).
    pub fn volume_path(&self, pod: &Pod, volume: &Volume) -> Result<PathBuf> {
        let name = volume.name.as_str();
        check_segment(name).map_err(|m| volume_err(name, format!("bad volume name: {m}")))?;
        let kind = if volume.config_map.is_some() {
            KIND_CONFIGMAP
        } else if volume.secret.is_some() {
            KIND_SECRET
        } else if volume.projected.is_some() {
            KIND_PROJECTED
        } else if volume.downward_api.is_some() {
            KIND_DOWNWARD_API
        } else if volume.empty_dir.is_some() {
            KIND_EMPTY_DIR
        } else if let Some(src) = &volume.host_path {
            check_host_path_syntax(name, &src.path)?;
            return Ok(PathBuf::from(&src.path));
        } else {
            return Err(volume_err(name, unsupported_kind(volume)));
        };
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        Ok(self.pod_dir(uid)?.join("volumes").join(kind).join(name))
    }

    /// The mounts of `container` (one of `pod`'s containers or init containers) for its
    /// `volumeMounts`, in order. The volumes must have been set up with
    /// [`setup_pod_volumes`](Self::setup_pod_volumes). ConfigMap, Secret, downwardAPI and
    /// projected volumes are always read-only, as in Kubernetes; a `subPath` is resolved to the
    /// real path inside the volume (created as a directory for emptyDir and hostPath volumes when
    /// missing).
    pub fn container_mounts(&self, pod: &Pod, container: &Container) -> Result<Vec<Mount>> {
        let volumes: BTreeMap<&str, &Volume> = pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .map(|v| (v.name.as_str(), v))
            .collect();
        let mut mounts = Vec::new();
        for vm in container.volume_mounts.iter().flatten() {
            let name = vm.name.as_str();
            let volume = volumes.get(name).ok_or_else(|| {
                volume_err(
                    name,
                    format!(
                        "container {:?} mounts a volume the pod does not have",
                        container.name
                    ),
                )
            })?;
            if vm.mount_path.is_empty() || vm.mount_path.contains('\0') {
                return Err(volume_err(
                    name,
                    format!("bad mountPath {:?}", vm.mount_path),
                ));
            }
            if vm.sub_path_expr.as_deref().is_some_and(|s| !s.is_empty()) {
                return Err(volume_err(name, "subPathExpr is not supported"));
            }
            let base = self.volume_path(pod, volume)?;
            if fs::symlink_metadata(&base).is_err() {
                return Err(volume_err(
                    name,
                    format!("{} is not set up", base.display()),
                ));
            }
            let api_data = volume.config_map.is_some()
                || volume.secret.is_some()
                || volume.projected.is_some()
                || volume.downward_api.is_some();
            let host_path = match vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
                None => base,
                Some(sub) => resolve_sub_path(name, &base, sub, !api_data)?,
            };
            mounts.push(Mount {
                container_path: vm.mount_path.clone(),
                host_path,
                readonly: api_data || vm.read_only.unwrap_or(false),
            });
        }
        Ok(mounts)
    }

    /// Removes `<root>/pods/<uid>` and everything in it (symlinks are removed, not followed;
    /// nothing is unmounted). A missing directory is not an error.
    pub fn remove_pod_dir(&self, uid: &str) -> Result<()> {
        match fs::remove_dir_all(self.pod_dir(uid)?) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

fn volume_err(volume: &str, message: impl Into<String>) -> Error {
    Error::Volume {
        volume: volume.to_owned(),
        message: message.into(),
    }
}

fn io_err(volume: &str, what: &str, e: io::Error) -> Error {
    volume_err(volume, format!("cannot {what}: {e}"))
}

fn unsupported_kind(volume: &Volume) -> String {
    let kind = serde_json::to_value(volume)
        .ok()
        .and_then(|v| {
            v.as_object()
                .and_then(|o| o.keys().find(|k| *k != "name").cloned())
        })
        .unwrap_or_else(|| "none".to_owned());
    format!("volume type {kind:?} is not supported by edged")
}

/// One path segment: not empty, not `.`/`..`, no `/` or NUL, bounded.
fn check_segment(s: &str) -> std::result::Result<(), String> {
    if s.is_empty() {
        Err("empty".to_owned())
    } else if s == "." || s == ".." {
        Err(format!("{s:?} is not allowed"))
    } else if s.contains('/') || s.contains('\0') {
        Err("must not contain '/' or NUL".to_owned())
    } else if s.len() > MAX_SEGMENT_LEN {
        Err(format!("longer than {MAX_SEGMENT_LEN} bytes"))
    } else {
        Ok(())
    }
}

/// A relative path inside a volume: no leading `/`, no `..` or `.` segment, no empty segment,
/// no NUL, bounded. `data_path` also refuses a leading `..` (reserved for the writer's own
/// `..data` entries).
fn check_rel_path(path: &str, data_path: bool) -> std::result::Result<(), String> {
    if path.is_empty() {
        return Err("empty path".to_owned());
    }
    if path.len() > MAX_PATH_LEN {
        return Err(format!("path longer than {MAX_PATH_LEN} bytes"));
    }
    if path.starts_with('/') {
        return Err(format!("path {path:?} must be relative"));
    }
    if data_path && path.starts_with("..") {
        return Err(format!("path {path:?} must not start with '..'"));
    }
    for seg in path.split('/') {
        check_segment(seg).map_err(|m| format!("path {path:?}: segment {m}"))?;
    }
    Ok(())
}

/// A ConfigMap/Secret key as Kubernetes validates it (`[-._a-zA-Z0-9]+`, not `.`/`..`).
fn check_key(key: &str) -> std::result::Result<(), String> {
    let ok_chars = key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if key.is_empty() || key.len() > 253 || !ok_chars || key == "." || key == ".." {
        Err(format!("invalid key {key:?}"))
    } else {
        Ok(())
    }
}

fn check_mode(volume: &str, mode: Option<i32>, default: u32) -> Result<u32> {
    match mode {
        None => Ok(default),
        Some(m) if (0..=0o777).contains(&m) => Ok(m as u32),
        Some(m) => Err(volume_err(
            volume,
            format!("file mode {m} is not within 0 and 0777 (511)"),
        )),
    }
}

/// Builds the payload of a ConfigMap or Secret volume from its key/value pairs.
fn project(
    volume: &str,
    what: &str,
    entries: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
) -> Result<Payload> {
    let default_mode = check_mode(volume, default_mode, DEFAULT_MODE)?;
    let size: usize = entries.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_VOLUME_BYTES {
        return Err(volume_err(
            volume,
            format!("{what} is {size} bytes, more than the limit of {MAX_VOLUME_BYTES}"),
        ));
    }
    let mut payload = Payload::new();
    match items {
        Some(items) if !items.is_empty() => {
            for item in items {
                let Some(data) = entries.get(&item.key) else {
                    if optional {
                        continue;
                    }
                    return Err(volume_err(
                        volume,
                        format!("{what} references non-existent key: {}", item.key),
                    ));
                };
                check_rel_path(&item.path, true).map_err(|m| volume_err(volume, m))?;
                let mode = check_mode(volume, item.mode, default_mode)?;
                payload.insert(
                    item.path.clone(),
                    FileData {
                        data: data.clone(),
                        mode,
                    },
                );
            }
        }
        _ => {
            for (key, data) in entries {
                check_key(key).map_err(|m| volume_err(volume, m))?;
                check_rel_path(key, true).map_err(|m| volume_err(volume, m))?;
                payload.insert(
                    key.clone(),
                    FileData {
                        data: data.clone(),
                        mode: default_mode,
                    },
                );
            }
        }
    }
    Ok(payload)
}

/// The key/value pairs of a ConfigMap (`binaryData` too).
fn config_map_entries(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut entries = BTreeMap::new();
    for (k, v) in cm.data.iter().flatten() {
        entries.insert(k.clone(), v.as_bytes().to_vec());
    }
    for (k, v) in cm.binary_data.iter().flatten() {
        entries.insert(k.clone(), v.0.clone());
    }
    entries
}

/// The key/value pairs of a Secret.
fn secret_entries(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut entries = BTreeMap::new();
    for (k, v) in secret.data.iter().flatten() {
        entries.insert(k.clone(), v.0.clone());
    }
    // As the API server does: stringData wins over data.
    for (k, v) in secret.string_data.iter().flatten() {
        entries.insert(k.clone(), v.as_bytes().to_vec());
    }
    entries
}

/// The payload of a ConfigMap or Secret (`what`: `configmap "x"`), `None` when it is not known:
/// an error unless `optional`.
fn object_payload(
    volume: &str,
    what: &str,
    entries: Option<BTreeMap<String, Vec<u8>>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
) -> Result<Payload> {
    match entries {
        Some(entries) => project(volume, what, &entries, items, default_mode, optional),
        None if optional => Ok(Payload::new()),
        None => Err(volume_err(volume, format!("{what} not found"))),
    }
}

/// The message of an error made for `volume` (without the `volume x:` prefix).
fn message_of(e: Error) -> String {
    match e {
        Error::Volume { message, .. } => message,
        other => other.to_string(),
    }
}

/// Several failures of one volume as one error, as the kubelet's `utilerrors.NewAggregate`
/// writes them: the message alone for one, `[a, b]` for more.
fn aggregate(volume: &str, errors: Vec<String>) -> Result<()> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(volume_err(volume, errors.concat())),
        _ => Err(volume_err(volume, format!("[{}]", errors.join(", ")))),
    }
}

/// Adds `part` to `payload`; a path already there is refused.
fn merge(payload: &mut Payload, part: Payload) -> std::result::Result<(), String> {
    for (path, file) in part {
        match payload.entry(path) {
            Entry::Occupied(e) => {
                return Err(format!("conflicting duplicate paths: {:?}", e.key()));
            }
            Entry::Vacant(e) => {
                e.insert(file);
            }
        }
    }
    Ok(())
}

/// [`MAX_PROJECTED_BYTES`] over the whole payload.
fn check_total(volume: &str, payload: &Payload) -> Result<()> {
    let size: usize = payload.iter().map(|(k, f)| k.len() + f.data.len()).sum();
    if size > MAX_PROJECTED_BYTES {
        return Err(volume_err(
            volume,
            format!("the volume is {size} bytes, more than the limit of {MAX_PROJECTED_BYTES}"),
        ));
    }
    Ok(())
}

/// The payload of a projected volume: every source, merged; all failing sources reported
/// together and nothing written then, as in the kubelet.
fn projected_payload(
    pod: &Pod,
    volume: &str,
    src: &ProjectedVolumeSource,
    lookup: &impl ObjectLookup,
) -> Result<Payload> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let default_mode = check_mode(volume, src.default_mode, DEFAULT_MODE)?;
    let sources = src.sources.as_deref().unwrap_or_default();
    // The paths the spec names must be unique, as the API server validates.
    let mut declared = BTreeSet::new();
    for source in sources {
        let items = source
            .config_map
            .iter()
            .flat_map(|s| s.items.iter().flatten().map(|i| &i.path))
            .chain(
                source
                    .secret
                    .iter()
                    .flat_map(|s| s.items.iter().flatten().map(|i| &i.path)),
            )
            .chain(
                source
                    .downward_api
                    .iter()
                    .flat_map(|s| s.items.iter().flatten().map(|i| &i.path)),
            )
            .chain(source.service_account_token.iter().map(|t| &t.path));
        for path in items {
            if !declared.insert(path.as_str()) {
                return Err(volume_err(
                    volume,
                    format!("conflicting duplicate paths: {path:?}"),
                ));
            }
        }
    }
    let mut payload = Payload::new();
    let mut errors = Vec::new();
    for (index, source) in sources.iter().enumerate() {
        let part = if let Some(cm) = &source.config_map {
            let entries = lookup
                .config_map(namespace, &cm.name)
                .map(|o| config_map_entries(&o));
            object_payload(
                volume,
                &format!("configmap {:?}", cm.name),
                entries,
                cm.items.as_deref(),
                src.default_mode,
                cm.optional.unwrap_or(false),
            )
        } else if let Some(secret) = &source.secret {
            let entries = lookup
                .secret(namespace, &secret.name)
                .map(|o| secret_entries(&o));
            object_payload(
                volume,
                &format!("secret {:?}", secret.name),
                entries,
                secret.items.as_deref(),
                src.default_mode,
                secret.optional.unwrap_or(false),
            )
        } else if let Some(downward) = &source.downward_api {
            let items = downward.items.as_deref().unwrap_or_default();
            Ok(downward_payload(
                pod,
                volume,
                items,
                default_mode,
                lookup,
                &mut errors,
            ))
        } else if let Some(token) = &source.service_account_token {
            token_payload(pod, volume, token, default_mode, lookup)
        } else if source.cluster_trust_bundle.is_some() {
            Err(volume_err(
                volume,
                r#"projected source "clusterTrustBundle" is not supported by edged"#,
            ))
        } else {
            Err(volume_err(
                volume,
                format!("projected source {index} has no type edged supports"),
            ))
        };
        match part {
            Ok(part) => {
                if let Err(m) = merge(&mut payload, part) {
                    errors.push(m);
                }
            }
            Err(e) => errors.push(message_of(e)),
        }
    }
    aggregate(volume, errors)?;
    check_total(volume, &payload)?;
    Ok(payload)
}

/// The payload of a downwardAPI volume: every failing item reported together.
fn downward_volume_payload(
    pod: &Pod,
    volume: &str,
    items: &[DownwardAPIVolumeFile],
    default_mode: u32,
    lookup: &impl ObjectLookup,
) -> Result<Payload> {
    let mut errors = Vec::new();
    let payload = downward_payload(pod, volume, items, default_mode, lookup, &mut errors);
    aggregate(volume, errors)?;
    check_total(volume, &payload)?;
    Ok(payload)
}

/// The files of downwardAPI `items` (a volume or a projected source); failing items are added
/// to `errors` and left out.
fn downward_payload(
    pod: &Pod,
    volume: &str,
    items: &[DownwardAPIVolumeFile],
    default_mode: u32,
    lookup: &impl ObjectLookup,
    errors: &mut Vec<String>,
) -> Payload {
    let mut payload = Payload::new();
    let mut allocatable = None;
    for item in items {
        let file = (|| -> std::result::Result<FileData, String> {
            check_rel_path(&item.path, true)?;
            let mode = check_mode(volume, item.mode, default_mode).map_err(message_of)?;
            let value = match (&item.field_ref, &item.resource_field_ref) {
                (Some(field), None) => pod_metadata_field(pod, &field.field_path)?,
                (None, Some(resource)) => {
                    let allocatable = allocatable.get_or_insert_with(|| lookup.node_allocatable());
                    resource_field_value(pod, None, resource, allocatable.as_ref())?
                }
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "item {:?}: fieldRef and resourceFieldRef can not be specified together",
                        item.path
                    ));
                }
                (None, None) => {
                    return Err(format!(
                        "item {:?}: one of fieldRef and resourceFieldRef is required",
                        item.path
                    ));
                }
            };
            Ok(FileData {
                data: value.into_bytes(),
                mode,
            })
        })();
        match file {
            Ok(file) => {
                let part = Payload::from([(item.path.clone(), file)]);
                if let Err(m) = merge(&mut payload, part) {
                    errors.push(m);
                }
            }
            Err(m) => errors.push(m),
        }
    }
    payload
}

/// The file of a `serviceAccountToken` source: the token [`ObjectLookup`] has for it, exactly.
fn token_payload(
    pod: &Pod,
    volume: &str,
    projection: &ServiceAccountTokenProjection,
    mode: u32,
    lookup: &impl ObjectLookup,
) -> Result<Payload> {
    check_rel_path(&projection.path, true).map_err(|m| volume_err(volume, m))?;
    let source = TokenSource::new(pod, projection);
    if source.expiration_seconds < MIN_TOKEN_EXPIRATION_SECONDS {
        return Err(volume_err(
            volume,
            "expirationSeconds: may not specify a duration less than 10 minutes",
        ));
    }
    if source.expiration_seconds > MAX_TOKEN_EXPIRATION_SECONDS {
        return Err(volume_err(
            volume,
            "expirationSeconds: may not specify a duration larger than 2^32 seconds",
        ));
    }
    let token = lookup
        .service_account_token(pod, &source)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            volume_err(
                volume,
                format!(
                    "service account token for {:?} is not available yet",
                    source.service_account
                ),
            )
        })?;
    if token.len() > MAX_VOLUME_BYTES {
        return Err(volume_err(
            volume,
            format!(
                "the service account token is {} bytes, more than the limit of {MAX_VOLUME_BYTES}",
                token.len()
            ),
        ));
    }
    Ok(Payload::from([(
        source.path,
        FileData {
            data: token.into_bytes(),
            mode,
        },
    )]))
}

/// The `hostPath` checks that need no file system.
fn check_host_path_syntax(volume: &str, path: &str) -> Result<()> {
    if !path.starts_with('/') || path.contains('\0') {
        return Err(volume_err(
            volume,
            format!("hostPath {path:?} must be an absolute path"),
        ));
    }
    if path.split('/').any(|seg| seg == "..") {
        return Err(volume_err(
            volume,
            format!("hostPath {path:?} must not contain '..'"),
        ));
    }
    Ok(())
}

/// The `hostPath` `type` checks, creating the directory or file for the `...OrCreate` types.
fn check_host_path(volume: &str, src: &HostPathVolumeSource) -> Result<()> {
    check_host_path_syntax(volume, &src.path)?;
    let path = Path::new(&src.path);
    let ty = src.type_.as_deref().unwrap_or_default();
    let meta = fs::metadata(path);
    let wrong = |want: &str| {
        volume_err(
            volume,
            format!("hostPath type check failed: {} is not a {want}", src.path),
        )
    };
    match ty {
        "" => Ok(()),
        "DirectoryOrCreate" => match meta {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(wrong("directory")),
            Err(_) => {
                fs::create_dir_all(path).map_err(|e| io_err(volume, "create the hostPath", e))?;
                fs::set_permissions(path, fs::Permissions::from_mode(0o755))
                    .map_err(|e| io_err(volume, "chmod the hostPath", e))
            }
        },
        "FileOrCreate" => match meta {
            Ok(m) if m.is_file() => Ok(()),
            Ok(_) => Err(wrong("file")),
            Err(_) => {
                fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(path)
                    .map_err(|e| io_err(volume, "create the hostPath file", e))?;
                fs::set_permissions(path, fs::Permissions::from_mode(0o644))
                    .map_err(|e| io_err(volume, "chmod the hostPath file", e))
            }
        },
        "Directory" | "File" | "Socket" | "CharDevice" | "BlockDevice" => {
            let (want, ok): (&str, fn(&fs::Metadata) -> bool) = match ty {
                "Directory" => ("directory", |m| m.is_dir()),
                "File" => ("file", |m| m.is_file()),
                "Socket" => ("socket", |m| m.file_type().is_socket()),
                "CharDevice" => ("character device", |m| m.file_type().is_char_device()),
                _ => ("block device", |m| m.file_type().is_block_device()),
            };
            match meta {
                Ok(m) if ok(&m) => Ok(()),
                Ok(_) => Err(wrong(want)),
                Err(_) => Err(volume_err(
                    volume,
                    format!("hostPath type check failed: {} does not exist", src.path),
                )),
            }
        }
        other => Err(volume_err(
            volume,
            format!("unknown hostPath type {other:?}"),
        )),
    }
}

/// Resolves `sub` inside `base` without leaving it: symlinks met on the way must point inside
/// `base`. Missing parts are created as directories when `create` is set.
fn resolve_sub_path(volume: &str, base: &Path, sub: &str, create: bool) -> Result<PathBuf> {
    check_rel_path(sub, false).map_err(|m| volume_err(volume, format!("subPath: {m}")))?;
    let root = fs::canonicalize(base).map_err(|e| io_err(volume, "resolve the volume", e))?;
    let escape = || volume_err(volume, format!("subPath {sub:?} points outside the volume"));
    let mut cur = root.clone();
    for seg in sub.split('/') {
        let next = cur.join(seg);
        match fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() => {
                let resolved = fs::canonicalize(&next).map_err(|_| escape())?;
                if !resolved.starts_with(&root) {
                    return Err(escape());
                }
                cur = resolved;
            }
            Ok(_) => cur = next,
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::create_dir(&next).map_err(|e| io_err(volume, "create the subPath", e))?;
                cur = next;
            }
            Err(_) => {
                return Err(volume_err(
                    volume,
                    format!("subPath {sub:?} does not exist in the volume"),
                ));
            }
        }
    }
    if !cur.starts_with(&root) {
        return Err(escape());
    }
    Ok(cur)
}

/// Reads the payload currently behind `dir/..data`, if it equals `payload`.
fn current_matches(dir: &Path, payload: &Payload) -> bool {
    let data = dir.join(DATA_LINK);
    if fs::read_link(&data).is_err() {
        return false;
    }
    let mut found = 0usize;
    if count_files(&data, &mut found).is_err() || found != payload.len() {
        return false;
    }
    payload.iter().all(|(path, want)| {
        let p = data.join(path);
        match (fs::symlink_metadata(&p), fs::read(&p)) {
            (Ok(m), Ok(bytes)) => {
                m.is_file() && m.permissions().mode() & 0o7777 == want.mode && bytes == want.data
            }
            _ => false,
        }
    })
}

fn count_files(dir: &Path, found: &mut usize) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        if ty.is_dir() {
            count_files(&entry.path(), found)?;
        } else {
            *found += 1;
        }
    }
    Ok(())
}

/// A new, unused name for a data directory: `..YYYY_MM_DD_HH_MM_SS.<nanos>.<n>`.
fn data_dir_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let stamp = i64::try_from(now.as_secs())
        .ok()
        .and_then(|s| k8s_openapi::jiff::Timestamp::from_second(s).ok())
        .map(|t| t.strftime("%Y_%m_%d_%H_%M_%S").to_string())
        .unwrap_or_else(|| now.as_secs().to_string());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("..{stamp}.{:09}.{n}", now.subsec_nanos())
}

/// Writes `payload` into `dir` atomically (see the module docs). Does nothing when the content
/// and modes already match.
fn write_atomic(volume: &str, dir: &Path, payload: &Payload) -> Result<()> {
    for path in payload.keys() {
        check_rel_path(path, true).map_err(|m| volume_err(volume, m))?;
        // `a` and `a/b` cannot both be files.
        for (at, _) in path.match_indices('/') {
            if payload.contains_key(&path[..at]) {
                return Err(volume_err(
                    volume,
                    format!("path {:?} is both a file and a directory", &path[..at]),
                ));
            }
        }
    }
    fs::create_dir_all(dir).map_err(|e| io_err(volume, "create the volume directory", e))?;
    if current_matches(dir, payload) {
        return Ok(());
    }
    let old_target = fs::read_link(dir.join(DATA_LINK)).ok();

    // 1. The new content, in a directory nobody looks at yet.
    let ts_name = data_dir_name();
    let ts_dir = dir.join(&ts_name);
    fs::create_dir(&ts_dir).map_err(|e| io_err(volume, "create the data directory", e))?;
    fs::set_permissions(&ts_dir, fs::Permissions::from_mode(0o755))
        .map_err(|e| io_err(volume, "chmod the data directory", e))?;
    let written = (|| -> io::Result<()> {
        for (path, file) in payload {
            let target = ts_dir.join(path);
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent)?;
            }
            let mut f = fs::File::create(&target)?;
            f.write_all(&file.data)?;
            f.sync_all()?;
            fs::set_permissions(&target, fs::Permissions::from_mode(file.mode))?;
        }
        Ok(())
    })();
    if let Err(e) = written {
        let _ = fs::remove_dir_all(&ts_dir);
        return Err(io_err(volume, "write the volume content", e));
    }

    // 2. Switch `..data` with one rename.
    let tmp_link = dir.join(DATA_TMP_LINK);
    let _ = fs::remove_file(&tmp_link);
    symlink(&ts_name, &tmp_link).map_err(|e| io_err(volume, "create ..data_tmp", e))?;
    fs::rename(&tmp_link, dir.join(DATA_LINK)).map_err(|e| io_err(volume, "switch ..data", e))?;

    // 3. User-visible names: one symlink per top-level entry, into `..data`.
    let tops: BTreeSet<&str> = payload.keys().filter_map(|p| p.split('/').next()).collect();
    for top in &tops {
        let link = dir.join(top);
        match fs::symlink_metadata(&link) {
            Ok(m) if m.file_type().is_symlink() => {}
            Ok(m) => {
                let removed = if m.is_dir() {
                    fs::remove_dir_all(&link)
                } else {
                    fs::remove_file(&link)
                };
                removed.map_err(|e| io_err(volume, "replace a stale entry", e))?;
                symlink(Path::new(DATA_LINK).join(top), &link)
                    .map_err(|e| io_err(volume, "link a file", e))?;
            }
            Err(_) => symlink(Path::new(DATA_LINK).join(top), &link)
                .map_err(|e| io_err(volume, "link a file", e))?,
        }
    }

    // 4. Clean up: names that are gone, the old data directory, leftovers of a crash.
    let entries = fs::read_dir(dir).map_err(|e| io_err(volume, "list the volume", e))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
        if name.starts_with("..") {
            let ours = name == DATA_LINK || name == ts_name.as_str();
            if !ours && !is_link {
                let _ = fs::remove_dir_all(entry.path());
            }
        } else if is_link && !tops.contains(name.as_ref()) {
            let _ = fs::remove_file(entry.path());
        }
    }
    if let Some(old) = old_target.filter(|o| o.as_os_str() != ts_name.as_str()) {
        // Usually already gone with the leftovers above; this is for a relative target path
        // that the loop did not recognise.
        if old.components().count() == 1 {
            let _ = fs::remove_dir_all(dir.join(old));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::{
        ConfigMapVolumeSource, EmptyDirVolumeSource, PodSpec, SecretVolumeSource, VolumeMount,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::cell::RefCell;

    struct Store {
        cms: RefCell<BTreeMap<String, ConfigMap>>,
        secrets: RefCell<BTreeMap<String, Secret>>,
        /// Tokens by service account.
        tokens: RefCell<BTreeMap<String, String>>,
        /// The token sources asked for.
        asked: RefCell<Vec<TokenSource>>,
        allocatable: RefCell<Option<BTreeMap<String, Quantity>>>,
    }

    impl Store {
        fn new() -> Self {
            Self {
                cms: RefCell::new(BTreeMap::new()),
                secrets: RefCell::new(BTreeMap::new()),
                tokens: RefCell::new(BTreeMap::new()),
                asked: RefCell::new(Vec::new()),
                allocatable: RefCell::new(None),
            }
        }
        fn put_token(&self, service_account: &str, token: &str) {
            self.tokens
                .borrow_mut()
                .insert(service_account.into(), token.into());
        }
        fn put_cm(&self, name: &str, data: &[(&str, &str)]) {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some("default".into()),
                    ..Default::default()
                },
                data: Some(
                    data.iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..Default::default()
            };
            self.cms.borrow_mut().insert(format!("default/{name}"), cm);
        }
    }

    impl ObjectLookup for Store {
        fn config_map(&self, namespace: &str, name: &str) -> Option<ConfigMap> {
            self.cms
                .borrow()
                .get(&format!("{namespace}/{name}"))
                .cloned()
        }
        fn secret(&self, namespace: &str, name: &str) -> Option<Secret> {
            self.secrets
                .borrow()
                .get(&format!("{namespace}/{name}"))
                .cloned()
        }
        fn service_account_token(&self, _pod: &Pod, source: &TokenSource) -> Option<String> {
            self.asked.borrow_mut().push(source.clone());
            self.tokens.borrow().get(&source.service_account).cloned()
        }
        fn node_allocatable(&self) -> Option<BTreeMap<String, Quantity>> {
            self.allocatable.borrow().clone()
        }
    }

    fn pod(volumes: Vec<Volume>, mounts: Vec<VolumeMount>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("default".into()),
                uid: Some("uid-1".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                volumes: Some(volumes),
                containers: vec![Container {
                    name: "c".into(),
                    volume_mounts: Some(mounts),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn cm_volume(name: &str, cm: &str) -> Volume {
        Volume {
            name: name.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: cm.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn mount(name: &str, path: &str) -> VolumeMount {
        VolumeMount {
            name: name.into(),
            mount_path: path.into(),
            ..Default::default()
        }
    }

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    }

    fn message(e: Error) -> String {
        match e {
            Error::Volume { message, .. } => message,
            other => panic!("not a volume error: {other}"),
        }
    }

    #[test]
    fn configmap_is_written_as_symlinks_into_data_and_updates_replace_content() {
        let tmp = tempfile::tempdir().unwrap();
        let vm = VolumeManager::new(tmp.path());
        let store = Store::new();
        store.put_cm("cm", &[("a.txt", "one"), ("b", "two")]);
        let p = pod(vec![cm_volume("cfg", "cm")], vec![mount("cfg", "/etc/cfg")]);
        vm.setup_pod_volumes(&p, &store).unwrap();
        let dir = tmp
            .path()
            .join("pods/uid-1/volumes/kubernetes.io~configmap/cfg");
        assert_eq!(fs::read_to_string(dir.join("a.txt")).unwrap(), "one");
        assert_eq!(
            fs::read_link(dir.join("a.txt")).unwrap(),
            Path::new("..data/a.txt")
        );
        let data_target = fs::read_link(dir.join("..data")).unwrap();
        assert!(data_target.to_string_lossy().starts_with(".."));
        assert_eq!(mode_of(&dir.join("b")), 0o644);

        // Same content: nothing rewritten.
        vm.setup_pod_volumes(&p, &store).unwrap();
        assert_eq!(fs::read_link(dir.join("..data")).unwrap(), data_target);

        // Update: a changes, b goes away, c appears; the old data directory is gone.
        store.put_cm("cm", &[("a.txt", "uno"), ("c", "tres")]);
        vm.setup_pod_volumes(&p, &store).unwrap();
        assert_eq!(fs::read_to_string(dir.join("a.txt")).unwrap(), "uno");
        assert_eq!(fs::read_to_string(dir.join("c")).unwrap(), "tres");
        assert!(fs::symlink_metadata(dir.join("b")).is_err());
        assert!(!dir.join(&data_target).exists());
        let hidden: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".."))
            .collect();
        assert_eq!(hidden.len(), 2, "{hidden:?}"); // ..data and one data directory

        let mounts = vm.container_mounts(&p, &p.spec.as_ref().unwrap().containers[0]);
        assert_eq!(
            mounts.unwrap(),
            vec![Mount {
                container_path: "/etc/cfg".into(),
                host_path: dir,
                readonly: true
            }]
        );
    }

    #[test]
    fn items_modes_and_nested_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let vm = VolumeManager::new(tmp.path());
        let store = Store::new();
        store.put_cm("cm", &[("key", "v"), ("other", "o")]);
        let mut vol = cm_volume("cfg", "cm");
        let src = vol.config_map.as_mut().unwrap();
        src.default_mode = Some(0o600);
        src.items = Some(vec![
            KeyToPath {
                key: "key".into(),
                path: "sub/dir/file.conf".into(),
                mode: Some(0o400),
            },
            KeyToPath {
                key: "other".into(),
                path: "plain".into(),
                mode: None,
            },
        ]);
        let p = pod(vec![vol], vec![]);
        vm.setup_pod_volumes(&p, &store).unwrap();
        let dir = tmp
            .path()
            .join("pods/uid-1/volumes/kubernetes.io~configmap/cfg");
        assert_eq!(
            fs::read_to_string(dir.join("sub/dir/file.conf")).unwrap(),
            "v"
        );
        assert_eq!(mode_of(&dir.join("sub/dir/file.conf")), 0o400);
        assert_eq!(mode_of(&dir.join("plain")), 0o600);
        assert!(fs::symlink_metadata(dir.join("key")).is_err());
    }

    #[test]
    fn missing_objects_and_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let vm = VolumeManager::new(tmp.path());
        let store = Store::new();
        let p = pod(vec![cm_volume("cfg", "x")], vec![]);
        let err = vm.setup_pod_volumes(&p, &store).unwrap_err();
        assert_eq!(err.to_string(), r#"volume cfg: configmap "x" not found"#);

        let mut vol = cm_volume("cfg", "x");
        vol.config_map.as_mut().unwrap().optional = Some(true);
        let p = pod(vec![vol], vec![]);
        vm.setup_pod_volumes(&p, &store).unwrap();
        let dir = tmp
            .path()
            .join("pods/uid-1/volumes/kubernetes.io~configmap/cfg");
        assert!(dir.join("..data").is_dir());

        let secret_vol = Volume {
            name: "s".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some("nope".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = vm
            .setup_pod_volumes(&pod(vec![secret_vol], vec![]), &store)
            .unwrap_err();
        assert_eq!(message(err), r#"secret "nope" not found"#);

        store.put_cm("cm", &[("a", "1")]);
        let mut vol = cm_volume("cfg", "cm");
        vol.config_map.as_mut().unwrap().items = Some(vec![KeyToPath {
            key: "missing".into(),
            path: "m".into(),
            mode: None,
        }]);
        let err = vm
            .setup_pod_volumes(&pod(vec![vol], vec![]), &store)
            .unwrap_err();
        assert!(message(err).contains("non-existent key: missing"));
    }

    #[test]
    fn secret_bytes_and_string_data() {
        let tmp = tempfile::tempdir().unwrap();
        let vm = VolumeManager::new(tmp.path());
        let store = Store::new();
        let secret = Secret {
            data: Some(BTreeMap::from([
                ("password".to_owned(), ByteString(b"s3cr3t".to_vec())),
                ("bin".to_owned(), ByteString(vec![0, 159, 255])),
            ])),
            string_data: Some(BTreeMap::from([("extra".to_owned(), "x".to_owned())])),
            ..Default::default()
        };
        store
            .secrets
            .borrow_mut()
            .insert("default/sec".into(), secret);
        let vol = Volume {
            name: "s".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some("sec".into()),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        };
        vm.setup_pod_volumes(&pod(vec![vol], vec![]), &store)
            .unwrap();
        let dir = tmp.path().join("pods/uid-1/volumes/kubernetes.io~secret/s");
        assert_eq!(fs::read(dir.join("password")).unwrap(), b"s3cr3t");
        assert_eq!(fs::read(dir.join("bin")).unwrap(), vec![0, 159, 255]);
        assert_eq!(fs::read(dir.join("extra")).unwrap(), b"x");
        assert_eq!(mode_of(&dir.join("password")), 0o440);
    }

    #[test]
    fn hostile_keys_paths_modes_and_sizes_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let vm = VolumeManager::new(tmp.path());
        let store = Store::new();
        for key in ["../escape", "a/b", "..data", "", "nul\0"] {
            store.put_cm("cm", &[(key, "x")]);
            let err = vm
                .setup_pod_volumes(&pod(vec![cm_volume("cfg", "cm")], vec![]), &store)
                .unwrap_err();
            assert!(matches!(err, Error::Volume { .. }), "{key:?}: {err}");
        }
        store.put_cm("cm", &[("k", "x")]);
        for path in [
            "../../etc/passwd",
            "/etc/passwd",
            "a/../../b",
            "..x",
            "a//b",
            "a\0b",
        ] {
            let mut vol = cm_volume("cfg", "cm");
            vol.config_map.as_mut().unwrap().items = Some(vec![KeyToPath {
                key: "k".into(),
                path: path.into(),
                mode: None,
            }]);
            let err = vm.setup_pod_volumes(&pod(vec![vol], vec![]), &store);
            assert!(matches!(err, Err(Error::Volume { .. })), "{path:?}");
        }
        assert!(!tmp.path().join("etc").exists());
        assert!(!tmp.path().join("pods/uid-1/b").exists());

        let mut vol = cm_volume("cfg", "cm");
        vol.config_map.as_mut().unwrap().default_mode = Some(0o1777);
        let err = vm.setup_pod_volumes(&pod(vec![vol], vec![]), &store);
        assert!(message(err.unwrap_err()).contains("file mode"));

        let big = "x".repeat(MAX_VOLUME_BYTES);
        store.put_cm("cm", &[("k", &big)]);
        let err = vm.setup_pod_volumes(&pod(vec![cm_volume("cfg", "cm")], vec![]), &store);
        assert!(message(err.unwrap_err()).contains("more than the limit"));

        let mut p = pod(vec![cm_volume("cfg", "cm")], vec![]);
        p.metadata.uid = Some("../../x".into());
        assert!(vm.setup_pod_volumes(&p, &store).is_err());
        assert!(vm.remove_pod_dir("..").is_err());
        assert!(vm.remove_pod_dir("a/b").is_err());
    }

    #[test]
    fn empty_dir_and_sub_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let vm = VolumeManager::new(tmp.path());
        let store = Store::new();
        let vol = Volume {
            name: "scratch".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut m = mount("scratch", "/data");
        m.sub_path = Some("logs/app".into());
        m.read_only = Some(true);
        let p = pod(vec![vol], vec![m, mount("scratch", "/all")]);
        vm.setup_pod_volumes(&p, &store).unwrap();
        let dir = tmp
            .path()
            .join("pods/uid-1/volumes/kubernetes.io~empty-dir/scratch");
        assert_eq!(mode_of(&dir), 0o777);
        let container = &p.spec.as_ref().unwrap().containers[0];
        let mounts = vm.container_mounts(&p, container).unwrap();
        let real = fs::canonicalize(&dir).unwrap();
        assert_eq!(mounts[0].host_path, real.join("logs/app"));
        assert!(mounts[0].readonly);
        assert!(dir.join("logs/app").is_dir());
        assert_eq!(mounts[1].host_path, dir);
        assert!(!mounts[1].readonly);

        // A symlink planted in the volume that points outside is refused as a subPath.
        symlink("/etc", dir.join("evil")).unwrap();
        for sub in ["evil", "evil/passwd", "../x", "/etc"] {
            let mut m = mount("scratch", "/x");
            m.sub_path = Some(sub.into());
            let p2 = pod(p.spec.as_ref().unwrap().volumes.clone().unwrap(), vec![m]);
            let err = vm
                .container_mounts(&p2, &p2.spec.as_ref().unwrap().containers[0])
                .unwrap_err();
            assert!(matches!(err, Error::Volume { .. }), "{sub}: {err}");
        }

        // A mount of a volume the pod lacks; subPathExpr.
        let p3 = pod(vec![], vec![mount("ghost", "/g")]);
        assert!(
            vm.container_mounts(&p3, &p3.spec.as_ref().unwrap().containers[0])
                .is_err()
        );

        vm.remove_pod_dir("uid-1").unwrap();
        assert!(!tmp.path().join("pods/uid-1").exists());
        vm.remove_pod_dir("uid-1").unwrap();
    }

    #[test]
    fn configmap_sub_path_resolves_to_the_current_file() {
        let tmp = tempfile::tempdir().unwrap();
        let vm = VolumeManager::new(tmp.path());
        let store = Store::new();
        store.put_cm("cm", &[("app.conf", "x=1")]);
        let mut m = mount("cfg", "/etc/app.conf");
        m.sub_path = Some("app.conf".into());
        let mut missing = mount("cfg", "/etc/none");
        missing.sub_path = Some("none".into());
        let p = pod(vec![cm_volume("cfg", "cm")], vec![m]);
        vm.setup_pod_volumes(&p, &store).unwrap();
        let mounts = vm
            .container_mounts(&p, &p.spec.as_ref().unwrap().containers[0])
            .unwrap();
        assert_eq!(fs::read_to_string(&mounts[0].host_path).unwrap(), "x=1");
        assert!(
            !fs::symlink_metadata(&mounts[0].host_path)
                .unwrap()
                .is_symlink()
        );
        assert!(mounts[0].readonly);
        let p2 = pod(vec![cm_volume("cfg", "cm")], vec![missing]);
        let err = vm
            .container_mounts(&p2, &p2.spec.as_ref().unwrap().containers[0])
            .unwrap_err();
        assert!(message(err).contains("does not exist"));
    }

    #[test]
    fn host_path_types() {
        let tmp = tempfile::tempdir().unwrap();
        let vm = VolumeManager::new(tmp.path().join("root"));
        let store = Store::new();
        let hp = |name: &str, path: &Path, ty: &str| Volume {
            name: name.into(),
            host_path: Some(HostPathVolumeSource {
                path: path.to_string_lossy().into_owned(),
                type_: Some(ty.into()),
            }),
            ..Default::default()
        };
        let newdir = tmp.path().join("made");
        let newfile = tmp.path().join("made.txt");
        let ok = [
            hp("a", tmp.path(), "Directory"),
            hp("b", &newdir, "DirectoryOrCreate"),
            hp("c", &newfile, "FileOrCreate"),
            hp("d", &tmp.path().join("anything"), ""),
        ];
        vm.setup_pod_volumes(&pod(ok.to_vec(), vec![]), &store)
            .unwrap();
        assert!(newdir.is_dir());
        assert!(newfile.is_file());
        fs::write(&newfile, "keep").unwrap();
        vm.setup_pod_volumes(&pod(ok.to_vec(), vec![]), &store)
            .unwrap();
        assert_eq!(fs::read_to_string(&newfile).unwrap(), "keep");

        let sock_path = tmp.path().join("s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
        vm.setup_pod_volumes(&pod(vec![hp("s", &sock_path, "Socket")], vec![]), &store)
            .unwrap();

        let bad = [
            hp("e", tmp.path(), "File"),
            hp("f", &newfile, "Directory"),
            hp("g", &tmp.path().join("missing"), "Directory"),
            hp("h", &newfile, "Socket"),
            hp("i", Path::new("relative/path"), ""),
            hp("j", Path::new("/tmp/../etc"), ""),
            hp("k", tmp.path(), "Weird"),
        ];
        for v in bad {
            let name = v.name.clone();
            let err = vm.setup_pod_volumes(&pod(vec![v], vec![]), &store);
            assert!(matches!(err, Err(Error::Volume { .. })), "{name}");
        }

        let mut m = mount("a", "/host");
        m.read_only = Some(true);
        let p = pod(vec![hp("a", tmp.path(), "Directory")], vec![m]);
        let mounts = vm
            .container_mounts(&p, &p.spec.as_ref().unwrap().containers[0])
            .unwrap();
        assert_eq!(mounts[0].host_path, tmp.path());
        assert!(mounts[0].readonly);
    }

    #[test]
    fn unsupported_volume_types_say_which() {
        let tmp = tempfile::tempdir().unwrap();
        let vm = VolumeManager::new(tmp.path());
        let vol = Volume {
            name: "pvc".into(),
            persistent_volume_claim: Some(Default::default()),
            ..Default::default()
        };
        let err = vm
            .setup_pod_volumes(&pod(vec![vol], vec![]), &Store::new())
            .unwrap_err();
        assert!(message(err).contains("persistentVolumeClaim"));
    }

    #[test]
    fn lookup_fns_adapts_closures() {
        let lookup = LookupFns {
            config_map: |ns: &str, name: &str| {
                (ns == "default" && name == "cm").then(ConfigMap::default)
            },
            secret: |_: &str, _: &str| None,
        };
        assert!(lookup.config_map("default", "cm").is_some());
        assert!(lookup.secret("default", "s").is_none());
    }

    fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    /// The volume every pod gets from ServiceAccount admission (OpenShift-flavoured).
    fn kube_api_access() -> Volume {
        from_json(
            serde_json::json!({"name":"kube-api-access-x8p99","projected":{"defaultMode":420,"sources":[
            {"serviceAccountToken":{"expirationSeconds":3607,"path":"token"}},
            {"configMap":{"items":[{"key":"ca.crt","path":"ca.crt"}],"name":"kube-root-ca.crt"}},
            {"downwardAPI":{"items":[{"fieldRef":{"apiVersion":"v1","fieldPath":"metadata.namespace"},"path":"namespace"}]}},
            {"configMap":{"items":[{"key":"service-ca.crt","path":"service-ca.crt"}],"name":"openshift-service-ca.crt"}}]}}),
        )
    }

    fn projected(sources: serde_json::Value) -> Volume {
        from_json(serde_json::json!({"name": "proj", "projected": {"sources": sources}}))
    }

    fn data_dirs(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("..") && n != DATA_LINK)
            .collect();
        names.sort();
        names
    }

    #[test]
    fn kube_api_access_volume_end_to_end() {
        let tmp = tempfile::tempdir().unwrap();
        let vm = VolumeManager::new(tmp.path());
        let store = Store::new();
        store.put_cm("kube-root-ca.crt", &[("ca.crt", "ROOT CA"), ("other", "x")]);
        store.put_cm(
            "openshift-service-ca.crt",
            &[("service-ca.crt", "SERVICE CA")],
        );
        let mut m = mount(
            "kube-api-access-x8p99",
            "/var/run/secrets/kubernetes.io/serviceaccount",
        );
        m.read_only = Some(false);
        let p = pod(vec![kube_api_access()], vec![m]);

        // No token yet: a clear error, nothing written.
        let err = vm.setup_pod_volumes(&p, &store).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"volume kube-api-access-x8p99: service account token for "default" is not available yet"#
        );
        let dir = tmp
            .path()
            .join("pods/uid-1/volumes/kubernetes.io~projected/kube-api-access-x8p99");
        assert!(fs::symlink_metadata(dir.join(DATA_LINK)).is_err());
        assert_eq!(
            store.asked.borrow()[0],
            TokenSource {
                service_account: "default".into(),
                audience: None,
                expiration_seconds: 3607,
                path: "token".into(),
            }
        );

        store.put_token("default", "eyJhbGciOi.first");
        vm.setup_pod_volumes(&p, &store).unwrap();
        let read = |name: &str| fs::read_to_string(dir.join(name)).unwrap();
        assert_eq!(read("token"), "eyJhbGciOi.first");
        assert_eq!(read("ca.crt"), "ROOT CA");
        assert_eq!(read("namespace"), "default");
        assert_eq!(read("service-ca.crt"), "SERVICE CA");
        assert!(fs::symlink_metadata(dir.join("other")).is_err());
        for name in ["token", "ca.crt", "namespace", "service-ca.crt"] {
            assert_eq!(mode_of(&dir.join(name)), 0o644, "{name}");
            assert_eq!(
                fs::read_link(dir.join(name)).unwrap(),
                Path::new("..data").join(name)
            );
        }
        let first = fs::read_link(dir.join(DATA_LINK)).unwrap();
        assert_eq!(data_dirs(&dir), vec![first.to_string_lossy().into_owned()]);

        // Read-only whatever the mount says; a subPath resolves to the real file.
        let mut sub = mount("kube-api-access-x8p99", "/token");
        sub.sub_path = Some("token".into());
        let p2 = pod(vec![kube_api_access()], vec![sub]);
        let mounts = vm
            .container_mounts(&p, &p.spec.as_ref().unwrap().containers[0])
            .unwrap();
        assert_eq!(mounts[0].host_path, dir);
        assert!(mounts[0].readonly);
        let mounts = vm
            .container_mounts(&p2, &p2.spec.as_ref().unwrap().containers[0])
            .unwrap();
        assert!(mounts[0].readonly);
        assert!(
            mounts[0]
                .host_path
                .starts_with(fs::canonicalize(dir.join(&first)).unwrap())
        );
        assert_eq!(
            fs::read_to_string(&mounts[0].host_path).unwrap(),
            "eyJhbGciOi.first"
        );

        // Nothing changed: nothing rewritten.
        vm.setup_pod_volumes(&p, &store).unwrap();
        assert_eq!(fs::read_link(dir.join(DATA_LINK)).unwrap(), first);

        // A renewed token: a new data directory, switched at once, the old one gone.
        store.put_token("default", "eyJhbGciOi.second");
        vm.setup_pod_volumes(&p, &store).unwrap();
        let second = fs::read_link(dir.join(DATA_LINK)).unwrap();
        assert_ne!(second, first);
        assert_eq!(read("token"), "eyJhbGciOi.second");
        assert_eq!(read("ca.crt"), "ROOT CA");
        assert_eq!(data_dirs(&dir), vec![second.to_string_lossy().into_owned()]);

        // A changed ConfigMap, likewise.
        store.put_cm("kube-root-ca.crt", &[("ca.crt", "NEW ROOT CA")]);
        vm.setup_pod_volumes(&p, &store).unwrap();
        let third = fs::read_link(dir.join(DATA_LINK)).unwrap();
        assert_ne!(third, second);
        assert_eq!(read("ca.crt"), "NEW ROOT CA");
        assert_eq!(read("token"), "eyJhbGciOi.second");
        assert_eq!(data_dirs(&dir), vec![third.to_string_lossy().into_owned()]);
    }

    #[test]
    fn projected_modes_service_account_and_audience() {
        let tmp = tempfile::tempdir().unwrap();
        let vm = VolumeManager::new(tmp.path());
        let store = Store::new();
        store.put_cm("cm", &[("a", "1"), ("b", "2")]);
        store.put_token("builder", "tok");
        let secret: Secret = from_json(serde_json::json!({"data": {"pw": "c2VjcmV0"}}));
        store
            .secrets
            .borrow_mut()
            .insert("default/sec".into(), secret);
        let mut vol = projected(serde_json::json!([
            {"configMap": {"name": "cm", "items": [
                {"key": "a", "path": "dir/a", "mode": 0o400},
                {"key": "b", "path": "b"}]}},
            {"secret": {"name": "sec"}},
            {"serviceAccountToken": {"audience": "vault", "path": "vault-token"}}
        ]));
        vol.projected.as_mut().unwrap().default_mode = Some(0o440);
        let mut p = pod(vec![vol], vec![]);
        p.spec.as_mut().unwrap().service_account_name = Some("builder".into());
        vm.setup_pod_volumes(&p, &store).unwrap();
        let dir = tmp
            .path()
            .join("pods/uid-1/volumes/kubernetes.io~projected/proj");
        assert_eq!(fs::read_to_string(dir.join("dir/a")).unwrap(), "1");
        assert_eq!(mode_of(&dir.join("dir/a")), 0o400);
        assert_eq!(mode_of(&dir.join("b")), 0o440);
        assert_eq!(fs::read_to_string(dir.join("pw")).unwrap(), "secret");
        assert_eq!(mode_of(&dir.join("pw")), 0o440);
        assert_eq!(fs::read_to_string(dir.join("vault-token")).unwrap(), "tok");
        assert_eq!(mode_of(&dir.join("vault-token")), 0o440);
        assert_eq!(
            store.asked.borrow().last().unwrap(),
            &TokenSource {
                service_account: "builder".into(),
                audience: Some("vault".into()),
                expiration_seconds: DEFAULT_TOKEN_EXPIRATION_SECONDS,
                path: "vault-token".into(),
            }
        );

        let short = projected(serde_json::json!([
            {"serviceAccountToken": {"expirationSeconds": 599, "path": "t"}}
        ]));
        let err = vm.setup_pod_volumes(&pod(vec![short], vec![]), &store);
        assert!(message(err.unwrap_err()).contains("less than 10 minutes"));
    }

    #[test]
    fn projected_optional_and_missing_sources() {
        let tmp = tempfile::tempdir().unwrap();
        let vm = VolumeManager::new(tmp.path());
        let store = Store::new();
        store.put_token("default", "tok");
        store.put_cm("kube-root-ca.crt", &[("ca.crt", "CA")]);
        let p = pod(vec![kube_api_access()], vec![]);
        let err = vm.setup_pod_volumes(&p, &store).unwrap_err();
        assert_eq!(
            message(err),
            r#"configmap "openshift-service-ca.crt" not found"#
        );
        let dir = tmp
            .path()
            .join("pods/uid-1/volumes/kubernetes.io~projected/kube-api-access-x8p99");
        assert!(fs::symlink_metadata(dir.join(DATA_LINK)).is_err());

        // Every failing source is reported, as the kubelet aggregates them.
        let store2 = Store::new();
        let err = vm.setup_pod_volumes(&p, &store2).unwrap_err();
        assert_eq!(
            message(err),
            r#"[service account token for "default" is not available yet, configmap "kube-root-ca.crt" not found, configmap "openshift-service-ca.crt" not found]"#
        );

        // Optional sources that are missing are skipped, a missing key of an optional one too.
        let vol = projected(serde_json::json!([
            {"configMap": {"name": "kube-root-ca.crt", "items": [
                {"key": "ca.crt", "path": "ca.crt"},
                {"key": "gone", "path": "gone"}], "optional": true}},
            {"configMap": {"name": "absent", "optional": true}},
            {"secret": {"name": "absent", "optional": true}}
        ]));
        vm.setup_pod_volumes(&pod(vec![vol], vec![]), &store)
            .unwrap();
        let dir = tmp
            .path()
            .join("pods/uid-1/volumes/kubernetes.io~projected/proj");
        assert_eq!(fs::read_to_string(dir.join("ca.crt")).unwrap(), "CA");
        assert!(fs::symlink_metadata(dir.join("gone")).is_err());

        let vol = projected(serde_json::json!([{"secret": {"name": "absent"}}]));
        let err = vm.setup_pod_volumes(&pod(vec![vol], vec![]), &store);
        assert_eq!(message(err.unwrap_err()), r#"secret "absent" not found"#);

        // Unsupported sources say which.
        let vol = projected(serde_json::json!([
            {"clusterTrustBundle": {"signerName": "x", "path": "bundle.pem"}}
        ]));
        let err = vm.setup_pod_volumes(&pod(vec![vol], vec![]), &store);
        assert!(message(err.unwrap_err()).contains(r#""clusterTrustBundle" is not supported"#));
        let vol = projected(serde_json::json!([{"podCertificate": {"signerName": "x"}}]));
        let err = vm.setup_pod_volumes(&pod(vec![vol], vec![]), &store);
        assert!(message(err.unwrap_err()).contains("no type edged supports"));
    }

    #[test]
    fn projected_duplicate_paths_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let vm = VolumeManager::new(tmp.path());
        let store = Store::new();
        store.put_cm("a", &[("k", "from a"), ("same", "1")]);
        store.put_cm("b", &[("k", "from b"), ("same", "2")]);
        store.put_token("default", "tok");
        let cases = [
            // Two items naming one path.
            serde_json::json!([
                {"configMap": {"name": "a", "items": [{"key": "k", "path": "x"}]}},
                {"configMap": {"name": "b", "items": [{"key": "k", "path": "x"}]}}
            ]),
            // A token over a ConfigMap item.
            serde_json::json!([
                {"configMap": {"name": "a", "items": [{"key": "k", "path": "token"}]}},
                {"serviceAccountToken": {"path": "token"}}
            ]),
            // Two whole ConfigMaps with a key in common.
            serde_json::json!([{"configMap": {"name": "a"}}, {"configMap": {"name": "b"}}]),
            // A downwardAPI item over a whole ConfigMap's key.
            serde_json::json!([
                {"configMap": {"name": "a"}},
                {"downwardAPI": {"items": [{"path": "same", "fieldRef": {"fieldPath": "metadata.name"}}]}}
            ]),
        ];
        for sources in cases {
            let err = vm
                .setup_pod_volumes(&pod(vec![projected(sources.clone())], vec![]), &store)
                .unwrap_err();
            assert!(
                message(err).contains("conflicting duplicate paths"),
                "{sources}"
            );
        }
        // A file where another source needs a directory.
        let vol = projected(serde_json::json!([
            {"configMap": {"name": "a", "items": [{"key": "k", "path": "d"}]}},
            {"configMap": {"name": "b", "items": [{"key": "k", "path": "d/k"}]}}
        ]));
        let err = vm.setup_pod_volumes(&pod(vec![vol], vec![]), &store);
        assert!(message(err.unwrap_err()).contains("both a file and a directory"));
        assert!(
            !tmp.path()
                .join("pods/uid-1/volumes/kubernetes.io~projected/proj/..data")
                .exists()
        );
    }

    #[test]
    fn downward_api_fields_and_map_formatting() {
        let tmp = tempfile::tempdir().unwrap();
        let vm = VolumeManager::new(tmp.path());
        let store = Store::new();
        let vol: Volume = from_json(serde_json::json!({"name": "info", "downwardAPI": {
        "defaultMode": 0o600,
        "items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}, "mode": 0o444},
            {"path": "meta/name", "fieldRef": {"fieldPath": "metadata.name"}},
            {"path": "meta/uid", "fieldRef": {"fieldPath": "metadata.uid"}},
            {"path": "app", "fieldRef": {"fieldPath": "metadata.labels['app']"}},
            {"path": "none", "fieldRef": {"fieldPath": "metadata.annotations['missing']"}}
        ]}}));
        let mut p = pod(vec![vol.clone()], vec![mount("info", "/etc/podinfo")]);
        p.metadata.labels = Some(BTreeMap::from([
            ("tier".to_owned(), "backend".to_owned()),
            ("app".to_owned(), "web".to_owned()),
        ]));
        p.metadata.annotations = Some(BTreeMap::from([
            (
                "b/note".to_owned(),
                "say \"hi\"\n\tback\\slash é\u{7f}\u{200b}\u{1F600}\u{e0001}".to_owned(),
            ),
            ("a".to_owned(), String::new()),
        ]));
        vm.setup_pod_volumes(&p, &store).unwrap();
        let dir = tmp
            .path()
            .join("pods/uid-1/volumes/kubernetes.io~downward-api/info");
        let read = |name: &str| fs::read_to_string(dir.join(name)).unwrap();
        assert_eq!(read("labels"), "app=\"web\"\ntier=\"backend\"");
        assert_eq!(
            read("annotations"),
            r#"a=""
b/note="say \"hi\"\n\tback\\slash é\x7f\u200b😀\U000e0001""#
        );
        assert_eq!(mode_of(&dir.join("annotations")), 0o444);
        assert_eq!(mode_of(&dir.join("labels")), 0o600);
        assert_eq!(read("meta/name"), "p");
        assert_eq!(read("meta/uid"), "uid-1");
        assert_eq!(read("app"), "web");
        assert_eq!(read("none"), "");
        assert_eq!(
            fs::read_link(dir.join("meta")).unwrap(),
            Path::new("..data/meta")
        );
        let mounts = vm
            .container_mounts(&p, &p.spec.as_ref().unwrap().containers[0])
            .unwrap();
        assert!(mounts[0].readonly);

        // Labels change: the next setup rewrites the file.
        p.metadata.labels = Some(BTreeMap::from([("app".to_owned(), "api".to_owned())]));
        vm.setup_pod_volumes(&p, &store).unwrap();
        assert_eq!(read("labels"), "app=\"api\"");
        assert_eq!(read("app"), "api");

        // A field volumes do not offer.
        let bad: Volume = from_json(
            serde_json::json!({"name": "info", "downwardAPI": {"items": [
            {"path": "node", "fieldRef": {"fieldPath": "spec.nodeName"}},
            {"path": "x", "fieldRef": {"fieldPath": "metadata.name['x']"}}]}}),
        );
        let err = vm.setup_pod_volumes(&pod(vec![bad], vec![]), &store);
        assert_eq!(
            message(err.unwrap_err()),
            r#"[fieldPath "spec.nodeName" is not supported, fieldPath "metadata.name['x']" does not support subscript]"#
        );
    }

    #[test]
    fn downward_api_resource_fields_with_divisors() {
        let tmp = tempfile::tempdir().unwrap();
        let vm = VolumeManager::new(tmp.path());
        let store = Store::new();
        let item = |path: &str, resource: &str, divisor: Option<&str>| {
            let mut sel = serde_json::json!({"containerName": "c", "resource": resource});
            if let Some(d) = divisor {
                sel["divisor"] = d.into();
            }
            serde_json::json!({"path": path, "resourceFieldRef": sel})
        };
        let vol: Volume = from_json(serde_json::json!({"name": "res", "downwardAPI": {"items": [
            item("cpu_limit", "limits.cpu", None),
            item("cpu_limit_m", "limits.cpu", Some("1m")),
            item("mem_limit_mi", "limits.memory", Some("1Mi")),
            item("mem_limit", "limits.memory", None),
            item("cpu_request_m", "requests.cpu", Some("1m")),
            item("mem_request", "requests.memory", Some("1Ki")),
            item("zero_divisor", "limits.cpu", Some("0")),
        ]}}));
        let mut p = pod(vec![vol], vec![]);
        p.spec.as_mut().unwrap().containers[0].resources = Some(from_json(serde_json::json!({
            "limits": {"cpu": "1500m", "memory": "64Mi"},
            "requests": {"cpu": "250m"}
        })));
        vm.setup_pod_volumes(&p, &store).unwrap();
        let dir = tmp
            .path()
            .join("pods/uid-1/volumes/kubernetes.io~downward-api/res");
        let read = |name: &str| fs::read_to_string(dir.join(name)).unwrap();
        assert_eq!(read("cpu_limit"), "2");
        assert_eq!(read("cpu_limit_m"), "1500");
        assert_eq!(read("mem_limit_mi"), "64");
        assert_eq!(read("mem_limit"), (64u64 << 20).to_string());
        assert_eq!(read("cpu_request_m"), "250");
        assert_eq!(read("mem_request"), "0");
        assert_eq!(read("zero_divisor"), "2");

        // An unset limit is the node's allocatable value, an error when that is unknown.
        let vol: Volume = from_json(serde_json::json!({"name": "res", "downwardAPI": {"items": [
            item("eph", "limits.ephemeral-storage", Some("1Gi")),
        ]}}));
        let p2 = pod(vec![vol], vec![]);
        let err = vm.setup_pod_volumes(&p2, &store).unwrap_err();
        assert!(message(err).contains("not known to edged"));
        *store.allocatable.borrow_mut() = Some(BTreeMap::from([(
            "ephemeral-storage".to_owned(),
            Quantity("10Gi".into()),
        )]));
        vm.setup_pod_volumes(&p2, &store).unwrap();
        assert_eq!(read("eph"), "10");

        // Unknown containers and resources.
        for (container, resource, want) in [
            ("ghost", "limits.cpu", r#"container "ghost" not found"#),
            ("c", "limits.gpu", "unsupported container resource"),
            ("", "limits.cpu", "containerName is required"),
        ] {
            let vol: Volume = from_json(
                serde_json::json!({"name": "res", "downwardAPI": {"items": [
                    {"path": "x", "resourceFieldRef": {"containerName": container, "resource": resource}}
                ]}}),
            );
            let err = vm.setup_pod_volumes(&pod(vec![vol], vec![]), &store);
            assert!(message(err.unwrap_err()).contains(want), "{want}");
        }
    }

    #[test]
    fn hostile_projected_and_downward_paths_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let vm = VolumeManager::new(tmp.path());
        let store = Store::new();
        store.put_cm("cm", &[("k", "x")]);
        store.put_token("default", "tok");
        for path in [
            "../x",
            "../../../../etc/evil",
            "/abs",
            "a\0b",
            "..data",
            "a/../../b",
            "",
        ] {
            let sources = [
                serde_json::json!([{"configMap": {"name": "cm", "items": [{"key": "k", "path": path}]}}]),
                serde_json::json!([{"serviceAccountToken": {"path": path}}]),
                serde_json::json!([{"downwardAPI": {"items": [
                    {"path": path, "fieldRef": {"fieldPath": "metadata.name"}}]}}]),
            ];
            for source in sources {
                let err =
                    vm.setup_pod_volumes(&pod(vec![projected(source.clone())], vec![]), &store);
                assert!(matches!(err, Err(Error::Volume { .. })), "{source}");
            }
            let vol: Volume = from_json(serde_json::json!({"name": "d", "downwardAPI": {"items": [
                {"path": path, "fieldRef": {"fieldPath": "metadata.name"}}]}}));
            let err = vm.setup_pod_volumes(&pod(vec![vol], vec![]), &store);
            assert!(matches!(err, Err(Error::Volume { .. })), "{path:?}");
        }
        assert!(!tmp.path().join("x").exists());
        assert!(!tmp.path().join("pods/uid-1/volumes/x").exists());
        assert!(
            !tmp.path()
                .join("pods/uid-1/volumes/kubernetes.io~projected/x")
                .exists()
        );
        assert!(!tmp.path().join("abs").exists());
    }

    #[test]
    fn pod_needs_lists_every_reference_once() {
        let p: Pod = from_json(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {
                "serviceAccount": "legacy",
                "imagePullSecrets": [{"name": "pull"}],
                "volumes": [
                    {"name": "a", "configMap": {"name": "cm-vol", "optional": true}},
                    {"name": "b", "secret": {"secretName": "sec-vol"}},
                    {"name": "c", "projected": {"sources": [
                        {"serviceAccountToken": {"path": "token"}},
                        {"serviceAccountToken": {"path": "token"}},
                        {"serviceAccountToken": {"audience": "vault", "expirationSeconds": 7200, "path": "vault"}},
                        {"configMap": {"name": "cm-env", "optional": true}},
                        {"secret": {"name": "sec-proj", "optional": true}},
                        {"downwardAPI": {"items": [{"path": "n", "fieldRef": {"fieldPath": "metadata.name"}}]}}
                    ]}},
                    {"name": "d", "emptyDir": {}}
                ],
                "initContainers": [{"name": "init", "image": "i", "env": [
                    {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm-init", "key": "k", "optional": true}}},
                    {"name": "B", "valueFrom": {"secretKeyRef": {"name": "sec-vol", "key": "k", "optional": true}}}
                ]}],
                "containers": [{"name": "c", "image": "i",
                    "envFrom": [
                        {"configMapRef": {"name": "cm-env"}},
                        {"secretRef": {"name": "sec-from", "optional": true}}
                    ],
                    "env": [
                        {"name": "C", "value": "plain"},
                        {"name": "D", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "E", "valueFrom": {"configMapKeyRef": {"name": "cm-vol", "key": "k", "optional": true}}}
                    ]}]
            }
        }));
        let token = |audience: Option<&str>, expiration_seconds: i64, path: &str| {
            PodNeed::Token(TokenSource {
                service_account: "legacy".into(),
                audience: audience.map(Into::into),
                expiration_seconds,
                path: path.into(),
            })
        };
        let cm = |name: &str, optional: bool| PodNeed::ConfigMap {
            name: name.into(),
            optional,
        };
        let secret = |name: &str, optional: bool| PodNeed::Secret {
            name: name.into(),
            optional,
        };
        assert_eq!(
            pod_needs(&p),
            vec![
                cm("cm-env", false),
                cm("cm-init", true),
                cm("cm-vol", true),
                secret("sec-from", true),
                secret("sec-proj", true),
                secret("sec-vol", false),
                token(None, 3600, "token"),
                token(Some("vault"), 7200, "vault"),
            ]
        );
        assert!(pod_needs(&Pod::default()).is_empty());
    }
}
