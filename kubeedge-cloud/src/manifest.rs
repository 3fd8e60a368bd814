//! Manifest mode: the controllers' event stream and cluster writes, backed by a folder of YAML
//! instead of an API server.
//!
//! [`ManifestSource`] scans a folder of manifests and reports what it holds as the same
//! [`ObjectEvent`]s a cluster's watches produce; [`ManifestWriter`] is the [`ClusterWriter`] of
//! that "cluster": what the edge reports (nodes, leases, pod and device status, events) is kept
//! in memory, written to JSON files under a status folder, and reported back through the same
//! event stream. Both share one state, opened with [`ManifestSource::open`].
//!
//! The folder is hostile input: files are bounded ([`ManifestConfig::MAX_FILE_BYTES`],
//! [`ManifestConfig::MAX_OBJECTS`]), YAML aliases cannot expand a document past a budget, and a
//! file that cannot be read or parsed keeps the objects it had (a half-written file never
//! deletes a pod).

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

// Names become file names: nothing but a DNS-1123 subdomain (what Kubernetes accepts as the
// name of these kinds) is accepted.
use crate::{ApiError, ClusterWriter, Error, Kind, Object, ObjectEvent, ObjectKey, Result};
use kubeedge_proto::object_name::{
    is_dns_label as valid_namespace, is_dns_subdomain as valid_name,
};

/// Where manifest mode reads manifests and writes status, and how often it looks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestConfig {
    /// The folder of manifests: `*.yaml`, `*.yml` and `*.json` files directly in it.
    pub dir: PathBuf,
    /// The folder the writer keeps its objects in (`<plural>/<namespace>_<name>.json`).
    pub status_dir: PathBuf,
    /// How often `dir` is scanned (default 1 s; at least [`ManifestConfig::MIN_SCAN_INTERVAL`],
    /// at most a day).
    pub scan_interval: Duration,
    /// How long a pod removed from `dir` may stay terminating after its grace period when no
    /// edge deletes it (default 60 s).
    pub delete_timeout: Duration,
}

impl ManifestConfig {
    /// The largest manifest (or status) file read: 4 MiB.
    pub const MAX_FILE_BYTES: u64 = 4 << 20;
    /// The most objects all manifests together may hold: 10,000.
    pub const MAX_OBJECTS: usize = 10_000;
    /// The most Events kept; the oldest are dropped: 1,000.
    pub const MAX_EVENTS: usize = 1_000;
    /// The shortest scan interval used.
    pub const MIN_SCAN_INTERVAL: Duration = Duration::from_millis(10);

    /// A config for `dir` and `status_dir` with the default intervals.
    ///
    /// ```
    /// use kubeedge_cloud::ManifestConfig;
    ///
    /// let config = ManifestConfig::new("manifests", "status");
    /// assert_eq!(config.scan_interval, std::time::Duration::from_secs(1));
    /// ```
    pub fn new(dir: impl Into<PathBuf>, status_dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            status_dir: status_dir.into(),
            scan_interval: Duration::from_secs(1),
            delete_timeout: Duration::from_secs(60),
        }
    }
}

/// Reports the objects of a manifest folder as [`ObjectEvent`]s; see [`ManifestSource::open`].
pub struct ManifestSource {
    shared: Arc<Shared>,
}

/// The [`ClusterWriter`] of manifest mode: keeps what the edge writes in memory and in status
/// files, and reports Pod, Node and Lease changes through the [`ManifestSource`]'s events.
#[derive(Clone)]
pub struct ManifestWriter {
    shared: Arc<Shared>,
}

impl fmt::Debug for ManifestSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManifestSource")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ManifestWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManifestWriter")
            .field("status_dir", &self.shared.config.status_dir)
            .finish_non_exhaustive()
    }
}

struct Shared {
    config: ManifestConfig,
    state: Mutex<State>,
    /// Serializes mutations that touch files, so files are written in the order the state
    /// changed. Taken before `state`, never the other way round.
    files: tokio::sync::Mutex<()>,
    /// Wakes the source when the writer queued events.
    queued: Notify,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The longest scan interval used (a day).
const MAX_SCAN_INTERVAL: Duration = Duration::from_secs(86_400);

/// The resourceVersion counter of this process: starts at the Unix time in microseconds, so
/// versions only grow, also across restarts.
static RESOURCE_VERSION: AtomicU64 = AtomicU64::new(0);

/// Stored resource versions above this are not trusted (the counter must never overflow).
const MAX_TRUSTED_RV: u64 = 1 << 62;

fn next_rv() -> u64 {
    RESOURCE_VERSION.fetch_add(1, Ordering::SeqCst) + 1
}

fn raise_rv(at_least: u64) {
    RESOURCE_VERSION.fetch_max(at_least.min(MAX_TRUSTED_RV), Ordering::SeqCst);
}

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| {
        u64::try_from(d.as_micros()).unwrap_or(MAX_TRUSTED_RV)
    })
}

fn now_timestamp() -> String {
    kubeedge_proto::rfc3339_utc(kubeedge_proto::now_millis(), false)
}

/// The namespace of the UUID v5 uids of manifest objects (`<Kind>/<namespace>/<name>`).
const UID_NAMESPACE: Uuid = Uuid::from_u128(0xdacc_1d7e_d7a4_4e6f_9b5c_8a05_dd71_87a2);

fn manifest_uid(key: &ObjectKey) -> String {
    let name = format!("{}/{}/{}", key.kind.kind(), key.namespace, key.name);
    Uuid::new_v5(&UID_NAMESPACE, name.as_bytes()).to_string()
}

fn new_uid() -> String {
    Uuid::new_v4().to_string()
}

/// Metadata the API server sets; dropped from what manifests and the edge send.
const SERVER_SET: [&str; 6] = [
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// `status_dir/<plural>/<namespace>_<name>.json`, or `<name>.json` without a namespace. Only
/// called with validated names.
fn status_path(status_dir: &Path, plural: &str, namespace: &str, name: &str) -> PathBuf {
    let file = if namespace.is_empty() {
        format!("{name}.json")
    } else {
        format!("{namespace}_{name}.json")
    };
    status_dir.join(plural).join(file)
}

const DEVICE_STATUSES: &str = "devicestatuses";
const EVENTS: &str = "events";

/// The folders under `status_dir`.
const STATUS_FOLDERS: [&str; 6] = [
    "pods",
    "nodes",
    "leases",
    DEVICE_STATUSES,
    EVENTS,
    SENT_RECORDS,
];
/// The folder of the sent records (`<node>.txt`), the file form of the ConfigMaps a cluster
/// keeps them in.
const SENT_RECORDS: &str = "sent";

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct State {
    /// Per manifest file: what it held when it last loaded.
    manifests: BTreeMap<PathBuf, ManifestFile>,
    /// The objects of the 7 kinds, as the controllers see them.
    objects: BTreeMap<ObjectKey, Entry>,
    /// Pod statuses loaded from `status_dir`, waiting for their pod (same uid) to appear.
    saved_pod_status: HashMap<ObjectKey, SavedPodStatus>,
    /// DeviceStatus objects by (namespace, name).
    device_statuses: BTreeMap<(String, String), Value>,
    /// Events by (namespace, name): their resourceVersion (their age) and the Event.
    events: HashMap<(String, String), (u64, Value)>,
    /// Events oldest first.
    event_order: BTreeMap<u64, (String, String)>,
    /// Events for the source to send, in order.
    queue: Vec<ObjectEvent>,
    /// Whether a source runs and has sent its `Listed` events (writer events queue only then).
    running: bool,
    /// An object left the state for a reason the next scan must look at (a pod deleted while
    /// still declared is created again).
    dirty: bool,
    /// The last logged reason the folder could not be read.
    dir_error: Option<String>,
    /// The last logged reason the whole folder was refused.
    refusal: Option<String>,
}

#[derive(Default)]
struct ManifestFile {
    /// Hash of the content last tried (whether it loaded or not); `None` when not read.
    attempted: Option<u64>,
    /// The documents of the last content that loaded.
    docs: Vec<Doc>,
    /// Why the current content does not load (logged once).
    error: Option<String>,
}

struct Doc {
    key: ObjectKey,
    /// The document, normalized (namespace filled in, server-set metadata dropped).
    value: Value,
}

struct Entry {
    /// What the controllers were last told.
    object: Object,
    /// The manifest document it was built from; `None` for objects only the writer made and
    /// for pods that left the folder.
    doc: Option<Value>,
    /// The `status` the writer set (kept when the manifest changes); `Some(Null)` = removed.
    writer_status: Option<Value>,
    /// Created by the writer (or loaded from `status_dir`): stays when no manifest declares it.
    writer_owned: bool,
    /// For a terminating pod: when it is deleted if no edge deletes it first.
    deadline: Option<Instant>,
}

struct SavedPodStatus {
    uid: String,
    status: Option<Value>,
    created: Option<Value>,
}

enum FileOp {
    Write(PathBuf, Vec<u8>),
    Remove(PathBuf),
}

impl State {
    fn emit(&mut self, event: ObjectEvent) {
        if self.running {
            self.queue.push(event);
        }
    }

    /// Applies one scan's results: file by file, then the objects they declare.
    fn apply_scan(
        &mut self,
        config: &ManifestConfig,
        read: std::result::Result<Vec<(PathBuf, FileRead)>, String>,
        first: bool,
        ops: &mut Vec<FileOp>,
    ) {
        let mut changed = std::mem::take(&mut self.dirty) || first;
        match read {
            Err(reason) => {
                if self.dir_error.as_deref() != Some(reason.as_str()) {
                    tracing::error!(
                        dir = %config.dir.display(),
                        %reason,
                        "cannot read the manifest folder; keeping the objects loaded so far"
                    );
                    self.dir_error = Some(reason);
                }
            }
            Ok(files) => {
                if self.dir_error.take().is_some() {
                    tracing::info!(dir = %config.dir.display(), "the manifest folder reads again");
                }
                let present: HashSet<&PathBuf> = files.iter().map(|(path, _)| path).collect();
                let before = self.manifests.len();
                self.manifests.retain(|path, _| present.contains(path));
                changed |= self.manifests.len() != before;
                for (path, read) in files {
                    let file = self.manifests.entry(path.clone()).or_default();
                    match read {
                        FileRead::Same => {}
                        FileRead::Parsed { hash, docs } => {
                            file.attempted = Some(hash);
                            file.docs = docs;
                            if file.error.take().is_some() {
                                tracing::info!(path = %path.display(), "manifest loads again");
                            }
                            changed = true;
                        }
                        FileRead::Failed { hash, reason } => {
                            file.attempted = hash;
                            if file.error.as_deref() != Some(reason.as_str()) {
                                tracing::error!(
                                    path = %path.display(),
                                    %reason,
                                    kept = file.docs.len(),
                                    "manifest refused; keeping the objects it had"
                                );
                                file.error = Some(reason);
                            }
                        }
                    }
                }
            }
        }
        if changed {
            self.reconcile_manifests(config, first, ops);
        }
        self.expire(Instant::now(), config, ops);
        if first {
            for kind in Kind::ALL {
                let objects = self
                    .objects
                    .iter()
                    .filter(|(key, _)| key.kind == kind)
                    .map(|(_, entry)| entry.object.clone())
                    .collect();
                self.queue.push(ObjectEvent::Listed { kind, objects });
            }
            self.running = true;
        }
    }

    /// Brings the objects in line with what the manifests declare.
    fn reconcile_manifests(&mut self, config: &ManifestConfig, first: bool, ops: &mut Vec<FileOp>) {
        let manifests = std::mem::take(&mut self.manifests);
        let mut desired: BTreeMap<&ObjectKey, &Value> = BTreeMap::new();
        let mut total = 0usize;
        for (path, file) in &manifests {
            for doc in &file.docs {
                total += 1;
                if desired.contains_key(&doc.key) {
                    tracing::warn!(
                        path = %path.display(),
                        object = %doc.key,
                        "declared more than once; the first declaration is used"
                    );
                } else {
                    desired.insert(&doc.key, &doc.value);
                }
            }
        }
        if total > ManifestConfig::MAX_OBJECTS {
            let reason = format!(
                "the manifests hold {total} objects, more than the limit of {}",
                ManifestConfig::MAX_OBJECTS
            );
            if self.refusal.as_deref() != Some(reason.as_str()) {
                tracing::error!(
                    dir = %config.dir.display(),
                    %reason,
                    "manifest folder refused; keeping the objects loaded so far"
                );
                self.refusal = Some(reason);
            }
        } else {
            if self.refusal.take().is_some() {
                tracing::info!(dir = %config.dir.display(), "manifest folder accepted again");
            }
            self.reconcile(&desired, first, config, ops);
            if manifests.values().all(|file| file.error.is_none()) {
                // Saved statuses of pods no manifest declares: the pod was deleted while
                // this process was down.
                let stale: Vec<ObjectKey> = self
                    .saved_pod_status
                    .keys()
                    .filter(|key| !self.objects.contains_key(*key))
                    .cloned()
                    .collect();
                for key in stale {
                    self.saved_pod_status.remove(&key);
                    ops.push(FileOp::Remove(status_path(
                        &config.status_dir,
                        "pods",
                        &key.namespace,
                        &key.name,
                    )));
                }
            }
        }
        self.manifests = manifests;
    }

    fn reconcile(
        &mut self,
        desired: &BTreeMap<&ObjectKey, &Value>,
        first: bool,
        config: &ManifestConfig,
        ops: &mut Vec<FileOp>,
    ) {
        // Gone from the folder, or declared again with another uid (a new incarnation).
        let gone: Vec<ObjectKey> = self
            .objects
            .iter()
            .filter(|(key, entry)| {
                entry.doc.is_some()
                    && entry.deadline.is_none()
                    && match desired.get(key) {
                        None => true,
                        Some(doc) => doc_uid(doc).is_some_and(|uid| uid != entry.object.uid()),
                    }
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            self.undeclare(&key, config, ops);
        }
        for (&key, &doc) in desired {
            let event = match self.objects.get_mut(key) {
                // Terminating: declared again, it is created again once it is gone.
                Some(entry) if entry.deadline.is_some() => continue,
                Some(entry) if entry.doc.as_ref() == Some(doc) => continue,
                Some(entry) => {
                    let uid = doc_uid(doc).unwrap_or(entry.object.uid()).to_owned();
                    let created = entry.object.value()["metadata"]["creationTimestamp"].clone();
                    match build(key.kind, doc, &uid, created, entry.writer_status.as_ref()) {
                        Ok(object) => {
                            entry.doc = Some(doc.clone());
                            entry.object = object.clone();
                            object
                        }
                        Err(e) => {
                            tracing::warn!(object = %key, error = %e, "manifest object skipped");
                            continue;
                        }
                    }
                }
                None => {
                    let uid = doc_uid(doc).map_or_else(|| manifest_uid(key), str::to_owned);
                    let mut created = Value::String(now_timestamp());
                    let mut status = None;
                    if let Some(saved) = self.saved_pod_status.remove(key) {
                        if saved.uid == uid {
                            status = saved.status;
                            created = saved.created.unwrap_or(created);
                        } else {
                            ops.push(FileOp::Remove(status_path(
                                &config.status_dir,
                                "pods",
                                &key.namespace,
                                &key.name,
                            )));
                        }
                    }
                    match build(key.kind, doc, &uid, created, status.as_ref()) {
                        Ok(object) => {
                            self.objects.insert(
                                key.clone(),
                                Entry {
                                    object: object.clone(),
                                    doc: Some(doc.clone()),
                                    writer_status: status,
                                    writer_owned: false,
                                    deadline: None,
                                },
                            );
                            object
                        }
                        Err(e) => {
                            tracing::warn!(object = %key, error = %e, "manifest object skipped");
                            continue;
                        }
                    }
                }
            };
            if !first {
                self.emit(ObjectEvent::Applied(event));
            }
        }
    }

    /// An object no manifest declares any more: pods terminate gracefully, objects the writer
    /// made stay, others are deleted.
    fn undeclare(&mut self, key: &ObjectKey, config: &ManifestConfig, ops: &mut Vec<FileOp>) {
        let Some(entry) = self.objects.get_mut(key) else {
            return;
        };
        entry.doc = None;
        if entry.writer_owned {
            return;
        }
        if key.kind == Kind::Pod {
            let value = entry.object.value();
            let grace = value["spec"]["terminationGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(30)
                .clamp(0, 365 * 86_400);
            let phase = value["status"]["phase"].as_str().unwrap_or("");
            // Like the API server: an unscheduled or finished pod, or a zero grace period, is
            // deleted at once; otherwise the node is asked to stop it.
            if grace > 0
                && entry.object.node_name().is_some()
                && !matches!(phase, "Succeeded" | "Failed")
            {
                let mut value = value.clone();
                if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.insert("deletionTimestamp".into(), now_timestamp().into());
                    meta.insert("deletionGracePeriodSeconds".into(), grace.into());
                }
                let wait = Duration::from_secs(grace.unsigned_abs())
                    .saturating_add(config.delete_timeout)
                    .min(Duration::from_secs(10 * 365 * 86_400));
                let now = Instant::now();
                match with_rv(Kind::Pod, value) {
                    Ok(object) => {
                        entry.deadline = Some(now.checked_add(wait).unwrap_or(now));
                        entry.object = object.clone();
                        self.emit(ObjectEvent::Applied(object));
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(object = %key, error = %e, "cannot mark the pod terminating");
                    }
                }
            }
        }
        self.remove(key, config, ops);
    }

    /// Deletes an object: a `Deleted` event with a new resourceVersion, its status file gone.
    fn remove(
        &mut self,
        key: &ObjectKey,
        config: &ManifestConfig,
        ops: &mut Vec<FileOp>,
    ) -> Option<Object> {
        let entry = self.objects.remove(key)?;
        let object = with_rv(key.kind, entry.object.value().clone()).unwrap_or(entry.object);
        if matches!(key.kind, Kind::Pod | Kind::Node | Kind::Lease) {
            ops.push(FileOp::Remove(status_path(
                &config.status_dir,
                key.kind.plural(),
                &key.namespace,
                &key.name,
            )));
        }
        if key.kind == Kind::Pod {
            self.dirty = true;
        }
        self.emit(ObjectEvent::Deleted(object.clone()));
        Some(object)
    }

    /// Deletes terminating pods no edge deleted in time.
    fn expire(&mut self, now: Instant, config: &ManifestConfig, ops: &mut Vec<FileOp>) {
        let due: Vec<ObjectKey> = self
            .objects
            .iter()
            .filter(|(_, entry)| entry.deadline.is_some_and(|at| at <= now))
            .map(|(key, _)| key.clone())
            .collect();
        for key in due {
            tracing::info!(
                object = %key,
                "no node deleted the terminating pod within its grace period and the delete timeout; deleting it"
            );
            self.remove(&key, config, ops);
        }
    }
}

fn doc_uid(doc: &Value) -> Option<&str> {
    doc["metadata"]["uid"]
        .as_str()
        .filter(|uid| !uid.is_empty())
}

/// A manifest object: the document with uid, creationTimestamp, a new resourceVersion and the
/// writer's status.
fn build(
    kind: Kind,
    doc: &Value,
    uid: &str,
    created: Value,
    status: Option<&Value>,
) -> Result<Object> {
    let mut value = doc.clone();
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("uid".into(), uid.into());
        if !created.is_null() {
            meta.insert("creationTimestamp".into(), created);
        }
    }
    if let (Some(status), Some(map)) = (status, value.as_object_mut()) {
        set_or_remove(map, "status", status.clone());
    }
    with_rv(kind, value)
}

/// `value` with a new resourceVersion, as an [`Object`].
fn with_rv(kind: Kind, mut value: Value) -> Result<Object> {
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), next_rv().to_string().into());
    }
    Object::new(kind, value)
}

fn set_or_remove(map: &mut Map<String, Value>, field: &str, value: Value) {
    if value.is_null() {
        map.remove(field);
    } else {
        map.insert(field.to_owned(), value);
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the manifest folder (blocking; runs on tokio's blocking pool)
// ---------------------------------------------------------------------------------------------

enum FileRead {
    /// The same content as last time.
    Same,
    Parsed {
        hash: u64,
        docs: Vec<Doc>,
    },
    Failed {
        hash: Option<u64>,
        reason: String,
    },
}

fn is_manifest(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or(".");
    !name.starts_with('.')
        && matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        )
}

fn read_manifests(
    dir: &Path,
    attempted: &HashMap<PathBuf, u64>,
) -> std::result::Result<Vec<(PathBuf, FileRead)>, String> {
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if !is_manifest(&path) {
            continue;
        }
        // Follows links; a dangling one is kept so that its read fails (and keeps its objects).
        if fs::metadata(&path).is_ok_and(|m| !m.is_file()) {
            continue;
        }
        if paths.len() >= ManifestConfig::MAX_OBJECTS {
            return Err(format!(
                "more than {} manifest files",
                ManifestConfig::MAX_OBJECTS
            ));
        }
        paths.push(path);
    }
    paths.sort();
    Ok(paths
        .into_iter()
        .map(|path| {
            let read = read_manifest(&path, attempted.get(&path).copied());
            (path, read)
        })
        .collect())
}

fn read_manifest(path: &Path, attempted: Option<u64>) -> FileRead {
    let bytes = match read_limited(path) {
        Ok(bytes) => bytes,
        Err(reason) => return FileRead::Failed { hash: None, reason },
    };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    let hash = hasher.finish();
    if attempted == Some(hash) {
        return FileRead::Same;
    }
    match parse_manifest(path, &bytes) {
        Ok(docs) => FileRead::Parsed { hash, docs },
        Err(reason) => FileRead::Failed {
            hash: Some(hash),
            reason,
        },
    }
}

/// A file's bytes, refused beyond [`ManifestConfig::MAX_FILE_BYTES`].
fn read_limited(path: &Path) -> std::result::Result<Vec<u8>, String> {
    let max = ManifestConfig::MAX_FILE_BYTES;
    let too_big = |len: u64| format!("{len} bytes, more than the limit of {max} bytes");
    let file = fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len > max {
        return Err(too_big(len));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

fn parse_manifest(path: &Path, bytes: &[u8]) -> std::result::Result<Vec<Doc>, String> {
    let max = ManifestConfig::MAX_OBJECTS;
    let too_many = || format!("more than {max} objects");
    let mut raw = Vec::new();
    if path.extension().and_then(|e| e.to_str()) == Some("json") {
        for (i, value) in serde_json::Deserializer::from_slice(bytes)
            .into_iter::<Value>()
            .enumerate()
        {
            if i >= max {
                return Err(too_many());
            }
            raw.push(value.map_err(|e| format!("document {}: {e}", i + 1))?);
        }
    } else {
        // Aliases may repeat a subtree; no document expands past twice the file's size.
        let budget = Budget(Cell::new(
            bytes.len().saturating_mul(2).saturating_add(4096),
        ));
        for (i, document) in serde_yaml_ng::Deserializer::from_slice(bytes).enumerate() {
            if i >= max {
                return Err(too_many());
            }
            let value = ValueSeed(&budget)
                .deserialize(document)
                .map_err(|e| format!("document {}: {e}", i + 1))?;
            raw.push(value);
        }
    }
    let mut docs = Vec::new();
    for (i, value) in raw.into_iter().enumerate() {
        let skip = |reason: String| {
            tracing::warn!(path = %path.display(), document = i + 1, %reason, "manifest document skipped");
        };
        match value {
            Value::Null => {}
            Value::Object(mut map) if map.get("kind").and_then(Value::as_str) == Some("List") => {
                match map.remove("items") {
                    Some(Value::Array(items)) => {
                        for (j, item) in items.into_iter().enumerate() {
                            match normalize(item) {
                                Ok(doc) => docs.push(doc),
                                Err(reason) => skip(format!("item {}: {reason}", j + 1)),
                            }
                            if docs.len() > max {
                                return Err(too_many());
                            }
                        }
                    }
                    None | Some(Value::Null) => {}
                    Some(_) => skip("a List whose items is not a list".into()),
                }
            }
            value => match normalize(value) {
                Ok(doc) => docs.push(doc),
                Err(reason) => skip(reason),
            },
        }
        if docs.len() > max {
            return Err(too_many());
        }
    }
    Ok(docs)
}

/// Checks a manifest document and fills in what the API server would (namespace `default`),
/// dropping what only it may set.
fn normalize(mut value: Value) -> std::result::Result<Doc, String> {
    let Some(map) = value.as_object_mut() else {
        return Err("not a mapping".into());
    };
    let text = |field: &str| map.get(field).and_then(Value::as_str).unwrap_or("");
    let (kind_name, api_version) = (text("kind"), text("apiVersion"));
    let Some(kind) = Kind::of(kind_name, api_version) else {
        return Err(format!(
            "kind {kind_name:?} of apiVersion {api_version:?} is not handled"
        ));
    };
    if kind == Kind::Pod {
        // Like the API server: a pod's status is not created from its manifest.
        map.remove("status");
    }
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(meta) = meta.as_object_mut() else {
        return Err("metadata is not a mapping".into());
    };
    for field in SERVER_SET {
        meta.remove(field);
    }
    let name = match meta.get("name") {
        Some(Value::String(name)) if valid_name(name) => name.clone(),
        other => {
            return Err(format!(
                "metadata.name {} is not a DNS-1123 subdomain",
                other.map_or_else(|| "(none)".to_owned(), Value::to_string)
            ));
        }
    };
    let namespace = if kind.namespaced() {
        let namespace = match meta.get("namespace") {
            None | Some(Value::Null) => "default".to_owned(),
            Some(Value::String(ns)) if ns.is_empty() => "default".to_owned(),
            Some(Value::String(ns)) if valid_namespace(ns) => ns.clone(),
            Some(other) => {
                return Err(format!(
                    "metadata.namespace {other} is not a DNS-1123 label"
                ));
            }
        };
        meta.insert("namespace".into(), namespace.clone().into());
        namespace
    } else {
        meta.remove("namespace");
        String::new()
    };
    match meta.get("uid") {
        None => {}
        Some(Value::Null) => {
            meta.remove("uid");
        }
        Some(Value::String(uid)) if !uid.is_empty() && uid.len() <= 128 => {}
        Some(other) => return Err(format!("metadata.uid {other} is not a uid")),
    }
    Ok(Doc {
        key: ObjectKey::new(kind, namespace, name),
        value,
    })
}

/// What a YAML document may still expand to (nodes plus string bytes).
struct Budget(Cell<usize>);

impl Budget {
    fn charge<E: de::Error>(&self, cost: usize) -> std::result::Result<(), E> {
        let left = self.0.get();
        if cost > left {
            return Err(E::custom(
                "the document expands past the size limit (YAML aliases?)",
            ));
        }
        self.0.set(left - cost);
        Ok(())
    }
}

/// Deserializes a JSON value from YAML within a [`Budget`].
#[derive(Clone, Copy)]
struct ValueSeed<'a>(&'a Budget);

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value JSON can hold")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> std::result::Result<Value, E> {
        self.0.charge(1)?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Value, E> {
        self.0.charge(1)?;
        Ok(v.into())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Value, E> {
        self.0.charge(1)?;
        Ok(v.into())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Value, E> {
        self.0.charge(1)?;
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number JSON cannot hold (NaN or infinite)"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Value, E> {
        self.0.charge(1 + v.len())?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<Value, E> {
        self.0.charge(1 + v.len())?;
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<Value, E> {
        self.0.charge(1)?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> std::result::Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Value, A::Error> {
        self.0.charge(1)?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> std::result::Result<Value, A::Error> {
        self.0.charge(1)?;
        let mut map = Map::new();
        while let Some(key) = access.next_key_seed(KeySeed(self.0))? {
            let value = access.next_value_seed(self)?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

/// A mapping key: a string; numbers and booleans become their text (as `sigs.k8s.io/yaml`).
struct KeySeed<'a>(&'a Budget);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<String, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, number or boolean key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<String, E> {
        self.0.charge(1 + v.len())?;
        Ok(v.to_owned())
    }

    fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<String, E> {
        self.0.charge(1 + v.len())?;
        Ok(v)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> std::result::Result<String, E> {
        self.visit_string(v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<String, E> {
        self.visit_string(v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<String, E> {
        self.visit_string(v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<String, E> {
        self.visit_string(v.to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// Status files
// ---------------------------------------------------------------------------------------------

fn run_file_ops(ops: Vec<FileOp>) -> std::result::Result<(), String> {
    for op in ops {
        match op {
            FileOp::Write(path, bytes) => kubeedge_fs::write_atomically(&path, &bytes, 0o644)
                .map_err(|e| format!("writing {}: {e}", path.display()))?,
            FileOp::Remove(path) => match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("removing {}: {e}", path.display())),
            },
        }
    }
    Ok(())
}

impl Shared {
    async fn run_file_ops(&self, ops: Vec<FileOp>) -> std::result::Result<(), String> {
        if ops.is_empty() {
            return Ok(());
        }
        tokio::task::spawn_blocking(move || run_file_ops(ops))
            .await
            .map_err(|e| format!("the file task failed: {e}"))?
    }

    fn write_op(&self, plural: &str, namespace: &str, name: &str, value: &Value) -> FileOp {
        let path = status_path(&self.config.status_dir, plural, namespace, name);
        let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
        bytes.push(b'\n');
        FileOp::Write(path, bytes)
    }

    fn remove_op(&self, plural: &str, namespace: &str, name: &str) -> FileOp {
        FileOp::Remove(status_path(
            &self.config.status_dir,
            plural,
            namespace,
            name,
        ))
    }
}

/// The `*.json` files of a status folder, parsed; bad ones are logged and skipped, leftover
/// temporary files removed.
fn load_json_files(dir: &Path) -> Vec<(PathBuf, Value)> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read the status folder");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with('.') {
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(&path);
            }
            continue;
        }
        if !name.ends_with(".json") || fs::metadata(&path).is_ok_and(|m| !m.is_file()) {
            continue;
        }
        if out.len() >= ManifestConfig::MAX_OBJECTS {
            tracing::warn!(
                dir = %dir.display(),
                "more than {} status files; the rest are not loaded",
                ManifestConfig::MAX_OBJECTS
            );
            break;
        }
        let parsed = read_limited(&path)
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).map_err(|e| e.to_string()));
        match parsed {
            Ok(value) => out.push((path, value)),
            Err(reason) => {
                tracing::warn!(path = %path.display(), %reason, "status file skipped");
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Checks a loaded status file: valid names, stored where its name says, a trusted
/// resourceVersion (the counter is raised past it). Returns its namespace and name.
fn check_loaded(
    path: &Path,
    plural: &str,
    namespaced: bool,
    value: &mut Value,
    config: &ManifestConfig,
) -> std::result::Result<(String, String), String> {
    let meta = value
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or("no metadata".to_owned())?;
    let name = meta.get("name").and_then(Value::as_str).unwrap_or("");
    let namespace = if namespaced {
        meta.get("namespace").and_then(Value::as_str).unwrap_or("")
    } else {
        ""
    };
    if !valid_name(name) || (namespaced && !valid_namespace(namespace)) {
        return Err("not a valid name or namespace".into());
    }
    if status_path(&config.status_dir, plural, namespace, name) != path {
        return Err(format!(
            "holds {namespace}/{name}, which does not belong in this file"
        ));
    }
    let (namespace, name) = (namespace.to_owned(), name.to_owned());
    match meta
        .get("resourceVersion")
        .and_then(Value::as_str)
        .and_then(|rv| rv.parse::<u64>().ok())
    {
        Some(rv) if rv < MAX_TRUSTED_RV => raise_rv(rv),
        _ => {
            meta.insert("resourceVersion".into(), next_rv().to_string().into());
        }
    }
    if meta
        .get("uid")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        meta.insert("uid".into(), new_uid().into());
    }
    Ok((namespace, name))
}

/// The writer's objects as a previous run left them in `status_dir`.
fn load_state(config: &ManifestConfig) -> State {
    let mut state = State::default();
    let dir = &config.status_dir;
    for kind in [Kind::Node, Kind::Lease] {
        for (path, mut value) in load_json_files(&dir.join(kind.plural())) {
            let loaded = check_loaded(&path, kind.plural(), kind.namespaced(), &mut value, config)
                .and_then(|_| Object::new(kind, value).map_err(|e| e.to_string()));
            match loaded {
                Ok(object) => {
                    state.objects.insert(
                        object.key().clone(),
                        Entry {
                            writer_status: object.value().get("status").cloned(),
                            object,
                            doc: None,
                            writer_owned: true,
                            deadline: None,
                        },
                    );
                }
                Err(reason) => {
                    tracing::warn!(path = %path.display(), %reason, "status file skipped");
                }
            }
        }
    }
    for (path, mut value) in load_json_files(&dir.join("pods")) {
        match check_loaded(&path, "pods", true, &mut value, config) {
            Ok((namespace, name)) => {
                let meta = &value["metadata"];
                state.saved_pod_status.insert(
                    ObjectKey::new(Kind::Pod, namespace, name),
                    SavedPodStatus {
                        uid: meta["uid"].as_str().unwrap_or("").to_owned(),
                        created: meta.get("creationTimestamp").cloned(),
                        status: value.get("status").cloned(),
                    },
                );
            }
            Err(reason) => tracing::warn!(path = %path.display(), %reason, "status file skipped"),
        }
    }
    for (path, mut value) in load_json_files(&dir.join(DEVICE_STATUSES)) {
        match check_loaded(&path, DEVICE_STATUSES, true, &mut value, config) {
            Ok(key) => {
                state.device_statuses.insert(key, value);
            }
            Err(reason) => tracing::warn!(path = %path.display(), %reason, "status file skipped"),
        }
    }
    let mut events = Vec::new();
    for (path, mut value) in load_json_files(&dir.join(EVENTS)) {
        match check_loaded(&path, EVENTS, true, &mut value, config) {
            Ok(key) => {
                let rv = value["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|rv| rv.parse::<u64>().ok())
                    .unwrap_or(0);
                events.push((rv, key, value));
            }
            Err(reason) => tracing::warn!(path = %path.display(), %reason, "status file skipped"),
        }
    }
    events.sort_by_key(|(rv, _, _)| *rv);
    let drop = events.len().saturating_sub(ManifestConfig::MAX_EVENTS);
    for (i, (rv, key, value)) in events.into_iter().enumerate() {
        if i < drop {
            let _ = fs::remove_file(status_path(dir, EVENTS, &key.0, &key.1));
            continue;
        }
        state.event_order.insert(rv, key.clone());
        state.events.insert(key, (rv, value));
    }
    state
}

// ---------------------------------------------------------------------------------------------
// The source
// ---------------------------------------------------------------------------------------------

impl ManifestSource {
    /// Opens manifest mode: checks that `config.dir` is a folder, creates `config.status_dir`
    /// and loads what the writer kept there in an earlier run (nodes, leases, device statuses,
    /// events, and pod statuses, which return to their pod when it has the same uid). The
    /// source and the writer share that state.
    ///
    /// Nothing is scanned until [`ManifestSource::run`]; the writer can be used right away
    /// (its changes are part of the first scan's `Listed` events).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use kubeedge_cloud::{Kind, ManifestConfig, ManifestSource, ObjectEvent};
    /// use tokio_util::sync::CancellationToken;
    ///
    /// let manifests = tempfile::tempdir()?;
    /// let status = tempfile::tempdir()?;
    /// std::fs::write(
    ///     manifests.path().join("app.yaml"),
    ///     "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app}\ndata: {greeting: hello}\n",
    /// )?;
    /// let config = ManifestConfig::new(manifests.path(), status.path());
    /// let (source, _writer) = ManifestSource::open(config)?;
    ///
    /// let (events, mut received) = tokio::sync::mpsc::channel(16);
    /// let shutdown = CancellationToken::new();
    /// let task = tokio::spawn(source.run(events, shutdown.clone()));
    /// // The first scan lists each kind once.
    /// for _ in Kind::ALL {
    ///     let Some(ObjectEvent::Listed { kind, objects }) = received.recv().await else {
    ///         panic!("expected a Listed event");
    ///     };
    ///     if kind == Kind::ConfigMap {
    ///         assert_eq!(objects.len(), 1);
    ///         assert_eq!(objects[0].namespace(), "default");
    ///         assert!(!objects[0].uid().is_empty());
    ///     }
    /// }
    /// shutdown.cancel();
    /// task.await??;
    /// # Ok(())
    /// # }
    /// ```
    pub fn open(config: ManifestConfig) -> Result<(ManifestSource, ManifestWriter)> {
        let meta = fs::metadata(&config.dir).map_err(|source| Error::Io {
            what: format!("manifest folder {}", config.dir.display()),
            source,
        })?;
        if !meta.is_dir() {
            return Err(Error::Manifest {
                path: config.dir.clone(),
                reason: "not a folder".into(),
            });
        }
        for folder in STATUS_FOLDERS {
            let path = config.status_dir.join(folder);
            fs::create_dir_all(&path).map_err(|source| Error::Io {
                what: format!("creating {}", path.display()),
                source,
            })?;
        }
        raise_rv(now_micros());
        let state = load_state(&config);
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(state),
            files: tokio::sync::Mutex::new(()),
            queued: Notify::new(),
        });
        Ok((
            ManifestSource {
                shared: Arc::clone(&shared),
            },
            ManifestWriter { shared },
        ))
    }

    /// Scans the folder every `scan_interval` and sends what it holds to `events` until
    /// `shutdown` is cancelled: first one [`ObjectEvent::Listed`] per kind (all 7, empty ones
    /// too, with the writer's nodes and leases), then `Applied`/`Deleted` for what changed,
    /// in the folder or through the [`ManifestWriter`].
    ///
    /// Files (`*.yaml`, `*.yml`, `*.json` directly in the folder, read in name order) may hold
    /// several documents and `kind: List` documents. Documents of other kinds, and files that
    /// cannot be read or parsed, are logged; such a file keeps the objects it had. Objects get
    /// namespace `default` when they have none, a stable uid (UUID v5 of kind, namespace and
    /// name unless the manifest gives one), their creation time and a growing resourceVersion.
    ///
    /// A pod removed from the folder terminates as with the API server: it is sent with
    /// `deletionTimestamp` and `deletionGracePeriodSeconds` (its
    /// `terminationGracePeriodSeconds`, 30 by default) and is deleted when its node deletes
    /// it through [`ManifestWriter`] (`delete_pod`), or after the grace period plus
    /// `delete_timeout`. Unscheduled or finished pods, and a zero grace period, are deleted at
    /// once, as are objects of the other kinds.
    ///
    /// Returns `Ok` when `shutdown` is cancelled, [`Error::Stopped`] when `events` is closed.
    pub async fn run(
        self,
        events: mpsc::Sender<ObjectEvent>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let result = self.run_until(&events, &shutdown).await;
        let mut state = self.shared.state();
        state.running = false;
        state.queue.clear();
        result
    }

    async fn run_until(
        &self,
        events: &mpsc::Sender<ObjectEvent>,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let period = self
            .shared
            .config
            .scan_interval
            .clamp(ManifestConfig::MIN_SCAN_INTERVAL, MAX_SCAN_INTERVAL);
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut first = true;
        loop {
            loop {
                let batch = std::mem::take(&mut self.shared.state().queue);
                if batch.is_empty() {
                    break;
                }
                for event in batch {
                    tokio::select! {
                        biased;
                        () = shutdown.cancelled() => return Ok(()),
                        sent = events.send(event) => sent.map_err(|_| Error::Stopped)?,
                    }
                }
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                () = self.shared.queued.notified() => {}
                _ = ticks.tick() => {
                    self.scan(first).await;
                    first = false;
                }
            }
        }
    }

    async fn scan(&self, first: bool) {
        let shared = &self.shared;
        let attempted: HashMap<PathBuf, u64> = shared
            .state()
            .manifests
            .iter()
            .filter_map(|(path, file)| file.attempted.map(|hash| (path.clone(), hash)))
            .collect();
        let dir = shared.config.dir.clone();
        let read = tokio::task::spawn_blocking(move || read_manifests(&dir, &attempted))
            .await
            .unwrap_or_else(|e| Err(format!("the scan task failed: {e}")));
        let _files = shared.files.lock().await;
        let mut ops = Vec::new();
        shared
            .state()
            .apply_scan(&shared.config, read, first, &mut ops);
        if let Err(reason) = shared.run_file_ops(ops).await {
            tracing::error!(%reason, "cannot update the status folder");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The writer
// ---------------------------------------------------------------------------------------------

fn conflict(message: impl Into<String>) -> ApiError {
    ApiError::new(409, "Conflict", message)
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(422, "Invalid", message)
}

fn internal(e: impl fmt::Display) -> ApiError {
    ApiError::internal(e.to_string())
}

/// Checks an object the edge creates (its kind, name and namespace) and drops what only the
/// API server sets. Returns its name.
fn prepare(
    value: &mut Value,
    kind: &str,
    api_versions: &[&str],
    namespace: Option<&str>,
    name: Option<&str>,
) -> std::result::Result<String, ApiError> {
    let Some(map) = value.as_object_mut() else {
        return Err(ApiError::bad_request(format!(
            "a {kind} is not a JSON object"
        )));
    };
    match map.get("kind") {
        None | Some(Value::Null) => {
            map.insert("kind".into(), kind.into());
        }
        Some(Value::String(k)) if k == kind => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "kind {other}, expected {kind}"
            )));
        }
    }
    match map.get("apiVersion") {
        None | Some(Value::Null) => {
            map.insert("apiVersion".into(), api_versions[0].into());
        }
        Some(Value::String(v)) if api_versions.contains(&v.as_str()) => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "apiVersion {other} of a {kind}"
            )));
        }
    }
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(meta) = meta.as_object_mut() else {
        return Err(ApiError::bad_request("metadata is not a JSON object"));
    };
    if let Some(name) = name {
        match meta.get("name") {
            None | Some(Value::Null) => {
                meta.insert("name".into(), name.into());
            }
            Some(Value::String(n)) if n == name => {}
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({other}) does not match the name on the URL ({name})"
                )));
            }
        }
    }
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| valid_name(n))
        .ok_or_else(|| {
            invalid(format!(
                "a {kind} needs a metadata.name (DNS-1123 subdomain)"
            ))
        })?
        .to_owned();
    match namespace {
        Some(namespace) => {
            if !valid_namespace(namespace) {
                return Err(invalid(format!("namespace {namespace:?} is not valid")));
            }
            match meta.get("namespace") {
                None | Some(Value::Null) => {}
                Some(Value::String(ns)) if ns.is_empty() || ns == namespace => {}
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
            }
            meta.insert("namespace".into(), namespace.into());
        }
        None => {
            meta.remove("namespace");
        }
    }
    meta.remove("uid");
    for field in SERVER_SET {
        meta.remove(field);
    }
    Ok(name)
}

/// The patch's `status` merged (strategic merge) into `current`'s: `None` when it changes
/// nothing.
fn merged_status(current: &Value, patch: &Value) -> std::result::Result<Option<Value>, ApiError> {
    let Some(patch) = patch.as_object() else {
        return Err(ApiError::bad_request("the patch is not a JSON object"));
    };
    let Some(status_patch) = patch.get("status") else {
        return Ok(None);
    };
    let old = current.get("status").cloned().unwrap_or(Value::Null);
    let mut wrapper = json!({ "status": old });
    let mut patch = Map::new();
    patch.insert("status".into(), status_patch.clone());
    strategic_merge(&mut wrapper, &Value::Object(patch));
    let new = wrapper.get("status").cloned().unwrap_or(Value::Null);
    Ok((new != old).then_some(new))
}

impl ManifestWriter {
    /// `status_dir/sent/<node>.txt`, for a valid node name.
    fn sent_record_path(&self, node: &str) -> Option<PathBuf> {
        valid_name(node).then(|| {
            self.shared
                .config
                .status_dir
                .join(SENT_RECORDS)
                .join(format!("{node}.txt"))
        })
    }

    /// Runs one write: mutates the state under its lock, then writes the files (in the order
    /// of the mutations) and wakes the source to send the events.
    async fn write<T>(
        &self,
        op: impl FnOnce(&Shared, &mut State, &mut Vec<FileOp>) -> std::result::Result<T, ApiError>,
    ) -> std::result::Result<T, ApiError> {
        let shared = &*self.shared;
        let _files = shared.files.lock().await;
        let mut ops = Vec::new();
        let out = {
            let mut state = shared.state();
            op(shared, &mut state, &mut ops)?
        };
        shared.queued.notify_one();
        shared.run_file_ops(ops).await.map_err(|reason| {
            tracing::error!(%reason, "cannot update the status folder");
            ApiError::internal(reason)
        })?;
        Ok(out)
    }

    /// Sets the status of a Node or Pod (strategic merge of `patch`'s `status`).
    async fn patch_status(
        &self,
        key: ObjectKey,
        patch: Value,
    ) -> std::result::Result<Value, ApiError> {
        self.write(move |shared, state, ops| {
            let Some(entry) = state.objects.get_mut(&key) else {
                return Err(ApiError::not_found(key.kind.plural(), &key.name));
            };
            if let Some(uid) = patch
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .filter(|uid| !uid.is_empty())
                && uid != entry.object.uid()
            {
                return Err(conflict(format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    entry.object.uid()
                )));
            }
            let Some(status) = merged_status(entry.object.value(), &patch)? else {
                return Ok(entry.object.value().clone());
            };
            let mut value = entry.object.value().clone();
            if let Some(map) = value.as_object_mut() {
                set_or_remove(map, "status", status.clone());
            }
            let object = with_rv(key.kind, value).map_err(internal)?;
            entry.writer_status = Some(status);
            entry.object = object.clone();
            ops.push(shared.write_op(key.kind.plural(), &key.namespace, &key.name, object.value()));
            state.emit(ObjectEvent::Applied(object.clone()));
            Ok(object.value().clone())
        })
        .await
    }

    /// Creates a Lease, or gives an existing one the new `spec`.
    async fn put_lease(
        &self,
        namespace: &str,
        name: Option<&str>,
        mut lease: Value,
    ) -> std::result::Result<Value, ApiError> {
        let name = prepare(
            &mut lease,
            Kind::Lease.kind(),
            &[Kind::Lease.api_version()],
            Some(namespace),
            name,
        )?;
        let key = ObjectKey::new(Kind::Lease, namespace, name);
        self.write(move |shared, state, ops| {
            let object = match state.objects.get_mut(&key) {
                Some(entry) => {
                    let spec = lease.get("spec").cloned().unwrap_or(Value::Null);
                    if entry.object.value().get("spec").unwrap_or(&Value::Null) == &spec {
                        return Ok(entry.object.value().clone());
                    }
                    let mut value = entry.object.value().clone();
                    if let Some(map) = value.as_object_mut() {
                        set_or_remove(map, "spec", spec);
                    }
                    let object = with_rv(Kind::Lease, value).map_err(internal)?;
                    entry.object = object.clone();
                    object
                }
                None => {
                    let object = build(
                        Kind::Lease,
                        &lease,
                        &new_uid(),
                        now_timestamp().into(),
                        None,
                    )
                    .map_err(internal)?;
                    state.objects.insert(
                        key.clone(),
                        Entry {
                            object: object.clone(),
                            doc: None,
                            writer_status: None,
                            writer_owned: true,
                            deadline: None,
                        },
                    );
                    object
                }
            };
            ops.push(shared.write_op("leases", &key.namespace, &key.name, object.value()));
            state.emit(ObjectEvent::Applied(object.clone()));
            Ok(object.value().clone())
        })
        .await
    }
}

impl ClusterWriter for ManifestWriter {
    /// Creates the Node (uid, creationTimestamp, resourceVersion; `status` kept), or returns
    /// the one that exists.
    async fn create_node(&self, mut node: Value) -> std::result::Result<Value, ApiError> {
        let name = prepare(&mut node, "Node", &["v1"], None, None)?;
        let key = ObjectKey::new(Kind::Node, "", name);
        self.write(move |shared, state, ops| {
            if let Some(entry) = state.objects.get(&key) {
                return Ok(entry.object.value().clone());
            }
            let object = build(Kind::Node, &node, &new_uid(), now_timestamp().into(), None)
                .map_err(internal)?;
            state.objects.insert(
                key.clone(),
                Entry {
                    writer_status: object.value().get("status").cloned(),
                    object: object.clone(),
                    doc: None,
                    writer_owned: true,
                    deadline: None,
                },
            );
            ops.push(shared.write_op("nodes", "", &key.name, object.value()));
            state.emit(ObjectEvent::Applied(object.clone()));
            Ok(object.value().clone())
        })
        .await
    }

    /// Strategic merge of the patch's `status` (nothing else changes); `404` for a missing
    /// node. A patch that changes nothing returns the node as it is.
    async fn patch_node_status(
        &self,
        name: &str,
        patch: Value,
    ) -> std::result::Result<Value, ApiError> {
        if !valid_name(name) {
            return Err(ApiError::not_found("nodes", name));
        }
        self.patch_status(ObjectKey::new(Kind::Node, "", name), patch)
            .await
    }

    /// Creates the Lease, or replaces the `spec` of the existing one.
    async fn create_lease(
        &self,
        namespace: &str,
        lease: Value,
    ) -> std::result::Result<Value, ApiError> {
        self.put_lease(namespace, None, lease).await
    }

    /// Replaces the Lease's `spec` (creating a missing Lease).
    async fn update_lease(
        &self,
        namespace: &str,
        name: &str,
        lease: Value,
    ) -> std::result::Result<Value, ApiError> {
        self.put_lease(namespace, Some(name), lease).await
    }

    /// Strategic merge of the patch's `status` (nothing else changes); `404` for a missing
    /// pod, `409 Conflict` when the patch's `metadata.uid` is another pod's.
    async fn patch_pod_status(
        &self,
        namespace: &str,
        name: &str,
        patch: Value,
    ) -> std::result::Result<Value, ApiError> {
        if !valid_namespace(namespace) || !valid_name(name) {
            return Err(ApiError::not_found("pods", name));
        }
        self.patch_status(ObjectKey::new(Kind::Pod, namespace, name), patch)
            .await
    }

    /// Deletes the pod (a `Deleted` event, its status file removed) and returns it; `409
    /// Conflict` when `options.preconditions.uid` is another pod's. A pod still in the
    /// manifests is created again by the next scan.
    async fn delete_pod(
        &self,
        namespace: &str,
        name: &str,
        options: Value,
    ) -> std::result::Result<Value, ApiError> {
        if !valid_namespace(namespace) || !valid_name(name) {
            return Err(ApiError::not_found("pods", name));
        }
        if !options.is_object() && !options.is_null() {
            return Err(ApiError::bad_request("DeleteOptions is not a JSON object"));
        }
        let precondition = options
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let key = ObjectKey::new(Kind::Pod, namespace, name);
        self.write(move |shared, state, ops| {
            let Some(entry) = state.objects.get(&key) else {
                return Err(ApiError::not_found("pods", &key.name));
            };
            if let Some(uid) = precondition
                && uid != entry.object.uid()
            {
                return Err(conflict(format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    entry.object.uid()
                )));
            }
            state.saved_pod_status.remove(&key);
            let object = state
                .remove(&key, &shared.config, ops)
                .ok_or_else(|| ApiError::not_found("pods", &key.name))?;
            Ok(object.value().clone())
        })
        .await
    }

    /// The `status` of the DeviceStatus `namespace/name`.
    async fn get_device_status(
        &self,
        namespace: &str,
        name: &str,
    ) -> std::result::Result<Option<Value>, ApiError> {
        let state = self.shared.state();
        Ok(state
            .device_statuses
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|value| value.get("status").cloned().unwrap_or_else(|| json!({}))))
    }

    /// JSON merge patch (RFC 7386) of `status` into the DeviceStatus; created (owned by the
    /// Device `device_uid`) when missing or owned by another incarnation of the Device.
    async fn apply_device_status(
        &self,
        namespace: &str,
        name: &str,
        device_uid: &str,
        status: Value,
    ) -> std::result::Result<Value, ApiError> {
        if !valid_namespace(namespace) || !valid_name(name) {
            return Err(invalid(format!(
                "{namespace}/{name} is not a valid namespace and name"
            )));
        }
        let key = (namespace.to_owned(), name.to_owned());
        let device_uid = device_uid.to_owned();
        self.write(move |shared, state, ops| {
            let existing = state.device_statuses.get(&key).filter(|value| {
                value
                    .pointer("/metadata/ownerReferences/0/uid")
                    .and_then(Value::as_str)
                    == Some(device_uid.as_str())
            });
            let mut value = match existing {
                Some(value) => value.clone(),
                None => {
                    let mut value =
                        crate::cluster::new_device_status(&key.0, &key.1, &device_uid, Value::Null);
                    if let Some(object) = value.as_object_mut() {
                        object.remove("status");
                    }
                    if let Some(meta) = value["metadata"].as_object_mut() {
                        meta.insert("uid".into(), new_uid().into());
                        meta.insert("creationTimestamp".into(), now_timestamp().into());
                    }
                    value
                }
            };
            let mut patch = Map::new();
            patch.insert("status".into(), status);
            merge_patch(&mut value, &Value::Object(patch));
            if existing == Some(&value) {
                return Ok(value);
            }
            if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("resourceVersion".into(), next_rv().to_string().into());
            }
            ops.push(shared.write_op(DEVICE_STATUSES, &key.0, &key.1, &value));
            state.device_statuses.insert(key, value.clone());
            Ok(value)
        })
        .await
    }

    /// Keeps the Event (replacing one of the same name); the oldest beyond
    /// [`ManifestConfig::MAX_EVENTS`] are dropped.
    /// Manifest mode has no API server to issue tokens: always a `400 BadRequest` saying so,
    /// which the edge shows in the pod's status.
    async fn create_token(
        &self,
        namespace: &str,
        service_account: &str,
        _request: Value,
    ) -> std::result::Result<Value, ApiError> {
        Err(ApiError::bad_request(format!(
            "service-account tokens ({namespace}/{service_account}) need a cluster: manifest mode has no API server to issue them"
        )))
    }

    /// `status_dir/sent/<node>.txt`.
    async fn load_sent_record(&self, node: &str) -> std::result::Result<Option<String>, ApiError> {
        let Some(path) = self.sent_record_path(node) else {
            return Ok(None);
        };
        let _files = self.shared.files.lock().await;
        match tokio::fs::read_to_string(&path).await {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ApiError::internal(format!("{}: {e}", path.display()))),
        }
    }

    /// Writes `status_dir/sent/<node>.txt` (atomically, as every status file).
    async fn store_sent_record(
        &self,
        node: &str,
        _node_uid: Option<&str>,
        record: String,
    ) -> std::result::Result<(), ApiError> {
        let Some(path) = self.sent_record_path(node) else {
            return Err(ApiError::bad_request(format!(
                "{node:?} is not a node name"
            )));
        };
        let _files = self.shared.files.lock().await;
        self.shared
            .run_file_ops(vec![FileOp::Write(path, record.into_bytes())])
            .await
            .map_err(ApiError::internal)
    }

    async fn record_event(
        &self,
        namespace: &str,
        mut event: Value,
    ) -> std::result::Result<Value, ApiError> {
        let name = prepare(
            &mut event,
            "Event",
            &["v1", "events.k8s.io/v1"],
            Some(namespace),
            None,
        )?;
        let key = (namespace.to_owned(), name);
        self.write(move |shared, state, ops| {
            let (uid, created) = match state.events.remove(&key) {
                Some((rv, old)) => {
                    state.event_order.remove(&rv);
                    let meta = &old["metadata"];
                    (meta["uid"].clone(), meta["creationTimestamp"].clone())
                }
                None => (new_uid().into(), now_timestamp().into()),
            };
            let rv = next_rv();
            if let Some(meta) = event.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("uid".into(), uid);
                meta.insert("creationTimestamp".into(), created);
                meta.insert("resourceVersion".into(), rv.to_string().into());
            }
            ops.push(shared.write_op(EVENTS, &key.0, &key.1, &event));
            state.event_order.insert(rv, key.clone());
            state.events.insert(key, (rv, event.clone()));
            while state.events.len() > ManifestConfig::MAX_EVENTS {
                let Some((_, oldest)) = state.event_order.pop_first() else {
                    break;
                };
                state.events.remove(&oldest);
                ops.push(shared.remove_op(EVENTS, &oldest.0, &oldest.1));
            }
            Ok(event)
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// Patches
// ---------------------------------------------------------------------------------------------

/// The merge key of the lists in Pod and Node status (Kubernetes' `patchMergeKey`); other
/// lists are replaced.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "conditions" | "addresses" => Some("type"),
        "containerStatuses" | "initContainerStatuses" | "ephemeralContainerStatuses" => {
            Some("name")
        }
        "podIPs" | "hostIPs" => Some("ip"),
        _ => None,
    }
}

fn is_directive(value: &Value, directive: &str) -> bool {
    value.get("$patch").and_then(Value::as_str) == Some(directive)
}

/// A Kubernetes strategic merge patch: maps merge, `null` deletes, lists with a merge key
/// merge by it, other lists are replaced; `$patch`, `$setElementOrder/`,
/// `$deleteFromPrimitiveList/` and `$retainKeys` directives are honoured.
fn strategic_merge(target: &mut Value, patch: &Value) {
    let Some(patch_map) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if is_directive(patch, "replace") {
        let mut replacement = patch_map.clone();
        replacement.remove("$patch");
        *target = Value::Null;
        strategic_merge(target, &Value::Object(replacement));
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(map) = target.as_object_mut() else {
        return;
    };
    for (field, value) in patch_map {
        if field.starts_with('$') {
            continue;
        }
        if value.is_null() || is_directive(value, "delete") {
            map.remove(field);
            continue;
        }
        match (value, merge_key(field)) {
            (Value::Array(items), Some(key)) => {
                merge_list(map.entry(field.clone()).or_insert(Value::Null), items, key);
            }
            (Value::Object(_), _) => {
                strategic_merge(map.entry(field.clone()).or_insert(Value::Null), value);
            }
            _ => {
                map.insert(field.clone(), clean(value));
            }
        }
    }
    for (directive, value) in patch_map {
        if let Some(field) = directive.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(remove)) = (map.get_mut(field), value.as_array())
            {
                list.retain(|item| !remove.contains(item));
            }
        } else if let Some(field) = directive.strip_prefix("$setElementOrder/") {
            if let (Some(Value::Array(list)), Some(order)) = (map.get_mut(field), value.as_array())
            {
                reorder(list, order, merge_key(field));
            }
        } else if directive == "$retainKeys"
            && let Some(keep) = value.as_array()
        {
            map.retain(|field, _| keep.iter().any(|k| k.as_str() == Some(field)));
        }
    }
}

/// A patch value without directives.
fn clean(value: &Value) -> Value {
    match value {
        Value::Object(_) => {
            let mut out = Value::Null;
            strategic_merge(&mut out, value);
            out
        }
        Value::Array(items) => Value::Array(items.iter().map(clean).collect()),
        other => other.clone(),
    }
}

fn merge_list(target: &mut Value, items: &[Value], key: &str) {
    let keyed = items
        .iter()
        .all(|item| item.get(key).is_some_and(|k| !k.is_null()));
    if !keyed {
        *target = Value::Array(
            items
                .iter()
                .filter(|item| !is_directive(item, "delete"))
                .map(clean)
                .collect(),
        );
        return;
    }
    let old = match target.take() {
        Value::Array(list) => list,
        _ => Vec::new(),
    };
    let mut index: HashMap<String, usize> = HashMap::new();
    for (i, item) in old.iter().enumerate() {
        if let Some(k) = item.get(key) {
            index.entry(k.to_string()).or_insert(i);
        }
    }
    let mut slots: Vec<Option<Value>> = old.into_iter().map(Some).collect();
    for item in items {
        let id = item[key].to_string();
        if is_directive(item, "delete") {
            if let Some(i) = index.remove(&id)
                && let Some(slot) = slots.get_mut(i)
            {
                *slot = None;
            }
            continue;
        }
        match index.get(&id).and_then(|&i| slots.get_mut(i)) {
            Some(Some(existing)) => strategic_merge(existing, item),
            _ => {
                index.insert(id, slots.len());
                slots.push(Some(clean(item)));
            }
        }
    }
    *target = Value::Array(slots.into_iter().flatten().collect());
}

/// Orders `list` as `order` says (by merge key, or by value for lists of scalars); items not
/// named keep their relative order after the named ones.
fn reorder(list: &mut [Value], order: &[Value], key: Option<&str>) {
    let id = |item: &Value| match key {
        Some(key) => item.get(key).map(Value::to_string),
        None => Some(item.to_string()),
    };
    let position: HashMap<String, usize> = order
        .iter()
        .enumerate()
        .filter_map(|(i, item)| id(item).map(|id| (id, i)))
        .collect();
    list.sort_by_key(|item| {
        id(item)
            .and_then(|id| position.get(&id).copied())
            .unwrap_or(usize::MAX)
    });
}

/// A JSON merge patch (RFC 7386).
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch_map) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Some(map) = target.as_object_mut() {
        for (field, value) in patch_map {
            if value.is_null() {
                map.remove(field);
            } else {
                merge_patch(map.entry(field.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategic_merge_by_keys_and_directives() {
        let mut status = json!({
            "phase": "Pending",
            "conditions": [{"type": "Ready", "status": "False"}, {"type": "Initialized", "status": "True"}],
            "containerStatuses": [{"name": "a", "ready": false}],
            "hostIPs": [{"ip": "10.0.0.1"}],
            "reason": "x",
        });
        strategic_merge(
            &mut status,
            &json!({
                "phase": "Running",
                "$setElementOrder/conditions": [{"type": "Initialized"}, {"type": "Ready"}],
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "b", "ready": true}, {"name": "a", "ready": true}],
                "hostIPs": [{"ip": "10.0.0.1", "$patch": "delete"}],
                "reason": null,
            }),
        );
        assert_eq!(
            status,
            json!({
                "phase": "Running",
                "conditions": [{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "a", "ready": true}, {"name": "b", "ready": true}],
                "hostIPs": [],
            })
        );
    }

    #[test]
    fn strategic_merge_replaces_unkeyed_lists() {
        let mut value = json!({"images": [{"names": ["a"]}], "m": {"x": 1}});
        strategic_merge(
            &mut value,
            &json!({"images": [{"names": ["b"]}], "m": {"$patch": "replace", "y": 2}}),
        );
        assert_eq!(value, json!({"images": [{"names": ["b"]}], "m": {"y": 2}}));
    }

    #[test]
    fn json_merge_patch() {
        let mut value = json!({"a": {"b": 1, "c": 2}, "d": [1]});
        merge_patch(
            &mut value,
            &json!({"a": {"b": null, "e": {"f": null, "g": 3}}, "d": [2]}),
        );
        assert_eq!(value, json!({"a": {"c": 2, "e": {"g": 3}}, "d": [2]}));
    }

    #[test]
    fn names() {
        assert!(valid_name("nginx.1a2b-3"));
        for bad in ["", "../x", "a/b", "A", "-a", "a.", "a..b", "a_b"] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(valid_namespace("kube-node-lease"));
        assert!(!valid_namespace("a.b"));
    }

    #[test]
    fn yaml_aliases_are_bounded() {
        let mut yaml = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..12 {
            let prev = if i == 0 {
                "a".to_owned()
            } else {
                format!("l{}", i - 1)
            };
            yaml.push_str(&format!(
                "l{i}: &l{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        let reason = parse_manifest(Path::new("bomb.yaml"), yaml.as_bytes())
            .err()
            .unwrap_or_default();
        assert!(reason.contains("size limit"), "{reason}");
    }
}
