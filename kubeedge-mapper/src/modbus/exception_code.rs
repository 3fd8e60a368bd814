//! Modbus exception codes, a leaf the error type and the links both use.

use std::fmt;

/// A Modbus exception code (Modbus application protocol §7), with its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExceptionCode {
    /// 0x01: the function is not supported.
    IllegalFunction,
    /// 0x02: the address (or address range) does not exist on the device.
    IllegalDataAddress,
    /// 0x03: a value in the request is not allowed.
    IllegalDataValue,
    /// 0x04: the device failed while performing the request.
    ServerDeviceFailure,
    /// 0x05: accepted, but it will take long; ask again later.
    Acknowledge,
    /// 0x06: the device is busy; ask again later.
    ServerDeviceBusy,
    /// 0x07: the device cannot perform the program function.
    NegativeAcknowledge,
    /// 0x08: the device found a parity error in its memory.
    MemoryParityError,
    /// 0x0A: a gateway has no path to the target.
    GatewayPathUnavailable,
    /// 0x0B: a gateway's target did not respond.
    GatewayTargetFailedToRespond,
    /// A code the specification does not define.
    Other(u8),
}

impl ExceptionCode {
    /// The code for a byte from the wire.
    pub fn from_code(code: u8) -> Self {
        match code {
            0x01 => Self::IllegalFunction,
            0x02 => Self::IllegalDataAddress,
            0x03 => Self::IllegalDataValue,
            0x04 => Self::ServerDeviceFailure,
            0x05 => Self::Acknowledge,
            0x06 => Self::ServerDeviceBusy,
            0x07 => Self::NegativeAcknowledge,
            0x08 => Self::MemoryParityError,
            0x0A => Self::GatewayPathUnavailable,
            0x0B => Self::GatewayTargetFailedToRespond,
            other => Self::Other(other),
        }
    }

    /// The byte on the wire.
    pub fn code(self) -> u8 {
        match self {
            Self::IllegalFunction => 0x01,
            Self::IllegalDataAddress => 0x02,
            Self::IllegalDataValue => 0x03,
            Self::ServerDeviceFailure => 0x04,
            Self::Acknowledge => 0x05,
            Self::ServerDeviceBusy => 0x06,
            Self::NegativeAcknowledge => 0x07,
            Self::MemoryParityError => 0x08,
            Self::GatewayPathUnavailable => 0x0A,
            Self::GatewayTargetFailedToRespond => 0x0B,
            Self::Other(code) => code,
        }
    }

    /// The specification's name, e.g. `IllegalDataAddress`.
    pub fn name(self) -> &'static str {
        match self {
            Self::IllegalFunction => "IllegalFunction",
            Self::IllegalDataAddress => "IllegalDataAddress",
            Self::IllegalDataValue => "IllegalDataValue",
            Self::ServerDeviceFailure => "ServerDeviceFailure",
            Self::Acknowledge => "Acknowledge",
            Self::ServerDeviceBusy => "ServerDeviceBusy",
            Self::NegativeAcknowledge => "NegativeAcknowledge",
            Self::MemoryParityError => "MemoryParityError",
            Self::GatewayPathUnavailable => "GatewayPathUnavailable",
            Self::GatewayTargetFailedToRespond => "GatewayTargetFailedToRespond",
            Self::Other(_) => "Unknown",
        }
    }

    /// Whether the exception means "try again later" rather than "this request is wrong".
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::Acknowledge | Self::ServerDeviceBusy | Self::GatewayTargetFailedToRespond
        )
    }
}

impl fmt::Display for ExceptionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:#04x})", self.name(), self.code())
    }
}
