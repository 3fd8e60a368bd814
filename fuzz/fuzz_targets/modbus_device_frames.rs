//! What a Modbus TCP client sends the simulated thermostat (hostile: anyone who reaches its
//! port): one complete request, MBAP header and all. Answering never panics; an answer is a
//! well-formed Modbus TCP response to that request (same transaction id, protocol 0, a length
//! that matches, same unit, the function or its exception).
#![no_main]

use kubeedge_mapper::modbus::simulated_thermostat::answer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() > 260 {
        return;
    }
    let Ok(Some(response)) = answer(data) else {
        return;
    };
    assert!(response.len() >= 9, "{response:?}");
    assert_eq!(response[..2], data[..2], "transaction id");
    assert_eq!(response[2..4], [0, 0], "protocol id");
    let len = u16::from_be_bytes([response[4], response[5]]) as usize;
    assert_eq!(len, response.len() - 6, "MBAP length");
    assert_eq!(response[6], data[6], "unit id");
    assert_eq!(response[7] & 0x7f, data[7] & 0x7f, "function");
});
