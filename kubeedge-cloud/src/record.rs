//! The sent record: what the cloud gave a node that keeps no inventory of its own.
//!
//! A kubeedge-rs edge tells the cloud what it holds after every connect (its inventory), so
//! any replica can send it exactly the difference, deletes included. A KubeEdge edge tells
//! nothing: a replica that never served it (a restart, a failover, a long outage) would send
//! it its full set and never the deletes it missed, and the edge would keep running deleted
//! pods. KubeEdge's cloud keeps one ObjectSync object per node and object for this, written on
//! every message (KubeEdge #7278).
//!
//! This cloud keeps one compact record per such node instead: the key and uid of every object
//! it sent the node, one line each (`<ns>/<type>/<name> <uid>`), stored through the
//! [`ClusterWriter`](crate::ClusterWriter) where every replica can read it (a ConfigMap owned
//! by the Node in a cluster, a file in manifest mode). It is written before a batch of
//! messages that gives the node a new object (so a crash can never leave the node holding
//! something the record lacks) and after deletes; updates of objects already recorded write
//! nothing. On connect, a replica reads the record and brings the node from it to what it
//! should hold, exactly as from an inventory.

use std::collections::BTreeMap;

use kubeedge_proto::inventory::{Inventory, InventoryEntry};
use kubeedge_proto::{Message, Operation};

use crate::downstream::parse_edge_key;
use crate::{Kind, ObjectKey};

/// The largest record stored (a ConfigMap holds 1 MiB); a bigger one is stored without the
/// excess entries, which then get their deletes only from a replica that still knows them.
pub const MAX_RECORD_BYTES: usize = 900 * 1024;

/// What a batch of outgoing messages changed in a record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Noted {
    /// An object the record did not hold (or held with another uid): write before sending.
    pub added: bool,
    /// An object left the record: write when convenient.
    pub removed: bool,
}

/// The objects sent to one node, by key, with their uids. See the module docs.
///
/// ```
/// use kubeedge_cloud::SentRecord;
/// use kubeedge_proto::{Content, Message};
///
/// let mut record = SentRecord::default();
/// let pod = Message::new("edgecontroller", "resource", "insert", "default/pod/web",
///     Content::try_from(r#"{"metadata":{"uid":"u1","resourceVersion":"5"}}"#).unwrap());
/// assert!(record.note(&pod).added);
/// let text = record.render();
/// assert_eq!(text, "default/pod/web u1\n");
/// assert_eq!(SentRecord::parse(&text), record);
/// assert_eq!(record.to_inventory().objects[0].uid, "u1");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SentRecord {
    entries: BTreeMap<ObjectKey, String>,
}

impl SentRecord {
    /// Reads a stored record; lines that are not `<edge key> <uid>` for a kind the cloud sends
    /// are skipped.
    pub fn parse(text: &str) -> Self {
        let entries = text
            .lines()
            .filter_map(|line| {
                let (key, uid) = line.trim().split_once(' ')?;
                let key = parse_edge_key(key)?;
                (key.kind != Kind::Node && !uid.is_empty() && !uid.contains(' '))
                    .then(|| (key, uid.to_owned()))
            })
            .collect();
        Self { entries }
    }

    /// The stored form, bounded by [`MAX_RECORD_BYTES`].
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (key, uid) in &self.entries {
            let line = format!("{} {uid}\n", key.edge_resource());
            if out.len() + line.len() > MAX_RECORD_BYTES {
                tracing::warn!(
                    objects = self.entries.len(),
                    limit = MAX_RECORD_BYTES,
                    "the sent record is over its size limit; the rest is not stored"
                );
                break;
            }
            out.push_str(&line);
        }
        out
    }

    /// How many objects it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The record as an inventory without versions: every object in it is sent again, and
    /// every one the node should no longer hold is deleted.
    pub fn to_inventory(&self) -> Inventory {
        Inventory {
            objects: self
                .entries
                .iter()
                .map(|(key, uid)| InventoryEntry {
                    key: key.edge_resource(),
                    uid: uid.clone(),
                    resource_version: 0,
                })
                .collect(),
        }
    }

    /// Takes note of a message about to be sent to the node.
    pub fn note(&mut self, msg: &Message) -> Noted {
        let mut noted = Noted::default();
        let Some(key) = parse_edge_key(&msg.route.resource) else {
            return noted;
        };
        if key.kind == Kind::Node {
            return noted;
        }
        match msg.route.operation {
            Some(Operation::Insert | Operation::Update) => {
                let Some(uid) = msg
                    .content
                    .object_meta()
                    .map(|m| m.uid)
                    .filter(|u| !u.is_empty())
                else {
                    return noted;
                };
                if self.entries.get(&key) != Some(&uid) {
                    self.entries.insert(key, uid);
                    noted.added = true;
                }
            }
            Some(Operation::Delete) => {
                noted.removed = self.entries.remove(&key).is_some();
            }
            _ => {}
        }
        noted
    }
}

#[cfg(test)]
mod tests {
    use kubeedge_proto::Content;

    use super::*;

    fn msg(op: &str, resource: &str, uid: &str) -> Message {
        let content = format!(r#"{{"metadata":{{"uid":"{uid}","resourceVersion":"1"}}}}"#);
        Message::new(
            "edgecontroller",
            "resource",
            op,
            resource,
            Content::try_from(content.as_str()).unwrap(),
        )
    }

    #[test]
    fn notes_new_objects_new_incarnations_and_deletes() {
        let mut record = SentRecord::default();
        assert!(record.note(&msg("insert", "ns/pod/a", "u1")).added);
        // An update of what it holds changes nothing.
        assert_eq!(
            record.note(&msg("update", "ns/pod/a", "u1")),
            Noted::default()
        );
        // A new incarnation is new.
        assert!(record.note(&msg("update", "ns/pod/a", "u2")).added);
        assert!(record.note(&msg("insert", "ns/configmap/c", "u3")).added);
        // The Node is never recorded (its deletes are never sent).
        assert_eq!(
            record.note(&msg("update", "null/node/n1", "n")),
            Noted::default()
        );
        assert!(record.note(&msg("delete", "ns/pod/a", "u2")).removed);
        assert!(!record.note(&msg("delete", "ns/pod/a", "u2")).removed);
        assert_eq!(record.render(), "ns/configmap/c u3\n");
    }

    #[test]
    fn bad_lines_are_skipped() {
        let record = SentRecord::parse(
            "ns/pod/a u1\ngarbage\nns/lease/x u2\nns/pod/b \n\nnull/node/n u\nns/secret/s u3\n",
        );
        assert_eq!(record.render(), "ns/pod/a u1\nns/secret/s u3\n");
    }
}
