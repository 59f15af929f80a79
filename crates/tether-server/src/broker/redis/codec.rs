//! What travels through Redis: publications and client infos as Protobuf (the protocol's own
//! `Publication` and `ClientInfo` messages), and the Pub/Sub message framing.
//!
//! Pub/Sub messages on a channel's `{prefix}.client.{channel}` (the Lua publish script writes
//! the first two, so position and payload leave Redis in one atomic step):
//!
//! - `__p1:<offset>:<epoch>__<publication>`: a publication; offset 0 and an empty epoch for
//!   a channel without history.
//! - `__d1:<offset>:<epoch>:<prev_len>:<prev>:<len>:<publication>`: a delta-candidate
//!   publication carrying the stream's previous publication, so every node can compute the
//!   fossil delta without another round trip (Centrifugo's format).
//! - `__j__<client info>` and `__l__<client info>`: a join and a leave.
//!
//! Nothing here trusts its input: a malformed message decodes to `None`.

use std::sync::Arc;

use prost::Message as _;

use crate::broker::{ClientInfo, Publication, StreamPosition, wire};

/// One decoded Pub/Sub message of a channel.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum ChannelMessage {
    /// A publication with its position (`None` without history) and, for delta candidates,
    /// the previous publication of the stream.
    Publication {
        publication: Arc<Publication>,
        position: Option<StreamPosition>,
        previous: Option<Arc<Publication>>,
    },
    /// A client joined.
    Join(ClientInfo),
    /// A client left.
    Leave(ClientInfo),
}

/// Protobuf bytes of a publication as stored in a stream entry and sent over Pub/Sub.
pub(super) fn encode_publication(publication: &Publication) -> Vec<u8> {
    wire::to_proto_publication(publication).encode_to_vec()
}

/// Decodes a publication; `offset` comes from where it was found (stream id or message).
pub(super) fn decode_publication(bytes: &[u8], offset: u64) -> Option<Publication> {
    let p = tether_proto::Publication::decode(bytes).ok()?;
    Some(wire::from_proto_publication(p, offset))
}

/// Protobuf bytes of a client info (presence values, join and leave messages).
pub(super) fn encode_info(info: &ClientInfo) -> Vec<u8> {
    wire::to_proto_info(info).encode_to_vec()
}

/// Decodes a client info.
pub(super) fn decode_info(bytes: &[u8]) -> Option<ClientInfo> {
    tether_proto::ClientInfo::decode(bytes)
        .ok()
        .map(wire::from_proto_info)
}

/// A join message.
pub(super) fn join_message(info: &ClientInfo) -> Vec<u8> {
    let mut out = JOIN.to_vec();
    out.extend_from_slice(&encode_info(info));
    out
}

/// A leave message.
pub(super) fn leave_message(info: &ClientInfo) -> Vec<u8> {
    let mut out = LEAVE.to_vec();
    out.extend_from_slice(&encode_info(info));
    out
}

/// Decodes a channel's Pub/Sub message.
pub(super) fn decode_message(bytes: &[u8]) -> Option<ChannelMessage> {
    if let Some(rest) = bytes.strip_prefix(JOIN) {
        return decode_info(rest).map(ChannelMessage::Join);
    }
    if let Some(rest) = bytes.strip_prefix(LEAVE) {
        return decode_info(rest).map(ChannelMessage::Leave);
    }
    if let Some(rest) = bytes.strip_prefix(b"__p1:") {
        let (offset, rest) = split_once(rest, b':')?;
        let offset = parse_u64(offset)?;
        let end = find(rest, b"__")?;
        let epoch = std::str::from_utf8(&rest[..end]).ok()?;
        let publication = decode_publication(&rest[end + 2..], offset)?;
        return Some(ChannelMessage::Publication {
            publication: Arc::new(publication),
            position: position(offset, epoch),
            previous: None,
        });
    }
    if let Some(rest) = bytes.strip_prefix(b"__d1:") {
        let (offset, rest) = split_once(rest, b':')?;
        let offset = parse_u64(offset)?;
        let (epoch, rest) = split_once(rest, b':')?;
        let epoch = std::str::from_utf8(epoch).ok()?;
        let (prev, rest) = length_prefixed(rest)?;
        let (payload, rest) = length_prefixed(rest)?;
        if !rest.is_empty() {
            return None;
        }
        let publication = decode_publication(payload, offset)?;
        let previous = if prev.is_empty() {
            None
        } else {
            Some(Arc::new(decode_publication(prev, offset.checked_sub(1)?)?))
        };
        return Some(ChannelMessage::Publication {
            publication: Arc::new(publication),
            position: position(offset, epoch),
            previous,
        });
    }
    None
}

fn position(offset: u64, epoch: &str) -> Option<StreamPosition> {
    (offset > 0).then(|| StreamPosition {
        offset,
        epoch: epoch.to_owned(),
    })
}

/// `<len>:<bytes>` followed by an optional `:`; returns the bytes and what follows.
fn length_prefixed(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = split_once(input, b':')?;
    let len = usize::try_from(parse_u64(len)?).ok()?;
    if rest.len() < len {
        return None;
    }
    let (value, rest) = rest.split_at(len);
    let rest = rest.strip_prefix(b":").unwrap_or(rest);
    Some((value, rest))
}

fn split_once(input: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let at = input.iter().position(|b| *b == sep)?;
    Some((&input[..at], &input[at + 1..]))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

const JOIN: &[u8] = b"__j__";
const LEAVE: &[u8] = b"__l__";

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;

    use super::*;

    fn publication() -> Publication {
        Publication {
            offset: 0,
            data: Bytes::from_static(b"{\"a\":1}"),
            info: Some(ClientInfo {
                user: "u".into(),
                client: "c".into(),
                conn_info: Some(Bytes::from_static(b"{}")),
                chan_info: None,
            }),
            tags: BTreeMap::from([("k".to_owned(), "v".to_owned())]),
            delta: true,
            time_ms: 42,
        }
    }

    #[test]
    fn positioned_publication_round_trips() {
        let mut message = b"__p1:7:abcdEFGH__".to_vec();
        message.extend_from_slice(&encode_publication(&publication()));
        let Some(ChannelMessage::Publication {
            publication: p,
            position,
            previous,
        }) = decode_message(&message)
        else {
            panic!("not a publication");
        };
        assert_eq!(
            *p,
            Publication {
                offset: 7,
                ..publication()
            }
        );
        assert_eq!(
            position,
            Some(StreamPosition {
                offset: 7,
                epoch: "abcdEFGH".into()
            })
        );
        assert!(previous.is_none());
    }

    #[test]
    fn unpositioned_publication_has_no_position() {
        let mut message = b"__p1:0:__".to_vec();
        message.extend_from_slice(&encode_publication(&publication()));
        let Some(ChannelMessage::Publication { position, .. }) = decode_message(&message) else {
            panic!("not a publication");
        };
        assert_eq!(position, None);
    }

    #[test]
    fn delta_message_carries_previous() {
        let prev = encode_publication(&Publication {
            data: Bytes::from_static(b"old"),
            ..Default::default()
        });
        let cur = encode_publication(&publication());
        let mut message = format!("__d1:3:ep:{}:", prev.len()).into_bytes();
        message.extend_from_slice(&prev);
        message.extend_from_slice(format!(":{}:", cur.len()).as_bytes());
        message.extend_from_slice(&cur);
        let Some(ChannelMessage::Publication {
            publication: p,
            previous,
            position,
        }) = decode_message(&message)
        else {
            panic!("not a publication");
        };
        assert_eq!(p.offset, 3);
        assert_eq!(position.map(|p| p.epoch), Some("ep".to_owned()));
        let previous = previous.expect("previous");
        assert_eq!(previous.offset, 2);
        assert_eq!(previous.data, Bytes::from_static(b"old"));
    }

    #[test]
    fn join_and_leave_round_trip() {
        let info = publication().info.expect("info");
        assert_eq!(
            decode_message(&join_message(&info)),
            Some(ChannelMessage::Join(info.clone()))
        );
        assert_eq!(
            decode_message(&leave_message(&info)),
            Some(ChannelMessage::Leave(info))
        );
    }

    #[test]
    fn garbage_is_rejected_not_panicked_on() {
        for input in [
            &b""[..],
            b"__p1:",
            b"__p1:x:e__",
            b"__p1:1:e",
            b"__d1:1:e:99:ab",
            b"__d1:1:e:2:ab:5:abc",
            b"__j__\xff\xff\xff",
            b"random",
        ] {
            assert!(decode_message(input).is_none(), "{input:?}");
        }
    }
}
