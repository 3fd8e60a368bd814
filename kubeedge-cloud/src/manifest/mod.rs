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

mod patch;
mod source;
mod status_files;
mod writer;
mod yaml;

use patch::*;
use status_files::*;
use yaml::*;

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
                    let created = entry
                        .object
                        .pointer("/metadata/creationTimestamp")
                        .unwrap_or_default();
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
            let value = entry.object.to_value();
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
                let mut value = value;
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
        let object = with_rv(key.kind, entry.object.to_value()).unwrap_or(entry.object);
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
