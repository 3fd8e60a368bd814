//! One established WebSocket link, driven the same way on both sides: messages to the peer from
//! a bounded queue, messages from the peer to the application (awaiting its capacity, so a slow
//! application slows the peer down instead of growing a buffer), keepalives, a read deadline.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use kubeedge_proto::Message;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// The WebSocket limits for messages of at most `max_len` bytes. The read buffer starts small
/// (tungstenite allocates 128 KiB per connection by default, which is most of an idle node's
/// cost on a cloud holding thousands) and grows for larger frames up to the limit.
pub(crate) fn ws_config(max_len: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(max_len))
        .max_frame_size(Some(max_len))
}

/// The initial WebSocket read buffer per connection.
const READ_BUFFER: usize = 1024;

/// Why a link ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEnd {
    /// Our side shut down.
    Shutdown,
    /// A newer connection of the same node replaced this one.
    Replaced,
    /// The peer closed the connection.
    PeerClosed,
    /// Nothing arrived before the read deadline (the peer's keepalives stopped).
    Timeout,
    /// The peer sent something that is not a KubeEdge message; the reason is given.
    BadFrame(String),
    /// The connection failed; the error is given.
    Broken(String),
    /// The application stopped taking messages.
    AppGone,
}

impl std::fmt::Display for LinkEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Shutdown => f.write_str("shut down"),
            Self::Replaced => f.write_str("replaced by a newer connection"),
            Self::PeerClosed => f.write_str("closed by the peer"),
            Self::Timeout => f.write_str("no keepalive before the deadline"),
            Self::BadFrame(why) => write!(f, "bad frame: {why}"),
            Self::Broken(why) => write!(f, "connection broken: {why}"),
            Self::AppGone => f.write_str("the application stopped reading"),
        }
    }
}

/// How one link behaves.
pub(crate) struct LinkOptions {
    pub(crate) max_len: usize,
    /// End the link when nothing arrives for this long.
    pub(crate) read_deadline: Option<Duration>,
    /// Send a keepalive this often.
    pub(crate) keepalive_every: Option<Duration>,
    /// Limit on messages written to the peer (keepalives are not counted).
    pub(crate) rate_limit: Option<RateLimit>,
}

/// A token bucket: `per_second` messages on average, bursts of up to `burst`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Sustained messages per second (KubeEdge's `edgeHub.messageQPS`: 30).
    pub per_second: f64,
    /// Messages that may go at once (KubeEdge's `edgeHub.messageBurst`: 60).
    pub burst: u32,
}

struct Bucket {
    limit: RateLimit,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            tokens: f64::from(limit.burst.max(1)),
            last: Instant::now(),
        }
    }

    /// `None` when a message may go now (and takes its token); else when the next token comes.
    fn next_token(&mut self, now: Instant) -> Option<Instant> {
        let rate = self.limit.per_second.max(f64::MIN_POSITIVE);
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(self.limit.burst.max(1)));
        self.last = now;
        if self.tokens >= 1.0 {
            None
        } else {
            Some(now + Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }

    fn take(&mut self) {
        self.tokens -= 1.0;
    }
}

/// Encodes a message as the payload of the text frame gorilla's `WriteJSON` writes: the JSON
/// and `\n`. Link queues hold encoded frames (32 bytes a slot, however large the message type).
pub(crate) fn encode(msg: &Message) -> Result<Utf8Bytes> {
    let mut json = msg.to_json();
    json.push(b'\n');
    let text = String::from_utf8(json).map_err(|e| Error::BadFrame(e.to_string()))?;
    Ok(Utf8Bytes::from(text))
}

/// Decodes a data frame (text or binary, as gorilla's `ReadJSON` accepts) into a message.
fn message_of(frame: Frame, max_len: usize) -> Result<Option<Message>, LinkEnd> {
    let data: Bytes = match frame {
        Frame::Text(text) => Bytes::from(text),
        Frame::Binary(bytes) => bytes,
        // tungstenite answers pings itself; pongs and raw frames carry nothing for us.
        Frame::Ping(_) | Frame::Pong(_) | Frame::Frame(_) => return Ok(None),
        Frame::Close(_) => return Err(LinkEnd::PeerClosed),
    };
    Message::decode_json(data, max_len)
        .map(Some)
        .map_err(|e| LinkEnd::BadFrame(e.to_string()))
}

/// Drives `ws` until it ends: writes what `to_peer` yields, hands what arrives to `from_peer`
/// (wrapped by `wrap`). While the application is not taking messages, reading pauses (TCP
/// pushes back on the peer) but writing goes on, so neither side can wedge the other.
///
/// The stream comes boxed (1.5 KiB with its TLS connection): unboxed, it has room of its own in
/// this future and in the connection's, for as long as the node is connected.
pub(crate) async fn run_link<S, E>(
    ws: Box<WebSocketStream<S>>,
    to_peer: &mut mpsc::Receiver<Utf8Bytes>,
    from_peer: &mpsc::Sender<E>,
    wrap: impl Fn(Message) -> E,
    options: &LinkOptions,
    stop: &CancellationToken,
) -> LinkEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let far_future = Duration::from_secs(86_400 * 365);
    let mut deadline = Instant::now() + options.read_deadline.unwrap_or(far_future);
    let keepalive_every = options.keepalive_every.unwrap_or(far_future);
    let mut next_keepalive = Instant::now() + keepalive_every;
    let mut arrived: Option<Message> = None;
    let mut bucket = options.rate_limit.map(Bucket::new);
    let end = loop {
        // Writing waits for a token; reading and keepalives go on meanwhile.
        let throttled_until = bucket.as_mut().and_then(|b| b.next_token(Instant::now()));
        tokio::select! {
            () = tokio::time::sleep_until(throttled_until.unwrap_or_else(Instant::now)), if throttled_until.is_some() => {}
            () = stop.cancelled() => break LinkEnd::Shutdown,
            () = tokio::time::sleep_until(deadline), if options.read_deadline.is_some() => {
                break LinkEnd::Timeout;
            }
            () = tokio::time::sleep_until(next_keepalive), if options.keepalive_every.is_some() => {
                next_keepalive = Instant::now() + keepalive_every;
                let frame = match encode(&Message::keepalive()) {
                    Ok(text) => Frame::Text(text),
                    Err(e) => break LinkEnd::Broken(e.to_string()),
                };
                if let Err(e) = sink.send(frame).await {
                    break LinkEnd::Broken(e.to_string());
                }
            }
            outgoing = to_peer.recv(), if throttled_until.is_none() => {
                let Some(text) = outgoing else { break LinkEnd::Shutdown };
                if let Some(bucket) = bucket.as_mut() {
                    bucket.take();
                }
                if let Err(e) = sink.send(Frame::Text(text)).await {
                    break LinkEnd::Broken(e.to_string());
                }
            }
            permit = from_peer.reserve(), if arrived.is_some() => {
                let Ok(permit) = permit else { break LinkEnd::AppGone };
                if let Some(msg) = arrived.take() {
                    permit.send(wrap(msg));
                }
            }
            incoming = stream.next(), if arrived.is_none() => {
                let frame = match incoming {
                    None => break LinkEnd::PeerClosed,
                    Some(Err(e)) => break LinkEnd::Broken(e.to_string()),
                    Some(Ok(frame)) => frame,
                };
                match message_of(frame, options.max_len) {
                    Ok(None) => {}
                    Ok(Some(msg)) => {
                        if let Some(d) = options.read_deadline {
                            deadline = Instant::now() + d;
                        }
                        arrived = Some(msg);
                    }
                    Err(end) => break end,
                }
            }
        }
    };
    // Shutting down: what is already queued for the peer still goes (for a bounded time).
    if end == LinkEnd::Shutdown {
        let drain = async {
            while let Ok(text) = to_peer.try_recv() {
                if sink.send(Frame::Text(text)).await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    }
    // A polite close where the connection still works; KubeEdge itself just drops the TCP
    // connection, and both are fine for either side.
    if matches!(
        end,
        LinkEnd::Shutdown | LinkEnd::Timeout | LinkEnd::BadFrame(_)
    ) {
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_allows_bursts_then_paces() {
        let start = Instant::now();
        let mut bucket = Bucket {
            limit: RateLimit {
                per_second: 10.0,
                burst: 3,
            },
            tokens: 3.0,
            last: start,
        };
        for _ in 0..3 {
            assert_eq!(bucket.next_token(start), None);
            bucket.take();
        }
        let next = bucket.next_token(start).expect("burst used up");
        assert_eq!(next.duration_since(start), Duration::from_millis(100));
        // A tenth of a second later one token is back, and only one.
        let later = start + Duration::from_millis(100);
        assert_eq!(bucket.next_token(later), None);
        bucket.take();
        assert!(bucket.next_token(later).is_some());
        // Idle time refills up to the burst, no further.
        let much_later = later + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(bucket.next_token(much_later), None);
            bucket.take();
        }
        assert!(bucket.next_token(much_later).is_some());
    }
}
