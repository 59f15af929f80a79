//! The PostgreSQL outbox consumer against the real PostgreSQL (and Redis): rows reach
//! subscribers in order in every payload form and column type (also `serial` ids, NULL
//! payloads, a schema-qualified name), bad rows are skipped and counted, a rolled-back
//! transaction publishes nothing, `NOTIFY` wakes a partition, rows wait in the table while the
//! engine fails and then publish in order, a reused id still publishes, an unreadable table
//! stops the start, several nodes (blocking or try-lock) consume each row once in order, and
//! the `tether` binary publishes 10,000 rows exactly once, in order per partition, while it is
//! killed twice and its Redis restarted once. Each test owns one table (`<test>_<suffix>`,
//! also its consumer's name, so parallel tests never share a partition lock) and drops it at
//! the end.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::support::postgres::{Outbox, PrivateRedis};
use crate::support::{
    self, Client, Config, EngineKind, Namespace, NamespaceOptions, TestServer, http,
};

/// The namespace the tests publish in: history and recovery on.
const NS: &str = "ob";

/// How long a test waits for something that should take well under a second.
const WITHIN: Duration = Duration::from_secs(10);

/// A server config with the `ob` namespace (history of 10,000, recovery forced) and these
/// consumers.
fn server_config(consumers: Vec<support::ConsumerConfig>) -> Config {
    let mut config = support::config();
    config.channel.namespaces.push(Namespace {
        name: NS.to_owned(),
        options: NamespaceOptions {
            history_size: 10_000,
            history_ttl: Duration::from_secs(600),
            force_recovery: true,
            allow_subscribe_for_client: true,
            allow_history_for_client: true,
            ..Default::default()
        },
    });
    config.consumers = consumers;
    config
}

/// The next `count` publications of `channel` as `(offset, data)`; fails the test when they
/// do not all come within [`WITHIN`].
async fn publications(client: &mut Client, channel: &str, count: usize) -> Vec<(u64, Value)> {
    let deadline = tokio::time::Instant::now() + WITHIN;
    let mut out = Vec::new();
    while out.len() < count {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let message = client
            .next_within(left)
            .await
            .unwrap_or_else(|| panic!("{} of {count} publications came: {out:?}", out.len()));
        let push = &message["push"];
        if push["channel"] == json!(channel) && push.get("pub").is_some() {
            out.push((
                push["pub"]["offset"].as_u64().unwrap_or(0),
                push["pub"]["data"].clone(),
            ));
        }
    }
    out
}

/// The channel's whole history through the server API: `(offset, data)` oldest first.
async fn history(addr: SocketAddr, channel: &str) -> (String, Vec<(u64, Value)>) {
    let (status, body) = http::api(
        addr,
        "history",
        json!({ "channel": channel, "limit": -1 }),
        Some(support::API_KEY),
    )
    .await
    .expect("api reachable");
    assert_eq!(status, 200, "history: {body}");
    let result = &body["result"];
    assert!(result.is_object(), "history: {body}");
    let publications = result["publications"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|p| (p["offset"].as_u64().unwrap_or(0), p["data"].clone()))
                .collect()
        })
        .unwrap_or_default();
    (
        result["epoch"].as_str().unwrap_or_default().to_owned(),
        publications,
    )
}

/// `tether_consumer_messages_total` of `consumer` on `addr`; 0 before it is exported.
async fn messages_total(addr: SocketAddr, consumer: &str) -> f64 {
    consumer_metric(addr, "tether_consumer_messages_total", consumer, &[]).await
}

/// `tether_consumer_errors_total` of `consumer` and `kind` (`skipped`, `retried`) on `addr`.
async fn errors_total(addr: SocketAddr, consumer: &str, kind: &str) -> f64 {
    consumer_metric(
        addr,
        "tether_consumer_errors_total",
        consumer,
        &[("kind", kind)],
    )
    .await
}

/// `tether_consumer_lag` of `consumer` on `addr`.
async fn lag(addr: SocketAddr, consumer: &str) -> f64 {
    consumer_metric(addr, "tether_consumer_lag", consumer, &[]).await
}

async fn consumer_metric(
    addr: SocketAddr,
    name: &str,
    consumer: &str,
    labels: &[(&str, &str)],
) -> f64 {
    let mut all = vec![("consumer", consumer)];
    all.extend_from_slice(labels);
    http::metric_with(addr, name, &all).await.unwrap_or(0.0)
}

/// A client of the server subscribed to `channel`.
async fn subscriber(server: &TestServer, channel: &str) -> Client {
    let mut client = Client::connect(server, "reader").await;
    client.subscribe(json!({ "channel": channel })).await;
    client
}

#[tokio::test]
async fn rows_of_every_form_reach_a_subscriber_in_order_and_bad_rows_are_skipped() {
    let outbox = Outbox::create("outbox_forms", "JSONB").await;
    let name = outbox.table.clone();
    let server = support::start(server_config(vec![outbox.consumer(&name, 1)])).await;
    let channel = format!("{NS}:{name}");
    let mut client = subscriber(&server, &channel).await;

    let envelope_string = json!({ "channel": channel, "data": { "n": 3 } }).to_string();
    let rows: [(&str, Value); 8] = [
        ("publish", json!({ "channel": channel, "data": { "n": 1 } })),
        (
            "",
            json!({ "method": "publish", "payload": { "channel": channel, "data": { "n": 2 } } }),
        ),
        (
            "",
            json!({ "method": "publish", "payload": envelope_string }),
        ),
        // No channel: a bad request, skipped.
        ("publish", json!({ "data": { "n": -1 } })),
        // Not a method consumers run.
        ("presence", json!({ "channel": channel })),
        // An envelope without a payload.
        ("", json!({ "method": "publish" })),
        (
            "broadcast",
            json!({ "channels": [channel], "data": { "n": 4 } }),
        ),
        ("publish", json!({ "channel": channel, "data": { "n": 5 } })),
    ];
    for (method, payload) in &rows {
        outbox.insert(method, &payload.to_string(), 0).await;
    }

    let got = publications(&mut client, &channel, 5).await;
    let ns: Vec<i64> = got.iter().map(|(_, d)| d["n"].as_i64().unwrap()).collect();
    assert_eq!(ns, [1, 2, 3, 4, 5]);
    let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, [1, 2, 3, 4, 5]);
    assert!(outbox.drained_within(WITHIN).await, "the outbox kept rows");
    // Counted before the rows are deleted, so final once the table is empty.
    assert_eq!(messages_total(server.addr, &name).await, 8.0);
    assert_eq!(errors_total(server.addr, &name, "skipped").await, 3.0);
    let (_, kept) = history(server.addr, &channel).await;
    assert_eq!(kept.len(), 5, "{kept:?}");

    server.stop().await;
    outbox.drop_table().await;
}

#[tokio::test]
async fn a_rolled_back_transaction_publishes_nothing() {
    let outbox = Outbox::create("outbox_rollback", "JSONB").await;
    let name = outbox.table.clone();
    let server = support::start(server_config(vec![outbox.consumer(&name, 1)])).await;
    let channel = format!("{NS}:{name}");
    let mut client = subscriber(&server, &channel).await;

    let sql = outbox.insert_sql();
    let mut db = crate::support::postgres::connect().await;
    let tx = db.transaction().await.unwrap();
    for n in 100..103 {
        let payload = json!({ "channel": channel, "data": { "n": n } }).to_string();
        tx.execute(&sql, &[&"publish", &payload, &0i32])
            .await
            .unwrap();
    }
    // Uncommitted rows are invisible to the consumer while the transaction is open.
    assert_eq!(outbox.count().await, 0);
    tx.rollback().await.unwrap();
    for n in [1, 2] {
        let payload = json!({ "channel": channel, "data": { "n": n } }).to_string();
        outbox.insert("publish", &payload, 0).await;
    }

    let got = publications(&mut client, &channel, 2).await;
    let ns: Vec<i64> = got.iter().map(|(_, d)| d["n"].as_i64().unwrap()).collect();
    assert_eq!(ns, [1, 2]);
    let (_, kept) = history(server.addr, &channel).await;
    let kept: Vec<Value> = kept.into_iter().map(|(_, d)| d["n"].clone()).collect();
    assert_eq!(kept, [json!(1), json!(2)]);
    assert!(outbox.drained_within(WITHIN).await);

    server.stop().await;
    outbox.drop_table().await;
}

#[tokio::test]
async fn a_notification_wakes_its_partition_long_before_the_poll_interval() {
    let outbox = Outbox::create("outbox_notify", "JSONB").await;
    let name = outbox.table.clone();
    let notify_channel = format!("{name}_wake");
    // Compat §3.2's trigger, under names of this test.
    outbox
        .db
        .batch_execute(&format!(
            "CREATE FUNCTION {name}_notify() RETURNS TRIGGER AS $$
             BEGIN PERFORM pg_notify('{notify_channel}', NEW.partition::text); RETURN NEW; END;
             $$ LANGUAGE plpgsql;
             CREATE TRIGGER {name}_trigger AFTER INSERT ON {name}
             FOR EACH ROW EXECUTE FUNCTION {name}_notify();"
        ))
        .await
        .expect("install the notify trigger");
    let mut consumer = outbox.consumer(&name, 2);
    consumer.postgresql.partition_poll_interval = Duration::from_secs(60);
    consumer.postgresql.partition_notification_channel = notify_channel.clone();
    consumer.postgresql.dsn = format!(
        "{}?application_name={name}",
        crate::support::postgres::dsn()
    );
    let server = support::start(server_config(vec![consumer])).await;
    let channel = format!("{NS}:{name}");
    let mut client = subscriber(&server, &channel).await;

    // Wait until the consumer's LISTEN connection is up (a notification sent before that
    // would be lost and polling would find the row only after a minute) and both workers
    // have committed their first, empty, batch and wait: the connections are told apart by
    // the application name in the consumer's DSN.
    let listening = format!("LISTEN \"{notify_channel}\"");
    let deadline = Instant::now() + WITHIN;
    loop {
        let row = outbox
            .db
            .query_one(
                "SELECT count(*) FILTER (WHERE query = $2), \
                        count(*) FILTER (WHERE query = 'COMMIT' AND state = 'idle') \
                 FROM pg_stat_activity WHERE application_name = $1",
                &[&name, &listening],
            )
            .await
            .unwrap();
        if row.get::<_, i64>(0) == 1 && row.get::<_, i64>(1) == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the consumer never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let started = Instant::now();
    for partition in [1, 0] {
        let payload = json!({ "channel": channel, "data": { "p": partition } }).to_string();
        outbox.insert("publish", &payload, partition).await;
        let got = publications(&mut client, &channel, 1).await;
        assert_eq!(got[0].1["p"], json!(partition));
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woken only after {:?}",
        started.elapsed()
    );

    server.stop().await;
    outbox.drop_table().await;
    outbox_cleanup_function(&format!("{name}_notify")).await;
}

/// Drops a test's trigger function (its trigger went with the table).
async fn outbox_cleanup_function(function: &str) {
    crate::support::postgres::connect()
        .await
        .batch_execute(&format!("DROP FUNCTION IF EXISTS {function}()"))
        .await
        .expect("drop the trigger function");
}

#[tokio::test]
async fn text_bytea_and_json_payload_columns_work() {
    for column in ["TEXT", "BYTEA", "JSON"] {
        let outbox = Outbox::create(&format!("outbox_{}", column.to_lowercase()), column).await;
        let name = outbox.table.clone();
        // Schema-qualified, as a user may write it.
        let mut consumer = outbox.consumer(&name, 2);
        consumer.postgresql.outbox_table_name = format!("public.{name}");
        let server = support::start(server_config(vec![consumer])).await;
        let channel = format!("{NS}:{name}");
        let mut client = subscriber(&server, &channel).await;
        for (n, partition) in [(1, 0), (2, 1), (3, 0)] {
            let payload = json!({ "channel": channel, "data": { "n": n } }).to_string();
            outbox.insert("publish", &payload, partition).await;
        }
        let envelope = json!({
            "method": "publish",
            "payload": { "channel": channel, "data": { "n": 4 } },
        });
        outbox.insert("", &envelope.to_string(), 1).await;
        // Partition 5 is not one of the consumer's two: never consumed.
        let stray = json!({ "channel": channel, "data": { "n": 99 } }).to_string();
        outbox.insert("publish", &stray, 5).await;

        let got = publications(&mut client, &channel, 4).await;
        let mut ns: Vec<i64> = got.iter().map(|(_, d)| d["n"].as_i64().unwrap()).collect();
        ns.sort_unstable();
        assert_eq!(ns, [1, 2, 3, 4], "{column}");
        let deadline = Instant::now() + WITHIN;
        while outbox.count().await > 1 {
            assert!(Instant::now() < deadline, "{column}: rows left behind");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left: i32 = outbox
            .db
            .query_one(&format!("SELECT partition FROM {name}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 5, "{column}");
        assert_eq!(
            errors_total(server.addr, &name, "skipped").await,
            0.0,
            "{column}"
        );

        server.stop().await;
        outbox.drop_table().await;
    }
}

#[tokio::test]
async fn null_payloads_and_serial_ids_do_not_hold_a_partition() {
    let outbox = Outbox::create("outbox_serial", "JSONB").await;
    let name = outbox.table.clone();
    // `id SERIAL` (an integer) and a nullable payload, as many hand-made tables have.
    outbox
        .db
        .batch_execute(&format!(
            "ALTER TABLE {name} ALTER COLUMN id TYPE INTEGER, \
             ALTER COLUMN payload DROP NOT NULL"
        ))
        .await
        .unwrap();
    let server = support::start(server_config(vec![outbox.consumer(&name, 1)])).await;
    let channel = format!("{NS}:{name}");
    let mut client = subscriber(&server, &channel).await;
    let payload = |n: i64| json!({ "channel": channel, "data": { "n": n } }).to_string();
    outbox.insert("publish", &payload(1), 0).await;
    outbox
        .db
        .execute(
            &format!("INSERT INTO {name} (method, payload, partition) VALUES ('publish', NULL, 0)"),
            &[],
        )
        .await
        .unwrap();
    outbox.insert("publish", &payload(2), 0).await;

    let got = publications(&mut client, &channel, 2).await;
    let ns: Vec<i64> = got.iter().map(|(_, d)| d["n"].as_i64().unwrap()).collect();
    assert_eq!(ns, [1, 2]);
    assert!(outbox.drained_within(WITHIN).await);
    assert_eq!(errors_total(server.addr, &name, "skipped").await, 1.0);

    server.stop().await;
    outbox.drop_table().await;
}

#[tokio::test]
async fn a_table_the_consumer_cannot_read_stops_the_start() {
    let outbox = Outbox::create("outbox_unreadable", "INTEGER").await;
    let name = outbox.table.clone();
    let error = support::start_error(server_config(vec![outbox.consumer(&name, 1)])).await;
    assert!(
        error.contains(&format!("error initializing postgresql consumer ({name})"))
            && error.contains("payload"),
        "{error}"
    );

    let mut consumer = outbox.consumer(&name, 1);
    consumer.postgresql.outbox_table_name = format!("{name}_missing");
    let error = support::start_error(server_config(vec![consumer])).await;
    assert!(error.contains("does not exist"), "{error}");
    outbox.drop_table().await;
}

#[tokio::test]
async fn rows_wait_in_the_outbox_while_the_engine_is_down_and_then_publish_in_order() {
    let outbox = Outbox::create("outbox_engine_down", "JSONB").await;
    let name = outbox.table.clone();
    let proxy = support::cluster::FaultProxy::start(&support::cluster::redis_url()).await;
    let prefix = support::cluster::unique_prefix("outbox-engine-down");
    let mut config = server_config(vec![outbox.consumer(&name, 1)]);
    config.engine.kind = EngineKind::Redis;
    config.engine.redis.address = vec![proxy.url.clone()];
    config.engine.redis.prefix = prefix.clone();
    let server = support::start(config).await;
    server.wait_ready().await;
    let channel = format!("{NS}:{name}");

    proxy.cut();
    for n in 0..5 {
        let payload = json!({ "channel": channel, "data": { "n": n } }).to_string();
        outbox.insert("publish", &payload, 0).await;
    }
    // The publishes fail with an internal error: retried, and nothing is deleted meanwhile.
    let deadline = Instant::now() + WITHIN;
    while errors_total(server.addr, &name, "retried").await < 2.0 {
        assert!(Instant::now() < deadline, "no retries while Redis was cut");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        outbox.count().await,
        5,
        "rows deleted while their publish failed"
    );
    assert_eq!(messages_total(server.addr, &name).await, 0.0);
    // The rows waiting show as the consumer's lag (counted every 2 s).
    let deadline = Instant::now() + WITHIN;
    while lag(server.addr, &name).await != 5.0 {
        assert!(Instant::now() < deadline, "the lag never showed the 5 rows");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    proxy.restore();
    assert!(outbox.drained_within(Duration::from_secs(20)).await);
    let deadline = Instant::now() + WITHIN;
    while lag(server.addr, &name).await != 0.0 {
        assert!(Instant::now() < deadline, "the lag stayed above 0");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, kept) = history(server.addr, &channel).await;
    let ns: Vec<Value> = kept.iter().map(|(_, d)| d["n"].clone()).collect();
    assert_eq!(ns, [json!(0), json!(1), json!(2), json!(3), json!(4)]);
    let offsets: Vec<u64> = kept.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, [1, 2, 3, 4, 5]);
    assert_eq!(errors_total(server.addr, &name, "skipped").await, 0.0);

    server.stop().await;
    support::cluster::delete_keys(&prefix).await;
    outbox.drop_table().await;
}

/// Two nodes on the shared Redis with one consumer (`use_try_lock` as given) on one table:
/// `rows` rows over 4 partitions, inserted in transactions of 20 after both run, each
/// published once, in order per partition (one history per partition channel, so the order
/// across nodes shows in the offsets).
async fn two_nodes_share_a_table(test: &str, use_try_lock: bool) {
    const PARTITIONS: i32 = 4;
    const PER_PARTITION: i64 = 250;
    let outbox = Outbox::create(test, "JSONB").await;
    let name = outbox.table.clone();
    let prefix = support::cluster::unique_prefix(test);
    let node_config = || {
        let mut consumer = outbox.consumer(&name, PARTITIONS as u32);
        consumer.postgresql.use_try_lock = use_try_lock;
        consumer.postgresql.partition_select_limit = 10;
        consumer.postgresql.partition_poll_interval = Duration::from_millis(20);
        let mut config = server_config(vec![consumer]);
        config.engine.kind = EngineKind::Redis;
        config.engine.redis.address = vec![support::cluster::redis_url()];
        config.engine.redis.prefix = prefix.clone();
        config
    };
    let one = support::start(node_config()).await;
    let two = support::start(node_config()).await;
    one.wait_ready().await;
    two.wait_ready().await;

    let mut db = crate::support::postgres::connect().await;
    let sql = outbox.insert_sql();
    for chunk in 0..PER_PARTITION / 5 {
        let tx = db.transaction().await.unwrap();
        for seq in chunk * 5..chunk * 5 + 5 {
            for p in 0..PARTITIONS {
                let payload =
                    json!({ "channel": format!("{NS}:{name}_p{p}"), "data": { "p": p, "seq": seq } })
                        .to_string();
                tx.execute(&sql, &[&"publish", &payload, &p]).await.unwrap();
            }
        }
        tx.commit().await.unwrap();
    }
    assert!(
        outbox.drained_within(Duration::from_secs(60)).await,
        "{} rows left",
        outbox.count().await
    );

    for p in 0..PARTITIONS {
        let (_, kept) = history(one.addr, &format!("{NS}:{name}_p{p}")).await;
        let seqs: Vec<i64> = kept
            .iter()
            .map(|(_, d)| d["seq"].as_i64().unwrap())
            .collect();
        let expected: Vec<i64> = (0..PER_PARTITION).collect();
        assert_eq!(seqs, expected, "partition {p}: each row once, in order");
        let offsets: Vec<u64> = kept.iter().map(|(o, _)| *o).collect();
        let expected: Vec<u64> = (1..=PER_PARTITION as u64).collect();
        assert_eq!(offsets, expected, "partition {p}");
    }
    let ran_one = messages_total(one.addr, &name).await;
    let ran_two = messages_total(two.addr, &name).await;
    eprintln!("{test}: node one ran {ran_one} rows, node two {ran_two}");
    // No row ran twice: nobody crashed, so a second run would be a lock failure.
    assert_eq!(
        ran_one + ran_two,
        (PER_PARTITION * PARTITIONS as i64) as f64
    );

    one.stop().await;
    two.stop().await;
    support::cluster::delete_keys(&prefix).await;
    outbox.drop_table().await;
}

#[tokio::test]
async fn two_nodes_publish_each_row_once_in_order() {
    two_nodes_share_a_table("outbox_two_nodes", false).await;
}

#[tokio::test]
async fn two_nodes_with_try_lock_publish_each_row_once_in_order() {
    two_nodes_share_a_table("outbox_try_lock", true).await;
}

/// One publication as a watcher saw it: the stream epoch, its offset, and the row's `seq`.
type Seen = (String, u64, i64);

/// What a [`watch_channel`] task hands back.
#[derive(Debug, Default)]
struct Watched {
    /// Every publication seen live or recovered, in arrival order.
    seen: Vec<Seen>,
    /// Resubscriptions the server answered "not recovered": `(old epoch, new epoch)`.
    lost: Vec<(String, String)>,
    /// Connections made.
    connections: usize,
}

/// What the test sees of a [`watch_channel`] task while it runs.
#[derive(Debug, Default)]
struct WatcherState {
    /// Subscribed right now.
    live: AtomicBool,
    /// Successful subscriptions so far.
    subscriptions: AtomicUsize,
}

/// A subscriber of `channel` that lives through node kills and Redis restarts: it
/// (re)connects to whatever node `node` names, subscribes with recovery from the last
/// position it saw, and records every publication (live or recovered) until `stop` is set.
/// `state` tells whether it is subscribed now and how many subscriptions it made.
async fn watch_channel(
    channel: String,
    mut node: watch::Receiver<Option<SocketAddr>>,
    state: Arc<WatcherState>,
    stop: Arc<AtomicBool>,
) -> Watched {
    let live = &state.live;
    let mut watched = Watched::default();
    let mut position: Option<(String, u64)> = None;
    while !stop.load(Ordering::SeqCst) {
        live.store(false, Ordering::SeqCst);
        let addr = *node.borrow_and_update();
        let Some(addr) = addr else {
            let _ = tokio::time::timeout(Duration::from_millis(100), node.changed()).await;
            continue;
        };
        let url = format!("ws://{addr}/connection/websocket");
        let Ok(Ok((mut ws, _))) = tokio::time::timeout(
            Duration::from_secs(2),
            tokio_tungstenite::connect_async(url),
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        watched.connections += 1;
        let mut subscribe = json!({ "channel": channel });
        if let Some((epoch, offset)) = &position {
            subscribe["recover"] = json!(true);
            subscribe["epoch"] = json!(epoch);
            subscribe["offset"] = json!(offset);
        }
        let hello = format!(
            "{}\n{}",
            json!({ "id": 1, "connect": { "token": support::user_token("watcher") } }),
            json!({ "id": 2, "subscribe": subscribe }),
        );
        if ws.send(Message::Text(hello.into())).await.is_err() {
            continue;
        }
        // Reads until the connection ends, the subscription is ended by the server, or
        // `stop`; every 200 ms of silence `stop` is looked at again.
        'connection: loop {
            let frame = match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
                Err(_) if stop.load(Ordering::SeqCst) => break 'connection,
                Err(_) => continue,
                Ok(Some(Ok(frame))) => frame,
                Ok(_) => break 'connection,
            };
            let Message::Text(text) = frame else {
                if matches!(frame, Message::Close(_)) {
                    break 'connection;
                }
                continue;
            };
            for line in text.split('\n').filter(|l| !l.trim().is_empty()) {
                let message: Value = serde_json::from_str(line).expect("a JSON message");
                if message == json!({}) {
                    let _ = ws.send(Message::Text("{}".into())).await;
                    continue;
                }
                if message.get("error").is_some() {
                    // The node is not ready for this yet (its Redis restarting, say).
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    break 'connection;
                }
                if message["id"] == json!(2) {
                    let result = &message["subscribe"];
                    let epoch = result["epoch"].as_str().unwrap_or_default().to_owned();
                    if let Some((old, _)) = &position
                        && result["recovered"] != json!(true)
                    {
                        watched.lost.push((old.clone(), epoch.clone()));
                    }
                    let top = result["offset"].as_u64().unwrap_or(0);
                    position = Some((epoch.clone(), top));
                    for publication in result["publications"].as_array().into_iter().flatten() {
                        let offset = publication["offset"].as_u64().unwrap_or(0);
                        let seq = publication["data"]["seq"].as_i64().expect("a seq");
                        watched.seen.push((epoch.clone(), offset, seq));
                    }
                    state.subscriptions.fetch_add(1, Ordering::SeqCst);
                    live.store(true, Ordering::SeqCst);
                    continue;
                }
                let push = &message["push"];
                if let Some(publication) = push.get("pub") {
                    let Some((epoch, top)) = position.as_mut() else {
                        continue;
                    };
                    let offset = publication["offset"].as_u64().unwrap_or(0);
                    let seq = publication["data"]["seq"].as_i64().expect("a seq");
                    watched.seen.push((epoch.clone(), offset, seq));
                    *top = offset;
                } else if push.get("unsubscribe").is_some() || push.get("disconnect").is_some() {
                    // Insufficient state (the engine's Redis reconnected) or the node going:
                    // resubscribe from the last position.
                    break 'connection;
                }
            }
        }
        live.store(false, Ordering::SeqCst);
    }
    watched
}

/// The `tether` node config of the fault test: the Redis engine on `redis`, the `ob`
/// namespace, and `consumer`.
fn fault_node_config(redis: &str, prefix: &str, consumer: &Value) -> Value {
    json!({
        "engine": { "type": "redis", "redis": { "address": redis, "prefix": prefix } },
        "channel": {
            "namespaces": [{
                "name": NS,
                "history_size": 10_000,
                "history_ttl": "600s",
                "force_recovery": true,
                "allow_subscribe_for_client": true,
                "allow_history_for_client": true,
            }],
        },
        "consumers": [consumer],
    })
}

/// Waits until `condition` holds, polling every 20 ms; fails the test after `within`.
async fn until(what: &str, within: Duration, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The fault test: the `tether` binary on the Redis engine (a private
/// `redis-server`) consumes 10,000 rows over 4 partitions, inserted in small transactions
/// while the node is killed with SIGKILL and restarted twice and its Redis restarted once.
/// One watcher per partition channel records `(epoch, offset, seq)` of what it receives
/// live and recovers after each reconnect; after the Redis restart (history lost, new epoch)
/// the rest comes from the new epoch's history. Every row must show up as exactly one
/// publication, in `seq` order per partition (offsets rise with `seq` within an epoch,
/// epochs follow each other), and the outbox must end empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_rows_exactly_once_in_order_through_kills_and_a_redis_restart() {
    const PARTITIONS: i32 = 4;
    const PER_PARTITION: i64 = 2500;
    const TOTAL: usize = (PARTITIONS as usize) * (PER_PARTITION as usize);
    let started = Instant::now();
    let mut redis = PrivateRedis::start().await;
    let outbox = Outbox::create("outbox_faults", "JSONB").await;
    let name = outbox.table.clone();
    let notify = format!("{name}_wake");
    outbox
        .db
        .batch_execute(&format!(
            "CREATE FUNCTION {name}_notify() RETURNS TRIGGER AS $$
             BEGIN PERFORM pg_notify('{notify}', NEW.partition::text); RETURN NEW; END;
             $$ LANGUAGE plpgsql;
             CREATE TRIGGER {name}_trigger AFTER INSERT ON {name}
             FOR EACH ROW EXECUTE FUNCTION {name}_notify();"
        ))
        .await
        .expect("install the notify trigger");
    let prefix = support::cluster::unique_prefix("outbox-faults");
    let config = fault_node_config(
        &redis.url(),
        &prefix,
        &outbox.consumer_json(&name, PARTITIONS as u32, &notify),
    );
    let channels: Vec<String> = (0..PARTITIONS)
        .map(|p| format!("{NS}:{name}_p{p}"))
        .collect();

    let mut node = support::Node::start_with(config.clone()).await;
    let (node_tx, node_rx) = watch::channel(Some(node.addr));
    let stop = Arc::new(AtomicBool::new(false));
    let mut watchers = Vec::new();
    let mut states = Vec::new();
    for channel in &channels {
        let state = Arc::new(WatcherState::default());
        states.push(state.clone());
        watchers.push(tokio::spawn(watch_channel(
            channel.clone(),
            node_rx.clone(),
            state,
            stop.clone(),
        )));
    }
    let all_live = || states.iter().all(|s| s.live.load(Ordering::SeqCst));
    until("watchers subscribed", WITHIN, all_live).await;

    // The producer: 8 rows per transaction (2 per partition), paced so the faults below
    // land while rows keep coming.
    let inserted = Arc::new(AtomicUsize::new(0));
    let producer = {
        let inserted = inserted.clone();
        let sql = outbox.insert_sql();
        let channels = channels.clone();
        tokio::spawn(async move {
            let mut db = crate::support::postgres::connect().await;
            let insert = db.prepare(&sql).await.unwrap();
            for pair in 0..PER_PARTITION / 2 {
                let tx = db.transaction().await.unwrap();
                for seq in [pair * 2, pair * 2 + 1] {
                    for p in 0..PARTITIONS {
                        let payload = json!({
                            "channel": channels[p as usize],
                            "data": { "p": p, "seq": seq },
                        })
                        .to_string();
                        tx.execute(&insert, &[&"publish", &payload, &p])
                            .await
                            .unwrap();
                    }
                }
                tx.commit().await.unwrap();
                inserted.fetch_add(8, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(8)).await;
            }
        })
    };
    let reached = |n: usize| {
        let inserted = inserted.clone();
        move || inserted.load(Ordering::SeqCst) >= n
    };

    // Fault 1: SIGKILL, restart; the watchers recover from the history Redis kept.
    until(
        "2,000 rows inserted",
        Duration::from_secs(60),
        reached(2000),
    )
    .await;
    node_tx.send_replace(None);
    node.kill().await;
    node = support::Node::start_with(config.clone()).await;
    node_tx.send_replace(Some(node.addr));
    until("watchers back after kill 1", WITHIN, all_live).await;

    // Fault 2: Redis restarts empty (a new epoch for every channel).
    until(
        "5,000 rows inserted",
        Duration::from_secs(60),
        reached(5000),
    )
    .await;
    let before: Vec<usize> = states
        .iter()
        .map(|s| s.subscriptions.load(Ordering::SeqCst))
        .collect();
    redis.restart().await;
    // The node tells its subscribers their stream lost continuity (insufficient state) and
    // they subscribe again, into the new epoch.
    until(
        "watchers resubscribed after the Redis restart",
        WITHIN,
        || {
            states.iter().zip(&before).all(|(s, before)| {
                s.live.load(Ordering::SeqCst) && s.subscriptions.load(Ordering::SeqCst) > *before
            })
        },
    )
    .await;

    // Fault 3: SIGKILL again, restart.
    until(
        "8,000 rows inserted",
        Duration::from_secs(60),
        reached(8000),
    )
    .await;
    node_tx.send_replace(None);
    node.kill().await;
    node = support::Node::start_with(config.clone()).await;
    node_tx.send_replace(Some(node.addr));

    tokio::time::timeout(Duration::from_secs(60), producer)
        .await
        .expect("the producer finished")
        .expect("the producer ran");
    assert_eq!(inserted.load(Ordering::SeqCst), TOTAL);
    assert!(
        outbox.drained_within(Duration::from_secs(60)).await,
        "{} rows left in the outbox",
        outbox.count().await
    );
    let drained_after = started.elapsed();

    // The rest of the current epoch from history (it holds everything since the restart).
    let mut tops = Vec::new();
    for channel in &channels {
        tops.push(history(node.addr, channel).await);
    }
    stop.store(true, Ordering::SeqCst);
    let mut watched = Vec::new();
    for watcher in watchers {
        watched.push(
            tokio::time::timeout(WITHIN, watcher)
                .await
                .expect("the watcher stopped")
                .expect("the watcher ran"),
        );
    }

    let mut failures = Vec::new();
    for (p, (watched, (epoch, kept))) in watched.iter().zip(&tops).enumerate() {
        // Each distinct publication once: (epoch, offset) -> seq.
        let mut publications: BTreeMap<(String, u64), i64> = BTreeMap::new();
        let mut conflicts = Vec::new();
        let from_history = kept
            .iter()
            .map(|(offset, data)| (epoch.clone(), *offset, data["seq"].as_i64().expect("a seq")));
        for (e, offset, seq) in watched.seen.iter().cloned().chain(from_history) {
            if let Some(before) = publications.insert((e.clone(), offset), seq)
                && before != seq
            {
                conflicts.push((e, offset, before, seq));
            }
        }
        if !conflicts.is_empty() {
            failures.push(format!("p{p}: one position, two rows: {conflicts:?}"));
        }
        // Epochs in the order the watcher met them.
        let mut epochs: Vec<String> = Vec::new();
        for (e, _, _) in &watched.seen {
            if !epochs.contains(e) {
                epochs.push(e.clone());
            }
        }
        if !epochs.contains(epoch) {
            epochs.push(epoch.clone());
        }
        let mut order = Vec::new();
        for e in &epochs {
            order.extend(
                publications
                    .iter()
                    .filter(|((pe, _), _)| pe == e)
                    .map(|(_, seq)| *seq),
            );
        }
        let mut by_seq: BTreeMap<i64, usize> = BTreeMap::new();
        for seq in &order {
            *by_seq.entry(*seq).or_default() += 1;
        }
        let missing: Vec<i64> = (0..PER_PARTITION)
            .filter(|s| !by_seq.contains_key(s))
            .collect();
        let twice: Vec<(i64, usize)> = by_seq
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(s, n)| (*s, *n))
            .collect();
        let unordered: Vec<(i64, i64)> = order
            .windows(2)
            .filter(|w| w[0] >= w[1])
            .map(|w| (w[0], w[1]))
            .collect();
        eprintln!(
            "p{p}: {} publications seen over {} connections, epochs {:?}, not recovered {:?}",
            watched.seen.len(),
            watched.connections,
            epochs,
            watched.lost
        );
        if !missing.is_empty() {
            failures.push(format!(
                "p{p}: {} rows never published: {:?}",
                missing.len(),
                &missing[..missing.len().min(20)]
            ));
        }
        if !twice.is_empty() {
            failures.push(format!(
                "p{p}: rows published more than once: {:?}",
                &twice[..twice.len().min(20)]
            ));
        }
        if !unordered.is_empty() {
            failures.push(format!(
                "p{p}: out of order: {:?}",
                &unordered[..unordered.len().min(20)]
            ));
        }
        // The only history that may be lost is the one the Redis restart took.
        let unexpected: Vec<_> = watched
            .lost
            .iter()
            .filter(|(old, new)| old == new)
            .collect();
        if !unexpected.is_empty() {
            failures.push(format!(
                "p{p}: not recovered within one epoch: {unexpected:?}"
            ));
        }
        if epochs.len() != 2 {
            failures.push(format!(
                "p{p}: expected two epochs (one Redis restart): {epochs:?}"
            ));
        }
    }
    eprintln!(
        "fault test: outbox drained {drained_after:?} after the start, checked after {:?}",
        started.elapsed()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    node.kill().await;
    drop(redis);
    outbox.drop_table().await;
    outbox_cleanup_function(&format!("{name}_notify")).await;
}

#[tokio::test]
async fn a_reused_row_id_still_publishes() {
    let outbox = Outbox::create("outbox_reused_id", "JSONB").await;
    let name = outbox.table.clone();
    let server = support::start(server_config(vec![outbox.consumer(&name, 1)])).await;
    let channel = format!("{NS}:{name}");
    let mut client = subscriber(&server, &channel).await;
    let payload = |n: i64| json!({ "channel": channel, "data": { "n": n } }).to_string();

    outbox.insert("publish", &payload(1), 0).await;
    let got = publications(&mut client, &channel, 1).await;
    assert_eq!(got[0].1["n"], json!(1));
    assert!(outbox.drained_within(WITHIN).await);
    // The ids start again at 1 (a table emptied with RESTART IDENTITY, recreated, or
    // restored): a new row with an old id is a new message, not a redelivery.
    outbox
        .db
        .batch_execute(&format!("TRUNCATE {name} RESTART IDENTITY"))
        .await
        .unwrap();
    outbox.insert("publish", &payload(2), 0).await;
    let got = publications(&mut client, &channel, 1).await;
    assert_eq!(got[0].1["n"], json!(2));

    server.stop().await;
    outbox.drop_table().await;
}

/// `tls.enabled`: every connection of the consumer is encrypted (PostgreSQL's own
/// `pg_stat_ssl` says so for each, told apart by the application name in the DSN) and rows
/// still arrive; a server certificate the configured CA did not sign stops the start.
#[tokio::test]
async fn tls_connections_are_encrypted() {
    let outbox = Outbox::create("outbox_tls", "JSONB").await;
    let name = outbox.table.clone();
    let mut consumer = outbox.consumer(&name, 2);
    consumer.postgresql.dsn = format!(
        "{}?application_name={name}",
        crate::support::postgres::dsn()
    );
    consumer.postgresql.partition_notification_channel = format!("{name}_wake");
    consumer.postgresql.tls.enabled = true;

    // The machine's PostgreSQL presents a certificate of its own: one from a CA made here
    // does not verify it.
    let mut refused = consumer.clone();
    refused.postgresql.tls.server_ca_pem = crate::support::tls::TestCa::new().cert_pem();
    let error = support::start_error(server_config(vec![refused])).await;
    assert!(error.contains("postgresql"), "{error}");

    consumer.postgresql.tls.insecure_skip_verify = true;
    let server = support::start(server_config(vec![consumer])).await;
    let channel = format!("{NS}:{name}");
    let mut client = subscriber(&server, &channel).await;
    let payload = json!({ "channel": channel, "data": { "n": 1 } }).to_string();
    outbox.insert("publish", &payload, 1).await;
    let got = publications(&mut client, &channel, 1).await;
    assert_eq!(got[0].1["n"], json!(1));

    // Two workers, LISTEN and the lag counter: four connections, every one over TLS.
    let deadline = Instant::now() + WITHIN;
    loop {
        let row = outbox
            .db
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE s.ssl) \
                 FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
                 WHERE a.application_name = $1",
                &[&name],
            )
            .await
            .unwrap();
        let (all, encrypted): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!(all, encrypted, "a connection without TLS");
        if all == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "{all} connections, expected 4");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    server.stop().await;
    outbox.drop_table().await;
}
