//! The publisher: `POST /api/publish` at a fixed rate, one request per connection, each
//! with a sequence number in its payload; records which were acknowledged and as what
//! `(epoch, offset)`. Only acknowledged publications are audited.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::events::now_ms;

/// The API key every node of the suite is configured with.
pub(crate) const API_KEY: &str = "tether-chaos-api-key";

/// One publish attempt.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Attempt {
    /// Sequence number (from 1).
    pub(crate) seq: u64,
    /// Channel index.
    pub(crate) channel: usize,
    /// When it was sent (ms).
    pub(crate) sent: u64,
    /// `(epoch, offset)` when acknowledged.
    pub(crate) ack: Option<(String, u64)>,
}

/// Publishes to `channel_prefix<i>` (round robin over `channels`) through `targets` (round
/// robin), `rate` per second, until `stop` turns true or `max` attempts were made.
pub(crate) async fn run(
    targets: watch::Receiver<Vec<SocketAddr>>,
    channel_prefix: String,
    channels: usize,
    rate: f64,
    max: u64,
    mut stop: watch::Receiver<bool>,
) -> Vec<Attempt> {
    let mut attempts = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for seq in 1..=max {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        let target = {
            let targets = targets.borrow();
            if targets.is_empty() {
                continue;
            }
            targets[usize::try_from(seq).unwrap_or(0) % targets.len()]
        };
        let channel = usize::try_from(seq).unwrap_or(0) % channels.max(1);
        let body = serde_json::json!({
            "channel": format!("{channel_prefix}{channel}"),
            "data": { "s": seq },
        })
        .to_string();
        let sent = now_ms();
        let ack = tokio::time::timeout(Duration::from_secs(2), publish(target, &body))
            .await
            .ok()
            .flatten();
        attempts.push(Attempt {
            seq,
            channel,
            sent,
            ack,
        });
    }
    attempts
}

/// One `POST /api/publish`; `(epoch, offset)` of a success.
async fn publish(target: SocketAddr, body: &str) -> Option<(String, u64)> {
    let mut stream = TcpStream::connect(target).await.ok()?;
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {target}\r\nX-API-Key: {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    parse_ack(&response)
}

/// `(epoch, offset)` from an HTTP response whose JSON body is `{"result":{…}}`.
pub(crate) fn parse_ack(response: &[u8]) -> Option<(String, u64)> {
    let text = std::str::from_utf8(response).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    // The JSON object, whether the body is sized or chunked.
    let json = &body[body.find('{')?..=body.rfind('}')?];
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    let result = value.get("result")?;
    Some((
        result.get("epoch")?.as_str()?.to_owned(),
        result.get("offset")?.as_u64()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_are_results_with_a_position() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 40\r\n\r\n{\"result\":{\"offset\":7,\"epoch\":\"xy\"}}";
        assert_eq!(parse_ack(ok), Some(("xy".to_owned(), 7)));
        let error = b"HTTP/1.1 200 OK\r\n\r\n{\"error\":{\"code\":100,\"message\":\"internal\"}}";
        assert_eq!(parse_ack(error), None);
        assert_eq!(parse_ack(b"HTTP/1.1 503 x\r\n\r\n{}"), None);
        assert_eq!(parse_ack(b""), None);
    }
}
