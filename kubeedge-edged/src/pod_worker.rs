//! One pod's sync: the sandbox, images, containers, restart policy with crash-loop back-off,
//! probes, termination, and the status that results. A [`PodWorker`] runs one pass per call to
//! [`PodWorker::sync`]; the [`Edged`](crate::Edged) loop calls it with the pod from the store and
//! what the runtime lists, and sends the status when it changed.
//!
//! All the worker's memory (restart back-off, probe results) can be lost: after an edged restart
//! the sandbox and containers are found again by their labels, restart counts come back from the
//! containers' attempt numbers, and running containers are left running.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{Value, json};

use crate::pod_spec::{self, PodObjects, PodRef, RuntimeFields};
use crate::pod_status::{self, ContainerView, Waiting};
use crate::probe::{self, ProbeKind, ProbeState, Verdict};
use crate::runtime::{
    ContainerInfo, ContainerState, LABEL_CONTAINER_HASH, LABEL_POD_UID, PodRuntime, SandboxInfo,
    SandboxState,
};
use crate::volumes::VolumeManager;
use crate::{Error, Result};

/// Crash-loop back-off: the first restart is immediate, then 10 s doubling up to 5 min; a
/// container that ran 10 min resets it (the kubelet's numbers).
const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);
/// Grace period when the pod names none.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// Settings shared by all pod workers.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// This node's name (`spec.nodeName`, fieldRefs).
    pub node_name: String,
    /// The host's IP (`status.hostIP`, and `podIP` of host-network pods).
    pub host_ip: String,
    /// Where container logs go.
    pub log_root: std::path::PathBuf,
}

/// Per-container memory of the worker.
#[derive(Debug, Default)]
struct Track {
    backoff: Option<Duration>,
    next_start: Option<Instant>,
    waiting: Option<Waiting>,
    liveness: Option<ProbeState>,
    readiness: Option<ProbeState>,
    startup: Option<ProbeState>,
    ready: bool,
    /// Runtime id the probe states belong to.
    probed_id: String,
    /// Why edged stopped the container last (a failed liveness probe).
    killed_for: Option<String>,
}

/// The result of one pass.
#[derive(Debug)]
pub struct Outcome {
    /// The pod's `status`, as JSON.
    pub status: Value,
    /// Everything of the pod is gone from the runtime (after termination).
    pub gone: bool,
    /// No container of the pod runs.
    pub stopped: bool,
}

/// Syncs one pod.
#[derive(Debug)]
pub struct PodWorker<R> {
    runtime: Arc<R>,
    volumes: VolumeManager,
    config: Arc<WorkerConfig>,
    id: PodRef,
    tracks: HashMap<String, Track>,
    sandbox_error: Option<String>,
    sandbox_retry: Option<Instant>,
    started_at: String,
    last_conditions: Option<Value>,
    volumes_ready: Option<String>,
    /// The init containers as last seen (filled with the main containers' views).
    init_views: Vec<ContainerView>,
}

impl<R: PodRuntime> PodWorker<R> {
    /// A worker for the pod `id`.
    pub fn new(
        runtime: Arc<R>,
        volumes: VolumeManager,
        config: Arc<WorkerConfig>,
        id: PodRef,
    ) -> Self {
        Self {
            runtime,
            volumes,
            config,
            id,
            tracks: HashMap::new(),
            sandbox_error: None,
            sandbox_retry: None,
            started_at: now_rfc3339(),
            last_conditions: None,
            volumes_ready: None,
            init_views: Vec::new(),
        }
    }

    /// The pod this worker syncs.
    pub fn pod(&self) -> &PodRef {
        &self.id
    }

    /// One pass: brings the runtime towards `pod` (or, with `terminate`, stops and removes
    /// everything of the pod) and returns the status.
    pub async fn sync(&mut self, pod: &Pod, objects: &PodObjects, terminate: bool) -> Outcome {
        // Listed by the worker itself at the start of every pass, so it never acts on a view
        // older than its own last change.
        let (sandboxes, containers) = match self.list().await {
            Ok(lists) => lists,
            Err(e) => {
                tracing::warn!(pod = %self.id.key(), error = %e, "listing the runtime");
                let views = self.views(pod, &[]).await;
                return Outcome {
                    status: self.status(pod, &views, None),
                    gone: false,
                    stopped: false,
                };
            }
        };
        let deleting = pod.metadata.deletion_timestamp.is_some();
        if terminate || deleting {
            let grace = grace_period(pod);
            let gone = self.kill(&sandboxes, &containers, grace, terminate).await;
            let views = self.views(pod, &containers).await;
            return Outcome {
                status: self.status(pod, &views, None),
                gone,
                stopped: true,
            };
        }
        let spec_containers: Vec<Container> = pod
            .spec
            .as_ref()
            .map(|s| s.containers.clone())
            .unwrap_or_default();
        let restart_policy = restart_policy(pod);

        // A terminal pod (every container done under Never/OnFailure) keeps its status; its
        // sandbox is stopped as the kubelet does. Only a pod none of whose containers runs or
        // waits to start can be terminal, so the statuses are asked for only then (this is
        // every pod's path every second).
        let maybe_finished = !containers.is_empty()
            && containers
                .iter()
                .all(|c| !matches!(c.state, ContainerState::Running | ContainerState::Created));
        if maybe_finished {
            let views = self.views(pod, &containers).await;
            if matches!(self.phase(pod, &views), "Succeeded" | "Failed") {
                for s in sandboxes.iter().filter(|s| s.state == SandboxState::Ready) {
                    if let Err(e) = self.runtime.stop_sandbox(&s.id).await {
                        tracing::warn!(pod = %self.id.key(), error = %e, "stopping a finished pod's sandbox");
                    }
                }
                return Outcome {
                    status: self.status(pod, &views, None),
                    gone: false,
                    stopped: none_running(&views),
                };
            }
        }

        let Some((sandbox_id, pod_ip, fresh)) =
            self.ensure_sandbox(pod, &sandboxes, &containers).await
        else {
            let views = self.views(pod, &[]).await;
            return Outcome {
                status: self.status(pod, &views, None),
                gone: false,
                stopped: none_running(&views),
            };
        };
        let containers: Vec<ContainerInfo> = if fresh {
            Vec::new()
        } else {
            containers
                .into_iter()
                .filter(|c| c.sandbox_id == sandbox_id)
                .collect()
        };

        // Volumes: written before the first container and refreshed when their objects change.
        let version = objects_version(pod, objects);
        if self.volumes_ready.as_deref() != Some(version.as_str()) {
            match self.volumes.setup_pod_volumes(pod, objects) {
                Ok(()) => self.volumes_ready = Some(version),
                Err(e) => {
                    // Containers that need the volume wait with the reason.
                    for c in &spec_containers {
                        let track = self.tracks.entry(c.name.clone()).or_default();
                        if !containers.iter().any(|x| x.name == c.name) {
                            track.waiting = Some(Waiting {
                                reason: "ContainerCreating".into(),
                                message: e.to_string(),
                            });
                        }
                    }
                    let views = self.views(pod, &containers).await;
                    return Outcome {
                        status: self.status(pod, &views, Some(&pod_ip)),
                        gone: false,
                        stopped: false,
                    };
                }
            }
        }

        let fields = RuntimeFields {
            node_name: self.config.node_name.clone(),
            pod_ip: pod_ip.clone(),
            host_ip: self.config.host_ip.clone(),
        };
        // Init containers run one at a time, each to success, before the others start.
        let init_containers: Vec<Container> = pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.clone())
            .unwrap_or_default();
        let init_policy = if restart_policy == "Never" {
            "Never"
        } else {
            "OnFailure"
        };
        let mut initialized = true;
        for container in &init_containers {
            let mine: Vec<&ContainerInfo> = containers
                .iter()
                .filter(|c| c.name == container.name)
                .collect();
            let latest = mine.iter().max_by_key(|c| (c.attempt, c.created_at));
            let succeeded = match latest {
                Some(c) if c.state == ContainerState::Exited => self
                    .runtime
                    .container_status(&c.id)
                    .await
                    .is_ok_and(|s| s.exit_code == 0),
                _ => false,
            };
            if succeeded {
                continue;
            }
            initialized = false;
            if let Err(e) = self
                .sync_container(
                    pod,
                    container,
                    &mine,
                    &sandbox_id,
                    &pod_ip,
                    init_policy,
                    objects,
                    &fields,
                )
                .await
            {
                tracing::warn!(pod = %self.id.key(), container = %container.name, error = %e, "init container sync");
            }
            break;
        }
        for container in spec_containers.iter().filter(|_| initialized) {
            let mine: Vec<&ContainerInfo> = containers
                .iter()
                .filter(|c| c.name == container.name)
                .collect();
            if let Err(e) = self
                .sync_container(
                    pod,
                    container,
                    &mine,
                    &sandbox_id,
                    &pod_ip,
                    &restart_policy,
                    objects,
                    &fields,
                )
                .await
            {
                tracing::warn!(pod = %self.id.key(), container = %container.name, error = %e, "container sync");
            }
        }
        // Containers of names no longer in the spec are removed.
        for stray in containers.iter().filter(|c| {
            !spec_containers.iter().any(|s| s.name == c.name)
                && !init_containers.iter().any(|s| s.name == c.name)
        }) {
            let _ = self
                .runtime
                .stop_container(&stray.id, Duration::from_secs(2))
                .await;
            let _ = self.runtime.remove_container(&stray.id).await;
        }

        let listed = match self.runtime.list_containers().await {
            Ok(all) => all
                .into_iter()
                .filter(|c| {
                    c.sandbox_id == sandbox_id && c.labels.get(LABEL_POD_UID) == Some(&self.id.uid)
                })
                .collect(),
            Err(_) => containers,
        };
        let views = self.views(pod, &listed).await;
        Outcome {
            status: self.status(pod, &views, Some(&pod_ip)),
            gone: false,
            stopped: none_running(&views),
        }
    }

    /// This pod's sandboxes and containers.
    async fn list(&self) -> Result<(Vec<SandboxInfo>, Vec<ContainerInfo>)> {
        let sandboxes = self
            .runtime
            .list_sandboxes()
            .await?
            .into_iter()
            .filter(|s| s.pod_uid() == self.id.uid)
            .collect();
        let containers = self
            .runtime
            .list_containers()
            .await?
            .into_iter()
            .filter(|c| c.labels.get(LABEL_POD_UID) == Some(&self.id.uid))
            .collect();
        Ok((sandboxes, containers))
    }

    /// A ready sandbox for the pod: the existing one, or a new one (then `fresh`). `None` when
    /// it cannot be had now (the reason is in the status).
    async fn ensure_sandbox(
        &mut self,
        pod: &Pod,
        sandboxes: &[SandboxInfo],
        containers: &[ContainerInfo],
    ) -> Option<(String, String, bool)> {
        let ready = sandboxes
            .iter()
            .filter(|s| s.state == SandboxState::Ready)
            .max_by_key(|s| (s.attempt, s.created_at));
        if let Some(s) = ready {
            // The pod started when its sandbox did (stable across edged restarts).
            if s.created_at > 0 {
                self.started_at = pod_status::time_of_nanos(s.created_at);
            }
            // Older sandboxes of the same pod go.
            for old in sandboxes.iter().filter(|o| o.id != s.id) {
                self.remove_sandbox(old, containers).await;
            }
            let ip = self.pod_ip(pod, &s.id).await;
            return Some((s.id.clone(), ip, false));
        }
        if let Some(retry) = self.sandbox_retry
            && Instant::now() < retry
        {
            return None;
        }
        // A sandbox that died takes its containers with it: all are created again.
        let attempt = sandboxes.iter().map(|s| s.attempt + 1).max().unwrap_or(0);
        for old in sandboxes {
            self.remove_sandbox(old, containers).await;
        }
        let config = match pod_spec::sandbox_config(pod, attempt, &self.config.log_root) {
            Ok(c) => c,
            Err(e) => {
                self.sandbox_failed(e);
                return None;
            }
        };
        if let Err(e) = std::fs::create_dir_all(&config.log_directory) {
            self.sandbox_failed(Error::Io(e));
            return None;
        }
        match self.runtime.run_sandbox(&config).await {
            Ok(id) => {
                self.sandbox_error = None;
                self.sandbox_retry = None;
                for track in self.tracks.values_mut() {
                    track.probed_id.clear();
                }
                let ip = self.pod_ip(pod, &id).await;
                Some((id, ip, true))
            }
            Err(e) => {
                self.sandbox_failed(e);
                None
            }
        }
    }

    fn sandbox_failed(&mut self, e: Error) {
        tracing::warn!(pod = %self.id.key(), error = %e, "pod sandbox");
        self.sandbox_error = Some(e.to_string());
        self.sandbox_retry = Some(Instant::now() + BACKOFF_START);
    }

    async fn pod_ip(&self, pod: &Pod, sandbox_id: &str) -> String {
        if pod_spec::host_network(pod) {
            return self.config.host_ip.clone();
        }
        match self.runtime.sandbox_status(sandbox_id).await {
            Ok(s) => s.ip,
            Err(_) => String::new(),
        }
    }

    async fn remove_sandbox(&self, sandbox: &SandboxInfo, containers: &[ContainerInfo]) {
        for c in containers.iter().filter(|c| c.sandbox_id == sandbox.id) {
            let _ = self.runtime.stop_container(&c.id, Duration::ZERO).await;
            let _ = self.runtime.remove_container(&c.id).await;
        }
        if let Err(e) = self.runtime.stop_sandbox(&sandbox.id).await {
            tracing::warn!(pod = %self.id.key(), error = %e, "stopping an old sandbox");
        }
        if let Err(e) = self.runtime.remove_sandbox(&sandbox.id).await {
            tracing::warn!(pod = %self.id.key(), error = %e, "removing an old sandbox");
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn sync_container(
        &mut self,
        pod: &Pod,
        container: &Container,
        mine: &[&ContainerInfo],
        sandbox_id: &str,
        pod_ip: &str,
        restart_policy: &str,
        objects: &PodObjects,
        fields: &RuntimeFields,
    ) -> Result<()> {
        let latest = mine
            .iter()
            .max_by_key(|c| (c.attempt, c.created_at))
            .copied();
        // Dead containers older than the previous one are removed (the previous one gives
        // lastState).
        let mut by_age: Vec<&&ContainerInfo> = mine.iter().collect();
        by_age.sort_by_key(|c| std::cmp::Reverse((c.attempt, c.created_at)));
        for old in by_age.iter().skip(2) {
            if old.state != ContainerState::Running {
                let _ = self.runtime.remove_container(&old.id).await;
            }
        }
        let now = Instant::now();
        match latest.map(|c| c.state) {
            Some(ContainerState::Running) => {
                let latest = latest.expect("matched Some");
                let hash = pod_spec::spec_hash(container);
                if latest
                    .labels
                    .get(LABEL_CONTAINER_HASH)
                    .is_some_and(|h| *h != hash)
                {
                    // The spec changed: stop it; the next pass starts the new spec.
                    tracing::info!(pod = %self.id.key(), container = %container.name, "container spec changed; restarting");
                    let track = self.tracks.entry(container.name.clone()).or_default();
                    track.killed_for = Some("container spec changed".into());
                    track.backoff = None;
                    track.next_start = None;
                    return self
                        .runtime
                        .stop_container(&latest.id, grace_period(pod))
                        .await;
                }
                self.probe(pod, container, &latest.id, pod_ip, now).await;
                Ok(())
            }
            Some(ContainerState::Created) => {
                let id = latest.expect("matched Some").id.clone();
                self.runtime.start_container(&id).await
            }
            Some(ContainerState::Exited | ContainerState::Unknown) => {
                let latest = latest.expect("matched Some");
                let status = self.runtime.container_status(&latest.id).await?;
                let track = self.tracks.entry(container.name.clone()).or_default();
                let respec = track.killed_for.as_deref() == Some("container spec changed");
                let wants = respec
                    || match restart_policy {
                        "Never" => false,
                        "OnFailure" => status.exit_code != 0,
                        _ => true,
                    };
                track.ready = false;
                if !wants {
                    track.waiting = None;
                    return Ok(());
                }
                let ran_for = Duration::from_nanos(
                    u64::try_from(status.finished_at.saturating_sub(status.started_at))
                        .unwrap_or(0),
                );
                if ran_for >= BACKOFF_RESET_AFTER {
                    track.backoff = None;
                    track.next_start = None;
                }
                if let Some(at) = track.next_start
                    && now < at
                {
                    let wait = track.backoff.unwrap_or(BACKOFF_START);
                    track.waiting = Some(Waiting {
                        reason: "CrashLoopBackOff".into(),
                        message: format!(
                            "back-off {}s restarting failed container={} pod={}_{}({})",
                            wait.as_secs(),
                            container.name,
                            self.id.name,
                            self.id.namespace,
                            self.id.uid
                        ),
                    });
                    return Ok(());
                }
                // Restart now; the next restart waits longer.
                let next = match track.backoff {
                    None => BACKOFF_START,
                    Some(b) => (b * 2).min(BACKOFF_MAX),
                };
                track.backoff = Some(next);
                track.next_start = Some(now + next);
                track.waiting = None;
                self.create_and_start(
                    pod,
                    container,
                    latest.attempt + 1,
                    sandbox_id,
                    objects,
                    fields,
                )
                .await
            }
            None => {
                self.create_and_start(pod, container, 0, sandbox_id, objects, fields)
                    .await
            }
        }
    }

    async fn create_and_start(
        &mut self,
        pod: &Pod,
        container: &Container,
        attempt: u32,
        sandbox_id: &str,
        objects: &PodObjects,
        fields: &RuntimeFields,
    ) -> Result<()> {
        let name = container.name.clone();
        let waiting = |reason: &str, e: &Error| Waiting {
            reason: reason.to_owned(),
            message: e.to_string(),
        };
        if let Err((reason, e)) = self.ensure_image(container).await {
            self.tracks.entry(name).or_default().waiting = Some(waiting(reason, &e));
            return Err(e);
        }
        let mounts = match self.volumes.container_mounts(pod, container) {
            Ok(m) => m,
            Err(e) => {
                self.tracks.entry(name).or_default().waiting =
                    Some(waiting("CreateContainerConfigError", &e));
                return Err(e);
            }
        };
        let config =
            match pod_spec::container_config(pod, container, attempt, objects, fields, mounts) {
                Ok(c) => c,
                Err(e) => {
                    self.tracks.entry(name).or_default().waiting =
                        Some(waiting("CreateContainerConfigError", &e));
                    return Err(e);
                }
            };
        let sandbox = pod_spec::sandbox_config(pod, 0, &self.config.log_root)?;
        let id = match self
            .runtime
            .create_container(sandbox_id, &config, &sandbox)
            .await
        {
            Ok(id) => id,
            Err(e) => {
                self.tracks.entry(name).or_default().waiting =
                    Some(waiting("CreateContainerError", &e));
                return Err(e);
            }
        };
        if let Err(e) = self.runtime.start_container(&id).await {
            self.tracks.entry(name).or_default().waiting = Some(waiting("RunContainerError", &e));
            return Err(e);
        }
        let track = self.tracks.entry(name).or_default();
        track.waiting = None;
        track.killed_for = None;
        Ok(())
    }

    /// Makes sure the image is there, following the pull policy; on failure the waiting
    /// reason (`ErrImageNeverPull`, `ErrImagePull`, `ImagePullBackOff`).
    async fn ensure_image(
        &mut self,
        container: &Container,
    ) -> std::result::Result<(), (&'static str, Error)> {
        let image = container.image.clone().unwrap_or_default();
        let policy = container.image_pull_policy.clone().unwrap_or_else(|| {
            // Kubernetes' default: Always for `:latest` or no tag, else IfNotPresent.
            let tag = image
                .rsplit('/')
                .next()
                .unwrap_or("")
                .split_once(':')
                .map(|(_, t)| t);
            if image.contains('@') || tag.is_some_and(|t| t != "latest") {
                "IfNotPresent".into()
            } else {
                "Always".into()
            }
        });
        let present = self
            .runtime
            .image_status(&image)
            .await
            .map_err(|e| ("ErrImagePull", e))?
            .is_some();
        match policy.as_str() {
            "Never" if !present => Err((
                "ErrImageNeverPull",
                Error::Runtime {
                    op: "ImageStatus",
                    message: format!(
                        "container image {image:?} is not present with pull policy of Never"
                    ),
                },
            )),
            "Never" => Ok(()),
            "IfNotPresent" if present => Ok(()),
            _ => {
                let track = self.tracks.entry(container.name.clone()).or_default();
                let now = Instant::now();
                if let Some(at) = track.next_start
                    && now < at
                    && track.waiting.as_ref().is_some_and(|w| {
                        w.reason.starts_with("ErrImage") || w.reason == "ImagePullBackOff"
                    })
                {
                    return Err((
                        "ImagePullBackOff",
                        Error::Runtime {
                            op: "PullImage",
                            message: format!("Back-off pulling image {image:?}"),
                        },
                    ));
                }
                match self.runtime.pull_image(&image).await {
                    Ok(_) => {
                        track.backoff = None;
                        track.next_start = None;
                        Ok(())
                    }
                    Err(e) => {
                        let next = track
                            .backoff
                            .map_or(BACKOFF_START, |b| (b * 2).min(BACKOFF_MAX));
                        track.backoff = Some(next);
                        track.next_start = Some(now + next);
                        Err(("ErrImagePull", e))
                    }
                }
            }
        }
    }

    /// Runs the container's due probes; a failed liveness (or startup) probe stops it so that
    /// the restart policy applies.
    async fn probe(
        &mut self,
        pod: &Pod,
        container: &Container,
        id: &str,
        pod_ip: &str,
        now: Instant,
    ) {
        let track = self.tracks.entry(container.name.clone()).or_default();
        if track.probed_id != id {
            // A new container: probes start over (initial delays count from now).
            track.probed_id = id.to_owned();
            track.liveness = container
                .liveness_probe
                .as_ref()
                .map(|p| ProbeState::new(p, ProbeKind::Liveness, now));
            track.readiness = container
                .readiness_probe
                .as_ref()
                .map(|p| ProbeState::new(p, ProbeKind::Readiness, now));
            track.startup = container
                .startup_probe
                .as_ref()
                .map(|p| ProbeState::new(p, ProbeKind::Startup, now));
            track.ready = track.readiness.is_none();
            track.waiting = None;
        }
        let target = probe::Target {
            runtime: &*self.runtime,
            container_id: id,
            pod_ip,
            container,
        };
        // Startup gates the others.
        if let Some(startup) = track.startup.as_mut() {
            if startup.due(now) {
                let result = probe::run(startup.probe(), &target).await;
                startup.record(result, Instant::now());
            }
            match startup.verdict() {
                Verdict::Success => {}
                Verdict::Failure => {
                    track.killed_for = Some("startup probe failed".into());
                    let grace = grace_period(pod);
                    let _ = self.runtime.stop_container(id, grace).await;
                    return;
                }
                Verdict::Unknown => return,
            }
        }
        if let Some(liveness) = track.liveness.as_mut()
            && liveness.due(now)
        {
            let result = probe::run(liveness.probe(), &target).await;
            liveness.record(result, Instant::now());
            if liveness.verdict() == Verdict::Failure {
                tracing::info!(pod = %self.id.key(), container = %container.name, "liveness probe failed; restarting");
                track.killed_for = Some("liveness probe failed".into());
                let grace = grace_period(pod);
                let _ = self.runtime.stop_container(id, grace).await;
                return;
            }
        }
        match track.readiness.as_mut() {
            Some(readiness) => {
                if readiness.due(now) {
                    let result = probe::run(readiness.probe(), &target).await;
                    readiness.record(result, Instant::now());
                }
                track.ready = readiness.verdict() == Verdict::Success;
            }
            None => track.ready = true,
        }
    }

    /// Stops (`grace`) and, once stopped, removes every container and sandbox of the pod;
    /// `remove_all` also deletes its volumes. Returns whether nothing is left.
    async fn kill(
        &mut self,
        sandboxes: &[SandboxInfo],
        containers: &[ContainerInfo],
        grace: Duration,
        remove_all: bool,
    ) -> bool {
        for c in containers
            .iter()
            .filter(|c| c.state == ContainerState::Running)
        {
            if let Err(e) = self.runtime.stop_container(&c.id, grace).await {
                tracing::warn!(pod = %self.id.key(), error = %e, "stopping a container");
            }
        }
        for s in sandboxes {
            if let Err(e) = self.runtime.stop_sandbox(&s.id).await {
                tracing::warn!(pod = %self.id.key(), error = %e, "stopping the sandbox");
            }
        }
        for track in self.tracks.values_mut() {
            track.ready = false;
        }
        if !remove_all {
            return false;
        }
        let mut clean = true;
        for c in containers {
            clean &= self.runtime.remove_container(&c.id).await.is_ok();
        }
        for s in sandboxes {
            clean &= self.runtime.remove_sandbox(&s.id).await.is_ok();
        }
        if clean && let Err(e) = self.volumes.remove_pod_dir(&self.id.uid) {
            tracing::warn!(pod = %self.id.key(), error = %e, "removing the pod's volumes");
        }
        clean
    }

    /// The main containers' views; the init containers' go to `self.init_views`.
    async fn views(&mut self, pod: &Pod, containers: &[ContainerInfo]) -> Vec<ContainerView> {
        let init: Vec<Container> = pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.clone())
            .unwrap_or_default();
        self.init_views = self.view_list(&init, containers).await;
        let main: Vec<Container> = pod
            .spec
            .as_ref()
            .map(|s| s.containers.clone())
            .unwrap_or_default();
        self.view_list(&main, containers).await
    }

    async fn view_list(
        &self,
        specs: &[Container],
        containers: &[ContainerInfo],
    ) -> Vec<ContainerView> {
        let mut views = Vec::new();
        for spec in specs {
            let mut mine: Vec<&ContainerInfo> =
                containers.iter().filter(|c| c.name == spec.name).collect();
            mine.sort_by_key(|c| std::cmp::Reverse((c.attempt, c.created_at)));
            let current = match mine.first() {
                Some(c) => self.runtime.container_status(&c.id).await.ok(),
                None => None,
            };
            let previous = match mine.get(1) {
                Some(c) => self.runtime.container_status(&c.id).await.ok(),
                None => None,
            };
            let track = self.tracks.get(&spec.name);
            let mut current = current;
            if let (Some(status), Some(reason)) =
                (current.as_mut(), track.and_then(|t| t.killed_for.as_ref()))
                && status.state == ContainerState::Exited
                && status.message.is_empty()
            {
                status.message = reason.clone();
            }
            views.push(ContainerView {
                name: spec.name.clone(),
                image: spec.image.clone().unwrap_or_default(),
                restart_count: mine.first().map_or(0, |c| c.attempt),
                // Without readiness or startup probe a running container is ready at once;
                // with one, when the probe of this very container says so.
                ready: (spec.readiness_probe.is_none() && spec.startup_probe.is_none()
                    || track.is_some_and(|t| {
                        t.ready && current.as_ref().is_some_and(|c| c.id == t.probed_id)
                    }))
                    && current
                        .as_ref()
                        .is_some_and(|c| c.state == ContainerState::Running),
                waiting: track.and_then(|t| t.waiting.clone()),
                current,
                previous,
            });
        }
        views
    }

    /// The pod phase, init containers included: Pending until they all succeeded, Failed when
    /// one failed and the policy is Never.
    fn phase(&self, pod: &Pod, views: &[ContainerView]) -> &'static str {
        let policy = restart_policy(pod);
        let init_failed = self.init_views.iter().any(|v| {
            v.current
                .as_ref()
                .is_some_and(|c| c.state == ContainerState::Exited && c.exit_code != 0)
        });
        if init_failed && policy == "Never" {
            return "Failed";
        }
        if !self.init_views.iter().all(init_succeeded) {
            return "Pending";
        }
        pod_status::phase(views, &policy)
    }

    fn status(&mut self, pod: &Pod, views: &[ContainerView], pod_ip: Option<&str>) -> Value {
        let now = now_rfc3339();
        let phase = self.phase(pod, views);
        let initialized = self.init_views.iter().all(init_succeeded);
        let all_ready = !views.is_empty() && views.iter().all(|v| v.ready);
        let sandbox_ok = pod_ip.is_some() && self.sandbox_error.is_none();
        let before = self.last_conditions.clone();
        let before = before.as_ref();
        let conditions = json!([
            pod_status::condition("PodReadyToStartContainers", sandbox_ok, &now, before, None),
            pod_status::condition(
                "Initialized",
                initialized,
                &now,
                before,
                Some("ContainersNotInitialized")
            ),
            pod_status::condition("Ready", all_ready, &now, before, Some("ContainersNotReady")),
            pod_status::condition(
                "ContainersReady",
                all_ready,
                &now,
                before,
                Some("ContainersNotReady")
            ),
            pod_status::condition("PodScheduled", true, &now, before, None),
        ]);
        self.last_conditions = Some(conditions.clone());
        let mut status = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": self.config.host_ip,
            "hostIPs": [{"ip": self.config.host_ip}],
            "startTime": self.started_at,
            "containerStatuses": views.iter().map(pod_status::container_status_json).collect::<Vec<_>>(),
        });
        if !self.init_views.is_empty() {
            let init: Vec<Value> = self
                .init_views
                .iter()
                .map(|v| {
                    let mut j = pod_status::container_status_json(v);
                    j["ready"] = json!(init_succeeded(v));
                    j
                })
                .collect();
            status["initContainerStatuses"] = json!(init);
        }
        if let Some(ip) = pod_ip.filter(|ip| !ip.is_empty()) {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{"ip": ip}]);
        }
        if let Some(e) = &self.sandbox_error {
            status["message"] = json!(e);
            status["reason"] = json!("SandboxFailed");
        }
        if let Some(qos) = pod.status.as_ref().and_then(|s| s.qos_class.clone()) {
            status["qosClass"] = json!(qos);
        }
        status
    }
}

/// The pod's restart policy (`Always` by default).
pub fn restart_policy(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_else(|| "Always".into())
}

/// The grace period for stopping the pod's containers: the deletion's, else the spec's, else
/// 30 s.
pub fn grace_period(pod: &Pod) -> Duration {
    let seconds = pod.metadata.deletion_grace_period_seconds.or_else(|| {
        pod.spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
    });
    seconds.map_or(DEFAULT_GRACE, |s| {
        Duration::from_secs(u64::try_from(s).unwrap_or(0))
    })
}

/// A string that changes when anything the pod's volumes are made of changes: a ConfigMap
/// or Secret it may use, a token issued for it, its labels and annotations (downwardAPI).
fn objects_version(pod: &Pod, objects: &PodObjects) -> String {
    let uid = pod.metadata.uid.as_deref().unwrap_or("");
    let tokens = objects
        .tokens
        .iter()
        .filter(|(key, _)| key.contains(uid))
        .map(|(key, t)| format!("t/{key}/{}", t.expires));
    let metadata = format!("m/{:?}/{:?}", pod.metadata.labels, pod.metadata.annotations);
    let mut parts: Vec<String> = objects
        .configmaps
        .iter()
        .map(|(n, c)| {
            format!(
                "c/{n}/{}",
                c.metadata.resource_version.clone().unwrap_or_default()
            )
        })
        .chain(objects.secrets.iter().map(|(n, s)| {
            format!(
                "s/{n}/{}",
                s.metadata.resource_version.clone().unwrap_or_default()
            )
        }))
        .chain(tokens)
        .chain(std::iter::once(metadata))
        .collect();
    parts.sort();
    parts.join(",")
}

/// Now, RFC 3339 in seconds.
pub fn now_rfc3339() -> String {
    kubeedge_proto::rfc3339_utc(kubeedge_proto::now_millis(), false)
}

/// Whether an init container ran to success.
fn init_succeeded(v: &ContainerView) -> bool {
    v.current
        .as_ref()
        .is_some_and(|c| c.state == ContainerState::Exited && c.exit_code == 0)
}

/// Whether no container of `views` runs.
fn none_running(views: &[ContainerView]) -> bool {
    views.iter().all(|v| {
        v.current
            .as_ref()
            .is_none_or(|c| c.state != ContainerState::Running)
    })
}
