//! Cluster tests on the NATS broker: two `tether` processes on the memory engine sharing the
//! NATS on 127.0.0.1:4222 (`TETHER_TEST_NATS` overrides), each test under its own subject
//! prefix, so tests never see each other's messages.

#![allow(missing_docs, clippy::unwrap_used)]

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use prost::Message as _;
use serde_json::{Value, json};
use support::cluster::{FaultProxy, delete_keys, publication, redis_url, unique_prefix};
use support::process::serve_until_exit;
use support::{Client, Node, free_port};

fn nats_url() -> String {
    std::env::var("TETHER_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A node config on the memory engine with the NATS broker under `prefix`; `chat:` has
/// presence and join/leave, nothing has history (the broker keeps none).
fn nats_config(prefix: &str) -> Value {
    json!({
        "broker": {
            "enabled": true,
            "type": "nats",
            "nats": { "url": nats_url(), "prefix": prefix },
        },
        "channel": {
            "without_namespace": {
                "allow_subscribe_for_client": true,
                "allow_publish_for_client": true,
            },
            "namespaces": [{
                "name": "chat",
                "presence": true,
                "join_leave": true,
                "force_push_join_leave": true,
                "allow_subscribe_for_client": true,
                "allow_publish_for_client": true,
                "allow_presence_for_client": true,
            }],
        },
    })
}

async fn pair(name: &str) -> (Node, Node) {
    let prefix = unique_prefix(name);
    tokio::join!(
        Node::start_with(nats_config(&prefix)),
        Node::start_with(nats_config(&prefix))
    )
}

/// Reads publications of `channel` until `count` arrived; other messages are skipped.
async fn collect(client: &mut Client, channel: &str, count: usize) -> Vec<i64> {
    let mut out = Vec::new();
    while out.len() < count {
        let message = client.next().await;
        if let Some((offset, n)) = publication(&message, channel) {
            assert_eq!(offset, 0, "no stream positions through nats");
            out.push(n);
        }
    }
    out
}

/// Polls `api` on `node` until `done` holds for its result (at most ~5 s).
async fn eventually(node: &Node, method: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..50 {
        last = node.api(method, json!({})).await;
        if done(&last["result"]) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{method} never reached the expected state: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_cross_nodes_in_order_and_info_and_channels_see_both_nodes() {
    let (a, b) = pair("fanout").await;
    let mut on_a = Client::connect(&a, "alice").await;
    let mut on_b = Client::connect(&b, "bob").await;
    on_a.subscribe(json!({ "channel": "news" })).await;
    on_b.subscribe(json!({ "channel": "news" })).await;
    for n in 0..50 {
        let reply = a.publish("news", json!({ "n": n })).await;
        assert_eq!(reply["result"], json!({}), "no offset or epoch: {reply}");
    }
    let expected: Vec<i64> = (0..50).collect();
    assert_eq!(collect(&mut on_b, "news", 50).await, expected);
    assert_eq!(collect(&mut on_a, "news", 50).await, expected);

    // A client publish on B reaches A too.
    let reply = on_b
        .call(json!({ "publish": { "channel": "news", "data": { "n": 50 } } }))
        .await;
    assert!(reply.get("publish").is_some(), "{reply}");
    assert_eq!(collect(&mut on_a, "news", 1).await, vec![50]);

    // `info` lists both nodes once they announced themselves over NATS, B with its client
    // (announcements come every 3 s).
    eventually(&a, "info", |r| {
        let nodes = r["nodes"].as_array().unwrap();
        nodes.len() == 2
            && nodes
                .iter()
                .map(|n| n["num_clients"].as_u64().unwrap())
                .sum::<u64>()
                == 2
    })
    .await;
    // The `channels` survey adds up both nodes' subscribers (replies travel on the asker's
    // own node subject).
    let channels = a.api("channels", json!({})).await;
    assert_eq!(
        channels["result"]["channels"]["news"]["num_clients"],
        json!(2),
        "{channels}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_disconnect_on_one_node_reaches_a_user_on_the_other_and_join_leave_cross() {
    const ROOM: &str = "chat:room";
    let (a, b) = pair("control").await;
    eventually(&a, "info", |r| r["nodes"].as_array().unwrap().len() == 2).await;
    let mut alice = Client::connect(&a, "alice").await;
    alice.subscribe(json!({ "channel": ROOM })).await;
    let mut bob = Client::connect(&b, "bob").await;
    bob.subscribe(json!({ "channel": ROOM })).await;
    let join = alice
        .wait_for(|m| m["push"]["join"]["info"]["user"] == json!("bob"))
        .await;
    assert_eq!(join["push"]["channel"], json!(ROOM));

    // Presence stays per node with the NATS broker: each node counts its own connections.
    let stats = a.api("presence_stats", json!({ "channel": ROOM })).await;
    assert_eq!(stats["result"], json!({ "num_clients": 1, "num_users": 1 }));

    // Called on A, applies to bob's connection on B; alice sees him leave.
    a.api(
        "disconnect",
        json!({ "user": "bob", "disconnect": { "code": 4001, "reason": "bye" } }),
    )
    .await;
    assert_eq!(bob.close_code(Duration::from_secs(5)).await, Some(4001));
    let leave = alice
        .wait_for(|m| m["push"]["leave"]["info"]["user"] == json!("bob"))
        .await;
    assert_eq!(leave["push"]["channel"], json!(ROOM));
    // Alice, on A, is untouched.
    let reply = alice
        .call(json!({ "presence_stats": { "channel": ROOM } }))
        .await;
    assert_eq!(reply["presence_stats"]["num_clients"], json!(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shutting_down_announces_its_clients_leaving() {
    const ROOM: &str = "chat:room";
    let prefix = unique_prefix("shutdown");
    let mut config = nats_config(&prefix);
    // A short drain: the test waits for the whole shutdown.
    config["shutdown"] = json!({ "drain_window": "100ms", "timeout": "5s" });
    let (a, b) = tokio::join!(Node::start_with(config.clone()), Node::start_with(config));
    let mut alice = Client::connect(&a, "alice").await;
    alice.subscribe(json!({ "channel": ROOM })).await;
    let mut bob = Client::connect(&b, "bob").await;
    bob.subscribe(json!({ "channel": ROOM })).await;
    alice
        .wait_for(|m| m["push"]["join"]["info"]["user"] == json!("bob"))
        .await;
    b.terminate().await;
    // Bob's leave was published on his way out and flushed before B exited.
    let leave = alice
        .wait_for(|m| m["push"]["leave"]["info"]["user"] == json!("bob"))
        .await;
    assert_eq!(leave["push"]["channel"], json!(ROOM));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_not_available_and_wildcard_channels_are_refused() {
    let (a, _b) = pair("limits").await;
    let history = a.api("history", json!({ "channel": "news" })).await;
    assert_eq!(history["error"]["code"], json!(108), "{history}");
    let removed = a.api("history_remove", json!({ "channel": "news" })).await;
    assert_eq!(removed["error"]["code"], json!(108), "{removed}");
    for channel in ["news.*", "news.>"] {
        let reply = a.publish(channel, json!({})).await;
        assert_eq!(reply["error"]["code"], json!(107), "{channel}: {reply}");
    }
    let mut client = Client::connect(&a, "alice").await;
    let reply = client
        .call(json!({ "subscribe": { "channel": "news.*" } }))
        .await;
    assert_eq!(reply["error"]["code"], json!(107), "{reply}");
    // The connection survives the refusal and can subscribe to a plain dotted channel.
    client.subscribe(json!({ "channel": "news.sport" })).await;
    a.publish("news.sport", json!({ "n": 1 })).await;
    assert_eq!(collect(&mut client, "news.sport", 1).await, vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_outage_fails_publishes_turns_ready_503_and_subscriptions_survive() {
    let prefix = unique_prefix("outage");
    let proxy = FaultProxy::start(&nats_url()).await;
    let mut through_proxy = nats_config(&prefix);
    through_proxy["broker"]["nats"]["url"] = json!(proxy.url);
    let (a, b) = tokio::join!(
        Node::start_with(through_proxy),
        Node::start_with(nats_config(&prefix))
    );
    let mut client = Client::connect(&a, "u").await;
    client.subscribe(json!({ "channel": "news" })).await;
    b.publish("news", json!({ "n": 1 })).await;
    assert_eq!(collect(&mut client, "news", 1).await, vec![1]);

    proxy.cut();
    let mut down = false;
    for _ in 0..50 {
        if a.ready().await == Some(503) {
            down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(down, "/ready reflects the nats connection");
    for _ in 0..5 {
        let reply = a.publish("news", json!({ "n": 0 })).await;
        assert_eq!(
            reply["error"]["code"],
            json!(100),
            "no false success: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.restore();

    // async-nats reconnects and re-sends the channel's subscription: the client, still
    // connected, gets what B publishes from then on.
    let mut ready = false;
    for _ in 0..100 {
        if a.ready().await == Some(200) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "node reconnected to nats");
    let mut received = None;
    for n in 2..40 {
        b.publish("news", json!({ "n": n })).await;
        if let Some(message) = client.next_within(Duration::from_millis(200)).await
            && let Some((_, got)) = publication(&message, "news")
        {
            received = Some(got);
            break;
        }
    }
    let got = received.expect("delivery resumed after the reconnect");
    assert!(got >= 2, "only publications made after the outage: {got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wire_is_a_protobuf_push_on_the_channel_subject_both_ways() {
    let prefix = unique_prefix("wire");
    let node = Node::start_with(nats_config(&prefix)).await;
    let nats = async_nats::connect(nats_url()).await.unwrap();
    let mut tap = nats
        .subscribe(format!("{prefix}.client.chat:room"))
        .await
        .unwrap();
    nats.flush().await.unwrap();
    // What tether publishes: Push {channel, pub} on `{prefix}.client.{channel}`.
    let mut client = Client::connect(&node, "alice").await;
    client.subscribe(json!({ "channel": "chat:room" })).await;
    node.publish("chat:room", json!({ "n": 1 })).await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(5), tap.next())
            .await
            .expect("tether's messages on the channel subject")
            .unwrap();
        seen.push(tether_proto::Push::decode(message.payload).unwrap());
    }
    assert!(seen.iter().all(|push| push.channel == "chat:room"));
    let join = seen.iter().find_map(|p| p.join.clone()).expect("a join");
    assert_eq!(join.info.unwrap().user, "alice");
    let published = seen.iter().find_map(|p| p.r#pub.clone()).expect("a pub");
    assert_eq!(published.data.as_ref(), br#"{"n":1}"#);

    // What another node (tether or Centrifugo) publishes the same way reaches the client.
    let push = tether_proto::Push {
        channel: "chat:room".to_owned(),
        r#pub: Some(tether_proto::Publication {
            data: br#"{"n":2}"#.to_vec().into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    nats.publish(
        format!("{prefix}.client.chat:room"),
        push.encode_to_vec().into(),
    )
    .await
    .unwrap();
    nats.flush().await.unwrap();
    assert_eq!(collect(&mut client, "chat:room", 2).await, vec![1, 2]);
    // Garbage on the subject is dropped; the subscription keeps working.
    nats.publish(format!("{prefix}.client.chat:room"), "not a push".into())
        .await
        .unwrap();
    node.publish("chat:room", json!({ "n": 3 })).await;
    assert_eq!(collect(&mut client, "chat:room", 1).await, vec![3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_redis_engine_presence_is_shared_and_publications_go_through_nats() {
    const ROOM: &str = "chat:room";
    let prefix = unique_prefix("redis-presence");
    let mut config = nats_config(&prefix);
    config["engine"] = json!({
        "type": "redis",
        "redis": { "address": redis_url(), "prefix": prefix, "presence_ttl": "5s" },
    });
    config["client"] = json!({ "presence_update_interval": "1s" });
    let (a, b) = tokio::join!(Node::start_with(config.clone()), Node::start_with(config));
    let nats = async_nats::connect(nats_url()).await.unwrap();
    let mut tap = nats
        .subscribe(format!("{prefix}.client.{ROOM}"))
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let mut alice = Client::connect(&a, "alice").await;
    let mut bob = Client::connect(&b, "bob").await;
    alice.subscribe(json!({ "channel": ROOM })).await;
    bob.subscribe(json!({ "channel": ROOM })).await;
    // Presence lives in Redis: either node sees both connections.
    for node in [&a, &b] {
        let stats = node.api("presence_stats", json!({ "channel": ROOM })).await;
        assert_eq!(stats["result"], json!({ "num_clients": 2, "num_users": 2 }));
    }
    a.publish(ROOM, json!({ "n": 7 })).await;
    assert_eq!(collect(&mut bob, ROOM, 1).await, vec![7]);
    assert_eq!(collect(&mut alice, ROOM, 1).await, vec![7]);
    // It went through NATS (the tap sees the joins and the publication).
    let mut publications = 0;
    while publications == 0 {
        let message = tokio::time::timeout(Duration::from_secs(5), tap.next())
            .await
            .expect("the publication on the nats subject")
            .unwrap();
        if tether_proto::Push::decode(message.payload)
            .unwrap()
            .r#pub
            .is_some()
        {
            publications += 1;
        }
    }
    // Cross-node control still goes through NATS.
    a.api(
        "disconnect",
        json!({ "user": "bob", "disconnect": { "code": 4001, "reason": "bye" } }),
    )
    .await;
    assert_eq!(bob.close_code(Duration::from_secs(5)).await, Some(4001));
    delete_keys(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_namespaces_and_an_unreachable_nats_stop_the_start() {
    let mut config = nats_config(&unique_prefix("refused"));
    config["channel"]["namespaces"][0]["history_size"] = json!(10);
    config["channel"]["namespaces"][0]["history_ttl"] = json!("60s");
    let (code, stderr) = serve_until_exit(config).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("channel.namespaces[0].history_size") && stderr.contains("nats broker"),
        "{stderr}"
    );

    // Nothing listens on this port: the node must not start half-connected.
    let mut config = nats_config(&unique_prefix("unreachable"));
    config["broker"]["nats"]["url"] = json!(format!("nats://127.0.0.1:{}", free_port()));
    config["broker"]["nats"]["dial_timeout"] = json!("300ms");
    let (code, stderr) = serve_until_exit(config).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cannot connect to nats"), "{stderr}");
}
