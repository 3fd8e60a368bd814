//! The task that runs one device: polls its properties, reports their values and its state,
//! applies desired values.
//!
//! No read error stops polling. A device that does not answer (a connection refused, reset
//! or timed out) is `offline` and probed after a pause that grows from the backoff's start
//! to its cap; a property whose reads fail while the device answers (a Modbus exception, a
//! value that cannot be decoded or reported) is read again after a pause that grows from its
//! collect cycle to the property backoff's cap, and the device is `unhealthy` while any
//! property fails. Every pause has jitter, every success resets it.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kubeedge_proto::device::DeviceState;
use kubeedge_proto::{DeviceId, now_millis};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::instance::{AccessMode, DeviceInstance, DeviceProperty};
use super::report::{Reporter, TwinReport};
use super::{DeviceStatus, PropertyStatus, RuntimeStats};
use crate::driver::{DeviceDriver, Value};
use crate::error::{Error, Result};

/// How long the task sleeps when nothing is due (it wakes earlier for desired values).
const IDLE: Duration = Duration::from_secs(60);
/// The pause before a state report that failed is tried again.
const STATE_RETRY: Duration = Duration::from_secs(1);

/// The time limits and pauses of device tasks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) operation_timeout: Duration,
    pub(crate) report_timeout: Duration,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) property_backoff_max: Duration,
    pub(crate) health_interval: Duration,
}

/// The share of a pause that jitter may take off (a quarter), so that devices and properties
/// that failed together are not retried together.
const JITTER: f64 = 0.25;

/// `pause` less a random share of up to [`JITTER`], but not below `floor`.
fn jittered(pause: Duration, floor: Duration) -> Duration {
    // RandomState is seeded randomly and advanced by every `new`: a cheap random number.
    let random = std::collections::hash_map::RandomState::new().hash_one(0u8);
    let share = (random % 1024) as f64 / 1024.0 * JITTER;
    pause.mul_f64(1.0 - share).max(floor)
}

/// `first` doubled `failures - 1` times, at most `cap`.
fn doubled(first: Duration, failures: u32, cap: Duration) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u32::MAX);
    first.saturating_mul(factor).min(cap)
}

/// Counters shared by every device task of a runtime.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) polls: AtomicU64,
    pub(crate) poll_errors: AtomicU64,
    pub(crate) reports: AtomicU64,
    pub(crate) report_errors: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) write_errors: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self, devices: usize) -> RuntimeStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RuntimeStats {
            devices,
            polls: get(&self.polls),
            poll_errors: get(&self.poll_errors),
            reports: get(&self.reports),
            report_errors: get(&self.report_errors),
            writes: get(&self.writes),
            write_errors: get(&self.write_errors),
        }
    }
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// What a device task shares with the rest of the runtime: its status, and the desired values
/// waiting to be written.
#[derive(Debug)]
pub(crate) struct DeviceShared {
    pub(crate) id: DeviceId,
    properties: HashSet<String>,
    status: Mutex<DeviceStatus>,
    /// Property -> desired value; at most one per property (newer values replace older).
    desired: Mutex<BTreeMap<String, String>>,
    notify: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl DeviceShared {
    pub(crate) fn new(instance: &DeviceInstance) -> Self {
        Self {
            id: instance.id.clone(),
            properties: instance
                .properties
                .iter()
                .map(|p| p.spec.name.clone())
                .collect(),
            status: Mutex::new(DeviceStatus::default()),
            desired: Mutex::new(BTreeMap::new()),
            notify: Notify::new(),
        }
    }

    /// Queues desired values for the task (properties the device does not have are dropped)
    /// and wakes it; returns how many were queued.
    pub(crate) fn set_desired(&self, values: impl IntoIterator<Item = (String, String)>) -> usize {
        let mut queued = 0;
        {
            let mut desired = lock(&self.desired);
            for (name, value) in values {
                if self.properties.contains(&name) {
                    desired.insert(name, value);
                    queued += 1;
                } else {
                    tracing::debug!(device = %self.id, property = %name,
                        "desired value for a property the device does not have; ignored");
                }
            }
        }
        if queued > 0 {
            self.notify.notify_one();
        }
        queued
    }

    /// The desired values not applied yet.
    pub(crate) fn pending_desired(&self) -> BTreeMap<String, String> {
        lock(&self.desired).clone()
    }

    pub(crate) fn status(&self) -> DeviceStatus {
        lock(&self.status).clone()
    }

    fn update(&self, f: impl FnOnce(&mut DeviceStatus)) {
        f(&mut lock(&self.status));
    }
}

/// The driver's latest reading of a property.
#[derive(Debug, Clone)]
struct Reading {
    value: String,
    timestamp: i64,
}

struct Prop<V> {
    def: DeviceProperty,
    visitor: V,
    next_collect: Instant,
    report_at: Instant,
    latest: Option<Reading>,
    /// Read since the last report.
    fresh: bool,
    /// Reads that failed in a row while the device answered (0: the last read was good).
    failures: u32,
    /// The desired value last written (or refused), so that each is applied once.
    applied_desired: Option<String>,
}

#[derive(Debug, Clone, Copy)]
enum Link {
    Unknown,
    Online { since: Instant },
    Offline { retry_at: Instant },
}

/// One device's task.
pub(crate) struct DeviceTask<D: DeviceDriver> {
    shared: Arc<DeviceShared>,
    driver: D,
    props: Vec<Prop<D::Visitor>>,
    reporter: Reporter,
    timing: Timing,
    counters: Arc<Counters>,
    link: Link,
    /// The pause before the last probe of an unreachable device; kept while the device
    /// comes and goes faster than the backoff's cap, so that a device that drops every
    /// connection soon after it was made is probed less and less often.
    link_backoff: Option<Duration>,
    reported_state: Option<DeviceState>,
    state_retry_at: Instant,
    next_health: Instant,
    report_failing: bool,
}

impl<D: DeviceDriver> DeviceTask<D> {
    /// A task for `instance`, whose properties' visitors the driver has parsed (in order).
    pub(crate) fn new(
        instance: &DeviceInstance,
        driver: D,
        visitors: Vec<D::Visitor>,
        shared: Arc<DeviceShared>,
        reporter: Reporter,
        timing: Timing,
        counters: Arc<Counters>,
    ) -> Self {
        let now = Instant::now();
        let props: Vec<Prop<D::Visitor>> = instance
            .properties
            .iter()
            .zip(visitors)
            .map(|(def, visitor)| Prop {
                def: def.clone(),
                visitor,
                next_collect: now,
                report_at: now,
                latest: None,
                fresh: false,
                failures: 0,
                applied_desired: None,
            })
            .collect();
        shared.update(|s| {
            s.properties = props
                .iter()
                .map(|p| (p.def.spec.name.clone(), PropertyStatus::default()))
                .collect();
        });
        // The Device's desired values are written when the device starts (KubeEdge's mapper
        // framework does the same for ReadWrite properties); desired values that arrived
        // while an earlier version of the device ran are already queued and win.
        let initial: Vec<(String, String)> = instance
            .properties
            .iter()
            .filter(|p| p.access_mode == AccessMode::ReadWrite)
            .filter_map(|p| Some((p.spec.name.clone(), p.desired.clone()?)))
            .filter(|(name, _)| !shared.pending_desired().contains_key(name))
            .collect();
        shared.set_desired(initial);
        Self {
            shared,
            driver,
            props,
            reporter,
            timing,
            counters,
            link: Link::Unknown,
            link_backoff: None,
            reported_state: None,
            state_retry_at: now,
            next_health: now + timing.health_interval,
            report_failing: false,
        }
    }

    /// Runs until `cancel`; whatever the driver is doing then is dropped.
    pub(crate) async fn run(self, cancel: tokio_util::sync::CancellationToken) {
        tokio::select! {
            () = cancel.cancelled() => {}
            () = self.run_loop() => {}
        }
    }

    async fn run_loop(mut self) {
        tracing::info!(device = %self.shared.id, properties = self.props.len(), "device started");
        match self.op("connect", self.driver.connect()).await {
            Ok(()) => self.set_online(),
            Err(e) => self.fail(&e, None),
        }
        loop {
            if !matches!(self.link, Link::Offline { .. }) {
                self.apply_desired().await;
            }
            let now = Instant::now();
            match self.link {
                Link::Offline { retry_at, .. } => {
                    if now >= retry_at {
                        self.probe().await;
                    }
                }
                Link::Online { .. } | Link::Unknown => {
                    self.poll_due(now).await;
                    if matches!(self.link, Link::Online { .. }) && now >= self.next_health {
                        self.check_health().await;
                    }
                }
            }
            // The state first: `online` goes out before the values of a device that came
            // back, `offline` before anything else.
            self.sync_state().await;
            self.report_due().await;
            let wake = self.next_wake();
            tokio::select! {
                biased;
                () = self.shared.notify.notified() => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// `fut`, failing with [`Error::Timeout`] after the operation timeout.
    async fn op<T>(&self, what: &str, fut: impl Future<Output = Result<T>>) -> Result<T> {
        let timeout = self.timing.operation_timeout;
        match tokio::time::timeout(timeout, fut).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                operation: format!("{what} on device {}", self.shared.id),
                timeout,
            }),
        }
    }

    fn set_online(&mut self) {
        if matches!(self.link, Link::Online { .. }) {
            return;
        }
        let now = Instant::now();
        if matches!(self.link, Link::Offline { .. }) {
            tracing::info!(device = %self.shared.id, "device reachable again");
            for p in &mut self.props {
                p.next_collect = p.next_collect.min(now);
            }
        }
        self.link = Link::Online { since: now };
        self.next_health = now + self.timing.health_interval;
    }

    /// The device did not answer: offline, probed again after a growing pause.
    fn fail(&mut self, e: &Error, prop: Option<usize>) {
        let now = Instant::now();
        let (initial, cap) = (self.timing.backoff_initial, self.timing.backoff_max);
        let backoff = match (self.link, self.link_backoff) {
            (Link::Offline { .. }, Some(last)) => (last * 2).min(cap),
            (Link::Online { since }, Some(last)) if now.duration_since(since) < cap => {
                // Back so briefly that this is one outage: keep backing off.
                tracing::debug!(device = %self.shared.id, error = %e, "device dropped again");
                (last * 2).min(cap)
            }
            _ => {
                tracing::warn!(device = %self.shared.id, error = %e,
                    "device unreachable; reported offline, probed with backoff");
                initial
            }
        };
        self.link_backoff = Some(backoff);
        let pause = jittered(backoff, initial.min(backoff));
        tracing::debug!(device = %self.shared.id, error = %e, retry_in = ?pause, "device still unreachable");
        self.link = Link::Offline {
            retry_at: now + pause,
        };
        // Values read before the device went away are not reported after it is offline.
        for p in &mut self.props {
            p.fresh = false;
        }
        let name = prop.map(|i| self.props[i].def.spec.name.clone());
        let text = e.to_string();
        self.shared.update(|s| {
            s.last_error = Some(text.clone());
            if let Some(p) = name.and_then(|n| s.properties.get_mut(&n)) {
                p.error = Some(text);
            }
        });
    }

    /// Reads every property whose collect cycle (or retry after failures) has come.
    async fn poll_due(&mut self, now: Instant) {
        for i in 0..self.props.len() {
            if self.props[i].next_collect > now {
                continue;
            }
            let result = self
                .op("read", self.driver.read(&self.props[i].visitor))
                .await;
            if !self.handle_read(i, result) {
                return;
            }
        }
    }

    /// Takes a read's result and schedules the property's next read; false when the device
    /// turned out unreachable.
    fn handle_read(&mut self, i: usize, result: Result<Value>) -> bool {
        let result = result.and_then(|v| {
            v.check_type(self.props[i].def.spec.property_type)?;
            Ok(v)
        });
        match result {
            Ok(value) => {
                bump(&self.counters.polls, 1);
                self.set_online();
                self.accept(i, &value);
                true
            }
            Err(e) if e.is_unreachable() => {
                bump(&self.counters.poll_errors, 1);
                self.fail(&e, Some(i));
                false
            }
            Err(e) => {
                bump(&self.counters.poll_errors, 1);
                // The device answered; what it said is unusable.
                self.set_online();
                self.prop_failed(i, &e);
                true
            }
        }
    }

    /// A read of property `i` failed while the device answered: it is read again after a
    /// pause that doubles from its collect cycle up to the property backoff's cap (at once
    /// the cap for a configuration error). Logged when the failure starts.
    fn prop_failed(&mut self, i: usize, e: &Error) {
        let cap = self.timing.property_backoff_max;
        let p = &mut self.props[i];
        p.failures = p.failures.saturating_add(1);
        let cycle = p.def.collect_cycle;
        let cap = cap.max(cycle);
        let backoff = if e.is_config() {
            cap
        } else {
            doubled(cycle, p.failures, cap)
        };
        let pause = jittered(backoff, cycle);
        p.next_collect = Instant::now() + pause;
        let name = p.def.spec.name.clone();
        if p.failures == 1 {
            tracing::warn!(device = %self.shared.id, property = %name, error = %e,
                "property read failing; retried with backoff");
        } else {
            tracing::debug!(device = %self.shared.id, property = %name, error = %e,
                failures = p.failures, retry_in = ?pause, "property read still failing");
        }
        let (failures, text) = (p.failures, e.to_string());
        self.shared.update(|s| {
            if let Some(ps) = s.properties.get_mut(&name) {
                ps.error = Some(text);
                ps.failures = failures;
            }
        });
    }

    /// Keeps a value read from the device for the next report, and schedules the next read.
    fn accept(&mut self, i: usize, value: &Value) {
        let text = value.to_twin_string();
        if !text.is_empty()
            && let Err(e) = kubeedge_proto::twin::validate_twin_value(&text)
        {
            let e = Error::mismatch(
                self.props[i].def.spec.property_type,
                text,
                format!("the twin cannot hold it: {e}"),
            );
            self.prop_failed(i, &e);
            return;
        }
        let timestamp = now_millis();
        let now = Instant::now();
        let p = &mut self.props[i];
        let cycle = p.def.collect_cycle;
        p.next_collect += cycle;
        if p.next_collect <= now {
            // Fell behind (a slow device, or reads that failed): skip the missed cycles
            // instead of bursting.
            p.next_collect = now + cycle;
        }
        if p.failures > 0 {
            tracing::info!(device = %self.shared.id, property = %p.def.spec.name,
                failures = p.failures, "property read again");
            p.failures = 0;
        }
        p.fresh = true;
        p.latest = Some(Reading {
            value: text.clone(),
            timestamp,
        });
        let name = p.def.spec.name.clone();
        self.shared.update(|s| {
            if let Some(ps) = s.properties.get_mut(&name) {
                ps.value = Some(text);
                ps.timestamp = timestamp;
                ps.error = None;
                ps.failures = 0;
            }
        });
    }

    /// While offline: connect and read one property; an answer brings the device back.
    async fn probe(&mut self) {
        if let Err(e) = self.op("connect", self.driver.connect()).await {
            self.fail(&e, None);
            return;
        }
        if self.props.is_empty() {
            match self.op("health check", self.driver.health()).await {
                Ok(()) => self.set_online(),
                Err(e) => self.fail(&e, None),
            }
            return;
        }
        // The property due first (the others are read as they come due once it answers).
        let i = (0..self.props.len())
            .min_by_key(|&i| self.props[i].next_collect)
            .unwrap_or(0);
        let result = self
            .op("read", self.driver.read(&self.props[i].visitor))
            .await;
        self.handle_read(i, result);
    }

    async fn check_health(&mut self) {
        self.next_health = Instant::now() + self.timing.health_interval;
        if let Err(e) = self.op("health check", self.driver.health()).await {
            if e.is_unreachable() {
                self.fail(&e, None);
            } else {
                tracing::debug!(device = %self.shared.id, error = %e, "health check");
            }
        }
    }

    /// Writes the desired values waiting for this device; each value once.
    async fn apply_desired(&mut self) {
        let pending = std::mem::take(&mut *lock(&self.shared.desired));
        if pending.is_empty() {
            return;
        }
        let mut keep = BTreeMap::new();
        for (name, value) in pending {
            let Some(i) = self.props.iter().position(|p| p.def.spec.name == name) else {
                continue;
            };
            if self.props[i].applied_desired.as_deref() == Some(value.as_str()) {
                continue;
            }
            if matches!(self.link, Link::Offline { .. }) {
                keep.insert(name, value);
                continue;
            }
            let p = &self.props[i];
            let parsed = if p.def.access_mode == AccessMode::ReadOnly {
                Err(Error::Unsupported(format!(
                    "property {name} is ReadOnly; desired value {value:?} not written"
                )))
            } else {
                Value::parse(p.def.spec.property_type, &value)
            };
            let result = match parsed {
                Ok(v) => self.op("write", self.driver.write(&p.visitor, &v)).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    bump(&self.counters.writes, 1);
                    tracing::info!(device = %self.shared.id, property = %name, value = %value,
                        "desired value written");
                    let now = Instant::now();
                    let p = &mut self.props[i];
                    p.applied_desired = Some(value.clone());
                    // Read it back and report it now.
                    p.next_collect = now;
                    p.report_at = now;
                    self.shared.update(|s| {
                        if let Some(ps) = s.properties.get_mut(&name) {
                            ps.desired = Some(value);
                            ps.write_error = None;
                        }
                    });
                }
                Err(e) if e.is_unreachable() => {
                    bump(&self.counters.write_errors, 1);
                    keep.insert(name, value);
                    self.fail(&e, Some(i));
                }
                Err(e) if e.is_retryable() => {
                    // The device answered "not now" (busy, a garbled answer): kept, and tried
                    // again when the task next wakes for a read.
                    bump(&self.counters.write_errors, 1);
                    let text = e.to_string();
                    let mut first = false;
                    self.shared.update(|s| {
                        if let Some(ps) = s.properties.get_mut(&name) {
                            first = ps.write_error.as_deref() != Some(text.as_str());
                            ps.write_error = Some(text);
                        }
                    });
                    if first {
                        tracing::warn!(device = %self.shared.id, property = %name, value = %value,
                            error = %e, "desired value not written yet; retried");
                    }
                    keep.insert(name, value);
                }
                Err(e) => {
                    bump(&self.counters.write_errors, 1);
                    tracing::warn!(device = %self.shared.id, property = %name, value = %value,
                        error = %e, "desired value not written");
                    self.props[i].applied_desired = Some(value);
                    let text = e.to_string();
                    self.shared.update(|s| {
                        if let Some(ps) = s.properties.get_mut(&name) {
                            ps.write_error = Some(text);
                        }
                    });
                }
            }
        }
        if !keep.is_empty() {
            let mut desired = lock(&self.shared.desired);
            for (name, value) in keep {
                // A newer desired value that arrived meanwhile wins.
                desired.entry(name).or_insert(value);
            }
        }
    }

    /// Reports the values read since the last report of every property whose report cycle
    /// has come, in one message.
    async fn report_due(&mut self) {
        let now = Instant::now();
        let due: Vec<usize> = (0..self.props.len())
            .filter(|&i| {
                let p = &self.props[i];
                p.def.report_to_cloud && p.fresh && p.report_at <= now
            })
            .collect();
        if due.is_empty() {
            return;
        }
        let twins: Vec<TwinReport> = due
            .iter()
            .filter_map(|&i| {
                let p = &self.props[i];
                let reading = p.latest.as_ref()?;
                Some(TwinReport {
                    name: p.def.spec.name.clone(),
                    value: reading.value.clone(),
                    property_type: p.def.spec.property_type,
                    desired: p.applied_desired.clone(),
                    timestamp: reading.timestamp,
                })
            })
            .collect();
        let result = self
            .reporter
            .twins(&self.shared.id, &twins, self.timing.report_timeout)
            .await;
        for &i in &due {
            let p = &mut self.props[i];
            p.report_at = now + p.def.report_cycle;
            if result.is_ok() {
                p.fresh = false;
            }
        }
        match result {
            Ok(()) => {
                bump(&self.counters.reports, twins.len() as u64);
                if self.report_failing {
                    tracing::info!(device = %self.shared.id, "reports reach the edge again");
                    self.report_failing = false;
                }
                self.shared.update(|s| s.reports += 1);
            }
            Err(e) => {
                bump(&self.counters.report_errors, 1);
                if !self.report_failing {
                    tracing::warn!(device = %self.shared.id, error = %e, "report not delivered");
                    self.report_failing = true;
                }
            }
        }
    }

    /// The state to report: `offline` while the device does not answer, `unhealthy` while
    /// it answers but a property's reads fail, `online` otherwise; none before the first
    /// connect or read.
    fn state(&self) -> Option<DeviceState> {
        match self.link {
            Link::Unknown => None,
            Link::Offline { .. } => Some(DeviceState::Offline),
            Link::Online { .. } if self.props.iter().any(|p| p.failures > 0) => {
                Some(DeviceState::Unhealthy)
            }
            Link::Online { .. } => Some(DeviceState::Online),
        }
    }

    /// Reports the state when it changed since the last state report.
    async fn sync_state(&mut self) {
        let Some(current) = self.state() else {
            return;
        };
        self.shared.update(|s| s.state = current);
        let now = Instant::now();
        if self.reported_state == Some(current) || now < self.state_retry_at {
            return;
        }
        match self
            .reporter
            .state(&self.shared.id, current, self.timing.report_timeout)
            .await
        {
            Ok(()) => {
                tracing::debug!(device = %self.shared.id, state = %current, "state reported");
                self.reported_state = Some(current);
            }
            Err(e) => {
                tracing::debug!(device = %self.shared.id, error = %e, "state report not delivered");
                self.state_retry_at = now + STATE_RETRY;
            }
        }
    }

    /// When something is next due.
    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let mut wake = now + IDLE;
        match self.link {
            Link::Offline { retry_at } => wake = wake.min(retry_at),
            Link::Online { .. } | Link::Unknown => {
                for p in &self.props {
                    wake = wake.min(p.next_collect);
                }
                if matches!(self.link, Link::Online { .. }) {
                    wake = wake.min(self.next_health);
                }
            }
        }
        for p in &self.props {
            if p.def.report_to_cloud && p.fresh {
                wake = wake.min(p.report_at);
            }
        }
        let state = self.state();
        if state.is_some() && self.reported_state != state {
            wake = wake.min(self.state_retry_at);
        }
        wake
    }
}
