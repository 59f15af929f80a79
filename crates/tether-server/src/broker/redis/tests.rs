//! Tests against the Redis on 127.0.0.1:6379 (override with `TETHER_TEST_REDIS`). Each test
//! uses its own key prefix and deletes its keys at the end.

use std::time::Duration;

use parking_lot::Mutex;

use super::*;
use crate::broker::lifecycle::{Change, Decisions, Key, Scope, StatusField, UserStatus};
use crate::broker::{HistoryOptions, PublicationEvent};

#[derive(Default)]
struct Recorder {
    publications: Mutex<Vec<(String, Option<StreamPosition>, Bytes)>>,
    insufficient: Mutex<Vec<String>>,
    joins: Mutex<Vec<String>>,
}

impl BrokerEvents for Recorder {
    fn on_publication(&self, channel: &str, event: &PublicationEvent) {
        self.publications.lock().push((
            channel.to_owned(),
            event.position.clone(),
            event.publication.data.clone(),
        ));
    }
    fn on_join(&self, _channel: &str, info: &ClientInfo) {
        self.joins.lock().push(info.client.clone());
    }
    fn on_leave(&self, _channel: &str, _info: &ClientInfo) {}
    fn on_insufficient_state(&self, channel: &str) {
        self.insufficient.lock().push(channel.to_owned());
    }
}

fn address() -> String {
    std::env::var("TETHER_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn start(prefix: &str) -> (RedisEngine, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let options = RedisOptions {
        deployment: RedisDeployment::Shards(vec![address()]),
        prefix: prefix.to_owned(),
        connect_timeout: Duration::from_secs(1),
        io_timeout: Duration::from_secs(1),
        presence_ttl: Duration::from_secs(60),
        presence_update_interval: Duration::from_secs(27),
        fanout: true,
        breaker: None,
        tls: None,
    };
    let (engine, _control) = RedisEngine::start(options, recorder.clone()).expect("start");
    (engine, recorder)
}

fn unique_prefix(name: &str) -> String {
    format!("tether-test-{name}-{}", uuid::Uuid::new_v4().simple())
}

async fn cleanup(prefix: &str) {
    let client = redis::Client::open(address()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}.*"))
        .query_async(&mut conn)
        .await
        .expect("keys");
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .expect("del");
    }
}

fn history() -> PublishOptions {
    PublishOptions {
        history: Some(HistoryOptions {
            size: 3,
            ttl: Duration::from_secs(60),
            meta_ttl: Duration::from_secs(600),
        }),
        idempotency_key: None,
    }
}

fn publication(data: &'static str) -> Publication {
    Publication {
        data: Bytes::from_static(data.as_bytes()),
        ..Default::default()
    }
}

/// Publishes `data` into `channel` with history and returns the position it was given.
async fn publish_positioned(
    engine: &RedisEngine,
    channel: &str,
    data: &'static str,
) -> StreamPosition {
    engine
        .publish(channel, publication(data), &history())
        .await
        .expect("publish")
        .position
        .expect("position")
}

fn query(since: Option<StreamPosition>, limit: Option<usize>) -> HistoryQuery {
    HistoryQuery {
        since,
        limit,
        reverse: false,
        meta_ttl: Duration::from_secs(600),
    }
}

/// Waits up to 10 s for `check` (a test under a loaded CI machine, Redis cluster restarts
/// among them, needs more than the 2 s this once allowed; a passing check returns at once).
async fn eventually(mut check: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached");
}

#[tokio::test]
async fn offsets_are_consecutive_and_history_is_trimmed() {
    let prefix = unique_prefix("offsets");
    let (engine, _) = start(&prefix);
    let mut epoch = String::new();
    for (i, data) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
        let position = publish_positioned(&engine, "ch", data).await;
        assert_eq!(position.offset, i as u64 + 1);
        if epoch.is_empty() {
            epoch = position.epoch.clone();
        }
        assert_eq!(position.epoch, epoch);
    }
    let page = engine
        .history("ch", &query(None, None))
        .await
        .expect("history");
    assert_eq!(
        page.top,
        StreamPosition {
            offset: 5,
            epoch: epoch.clone()
        }
    );
    let offsets: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, [3, 4, 5], "trimmed to the history size");
    let since = StreamPosition {
        offset: 3,
        epoch: epoch.clone(),
    };
    let page = engine
        .history("ch", &query(Some(since), None))
        .await
        .expect("history since");
    let data: Vec<&[u8]> = page.publications.iter().map(|p| p.data.as_ref()).collect();
    assert_eq!(data, [b"d".as_ref(), b"e".as_ref()]);
    let other = StreamPosition {
        offset: 1,
        epoch: "other".into(),
    };
    assert_eq!(
        engine.history("ch", &query(Some(other), None)).await,
        Err(BrokerError::UnrecoverablePosition)
    );
    cleanup(&prefix).await;
}

#[tokio::test]
async fn lost_keys_start_a_new_epoch() {
    let prefix = unique_prefix("epoch");
    let (engine, _) = start(&prefix);
    let first = publish_positioned(&engine, "ch", "a").await;
    // Stands in for Redis restarting empty: every key of this engine is gone.
    cleanup(&prefix).await;
    let second = publish_positioned(&engine, "ch", "b").await;
    assert_ne!(second.epoch, first.epoch);
    assert_eq!(second.offset, 1);
    assert_eq!(
        engine.history("ch", &query(Some(first), Some(10))).await,
        Err(BrokerError::UnrecoverablePosition)
    );
    cleanup(&prefix).await;
}

#[tokio::test]
async fn a_clients_position_beyond_the_top_recovers_nothing_and_rotates_nothing() {
    let prefix = unique_prefix("beyond");
    let (engine, _) = start(&prefix);
    let top = publish_positioned(&engine, "ch", "a").await;
    let ahead = StreamPosition {
        offset: 5,
        epoch: top.epoch.clone(),
    };
    let page = engine
        .history("ch", &query(Some(ahead), Some(10)))
        .await
        .expect("history");
    assert_eq!(page.top, top, "nothing above the top, which stays");
    assert!(page.publications.is_empty());
    let page = engine
        .history("ch", &query(None, Some(10)))
        .await
        .expect("history");
    assert_eq!(page.top, top, "a client's claim wiped no history");
    assert_eq!(page.publications.len(), 1);
    cleanup(&prefix).await;
}

#[tokio::test]
async fn publications_this_node_received_and_redis_lost_start_a_new_epoch() {
    let prefix = unique_prefix("lost-writes");
    let (engine, events) = start(&prefix);
    eventually(|| engine.is_ready()).await;
    engine.subscribe("ch").await.expect("subscribe");
    let mut top = publish_positioned(&engine, "ch", "a").await;
    for data in ["b", "c"] {
        top = publish_positioned(&engine, "ch", data).await;
    }
    eventually(|| events.publications.lock().len() == 3).await;
    // A failover to a replica that had only the first publication.
    let client = redis::Client::open(address()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let () = redis::cmd("HSET")
        .arg(engine.shared.keys.meta("ch"))
        .arg("s")
        .arg(1)
        .query_async(&mut conn)
        .await
        .expect("hset");
    let _: i64 = redis::cmd("XTRIM")
        .arg(engine.shared.keys.stream("ch"))
        .arg("MAXLEN")
        .arg(1)
        .query_async(&mut conn)
        .await
        .expect("xtrim");
    let page = engine
        .history("ch", &query(None, Some(10)))
        .await
        .expect("history");
    assert_ne!(
        page.top.epoch, top.epoch,
        "offsets 2 and 3 were delivered and lost"
    );
    assert_eq!(page.top.offset, 0);
    let next = publish_positioned(&engine, "ch", "d").await;
    assert_eq!((next.offset, next.epoch), (1, page.top.epoch));
    cleanup(&prefix).await;
}

#[tokio::test]
async fn idempotent_publish_returns_the_first_result() {
    let prefix = unique_prefix("idem");
    let (engine, _) = start(&prefix);
    let mut opts = history();
    opts.idempotency_key = Some("k1".into());
    let first = engine
        .publish("ch", publication("a"), &opts)
        .await
        .expect("publish");
    let again = engine
        .publish("ch", publication("a"), &opts)
        .await
        .expect("publish");
    assert!(!first.from_cache);
    assert!(again.from_cache);
    assert_eq!(first.position, again.position);
    let page = engine
        .history("ch", &query(None, None))
        .await
        .expect("history");
    assert_eq!(page.publications.len(), 1);
    cleanup(&prefix).await;
}

#[tokio::test]
async fn subscribed_channels_receive_positions_and_gaps_are_reported() {
    let prefix = unique_prefix("pubsub");
    let (engine, events) = start(&prefix);
    eventually(|| engine.is_ready()).await;
    engine.subscribe("ch").await.expect("subscribe");
    engine
        .publish("ch", publication("a"), &history())
        .await
        .expect("publish");
    engine
        .publish("ch", publication("b"), &history())
        .await
        .expect("publish");
    eventually(|| events.publications.lock().len() == 2).await;
    let offsets: Vec<u64> = events
        .publications
        .lock()
        .iter()
        .map(|(_, p, _)| p.as_ref().map_or(0, |p| p.offset))
        .collect();
    assert_eq!(offsets, [1, 2]);
    assert!(events.insufficient.lock().is_empty());
    // Keys lost: the next publication arrives in a new epoch, which this node must report.
    cleanup(&prefix).await;
    engine
        .publish("ch", publication("c"), &history())
        .await
        .expect("publish");
    eventually(|| events.publications.lock().len() == 3).await;
    assert_eq!(*events.insufficient.lock(), ["ch"]);
    // After the last local unsubscribe nothing more is delivered.
    engine.unsubscribe("ch").await.expect("unsubscribe");
    tokio::time::sleep(Duration::from_millis(100)).await;
    engine
        .publish("ch", publication("d"), &history())
        .await
        .expect("publish");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(events.publications.lock().len(), 3);
    cleanup(&prefix).await;
}

#[tokio::test]
async fn an_open_breaker_fails_commands_but_not_live_fan_out() {
    let prefix = unique_prefix("breaker-fanout");
    let (with_breaker, events) = {
        let recorder = Arc::new(Recorder::default());
        let options = RedisOptions {
            deployment: RedisDeployment::Shards(vec![address()]),
            prefix: prefix.clone(),
            connect_timeout: Duration::from_secs(1),
            io_timeout: Duration::from_secs(1),
            presence_ttl: Duration::from_secs(60),
            presence_update_interval: Duration::from_secs(27),
            fanout: true,
            breaker: Some(breaker::Settings {
                consecutive_failures: 3,
                open_for: Duration::from_secs(60),
                ..breaker::Settings::default()
            }),
            tls: None,
        };
        let (engine, _control) = RedisEngine::start(options, recorder.clone()).expect("start");
        (engine, recorder)
    };
    let (other, _) = start(&prefix);
    eventually(|| with_breaker.is_ready() && other.is_ready()).await;
    with_breaker.subscribe("ch").await.expect("subscribe");
    // Three failed commands in a row open the breaker (as a dying Redis would).
    let shard = &with_breaker.shared.shards[0];
    for _ in 0..3 {
        let (ticket, _) = breaker::call(
            shard.breaker.as_ref().expect("a breaker"),
            tokio::time::Instant::now(),
        );
        let transition = ticket
            .expect("closed")
            .finish(Outcome::Failure, tokio::time::Instant::now());
        with_breaker.report(0, transition);
    }
    assert!(!with_breaker.is_ready(), "an open breaker is not ready");
    let refused = with_breaker
        .publish("ch", publication("x"), &history())
        .await;
    assert!(
        matches!(&refused, Err(BrokerError::Unavailable(m)) if m.contains("breaker")),
        "{refused:?}"
    );
    // Another node's publication still reaches this node's subscribers over Pub/Sub.
    other
        .publish("ch", publication("a"), &history())
        .await
        .expect("publish from the other node");
    eventually(|| events.publications.lock().len() == 1).await;
    assert_eq!(with_breaker.health()[0].opened, 1);
    cleanup(&prefix).await;
}

#[tokio::test]
async fn a_subscribed_connection_survives_its_liveness_probe() {
    // Regression: the probe read PING's reply as a string, which a subscribed connection
    // does not send, so every probe dropped the connection and reported lost continuity.
    let prefix = unique_prefix("probe");
    let (engine, recorder) = start(&prefix);
    eventually(|| engine.is_ready()).await;
    engine.subscribe("room").await.expect("subscribe");
    tokio::time::sleep(pubsub::PROBE_INTERVAL + Duration::from_millis(1500)).await;
    assert!(engine.is_ready());
    assert!(
        recorder.insufficient.lock().is_empty(),
        "a probe dropped the connection: {:?}",
        recorder.insufficient.lock()
    );
    engine
        .publish("room", publication("after"), &history())
        .await
        .expect("publish");
    eventually(|| recorder.publications.lock().iter().any(|p| p.2 == "after")).await;
    cleanup(&prefix).await;
}

#[tokio::test]
async fn presence_is_shared_and_removed() {
    let prefix = unique_prefix("presence");
    let (a, _) = start(&prefix);
    let (b, _) = start(&prefix);
    let info = |user: &str, client: &str| ClientInfo {
        user: user.into(),
        client: client.into(),
        ..Default::default()
    };
    a.add_presence("ch", "c1", info("u1", "c1"))
        .await
        .expect("add");
    b.add_presence("ch", "c2", info("u1", "c2"))
        .await
        .expect("add");
    b.add_presence("ch", "c3", info("u2", "c3"))
        .await
        .expect("add");
    let stats = a.presence_stats("ch").await.expect("stats");
    assert_eq!(
        stats,
        PresenceStats {
            num_clients: 3,
            num_users: 2
        }
    );
    b.remove_presence("ch", "c2").await.expect("remove");
    let presence = a.presence("ch").await.expect("presence");
    let mut clients: Vec<&str> = presence.keys().map(String::as_str).collect();
    clients.sort_unstable();
    assert_eq!(clients, ["c1", "c3"]);
    assert_eq!(presence["c3"].user, "u2");
    cleanup(&prefix).await;
}

#[tokio::test]
async fn unreachable_redis_fails_publish_instead_of_faking_success() {
    let recorder = Arc::new(Recorder::default());
    let options = RedisOptions {
        // Nothing listens on port 1.
        deployment: RedisDeployment::Shards(vec!["redis://127.0.0.1:1".to_owned()]),
        prefix: "tether-test-down".to_owned(),
        connect_timeout: Duration::from_millis(200),
        io_timeout: Duration::from_millis(200),
        presence_ttl: Duration::from_secs(60),
        presence_update_interval: Duration::from_secs(27),
        fanout: true,
        breaker: None,
        tls: None,
    };
    let (engine, _control) = RedisEngine::start(options, recorder).expect("start");
    assert!(matches!(
        engine.publish("ch", publication("a"), &history()).await,
        Err(BrokerError::Unavailable(_))
    ));
    assert!(engine.subscribe("ch").await.is_err());
    assert!(!engine.is_ready());
}

/// A Redis server of the test's own on a free loopback port (it is frozen and thawed);
/// killed when dropped.
struct OwnRedis {
    child: std::process::Child,
    port: u16,
}

impl OwnRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs");
        Self { child, port }
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn engine_on(redis: &OwnRedis, breaker: Option<breaker::Settings>) -> RedisEngine {
    let options = RedisOptions {
        deployment: RedisDeployment::Shards(vec![format!("redis://127.0.0.1:{}", redis.port)]),
        prefix: "tether-test-freeze".to_owned(),
        connect_timeout: Duration::from_millis(300),
        io_timeout: Duration::from_millis(300),
        presence_ttl: Duration::from_secs(60),
        presence_update_interval: Duration::from_secs(27),
        fanout: true,
        breaker,
        tls: None,
    };
    RedisEngine::start(options, Arc::new(Recorder::default()))
        .expect("start")
        .0
}

/// Publishes every 10 ms for `span` on `engine` (100/s): how long each call took, and
/// whether it succeeded.
async fn publish_for(engine: &RedisEngine, span: Duration) -> Vec<(Duration, bool)> {
    let mut calls = tokio::task::JoinSet::new();
    let started = tokio::time::Instant::now();
    while started.elapsed() < span {
        let engine = engine.clone();
        calls.spawn(async move {
            let t = tokio::time::Instant::now();
            let ok = engine
                .publish("ch", publication("x"), &history())
                .await
                .is_ok();
            (t.elapsed(), ok)
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    calls.join_all().await
}

#[tokio::test]
async fn a_frozen_redis_opens_the_breaker_so_commands_fail_at_once_until_it_answers() {
    let redis = OwnRedis::start();
    let settings = breaker::Settings {
        stall: Some(Duration::from_millis(100)),
        consecutive_failures: 3,
        open_for: Duration::from_millis(300),
        ..breaker::Settings::default()
    };
    let engine = engine_on(&redis, Some(settings));
    let off = engine_on(&redis, None);
    // A command's own wait on a frozen Redis: the response timeout (io_timeout).
    let wait = Duration::from_millis(300);
    let mut up = false;
    for _ in 0..100 {
        if engine
            .publish("ch", publication("a"), &history())
            .await
            .is_ok()
            && off
                .publish("ch", publication("a"), &history())
                .await
                .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "the test's redis-server never answered");

    redis.signal("-STOP");
    let (with_breaker, without) = tokio::join!(
        publish_for(&engine, Duration::from_millis(600)),
        publish_for(&off, Duration::from_millis(600)),
    );
    // Without a breaker every call waits.
    assert!(without.iter().all(|(took, ok)| !ok && *took >= wait));
    // With it, the calls made before the stall was noticed wait; every later one is refused
    // without waiting: most of them, at 100 calls/s for 600 ms.
    assert!(with_breaker.iter().all(|(_, ok)| !ok));
    let waited = with_breaker
        .iter()
        .filter(|(took, _)| *took >= wait)
        .count();
    let refused = with_breaker.len() - waited;
    assert!(
        waited < 20 && refused > waited,
        "waited {waited}, refused {refused} of {}",
        with_breaker.len()
    );
    let health = &engine.health()[0];
    // Opened by the stall, and again after each failed half-open probe.
    assert!(health.opened >= 1, "{health:?}");
    assert!(health.rejected > 0, "{health:?}");
    assert!(!engine.is_ready());
    assert!(off.health()[0].breaker.is_none());

    // Thawed, the prober's PING closes it within about a second, without traffic.
    redis.signal("-CONT");
    let mut ready = false;
    for _ in 0..60 {
        if engine.is_ready() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "{:?}", engine.health());
    assert_eq!(engine.health()[0].breaker, Some(breaker::State::Closed));
    engine
        .publish("ch", publication("b"), &history())
        .await
        .expect("publish after the thaw");
}

#[test]
fn jump_hash_is_stable_and_spreads() {
    assert_eq!(jump_hash(fnv1a(b"anything"), 1), 0);
    let mut counts = [0usize; 4];
    for i in 0..4000 {
        counts[jump_hash(fnv1a(format!("channel-{i}").as_bytes()), 4)] += 1;
    }
    assert!(counts.iter().all(|n| *n > 800), "{counts:?}");
    // Growing from 4 to 5 shards moves only the keys that land on the new one.
    for i in 0..1000 {
        let key = fnv1a(format!("channel-{i}").as_bytes());
        let (before, after) = (jump_hash(key, 4), jump_hash(key, 5));
        assert!(after == before || after == 4);
    }
}

// === lifecycle: occupancy decided per cluster, user status ===

const GRACE: i64 = 5_000;
const T0: i64 = 1_000_000;

fn user_key(name: &str) -> Key {
    Key {
        scope: Scope::User,
        name: name.to_owned(),
    }
}

fn hold(name: &str) -> Change {
    Change {
        key: user_key(name),
        held: true,
    }
}

fn release(name: &str) -> Change {
    Change {
        key: user_key(name),
        held: false,
    }
}

async fn apply(engine: &RedisEngine, node: &str, changes: &[Change], now: i64) -> Decisions {
    engine
        .lifecycle_apply(node, changes, now, GRACE)
        .await
        .expect("apply")
}

/// A tick that reaps nobody (every test time is above 0).
async fn tick(engine: &RedisEngine, node: &str, now: i64) -> Decisions {
    tick_reaping(engine, node, now, 0).await
}

async fn tick_reaping(engine: &RedisEngine, node: &str, now: i64, dead_before: i64) -> Decisions {
    engine
        .lifecycle_tick(node, now, dead_before)
        .await
        .expect("tick")
}

fn downs(keys: &[&str]) -> Decisions {
    Decisions {
        down: keys.iter().map(|k| user_key(k)).collect(),
        ..Decisions::default()
    }
}

/// The lifecycle keys of the prefix left in Redis, sorted (standalone, db of `address()`).
async fn lifecycle_keys(prefix: &str) -> Vec<String> {
    let client = redis::Client::open(address()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}.lifecycle.*"))
        .query_async(&mut conn)
        .await
        .expect("keys");
    keys.sort();
    keys
}

/// Two nodes hold one key: it goes up once, and down once, after both released it and the
/// grace passed, whichever node ticks. Shared with the cluster test.
async fn one_key_two_nodes(a: &RedisEngine, b: &RedisEngine) {
    let up = apply(a, "node-a", &[hold("x")], T0).await;
    assert_eq!(
        up,
        Decisions {
            up: vec![user_key("x")],
            ..Decisions::default()
        }
    );
    assert_eq!(
        apply(b, "node-b", &[hold("x")], T0 + 10).await,
        Decisions::default()
    );
    // A lets go, B still holds it: nothing pending, even long after the grace.
    assert_eq!(
        apply(a, "node-a", &[release("x")], T0 + 20).await,
        Decisions::default()
    );
    assert_eq!(
        tick(a, "node-a", T0 + 20 + GRACE + 1).await,
        Decisions::default()
    );
    assert_eq!(
        tick(b, "node-b", T0 + 20 + GRACE + 1).await,
        Decisions::default()
    );
    // B lets go: down at the end of the grace, not before, once.
    let released = T0 + 10_000;
    assert_eq!(
        apply(b, "node-b", &[release("x")], released).await,
        Decisions::default()
    );
    assert_eq!(
        tick(a, "node-a", released + GRACE - 1).await,
        Decisions::default()
    );
    assert_eq!(
        tick(b, "node-b", released + GRACE - 1).await,
        Decisions::default()
    );
    assert_eq!(tick(a, "node-a", released + GRACE).await, downs(&["x"]));
    assert_eq!(
        tick(a, "node-a", released + GRACE + 1).await,
        Decisions::default()
    );
    assert_eq!(
        tick(b, "node-b", released + GRACE + 1).await,
        Decisions::default()
    );
    // And up again on the next hold.
    let up = apply(b, "node-b", &[hold("x")], released + GRACE + 2).await;
    assert_eq!(up.up, [user_key("x")]);
}

#[tokio::test]
async fn a_key_held_by_two_nodes_goes_down_once_after_both_released_it_and_the_grace() {
    let prefix = unique_prefix("lc-two");
    let (a, _) = start(&prefix);
    let (b, _) = start(&prefix);
    one_key_two_nodes(&a, &b).await;
    apply(&b, "node-b", &[release("x")], T0 + 20_000).await;
    assert_eq!(tick(&a, "node-a", T0 + 30_000).await, downs(&["x"]));
    // Nothing is left behind but the live nodes.
    assert_eq!(
        lifecycle_keys(&prefix).await,
        [format!("{prefix}.lifecycle.{{{prefix}.lifecycle}}.nodes")]
    );
    cleanup(&prefix).await;
    assert!(lifecycle_keys(&prefix).await.is_empty(), "cleanup");
}

#[tokio::test]
async fn a_key_held_again_within_the_grace_neither_goes_down_nor_up_again() {
    let prefix = unique_prefix("lc-grace");
    let (a, _) = start(&prefix);
    assert_eq!(
        apply(&a, "node-a", &[hold("y")], T0).await.up,
        [user_key("y")]
    );
    assert_eq!(
        apply(&a, "node-a", &[release("y")], T0 + 10).await,
        Decisions::default()
    );
    assert_eq!(
        apply(&a, "node-a", &[hold("y")], T0 + 20).await,
        Decisions::default()
    );
    assert_eq!(
        tick(&a, "node-a", T0 + 10 + GRACE).await,
        Decisions::default()
    );
    assert_eq!(
        tick(&a, "node-a", T0 + 100_000).await,
        Decisions::default(),
        "held"
    );
    // In one batch, in order: up once each, in the order of the changes.
    let batch = apply(
        &a,
        "node-a",
        &[hold("q"), hold("p"), hold("q"), release("p"), hold("p")],
        T0 + 100_001,
    )
    .await;
    assert_eq!(batch.up, [user_key("q"), user_key("p")]);
    // Released twice, held in between: one down, after the grace of the last release.
    let at = T0 + 200_000;
    apply(&a, "node-a", &[release("q"), hold("q")], at).await;
    apply(&a, "node-a", &[release("q")], at + 1_000).await;
    assert_eq!(tick(&a, "node-a", at + GRACE).await, Decisions::default());
    assert_eq!(tick(&a, "node-a", at + 1_000 + GRACE).await, downs(&["q"]));
    // A release of a key that is not up decides nothing.
    assert_eq!(
        apply(&a, "node-a", &[release("never")], at + 2_000).await,
        Decisions::default()
    );
    assert_eq!(tick(&a, "node-a", at + 100_000).await, Decisions::default());
    cleanup(&prefix).await;
}

#[tokio::test]
async fn a_silent_node_is_reaped_and_its_keys_go_down_once() {
    let prefix = unique_prefix("lc-reap");
    let (a, _) = start(&prefix);
    let (b, _) = start(&prefix);
    let (c, _) = start(&prefix);
    apply(&a, "node-a", &[hold("y"), hold("shared")], T0).await;
    apply(&b, "node-b", &[hold("shared")], T0).await;
    apply(&c, "node-c", &[], T0).await;
    // A's last refresh is not older than the limit: not reaped.
    assert_eq!(
        tick_reaping(&b, "node-b", T0 + 1_000, T0).await,
        Decisions::default()
    );
    assert_eq!(
        tick_reaping(&c, "node-c", T0 + 1_000, T0).await,
        Decisions::default()
    );
    // Now it is; B and C tick at once: exactly one of them takes y down, and only y
    // (B still holds the other key).
    let (from_b, from_c) = tokio::join!(
        tick_reaping(&b, "node-b", T0 + 2_000, T0 + 1),
        tick_reaping(&c, "node-c", T0 + 2_000, T0 + 1),
    );
    let mut all = from_b.down.clone();
    all.extend(from_c.down.clone());
    assert_eq!(all, [user_key("y")], "{from_b:?} {from_c:?}");
    assert!(!from_b.rejoin && !from_c.rejoin);
    assert_eq!(tick(&b, "node-b", T0 + 3_000).await, Decisions::default());
    assert_eq!(tick(&c, "node-c", T0 + 3_000).await, Decisions::default());
    // Nothing of A is left.
    let keys = lifecycle_keys(&prefix).await;
    assert!(!keys.iter().any(|k| k.contains("node-a")), "{keys:?}");
    assert!(!keys.iter().any(|k| k.ends_with(".reaping")), "{keys:?}");
    let nodes: Vec<String> = {
        let client = redis::Client::open(address()).expect("client");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        redis::cmd("ZRANGE")
            .arg(a.shared.keys.lifecycle_nodes())
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .expect("zrange")
    };
    assert_eq!(nodes, ["node-b", "node-c"]);
    // The key B still holds goes down after B lets go and the grace passes.
    apply(&b, "node-b", &[release("shared")], T0 + 4_000).await;
    assert_eq!(
        tick(&c, "node-c", T0 + 4_000 + GRACE).await,
        downs(&["shared"])
    );
    cleanup(&prefix).await;
}

#[tokio::test]
async fn a_reaped_node_is_told_to_rejoin_once() {
    let prefix = unique_prefix("lc-rejoin");
    let (a, _) = start(&prefix);
    let (b, _) = start(&prefix);
    // A first call is not a rejoin, nor is a call of a live node.
    assert!(!apply(&a, "node-a", &[hold("r")], T0).await.rejoin);
    assert!(!tick(&a, "node-a", T0 + 1).await.rejoin);
    assert!(!tick(&b, "node-b", T0 + 1).await.rejoin);
    // B reaps A, which held r.
    assert_eq!(
        tick_reaping(&b, "node-b", T0 + 60_000, T0 + 30_000).await,
        downs(&["r"])
    );
    // A comes back: told once to report what it holds; reporting it brings r up again.
    let back = tick(&a, "node-a", T0 + 60_001).await;
    assert_eq!(
        back,
        Decisions {
            rejoin: true,
            ..Decisions::default()
        }
    );
    assert!(!tick(&a, "node-a", T0 + 60_002).await.rejoin);
    assert_eq!(
        apply(&a, "node-a", &[hold("r")], T0 + 60_003).await.up,
        [user_key("r")]
    );
    // Reaped again, an apply is what finds out.
    assert_eq!(
        tick_reaping(&b, "node-b", T0 + 120_000, T0 + 90_000).await,
        downs(&["r"])
    );
    let back = apply(&a, "node-a", &[hold("s")], T0 + 120_001).await;
    assert!(back.rejoin);
    assert_eq!(back.up, [user_key("s")]);
    cleanup(&prefix).await;
}

#[tokio::test]
async fn a_big_reaped_node_is_released_over_several_ticks_and_keeps_what_it_holds_again() {
    let prefix = unique_prefix("lc-big");
    let (a, _) = start(&prefix);
    let (b, _) = start(&prefix);
    let names: Vec<String> = (0..1500).map(|i| format!("user-{i}")).collect();
    let holds: Vec<Change> = names.iter().map(|n| hold(n)).collect();
    assert_eq!(apply(&a, "node-a", &holds, T0).await.up.len(), 1500);
    // Reaped: one tick releases (and takes down) at most its budget.
    let first = tick_reaping(&b, "node-b", T0 + 60_000, T0 + 1).await;
    assert_eq!(
        first.down.len(),
        lifecycle::RELEASE_KEYS.min(lifecycle::DUE_KEYS)
    );
    // A comes back before the rest is released and reports everything: what went down goes
    // up again, the rest was never down; the rest of the release skips what A holds again.
    // (Its own apply finds out it was reaped, before any tick of its own released the rest.)
    let again = apply(&a, "node-a", &holds, T0 + 60_002).await;
    assert!(again.rejoin);
    let mut went_up = again.up.clone();
    went_up.sort_by(|x, y| x.name.cmp(&y.name));
    let mut went_down = first.down.clone();
    went_down.sort_by(|x, y| x.name.cmp(&y.name));
    assert!(
        went_up == went_down,
        "up again {} != down {}",
        went_up.len(),
        went_down.len()
    );
    for i in 0..3 {
        assert_eq!(
            tick(&b, "node-b", T0 + 60_010 + i).await,
            Decisions::default(),
            "tick {i}"
        );
    }
    assert!(
        !lifecycle_keys(&prefix)
            .await
            .iter()
            .any(|k| k.contains(".r.node-a")),
        "the reaped set is drained"
    );
    // A leaves: its keys go down over the next ticks of B, each once.
    assert_eq!(
        a.lifecycle_leave("node-a", T0 + 70_000)
            .await
            .expect("leave"),
        Decisions::default()
    );
    let mut down = std::collections::HashSet::new();
    for i in 0..4 {
        for key in tick(&b, "node-b", T0 + 70_001 + i).await.down {
            assert!(down.insert(key.name), "down twice");
        }
    }
    assert_eq!(down, names.iter().cloned().collect());
    cleanup(&prefix).await;
}

#[tokio::test]
async fn a_key_a_rejoined_node_releases_keeps_its_grace_while_its_old_keys_are_released() {
    let prefix = unique_prefix("lc-rejoin-release");
    let (a, _) = start(&prefix);
    let (b, _) = start(&prefix);
    let names: Vec<String> = (0..1500).map(|i| format!("user-{i}")).collect();
    let holds: Vec<Change> = names.iter().map(|n| hold(n)).collect();
    apply(&a, "node-a", &holds, T0).await;
    let first = tick_reaping(&b, "node-b", T0 + 60_000, T0 + 1).await;
    let gone: std::collections::HashSet<String> = first.down.into_iter().map(|k| k.name).collect();
    // A key the first tick did not release yet: A, back, lets go of it itself.
    let kept = names.iter().find(|n| !gone.contains(*n)).expect("one left");
    let back = apply(&a, "node-a", &[release(kept)], T0 + 60_001).await;
    assert!(back.rejoin);
    // The rest of A's old keys go down now; the one A released waits for its grace.
    let rest = tick(&b, "node-b", T0 + 60_002).await.down;
    assert_eq!(rest.len(), names.len() - gone.len() - 1);
    assert!(!rest.contains(&user_key(kept)));
    assert_eq!(
        tick(&b, "node-b", T0 + 60_001 + GRACE - 1).await,
        Decisions::default()
    );
    assert_eq!(
        tick(&b, "node-b", T0 + 60_001 + GRACE).await,
        downs(&[kept])
    );
    cleanup(&prefix).await;
}

#[tokio::test]
async fn a_node_that_leaves_hands_its_keys_to_the_next_tick() {
    let prefix = unique_prefix("lc-leave");
    let (a, _) = start(&prefix);
    let (b, _) = start(&prefix);
    let room = Key {
        scope: Scope::Channel,
        name: "room:1".to_owned(),
    };
    let lobby = Key {
        scope: Scope::Channel,
        name: "lobby".to_owned(),
    };
    let up = apply(
        &a,
        "node-a",
        &[
            hold("z"),
            Change {
                key: room.clone(),
                held: true,
            },
            Change {
                key: lobby.clone(),
                held: true,
            },
        ],
        T0,
    )
    .await;
    assert_eq!(up.up, [user_key("z"), room.clone(), lobby.clone()]);
    apply(
        &b,
        "node-b",
        &[Change {
            key: lobby.clone(),
            held: true,
        }],
        T0,
    )
    .await;
    assert_eq!(
        a.lifecycle_leave("node-a", T0 + 1).await.expect("leave"),
        Decisions::default()
    );
    let mut down = tick(&b, "node-b", T0 + 2).await.down;
    down.sort_by_key(Key::encode);
    assert_eq!(down, [room, user_key("z")]);
    assert_eq!(tick(&b, "node-b", T0 + 3).await, Decisions::default());
    // A left the live nodes: the next start of that id is no rejoin to anyone.
    let keys = lifecycle_keys(&prefix).await;
    assert!(!keys.iter().any(|k| k.contains("node-a")), "{keys:?}");
    cleanup(&prefix).await;
}

/// Sets, reads, deletes; shared with the cluster test.
async fn statuses(engine: &RedisEngine, users: &[String]) {
    let (first, rest) = users.split_first().expect("users");
    engine
        .status_set(std::slice::from_ref(first), StatusField::Active, 100, 60)
        .await
        .expect("set");
    engine
        .status_set(users, StatusField::Online, 110, 60)
        .await
        .expect("set");
    let got = engine.status_get(users).await.expect("get");
    assert_eq!(got.len(), users.len());
    assert_eq!(
        got[0],
        UserStatus {
            user: first.clone(),
            active: Some(100),
            online: Some(110)
        }
    );
    for (status, user) in got[1..].iter().zip(rest) {
        assert_eq!(
            *status,
            UserStatus {
                user: user.clone(),
                active: None,
                online: Some(110)
            }
        );
    }
    engine.status_delete(rest).await.expect("delete");
    let got = engine.status_get(users).await.expect("get");
    assert_eq!(got[0].online, Some(110));
    for (status, user) in got[1..].iter().zip(rest) {
        assert_eq!(
            *status,
            UserStatus {
                user: user.clone(),
                active: None,
                online: None
            }
        );
    }
    // Expiry: one second.
    engine
        .status_set(std::slice::from_ref(first), StatusField::Online, 120, 1)
        .await
        .expect("set");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let got = engine
        .status_get(std::slice::from_ref(first))
        .await
        .expect("get");
    assert_eq!(
        got[0],
        UserStatus {
            user: first.clone(),
            active: None,
            online: None
        }
    );
    assert!(
        engine
            .status_get(&[])
            .await
            .expect("get nothing")
            .is_empty()
    );
}

#[tokio::test]
async fn user_statuses_are_set_read_deleted_and_expire() {
    let prefix = unique_prefix("lc-status");
    let (engine, _) = start(&prefix);
    let users: Vec<String> = ["alice", "bob", "}odd", "carol"]
        .map(str::to_owned)
        .to_vec();
    statuses(&engine, &users).await;
    // The TTL is the one set last.
    engine
        .status_set(&users[..1], StatusField::Active, 1, 60)
        .await
        .expect("set");
    let client = redis::Client::open(address()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let ttl: i64 = redis::cmd("TTL")
        .arg(engine.shared.keys.status("alice"))
        .query_async(&mut conn)
        .await
        .expect("ttl");
    assert!((55..=60).contains(&ttl), "{ttl}");
    cleanup(&prefix).await;
}

#[tokio::test]
async fn user_statuses_spread_over_shards_come_back_in_order() {
    let prefix = unique_prefix("lc-status-shards");
    let recorder = Arc::new(Recorder::default());
    let options = RedisOptions {
        // Two shards on one Redis: the users' keys are distinct, the batches are per shard.
        deployment: RedisDeployment::Shards(vec![address(), address()]),
        prefix: prefix.clone(),
        connect_timeout: Duration::from_secs(1),
        io_timeout: Duration::from_secs(1),
        presence_ttl: Duration::from_secs(60),
        presence_update_interval: Duration::from_secs(27),
        fanout: false,
        breaker: None,
        tls: None,
    };
    let (engine, _control) = RedisEngine::start(options, recorder).expect("start");
    let users: Vec<String> = (0..20).map(|i| format!("user-{i}")).collect();
    let shards: std::collections::HashSet<usize> =
        users.iter().map(|u| engine.shard_for(u)).collect();
    assert_eq!(shards.len(), 2, "the users span both shards");
    for (i, user) in users.iter().enumerate() {
        let at = i64::try_from(i).expect("small");
        engine
            .status_set(std::slice::from_ref(user), StatusField::Active, at, 60)
            .await
            .expect("set");
    }
    let got = engine.status_get(&users).await.expect("get");
    let active: Vec<Option<i64>> = got.iter().map(|s| s.active).collect();
    let expected: Vec<Option<i64>> = (0..20).map(Some).collect();
    assert_eq!(active, expected);
    assert!(got.iter().zip(&users).all(|(s, u)| s.user == *u));
    engine.status_delete(&users).await.expect("delete");
    statuses(&engine, &users).await;
    cleanup(&prefix).await;
}

/// The same engine on a Redis Cluster: the 3-master cluster of `scripts/redis-cluster.sh`
/// (started on first use), or the seeds in `TETHER_TEST_REDIS_CLUSTER` (comma-separated;
/// every seed a master, as the keys are cleaned up on each).
mod cluster {
    use std::sync::OnceLock;

    use super::*;

    fn seeds() -> Vec<String> {
        static STARTED: OnceLock<Vec<String>> = OnceLock::new();
        STARTED
            .get_or_init(|| {
                if let Ok(seeds) = std::env::var("TETHER_TEST_REDIS_CLUSTER") {
                    return seeds.split(',').map(str::to_owned).collect();
                }
                cluster_script(SHARED_PORTS, &["start"]);
                urls(SHARED_PORTS)
            })
            .clone()
    }

    /// The ports of the cluster the tests share (the script's default).
    const SHARED_PORTS: [u16; 3] = [7101, 7102, 7103];
    /// A cluster of its own for the test that restarts a node.
    const FAULT_PORTS: [u16; 3] = [7111, 7112, 7113];

    fn urls(ports: [u16; 3]) -> Vec<String> {
        ports
            .iter()
            .map(|port| format!("redis://127.0.0.1:{port}"))
            .collect()
    }

    /// Runs `scripts/redis-cluster.sh` for the cluster on `ports`.
    fn cluster_script(ports: [u16; 3], args: &[&str]) {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scripts/redis-cluster.sh"
        );
        let ports = ports.map(|p| p.to_string()).join(" ");
        let status = std::process::Command::new("bash")
            .arg(script)
            .args(args)
            .env("TETHER_REDIS_CLUSTER_PORTS", ports)
            .status()
            .expect("run scripts/redis-cluster.sh");
        assert!(status.success(), "scripts/redis-cluster.sh {args:?} failed");
    }

    fn start_on_cluster(prefix: &str) -> (RedisEngine, Arc<Recorder>, ControlReceiver) {
        start_on(prefix, seeds())
    }

    fn start_on(prefix: &str, seeds: Vec<String>) -> (RedisEngine, Arc<Recorder>, ControlReceiver) {
        let recorder = Arc::new(Recorder::default());
        let options = RedisOptions {
            deployment: RedisDeployment::Cluster(seeds),
            prefix: prefix.to_owned(),
            connect_timeout: Duration::from_secs(1),
            io_timeout: Duration::from_secs(1),
            presence_ttl: Duration::from_secs(60),
            presence_update_interval: Duration::from_secs(27),
            fanout: true,
            breaker: None,
            tls: None,
        };
        let (engine, control) = RedisEngine::start(options, recorder.clone()).expect("start");
        (engine, recorder, control)
    }

    /// Deletes the prefix's keys on every master (one `DEL` per key: they span slots).
    async fn cleanup_cluster(prefix: &str) {
        cleanup_nodes(prefix, seeds()).await;
    }

    async fn cleanup_nodes(prefix: &str, seeds: Vec<String>) {
        for seed in seeds {
            let client = redis::Client::open(seed.as_str()).expect("client");
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .expect("connect");
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{prefix}.*"))
                .query_async(&mut conn)
                .await
                .expect("keys");
            for key in keys {
                let _: () = redis::cmd("DEL")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .expect("del");
            }
        }
    }

    async fn ready(engine: &RedisEngine) {
        for _ in 0..500 {
            if engine.is_ready() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("engine on the cluster never became ready");
    }

    /// Enough channels that every master holds some.
    fn channels() -> Vec<String> {
        let mut channels: Vec<String> = (0..12).map(|i| format!("room:{i}")).collect();
        // Names whose plain hash tag would be empty or escaped.
        channels.extend(["}odd".to_owned(), "~tilde".to_owned(), "a}b{c".to_owned()]);
        channels
    }

    #[tokio::test]
    async fn publications_reach_another_node_in_order_with_history() {
        let prefix = unique_prefix("cluster-pubsub");
        let (a, _, _) = start_on_cluster(&prefix);
        let (b, events, _) = start_on_cluster(&prefix);
        ready(&a).await;
        ready(&b).await;
        let channels = channels();
        for channel in &channels {
            b.subscribe(channel).await.expect("subscribe");
        }
        for n in 0..5 {
            for channel in &channels {
                let published = a
                    .publish(
                        channel,
                        publication(["a", "b", "c", "d", "e"][n]),
                        &history(),
                    )
                    .await
                    .expect("publish");
                assert_eq!(published.position.expect("position").offset, n as u64 + 1);
            }
        }
        eventually(|| events.publications.lock().len() == 5 * channels.len()).await;
        for channel in &channels {
            let got: Vec<(u64, Bytes)> = events
                .publications
                .lock()
                .iter()
                .filter(|(c, _, _)| c == channel)
                .map(|(_, p, d)| (p.as_ref().map_or(0, |p| p.offset), d.clone()))
                .collect();
            let expected: Vec<(u64, Bytes)> = ["a", "b", "c", "d", "e"]
                .iter()
                .enumerate()
                .map(|(i, d)| (i as u64 + 1, Bytes::from_static(d.as_bytes())))
                .collect();
            assert_eq!(got, expected, "{channel}");
            // History (size 3) is read from the channel's master, in one script.
            let page = b
                .history(channel, &query(None, None))
                .await
                .expect("history");
            assert_eq!(page.top.offset, 5);
            let offsets: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
            assert_eq!(offsets, [3, 4, 5], "{channel}");
            let since = StreamPosition {
                offset: 4,
                epoch: page.top.epoch.clone(),
            };
            let page = a
                .history(channel, &query(Some(since), None))
                .await
                .expect("recovery");
            assert_eq!(page.publications.len(), 1);
        }
        assert!(events.insufficient.lock().is_empty());
        // Unsubscribed: nothing more arrives.
        for channel in &channels {
            b.unsubscribe(channel).await.expect("unsubscribe");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.publish(&channels[0], publication("f"), &history())
            .await
            .expect("publish");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(events.publications.lock().len(), 5 * channels.len());
        cleanup_cluster(&prefix).await;
    }

    /// The lifecycle scripts touch keys they build themselves: the cluster accepts them
    /// because they share the declared keys' slot. Statuses span slots, one per user.
    #[tokio::test]
    async fn lifecycle_and_user_statuses_work_on_the_cluster() {
        let prefix = unique_prefix("cluster-lifecycle");
        let (a, _, _) = start_on_cluster(&prefix);
        let (b, _, _) = start_on_cluster(&prefix);
        one_key_two_nodes(&a, &b).await;
        // Reaping and a rejoin, on the cluster too.
        apply(&a, "node-a", &[hold("z")], T0 + 50_000).await;
        assert_eq!(
            tick_reaping(&b, "node-b", T0 + 90_000, T0 + 60_000).await,
            downs(&["z"])
        );
        assert!(tick(&a, "node-a", T0 + 90_001).await.rejoin);
        a.lifecycle_leave("node-a", T0 + 90_002)
            .await
            .expect("leave");
        let users: Vec<String> = (0..12).map(|i| format!("user-{i}")).collect();
        statuses(&a, &users).await;
        cleanup_cluster(&prefix).await;
    }

    #[tokio::test]
    async fn idempotency_epochs_presence_and_control_work_across_slots() {
        let prefix = unique_prefix("cluster-state");
        let (a, _, _) = start_on_cluster(&prefix);
        let (b, events, mut control) = start_on_cluster(&prefix);
        ready(&a).await;
        ready(&b).await;
        let idempotent = PublishOptions {
            idempotency_key: Some("k1".to_owned()),
            ..history()
        };
        let first = a
            .publish("orders", publication("x"), &idempotent)
            .await
            .expect("publish");
        let again = b
            .publish("orders", publication("x"), &idempotent)
            .await
            .expect("publish");
        assert_eq!(again.position, first.position);
        assert!(again.from_cache);

        // Lost keys: a new epoch, and a position from the old one is refused.
        let old = first.position.expect("position");
        cleanup_cluster(&prefix).await;
        let fresh = publish_positioned(&a, "orders", "y").await;
        assert_eq!(fresh.offset, 1);
        assert_ne!(fresh.epoch, old.epoch);
        assert_eq!(
            b.history("orders", &query(Some(old), None)).await,
            Err(BrokerError::UnrecoverablePosition)
        );

        // Presence written on one node is seen on the other.
        let info = |user: &str, client: &str| ClientInfo {
            user: user.into(),
            client: client.into(),
            ..Default::default()
        };
        for channel in channels() {
            a.add_presence(&channel, "c1", info("u1", "c1"))
                .await
                .expect("add");
            b.add_presence(&channel, "c2", info("u2", "c2"))
                .await
                .expect("add");
            let stats = b.presence_stats(&channel).await.expect("stats");
            assert_eq!(stats.num_clients, 2, "{channel}");
            a.remove_presence(&channel, "c1").await.expect("remove");
            let presence = a.presence(&channel).await.expect("presence");
            assert_eq!(presence.keys().collect::<Vec<_>>(), ["c2"], "{channel}");
        }

        // Joins travel over the channel's sharded Pub/Sub; control payloads over the
        // control channel, to every node.
        b.subscribe("lobby").await.expect("subscribe");
        a.publish_join("lobby", &info("u1", "c9"))
            .await
            .expect("join");
        eventually(|| events.joins.lock().as_slice() == ["c9"]).await;
        a.publish_control(Bytes::from_static(b"hello"))
            .await
            .expect("control");
        let payload = tokio::time::timeout(Duration::from_secs(2), control.recv())
            .await
            .expect("control in time");
        assert_eq!(payload.as_deref(), Some(&b"hello"[..]));
        cleanup_cluster(&prefix).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_master_is_resubscribed_and_its_channels_recover() {
        if std::env::var("TETHER_TEST_REDIS_CLUSTER").is_ok() {
            // An external cluster is not ours to restart.
            return;
        }
        tokio::task::spawn_blocking(|| cluster_script(FAULT_PORTS, &["start"]))
            .await
            .expect("start");
        let prefix = unique_prefix("cluster-restart");
        let (a, _, _) = start_on(&prefix, urls(FAULT_PORTS));
        let (b, events, _) = start_on(&prefix, urls(FAULT_PORTS));
        ready(&a).await;
        ready(&b).await;
        let channels = channels();
        for channel in &channels {
            b.subscribe(channel).await.expect("subscribe");
            a.publish(channel, publication("before"), &history())
                .await
                .expect("publish");
        }
        eventually(|| events.publications.lock().len() == channels.len()).await;

        // The channels whose keys live on the node about to restart (it answers for them
        // rather than redirecting).
        let victim = FAULT_PORTS[1];
        let client = redis::Client::open(format!("redis://127.0.0.1:{victim}")).expect("client");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let mut on_victim = Vec::new();
        for channel in &channels {
            let key = Keys::new(&prefix, Layout::Cluster).meta(channel);
            let here: redis::RedisResult<i64> =
                redis::cmd("EXISTS").arg(key).query_async(&mut conn).await;
            if here == Ok(1) {
                on_victim.push(channel.clone());
            }
        }
        drop(conn);
        assert!(!on_victim.is_empty(), "no channel on port {victim}");

        tokio::task::spawn_blocking(move || {
            cluster_script(FAULT_PORTS, &["restart", &victim.to_string()]);
        })
        .await
        .expect("restart");
        // After resubscribing, every channel of the restarted node is reported (its
        // subscribers must recover), and the node is ready again.
        for _ in 0..1000 {
            let reported = events.insufficient.lock().clone();
            if b.is_ready() && on_victim.iter().all(|c| reported.contains(c)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let reported = events.insufficient.lock().clone();
        for channel in &on_victim {
            assert!(
                reported.contains(channel),
                "{channel} not reported: {reported:?}"
            );
        }
        assert!(b.is_ready());

        // Delivery resumes on every channel; the restarted node lost its data, so its
        // channels start a new epoch at offset 1.
        events.publications.lock().clear();
        for channel in &channels {
            a.publish(channel, publication("after"), &history())
                .await
                .expect("publish after the restart");
        }
        eventually(|| {
            let got = events.publications.lock();
            channels
                .iter()
                .all(|c| got.iter().any(|(g, _, d)| g == c && d.as_ref() == b"after"))
        })
        .await;
        for channel in &on_victim {
            let page = b
                .history(channel, &query(None, None))
                .await
                .expect("history");
            assert_eq!(page.top.offset, 1, "{channel}: a fresh epoch");
        }
        cleanup_nodes(&prefix, urls(FAULT_PORTS)).await;
    }
}
