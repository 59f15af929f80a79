//! Integration tests: the real server on 127.0.0.1:0, driven over WebSocket and HTTP.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{
    API_KEY, Client, Config, EngineKind, Namespace, NamespaceOptions, RecoveryMode, SECRET,
    apply_fossil_delta, config, http, start, token, user_token,
};

#[tokio::test]
async fn connect_reply_carries_client_version_and_ping() {
    let server = start(config()).await;
    let (_client, reply) = Client::connected(&server, "42").await;
    let connect = &reply["connect"];
    assert_eq!(connect["client"].as_str().unwrap().len(), 36);
    assert!(!connect["version"].as_str().unwrap().is_empty());
    assert_eq!(connect["ping"], json!(25));
    assert_eq!(connect["pong"], json!(true));
    server.stop().await;
}

#[tokio::test]
async fn invalid_token_closes_with_3500() {
    let server = start(config()).await;
    let mut client = Client::open(&server).await;
    client
        .send_raw(r#"{"id":1,"connect":{"token":"not.a.jwt"}}"#)
        .await;
    let frame = client
        .closed(Duration::from_secs(3))
        .await
        .expect("close frame");
    assert_eq!(u16::from(frame.code), 3500);
    server.stop().await;
}

#[tokio::test]
async fn expired_token_is_error_109() {
    let server = start(config()).await;
    let mut client = Client::open(&server).await;
    let reply = client
        .call(json!({"connect": {"token": token(json!({"sub": "1", "exp": 1000}))}}))
        .await;
    assert_eq!(reply["error"]["code"], json!(109));
    server.stop().await;
}

#[tokio::test]
async fn command_before_connect_closes_with_3501() {
    let server = start(config()).await;
    let mut client = Client::open(&server).await;
    client
        .send_raw(r#"{"id":1,"subscribe":{"channel":"news"}}"#)
        .await;
    let frame = client
        .closed(Duration::from_secs(3))
        .await
        .expect("close frame");
    assert_eq!(u16::from(frame.code), 3501);
    server.stop().await;
}

#[tokio::test]
async fn connect_and_subscribe_in_one_frame_reply_in_order() {
    let server = start(config()).await;
    let mut client = Client::open(&server).await;
    let frame = format!(
        "{}\n{}",
        json!({"id": 1, "connect": {"token": user_token("7")}}),
        json!({"id": 2, "subscribe": {"channel": "news"}})
    );
    client.send_raw(&frame).await;
    let first = client.next().await;
    let second = client.next().await;
    assert_eq!(first["id"], json!(1));
    assert!(first.get("connect").is_some());
    assert_eq!(second["id"], json!(2));
    assert!(second.get("subscribe").is_some(), "{second}");
    server.stop().await;
}

#[tokio::test]
async fn api_publish_reaches_subscriber_with_offset() {
    let server = start(config()).await;
    let (mut client, _) = Client::connected(&server, "1").await;
    let sub = client
        .call(json!({"subscribe": {"channel": "chat:room"}}))
        .await;
    assert_eq!(sub["subscribe"]["recoverable"], json!(true));
    let epoch = sub["subscribe"]["epoch"].as_str().unwrap().to_owned();
    let (status, body) = server
        .api(
            "publish",
            json!({"channel": "chat:room", "data": {"text": "hi"}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["offset"], json!(1));
    assert_eq!(body["result"]["epoch"], json!(epoch));
    let push = client
        .wait_for(|m| m.get("push").is_some_and(|p| p.get("pub").is_some()))
        .await;
    assert_eq!(push["push"]["channel"], json!("chat:room"));
    assert_eq!(push["push"]["pub"]["data"], json!({"text": "hi"}));
    assert_eq!(push["push"]["pub"]["offset"], json!(1));
    server.stop().await;
}

#[tokio::test]
async fn client_publish_reaches_other_subscriber() {
    let server = start(config()).await;
    let (mut alice, _) = Client::connected(&server, "alice").await;
    let (mut bob, _) = Client::connected(&server, "bob").await;
    bob.call(json!({"subscribe": {"channel": "news"}})).await;
    let reply = alice
        .call(json!({"publish": {"channel": "news", "data": {"n": 1}}}))
        .await;
    assert!(reply.get("publish").is_some(), "{reply}");
    let push = bob.wait_for(|m| m.get("push").is_some()).await;
    assert_eq!(push["push"]["pub"]["data"], json!({"n": 1}));
    assert_eq!(push["push"]["pub"]["info"]["user"], json!("alice"));
    server.stop().await;
}

/// A command that waits (a refresh whose token names a key while the key server has not
/// answered yet) holds up neither the publications of a small channel (written by the
/// publisher) nor those of a large one (written by the connection's task while the command
/// waits): they arrive before the command's outcome, which comes once the keys do.
///
/// The server's first key fetch starts at bind and gives up after 5 s (the fetch timeout),
/// which would end the refresh on its own: everything up to the release must happen well
/// within that, and does (about 0.3 s here).
#[tokio::test]
async fn publications_reach_a_client_while_its_command_waits() {
    let (jwks, release) = support::http::stalled_jwks().await;
    let mut config = config();
    config.client.token.jwks_public_endpoint = jwks;
    let started = std::time::Instant::now();
    let server = start(config).await;
    let (mut client, _) = Client::connected(&server, "1").await;
    client
        .call(json!({"subscribe": {"channel": "small"}}))
        .await;
    client
        .call(json!({"subscribe": {"channel": "large"}}))
        .await;
    // Past 32 subscribers, fan-out leaves the writing to each connection's task.
    let mut others = Vec::new();
    for n in 0..33 {
        let (mut other, _) = Client::connected(&server, &format!("other{n}")).await;
        other.call(json!({"subscribe": {"channel": "large"}})).await;
        others.push(other);
    }

    let rotated = support::token::sign(SECRET.as_bytes(), Some("rotated"), json!({"sub": "1"}));
    client
        .send_raw(&json!({"id": 100, "refresh": {"token": rotated}}).to_string())
        .await;
    // Give the server the time to start waiting for the key (if it has not, the
    // publications below arrive whatever the driver does, and the test proves nothing).
    tokio::time::sleep(Duration::from_millis(200)).await;

    for channel in ["small", "large"] {
        server
            .api(
                "publish",
                json!({"channel": channel, "data": {"on": channel}}),
            )
            .await;
        let got = client.next_within(Duration::from_secs(2)).await;
        assert_eq!(
            got.as_ref().map(|m| &m["push"]["pub"]["data"]),
            Some(&json!({"on": channel})),
            "{got:?}, {:?} after bind (the key fetch gives up at 5 s)",
            started.elapsed()
        );
    }
    assert!(
        client
            .next_within(Duration::from_millis(300))
            .await
            .is_none(),
        "the refresh is still waiting"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the setup took {:?}: the key fetch may have timed out and ended the wait",
        started.elapsed()
    );

    // The key never comes: the refresh ends the connection, only now.
    release.send(true).unwrap();
    assert_eq!(client.close_code(Duration::from_secs(10)).await, Some(3500));
    server.stop().await;
}

#[tokio::test]
async fn recovery_returns_exactly_the_missed_publications() {
    let server = start(config()).await;
    for n in 1..=5 {
        server
            .api("publish", json!({"channel": "chat:r", "data": {"n": n}}))
            .await;
    }
    let (_, body) = server
        .api("history", json!({"channel": "chat:r", "limit": 0}))
        .await;
    let epoch = body["result"]["epoch"].as_str().unwrap().to_owned();
    let (mut client, _) = Client::connected(&server, "1").await;
    let reply = client
        .call(json!({"subscribe": {"channel": "chat:r", "recover": true, "offset": 2, "epoch": epoch}}))
        .await;
    let sub = &reply["subscribe"];
    assert_eq!(sub["recovered"], json!(true), "{reply}");
    assert_eq!(sub["was_recovering"], json!(true));
    assert_eq!(sub["offset"], json!(2));
    let offsets: Vec<u64> = sub["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![3, 4, 5]);
    server.stop().await;
}

#[tokio::test]
async fn recovery_across_a_gap_larger_than_history_is_refused_whole() {
    let server = start(config()).await;
    for n in 1..=15 {
        server
            .api("publish", json!({"channel": "chat:g", "data": {"n": n}}))
            .await;
    }
    let (_, body) = server
        .api("history", json!({"channel": "chat:g", "limit": 0}))
        .await;
    let epoch = body["result"]["epoch"].as_str().unwrap().to_owned();
    let (mut client, _) = Client::connected(&server, "1").await;
    let reply = client
        .call(json!({"subscribe": {"channel": "chat:g", "recover": true, "offset": 1, "epoch": epoch}}))
        .await;
    let sub = &reply["subscribe"];
    assert!(
        sub.get("recovered").is_none() || sub["recovered"] == json!(false),
        "{reply}"
    );
    assert!(
        sub.get("publications").is_none() || sub["publications"] == json!([]),
        "{reply}"
    );
    assert_eq!(sub["offset"], json!(15));
    server.stop().await;
}

#[tokio::test]
async fn recovery_with_a_stale_epoch_is_not_recovered() {
    let server = start(config()).await;
    server
        .api("publish", json!({"channel": "chat:e", "data": {}}))
        .await;
    let (mut client, _) = Client::connected(&server, "1").await;
    let reply = client
        .call(json!({"subscribe": {"channel": "chat:e", "recover": true, "offset": 1, "epoch": "nope"}}))
        .await;
    assert!(reply["subscribe"].get("recovered").is_none(), "{reply}");
    let strict = client
        .call(json!({"subscribe": {"channel": "chat:e2", "recover": true, "offset": 5, "epoch": "nope", "flag": 2}}))
        .await;
    assert_eq!(strict["error"]["code"], json!(112), "{strict}");
    server.stop().await;
}

#[tokio::test]
async fn unknown_namespace_is_102_for_clients_and_api() {
    let server = start(config()).await;
    let (mut client, _) = Client::connected(&server, "1").await;
    let reply = client
        .call(json!({"subscribe": {"channel": "nope:x"}}))
        .await;
    assert_eq!(reply["error"]["code"], json!(102));
    let (_, body) = server
        .api("publish", json!({"channel": "nope:x", "data": {}}))
        .await;
    assert_eq!(body["error"]["code"], json!(102));
    server.stop().await;
}

#[tokio::test]
async fn api_requires_the_key() {
    let server = start(config()).await;
    let (status, _) = server.api_with_key("info", json!({}), None).await;
    assert_eq!(status, 401);
    let (status, _) = server.api_with_key("info", json!({}), Some("wrong")).await;
    assert_eq!(status, 401);
    let (status, body) = server.api("info", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["nodes"].as_array().unwrap().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn presence_join_and_leave() {
    let server = start(config()).await;
    let (mut alice, _) = Client::connected(&server, "alice").await;
    alice
        .call(json!({"subscribe": {"channel": "chat:p"}}))
        .await;
    let (mut bob, _) = Client::connected(&server, "bob").await;
    bob.call(json!({"subscribe": {"channel": "chat:p"}})).await;
    let join = alice
        .wait_for(|m| {
            m["push"].get("join").is_some() && m["push"]["join"]["info"]["user"] == json!("bob")
        })
        .await;
    assert_eq!(join["push"]["channel"], json!("chat:p"));
    let stats = alice
        .call(json!({"presence_stats": {"channel": "chat:p"}}))
        .await;
    assert_eq!(
        stats["presence_stats"],
        json!({"num_clients": 2, "num_users": 2})
    );
    bob.call(json!({"unsubscribe": {"channel": "chat:p"}}))
        .await;
    alice.wait_for(|m| m["push"].get("leave").is_some()).await;
    let presence = alice.call(json!({"presence": {"channel": "chat:p"}})).await;
    assert_eq!(
        presence["presence"]["presence"].as_object().unwrap().len(),
        1
    );
    server.stop().await;
}

#[tokio::test]
async fn missing_pong_closes_with_3012() {
    let mut cfg = config();
    cfg.client.ping_interval = Duration::from_secs(2);
    cfg.client.pong_timeout = Duration::from_secs(1);
    let server = start(cfg).await;
    let (mut client, _) = Client::connected(&server, "1").await;
    // `closed` does not answer pings.
    let frame = client
        .closed(Duration::from_secs(6))
        .await
        .expect("close frame");
    assert_eq!(u16::from(frame.code), 3012);
    server.stop().await;
}

#[tokio::test]
async fn answered_pings_keep_the_connection() {
    let mut cfg = config();
    cfg.client.ping_interval = Duration::from_secs(2);
    cfg.client.pong_timeout = Duration::from_secs(1);
    let server = start(cfg).await;
    let (mut client, _) = Client::connected(&server, "1").await;
    client.call(json!({"subscribe": {"channel": "news"}})).await;
    // Reading answers pings; keep reading for several ping intervals (nothing else arrives).
    let idle = tokio::time::timeout(Duration::from_secs(5), client.wait_for(|_| false)).await;
    assert!(idle.is_err(), "nothing but pings was expected");
    server
        .api(
            "publish",
            json!({"channel": "news", "data": {"alive": true}}),
        )
        .await;
    let push = client.wait_for(|m| m.get("push").is_some()).await;
    assert_eq!(push["push"]["pub"]["data"], json!({"alive": true}));
    server.stop().await;
}

#[tokio::test]
async fn pongs_or_an_empty_frame_before_connect_close_with_3501_at_once() {
    let mut cfg = config();
    cfg.client.stale_close_delay = Duration::from_secs(30);
    let server = start(cfg).await;
    // One pong, pongs batched in one frame, an empty frame.
    for message in ["{}", "{}\n{}\n{}", ""] {
        let mut client = Client::open(&server).await;
        client.send_raw(message).await;
        let frame = client
            .closed(Duration::from_secs(5))
            .await
            .expect("closed long before the 30 s stale delay");
        assert_eq!(u16::from(frame.code), 3501);
    }
    server.stop().await;
}

#[tokio::test]
async fn a_binary_frame_on_a_json_connection_is_read_as_json_as_centrifugo_does() {
    use tokio_tungstenite::tungstenite::Message;

    let server = start(config()).await;
    let mut client = Client::open(&server).await;
    let connect = format!(
        r#"{{"id":1,"connect":{{"token":"{}"}}}}"#,
        user_token("bin")
    );
    client.send_message(Message::Binary(connect.into())).await;
    let reply = client.next().await;
    assert_eq!(
        reply["connect"]["client"].as_str().map(str::len),
        Some(36),
        "{reply}"
    );
    client
        .send_message(Message::Binary(b"\xff\x00".to_vec().into()))
        .await;
    let frame = client
        .closed(Duration::from_secs(3))
        .await
        .expect("close frame");
    assert_eq!(u16::from(frame.code), 3501, "not JSON: a bad command");
    server.stop().await;
}

#[tokio::test]
async fn a_message_in_too_many_fragments_closes_with_1008() {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    let server = start(config()).await;
    let (mut client, _) = Client::connected(&server, "frag").await;
    let mut first = Frame::message(b"{".to_vec(), OpCode::Data(Data::Text), false);
    first.header_mut().is_final = false;
    client.send_message(Message::Frame(first)).await;
    for _ in 0..2000 {
        let empty = Frame::message(Vec::new(), OpCode::Data(Data::Continue), false);
        client.send_message(Message::Frame(empty)).await;
    }
    let frame = client
        .closed(Duration::from_secs(5))
        .await
        .expect("close frame");
    assert_eq!(u16::from(frame.code), 1008);
    server.stop().await;
}

#[tokio::test]
async fn the_listener_queues_as_many_connects_as_the_kernel_allows() {
    let server = start(config()).await;
    let somaxconn: u64 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .expect("somaxconn")
        .trim()
        .parse()
        .expect("a number");
    let out = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{}", server.addr.port())])
        .output()
        .expect("ss runs");
    let text = String::from_utf8_lossy(&out.stdout);
    // State, Recv-Q, Send-Q (the backlog of a listening socket), local, peer.
    let backlog: u64 = text
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no listener in {text:?}"));
    assert_eq!(backlog, somaxconn.min(65_535), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn no_connect_closes_with_3502() {
    let mut cfg = config();
    cfg.client.stale_close_delay = Duration::from_secs(1);
    let server = start(cfg).await;
    let mut client = Client::open(&server).await;
    let frame = client
        .closed(Duration::from_secs(4))
        .await
        .expect("close frame");
    assert_eq!(u16::from(frame.code), 3502);
    server.stop().await;
}

#[tokio::test]
async fn api_disconnect_and_unsubscribe_reach_the_user() {
    let server = start(config()).await;
    let (mut client, _) = Client::connected(&server, "u1").await;
    client.call(json!({"subscribe": {"channel": "news"}})).await;
    server
        .api("unsubscribe", json!({"user": "u1", "channel": "news"}))
        .await;
    let push = client
        .wait_for(|m| m["push"].get("unsubscribe").is_some())
        .await;
    assert_eq!(push["push"]["unsubscribe"]["code"], json!(2000));
    server
        .api("subscribe", json!({"user": "u1", "channel": "chat:s"}))
        .await;
    let push = client
        .wait_for(|m| m["push"].get("subscribe").is_some())
        .await;
    assert_eq!(push["push"]["channel"], json!("chat:s"));
    server.api("disconnect", json!({"user": "u1"})).await;
    let frame = client
        .closed(Duration::from_secs(3))
        .await
        .expect("close frame");
    assert_eq!(u16::from(frame.code), 3503);
    server.stop().await;
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let mut cfg = config();
    cfg.websocket.message_size_limit = 1024;
    let server = start(cfg).await;
    let (mut client, _) = Client::connected(&server, "1").await;
    let big = format!(
        r#"{{"id":5,"publish":{{"channel":"news","data":"{}"}}}}"#,
        "x".repeat(2000)
    );
    client.send_raw(&big).await;
    let frame = client
        .closed(Duration::from_secs(3))
        .await
        .expect("close frame");
    assert_eq!(u16::from(frame.code), 1009);
    server.stop().await;
}

/// Adds namespace `name` with `options` to `cfg`.
fn add_namespace(cfg: &mut Config, name: &str, options: NamespaceOptions) {
    cfg.channel.namespaces.push(Namespace {
        name: name.to_owned(),
        options,
    });
}

/// The test config with a `delta` namespace: history, recovery and fossil delta.
fn with_delta_namespace() -> Config {
    let mut cfg = config();
    add_namespace(
        &mut cfg,
        "delta",
        NamespaceOptions {
            history_size: 10,
            history_ttl: Duration::from_secs(300),
            force_recovery: true,
            allow_subscribe_for_client: true,
            allowed_delta_types: vec!["fossil".to_owned()],
            delta_publish: true,
            ..Default::default()
        },
    );
    cfg
}

#[tokio::test]
async fn fossil_delta_follows_a_full_first_publication() {
    let server = start(with_delta_namespace()).await;
    let (mut client, _) = Client::connected(&server, "1").await;
    let sub = client
        .call(json!({"subscribe": {"channel": "delta:x", "delta": "fossil"}}))
        .await;
    assert_eq!(sub["subscribe"]["delta"], json!(true), "{sub}");
    let first =
        json!({"text": "the quick brown fox jumps over the lazy dog, again and again", "n": 1});
    let second =
        json!({"text": "the quick brown fox jumps over the lazy cat, again and again", "n": 1});
    server
        .api("publish", json!({"channel": "delta:x", "data": first}))
        .await;
    server
        .api("publish", json!({"channel": "delta:x", "data": second}))
        .await;

    // With delta negotiated on JSON, data travels as a JSON string.
    let p1 = client
        .wait_for(|m| m["push"]["pub"]["offset"] == json!(1))
        .await;
    assert!(p1["push"]["pub"].get("delta").is_none(), "{p1}");
    let full = p1["push"]["pub"]["data"].as_str().unwrap().to_owned();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&full).unwrap(),
        first
    );

    let p2 = client
        .wait_for(|m| m["push"]["pub"]["offset"] == json!(2))
        .await;
    assert_eq!(p2["push"]["pub"]["delta"], json!(true), "{p2}");
    let patch = p2["push"]["pub"]["data"].as_str().unwrap();
    assert!(patch.len() < second.to_string().len());
    let applied = apply_fossil_delta(full.as_bytes(), patch.as_bytes()).unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&applied).unwrap(),
        second
    );
    server.stop().await;
}

#[tokio::test]
async fn channel_regex_limits_client_subscriptions() {
    let mut cfg = config();
    add_namespace(
        &mut cfg,
        "rx",
        NamespaceOptions {
            allow_subscribe_for_client: true,
            channel_regex: "^[0-9]+$".to_owned(),
            ..Default::default()
        },
    );
    let server = start(cfg).await;
    let (mut client, _) = Client::connected(&server, "1").await;
    let ok = client
        .call(json!({"subscribe": {"channel": "rx:123"}}))
        .await;
    assert!(ok.get("subscribe").is_some(), "{ok}");
    let denied = client
        .call(json!({"subscribe": {"channel": "rx:abc"}}))
        .await;
    assert_eq!(denied["error"]["code"], json!(107));
    server.stop().await;
}

#[tokio::test]
async fn metrics_count_connections_commands_publications_and_disconnects() {
    let server = start(config()).await;
    let (mut client, _) = Client::connected(&server, "m1").await;
    client
        .call(json!({"subscribe": {"channel": "chat:m"}}))
        .await;
    server
        .api("publish", json!({"channel": "chat:m", "data": {"x": 1}}))
        .await;
    client.wait_for(|m| m["push"].get("pub").is_some()).await;
    let bad = client
        .call(json!({"subscribe": {"channel": "nope:x"}}))
        .await;
    assert_eq!(bad["error"]["code"], json!(102));
    server.api("disconnect", json!({"user": "m1"})).await;
    client.closed(Duration::from_secs(3)).await;

    let body = http::request(server.addr, "GET", "/metrics", "", "")
        .await
        .unwrap()
        .text;
    let value = |needle: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{needle} missing in:\n{body}"))
    };
    assert_eq!(value("tether_connects_total"), 1.0);
    assert_eq!(
        value(r#"tether_commands_total{method="subscribe",result="ok"}"#),
        1.0
    );
    assert_eq!(
        value(r#"tether_commands_total{method="subscribe",result="error"}"#),
        1.0
    );
    assert_eq!(value("tether_publications_total"), 1.0);
    assert_eq!(value("tether_deliveries_total"), 1.0);
    assert_eq!(value(r#"tether_disconnects_total{code="3503"}"#), 1.0);
    assert!(value("tether_process_resident_memory_bytes") > 0.0);
    assert!(value(r#"tether_engine_operation_duration_seconds_count{op="publish"}"#) >= 1.0);
    server.stop().await;
}

/// An API `refresh` with a far-future (but valid i64) `expire_at` must neither kill the
/// connection's task nor expire the connection: the client's later commands still work.
#[tokio::test]
async fn api_refresh_with_a_far_future_expire_at_keeps_the_connection_working() {
    let mut cfg = config();
    cfg.client.expired_close_delay = Duration::from_millis(500);
    let server = start(cfg).await;
    let (mut client, _) = Client::connected(&server, "far").await;
    // (expire_at - now) * 1000 ms is just over 2^64: the deadline arithmetic overflows.
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    let expire_at = unix_now + 18_446_744_073_709_552;
    let (status, body) = server
        .api("refresh", json!({"user": "far", "expire_at": expire_at}))
        .await;
    assert_eq!((status, &body), (200, &json!({"result": {}})));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    client
        .send_raw(r#"{"id":77,"presence_stats":{"channel":"chat:x"}}"#)
        .await;
    let reply = client.next_within(Duration::from_secs(3)).await;
    assert!(
        reply.as_ref().is_some_and(|r| r["id"] == json!(77)),
        "no reply to a later command: {reply:?}, close {:?}",
        client.close
    );
    server.stop().await;
}

/// A frame whose last line is malformed: the valid commands before it are processed (their
/// replies arrive) and then the connection is closed with 3501, as the reference server does
/// (and as `Encoding::iter_commands` documents).
#[tokio::test]
async fn valid_commands_before_a_malformed_line_in_one_frame_are_answered_before_3501() {
    let server = start(config()).await;
    let mut client = Client::open(&server).await;
    let frame = format!(
        "{}\n{}\nnot json",
        json!({"id": 1, "connect": {"token": user_token("m")}}),
        json!({"id": 2, "subscribe": {"channel": "news"}})
    );
    client.send_raw(&frame).await;
    let first = client.next_within(Duration::from_secs(3)).await;
    assert!(
        first
            .as_ref()
            .is_some_and(|r| r["id"] == json!(1) && r.get("connect").is_some()),
        "connect reply lost: {first:?}, close {:?}",
        client.close
    );
    let second = client.next_within(Duration::from_secs(3)).await;
    assert!(
        second.as_ref().is_some_and(|r| r["id"] == json!(2)),
        "subscribe reply lost: {second:?}"
    );
    assert_eq!(client.close_code(Duration::from_secs(3)).await, Some(3501));
    server.stop().await;
}

/// A command with several request fields is dispatched by the first set in the protocol's
/// order (connect, subscribe, unsubscribe, publish, presence, presence_stats, history, rpc,
/// send, ...; compat-protocol §1.3).
#[tokio::test]
async fn a_request_before_send_in_the_protocol_order_wins_over_send() {
    let server = start(config()).await;
    let (mut client, _) = Client::connected(&server, "d").await;
    // rpc comes before send: the rpc is answered (108, no RPC handler), the send ignored.
    client
        .send_raw(r#"{"id":5,"rpc":{"method":"m","data":{}},"send":{"data":{}}}"#)
        .await;
    let reply = client.next_within(Duration::from_secs(3)).await;
    assert!(
        reply
            .as_ref()
            .is_some_and(|r| r["id"] == json!(5) && r["error"]["code"] == json!(108)),
        "rpc not dispatched: {reply:?}, close {:?}",
        client.close
    );
    // subscribe comes before send too.
    client
        .send_raw(r#"{"id":6,"subscribe":{"channel":"news"},"send":{"data":{}}}"#)
        .await;
    let reply = client.next_within(Duration::from_secs(3)).await;
    assert!(
        reply
            .as_ref()
            .is_some_and(|r| r["id"] == json!(6) && r.get("subscribe").is_some()),
        "subscribe not dispatched: {reply:?}, close {:?}",
        client.close
    );
    server.stop().await;
}

/// As Centrifugo: an unsubscribe needs a channel and a publish needs data; without them the
/// connection is closed with 3501, like any other malformed request.
#[tokio::test]
async fn unsubscribe_without_a_channel_and_publish_without_data_close_with_3501() {
    let server = start(config()).await;
    for command in [
        r#"{"id":2,"unsubscribe":{"channel":""}}"#,
        r#"{"id":2,"unsubscribe":{}}"#,
        r#"{"id":2,"publish":{"channel":"chat:x"}}"#,
    ] {
        let (mut client, _) = Client::connected(&server, "u").await;
        client.send_raw(command).await;
        assert_eq!(
            client.close_code(Duration::from_secs(3)).await,
            Some(3501),
            "{command}"
        );
    }
    server.stop().await;
}

/// A batch item is dispatched by its first request field in the order of Centrifugo's API
/// `Command` (publish before presence_stats), skipping `null` ones, every time.
#[tokio::test]
async fn a_batch_item_with_several_fields_is_dispatched_by_the_first_in_protocol_order() {
    let server = start(config()).await;
    for _ in 0..8 {
        let (status, body) = server
            .api(
                "batch",
                json!({"commands": [
                    {"presence_stats": {"channel": "chat:x"}, "publish": {"channel": "chat:x", "data": {}}},
                    {"publish": null, "presence_stats": {"channel": "chat:x"}},
                    {"no_such_method": {}},
                    {},
                ]}),
            )
            .await;
        assert_eq!(status, 200);
        let replies = body["replies"].as_array().expect("replies");
        assert!(replies[0].get("publish").is_some(), "{body}");
        assert_eq!(
            replies[1]["presence_stats"]["num_clients"],
            json!(0),
            "{body}"
        );
        assert_eq!(replies[2]["error"]["code"], json!(104), "{body}");
        assert_eq!(replies[3]["error"]["code"], json!(107), "{body}");
    }
    server.stop().await;
}

/// A positioned subscriber whose stream's metadata expires (memory engine) must not have the
/// new epoch's first publications silently dropped: it must be told (insufficient state, 2500)
/// or get them. The hub's "already delivered" filter (`skip_up_to`, set to the old epoch's top
/// at subscribe) used to swallow new-epoch offsets 1..=top, and offset top+1 then arrived as
/// if it followed the old position.
#[tokio::test]
async fn new_epoch_after_meta_expiry_is_not_silently_dropped() {
    let server = start(with_short_meta_namespace(config())).await;
    let first = first_message_after_meta_expiry(&server, Duration::from_millis(1600)).await;
    assert_told_or_got_the_new_epoch(&first);
    server.stop().await;
}

/// The config with a `short` namespace whose history and stream metadata live 1 s.
fn with_short_meta_namespace(mut cfg: Config) -> Config {
    add_namespace(
        &mut cfg,
        "short",
        NamespaceOptions {
            history_size: 10,
            history_ttl: Duration::from_secs(1),
            history_meta_ttl: Some(Duration::from_secs(1)),
            force_recovery: true,
            allow_subscribe_for_client: true,
            ..Default::default()
        },
    );
    cfg
}

/// Subscribes at offset 3 of `short:x`, waits `expiry` for the stream's metadata to expire,
/// publishes four times into the new epoch, and returns the first message the subscriber got.
async fn first_message_after_meta_expiry(
    server: &support::TestServer,
    expiry: Duration,
) -> serde_json::Value {
    for n in 1..=3 {
        server
            .api("publish", json!({"channel": "short:x", "data": {"n": n}}))
            .await;
    }
    let (mut client, _) = Client::connected(server, "1").await;
    let sub = client.subscribe(json!({"channel": "short:x"})).await;
    assert_eq!(sub["offset"], json!(3), "{sub}");
    let old_epoch = sub["epoch"].clone();
    tokio::time::sleep(expiry).await;
    for n in 1..=4 {
        let (_, body) = server
            .api("publish", json!({"channel": "short:x", "data": {"m": n}}))
            .await;
        assert_eq!(body["result"]["offset"], json!(n), "{body}");
        assert_ne!(body["result"]["epoch"], old_epoch, "{body}");
    }
    client.next().await
}

/// The subscriber was told (2500) or got the new epoch's first offset.
fn assert_told_or_got_the_new_epoch(first: &serde_json::Value) {
    let told = first["push"]["unsubscribe"]["code"] == json!(2500);
    let got_first = first["push"]["pub"]["offset"] == json!(1);
    assert!(
        told || got_first,
        "new epoch's offsets 1..=3 silently dropped; first message: {first}"
    );
}

/// The same on the Redis engine: the stream's meta expires while a positioned subscriber on
/// this node has not seen a publication since it subscribed (the engine's gap detector had no
/// last position yet). Redis expires the meta hash 1 s after the subscribe's read refreshed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_new_epoch_after_meta_expiry_is_not_silently_dropped() {
    let prefix = format!("tether-test-meta-expiry-{}", uuid::Uuid::new_v4().simple());
    let mut cfg = config();
    cfg.engine.kind = EngineKind::Redis;
    cfg.engine.redis.prefix = prefix.clone();
    let server = start(with_short_meta_namespace(cfg)).await;
    server.wait_ready().await;
    let first = first_message_after_meta_expiry(&server, Duration::from_millis(2500)).await;
    support::cluster::delete_keys(&prefix).await;
    assert_told_or_got_the_new_epoch(&first);
    server.stop().await;
}

/// `force_recovery_mode: "cache"` (accepted by the config) recovers the latest publication:
/// a client that missed several gets the stream's latest one and `recovered: true`
/// (compatibility reference §2.3, cache mode). Before the fix the mode was ignored and the
/// client was told `recovered: false` with nothing, as in stream mode with a one-entry history.
#[tokio::test]
async fn cache_recovery_mode_delivers_the_latest_publication() {
    let mut cfg = config();
    add_namespace(
        &mut cfg,
        "cache",
        NamespaceOptions {
            history_size: 1,
            history_ttl: Duration::from_secs(300),
            force_recovery: true,
            force_recovery_mode: RecoveryMode::Cache,
            allow_subscribe_for_client: true,
            ..Default::default()
        },
    );
    let server = start(cfg).await;
    let (_, body) = server
        .api("publish", json!({"channel": "cache:s", "data": {"n": 1}}))
        .await;
    let epoch = body["result"]["epoch"].as_str().unwrap().to_owned();
    for n in 2..=3 {
        server
            .api("publish", json!({"channel": "cache:s", "data": {"n": n}}))
            .await;
    }
    let (mut client, _) = Client::connected(&server, "1").await;
    let sub = client
        .subscribe(json!({"channel": "cache:s", "recover": true, "offset": 1, "epoch": epoch}))
        .await;
    assert_eq!(sub["recovered"], json!(true), "{sub}");
    let offsets: Vec<u64> = sub["publications"]
        .as_array()
        .map(|p| p.iter().map(|p| p["offset"].as_u64().unwrap()).collect())
        .unwrap_or_default();
    assert_eq!(offsets, [3], "{sub}");
    server.stop().await;
}

/// A publication without history (`skip_history`) reaching a fossil-delta subscriber is sent
/// full, and the SDK keeps it as the base of the next delta. The next stream publication must
/// then be full too (or a patch against that publication): a patch against the stream's
/// previous publication, which is not what the client holds, cannot be applied.
#[tokio::test]
async fn delta_after_a_publication_without_history_applies_to_what_the_client_holds() {
    let server = start(with_delta_namespace()).await;
    let (mut client, _) = Client::connected(&server, "1").await;
    let sub = client
        .call(json!({"subscribe": {"channel": "delta:s", "delta": "fossil"}}))
        .await;
    assert_eq!(sub["subscribe"]["delta"], json!(true), "{sub}");
    let text = |animal: &str, n: u32| json!({"text": format!("the quick brown fox jumps over the lazy {animal}, again and again"), "n": n});
    let publish = |data: serde_json::Value, skip: bool| {
        let server = &server;
        async move {
            server
                .api(
                    "publish",
                    json!({"channel": "delta:s", "data": data, "skip_history": skip}),
                )
                .await
        }
    };
    publish(text("dog", 1), false).await;
    publish(text("cat", 1), false).await;
    publish(
        json!({"other": "a completely different payload, not in the stream", "z": [1, 2, 3]}),
        true,
    )
    .await;
    publish(text("cow", 1), false).await;

    // What the SDK does: keep the last data, apply patches to it.
    let mut held: Vec<u8> = Vec::new();
    for _ in 0..4 {
        let m = client.wait_for(|m| m["push"]["pub"].is_object()).await;
        let p = &m["push"]["pub"];
        let data = p["data"].as_str().unwrap().as_bytes().to_vec();
        held = if p["delta"] == json!(true) {
            apply_fossil_delta(&held, &data).unwrap_or_else(|e| {
                panic!("patch does not apply to what the client holds: {e:?}; {m}")
            })
        } else {
            data
        };
    }
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&held).unwrap(),
        text("cow", 1)
    );
    server.stop().await;
}

#[tokio::test]
async fn legacy_api_endpoint_runs_newline_separated_commands_with_numeric_methods() {
    let server = start(config()).await;
    let body = concat!(
        r#"{"id":1,"method":"publish","params":{"channel":"chat:legacy","data":{"n":1}}}"#,
        "\n",
        r#"{"id":2,"method":6,"params":{"channel":"chat:legacy","limit":10}}"#,
    );
    let response = http::request(
        server.addr,
        "POST",
        "/api",
        &format!("Authorization: apikey {API_KEY}\r\n"),
        body,
    )
    .await
    .expect("api reachable");
    let (status, text) = (response.status, response.body());
    assert_eq!(status, 200, "{text}");
    let replies: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON reply per line"))
        .collect();
    assert_eq!(replies.len(), 2, "{text}");
    assert_eq!(replies[0]["id"], json!(1));
    assert_eq!(replies[0]["result"]["offset"], json!(1));
    assert_eq!(replies[1]["id"], json!(2));
    assert_eq!(
        replies[1]["result"]["publications"][0]["data"],
        json!({"n": 1})
    );
    server.stop().await;
}

#[tokio::test]
async fn api_key_in_the_query_is_accepted_beside_a_non_apikey_authorization_header() {
    let server = start(config()).await;
    let response = http::request(
        server.addr,
        "POST",
        &format!("/api/info?api_key={API_KEY}"),
        "Authorization: Bearer some-proxy-token\r\n",
        "{}",
    )
    .await
    .expect("api reachable");
    let text = &response.text;
    assert_eq!(&text[9..12], "200", "{text}");
    server.stop().await;
}

#[tokio::test]
async fn api_subscribe_with_expire_at_closes_the_connection_with_3006_when_it_expires() {
    let mut cfg = config();
    cfg.client.expired_sub_close_delay = Duration::from_millis(100);
    let server = start(cfg).await;
    let (mut client, _) = Client::connected(&server, "exp").await;
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    let (status, body) = server
        .api(
            "subscribe",
            json!({"user": "exp", "channel": "chat:exp", "expire_at": unix_now + 1}),
        )
        .await;
    assert_eq!((status, &body), (200, &json!({"result": {}})));
    client
        .wait_for(|m| m["push"].get("subscribe").is_some())
        .await;
    assert_eq!(client.close_code(Duration::from_secs(5)).await, Some(3006));
    server.stop().await;
}

#[tokio::test]
async fn history_remove_on_a_channel_without_history_is_108() {
    let server = start(config()).await;
    let (status, body) = server
        .api("history_remove", json!({"channel": "news"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["error"]["code"], json!(108), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn api_disconnect_for_another_session_leaves_the_connection_alone() {
    let server = start(config()).await;
    let (mut client, _) = Client::connected(&server, "sess").await;
    let (status, body) = server
        .api(
            "disconnect",
            json!({"user": "sess", "session": "no-such-session"}),
        )
        .await;
    assert_eq!((status, &body), (200, &json!({"result": {}})));
    client
        .send_raw(r#"{"id":78,"presence_stats":{"channel":"chat:x"}}"#)
        .await;
    let reply = client.next_within(Duration::from_secs(3)).await;
    assert!(
        reply.as_ref().is_some_and(|r| r["id"] == json!(78)),
        "no reply after a disconnect aimed at another session: {reply:?}, close {:?}",
        client.close
    );
    server.stop().await;
}

#[tokio::test]
async fn api_publish_prefers_b64data_over_data() {
    let server = start(config()).await;
    let (status, body) = server
        .api(
            "publish",
            json!({"channel": "chat:b64", "data": {"from": "data"}, "b64data": "eyJmcm9tIjoiYjY0In0="}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = server
        .api("history", json!({"channel": "chat:b64", "limit": 1}))
        .await;
    assert_eq!(
        body["result"]["publications"][0]["data"],
        json!({"from": "b64"}),
        "{body}"
    );
    server.stop().await;
}

/// `sub_refresh` is for client-side subscriptions refreshed with a token: for a server-side
/// subscription the reference server closes the connection with 3501 ("server-side sub
/// refresh expected", centrifuge `handleSubRefresh`) rather than give the subscription the
/// token's expiry — which would later end the connection with 3006.
#[tokio::test]
async fn sub_refresh_of_a_server_side_subscription_is_a_bad_request() {
    let server = start(config()).await;
    let mut client = Client::open(&server).await;
    client
        .connect_with(&token(json!({"sub": "s", "channels": ["feed"]})))
        .await;
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    let sub_token = token(json!({"sub": "s", "channel": "feed", "exp": unix_now + 60}));
    client
        .send_raw(
            &json!({"id": 2, "sub_refresh": {"channel": "feed", "token": sub_token}}).to_string(),
        )
        .await;
    let reply = client.next_within(Duration::from_secs(3)).await;
    assert!(reply.is_none(), "answered: {reply:?}");
    assert_eq!(
        client
            .close
            .clone()
            .flatten()
            .map(|frame| u16::from(frame.code)),
        Some(3501)
    );
    server.stop().await;
}

/// compat-protocol §3.4: with `subscribe_to_user_personal_channel.single_connection` the
/// server keeps one connection per user. Centrifugo (`internal/client/handler.go`,
/// `OnConnect`) checks presence of the personal channel when a user connects and, when a
/// second connection is there, disconnects the user's other connections with 3504
/// ("connection limit"), keeping the new one.
#[tokio::test]
async fn personal_channel_single_connection_closes_the_older_connection_with_3504() {
    let mut cfg = config();
    cfg.channel.without_namespace.presence = true;
    cfg.client.subscribe_to_user_personal_channel.enabled = true;
    cfg.client
        .subscribe_to_user_personal_channel
        .single_connection = true;
    let server = start(cfg).await;
    let (mut first, _) = Client::connected(&server, "solo").await;
    let (mut second, reply) = Client::connected(&server, "solo").await;
    assert!(reply["connect"]["subs"].get("#solo").is_some(), "{reply}");
    assert_eq!(first.close_code(Duration::from_secs(3)).await, Some(3504));
    // The new connection stays.
    let ok = second.call(json!({"subscribe": {"channel": "news"}})).await;
    assert!(ok.get("subscribe").is_some(), "{ok}");
    server.stop().await;
}

/// compat-protocol §3.2: a subscription token's `data` (or `b64data`) is custom data for the
/// client; Centrifugo puts it into the subscription options (`jwtverify`
/// `VerifySubscribeToken`: `Options.Data`), which centrifuge returns as
/// `SubscribeResult.data` (field 11; centrifuge-js `SubscribedContext.data`).
#[tokio::test]
async fn subscription_token_data_is_returned_in_the_subscribe_result() {
    let server = start(config()).await;
    let (mut client, _) = Client::connected(&server, "d1").await;
    let sub_token = token(json!({"sub": "d1", "channel": "news", "data": {"welcome": 1}}));
    let reply = client
        .call(json!({"subscribe": {"channel": "news", "token": sub_token}}))
        .await;
    assert_eq!(reply["subscribe"]["data"], json!({"welcome": 1}), "{reply}");
    server.stop().await;
}

/// compat-protocol §3.1: a connection token's server-side subscriptions (`subs`, and
/// `channels`) in a namespace that is not configured fail the connect with 102 (Centrifugo
/// `VerifyConnectToken` returns `ErrorUnknownChannel`), rather than connecting the client
/// without the subscriptions it was given.
#[tokio::test]
async fn connection_token_subscriptions_in_an_unknown_namespace_are_error_102() {
    let server = start(config()).await;
    let mut client = Client::open(&server).await;
    let reply = client
        .call(json!({"connect": {"token": token(json!({"sub": "u", "subs": {"nope:x": {}}}))}}))
        .await;
    assert_eq!(reply["error"]["code"], json!(102), "{reply}");
    let mut client = Client::open(&server).await;
    let reply = client
        .call(json!({"connect": {"token": token(json!({"sub": "u", "channels": ["nope:y"]}))}}))
        .await;
    assert_eq!(reply["error"]["code"], json!(102), "{reply}");
    server.stop().await;
}

/// compat-protocol §3.3: `client.insecure` makes all subscribe permission checks pass. In
/// Centrifugo's `OnSubscribe` a user-limited channel the user is not listed in falls
/// through to the `client.insecure` branch and is allowed.
#[tokio::test]
async fn insecure_mode_allows_a_user_limited_channel_for_an_unlisted_user() {
    let mut cfg = config();
    cfg.client.insecure = true;
    add_namespace(
        &mut cfg,
        "dm",
        NamespaceOptions {
            allow_user_limited_channels: true,
            ..Default::default()
        },
    );
    let server = start(cfg).await;
    let (mut client, _) = Client::connected(&server, "3").await;
    let reply = client
        .call(json!({"subscribe": {"channel": "dm:#1,2"}}))
        .await;
    assert!(reply.get("subscribe").is_some(), "{reply}");
    server.stop().await;
}

/// Centrifugo's `UserAllowed` reads the allowed users after the **last** user boundary
/// (`parts[len(parts)-1]`), so `dm:room#a#42` is open to user 42.
#[tokio::test]
async fn user_limited_channel_users_follow_the_last_boundary() {
    let mut cfg = config();
    add_namespace(
        &mut cfg,
        "dm",
        NamespaceOptions {
            allow_user_limited_channels: true,
            ..Default::default()
        },
    );
    let server = start(cfg).await;
    let (mut client, _) = Client::connected(&server, "42").await;
    let reply = client
        .call(json!({"subscribe": {"channel": "dm:room#a#42"}}))
        .await;
    assert!(reply.get("subscribe").is_some(), "{reply}");
    server.stop().await;
}

/// compat-protocol §3.4: channel names are ASCII only. Centrifugo (`validateChannelName` in
/// `OnSubscribe`/`OnPublish`/`OnPresence`/`OnHistory`) answers 107 for a channel that fails
/// the namespace `channel_regex`, or, without a regex, is not ASCII.
#[tokio::test]
async fn invalid_channel_names_are_107_bad_request() {
    let mut cfg = config();
    add_namespace(
        &mut cfg,
        "rx",
        NamespaceOptions {
            allow_subscribe_for_client: true,
            allow_publish_for_client: true,
            channel_regex: "^[0-9]+$".to_owned(),
            ..Default::default()
        },
    );
    let server = start(cfg).await;
    let (mut client, _) = Client::connected(&server, "1").await;
    let reply = client
        .call(json!({"subscribe": {"channel": "rx:abc"}}))
        .await;
    assert_eq!(reply["error"]["code"], json!(107), "{reply}");
    let reply = client
        .call(json!({"publish": {"channel": "rx:abc", "data": {}}}))
        .await;
    assert_eq!(reply["error"]["code"], json!(107), "{reply}");
    let reply = client
        .call(json!({"subscribe": {"channel": "caf\u{e9}"}}))
        .await;
    assert_eq!(reply["error"]["code"], json!(107), "{reply}");
    server.stop().await;
}
