//! The crate's error type.

// The constructors and tests below serve the drivers and the runtime: without their features
// some have no caller.
#![cfg_attr(
    not(all(
        feature = "modbus",
        feature = "mqtt",
        feature = "serial",
        feature = "runtime"
    )),
    allow(dead_code)
)]

use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "modbus")]
use crate::modbus::exception_code::ExceptionCode;
use crate::property_type::{PropertyType, UnknownPropertyType};

/// A `Result` whose error defaults to this crate's [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<UnknownPropertyType> for Error {
    fn from(e: UnknownPropertyType) -> Self {
        Self::Config(e.to_string())
    }
}

/// Everything a device driver can fail with. Each variant says what failed;
/// [`Error::is_retryable`] says whether trying the same request again can help.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A protocol or visitor configuration that cannot work (a missing key, a register type
    /// that does not exist, a limit the property type cannot use...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A value that does not fit the property type: a twin string that does not parse as the
    /// type, a typed value of another type, or a number too large for the registers.
    #[error("value {value:?} does not fit property type {expected}: {reason}")]
    TypeMismatch {
        /// The property type the value had to fit.
        expected: PropertyType,
        /// The value, as text.
        value: String,
        /// Why it does not fit.
        reason: String,
    },
    /// Something the driver cannot do for this property (writing an input register, a STREAM
    /// property over Modbus...).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Connecting to the device (a TCP connect, opening a serial port) failed.
    #[error("cannot connect to {target}: {source}")]
    Connect {
        /// The address or serial port.
        target: String,
        /// The underlying error.
        source: Arc<std::io::Error>,
    },
    /// An established connection failed or was closed by the peer.
    #[error("connection to {target} lost: {reason}")]
    ConnectionLost {
        /// The address or serial port.
        target: String,
        /// What happened.
        reason: String,
    },
    /// The device did not answer (completely) in time.
    #[error("no complete response to {operation} within {timeout:?}")]
    Timeout {
        /// The request that went unanswered.
        operation: String,
        /// The time it had.
        timeout: Duration,
    },
    /// The device answered with a Modbus exception response.
    #[cfg(feature = "modbus")]
    #[error("Modbus exception {code} in answer to function {function:#04x}")]
    ModbusException {
        /// The request's function code (without the exception bit 0x80).
        function: u8,
        /// The exception code, with its name.
        code: ExceptionCode,
    },
    /// A response that is not a valid answer to the request. Modbus: wrong CRC, a short,
    /// oversized or garbled frame, another unit's or transaction's answer (the link was
    /// resynchronised (RTU) or closed (TCP) before this error was returned, so only this request
    /// failed). Serial line: an answer line that is too long, not text, or does not match the
    /// property's regex, field or `expect`. MQTT device: a message that is too large, not JSON,
    /// or lacks the property's JSON path.
    #[error("bad response: {reason}")]
    BadFrame {
        /// What was wrong with it.
        reason: String,
    },
    /// No current value to read: a device that publishes its readings on its own (MQTT) has
    /// not published one since the driver subscribed, or its last one is older than the
    /// property's maximum age.
    #[error("no current value: {0}")]
    NoValue(String),
    /// A Device or DeviceModel (from a YAML file or from DMI) that the mapper runtime cannot
    /// run: malformed YAML, a missing field, an unknown property type, a visitor the driver
    /// refuses. Only that device is refused; the others run.
    #[error("{origin}: {object}: {reason}")]
    InvalidDevice {
        /// Where it came from: the file path, or `DMI`.
        origin: String,
        /// Which object: `Device default/thermo-1`, `DeviceModel default/thermo-model`, or
        /// `document 3` when the YAML is too broken to name it.
        object: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading a file, or binding or connecting a unix socket, failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or socket path.
        path: String,
        /// The underlying error.
        source: Arc<std::io::Error>,
    },
    /// The edge did not take a report or a registration: the MQTT broker is unreachable,
    /// edgecore's DMI socket refused or timed out a call.
    #[error("{operation}: {reason}")]
    Edge {
        /// What was attempted (`MQTT publish ...`, `DMI MapperRegister`...).
        operation: String,
        /// Why it failed.
        reason: String,
    },
    /// The mapper runtime has stopped; its handle can no longer change it.
    #[error("the mapper runtime has stopped")]
    Stopped,
}

impl Error {
    /// Whether the same request may succeed if tried again: timeouts, lost or refused
    /// connections, garbled frames or messages, a device that has not published a (recent)
    /// value yet, the Modbus exceptions that mean "busy, try later" (`ServerDeviceBusy`,
    /// `Acknowledge`, `GatewayTargetFailedToRespond`), and a report the edge did not take.
    /// Configuration errors, type mismatches, invalid devices and the other Modbus exceptions
    /// (`IllegalDataAddress`...) will fail the same way every time.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect { .. }
            | Self::ConnectionLost { .. }
            | Self::Timeout { .. }
            | Self::BadFrame { .. }
            | Self::NoValue(_) => true,
            #[cfg(feature = "modbus")]
            Self::ModbusException { code, .. } => code.is_transient(),
            Self::Config(_) | Self::TypeMismatch { .. } | Self::Unsupported(_) => false,
            Self::Edge { .. } => true,
            Self::InvalidDevice { .. } | Self::Io { .. } | Self::Stopped => false,
        }
    }

    /// Whether the device did not answer at all: a connection that could not be made or was
    /// lost (refused, reset, closed), or a request that timed out. The mapper runtime reports
    /// such a device `offline` and reconnects with growing pauses; every other read error
    /// means the device answered, and only that property is failing (the device is
    /// `unhealthy`).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. } | Self::ConnectionLost { .. } | Self::Timeout { .. }
        )
    }

    /// Whether this error comes from the configuration rather than from the device: the
    /// same request fails the same way until the Device or DeviceModel changes.
    pub(crate) fn is_config(&self) -> bool {
        matches!(self, Self::Config(_) | Self::Unsupported(_))
    }

    /// Whether the connection that produced this error can no longer be trusted and must be
    /// re-established before the next request.
    pub(crate) fn breaks_connection(&self) -> bool {
        matches!(self, Self::ConnectionLost { .. })
    }

    pub(crate) fn config(reason: impl Into<String>) -> Self {
        Self::Config(reason.into())
    }

    pub(crate) fn bad_frame(reason: impl Into<String>) -> Self {
        Self::BadFrame {
            reason: reason.into(),
        }
    }

    pub(crate) fn mismatch(
        expected: PropertyType,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self::TypeMismatch {
            expected,
            value: value.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid_device(
        origin: impl Into<String>,
        object: impl Into<String>,
        reason: impl std::fmt::Display,
    ) -> Self {
        Self::InvalidDevice {
            origin: origin.into(),
            object: object.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_string(),
            source: Arc::new(source),
        }
    }

    pub(crate) fn edge(operation: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self::Edge {
            operation: operation.into(),
            reason: reason.to_string(),
        }
    }

    /// A configuration or unsupported-feature error with `property` named at its front (for a
    /// visitor that failed to parse); any other error as it is.
    pub(crate) fn in_property(self, property: &str) -> Self {
        match self {
            Self::Config(reason) => Self::Config(format!("property {property}: {reason}")),
            Self::Unsupported(reason) => {
                Self::Unsupported(format!("property {property}: {reason}"))
            }
            other => other,
        }
    }

    pub(crate) fn lost(target: &str, reason: impl std::fmt::Display) -> Self {
        Self::ConnectionLost {
            target: target.to_owned(),
            reason: reason.to_string(),
        }
    }
}
