//! Hostile joins and damaged configs against the real `cloudcore` and `edgecore` binaries:
//! node-scoped and single-use tokens from `cloudcore gettoken`, and a node that keeps its
//! identity when its edgecore.yaml is cut short or names another node. The honest node of the
//! same system keeps running through all of it. Skipped, saying so, when
//! `EDGED_CRI_ENDPOINT` is not set (`.ci/run` sets it).

mod system;

use std::path::Path;

use system::{DEADLINE, System, bin, cri_endpoint, eventually};
use tokio::process::Command;

/// `cloudcore gettoken ARGS` with the system's CA.
async fn gettoken(system: &System, args: &[&str]) -> String {
    let out = Command::new(bin("cloudcore"))
        .arg("gettoken")
        .arg(format!(
            "--pki-dir={}",
            system.dir.path().join("pki").display()
        ))
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "gettoken: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `edgecore join` for `node` into `root` with `token`; its exit status and stderr.
async fn join(system: &System, root: &Path, node: &str, token: &str) -> (bool, String) {
    let cloudhub = system.relay.addr;
    let https = system.https;
    let out = Command::new(bin("edgecore"))
        .arg("join")
        .args([
            format!("--cloudcore={cloudhub}"),
            format!("--https-port={}", https.port()),
            format!("--token={token}"),
            format!("--node={node}"),
            format!("--root={}", root.display()),
        ])
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `edgecore --root ROOT`, which must stop by itself: its exit status and output.
async fn edgecore_stops(root: &Path) -> (bool, String) {
    let run = Command::new(bin("edgecore"))
        .arg(format!("--root={}", root.display()))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(DEADLINE, run)
        .await
        .expect("edgecore did not stop")
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    (out.status.success(), text)
}

/// The node's certificate and key as they are on disk.
fn identity_files(root: &Path) -> (Vec<u8>, Vec<u8>) {
    (
        std::fs::read(root.join("certs/server.crt")).unwrap(),
        std::fs::read(root.join("certs/server.key")).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_tokens_and_a_sticky_identity() {
    let Some(cri) = cri_endpoint() else { return };
    let mut system = System::start("edge-honest", cri).await;
    eventually("the honest node connected", || {
        system.edge_metric("edgecore_connected")
    })
    .await;
    let scratch = system.dir.path().join("hostile");

    // A token for edge-1 only, usable once.
    let token = gettoken(&system, &["--node=edge-1", "--single-use=true"]).await;
    let (ok, err) = join(&system, &scratch.join("edge-2"), "edge-2", &token).await;
    assert!(
        !ok && err.contains("the token is for node \"edge-1\""),
        "{err}"
    );
    let edge_1 = scratch.join("edge-1");
    let (ok, err) = join(&system, &edge_1, "edge-1", &token).await;
    assert!(ok, "{err}");
    let (ok, err) = join(&system, &scratch.join("edge-1-again"), "edge-1", &token).await;
    assert!(!ok && err.contains("used before"), "{err}");
    // A bad node name is refused before anything is signed.
    let (ok, err) = join(
        &system,
        &scratch.join("bad"),
        "Edge_1",
        &gettoken(&system, &[]).await,
    )
    .await;
    assert!(!ok, "{err}");

    // edge-1's config cut short after `token:` (the rest lost): edgecore stops with a clear
    // error and leaves the identity alone; it does not become the host.
    let config = edge_1.join("config/edgecore.yaml");
    let whole = std::fs::read_to_string(&config).unwrap();
    let cut = &whole[..whole.find("token:").expect("a token in the config") + "token:".len()];
    std::fs::write(&config, cut).unwrap();
    let before = identity_files(&edge_1);
    let (ok, out) = edgecore_stops(&edge_1).await;
    eprintln!("edgecore with its config cut after `token:`:\n{out}");
    assert!(!ok, "{out}");
    // It is still edge-1 (the name comes from the certificate), not the host.
    assert!(out.contains("node=edge-1"), "{out}");
    assert!(!out.contains("joining"), "{out}");
    assert_eq!(identity_files(&edge_1), before, "{out}");

    // A config that names another node: stops, naming both, identity untouched.
    let renamed = whole.replace("hostnameOverride: edge-1", "hostnameOverride: vm");
    assert_ne!(renamed, whole);
    std::fs::write(&config, renamed).unwrap();
    let (ok, out) = edgecore_stops(&edge_1).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("certificate of node \"edge-1\"") && out.contains("\"vm\""),
        "{out}"
    );
    assert_eq!(identity_files(&edge_1), before);

    // The honest node was connected throughout.
    assert_eq!(system.edge_metric("edgecore_connected").await, Some(1));
    // An explicit `edgecore join` is the way to a new identity for that machine.
    let (ok, err) = join(&system, &edge_1, "vm", &gettoken(&system, &[]).await).await;
    assert!(ok, "{err}");
    assert_ne!(identity_files(&edge_1), before);
    system.edge.kill().await;
}
