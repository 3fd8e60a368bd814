//! A byte stream from an MQTT client of the embedded broker (kubeedge-twin's
//! `decode_client_packet`): never panics, never takes bytes it did not decode, never accepts a
//! packet over the size limit; every decoded packet re-encodes to bytes that decode to the
//! same packet.
#![no_main]

use bytes::BytesMut;
use kubeedge_twin::mqtt::packet::{Inbound, decode_client_packet};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match decode_client_packet(&mut buf, MAX) {
            Ok(None) => {
                assert_eq!(buf.len(), before, "an incomplete packet takes no bytes");
                break;
            }
            Err(_) => break,
            Ok(Some(inbound)) => {
                let taken = before - buf.len();
                assert!(taken >= 2 && taken <= MAX + 5, "took {taken} bytes");
                if let Inbound::Packet(packet) = inbound {
                    let mut out = BytesMut::new();
                    packet.write(&mut out, usize::MAX).expect("a decoded packet encodes");
                    let again = decode_client_packet(&mut out, MAX * 2)
                        .expect("the encoding decodes")
                        .expect("whole");
                    assert_eq!(again, Inbound::Packet(packet));
                    assert!(out.is_empty());
                }
            }
        }
    }
});
