//! Transports: accept, HTTP upgrade, the WebSocket codec, raw TCP, and the connection driver.
//!
//! Raw TCP clients connect to their own port and are served by [`tcp`] through the same
//! driver with another framing.
//!
//! One port serves both the WebSocket endpoint and the HTTP API. Each accepted socket gets
//! its own task: it reads the request head under a timeout, then either upgrades the raw
//! `TcpStream` to a WebSocket driven by [`driver`] (no HTTP library object stays behind), or
//! hands the stream — with the bytes already read — to hyper for the API.

mod driver;
pub mod handshake;
pub(crate) mod limits;
mod rewind;
pub(crate) mod tcp;

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tether_proto::Encoding;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use self::handshake::{HandshakeLimits, RequestHead};
use self::limits::Admission;
use crate::node::Node;
use crate::wire::Framing;
use crate::wire::pattern::wildcard_match;

/// What the server hands every accepted socket besides the node: the admission limits it
/// owns, and the HTTP API for requests that are not WebSocket upgrades. One `Arc` for both
/// keeps the handshake's future as small as one handle makes it.
#[derive(Debug)]
pub(crate) struct Entry {
    /// Connection counts and the connection rate.
    pub(crate) admission: Admission,
    /// The server HTTP API and health endpoints.
    pub(crate) api: axum::Router,
}

/// Serves one accepted socket to the end.
///
/// The returned future is the connection's task for its whole life, so it is built to stay
/// small: the handshake (request head, its timer, or the API's hyper connection) runs in a
/// boxed future that is freed before the WebSocket is served, and then the future holds one
/// [`driver::Driver`] and the driver's wait.
pub(crate) fn handle_connection(
    node: Arc<Node>,
    entry: Arc<Entry>,
    stream: TcpStream,
    peer: SocketAddr,
) -> impl Future<Output = ()> + Send {
    let handshake = Box::pin(accept(node, entry, stream, peer));
    async move {
        // Served in place (`&mut`): moving the driver out of the option would keep two
        // copies of it in this future.
        if let Some(driver) = &mut handshake.await {
            driver.run().await;
        }
    }
}

/// Reads the request head, then either answers a WebSocket upgrade (returning the driver
/// of the connection to serve) or serves the HTTP API on the socket to its end (`None`).
async fn accept(
    node: Arc<Node>,
    entry: Arc<Entry>,
    mut stream: TcpStream,
    peer: SocketAddr,
) -> Option<driver::Driver> {
    let _ = stream.set_nodelay(true);
    let limits = HandshakeLimits {
        max_head_bytes: node.config.http_server.max_request_head_size,
        max_headers: node.config.http_server.max_request_headers,
    };
    let mut buf = Vec::with_capacity(1024);
    let timeout = node.config.client.handshake_timeout;
    let head = tokio::select! {
        head = tokio::time::timeout(timeout, read_head(&mut stream, &mut buf, &limits)) => head,
        () = node.shutdown.cancelled() => {
            debug!(%peer, "shutting down before the request head arrived");
            return None;
        }
    };
    let (head, consumed) = match head {
        Ok(Ok(Some(parsed))) => parsed,
        Ok(Ok(None)) => return None,
        Ok(Err(status)) => {
            let _ = stream
                .write_all(&handshake::error_response(status, "bad request"))
                .await;
            return None;
        }
        Err(_) => {
            debug!(%peer, "request head not received in time");
            return None;
        }
    };
    if head.path == WEBSOCKET_PATH {
        let leftover = buf.split_off(consumed);
        drop(buf);
        let accepted = upgrade(&node, &entry.admission, stream, peer, head).await?;
        let mut driver = driver::Driver::new(node, accepted);
        return driver.feed_leftover(&leftover).await.then_some(driver);
    }
    let io = TokioIo::new(rewind::Rewind::new(buf, stream));
    let service = hyper_util::service::TowerToHyperService::new(entry.api.clone());
    let mut conn = std::pin::pin!(
        hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(io, service)
    );
    // In-flight requests finish at shutdown; idle keep-alive connections close.
    let served = tokio::select! {
        served = conn.as_mut() => served,
        () = node.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = served {
        debug!(%peer, %error, "http connection ended with an error");
    }
    None
}

/// Reads until a complete request head; `Ok(None)` when the peer closed first, `Err(status)`
/// for a malformed or oversized head.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    limits: &HandshakeLimits,
) -> Result<Option<(RequestHead, usize)>, u16> {
    loop {
        match handshake::parse_request_head(buf, limits) {
            Ok(Some(parsed)) => return Ok(Some(parsed)),
            Ok(None) => {}
            Err(error) => return Err(error.status()),
        }
        if buf.len() >= limits.max_head_bytes {
            return Err(431);
        }
        // Read straight into `buf`: a stack array here would live in every connection task.
        buf.reserve(HEAD_READ_CHUNK);
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

/// Checks and answers a WebSocket upgrade and registers the connection. The request head is
/// dropped before the connection's long life begins: an idle connection keeps none of it.
async fn upgrade(
    node: &Node,
    admission: &Admission,
    mut stream: TcpStream,
    peer: SocketAddr,
    head: RequestHead,
) -> Option<driver::Accepted> {
    let upgrade = match handshake::check_upgrade(&head) {
        Ok(upgrade) => upgrade,
        Err(error) => {
            let _ = stream
                .write_all(&handshake::error_response(
                    error.status(),
                    "websocket upgrade expected",
                ))
                .await;
            return None;
        }
    };
    if let Some(origin) = head.header("origin")
        && !origin_allowed(&node.config.client.allowed_origins, origin)
    {
        debug!(%peer, origin, "origin not allowed");
        let _ = stream
            .write_all(&handshake::error_response(403, "origin not allowed"))
            .await;
        return None;
    }
    // Limits are checked after the request proved to be a valid upgrade, so junk does not
    // spend the connection rate; the slot is held until the connection ends.
    let admitted = if node.is_draining() {
        Err(limits::Refused::Draining)
    } else {
        admission.admit(peer.ip(), tokio::time::Instant::now())
    };
    let slot = match admitted {
        Ok(slot) => slot,
        Err(refused) => {
            debug!(%peer, %refused, "websocket upgrade refused");
            let _ = stream
                .write_all(&handshake::error_response(503, &refused.to_string()))
                .await;
            return None;
        }
    };
    let (encoding, protocol) = negotiate(&head, &upgrade.offered_protocols);
    // Kept only when a backend proxy forwards some of them.
    let forward = node.proxies.keep_http_headers(
        head.headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str())),
    );
    let response = handshake::upgrade_response(&upgrade.accept, protocol);
    drop(head);
    drop(upgrade);
    if stream.write_all(&response).await.is_err() {
        return None;
    }
    drop(response);
    let conn = node.hub.register(
        encoding,
        Framing::WebSocket,
        node.config.client.queue_max_size,
        Some(stream),
    );
    Some(driver::Accepted {
        conn,
        wire: driver::Wire::websocket(),
        slot,
        forward,
    })
}

/// Picks the encoding: the `centrifuge-protobuf` subprotocol or a `format` / `cf_protocol`
/// query of `protobuf` select Protobuf; anything else is JSON.
fn negotiate(head: &RequestHead, offered: &[String]) -> (Encoding, Option<&'static str>) {
    if offered.iter().any(|p| p == "centrifuge-protobuf") {
        return (Encoding::Protobuf, Some("centrifuge-protobuf"));
    }
    let query_protobuf = ["format", "cf_protocol"]
        .iter()
        .any(|k| head.query_param(k).is_some_and(|v| v == "protobuf"));
    let protocol = offered
        .iter()
        .any(|p| p == "centrifuge-json")
        .then_some("centrifuge-json");
    if query_protobuf {
        (Encoding::Protobuf, None)
    } else {
        (Encoding::Json, protocol)
    }
}

/// Origin check as the reference server does it: with no patterns only requests without an
/// Origin header pass; patterns may use `*` as a wildcard.
fn origin_allowed(patterns: &[String], origin: &str) -> bool {
    let origin = origin.to_ascii_lowercase();
    patterns
        .iter()
        .any(|p| wildcard_match(&p.to_ascii_lowercase(), &origin))
}

/// How much the request-head reader asks the socket for at a time.
const HEAD_READ_CHUNK: usize = 2048;
/// The client WebSocket endpoint.
const WEBSOCKET_PATH: &str = "/connection/websocket";

#[cfg(test)]
mod tests {
    use super::*;

    /// Default admission limits and an empty API.
    fn test_entry() -> Arc<Entry> {
        Arc::new(Entry {
            admission: Admission::new(&crate::config::Config::default().client),
            api: axum::Router::new(),
        })
    }

    #[test]
    fn origin_patterns() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(!origin_allowed(&[], "http://a.com"));
        assert!(origin_allowed(&p(&["http://a.com"]), "http://A.com"));
        assert!(!origin_allowed(&p(&["http://a.com"]), "http://a.com.evil"));
        assert!(origin_allowed(
            &p(&["https://*.example.com"]),
            "https://app.example.com"
        ));
        assert!(!origin_allowed(
            &p(&["https://*.example.com"]),
            "https://example.org"
        ));
        assert!(origin_allowed(&p(&["*"]), "null"));
    }

    /// The served connection's future is its task's state for hours. A tokio task on x86-64
    /// is 96 bytes of header and trailer plus the future (+8 for the task tracker's token,
    /// +8 for the stage tag), rounded up to 128: a future of up to 400 bytes takes a
    /// 512-byte task, one byte more takes 640 — on every idle connection. heaptrack showed
    /// exactly that step (416 bytes: 640; 376: 512). Growing past the budget means boxing
    /// the new state instead (see `driver.rs`).
    #[tokio::test]
    async fn a_served_connection_future_stays_within_its_budget() {
        let node = Node::new(crate::config::Config::default())
            .await
            .expect("node");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let _client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (stream, peer) = listener.accept().await.expect("accept");
        let serve = handle_connection(node, test_entry(), stream, peer);
        let size = std::mem::size_of_val(&serve);
        assert!(size <= 400, "connection future is {size} bytes, budget 400");
    }

    /// A connection whose task ends without its close sequence (here it is aborted; a panic
    /// in it unwinds the same way) still leaves the hub and the engine, and its socket
    /// closes: nobody serves it any more, so nothing may stay subscribed in its name.
    #[tokio::test]
    async fn a_connection_whose_task_ends_without_its_close_leaves_nothing_behind() {
        use futures_util::{SinkExt as _, StreamExt as _};
        use tokio_tungstenite::tungstenite::Message;

        let mut config = crate::config::Config::default();
        config.client.insecure = true;
        config.channel.namespaces.push(crate::config::Namespace {
            name: "chat".to_owned(),
            options: crate::config::NamespaceOptions {
                presence: true,
                join_leave: true,
                ..Default::default()
            },
        });
        let node = Node::new(config).await.expect("node");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let served = {
            let node = node.clone();
            tokio::spawn(async move {
                let (stream, peer) = listener.accept().await.expect("accept");
                handle_connection(node, test_entry(), stream, peer).await;
            })
        };
        let (mut client, _) =
            tokio_tungstenite::connect_async(format!("ws://{addr}/connection/websocket"))
                .await
                .expect("upgrade");
        let commands =
            "{\"id\":1,\"connect\":{}}\n{\"id\":2,\"subscribe\":{\"channel\":\"chat:x\"}}";
        client.send(Message::text(commands)).await.expect("send");
        loop {
            let message = client.next().await.expect("open").expect("message");
            if message
                .to_text()
                .is_ok_and(|text| text.contains("\"id\":2"))
            {
                break;
            }
        }
        let stats = node.hub.stats();
        assert_eq!((stats.num_clients, stats.num_subs), (1, 1));
        assert_eq!(
            node.engine
                .presence_stats("chat:x")
                .await
                .unwrap()
                .num_clients,
            1
        );

        served.abort();
        assert!(served.await.unwrap_err().is_cancelled());
        let stats = node.hub.stats();
        assert_eq!(
            (stats.num_clients, stats.num_subs),
            (0, 0),
            "the hub forgot it"
        );
        let closed = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while let Some(Ok(_)) = client.next().await {}
        })
        .await;
        assert!(closed.is_ok(), "its socket closed");
        assert_eq!(
            node.engine
                .presence_stats("chat:x")
                .await
                .unwrap()
                .num_clients,
            0,
            "its presence is gone by the time its socket closed"
        );
    }
}
