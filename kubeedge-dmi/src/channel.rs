//! The DMI transport: gRPC over a unix socket.

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

/// A gRPC channel over the unix socket at `path`, the DMI transport (edgecore's `dmi.sock`, or a
/// mapper's own socket). It connects on first use and again after the peer restarts;
/// `connect_timeout` bounds each connection attempt and `timeout` each call.
///
/// ```no_run
/// use std::time::Duration;
/// use kubeedge_dmi::grpc::device_manager_service_client::DeviceManagerServiceClient;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let channel = kubeedge_dmi::unix_channel(
///     "/etc/kubeedge/dmi.sock", Duration::from_secs(10), Duration::from_secs(10));
/// let mut edgecore = DeviceManagerServiceClient::new(channel);
/// # let _ = &mut edgecore;
/// # }
/// ```
pub fn unix_channel(
    path: impl Into<PathBuf>,
    connect_timeout: Duration,
    timeout: Duration,
) -> Channel {
    let path = path.into();
    Endpoint::from_static("http://[::]:50051")
        .connect_timeout(connect_timeout)
        .timeout(timeout)
        .connect_with_connector_lazy(service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
}
