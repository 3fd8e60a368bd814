//! [`CriRuntime`]: the gRPC client over a unix socket and the [`PodRuntime`] calls.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Request, Response, Status};
use tower::service_fn;

use super::api;
use super::api::image_service_client::ImageServiceClient;
use super::api::runtime_service_client::RuntimeServiceClient;
use super::convert::{self, MAX_TEXT_LEN, ceil_secs, truncate};
use crate::runtime::{
    ContainerConfig, ContainerInfo, ContainerStatus, ExecResult, PodRuntime, RuntimeVersion,
    SandboxConfig, SandboxInfo, SandboxStatus,
};
use crate::{Error, Result};

/// The CRI API version edged speaks, sent in `Version` (the kubelet sends the same).
const KUBE_RUNTIME_API_VERSION: &str = "0.1.0";

/// How long past a call's own deadline the client waits before giving up on its own (the
/// deadline itself travels to the runtime as `grpc-timeout` and is enforced by tonic too).
const HANG_GUARD: Duration = Duration::from_secs(5);

/// Timeouts and limits of a [`CriRuntime`].
///
/// ```
/// use std::time::Duration;
/// let mut options = kubeedge_edged::cri::CriOptions::default();
/// options.request_timeout = Duration::from_secs(30);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CriOptions {
    /// How long to wait for the socket to accept a connection (default 5 s).
    pub connect_timeout: Duration,
    /// Deadline of each call (default 2 min, the kubelet's `--runtime-request-timeout`).
    /// `StopContainer` and `ExecSync` get their own timeout on top of it.
    pub request_timeout: Duration,
    /// Deadline of `PullImage` (default 10 min).
    pub pull_timeout: Duration,
    /// The largest response accepted (default 16 MiB, the kubelet's limit).
    pub max_message_size: usize,
}

impl Default for CriOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(120),
            pull_timeout: Duration::from_secs(600),
            max_message_size: 16 * 1024 * 1024,
        }
    }
}

/// A [`PodRuntime`] that drives a CRI runtime (containerd's CRI plugin, CRI-O) over gRPC on its
/// unix socket.
///
/// Cloning is cheap: clones share one HTTP/2 connection, which is re-established on the next call
/// when the runtime restarts.
#[derive(Clone, Debug)]
pub struct CriRuntime {
    endpoint: String,
    options: CriOptions,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

/// The socket path of `endpoint`: `unix:///path` or a bare absolute path.
fn socket_path(endpoint: &str) -> Result<PathBuf> {
    let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    if !path.starts_with('/') || path.contains('\0') {
        return Err(Error::Connect {
            endpoint: truncate(endpoint, 256).to_owned(),
            message: "expected unix:///absolute/path or an absolute socket path".into(),
        });
    }
    Ok(PathBuf::from(path))
}

/// `error` and its sources, `: `-separated.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = e.source();
    }
    text
}

fn request<T>(message: T, deadline: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(deadline);
    request
}

impl CriRuntime {
    /// Connects to the CRI endpoint (`unix:///run/containerd/containerd.sock` or a bare socket
    /// path) with [`CriOptions::default`].
    ///
    /// Fails with [`Error::Connect`] when nothing accepts connections on the socket.
    pub async fn connect(endpoint: &str) -> Result<Self> {
        Self::connect_with(endpoint, CriOptions::default()).await
    }

    /// Connects to the CRI endpoint with `options`.
    pub async fn connect_with(endpoint: &str, options: CriOptions) -> Result<Self> {
        let path = socket_path(endpoint)?;
        let connect_error = |message: String| Error::Connect {
            endpoint: endpoint.to_owned(),
            message: truncate(&message, MAX_TEXT_LEN).to_owned(),
        };
        let connector = service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        });
        // The URI is only for HTTP/2's :authority; the connector ignores it.
        let http =
            Endpoint::from_static("http://localhost").connect_timeout(options.connect_timeout);
        let connecting = http.connect_with_connector(connector);
        let channel = tokio::time::timeout(options.connect_timeout + HANG_GUARD, connecting)
            .await
            .map_err(|_| {
                connect_error(format!(
                    "no connection within {:?}",
                    options.connect_timeout
                ))
            })?
            .map_err(|e| connect_error(error_chain(&e)))?;
        let limit = options.max_message_size;
        Ok(Self {
            endpoint: endpoint.to_owned(),
            runtime: RuntimeServiceClient::new(channel.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            images: ImageServiceClient::new(channel)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            options,
        })
    }

    /// The endpoint this runtime was connected to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The options in force.
    pub fn options(&self) -> &CriOptions {
        &self.options
    }

    /// The sandboxes whose labels include all of `labels` (filtered by the runtime).
    pub async fn list_sandboxes_matching(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<SandboxInfo>> {
        self.list_sandboxes_filtered(Some(api::PodSandboxFilter {
            label_selector: labels.clone().into_iter().collect(),
            ..Default::default()
        }))
        .await
    }

    /// The containers whose labels include all of `labels` (filtered by the runtime).
    pub async fn list_containers_matching(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<ContainerInfo>> {
        self.list_containers_filtered(Some(api::ContainerFilter {
            label_selector: labels.clone().into_iter().collect(),
            ..Default::default()
        }))
        .await
    }

    async fn list_sandboxes_filtered(
        &self,
        filter: Option<api::PodSandboxFilter>,
    ) -> Result<Vec<SandboxInfo>> {
        let d = self.options.request_timeout;
        let mut c = self.runtime.clone();
        let resp = self
            .call(
                "ListPodSandbox",
                d,
                c.list_pod_sandbox(request(api::ListPodSandboxRequest { filter }, d)),
            )
            .await?;
        Ok(resp.items.into_iter().map(convert::sandbox_info).collect())
    }

    async fn list_containers_filtered(
        &self,
        filter: Option<api::ContainerFilter>,
    ) -> Result<Vec<ContainerInfo>> {
        let d = self.options.request_timeout;
        let mut c = self.runtime.clone();
        let resp = self
            .call(
                "ListContainers",
                d,
                c.list_containers(request(api::ListContainersRequest { filter }, d)),
            )
            .await?;
        Ok(resp
            .containers
            .into_iter()
            .map(convert::container_info)
            .collect())
    }

    /// Runs one call with a hang guard past its deadline and maps its error.
    async fn call<T>(
        &self,
        op: &'static str,
        deadline: Duration,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<T> {
        let started = Instant::now();
        let result = tokio::time::timeout(deadline.saturating_add(HANG_GUARD), call).await;
        tracing::debug!(op, elapsed = ?started.elapsed(), ok = matches!(result, Ok(Ok(_))), "CRI call");
        match result {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(self.status_error(op, deadline, &status)),
            Err(_) => Err(Error::Runtime {
                op,
                message: format!("no answer within {deadline:?}"),
            }),
        }
    }

    fn status_error(&self, op: &'static str, deadline: Duration, status: &Status) -> Error {
        let mut message = status.message().to_owned();
        if let Some(source) = std::error::Error::source(status) {
            let chain = error_chain(source);
            if !message.contains(&chain) {
                message = format!("{message}: {chain}");
            }
        }
        let message = truncate(&message, MAX_TEXT_LEN).to_owned();
        match status.code() {
            Code::NotFound => Error::NotFound(format!("{op}: {message}")),
            Code::Unavailable => Error::Connect {
                endpoint: self.endpoint.clone(),
                message: format!("{op}: {message}"),
            },
            Code::DeadlineExceeded | Code::Cancelled => Error::Runtime {
                op,
                message: format!("deadline of {deadline:?} exceeded or call cancelled: {message}"),
            },
            code => Error::Runtime {
                op,
                message: format!("{code:?}: {message}"),
            },
        }
    }
}

/// `Ok(())` for [`Error::NotFound`]: stop and remove calls are idempotent in the CRI, and
/// containerd 1.6 still answers `NotFound` for some of them.
fn gone_is_ok(result: Result<()>) -> Result<()> {
    match result {
        Err(Error::NotFound(_)) => Ok(()),
        other => other,
    }
}

impl PodRuntime for CriRuntime {
    async fn version(&self) -> Result<RuntimeVersion> {
        let d = self.options.request_timeout;
        let mut c = self.runtime.clone();
        let v = self
            .call(
                "Version",
                d,
                c.version(request(
                    api::VersionRequest {
                        version: KUBE_RUNTIME_API_VERSION.into(),
                    },
                    d,
                )),
            )
            .await?;
        Ok(RuntimeVersion {
            name: truncate(&v.runtime_name, 256).to_owned(),
            version: truncate(&v.runtime_version, 256).to_owned(),
            api_version: truncate(&v.runtime_api_version, 256).to_owned(),
        })
    }

    async fn run_sandbox(&self, config: &SandboxConfig) -> Result<String> {
        let config = convert::sandbox_config(config)?;
        let d = self.options.request_timeout;
        let mut c = self.runtime.clone();
        let resp = self
            .call(
                "RunPodSandbox",
                d,
                c.run_pod_sandbox(request(
                    api::RunPodSandboxRequest {
                        config: Some(config),
                        runtime_handler: String::new(),
                    },
                    d,
                )),
            )
            .await?;
        Ok(resp.pod_sandbox_id)
    }

    async fn stop_sandbox(&self, id: &str) -> Result<()> {
        let d = self.options.request_timeout;
        let mut c = self.runtime.clone();
        let call = c.stop_pod_sandbox(request(
            api::StopPodSandboxRequest {
                pod_sandbox_id: id.to_owned(),
            },
            d,
        ));
        gone_is_ok(self.call("StopPodSandbox", d, call).await.map(drop))
    }

    async fn remove_sandbox(&self, id: &str) -> Result<()> {
        let d = self.options.request_timeout;
        let mut c = self.runtime.clone();
        let call = c.remove_pod_sandbox(request(
            api::RemovePodSandboxRequest {
                pod_sandbox_id: id.to_owned(),
            },
            d,
        ));
        gone_is_ok(self.call("RemovePodSandbox", d, call).await.map(drop))
    }

    async fn list_sandboxes(&self) -> Result<Vec<SandboxInfo>> {
        self.list_sandboxes_filtered(None).await
    }

    async fn sandbox_status(&self, id: &str) -> Result<SandboxStatus> {
        let d = self.options.request_timeout;
        let mut c = self.runtime.clone();
        let resp = self
            .call(
                "PodSandboxStatus",
                d,
                c.pod_sandbox_status(request(
                    api::PodSandboxStatusRequest {
                        pod_sandbox_id: id.to_owned(),
                        verbose: false,
                    },
                    d,
                )),
            )
            .await?;
        let status = resp.status.ok_or_else(|| Error::Runtime {
            op: "PodSandboxStatus",
            message: format!("no status in the answer for sandbox {id:?}"),
        })?;
        Ok(convert::sandbox_status(status))
    }

    async fn image_status(&self, image: &str) -> Result<Option<String>> {
        let d = self.options.request_timeout;
        let mut c = self.images.clone();
        let resp = self
            .call(
                "ImageStatus",
                d,
                c.image_status(request(
                    api::ImageStatusRequest {
                        image: Some(convert::image_spec(image)),
                        verbose: false,
                    },
                    d,
                )),
            )
            .await?;
        Ok(resp.image.map(|i| i.id).filter(|id| !id.is_empty()))
    }

    async fn pull_image(&self, image: &str) -> Result<String> {
        let d = self.options.pull_timeout;
        let mut c = self.images.clone();
        let resp = self
            .call(
                "PullImage",
                d,
                c.pull_image(request(
                    api::PullImageRequest {
                        image: Some(convert::image_spec(image)),
                        auth: None,
                        sandbox_config: None,
                    },
                    d,
                )),
            )
            .await?;
        Ok(resp.image_ref)
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
        sandbox: &SandboxConfig,
    ) -> Result<String> {
        let container = convert::container_config(config, sandbox)?;
        let sandbox = convert::sandbox_config(sandbox)?;
        let d = self.options.request_timeout;
        let mut c = self.runtime.clone();
        let resp = self
            .call(
                "CreateContainer",
                d,
                c.create_container(request(
                    api::CreateContainerRequest {
                        pod_sandbox_id: sandbox_id.to_owned(),
                        config: Some(container),
                        sandbox_config: Some(sandbox),
                    },
                    d,
                )),
            )
            .await?;
        Ok(resp.container_id)
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        let d = self.options.request_timeout;
        let mut c = self.runtime.clone();
        let call = c.start_container(request(
            api::StartContainerRequest {
                container_id: id.to_owned(),
            },
            d,
        ));
        self.call("StartContainer", d, call).await.map(drop)
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<()> {
        let d = self.options.request_timeout.saturating_add(grace);
        let mut c = self.runtime.clone();
        let call = c.stop_container(request(
            api::StopContainerRequest {
                container_id: id.to_owned(),
                timeout: ceil_secs(grace),
            },
            d,
        ));
        gone_is_ok(self.call("StopContainer", d, call).await.map(drop))
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        let d = self.options.request_timeout;
        let mut c = self.runtime.clone();
        let call = c.remove_container(request(
            api::RemoveContainerRequest {
                container_id: id.to_owned(),
            },
            d,
        ));
        gone_is_ok(self.call("RemoveContainer", d, call).await.map(drop))
    }

    async fn list_containers(&self) -> Result<Vec<ContainerInfo>> {
        self.list_containers_filtered(None).await
    }

    async fn container_status(&self, id: &str) -> Result<ContainerStatus> {
        let d = self.options.request_timeout;
        let mut c = self.runtime.clone();
        let resp = self
            .call(
                "ContainerStatus",
                d,
                c.container_status(request(
                    api::ContainerStatusRequest {
                        container_id: id.to_owned(),
                        verbose: false,
                    },
                    d,
                )),
            )
            .await?;
        let status = resp.status.ok_or_else(|| Error::Runtime {
            op: "ContainerStatus",
            message: format!("no status in the answer for container {id:?}"),
        })?;
        Ok(convert::container_status(status))
    }

    async fn exec_sync(&self, id: &str, cmd: &[String], timeout: Duration) -> Result<ExecResult> {
        let d = self.options.request_timeout.saturating_add(timeout);
        let mut c = self.runtime.clone();
        let resp = self
            .call(
                "ExecSync",
                d,
                c.exec_sync(request(
                    api::ExecSyncRequest {
                        container_id: id.to_owned(),
                        cmd: cmd.to_vec(),
                        timeout: ceil_secs(timeout),
                    },
                    d,
                )),
            )
            .await?;
        Ok(convert::exec_result(resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_unix_sockets() {
        assert_eq!(
            socket_path("unix:///run/containerd/containerd.sock").unwrap(),
            PathBuf::from("/run/containerd/containerd.sock")
        );
        assert_eq!(
            socket_path("/tmp/c.sock").unwrap(),
            PathBuf::from("/tmp/c.sock")
        );
        for bad in [
            "",
            "unix://",
            "unix://relative.sock",
            "tcp://127.0.0.1:1234",
            "c.sock",
        ] {
            assert!(
                matches!(socket_path(bad), Err(Error::Connect { .. })),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.sock");
        let err = CriRuntime::connect(path.to_str().unwrap())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_socket_that_speaks_no_grpc_gives_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silent.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        // Accept and answer every connection with garbage, then close it.
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                use tokio::io::AsyncWriteExt;
                let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            }
        });
        let options = CriOptions {
            request_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            ..CriOptions::default()
        };
        let result = tokio::time::timeout(Duration::from_secs(30), async {
            let runtime = CriRuntime::connect_with(path.to_str().unwrap(), options).await?;
            runtime.version().await
        })
        .await
        .expect("hang guard");
        assert!(result.is_err(), "{result:?}");
    }
}
