//! A Modbus TCP and RTU [`DeviceDriver`] with KubeEdge's Modbus visitor semantics.
//!
//! ```no_run
//! use kubeedge_mapper::modbus::{ModbusConfig, ModbusDriver};
//! use kubeedge_mapper::{DeviceDriver, PropertySpec, PropertyType, Value};
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> kubeedge_mapper::Result<()> {
//! // A Device's spec.protocol.configData ...
//! let protocol = json!({"slaveID": 1, "ip": "192.168.1.20", "port": 502});
//! let driver = ModbusDriver::new(ModbusConfig::from_protocol_config(
//!     protocol.as_object().unwrap(),
//! )?);
//! // ... and one of its properties, typed by the DeviceModel.
//! let temperature = driver.parse_visitor(&PropertySpec::from_json(
//!     "temperature",
//!     "FLOAT",
//!     json!({"protocolName": "modbus", "configData": {
//!         "register": "HoldingRegister", "offset": 2, "limit": 2, "scale": 1,
//!         "isSwap": false, "isRegisterSwap": true}}),
//! )?)?;
//! let value = driver.read(&temperature).await?;
//! println!("temperature is {}", value.to_twin_string());
//! driver.write(&temperature, &Value::parse(PropertyType::Float, "21.5")?).await?;
//! # Ok(()) }
//! ```
//!
//! # What KubeEdge does, and what this driver does
//!
//! KubeEdge's Modbus mapper (`kubeedge/mappers-go`: `pkg/driver/modbus/client.go`,
//! `mappers/modbus/device/twindata.go`, and the v1beta1 mapper
//! `mappers/kubeedge-v1.15.0/modbus/driver/{driver,devicetype}.go`) reads `limit` items from
//! `offset` with function 1, 2, 3 or 4 for `CoilRegister`, `DiscreteInputRegister`,
//! `HoldingRegister` and `InputRegister`; decodes as [`ModbusVisitor::decode_registers`]
//! describes; writes a coil as 0xFF00/0x0000 (function 5) and a holding register as
//! `uint16(value)` (function 6); and reads `slaveID`, `ip`/`port` or `serialPort`, `baudRate`,
//! `dataBits`, `parity` (`even`, `odd`, else none), `stopBits` from the protocol config, with
//! a 5 s timeout. This driver keeps those names and meanings and differs where KubeEdge's
//! behaviour is accidental: an omitted `scale` is 1 (not 0), a BOOLEAN register is true when
//! non-zero, writes honour `scale`, `limit` and the swaps (so a value written reads back the
//! same) and use functions 15 and 16 for more than one item, and an unknown parity is an error.
//!
//! # Errors, retries, reconnects
//!
//! Each request has [`ModbusConfig::timeout`]; a request that fails with a retryable error
//! ([`Error::is_retryable`]: timeouts, lost connections, garbled frames, busy devices) is tried
//! again up to [`ModbusConfig::retries`] times. A TCP connection that failed, timed out or
//! delivered a bad frame is closed and the next attempt reconnects; a serial port is
//! resynchronised and stays open unless the port itself fails. A Modbus exception response is
//! [`Error::ModbusException`] with the code's name.
//!
//! One driver owns one connection and sends one request at a time (Modbus devices and serial
//! buses answer one request at a time). Several devices behind one gateway or on one RS-485 bus
//! share the connection through [`ModbusDriver::for_unit`].

mod codec;
mod config;
pub(crate) mod exception_code;
mod pdu;
mod rtu;
pub mod simulated_thermostat;
mod tcp;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use crate::driver::{DeviceDriver, PropertySpec, Value};
use crate::error::{Error, Result};

pub use crate::serial_port::Parity;
pub use config::{
    DEFAULT_BYTE_TIMEOUT, DEFAULT_RETRIES, DEFAULT_RETRY_DELAY, DEFAULT_TIMEOUT, ModbusConfig,
    ModbusVisitor, RegisterType, SerialConfig, Transport,
};
pub use exception_code::ExceptionCode;

use pdu::{Request, Response};
use rtu::RtuLink;
use tcp::TcpLink;

/// A Modbus device reached over TCP or RTU.
///
/// Cheap to clone: clones (and [`ModbusDriver::for_unit`]) share one connection.
#[derive(Clone)]
pub struct ModbusDriver {
    shared: Arc<Shared>,
    unit: u8,
    timeout: Duration,
    retries: u32,
    retry_delay: Duration,
}

struct Shared {
    transport: Transport,
    state: Mutex<LinkState>,
}

#[derive(Default)]
struct LinkState {
    link: Option<Link>,
    /// Per unit, the error of its last request if that request found the device unreachable.
    unreachable: HashMap<u8, Error>,
}

enum Link {
    Tcp(TcpLink),
    Rtu(RtuLink),
}

impl std::fmt::Debug for ModbusDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModbusDriver")
            .field("transport", &self.shared.transport)
            .field("unit", &self.unit)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .finish()
    }
}

impl ModbusDriver {
    /// A driver for the device `config` describes. Nothing is opened until the first request
    /// (or [`DeviceDriver::connect`]).
    pub fn new(config: ModbusConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                transport: config.transport,
                state: Mutex::new(LinkState::default()),
            }),
            unit: config.slave_id,
            timeout: config.timeout,
            retries: config.retries,
            retry_delay: config.retry_delay,
        }
    }

    /// A driver for another unit on the same connection: another slave on the RS-485 bus, or
    /// another device behind the same TCP gateway. Requests of all of them are serialised.
    pub fn for_unit(&self, unit: u8) -> Self {
        Self {
            unit,
            ..self.clone()
        }
    }

    /// The unit (slave) id this driver talks to.
    pub fn unit(&self) -> u8 {
        self.unit
    }

    /// Reads `count` coils (function 1).
    pub async fn read_coils(&self, address: u16, count: u16) -> Result<Vec<bool>> {
        self.bits(Request::ReadCoils { address, count }).await
    }

    /// Reads `count` discrete inputs (function 2).
    pub async fn read_discrete_inputs(&self, address: u16, count: u16) -> Result<Vec<bool>> {
        self.bits(Request::ReadDiscreteInputs { address, count })
            .await
    }

    /// Reads `count` holding registers (function 3).
    pub async fn read_holding_registers(&self, address: u16, count: u16) -> Result<Vec<u16>> {
        self.registers(Request::ReadHoldingRegisters { address, count })
            .await
    }

    /// Reads `count` input registers (function 4).
    pub async fn read_input_registers(&self, address: u16, count: u16) -> Result<Vec<u16>> {
        self.registers(Request::ReadInputRegisters { address, count })
            .await
    }

    /// Writes one coil (function 5).
    pub async fn write_single_coil(&self, address: u16, value: bool) -> Result<()> {
        self.transact(Request::WriteSingleCoil { address, value })
            .await
            .map(drop)
    }

    /// Writes one holding register (function 6).
    pub async fn write_single_register(&self, address: u16, value: u16) -> Result<()> {
        self.transact(Request::WriteSingleRegister { address, value })
            .await
            .map(drop)
    }

    /// Writes consecutive coils (function 15; 1 to 1968 of them).
    pub async fn write_multiple_coils(&self, address: u16, values: &[bool]) -> Result<()> {
        self.transact(Request::WriteMultipleCoils {
            address,
            values: values.to_vec(),
        })
        .await
        .map(drop)
    }

    /// Writes consecutive holding registers (function 16; 1 to 123 of them).
    pub async fn write_multiple_registers(&self, address: u16, values: &[u16]) -> Result<()> {
        self.transact(Request::WriteMultipleRegisters {
            address,
            values: values.to_vec(),
        })
        .await
        .map(drop)
    }

    async fn bits(&self, request: Request) -> Result<Vec<bool>> {
        match self.transact(request).await? {
            Response::Bits(bits) => Ok(bits),
            other => Err(Error::bad_frame(format!("unexpected response {other:?}"))),
        }
    }

    async fn registers(&self, request: Request) -> Result<Vec<u16>> {
        match self.transact(request).await? {
            Response::Registers(registers) => Ok(registers),
            other => Err(Error::bad_frame(format!("unexpected response {other:?}"))),
        }
    }

    /// One request, with retries for retryable errors and a reconnect where the link broke.
    async fn transact(&self, request: Request) -> Result<Response> {
        request.check()?;
        let mut state = self.shared.state.lock().await;
        let mut attempt = 0;
        loop {
            let result = self.attempt(&mut state, &request).await;
            match result {
                Ok(response) => {
                    state.unreachable.remove(&self.unit);
                    return Ok(response);
                }
                Err(e) => {
                    if e.is_retryable() {
                        state.unreachable.insert(self.unit, e.clone());
                    } else {
                        state.unreachable.remove(&self.unit);
                    }
                    if !e.is_retryable() || attempt >= self.retries {
                        return Err(e);
                    }
                    attempt += 1;
                    tracing::debug!(target: "kubeedge_mapper::modbus",
                        transport = self.shared.transport.target(), unit = self.unit,
                        error = %e, attempt, "retrying");
                    tokio::time::sleep(self.retry_delay).await;
                }
            }
        }
    }

    async fn attempt(&self, state: &mut LinkState, request: &Request) -> Result<Response> {
        if let Some(Link::Tcp(tcp)) = &state.link
            && !tcp.is_clean()
        {
            // An earlier request was abandoned (its future dropped) half way.
            state.link = None;
        }
        let link = match &mut state.link {
            Some(link) => link,
            empty => empty.insert(self.open().await?),
        };
        let result = match link {
            Link::Tcp(tcp) => tcp.exchange(self.unit, request, self.timeout).await,
            Link::Rtu(rtu) => rtu.exchange(self.unit, request, self.timeout).await,
        };
        if let Err(e) = &result {
            // A TCP stream is out of step after anything but a complete exception response
            // (the rest of a bad frame, or a late answer, may still arrive): reconnect. A
            // serial line has been resynchronised; only a failed port is reopened.
            let reconnect = match link {
                Link::Tcp(tcp) => !tcp.is_clean(),
                Link::Rtu(_) => e.breaks_connection(),
            };
            if reconnect {
                tracing::debug!(target: "kubeedge_mapper::modbus",
                    transport = self.shared.transport.target(), error = %e, "closing the link");
                state.link = None;
            }
        }
        result
    }

    async fn open(&self) -> Result<Link> {
        match &self.shared.transport {
            Transport::Tcp { address } => {
                TcpLink::connect(address, self.timeout).await.map(Link::Tcp)
            }
            Transport::Rtu(serial) => RtuLink::open(serial).map(Link::Rtu),
        }
    }

    async fn read_visitor(&self, visitor: &ModbusVisitor) -> Result<Value> {
        let (address, count) = (visitor.offset, visitor.limit);
        match visitor.register {
            RegisterType::Coil => visitor.decode_bits(&self.read_coils(address, count).await?),
            RegisterType::DiscreteInput => {
                visitor.decode_bits(&self.read_discrete_inputs(address, count).await?)
            }
            RegisterType::Holding => {
                visitor.decode_registers(&self.read_holding_registers(address, count).await?)
            }
            RegisterType::Input => {
                visitor.decode_registers(&self.read_input_registers(address, count).await?)
            }
        }
    }

    async fn write_visitor(&self, visitor: &ModbusVisitor, value: &Value) -> Result<()> {
        let address = visitor.offset;
        match visitor.register {
            RegisterType::Coil => match visitor.encode_bits(value)?.as_slice() {
                [bit] => self.write_single_coil(address, *bit).await,
                bits => self.write_multiple_coils(address, bits).await,
            },
            RegisterType::Holding => match visitor.encode_registers(value)?.as_slice() {
                [register] => self.write_single_register(address, *register).await,
                registers => self.write_multiple_registers(address, registers).await,
            },
            read_only => Err(Error::Unsupported(format!(
                "{read_only} is read-only; cannot write {value:?} to address {address}"
            ))),
        }
    }
}

impl DeviceDriver for ModbusDriver {
    type Visitor = ModbusVisitor;

    /// Parses the property's Modbus visitor ([`ModbusVisitor::from_config`]). The visitor's
    /// `protocolName`, if given, must be `modbus`.
    fn parse_visitor(&self, property: &PropertySpec) -> Result<ModbusVisitor> {
        let protocol = &property.visitor.protocol_name;
        if !protocol.is_empty() && !protocol.eq_ignore_ascii_case("modbus") {
            return Err(Error::config(format!(
                "property {}: visitor protocol {protocol:?} is not modbus",
                property.name
            )));
        }
        ModbusVisitor::from_config(property.property_type, &property.visitor.config_data).map_err(
            |e| match e {
                Error::Config(reason) => {
                    Error::Config(format!("property {}: {reason}", property.name))
                }
                other => other,
            },
        )
    }

    /// Opens the TCP connection or serial port if it is not open.
    async fn connect(&self) -> Result<()> {
        let mut state = self.shared.state.lock().await;
        if state.link.is_none() {
            state.link = Some(self.open().await?);
        }
        Ok(())
    }

    /// Reachable means: the connection is open (or opens now), and this unit's last request,
    /// if any, did not time out or lose the connection. (Like KubeEdge's, this sends no
    /// request of its own: a driver does not know an address every device has.)
    async fn health(&self) -> Result<()> {
        let mut state = self.shared.state.lock().await;
        if state.link.is_none() {
            state.link = Some(self.open().await?);
            // A fresh connection answers for connection failures, not for a silent device.
            state
                .unreachable
                .retain(|_, e| !matches!(e, Error::Connect { .. } | Error::ConnectionLost { .. }));
        }
        match state.unreachable.get(&self.unit) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn read(&self, visitor: &ModbusVisitor) -> impl Future<Output = Result<Value>> + Send {
        self.read_visitor(visitor)
    }

    fn write(
        &self,
        visitor: &ModbusVisitor,
        value: &Value,
    ) -> impl Future<Output = Result<()>> + Send {
        self.write_visitor(visitor, value)
    }
}
