//! Load test of kubeedge-mapper, in one run:
//!
//! 1. Modbus TCP reads/s and latency of a 10-register holding read (function 3) through
//!    `ModbusDriver`, against a fast Modbus TCP server written here (tokio, answering from an
//!    array: pymodbus is far too slow to be the measure), on 1 and on 4 connections;
//! 2. the mapper runtime's CPU per 1,000 property polls/s: N devices x 10 INT properties at
//!    `collectCycle` 100 ms (so N x 100 polls/s), each device on its own connection to the
//!    same server, reporting every property every second to a real mosquitto over MQTT,
//!    measured from `/proc/self/stat` (user + system time of this process) over 10 s.
//!
//! The server runs in a child process (this binary with `--server`) so that its CPU is not
//! counted; so does mosquitto.
//!
//! ```sh
//! cargo run --release -p kubeedge-mapper --example mapper_load
//! # options: --read-seconds 5 --seconds 10 --rates 0,1000,10000 --broker tcp://127.0.0.1:1883
//! # (rate 0: the runtime with no device, connected to the broker: its fixed cost)
//! ```

use std::io::Read as _;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kubeedge_mapper::modbus::{ModbusConfig, ModbusDriver};
use kubeedge_mapper::runtime::{
    AccessMode, DeviceInstance, DeviceProperty, MapperConfig, MapperRuntime, MqttTarget,
    ProtocolConfig, ReportTarget,
};
use kubeedge_mapper::{PropertySpec, Result};
use kubeedge_testkit::{Mosquitto, MosquittoOptions};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--server") {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        runtime.block_on(server());
        return ExitCode::SUCCESS;
    }
    let options = match Options::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(client(options))
}

struct Options {
    read_seconds: u64,
    seconds: u64,
    rates: Vec<u64>,
    broker: Option<String>,
}

impl Options {
    fn parse(args: &[String]) -> std::result::Result<Self, String> {
        let mut o = Options {
            read_seconds: 5,
            seconds: 10,
            rates: vec![0, 1000, 10_000],
            broker: None,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut v = || it.next().cloned().ok_or(format!("{a} needs a value"));
            match a.as_str() {
                "--read-seconds" => o.read_seconds = v()?.parse().map_err(|_| "a number")?,
                "--seconds" => o.seconds = v()?.parse().map_err(|_| "a number")?,
                "--broker" => o.broker = Some(v()?),
                "--rates" => {
                    o.rates = v()?
                        .split(',')
                        .map(|r| r.parse().map_err(|_| format!("bad rate {r}")))
                        .collect::<std::result::Result<_, _>>()?;
                }
                other => return Err(format!("unknown argument {other}")),
            }
        }
        Ok(o)
    }
}

// ---------------------------------------------------------------------------------------------
// The Modbus TCP server
// ---------------------------------------------------------------------------------------------

/// Serves holding and input registers 0..1000 (register n holds n) on 127.0.0.1, one task per
/// connection; prints `READY <port>`.
async fn server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    println!("READY {}", listener.local_addr().expect("address").port());
    let registers: Arc<Vec<u16>> = Arc::new((0..1000).collect());
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, Arc::clone(&registers)));
    }
}

async fn connection(stream: TcpStream, registers: Arc<Vec<u16>>) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut header = [0u8; 7];
    let mut pdu = [0u8; 256];
    let mut out = Vec::with_capacity(512);
    loop {
        if read.read_exact(&mut header).await.is_err() {
            return;
        }
        let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
        if !(2..=254).contains(&len) || read.read_exact(&mut pdu[..len - 1]).await.is_err() {
            return;
        }
        let pdu = &pdu[..len - 1];
        out.clear();
        out.extend_from_slice(&header[..4]);
        out.extend_from_slice(&[0, 0, header[6]]);
        let address = usize::from(u16::from_be_bytes([pdu[1], pdu[2]]));
        let count = usize::from(u16::from_be_bytes([pdu[3], pdu[4]]));
        match pdu[0] {
            3 | 4 if (1..=125).contains(&count) && address + count <= registers.len() => {
                out.push(pdu[0]);
                out.push((count * 2) as u8);
                for r in &registers[address..address + count] {
                    out.extend_from_slice(&r.to_be_bytes());
                }
            }
            function => out.extend_from_slice(&[function | 0x80, 2]),
        }
        let body = (out.len() - 6) as u16;
        out[4..6].copy_from_slice(&body.to_be_bytes());
        if write.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// Starts this binary as the server; returns it and its port.
async fn start_server() -> (Child, u16) {
    let mut child = Command::new(std::env::current_exe().expect("this binary"))
        .arg("--server")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the server starts");
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .await
        .expect("READY");
    let port = line
        .trim()
        .strip_prefix("READY ")
        .and_then(|p| p.parse().ok())
        .expect("READY <port>");
    (child, port)
}

// ---------------------------------------------------------------------------------------------
// Measures
// ---------------------------------------------------------------------------------------------

/// This process's user + system CPU time.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Fields 14 and 15 of the file (utime, stime); the rest starts at field 3.
    let total = ticks(11) + ticks(12);
    Duration::from_secs_f64(total as f64 / clock_ticks_per_second() as f64)
}

/// `sysconf(_SC_CLK_TCK)` without libc: the AT_CLKTCK entry of the auxiliary vector.
fn clock_ticks_per_second() -> u64 {
    const AT_CLKTCK: u64 = 17;
    let mut auxv = Vec::new();
    if std::fs::File::open("/proc/self/auxv")
        .and_then(|mut f| f.read_to_end(&mut auxv))
        .is_ok()
    {
        for pair in auxv.chunks_exact(16) {
            let key = u64::from_ne_bytes(pair[..8].try_into().unwrap_or_default());
            let value = u64::from_ne_bytes(pair[8..].try_into().unwrap_or_default());
            if key == AT_CLKTCK && value > 0 {
                return value;
            }
        }
    }
    100
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i])
}

// ---------------------------------------------------------------------------------------------
// 1. Modbus reads
// ---------------------------------------------------------------------------------------------

async fn read_phase(port: u16, connections: usize, seconds: u64) {
    let warmup = Instant::now() + Duration::from_secs(1);
    let end = warmup + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let driver = ModbusDriver::new(
            ModbusConfig::tcp(format!("127.0.0.1:{port}"), 1)
                .timeout(Duration::from_secs(1))
                .retries(0),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies: Vec<u32> = Vec::with_capacity(1 << 20);
            let mut errors = 0u64;
            loop {
                let start = Instant::now();
                if start >= end {
                    break;
                }
                let ok =
                    matches!(driver.read_holding_registers(100, 10).await, Ok(r) if r[0] == 100);
                if !ok {
                    errors += 1;
                }
                if start >= warmup {
                    latencies.push(start.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("reader task");
        all.extend(l);
        errors += e;
    }
    all.sort_unstable();
    println!(
        "| {connections} | {:.0} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {errors} |",
        all.len() as f64 / seconds as f64,
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        percentile(&all, 0.999),
        all.last().copied().map_or(0.0, f64::from),
    );
}

// ---------------------------------------------------------------------------------------------
// 2. The runtime
// ---------------------------------------------------------------------------------------------

const PROPERTIES: usize = 10;
const COLLECT: Duration = Duration::from_millis(100);

fn devices(count: usize, port: u16) -> Result<Vec<DeviceInstance>> {
    (0..count)
        .map(|d| {
            let properties = (0..PROPERTIES)
                .map(|p| {
                    let visitor = serde_json::json!({"protocolName": "modbus", "configData": {
                        "register": "HoldingRegister", "offset": d * PROPERTIES + p, "limit": 1}});
                    Ok(DeviceProperty {
                        spec: PropertySpec::from_json(format!("p{p}"), "INT", visitor)?,
                        access_mode: AccessMode::ReadOnly,
                        collect_cycle: COLLECT,
                        report_cycle: Duration::from_secs(1),
                        report_to_cloud: true,
                        desired: None,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let config = serde_json::json!({"ip": "127.0.0.1", "port": port, "slaveID": 1});
            Ok(DeviceInstance {
                id: kubeedge_proto::DeviceId::new("default", &format!("load-{d}"))
                    .expect("a device id"),
                model: "load-model".into(),
                protocol: ProtocolConfig {
                    protocol_name: "modbus".into(),
                    config_data: config.as_object().cloned().unwrap_or_default(),
                },
                properties,
            })
        })
        .collect()
}

async fn runtime_phase(port: u16, broker: &str, rate: u64, seconds: u64) {
    let count = (rate as usize).div_ceil(PROPERTIES * 10);
    let mut config = MapperConfig::new("load-mapper", "modbus");
    config.report = ReportTarget::Mqtt(MqttTarget::new(broker));
    let mut runtime = MapperRuntime::new(config, |device| {
        let config = ModbusConfig::from_protocol_config(&device.protocol.config_data)?;
        Ok(ModbusDriver::new(config.retries(0)))
    });
    for device in devices(count, port).expect("devices") {
        runtime.add_device(device).expect("a valid device");
    }
    let handle = runtime.handle();
    let stop = CancellationToken::new();
    let task = tokio::spawn(runtime.run(stop.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (cpu0, wall0, stats0) = (cpu_time(), Instant::now(), handle.stats());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (cpu1, wall1, stats1) = (cpu_time(), Instant::now(), handle.stats());
    let rss = rss_mib();
    stop.cancel();
    let _ = task.await;
    let wall = (wall1 - wall0).as_secs_f64();
    let cpu = (cpu1 - cpu0).as_secs_f64();
    let polls = (stats1.polls - stats0.polls) as f64 / wall;
    let reports = (stats1.reports - stats0.reports) as f64 / wall;
    let errors =
        (stats1.poll_errors - stats0.poll_errors) + (stats1.report_errors - stats0.report_errors);
    let per_thousand = if polls > 0.0 {
        format!("{:.1} ms", cpu * 1000.0 / wall / (polls / 1000.0))
    } else {
        "-".to_owned()
    };
    println!(
        "| {count} x {PROPERTIES} | {polls:.0} | {reports:.0} | {:.1} % | {per_thousand} | {rss:.1} MiB | {errors} |",
        cpu / wall * 100.0,
    );
}

async fn client(options: Options) -> ExitCode {
    let (_server, port) = start_server().await;
    println!(
        "## Modbus TCP: 10-register holding read, {} s per row\n",
        options.read_seconds
    );
    println!("| connections | reads/s | p50 | p99 | p99.9 | max | errors |");
    println!("|---|---|---|---|---|---|---|");
    for connections in [1, 4] {
        read_phase(port, connections, options.read_seconds).await;
    }

    // mosquitto on a free port, killed when dropped.
    let (_mosquitto, broker) = match &options.broker {
        Some(b) => (None, b.clone()),
        None => {
            let mosquitto = Mosquitto::try_start(MosquittoOptions::default())
                .await
                .unwrap_or_else(|e| panic!("{e} (or pass --broker)"));
            let url = mosquitto.url();
            (Some(mosquitto), url)
        }
    };
    println!(
        "\n## Mapper runtime: CPU of this process over {} s, reports over MQTT to {broker}\n",
        options.seconds
    );
    println!(
        "| devices x properties | polls/s | values reported/s | CPU (one core = 100 %) | CPU per 1,000 polls/s | RSS | errors |"
    );
    println!("|---|---|---|---|---|---|---|");
    for rate in &options.rates {
        runtime_phase(port, &broker, *rate, options.seconds).await;
    }
    ExitCode::SUCCESS
}
