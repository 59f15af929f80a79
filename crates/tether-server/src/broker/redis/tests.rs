//! Tests against the Redis on 127.0.0.1:6379 (override with `TETHER_TEST_REDIS`). Each test
//! uses its own key prefix and deletes its keys at the end.

use std::time::Duration;

use parking_lot::Mutex;

use super::*;
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
        addresses: vec![address()],
        prefix: prefix.to_owned(),
        connect_timeout: Duration::from_secs(1),
        io_timeout: Duration::from_secs(1),
        presence_ttl: Duration::from_secs(60),
        presence_update_interval: Duration::from_secs(27),
        fanout: true,
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

fn query(since: Option<StreamPosition>, limit: Option<usize>) -> HistoryQuery {
    HistoryQuery {
        since,
        limit,
        reverse: false,
        meta_ttl: Duration::from_secs(600),
    }
}

async fn eventually(mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
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
        let published = engine
            .publish("ch", publication(data), &history())
            .await
            .expect("publish");
        let position = published.position.expect("position");
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
    let first = engine
        .publish("ch", publication("a"), &history())
        .await
        .expect("publish")
        .position
        .expect("position");
    // Stands in for Redis restarting empty: every key of this engine is gone.
    cleanup(&prefix).await;
    let second = engine
        .publish("ch", publication("b"), &history())
        .await
        .expect("publish")
        .position
        .expect("position");
    assert_ne!(second.epoch, first.epoch);
    assert_eq!(second.offset, 1);
    assert_eq!(
        engine.history("ch", &query(Some(first), Some(10))).await,
        Err(BrokerError::UnrecoverablePosition)
    );
    cleanup(&prefix).await;
}

#[tokio::test]
async fn a_position_beyond_the_top_rotates_the_epoch() {
    let prefix = unique_prefix("beyond");
    let (engine, _) = start(&prefix);
    let top = engine
        .publish("ch", publication("a"), &history())
        .await
        .expect("publish")
        .position
        .expect("position");
    let ahead = StreamPosition {
        offset: 5,
        epoch: top.epoch.clone(),
    };
    assert_eq!(
        engine.history("ch", &query(Some(ahead), Some(10))).await,
        Err(BrokerError::UnrecoverablePosition),
        "writes the reader saw are gone: never recoverable"
    );
    let page = engine
        .history("ch", &query(None, Some(0)))
        .await
        .expect("history");
    assert_ne!(page.top.epoch, top.epoch);
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
        addresses: vec!["redis://127.0.0.1:1".to_owned()],
        prefix: "tether-test-down".to_owned(),
        connect_timeout: Duration::from_millis(200),
        io_timeout: Duration::from_millis(200),
        presence_ttl: Duration::from_secs(60),
        presence_update_interval: Duration::from_secs(27),
        fanout: true,
    };
    let (engine, _control) = RedisEngine::start(options, recorder).expect("start");
    assert!(matches!(
        engine.publish("ch", publication("a"), &history()).await,
        Err(BrokerError::Unavailable(_))
    ));
    assert!(engine.subscribe("ch").await.is_err());
    assert!(!engine.is_ready());
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
