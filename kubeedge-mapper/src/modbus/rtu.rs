//! Modbus RTU over a serial line (tokio-serial), with the line discipline a master needs:
//!
//! - before a request, the line must have been silent for the inter-frame time (3.5 character
//!   times; 1.75 ms above 19200 baud); stale input is discarded;
//! - a response is read only as far as its own length (known from its first bytes), into a
//!   256-byte buffer: a wrong unit, function or byte count is refused at once, not after
//!   reading whatever follows;
//! - a response that stops early (a short frame), is followed by more bytes (a flood, two
//!   frames) or fails its CRC is refused;
//! - after a refused frame the line is resynchronised: input is discarded until it has been
//!   silent for the inter-frame time, so the next request starts clean.

use std::time::Duration;

use rmodbus::ModbusProto;
use tokio::io::AsyncReadExt;
use tokio::time::timeout as within;
use tokio::time::{Instant, timeout_at};
use tokio_serial::SerialStream;

use crate::error::{Error, Result};
use crate::serial_port;

use super::config::SerialConfig;
use super::pdu::{Request, Response, crc16};

/// An RTU frame is 256 bytes at most (Modbus over serial line §2.5.1).
const MAX_FRAME: usize = 256;
/// The shortest response (an exception: unit, function, code, CRC).
const MIN_RESPONSE: usize = 5;

/// One open serial port.
pub(crate) struct RtuLink {
    port: SerialStream,
    target: String,
    /// The inter-frame silence, t3.5.
    silence: Duration,
    byte_timeout: Duration,
    /// Whether the line was seen silent for t3.5 after the last frame, with nothing since.
    quiet: bool,
}

impl RtuLink {
    pub(crate) fn open(serial: &SerialConfig) -> Result<Self> {
        let port = serial.port().open()?;
        tracing::debug!(target: "kubeedge_mapper::modbus", path = %serial.path, "serial port open");
        Ok(Self {
            port,
            target: serial.path.clone(),
            silence: serial.inter_frame_silence(),
            byte_timeout: serial.byte_timeout,
            quiet: false,
        })
    }

    /// Sends `request` and waits (up to `timeout`) for its answer. On a refused frame the line
    /// is resynchronised before the error is returned; the port stays open.
    pub(crate) async fn exchange(
        &mut self,
        unit: u8,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response> {
        let deadline = Instant::now() + timeout;
        let mut frame = Vec::with_capacity(MAX_FRAME);
        let rq = request.build(unit, ModbusProto::Rtu, 0, &mut frame)?;

        self.settle(deadline).await?;
        let sent = serial_port::send(
            &mut self.port,
            &frame,
            deadline,
            &self.target,
            || request.describe(unit),
            timeout,
        )
        .await;
        self.quiet = false;
        sent?;

        match self.receive(unit, request, deadline, timeout).await {
            Ok(adu) => {
                request.check_response_pdu(&adu[1..adu.len() - 2])?;
                request.parse(&rq, &adu)
            }
            Err(e @ Error::BadFrame { .. }) => {
                tracing::debug!(target: "kubeedge_mapper::modbus", port = %self.target, error = %e,
                    "refused a response frame; resynchronising");
                self.resync(timeout).await;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads one response frame for `request` from `unit`: exactly as many bytes as the frame
    /// says it has, then checks that the line falls silent and that the CRC is right.
    async fn receive(
        &mut self,
        unit: u8,
        request: &Request,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        let mut buf = [0u8; MAX_FRAME];
        let mut len = 0;
        let total = loop {
            let total = if len == 0 {
                None
            } else {
                if buf[0] != unit {
                    return Err(Error::bad_frame(format!(
                        "a frame from unit {} while waiting for unit {unit}",
                        buf[0]
                    )));
                }
                request
                    .response_pdu_len(&buf[1..len])?
                    .map(|pdu| 1 + pdu + 2)
            };
            // Until the length is known, read no further than the shortest response.
            let want = match total {
                Some(total) if total > MAX_FRAME => {
                    return Err(Error::bad_frame(format!(
                        "a {total}-byte frame (RTU frames are {MAX_FRAME} bytes at most)"
                    )));
                }
                Some(total) if total <= len => break total,
                Some(total) => total,
                None => MIN_RESPONSE.max(len + 1),
            };
            let wait = if len == 0 {
                deadline
            } else {
                deadline.min(Instant::now() + self.byte_timeout)
            };
            match timeout_at(wait, self.port.read(&mut buf[len..want])).await {
                Ok(Ok(0)) => return Err(Error::lost(&self.target, "serial port closed")),
                Ok(Ok(n)) => len += n,
                Ok(Err(e)) => return Err(Error::lost(&self.target, e)),
                Err(_) if len == 0 => {
                    return Err(Error::Timeout {
                        operation: request.describe(unit),
                        timeout,
                    });
                }
                Err(_) => {
                    return Err(Error::bad_frame(match total {
                        Some(total) => format!("short frame: {len} of {total} bytes, then silence"),
                        None => format!("short frame: {len} byte(s), then silence"),
                    }));
                }
            }
        };

        // The frame must be followed by silence; anything else is a flood or a second frame.
        let mut extra = [0u8; 64];
        match within(self.silence, self.port.read(&mut extra)).await {
            Err(_) => {}
            Ok(Ok(0)) => return Err(Error::lost(&self.target, "serial port closed")),
            Ok(Ok(n)) => {
                return Err(Error::bad_frame(format!(
                    "{n} or more unexpected bytes after a complete {total}-byte frame"
                )));
            }
            Ok(Err(e)) => return Err(Error::lost(&self.target, e)),
        }
        self.quiet = true;

        let computed = crc16(&buf[..total - 2]);
        let received = u16::from_le_bytes([buf[total - 2], buf[total - 1]]);
        if computed != received {
            return Err(Error::bad_frame(format!(
                "CRC {received:#06x} in a {total}-byte frame, computed {computed:#06x}"
            )));
        }
        Ok(buf[..total].to_vec())
    }

    /// Makes sure the line has been silent for t3.5 before a request, discarding stale input.
    async fn settle(&mut self, deadline: Instant) -> Result<()> {
        if self.quiet {
            // The line was silent after the last frame; is anything pending since?
            let mut probe = [0u8; 64];
            match within(Duration::ZERO, self.port.read(&mut probe)).await {
                Err(_) => return Ok(()),
                Ok(Ok(0)) => return Err(Error::lost(&self.target, "serial port closed")),
                Ok(Ok(n)) => {
                    tracing::debug!(target: "kubeedge_mapper::modbus", port = %self.target,
                        bytes = n, "discarding stale input");
                }
                Ok(Err(e)) => return Err(Error::lost(&self.target, e)),
            }
        }
        self.quiet = false;
        self.drain(deadline, self.silence).await?;
        self.quiet = true;
        Ok(())
    }

    /// After a refused frame: discard input until the line is silent, for at most `limit`.
    /// Silent here means no byte for the byte timeout, not just t3.5: the rest of a flood or a
    /// stray frame may come in bursts with gaps (a loaded host, a USB adapter's latency timer),
    /// and what is left over would be taken for the next answer.
    async fn resync(&mut self, limit: Duration) {
        self.quiet = false;
        let silence = self.silence.max(self.byte_timeout);
        match self.drain(Instant::now() + limit, silence).await {
            Ok(discarded) => {
                tracing::debug!(target: "kubeedge_mapper::modbus", port = %self.target,
                    discarded, "line resynchronised");
                self.quiet = true;
            }
            Err(e) => {
                // The next request drains again before it talks.
                tracing::debug!(target: "kubeedge_mapper::modbus", port = %self.target,
                    error = %e, "line not yet resynchronised");
            }
        }
    }

    /// Reads and discards until the line has been silent for `silence`; fails if it is still
    /// receiving at `deadline`. Returns how many bytes were discarded.
    async fn drain(&mut self, deadline: Instant, silence: Duration) -> Result<usize> {
        let mut scratch = [0u8; 256];
        let mut discarded = 0usize;
        loop {
            match within(silence, self.port.read(&mut scratch)).await {
                Err(_) => return Ok(discarded),
                Ok(Ok(0)) => return Err(Error::lost(&self.target, "serial port closed")),
                Ok(Ok(n)) => discarded += n,
                Ok(Err(e)) => return Err(Error::lost(&self.target, e)),
            }
            if Instant::now() >= deadline {
                return Err(Error::bad_frame(format!(
                    "the line does not fall silent ({discarded} bytes discarded)"
                )));
            }
        }
    }
}
