//! [`CriRuntime`]: the [`PodRuntime`](crate::PodRuntime) over the Container Runtime Interface
//! (CRI `runtime.v1`), the gRPC API that containerd's CRI plugin (and CRI-O) serve on a unix
//! socket.
//!
//! [`CriRuntime`] maps edged's plain types ([`SandboxConfig`](crate::runtime::SandboxConfig),
//! [`ContainerConfig`](crate::runtime::ContainerConfig), ...) to CRI requests the way the kubelet
//! does: host-network pods get `NamespaceMode::NODE` and an empty hostname, every container gets a
//! private PID namespace and the pod's IPC namespace, labels and annotations pass through
//! unchanged. Every call carries a deadline, every id the runtime does not know becomes
//! [`Error::NotFound`](crate::Error::NotFound) (except in stop and remove calls, which succeed as
//! the CRI specifies), and every response is bounded before it is kept.
//!
//! Timestamps are passed on as the runtime reports them. containerd 1.6 stamps `started_at`
//! when the start call returns, so a container that exits at once can show a `finished_at`
//! slightly *before* its `started_at`.
//!
//! ```no_run
//! use kubeedge_edged::{CriRuntime, PodRuntime};
//!
//! # async fn run() -> kubeedge_edged::Result<()> {
//! let runtime = CriRuntime::connect("unix:///run/containerd/containerd.sock").await?;
//! let version = runtime.version().await?;
//! println!("{} {} (CRI {})", version.name, version.version, version.api_version);
//! if runtime.image_status("docker.io/library/busybox:1.36").await?.is_none() {
//!     runtime.pull_image("docker.io/library/busybox:1.36").await?;
//! }
//! # Ok(()) }
//! ```
//!
//! ## Why these dependencies
//!
//! - `tonic`: the CRI *is* gRPC over HTTP/2, so talking to containerd needs a real gRPC client;
//!   tonic is the maintained one for tokio, and its transport accepts any connector, which lets
//!   it run over a unix socket (a `tower::service_fn` that opens a tokio `UnixStream`, adapted to
//!   hyper by `hyper-util`'s `TokioIo`).
//! - `prost` and `tonic-prost`: encode and decode the protobuf messages of the generated client.
//! - `protox` and `tonic-prost-build` (build time only): parse the vendored `api.proto` in pure
//!   Rust and generate [`api`] from it, so no system `protoc` is needed.

mod client;
mod convert;

pub use client::{CriOptions, CriRuntime};

/// The CRI `runtime.v1` messages and the `RuntimeService` and `ImageService` clients, generated
/// by `tonic-prost-build` from cri-api's `api.proto` (vendored in `kubeedge-edged/proto`).
///
/// [`CriRuntime`] is built on these; they are public for callers that need a CRI call the
/// [`PodRuntime`](crate::PodRuntime) trait does not cover (`Status`, `ListImages`, stats, ...).
#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    rustdoc::all
)]
pub mod api {
    tonic::include_proto!("runtime.v1");
}
