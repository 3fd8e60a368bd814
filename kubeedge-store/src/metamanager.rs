//! MetaManager: the edge's rules for what comes from the cloud and what local components ask.
//!
//! From the cloud, every `insert`, `update`, `patch` and `delete` of an object is written to the
//! store and committed *before* its ACK is built, so an ACK always means "on disk" (KubeEdge
//! #3620 sent ACKs after failed inserts). Applying is idempotent: a `msg_id` already applied, or
//! an object at the same or an older resourceVersion than stored, changes nothing and is still
//! acknowledged, because the cloud re-sends until it hears an ACK.
//!
//! From local components (edged, the device twin), queries are answered from the store when the
//! node is offline or the type is one the store is authoritative for, and passed to the cloud
//! otherwise; writes meant for the cloud (status patches, node registration, leases) go through
//! the durable [`Outbox`](crate::Outbox) first.

use kubeedge_proto::{
    Content, Group, Message, NodeName, Operation, Resource, ResourceType, Source,
};

use rusqlite::OptionalExtension;
use tokio::sync::broadcast;

use crate::meta::{self, ObjectVersion, Upserted};
use crate::outbox::{FullPolicy, Outbox};
use crate::tokens::{IssuedToken, TOKEN_TYPE, TokenSpec};
use crate::{Error, Result, Store};

/// Replies from the cloud kept for [`MetaManager::replies`] subscribers that fall behind.
const REPLIES_BUFFER: usize = 256;

/// Settings for a [`MetaManager`].
#[derive(Clone, Debug)]
pub struct MetaManagerConfig {
    /// This node's name.
    pub node_name: NodeName,
    /// Resource types whose queries go to the cloud while connected (KubeEdge's list:
    /// configmap, secret, persistentvolume, persistentvolumeclaim, volumeattachment,
    /// serviceaccounttoken, lease, certificatesigningrequest). Others are answered locally.
    pub remote_query_types: Vec<ResourceType>,
    /// How many applied `msg_id`s are remembered for duplicate detection.
    pub seen_capacity: u64,
    /// How many edge-to-cloud messages the outbox holds.
    pub outbox_capacity: usize,
    /// What the outbox does when full.
    pub outbox_policy: FullPolicy,
}

impl MetaManagerConfig {
    /// KubeEdge's defaults for `node_name`; an outbox of 10,000 messages that refuses more.
    pub fn new(node_name: NodeName) -> Self {
        Self {
            node_name,
            remote_query_types: vec![
                ResourceType::ConfigMap,
                ResourceType::Secret,
                ResourceType::PersistentVolume,
                ResourceType::PersistentVolumeClaim,
                ResourceType::VolumeAttachment,
                ResourceType::ServiceAccountToken,
                ResourceType::Lease,
                ResourceType::CertificateSigningRequest,
            ],
            seen_capacity: 10_000,
            outbox_capacity: 10_000,
            outbox_policy: FullPolicy::Reject,
        }
    }
}

/// The local component a message is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalTarget {
    /// The pod runtime (pods, configmaps, secrets, query answers).
    Edged,
    /// The device twin (devices, device models, membership, twin confirms).
    Twin,
}

/// A message to deliver locally.
#[derive(Clone, Debug, PartialEq)]
pub struct Forward {
    /// Who gets it.
    pub target: LocalTarget,
    /// The message.
    pub message: Message,
}

/// What the MetaManager made of a message from the cloud.
#[derive(Clone, Debug, PartialEq)]
pub struct CloudOutcome {
    /// The acknowledgement to send to the cloud: built only after the write committed.
    pub ack: Option<Message>,
    /// The message to deliver locally, if any.
    pub forward: Option<Forward>,
    /// Whether the store changed (false for duplicates and stale versions).
    pub changed: bool,
}

/// What the MetaManager made of a message from a local component.
#[derive(Clone, Debug, PartialEq)]
pub enum EdgeOutcome {
    /// Answered from the store: deliver this response to the requester.
    Answer(Message),
    /// Send this to the cloud. `queued` says whether it is in the outbox (then it is re-sent
    /// after a reconnect or restart until the cloud answers it).
    ToCloud {
        /// The message to send.
        message: Message,
        /// Whether the outbox holds it.
        queued: bool,
    },
}

/// KubeEdge's MetaManager over a [`Store`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MetaManager {
    store: Store,
    outbox: Outbox,
    config: std::sync::Arc<MetaManagerConfig>,
    replies: broadcast::Sender<Message>,
}

impl MetaManager {
    /// A MetaManager over `store`.
    pub fn new(store: Store, config: MetaManagerConfig) -> Self {
        let outbox = Outbox::new(store.clone(), config.outbox_capacity, config.outbox_policy);
        Self {
            store,
            outbox,
            config: std::sync::Arc::new(config),
            replies: broadcast::channel(REPLIES_BUFFER).0,
        }
    }

    /// Every reply (`response`) from the cloud, once [`from_cloud`](Self::from_cloud) has
    /// stored what it carries: how a local component that sent a request through the outbox
    /// learns its outcome (a lease's new resourceVersion, a refusal). A subscriber that falls
    /// more than 256 replies behind misses the oldest ones (`RecvError::Lagged`).
    pub fn replies(&self) -> broadcast::Receiver<Message> {
        self.replies.subscribe()
    }

    /// Asks the cloud for an object the store lacks (a `query` message: a ConfigMap or Secret
    /// a pod needs, a service-account token, the node's Lease). The query goes through the
    /// durable outbox, so it is sent as soon as the link is up and again after every reconnect
    /// until the cloud answers; the answer is stored by [`from_cloud`](Self::from_cloud) like
    /// any object. A query for the same thing still waiting is replaced, not repeated.
    pub async fn query_cloud(&self, msg: Message) -> Result<()> {
        if msg.route.operation != Some(Operation::Query) {
            return Err(Error::InvalidMessage(format!("not a query: {}", msg.route)));
        }
        let coalesce = coalesce_key(&msg);
        self.outbox.push(&msg, coalesce).await?;
        Ok(())
    }

    /// The durable outbox of edge-to-cloud messages (replay [`Outbox::pending`] after a
    /// reconnect).
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Handles a message from the cloud (edge-form resource, as on the link).
    pub async fn from_cloud(&self, msg: Message) -> Result<CloudOutcome> {
        // Device membership and twin confirms belong to the device twin; nothing to persist.
        if msg.route.group == Some(Group::Twin) {
            let forward = Forward {
                target: LocalTarget::Twin,
                message: msg,
            };
            return Ok(CloudOutcome {
                ack: None,
                forward: Some(forward),
                changed: false,
            });
        }
        match msg.route.operation {
            Some(Operation::Insert | Operation::Update | Operation::Patch | Operation::Delete) => {
                self.apply_object(msg).await
            }
            Some(Operation::Response) => self.apply_reply(msg).await,
            _ => Err(Error::InvalidMessage(format!(
                "no MetaManager rule for {}",
                msg.route
            ))),
        }
    }

    async fn apply_object(&self, msg: Message) -> Result<CloudOutcome> {
        let Resource::Object(obj) = msg.resource()? else {
            return Err(Error::InvalidMessage(format!(
                "not an object resource: {}",
                msg.route
            )));
        };
        if obj.name.is_none() {
            return Err(Error::InvalidMessage(format!(
                "no object name in {}",
                msg.route
            )));
        }
        let content = msg.content.as_json();
        self.store.check_len("object", content.len())?;
        let version = ObjectVersion::of(content);
        let value = String::from_utf8(content.to_vec())
            .map_err(|e| Error::InvalidMessage(e.to_string()))?;
        let key = msg.route.resource.clone();
        let kind = obj.resource_type.as_str().to_owned();
        let is_delete = msg.route.operation == Some(Operation::Delete);
        let msg_id = msg.header.id.clone();
        let keep = self.config.seen_capacity;
        let podpatch_key = (obj.resource_type == ResourceType::Pod).then(|| {
            format!(
                "{}/podpatch/{}",
                obj.namespace,
                obj.name.as_deref().unwrap_or("")
            )
        });

        let changed = self
            .store
            .write(move |db| {
                if !msg_id.is_empty() && !meta::mark_seen(db, &msg_id, keep)? {
                    return Ok(false);
                }
                if is_delete {
                    let uid = version.as_ref().map(|v| v.uid.as_str());
                    // The incarnation the cloud deleted stays deleted, even when its delete
                    // overtook an update or a reply that still carries it.
                    if let Some(uid) = uid {
                        meta::record_deleted(db, &key, uid)?;
                    }
                    // Pods are deleted only if the stored one is the same incarnation.
                    let uid = if podpatch_key.is_some() { uid } else { None };
                    let deleted = meta::delete(db, &key, uid)?;
                    if deleted && let Some(patch) = &podpatch_key {
                        meta::delete(db, patch, None)?;
                    }
                    Ok(deleted)
                } else {
                    let upserted = meta::upsert(db, &key, &kind, &value, version.as_ref())?;
                    Ok(upserted == Upserted::Stored)
                }
            })
            .await?;

        // Committed: only now may the ACK exist.
        let ack = Some(ack_for(&msg));
        let forward = if changed { forward_for(msg) } else { None };
        Ok(CloudOutcome {
            ack,
            forward,
            changed,
        })
    }

    async fn apply_reply(&self, msg: Message) -> Result<CloudOutcome> {
        if msg.header.parent_id.is_empty() {
            return Err(Error::InvalidMessage(format!(
                "a response without parent: {}",
                msg.route
            )));
        }
        let parent = msg.header.parent_id.clone();
        let key = reply_key(&msg);
        let object = reply_object(&msg.content);
        if let Some(object) = &object {
            self.store.check_len("object", object.len())?;
        }
        let token_answer = is_token_reply(&msg).then(|| msg.content.data().into_owned());
        if let Some(answer) = &token_answer {
            self.store.check_len("token", answer.len())?;
        }
        let keep = self.config.seen_capacity;
        let msg_id = msg.header.id.clone();
        // The request, if the transport confirmed it already (see the DELETE below otherwise).
        let confirmed = self.outbox.answered(&parent);
        // What the reply answers (its operation), whether the store changed, and for a token
        // answer that could not be stored: (request known, token readable).
        let (answered, changed, unusable) = self
            .store
            .write(move |db| {
                let removed: Option<String> = db
                    .query_row(
                        "DELETE FROM kubeedge_rs_outbox WHERE msg_id = ?1 RETURNING message",
                        [&parent],
                        |row| row.get(0),
                    )
                    .optional()?
                    .or(confirmed);
                let request = removed
                    .as_deref()
                    .and_then(|json| Message::from_json(json.as_bytes()).ok());
                let answered = request.as_ref().and_then(|m| m.route.operation.clone());
                if !msg_id.is_empty() && !meta::mark_seen(db, &msg_id, keep)? {
                    return Ok((answered, false, None));
                }
                // A token is stored under the key of what was asked for (the answer's audience
                // is the API server's default when the request named none).
                if let Some(answer) = token_answer {
                    let spec = request.as_ref().and_then(TokenSpec::of_message);
                    let issued = IssuedToken::parse(&answer);
                    return match (spec, issued, String::from_utf8(answer)) {
                        (Some(spec), Some(_), Ok(answer)) => {
                            meta::upsert(db, &spec.key(), TOKEN_TYPE, &answer, None)?;
                            Ok((answered, true, None))
                        }
                        (spec, issued, _) => {
                            Ok((answered, false, Some((spec.is_some(), issued.is_some()))))
                        }
                    };
                }
                // The answer to a delete carries the deleted object: never store it back.
                let answers_delete = answered == Some(Operation::Delete);
                let mut changed = false;
                if let (Some((key, kind)), Some(object), false) = (key, object, answers_delete) {
                    let version = ObjectVersion::of(object.as_bytes());
                    changed = meta::upsert(db, &key, &kind, &object, version.as_ref())?
                        == Upserted::Stored;
                }
                Ok((answered, changed, None))
            })
            .await?;
        if let Some((request_known, token)) = unusable {
            tracing::warn!(
                request_known,
                token,
                error = ?kubeedge_proto::ObjectResp::from_reply(&msg.content).error_message(),
                "a service-account token answer that cannot be used"
            );
        }
        // Replies to status patches go straight to edged unacknowledged; replies to remote
        // calls (queries, inserts) are acknowledged once stored, as KubeEdge does.
        let was_patch = answered == Some(Operation::Patch);
        let ack = (!was_patch).then(|| msg.ack());
        // Nobody listening is fine: the reply is stored.
        let _ = self.replies.send(msg.clone());
        let forward = Some(Forward {
            target: LocalTarget::Edged,
            message: msg,
        });
        Ok(CloudOutcome {
            ack,
            forward,
            changed,
        })
    }

    /// What the store holds of the objects the cloud sent: key, uid and resourceVersion of
    /// each, for the [`Inventory`](kubeedge_proto::inventory::Inventory) an edge sends after
    /// every connect so that the cloud sends only the difference.
    pub async fn inventory(&self) -> Result<kubeedge_proto::inventory::Inventory> {
        let objects = self
            .store
            .read(|db| {
                let mut stmt = db.prepare_cached(
                    "SELECT key, uid, resource_version FROM kubeedge_rs_meta_version ORDER BY key",
                )?;
                let rows = stmt.query_map([], |row| {
                    Ok(kubeedge_proto::inventory::InventoryEntry {
                        key: row.get(0)?,
                        uid: row.get(1)?,
                        resource_version: u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
                    })
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await?;
        Ok(kubeedge_proto::inventory::Inventory { objects })
    }

    /// Handles a message from a local component. `connected` says whether the cloud link is
    /// up right now.
    pub async fn from_edge(&self, msg: Message, connected: bool) -> Result<EdgeOutcome> {
        match msg.route.operation {
            Some(Operation::Query) => self.query(msg, connected).await,
            Some(Operation::Insert | Operation::Update | Operation::Patch | Operation::Delete) => {
                let coalesce = coalesce_key(&msg);
                if msg.route.operation == Some(Operation::Patch) {
                    self.persist_patch(&msg).await?;
                }
                self.outbox.push(&msg, coalesce).await?;
                Ok(EdgeOutcome::ToCloud {
                    message: msg,
                    queued: true,
                })
            }
            _ => Err(Error::InvalidMessage(format!(
                "no MetaManager rule for {}",
                msg.route
            ))),
        }
    }

    async fn persist_patch(&self, msg: &Message) -> Result<()> {
        let Resource::Object(obj) = msg.resource()? else {
            return Err(Error::InvalidMessage(format!(
                "not an object resource: {}",
                msg.route
            )));
        };
        let value = msg.content.data().into_owned();
        self.store.check_len("patch", value.len())?;
        let value = String::from_utf8(value).map_err(|e| Error::InvalidMessage(e.to_string()))?;
        let key = msg.route.resource.clone();
        let kind = obj.resource_type.as_str().to_owned();
        self.store
            .write(move |db| meta::upsert(db, &key, &kind, &value, None).map(drop))
            .await
    }

    async fn query(&self, msg: Message, connected: bool) -> Result<EdgeOutcome> {
        let Resource::Object(obj) = msg.resource()? else {
            return Err(Error::InvalidMessage(format!(
                "not an object query: {}",
                msg.route
            )));
        };
        if connected && self.config.remote_query_types.contains(&obj.resource_type) {
            return Ok(EdgeOutcome::ToCloud {
                message: msg,
                queued: false,
            });
        }
        let key = msg.route.resource.clone();
        let namespace = obj.namespace.as_str().to_owned();
        let kind = obj.resource_type.as_str().to_owned();
        let single = obj.name.is_some();
        let rows = self
            .store
            .read(move |db| {
                if single {
                    Ok(meta::get(db, &key)?.into_iter().collect::<Vec<_>>())
                } else {
                    meta::list_in_namespace(db, &namespace, &kind)
                }
            })
            .await?;
        // KubeEdge answers with a JSON array of strings, each a stored document.
        let values: Vec<&str> = rows.iter().map(|row| row.value.as_str()).collect();
        let mut answer = msg.response(Content::json(&values)?);
        answer.route.source = Some(Source::MetaManager);
        Ok(EdgeOutcome::Answer(answer))
    }
}

/// The ACK for a message from the cloud. Metamanager hands device and device model inserts and
/// deletes to the twin with the route rewritten to `meta`/`twin`, and builds the ACK from that
/// rewritten message (seen in the capture).
fn ack_for(msg: &Message) -> Message {
    let mut ack = msg.ack();
    if rewrites_to_twin(msg) {
        ack.route.source = Some(Source::Meta);
        ack.route.group = Some(Group::Twin);
    }
    ack
}

fn rewrites_to_twin(msg: &Message) -> bool {
    msg.route.source == Some(Source::DeviceController)
        && matches!(
            msg.route.operation,
            Some(Operation::Insert | Operation::Delete)
        )
}

/// Where a stored object goes locally.
fn forward_for(mut msg: Message) -> Option<Forward> {
    let Ok(Resource::Object(obj)) = msg.resource() else {
        return None;
    };
    let target = match obj.resource_type {
        ResourceType::Device | ResourceType::DeviceModel | ResourceType::DeviceMapper => {
            if rewrites_to_twin(&msg) {
                msg.route.source = Some(Source::Meta);
                msg.route.group = Some(Group::Twin);
            }
            LocalTarget::Twin
        }
        // edged learns about its node from its own registration; KubeEdge does not forward it.
        ResourceType::Node if msg.route.operation == Some(Operation::Update) => return None,
        _ => LocalTarget::Edged,
    };
    Some(Forward {
        target,
        message: msg,
    })
}

/// The key and type a reply's object is stored under: a pod status patch reply stores the pod,
/// a node status patch reply the node; anything else the resource itself.
fn reply_key(msg: &Message) -> Option<(String, String)> {
    let Ok(Resource::Object(obj)) = msg.resource() else {
        return None;
    };
    let name = obj.name?;
    let kind = match obj.resource_type {
        ResourceType::PodPatch => ResourceType::Pod,
        ResourceType::NodePatch => ResourceType::Node,
        other => other,
    };
    Some((
        format!("{}/{}/{}", obj.namespace, kind, name),
        kind.as_str().to_owned(),
    ))
}

/// The object a reply carries: the `Object` of an `ObjectResp`, or the content itself when it
/// is a Kubernetes object (query replies). `None` for errors and empty objects.
fn reply_object(content: &Content) -> Option<String> {
    let resp = kubeedge_proto::ObjectResp::from_reply(content);
    if resp.is_err() || resp.object.is_null() {
        return None;
    }
    let json = resp.object.into_json();
    ObjectVersion::of(&json)?;
    String::from_utf8(json.to_vec()).ok()
}

/// Whether `msg` answers a service-account token request.
fn is_token_reply(msg: &Message) -> bool {
    matches!(msg.resource(), Ok(Resource::Object(obj)) if obj.resource_type == ResourceType::ServiceAccountToken)
}

/// Messages where only the latest matters share a key in the outbox: status patches and leases
/// per object, and queries per object asked for (per pod and token for service-account
/// tokens). Everything else is queued as it comes.
fn coalesce_key(msg: &Message) -> Option<String> {
    let Ok(Resource::Object(obj)) = msg.resource() else {
        return None;
    };
    if msg.route.operation == Some(Operation::Query) {
        return Some(match TokenSpec::of_message(msg) {
            Some(token) => format!("query:{}", token.key()),
            None => format!("query:{}", msg.route.resource),
        });
    }
    let latest_only = matches!(
        (msg.route.operation.as_ref(), &obj.resource_type),
        (
            Some(Operation::Patch),
            ResourceType::PodPatch | ResourceType::NodePatch
        ) | (Some(Operation::Update), ResourceType::Lease)
    );
    latest_only.then(|| {
        format!(
            "{}:{}",
            msg.route.operation.as_ref().map_or("", |o| o.as_str()),
            msg.route.resource
        )
    })
}
