//! The HTTP/1.1 upgrade that opens a WebSocket: request head parsing, upgrade checks and the
//! raw response bytes.
//!
//! Sans-IO like the frame codec: the driver reads into a buffer until
//! [`parse_request_head`] returns a head, checks it with [`check_upgrade`], writes
//! [`upgrade_response`] (or [`error_response`]) and hands any bytes after the head to the
//! [`WsReader`](super::ws::WsReader). Everything allocated here is dropped before the
//! connection's idle loop starts.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest, Sha1};

/// Bounds on the request head, against slow or oversized handshakes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// Largest request head (request line + headers + blank line) in bytes.
    pub max_head_bytes: usize,
    /// Most headers accepted in one request.
    pub max_headers: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        Self {
            // Browsers send well under 2 KiB; cookies can push it further. 8 KiB is what
            // common proxies (nginx `large_client_header_buffers` per line) allow.
            max_head_bytes: 8 * 1024,
            // Real upgrade requests carry 10–20 headers.
            max_headers: 64,
        }
    }
}

/// A parsed HTTP request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// The request method, as sent (`GET`).
    pub method: String,
    /// The request target before any `?`.
    pub path: String,
    /// The raw query string after `?`, without it; `None` when there is no `?`.
    pub query: Option<String>,
    /// HTTP minor version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub version: u8,
    /// Headers in arrival order, names as sent. Values that are not UTF-8 are converted
    /// lossily: none of the headers we act on may contain such bytes.
    pub headers: Vec<(String, String)>,
}

/// What the 101 response needs, from a valid upgrade request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgrade {
    /// The `Sec-WebSocket-Accept` value derived from the client's key.
    pub accept: String,
    /// Subprotocols the client offered in `Sec-WebSocket-Protocol`, in order.
    pub offered_protocols: Vec<String>,
}

/// Why a handshake was refused. [`HandshakeError::status`] gives the HTTP status to answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The bytes are not an HTTP/1.x request head.
    #[error("malformed request head")]
    Malformed,
    /// The head grew past [`HandshakeLimits::max_head_bytes`] without ending.
    #[error("request head exceeds the size limit")]
    HeadTooLarge,
    /// The head has more than [`HandshakeLimits::max_headers`] headers.
    #[error("too many request headers")]
    TooManyHeaders,
    /// The method is not GET.
    #[error("method is not get")]
    MethodNotAllowed,
    /// The request is HTTP/1.0.
    #[error("http version is not 1.1")]
    UnsupportedHttpVersion,
    /// `Upgrade` does not name `websocket`.
    #[error("upgrade header does not name websocket")]
    MissingUpgrade,
    /// `Connection` does not contain the `upgrade` token.
    #[error("connection header has no upgrade token")]
    MissingConnectionUpgrade,
    /// `Sec-WebSocket-Version` is absent or not 13.
    #[error("unsupported websocket version")]
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` is absent or not 16 bytes of base64.
    #[error("invalid sec-websocket-key")]
    InvalidKey,
}

// === impl RequestHead ===

impl RequestHead {
    /// The first value of header `name` (case-insensitive).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers(name).next()
    }

    /// Every value of header `name` (case-insensitive), in arrival order.
    pub fn headers<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first value of query parameter `name`, percent-decoded (`+` is a space, as in
    /// `application/x-www-form-urlencoded`). `None` when absent.
    #[must_use]
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.query.as_deref()?;
        query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
            .find(|(key, _)| percent_decode(key) == name)
            .map(|(_, value)| percent_decode(value))
    }
}

// === impl HandshakeError ===

impl HandshakeError {
    /// The HTTP status to answer with: 400, except 405 (method), 426 (WebSocket version;
    /// send `Sec-WebSocket-Version: 13`, which [`error_response`] does) and 431 (head size).
    #[must_use]
    pub fn status(&self) -> u16 {
        match self {
            Self::HeadTooLarge | Self::TooManyHeaders => 431,
            Self::MethodNotAllowed => 405,
            Self::UnsupportedVersion => 426,
            Self::Malformed
            | Self::UnsupportedHttpVersion
            | Self::MissingUpgrade
            | Self::MissingConnectionUpgrade
            | Self::InvalidKey => 400,
        }
    }
}

// === functions ===

/// Parses a request head from the start of `buf`.
///
/// `Ok(None)` means more bytes are needed; `Ok(Some((head, consumed)))` returns the head and
/// its length in `buf` (bytes after it belong to the WebSocket stream).
pub fn parse_request_head(
    buf: &[u8],
    limits: &HandshakeLimits,
) -> Result<Option<(RequestHead, usize)>, HandshakeError> {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut request = httparse::Request::new(&mut headers);
    let consumed = match request.parse(buf) {
        Ok(httparse::Status::Complete(consumed)) => consumed,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= limits.max_head_bytes {
                return Err(HandshakeError::HeadTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooManyHeaders),
        Err(_) => return Err(HandshakeError::Malformed),
    };
    if consumed > limits.max_head_bytes {
        return Err(HandshakeError::HeadTooLarge);
    }
    // A complete parse always sets method, path and version.
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        return Err(HandshakeError::Malformed);
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
        None => (target.to_owned(), None),
    };
    let headers = request
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    Ok(Some((
        RequestHead {
            method: method.to_owned(),
            path,
            query,
            version,
            headers,
        },
        consumed,
    )))
}

/// Validates a WebSocket upgrade request (RFC 6455 §4.2.1) and returns what the response
/// needs.
pub fn check_upgrade(head: &RequestHead) -> Result<Upgrade, HandshakeError> {
    if head.method != "GET" {
        return Err(HandshakeError::MethodNotAllowed);
    }
    if head.version != 1 {
        return Err(HandshakeError::UnsupportedHttpVersion);
    }
    if !head
        .headers("upgrade")
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("websocket"))
    {
        return Err(HandshakeError::MissingUpgrade);
    }
    if !head
        .headers("connection")
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
    {
        return Err(HandshakeError::MissingConnectionUpgrade);
    }
    if head.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let key = head
        .header("sec-websocket-key")
        .map(str::trim)
        .ok_or(HandshakeError::InvalidKey)?;
    match BASE64.decode(key) {
        Ok(decoded) if decoded.len() == 16 => {}
        _ => return Err(HandshakeError::InvalidKey),
    }
    let offered_protocols = head
        .headers("sec-websocket-protocol")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    Ok(Upgrade {
        accept: accept_key(key),
        offered_protocols,
    })
}

/// The `Sec-WebSocket-Accept` value for a client key: base64(SHA-1(key + GUID)).
#[must_use]
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WEBSOCKET_GUID.as_bytes());
    BASE64.encode(sha.finalize())
}

/// The `101 Switching Protocols` response, with the chosen subprotocol if any.
#[must_use]
pub fn upgrade_response(accept: &str, protocol: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
    );
    out.extend_from_slice(b"Sec-WebSocket-Accept: ");
    out.extend_from_slice(accept.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(protocol) = protocol {
        out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        out.extend_from_slice(protocol.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A small `text/plain` error response with `Connection: close`; `reason` is the body. A 426
/// also carries `Sec-WebSocket-Version: 13`, a 405 `Allow: GET`.
#[must_use]
pub fn error_response(status: u16, reason: &str) -> Vec<u8> {
    let body = format!("{reason}\n");
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        status_text(status),
        body.len()
    );
    match status {
        426 => out.push_str("Sec-WebSocket-Version: 13\r\n"),
        405 => out.push_str("Allow: GET\r\n"),
        _ => {}
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}

// === helpers ===

fn status_text(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Decodes `%XX` escapes and `+`; malformed escapes are kept as they are, and invalid UTF-8
/// is replaced.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match (hex_value(bytes[i + 1]), hex_value(bytes[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        out.push(hi << 4 | lo);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 6455 §1.3: appended to the client key before hashing.
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: &[u8] = b"GET /connection/websocket?cf_protocol=protobuf&x=a%20b+c HTTP/1.1\r\n\
Host: example.com\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Protocol: centrifuge-protobuf, centrifuge-json\r\n\r\n";

    fn parse(buf: &[u8]) -> RequestHead {
        parse_request_head(buf, &HandshakeLimits::default())
            .unwrap()
            .unwrap()
            .0
    }

    fn with_header(name: &str, value: Option<&str>) -> RequestHead {
        let mut head = parse(REQUEST);
        head.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        if let Some(value) = value {
            head.headers.push((name.to_owned(), value.to_owned()));
        }
        head
    }

    #[test]
    fn parses_head_and_reports_consumed_bytes() {
        let mut buf = REQUEST.to_vec();
        buf.extend_from_slice(b"\x81\x80rest");
        let (head, consumed) = parse_request_head(&buf, &HandshakeLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!(consumed, REQUEST.len());
        assert_eq!(head.method, "GET");
        assert_eq!(head.path, "/connection/websocket");
        assert_eq!(
            head.query.as_deref(),
            Some("cf_protocol=protobuf&x=a%20b+c")
        );
        assert_eq!(head.header("HOST"), Some("example.com"));
        assert_eq!(head.query_param("cf_protocol").as_deref(), Some("protobuf"));
        assert_eq!(head.query_param("x").as_deref(), Some("a b c"));
        assert_eq!(head.query_param("missing"), None);
    }

    #[test]
    fn partial_head_needs_more_bytes_at_every_split() {
        for split in 0..REQUEST.len() {
            let got = parse_request_head(&REQUEST[..split], &HandshakeLimits::default()).unwrap();
            assert!(got.is_none(), "split {split}");
        }
    }

    #[test]
    fn oversized_and_crowded_heads_are_refused() {
        let limits = HandshakeLimits {
            max_head_bytes: 64,
            max_headers: 64,
        };
        assert_eq!(
            parse_request_head(&REQUEST[..80], &limits),
            Err(HandshakeError::HeadTooLarge)
        );
        assert_eq!(
            parse_request_head(REQUEST, &limits),
            Err(HandshakeError::HeadTooLarge)
        );
        let limits = HandshakeLimits {
            max_head_bytes: 8192,
            max_headers: 3,
        };
        let err = parse_request_head(REQUEST, &limits).unwrap_err();
        assert_eq!(err, HandshakeError::TooManyHeaders);
        assert_eq!(err.status(), 431);
        assert_eq!(
            parse_request_head(b"\x00\x01garbage\r\n\r\n", &HandshakeLimits::default()),
            Err(HandshakeError::Malformed)
        );
    }

    #[test]
    fn accepts_rfc_example_key() {
        let upgrade = check_upgrade(&parse(REQUEST)).unwrap();
        // RFC 6455 §1.3 example.
        assert_eq!(upgrade.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(
            upgrade.offered_protocols,
            vec!["centrifuge-protobuf", "centrifuge-json"]
        );
    }

    #[test]
    fn refuses_bad_upgrades_with_their_status() {
        let cases = [
            (
                with_header("Upgrade", None),
                HandshakeError::MissingUpgrade,
                400,
            ),
            (
                with_header("Upgrade", Some("h2c")),
                HandshakeError::MissingUpgrade,
                400,
            ),
            (
                with_header("Connection", Some("keep-alive")),
                HandshakeError::MissingConnectionUpgrade,
                400,
            ),
            (
                with_header("Sec-WebSocket-Version", Some("8")),
                HandshakeError::UnsupportedVersion,
                426,
            ),
            (
                with_header("Sec-WebSocket-Version", None),
                HandshakeError::UnsupportedVersion,
                426,
            ),
            (
                with_header("Sec-WebSocket-Key", None),
                HandshakeError::InvalidKey,
                400,
            ),
            (
                with_header("Sec-WebSocket-Key", Some("c2hvcnQ=")),
                HandshakeError::InvalidKey,
                400,
            ),
            (
                with_header("Sec-WebSocket-Key", Some("not base64 at all!!!!!!!")),
                HandshakeError::InvalidKey,
                400,
            ),
        ];
        for (head, err, status) in cases {
            assert_eq!(check_upgrade(&head), Err(err.clone()));
            assert_eq!(err.status(), status);
        }
        let mut post = parse(REQUEST);
        post.method = "POST".to_owned();
        assert_eq!(check_upgrade(&post), Err(HandshakeError::MethodNotAllowed));
        let mut old = parse(REQUEST);
        old.version = 0;
        assert_eq!(
            check_upgrade(&old),
            Err(HandshakeError::UnsupportedHttpVersion)
        );
    }

    #[test]
    fn responses_are_well_formed_http() {
        let response = upgrade_response("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", Some("centrifuge-json"));
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut parsed = httparse::Response::new(&mut headers);
        assert_eq!(
            parsed.parse(&response).unwrap(),
            httparse::Status::Complete(response.len())
        );
        assert_eq!(parsed.code, Some(101));
        let find = |name: &str| {
            parsed
                .headers
                .iter()
                .find(|h| h.name == name)
                .map(|h| h.value)
        };
        assert_eq!(
            find("Sec-WebSocket-Accept"),
            Some(&b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="[..])
        );
        assert_eq!(
            find("Sec-WebSocket-Protocol"),
            Some(&b"centrifuge-json"[..])
        );

        let response = error_response(426, "unsupported websocket version");
        let text = String::from_utf8(response).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(text.contains("Sec-WebSocket-Version: 13\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nunsupported websocket version\n"));
        assert!(text.contains(&format!(
            "Content-Length: {}\r\n",
            "unsupported websocket version\n".len()
        )));
    }

    #[test]
    fn percent_decoding_keeps_malformed_escapes() {
        assert_eq!(percent_decode("a%2Fb%zz%4"), "a/b%zz%4");
        assert_eq!(percent_decode("%E2%82%AC"), "€");
    }
}
