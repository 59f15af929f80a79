//! Wire types and codecs of the Centrifugo client protocol v2, which tether speaks so that the
//! unmodified Centrifugo SDKs work against it.
//!
//! This crate is sans-IO: it turns bytes into [`Command`]s and [`Reply`]s into bytes, and knows
//! nothing about sockets, tasks or time. The server, the Rust SDK, the load generator and the
//! fuzz targets all share it, so a wire rule lives in exactly one place.
//!
//! # Layout
//!
//! - [`protocol`]: one struct per proto message (`Command`, `Reply`, `Push`, `Publication`, the
//!   requests and results), Protobuf via `prost` derive, JSON decoding via `serde` derive; plus
//!   [`Method`] / [`Request`], which request a command carries as the server dispatches it.
//! - [`codes`]: client error codes (100–113), disconnect codes (3xxx) with the reconnect
//!   ranges, unsubscribe codes (2xxx).
//! - [`codec`]: [`Encoding`] (JSON or Protobuf) decodes a whole transport frame into commands
//!   or replies (eagerly into a `Vec`, or lazily through [`Messages`]) and encodes replies (or
//!   commands) back; the varint-delimited stream helpers serve raw TCP. Re-exports the error
//!   types.
//! - `error` (private): [`DecodeError`] and [`EncodeError`], shared by `codec` and `json` so
//!   neither imports the other; re-exported here and from [`codec`].
//! - `json` (private): the hand-written JSON encoder (omit-empty, raw-JSON `bytes` fields,
//!   field-number key order) and the serde helpers used by the decoders.
//!
//! # Example
//!
//! ```
//! use tether_proto::{Encoding, Method, Reply, PresenceStatsResult};
//!
//! let cmds = Encoding::Json
//!     .decode_commands(b"{\"id\":4,\"presence_stats\":{\"channel\":\"chat:1\"}}\n{}")
//!     .unwrap();
//! assert_eq!(cmds[0].method(), Method::PresenceStats);
//! assert_eq!(cmds[1].method(), Method::Pong);
//!
//! let reply = Reply {
//!     id: 4,
//!     presence_stats: Some(PresenceStatsResult { num_clients: 1, num_users: 1 }),
//!     ..Reply::default()
//! };
//! let mut out = Vec::new();
//! Encoding::Json.encode_reply(&reply, &mut out).unwrap();
//! assert_eq!(out, br#"{"id":4,"presence_stats":{"num_clients":1,"num_users":1}}"#);
//! ```

pub mod codec;
pub mod codes;
mod error;
mod json;
pub mod protocol;

pub use codec::{
    Encoding, Messages, decode_delimited_command, decode_delimited_reply, encode_delimited_command,
    encode_delimited_reply,
};
pub use codes::{ClientError, DisconnectCode, UnsubscribeCode};
pub use error::{DecodeError, EncodeError};
pub use protocol::*;
