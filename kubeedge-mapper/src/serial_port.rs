//! What the two serial drivers (Modbus RTU and the serial line driver) share: checking a
//! port's settings, opening the port, and sending bytes by a deadline.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::{Instant, timeout_at};
use tokio_serial::{DataBits, FlowControl, SerialStream, StopBits};

use crate::error::{Error, Result};
use std::str::FromStr;

/// A serial port's settings, borrowed from a driver's configuration.
pub(crate) struct PortSettings<'a> {
    /// The device path.
    pub(crate) path: &'a str,
    /// Bits per second.
    pub(crate) baud_rate: u32,
    /// 5 to 8.
    pub(crate) data_bits: u8,
    /// Parity bit.
    pub(crate) parity: Parity,
    /// 1 or 2.
    pub(crate) stop_bits: u8,
}

impl PortSettings<'_> {
    /// Checks that the settings can work: a path, a positive baud rate, 5 to 8 data bits, 1 or
    /// 2 stop bits.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.path.is_empty() {
            return Err(Error::config("serialPort is empty"));
        }
        if self.baud_rate == 0 {
            return Err(Error::config("baudRate must be positive"));
        }
        if !(5..=8).contains(&self.data_bits) {
            return Err(Error::config(format!(
                "dataBits {} (expected 5 to 8)",
                self.data_bits
            )));
        }
        if !(1..=2).contains(&self.stop_bits) {
            return Err(Error::config(format!(
                "stopBits {} (expected 1 or 2)",
                self.stop_bits
            )));
        }
        Ok(())
    }

    /// Opens the port, without flow control; failing to is an [`Error::Connect`] to the path.
    pub(crate) fn open(&self) -> Result<SerialStream> {
        let data_bits = match self.data_bits {
            5 => DataBits::Five,
            6 => DataBits::Six,
            7 => DataBits::Seven,
            8 => DataBits::Eight,
            other => return Err(Error::config(format!("dataBits {other} (expected 5 to 8)"))),
        };
        let stop_bits = match self.stop_bits {
            1 => StopBits::One,
            2 => StopBits::Two,
            other => return Err(Error::config(format!("stopBits {other} (expected 1 or 2)"))),
        };
        let parity = match self.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        };
        let builder = tokio_serial::new(self.path, self.baud_rate)
            .data_bits(data_bits)
            .stop_bits(stop_bits)
            .parity(parity)
            .flow_control(FlowControl::None);
        SerialStream::open(&builder).map_err(|e| Error::Connect {
            target: self.path.to_owned(),
            source: Arc::new(io::Error::from(e)),
        })
    }
}

/// Writes `bytes` to `port` and flushes them, by `deadline`. A write error is the port at
/// `path` lost ([`Error::ConnectionLost`]); missing the deadline is an [`Error::Timeout`] of
/// `operation` after `timeout`.
pub(crate) async fn send(
    port: &mut SerialStream,
    bytes: &[u8],
    deadline: Instant,
    path: &str,
    operation: impl FnOnce() -> String,
    timeout: Duration,
) -> Result<()> {
    let sent = timeout_at(deadline, async {
        port.write_all(bytes).await?;
        port.flush().await
    })
    .await;
    match sent {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::lost(path, e)),
        Err(_) => Err(Error::Timeout {
            operation: operation(),
            timeout,
        }),
    }
}

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    /// No parity bit.
    None,
    /// Even parity.
    Even,
    /// Odd parity.
    Odd,
}

impl FromStr for Parity {
    type Err = Error;

    /// `none`, `even`, `odd` (KubeEdge's spellings) or `N`, `E`, `O`, in any case.
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "none" | "n" | "" => Ok(Self::None),
            "even" | "e" => Ok(Self::Even),
            "odd" | "o" => Ok(Self::Odd),
            _ => Err(Error::config(format!(
                "parity {s:?} (expected none, even or odd)"
            ))),
        }
    }
}
