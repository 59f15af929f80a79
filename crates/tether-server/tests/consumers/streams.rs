//! The Redis Streams (`redis_stream`) and NATS JetStream (`nats_jetstream`) consumers, against
//! the Redis on 127.0.0.1:6379 and the NATS JetStream on 127.0.0.1:4222: order of command and
//! envelope messages, publication data mode, bad messages skipped and acknowledged, one
//! publication per message when it is run twice, and two nodes sharing a group or durable.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;

use crate::support::cluster::FaultProxy;
use crate::support::streams::{
    WAIT, consumer_errors, consumer_info, create_stream, delete_stream, eventually, history,
    jetstream, js_publish, lag, more_within, pending, pending_entries, received, redis, subscriber,
    xadd,
};
use crate::support::{
    Config, ConsumerConfig, EngineKind, NatsJetStreamConsumerConfig, RedisStreamConsumerConfig,
    config, start,
};

/// A name unique to this run of `test`.
fn unique(test: &str) -> String {
    format!("{test}_{}", uuid::Uuid::new_v4().simple())
}

fn with_consumer(consumer: ConsumerConfig) -> Config {
    let mut config = config();
    config.consumers.push(consumer);
    config
}

fn redis_consumer(stream: &str, group: &str) -> ConsumerConfig {
    ConsumerConfig {
        name: "redis_in".to_owned(),
        enabled: true,
        r#type: "redis_stream".to_owned(),
        redis_stream: RedisStreamConsumerConfig {
            address: vec![crate::support::cluster::redis_url()],
            streams: vec![stream.to_owned()],
            consumer_group: group.to_owned(),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn jetstream_consumer(stream: &str, subject: &str, durable: &str) -> ConsumerConfig {
    ConsumerConfig {
        name: "nats_in".to_owned(),
        enabled: true,
        r#type: "nats_jetstream".to_owned(),
        nats_jetstream: NatsJetStreamConsumerConfig {
            url: crate::support::streams::nats_url(),
            stream_name: stream.to_owned(),
            subjects: vec![subject.to_owned()],
            durable_consumer_name: durable.to_owned(),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn publish(channel: &str, n: i64) -> String {
    json!({"channel": channel, "data": {"n": n}}).to_string()
}

fn envelope(channel: &str, n: i64) -> String {
    json!({"method": "publish", "payload": {"channel": channel, "data": {"n": n}}}).to_string()
}

/// The envelope with its payload as a string holding JSON.
fn string_envelope(channel: &str, n: i64) -> String {
    json!({"method": "publish", "payload": publish(channel, n)}).to_string()
}

// === Redis Streams ===

#[tokio::test]
async fn redis_entries_run_in_order_and_bad_ones_are_skipped_and_acked() {
    let stream = unique("rs_order");
    let group = unique("g");
    let channel = format!("chat:{}", unique("c"));
    let server = start(with_consumer(redis_consumer(&stream, &group))).await;
    let mut client = subscriber(&server, &[&channel]).await;
    let mut conn = redis().await;

    xadd(
        &mut conn,
        &stream,
        &[("method", "publish"), ("payload", &publish(&channel, 1))],
    )
    .await;
    xadd(&mut conn, &stream, &[("payload", &envelope(&channel, 2))]).await;
    // Bad: not JSON; a method consumers do not run; no payload field at all.
    xadd(
        &mut conn,
        &stream,
        &[("method", "publish"), ("payload", "{not json")],
    )
    .await;
    xadd(&mut conn, &stream, &[("method", "info"), ("payload", "{}")]).await;
    xadd(&mut conn, &stream, &[("method", "publish"), ("data", "x")]).await;
    xadd(
        &mut conn,
        &stream,
        &[("payload", &string_envelope(&channel, 3))],
    )
    .await;
    for n in 4..=8 {
        xadd(
            &mut conn,
            &stream,
            &[("method", "publish"), ("payload", &publish(&channel, n))],
        )
        .await;
    }

    let got = received(&mut client, &channel, 8).await;
    let expected: Vec<(u64, i64)> = (1..=8).map(|n| (n as u64, n)).collect();
    assert_eq!(got, expected);
    eventually("every entry acknowledged", || {
        let mut conn = conn.clone();
        let (stream, group) = (stream.clone(), group.clone());
        async move { pending(&mut conn, &stream, &group).await == 0 }
    })
    .await;
    assert_eq!(history(&server, &channel).await, expected);

    server.stop().await;
    delete_stream(&mut conn, &stream).await;
}

#[tokio::test]
async fn redis_publication_data_mode_publishes_or_broadcasts() {
    let stream = unique("rs_data");
    let group = unique("g");
    let one = format!("chat:{}", unique("one"));
    let (a, b) = (
        format!("chat:{}", unique("a")),
        format!("chat:{}", unique("b")),
    );
    let mut consumer = redis_consumer(&stream, &group);
    consumer.redis_stream.publication_data_mode.enabled = true;
    let server = start(with_consumer(consumer)).await;
    let mut client = subscriber(&server, &[&one, &a, &b]).await;
    let mut conn = redis().await;

    xadd(
        &mut conn,
        &stream,
        &[("payload", r#"{"n":1}"#), ("centrifugo-channels", &one)],
    )
    .await;
    // No channels: skipped.
    xadd(&mut conn, &stream, &[("payload", r#"{"n":99}"#)]).await;
    let both = format!("{a},{b}");
    xadd(
        &mut conn,
        &stream,
        &[("payload", r#"{"n":2}"#), ("centrifugo-channels", &both)],
    )
    .await;

    assert_eq!(received(&mut client, &one, 1).await, [(1, 1)]);
    assert_eq!(received(&mut client, &a, 1).await, [(1, 2)]);
    assert_eq!(received(&mut client, &b, 1).await, [(1, 2)]);
    eventually("every entry acknowledged", || {
        let mut conn = conn.clone();
        let (stream, group) = (stream.clone(), group.clone());
        async move { pending(&mut conn, &stream, &group).await == 0 }
    })
    .await;

    server.stop().await;
    delete_stream(&mut conn, &stream).await;
}

/// An entry tether already ran is delivered again — to a consumer that then dies without
/// acknowledging it — and tether reclaims it after the visibility timeout: it runs again and
/// is acknowledged, but publishes once.
#[tokio::test]
async fn redis_reclaimed_entry_publishes_once() {
    let stream = unique("rs_reclaim");
    let group = unique("g");
    let channel = format!("chat:{}", unique("c"));
    let mut consumer = redis_consumer(&stream, &group);
    consumer.redis_stream.visibility_timeout = Duration::from_secs(1);
    let server = start(with_consumer(consumer)).await;
    let mut client = subscriber(&server, &[&channel]).await;
    let mut conn = redis().await;

    xadd(
        &mut conn,
        &stream,
        &[("method", "publish"), ("payload", &publish(&channel, 1))],
    )
    .await;
    assert_eq!(received(&mut client, &channel, 1).await, [(1, 1)]);
    eventually("the entry acknowledged", || {
        let mut conn = conn.clone();
        let (stream, group) = (stream.clone(), group.clone());
        async move { pending(&mut conn, &stream, &group).await == 0 }
    })
    .await;

    // Rewind the group and let a made-up consumer take the entry, atomically (tether's
    // readers cannot get it in between); it never acknowledges it.
    let (): () = redis::pipe()
        .atomic()
        .cmd("XGROUP")
        .arg("SETID")
        .arg(&stream)
        .arg(&group)
        .arg("0")
        .ignore()
        .cmd("XREADGROUP")
        .arg("GROUP")
        .arg(&group)
        .arg("ghost")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .ignore()
        .query_async(&mut conn)
        .await
        .expect("rewind and read as ghost");
    assert_eq!(pending(&mut conn, &stream, &group).await, 1);

    // tether's XAUTOCLAIM (every 5 s, idle > 1 s) takes it, runs it and acknowledges it.
    eventually("the ghost's entry reclaimed and acknowledged", || {
        let mut conn = conn.clone();
        let (stream, group) = (stream.clone(), group.clone());
        async move { pending(&mut conn, &stream, &group).await == 0 }
    })
    .await;
    xadd(
        &mut conn,
        &stream,
        &[("method", "publish"), ("payload", &publish(&channel, 2))],
    )
    .await;
    assert_eq!(received(&mut client, &channel, 1).await, [(2, 2)]);
    assert_eq!(history(&server, &channel).await, [(1, 1), (2, 2)]);

    server.stop().await;
    delete_stream(&mut conn, &stream).await;
}

/// The lag counts entries pending with any consumer of the group (here, two a made-up
/// consumer holds) plus those not yet delivered.
#[tokio::test]
async fn redis_lag_counts_pending_entries() {
    let stream = unique("rs_lag");
    let group = unique("g");
    let channel = format!("chat:{}", unique("c"));
    let mut conn = redis().await;
    let (): () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg(&group)
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .expect("XGROUP CREATE");
    for n in 1..=2 {
        xadd(
            &mut conn,
            &stream,
            &[("method", "publish"), ("payload", &publish(&channel, n))],
        )
        .await;
    }
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(&group)
        .arg("ghost")
        .arg("COUNT")
        .arg(2)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut conn)
        .await
        .expect("XREADGROUP as ghost");
    // The group exists: tether joins it (BUSYGROUP is fine).
    let server = start(with_consumer(redis_consumer(&stream, &group))).await;
    let mut client = subscriber(&server, &[&channel]).await;
    xadd(
        &mut conn,
        &stream,
        &[("method", "publish"), ("payload", &publish(&channel, 3))],
    )
    .await;
    assert_eq!(received(&mut client, &channel, 1).await, [(1, 3)]);
    eventually("lag 2", || async {
        lag(&server, "redis_in").await == Some(2.0)
    })
    .await;
    // After the next reading (every 2 s), still 2: what tether ran is not counted.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(lag(&server, "redis_in").await, Some(2.0));

    server.stop().await;
    delete_stream(&mut conn, &stream).await;
}

/// The engine unreachable: an entry fails with an internal error and is retried in place,
/// its claim kept fresh (no `XAUTOCLAIM` takes it though it is retried for longer than the
/// visibility timeout); once the engine is back it publishes once, and the next one after it.
#[tokio::test]
async fn redis_internal_error_is_retried_in_place() {
    let stream = unique("rs_retry");
    let group = unique("g");
    let channel = format!("chat:{}", unique("c"));
    let engine = FaultProxy::start(&crate::support::cluster::redis_url()).await;
    let mut consumer = redis_consumer(&stream, &group);
    consumer.redis_stream.visibility_timeout = Duration::from_secs(2);
    let mut cfg = with_consumer(consumer);
    cfg.engine.kind = EngineKind::Redis;
    cfg.engine.redis.address = vec![engine.url.clone()];
    cfg.engine.redis.prefix = unique("rs_retry_engine");
    let server = start(cfg).await;
    server.wait_ready().await;
    let mut conn = redis().await;

    engine.cut();
    xadd(
        &mut conn,
        &stream,
        &[("method", "publish"), ("payload", &publish(&channel, 1))],
    )
    .await;
    eventually("the entry retried", || async {
        consumer_errors(&server, "redis_in", "retried").await >= 1.0
    })
    .await;
    // Past the visibility timeout and a reclaim round: still held by tether's reader,
    // delivered once.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let held = pending_entries(&mut conn, &stream, &group).await;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].1, 1, "the entry was claimed again: {held:?}");
    xadd(
        &mut conn,
        &stream,
        &[("method", "publish"), ("payload", &publish(&channel, 2))],
    )
    .await;
    engine.restore();

    eventually("both published", || async {
        history(&server, &channel).await.len() == 2
    })
    .await;
    assert_eq!(history(&server, &channel).await, [(1, 1), (2, 2)]);
    eventually("every entry acknowledged", || {
        let mut conn = conn.clone();
        let (stream, group) = (stream.clone(), group.clone());
        async move { pending(&mut conn, &stream, &group).await == 0 }
    })
    .await;

    server.stop().await;
    delete_stream(&mut conn, &stream).await;
}

/// Redis goes away (every connection reset, new ones refused) and comes back: the consumer
/// reconnects and runs what was added meanwhile, in order.
#[tokio::test]
async fn redis_consumer_reconnects_after_an_outage() {
    let stream = unique("rs_outage");
    let group = unique("g");
    let channel = format!("chat:{}", unique("c"));
    let proxy = FaultProxy::start(&crate::support::cluster::redis_url()).await;
    let mut consumer = redis_consumer(&stream, &group);
    consumer.redis_stream.address = vec![proxy.url.clone()];
    // An entry delivered on a connection the outage cut is reclaimed soon.
    consumer.redis_stream.visibility_timeout = Duration::from_secs(2);
    let server = start(with_consumer(consumer)).await;
    let mut client = subscriber(&server, &[&channel]).await;
    let mut conn = redis().await;

    xadd(
        &mut conn,
        &stream,
        &[("method", "publish"), ("payload", &publish(&channel, 1))],
    )
    .await;
    assert_eq!(received(&mut client, &channel, 1).await, [(1, 1)]);
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for n in 2..=3 {
        xadd(
            &mut conn,
            &stream,
            &[("method", "publish"), ("payload", &publish(&channel, n))],
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.restore();
    assert_eq!(
        publications_within(&mut client, &channel, 2).await,
        [(2, 2), (3, 3)]
    );
    eventually("every entry acknowledged", || {
        let mut conn = conn.clone();
        let (stream, group) = (stream.clone(), group.clone());
        async move { pending(&mut conn, &stream, &group).await == 0 }
    })
    .await;

    server.stop().await;
    delete_stream(&mut conn, &stream).await;
}

/// `count` publications of `channel`, waiting up to [`WAIT`] in all.
async fn publications_within(
    client: &mut crate::support::Client,
    channel: &str,
    count: usize,
) -> Vec<(u64, i64)> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut got = Vec::new();
    while got.len() < count {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let message = client
            .next_within(left)
            .await
            .unwrap_or_else(|| panic!("only {got:?} within {WAIT:?}"));
        if let Some(publication) = crate::support::cluster::publication(&message, channel) {
            got.push(publication);
        }
    }
    got
}

/// Two nodes in one consumer group: every entry runs on one of them, once.
#[tokio::test]
async fn redis_two_nodes_share_the_group() {
    let stream = unique("rs_two");
    let group = unique("g");
    let channel = format!("chat:{}", unique("c"));
    let first = start(with_consumer(redis_consumer(&stream, &group))).await;
    let second = start(with_consumer(redis_consumer(&stream, &group))).await;
    let mut on_first = subscriber(&first, &[&channel]).await;
    let mut on_second = subscriber(&second, &[&channel]).await;
    let mut conn = redis().await;

    const N: i64 = 40;
    for n in 1..=N {
        xadd(
            &mut conn,
            &stream,
            &[("method", "publish"), ("payload", &publish(&channel, n))],
        )
        .await;
    }
    let seen = run_on_two(&mut on_first, &mut on_second, &channel, N).await;
    assert_eq!(seen, (1..=N).collect::<Vec<_>>());
    eventually("every entry acknowledged", || {
        let mut conn = conn.clone();
        let (stream, group) = (stream.clone(), group.clone());
        async move { pending(&mut conn, &stream, &group).await == 0 }
    })
    .await;

    first.stop().await;
    second.stop().await;
    delete_stream(&mut conn, &stream).await;
}

/// The `n`s published on either node (each node has its own memory engine, so a message run
/// on both would show twice), sorted; waits a little more once `count` came, for extras.
async fn run_on_two(
    first: &mut crate::support::Client,
    second: &mut crate::support::Client,
    channel: &str,
    count: i64,
) -> Vec<i64> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while (seen.len() as i64) < count {
        assert!(tokio::time::Instant::now() < deadline, "only {seen:?}");
        for client in [&mut *first, &mut *second] {
            if let Some(message) = client.next_within(Duration::from_millis(50)).await
                && let Some((_, n)) = crate::support::cluster::publication(&message, channel)
            {
                seen.push(n);
            }
        }
    }
    for client in [first, second] {
        if let Some(extra) = more_within(client, Duration::from_millis(1500)).await {
            panic!("a message ran twice: {extra}");
        }
    }
    let distinct: BTreeSet<i64> = seen.iter().copied().collect();
    assert_eq!(distinct.len(), seen.len(), "a message ran twice: {seen:?}");
    seen.sort_unstable();
    seen
}

// === NATS JetStream ===

/// A stream with its subject, made for one test; [`Js::delete`] removes it (and its
/// consumers).
struct Js {
    context: async_nats::jetstream::Context,
    stream: String,
    subject: String,
    durable: String,
}

impl Js {
    async fn new(test: &str) -> Self {
        let context = jetstream().await;
        let stream = unique(test);
        let subject = format!("tether.test.{stream}");
        create_stream(&context, &stream, &subject).await;
        Self {
            context,
            durable: unique("durable"),
            stream,
            subject,
        }
    }

    fn consumer(&self) -> ConsumerConfig {
        jetstream_consumer(&self.stream, &self.subject, &self.durable)
    }

    /// Creates the durable consumer itself (as another service would), with `ack_wait`.
    async fn create_durable(
        &self,
        ack_wait: Duration,
    ) -> async_nats::jetstream::consumer::PullConsumer {
        let stream = self
            .context
            .get_stream(&self.stream)
            .await
            .expect("the stream");
        stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                name: Some(self.durable.clone()),
                durable_name: Some(self.durable.clone()),
                filter_subject: self.subject.clone(),
                ack_wait,
                ..Default::default()
            })
            .await
            .expect("create the durable consumer")
    }

    async fn publish(&self, headers: &[(&str, &str)], payload: &str) {
        js_publish(&self.context, &self.subject, headers, payload).await;
    }

    /// Waits until the durable consumer has nothing pending nor unacknowledged, having
    /// delivered at least `delivered` messages.
    async fn drained(&self, delivered: u64) {
        let what = format!("every message delivered and acknowledged ({delivered})");
        eventually(&what, || async {
            consumer_info(&self.context, &self.stream, &self.durable)
                .await
                .is_some_and(|info| {
                    info.num_pending == 0
                        && info.num_ack_pending == 0
                        && info.ack_floor.consumer_sequence >= delivered
                })
        })
        .await;
    }

    async fn delete(self) {
        self.context
            .delete_stream(&self.stream)
            .await
            .expect("delete stream");
    }
}

#[tokio::test]
async fn jetstream_messages_run_in_order_and_bad_ones_are_skipped_and_acked() {
    let js = Js::new("js_order").await;
    let channel = format!("chat:{}", unique("c"));
    let server = start(with_consumer(js.consumer())).await;
    let mut client = subscriber(&server, &[&channel]).await;

    js.publish(&[("centrifugo-method", "publish")], &publish(&channel, 1))
        .await;
    js.publish(&[], &envelope(&channel, 2)).await;
    js.publish(&[("centrifugo-method", "publish")], "{not json")
        .await;
    js.publish(&[("centrifugo-method", "info")], "{}").await;
    js.publish(&[], "not an envelope").await;
    js.publish(&[], &string_envelope(&channel, 3)).await;
    for n in 4..=8 {
        js.publish(&[("centrifugo-method", "publish")], &publish(&channel, n))
            .await;
    }

    let got = received(&mut client, &channel, 8).await;
    let expected: Vec<(u64, i64)> = (1..=8).map(|n| (n as u64, n)).collect();
    assert_eq!(got, expected);
    js.drained(11).await;
    assert_eq!(history(&server, &channel).await, expected);

    server.stop().await;
    js.delete().await;
}

#[tokio::test]
async fn jetstream_publication_data_mode_publishes_or_broadcasts() {
    let js = Js::new("js_data").await;
    let one = format!("chat:{}", unique("one"));
    let (a, b) = (
        format!("chat:{}", unique("a")),
        format!("chat:{}", unique("b")),
    );
    let mut consumer = js.consumer();
    consumer.nats_jetstream.publication_data_mode.enabled = true;
    let server = start(with_consumer(consumer)).await;
    let mut client = subscriber(&server, &[&one, &a, &b]).await;

    js.publish(&[("centrifugo-channels", &one)], r#"{"n":1}"#)
        .await;
    js.publish(&[], r#"{"n":99}"#).await;
    let both = format!("{a},{b}");
    js.publish(&[("centrifugo-channels", &both)], r#"{"n":2}"#)
        .await;

    assert_eq!(received(&mut client, &one, 1).await, [(1, 1)]);
    assert_eq!(received(&mut client, &a, 1).await, [(1, 2)]);
    assert_eq!(received(&mut client, &b, 1).await, [(1, 2)]);
    js.drained(3).await;

    server.stop().await;
    js.delete().await;
}

/// A message tether ran is delivered again (its durable consumer deleted and created anew,
/// from the stream's start): it runs and is acknowledged again, but publishes once.
#[tokio::test]
async fn jetstream_redelivered_message_publishes_once() {
    let js = Js::new("js_redeliver").await;
    let channel = format!("chat:{}", unique("c"));
    let mut consumer = js.consumer();
    consumer.nats_jetstream.deliver_policy = "all".to_owned();
    let server = start(with_consumer(consumer)).await;
    let mut client = subscriber(&server, &[&channel]).await;

    js.publish(&[("centrifugo-method", "publish")], &publish(&channel, 1))
        .await;
    assert_eq!(received(&mut client, &channel, 1).await, [(1, 1)]);
    js.drained(1).await;

    let stream = js.context.get_stream(&js.stream).await.expect("the stream");
    stream
        .delete_consumer(&js.durable)
        .await
        .expect("delete the durable consumer");
    // tether's pull fails, it creates the consumer again (deliver all), and message 1 comes
    // again.
    js.drained(1).await;
    js.publish(&[("centrifugo-method", "publish")], &publish(&channel, 2))
        .await;
    assert_eq!(received(&mut client, &channel, 1).await, [(2, 2)]);
    assert_eq!(history(&server, &channel).await, [(1, 1), (2, 2)]);
    let info = consumer_info(&js.context, &js.stream, &js.durable)
        .await
        .expect("the consumer again");
    assert_eq!(
        info.delivered.stream_sequence, 2,
        "the new consumer delivered both messages"
    );
    assert_eq!(info.delivered.consumer_sequence, 2);

    server.stop().await;
    js.delete().await;
}

/// The lag counts the durable consumer's messages delivered and not acknowledged (here, two
/// a made-up client fetched) plus those not yet delivered.
#[tokio::test]
async fn jetstream_lag_counts_unacknowledged_messages() {
    let js = Js::new("js_lag").await;
    let channel = format!("chat:{}", unique("c"));
    let ghost = js.create_durable(Duration::from_secs(30)).await;
    for n in 1..=2 {
        js.publish(&[("centrifugo-method", "publish")], &publish(&channel, n))
            .await;
    }
    let mut fetched = ghost
        .fetch()
        .max_messages(2)
        .messages()
        .await
        .expect("fetch as ghost");
    for _ in 0..2 {
        futures_util::StreamExt::next(&mut fetched)
            .await
            .expect("a message")
            .expect("fetched");
    }
    let mut consumer = js.consumer();
    consumer.nats_jetstream.use_existing_consumer = true;
    let server = start(with_consumer(consumer)).await;
    let mut client = subscriber(&server, &[&channel]).await;
    js.publish(&[("centrifugo-method", "publish")], &publish(&channel, 3))
        .await;
    assert_eq!(received(&mut client, &channel, 1).await, [(1, 3)]);
    eventually("lag 2", || async {
        lag(&server, "nats_in").await == Some(2.0)
    })
    .await;
    // After the next reading (every 2 s), still 2: what tether ran is not counted.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(lag(&server, "nats_in").await, Some(2.0));

    server.stop().await;
    js.delete().await;
}

/// The engine unreachable: a message fails with an internal error and is retried in place
/// while its ack deadline is kept alive (the consumer's AckWait is 2 s; the message is not
/// delivered again); once the engine is back it publishes once, and the next one after it.
#[tokio::test]
async fn jetstream_internal_error_is_retried_in_place() {
    let js = Js::new("js_retry").await;
    let channel = format!("chat:{}", unique("c"));
    js.create_durable(Duration::from_secs(2)).await;
    let engine = FaultProxy::start(&crate::support::cluster::redis_url()).await;
    let mut consumer = js.consumer();
    consumer.nats_jetstream.use_existing_consumer = true;
    let mut cfg = with_consumer(consumer);
    cfg.engine.kind = EngineKind::Redis;
    cfg.engine.redis.address = vec![engine.url.clone()];
    cfg.engine.redis.prefix = unique("js_retry_engine");
    let server = start(cfg).await;
    server.wait_ready().await;

    engine.cut();
    js.publish(&[("centrifugo-method", "publish")], &publish(&channel, 1))
        .await;
    eventually("the message retried", || async {
        consumer_errors(&server, "nats_in", "retried").await >= 1.0
    })
    .await;
    // Three AckWaits.
    tokio::time::sleep(Duration::from_secs(6)).await;
    engine.restore();
    js.drained(1).await;
    js.publish(&[("centrifugo-method", "publish")], &publish(&channel, 2))
        .await;
    js.drained(2).await;
    assert_eq!(history(&server, &channel).await, [(1, 1), (2, 2)]);
    let info = consumer_info(&js.context, &js.stream, &js.durable)
        .await
        .expect("the consumer");
    assert_eq!(
        info.delivered.consumer_sequence, 2,
        "each message delivered once"
    );

    server.stop().await;
    js.delete().await;
}

/// NATS goes away and comes back: the consumer reconnects and runs what was published
/// meanwhile, in order.
#[tokio::test]
async fn jetstream_consumer_reconnects_after_an_outage() {
    let js = Js::new("js_outage").await;
    let channel = format!("chat:{}", unique("c"));
    let proxy = FaultProxy::start(&crate::support::streams::nats_url()).await;
    let mut consumer = js.consumer();
    consumer.nats_jetstream.url = proxy.url.clone();
    let server = start(with_consumer(consumer)).await;
    let mut client = subscriber(&server, &[&channel]).await;

    js.publish(&[("centrifugo-method", "publish")], &publish(&channel, 1))
        .await;
    assert_eq!(received(&mut client, &channel, 1).await, [(1, 1)]);
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for n in 2..=3 {
        js.publish(&[("centrifugo-method", "publish")], &publish(&channel, n))
            .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.restore();
    assert_eq!(
        publications_within(&mut client, &channel, 2).await,
        [(2, 2), (3, 3)]
    );
    js.drained(3).await;

    server.stop().await;
    js.delete().await;
}

/// Two nodes on one durable consumer: every message runs on one of them, once.
#[tokio::test]
async fn jetstream_two_nodes_share_the_durable() {
    let js = Js::new("js_two").await;
    let channel = format!("chat:{}", unique("c"));
    let first = start(with_consumer(js.consumer())).await;
    let second = start(with_consumer(js.consumer())).await;
    let mut on_first = subscriber(&first, &[&channel]).await;
    let mut on_second = subscriber(&second, &[&channel]).await;

    const N: i64 = 40;
    for n in 1..=N {
        js.publish(&[("centrifugo-method", "publish")], &publish(&channel, n))
            .await;
    }
    let seen = run_on_two(&mut on_first, &mut on_second, &channel, N).await;
    assert_eq!(seen, (1..=N).collect::<Vec<_>>());
    js.drained(N as u64).await;

    first.stop().await;
    second.stop().await;
    js.delete().await;
}

/// A stream that does not exist stops the node from starting, saying so.
#[tokio::test]
async fn jetstream_missing_stream_fails_start() {
    let missing = unique("js_missing");
    let error = crate::support::start_error(with_consumer(jetstream_consumer(
        &missing,
        "tether.test.missing",
        "d",
    )))
    .await;
    assert!(
        error.contains("nats_jetstream") && error.contains(&missing),
        "{error}"
    );
}

/// A NATS server of the test's own that speaks only TLS, with a certificate from a CA made in
/// the test: the consumer connects with `tls.enabled` and that CA as `server_ca_pem`, and its
/// messages arrive; without the CA (the system's roots) the node does not start.
#[tokio::test]
async fn jetstream_over_tls_with_the_server_ca() {
    let ca = crate::support::tls::TestCa::new();
    let identity = ca.issue(&["127.0.0.1", "localhost"]);
    let dir = crate::support::TempDir::new();
    std::fs::write(dir.join("cert.pem"), &identity.cert_pem).expect("write cert");
    std::fs::write(dir.join("key.pem"), &identity.key_pem).expect("write key");
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).expect("write ca");
    let port = crate::support::free_port();
    let conf = format!(
        "listen: 127.0.0.1:{port}\njetstream {{ store_dir: {:?} }}\n\
         tls {{ cert_file: {:?}, key_file: {:?} }}\n",
        dir.join("js").display().to_string(),
        dir.join("cert.pem").display().to_string(),
        dir.join("key.pem").display().to_string(),
    );
    std::fs::write(dir.join("nats.conf"), conf).expect("write conf");
    let server_bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nats-server");
    let mut nats = tokio::process::Command::new(server_bin)
        .arg("-c")
        .arg(dir.join("nats.conf"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start nats-server");
    let url = format!("nats://127.0.0.1:{port}");
    let mut client = None;
    for _ in 0..100 {
        if let Ok(connected) = async_nats::ConnectOptions::new()
            .add_root_certificates(dir.join("ca.pem"))
            .require_tls(true)
            .connect(url.as_str())
            .await
        {
            client = Some(connected);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let js = async_nats::jetstream::new(client.expect("the TLS nats-server answers"));
    let stream = unique("js_tls");
    let subject = format!("tether.test.{stream}");
    create_stream(&js, &stream, &subject).await;

    let mut consumer = jetstream_consumer(&stream, &subject, "tls_durable");
    consumer.nats_jetstream.url = url.clone();
    consumer.nats_jetstream.tls.enabled = true;
    let error = crate::support::start_error(with_consumer(consumer.clone())).await;
    assert!(error.contains("nats_jetstream"), "{error}");

    consumer.nats_jetstream.tls.server_ca_pem = ca.cert_pem();
    let server = start(with_consumer(consumer)).await;
    let channel = format!("chat:{}", unique("c"));
    let mut client = subscriber(&server, &[&channel]).await;
    for n in 1..=3 {
        js_publish(
            &js,
            &subject,
            &[("centrifugo-method", "publish")],
            &publish(&channel, n),
        )
        .await;
    }
    assert_eq!(
        received(&mut client, &channel, 3).await,
        [(1, 1), (2, 2), (3, 3)]
    );
    server.stop().await;
    nats.kill().await.expect("stop nats-server");
}
