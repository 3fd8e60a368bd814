//! [`MapperRegistry`]: the mappers that registered with the DMI server, and the calls edgecore
//! makes to them when devices and device models change.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kubeedge_proto::{Message, Operation, dmi};
use kubeedge_store::{Store, meta};
use serde_json::Value;

use super::convert::{self, truncate};
use super::grpc::device_mapper_service_client::DeviceMapperServiceClient;
use super::unix_channel;
use crate::{Error, Result};
use tonic::transport::Channel;

/// The `meta` type of mapper records.
pub(crate) const MAPPER_TYPE: &str = "devicemapper";
/// The `meta` type of Device rows.
pub(crate) const DEVICE_TYPE: &str = "device";
/// The `meta` type of DeviceModel rows.
pub(crate) const MODEL_TYPE: &str = "devicemodel";

/// The most protocols (mappers) the registry holds.
const MAX_MAPPERS: usize = 256;
/// The longest mapper name or protocol accepted.
const MAX_NAME_LEN: usize = 253;
/// The longest mapper socket path accepted.
const MAX_ADDRESS_LEN: usize = 4096;
/// The largest message accepted from a mapper.
const MAX_RESPONSE_LEN: usize = 4 * 1024 * 1024;

/// The `meta` key KubeEdge stores a mapper's record under.
///
/// KubeEdge's `saveMapper` (`edge/pkg/devicetwin/dmiserver/server.go`) builds it from the
/// *literal* words `nodeID` and `namespace`, not from the node's name or a namespace:
/// `node/nodeID/namespace/devicemapper/<mapper name>`. Rows are only ever read back by type, so
/// the same key keeps a database interchangeable with edgecore's.
pub fn mapper_meta_key(mapper_name: &str) -> String {
    format!("node/nodeID/namespace/{MAPPER_TYPE}/{mapper_name}")
}

/// The mappers that registered over DMI, one per protocol (as in KubeEdge, a newer registration
/// of a protocol replaces the older), and the client that calls each one's
/// `DeviceMapperService`.
///
/// Clients connect lazily, on first use, to the mapper's unix socket (`MapperInfo.address`),
/// reconnect after failures, and bound every call by the connect and request timeouts
/// (KubeEdge: 10 s). Cloning is cheap; clones share the registry.
///
/// Besides the mappers, the registry remembers each device's last spec so that an update which
/// changes only the status (the cloud echoes every twin report back as a Device update) is not
/// sent to the mapper, as KubeEdge's `CompareDeviceSpecHasChanged` does.
#[derive(Clone)]
pub struct MapperRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    connect_timeout: Duration,
    request_timeout: Duration,
    /// By protocol.
    mappers: Mutex<HashMap<String, Entry>>,
    /// Normalized `spec` of each known device, by `<ns>/<name>`.
    specs: Mutex<HashMap<String, Value>>,
    /// Devices that arrived before their model, by `<ns>/<model>`: registered when it comes.
    awaiting_model: Mutex<HashMap<String, std::collections::BTreeSet<String>>>,
}

struct Entry {
    info: dmi::MapperInfo,
    path: PathBuf,
    client: Option<DeviceMapperServiceClient<Channel>>,
}

impl std::fmt::Debug for MapperRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let protocols: Vec<String> = lock(&self.inner.mappers).keys().cloned().collect();
        f.debug_struct("MapperRegistry")
            .field("protocols", &protocols)
            .field("connect_timeout", &self.inner.connect_timeout)
            .field("request_timeout", &self.inner.request_timeout)
            .finish_non_exhaustive()
    }
}

impl MapperRegistry {
    /// KubeEdge's timeout for connecting to a mapper and for each call: 10 s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    /// An empty registry that persists mapper records in, and reads device models from, `store`;
    /// connect and request timeouts of [`DEFAULT_TIMEOUT`](Self::DEFAULT_TIMEOUT).
    pub fn new(store: Store) -> Self {
        Self::with_timeouts(store, Self::DEFAULT_TIMEOUT, Self::DEFAULT_TIMEOUT)
    }

    /// An empty registry with the given connect and per-call timeouts.
    pub fn with_timeouts(
        store: Store,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                connect_timeout,
                request_timeout,
                mappers: Mutex::new(HashMap::new()),
                specs: Mutex::new(HashMap::new()),
                awaiting_model: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Restores the state KubeEdge's DMI worker loads at startup: the mappers recorded in
    /// `meta` (type `devicemapper`) and the spec of every stored device. Malformed rows are
    /// skipped with a warning. Returns how many mappers were loaded.
    pub async fn load(&self) -> Result<usize> {
        let (mappers, devices) = self
            .inner
            .store
            .read(|conn| {
                Ok((
                    meta::list_by_type(conn, MAPPER_TYPE)?,
                    meta::list_by_type(conn, DEVICE_TYPE)?,
                ))
            })
            .await?;
        let mut loaded = 0;
        for row in mappers {
            match convert::mapper_info_from_json(&row.value)
                .map_err(Error::from)
                .and_then(|info| validate_mapper(&info).map(|path| (info, path)))
            {
                Ok((info, path)) => match self.insert(info, path) {
                    Ok(()) => loaded += 1,
                    Err(e) => tracing::warn!(key = %row.key, error = %e, "DMI: mapper not loaded"),
                },
                Err(e) => tracing::warn!(key = %row.key, error = %e, "DMI: bad mapper record"),
            }
        }
        for row in devices {
            let Ok(device) = serde_json::from_str::<Value>(&row.value) else {
                tracing::warn!(key = %row.key, "DMI: stored device is not JSON");
                continue;
            };
            if let Ok((ns, name)) = convert::object_namespaced_name(&device) {
                lock(&self.inner.specs).insert(format!("{ns}/{name}"), normalized_spec(&device));
            }
        }
        Ok(loaded)
    }

    /// Registers a mapper (what `MapperRegister` does besides answering): checks it, stores its
    /// record in `meta` under [`mapper_meta_key`], and makes it the mapper of its protocol.
    ///
    /// Fails with [`Error::Validation`] for an empty protocol, a name that is empty, too long or
    /// has `/` or control characters, or an address that is not a non-empty UTF-8 path; with
    /// [`Error::QueueFull`] when 256 protocols are registered already.
    pub async fn register(&self, info: dmi::MapperInfo) -> Result<()> {
        let path = validate_mapper(&info)?;
        {
            let mappers = lock(&self.inner.mappers);
            if !mappers.contains_key(&info.protocol) && mappers.len() >= MAX_MAPPERS {
                return Err(Error::QueueFull("mapper registry"));
            }
        }
        let key = mapper_meta_key(&info.name);
        let value = convert::mapper_info_to_json(&info)?;
        self.inner
            .store
            .write(move |conn| meta::upsert(conn, &key, MAPPER_TYPE, &value, None))
            .await?;
        tracing::info!(
            mapper = %info.name,
            protocol = %info.protocol,
            address = %path.display(),
            "DMI: mapper registered"
        );
        self.insert(info, path)
    }

    fn insert(&self, info: dmi::MapperInfo, path: PathBuf) -> Result<()> {
        let mut mappers = lock(&self.inner.mappers);
        if !mappers.contains_key(&info.protocol) && mappers.len() >= MAX_MAPPERS {
            return Err(Error::QueueFull("mapper registry"));
        }
        // Same socket: keep the channel (it reconnects by itself); new socket: new channel.
        let client = mappers
            .remove(&info.protocol)
            .filter(|old| old.path == path)
            .and_then(|old| old.client);
        mappers.insert(info.protocol.clone(), Entry { info, path, client });
        Ok(())
    }

    /// The mapper registered for `protocol`.
    pub fn mapper(&self, protocol: &str) -> Option<dmi::MapperInfo> {
        lock(&self.inner.mappers)
            .get(protocol)
            .map(|e| e.info.clone())
    }

    /// Every registered mapper, in protocol order.
    pub fn mappers(&self) -> Vec<dmi::MapperInfo> {
        let mut all: Vec<_> = lock(&self.inner.mappers)
            .values()
            .map(|e| e.info.clone())
            .collect();
        all.sort_by(|a, b| a.protocol.cmp(&b.protocol));
        all
    }

    /// The client of `protocol`'s mapper, creating its (lazy) channel on first use. Must run
    /// inside a tokio runtime, which every caller (an async method) does.
    fn client(&self, protocol: &str) -> Result<DeviceMapperServiceClient<Channel>> {
        let mut mappers = lock(&self.inner.mappers);
        let Some(entry) = mappers.get_mut(protocol) else {
            let protocol = truncate(protocol, MAX_NAME_LEN);
            tracing::warn!(
                protocol,
                "DMI: fail to get dmi client of protocol {protocol}"
            );
            return Err(Error::Dmi(format!(
                "no mapper registered for protocol {protocol:?}"
            )));
        };
        let client = entry.client.get_or_insert_with(|| {
            let channel = unix_channel(
                entry.path.clone(),
                self.inner.connect_timeout,
                self.inner.request_timeout,
            );
            DeviceMapperServiceClient::new(channel).max_decoding_message_size(MAX_RESPONSE_LEN)
        });
        Ok(client.clone())
    }

    /// Sends a new device to its protocol's mapper (`RegisterDevice`), with its model's defaults
    /// applied (the model is read from the store, `<ns>/devicemodel/<spec.deviceModelRef>`).
    /// The model is sent first (`CreateDeviceModel`, which mappers treat as create-or-replace):
    /// a model that reached the node before the mapper registered was never given to it, and a
    /// mapper refuses a device whose model it does not know.
    ///
    /// Fails with [`Error::Validation`] for a malformed Device, [`Error::Dmi`] when its model is
    /// not stored, no mapper serves its protocol, or the call fails.
    pub async fn register_device(&self, device: &Value) -> Result<()> {
        let (ns, name) = convert::object_namespaced_name(device)?;
        lock(&self.inner.specs).insert(format!("{ns}/{name}"), normalized_spec(device));
        let protocol = convert::device_protocol(device);
        let model = match self.stored_model(device, &ns, &name).await {
            Ok(model) => model,
            Err(e) => {
                if let Some(model) = convert::device_model_ref(device) {
                    lock(&self.inner.awaiting_model)
                        .entry(format!("{ns}/{model}"))
                        .or_default()
                        .insert(name.clone());
                }
                return Err(e);
            }
        };
        let pb = convert::device_from_json(&convert::apply_model_defaults(device, &model)?)?;
        let mut client = self.client(protocol)?;
        let model_pb = convert::device_model_from_json(&model)?;
        let model_name = model_pb.name.clone();
        client
            .create_device_model(dmi::CreateDeviceModelRequest {
                model: Some(model_pb),
            })
            .await
            .map_err(|s| rpc_error("CreateDeviceModel", &ns, &model_name, protocol, &s))?;
        client
            .register_device(dmi::RegisterDeviceRequest { device: Some(pb) })
            .await
            .map_err(|s| rpc_error("RegisterDevice", &ns, &name, protocol, &s))?;
        tracing::debug!(device = %format!("{ns}/{name}"), protocol, "DMI: device registered with mapper");
        Ok(())
    }

    /// Sends a changed device to its mapper (`UpdateDevice`), model defaults applied. An update
    /// whose `spec` equals the last one seen (properties and methods compared by name, as
    /// KubeEdge does) is not sent: returns `Ok(false)`. `Ok(true)` when the mapper took it.
    pub async fn update_device(&self, device: &Value) -> Result<bool> {
        let (ns, name) = convert::object_namespaced_name(device)?;
        let id = format!("{ns}/{name}");
        let spec = normalized_spec(device);
        if lock(&self.inner.specs).get(&id) == Some(&spec) {
            tracing::debug!(device = %id, "DMI: device spec unchanged, skip updateDevice");
            return Ok(false);
        }
        let protocol = convert::device_protocol(device);
        let pb = self.overridden(device, &ns, &name).await?;
        let mut client = self.client(protocol)?;
        client
            .update_device(dmi::UpdateDeviceRequest { device: Some(pb) })
            .await
            .map_err(|s| rpc_error("UpdateDevice", &ns, &name, protocol, &s))?;
        // Only once the mapper has it: a failed update is retried by the next one.
        lock(&self.inner.specs).insert(id, spec);
        Ok(true)
    }

    /// Tells `protocol`'s mapper that a device is gone (`RemoveDevice`).
    pub async fn remove_device(&self, namespace: &str, name: &str, protocol: &str) -> Result<()> {
        lock(&self.inner.specs).remove(&format!("{namespace}/{name}"));
        let mut client = self.client(protocol)?;
        client
            .remove_device(dmi::RemoveDeviceRequest {
                device_name: name.to_owned(),
                device_namespace: namespace.to_owned(),
            })
            .await
            .map_err(|s| rpc_error("RemoveDevice", namespace, name, protocol, &s))?;
        Ok(())
    }

    /// Sends a new device model to the mapper of its `spec.protocol` (`CreateDeviceModel`).
    pub async fn create_model(&self, model: &Value) -> Result<()> {
        let pb = convert::device_model_from_json(model)?;
        let (ns, name) = (pb.namespace.clone(), pb.name.clone());
        let protocol = convert::model_protocol(model);
        let mut client = self.client(protocol)?;
        client
            .create_device_model(dmi::CreateDeviceModelRequest { model: Some(pb) })
            .await
            .map_err(|s| rpc_error("CreateDeviceModel", &ns, &name, protocol, &s))?;
        Ok(())
    }

    /// Sends a changed device model to the mapper of its `spec.protocol` (`UpdateDeviceModel`).
    pub async fn update_model(&self, model: &Value) -> Result<()> {
        let pb = convert::device_model_from_json(model)?;
        let (ns, name) = (pb.namespace.clone(), pb.name.clone());
        let protocol = convert::model_protocol(model);
        let mut client = self.client(protocol)?;
        client
            .update_device_model(dmi::UpdateDeviceModelRequest { model: Some(pb) })
            .await
            .map_err(|s| rpc_error("UpdateDeviceModel", &ns, &name, protocol, &s))?;
        Ok(())
    }

    /// Tells `protocol`'s mapper that a device model is gone (`RemoveDeviceModel`).
    pub async fn remove_model(&self, namespace: &str, name: &str, protocol: &str) -> Result<()> {
        let mut client = self.client(protocol)?;
        client
            .remove_device_model(dmi::RemoveDeviceModelRequest {
                model_name: name.to_owned(),
                model_namespace: namespace.to_owned(),
            })
            .await
            .map_err(|s| rpc_error("RemoveDeviceModel", namespace, name, protocol, &s))?;
        Ok(())
    }

    /// Applies what the MetaManager forwards to the twin for `<ns>/device/<name>` and
    /// `<ns>/devicemodel/<name>` resources (content: the CRD JSON), as KubeEdge's DMI worker
    /// (`dealMetaDeviceOperation`) does:
    ///
    /// | resource | insert | update | delete |
    /// |---|---|---|---|
    /// | device | [`register_device`](Self::register_device) | [`update_device`](Self::update_device) | [`remove_device`](Self::remove_device) |
    /// | devicemodel | [`create_model`](Self::create_model) | [`update_model`](Self::update_model) | [`remove_model`](Self::remove_model) |
    ///
    /// Other resource types and operations are ignored (`Ok`). A resource that is not
    /// `<ns>/<type>/<name>` or content that is not JSON is an [`Error::InvalidMessage`]; the
    /// errors of the calls above are returned (and logged).
    pub async fn apply_meta_message(&self, msg: &Message) -> Result<()> {
        let resource = msg.route.resource.as_str();
        let parts: Vec<&str> = resource.split('/').collect();
        let [res_ns, kind, res_name] = parts[..] else {
            return Err(Error::InvalidMessage(format!(
                "wrong resources {:?}",
                truncate(resource, 256)
            )));
        };
        if kind != DEVICE_TYPE && kind != MODEL_TYPE {
            tracing::debug!(resource, "DMI: not a device resource; ignored");
            return Ok(());
        }
        let op = msg.route.operation.as_ref();
        if !matches!(
            op,
            Some(Operation::Insert | Operation::Update | Operation::Delete)
        ) {
            tracing::warn!(resource, operation = ?op, "DMI: unsupported operation; ignored");
            return Ok(());
        }
        let content: Value = msg.content.decode().map_err(|e| {
            Error::InvalidMessage(format!("invalid message content for {resource}: {e}"))
        })?;
        let (ns, name) = convert::object_namespaced_name(&content)
            .unwrap_or_else(|_| (res_ns.to_owned(), res_name.to_owned()));
        let result = match (kind, op) {
            (DEVICE_TYPE, Some(Operation::Insert)) => self.register_device(&content).await,
            (DEVICE_TYPE, Some(Operation::Update)) => self.update_device(&content).await.map(drop),
            (DEVICE_TYPE, _) => {
                self.remove_device(&ns, &name, convert::device_protocol(&content))
                    .await
            }
            (_, Some(Operation::Insert)) => match self.create_model(&content).await {
                Ok(()) => self.register_devices_of_model(&ns, &name).await,
                Err(e) => Err(e),
            },
            (_, Some(Operation::Update)) => self.update_model(&content).await,
            (_, _) => {
                self.remove_model(&ns, &name, convert::model_protocol(&content))
                    .await
            }
        };
        if let Err(e) = &result {
            tracing::warn!(resource, operation = ?op, error = %e, "DMI: mapper not updated");
        }
        result
    }

    /// Registers the devices that arrived before model `<namespace>/<model>` with their mapper,
    /// now that the model is here. The cloud sends a model and its devices on separate queues,
    /// so a device can arrive first; its registration then failed for want of the model.
    async fn register_devices_of_model(&self, namespace: &str, model: &str) -> Result<()> {
        let waiting = lock(&self.inner.awaiting_model).remove(&format!("{namespace}/{model}"));
        let mut first_error = None;
        for name in waiting.unwrap_or_default() {
            let key = format!("{namespace}/{DEVICE_TYPE}/{name}");
            let row = self
                .inner
                .store
                .read(move |conn| meta::get(conn, &key))
                .await?;
            let Some(device) = row.and_then(|r| serde_json::from_str::<Value>(&r.value).ok())
            else {
                continue; // deleted meanwhile
            };
            if let Err(e) = self.register_device(&device).await {
                tracing::warn!(device = %format!("{namespace}/{name}"), error = %e, "DMI: device waiting for its model not registered");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The DMI Device for `device`, its model's defaults applied.
    async fn overridden(&self, device: &Value, ns: &str, name: &str) -> Result<dmi::Device> {
        let model = self.stored_model(device, ns, name).await?;
        Ok(convert::device_from_json(&convert::apply_model_defaults(
            device, &model,
        )?)?)
    }

    /// The stored DeviceModel `device` refers to.
    async fn stored_model(&self, device: &Value, ns: &str, name: &str) -> Result<Value> {
        let Some(model_name) = convert::device_model_ref(device) else {
            return Err(Error::Validation(format!(
                "Device {ns}/{name} has no device model reference"
            )));
        };
        let key = format!("{ns}/{MODEL_TYPE}/{model_name}");
        let row = self
            .inner
            .store
            .read(move |conn| meta::get(conn, &key))
            .await?
            .filter(|row| row.kind == MODEL_TYPE);
        let Some(row) = row else {
            return Err(Error::Dmi(format!(
                "device model {ns}/{} not found for device {ns}/{name}",
                truncate(model_name, MAX_NAME_LEN)
            )));
        };
        serde_json::from_str(&row.value).map_err(|e| {
            Error::Dmi(format!(
                "stored device model {ns}/{model_name} is not JSON: {e}"
            ))
        })
    }
}

/// Checks a mapper's record; returns its socket path.
fn validate_mapper(info: &dmi::MapperInfo) -> Result<PathBuf> {
    let name = truncate(&info.name, MAX_NAME_LEN);
    if info.protocol.is_empty() {
        return Err(Error::Validation(format!(
            "fail to register mapper {name:?} because the protocol is nil"
        )));
    }
    if info.protocol.len() > MAX_NAME_LEN || info.protocol.chars().any(char::is_control) {
        return Err(Error::Validation(format!(
            "mapper {name:?}: protocol is longer than {MAX_NAME_LEN} bytes or has control characters"
        )));
    }
    if info.name.is_empty()
        || info.name.len() > MAX_NAME_LEN
        || info.name.contains('/')
        || info.name.chars().any(char::is_control)
    {
        return Err(Error::Validation(format!(
            "invalid mapper name {name:?}: 1 to {MAX_NAME_LEN} bytes, no '/' or control characters"
        )));
    }
    let address = std::str::from_utf8(&info.address)
        .ok()
        .filter(|a| !a.is_empty() && a.len() <= MAX_ADDRESS_LEN && !a.contains('\0'))
        .ok_or_else(|| {
            Error::Validation(format!(
                "mapper {name:?}: address must be the path of its unix socket"
            ))
        })?;
    Ok(PathBuf::from(kubeedge_proto::dmi::mapper_socket_path(
        address,
    )))
}

/// A device's `spec` with properties and methods sorted by name, for change detection.
fn normalized_spec(device: &Value) -> Value {
    let mut spec = device.get("spec").cloned().unwrap_or(Value::Null);
    for key in ["properties", "methods"] {
        if let Some(Value::Array(items)) = spec.get_mut(key) {
            items.sort_by(|a, b| {
                let name = |v: &Value| v.get("name").and_then(Value::as_str).map(str::to_owned);
                name(a).cmp(&name(b))
            });
        }
    }
    spec
}

fn rpc_error(rpc: &str, ns: &str, name: &str, protocol: &str, status: &tonic::Status) -> Error {
    Error::Dmi(format!(
        "{rpc} {ns}/{name} on the {protocol:?} mapper failed: {:?}: {}",
        status.code(),
        truncate(status.message(), 512)
    ))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps stay consistent even if a holder panicked (every update is one insert/remove).
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
