//! DeviceModel property types, a leaf the error type and the drivers both use.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A DeviceModel property type (`spec.properties[].type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum PropertyType {
    /// `INT`: a 64-bit signed integer.
    Int,
    /// `FLOAT`: a 32-bit IEEE 754 number.
    Float,
    /// `DOUBLE`: a 64-bit IEEE 754 number.
    Double,
    /// `STRING`: text.
    String,
    /// `BOOLEAN`: true or false.
    Boolean,
    /// `BYTES`: raw bytes (base64 in the twin, as Go encodes `[]byte` in JSON).
    Bytes,
    /// `STREAM`: a media stream; no [`Value`](crate::Value) carries it and the built-in drivers refuse it.
    Stream,
}

impl PropertyType {
    /// All types, in the DeviceModel CRD's order.
    pub const ALL: [PropertyType; 7] = [
        Self::Int,
        Self::Float,
        Self::Double,
        Self::String,
        Self::Boolean,
        Self::Bytes,
        Self::Stream,
    ];

    /// The DeviceModel spelling: `INT`, `FLOAT`...
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Int => "INT",
            Self::Float => "FLOAT",
            Self::Double => "DOUBLE",
            Self::String => "STRING",
            Self::Boolean => "BOOLEAN",
            Self::Bytes => "BYTES",
            Self::Stream => "STREAM",
        }
    }

    /// The lower-case spelling KubeEdge mappers put in twin metadata (`"type": "int"`).
    pub const fn metadata_type(self) -> &'static str {
        match self {
            Self::Int => "int",
            Self::Float => "float",
            Self::Double => "double",
            Self::String => "string",
            Self::Boolean => "boolean",
            Self::Bytes => "bytes",
            Self::Stream => "stream",
        }
    }
}

impl fmt::Display for PropertyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A property type that is none of KubeEdge's (an [`Error::Config`](crate::Error::Config)
/// once it reaches a driver).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown property type {0:?} (expected one of INT, FLOAT, DOUBLE, STRING, BOOLEAN, BYTES, STREAM)"
)]
pub struct UnknownPropertyType(pub String);

impl FromStr for PropertyType {
    type Err = UnknownPropertyType;

    /// Parses `INT`, `int`, `Int`... (KubeEdge compares case-insensitively: DeviceModels say
    /// `INT`, twin metadata says `int`).
    fn from_str(s: &str) -> Result<Self, UnknownPropertyType> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownPropertyType(s.to_owned()))
    }
}

impl TryFrom<String> for PropertyType {
    type Error = UnknownPropertyType;

    fn try_from(s: String) -> Result<Self, UnknownPropertyType> {
        s.parse()
    }
}

impl From<PropertyType> for &'static str {
    fn from(t: PropertyType) -> Self {
        t.as_str()
    }
}
