//! Modbus protocol and visitor configuration, parsed from KubeEdge's `configData` maps.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde_json::{Map, Value as Json};

use crate::config_data::{boolean, float, integer, nested, string};
use crate::driver::PropertyType;
use crate::error::{Error, Result};
use crate::serial_port::{Parity, PortSettings};

/// How long a request may take before it fails with [`Error::Timeout`] (KubeEdge's Modbus
/// mapper uses 5 s too).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// How many times a request that failed with a retryable error is tried again.
pub const DEFAULT_RETRIES: u32 = 2;
/// The pause before trying again.
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_millis(100);
/// How long an RTU response may pause between two bytes before it counts as a short frame.
pub const DEFAULT_BYTE_TIMEOUT: Duration = Duration::from_millis(100);

/// Everything a [`ModbusDriver`](super::ModbusDriver) needs to reach one device.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusConfig {
    /// TCP or RTU, and where.
    pub transport: Transport,
    /// The unit (slave) id requests go to.
    pub slave_id: u8,
    /// The time one request (and the connect before it) may take.
    pub timeout: Duration,
    /// Extra attempts for requests that failed with a retryable error
    /// ([`Error::is_retryable`]); 0 tries once.
    pub retries: u32,
    /// The pause between attempts.
    pub retry_delay: Duration,
}

/// The link to the device.
#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    /// Modbus TCP to `address` (`host:port`).
    Tcp {
        /// `host:port`; the host may be a name, an IPv4 address or a bracketed IPv6 address.
        address: String,
    },
    /// Modbus RTU on a serial line.
    Rtu(SerialConfig),
}

impl Transport {
    /// The address or serial port, for messages.
    pub fn target(&self) -> &str {
        match self {
            Self::Tcp { address } => address,
            Self::Rtu(serial) => &serial.path,
        }
    }
}

/// Serial line settings for Modbus RTU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialConfig {
    /// The device path (`/dev/ttyUSB0`, or a pty).
    pub path: String,
    /// Bits per second.
    pub baud_rate: u32,
    /// 5 to 8.
    pub data_bits: u8,
    /// Parity bit.
    pub parity: Parity,
    /// 1 or 2.
    pub stop_bits: u8,
    /// How long a response may pause between two bytes before it is rejected as a short frame.
    /// The Modbus specification allows 1.5 character times; USB adapters and ptys deliver
    /// bytes in bursts, so the default ([`DEFAULT_BYTE_TIMEOUT`]) is generous.
    pub byte_timeout: Duration,
}

impl SerialConfig {
    /// 8 data bits, no parity, 1 stop bit (KubeEdge's defaults) at `baud_rate`.
    pub fn new(path: impl Into<String>, baud_rate: u32) -> Self {
        Self {
            path: path.into(),
            baud_rate,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
            byte_timeout: DEFAULT_BYTE_TIMEOUT,
        }
    }

    /// Bits on the wire per character: start bit, data bits, parity bit, stop bits.
    pub fn bits_per_char(&self) -> u32 {
        1 + u32::from(self.data_bits)
            + u32::from(self.parity != Parity::None)
            + u32::from(self.stop_bits)
    }

    /// The silence that separates two RTU frames: 3.5 character times at the baud rate, and a
    /// fixed 1.75 ms above 19200 baud (Modbus over serial line, §2.5.1.1).
    pub fn inter_frame_silence(&self) -> Duration {
        if self.baud_rate > 19_200 || self.baud_rate == 0 {
            return Duration::from_micros(1750);
        }
        let micros = 3_500_000 * u64::from(self.bits_per_char()) / u64::from(self.baud_rate);
        Duration::from_micros(micros)
    }

    fn validate(&self) -> Result<()> {
        self.port().validate()
    }

    /// The port settings, for checking and opening the port.
    pub(crate) fn port(&self) -> PortSettings<'_> {
        PortSettings {
            path: &self.path,
            baud_rate: self.baud_rate,
            data_bits: self.data_bits,
            parity: self.parity,
            stop_bits: self.stop_bits,
        }
    }
}

impl ModbusConfig {
    /// Modbus TCP to `address` (`host:port`), unit `slave_id`, with the default timeout and
    /// retries.
    pub fn tcp(address: impl Into<String>, slave_id: u8) -> Self {
        Self::with_transport(
            Transport::Tcp {
                address: address.into(),
            },
            slave_id,
        )
    }

    /// Modbus RTU on `serial`, slave `slave_id`, with the default timeout and retries.
    pub fn rtu(serial: SerialConfig, slave_id: u8) -> Self {
        Self::with_transport(Transport::Rtu(serial), slave_id)
    }

    fn with_transport(transport: Transport, slave_id: u8) -> Self {
        Self {
            transport,
            slave_id,
            timeout: DEFAULT_TIMEOUT,
            retries: DEFAULT_RETRIES,
            retry_delay: DEFAULT_RETRY_DELAY,
        }
    }

    /// The same configuration with another per-request timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The same configuration with another number of retries.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Parses a Device's `spec.protocol.configData` as KubeEdge's Modbus mapper reads it:
    ///
    /// - `slaveID`: the unit id (0 to 255 over TCP, 1 to 247 over RTU);
    /// - TCP: `ip` and `port` (default 502);
    /// - RTU: `serialPort`, `baudRate` (default 19200), `dataBits` (8), `parity`
    ///   (`none`/`even`/`odd`, default none), `stopBits` (1);
    /// - the v1alpha2 nesting `tcp: {ip, port}` and `com: {serialPort, ...}` is read too;
    /// - `timeout`: per-request timeout in **milliseconds** (default 5000). KubeEdge's v1.15
    ///   mapper hands this number to Go as a `time.Duration`, i.e. nanoseconds, which cannot
    ///   have been meant; milliseconds is this crate's reading.
    ///
    /// Numbers may be JSON numbers or numeric strings (DMI delivers some as strings). A
    /// serial port wins over an IP address when both are given, as in KubeEdge.
    pub fn from_protocol_config(config_data: &Map<String, Json>) -> Result<Self> {
        let com = nested(config_data, "com")?;
        let tcp = nested(config_data, "tcp")?;
        let pick = |key: &str, inner: Option<&Map<String, Json>>| -> Option<Json> {
            config_data
                .get(key)
                .or_else(|| inner.and_then(|m| m.get(key)))
                .filter(|v| !v.is_null())
                .cloned()
        };
        let slave = match config_data.get("slaveID").filter(|v| !v.is_null()) {
            Some(v) => integer("slaveID", v, 0, 255)?,
            None => 1,
        } as u8;

        let serial_port = pick("serialPort", com)
            .map(|v| string("serialPort", &v))
            .transpose()?
            .filter(|p| !p.is_empty());
        let mut config = if let Some(path) = serial_port {
            let int = |key: &str, default: i64, min: i64, max: i64| -> Result<i64> {
                pick(key, com).map_or(Ok(default), |v| integer(key, &v, min, max))
            };
            let serial = SerialConfig {
                baud_rate: int("baudRate", 19_200, 1, i64::from(u32::MAX))? as u32,
                data_bits: int("dataBits", 8, 5, 8)? as u8,
                stop_bits: int("stopBits", 1, 1, 2)? as u8,
                parity: match pick("parity", com) {
                    Some(v) => string("parity", &v)?.parse()?,
                    None => Parity::None,
                },
                ..SerialConfig::new(path, 19_200)
            };
            serial.validate()?;
            if !(1..=247).contains(&slave) {
                return Err(Error::config(format!(
                    "slaveID {slave}: an RTU slave address is 1 to 247"
                )));
            }
            Self::rtu(serial, slave)
        } else if let Some(ip) = pick("ip", tcp) {
            let ip = string("ip", &ip)?;
            if ip.is_empty() {
                return Err(Error::config("ip is empty"));
            }
            let port = match pick("port", tcp) {
                Some(v) => integer("port", &v, 1, 65_535)?,
                None => 502,
            };
            let host = if ip.contains(':') && !ip.starts_with('[') {
                format!("[{ip}]")
            } else {
                ip
            };
            Self::tcp(format!("{host}:{port}"), slave)
        } else {
            return Err(Error::config(
                "protocol configData has neither serialPort (RTU) nor ip (TCP)",
            ));
        };
        if let Some(v) = config_data.get("timeout").filter(|v| !v.is_null()) {
            let millis = integer("timeout", v, 1, 3_600_000)?;
            config.timeout = Duration::from_millis(millis as u64);
        }
        Ok(config)
    }
}

/// The four Modbus data tables, by KubeEdge's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegisterType {
    /// `CoilRegister`: read/write bits (functions 1, 5, 15).
    Coil,
    /// `DiscreteInputRegister`: read-only bits (function 2).
    DiscreteInput,
    /// `HoldingRegister`: read/write 16-bit registers (functions 3, 6, 16).
    Holding,
    /// `InputRegister`: read-only 16-bit registers (function 4).
    Input,
}

impl RegisterType {
    /// KubeEdge's name: `CoilRegister`, `DiscreteInputRegister`, `HoldingRegister`,
    /// `InputRegister`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Coil => "CoilRegister",
            Self::DiscreteInput => "DiscreteInputRegister",
            Self::Holding => "HoldingRegister",
            Self::Input => "InputRegister",
        }
    }

    /// Whether the table holds bits (coils, discrete inputs) rather than 16-bit registers.
    pub const fn is_bits(self) -> bool {
        matches!(self, Self::Coil | Self::DiscreteInput)
    }

    /// Whether the table can be written (coils, holding registers).
    pub const fn is_writable(self) -> bool {
        matches!(self, Self::Coil | Self::Holding)
    }
}

impl fmt::Display for RegisterType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RegisterType {
    type Err = Error;

    /// KubeEdge's names, in any case.
    fn from_str(s: &str) -> Result<Self> {
        [Self::Coil, Self::DiscreteInput, Self::Holding, Self::Input]
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                Error::config(format!(
                    "register {s:?} (expected CoilRegister, DiscreteInputRegister, HoldingRegister \
                 or InputRegister)"
                ))
            })
    }
}

/// Where and how a property lives in a Modbus device: KubeEdge's Modbus visitor
/// (`visitors.configData`), plus the property type it is decoded as.
///
/// Build it with [`ModbusVisitor::new`] or [`ModbusVisitor::from_config`] (both check it);
/// its encoding and decoding rules are on [`ModbusVisitor::decode_registers`].
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusVisitor {
    /// The DeviceModel type the value is decoded as.
    pub property_type: PropertyType,
    /// The data table.
    pub register: RegisterType,
    /// The first address (0-based, as on the wire).
    pub offset: u16,
    /// How many registers or bits.
    pub limit: u16,
    /// Multiplier applied after decoding numbers (the device's raw value times `scale` is the
    /// property value) and divided out before encoding. Default 1.
    pub scale: f64,
    /// `isSwap`: swap the two bytes of each register.
    pub is_swap: bool,
    /// `isRegisterSwap`: reverse the order of the registers (word order).
    pub is_register_swap: bool,
    /// `signed` (an extension KubeEdge ignores): read 1- and 2-register INTs as two's
    /// complement. KubeEdge reads them unsigned, the default here.
    pub signed: bool,
}

/// Most bits one read may ask for (Modbus application protocol §6.1).
pub(crate) const MAX_READ_BITS: u16 = 2000;
/// Most registers one read may ask for (§6.3).
pub(crate) const MAX_READ_REGISTERS: u16 = 125;
/// Most coils one write may carry (§6.11).
pub(crate) const MAX_WRITE_BITS: u16 = 1968;
/// Most registers one write may carry (§6.12).
pub(crate) const MAX_WRITE_REGISTERS: u16 = 123;

impl ModbusVisitor {
    /// A visitor for `limit` registers or bits of `register` at `offset`, decoded as
    /// `property_type`, unscaled and unswapped. Fails if the combination cannot work.
    pub fn new(
        property_type: PropertyType,
        register: RegisterType,
        offset: u16,
        limit: u16,
    ) -> Result<Self> {
        let visitor = Self {
            property_type,
            register,
            offset,
            limit,
            scale: 1.0,
            is_swap: false,
            is_register_swap: false,
            signed: false,
        };
        visitor.validate()?;
        Ok(visitor)
    }

    /// Parses KubeEdge's Modbus visitor `configData`:
    /// `{"register": "HoldingRegister", "offset": 2, "limit": 1, "scale": 1, "isSwap": false,
    /// "isRegisterSwap": false}`. `register` and `offset` are required; `limit` defaults to
    /// what the type needs (INT, BOOLEAN: 1; FLOAT: 2; DOUBLE: 4) and is required for STRING
    /// and BYTES; `scale` defaults to 1 (KubeEdge's Go code would multiply by 0); other keys
    /// (`dataType`...) are ignored, as in KubeEdge.
    pub fn from_config(
        property_type: PropertyType,
        config_data: &Map<String, Json>,
    ) -> Result<Self> {
        let get = |key: &str| config_data.get(key).filter(|v| !v.is_null());
        let register: RegisterType = match get("register") {
            Some(v) => string("register", v)?.parse()?,
            None => return Err(Error::config("visitor has no register")),
        };
        let offset = match get("offset") {
            Some(v) => integer("offset", v, 0, 65_535)? as u16,
            None => return Err(Error::config("visitor has no offset")),
        };
        let limit = match get("limit") {
            Some(v) => integer("limit", v, 0, 65_535)? as u16,
            None => match property_type {
                PropertyType::Int | PropertyType::Boolean => 1,
                PropertyType::Float if !register.is_bits() => 2,
                PropertyType::Double if !register.is_bits() => 4,
                _ => {
                    return Err(Error::config(format!(
                        "visitor has no limit (a {property_type} property needs one)"
                    )));
                }
            },
        };
        let visitor = Self {
            property_type,
            register,
            offset,
            limit,
            scale: get("scale").map_or(Ok(1.0), |v| float("scale", v))?,
            is_swap: get("isSwap").map_or(Ok(false), |v| boolean("isSwap", v))?,
            is_register_swap: get("isRegisterSwap")
                .map_or(Ok(false), |v| boolean("isRegisterSwap", v))?,
            signed: get("signed").map_or(Ok(false), |v| boolean("signed", v))?,
        };
        visitor.validate()?;
        Ok(visitor)
    }

    /// Checks that the visitor can work: a limit the property type can use, addresses inside
    /// the 16-bit space, a usable scale.
    pub fn validate(&self) -> Result<()> {
        let t = self.property_type;
        let what = format!("{t} property on {} (limit {})", self.register, self.limit);
        if self.limit == 0 {
            return Err(Error::config(format!("{what}: limit must be at least 1")));
        }
        if u32::from(self.offset) + u32::from(self.limit) > 65_536 {
            return Err(Error::config(format!(
                "{what}: offset {} + limit runs past address 65535",
                self.offset
            )));
        }
        if !self.scale.is_finite() || self.scale == 0.0 {
            return Err(Error::config(format!(
                "{what}: scale {} must be a finite, non-zero number",
                self.scale
            )));
        }
        let limit_ok = if self.register.is_bits() {
            self.limit <= MAX_READ_BITS
                && match t {
                    PropertyType::Int => self.limit <= 64,
                    PropertyType::Boolean | PropertyType::Bytes => true,
                    PropertyType::Float
                    | PropertyType::Double
                    | PropertyType::String
                    | PropertyType::Stream => {
                        return Err(Error::Unsupported(format!(
                            "{t} properties cannot live in {} (bits)",
                            self.register
                        )));
                    }
                }
        } else {
            self.limit <= MAX_READ_REGISTERS
                && match t {
                    PropertyType::Int => matches!(self.limit, 1 | 2 | 4),
                    PropertyType::Float => self.limit == 2,
                    PropertyType::Double => self.limit == 4,
                    PropertyType::Boolean | PropertyType::String | PropertyType::Bytes => true,
                    PropertyType::Stream => {
                        return Err(Error::Unsupported(
                            "STREAM properties cannot be read over Modbus".into(),
                        ));
                    }
                }
        };
        if !limit_ok {
            let expected = match (self.register.is_bits(), t) {
                (true, PropertyType::Int) => "1 to 64 bits",
                (true, _) => "1 to 2000 bits",
                (false, PropertyType::Int) => "1, 2 or 4 registers (16, 32 or 64 bits)",
                (false, PropertyType::Float) => "2 registers (an IEEE 754 single)",
                (false, PropertyType::Double) => "4 registers (an IEEE 754 double)",
                (false, _) => "1 to 125 registers",
            };
            return Err(Error::config(format!("{what}: expected {expected}")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_data::map;
    use serde_json::json;

    #[test]
    fn protocol_config_tcp_and_rtu() {
        let c = ModbusConfig::from_protocol_config(&map(
            json!({"slaveID": 1, "ip": "127.0.0.1", "port": 1502}),
        ))
        .unwrap();
        assert_eq!(c, ModbusConfig::tcp("127.0.0.1:1502", 1));
        let c = ModbusConfig::from_protocol_config(&map(json!({"ip": "::1"}))).unwrap();
        assert_eq!(c.transport.target(), "[::1]:502");
        let c = ModbusConfig::from_protocol_config(&map(
            json!({"slaveID": "3", "tcp": {"ip": "plc.local", "port": "5020"}, "timeout": 250}),
        ))
        .unwrap();
        assert_eq!(c.transport.target(), "plc.local:5020");
        assert_eq!((c.slave_id, c.timeout), (3, Duration::from_millis(250)));

        let c = ModbusConfig::from_protocol_config(&map(json!({
            "slaveID": 1, "serialPort": "/dev/ttyS0", "baudRate": 9600, "dataBits": 8,
            "parity": "even", "stopBits": 1, "ip": "ignored"
        })))
        .unwrap();
        let Transport::Rtu(serial) = &c.transport else {
            panic!("{c:?}")
        };
        assert_eq!(
            (
                serial.path.as_str(),
                serial.baud_rate,
                serial.parity,
                serial.bits_per_char()
            ),
            ("/dev/ttyS0", 9600, Parity::Even, 11)
        );
        // 3.5 characters of 11 bits at 9600 baud.
        assert_eq!(serial.inter_frame_silence(), Duration::from_micros(4010));
        let c = ModbusConfig::from_protocol_config(&map(
            json!({"com": {"serialPort": "/dev/pts/3"}, "slaveID": 2}),
        ))
        .unwrap();
        let Transport::Rtu(serial) = &c.transport else {
            panic!("{c:?}")
        };
        assert_eq!((serial.baud_rate, serial.parity), (19_200, Parity::None));
        assert_eq!(serial.inter_frame_silence(), Duration::from_micros(1822));
        let fast = SerialConfig::new("/dev/x", 115_200);
        assert_eq!(fast.inter_frame_silence(), Duration::from_micros(1750));
    }

    #[test]
    fn bad_protocol_configs_say_what_is_wrong() {
        let cases = [
            (json!({}), "neither serialPort"),
            (
                json!({"ip": "h", "port": 70000}),
                "port 70000 is out of range",
            ),
            (json!({"ip": "h", "slaveID": 256}), "slaveID 256"),
            (json!({"serialPort": "/dev/x", "slaveID": 0}), "1 to 247"),
            (
                json!({"serialPort": "/dev/x", "parity": "evn"}),
                "parity \"evn\"",
            ),
            (json!({"serialPort": "/dev/x", "dataBits": 9}), "dataBits 9"),
            (
                json!({"serialPort": "/dev/x", "baudRate": "fast"}),
                "baudRate: expected an integer",
            ),
            (json!({"tcp": "h:1"}), "tcp: expected an object"),
            (json!({"ip": ""}), "ip is empty"),
        ];
        for (config, want) in cases {
            let err = ModbusConfig::from_protocol_config(&map(config.clone())).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{config}: {err}");
            assert!(err.to_string().contains(want), "{config}: {err}");
            assert!(!err.is_retryable());
        }
    }

    #[test]
    fn visitor_config_kubeedge_example() {
        let v = ModbusVisitor::from_config(
            PropertyType::Int,
            &map(
                json!({"register": "HoldingRegister", "offset": 2, "limit": 1, "scale": 1,
                         "isSwap": false, "isRegisterSwap": false}),
            ),
        )
        .unwrap();
        assert_eq!(
            v,
            ModbusVisitor::new(PropertyType::Int, RegisterType::Holding, 2, 1).unwrap()
        );
        let v = ModbusVisitor::from_config(
            PropertyType::Float,
            &map(
                json!({"register": "inputregister", "offset": "4", "scale": "0.5",
                         "isSwap": "true", "dataType": "float"}),
            ),
        )
        .unwrap();
        assert_eq!(
            (v.register, v.offset, v.limit, v.scale, v.is_swap),
            (RegisterType::Input, 4, 2, 0.5, true)
        );
    }

    #[test]
    fn bad_visitors_say_what_is_wrong() {
        use PropertyType as T;
        let cases = [
            (T::Int, json!({"offset": 0}), "no register"),
            (
                T::Int,
                json!({"register": "Holding", "offset": 0}),
                "register \"Holding\"",
            ),
            (T::Int, json!({"register": "HoldingRegister"}), "no offset"),
            (
                T::Int,
                json!({"register": "HoldingRegister", "offset": -1}),
                "offset -1",
            ),
            (
                T::Int,
                json!({"register": "HoldingRegister", "offset": 0, "limit": 3}),
                "1, 2 or 4",
            ),
            (
                T::Int,
                json!({"register": "HoldingRegister", "offset": 0, "limit": 0}),
                "at least 1",
            ),
            (
                T::Float,
                json!({"register": "HoldingRegister", "offset": 0, "limit": 1}),
                "IEEE 754 single",
            ),
            (
                T::Double,
                json!({"register": "InputRegister", "offset": 0, "limit": 2}),
                "IEEE 754 double",
            ),
            (
                T::String,
                json!({"register": "HoldingRegister", "offset": 0}),
                "needs one",
            ),
            (
                T::String,
                json!({"register": "HoldingRegister", "offset": 0, "limit": 126}),
                "1 to 125",
            ),
            (
                T::Int,
                json!({"register": "HoldingRegister", "offset": 65535, "limit": 2}),
                "past address 65535",
            ),
            (
                T::Int,
                json!({"register": "HoldingRegister", "offset": 0, "scale": 0}),
                "non-zero",
            ),
            (
                T::Int,
                json!({"register": "CoilRegister", "offset": 0, "limit": 65}),
                "1 to 64 bits",
            ),
            (
                T::Bytes,
                json!({"register": "CoilRegister", "offset": 0, "limit": 2001}),
                "1 to 2000 bits",
            ),
            (
                T::Int,
                json!({"register": "CoilRegister", "offset": 0, "isSwap": 1}),
                "isSwap",
            ),
        ];
        for (t, config, want) in cases {
            let err = ModbusVisitor::from_config(t, &map(config.clone())).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{config}: {err}");
            assert!(err.to_string().contains(want), "{t} {config}: {err}");
        }
        for t in [T::Float, T::Double, T::String, T::Stream] {
            let err = ModbusVisitor::new(t, RegisterType::Coil, 0, 4).unwrap_err();
            assert!(matches!(err, Error::Unsupported(_)), "{t}: {err}");
        }
        let err = ModbusVisitor::new(T::Stream, RegisterType::Holding, 0, 4).unwrap_err();
        assert!(matches!(err, Error::Unsupported(_)), "{err}");
    }
}
