//! A device maker's crate that only implements [`DeviceDriver`] depends on kubeedge-mapper with
//! default features off: it must build, and its dependency graph (from `cargo metadata`) must
//! hold no SQLite, no gRPC stack and no protocol library it did not ask for.
//!
//! The crate is written to a temporary directory and checked with the cargo that runs this
//! test, offline, with the workspace's lock file (so the versions are the ones the workspace
//! builds with) and a target directory of its own.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const DRIVER: &str = r#"
use kubeedge_mapper::{DeviceDriver, PropertySpec, PropertyType, Result, Value};

/// A device that always reads 42.
pub struct Constant;

impl DeviceDriver for Constant {
    type Visitor = ();

    fn parse_visitor(&self, _property: &PropertySpec) -> Result<()> {
        Ok(())
    }

    async fn connect(&self) -> Result<()> {
        Ok(())
    }

    async fn health(&self) -> Result<()> {
        Ok(())
    }

    async fn read(&self, _visitor: &()) -> Result<Value> {
        Ok(Value::Int(42))
    }

    async fn write(&self, _visitor: &(), value: &Value) -> Result<()> {
        value.check_type(PropertyType::Int)
    }
}
"#;

/// The host's target triple, from `rustc -vV`.
fn host() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let out = Command::new(rustc).arg("-vV").output().expect("rustc runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_owned()
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// A new crate in `dir` depending on this kubeedge-mapper with `features` (default off).
fn write_crate(dir: &Path, features: &[&str]) -> PathBuf {
    let mapper = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = mapper.parent().unwrap();
    let root = dir.join("my-device-driver");
    std::fs::create_dir_all(root.join("src")).unwrap();
    let features: Vec<String> = features.iter().map(|f| format!("{f:?}")).collect();
    std::fs::write(
        root.join("Cargo.toml"),
        format!(
            "[package]\nname = \"my-device-driver\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n\
             [dependencies]\nkubeedge-mapper = {{ path = {:?}, default-features = false, \
             features = [{}] }}\n\n[workspace]\n",
            mapper.display().to_string(),
            features.join(", ")
        ),
    )
    .unwrap();
    std::fs::write(root.join("src/lib.rs"), DRIVER).unwrap();
    // The workspace's versions (cargo drops what this crate does not use).
    std::fs::copy(workspace.join("Cargo.lock"), root.join("Cargo.lock")).unwrap();
    root
}

/// The names of every package in the crate's resolved graph (normal and build dependencies).
fn graph(root: &Path) -> BTreeSet<String> {
    // The host's graph only: other platforms' dependencies are neither built nor downloaded.
    let out = Command::new(cargo())
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--filter-platform",
        ])
        .arg(host())
        .current_dir(root)
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: std::collections::HashMap<&str, &str> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    // Walk from the root: packages listed but not reached are not built.
    let nodes: std::collections::HashMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let root_id = metadata["resolve"]["root"].as_str().unwrap();
    let mut seen = BTreeSet::new();
    let mut stack = vec![root_id];
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().unwrap() {
            // Only what is built: the dev-dependencies of dependencies are not.
            let built = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null() || k["kind"] == "build");
            if built {
                stack.push(dep["pkg"].as_str().unwrap());
            }
        }
    }
    seen.remove(root_id);
    seen.iter().map(|id| names[id].to_owned()).collect()
}

fn check(root: &Path, target: &Path) {
    let out = Command::new(cargo())
        .args(["check", "--offline", "--quiet"])
        .env("CARGO_TARGET_DIR", target)
        .current_dir(root)
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "the driver crate does not build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_driver_crate_needs_only_the_trait() {
    let dir = tempfile::tempdir().unwrap();
    let root = write_crate(dir.path(), &[]);
    let packages = graph(&root);
    eprintln!(
        "kubeedge-mapper, default features off: {} packages: {packages:?}",
        packages.len()
    );
    for unwanted in [
        "libsqlite3-sys",
        "rusqlite",
        "kubeedge-store",
        "tonic",
        "prost",
        "hyper",
        "rmodbus",
        "rumqttc",
        "tokio-serial",
        "regex",
        "tokio",
    ] {
        assert!(
            !packages.contains(unwanted),
            "{unwanted} is in the graph: {packages:?}"
        );
    }
    assert!(packages.contains("kubeedge-mapper"));
    assert!(packages.contains("serde"));
    assert!(packages.contains("thiserror"));
    assert!(
        packages.contains("base64"),
        "BYTES values are base64 in the twin"
    );
    check(&root, &dir.path().join("target"));
}

#[test]
fn the_runtime_brings_no_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let root = write_crate(dir.path(), &["runtime"]);
    let packages = graph(&root);
    eprintln!("kubeedge-mapper with runtime: {} packages", packages.len());
    for unwanted in ["libsqlite3-sys", "rusqlite", "kubeedge-store", "rmodbus"] {
        assert!(
            !packages.contains(unwanted),
            "{unwanted} is in the graph: {packages:?}"
        );
    }
    assert!(packages.contains("kubeedge-dmi"));
    assert!(
        packages.contains("tonic"),
        "the runtime speaks DMI over gRPC"
    );
}
