//! KubeEdge's device and node MQTT topics: classifying what arrives and building what goes out.
//!
//! A device topic is `$hw/events/device/<namespace>/<name>/<suffix>`; a node topic is
//! `$hw/events/node/<node>/<suffix>`. Names that would add topic levels or MQTT wildcards
//! (`/`, `+`, `#`) or are not Kubernetes names are refused, so a device name can never make the
//! edge publish on someone else's topic.
//!
//! ```
//! use kubeedge_dmi::topic::{DeviceAction, TwinTopic, device_topic};
//!
//! let t = TwinTopic::classify("$hw/events/device/default/thermo-1/twin/update").unwrap();
//! let Some(TwinTopic::Device { id, action }) = t else { panic!() };
//! assert_eq!(action, DeviceAction::TwinUpdate);
//! assert_eq!(device_topic(&id, DeviceAction::TwinUpdate.result_suffix().unwrap()),
//!            "$hw/events/device/default/thermo-1/twin/update/result");
//! assert!(TwinTopic::classify("$hw/events/device/default/a+b/twin/update").is_err());
//! assert_eq!(TwinTopic::classify("app1/user/hello").unwrap(), None);
//! ```

use kubeedge_proto::DeviceId;

use crate::{Error, Result};

/// The prefix of device topics.
pub const DEVICE_PREFIX: &str = "$hw/events/device/";
/// The prefix of node topics.
pub const NODE_PREFIX: &str = "$hw/events/node/";

/// What a device topic asks for (its suffix after `<ns>/<name>/`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceAction {
    /// `twin/update`: a mapper or application reports or sets twin values.
    TwinUpdate,
    /// `twin/get`: read all twins.
    TwinGet,
    /// `twin/cloud_updated`: a twin sync carrying cloud versions.
    TwinCloudUpdated,
    /// `state/update`: the device's connection state.
    StateUpdate,
}

impl DeviceAction {
    /// The topic suffix.
    pub fn suffix(self) -> &'static str {
        match self {
            Self::TwinUpdate => "twin/update",
            Self::TwinGet => "twin/get",
            Self::TwinCloudUpdated => "twin/cloud_updated",
            Self::StateUpdate => "state/update",
        }
    }

    /// The suffix the answer is published on (none for cloud syncs).
    pub fn result_suffix(self) -> Option<&'static str> {
        match self {
            Self::TwinUpdate => Some(TWIN_UPDATE_RESULT),
            Self::TwinGet => Some("twin/get/result"),
            Self::TwinCloudUpdated => None,
            Self::StateUpdate => Some("state/update/result"),
        }
    }

    fn from_suffix(suffix: &str) -> Option<Self> {
        [
            Self::TwinUpdate,
            Self::TwinGet,
            Self::TwinCloudUpdated,
            Self::StateUpdate,
        ]
        .into_iter()
        .find(|a| a.suffix() == suffix)
    }
}

/// `twin/update/result`.
pub const TWIN_UPDATE_RESULT: &str = "twin/update/result";
/// `twin/update/delta`.
pub const TWIN_UPDATE_DELTA: &str = "twin/update/delta";
/// `twin/update/document`.
pub const TWIN_UPDATE_DOCUMENT: &str = "twin/update/document";
/// `membership/updated` (node topic).
pub const MEMBERSHIP_UPDATED: &str = "membership/updated";
/// `membership/get/result` (node topic).
pub const MEMBERSHIP_GET_RESULT: &str = "membership/get/result";

/// KubeEdge publishes the error result of an update it could not parse here: the device id is
/// empty because parsing never got to it.
pub const UNPARSED_UPDATE_RESULT_TOPIC: &str = "$hw/events/device//twin/update/result";

/// A topic the device twin handles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TwinTopic {
    /// `$hw/events/device/<ns>/<name>/<action>`.
    Device {
        /// The device.
        id: DeviceId,
        /// What is asked.
        action: DeviceAction,
    },
    /// `$hw/events/node/<node>/membership/get`.
    MembershipGet {
        /// The node named in the topic.
        node: String,
    },
}

impl TwinTopic {
    /// Classifies `topic`: `Ok(None)` when it is not a device or node topic (an upload for the
    /// cloud); an error when it is one but malformed (bad names, unknown action).
    pub fn classify(topic: &str) -> Result<Option<TwinTopic>> {
        if let Some(rest) = topic.strip_prefix(DEVICE_PREFIX) {
            let mut parts = rest.splitn(3, '/');
            let (ns, name, suffix) = match (parts.next(), parts.next(), parts.next()) {
                (Some(ns), Some(name), Some(suffix)) => (ns, name, suffix),
                _ => return Err(Error::InvalidTopic(topic_excerpt(topic))),
            };
            let id = device_id(ns, name).map_err(|_| Error::InvalidTopic(topic_excerpt(topic)))?;
            let action = DeviceAction::from_suffix(suffix)
                .ok_or_else(|| Error::InvalidTopic(topic_excerpt(topic)))?;
            return Ok(Some(TwinTopic::Device { id, action }));
        }
        if let Some(rest) = topic.strip_prefix(NODE_PREFIX) {
            return match rest.split_once('/') {
                Some((node, "membership/get")) if is_topic_name(node) => {
                    Ok(Some(TwinTopic::MembershipGet {
                        node: node.to_owned(),
                    }))
                }
                _ => Err(Error::InvalidTopic(topic_excerpt(topic))),
            };
        }
        Ok(None)
    }
}

/// A device id whose parts are safe as topic levels: Kubernetes names (lower-case letters,
/// digits, `-` and `.`), so never `/`, `+`, `#` or NUL.
pub fn device_id(namespace: &str, name: &str) -> Result<DeviceId> {
    if !is_topic_name(namespace) || !is_topic_name(name) {
        return Err(Error::Validation(format!(
            "device {:?}/{:?} is not a valid Kubernetes namespace and name",
            excerpt(namespace),
            excerpt(name)
        )));
    }
    Ok(DeviceId::new(namespace, name)?)
}

/// Parses `<namespace>/<name>` with [`device_id`]'s rules.
pub fn parse_device_id(id: &str) -> Result<DeviceId> {
    match id.split_once('/') {
        Some((ns, name)) => device_id(ns, name),
        None => Err(Error::Validation(format!(
            "device id {:?} is not <namespace>/<name>",
            excerpt(id)
        ))),
    }
}

/// `$hw/events/device/<ns>/<name>/<suffix>`.
pub fn device_topic(id: &DeviceId, suffix: &str) -> String {
    let mut topic = String::with_capacity(
        DEVICE_PREFIX.len() + id.namespace.len() + id.name.len() + suffix.len() + 2,
    );
    topic.push_str(DEVICE_PREFIX);
    topic.push_str(&id.namespace);
    topic.push('/');
    topic.push_str(&id.name);
    topic.push('/');
    topic.push_str(suffix);
    topic
}

/// `$hw/events/node/<node>/<suffix>`.
pub fn node_topic(node: &str, suffix: &str) -> String {
    format!("{NODE_PREFIX}{node}/{suffix}")
}

/// A Kubernetes DNS-1123 subdomain: 1 to 253 of `a-z 0-9 - .`, starting and ending
/// alphanumeric.
pub(crate) fn is_topic_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 253
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

fn excerpt(s: &str) -> String {
    s.chars().take(80).collect()
}

fn topic_excerpt(topic: &str) -> String {
    format!("{:?}", excerpt(topic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        let t = TwinTopic::classify("$hw/events/device/default/t-1/state/update")
            .unwrap()
            .unwrap();
        assert_eq!(
            t,
            TwinTopic::Device {
                id: DeviceId::new("default", "t-1").unwrap(),
                action: DeviceAction::StateUpdate
            }
        );
        assert_eq!(
            TwinTopic::classify("$hw/events/node/edge-1/membership/get").unwrap(),
            Some(TwinTopic::MembershipGet {
                node: "edge-1".into()
            })
        );
        assert_eq!(TwinTopic::classify("SYS/dis/upload_records").unwrap(), None);
        assert_eq!(TwinTopic::classify("$hw/events/upload/x").unwrap(), None);
    }

    #[test]
    fn refuses_injection() {
        for bad in [
            "$hw/events/device/default/a#/twin/update",
            "$hw/events/device/default/+/twin/update",
            "$hw/events/device//x/twin/update",
            "$hw/events/device/default/x/twin/update/result",
            "$hw/events/device/default/X/twin/update",
            "$hw/events/device/default",
            "$hw/events/node/+/membership/get",
            "$hw/events/node/n/membership/detail",
        ] {
            assert!(TwinTopic::classify(bad).is_err(), "{bad}");
        }
        assert!(device_id("default", "a/b").is_err());
        assert!(device_id("default", "-a").is_err());
        assert!(parse_device_id("default/ok.name-1").is_ok());
    }
}
