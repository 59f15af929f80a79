//! The gRPC proxy's messages: Centrifugo v6's `proxyproto` (package
//! `centrifugal.centrifugo.proxy`, service `CentrifugoProxy`), field for field with the same
//! numbers, written out with prost's derive instead of generated from a `.proto` file.
//!
//! Only the events tether calls are here (the unary Connect, Refresh, Subscribe, Publish, RPC,
//! SubRefresh, and the server-streaming SubscribeUnidirectional). Centrifugo PRO's fields (`labels`, `caps`, `allow`, `server_tags_filter`) are
//! left out: a backend that sets them is read as if it had not, as Centrifugo OSS does. The
//! module is public so that a Rust backend can answer tether with the same types (the tests
//! do).

// The fields are the protocol's, named as in Centrifugo's `proxy.proto`; what each means is in
// docs/proxy.md and on the request and result types of `super::protocol`.
#![allow(missing_docs)]

use std::collections::HashMap;

use bytes::Bytes;

/// The service's full name, as it appears in every method path.
pub const SERVICE: &str = "centrifugal.centrifugo.proxy.CentrifugoProxy";

/// The method paths tether calls.
pub mod method {
    /// `Connect(ConnectRequest) returns (ConnectResponse)`.
    pub const CONNECT: &str = "/centrifugal.centrifugo.proxy.CentrifugoProxy/Connect";
    /// `Refresh(RefreshRequest) returns (RefreshResponse)`.
    pub const REFRESH: &str = "/centrifugal.centrifugo.proxy.CentrifugoProxy/Refresh";
    /// `Subscribe(SubscribeRequest) returns (SubscribeResponse)`.
    pub const SUBSCRIBE: &str = "/centrifugal.centrifugo.proxy.CentrifugoProxy/Subscribe";
    /// `Publish(PublishRequest) returns (PublishResponse)`.
    pub const PUBLISH: &str = "/centrifugal.centrifugo.proxy.CentrifugoProxy/Publish";
    /// `RPC(RPCRequest) returns (RPCResponse)`.
    pub const RPC: &str = "/centrifugal.centrifugo.proxy.CentrifugoProxy/RPC";
    /// `SubRefresh(SubRefreshRequest) returns (SubRefreshResponse)`.
    pub const SUB_REFRESH: &str = "/centrifugal.centrifugo.proxy.CentrifugoProxy/SubRefresh";
    /// `SubscribeUnidirectional(SubscribeRequest) returns (stream StreamSubscribeResponse)`.
    pub const SUBSCRIBE_UNIDIRECTIONAL: &str =
        "/centrifugal.centrifugo.proxy.CentrifugoProxy/SubscribeUnidirectional";
    /// `SubscribeBidirectional(stream StreamSubscribeRequest) returns (stream
    /// StreamSubscribeResponse)`.
    pub const SUBSCRIBE_BIDIRECTIONAL: &str =
        "/centrifugal.centrifugo.proxy.CentrifugoProxy/SubscribeBidirectional";
}

/// An error for the client.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Error {
    #[prost(uint32, tag = "1")]
    pub code: u32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(bool, tag = "3")]
    pub temporary: bool,
}

/// A disconnect for the client (number 3, the old `reconnect`, is reserved).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Disconnect {
    #[prost(uint32, tag = "1")]
    pub code: u32,
    #[prost(string, tag = "2")]
    pub reason: String,
}

/// A boolean that can be absent.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct BoolValue {
    #[prost(bool, tag = "1")]
    pub value: bool,
}

/// Per-subscription overrides of namespace options.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct SubscribeOptionOverride {
    #[prost(message, optional, tag = "1")]
    pub presence: Option<BoolValue>,
    #[prost(message, optional, tag = "2")]
    pub join_leave: Option<BoolValue>,
    #[prost(message, optional, tag = "3")]
    pub force_recovery: Option<BoolValue>,
    #[prost(message, optional, tag = "4")]
    pub force_positioning: Option<BoolValue>,
    #[prost(message, optional, tag = "5")]
    pub force_push_join_leave: Option<BoolValue>,
}

/// `Connect`'s request: a client connected without a token.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConnectRequest {
    #[prost(string, tag = "1")]
    pub client: String,
    #[prost(string, tag = "2")]
    pub transport: String,
    #[prost(string, tag = "3")]
    pub protocol: String,
    #[prost(string, tag = "4")]
    pub encoding: String,
    #[prost(bytes = "bytes", tag = "10")]
    pub data: Bytes,
    #[prost(string, tag = "11")]
    pub b64data: String,
    #[prost(string, tag = "12")]
    pub name: String,
    #[prost(string, tag = "13")]
    pub version: String,
    #[prost(string, repeated, tag = "14")]
    pub channels: Vec<String>,
}

/// Options of one server-side subscription of a connect result.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SubscribeOptions {
    #[prost(int64, tag = "1")]
    pub expire_at: i64,
    #[prost(bytes = "bytes", tag = "2")]
    pub info: Bytes,
    #[prost(string, tag = "3")]
    pub b64info: String,
    #[prost(bytes = "bytes", tag = "4")]
    pub data: Bytes,
    #[prost(string, tag = "5")]
    pub b64data: String,
    #[prost(message, optional, tag = "6")]
    pub r#override: Option<SubscribeOptionOverride>,
    #[prost(bool, tag = "8")]
    pub cache_recover: bool,
}

/// `Connect`'s result.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConnectResult {
    #[prost(string, tag = "1")]
    pub user: String,
    #[prost(int64, tag = "2")]
    pub expire_at: i64,
    #[prost(bytes = "bytes", tag = "3")]
    pub info: Bytes,
    #[prost(string, tag = "4")]
    pub b64info: String,
    #[prost(bytes = "bytes", tag = "5")]
    pub data: Bytes,
    #[prost(string, tag = "6")]
    pub b64data: String,
    #[prost(string, repeated, tag = "7")]
    pub channels: Vec<String>,
    #[prost(map = "string, message", tag = "8")]
    pub subs: HashMap<String, SubscribeOptions>,
    #[prost(bytes = "bytes", tag = "9")]
    pub meta: Bytes,
}

/// `Connect`'s response.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConnectResponse {
    #[prost(message, optional, tag = "1")]
    pub result: Option<ConnectResult>,
    #[prost(message, optional, tag = "2")]
    pub error: Option<Error>,
    #[prost(message, optional, tag = "3")]
    pub disconnect: Option<Disconnect>,
}

/// `Refresh`'s request: a connection's credentials expire.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RefreshRequest {
    #[prost(string, tag = "1")]
    pub client: String,
    #[prost(string, tag = "2")]
    pub transport: String,
    #[prost(string, tag = "3")]
    pub protocol: String,
    #[prost(string, tag = "4")]
    pub encoding: String,
    #[prost(string, tag = "10")]
    pub user: String,
    #[prost(bytes = "bytes", tag = "11")]
    pub meta: Bytes,
}

/// `Refresh`'s result.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RefreshResult {
    #[prost(bool, tag = "1")]
    pub expired: bool,
    #[prost(int64, tag = "2")]
    pub expire_at: i64,
    #[prost(bytes = "bytes", tag = "3")]
    pub info: Bytes,
    #[prost(string, tag = "4")]
    pub b64info: String,
    #[prost(bytes = "bytes", tag = "5")]
    pub meta: Bytes,
}

/// `Refresh`'s response.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RefreshResponse {
    #[prost(message, optional, tag = "1")]
    pub result: Option<RefreshResult>,
    #[prost(message, optional, tag = "2")]
    pub error: Option<Error>,
    #[prost(message, optional, tag = "3")]
    pub disconnect: Option<Disconnect>,
}

/// `Subscribe`'s request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SubscribeRequest {
    #[prost(string, tag = "1")]
    pub client: String,
    #[prost(string, tag = "2")]
    pub transport: String,
    #[prost(string, tag = "3")]
    pub protocol: String,
    #[prost(string, tag = "4")]
    pub encoding: String,
    #[prost(string, tag = "10")]
    pub user: String,
    #[prost(string, tag = "11")]
    pub channel: String,
    /// Always empty: a subscribe with a token is checked by tether and never proxied.
    #[prost(string, tag = "12")]
    pub token: String,
    #[prost(bytes = "bytes", tag = "13")]
    pub meta: Bytes,
    #[prost(bytes = "bytes", tag = "14")]
    pub data: Bytes,
    #[prost(string, tag = "15")]
    pub b64data: String,
}

/// `Subscribe`'s result.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SubscribeResult {
    #[prost(int64, tag = "1")]
    pub expire_at: i64,
    #[prost(bytes = "bytes", tag = "2")]
    pub info: Bytes,
    #[prost(string, tag = "3")]
    pub b64info: String,
    #[prost(bytes = "bytes", tag = "4")]
    pub data: Bytes,
    #[prost(string, tag = "5")]
    pub b64data: String,
    #[prost(message, optional, tag = "6")]
    pub r#override: Option<SubscribeOptionOverride>,
}

/// `Subscribe`'s response.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SubscribeResponse {
    #[prost(message, optional, tag = "1")]
    pub result: Option<SubscribeResult>,
    #[prost(message, optional, tag = "2")]
    pub error: Option<Error>,
    #[prost(message, optional, tag = "3")]
    pub disconnect: Option<Disconnect>,
}

/// A publication on a subscription stream (numbers 1, 2, 3, 5 and 6 are reserved).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Publication {
    #[prost(bytes = "bytes", tag = "4")]
    pub data: Bytes,
    #[prost(map = "string, string", tag = "7")]
    pub tags: HashMap<String, String>,
}

/// A message of a subscription stream from the backend: the first carries
/// `subscribe_response`, the later ones `publication`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamSubscribeResponse {
    #[prost(message, optional, tag = "1")]
    pub subscribe_response: Option<SubscribeResponse>,
    #[prost(message, optional, tag = "2")]
    pub publication: Option<Publication>,
}

/// A message of a bidirectional subscription stream to the backend: the first carries
/// `subscribe_request`, the later ones a client's `publication`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamSubscribeRequest {
    #[prost(message, optional, tag = "1")]
    pub subscribe_request: Option<SubscribeRequest>,
    #[prost(message, optional, tag = "2")]
    pub publication: Option<Publication>,
}

/// `Publish`'s request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PublishRequest {
    #[prost(string, tag = "1")]
    pub client: String,
    #[prost(string, tag = "2")]
    pub transport: String,
    #[prost(string, tag = "3")]
    pub protocol: String,
    #[prost(string, tag = "4")]
    pub encoding: String,
    #[prost(string, tag = "10")]
    pub user: String,
    #[prost(string, tag = "11")]
    pub channel: String,
    #[prost(bytes = "bytes", tag = "12")]
    pub data: Bytes,
    #[prost(string, tag = "13")]
    pub b64data: String,
    #[prost(bytes = "bytes", tag = "14")]
    pub meta: Bytes,
}

/// `Publish`'s result.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PublishResult {
    #[prost(bytes = "bytes", tag = "1")]
    pub data: Bytes,
    #[prost(string, tag = "2")]
    pub b64data: String,
    #[prost(bool, tag = "3")]
    pub skip_history: bool,
    #[prost(map = "string, string", tag = "4")]
    pub tags: HashMap<String, String>,
    #[prost(string, tag = "5")]
    pub idempotency_key: String,
    #[prost(bool, tag = "6")]
    pub delta: bool,
    #[prost(uint64, tag = "7")]
    pub version: u64,
    #[prost(string, tag = "8")]
    pub version_epoch: String,
}

/// `Publish`'s response.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PublishResponse {
    #[prost(message, optional, tag = "1")]
    pub result: Option<PublishResult>,
    #[prost(message, optional, tag = "2")]
    pub error: Option<Error>,
    #[prost(message, optional, tag = "3")]
    pub disconnect: Option<Disconnect>,
}

/// `RPC`'s request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcRequest {
    #[prost(string, tag = "1")]
    pub client: String,
    #[prost(string, tag = "2")]
    pub transport: String,
    #[prost(string, tag = "3")]
    pub protocol: String,
    #[prost(string, tag = "4")]
    pub encoding: String,
    #[prost(string, tag = "10")]
    pub user: String,
    #[prost(string, tag = "11")]
    pub method: String,
    #[prost(bytes = "bytes", tag = "12")]
    pub data: Bytes,
    #[prost(string, tag = "13")]
    pub b64data: String,
    #[prost(bytes = "bytes", tag = "14")]
    pub meta: Bytes,
}

/// `RPC`'s result.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcResult {
    #[prost(bytes = "bytes", tag = "1")]
    pub data: Bytes,
    #[prost(string, tag = "2")]
    pub b64data: String,
}

/// `RPC`'s response.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcResponse {
    #[prost(message, optional, tag = "1")]
    pub result: Option<RpcResult>,
    #[prost(message, optional, tag = "2")]
    pub error: Option<Error>,
    #[prost(message, optional, tag = "3")]
    pub disconnect: Option<Disconnect>,
}

/// `SubRefresh`'s request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SubRefreshRequest {
    #[prost(string, tag = "1")]
    pub client: String,
    #[prost(string, tag = "2")]
    pub transport: String,
    #[prost(string, tag = "3")]
    pub protocol: String,
    #[prost(string, tag = "4")]
    pub encoding: String,
    #[prost(string, tag = "10")]
    pub user: String,
    #[prost(string, tag = "11")]
    pub channel: String,
    #[prost(bytes = "bytes", tag = "12")]
    pub meta: Bytes,
}

/// `SubRefresh`'s result.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SubRefreshResult {
    #[prost(bool, tag = "1")]
    pub expired: bool,
    #[prost(int64, tag = "2")]
    pub expire_at: i64,
    #[prost(bytes = "bytes", tag = "3")]
    pub info: Bytes,
    #[prost(string, tag = "4")]
    pub b64info: String,
}

/// `SubRefresh`'s response.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SubRefreshResponse {
    #[prost(message, optional, tag = "1")]
    pub result: Option<SubRefreshResult>,
    #[prost(message, optional, tag = "2")]
    pub error: Option<Error>,
    #[prost(message, optional, tag = "3")]
    pub disconnect: Option<Disconnect>,
}
