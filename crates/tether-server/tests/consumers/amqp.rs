//! The RabbitMQ (AMQP 0-9-1) consumer against the RabbitMQ on 127.0.0.1:5672: commands in
//! both forms arrive in queue order, publication data mode, bad messages acknowledged and
//! passed over, a redelivery (a cut connection, a node killed with unacknowledged
//! deliveries) publishing once, and two nodes on one single-active-consumer queue.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::amqp::{
    AckHoldingProxy, Broker, Message, amqp_url, consumer, consumer_lag, consumer_messages,
    consumer_retried, consumers_json, unique_queue,
};
use crate::support::cluster::{
    FaultProxy, collect, delete_keys, publication, recovered_publications,
};
use crate::support::{self, Client, Node, TestServer};

/// `(offset, n)` of the whole history of `channel`.
async fn history(server: &TestServer, channel: &str) -> Vec<(u64, i64)> {
    let (status, reply) = server
        .api("history", json!({"channel": channel, "limit": -1}))
        .await;
    assert_eq!(status, 200, "{reply}");
    recovered_publications(&reply["result"])
}

async fn node_history(node: &Node, channel: &str) -> Vec<(u64, i64)> {
    let reply = node
        .api("history", json!({"channel": channel, "limit": -1}))
        .await;
    recovered_publications(&reply["result"])
}

/// `(1..=count)` as `(offset, n)`: each message published once, in order.
fn once_in_order(count: i64) -> Vec<(u64, i64)> {
    (1..=count).map(|n| (n as u64, n)).collect()
}

/// No publication of `channel` reaches `client` within `within`.
async fn nothing_more(client: &mut Client, channel: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while let Some(message) = client
        .next_within(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        assert!(
            publication(&message, channel).is_none(),
            "unexpected publication {message}"
        );
    }
}

/// Waits (up to 15 s) until `probe` gives `Some`.
async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, probe: impl Fn() -> F) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what} in 15 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to 15 s) until the node on `addr` counts `count` messages of `consumer` done
/// with (the count follows the publication a subscriber sees).
async fn counted(addr: std::net::SocketAddr, consumer: &str, count: f64) {
    eventually(&format!("{consumer} counts {count} messages"), || async {
        (consumer_messages(addr, consumer).await >= count).then_some(())
    })
    .await;
    assert_eq!(consumer_messages(addr, consumer).await, count);
}

/// Waits (up to 15 s) until nothing is ready in `queue`.
async fn drained(broker: &Broker, queue: &str) {
    eventually("the queue drained", || async {
        (broker.ready(queue).await == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn amqp_commands_in_both_forms_arrive_in_order_and_are_acked() {
    let queue = unique_queue("order");
    let broker = Broker::connect().await;
    let mut config = support::config();
    // Declared by the consumer as a quorum queue (replicated, single active consumer).
    let mut entry = consumer("amqp_order", &amqp_url(), &[&queue]);
    entry.amqp.queue_type = "quorum".to_owned();
    config.consumers.push(entry);
    let server = support::start(config).await;
    let mut client = Client::connect(&server, "u1").await;
    let channel = "chat:amqp-order";
    client.subscribe(json!({"channel": channel})).await;

    for n in 1..=20i64 {
        if n % 2 == 1 {
            broker.publish_n(&queue, channel, n, false).await;
        } else {
            // The envelope form, its payload once an object and once a string of JSON.
            let request = json!({"channel": channel, "data": {"n": n}});
            let payload = if n % 4 == 0 {
                Value::String(request.to_string())
            } else {
                request
            };
            let body = json!({"method": "publish", "payload": payload}).to_string();
            broker
                .publish(
                    &queue,
                    Message {
                        body: body.as_bytes(),
                        ..Default::default()
                    },
                )
                .await;
        }
    }
    let received: Vec<i64> = collect(&mut client, channel, 20)
        .await
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    assert_eq!(received, (1..=20).collect::<Vec<_>>());

    // Acknowledged: closing the consumer's connection puts nothing back in the queue.
    server.stop().await;
    drained(&broker, &queue).await;
    broker.delete(&queue).await;
}

#[tokio::test]
async fn amqp_publication_data_mode_publishes_or_broadcasts() {
    let queue = unique_queue("data-mode");
    let broker = Broker::connect().await;
    let mut config = support::config();
    let mut entry = consumer("amqp_data", &amqp_url(), &[&queue]);
    entry.amqp.publication_data_mode.enabled = true;
    config.consumers.push(entry);
    let server = support::start(config).await;
    let mut client = Client::connect(&server, "u1").await;
    let (a, b) = ("chat:amqp-a", "chat:amqp-b");
    client.subscribe(json!({"channel": a})).await;
    client.subscribe(json!({"channel": b})).await;

    broker
        .publish(
            &queue,
            Message {
                body: br#"{"n":1}"#,
                headers: &[("centrifugo-channels", a), ("centrifugo-tag-kind", "one")],
                message_id: None,
            },
        )
        .await;
    let only_a = client.wait_for(|m| publication(m, a).is_some()).await;
    assert_eq!(only_a["push"]["pub"]["data"], json!({"n": 1}));
    assert_eq!(only_a["push"]["pub"]["tags"], json!({"kind": "one"}));

    let both = format!("{a},{b}");
    broker
        .publish(
            &queue,
            Message {
                body: br#"{"n":2}"#,
                headers: &[("centrifugo-channels", &both)],
                message_id: None,
            },
        )
        .await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let message = client.next().await;
        for channel in [a, b] {
            if let Some((_, n)) = publication(&message, channel) {
                seen.push((channel, n));
            }
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, [(a, 2), (b, 2)]);
    // The first went to `a` only.
    assert_eq!(history(&server, b).await.len(), 1);
    assert_eq!(history(&server, a).await.len(), 2);

    server.stop().await;
    broker.delete(&queue).await;
}

#[tokio::test]
async fn amqp_bad_messages_are_acked_and_passed_over() {
    let queue = unique_queue("bad");
    let broker = Broker::connect().await;
    let mut config = support::config();
    config
        .consumers
        .push(consumer("amqp_bad", &amqp_url(), &[&queue]));
    let server = support::start(config).await;
    let mut client = Client::connect(&server, "u1").await;
    let channel = "chat:amqp-bad";
    client.subscribe(json!({"channel": channel})).await;

    broker.publish_n(&queue, channel, 1, false).await;
    let publish = &[("centrifugo-method", "publish")][..];
    let unknown_channel = json!({"channel": "nowhere:x", "data": {"n": 0}}).to_string();
    let bad = [
        // Not JSON, with a method header.
        Message {
            body: b"not json",
            headers: publish,
            message_id: None,
        },
        // Not UTF-8, no method header: not an envelope.
        Message {
            body: b"\xff\xfe",
            ..Default::default()
        },
        // A method consumers do not run.
        Message {
            body: br#"{"method":"presence","payload":{"channel":"chat:x"}}"#,
            ..Default::default()
        },
        // A channel of no namespace: the publish fails for good.
        Message {
            body: unknown_channel.as_bytes(),
            headers: publish,
            message_id: None,
        },
        Message {
            body: b"{}",
            headers: &[("centrifugo-method", "no_such_method")],
            message_id: None,
        },
    ];
    for message in bad {
        broker.publish(&queue, message).await;
    }
    broker.publish_n(&queue, channel, 2, false).await;
    let received = collect(&mut client, channel, 2).await;
    assert_eq!(received.iter().map(|(_, n)| *n).collect::<Vec<_>>(), [1, 2]);
    counted(server.addr, "amqp_bad", 7.0).await;

    // The bad ones were acked too.
    server.stop().await;
    drained(&broker, &queue).await;
    broker.delete(&queue).await;
}

#[tokio::test]
async fn amqp_missing_queue_stops_the_node_from_starting() {
    let queue = unique_queue("missing");
    let mut config = support::config();
    let mut entry = consumer("amqp_missing", &amqp_url(), &[&queue]);
    entry.amqp.declare_queues = false;
    config.consumers.push(entry);
    let error = support::start_error(config).await;
    assert!(
        error.contains("error initializing amqp consumer (amqp_missing)") && error.contains(&queue),
        "{error}"
    );
}

/// A command that fails with an internal error (the engine's Redis unreachable) is retried
/// in place: the messages behind it wait, and once Redis is back all are published once, in
/// queue order.
#[tokio::test]
async fn amqp_internal_errors_are_retried_in_place_keeping_order() {
    let queue = unique_queue("retry");
    let prefix = crate::support::cluster::unique_prefix("amqp-retry");
    let redis = FaultProxy::start(&crate::support::cluster::redis_url()).await;
    let broker = Broker::connect().await;
    let mut config = support::config();
    config.engine.kind = support::EngineKind::Redis;
    config.engine.redis.address = vec![redis.url.clone()];
    config.engine.redis.prefix = prefix.clone();
    config
        .consumers
        .push(consumer("amqp_retry", &amqp_url(), &[&queue]));
    let server = support::start(config).await;
    server.wait_ready().await;
    let channel = "chat:amqp-retry";

    broker.publish_n(&queue, channel, 1, true).await;
    eventually("1 published", || async {
        (history(&server, channel).await.len() == 1).then_some(())
    })
    .await;
    redis.cut();
    for n in 2..=4 {
        broker.publish_n(&queue, channel, n, true).await;
    }
    eventually("2 retried", || async {
        (consumer_retried(server.addr, "amqp_retry").await >= 2.0).then_some(())
    })
    .await;
    assert_eq!(consumer_messages(server.addr, "amqp_retry").await, 1.0);
    redis.restore();
    counted(server.addr, "amqp_retry", 4.0).await;
    assert_eq!(history(&server, channel).await, once_in_order(4));

    server.stop().await;
    drained(&broker, &queue).await;
    broker.delete(&queue).await;
    delete_keys(&prefix).await;
}

/// A queue whose single active consumer is someone else's: the node's consumer waits, its
/// lag is the queue's depth; when that consumer goes away the node takes the queue, its
/// unacknowledged message first.
#[tokio::test]
async fn amqp_waits_behind_another_active_consumer_and_reports_the_depth_as_lag() {
    let queue = unique_queue("lag");
    let broker = Broker::connect().await;
    broker.declare(&queue, true).await;
    let other = broker.take_one(&queue).await;
    let mut config = support::config();
    config
        .consumers
        .push(consumer("amqp_lag", &amqp_url(), &[&queue]));
    let server = support::start(config).await;
    let mut client = Client::connect(&server, "u1").await;
    let channel = "chat:amqp-lag";
    client.subscribe(json!({"channel": channel})).await;

    for n in 1..=5 {
        broker.publish_n(&queue, channel, n, true).await;
    }
    // One is with the other consumer, four wait.
    eventually("a lag of 4", || async {
        (consumer_lag(server.addr, "amqp_lag").await == 4.0).then_some(())
    })
    .await;
    nothing_more(&mut client, channel, Duration::from_millis(300)).await;
    assert_eq!(consumer_messages(server.addr, "amqp_lag").await, 0.0);

    drop(other);
    let received = collect(&mut client, channel, 5).await;
    assert_eq!(
        received.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    eventually("a lag of 0", || async {
        (consumer_lag(server.addr, "amqp_lag").await == 0.0).then_some(())
    })
    .await;

    server.stop().await;
    broker.delete(&queue).await;
}

/// The node publishes the messages it was delivered, its acks never reach RabbitMQ, its
/// connection is cut: RabbitMQ delivers them again on the new connection, and with
/// `message_id` set each is published once.
#[tokio::test]
async fn amqp_redelivery_after_a_cut_connection_publishes_once() {
    let queue = unique_queue("redelivery");
    let broker = Broker::connect().await;
    broker.declare(&queue, true).await;
    let proxy = AckHoldingProxy::start().await;
    let mut config = support::config();
    let mut entry = consumer("amqp_redelivery", &proxy.url, &[&queue]);
    entry.amqp.prefetch_count = 4;
    config.consumers.push(entry);
    let server = support::start(config).await;
    let mut client = Client::connect(&server, "u1").await;
    let channel = "chat:amqp-redelivery";
    client.subscribe(json!({"channel": channel})).await;
    broker.wait_for_consumer(&queue).await;

    proxy.hold_acks();
    for n in 1..=8 {
        broker.publish_n(&queue, channel, n, true).await;
    }
    // The prefetch bound: four delivered, published, not acknowledged.
    let first = collect(&mut client, channel, 4).await;
    assert_eq!(first, once_in_order(4));
    nothing_more(&mut client, channel, Duration::from_millis(500)).await;
    assert_eq!(broker.ready(&queue).await, 4);

    // RabbitMQ requeues 1..4; the consumer reconnects and gets 1..8.
    proxy.cut();
    let rest = collect(&mut client, channel, 4).await;
    assert_eq!(rest, once_in_order(8)[4..]);
    nothing_more(&mut client, channel, Duration::from_millis(500)).await;
    assert_eq!(history(&server, channel).await, once_in_order(8));
    drained(&broker, &queue).await;
    // 1..4 twice (the second time answered from the idempotency results), 5..8 once.
    counted(server.addr, "amqp_redelivery", 12.0).await;

    server.stop().await;
    broker.delete(&queue).await;
}

/// A node killed (SIGKILL) while holding published, unacknowledged deliveries: the next
/// node on the same Redis gets them again and publishes none of them twice.
#[tokio::test]
async fn amqp_node_killed_with_unacked_deliveries_publishes_each_once() {
    let queue = unique_queue("kill");
    let prefix = crate::support::cluster::unique_prefix("amqp-kill");
    let redis = crate::support::cluster::redis_url();
    let broker = Broker::connect().await;
    broker.declare(&queue, true).await;
    let proxy = AckHoldingProxy::start().await;
    let a = Node::start_with_sections(
        &prefix,
        &redis,
        &json!({"consumers": consumers_json("amqp_kill", &proxy.url, &queue, 5)}),
    )
    .await;
    let channel = "chat:amqp-kill";
    broker.wait_for_consumer(&queue).await;

    proxy.hold_acks();
    for n in 1..=10 {
        broker.publish_n(&queue, channel, n, true).await;
    }
    let published = eventually("five published", || async {
        let history = node_history(&a, channel).await;
        (history.len() >= 5).then_some(history)
    })
    .await;
    assert_eq!(published, once_in_order(5));
    a.kill().await;
    proxy.cut();

    let b = Node::start_with_sections(
        &prefix,
        &redis,
        &json!({"consumers": consumers_json("amqp_kill", &amqp_url(), &queue, 5)}),
    )
    .await;
    eventually("all ten published", || async {
        (node_history(&b, channel).await.len() >= 10).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(node_history(&b, channel).await, once_in_order(10));
    counted(b.addr, "amqp_kill", 10.0).await;

    b.kill().await;
    broker.delete(&queue).await;
    delete_keys(&prefix).await;
}

/// Two nodes on one single-active-consumer queue: the first consumes alone; killed
/// mid-stream, the second takes over, and the subscriber sees every message once, in order.
#[tokio::test]
async fn amqp_single_active_consumer_hands_over_when_the_node_dies() {
    let queue = unique_queue("failover");
    let prefix = crate::support::cluster::unique_prefix("amqp-failover");
    let redis = crate::support::cluster::redis_url();
    let broker = Broker::connect().await;
    let consumers = json!({"consumers": consumers_json("amqp_failover", &amqp_url(), &queue, 100)});
    let a = Node::start_with_sections(&prefix, &redis, &consumers).await;
    // a's consumer registers first: the active one.
    broker.wait_for_consumer(&queue).await;
    let b = Node::start_with_sections(&prefix, &redis, &consumers).await;
    let channel = "chat:amqp-failover";
    let mut client = Client::connect(&b, "u1").await;
    client.subscribe(json!({"channel": channel})).await;

    let producer = {
        let queue = queue.clone();
        tokio::spawn(async move {
            let broker = Broker::connect().await;
            for n in 1..=60 {
                broker.publish_n(&queue, channel, n, true).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let before = collect(&mut client, channel, 15).await;
    assert_eq!(
        consumer_messages(b.addr, "amqp_failover").await,
        0.0,
        "b waits"
    );
    eventually("a counts 15", || async {
        (consumer_messages(a.addr, "amqp_failover").await >= 15.0).then_some(())
    })
    .await;
    a.kill().await;
    let after = collect(&mut client, channel, 45).await;
    producer.await.expect("producer");
    nothing_more(&mut client, channel, Duration::from_millis(500)).await;

    let received: Vec<(u64, i64)> = before.into_iter().chain(after).collect();
    assert_eq!(received, once_in_order(60));
    eventually("b took over", || async {
        (consumer_messages(b.addr, "amqp_failover").await >= 45.0).then_some(())
    })
    .await;

    b.kill().await;
    broker.delete(&queue).await;
    delete_keys(&prefix).await;
}
