//! The device twin engine: KubeEdge's DeviceTwin module as a library.
//!
//! [`TwinEngine`] takes device events (MQTT publishes, or DMI reports turned into them) and
//! messages from the cloud, applies them to the devices it keeps in memory and in SQLite, and
//! returns [`Effects`]: what to publish on MQTT and which messages it queued for the cloud.
//! It does no I/O of its own besides the store, so it runs behind any MQTT broker or
//! transport. Every change and the report of it to the cloud commit in one SQLite
//! transaction, before anything is published, so nothing a requester was told can be lost.

use std::collections::BTreeMap;

use kubeedge_proto::device::{
    Device, DeviceStateInfo, DeviceStateResult, DeviceStateUpdate, MembershipDetail,
    MembershipDetailRequest, MembershipUpdate, MsgAttr,
};
use kubeedge_proto::twin::{
    BaseMessage, DeviceTwinDelta, DeviceTwinDocument, DeviceTwinUpdate, ErrorResult, MsgTwin,
    TwinMap, TwinVersion,
};
use kubeedge_proto::{
    Content, DeviceEvent, DeviceId, Group, Message, NodeName, Operation, Resource, Source, go_json,
    new_message_id, now_millis, rfc3339_utc,
};
use kubeedge_store::{Outbox, Store};
use serde::Serialize;

use crate::deal::{DealKind, deal, delta, visible};
use crate::device_db::{self, DeviceRecord};
use crate::ingress::Publication;
use crate::topic::{
    DeviceAction, MEMBERSHIP_GET_RESULT, MEMBERSHIP_UPDATED, TWIN_UPDATE_DELTA,
    TWIN_UPDATE_DOCUMENT, TWIN_UPDATE_RESULT, TwinTopic, UNPARSED_UPDATE_RESULT_TOPIC,
    device_topic, node_topic, parse_device_id,
};
use crate::{Error, Result};

/// KubeEdge's reason when an update names a device the node does not have.
pub const REASON_NO_DEVICE: &str = "Update rejected due to the device is not existed";

/// Settings of a [`TwinEngine`].
#[derive(Clone, Debug)]
pub struct TwinConfig {
    /// This node's name (the `$hw/events/node/<node>/...` topics, membership requests).
    pub node_name: NodeName,
    /// Also publish the error result of an unparsable `twin/update` on KubeEdge's topic
    /// `$hw/events/device//twin/update/result` (besides the device's own result topic, where a
    /// mapper actually listens).
    pub legacy_error_topic: bool,
}

impl TwinConfig {
    /// Defaults for `node_name`: the legacy error topic on.
    pub fn new(node_name: NodeName) -> Self {
        Self {
            node_name,
            legacy_error_topic: true,
        }
    }
}

/// What handling one event produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Effects {
    /// MQTT publications, in order.
    pub publish: Vec<Publication>,
    /// Messages for the cloud that were committed to the outbox together with the change (send
    /// them; they stay in the outbox until the cloud's reply names them).
    pub queued: Vec<Message>,
}

impl Effects {
    fn publish<T: Serialize + ?Sized>(&mut self, topic: String, payload: &T) {
        match go_json::to_vec(payload) {
            Ok(json) => self.publish.push(Publication::new(topic, json)),
            Err(e) => tracing::error!(error = %e, "cannot encode a twin payload"),
        }
    }

    fn error(&mut self, topic: String, event_id: &str, code: i32, reason: String) {
        let result = ErrorResult {
            event_id: event_id.to_owned(),
            timestamp: now_millis(),
            code,
            reason,
        };
        self.publish(topic, &result);
    }
}

/// The device twin engine; see the [module docs](self).
#[derive(Debug)]
pub struct TwinEngine {
    store: Store,
    outbox: Outbox,
    config: TwinConfig,
    devices: BTreeMap<DeviceId, DeviceRecord>,
}

impl TwinEngine {
    /// Loads the devices, attributes and twins from `store`; reports to the cloud go to `outbox`.
    pub async fn open(store: Store, outbox: Outbox, config: TwinConfig) -> Result<Self> {
        let devices = store.read(|db| Ok(device_db::load(db)?)).await?;
        Ok(Self {
            store,
            outbox,
            config,
            devices,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TwinConfig {
        &self.config
    }

    /// A device.
    pub fn device(&self, id: &DeviceId) -> Option<&DeviceRecord> {
        self.devices.get(id)
    }

    /// Every device, by id.
    pub fn devices(&self) -> impl Iterator<Item = &DeviceRecord> {
        self.devices.values()
    }

    /// The request KubeEdge sends after every connect: `twin/resource get membership/detail`
    /// with the node's name (the cloud does not answer it; sent once, never journaled).
    pub fn membership_detail_request(&self) -> Result<Message> {
        let request = MembershipDetailRequest::new(&self.config.node_name);
        Ok(Message::new(
            Source::Twin,
            Group::Resource,
            Operation::Get,
            "membership/detail",
            Content::json_string(&request)?,
        ))
    }

    /// Handles an MQTT publish (or a DMI report in its form). Topics that are not device or
    /// node topics are refused with [`Error::InvalidTopic`] (they are uploads, for the cloud).
    /// Bad payloads are answered on the matching result topic (code 400, 404), and so is a
    /// change that could not be stored (code 500: the store failed or the outbox is full; the
    /// change was rolled back).
    pub async fn handle_publication(&mut self, topic: &str, payload: &[u8]) -> Result<Effects> {
        match TwinTopic::classify(topic)? {
            Some(topic) => self.handle_topic(topic, payload).await,
            None => Err(Error::InvalidTopic(format!(
                "{:?} is not a device or node topic",
                topic.chars().take(80).collect::<String>()
            ))),
        }
    }

    /// [`TwinEngine::handle_publication`] for a topic the caller has already classified (an
    /// event bus classifies every topic once, to tell twin events from uploads).
    pub async fn handle_topic(&mut self, topic: TwinTopic, payload: &[u8]) -> Result<Effects> {
        match topic {
            TwinTopic::Device { id, action } => match action {
                DeviceAction::TwinUpdate => self.twin_update(&id, payload).await,
                DeviceAction::TwinGet => Ok(self.twin_get(&id, payload)),
                DeviceAction::TwinCloudUpdated => self.twin_sync(&id, payload).await,
                DeviceAction::StateUpdate => self.state_update(&id, payload).await,
            },
            TwinTopic::MembershipGet { node } => Ok(self.membership_get(&node, payload)),
        }
    }

    /// Handles a message from the cloud for the twin: membership updates, twin syncs
    /// (`device/<ns>/<name>/twin/cloud_updated`) and the cloud's confirmations of reports
    /// (which remove them from the outbox).
    pub async fn handle_cloud(&mut self, msg: &Message) -> Result<Effects> {
        let resource = msg.route.resource.as_str();
        if msg.route.operation == Some(Operation::Response) {
            // `devicecontroller/twin response twin "OK"`: the report named by parent_msg_id
            // arrived.
            if !msg.header.parent_id.is_empty() {
                self.outbox.confirm(&msg.header.parent_id).await?;
            }
            return Ok(Effects::default());
        }
        if resource == "membership" {
            let update: MembershipUpdate = msg.content.decode()?;
            return self.membership_update(update).await;
        }
        if let Ok(Resource::Device {
            id,
            event: DeviceEvent::TwinCloudUpdated,
        }) = Resource::parse(resource)
        {
            let id = parse_device_id(&id.to_string())?;
            return self.twin_sync(&id, &msg.content.data()).await;
        }
        Err(Error::InvalidMessage(format!(
            "the twin does not handle {}",
            msg.route
        )))
    }

    async fn twin_update(&mut self, id: &DeviceId, payload: &[u8]) -> Result<Effects> {
        let mut fx = Effects::default();
        let result_topic = device_topic(id, TWIN_UPDATE_RESULT);
        let update = match DeviceTwinUpdate::parse(payload) {
            Ok(update) => update,
            Err(e) => {
                // KubeEdge answers with an empty event id: the payload never got parsed.
                let reason = e.to_string();
                fx.error(result_topic, "", 400, reason.clone());
                if self.config.legacy_error_topic {
                    fx.error(UNPARSED_UPDATE_RESULT_TOPIC.to_owned(), "", 400, reason);
                }
                return Ok(fx);
            }
        };
        let Some(device) = self.devices.get(id) else {
            fx.error(
                result_topic,
                &update.event_id,
                404,
                REASON_NO_DEVICE.to_owned(),
            );
            return Ok(fx);
        };
        let now = now_millis();
        let dealt = match deal(&device.twins, &update.twin, DealKind::Local, now) {
            Ok(dealt) => dealt,
            Err(e) => {
                fx.error(result_topic, &update.event_id, 400, e.to_string());
                return Ok(fx);
            }
        };
        let report = self.edge_updated(id, &dealt.sync)?;
        if let Err(e) = self
            .commit_twins(id, dealt.twins, &dealt.changed, &report)
            .await
        {
            tracing::error!(device = %id, error = %e, "twin update not stored");
            fx.error(result_topic, &update.event_id, 500, e.to_string());
            return Ok(fx);
        }
        let base = BaseMessage {
            event_id: update.event_id,
            timestamp: now,
        };
        fx.publish(
            result_topic,
            &DeviceTwinUpdate {
                event_id: base.event_id.clone(),
                timestamp: base.timestamp,
                twin: dealt.result,
            },
        );
        self.after_change(id, &mut fx, base, dealt.document, report);
        Ok(fx)
    }

    async fn twin_sync(&mut self, id: &DeviceId, payload: &[u8]) -> Result<Effects> {
        let update = match DeviceTwinUpdate::parse(payload) {
            Ok(update) => update,
            Err(e) => {
                tracing::warn!(device = %id, error = %e, "refusing a twin sync from the cloud");
                return Ok(Effects::default());
            }
        };
        let Some(device) = self.devices.get(id) else {
            tracing::warn!(device = %id, "twin sync for a device this node does not have");
            return Ok(Effects::default());
        };
        let now = now_millis();
        let dealt = deal(&device.twins, &update.twin, DealKind::Sync, now)?;
        // Refused twins go back to the cloud as the edge has them.
        let report = self.edge_updated(id, &dealt.sync)?;
        self.commit_twins(id, dealt.twins, &dealt.changed, &report)
            .await?;
        let mut fx = Effects::default();
        let base = BaseMessage {
            event_id: update.event_id,
            timestamp: now,
        };
        self.after_change(id, &mut fx, base, dealt.document, report);
        Ok(fx)
    }

    /// The `twin/edge_updated` report of `sync`, if there is anything to report.
    fn edge_updated(&self, id: &DeviceId, sync: &TwinMap) -> Result<Option<Message>> {
        if sync.is_empty() {
            return Ok(None);
        }
        let mut msg = Message::new(
            Source::Twin,
            Group::Resource,
            Operation::Update,
            format!("device/{id}/twin/edge_updated"),
            Content::null(),
        );
        msg.content = Content::json(&DeviceTwinUpdate {
            event_id: new_message_id(),
            timestamp: msg.header.timestamp,
            twin: sync.clone(),
        })?;
        tracing::debug!(device = %id, content = %String::from_utf8_lossy(msg.content.as_json()), "twin report for the cloud");
        Ok(Some(msg))
    }

    /// Persists the changed twins and queues the report in one transaction, then adopts the new
    /// twins in memory.
    async fn commit_twins(
        &mut self,
        id: &DeviceId,
        twins: BTreeMap<String, MsgTwin>,
        changed: &[String],
        report: &Option<Message>,
    ) -> Result<()> {
        let rows: Vec<(String, MsgTwin)> = changed
            .iter()
            .filter_map(|k| twins.get(k).map(|t| (k.clone(), t.clone())))
            .collect();
        let staged = report
            .as_ref()
            .map(|msg| self.outbox.stage(msg, None))
            .transpose()?;
        if rows.is_empty() && staged.is_none() {
            return Ok(());
        }
        let device = id.clone();
        self.store
            .write(move |db| {
                device_db::save_twins(db, &device, rows.iter().map(|(k, t)| (k.as_str(), t)))?;
                if let Some(staged) = staged {
                    staged.apply(db)?;
                }
                Ok(())
            })
            .await?;
        if let Some(device) = self.devices.get_mut(id) {
            device.twins = twins;
        }
        Ok(())
    }

    /// Document, delta and the cloud report after a committed twin change.
    fn after_change(
        &self,
        id: &DeviceId,
        fx: &mut Effects,
        base: BaseMessage,
        document: BTreeMap<String, kubeedge_proto::twin::TwinDoc>,
        report: Option<Message>,
    ) {
        if !document.is_empty() {
            fx.publish(
                device_topic(id, TWIN_UPDATE_DOCUMENT),
                &DeviceTwinDocument {
                    event_id: base.event_id,
                    timestamp: base.timestamp,
                    twin: document,
                },
            );
        }
        if let Some(device) = self.devices.get(id)
            && let Some((twin, delta)) = delta(&device.twins)
        {
            let fresh = BaseMessage::now();
            fx.publish(
                device_topic(id, TWIN_UPDATE_DELTA),
                &DeviceTwinDelta {
                    event_id: fresh.event_id,
                    timestamp: fresh.timestamp,
                    twin,
                    delta,
                },
            );
        }
        if let Some(msg) = report {
            fx.queued.push(msg);
        }
    }

    fn twin_get(&self, id: &DeviceId, payload: &[u8]) -> Effects {
        let mut fx = Effects::default();
        let topic = device_topic(id, "twin/get/result");
        let request: BaseMessage = match parse_base(payload) {
            Ok(request) => request,
            Err(reason) => {
                fx.error(topic, "", 400, reason);
                return fx;
            }
        };
        match self.devices.get(id) {
            None => fx.error(
                topic,
                &request.event_id,
                404,
                format!("Device {id} not found while getting twin"),
            ),
            Some(device) => fx.publish(
                topic,
                &DeviceTwinUpdate {
                    event_id: request.event_id,
                    timestamp: now_millis(),
                    twin: visible(&device.twins),
                },
            ),
        }
        fx
    }

    async fn state_update(&mut self, id: &DeviceId, payload: &[u8]) -> Result<Effects> {
        let mut fx = Effects::default();
        let topic = device_topic(id, "state/update/result");
        let update = match DeviceStateUpdate::parse(payload) {
            Ok(update) => update,
            Err(e) => {
                fx.error(
                    topic,
                    "",
                    400,
                    format!("Unmarshal state update failed: {e}"),
                );
                return Ok(fx);
            }
        };
        let state = match update.state() {
            Ok(state) => state,
            Err(e) => {
                fx.error(topic, &update.event_id, 400, e.to_string());
                return Ok(fx);
            }
        };
        if !self.devices.contains_key(id) {
            fx.error(
                topic,
                &update.event_id,
                404,
                format!("Device {id} not found while updating state"),
            );
            return Ok(fx);
        }
        let last_online = if state.counts_as_online() {
            rfc3339_utc(now_millis(), false)
        } else {
            String::new()
        };
        let fresh = BaseMessage::now();
        let result = DeviceStateResult {
            event_id: fresh.event_id,
            timestamp: fresh.timestamp,
            device: DeviceStateInfo {
                name: id.name.clone(),
                state: state.as_str().to_owned(),
                last_online_time: last_online.clone(),
            },
        };
        let mut report = Message::new(
            Source::Twin,
            Group::Resource,
            Operation::Update,
            format!("device/{id}/state/update"),
            Content::json_string(&result)?,
        );
        report.header.timestamp = result.timestamp;
        // Only the latest state matters: a newer report replaces an unsent older one.
        let staged = self.outbox.stage(&report, Some(format!("state/{id}")))?;
        let (device, state_text, online) = (id.clone(), state.as_str(), last_online.clone());
        if let Err(e) = self
            .store
            .write(move |db| {
                device_db::save_state(db, &device, state_text, &online)?;
                staged.apply(db)?;
                Ok(())
            })
            .await
        {
            tracing::error!(device = %id, error = %e, "state update not stored");
            fx.error(topic, &update.event_id, 500, e.to_string());
            return Ok(fx);
        }
        if let Some(device) = self.devices.get_mut(id) {
            device.state = state.as_str().to_owned();
            device.last_online = last_online;
        }
        fx.publish(topic, &result);
        fx.queued.push(report);
        Ok(fx)
    }

    fn membership_get(&self, node: &str, payload: &[u8]) -> Effects {
        let mut fx = Effects::default();
        if self.config.node_name != node {
            tracing::debug!(node, "membership/get for another node ignored");
            return fx;
        }
        let topic = node_topic(node, MEMBERSHIP_GET_RESULT);
        let request = match parse_base(payload) {
            Ok(request) => request,
            Err(reason) => {
                fx.error(topic, "", 400, reason);
                return fx;
            }
        };
        let devices = self
            .devices
            .values()
            .map(|d| Device {
                id: d.id.to_string(),
                name: d.name.clone(),
                description: d.description.clone(),
                state: d.state.clone(),
                last_online: d.last_online.clone(),
                attributes: d
                    .attributes
                    .iter()
                    .map(|(k, v)| (k.clone(), Some(v.clone())))
                    .collect(),
                twin: BTreeMap::new(),
            })
            .collect();
        fx.publish(
            topic,
            &MembershipDetail {
                event_id: request.event_id,
                timestamp: now_millis(),
                devices: Some(devices),
            },
        );
        fx
    }

    async fn membership_update(&mut self, update: MembershipUpdate) -> Result<Effects> {
        let now = now_millis();
        let mut added = Vec::new();
        let mut upserts = Vec::new();
        for device in update.added_devices.unwrap_or_default() {
            let Ok(id) = parse_device_id(&device.id) else {
                tracing::warn!(id = %device.id.chars().take(80).collect::<String>(),
                    "membership: refusing a device id that is not a Kubernetes <namespace>/<name>");
                continue;
            };
            let existing = self.devices.get(&id);
            let twins = existing.map(|d| d.twins.clone()).unwrap_or_default();
            // Twins carried by the membership are the cloud's: synced with its versions.
            let request: TwinMap = device
                .twin
                .iter()
                .map(|(k, t)| {
                    let t = t.clone().map(|mut t| {
                        t.expected_version.get_or_insert(TwinVersion::default());
                        t.actual_version.get_or_insert(TwinVersion::default());
                        t
                    });
                    (k.clone(), t)
                })
                .collect();
            let dealt = deal(&twins, &request, DealKind::Sync, now)?;
            let record = DeviceRecord {
                id: id.clone(),
                name: device.name.clone(),
                description: device.description.clone(),
                state: existing.map(|d| d.state.clone()).unwrap_or_default(),
                last_online: existing.map(|d| d.last_online.clone()).unwrap_or_default(),
                attributes: device
                    .attributes
                    .iter()
                    .filter_map(|(k, a)| a.clone().map(|a| (k.clone(), a)))
                    .collect::<BTreeMap<String, MsgAttr>>(),
                twins: dealt.twins,
            };
            upserts.push((record, dealt.changed));
            added.push(device);
        }
        let mut removed = Vec::new();
        let mut deletes = Vec::new();
        for device in update.removed_devices.unwrap_or_default() {
            match parse_device_id(&device.id) {
                Ok(id) => {
                    deletes.push(id);
                    removed.push(device);
                }
                Err(_) => tracing::warn!("membership: refusing to remove an invalid device id"),
            }
        }
        if upserts.is_empty() && deletes.is_empty() {
            return Ok(Effects::default());
        }
        // The rows go to the writer thread and come back to be adopted once committed.
        let (upserts, deletes) = self
            .store
            .write(move |db| {
                for (record, changed) in &upserts {
                    device_db::upsert_device(db, record)?;
                    device_db::save_twins(
                        db,
                        &record.id,
                        changed
                            .iter()
                            .filter_map(|k| record.twins.get(k).map(|t| (k.as_str(), t))),
                    )?;
                }
                for id in &deletes {
                    device_db::delete_device(db, id)?;
                }
                Ok((upserts, deletes))
            })
            .await?;
        for (record, _) in upserts {
            self.devices.insert(record.id.clone(), record);
        }
        for id in &deletes {
            self.devices.remove(id);
        }
        let mut fx = Effects::default();
        let fresh = BaseMessage::now();
        fx.publish(
            node_topic(&self.config.node_name, MEMBERSHIP_UPDATED),
            &MembershipUpdate {
                event_id: fresh.event_id,
                timestamp: fresh.timestamp,
                added_devices: (!added.is_empty()).then_some(added),
                removed_devices: (!removed.is_empty()).then_some(removed),
            },
        );
        Ok(fx)
    }
}

/// Parses a `BaseMessage` request; the error is the reason for a 400 result.
fn parse_base(payload: &[u8]) -> std::result::Result<BaseMessage, String> {
    if payload.len() > kubeedge_proto::twin::MAX_PAYLOAD_LEN {
        return Err("request larger than 1 MiB".to_owned());
    }
    serde_json::from_slice(payload).map_err(|e| format!("Unmarshal request failed: {e}"))
}
