//! Device membership and state payloads: `membership` updates from the cloud, the
//! `$hw/events/node/<node>/membership/...` and `.../state/update` MQTT topics, and the
//! `membership/detail` and `state/update` messages sent to the cloud.
//!
//! ```
//! use kubeedge_proto::device::{DeviceState, DeviceStateUpdate};
//!
//! // A DMI state report uses the untagged Go field name `State`; both spellings are accepted.
//! let upd = DeviceStateUpdate::parse(br#"{"event_id":"","timestamp":1,"State":"OnLine"}"#).unwrap();
//! assert_eq!(upd.state().unwrap(), DeviceState::Online);
//! ```

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::twin::{MsgTwin, TypeMetadata, check_payload_len};
use crate::{Error, Result};

/// `Device` in membership messages: omitted fields are empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// `id`: `<namespace>/<name>`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// `name`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// `description` (the Device's `description` label).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// `state`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
    /// `last_online`: RFC 3339 UTC.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_online: String,
    /// `attributes`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, Option<MsgAttr>>,
    /// `twin`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub twin: BTreeMap<String, Option<MsgTwin>>,
}

/// `MsgAttr`: a device attribute.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsgAttr {
    /// `value` (always written).
    #[serde(default)]
    pub value: String,
    /// `optional`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
    /// `metadata`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TypeMetadata>,
}

/// `MembershipUpdate`: devices bound to or removed from the node (cloud `membership` update,
/// and `$hw/events/node/<node>/membership/updated`). Absent lists are `null`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipUpdate {
    /// `event_id`.
    #[serde(default)]
    pub event_id: String,
    /// `timestamp`.
    #[serde(default)]
    pub timestamp: i64,
    /// `added_devices`.
    #[serde(default)]
    pub added_devices: Option<Vec<Device>>,
    /// `removed_devices`.
    #[serde(default)]
    pub removed_devices: Option<Vec<Device>>,
}

/// `MembershipDetail`: the devices of the node (`membership/get/result`, `membership/detail`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipDetail {
    /// `event_id`.
    #[serde(default)]
    pub event_id: String,
    /// `timestamp`.
    #[serde(default)]
    pub timestamp: i64,
    /// `devices`.
    #[serde(default)]
    pub devices: Option<Vec<Device>>,
}

/// The membership detail request the edge sends to the cloud on every connect (resource
/// `membership/detail`, operation `get`, content this JSON *as a string*).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipDetailRequest {
    /// `event_type`: always `group_membership_event`.
    #[serde(default)]
    pub event_type: String,
    /// `event_id`.
    #[serde(default)]
    pub event_id: String,
    /// `group_id`: the node name.
    #[serde(default)]
    pub group_id: String,
    /// `operation`: always `detail`.
    #[serde(default)]
    pub operation: String,
    /// `timestamp`.
    #[serde(default)]
    pub timestamp: i64,
}

impl MembershipDetailRequest {
    /// A request for `node_name` with a fresh event id and the current time.
    pub fn new(node_name: &str) -> Self {
        Self {
            event_type: "group_membership_event".to_owned(),
            event_id: crate::new_message_id(),
            group_id: node_name.to_owned(),
            operation: "detail".to_owned(),
            timestamp: crate::now_millis(),
        }
    }
}

/// A device's connection state, as accepted on `.../state/update` (case-insensitively).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceState {
    /// `online`.
    Online,
    /// `offline`.
    Offline,
    /// `ok`.
    Ok,
    /// `unknown`.
    Unknown,
    /// `unhealthy`.
    Unhealthy,
}

impl DeviceState {
    /// The lower-case wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Offline => "offline",
            Self::Ok => "ok",
            Self::Unknown => "unknown",
            Self::Unhealthy => "unhealthy",
        }
    }

    /// Parses a state case-insensitively; other strings are refused (KubeEdge ignores them).
    pub fn parse(s: &str) -> Result<Self> {
        [
            Self::Online,
            Self::Offline,
            Self::Ok,
            Self::Unknown,
            Self::Unhealthy,
        ]
        .into_iter()
        .find(|st| st.as_str().eq_ignore_ascii_case(s))
        .ok_or_else(|| {
            Error::Validation(format!("unknown device state {:?}", crate::error::quote(s)))
        })
    }

    /// Whether KubeEdge stamps `last_online` for this state (`online` and `ok`).
    pub fn counts_as_online(self) -> bool {
        matches!(self, Self::Online | Self::Ok)
    }
}

impl fmt::Display for DeviceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The payload of `$hw/events/device/<ns>/<name>/state/update`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStateUpdate {
    /// `event_id`.
    #[serde(default)]
    pub event_id: String,
    /// `timestamp`.
    #[serde(default)]
    pub timestamp: i64,
    /// `state` (also read as `State`, the key DMI state reports use).
    #[serde(default, alias = "State")]
    pub state: String,
}

impl DeviceStateUpdate {
    /// Decodes a payload of at most [`MAX_PAYLOAD_LEN`](crate::twin::MAX_PAYLOAD_LEN) bytes.
    pub fn parse(payload: &[u8]) -> Result<Self> {
        check_payload_len(payload)?;
        Ok(serde_json::from_slice(payload)?)
    }

    /// The typed state.
    pub fn state(&self) -> Result<DeviceState> {
        DeviceState::parse(&self.state)
    }
}

/// `device` inside a state result: `{"name","state","lastOnlineTime"}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStateInfo {
    /// `name`.
    #[serde(default)]
    pub name: String,
    /// `state`.
    #[serde(default)]
    pub state: String,
    /// `lastOnlineTime`: RFC 3339 UTC, empty unless online.
    #[serde(default, rename = "lastOnlineTime")]
    pub last_online_time: String,
}

/// The state result: published to `.../state/update/result` and sent to the cloud as the
/// content (a JSON string) of `device/<ns>/<name>/state/update`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStateResult {
    /// `event_id`.
    #[serde(default)]
    pub event_id: String,
    /// `timestamp`.
    #[serde(default)]
    pub timestamp: i64,
    /// `device`.
    #[serde(default)]
    pub device: DeviceStateInfo,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::go_json;

    #[test]
    fn membership_update_keeps_nulls() {
        let wire = br#"{"event_id":"e","timestamp":1,"added_devices":[{"id":"default/t","name":"t","description":"d"}],"removed_devices":null}"#;
        let upd: MembershipUpdate = serde_json::from_slice(wire).unwrap();
        assert_eq!(upd.added_devices.as_ref().unwrap()[0].id, "default/t");
        assert_eq!(go_json::to_vec(&upd).unwrap(), wire);
    }

    #[test]
    fn states() {
        assert_eq!(DeviceState::parse("ONLINE").unwrap(), DeviceState::Online);
        assert!(DeviceState::parse("dancing").is_err());
        assert!(DeviceState::Ok.counts_as_online());
        assert!(!DeviceState::Offline.counts_as_online());
        let upd = DeviceStateUpdate::parse(br#"{"event_id":"a","timestamp":2,"state":"offline"}"#)
            .unwrap();
        assert_eq!(upd.state().unwrap(), DeviceState::Offline);
    }

    #[test]
    fn detail_request_shape() {
        let req = MembershipDetailRequest::new("edge-1");
        let json = String::from_utf8(go_json::to_vec(&req).unwrap()).unwrap();
        assert!(json.starts_with(r#"{"event_type":"group_membership_event","event_id":""#));
        assert!(json.contains(r#""group_id":"edge-1","operation":"detail","timestamp":"#));
    }
}
