//! `CriRuntime` against a real containerd (CRI `runtime.v1`).
//!
//! Start one with `scripts/containerd-env.sh up` and run
//! `EDGED_CRI_ENDPOINT=unix:///tmp/edged-ctrd/containerd.sock cargo test -p kubeedge-edged --test cri_runtime`
//! (`.ci/run` does both). Without `EDGED_CRI_ENDPOINT` every test prints
//! "skipped: EDGED_CRI_ENDPOINT not set" and passes.
//!
//! The images `edged.test/busybox:1` and `edged.test/pause:1` (the sandbox image) are the ones the
//! script builds and imports; the pod network is its bridge on 10.88.77.0/24. Every test uses its
//! own pod names and uids, so the tests run in parallel, and removes what it made, also when it
//! fails (the `Cleanup` guard). Timeouts here are hang guards only.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use kubeedge_edged::runtime::{
    ContainerConfig, ContainerState, ContainerStatus, LABEL_CONTAINER_NAME, LABEL_POD_NAME,
    LABEL_POD_NAMESPACE, LABEL_POD_UID, LinuxResources, Mount, SandboxConfig, SandboxState,
};
use kubeedge_edged::{CriRuntime, Error, PodRuntime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const BUSYBOX: &str = "edged.test/busybox:1";
const ABSENT: &str = "edged.test/absent:404";
/// Hang guard of one whole test.
const GUARD: Duration = Duration::from_secs(180);
/// Label on everything these tests make.
const SUITE_LABEL: &str = "edged.test/suite";

/// The runtime under test, or `None` (and a note) when no endpoint is configured.
async fn runtime(test: &str) -> Option<(CriRuntime, String)> {
    let Ok(endpoint) = std::env::var("EDGED_CRI_ENDPOINT") else {
        println!("{test}: skipped: EDGED_CRI_ENDPOINT not set");
        return None;
    };
    let runtime = CriRuntime::connect(&endpoint)
        .await
        .unwrap_or_else(|e| panic!("EDGED_CRI_ENDPOINT={endpoint}: {e}"));
    Some((runtime, endpoint))
}

/// Stops and removes the sandboxes a test made (and with them their containers) when dropped,
/// also while the test panics. Uses its own connection on its own thread, because the test's
/// runtime may be the one unwinding.
struct Cleanup {
    endpoint: String,
    sandboxes: Vec<String>,
}

impl Cleanup {
    fn new(endpoint: &str) -> Self {
        Self {
            endpoint: endpoint.to_owned(),
            sandboxes: Vec::new(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let ids = std::mem::take(&mut self.sandboxes);
        if ids.is_empty() {
            return;
        }
        let endpoint = self.endpoint.clone();
        let cleaner = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            rt.block_on(async {
                let Ok(cri) = CriRuntime::connect(&endpoint).await else {
                    return;
                };
                for id in ids {
                    let _ = timeout(Duration::from_secs(60), async {
                        let _ = cri.stop_sandbox(&id).await;
                        let _ = cri.remove_sandbox(&id).await;
                    })
                    .await;
                }
            });
        });
        let _ = cleaner.join();
    }
}

/// A pod config with a name and uid no other test (or test run) uses.
fn pod(test: &str, host_network: bool, logs: &Path) -> SandboxConfig {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let name = format!("{test}-{}-{n}", std::process::id());
    let uid = format!("uid-{}-{n}-{nanos:09}", std::process::id());
    let labels = BTreeMap::from([
        (LABEL_POD_NAME.to_owned(), name.clone()),
        (LABEL_POD_NAMESPACE.to_owned(), "edged-test".to_owned()),
        (LABEL_POD_UID.to_owned(), uid.clone()),
        (SUITE_LABEL.to_owned(), "cri_runtime".to_owned()),
    ]);
    SandboxConfig {
        name: name.clone(),
        namespace: "edged-test".into(),
        uid,
        attempt: 0,
        hostname: name,
        host_network,
        log_directory: logs.to_owned(),
        labels,
        annotations: BTreeMap::from([("edged.test/test".to_owned(), test.to_owned())]),
        ..Default::default()
    }
}

/// A busybox container running `sh -c script` in `pod`.
fn container(name: &str, script: &str, pod: &SandboxConfig) -> ContainerConfig {
    let mut labels = pod.labels.clone();
    labels.insert(LABEL_CONTAINER_NAME.to_owned(), name.to_owned());
    ContainerConfig {
        name: name.to_owned(),
        attempt: 0,
        image: BUSYBOX.into(),
        command: vec!["sh".into(), "-c".into()],
        args: vec![script.to_owned()],
        labels,
        log_path: format!("{name}/0.log"),
        ..Default::default()
    }
}

/// Runs the sandbox of `pod`, registered with `cleanup`.
async fn run_pod(cri: &CriRuntime, pod: &SandboxConfig, cleanup: &mut Cleanup) -> String {
    let started = Instant::now();
    let id = cri.run_sandbox(pod).await.expect("RunPodSandbox");
    println!("RunPodSandbox {}: {:?}", pod.name, started.elapsed());
    cleanup.sandboxes.push(id.clone());
    id
}

/// Creates and starts `c` in the sandbox `sandbox_id`.
async fn start(
    cri: &CriRuntime,
    sandbox_id: &str,
    c: &ContainerConfig,
    pod: &SandboxConfig,
) -> String {
    let started = Instant::now();
    let id = cri
        .create_container(sandbox_id, c, pod)
        .await
        .expect("CreateContainer");
    cri.start_container(&id).await.expect("StartContainer");
    println!(
        "create+start {}/{}: {:?}",
        pod.name,
        c.name,
        started.elapsed()
    );
    id
}

/// Polls the container's status until it is in `state`.
async fn wait_for(cri: &CriRuntime, id: &str, state: ContainerState) -> ContainerStatus {
    loop {
        let status = cri.container_status(id).await.expect("ContainerStatus");
        if status.state == state {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn strings(cmd: &[&str]) -> Vec<String> {
    cmd.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn version() {
    let Some((cri, _)) = runtime("version").await else {
        return;
    };
    let v = timeout(GUARD, cri.version())
        .await
        .expect("hang guard")
        .unwrap();
    assert_eq!(v.name, "containerd");
    assert!(!v.version.is_empty());
    assert_eq!(v.api_version, "v1");
}

#[tokio::test]
async fn image_status_present_and_absent() {
    let Some((cri, _)) = runtime("image_status_present_and_absent").await else {
        return;
    };
    timeout(GUARD, async {
        let id = cri.image_status(BUSYBOX).await.unwrap();
        let id = id.expect("edged.test/busybox:1 is imported by scripts/containerd-env.sh up");
        assert!(id.starts_with("sha256:"), "{id}");
        assert_eq!(cri.image_status(ABSENT).await.unwrap(), None);
    })
    .await
    .expect("hang guard");
}

#[tokio::test]
async fn pull_without_a_registry_is_a_runtime_error() {
    let Some((cri, _)) = runtime("pull_without_a_registry_is_a_runtime_error").await else {
        return;
    };
    let err = timeout(GUARD, cri.pull_image(ABSENT))
        .await
        .expect("hang guard")
        .unwrap_err();
    match err {
        Error::Runtime { op, message } => {
            assert_eq!(op, "PullImage");
            assert!(!message.is_empty());
            println!("PullImage {ABSENT}: {message}");
        }
        other => panic!("expected Error::Runtime, got {other:?}"),
    }
}

#[tokio::test]
async fn unknown_ids_are_not_found_and_stop_remove_are_idempotent() {
    let Some((cri, _)) = runtime("unknown_ids").await else {
        return;
    };
    timeout(GUARD, async {
        let id = "0000000000000000000000000000000000000000000000000000000000000000";
        assert!(matches!(
            cri.container_status(id).await,
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            cri.sandbox_status(id).await,
            Err(Error::NotFound(_))
        ));
        cri.stop_container(id, Duration::from_secs(1))
            .await
            .unwrap();
        cri.remove_container(id).await.unwrap();
        cri.stop_sandbox(id).await.unwrap();
        cri.remove_sandbox(id).await.unwrap();
    })
    .await
    .expect("hang guard");
}

#[tokio::test]
async fn host_network_pod_lifecycle() {
    let Some((cri, endpoint)) = runtime("host_network_pod_lifecycle").await else {
        return;
    };
    let logs = tempfile::tempdir().unwrap();
    let mut cleanup = Cleanup::new(&endpoint);
    timeout(GUARD, async {
        let pod = pod("hostnet", true, logs.path());
        let sandbox_id = run_pod(&cri, &pod, &mut cleanup).await;
        let status = cri.sandbox_status(&sandbox_id).await.unwrap();
        assert_eq!(
            (&*status.id, status.state),
            (&*sandbox_id, SandboxState::Ready)
        );

        let c = container("main", "echo hello; sleep 1000", &pod);
        let id = start(&cri, &sandbox_id, &c, &pod).await;
        let status = wait_for(&cri, &id, ContainerState::Running).await;
        assert_eq!((&*status.name, status.attempt), ("main", 0));
        assert_eq!(status.image, BUSYBOX);
        assert!(
            status.image_ref.starts_with("sha256:"),
            "{}",
            status.image_ref
        );
        assert!(status.created_at > 0 && status.started_at >= status.created_at);
        assert_eq!(status.finished_at, 0);

        // Found again by its labels, as after an edged restart.
        let by_uid = BTreeMap::from([(LABEL_POD_UID.to_owned(), pod.uid.clone())]);
        let sandboxes = cri.list_sandboxes_matching(&by_uid).await.unwrap();
        assert_eq!(sandboxes.len(), 1);
        let s = &sandboxes[0];
        assert_eq!(s.id, sandbox_id);
        assert_eq!(
            (&*s.name, &*s.namespace, &*s.uid),
            (&*pod.name, "edged-test", &*pod.uid)
        );
        assert_eq!(s.state, SandboxState::Ready);
        assert_eq!(s.labels, pod.labels);
        let containers = cri.list_containers_matching(&by_uid).await.unwrap();
        assert_eq!(containers.len(), 1);
        assert_eq!(containers[0].id, id);
        assert_eq!(containers[0].sandbox_id, sandbox_id);
        assert_eq!(containers[0].state, ContainerState::Running);
        assert_eq!(containers[0].labels[LABEL_CONTAINER_NAME], "main");
        assert!(
            cri.list_sandboxes()
                .await
                .unwrap()
                .iter()
                .any(|s| s.id == sandbox_id)
        );
        assert!(
            cri.list_containers()
                .await
                .unwrap()
                .iter()
                .any(|c| c.id == id)
        );

        // The log lands at <log_directory>/<log_path>, in the CRI log format.
        let log = logs.path().join("main/0.log");
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains(" stdout F hello") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // sh as pid 1 ignores SIGTERM: SIGKILL after the grace (137); 143 if it did exit on TERM.
        cri.stop_container(&id, Duration::from_millis(500))
            .await
            .unwrap();
        let status = cri.container_status(&id).await.unwrap();
        assert_eq!(status.state, ContainerState::Exited);
        assert!([137, 143].contains(&status.exit_code), "{status:?}");
        assert!(status.finished_at >= status.started_at);
        cri.stop_container(&id, Duration::from_secs(1))
            .await
            .unwrap();

        cri.remove_container(&id).await.unwrap();
        assert!(matches!(
            cri.container_status(&id).await,
            Err(Error::NotFound(_))
        ));
        cri.remove_container(&id).await.unwrap();

        cri.stop_sandbox(&sandbox_id).await.unwrap();
        assert_eq!(
            cri.sandbox_status(&sandbox_id).await.unwrap().state,
            SandboxState::NotReady
        );
        cri.remove_sandbox(&sandbox_id).await.unwrap();
        assert!(
            cri.list_sandboxes_matching(&by_uid)
                .await
                .unwrap()
                .is_empty()
        );
        cri.stop_sandbox(&sandbox_id).await.unwrap();
        cri.remove_sandbox(&sandbox_id).await.unwrap();
    })
    .await
    .expect("hang guard");
}

#[tokio::test]
async fn pod_network_gets_an_ip_the_host_reaches() {
    let Some((cri, endpoint)) = runtime("pod_network_gets_an_ip_the_host_reaches").await else {
        return;
    };
    let logs = tempfile::tempdir().unwrap();
    let mut cleanup = Cleanup::new(&endpoint);
    timeout(GUARD, async {
        let pod = pod("podnet", false, logs.path());
        let sandbox_id = run_pod(&cri, &pod, &mut cleanup).await;
        let status = cri.sandbox_status(&sandbox_id).await.unwrap();
        assert_eq!(status.state, SandboxState::Ready);
        let ip: Ipv4Addr = status
            .ip
            .parse()
            .unwrap_or_else(|e| panic!("{:?}: {e}", status.ip));
        assert_eq!(ip.octets()[..3], [10, 88, 77], "{ip}");

        let web = container(
            "web",
            "mkdir -p /www && echo edged-ok > /www/index.html && exec httpd -f -p 8080 -h /www",
            &pod,
        );
        let id = start(&cri, &sandbox_id, &web, &pod).await;
        wait_for(&cri, &id, ContainerState::Running).await;

        // httpd listens a moment after the start: retry until it answers.
        let response = loop {
            if let Ok(mut stream) = tokio::net::TcpStream::connect((ip, 8080)).await {
                stream
                    .write_all(b"GET /index.html HTTP/1.0\r\nHost: pod\r\n\r\n")
                    .await
                    .unwrap();
                let mut response = Vec::new();
                (&mut stream)
                    .take(64 * 1024)
                    .read_to_end(&mut response)
                    .await
                    .unwrap();
                break String::from_utf8_lossy(&response).into_owned();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let status_line = response.lines().next().unwrap_or_default();
        assert!(
            status_line.starts_with("HTTP/1.") && status_line.contains(" 200 "),
            "{response}"
        );
        assert!(response.ends_with("edged-ok\n"), "{response}");

        cri.stop_sandbox(&sandbox_id).await.unwrap();
        cri.remove_sandbox(&sandbox_id).await.unwrap();
        assert!(matches!(
            cri.container_status(&id).await,
            Err(Error::NotFound(_))
        ));
    })
    .await
    .expect("hang guard");
}

#[tokio::test]
async fn exec_sync_env_workdir_resources_and_mount() {
    let Some((cri, endpoint)) = runtime("exec_sync_env_workdir_resources_and_mount").await else {
        return;
    };
    let logs = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("greeting"), "from the host\n").unwrap();
    let mut cleanup = Cleanup::new(&endpoint);
    timeout(GUARD, async {
        let pod = pod("exec", true, logs.path());
        let sandbox_id = run_pod(&cri, &pod, &mut cleanup).await;
        let mut c = container("box", "sleep 1000", &pod);
        c.env = vec![("GREETING".into(), "hi there".into())];
        c.working_dir = "/tmp".into();
        c.mounts = vec![Mount {
            container_path: "/data".into(),
            host_path: data.path().to_owned(),
            readonly: true,
        }];
        c.resources = LinuxResources {
            memory_limit_bytes: 64 << 20,
            ..Default::default()
        };
        let id = start(&cri, &sandbox_id, &c, &pod).await;
        wait_for(&cri, &id, ContainerState::Running).await;
        let exec = |script: &str| {
            let cmd = strings(&["sh", "-c", script]);
            let cri = cri.clone();
            let id = id.clone();
            async move { cri.exec_sync(&id, &cmd, Duration::from_secs(10)).await.unwrap() }
        };

        let r = exec("echo out; echo err >&2; exit 7").await;
        assert_eq!(r.exit_code, 7);
        assert_eq!(r.stdout, b"out\n");
        assert_eq!(r.stderr, b"err\n");

        let r = exec(r#"echo "$GREETING"; pwd"#).await;
        assert_eq!((r.exit_code, &*String::from_utf8_lossy(&r.stdout)), (0, "hi there\n/tmp\n"));

        // The host directory is mounted, read-only.
        let r = exec("cat /data/greeting").await;
        assert_eq!((r.exit_code, &*r.stdout), (0, &b"from the host\n"[..]));
        let r = exec("echo x > /data/new").await;
        assert_ne!(r.exit_code, 0);
        assert!(!data.path().join("new").exists());

        // The memory limit reached the container's cgroup (v1 on this machine, v2 elsewhere).
        let r = exec(
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max",
        )
        .await;
        assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "67108864");

        // Output beyond 64 KiB is cut, not kept.
        let r = exec("head -c 200000 /dev/zero").await;
        assert_eq!((r.exit_code, r.stdout.len()), (0, 64 * 1024));

        cri.stop_sandbox(&sandbox_id).await.unwrap();
        cri.remove_sandbox(&sandbox_id).await.unwrap();
    })
    .await
    .expect("hang guard");
}

#[tokio::test]
async fn a_container_that_exits_3_shows_exit_code_3() {
    let Some((cri, endpoint)) = runtime("a_container_that_exits_3_shows_exit_code_3").await else {
        return;
    };
    let logs = tempfile::tempdir().unwrap();
    let mut cleanup = Cleanup::new(&endpoint);
    timeout(GUARD, async {
        let pod = pod("exit3", true, logs.path());
        let sandbox_id = run_pod(&cri, &pod, &mut cleanup).await;
        let id = start(&cri, &sandbox_id, &container("fail", "exit 3", &pod), &pod).await;
        let status = wait_for(&cri, &id, ContainerState::Exited).await;
        assert_eq!(status.exit_code, 3);
        assert_eq!(status.reason, "Error");
        // Both set; but not ordered: containerd 1.6 stamps started_at after the start call
        // returns, which for a process this short is after its exit was recorded.
        assert!(
            status.started_at >= status.created_at && status.finished_at >= status.created_at,
            "{status:?}"
        );
        cri.remove_container(&id).await.unwrap();
        cri.stop_sandbox(&sandbox_id).await.unwrap();
        cri.remove_sandbox(&sandbox_id).await.unwrap();
    })
    .await
    .expect("hang guard");
}
