//! The edged loop: desired pods from the store, one worker task per pod, status to the cloud
//! through the MetaManager's durable outbox, and clean-up of whatever no stored pod owns.
//!
//! The store is the desired state (KubeEdge's offline autonomy): at start, and after every
//! change the MetaManager applied, edged reads the pods bound to this node from `meta` and
//! drives the runtime towards them. Nothing is deleted because the cloud is away: only a pod
//! the store no longer holds (the cloud deleted it) is stopped and removed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kubeedge_proto::{Content, Message, NodeName};
use kubeedge_store::tokens::{IssuedToken, TOKEN_TYPE, TokenSpec};
use kubeedge_store::{MetaManager, meta};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::pod_spec::{PodObjects, PodRef};
use crate::pod_worker::{PodWorker, WorkerConfig};
use crate::runtime::{LABEL_NODE, PodRuntime, SandboxInfo};
use crate::volumes::{ObjectLookup, PodNeed, TokenSource, VolumeManager, pod_needs};
use crate::{Error, Result};

/// Settings of [`Edged`].
#[derive(Clone, Debug)]
pub struct EdgedConfig {
    /// This node's name; only pods with this `spec.nodeName` run.
    pub node_name: NodeName,
    /// The host's IP, reported as `hostIP` (and as the IP of host-network pods).
    pub host_ip: String,
    /// Edged's directory: pod volumes under `pods/`, container logs under `logs/`.
    pub root_dir: PathBuf,
    /// How often every pod is synced even without a change (also the probe and restart
    /// resolution). KubeEdge's kubelet relists every second.
    pub sync_interval: Duration,
    /// How soon something a pod needs and the store lacks (a ConfigMap, a Secret, a token)
    /// is asked for again when the cloud did not give it; doubled on each try up to
    /// [`fetch_backoff_max`](Self::fetch_backoff_max).
    pub fetch_backoff: Duration,
    /// The longest wait between two requests for the same missing object.
    pub fetch_backoff_max: Duration,
}

impl EdgedConfig {
    /// Defaults: sync every second.
    pub fn new(
        node_name: NodeName,
        host_ip: impl Into<String>,
        root_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            node_name,
            host_ip: host_ip.into(),
            root_dir: root_dir.into(),
            sync_interval: Duration::from_secs(1),
            fetch_backoff: Duration::from_secs(5),
            fetch_backoff_max: Duration::from_secs(300),
        }
    }
}

/// Tells a running [`Edged`] that the store changed; cheap to clone.
#[derive(Clone, Debug)]
pub struct EdgedHandle {
    changed: mpsc::Sender<()>,
    resend: Arc<std::sync::atomic::AtomicU64>,
}

impl EdgedHandle {
    /// The store changed (a pod, configmap or secret was applied): sync now. Never waits;
    /// several calls before the loop runs count as one.
    pub fn store_changed(&self) {
        let _ = self.changed.try_send(());
    }

    /// Sends every pod's status again, changed or not: call it after each reconnect. While
    /// the node was away the cluster may have changed what it says of its pods (the node
    /// lifecycle controller marks them not ready), and only the node can say they are fine.
    pub fn resend_status(&self) {
        self.resend
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.store_changed();
    }
}

/// What a pod worker task is given.
#[derive(Clone)]
struct WorkerInput {
    pod: Arc<Pod>,
    objects: Arc<PodObjects>,
    terminate: bool,
    /// Bumped by [`EdgedHandle::resend_status`]: the status goes out again.
    resend: u64,
}

struct WorkerHandle {
    input: watch::Sender<WorkerInput>,
    task: JoinHandle<()>,
}

/// The pod manager. See the module docs.
pub struct Edged<R> {
    runtime: Arc<R>,
    meta: MetaManager,
    config: EdgedConfig,
    volumes: VolumeManager,
    worker_config: Arc<WorkerConfig>,
    workers: HashMap<String, WorkerHandle>,
    changed: mpsc::Receiver<()>,
    /// Requests for missing objects: when each was last sent and the wait before the next.
    asked: HashMap<String, (Instant, Duration)>,
    resend: Arc<std::sync::atomic::AtomicU64>,
}

impl<R> std::fmt::Debug for Edged<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edged")
            .field("node", &self.config.node_name)
            .field("pods", &self.workers.len())
            .finish_non_exhaustive()
    }
}

impl<R: PodRuntime> Edged<R> {
    /// Edged over `runtime`, reading desired pods from `meta`'s store and sending status
    /// through its outbox.
    pub fn new(runtime: Arc<R>, meta: MetaManager, config: EdgedConfig) -> (Self, EdgedHandle) {
        let (tx, rx) = mpsc::channel(1);
        let resend = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let worker_config = Arc::new(WorkerConfig {
            node_name: config.node_name.to_string(),
            host_ip: config.host_ip.clone(),
            log_root: config.root_dir.join("logs"),
        });
        let volumes = VolumeManager::new(&config.root_dir);
        (
            Self {
                runtime,
                meta,
                config,
                volumes,
                worker_config,
                workers: HashMap::new(),
                changed: rx,
                asked: HashMap::new(),
                resend: Arc::clone(&resend),
            },
            EdgedHandle {
                changed: tx,
                resend,
            },
        )
    }

    /// Runs until `shutdown`. Stopping edged leaves the pods running (as stopping a kubelet
    /// does); the next start finds them again.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<()> {
        let mut tick = tokio::time::interval(self.config.sync_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
                Some(()) = self.changed.recv() => {}
            }
            if let Err(e) = self.reconcile().await {
                tracing::warn!(error = %e, "edged sync pass");
            }
        }
        for (_, worker) in self.workers.drain() {
            worker.task.abort();
        }
        Ok(())
    }

    /// One pass over all pods.
    async fn reconcile(&mut self) -> Result<()> {
        let (pods, objects, token_keys) = load_desired(&self.meta, &self.config.node_name).await?;
        let mut desired = HashSet::new();
        let mut wanted = HashSet::new();
        for pod in pods {
            let Ok(id) = PodRef::of(&pod) else { continue };
            let have = objects.get(&id.namespace).cloned().unwrap_or_default();
            self.fetch_missing(&pod, &id, &have, &mut wanted).await;
            desired.insert(id.uid.clone());
            let input = WorkerInput {
                pod: Arc::new(pod),
                objects: have,
                terminate: false,
                resend: self.resend.load(std::sync::atomic::Ordering::Relaxed),
            };
            self.feed(id, input);
        }
        // Requests for what no pod needs any more are forgotten.
        self.asked.retain(|key, _| wanted.contains(key));
        // Pods the store no longer holds: stop and remove them.
        for (uid, worker) in &self.workers {
            if !desired.contains(uid) {
                worker.input.send_modify(|i| i.terminate = true);
            }
        }
        self.workers.retain(|_, w| !w.task.is_finished());
        self.forget_tokens(token_keys, &desired).await;
        // Sandboxes nobody owns (a pod deleted while edged was down): same path.
        let node = self.config.node_name.clone();
        let node = node.as_str();
        let mut orphans: HashMap<String, SandboxInfo> = HashMap::new();
        for s in self.runtime.list_sandboxes().await? {
            let uid = s.pod_uid().to_owned();
            let mine = s.labels.get(LABEL_NODE).map(String::as_str) == Some(node);
            if mine
                && !uid.is_empty()
                && !desired.contains(&uid)
                && !self.workers.contains_key(&uid)
            {
                orphans.entry(uid).or_insert(s);
            }
        }
        for (uid, s) in orphans {
            let orphan: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": s.name, "namespace": s.namespace, "uid": uid},
                "spec": {"containers": [], "nodeName": node, "terminationGracePeriodSeconds": 2}
            }))?;
            let Ok(id) = PodRef::of(&orphan) else {
                continue;
            };
            tracing::info!(pod = %id.key(), uid = %uid, "removing a sandbox no stored pod owns");
            self.feed(
                id,
                WorkerInput {
                    pod: Arc::new(orphan),
                    objects: Arc::default(),
                    terminate: true,
                    resend: 0,
                },
            );
        }
        Ok(())
    }

    /// Asks the cloud for what `pod` needs and the store lacks: ConfigMaps and Secrets it
    /// references (KubeEdge's cloud sends them only once a pod on the node referenced them,
    /// and not at all when they were created before the pod), and service-account tokens
    /// missing or due for renewal. Each request goes through the outbox (sent when the link is
    /// up, again after reconnects); while the answer does not come, it is repeated with a
    /// growing back-off. Keys of the requests are added to `wanted`.
    async fn fetch_missing(
        &mut self,
        pod: &Pod,
        id: &PodRef,
        have: &PodObjects,
        wanted: &mut HashSet<String>,
    ) {
        let now = Instant::now();
        let now_secs = unix_now();
        for need in pod_needs(pod) {
            let (key, message) = match need {
                PodNeed::ConfigMap { name, .. } if !have.configmaps.contains_key(&name) => {
                    let resource = format!("{}/configmap/{name}", id.namespace);
                    (resource.clone(), query(resource))
                }
                PodNeed::Secret { name, .. } if !have.secrets.contains_key(&name) => {
                    let resource = format!("{}/secret/{name}", id.namespace);
                    (resource.clone(), query(resource))
                }
                PodNeed::Token(source) => {
                    let spec = token_spec(id, &source);
                    let key = spec.key();
                    if have
                        .tokens
                        .get(&key)
                        .is_some_and(|t| !t.needs_refresh(now_secs))
                    {
                        continue;
                    }
                    match spec.query_message() {
                        Ok(message) => (key, message),
                        Err(e) => {
                            tracing::warn!(pod = %id.key(), error = %e, "cannot build the token request");
                            continue;
                        }
                    }
                }
                _ => continue,
            };
            wanted.insert(key.clone());
            let due = self
                .asked
                .get(&key)
                .is_none_or(|(last, wait)| now.duration_since(*last) >= *wait);
            if !due {
                continue;
            }
            let wait = self
                .asked
                .get(&key)
                .map_or(self.config.fetch_backoff, |(_, w)| {
                    (*w * 2).min(self.config.fetch_backoff_max)
                });
            match self.meta.query_cloud(message).await {
                Ok(()) => {
                    tracing::debug!(pod = %id.key(), %key, "asked the cloud for what the pod needs");
                    self.asked.insert(key, (now, wait));
                }
                Err(e) => tracing::warn!(pod = %id.key(), %key, error = %e, "cannot ask the cloud"),
            }
        }
    }

    /// Removes the stored tokens (`keys`, all there are) of pods that are gone (KubeEdge's
    /// `DeleteServiceAccountToken`); writes only when there is one.
    async fn forget_tokens(&self, keys: Vec<String>, desired: &HashSet<String>) {
        let gone: Vec<String> = keys
            .into_iter()
            .filter(|key| TokenSpec::pod_uid_of_key(key).is_none_or(|uid| !desired.contains(uid)))
            .collect();
        if gone.is_empty() {
            return;
        }
        let result = self
            .meta
            .store()
            .write(move |db| {
                for key in &gone {
                    meta::delete(db, key, None)?;
                }
                Ok(())
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot remove the tokens of deleted pods");
        }
    }

    fn feed(&mut self, id: PodRef, input: WorkerInput) {
        if let Some(worker) = self.workers.get(&id.uid) {
            let terminate = input.terminate || worker.input.borrow().terminate;
            worker
                .input
                .send_replace(WorkerInput { terminate, ..input });
            return;
        }
        let (tx, rx) = watch::channel(input);
        let worker = PodWorker::new(
            Arc::clone(&self.runtime),
            self.volumes.clone(),
            Arc::clone(&self.worker_config),
            id.clone(),
        );
        let task = tokio::spawn(run_worker(worker, rx, self.meta.clone()));
        self.workers
            .insert(id.uid, WorkerHandle { input: tx, task });
    }
}

/// A pod's task: one sync pass per input, status sent when it changed.
async fn run_worker<R: PodRuntime>(
    mut worker: PodWorker<R>,
    mut input: watch::Receiver<WorkerInput>,
    meta: MetaManager,
) {
    let mut last_sent: Option<(serde_json::Value, Instant)> = None;
    let mut resent = 0;
    let mut delete_sent = false;
    loop {
        let current = input.borrow_and_update().clone();
        let outcome = worker
            .sync(&current.pod, &current.objects, current.terminate)
            .await;
        let id = worker.pod().clone();
        if current.terminate {
            if outcome.gone {
                return;
            }
        } else {
            // Sent when it changed, and again when the cloud's copy still says something else
            // a while after (a patch lost, or applied out of order by a cloud that patches in
            // parallel, as KubeEdge's does): the kubelet's status manager reconciles the same
            // way against the API server's copy.
            let cloud = serde_json::to_value(&current.pod.status).unwrap_or_default();
            let due = match &last_sent {
                None => true,
                Some(_) if current.resend != resent => true,
                Some((sent, at)) => {
                    *sent != outcome.status
                        || (at.elapsed() >= STATUS_RECHECK
                            && status_digest(&cloud) != status_digest(&outcome.status))
                }
            };
            if due {
                match send_status(&meta, &id, &cloud, &outcome.status).await {
                    Ok(()) => {
                        last_sent = Some((outcome.status.clone(), Instant::now()));
                        resent = current.resend;
                    }
                    Err(e) => {
                        tracing::warn!(pod = %id.key(), error = %e, "queueing the pod status")
                    }
                }
            }
        }
        // A pod being deleted whose containers all stopped: ask the cloud to finish the delete.
        if current.pod.metadata.deletion_timestamp.is_some() && outcome.stopped && !delete_sent {
            match send_delete(&meta, &id).await {
                Ok(()) => delete_sent = true,
                Err(e) => tracing::warn!(pod = %id.key(), error = %e, "queueing the pod delete"),
            }
        }
        if input.changed().await.is_err() {
            return;
        }
    }
}

/// How long after a status was sent the cloud's copy must agree with it.
const STATUS_RECHECK: Duration = Duration::from_secs(10);

/// What must agree between the pod's status here and in the cloud: the phase, the pod IP and
/// each container's readiness, restarts and state (with its reason).
fn status_digest(status: &serde_json::Value) -> serde_json::Value {
    let containers = |field: &str| -> Vec<serde_json::Value> {
        let mut out: Vec<serde_json::Value> = status[field]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|c| {
                        let state = c["state"].as_object().and_then(|s| {
                            s.iter()
                                .next()
                                .map(|(k, v)| serde_json::json!([k, v["reason"], v["exitCode"]]))
                        });
                        serde_json::json!([c["name"], c["ready"], c["restartCount"], state])
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by_key(|v| v.to_string());
        out
    };
    serde_json::json!({
        "phase": status["phase"],
        "podIP": status["podIP"],
        "containers": containers("containerStatuses"),
        "init": containers("initContainerStatuses"),
    })
}

/// `podpatch`: the kubelet status manager's patch of the status subresource, with the uid as a
/// precondition, as a JSON string (KubeEdge's form). Like the kubelet's two-way strategic merge
/// patch, it deletes the pod and host IPs the cloud's copy (`cloud`) has that the new status
/// no longer has: those lists merge by `ip`, and an API server refuses a pod with two IPs of
/// one family (a pod whose sandbox was made again gets a new IP).
async fn send_status(
    meta: &MetaManager,
    id: &PodRef,
    cloud: &serde_json::Value,
    status: &serde_json::Value,
) -> Result<()> {
    let mut status = status.clone();
    for field in ["podIPs", "hostIPs"] {
        let (Some(old), Some(new)) = (cloud[field].as_array(), status[field].as_array()) else {
            continue;
        };
        let mut list = new.clone();
        for entry in old {
            if !new.iter().any(|n| n["ip"] == entry["ip"]) {
                list.push(serde_json::json!({"ip": entry["ip"], "$patch": "delete"}));
            }
        }
        if list.len() > new.len() {
            status[format!("$setElementOrder/{field}")] = serde_json::Value::Array(new.clone());
            status[field] = serde_json::Value::Array(list);
        }
    }
    let patch = serde_json::json!({"metadata": {"uid": id.uid}, "status": status});
    let msg = Message::new(
        "edged",
        "meta",
        "patch",
        format!("{}/podpatch/{}", id.namespace, id.name),
        Content::string(&patch.to_string()),
    );
    meta.from_edge(msg, false).await?;
    Ok(())
}

/// The final delete of a terminated pod (grace 0, uid precondition), as the kubelet's status
/// manager sends it once the containers are gone.
async fn send_delete(meta: &MetaManager, id: &PodRef) -> Result<()> {
    let options = serde_json::json!({"gracePeriodSeconds": 0, "preconditions": {"uid": id.uid}});
    let content = Content::try_from(options.to_string().as_str())
        .map_err(|e| Error::Spec(format!("delete options: {e}")))?;
    let msg = Message::new(
        "edged",
        "meta",
        "delete",
        format!("{}/pod/{}", id.namespace, id.name),
        content,
    );
    meta.from_edge(msg, false).await?;
    Ok(())
}

/// The pods bound to `node`, per namespace the ConfigMaps, Secrets and tokens there, and the
/// keys of every stored token (for [`Edged::forget_tokens`]). A row that does not decode is
/// skipped with a warning; the others still run.
async fn load_desired(
    meta: &MetaManager,
    node: &str,
) -> Result<(Vec<Pod>, HashMap<String, Arc<PodObjects>>, Vec<String>)> {
    let node = node.to_owned();
    let node_key = node.clone();
    let rows = meta
        .store()
        .read(move |conn| {
            let pods = meta::list_by_type(conn, "pod")?;
            let mut namespaces: HashSet<String> = HashSet::new();
            for row in &pods {
                if let Some(ns) = row.key.split('/').next() {
                    namespaces.insert(ns.to_owned());
                }
            }
            let mut tokens = meta::list_by_type(conn, TOKEN_TYPE)?;
            let token_keys: Vec<String> = tokens.iter().map(|row| row.key.clone()).collect();
            let mut objects = Vec::new();
            for ns in namespaces {
                let cms = meta::list_in_namespace(conn, &ns, "configmap")?;
                let secrets = meta::list_in_namespace(conn, &ns, "secret")?;
                let prefix = format!("{ns}/{TOKEN_TYPE}/");
                let (mine, rest) = tokens
                    .into_iter()
                    .partition(|row| row.key.starts_with(&prefix));
                tokens = rest;
                objects.push((ns, cms, secrets, mine));
            }
            let node = meta::get(conn, &crate::node_status::node_resource(&node_key))?;
            Ok((pods, objects, node, token_keys))
        })
        .await?;
    let (pod_rows, object_rows, node_row, token_keys) = rows;
    let allocatable: Option<BTreeMap<String, Quantity>> = node_row
        .and_then(|row| serde_json::from_str::<serde_json::Value>(&row.value).ok())
        .and_then(|node| serde_json::from_value(node["status"]["allocatable"].clone()).ok());
    let mut pods = Vec::new();
    for row in pod_rows {
        match serde_json::from_str::<Pod>(&row.value) {
            Ok(pod) => {
                let bound =
                    pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str());
                if bound {
                    pods.push(pod);
                }
            }
            Err(e) => {
                tracing::warn!(key = %row.key, error = %e, "stored pod does not decode; skipped")
            }
        }
    }
    let mut objects = HashMap::new();
    for (ns, cms, secrets, tokens) in object_rows {
        let mut set = PodObjects {
            allocatable: allocatable.clone(),
            ..PodObjects::default()
        };
        for row in tokens {
            match IssuedToken::parse(row.value.as_bytes()) {
                Some(token) => {
                    set.tokens.insert(row.key, token);
                }
                None => tracing::warn!(key = %row.key, "stored token does not decode; skipped"),
            }
        }
        for row in cms {
            match serde_json::from_str::<ConfigMap>(&row.value) {
                Ok(cm) => {
                    if let Some(name) = cm.metadata.name.clone() {
                        set.configmaps.insert(name, cm);
                    }
                }
                Err(e) => {
                    tracing::warn!(key = %row.key, error = %e, "stored configmap does not decode; skipped")
                }
            }
        }
        for row in secrets {
            match serde_json::from_str::<Secret>(&row.value) {
                Ok(secret) => {
                    if let Some(name) = secret.metadata.name.clone() {
                        set.secrets.insert(name, secret);
                    }
                }
                Err(e) => {
                    tracing::warn!(key = %row.key, error = %e, "stored secret does not decode; skipped")
                }
            }
        }
        objects.insert(ns, Arc::new(set));
    }
    Ok((pods, objects, token_keys))
}

impl ObjectLookup for PodObjects {
    fn config_map(&self, _namespace: &str, name: &str) -> Option<ConfigMap> {
        self.configmaps.get(name).cloned()
    }

    fn secret(&self, _namespace: &str, name: &str) -> Option<Secret> {
        self.secrets.get(name).cloned()
    }

    fn service_account_token(&self, pod: &Pod, source: &TokenSource) -> Option<String> {
        let id = PodRef::of(pod).ok()?;
        let token = self.tokens.get(&token_spec(&id, source).key())?;
        // A token due for renewal is still served while it is valid (also offline).
        token.valid(unix_now()).then(|| token.token.clone())
    }

    fn node_allocatable(&self) -> Option<BTreeMap<String, Quantity>> {
        self.allocatable.clone()
    }
}

/// What the cloud is asked for when `pod` needs the token `source`.
fn token_spec(id: &PodRef, source: &TokenSource) -> TokenSpec {
    TokenSpec {
        namespace: id.namespace.clone(),
        service_account: source.service_account.clone(),
        pod_name: id.name.clone(),
        pod_uid: id.uid.clone(),
        audience: source.audience.clone(),
        expiration_seconds: source.expiration_seconds,
    }
}

/// `edged/meta query <resource>`, as KubeEdge's edged asks for a ConfigMap or Secret.
fn query(resource: String) -> Message {
    Message::new("edged", "meta", "query", resource, Content::null())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
