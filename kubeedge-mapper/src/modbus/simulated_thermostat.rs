//! A simulated thermostat that speaks Modbus TCP, for testing a mapper without hardware (the
//! quickstart's device, and the end-to-end tests'):
//! a real Modbus server (requests answered by [`rmodbus`]'s server side) in the same process,
//! whose temperature follows its setpoint so that a mapper has something that changes.
//!
//! # Register map
//!
//! Unit id [`ThermostatOptions::unit_id`] (1). Temperatures are unsigned tenths of a degree
//! Celsius (`235` is 23.5 °C).
//!
//! | table | address | what | access |
//! |---|---|---|---|
//! | holding register | 0 ([`SETPOINT_REGISTER`]) | setpoint, initially 200 | read (3), write (6, 16); values outside [`SETPOINT_MIN`]..=[`SETPOINT_MAX`] are refused with exception 03 |
//! | holding register | 1 ([`TEMPERATURE_REGISTER`]) | current temperature, initially 180 | read (3); a write is refused with exception 02 |
//! | input register | 0 ([`TEMPERATURE_INPUT_REGISTER`]) | the current temperature again | read (4) |
//!
//! Every [`ThermostatOptions::step_interval`] (500 ms) the temperature moves one tenth of a
//! degree toward the setpoint. There are no coils and no discrete inputs; any other address is
//! exception 02 (illegal data address), any other function exception 01.
//!
//! A failing device can be simulated: [`SimulatedThermostat::fail_reads`] makes the reads of
//! one register answer a Modbus exception (04, server device failure, say) until it is called
//! with `None`, and [`SimulatedThermostat::failed_reads`] counts the reads it refused so.
//!
//! # Hostile clients
//!
//! Each connection has its own task. A request is read by its MBAP header: a protocol id
//! other than 0 or a length outside 2..=254 (at most [`MAX_ADU_LEN`] bytes in all) closes the
//! connection before anything more is read, and so does a request whose length does not match
//! its function, a function code with the exception bit set, a frame that does not arrive
//! within [`ThermostatOptions::idle_timeout`], or an answer the client does not take within
//! it. Such a connection is closed alone; the others go on. A well-formed request the
//! device cannot serve gets a Modbus exception; requests for another unit id get no answer
//! (nor do broadcasts to unit 0: a Modbus TCP device is addressed directly). At most
//! [`ThermostatOptions::max_connections`] connections are open at once; another one is
//! closed as soon as it is accepted.
//!
//! ```
//! use kubeedge_mapper::modbus::simulated_thermostat::SimulatedThermostat;
//! use tokio_util::sync::CancellationToken;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
//! let shutdown = CancellationToken::new();
//! let device = SimulatedThermostat::start("127.0.0.1:0".parse().unwrap(), shutdown.clone()).await?;
//! println!("a thermostat on {} at {} tenths of °C", device.local_addr(), device.temperature());
//! assert_eq!(device.setpoint(), 200);
//! shutdown.cancel(); // or drop the device
//! # Ok(()) }
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rmodbus::ModbusProto;
use rmodbus::server::ModbusFrame;
use rmodbus::server::storage::ModbusStorage;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// The holding register with the setpoint (read/write).
pub const SETPOINT_REGISTER: u16 = 0;
/// The holding register with the current temperature (read-only).
pub const TEMPERATURE_REGISTER: u16 = 1;
/// The input register with the current temperature.
pub const TEMPERATURE_INPUT_REGISTER: u16 = 0;
/// The lowest setpoint the device takes (5.0 °C).
pub const SETPOINT_MIN: u16 = 50;
/// The highest setpoint the device takes (35.0 °C).
pub const SETPOINT_MAX: u16 = 350;
/// The longest Modbus TCP request (a 7-byte MBAP header and a 253-byte PDU).
pub const MAX_ADU_LEN: usize = 260;

/// The largest MBAP length field: the unit id and a 253-byte PDU.
const MAX_MBAP_LENGTH: u16 = 254;
/// Exception 01: the function is not supported.
const ILLEGAL_FUNCTION: u8 = 0x01;
/// Exception 02: the address (or address range) does not exist or cannot be written.
const ILLEGAL_DATA_ADDRESS: u8 = 0x02;
/// Exception 03: a quantity, byte count or value the device does not take.
const ILLEGAL_DATA_VALUE: u8 = 0x03;

/// Coils, discrete inputs, input registers, holding registers.
type Registers = ModbusStorage<0, 0, 1, 2>;

/// How the thermostat starts and what it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThermostatOptions {
    /// The unit (slave) id it answers (1).
    pub unit_id: u8,
    /// The initial setpoint, tenths of °C (200).
    pub setpoint: u16,
    /// The initial temperature, tenths of °C (180).
    pub temperature: u16,
    /// How often the temperature moves one tenth of a degree toward the setpoint (500 ms).
    pub step_interval: Duration,
    /// How many connections may be open at once (16).
    pub max_connections: usize,
    /// How long a connection may take to send a request or take an answer before it is
    /// closed (60 s).
    pub idle_timeout: Duration,
}

impl Default for ThermostatOptions {
    fn default() -> Self {
        Self {
            unit_id: 1,
            setpoint: 200,
            temperature: 180,
            step_interval: Duration::from_millis(500),
            max_connections: 16,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// A running simulated thermostat (see the [module docs](self)). Dropping it stops it, as
/// does cancelling the token it was started with.
#[derive(Debug)]
#[must_use = "the thermostat stops when it is dropped"]
pub struct SimulatedThermostat {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl SimulatedThermostat {
    /// Starts a thermostat with the default [`ThermostatOptions`] on `listen` (port 0: one
    /// the kernel picks), serving until `shutdown` is cancelled or the value is dropped.
    pub async fn start(listen: SocketAddr, shutdown: CancellationToken) -> io::Result<Self> {
        Self::start_with(listen, ThermostatOptions::default(), shutdown).await
    }

    /// [`SimulatedThermostat::start`] with `options`. Fails if the address cannot be bound,
    /// or with [`io::ErrorKind::InvalidInput`] for no connections or a zero interval.
    pub async fn start_with(
        listen: SocketAddr,
        options: ThermostatOptions,
        shutdown: CancellationToken,
    ) -> io::Result<Self> {
        if options.max_connections == 0
            || options.step_interval.is_zero()
            || options.idle_timeout.is_zero()
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a thermostat needs max_connections, step_interval and idle_timeout above 0",
            ));
        }
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(options));
        let stop = shutdown.child_token();
        let tasks = vec![
            tokio::spawn(accept(listener, Arc::clone(&shared), stop.clone())),
            tokio::spawn(simulate(Arc::clone(&shared), stop.clone())),
        ];
        tracing::info!(address = %local_addr, unit = shared.options.unit_id, "simulated Modbus thermostat listening");
        Ok(Self {
            local_addr,
            shared,
            stop,
            tasks,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The unit id it answers.
    pub fn unit_id(&self) -> u8 {
        self.shared.options.unit_id
    }

    /// The setpoint (holding register 0), tenths of °C.
    pub fn setpoint(&self) -> u16 {
        self.shared.registers().holdings[HOLDING_SETPOINT]
    }

    /// The current temperature (holding register 1, input register 0), tenths of °C.
    pub fn temperature(&self) -> u16 {
        self.shared.registers().holdings[HOLDING_TEMPERATURE]
    }

    /// Sets the current temperature (the room warmed up, say); it moves toward the setpoint
    /// from there.
    pub fn set_temperature(&self, tenths: u16) {
        self.shared.registers().set_temperature(tenths);
    }

    /// From now on, reads (functions 3 and 4) whose range includes the address `register`
    /// answer the Modbus exception `code` (04: server device failure); `None` ends it. Writes
    /// are served as before.
    pub fn fail_reads(&self, register: u16, code: Option<u8>) {
        *self
            .shared
            .read_fault
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = code.map(|c| (register, c));
    }

    /// How many reads were answered with the exception of [`SimulatedThermostat::fail_reads`].
    pub fn failed_reads(&self) -> u64 {
        self.shared.failed_reads.load(Ordering::Relaxed)
    }

    /// How many client connections are open.
    pub fn connections(&self) -> usize {
        self.shared.options.max_connections - self.shared.slots.available_permits()
    }

    /// Stops it and waits until the listener is closed and every connection task has ended.
    pub async fn stop(mut self) {
        self.stop.cancel();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for SimulatedThermostat {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Indexes into [`Registers`] (the arrays are exactly this long).
const HOLDING_SETPOINT: usize = SETPOINT_REGISTER as usize;
const HOLDING_TEMPERATURE: usize = TEMPERATURE_REGISTER as usize;
const INPUT_TEMPERATURE: usize = TEMPERATURE_INPUT_REGISTER as usize;

/// What the connection tasks, the simulation and the handle share.
#[derive(Debug)]
struct Shared {
    registers: Mutex<Registers>,
    /// The register whose reads answer an exception, and its code.
    read_fault: Mutex<Option<(u16, u8)>>,
    /// Reads answered with that exception.
    failed_reads: AtomicU64,
    /// One permit per open connection.
    slots: Arc<Semaphore>,
    options: ThermostatOptions,
}

impl Shared {
    /// A thermostat's state as `options` start it.
    fn new(options: ThermostatOptions) -> Self {
        let mut registers = Registers::new();
        registers.holdings[HOLDING_SETPOINT] = options.setpoint;
        registers.holdings[HOLDING_TEMPERATURE] = options.temperature;
        registers.inputs[INPUT_TEMPERATURE] = options.temperature;
        Self {
            registers: Mutex::new(registers),
            read_fault: Mutex::new(None),
            failed_reads: AtomicU64::new(0),
            slots: Arc::new(Semaphore::new(options.max_connections)),
            options,
        }
    }

    fn registers(&self) -> MutexGuard<'_, Registers> {
        self.registers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The exception code for a checked request (`adu`) that reads the faulted register.
    fn faulted_read(&self, adu: &[u8]) -> Option<u8> {
        let (register, code) = (*self
            .read_fault
            .lock()
            .unwrap_or_else(PoisonError::into_inner))?;
        // A checked read: unit, function 3 or 4, address and quantity.
        let (address, count) = match adu.get(7..12)? {
            [0x03 | 0x04, a0, a1, c0, c1] => (
                u16::from_be_bytes([*a0, *a1]),
                u16::from_be_bytes([*c0, *c1]),
            ),
            _ => return None,
        };
        let reads = u32::from(register) >= u32::from(address)
            && u32::from(register) < u32::from(address) + u32::from(count);
        reads.then_some(code)
    }
}

trait Thermostat {
    fn set_temperature(&mut self, tenths: u16);
    fn step(&mut self);
}

impl Thermostat for Registers {
    fn set_temperature(&mut self, tenths: u16) {
        self.holdings[HOLDING_TEMPERATURE] = tenths;
        self.inputs[INPUT_TEMPERATURE] = tenths;
    }

    /// One tenth of a degree toward the setpoint.
    fn step(&mut self) {
        let (setpoint, now) = (
            self.holdings[HOLDING_SETPOINT],
            self.holdings[HOLDING_TEMPERATURE],
        );
        let next = match now.cmp(&setpoint) {
            std::cmp::Ordering::Less => now + 1,
            std::cmp::Ordering::Greater => now - 1,
            std::cmp::Ordering::Equal => now,
        };
        self.set_temperature(next);
    }
}

/// Moves the temperature every step interval until `stop`.
async fn simulate(shared: Arc<Shared>, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(shared.options.step_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => shared.registers().step(),
        }
    }
}

/// Accepts connections until `stop`, each served by its own task; then ends them all.
async fn accept(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors, say: pause instead of spinning.
                tracing::warn!(error = %e, "modbus device: accept failed");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let Ok(slot) = Arc::clone(&shared.slots).try_acquire_owned() else {
            tracing::debug!(%peer, max = shared.options.max_connections, "modbus device: too many connections, closing the new one");
            continue;
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(serve(stream, peer, Arc::clone(&shared), stop.clone(), slot));
    }
    connections.shutdown().await;
}

/// Answers one client's requests, in order, until it closes, misbehaves or `stop`.
async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    _slot: OwnedSemaphorePermit,
) {
    let idle = shared.options.idle_timeout;
    let mut adu = [0u8; MAX_ADU_LEN];
    loop {
        let read = tokio::select! {
            () = stop.cancelled() => return,
            read = tokio::time::timeout(idle, read_adu(&mut stream, &mut adu)) => read,
        };
        let len = match read {
            Ok(Ok(Some(len))) => len,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "modbus device: connection closed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, ?idle, "modbus device: no complete request in time, connection closed");
                return;
            }
        };
        let answer = match respond(&adu[..len], &shared) {
            Ok(Some(answer)) => answer,
            Ok(None) => continue,
            Err(reason) => {
                tracing::debug!(%peer, %reason, "modbus device: malformed request, connection closed");
                return;
            }
        };
        let written = tokio::select! {
            () = stop.cancelled() => return,
            written = tokio::time::timeout(idle, stream.write_all(&answer)) => written,
        };
        if !matches!(written, Ok(Ok(()))) {
            tracing::debug!(%peer, "modbus device: the answer could not be sent, connection closed");
            return;
        }
    }
}

/// Reads one request (MBAP header and PDU) into `buf`; `None` when the client closed the
/// connection between requests. Refuses a header that is not Modbus TCP before reading on.
async fn read_adu(
    stream: &mut TcpStream,
    buf: &mut [u8; MAX_ADU_LEN],
) -> io::Result<Option<usize>> {
    // The first byte alone tells a clean close from a cut request.
    if stream.read(&mut buf[..1]).await? == 0 {
        return Ok(None);
    }
    stream.read_exact(&mut buf[1..6]).await?;
    let protocol = u16::from_be_bytes([buf[2], buf[3]]);
    let length = u16::from_be_bytes([buf[4], buf[5]]);
    if protocol != 0 {
        return Err(invalid(format!(
            "MBAP protocol id {protocol} is not Modbus (0)"
        )));
    }
    if !(2..=MAX_MBAP_LENGTH).contains(&length) {
        return Err(invalid(format!(
            "MBAP length {length} is not within 2..={MAX_MBAP_LENGTH}"
        )));
    }
    let end = 6 + usize::from(length);
    stream.read_exact(&mut buf[6..end]).await?;
    Ok(Some(end))
}

fn invalid(reason: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason)
}

/// What to do with a request, decided before rmodbus sees it.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Well-formed; rmodbus answers it.
    Process,
    /// For another unit: no answer.
    Ignore,
    /// Answer this exception code.
    Exception(u8),
    /// Close the connection.
    Malformed(&'static str),
}

/// Checks a complete request (`adu`: MBAP header, unit id, PDU) so that what reaches rmodbus
/// is consistent: rmodbus trusts a write's byte count (slicing past the frame panics) and
/// adds 0x80 to the function code of an exception (overflowing for codes above 0x7F).
fn check(adu: &[u8], unit_id: u8) -> Verdict {
    let Some((&unit, pdu)) = adu.get(6..).and_then(<[u8]>::split_first) else {
        return Verdict::Malformed("no unit id");
    };
    let Some((&function, data)) = pdu.split_first() else {
        return Verdict::Malformed("no function code");
    };
    if function & 0x80 != 0 {
        return Verdict::Malformed("a function code with the exception bit set");
    }
    let word = |at: usize| {
        data.get(at..at + 2)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
    };
    match function {
        // Read coils, discrete inputs, holding registers, input registers; write one coil
        // or one register: address and quantity or value.
        0x01..=0x06 => {
            if data.len() != 4 {
                return Verdict::Malformed("a request of functions 1 to 6 has 4 data bytes");
            }
            if unit != unit_id {
                return Verdict::Ignore;
            }
            let (address, value) = (word(0), word(2));
            match function {
                0x01..=0x04 if value == 0 => Verdict::Exception(ILLEGAL_DATA_VALUE),
                0x06 => write_registers(address, 1, value),
                _ => Verdict::Process,
            }
        }
        // Write multiple coils or registers: address, quantity, byte count, values.
        0x0F | 0x10 => {
            let Some(&bytes) = data.get(4) else {
                return Verdict::Malformed("a multiple write shorter than its header");
            };
            if data.len() != 5 + usize::from(bytes) {
                return Verdict::Malformed("a multiple write whose byte count is not its length");
            }
            if unit != unit_id {
                return Verdict::Ignore;
            }
            let (address, count) = (word(0), word(2));
            let (max, needed) = if function == 0x0F {
                (1968, count.div_ceil(8))
            } else {
                (123, count.saturating_mul(2))
            };
            if count == 0 || count > max || u16::from(bytes) != needed {
                return Verdict::Exception(ILLEGAL_DATA_VALUE);
            }
            if function == 0x10 {
                write_registers(address, count, word(5))
            } else {
                Verdict::Process
            }
        }
        _ if unit != unit_id => Verdict::Ignore,
        _ => Verdict::Exception(ILLEGAL_FUNCTION),
    }
}

/// Only the setpoint is writable, and only within its range.
fn write_registers(address: u16, count: u16, first_value: u16) -> Verdict {
    if address != SETPOINT_REGISTER || count != 1 {
        Verdict::Exception(ILLEGAL_DATA_ADDRESS)
    } else if !(SETPOINT_MIN..=SETPOINT_MAX).contains(&first_value) {
        Verdict::Exception(ILLEGAL_DATA_VALUE)
    } else {
        Verdict::Process
    }
}

/// The answer to a request, `None` for no answer, or why the connection must close.
fn respond(adu: &[u8], shared: &Shared) -> Result<Option<Vec<u8>>, String> {
    let unit_id = shared.options.unit_id;
    match check(adu, unit_id) {
        Verdict::Ignore => Ok(None),
        Verdict::Malformed(reason) => Err(reason.to_owned()),
        Verdict::Exception(code) => Ok(Some(exception(adu, code))),
        Verdict::Process if let Some(code) = shared.faulted_read(adu) => {
            shared.failed_reads.fetch_add(1, Ordering::Relaxed);
            Ok(Some(exception(adu, code)))
        }
        Verdict::Process => {
            let mut response = Vec::with_capacity(MAX_ADU_LEN);
            let mut frame = ModbusFrame::new(unit_id, adu, ModbusProto::TcpUdp, &mut response)
                .with_broadcast_units(&[]);
            frame.parse().map_err(|e| format!("rmodbus: {e}"))?;
            if frame.processing_required {
                let mut registers = shared.registers();
                if frame.readonly {
                    frame.process_read(&*registers)
                } else {
                    frame.process_write(&mut *registers)
                }
                .map_err(|e| format!("rmodbus: {e}"))?;
            }
            if !frame.response_required {
                return Ok(None);
            }
            frame
                .finalize_response()
                .map_err(|e| format!("rmodbus: {e}"))?;
            Ok(Some(response))
        }
    }
}

/// How a new thermostat (default options, no read fault) answers one complete request `adu`
/// (MBAP header, unit id, PDU): `Ok(Some(answer))`, `Ok(None)` for no answer (another unit),
/// or why the connection would be closed. The connection tasks answer every request so; this is
/// the part a fuzzer drives.
pub fn answer(adu: &[u8]) -> Result<Option<Vec<u8>>, String> {
    respond(adu, &Shared::new(ThermostatOptions::default()))
}

/// A Modbus TCP exception answer to `adu`: its transaction id, length 3, unit, function with
/// the exception bit, `code`.
fn exception(adu: &[u8], code: u8) -> Vec<u8> {
    let mut answer = Vec::with_capacity(9);
    answer.extend_from_slice(&adu[..2]);
    answer.extend_from_slice(&[0, 0, 0, 3, adu[6], adu[7] | 0x80, code]);
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request for unit 1: transaction id 7, `pdu` after the unit id.
    fn adu(pdu: &[u8]) -> Vec<u8> {
        let mut adu = vec![0, 7, 0, 0];
        adu.extend_from_slice(&(pdu.len() as u16 + 1).to_be_bytes());
        adu.push(1);
        adu.extend_from_slice(pdu);
        adu
    }

    fn shared() -> Shared {
        Shared::new(ThermostatOptions::default())
    }

    #[test]
    fn a_read_fault_answers_its_exception_to_reads_of_its_register_only() {
        let device = shared();
        *device.read_fault.lock().unwrap() = Some((TEMPERATURE_REGISTER, 0x04));
        // Holding registers 0..2 include address 1: exception 04. Input register 0 is
        // another address.
        let answer = respond(&adu(&[3, 0, 0, 0, 2]), &device).unwrap().unwrap();
        assert_eq!(answer, [0, 7, 0, 0, 0, 3, 1, 0x83, 0x04]);
        let answer = respond(&adu(&[3, 0, 1, 0, 1]), &device).unwrap().unwrap();
        assert_eq!(answer[7..], [0x83, 0x04]);
        let answer = respond(&adu(&[4, 0, 0, 0, 1]), &device).unwrap().unwrap();
        assert_eq!(answer[7..], [4, 2, 0, 180]);
        // The setpoint alone is read, and written, as before.
        let answer = respond(&adu(&[3, 0, 0, 0, 1]), &device).unwrap().unwrap();
        assert_eq!(answer[7..], [3, 2, 0, 200]);
        let answer = respond(&adu(&[6, 0, 0, 0, 210]), &device).unwrap().unwrap();
        assert_eq!(answer[7..], [6, 0, 0, 0, 210]);
        assert_eq!(device.failed_reads.load(Ordering::Relaxed), 2);
        *device.read_fault.lock().unwrap() = None;
        let answer = respond(&adu(&[3, 0, 0, 0, 2]), &device).unwrap().unwrap();
        assert_eq!(answer[7..], [3, 4, 0, 210, 0, 180]);
    }

    #[test]
    fn reads_and_writes_the_register_map() {
        let device = shared();
        // Read holding registers 0..2.
        let answer = respond(&adu(&[3, 0, 0, 0, 2]), &device).unwrap().unwrap();
        assert_eq!(answer, [0, 7, 0, 0, 0, 7, 1, 3, 4, 0, 200, 0, 180]);
        // Read input register 0.
        let answer = respond(&adu(&[4, 0, 0, 0, 1]), &device).unwrap().unwrap();
        assert_eq!(answer, [0, 7, 0, 0, 0, 5, 1, 4, 2, 0, 180]);
        // Write the setpoint (function 6, then 16): echoed, and stored.
        let answer = respond(&adu(&[6, 0, 0, 0, 235]), &device).unwrap().unwrap();
        assert_eq!(answer, adu(&[6, 0, 0, 0, 235]));
        assert_eq!(device.registers().holdings[HOLDING_SETPOINT], 235);
        let answer = respond(&adu(&[16, 0, 0, 0, 1, 2, 0, 240]), &device)
            .unwrap()
            .unwrap();
        assert_eq!(answer, adu(&[16, 0, 0, 0, 1]));
        assert_eq!(device.registers().holdings[HOLDING_SETPOINT], 240);
    }

    #[test]
    fn requests_it_cannot_serve_get_exceptions() {
        let device = shared();
        let cases: &[(&[u8], u8)] = &[
            // The temperature is read-only.
            (&[6, 0, 1, 0, 10], ILLEGAL_DATA_ADDRESS),
            (&[16, 0, 0, 0, 2, 4, 0, 200, 0, 10], ILLEGAL_DATA_ADDRESS),
            // A setpoint out of range.
            (&[6, 0, 0, 0, 10], ILLEGAL_DATA_VALUE),
            (&[16, 0, 0, 0, 1, 2, 0xFF, 0xFF], ILLEGAL_DATA_VALUE),
            // No such register, no coils.
            (&[3, 0, 2, 0, 1], ILLEGAL_DATA_ADDRESS),
            (&[3, 0, 1, 0, 2], ILLEGAL_DATA_ADDRESS),
            (&[1, 0, 0, 0, 1], ILLEGAL_DATA_ADDRESS),
            (&[5, 0, 0, 0xFF, 0], ILLEGAL_DATA_ADDRESS),
            // Quantities: zero, too many, a byte count that does not match.
            (&[3, 0, 0, 0, 0], ILLEGAL_DATA_VALUE),
            (&[3, 0, 0, 0, 126], ILLEGAL_DATA_VALUE),
            (&[16, 0, 0, 0, 2, 2, 0, 200], ILLEGAL_DATA_VALUE),
            (&[15, 0, 0, 0, 9, 1, 0xFF], ILLEGAL_DATA_VALUE),
            // Unknown functions.
            (&[0x2B, 0x0E, 1, 0], ILLEGAL_FUNCTION),
            (&[0], ILLEGAL_FUNCTION),
        ];
        for (pdu, code) in cases {
            let answer = respond(&adu(pdu), &device).unwrap().unwrap();
            assert_eq!(
                answer,
                [0, 7, 0, 0, 0, 3, 1, pdu[0] | 0x80, *code],
                "{pdu:?}"
            );
        }
        assert_eq!(device.registers().holdings, [200, 180]);
    }

    #[test]
    fn malformed_requests_close_the_connection_and_other_units_get_no_answer() {
        let device = shared();
        // The third would make rmodbus overflow a u8 (0x83 + 0x80, a panic in debug builds),
        // the fifth slice past the frame (a panic in any build) if they reached it.
        for pdu in [
            &[3, 0, 0, 0][..],
            &[3, 0, 0, 0, 1, 0],
            &[0x83, 0, 0, 0, 1],
            &[0xFF],
            &[16, 0, 0, 0, 1, 200, 0, 200],
            &[16, 0, 0, 0],
            &[],
        ] {
            assert!(respond(&adu(pdu), &device).is_err(), "{pdu:?}");
        }
        let mut other = adu(&[6, 0, 0, 0, 230]);
        for unit in [0, 2, 255] {
            other[6] = unit;
            assert_eq!(respond(&other, &device), Ok(None));
        }
        assert_eq!(device.registers().holdings, [200, 180]);
    }

    #[test]
    fn the_temperature_follows_the_setpoint_one_tenth_at_a_time() {
        let mut registers = Registers::new();
        registers.holdings = [202, 200];
        let mut seen = Vec::new();
        for _ in 0..4 {
            registers.step();
            seen.push((registers.holdings[1], registers.inputs[0]));
        }
        assert_eq!(seen, [(201, 201), (202, 202), (202, 202), (202, 202)]);
        registers.holdings[0] = 200;
        registers.step();
        assert_eq!(registers.holdings[1], 201);
    }

    proptest::proptest! {
        /// Whatever a client sends in a well-framed request, the device answers it, ignores it
        /// or closes the connection: it never panics (rmodbus would on some frames), an answer
        /// is a well-formed Modbus TCP frame for the same transaction, and the setpoint stays
        /// within its range.
        #[test]
        fn any_request_is_answered_refused_or_dropped_without_panicking(
            unit in 0u8..3,
            pdu in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..=253),
        ) {
            let shared = shared();
            let mut request = vec![0x12, 0x34, 0, 0];
            request.extend_from_slice(&(pdu.len() as u16 + 1).to_be_bytes());
            request.push(unit);
            request.extend_from_slice(&pdu);
            if let Ok(Some(answer)) = respond(&request, &shared) {
                proptest::prop_assert!(answer.len() >= 9 && answer.len() <= MAX_ADU_LEN);
                proptest::prop_assert_eq!(&answer[..4], &[0x12, 0x34, 0, 0]);
                let length = usize::from(u16::from_be_bytes([answer[4], answer[5]]));
                proptest::prop_assert_eq!(length + 6, answer.len());
                proptest::prop_assert_eq!(answer[6], unit);
            }
            let setpoint = shared.registers().holdings[0];
            proptest::prop_assert!((SETPOINT_MIN..=SETPOINT_MAX).contains(&setpoint));
        }
    }
}
