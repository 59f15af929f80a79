//! Support of the Redis Streams and NATS JetStream consumer tests: producing entries and
//! messages, reading a group's or a durable consumer's state, and removing both afterwards.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};

use super::cluster::redis_url;
use super::{Client, TestServer};

/// The NATS of the tests.
pub(crate) fn nats_url() -> String {
    std::env::var("TETHER_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// How long a test waits for a state it expects (then it fails).
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// Polls `check` every 100 ms until it holds; fails the test after [`WAIT`].
pub(crate) async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {WAIT:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A connection to the test Redis.
pub(crate) async fn redis() -> MultiplexedConnection {
    redis::Client::open(redis_url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis")
}

/// `XADD <stream> * <fields...>`; returns the entry id.
pub(crate) async fn xadd(
    conn: &mut MultiplexedConnection,
    stream: &str,
    fields: &[(&str, &str)],
) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (name, value) in fields {
        cmd.arg(*name).arg(*value);
    }
    cmd.query_async(conn).await.expect("XADD")
}

/// The group's entries delivered and not acknowledged (`XPENDING` summary count).
pub(crate) async fn pending(conn: &mut MultiplexedConnection, stream: &str, group: &str) -> u64 {
    let reply: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await
        .expect("XPENDING");
    match reply {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => u64::try_from(*n).expect("a count"),
            other => panic!("XPENDING count: {other:?}"),
        },
        other => panic!("XPENDING: {other:?}"),
    }
}

/// Deletes the stream (and so its groups).
pub(crate) async fn delete_stream(conn: &mut MultiplexedConnection, stream: &str) {
    let _: () = redis::cmd("DEL")
        .arg(stream)
        .query_async(conn)
        .await
        .expect("DEL");
}

/// A JetStream context on the test NATS.
pub(crate) async fn jetstream() -> jetstream::Context {
    let client = async_nats::connect(nats_url())
        .await
        .expect("connect to nats");
    jetstream::new(client)
}

/// Creates stream `name` over `subject`.
pub(crate) async fn create_stream(js: &jetstream::Context, name: &str, subject: &str) {
    js.create_stream(stream::Config {
        name: name.to_owned(),
        subjects: vec![subject.to_owned()],
        ..Default::default()
    })
    .await
    .expect("create stream");
}

/// Publishes `payload` with `headers` and waits for the stream's ack.
pub(crate) async fn js_publish(
    js: &jetstream::Context,
    subject: &str,
    headers: &[(&str, &str)],
    payload: &str,
) {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.insert(*name, *value);
    }
    js.publish_with_headers(subject.to_owned(), map, payload.to_owned().into())
        .await
        .expect("publish")
        .await
        .expect("stream ack");
}

/// The durable consumer's state; `None` when it does not exist.
pub(crate) async fn consumer_info(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
) -> Option<consumer::Info> {
    let stream = js.get_stream_no_info(stream).await.ok()?;
    stream.consumer_info(durable).await.ok()
}

/// The `(offset, data.n)` of the channel's history, oldest first.
pub(crate) async fn history(server: &TestServer, channel: &str) -> Vec<(u64, i64)> {
    let (status, body) = server
        .api("history", json!({"channel": channel, "limit": -1}))
        .await;
    assert_eq!(status, 200, "{body}");
    body["result"]["publications"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|p| {
                    (
                        p["offset"].as_u64().unwrap_or(0),
                        p["data"]["n"].as_i64().unwrap_or(-1),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A client of `server` subscribed to `channels`.
pub(crate) async fn subscriber(server: &TestServer, channels: &[&str]) -> Client {
    let mut client = Client::connect(server, "watcher").await;
    for channel in channels {
        client.subscribe(json!({ "channel": channel })).await;
    }
    client
}

/// Publication pushes on `client` for `channel` until `count` arrived: `(offset, data.n)`.
pub(crate) async fn received(client: &mut Client, channel: &str, count: usize) -> Vec<(u64, i64)> {
    super::cluster::collect(client, channel, count).await
}

/// Whether another publication arrives on `client` within `within`.
pub(crate) async fn more_within(client: &mut Client, within: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let message = client.next_within(left).await?;
        if message.get("push").and_then(|p| p.get("pub")).is_some() {
            return Some(message);
        }
    }
}

/// `tether_consumer_lag` of consumer `name` on `server`; `None` until it is exported.
pub(crate) async fn lag(server: &TestServer, name: &str) -> Option<f64> {
    super::http::metric_with(server.addr, "tether_consumer_lag", &[("consumer", name)]).await
}

/// `tether_consumer_errors_total` of consumer `name` and `kind` (`retried`, `skipped`) on
/// `server`; 0 until it is exported.
pub(crate) async fn consumer_errors(server: &TestServer, name: &str, kind: &str) -> f64 {
    super::http::metric_with(
        server.addr,
        "tether_consumer_errors_total",
        &[("consumer", name), ("kind", kind)],
    )
    .await
    .unwrap_or(0.0)
}

/// `XPENDING <stream> <group> - + 10`: each pending entry's consumer and delivery count.
pub(crate) async fn pending_entries(
    conn: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
) -> Vec<(String, u64)> {
    let reply: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg("-")
        .arg("+")
        .arg(10)
        .query_async(conn)
        .await
        .expect("XPENDING");
    reply
        .into_iter()
        .map(|(_, consumer, _, deliveries)| (consumer, deliveries))
        .collect()
}
