//! Helpers for the mapper runtime's integration tests: an MQTT client that records what the
//! mapper publishes, and the runtime running in a task; every wait is bounded. (The mosquitto
//! broker and the waits are kubeedge-testkit's.)
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tempfile::TempDir;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use kubeedge_mapper::DeviceDriver;
use kubeedge_mapper::runtime::{
    MapperConfig, MapperRuntime, MqttTarget, ReportTarget, RuntimeHandle,
};
use kubeedge_testkit::{free_port, within};

/// One publication the probe saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub topic: String,
    pub json: serde_json::Value,
}

/// An MQTT client (rumqttc) subscribed to every device topic, recording what arrives.
pub struct MqttProbe {
    seen: Arc<Mutex<Vec<Seen>>>,
    arrived: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Drop for MqttProbe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MqttProbe {
    /// Connects to the broker on `port`, subscribes to `$hw/events/device/#` and returns once
    /// the broker acknowledged the subscription.
    pub async fn start(port: u16) -> Self {
        let id = format!("probe-{}-{}", std::process::id(), free_port());
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        client
            .subscribe("$hw/events/device/#", QoS::AtLeastOnce)
            .await
            .expect("subscribe queued");
        within("probe subscribed", async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => break,
                    Ok(_) => {}
                    Err(e) => panic!("probe cannot connect: {e}"),
                }
            }
        })
        .await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let (s, a) = (Arc::clone(&seen), Arc::clone(&arrived));
        let task = tokio::spawn(async move {
            let _client = client;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let json = serde_json::from_slice(&p.payload).unwrap_or_else(|_| {
                            serde_json::Value::String(String::from_utf8_lossy(&p.payload).into())
                        });
                        s.lock().unwrap().push(Seen {
                            topic: p.topic,
                            json,
                        });
                        a.notify_waiters();
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Self {
            seen,
            arrived,
            task,
        }
    }

    /// Everything seen so far.
    pub fn all(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many publications so far satisfy `pred`.
    pub fn count(&self, pred: impl Fn(&Seen) -> bool) -> usize {
        self.seen.lock().unwrap().iter().filter(|s| pred(s)).count()
    }

    /// Waits for the first publication after the first `skip` ones that satisfies `pred`;
    /// returns it and its index.
    pub async fn wait_from(
        &self,
        skip: usize,
        what: &str,
        pred: impl Fn(&Seen) -> bool,
    ) -> (usize, Seen) {
        within(what, async {
            loop {
                let notified = self.arrived.notified();
                if let Some((i, s)) = self
                    .seen
                    .lock()
                    .unwrap()
                    .iter()
                    .enumerate()
                    .skip(skip)
                    .find(|(_, s)| pred(s))
                {
                    return (i, s.clone());
                }
                // Bounded, in case a notification raced with the check.
                let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
            }
        })
        .await
    }

    /// Waits for a publication that satisfies `pred` (any since the probe started).
    pub async fn wait(&self, what: &str, pred: impl Fn(&Seen) -> bool) -> Seen {
        self.wait_from(0, what, pred).await.1
    }

    /// The number of publications so far.
    pub fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// `$hw/events/device/default/<name>/<suffix>`.
pub fn topic(device: &str, suffix: &str) -> String {
    format!("$hw/events/device/default/{device}/{suffix}")
}

/// A twin/update of `device` that reports `property` (any value).
pub fn reports(s: &Seen, device: &str, property: &str) -> bool {
    s.topic == topic(device, "twin/update")
        && s.json["twin"][property]["actual"]["value"].is_string()
}

/// The actual value a twin/update reports for `property`.
pub fn actual(s: &Seen, property: &str) -> Option<String> {
    s.json["twin"][property]["actual"]["value"]
        .as_str()
        .map(str::to_owned)
}

/// A state/update of `device` with `state`.
pub fn state_is(s: &Seen, device: &str, state: &str) -> bool {
    s.topic == topic(device, "state/update") && s.json["state"] == state
}

/// A test mapper configuration: MQTT to `broker`, short timeouts and pauses.
pub fn mqtt_config(name: &str, protocol: &str, broker: &str) -> MapperConfig {
    let mut config = MapperConfig::new(name, protocol);
    let mut target = MqttTarget::new(broker);
    target.reconnect_interval = Duration::from_millis(200);
    config.report = ReportTarget::Mqtt(target);
    config.operation_timeout = Duration::from_secs(2);
    config.backoff_initial = Duration::from_millis(100);
    config.backoff_max = Duration::from_millis(500);
    config.health_interval = Duration::from_secs(1);
    config
}

/// A runtime running in a task; stopped (and awaited, bounded) when dropped or stopped.
pub struct Running {
    pub handle: RuntimeHandle,
    stop: CancellationToken,
    task: Option<JoinHandle<kubeedge_mapper::Result<()>>>,
}

impl Running {
    /// Starts `runtime`.
    pub fn start<D: DeviceDriver>(runtime: MapperRuntime<D>) -> Self {
        let handle = runtime.handle();
        let stop = CancellationToken::new();
        let task = tokio::spawn(runtime.run(stop.clone()));
        Self {
            handle,
            stop,
            task: Some(task),
        }
    }

    /// Cancels it and waits until `run` returned.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            within("the runtime stops", task)
                .await
                .expect("runtime task")
                .expect("runtime ends cleanly");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A directory with YAML files.
pub fn yaml_dir(files: &[(&str, &str)]) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("writing YAML");
    }
    let path = dir.path().to_owned();
    (dir, path)
}
