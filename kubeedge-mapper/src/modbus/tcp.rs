//! Modbus TCP: MBAP-framed requests over a tokio `TcpStream`.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rmodbus::ModbusProto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{Error, Result};

use super::pdu::{Request, Response};

/// The MBAP length field counts the unit id and the PDU; a PDU is 253 bytes at most
/// (Modbus application protocol §4.1), and the shortest response (an exception) is 2.
const MBAP_LENGTH: std::ops::RangeInclusive<usize> = 3..=254;

/// One TCP connection to a Modbus server (or gateway).
pub(crate) struct TcpLink {
    stream: TcpStream,
    target: String,
    next_transaction: u16,
    /// False while a request is in flight: a request whose future was dropped half way
    /// leaves the stream out of step, and the next request reconnects instead of failing.
    clean: bool,
}

impl TcpLink {
    pub(crate) async fn connect(address: &str, timeout: Duration) -> Result<Self> {
        let failed = |source: io::Error| Error::Connect {
            target: address.to_owned(),
            source: Arc::new(source),
        };
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(failed(e)),
            Err(_) => {
                return Err(failed(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {timeout:?}"),
                )));
            }
        };
        // Requests are small and answered one at a time: do not let Nagle hold them back.
        stream.set_nodelay(true).map_err(failed)?;
        tracing::debug!(target: "kubeedge_mapper::modbus", %address, "connected");
        Ok(Self {
            stream,
            target: address.to_owned(),
            next_transaction: 1,
            clean: true,
        })
    }

    /// Whether the stream is between two exchanges (no answer pending).
    pub(crate) fn is_clean(&self) -> bool {
        self.clean
    }

    /// Sends `request` and waits (up to `timeout`) for its answer. After any error but a Modbus
    /// exception the stream may be out of step: the caller drops the link.
    pub(crate) async fn exchange(
        &mut self,
        unit: u8,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response> {
        let transaction = self.next_transaction;
        self.next_transaction = self.next_transaction.wrapping_add(1);
        let mut frame = Vec::with_capacity(260);
        let rq = request.build(unit, ModbusProto::TcpUdp, transaction, &mut frame)?;
        self.clean = false;
        let adu = match tokio::time::timeout(
            timeout,
            self.round_trip(unit, request, transaction, &frame),
        )
        .await
        {
            Ok(Ok(adu)) => adu,
            Ok(Err(e)) => {
                // An exception response was read completely; the stream is in step.
                self.clean = matches!(e, Error::ModbusException { .. });
                return Err(e);
            }
            Err(_) => {
                return Err(Error::Timeout {
                    operation: request.describe(unit),
                    timeout,
                });
            }
        };
        self.clean = true;
        request.parse(&rq, &adu)
    }

    async fn round_trip(
        &mut self,
        unit: u8,
        request: &Request,
        transaction: u16,
        frame: &[u8],
    ) -> Result<Vec<u8>> {
        let lost = |e: io::Error| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                Error::lost(&self.target, "closed by the peer")
            } else {
                Error::lost(&self.target, e)
            }
        };
        self.stream.write_all(frame).await.map_err(lost)?;

        let mut header = [0u8; 7];
        self.stream.read_exact(&mut header).await.map_err(lost)?;
        let got_transaction = u16::from_be_bytes([header[0], header[1]]);
        let protocol = u16::from_be_bytes([header[2], header[3]]);
        let length = usize::from(u16::from_be_bytes([header[4], header[5]]));
        let got_unit = header[6];
        if protocol != 0 {
            return Err(Error::bad_frame(format!(
                "protocol id {protocol} in the MBAP header (Modbus is 0)"
            )));
        }
        if !MBAP_LENGTH.contains(&length) {
            return Err(Error::bad_frame(format!(
                "MBAP length {length}, expected {} to {}",
                MBAP_LENGTH.start(),
                MBAP_LENGTH.end()
            )));
        }
        if got_transaction != transaction {
            return Err(Error::bad_frame(format!(
                "transaction id {got_transaction}, expected {transaction}"
            )));
        }
        if got_unit != unit {
            return Err(Error::bad_frame(format!(
                "unit id {got_unit} in the response, expected {unit}"
            )));
        }
        let mut adu = Vec::with_capacity(6 + length);
        adu.extend_from_slice(&header);
        adu.resize(6 + length, 0);
        self.stream.read_exact(&mut adu[7..]).await.map_err(lost)?;
        request.check_response_pdu(&adu[7..])?;
        Ok(adu)
    }
}
