//! An MQTT *device* driver: for devices that publish their readings on MQTT topics of their
//! own and take commands on others.
//!
//! The driver keeps one MQTT 3.1.1 connection (rumqttc, plain TCP) to the broker the device
//! talks to, subscribes to the topic of every property it was given
//! ([`DeviceDriver::parse_visitor`]), and remembers the latest message on each. A read returns
//! the property's value from the latest message: the whole payload, or the value a
//! [`JsonPath`] picks out of a JSON payload, converted to the property type. A write publishes
//! the value on the property's command topic, as is or through a [`CommandTemplate`].
//!
//! ```no_run
//! use kubeedge_mapper::mqtt_device::{MqttDeviceConfig, MqttDeviceDriver};
//! use kubeedge_mapper::{DeviceDriver, PropertySpec, Value};
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> kubeedge_mapper::Result<()> {
//! // A Device's spec.protocol.configData ...
//! let protocol = json!({"broker": "tcp://192.168.1.30:1883", "clientId": "thermostat-7",
//!                       "qos": 1});
//! let driver = MqttDeviceDriver::new(MqttDeviceConfig::from_protocol_config(
//!     protocol.as_object().unwrap(),
//! )?);
//! // ... and one of its properties: the device publishes {"sensors": {"temp": 21.5}} on
//! // thermostat/7/state and takes {"set": 19} on thermostat/7/set.
//! let temperature = driver.parse_visitor(&PropertySpec::from_json(
//!     "temperature",
//!     "FLOAT",
//!     json!({"protocolName": "mqtt", "configData": {
//!         "topic": "thermostat/7/state", "jsonPath": "sensors.temp", "maxAge": 60000,
//!         "commandTopic": "thermostat/7/set", "commandTemplate": "{\"set\":{{value}}}"}}),
//! )?)?;
//! driver.connect().await?;
//! match driver.read(&temperature).await {
//!     Ok(value) => println!("temperature is {}", value.to_twin_string()),
//!     Err(e) if e.is_retryable() => println!("nothing (recent) from the device yet: {e}"),
//!     Err(e) => println!("the device sent something unusable: {e}"),
//! }
//! driver.write(&temperature, &Value::Float(19.0)).await?;
//! # Ok(()) }
//! ```
//!
//! # Protocol `configData`
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `broker` (or `brokerURL`, `address`) | `tcp://host:port`, `mqtt://host:port`, `host:port` or `host`; IPv6 in brackets | required, unless `ip` is given |
//! | `ip`, `port` | the broker as KubeEdge's MQTT mapper proposal writes it | port 1883 |
//! | `clientId` (or `clientID`) | the MQTT client id; two clients with one id take turns kicking each other off the broker | `kubeedge-mapper-<pid>-<n>` |
//! | `username`, `password` | credentials | none |
//! | `qos` | 0, 1 or 2: the QoS of the subscriptions and of the command publications | 1 |
//! | `keepAlive` | seconds, 1 to 65535 | 30 |
//! | `timeout` | milliseconds: connecting, and a write waiting for the broker's acknowledgement | 5000 |
//! | `reconnectInterval` | milliseconds between connection attempts | 1000 |
//! | `maxPayloadBytes` | the largest message a property value is taken from, and the largest command | 65536 |
//! | `maxPacketBytes` | the largest MQTT packet the connection accepts (see below) | 4194304 |
//! | `maxTopics` | how many distinct topics the driver subscribes to | 1024 |
//!
//! # Visitor `configData`
//!
//! | key | meaning |
//! |---|---|
//! | `topic` | where the device publishes the value; no wildcards (a property reads one topic) |
//! | `jsonPath` | a [`JsonPath`] into a JSON payload (`sensors.temp`, `data[0].v`); without it, the whole payload is the value |
//! | `maxAge` | milliseconds: a value older than this is not returned ([`Error::NoValue`]) |
//! | `commandTopic` | where a write publishes; without it the property is read-only |
//! | `commandTemplate` | a [`CommandTemplate`] such as `{"set":{{value}}}`; without it the payload is the value itself (the twin's text, raw bytes for BYTES) |
//!
//! A property needs `topic`, `commandTopic` or both. Other keys are ignored (KubeEdge's
//! `configData` is free-form). STREAM properties are refused.
//!
//! # Values, and what goes wrong
//!
//! - Before the device has published on a topic (since the driver subscribed; a retained
//!   message counts), a read fails with [`Error::NoValue`], which is retryable. So does a read
//!   whose last value is older than `maxAge`.
//! - A message over `maxPayloadBytes`, a payload that is not JSON when a `jsonPath` is set, or
//!   that lacks the path, makes reads of that topic fail with [`Error::BadFrame`] until the
//!   device publishes a good one. A value that does not fit the property type is
//!   [`Error::TypeMismatch`]. Errors quote at most the first 80 characters of a bad value.
//! - A packet over `maxPacketBytes` cannot be skipped in MQTT 3.1.1 without reading it, so it
//!   closes the connection; the driver reconnects (a *retained* packet that large comes back
//!   at every reconnect: the device has to clear it). Keep `maxPacketBytes` above
//!   `maxPayloadBytes` plus the longest topic so that a large message costs one property an
//!   error, not everyone a reconnect. Memory is bounded by `maxTopics` x `maxPayloadBytes` for
//!   the cache plus `maxPacketBytes` for the packet being read.
//! - While the broker is unreachable, reads, writes and [`DeviceDriver::health`] fail at once
//!   with the reason ([`Error::Connect`] or [`Error::ConnectionLost`], both retryable); the
//!   driver reconnects every `reconnectInterval` in the background and subscribes again.
//!   Values received before the outage are kept (`maxAge` bounds how old a value may be).
//! - The driver connects with a clean session: nothing is queued for it at the broker while it
//!   is away, and nothing it published before an outage is sent again after it.
//! - A write returns when the broker has acknowledged the publication (QoS 1: PUBACK; QoS 2:
//!   PUBCOMP; QoS 0: when it was written to the connection). MQTT says nothing about whether
//!   the device acted on it; the device's next state message does. A write that timed out may
//!   still reach the broker.
//! - A device whose command topic is also a topic a property reads gets the driver's own
//!   commands back from the broker (MQTT 3.1.1 has no "no local"): until the device answers,
//!   the command is the latest message on that topic.
//! - A broker that refuses a subscription (an ACL) makes reads of that topic fail with
//!   [`Error::Unsupported`]; the driver asks again after every reconnect.
//!
//! # Lifetime
//!
//! The connection is opened by the first [`DeviceDriver::connect`], read, write or health
//! check (inside a tokio runtime) and served by a background task, which says DISCONNECT and
//! ends when the last clone of the driver is dropped.

mod payload;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, MqttOptions, Outgoing, QoS,
    StateError, SubscribeFilter, SubscribeReasonCode,
};
use serde_json::{Map, Value as Json};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config_data::{integer, lookup, optional_string, string};
use crate::driver::{DeviceDriver, PropertySpec, PropertyType, Value};
use crate::error::{Error, Result};

pub use payload::{CommandTemplate, JsonPath};

/// The default MQTT port.
pub const DEFAULT_PORT: u16 = 1883;
/// How long connecting, or a write waiting for the broker's acknowledgement, may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The keep-alive interval.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// The pause between connection attempts.
pub const DEFAULT_RECONNECT_INTERVAL: Duration = Duration::from_secs(1);
/// The largest message a value is taken from, and the largest command.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// The largest MQTT packet the connection accepts.
pub const DEFAULT_MAX_PACKET_BYTES: usize = 4 * 1024 * 1024;
/// How many distinct topics one driver subscribes to.
pub const DEFAULT_MAX_TOPICS: usize = 1024;

/// The MQTT topic length limit (a 16-bit length prefix).
const MAX_TOPIC_BYTES: usize = 65_535;
/// Requests rumqttc may have queued for its event loop.
const REQUEST_QUEUE: usize = 256;
/// Most topic filters in one SUBSCRIBE.
const SUBSCRIBE_CHUNK: usize = 50;
/// How long the goodbye DISCONNECT may take.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// An MQTT quality of service level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Qos {
    /// 0: at most once.
    AtMostOnce,
    /// 1: at least once.
    AtLeastOnce,
    /// 2: exactly once.
    ExactlyOnce,
}

impl Qos {
    /// The level's number, 0 to 2.
    pub const fn level(self) -> u8 {
        match self {
            Self::AtMostOnce => 0,
            Self::AtLeastOnce => 1,
            Self::ExactlyOnce => 2,
        }
    }

    /// The level numbered `level`, if there is one.
    pub const fn from_level(level: u8) -> Option<Self> {
        match level {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }

    fn to_rumqttc(self) -> QoS {
        match self {
            Self::AtMostOnce => QoS::AtMostOnce,
            Self::AtLeastOnce => QoS::AtLeastOnce,
            Self::ExactlyOnce => QoS::ExactlyOnce,
        }
    }
}

/// Everything an [`MqttDeviceDriver`] needs to reach the broker its device talks to.
#[derive(Clone, PartialEq)]
pub struct MqttDeviceConfig {
    /// The broker's host name or IP address (IPv6 without brackets).
    pub host: String,
    /// The broker's port.
    pub port: u16,
    /// The MQTT client id.
    pub client_id: String,
    /// User name and password, if the broker wants them.
    pub credentials: Option<(String, String)>,
    /// The QoS of the subscriptions and of command publications.
    pub qos: Qos,
    /// The keep-alive interval (whole seconds, at least one).
    pub keep_alive: Duration,
    /// How long connecting, or a write waiting for the broker's acknowledgement, may take.
    pub timeout: Duration,
    /// The pause between connection attempts.
    pub reconnect_interval: Duration,
    /// The largest message a value is taken from, and the largest command payload.
    pub max_payload_bytes: usize,
    /// The largest MQTT packet the connection accepts; a larger one closes the connection.
    pub max_packet_bytes: usize,
    /// How many distinct topics the driver subscribes to.
    pub max_topics: usize,
}

impl fmt::Debug for MqttDeviceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttDeviceConfig")
            .field("broker", &self.broker())
            .field("client_id", &self.client_id)
            .field(
                "username",
                &self.credentials.as_ref().map(|(user, _)| user.as_str()),
            )
            .field("qos", &self.qos)
            .field("keep_alive", &self.keep_alive)
            .field("timeout", &self.timeout)
            .field("reconnect_interval", &self.reconnect_interval)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("max_packet_bytes", &self.max_packet_bytes)
            .field("max_topics", &self.max_topics)
            .finish_non_exhaustive()
    }
}

impl MqttDeviceConfig {
    /// A configuration for the broker at `broker` (`tcp://host:port`, `mqtt://host:port`,
    /// `host:port` or `host`), with a generated client id and the defaults.
    pub fn new(broker: &str) -> Result<Self> {
        let (host, port) = parse_broker(broker)?;
        Ok(Self {
            host,
            port,
            client_id: generated_client_id(),
            credentials: None,
            qos: Qos::AtLeastOnce,
            keep_alive: DEFAULT_KEEP_ALIVE,
            timeout: DEFAULT_TIMEOUT,
            reconnect_interval: DEFAULT_RECONNECT_INTERVAL,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_packet_bytes: DEFAULT_MAX_PACKET_BYTES,
            max_topics: DEFAULT_MAX_TOPICS,
        })
    }

    /// The broker as `host:port` (IPv6 in brackets), for messages.
    pub fn broker(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Parses a Device's `spec.protocol.configData`; the keys are in the [module
    /// documentation](self). Numbers may be JSON numbers or numeric strings.
    pub fn from_protocol_config(config_data: &Map<String, Json>) -> Result<Self> {
        let mut config = match lookup(config_data, &["broker", "brokerURL", "address"]) {
            Some((key, v)) => Self::new(&string(key, v)?)?,
            None => match lookup(config_data, &["ip"]) {
                Some((_, ip)) => {
                    let ip = string("ip", ip)?;
                    let port = match lookup(config_data, &["port"]) {
                        Some((_, v)) => integer("port", v, 1, 65_535)? as u16,
                        None => DEFAULT_PORT,
                    };
                    let host = ip.trim_start_matches('[').trim_end_matches(']');
                    if host.is_empty() {
                        return Err(Error::config("ip is empty"));
                    }
                    Self::new(&format!("[{host}]:{port}"))?
                }
                None => {
                    return Err(Error::config(
                        "protocol configData has no broker (tcp://host:port) and no ip",
                    ));
                }
            },
        };
        if let Some((key, v)) = lookup(config_data, &["clientId", "clientID"]) {
            let id = string(key, v)?;
            if id.is_empty() || id.len() > MAX_TOPIC_BYTES {
                return Err(Error::config(format!(
                    "{key} must be 1 to {MAX_TOPIC_BYTES} bytes"
                )));
            }
            config.client_id = id;
        }
        match (
            lookup(config_data, &["username"]),
            lookup(config_data, &["password"]),
        ) {
            (Some((_, user)), password) => {
                let password = match password {
                    Some((_, p)) => string("password", p)?,
                    None => String::new(),
                };
                config.credentials = Some((string("username", user)?, password));
            }
            (None, Some(_)) => return Err(Error::config("password without a username")),
            (None, None) => {}
        }
        if let Some((_, v)) = lookup(config_data, &["qos"]) {
            config.qos =
                Qos::from_level(integer("qos", v, 0, 2)? as u8).unwrap_or(Qos::AtLeastOnce);
        }
        if let Some((_, v)) = lookup(config_data, &["keepAlive"]) {
            config.keep_alive = Duration::from_secs(integer("keepAlive", v, 1, 65_535)? as u64);
        }
        if let Some((_, v)) = lookup(config_data, &["timeout"]) {
            config.timeout = Duration::from_millis(integer("timeout", v, 1, 3_600_000)? as u64);
        }
        if let Some((_, v)) = lookup(config_data, &["reconnectInterval"]) {
            config.reconnect_interval =
                Duration::from_millis(integer("reconnectInterval", v, 1, 3_600_000)? as u64);
        }
        let size = |key: &'static str, default: usize| -> Result<usize> {
            match lookup(config_data, &[key]) {
                None => Ok(default),
                Some((_, v)) => Ok(integer(key, v, 1, 256 * 1024 * 1024)? as usize),
            }
        };
        config.max_payload_bytes = size("maxPayloadBytes", config.max_payload_bytes)?;
        config.max_packet_bytes = size("maxPacketBytes", config.max_packet_bytes)?;
        config.max_topics = size("maxTopics", config.max_topics)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks that the settings can work together.
    pub fn validate(&self) -> Result<()> {
        if self.host.is_empty() {
            return Err(Error::config("the broker's host is empty"));
        }
        if self.port == 0 {
            return Err(Error::config("the broker's port is 0"));
        }
        if self.client_id.is_empty() {
            return Err(Error::config("the client id is empty"));
        }
        if self.keep_alive < Duration::from_secs(1)
            || self.keep_alive > Duration::from_secs(65_535)
            || self.keep_alive.subsec_nanos() != 0
        {
            return Err(Error::config(format!(
                "keepAlive {:?}: whole seconds, 1 to 65535",
                self.keep_alive
            )));
        }
        if self.timeout.is_zero() {
            return Err(Error::config("timeout must be positive"));
        }
        if self.max_payload_bytes == 0 || self.max_topics == 0 {
            return Err(Error::config(
                "maxPayloadBytes and maxTopics must be positive",
            ));
        }
        if self.max_packet_bytes < self.max_payload_bytes {
            return Err(Error::config(format!(
                "maxPacketBytes {} is below maxPayloadBytes {}: a payload that fits could not \
                 arrive",
                self.max_packet_bytes, self.max_payload_bytes
            )));
        }
        Ok(())
    }
}

/// `tcp://host:port`, `mqtt://host:port`, `host:port`, `host`, `[v6]:port`, `[v6]`.
fn parse_broker(text: &str) -> Result<(String, u16)> {
    let bad = |why: &str| Error::config(format!("broker {text:?}: {why}"));
    let trimmed = text.trim();
    let rest = match trimmed.split_once("://") {
        Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
            "tcp" | "mqtt" => rest,
            "ssl" | "tls" | "mqtts" | "ws" | "wss" => {
                return Err(bad(&format!(
                    "{scheme}:// is not supported (this driver speaks MQTT over plain TCP)"
                )));
            }
            _ => return Err(bad(&format!("unknown scheme {scheme}://"))),
        },
        None => trimmed,
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') || rest.contains('@') || rest.contains('?') {
        return Err(bad("expected host:port, without user, path or query"));
    }
    let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or_else(|| bad("an IPv6 address without its closing bracket"))?;
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(bad("unexpected text after the IPv6 address")),
            },
        }
    } else {
        match rest.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err(bad("an IPv6 address must be in brackets: [::1]:1883"));
            }
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => return Err(bad(&format!("port {p:?} is not 1 to 65535"))),
        },
    };
    Ok((host.to_owned(), port))
}

/// `kubeedge-mapper-<pid>-<n>`: unique in this process, and across processes on one node.
fn generated_client_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "kubeedge-mapper-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Where and how a property lives on an MQTT device: its visitor `configData`, checked, plus
/// its property type. Build it with [`MqttVisitor::from_config`] or
/// [`DeviceDriver::parse_visitor`].
#[derive(Debug, Clone, PartialEq)]
pub struct MqttVisitor {
    /// The DeviceModel type values are converted to.
    pub property_type: PropertyType,
    /// The topic the device publishes the value on (`None`: write-only).
    pub topic: Option<String>,
    /// Where the value is in a JSON payload (`None`: the whole payload is the value).
    pub json_path: Option<JsonPath>,
    /// How old a value may be (`None`: any age).
    pub max_age: Option<Duration>,
    /// The topic writes are published on (`None`: read-only).
    pub command_topic: Option<String>,
    /// How a written value becomes a payload (`None`: the value itself).
    pub command_template: Option<CommandTemplate>,
}

impl MqttVisitor {
    /// Parses a visitor's `configData` (keys in the [module documentation](self)).
    pub fn from_config(
        property_type: PropertyType,
        config_data: &Map<String, Json>,
    ) -> Result<Self> {
        if property_type == PropertyType::Stream {
            return Err(Error::Unsupported(
                "STREAM properties over MQTT (a stream is not a property value)".into(),
            ));
        }
        let text = |key| optional_string(config_data, key);
        let topic = text("topic")?.filter(|t| !t.is_empty());
        let command_topic = text("commandTopic")?.filter(|t| !t.is_empty());
        if let Some(t) = &topic {
            check_topic("topic", t)?;
        }
        if let Some(t) = &command_topic {
            check_topic("commandTopic", t)?;
        }
        if topic.is_none() && command_topic.is_none() {
            return Err(Error::config(
                "visitor has neither topic (to read) nor commandTopic (to write)",
            ));
        }
        let json_path = match text("jsonPath")? {
            Some(p) if !p.trim().is_empty() => Some(p.parse::<JsonPath>()?),
            _ => None,
        };
        let command_template = text("commandTemplate")?
            .filter(|t| !t.is_empty())
            .map(|t| t.parse::<CommandTemplate>())
            .transpose()?;
        let max_age = lookup(config_data, &["maxAge"])
            .map(|(k, v)| integer(k, v, 1, i64::from(u32::MAX)))
            .transpose()?
            .map(|ms| Duration::from_millis(ms as u64));
        Ok(Self {
            property_type,
            topic,
            json_path,
            max_age,
            command_topic,
            command_template,
        })
    }

    /// The property value in `payload` (a message on [`MqttVisitor::topic`]).
    pub fn decode(&self, payload: &[u8]) -> Result<Value> {
        let Some(path) = &self.json_path else {
            return payload::raw_to_value(self.property_type, payload);
        };
        let doc: Json = serde_json::from_slice(payload).map_err(|e| {
            Error::bad_frame(format!(
                "the payload ({} bytes) is not JSON: {e}",
                payload.len()
            ))
        })?;
        payload::json_to_value(self.property_type, path.find(&doc)?)
    }

    /// The payload a write of `value` publishes; `value` must be of the property's type.
    pub fn encode(&self, value: &Value) -> Result<Vec<u8>> {
        value.check_type(self.property_type)?;
        Ok(match (&self.command_template, value) {
            (Some(template), value) => template.render(value),
            (None, Value::Bytes(raw)) => raw.clone(),
            (None, value) => value.to_twin_string().into_bytes(),
        })
    }
}

/// A topic a property reads or writes: not empty, no wildcards, no NUL, at most 65535 bytes.
fn check_topic(key: &str, topic: &str) -> Result<()> {
    if topic.contains(['+', '#']) {
        return Err(Error::config(format!(
            "{key} {topic:?}: wildcards (+, #) are not allowed; a property reads and writes one \
             topic"
        )));
    }
    if topic.contains('\0') {
        return Err(Error::config(format!("{key} {topic:?} contains NUL")));
    }
    if topic.len() > MAX_TOPIC_BYTES {
        return Err(Error::config(format!(
            "{key} is {} bytes (MQTT topics are at most {MAX_TOPIC_BYTES})",
            topic.len()
        )));
    }
    Ok(())
}

/// A device that publishes its readings on MQTT topics (see the [module documentation](self)).
///
/// Cheap to clone: clones share one connection and one cache.
#[derive(Clone)]
pub struct MqttDeviceDriver {
    inner: Arc<Inner>,
}

/// Owned by the driver's clones; stops the background task when the last one goes.
struct Inner {
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Shared by the driver and its background task.
struct Shared {
    config: MqttDeviceConfig,
    target: String,
    state: Mutex<State>,
    /// Bumped on every change of [`State::phase`] and subscription state.
    changed: watch::Sender<()>,
}

struct State {
    phase: Phase,
    /// The client, once the background task runs. Requests are queued on it only while the
    /// lock is held and the phase is [`Phase::Connected`]; this is what keeps the FIFOs below
    /// in the order in which rumqttc sends the packets.
    client: Option<AsyncClient>,
    topics: HashMap<String, TopicState>,
    /// Topics whose SUBSCRIBE could not be queued (the request queue was full).
    unsent: HashSet<String>,
    /// SUBSCRIBEs queued on this connection and not yet sent, in order.
    subscribes_queued: VecDeque<Vec<String>>,
    /// SUBSCRIBEs sent, by packet id, until their SUBACK.
    subscribes_sent: HashMap<u16, Vec<String>>,
    /// Writes queued on this connection and not yet sent, in order.
    publishes_queued: VecDeque<oneshot::Sender<Result<()>>>,
    /// Writes sent with QoS 1 or 2, by packet id, until their PUBACK or PUBCOMP.
    publishes_sent: HashMap<u16, oneshot::Sender<Result<()>>>,
}

#[derive(Clone)]
enum Phase {
    /// No background task yet.
    Idle,
    /// The first connection attempt is under way.
    Starting,
    Connected,
    /// Not connected, for this reason; the task tries again.
    Down(Error),
}

struct TopicState {
    subscription: Subscription,
    last: Option<Received>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Subscription {
    /// Not (yet) acknowledged on this connection.
    Pending,
    Active,
    /// The broker refused it.
    Refused,
}

enum Received {
    Payload { data: Bytes, at: Instant },
    Rejected { reason: String },
}

impl fmt::Debug for MqttDeviceDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttDeviceDriver")
            .field("config", &self.inner.shared.config)
            .finish_non_exhaustive()
    }
}

impl MqttDeviceDriver {
    /// A driver for a device on the broker `config` describes. Nothing is opened until the
    /// first connect, read, write or health check.
    pub fn new(config: MqttDeviceConfig) -> Self {
        let target = config.broker();
        let (changed, _) = watch::channel(());
        Self {
            inner: Arc::new(Inner {
                shared: Arc::new(Shared {
                    config,
                    target,
                    state: Mutex::new(State {
                        phase: Phase::Idle,
                        client: None,
                        topics: HashMap::new(),
                        unsent: HashSet::new(),
                        subscribes_queued: VecDeque::new(),
                        subscribes_sent: HashMap::new(),
                        publishes_queued: VecDeque::new(),
                        publishes_sent: HashMap::new(),
                    }),
                    changed,
                }),
                stop: CancellationToken::new(),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &MqttDeviceConfig {
        &self.inner.shared.config
    }

    /// Subscribes to `topic` (now if connected, else on connect) unless it is known already.
    fn register(&self, topic: &str) -> Result<()> {
        let shared = &self.inner.shared;
        let mut state = shared.lock();
        if state.topics.contains_key(topic) {
            return Ok(());
        }
        if state.topics.len() >= shared.config.max_topics {
            return Err(Error::config(format!(
                "topic {topic:?}: the driver already subscribes to maxTopics {} topics",
                shared.config.max_topics
            )));
        }
        state.topics.insert(
            topic.to_owned(),
            TopicState {
                subscription: Subscription::Pending,
                last: None,
            },
        );
        if matches!(state.phase, Phase::Connected) {
            shared.subscribe(&mut state, vec![topic.to_owned()]);
        }
        Ok(())
    }

    /// Starts the background task if it is not running.
    fn start(&self) -> Result<()> {
        let shared = &self.inner.shared;
        let mut state = shared.lock();
        if state.client.is_some() {
            return Ok(());
        }
        // The fields are public: a configuration built by hand is checked before rumqttc sees
        // it (it panics on a keep-alive under a second).
        shared.config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::Unsupported("the MQTT device driver runs inside a tokio runtime".into())
        })?;
        let config = &shared.config;
        let mut options = MqttOptions::new(&config.client_id, &config.host, config.port);
        options
            .set_keep_alive(config.keep_alive)
            .set_clean_session(true)
            .set_max_packet_size(config.max_packet_bytes, config.max_packet_bytes);
        if let Some((user, password)) = &config.credentials {
            options.set_credentials(user, password);
        }
        let (client, mut eventloop) = AsyncClient::new(options, REQUEST_QUEUE);
        let mut network = eventloop.network_options();
        network.set_connection_timeout(config.timeout.as_secs_f64().ceil().max(1.0) as u64);
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        state.client = Some(client);
        state.phase = Phase::Starting;
        drop(state);
        shared.changed.send_replace(());
        let task = Task {
            shared: shared.clone(),
            eventloop,
            stop: self.inner.stop.clone(),
        };
        runtime.spawn(task.run());
        Ok(())
    }

    /// Waits (at most the timeout) until `done` says the state is final, and returns its
    /// verdict; on timeout, the verdict of `timed_out`.
    async fn wait_for<T>(
        &self,
        mut done: impl FnMut(&State) -> Option<T>,
        timed_out: impl FnOnce(&State) -> T,
    ) -> T {
        let shared = &self.inner.shared;
        let mut changes = shared.changed.subscribe();
        let deadline = Instant::now() + shared.config.timeout;
        loop {
            if let Some(verdict) = done(&shared.lock()) {
                return verdict;
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return timed_out(&shared.lock());
            }
        }
    }

    /// Starts the task if needed and waits while the first connection attempt is under way;
    /// then `Ok(())` if connected, else why not.
    async fn connected(&self) -> Result<()> {
        self.start()?;
        let timeout = self.inner.shared.config.timeout;
        let target = self.inner.shared.target.clone();
        self.wait_for(
            |state| match &state.phase {
                Phase::Connected => Some(Ok(())),
                Phase::Down(e) => Some(Err(e.clone())),
                Phase::Idle | Phase::Starting => None,
            },
            |_| {
                Err(Error::Timeout {
                    operation: format!("connecting to the MQTT broker {target}"),
                    timeout,
                })
            },
        )
        .await
    }

    async fn read_visitor(&self, visitor: &MqttVisitor) -> Result<Value> {
        let Some(topic) = visitor.topic.as_deref() else {
            return Err(Error::Unsupported(format!(
                "reading a write-only property (it has commandTopic {:?} but no topic)",
                visitor.command_topic.as_deref().unwrap_or_default()
            )));
        };
        self.register(topic)?;
        self.connected().await?;
        let data = {
            let state = self.inner.shared.lock();
            let Some(entry) = state.topics.get(topic) else {
                return Err(Error::NoValue(format!("topic {topic:?} is not subscribed")));
            };
            if entry.subscription == Subscription::Refused {
                return Err(Error::Unsupported(format!(
                    "the broker {} refused the subscription to topic {topic:?} (check its \
                     ACL; the driver asks again after each reconnect)",
                    self.inner.shared.target
                )));
            }
            match &entry.last {
                None if entry.subscription == Subscription::Pending => {
                    return Err(Error::NoValue(format!(
                        "subscribing to topic {topic:?}; nothing received yet"
                    )));
                }
                None => {
                    return Err(Error::NoValue(format!(
                        "the device has published nothing on topic {topic:?} since the driver \
                         subscribed"
                    )));
                }
                Some(Received::Rejected { reason }) => {
                    return Err(Error::bad_frame(format!(
                        "the last message on topic {topic:?} {reason}"
                    )));
                }
                Some(Received::Payload { data, at }) => {
                    let age = at.elapsed();
                    if let Some(max_age) = visitor.max_age
                        && age > max_age
                    {
                        return Err(Error::NoValue(format!(
                            "the last message on topic {topic:?} is {} ms old, over maxAge {} \
                             ms",
                            age.as_millis(),
                            max_age.as_millis()
                        )));
                    }
                    data.clone()
                }
            }
        };
        visitor.decode(&data).map_err(|e| match e {
            Error::BadFrame { reason } => Error::bad_frame(format!(
                "the last message on topic {topic:?} is unusable: {reason}"
            )),
            Error::TypeMismatch {
                expected,
                value,
                reason,
            } => Error::TypeMismatch {
                expected,
                value,
                reason: match &visitor.json_path {
                    Some(path) => format!("{reason} (at {path} on topic {topic:?})"),
                    None => format!("{reason} (on topic {topic:?})"),
                },
            },
            other => other,
        })
    }

    async fn write_visitor(&self, visitor: &MqttVisitor, value: &Value) -> Result<()> {
        let Some(topic) = visitor.command_topic.as_deref() else {
            return Err(Error::Unsupported(format!(
                "writing a read-only property (it has topic {:?} but no commandTopic)",
                visitor.topic.as_deref().unwrap_or_default()
            )));
        };
        let shared = &self.inner.shared;
        let config = &shared.config;
        let payload = visitor.encode(value)?;
        // 2 bytes of topic length, 2 of packet id, up to 5 of fixed header.
        let packet = payload.len() + topic.len() + 9;
        if payload.len() > config.max_payload_bytes || packet > config.max_packet_bytes {
            return Err(Error::Unsupported(format!(
                "a {}-byte command on topic {topic:?}: over maxPayloadBytes {} or \
                 maxPacketBytes {}",
                payload.len(),
                config.max_payload_bytes,
                config.max_packet_bytes
            )));
        }
        self.connected().await?;
        let acknowledged = {
            let mut state = shared.lock();
            match &state.phase {
                Phase::Connected => {}
                Phase::Down(e) => return Err(e.clone()),
                Phase::Idle | Phase::Starting => {
                    return Err(Error::lost(&shared.target, "not connected"));
                }
            }
            let Some(client) = &state.client else {
                return Err(Error::lost(&shared.target, "the MQTT client has stopped"));
            };
            match client.try_publish(topic, config.qos.to_rumqttc(), false, payload) {
                Ok(()) => {}
                Err(e) => {
                    return Err(Error::lost(
                        &shared.target,
                        format!("cannot queue the publication on {topic:?}: {e} (queue full)"),
                    ));
                }
            }
            let (tx, rx) = oneshot::channel();
            state.publishes_queued.push_back(tx);
            rx
        };
        let operation = || {
            format!(
                "publishing to topic {topic:?} with QoS {}",
                config.qos.level()
            )
        };
        match tokio::time::timeout(config.timeout, acknowledged).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::lost(&shared.target, "the MQTT client has stopped")),
            Err(_) => Err(Error::Timeout {
                operation: operation(),
                timeout: config.timeout,
            }),
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change under the lock leaves the state consistent, even if a holder panicked.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues SUBSCRIBEs for `topics` on the connected client, in chunks; what cannot be
    /// queued now waits in [`State::unsent`].
    fn subscribe(&self, state: &mut State, topics: Vec<String>) {
        let qos = self.config.qos.to_rumqttc();
        // Keep each SUBSCRIBE well under the packet limit.
        let budget = (self.config.max_packet_bytes / 2).max(1);
        let mut chunks: Vec<Vec<String>> = Vec::new();
        let mut size = 0;
        for topic in topics {
            let len = topic.len() + 3;
            match chunks.last_mut() {
                Some(chunk) if chunk.len() < SUBSCRIBE_CHUNK && size + len <= budget => {
                    size += len;
                    chunk.push(topic);
                }
                _ => {
                    size = len;
                    chunks.push(vec![topic]);
                }
            }
        }
        let Some(client) = state.client.clone() else {
            return;
        };
        let mut failed = false;
        for chunk in chunks {
            for t in &chunk {
                state.unsent.remove(t);
            }
            let filters = chunk.iter().map(|t| SubscribeFilter::new(t.clone(), qos));
            if !failed && client.try_subscribe_many(filters).is_ok() {
                state.subscribes_queued.push_back(chunk);
            } else {
                failed = true;
                state.unsent.extend(chunk);
            }
        }
    }

    /// A connection attempt failed or the connection broke: fail what waited on it.
    fn disconnected(&self, state: &mut State, error: Error) {
        state.phase = Phase::Down(error.clone());
        state.subscribes_queued.clear();
        state.subscribes_sent.clear();
        state.unsent.clear();
        for topic in state.topics.values_mut() {
            if topic.subscription == Subscription::Active {
                topic.subscription = Subscription::Pending;
            }
        }
        let lost = |e: &Error| match e {
            Error::Connect { .. } => Error::lost(&self.target, e),
            other => other.clone(),
        };
        for waiter in state.publishes_queued.drain(..) {
            let _ = waiter.send(Err(lost(&error)));
        }
        for (_, waiter) in state.publishes_sent.drain() {
            let _ = waiter.send(Err(lost(&error)));
        }
    }

    fn on_event(&self, event: Event) {
        let mut state = self.lock();
        let mut notify = false;
        match event {
            Event::Incoming(Incoming::ConnAck(_)) => {
                tracing::debug!(target: "kubeedge_mapper::mqtt_device", broker = %self.target,
                    "connected");
                state.phase = Phase::Connected;
                state.subscribes_queued.clear();
                state.subscribes_sent.clear();
                let topics: Vec<String> = state.topics.keys().cloned().collect();
                for topic in state.topics.values_mut() {
                    if topic.subscription == Subscription::Refused {
                        topic.subscription = Subscription::Pending;
                    }
                }
                self.subscribe(&mut state, topics);
                notify = true;
            }
            Event::Incoming(Incoming::Publish(publish)) => {
                let max = self.config.max_payload_bytes;
                match state.topics.get_mut(&publish.topic) {
                    Some(topic) if publish.payload.len() > max => {
                        tracing::debug!(target: "kubeedge_mapper::mqtt_device",
                            topic = %publish.topic, bytes = publish.payload.len(),
                            "message over maxPayloadBytes");
                        topic.last = Some(Received::Rejected {
                            reason: format!(
                                "was {} bytes, over maxPayloadBytes {max}",
                                publish.payload.len()
                            ),
                        });
                    }
                    Some(topic) => {
                        // A copy: the received Bytes would pin the whole read buffer.
                        topic.last = Some(Received::Payload {
                            data: Bytes::copy_from_slice(&publish.payload),
                            at: Instant::now(),
                        });
                    }
                    None => {
                        tracing::debug!(target: "kubeedge_mapper::mqtt_device",
                            topic = %publish.topic, "message on a topic no property reads");
                    }
                }
            }
            Event::Outgoing(Outgoing::Subscribe(pkid)) => {
                if let Some(chunk) = state.subscribes_queued.pop_front() {
                    state.subscribes_sent.insert(pkid, chunk);
                }
            }
            Event::Incoming(Incoming::SubAck(ack)) => {
                if let Some(chunk) = state.subscribes_sent.remove(&ack.pkid) {
                    for (i, topic) in chunk.iter().enumerate() {
                        let granted = matches!(
                            ack.return_codes.get(i),
                            Some(SubscribeReasonCode::Success(_))
                        );
                        if !granted {
                            tracing::warn!(target: "kubeedge_mapper::mqtt_device",
                                broker = %self.target, %topic, "subscription refused");
                        }
                        if let Some(t) = state.topics.get_mut(topic) {
                            t.subscription = if granted {
                                Subscription::Active
                            } else {
                                Subscription::Refused
                            };
                        }
                    }
                    notify = true;
                }
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(waiter) = state.publishes_queued.pop_front() {
                    if pkid == 0 {
                        let _ = waiter.send(Ok(()));
                    } else {
                        state.publishes_sent.insert(pkid, waiter);
                    }
                }
            }
            Event::Incoming(Incoming::PubAck(ack)) => {
                if let Some(waiter) = state.publishes_sent.remove(&ack.pkid) {
                    let _ = waiter.send(Ok(()));
                }
            }
            Event::Incoming(Incoming::PubComp(comp)) => {
                if let Some(waiter) = state.publishes_sent.remove(&comp.pkid) {
                    let _ = waiter.send(Ok(()));
                }
            }
            _ => {}
        }
        if matches!(state.phase, Phase::Connected) && !state.unsent.is_empty() {
            let topics: Vec<String> = state.unsent.iter().cloned().collect();
            self.subscribe(&mut state, topics);
        }
        drop(state);
        if notify {
            self.changed.send_replace(());
        }
    }

    /// The error a failed `poll` stands for: a failed connection attempt, or a lost
    /// connection.
    fn connection_error(&self, was_connected: bool, error: ConnectionError) -> Error {
        let reason = match &error {
            ConnectionError::MqttState(StateError::Deserialization(
                rumqttc::Error::PayloadSizeLimitExceeded(size),
            )) => format!(
                "the broker sent a {size}-byte packet, over maxPacketBytes {}; MQTT 3.1.1 cannot \
                 skip it, so the connection was closed",
                self.config.max_packet_bytes
            ),
            ConnectionError::ConnectionRefused(code) => {
                format!("the broker refused the connection: {code:?}")
            }
            other => other.to_string(),
        };
        if was_connected {
            return Error::lost(&self.target, reason);
        }
        let kind = match &error {
            ConnectionError::Io(e) => e.kind(),
            ConnectionError::NetworkTimeout => io::ErrorKind::TimedOut,
            ConnectionError::ConnectionRefused(_) => io::ErrorKind::ConnectionRefused,
            _ => io::ErrorKind::Other,
        };
        Error::Connect {
            target: self.target.clone(),
            source: Arc::new(io::Error::new(kind, reason)),
        }
    }
}

/// The background task: polls rumqttc's event loop (which connects, reconnects, reads,
/// writes and pings) and keeps [`State`] in step.
struct Task {
    shared: Arc<Shared>,
    eventloop: EventLoop,
    stop: CancellationToken,
}

impl Task {
    async fn run(mut self) {
        let target = self.shared.target.clone();
        loop {
            let event = tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                event = self.eventloop.poll() => event,
            };
            match event {
                Ok(event) => self.shared.on_event(event),
                Err(e) => {
                    {
                        let mut state = self.shared.lock();
                        let was_connected = matches!(state.phase, Phase::Connected);
                        // Requests queued since the connection broke would go out on the next
                        // one, after their writers were told they failed: drop them (the
                        // session is clean, so rumqttc would drop its pending ones anyway).
                        self.eventloop.clean();
                        self.eventloop.pending.clear();
                        let error = self.shared.connection_error(was_connected, e);
                        if was_connected {
                            tracing::warn!(target: "kubeedge_mapper::mqtt_device",
                                broker = %target, %error, "connection lost");
                        } else {
                            tracing::debug!(target: "kubeedge_mapper::mqtt_device",
                                broker = %target, %error, "cannot connect");
                        }
                        self.shared.disconnected(&mut state, error);
                    }
                    self.shared.changed.send_replace(());
                    tokio::select! {
                        biased;
                        () = self.stop.cancelled() => break,
                        () = tokio::time::sleep(self.shared.config.reconnect_interval) => {}
                    }
                }
            }
        }
        self.goodbye().await;
    }

    /// Says DISCONNECT (bounded in time) if connected, and fails what still waits.
    async fn goodbye(mut self) {
        let client = {
            let mut state = self.shared.lock();
            let client = state.client.take();
            let connected = matches!(state.phase, Phase::Connected);
            self.shared.disconnected(
                &mut state,
                Error::lost(&self.shared.target, "the driver was dropped"),
            );
            client.filter(|_| connected)
        };
        let Some(client) = client else { return };
        if client.try_disconnect().is_err() {
            return;
        }
        let _ = tokio::time::timeout(DISCONNECT_TIMEOUT, async {
            loop {
                match self.eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

impl DeviceDriver for MqttDeviceDriver {
    type Visitor = MqttVisitor;

    /// Parses the property's MQTT visitor ([`MqttVisitor::from_config`]) and subscribes to its
    /// topic (now if connected, else on connect). The visitor's `protocolName`, if given, must
    /// be `mqtt`.
    fn parse_visitor(&self, property: &PropertySpec) -> Result<MqttVisitor> {
        let named = |e: Error| e.in_property(&property.name);
        let protocol = &property.visitor.protocol_name;
        if !protocol.is_empty() && !protocol.eq_ignore_ascii_case("mqtt") {
            return Err(named(Error::config(format!(
                "visitor protocol {protocol:?} is not mqtt"
            ))));
        }
        let visitor =
            MqttVisitor::from_config(property.property_type, &property.visitor.config_data)
                .map_err(named)?;
        if let Some(topic) = &visitor.topic {
            self.register(topic).map_err(named)?;
        }
        Ok(visitor)
    }

    /// Connects (if not connected) and waits, at most the timeout, until the broker has
    /// acknowledged the subscriptions known so far.
    async fn connect(&self) -> Result<()> {
        self.connected().await?;
        let timeout = self.inner.shared.config.timeout;
        let target = self.inner.shared.target.clone();
        self.wait_for(
            |state| match &state.phase {
                Phase::Down(e) => Some(Err(e.clone())),
                Phase::Connected
                    if state
                        .topics
                        .values()
                        .all(|t| t.subscription != Subscription::Pending) =>
                {
                    Some(Ok(()))
                }
                _ => None,
            },
            |_| {
                Err(Error::Timeout {
                    operation: format!("subscribing on the MQTT broker {target}"),
                    timeout,
                })
            },
        )
        .await
    }

    /// Reachable means connected to the broker. (Whether the device itself is alive shows in
    /// its values: `maxAge` makes a silent device's reads fail.)
    async fn health(&self) -> Result<()> {
        self.connected().await
    }

    fn read(&self, visitor: &MqttVisitor) -> impl Future<Output = Result<Value>> + Send {
        self.read_visitor(visitor)
    }

    fn write(
        &self,
        visitor: &MqttVisitor,
        value: &Value,
    ) -> impl Future<Output = Result<()>> + Send {
        self.write_visitor(visitor, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_data::map;
    use serde_json::json;

    #[test]
    fn broker_addresses() {
        for (text, host, port) in [
            ("tcp://127.0.0.1:1884", "127.0.0.1", 1884),
            ("mqtt://broker.local", "broker.local", 1883),
            ("TCP://h:1/", "h", 1),
            ("h:2", "h", 2),
            ("h", "h", 1883),
            ("[::1]:1885", "::1", 1885),
            ("tcp://[fe80::1]", "fe80::1", 1883),
        ] {
            assert_eq!(
                parse_broker(text).unwrap(),
                (host.to_owned(), port),
                "{text}"
            );
        }
        for (text, want) in [
            ("ssl://h:8883", "not supported"),
            ("ws://h", "not supported"),
            ("http://h", "unknown scheme"),
            ("::1", "in brackets"),
            ("h:0", "port \"0\""),
            ("h:99999", "port \"99999\""),
            ("h:x", "port \"x\""),
            ("", "no host"),
            ("tcp://:1883", "no host"),
            ("[::1", "closing bracket"),
            ("tcp://u:p@h:1", "without user"),
            ("tcp://h:1/path", "without user, path"),
        ] {
            let err = parse_broker(text).unwrap_err();
            assert!(err.to_string().contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn protocol_config() {
        let c = MqttDeviceConfig::from_protocol_config(&map(json!({
            "broker": "tcp://127.0.0.1:1884", "clientId": "dev-1", "username": "u",
            "password": "secret", "qos": "2", "keepAlive": 10, "timeout": 250,
            "reconnectInterval": 50, "maxPayloadBytes": 1000, "maxPacketBytes": 5000,
            "maxTopics": 3, "unknown": "ignored"
        })))
        .unwrap();
        assert_eq!(c.broker(), "127.0.0.1:1884");
        assert_eq!(c.client_id, "dev-1");
        assert_eq!(c.credentials, Some(("u".into(), "secret".into())));
        assert_eq!(c.qos, Qos::ExactlyOnce);
        assert_eq!(c.keep_alive, Duration::from_secs(10));
        assert_eq!(c.timeout, Duration::from_millis(250));
        assert_eq!(c.reconnect_interval, Duration::from_millis(50));
        assert_eq!(
            (c.max_payload_bytes, c.max_packet_bytes, c.max_topics),
            (1000, 5000, 3)
        );
        // The password stays out of logs.
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("secret") && debug.contains("\"u\""),
            "{debug}"
        );

        let c = MqttDeviceConfig::from_protocol_config(&map(json!({"ip": "::1", "port": 1999})))
            .unwrap();
        assert_eq!(c.broker(), "[::1]:1999");
        assert_eq!(c.qos, Qos::AtLeastOnce);
        assert!(c.client_id.starts_with("kubeedge-mapper-"));
        let other = MqttDeviceConfig::new("h").unwrap();
        assert_ne!(c.client_id, other.client_id);
        let c = MqttDeviceConfig::from_protocol_config(&map(json!({"brokerURL": "h"}))).unwrap();
        assert_eq!(
            (c.broker(), c.timeout, c.max_payload_bytes),
            ("h:1883".into(), DEFAULT_TIMEOUT, DEFAULT_MAX_PAYLOAD_BYTES)
        );
    }

    #[test]
    fn bad_protocol_configs_say_what_is_wrong() {
        for (config, want) in [
            (json!({}), "no broker"),
            (json!({"broker": ["h"]}), "broker: expected a string"),
            (json!({"ip": ""}), "ip is empty"),
            (json!({"ip": "h", "port": 0}), "port 0 is out of range"),
            (json!({"broker": "h", "qos": 3}), "qos 3 is out of range"),
            (json!({"broker": "h", "keepAlive": 0}), "keepAlive 0"),
            (json!({"broker": "h", "clientId": ""}), "clientId must be"),
            (
                json!({"broker": "h", "password": "p"}),
                "without a username",
            ),
            (
                json!({"broker": "h", "timeout": "soon"}),
                "timeout: expected",
            ),
            (
                json!({"broker": "h", "maxPayloadBytes": 10, "maxPacketBytes": 5}),
                "below maxPayloadBytes",
            ),
            (json!({"broker": "h", "maxTopics": 0}), "maxTopics 0"),
        ] {
            let err = MqttDeviceConfig::from_protocol_config(&map(config.clone())).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{config}: {err}");
            assert!(err.to_string().contains(want), "{config}: {err}");
        }
    }

    #[test]
    fn visitor_config() {
        let v = MqttVisitor::from_config(
            PropertyType::Int,
            &map(
                json!({"topic": "dev/state", "jsonPath": "$.sensors.temp", "maxAge": "1500",
                        "commandTopic": "dev/set", "commandTemplate": "{\"set\":{{value}}}",
                        "qos": 1, "clientId": "ignored"}),
            ),
        )
        .unwrap();
        assert_eq!(v.topic.as_deref(), Some("dev/state"));
        assert_eq!(v.json_path.as_ref().unwrap().to_string(), "sensors.temp");
        assert_eq!(v.max_age, Some(Duration::from_millis(1500)));
        assert_eq!(v.command_topic.as_deref(), Some("dev/set"));
        assert_eq!(
            v.decode(br#"{"sensors":{"temp":21}}"#).unwrap(),
            Value::Int(21)
        );
        assert_eq!(v.encode(&Value::Int(30)).unwrap(), br#"{"set":30}"#);
        let err = v.encode(&Value::Float(30.0)).unwrap_err();
        assert!(matches!(err, Error::TypeMismatch { .. }), "{err}");
        let err = v.decode(b"hello").unwrap_err();
        assert!(err.to_string().contains("is not JSON"), "{err}");

        // Raw: the payload is the value; a raw write is the value's text, or its bytes.
        let raw = MqttVisitor::from_config(
            PropertyType::Bytes,
            &map(json!({"topic": "dev/blob", "commandTopic": "dev/blob/set", "jsonPath": ""})),
        )
        .unwrap();
        assert_eq!(raw.json_path, None);
        assert_eq!(raw.decode(&[0, 255]).unwrap(), Value::Bytes(vec![0, 255]));
        assert_eq!(raw.encode(&Value::Bytes(vec![9])).unwrap(), [9]);

        for (t, config, want) in [
            (PropertyType::Int, json!({}), "neither topic"),
            (PropertyType::Int, json!({"topic": ""}), "neither topic"),
            (PropertyType::Int, json!({"topic": "a/+/b"}), "wildcards"),
            (PropertyType::Int, json!({"topic": "a/#"}), "wildcards"),
            (
                PropertyType::Int,
                json!({"commandTopic": "a/#"}),
                "wildcards",
            ),
            (PropertyType::Int, json!({"topic": "a\u{0}"}), "NUL"),
            (
                PropertyType::Int,
                json!({"topic": "a", "jsonPath": "a..b"}),
                "empty key",
            ),
            (
                PropertyType::Int,
                json!({"commandTopic": "a", "commandTemplate": "SET"}),
                "no {{value}}",
            ),
            (
                PropertyType::Int,
                json!({"topic": "a", "maxAge": 0}),
                "maxAge 0",
            ),
            (PropertyType::Int, json!({"topic": 5}), ""),
            (PropertyType::Stream, json!({"topic": "a"}), "STREAM"),
        ] {
            match MqttVisitor::from_config(t, &map(config.clone())) {
                Err(err) => {
                    assert!(!err.is_retryable(), "{config}: {err}");
                    assert!(err.to_string().contains(want), "{config}: {err}");
                }
                // A number is a fine topic name ("5").
                Ok(v) => assert_eq!(v.topic.as_deref(), Some("5"), "{config}"),
            }
        }
    }

    #[test]
    fn parse_visitor_names_the_property_and_bounds_the_topics() {
        let mut config = MqttDeviceConfig::new("127.0.0.1:1").unwrap();
        config.max_topics = 2;
        let driver = MqttDeviceDriver::new(config);
        let spec = |name: &str, protocol: &str, topic: &str| {
            PropertySpec::from_json(
                name,
                "INT",
                json!({"protocolName": protocol, "configData": {"topic": topic}}),
            )
            .unwrap()
        };
        driver.parse_visitor(&spec("a", "mqtt", "t/1")).unwrap();
        driver.parse_visitor(&spec("b", "", "t/2")).unwrap();
        // A topic already known does not count again.
        driver.parse_visitor(&spec("c", "MQTT", "t/1")).unwrap();
        let err = driver.parse_visitor(&spec("d", "mqtt", "t/3")).unwrap_err();
        assert!(
            err.to_string().contains("property d") && err.to_string().contains("maxTopics 2"),
            "{err}"
        );
        let err = driver
            .parse_visitor(&spec("e", "modbus", "t/1"))
            .unwrap_err();
        assert!(err.to_string().contains("property e"), "{err}");
        assert!(err.to_string().contains("not mqtt"), "{err}");
    }

    #[tokio::test]
    async fn a_config_built_by_hand_is_checked_before_use() {
        let mut config = MqttDeviceConfig::new("127.0.0.1:1").unwrap();
        config.keep_alive = Duration::from_millis(500);
        let driver = MqttDeviceDriver::new(config);
        let err = driver.connect().await.unwrap_err();
        assert!(
            matches!(err, Error::Config(_)) && err.to_string().contains("keepAlive 500ms"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_broker_is_a_retryable_connect_error() {
        // Port 1 on localhost: nothing listens there.
        let mut config = MqttDeviceConfig::new("127.0.0.1:1").unwrap();
        config.timeout = Duration::from_secs(5);
        let driver = MqttDeviceDriver::new(config);
        let v = driver
            .parse_visitor(
                &PropertySpec::from_json(
                    "t",
                    "INT",
                    json!({"configData": {"topic": "t", "commandTopic": "c"}}),
                )
                .unwrap(),
            )
            .unwrap();
        for err in [
            driver.connect().await.unwrap_err(),
            driver.health().await.unwrap_err(),
            driver.read(&v).await.unwrap_err(),
            driver.write(&v, &Value::Int(1)).await.unwrap_err(),
        ] {
            assert!(matches!(err, Error::Connect { .. }), "{err}");
            assert!(err.is_retryable());
            assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
        }
        // The type is checked before anything is sent.
        let err = driver.write(&v, &Value::Boolean(true)).await.unwrap_err();
        assert!(matches!(err, Error::TypeMismatch { .. }), "{err}");
    }
}
