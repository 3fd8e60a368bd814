//! Runs the real `kubeedge-frame` binary over the captured KubeEdge traffic.

use std::io::Write;
use std::process::{Command, Output, Stdio};

const CAPTURE: &str = include_str!("../../kubeedge-proto/tests/vectors/ws-v1.22.2.jsonl");

/// The 79 captured WebSocket payloads, each with its trailing newline.
fn captured_lines() -> String {
    CAPTURE
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "message")
        .map(|r| r["payload"].as_str().unwrap().to_owned())
        .collect()
}

fn frame(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubeedge-frame"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.to_owned();
    let writer = std::thread::spawn(move || pipe.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    out
}

#[test]
fn reencode_reproduces_the_capture_byte_for_byte() {
    let input = captured_lines();
    let out = frame(&["reencode"], &input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), input);
}

#[test]
fn check_accepts_the_capture_and_rejects_a_bad_line() {
    let input = captured_lines();
    let out = frame(&["check"], &input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("79 valid messages"));

    let mut broken = input.lines().take(3).collect::<Vec<_>>().join("\n");
    broken.push_str("\n{\"header\":{\"msg_id\":\"x\",\"timestamp\":\"soon\"}}\n");
    let out = frame(&["check"], &broken);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 4:"), "{stderr}");
}

#[test]
fn show_prints_typed_routes() {
    let out = frame(&["show"], &captured_lines());
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("object namespace=default type=pod name=pod-demo"));
    assert!(text.contains("device default/thermo-1 event=twin/edge_updated"));
    assert!(text.contains("none (edgecore's empty shutdown message)"));
    assert!(text.contains("(JSON inside a string)"));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(frame(&["frobnicate"], "").status.code(), Some(2));
    assert_eq!(frame(&[], "").status.code(), Some(2));
    assert_eq!(
        frame(&["check", "--max-len", "x"], "").status.code(),
        Some(2)
    );
}
