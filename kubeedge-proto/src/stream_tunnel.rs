//! KubeEdge's stream tunnel: the frames cloudStream and edgeStream exchange for `kubectl logs`,
//! `exec`, `attach` and container metrics.
//!
//! The edge dials `wss://<tunnelServer>`[`TUNNEL_PATH`] with its node certificate and the headers
//! [`HOSTNAME_OVERRIDE_HEADER`] (its node name) and [`INTERNAL_IP_HEADER`]. Every WebSocket
//! message on that connection is one [`TunnelFrame`]: the API server connection it belongs to
//! (`connectID`, an unsigned varint), its [`TunnelKind`] (a varint), then the data. KubeEdge
//! v1.23 sends them as *text* messages although they are binary (gorilla's `TextMessage`); a
//! reader must take both.
//!
//! A `*_CONNECT` frame's data is a [`ConnectRequest`]: the kubelet request the API server made
//! (URL, headers, and for exec and attach the method), which the edge replays against its local
//! kubelet server. The answer comes back as [`TunnelKind::Data`] frames with the same connect id;
//! [`TunnelKind::RemoveConnect`] ends one stream from either side.
//!
//! ```
//! use kubeedge_proto::stream_tunnel::{TunnelFrame, TunnelKind, MAX_TUNNEL_DATA};
//!
//! let frame = TunnelFrame::new(300, TunnelKind::Data, &b"log line\n"[..]);
//! let wire = frame.encode();
//! assert_eq!(&wire[..3], &[0xac, 0x02, 3]); // varint 300, then DATA = 3
//! assert_eq!(TunnelFrame::decode(&wire, MAX_TUNNEL_DATA).unwrap(), frame);
//! ```

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The path the edge's tunnel connects to.
pub const TUNNEL_PATH: &str = "/v1/kubeedge/connect";
/// The header carrying the edge's node name (its `hostnameOverride`).
pub const HOSTNAME_OVERRIDE_HEADER: &str = "SessionHostNameOverride";
/// The header carrying the edge's internal IP address.
pub const INTERNAL_IP_HEADER: &str = "SessionInternalIP";
/// The most data one frame carries by default: KubeEdge's `MaxRespBodyLength`, 1 MiB. KubeEdge
/// silently cuts longer data; [`TunnelFrame::decode`] refuses it.
pub const MAX_TUNNEL_DATA: usize = 1 << 20;
/// The longest unsigned varint of a `u64`.
const MAX_VARINT_LEN: usize = 10;

/// What a tunnel frame is, KubeEdge's `MessageType` (an `iota` from 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TunnelKind {
    /// Open a log stream (`LOGS_CONNECT`, 0).
    LogsConnect,
    /// Open an exec session (`EXEC_CONNECT`, 1).
    ExecConnect,
    /// Ask for container metrics (`METRIC_CONNECT`, 2).
    MetricConnect,
    /// Bytes of an open stream (`DATA`, 3).
    Data,
    /// End one stream (`REMOVE_CONNECT`, 4).
    RemoveConnect,
    /// Close one stream (`CLOSE_CONNECT`, 5).
    CloseConnect,
    /// Open an attach session (`ATTACH_CONNECT`, 6).
    AttachConnect,
    /// A type this version does not know; kept so that it can be logged and skipped.
    Unknown(u64),
}

impl TunnelKind {
    /// The number on the wire.
    pub fn code(self) -> u64 {
        match self {
            Self::LogsConnect => 0,
            Self::ExecConnect => 1,
            Self::MetricConnect => 2,
            Self::Data => 3,
            Self::RemoveConnect => 4,
            Self::CloseConnect => 5,
            Self::AttachConnect => 6,
            Self::Unknown(code) => code,
        }
    }

    /// Whether this kind opens a stream (its data is a [`ConnectRequest`]).
    pub fn is_connect(self) -> bool {
        matches!(
            self,
            Self::LogsConnect | Self::ExecConnect | Self::MetricConnect | Self::AttachConnect
        )
    }
}

impl From<u64> for TunnelKind {
    fn from(code: u64) -> Self {
        match code {
            0 => Self::LogsConnect,
            1 => Self::ExecConnect,
            2 => Self::MetricConnect,
            3 => Self::Data,
            4 => Self::RemoveConnect,
            5 => Self::CloseConnect,
            6 => Self::AttachConnect,
            other => Self::Unknown(other),
        }
    }
}

impl std::fmt::Display for TunnelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::LogsConnect => f.write_str("LOGS_CONNECT"),
            Self::ExecConnect => f.write_str("EXEC_CONNECT"),
            Self::MetricConnect => f.write_str("METRIC_CONNECT"),
            Self::Data => f.write_str("DATA"),
            Self::RemoveConnect => f.write_str("REMOVE_CONNECT"),
            Self::CloseConnect => f.write_str("CLOSE_CONNECT"),
            Self::AttachConnect => f.write_str("ATTACH_CONNECT"),
            Self::Unknown(code) => write!(f, "UNKNOWN({code})"),
        }
    }
}

/// One frame of the tunnel, KubeEdge's `stream.Message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelFrame {
    /// The API server connection this frame belongs to.
    pub connect_id: u64,
    /// What the frame is.
    pub kind: TunnelKind,
    /// Its data: a [`ConnectRequest`] for the connect kinds, stream bytes for [`TunnelKind::Data`].
    pub data: Bytes,
}

impl TunnelFrame {
    /// A frame of `kind` for connection `connect_id`.
    pub fn new(connect_id: u64, kind: TunnelKind, data: impl Into<Bytes>) -> Self {
        Self {
            connect_id,
            kind,
            data: data.into(),
        }
    }

    /// The WebSocket message's payload: varint id, varint kind, data.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 * MAX_VARINT_LEN + self.data.len());
        put_uvarint(&mut out, self.connect_id);
        put_uvarint(&mut out, self.kind.code());
        out.put_slice(&self.data);
        out
    }

    /// Decodes one WebSocket message's payload; data longer than `max_data` bytes is refused
    /// (nothing is copied for it).
    pub fn decode(payload: &[u8], max_data: usize) -> Result<Self> {
        let (connect_id, rest) = uvarint(payload, "connect id")?;
        let (kind, data) = uvarint(rest, "message type")?;
        if data.len() > max_data {
            return Err(Error::TooLarge {
                what: "tunnel frame data",
                len: data.len(),
                max: max_data,
            });
        }
        Ok(Self {
            connect_id,
            kind: kind.into(),
            data: Bytes::copy_from_slice(data),
        })
    }
}

/// Appends `value` as an unsigned LEB128 varint (Go's `binary.PutUvarint`).
fn put_uvarint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads an unsigned varint as Go's `binary.ReadUvarint` does: at most ten bytes, the tenth at
/// most 1 (anything longer overflows 64 bits).
fn uvarint<'a>(input: &'a [u8], what: &str) -> Result<(u64, &'a [u8])> {
    let mut value = 0u64;
    for (i, &byte) in input.iter().enumerate().take(MAX_VARINT_LEN) {
        if i == MAX_VARINT_LEN - 1 && byte > 1 {
            return Err(Error::Frame(format!(
                "tunnel {what}: varint overflows 64 bits"
            )));
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Ok((value, &input[i + 1..]));
        }
    }
    // The tenth byte always ends the loop: the input ended first.
    Err(Error::Frame(format!("tunnel {what}: truncated varint")))
}

/// The data of a `*_CONNECT` frame: the kubelet request the API server made, as KubeEdge's
/// `EdgedLogsConnection`, `EdgedExecConnection`, `EdgedAttachConnection` and
/// `EdgedMetricsConnection` marshal it (`{"MessID":…,"url":{…},"header":{…}}`, with `"method"`
/// for exec and attach).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectRequest {
    /// The connect id again (KubeEdge's `MessID`).
    #[serde(rename = "MessID", default)]
    pub mess_id: u64,
    /// The request's URL, as Go's `url.URL` marshals.
    #[serde(default)]
    pub url: GoUrl,
    /// The request's headers, as Go's `http.Header` (each name to its values; `null` is none).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub header: BTreeMap<String, Vec<String>>,
    /// The HTTP method, for exec and attach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

impl ConnectRequest {
    /// Decodes a connect frame's data (bounded by the frame it came in).
    pub fn from_json(data: &[u8]) -> Result<Self> {
        Ok(serde_json::from_slice(data)?)
    }

    /// Encodes it as KubeEdge's Go encoder does.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        crate::go_json::to_vec(self)
    }
}

fn null_as_empty<'de, D>(d: D) -> std::result::Result<BTreeMap<String, Vec<String>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Ok(Option::<BTreeMap<String, Vec<String>>>::deserialize(d)?.unwrap_or_default())
}

/// Go's `net/url.URL` as `encoding/json` writes it (exported fields in declaration order;
/// `User` is `null`, or `{}` since `Userinfo` has no exported fields).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct GoUrl {
    /// `https`, `http`, or empty.
    pub scheme: String,
    /// An opaque URL's text.
    pub opaque: String,
    /// Credentials; never carried here (always `null`).
    pub user: Option<serde_json::Value>,
    /// `host` or `host:port`.
    pub host: String,
    /// The decoded path, e.g. `/containerLogs/default/web/nginx`.
    pub path: String,
    /// The encoded path, when it differs from the default encoding of `path`.
    pub raw_path: String,
    /// Do not emit an empty host.
    pub omit_host: bool,
    /// Append a query `?` even if `raw_query` is empty.
    pub force_query: bool,
    /// The encoded query, without `?`, e.g. `follow=true&tailLines=10`.
    pub raw_query: String,
    /// The fragment, without `#`.
    pub fragment: String,
    /// The encoded fragment.
    pub raw_fragment: String,
}

impl GoUrl {
    /// The query's `(name, value)` pairs, percent-decoded (`+` is a space), in order.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        self.raw_query
            .split('&')
            .filter(|part| !part.is_empty())
            .map(|part| {
                let (name, value) = part.split_once('=').unwrap_or((part, ""));
                (percent_decode(name), percent_decode(value))
            })
            .collect()
    }
}

/// Decodes `%XX` escapes and `+`; an invalid escape is kept as it is, as Go's lenient readers do
/// for display (a strict caller checks the result).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(|b| (*b as char).to_digit(16)),
                bytes.get(i + 2).and_then(|b| (*b as char).to_digit(16)),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push((hi * 16 + lo) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_match_gos_encoding() {
        for (value, wire) in [
            (0u64, vec![0u8]),
            (1, vec![1]),
            (127, vec![0x7f]),
            (128, vec![0x80, 1]),
            (300, vec![0xac, 2]),
            (
                u64::MAX,
                vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1],
            ),
        ] {
            let mut out = Vec::new();
            put_uvarint(&mut out, value);
            assert_eq!(out, wire, "{value}");
            assert_eq!(uvarint(&wire, "x").unwrap(), (value, &[][..]));
        }
    }

    #[test]
    fn malformed_varints_are_refused() {
        assert!(uvarint(&[], "x").is_err());
        assert!(uvarint(&[0x80], "x").is_err());
        // Ten bytes whose last is above 1, and eleven continuation bytes: both overflow.
        assert!(
            uvarint(
                &[0xff; 9].iter().copied().chain([2]).collect::<Vec<_>>(),
                "x"
            )
            .is_err()
        );
        assert!(uvarint(&[0x80; 11], "x").is_err());
    }

    #[test]
    fn frames_round_trip_and_oversized_data_is_refused() {
        let frame = TunnelFrame::new(7, TunnelKind::Unknown(99), &b"abc"[..]);
        let wire = frame.encode();
        assert_eq!(wire, [7, 99, b'a', b'b', b'c']);
        assert_eq!(TunnelFrame::decode(&wire, 3).unwrap(), frame);
        assert!(matches!(
            TunnelFrame::decode(&wire, 2),
            Err(Error::TooLarge { len: 3, max: 2, .. })
        ));
        assert!(TunnelFrame::decode(&[7], 10).is_err());
    }

    #[test]
    fn a_logs_connect_as_kubeedge_marshals_it() {
        // What KubeEdge v1.23's EdgedLogsConnection marshals: net/url's exported fields in their
        // order (Go 1.23), Go's HTML-safe escapes. Written from KubeEdge's and Go's source, not
        // captured: the interop tests of the stream tunnel are to check it against the real one.
        let go = br#"{"MessID":3,"url":{"Scheme":"https","Opaque":"","User":null,"Host":"127.0.0.1:10003","Path":"/containerLogs/default/web/nginx","RawPath":"","OmitHost":false,"ForceQuery":false,"RawQuery":"follow=true\u0026tailLines=10","Fragment":"","RawFragment":""},"header":{"Accept":["*/*"],"User-Agent":["kube-apiserver/v1.32.13"]}}"#;
        let req = ConnectRequest::from_json(go).unwrap();
        assert_eq!(req.mess_id, 3);
        assert_eq!(req.url.path, "/containerLogs/default/web/nginx");
        assert_eq!(
            req.url.query_pairs(),
            [
                ("follow".to_owned(), "true".to_owned()),
                ("tailLines".to_owned(), "10".to_owned())
            ]
        );
        assert_eq!(req.method, None);
        assert_eq!(req.to_json().unwrap(), go.to_vec());
    }

    #[test]
    fn an_exec_connect_keeps_its_method_and_tolerates_missing_fields() {
        let req = ConnectRequest::from_json(
            br#"{"MessID":9,"url":{"Path":"/exec/ns/p/c","RawQuery":"command=sh\u0026command=-c\u0026command=echo+a%26b\u0026stdin=1"},"header":null,"method":"POST"}"#,
        )
        .unwrap();
        assert_eq!(req.method.as_deref(), Some("POST"));
        assert!(req.header.is_empty());
        let commands: Vec<String> = req
            .url
            .query_pairs()
            .into_iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v)
            .collect();
        assert_eq!(commands, ["sh", "-c", "echo a&b"]);
    }
}
