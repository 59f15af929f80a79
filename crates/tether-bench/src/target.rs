//! The servers under test and what their clients say: the WebSocket path, the messages sent
//! after the upgrade, and how each server's messages are read (subscribed, ping, error,
//! publication).
//!
//! Publications carry a protocol-neutral marker, `@@T<unix µs>S<seq>E`, inside their data;
//! it needs no JSON escaping, so one scan finds it in a Centrifugo push, a NATS `MSG`, a
//! Pusher event (where data is a JSON string) and a raw `ws` broadcast alike.

use std::fmt::Write as _;

use std::sync::LazyLock;

use memchr::memmem::Finder;
use serde::{Deserialize, Serialize};

/// A server under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// tether: Centrifugo protocol v2, JSON over WebSocket.
    Tether,
    /// sockudo: Pusher protocol 7 over WebSocket.
    Sockudo,
    /// nats-server: the NATS text protocol over WebSocket.
    Nats,
    /// node `ws`: a minimal broadcast server (scripts/bench/ws-server).
    Ws,
    /// `tether-bench floor`: the `ws` protocol on a write-only server, the machine's floor.
    Floor,
}

/// Credentials the clients and the publisher need.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Creds {
    /// HS256 secret for tether connection tokens.
    pub token_secret: String,
    /// tether HTTP API key.
    pub api_key: String,
    /// Pusher app id (sockudo).
    pub app_id: String,
    /// Pusher app key (sockudo).
    pub app_key: String,
    /// Pusher app secret (sockudo).
    pub app_secret: String,
}

impl Default for Creds {
    fn default() -> Self {
        Self {
            token_secret: "bench-secret".to_owned(),
            api_key: "bench-api-key".to_owned(),
            app_id: "bench".to_owned(),
            app_key: "bench-key".to_owned(),
            app_secret: "bench-app-secret".to_owned(),
        }
    }
}

/// What one server message meant to the client.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Events {
    /// The subscription is confirmed.
    pub subscribed: bool,
    /// tether: the connect command was answered without an error.
    pub connected: bool,
    /// The server refused something (text of the first error).
    pub error: Option<String>,
    /// Application-level pings answered.
    pub pings: u32,
}

/// A publication marker found in a message: send time (µs since the Unix epoch) and sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marker {
    /// Publish time, µs since the Unix epoch.
    pub sent_us: u64,
    /// Sequence number given by the publisher.
    pub seq: u64,
}

/// Builds the data of one publication: the marker followed by padding up to `size` bytes.
pub fn marker_payload(sent_us: u64, seq: u64, size: usize) -> String {
    let mut s = String::with_capacity(size.max(48));
    // Writing to a String cannot fail.
    let _ = write!(s, "@@T{sent_us}S{seq}E");
    while s.len() < size {
        s.push('x');
    }
    s
}

/// A substring searcher built once: every received message goes through a few of them, on
/// cores the server under test shares.
macro_rules! finder {
    ($name:ident, $needle:literal) => {
        static $name: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new($needle));
    };
}

finder!(MARKER, b"@@T");
finder!(ERROR_KEY, b"\"error\"");
finder!(PUSHER_ESTABLISHED, b"pusher:connection_established");
finder!(PUSHER_SUBSCRIBED, b"pusher_internal:subscription_succeeded");
finder!(PUSHER_PING, b"\"pusher:ping\"");
finder!(PUSHER_ERROR, b"pusher:error");

/// Calls `f` for every complete marker in `buf`; returns the offset of an incomplete marker
/// at the end (to be carried into the next message), if any.
pub fn scan_markers(buf: &[u8], mut f: impl FnMut(Marker)) -> Option<usize> {
    let mut at = 0;
    while let Some(i) = MARKER.find(&buf[at..]) {
        let start = at + i;
        match parse_marker(&buf[start + 3..]) {
            Some((m, used)) => {
                f(m);
                at = start + 3 + used;
            }
            None if buf.len() - start < 48 => return Some(start),
            None => at = start + 3,
        }
    }
    // A message ending in "@" or "@@" may hold the start of a split marker.
    if buf.ends_with(b"@@") {
        Some(buf.len() - 2)
    } else if buf.ends_with(b"@") {
        Some(buf.len() - 1)
    } else {
        None
    }
}

fn parse_marker(b: &[u8]) -> Option<(Marker, usize)> {
    let (sent_us, n1) = digits(b)?;
    if b.get(n1) != Some(&b'S') {
        return None;
    }
    let (seq, n2) = digits(&b[n1 + 1..])?;
    if b.get(n1 + 1 + n2) != Some(&b'E') {
        return None;
    }
    Some((Marker { sent_us, seq }, n1 + n2 + 2))
}

fn digits(b: &[u8]) -> Option<(u64, usize)> {
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    let v = b[..n]
        .iter()
        .fold(0u64, |acc, &c| acc * 10 + u64::from(c - b'0'));
    Some((v, n))
}

impl Target {
    /// Request path of the WebSocket endpoint.
    pub fn ws_path(self, creds: &Creds) -> String {
        match self {
            Self::Tether => "/connection/websocket".to_owned(),
            Self::Sockudo => format!("/app/{}?protocol=7&client=bench&version=1", creds.app_key),
            Self::Nats | Self::Ws | Self::Floor => "/".to_owned(),
        }
    }

    /// Messages to send right after the upgrade (`None` for Pusher, which waits for
    /// `connection_established`). `token` is the tether connection token.
    pub fn open_message(self, channel: &str, token: &str) -> Option<String> {
        match self {
            Self::Tether => Some(format!(
                "{{\"id\":1,\"connect\":{{\"token\":\"{token}\",\"name\":\"bench\"}}}}\n\
                 {{\"id\":2,\"subscribe\":{{\"channel\":\"{channel}\"}}}}"
            )),
            Self::Nats => Some(format!(
                "CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1}}\r\n\
                 SUB {channel} 1\r\nPING\r\n"
            )),
            Self::Ws | Self::Floor => Some(format!("{{\"sub\":\"{channel}\"}}")),
            Self::Sockudo => None,
        }
    }

    /// Reads one complete server message: fills `ev`, appends replies (text payloads, one
    /// per message) to `replies`.
    pub fn on_message(self, msg: &[u8], channel: &str, ev: &mut Events, replies: &mut Vec<String>) {
        match self {
            Self::Tether => {
                for line in msg.split(|&b| b == b'\n') {
                    if line == b"{}" {
                        ev.pings += 1;
                        replies.push("{}".to_owned());
                    } else if line.starts_with(b"{\"id\":2,") || line.starts_with(b"{\"id\":1,") {
                        if ERROR_KEY.find(line).is_some() {
                            set_error(ev, line);
                        } else if line.starts_with(b"{\"id\":2,\"subscribe\"") {
                            ev.subscribed = true;
                        } else if line.starts_with(b"{\"id\":1,\"connect\"") {
                            ev.connected = true;
                        }
                    }
                }
            }
            Self::Nats => {
                for line in msg.split(|&b| b == b'\n') {
                    if line.starts_with(b"PING\r") {
                        ev.pings += 1;
                        replies.push("PONG\r\n".to_owned());
                    } else if line.starts_with(b"PONG\r") {
                        ev.subscribed = true;
                    } else if line.starts_with(b"-ERR") {
                        set_error(ev, line);
                    }
                }
            }
            Self::Sockudo => {
                if PUSHER_ESTABLISHED.find(msg).is_some() {
                    replies.push(format!(
                        "{{\"event\":\"pusher:subscribe\",\"data\":{{\"channel\":\"{channel}\"}}}}"
                    ));
                } else if PUSHER_SUBSCRIBED.find(msg).is_some() {
                    ev.subscribed = true;
                } else if PUSHER_PING.find(msg).is_some() {
                    ev.pings += 1;
                    replies.push("{\"event\":\"pusher:pong\",\"data\":{}}".to_owned());
                } else if PUSHER_ERROR.find(msg).is_some() {
                    set_error(ev, msg);
                }
            }
            Self::Ws | Self::Floor => {
                if msg.starts_with(b"{\"ok\"") {
                    ev.subscribed = true;
                } else if msg.starts_with(b"{\"error\"") {
                    set_error(ev, msg);
                }
            }
        }
    }
}

fn set_error(ev: &mut Events, raw: &[u8]) {
    if ev.error.is_none() {
        let text = String::from_utf8_lossy(&raw[..raw.len().min(200)]).into_owned();
        ev.error = Some(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip_and_split_markers_are_carried() {
        let p = marker_payload(1_700_000_000_123_456, 42, 100);
        assert_eq!(p.len(), 100);
        let msg = format!(
            "{{\"push\":{{\"pub\":{{\"data\":{{\"m\":\"{p}\"}}}}}}}}\n{{\"x\":\"@@T1S2E\"}}"
        );
        let mut got = Vec::new();
        assert_eq!(scan_markers(msg.as_bytes(), |m| got.push(m)), None);
        assert_eq!(
            got,
            vec![
                Marker {
                    sent_us: 1_700_000_000_123_456,
                    seq: 42
                },
                Marker { sent_us: 1, seq: 2 }
            ]
        );
        let cut = b"MSG a 1 9\r\n@@T12S";
        let mut none = Vec::new();
        assert_eq!(scan_markers(cut, |m| none.push(m)), Some(11));
        assert!(none.is_empty());
        assert_eq!(scan_markers(b"abc@", |_| ()), Some(3));
        assert_eq!(scan_markers(b"@@Tzz", |_| ()), Some(0));
    }

    #[test]
    fn tether_messages_are_read() {
        let mut ev = Events::default();
        let mut replies = Vec::new();
        let msg = b"{\"id\":1,\"connect\":{\"client\":\"x\"}}\n{\"id\":2,\"subscribe\":{}}\n{}";
        Target::Tether.on_message(msg, "c", &mut ev, &mut replies);
        assert!(ev.subscribed && ev.connected);
        assert_eq!((ev.pings, replies), (1, vec!["{}".to_owned()]));
        let mut ev = Events::default();
        Target::Tether.on_message(
            b"{\"id\":2,\"error\":{\"code\":103}}",
            "c",
            &mut ev,
            &mut Vec::new(),
        );
        assert!(!ev.subscribed && ev.error.is_some());
    }

    #[test]
    fn nats_and_pusher_messages_are_read() {
        let mut ev = Events::default();
        let mut replies = Vec::new();
        Target::Nats.on_message(b"INFO {}\r\nPING\r\nPONG\r\n", "c", &mut ev, &mut replies);
        assert!(ev.subscribed);
        assert_eq!(replies, vec!["PONG\r\n".to_owned()]);

        let mut ev = Events::default();
        let mut replies = Vec::new();
        let est = br#"{"event":"pusher:connection_established","data":"{}"}"#;
        Target::Sockudo.on_message(est, "room", &mut ev, &mut replies);
        assert_eq!(
            replies,
            vec![r#"{"event":"pusher:subscribe","data":{"channel":"room"}}"#.to_owned()]
        );
        let ok = br#"{"event":"pusher_internal:subscription_succeeded","channel":"room"}"#;
        Target::Sockudo.on_message(ok, "room", &mut ev, &mut replies);
        assert!(ev.subscribed);
    }
}
