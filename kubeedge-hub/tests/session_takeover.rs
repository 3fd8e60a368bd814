//! Session takeovers on loopback with real TLS WebSockets: a loop replaying one node's
//! certificate, two EdgeHubs sharing one identity, and the end of a refusal.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kubeedge_hub::{
    CloudEvent, CloudHub, CloudHubConfig, CloudHubHandle, EdgeEvent, EdgeHub, EdgeHubHandle,
    LinkEnd, TakeoverLimit,
};
use kubeedge_proto::{Content, Message};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_util::sync::CancellationToken;

mod common;
use common::{DEADLINE, Pki};

/// What the cloud saw, per node.
#[derive(Debug, Default)]
struct Seen {
    connected: HashMap<String, u64>,
    replaced: HashMap<String, u64>,
    other_ends: HashMap<String, u64>,
}

impl Seen {
    fn get(map: &HashMap<String, u64>, node: &str) -> u64 {
        map.get(node).copied().unwrap_or(0)
    }
}

struct Cloud {
    addr: SocketAddr,
    handle: CloudHubHandle,
    seen: Arc<Mutex<Seen>>,
    /// Messages (not keepalives) from nodes.
    messages: mpsc::Receiver<(String, Message)>,
    stop: CancellationToken,
}

/// A CloudHub on loopback whose events are counted (and its messages forwarded) by a task.
async fn cloud(pki: &Pki, tune: impl FnOnce(&mut CloudHubConfig)) -> Cloud {
    let mut config = CloudHubConfig::new("127.0.0.1:0".parse().unwrap(), pki.server_tls());
    tune(&mut config);
    let (hub, handle, mut events) = CloudHub::bind(config).await.unwrap();
    let addr = hub.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(hub.run(stop.clone()));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (to_test, messages) = mpsc::channel(64);
    let counts = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let mut seen = counts.lock().unwrap();
            match event {
                CloudEvent::Connected { node, .. } => *seen.connected.entry(node).or_default() += 1,
                CloudEvent::Disconnected {
                    node,
                    reason: LinkEnd::Replaced,
                } => {
                    *seen.replaced.entry(node).or_default() += 1;
                }
                CloudEvent::Disconnected { node, .. } => {
                    *seen.other_ends.entry(node).or_default() += 1;
                }
                CloudEvent::Message { message, .. } if message.is_keepalive() => {}
                CloudEvent::Message { node, message } => {
                    drop(seen);
                    let _ = to_test.try_send((node, message));
                }
            }
        }
    });
    Cloud {
        addr,
        handle,
        seen,
        messages,
        stop,
    }
}

/// What an EdgeHub reported.
#[derive(Debug, Default)]
struct EdgeSeen {
    connected: u64,
    disconnected: u64,
}

struct Edge {
    handle: EdgeHubHandle,
    seen: Arc<Mutex<EdgeSeen>>,
    messages: mpsc::Receiver<Message>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Runs `hub`, counting its events in a task that never lets them pile up.
fn run_edge(hub: EdgeHub, handle: EdgeHubHandle, mut events: mpsc::Receiver<EdgeEvent>) -> Edge {
    let stop = CancellationToken::new();
    let run = tokio::spawn(hub.run(stop.clone()));
    let seen = Arc::new(Mutex::new(EdgeSeen::default()));
    let (to_test, messages) = mpsc::channel(64);
    let counts = Arc::clone(&seen);
    let task = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                EdgeEvent::Connected { .. } => counts.lock().unwrap().connected += 1,
                EdgeEvent::Disconnected { .. } => counts.lock().unwrap().disconnected += 1,
                EdgeEvent::Message(message) => {
                    let _ = to_test.try_send(message);
                }
            }
        }
        run.await.unwrap().unwrap();
    });
    Edge {
        handle,
        seen,
        messages,
        stop,
        task,
    }
}

/// Waits (until the deadline) for `check` to hold.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "deadline: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One connection attempt with a certificate for `node`, as edgecore makes it: the upgraded
/// WebSocket, or the HTTP status and body of the refusal.
async fn dial(
    tls: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    node: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>,
    (u16, String),
> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| (0, e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .map_err(|e| (0, e.to_string()))?;
    let mut req = format!("wss://{addr}/e632aba927ea4ac2b575ec1603d56f10/{node}/events")
        .into_client_request()
        .unwrap();
    let headers = req.headers_mut();
    headers.insert("Connectionuse", HeaderValue::from_static("msg"));
    headers.insert("Node_id", HeaderValue::from_str(node).unwrap());
    headers.insert(
        "Project_id",
        HeaderValue::from_static("e632aba927ea4ac2b575ec1603d56f10"),
    );
    match tokio_tungstenite::client_async(req, tls).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            Err((
                response.status().as_u16(),
                String::from_utf8_lossy(&body).into_owned(),
            ))
        }
        Err(e) => Err((0, e.to_string())),
    }
}

fn text(body: &str) -> Message {
    Message::new(
        "edged",
        "twin",
        "default/pod/p",
        "update",
        Content::string(body),
    )
}

/// Cloud and edge exchange one message each way; the cloud's send is repeated until the edge
/// has it (a send into a session that is ending at that moment is lost with it).
async fn exchange(cloud: &mut Cloud, edge: &mut Edge, node: &str) {
    let deadline = Instant::now() + DEADLINE;
    let down = format!("down to {node}");
    'down: loop {
        assert!(
            Instant::now() < deadline,
            "deadline: message down to {node}"
        );
        if cloud.handle.send(node, text(&down)).await.is_ok() {
            let wait = Instant::now() + Duration::from_millis(500);
            while let Ok(Some(message)) = tokio::time::timeout_at(wait, edge.messages.recv()).await
            {
                if message.content == Content::string(&down) {
                    break 'down;
                }
            }
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let up = format!("up from {node}");
    edge.handle.send(text(&up)).await.unwrap();
    loop {
        let (from, message) = tokio::time::timeout_at(deadline, cloud.messages.recv())
            .await
            .expect("deadline: message up")
            .expect("cloud running");
        if message.content == Content::string(&up) {
            assert_eq!(from, node);
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_replaying_a_nodes_certificate_cannot_keep_taking_its_session() {
    const ATTEMPTS: usize = 3_000;
    let limit = TakeoverLimit {
        burst: 3,
        // No refill during the test: the budget alone bounds the takeovers.
        refill_every: Duration::from_secs(3_600),
    };
    let pki = Pki::new();
    let mut cloud = cloud(&pki, |c| {
        c.takeover_limit = Some(limit);
        // The attacker's held connections send nothing; they must not time out mid-test.
        c.keepalive_timeout = Duration::from_secs(600);
    })
    .await;
    let spawn = |node: &str| {
        let (hub, handle, events) = EdgeHub::new(pki.edge_config(cloud.addr, node));
        run_edge(hub, handle, events)
    };
    let mut a = spawn("node-a");
    let mut b = spawn("node-b");
    eventually("both nodes connected", || {
        cloud.handle.connected_nodes() == ["node-a", "node-b"]
    })
    .await;

    // The attacker: another certificate for node-a (the same identity), 3,000 connections as
    // fast as they go, each held open when it is accepted.
    let attacker_tls = pki.client_tls("node-a");
    let mut held = Vec::new();
    let mut refused = 0usize;
    let mut refusal_body = String::new();
    let mut node_c = None;
    let attack_deadline = Instant::now() + Duration::from_secs(180);
    for attempt in 0..ATTEMPTS {
        assert!(Instant::now() < attack_deadline, "deadline: attack loop");
        match dial(Arc::clone(&attacker_tls), cloud.addr, "node-a").await {
            Ok(ws) => held.push(ws),
            Err((429, body)) => {
                refused += 1;
                refusal_body = body;
            }
            Err(other) => panic!("attempt {attempt}: unexpected failure {other:?}"),
        }
        // An honest node joins in the middle of the attack.
        if attempt == ATTEMPTS / 2 {
            node_c = Some(spawn("node-c"));
        }
    }
    let mut c = node_c.unwrap();
    let during = cloud.handle.stats();
    assert!(
        held.len() <= limit.burst as usize,
        "{} takeovers by the attacker",
        held.len()
    );
    assert!(
        !held.is_empty(),
        "within the budget the newer connection wins"
    );
    assert_eq!(held.len() + refused, ATTEMPTS);
    assert!(
        refusal_body.contains("takeover budget"),
        "the refusal says why: {refusal_body:?}"
    );
    assert!(during.takeovers <= u64::from(limit.burst), "{during:?}");
    assert!(during.takeovers_refused >= refused as u64, "{during:?}");

    // The attacker stops; the honest node-a gets its session back and exchanges messages.
    drop(held);
    eventually("node-c connected", || {
        cloud
            .handle
            .connected_nodes()
            .contains(&"node-c".to_owned())
    })
    .await;
    exchange(&mut cloud, &mut a, "node-a").await;
    exchange(&mut cloud, &mut b, "node-b").await;
    exchange(&mut cloud, &mut c, "node-c").await;

    // node-b and node-c were never disturbed: one session each, on both sides.
    for (node, edge) in [("node-b", &b), ("node-c", &c)] {
        let seen = edge.seen.lock().unwrap();
        assert_eq!((seen.connected, seen.disconnected), (1, 0), "{node}");
        let cloud_seen = cloud.seen.lock().unwrap();
        assert_eq!(Seen::get(&cloud_seen.connected, node), 1, "{node}");
        assert_eq!(Seen::get(&cloud_seen.replaced, node), 0, "{node}");
        assert_eq!(Seen::get(&cloud_seen.other_ends, node), 0, "{node}");
    }
    // The counters match what the cloud reported: every takeover ended a session as replaced.
    let stats = cloud.handle.stats();
    assert_eq!(
        stats.takeovers, during.takeovers,
        "no takeover after the attack"
    );
    assert_eq!(stats.sessions, 3);
    eventually("every takeover reported as a replaced session", || {
        Seen::get(&cloud.seen.lock().unwrap().replaced, "node-a") == stats.takeovers
    })
    .await;
    for edge in [a, b, c] {
        edge.stop.cancel();
        edge.task.await.unwrap();
    }
    cloud.stop.cancel();
}

/// The largest number of `Connected` events one EdgeHub can report in `elapsed` when no session
/// becomes stable: the first connect, then one per backoff wait, the k-th of which is at least
/// half of `min(max, min * 2^k)`.
fn connects_bound(min: Duration, max: Duration, elapsed: Duration) -> u64 {
    let mut connects = 1;
    let mut spent = Duration::ZERO;
    for k in 1u32.. {
        let ceiling = min.saturating_mul(1 << k.min(31)).min(max);
        spent += ceiling / 2;
        if spent > elapsed {
            break;
        }
        connects += 1;
    }
    connects
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_edgehubs_sharing_one_identity_back_off_instead_of_flapping() {
    let min = Duration::from_millis(20);
    let max = Duration::from_millis(160);
    let pki = Pki::new();
    // The cloud lets the newer connection win every time (KubeEdge's rule), so only the edges'
    // backoff bounds the flapping.
    let cloud = cloud(&pki, |c| c.takeover_limit = None).await;
    let honest_other = {
        let (hub, handle, events) = EdgeHub::new(pki.edge_config(cloud.addr, "node-b"));
        run_edge(hub, handle, events)
    };
    let started = Instant::now();
    let twins: Vec<Edge> = (0..2)
        .map(|_| {
            // Two certificates for one node, as two edgecores with a copied identity.
            let mut config = pki.edge_config(cloud.addr, "node-twin");
            config.min_backoff = min;
            config.max_backoff = max;
            config.stable_after = Duration::from_secs(3_600);
            let (hub, handle, events) = EdgeHub::new(config);
            run_edge(hub, handle, events)
        })
        .collect();
    // A bounded run (the old EdgeHub reconnected at once and flapped ~880 times a second).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut connects = Vec::new();
    for twin in twins {
        twin.stop.cancel();
        twin.task.await.unwrap();
        connects.push(twin.seen.lock().unwrap().connected);
    }
    let elapsed = started.elapsed();
    let bound = connects_bound(min, max, elapsed);
    for (i, count) in connects.iter().enumerate() {
        assert!(
            *count <= bound,
            "twin {i} connected {count} times; the backoff allows {bound}"
        );
        assert!(*count >= 1, "twin {i} never connected");
    }
    let stats = cloud.handle.stats();
    assert!(
        stats.takeovers >= 1,
        "the twins took the session from each other"
    );
    assert!(stats.takeovers < 2 * bound, "{stats:?}");
    // The other node was not disturbed.
    let seen = {
        let seen = honest_other.seen.lock().unwrap();
        (seen.connected, seen.disconnected)
    };
    assert_eq!(seen, (1, 0));
    honest_other.stop.cancel();
    honest_other.task.await.unwrap();
    cloud.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_ends_when_the_budget_refills() {
    let limit = TakeoverLimit {
        burst: 1,
        refill_every: Duration::from_secs(1),
    };
    let pki = Pki::new();
    let mut cloud = cloud(&pki, |c| c.takeover_limit = Some(limit)).await;
    let mut honest = {
        let (hub, handle, events) = EdgeHub::new(pki.edge_config(cloud.addr, "node-b"));
        run_edge(hub, handle, events)
    };
    let tls = pki.client_tls("node-a");
    let _first = dial(Arc::clone(&tls), cloud.addr, "node-a").await.unwrap();
    // The budget's one takeover, then refusals.
    let _second = dial(Arc::clone(&tls), cloud.addr, "node-a").await.unwrap();
    let mut refused = 0;
    let deadline = Instant::now() + DEADLINE;
    let third = loop {
        assert!(Instant::now() < deadline, "deadline: refusals never ended");
        match dial(Arc::clone(&tls), cloud.addr, "node-a").await {
            Ok(ws) => break ws,
            Err((429, _)) => refused += 1,
            Err(other) => panic!("unexpected failure {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The restarted node got its session back once a takeover was allowed again.
    assert!(refused >= 1, "the used-up budget refused at least once");
    let stats = cloud.handle.stats();
    assert_eq!(stats.takeovers, 2);
    assert_eq!(stats.takeovers_refused, refused);
    drop(third);
    exchange(&mut cloud, &mut honest, "node-b").await;
    honest.stop.cancel();
    honest.task.await.unwrap();
    cloud.stop.cancel();
}
