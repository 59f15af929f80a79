//! What travels through NATS, and on which subjects (Centrifugo's NATS broker layout).
//!
//! | Purpose | Subject | Payload |
//! | --- | --- | --- |
//! | a channel's publications, joins and leaves | `{prefix}.client.{channel}` | Protobuf `Push {channel, pub \| join \| leave}` |
//! | cluster control, every node | `{prefix}.control` | the control message |
//! | cluster control, one node | `{prefix}.node.{node id}` | the control message |
//! | subscription barrier of one node | `{prefix}.sync.{node id}` | 8-byte token |
//!
//! A channel becomes subject tokens where it has dots, so a name that would be a NATS wildcard
//! (`*`, `>`) or not a valid subject (whitespace, an empty token) is refused: subscribing to
//! `news.*` must not receive every `news.` channel. Nothing here trusts its input: a payload
//! that is not a Push of the expected channel decodes to `None`.

use std::sync::Arc;

use prost::Message as _;

use crate::broker::{ClientInfo, Publication, wire};

/// One decoded message of a channel subject.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum ChannelMessage {
    /// A publication (NATS carries no stream position).
    Publication(Arc<Publication>),
    /// A client joined.
    Join(ClientInfo),
    /// A client left.
    Leave(ClientInfo),
}

/// Why a channel cannot be carried by NATS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum SubjectError {
    /// The channel contains `*` or `>`, which NATS reads as wildcards.
    #[error("channel contains a nats wildcard")]
    Wildcard,
    /// The channel is empty, has whitespace or an empty dot-separated token.
    #[error("channel is not a valid nats subject")]
    Invalid,
}

/// The subject of a channel's messages.
pub(super) fn channel_subject(prefix: &str, channel: &str) -> Result<String, SubjectError> {
    if channel.contains(['*', '>']) {
        return Err(SubjectError::Wildcard);
    }
    if channel.is_empty()
        || channel.split('.').any(str::is_empty)
        || channel.chars().any(char::is_whitespace)
    {
        return Err(SubjectError::Invalid);
    }
    Ok(format!("{prefix}.client.{channel}"))
}

/// The subject every node listens on for cluster control.
pub(super) fn control_subject(prefix: &str) -> String {
    format!("{prefix}.control")
}

/// The subject only `node_id` listens on for cluster control.
pub(super) fn node_subject(prefix: &str, node_id: &str) -> String {
    format!("{prefix}.node.{node_id}")
}

/// The subject of a node's subscription barrier (see `NatsBroker::subscribe`).
pub(super) fn sync_subject(prefix: &str, node_id: &str) -> String {
    format!("{prefix}.sync.{node_id}")
}

/// A publication as a Push on the channel's subject.
pub(super) fn publication_message(channel: &str, publication: &Publication) -> Vec<u8> {
    tether_proto::Push {
        channel: channel.to_owned(),
        r#pub: Some(wire::to_proto_publication(publication)),
        ..Default::default()
    }
    .encode_to_vec()
}

/// A join as a Push on the channel's subject.
pub(super) fn join_message(channel: &str, info: &ClientInfo) -> Vec<u8> {
    tether_proto::Push {
        channel: channel.to_owned(),
        join: Some(tether_proto::Join {
            info: Some(wire::to_proto_info(info)),
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// A leave as a Push on the channel's subject.
pub(super) fn leave_message(channel: &str, info: &ClientInfo) -> Vec<u8> {
    tether_proto::Push {
        channel: channel.to_owned(),
        leave: Some(tether_proto::Leave {
            info: Some(wire::to_proto_info(info)),
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Decodes a message received on `channel`'s subject. A Push naming another channel, or
/// carrying none of pub, join, leave (or a join/leave without its client), is rejected.
pub(super) fn decode_message(channel: &str, bytes: &[u8]) -> Option<ChannelMessage> {
    let push = tether_proto::Push::decode(bytes).ok()?;
    if push.channel != channel {
        return None;
    }
    if let Some(publication) = push.r#pub {
        // NATS has no history: whatever offset a publisher put there is not a position.
        return Some(ChannelMessage::Publication(Arc::new(
            wire::from_proto_publication(publication, 0),
        )));
    }
    if let Some(join) = push.join {
        return Some(ChannelMessage::Join(wire::from_proto_info(join.info?)));
    }
    if let Some(leave) = push.leave {
        return Some(ChannelMessage::Leave(wire::from_proto_info(leave.info?)));
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;

    use super::*;

    fn info() -> ClientInfo {
        ClientInfo {
            user: "42".into(),
            client: "c1".into(),
            conn_info: Some(Bytes::from_static(b"{\"name\":\"a\"}")),
            chan_info: None,
        }
    }

    #[test]
    fn subjects_follow_the_centrifugo_layout() {
        assert_eq!(
            channel_subject("tether", "chat:room").as_deref(),
            Ok("tether.client.chat:room")
        );
        assert_eq!(
            channel_subject("p", "a.b#42,43").as_deref(),
            Ok("p.client.a.b#42,43")
        );
        assert_eq!(control_subject("p"), "p.control");
        assert_eq!(node_subject("p", "n-1"), "p.node.n-1");
        assert_eq!(sync_subject("p", "n-1"), "p.sync.n-1");
    }

    #[test]
    fn wildcards_and_invalid_subjects_are_refused() {
        for channel in ["news.*", "news.>", "*", ">", "a*b", "x>"] {
            assert_eq!(
                channel_subject("p", channel),
                Err(SubjectError::Wildcard),
                "{channel}"
            );
        }
        for channel in ["", "a..b", ".a", "a.", "a b", "a\tb", "a\nb"] {
            assert_eq!(
                channel_subject("p", channel),
                Err(SubjectError::Invalid),
                "{channel:?}"
            );
        }
    }

    #[test]
    fn publication_join_and_leave_round_trip() {
        let publication = Publication {
            offset: 0,
            data: Bytes::from_static(b"{\"n\":1}"),
            info: Some(info()),
            tags: BTreeMap::from([("k".to_owned(), "v".to_owned())]),
            delta: true,
            time_ms: 7,
        };
        assert_eq!(
            decode_message("room", &publication_message("room", &publication)),
            Some(ChannelMessage::Publication(Arc::new(publication)))
        );
        assert_eq!(
            decode_message("room", &join_message("room", &info())),
            Some(ChannelMessage::Join(info()))
        );
        assert_eq!(
            decode_message("room", &leave_message("room", &info())),
            Some(ChannelMessage::Leave(info()))
        );
    }

    #[test]
    fn a_foreign_offset_is_not_a_position() {
        let mut push = tether_proto::Push::decode(
            publication_message("room", &Publication::default()).as_slice(),
        )
        .unwrap();
        push.r#pub.as_mut().unwrap().offset = 9;
        let Some(ChannelMessage::Publication(p)) = decode_message("room", &push.encode_to_vec())
        else {
            panic!("not a publication");
        };
        assert_eq!(p.offset, 0);
    }

    #[test]
    fn garbage_and_mismatches_are_rejected_not_panicked_on() {
        let other = publication_message("other", &Publication::default());
        let empty = tether_proto::Push {
            channel: "room".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let join_without_info = tether_proto::Push {
            channel: "room".into(),
            join: Some(tether_proto::Join { info: None }),
            ..Default::default()
        }
        .encode_to_vec();
        for input in [
            &b"\xff\xff\xff\xff"[..],
            b"\x12\x05ro",
            b"__p1:1:e__",
            &other,
            &empty,
            &join_without_info,
        ] {
            assert!(decode_message("room", input).is_none(), "{input:?}");
        }
    }
}
