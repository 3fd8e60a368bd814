//! Edged against a real containerd (CRI), with a real SQLite store and MetaManager: pods arrive
//! as the cloud sends them, run, restart, report status into the outbox, are deleted, and come
//! back after an edged restart without the cloud.
//!
//! The runtime comes from `scripts/containerd-env.sh up` (`.ci/run` starts it); the tests read
//! its endpoint from `EDGED_CRI_ENDPOINT` and are skipped, saying so, when it is not set.

use std::sync::Arc;
use std::time::Duration;

use kubeedge_edged::runtime::{ContainerState, LABEL_POD_UID, PodRuntime};
use kubeedge_edged::{CriRuntime, Edged, EdgedConfig, EdgedHandle};
use kubeedge_proto::{Content, Message, NodeName};
use kubeedge_store::{MetaManager, MetaManagerConfig, Store, StoreConfig};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// A deadline for a hung test, never a measure.
const DEADLINE: Duration = Duration::from_secs(120);

fn endpoint() -> Option<String> {
    match std::env::var("EDGED_CRI_ENDPOINT") {
        Ok(e) if !e.is_empty() => Some(e),
        _ => {
            eprintln!("skipped: EDGED_CRI_ENDPOINT not set (run scripts/containerd-env.sh up)");
            None
        }
    }
}

/// One edged over a store in `dir`, running until `stop`.
struct Node {
    name: String,
    meta: MetaManager,
    runtime: Arc<CriRuntime>,
    handle: EdgedHandle,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Node {
    /// Edged for node `name` (each test has its own node: the runtime is shared by tests
    /// running in parallel, and an edged removes sandboxes of its own node only).
    async fn start(endpoint: &str, dir: &std::path::Path, name: &str) -> Self {
        let node_name = NodeName::new(name).unwrap();
        let store = Store::open(StoreConfig::new(dir.join("edgecore.db"))).unwrap();
        let meta = MetaManager::new(store, MetaManagerConfig::new(node_name.clone()));
        let runtime = Arc::new(CriRuntime::connect(endpoint).await.unwrap());
        let mut config = EdgedConfig::new(node_name, "127.0.0.1", dir.join("edged"));
        config.sync_interval = Duration::from_millis(500);
        let (edged, handle) = Edged::new(Arc::clone(&runtime), meta.clone(), config);
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                edged.run(stop).await.unwrap();
            }
        });
        Self {
            name: name.to_owned(),
            meta,
            runtime,
            handle,
            stop,
            task,
        }
    }

    /// Stops edged as a crash would stop it: nothing is cleaned up.
    async fn kill(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    /// Applies a cloud message as the MetaManager does and tells edged.
    async fn apply_from_cloud(&self, msg: Message) {
        self.meta.from_cloud(msg).await.unwrap();
        self.handle.store_changed();
    }

    /// The latest status queued for `name` in the outbox.
    async fn status(&self, name: &str) -> Option<Value> {
        let resource = format!("default/podpatch/{name}");
        let pending = self.meta.outbox().pending(0, 100_000).await.unwrap();
        let msg = pending
            .into_iter()
            .rev()
            .find(|p| p.message.route.resource == resource)?;
        let text: String = msg.message.content.decode().unwrap();
        let patch: Value = serde_json::from_str(&text).unwrap();
        Some(patch["status"].clone())
    }

    /// Waits until the queued status of `name` satisfies `check`; returns it.
    async fn wait_status(&self, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.status(name).await
                && check(&status)
            {
                return status;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{name}: never {what}; last status {:#}",
                    self.status(name).await.unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn containers_of(&self, uid: &str) -> Vec<kubeedge_edged::runtime::ContainerInfo> {
        self.runtime
            .list_containers()
            .await
            .unwrap()
            .into_iter()
            .filter(|c| c.labels.get(LABEL_POD_UID).map(String::as_str) == Some(uid))
            .collect()
    }

    /// Waits until the runtime holds no container and no sandbox of any of `uids`.
    async fn wait_removed(&self, uids: &[&str]) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        for uid in uids {
            while !self.containers_of(uid).await.is_empty() || self.sandboxes_of(uid).await > 0 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{uid} never removed"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    async fn sandboxes_of(&self, uid: &str) -> usize {
        self.runtime
            .list_sandboxes()
            .await
            .unwrap()
            .into_iter()
            .filter(|s| s.uid == uid)
            .count()
    }
}

fn uid(tag: &str) -> String {
    format!("{tag}-{}", uuid_like())
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}-{}", nanos, std::process::id())
}

fn pod_msg(op: &str, pod: &Value) -> Message {
    let name = pod["metadata"]["name"].as_str().unwrap();
    let rv = pod["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("1")
        .to_owned();
    Message::new(
        "edgecontroller",
        "resource",
        op,
        format!("default/pod/{name}"),
        Content::try_from(pod.to_string().as_str()).unwrap(),
    )
    .with_resource_version(rv)
}

fn pod(node: &Node, name: &str, uid: &str, rv: u64, spec: Value) -> Value {
    let mut spec = spec;
    spec["nodeName"] = json!(node.name);
    if spec.get("hostNetwork").is_none() {
        spec["hostNetwork"] = json!(true);
    }
    if spec.get("terminationGracePeriodSeconds").is_none() {
        spec["terminationGracePeriodSeconds"] = json!(1);
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": uid, "resourceVersion": rv.to_string()},
        "spec": spec,
    })
}

fn container(name: &str, script: &str) -> Value {
    json!({"name": name, "image": "edged.test/busybox:1", "imagePullPolicy": "IfNotPresent",
           "command": ["sh", "-c", script]})
}

fn running(status: &Value) -> bool {
    status["phase"] == "Running"
        && status["containerStatuses"].as_array().is_some_and(|cs| {
            !cs.is_empty() && cs.iter().all(|c| c["state"].get("running").is_some())
        })
}

async fn with_deadline<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(DEADLINE * 2, f)
        .await
        .expect("test deadline")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_runs_its_status_reaches_the_outbox_and_delete_removes_it() {
    let Some(endpoint) = endpoint() else { return };
    with_deadline(async {
        let dir = tempfile::tempdir().unwrap();
        let node_name = uid("node");
        let node = Node::start(&endpoint, dir.path(), &node_name).await;
        let uid = uid("run");
        let p = pod(
            &node,
            "runner",
            &uid,
            1,
            json!({"containers": [container("main", "echo started; sleep 1000")]}),
        );
        node.apply_from_cloud(pod_msg("insert", &p)).await;
        let status = node.wait_status("runner", "running", running).await;
        assert_eq!(
            status["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == "Ready")
                .unwrap()["status"],
            "True"
        );
        assert_eq!(status["hostIP"], "127.0.0.1");
        assert!(
            status["containerStatuses"][0]["containerID"]
                .as_str()
                .unwrap()
                .starts_with("containerd://")
        );
        assert_eq!(node.containers_of(&uid).await.len(), 1);
        let first = node.containers_of(&uid).await[0].id.clone();

        // The cloud changes the container's command: it is replaced by one with the new spec.
        let changed = pod(
            &node,
            "runner",
            &uid,
            2,
            json!({"containers": [container("main", "echo changed; sleep 1000")]}),
        );
        node.apply_from_cloud(pod_msg("update", &changed)).await;
        node.wait_status("runner", "running the new spec", |s| {
            running(s)
                && s["containerStatuses"][0]["containerID"]
                    .as_str()
                    .is_some_and(|id| !id.ends_with(&first))
        })
        .await;
        let p = changed;

        // The cloud deletes it: edged stops and removes everything of it.
        node.apply_from_cloud(pod_msg("delete", &p)).await;
        node.wait_removed(&[&uid]).await;
        node.kill().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_volume_and_env_are_visible_inside_the_container() {
    let Some(endpoint) = endpoint() else { return };
    with_deadline(async {
        let dir = tempfile::tempdir().unwrap();
        let node_name = uid("node");
        let node = Node::start(&endpoint, dir.path(), &node_name).await;
        let uid = uid("cfg");
        let mut c = container("main", "sleep 1000");
        c["volumeMounts"] = json!([{"name": "cfg", "mountPath": "/etc/cfg"}, {"name": "sec", "mountPath": "/etc/sec"}]);
        c["env"] = json!([{"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}}]);
        let p = pod(&node, "cfg-reader", &uid, 1, json!({"containers": [c], "volumes": [{"name": "cfg", "configMap": {"name": "settings"}}, {"name": "sec", "secret": {"secretName": "creds", "defaultMode": 256}}]}));
        // The secret is there first (base64 in the stored JSON, as the cloud sends it).
        let secret = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "creds", "namespace": "default", "uid": uid.clone() + "-sec", "resourceVersion": "4"},
            "data": {"token": "czNjcjN0"}});
        node.apply_from_cloud(
            Message::new("edgecontroller", "resource", "insert", "default/secret/creds",
                Content::try_from(secret.to_string().as_str()).unwrap())
            .with_resource_version("4"),
        )
        .await;
        // The pod comes before its configmap: it waits with a truthful reason.
        node.apply_from_cloud(pod_msg("insert", &p)).await;
        node.wait_status("cfg-reader", "waiting for its configmap", |s| {
            s["containerStatuses"][0]["state"]["waiting"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("settings"))
        })
        .await;
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": "default", "uid": uid.clone() + "-cm", "resourceVersion": "5"},
            "data": {"greeting": "hello from the store", "mode": "edge"}});
        node.apply_from_cloud(
            Message::new("edgecontroller", "resource", "insert", "default/configmap/settings",
                Content::try_from(cm.to_string().as_str()).unwrap())
            .with_resource_version("5"),
        )
        .await;
        node.wait_status("cfg-reader", "running", running).await;
        let id = node.containers_of(&uid).await[0].id.clone();
        let file = node.runtime.exec_sync(&id, &["cat".into(), "/etc/cfg/greeting".into()], Duration::from_secs(10)).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&file.stdout), "hello from the store");
        let env = node.runtime.exec_sync(&id, &["sh".into(), "-c".into(), "echo -n $GREETING".into()], Duration::from_secs(10)).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&env.stdout), "hello from the store");
        let secret_file = node
            .runtime
            .exec_sync(&id, &["sh".into(), "-c".into(), "stat -L -c %a /etc/sec/token; cat /etc/sec/token".into()], Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&secret_file.stdout), "400\ns3cr3t");
        node.apply_from_cloud(pod_msg("delete", &p)).await;
        node.kill().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_liveness_probe_restarts_the_container() {
    let Some(endpoint) = endpoint() else { return };
    with_deadline(async {
        let dir = tempfile::tempdir().unwrap();
        let node_name = uid("node");
        let node = Node::start(&endpoint, dir.path(), &node_name).await;
        let uid = uid("live");
        let mut c = container("main", "sleep 1000");
        c["livenessProbe"] = json!({"exec": {"command": ["cat", "/tmp/healthy"]},
            "periodSeconds": 1, "failureThreshold": 2, "timeoutSeconds": 2});
        let p = pod(&node, "unhealthy", &uid, 1, json!({"containers": [c]}));
        node.apply_from_cloud(pod_msg("insert", &p)).await;
        let status = node
            .wait_status("unhealthy", "restarted by its liveness probe", |s| {
                s["containerStatuses"][0]["restartCount"]
                    .as_u64()
                    .unwrap_or(0)
                    >= 1
            })
            .await;
        assert!(
            status["containerStatuses"][0]["lastState"]
                .get("terminated")
                .is_some(),
            "{status:#}"
        );
        node.apply_from_cloud(pod_msg("delete", &p)).await;
        node.kill().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pods_get_truthful_reasons_and_do_not_disturb_a_good_one() {
    let Some(endpoint) = endpoint() else { return };
    with_deadline(async {
        let dir = tempfile::tempdir().unwrap();
        let node_name = uid("node");
        let node = Node::start(&endpoint, dir.path(), &node_name).await;
        let (good, missing, crash, refused) =
            (uid("good"), uid("noimg"), uid("crash"), uid("refused"));
        node.apply_from_cloud(pod_msg(
            "insert",
            &pod(
                &node,
                "good",
                &good,
                1,
                json!({"containers": [container("main", "sleep 1000")]}),
            ),
        ))
        .await;
        let mut no_image = container("main", "true");
        no_image["image"] = json!("edged.test/absent:1");
        node.apply_from_cloud(pod_msg(
            "insert",
            &pod(
                &node,
                "no-image",
                &missing,
                1,
                json!({"containers": [no_image]}),
            ),
        ))
        .await;
        let mut rejected = container("main", "true");
        rejected["command"] = json!(["/no/such/binary"]);
        node.apply_from_cloud(pod_msg(
            "insert",
            &pod(
                &node,
                "rejected",
                &refused,
                1,
                json!({"containers": [rejected]}),
            ),
        ))
        .await;
        node.apply_from_cloud(pod_msg(
            "insert",
            &pod(
                &node,
                "crasher",
                &crash,
                1,
                json!({"containers": [container("main", "exit 3")]}),
            ),
        ))
        .await;

        node.wait_status("no-image", "failing to pull", |s| {
            let reason = &s["containerStatuses"][0]["state"]["waiting"]["reason"];
            reason == "ErrImagePull" || reason == "ImagePullBackOff"
        })
        .await;
        let status = node
            .wait_status("crasher", "in CrashLoopBackOff", |s| {
                s["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"
            })
            .await;
        assert_eq!(
            status["containerStatuses"][0]["lastState"]["terminated"]["exitCode"], 3,
            "{status:#}"
        );
        assert_eq!(status["phase"], "Running");
        // The runtime refuses to start it: a truthful reason, retried with back-off.
        node.wait_status("rejected", "refused by the runtime", |s| {
            let reason = s["containerStatuses"][0]["state"]["waiting"]["reason"]
                .as_str()
                .unwrap_or("");
            matches!(
                reason,
                "RunContainerError" | "CreateContainerError" | "CrashLoopBackOff"
            )
        })
        .await;
        node.wait_status("good", "running", running).await;
        for (name, uid) in [
            ("good", &good),
            ("no-image", &missing),
            ("crasher", &crash),
            ("rejected", &refused),
        ] {
            let p = pod(&node, name, uid, 1, json!({"containers": []}));
            node.apply_from_cloud(pod_msg("delete", &p)).await;
        }
        node.wait_removed(&[&good, &missing, &crash, &refused])
            .await;
        node.kill().await;
    })
    .await;
}

/// Set in the child process: the directory of its store.
const CHILD_DIR: &str = "KUBEEDGE_EDGED_CHILD_DIR";
/// Set in the child process: its node name.
const CHILD_NODE: &str = "KUBEEDGE_EDGED_CHILD_NODE";
/// A child edged ends by itself after this, should its parent die without killing it.
const CHILD_MAX_LIFE: Duration = Duration::from_secs(150);

/// The child's side of the crash test: runs edged over the store in `CHILD_DIR` until it is
/// killed. Does nothing in a normal test run.
#[test]
fn edged_child_process() {
    let (Ok(dir), Ok(node_name)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_NODE)) else {
        return;
    };
    let endpoint = endpoint().expect("the parent sets the endpoint");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let node = Node::start(&endpoint, std::path::Path::new(&dir), &node_name).await;
        println!("child edged running");
        tokio::time::sleep(CHILD_MAX_LIFE).await;
        node.kill().await;
    });
}

/// Runs edged in a child process (this test binary, `edged_child_process`).
fn spawn_edged(dir: &std::path::Path, node_name: &str) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "edged_child_process",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_DIR, dir)
        .env(CHILD_NODE, node_name)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_without_the_cloud_edged_restores_pods_from_the_store() {
    let Some(endpoint) = endpoint() else { return };
    with_deadline(async {
        let dir = tempfile::tempdir().unwrap();
        let node_name = uid("node");
        // The "cloud" side writes into the same store file (as the MetaManager would); there is
        // no hub at all, so the cloud is away the whole time.
        let store = Store::open(StoreConfig::new(dir.path().join("edgecore.db"))).unwrap();
        let meta = MetaManager::new(store, MetaManagerConfig::new(NodeName::new(node_name.as_str()).unwrap()));
        let runtime = CriRuntime::connect(&endpoint).await.unwrap();
        let (keeps, dies) = (uid("keep"), uid("dies"));
        let spec = json!({"nodeName": node_name, "hostNetwork": true, "terminationGracePeriodSeconds": 1,
            "containers": [container("main", "sleep 1000")]});
        for (name, uid) in [("keeps-running", &keeps), ("killed-meanwhile", &dies)] {
            let p = json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "default", "uid": uid, "resourceVersion": "1"},
                "spec": spec});
            meta.from_cloud(pod_msg("insert", &p)).await.unwrap();
        }
        let running_attempt = |uid: String, attempt: u32| {
            let runtime = &runtime;
            async move {
                runtime.list_containers().await.unwrap().into_iter().find(|c| {
                    c.labels.get(LABEL_POD_UID) == Some(&uid) && c.state == ContainerState::Running && c.attempt == attempt
                })
            }
        };
        let mut child = spawn_edged(dir.path(), &node_name);
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let (kept, victim) = loop {
            if let (Some(k), Some(v)) = (running_attempt(keeps.clone(), 0).await, running_attempt(dies.clone(), 0).await) {
                break (k, v);
            }
            assert!(tokio::time::Instant::now() < deadline, "the child edged never started the pods");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        // edged dies hard (SIGKILL), and while it is down one container dies too.
        child.kill().unwrap();
        child.wait().unwrap();
        runtime.stop_container(&victim.id, Duration::ZERO).await.unwrap();

        let mut child = spawn_edged(dir.path(), &node_name);
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while running_attempt(dies.clone(), 1).await.is_none() {
            assert!(tokio::time::Instant::now() < deadline, "the dead container was never restarted");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The container that kept running was adopted, not replaced.
        let now_kept: Vec<_> = runtime
            .list_containers()
            .await
            .unwrap()
            .into_iter()
            .filter(|c| c.labels.get(LABEL_POD_UID) == Some(&keeps))
            .collect();
        assert_eq!(now_kept.len(), 1, "{now_kept:?}");
        assert_eq!(now_kept[0].id, kept.id);
        assert_eq!(now_kept[0].state, ContainerState::Running);
        // The status in the store's outbox says so (written by the child).
        let pending = meta.outbox().pending(0, 100_000).await.unwrap();
        let last = pending
            .iter()
            .rev()
            .find(|p| p.message.route.resource == "default/podpatch/killed-meanwhile")
            .expect("a status for the restarted pod");
        let text: String = last.message.content.decode().unwrap();
        let status: Value = serde_json::from_str(&text).unwrap();
        assert!(status["status"]["containerStatuses"][0]["restartCount"].as_u64().unwrap() >= 1, "{status:#}");

        // Clean up through edged: the cloud deletes both pods.
        for (name, uid) in [("keeps-running", &keeps), ("killed-meanwhile", &dies)] {
            let p = json!({"metadata": {"name": name, "namespace": "default", "uid": uid, "resourceVersion": "2"}});
            meta.from_cloud(pod_msg("delete", &p)).await.unwrap();
        }
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while runtime.list_sandboxes().await.unwrap().iter().any(|s| s.uid == keeps || s.uid == dies) {
            assert!(tokio::time::Instant::now() < deadline, "pods never removed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        child.kill().unwrap();
        child.wait().unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_network_pod_gets_an_ip_and_probes_decide_readiness() {
    let Some(endpoint) = endpoint() else { return };
    with_deadline(async {
        let dir = tempfile::tempdir().unwrap();
        let node_name = uid("node");
        let node = Node::start(&endpoint, dir.path(), &node_name).await;
        let (web, stuck) = (uid("web"), uid("stuck"));
        let mut httpd = container(
            "web",
            "mkdir -p /www && echo ok > /www/healthz && httpd -f -p 8080 -h /www",
        );
        httpd["ports"] = json!([{"name": "http", "containerPort": 8080}]);
        httpd["readinessProbe"] =
            json!({"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1});
        node.apply_from_cloud(pod_msg(
            "insert",
            &pod(
                &node,
                "web",
                &web,
                1,
                json!({"hostNetwork": false, "containers": [httpd]}),
            ),
        ))
        .await;
        // A readiness probe that hangs: the pod runs but never becomes ready.
        let mut hanging = container("main", "sleep 1000");
        hanging["readinessProbe"] =
            json!({"exec": {"command": ["sleep", "100"]}, "periodSeconds": 1, "timeoutSeconds": 1});
        node.apply_from_cloud(pod_msg(
            "insert",
            &pod(&node, "stuck", &stuck, 1, json!({"containers": [hanging]})),
        ))
        .await;
        let status = node
            .wait_status("web", "ready on the pod network", |s| {
                running(s) && s["containerStatuses"][0]["ready"] == true
            })
            .await;
        let ip = status["podIP"].as_str().unwrap();
        assert!(
            ip.starts_with("10.88.77."),
            "pod IP {ip} is not on the bridge network"
        );
        let status = node.wait_status("stuck", "running", running).await;
        assert_eq!(status["containerStatuses"][0]["ready"], false);
        // Several probe periods later it is still running and still not ready.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let status = node.status("stuck").await.unwrap();
        assert!(running(&status), "{status:#}");
        assert_eq!(status["containerStatuses"][0]["ready"], false);
        assert_eq!(status["containerStatuses"][0]["restartCount"], 0);
        for (name, uid) in [("web", &web), ("stuck", &stuck)] {
            node.apply_from_cloud(pod_msg(
                "delete",
                &pod(&node, name, uid, 1, json!({"containers": []})),
            ))
            .await;
        }
        node.wait_removed(&[&web, &stuck]).await;
        node.kill().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_containers_run_to_success_before_the_others_start() {
    let Some(endpoint) = endpoint() else { return };
    with_deadline(async {
        let dir = tempfile::tempdir().unwrap();
        let node_name = uid("node");
        let node = Node::start(&endpoint, dir.path(), &node_name).await;
        let uid = uid("init");
        let mut init = container("prepare", "echo -n prepared > /work/state");
        init["volumeMounts"] = json!([{"name": "work", "mountPath": "/work"}]);
        let mut main = container("main", "sleep 1000");
        main["volumeMounts"] = json!([{"name": "work", "mountPath": "/work"}]);
        let p = pod(
            &node,
            "with-init",
            &uid,
            1,
            json!({"initContainers": [init], "containers": [main], "volumes": [{"name": "work", "emptyDir": {}}]}),
        );
        node.apply_from_cloud(pod_msg("insert", &p)).await;
        let status = node.wait_status("with-init", "running after its init container", running).await;
        assert_eq!(status["initContainerStatuses"][0]["state"]["terminated"]["exitCode"], 0, "{status:#}");
        let initialized = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Initialized").unwrap().clone();
        assert_eq!(initialized["status"], "True");
        let id = node
            .containers_of(&uid)
            .await
            .into_iter()
            .find(|c| c.name == "main")
            .unwrap()
            .id;
        let out = node
            .runtime
            .exec_sync(&id, &["cat".into(), "/work/state".into()], Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "prepared");
        node.apply_from_cloud(pod_msg("delete", &p)).await;
        node.wait_removed(&[&uid]).await;
        node.kill().await;
    })
    .await;
}

/// The cloud-to-edge messages of a real KubeEdge v1.22.2 cloudcore for one pod's life (captured
/// byte for byte, `kubeedge-proto/tests/vectors`), in order, by `seq`.
fn captured(seqs: &[u64]) -> Vec<Message> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../kubeedge-proto/tests/vectors/ws-v1.22.2.jsonl"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let mut found: Vec<(u64, Message)> = text
        .lines()
        .filter_map(|l| {
            let rec: Value = serde_json::from_str(l).ok()?;
            let seq = rec["seq"].as_u64()?;
            seqs.contains(&seq).then(|| {
                let payload = rec["payload"].as_str().unwrap();
                (
                    seq,
                    Message::decode_json(payload.as_bytes().to_vec().into(), 1 << 20).unwrap(),
                )
            })
        })
        .collect();
    found.sort_by_key(|(s, _)| *s);
    assert_eq!(found.len(), seqs.len(), "captured messages missing");
    found.into_iter().map(|(_, m)| m).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_captured_kubeedge_pod_lifecycle_runs_on_containerd() {
    let Some(endpoint) = endpoint() else { return };
    with_deadline(async {
        // seq 13 pod insert (before its ConfigMap and Secret), 17/19 their updates, 22 a label
        // change, 26 graceful delete (deletionTimestamp, grace 30), 29 forced (grace 0), 31
        // delete. The node is the captured one.
        let messages = captured(&[13, 17, 19, 22, 26, 29, 31]);
        let uid = messages[0].content.decode::<Value>().unwrap()["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_owned();
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start(&endpoint, dir.path(), "ke-edge-test").await;
        // A leftover of an earlier run of this test (same captured uid) goes first.
        for s in node
            .runtime
            .list_sandboxes()
            .await
            .unwrap()
            .into_iter()
            .filter(|s| s.uid == uid)
        {
            node.runtime.stop_sandbox(&s.id).await.unwrap();
            node.runtime.remove_sandbox(&s.id).await.unwrap();
        }
        let mut messages = messages.into_iter();
        node.apply_from_cloud(messages.next().unwrap()).await;
        node.wait_status("pod-demo", "waiting for cm-demo", |s| {
            s["containerStatuses"][0]["state"]["waiting"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("cm-demo"))
        })
        .await;
        for _ in 0..2 {
            node.apply_from_cloud(messages.next().unwrap()).await;
        }
        node.wait_status("pod-demo", "running", running).await;
        let first = node.containers_of(&uid).await[0].id.clone();
        let key1 = node
            .runtime
            .exec_sync(
                &first,
                &[
                    "sh".into(),
                    "-c".into(),
                    "echo -n $KEY1; ls /etc/cfg /etc/sec".into(),
                ],
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert!(!key1.stdout.is_empty(), "KEY1 from cm-demo is empty");
        // A label change does not touch the container.
        node.apply_from_cloud(messages.next().unwrap()).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now: Vec<_> = node.containers_of(&uid).await;
        assert_eq!(now.len(), 1);
        assert_eq!(now[0].id, first);
        assert_eq!(now[0].state, ContainerState::Running);
        // Graceful delete: edged stops the container (its grace period, 30 s: `sleep` as pid 1
        // ignores SIGTERM) and then asks the cloud to finish the delete.
        node.apply_from_cloud(messages.next().unwrap()).await;
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let pending = node.meta.outbox().pending(0, 100_000).await.unwrap();
            let asked = pending.iter().any(|p| {
                p.message.route.resource == "default/pod/pod-demo"
                    && p.message.route.operation.as_ref().map(|o| o.as_str()) == Some("delete")
            });
            if asked {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "edged never sent the final pod delete"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            node.containers_of(&uid)
                .await
                .iter()
                .all(|c| c.state != ContainerState::Running),
            "the delete was asked for while a container still ran"
        );
        // The cloud forces it and deletes it: everything of the pod goes.
        for msg in messages {
            node.apply_from_cloud(msg).await;
        }
        node.wait_removed(&[&uid]).await;
        node.kill().await;
    })
    .await;
}
