//! Raw TCP transport: the Protobuf protocol as a byte stream, for native apps and devices.
//!
//! Clients send uvarint-length-delimited `Command`s and receive uvarint-length-delimited
//! `Reply`s on a plain TCP connection (its own port, `tcp.*` in the config). There is no
//! handshake: the first bytes are the `connect` command, which must arrive within
//! `client.stale_close_delay` (the sweeper closes with 3502 otherwise). Sessions, heartbeats,
//! limits and codes are the WebSocket ones: a ping is an empty `Reply` (the single byte
//! `0x00`), a pong an empty `Command`, and a disconnect is a `Disconnect` push followed by
//! closing the socket. TCP keepalive is on as a second line behind the app-level pings.
//!
//! The connection itself is served by the shared driver with [`Framing::Tcp`], whose frames
//! are the encoded replies as they are, so fan-out shares one `Bytes` between subscribers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tether_proto::Encoding;
use tokio::net::TcpStream;
use tracing::debug;

use super::driver::{self, Driver, Wire};
use super::limits::Admission;
use crate::node::Node;
use crate::wire::Framing;

/// Serves one accepted raw TCP connection to the end.
///
/// Admission, registration and the driver are made before the future is built (call it
/// inside the connection's span); the future holds the [`Driver`] and its wait (see
/// [`super::handle_connection`]).
pub(crate) fn handle_connection(
    node: Arc<Node>,
    admission: &Admission,
    stream: TcpStream,
    peer: SocketAddr,
) -> impl Future<Output = ()> + Send + use<> {
    // Over a limit the socket is closed as it is: raw TCP has no way to say why.
    let driver = match admission.admit(peer.ip(), tokio::time::Instant::now()) {
        Ok(slot) => {
            let _ = stream.set_nodelay(true);
            if let Err(error) = set_keepalive(&stream) {
                debug!(%peer, %error, "cannot enable tcp keepalive");
            }
            let conn = node.hub.register(
                Encoding::Protobuf,
                Framing::Tcp,
                node.config.client.queue_max_size,
                Some(stream),
            );
            debug!(%peer, client = %conn.client, "tcp connection accepted");
            let wire = Wire::tcp(&node);
            let accepted = driver::Accepted {
                conn,
                wire,
                slot,
                forward: Vec::new(),
            };
            Some(Driver::new(node, accepted))
        }
        Err(refused) => {
            debug!(%peer, %refused, "tcp connection refused");
            None
        }
    };
    let mut driver = driver;
    async move {
        // Served in place: see `super::handle_connection`.
        if let Some(driver) = &mut driver {
            driver.run().await;
        }
    }
}

/// Turns on TCP keepalive: probes after 30 s of silence, then every 10 s, so a peer that
/// vanished without a FIN is found even when app-level pings are off.
pub(crate) fn set_keepalive(stream: &TcpStream) -> std::io::Result<()> {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL);
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

/// Idle time before the first keepalive probe.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// Time between keepalive probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
