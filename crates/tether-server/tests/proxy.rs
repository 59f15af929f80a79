//! The backend proxy against a real HTTP backend (an axum server on a loopback port in this
//! process): what the backend receives, and what the client sees of each answer, as
//! Centrifugo v6 does it (compat-proxy §4–§6). Faults: a backend that is slow, down, or
//! answers 500, and the circuit breaker that then refuses calls at once. HTTPS backends:
//! `http.tls` with a CA made in the test (server CA, server name, client certificates).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde_json::{Value, json};
use support::tls::{TestCa, TlsListener};
use support::{
    Client, Config, EnabledProxy, NamedProxy, Namespace, NamespaceOptions, ProxyConfig,
    ProxyHttpConfig, RpcNamespace, RpcNamespaceOptions, TempDir, TestServer, TlsClientConfig,
    config, start, start_error, user_token,
};

/// One request the backend received.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    headers: HeaderMap,
    body: Value,
}

/// What the backend does with a request.
enum Answer {
    Json(Value),
    Status(u16),
    /// Answers after a delay.
    Slow(Duration, Value),
    /// Answers once the gate is opened.
    Gated(Arc<tokio::sync::Semaphore>, Value),
}

type Handler = Arc<dyn Fn(&Seen) -> Answer + Send + Sync>;

#[derive(Clone)]
struct BackendState {
    seen: Arc<Mutex<Vec<Seen>>>,
    handler: Arc<Mutex<Handler>>,
}

/// A proxy backend: records every request and answers as its handler says.
struct Backend {
    addr: SocketAddr,
    /// `http` or `https`.
    scheme: &'static str,
    state: BackendState,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    async fn start(handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        Self::serve_on(listener, "http", handler)
    }

    /// A backend speaking HTTPS with `tls` (see `support::tls`).
    async fn start_tls(
        tls: Arc<rustls::ServerConfig>,
        handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static,
    ) -> Self {
        Self::serve_on(TlsListener::bind(tls).await, "https", handler)
    }

    fn serve_on<L>(
        listener: L,
        scheme: &'static str,
        handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static,
    ) -> Self
    where
        L: axum::serve::Listener<Addr = SocketAddr>,
    {
        let state = BackendState {
            seen: Arc::default(),
            handler: Arc::new(Mutex::new(Arc::new(handler))),
        };
        let app = axum::Router::new()
            .fallback(serve)
            .with_state(state.clone());
        let addr = listener.local_addr().expect("backend addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            scheme,
            state,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    fn seen(&self, path: &str) -> Vec<Seen> {
        self.state
            .seen
            .lock()
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }

    fn answer_with(&self, handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) {
        *self.state.handler.lock() = Arc::new(handler);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    State(state): State<BackendState>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let seen = Seen {
        path: uri.path().to_owned(),
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    state.seen.lock().push(seen.clone());
    let handler = state.handler.lock().clone();
    match handler(&seen) {
        Answer::Json(value) => axum::Json(value).into_response(),
        Answer::Status(status) => StatusCode::from_u16(status)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response(),
        Answer::Slow(delay, value) => {
            tokio::time::sleep(delay).await;
            axum::Json(value).into_response()
        }
        Answer::Gated(gate, value) => {
            let _open = gate.acquire().await;
            axum::Json(value).into_response()
        }
    }
}

/// A proxy object for `endpoint` with the default timeout (1 s).
fn proxy(endpoint: String) -> ProxyConfig {
    ProxyConfig {
        endpoint,
        ..ProxyConfig::default()
    }
}

/// A config whose connect proxy is `backend`'s `/connect`, forwarding the Cookie header.
fn connect_proxy_config(backend: &Backend) -> Config {
    let mut cfg = config();
    cfg.client.proxy.connect = EnabledProxy {
        enabled: true,
        proxy: ProxyConfig {
            http_headers: vec!["Cookie".to_owned()],
            ..proxy(backend.url("/connect"))
        },
    };
    cfg
}

/// The connect answer of a backend that knows users by their `session` cookie.
fn cookie_user(seen: &Seen) -> Answer {
    let cookie = seen
        .headers
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    match cookie.strip_prefix("session=") {
        Some("refuse") => Answer::Json(json!({"error": {"code": 1403, "message": "forbidden"}})),
        Some("ban") => Answer::Json(json!({"disconnect": {"code": 4501, "reason": "banned"}})),
        Some(user) => Answer::Json(json!({"result": {
            "user": user,
            "info": {"name": user},
            "data": {"hello": user},
            "meta": {"session": user},
        }})),
        None => Answer::Json(json!({})),
    }
}

/// A client of `server` that sends `cookie` with its WebSocket upgrade.
async fn with_cookie(server: &TestServer, cookie: &str) -> Client {
    Client::open_with_headers(server, &[("Cookie", cookie)]).await
}

#[tokio::test]
async fn a_cookie_alone_connects_through_the_connect_proxy() {
    let backend = Backend::start(cookie_user).await;
    let server = start(connect_proxy_config(&backend)).await;
    let mut client = with_cookie(&server, "session=ann").await;
    let reply = client
        .call(json!({"connect": {"data": {"app": "web"}, "name": "js", "version": "5.2.0"}}))
        .await;
    assert_eq!(reply["connect"]["data"], json!({"hello": "ann"}), "{reply}");
    // The connection is ann's: presence of a channel shows her info.
    let seen = backend.seen("/connect");
    assert_eq!(seen.len(), 1);
    let body = &seen[0].body;
    assert_eq!(body["client"], reply["connect"]["client"]);
    assert_eq!(body["transport"], "websocket");
    assert_eq!(body["protocol"], "json");
    assert_eq!(body["encoding"], "json");
    assert_eq!(body["data"], json!({"app": "web"}));
    assert_eq!(
        (body["name"].as_str(), body["version"].as_str()),
        (Some("js"), Some("5.2.0"))
    );
    assert!(
        body.get("user").is_none(),
        "a connect request has no user: {body}"
    );
    assert_eq!(seen[0].headers["cookie"], "session=ann");
    assert_eq!(seen[0].headers["content-type"], "application/json");
    assert_eq!(server.node.hub().stats().num_users, 1);
    server.stop().await;
}

#[tokio::test]
async fn a_token_still_connects_without_asking_the_backend() {
    let backend = Backend::start(cookie_user).await;
    let server = start(connect_proxy_config(&backend)).await;
    let (_client, reply) = Client::connected(&server, "42").await;
    assert!(reply.get("connect").is_some(), "{reply}");
    assert!(backend.seen("/connect").is_empty());
    server.stop().await;
}

#[tokio::test]
async fn the_backend_refuses_a_connect_with_an_error_or_a_disconnect() {
    let backend = Backend::start(cookie_user).await;
    let server = start(connect_proxy_config(&backend)).await;

    let mut refused = with_cookie(&server, "session=refuse").await;
    let reply = refused.call(json!({"connect": {}})).await;
    assert_eq!(
        reply["error"],
        json!({"code": 1403, "message": "forbidden"}),
        "{reply}"
    );

    let mut banned = with_cookie(&server, "session=ban").await;
    banned.send_raw(r#"{"id":1,"connect":{}}"#).await;
    let frame = banned
        .closed(Duration::from_secs(5))
        .await
        .expect("a close frame");
    assert_eq!(u16::from(frame.code), 4501);
    assert_eq!(frame.reason, "banned");

    // No result: no credentials, and anonymous connects are not allowed.
    let mut nobody = Client::open(&server).await;
    nobody.send_raw(r#"{"id":1,"connect":{}}"#).await;
    assert_eq!(nobody.close_code(Duration::from_secs(5)).await, Some(3501));
    server.stop().await;
}

#[tokio::test]
async fn connect_result_channels_become_server_side_subscriptions() {
    let backend = Backend::start(|_: &Seen| {
        Answer::Json(json!({"result": {
            "user": "7",
            "channels": ["news"],
            "subs": {"chat:room": {"data": {"d": 1}, "override": {"presence": {"value": false}}}},
        }}))
    })
    .await;
    let server = start(connect_proxy_config(&backend)).await;
    let mut client = Client::open(&server).await;
    let reply = client.call(json!({"connect": {}})).await;
    let subs = &reply["connect"]["subs"];
    assert!(subs.get("news").is_some(), "{reply}");
    assert_eq!(subs["chat:room"]["data"], json!({"d": 1}), "{reply}");
    // The override turned presence off for this subscription of a presence namespace.
    let (status, presence) = server
        .api("presence", json!({"channel": "chat:room"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(presence["result"]["presence"], json!({}), "{presence}");
    server
        .api("publish", json!({"channel": "news", "data": {"n": 1}}))
        .await;
    let push = client.wait_for(|m| m["push"]["channel"] == "news").await;
    assert_eq!(push["push"]["pub"]["data"], json!({"n": 1}));

    // A channel in no namespace fails the connect with 102.
    backend.answer_with(|_| Answer::Json(json!({"result": {"user": "7", "channels": ["nope:x"]}})));
    let mut other = Client::open(&server).await;
    let reply = other.call(json!({"connect": {}})).await;
    assert_eq!(reply["error"]["code"], 102, "{reply}");
    server.stop().await;
}

#[tokio::test]
async fn a_backend_that_is_down_slow_or_failing_gives_the_temporary_internal_error() {
    // Down: a port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = format!("http://{}/connect", closed.local_addr().expect("addr"));
    drop(closed);
    let mut cfg = config();
    cfg.client.proxy.connect = EnabledProxy {
        enabled: true,
        proxy: ProxyConfig {
            timeout: Duration::from_millis(300),
            ..proxy(dead)
        },
    };
    let server = start(cfg).await;
    let mut client = Client::open(&server).await;
    let reply = client.call(json!({"connect": {}})).await;
    assert_eq!(
        reply["error"],
        json!({"code": 100, "message": "internal server error", "temporary": true}),
        "{reply}"
    );
    server.stop().await;

    // Slow: past the timeout. Failing: 500.
    let backend = Backend::start(|seen: &Seen| {
        if seen.path == "/slow" {
            Answer::Slow(Duration::from_secs(5), json!({"result": {"user": "1"}}))
        } else {
            Answer::Status(500)
        }
    })
    .await;
    for path in ["/slow", "/fail"] {
        let mut cfg = config();
        cfg.client.proxy.connect = EnabledProxy {
            enabled: true,
            proxy: ProxyConfig {
                timeout: Duration::from_millis(300),
                ..proxy(backend.url(path))
            },
        };
        let server = start(cfg).await;
        let mut client = Client::open(&server).await;
        let started = Instant::now();
        let reply = client.call(json!({"connect": {}})).await;
        assert_eq!(reply["error"]["code"], 100, "{path}: {reply}");
        assert_eq!(reply["error"]["temporary"], true, "{path}: {reply}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{path}: answered at the timeout, not after the backend's 5 s"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn status_transforms_turn_a_status_into_an_error_or_a_disconnect() {
    let backend = Backend::start(|seen: &Seen| match seen.path.as_str() {
        "/404" => Answer::Status(404),
        _ => Answer::Status(401),
    })
    .await;
    for (path, expect_error) in [("/404", true), ("/401", false)] {
        let mut cfg = config();
        let mut proxy = proxy(backend.url(path));
        proxy.http.status_to_code_transforms = serde_json::from_value(json!([
            {"status_code": 404, "to_error": {"code": 1404, "message": "not found"}},
            {"status_code": 401, "to_disconnect": {"code": 4501, "reason": "unauthorized"}},
        ]))
        .expect("transforms");
        cfg.client.proxy.connect = EnabledProxy {
            enabled: true,
            proxy,
        };
        let server = start(cfg).await;
        let mut client = Client::open(&server).await;
        if expect_error {
            let reply = client.call(json!({"connect": {}})).await;
            assert_eq!(reply["error"]["code"], 1404, "{reply}");
        } else {
            client.send_raw(r#"{"id":1,"connect":{}}"#).await;
            assert_eq!(client.close_code(Duration::from_secs(5)).await, Some(4501));
        }
        server.stop().await;
    }
}

/// A config with subscribe and publish proxies on `backend` for the `room` namespace.
fn channel_proxy_config(backend: &Backend) -> Config {
    let mut cfg = config();
    cfg.channel.proxy.subscribe = proxy(backend.url("/subscribe"));
    cfg.channel.proxy.publish = ProxyConfig {
        include_connection_meta: true,
        ..proxy(backend.url("/publish"))
    };
    cfg.channel.namespaces.push(Namespace {
        name: "room".to_owned(),
        options: NamespaceOptions {
            subscribe_proxy_enabled: true,
            publish_proxy_enabled: true,
            history_size: 10,
            history_ttl: Duration::from_secs(60),
            ..NamespaceOptions::default()
        },
    });
    cfg
}

fn room_backend(seen: &Seen) -> Answer {
    let body = &seen.body;
    match seen.path.as_str() {
        "/subscribe" if body["channel"] == "room:open" => {
            Answer::Json(json!({"result": {"info": {"role": "guest"}, "data": {"welcome": true}}}))
        }
        "/subscribe" => {
            Answer::Json(json!({"error": {"code": 103, "message": "permission denied"}}))
        }
        "/publish" if body["data"]["text"] == "reject" => {
            Answer::Json(json!({"error": {"code": 1403, "message": "rejected"}}))
        }
        "/publish" if body["data"]["text"] == "rewrite" => {
            Answer::Json(json!({"result": {"data": {"text": "rewritten"}}}))
        }
        _ => Answer::Json(json!({"result": {}})),
    }
}

#[tokio::test]
async fn the_subscribe_proxy_allows_one_channel_and_refuses_another() {
    let backend = Backend::start(room_backend).await;
    let server = start(channel_proxy_config(&backend)).await;
    let (mut client, reply) = Client::connected(&server, "5").await;
    let client_id = reply["connect"]["client"].clone();
    let result = client
        .subscribe(json!({"channel": "room:open", "data": {"ask": 1}}))
        .await;
    assert_eq!(result["data"], json!({"welcome": true}), "{result}");
    let reply = client
        .call(json!({"subscribe": {"channel": "room:closed"}}))
        .await;
    assert_eq!(reply["error"]["code"], 103, "{reply}");
    let seen = backend.seen("/subscribe");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].body["client"], client_id);
    assert_eq!(seen[0].body["user"], "5");
    assert_eq!(seen[0].body["channel"], "room:open");
    assert_eq!(seen[0].body["data"], json!({"ask": 1}));
    server.stop().await;
}

#[tokio::test]
async fn the_publish_proxy_stores_rewrites_and_refuses() {
    let backend = Backend::start(room_backend).await;
    let server = start(channel_proxy_config(&backend)).await;
    let (mut reader, _) = Client::connected(&server, "reader").await;
    reader.subscribe(json!({"channel": "room:open"})).await;
    let (mut writer, _) = Client::connected(&server, "writer").await;

    let reply = writer
        .call(json!({"publish": {"channel": "room:open", "data": {"text": "hello"}}}))
        .await;
    assert!(reply.get("publish").is_some(), "{reply}");
    let push = reader.wait_for(|m| m.get("push").is_some()).await;
    assert_eq!(push["push"]["pub"]["data"], json!({"text": "hello"}));
    assert_eq!(push["push"]["pub"]["info"]["user"], "writer");

    writer
        .call(json!({"publish": {"channel": "room:open", "data": {"text": "rewrite"}}}))
        .await;
    let push = reader.wait_for(|m| m.get("push").is_some()).await;
    assert_eq!(push["push"]["pub"]["data"], json!({"text": "rewritten"}));

    let reply = writer
        .call(json!({"publish": {"channel": "room:open", "data": {"text": "reject"}}}))
        .await;
    assert_eq!(
        reply["error"],
        json!({"code": 1403, "message": "rejected"}),
        "{reply}"
    );
    assert!(
        reader
            .next_within(Duration::from_millis(300))
            .await
            .is_none(),
        "a refused publication reaches nobody"
    );
    // History holds exactly what was published.
    let (_, history) = server
        .api("history", json!({"channel": "room:open", "limit": -1}))
        .await;
    let texts: Vec<&Value> = history["result"]["publications"]
        .as_array()
        .expect("publications")
        .iter()
        .map(|p| &p["data"]["text"])
        .collect();
    assert_eq!(texts, [&json!("hello"), &json!("rewritten")]);
    let seen = backend.seen("/publish");
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].body["user"], "writer");
    assert_eq!(seen[0].body["data"], json!({"text": "hello"}));
    server.stop().await;
}

#[tokio::test]
async fn connection_meta_from_the_connect_result_goes_to_later_events() {
    let backend = Backend::start(|seen: &Seen| match seen.path.as_str() {
        "/connect" => cookie_user(seen),
        _ => room_backend(seen),
    })
    .await;
    let mut cfg = channel_proxy_config(&backend);
    cfg.client.proxy.connect = connect_proxy_config(&backend).client.proxy.connect;
    let server = start(cfg).await;
    let mut client = with_cookie(&server, "session=meg").await;
    client.call(json!({"connect": {}})).await;
    client
        .call(json!({"publish": {"channel": "room:open", "data": {"text": "hi"}}}))
        .await;
    let seen = backend.seen("/publish");
    assert_eq!(
        seen[0].body["meta"],
        json!({"session": "meg"}),
        "{:?}",
        seen[0].body
    );
    assert_eq!(seen[0].body["user"], "meg");
    // The subscribe proxy does not include meta.
    client.subscribe(json!({"channel": "room:open"})).await;
    assert!(backend.seen("/subscribe")[0].body.get("meta").is_none());
    server.stop().await;
}

#[tokio::test]
async fn rpc_goes_to_the_namespace_proxy_and_back() {
    let backend = Backend::start(|seen: &Seen| match seen.body["method"].as_str() {
        Some("echo") => Answer::Json(json!({"result": {"data": seen.body["data"]}})),
        Some("billing:charge") => Answer::Json(json!({"result": {"data": {"charged": seen.path}}})),
        _ => Answer::Json(json!({"error": {"code": 1404, "message": "unknown method"}})),
    })
    .await;
    let mut cfg = config();
    cfg.rpc.proxy = proxy(backend.url("/rpc"));
    cfg.rpc.without_namespace = RpcNamespaceOptions {
        proxy_enabled: true,
        proxy_name: "default".to_owned(),
    };
    cfg.rpc.namespaces.push(RpcNamespace {
        name: "billing".to_owned(),
        options: RpcNamespaceOptions {
            proxy_enabled: true,
            proxy_name: "billing".to_owned(),
        },
    });
    cfg.rpc.namespaces.push(RpcNamespace {
        name: "off".to_owned(),
        options: RpcNamespaceOptions {
            proxy_enabled: false,
            proxy_name: "default".to_owned(),
        },
    });
    cfg.proxies.push(NamedProxy {
        name: "billing".to_owned(),
        proxy: proxy(backend.url("/billing")),
    });
    let server = start(cfg).await;
    let (mut client, _) = Client::connected(&server, "9").await;
    let reply = client
        .call(json!({"rpc": {"method": "echo", "data": {"x": [1, 2]}}}))
        .await;
    assert_eq!(reply["rpc"]["data"], json!({"x": [1, 2]}), "{reply}");
    let reply = client
        .call(json!({"rpc": {"method": "billing:charge", "data": {}}}))
        .await;
    assert_eq!(
        reply["rpc"]["data"],
        json!({"charged": "/billing"}),
        "{reply}"
    );
    let reply = client
        .call(json!({"rpc": {"method": "nope", "data": {}}}))
        .await;
    assert_eq!(reply["error"]["code"], 1404, "{reply}");
    let reply = client
        .call(json!({"rpc": {"method": "ghost:x", "data": {}}}))
        .await;
    assert_eq!(reply["error"]["code"], 104, "unknown namespace: {reply}");
    let reply = client
        .call(json!({"rpc": {"method": "off:x", "data": {}}}))
        .await;
    assert_eq!(reply["error"]["code"], 108, "proxy disabled: {reply}");
    let seen = backend.seen("/rpc");
    assert_eq!(seen[0].body["user"], "9");
    assert_eq!(seen[0].body["method"], "echo");
    server.stop().await;
}

#[tokio::test]
async fn rpc_ping_is_answered_by_the_node() {
    let mut cfg = config();
    cfg.rpc.ping.enabled = true;
    let server = start(cfg).await;
    let (mut client, _) = Client::connected(&server, "9").await;
    let reply = client.call(json!({"rpc": {"method": "ping"}})).await;
    assert!(reply.get("rpc").is_some(), "{reply}");
    let reply = client.call(json!({"rpc": {"method": "other"}})).await;
    assert_eq!(reply["error"]["code"], 108, "{reply}");
    server.stop().await;
}

/// Unix seconds now.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

#[tokio::test]
async fn the_refresh_proxy_extends_a_connection_then_expires_it() {
    let refreshes = Arc::new(Mutex::new(0u32));
    let counter = refreshes.clone();
    let backend = Backend::start(move |seen: &Seen| match seen.path.as_str() {
        "/connect" => {
            Answer::Json(json!({"result": {"user": "short", "expire_at": unix_now() + 1}}))
        }
        _ => {
            let mut n = counter.lock();
            *n += 1;
            if *n == 1 {
                Answer::Json(json!({"result": {"expire_at": unix_now() + 1, "info": {"v": 2}}}))
            } else {
                Answer::Json(json!({"result": {"expired": true}}))
            }
        }
    })
    .await;
    let mut cfg = connect_proxy_config(&backend);
    cfg.client.proxy.refresh = EnabledProxy {
        enabled: true,
        proxy: proxy(backend.url("/refresh")),
    };
    let server = start(cfg).await;
    let mut client = Client::open(&server).await;
    let reply = client.call(json!({"connect": {}})).await;
    assert!(
        reply["connect"].get("expires").is_none(),
        "the server refreshes: the client is not told to: {reply}"
    );
    // The first refresh extends it (and it stays open); the second says expired: 3005.
    let code = client.close_code(Duration::from_secs(10)).await;
    assert_eq!(code, Some(3005));
    assert_eq!(
        *refreshes.lock(),
        2,
        "closed only when the second refresh said so"
    );
    let seen = backend.seen("/refresh");
    assert_eq!(seen[0].body["user"], "short");
    server.stop().await;
}

#[tokio::test]
async fn a_client_refresh_is_refused_while_the_server_refreshes() {
    let backend = Backend::start(|_: &Seen| Answer::Json(json!({"result": {}}))).await;
    let mut cfg = config();
    cfg.client.proxy.refresh = EnabledProxy {
        enabled: true,
        proxy: proxy(backend.url("/refresh")),
    };
    let server = start(cfg).await;
    let (mut client, _) = Client::connected(&server, "1").await;
    client
        .send_raw(&json!({"id": 2, "refresh": {"token": user_token("1")}}).to_string())
        .await;
    assert_eq!(client.close_code(Duration::from_secs(5)).await, Some(3501));
    server.stop().await;
}

#[tokio::test]
async fn the_sub_refresh_proxy_keeps_a_subscription_then_ends_it_with_2501() {
    let calls = Arc::new(Mutex::new(0u32));
    let counter = calls.clone();
    let backend = Backend::start(move |seen: &Seen| match seen.path.as_str() {
        "/subscribe" => Answer::Json(json!({"result": {"expire_at": unix_now() + 1}})),
        _ => {
            let mut n = counter.lock();
            *n += 1;
            if *n == 1 {
                Answer::Json(json!({"result": {"expire_at": unix_now() + 1}}))
            } else {
                Answer::Json(json!({"result": {"expired": true}}))
            }
        }
    })
    .await;
    let mut cfg = config();
    cfg.client.expired_sub_close_delay = Duration::ZERO;
    cfg.channel.proxy.subscribe = proxy(backend.url("/subscribe"));
    cfg.channel.proxy.sub_refresh = proxy(backend.url("/sub_refresh"));
    cfg.channel.namespaces.push(Namespace {
        name: "timed".to_owned(),
        options: NamespaceOptions {
            subscribe_proxy_enabled: true,
            sub_refresh_proxy_enabled: true,
            ..NamespaceOptions::default()
        },
    });
    let server = start(cfg).await;
    let (mut client, _) = Client::connected(&server, "1").await;
    let result = client.subscribe(json!({"channel": "timed:x"})).await;
    assert!(
        result.get("expires").is_none(),
        "server-side refresh: no expires in the reply: {result}"
    );
    let push = client
        .wait_for(|m| m["push"].get("unsubscribe").is_some())
        .await;
    assert_eq!(push["push"]["channel"], "timed:x");
    assert_eq!(push["push"]["unsubscribe"]["code"], 2501, "{push}");
    assert_eq!(
        *calls.lock(),
        2,
        "refreshed once, expired on the second call"
    );
    assert_eq!(backend.seen("/sub_refresh")[0].body["channel"], "timed:x");
    server.stop().await;
}

#[tokio::test]
async fn the_breaker_opens_on_a_failing_backend_and_closes_when_it_recovers() {
    let backend = Backend::start(|_: &Seen| Answer::Status(500)).await;
    let mut cfg = config();
    cfg.rpc.proxy = proxy(backend.url("/rpc"));
    cfg.rpc.without_namespace.proxy_enabled = true;
    let server = start(cfg).await;
    let (mut client, _) = Client::connected(&server, "1").await;
    // Ten failures in the window open it.
    for _ in 0..10 {
        let reply = rpc(&mut client).await;
        assert_eq!(reply["error"]["code"], 100, "{reply}");
    }
    assert_eq!(backend.seen("/rpc").len(), 10);
    // Open: refused at once, the backend is not asked.
    for _ in 0..5 {
        let reply = rpc(&mut client).await;
        assert_eq!(reply["error"]["code"], 100, "{reply}");
        assert_eq!(reply["error"]["temporary"], true, "{reply}");
    }
    assert_eq!(backend.seen("/rpc").len(), 10, "no call while open");
    let metrics = server_metrics(&server).await;
    assert!(
        metrics.contains("tether_proxy_breaker_open{proxy=\"default\"} 1"),
        "{metrics}"
    );
    // After the open period a probe goes through; the backend is well again: it closes.
    backend.answer_with(|_| Answer::Json(json!({"result": {"data": {"ok": true}}})));
    tokio::time::sleep(Duration::from_millis(5100)).await;
    let reply = rpc(&mut client).await;
    assert_eq!(reply["rpc"]["data"], json!({"ok": true}), "{reply}");
    let reply = rpc(&mut client).await;
    assert_eq!(reply["rpc"]["data"], json!({"ok": true}), "{reply}");
    let metrics = server_metrics(&server).await;
    assert!(
        metrics.contains("tether_proxy_breaker_open{proxy=\"default\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "tether_proxy_calls_total{proxy=\"default\",event=\"rpc\",outcome=\"unavailable\"} 5"
        ),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_waiting_backend_holds_up_neither_other_clients_nor_the_callers_publications() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let held = gate.clone();
    let backend = Backend::start(move |_: &Seen| {
        Answer::Gated(held.clone(), json!({"result": {"data": {}}}))
    })
    .await;
    let mut cfg = config();
    cfg.rpc.proxy = ProxyConfig {
        timeout: Duration::from_secs(20),
        ..proxy(backend.url("/rpc"))
    };
    cfg.rpc.without_namespace.proxy_enabled = true;
    let server = start(cfg).await;
    let (mut caller, _) = Client::connected(&server, "caller").await;
    caller.subscribe(json!({"channel": "news"})).await;
    let (mut other, _) = Client::connected(&server, "other").await;
    other.subscribe(json!({"channel": "news"})).await;
    // The caller's rpc waits on the backend until the gate opens...
    caller
        .send_raw(r#"{"id":100,"rpc":{"method":"held","data":{}}}"#)
        .await;
    while backend.seen("/rpc").is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ...while publications reach both clients, and other clients' commands are answered.
    server
        .api("publish", json!({"channel": "news", "data": {"n": 1}}))
        .await;
    for client in [&mut other, &mut caller] {
        let push = client.wait_for(|m| m.get("push").is_some()).await;
        assert_eq!(push["push"]["pub"]["data"], json!({"n": 1}));
    }
    let reply = other
        .call(json!({"presence_stats": {"channel": "news"}}))
        .await;
    assert!(reply.get("error").is_some() || reply.get("presence_stats").is_some());
    assert!(
        caller.backlog.iter().all(|m| m["id"] != 100),
        "the rpc is still waiting"
    );
    gate.add_permits(1);
    let reply = caller.wait_for(|m| m["id"] == 100).await;
    assert!(reply.get("rpc").is_some(), "{reply}");
    server.stop().await;
}

#[tokio::test]
async fn a_flapping_backend_gets_answers_through_until_half_the_calls_fail() {
    let calls = Arc::new(Mutex::new(0u32));
    let counter = calls.clone();
    // Every other call fails with 500.
    let backend = Backend::start(move |_: &Seen| {
        let mut n = counter.lock();
        *n += 1;
        if *n % 2 == 0 {
            Answer::Status(500)
        } else {
            Answer::Json(json!({"result": {"data": {"n": *n}}}))
        }
    })
    .await;
    let mut cfg = config();
    cfg.rpc.proxy = proxy(backend.url("/rpc"));
    cfg.rpc.without_namespace.proxy_enabled = true;
    let server = start(cfg).await;
    let (mut client, _) = Client::connected(&server, "1").await;
    let mut ok = 0;
    let mut failed = 0;
    for _ in 0..10 {
        let reply = rpc(&mut client).await;
        if reply.get("rpc").is_some() {
            ok += 1;
        } else {
            assert_eq!(reply["error"]["code"], 100, "{reply}");
            assert_eq!(reply["error"]["temporary"], true, "{reply}");
            failed += 1;
        }
    }
    // Each call got its own answer; at 5 failures in 10 calls the breaker opened.
    assert_eq!((ok, failed), (5, 5));
    let reply = rpc(&mut client).await;
    assert_eq!(reply["error"]["code"], 100, "{reply}");
    assert_eq!(
        *calls.lock(),
        10,
        "refused while open, without asking the backend"
    );
    // The connection itself was never in question.
    let reply = client
        .call(json!({"presence_stats": {"channel": "chat:x"}}))
        .await;
    assert!(reply.get("presence_stats").is_some(), "{reply}");
    server.stop().await;
}

/// Calls the method `m` with empty data.
async fn rpc(client: &mut Client) -> Value {
    client
        .call(json!({"rpc": {"method": "m", "data": {}}}))
        .await
}

/// The node's `/metrics` text.
async fn server_metrics(server: &TestServer) -> String {
    let response = support::http::request(server.addr, "GET", "/metrics", "", "")
        .await
        .expect("metrics");
    assert_eq!(response.status, 200);
    response.body().to_owned()
}

// === https (http.tls) ===

/// The connect proxy towards `backend` (an https one) with `tls` as its `http.tls`.
fn https_connect_config(backend: &Backend, tls: TlsClientConfig) -> Config {
    let mut cfg = connect_proxy_config(backend);
    cfg.client.proxy.connect.proxy.http.tls = tls;
    cfg
}

/// What a client with ann's session cookie gets for its connect.
async fn connect_as_ann(server: &TestServer) -> Value {
    let mut client = with_cookie(server, "session=ann").await;
    client.call(json!({"connect": {}})).await
}

/// `http.tls` as tests set it: on, with `f` applied.
fn tls(f: impl FnOnce(&mut TlsClientConfig)) -> TlsClientConfig {
    let mut tls = TlsClientConfig {
        enabled: true,
        ..TlsClientConfig::default()
    };
    f(&mut tls);
    tls
}

/// Starts a server with `cfg` and returns what ann's connect gets.
async fn connect_through(cfg: Config) -> Value {
    let server = start(cfg).await;
    let reply = connect_as_ann(&server).await;
    server.stop().await;
    reply
}

fn assert_connected(reply: &Value, case: &str) {
    assert_eq!(
        reply["connect"]["data"],
        json!({"hello": "ann"}),
        "{case}: {reply}"
    );
}

fn assert_temporary_error(reply: &Value, case: &str) {
    assert_eq!(
        reply["error"],
        json!({"code": 100, "message": "internal server error", "temporary": true}),
        "{case}: {reply}"
    );
}

#[tokio::test]
async fn an_https_backend_is_trusted_through_server_ca_pem_in_each_of_its_forms() {
    let ca = TestCa::new();
    let identity = ca.issue(&["127.0.0.1"]);
    let backend = Backend::start_tls(
        TestCa::server_config(&identity, None, &[b"http/1.1"]),
        cookie_user,
    )
    .await;
    let dir = TempDir::new();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).expect("write the CA");
    let ca_path = ca_file.to_string_lossy().into_owned();
    let base64_pem = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(ca.cert_pem())
    };
    let cases = [
        ("PEM text", tls(|t| t.server_ca_pem = ca.cert_pem())),
        ("base64 PEM", tls(|t| t.server_ca_pem = base64_pem.clone())),
        ("a path", tls(|t| t.server_ca_pem = ca_path.clone())),
        (
            "v5 server_ca_pem_file",
            tls(|t| t.server_ca_pem_file = ca_path.clone()),
        ),
    ];
    for (case, tls) in cases {
        let reply = connect_through(https_connect_config(&backend, tls)).await;
        assert_connected(&reply, case);
    }
    assert_eq!(backend.seen("/connect").len(), 4);
    assert_eq!(backend.seen("/connect")[0].headers["cookie"], "session=ann");
}

#[tokio::test]
async fn an_untrusted_https_backend_is_never_asked_unless_verification_is_skipped() {
    let ca = TestCa::new();
    let identity = ca.issue(&["127.0.0.1"]);
    let backend = Backend::start_tls(
        TestCa::server_config(&identity, None, &[b"http/1.1"]),
        cookie_user,
    )
    .await;
    let other_ca = TestCa::new();
    // The system's roots (no server_ca_pem, or no http.tls at all), and another CA: the
    // handshake fails, the client gets the temporary internal error.
    let cases = [
        ("system roots", tls(|_| ())),
        ("http.tls off", TlsClientConfig::default()),
        ("another CA", tls(|t| t.server_ca_pem = other_ca.cert_pem())),
    ];
    for (case, tls) in cases {
        let reply = connect_through(https_connect_config(&backend, tls)).await;
        assert_temporary_error(&reply, case);
    }
    assert!(backend.seen("/connect").is_empty());
    let reply = connect_through(https_connect_config(
        &backend,
        tls(|t| t.insecure_skip_verify = true),
    ))
    .await;
    assert_connected(&reply, "insecure_skip_verify");
    assert_eq!(backend.seen("/connect").len(), 1);
}

#[tokio::test]
async fn server_name_checks_the_certificate_against_another_name() {
    let ca = TestCa::new();
    let identity = ca.issue(&["backend.internal"]);
    let backend = Backend::start_tls(
        TestCa::server_config(&identity, None, &[b"http/1.1"]),
        cookie_user,
    )
    .await;
    let reply = connect_through(https_connect_config(
        &backend,
        tls(|t| t.server_ca_pem = ca.cert_pem()),
    ))
    .await;
    assert_temporary_error(&reply, "the certificate does not name 127.0.0.1");
    let reply = connect_through(https_connect_config(
        &backend,
        tls(|t| {
            t.server_ca_pem = ca.cert_pem();
            t.server_name = "backend.internal".to_owned();
        }),
    ))
    .await;
    assert_connected(&reply, "server_name");
    let reply = connect_through(https_connect_config(
        &backend,
        tls(|t| {
            t.server_ca_pem = ca.cert_pem();
            t.server_name = "other.internal".to_owned();
        }),
    ))
    .await;
    assert_temporary_error(&reply, "a server_name the certificate does not hold");
}

#[tokio::test]
async fn a_backend_that_asks_for_a_client_certificate_gets_cert_pem() {
    let ca = TestCa::new();
    let clients_ca = TestCa::new();
    let identity = ca.issue(&["127.0.0.1"]);
    let backend = Backend::start_tls(
        TestCa::server_config(&identity, Some(&clients_ca), &[b"http/1.1"]),
        cookie_user,
    )
    .await;
    let reply = connect_through(https_connect_config(
        &backend,
        tls(|t| t.server_ca_pem = ca.cert_pem()),
    ))
    .await;
    assert_temporary_error(&reply, "no client certificate");
    let stranger = TestCa::new().issue(&["tether"]);
    let reply = connect_through(https_connect_config(
        &backend,
        tls(|t| {
            t.server_ca_pem = ca.cert_pem();
            t.cert_pem = stranger.cert_pem.clone();
            t.key_pem = stranger.key_pem.clone();
        }),
    ))
    .await;
    assert_temporary_error(&reply, "a client certificate of another CA");
    assert!(backend.seen("/connect").is_empty());

    // The client identity as PEM text, and as v5 files.
    let client = clients_ca.issue(&["tether"]);
    let reply = connect_through(https_connect_config(
        &backend,
        tls(|t| {
            t.server_ca_pem = ca.cert_pem();
            t.cert_pem = client.cert_pem.clone();
            t.key_pem = client.key_pem.clone();
        }),
    ))
    .await;
    assert_connected(&reply, "cert_pem and key_pem");
    let dir = TempDir::new();
    let (cert_file, key_file) = (dir.join("client.pem"), dir.join("client.key"));
    std::fs::write(&cert_file, &client.cert_pem).expect("write the certificate");
    std::fs::write(&key_file, &client.key_pem).expect("write the key");
    let reply = connect_through(https_connect_config(
        &backend,
        tls(|t| {
            t.server_ca_pem = ca.cert_pem();
            t.cert_pem_file = cert_file.to_string_lossy().into_owned();
            t.key_pem_file = key_file.to_string_lossy().into_owned();
        }),
    ))
    .await;
    assert_connected(&reply, "cert_pem_file and key_pem_file");
    assert_eq!(backend.seen("/connect").len(), 2);
}

#[tokio::test]
async fn a_tls_object_that_cannot_load_stops_the_start_with_the_key_at_fault() {
    let ca = TestCa::new();
    let identity = ca.issue(&["127.0.0.1"]);
    let endpoint = "https://127.0.0.1:1/connect".to_owned();
    let cases = [
        (
            tls(|t| t.server_ca_pem = "/nonexistent/ca.pem".to_owned()),
            "server_ca_pem",
        ),
        (
            tls(|t| t.server_ca_pem = identity.key_pem.clone()),
            "server_ca_pem: no certificate",
        ),
        (
            tls(|t| t.cert_pem = identity.cert_pem.clone()),
            "cert_pem and key_pem must be set together",
        ),
        (
            tls(|t| {
                t.cert_pem = identity.cert_pem.clone();
                t.key_pem = identity.cert_pem.clone();
            }),
            "key_pem",
        ),
        (
            tls(|t| t.server_name = "not a host".to_owned()),
            "server_name",
        ),
    ];
    for (tls, expected) in cases {
        let mut cfg = config();
        cfg.client.proxy.connect = EnabledProxy {
            enabled: true,
            proxy: ProxyConfig {
                http: ProxyHttpConfig {
                    tls,
                    ..Default::default()
                },
                ..proxy(endpoint.clone())
            },
        };
        let error = start_error(cfg).await;
        assert!(
            error.contains("http.tls") && error.contains(expected),
            "{expected}: {error}"
        );
    }
}
