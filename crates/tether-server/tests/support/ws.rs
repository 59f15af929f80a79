//! The tests' raw WebSocket upgrade: the handshake written by hand on a plain socket, for
//! tests that look at the HTTP answer or speak frames themselves.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The `Sec-WebSocket-Key` of every upgrade request (RFC 6455's example).
pub(crate) const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Sends an upgrade request for `/connection/websocket` with the `extra` header lines (each
/// ending in `\r\n`) and reads the response head, a byte at a time so that nothing after it
/// is consumed (on 101 the stream is then the upgraded connection). Fails when the peer
/// closes first or no head came in 5 s.
pub(crate) async fn upgrade(stream: &mut TcpStream, extra: &str) -> io::Result<String> {
    let request = format!(
        "GET /connection/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no response in time"))??;
        if read == 0 {
            let head = String::from_utf8_lossy(&head);
            let message = format!("closed before a response: {head:?}");
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, message));
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// The status code of a response head.
pub(crate) fn status(head: &str) -> u16 {
    head.get(9..12)
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {head:?}"))
}

/// Connects to `addr` and sends an upgrade request (see [`upgrade`]); returns the response
/// status and the stream. Fails the test when no response comes.
pub(crate) async fn upgrade_status(addr: SocketAddr, extra: &str) -> (u16, TcpStream) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = upgrade(&mut stream, extra).await.expect("upgrade response");
    (status(&head), stream)
}
