//! The edge's inventory: what objects an edge store holds, sent to the cloud after every
//! (re)connect so that the cloud sends only the difference (kubeedge-rs only; KubeEdge's cloud
//! keeps this knowledge in ObjectSync objects in the API server instead).
//!
//! On the wire it is a message `route{source: "metamanager", group: "resource", operation:
//! "list", resource: "inventory"}` whose content is [`Inventory`] as a JSON object. A KubeEdge
//! cloudcore logs it as an unknown resource and drops it; a kubeedge-rs cloud that never gets
//! one (a KubeEdge edge) sends the node its full set instead.

use serde::{Deserialize, Serialize};

use crate::{Content, Group, Message, Operation, Result, Source};

/// The resource of inventory messages.
pub const INVENTORY_RESOURCE: &str = "inventory";

/// Most entries an inventory may carry; a bigger one is refused by [`Inventory::from_message`].
pub const MAX_INVENTORY_ENTRIES: usize = 100_000;

/// One object an edge holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryEntry {
    /// The edge resource path, `<ns>/<type>/<name>` (`null/node/<n>` for cluster objects).
    pub key: String,
    /// `metadata.uid` of the stored object.
    pub uid: String,
    /// `metadata.resourceVersion` of the stored object (decimal).
    #[serde(rename = "resourceVersion")]
    pub resource_version: u64,
}

/// Every cloud-sent object an edge store holds, with its uid and resourceVersion.
///
/// ```
/// use kubeedge_proto::inventory::{Inventory, InventoryEntry};
///
/// let inv = Inventory {
///     objects: vec![InventoryEntry {
///         key: "default/pod/nginx".into(),
///         uid: "u1".into(),
///         resource_version: 42,
///     }],
/// };
/// let msg = inv.to_message().unwrap();
/// assert_eq!(msg.route.resource, "inventory");
/// assert_eq!(Inventory::from_message(&msg).unwrap(), inv);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// The objects, in any order.
    #[serde(default)]
    pub objects: Vec<InventoryEntry>,
}

impl Inventory {
    /// The message that carries this inventory to the cloud.
    pub fn to_message(&self) -> Result<Message> {
        Ok(Message::new(
            Source::MetaManager,
            Group::Resource,
            Operation::List,
            INVENTORY_RESOURCE,
            Content::json(self)?,
        ))
    }

    /// Whether `msg` is an inventory message.
    pub fn is_inventory(msg: &Message) -> bool {
        msg.route.resource == INVENTORY_RESOURCE && msg.route.operation == Some(Operation::List)
    }

    /// Reads the inventory out of an inventory message; refuses more than
    /// [`MAX_INVENTORY_ENTRIES`] entries.
    pub fn from_message(msg: &Message) -> Result<Self> {
        let inv: Self = msg.content.decode()?;
        if inv.objects.len() > MAX_INVENTORY_ENTRIES {
            return Err(crate::Error::TooLarge {
                what: "inventory",
                len: inv.objects.len(),
                max: MAX_INVENTORY_ENTRIES,
            });
        }
        Ok(inv)
    }
}
