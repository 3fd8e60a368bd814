//! Downstream dispatch: which objects each connected node must hold, and the messages that
//! bring it there.
//!
//! [`Downstream`] is pure state, no I/O: it consumes [`ObjectEvent`]s, node connects and
//! inventories, and returns the messages to send. Per node it remembers what it sent in this
//! session only (uid, resourceVersion, a hash of everything but the status), so a replica that
//! never saw the node before rebuilds that knowledge on connect from the edge's
//! [`Inventory`] (or, for a KubeEdge edge that sends none, by sending the full set). Nothing is
//! kept in the API server.
//!
//! Each new version of a Device or DeviceModel is checked ([`crate::device_check`]); a refused
//! one is held: not sent, not deleted, its membership unchanged, so the node keeps what it
//! had (a delete of it carries the last version sent, never the refused one). Each refused
//! version is reported once through [`Downstream::take_rejections`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use kubeedge_proto::device::{Device as MemberDevice, MembershipUpdate};
use kubeedge_proto::inventory::Inventory;
use kubeedge_proto::{Content, Message, new_message_id, now_millis};
use serde_json::json;

use crate::device_check::{DeviceLimits, Rejection, check};
use crate::{Kind, Object, ObjectEvent, ObjectKey};

/// Rejections held for [`Downstream::take_rejections`], at most.
const MAX_PENDING_REJECTIONS: usize = 4096;

/// A message for one node.
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    /// The node.
    pub node: String,
    /// The message, with its edge-form resource.
    pub message: Message,
}

/// What was sent to a node (or what its inventory said it holds).
#[derive(Clone, Debug)]
struct Sent {
    uid: String,
    rv: u64,
    /// `None` when known from the inventory only.
    spec_hash: Option<u64>,
    /// The object as sent, for the content of its delete.
    object: Option<Object>,
}

enum Phase {
    /// Connected; waiting for the edge's inventory until the deadline.
    Waiting {
        until: Instant,
    },
    /// No inventory came: the controller is reading the node's sent record.
    Recording,
    Synced,
}

struct Session {
    phase: Phase,
    sent: HashMap<ObjectKey, Sent>,
    /// Inventory entries of kinds not listed yet: checked when their kind is listed.
    unverified: Vec<(ObjectKey, Sent)>,
    /// Devices the node was told about in membership updates.
    members: BTreeSet<ObjectKey>,
}

impl Session {
    fn new(until: Instant) -> Self {
        Self {
            phase: Phase::Waiting { until },
            sent: HashMap::new(),
            unverified: Vec::new(),
            members: BTreeSet::new(),
        }
    }
}

/// The downstream dispatcher. See the module docs.
pub struct Downstream {
    cache: HashMap<ObjectKey, Object>,
    /// node → the Pods and Devices bound to it.
    bound: HashMap<String, BTreeSet<ObjectKey>>,
    /// ConfigMap/Secret/DeviceModel → node → how many of the node's objects reference it.
    ref_nodes: HashMap<ObjectKey, HashMap<String, u32>>,
    listed: HashSet<Kind>,
    sessions: HashMap<String, Session>,
    /// Objects deleted by the event being applied: their deletes carry their last state.
    tombstones: HashMap<ObjectKey, Object>,
    inventory_grace: Duration,
    device_limits: DeviceLimits,
    /// Devices and DeviceModels whose cached version failed the checks: not sent.
    invalid: HashSet<ObjectKey>,
    /// The (uid, resourceVersion) last reported as a [`Rejection`], per object.
    reported: HashMap<ObjectKey, (String, String)>,
    /// Rejections not taken yet.
    rejections: Vec<Rejection>,
    /// Rejections not kept since the last take (too many pending).
    lost_rejections: usize,
}

impl std::fmt::Debug for Downstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downstream")
            .field("objects", &self.cache.len())
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl Downstream {
    /// A dispatcher that waits `inventory_grace` after a node connects for its inventory
    /// before sending it the full set.
    pub fn new(inventory_grace: Duration) -> Self {
        Self {
            cache: HashMap::new(),
            bound: HashMap::new(),
            ref_nodes: HashMap::new(),
            listed: HashSet::new(),
            sessions: HashMap::new(),
            tombstones: HashMap::new(),
            inventory_grace,
            device_limits: DeviceLimits::default(),
            invalid: HashSet::new(),
            reported: HashMap::new(),
            rejections: Vec::new(),
            lost_rejections: 0,
        }
    }

    /// This dispatcher with Devices and DeviceModels checked against `limits` (by default
    /// [`DeviceLimits::default`]).
    #[must_use]
    pub fn with_device_limits(mut self, limits: DeviceLimits) -> Self {
        self.device_limits = limits;
        self
    }

    /// The Devices and DeviceModels found invalid since the last call, each version once
    /// (the same uid and resourceVersion again, as a resync brings it, is not reported
    /// again). They are not sent; what a node holds of them stays as it was.
    /// At most 4096 are kept between two calls; the rest are dropped, with one WARN.
    pub fn take_rejections(&mut self) -> Vec<Rejection> {
        self.lost_rejections = 0;
        std::mem::take(&mut self.rejections)
    }

    /// Whether the cached version of `key` failed the device checks (and is not sent).
    pub fn is_refused(&self, key: &ObjectKey) -> bool {
        self.invalid.contains(key)
    }

    /// The cached object at `key`.
    pub fn get(&self, key: &ObjectKey) -> Option<&Object> {
        self.cache.get(key)
    }

    /// Every cached object of `kind`.
    pub fn objects(&self, kind: Kind) -> impl Iterator<Item = &Object> {
        self.cache.values().filter(move |o| o.kind() == kind)
    }

    /// How many objects the view holds.
    pub fn object_count(&self) -> usize {
        self.cache.len()
    }

    /// Whether `kind` has been listed (its cache is complete).
    pub fn is_listed(&self, kind: Kind) -> bool {
        self.listed.contains(&kind)
    }

    /// The Pod or Device at `key` if it is bound to `node`.
    pub fn bound_to(&self, key: &ObjectKey, node: &str) -> Option<&Object> {
        self.cache.get(key).filter(|o| o.node_name() == Some(node))
    }

    /// Whether one of the objects bound to `node` references `key` (a ConfigMap, Secret or
    /// DeviceModel).
    pub fn referenced_on(&self, key: &ObjectKey, node: &str) -> bool {
        self.ref_nodes
            .get(key)
            .is_some_and(|nodes| nodes.contains_key(node))
    }

    /// Whether `node` has a session here.
    pub fn is_connected(&self, node: &str) -> bool {
        self.sessions.contains_key(node)
    }

    /// Connected nodes.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// A node connected (or reconnected: what it was sent before is forgotten).
    pub fn connected(&mut self, node: &str, now: Instant) {
        self.sessions
            .insert(node.to_owned(), Session::new(now + self.inventory_grace));
    }

    /// A node disconnected.
    pub fn disconnected(&mut self, node: &str) {
        self.sessions.remove(node);
    }

    /// The node's inventory arrived: bring it from what it holds to what it should hold. An
    /// inventory outside the waiting phase (a re-sent one) is applied the same way.
    pub fn inventory(&mut self, node: &str, inventory: &Inventory) -> Vec<Outgoing> {
        let Some(session) = self.sessions.get_mut(node) else {
            return Vec::new();
        };
        session.phase = Phase::Synced;
        session.sent.clear();
        session.unverified.clear();
        session.members.clear();
        for entry in &inventory.objects {
            let Some(key) = parse_edge_key(&entry.key) else {
                continue;
            };
            let sent = Sent {
                uid: entry.uid.clone(),
                rv: entry.resource_version,
                spec_hash: None,
                object: None,
            };
            if self.listed.contains(&key.kind) {
                if key.kind == Kind::Device {
                    session.members.insert(key.clone());
                }
                session.sent.insert(key, sent);
            } else {
                session.unverified.push((key, sent));
            }
        }
        let mut out = Vec::new();
        self.reconcile(node, &mut out);
        out
    }

    /// Time passed: the nodes whose inventory did not come in time. They get nothing until
    /// [`inventory`](Self::inventory) (with their [`SentRecord`](crate::SentRecord) as one)
    /// or [`full_set`](Self::full_set) is called for them.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let mut due = Vec::new();
        for (node, session) in &mut self.sessions {
            if matches!(session.phase, Phase::Waiting { until } if until <= now) {
                session.phase = Phase::Recording;
                due.push(node.clone());
            }
        }
        due
    }

    /// The full set for `node`, as if it held nothing (a KubeEdge edge whose record cannot
    /// be read).
    pub fn full_set(&mut self, node: &str) -> Vec<Outgoing> {
        let mut out = Vec::new();
        if let Some(session) = self.sessions.get_mut(node) {
            session.phase = Phase::Synced;
            self.reconcile(node, &mut out);
        }
        out
    }

    /// Time passed: nodes whose inventory did not come in time get their full set.
    pub fn tick(&mut self, now: Instant) -> Vec<Outgoing> {
        let due: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| matches!(s.phase, Phase::Waiting { until } if until <= now))
            .map(|(n, _)| n.clone())
            .collect();
        let mut out = Vec::new();
        for node in due {
            if let Some(session) = self.sessions.get_mut(&node) {
                session.phase = Phase::Synced;
            }
            self.reconcile(&node, &mut out);
        }
        out
    }

    /// Applies a source event and returns what the connected nodes must be sent.
    pub fn apply(&mut self, event: ObjectEvent) -> Vec<Outgoing> {
        let mut affected = BTreeSet::new();
        let mut all = false;
        match event {
            ObjectEvent::Applied(object) => self.store(object, &mut affected),
            ObjectEvent::Deleted(object) => {
                self.remove(object.key(), &mut affected);
                // A delete carries the object's last state: never a refused one.
                if check(&object, &self.device_limits).is_empty() {
                    self.tombstones.insert(object.key().clone(), object);
                }
            }
            ObjectEvent::Listed { kind, objects } => {
                let keep: HashSet<ObjectKey> = objects.iter().map(|o| o.key().clone()).collect();
                let gone: Vec<ObjectKey> = self
                    .cache
                    .keys()
                    .filter(|k| k.kind == kind && !keep.contains(k))
                    .cloned()
                    .collect();
                for key in gone {
                    if let Some(old) = self.cache.get(&key).cloned()
                        && !self.invalid.contains(&key)
                    {
                        self.tombstones.insert(key.clone(), old);
                    }
                    self.remove(&key, &mut affected);
                }
                for object in objects {
                    self.store(object, &mut affected);
                }
                if self.listed.insert(kind) {
                    self.verify_inventories(kind);
                }
                all = true;
            }
        }
        let nodes: Vec<String> = if all {
            self.sessions.keys().cloned().collect()
        } else {
            affected.into_iter().collect()
        };
        let mut out = Vec::new();
        for node in nodes {
            self.reconcile(&node, &mut out);
        }
        self.tombstones.clear();
        out
    }

    fn verify_inventories(&mut self, kind: Kind) {
        for session in self.sessions.values_mut() {
            let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut session.unverified)
                .into_iter()
                .partition(|(key, _)| key.kind == kind);
            session.unverified = later;
            for (key, sent) in now {
                if key.kind == Kind::Device {
                    session.members.insert(key.clone());
                }
                session.sent.insert(key, sent);
            }
        }
    }

    fn store(&mut self, object: Object, affected: &mut BTreeSet<String>) {
        let key = object.key().clone();
        if let Some(old) = self.cache.get(&key) {
            if old.resource_version() == object.resource_version()
                && old.uid() == object.uid()
                && old.content() == object.content()
            {
                return;
            }
            let old = old.clone();
            self.unindex(&old, affected);
        }
        self.judge(&object);
        self.index(&object, affected);
        self.cache.insert(key, object);
    }

    /// Runs the device checks on a new version of a Device or DeviceModel.
    fn judge(&mut self, object: &Object) {
        if !matches!(object.kind(), Kind::Device | Kind::DeviceModel) {
            return;
        }
        let key = object.key();
        let problems = check(object, &self.device_limits);
        if problems.is_empty() {
            self.reported.remove(key);
            if self.invalid.remove(key) {
                tracing::info!(object = %key, resource_version = object.resource_version(), "valid again: sent to its nodes");
            }
            return;
        }
        self.invalid.insert(key.clone());
        let version = (
            object.uid().to_owned(),
            object.resource_version().to_owned(),
        );
        if self.reported.get(key) != Some(&version) {
            self.reported.insert(key.clone(), version);
            if self.rejections.len() >= MAX_PENDING_REJECTIONS {
                // Nobody takes them: the object stays refused, only the report is lost.
                if self.lost_rejections == 0 {
                    tracing::warn!(
                        pending = MAX_PENDING_REJECTIONS,
                        "rejections are not taken: further ones are not reported"
                    );
                }
                self.lost_rejections += 1;
                return;
            }
            self.rejections.push(Rejection {
                object: object.clone(),
                problems,
            });
        }
    }

    fn remove(&mut self, key: &ObjectKey, affected: &mut BTreeSet<String>) {
        if let Some(old) = self.cache.remove(key) {
            self.unindex(&old, affected);
        }
        self.invalid.remove(key);
        self.reported.remove(key);
    }

    fn index(&mut self, object: &Object, affected: &mut BTreeSet<String>) {
        match object.kind() {
            Kind::Pod | Kind::Device => {
                if let Some(node) = object.node_name() {
                    self.bound
                        .entry(node.to_owned())
                        .or_default()
                        .insert(object.key().clone());
                    for r in object.references() {
                        *self
                            .ref_nodes
                            .entry(r.clone())
                            .or_default()
                            .entry(node.to_owned())
                            .or_default() += 1;
                    }
                    affected.insert(node.to_owned());
                }
            }
            Kind::ConfigMap | Kind::Secret | Kind::DeviceModel => {
                if let Some(nodes) = self.ref_nodes.get(object.key()) {
                    affected.extend(nodes.keys().cloned());
                }
            }
            Kind::Node => {
                affected.insert(object.key().name.clone());
            }
            Kind::Lease => {}
        }
    }

    fn unindex(&mut self, object: &Object, affected: &mut BTreeSet<String>) {
        match object.kind() {
            Kind::Pod | Kind::Device => {
                if let Some(node) = object.node_name() {
                    if let Some(set) = self.bound.get_mut(node) {
                        set.remove(object.key());
                        if set.is_empty() {
                            self.bound.remove(node);
                        }
                    }
                    for r in object.references() {
                        if let Some(nodes) = self.ref_nodes.get_mut(r) {
                            if let Some(count) = nodes.get_mut(node) {
                                *count -= 1;
                                if *count == 0 {
                                    nodes.remove(node);
                                }
                            }
                            if nodes.is_empty() {
                                self.ref_nodes.remove(r);
                            }
                        }
                    }
                    affected.insert(node.to_owned());
                }
            }
            Kind::ConfigMap | Kind::Secret | Kind::DeviceModel => {
                if let Some(nodes) = self.ref_nodes.get(object.key()) {
                    affected.extend(nodes.keys().cloned());
                }
            }
            Kind::Node => {
                affected.insert(object.key().name.clone());
            }
            Kind::Lease => {}
        }
    }

    /// What `node` should hold: its Pods and Devices and what they reference, in send order
    /// (referenced objects first, Pods last); and what it keeps as it has it: refused Devices
    /// (or Devices whose DeviceModel is refused) and their DeviceModels.
    fn desired(&self, node: &str) -> (BTreeMap<(u8, ObjectKey), Object>, HashSet<ObjectKey>) {
        let mut out = BTreeMap::new();
        let mut held = HashSet::new();
        // The node's own Node, as KubeEdge v1.23 pushes it (`null/node/<name>`): the edge
        // learns its uid (the owner of its Lease) and what the cluster says of its status.
        let own = ObjectKey::new(Kind::Node, "", node);
        if let Some(object) = self.cache.get(&own) {
            out.insert((rank(Kind::Node), own), object.clone());
        }
        let Some(bound) = self.bound.get(node) else {
            return (out, held);
        };
        for key in bound {
            let Some(object) = self.cache.get(key) else {
                continue;
            };
            // A refused Device (or one whose DeviceModel is refused) is not sent, and what
            // the node has of it and its model stays as it was.
            if key.kind == Kind::Device {
                let refs = object.references();
                if self.invalid.contains(key) || refs.iter().any(|r| self.invalid.contains(r)) {
                    held.insert(key.clone());
                    held.extend(refs.iter().cloned());
                    continue;
                }
            }
            // A Device waits for its DeviceModel: KubeEdge's edge refuses a Device whose
            // model it does not know yet ("device model not found in cache") and never
            // takes it up again when the model follows.
            if key.kind == Kind::Device
                && object
                    .references()
                    .iter()
                    .any(|r| r.kind == Kind::DeviceModel && !self.cache.contains_key(r))
            {
                continue;
            }
            out.insert((rank(key.kind), key.clone()), object.clone());
            for r in object.references() {
                if let Some(referenced) = self.cache.get(r) {
                    out.insert((rank(r.kind), r.clone()), referenced.clone());
                }
            }
        }
        (out, held)
    }

    /// Brings a synced node from what it was sent to what it should hold.
    fn reconcile(&mut self, node: &str, out: &mut Vec<Outgoing>) {
        let (desired, held) = self.desired(node);
        let Some(session) = self.sessions.get_mut(node) else {
            return;
        };
        if !matches!(session.phase, Phase::Synced) {
            return;
        }
        let wanted: HashSet<&ObjectKey> = desired.keys().map(|(_, k)| k).collect();

        // What goes away, Pods before what they referenced, of kinds whose cache is complete.
        let mut gone: Vec<ObjectKey> = session
            .sent
            .keys()
            // A Node that went away is not deleted on its edge: KubeEdge's cloud ends the
            // session instead.
            .filter(|k| {
                !wanted.contains(k)
                    && !held.contains(*k)
                    && self.listed.contains(&k.kind)
                    && k.kind != Kind::Node
            })
            .cloned()
            .collect();
        gone.sort_by_key(|k| (std::cmp::Reverse(rank(k.kind)), k.clone()));

        // Membership first (as KubeEdge's devicecontroller): devices unbound and newly bound.
        let removed_devices: Vec<MemberDevice> = gone
            .iter()
            .filter(|k| k.kind == Kind::Device && session.members.remove(*k))
            .map(|k| member(k, session.sent.get(k).and_then(|s| s.object.as_ref())))
            .collect();
        let added_devices: Vec<MemberDevice> = desired
            .iter()
            .filter(|((_, k), _)| k.kind == Kind::Device && !session.members.contains(k))
            .map(|((_, k), o)| member(k, Some(o)))
            .collect();
        for ((_, key), _) in desired.iter().filter(|((_, k), _)| k.kind == Kind::Device) {
            session.members.insert(key.clone());
        }
        if !added_devices.is_empty() || !removed_devices.is_empty() {
            out.push(Outgoing {
                node: node.to_owned(),
                message: membership_message(added_devices, removed_devices),
            });
        }

        for key in gone {
            if let Some(sent) = session.sent.remove(&key) {
                let last = self.tombstones.get(&key).filter(|t| t.uid() == sent.uid);
                if let Some(message) = delete_message(&key, &sent, last) {
                    out.push(Outgoing {
                        node: node.to_owned(),
                        message,
                    });
                }
            }
        }

        for ((_, key), object) in &desired {
            let rv = object.resource_version_u64().unwrap_or(0);
            let op = match session.sent.get_mut(key) {
                // KubeEdge sends its Node as `update`, status changes included (the node
                // lifecycle controller's `Unknown` is what the edge must hear about).
                None if key.kind == Kind::Node => Some("update"),
                Some(sent)
                    if key.kind == Kind::Node && (rv > sent.rv || sent.uid != object.uid()) =>
                {
                    Some("update")
                }
                None => Some("insert"),
                Some(sent) if sent.uid != object.uid() => Some("insert"),
                Some(sent) if rv > sent.rv => {
                    if sent.spec_hash == Some(object.spec_hash()) {
                        // Only the status changed (often the edge's own report): nothing
                        // the node needs.
                        sent.rv = rv;
                        None
                    } else {
                        Some("update")
                    }
                }
                Some(_) => None,
            };
            let Some(op) = op else { continue };
            session.sent.insert(
                key.clone(),
                Sent {
                    uid: object.uid().to_owned(),
                    rv,
                    spec_hash: Some(object.spec_hash()),
                    object: Some(object.clone()),
                },
            );
            out.push(Outgoing {
                node: node.to_owned(),
                message: object_message(op, object),
            });
        }
    }
}

/// Send order: what others reference first, then Devices, then Pods.
fn rank(kind: Kind) -> u8 {
    match kind {
        Kind::Node | Kind::ConfigMap | Kind::Secret | Kind::DeviceModel => 0,
        Kind::Device => 1,
        _ => 2,
    }
}

/// The KubeEdge source of a kind's messages.
fn source_of(kind: Kind) -> &'static str {
    match kind {
        Kind::Device | Kind::DeviceModel => "devicecontroller",
        _ => "edgecontroller",
    }
}

/// `<ns>/<type>/<name>` (edge form) → key, for kinds the cloud sends.
pub(crate) fn parse_edge_key(s: &str) -> Option<ObjectKey> {
    let mut parts = s.splitn(3, '/');
    let (ns, ty, name) = (parts.next()?, parts.next()?, parts.next()?);
    let kind = Kind::of_resource_type(ty).filter(|k| k.sent_to_edges())?;
    if name.is_empty() || ns.is_empty() || name.contains('/') {
        return None;
    }
    if kind == Kind::Node {
        // Only the Node this cloud pushes (`null/node/<name>`); an older edge may also hold
        // its registration answer under `default/node/<name>`, which is not ours to manage.
        return (ns == "null").then(|| ObjectKey::new(kind, "", name));
    }
    Some(ObjectKey::new(kind, ns, name))
}

/// The insert/update message of an object, exactly as KubeEdge's controllers send it.
pub(crate) fn object_message(op: &str, object: &Object) -> Message {
    Message::new(
        source_of(object.kind()),
        "resource",
        op,
        object.key().edge_resource(),
        object.content().clone(),
    )
    .with_resource_version(object.resource_version())
}

fn delete_message(key: &ObjectKey, sent: &Sent, last: Option<&Object>) -> Option<Message> {
    let last = last.or(sent.object.as_ref().filter(|o| o.uid() == sent.uid));
    let rv = last.map_or_else(|| sent.rv.to_string(), |o| o.resource_version().to_owned());
    let content = match last {
        Some(object) => object.content().clone(),
        _ => Content::json(&json!({
            "kind": key.kind.kind(),
            "apiVersion": key.kind.api_version(),
            "metadata": {
                "name": key.name,
                "namespace": key.namespace,
                "uid": sent.uid,
                "resourceVersion": sent.rv.to_string(),
            },
        }))
        .ok()?,
    };
    Some(
        Message::new(
            source_of(key.kind),
            "resource",
            "delete",
            key.edge_resource(),
            content,
        )
        .with_resource_version(rv),
    )
}

fn member(key: &ObjectKey, object: Option<&Object>) -> MemberDevice {
    let description = object
        .and_then(|o| o.pointer("/metadata/labels/description"))
        .and_then(|d| d.as_str().map(str::to_owned))
        .unwrap_or_default();
    MemberDevice {
        id: format!("{}/{}", key.namespace, key.name),
        name: key.name.clone(),
        description,
        ..MemberDevice::default()
    }
}

fn membership_message(added: Vec<MemberDevice>, removed: Vec<MemberDevice>) -> Message {
    let update = MembershipUpdate {
        event_id: new_message_id(),
        timestamp: now_millis(),
        added_devices: (!added.is_empty()).then_some(added),
        removed_devices: (!removed.is_empty()).then_some(removed),
    };
    let content = Content::json(&update).unwrap_or_else(|_| Content::null());
    Message::new("devicecontroller", "twin", "update", "membership", content)
}
