//! The server API's commands (§4.2 of the compatibility reference): request types, what
//! each does, and their errors. The HTTP API (`api`) and the async consumers (`consumers`)
//! both run commands through [`dispatch`], so a command behaves the same whichever way it
//! arrives.

use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::broker::{
    BrokerError, ClientInfo, HistoryQuery, Publication, PublishOptions, StreamPosition,
};
use crate::cluster::{self, ControlCommand, SubscribeSpec};
use crate::events::StatusError;
use crate::hub::{ServerSubscribe, SubscribeOverrides};
use crate::node::Node;
use crate::wire::{CloseCode, Disconnect};

/// An API error: a code of §4.1 and its message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ApiError {
    /// Numeric code (100 internal, 102 unknown channel, 107 bad request, …).
    pub code: u32,
    /// Human-readable message.
    pub message: &'static str,
}

impl ApiError {
    /// 100: internal server error.
    pub(crate) const INTERNAL: Self = Self {
        code: 100,
        message: "internal server error",
    };
    /// 102: unknown channel (namespace not configured).
    pub(crate) const UNKNOWN_CHANNEL: Self = Self {
        code: 102,
        message: "unknown channel",
    };
    /// 104: method not found.
    pub(crate) const METHOD_NOT_FOUND: Self = Self {
        code: 104,
        message: "method not found",
    };
    /// 107: bad request.
    pub(crate) const BAD_REQUEST: Self = Self {
        code: 107,
        message: "bad request",
    };
    /// 108: not available (feature off for the namespace).
    pub(crate) const NOT_AVAILABLE: Self = Self {
        code: 108,
        message: "not available",
    };
    /// 112: unrecoverable position.
    pub(crate) const UNRECOVERABLE_POSITION: Self = Self {
        code: 112,
        message: "unrecoverable position",
    };

    /// `{"code", "message"}`.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "code": self.code, "message": self.message })
    }
}

/// Why a call failed: the body did not decode (HTTP 400), or an API error.
#[derive(Debug)]
pub(crate) enum CallError {
    Decode,
    Api(ApiError),
}

impl From<ApiError> for CallError {
    fn from(error: ApiError) -> Self {
        Self::Api(error)
    }
}

type CallResult = Result<Value, CallError>;

/// Runs one method.
pub(crate) async fn dispatch(node: &Node, method: &str, params: &RawValue) -> CallResult {
    match method {
        "publish" => publish(node, decode(params)?).await,
        "broadcast" => broadcast(node, decode(params)?).await,
        "subscribe" => subscribe(node, decode(params)?).await,
        "unsubscribe" => unsubscribe(node, decode(params)?).await,
        "disconnect" => disconnect(node, decode(params)?).await,
        "refresh" => refresh(node, &decode(params)?).await,
        "presence" => presence(node, &decode(params)?, false).await,
        "presence_stats" => presence(node, &decode(params)?, true).await,
        "history" => history(node, decode(params)?).await,
        "history_remove" => history_remove(node, &decode(params)?).await,
        "channels" => channels(node, &decode(params)?).await,
        "info" => Ok(info(node)),
        "update_user_status" => update_user_status(node, &decode(params)?).await,
        "get_user_status" => get_user_status(node, &decode(params)?).await,
        "delete_user_status" => delete_user_status(node, &decode(params)?).await,
        "connections" => connections(node, &decode(params)?).await,
        "rpc" => Err(ApiError::NOT_AVAILABLE.into()),
        _ => Err(ApiError::METHOD_NOT_FOUND.into()),
    }
}

/// Runs one method as an item of a batch or legacy request: params that do not decode are
/// that item's 107, not a failure of the whole request.
pub(crate) async fn dispatch_item(
    node: &Node,
    method: &str,
    params: &RawValue,
) -> Result<Value, ApiError> {
    match Box::pin(dispatch(node, method, params)).await {
        Ok(result) => Ok(result),
        Err(CallError::Decode) => Err(ApiError::BAD_REQUEST),
        Err(CallError::Api(error)) => Err(error),
    }
}

/// `batch`: runs the commands in order and answers `{"replies": [...]}` at the top level.
pub(crate) async fn batch(node: &Node, params: &RawValue) -> Result<Value, CallError> {
    #[derive(Deserialize)]
    struct Batch<'a> {
        #[serde(borrow, default)]
        commands: Vec<HashMap<String, &'a RawValue>>,
    }
    let request: Batch<'_> = serde_json::from_str(params.get()).map_err(|_| CallError::Decode)?;
    let mut replies = Vec::with_capacity(request.commands.len());
    for command in &request.commands {
        let Some((method, params)) = batch_method(command) else {
            let error = if command.is_empty() {
                ApiError::BAD_REQUEST
            } else {
                ApiError::METHOD_NOT_FOUND
            };
            replies.push(json!({ "error": error.to_json() }));
            continue;
        };
        replies.push(match dispatch_item(node, method, params).await {
            Ok(result) => json!({ method: result }),
            Err(error) => json!({ "error": error.to_json() }),
        });
    }
    Ok(json!({ "replies": replies }))
}

/// The request fields of a batch item, in the order Centrifugo's API `Command` declares them
/// (the last four are its PRO methods that tether has).
const BATCH_METHODS: [&str; 17] = [
    "publish",
    "broadcast",
    "subscribe",
    "unsubscribe",
    "disconnect",
    "presence",
    "presence_stats",
    "history",
    "history_remove",
    "info",
    "rpc",
    "refresh",
    "channels",
    "connections",
    "update_user_status",
    "get_user_status",
    "delete_user_status",
];

/// The method of a batch item: its first request field in [`BATCH_METHODS`] order that is
/// set (not `null`), as Centrifugo picks it; other keys are ignored. `None` when none is set.
fn batch_method<'a>(
    command: &HashMap<String, &'a RawValue>,
) -> Option<(&'static str, &'a RawValue)> {
    BATCH_METHODS.iter().find_map(|&method| {
        command
            .get(method)
            .filter(|params| params.get() != "null")
            .map(|&params| (method, params))
    })
}

fn decode<'a, T: Deserialize<'a>>(params: &'a RawValue) -> Result<T, CallError> {
    serde_json::from_str(params.get()).map_err(|_| CallError::Decode)
}

/// `publish` (one `channel`) and `broadcast` (several `channels`) share every other field.
#[derive(Deserialize)]
struct PublishRequest<'a> {
    #[serde(default)]
    channel: String,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    b64data: String,
    #[serde(default)]
    skip_history: bool,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    idempotency_key: String,
    #[serde(default)]
    delta: bool,
}

impl PublishRequest<'_> {
    fn options(&self) -> PublishOptionsRequest<'_> {
        PublishOptionsRequest {
            skip_history: self.skip_history,
            tags: &self.tags,
            idempotency_key: &self.idempotency_key,
            delta: self.delta,
        }
    }
}

/// What `publish` and `broadcast` apply to each channel besides the data.
struct PublishOptionsRequest<'a> {
    skip_history: bool,
    tags: &'a BTreeMap<String, String>,
    idempotency_key: &'a str,
    delta: bool,
}

/// A publication whose data and options arrived apart from a JSON request (a consumer's
/// publication data mode): one channel publishes, several broadcast.
#[derive(Debug, Default)]
pub(crate) struct PublishData {
    /// Where to publish.
    pub channels: Vec<String>,
    /// The publication's data, as it arrived.
    pub data: Bytes,
    /// Publication tags.
    pub tags: BTreeMap<String, String>,
    /// Idempotency key; empty: none.
    pub idempotency_key: String,
    /// Publish as a delta.
    pub delta: bool,
}

/// Runs a [`PublishData`]: `publish` for one channel (its result), `broadcast` for several
/// (`{"responses": [...]}`). No channel is a bad request.
pub(crate) async fn publish_data(node: &Node, publication: &PublishData) -> CallResult {
    let options = PublishOptionsRequest {
        skip_history: false,
        tags: &publication.tags,
        idempotency_key: &publication.idempotency_key,
        delta: publication.delta,
    };
    match publication.channels.as_slice() {
        [] => Err(ApiError::BAD_REQUEST.into()),
        [channel] => Ok(publish_one(node, channel, &options, &publication.data).await?),
        channels => Ok(broadcast_data(node, channels, &options, &publication.data).await),
    }
}

/// Runs `method` as [`dispatch`] does, except that a `publish` or `broadcast` without its own
/// `idempotency_key` takes `key` (a consumer's message id), so a message delivered twice
/// publishes once within the engine's idempotency window.
pub(crate) async fn dispatch_keyed(
    node: &Node,
    method: &str,
    params: &RawValue,
    key: &str,
) -> CallResult {
    if key.is_empty() || !matches!(method, "publish" | "broadcast") {
        return dispatch(node, method, params).await;
    }
    let mut req: PublishRequest<'_> = decode(params)?;
    if req.idempotency_key.is_empty() {
        key.clone_into(&mut req.idempotency_key);
    }
    if method == "publish" {
        publish(node, req).await
    } else {
        broadcast(node, req).await
    }
}

/// The payload of a request: `b64data` when set (it wins over `data`, as in Centrifugo),
/// else `data`.
fn payload(data: Option<&RawValue>, b64data: &str) -> Result<Bytes, ApiError> {
    if !b64data.is_empty() {
        return base64::engine::general_purpose::STANDARD
            .decode(b64data)
            .map(Bytes::from)
            .map_err(|_| ApiError::BAD_REQUEST);
    }
    if let Some(data) = data {
        return Ok(Bytes::copy_from_slice(data.get().as_bytes()));
    }
    Err(ApiError::BAD_REQUEST)
}

/// The API error for a failed engine operation.
fn engine_error(error: &BrokerError) -> ApiError {
    match error {
        BrokerError::UnrecoverablePosition => ApiError::UNRECOVERABLE_POSITION,
        BrokerError::UnsupportedChannel => ApiError::BAD_REQUEST,
        BrokerError::NotAvailable => ApiError::NOT_AVAILABLE,
        BrokerError::Unavailable(_) => ApiError::INTERNAL,
    }
}

async fn publish(node: &Node, req: PublishRequest<'_>) -> CallResult {
    let data = payload(req.data, &req.b64data)?;
    Ok(publish_one(node, &req.channel, &req.options(), &data).await?)
}

async fn publish_one(
    node: &Node,
    channel: &str,
    req: &PublishOptionsRequest<'_>,
    data: &Bytes,
) -> Result<Value, ApiError> {
    if channel.is_empty() {
        return Err(ApiError::BAD_REQUEST);
    }
    let ns = node
        .config
        .namespace_for(channel)
        .map_err(|_| ApiError::UNKNOWN_CHANNEL)?;
    let history = if req.skip_history {
        None
    } else {
        ns.history_enabled().then(|| crate::broker::HistoryOptions {
            size: ns.history_size,
            ttl: ns.history_ttl,
            meta_ttl: ns
                .history_meta_ttl
                .unwrap_or(node.config.channel.history_meta_ttl),
        })
    };
    let publication = Publication {
        data: data.clone(),
        tags: req.tags.clone(),
        delta: req.delta || ns.delta_publish,
        time_ms: node.now().unix * 1000,
        ..Default::default()
    };
    let opts = PublishOptions {
        history,
        idempotency_key: (!req.idempotency_key.is_empty()).then(|| req.idempotency_key.to_owned()),
    };
    let published = node
        .timed("publish", node.engine.publish(channel, publication, &opts))
        .await
        .map_err(|e| engine_error(&e))?;
    if !published.from_cache {
        node.metrics.publications.increment(1);
    }
    Ok(match published.position {
        Some(position) => json!({ "offset": position.offset, "epoch": position.epoch }),
        None => json!({}),
    })
}

async fn broadcast(node: &Node, req: PublishRequest<'_>) -> CallResult {
    if req.channels.is_empty() {
        return Err(ApiError::BAD_REQUEST.into());
    }
    let data = payload(req.data, &req.b64data)?;
    Ok(broadcast_data(node, &req.channels, &req.options(), &data).await)
}

async fn broadcast_data(
    node: &Node,
    channels: &[String],
    options: &PublishOptionsRequest<'_>,
    data: &Bytes,
) -> Value {
    let mut responses = Vec::with_capacity(channels.len());
    for channel in channels {
        responses.push(match publish_one(node, channel, options, data).await {
            Ok(result) => json!({ "result": result }),
            Err(error) => json!({ "error": error.to_json() }),
        });
    }
    json!({ "responses": responses })
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct BoolValue {
    value: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Override {
    presence: Option<BoolValue>,
    join_leave: Option<BoolValue>,
    force_push_join_leave: Option<BoolValue>,
    force_positioning: Option<BoolValue>,
    force_recovery: Option<BoolValue>,
}

#[derive(Deserialize)]
struct PositionRequest {
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    epoch: String,
}

#[derive(Deserialize)]
struct SubscribeRequest<'a> {
    #[serde(default)]
    user: String,
    #[serde(default)]
    channel: String,
    #[serde(borrow, default)]
    info: Option<&'a RawValue>,
    #[serde(default)]
    b64info: String,
    #[serde(default)]
    client: String,
    #[serde(default)]
    session: String,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    b64data: String,
    #[serde(default)]
    recover_since: Option<PositionRequest>,
    #[serde(default)]
    expire_at: i64,
    #[serde(default)]
    r#override: Option<Override>,
}

fn optional_payload(data: Option<&RawValue>, b64: &str) -> Result<Option<Bytes>, ApiError> {
    if data.is_none() && b64.is_empty() {
        return Ok(None);
    }
    payload(data, b64).map(Some)
}

async fn subscribe(node: &Node, req: SubscribeRequest<'_>) -> CallResult {
    if req.user.is_empty() || req.channel.is_empty() {
        return Err(ApiError::BAD_REQUEST.into());
    }
    node.config
        .namespace_for(&req.channel)
        .map_err(|_| ApiError::UNKNOWN_CHANNEL)?;
    let o = req.r#override.unwrap_or_default();
    let pick = |v: Option<BoolValue>| v.map(|v| v.value);
    let control = ServerSubscribe {
        channel: req.channel,
        info: optional_payload(req.info, &req.b64info)?,
        data: optional_payload(req.data, &req.b64data)?,
        recover_since: req.recover_since.map(|p| StreamPosition {
            offset: p.offset,
            epoch: p.epoch,
        }),
        expire_at: (req.expire_at > 0).then_some(req.expire_at),
        overrides: SubscribeOverrides {
            presence: pick(o.presence),
            join_leave: pick(o.join_leave),
            force_push_join_leave: pick(o.force_push_join_leave),
            force_recovery: pick(o.force_recovery),
            force_positioning: pick(o.force_positioning),
        },
    };
    // Centrifugo applies a call with `session` only to the connection with that session id;
    // no tether connection has one, so such a call (here and in unsubscribe, disconnect,
    // refresh) matches no connection.
    if !req.session.is_empty() {
        return Ok(json!({}));
    }
    let o = &control.overrides;
    let spec = SubscribeSpec {
        channel: control.channel.clone(),
        info: control.info.as_ref().map(cluster::b64),
        data: control.data.as_ref().map(cluster::b64),
        recover_since: control
            .recover_since
            .as_ref()
            .map(|p| (p.offset, p.epoch.clone())),
        expire_at: control.expire_at,
        overrides: [
            o.presence,
            o.join_leave,
            o.force_push_join_leave,
            o.force_recovery,
            o.force_positioning,
        ],
    };
    let command = ControlCommand::Subscribe {
        user: req.user,
        client: req.client,
        subscribe: spec,
    };
    node.cluster
        .apply_everywhere(command)
        .await
        .map_err(|_| ApiError::INTERNAL)?;
    Ok(json!({}))
}

#[derive(Deserialize)]
struct UnsubscribeRequest {
    #[serde(default)]
    user: String,
    #[serde(default)]
    channel: String,
    #[serde(default)]
    client: String,
    #[serde(default)]
    session: String,
}

async fn unsubscribe(node: &Node, req: UnsubscribeRequest) -> CallResult {
    if req.user.is_empty() || req.channel.is_empty() {
        return Err(ApiError::BAD_REQUEST.into());
    }
    node.config
        .namespace_for(&req.channel)
        .map_err(|_| ApiError::UNKNOWN_CHANNEL)?;
    if !req.session.is_empty() {
        return Ok(json!({}));
    }
    let command = ControlCommand::Unsubscribe {
        user: req.user,
        channel: req.channel,
        client: req.client,
    };
    node.cluster
        .apply_everywhere(command)
        .await
        .map_err(|_| ApiError::INTERNAL)?;
    Ok(json!({}))
}

#[derive(Deserialize)]
struct DisconnectCodeRequest {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
struct DisconnectRequest {
    #[serde(default)]
    user: String,
    #[serde(default)]
    client: String,
    #[serde(default)]
    session: String,
    #[serde(default)]
    whitelist: Vec<String>,
    #[serde(default)]
    disconnect: Option<DisconnectCodeRequest>,
}

async fn disconnect(node: &Node, req: DisconnectRequest) -> CallResult {
    if req.user.is_empty() {
        return Err(ApiError::BAD_REQUEST.into());
    }
    if !req.session.is_empty() {
        return Ok(json!({}));
    }
    let disconnect = match req.disconnect {
        Some(d) if d.code != 0 => Disconnect {
            code: CloseCode::new(d.code),
            reason: d.reason,
        },
        _ => tether_proto::codes::DisconnectCode::FORCE_DISCONNECT.into(),
    };
    let command = ControlCommand::Disconnect {
        user: req.user,
        client: req.client,
        whitelist: req.whitelist,
        code: disconnect.code.get(),
        reason: disconnect.reason,
    };
    node.cluster
        .apply_everywhere(command)
        .await
        .map_err(|_| ApiError::INTERNAL)?;
    Ok(json!({}))
}

#[derive(Deserialize)]
struct RefreshRequest<'a> {
    #[serde(default)]
    user: String,
    #[serde(default)]
    client: String,
    #[serde(default)]
    session: String,
    #[serde(default)]
    expired: bool,
    #[serde(default)]
    expire_at: i64,
    #[serde(borrow, default)]
    info: Option<&'a RawValue>,
}

async fn refresh(node: &Node, req: &RefreshRequest<'_>) -> CallResult {
    if req.user.is_empty() {
        return Err(ApiError::BAD_REQUEST.into());
    }
    if !req.session.is_empty() {
        return Ok(json!({}));
    }
    let info = req.info.map(|i| Bytes::copy_from_slice(i.get().as_bytes()));
    let command = ControlCommand::Refresh {
        user: req.user.clone(),
        client: req.client.clone(),
        expired: req.expired,
        expire_at: req.expire_at,
        info: info.as_ref().map(cluster::b64),
    };
    node.cluster
        .apply_everywhere(command)
        .await
        .map_err(|_| ApiError::INTERNAL)?;
    Ok(json!({}))
}

#[derive(Deserialize)]
struct ChannelRequest {
    #[serde(default)]
    channel: String,
}

async fn presence(node: &Node, req: &ChannelRequest, stats: bool) -> CallResult {
    if req.channel.is_empty() {
        return Err(ApiError::BAD_REQUEST.into());
    }
    let ns = node
        .config
        .namespace_for(&req.channel)
        .map_err(|_| ApiError::UNKNOWN_CHANNEL)?;
    if !ns.presence {
        return Err(ApiError::NOT_AVAILABLE.into());
    }
    if stats {
        let s = node
            .engine
            .presence_stats(&req.channel)
            .await
            .map_err(|_| ApiError::INTERNAL)?;
        return Ok(json!({ "num_clients": s.num_clients, "num_users": s.num_users }));
    }
    let presence: serde_json::Map<String, Value> = node
        .engine
        .presence(&req.channel)
        .await
        .map_err(|_| ApiError::INTERNAL)?
        .into_iter()
        .map(|(client, info)| (client, client_info_json(&info)))
        .collect();
    Ok(json!({ "presence": presence }))
}

#[derive(Deserialize)]
struct HistoryRequest {
    #[serde(default)]
    channel: String,
    #[serde(default)]
    limit: i64,
    #[serde(default)]
    since: Option<PositionRequest>,
    #[serde(default)]
    reverse: bool,
}

async fn history(node: &Node, req: HistoryRequest) -> CallResult {
    if req.channel.is_empty() {
        return Err(ApiError::BAD_REQUEST.into());
    }
    let ns = node
        .config
        .namespace_for(&req.channel)
        .map_err(|_| ApiError::UNKNOWN_CHANNEL)?;
    if !ns.history_enabled() {
        return Err(ApiError::NOT_AVAILABLE.into());
    }
    let limit = if req.limit < 0 {
        None
    } else {
        Some(req.limit as usize)
    };
    let query = HistoryQuery {
        since: req.since.map(|p| StreamPosition {
            offset: p.offset,
            epoch: p.epoch,
        }),
        limit,
        reverse: req.reverse,
        meta_ttl: ns
            .history_meta_ttl
            .unwrap_or(node.config.channel.history_meta_ttl),
    };
    let page = node
        .timed("history", node.engine.history(&req.channel, &query))
        .await
        .map_err(|e| engine_error(&e))?;
    let publications: Vec<Value> = page
        .publications
        .iter()
        .map(|p| publication_json(p))
        .collect();
    Ok(json!({ "publications": publications, "epoch": page.top.epoch, "offset": page.top.offset }))
}

async fn history_remove(node: &Node, req: &ChannelRequest) -> CallResult {
    if req.channel.is_empty() {
        return Err(ApiError::BAD_REQUEST.into());
    }
    let ns = node
        .config
        .namespace_for(&req.channel)
        .map_err(|_| ApiError::UNKNOWN_CHANNEL)?;
    // As Centrifugo: a namespace without history has none to remove.
    if !ns.history_enabled() {
        return Err(ApiError::NOT_AVAILABLE.into());
    }
    node.engine
        .remove_history(&req.channel)
        .await
        .map_err(|e| engine_error(&e))?;
    Ok(json!({}))
}

#[derive(Deserialize)]
struct ChannelsRequest {
    #[serde(default)]
    pattern: String,
}

async fn channels(node: &Node, req: &ChannelsRequest) -> CallResult {
    let channels: serde_json::Map<String, Value> = node
        .cluster
        .channels()
        .await
        .into_iter()
        .filter(|(name, _)| {
            req.pattern.is_empty() || crate::wire::pattern::wildcard_match(&req.pattern, name)
        })
        .map(|(name, n)| (name, json!({ "num_clients": n })))
        .collect();
    Ok(json!({ "channels": channels }))
}

/// The users of a user status call.
#[derive(Deserialize)]
struct UsersRequest {
    #[serde(default)]
    users: Vec<String>,
}

fn status_error(error: &StatusError) -> ApiError {
    match error {
        StatusError::Disabled => ApiError::NOT_AVAILABLE,
        StatusError::Store(error) => engine_error(error),
    }
}

/// The users to ask about: at least one, none empty.
fn status_users(req: &UsersRequest) -> Result<&[String], CallError> {
    if req.users.is_empty() || req.users.iter().any(String::is_empty) {
        return Err(ApiError::BAD_REQUEST.into());
    }
    Ok(&req.users)
}

async fn update_user_status(node: &Node, req: &UsersRequest) -> CallResult {
    let users = status_users(req)?;
    node.events
        .update_status(users)
        .await
        .map_err(|e| status_error(&e))?;
    Ok(json!({}))
}

async fn get_user_status(node: &Node, req: &UsersRequest) -> CallResult {
    let users = status_users(req)?;
    let statuses: Vec<Value> = node
        .events
        .get_status(users)
        .await
        .map_err(|e| status_error(&e))?
        .into_iter()
        .map(|status| {
            let mut v = json!({ "user": status.user });
            if let Some(at) = status.active {
                v["active"] = json!(at);
            }
            if let Some(at) = status.online {
                v["online"] = json!(at);
            }
            v
        })
        .collect();
    Ok(json!({ "statuses": statuses }))
}

async fn delete_user_status(node: &Node, req: &UsersRequest) -> CallResult {
    let users = status_users(req)?;
    node.events
        .delete_status(users)
        .await
        .map_err(|e| status_error(&e))?;
    Ok(json!({}))
}

#[derive(Deserialize)]
struct ConnectionsRequest {
    #[serde(default)]
    user: String,
    /// Centrifugo PRO's CEL filter: not supported.
    #[serde(default)]
    expression: String,
}

/// A user's live connections on every node (Centrifugo PRO's `connections`, by user).
async fn connections(node: &Node, req: &ConnectionsRequest) -> CallResult {
    if !req.expression.is_empty() {
        return Err(ApiError::NOT_AVAILABLE.into());
    }
    if req.user.is_empty() {
        return Err(ApiError::BAD_REQUEST.into());
    }
    let connections: serde_json::Map<String, Value> = node
        .cluster
        .connections(&req.user)
        .await
        .into_iter()
        .map(|(client, desc)| {
            let mut v = json!({
                "user": desc.user,
                "transport": desc.transport,
                "protocol": desc.protocol,
                "connected_at": desc.connected_at,
            });
            if let Some(info) = desc.info.as_deref().and_then(cluster::unb64) {
                v["info"] = raw_json(&info);
            }
            (client, v)
        })
        .collect();
    Ok(json!({ "connections": connections }))
}

/// This node and every other node heard from recently (announcements over the control
/// channel).
pub(crate) fn info(node: &Node) -> Value {
    let mut nodes = vec![node.cluster.local_info()];
    nodes.extend(node.cluster.live_nodes());
    json!({ "nodes": nodes })
}

/// Raw JSON bytes as a JSON value (non-JSON bytes become a base64 string).
fn raw_json(bytes: &Bytes) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)))
}

fn client_info_json(info: &ClientInfo) -> Value {
    let mut v = json!({ "client": info.client, "user": info.user });
    if let Some(ci) = &info.conn_info {
        v["conn_info"] = raw_json(ci);
    }
    if let Some(ci) = &info.chan_info {
        v["chan_info"] = raw_json(ci);
    }
    v
}

fn publication_json(p: &Publication) -> Value {
    let mut v = json!({ "data": raw_json(&p.data), "offset": p.offset });
    if let Some(info) = &p.info {
        v["info"] = client_info_json(info);
    }
    if !p.tags.is_empty() {
        v["tags"] = json!(p.tags);
    }
    v
}
