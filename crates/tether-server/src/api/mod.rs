//! The server HTTP API (`POST /api/<method>`) and the health endpoint.
//!
//! Backends publish and manage connections here. Each method decodes its JSON request,
//! acts on the hub or broker, and answers `{"result": …}` or `{"error": {"code", "message"}}`
//! with HTTP 200 — or, in transport error mode, the bare error with an HTTP status. Actions on
//! connections (subscribe, unsubscribe, disconnect, refresh) are posted to the connections'
//! handles and applied by their drivers; the API never touches a socket.

#[cfg(feature = "profiling")]
mod profile;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::value::RawValue;

use crate::breaker::State as BreakerState;
use crate::command::{self, ApiError, CallError};
use crate::config::ApiErrorMode;
use crate::metrics::RedisShardFigures;
use crate::node::Node;

/// The router for the API and health endpoints.
pub(crate) fn router(node: Arc<Node>) -> Router {
    let router = Router::new()
        .route("/api", post(legacy))
        .route("/api/{method}", post(call))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/ready", get(ready));
    #[cfg(feature = "profiling")]
    let router = router.route("/debug/pprof/profile", get(profile::profile));
    router.with_state(node)
}

/// Prometheus text exposition of the node's metrics.
async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    for health in node.engine.redis_health() {
        node.metrics.redis_shard(
            health.shard,
            RedisShardFigures {
                breaker: health.breaker.map(|state| match state {
                    BreakerState::Closed => 0,
                    BreakerState::Open => 1,
                    BreakerState::HalfOpen => 2,
                }),
                in_flight: health.commands_in_flight,
                rejected: health.rejected,
                opened: health.opened,
                pubsub_silent_s: health.pubsub_silent_for.map(|d| d.as_secs_f64()),
            },
        );
    }
    if let Some(disk) = node.engine.disk_stats() {
        node.metrics
            .disk(disk.bytes, disk.streams, disk.write_errors, disk.batches);
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        node.metrics.render(),
    )
}

async fn health() -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "{}",
    )
}

/// 200 when the engine is reachable and the node is not shutting down; 503 otherwise, so a
/// load balancer stops sending clients here.
async fn ready(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let ready = !node.is_draining() && !node.shutdown.is_cancelled() && node.engine.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, [(header::CONTENT_TYPE, "application/json")], "{}")
}

async fn call(
    State(node): State<Arc<Node>>,
    Path(method): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorized(&node, &headers, &query) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let transport_mode = node.config.http_api.error_mode == ApiErrorMode::Transport
        || headers
            .get("x-centrifugo-error-mode")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("transport"));
    let params: &RawValue =
        match serde_json::from_slice(if body.is_empty() { b"{}" } else { &body }) {
            Ok(params) => params,
            Err(_) => return (StatusCode::BAD_REQUEST, "bad request").into_response(),
        };
    if method == "batch" {
        return match command::batch(&node, params).await {
            Ok(replies) => json_response(StatusCode::OK, &replies),
            Err(CallError::Decode) => (StatusCode::BAD_REQUEST, "bad request").into_response(),
            Err(CallError::Api(error)) => error_response(&error, transport_mode),
        };
    }
    match command::dispatch(&node, &method, params).await {
        Ok(result) => json_response(StatusCode::OK, &serde_json::json!({ "result": result })),
        Err(CallError::Decode) => (StatusCode::BAD_REQUEST, "bad request").into_response(),
        Err(CallError::Api(error)) if error == ApiError::METHOD_NOT_FOUND => {
            (StatusCode::NOT_FOUND, "method not found").into_response()
        }
        Err(CallError::Api(error)) => error_response(&error, transport_mode),
    }
}

/// The legacy single endpoint `POST /api` (old `cent` clients, Centrifugo's
/// `handler_legacy.go`): newline-separated `{"id", "method", "params"}` commands, `method` a
/// case-insensitive name or its number in Centrifugo's `Command.MethodType`; answered in
/// order with newline-separated `{"id", "result"}` or `{"id", "error"}`.
async fn legacy(
    State(node): State<Arc<Node>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    #[derive(serde::Deserialize)]
    struct LegacyCommand<'a> {
        #[serde(default)]
        id: u32,
        #[serde(default)]
        method: Option<serde_json::Value>,
        #[serde(borrow, default)]
        params: Option<&'a RawValue>,
    }
    /// Centrifugo's `Command.MethodType` numbers 0..=12 (13 is unused).
    const METHODS: [&str; 13] = [
        "publish",
        "broadcast",
        "unsubscribe",
        "disconnect",
        "presence",
        "presence_stats",
        "history",
        "history_remove",
        "channels",
        "info",
        "rpc",
        "subscribe",
        "refresh",
    ];
    /// Names Centrifugo knows (numbers 14..=32) that tether does not implement.
    const OTHER_METHODS: [&str; 19] = [
        "connections",
        "update_user_status",
        "get_user_status",
        "delete_user_status",
        "block_user",
        "unblock_user",
        "revoke_token",
        "invalidate_user_tokens",
        "device_register",
        "device_update",
        "device_remove",
        "device_list",
        "device_topic_list",
        "device_topic_update",
        "user_topic_list",
        "user_topic_update",
        "send_push_notification",
        "update_push_status",
        "cancel_push",
    ];
    let bad_request = || (StatusCode::BAD_REQUEST, "bad request").into_response();
    if !authorized(&node, &headers, &query) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if node.shutdown.is_cancelled() {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if body.is_empty() {
        return bad_request();
    }
    let mut replies = Vec::new();
    for command in serde_json::Deserializer::from_slice(&body).into_iter::<LegacyCommand<'_>>() {
        let Ok(command) = command else {
            return bad_request();
        };
        // `None`: a number Centrifugo knows but tether does not implement, or no such method.
        let method: Option<&str> = match &command.method {
            None => Some(METHODS[0]),
            Some(serde_json::Value::String(name)) => {
                let name = name.to_ascii_lowercase();
                if let Some(&method) = METHODS.iter().find(|&&m| m == name) {
                    Some(method)
                } else if OTHER_METHODS.contains(&name.as_str()) {
                    None
                } else {
                    return bad_request();
                }
            }
            Some(serde_json::Value::Number(n)) => match n.as_i64() {
                Some(n) => usize::try_from(n)
                    .ok()
                    .and_then(|n| METHODS.get(n).copied()),
                None => return bad_request(),
            },
            Some(_) => return bad_request(),
        };
        let result = match (method, command.params) {
            (None, _) => Err(ApiError::METHOD_NOT_FOUND),
            // As Centrifugo: `info` reads no params.
            (Some("info"), _) => Ok(command::info(&node)),
            (Some(_), None) => Err(ApiError::BAD_REQUEST),
            (Some(method), Some(params)) => command::dispatch_item(&node, method, params).await,
        };
        let mut reply = match result {
            Ok(result) => serde_json::json!({ "result": result }),
            Err(error) => serde_json::json!({ "error": error.to_json() }),
        };
        if command.id != 0 {
            reply["id"] = command.id.into();
        }
        replies.push(reply.to_string());
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        replies.join("\n"),
    )
        .into_response()
}

/// The HTTP status of an API error in transport error mode.
fn status(error: &ApiError) -> StatusCode {
    match error.code {
        102 | 104 => StatusCode::NOT_FOUND,
        107 | 108 => StatusCode::BAD_REQUEST,
        112 => StatusCode::RANGE_NOT_SATISFIABLE,
        113 => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn error_response(error: &ApiError, transport_mode: bool) -> Response {
    if transport_mode {
        json_response(status(error), &error.to_json())
    } else {
        json_response(
            StatusCode::OK,
            &serde_json::json!({ "error": error.to_json() }),
        )
    }
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// `X-API-Key` when set, else `Authorization: apikey <key>`; when neither matched,
/// `?api_key=` (as Centrifugo's `APIKeyAuth`). An empty configured key never matches unless
/// the API is insecure.
fn authorized(node: &Node, headers: &HeaderMap, query: &HashMap<String, String>) -> bool {
    let api = &node.config.http_api;
    if api.insecure {
        return true;
    }
    if api.key.is_empty() {
        return false;
    }
    let x_api_key = headers
        .get("x-api-key")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let header_valid = if x_api_key.is_empty() {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|auth| {
                let parts: Vec<&str> = auth.split_ascii_whitespace().collect();
                parts.len() == 2 && parts[0].eq_ignore_ascii_case("apikey") && parts[1] == api.key
            })
    } else {
        x_api_key == api.key.as_bytes()
    };
    header_valid || query.get("api_key").is_some_and(|k| *k == api.key)
}
