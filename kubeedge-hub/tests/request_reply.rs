//! Request/response over the reliable layers: an edge call returns the cloud's reply matched by
//! `parent_msg_id`, a call nobody answers times out, and answered requests leave the journal.

use std::sync::Arc;
use std::time::Duration;

use kubeedge_hub::{
    DeliveryConfig, DeliveryEvent, EdgeHub, Error, ReliableEdge, UpstreamConfig, UpstreamEvent,
};
use kubeedge_proto::journal::{MemoryJournal, MessageJournal};
use kubeedge_proto::{Content, Message};
use tokio_util::sync::CancellationToken;

mod common;
use common::{DEADLINE, Pki};

#[tokio::test]
async fn calls_get_their_replies_and_unanswered_calls_time_out() {
    let pki = Pki::new();
    let stop = CancellationToken::new();
    let (addr, cloud, mut cloud_events) =
        pki.reliable_cloud(DeliveryConfig::default(), &stop).await;
    // The cloud answers queries (like edgecontroller answering a node registration) and
    // ignores everything else.
    tokio::spawn(async move {
        while let Some(event) = cloud_events.recv().await {
            if let DeliveryEvent::Message { node, message } = event
                && message.route.resource == "default/node/edge-1"
            {
                let reply = message.response(
                    Content::try_from(r#"{"Object":{"kind":"Node"},"Err":null}"#).unwrap(),
                );
                cloud.send(&node, reply).await.unwrap();
            }
        }
    });

    let config = pki.edge_config(addr, "edge-1");
    let (edge, link, raw) = EdgeHub::new(config);
    tokio::spawn(edge.run(stop.clone()));
    let journal = Arc::new(MemoryJournal::new(100));
    let (layer, handle, mut events) =
        ReliableEdge::new(link, raw, Arc::clone(&journal), UpstreamConfig::default());
    tokio::spawn(layer.run(stop.clone()));
    assert!(matches!(
        tokio::time::timeout(DEADLINE, events.recv()).await.unwrap(),
        Some(UpstreamEvent::Connected { .. })
    ));

    let register = Message::new(
        "edged",
        "meta",
        "insert",
        "default/node/edge-1",
        Content::try_from(r#"{"kind":"Node"}"#).unwrap(),
    );
    let reply = handle.call(register.clone(), DEADLINE).await.unwrap();
    assert_eq!(reply.header.parent_id, register.header.id);
    assert!(reply.content.as_str().is_none());
    assert!(
        journal.pending(0, 10).await.unwrap().is_empty(),
        "an answered call leaves the journal"
    );

    let ignored = Message::new(
        "edged",
        "meta",
        "insert",
        "default/event/e1",
        Content::null(),
    );
    let err = handle
        .call(ignored, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ReplyTimeout), "{err}");
    // Unanswered, it stays journaled for the next replay.
    assert_eq!(journal.pending(0, 10).await.unwrap().len(), 1);
    stop.cancel();
}
