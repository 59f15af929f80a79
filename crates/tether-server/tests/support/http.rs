//! The tests' raw HTTP/1.1: one request per connection (`Connection: close`) read to its
//! end, the API call on top of it, and a JWKS endpoint that stalls.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a response may take to arrive in full.
const WITHIN: Duration = Duration::from_secs(10);

/// A whole response.
pub(crate) struct Response {
    pub(crate) status: u16,
    /// Status line, headers and body, as received.
    pub(crate) text: String,
}

impl Response {
    /// What follows the head.
    pub(crate) fn body(&self) -> &str {
        self.text
            .split_once("\r\n\r\n")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }
}

/// Sends `method path` with the `headers` lines (each ending in `\r\n`) and `body` as JSON,
/// and reads the response to its end. Fails when nothing answers, the answer is not HTTP,
/// or it has not ended in 10 s.
pub(crate) async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> io::Result<Response> {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(WITHIN, stream.read_to_end(&mut response))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "response not ended in time"))??;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .get(9..12)
        .and_then(|status| status.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("not HTTP: {text:?}")))?;
    Ok(Response { status, text })
}

/// Status of `GET path`, `None` when nothing answers.
pub(crate) async fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    request(addr, "GET", path, "", "")
        .await
        .ok()
        .map(|response| response.status)
}

/// Polls `GET path` every 50 ms until it answers `status`; false if it has not `within`.
pub(crate) async fn wait_for_status(
    addr: SocketAddr,
    path: &str,
    status: u16,
    within: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while get_status(addr, path).await != Some(status) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// POST /api/<method> with `key` as `X-API-Key`: the status and the body as JSON (`Null` when
/// it is not JSON).
pub(crate) async fn api(
    addr: SocketAddr,
    method: &str,
    body: impl Serialize,
    key: Option<&str>,
) -> io::Result<(u16, Value)> {
    let headers = key
        .map(|key| format!("X-API-Key: {key}\r\n"))
        .unwrap_or_default();
    let body = serde_json::to_string(&body)?;
    let response = request(addr, "POST", &format!("/api/{method}"), &headers, &body).await?;
    let body = serde_json::from_str(response.body()).unwrap_or(Value::Null);
    Ok((response.status, body))
}

/// A figure of the `/metrics` of the server on `addr` (a metric without labels); fails
/// the test when it is not there.
pub(crate) async fn metric(addr: SocketAddr, name: &str) -> f64 {
    metric_with(addr, name, &[])
        .await
        .unwrap_or_else(|| panic!("{name} not in /metrics of {addr}"))
}

/// The figure of the series of metric `name` on `addr` that has every one of `labels`;
/// `None` when there is no such series (yet).
pub(crate) async fn metric_with(
    addr: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    let response = request(addr, "GET", "/metrics", "", "")
        .await
        .expect("metrics");
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    response.body().lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let rest = series.strip_prefix(name)?;
        let matches = if labels.is_empty() {
            rest.is_empty()
        } else {
            rest.starts_with('{') && labels.iter().all(|label| rest.contains(label.as_str()))
        };
        matches.then(|| value.trim().parse().ok()).flatten()
    })
}

/// A JWKS endpoint that answers nothing until `release` is sent, then an empty key set to
/// every request. Returns its URL and the sender that releases it.
pub(crate) async fn stalled_jwks() -> (String, tokio::sync::watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the JWKS endpoint");
    let url = format!(
        "http://{}/jwks",
        listener.local_addr().expect("JWKS endpoint address")
    );
    let (release, released) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut released = released.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = released.wait_for(|&go| go).await;
                let body = r#"{"keys":[]}"#;
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, release)
}
