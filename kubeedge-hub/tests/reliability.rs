//! Reliable delivery under a link that keeps breaking: a TCP proxy between the edge and the
//! cloud cuts every connection at random moments (at least 100 cuts) while 10,000 messages flow
//! each way; the edge is restarted twice (its journal survives, as the SQLite outbox would) and
//! the cloud's server once (its delivery layer stays).
//! Every message must reach the other application exactly once, and versions of one object in
//! order.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kubeedge_hub::{
    CloudHub, CloudHubConfig, DeliveryConfig, DeliveryEvent, EdgeHub, ReliableCloud, ReliableEdge,
    ReliableEdgeHandle, UpstreamConfig, UpstreamEvent,
};
use kubeedge_proto::journal::{MemoryJournal, MessageJournal};
use kubeedge_proto::{Content, Message};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

mod common;
use common::{Pki, object, rv_of};

const EACH_WAY: usize = 10_000;
/// Objects updated several times, to check order per object.
const VERSIONED_OBJECTS: usize = 50;
const VERSIONS: u64 = 10;
const MIN_CUTS: usize = 100;
/// The whole test must finish well inside this; it is a deadline for a hang, not a measure.
const TEST_DEADLINE: Duration = Duration::from_secs(180);

/// A TCP proxy whose connections can all be cut at once.
struct Proxy {
    addr: SocketAddr,
    live: Arc<Mutex<Vec<AbortHandle>>>,
    cuts: Arc<AtomicUsize>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let live: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let registry = Arc::clone(&live);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let Ok(mut outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                let task = tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
                registry.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            addr,
            live,
            cuts: Arc::default(),
        }
    }

    /// Cuts every connection through the proxy (both sockets are dropped mid-stream).
    fn cut(&self) {
        let conns: Vec<AbortHandle> = self.live.lock().unwrap().drain(..).collect();
        if !conns.is_empty() {
            for conn in conns {
                conn.abort();
            }
            self.cuts.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A small deterministic PRNG for cut timing (the seed is printed for replay).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// What the edge application received, by edge lifetime (the edge is restarted twice).
#[derive(Default)]
struct EdgeSeen {
    /// Message id to the lifetimes it was delivered in.
    ids: HashMap<String, Vec<usize>>,
    latest: HashMap<String, u64>,
    out_of_order: Vec<String>,
}

/// Starts an EdgeHub + reliability layer over `journal`, with an application that records what
/// arrives and acknowledges it.
fn start_edge(
    pki: &Pki,
    proxy: SocketAddr,
    journal: Arc<MemoryJournal>,
    seen: Arc<Mutex<EdgeSeen>>,
    lifetime: usize,
) -> (ReliableEdgeHandle<MemoryJournal>, CancellationToken) {
    let mut config = pki.edge_config(proxy, "edge-1");
    config.min_backoff = Duration::from_millis(5);
    config.max_backoff = Duration::from_millis(50);
    // The proxy cuts every 5-45 ms: on this time scale a session of 5 ms is a stable one (as
    // 30 s is in production), so the backoff resets instead of growing with every cut.
    config.stable_after = Duration::from_millis(5);
    config.heartbeat = Duration::from_millis(500);
    // This test is about loss and duplicates, not pacing.
    config.rate_limit = None;
    let (hub, link, raw) = EdgeHub::new(config);
    let upstream = UpstreamConfig {
        resend_interval: Duration::from_millis(300),
        ..UpstreamConfig::default()
    };
    let (layer, handle, mut events) = ReliableEdge::new(link, raw, journal, upstream);
    let stop = CancellationToken::new();
    tokio::spawn(hub.run(stop.clone()));
    tokio::spawn(layer.run(stop.clone()));
    let app = handle.clone();
    let app_stop = stop.clone();
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                () = app_stop.cancelled() => return,
                event = events.recv() => match event { Some(e) => e, None => return },
            };
            if let UpstreamEvent::Message(msg) = event {
                if msg.is_keepalive() || msg.is_ack() {
                    continue;
                }
                {
                    let mut seen = seen.lock().unwrap();
                    let lifetimes = seen.ids.entry(msg.header.id.clone()).or_default();
                    lifetimes.push(lifetime);
                    // Applied before (a durable store would know it): acknowledge again only.
                    if lifetimes.len() == 1 {
                        let (uid, rv) = rv_of(&msg);
                        let last = seen.latest.entry(uid.clone()).or_default();
                        let previous = *last;
                        *last = rv.max(previous);
                        if rv <= previous {
                            seen.out_of_order
                                .push(format!("{uid}: {rv} after {previous}"));
                        }
                    }
                }
                // "Persisted": acknowledge.
                if app.send(msg.ack()).await.is_err() {
                    return;
                }
            }
        }
    });
    (handle, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_arrives_once_through_100_cuts_and_restarts() {
    tokio::time::timeout(TEST_DEADLINE, run())
        .await
        .expect("reliability test deadline");
}

async fn run() {
    let pki = Pki::new();
    let mut hub_config = CloudHubConfig::new("127.0.0.1:0".parse().unwrap(), pki.server_tls());
    hub_config.keepalive_timeout = Duration::from_secs(5);
    let (hub, hub_handle, raw) = CloudHub::bind(hub_config.clone()).await.unwrap();
    let cloud_addr = hub.local_addr().unwrap();
    hub_config.listen = cloud_addr;
    let stop = CancellationToken::new();
    let mut hub_stop = stop.child_token();
    let mut hub_task = tokio::spawn(hub.run(hub_stop.clone()));
    let hub_handle_for_restart = hub_handle.clone();
    let delivery = DeliveryConfig {
        retry_interval: Duration::from_millis(200),
        ..DeliveryConfig::default()
    };
    let (reliable, cloud, mut cloud_events) = ReliableCloud::new(hub_handle, raw, delivery);
    tokio::spawn(reliable.run(stop.clone()));

    // The cloud application: records what the edge sent and acknowledges it.
    let cloud_seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let delivered = Arc::new(AtomicUsize::new(0));
    {
        let (cloud, seen, delivered) = (
            cloud.clone(),
            Arc::clone(&cloud_seen),
            Arc::clone(&delivered),
        );
        tokio::spawn(async move {
            while let Some(event) = cloud_events.recv().await {
                match event {
                    DeliveryEvent::Message { node, message } if !message.is_keepalive() => {
                        *seen
                            .lock()
                            .unwrap()
                            .entry(message.header.id.clone())
                            .or_default() += 1;
                        if cloud.send(&node, message.ack()).await.is_err() {
                            return;
                        }
                    }
                    DeliveryEvent::Delivered { .. } => {
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        });
    }

    let proxy = Arc::new(Proxy::start(cloud_addr).await);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("reliability test: cut seed {seed}");
    let cutting = CancellationToken::new();
    {
        let (proxy, cutting) = (Arc::clone(&proxy), cutting.clone());
        tokio::spawn(async move {
            let mut rng = XorShift(seed);
            while !cutting.is_cancelled() {
                tokio::time::sleep(Duration::from_millis(5 + rng.next() % 40)).await;
                proxy.cut();
            }
        });
    }

    let journal = Arc::new(MemoryJournal::new(EACH_WAY * 2));
    let edge_seen: Arc<Mutex<EdgeSeen>> = Arc::default();
    let sent_count = Arc::new(AtomicUsize::new(0));
    {
        let (edge_seen, cloud_seen, journal, cloud, proxy, sent_count) = (
            Arc::clone(&edge_seen),
            Arc::clone(&cloud_seen),
            Arc::clone(&journal),
            cloud.clone(),
            Arc::clone(&proxy),
            Arc::clone(&sent_count),
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let edge_n = edge_seen.lock().unwrap().ids.len();
                let cloud_n = cloud_seen.lock().unwrap().len();
                eprintln!(
                    "progress: sent up {} / cloud saw {cloud_n} / edge saw {edge_n} / journal {} / cloud pending {} / cuts {}",
                    sent_count.load(Ordering::Relaxed),
                    journal.pending(0, usize::MAX).await.unwrap().len(),
                    cloud.pending("edge-1"),
                    proxy.cuts.load(Ordering::Relaxed)
                );
            }
        });
    }
    let (mut edge, mut edge_stop) = start_edge(
        &pki,
        proxy.addr,
        Arc::clone(&journal),
        Arc::clone(&edge_seen),
        0,
    );

    // Cloud to edge: 10,000 distinct objects, then versions of a few objects in order.
    let down = {
        let cloud = cloud.clone();
        tokio::spawn(async move {
            for i in 0..EACH_WAY {
                cloud
                    .send("edge-1", object(&format!("obj-{i}"), 1))
                    .await
                    .unwrap();
            }
            for v in 1..=VERSIONS {
                for o in 0..VERSIONED_OBJECTS {
                    cloud
                        .send("edge-1", object(&format!("versioned-{o}"), v))
                        .await
                        .unwrap();
                }
            }
        })
    };

    // Edge to cloud: 10,000 journaled messages; the edge is restarted twice on the way.
    let mut sent_up = Vec::with_capacity(EACH_WAY);
    for i in 0..EACH_WAY {
        if i == EACH_WAY / 2 {
            // Restart the cloud's server on the same address.
            hub_stop.cancel();
            hub_task.await.unwrap().unwrap();
            let hub = CloudHub::rebind(hub_config.clone(), &hub_handle_for_restart)
                .await
                .unwrap();
            hub_stop = stop.child_token();
            hub_task = tokio::spawn(hub.run(hub_stop.clone()));
        }
        if i == EACH_WAY / 3 || i == 2 * EACH_WAY / 3 {
            edge_stop.cancel();
            let lifetime = if i == EACH_WAY / 3 { 1 } else { 2 };
            (edge, edge_stop) = start_edge(
                &pki,
                proxy.addr,
                Arc::clone(&journal),
                Arc::clone(&edge_seen),
                lifetime,
            );
        }
        let msg = Message::new(
            "edged",
            "meta",
            "insert",
            format!("default/event/e{i}"),
            Content::try_from(r#"{"reason":"Started"}"#).unwrap(),
        );
        sent_up.push(msg.header.id.clone());
        edge.send_durable(msg, None).await.unwrap();
        sent_count.fetch_add(1, Ordering::Relaxed);
    }
    down.await.unwrap();

    // Wait until everything arrived and was confirmed, and the link was cut often enough.
    loop {
        let cloud_done = cloud_seen.lock().unwrap().len() >= EACH_WAY;
        let edge_done = {
            let seen = edge_seen.lock().unwrap();
            seen.ids.len() >= EACH_WAY
                && (0..VERSIONED_OBJECTS)
                    .all(|o| seen.latest.get(&format!("versioned-{o}")) == Some(&VERSIONS))
        };
        let journal_empty = journal.pending(0, 1).await.unwrap().is_empty();
        let cloud_empty = cloud.pending("edge-1") == 0;
        if cloud_done
            && edge_done
            && journal_empty
            && cloud_empty
            && proxy.cuts.load(Ordering::Relaxed) >= MIN_CUTS
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cutting.cancel();
    let cuts = proxy.cuts.load(Ordering::Relaxed);

    let cloud_seen = cloud_seen.lock().unwrap();
    for id in &sent_up {
        assert_eq!(
            cloud_seen.get(id),
            Some(&1),
            "edge message {id} reached the cloud app {:?} times",
            cloud_seen.get(id)
        );
    }
    assert_eq!(
        cloud_seen.len(),
        EACH_WAY,
        "the cloud app saw messages nobody sent"
    );
    let edge_seen = edge_seen.lock().unwrap();
    // Within one edge lifetime the hub delivers each message once. Across a restart, only the
    // messages in flight when the edge went down (at most the window, per restart) come again,
    // because the old process may have applied them without its ACK getting through.
    let mut across_restarts = 0;
    for (id, lifetimes) in edge_seen.ids.iter() {
        let mut sorted = lifetimes.clone();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            lifetimes.len(),
            "{id} delivered twice in one edge lifetime: {lifetimes:?}"
        );
        across_restarts += lifetimes.len() - 1;
    }
    assert!(
        across_restarts <= 2 * DeliveryConfig::default().window,
        "{across_restarts} re-deliveries after restarts"
    );
    for i in 0..EACH_WAY {
        assert_eq!(
            edge_seen.latest.get(&format!("obj-{i}")),
            Some(&1),
            "obj-{i} never arrived"
        );
    }
    assert!(
        edge_seen.out_of_order.is_empty(),
        "out of order: {:?}",
        &edge_seen.out_of_order[..edge_seen.out_of_order.len().min(5)]
    );
    eprintln!(
        "reliability test: {cuts} cuts, {} cloud->edge delivered (ACKed), {} edge->cloud",
        delivered.load(Ordering::Relaxed),
        cloud_seen.len()
    );
    edge_stop.cancel();
    stop.cancel();
}
