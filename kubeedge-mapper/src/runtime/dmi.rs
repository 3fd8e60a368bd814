//! The mapper's side of DMI: `DeviceMapperService` on the mapper's own unix socket (edgecore
//! calls it when devices and models change), and the `MapperRegister` call to edgecore.

use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kubeedge_proto::dmi;
use kubeedge_twin::dmi::grpc::device_manager_service_client::DeviceManagerServiceClient;
use kubeedge_twin::dmi::grpc::device_mapper_service_server::{
    DeviceMapperService, DeviceMapperServiceServer,
};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::report::twin_value_type;
use super::{Command, MapperConfig, Registry};
use crate::error::{Error, Result};

/// The DMI API version this mapper speaks (`MapperInfo.api_version`).
pub const DMI_API_VERSION: &str = "v1beta1";
/// The largest DMI request accepted.
const MAX_MESSAGE_LEN: usize = 4 * 1024 * 1024;

/// Binds `path`: creates its directory and replaces a stale socket left by an earlier run (a
/// live one, or a file that is not a socket, is an error).
pub(crate) async fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(Error::io(
                    path.display(),
                    std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        "another process serves this socket",
                    ),
                ));
            }
            std::fs::remove_file(path).map_err(|e| Error::io(path.display(), e))?;
        }
        Ok(_) => {
            return Err(Error::io(
                path.display(),
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "exists and is not a socket",
                ),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(path.display(), e)),
    }
    UnixListener::bind(path).map_err(|e| Error::io(path.display(), e))
}

/// Serves `DeviceMapperService` on `listener` until `shutdown`, then removes the socket file.
pub(crate) async fn serve(
    listener: UnixListener,
    path: PathBuf,
    commands: mpsc::Sender<Command>,
    registry: Arc<Registry>,
    timeout: Duration,
    shutdown: CancellationToken,
) {
    let service = MapperService {
        commands,
        registry,
        timeout,
    };
    let service =
        DeviceMapperServiceServer::new(service).max_decoding_message_size(MAX_MESSAGE_LEN);
    tracing::info!(socket = %path.display(), "DMI: serving DeviceMapperService");
    let result = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(64)
        .timeout(timeout * 2)
        .add_service(service)
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener),
            shutdown.cancelled_owned(),
        )
        .await;
    if let Err(e) = result {
        tracing::error!(socket = %path.display(), error = %e, "DMI: DeviceMapperService stopped");
    }
    let _ = std::fs::remove_file(&path);
}

/// Calls `MapperRegister(withData=true)` on edgecore until it answers, with growing pauses
/// between attempts; hands the devices and models it returns to the runtime.
pub(crate) async fn register(
    config: Arc<MapperConfig>,
    socket: PathBuf,
    mut edgecore: DeviceManagerServiceClient<Channel>,
    commands: mpsc::Sender<Command>,
    shutdown: CancellationToken,
) {
    let info = dmi::MapperInfo {
        name: config.name.clone(),
        version: config.version.clone(),
        api_version: DMI_API_VERSION.to_owned(),
        protocol: config.protocol.clone(),
        address: socket.as_os_str().as_encoded_bytes().to_vec(),
        state: "ok".to_owned(),
    };
    let mut pause = config.backoff_initial;
    loop {
        let request = dmi::MapperRegisterRequest {
            with_data: true,
            mapper: Some(info.clone()),
        };
        let call =
            tokio::time::timeout(config.operation_timeout, edgecore.mapper_register(request));
        let outcome = tokio::select! {
            () = shutdown.cancelled() => return,
            r = call => r,
        };
        match outcome {
            Ok(Ok(response)) => {
                let response = response.into_inner();
                tracing::info!(
                    edgecore = %config.edgecore_socket.display(),
                    devices = response.device_list.len(),
                    "DMI: registered with edgecore"
                );
                let command = Command::Registered {
                    devices: response.device_list,
                    models: response.model_list,
                };
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    _ = commands.send(command) => {}
                }
                return;
            }
            Ok(Err(status)) => tracing::warn!(
                edgecore = %config.edgecore_socket.display(), code = ?status.code(),
                error = status.message(), retry_in = ?pause, "DMI: MapperRegister failed"),
            Err(_) => tracing::warn!(
                edgecore = %config.edgecore_socket.display(), retry_in = ?pause,
                "DMI: MapperRegister timed out"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(config.backoff_max);
    }
}

struct MapperService {
    commands: mpsc::Sender<Command>,
    registry: Arc<Registry>,
    timeout: Duration,
}

impl MapperService {
    /// Sends a command to the runtime and waits (bounded) for its answer.
    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        let exchange = async {
            self.commands
                .send(make(tx))
                .await
                .map_err(|_| Status::unavailable("the mapper is stopping"))?;
            rx.await
                .map_err(|_| Status::unavailable("the mapper is stopping"))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| Status::deadline_exceeded("the mapper runtime did not answer in time"))?
    }
}

fn status(e: Error) -> Status {
    match e {
        Error::InvalidDevice { .. } | Error::Config(_) | Error::Unsupported(_) => {
            Status::invalid_argument(e.to_string())
        }
        Error::Stopped => Status::unavailable(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

fn device_key(namespace: &str, name: &str) -> Result<kubeedge_proto::DeviceId, Status> {
    let ns = if namespace.is_empty() {
        "default"
    } else {
        namespace
    };
    kubeedge_twin::topic::device_id(ns, name).map_err(|e| Status::invalid_argument(e.to_string()))
}

#[tonic::async_trait]
impl DeviceMapperService for MapperService {
    async fn register_device(
        &self,
        request: Request<dmi::RegisterDeviceRequest>,
    ) -> Result<Response<dmi::RegisterDeviceResponse>, Status> {
        let device = request
            .into_inner()
            .device
            .ok_or_else(|| Status::invalid_argument("RegisterDeviceRequest has no device"))?;
        let response = dmi::RegisterDeviceResponse {
            device_name: device.name.clone(),
            device_namespace: device.namespace.clone(),
        };
        self.call(|reply| Command::UpsertDmi {
            device: Box::new(device),
            reply,
        })
        .await?
        .map_err(status)?;
        Ok(Response::new(response))
    }

    async fn remove_device(
        &self,
        request: Request<dmi::RemoveDeviceRequest>,
    ) -> Result<Response<dmi::RemoveDeviceResponse>, Status> {
        let r = request.into_inner();
        let id = device_key(&r.device_namespace, &r.device_name)?;
        let found = self
            .call(|reply| Command::Remove {
                id: id.clone(),
                reply,
            })
            .await?;
        if !found {
            return Err(Status::not_found(format!("device {id} not found")));
        }
        Ok(Response::new(dmi::RemoveDeviceResponse {}))
    }

    async fn update_device(
        &self,
        request: Request<dmi::UpdateDeviceRequest>,
    ) -> Result<Response<dmi::UpdateDeviceResponse>, Status> {
        let device = request
            .into_inner()
            .device
            .ok_or_else(|| Status::invalid_argument("UpdateDeviceRequest has no device"))?;
        self.call(|reply| Command::UpsertDmi {
            device: Box::new(device),
            reply,
        })
        .await?
        .map_err(status)?;
        Ok(Response::new(dmi::UpdateDeviceResponse {}))
    }

    async fn create_device_model(
        &self,
        request: Request<dmi::CreateDeviceModelRequest>,
    ) -> Result<Response<dmi::CreateDeviceModelResponse>, Status> {
        let model = request
            .into_inner()
            .model
            .ok_or_else(|| Status::invalid_argument("CreateDeviceModelRequest has no model"))?;
        let response = dmi::CreateDeviceModelResponse {
            device_model_name: model.name.clone(),
            device_model_namespace: model.namespace.clone(),
        };
        self.call(|reply| Command::Model { model, reply })
            .await?
            .map_err(status)?;
        Ok(Response::new(response))
    }

    async fn remove_device_model(
        &self,
        request: Request<dmi::RemoveDeviceModelRequest>,
    ) -> Result<Response<dmi::RemoveDeviceModelResponse>, Status> {
        let r = request.into_inner();
        let ns = if r.model_namespace.is_empty() {
            "default"
        } else {
            &r.model_namespace
        };
        let key = format!("{ns}/{}", r.model_name);
        self.call(|reply| Command::RemoveModel { key, reply })
            .await?;
        Ok(Response::new(dmi::RemoveDeviceModelResponse {}))
    }

    async fn update_device_model(
        &self,
        request: Request<dmi::UpdateDeviceModelRequest>,
    ) -> Result<Response<dmi::UpdateDeviceModelResponse>, Status> {
        let model = request
            .into_inner()
            .model
            .ok_or_else(|| Status::invalid_argument("UpdateDeviceModelRequest has no model"))?;
        self.call(|reply| Command::Model { model, reply })
            .await?
            .map_err(status)?;
        Ok(Response::new(dmi::UpdateDeviceModelResponse {}))
    }

    async fn get_device(
        &self,
        request: Request<dmi::GetDeviceRequest>,
    ) -> Result<Response<dmi::GetDeviceResponse>, Status> {
        let r = request.into_inner();
        let id = device_key(&r.device_namespace, &r.device_name)?;
        let Some((instance, shared)) = self.registry.get(&id) else {
            return Err(Status::not_found(format!("device {id} not found")));
        };
        let mut device = instance.to_dmi().map_err(status)?;
        let current = shared.status();
        let twins = instance
            .properties
            .iter()
            .filter_map(|p| {
                let ps = current.properties.get(&p.spec.name)?;
                let value = ps.value.clone()?;
                let value_type = twin_value_type(p.spec.property_type).to_owned();
                Some(dmi::Twin {
                    property_name: p.spec.name.clone(),
                    reported: Some(dmi::TwinProperty {
                        value,
                        metadata: [
                            ("timestamp".to_owned(), ps.timestamp.to_string()),
                            ("type".to_owned(), value_type.clone()),
                        ]
                        .into_iter()
                        .collect(),
                    }),
                    observed_desired: ps.desired.clone().map(|value| dmi::TwinProperty {
                        value,
                        metadata: [("type".to_owned(), value_type)].into_iter().collect(),
                    }),
                })
            })
            .collect();
        device.status = Some(dmi::DeviceStatus {
            twins,
            report_to_cloud: true,
            report_cycle: 0,
        });
        Ok(Response::new(dmi::GetDeviceResponse {
            device: Some(device),
        }))
    }
}
