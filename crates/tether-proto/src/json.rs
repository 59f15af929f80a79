//! The JSON format: a hand-written encoder and the serde helpers the decoder derives use.
//!
//! Encoding is hand-written because the wire rules do not fit a derive: keys are written in
//! field-number order; zero values (0, false, "", empty bytes/map/list, `None`) are omitted
//! except the always-present fields of compat-protocol §1.2; `bytes` fields are embedded as raw
//! JSON after a validity check, with raw `\n` bytes stripped so the `\n`-joined framing stays
//! intact. Map keys are written sorted so the output is deterministic.
//!
//! Decoding is serde derive on the [`crate::protocol`] types; the helpers here capture a `bytes`
//! field's raw JSON text (`"data": {"x":1}` -> `{"x":1}`) and accept `null` for lists and maps.

use std::collections::HashMap;

use bytes::Bytes;
use serde::de::{Deserialize, DeserializeOwned, Deserializer, Visitor};
use serde_json::value::RawValue;

use crate::error::{DecodeError, EncodeError};
use crate::protocol::*;

// === Decoding ===

/// Decodes one JSON line (already trimmed, not empty) of a frame.
pub(crate) fn decode_line<T: DeserializeOwned>(line: &[u8]) -> Result<T, DecodeError> {
    // serde derives also accept a JSON array for a struct; the protocol only has objects.
    if line.first() != Some(&b'{') {
        return Err(DecodeError::NotAnObject);
    }
    Ok(serde_json::from_slice(line)?)
}

/// serde `deserialize_with` for `bytes` fields: the raw JSON text of the value, `null` = empty.
pub(crate) fn raw_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
    let raw = <&'de RawValue>::deserialize(d)?;
    let text = raw.get();
    if text == "null" {
        return Ok(Bytes::new());
    }
    Ok(Bytes::copy_from_slice(text.as_bytes()))
}

/// serde `deserialize_with` for scalar list and map fields: `null` means empty.
pub(crate) fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// serde `deserialize_with` for message fields: an object, or `null` for absent.
pub(crate) fn message<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Object<T>>::deserialize(d)?.map(|o| o.0))
}

/// serde `deserialize_with` for repeated message fields: an array of objects, `null` = empty.
pub(crate) fn messages<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let items = Option::<Vec<Object<T>>>::deserialize(d)?.unwrap_or_default();
    Ok(items.into_iter().map(|o| o.0).collect())
}

/// serde `deserialize_with` for map<string, message> fields: object values, `null` = empty.
pub(crate) fn message_map<'de, D, T>(d: D) -> Result<HashMap<String, T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let map = Option::<HashMap<String, Object<T>>>::deserialize(d)?.unwrap_or_default();
    Ok(map.into_iter().map(|(k, o)| (k, o.0)).collect())
}

/// A message that must be a JSON object. serde derives also accept an array for a struct
/// (fields by position); the protocol has no such form, so it is a wrong type here.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(MapOnly(d)).map(Object)
    }
}

/// Deserializer adapter that asks the inner deserializer for a map whatever is requested.
struct MapOnly<D>(D);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for MapOnly<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

// === Encoding ===

/// A message that writes itself as one JSON object.
pub(crate) trait ToJson {
    /// Appends the JSON object; on error `out` may hold a partial object (callers truncate).
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError>;
}

/// Writer for one JSON object; keys are static field names that need no escaping.
struct Obj<'a> {
    out: &'a mut Vec<u8>,
    /// No key written yet, so the next key needs no leading comma.
    empty: bool,
}

impl<'a> Obj<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, empty: true }
    }

    fn key(&mut self, key: &str) {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn string(&mut self, key: &str, value: &str) {
        if !value.is_empty() {
            self.string_always(key, value);
        }
    }

    fn string_always(&mut self, key: &str, value: &str) {
        self.key(key);
        write_str(self.out, value);
    }

    fn bool(&mut self, key: &str, value: bool) {
        if value {
            self.key(key);
            self.out.extend_from_slice(b"true");
        }
    }

    fn uint(&mut self, key: &str, value: u64) {
        if value != 0 {
            self.uint_always(key, value);
        }
    }

    fn uint_always(&mut self, key: &str, value: u64) {
        self.key(key);
        write_u64(self.out, value);
    }

    fn int(&mut self, key: &str, value: i64) {
        if value != 0 {
            self.key(key);
            if value < 0 {
                self.out.push(b'-');
            }
            write_u64(self.out, value.unsigned_abs());
        }
    }

    fn raw(&mut self, key: &str, value: &Bytes) -> Result<(), EncodeError> {
        if !value.is_empty() {
            self.key(key);
            write_raw(self.out, value)?;
        }
        Ok(())
    }

    fn message<T: ToJson>(&mut self, key: &str, value: Option<&T>) -> Result<(), EncodeError> {
        if let Some(value) = value {
            self.key(key);
            value.write_json(self.out)?;
        }
        Ok(())
    }

    fn list<T: ToJson>(&mut self, key: &str, values: &[T]) -> Result<(), EncodeError> {
        if !values.is_empty() {
            self.list_always(key, values)?;
        }
        Ok(())
    }

    fn list_always<T: ToJson>(&mut self, key: &str, values: &[T]) -> Result<(), EncodeError> {
        self.key(key);
        self.out.push(b'[');
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            v.write_json(self.out)?;
        }
        self.out.push(b']');
        Ok(())
    }

    fn map<T: ToJson>(&mut self, key: &str, map: &HashMap<String, T>) -> Result<(), EncodeError> {
        if !map.is_empty() {
            self.map_always(key, map)?;
        }
        Ok(())
    }

    fn map_always<T: ToJson>(
        &mut self,
        key: &str,
        map: &HashMap<String, T>,
    ) -> Result<(), EncodeError> {
        self.key(key);
        self.out.push(b'{');
        for (i, (k, v)) in sorted(map).into_iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            write_str(self.out, k);
            self.out.push(b':');
            v.write_json(self.out)?;
        }
        self.out.push(b'}');
        Ok(())
    }

    fn string_map(&mut self, key: &str, map: &HashMap<String, String>) {
        if map.is_empty() {
            return;
        }
        self.key(key);
        self.out.push(b'{');
        for (i, (k, v)) in sorted(map).into_iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            write_str(self.out, k);
            self.out.push(b':');
            write_str(self.out, v);
        }
        self.out.push(b'}');
    }

    fn finish(self) -> Result<(), EncodeError> {
        self.out.push(b'}');
        Ok(())
    }
}

fn sorted<T>(map: &HashMap<String, T>) -> Vec<(&String, &T)> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    entries
}

/// Writes a `bytes` field as raw JSON: validated, then copied without its `\n` bytes (in valid
/// JSON they can only be whitespace).
fn write_raw(out: &mut Vec<u8>, value: &[u8]) -> Result<(), EncodeError> {
    if serde_json::from_slice::<&RawValue>(value).is_err() {
        return Err(EncodeError::NonJsonData);
    }
    if value.contains(&b'\n') {
        out.extend(value.iter().copied().filter(|&b| b != b'\n'));
    } else {
        out.extend_from_slice(value);
    }
    Ok(())
}

/// Writes `s` as a JSON string literal.
fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => &[],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        // `n % 10` is below 10, so the cast cannot truncate.
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

// === ToJson impls, fields in field-number order ===

impl ToJson for Command {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut o = Obj::new(out);
        o.uint("id", self.id.into());
        o.message("connect", self.connect.as_ref())?;
        o.message("subscribe", self.subscribe.as_ref())?;
        o.message("unsubscribe", self.unsubscribe.as_ref())?;
        o.message("publish", self.publish.as_ref())?;
        o.message("presence", self.presence.as_ref())?;
        o.message("presence_stats", self.presence_stats.as_ref())?;
        o.message("history", self.history.as_ref())?;
        o.message("ping", self.ping.as_ref())?;
        o.message("send", self.send.as_ref())?;
        o.message("rpc", self.rpc.as_ref())?;
        o.message("refresh", self.refresh.as_ref())?;
        o.message("sub_refresh", self.sub_refresh.as_ref())?;
        o.finish()
    }
}

impl ToJson for Reply {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut o = Obj::new(out);
        o.uint("id", self.id.into());
        o.message("error", self.error.as_ref())?;
        o.message("push", self.push.as_ref())?;
        o.message("connect", self.connect.as_ref())?;
        o.message("subscribe", self.subscribe.as_ref())?;
        o.message("unsubscribe", self.unsubscribe.as_ref())?;
        o.message("publish", self.publish.as_ref())?;
        o.message("presence", self.presence.as_ref())?;
        o.message("presence_stats", self.presence_stats.as_ref())?;
        o.message("history", self.history.as_ref())?;
        o.message("ping", self.ping.as_ref())?;
        o.message("rpc", self.rpc.as_ref())?;
        o.message("refresh", self.refresh.as_ref())?;
        o.message("sub_refresh", self.sub_refresh.as_ref())?;
        o.finish()
    }
}

impl ToJson for Push {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut o = Obj::new(out);
        o.int("id", self.id);
        o.string("channel", &self.channel);
        o.message("pub", self.r#pub.as_ref())?;
        o.message("join", self.join.as_ref())?;
        o.message("leave", self.leave.as_ref())?;
        o.message("unsubscribe", self.unsubscribe.as_ref())?;
        o.message("message", self.message.as_ref())?;
        o.message("subscribe", self.subscribe.as_ref())?;
        o.message("connect", self.connect.as_ref())?;
        o.message("disconnect", self.disconnect.as_ref())?;
        o.message("refresh", self.refresh.as_ref())?;
        o.finish()
    }
}

impl ToJson for Error {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut o = Obj::new(out);
        o.uint("code", self.code.into());
        o.string("message", &self.message);
        o.bool("temporary", self.temporary);
        o.finish()
    }
}

impl ToJson for ClientInfo {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut o = Obj::new(out);
        o.string_always("user", &self.user);
        o.string_always("client", &self.client);
        o.raw("conn_info", &self.conn_info)?;
        o.raw("chan_info", &self.chan_info)?;
        o.finish()
    }
}

impl ToJson for Publication {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut o = Obj::new(out);
        o.raw("data", &self.data)?;
        o.message("info", self.info.as_ref())?;
        o.uint("offset", self.offset);
        o.string_map("tags", &self.tags);
        o.bool("delta", self.delta);
        o.int("time", self.time);
        o.string("channel", &self.channel);
        o.string("key", &self.key);
        o.bool("removed", self.removed);
        o.int("score", self.score);
        o.string("epoch", &self.epoch);
        o.raw("prev_data", &self.prev_data)?;
        o.uint("version", self.version);
        o.finish()
    }
}

impl ToJson for StreamPosition {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut o = Obj::new(out);
        o.uint("offset", self.offset);
        o.string("epoch", &self.epoch);
        o.finish()
    }
}

impl ToJson for Join {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut o = Obj::new(out);
        o.message("info", self.info.as_ref())?;
        o.finish()
    }
}

impl ToJson for Leave {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut o = Obj::new(out);
        o.message("info", self.info.as_ref())?;
        o.finish()
    }
}

impl ToJson for Unsubscribe {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut o = Obj::new(out);
        o.uint("code", self.code.into());
        o.string("reason", &self.reason);
        o.finish()
    }
}

impl ToJson for Message {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut o = Obj::new(out);
        o.raw("data", &self.data)?;
        o.finish()
    }
}

impl ToJson for Subscribe {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut o = Obj::new(out);
        o.bool("recoverable", self.recoverable);
        o.string("epoch", &self.epoch);
        o.uint("offset", self.offset);
        o.bool("positioned", self.positioned);
        o.raw("data", &self.data)?;
        o.finish()
    }
}

impl ToJson for Connect {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut o = Obj::new(out);
        o.string("client", &self.client);
        o.string("version", &self.version);
        o.raw("data", &self.data)?;
        o.map("subs", &self.subs)?;
        o.bool("expires", self.expires);
        o.uint("ttl", self.ttl.into());
        o.uint("ping", self.ping.into());
        o.bool("pong", self.pong);
        o.string("session", &self.session);
        o.string("node", &self.node);
        o.int("time", self.time);
        o.finish()
    }
}

impl ToJson for Disconnect {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut o = Obj::new(out);
        o.uint("code", self.code.into());
        o.string("reason", &self.reason);
        o.bool("reconnect", self.reconnect);
        o.finish()
    }
}

impl ToJson for Refresh {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut o = Obj::new(out);
        o.bool("expires", self.expires);
        o.uint("ttl", self.ttl.into());
        o.finish()
    }
}

impl ToJson for ConnectRequest {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut o = Obj::new(out);
        o.string("token", &self.token);
        o.raw("data", &self.data)?;
        o.map("subs", &self.subs)?;
        o.string("name", &self.name);
        o.string("version", &self.version);
        o.string_map("headers", &self.headers);
        o.int("flag", self.flag);
        o.string("dict", &self.dict);
        o.string("profile", &self.profile);
        o.finish()
    }
}

impl ToJson for ConnectResult {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut o = Obj::new(out);
        o.string("client", &self.client);
        o.string("version", &self.version);
        o.bool("expires", self.expires);
        o.uint("ttl", self.ttl.into());
        o.raw("data", &self.data)?;
        o.map("subs", &self.subs)?;
        o.uint("ping", self.ping.into());
        o.bool("pong", self.pong);
        o.string("session", &self.session);
        o.string("node", &self.node);
        o.int("time", self.time);
        o.int("flag", self.flag);
        o.finish()
    }
}

impl ToJson for RefreshRequest {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut o = Obj::new(out);
        o.string("token", &self.token);
        o.finish()
    }
}

impl ToJson for RefreshResult {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut o = Obj::new(out);
        o.string("client", &self.client);
        o.string("version", &self.version);
        o.bool("expires", self.expires);
        o.uint("ttl", self.ttl.into());
        o.finish()
    }
}

impl ToJson for SubscribeRequest {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut o = Obj::new(out);
        o.string("channel", &self.channel);
        o.string("token", &self.token);
        o.bool("recover", self.recover);
        o.string("epoch", &self.epoch);
        o.uint("offset", self.offset);
        o.raw("data", &self.data)?;
        o.bool("positioned", self.positioned);
        o.bool("recoverable", self.recoverable);
        o.bool("join_leave", self.join_leave);
        o.string("delta", &self.delta);
        o.int("flag", self.flag);
        o.int("type", self.r#type.into());
        o.int("phase", self.phase.into());
        o.string("cursor", &self.cursor);
        o.int("limit", self.limit.into());
        o.bool("asc", self.asc);
        o.finish()
    }
}

impl ToJson for SubscribeResult {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut o = Obj::new(out);
        o.bool("expires", self.expires);
        o.uint("ttl", self.ttl.into());
        o.bool("recoverable", self.recoverable);
        o.string("epoch", &self.epoch);
        o.list("publications", &self.publications)?;
        o.bool("recovered", self.recovered);
        o.uint("offset", self.offset);
        o.bool("positioned", self.positioned);
        o.raw("data", &self.data)?;
        o.bool("was_recovering", self.was_recovering);
        o.bool("delta", self.delta);
        o.int("id", self.id);
        o.int("type", self.r#type.into());
        o.int("phase", self.phase.into());
        o.string("cursor", &self.cursor);
        o.uint("publish_debounce", self.publish_debounce.into());
        o.finish()
    }
}

impl ToJson for SubRefreshRequest {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut o = Obj::new(out);
        o.string("channel", &self.channel);
        o.string("token", &self.token);
        o.finish()
    }
}

impl ToJson for SubRefreshResult {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut o = Obj::new(out);
        o.bool("expires", self.expires);
        o.uint("ttl", self.ttl.into());
        o.finish()
    }
}

/// Requests that carry only a channel.
macro_rules! channel_only_to_json {
    ($($ty:ty),*) => {$(
        impl ToJson for $ty {
            fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
                let mut o = Obj::new(out);
                o.string("channel", &self.channel);
                o.finish()
            }
        }
    )*};
}

channel_only_to_json!(UnsubscribeRequest, PresenceRequest, PresenceStatsRequest);

/// Messages without fields.
macro_rules! empty_to_json {
    ($($ty:ty),*) => {$(
        impl ToJson for $ty {
            fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
                out.extend_from_slice(b"{}");
                Ok(())
            }
        }
    )*};
}

empty_to_json!(UnsubscribeResult, PublishResult, PingRequest, PingResult);

impl ToJson for PublishRequest {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut o = Obj::new(out);
        o.string("channel", &self.channel);
        o.raw("data", &self.data)?;
        o.int("type", self.r#type.into());
        o.string("key", &self.key);
        o.bool("removed", self.removed);
        o.finish()
    }
}

impl ToJson for PresenceResult {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut o = Obj::new(out);
        o.map_always("presence", &self.presence)?;
        o.finish()
    }
}

impl ToJson for PresenceStatsResult {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut o = Obj::new(out);
        o.uint_always("num_clients", self.num_clients.into());
        o.uint_always("num_users", self.num_users.into());
        o.finish()
    }
}

impl ToJson for HistoryRequest {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut o = Obj::new(out);
        o.string("channel", &self.channel);
        o.int("limit", self.limit.into());
        o.message("since", self.since.as_ref())?;
        o.bool("reverse", self.reverse);
        o.finish()
    }
}

impl ToJson for HistoryResult {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut o = Obj::new(out);
        o.list_always("publications", &self.publications)?;
        o.string_always("epoch", &self.epoch);
        o.uint_always("offset", self.offset);
        o.finish()
    }
}

impl ToJson for SendRequest {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut o = Obj::new(out);
        o.raw("data", &self.data)?;
        o.finish()
    }
}

impl ToJson for RpcRequest {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut o = Obj::new(out);
        o.raw("data", &self.data)?;
        o.string("method", &self.method);
        o.finish()
    }
}

impl ToJson for RpcResult {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut o = Obj::new(out);
        o.raw("data", &self.data)?;
        o.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json<T: ToJson>(v: &T) -> String {
        let mut out = Vec::new();
        v.write_json(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_are_escaped_and_roundtrip_through_serde() {
        let nasty = "a\"b\\c\nd\re\tf\u{8}\u{c}\u{1}\u{1f}é😀</script>";
        let mut out = Vec::new();
        write_str(&mut out, nasty);
        assert!(!out.contains(&b'\n'));
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, nasty);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#""a\"b\\c\nd\re\tf\b\f\u0001\u001fé😀</script>""#
        );
    }

    #[test]
    fn integers_are_plain_json_numbers() {
        let mut out = Vec::new();
        write_u64(&mut out, u64::MAX);
        assert_eq!(out, b"18446744073709551615");
        let p = Publication {
            score: i64::MIN,
            time: -5,
            offset: 10,
            ..Publication::default()
        };
        assert_eq!(
            json(&p),
            r#"{"offset":10,"time":-5,"score":-9223372036854775808}"#
        );
    }

    #[test]
    fn raw_bytes_are_validated_and_newlines_stripped() {
        let m = Message {
            data: Bytes::from_static(b"{\n  \"a\": [1,\n 2]\n}"),
        };
        assert_eq!(json(&m), r#"{"data":{  "a": [1, 2]}}"#);
        for bad in [&b"{"[..], b"not json", b"{} {}", b"\xff", b"\"\xff\""] {
            let m = Message {
                data: Bytes::copy_from_slice(bad),
            };
            let mut out = Vec::new();
            assert!(
                matches!(m.write_json(&mut out), Err(EncodeError::NonJsonData)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn zero_values_are_omitted_except_always_present_fields() {
        assert_eq!(json(&Reply::default()), "{}");
        assert_eq!(json(&SubscribeResult::default()), "{}");
        assert_eq!(json(&ClientInfo::default()), r#"{"user":"","client":""}"#);
        assert_eq!(json(&PresenceResult::default()), r#"{"presence":{}}"#);
        assert_eq!(
            json(&PresenceStatsResult::default()),
            r#"{"num_clients":0,"num_users":0}"#
        );
        assert_eq!(
            json(&HistoryResult::default()),
            r#"{"publications":[],"epoch":"","offset":0}"#
        );
    }

    #[test]
    fn maps_are_written_sorted() {
        let mut tags = HashMap::new();
        for k in ["b", "a", "c"] {
            tags.insert(k.to_owned(), k.to_uppercase());
        }
        let p = Publication {
            tags,
            ..Publication::default()
        };
        assert_eq!(json(&p), r#"{"tags":{"a":"A","b":"B","c":"C"}}"#);
    }

    #[test]
    fn raw_bytes_capture_exact_text_and_null_is_absent() {
        let r: Publication =
            serde_json::from_str(r#"{"data": {"x" : 1, "y":[true]} ,"offset":3}"#).unwrap();
        assert_eq!(&r.data[..], br#"{"x" : 1, "y":[true]}"#);
        let r: Publication = serde_json::from_str(r#"{"data":null,"tags":null}"#).unwrap();
        assert!(r.data.is_empty());
        assert!(r.tags.is_empty());
        let r: Publication = serde_json::from_str(r#"{"data":"s\"x"}"#).unwrap();
        assert_eq!(&r.data[..], br#""s\"x""#);
    }

    #[test]
    fn decode_line_rejects_non_objects_and_trailing_data() {
        assert!(matches!(
            decode_line::<Command>(b"[]"),
            Err(DecodeError::NotAnObject)
        ));
        assert!(matches!(
            decode_line::<Command>(br#"{"id":"x"}"#),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(
            decode_line::<Command>(br#"{"id":1} {}"#),
            Err(DecodeError::Json(_))
        ));
        assert_eq!(decode_line::<Command>(br#"{"id":1}"#).unwrap().id, 1);
    }
}
