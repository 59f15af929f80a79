//! Lifecycle events end to end: a real server (in-process, or the `tether` binary for the
//! shutdown case) POSTs its events to a real HTTP receiver in the test process
//! (`support::webhook`), which checks every body's signature and records what arrives.
//! Also the user status API over HTTP and the client RPC.
//!
//! Every wait is bounded; `offline_grace` is 1 s, and the lifecycle worker looks for what
//! went down every 500 ms, so a user goes offline 1-1.5 s after its last connection left.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};
use support::webhook::{
    self, Receiver, SIGNATURE_HEADER, WEBHOOK_SECRET, kind, kinds_of_user, lines, of_kind,
};
use support::{Client, Config, Gateway as _, Node, config, http, start, user_token};
use tokio::time::Instant;

const GRACE: Duration = Duration::from_secs(1);
/// Longer than the grace plus the worker's 500 ms tick, with room for a loaded machine:
/// after this long with nobody back, an offline (vacated) must have been sent.
const PAST_GRACE: Duration = Duration::from_millis(2500);
/// How long an expected event may take to arrive.
const WITHIN: Duration = Duration::from_secs(10);

/// The test config with its events sent to `receiver`, signed with [`WEBHOOK_SECRET`].
fn events_config(receiver: &Receiver) -> Config {
    let mut cfg = config();
    cfg.webhook.endpoint = receiver.url();
    cfg.webhook.secret = WEBHOOK_SECRET.to_owned();
    cfg.webhook.offline_grace = GRACE;
    cfg.webhook.batch_max_delay = Duration::from_millis(10);
    cfg
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The client id of a connect reply.
fn client_id(reply: &Value) -> String {
    reply["connect"]["client"]
        .as_str()
        .unwrap_or_else(|| panic!("no client id in {reply}"))
        .to_owned()
}

/// What holds for every event: a unique id, a node, a time in `[since, now]`, and only the
/// fields its type has.
fn check_common(events: &[Value], since_ms: i64) {
    let now = unix_ms();
    let mut ids = HashSet::new();
    for event in events {
        let id = event["id"].as_str().unwrap_or_else(|| panic!("{event}"));
        assert!(
            ids.insert(id.to_owned()),
            "id {id} twice in\n{}",
            lines(events)
        );
        assert!(
            event["node"].as_str().is_some_and(|n| !n.is_empty()),
            "{event}"
        );
        let time = event["time"].as_i64().unwrap_or_else(|| panic!("{event}"));
        assert!(since_ms <= time && time <= now, "time of {event}");
        let has = |field: &str| event.get(field).is_some();
        match kind(event) {
            "user_online" | "user_offline" => {
                assert!(has("user") && !has("client") && !has("channel"), "{event}");
            }
            "connect" => {
                assert!(has("client") && !has("code") && !has("channel"), "{event}");
                assert_eq!(event["transport"], "websocket", "{event}");
                assert_eq!(event["protocol"], "json", "{event}");
            }
            "disconnect" => {
                assert!(has("client") && has("reason") && !has("channel"), "{event}");
                assert!(event["code"].is_u64() && event["reconnect"].is_boolean());
            }
            "channel_occupied" | "channel_vacated" => {
                assert!(has("channel") && !has("user") && !has("client"), "{event}");
            }
            "subscribe" | "unsubscribe" => {
                assert!(has("channel") && has("client"), "{event}");
            }
            other => panic!("unknown event type {other:?}: {event}"),
        }
    }
}

/// The one event of `kind` for `client`.
fn client_event<'a>(events: &'a [Value], kind_name: &str, client: &str) -> &'a Value {
    let found: Vec<&Value> = events
        .iter()
        .filter(|e| kind(e) == kind_name && e["client"] == client)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{kind_name} of {client} in\n{}",
        lines(events)
    );
    found[0]
}

/// Whether the user's events include its `user_offline`.
fn offline(user: &str) -> impl Fn(&Value) -> bool + '_ {
    move |e| kind(e) == "user_offline" && e["user"] == user
}

// === 1. user online/offline ===

#[tokio::test]
async fn two_devices_make_one_online_one_offline_and_a_reconnect_within_the_grace_is_silent() {
    let since = unix_ms();
    let receiver = Receiver::start().await;
    let server = start(events_config(&receiver)).await;
    let user = "t1-ann";
    let (phone, phone_reply) = Client::connected(&server, user).await;
    let (laptop, laptop_reply) = Client::connected(&server, user).await;
    let (phone_id, laptop_id) = (client_id(&phone_reply), client_id(&laptop_reply));
    receiver
        .wait_count(WITHIN, 2, |e| kind(e) == "connect" && e["user"] == user)
        .await;

    // Both leave; the user is back on a third connection within the grace.
    phone.close_normally().await;
    laptop.close_normally().await;
    let (tablet, tablet_reply) = Client::connected(&server, user).await;
    let tablet_id = client_id(&tablet_reply);
    receiver
        .wait_count(WITHIN, 3, |e| kind(e) == "connect" && e["user"] == user)
        .await;
    tokio::time::sleep(PAST_GRACE).await;
    let events = receiver.events();
    assert_eq!(
        kinds_of_user(&events, user),
        [
            "user_online",
            "connect",
            "connect",
            "disconnect",
            "disconnect",
            "connect"
        ],
        "no offline (nor a second online) for a reconnect within the grace:\n{}",
        lines(&events)
    );

    // The last one leaves: one offline, after the grace.
    tablet.close_normally().await;
    receiver.wait_count(WITHIN, 1, offline(user)).await;
    tokio::time::sleep(PAST_GRACE).await;
    let events = receiver.events();
    check_common(&events, since);
    assert_eq!(
        kinds_of_user(&events, user),
        [
            "user_online",
            "connect",
            "connect",
            "disconnect",
            "disconnect",
            "connect",
            "disconnect",
            "user_offline"
        ],
        "{}",
        lines(&events)
    );
    assert_eq!(
        events.len(),
        8,
        "only the user's events: {}",
        lines(&events)
    );
    let connects: Vec<&Value> = of_kind(&events, "connect");
    let connect_clients: Vec<&Value> = connects.iter().map(|e| &e["client"]).collect();
    assert_eq!(connect_clients, [&phone_id, &laptop_id, &tablet_id]);
    for id in [&phone_id, &laptop_id, &tablet_id] {
        let disconnect = client_event(&events, "disconnect", id);
        // The client closed with 1000: it chose to leave.
        assert_eq!(disconnect["code"], 1000, "{disconnect}");
        assert_eq!(disconnect["reconnect"], false, "{disconnect}");
        assert_eq!(disconnect["user"], user, "{disconnect}");
    }
    let last_disconnect = client_event(&events, "disconnect", &tablet_id)["time"]
        .as_i64()
        .unwrap();
    let offline_at = of_kind(&events, "user_offline")[0]["time"]
        .as_i64()
        .unwrap();
    assert!(
        offline_at - last_disconnect >= GRACE.as_millis() as i64,
        "offline {offline_at} came before the grace after {last_disconnect}"
    );
    assert!(receiver.batches().iter().all(|b| b.valid));
    server.stop().await;
}

/// The grace counts from the *last* connection leaving: a user who left, came back within
/// the grace and left again is offline only a grace after the second leave.
#[tokio::test]
async fn the_grace_counts_from_the_last_leave() {
    const LONG_GRACE: Duration = Duration::from_secs(2);
    let receiver = Receiver::start().await;
    let mut cfg = events_config(&receiver);
    cfg.webhook.offline_grace = LONG_GRACE;
    let server = start(cfg).await;
    let user = "t1-flaky";
    let first = Client::connect(&server, user).await;
    first.close_normally().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let second = Client::connect(&server, user).await;
    second.close_normally().await;
    let events = receiver.wait_count(WITHIN, 1, offline(user)).await;
    assert_eq!(
        kinds_of_user(&events, user),
        [
            "user_online",
            "connect",
            "disconnect",
            "connect",
            "disconnect",
            "user_offline"
        ],
        "{}",
        lines(&events)
    );
    let last_leave = of_kind(&events, "disconnect")[1]["time"].as_i64().unwrap();
    let offline_at = of_kind(&events, "user_offline")[0]["time"]
        .as_i64()
        .unwrap();
    assert!(
        offline_at - last_leave >= LONG_GRACE.as_millis() as i64,
        "offline {} ms after the last leave, the grace is {LONG_GRACE:?}",
        offline_at - last_leave
    );
    server.stop().await;
}

// === 2. a room ===

#[tokio::test]
async fn a_room_is_occupied_once_has_subscribe_and_unsubscribe_per_client_and_is_vacated_once() {
    let since = unix_ms();
    let receiver = Receiver::start().await;
    let server = start(events_config(&receiver)).await;
    // `chat` has join_leave; a channel without namespace does not.
    let room = "chat:t2-room";
    let plain = "t2-plain";
    let (mut ann, ann_reply) = Client::connected(&server, "t2-ann").await;
    let (mut bob, bob_reply) = Client::connected(&server, "t2-bob").await;
    let (ann_id, bob_id) = (client_id(&ann_reply), client_id(&bob_reply));
    ann.subscribe(json!({"channel": room})).await;
    bob.subscribe(json!({"channel": room})).await;
    ann.subscribe(json!({"channel": plain})).await;
    receiver
        .wait_count(WITHIN, 2, |e| {
            kind(e) == "subscribe" && e["channel"] == room
        })
        .await;

    // Ann leaves the room by command, Bob by closing his connection.
    let reply = ann.call(json!({"unsubscribe": {"channel": room}})).await;
    assert!(reply.get("unsubscribe").is_some(), "{reply}");
    bob.close_normally().await;
    receiver
        .wait_count(WITHIN, 1, |e| {
            kind(e) == "channel_vacated" && e["channel"] == room
        })
        .await;
    tokio::time::sleep(PAST_GRACE).await;
    let events = receiver.events();
    check_common(&events, since);
    let in_room: Vec<&Value> = events.iter().filter(|e| e["channel"] == room).collect();
    let summary: Vec<(&str, &Value)> = in_room.iter().map(|e| (kind(e), &e["client"])).collect();
    assert_eq!(
        summary,
        [
            ("channel_occupied", &Value::Null),
            ("subscribe", &json!(ann_id)),
            ("subscribe", &json!(bob_id)),
            ("unsubscribe", &json!(ann_id)),
            ("unsubscribe", &json!(bob_id)),
            ("channel_vacated", &Value::Null),
        ],
        "{}",
        lines(&events)
    );
    assert_eq!(in_room[1]["user"], "t2-ann");
    assert_eq!(in_room[2]["user"], "t2-bob");
    let left = in_room[4]["time"].as_i64().unwrap();
    let vacated = in_room[5]["time"].as_i64().unwrap();
    assert!(
        vacated - left >= GRACE.as_millis() as i64,
        "vacated at {vacated}, last left at {left}"
    );
    // No join/leave on the plain channel; it is occupied all the same (Ann is still in it).
    let plain_kinds: Vec<&str> = events
        .iter()
        .filter(|e| e["channel"] == plain)
        .map(kind)
        .collect();
    assert_eq!(plain_kinds, ["channel_occupied"], "{}", lines(&events));
    drop(ann);
    server.stop().await;
}

// === 3. disconnect codes ===

#[tokio::test]
async fn a_missing_pong_is_reported_as_3012_with_reconnect() {
    let receiver = Receiver::start().await;
    let mut cfg = events_config(&receiver);
    cfg.client.ping_interval = Duration::from_secs(2);
    cfg.client.pong_timeout = Duration::from_secs(1);
    let server = start(cfg).await;
    let user = "t3-silent";
    let (mut client, reply) = Client::connected(&server, user).await;
    let id = client_id(&reply);
    // `closed` does not answer pings.
    let frame = client
        .closed(Duration::from_secs(6))
        .await
        .expect("close frame");
    assert_eq!(u16::from(frame.code), 3012);
    let events = receiver.wait_count(WITHIN, 1, offline(user)).await;
    let disconnect = client_event(&events, "disconnect", &id);
    assert_eq!(disconnect["code"], 3012, "{disconnect}");
    assert_eq!(disconnect["reconnect"], true, "{disconnect}");
    assert!(
        disconnect["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{disconnect}"
    );
    assert_eq!(
        kinds_of_user(&events, user),
        ["user_online", "connect", "disconnect", "user_offline"]
    );
    server.stop().await;
}

#[tokio::test]
async fn a_slow_consumer_is_reported_as_3008_with_reconnect() {
    let receiver = Receiver::start().await;
    let mut cfg = events_config(&receiver);
    cfg.client.queue_max_size = 64 * 1024;
    let server = start(cfg).await;
    let user = "t3-slow";
    let channel = "t3-flood";
    let (stalled, conn) = server.stalled_subscriber(user, channel).await;
    let pad = "p".repeat(16 * 1024);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    while !conn.is_closing() {
        assert!(Instant::now() < deadline, "the reader was never cut off");
        let (status, _) = server
            .api(
                "publish",
                json!({"channel": channel, "data": {"i": i, "pad": pad}}),
            )
            .await;
        assert_eq!(status, 200);
        i += 1;
    }
    let events = receiver
        .wait_count(WITHIN, 1, |e| kind(e) == "disconnect" && e["user"] == user)
        .await;
    let disconnect = of_kind(&events, "disconnect")[0];
    assert_eq!(disconnect["code"], 3008, "{disconnect}");
    assert_eq!(disconnect["reconnect"], true, "{disconnect}");
    let events = receiver.wait_count(WITHIN, 1, offline(user)).await;
    assert_eq!(
        kinds_of_user(&events, user),
        ["user_online", "connect", "disconnect", "user_offline"]
    );
    drop(stalled);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_reports_3001_and_every_offline_in_its_grace_before_the_process_exits_0() {
    let since = unix_ms();
    let receiver = Receiver::start().await;
    // A grace far longer than the test: the offlines can only come from the shutdown.
    let node = Node::start_with(json!({
        "webhook": {
            "endpoint": receiver.url(),
            "secret": WEBHOOK_SECRET,
            "offline_grace": "60s",
            "batch_max_delay": "10ms",
        },
        "shutdown": { "drain_window": "200ms", "timeout": "10s" },
    }))
    .await;
    let users = ["t3-term-ann", "t3-term-bob"];
    let mut readers = Vec::new();
    let mut ids = Vec::new();
    for user in [users[0], users[0], users[1]] {
        let (mut client, reply) = Client::connected(&node, user).await;
        ids.push(client_id(&reply));
        readers.push(tokio::spawn(async move {
            client.close_code(Duration::from_secs(10)).await
        }));
    }
    receiver
        .wait_count(WITHIN, 3, |e| kind(e) == "connect")
        .await;

    let status = node.terminate().await;
    assert!(status.success(), "exit status {status:?}");
    // Taken right after the exit: what the node delivered before it went.
    let events = receiver.events();
    for reader in readers {
        assert_eq!(reader.await.unwrap(), Some(3001));
    }
    check_common(&events, since);
    for id in &ids {
        let disconnect = client_event(&events, "disconnect", id);
        assert_eq!(disconnect["code"], 3001, "{disconnect}");
        assert_eq!(disconnect["reconnect"], true, "{disconnect}");
    }
    assert_eq!(
        kinds_of_user(&events, users[0]),
        [
            "user_online",
            "connect",
            "connect",
            "disconnect",
            "disconnect",
            "user_offline"
        ],
        "{}",
        lines(&events)
    );
    assert_eq!(
        kinds_of_user(&events, users[1]),
        ["user_online", "connect", "disconnect", "user_offline"],
        "{}",
        lines(&events)
    );
    assert_eq!(events.len(), 10, "{}", lines(&events));
    assert!(receiver.batches().iter().all(|b| b.valid));
}

// === 4. signature ===

#[test]
fn the_receiver_detects_a_tampered_body_a_wrong_secret_and_a_missing_signature() {
    let body = br#"{"events":[{"id":"n-1","type":"connect"}]}"#;
    let header = webhook::sign(b"secret", body);
    assert!(webhook::verify(b"secret", body, Some(&header)));
    let tampered = br#"{"events":[{"id":"n-2","type":"connect"}]}"#;
    assert!(!webhook::verify(b"secret", tampered, Some(&header)));
    assert!(!webhook::verify(b"other", body, Some(&header)));
    assert!(!webhook::verify(b"secret", body, None));
    let sha1 = header.replace("sha256=", "sha1=");
    assert!(!webhook::verify(b"secret", body, Some(&sha1)));
    assert!(!webhook::verify(
        b"secret",
        body,
        Some(&header[..header.len() - 2])
    ));
    // RFC 4231, test case 2: the receiver's HMAC is the standard one.
    assert_eq!(
        webhook::sign(b"Jefe", b"what do ya want for nothing?"),
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

#[tokio::test]
async fn every_body_is_signed_and_a_receiver_with_another_secret_sees_it_fail() {
    let right = Receiver::start().await;
    let wrong = Receiver::with_secret("not-the-webhook-secret").await;
    let server = start(events_config(&right)).await;
    let other = start(events_config(&wrong)).await;
    for (gateway, receiver) in [(&server, &right), (&other, &wrong)] {
        let client = Client::connect(gateway, "t4-ann").await;
        client.close_normally().await;
        receiver.wait_count(WITHIN, 1, offline("t4-ann")).await;
    }
    for receiver in [&right, &wrong] {
        let batches = receiver.batches();
        assert!(!batches.is_empty());
        for batch in &batches {
            let signature = batch.signature.as_deref().expect("signed");
            assert_eq!(
                signature,
                webhook::sign(WEBHOOK_SECRET.as_bytes(), &batch.body),
                "{SIGNATURE_HEADER} of {:?}",
                batch.body
            );
            let mut tampered = batch.body.to_vec();
            tampered[2] ^= 1;
            assert!(!webhook::verify(
                WEBHOOK_SECRET.as_bytes(),
                &tampered,
                Some(signature)
            ));
        }
        assert_eq!(receiver.events().len(), 4);
    }
    assert!(right.batches().iter().all(|b| b.valid));
    assert!(
        wrong.recorded().iter().all(|r| !r.valid),
        "the receiver with another secret must reject every body"
    );
    server.stop().await;
    other.stop().await;
}

// === 5. the receiver down, then back ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_during_a_30s_outage_are_all_delivered_in_order_after_it() {
    const OUTAGE: Duration = Duration::from_secs(30);
    let since = unix_ms();
    let receiver = Receiver::start().await;
    let server = start(events_config(&receiver)).await;
    // A first delivery, so the node holds a connection to the receiver that the outage
    // cuts.
    // It stays connected, answering pings, all along.
    let mut warm = Client::connect(&server, "t5-warm").await;
    receiver
        .wait_count(WITHIN, 1, |e| kind(e) == "connect")
        .await;
    let warm =
        tokio::spawn(
            async move { while warm.next_within(Duration::from_secs(120)).await.is_some() {} },
        );
    let before = receiver.events().len();
    receiver.stop().await;
    let down_at = Instant::now();

    // During the outage, each user comes, goes, is offline, comes again and goes again.
    let users: Vec<String> = (0..4).map(|i| format!("t5-user-{i}")).collect();
    let mut tasks = Vec::new();
    for user in users.clone() {
        let url = server.ws_url();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..2 {
                let mut client = Client::open_url(&url).await;
                let reply = client.connect_with(&user_token(&user)).await;
                ids.push(client_id(&reply));
                client.close_normally().await;
                tokio::time::sleep(PAST_GRACE).await;
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap());
    }
    let failures = http::metric(server.addr, "tether_webhook_failures_total").await;
    assert!(failures > 0.0, "failures during the outage: {failures}");
    tokio::time::sleep_until(down_at + OUTAGE).await;
    assert_eq!(receiver.events().len(), before, "delivered while down");
    receiver.resume();

    let expected = [
        "user_online",
        "connect",
        "disconnect",
        "user_offline",
        "user_online",
        "connect",
        "disconnect",
        "user_offline",
    ];
    // The backoff is at most 5 s.
    receiver
        .wait_for(WITHIN, |events| {
            users
                .iter()
                .all(|u| kinds_of_user(events, u).len() >= expected.len())
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = receiver.events();
    check_common(&events, since);
    for (user, ids) in users.iter().zip(&ids) {
        assert_eq!(
            kinds_of_user(&events, user),
            expected,
            "{user}:\n{}",
            lines(&events)
        );
        let clients: Vec<&Value> = events
            .iter()
            .filter(|e| e["user"] == user.as_str() && e.get("client").is_some())
            .map(|e| &e["client"])
            .collect();
        assert_eq!(clients, [&ids[0], &ids[0], &ids[1], &ids[1]], "{user}");
    }
    assert_eq!(
        events.len(),
        before + users.len() * expected.len(),
        "{}",
        lines(&events)
    );
    assert!(receiver.batches().iter().all(|b| b.valid));
    let figure = |name| http::metric(server.addr, name);
    assert_eq!(
        figure("tether_webhook_delivered_total").await,
        events.len() as f64
    );
    assert_eq!(figure("tether_webhook_dropped_total").await, 0.0);
    assert_eq!(figure("tether_webhook_buffer_events").await, 0.0);
    warm.abort();
    server.stop().await;
}

// === 6. buffer overflow ===

#[tokio::test]
async fn a_full_buffer_drops_and_counts_and_delivery_resumes_when_the_receiver_is_back() {
    let receiver = Receiver::start().await;
    receiver.stop().await;
    let mut cfg = events_config(&receiver);
    cfg.webhook.buffer_size = 5;
    let server = start(cfg).await;
    // 6 users: 12 events (online and connect each) for a buffer of 5.
    let mut clients = Vec::new();
    for i in 0..6 {
        clients.push(Client::connect(&server, &format!("t6-user-{i}")).await);
    }
    let deadline = Instant::now() + WITHIN;
    let mut dropped = 0.0;
    while dropped < 7.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        dropped = http::metric(server.addr, "tether_webhook_dropped_total").await;
    }
    assert_eq!(dropped, 7.0, "12 events, 5 kept");
    assert_eq!(
        http::metric(server.addr, "tether_webhook_buffer_events").await,
        5.0
    );

    receiver.resume();
    receiver.wait_count(WITHIN, 5, |_| true).await;
    let late = Client::connect(&server, "t6-late").await;
    receiver
        .wait_count(WITHIN, 1, |e| {
            kind(e) == "connect" && e["user"] == "t6-late"
        })
        .await;
    // Nothing else comes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = receiver.events();
    let summary: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (kind(e), e["user"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(
        summary,
        [
            // The first five, kept in order.
            ("user_online", "t6-user-0"),
            ("connect", "t6-user-0"),
            ("user_online", "t6-user-1"),
            ("connect", "t6-user-1"),
            ("user_online", "t6-user-2"),
            // Delivery resumed.
            ("user_online", "t6-late"),
            ("connect", "t6-late"),
        ],
        "{}",
        lines(&events)
    );
    assert_eq!(
        http::metric(server.addr, "tether_webhook_dropped_total").await,
        7.0
    );
    drop((clients, late));
    server.stop().await;
}

// === 7. the events filter ===

#[tokio::test]
async fn only_the_listed_event_types_are_delivered() {
    let receiver = Receiver::start().await;
    let mut cfg = events_config(&receiver);
    cfg.webhook.events = vec!["user_online".to_owned(), "disconnect".to_owned()];
    let server = start(cfg).await;
    let user = "t7-ann";
    let mut client = Client::connect(&server, user).await;
    client.subscribe(json!({"channel": "chat:t7"})).await;
    client
        .call(json!({"unsubscribe": {"channel": "chat:t7"}}))
        .await;
    client.close_normally().await;
    receiver
        .wait_count(WITHIN, 1, |e| kind(e) == "disconnect")
        .await;
    tokio::time::sleep(PAST_GRACE).await;
    let events = receiver.events();
    let kinds: Vec<&str> = events.iter().map(kind).collect();
    assert_eq!(kinds, ["user_online", "disconnect"], "{}", lines(&events));
    assert!(events.iter().all(|e| e["user"] == user));
    server.stop().await;
}

// === 8. anonymous connections ===

#[tokio::test]
async fn an_anonymous_connection_has_connect_and_disconnect_without_user_and_no_online() {
    let since = unix_ms();
    let receiver = Receiver::start().await;
    let mut cfg = events_config(&receiver);
    cfg.client.allow_anonymous_connect_without_token = true;
    let server = start(cfg).await;
    let mut anonymous = Client::open(&server).await;
    let reply = anonymous.call(json!({"connect": {}})).await;
    let anonymous_id = client_id(&reply);
    anonymous.close_normally().await;
    // A named user after it: once its offline arrived, the anonymous connection's grace
    // is long over too.
    let named = Client::connect(&server, "t8-named").await;
    named.close_normally().await;
    receiver.wait_count(WITHIN, 1, offline("t8-named")).await;
    let events = receiver.events();
    check_common(&events, since);
    let summary: Vec<(&str, Option<&Value>)> =
        events.iter().map(|e| (kind(e), e.get("user"))).collect();
    let named_user = json!("t8-named");
    assert_eq!(
        summary,
        [
            ("connect", None),
            ("disconnect", None),
            ("user_online", Some(&named_user)),
            ("connect", Some(&named_user)),
            ("disconnect", Some(&named_user)),
            ("user_offline", Some(&named_user)),
        ],
        "{}",
        lines(&events)
    );
    assert_eq!(events[0]["client"], anonymous_id);
    assert_eq!(events[1]["code"], 1000);
    server.stop().await;
}

// === 9. user status ===

/// `get_user_status` of `users` through the API: the statuses in order.
async fn statuses(server: &support::TestServer, users: &[&str]) -> Vec<Value> {
    let (status, body) = server
        .api("get_user_status", json!({ "users": users }))
        .await;
    assert_eq!(status, 200, "{body}");
    body["result"]["statuses"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .clone()
}

fn unix_s() -> i64 {
    unix_ms() / 1000
}

/// Whether `at` is a Unix time in seconds within `[since, now]`.
fn recent(at: &Value, since: i64) -> bool {
    at.as_i64().is_some_and(|at| since <= at && at <= unix_s())
}

fn status_config() -> Config {
    let mut cfg = config();
    cfg.user_status.enabled = true;
    cfg
}

#[tokio::test]
async fn user_status_online_from_connections_active_from_the_api_and_the_client_rpc() {
    let since = unix_s();
    let server = start(status_config()).await;
    let (ann, bob) = ("t9-ann", "t9-bob");
    assert_eq!(
        statuses(&server, &[ann, bob]).await,
        [json!({"user": ann}), json!({"user": bob})],
        "nothing known: only the user"
    );

    // Ann connects: `online` is written (off the hot path).
    let mut client = Client::connect(&server, ann).await;
    let deadline = Instant::now() + WITHIN;
    let status = loop {
        let status = statuses(&server, &[ann]).await.remove(0);
        if status.get("online").is_some() || Instant::now() >= deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(recent(&status["online"], since), "{status}");
    assert!(status.get("active").is_none(), "{status}");

    // The built-in RPC marks her active.
    let reply = client
        .call(json!({"rpc": {"method": "update_user_status", "data": {}}}))
        .await;
    assert!(reply.get("rpc").is_some(), "{reply}");
    let status = statuses(&server, &[ann]).await.remove(0);
    assert!(recent(&status["active"], since), "{status}");
    assert!(recent(&status["online"], since), "{status}");

    // The API marks Bob (never connected) active; deleting forgets him.
    let (code, body) = server
        .api("update_user_status", json!({"users": [bob]}))
        .await;
    assert_eq!((code, &body), (200, &json!({"result": {}})));
    let status = statuses(&server, &[bob]).await.remove(0);
    assert!(recent(&status["active"], since), "{status}");
    assert!(status.get("online").is_none(), "{status}");
    let (code, body) = server
        .api("delete_user_status", json!({"users": [bob]}))
        .await;
    assert_eq!((code, &body), (200, &json!({"result": {}})));
    assert_eq!(statuses(&server, &[bob]).await, [json!({"user": bob})]);
    // Ann's status is untouched.
    let status = statuses(&server, &[ann]).await.remove(0);
    assert!(status.get("active").is_some() && status.get("online").is_some());

    // No users: a bad request.
    let (_, body) = server.api("update_user_status", json!({"users": []})).await;
    assert_eq!(body["error"]["code"], 107, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn user_status_methods_work_in_a_batch_and_answer_108_there_when_disabled() {
    let since = unix_s();
    let server = start(status_config()).await;
    let user = "t9-batch";
    let users = json!({"users": [user]});
    let (code, body) = server
        .api(
            "batch",
            json!({"commands": [
                {"update_user_status": users},
                {"get_user_status": users},
                {"delete_user_status": users},
                {"get_user_status": users},
            ]}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let replies = body["replies"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(replies.len(), 4, "{body}");
    assert_eq!(replies[0], json!({"update_user_status": {}}), "{body}");
    let active = &replies[1]["get_user_status"]["statuses"][0]["active"];
    assert!(recent(active, since), "{body}");
    assert_eq!(replies[2], json!({"delete_user_status": {}}), "{body}");
    assert_eq!(
        replies[3],
        json!({"get_user_status": {"statuses": [{"user": user}]}}),
        "{body}"
    );
    server.stop().await;

    let server = start(config()).await;
    let (code, body) = server
        .api(
            "batch",
            json!({"commands": [
                {"update_user_status": users},
                {"get_user_status": users},
                {"delete_user_status": users},
            ]}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    for i in 0..3 {
        assert_eq!(body["replies"][i]["error"]["code"], 108, "{body}");
    }
    server.stop().await;
}

#[tokio::test]
async fn user_status_disabled_answers_108_to_the_api_and_the_rpc() {
    let server = start(config()).await;
    let users = json!({"users": ["t9-off"]});
    for method in [
        "update_user_status",
        "get_user_status",
        "delete_user_status",
    ] {
        let (code, body) = server.api(method, &users).await;
        assert_eq!(code, 200, "{method}: {body}");
        assert_eq!(body["error"]["code"], 108, "{method}: {body}");
    }
    let mut client = Client::connect(&server, "t9-off").await;
    let reply = client
        .call(json!({"rpc": {"method": "update_user_status", "data": {}}}))
        .await;
    assert_eq!(reply["error"]["code"], 108, "{reply}");
    // The key is checked first, as for every method.
    let (code, _) = server
        .api_with_key("get_user_status", &users, Some("wrong"))
        .await;
    assert_eq!(code, 401);
    server.stop().await;
}

// === the receiver answering 503 ===

#[tokio::test]
async fn a_batch_answered_503_is_sent_again_whole_until_it_is_taken() {
    let receiver = Receiver::start().await;
    receiver.answer(503);
    let server = start(events_config(&receiver)).await;
    let user = "t11-ann";
    let client = Client::connect(&server, user).await;
    let deadline = Instant::now() + WITHIN;
    while receiver.refused() < 3 {
        assert!(Instant::now() < deadline, "not retried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(receiver.events().is_empty());
    receiver.answer(200);
    let events = receiver
        .wait_count(WITHIN, 1, |e| kind(e) == "connect")
        .await;
    assert_eq!(kinds_of_user(&events, user), ["user_online", "connect"]);
    let batches = receiver.batches();
    assert_eq!(batches.len(), 1, "the same batch, taken once");
    assert!(batches[0].valid);
    let failures = http::metric(server.addr, "tether_webhook_failures_total").await;
    assert!(failures >= receiver.refused() as f64, "{failures}");
    assert_eq!(
        http::metric(server.addr, "tether_webhook_delivered_total").await,
        2.0
    );
    drop(client);
    server.stop().await;
}

/// A full buffer loses events, but never the transitions behind them: a burst of 100 users
/// leaving at once overflows the worker's queue (only user_online/offline are delivered, so
/// the queue holds transitions alone), and afterwards every user coming back is online
/// again. (This found a bug: the queue dropped the transitions themselves, the store then
/// believed users connected for good — no offline, and no online when they came back.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_overflow_loses_events_but_not_the_users_state() {
    let receiver = Receiver::start().await;
    let mut cfg = events_config(&receiver);
    cfg.webhook.buffer_size = 5;
    cfg.webhook.events = vec!["user_online".to_owned(), "user_offline".to_owned()];
    let server = start(cfg).await;
    let users: Vec<String> = (0..100).map(|i| format!("t6-burst-{i}")).collect();
    // All connect, then all leave, at once.
    let url = server.ws_url();
    let connects = users.iter().map(|user| {
        let (url, token) = (url.clone(), user_token(user));
        tokio::spawn(async move {
            let mut client = Client::open_url(&url).await;
            client.connect_with(&token).await;
            client
        })
    });
    let mut clients = Vec::new();
    for task in connects.collect::<Vec<_>>() {
        clients.push(task.await.unwrap());
    }
    let leaves: Vec<_> = clients
        .into_iter()
        .map(|client| tokio::spawn(client.close_normally()))
        .collect();
    for task in leaves {
        task.await.unwrap();
    }
    tokio::time::sleep(PAST_GRACE).await;
    let dropped = http::metric(server.addr, "tether_webhook_dropped_total").await;
    assert!(dropped > 0.0, "the burst did not overflow the buffer");

    // Every user is gone. Each comes back alone (and stays): each is online again (within 1 s, when the buffer is empty).
    let mut clients = Vec::new();
    let mut not_online = Vec::new();
    for user in &users {
        let before = kinds_of_user(&receiver.events(), user).len();
        clients.push(Client::connect(&server, user).await);
        let deadline = Instant::now() + Duration::from_secs(1);
        while kinds_of_user(&receiver.events(), user).len() == before {
            if Instant::now() >= deadline {
                not_online.push(user.clone());
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert!(
        not_online.is_empty(),
        "{} of {} users got no user_online when they came back ({dropped} dropped): {not_online:?}",
        not_online.len(),
        users.len()
    );
    drop(clients);
    server.stop().await;
}
