//! The fan-out runs in the senders' tasks: many tasks sending to many nodes at once over real TLS
//! WebSockets. Every object's newest version reaches every node, versions of one object never
//! arrive out of order (an unsent older one may be replaced, never overtaken), every tracked
//! message is acknowledged once, and a send after the reliable layer stopped is refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kubeedge_hub::{DeliveryConfig, DeliveryEvent, Error};
use kubeedge_proto::Message;
use tokio_util::sync::CancellationToken;

mod common;
use common::{DEADLINE, Pki, rv_of};

const NODES: usize = 12;
/// One sender task per object: they all send to every node at once.
const OBJECTS: usize = 4;
const VERSIONS: u64 = 6;

fn version(object: usize, rv: u64) -> Message {
    common::object(&format!("uid-{object}"), rv)
}

type Seen = Arc<Mutex<HashMap<(String, String), Vec<u64>>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_reach_every_node_in_each_objects_order() {
    let pki = Pki::new();
    let stop = CancellationToken::new();
    let (addr, cloud, mut events) = pki.reliable_cloud(DeliveryConfig::default(), &stop).await;

    let seen: Seen = Arc::default();
    for n in 0..NODES {
        let node = format!("edge-{n}");
        let seen = Arc::clone(&seen);
        pki.acking_edge(addr, &node.clone(), &stop, move |msg| {
            let (uid, rv) = rv_of(msg);
            seen.lock()
                .unwrap()
                .entry((node.clone(), uid))
                .or_default()
                .push(rv);
        });
    }
    let mut connected = 0;
    while connected < NODES {
        if let DeliveryEvent::Connected { .. } = tokio::time::timeout(DEADLINE, events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            connected += 1;
        }
    }

    let senders: Vec<_> = (0..OBJECTS)
        .map(|object| {
            let cloud = cloud.clone();
            tokio::spawn(async move {
                for rv in 1..=VERSIONS {
                    for n in 0..NODES {
                        cloud
                            .send(&format!("edge-{n}"), version(object, rv))
                            .await
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for sender in senders {
        tokio::time::timeout(DEADLINE, sender)
            .await
            .unwrap()
            .unwrap();
    }

    // Wait until every node holds every object's newest version and every message it received
    // was reported delivered, once.
    let received = |seen: &Seen, n: usize| -> usize {
        let seen = seen.lock().unwrap();
        (0..OBJECTS)
            .filter_map(|o| seen.get(&(format!("edge-{n}"), format!("uid-{o}"))))
            .map(Vec::len)
            .sum()
    };
    let newest_everywhere = |seen: &Seen| {
        let seen = seen.lock().unwrap();
        (0..NODES).all(|n| {
            (0..OBJECTS).all(|o| {
                seen.get(&(format!("edge-{n}"), format!("uid-{o}")))
                    .and_then(|rvs| rvs.last())
                    == Some(&VERSIONS)
            })
        })
    };
    let mut delivered = [0usize; NODES];
    while !newest_everywhere(&seen) || (0..NODES).any(|n| delivered[n] != received(&seen, n)) {
        match tokio::time::timeout(DEADLINE, events.recv()).await {
            Ok(Some(DeliveryEvent::Delivered { node, .. })) => {
                let n: usize = node.trim_start_matches("edge-").parse().unwrap();
                delivered[n] += 1;
                assert!(
                    delivered[n] <= received(&seen, n),
                    "{node}: more Delivered than messages it received"
                );
            }
            other => panic!("{other:?}; received: {:?}", seen.lock().unwrap()),
        }
    }
    for n in 0..NODES {
        assert_eq!(cloud.pending(&format!("edge-{n}")), 0);
    }
    for ((node, uid), rvs) in seen.lock().unwrap().iter() {
        assert!(
            rvs.windows(2).all(|w| w[0] < w[1]),
            "{node} got {uid}'s versions out of order or twice: {rvs:?}"
        );
    }

    // The reliable layer's loop ends: nothing would process the ACKs, so sends are refused.
    stop.cancel();
    let refused = async {
        loop {
            match cloud.send("edge-0", version(0, VERSIONS + 1)).await {
                Err(Error::Stopped) => break,
                Ok(()) => tokio::task::yield_now().await,
                Err(other) => panic!("{other}"),
            }
        }
    };
    tokio::time::timeout(DEADLINE, refused).await.unwrap();
}
