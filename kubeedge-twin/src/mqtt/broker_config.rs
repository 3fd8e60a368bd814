//! The embedded broker's limits and credentials ([`BrokerConfig`]).
//!
//! Outside the `embedded-broker` feature so that [`MqttConfig`](super::MqttConfig) can carry
//! it in every build.

use std::time::Duration;

use crate::{Error, Result};

/// Limits and credentials of the embedded MQTT broker. Every limit, when hit, is logged as a
/// WARN line with the client's address and the limit (at most once per limit per 10 s, with the
/// number of hits not logged since) and counted in the broker's `BrokerStats`.
///
/// The listen address and the largest packet are not here: they are
/// [`MqttConfig::internal`](super::MqttConfig::internal) (KubeEdge's default
/// `127.0.0.1:1884`, loopback only) and [`MqttConfig::max_payload`](super::MqttConfig).
///
/// ```
/// use kubeedge_twin::mqtt::{BrokerAuth, BrokerConfig};
///
/// let config = BrokerConfig {
///     max_clients: 32,
///     auth: Some(BrokerAuth::new("mapper", "s3cret")),
///     ..BrokerConfig::default()
/// };
/// config.validate().unwrap();
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerConfig {
    /// How long a new connection may take to send its CONNECT (default 10 s).
    pub connect_timeout: Duration,
    /// Connections that have not sent a valid CONNECT yet (default 64). One more closes the
    /// oldest of them, so idle sockets cannot keep honest clients out.
    pub max_pending: usize,
    /// Connected clients (default 256). Counted from a valid CONNECT on; one more gets CONNACK
    /// 0x03 "server unavailable".
    pub max_clients: usize,
    /// Topic filters one client may hold (default 256); a SUBSCRIBE to one more gets the
    /// failure code 0x80 in its SUBACK for that filter.
    pub max_subscriptions_per_client: usize,
    /// Distinct topic filters in the whole broker (default 4096); a new filter beyond it gets
    /// SUBACK 0x80.
    pub max_filters: usize,
    /// The longest topic filter accepted, in bytes (default 1024); a longer one gets SUBACK
    /// 0x80. KubeEdge's filters are under 100 bytes.
    pub max_filter_len: usize,
    /// Bytes of messages queued for one client that is slow to read (default 2 MiB; one
    /// message is always accepted into an empty queue, whatever its size). When full, QoS 0
    /// messages for it are dropped and a QoS 1 message disconnects it.
    pub max_queued_bytes: usize,
    /// QoS 1 messages sent to one client and not acknowledged yet (default 64); more wait in
    /// its queue. Also the QoS 2 messages from one client not released yet: one more closes it.
    pub max_inflight: usize,
    /// How long writing to a client may block (the client does not read) before it is
    /// disconnected (default 30 s).
    pub write_timeout: Duration,
    /// The user name and password every client must send (default none: no authentication,
    /// which is why the broker listens on loopback by default).
    pub auth: Option<BrokerAuth>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            max_pending: 64,
            max_clients: 256,
            max_subscriptions_per_client: 256,
            max_filters: 4096,
            max_filter_len: 1024,
            max_queued_bytes: 2 * 1024 * 1024,
            max_inflight: 64,
            write_timeout: Duration::from_secs(30),
            auth: None,
        }
    }
}

impl BrokerConfig {
    /// Checks that every limit lets at least one client do something.
    pub fn validate(&self) -> Result<()> {
        let counts = [
            ("max_pending", self.max_pending),
            ("max_clients", self.max_clients),
            (
                "max_subscriptions_per_client",
                self.max_subscriptions_per_client,
            ),
            ("max_filters", self.max_filters),
            ("max_filter_len", self.max_filter_len),
            ("max_queued_bytes", self.max_queued_bytes),
        ];
        for (name, value) in counts {
            if value == 0 {
                return Err(Error::Validation(format!(
                    "embedded broker: {name} must be at least 1"
                )));
            }
        }
        if self.max_inflight == 0 || self.max_inflight > 65_000 {
            return Err(Error::Validation(
                "embedded broker: max_inflight must be between 1 and 65000".into(),
            ));
        }
        if self.connect_timeout.is_zero() || self.write_timeout.is_zero() {
            return Err(Error::Validation(
                "embedded broker: connect_timeout and write_timeout must not be zero".into(),
            ));
        }
        Ok(())
    }
}

/// The credentials clients of the embedded broker must present in their CONNECT. A wrong pair
/// gets CONNACK 0x04 "bad user name or password", none at all 0x05 "not authorized".
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerAuth {
    /// The user name.
    pub username: String,
    /// The password (compared in constant time).
    pub password: String,
}

impl BrokerAuth {
    /// Credentials from a user name and a password.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }

    /// Whether `username` and `password` are these credentials; the time taken does not depend
    /// on where they differ.
    pub fn accepts(&self, username: &str, password: &str) -> bool {
        // `&` not `&&`: both comparisons always run.
        constant_time_eq(self.username.as_bytes(), username.as_bytes())
            & constant_time_eq(self.password.as_bytes(), password.as_bytes())
    }
}

impl std::fmt::Debug for BrokerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    // Walk the expected value's length whatever the other's is.
    for (i, x) in a.iter().enumerate() {
        let y = b.get(i).copied().unwrap_or(!*x);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials() {
        let auth = BrokerAuth::new("u", "secret");
        assert!(auth.accepts("u", "secret"));
        for (u, p) in [
            ("u", "secreT"),
            ("u", "secre"),
            ("u", "secrets"),
            ("v", "secret"),
            ("", ""),
        ] {
            assert!(!auth.accepts(u, p), "{u}:{p}");
        }
        assert!(!format!("{auth:?}").contains("secret"));
    }

    #[test]
    fn defaults_are_valid_and_zero_is_not() {
        BrokerConfig::default().validate().unwrap();
        assert!(
            BrokerConfig {
                max_clients: 0,
                ..BrokerConfig::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            BrokerConfig {
                max_inflight: 0,
                ..BrokerConfig::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            BrokerConfig {
                connect_timeout: Duration::ZERO,
                ..BrokerConfig::default()
            }
            .validate()
            .is_err()
        );
    }
}
