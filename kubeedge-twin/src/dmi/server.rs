//! [`DmiServer`]: edgecore's side of DMI, the `DeviceManagerService` mappers call.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kubeedge_proto::{DeviceId, NodeName, dmi, go_json, now_millis};
use kubeedge_store::{Store, meta};
use serde_json::Value;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::MapperRegistry;
use super::client::{DEVICE_TYPE, MODEL_TYPE};
use super::convert::{self, truncate};
use super::grpc::device_manager_service_server::{
    DeviceManagerService, DeviceManagerServiceServer,
};
use crate::{Error, Ingress, Result};

/// How long `serve` waits for open calls after shutdown before it stops anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Longest state string forwarded (KubeEdge's states are at most 9 bytes).
const MAX_STATE_LEN: usize = 64;

/// A token bucket: one request per `every`, up to `burst` at once (Go's
/// `rate.NewLimiter(rate.Every(every), burst)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// One token is added per interval; zero means no limit.
    pub every: Duration,
    /// The most tokens held (requests allowed at once); zero refuses everything.
    pub burst: u32,
}

impl Default for RateLimit {
    /// KubeEdge's DMI server: `rate.Every(1000 ms)`, burst 100, shared by all three calls of
    /// all mappers.
    fn default() -> Self {
        Self {
            every: Duration::from_secs(1),
            burst: 100,
        }
    }
}

/// Settings of a [`DmiServer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmiConfig {
    /// The unix socket to serve on (KubeEdge: `<deviceTwin.dmiSockPath>/dmi.sock`, default
    /// `/etc/kubeedge/dmi.sock`).
    pub socket_path: PathBuf,
    /// This node's name (for logs).
    pub node_name: NodeName,
    /// The request rate limit.
    pub rate: RateLimit,
    /// The largest request accepted, in bytes (4 MiB, gRPC's usual default).
    pub max_message_size: usize,
}

impl DmiConfig {
    /// KubeEdge's defaults for node `node_name`.
    pub fn new(node_name: NodeName) -> Self {
        Self {
            socket_path: PathBuf::from(dmi::DEFAULT_EDGECORE_SOCKET),
            node_name,
            rate: RateLimit::default(),
            max_message_size: 4 * 1024 * 1024,
        }
    }
}

/// The DMI server: serves `DeviceManagerService` on a unix socket for the node's mappers.
///
/// - `MapperRegister` stores the mapper in `meta` and in the [`MapperRegistry`] and, with
///   `withData`, answers with every stored Device of the mapper's protocol (model defaults
///   applied) and its DeviceModel.
/// - `ReportDeviceStatus` becomes one `$hw/events/device/<ns>/<name>/twin/update` event per
///   reported twin, and `ReportDeviceStates` one `.../state/update` event, pushed into the
///   [`Ingress`] as if published over MQTT.
///
/// Requests are refused with `INVALID_ARGUMENT` when malformed (an empty protocol, a device
/// namespace or name that could not be an MQTT topic level: empty, with `/`, `+`, `#`, NUL or
/// spaces), and with `RESOURCE_EXHAUSTED` beyond the rate limit or when the ingress is full.
#[derive(Debug)]
pub struct DmiServer {
    config: DmiConfig,
    store: Store,
    ingress: Ingress,
    mappers: MapperRegistry,
}

impl DmiServer {
    /// A server that reads devices from `store`, pushes reports into `ingress` and registers
    /// mappers in `mappers`.
    pub fn new(config: DmiConfig, store: Store, ingress: Ingress, mappers: MapperRegistry) -> Self {
        Self {
            config,
            store,
            ingress,
            mappers,
        }
    }

    /// Serves until `shutdown` is cancelled.
    ///
    /// First loads the mappers recorded in the store ([`MapperRegistry::load`]). Then creates
    /// the socket's directory, replaces a stale socket file left by an earlier run (a socket
    /// nobody listens on; a live one, or a file that is not a socket, is an error), serves, and
    /// on shutdown waits up to 5 s for open calls and removes the socket file.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<()> {
        let Self {
            config,
            store,
            ingress,
            mappers,
        } = self;
        if let Err(e) = mappers.load().await {
            tracing::warn!(error = %e, "DMI: cannot load the stored mappers");
        }
        let path = config.socket_path.clone();
        let listener = bind(&path).await?;
        let ours = std::fs::symlink_metadata(&path)
            .map(|m| (m.dev(), m.ino()))
            .map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
        tracing::info!(socket = %path.display(), node = %config.node_name, "DMI server listening");

        let service = Service {
            store,
            ingress,
            mappers,
            limiter: Limiter::new(config.rate),
        };
        let service = DeviceManagerServiceServer::new(service)
            .max_decoding_message_size(config.max_message_size);
        let serve = tonic::transport::Server::builder()
            .concurrency_limit_per_connection(64)
            .timeout(Duration::from_secs(30))
            .add_service(service)
            .serve_with_incoming_shutdown(
                UnixListenerStream::new(listener),
                shutdown.clone().cancelled_owned(),
            );
        let result = tokio::select! {
            result = serve => result.map_err(|e| Error::Dmi(format!("DMI server: {e}"))),
            () = async {
                shutdown.cancelled().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {
                tracing::warn!("DMI: calls still open after shutdown; stopping anyway");
                Ok(())
            }
        };
        // Remove the socket unless another server has replaced it meanwhile.
        if let Ok(m) = std::fs::symlink_metadata(&path)
            && (m.dev(), m.ino()) == ours
            && let Err(e) = std::fs::remove_file(&path)
        {
            tracing::warn!(socket = %path.display(), error = %e, "DMI: cannot remove the socket");
        }
        tracing::info!(socket = %path.display(), "DMI server stopped");
        result
    }
}

/// Creates the directory, clears a stale socket and binds.
async fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(Error::Dmi(format!(
                    "{} is in use by a running server",
                    path.display()
                )));
            }
            tracing::info!(socket = %path.display(), "DMI: removing a stale socket");
            std::fs::remove_file(path)
                .map_err(|e| Error::io(format!("remove {}", path.display()), e))?;
        }
        Ok(_) => {
            return Err(Error::Dmi(format!(
                "{} exists and is not a socket",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("stat {}", path.display()), e)),
    }
    UnixListener::bind(path).map_err(|e| Error::io(format!("bind {}", path.display()), e))
}

struct Service {
    store: Store,
    ingress: Ingress,
    mappers: MapperRegistry,
    limiter: Limiter,
}

#[tonic::async_trait]
impl DeviceManagerService for Service {
    async fn mapper_register(
        &self,
        request: Request<dmi::MapperRegisterRequest>,
    ) -> Result<Response<dmi::MapperRegisterResponse>, Status> {
        let request = request.into_inner();
        let Some(info) = request.mapper else {
            return Err(Status::invalid_argument(
                "MapperRegisterRequest has no mapper",
            ));
        };
        self.limiter.check("register mapper", &info.name)?;
        let protocol = info.protocol.clone();
        self.mappers.register(info).await.map_err(to_status)?;
        if !request.with_data {
            return Ok(Response::new(dmi::MapperRegisterResponse::default()));
        }
        let (device_list, model_list) = self.devices_of(&protocol).await.map_err(to_status)?;
        Ok(Response::new(dmi::MapperRegisterResponse {
            model_list,
            device_list,
        }))
    }

    async fn report_device_status(
        &self,
        request: Request<dmi::ReportDeviceStatusRequest>,
    ) -> Result<Response<dmi::ReportDeviceStatusResponse>, Status> {
        let request = request.into_inner();
        self.limiter
            .check("report device status", &request.device_name)?;
        let id = device_id(&request.device_namespace, &request.device_name)?;
        let twins = request.reported_device.map(|d| d.twins).unwrap_or_default();
        if twins.is_empty() {
            return Err(Status::invalid_argument(
                "ReportDeviceStatusRequest does not have twin data",
            ));
        }
        // Build every event first, so a bad twin publishes none of them.
        let timestamp = now_millis();
        let payloads = twins
            .iter()
            .map(|twin| payload(&convert::twin_update(twin, timestamp)))
            .collect::<Result<Vec<_>, Status>>()?;
        let topic = format!("$hw/events/device/{id}/twin/update");
        for payload in payloads {
            self.ingress
                .push(topic.as_str(), payload)
                .map_err(to_status)?;
        }
        Ok(Response::new(dmi::ReportDeviceStatusResponse {}))
    }

    async fn report_device_states(
        &self,
        request: Request<dmi::ReportDeviceStatesRequest>,
    ) -> Result<Response<dmi::ReportDeviceStatesResponse>, Status> {
        let request = request.into_inner();
        self.limiter
            .check("report device states", &request.device_name)?;
        let id = device_id(&request.device_namespace, &request.device_name)?;
        if request.state.is_empty() || request.state.len() > MAX_STATE_LEN {
            return Err(Status::invalid_argument(
                "ReportDeviceStatesRequest is invalid data: state must be 1 to 64 bytes",
            ));
        }
        let payload = payload(&convert::state_update(&request.state, now_millis()))?;
        self.ingress
            .push(format!("$hw/events/device/{id}/state/update"), payload)
            .map_err(to_status)?;
        Ok(Response::new(dmi::ReportDeviceStatesResponse {}))
    }
}

impl Service {
    /// Every stored device of `protocol` (model defaults applied) and, at the same index, its
    /// model, as KubeEdge answers `MapperRegister` with `withData`. Devices that cannot be
    /// converted, or whose model is not stored, are skipped with a warning.
    async fn devices_of(
        &self,
        protocol: &str,
    ) -> Result<(Vec<dmi::Device>, Vec<dmi::DeviceModel>)> {
        let (devices, models) = self
            .store
            .read(|conn| {
                Ok((
                    meta::list_by_type(conn, DEVICE_TYPE)?,
                    meta::list_by_type(conn, MODEL_TYPE)?,
                ))
            })
            .await?;
        let models: HashMap<String, Value> = models
            .into_iter()
            .filter_map(|row| {
                let model: Value = serde_json::from_str(&row.value).ok()?;
                let (ns, name) = convert::object_namespaced_name(&model).ok()?;
                Some((format!("{ns}/{name}"), model))
            })
            .collect();
        let mut device_list = Vec::new();
        let mut model_list = Vec::new();
        for row in devices {
            let Ok(device) = serde_json::from_str::<Value>(&row.value) else {
                tracing::warn!(key = %row.key, "DMI: stored device is not JSON; skipped");
                continue;
            };
            if convert::device_protocol(&device) != protocol {
                continue;
            }
            match convert_with_model(&device, &models) {
                Ok((d, m)) => {
                    device_list.push(d);
                    model_list.push(m);
                }
                Err(e) => {
                    tracing::warn!(key = %row.key, error = %e, "DMI: device not sent to mapper");
                }
            }
        }
        Ok((device_list, model_list))
    }
}

fn convert_with_model(
    device: &Value,
    models: &HashMap<String, Value>,
) -> Result<(dmi::Device, dmi::DeviceModel)> {
    let (ns, name) = convert::object_namespaced_name(device)?;
    let model_name = convert::device_model_ref(device).ok_or_else(|| {
        Error::Validation(format!("Device {ns}/{name} has no device model reference"))
    })?;
    let model = models.get(&format!("{ns}/{model_name}")).ok_or_else(|| {
        Error::Dmi(format!(
            "device model {ns}/{} not found for device {ns}/{name}",
            truncate(model_name, 253)
        ))
    })?;
    let device = convert::device_from_json(&convert::apply_model_defaults(device, model)?)?;
    Ok((device, convert::device_model_from_json(model)?))
}

/// The device id of a report; refuses anything that is not a valid `<namespace>/<name>` or that
/// holds MQTT wildcards.
fn device_id(namespace: &str, name: &str) -> Result<DeviceId, Status> {
    if [namespace, name].iter().any(|s| s.contains(['+', '#'])) {
        return Err(Status::invalid_argument(format!(
            "invalid device {:?}/{:?}: MQTT wildcards are not allowed",
            truncate(namespace, 253),
            truncate(name, 253)
        )));
    }
    DeviceId::new(namespace, name).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// A twin or state event as Go's `json.Marshal` writes it, at most
/// [`MAX_PAYLOAD_LEN`](kubeedge_proto::twin::MAX_PAYLOAD_LEN) bytes.
fn payload<T: serde::Serialize>(event: &T) -> Result<Bytes, Status> {
    let bytes = go_json::to_vec(event).map_err(|e| Status::internal(e.to_string()))?;
    if bytes.len() > kubeedge_proto::twin::MAX_PAYLOAD_LEN {
        return Err(Status::invalid_argument(format!(
            "event of {} bytes is larger than the {} allowed",
            bytes.len(),
            kubeedge_proto::twin::MAX_PAYLOAD_LEN
        )));
    }
    Ok(Bytes::from(bytes))
}

fn to_status(e: Error) -> Status {
    match e {
        Error::Validation(reason) => Status::invalid_argument(reason),
        Error::QueueFull(_) => Status::resource_exhausted(e.to_string()),
        Error::Closed => Status::unavailable(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

/// Go's `rate.Limiter` `Allow`, as a token bucket.
struct Limiter {
    rate: RateLimit,
    /// Tokens held and when they were last counted.
    state: Mutex<(f64, Instant)>,
}

impl Limiter {
    fn new(rate: RateLimit) -> Self {
        Self {
            rate,
            state: Mutex::new((f64::from(rate.burst), Instant::now())),
        }
    }

    fn allow(&self) -> bool {
        if self.rate.every.is_zero() {
            return true;
        }
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(state.1);
        state.1 = now;
        let refill = elapsed.as_secs_f64() / self.rate.every.as_secs_f64();
        state.0 = (state.0 + refill).min(f64::from(self.rate.burst));
        if state.0 >= 1.0 {
            state.0 -= 1.0;
            true
        } else {
            false
        }
    }

    fn check(&self, what: &str, name: &str) -> Result<(), Status> {
        if self.allow() {
            Ok(())
        } else {
            Err(Status::resource_exhausted(format!(
                "fail to {what} because of too many request: {}",
                truncate(name, 253)
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_allows_the_burst_then_refuses() {
        let limiter = Limiter::new(RateLimit {
            every: Duration::from_secs(3600),
            burst: 3,
        });
        assert_eq!((0..5).filter(|_| limiter.allow()).count(), 3);
        let unlimited = Limiter::new(RateLimit {
            every: Duration::ZERO,
            burst: 0,
        });
        assert!((0..1000).all(|_| unlimited.allow()));
    }

    #[test]
    fn device_ids_are_topic_safe() {
        assert!(device_id("default", "thermo-1").is_ok());
        for (ns, name) in [
            ("default", "a/b"),
            ("default", "x+"),
            ("default", "#"),
            ("default", ""),
            ("", "x"),
            ("default", "a\0b"),
            ("default", "a b"),
            ("Default", "x"),
        ] {
            let err = device_id(ns, name).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{ns:?}/{name:?}");
        }
    }
}
