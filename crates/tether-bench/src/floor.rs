//! `tether-bench floor`: the least a server can do to fan a publication out, run as one more
//! target so that the machine's floor for fan-out latency is measured in the same run as
//! the servers.
//!
//! It speaks the `ws` baseline's protocol (scripts/bench/ws-server): a WebSocket client
//! sends `{"sub":"<channel>"}` and gets `{"ok":1}`; `POST /publish {"channel","data"}` sends
//! `data` to every subscriber. Each subscriber's socket goes to one of a few lanes, each a
//! thread of its own that owns its sockets; a publication is encoded once and each lane
//! writes it with one non-blocking `send` per subscriber (publications that came while a
//! lane was writing go out together, in one vectored write per subscriber). Nothing else:
//! no heartbeats, no per-connection queues, no reads after the subscription. What is left of a delivery's cost is the
//! kernel's and the clients'. A subscriber whose socket does not take a whole frame at once
//! is dropped, never waited for (so no stream is cut mid-frame), and reported on stderr: the
//! clients then count what it missed as lost.

use std::collections::HashMap;
use std::io::{IoSlice, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Largest request head or client frame the floor reads.
const MAX_HEAD: usize = 16 * 1024;
/// Largest publish body.
const MAX_BODY: usize = 1 << 20;

/// What a lane's thread is handed.
enum Job {
    /// A subscriber's socket, for the channel.
    Subscribe(String, std::net::TcpStream),
    /// A publication: the channel and the encoded frame.
    Publish(Arc<str>, Arc<[u8]>),
}

/// Serves on `listen` with `lanes` writing threads until the process is stopped.
pub async fn serve(listen: SocketAddr, lanes: usize) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    let lanes: Arc<[mpsc::Sender<Job>]> = (0..lanes.max(1))
        .map(|i| {
            let (tx, rx) = mpsc::channel();
            std::thread::Builder::new()
                .name(format!("floor-lane-{i}"))
                .spawn(move || lane(&rx))
                .map(|_| tx)
        })
        .collect::<Result<_, _>>()?;
    let next = Arc::new(AtomicUsize::new(0));
    eprintln!(
        "floor: fan-out yardstick on {} ({} lanes)",
        listener.local_addr()?,
        lanes.len()
    );
    loop {
        let (stream, _) = listener.accept().await?;
        let (lanes, next) = (lanes.clone(), next.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(stream, &lanes, &next).await {
                eprintln!("floor: connection ended: {e}");
            }
        });
    }
}

/// A lane's thread: owns its subscribers and writes each publication to them. Publications
/// that came while it was writing go out together, one vectored write per subscriber, as a
/// server that queues per connection would write them.
fn lane(jobs: &mpsc::Receiver<Job>) {
    let mut channels: HashMap<String, Vec<std::net::TcpStream>> = HashMap::new();
    let mut batch: Vec<(Arc<str>, Arc<[u8]>)> = Vec::new();
    while let Ok(job) = jobs.recv() {
        let mut job = Some(job);
        while let Some(next) = job.take() {
            match next {
                Job::Publish(channel, frame) => batch.push((channel, frame)),
                Job::Subscribe(channel, socket) => {
                    // Publications handed over before this subscription are not its own.
                    write_batch(&mut channels, &mut batch);
                    channels.entry(channel).or_default().push(socket);
                }
            }
            job = jobs.try_recv().ok();
        }
        write_batch(&mut channels, &mut batch);
    }
}

/// Writes the batch's publications, channel by channel, and empties it.
fn write_batch(
    channels: &mut HashMap<String, Vec<std::net::TcpStream>>,
    batch: &mut Vec<(Arc<str>, Arc<[u8]>)>,
) {
    while let Some((channel, _)) = batch.first() {
        let channel = Arc::clone(channel);
        let frames: Vec<Arc<[u8]>> = batch
            .iter()
            .filter(|(c, _)| *c == channel)
            .map(|(_, f)| Arc::clone(f))
            .collect();
        batch.retain(|(c, _)| *c != channel);
        let Some(subs) = channels.get_mut(&*channel) else {
            continue;
        };
        let slices: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f)).collect();
        let len: usize = frames.iter().map(|f| f.len()).sum();
        subs.retain_mut(|socket| match socket.write_vectored(&slices) {
            Ok(n) if n == len => true,
            other => {
                eprintln!("floor: dropped a subscriber of {channel}: {other:?}");
                false
            }
        });
    }
}

/// One accepted connection: a WebSocket subscriber, or keep-alive publish requests.
async fn connection(
    mut stream: TcpStream,
    lanes: &[mpsc::Sender<Job>],
    next: &AtomicUsize,
) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        let Some(head) = read_head(&mut stream, &mut buf).await? else {
            return Ok(());
        };
        if let Some(key) = head.ws_key {
            stream
                .write_all(switching_protocols(&key).as_bytes())
                .await?;
            buf.drain(..head.len);
            let channel = read_subscription(&mut stream, &mut buf).await?;
            stream.write_all(&server_frame(b"{\"ok\":1}")).await?;
            let socket = stream.into_std()?;
            let lane = next.fetch_add(1, Ordering::Relaxed) % lanes.len();
            lanes[lane]
                .send(Job::Subscribe(channel, socket))
                .map_err(|_| anyhow::anyhow!("lane gone"))?;
            return Ok(());
        }
        let end = head.len + head.content_length;
        anyhow::ensure!(head.content_length <= MAX_BODY, "body too large");
        while buf.len() < end {
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
        let (code, body) = if head.publish {
            match serde_json::from_slice::<Publish>(&buf[head.len..end]) {
                Ok(p) => {
                    let (channel, frame) = (Arc::from(p.channel), server_frame(p.data.as_bytes()));
                    let frame: Arc<[u8]> = frame.into();
                    for lane in lanes {
                        let _ = lane.send(Job::Publish(Arc::clone(&channel), Arc::clone(&frame)));
                    }
                    (200, "{\"ok\":1}")
                }
                Err(_) => (400, "{\"error\":\"bad request\"}"),
            }
        } else {
            (404, "{\"error\":\"not found\"}")
        };
        buf.drain(..end);
        let reason = match code {
            200 => "OK",
            400 => "Bad Request",
            _ => "Not Found",
        };
        let resp = format!(
            "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(resp.as_bytes()).await?;
    }
}

#[derive(Deserialize)]
struct Publish {
    channel: String,
    data: String,
}

#[derive(Deserialize)]
struct Subscribe {
    sub: String,
}

/// What the floor needs of a request head.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    /// Bytes the head used.
    len: usize,
    /// `Sec-WebSocket-Key` of an upgrade request.
    ws_key: Option<String>,
    /// `POST /publish`.
    publish: bool,
    content_length: usize,
}

/// Reads until `buf` holds a complete request head; `None` when the peer closed first.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<Option<Head>> {
    loop {
        if let Some(head) = parse_head(buf)? {
            return Ok(Some(head));
        }
        anyhow::ensure!(buf.len() < MAX_HEAD, "request head too large");
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

fn parse_head(buf: &[u8]) -> anyhow::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(len) = req.parse(buf)? else {
        return Ok(None);
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let upgrade = header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let ws_key = header("sec-websocket-key")
        .filter(|_| upgrade && req.method == Some("GET"))
        .map(str::to_owned);
    let content_length = match header("content-length") {
        Some(v) => v.parse()?,
        None => 0,
    };
    Ok(Some(Head {
        len,
        ws_key,
        publish: req.method == Some("POST") && req.path == Some("/publish"),
        content_length,
    }))
}

/// The 101 response to an upgrade request with `key` (RFC 6455 section 4.2.2).
fn switching_protocols(key: &str) -> String {
    use base64::Engine as _;
    use sha1::Digest as _;
    let mut sha = sha1::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
}

/// Reads client frames until a text frame names the channel to subscribe to.
async fn read_subscription(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<String> {
    loop {
        if let Some((opcode, payload, used)) = client_frame(buf)? {
            buf.drain(..used);
            match opcode {
                0x1 => {
                    let sub: Subscribe = serde_json::from_slice(&payload)
                        .map_err(|e| anyhow::anyhow!("bad subscription: {e}"))?;
                    return Ok(sub.sub);
                }
                0x8 => anyhow::bail!("closed before subscribing"),
                // Pings and pongs before the subscription are not answered.
                _ => continue,
            }
        }
        anyhow::ensure!(buf.len() < MAX_HEAD, "frame too large");
        anyhow::ensure!(stream.read_buf(buf).await? > 0, "closed before subscribing");
    }
}

/// One whole, masked client frame at the start of `buf`: opcode, unmasked payload, bytes used.
fn client_frame(buf: &[u8]) -> anyhow::Result<Option<(u8, Vec<u8>, usize)>> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    anyhow::ensure!(b0 & 0x80 != 0, "fragmented frames are not taken");
    anyhow::ensure!(b1 & 0x80 != 0, "unmasked client frame");
    let (len, at) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (usize::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => anyhow::bail!("frame too large"),
        n => (usize::from(n), 2),
    };
    let Some(frame) = buf.get(at..at + 4 + len) else {
        return Ok(None);
    };
    let (mask, data) = frame.split_at(4);
    let payload = data
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect();
    Ok(Some((b0 & 0x0f, payload, at + 4 + len)))
}

/// An unmasked server text frame carrying `payload`.
fn server_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x81);
    if payload.len() < 126 {
        // Fits in 7 bits by the branch condition.
        out.push(payload.len() as u8);
    } else if let Ok(short) = u16::try_from(payload.len()) {
        out.push(126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::{self, Opcode};

    #[test]
    fn the_accept_key_is_the_rfc_example() {
        // RFC 6455 section 1.3.
        assert!(
            switching_protocols("dGhlIHNhbXBsZSBub25jZQ==")
                .contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n")
        );
    }

    #[test]
    fn a_masked_client_frame_is_read_whole_and_server_frames_parse() {
        let mut out = Vec::new();
        ws::encode_frame(&mut out, Opcode::Text, br#"{"sub":"room"}"#, [1, 2, 3, 4]);
        assert!(client_frame(&out[..out.len() - 1]).unwrap().is_none());
        let (opcode, payload, used) = client_frame(&out).unwrap().unwrap();
        assert_eq!((opcode, used), (1, out.len()));
        assert_eq!(payload, br#"{"sub":"room"}"#);

        for size in [5, 200, 70_000] {
            let frame = server_frame(&vec![b'x'; size]);
            let (parsed, used) = ws::parse_frame(&frame).unwrap().unwrap();
            assert_eq!((parsed.payload.len(), used), (size, frame.len()));
        }
    }

    #[test]
    fn heads_tell_upgrades_from_publications() {
        let up = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: abc\r\nSec-WebSocket-Version: 13\r\n\r\n";
        let head = parse_head(up).unwrap().unwrap();
        assert_eq!(head.ws_key.as_deref(), Some("abc"));
        assert!(parse_head(&up[..20]).unwrap().is_none());
        let post = b"POST /publish HTTP/1.1\r\nContent-Length: 7\r\n\r\n{\"a\":1}";
        let head = parse_head(post).unwrap().unwrap();
        assert_eq!(
            head,
            Head {
                len: post.len() - 7,
                ws_key: None,
                publish: true,
                content_length: 7
            }
        );
    }
}
