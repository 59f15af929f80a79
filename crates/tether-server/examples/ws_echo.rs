//! A WebSocket echo server built only from tether's handshake parser and RFC 6455 codec.
//!
//! It drives a connection the way the real transport does: wait for readiness, `try_read`
//! into a scratch buffer, feed the sans-IO [`WsReader`], write what the events call for. It
//! is the peer for `tests/ws_conformance.rs` and for the Autobahn fuzzing client
//! (`scripts/autobahn.sh`).
//!
//! ```text
//! cargo run --release --example ws_echo -- 127.0.0.1:9001 [--max-message-size BYTES]
//! ```

use std::io;
use std::time::Duration;

use anyhow::Context as _;
use bytes::BytesMut;
use tether_server::transport::handshake::{
    HandshakeLimits, check_upgrade, error_response, parse_request_head, upgrade_response,
};
use tether_server::wire::ws::{Opcode, WsEvent, WsLimits, WsReader, encode_close, encode_frame};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut addr = "127.0.0.1:9001".to_owned();
    let mut limits = WsLimits::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--max-message-size" {
            let value = args.next().context("--max-message-size needs a value")?;
            limits.max_message_size = value.parse().context("--max-message-size: bytes")?;
        } else {
            addr = arg;
        }
    }
    let listener = TcpListener::bind(&addr)
        .await
        .with_context(|| format!("bind {addr}"))?;
    println!("ws_echo listening on {}", listener.local_addr()?);
    serve(listener, limits).await;
    Ok(())
}

/// Accepts connections forever, one task each.
pub(crate) async fn serve(listener: TcpListener, limits: WsLimits) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(async move {
                    // A peer going away is not an error worth reporting in an echo server.
                    let _ = handle(stream, limits).await;
                });
            }
            // Per-connection accept errors are skipped; back off on resource errors.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Runs one connection: HTTP upgrade, then echo until the close handshake or an error.
pub(crate) async fn handle(mut stream: TcpStream, limits: WsLimits) -> io::Result<()> {
    stream.set_nodelay(true)?;
    // The real server has one scratch buffer per worker; a task-local one is enough here.
    let mut scratch = vec![0u8; SCRATCH_LEN];

    let mut head_buf = Vec::new();
    let (head, consumed) = loop {
        let Some(n) = read_some(&stream, &mut scratch).await? else {
            return Ok(());
        };
        head_buf.extend_from_slice(&scratch[..n]);
        match parse_request_head(&head_buf, &HandshakeLimits::default()) {
            Ok(Some(parsed)) => break parsed,
            Ok(None) => {}
            Err(e) => {
                stream
                    .write_all(&error_response(e.status(), &e.to_string()))
                    .await?;
                return stream.shutdown().await;
            }
        }
    };
    let upgrade = match check_upgrade(&head) {
        Ok(upgrade) => upgrade,
        Err(e) => {
            stream
                .write_all(&error_response(e.status(), &e.to_string()))
                .await?;
            return stream.shutdown().await;
        }
    };
    stream
        .write_all(&upgrade_response(&upgrade.accept, None))
        .await?;
    let leftover = head_buf.split_off(consumed);
    drop(head_buf);

    let mut reader = WsReader::default();
    let mut events = Vec::new();
    let mut outbox = BytesMut::new();
    let mut fed = reader.feed(&leftover, &limits, &mut events);
    drop(leftover);
    loop {
        for event in events.drain(..) {
            match event {
                WsEvent::Message { binary, payload } => {
                    let opcode = if binary { Opcode::Binary } else { Opcode::Text };
                    encode_frame(opcode, &payload, &mut outbox);
                }
                WsEvent::Ping(payload) => encode_frame(Opcode::Pong, &payload, &mut outbox),
                WsEvent::Pong(_) => {}
                WsEvent::Close { code, reason } => {
                    // Echo the code and reason (RFC 6455 §5.5.1); an empty close gets an
                    // empty close.
                    match code {
                        Some(code) => outbox.extend_from_slice(&encode_close(code, &reason)),
                        None => encode_frame(Opcode::Close, &[], &mut outbox),
                    }
                    stream.write_all(&outbox).await?;
                    return linger_close(stream, &mut scratch).await;
                }
            }
        }
        if let Err(e) = fed {
            outbox.extend_from_slice(&encode_close(e.close_code(), &e.to_string()));
            stream.write_all(&outbox).await?;
            return linger_close(stream, &mut scratch).await;
        }
        if !outbox.is_empty() {
            stream.write_all(&outbox).await?;
            // Do not keep a large echo buffer around while idle.
            outbox = BytesMut::new();
        }
        let Some(n) = read_some(&stream, &mut scratch).await? else {
            return Ok(());
        };
        fed = reader.feed(&scratch[..n], &limits, &mut events);
    }
}

/// Waits for readiness and reads what is there; `None` on end of stream.
async fn read_some(stream: &TcpStream, scratch: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        stream.readable().await?;
        match stream.try_read(scratch) {
            Ok(0) => return Ok(None),
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// After our close frame: stop writing, then discard input until the client closes (or a
/// deadline passes). Closing with unread input would reset the connection and could destroy
/// the close frame before the client reads it.
async fn linger_close(mut stream: TcpStream, scratch: &mut [u8]) -> io::Result<()> {
    stream.shutdown().await?;
    let drain = async {
        while read_some(&stream, scratch).await?.is_some() {}
        Ok::<_, io::Error>(())
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
    Ok(())
}

/// Scratch read size: one read takes a typical burst of frames.
const SCRATCH_LEN: usize = 64 * 1024;
/// How long to wait for the client to close after our close frame.
const LINGER: Duration = Duration::from_secs(2);
