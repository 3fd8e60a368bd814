//! The MQTT side of the EventBus: the client (rumqttc) and the embedded broker.
//!
//! Devices and mappers talk to an edge node over MQTT on KubeEdge's `$hw/events/...` topics.
//! [`MqttBus`] connects one client per broker in use (see [`MqttMode`]), pushes every
//! publication it receives into the twin's [`Ingress`](crate::Ingress) queue without ever
//! waiting, re-subscribes after every reconnect, and publishes (QoS 1, not retained) to every
//! broker in use through a cloneable [`MqttHandle`].
//!
//! # Dependencies
//!
//! * **rumqttc** is the MQTT 3.1.1 client: a tokio event loop with QoS 1 flow control, keep
//!   alive and reconnect-on-next-poll, which is exactly what the EventBus needs. It is built
//!   without default features (plain TCP only: KubeEdge's brokers listen on loopback). Its
//!   packet codec (`rumqttc::mqttbytes`) is also what the embedded broker reads and writes
//!   packets with.
//! * The **embedded broker** (feature `embedded-broker`, on by default, no dependency of its
//!   own) is our own small MQTT 3.1.1 broker, so an edge node needs no mosquitto (KubeEdge's
//!   `mqttMode` 0). It reads packets with the same rumqttc codec plus the specification's
//!   checks ([`packet`]), keeps no state per topic, and every limit is in [`BrokerConfig`]
//!   ([`MqttConfig::broker`]), logged when hit and counted in `BrokerStats`. It listens on
//!   [`MqttConfig::internal`], loopback by default (`127.0.0.1:1884`, as KubeEdge), and
//!   authenticates nobody unless [`BrokerConfig::auth`] is set. See the `broker` module
//!   (`EmbeddedBroker`) for what it does and does not do. (It replaced rumqttd, which refused
//!   every `$hw/...` filter, could not be stopped and grew without bound per topic.)
//!
//! # Example
//!
//! ```no_run
//! use bytes::Bytes;
//! use kubeedge_twin::mqtt::{MqttBus, MqttConfig, DEFAULT_SUBSCRIPTIONS};
//! use kubeedge_twin::{Ingress, IngressConfig};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn run() -> kubeedge_twin::Result<()> {
//! let (ingress, mut events) = Ingress::new(IngressConfig::default());
//! let subscriptions = DEFAULT_SUBSCRIPTIONS.iter().map(|s| s.to_string()).collect();
//! let bus = MqttBus::start(MqttConfig::default(), subscriptions, ingress, CancellationToken::new())
//!     .await?;
//! let mqtt = bus.handle();
//! mqtt.connected().await?;
//! mqtt.publish("$hw/events/device/default/t1/twin/update/document", Bytes::from_static(b"{}"))
//!     .await?;
//! while let Some(event) = events.recv().await {
//!     println!("{} {:?}", event.topic, event.payload);
//! }
//! bus.shutdown().await;
//! # Ok(()) }
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::{Error, Result};

#[cfg(feature = "embedded-broker")]
pub mod broker;
mod broker_config;
mod client;
pub mod packet;
#[cfg(feature = "embedded-broker")]
mod subscription_tree;

#[cfg(feature = "embedded-broker")]
pub use broker::{BrokerStats, BrokerStatsReader, EmbeddedBroker};
pub use broker_config::{BrokerAuth, BrokerConfig};
pub use client::{MqttBus, MqttHandle};

/// The topic filters an edge node subscribes to (KubeEdge's EventBus defaults): device and node
/// events, twin and state updates, membership requests, upload records and user topics.
pub const DEFAULT_SUBSCRIPTIONS: &[&str] = &[
    "$hw/events/upload/#",
    "$hw/events/device/+/+/state/update",
    "$hw/events/device/+/+/twin/+",
    "$hw/events/node/+/membership/get",
    "SYS/dis/upload_records",
    "+/user/#",
];

/// KubeEdge's default external broker (`mqttServerExternal`).
pub const DEFAULT_EXTERNAL_BROKER: &str = "tcp://127.0.0.1:1883";

/// KubeEdge's default internal broker address (`mqttServerInternal`).
pub const DEFAULT_INTERNAL_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 1884);

/// The largest MQTT packet the protocol can describe (remaining length, 256 MiB - 1).
const MQTT_MAX_PACKET: usize = 268_435_455;

/// The longest topic an MQTT string can hold.
pub const MAX_TOPIC_LEN: usize = u16::MAX as usize;

/// Which brokers the EventBus uses (KubeEdge's `mqttMode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MqttMode {
    /// `mqttMode: 0`: only the embedded broker. Our default: an edge node then needs nothing
    /// else (KubeEdge's default is 2, an external mosquitto).
    #[default]
    Internal,
    /// `mqttMode: 1`: the embedded broker and the external one.
    Both,
    /// `mqttMode: 2`: only the external broker.
    External,
}

impl MqttMode {
    /// The mode for KubeEdge's `mqttMode` value (0, 1 or 2).
    pub fn from_kubeedge(mode: u8) -> Result<Self> {
        match mode {
            0 => Ok(Self::Internal),
            1 => Ok(Self::Both),
            2 => Ok(Self::External),
            n => Err(Error::Validation(format!(
                "mqttMode {n} is not 0 (internal), 1 (both) or 2 (external)"
            ))),
        }
    }

    /// KubeEdge's `mqttMode` value for this mode.
    pub fn to_kubeedge(self) -> u8 {
        match self {
            Self::Internal => 0,
            Self::Both => 1,
            Self::External => 2,
        }
    }

    /// Whether the embedded broker is used.
    pub fn uses_internal(self) -> bool {
        matches!(self, Self::Internal | Self::Both)
    }

    /// Whether the external broker is used.
    pub fn uses_external(self) -> bool {
        matches!(self, Self::External | Self::Both)
    }
}

/// How the EventBus connects to its brokers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MqttConfig {
    /// Which brokers to use.
    pub mode: MqttMode,
    /// The external broker, as KubeEdge writes it (`tcp://host:port`) or as `host:port`
    /// (default `tcp://127.0.0.1:1883`). Only plain TCP is supported.
    pub external: String,
    /// Where the embedded broker listens (default `127.0.0.1:1884`, KubeEdge's internal
    /// broker; port 0 picks a free port). Used in [`MqttMode::Internal`] and
    /// [`MqttMode::Both`].
    pub internal: SocketAddr,
    /// The MQTT client id of the EventBus (the same id is used with each broker). Empty (the
    /// default) means a generated `kubeedge-twin-<pid>-<n>`, unique in this process.
    pub client_id: String,
    /// MQTT keep alive (default 30 s; rounded up to whole seconds, zero turns pings off).
    pub keep_alive: Duration,
    /// How long to wait before reconnecting after a connection error (KubeEdge: 5 s).
    pub reconnect_interval: Duration,
    /// The largest MQTT packet accepted or sent, counted as the packet's remaining length
    /// (topic, packet id and payload). Default 1 MiB + 64 KiB: a 1 MiB payload plus the longest
    /// topic. rumqttc's own default is only 10 KiB. A larger packet from a broker closes that
    /// connection (the client reconnects); a larger [`MqttHandle::publish`] is refused.
    pub max_payload: usize,
    /// Requests (publishes, subscribes) each client queues before
    /// [`MqttHandle::publish`] waits and [`MqttHandle::try_publish`] fails (default 64).
    pub request_capacity: usize,
    /// The embedded broker's limits and credentials (used in [`MqttMode::Internal`] and
    /// [`MqttMode::Both`]). With credentials set, the EventBus's own client logs in with
    /// them.
    pub broker: BrokerConfig,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            mode: MqttMode::default(),
            external: DEFAULT_EXTERNAL_BROKER.to_owned(),
            internal: DEFAULT_INTERNAL_ADDR,
            client_id: String::new(),
            keep_alive: Duration::from_secs(30),
            reconnect_interval: Duration::from_secs(5),
            max_payload: 1024 * 1024 + 64 * 1024,
            request_capacity: 64,
            broker: BrokerConfig::default(),
        }
    }
}

impl MqttConfig {
    /// A configuration for `mode` with the given brokers, the rest default.
    pub fn new(mode: MqttMode, external: impl Into<String>, internal: SocketAddr) -> Self {
        Self {
            mode,
            external: external.into(),
            internal,
            ..Self::default()
        }
    }

    /// Checks the values that would make the client misbehave.
    pub fn validate(&self) -> Result<()> {
        if self.max_payload < 1024 || self.max_payload > MQTT_MAX_PACKET {
            return Err(Error::Validation(format!(
                "max_payload {} is not between 1 KiB and {MQTT_MAX_PACKET} bytes",
                self.max_payload
            )));
        }
        if self.request_capacity == 0 {
            return Err(Error::Validation(
                "request_capacity must be at least 1".into(),
            ));
        }
        if self.keep_alive > Duration::from_secs(u64::from(u16::MAX)) {
            return Err(Error::Validation(format!(
                "keep_alive {:?} is longer than MQTT allows (65535 s)",
                self.keep_alive
            )));
        }
        if self.client_id.len() > MAX_TOPIC_LEN || self.client_id.contains('\0') {
            return Err(Error::Validation(
                "client_id must be shorter than 65536 bytes and hold no NUL".into(),
            ));
        }
        if self.mode.uses_external() {
            parse_broker(&self.external)?;
        }
        if self.mode.uses_internal() {
            self.broker.validate()?;
        }
        Ok(())
    }
}

/// Splits a broker address (`tcp://host:port`, `mqtt://host:port`, `host:port` or `host`,
/// port 1883 by default; IPv6 hosts in brackets) into host and port.
pub fn parse_broker(url: &str) -> Result<(String, u16)> {
    let bad = |why: &str| Error::Validation(format!("MQTT broker {url:?}: {why}"));
    let rest = match url.split_once("://") {
        None => url,
        Some(("tcp" | "mqtt", rest)) => rest,
        Some((scheme, _)) => {
            return Err(bad(&format!(
                "scheme {scheme}:// is not supported (only plain TCP: tcp:// or mqtt://)"
            )));
        }
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| bad("junk after ']'"))?,
                ),
            ),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if host.is_empty() || host.contains(['/', '@', '?', '#', ' ']) {
        return Err(bad("no valid host"));
    }
    let port = match port {
        None => 1883,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("invalid port"))?,
    };
    Ok((host.to_owned(), port))
}

fn common_checks(kind: &str, topic: &str) -> Result<()> {
    if topic.is_empty() {
        return Err(Error::InvalidTopic(format!("empty {kind}")));
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(Error::InvalidTopic(format!(
            "{kind} of {} bytes is longer than {MAX_TOPIC_LEN}",
            topic.len()
        )));
    }
    if topic.contains('\0') {
        return Err(Error::InvalidTopic(format!(
            "{kind} {topic:?} holds a NUL character"
        )));
    }
    Ok(())
}

/// Checks a topic to publish to: not empty, at most 65535 bytes, no NUL, no wildcard.
pub fn validate_topic(topic: &str) -> Result<()> {
    common_checks("topic", topic)?;
    if topic.contains(['+', '#']) {
        return Err(Error::InvalidTopic(format!(
            "topic {topic:?} holds a wildcard (+ or #); publish topics cannot"
        )));
    }
    Ok(())
}

/// Checks a topic filter to subscribe to: not empty, at most 65535 bytes, no NUL, `+` only as a
/// whole level and `#` only as the whole last level.
pub fn validate_filter(filter: &str) -> Result<()> {
    common_checks("topic filter", filter)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        let ok = match level {
            "+" => true,
            "#" => last,
            other => !other.contains(['+', '#']),
        };
        if !ok {
            return Err(Error::InvalidTopic(format!(
                "topic filter {filter:?}: + must be a whole level and # the whole last level"
            )));
        }
    }
    Ok(())
}

/// Whether `topic` matches `filter` (MQTT 3.1.1 rules, including that a filter starting with a
/// wildcard does not match a topic starting with `$`).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for f in filter.split('/') {
        if f == "#" {
            return true;
        }
        match topic_levels.next() {
            Some(t) if f == "+" || f == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        for n in 0..3 {
            assert_eq!(MqttMode::from_kubeedge(n).unwrap().to_kubeedge(), n);
        }
        assert!(MqttMode::from_kubeedge(3).is_err());
        assert!(MqttMode::Both.uses_internal() && MqttMode::Both.uses_external());
        assert!(!MqttMode::Internal.uses_external());
        assert!(!MqttMode::External.uses_internal());
    }

    #[test]
    fn broker_urls() {
        let ok = |s: &str| parse_broker(s).unwrap();
        assert_eq!(ok("tcp://127.0.0.1:1883"), ("127.0.0.1".into(), 1883));
        assert_eq!(ok("mqtt://broker:42"), ("broker".into(), 42));
        assert_eq!(ok("localhost"), ("localhost".into(), 1883));
        assert_eq!(ok("[::1]:1884"), ("::1".into(), 1884));
        assert_eq!(ok("[::1]"), ("::1".into(), 1883));
        for bad in [
            "ssl://h:1",
            "tcp://:1",
            "h:0",
            "h:x",
            "[::1",
            "[::1]x",
            "",
            "a b:1",
        ] {
            assert!(parse_broker(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn topics_and_filters() {
        assert!(validate_topic("$hw/events/device/default/t1/twin/update").is_ok());
        for bad in ["", "a/+/b", "a/#", "a\0b"] {
            assert!(
                matches!(validate_topic(bad), Err(Error::InvalidTopic(_))),
                "{bad:?}"
            );
        }
        assert!(validate_topic(&"a".repeat(MAX_TOPIC_LEN + 1)).is_err());
        for f in DEFAULT_SUBSCRIPTIONS {
            validate_filter(f).unwrap();
        }
        for good in ["#", "+", "a/+/b/#", "/", "a//b"] {
            validate_filter(good).unwrap();
        }
        for bad in ["", "a/#/b", "a#", "a/b+", "++", "a\0"] {
            assert!(validate_filter(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn matching() {
        let t = "$hw/events/device/default/t1/twin/update";
        assert!(topic_matches("$hw/events/device/+/+/twin/+", t));
        assert!(topic_matches("$hw/#", t));
        assert!(!topic_matches("#", t));
        assert!(!topic_matches("+/events/#", t));
        assert!(topic_matches("+/user/#", "a/user/b/c"));
        assert!(topic_matches("a/#", "a"));
        assert!(!topic_matches("a/+", "a"));
        assert!(!topic_matches("a/b", "a/b/c"));
    }
}
