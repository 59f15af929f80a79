//! Publishing through each server's own API at a fixed rate: tether's `POST /api/publish`,
//! sockudo's signed Pusher `POST /apps/<id>/events`, the `ws` script's `POST /publish`, and
//! NATS `PUB` over a plain TCP client connection. A small HTTP/1.1 keep-alive client is
//! enough for the HTTP ones.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac as _};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::target::{self, Creds, Target};
use crate::worker::now_us;

/// Longest wait for one publish request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Socket error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The server answered something we do not understand.
    #[error("bad response: {0}")]
    Response(String),
    /// No answer within [`REQUEST_TIMEOUT`].
    #[error("timed out")]
    Timeout,
    /// The server refused the publication.
    #[error("refused: {0}")]
    Refused(String),
}

/// Outcome of a publishing phase.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PublishResult {
    /// Publications the server accepted.
    pub published: u64,
    /// Publications that failed.
    pub failed: u64,
    /// First failure reasons.
    pub errors: Vec<String>,
    /// Publications never sent because the phase ran out of time (server too slow).
    pub not_sent: u64,
    /// Seconds from the first to the last publication.
    pub elapsed_s: f64,
    /// When the first publication was sent, µs since the Unix epoch.
    pub first_us: u64,
}

/// Publishes into one channel of one server.
#[derive(Clone, Debug)]
pub struct Publisher {
    /// Server kind.
    pub target: Target,
    /// Address of its API (for NATS: the client port).
    pub api: SocketAddr,
    /// Credentials.
    pub creds: Creds,
    /// Channel (or subject) to publish into.
    pub channel: String,
    /// Size of the publication data in bytes.
    pub size: usize,
}

enum Link {
    Http(TcpStream, Vec<u8>),
    Nats(TcpStream),
}

impl Publisher {
    /// Publishes `rate` publications per second for `duration` over `conns` connections,
    /// with sequence numbers from `seq_base`.
    pub async fn run(
        &self,
        rate: f64,
        duration: Duration,
        seq_base: u64,
        conns: usize,
    ) -> PublishResult {
        let total = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
        let (tx, rx) = tokio::sync::mpsc::channel::<u64>(conns.max(1) * 2);
        let rx = std::sync::Arc::new(tokio::sync::Mutex::new(rx));
        let first_us = now_us();
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..conns.max(1) {
            let (me, rx) = (self.clone(), rx.clone());
            tasks.push(tokio::spawn(async move {
                let mut res = PublishResult::default();
                let mut link = None;
                loop {
                    let Some(seq) = rx.lock().await.recv().await else {
                        break;
                    };
                    let one = tokio::time::timeout(REQUEST_TIMEOUT, me.publish_one(&mut link, seq));
                    match one.await.unwrap_or(Err(PublishError::Timeout)) {
                        Ok(()) => res.published += 1,
                        Err(e) => {
                            link = None;
                            res.failed += 1;
                            if res.errors.len() < 3 {
                                res.errors.push(e.to_string());
                            }
                        }
                    }
                }
                if let Some(Link::Nats(mut s)) = link {
                    // Flush: the PONG comes after every PUB was processed.
                    let _ = nats_ping(&mut s).await;
                }
                res
            }));
        }
        let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        // A server that answers slower than the rate must not stretch the phase without
        // bound: stop handing out publications at twice the planned time.
        let stop_at = tokio::time::Instant::now() + duration * 2;
        let mut skipped = 0;
        for i in 0..total {
            tick.tick().await;
            let sent = tokio::time::timeout_at(stop_at, tx.send(seq_base + i)).await;
            if !matches!(sent, Ok(Ok(()))) {
                skipped = total - i;
                break;
            }
        }
        drop(tx);
        let mut out = PublishResult {
            first_us,
            not_sent: skipped,
            ..PublishResult::default()
        };
        for t in tasks {
            // Each task ends within REQUEST_TIMEOUT of its last publication.
            if let Ok(r) = t.await {
                out.published += r.published;
                out.failed += r.failed;
                out.errors.extend(r.errors);
            }
        }
        out.elapsed_s = start.elapsed().as_secs_f64();
        out
    }

    async fn publish_one(&self, link: &mut Option<Link>, seq: u64) -> Result<(), PublishError> {
        if link.is_none() {
            let mut s = TcpStream::connect(self.api).await?;
            s.set_nodelay(true)?;
            *link = Some(if self.target == Target::Nats {
                nats_handshake(&mut s).await?;
                Link::Nats(s)
            } else {
                Link::Http(s, Vec::with_capacity(1024))
            });
        }
        let data = target::marker_payload(now_us(), seq, self.size);
        match link {
            Some(Link::Nats(s)) => {
                let msg = format!("PUB {} {}\r\n{data}\r\n", self.channel, data.len());
                s.write_all(msg.as_bytes()).await?;
                answer_nats_pings(s).await
            }
            Some(Link::Http(s, buf)) => {
                let (path, headers, body) = self.http_request(&data);
                let (code, resp, close) =
                    http_post(s, buf, &self.api.to_string(), &path, &headers, &body).await?;
                if close {
                    // The server ends the connection after this response (sockudo's API
                    // answers `connection: close`): the next publication dials again.
                    *link = None;
                }
                let refused = memchr::memmem::find(&resp, b"\"error\"").is_some();
                if code / 100 != 2 || (self.target == Target::Tether && refused) {
                    let text = String::from_utf8_lossy(&resp[..resp.len().min(200)]).into_owned();
                    return Err(PublishError::Refused(format!("{code} {text}")));
                }
                Ok(())
            }
            None => Err(PublishError::Response("no connection".to_owned())),
        }
    }

    fn http_request(&self, data: &str) -> (String, String, String) {
        match self.target {
            Target::Tether => (
                "/api/publish".to_owned(),
                format!("X-API-Key: {}\r\n", self.creds.api_key),
                format!(
                    "{{\"channel\":\"{}\",\"data\":{{\"m\":\"{data}\"}}}}",
                    self.channel
                ),
            ),
            Target::Ws | Target::Floor | Target::Nats => (
                "/publish".to_owned(),
                String::new(),
                format!("{{\"channel\":\"{}\",\"data\":\"{data}\"}}", self.channel),
            ),
            Target::Sockudo => {
                let body = format!(
                    "{{\"name\":\"bench\",\"channels\":[\"{}\"],\"data\":\"{data}\"}}",
                    self.channel
                );
                let path = pusher_signed_path(&self.creds, &body, now_us() / 1_000_000);
                (path, String::new(), body)
            }
        }
    }
}

/// The signed Pusher events path: `auth_signature` = HMAC-SHA256(secret,
/// "POST\n<path>\n<sorted query>").
pub fn pusher_signed_path(creds: &Creds, body: &str, unix_s: u64) -> String {
    let path = format!("/apps/{}/events", creds.app_id);
    let md5 = format!("{:x}", md5::compute(body.as_bytes()));
    let query = format!(
        "auth_key={}&auth_timestamp={unix_s}&auth_version=1.0&body_md5={md5}",
        creds.app_key
    );
    let to_sign = format!("POST\n{path}\n{query}");
    let sig = match Hmac::<sha2::Sha256>::new_from_slice(creds.app_secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(to_sign.as_bytes());
            hex(&mac.finalize().into_bytes())
        }
        // HMAC accepts keys of any length.
        Err(_) => String::new(),
    };
    format!("{path}?{query}&auth_signature={sig}")
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// One HTTP/1.1 POST on a keep-alive connection; returns the status, the body, and whether
/// the server closes the connection after it (`connection: close`).
async fn http_post(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    host: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> Result<(u16, Vec<u8>, bool), PublishError> {
    http_call(s, buf, host, "POST", path, headers, body).await
}

/// One HTTP/1.1 request (`method` with a JSON `body`, empty for a GET) on a keep-alive
/// connection; returns the status, the body, and whether the server closes the connection
/// after it (`connection: close`).
pub(crate) async fn http_call(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    host: &str,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> Result<(u16, Vec<u8>, bool), PublishError> {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{headers}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    buf.clear();
    loop {
        if s.read_buf(buf).await? == 0 {
            return Err(PublishError::Response("connection closed".to_owned()));
        }
        let mut hs = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut hs);
        let head = match resp.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => continue,
            Err(e) => return Err(PublishError::Response(e.to_string())),
        };
        let code = resp.code.unwrap_or(0);
        let len = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| {
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            })
            .ok_or_else(|| PublishError::Response("no content-length".to_owned()))?;
        let close = resp.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("connection") && h.value.eq_ignore_ascii_case(b"close")
        });
        while buf.len() < head + len {
            if s.read_buf(buf).await? == 0 {
                return Err(PublishError::Response("closed in body".to_owned()));
            }
        }
        return Ok((code, buf[head..head + len].to_vec(), close));
    }
}

async fn nats_handshake(s: &mut TcpStream) -> Result<(), PublishError> {
    s.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")
        .await?;
    nats_ping(s).await
}

/// Sends PING and reads until PONG (answering server PINGs on the way).
async fn nats_ping(s: &mut TcpStream) -> Result<(), PublishError> {
    s.write_all(b"PING\r\n").await?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        if s.read_buf(&mut buf).await? == 0 {
            return Err(PublishError::Response("nats closed".to_owned()));
        }
        if memchr::memmem::find(&buf, b"-ERR").is_some() {
            return Err(PublishError::Refused(
                String::from_utf8_lossy(&buf).into_owned(),
            ));
        }
        if memchr::memmem::find(&buf, b"PONG\r\n").is_some() {
            return Ok(());
        }
    }
}

async fn answer_nats_pings(s: &mut TcpStream) -> Result<(), PublishError> {
    let mut buf = [0u8; 4096];
    loop {
        match s.try_read(&mut buf) {
            Ok(0) => return Err(PublishError::Response("nats closed".to_owned())),
            Ok(n) => {
                let got = &buf[..n];
                if memchr::memmem::find(got, b"-ERR").is_some() {
                    return Err(PublishError::Refused(
                        String::from_utf8_lossy(got).into_owned(),
                    ));
                }
                if memchr::memmem::find(got, b"PING\r\n").is_some() {
                    s.write_all(b"PONG\r\n").await?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pusher_signature_matches_the_documented_example() {
        // The worked example of the Pusher HTTP API reference (key, secret, body, timestamp).
        let creds = Creds {
            app_id: "3".to_owned(),
            app_key: "278d425bdf160c739803".to_owned(),
            app_secret: "7ad3773142a6692b25b8".to_owned(),
            ..Creds::default()
        };
        let body = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let path = pusher_signed_path(&creds, body, 1_353_088_179);
        assert_eq!(
            path,
            "/apps/3/events?auth_key=278d425bdf160c739803&auth_timestamp=1353088179\
             &auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f\
             &auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
    }
}
