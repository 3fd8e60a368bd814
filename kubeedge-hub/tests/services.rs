//! The tower services: `poll_ready` is real backpressure. A node's queue that is full makes
//! `ToNode::poll_ready` pending until the node acknowledges; `ToCloud` queues to the cloud.

use std::future::poll_fn;
use std::task::Poll;

use kubeedge_hub::{DeliveryConfig, DeliveryEvent};
use kubeedge_proto::{Content, Message};
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};

mod common;
use common::{DEADLINE, Pki};

fn pod(i: usize) -> Message {
    let json = format!(r#"{{"metadata":{{"name":"p{i}","uid":"uid-{i}","resourceVersion":"1"}}}}"#);
    Message::new(
        "edgecontroller",
        "resource",
        "insert",
        format!("default/pod/p{i}"),
        Content::try_from(json.as_str()).unwrap(),
    )
    .with_resource_version("1")
}

#[tokio::test]
async fn poll_ready_waits_for_acknowledgements() {
    let pki = Pki::new();
    let stop = CancellationToken::new();
    let config = DeliveryConfig {
        node_capacity: 2,
        ..DeliveryConfig::default()
    };
    let (addr, cloud, mut cloud_events) = pki.reliable_cloud(config, &stop).await;

    // The node is not connected yet: two messages fill its queue, the third must wait.
    let mut to_node = cloud.to_node("edge-1");
    for i in 0..2 {
        to_node.ready().await.unwrap().call(pod(i)).await.unwrap();
    }
    assert!(matches!(
        poll_fn(|cx| Poll::Ready(to_node.poll_ready(cx))).await,
        Poll::Pending
    ));
    assert_eq!(cloud.pending("edge-1"), 2);

    // An edge connects and acknowledges what it gets; room appears, the third goes too.
    pki.acking_edge(addr, "edge-1", &stop, |_| {});
    tokio::time::timeout(DEADLINE, to_node.ready())
        .await
        .unwrap()
        .unwrap()
        .call(pod(2))
        .await
        .unwrap();
    let mut delivered = 0;
    while delivered < 3 {
        match tokio::time::timeout(DEADLINE, cloud_events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            DeliveryEvent::Delivered { node, .. } => {
                assert_eq!(node, "edge-1");
                delivered += 1;
            }
            DeliveryEvent::Connected { .. } | DeliveryEvent::Message { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(cloud.pending("edge-1"), 0);
    stop.cancel();
}
