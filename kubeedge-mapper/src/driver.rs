//! The [`DeviceDriver`] trait a device maker implements once, and the typed values it reads
//! and writes.
//!
//! A KubeEdge DeviceModel gives each property a `type` (`INT`, `FLOAT`, `DOUBLE`, `STRING`,
//! `BOOLEAN`, `BYTES` or `STREAM`: [`PropertyType`]); the Device gives it a visitor
//! (`visitors: {protocolName, configData}`: [`VisitorConfig`]) that tells the driver where the
//! value lives on the device. The mapper runtime hands each property to
//! [`DeviceDriver::parse_visitor`] once, then polls [`DeviceDriver::read`] and applies desired
//! values with [`DeviceDriver::write`]. Values travel as [`Value`]; the twin carries them as
//! strings, converted by [`Value::parse`] and [`Value::to_twin_string`] the way KubeEdge's
//! mappers do (`"25"`, `"21.5"`, `"true"`).
//!
//! # Writing a driver
//!
//! ```
//! use std::sync::atomic::{AtomicI64, Ordering};
//! use kubeedge_mapper::{DeviceDriver, Error, PropertySpec, PropertyType, Result, Value};
//!
//! /// A thermostat whose only property is a set point in tenths of a degree.
//! struct Thermostat {
//!     set_point: AtomicI64,
//! }
//!
//! /// Where a property lives: this device has one channel per property.
//! struct Channel {
//!     scale: f64,
//! }
//!
//! impl DeviceDriver for Thermostat {
//!     type Visitor = Channel;
//!
//!     fn parse_visitor(&self, property: &PropertySpec) -> Result<Channel> {
//!         if property.property_type != PropertyType::Double {
//!             return Err(Error::Unsupported(format!("{} must be DOUBLE", property.name)));
//!         }
//!         #[derive(serde::Deserialize)]
//!         struct Config {
//!             scale: f64,
//!         }
//!         let config: Config = property.visitor.parse()?;
//!         Ok(Channel { scale: config.scale })
//!     }
//!
//!     async fn connect(&self) -> Result<()> {
//!         Ok(())
//!     }
//!
//!     async fn health(&self) -> Result<()> {
//!         Ok(())
//!     }
//!
//!     async fn read(&self, channel: &Channel) -> Result<Value> {
//!         Ok(Value::Double(self.set_point.load(Ordering::Relaxed) as f64 * channel.scale))
//!     }
//!
//!     async fn write(&self, channel: &Channel, value: &Value) -> Result<()> {
//!         let Value::Double(v) = value else {
//!             // The error names the property type and the value that does not fit it.
//!             return value.check_type(PropertyType::Double);
//!         };
//!         self.set_point.store((v / channel.scale).round() as i64, Ordering::Relaxed);
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<()> {
//! let device = Thermostat { set_point: AtomicI64::new(215) };
//! let spec = PropertySpec::from_json(
//!     "setPoint",
//!     "DOUBLE",
//!     serde_json::json!({"protocolName": "thermostat", "configData": {"scale": 0.1}}),
//! )?;
//! let channel = device.parse_visitor(&spec)?;
//! assert_eq!(device.read(&channel).await?.to_twin_string(), "21.5");
//! // A desired value from the twin, as a string:
//! device.write(&channel, &Value::parse(PropertyType::Double, "19")?).await?;
//! assert_eq!(device.read(&channel).await?, Value::Double(19.0));
//! # Ok(()) }
//! ```
//!
//! The trait's methods return `impl Future + Send`, so a runtime can poll each device from its
//! own `tokio::spawn`ed task; take `&self` and keep connection state behind a lock inside.

use std::fmt;
use std::future::Future;

use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The driver a device maker implements once per kind of device (or protocol).
///
/// A driver value stands for one device (one connection). Its methods take `&self`: the
/// runtime may call them from several tasks at once, and a driver serialises access to its
/// device itself where the device needs it.
pub trait DeviceDriver: Send + Sync + 'static {
    /// The driver's typed form of a property's visitor configuration (for Modbus: register
    /// type, offset, limit...), parsed once by [`DeviceDriver::parse_visitor`].
    type Visitor: Send + Sync + 'static;

    /// Checks and parses a property's visitor configuration. A bad configuration fails here,
    /// when the device is loaded, rather than at every poll.
    fn parse_visitor(&self, property: &PropertySpec) -> Result<Self::Visitor>;

    /// Connects to the device (opens the socket or serial port). Reads and writes connect on
    /// demand too, so calling this first is optional; it surfaces a wrong address early.
    fn connect(&self) -> impl Future<Output = Result<()>> + Send;

    /// Whether the device is reachable now: `Ok(())` if it is, otherwise the error that says
    /// why not (the runtime reports the device offline).
    fn health(&self) -> impl Future<Output = Result<()>> + Send;

    /// Reads a property's current value from the device.
    fn read(&self, visitor: &Self::Visitor) -> impl Future<Output = Result<Value>> + Send;

    /// Writes a property's value to the device. A value of another type than the property's
    /// fails with [`Error::TypeMismatch`].
    fn write(
        &self,
        visitor: &Self::Visitor,
        value: &Value,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// A property as the driver sees it: its name, its type from the DeviceModel and its visitor
/// from the Device.
#[derive(Debug, Clone, PartialEq)]
pub struct PropertySpec {
    /// The property name (`spec.properties[].name`).
    pub name: String,
    /// The property type from the DeviceModel.
    pub property_type: PropertyType,
    /// The visitor from the Device (`spec.properties[].visitors`).
    pub visitor: VisitorConfig,
}

impl PropertySpec {
    /// A property spec from its parts.
    pub fn new(
        name: impl Into<String>,
        property_type: PropertyType,
        visitor: VisitorConfig,
    ) -> Self {
        Self {
            name: name.into(),
            property_type,
            visitor,
        }
    }

    /// A property spec from the DeviceModel's type string and the Device's `visitors` JSON
    /// (`{"protocolName": ..., "configData": {...}}`).
    pub fn from_json(
        name: impl Into<String>,
        property_type: &str,
        visitors: serde_json::Value,
    ) -> Result<Self> {
        let visitor: VisitorConfig = serde_json::from_value(visitors)
            .map_err(|e| Error::config(format!("visitors: {e}")))?;
        Ok(Self::new(name, property_type.parse()?, visitor))
    }
}

/// A property's visitor as KubeEdge v1beta1 writes it: `{protocolName, configData}`, with
/// `configData` a free-form map each driver interprets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VisitorConfig {
    /// The protocol the visitor is for (`modbus`...); may be empty.
    #[serde(default)]
    pub protocol_name: String,
    /// The driver-specific settings.
    #[serde(default)]
    pub config_data: serde_json::Map<String, serde_json::Value>,
}

impl VisitorConfig {
    /// A visitor from its protocol name and config data.
    pub fn new(
        protocol_name: impl Into<String>,
        config_data: serde_json::Map<String, serde_json::Value>,
    ) -> Self {
        Self {
            protocol_name: protocol_name.into(),
            config_data,
        }
    }

    /// `configData` parsed into a driver's own type (any `serde` type); a mismatch is an
    /// [`Error::Config`] that names the problem.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(serde_json::Value::Object(self.config_data.clone()))
            .map_err(|e| Error::config(format!("visitor configData: {e}")))
    }
}

pub use crate::property_type::{PropertyType, UnknownPropertyType};

/// A typed property value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// An `INT` value.
    Int(i64),
    /// A `FLOAT` value.
    Float(f32),
    /// A `DOUBLE` value.
    Double(f64),
    /// A `STRING` value.
    String(String),
    /// A `BOOLEAN` value.
    Boolean(bool),
    /// A `BYTES` value.
    Bytes(Vec<u8>),
}

impl Value {
    /// The property type this value belongs to.
    pub fn property_type(&self) -> PropertyType {
        match self {
            Self::Int(_) => PropertyType::Int,
            Self::Float(_) => PropertyType::Float,
            Self::Double(_) => PropertyType::Double,
            Self::String(_) => PropertyType::String,
            Self::Boolean(_) => PropertyType::Boolean,
            Self::Bytes(_) => PropertyType::Bytes,
        }
    }

    /// `Ok(())` if this value is of type `expected`, else [`Error::TypeMismatch`].
    pub fn check_type(&self, expected: PropertyType) -> Result<()> {
        if self.property_type() == expected {
            Ok(())
        } else {
            Err(Error::mismatch(
                expected,
                self.to_twin_string(),
                format!("it is a {} value", self.property_type()),
            ))
        }
    }

    /// Parses a twin value (a desired value, say) as `property_type`, with the rules KubeEdge's
    /// mapper framework uses (Go's `strconv`): `INT` base-10 with an optional sign; `FLOAT` and
    /// `DOUBLE` decimal or exponent notation, `NaN`, `Inf`, refusing numbers out of the type's
    /// range; `BOOLEAN` one of `1 t T TRUE true True 0 f F FALSE false False`; `STRING` as is;
    /// `BYTES` standard base64. `STREAM` has no value.
    pub fn parse(property_type: PropertyType, text: &str) -> Result<Value> {
        let bad = |reason: &str| Error::mismatch(property_type, text, reason);
        match property_type {
            PropertyType::Int => text.parse::<i64>().map(Value::Int).map_err(|e| {
                use std::num::IntErrorKind::{NegOverflow, PosOverflow};
                match e.kind() {
                    PosOverflow | NegOverflow => bad("out of the 64-bit integer range"),
                    _ => bad("not a base-10 integer"),
                }
            }),
            PropertyType::Float => {
                let v = parse_float(text).ok_or_else(|| bad("not a number"))?;
                let narrow = v as f32;
                if narrow.is_infinite() && v.is_finite() {
                    return Err(bad("out of the 32-bit float range"));
                }
                Ok(Value::Float(narrow))
            }
            PropertyType::Double => {
                let v = parse_float(text).ok_or_else(|| bad("not a number"))?;
                Ok(Value::Double(v))
            }
            PropertyType::Boolean => match text {
                "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(Value::Boolean(true)),
                "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(Value::Boolean(false)),
                _ => Err(bad("not a boolean (true/false, 1/0, t/f)")),
            },
            PropertyType::String => Ok(Value::String(text.to_owned())),
            PropertyType::Bytes => BASE64
                .decode(text)
                .ok()
                .map(Value::Bytes)
                .ok_or_else(|| bad("not standard base64")),
            PropertyType::Stream => Err(Error::Unsupported(
                "STREAM properties carry no twin value".into(),
            )),
        }
    }

    /// The value as the twin reports it (KubeEdge's `ConvertToString`): `25`, `21.5` (the
    /// shortest text that reads back as the same number, never an exponent), `NaN`, `+Inf`,
    /// `true`, the text itself, base64 for bytes.
    pub fn to_twin_string(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Int(v) => write!(f, "{v}"),
            Self::Float(v) => write_float(f, f64::from(*v), v),
            Self::Double(v) => write_float(f, *v, v),
            Self::String(v) => f.write_str(v),
            Self::Boolean(v) => write!(f, "{v}"),
            Self::Bytes(v) => f.write_str(&BASE64.encode(v)),
        }
    }
}

/// Go's spelling of the non-finite numbers; Rust's shortest round-trip text for the rest.
fn write_float(f: &mut fmt::Formatter<'_>, wide: f64, shortest: &dyn fmt::Display) -> fmt::Result {
    if wide.is_nan() {
        f.write_str("NaN")
    } else if wide.is_infinite() {
        f.write_str(if wide > 0.0 { "+Inf" } else { "-Inf" })
    } else {
        shortest.fmt(f)
    }
}

/// Go's `strconv.ParseFloat` for decimal input: an optional sign, digits with an optional
/// point and exponent, or `inf`/`infinity`/`nan` in any case. Rust's parser takes the same set
/// (plus nothing Go refuses that matters here); a number too large for f64 is refused like Go's
/// `ErrRange`.
fn parse_float(text: &str) -> Option<f64> {
    let v: f64 = text.parse().ok()?;
    let literal_infinity = text
        .trim_start_matches(['+', '-'])
        .to_ascii_lowercase()
        .starts_with("inf");
    if v.is_infinite() && !literal_infinity {
        return None;
    }
    Some(v)
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

impl From<f32> for Value {
    fn from(v: f32) -> Self {
        Self::Float(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Self::Double(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Self::Boolean(v)
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Self::String(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Self::String(v.to_owned())
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Self::Bytes(v)
    }
}

/// Standard base64 with padding (Go's `base64.StdEncoding`, what `encoding/json` writes for
/// `[]byte`).
const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn property_types_parse_in_any_case_and_print_as_the_crd() {
        for t in PropertyType::ALL {
            assert_eq!(t.as_str().parse::<PropertyType>().unwrap(), t);
            assert_eq!(t.metadata_type().parse::<PropertyType>().unwrap(), t);
            assert_eq!(t.to_string(), t.as_str());
        }
        let err = Error::from("INTEGER".parse::<PropertyType>().unwrap_err());
        assert!(matches!(err, Error::Config(_)), "{err}");
        assert!(!err.is_retryable());
        let t: PropertyType = serde_json::from_str("\"double\"").unwrap();
        assert_eq!(t, PropertyType::Double);
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"DOUBLE\"");
    }

    /// (type, twin text, parsed value, twin text it prints back as)
    fn round_trips() -> Vec<(PropertyType, &'static str, Value, &'static str)> {
        use PropertyType as T;
        vec![
            (T::Int, "25", Value::Int(25), "25"),
            (T::Int, "-5", Value::Int(-5), "-5"),
            (T::Int, "+7", Value::Int(7), "7"),
            (
                T::Int,
                "9223372036854775807",
                Value::Int(i64::MAX),
                "9223372036854775807",
            ),
            (T::Float, "21.5", Value::Float(21.5), "21.5"),
            (T::Float, "0.1", Value::Float(0.1), "0.1"),
            (T::Float, "1e3", Value::Float(1000.0), "1000"),
            (T::Float, "-0", Value::Float(-0.0), "-0"),
            (T::Float, "NaN", Value::Float(f32::NAN), "NaN"),
            (T::Float, "+Inf", Value::Float(f32::INFINITY), "+Inf"),
            (
                T::Double,
                "1234.5678",
                Value::Double(1234.5678),
                "1234.5678",
            ),
            (
                T::Double,
                "1e21",
                Value::Double(1e21),
                "1000000000000000000000",
            ),
            (T::Double, "-inf", Value::Double(f64::NEG_INFINITY), "-Inf"),
            (T::Boolean, "true", Value::Boolean(true), "true"),
            (T::Boolean, "1", Value::Boolean(true), "true"),
            (T::Boolean, "T", Value::Boolean(true), "true"),
            (T::Boolean, "False", Value::Boolean(false), "false"),
            (T::Boolean, "0", Value::Boolean(false), "false"),
            (
                T::String,
                "KubeEdge",
                Value::String("KubeEdge".into()),
                "KubeEdge",
            ),
            (T::String, "", Value::String(String::new()), ""),
            (T::Bytes, "", Value::Bytes(vec![]), ""),
            (T::Bytes, "AQ==", Value::Bytes(vec![1]), "AQ=="),
            (T::Bytes, "AQI=", Value::Bytes(vec![1, 2]), "AQI="),
            (T::Bytes, "AQID", Value::Bytes(vec![1, 2, 3]), "AQID"),
            (
                T::Bytes,
                "aGVsbG8=",
                Value::Bytes(b"hello".to_vec()),
                "aGVsbG8=",
            ),
            (
                T::Bytes,
                "//79",
                Value::Bytes(vec![0xff, 0xfe, 0xfd]),
                "//79",
            ),
        ]
    }

    #[test]
    fn twin_strings_round_trip() {
        for (t, text, value, printed) in round_trips() {
            let parsed = Value::parse(t, text).unwrap_or_else(|e| panic!("{t} {text:?}: {e}"));
            match (&parsed, &value) {
                (Value::Float(a), Value::Float(b)) if a.is_nan() => assert!(b.is_nan()),
                _ => assert_eq!(parsed, value, "{t} {text:?}"),
            }
            assert_eq!(parsed.property_type(), t);
            assert_eq!(parsed.to_twin_string(), printed, "{t} {text:?}");
            parsed.check_type(t).unwrap();
        }
    }

    #[test]
    fn values_that_do_not_fit_are_type_mismatches() {
        use PropertyType as T;
        let cases = [
            (T::Int, "25.0", "not a base-10 integer"),
            (T::Int, "0x10", "not a base-10 integer"),
            (T::Int, " 25", "not a base-10 integer"),
            (T::Int, "", "not a base-10 integer"),
            (T::Int, "true", "not a base-10 integer"),
            (
                T::Int,
                "9223372036854775808",
                "out of the 64-bit integer range",
            ),
            (T::Float, "abc", "not a number"),
            (T::Float, "1e39", "out of the 32-bit float range"),
            (T::Float, "", "not a number"),
            (T::Double, "1e309", "not a number"),
            (T::Double, "1,5", "not a number"),
            (T::Boolean, "yes", "not a boolean"),
            (T::Boolean, "TRue", "not a boolean"),
            (T::Bytes, "AQ", "not standard base64"),
            (T::Bytes, "A===", "not standard base64"),
            (T::Bytes, "AQ==AQ==", "not standard base64"),
            (T::Bytes, "AQ!=", "not standard base64"),
        ];
        for (t, text, reason) in cases {
            let err = Value::parse(t, text).unwrap_err();
            match &err {
                Error::TypeMismatch {
                    expected,
                    value,
                    reason: r,
                } => {
                    assert_eq!(*expected, t);
                    assert_eq!(value, text);
                    assert!(r.starts_with(reason), "{t} {text:?}: {r}");
                }
                other => panic!("{t} {text:?}: {other}"),
            }
            assert!(!err.is_retryable());
            assert!(err.to_string().contains(t.as_str()), "{err}");
        }
        assert!(matches!(
            Value::parse(T::Stream, "x"),
            Err(Error::Unsupported(_))
        ));
    }

    #[test]
    fn check_type_names_both_types() {
        let err = Value::Int(3).check_type(PropertyType::Float).unwrap_err();
        assert_eq!(
            err.to_string(),
            "value \"3\" does not fit property type FLOAT: it is a INT value"
        );
    }

    #[test]
    fn bytes_values_round_trip_through_their_twin_string() {
        let all: Vec<u8> = (0..=255).collect();
        for len in [0, 1, 2, 3, 4, 255, 256] {
            let value = Value::Bytes(all[..len].to_vec());
            let text = value.to_twin_string();
            assert_eq!(Value::parse(PropertyType::Bytes, &text).unwrap(), value);
        }
        assert_eq!(Value::Bytes(b"hello".to_vec()).to_twin_string(), "aGVsbG8=");
        assert!(
            Value::parse(PropertyType::Bytes, "aGVsbG8").is_err(),
            "padding is required"
        );
    }

    #[test]
    fn visitor_config_parses_into_driver_types() {
        let spec = PropertySpec::from_json(
            "temperature",
            "INT",
            serde_json::json!({"protocolName": "modbus", "configData": {"offset": 2}}),
        )
        .unwrap();
        #[derive(serde::Deserialize)]
        struct Mine {
            offset: u16,
        }
        assert_eq!(spec.visitor.parse::<Mine>().unwrap().offset, 2);
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Strict {
            register: String,
        }
        let err = spec.visitor.parse::<Strict>().unwrap_err();
        assert!(
            err.to_string().contains("missing field `register`"),
            "{err}"
        );
    }
}
