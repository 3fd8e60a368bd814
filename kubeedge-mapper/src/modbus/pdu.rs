//! Requests, their responses and exception codes, shared by the TCP and RTU links.
//!
//! rmodbus builds the request frames and extracts the data of a response; before a response
//! reaches rmodbus it is checked here completely (function, exception, byte count, echo of a
//! write), so that no device input can make a parser index out of bounds.

use rmodbus::ModbusProto;
use rmodbus::client::ModbusRequest;

use crate::error::{Error, Result};

use super::config::{MAX_READ_BITS, MAX_READ_REGISTERS, MAX_WRITE_BITS, MAX_WRITE_REGISTERS};
use super::exception_code::ExceptionCode;

/// One Modbus request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Request {
    ReadCoils { address: u16, count: u16 },
    ReadDiscreteInputs { address: u16, count: u16 },
    ReadHoldingRegisters { address: u16, count: u16 },
    ReadInputRegisters { address: u16, count: u16 },
    WriteSingleCoil { address: u16, value: bool },
    WriteSingleRegister { address: u16, value: u16 },
    WriteMultipleCoils { address: u16, values: Vec<bool> },
    WriteMultipleRegisters { address: u16, values: Vec<u16> },
}

/// What a successful response carried.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Response {
    Bits(Vec<bool>),
    Registers(Vec<u16>),
    Written,
}

/// What the bytes after the function code of a valid response look like.
pub(crate) enum Expect {
    /// A read: a byte count that must be this, then that many bytes.
    ByteCount(u8),
    /// A write: four bytes (address and value or quantity).
    Echo,
}

impl Request {
    pub(crate) fn function(&self) -> u8 {
        match self {
            Self::ReadCoils { .. } => 0x01,
            Self::ReadDiscreteInputs { .. } => 0x02,
            Self::ReadHoldingRegisters { .. } => 0x03,
            Self::ReadInputRegisters { .. } => 0x04,
            Self::WriteSingleCoil { .. } => 0x05,
            Self::WriteSingleRegister { .. } => 0x06,
            Self::WriteMultipleCoils { .. } => 0x0F,
            Self::WriteMultipleRegisters { .. } => 0x10,
        }
    }

    fn address_and_count(&self) -> (u16, usize) {
        match self {
            Self::ReadCoils { address, count }
            | Self::ReadDiscreteInputs { address, count }
            | Self::ReadHoldingRegisters { address, count }
            | Self::ReadInputRegisters { address, count } => (*address, usize::from(*count)),
            Self::WriteSingleCoil { address, .. } | Self::WriteSingleRegister { address, .. } => {
                (*address, 1)
            }
            Self::WriteMultipleCoils { address, values } => (*address, values.len()),
            Self::WriteMultipleRegisters { address, values } => (*address, values.len()),
        }
    }

    /// What the request does, for errors and logs.
    pub(crate) fn describe(&self, unit: u8) -> String {
        let (address, count) = self.address_and_count();
        let what = match self {
            Self::ReadCoils { .. } => "read coils",
            Self::ReadDiscreteInputs { .. } => "read discrete inputs",
            Self::ReadHoldingRegisters { .. } => "read holding registers",
            Self::ReadInputRegisters { .. } => "read input registers",
            Self::WriteSingleCoil { .. } | Self::WriteMultipleCoils { .. } => "write coils",
            Self::WriteSingleRegister { .. } | Self::WriteMultipleRegisters { .. } => {
                "write holding registers"
            }
        };
        let last = usize::from(address) + count.max(1) - 1;
        format!(
            "{what} {address}..={last} (function {:#04x}) of unit {unit}",
            self.function()
        )
    }

    /// Checks counts and addresses against the protocol's limits.
    pub(crate) fn check(&self) -> Result<()> {
        let (address, count) = self.address_and_count();
        let max = match self {
            Self::ReadCoils { .. } | Self::ReadDiscreteInputs { .. } => MAX_READ_BITS,
            Self::ReadHoldingRegisters { .. } | Self::ReadInputRegisters { .. } => {
                MAX_READ_REGISTERS
            }
            Self::WriteSingleCoil { .. } | Self::WriteSingleRegister { .. } => 1,
            Self::WriteMultipleCoils { .. } => MAX_WRITE_BITS,
            Self::WriteMultipleRegisters { .. } => MAX_WRITE_REGISTERS,
        };
        if count == 0 || count > usize::from(max) {
            return Err(Error::config(format!(
                "function {:#04x} takes 1 to {max} items, not {count}",
                self.function()
            )));
        }
        if usize::from(address) + count > 65_536 {
            return Err(Error::config(format!(
                "{count} items from address {address} run past address 65535"
            )));
        }
        Ok(())
    }

    /// The request frame for `proto` (with the MBAP header and transaction id for TCP, with the
    /// CRC for RTU), built by rmodbus. Returns the rmodbus request that parses the response.
    pub(crate) fn build(
        &self,
        unit: u8,
        proto: ModbusProto,
        transaction: u16,
        frame: &mut Vec<u8>,
    ) -> Result<ModbusRequest> {
        let mut rq = ModbusRequest::new(unit, proto);
        rq.tr_id = transaction;
        let built = match self {
            Self::ReadCoils { address, count } => rq.generate_get_coils(*address, *count, frame),
            Self::ReadDiscreteInputs { address, count } => {
                rq.generate_get_discretes(*address, *count, frame)
            }
            Self::ReadHoldingRegisters { address, count } => {
                rq.generate_get_holdings(*address, *count, frame)
            }
            Self::ReadInputRegisters { address, count } => {
                rq.generate_get_inputs(*address, *count, frame)
            }
            Self::WriteSingleCoil { address, value } => {
                rq.generate_set_coil(*address, u8::from(*value), frame)
            }
            Self::WriteSingleRegister { address, value } => {
                rq.generate_set_holding(*address, *value, frame)
            }
            Self::WriteMultipleCoils { address, values } => {
                let values: Vec<u8> = values.iter().map(|&b| u8::from(b)).collect();
                rq.generate_set_coils_bulk(*address, &values, frame)
            }
            Self::WriteMultipleRegisters { address, values } => {
                rq.generate_set_holdings_bulk(*address, values, frame)
            }
        };
        built.map_err(|e| Error::config(format!("cannot build the request: {e}")))?;
        Ok(rq)
    }

    /// The shape of a valid (non-exception) response.
    pub(crate) fn expect(&self) -> Expect {
        match self {
            Self::ReadCoils { count, .. } | Self::ReadDiscreteInputs { count, .. } => {
                // At most 250 for a checked request; saturates for an unchecked one.
                Expect::ByteCount(u8::try_from(count.div_ceil(8)).unwrap_or(u8::MAX))
            }
            Self::ReadHoldingRegisters { count, .. } | Self::ReadInputRegisters { count, .. } => {
                // At most 250 for a checked request; saturates for an unchecked one.
                Expect::ByteCount(u8::try_from(u32::from(*count) * 2).unwrap_or(u8::MAX))
            }
            _ => Expect::Echo,
        }
    }

    /// The length of a complete response PDU (function code onwards) whose first bytes are
    /// `pdu`, once it can be known: `Ok(None)` until enough bytes are in. Fails as soon as the
    /// bytes cannot start a valid response (another function, a wrong byte count).
    pub(crate) fn response_pdu_len(&self, pdu: &[u8]) -> Result<Option<usize>> {
        let Some(&function) = pdu.first() else {
            return Ok(None);
        };
        if function == self.function() | 0x80 {
            return Ok(Some(2));
        }
        if function != self.function() {
            return Err(Error::bad_frame(format!(
                "function {function:#04x} in a response to function {:#04x}",
                self.function()
            )));
        }
        match self.expect() {
            Expect::Echo => Ok(Some(5)),
            Expect::ByteCount(expected) => match pdu.get(1) {
                None => Ok(None),
                Some(&count) if count == expected => Ok(Some(2 + usize::from(count))),
                Some(&count) => Err(Error::bad_frame(format!(
                    "byte count {count} in a response to {}, expected {expected}",
                    self.describe_short()
                ))),
            },
        }
    }

    fn describe_short(&self) -> String {
        let (address, count) = self.address_and_count();
        format!(
            "function {:#04x} for {count} item(s) at {address}",
            self.function()
        )
    }

    /// Checks a complete response PDU (function code onwards, without unit id and CRC/MBAP):
    /// a Modbus exception becomes [`Error::ModbusException`], anything that is not exactly the
    /// answer to this request an [`Error::BadFrame`].
    pub(crate) fn check_response_pdu(&self, pdu: &[u8]) -> Result<()> {
        let function = self.function();
        match self.response_pdu_len(pdu)? {
            Some(len) if len == pdu.len() => {}
            Some(len) => {
                return Err(Error::bad_frame(format!(
                    "response PDU of {} byte(s), expected {len}",
                    pdu.len()
                )));
            }
            None => {
                return Err(Error::bad_frame(format!(
                    "short response PDU of {} byte(s)",
                    pdu.len()
                )));
            }
        }
        if pdu[0] == function | 0x80 {
            return Err(Error::ModbusException {
                function,
                code: ExceptionCode::from_code(pdu[1]),
            });
        }
        if let Expect::Echo = self.expect() {
            let (address, count) = self.address_and_count();
            let field = match self {
                Self::WriteSingleCoil { value, .. } => {
                    if *value {
                        0xFF00
                    } else {
                        0x0000
                    }
                }
                Self::WriteSingleRegister { value, .. } => *value,
                _ => count as u16,
            };
            let got_address = u16::from_be_bytes([pdu[1], pdu[2]]);
            let got_field = u16::from_be_bytes([pdu[3], pdu[4]]);
            if (got_address, got_field) != (address, field) {
                return Err(Error::bad_frame(format!(
                    "write response echoes address {got_address} and {got_field:#06x}, \
                     expected {address} and {field:#06x}"
                )));
            }
        }
        Ok(())
    }

    /// Extracts the data of a response frame already checked by [`Request::check_response_pdu`]
    /// (and, for RTU, its CRC), with rmodbus.
    pub(crate) fn parse(&self, rq: &ModbusRequest, frame: &[u8]) -> Result<Response> {
        let failed = |e: rmodbus::ErrorKind| Error::bad_frame(format!("rmodbus: {e}"));
        let (_, count) = self.address_and_count();
        match self.expect() {
            Expect::Echo => {
                rq.parse_ok(frame).map_err(failed)?;
                Ok(Response::Written)
            }
            Expect::ByteCount(_) => match self {
                Self::ReadCoils { .. } | Self::ReadDiscreteInputs { .. } => {
                    let mut bits = Vec::with_capacity(count);
                    rq.parse_bool(frame, &mut bits).map_err(failed)?;
                    if bits.len() != count {
                        return Err(Error::bad_frame(format!(
                            "{} bits, expected {count}",
                            bits.len()
                        )));
                    }
                    Ok(Response::Bits(bits))
                }
                _ => {
                    let mut registers = Vec::with_capacity(count);
                    rq.parse_u16(frame, &mut registers).map_err(failed)?;
                    if registers.len() != count {
                        return Err(Error::bad_frame(format!(
                            "{} registers, expected {count}",
                            registers.len()
                        )));
                    }
                    Ok(Response::Registers(registers))
                }
            },
        }
    }
}

/// The Modbus RTU CRC-16 (polynomial 0xA001 reflected, initial 0xFFFF), sent low byte first.
pub(crate) fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &byte in data {
        crc ^= u16::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_specification_example() {
        // Modbus over serial line §6.2.2 style example: 01 03 00 00 00 02 -> C4 0B.
        assert_eq!(
            crc16(&[0x01, 0x03, 0x00, 0x00, 0x00, 0x02]).to_le_bytes(),
            [0xC4, 0x0B]
        );
    }

    #[test]
    fn exception_codes_have_names() {
        for code in 0..=255u8 {
            let e = ExceptionCode::from_code(code);
            assert_eq!(e.code(), code);
        }
        assert_eq!(
            ExceptionCode::from_code(2).to_string(),
            "IllegalDataAddress (0x02)"
        );
        assert_eq!(
            ExceptionCode::from_code(0x0B).name(),
            "GatewayTargetFailedToRespond"
        );
        assert_eq!(ExceptionCode::from_code(0x42).to_string(), "Unknown (0x42)");
        let err = Error::ModbusException {
            function: 3,
            code: ExceptionCode::IllegalDataAddress,
        };
        assert_eq!(
            err.to_string(),
            "Modbus exception IllegalDataAddress (0x02) in answer to function 0x03"
        );
        assert!(!err.is_retryable());
        assert!(
            Error::ModbusException {
                function: 3,
                code: ExceptionCode::ServerDeviceBusy
            }
            .is_retryable()
        );
    }

    #[test]
    fn response_pdus_are_checked_before_parsing() {
        let read = Request::ReadHoldingRegisters {
            address: 0,
            count: 2,
        };
        read.check_response_pdu(&[0x03, 4, 0, 1, 0, 2]).unwrap();
        let bad: &[(&[u8], &str)] = &[
            (&[], "short response PDU"),
            (&[0x03], "short response PDU"),
            (&[0x03, 4, 0, 1], "of 4 byte(s), expected 6"),
            (&[0x03, 4, 0, 1, 0, 2, 9], "of 7 byte(s), expected 6"),
            (&[0x03, 2, 0, 1], "byte count 2"),
            (
                &[0x04, 4, 0, 1, 0, 2],
                "function 0x04 in a response to function 0x03",
            ),
            (&[0x83], "of 1 byte(s), expected 2"),
            (&[0x83, 2, 0], "of 3 byte(s), expected 2"),
        ];
        for (pdu, want) in bad {
            let err = read.check_response_pdu(pdu).unwrap_err();
            assert!(matches!(err, Error::BadFrame { .. }), "{pdu:02X?}: {err}");
            assert!(err.to_string().contains(want), "{pdu:02X?}: {err}");
            assert!(err.is_retryable());
        }
        let err = read.check_response_pdu(&[0x83, 0x02]).unwrap_err();
        assert!(matches!(
            err,
            Error::ModbusException {
                function: 3,
                code: ExceptionCode::IllegalDataAddress
            }
        ));

        let write = Request::WriteSingleCoil {
            address: 7,
            value: true,
        };
        write.check_response_pdu(&[0x05, 0, 7, 0xFF, 0]).unwrap();
        let err = write.check_response_pdu(&[0x05, 0, 7, 0, 0]).unwrap_err();
        assert!(
            err.to_string().contains("echoes address 7 and 0x0000"),
            "{err}"
        );
        let write = Request::WriteMultipleRegisters {
            address: 1,
            values: vec![1, 2, 3],
        };
        write.check_response_pdu(&[0x10, 0, 1, 0, 3]).unwrap();
        assert!(write.check_response_pdu(&[0x10, 0, 1, 0, 2]).is_err());
    }

    #[test]
    fn request_limits() {
        let ok = [
            Request::ReadCoils {
                address: 0,
                count: 2000,
            },
            Request::ReadHoldingRegisters {
                address: 65_535,
                count: 1,
            },
            Request::WriteMultipleRegisters {
                address: 0,
                values: vec![0; 123],
            },
            Request::WriteMultipleCoils {
                address: 0,
                values: vec![true; 1968],
            },
        ];
        for r in ok {
            r.check().unwrap();
            let mut frame = Vec::new();
            r.build(1, ModbusProto::Rtu, 0, &mut frame).unwrap();
            assert!(frame.len() <= 256, "{r:?}");
        }
        let bad = [
            Request::ReadCoils {
                address: 0,
                count: 2001,
            },
            Request::ReadInputRegisters {
                address: 0,
                count: 0,
            },
            Request::ReadHoldingRegisters {
                address: 65_535,
                count: 2,
            },
            Request::WriteMultipleRegisters {
                address: 0,
                values: vec![0; 124],
            },
        ];
        for r in bad {
            assert!(matches!(r.check(), Err(Error::Config(_))), "{r:?}");
        }
    }

    /// Responses are device input: whatever bytes arrive after a request's header, the checks
    /// and the extraction never panic, and what passes both has exactly the requested size.
    mod hostile_responses {
        use proptest::prelude::*;

        use super::*;

        fn requests() -> impl Strategy<Value = Request> {
            let address = any::<u16>();
            prop_oneof![
                (address, 1u16..=2000)
                    .prop_map(|(address, count)| Request::ReadCoils { address, count }),
                (address, 1u16..=2000)
                    .prop_map(|(address, count)| Request::ReadDiscreteInputs { address, count }),
                (address, 1u16..=125)
                    .prop_map(|(address, count)| Request::ReadHoldingRegisters { address, count }),
                (address, 1u16..=125)
                    .prop_map(|(address, count)| Request::ReadInputRegisters { address, count }),
                (address, any::<bool>())
                    .prop_map(|(address, value)| Request::WriteSingleCoil { address, value }),
                (address, any::<u16>())
                    .prop_map(|(address, value)| Request::WriteSingleRegister { address, value }),
                (address, prop::collection::vec(any::<bool>(), 1..=64))
                    .prop_map(|(address, values)| Request::WriteMultipleCoils { address, values }),
                (address, prop::collection::vec(any::<u16>(), 1..=64)).prop_map(
                    |(address, values)| Request::WriteMultipleRegisters { address, values }
                ),
            ]
        }

        /// A PDU that starts like a valid answer (often), then arbitrary bytes.
        fn pdu_for(request: &Request, tail: Vec<u8>, shape: u8) -> Vec<u8> {
            let mut pdu = vec![request.function()];
            match (shape % 3, request.expect()) {
                (0, Expect::ByteCount(n)) => pdu.push(n),
                (1, _) => pdu[0] |= 0x80,
                _ => {}
            }
            pdu.extend(tail);
            pdu
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]

            #[test]
            fn never_panic(
                request in requests(),
                tail in prop::collection::vec(any::<u8>(), 0..300),
                shape in any::<u8>(),
                prefix in 0usize..8,
            ) {
                let pdu = pdu_for(&request, tail, shape);
                // Partial input while a frame is being read.
                let _ = request.response_pdu_len(&pdu[..prefix.min(pdu.len())]);
                let _ = request.response_pdu_len(&pdu);
                for proto in [ModbusProto::TcpUdp, ModbusProto::Rtu] {
                    let mut frame = Vec::new();
                    let rq = request.build(1, proto, 7, &mut frame).unwrap();
                    if request.check_response_pdu(&pdu).is_err() {
                        continue;
                    }
                    let mut response = match proto {
                        ModbusProto::TcpUdp => {
                            let len = u16::try_from(pdu.len() + 1).unwrap();
                            let mut f = vec![0, 7, 0, 0];
                            f.extend(len.to_be_bytes());
                            f.push(1);
                            f
                        }
                        _ => vec![1],
                    };
                    response.extend(&pdu);
                    if proto == ModbusProto::Rtu {
                        let crc = crc16(&response);
                        response.extend(crc.to_le_bytes());
                    }
                    if let Ok(parsed) = request.parse(&rq, &response) {
                        match (&request, parsed) {
                            (Request::ReadCoils { count, .. } | Request::ReadDiscreteInputs { count, .. }, Response::Bits(bits)) => {
                                prop_assert_eq!(bits.len(), usize::from(*count));
                            }
                            (Request::ReadHoldingRegisters { count, .. } | Request::ReadInputRegisters { count, .. }, Response::Registers(regs)) => {
                                prop_assert_eq!(regs.len(), usize::from(*count));
                            }
                            (_, Response::Written) => {}
                            (request, other) => prop_assert!(false, "{request:?} gave {other:?}"),
                        }
                    }
                }
            }
        }
    }
}
