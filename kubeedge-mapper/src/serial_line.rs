//! A serial *line* driver: for simple sensors that answer a text request with a text line
//! (`READ T\r\n` → `T=21.5\r\n`) over a serial port (tokio-serial).
//!
//! ```no_run
//! use kubeedge_mapper::serial_line::{SerialLineConfig, SerialLineDriver};
//! use kubeedge_mapper::{DeviceDriver, PropertySpec, PropertyType, Value};
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> kubeedge_mapper::Result<()> {
//! // A Device's spec.protocol.configData ...
//! let protocol = json!({"serialPort": "/dev/ttyUSB0", "baudRate": 9600, "dataBits": 8,
//!                       "parity": "none", "stopBits": 1, "delimiter": "\\r\\n",
//!                       "timeout": 1000});
//! let driver = SerialLineDriver::new(SerialLineConfig::from_protocol_config(
//!     protocol.as_object().unwrap(),
//! )?);
//! // ... and its properties: the sensor answers "READ T" with "T=21.5" and "READ H" with
//! // "H,45,%", and takes "SET 30" (answering "OK").
//! let temperature = driver.parse_visitor(&PropertySpec::from_json(
//!     "temperature",
//!     "FLOAT",
//!     json!({"protocolName": "serial", "configData": {
//!         "request": "READ T\\r\\n", "regex": "^T=(-?[0-9.]+)$"}}),
//! )?)?;
//! let humidity = driver.parse_visitor(&PropertySpec::from_json(
//!     "humidity",
//!     "INT",
//!     json!({"configData": {"request": "READ H\\r\\n", "field": 1, "separator": ","}}),
//! )?)?;
//! let set_point = driver.parse_visitor(&PropertySpec::from_json(
//!     "setPoint",
//!     "INT",
//!     json!({"configData": {"writeTemplate": "SET {value}\\r\\n", "expect": "^OK$"}}),
//! )?)?;
//! println!("{}", driver.read(&temperature).await?.to_twin_string());
//! println!("{}", driver.read(&humidity).await?.to_twin_string());
//! driver.write(&set_point, &Value::parse(PropertyType::Int, "30")?).await?;
//! # Ok(()) }
//! ```
//!
//! # Protocol `configData`
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `serialPort` | the device path (`/dev/ttyUSB0`, a pty) | required |
//! | `baudRate` | bits per second | 9600 |
//! | `dataBits` | 5 to 8 | 8 |
//! | `parity` | `none`, `even` or `odd` (or `N`, `E`, `O`) | none |
//! | `stopBits` | 1 or 2 | 1 |
//! | `delimiter` | what ends an answer line, with [escapes](unescape) | `\r\n` |
//! | `timeout` | milliseconds one request (and its answer) may take | 2000 |
//! | `maxLineBytes` | the longest answer line | 4096 |
//!
//! # Visitor `configData`
//!
//! | key | meaning |
//! |---|---|
//! | `request` | the text a read sends, with [escapes](unescape) (`READ T\r\n`); without it the property is write-only |
//! | `regex` | a regular expression the answer line must match; the value is its first capture group (the whole match if it has none) |
//! | `field`, `separator` | split the answer line at `separator` (default `,`) and take field number `field` (from 0), without surrounding whitespace |
//! | `writeTemplate` | what a write sends, with `{value}` for the value (its twin text), `{{` and `}}` for braces, and escapes (`SET {value}\r\n`); without it the property is read-only |
//! | `expect` | a regular expression the device's answer to a write must match (`^OK$`); without it the driver does not wait for an answer |
//!
//! Patterns use the [`regex`](https://docs.rs/regex) crate's syntax (`(?i)` for
//! case-insensitive matching).
//!
//! With neither `regex` nor `field`, the whole line is the value. The value text is converted
//! to the property type by the twin's rules ([`Value::parse`]), without surrounding whitespace
//! except for STRING (as extracted) and BYTES (the text's bytes). Other keys are ignored.
//!
//! # Line discipline
//!
//! - One request at a time per port: a driver owns its port, and its clones share it.
//! - Before each request, input that arrived since the last answer (late answers, noise) is
//!   discarded, so an answer always belongs to its request.
//! - An answer is read up to the delimiter within the timeout; empty lines are skipped. No
//!   answer, or an answer without its delimiter, is [`Error::Timeout`] (retryable).
//! - An answer longer than `maxLineBytes` is [`Error::BadFrame`]; the rest of it is discarded
//!   up to the next delimiter (within the timeout) so the line is in step again. Memory is
//!   bounded by `maxLineBytes` plus a read buffer.
//! - An answer that is not UTF-8 or does not match `regex`, `field` or `expect` is
//!   [`Error::BadFrame`] naming the line; a value that does not fit the type is
//!   [`Error::TypeMismatch`].
//! - A port that fails (unplugged USB adapter, a pty whose other end went away) is
//!   [`Error::ConnectionLost`], and is closed; the next request opens it again
//!   ([`Error::Connect`] until it is back). Both are retryable.
//! - A written value whose text holds a control character (a CR or LF would smuggle a second
//!   command onto the line) is refused with [`Error::TypeMismatch`].
//!
//! - A caller that gives up on a request (drops the future, e.g. under its own timeout) may
//!   leave half a request on the line: the next request first ends the device's line with a
//!   delimiter and waits until the line has been quiet for a quarter of the timeout (at most
//!   100 ms).
//! - Text lines carry no request ids: an answer that arrives after its request timed out, and
//!   after the next request was sent, is taken for the next request's answer (and usually
//!   fails its regex). For a device that slow, raise `timeout`.
//!
//! Requests are not retried; the caller polls again.

use std::sync::Arc;
use std::time::Duration;

use regex::{Regex, RegexBuilder};
use serde_json::{Map, Value as Json};
use tokio::io::AsyncReadExt;
use tokio::sync::Mutex;
use tokio::time::{Instant, timeout as within, timeout_at};
use tokio_serial::{ClearBuffer, SerialPort, SerialStream};

use crate::config_data::{integer, lookup, optional_string, string};
use crate::driver::{DeviceDriver, PropertySpec, PropertyType, Value};
use crate::error::{Error, Result};
pub use crate::serial_port::Parity;
use crate::serial_port::{PortSettings, send};

/// The default baud rate.
pub const DEFAULT_BAUD_RATE: u32 = 9600;
/// The default line delimiter.
pub const DEFAULT_DELIMITER: &[u8] = b"\r\n";
/// How long a request and its answer may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest answer line.
pub const DEFAULT_MAX_LINE_BYTES: usize = 4096;

/// Most bytes discarded as stale input before one request; a line still talking after that
/// is refused.
const MAX_STALE_BYTES: usize = 64 * 1024;
/// The most a compiled visitor regex may take (the regex crate's own default is 10 MiB).
const REGEX_SIZE_LIMIT: usize = 1024 * 1024;
/// Longest line text an error quotes.
const QUOTE_LIMIT: usize = 80;

/// Everything a [`SerialLineDriver`] needs to reach one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialLineConfig {
    /// The device path (`/dev/ttyUSB0`, or a pty).
    pub path: String,
    /// Bits per second.
    pub baud_rate: u32,
    /// 5 to 8.
    pub data_bits: u8,
    /// Parity bit (the same settings as Modbus RTU's).
    pub parity: Parity,
    /// 1 or 2.
    pub stop_bits: u8,
    /// What ends an answer line (not empty).
    pub delimiter: Vec<u8>,
    /// How long one request and its answer may take.
    pub timeout: Duration,
    /// The longest answer line, delimiter not counted.
    pub max_line_bytes: usize,
}

impl SerialLineConfig {
    /// `path` at `baud_rate`, 8 data bits, no parity, 1 stop bit, `\r\n`-delimited lines, with
    /// the default timeout and line limit.
    pub fn new(path: impl Into<String>, baud_rate: u32) -> Self {
        Self {
            path: path.into(),
            baud_rate,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
            delimiter: DEFAULT_DELIMITER.to_vec(),
            timeout: DEFAULT_TIMEOUT,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
        }
    }

    /// Parses a Device's `spec.protocol.configData`; the keys are in the [module
    /// documentation](self). Numbers may be JSON numbers or numeric strings.
    pub fn from_protocol_config(config_data: &Map<String, Json>) -> Result<Self> {
        let path = match lookup(config_data, &["serialPort"]) {
            Some((key, v)) => string(key, v)?,
            None => return Err(Error::config("protocol configData has no serialPort")),
        };
        let int = |key: &'static str, default: i64, min: i64, max: i64| -> Result<i64> {
            lookup(config_data, &[key]).map_or(Ok(default), |(k, v)| integer(k, v, min, max))
        };
        let config = Self {
            baud_rate: int(
                "baudRate",
                i64::from(DEFAULT_BAUD_RATE),
                1,
                i64::from(u32::MAX),
            )? as u32,
            data_bits: int("dataBits", 8, 5, 8)? as u8,
            stop_bits: int("stopBits", 1, 1, 2)? as u8,
            parity: match lookup(config_data, &["parity"]) {
                Some((k, v)) => string(k, v)?.parse()?,
                None => Parity::None,
            },
            delimiter: match lookup(config_data, &["delimiter"]) {
                Some((k, v)) => unescape(k, &string(k, v)?)?,
                None => DEFAULT_DELIMITER.to_vec(),
            },
            timeout: Duration::from_millis(int("timeout", 2000, 1, 3_600_000)? as u64),
            max_line_bytes: int("maxLineBytes", 4096, 1, 16 * 1024 * 1024)? as usize,
            ..Self::new(path, DEFAULT_BAUD_RATE)
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks that the settings can work.
    pub fn validate(&self) -> Result<()> {
        self.port().validate()?;
        if self.delimiter.is_empty() {
            return Err(Error::config("delimiter is empty"));
        }
        if self.timeout.is_zero() || self.max_line_bytes == 0 {
            return Err(Error::config("timeout and maxLineBytes must be positive"));
        }
        Ok(())
    }

    /// The port settings, for checking and opening the port.
    fn port(&self) -> PortSettings<'_> {
        PortSettings {
            path: &self.path,
            baud_rate: self.baud_rate,
            data_bits: self.data_bits,
            parity: self.parity,
            stop_bits: self.stop_bits,
        }
    }
}

/// Replaces the escapes `\r`, `\n`, `\t`, `\0`, `\\` and `\xHH` (two hex digits) in `text`
/// by the bytes they stand for; any other backslash sequence is an error naming `key`.
///
/// (Text from a double-quoted YAML string arrives with real CR and LF characters already;
/// from single quotes, JSON with `\\r`, or a DMI string, with backslash escapes. Both work.)
///
/// ```
/// use kubeedge_mapper::serial_line::unescape;
/// assert_eq!(unescape("request", r"READ T\r\n")?, b"READ T\r\n");
/// assert_eq!(unescape("request", r"\x02GET\x03")?, b"\x02GET\x03");
/// # Ok::<(), kubeedge_mapper::Error>(())
/// ```
pub fn unescape(key: &str, text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        if c != '\\' {
            let mut utf8 = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            continue;
        }
        let bad = |what: &str| {
            Error::config(format!(
                "{key} {}: {what} at byte {at} (escapes: \\r \\n \\t \\0 \\\\ \\xHH)",
                shorten(text)
            ))
        };
        match chars.next().map(|(_, c)| c) {
            Some('r') => out.push(b'\r'),
            Some('n') => out.push(b'\n'),
            Some('t') => out.push(b'\t'),
            Some('0') => out.push(0),
            Some('\\') => out.push(b'\\'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).map(|(_, c)| c).collect();
                match u8::from_str_radix(&hex, 16) {
                    Ok(b) if hex.len() == 2 => out.push(b),
                    _ => return Err(bad("\\x needs two hex digits")),
                }
            }
            Some(other) => return Err(bad(&format!("unknown escape \\{other}"))),
            None => return Err(bad("a lone backslash at the end")),
        }
    }
    Ok(out)
}

/// A write's text: `{value}` where the value goes, `{{` and `}}` for literal braces, and the
/// [escapes](unescape).
///
/// ```
/// use kubeedge_mapper::serial_line::LineTemplate;
/// use kubeedge_mapper::Value;
///
/// let set: LineTemplate = r"SET {value}\r\n".parse()?;
/// assert_eq!(set.render("30"), b"SET 30\r\n");
/// let json: LineTemplate = r#"{{"t":{value}}}\n"#.parse()?;
/// assert_eq!(json.render("21.5"), b"{\"t\":21.5}\n");
/// # Ok::<(), kubeedge_mapper::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineTemplate {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Bytes(Vec<u8>),
    Value,
}

impl std::str::FromStr for LineTemplate {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let bad = |what: &str| Error::config(format!("writeTemplate {}: {what}", shorten(text)));
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find(['{', '}']) {
            literal.push_str(&rest[..at]);
            let tail = &rest[at..];
            if let Some(after) = tail.strip_prefix("{{") {
                literal.push('{');
                rest = after;
            } else if let Some(after) = tail.strip_prefix("}}") {
                literal.push('}');
                rest = after;
            } else if let Some(after) = tail.strip_prefix("{value}") {
                if !literal.is_empty() {
                    pieces.push(Piece::Bytes(unescape("writeTemplate", &literal)?));
                    literal.clear();
                }
                pieces.push(Piece::Value);
                rest = after;
            } else {
                return Err(bad(
                    "a brace that is not {value}, {{ or }} (write {{ and }} for literal braces)",
                ));
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Bytes(unescape("writeTemplate", &literal)?));
        }
        if !pieces.contains(&Piece::Value) {
            return Err(bad("has no {value} placeholder"));
        }
        Ok(Self { pieces })
    }
}

impl LineTemplate {
    /// The bytes to send for a value whose text is `value`.
    pub fn render(&self, value: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in &self.pieces {
            match piece {
                Piece::Bytes(b) => out.extend_from_slice(b),
                Piece::Value => out.extend_from_slice(value.as_bytes()),
            }
        }
        out
    }
}

/// How a value is taken from an answer line.
#[derive(Debug, Clone)]
pub enum Extract {
    /// The whole line.
    Line,
    /// The first capture group of a regular expression (the whole match if it has none).
    Regex(Regex),
    /// Field `index` (from 0) of the line split at `separator`, trimmed.
    Field {
        /// What separates the fields.
        separator: String,
        /// Which field.
        index: usize,
    },
}

impl Extract {
    /// The value text in `line`, or an [`Error::BadFrame`] that quotes the line.
    pub fn apply<'a>(&self, line: &'a str) -> Result<&'a str> {
        match self {
            Self::Line => Ok(line),
            Self::Regex(re) => {
                let caps = re.captures(line).ok_or_else(|| {
                    Error::bad_frame(format!(
                        "answer {} does not match regex {}",
                        quote(line),
                        re.as_str()
                    ))
                })?;
                let m = if caps.len() > 1 {
                    caps.get(1).ok_or_else(|| {
                        Error::bad_frame(format!(
                            "answer {} matches regex {} but its first group captured nothing",
                            quote(line),
                            re.as_str()
                        ))
                    })?
                } else {
                    caps.get(0)
                        .ok_or_else(|| Error::bad_frame("empty regex match"))?
                };
                Ok(m.as_str())
            }
            Self::Field { separator, index } => {
                let mut count = 0;
                for (i, field) in line.split(separator.as_str()).enumerate() {
                    if i == *index {
                        return Ok(field.trim());
                    }
                    count += 1;
                }
                Err(Error::bad_frame(format!(
                    "answer {} has {count} field(s) separated by {separator:?}; field {index} \
                     (from 0) wanted",
                    quote(line)
                )))
            }
        }
    }
}

/// Where and how a property lives on a line-based device: its visitor `configData`, checked,
/// plus its property type. Build it with [`SerialLineVisitor::from_config`] or
/// [`DeviceDriver::parse_visitor`].
#[derive(Debug, Clone)]
pub struct SerialLineVisitor {
    /// The DeviceModel type values are converted to.
    pub property_type: PropertyType,
    /// What a read sends (`None`: write-only).
    pub request: Option<Vec<u8>>,
    /// How the value is taken from the answer.
    pub extract: Extract,
    /// What a write sends (`None`: read-only).
    pub write_template: Option<LineTemplate>,
    /// What the answer to a write must match (`None`: a write does not wait for an answer).
    pub expect: Option<Regex>,
}

impl SerialLineVisitor {
    /// Parses a visitor's `configData` (keys in the [module documentation](self)).
    pub fn from_config(
        property_type: PropertyType,
        config_data: &Map<String, Json>,
    ) -> Result<Self> {
        if property_type == PropertyType::Stream {
            return Err(Error::Unsupported(
                "STREAM properties over a serial line (a stream is not a property value)".into(),
            ));
        }
        let text = |key| optional_string(config_data, key);
        let request = text("request")?
            .filter(|r| !r.is_empty())
            .map(|r| unescape("request", &r))
            .transpose()?;
        let write_template = text("writeTemplate")?
            .filter(|t| !t.is_empty())
            .map(|t| t.parse::<LineTemplate>())
            .transpose()?;
        if request.is_none() && write_template.is_none() {
            return Err(Error::config(
                "visitor has neither request (to read) nor writeTemplate (to write)",
            ));
        }
        let regex = text("regex")?.map(|r| compile("regex", &r)).transpose()?;
        let field = lookup(config_data, &["field"])
            .map(|(k, v)| integer(k, v, 0, 65_535))
            .transpose()?;
        let extract = match (regex, field) {
            (Some(_), Some(_)) => {
                return Err(Error::config("visitor has both regex and field; use one"));
            }
            (Some(re), None) => Extract::Regex(re),
            (None, Some(index)) => {
                let separator = text("separator")?.unwrap_or_else(|| ",".into());
                if separator.is_empty() {
                    return Err(Error::config("separator is empty"));
                }
                Extract::Field {
                    separator,
                    index: index as usize,
                }
            }
            (None, None) => Extract::Line,
        };
        let expect = text("expect")?.map(|r| compile("expect", &r)).transpose()?;
        if expect.is_some() && write_template.is_none() {
            return Err(Error::config("expect without a writeTemplate"));
        }
        Ok(Self {
            property_type,
            request,
            extract,
            write_template,
            expect,
        })
    }

    /// The property value in an answer `line` (without its delimiter).
    pub fn decode(&self, line: &[u8]) -> Result<Value> {
        let text = std::str::from_utf8(line).map_err(|e| {
            Error::bad_frame(format!(
                "answer {} is not UTF-8 text (invalid byte at offset {})",
                quote(&String::from_utf8_lossy(line)),
                e.valid_up_to()
            ))
        })?;
        let value = self.extract.apply(text)?;
        let parsed = match self.property_type {
            PropertyType::String => Ok(Value::String(value.to_owned())),
            PropertyType::Bytes => Ok(Value::Bytes(value.as_bytes().to_vec())),
            t => Value::parse(t, value.trim()),
        };
        parsed.map_err(|e| match e {
            Error::TypeMismatch {
                expected,
                value,
                reason,
            } => Error::TypeMismatch {
                expected,
                value: shorten(&value),
                reason: format!("{reason} (in answer {})", quote(text)),
            },
            other => other,
        })
    }

    /// The bytes a write of `value` sends; `value` must be of the property's type, and its text
    /// must hold no control characters.
    pub fn encode(&self, value: &Value) -> Result<Vec<u8>> {
        let Some(template) = &self.write_template else {
            return Err(Error::Unsupported(
                "writing a read-only property (it has no writeTemplate)".into(),
            ));
        };
        value.check_type(self.property_type)?;
        let text = value.to_twin_string();
        if text.chars().any(char::is_control) {
            return Err(Error::mismatch(
                self.property_type,
                shorten(&text),
                "it holds a control character (a CR or LF would end the command early)",
            ));
        }
        Ok(template.render(&text))
    }
}

fn compile(key: &str, pattern: &str) -> Result<Regex> {
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| Error::config(format!("{key} {}: {e}", shorten(pattern))))
}

/// `text`, cut to [`QUOTE_LIMIT`] characters with a note of how long it was.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(QUOTE_LIMIT) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}... ({} bytes)", &text[..cut], text.len()),
    }
}

/// A line, quoted for an error message (escapes shown, long lines cut).
fn quote(line: &str) -> String {
    format!("{:?}", shorten(line))
}

/// Bytes quoted for an error message.
fn quote_bytes(bytes: &[u8]) -> String {
    quote(&String::from_utf8_lossy(bytes))
}

/// A line-based serial device (see the [module documentation](self)).
///
/// Cheap to clone: clones share the port, and their requests take turns.
#[derive(Clone)]
pub struct SerialLineDriver {
    shared: Arc<Shared>,
}

struct Shared {
    config: SerialLineConfig,
    state: Mutex<PortState>,
}

#[derive(Default)]
struct PortState {
    port: Option<LinePort>,
    /// The error of the last request, if it found the device unreachable.
    unreachable: Option<Error>,
}

impl std::fmt::Debug for SerialLineDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialLineDriver")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl SerialLineDriver {
    /// A driver for the device `config` describes. The port is opened by the first request
    /// (or [`DeviceDriver::connect`]).
    pub fn new(config: SerialLineConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                state: Mutex::new(PortState::default()),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SerialLineConfig {
        &self.shared.config
    }

    /// Sends `request` and, if `answer`, returns the answer line; one at a time per port.
    async fn exchange(&self, request: &[u8], answer: bool) -> Result<Option<Vec<u8>>> {
        let config = &self.shared.config;
        let mut state = self.shared.state.lock().await;
        let deadline = Instant::now() + config.timeout;
        let port = match &mut state.port {
            Some(port) => port,
            empty => match LinePort::open(config) {
                Ok(port) => empty.insert(port),
                Err(e) => {
                    state.unreachable = Some(e.clone());
                    return Err(e);
                }
            },
        };
        let result = port.exchange(config, request, answer, deadline).await;
        match &result {
            Err(e @ (Error::ConnectionLost { .. } | Error::Timeout { .. })) => {
                if e.breaks_connection() {
                    tracing::debug!(target: "kubeedge_mapper::serial_line", port = %config.path,
                        error = %e, "closing the port");
                    state.port = None;
                }
                state.unreachable = Some(e.clone());
            }
            // The device answered (perhaps badly): it is there.
            _ => state.unreachable = None,
        }
        result
    }

    async fn read_visitor(&self, visitor: &SerialLineVisitor) -> Result<Value> {
        let Some(request) = &visitor.request else {
            return Err(Error::Unsupported(
                "reading a write-only property (it has no request)".into(),
            ));
        };
        let line = self.exchange(request, true).await?.unwrap_or_default();
        visitor.decode(&line).map_err(|e| match e {
            Error::BadFrame { reason } => {
                Error::bad_frame(format!("request {}: {reason}", quote_bytes(request)))
            }
            other => other,
        })
    }

    async fn write_visitor(&self, visitor: &SerialLineVisitor, value: &Value) -> Result<()> {
        let command = visitor.encode(value)?;
        let answer = self.exchange(&command, visitor.expect.is_some()).await?;
        if let (Some(expect), Some(line)) = (&visitor.expect, answer) {
            let text = String::from_utf8_lossy(&line);
            if !expect.is_match(&text) {
                return Err(Error::bad_frame(format!(
                    "the device answered {} to {}, which does not match expect {}",
                    quote(&text),
                    quote_bytes(&command),
                    expect.as_str()
                )));
            }
        }
        Ok(())
    }
}

/// An open port and the bytes read past the last answer line.
struct LinePort {
    stream: SerialStream,
    buffer: Vec<u8>,
    path: String,
    /// Set while a request is under way; still set at the next request if that one was
    /// abandoned half way (its future dropped).
    in_flight: bool,
}

impl LinePort {
    fn open(config: &SerialLineConfig) -> Result<Self> {
        config.validate()?;
        let stream = config.port().open()?;
        tracing::debug!(target: "kubeedge_mapper::serial_line", port = %config.path, "port open");
        Ok(Self {
            stream,
            buffer: Vec::with_capacity(config.max_line_bytes.min(64 * 1024)),
            path: config.path.clone(),
            in_flight: false,
        })
    }

    async fn exchange(
        &mut self,
        config: &SerialLineConfig,
        request: &[u8],
        answer: bool,
        deadline: Instant,
    ) -> Result<Option<Vec<u8>>> {
        let timeout = config.timeout;
        let path = self.path.clone();
        let operation = || format!("request {} on {path}", quote_bytes(request));
        if self.in_flight {
            self.recover_abandoned(config, deadline).await?;
        }
        self.discard_stale().await?;
        self.in_flight = true;
        let result = self
            .send_and_receive(config, request, answer, deadline)
            .await;
        self.in_flight = false;
        result.map_err(|e| match e {
            Error::Timeout {
                operation: what, ..
            } => Error::Timeout {
                operation: format!("{} ({what})", operation()),
                timeout,
            },
            other => other,
        })
    }

    async fn send_and_receive(
        &mut self,
        config: &SerialLineConfig,
        request: &[u8],
        answer: bool,
        deadline: Instant,
    ) -> Result<Option<Vec<u8>>> {
        send(
            &mut self.stream,
            request,
            deadline,
            &self.path,
            || "the port did not take the request".into(),
            config.timeout,
        )
        .await?;
        if !answer {
            return Ok(None);
        }
        self.read_line(config, deadline).await.map(Some)
    }

    /// The request before this one was abandoned half way: part of it may have been sent, and
    /// its answer may still come. Ends the device's partial line with a delimiter, then
    /// discards input until the line has been quiet for a while (a quarter of the timeout, at
    /// most 100 ms).
    async fn recover_abandoned(
        &mut self,
        config: &SerialLineConfig,
        deadline: Instant,
    ) -> Result<()> {
        tracing::debug!(target: "kubeedge_mapper::serial_line", port = %self.path,
            "the last request was abandoned; resynchronising the line");
        send(
            &mut self.stream,
            &config.delimiter,
            deadline,
            &self.path,
            || "the port did not take a delimiter".into(),
            config.timeout,
        )
        .await?;
        let quiet = (config.timeout / 4).min(Duration::from_millis(100));
        let mut scratch = [0u8; 1024];
        loop {
            match within(quiet, self.stream.read(&mut scratch)).await {
                Err(_) => break,
                Ok(Ok(0)) => return Err(Error::lost(&self.path, "serial port closed")),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(Error::lost(&self.path, e)),
            }
            if Instant::now() >= deadline {
                return Err(Error::bad_frame(
                    "the line does not fall quiet after an abandoned request",
                ));
            }
        }
        self.buffer.clear();
        self.in_flight = false;
        Ok(())
    }

    /// Drops what was read or received since the last answer.
    async fn discard_stale(&mut self) -> Result<()> {
        let mut discarded = self.buffer.len();
        self.buffer.clear();
        // What the kernel holds; then whatever is ready to read without waiting.
        let _ = self.stream.clear(ClearBuffer::Input);
        let mut scratch = [0u8; 1024];
        loop {
            match within(Duration::ZERO, self.stream.read(&mut scratch)).await {
                Err(_) => break,
                Ok(Ok(0)) => return Err(Error::lost(&self.path, "serial port closed")),
                Ok(Ok(n)) => discarded += n,
                Ok(Err(e)) => return Err(Error::lost(&self.path, e)),
            }
            if discarded > MAX_STALE_BYTES {
                return Err(Error::bad_frame(format!(
                    "the line does not fall quiet ({discarded} stale bytes discarded before the \
                     request)"
                )));
            }
        }
        if discarded > 0 {
            tracing::debug!(target: "kubeedge_mapper::serial_line", port = %self.path,
                bytes = discarded, "discarded stale input");
        }
        Ok(())
    }

    /// Reads the next non-empty line, up to the delimiter, by `deadline`.
    async fn read_line(&mut self, config: &SerialLineConfig, deadline: Instant) -> Result<Vec<u8>> {
        let delimiter = &config.delimiter[..];
        let max = config.max_line_bytes;
        // Where the search for the delimiter resumes.
        let mut searched = 0;
        let mut scratch = [0u8; 1024];
        loop {
            if let Some(at) = find(&self.buffer[searched..], delimiter).map(|at| at + searched) {
                let line: Vec<u8> = self.buffer[..at].to_vec();
                self.buffer.drain(..at + delimiter.len());
                searched = 0;
                if line.is_empty() {
                    continue;
                }
                return Ok(line);
            }
            searched = self.buffer.len().saturating_sub(delimiter.len() - 1);
            if self.buffer.len() > max + delimiter.len() - 1 {
                return Err(self.skip_long_line(config, deadline).await);
            }
            let room = (max + delimiter.len() - self.buffer.len()).min(scratch.len());
            let n = self
                .read_some(&mut scratch[..room], deadline)
                .await
                .map_err(|e| match e {
                    Error::Timeout { timeout, .. } if !self.buffer.is_empty() => Error::Timeout {
                        operation: format!("got {} without a delimiter", quote_bytes(&self.buffer)),
                        timeout,
                    },
                    other => other,
                })?;
            self.buffer.extend_from_slice(&scratch[..n]);
        }
    }

    /// After more than `maxLineBytes` without a delimiter: discards up to and including the
    /// next delimiter (or until `deadline`), and returns the error to report.
    async fn skip_long_line(&mut self, config: &SerialLineConfig, deadline: Instant) -> Error {
        let delimiter = &config.delimiter[..];
        let keep = delimiter.len() - 1;
        let mut discarded = self.buffer.len() - keep;
        self.buffer.drain(..discarded);
        let mut scratch = [0u8; 1024];
        let outcome = loop {
            if let Some(at) = find(&self.buffer, delimiter) {
                discarded += at;
                self.buffer.drain(..at + delimiter.len());
                break "up to the next delimiter".to_owned();
            }
            let drop = self.buffer.len().saturating_sub(keep);
            discarded += drop;
            self.buffer.drain(..drop);
            match self.read_some(&mut scratch, deadline).await {
                Ok(n) => self.buffer.extend_from_slice(&scratch[..n]),
                Err(Error::Timeout { .. }) => {
                    break format!("and no delimiter came within {:?}", config.timeout);
                }
                Err(e) => return e,
            }
        };
        tracing::debug!(target: "kubeedge_mapper::serial_line", port = %self.path, discarded,
            "discarded an overlong line");
        Error::bad_frame(format!(
            "an answer line longer than maxLineBytes {}: discarded {discarded} bytes {outcome}",
            config.max_line_bytes
        ))
    }

    /// One read of at least one byte, by `deadline`.
    async fn read_some(&mut self, into: &mut [u8], deadline: Instant) -> Result<usize> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        match timeout_at(deadline, self.stream.read(into)).await {
            Ok(Ok(0)) => Err(Error::lost(&self.path, "serial port closed")),
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(Error::lost(&self.path, e)),
            Err(_) => Err(Error::Timeout {
                operation: "nothing received".into(),
                timeout,
            }),
        }
    }
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl DeviceDriver for SerialLineDriver {
    type Visitor = SerialLineVisitor;

    /// Parses the property's visitor ([`SerialLineVisitor::from_config`]).
    fn parse_visitor(&self, property: &PropertySpec) -> Result<SerialLineVisitor> {
        SerialLineVisitor::from_config(property.property_type, &property.visitor.config_data)
            .map_err(|e| e.in_property(&property.name))
    }

    /// Opens the port if it is not open.
    async fn connect(&self) -> Result<()> {
        let mut state = self.shared.state.lock().await;
        if state.port.is_none() {
            state.port = Some(LinePort::open(&self.shared.config)?);
        }
        Ok(())
    }

    /// Reachable means: the port is open (or opens now), and the last request, if any, did
    /// not go unanswered or lose the port. (Like the Modbus driver's, this sends nothing of
    /// its own: a driver does not know a request every device answers harmlessly.)
    async fn health(&self) -> Result<()> {
        let mut state = self.shared.state.lock().await;
        if state.port.is_none() {
            state.port = Some(LinePort::open(&self.shared.config)?);
            if matches!(
                state.unreachable,
                Some(Error::Connect { .. } | Error::ConnectionLost { .. })
            ) {
                state.unreachable = None;
            }
        }
        match &state.unreachable {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn read(&self, visitor: &SerialLineVisitor) -> impl Future<Output = Result<Value>> + Send {
        self.read_visitor(visitor)
    }

    fn write(
        &self,
        visitor: &SerialLineVisitor,
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

    fn visitor(t: PropertyType, config: Json) -> SerialLineVisitor {
        SerialLineVisitor::from_config(t, &map(config.clone()))
            .unwrap_or_else(|e| panic!("{config}: {e}"))
    }

    #[test]
    fn escapes() {
        assert_eq!(unescape("k", r"READ T\r\n").unwrap(), b"READ T\r\n");
        assert_eq!(unescape("k", "READ T\r\n").unwrap(), b"READ T\r\n");
        assert_eq!(
            unescape("k", r"\t\0\\x\x41\x7f\xFF").unwrap(),
            b"\t\0\\xA\x7f\xff"
        );
        assert_eq!(unescape("k", "°C").unwrap(), "°C".as_bytes());
        assert_eq!(unescape("k", "").unwrap(), b"");
        for (text, want) in [
            (r"a\q", "unknown escape \\q at byte 1"),
            (r"\x4", "two hex digits"),
            (r"\x4g", "two hex digits"),
            (r"\x", "two hex digits"),
            ("end\\", "lone backslash"),
        ] {
            let err = unescape("request", text).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{text}: {err}");
            assert!(err.to_string().contains("request"), "{text}: {err}");
            assert!(err.to_string().contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn templates() {
        let t: LineTemplate = r"SET {value}\r\n".parse().unwrap();
        assert_eq!(t.render("30"), b"SET 30\r\n");
        let t: LineTemplate = r"{value},{value}".parse().unwrap();
        assert_eq!(t.render("a"), b"a,a");
        let t: LineTemplate = r#"{{"set":{value}}}\n"#.parse().unwrap();
        assert_eq!(t.render("1.5"), b"{\"set\":1.5}\n");
        let t: LineTemplate = "\\x02S{value}\\x03".parse().unwrap();
        assert_eq!(t.render("9"), b"\x02S9\x03");
        for (text, want) in [
            ("SET 30", "no {value}"),
            ("SET {val}", "a brace that is not {value}"),
            ("SET {value", "a brace"),
            ("SET }", "a brace"),
            ("SET {{value}}", "no {value}"),
            (r"SET {value}\q", "unknown escape"),
        ] {
            let err = text.parse::<LineTemplate>().unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{text}: {err}");
            assert!(err.to_string().contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn extraction() {
        let re = visitor(
            PropertyType::Float,
            json!({"request": "READ T\\r\\n", "regex": "^T=(-?[0-9.]+)$"}),
        );
        assert_eq!(re.request.as_deref(), Some(&b"READ T\r\n"[..]));
        assert_eq!(re.decode(b"T=21.5").unwrap(), Value::Float(21.5));
        let err = re.decode(b"H=45").unwrap_err();
        assert!(matches!(err, Error::BadFrame { .. }), "{err}");
        assert!(
            err.to_string()
                .contains(r#"answer "H=45" does not match regex ^T=(-?[0-9.]+)$"#),
            "{err}"
        );
        // No group: the whole match.
        let whole = visitor(
            PropertyType::Int,
            json!({"request": "N", "regex": "[0-9]+"}),
        );
        assert_eq!(whole.decode(b"count: 42 items").unwrap(), Value::Int(42));
        // An optional group that did not take part.
        let optional = visitor(
            PropertyType::Int,
            json!({"request": "N", "regex": "^(x)?y"}),
        );
        let err = optional.decode(b"y").unwrap_err();
        assert!(err.to_string().contains("captured nothing"), "{err}");

        let field = visitor(
            PropertyType::Int,
            json!({"request": "READ H\r\n", "field": "1"}),
        );
        assert_eq!(field.decode(b"H, 45 ,%").unwrap(), Value::Int(45));
        let err = field.decode(b"H").unwrap_err();
        assert!(
            err.to_string()
                .contains("has 1 field(s) separated by \",\"; field 1"),
            "{err}"
        );
        let tabbed = visitor(
            PropertyType::String,
            json!({"request": "R", "field": 2, "separator": "\t"}),
        );
        assert_eq!(tabbed.decode(b"a\tb\t c d ").unwrap(), Value::from("c d"));

        let line = visitor(PropertyType::String, json!({"request": "R"}));
        assert_eq!(line.decode(b" as is ").unwrap(), Value::from(" as is "));
        let bytes = visitor(PropertyType::Bytes, json!({"request": "R"}));
        assert_eq!(bytes.decode(b"AB").unwrap(), Value::Bytes(b"AB".to_vec()));
        let int = visitor(PropertyType::Int, json!({"request": "R"}));
        assert_eq!(int.decode(b" 7 ").unwrap(), Value::Int(7));

        // Not text; a value that does not fit.
        let err = line.decode(b"T=\xff").unwrap_err();
        assert!(
            matches!(err, Error::BadFrame { .. }) && err.to_string().contains("not UTF-8"),
            "{err}"
        );
        let err = re.decode(b"T=1.2.3").unwrap_err();
        assert!(matches!(err, Error::TypeMismatch { .. }), "{err}");
        assert!(err.to_string().contains("in answer \"T=1.2.3\""), "{err}");
        let err = int.decode("9".repeat(5000).as_bytes()).unwrap_err();
        assert!(err.to_string().len() < 500, "{err}");
    }

    #[test]
    fn writes() {
        let v = visitor(
            PropertyType::Int,
            json!({"writeTemplate": "SET {value}\\r\\n", "expect": "^OK$"}),
        );
        assert_eq!(v.encode(&Value::Int(30)).unwrap(), b"SET 30\r\n");
        assert!(v.expect.as_ref().unwrap().is_match("OK"));
        let ascii_case = visitor(
            PropertyType::Int,
            json!({"writeTemplate": "S {value}", "expect": "(?i-u)^ok$"}),
        );
        assert!(ascii_case.expect.as_ref().unwrap().is_match("Ok"));
        let err = v.encode(&Value::Float(1.0)).unwrap_err();
        assert!(matches!(err, Error::TypeMismatch { .. }), "{err}");
        let s = visitor(
            PropertyType::String,
            json!({"writeTemplate": "NAME {value}\n"}),
        );
        assert_eq!(s.encode(&Value::from("hall 2")).unwrap(), b"NAME hall 2\n");
        let err = s.encode(&Value::from("x\r\nRESET")).unwrap_err();
        assert!(
            matches!(err, Error::TypeMismatch { .. })
                && err.to_string().contains("control character"),
            "{err}"
        );
        let read_only = visitor(PropertyType::Int, json!({"request": "R"}));
        let err = read_only.encode(&Value::Int(1)).unwrap_err();
        assert!(matches!(err, Error::Unsupported(_)), "{err}");
    }

    #[test]
    fn bad_visitors_say_what_is_wrong() {
        for (t, config, want) in [
            (PropertyType::Int, json!({}), "neither request"),
            (PropertyType::Int, json!({"request": ""}), "neither request"),
            (
                PropertyType::Int,
                json!({"request": "R", "regex": "(", "field": 1}),
                "regex (",
            ),
            (
                PropertyType::Int,
                json!({"request": "R", "regex": "x", "field": 1}),
                "both regex and field",
            ),
            (
                PropertyType::Int,
                json!({"request": "R", "field": -1}),
                "field -1",
            ),
            (
                PropertyType::Int,
                json!({"request": "R", "field": 1, "separator": ""}),
                "separator is empty",
            ),
            (
                PropertyType::Int,
                json!({"request": "R", "expect": "OK"}),
                "expect without a writeTemplate",
            ),
            (
                PropertyType::Int,
                json!({"writeTemplate": "S {value}", "expect": "[a"}),
                "expect [a",
            ),
            (
                PropertyType::Int,
                json!({"request": "\\z"}),
                "unknown escape",
            ),
            (
                PropertyType::Int,
                json!({"request": "R", "regex": "a{1000}{1000}"}),
                "regex",
            ),
            (PropertyType::Stream, json!({"request": "R"}), "STREAM"),
        ] {
            let err = SerialLineVisitor::from_config(t, &map(config.clone())).unwrap_err();
            assert!(!err.is_retryable(), "{config}: {err}");
            assert!(err.to_string().contains(want), "{config}: {err}");
        }
    }

    #[test]
    fn protocol_config() {
        let c = SerialLineConfig::from_protocol_config(&map(json!({
            "serialPort": "/dev/ttyUSB0", "baudRate": "115200", "dataBits": 7,
            "parity": "even", "stopBits": 2, "delimiter": "\\n", "timeout": 250,
            "maxLineBytes": 128
        })))
        .unwrap();
        assert_eq!(
            c,
            SerialLineConfig {
                path: "/dev/ttyUSB0".into(),
                baud_rate: 115_200,
                data_bits: 7,
                parity: Parity::Even,
                stop_bits: 2,
                delimiter: b"\n".to_vec(),
                timeout: Duration::from_millis(250),
                max_line_bytes: 128,
            }
        );
        let c =
            SerialLineConfig::from_protocol_config(&map(json!({"serialPort": "/dev/x"}))).unwrap();
        assert_eq!(c, SerialLineConfig::new("/dev/x", 9600));
        for (config, want) in [
            (json!({}), "no serialPort"),
            (json!({"serialPort": ""}), "serialPort is empty"),
            (json!({"serialPort": "/x", "baudRate": 0}), "baudRate 0"),
            (json!({"serialPort": "/x", "dataBits": 9}), "dataBits 9"),
            (json!({"serialPort": "/x", "stopBits": 3}), "stopBits 3"),
            (
                json!({"serialPort": "/x", "parity": "mark"}),
                "parity \"mark\"",
            ),
            (
                json!({"serialPort": "/x", "delimiter": ""}),
                "delimiter is empty",
            ),
            (json!({"serialPort": "/x", "delimiter": "\\y"}), "delimiter"),
            (json!({"serialPort": "/x", "timeout": 0}), "timeout 0"),
        ] {
            let err = SerialLineConfig::from_protocol_config(&map(config.clone())).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{config}: {err}");
            assert!(err.to_string().contains(want), "{config}: {err}");
        }
    }

    #[test]
    fn a_config_built_by_hand_is_checked_before_use() {
        let mut config = SerialLineConfig::new("/dev/null", 9600);
        config.delimiter.clear();
        let err = LinePort::open(&config).err().expect("refused");
        assert!(err.to_string().contains("delimiter is empty"), "{err}");
    }

    #[tokio::test]
    async fn a_missing_port_is_a_retryable_connect_error() {
        let driver = SerialLineDriver::new(SerialLineConfig::new("/nonexistent/tty", 9600));
        let v = visitor(PropertyType::Int, json!({"request": "R"}));
        for err in [
            driver.read(&v).await.unwrap_err(),
            driver.health().await.unwrap_err(),
            driver.connect().await.unwrap_err(),
        ] {
            assert!(matches!(err, Error::Connect { .. }), "{err}");
            assert!(err.is_retryable());
            assert!(err.to_string().contains("/nonexistent/tty"), "{err}");
        }
    }
}
