//! The backend proxy over gRPC against a real tonic server on a loopback port: Centrifugo's
//! `CentrifugoProxy` service, what the backend receives (messages and metadata) and what the
//! client sees of each answer; the gRPC options (static metadata, per-call credentials,
//! gzip, TLS) and the faults (down, slow, an error status).

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use support::grpc::{GrpcAnswer, GrpcBackend, GrpcSeen};
use support::proxyproto as pp;
use support::tls::TestCa;
use support::{
    Client, Config, EnabledProxy, Gateway as _, Namespace, NamespaceOptions, ProxyConfig,
    TestServer, TlsClientConfig, config, start, start_error,
};
use tonic::{Code, Status};

/// A proxy object for `endpoint` with a 1 s timeout.
fn proxy(endpoint: String) -> ProxyConfig {
    ProxyConfig {
        endpoint,
        ..ProxyConfig::default()
    }
}

fn json_bytes(value: &Value) -> Bytes {
    Bytes::from(value.to_string())
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("JSON bytes")
}

/// The backend of a small chat: users by their `session` cookie, `room:open` open and the
/// other rooms closed, publications stored, rewritten or refused by their text, and `echo`.
fn chat(seen: &GrpcSeen) -> GrpcAnswer {
    match seen.method.as_str() {
        "Connect" => {
            let cookie = seen
                .metadata
                .get("cookie")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let response = match cookie.strip_prefix("session=") {
                Some("refuse") => pp::ConnectResponse {
                    error: Some(pp::Error {
                        code: 1403,
                        message: "forbidden".to_owned(),
                        temporary: false,
                    }),
                    ..Default::default()
                },
                Some("ban") => pp::ConnectResponse {
                    disconnect: Some(pp::Disconnect {
                        code: 4501,
                        reason: "banned".to_owned(),
                    }),
                    ..Default::default()
                },
                Some(user) => pp::ConnectResponse {
                    result: Some(pp::ConnectResult {
                        user: user.to_owned(),
                        info: json_bytes(&json!({"name": user})),
                        data: json_bytes(&json!({"hello": user})),
                        meta: json_bytes(&json!({"session": user})),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                None => pp::ConnectResponse::default(),
            };
            GrpcAnswer::of(&response)
        }
        "Subscribe" => {
            let request: pp::SubscribeRequest = seen.decode();
            let response = if request.channel == "room:open" {
                pp::SubscribeResponse {
                    result: Some(pp::SubscribeResult {
                        info: json_bytes(&json!({"role": "guest"})),
                        data: json_bytes(&json!({"welcome": true})),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            } else {
                pp::SubscribeResponse {
                    error: Some(pp::Error {
                        code: 103,
                        message: "permission denied".to_owned(),
                        temporary: false,
                    }),
                    ..Default::default()
                }
            };
            GrpcAnswer::of(&response)
        }
        "Publish" => {
            let request: pp::PublishRequest = seen.decode();
            let text = json_of(&request.data)["text"].clone();
            let response = if text == "reject" {
                pp::PublishResponse {
                    error: Some(pp::Error {
                        code: 1403,
                        message: "rejected".to_owned(),
                        temporary: false,
                    }),
                    ..Default::default()
                }
            } else if text == "rewrite" {
                pp::PublishResponse {
                    result: Some(pp::PublishResult {
                        data: json_bytes(&json!({"text": "rewritten"})),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            } else {
                pp::PublishResponse {
                    result: Some(pp::PublishResult::default()),
                    ..Default::default()
                }
            };
            GrpcAnswer::of(&response)
        }
        "RPC" => {
            let request: pp::RpcRequest = seen.decode();
            let response = match request.method.as_str() {
                "echo" => pp::RpcResponse {
                    result: Some(pp::RpcResult {
                        data: request.data,
                        b64data: request.b64data,
                    }),
                    ..Default::default()
                },
                "fail" => return GrpcAnswer::Status(Status::internal("boom")),
                _ => pp::RpcResponse {
                    error: Some(pp::Error {
                        code: 1404,
                        message: "unknown method".to_owned(),
                        temporary: false,
                    }),
                    ..Default::default()
                },
            };
            GrpcAnswer::of(&response)
        }
        other => GrpcAnswer::Status(Status::unimplemented(other.to_owned())),
    }
}

/// Connect (forwarding the cookie), subscribe and publish in `room`, and rpc, all through
/// `make(endpoint)`'s proxy objects.
fn chat_config(make: impl Fn(String) -> ProxyConfig, endpoint: &str) -> Config {
    let mut cfg = config();
    cfg.client.proxy.connect = EnabledProxy {
        enabled: true,
        proxy: ProxyConfig {
            http_headers: vec!["Cookie".to_owned()],
            ..make(endpoint.to_owned())
        },
    };
    cfg.channel.proxy.subscribe = make(endpoint.to_owned());
    cfg.channel.proxy.publish = ProxyConfig {
        include_connection_meta: true,
        ..make(endpoint.to_owned())
    };
    cfg.rpc.proxy = make(endpoint.to_owned());
    cfg.rpc.without_namespace.proxy_enabled = true;
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

async fn with_cookie(server: &TestServer, cookie: &str) -> Client {
    Client::open_with_headers(server, &[("Cookie", cookie)]).await
}

#[tokio::test]
async fn a_cookie_alone_connects_through_the_grpc_connect_proxy() {
    let backend = GrpcBackend::start(chat).await;
    let server = start(chat_config(proxy, &backend.endpoint())).await;
    let mut client = with_cookie(&server, "session=ann").await;
    let reply = client
        .call(json!({"connect": {"data": {"app": "web"}, "name": "js", "version": "5.2.0"}}))
        .await;
    assert_eq!(reply["connect"]["data"], json!({"hello": "ann"}), "{reply}");
    let seen = backend.seen("Connect");
    assert_eq!(seen.len(), 1);
    let request: pp::ConnectRequest = seen[0].decode();
    assert_eq!(json!(request.client), reply["connect"]["client"]);
    assert_eq!(
        (
            request.transport.as_str(),
            request.protocol.as_str(),
            request.encoding.as_str()
        ),
        ("websocket", "json", "json")
    );
    assert_eq!(json_of(&request.data), json!({"app": "web"}));
    assert!(request.b64data.is_empty());
    assert_eq!(
        (request.name.as_str(), request.version.as_str()),
        ("js", "5.2.0")
    );
    assert_eq!(seen[0].metadata.get("cookie").unwrap(), "session=ann");
    assert_eq!(server.node.hub().stats().num_users, 1);

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
    assert_eq!(
        (u16::from(frame.code), frame.reason.as_str()),
        (4501, "banned")
    );
    let mut nobody = Client::open(&server).await;
    nobody.send_raw(r#"{"id":1,"connect":{}}"#).await;
    assert_eq!(nobody.close_code(Duration::from_secs(5)).await, Some(3501));
    server.stop().await;
}

#[tokio::test]
async fn subscribe_publish_and_rpc_go_through_the_grpc_proxy() {
    let backend = GrpcBackend::start(chat).await;
    let server = start(chat_config(proxy, &backend.endpoint())).await;
    let mut reader = with_cookie(&server, "session=rita").await;
    reader.call(json!({"connect": {}})).await;
    let result = reader
        .subscribe(json!({"channel": "room:open", "data": {"ask": 1}}))
        .await;
    assert_eq!(result["data"], json!({"welcome": true}), "{result}");
    let reply = reader
        .call(json!({"subscribe": {"channel": "room:closed"}}))
        .await;
    assert_eq!(reply["error"]["code"], 103, "{reply}");
    let subscribe: pp::SubscribeRequest = backend.seen("Subscribe")[0].decode();
    assert_eq!(
        (subscribe.user.as_str(), subscribe.channel.as_str()),
        ("rita", "room:open")
    );
    assert_eq!(json_of(&subscribe.data), json!({"ask": 1}));
    assert!(
        subscribe.meta.is_empty(),
        "the subscribe proxy does not include meta"
    );

    let mut writer = with_cookie(&server, "session=will").await;
    writer.call(json!({"connect": {}})).await;
    for text in ["hello", "rewrite", "reject"] {
        let reply = writer
            .call(json!({"publish": {"channel": "room:open", "data": {"text": text}}}))
            .await;
        if text == "reject" {
            assert_eq!(
                reply["error"],
                json!({"code": 1403, "message": "rejected"}),
                "{reply}"
            );
        } else {
            assert!(reply.get("publish").is_some(), "{reply}");
        }
    }
    let first = reader.wait_for(|m| m.get("push").is_some()).await;
    assert_eq!(first["push"]["pub"]["data"], json!({"text": "hello"}));
    assert_eq!(first["push"]["pub"]["info"]["user"], "will");
    let second = reader.wait_for(|m| m.get("push").is_some()).await;
    assert_eq!(second["push"]["pub"]["data"], json!({"text": "rewritten"}));
    assert!(
        reader
            .next_within(Duration::from_millis(300))
            .await
            .is_none(),
        "a refused publication reaches nobody"
    );
    let publish: pp::PublishRequest = backend.seen("Publish")[0].decode();
    assert_eq!(publish.user, "will");
    assert_eq!(json_of(&publish.meta), json!({"session": "will"}));

    let reply = writer
        .call(json!({"rpc": {"method": "echo", "data": {"n": 7}}}))
        .await;
    assert_eq!(reply["rpc"]["data"], json!({"n": 7}), "{reply}");
    let reply = writer.call(json!({"rpc": {"method": "nope"}})).await;
    assert_eq!(
        reply["error"],
        json!({"code": 1404, "message": "unknown method"}),
        "{reply}"
    );
    // An error status is a failed call: the temporary internal error.
    let reply = writer.call(json!({"rpc": {"method": "fail"}})).await;
    assert_eq!(
        reply["error"],
        json!({"code": 100, "message": "internal server error", "temporary": true}),
        "{reply}"
    );
    let rpc: pp::RpcRequest = backend.seen("RPC")[0].decode();
    assert_eq!((rpc.user.as_str(), rpc.method.as_str()), ("will", "echo"));
    server.stop().await;
}

#[tokio::test]
async fn binary_encoding_sends_base64_and_reads_it_back() {
    let backend = GrpcBackend::start(chat).await;
    let binary = |endpoint| ProxyConfig {
        binary_encoding: true,
        ..proxy(endpoint)
    };
    let server = start(chat_config(binary, &backend.endpoint())).await;
    let mut client = with_cookie(&server, "session=bo").await;
    client.call(json!({"connect": {}})).await;
    let reply = client
        .call(json!({"rpc": {"method": "echo", "data": {"n": 1}}}))
        .await;
    assert_eq!(reply["rpc"]["data"], json!({"n": 1}), "{reply}");
    let rpc: pp::RpcRequest = backend.seen("RPC")[0].decode();
    assert_eq!(rpc.encoding, "binary");
    assert!(rpc.data.is_empty());
    assert_eq!(rpc.b64data, "eyJuIjoxfQ==");
    server.stop().await;
}

#[tokio::test]
async fn static_metadata_credentials_and_gzip_reach_the_backend() {
    let backend = GrpcBackend::start(chat).await;
    let with_options = |endpoint| {
        let mut proxy = proxy(endpoint);
        proxy
            .grpc
            .static_metadata
            .insert("X-Tenant".to_owned(), "acme".to_owned());
        proxy
            .grpc
            .static_metadata
            .insert("cookie".to_owned(), "static".to_owned());
        proxy.grpc.credentials_key = "authorization".to_owned();
        proxy.grpc.credentials_value = "Bearer s3cret".to_owned();
        proxy.grpc.compression = true;
        proxy
    };
    let server = start(chat_config(with_options, &backend.endpoint())).await;
    let mut client = with_cookie(&server, "session=cy").await;
    let reply = client.call(json!({"connect": {}})).await;
    assert_eq!(reply["connect"]["data"], json!({"hello": "cy"}), "{reply}");
    let seen = &backend.seen("Connect")[0];
    assert_eq!(seen.metadata.get("x-tenant").unwrap(), "acme");
    // A forwarded header wins over static metadata of the same name.
    assert_eq!(seen.metadata.get("cookie").unwrap(), "session=cy");
    assert_eq!(seen.metadata.get("authorization").unwrap(), "Bearer s3cret");
    assert_eq!(seen.metadata.get("grpc-encoding").unwrap(), "gzip");
    let reply = client
        .call(json!({"rpc": {"method": "echo", "data": {"big": "x".repeat(4096)}}}))
        .await;
    assert_eq!(
        reply["rpc"]["data"]["big"].as_str().map(str::len),
        Some(4096)
    );
    server.stop().await;
}

#[tokio::test]
async fn a_grpc_backend_that_is_down_slow_or_failing_gives_the_temporary_internal_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = format!("grpc://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let backend = GrpcBackend::start(|seen: &GrpcSeen| match seen.method.as_str() {
        _ if seen.metadata.get("x-case").is_some_and(|v| v == "slow") => GrpcAnswer::Slow(
            Duration::from_secs(5),
            Box::new(GrpcAnswer::of(&pp::ConnectResponse::default())),
        ),
        _ => GrpcAnswer::Status(Status::new(Code::Unavailable, "down for maintenance")),
    })
    .await;
    for (case, endpoint) in [
        ("down", dead),
        ("slow", backend.endpoint()),
        ("unavailable status", backend.endpoint()),
    ] {
        let mut cfg = config();
        let mut connect = ProxyConfig {
            timeout: Duration::from_millis(300),
            ..proxy(endpoint)
        };
        connect
            .grpc
            .static_metadata
            .insert("x-case".to_owned(), case.to_owned());
        cfg.client.proxy.connect = EnabledProxy {
            enabled: true,
            proxy: connect,
        };
        let server = start(cfg).await;
        let mut client = Client::open(&server).await;
        let started = Instant::now();
        let reply = client.call(json!({"connect": {}})).await;
        assert_eq!(
            reply["error"],
            json!({"code": 100, "message": "internal server error", "temporary": true}),
            "{case}: {reply}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{case}: answered at the timeout, not after the backend's 5 s"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn a_tls_grpc_backend_is_reached_with_grpc_tls() {
    let ca = TestCa::new();
    let identity = ca.issue(&["127.0.0.1"]);
    let backend = GrpcBackend::start_tls(&identity, chat).await;
    let with_tls = |tls: TlsClientConfig| {
        move |endpoint| {
            let mut proxy = proxy(endpoint);
            proxy.grpc.tls = tls.clone();
            proxy
        }
    };
    let trusted = TlsClientConfig {
        enabled: true,
        server_ca_pem: ca.cert_pem(),
        ..TlsClientConfig::default()
    };
    let server = start(chat_config(with_tls(trusted), &backend.endpoint())).await;
    let mut client = with_cookie(&server, "session=tia").await;
    let reply = client.call(json!({"connect": {}})).await;
    assert_eq!(reply["connect"]["data"], json!({"hello": "tia"}), "{reply}");
    server.stop().await;

    // Plaintext towards a TLS backend, and TLS without trusting its CA: no answer.
    let untrusted = TlsClientConfig {
        enabled: true,
        ..TlsClientConfig::default()
    };
    for (case, tls) in [
        ("plaintext", TlsClientConfig::default()),
        ("system roots", untrusted),
    ] {
        let server = start(chat_config(with_tls(tls), &backend.endpoint())).await;
        let mut client = with_cookie(&server, "session=tia").await;
        let reply = client.call(json!({"connect": {}})).await;
        assert_eq!(reply["error"]["code"], 100, "{case}: {reply}");
        server.stop().await;
    }
    assert_eq!(backend.seen("Connect").len(), 1);
}

#[tokio::test]
async fn bad_grpc_options_stop_the_start_with_the_key_at_fault() {
    /// A change to a good proxy object, and what the start error must name.
    type Case = (fn(&mut ProxyConfig), &'static str);
    let cases: [Case; 4] = [
        (|p| p.endpoint = "grpc://".to_owned(), "not a gRPC target"),
        (
            |p| p.grpc.credentials_key = "bad key".to_owned(),
            "grpc.credentials_key",
        ),
        (
            |p| {
                p.grpc
                    .static_metadata
                    .insert("x".to_owned(), "line\nbreak".to_owned());
            },
            "grpc.static_metadata",
        ),
        (
            |p| {
                p.grpc.tls = TlsClientConfig {
                    enabled: true,
                    server_ca_pem: "/nonexistent/ca.pem".to_owned(),
                    ..TlsClientConfig::default()
                };
            },
            "grpc.tls: server_ca_pem",
        ),
    ];
    for (change, expected) in cases {
        let mut connect = proxy("grpc://127.0.0.1:1".to_owned());
        change(&mut connect);
        let mut cfg = config();
        cfg.client.proxy.connect = EnabledProxy {
            enabled: true,
            proxy: connect,
        };
        let error = start_error(cfg).await;
        assert!(error.contains(expected), "{expected}: {error}");
    }
}

// === subscription streams (compat-proxy §6.6) ===

/// A live-score backend: `SubscribeUnidirectional` and `SubscribeBidirectional` open
/// `live:*` streams, refuse `live:closed` (103, said to be temporary), and fail `live:down`
/// with a status.
fn scores(seen: &GrpcSeen) -> GrpcAnswer {
    let request: pp::SubscribeRequest = match seen.method.as_str() {
        "SubscribeUnidirectional" => seen.decode(),
        "SubscribeBidirectional" => seen
            .decode::<pp::StreamSubscribeRequest>()
            .subscribe_request
            .unwrap_or_default(),
        _ => return GrpcAnswer::Status(Status::unimplemented(seen.method.clone())),
    };
    let response = match request.channel.as_str() {
        "live:down" => return GrpcAnswer::Status(Status::unavailable("down")),
        "live:closed" => pp::SubscribeResponse {
            error: Some(pp::Error {
                code: 103,
                message: "permission denied".to_owned(),
                temporary: true,
            }),
            ..Default::default()
        },
        _ => pp::SubscribeResponse {
            result: Some(pp::SubscribeResult {
                info: json_bytes(&json!({"seat": "A1"})),
                data: json_bytes(&json!({"kickoff": "20:00"})),
                ..Default::default()
            }),
            ..Default::default()
        },
    };
    GrpcAnswer::of(&pp::StreamSubscribeResponse {
        subscribe_response: Some(response),
        publication: None,
    })
}

/// The `live` namespace, fed by subscription streams from `endpoint`, `bidirectional` or
/// not.
fn stream_config(endpoint: &str, bidirectional: bool) -> Config {
    let mut cfg = config();
    cfg.channel.proxy.subscribe_stream = proxy(endpoint.to_owned());
    cfg.channel.namespaces.push(Namespace {
        name: "live".to_owned(),
        options: NamespaceOptions {
            subscribe_stream_proxy_enabled: true,
            subscribe_stream_proxy_bidirectional: bidirectional,
            history_size: 10,
            history_ttl: Duration::from_secs(60),
            force_recovery: true,
            ..NamespaceOptions::default()
        },
    });
    cfg
}

fn stream_publication(value: &Value) -> pp::StreamSubscribeResponse {
    pp::StreamSubscribeResponse {
        subscribe_response: None,
        publication: Some(pp::Publication {
            data: json_bytes(value),
            tags: [("minute".to_owned(), "12".to_owned())].into(),
        }),
    }
}

#[tokio::test]
async fn a_subscription_stream_decides_the_subscribe_and_feeds_only_its_subscriber() {
    let backend = GrpcBackend::start(scores).await;
    let server = start(stream_config(&backend.endpoint(), false)).await;
    let mut ann = Client::connect(&server, "ann").await;
    let result = ann
        .subscribe(json!({"channel": "live:final", "data": {"team": "red"}}))
        .await;
    assert_eq!(result["data"], json!({"kickoff": "20:00"}), "{result}");
    assert!(
        result.get("recoverable").is_none() && result.get("positioned").is_none(),
        "no recovery nor positioning on a stream: {result}"
    );
    let seen = backend.seen("SubscribeUnidirectional");
    assert_eq!(seen.len(), 1);
    let request: pp::SubscribeRequest = seen[0].decode();
    assert_eq!(
        (request.user.as_str(), request.channel.as_str()),
        ("ann", "live:final")
    );
    assert_eq!(json_of(&request.data), json!({"team": "red"}));
    let ann_stream = backend.next_stream().await;

    // Bob has his own stream on the same channel, and a plain subscription to a channel
    // of the same name without a namespace: Ann's publications reach neither.
    let mut bob = Client::connect(&server, "bob").await;
    bob.subscribe(json!({"channel": "live:final"})).await;
    bob.subscribe(json!({"channel": "final"})).await;
    let bob_stream = backend.next_stream().await;

    for minute in [12, 13] {
        assert!(ann_stream.send(&stream_publication(&json!({"goal": minute}))));
    }
    for minute in [12, 13] {
        let push = ann.wait_for(|m| m.get("push").is_some()).await;
        assert_eq!(push["push"]["channel"], "live:final", "{push}");
        let publication = &push["push"]["pub"];
        assert_eq!(publication["data"], json!({"goal": minute}), "{push}");
        assert_eq!(publication["tags"], json!({"minute": "12"}), "{push}");
        assert!(
            publication.get("offset").is_none(),
            "no offset on a stream's publication: {push}"
        );
    }
    assert!(
        bob.next_within(Duration::from_millis(300)).await.is_none(),
        "another subscriber got Ann's stream"
    );

    // Publishing into a unidirectional stream namespace is not available.
    let reply = ann
        .call(json!({"publish": {"channel": "live:final", "data": {"goal": 99}}}))
        .await;
    assert_eq!(reply["error"]["code"], 108, "{reply}");

    // The backend refuses: its error as it is, never temporary; failing to open is 100.
    let reply = ann
        .call(json!({"subscribe": {"channel": "live:closed"}}))
        .await;
    assert_eq!(
        reply["error"],
        json!({"code": 103, "message": "permission denied"}),
        "{reply}"
    );
    let refused = backend.next_stream().await;
    assert!(
        refused.cancelled(Duration::from_secs(5)).await,
        "a refused subscription's stream is cancelled"
    );
    let reply = ann
        .call(json!({"subscribe": {"channel": "live:down"}}))
        .await;
    assert_eq!(reply["error"]["code"], 100, "{reply}");
    assert_eq!(reply["error"]["temporary"], true, "{reply}");

    // The backend ends the stream: unsubscribe 2000, and the channel can be subscribed again.
    ann_stream.end();
    let push = ann.wait_for(|m| m.get("push").is_some()).await;
    assert_eq!(push["push"]["channel"], "live:final", "{push}");
    assert_eq!(
        push["push"]["unsubscribe"],
        json!({"code": 2000, "reason": "server unsubscribe"}),
        "{push}"
    );
    ann.subscribe(json!({"channel": "live:final"})).await;
    let again = backend.next_stream().await;
    assert!(again.send(&stream_publication(&json!({"goal": 14}))));
    let push = ann.wait_for(|m| m.get("push").is_some()).await;
    assert_eq!(push["push"]["pub"]["data"], json!({"goal": 14}), "{push}");
    // A stream that fails: unsubscribe 2500, and the SDK subscribes again.
    again.fail(Status::internal("lost the feed"));
    let push = ann.wait_for(|m| m.get("push").is_some()).await;
    assert_eq!(
        push["push"]["unsubscribe"],
        json!({"code": 2500, "reason": "insufficient state"}),
        "{push}"
    );

    // Bob unsubscribes: his stream is cancelled; a disconnect cancels one too.
    let reply = bob
        .call(json!({"unsubscribe": {"channel": "live:final"}}))
        .await;
    assert!(reply.get("unsubscribe").is_some(), "{reply}");
    assert!(
        bob_stream.cancelled(Duration::from_secs(5)).await,
        "the backend did not see the stream cancelled"
    );
    ann.subscribe(json!({"channel": "live:final"})).await;
    let last = backend.next_stream().await;
    drop(ann);
    assert!(
        last.cancelled(Duration::from_secs(5)).await,
        "a disconnect did not cancel the stream"
    );

    let metrics = server_metrics(&server).await;
    for line in [
        "tether_proxy_calls_total{proxy=\"default\",event=\"subscribe_stream\",outcome=\"ok\"} 4",
        "tether_proxy_calls_total{proxy=\"default\",event=\"subscribe_stream\",outcome=\"refused\"} 1",
        "tether_proxy_calls_total{proxy=\"default\",event=\"subscribe_stream\",outcome=\"failed\"} 1",
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_subscription_stream_whose_first_message_is_late_is_the_temporary_error() {
    let backend =
        GrpcBackend::start(|seen| GrpcAnswer::Slow(Duration::from_secs(3), Box::new(scores(seen))))
            .await;
    let mut cfg = stream_config(&backend.endpoint(), false);
    cfg.channel.proxy.subscribe_stream.timeout = Duration::from_millis(300);
    let server = start(cfg).await;
    let mut client = Client::connect(&server, "cid").await;
    let started = Instant::now();
    let reply = client
        .call(json!({"subscribe": {"channel": "live:final"}}))
        .await;
    assert_eq!(reply["error"]["code"], 100, "{reply}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "waited {:?}",
        started.elapsed()
    );
    server.stop().await;
}

async fn server_metrics(server: &TestServer) -> String {
    let response = support::http::request(server.addr, "GET", "/metrics", "", "")
        .await
        .expect("metrics");
    assert_eq!(response.status, 200);
    response.body().to_owned()
}

#[tokio::test]
async fn a_bidirectional_stream_takes_the_subscribers_publications_to_the_backend() {
    let backend = GrpcBackend::start(scores).await;
    let server = start(stream_config(&backend.endpoint(), true)).await;
    let mut ann = Client::connect(&server, "ann").await;
    let result = ann
        .subscribe(json!({"channel": "live:room", "data": {"team": "red"}}))
        .await;
    assert_eq!(result["data"], json!({"kickoff": "20:00"}), "{result}");
    assert!(backend.seen("SubscribeUnidirectional").is_empty());
    let seen = backend.seen("SubscribeBidirectional");
    assert_eq!(seen.len(), 1);
    let first: pp::StreamSubscribeRequest = seen[0].decode();
    assert!(first.publication.is_none(), "{first:?}");
    let request = first
        .subscribe_request
        .expect("the first message carries the subscribe request");
    assert_eq!(
        (request.user.as_str(), request.channel.as_str()),
        ("ann", "live:room")
    );
    assert_eq!(json_of(&request.data), json!({"team": "red"}));
    let mut ann_stream = backend.next_stream().await;
    let mut bob = Client::connect(&server, "bob").await;
    bob.subscribe(json!({"channel": "live:room"})).await;
    let mut bob_stream = backend.next_stream().await;

    // Ann's publications go into her stream, in order, each answered with an empty
    // result; nothing is broadcast (Bob, in the same channel, gets none of them).
    for n in 1..=3 {
        let reply = ann
            .call(json!({"publish": {"channel": "live:room", "data": {"says": n}}}))
            .await;
        assert_eq!(reply["publish"], json!({}), "{reply}");
    }
    for n in 1..=3 {
        let message: pp::StreamSubscribeRequest = ann_stream
            .received(Duration::from_secs(5))
            .await
            .expect("a publication on the stream");
        assert!(message.subscribe_request.is_none(), "{message:?}");
        let publication = message.publication.expect("a publication");
        assert_eq!(json_of(&publication.data), json!({"says": n}));
    }
    assert!(
        bob.next_within(Duration::from_millis(300)).await.is_none(),
        "a publication into a stream was broadcast"
    );
    // The backend's publications still flow the other way.
    assert!(ann_stream.send(&stream_publication(&json!({"echo": 1}))));
    let push = ann.wait_for(|m| m.get("push").is_some()).await;
    assert_eq!(push["push"]["pub"]["data"], json!({"echo": 1}), "{push}");

    // A client without a stream in the channel cannot publish into it.
    let mut cid = Client::connect(&server, "cid").await;
    let reply = cid
        .call(json!({"publish": {"channel": "live:room", "data": {"says": 0}}}))
        .await;
    assert_eq!(reply["error"]["code"], 108, "{reply}");

    // Bob unsubscribes: the backend sees his side of the stream end.
    let reply = bob
        .call(json!({"unsubscribe": {"channel": "live:room"}}))
        .await;
    assert!(reply.get("unsubscribe").is_some(), "{reply}");
    assert!(
        bob_stream
            .received::<pp::StreamSubscribeRequest>(Duration::from_secs(5))
            .await
            .is_none(),
        "the stream outlived the subscription"
    );
    // The backend ends Ann's stream: unsubscribed (2000), and publishing is then 108.
    ann_stream.end();
    let push = ann.wait_for(|m| m.get("push").is_some()).await;
    assert_eq!(push["push"]["unsubscribe"]["code"], 2000, "{push}");
    let reply = ann
        .call(json!({"publish": {"channel": "live:room", "data": {"says": 4}}}))
        .await;
    assert_eq!(reply["error"]["code"], 108, "{reply}");
    server.stop().await;
}

#[tokio::test]
async fn a_protobuf_client_gets_binary_stream_publications_and_publishes_into_its_stream() {
    use tether_client::{Client as SdkClient, ClientConfig, SubscriptionConfig, SubscriptionEvent};

    let backend = GrpcBackend::start(scores).await;
    let server = start(stream_config(&backend.endpoint(), true)).await;
    let sdk_config = ClientConfig {
        token: Some(support::user_token("pb")),
        ..ClientConfig::default()
    };
    let (sdk, _events) = SdkClient::new(&server.ws_url(), sdk_config).expect("sdk client");
    let (sub, mut sub_events) = sdk
        .new_subscription("live:bytes", SubscriptionConfig::default())
        .expect("subscription");
    sub.subscribe();
    sdk.connect();
    async fn next_event(events: &mut tether_client::SubscriptionEvents) -> SubscriptionEvent {
        tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("an event in time")
            .expect("the subscription's events go on")
    }
    while !matches!(
        next_event(&mut sub_events).await,
        SubscriptionEvent::Subscribed { .. }
    ) {}
    let mut stream = backend.next_stream().await;
    // Bytes no JSON client could be sent reach the Protobuf client as they are.
    let binary = Bytes::from_static(&[0, 0x9f, 0xff, b'{']);
    assert!(stream.send(&pp::StreamSubscribeResponse {
        subscribe_response: None,
        publication: Some(pp::Publication {
            data: binary.clone(),
            tags: Default::default(),
        }),
    }));
    let publication = loop {
        if let SubscriptionEvent::Publication(p) = next_event(&mut sub_events).await {
            break p;
        }
    };
    assert_eq!(publication.data, binary);
    assert_eq!(publication.offset, 0, "no offset on a stream's publication");
    // And its own binary publication reaches the backend on the stream, byte for byte.
    let sent = Bytes::from_static(&[0xff, 1, 2, 0]);
    sub.publish(sent.clone())
        .await
        .expect("published into the stream");
    let message: pp::StreamSubscribeRequest = stream
        .received(Duration::from_secs(5))
        .await
        .expect("a publication on the stream");
    assert_eq!(message.publication.expect("a publication").data, sent);
    sdk.disconnect();
    server.stop().await;
}
