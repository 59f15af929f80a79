//! The proxy's messages as tether handles them, and their JSON form on the wire.
//!
//! Requests and results mirror Centrifugo's `proxyproto` messages (package
//! `centrifugal.centrifugo.proxy`) field for field. In JSON the field names are the proto
//! names, zero values are left out (except `user`, which every request but connect carries
//! even when empty), and `bytes` fields (`data`, `info`, `meta`) are embedded as raw JSON; with
//! `binary_encoding` a request's `data` travels as base64 in `b64data` and `encoding` says
//! `"binary"`. A result may use either form of a field; the base64 one wins, except in a
//! publish result, where the raw `data` wins (as in Centrifugo).

use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// What every request starts with: who asks, and how it is connected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Common {
    /// The connection's client id.
    pub(crate) client: String,
    /// `websocket` (raw TCP connections say `tcp`).
    pub(crate) transport: &'static str,
    /// The client protocol: `json` or `protobuf`.
    pub(crate) protocol: &'static str,
}

/// A connect event: a client connected without a token.
#[derive(Clone, Debug, Default)]
pub(crate) struct ConnectRequest {
    pub(crate) common: Common,
    /// The connect command's `data`.
    pub(crate) data: Bytes,
    /// The client SDK's name and version.
    pub(crate) name: String,
    pub(crate) version: String,
    /// Channels the client asks to be subscribed to server-side (its `subs`).
    pub(crate) channels: Vec<String>,
}

/// A refresh event: a connection's credentials expire.
#[derive(Clone, Debug, Default)]
pub(crate) struct RefreshRequest {
    pub(crate) common: Common,
    pub(crate) user: String,
    pub(crate) meta: Option<Bytes>,
}

/// A subscribe event.
#[derive(Clone, Debug, Default)]
pub(crate) struct SubscribeRequest {
    pub(crate) common: Common,
    pub(crate) user: String,
    pub(crate) channel: String,
    pub(crate) meta: Option<Bytes>,
    /// The subscribe command's `data`.
    pub(crate) data: Bytes,
}

/// A publish event.
#[derive(Clone, Debug, Default)]
pub(crate) struct PublishRequest {
    pub(crate) common: Common,
    pub(crate) user: String,
    pub(crate) channel: String,
    pub(crate) data: Bytes,
    pub(crate) meta: Option<Bytes>,
}

/// An RPC event.
#[derive(Clone, Debug, Default)]
pub(crate) struct RpcRequest {
    pub(crate) common: Common,
    pub(crate) user: String,
    pub(crate) method: String,
    pub(crate) data: Bytes,
    pub(crate) meta: Option<Bytes>,
}

/// A subscription refresh event.
#[derive(Clone, Debug, Default)]
pub(crate) struct SubRefreshRequest {
    pub(crate) common: Common,
    pub(crate) user: String,
    pub(crate) channel: String,
    pub(crate) meta: Option<Bytes>,
}

/// How the backend answered: a result (possibly absent), an error for the client, or a
/// disconnect. `disconnect` is looked at before `error`, and `error` before `result`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Answer<T> {
    /// The event goes ahead with this result (`None`: the backend sent none).
    Result(Option<T>),
    /// The client gets this error.
    Error(ProxyError),
    /// The client is disconnected with this code and reason.
    Disconnect(ProxyDisconnect),
}

/// An error the backend chose for the client.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub(crate) struct ProxyError {
    pub(crate) code: u32,
    pub(crate) message: String,
    pub(crate) temporary: bool,
}

/// A disconnect the backend chose for the client.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub(crate) struct ProxyDisconnect {
    pub(crate) code: u32,
    pub(crate) reason: String,
}

/// Per-subscription option overrides (`SubscribeOptionOverride`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Overrides {
    pub(crate) presence: Option<bool>,
    pub(crate) join_leave: Option<bool>,
    pub(crate) force_recovery: Option<bool>,
    pub(crate) force_positioning: Option<bool>,
    pub(crate) force_push_join_leave: Option<bool>,
}

/// Options of one server-side subscription in a connect result (`SubscribeOptions`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SubscribeOptions {
    pub(crate) info: Option<Bytes>,
    pub(crate) data: Option<Bytes>,
    pub(crate) overrides: Overrides,
}

/// A connect result (`ConnectResult`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ConnectResult {
    pub(crate) user: String,
    /// Unix seconds; 0: never expires.
    pub(crate) expire_at: i64,
    pub(crate) info: Option<Bytes>,
    pub(crate) data: Option<Bytes>,
    pub(crate) channels: Vec<String>,
    pub(crate) subs: BTreeMap<String, SubscribeOptions>,
    pub(crate) meta: Option<Bytes>,
}

/// A refresh result (`RefreshResult`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RefreshResult {
    pub(crate) expired: bool,
    pub(crate) expire_at: i64,
    pub(crate) info: Option<Bytes>,
    pub(crate) meta: Option<Bytes>,
}

/// A subscribe result (`SubscribeResult`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SubscribeResult {
    pub(crate) expire_at: i64,
    pub(crate) info: Option<Bytes>,
    pub(crate) data: Option<Bytes>,
    pub(crate) overrides: Overrides,
}

/// A publish result (`PublishResult`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PublishResult {
    /// Replaces the client's data when set.
    pub(crate) data: Option<Bytes>,
    pub(crate) skip_history: bool,
    pub(crate) tags: HashMap<String, String>,
    pub(crate) idempotency_key: String,
    pub(crate) delta: bool,
}

/// An RPC result (`RPCResult`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RpcResult {
    pub(crate) data: Option<Bytes>,
}

/// A subscription refresh result (`SubRefreshResult`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SubRefreshResult {
    pub(crate) expired: bool,
    pub(crate) expire_at: i64,
    pub(crate) info: Option<Bytes>,
}

/// Why a request or an answer could not be put into or read from its wire form (JSON, or
/// the base64 fields of a gRPC answer).
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    /// A `bytes` field that must be embedded raw is not JSON (a Protobuf client's binary
    /// data without `binary_encoding`).
    #[error("{0} is not valid JSON (binary data needs binary_encoding)")]
    NotJson(&'static str),
    /// The answer is not the expected JSON.
    #[error("undecodable answer: {0}")]
    Answer(#[from] serde_json::Error),
    /// A `b64*` field of the answer (JSON or gRPC) is not base64.
    #[error("{0} is not valid base64")]
    Base64(&'static str),
}

/// A request in its JSON form.
pub(crate) trait JsonRequest {
    /// The request body. `binary` is the proxy's `binary_encoding`.
    fn to_json(&self, binary: bool) -> Result<Vec<u8>, WireError>;
}

/// A result that can be read from its JSON form.
pub(crate) trait JsonResult: Sized {
    /// The result's JSON shape.
    type Wire: DeserializeOwned;
    /// The result from its JSON shape.
    fn from_wire(wire: Self::Wire) -> Result<Self, WireError>;
}

/// Reads an answer (`{"result": …}`, `{"error": …}` or `{"disconnect": …}`).
pub(crate) fn decode_answer<T: JsonResult>(body: &[u8]) -> Result<Answer<T>, WireError> {
    #[derive(Deserialize)]
    #[serde(bound = "W: DeserializeOwned")]
    struct Wire<W> {
        #[serde(default)]
        result: Option<W>,
        #[serde(default)]
        error: Option<ProxyError>,
        #[serde(default)]
        disconnect: Option<ProxyDisconnect>,
    }
    let wire: Wire<T::Wire> = serde_json::from_slice(body)?;
    if let Some(disconnect) = wire.disconnect {
        return Ok(Answer::Disconnect(disconnect));
    }
    if let Some(error) = wire.error {
        return Ok(Answer::Error(error));
    }
    Ok(Answer::Result(wire.result.map(T::from_wire).transpose()?))
}

// === requests ===

/// The common fields as they go on the wire.
#[derive(Serialize)]
struct CommonWire<'a> {
    client: &'a str,
    transport: &'static str,
    protocol: &'static str,
    encoding: &'static str,
}

impl Common {
    fn wire(&self, binary: bool) -> CommonWire<'_> {
        CommonWire {
            client: &self.client,
            transport: self.transport,
            protocol: self.protocol,
            encoding: if binary { "binary" } else { "json" },
        }
    }
}

/// A `bytes` field embedded as raw JSON (`None` when empty).
fn raw(bytes: &[u8], field: &'static str) -> Result<Option<Box<RawValue>>, WireError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| WireError::NotJson(field))?;
    RawValue::from_string(text.to_owned())
        .map(Some)
        .map_err(|_| WireError::NotJson(field))
}

/// `data` as the proxy sends it: raw JSON, or base64 with `binary_encoding`.
fn data_fields(
    data: &[u8],
    binary: bool,
) -> Result<(Option<Box<RawValue>>, Option<String>), WireError> {
    if data.is_empty() {
        return Ok((None, None));
    }
    if binary {
        return Ok((None, Some(BASE64.encode(data))));
    }
    Ok((raw(data, "data")?, None))
}

fn meta_field(meta: Option<&Bytes>) -> Result<Option<Box<RawValue>>, WireError> {
    meta.map_or(Ok(None), |meta| raw(meta, "meta"))
}

fn to_vec(value: &impl Serialize) -> Result<Vec<u8>, WireError> {
    Ok(serde_json::to_vec(value)?)
}

impl JsonRequest for ConnectRequest {
    fn to_json(&self, binary: bool) -> Result<Vec<u8>, WireError> {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(flatten)]
            common: CommonWire<'a>,
            #[serde(skip_serializing_if = "Option::is_none")]
            data: Option<Box<RawValue>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            b64data: Option<String>,
            #[serde(skip_serializing_if = "str::is_empty")]
            name: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            version: &'a str,
            #[serde(skip_serializing_if = "<[String]>::is_empty")]
            channels: &'a [String],
        }
        let (data, b64data) = data_fields(&self.data, binary)?;
        to_vec(&Wire {
            common: self.common.wire(binary),
            data,
            b64data,
            name: &self.name,
            version: &self.version,
            channels: &self.channels,
        })
    }
}

impl JsonRequest for RefreshRequest {
    fn to_json(&self, binary: bool) -> Result<Vec<u8>, WireError> {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(flatten)]
            common: CommonWire<'a>,
            user: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            meta: Option<Box<RawValue>>,
        }
        to_vec(&Wire {
            common: self.common.wire(binary),
            user: &self.user,
            meta: meta_field(self.meta.as_ref())?,
        })
    }
}

impl JsonRequest for SubscribeRequest {
    fn to_json(&self, binary: bool) -> Result<Vec<u8>, WireError> {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(flatten)]
            common: CommonWire<'a>,
            user: &'a str,
            channel: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            meta: Option<Box<RawValue>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            data: Option<Box<RawValue>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            b64data: Option<String>,
        }
        let (data, b64data) = data_fields(&self.data, binary)?;
        to_vec(&Wire {
            common: self.common.wire(binary),
            user: &self.user,
            channel: &self.channel,
            meta: meta_field(self.meta.as_ref())?,
            data,
            b64data,
        })
    }
}

impl JsonRequest for PublishRequest {
    fn to_json(&self, binary: bool) -> Result<Vec<u8>, WireError> {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(flatten)]
            common: CommonWire<'a>,
            user: &'a str,
            channel: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            data: Option<Box<RawValue>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            b64data: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            meta: Option<Box<RawValue>>,
        }
        let (data, b64data) = data_fields(&self.data, binary)?;
        to_vec(&Wire {
            common: self.common.wire(binary),
            user: &self.user,
            channel: &self.channel,
            data,
            b64data,
            meta: meta_field(self.meta.as_ref())?,
        })
    }
}

impl JsonRequest for RpcRequest {
    fn to_json(&self, binary: bool) -> Result<Vec<u8>, WireError> {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(flatten)]
            common: CommonWire<'a>,
            user: &'a str,
            method: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            data: Option<Box<RawValue>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            b64data: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            meta: Option<Box<RawValue>>,
        }
        let (data, b64data) = data_fields(&self.data, binary)?;
        to_vec(&Wire {
            common: self.common.wire(binary),
            user: &self.user,
            method: &self.method,
            data,
            b64data,
            meta: meta_field(self.meta.as_ref())?,
        })
    }
}

impl JsonRequest for SubRefreshRequest {
    fn to_json(&self, binary: bool) -> Result<Vec<u8>, WireError> {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(flatten)]
            common: CommonWire<'a>,
            user: &'a str,
            channel: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            meta: Option<Box<RawValue>>,
        }
        to_vec(&Wire {
            common: self.common.wire(binary),
            user: &self.user,
            channel: &self.channel,
            meta: meta_field(self.meta.as_ref())?,
        })
    }
}

// === results ===

/// A raw `bytes` field and its base64 twin, as a result carries them. The base64 one wins
/// unless `raw_first` (a publish result's `data`), where it is not even read when the raw
/// one is there, as in Centrifugo.
fn bytes_of(
    raw: Option<Box<RawValue>>,
    b64: &str,
    field: &'static str,
    raw_first: bool,
) -> Result<Option<Bytes>, WireError> {
    let raw = raw
        .filter(|value| value.get() != "null")
        .map(|value| Bytes::from(String::from(Box::<str>::from(value))));
    if (raw_first && raw.is_some()) || b64.is_empty() {
        return Ok(raw);
    }
    BASE64
        .decode(b64)
        .map(|decoded| Some(Bytes::from(decoded)))
        .map_err(|_| WireError::Base64(field))
}

/// A `BoolValue` wrapper.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct BoolValue {
    value: bool,
}

/// `SubscribeOptionOverride` on the wire.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct OverridesWire {
    presence: Option<BoolValue>,
    join_leave: Option<BoolValue>,
    force_recovery: Option<BoolValue>,
    force_positioning: Option<BoolValue>,
    force_push_join_leave: Option<BoolValue>,
}

impl From<OverridesWire> for Overrides {
    fn from(wire: OverridesWire) -> Self {
        let pick = |v: Option<BoolValue>| v.map(|v| v.value);
        Self {
            presence: pick(wire.presence),
            join_leave: pick(wire.join_leave),
            force_recovery: pick(wire.force_recovery),
            force_positioning: pick(wire.force_positioning),
            force_push_join_leave: pick(wire.force_push_join_leave),
        }
    }
}

/// `SubscribeOptions` on the wire.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct SubscribeOptionsWire {
    info: Option<Box<RawValue>>,
    b64info: String,
    data: Option<Box<RawValue>>,
    b64data: String,
    #[serde(rename = "override")]
    overrides: Option<OverridesWire>,
}

/// `ConnectResult` on the wire.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ConnectResultWire {
    user: String,
    expire_at: i64,
    info: Option<Box<RawValue>>,
    b64info: String,
    data: Option<Box<RawValue>>,
    b64data: String,
    channels: Vec<String>,
    subs: BTreeMap<String, SubscribeOptionsWire>,
    meta: Option<Box<RawValue>>,
}

impl JsonResult for ConnectResult {
    type Wire = ConnectResultWire;

    fn from_wire(wire: ConnectResultWire) -> Result<Self, WireError> {
        let subs = wire
            .subs
            .into_iter()
            .map(|(channel, opts)| {
                Ok((
                    channel,
                    SubscribeOptions {
                        info: bytes_of(opts.info, &opts.b64info, "b64info", false)?,
                        data: bytes_of(opts.data, &opts.b64data, "b64data", false)?,
                        overrides: opts.overrides.unwrap_or_default().into(),
                    },
                ))
            })
            .collect::<Result<_, WireError>>()?;
        Ok(Self {
            user: wire.user,
            expire_at: wire.expire_at,
            info: bytes_of(wire.info, &wire.b64info, "b64info", false)?,
            data: bytes_of(wire.data, &wire.b64data, "b64data", false)?,
            channels: wire.channels,
            subs,
            meta: bytes_of(wire.meta, "", "meta", true)?,
        })
    }
}

/// `RefreshResult` on the wire.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RefreshResultWire {
    expired: bool,
    expire_at: i64,
    info: Option<Box<RawValue>>,
    b64info: String,
    meta: Option<Box<RawValue>>,
}

impl JsonResult for RefreshResult {
    type Wire = RefreshResultWire;

    fn from_wire(wire: RefreshResultWire) -> Result<Self, WireError> {
        Ok(Self {
            expired: wire.expired,
            expire_at: wire.expire_at,
            info: bytes_of(wire.info, &wire.b64info, "b64info", false)?,
            meta: bytes_of(wire.meta, "", "meta", true)?,
        })
    }
}

/// `SubscribeResult` on the wire.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct SubscribeResultWire {
    expire_at: i64,
    info: Option<Box<RawValue>>,
    b64info: String,
    data: Option<Box<RawValue>>,
    b64data: String,
    #[serde(rename = "override")]
    overrides: Option<OverridesWire>,
}

impl JsonResult for SubscribeResult {
    type Wire = SubscribeResultWire;

    fn from_wire(wire: SubscribeResultWire) -> Result<Self, WireError> {
        Ok(Self {
            expire_at: wire.expire_at,
            info: bytes_of(wire.info, &wire.b64info, "b64info", false)?,
            data: bytes_of(wire.data, &wire.b64data, "b64data", false)?,
            overrides: wire.overrides.unwrap_or_default().into(),
        })
    }
}

/// `PublishResult` on the wire.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct PublishResultWire {
    data: Option<Box<RawValue>>,
    b64data: String,
    skip_history: bool,
    tags: HashMap<String, String>,
    idempotency_key: String,
    delta: bool,
}

impl JsonResult for PublishResult {
    type Wire = PublishResultWire;

    fn from_wire(wire: PublishResultWire) -> Result<Self, WireError> {
        Ok(Self {
            data: bytes_of(wire.data, &wire.b64data, "b64data", true)?,
            skip_history: wire.skip_history,
            tags: wire.tags,
            idempotency_key: wire.idempotency_key,
            delta: wire.delta,
        })
    }
}

/// `RPCResult` on the wire.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RpcResultWire {
    data: Option<Box<RawValue>>,
    b64data: String,
}

impl JsonResult for RpcResult {
    type Wire = RpcResultWire;

    fn from_wire(wire: RpcResultWire) -> Result<Self, WireError> {
        Ok(Self {
            data: bytes_of(wire.data, &wire.b64data, "b64data", false)?,
        })
    }
}

/// `SubRefreshResult` on the wire.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct SubRefreshResultWire {
    expired: bool,
    expire_at: i64,
    info: Option<Box<RawValue>>,
    b64info: String,
}

impl JsonResult for SubRefreshResult {
    type Wire = SubRefreshResultWire;

    fn from_wire(wire: SubRefreshResultWire) -> Result<Self, WireError> {
        Ok(Self {
            expired: wire.expired,
            expire_at: wire.expire_at,
            info: bytes_of(wire.info, &wire.b64info, "b64info", false)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn common() -> Common {
        Common {
            client: "c1".to_owned(),
            transport: "websocket",
            protocol: "json",
        }
    }

    fn json_of(request: &impl JsonRequest, binary: bool) -> Value {
        serde_json::from_slice(&request.to_json(binary).unwrap()).unwrap()
    }

    #[test]
    fn a_connect_request_embeds_data_raw_and_leaves_out_empty_fields() {
        let request = ConnectRequest {
            common: common(),
            data: Bytes::from_static(br#"{"app":"web"}"#),
            name: "js".to_owned(),
            version: "5.2.0".to_owned(),
            channels: Vec::new(),
        };
        assert_eq!(
            json_of(&request, false),
            json!({"client": "c1", "transport": "websocket", "protocol": "json",
                   "encoding": "json", "data": {"app": "web"}, "name": "js", "version": "5.2.0"})
        );
        // The field order is the proto's.
        let text = String::from_utf8(request.to_json(false).unwrap()).unwrap();
        assert!(text.starts_with(r#"{"client":"c1","transport":"websocket","protocol":"json","encoding":"json","data":{"app":"web"}"#), "{text}");
    }

    #[test]
    fn binary_encoding_sends_b64data_and_says_binary() {
        let request = RpcRequest {
            common: common(),
            user: String::new(),
            method: "m".to_owned(),
            data: Bytes::from_static(&[0, 159, 146, 150]),
            meta: None,
        };
        assert_eq!(
            json_of(&request, true),
            json!({"client": "c1", "transport": "websocket", "protocol": "json",
                   "encoding": "binary", "user": "", "method": "m", "b64data": "AJ+Slg=="})
        );
        assert!(matches!(
            request.to_json(false),
            Err(WireError::NotJson("data"))
        ));
    }

    #[test]
    fn user_is_always_present_and_meta_is_raw() {
        let request = RefreshRequest {
            common: common(),
            user: String::new(),
            meta: Some(Bytes::from_static(br#"{"t":1}"#)),
        };
        assert_eq!(
            json_of(&request, false),
            json!({"client": "c1", "transport": "websocket", "protocol": "json",
                   "encoding": "json", "user": "", "meta": {"t": 1}})
        );
    }

    #[test]
    fn disconnect_wins_over_error_and_error_over_result() {
        let both = br#"{"result":{"user":"1"},"error":{"code":1403,"message":"no"},"disconnect":{"code":4501,"reason":"bye"}}"#;
        assert_eq!(
            decode_answer::<ConnectResult>(both).unwrap(),
            Answer::Disconnect(ProxyDisconnect {
                code: 4501,
                reason: "bye".to_owned()
            })
        );
        let error =
            br#"{"result":{"user":"1"},"error":{"code":1403,"message":"no","temporary":true}}"#;
        assert_eq!(
            decode_answer::<ConnectResult>(error).unwrap(),
            Answer::Error(ProxyError {
                code: 1403,
                message: "no".to_owned(),
                temporary: true
            })
        );
        assert_eq!(
            decode_answer::<ConnectResult>(b"{}").unwrap(),
            Answer::Result(None)
        );
        assert!(decode_answer::<ConnectResult>(b"not json").is_err());
    }

    #[test]
    fn a_connect_result_reads_raw_and_base64_fields_and_subs() {
        let body = br#"{"result":{"user":"42","expire_at":1767225600,"info":{"name":"Ann"},
            "b64data":"eyJ4IjoxfQ==","data":{"ignored":true},"channels":["news"],
            "subs":{"personal:42":{"override":{"presence":{"value":true}},"data":{"d":1}}},
            "meta":{"tenant":"t1"},"unknown_field":1}}"#;
        let Answer::Result(Some(result)) = decode_answer::<ConnectResult>(body).unwrap() else {
            panic!("a result");
        };
        assert_eq!(result.user, "42");
        assert_eq!(result.expire_at, 1_767_225_600);
        assert_eq!(result.info.as_deref(), Some(&br#"{"name":"Ann"}"#[..]));
        assert_eq!(
            result.data.as_deref(),
            Some(&br#"{"x":1}"#[..]),
            "b64data wins"
        );
        assert_eq!(result.channels, ["news"]);
        let sub = &result.subs["personal:42"];
        assert_eq!(sub.overrides.presence, Some(true));
        assert_eq!(sub.overrides.join_leave, None);
        assert_eq!(sub.data.as_deref(), Some(&br#"{"d":1}"#[..]));
        assert_eq!(result.meta.as_deref(), Some(&br#"{"tenant":"t1"}"#[..]));
    }

    #[test]
    fn in_a_publish_result_raw_data_wins_over_base64() {
        let body = br#"{"result":{"data":{"text":"raw"},"b64data":"eyJ4IjoxfQ==","skip_history":true,"tags":{"k":"v"}}}"#;
        let Answer::Result(Some(result)) = decode_answer::<PublishResult>(body).unwrap() else {
            panic!("a result");
        };
        assert_eq!(result.data.as_deref(), Some(&br#"{"text":"raw"}"#[..]));
        assert!(result.skip_history);
        assert_eq!(result.tags["k"], "v");
        let b64_only = br#"{"result":{"b64data":"eyJ4IjoxfQ=="}}"#;
        let Answer::Result(Some(result)) = decode_answer::<PublishResult>(b64_only).unwrap() else {
            panic!("a result");
        };
        assert_eq!(result.data.as_deref(), Some(&br#"{"x":1}"#[..]));
        // With raw data there, the base64 twin is not read at all.
        let bad_b64 = br#"{"result":{"data":{"text":"raw"},"b64data":"***"}}"#;
        let Answer::Result(Some(result)) = decode_answer::<PublishResult>(bad_b64).unwrap() else {
            panic!("a result");
        };
        assert_eq!(result.data.as_deref(), Some(&br#"{"text":"raw"}"#[..]));
    }

    #[test]
    fn bad_base64_in_a_result_is_an_error() {
        let body = br#"{"result":{"b64data":"***"}}"#;
        assert!(matches!(
            decode_answer::<RpcResult>(body),
            Err(WireError::Base64("b64data"))
        ));
    }
}
