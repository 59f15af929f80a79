//! Conversions between the broker's types and the protocol's Protobuf messages, shared by the
//! engines that carry publications and client infos between nodes (Redis, NATS).
//!
//! The protocol's own `Publication` and `ClientInfo` messages are the payloads on the wire, so
//! a message written by one node is read by any other without a format of our own.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::{ClientInfo, Publication};

/// The Protobuf form of a publication; the offset is left 0 (it travels beside the payload).
pub(super) fn to_proto_publication(publication: &Publication) -> tether_proto::Publication {
    tether_proto::Publication {
        data: publication.data.clone(),
        info: publication.info.as_ref().map(to_proto_info),
        offset: 0,
        tags: publication
            .tags
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        delta: publication.delta,
        time: publication.time_ms,
        ..Default::default()
    }
}

/// A publication from its Protobuf form; `offset` comes from where it was found.
pub(super) fn from_proto_publication(p: tether_proto::Publication, offset: u64) -> Publication {
    Publication {
        offset,
        data: p.data,
        info: p.info.map(from_proto_info),
        tags: p.tags.into_iter().collect::<BTreeMap<_, _>>(),
        delta: p.delta,
        time_ms: p.time,
    }
}

/// The Protobuf form of a client info (empty info fields stand for absent ones).
pub(super) fn to_proto_info(info: &ClientInfo) -> tether_proto::ClientInfo {
    tether_proto::ClientInfo {
        user: info.user.clone(),
        client: info.client.clone(),
        conn_info: info.conn_info.clone().unwrap_or_default(),
        chan_info: info.chan_info.clone().unwrap_or_default(),
    }
}

/// A client info from its Protobuf form.
pub(super) fn from_proto_info(info: tether_proto::ClientInfo) -> ClientInfo {
    let some = |b: Bytes| (!b.is_empty()).then_some(b);
    ClientInfo {
        user: info.user,
        client: info.client,
        conn_info: some(info.conn_info),
        chan_info: some(info.chan_info),
    }
}
