//! Wire types of the Centrifugo client protocol v2, one Rust struct per proto message.
//!
//! Struct and field names follow `definitions/client.proto` of centrifugal/protocol exactly
//! (the keyword fields `pub` and `type` are spelled `r#pub` and `r#type`), and the prost tags
//! follow the field numbers of that file. Every struct derives [`prost::Message`] (which also
//! provides `Default` and `Debug`) for the Protobuf format and [`serde::Deserialize`] for the
//! JSON format; JSON *encoding* is hand-written in the private `json` module because the wire
//! rules (omit zero values except a few, `bytes` embedded as raw JSON) do not fit a derive.
//!
//! Fields of the newer, negotiated extensions that tether does not implement yet are handled in
//! one of two ways: scalar ones are kept so they round-trip, and message-typed ones whose shape
//! still changes between protocol revisions (`SubscribeRequest.tf`, `SubscribeResult.state`,
//! `ConnectResult.dict`, `SubRefreshRequest` fields 3 and up, `SubRefreshResult.items`) are left
//! out: Protobuf skips unknown fields and the JSON decoder ignores unknown keys, so both decode
//! without failing and are ignored.
//!
//! JSON decoding rules carried by the serde attributes: every field is optional (missing = zero
//! value); `null` is accepted for message, `bytes`, repeated and map fields and means "absent";
//! a value of the wrong type for a known key is an error; unknown keys are ignored.

use std::collections::HashMap;

use bytes::Bytes;
use serde::Deserialize;

// === Envelopes ===

/// A request from client to server: an `id` plus at most one request field.
///
/// Not a `oneof` on the wire: the server takes the first non-null request field in the order
/// given by [`Command::method`].
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct Command {
    /// Client-chosen id echoed in the reply; 0 only for the pong (empty command) and `send`.
    #[prost(uint32, tag = "1")]
    pub id: u32,
    /// Connect request; must be the first command of a connection.
    #[prost(message, optional, tag = "4")]
    #[serde(deserialize_with = "crate::json::message")]
    pub connect: Option<ConnectRequest>,
    /// Subscribe request.
    #[prost(message, optional, tag = "5")]
    #[serde(deserialize_with = "crate::json::message")]
    pub subscribe: Option<SubscribeRequest>,
    /// Unsubscribe request.
    #[prost(message, optional, tag = "6")]
    #[serde(deserialize_with = "crate::json::message")]
    pub unsubscribe: Option<UnsubscribeRequest>,
    /// Client-side publish request.
    #[prost(message, optional, tag = "7")]
    #[serde(deserialize_with = "crate::json::message")]
    pub publish: Option<PublishRequest>,
    /// Presence request.
    #[prost(message, optional, tag = "8")]
    #[serde(deserialize_with = "crate::json::message")]
    pub presence: Option<PresenceRequest>,
    /// Presence stats request.
    #[prost(message, optional, tag = "9")]
    #[serde(deserialize_with = "crate::json::message")]
    pub presence_stats: Option<PresenceStatsRequest>,
    /// History request.
    #[prost(message, optional, tag = "10")]
    #[serde(deserialize_with = "crate::json::message")]
    pub history: Option<HistoryRequest>,
    /// Ping request; not supported in protocol v2 (the server answers with bad request).
    #[prost(message, optional, tag = "11")]
    #[serde(deserialize_with = "crate::json::message")]
    pub ping: Option<PingRequest>,
    /// Asynchronous message to the server, sent with id 0 and never answered.
    #[prost(message, optional, tag = "12")]
    #[serde(deserialize_with = "crate::json::message")]
    pub send: Option<SendRequest>,
    /// RPC request.
    #[prost(message, optional, tag = "13")]
    #[serde(deserialize_with = "crate::json::message")]
    pub rpc: Option<RpcRequest>,
    /// Connection token refresh.
    #[prost(message, optional, tag = "14")]
    #[serde(deserialize_with = "crate::json::message")]
    pub refresh: Option<RefreshRequest>,
    /// Subscription token refresh.
    #[prost(message, optional, tag = "15")]
    #[serde(deserialize_with = "crate::json::message")]
    pub sub_refresh: Option<SubRefreshRequest>,
}

/// A message from server to client: a reply to a command (`id > 0`), a push (`id == 0` with
/// `push` set) or, when empty, the server ping.
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct Reply {
    /// Id of the command this answers; 0 for pushes and pings.
    #[prost(uint32, tag = "1")]
    pub id: u32,
    /// Set instead of a result when the command failed.
    #[prost(message, optional, tag = "2")]
    #[serde(deserialize_with = "crate::json::message")]
    pub error: Option<Error>,
    /// Asynchronous server-to-client message.
    #[prost(message, optional, tag = "4")]
    #[serde(deserialize_with = "crate::json::message")]
    pub push: Option<Push>,
    /// Connect result.
    #[prost(message, optional, tag = "5")]
    #[serde(deserialize_with = "crate::json::message")]
    pub connect: Option<ConnectResult>,
    /// Subscribe result.
    #[prost(message, optional, tag = "6")]
    #[serde(deserialize_with = "crate::json::message")]
    pub subscribe: Option<SubscribeResult>,
    /// Unsubscribe result.
    #[prost(message, optional, tag = "7")]
    #[serde(deserialize_with = "crate::json::message")]
    pub unsubscribe: Option<UnsubscribeResult>,
    /// Publish result.
    #[prost(message, optional, tag = "8")]
    #[serde(deserialize_with = "crate::json::message")]
    pub publish: Option<PublishResult>,
    /// Presence result.
    #[prost(message, optional, tag = "9")]
    #[serde(deserialize_with = "crate::json::message")]
    pub presence: Option<PresenceResult>,
    /// Presence stats result.
    #[prost(message, optional, tag = "10")]
    #[serde(deserialize_with = "crate::json::message")]
    pub presence_stats: Option<PresenceStatsResult>,
    /// History result.
    #[prost(message, optional, tag = "11")]
    #[serde(deserialize_with = "crate::json::message")]
    pub history: Option<HistoryResult>,
    /// Ping result (unused in protocol v2).
    #[prost(message, optional, tag = "12")]
    #[serde(deserialize_with = "crate::json::message")]
    pub ping: Option<PingResult>,
    /// RPC result.
    #[prost(message, optional, tag = "13")]
    #[serde(deserialize_with = "crate::json::message")]
    pub rpc: Option<RpcResult>,
    /// Connection refresh result.
    #[prost(message, optional, tag = "14")]
    #[serde(deserialize_with = "crate::json::message")]
    pub refresh: Option<RefreshResult>,
    /// Subscription refresh result.
    #[prost(message, optional, tag = "15")]
    #[serde(deserialize_with = "crate::json::message")]
    pub sub_refresh: Option<SubRefreshResult>,
}

/// An asynchronous server-to-client message, routed by `channel` (or the numeric `id` when
/// channel compaction was negotiated). At most one payload field is set.
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct Push {
    /// Numeric channel id; only when channel compaction was negotiated (tether never sets it).
    #[prost(int64, tag = "1")]
    pub id: i64,
    /// Channel the push belongs to; empty for `message`, `connect`, `disconnect`, `refresh`.
    #[prost(string, tag = "2")]
    pub channel: String,
    /// A publication in the channel.
    #[prost(message, optional, tag = "4")]
    #[serde(deserialize_with = "crate::json::message")]
    pub r#pub: Option<Publication>,
    /// A client joined the channel.
    #[prost(message, optional, tag = "5")]
    #[serde(deserialize_with = "crate::json::message")]
    pub join: Option<Join>,
    /// A client left the channel.
    #[prost(message, optional, tag = "6")]
    #[serde(deserialize_with = "crate::json::message")]
    pub leave: Option<Leave>,
    /// The server unsubscribed the client from the channel.
    #[prost(message, optional, tag = "7")]
    #[serde(deserialize_with = "crate::json::message")]
    pub unsubscribe: Option<Unsubscribe>,
    /// An asynchronous message addressed to this connection (no channel).
    #[prost(message, optional, tag = "8")]
    #[serde(deserialize_with = "crate::json::message")]
    pub message: Option<Message>,
    /// A server-side subscription was created.
    #[prost(message, optional, tag = "9")]
    #[serde(deserialize_with = "crate::json::message")]
    pub subscribe: Option<Subscribe>,
    /// Connect result of a unidirectional transport.
    #[prost(message, optional, tag = "10")]
    #[serde(deserialize_with = "crate::json::message")]
    pub connect: Option<Connect>,
    /// Disconnect advice; only on transports without close frames (never WebSocket).
    #[prost(message, optional, tag = "11")]
    #[serde(deserialize_with = "crate::json::message")]
    pub disconnect: Option<Disconnect>,
    /// Connection refreshed; unidirectional transports only.
    #[prost(message, optional, tag = "12")]
    #[serde(deserialize_with = "crate::json::message")]
    pub refresh: Option<Refresh>,
}

/// An error carried in [`Reply::error`]; see [`crate::codes::ClientError`] for the built-ins.
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct Error {
    /// Error code (100..=113 built in).
    #[prost(uint32, tag = "1")]
    pub code: u32,
    /// Human-readable message.
    #[prost(string, tag = "2")]
    pub message: String,
    /// The SDK retries with backoff when set.
    #[prost(bool, tag = "3")]
    pub temporary: bool,
}

// === Shared messages ===

/// Who a connection is: used in presence, join/leave and client publications.
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct ClientInfo {
    /// User id; empty for anonymous. Always present in JSON.
    #[prost(string, tag = "1")]
    pub user: String,
    /// Connection (client) id. Always present in JSON.
    #[prost(string, tag = "2")]
    pub client: String,
    /// Connection info from the token (raw JSON in the JSON format).
    #[prost(bytes = "bytes", tag = "3")]
    #[serde(deserialize_with = "crate::json::raw_bytes")]
    pub conn_info: Bytes,
    /// Channel info from the subscription token (raw JSON in the JSON format).
    #[prost(bytes = "bytes", tag = "4")]
    #[serde(deserialize_with = "crate::json::raw_bytes")]
    pub chan_info: Bytes,
}

/// A message published into a channel.
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct Publication {
    /// Payload (raw JSON in the JSON format, or a Fossil delta when `delta` is set).
    #[prost(bytes = "bytes", tag = "4")]
    #[serde(deserialize_with = "crate::json::raw_bytes")]
    pub data: Bytes,
    /// Publisher, set for publications that came from a client.
    #[prost(message, optional, tag = "5")]
    #[serde(deserialize_with = "crate::json::message")]
    pub info: Option<ClientInfo>,
    /// Position in the channel stream; the epoch travels in the subscribe result.
    #[prost(uint64, tag = "6")]
    pub offset: u64,
    /// Optional tags.
    #[prost(map = "string, string", tag = "7")]
    #[serde(deserialize_with = "crate::json::nullable")]
    pub tags: HashMap<String, String>,
    /// `data` is a delta against the previous publication's data.
    #[prost(bool, tag = "8")]
    pub delta: bool,
    /// Publication time, Unix milliseconds (optional).
    #[prost(int64, tag = "9")]
    pub time: i64,
    /// Channel, for wildcard subscriptions (extension).
    #[prost(string, tag = "10")]
    pub channel: String,
    /// Map key (map subscriptions extension).
    #[prost(string, tag = "11")]
    pub key: String,
    /// Map removal marker (map subscriptions extension).
    #[prost(bool, tag = "12")]
    pub removed: bool,
    /// Ordering score (map subscriptions extension).
    #[prost(sint64, tag = "13")]
    pub score: i64,
    /// Epoch carried in the publication (broker-internal use).
    #[prost(string, tag = "14")]
    pub epoch: String,
    /// Previous data for delta computation during broker fan-out (broker-internal use).
    #[prost(bytes = "bytes", tag = "15")]
    #[serde(deserialize_with = "crate::json::raw_bytes")]
    pub prev_data: Bytes,
    /// Publication version (extension).
    #[prost(uint64, tag = "16")]
    pub version: u64,
}

/// A position in a channel stream.
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct StreamPosition {
    /// Offset of the last publication seen.
    #[prost(uint64, tag = "1")]
    pub offset: u64,
    /// Incarnation of the stream the offset belongs to.
    #[prost(string, tag = "2")]
    pub epoch: String,
}

/// Join push payload.
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct Join {
    /// The client that joined.
    #[prost(message, optional, tag = "1")]
    #[serde(deserialize_with = "crate::json::message")]
    pub info: Option<ClientInfo>,
}

/// Leave push payload.
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct Leave {
    /// The client that left.
    #[prost(message, optional, tag = "1")]
    #[serde(deserialize_with = "crate::json::message")]
    pub info: Option<ClientInfo>,
}

/// Unsubscribe push payload; see [`crate::codes::UnsubscribeCode`].
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct Unsubscribe {
    /// Unsubscribe code (2000..=2999); `>= 2500` makes the SDK resubscribe.
    #[prost(uint32, tag = "2")]
    pub code: u32,
    /// Short reason text.
    #[prost(string, tag = "3")]
    pub reason: String,
}

/// Message push payload (server-to-connection message without a channel).
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct Message {
    /// Payload (raw JSON in the JSON format).
    #[prost(bytes = "bytes", tag = "1")]
    #[serde(deserialize_with = "crate::json::raw_bytes")]
    pub data: Bytes,
}

/// Subscribe push payload: a server-side subscription was created.
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct Subscribe {
    /// The subscription is recoverable.
    #[prost(bool, tag = "1")]
    pub recoverable: bool,
    /// Current stream epoch.
    #[prost(string, tag = "4")]
    pub epoch: String,
    /// Current stream top offset.
    #[prost(uint64, tag = "5")]
    pub offset: u64,
    /// The subscription is positioned.
    #[prost(bool, tag = "6")]
    pub positioned: bool,
    /// Custom subscription data (raw JSON in the JSON format).
    #[prost(bytes = "bytes", tag = "7")]
    #[serde(deserialize_with = "crate::json::raw_bytes")]
    pub data: Bytes,
}

/// Connect push payload (unidirectional transports).
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct Connect {
    /// Connection id.
    #[prost(string, tag = "1")]
    pub client: String,
    /// Server version.
    #[prost(string, tag = "2")]
    pub version: String,
    /// Custom connect data (raw JSON in the JSON format).
    #[prost(bytes = "bytes", tag = "3")]
    #[serde(deserialize_with = "crate::json::raw_bytes")]
    pub data: Bytes,
    /// Server-side subscriptions by channel.
    #[prost(map = "string, message", tag = "4")]
    #[serde(deserialize_with = "crate::json::message_map")]
    pub subs: HashMap<String, SubscribeResult>,
    /// The connection expires and must be refreshed.
    #[prost(bool, tag = "5")]
    pub expires: bool,
    /// Seconds until expiry.
    #[prost(uint32, tag = "6")]
    pub ttl: u32,
    /// Server ping interval, seconds.
    #[prost(uint32, tag = "7")]
    pub ping: u32,
    /// The server expects pongs.
    #[prost(bool, tag = "8")]
    pub pong: bool,
    /// Session id (emulation transports).
    #[prost(string, tag = "9")]
    pub session: String,
    /// Node id (emulation transports).
    #[prost(string, tag = "10")]
    pub node: String,
    /// Server time, Unix milliseconds (optional).
    #[prost(int64, tag = "11")]
    pub time: i64,
}

/// Disconnect push payload (transports without close frames).
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct Disconnect {
    /// Disconnect code; see [`crate::codes::DisconnectCode`].
    #[prost(uint32, tag = "1")]
    pub code: u32,
    /// Short reason text.
    #[prost(string, tag = "2")]
    pub reason: String,
    /// The client should reconnect.
    #[prost(bool, tag = "3")]
    pub reconnect: bool,
}

/// Refresh push payload (unidirectional transports).
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct Refresh {
    /// The connection expires.
    #[prost(bool, tag = "1")]
    pub expires: bool,
    /// Seconds until expiry.
    #[prost(uint32, tag = "2")]
    pub ttl: u32,
}

// === Requests and results ===

/// Connect request.
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct ConnectRequest {
    /// Connection JWT.
    #[prost(string, tag = "1")]
    pub token: String,
    /// Custom connect data (raw JSON in the JSON format).
    #[prost(bytes = "bytes", tag = "2")]
    #[serde(deserialize_with = "crate::json::raw_bytes")]
    pub data: Bytes,
    /// Recovery positions for server-side subscriptions, by channel.
    #[prost(map = "string, message", tag = "3")]
    #[serde(deserialize_with = "crate::json::message_map")]
    pub subs: HashMap<String, SubscribeRequest>,
    /// SDK name (observability only).
    #[prost(string, tag = "4")]
    pub name: String,
    /// SDK version (observability only).
    #[prost(string, tag = "5")]
    pub version: String,
    /// Headers (emulation of HTTP headers for proxies).
    #[prost(map = "string, string", tag = "6")]
    #[serde(deserialize_with = "crate::json::nullable")]
    pub headers: HashMap<String, String>,
    /// Connection-level feature flags offered by the client.
    #[prost(int64, tag = "7")]
    pub flag: i64,
    /// Compression dictionary offer (extension).
    #[prost(string, tag = "8")]
    pub dict: String,
    /// Compression profile (extension).
    #[prost(string, tag = "9")]
    pub profile: String,
}

/// Connect result.
///
/// `prost::Message` is implemented by hand (in `connect_result`) so that an empty
/// `SubscribeResult` in `subs` is still written: prost leaves default message values out of
/// map entries, which centrifuge-js's protobuf decoder turns into `null`. Go writes them.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ConnectResult {
    /// Connection id (a UUID).
    pub client: String,
    /// Server version; SDKs expect it to be non-empty.
    pub version: String,
    /// The connection expires and must be refreshed.
    pub expires: bool,
    /// Seconds until expiry.
    pub ttl: u32,
    /// Custom connect data (raw JSON in the JSON format).
    #[serde(deserialize_with = "crate::json::raw_bytes")]
    pub data: Bytes,
    /// Server-side subscriptions by channel.
    #[serde(deserialize_with = "crate::json::message_map")]
    pub subs: HashMap<String, SubscribeResult>,
    /// Server ping interval, seconds.
    pub ping: u32,
    /// The server expects pongs.
    pub pong: bool,
    /// Session id (emulation transports).
    pub session: String,
    /// Node id (emulation transports).
    pub node: String,
    /// Server time, Unix milliseconds (optional).
    pub time: i64,
    /// Connection-level feature flags accepted by the server.
    pub flag: i64,
}

/// Connection token refresh request.
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct RefreshRequest {
    /// New connection JWT.
    #[prost(string, tag = "1")]
    pub token: String,
}

/// Connection token refresh result.
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct RefreshResult {
    /// Connection id.
    #[prost(string, tag = "1")]
    pub client: String,
    /// Server version.
    #[prost(string, tag = "2")]
    pub version: String,
    /// The connection still expires.
    #[prost(bool, tag = "3")]
    pub expires: bool,
    /// Seconds until expiry.
    #[prost(uint32, tag = "4")]
    pub ttl: u32,
}

/// Subscribe request.
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct SubscribeRequest {
    /// Channel to subscribe to.
    #[prost(string, tag = "1")]
    pub channel: String,
    /// Subscription JWT.
    #[prost(string, tag = "2")]
    pub token: String,
    /// Recover missed publications since `offset`/`epoch`.
    #[prost(bool, tag = "3")]
    pub recover: bool,
    /// Last seen epoch.
    #[prost(string, tag = "6")]
    pub epoch: String,
    /// Last seen offset.
    #[prost(uint64, tag = "7")]
    pub offset: u64,
    /// Custom subscribe data (raw JSON in the JSON format).
    #[prost(bytes = "bytes", tag = "8")]
    #[serde(deserialize_with = "crate::json::raw_bytes")]
    pub data: Bytes,
    /// Ask for a positioned subscription.
    #[prost(bool, tag = "9")]
    pub positioned: bool,
    /// Ask for a recoverable subscription.
    #[prost(bool, tag = "10")]
    pub recoverable: bool,
    /// Ask for join/leave pushes.
    #[prost(bool, tag = "11")]
    pub join_leave: bool,
    /// Delta compression type requested (`"fossil"`).
    #[prost(string, tag = "12")]
    pub delta: String,
    /// Subscription-level feature flags (bit 0 channel compaction, bit 1 reject unrecovered).
    #[prost(int64, tag = "14")]
    pub flag: i64,
    /// Subscription type (map subscriptions extension; 0 = stream).
    #[prost(int32, tag = "15")]
    pub r#type: i32,
    /// Map subscription phase (extension).
    #[prost(int32, tag = "16")]
    pub phase: i32,
    /// Map pagination cursor (extension).
    #[prost(string, tag = "17")]
    pub cursor: String,
    /// Map pagination limit (extension).
    #[prost(int32, tag = "18")]
    pub limit: i32,
    /// Map pagination order (extension).
    #[prost(bool, tag = "19")]
    pub asc: bool,
}

/// Subscribe result.
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct SubscribeResult {
    /// The subscription expires and must be refreshed.
    #[prost(bool, tag = "1")]
    pub expires: bool,
    /// Seconds until expiry.
    #[prost(uint32, tag = "2")]
    pub ttl: u32,
    /// The subscription is recoverable.
    #[prost(bool, tag = "3")]
    pub recoverable: bool,
    /// Current stream epoch.
    #[prost(string, tag = "6")]
    pub epoch: String,
    /// Recovered publications, in order.
    #[prost(message, repeated, tag = "7")]
    #[serde(deserialize_with = "crate::json::messages")]
    pub publications: Vec<Publication>,
    /// Recovery succeeded (the whole gap is in `publications`).
    #[prost(bool, tag = "8")]
    pub recovered: bool,
    /// Stream top, or the client's own offset after a successful recovery.
    #[prost(uint64, tag = "9")]
    pub offset: u64,
    /// The subscription is positioned.
    #[prost(bool, tag = "10")]
    pub positioned: bool,
    /// Custom subscription data (raw JSON in the JSON format).
    #[prost(bytes = "bytes", tag = "11")]
    #[serde(deserialize_with = "crate::json::raw_bytes")]
    pub data: Bytes,
    /// The client asked for recovery (or the server forced it).
    #[prost(bool, tag = "12")]
    pub was_recovering: bool,
    /// Delta compression was negotiated.
    #[prost(bool, tag = "13")]
    pub delta: bool,
    /// Numeric channel id (channel compaction extension).
    #[prost(int64, tag = "14")]
    pub id: i64,
    /// Echo of the subscription type (extension).
    #[prost(int32, tag = "15")]
    pub r#type: i32,
    /// Result phase (map subscriptions extension).
    #[prost(int32, tag = "16")]
    pub phase: i32,
    /// Next page cursor (map subscriptions extension).
    #[prost(string, tag = "17")]
    pub cursor: String,
    /// Client publish debounce in milliseconds (extension).
    #[prost(uint32, tag = "19")]
    pub publish_debounce: u32,
}

/// Subscription token refresh request.
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct SubRefreshRequest {
    /// Channel of the subscription.
    #[prost(string, tag = "1")]
    pub channel: String,
    /// New subscription JWT.
    #[prost(string, tag = "2")]
    pub token: String,
}

/// Subscription token refresh result.
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct SubRefreshResult {
    /// The subscription still expires.
    #[prost(bool, tag = "1")]
    pub expires: bool,
    /// Seconds until expiry.
    #[prost(uint32, tag = "2")]
    pub ttl: u32,
}

/// Unsubscribe request.
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct UnsubscribeRequest {
    /// Channel to leave.
    #[prost(string, tag = "1")]
    pub channel: String,
}

/// Unsubscribe result (empty).
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct UnsubscribeResult {}

/// Client-side publish request.
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct PublishRequest {
    /// Target channel.
    #[prost(string, tag = "1")]
    pub channel: String,
    /// Payload (raw JSON in the JSON format).
    #[prost(bytes = "bytes", tag = "2")]
    #[serde(deserialize_with = "crate::json::raw_bytes")]
    pub data: Bytes,
    /// Publish type (map subscriptions extension; 0 = regular).
    #[prost(int32, tag = "3")]
    pub r#type: i32,
    /// Map key (extension).
    #[prost(string, tag = "4")]
    pub key: String,
    /// Map removal (extension).
    #[prost(bool, tag = "5")]
    pub removed: bool,
}

/// Publish result (empty).
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct PublishResult {}

/// Presence request.
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct PresenceRequest {
    /// Channel to query.
    #[prost(string, tag = "1")]
    pub channel: String,
}

/// Presence result.
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct PresenceResult {
    /// Clients in the channel by connection id. Always present in JSON.
    #[prost(map = "string, message", tag = "1")]
    #[serde(deserialize_with = "crate::json::message_map")]
    pub presence: HashMap<String, ClientInfo>,
}

/// Presence stats request.
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct PresenceStatsRequest {
    /// Channel to query.
    #[prost(string, tag = "1")]
    pub channel: String,
}

/// Presence stats result.
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct PresenceStatsResult {
    /// Number of connections. Always present in JSON.
    #[prost(uint32, tag = "1")]
    pub num_clients: u32,
    /// Number of distinct users. Always present in JSON.
    #[prost(uint32, tag = "2")]
    pub num_users: u32,
}

/// History request.
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct HistoryRequest {
    /// Channel to query.
    #[prost(string, tag = "1")]
    pub channel: String,
    /// Maximum publications; 0 = position only, negative = server maximum.
    #[prost(int32, tag = "7")]
    pub limit: i32,
    /// Return publications after this position.
    #[prost(message, optional, tag = "8")]
    #[serde(deserialize_with = "crate::json::message")]
    pub since: Option<StreamPosition>,
    /// Newest first.
    #[prost(bool, tag = "9")]
    pub reverse: bool,
}

/// History result.
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct HistoryResult {
    /// Publications. Always present in JSON (`[]` when empty).
    #[prost(message, repeated, tag = "1")]
    #[serde(deserialize_with = "crate::json::messages")]
    pub publications: Vec<Publication>,
    /// Current stream epoch. Always present in JSON.
    #[prost(string, tag = "2")]
    pub epoch: String,
    /// Current stream top offset. Always present in JSON.
    #[prost(uint64, tag = "3")]
    pub offset: u64,
}

/// Ping request (empty; unsupported in protocol v2).
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct PingRequest {}

/// Ping result (empty).
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct PingResult {}

/// Asynchronous message to the server; never answered.
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct SendRequest {
    /// Payload (raw JSON in the JSON format).
    #[prost(bytes = "bytes", tag = "1")]
    #[serde(deserialize_with = "crate::json::raw_bytes")]
    pub data: Bytes,
}

/// RPC request (`RPCRequest` in the proto).
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct RpcRequest {
    /// Payload (raw JSON in the JSON format).
    #[prost(bytes = "bytes", tag = "1")]
    #[serde(deserialize_with = "crate::json::raw_bytes")]
    pub data: Bytes,
    /// RPC method name.
    #[prost(string, tag = "2")]
    pub method: String,
}

/// RPC result (`RPCResult` in the proto).
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default)]
pub struct RpcResult {
    /// Payload (raw JSON in the JSON format).
    #[prost(bytes = "bytes", tag = "1")]
    #[serde(deserialize_with = "crate::json::raw_bytes")]
    pub data: Bytes,
}

// === Command dispatch ===

/// Which request a [`Command`] carries, as the server dispatches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// `connect` request.
    Connect,
    /// `subscribe` request.
    Subscribe,
    /// `unsubscribe` request.
    Unsubscribe,
    /// `publish` request.
    Publish,
    /// `presence` request.
    Presence,
    /// `presence_stats` request.
    PresenceStats,
    /// `history` request.
    History,
    /// `rpc` request.
    Rpc,
    /// `send` (asynchronous message, no reply).
    Send,
    /// `refresh` (connection token refresh).
    Refresh,
    /// `sub_refresh` (subscription token refresh).
    SubRefresh,
    /// Only the `ping` field (11) is set; unsupported in v2, the server answers bad request.
    Ping,
    /// No request field and `id == 0`: the client's answer to a server ping.
    Pong,
    /// No request field but `id != 0`: nothing the server knows (bad request).
    Unknown,
}

/// The request of a [`Command`], taken out by value (see [`Command::into_request`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// `connect` request.
    Connect(ConnectRequest),
    /// `subscribe` request.
    Subscribe(SubscribeRequest),
    /// `unsubscribe` request.
    Unsubscribe(UnsubscribeRequest),
    /// `publish` request.
    Publish(PublishRequest),
    /// `presence` request.
    Presence(PresenceRequest),
    /// `presence_stats` request.
    PresenceStats(PresenceStatsRequest),
    /// `history` request.
    History(HistoryRequest),
    /// `rpc` request.
    Rpc(RpcRequest),
    /// `send` (asynchronous message, no reply).
    Send(SendRequest),
    /// `refresh` request.
    Refresh(RefreshRequest),
    /// `sub_refresh` request.
    SubRefresh(SubRefreshRequest),
    /// Only the unsupported `ping` field was set.
    Ping,
    /// Empty command with id 0 (pong).
    Pong,
    /// Empty command with a non-zero id.
    Unknown,
}

// === impl Command ===

impl Command {
    /// Which request the server dispatches: the first non-null request field in the order
    /// connect, subscribe, unsubscribe, publish, presence, presence_stats, history, rpc, send,
    /// refresh, sub_refresh (Centrifugo's order). Other fields set alongside are ignored. With
    /// none of those set: only `ping` -> [`Method::Ping`]; nothing and `id == 0` ->
    /// [`Method::Pong`]; nothing and `id != 0` -> [`Method::Unknown`].
    #[must_use]
    pub fn method(&self) -> Method {
        if self.connect.is_some() {
            Method::Connect
        } else if self.subscribe.is_some() {
            Method::Subscribe
        } else if self.unsubscribe.is_some() {
            Method::Unsubscribe
        } else if self.publish.is_some() {
            Method::Publish
        } else if self.presence.is_some() {
            Method::Presence
        } else if self.presence_stats.is_some() {
            Method::PresenceStats
        } else if self.history.is_some() {
            Method::History
        } else if self.rpc.is_some() {
            Method::Rpc
        } else if self.send.is_some() {
            Method::Send
        } else if self.refresh.is_some() {
            Method::Refresh
        } else if self.sub_refresh.is_some() {
            Method::SubRefresh
        } else if self.ping.is_some() {
            Method::Ping
        } else if self.id == 0 {
            Method::Pong
        } else {
            Method::Unknown
        }
    }

    /// Splits the command into its id and the request chosen by [`Command::method`]; the other
    /// request fields are dropped.
    #[must_use]
    pub fn into_request(self) -> (u32, Request) {
        let request = match self.method() {
            Method::Connect => self.connect.map(Request::Connect),
            Method::Subscribe => self.subscribe.map(Request::Subscribe),
            Method::Unsubscribe => self.unsubscribe.map(Request::Unsubscribe),
            Method::Publish => self.publish.map(Request::Publish),
            Method::Presence => self.presence.map(Request::Presence),
            Method::PresenceStats => self.presence_stats.map(Request::PresenceStats),
            Method::History => self.history.map(Request::History),
            Method::Rpc => self.rpc.map(Request::Rpc),
            Method::Send => self.send.map(Request::Send),
            Method::Refresh => self.refresh.map(Request::Refresh),
            Method::SubRefresh => self.sub_refresh.map(Request::SubRefresh),
            Method::Ping => Some(Request::Ping),
            Method::Pong => Some(Request::Pong),
            Method::Unknown => Some(Request::Unknown),
        };
        // `method()` only names a field it saw set, so the map above is always `Some`.
        (self.id, request.unwrap_or(Request::Unknown))
    }
}

// === impl Method ===

impl Method {
    /// The proto field name of the request (`"presence_stats"`), or `"ping"`, `"pong"`,
    /// `"unknown"`; for logs and metric labels.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Subscribe => "subscribe",
            Self::Unsubscribe => "unsubscribe",
            Self::Publish => "publish",
            Self::Presence => "presence",
            Self::PresenceStats => "presence_stats",
            Self::History => "history",
            Self::Rpc => "rpc",
            Self::Send => "send",
            Self::Refresh => "refresh",
            Self::SubRefresh => "sub_refresh",
            Self::Ping => "ping",
            Self::Pong => "pong",
            Self::Unknown => "unknown",
        }
    }
}

// === impl Reply ===

impl Reply {
    /// The server ping: an empty reply (`{}` in JSON, a single `0x00` in Protobuf).
    #[must_use]
    pub fn ping() -> Self {
        Self::default()
    }

    /// A push reply (id 0).
    #[must_use]
    pub fn from_push(push: Push) -> Self {
        Self {
            push: Some(push),
            ..Self::default()
        }
    }

    /// An error reply to command `id`.
    #[must_use]
    pub fn from_error(id: u32, error: impl Into<Error>) -> Self {
        Self {
            id,
            error: Some(error.into()),
            ..Self::default()
        }
    }

    /// True for the empty reply the server sends as a ping.
    #[must_use]
    pub fn is_ping(&self) -> bool {
        *self == Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_follows_centrifugo_priority_order() {
        let mut cmd = Command {
            id: 1,
            sub_refresh: Some(SubRefreshRequest::default()),
            ..Command::default()
        };
        assert_eq!(cmd.method(), Method::SubRefresh);
        cmd.refresh = Some(RefreshRequest::default());
        assert_eq!(cmd.method(), Method::Refresh);
        cmd.send = Some(SendRequest::default());
        assert_eq!(cmd.method(), Method::Send);
        cmd.rpc = Some(RpcRequest::default());
        assert_eq!(cmd.method(), Method::Rpc);
        cmd.history = Some(HistoryRequest::default());
        assert_eq!(cmd.method(), Method::History);
        cmd.presence_stats = Some(PresenceStatsRequest::default());
        assert_eq!(cmd.method(), Method::PresenceStats);
        cmd.presence = Some(PresenceRequest::default());
        assert_eq!(cmd.method(), Method::Presence);
        cmd.publish = Some(PublishRequest::default());
        assert_eq!(cmd.method(), Method::Publish);
        cmd.unsubscribe = Some(UnsubscribeRequest::default());
        assert_eq!(cmd.method(), Method::Unsubscribe);
        cmd.subscribe = Some(SubscribeRequest::default());
        assert_eq!(cmd.method(), Method::Subscribe);
        cmd.connect = Some(ConnectRequest::default());
        cmd.ping = Some(PingRequest {});
        assert_eq!(cmd.method(), Method::Connect);
    }

    #[test]
    fn empty_commands_are_pong_ping_or_unknown() {
        assert_eq!(Command::default().method(), Method::Pong);
        let ping_only = Command {
            id: 3,
            ping: Some(PingRequest {}),
            ..Command::default()
        };
        assert_eq!(ping_only.method(), Method::Ping);
        let id_only = Command {
            id: 3,
            ..Command::default()
        };
        assert_eq!(id_only.method(), Method::Unknown);
        assert_eq!(id_only.into_request(), (3, Request::Unknown));
    }

    #[test]
    fn into_request_takes_the_dispatched_field() {
        let cmd = Command {
            id: 7,
            publish: Some(PublishRequest {
                channel: "a".into(),
                ..PublishRequest::default()
            }),
            history: Some(HistoryRequest::default()),
            ..Command::default()
        };
        let (id, req) = cmd.into_request();
        assert_eq!(id, 7);
        assert_eq!(
            req,
            Request::Publish(PublishRequest {
                channel: "a".into(),
                ..PublishRequest::default()
            })
        );
        assert_eq!(Method::PresenceStats.name(), "presence_stats");
    }

    #[test]
    fn reply_helpers() {
        assert!(Reply::ping().is_ping());
        let r = Reply::from_push(Push::default());
        assert!(!r.is_ping());
        assert_eq!(r.id, 0);
    }
}

/// Hand-written Protobuf encoding of [`ConnectResult`] (see its doc for why).
mod connect_result {
    use bytes::{Buf, BufMut};
    use prost::encoding::{
        DecodeContext, WireType, bool as pb_bool, bytes as pb_bytes, encode_key, encode_varint,
        encoded_len_varint, hash_map, int64, key_len, message, skip_field, string, uint32,
    };

    use super::{ConnectResult, SubscribeResult};

    impl prost::Message for ConnectResult {
        fn encode_raw(&self, buf: &mut impl BufMut) {
            if !self.client.is_empty() {
                string::encode(1, &self.client, buf);
            }
            if !self.version.is_empty() {
                string::encode(2, &self.version, buf);
            }
            if self.expires {
                pb_bool::encode(3, &self.expires, buf);
            }
            if self.ttl != 0 {
                uint32::encode(4, &self.ttl, buf);
            }
            if !self.data.is_empty() {
                pb_bytes::encode(5, &self.data, buf);
            }
            let mut channels: Vec<&String> = self.subs.keys().collect();
            channels.sort();
            for channel in channels {
                let result = &self.subs[channel];
                encode_key(6, WireType::LengthDelimited, buf);
                encode_varint(entry_len(channel, result) as u64, buf);
                string::encode(1, channel, buf);
                message::encode(2, result, buf);
            }
            if self.ping != 0 {
                uint32::encode(7, &self.ping, buf);
            }
            if self.pong {
                pb_bool::encode(8, &self.pong, buf);
            }
            if !self.session.is_empty() {
                string::encode(9, &self.session, buf);
            }
            if !self.node.is_empty() {
                string::encode(10, &self.node, buf);
            }
            if self.time != 0 {
                int64::encode(11, &self.time, buf);
            }
            if self.flag != 0 {
                int64::encode(12, &self.flag, buf);
            }
        }

        fn merge_field(
            &mut self,
            tag: u32,
            wire_type: WireType,
            buf: &mut impl Buf,
            ctx: DecodeContext,
        ) -> Result<(), prost::DecodeError> {
            match tag {
                1 => string::merge(wire_type, &mut self.client, buf, ctx),
                2 => string::merge(wire_type, &mut self.version, buf, ctx),
                3 => pb_bool::merge(wire_type, &mut self.expires, buf, ctx),
                4 => uint32::merge(wire_type, &mut self.ttl, buf, ctx),
                5 => pb_bytes::merge(wire_type, &mut self.data, buf, ctx),
                6 => hash_map::merge(string::merge, message::merge, &mut self.subs, buf, ctx),
                7 => uint32::merge(wire_type, &mut self.ping, buf, ctx),
                8 => pb_bool::merge(wire_type, &mut self.pong, buf, ctx),
                9 => string::merge(wire_type, &mut self.session, buf, ctx),
                10 => string::merge(wire_type, &mut self.node, buf, ctx),
                11 => int64::merge(wire_type, &mut self.time, buf, ctx),
                12 => int64::merge(wire_type, &mut self.flag, buf, ctx),
                _ => skip_field(wire_type, tag, buf, ctx),
            }
        }

        fn encoded_len(&self) -> usize {
            let mut len = 0;
            if !self.client.is_empty() {
                len += string::encoded_len(1, &self.client);
            }
            if !self.version.is_empty() {
                len += string::encoded_len(2, &self.version);
            }
            if self.expires {
                len += pb_bool::encoded_len(3, &self.expires);
            }
            if self.ttl != 0 {
                len += uint32::encoded_len(4, &self.ttl);
            }
            if !self.data.is_empty() {
                len += pb_bytes::encoded_len(5, &self.data);
            }
            for (channel, result) in &self.subs {
                let entry = entry_len(channel, result);
                len += key_len(6) + encoded_len_varint(entry as u64) + entry;
            }
            if self.ping != 0 {
                len += uint32::encoded_len(7, &self.ping);
            }
            if self.pong {
                len += pb_bool::encoded_len(8, &self.pong);
            }
            if !self.session.is_empty() {
                len += string::encoded_len(9, &self.session);
            }
            if !self.node.is_empty() {
                len += string::encoded_len(10, &self.node);
            }
            if self.time != 0 {
                len += int64::encoded_len(11, &self.time);
            }
            if self.flag != 0 {
                len += int64::encoded_len(12, &self.flag);
            }
            len
        }

        fn clear(&mut self) {
            *self = Self::default();
        }
    }

    /// A map entry: key and value, both always written.
    fn entry_len(channel: &String, result: &SubscribeResult) -> usize {
        string::encoded_len(1, channel) + message::encoded_len(2, result)
    }

    #[cfg(test)]
    mod tests {
        use prost::Message;

        use super::*;

        #[test]
        fn empty_subscribe_result_in_subs_is_written() {
            let mut result = ConnectResult {
                client: "c".into(),
                ..Default::default()
            };
            result.subs.insert("#42".into(), SubscribeResult::default());
            let bytes = result.encode_to_vec();
            // field 1 "c", then field 6: entry {1: "#42", 2: <empty message>}.
            assert_eq!(bytes, b"\x0a\x01c\x32\x07\x0a\x03#42\x12\x00");
            assert_eq!(ConnectResult::decode(bytes.as_slice()).unwrap(), result);
        }
    }
}
