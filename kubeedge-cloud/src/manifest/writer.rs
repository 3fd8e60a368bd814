//! [`ManifestWriter`](super::ManifestWriter): the [`ClusterWriter`](crate::ClusterWriter) of the
//! manifest "cluster", the small API server that keeps what edges report.

use super::*;

pub(super) fn conflict(message: impl Into<String>) -> ApiError {
    ApiError::new(409, "Conflict", message)
}

pub(super) fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(422, "Invalid", message)
}

pub(super) fn internal(e: impl fmt::Display) -> ApiError {
    ApiError::internal(e.to_string())
}

/// Checks an object the edge creates (its kind, name and namespace) and drops what only the
/// API server sets. Returns its name.
pub(super) fn prepare(
    value: &mut Value,
    kind: &str,
    api_versions: &[&str],
    namespace: Option<&str>,
    name: Option<&str>,
) -> std::result::Result<String, ApiError> {
    let Some(map) = value.as_object_mut() else {
        return Err(ApiError::bad_request(format!(
            "a {kind} is not a JSON object"
        )));
    };
    match map.get("kind") {
        None | Some(Value::Null) => {
            map.insert("kind".into(), kind.into());
        }
        Some(Value::String(k)) if k == kind => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "kind {other}, expected {kind}"
            )));
        }
    }
    match map.get("apiVersion") {
        None | Some(Value::Null) => {
            map.insert("apiVersion".into(), api_versions[0].into());
        }
        Some(Value::String(v)) if api_versions.contains(&v.as_str()) => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "apiVersion {other} of a {kind}"
            )));
        }
    }
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(meta) = meta.as_object_mut() else {
        return Err(ApiError::bad_request("metadata is not a JSON object"));
    };
    if let Some(name) = name {
        match meta.get("name") {
            None | Some(Value::Null) => {
                meta.insert("name".into(), name.into());
            }
            Some(Value::String(n)) if n == name => {}
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({other}) does not match the name on the URL ({name})"
                )));
            }
        }
    }
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| valid_name(n))
        .ok_or_else(|| {
            invalid(format!(
                "a {kind} needs a metadata.name (DNS-1123 subdomain)"
            ))
        })?
        .to_owned();
    match namespace {
        Some(namespace) => {
            if !valid_namespace(namespace) {
                return Err(invalid(format!("namespace {namespace:?} is not valid")));
            }
            match meta.get("namespace") {
                None | Some(Value::Null) => {}
                Some(Value::String(ns)) if ns.is_empty() || ns == namespace => {}
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
            }
            meta.insert("namespace".into(), namespace.into());
        }
        None => {
            meta.remove("namespace");
        }
    }
    meta.remove("uid");
    for field in SERVER_SET {
        meta.remove(field);
    }
    Ok(name)
}

/// The patch's `status` merged (strategic merge) into `current`'s: `None` when it changes
/// nothing.
pub(super) fn merged_status(
    current: &Value,
    patch: &Value,
) -> std::result::Result<Option<Value>, ApiError> {
    let Some(patch) = patch.as_object() else {
        return Err(ApiError::bad_request("the patch is not a JSON object"));
    };
    let Some(status_patch) = patch.get("status") else {
        return Ok(None);
    };
    let old = current.get("status").cloned().unwrap_or(Value::Null);
    let mut wrapper = json!({ "status": old });
    let mut patch = Map::new();
    patch.insert("status".into(), status_patch.clone());
    strategic_merge(&mut wrapper, &Value::Object(patch));
    let new = wrapper.get("status").cloned().unwrap_or(Value::Null);
    Ok((new != old).then_some(new))
}

impl ManifestWriter {
    /// `status_dir/sent/<node>.txt`, for a valid node name.
    fn sent_record_path(&self, node: &str) -> Option<PathBuf> {
        valid_name(node).then(|| {
            self.shared
                .config
                .status_dir
                .join(SENT_RECORDS)
                .join(format!("{node}.txt"))
        })
    }

    /// Runs one write: mutates the state under its lock, then writes the files (in the order
    /// of the mutations) and wakes the source to send the events.
    async fn write<T>(
        &self,
        op: impl FnOnce(&Shared, &mut State, &mut Vec<FileOp>) -> std::result::Result<T, ApiError>,
    ) -> std::result::Result<T, ApiError> {
        let shared = &*self.shared;
        let _files = shared.files.lock().await;
        let mut ops = Vec::new();
        let out = {
            let mut state = shared.state();
            op(shared, &mut state, &mut ops)?
        };
        shared.queued.notify_one();
        shared.run_file_ops(ops).await.map_err(|reason| {
            tracing::error!(%reason, "cannot update the status folder");
            ApiError::internal(reason)
        })?;
        Ok(out)
    }

    /// Sets the status of a Node or Pod (strategic merge of `patch`'s `status`).
    async fn patch_status(
        &self,
        key: ObjectKey,
        patch: Value,
    ) -> std::result::Result<Value, ApiError> {
        self.write(move |shared, state, ops| {
            let Some(entry) = state.objects.get_mut(&key) else {
                return Err(ApiError::not_found(key.kind.plural(), &key.name));
            };
            if let Some(uid) = patch
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .filter(|uid| !uid.is_empty())
                && uid != entry.object.uid()
            {
                return Err(conflict(format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    entry.object.uid()
                )));
            }
            let mut value = entry.object.to_value();
            let Some(status) = merged_status(&value, &patch)? else {
                return Ok(value);
            };
            if let Some(map) = value.as_object_mut() {
                set_or_remove(map, "status", status.clone());
            }
            let object = with_rv(key.kind, value).map_err(internal)?;
            entry.writer_status = Some(status);
            entry.object = object.clone();
            let written = object.to_value();
            ops.push(shared.write_op(key.kind.plural(), &key.namespace, &key.name, &written));
            state.emit(ObjectEvent::Applied(object));
            Ok(written)
        })
        .await
    }

    /// Creates a Lease, or gives an existing one the new `spec`.
    async fn put_lease(
        &self,
        namespace: &str,
        name: Option<&str>,
        mut lease: Value,
    ) -> std::result::Result<Value, ApiError> {
        let name = prepare(
            &mut lease,
            Kind::Lease.kind(),
            &[Kind::Lease.api_version()],
            Some(namespace),
            name,
        )?;
        let key = ObjectKey::new(Kind::Lease, namespace, name);
        self.write(move |shared, state, ops| {
            let object = match state.objects.get_mut(&key) {
                Some(entry) => {
                    let spec = lease.get("spec").cloned().unwrap_or(Value::Null);
                    let mut value = entry.object.to_value();
                    if value.get("spec").unwrap_or(&Value::Null) == &spec {
                        return Ok(value);
                    }
                    if let Some(map) = value.as_object_mut() {
                        set_or_remove(map, "spec", spec);
                    }
                    let object = with_rv(Kind::Lease, value).map_err(internal)?;
                    entry.object = object.clone();
                    object
                }
                None => {
                    let object = build(
                        Kind::Lease,
                        &lease,
                        &new_uid(),
                        now_timestamp().into(),
                        None,
                    )
                    .map_err(internal)?;
                    state.objects.insert(
                        key.clone(),
                        Entry {
                            object: object.clone(),
                            doc: None,
                            writer_status: None,
                            writer_owned: true,
                            deadline: None,
                        },
                    );
                    object
                }
            };
            let written = object.to_value();
            ops.push(shared.write_op("leases", &key.namespace, &key.name, &written));
            state.emit(ObjectEvent::Applied(object));
            Ok(written)
        })
        .await
    }
}

impl ClusterWriter for ManifestWriter {
    /// Creates the Node (uid, creationTimestamp, resourceVersion; `status` kept), or returns
    /// the one that exists.
    async fn create_node(&self, mut node: Value) -> std::result::Result<Value, ApiError> {
        let name = prepare(&mut node, "Node", &["v1"], None, None)?;
        let key = ObjectKey::new(Kind::Node, "", name);
        self.write(move |shared, state, ops| {
            if let Some(entry) = state.objects.get(&key) {
                return Ok(entry.object.to_value());
            }
            let object = build(Kind::Node, &node, &new_uid(), now_timestamp().into(), None)
                .map_err(internal)?;
            let written = object.to_value();
            state.objects.insert(
                key.clone(),
                Entry {
                    writer_status: written.get("status").cloned(),
                    object: object.clone(),
                    doc: None,
                    writer_owned: true,
                    deadline: None,
                },
            );
            ops.push(shared.write_op("nodes", "", &key.name, &written));
            state.emit(ObjectEvent::Applied(object));
            Ok(written)
        })
        .await
    }

    /// Strategic merge of the patch's `status` (nothing else changes); `404` for a missing
    /// node. A patch that changes nothing returns the node as it is.
    async fn patch_node_status(
        &self,
        name: &str,
        patch: Value,
    ) -> std::result::Result<Value, ApiError> {
        if !valid_name(name) {
            return Err(ApiError::not_found("nodes", name));
        }
        self.patch_status(ObjectKey::new(Kind::Node, "", name), patch)
            .await
    }

    /// Creates the Lease, or replaces the `spec` of the existing one.
    async fn create_lease(
        &self,
        namespace: &str,
        lease: Value,
    ) -> std::result::Result<Value, ApiError> {
        self.put_lease(namespace, None, lease).await
    }

    /// Replaces the Lease's `spec` (creating a missing Lease).
    async fn update_lease(
        &self,
        namespace: &str,
        name: &str,
        lease: Value,
    ) -> std::result::Result<Value, ApiError> {
        self.put_lease(namespace, Some(name), lease).await
    }

    /// Strategic merge of the patch's `status` (nothing else changes); `404` for a missing
    /// pod, `409 Conflict` when the patch's `metadata.uid` is another pod's.
    async fn patch_pod_status(
        &self,
        namespace: &str,
        name: &str,
        patch: Value,
    ) -> std::result::Result<Value, ApiError> {
        if !valid_namespace(namespace) || !valid_name(name) {
            return Err(ApiError::not_found("pods", name));
        }
        self.patch_status(ObjectKey::new(Kind::Pod, namespace, name), patch)
            .await
    }

    /// Deletes the pod (a `Deleted` event, its status file removed) and returns it; `409
    /// Conflict` when `options.preconditions.uid` is another pod's. A pod still in the
    /// manifests is created again by the next scan.
    async fn delete_pod(
        &self,
        namespace: &str,
        name: &str,
        options: Value,
    ) -> std::result::Result<Value, ApiError> {
        if !valid_namespace(namespace) || !valid_name(name) {
            return Err(ApiError::not_found("pods", name));
        }
        if !options.is_object() && !options.is_null() {
            return Err(ApiError::bad_request("DeleteOptions is not a JSON object"));
        }
        let precondition = options
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let key = ObjectKey::new(Kind::Pod, namespace, name);
        self.write(move |shared, state, ops| {
            let Some(entry) = state.objects.get(&key) else {
                return Err(ApiError::not_found("pods", &key.name));
            };
            if let Some(uid) = precondition
                && uid != entry.object.uid()
            {
                return Err(conflict(format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    entry.object.uid()
                )));
            }
            state.saved_pod_status.remove(&key);
            let object = state
                .remove(&key, &shared.config, ops)
                .ok_or_else(|| ApiError::not_found("pods", &key.name))?;
            Ok(object.to_value())
        })
        .await
    }

    /// The `status` of the DeviceStatus `namespace/name`.
    async fn get_device_status(
        &self,
        namespace: &str,
        name: &str,
    ) -> std::result::Result<Option<Value>, ApiError> {
        let state = self.shared.state();
        Ok(state
            .device_statuses
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|value| value.get("status").cloned().unwrap_or_else(|| json!({}))))
    }

    /// JSON merge patch (RFC 7386) of `status` into the DeviceStatus; created (owned by the
    /// Device `device_uid`) when missing or owned by another incarnation of the Device.
    async fn apply_device_status(
        &self,
        namespace: &str,
        name: &str,
        device_uid: &str,
        status: Value,
    ) -> std::result::Result<Value, ApiError> {
        if !valid_namespace(namespace) || !valid_name(name) {
            return Err(invalid(format!(
                "{namespace}/{name} is not a valid namespace and name"
            )));
        }
        let key = (namespace.to_owned(), name.to_owned());
        let device_uid = device_uid.to_owned();
        self.write(move |shared, state, ops| {
            let existing = state.device_statuses.get(&key).filter(|value| {
                value
                    .pointer("/metadata/ownerReferences/0/uid")
                    .and_then(Value::as_str)
                    == Some(device_uid.as_str())
            });
            let mut value = match existing {
                Some(value) => value.clone(),
                None => {
                    let mut value =
                        crate::cluster::new_device_status(&key.0, &key.1, &device_uid, Value::Null);
                    if let Some(object) = value.as_object_mut() {
                        object.remove("status");
                    }
                    if let Some(meta) = value["metadata"].as_object_mut() {
                        meta.insert("uid".into(), new_uid().into());
                        meta.insert("creationTimestamp".into(), now_timestamp().into());
                    }
                    value
                }
            };
            let mut patch = Map::new();
            patch.insert("status".into(), status);
            merge_patch(&mut value, &Value::Object(patch));
            if existing == Some(&value) {
                return Ok(value);
            }
            if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("resourceVersion".into(), next_rv().to_string().into());
            }
            ops.push(shared.write_op(DEVICE_STATUSES, &key.0, &key.1, &value));
            state.device_statuses.insert(key, value.clone());
            Ok(value)
        })
        .await
    }

    /// Keeps the Event (replacing one of the same name); the oldest beyond
    /// [`ManifestConfig::MAX_EVENTS`] are dropped.
    /// Manifest mode has no API server to issue tokens: always a `400 BadRequest` saying so,
    /// which the edge shows in the pod's status.
    async fn create_token(
        &self,
        namespace: &str,
        service_account: &str,
        _request: Value,
    ) -> std::result::Result<Value, ApiError> {
        Err(ApiError::bad_request(format!(
            "service-account tokens ({namespace}/{service_account}) need a cluster: manifest mode has no API server to issue them"
        )))
    }

    /// `status_dir/sent/<node>.txt`.
    async fn load_sent_record(&self, node: &str) -> std::result::Result<Option<String>, ApiError> {
        let Some(path) = self.sent_record_path(node) else {
            return Ok(None);
        };
        let _files = self.shared.files.lock().await;
        match tokio::fs::read_to_string(&path).await {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ApiError::internal(format!("{}: {e}", path.display()))),
        }
    }

    /// Writes `status_dir/sent/<node>.txt` (atomically, as every status file).
    async fn store_sent_record(
        &self,
        node: &str,
        _node_uid: Option<&str>,
        record: String,
    ) -> std::result::Result<(), ApiError> {
        let Some(path) = self.sent_record_path(node) else {
            return Err(ApiError::bad_request(format!(
                "{node:?} is not a node name"
            )));
        };
        let _files = self.shared.files.lock().await;
        self.shared
            .run_file_ops(vec![FileOp::Write(path, record.into_bytes())])
            .await
            .map_err(ApiError::internal)
    }

    async fn record_event(
        &self,
        namespace: &str,
        mut event: Value,
    ) -> std::result::Result<Value, ApiError> {
        let name = prepare(
            &mut event,
            "Event",
            &["v1", "events.k8s.io/v1"],
            Some(namespace),
            None,
        )?;
        let key = (namespace.to_owned(), name);
        self.write(move |shared, state, ops| {
            let (uid, created) = match state.events.remove(&key) {
                Some((rv, old)) => {
                    state.event_order.remove(&rv);
                    let meta = &old["metadata"];
                    (meta["uid"].clone(), meta["creationTimestamp"].clone())
                }
                None => (new_uid().into(), now_timestamp().into()),
            };
            let rv = next_rv();
            if let Some(meta) = event.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("uid".into(), uid);
                meta.insert("creationTimestamp".into(), created);
                meta.insert("resourceVersion".into(), rv.to_string().into());
            }
            ops.push(shared.write_op(EVENTS, &key.0, &key.1, &event));
            state.event_order.insert(rv, key.clone());
            state.events.insert(key, (rv, event.clone()));
            while state.events.len() > ManifestConfig::MAX_EVENTS {
                let Some((_, oldest)) = state.event_order.pop_first() else {
                    break;
                };
                state.events.remove(&oldest);
                ops.push(shared.remove_op(EVENTS, &oldest.0, &oldest.1));
            }
            Ok(event)
        })
        .await
    }
}
