//! Limits and defences end to end, against the real server on 127.0.0.1:0: Origin checks,
//! JWT rules, message size, no connect, slow upgrades, request head limits, connection
//! limits (global, per IP, per user, raw TCP), connection rate, command rate, channel limit,
//! and a stalled reader — with the bounds other clients keep meanwhile.
//!
//! Time bounds are generous: these run on a loaded 2-core machine.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::token::sign;
use support::ws::upgrade_status;
use support::{API_KEY, Client, SECRET, TestServer, config, http, start, token, user_token, ws};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const RSA_PUBLIC: &str = include_str!("../src/auth/testdata/rsa_public.pem");

/// Connects from a chosen loopback address (127.0.0.0/8 is all loopback on Linux).
async fn upgrade_from(addr: SocketAddr, from: [u8; 4]) -> (u16, TcpStream) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let head = ws::upgrade(&mut stream, "").await.unwrap();
    (ws::status(&head), stream)
}

/// Waits until the peer closes the stream (EOF or reset); returns how long it took.
async fn eof_within(stream: &mut TcpStream, within: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout_at(start + within, stream.read(&mut buf))
            .await
            .expect("the server did not close the connection in time")
        {
            Ok(0) | Err(_) => return start.elapsed(),
            Ok(_) => {}
        }
    }
}

// === defences ===

#[tokio::test]
async fn origin_is_checked_against_the_allow_list() {
    // Default: only requests without an Origin header pass.
    let server = start(config()).await;
    assert_eq!(upgrade_status(server.addr, "").await.0, 101);
    let (status, _) = upgrade_status(server.addr, "Origin: http://evil.example\r\n").await;
    assert_eq!(status, 403);
    server.stop().await;

    let mut cfg = config();
    cfg.client.allowed_origins = vec!["https://*.example.com".to_owned()];
    let server = start(cfg).await;
    let ok = upgrade_status(server.addr, "Origin: https://app.example.com\r\n").await;
    assert_eq!(ok.0, 101);
    let bad = upgrade_status(server.addr, "Origin: https://example.com.evil.org\r\n").await;
    assert_eq!(bad.0, 403);
    server.stop().await;
}

#[tokio::test]
async fn jwt_rules_give_the_reference_codes() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let b64 = |v: &Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };

    // The server holds only an RSA public key, the setting the HS256 key confusion targets.
    let mut cfg = config();
    cfg.client.token.hmac_secret_key = String::new();
    cfg.client.token.rsa_public_key = RSA_PUBLIC.to_owned();
    let server = start(cfg).await;

    // alg none: close 3500 (invalid token).
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&json!({"sub": "u1"}))
    );
    assert_eq!(connect_close(&server, &none).await, Some(3500));

    // HS256 signed with the RSA public key as the HMAC secret: close 3500.
    let confused = sign(RSA_PUBLIC.as_bytes(), None, json!({"sub": "u1"}));
    assert_eq!(connect_close(&server, &confused).await, Some(3500));
    server.stop().await;

    // With an HMAC key: expired and not-yet-valid tokens get error 109 (the SDK refreshes
    // the token), as the reference maps both to "token expired"; the connection stays.
    let server = start(config()).await;
    let expired = token(json!({"sub": "u1", "exp": now - 60}));
    assert_eq!(connect_error(&server, &expired).await, 109);
    let early = token(json!({"sub": "u1", "nbf": now + 3600, "exp": now + 7200}));
    assert_eq!(connect_error(&server, &early).await, 109);
    // And a good token still connects.
    let good = token(json!({"sub": "u1", "exp": now + 3600}));
    let mut client = Client::open(&server).await;
    let reply = client.call(json!({"connect": {"token": good}})).await;
    assert!(reply.get("connect").is_some(), "{reply}");
    // The HMAC secret itself is what verifies: a token signed with another one is refused.
    let forged = sign(format!("{SECRET}x").as_bytes(), None, json!({"sub": "u1"}));
    assert_eq!(connect_close(&server, &forged).await, Some(3500));
    server.stop().await;
}

/// Sends connect with `token` and expects the connection to be closed; returns the code.
async fn connect_close(server: &TestServer, token: &str) -> Option<u16> {
    let mut client = Client::open(server).await;
    client
        .send_raw(&json!({"id": 1, "connect": {"token": token}}).to_string())
        .await;
    client.close_code(Duration::from_secs(5)).await
}

/// Sends connect with `token` and expects an error reply; returns its code.
async fn connect_error(server: &TestServer, token: &str) -> u64 {
    let mut client = Client::open(server).await;
    let reply = client.call(json!({"connect": {"token": token}})).await;
    reply["error"]["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("expected an error reply: {reply}"))
}

// === message and handshake limits ===

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let mut cfg = config();
    cfg.websocket.message_size_limit = 1024;
    let server = start(cfg).await;
    let (mut client, _) = Client::connected(&server, "1").await;
    // Just under the limit passes.
    let fits = json!({"id": 2, "publish": {"channel": "news", "data": "x".repeat(900)}});
    client.send_raw(&fits.to_string()).await;
    let reply = client.wait_for(|m| m["id"] == json!(2)).await;
    assert!(reply.get("publish").is_some(), "{reply}");
    let big = json!({"id": 3, "publish": {"channel": "news", "data": "x".repeat(2000)}});
    client.send_raw(&big.to_string()).await;
    assert_eq!(client.close_code(Duration::from_secs(5)).await, Some(1009));
    server.stop().await;
}

#[tokio::test]
async fn no_connect_in_time_closes_with_3502() {
    let mut cfg = config();
    cfg.client.stale_close_delay = Duration::from_secs(1);
    let server = start(cfg).await;
    let start_at = Instant::now();
    let mut client = Client::open(&server).await;
    assert_eq!(client.close_code(Duration::from_secs(6)).await, Some(3502));
    assert!(start_at.elapsed() >= Duration::from_millis(900));
    server.stop().await;
}

#[tokio::test]
async fn slow_and_silent_upgrades_are_closed_after_the_handshake_timeout() {
    let mut cfg = config();
    cfg.client.handshake_timeout = Duration::from_secs(1);
    let server = start(cfg).await;

    // Silent: a connection that sends nothing.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let took = eof_within(&mut silent, Duration::from_secs(6)).await;
    assert!(
        took >= Duration::from_millis(800),
        "closed too early: {took:?}"
    );

    // Slow: a request head trickling in a byte every 100 ms never completes in time.
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /connection/websocket HTTP/1.1\r\n")
        .await
        .unwrap();
    let start_at = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        assert!(
            start_at.elapsed() < Duration::from_secs(6),
            "slow upgrade still open"
        );
        tokio::select! {
            read = slow.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => panic!("unexpected response: {:?}", &buf[..n]),
            },
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                if slow.write_all(b"X").await.is_err() {
                    break;
                }
            }
        }
    }
    let took = start_at.elapsed();
    assert!(
        took >= Duration::from_millis(800),
        "closed too early: {took:?}"
    );

    // The node still upgrades well-behaved clients.
    assert_eq!(upgrade_status(server.addr, "").await.0, 101);
    server.stop().await;
}

#[tokio::test]
async fn oversized_or_crowded_request_heads_get_431() {
    let mut cfg = config();
    cfg.http_server.max_request_head_size = 1024;
    cfg.http_server.max_request_headers = 16;
    let server = start(cfg).await;
    let long = format!("X-Filler: {}\r\n", "a".repeat(2000));
    assert_eq!(upgrade_status(server.addr, &long).await.0, 431);
    let many: String = (0..20).map(|i| format!("X-H{i}: v\r\n")).collect();
    assert_eq!(upgrade_status(server.addr, &many).await.0, 431);
    // Within both limits it upgrades.
    let few: String = (0..5).map(|i| format!("X-H{i}: v\r\n")).collect();
    assert_eq!(upgrade_status(server.addr, &few).await.0, 101);
    server.stop().await;
}

// === connection limits ===

#[tokio::test]
async fn global_connection_limit_answers_503_and_frees_on_close() {
    let mut cfg = config();
    cfg.client.connection_limit = 2;
    let server = start(cfg).await;
    let (a, _) = Client::connected(&server, "a").await;
    let (_b, _) = Client::connected(&server, "b").await;
    assert_eq!(upgrade_status(server.addr, "").await.0, 503);
    // The API is not a client connection and still works at the limit.
    let (status, body) = server.api("info", json!({})).await;
    assert_eq!(status, 200, "{body}");
    // A closed connection frees its slot.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _) = upgrade_status(server.addr, "").await;
        if status == 101 {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn ip_connection_limit_is_per_address() {
    let mut cfg = config();
    cfg.client.ip_connection_limit = 1;
    let server = start(cfg).await;
    let (first, _s1) = upgrade_from(server.addr, [127, 0, 0, 1]).await;
    assert_eq!(first, 101);
    let (second, _s2) = upgrade_from(server.addr, [127, 0, 0, 1]).await;
    assert_eq!(second, 503);
    let (other, _s3) = upgrade_from(server.addr, [127, 0, 0, 2]).await;
    assert_eq!(other, 101, "another address has its own count");
    server.stop().await;
}

#[tokio::test]
async fn per_user_limit_closes_with_3504() {
    let mut cfg = config();
    cfg.client.user_connection_limit = 2;
    let server = start(cfg).await;
    let (_a, _) = Client::connected(&server, "u").await;
    let (_b, _) = Client::connected(&server, "u").await;
    let mut third = Client::open(&server).await;
    third
        .send_raw(&json!({"id": 1, "connect": {"token": user_token("u")}}).to_string())
        .await;
    assert_eq!(third.close_code(Duration::from_secs(5)).await, Some(3504));
    // Other users are not affected.
    let (_c, _) = Client::connected(&server, "v").await;
    server.stop().await;
}

#[tokio::test]
async fn raw_tcp_over_the_limit_is_closed() {
    let mut cfg = config();
    cfg.client.connection_limit = 1;
    let server = start(cfg).await;
    let tcp_addr = server.tcp.expect("tcp enabled");
    let (_a, _) = Client::connected(&server, "a").await;
    let mut tcp = TcpStream::connect(tcp_addr).await.unwrap();
    let took = eof_within(&mut tcp, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(2), "{took:?}");
    server.stop().await;
}

#[tokio::test]
async fn connect_burst_over_the_rate_gets_503_while_subscribers_keep_getting_publications() {
    let mut cfg = config();
    cfg.client.connection_rate_limit = 5;
    let server = start(cfg).await;
    let (mut sub, _) = Client::connected(&server, "sub").await;
    sub.call(json!({"subscribe": {"channel": "news"}})).await;

    let addr = server.addr;
    let burst = tokio::spawn(async move {
        let started = Instant::now();
        let attempts = (0..60).map(|_| upgrade_status(addr, ""));
        let results = futures_util::future::join_all(attempts).await;
        let took = started.elapsed();
        let refused = results.iter().filter(|(s, _)| *s == 503).count();
        let upgraded = results.iter().filter(|(s, _)| *s == 101).count();
        (refused, upgraded, took, results)
    });

    // Publications keep flowing to the connected subscriber during the burst.
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        let sent = Instant::now();
        let (status, _) = server
            .api("publish", json!({"channel": "news", "data": {"i": i}}))
            .await;
        assert_eq!(status, 200);
        let push = sub
            .wait_for(|m| m["push"]["pub"]["data"]["i"] == json!(i))
            .await;
        assert!(push.get("push").is_some());
        worst = worst.max(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (refused, upgraded, took, _keep) = burst.await.unwrap();
    assert_eq!(refused + upgraded, 60);
    // The bucket holds 5 (the subscriber took one) and refills at 5/s while the burst lasts.
    let allowed = 5.0 + 5.0 * took.as_secs_f64();
    assert!(
        upgraded as f64 <= allowed + 1.0,
        "upgraded {upgraded} in {took:?}, refused {refused}"
    );
    assert!(
        refused >= 1 && upgraded >= 1,
        "refused {refused}, upgraded {upgraded}"
    );
    assert!(
        worst < Duration::from_secs(1),
        "publication latency during the burst: {worst:?}"
    );
    server.stop().await;
}

// === per-connection limits ===

#[tokio::test]
async fn command_rate_gives_111_then_3013() {
    let mut cfg = config();
    cfg.client.command_rate_limit.rate = 1.0;
    cfg.client.command_rate_limit.burst = 3;
    cfg.client.command_rate_limit.disconnect_after = 5;
    let server = start(cfg).await;
    // connect takes one token.
    let (mut client, _) = Client::connected(&server, "u").await;
    let frame: String = (2..=12)
        .map(|id| json!({"id": id, "publish": {"channel": "news", "data": {}}}).to_string())
        .collect::<Vec<_>>()
        .join("\n");
    client.send_raw(&frame).await;
    for id in 2..=3 {
        let reply = client.wait_for(|m| m["id"] == json!(id)).await;
        assert!(reply.get("publish").is_some(), "{reply}");
    }
    for id in 4..=7 {
        let reply = client.wait_for(|m| m["id"] == json!(id)).await;
        assert_eq!(reply["error"]["code"], json!(111), "{reply}");
        assert_eq!(reply["error"]["temporary"], json!(true), "{reply}");
    }
    // The fifth rejection closes the connection.
    assert_eq!(client.close_code(Duration::from_secs(5)).await, Some(3013));
    server.stop().await;
}

#[tokio::test]
async fn channel_limit_is_error_106() {
    let mut cfg = config();
    cfg.client.channel_limit = 2;
    let server = start(cfg).await;
    let (mut client, _) = Client::connected(&server, "u").await;
    for channel in ["a", "b"] {
        let reply = client
            .call(json!({"subscribe": {"channel": channel}}))
            .await;
        assert!(reply.get("subscribe").is_some(), "{reply}");
    }
    let reply = client.call(json!({"subscribe": {"channel": "c"}})).await;
    assert_eq!(reply["error"]["code"], json!(106), "{reply}");
    server.stop().await;
}

#[tokio::test]
async fn stalled_reader_is_closed_with_3008_while_others_keep_up() {
    let mut cfg = config();
    cfg.client.queue_max_size = 64 * 1024;
    let server = start(cfg).await;
    let (mut healthy, _) = Client::connected(&server, "healthy").await;
    healthy
        .call(json!({"subscribe": {"channel": "flood"}}))
        .await;

    // The stalled client: subscribed, then it stops reading.
    let (mut stalled, stalled_conn) = server.stalled_subscriber("stalled", "flood").await;

    // Flood the channel until the stalled connection is cut off; the healthy subscriber
    // reads along (until the `done` marker) and times every publication.
    const MAX: usize = 1000;
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            let push = healthy.wait_for(|m| m["push"].get("pub").is_some()).await;
            let data = &push["push"]["pub"]["data"];
            if data["done"] == json!(true) {
                return got;
            }
            got.push((data["i"].as_u64().unwrap() as usize, Instant::now()));
        }
    });
    let pad = "p".repeat(16 * 1024);
    let flood = {
        let stalled_conn = stalled_conn.clone();
        let addr = server.addr;
        tokio::spawn(async move {
            let mut sent = Vec::new();
            for i in 0..MAX {
                if stalled_conn.is_closing() {
                    break;
                }
                sent.push(Instant::now());
                let body = json!({"channel": "flood", "data": {"i": i, "pad": pad}});
                let (status, _) = http::api(addr, "publish", body, Some(API_KEY))
                    .await
                    .unwrap();
                assert_eq!(status, 200);
            }
            sent
        })
    };
    // The stalled client starts reading as soon as it was cut off, so the close frame that
    // follows the bytes already on their way can be written.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stalled_conn.is_closing() {
        assert!(
            Instant::now() < deadline,
            "stalled reader was never cut off"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let code = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(msg) = stalled.next().await {
            match msg {
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("stalled client never closed");
    assert_eq!(code, Some(3008));

    let sent = flood.await.unwrap();
    assert!(
        sent.len() < MAX,
        "the flood outgrew the stalled reader's queue"
    );
    server
        .api(
            "publish",
            json!({"channel": "flood", "data": {"done": true}}),
        )
        .await;
    let got = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("healthy subscriber fell behind")
        .unwrap();
    let order: Vec<usize> = got.iter().map(|(i, _)| *i).collect();
    assert_eq!(order, (0..sent.len()).collect::<Vec<_>>(), "all, in order");
    let worst = got
        .iter()
        .map(|(i, at)| at.saturating_duration_since(sent[*i]))
        .max()
        .unwrap();
    assert!(
        worst < Duration::from_secs(3),
        "healthy subscriber latency during the flood: {worst:?}"
    );
    server.stop().await;
}

/// Server-side subscriptions count against the channel limit as client ones do, but past it
/// the reference server closes the connection with 3505 (centrifuge `connectCmd`:
/// `len(subscriptions) > channelLimit` -> `DisconnectChannelLimit`) instead of replying 106:
/// a connect whose token lists more channels than the limit is not let through with all of
/// them.
#[tokio::test]
async fn server_side_channels_over_the_channel_limit_close_with_3505() {
    let mut cfg = config();
    cfg.client.channel_limit = 2;
    let server = start(cfg).await;
    let mut client = Client::open(&server).await;
    let over = token(json!({"sub": "u", "channels": ["a", "b", "c"]}));
    client
        .send_raw(&json!({"id": 1, "connect": {"token": over}}).to_string())
        .await;
    let reply = client.next_within(Duration::from_secs(3)).await;
    assert!(
        reply.is_none(),
        "connected with more channels than the limit: {reply:?}"
    );
    assert_eq!(
        client
            .close
            .clone()
            .flatten()
            .map(|frame| u16::from(frame.code)),
        Some(3505)
    );
    // At the limit the connect goes through.
    let mut client = Client::open(&server).await;
    let at = token(json!({"sub": "u", "channels": ["a", "b"]}));
    let reply = client.connect_with(&at).await;
    assert_eq!(
        reply["connect"]["subs"].as_object().map(|s| s.len()),
        Some(2)
    );
    server.stop().await;
}

/// A server API `subscribe` for a connection already at the channel limit closes it with
/// 3505, as the reference server's `Client.Subscribe` does (`numChannels >= channelLimit` ->
/// `DisconnectChannelLimit`), rather than taking it past the limit.
#[tokio::test]
async fn api_subscribe_past_the_channel_limit_closes_with_3505() {
    let mut cfg = config();
    cfg.client.channel_limit = 2;
    let server = start(cfg).await;
    let (mut client, _) = Client::connected(&server, "u").await;
    for channel in ["a", "b"] {
        let reply = client
            .call(json!({"subscribe": {"channel": channel}}))
            .await;
        assert!(reply.get("subscribe").is_some(), "{reply}");
    }
    let (status, _) = server
        .api("subscribe", json!({"user": "u", "channel": "c"}))
        .await;
    assert_eq!(status, 200);
    let push = client.next_within(Duration::from_secs(3)).await;
    assert!(push.is_none(), "subscribed past the limit: {push:?}");
    assert_eq!(
        client
            .close
            .clone()
            .flatten()
            .map(|frame| u16::from(frame.code)),
        Some(3505)
    );
    server.stop().await;
}

/// A connection the server closes stops counting against its user's connection limit at
/// once, as in the reference server (centrifuge `Client.close` removes the client from the
/// hub before the transport is closed), not only once its goodbye has been written: a client
/// that lost its network path is told 3012 (reconnect), comes back on a new connection,
/// and must not be refused with 3504 — a terminal code, after which the SDK never
/// reconnects — while the old socket is still full and its close frame waits to be written.
#[tokio::test]
async fn a_closed_connection_frees_its_users_slot_before_its_goodbye_is_written() {
    let mut cfg = config();
    cfg.client.user_connection_limit = 1;
    cfg.client.ping_interval = Duration::from_secs(2);
    cfg.client.pong_timeout = Duration::from_secs(1);
    let server = start(cfg).await;

    // The old connection: subscribed, then its reader stalls (a dead network path).
    let (stalled, old) = server.stalled_subscriber("u", "feed").await;
    // Publish until the socket takes no more and frames wait in the server's queue (well
    // under its bound, so this is not a slow-consumer close).
    let pad = "p".repeat(16 * 1024);
    for i in 0..200 {
        if old.has_frames() {
            break;
        }
        let (status, _) = server
            .api(
                "publish",
                json!({"channel": "feed", "data": {"i": i, "pad": pad}}),
            )
            .await;
        assert_eq!(status, 200);
    }
    assert!(old.has_frames(), "the old socket never filled up");
    // Its pong never comes: the server closes it with 3012.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !old.is_closing() {
        assert!(
            Instant::now() < deadline,
            "no 3012 for the silent connection"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // The client is back on a new connection.
    let mut fresh = Client::open(&server).await;
    fresh
        .send_raw(&json!({"id": 1, "connect": {"token": user_token("u")}}).to_string())
        .await;
    let reply = fresh.next_within(Duration::from_secs(3)).await;
    assert!(
        reply.as_ref().is_some_and(|r| r.get("connect").is_some()),
        "the reconnect was refused: {reply:?}, close {:?}",
        fresh.close
    );
    drop(stalled);
    server.stop().await;
}
