//! A mapper that serves DeviceMapperService on a unix socket and records every call, for
//! tests of what the edge pushes to mappers.

use std::path::Path;

use kubeedge_proto::dmi;
use kubeedge_twin::dmi::grpc::device_mapper_service_server::{
    DeviceMapperService, DeviceMapperServiceServer,
};
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use kubeedge_testkit::DEADLINE;

/// A call the mapper received.
#[derive(Debug, PartialEq)]
pub enum Call {
    RegisterDevice(dmi::Device),
    UpdateDevice(dmi::Device),
    RemoveDevice(String, String),
    CreateModel(dmi::DeviceModel),
    UpdateModel(dmi::DeviceModel),
    RemoveModel(String, String),
}

struct RecordingMapper {
    calls: mpsc::UnboundedSender<Call>,
}

impl RecordingMapper {
    fn record(&self, call: Call) {
        let _ = self.calls.send(call);
    }
}

#[tonic::async_trait]
impl DeviceMapperService for RecordingMapper {
    async fn register_device(
        &self,
        request: Request<dmi::RegisterDeviceRequest>,
    ) -> Result<Response<dmi::RegisterDeviceResponse>, Status> {
        let device = request.into_inner().device.unwrap_or_default();
        let response = dmi::RegisterDeviceResponse {
            device_name: device.name.clone(),
            device_namespace: device.namespace.clone(),
        };
        self.record(Call::RegisterDevice(device));
        Ok(Response::new(response))
    }

    async fn remove_device(
        &self,
        request: Request<dmi::RemoveDeviceRequest>,
    ) -> Result<Response<dmi::RemoveDeviceResponse>, Status> {
        let r = request.into_inner();
        self.record(Call::RemoveDevice(r.device_namespace, r.device_name));
        Ok(Response::new(dmi::RemoveDeviceResponse {}))
    }

    async fn update_device(
        &self,
        request: Request<dmi::UpdateDeviceRequest>,
    ) -> Result<Response<dmi::UpdateDeviceResponse>, Status> {
        self.record(Call::UpdateDevice(
            request.into_inner().device.unwrap_or_default(),
        ));
        Ok(Response::new(dmi::UpdateDeviceResponse {}))
    }

    async fn create_device_model(
        &self,
        request: Request<dmi::CreateDeviceModelRequest>,
    ) -> Result<Response<dmi::CreateDeviceModelResponse>, Status> {
        let model = request.into_inner().model.unwrap_or_default();
        let response = dmi::CreateDeviceModelResponse {
            device_model_name: model.name.clone(),
            device_model_namespace: model.namespace.clone(),
        };
        self.record(Call::CreateModel(model));
        Ok(Response::new(response))
    }

    async fn remove_device_model(
        &self,
        request: Request<dmi::RemoveDeviceModelRequest>,
    ) -> Result<Response<dmi::RemoveDeviceModelResponse>, Status> {
        let r = request.into_inner();
        self.record(Call::RemoveModel(r.model_namespace, r.model_name));
        Ok(Response::new(dmi::RemoveDeviceModelResponse {}))
    }

    async fn update_device_model(
        &self,
        request: Request<dmi::UpdateDeviceModelRequest>,
    ) -> Result<Response<dmi::UpdateDeviceModelResponse>, Status> {
        self.record(Call::UpdateModel(
            request.into_inner().model.unwrap_or_default(),
        ));
        Ok(Response::new(dmi::UpdateDeviceModelResponse {}))
    }

    async fn get_device(
        &self,
        _request: Request<dmi::GetDeviceRequest>,
    ) -> Result<Response<dmi::GetDeviceResponse>, Status> {
        Err(Status::unimplemented("not recorded"))
    }
}

/// Serves a recording mapper on `socket` until `shutdown`.
pub fn start_mapper(
    socket: &Path,
    shutdown: CancellationToken,
) -> (mpsc::UnboundedReceiver<Call>, JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let listener = UnixListener::bind(socket).expect("mapper socket binds");
    let task = tokio::spawn(async move {
        Server::builder()
            .add_service(DeviceMapperServiceServer::new(RecordingMapper {
                calls: tx,
            }))
            .serve_with_incoming_shutdown(
                UnixListenerStream::new(listener),
                shutdown.cancelled_owned(),
            )
            .await
            .expect("mapper serves");
    });
    (rx, task)
}

/// The next call, failing the test after the deadline.
pub async fn next_call(calls: &mut mpsc::UnboundedReceiver<Call>) -> Call {
    timeout(DEADLINE, calls.recv())
        .await
        .expect("the mapper is called")
        .expect("mapper running")
}
