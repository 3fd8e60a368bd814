//! Device twin under load, end to end: a mapper publishes `twin/update` over MQTT and waits for
//! `twin/update/result`, through the embedded broker and through mosquitto, with the whole edge
//! node in this process (MQTT client, ingress queue, EventBus, TwinEngine, SQLite store and
//! durable outbox).
//!
//! ```sh
//! cargo run --release -p kubeedge-twin --example twin_load -- \
//!     --rate 1000 --seconds 10 --devices 10 --window 256 --broker both
//! ```
//!
//! For each broker (mosquitto first, then the embedded one):
//!
//! 1. starts the node (SQLite in a temporary directory, default durability; a cloud link that
//!    only counts what it gets, or with `--confirm` one that confirms every report as the cloud
//!    does) and makes `--devices` devices members of it, then asks each for its twins
//!    (`twin/get`) until every one answers;
//! 2. connects the load client (the "mapper": its own rumqttc client, QoS 1, TCP_NODELAY like
//!    Go's paho client) and subscribes to `$hw/events/device/+/+/twin/update/result`;
//! 3. paced phase: `--rate` updates per second for `--seconds` seconds, round-robin over the
//!    devices, on an absolute schedule (a late sender catches up at once); the latency of an
//!    update runs from its `publish` call to the receipt of its result (matched by `event_id`,
//!    a sequence number). An update without a result 5 s after the last send is lost;
//! 4. saturation phase: as fast as the node answers, with at most `--window` updates without a
//!    result, for `--seconds` seconds;
//! 5. prints a Markdown row per broker and phase, the process's RSS and peak RSS (`VmRSS`,
//!    `VmHWM` of `/proc/self/status`; the peak is reset before each broker where the kernel
//!    allows it), mosquitto's own RSS, and the CPU used.
//!
//! All traffic stays on 127.0.0.1; every wait has a deadline. Without mosquitto installed, the
//! mosquitto run is skipped with a message.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kubeedge_proto::{Content, Group, Message, NodeName, Operation, Source};
use kubeedge_store::{FullPolicy, Outbox, Store, StoreConfig};
use kubeedge_testkit::{Mosquitto, MosquittoOptions, StartError};
use kubeedge_twin::eventbus::{CloudInput, CloudOut, EventBus};
use kubeedge_twin::mqtt::{DEFAULT_SUBSCRIPTIONS, MqttBus, MqttConfig, MqttMode};
use kubeedge_twin::{Ingress, IngressConfig, TwinConfig, TwinEngine};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Outgoing, Packet, QoS};
use serde::Deserialize;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const NODE: &str = "edge-load";
const NAMESPACE: &str = "default";
/// How long after the last send an unanswered update counts as lost.
const LOST_AFTER: Duration = Duration::from_secs(5);
/// Deadline for every setup step (connect, subscribe, devices present; mosquitto's start has
/// kubeedge-testkit's `DEADLINE`, also 20 s).
const SETUP_DEADLINE: Duration = Duration::from_secs(20);
/// Updates sent (at the paced rate) before measuring, results discarded.
const WARMUP_UPDATES: u64 = 500;
/// The largest packet the load client sends or accepts.
const MAX_PACKET: usize = 1024 * 1024;
/// rumqttc's request queue for the load client: large, so `publish` practically never waits.
const REQUEST_CAPACITY: usize = 16 * 1024;
/// Outbox capacity: larger than anything one run queues (unconfirmed reports stay in it).
const OUTBOX_CAPACITY: usize = 10_000_000;
/// Unanswered updates at which a paced phase gives up (the node is far behind; this bounds the
/// load client's memory).
const MAX_OUTSTANDING: usize = 100_000;
/// Linux's USER_HZ, the unit of the CPU times in `/proc/<pid>/stat`.
const CLOCK_TICKS: f64 = 100.0;

// ---------------------------------------------------------------------------------------------
// Command line

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BrokerKind {
    Embedded,
    Mosquitto,
}

impl BrokerKind {
    fn name(self) -> &'static str {
        match self {
            Self::Embedded => "embedded",
            Self::Mosquitto => "mosquitto",
        }
    }
}

#[derive(Debug)]
struct Args {
    rate: u64,
    seconds: u64,
    devices: usize,
    window: usize,
    brokers: Vec<BrokerKind>,
    confirm: bool,
    mosquitto_nodelay: bool,
}

const USAGE: &str = "usage: twin_load [--rate N (updates/s, default 1000)] \
[--seconds N (per phase, default 10)] [--devices N (default 10)] \
[--window N (saturation, default 256)] [--broker embedded|mosquitto|both (default both)] \
[--confirm (the cloud confirms every report)] \
[--mosquitto-nodelay (mosquitto with set_tcp_nodelay true)]";

fn parse_args(raw: &[String]) -> Result<Args, String> {
    let mut args = Args {
        rate: 1000,
        seconds: 10,
        devices: 10,
        window: 256,
        brokers: vec![BrokerKind::Mosquitto, BrokerKind::Embedded],
        confirm: false,
        mosquitto_nodelay: false,
    };
    let mut it = raw.iter();
    while let Some(flag) = it.next() {
        let flag = flag.as_str();
        if flag == "--confirm" {
            args.confirm = true;
            continue;
        }
        if flag == "--mosquitto-nodelay" {
            args.mosquitto_nodelay = true;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.to_owned());
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag {
            "--rate" => args.rate = number(flag, value, 1, 200_000)?,
            "--seconds" => args.seconds = number(flag, value, 1, 60)?,
            "--devices" => args.devices = number(flag, value, 1, 1000)? as usize,
            "--window" => args.window = number(flag, value, 1, 10_000)? as usize,
            "--broker" => {
                args.brokers = match value.as_str() {
                    "embedded" => vec![BrokerKind::Embedded],
                    "mosquitto" => vec![BrokerKind::Mosquitto],
                    "both" => vec![BrokerKind::Mosquitto, BrokerKind::Embedded],
                    other => {
                        return Err(format!(
                            "--broker {other:?}: embedded, mosquitto or both\n{USAGE}"
                        ));
                    }
                }
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(args)
}

fn number(flag: &str, value: &str, min: u64, max: u64) -> Result<u64, String> {
    value
        .parse::<u64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("{flag} {value:?}: a whole number from {min} to {max}"))
}

// ---------------------------------------------------------------------------------------------
// A log-linear latency histogram (nanoseconds): exact below 2^(sub_bits+1) ns, then 2^sub_bits
// buckets per power of two (sub_bits 9: at most 0.2 % error).

#[derive(Clone)]
struct Histogram {
    sub_bits: u32,
    counts: Vec<u32>,
    total: u64,
    max: u64,
}

/// Values are clamped to 2^36 ns (68 s).
const HISTOGRAM_MAX_BITS: u32 = 36;

impl Histogram {
    fn new(sub_bits: u32) -> Self {
        let buckets = ((HISTOGRAM_MAX_BITS - sub_bits + 2) as usize) << sub_bits;
        Self {
            sub_bits,
            counts: vec![0; buckets],
            total: 0,
            max: 0,
        }
    }

    fn index(&self, v: u64) -> usize {
        let v = v.min((1u64 << HISTOGRAM_MAX_BITS) - 1);
        if v < 1u64 << (self.sub_bits + 1) {
            return v as usize;
        }
        let exponent = 63 - v.leading_zeros();
        let shift = exponent - self.sub_bits;
        ((shift as usize) << self.sub_bits) + (v >> shift) as usize
    }

    /// The middle of bucket `index`.
    fn value(&self, index: usize) -> u64 {
        if index < 1usize << (self.sub_bits + 1) {
            return index as u64;
        }
        let shift = (index >> self.sub_bits) as u32 - 1;
        let mantissa = (index - ((shift as usize) << self.sub_bits)) as u64;
        (mantissa << shift) + (1u64 << shift) / 2
    }

    fn record(&mut self, d: Duration) {
        let v = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = self.index(v);
        self.counts[i] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    /// The value at quantile `q` (0..=1), in nanoseconds.
    fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            seen += u64::from(*c);
            if seen >= rank {
                return self.value(i).min(self.max);
            }
        }
        self.max
    }
}

fn ms(ns: u64) -> String {
    let ms = ns as f64 / 1e6;
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

// ---------------------------------------------------------------------------------------------
// What the load client records: send instants of unanswered updates, latencies of answers.

struct PhaseState {
    start: Instant,
    outstanding: HashMap<u64, Instant>,
    latency: Histogram,
    /// One coarse histogram per second since `start` (by send time).
    per_second: Vec<Histogram>,
    answered: u64,
    errors: u64,
    first_error: Option<String>,
    /// Results for event ids not outstanding (late answers of an earlier phase, duplicates).
    stray: u64,
    window: Option<Arc<Semaphore>>,
}

impl PhaseState {
    fn new(window: Option<Arc<Semaphore>>) -> Self {
        Self {
            start: Instant::now(),
            outstanding: HashMap::new(),
            latency: Histogram::new(9),
            per_second: Vec::new(),
            answered: 0,
            errors: 0,
            first_error: None,
            stray: 0,
            window,
        }
    }
}

struct Recorder {
    state: Mutex<PhaseState>,
}

/// The head of a `twin/update/result` or `twin/get/result` (KubeEdge writes `event_id` first).
#[derive(Deserialize)]
struct ResultHead<'a> {
    #[serde(default, borrow)]
    event_id: &'a str,
    #[serde(default)]
    code: Option<i64>,
    #[serde(default, borrow)]
    reason: Option<&'a str>,
}

impl Recorder {
    fn new() -> Self {
        Self {
            state: Mutex::new(PhaseState::new(None)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PhaseState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a phase: forgets everything outstanding.
    fn reset(&self, window: Option<Arc<Semaphore>>) {
        *self.lock() = PhaseState::new(window);
    }

    fn sent(&self, seq: u64, at: Instant) {
        self.lock().outstanding.insert(seq, at);
    }

    fn answer(&self, payload: &[u8], at: Instant) {
        let Ok(head) = serde_json::from_slice::<ResultHead<'_>>(payload) else {
            self.lock().stray += 1;
            return;
        };
        let Ok(seq) = head.event_id.parse::<u64>() else {
            self.lock().stray += 1;
            return;
        };
        let window = {
            let mut s = self.lock();
            let Some(sent) = s.outstanding.remove(&seq) else {
                s.stray += 1;
                return;
            };
            let latency = at.saturating_duration_since(sent);
            if let Some(code) = head.code {
                s.errors += 1;
                if s.first_error.is_none() {
                    s.first_error = Some(format!("{code} {}", head.reason.unwrap_or("")));
                }
            } else {
                s.answered += 1;
                s.latency.record(latency);
                let second = sent.saturating_duration_since(s.start).as_secs() as usize;
                if second < 600 {
                    while s.per_second.len() <= second {
                        s.per_second.push(Histogram::new(4));
                    }
                    s.per_second[second].record(latency);
                }
            }
            s.window.clone()
        };
        if let Some(window) = window {
            window.add_permits(1);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// /proc figures

/// `VmRSS` and `VmHWM` of a process, in KiB.
fn memory_kib(pid: &str) -> (Option<u64>, Option<u64>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// User + system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Resets this process's `VmHWM` to its current RSS (Linux 4.0+); false when not allowed.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn kib(v: Option<u64>) -> String {
    match v {
        Some(v) => {
            let s = v.to_string();
            let mut out = String::new();
            for (i, c) in s.chars().enumerate() {
                if i > 0 && (s.len() - i) % 3 == 0 {
                    out.push(',');
                }
                out.push(c);
            }
            format!("{out} KiB")
        }
        None => "n/a".to_owned(),
    }
}

fn thousands(v: u64) -> String {
    kib(Some(v)).trim_end_matches(" KiB").to_owned()
}

// ---------------------------------------------------------------------------------------------
// The edge node

/// The cloud link: counts what the EventBus hands it; with `confirm`, answers every queued
/// report as the cloud does (`twin response` with the report's id as parent), which removes it
/// from the outbox.
#[derive(Clone)]
struct CountingCloud {
    queued: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    confirm: Option<mpsc::UnboundedSender<String>>,
}

impl CloudOut for CountingCloud {
    async fn queued(&self, messages: Vec<Message>) {
        self.queued
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
        if let Some(confirm) = &self.confirm {
            for m in messages {
                let _ = confirm.send(m.header.id.clone());
            }
        }
    }

    async fn send(&self, _message: Message) -> kubeedge_twin::Result<()> {
        self.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

struct Node {
    _dir: tempfile::TempDir,
    port: u16,
    ingress: Ingress,
    outbox: Outbox,
    cloud: CountingCloud,
    cloud_tx: mpsc::Sender<CloudInput>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

async fn start_node(
    mode: MqttMode,
    external_port: Option<u16>,
    confirm: bool,
) -> Result<Node, String> {
    let err = |what: &str| {
        let what = what.to_owned();
        move |e: kubeedge_twin::Error| format!("{what}: {e}")
    };
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let store = Store::open(StoreConfig::new(dir.path().join("edge.db")))
        .map_err(|e| format!("opening the store: {e}"))?;
    let outbox = Outbox::new(store.clone(), OUTBOX_CAPACITY, FullPolicy::Reject);
    let engine = TwinEngine::open(
        store.clone(),
        outbox.clone(),
        TwinConfig::new(NodeName::new(NODE).unwrap()),
    )
    .await
    .map_err(err("opening the twin"))?;
    let (ingress, ingress_rx) = Ingress::new(IngressConfig::default());
    let stop = CancellationToken::new();
    let external = format!("127.0.0.1:{}", external_port.unwrap_or(1));
    let internal = (Ipv4Addr::LOCALHOST, 0).into();
    let config = MqttConfig::new(mode, external, internal);
    let subscriptions = DEFAULT_SUBSCRIPTIONS
        .iter()
        .map(|s| s.to_string())
        .collect();
    let bus = MqttBus::start(config, subscriptions, ingress.clone(), stop.clone())
        .await
        .map_err(err("starting the MQTT bus"))?;
    let handle = bus.handle();
    tokio::time::timeout(SETUP_DEADLINE, handle.connected())
        .await
        .map_err(|_| "the node's MQTT client did not connect within 20 s".to_owned())?
        .map_err(err("connecting the node"))?;
    let port = match external_port {
        Some(p) => p,
        None => bus
            .broker_addr()
            .ok_or("the embedded broker has no address")?
            .port(),
    };

    let (cloud_tx, cloud_in) = mpsc::channel(64);
    let confirm_tx = if confirm {
        // A task forwards confirmations, so the bus never waits on its own input queue.
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let to_bus = cloud_tx.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let id = tokio::select! {
                    () = stop.cancelled() => return,
                    id = rx.recv() => match id { Some(id) => id, None => return },
                };
                let reply = Message::new(
                    Source::DeviceController,
                    Group::Twin,
                    Operation::Response,
                    "twin",
                    Content::string("OK"),
                )
                .with_parent(id);
                if to_bus
                    .send(CloudInput::Message(Box::new(reply)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Some(tx)
    } else {
        None
    };
    let cloud = CountingCloud {
        queued: Arc::default(),
        sent: Arc::default(),
        confirm: confirm_tx,
    };
    let eventbus = EventBus::new(engine, store, handle, cloud.clone());
    let run_stop = stop.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = eventbus.run(ingress_rx, cloud_in, run_stop).await {
            eprintln!("event bus ended: {e}");
        }
        bus.shutdown().await;
    });
    Ok(Node {
        _dir: dir,
        port,
        ingress,
        outbox,
        cloud,
        cloud_tx,
        stop,
        task,
    })
}

fn device_name(i: usize) -> String {
    format!("dev-{i}")
}

fn membership(devices: usize) -> Result<CloudInput, String> {
    let added: Vec<serde_json::Value> = (0..devices)
        .map(|i| {
            let name = device_name(i);
            serde_json::json!({"id": format!("{NAMESPACE}/{name}"), "name": name,
                "description": "twin_load device"})
        })
        .collect();
    let content = serde_json::json!({
        "event_id": "membership-1", "timestamp": now_ms(), "added_devices": added,
        "removed_devices": null
    });
    Ok(CloudInput::Message(Box::new(Message::new(
        Source::DeviceController,
        Group::Twin,
        Operation::Update,
        "membership",
        Content::json(&content).map_err(|e| format!("membership content: {e}"))?,
    ))))
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// The load client (the mapper)

struct LoadClient {
    client: AsyncClient,
    stop: CancellationToken,
    task: JoinHandle<()>,
    subacks: mpsc::UnboundedReceiver<()>,
    /// Devices whose `twin/get` was answered without an error.
    got: mpsc::UnboundedReceiver<String>,
    connection_errors: Arc<AtomicU64>,
}

fn start_load_client(port: u16, window: usize, recorder: Arc<Recorder>) -> LoadClient {
    let mut options = MqttOptions::new(
        format!("twin-load-{}-{port}", std::process::id()),
        "127.0.0.1",
        port,
    );
    options
        .set_clean_session(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_request_channel_capacity(REQUEST_CAPACITY)
        .set_inflight(u16::try_from(window.max(100)).unwrap_or(u16::MAX));
    let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    let stop = CancellationToken::new();
    let (suback_tx, subacks) = mpsc::unbounded_channel();
    let (got_tx, got) = mpsc::unbounded_channel();
    let connection_errors = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn(poll_load_client(
        eventloop,
        stop.clone(),
        recorder,
        suback_tx,
        got_tx,
        Arc::clone(&connection_errors),
    ));
    LoadClient {
        client,
        stop,
        task,
        subacks,
        got,
        connection_errors,
    }
}

async fn poll_load_client(
    mut eventloop: EventLoop,
    stop: CancellationToken,
    recorder: Arc<Recorder>,
    subacks: mpsc::UnboundedSender<()>,
    got: mpsc::UnboundedSender<String>,
    connection_errors: Arc<AtomicU64>,
) {
    loop {
        let event = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let now = Instant::now();
                if p.topic.ends_with("/twin/update/result") {
                    recorder.answer(&p.payload, now);
                } else if let Some(device) = p.topic.strip_suffix("/twin/get/result")
                    && let Ok(head) = serde_json::from_slice::<ResultHead<'_>>(&p.payload)
                    && head.code.is_none()
                {
                    let name = device.rsplit('/').next().unwrap_or("").to_owned();
                    let _ = got.send(name);
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                let _ = subacks.send(());
            }
            // Our own goodbye: the broker closes the connection next.
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                let n = connection_errors.fetch_add(1, Ordering::Relaxed);
                if n < 5 {
                    eprintln!("load client: MQTT error: {e}");
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    }
}

fn update_topic(i: usize) -> String {
    format!(
        "$hw/events/device/{NAMESPACE}/{}/twin/update",
        device_name(i)
    )
}

fn update_payload(seq: u64) -> Vec<u8> {
    format!(
        r#"{{"event_id":"{seq}","timestamp":{},"twin":{{"temperature":{{"actual":{{"value":"{}"}},"metadata":{{"type":"int"}}}}}}}}"#,
        now_ms(),
        seq % 1_000_000
    )
    .into_bytes()
}

/// Subscribes and waits for the SUBACK.
async fn subscribe(load: &mut LoadClient, filter: &str) -> Result<(), String> {
    load.client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .map_err(|e| format!("subscribing {filter}: {e}"))?;
    match tokio::time::timeout(SETUP_DEADLINE, load.subacks.recv()).await {
        Ok(Some(())) => Ok(()),
        _ => Err(format!("no SUBACK for {filter} within 20 s")),
    }
}

/// Asks every device for its twins until each answers without an error.
async fn wait_for_devices(load: &mut LoadClient, devices: usize) -> Result<(), String> {
    let deadline = Instant::now() + SETUP_DEADLINE;
    let mut present = HashSet::new();
    let mut round = 0u64;
    while present.len() < devices {
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {devices} devices answered twin/get within 20 s",
                present.len()
            ));
        }
        round += 1;
        for i in (0..devices).filter(|i| !present.contains(&device_name(*i))) {
            let topic = format!("$hw/events/device/{NAMESPACE}/{}/twin/get", device_name(i));
            let payload = format!(
                r#"{{"event_id":"get-{round}-{i}","timestamp":{}}}"#,
                now_ms()
            );
            load.client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .map_err(|e| format!("publishing twin/get: {e}"))?;
        }
        let until = tokio::time::Instant::now() + Duration::from_millis(200);
        while let Ok(Some(name)) = tokio::time::timeout_at(until, load.got.recv()).await {
            present.insert(name);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Phases

struct PhaseReport {
    phase: String,
    seconds: f64,
    sent: u64,
    answered: u64,
    answered_in_time: u64,
    errors: u64,
    first_error: Option<String>,
    lost: u64,
    stray: u64,
    latency: Histogram,
    per_second_p99: Vec<u64>,
    /// How late the sender was against its schedule (paced phase).
    lag: Option<Histogram>,
    cpu_self: f64,
    cpu_broker: Option<f64>,
}

struct Load<'a> {
    client: &'a AsyncClient,
    recorder: &'a Recorder,
    topics: Vec<String>,
    seq: u64,
    broker_pid: Option<String>,
}

impl Load<'_> {
    async fn send(&mut self, device: usize) -> Result<(), String> {
        self.seq += 1;
        let seq = self.seq;
        let topic = self.topics[device % self.topics.len()].clone();
        let payload = update_payload(seq);
        self.recorder.sent(seq, Instant::now());
        match tokio::time::timeout(
            Duration::from_secs(5),
            self.client.publish(topic, QoS::AtLeastOnce, false, payload),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("publish: {e}")),
            Err(_) => Err("publish waited 5 s for the request queue".to_owned()),
        }
    }

    /// `count` updates at `rate` per second on an absolute schedule.
    async fn paced(&mut self, phase: &str, rate: u64, count: u64) -> Result<PhaseReport, String> {
        self.recorder.reset(None);
        let cpu = CpuMeter::start(self.broker_pid.as_deref());
        let mut lag = Histogram::new(9);
        let start = Instant::now() + Duration::from_millis(5);
        let mut sent = 0u64;
        for i in 0..count {
            let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
            lag.record(Instant::now().saturating_duration_since(due));
            self.send(i as usize).await?;
            sent += 1;
            if i % 1024 == 0 && self.recorder.lock().outstanding.len() > MAX_OUTSTANDING {
                println!(
                    "  {phase}: more than {MAX_OUTSTANDING} updates unanswered; stopping the phase"
                );
                break;
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        let (cpu_self, cpu_broker) = cpu.stop();
        let answered_in_time = self.recorder.lock().answered;
        let mut report = self.finish(phase, seconds, sent).await;
        report.answered_in_time = answered_in_time;
        report.lag = Some(lag);
        report.cpu_self = cpu_self;
        report.cpu_broker = cpu_broker;
        Ok(report)
    }

    /// As fast as answers come, at most `window` unanswered, for `seconds`.
    async fn saturate(
        &mut self,
        phase: &str,
        window: usize,
        seconds: u64,
    ) -> Result<PhaseReport, String> {
        let permits = Arc::new(Semaphore::new(window));
        self.recorder.reset(Some(Arc::clone(&permits)));
        let cpu = CpuMeter::start(self.broker_pid.as_deref());
        let start = Instant::now();
        let end = start + Duration::from_secs(seconds);
        let mut sent = 0u64;
        while Instant::now() < end {
            match tokio::time::timeout_at(end.into(), permits.acquire()).await {
                Ok(Ok(permit)) => permit.forget(),
                _ => break,
            }
            self.send(sent as usize).await?;
            sent += 1;
        }
        let answered_in_time = self.recorder.lock().answered;
        let seconds = start.elapsed().as_secs_f64();
        let (cpu_self, cpu_broker) = cpu.stop();
        let mut report = self.finish(phase, seconds, sent).await;
        report.answered_in_time = answered_in_time;
        report.cpu_self = cpu_self;
        report.cpu_broker = cpu_broker;
        Ok(report)
    }

    /// Waits up to [`LOST_AFTER`] for the last answers, then takes the figures.
    async fn finish(&mut self, phase: &str, seconds: f64, sent: u64) -> PhaseReport {
        let deadline = Instant::now() + LOST_AFTER;
        while Instant::now() < deadline && !self.recorder.lock().outstanding.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let s = self.recorder.lock();
        PhaseReport {
            phase: phase.to_owned(),
            seconds,
            sent,
            answered: s.answered,
            answered_in_time: 0,
            errors: s.errors,
            first_error: s.first_error.clone(),
            lost: s.outstanding.len() as u64,
            stray: s.stray,
            latency: s.latency.clone(),
            per_second_p99: s.per_second.iter().map(|h| h.quantile(0.99)).collect(),
            lag: None,
            cpu_self: 0.0,
            cpu_broker: None,
        }
    }
}

struct CpuMeter {
    at: Instant,
    own: Option<u64>,
    broker_pid: Option<String>,
    broker: Option<u64>,
}

impl CpuMeter {
    fn start(broker_pid: Option<&str>) -> Self {
        Self {
            at: Instant::now(),
            own: cpu_ticks("self"),
            broker_pid: broker_pid.map(str::to_owned),
            broker: broker_pid.and_then(cpu_ticks),
        }
    }

    /// CPU used since `start`, in cores (1.0 = one core busy), this process and the broker's.
    fn stop(self) -> (f64, Option<f64>) {
        let wall = self.at.elapsed().as_secs_f64().max(1e-3);
        let cores = |before: Option<u64>, after: Option<u64>| {
            Some((after?.saturating_sub(before?)) as f64 / CLOCK_TICKS / wall)
        };
        let own = cores(self.own, cpu_ticks("self")).unwrap_or(0.0);
        let broker = self
            .broker_pid
            .as_deref()
            .and_then(|pid| cores(self.broker, cpu_ticks(pid)));
        (own, broker)
    }
}

// ---------------------------------------------------------------------------------------------
// One broker

struct BrokerRun {
    label: String,
    phases: Vec<PhaseReport>,
    rss_before: Option<u64>,
    rss_after: Option<u64>,
    peak: Option<u64>,
    peak_reset: bool,
    broker_rss: Option<u64>,
    broker_peak: Option<u64>,
    outbox_len: usize,
    reports_queued: u64,
    ingress_dropped: u64,
    connection_errors: u64,
}

async fn run_broker(kind: BrokerKind, args: &Args) -> Result<Option<BrokerRun>, String> {
    let peak_reset = reset_peak_rss();
    let (rss_before, _) = memory_kib("self");
    let mosquitto = match kind {
        BrokerKind::Embedded => None,
        BrokerKind::Mosquitto => match Mosquitto::try_start(MosquittoOptions {
            tcp_nodelay: args.mosquitto_nodelay,
        })
        .await
        {
            Ok(m) => Some(m),
            Err(StartError::NotInstalled) => {
                println!(
                    "\nmosquitto is not installed (no `mosquitto` on PATH or in /usr/sbin): \
                     skipping the mosquitto broker. Install it with `apt-get install mosquitto`."
                );
                return Ok(None);
            }
            Err(e) => return Err(e.to_string()),
        },
    };
    let broker_pid = mosquitto
        .as_ref()
        .and_then(Mosquitto::pid)
        .map(|p| p.to_string());
    let (mode, external) = match &mosquitto {
        Some(m) => (MqttMode::External, Some(m.port())),
        None => (MqttMode::Internal, None),
    };
    let node = start_node(mode, external, args.confirm).await?;
    let recorder = Arc::new(Recorder::new());
    let mut load = start_load_client(node.port, args.window, Arc::clone(&recorder));
    subscribe(&mut load, "$hw/events/device/+/+/twin/update/result").await?;
    subscribe(&mut load, "$hw/events/device/+/+/twin/get/result").await?;
    node.cloud_tx
        .send(membership(args.devices)?)
        .await
        .map_err(|_| "the event bus is gone".to_owned())?;
    wait_for_devices(&mut load, args.devices).await?;
    println!(
        "{}: node up on 127.0.0.1:{}, {} devices present",
        kind.name(),
        node.port,
        args.devices
    );

    let mut driver = Load {
        client: &load.client,
        recorder: &recorder,
        topics: (0..args.devices).map(update_topic).collect(),
        seq: 0,
        broker_pid: broker_pid.clone(),
    };
    let warmup = driver
        .paced("warm-up", args.rate, WARMUP_UPDATES.min(args.rate))
        .await?;
    println!(
        "  warm-up: {} sent, {} answered, p50 {}",
        warmup.sent,
        warmup.answered,
        ms(warmup.latency.quantile(0.5))
    );
    let mut phases = Vec::new();
    let paced = driver
        .paced(
            &format!("paced {} /s", thousands(args.rate)),
            args.rate,
            args.rate * args.seconds,
        )
        .await?;
    print_phase_detail(&paced);
    phases.push(paced);
    let saturated = driver
        .saturate(
            &format!("saturation, window {}", args.window),
            args.window,
            args.seconds,
        )
        .await?;
    print_phase_detail(&saturated);
    phases.push(saturated);

    let (rss_after, peak) = memory_kib("self");
    let (broker_rss, broker_peak) = match &broker_pid {
        Some(pid) => memory_kib(pid),
        None => (None, None),
    };
    let outbox_len = node.outbox.len().await.unwrap_or(usize::MAX);
    let label = if kind == BrokerKind::Mosquitto && args.mosquitto_nodelay {
        "mosquitto (set_tcp_nodelay true)".to_owned()
    } else {
        kind.name().to_owned()
    };
    let run = BrokerRun {
        label,
        phases,
        rss_before,
        rss_after,
        peak,
        peak_reset,
        broker_rss,
        broker_peak,
        outbox_len,
        reports_queued: node.cloud.queued.load(Ordering::Relaxed),
        ingress_dropped: node.ingress.dropped(),
        connection_errors: load.connection_errors.load(Ordering::Relaxed),
    };

    // Shut down: the load client, then the node (bounded), then mosquitto.
    let _ = load.client.try_disconnect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    load.stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), load.task).await;
    node.stop.cancel();
    if tokio::time::timeout(Duration::from_secs(10), node.task)
        .await
        .is_err()
    {
        eprintln!("the node did not stop within 10 s");
    }
    if let Some(mut m) = mosquitto {
        m.stop().await;
    }
    Ok(Some(run))
}

fn print_phase_detail(p: &PhaseReport) {
    let per_second: Vec<String> = p
        .per_second_p99
        .iter()
        .map(|ns| format!("{:.2}", *ns as f64 / 1e6))
        .collect();
    println!(
        "  {}: {} sent in {:.2} s, {} answered ({} by the end of sending), {} errors, {} lost, \
         {} stray; CPU {:.2} cores (this process){}",
        p.phase,
        p.sent,
        p.seconds,
        p.answered,
        p.answered_in_time,
        p.errors,
        p.lost,
        p.stray,
        p.cpu_self,
        p.cpu_broker
            .map(|c| format!(" + {c:.2} (mosquitto)"))
            .unwrap_or_default()
    );
    if let Some(e) = &p.first_error {
        println!("    first error result: {e}");
    }
    println!(
        "    p99 per second of sending (ms): {}",
        per_second.join(" ")
    );
    if let Some(lag) = &p.lag {
        println!(
            "    sender behind schedule: p50 {}, p99 {}, max {}",
            ms(lag.quantile(0.5)),
            ms(lag.quantile(0.99)),
            ms(lag.max)
        );
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::main]
async fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&raw) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let command = if raw.is_empty() {
        "cargo run --release -p kubeedge-twin --example twin_load".to_owned()
    } else {
        format!(
            "cargo run --release -p kubeedge-twin --example twin_load -- {}",
            raw.join(" ")
        )
    };
    println!("command: {command}");
    println!(
        "{} updates/s for {} s, {} devices, saturation window {}, cloud {}, mosquitto {}, {} CPUs",
        args.rate,
        args.seconds,
        args.devices,
        args.window,
        if args.confirm {
            "confirms every report"
        } else {
            "only counts (reports stay in the outbox)"
        },
        if args.mosquitto_nodelay {
            "with set_tcp_nodelay true"
        } else {
            "with its default configuration (Nagle on)"
        },
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let (rss_start, _) = memory_kib("self");

    let mut runs = Vec::new();
    for kind in &args.brokers {
        // A broker that fails does not stop the other one.
        match tokio::time::timeout(
            Duration::from_secs(30 + 4 * args.seconds + 20),
            run_broker(*kind, &args),
        )
        .await
        {
            Ok(Ok(Some(run))) => runs.push(run),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => println!("{}: failed: {e}", kind.name()),
            Err(_) => println!("{}: did not finish in time", kind.name()),
        }
    }

    println!(
        "\n| broker | phase | sent | answered | lost | errors | updates/s | p50 | p90 | p99 | p99.9 | max | CPU (cores) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for run in &runs {
        for p in &run.phases {
            let h = &p.latency;
            let cpu = match p.cpu_broker {
                Some(b) => format!("{:.2} + {b:.2} mosquitto", p.cpu_self),
                None => format!("{:.2}", p.cpu_self),
            };
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                run.label,
                p.phase,
                thousands(p.sent),
                thousands(p.answered),
                p.lost,
                p.errors,
                thousands((p.answered_in_time as f64 / p.seconds).round() as u64),
                ms(h.quantile(0.50)),
                ms(h.quantile(0.90)),
                ms(h.quantile(0.99)),
                ms(h.quantile(0.999)),
                ms(h.max),
                cpu
            );
        }
    }

    println!(
        "\n| broker | RSS before the node | peak RSS (VmHWM) | RSS after the run | mosquitto RSS / peak | outbox after | ingress drops |"
    );
    println!("|---|---|---|---|---|---|---|");
    for run in &runs {
        let mosq = match (run.broker_rss, run.broker_peak) {
            (None, None) => "—".to_owned(),
            (rss, peak) => format!("{} / {}", kib(rss), kib(peak)),
        };
        println!(
            "| {} | {} | {}{} | {} | {} | {} reports (of {} queued) | {} |",
            run.label,
            kib(run.rss_before),
            kib(run.peak),
            if run.peak_reset {
                ""
            } else {
                " (peak not reset: since process start)"
            },
            kib(run.rss_after),
            mosq,
            thousands(run.outbox_len as u64),
            thousands(run.reports_queued),
            run.ingress_dropped
        );
        if run.connection_errors > 0 {
            println!("  load client connection errors: {}", run.connection_errors);
        }
    }
    let (rss_end, peak_end) = memory_kib("self");
    println!(
        "\nprocess RSS at start {}, at the end {}; VmHWM at the end {}",
        kib(rss_start),
        kib(rss_end),
        kib(peak_end)
    );
    println!("command: {command}");
}
