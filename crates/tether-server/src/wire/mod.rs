//! What a client connection receives, as bytes: a leaf that the hub, the session and the
//! transports share.
//!
//! - [`ws`]: our RFC 6455 server codec (frame reader and unmasked frame encoders).
//! - [`Framing`] and the frame encoders ([`encode_frame`], [`frame_payload`],
//!   [`close_bytes`]): a reply becomes a complete frame for a WebSocket (a text or binary
//!   message) or for raw TCP (the delimited Protobuf reply as it is).
//! - [`Disconnect`] and its [`CloseCode`]: how a connection is told to go.
//! - [`to_proto_publication`] and [`to_proto_info`]: the broker's data as protocol messages.
//! - [`pattern`]: `*` patterns for origins and channel listings.
//!
//! Nothing here holds state or does I/O; it imports only the broker's data types.

pub(crate) mod pattern;
pub mod ws;

use std::fmt;

use bytes::Bytes;
use tether_proto::codes::DisconnectCode;
use tether_proto::{Encoding, Push, Reply};

use crate::broker::{ClientInfo, Publication};

/// How frames for a connection are put on the wire; decides which shared encoding of a
/// publication it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Framing {
    /// RFC 6455 message frames: text for JSON, binary for Protobuf.
    WebSocket,
    /// Raw TCP: a byte stream of uvarint-length-delimited Protobuf replies, so an encoded
    /// reply is its own frame (no header around it).
    Tcp,
}

/// A connection's close code: 3000–4999 for the protocol's disconnects (the ones named in
/// [`DisconnectCode`], or any code the server API's `disconnect` is given), 1xxx for
/// WebSocket-level ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(u16);

impl CloseCode {
    /// The code `code`.
    pub const fn new(code: u16) -> Self {
        Self(code)
    }

    /// The number as it goes on the wire.
    pub const fn get(self) -> u16 {
        self.0
    }

    /// Whether a client told this code should reconnect (the protocol's rule: 3000–3499 and
    /// 4000–4499 do, as do WebSocket-level codes other than 1009).
    pub const fn reconnect(self) -> bool {
        tether_proto::codes::reconnect(self.0)
    }
}

impl From<DisconnectCode> for CloseCode {
    fn from(code: DisconnectCode) -> Self {
        Self(code.code)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why and how a connection is to be closed: its close code and reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disconnect {
    /// The close code.
    pub code: CloseCode,
    /// Short human-readable reason; cut to 123 bytes on the wire.
    pub reason: String,
}

impl Disconnect {
    /// Whether this is the protocol's disconnect `code`.
    pub fn is(&self, code: DisconnectCode) -> bool {
        self.code.get() == code.code
    }
}

impl From<DisconnectCode> for Disconnect {
    fn from(code: DisconnectCode) -> Self {
        Self {
            code: code.into(),
            reason: code.reason.to_owned(),
        }
    }
}

impl From<&ws::WsError> for Disconnect {
    /// A WebSocket protocol violation closes with its RFC 6455 code and says what it was.
    fn from(error: &ws::WsError) -> Self {
        Self {
            code: CloseCode::new(error.close_code()),
            reason: error.to_string(),
        }
    }
}

/// Encodes one reply as a complete wire frame for a connection.
pub fn encode_frame(
    encoding: Encoding,
    framing: Framing,
    reply: &Reply,
) -> Result<Bytes, tether_proto::EncodeError> {
    let mut payload = Vec::with_capacity(64);
    encoding.encode_reply(reply, &mut payload)?;
    Ok(match framing {
        // The delimited reply is the whole frame: hand over the buffer without a copy.
        Framing::Tcp => Bytes::from(payload),
        Framing::WebSocket => frame_payload(encoding, framing, &payload),
    })
}

/// Wraps an encoded payload (one or more replies) in the transport's framing. Raw TCP has
/// none: Protobuf replies carry their own length prefix.
pub fn frame_payload(encoding: Encoding, framing: Framing, payload: &[u8]) -> Bytes {
    match framing {
        Framing::WebSocket => ws::encode_message_frame(encoding == Encoding::Protobuf, payload),
        Framing::Tcp => Bytes::copy_from_slice(payload),
    }
}

/// The bytes that tell the peer its connection ends with `disconnect`: a WebSocket close
/// frame, or on raw TCP a `Disconnect` push (the socket is closed after it).
pub(crate) fn close_bytes(framing: Framing, disconnect: &Disconnect) -> Bytes {
    match framing {
        Framing::WebSocket => ws::encode_close(disconnect.code.get(), &disconnect.reason),
        Framing::Tcp => {
            let reply = Reply {
                push: Some(Push {
                    disconnect: Some(tether_proto::Disconnect {
                        code: u32::from(disconnect.code.get()),
                        reason: disconnect.reason.clone(),
                        reconnect: disconnect.code.reconnect(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let mut out = Vec::with_capacity(disconnect.reason.len() + 16);
            // Encoding a Reply into a growing Vec cannot fail (only JSON bytes fields can).
            let _ = Encoding::Protobuf.encode_reply(&reply, &mut out);
            Bytes::from(out)
        }
    }
}

/// Converts a broker publication into the protocol type with the given wire data.
pub fn to_proto_publication(
    publication: &Publication,
    data: Bytes,
    delta: bool,
) -> tether_proto::Publication {
    tether_proto::Publication {
        data,
        info: publication.info.as_ref().map(to_proto_info),
        offset: publication.offset,
        tags: publication
            .tags
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        delta,
        ..Default::default()
    }
}

/// Converts broker client info into the protocol type.
pub fn to_proto_info(info: &ClientInfo) -> tether_proto::ClientInfo {
    tether_proto::ClientInfo {
        user: info.user.clone(),
        client: info.client.clone(),
        conn_info: info.conn_info.clone().unwrap_or_default(),
        chan_info: info.chan_info.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;

    #[test]
    fn a_tcp_disconnect_push_decodes_with_the_reconnect_flag_of_its_code() {
        for (code, reconnect) in [(3001, true), (3500, false), (1009, false)] {
            let bytes = close_bytes(
                Framing::Tcp,
                &Disconnect {
                    code: CloseCode::new(code),
                    reason: "why".to_owned(),
                },
            );
            let mut buf = BytesMut::from(&bytes[..]);
            let reply = tether_proto::decode_delimited_reply(&mut buf, 1024)
                .unwrap()
                .unwrap();
            assert!(buf.is_empty());
            let d = reply.push.unwrap().disconnect.unwrap();
            assert_eq!(d.code, u32::from(code));
            assert_eq!(d.reason, "why");
            assert_eq!(d.reconnect, reconnect);
        }
    }

    #[test]
    fn a_websocket_disconnect_is_a_close_frame_with_its_code() {
        let bytes = close_bytes(Framing::WebSocket, &DisconnectCode::SHUTDOWN.into());
        assert_eq!(bytes[0], 0x88, "FIN + close opcode");
        assert_eq!(&bytes[2..4], &3001u16.to_be_bytes());
        assert_eq!(&bytes[4..], b"shutdown");
    }
}
