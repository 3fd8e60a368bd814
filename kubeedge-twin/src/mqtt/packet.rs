//! Reading MQTT 3.1.1 packets from a client, as the embedded broker does (bounded, checked).
//!
//! [`decode_client_packet`] frames one packet out of a buffer with rumqttc's codec
//! (`rumqttc::mqttbytes`) and adds the checks of the MQTT 3.1.1 specification that the codec
//! leaves out: the fixed-header flags of every packet type ([MQTT-2.2.2-1]), and for CONNECT
//! the protocol name and level ([MQTT-3.1.2-2]), the reserved connect flag
//! ([MQTT-3.1.2-3]), the password flag without the user name flag ([MQTT-3.1.2-22]) and an
//! empty client id without clean session ([MQTT-3.1.3-8]). It is also what the fuzz target
//! `broker_packets` runs.

use bytes::BytesMut;
use rumqttc::mqttbytes;
use rumqttc::{ConnectReturnCode, Packet};

/// What [`decode_client_packet`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A well-formed packet.
    Packet(Packet),
    /// A CONNECT the broker must answer with a CONNACK carrying this refusal code, then close
    /// the connection: an unsupported protocol name or level (`RefusedProtocolVersion`, for
    /// MQTT 3.1 `MQIsdp` and MQTT 5 too) or an empty client id without clean session
    /// (`BadClientId`).
    RefusedConnect(ConnectReturnCode),
}

/// Frames and decodes the next packet at the front of `buf`, removing its bytes.
///
/// Returns `Ok(None)` while `buf` holds only part of a packet (read more and call again) and an
/// [`InvalidData`](std::io::ErrorKind::InvalidData) error for a packet the broker must answer
/// by closing the connection: malformed, longer than `max_size` bytes of remaining length (known
/// from the fixed header, before the body arrives), wrong fixed-header flags, or a CONNECT with
/// the reserved flag set or a password without a user name. Never panics, whatever the bytes.
///
/// ```
/// use bytes::BytesMut;
/// use kubeedge_twin::mqtt::packet::{decode_client_packet, Inbound};
/// use rumqttc::{ConnectReturnCode, Packet};
///
/// let mut buf = BytesMut::from(&b"\xc0\x00"[..]);
/// assert_eq!(decode_client_packet(&mut buf, 1024).unwrap(), Some(Inbound::Packet(Packet::PingReq)));
/// // MQTT 5: refused with "unacceptable protocol version".
/// let mut buf = BytesMut::from(&b"\x10\x0d\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x00"[..]);
/// assert_eq!(
///     decode_client_packet(&mut buf, 1024).unwrap(),
///     Some(Inbound::RefusedConnect(ConnectReturnCode::RefusedProtocolVersion))
/// );
/// // The reserved connect flag: closed.
/// let mut buf = BytesMut::from(&b"\x10\x0c\x00\x04MQTT\x04\x03\x00\x3c\x00\x00"[..]);
/// assert!(decode_client_packet(&mut buf, 1024).is_err());
/// ```
pub fn decode_client_packet(
    buf: &mut BytesMut,
    max_size: usize,
) -> std::io::Result<Option<Inbound>> {
    let header = match mqttbytes::check(buf.iter(), max_size) {
        Ok(header) => header,
        Err(mqttbytes::Error::InsufficientBytes(_)) => return Ok(None),
        Err(e) => return Err(invalid(e.to_string())),
    };
    let first = buf[0];
    let frame_len = header.frame_length();
    check_flags(first)?;
    if first >> 4 == 1 {
        // The body starts after the fixed header: frame length minus remaining length.
        let body_start = frame_len - remaining_len(&buf[..frame_len]);
        if let Some(code) = check_connect(&buf[body_start..frame_len])? {
            let _ = buf.split_to(frame_len);
            return Ok(Some(Inbound::RefusedConnect(code)));
        }
    }
    let packet = Packet::read(buf, max_size).map_err(|e| invalid(e.to_string()))?;
    if let Packet::Connect(connect) = &packet
        && connect.client_id.is_empty()
        && !connect.clean_session
    {
        return Ok(Some(Inbound::RefusedConnect(
            ConnectReturnCode::BadClientId,
        )));
    }
    if let Packet::Unsubscribe(unsubscribe) = &packet
        && unsubscribe.topics.is_empty()
    {
        return Err(invalid("UNSUBSCRIBE without a topic filter".into()));
    }
    Ok(Some(Inbound::Packet(packet)))
}

/// The remaining length of a complete frame (the fixed header was already checked).
fn remaining_len(frame: &[u8]) -> usize {
    let mut len = 0usize;
    for (i, byte) in frame.iter().skip(1).take(4).enumerate() {
        len |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            break;
        }
    }
    len
}

/// The fixed-header flags each packet type must carry ([MQTT-2.2.2-1], [MQTT-2.2.2-2]).
fn check_flags(first: u8) -> std::io::Result<()> {
    let flags = first & 0x0f;
    let ok = match first >> 4 {
        // PUBLISH: DUP, QoS (3 is refused by the codec) and RETAIN are all meaningful.
        3 => true,
        // PUBREL, SUBSCRIBE, UNSUBSCRIBE.
        6 | 8 | 10 => flags == 0b0010,
        _ => flags == 0,
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "packet type {} with reserved flags {flags:#06b}",
            first >> 4
        )))
    }
}

/// Checks a CONNECT's variable header (`body` is the packet after its fixed header): a
/// refusal code for an unsupported protocol, an error for a malformed packet.
fn check_connect(body: &[u8]) -> std::io::Result<Option<ConnectReturnCode>> {
    let short = || invalid("CONNECT too short".into());
    let name_len = usize::from(u16::from_be_bytes([
        *body.first().ok_or_else(short)?,
        *body.get(1).ok_or_else(short)?,
    ]));
    let name = body.get(2..2 + name_len).ok_or_else(short)?;
    let level = *body.get(2 + name_len).ok_or_else(short)?;
    let flags = *body.get(3 + name_len).ok_or_else(short)?;
    if name != b"MQTT" || level != 4 {
        return Ok(Some(ConnectReturnCode::RefusedProtocolVersion));
    }
    if flags & 0x01 != 0 {
        return Err(invalid("CONNECT with the reserved flag set".into()));
    }
    if flags & 0x40 != 0 && flags & 0x80 == 0 {
        return Err(invalid("CONNECT with a password but no user name".into()));
    }
    Ok(None)
}

fn invalid(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> std::io::Result<Option<Inbound>> {
        decode_client_packet(&mut BytesMut::from(bytes), 1024)
    }

    #[test]
    fn connect_checks() {
        // A good CONNECT, clean session, empty id.
        let good = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00";
        assert!(matches!(
            decode(good),
            Ok(Some(Inbound::Packet(Packet::Connect(_))))
        ));
        // Empty id without clean session.
        let mut no_clean = good.to_vec();
        no_clean[9] = 0x00;
        assert_eq!(
            decode(&no_clean).unwrap(),
            Some(Inbound::RefusedConnect(ConnectReturnCode::BadClientId))
        );
        // Protocol name and levels.
        let mqisdp = b"\x10\x0e\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x00";
        assert_eq!(
            decode(mqisdp).unwrap(),
            Some(Inbound::RefusedConnect(
                ConnectReturnCode::RefusedProtocolVersion
            ))
        );
        let mut level3 = good.to_vec();
        level3[8] = 3;
        assert_eq!(
            decode(&level3).unwrap(),
            Some(Inbound::RefusedConnect(
                ConnectReturnCode::RefusedProtocolVersion
            ))
        );
        // Password flag without user name.
        let password = b"\x10\x10\x00\x04MQTT\x04\x42\x00\x3c\x00\x00\x00\x02pw";
        assert!(decode(password).is_err());
        // Reserved bit.
        let mut reserved = good.to_vec();
        reserved[9] = 0x03;
        assert!(decode(&reserved).is_err());
        // Truncated variable header.
        assert!(decode(b"\x10\x03\x00\x04M").is_err());
    }

    #[test]
    fn fixed_header_flags() {
        assert!(decode(b"\xc1\x00").is_err()); // PINGREQ with a flag
        assert!(decode(b"\x80\x06\x00\x01\x00\x01a\x00").is_err()); // SUBSCRIBE without 0b0010
        assert!(decode(b"\x82\x06\x00\x01\x00\x01a\x00").unwrap().is_some());
        assert!(decode(b"\xa2\x02\x00\x01").is_err()); // UNSUBSCRIBE without filters
        assert!(decode(b"\x36\x05\x00\x01a\x00\x01").is_err()); // QoS 3
        assert!(decode(b"\x00\x00").is_err()); // type 0
        assert!(decode(b"\xf0\x00").is_err()); // type 15
    }

    #[test]
    fn partial_and_oversized() {
        assert_eq!(decode(b"\x30").unwrap(), None);
        assert_eq!(decode(b"\x30\x05\x00\x01").unwrap(), None);
        assert!(decode(b"\x30\xff\xff\x7f").is_err()); // 2 MiB > 1024
        assert!(decode(b"\x30\xff\xff\xff\xff\x01").is_err()); // five length bytes
    }
}
