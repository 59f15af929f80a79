//! The client against a real tether (in-process) through a TCP fault proxy, over both
//! `ws://` and `tcp://`: the same client code and the same assertions for each transport.
//!
//! "Server restart with history kept" is done by cutting every proxied link (RST) and
//! refusing new ones for a while, with the tether node itself still running: the embedded
//! memory engine keeps history only while the process lives, and history surviving the
//! outage is the point. A real node restart (history lost) is covered too, and must report
//! `recovered: false`.

#![allow(clippy::unwrap_used, reason = "tests")]

mod support;

use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use support::{
    FaultProxy, Mode, PING, PONG, TestServer, Transport, eventually, token, wait_client, wait_sub,
};
use tether_client::{
    Backoff, Client, ClientConfig, ClientEvent, HistoryOptions, State, SubscriptionConfig,
    SubscriptionEvent, SubscriptionState, TokenSource, codes,
};
use tokio::time::Instant;

/// Slack on top of the server's ping interval before the client declares the link dead.
const SLACK: Duration = Duration::from_secs(1);
/// Generous bound for "soon" on a loaded 2-core machine.
const SOON: Duration = Duration::from_secs(15);

fn client_config(user: &str) -> ClientConfig {
    ClientConfig {
        token: Some(token(user)),
        backoff: Backoff {
            min: Duration::from_millis(50),
            max: Duration::from_millis(500),
            factor: 2.0,
        },
        call_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        max_server_ping_delay: SLACK,
        rng_seed: Some(1),
        ..ClientConfig::default()
    }
}

/// Runs one scenario over WebSocket and over raw TCP.
macro_rules! both_transports {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ws() {
                super::$name(super::Transport::Ws).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tcp() {
                super::$name(super::Transport::Tcp).await;
            }
        }
    )*};
}

both_transports!(
    outage_with_history_kept_delivers_every_publication_once_in_order,
    restarted_node_reports_not_recovered,
    restarted_node_on_redis_keeps_history_and_recovers_everything,
    blackholed_link_is_noticed_and_the_dead_session_evicted,
    reconnect_delays_follow_seeded_backoff_with_full_jitter,
    terminal_code_stops_reconnecting,
    calls_wait_while_connecting_in_a_bounded_buffer,
    token_callback_replaces_an_expired_token,
    calls_round_trip,
);

async fn outage_with_history_kept_delivers_every_publication_once_in_order(transport: Transport) {
    const TOTAL: u32 = 80;
    let server = TestServer::start().await;
    let proxy = FaultProxy::start(server.upstream(transport)).await;
    let url = TestServer::url(transport, proxy.addr);
    let (_client, _events, _sub, mut sub_events) = subscribed_reader(&url, "chat:outage").await;

    // The publisher talks to the server directly, so publications continue during outages.
    let publishing = publish_numbers(
        &TestServer::url(transport, server.upstream(transport)),
        "chat:outage",
        TOTAL,
    );

    // Outages: a reset of every link, then a longer one where reconnects are refused.
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.reset_all();
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.set_mode(Mode::Refuse);
    proxy.reset_all();
    tokio::time::sleep(Duration::from_millis(600)).await;
    proxy.set_mode(Mode::Forward);

    let recoveries = receive_all_once_in_order(&mut sub_events, TOTAL).await;
    publishing.await.unwrap();
    assert!(recoveries >= 2, "two outages, {recoveries} recoveries");
    assert!(
        proxy.accepted() >= 3,
        "the client reconnected through the proxy"
    );
    // Nothing more arrives late (no duplicates after the fact).
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Some(event) = sub_events.try_next() {
        assert!(
            !matches!(event, SubscriptionEvent::Publication(_)),
            "unexpected extra publication {event:?}"
        );
    }
    server.stop().await;
}

async fn restarted_node_reports_not_recovered(transport: Transport) {
    let server = TestServer::start().await;
    let (http, tcp) = (server.http, server.tcp);
    let url = TestServer::url(transport, server.upstream(transport));
    let (client, mut events, _sub, mut sub_events) = subscribed_reader(&url, "chat:restart").await;
    client.publish("chat:restart", "1").await.unwrap();
    wait_sub(&mut sub_events, SOON, |e| {
        matches!(e, SubscriptionEvent::Publication(_))
    })
    .await;

    // The node shuts down (3001: reconnect) and a fresh one starts on the same ports: the
    // memory engine's history and epoch are gone.
    server.stop().await;
    let event = wait_client(
        &mut events,
        SOON,
        |e| matches!(e, ClientEvent::Connecting { code, .. } if *code != codes::CONNECT_CALLED),
    )
    .await;
    if transport == Transport::Tcp {
        // Over TCP the shutdown code arrives in a disconnect push.
        assert!(
            matches!(event, ClientEvent::Connecting { code: 3001, .. }),
            "{event:?}"
        );
    }
    let mut config = support::config();
    config.http_server.port = http.port();
    config.tcp.port = tcp.port();
    let server = TestServer::start_with(config).await;
    let event = wait_sub(&mut sub_events, SOON, |e| {
        matches!(e, SubscriptionEvent::Subscribed { .. })
    })
    .await;
    let SubscriptionEvent::Subscribed {
        was_recovering,
        recovered,
        ..
    } = event
    else {
        unreachable!()
    };
    assert!(was_recovering);
    assert!(!recovered, "a new epoch can never be reported as recovered");
    server.stop().await;
}

async fn blackholed_link_is_noticed_and_the_dead_session_evicted(transport: Transport) {
    let server = TestServer::start().await;
    let proxy = FaultProxy::start(server.upstream(transport)).await;
    let url = TestServer::url(transport, proxy.addr);
    let (client, mut events) = Client::new(&url, client_config("u")).unwrap();
    client.connect();
    wait_client(&mut events, SOON, |e| {
        matches!(e, ClientEvent::Connected { .. })
    })
    .await;
    assert_eq!(server.num_clients(), 1);

    proxy.set_mode(Mode::Blackhole);
    let start = Instant::now();
    let event = wait_client(&mut events, SOON, |e| {
        matches!(e, ClientEvent::Connecting { .. })
    })
    .await;
    let noticed = start.elapsed();
    assert!(
        matches!(
            event,
            ClientEvent::Connecting {
                code: codes::NO_PING,
                ..
            }
        ),
        "{event:?}"
    );
    // The last traffic was at most one ping interval before the blackhole began.
    assert!(noticed >= SLACK, "noticed too early: {noticed:?}");
    assert!(
        noticed <= PING + SLACK + Duration::from_secs(3),
        "noticed late: {noticed:?}"
    );

    // The server sends a ping the client never sees, and evicts after the pong timeout
    // (sweeper granularity 1 s).
    eventually(
        PING + PONG + Duration::from_secs(5),
        "server eviction",
        || server.num_clients() == 0,
    )
    .await;
    assert!(
        start.elapsed() <= PING + PONG + Duration::from_secs(5),
        "evicted late: {:?}",
        start.elapsed()
    );

    proxy.set_mode(Mode::Forward);
    proxy.reset_all();
    wait_client(&mut events, SOON, |e| {
        matches!(e, ClientEvent::Connected { .. })
    })
    .await;
    assert_eq!(client.state(), State::Connected);
    server.stop().await;
}

async fn reconnect_delays_follow_seeded_backoff_with_full_jitter(transport: Transport) {
    let server = TestServer::start().await;
    let proxy = FaultProxy::start(server.upstream(transport)).await;
    proxy.set_mode(Mode::Refuse);
    let backoff = Backoff {
        min: Duration::from_millis(20),
        max: Duration::from_millis(160),
        factor: 2.0,
    };
    let config = ClientConfig {
        backoff,
        rng_seed: Some(7),
        ..client_config("u")
    };
    let (client, mut events) =
        Client::new(&TestServer::url(transport, proxy.addr), config).unwrap();
    client.connect();
    let mut delays = Vec::new();
    while delays.len() < 12 {
        if let ClientEvent::ReconnectScheduled { attempt, delay } =
            wait_client(&mut events, SOON, |e| {
                matches!(e, ClientEvent::ReconnectScheduled { .. })
            })
            .await
        {
            assert_eq!(attempt as usize, delays.len(), "attempts count up");
            delays.push(delay);
        }
    }
    // Bounds: each delay within [0, ceiling(attempt)], the ceiling doubling up to max.
    for (attempt, delay) in delays.iter().enumerate() {
        let ceiling = backoff.ceiling(attempt as u32);
        assert!(
            *delay <= ceiling,
            "attempt {attempt}: {delay:?} > {ceiling:?}"
        );
    }
    // Spread: full jitter, not a fixed schedule.
    let capped = &delays[3..];
    let min = capped.iter().min().unwrap();
    let max = capped.iter().max().unwrap();
    assert!(
        *max - *min >= Duration::from_millis(40),
        "no spread: {delays:?}"
    );
    // Seeded: exactly the pure function's draws from the same seed.
    let mut rng = StdRng::seed_from_u64(7);
    let expected: Vec<Duration> = (0..12).map(|n| backoff.delay(n, &mut rng)).collect();
    assert_eq!(delays, expected);
    assert!(proxy.accepted() >= 10, "attempts reached the network");

    // Once the network is back the client connects and the attempt count starts over.
    proxy.set_mode(Mode::Forward);
    wait_client(&mut events, SOON, |e| {
        matches!(e, ClientEvent::Connected { .. })
    })
    .await;
    proxy.reset_all();
    let event = wait_client(&mut events, SOON, |e| {
        matches!(e, ClientEvent::ReconnectScheduled { .. })
    })
    .await;
    assert!(
        matches!(event, ClientEvent::ReconnectScheduled { attempt: 0, .. }),
        "{event:?}"
    );
    server.stop().await;
}

async fn terminal_code_stops_reconnecting(transport: Transport) {
    let server = TestServer::start().await;
    let proxy = FaultProxy::start(server.upstream(transport)).await;
    let config = ClientConfig {
        token: Some("not.a.valid.jwt".to_owned()),
        ..client_config("u")
    };
    let (client, mut events) =
        Client::new(&TestServer::url(transport, proxy.addr), config).unwrap();
    client.connect();
    let event = wait_client(&mut events, SOON, |e| {
        matches!(e, ClientEvent::Disconnected { .. })
    })
    .await;
    assert!(
        matches!(event, ClientEvent::Disconnected { code: 3500, .. }),
        "{event:?}"
    );
    assert_eq!(client.state(), State::Disconnected);
    // With a 50 ms backoff, a client that kept trying would have made many attempts.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(proxy.accepted(), 1, "no reconnect after a terminal code");
    let error = client.publish("chat:x", "1").await.unwrap_err();
    assert!(error.is_closed(), "{error}");
    server.stop().await;
}

async fn calls_wait_while_connecting_in_a_bounded_buffer(transport: Transport) {
    let server = TestServer::start().await;
    let proxy = FaultProxy::start(server.upstream(transport)).await;
    proxy.set_mode(Mode::Refuse);
    let config = ClientConfig {
        max_pending_calls: 2,
        ..client_config("u")
    };
    let (client, _events) = Client::new(&TestServer::url(transport, proxy.addr), config).unwrap();
    let (sub, mut sub_events) = client
        .new_subscription("chat:buffer", SubscriptionConfig::default())
        .unwrap();
    sub.subscribe();

    // Before connect() the client is closed.
    assert!(
        client
            .publish("chat:buffer", "0")
            .await
            .unwrap_err()
            .is_closed()
    );
    client.connect();
    // A short per-call timeout runs out while connecting.
    let error = client
        .with_timeout(Duration::from_millis(200))
        .publish("chat:buffer", "0")
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error}");

    // join! polls in order, so "1" enters the buffer before "2".
    let buffered = tokio::spawn({
        let client = client.clone();
        async move {
            tokio::join!(
                client.publish("chat:buffer", "1"),
                client.publish("chat:buffer", "2")
            )
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let error = client.publish("chat:buffer", "3").await.unwrap_err();
    assert!(error.is_buffer_full(), "{error}");
    assert_eq!(client.state(), State::Connecting);

    proxy.set_mode(Mode::Forward);
    let (first, second) = buffered.await.unwrap();
    first.expect("buffered call goes out after connect");
    second.expect("buffered call goes out after connect");
    let mut got = Vec::new();
    while got.len() < 2 {
        if let SubscriptionEvent::Publication(p) = wait_sub(&mut sub_events, SOON, |e| {
            matches!(e, SubscriptionEvent::Publication(_))
        })
        .await
        {
            got.push(p.data);
        }
    }
    assert_eq!(got, ["1", "2"], "buffered calls keep their order");
    assert_eq!(sub.state(), SubscriptionState::Subscribed);

    client.disconnect();
    let error = client.publish("chat:buffer", "4").await.unwrap_err();
    assert!(error.is_closed(), "{error}");
    server.stop().await;
}

async fn token_callback_replaces_an_expired_token(transport: Transport) {
    let server = TestServer::start().await;
    let fetched = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = fetched.clone();
    let config = ClientConfig {
        token: Some(support::token_with(
            serde_json::json!({"sub": "u", "exp": 1000}),
        )),
        token_source: Some(TokenSource::new(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Ok(token("u")) }
        })),
        ..client_config("u")
    };
    let url = TestServer::url(transport, server.upstream(transport));
    let (client, mut events) = Client::new(&url, config).unwrap();
    client.connect();
    wait_client(&mut events, SOON, |e| {
        matches!(e, ClientEvent::Connected { .. })
    })
    .await;
    assert_eq!(fetched.load(std::sync::atomic::Ordering::SeqCst), 1);
    server.stop().await;
}

async fn calls_round_trip(transport: Transport) {
    let server = TestServer::start().await;
    let url = TestServer::url(transport, server.upstream(transport));
    let (client, _events) = Client::new(&url, client_config("u")).unwrap();
    let (sub, mut sub_events) = client
        .new_subscription("chat:calls", SubscriptionConfig::default())
        .unwrap();
    sub.subscribe();
    client.connect();
    wait_sub(&mut sub_events, SOON, |e| {
        matches!(e, SubscriptionEvent::Subscribed { .. })
    })
    .await;
    sub.publish("1").await.unwrap();
    sub.publish("2").await.unwrap();
    let history = sub
        .history(HistoryOptions {
            limit: 10,
            ..HistoryOptions::default()
        })
        .await
        .unwrap();
    assert_eq!(history.publications.len(), 2);
    assert_eq!(history.position.offset, 2);
    assert_eq!(&history.publications[1].data[..], b"2");
    let stats = sub.presence_stats().await.unwrap();
    assert_eq!((stats.num_clients, stats.num_users), (1, 1));
    let presence = sub.presence().await.unwrap();
    assert_eq!(presence.values().next().unwrap().user, "u");
    let error = client.rpc("method", "{}").await.unwrap_err();
    assert_eq!(error.server_code(), Some(108), "{error}");
    let error = client.publish("nope:x", "1").await.unwrap_err();
    assert_eq!(error.server_code(), Some(102), "{error}");
    sub.unsubscribe();
    wait_sub(&mut sub_events, SOON, |e| {
        matches!(e, SubscriptionEvent::Unsubscribed { .. })
    })
    .await;
    eventually(SOON, "server-side unsubscribe", || {
        server.node.hub().stats().num_subs == 0
    })
    .await;
    server.stop().await;
}

/// A node is stopped and started again on the same ports while another node of the cluster
/// keeps publishing: with the Redis engine the history outlives the node, so the client
/// reconnects to the restarted node and recovers every publication exactly once, in order.
/// (With the memory engine history dies with the process; see
/// `restarted_node_reports_not_recovered`.) Needs the Redis on 127.0.0.1:6379; the test's
/// keys live under a prefix of its own and are deleted at the end.
async fn restarted_node_on_redis_keeps_history_and_recovers_everything(transport: Transport) {
    const TOTAL: u32 = 60;
    let prefix = format!("tether-client-restart-{}", rand::random::<u64>());
    let node_config = || {
        let mut config = support::config();
        config.engine.kind = tether_server::config::EngineKind::Redis;
        config.engine.redis.address = vec!["redis://127.0.0.1:6379".to_owned()];
        config.engine.redis.prefix = prefix.clone();
        config.shutdown.drain_window = Duration::from_millis(100);
        config
    };
    let subscriber_node = TestServer::start_with(node_config()).await;
    let publisher_node = TestServer::start_with(node_config()).await;
    let (http, tcp) = (subscriber_node.http, subscriber_node.tcp);

    let url = TestServer::url(transport, subscriber_node.upstream(transport));
    let (_client, _events, _sub, mut sub_events) =
        subscribed_reader(&url, "chat:redis-restart").await;

    let publishing = publish_numbers(
        &TestServer::url(transport, publisher_node.upstream(transport)),
        "chat:redis-restart",
        TOTAL,
    );

    // The subscriber's node goes away mid-stream and comes back on the same ports.
    tokio::time::sleep(Duration::from_millis(300)).await;
    subscriber_node.stop().await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut config = node_config();
    config.http_server.port = http.port();
    config.tcp.port = tcp.port();
    let restarted = TestServer::start_with(config).await;

    let recoveries = receive_all_once_in_order(&mut sub_events, TOTAL).await;
    publishing.await.unwrap();
    assert!(recoveries >= 1, "the client recovered after the restart");
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Some(event) = sub_events.try_next() {
        assert!(
            !matches!(event, SubscriptionEvent::Publication(_)),
            "unexpected extra publication {event:?}"
        );
    }
    restarted.stop().await;
    publisher_node.stop().await;
    support::delete_redis_keys(&prefix).await;
}

/// Receives publications `1..=total` (data = the number, offset = the number) and asserts
/// each arrives exactly once and in order, and that every resubscribe on the way recovered.
/// Returns how many recoveries happened.
async fn receive_all_once_in_order(
    sub_events: &mut tether_client::SubscriptionEvents,
    total: u32,
) -> usize {
    let mut received = Vec::new();
    let mut recoveries = 0;
    tokio::time::timeout(Duration::from_secs(30), async {
        while received.len() < total as usize {
            match sub_events.next().await.expect("events") {
                SubscriptionEvent::Publication(p) => {
                    let n: u32 = std::str::from_utf8(&p.data).unwrap().parse().unwrap();
                    assert_eq!(
                        u64::from(n),
                        p.offset,
                        "offset follows the publication order"
                    );
                    received.push(n);
                }
                SubscriptionEvent::Subscribed {
                    was_recovering,
                    recovered,
                    ..
                } => {
                    assert!(was_recovering, "a resubscribe recovers");
                    assert!(recovered, "history was kept, so recovery must succeed");
                    recoveries += 1;
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {total} publications arrived", received.len()));
    assert_eq!(
        received,
        (1..=total).collect::<Vec<_>>(),
        "every publication exactly once, in order"
    );
    recoveries
}

/// A client subscribed to `channel` at `url` (kept alive by the returned handles), once the
/// subscription is confirmed.
async fn subscribed_reader(
    url: &str,
    channel: &str,
) -> (
    Client,
    tether_client::ClientEvents,
    tether_client::Subscription,
    tether_client::SubscriptionEvents,
) {
    let (client, events) = Client::new(url, client_config("reader")).unwrap();
    let (sub, mut sub_events) = client
        .new_subscription(channel, SubscriptionConfig::default())
        .unwrap();
    sub.subscribe();
    client.connect();
    wait_sub(&mut sub_events, SOON, |e| {
        matches!(e, SubscriptionEvent::Subscribed { .. })
    })
    .await;
    (client, events, sub, sub_events)
}

/// Publishes `1..=total` (as text) to `channel` through its own client at `url`, every 25 ms.
fn publish_numbers(url: &str, channel: &'static str, total: u32) -> tokio::task::JoinHandle<()> {
    let (publisher, _) = Client::new(url, client_config("writer")).unwrap();
    publisher.connect();
    tokio::spawn(async move {
        for n in 1..=total {
            publisher
                .publish(channel, n.to_string())
                .await
                .unwrap_or_else(|e| panic!("publish {n}: {e}"));
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
}

/// A server-side subscription (from the connect token's `channels`) in a recoverable
/// namespace: what is published while the link is down must arrive after the reconnect (the
/// client asks for it through the connect request's `subs`, as centrifuge-js does), not be
/// silently skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_subscription_recovers_across_a_reconnect() {
    let server = TestServer::start().await;
    let proxy = FaultProxy::start(server.upstream(Transport::Ws)).await;
    let url = TestServer::url(Transport::Ws, proxy.addr);
    let config = ClientConfig {
        token: Some(support::token_with(
            serde_json::json!({ "sub": "reader", "channels": ["chat:server-side"] }),
        )),
        ..client_config("reader")
    };
    let (reader, mut events) = Client::new(&url, config).unwrap();
    reader.connect();
    let (publisher, _) = Client::new(
        &TestServer::url(Transport::Ws, server.upstream(Transport::Ws)),
        client_config("writer"),
    )
    .unwrap();
    publisher.connect();
    wait_client(&mut events, SOON, |e| {
        matches!(e, ClientEvent::Connected { .. })
    })
    .await;
    publisher.publish("chat:server-side", "1").await.unwrap();
    wait_client(&mut events, SOON, |e| {
        matches!(e, ClientEvent::ServerPublication { publication, .. } if publication.offset == 1)
    })
    .await;

    // The link goes down; a publication is made meanwhile; the link comes back.
    proxy.set_mode(Mode::Refuse);
    proxy.reset_all();
    tokio::time::sleep(Duration::from_millis(300)).await;
    publisher.publish("chat:server-side", "2").await.unwrap();
    proxy.set_mode(Mode::Forward);
    wait_client(&mut events, SOON, |e| {
        matches!(e, ClientEvent::Connected { .. })
    })
    .await;
    publisher.publish("chat:server-side", "3").await.unwrap();
    // Everything up to publication 3, which follows the reconnect.
    let mut got = Vec::new();
    while !got.contains(&3) {
        let event = tokio::time::timeout(SOON, events.next())
            .await
            .expect("publication 3 in time")
            .expect("events");
        if let ClientEvent::ServerPublication { publication, .. } = event {
            got.push(publication.offset);
        }
    }
    assert_eq!(
        got,
        [2, 3],
        "publication 2, made while the link was down, was lost"
    );
    server.stop().await;
}

/// A channel with history whose namespace does not force recovery, but lets clients read
/// history (so, as in Centrifugo, a subscriber may ask for a recoverable subscription): a
/// publication made while the link is down must still arrive after the reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_channel_without_forced_recovery_recovers_across_a_reconnect() {
    use tether_server::config::{Namespace, NamespaceOptions};
    let mut config = support::config();
    config.channel.namespaces.push(Namespace {
        name: "feed".to_owned(),
        options: NamespaceOptions {
            history_size: 1000,
            history_ttl: Duration::from_secs(300),
            allow_subscribe_for_client: true,
            allow_publish_for_client: true,
            allow_history_for_client: true,
            ..Default::default()
        },
    });
    let server = TestServer::start_with(config).await;
    let proxy = FaultProxy::start(server.upstream(Transport::Ws)).await;
    let url = TestServer::url(Transport::Ws, proxy.addr);
    let (_reader, _events, _sub, mut sub_events) = subscribed_reader(&url, "feed:news").await;
    let (publisher, _) = Client::new(
        &TestServer::url(Transport::Ws, server.upstream(Transport::Ws)),
        client_config("writer"),
    )
    .unwrap();
    publisher.connect();
    publisher.publish("feed:news", "1").await.unwrap();
    wait_sub(
        &mut sub_events,
        SOON,
        |e| matches!(e, SubscriptionEvent::Publication(p) if p.offset == 1),
    )
    .await;

    // The link goes down; a publication is made meanwhile; the link comes back.
    proxy.set_mode(Mode::Refuse);
    proxy.reset_all();
    tokio::time::sleep(Duration::from_millis(300)).await;
    publisher.publish("feed:news", "2").await.unwrap();
    proxy.set_mode(Mode::Forward);
    wait_sub(&mut sub_events, SOON, |e| {
        matches!(e, SubscriptionEvent::Subscribed { .. })
    })
    .await;
    publisher.publish("feed:news", "3").await.unwrap();
    let mut got = Vec::new();
    while !got.contains(&3) {
        let event = tokio::time::timeout(SOON, sub_events.next())
            .await
            .expect("publication 3 in time")
            .expect("events");
        if let SubscriptionEvent::Publication(p) = event {
            got.push(p.offset);
        }
    }
    assert_eq!(
        got,
        [2, 3],
        "publication 2, made while the link was down, was lost"
    );
    server.stop().await;
}
