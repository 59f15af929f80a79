//! Cluster tests: two or three `tether` processes sharing the Redis on 127.0.0.1:6379
//! (`TETHER_TEST_REDIS` overrides), each test under its own key prefix, cleaned up at the end.

#![allow(missing_docs, clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::cluster::{
    FaultProxy, collect, delete_keys, publication, recovered_publications, redis_url, unique_prefix,
};
use support::webhook::{self, Receiver, WEBHOOK_SECRET};
use support::{API_KEY, Client, Node, http};

const ROOM: &str = "chat:room";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_on_one_node_reaches_subscribers_on_the_others_in_order() {
    let prefix = unique_prefix("fanout");
    let url = redis_url();
    let (a, b, c) = tokio::join!(
        Node::start(&prefix, &url),
        Node::start(&prefix, &url),
        Node::start(&prefix, &url)
    );
    let mut on_b = Client::connect(&b, "bob").await;
    let mut on_c = Client::connect(&c, "carol").await;
    on_b.subscribe(json!({ "channel": "news" })).await;
    on_c.subscribe(json!({ "channel": "news" })).await;
    for n in 0..50 {
        a.publish("news", json!({ "n": n })).await;
    }
    let expected: Vec<i64> = (0..50).collect();
    for client in [&mut on_b, &mut on_c] {
        let got: Vec<i64> = collect(client, "news", 50)
            .await
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        assert_eq!(got, expected);
    }
    // `info` lists every live node once they have announced themselves.
    let mut nodes = 0;
    for _ in 0..50 {
        nodes = a.api("info", json!({})).await["result"]["nodes"]
            .as_array()
            .unwrap()
            .len();
        if nodes == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(nodes, 3);
    // `channels` is cluster-wide: A has no subscribers of its own.
    let channels = a.api("channels", json!({})).await;
    assert_eq!(
        channels["result"]["channels"]["news"]["num_clients"],
        json!(2),
        "{channels}"
    );
    delete_keys(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_cluster_wide_and_disconnect_reaches_other_nodes() {
    let prefix = unique_prefix("presence");
    let url = redis_url();
    let (a, b) = tokio::join!(Node::start(&prefix, &url), Node::start(&prefix, &url));
    let mut alice = Client::connect(&a, "alice").await;
    let mut bob = Client::connect(&b, "bob").await;
    let mut bob2 = Client::connect(&b, "bob").await;
    alice.subscribe(json!({ "channel": ROOM })).await;
    bob.subscribe(json!({ "channel": ROOM })).await;
    bob2.subscribe(json!({ "channel": ROOM })).await;
    let stats = a.api("presence_stats", json!({ "channel": ROOM })).await;
    assert_eq!(stats["result"], json!({ "num_clients": 3, "num_users": 2 }));
    let presence = b.api("presence", json!({ "channel": ROOM })).await;
    assert_eq!(presence["result"]["presence"].as_object().unwrap().len(), 3);

    // Called on A, applies to bob's connections on B.
    a.api(
        "disconnect",
        json!({ "user": "bob", "disconnect": { "code": 4001, "reason": "bye" } }),
    )
    .await;
    assert_eq!(bob.close_code(Duration::from_secs(5)).await, Some(4001));
    assert_eq!(bob2.close_code(Duration::from_secs(5)).await, Some(4001));
    let mut remaining = 0;
    for _ in 0..50 {
        let stats = a.api("presence_stats", json!({ "channel": ROOM })).await;
        remaining = stats["result"]["num_clients"].as_u64().unwrap();
        if remaining == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(remaining, 1, "bob's presence left with his connections");
    // Alice, on A, is untouched.
    let reply = alice
        .call(json!({ "presence_stats": { "channel": ROOM } }))
        .await;
    assert_eq!(reply["presence_stats"]["num_clients"], json!(1));
    delete_keys(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moving_between_nodes_recovers_exactly_what_it_missed() {
    let prefix = unique_prefix("move");
    let url = redis_url();
    let (a, b) = tokio::join!(Node::start(&prefix, &url), Node::start(&prefix, &url));
    let mut client = Client::connect(&a, "mover").await;
    let result = client.subscribe(json!({ "channel": ROOM })).await;
    let epoch = result["epoch"].as_str().unwrap().to_owned();
    for n in 1..=5 {
        b.publish(ROOM, json!({ "n": n })).await;
    }
    let seen = collect(&mut client, ROOM, 5).await;
    assert_eq!(seen.last().unwrap().0, 5);
    drop(client);
    for n in 6..=10 {
        a.publish(ROOM, json!({ "n": n })).await;
    }
    let mut moved = Client::connect(&b, "mover").await;
    let result = moved
        .subscribe(json!({ "channel": ROOM, "recover": true, "offset": 5, "epoch": epoch }))
        .await;
    assert_eq!(result["recovered"], json!(true), "{result}");
    let recovered = recovered_publications(&result);
    assert_eq!(
        recovered,
        (6..=10).map(|n| (n as u64, n)).collect::<Vec<_>>()
    );
    // Live delivery continues without a duplicate.
    a.publish(ROOM, json!({ "n": 11 })).await;
    assert_eq!(collect(&mut moved, ROOM, 1).await, [(11, 11)]);
    delete_keys(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_node_recover_on_another_with_zero_loss() {
    let prefix = unique_prefix("kill");
    let url = redis_url();
    let (a, b) = tokio::join!(Node::start(&prefix, &url), Node::start(&prefix, &url));
    let mut client = Client::connect(&b, "victim").await;
    let result = client.subscribe(json!({ "channel": ROOM })).await;
    let epoch = result["epoch"].as_str().unwrap().to_owned();

    let api = a.addr;
    let publisher = tokio::spawn(async move {
        let mut published = 0;
        for n in 1..=200 {
            let body = json!({ "channel": ROOM, "data": { "n": n } });
            let reply = http::api(api, "publish", body, Some(API_KEY)).await;
            if reply.is_ok_and(|(_, reply)| reply.get("result").is_some()) {
                published = n;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        published
    });
    let mut seen = collect(&mut client, ROOM, 40).await;
    b.kill().await;
    // Drain what reached the socket before the kill.
    while let Some(message) = client.next_within(Duration::from_millis(500)).await {
        if let Some(p) = publication(&message, ROOM) {
            seen.push(p);
        }
    }
    let last = seen.last().unwrap().0;
    let mut moved = Client::connect(&a, "victim").await;
    let result = moved
        .subscribe(json!({ "channel": ROOM, "recover": true, "offset": last, "epoch": epoch }))
        .await;
    assert_eq!(result["recovered"], json!(true), "{result}");
    seen.extend(recovered_publications(&result));
    let published = publisher.await.unwrap();
    assert_eq!(published, 200, "every publish through A succeeded");
    while seen.last().unwrap().0 < 200 {
        seen.extend(collect(&mut moved, ROOM, 1).await);
    }
    let offsets: Vec<u64> = seen.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        (1..=200).collect::<Vec<u64>>(),
        "zero loss, zero duplicates"
    );
    delete_keys(&prefix).await;
}

/// Redis losing its data. Redis here is shared with other work, so instead of FLUSHALL the
/// test deletes every key under its own prefix (stream and meta keys included), which is
/// the same event from tether's point of view: the streams are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_redis_data_means_new_epochs_and_never_a_false_recovery() {
    let prefix = unique_prefix("flush");
    let url = redis_url();
    let (a, b) = tokio::join!(Node::start(&prefix, &url), Node::start(&prefix, &url));
    let mut client = Client::connect(&b, "u").await;
    let result = client.subscribe(json!({ "channel": ROOM })).await;
    let old_epoch = result["epoch"].as_str().unwrap().to_owned();
    a.publish(ROOM, json!({ "n": 1 })).await;
    a.publish(ROOM, json!({ "n": 2 })).await;
    assert_eq!(collect(&mut client, ROOM, 2).await.last().unwrap().0, 2);

    delete_keys(&prefix).await;
    let reply = a.publish(ROOM, json!({ "n": 3 })).await;
    let new_epoch = reply["result"]["epoch"].as_str().unwrap().to_owned();
    assert_ne!(new_epoch, old_epoch);
    assert_eq!(reply["result"]["offset"], json!(1));
    // The live subscriber is told it lost continuity (epoch changed) instead of getting
    // offset 1 of another stream as if it followed offset 2.
    let push = client
        .wait_for(|m| m["push"]["unsubscribe"].is_object() || publication(m, ROOM).is_some())
        .await;
    assert_eq!(push["push"]["unsubscribe"]["code"], json!(2500), "{push}");
    let result = client
        .subscribe(json!({ "channel": ROOM, "recover": true, "offset": 2, "epoch": old_epoch }))
        .await;
    assert_ne!(result["recovered"], json!(true), "{result}");
    assert_eq!(result["epoch"], json!(new_epoch));
    assert!(recovered_publications(&result).is_empty());
    // A client returning later from the old epoch is not recovered either.
    let mut late = Client::connect(&a, "late").await;
    let result = late
        .subscribe(json!({ "channel": ROOM, "recover": true, "offset": 2, "epoch": old_epoch }))
        .await;
    assert_ne!(result["recovered"], json!(true), "{result}");
    delete_keys(&prefix).await;
}

/// Redis unreachable for 5 s, through a proxy (not CLIENT PAUSE, which would stall everyone
/// else sharing this Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_fails_publishes_keeps_clients_and_delivery_resumes() {
    let prefix = unique_prefix("outage");
    let proxy = FaultProxy::start(&redis_url()).await;
    let (a, b) = tokio::join!(
        Node::start(&prefix, &proxy.url),
        Node::start(&prefix, &proxy.url)
    );
    let mut client = Client::connect(&b, "u").await;
    let result = client.subscribe(json!({ "channel": ROOM })).await;
    let epoch = result["epoch"].as_str().unwrap().to_owned();
    a.publish(ROOM, json!({ "n": 1 })).await;
    assert_eq!(collect(&mut client, ROOM, 1).await, [(1, 1)]);

    proxy.cut();
    let started = tokio::time::Instant::now();
    let mut errors = 0;
    while started.elapsed() < Duration::from_secs(5) {
        let reply = a.publish(ROOM, json!({ "n": 0 })).await;
        assert!(
            reply.get("result").is_none(),
            "no false success during the outage: {reply}"
        );
        assert_eq!(reply["error"]["code"], json!(100));
        errors += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(errors > 3);
    assert_eq!(b.ready().await, Some(503), "/ready reflects the engine");
    // The publishing node's breaker opened and failed later publishes at once.
    let metrics = support::http::request(a.addr, "GET", "/metrics", "", "")
        .await
        .expect("metrics");
    let figure = |name: &str| -> f64 {
        let line = format!("{name}{{shard=\"0\"}} ");
        metrics
            .body()
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in\n{}", metrics.body()))
    };
    assert!(figure("tether_redis_breaker_opened_total") >= 1.0);
    assert!(figure("tether_redis_breaker_rejected_total") >= 1.0);
    assert!(figure("tether_redis_pubsub_seconds_since_alive") >= 0.0);
    proxy.restore();

    // The client stayed connected; after the Pub/Sub reconnect its positioned subscription
    // is told to recover (2500), and recovery finds nothing missing.
    let push = client
        .wait_for(|m| m["push"]["unsubscribe"].is_object())
        .await;
    assert_eq!(push["push"]["unsubscribe"]["code"], json!(2500));
    let mut ready = false;
    for _ in 0..100 {
        if a.ready().await == Some(200) && b.ready().await == Some(200) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "nodes reconnected");
    let result = client
        .subscribe(json!({ "channel": ROOM, "recover": true, "offset": 1, "epoch": epoch }))
        .await;
    assert_eq!(result["recovered"], json!(true), "{result}");
    a.publish(ROOM, json!({ "n": 2 })).await;
    assert_eq!(collect(&mut client, ROOM, 1).await, [(2, 2)]);
    delete_keys(&prefix).await;
}

/// Issue 20's cluster case: a user connected to two nodes is online once; after a kill -9 of
/// one node the user stays online (the other connection lives), a user only on the killed
/// node goes offline once, and only after that node's connections expired with it; the
/// first user goes offline once, after its last connection leaves and the grace passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_is_decided_once_for_the_cluster_even_when_a_node_is_killed() {
    let prefix = unique_prefix("events");
    let url = redis_url();
    let receiver = Receiver::start().await;
    let sections = json!({
        "webhook": {
            "endpoint": receiver.url(),
            "secret": WEBHOOK_SECRET,
            "offline_grace": "1s",
            "batch_max_delay": "10ms",
        }
    });
    let (a, b) = tokio::join!(
        Node::start_with_sections(&prefix, &url, &sections),
        Node::start_with_sections(&prefix, &url, &sections)
    );
    let _dana_on_a = Client::connect(&a, "dana").await;
    let dana_on_b = Client::connect(&b, "dana").await;
    let _erin_on_a = Client::connect(&a, "erin").await;
    let online = |user: &'static str| {
        move |events: &[serde_json::Value]| {
            webhook::kinds_of_user(events, user).contains(&"user_online")
        }
    };
    receiver
        .wait_for(Duration::from_secs(10), online("dana"))
        .await;
    receiver
        .wait_for(Duration::from_secs(10), online("erin"))
        .await;

    let killed = tokio::time::Instant::now();
    a.kill().await;
    let events = receiver
        .wait_for(Duration::from_secs(30), |events| {
            webhook::kinds_of_user(events, "erin").contains(&"user_offline")
        })
        .await;
    let waited = killed.elapsed();
    // A's connections expire with A: no sooner than the node timeout (10 s) after its last
    // liveness refresh (at most 0.5 s before the kill).
    assert!(
        waited >= Duration::from_secs(9),
        "erin went offline {waited:?} after the kill, before A could be declared dead"
    );
    assert!(
        !webhook::kinds_of_user(&events, "dana").contains(&"user_offline"),
        "dana is still connected to B:\n{}",
        webhook::lines(&events)
    );

    drop(dana_on_b);
    receiver
        .wait_for(Duration::from_secs(15), |events| {
            webhook::kinds_of_user(events, "dana").contains(&"user_offline")
        })
        .await;
    // Give a duplicate the time to show up (a tick of every node, twice).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events = receiver.events();
    for user in ["dana", "erin"] {
        let kinds = webhook::kinds_of_user(&events, user);
        let count = |kind: &str| kinds.iter().filter(|k| **k == kind).count();
        assert_eq!(
            (count("user_online"), count("user_offline")),
            (1, 1),
            "{user}: {kinds:?}"
        );
    }
    assert!(
        receiver.recorded().iter().all(|r| r.valid),
        "every body signed"
    );
    b.kill().await;
    delete_keys(&prefix).await;
}
