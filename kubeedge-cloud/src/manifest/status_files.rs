//! The status folder: what the edge reports, written as JSON files (atomically), and read back
//! when manifest mode starts.

use super::*;

pub(super) fn run_file_ops(ops: Vec<FileOp>) -> std::result::Result<(), String> {
    for op in ops {
        match op {
            FileOp::Write(path, bytes) => kubeedge_fs::write_atomically(&path, &bytes, 0o644)
                .map_err(|e| format!("writing {}: {e}", path.display()))?,
            FileOp::Remove(path) => match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("removing {}: {e}", path.display())),
            },
        }
    }
    Ok(())
}

impl Shared {
    pub(super) async fn run_file_ops(&self, ops: Vec<FileOp>) -> std::result::Result<(), String> {
        if ops.is_empty() {
            return Ok(());
        }
        tokio::task::spawn_blocking(move || run_file_ops(ops))
            .await
            .map_err(|e| format!("the file task failed: {e}"))?
    }

    pub(super) fn write_op(
        &self,
        plural: &str,
        namespace: &str,
        name: &str,
        value: &Value,
    ) -> FileOp {
        let path = status_path(&self.config.status_dir, plural, namespace, name);
        let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
        bytes.push(b'\n');
        FileOp::Write(path, bytes)
    }

    pub(super) fn remove_op(&self, plural: &str, namespace: &str, name: &str) -> FileOp {
        FileOp::Remove(status_path(
            &self.config.status_dir,
            plural,
            namespace,
            name,
        ))
    }
}

/// The `*.json` files of a status folder, parsed; bad ones are logged and skipped, leftover
/// temporary files removed.
pub(super) fn load_json_files(dir: &Path) -> Vec<(PathBuf, Value)> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read the status folder");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with('.') {
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(&path);
            }
            continue;
        }
        if !name.ends_with(".json") || fs::metadata(&path).is_ok_and(|m| !m.is_file()) {
            continue;
        }
        if out.len() >= ManifestConfig::MAX_OBJECTS {
            tracing::warn!(
                dir = %dir.display(),
                "more than {} status files; the rest are not loaded",
                ManifestConfig::MAX_OBJECTS
            );
            break;
        }
        let parsed = read_limited(&path)
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).map_err(|e| e.to_string()));
        match parsed {
            Ok(value) => out.push((path, value)),
            Err(reason) => {
                tracing::warn!(path = %path.display(), %reason, "status file skipped");
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Checks a loaded status file: valid names, stored where its name says, a trusted
/// resourceVersion (the counter is raised past it). Returns its namespace and name.
pub(super) fn check_loaded(
    path: &Path,
    plural: &str,
    namespaced: bool,
    value: &mut Value,
    config: &ManifestConfig,
) -> std::result::Result<(String, String), String> {
    let meta = value
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or("no metadata".to_owned())?;
    let name = meta.get("name").and_then(Value::as_str).unwrap_or("");
    let namespace = if namespaced {
        meta.get("namespace").and_then(Value::as_str).unwrap_or("")
    } else {
        ""
    };
    if !valid_name(name) || (namespaced && !valid_namespace(namespace)) {
        return Err("not a valid name or namespace".into());
    }
    if status_path(&config.status_dir, plural, namespace, name) != path {
        return Err(format!(
            "holds {namespace}/{name}, which does not belong in this file"
        ));
    }
    let (namespace, name) = (namespace.to_owned(), name.to_owned());
    match meta
        .get("resourceVersion")
        .and_then(Value::as_str)
        .and_then(|rv| rv.parse::<u64>().ok())
    {
        Some(rv) if rv < MAX_TRUSTED_RV => raise_rv(rv),
        _ => {
            meta.insert("resourceVersion".into(), next_rv().to_string().into());
        }
    }
    if meta
        .get("uid")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        meta.insert("uid".into(), new_uid().into());
    }
    Ok((namespace, name))
}

/// The writer's objects as a previous run left them in `status_dir`.
pub(super) fn load_state(config: &ManifestConfig) -> State {
    let mut state = State::default();
    let dir = &config.status_dir;
    for kind in [Kind::Node, Kind::Lease] {
        for (path, mut value) in load_json_files(&dir.join(kind.plural())) {
            let loaded = check_loaded(&path, kind.plural(), kind.namespaced(), &mut value, config)
                .and_then(|_| Object::new(kind, value).map_err(|e| e.to_string()));
            match loaded {
                Ok(object) => {
                    state.objects.insert(
                        object.key().clone(),
                        Entry {
                            writer_status: object.pointer("/status"),
                            object,
                            doc: None,
                            writer_owned: true,
                            deadline: None,
                        },
                    );
                }
                Err(reason) => {
                    tracing::warn!(path = %path.display(), %reason, "status file skipped");
                }
            }
        }
    }
    for (path, mut value) in load_json_files(&dir.join("pods")) {
        match check_loaded(&path, "pods", true, &mut value, config) {
            Ok((namespace, name)) => {
                let meta = &value["metadata"];
                state.saved_pod_status.insert(
                    ObjectKey::new(Kind::Pod, namespace, name),
                    SavedPodStatus {
                        uid: meta["uid"].as_str().unwrap_or("").to_owned(),
                        created: meta.get("creationTimestamp").cloned(),
                        status: value.get("status").cloned(),
                    },
                );
            }
            Err(reason) => tracing::warn!(path = %path.display(), %reason, "status file skipped"),
        }
    }
    for (path, mut value) in load_json_files(&dir.join(DEVICE_STATUSES)) {
        match check_loaded(&path, DEVICE_STATUSES, true, &mut value, config) {
            Ok(key) => {
                state.device_statuses.insert(key, value);
            }
            Err(reason) => tracing::warn!(path = %path.display(), %reason, "status file skipped"),
        }
    }
    let mut events = Vec::new();
    for (path, mut value) in load_json_files(&dir.join(EVENTS)) {
        match check_loaded(&path, EVENTS, true, &mut value, config) {
            Ok(key) => {
                let rv = value["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|rv| rv.parse::<u64>().ok())
                    .unwrap_or(0);
                events.push((rv, key, value));
            }
            Err(reason) => tracing::warn!(path = %path.display(), %reason, "status file skipped"),
        }
    }
    events.sort_by_key(|(rv, _, _)| *rv);
    let drop = events.len().saturating_sub(ManifestConfig::MAX_EVENTS);
    for (i, (rv, key, value)) in events.into_iter().enumerate() {
        if i < drop {
            let _ = fs::remove_file(status_path(dir, EVENTS, &key.0, &key.1));
            continue;
        }
        state.event_order.insert(rv, key.clone());
        state.events.insert(key, (rv, value));
    }
    state
}
