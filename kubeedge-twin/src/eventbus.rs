//! The EventBus: KubeEdge's routing between MQTT, the device twin and the cloud.
//!
//! - Device and node topics (`$hw/events/device/...`, `$hw/events/node/...`) go to the
//!   [`TwinEngine`]; its publications go back out on MQTT and its reports to the cloud.
//! - Every other topic the bus receives (`$hw/events/upload/#`, `SYS/dis/upload_records`,
//!   `+/user/#` and the topics the cloud subscribed) is an upload:
//!   `bus/user upload <topic>` with the payload as a string.
//! - From the cloud (group `user`): `subscribe`/`unsubscribe` a topic (kept in `sub_topics`,
//!   so it survives restarts), `publish` content on a topic, `message` (publish
//!   `content.message` on `content.message.topic`), `get_result` of `auth_info`. Membership,
//!   twin syncs and report confirmations go to the engine.
//!
//! The bus is written against two small traits, [`MqttOut`] and [`CloudOut`], so it runs with
//! this crate's MQTT client or a vendor's own broker, and with `kubeedge-hub` or another link.

use std::future::Future;

use bytes::Bytes;
use kubeedge_proto::{Content, Group, Message, Operation, Resource, ResourceType, Source};
use kubeedge_store::Store;
use rusqlite::params;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::dmi::MapperRegistry;
use crate::engine::{Effects, TwinEngine};
use crate::ingress::{IngressReceiver, Publication};
use crate::mqtt::{MqttHandle, validate_filter, validate_topic};
use crate::topic::{NODE_PREFIX, TwinTopic};
use crate::{Error, Result};

/// Where the bus publishes and (un)subscribes.
pub trait MqttOut: Send + Sync + 'static {
    /// Publishes `payload` on `topic` (QoS 1, not retained).
    fn publish(&self, topic: &str, payload: Bytes) -> impl Future<Output = Result<()>> + Send;
    /// Adds a subscription (kept across reconnects).
    fn subscribe(&self, filter: &str) -> impl Future<Output = Result<()>> + Send;
    /// Removes a subscription.
    fn unsubscribe(&self, filter: &str) -> impl Future<Output = Result<()>> + Send;
}

/// This crate's MQTT client.
impl MqttOut for MqttHandle {
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<()> {
        MqttHandle::publish(self, topic, payload).await
    }

    async fn subscribe(&self, filter: &str) -> Result<()> {
        MqttHandle::subscribe(self, filter).await
    }

    async fn unsubscribe(&self, filter: &str) -> Result<()> {
        MqttHandle::unsubscribe(self, filter).await
    }
}

/// The bus's link to the cloud.
pub trait CloudOut: Send + Sync + 'static {
    /// The twin committed these messages to the outbox: send them now. They stay in the outbox
    /// until the cloud's reply names them, so a link that replays the outbox after a reconnect
    /// (like `kubeedge-hub`'s `ReliableEdge`) delivers them even if this send is lost.
    fn queued(&self, messages: Vec<Message>) -> impl Future<Output = ()> + Send;
    /// Sends a message once, without journaling (uploads, the membership detail request).
    fn send(&self, message: Message) -> impl Future<Output = Result<()>> + Send;
}

/// What the cloud side feeds the bus.
#[derive(Clone, Debug, PartialEq)]
pub enum CloudInput {
    /// A message for the twin or the event bus (as the MetaManager forwards it).
    Message(Box<Message>),
    /// The link to the cloud came up: the twin asks for its membership detail, as KubeEdge does.
    Connected,
}

/// The EventBus; see the [module docs](self).
pub struct EventBus<M, C> {
    engine: TwinEngine,
    store: Store,
    mqtt: M,
    cloud: C,
    mappers: Option<MapperRegistry>,
}

impl<M: MqttOut, C: CloudOut> EventBus<M, C> {
    /// A bus over `engine`, publishing with `mqtt` and sending with `cloud`.
    pub fn new(engine: TwinEngine, store: Store, mqtt: M, cloud: C) -> Self {
        Self {
            engine,
            store,
            mqtt,
            cloud,
            mappers: None,
        }
    }

    /// Hands Device and DeviceModel objects from the cloud to the mappers registered with the
    /// DMI server (as KubeEdge's DMI worker does).
    pub fn with_mappers(mut self, mappers: MapperRegistry) -> Self {
        self.mappers = Some(mappers);
        self
    }

    /// The engine.
    pub fn engine(&self) -> &TwinEngine {
        &self.engine
    }

    /// Runs until `shutdown` is cancelled or both inputs end: device events from `ingress` and
    /// cloud input from `cloud_rx`. A failing event is logged and dropped; the bus goes on.
    pub async fn run(
        mut self,
        mut ingress: IngressReceiver,
        mut cloud_rx: mpsc::Receiver<CloudInput>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let (mut ingress_open, mut cloud_open) = (true, true);
        while ingress_open || cloud_open {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                input = cloud_rx.recv(), if cloud_open => match input {
                    Some(input) => self.handle_cloud(input).await,
                    None => cloud_open = false,
                },
                event = ingress.recv(), if ingress_open => match event {
                    Some(event) => self.handle_device(event).await,
                    None => ingress_open = false,
                },
            }
        }
        Ok(())
    }

    /// Handles one MQTT (or DMI) event.
    pub async fn handle_device(&mut self, event: Publication) {
        match TwinTopic::classify(&event.topic) {
            Ok(Some(topic)) => match self.engine.handle_topic(topic, &event.payload).await {
                Ok(fx) => self.apply(fx).await,
                Err(e) => tracing::error!(topic = %event.topic, error = %e, "twin event failed"),
            },
            Ok(None) => {
                let upload = upload_message(&event);
                if let Err(e) = self.cloud.send(upload).await {
                    tracing::debug!(topic = %event.topic, error = %e, "upload not sent");
                }
            }
            Err(e) => tracing::debug!(error = %e, "ignoring a malformed device topic"),
        }
    }

    /// Handles one input from the cloud side.
    pub async fn handle_cloud(&mut self, input: CloudInput) {
        let msg = match input {
            CloudInput::Connected => {
                match self.engine.membership_detail_request() {
                    Ok(request) => {
                        if let Err(e) = self.cloud.send(request).await {
                            tracing::debug!(error = %e, "membership detail request not sent");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "cannot build membership detail"),
                }
                return;
            }
            CloudInput::Message(msg) => msg,
        };
        let msg = *msg;
        let result = if is_device_object(&msg) {
            match &self.mappers {
                Some(mappers) => mappers.apply_meta_message(&msg).await,
                None => Ok(()),
            }
        } else if msg.route.group == Some(Group::User) {
            self.handle_user(&msg).await
        } else {
            match self.engine.handle_cloud(&msg).await {
                Ok(fx) => {
                    self.apply(fx).await;
                    Ok(())
                }
                Err(e) => Err(e),
            }
        };
        if let Err(e) = result {
            tracing::warn!(route = %msg.route, error = %e, "cloud message for the event bus failed");
        }
    }

    async fn handle_user(&mut self, msg: &Message) -> Result<()> {
        let topic = msg.route.resource.as_str();
        match &msg.route.operation {
            Some(Operation::Subscribe) => {
                validate_filter(topic)?;
                self.mqtt.subscribe(topic).await?;
                let t = topic.to_owned();
                self.store
                    .write(move |db| {
                        db.execute("INSERT OR IGNORE INTO sub_topics (topic) VALUES (?1)", [t])?;
                        Ok(())
                    })
                    .await?;
                Ok(())
            }
            Some(Operation::Unsubscribe) => {
                self.mqtt.unsubscribe(topic).await?;
                let t = topic.to_owned();
                self.store
                    .write(move |db| {
                        db.execute("DELETE FROM sub_topics WHERE topic = ?1", [t])?;
                        Ok(())
                    })
                    .await?;
                Ok(())
            }
            Some(Operation::Publish) => {
                validate_topic(topic)?;
                let payload = Bytes::from(msg.content.data().into_owned());
                self.mqtt.publish(topic, payload).await
            }
            Some(Operation::Message) => {
                let body: serde_json::Value = msg.content.decode()?;
                let inner = &body["message"];
                let topic = inner["topic"].as_str().ok_or_else(|| {
                    Error::InvalidMessage("message without message.topic".to_owned())
                })?;
                validate_topic(topic)?;
                let payload = kubeedge_proto::go_json::to_vec(inner)?;
                self.mqtt.publish(topic, payload.into()).await
            }
            Some(Operation::GetResult) if topic == "auth_info" => {
                let topic = format!(
                    "{NODE_PREFIX}{}/authInfo/get/result",
                    self.engine.config().node_name
                );
                let payload = Bytes::from(msg.content.data().into_owned());
                self.mqtt.publish(&topic, payload).await
            }
            _ => Err(Error::InvalidMessage(format!(
                "the event bus does not handle {}",
                msg.route
            ))),
        }
    }

    async fn apply(&self, fx: Effects) {
        for p in fx.publish {
            if let Err(e) = self.mqtt.publish(&p.topic, p.payload).await {
                tracing::warn!(topic = %p.topic, error = %e, "publish failed");
            }
        }
        if !fx.queued.is_empty() {
            self.cloud.queued(fx.queued).await;
        }
    }
}

/// Whether `msg` carries a Device or DeviceModel object (`<ns>/device/<name>`,
/// `<ns>/devicemodel/<name>`).
fn is_device_object(msg: &Message) -> bool {
    matches!(
        msg.resource(),
        Ok(Resource::Object(obj))
            if matches!(obj.resource_type, ResourceType::Device | ResourceType::DeviceModel)
    )
}

/// The subscriptions the cloud added, kept in `sub_topics`.
pub async fn stored_subscriptions(store: &Store) -> Result<Vec<String>> {
    Ok(store
        .read(|db| {
            let mut stmt = db.prepare("SELECT topic FROM sub_topics ORDER BY topic")?;
            let topics = stmt
                .query_map(params![], |row| row.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(topics)
        })
        .await?)
}

/// `bus/user upload <topic>` with the payload as a string (invalid UTF-8 replaced, as Go's
/// JSON encoder does).
pub fn upload_message(event: &Publication) -> Message {
    Message::new(
        Source::Bus,
        Group::User,
        Operation::Upload,
        event.topic.clone(),
        Content::string(&String::from_utf8_lossy(&event.payload)),
    )
}
