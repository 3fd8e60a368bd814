//! What the controllers write into the cluster on behalf of edge nodes.
//!
//! [`ClusterWriter`] is the one seam between the controllers' logic and where objects live:
//! `KubeWriter` (feature `kube`) writes to a real API server, `ManifestWriter` (feature
//! `manifest`) to status files beside a manifest folder. The controllers decide *what* to write
//! (after node isolation has checked the request); a writer only knows *how*.

use std::future::Future;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{ApiError, ObjectEvent};

/// Where the controllers' objects come from: a source lists and watches Pods, ConfigMaps,
/// Secrets, Devices and the rest, and sends what it sees as [`ObjectEvent`]s (a `Listed` per
/// kind once it has the whole list, then `Applied` and `Deleted`).
///
/// `KubeSource` (feature `kube`) watches an API server, `ManifestSource` (feature `manifest`) a
/// folder of YAML; a vendor's own (a database, another control plane) implements this.
pub trait ClusterSource: Send + 'static {
    /// Sends events until `shutdown` is cancelled (then `Ok`) or `events`' receiver is
    /// dropped (then [`Error::Stopped`](crate::Error::Stopped)).
    fn run(
        self,
        events: mpsc::Sender<ObjectEvent>,
        shutdown: CancellationToken,
    ) -> impl Future<Output = crate::Result<()>> + Send;
}

#[cfg(feature = "kube")]
impl ClusterSource for crate::KubeSource {
    fn run(
        self,
        events: mpsc::Sender<ObjectEvent>,
        shutdown: CancellationToken,
    ) -> impl Future<Output = crate::Result<()>> + Send {
        crate::KubeSource::run(self, events, shutdown)
    }
}

#[cfg(feature = "manifest")]
impl ClusterSource for crate::ManifestSource {
    fn run(
        self,
        events: mpsc::Sender<ObjectEvent>,
        shutdown: CancellationToken,
    ) -> impl Future<Output = crate::Result<()>> + Send {
        crate::ManifestSource::run(self, events, shutdown)
    }
}

/// A new DeviceStatus for the Device `namespace/name` (uid `device_uid`), owned by it as
/// KubeEdge's devicecontroller creates it, with an empty `spec` and the given `status`. Every
/// writer's `apply_device_status` creates it in this shape.
#[cfg(any(feature = "kube", feature = "manifest"))]
pub(crate) fn new_device_status(
    namespace: &str,
    name: &str,
    device_uid: &str,
    status: Value,
) -> Value {
    use crate::DEVICES_API_VERSION;
    serde_json::json!({
        "apiVersion": DEVICES_API_VERSION,
        "kind": "DeviceStatus",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "ownerReferences": [{
                "apiVersion": DEVICES_API_VERSION,
                "kind": "Device",
                "name": name,
                "uid": device_uid,
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": {},
        "status": status,
    })
}

/// The cluster writes the cloud performs. Every method returns the object as stored (what the
/// edge gets back in its `{"Object": ...}` reply) or the API's refusal.
///
/// Implementations must be cheap to clone (a handle) and safe to call concurrently.
pub trait ClusterWriter: Clone + Send + Sync + 'static {
    /// Creates a Node (an edge registering). If it exists already, returns the stored one
    /// (`AlreadyExists` is not an error for a node that registers again).
    fn create_node(&self, node: Value) -> impl Future<Output = Result<Value, ApiError>> + Send;

    /// Patches a Node's `status` subresource with a strategic merge patch (`{"status": ...}`).
    fn patch_node_status(
        &self,
        name: &str,
        patch: Value,
    ) -> impl Future<Output = Result<Value, ApiError>> + Send;

    /// Creates a Lease; an existing one gets the new `spec` instead.
    fn create_lease(
        &self,
        namespace: &str,
        lease: Value,
    ) -> impl Future<Output = Result<Value, ApiError>> + Send;

    /// Renews a Lease: replaces its `spec` with the one in `lease` (a merge patch, so a stale
    /// resourceVersion from the edge does not matter); a missing Lease is created.
    fn update_lease(
        &self,
        namespace: &str,
        name: &str,
        lease: Value,
    ) -> impl Future<Output = Result<Value, ApiError>> + Send;

    /// Patches a Pod's `status` subresource with the edge's strategic merge patch, which
    /// carries `metadata.uid` as a precondition (a different incarnation is a `409`).
    fn patch_pod_status(
        &self,
        namespace: &str,
        name: &str,
        patch: Value,
    ) -> impl Future<Output = Result<Value, ApiError>> + Send;

    /// Deletes a Pod with the edge's `DeleteOptions` (grace period, uid precondition): how an
    /// edge finishes a graceful delete. Returns the deleted Pod or the API's Status.
    fn delete_pod(
        &self,
        namespace: &str,
        name: &str,
        options: Value,
    ) -> impl Future<Output = Result<Value, ApiError>> + Send;

    /// The `status` of a Device's DeviceStatus (`devices.kubeedge.io/v1beta1`, same namespace
    /// and name as the Device); `None` when there is no DeviceStatus yet.
    fn get_device_status(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<Value>, ApiError>> + Send;

    /// Sets fields of a DeviceStatus's `status` (a JSON merge patch `{"status": status}`),
    /// creating the DeviceStatus with an owner reference to the Device (`device_uid`) when it
    /// does not exist.
    fn apply_device_status(
        &self,
        namespace: &str,
        name: &str,
        device_uid: &str,
        status: Value,
    ) -> impl Future<Output = Result<Value, ApiError>> + Send;

    /// Records an Event from an edge (`<ns>/event/<name>`): created, or replaced if it exists.
    fn record_event(
        &self,
        namespace: &str,
        event: Value,
    ) -> impl Future<Output = Result<Value, ApiError>> + Send;

    /// Issues a service-account token (the TokenRequest API, `request` bound to a Pod) and
    /// returns the answered `TokenRequest`.
    fn create_token(
        &self,
        namespace: &str,
        service_account: &str,
        request: Value,
    ) -> impl Future<Output = Result<Value, ApiError>> + Send;

    /// The record of what was sent to `node` (see [`crate::SentRecord`]), as stored by
    /// [`store_sent_record`](Self::store_sent_record); `None` if there is none.
    fn load_sent_record(
        &self,
        node: &str,
    ) -> impl Future<Output = Result<Option<String>, ApiError>> + Send;

    /// Stores the record of what was sent to `node`, replacing the previous one; owned by the
    /// Node (`node_uid`) where the store can say so, so that it goes with the Node.
    fn store_sent_record(
        &self,
        node: &str,
        node_uid: Option<&str>,
        record: String,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;
}
