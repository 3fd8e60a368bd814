//! # kubeedge-cloud
//!
//! The cloud controllers of kubeedge-rs: they turn the Kubernetes API into messages for each
//! edge node and turn what the edge reports back into Kubernetes objects, speaking KubeEdge's
//! wire protocol through [`kubeedge_hub`], so that kubectl, Helm and operators work unchanged
//! on edge nodes and a KubeEdge edgecore can use this cloud.
//!
//! ## The parts
//! - A **source** produces one stream of [`ObjectEvent`]s (Pods bound to nodes, ConfigMaps,
//!   Secrets, edge Nodes, node Leases, Devices, DeviceModels): [`KubeSource`] from a cluster's
//!   watches (feature `kube`), `ManifestSource` from a folder of YAML (feature `manifest`).
//!   The controllers cannot tell them apart.
//! - A [`ClusterWriter`] performs what nodes ask for: [`KubeWriter`] against the API server (exactly one documented call per
//!   write),
//!   `ManifestWriter` into status files. It is the only thing that differs between the modes.
//! - [`crd`] ships the CRD manifests of KubeEdge's device API (`devices.kubeedge.io/v1beta1`),
//!   so that `kubectl apply` of KubeEdge's own Device samples works.
//! - [`Downstream`] (pure state) decides what each connected node must hold: its own Node (as
//!   KubeEdge v1.23 pushes it, `null/node/<name>`, status changes included: the edge learns
//!   the uid that owns its Lease, and that the cluster marked it not Ready), its Pods, the
//!   ConfigMaps and Secrets they reference, its Devices (each only once its DeviceModel is
//!   known: KubeEdge's edge refuses a Device without its model and never takes it up again)
//!   and their DeviceModels, each only if it passes [`device_check`]; never another node's
//!   objects (KubeEdge #3593). Every message
//!   carries `resourceversion` and goes on the ACK path in KubeEdge's exact form; referenced
//!   objects go before the Pod that needs them; a change of a Pod's status alone is not sent.
//! - [`device_check`] (pure) holds Devices and DeviceModels to [`DeviceLimits`] (ports,
//!   slave ids, serial settings, Modbus offsets and limits, cycles, string and spec sizes,
//!   names, model property types, `minimum ≤ maximum`): KubeEdge's CRDs let absurd values
//!   through and KubeEdge's cloud sends them on. A refused one is not sent (what a node
//!   holds of it, and of its model, stays as it was; a Device whose model is refused waits
//!   too); the controller logs a WARN and writes a Warning Event (`InvalidDevice`,
//!   `InvalidDeviceModel`) once per uid and resourceVersion, in both modes. Fixed, it flows.
//! - [`decide`] (pure) checks each request of a node against node isolation and turns it into
//!   an [`Action`] or an answer: `podpatch` → Pod status, `nodepatch` → Node status, Node
//!   registration, Lease create/renew/query (an owner reference without uid gets the Node's),
//!   the final Pod delete of a graceful deletion, ConfigMap/Secret queries (from the cache),
//!   service-account tokens (TokenRequest, only for a Pod bound to the node and its own
//!   service account), events, twin and state reports → DeviceStatus.
//!   Replies are `{"Object":...,"Err":...}` with `parent_msg_id` = the request's `msg_id`.
//! - [`CloudController`] runs it all: one task owning the view, one sender task per node (in
//!   order, waiting for the node's queue: backpressure from the hub), one writer task per node
//!   (a node's writes in order, nodes in parallel), and node lifecycle (a node whose Lease
//!   lapsed is marked `Unknown`, as the Kubernetes node lifecycle controller does).
//!
//! ## No per-object state in the API server; replicas
//! KubeEdge records, per node and object, the last acknowledged resourceVersion in an
//! `ObjectSync` object in the API server (one write per object per node: KubeEdge #7278).
//! This cloud keeps what it sent to a node in memory for the node's session only. When a node
//! connects, a kubeedge-rs edge (told by the CloudHub's upgrade response that this cloud
//! understands it) sends its [`Inventory`](kubeedge_proto::inventory::Inventory) (uid and
//! resourceVersion of every object its store holds) and gets exactly the difference: newer
//! versions, objects it lacks, deletes for what it should no longer hold. A KubeEdge edge
//! sends none: for such a node the cloud keeps one [`SentRecord`] (key and uid of every
//! object it sent the node, one ConfigMap per node owned by the Node, written before a batch
//! that gives the node a new object), and a replica that never served the node reads it after
//! `inventory_grace` and brings the node from it to what it should hold, deletes it missed
//! included. That is one write per node and burst, not one per object and message as
//! KubeEdge's ObjectSync.
//!
//! So any replica can serve any node, and replicas need no coordination: run several
//! `cloudcore` processes behind one Kubernetes Service (or any TCP load balancer) on port 10000
//! (and 10002 for joins), each with the same CA (the `--pki-dir` files mounted from one Secret)
//! and its own watches. A node's WebSocket lands on one replica; if it moves, the new replica
//! rebuilds the node's state from its inventory. Writes are per node and idempotent (patches,
//! create-or-get), so two replicas briefly serving the same node (a reconnect racing a lapse)
//! do no harm; marking a node unreachable is idempotent too.
//!
//! ## Feature flags
//! | feature | what it adds | dependencies it pulls |
//! |---|---|---|
//! | `kube` (default) | `KubeSource`, `KubeWriter`, `client`, `install_crds`: a real cluster | `kube` (client, runtime, rustls with ring), `k8s-openapi`, `http`, `futures-util` |
//! | `manifest` (default) | `ManifestSource`, `ManifestWriter`: a folder of YAML instead of a cluster | `serde_yaml_ng` |
//!
//! ## Why each dependency is here
//! - `kubeedge-proto`: the messages; `kubeedge-hub`: the reliable cloud-edge transport.
//! - `kube`, `k8s-openapi` (optional): the Kubernetes client and its watchers (reflector-style
//!   list + watch with backoff); `http`: request types the kube client is driven with;
//!   `futures-util`: consuming watch streams.
//! - `serde_yaml_ng` (optional): manifest files.
//! - `serde`, `serde_json`: objects stay `serde_json::Value` so fields this crate does not know
//!   reach the edge untouched.
//! - `uuid` (v5): stable uids for manifest objects; `tokio`, `tokio-util`: tasks, channels,
//!   cancellation; `tracing`: logs; `thiserror`: the error enum.
//!
//! ## Manifest mode (feature `manifest`)
//!
//! Without a cluster, `ManifestSource` reads the objects from a folder of YAML manifests and
//! produces the same [`ObjectEvent`] stream a cluster's watches do, and `ManifestWriter` is the
//! [`ClusterWriter`] that keeps what the edge reports in JSON files under a status folder (the
//! quickstart runs this way). Parsing that YAML is why `serde_yaml_ng` (a maintained fork of
//! `serde_yaml`) is a dependency of the feature.

mod cluster;
mod controller;
pub mod crd;
pub mod device_check;
mod downstream;
mod error;
#[cfg(feature = "kube")]
mod kube_cluster;
mod lifecycle;
#[cfg(feature = "manifest")]
mod manifest;
mod node_queue;
mod object;
mod record;
mod refs;
mod upstream;

pub use cluster::{ClusterSource, ClusterWriter};
pub use controller::{CloudConfig, CloudController, CloudMetrics};
pub use device_check::DeviceLimits;
pub use downstream::{Downstream, Outgoing};
pub use error::{ApiError, Error, Result};
#[cfg(feature = "kube")]
pub use kube_cluster::{
    DEFAULT_RECORDS_NAMESPACE, KubeSource, KubeSourceConfig, KubeWriter, client,
};
pub use kubeedge_proto::parse_rfc3339;
pub use lifecycle::{ready_status, unreachable_patch};
#[cfg(feature = "manifest")]
pub use manifest::{ManifestConfig, ManifestSource, ManifestWriter};
pub use object::{
    DEVICES_API_VERSION, EDGE_NODE_LABEL, Kind, MAX_OBJECT_DEPTH, NODE_LEASE_NAMESPACE, Object,
    ObjectEvent, ObjectKey,
};
pub use record::{MAX_RECORD_BYTES, Noted, SentRecord};
pub use refs::references;
pub use upstream::{
    Action, Decision, decide, merge_twins, object_reply, twin_confirm, write_reply,
};

/// The README's example, compiled and run as a doc test.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctest;
