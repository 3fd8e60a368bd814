//! The README's first command runs `quickstart`: here it runs to the end (`--exit-when-done`)
//! with the test containerd, and every step it promises is reported. Skipped, saying so, when
//! `EDGED_CRI_ENDPOINT` is not set.

mod system;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_shows_the_whole_flow_and_leaves_nothing_behind() {
    let Some(cri) = system::cri_endpoint() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_quickstart"))
        .arg(format!("--dir={}", dir.path().join("qs").display()))
        .arg(format!("--cri-endpoint={cri}"))
        .arg("--exit-when-done=true")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("the quickstart finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the quickstart failed");
    for promised in [
        "[ok] cloudcore running in manifest mode",
        "[ok] node edge-1 joined",
        "[ok] node edge-1 registered and Ready",
        "[ok] pod default/hello Running on edge-1",
        "configMap volume holds \"hello from the cloud\"",
        "[ok] twin reported: temperature",
        "[ok] desired setpoint written to the device: holding register 0 = 235",
        "[ok] the cloud changed the setpoint: device register 0 = 210, reported back as 21.0",
        "[ok] pod hello deleted: its containers, sandbox and volumes removed",
    ] {
        assert!(stdout.contains(promised), "missing {promised:?}");
    }
    assert!(!stdout.contains("[skipped]") && !stdout.contains("[failed]"));
}
