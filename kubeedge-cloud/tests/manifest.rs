//! Manifest mode against real folders and files: what the source reports for a folder of YAML,
//! and what the writer keeps and reports.

#![cfg(feature = "manifest")]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};
use std::time::Duration;

use kubeedge_cloud::{
    ClusterWriter, Kind, ManifestConfig, ManifestSource, ManifestWriter, Object, ObjectEvent,
};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Every test runs under this deadline.
const DEADLINE: Duration = Duration::from_secs(60);

async fn deadline<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(DEADLINE, test)
        .await
        .expect("the test did not finish in time")
}

// --- captured logs ---------------------------------------------------------------------------

static LOGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Records every log event as `LEVEL field=value ...`.
struct Capture;

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = event.metadata().level().to_string();
        event.record(&mut Fields(&mut line));
        LOGS.lock().unwrap().push(line);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn capture_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        tracing::subscriber::set_global_default(Capture).expect("no other subscriber");
    });
}

/// Whether an error was logged that mentions all of `words`.
fn logged_error(words: &[&str]) -> bool {
    LOGS.lock()
        .unwrap()
        .iter()
        .any(|line| line.starts_with("ERROR") && words.iter().all(|w| line.contains(w)))
}

fn logged_warning(words: &[&str]) -> bool {
    LOGS.lock()
        .unwrap()
        .iter()
        .any(|line| line.starts_with("WARN") && words.iter().all(|w| line.contains(w)))
}

// --- harness ---------------------------------------------------------------------------------

struct Dirs {
    manifests: TempDir,
    status: TempDir,
}

impl Dirs {
    fn new() -> Self {
        capture_logs();
        Self {
            manifests: tempfile::tempdir().unwrap(),
            status: tempfile::tempdir().unwrap(),
        }
    }

    fn config(&self) -> ManifestConfig {
        let mut config = ManifestConfig::new(self.manifests.path(), self.status.path());
        config.scan_interval = Duration::from_millis(20);
        config
    }

    /// Writes a manifest atomically (the scanner never sees half of it).
    fn put(&self, name: &str, content: &str) -> PathBuf {
        let path = self.manifests.path().join(name);
        let tmp = self.manifests.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }

    fn remove(&self, name: &str) {
        std::fs::remove_file(self.manifests.path().join(name)).unwrap();
    }

    fn status_file(&self, plural: &str, file: &str) -> PathBuf {
        self.status.path().join(plural).join(file)
    }
}

struct Harness {
    dirs: Dirs,
    writer: ManifestWriter,
    events: mpsc::Receiver<ObjectEvent>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<kubeedge_cloud::Result<()>>,
    markers: usize,
}

impl Harness {
    fn open(dirs: Dirs) -> (ManifestSource, ManifestWriter, Dirs) {
        Self::open_with(dirs, Dirs::config)
    }

    fn open_with(
        dirs: Dirs,
        config: impl FnOnce(&Dirs) -> ManifestConfig,
    ) -> (ManifestSource, ManifestWriter, Dirs) {
        let (source, writer) = ManifestSource::open(config(&dirs)).unwrap();
        (source, writer, dirs)
    }

    fn run((source, writer, dirs): (ManifestSource, ManifestWriter, Dirs)) -> Self {
        let (tx, events) = mpsc::channel(64);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(source.run(tx, shutdown.clone()));
        Self {
            dirs,
            writer,
            events,
            shutdown,
            task,
            markers: 0,
        }
    }

    fn start(dirs: Dirs) -> Self {
        Self::run(Self::open(dirs))
    }

    async fn stop(self) -> Dirs {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
        self.dirs
    }

    async fn next(&mut self) -> ObjectEvent {
        self.events.recv().await.expect("the source stopped")
    }

    /// The first scan: one `Listed` per kind.
    async fn listed(&mut self) -> BTreeMap<Kind, Vec<Object>> {
        let mut listed = BTreeMap::new();
        for _ in Kind::ALL {
            match self.next().await {
                ObjectEvent::Listed { kind, objects } => {
                    assert!(
                        listed.insert(kind, objects).is_none(),
                        "{kind:?} listed twice"
                    );
                }
                other => panic!("expected Listed, got {other:?}"),
            }
        }
        listed
    }

    async fn applied(&mut self) -> Object {
        match self.next().await {
            ObjectEvent::Applied(object) => object,
            other => panic!("expected Applied, got {other:?}"),
        }
    }

    async fn deleted(&mut self) -> Object {
        match self.next().await {
            ObjectEvent::Deleted(object) => object,
            other => panic!("expected Deleted, got {other:?}"),
        }
    }

    /// Adds a marker ConfigMap and checks it is the next event: nothing happened before it.
    async fn nothing_else(&mut self) {
        self.markers += 1;
        let name = format!("marker-{}", self.markers);
        self.dirs
            .put(&format!("zz-{name}.yaml"), &config_map(&name, "x"));
        let object = self.applied().await;
        assert_eq!(object.name(), name, "an event came before the marker");
    }
}

fn config_map(name: &str, value: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  key: {value}\n")
}

fn pod_yaml(name: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeName: edge-1\n{extra_spec}  containers:\n  - name: app\n    image: nginx\n"
    )
}

fn rv(object: &Object) -> u64 {
    object
        .resource_version_u64()
        .expect("a numeric resourceVersion")
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

// --- the source ------------------------------------------------------------------------------

#[tokio::test]
async fn first_scan_lists_every_kind_and_fills_metadata() {
    deadline(async {
        let dirs = Dirs::new();
        dirs.put("a-pod.yaml", &pod_yaml("web", ""));
        dirs.put(
            "b-config.yml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: apps}\ndata: {a: b}\n---\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: token}\nstringData: {t: x}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: ignored}\n",
        );
        dirs.put(
            "c-devices.json",
            r#"{"apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceModel", "metadata": {"name": "thermometer"}}
               {"apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device", "metadata": {"name": "t1", "uid": "given-uid"}, "spec": {"nodeName": "edge-1"}}"#,
        );
        dirs.put("notes.txt", "not a manifest");
        let (source, writer, dirs) = Harness::open(dirs);
        // The writer works before the source runs; its node is part of the first listing.
        let node = writer
            .create_node(json!({"metadata": {"name": "edge-1"}}))
            .await
            .unwrap();
        let mut h = Harness::run((source, writer, dirs));
        let listed = h.listed().await;
        assert_eq!(listed.len(), 7);
        assert!(listed[&Kind::Lease].is_empty());
        assert_eq!(listed[&Kind::Node].len(), 1);
        assert_eq!(listed[&Kind::Node][0].uid(), node["metadata"]["uid"]);

        let pod = &listed[&Kind::Pod][0];
        assert_eq!(pod.key().to_string(), "Pod/default/web");
        assert_eq!(pod.uid().len(), 36, "a UUID");
        assert!(rv(pod) > 0);
        assert!(pod.to_value()["metadata"]["creationTimestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')));
        assert_eq!(listed[&Kind::ConfigMap][0].namespace(), "apps");
        assert_eq!(listed[&Kind::Secret][0].namespace(), "default");
        assert_eq!(listed[&Kind::DeviceModel][0].name(), "thermometer");
        assert_eq!(listed[&Kind::Device][0].uid(), "given-uid");
        assert!(logged_warning(&["b-config.yml", "Service"]));

        // Every version is distinct.
        let mut versions: Vec<u64> = listed.values().flatten().map(rv).collect();
        let count = versions.len();
        versions.sort_unstable();
        versions.dedup();
        assert_eq!(versions.len(), count);
        h.stop().await;
    })
    .await;
}

#[tokio::test]
async fn uids_are_stable_across_opens() {
    deadline(async {
        let dirs = Dirs::new();
        dirs.put("pod.yaml", &pod_yaml("web", ""));
        let mut h = Harness::start(dirs);
        let first = h.listed().await[&Kind::Pod][0].clone();
        let dirs = h.stop().await;
        let mut h = Harness::start(dirs);
        let again = h.listed().await[&Kind::Pod][0].clone();
        assert_eq!(first.uid(), again.uid());
        assert!(rv(&again) > rv(&first));
        h.stop().await;
    })
    .await;
}

#[tokio::test]
async fn an_edit_is_applied_and_an_unchanged_rescan_is_quiet() {
    deadline(async {
        let dirs = Dirs::new();
        dirs.put("cm.yaml", &config_map("settings", "one"));
        let mut h = Harness::start(dirs);
        let before = h.listed().await[&Kind::ConfigMap][0].clone();

        h.dirs.put("cm.yaml", &config_map("settings", "two"));
        let after = h.applied().await;
        assert_eq!(after.name(), "settings");
        assert_eq!(after.to_value()["data"]["key"], "two");
        assert_eq!(after.uid(), before.uid());
        assert!(rv(&after) > rv(&before));
        assert_eq!(
            after.to_value()["metadata"]["creationTimestamp"],
            before.to_value()["metadata"]["creationTimestamp"]
        );

        // The same content again (a new file, same objects): no event.
        h.dirs.put(
            "cm.yaml",
            &format!("# saved again\n{}", config_map("settings", "two")),
        );
        h.nothing_else().await;

        // A removed ConfigMap.
        h.dirs.remove("cm.yaml");
        let gone = h.deleted().await;
        assert_eq!(gone.name(), "settings");
        assert!(rv(&gone) > rv(&after));
        h.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_broken_file_keeps_its_objects() {
    deadline(async {
        let dirs = Dirs::new();
        dirs.put("cm.yaml", &config_map("settings", "one"));
        dirs.put("pod.yaml", &pod_yaml("web", ""));
        let mut h = Harness::start(dirs);
        h.listed().await;

        // Half a file, then one that is not YAML at all.
        let path = h.dirs.put(
            "pod.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: [",
        );
        h.nothing_else().await;
        assert!(logged_error(&[&path.display().to_string(), "refused"]));
        h.dirs.put("cm.yaml", "\u{0}\u{1}: : :\n\t- [");
        h.nothing_else().await;

        // Fixed: the same objects as before, so nothing changes.
        h.dirs.put("pod.yaml", &pod_yaml("web", ""));
        h.dirs.put("cm.yaml", &config_map("settings", "one"));
        h.nothing_else().await;
        h.stop().await;
    })
    .await;
}

#[tokio::test]
async fn an_oversize_file_is_refused() {
    deadline(async {
        let dirs = Dirs::new();
        let padding = "#".repeat(ManifestConfig::MAX_FILE_BYTES as usize);
        let path = dirs.put(
            "big.yaml",
            &format!("{}{padding}\n", config_map("big", "x")),
        );
        dirs.put("small.yaml", &config_map("small", "x"));
        let mut h = Harness::start(dirs);
        let listed = h.listed().await;
        let names: Vec<&str> = listed[&Kind::ConfigMap].iter().map(Object::name).collect();
        assert_eq!(names, ["small"]);
        assert!(logged_error(&[&path.display().to_string(), "limit"]));
        h.stop().await;
    })
    .await;
}

#[tokio::test]
async fn yaml_aliases_cannot_blow_up() {
    deadline(async {
        let dirs = Dirs::new();
        let mut bomb = String::from("a: &a [\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\", x, x, x, x, x, x, x, x]\n");
        for i in 0..9 {
            let prev = if i == 0 { "a".to_owned() } else { format!("b{}", i - 1) };
            bomb.push_str(&format!(
                "b{i}: &b{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        let path = dirs.put("bomb.yaml", &bomb);
        let mut h = Harness::start(dirs);
        assert!(h.listed().await.values().all(Vec::is_empty));
        assert!(logged_error(&[&path.display().to_string()]));
        h.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_list_document_declares_its_items() {
    deadline(async {
        let dirs = Dirs::new();
        dirs.put(
            "list.yaml",
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: one}\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: two, namespace: apps}\n  spec: {nodeName: edge-1}\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: Not_Valid}\n",
        );
        let mut h = Harness::start(dirs);
        let listed = h.listed().await;
        assert_eq!(listed[&Kind::ConfigMap][0].name(), "one");
        assert_eq!(listed[&Kind::Pod].len(), 1);
        assert_eq!(listed[&Kind::Pod][0].key().to_string(), "Pod/apps/two");
        assert!(logged_warning(&["list.yaml", "item 3"]));
        h.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_removed_pod_terminates_until_its_node_deletes_it() {
    deadline(async {
        let dirs = Dirs::new();
        dirs.put("pod.yaml", &pod_yaml("web", ""));
        let mut h = Harness::start(dirs);
        let pod = h.listed().await[&Kind::Pod][0].clone();
        assert!(!pod.is_terminating());

        // The edge reports a status, so there is a status file.
        h.writer
            .patch_pod_status("default", "web", json!({"status": {"phase": "Running"}}))
            .await
            .unwrap();
        let running = h.applied().await;
        let status_file = h.dirs.status_file("pods", "default_web.json");
        assert!(status_file.exists());

        h.dirs.remove("pod.yaml");
        let terminating = h.applied().await;
        assert!(terminating.is_terminating());
        assert_eq!(terminating.uid(), pod.uid());
        assert_eq!(
            terminating.to_value()["metadata"]["deletionGracePeriodSeconds"],
            30
        );
        assert_eq!(terminating.to_value()["status"]["phase"], "Running");
        assert!(rv(&terminating) > rv(&running));

        // Declared again while terminating: created again once it is gone.
        h.dirs.put("pod-again.yaml", &pod_yaml("web", ""));
        h.nothing_else().await;

        let wrong = h
            .writer
            .delete_pod(
                "default",
                "web",
                json!({"gracePeriodSeconds": 0, "preconditions": {"uid": "someone-else"}}),
            )
            .await
            .unwrap_err();
        assert_eq!(wrong.code, 409);
        assert!(status_file.exists());

        let deleted = h
            .writer
            .delete_pod(
                "default",
                "web",
                json!({"gracePeriodSeconds": 0, "preconditions": {"uid": pod.uid()}}),
            )
            .await
            .unwrap();
        assert_eq!(deleted["metadata"]["uid"], pod.uid());
        let gone = h.deleted().await;
        assert_eq!(gone.uid(), pod.uid());
        assert!(!status_file.exists());

        let recreated = h.applied().await;
        assert_eq!(recreated.name(), "web");
        assert!(!recreated.is_terminating());
        assert!(recreated.to_value().get("status").is_none());
        assert!(rv(&recreated) > rv(&gone));

        let missing = h
            .writer
            .delete_pod("default", "nothing", Value::Null)
            .await
            .unwrap_err();
        assert_eq!(missing.code, 404);
        h.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_terminating_pod_without_a_node_is_deleted_after_the_timeout() {
    deadline(async {
        let dirs = Dirs::new();
        dirs.put(
            "pod.yaml",
            &pod_yaml("web", "  terminationGracePeriodSeconds: 1\n"),
        );
        // An unscheduled pod goes at once, like with the API server.
        dirs.put(
            "pending.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: pending}\nspec: {containers: []}\n",
        );
        let (source, writer, dirs) = Harness::open_with(dirs, |dirs| {
            let mut config = dirs.config();
            config.delete_timeout = Duration::from_millis(100);
            config
        });
        let mut h = Harness::run((source, writer, dirs));
        assert_eq!(h.listed().await[&Kind::Pod].len(), 2);

        h.dirs.remove("pending.yaml");
        assert_eq!(h.deleted().await.name(), "pending");

        h.dirs.remove("pod.yaml");
        let terminating = h.applied().await;
        assert!(terminating.is_terminating());
        assert_eq!(
            terminating.to_value()["metadata"]["deletionGracePeriodSeconds"],
            1
        );
        let gone = h.deleted().await;
        assert_eq!(gone.uid(), terminating.uid());
        assert!(rv(&gone) > rv(&terminating));
        h.stop().await;
    })
    .await;
}

// --- the writer ------------------------------------------------------------------------------

#[tokio::test]
async fn create_node_twice_returns_the_same_node() {
    deadline(async {
        let mut h = Harness::start(Dirs::new());
        h.listed().await;
        let node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "edge-1", "labels": {"node-role.kubernetes.io/edge": ""}, "uid": "from-edge"},
            "status": {"phase": "Running"},
        });
        let first = h.writer.create_node(node.clone()).await.unwrap();
        let uid = first["metadata"]["uid"].as_str().unwrap().to_owned();
        assert_ne!(uid, "from-edge");
        assert_eq!(first["status"]["phase"], "Running");
        let applied = h.applied().await;
        assert_eq!(applied.uid(), uid);

        let second = h.writer.create_node(node).await.unwrap();
        assert_eq!(second, first);
        h.nothing_else().await;

        let file = read_json(&h.dirs.status_file("nodes", "edge-1.json"));
        assert_eq!(file["metadata"]["uid"], uid.as_str());

        let bad = h
            .writer
            .create_node(json!({"metadata": {"name": "../escape"}}))
            .await
            .unwrap_err();
        assert_eq!(bad.code, 422);
        let missing = h
            .writer
            .patch_node_status("edge-2", json!({"status": {}}))
            .await
            .unwrap_err();
        assert_eq!(missing.code, 404);

        let patched = h
            .writer
            .patch_node_status(
                "edge-1",
                json!({"metadata": {"labels": {"x": "y"}}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
            )
            .await
            .unwrap();
        assert_eq!(patched["status"]["conditions"][0]["type"], "Ready");
        assert!(patched["metadata"]["labels"].get("x").is_none());
        assert_eq!(h.applied().await.uid(), uid);
        h.stop().await;
    })
    .await;
}

#[tokio::test]
async fn patch_pod_status_merges_like_the_api_server() {
    deadline(async {
        let dirs = Dirs::new();
        dirs.put("pod.yaml", &pod_yaml("web", ""));
        let mut h = Harness::start(dirs);
        let pod = h.listed().await[&Kind::Pod][0].clone();

        let first = h
            .writer
            .patch_pod_status(
                "default",
                "web",
                json!({
                    "metadata": {"uid": pod.uid()},
                    "status": {
                        "phase": "Pending",
                        "conditions": [
                            {"type": "Initialized", "status": "True"},
                            {"type": "Ready", "status": "False"},
                        ],
                        "containerStatuses": [{"name": "app", "ready": false, "restartCount": 0}],
                    },
                }),
            )
            .await
            .unwrap();
        assert_eq!(first["status"]["phase"], "Pending");
        let applied = h.applied().await;
        assert!(rv(&applied) > rv(&pod));

        let second = h
            .writer
            .patch_pod_status(
                "default",
                "web",
                json!({
                    "metadata": {"uid": pod.uid()},
                    "spec": {"nodeName": "elsewhere"},
                    "status": {
                        "phase": "Running",
                        "$setElementOrder/conditions": [{"type": "Initialized"}, {"type": "Ready"}],
                        "conditions": [{"type": "Ready", "status": "True"}],
                        "containerStatuses": [{"name": "app", "ready": true}],
                    },
                }),
            )
            .await
            .unwrap();
        let status = &second["status"];
        assert_eq!(status["phase"], "Running");
        assert_eq!(
            status["conditions"],
            json!([{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "True"}])
        );
        assert_eq!(
            status["containerStatuses"],
            json!([{"name": "app", "ready": true, "restartCount": 0}])
        );
        assert_eq!(
            second["spec"]["nodeName"], "edge-1",
            "only the status changes"
        );
        let applied_again = h.applied().await;
        assert_eq!(applied_again.to_value(), second);
        assert!(rv(&applied_again) > rv(&applied));

        let file = read_json(&h.dirs.status_file("pods", "default_web.json"));
        assert_eq!(file, second);

        let conflict = h
            .writer
            .patch_pod_status(
                "default",
                "web",
                json!({"metadata": {"uid": "another-pod"}, "status": {"phase": "Failed"}}),
            )
            .await
            .unwrap_err();
        assert_eq!(conflict.code, 409);
        let missing = h
            .writer
            .patch_pod_status("default", "nothing", json!({"status": {}}))
            .await
            .unwrap_err();
        assert_eq!(missing.code, 404);

        // A manifest edit keeps the status the edge reported.
        h.dirs.put(
            "pod.yaml",
            &pod_yaml("web", "  terminationGracePeriodSeconds: 5\n"),
        );
        let edited = h.applied().await;
        assert_eq!(edited.to_value()["status"]["phase"], "Running");
        assert_eq!(
            edited.to_value()["spec"]["terminationGracePeriodSeconds"],
            5
        );
        h.stop().await;
    })
    .await;
}

#[tokio::test]
async fn leases_are_created_and_renewed() {
    deadline(async {
        let mut h = Harness::start(Dirs::new());
        h.listed().await;
        let lease = |time: &str| {
            json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": "edge-1", "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": "edge-1", "leaseDurationSeconds": 40, "renewTime": time},
            })
        };
        let created = h
            .writer
            .create_lease("kube-node-lease", lease("2026-01-01T00:00:00.000000Z"))
            .await
            .unwrap();
        let applied = h.applied().await;
        assert_eq!(applied.key().to_string(), "Lease/kube-node-lease/edge-1");

        let renewed = h
            .writer
            .update_lease(
                "kube-node-lease",
                "edge-1",
                lease("2026-01-01T00:00:10.000000Z"),
            )
            .await
            .unwrap();
        assert_eq!(renewed["metadata"]["uid"], created["metadata"]["uid"]);
        assert_eq!(renewed["spec"]["renewTime"], "2026-01-01T00:00:10.000000Z");
        let applied_again = h.applied().await;
        assert!(rv(&applied_again) > rv(&applied));
        let file = read_json(&h.dirs.status_file("leases", "kube-node-lease_edge-1.json"));
        assert_eq!(file, renewed);

        // Renewing a lease that does not exist creates it.
        let mut other = lease("2026-01-01T00:00:00.000000Z");
        other["metadata"]["name"] = "edge-2".into();
        h.writer
            .update_lease("kube-node-lease", "edge-2", other.clone())
            .await
            .unwrap();
        assert_eq!(h.applied().await.name(), "edge-2");

        let mismatch = h
            .writer
            .update_lease("kube-node-lease", "edge-3", other)
            .await
            .unwrap_err();
        assert_eq!(mismatch.code, 400);
        h.stop().await;
    })
    .await;
}

#[tokio::test]
async fn device_status_is_created_then_merged() {
    deadline(async {
        let dirs = Dirs::new();
        let (_source, writer, dirs) = Harness::open(dirs);
        assert_eq!(
            writer.get_device_status("default", "t1").await.unwrap(),
            None
        );
        let created = writer
            .apply_device_status(
                "default",
                "t1",
                "device-uid",
                json!({"twins": [{"propertyName": "temperature", "reported": {"value": "20"}}]}),
            )
            .await
            .unwrap();
        assert_eq!(created["kind"], "DeviceStatus");
        assert_eq!(created["apiVersion"], "devices.kubeedge.io/v1beta1");
        assert_eq!(
            created["metadata"]["ownerReferences"][0]["uid"],
            "device-uid"
        );

        let merged = writer
            .apply_device_status(
                "default",
                "t1",
                "device-uid",
                json!({"lastOnlineTime": "2026-01-01T00:00:00Z"}),
            )
            .await
            .unwrap();
        assert_eq!(merged["metadata"]["uid"], created["metadata"]["uid"]);
        assert_eq!(merged["status"]["lastOnlineTime"], "2026-01-01T00:00:00Z");
        assert_eq!(merged["status"]["twins"], created["status"]["twins"]);
        let created_rv: u64 = created["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let merged_rv: u64 = merged["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(merged_rv > created_rv);

        assert_eq!(
            writer.get_device_status("default", "t1").await.unwrap(),
            Some(merged["status"].clone())
        );
        let file = read_json(&dirs.status_file("devicestatuses", "default_t1.json"));
        assert_eq!(file, merged);
    })
    .await;
}

#[tokio::test]
async fn events_are_recorded() {
    deadline(async {
        let dirs = Dirs::new();
        let (_source, writer, dirs) = Harness::open(dirs);
        let event = json!({
            "metadata": {"name": "web.1", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default"},
            "reason": "Started",
            "count": 1,
        });
        let first = writer.record_event("default", event.clone()).await.unwrap();
        assert_eq!(first["kind"], "Event");
        let mut again = event;
        again["count"] = 2.into();
        let second = writer.record_event("default", again).await.unwrap();
        assert_eq!(second["metadata"]["uid"], first["metadata"]["uid"]);
        let file = read_json(&dirs.status_file("events", "default_web.1.json"));
        assert_eq!(file["count"], 2);
        let wrong_ns = writer
            .record_event(
                "other",
                json!({"metadata": {"name": "x", "namespace": "default"}}),
            )
            .await
            .unwrap_err();
        assert_eq!(wrong_ns.code, 400);
    })
    .await;
}

#[tokio::test]
async fn a_restart_keeps_nodes_and_pod_statuses() {
    deadline(async {
        let dirs = Dirs::new();
        dirs.put("pod.yaml", &pod_yaml("web", ""));
        let mut h = Harness::start(dirs);
        let pod = h.listed().await[&Kind::Pod][0].clone();
        let node = h
            .writer
            .create_node(json!({"metadata": {"name": "edge-1"}}))
            .await
            .unwrap();
        let mut highest = rv(&h.applied().await);
        h.writer
            .create_lease(
                "kube-node-lease",
                json!({"metadata": {"name": "edge-1"}, "spec": {"holderIdentity": "edge-1"}}),
            )
            .await
            .unwrap();
        highest = highest.max(rv(&h.applied().await));
        h.writer
            .patch_pod_status(
                "default",
                "web",
                json!({"metadata": {"uid": pod.uid()}, "status": {"phase": "Running"}}),
            )
            .await
            .unwrap();
        highest = highest.max(rv(&h.applied().await));
        let device = h
            .writer
            .apply_device_status("default", "t1", "d-uid", json!({"a": 1}))
            .await
            .unwrap();
        let dirs = h.stop().await;

        let mut h = Harness::start(dirs);
        let listed = h.listed().await;
        let nodes = &listed[&Kind::Node];
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].uid(), node["metadata"]["uid"]);
        assert_eq!(listed[&Kind::Lease].len(), 1);
        let restored = &listed[&Kind::Pod][0];
        assert_eq!(restored.uid(), pod.uid());
        assert_eq!(restored.to_value()["status"]["phase"], "Running");
        assert_eq!(
            restored.to_value()["metadata"]["creationTimestamp"],
            pod.to_value()["metadata"]["creationTimestamp"]
        );
        assert!(rv(restored) > highest);
        assert_eq!(
            h.writer.get_device_status("default", "t1").await.unwrap(),
            Some(device["status"].clone())
        );

        let patched = h
            .writer
            .patch_node_status("edge-1", json!({"status": {"phase": "Running"}}))
            .await
            .unwrap();
        let patched_rv: u64 = patched["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(patched_rv > highest);
        assert!(patched_rv > rv(restored));
        h.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_missing_folder_is_an_error() {
    deadline(async {
        let dirs = Dirs::new();
        let config = ManifestConfig::new(dirs.manifests.path().join("missing"), dirs.status.path());
        assert!(ManifestSource::open(config).is_err());
    })
    .await;
}

#[tokio::test]
async fn too_many_objects_are_refused() {
    deadline(async {
        let dirs = Dirs::new();
        let many = |prefix: &str| {
            let items: Vec<String> = (0..6_000)
                .map(|i| format!("{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"{prefix}-{i}\"}}}}"))
                .collect();
            format!("{{\"apiVersion\":\"v1\",\"kind\":\"List\",\"items\":[{}]}}", items.join(","))
        };
        dirs.put("a.json", &many("a"));
        dirs.put("b.json", &many("b"));
        let mut h = Harness::start(dirs);
        assert!(h.listed().await[&Kind::ConfigMap].is_empty());
        assert!(logged_error(&[
            &h.dirs.manifests.path().display().to_string(),
            "12000 objects"
        ]));

        // Back under the limit: everything that is declared arrives.
        h.dirs.remove("b.json");
        for _ in 0..6_000 {
            assert!(h.applied().await.name().starts_with("a-"));
        }
        h.nothing_else().await;
        h.stop().await;
    })
    .await;
}

#[tokio::test]
async fn hostile_status_files_are_skipped() {
    deadline(async {
        let dirs = Dirs::new();
        let nodes = dirs.status.path().join("nodes");
        std::fs::create_dir_all(&nodes).unwrap();
        std::fs::write(nodes.join("edge-1.json"), "[1, 2]").unwrap();
        std::fs::write(
            nodes.join("edge-2.json"),
            r#"{"metadata": {"name": "../../etc"}}"#,
        )
        .unwrap();
        std::fs::write(
            nodes.join("edge-3.json"),
            r#"{"metadata": {"name": "edge-4"}}"#,
        )
        .unwrap();
        std::fs::write(
            nodes.join("edge-5.json"),
            r#"{"metadata": {"name": "edge-5", "resourceVersion": "18446744073709551615"}}"#,
        )
        .unwrap();
        let mut h = Harness::start(dirs);
        let listed = h.listed().await;
        let names: Vec<&str> = listed[&Kind::Node].iter().map(Object::name).collect();
        assert_eq!(names, ["edge-5"]);
        assert!(rv(&listed[&Kind::Node][0]) < u64::MAX / 2);
        assert!(logged_warning(&["edge-1.json", "skipped"]));
        assert!(logged_warning(&["edge-3.json", "skipped"]));
        h.stop().await;
    })
    .await;
}
