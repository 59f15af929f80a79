//! Redis Cluster tests: two `tether` processes on the 3-master cluster of
//! `scripts/redis-cluster.sh` (started on first use; `TETHER_TEST_REDIS_CLUSTER` names another),
//! configured with `engine.redis.cluster_address`, each test under its own key prefix that it
//! deletes on every master at the end.

#![allow(missing_docs, clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::cluster::{
    collect, delete_cluster_keys, publication, recovered_publications, redis_cluster_seeds,
    unique_prefix,
};
use support::{Client, Node};

/// Channels of the history namespace spread over the cluster's masters.
fn rooms() -> Vec<String> {
    (0..6).map(|i| format!("chat:room-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_on_one_node_reaches_the_other_in_order_and_a_moving_client_recovers() {
    let prefix = unique_prefix("rcluster-fanout");
    let seeds = redis_cluster_seeds();
    let (a, b) = tokio::join!(
        Node::start_on_redis_cluster(&prefix, &seeds),
        Node::start_on_redis_cluster(&prefix, &seeds)
    );
    let rooms = rooms();
    let mut on_b = Client::connect(&b, "bob").await;
    let mut epochs = Vec::new();
    for room in &rooms {
        let result = on_b.subscribe(json!({ "channel": room })).await;
        epochs.push(result["epoch"].as_str().unwrap().to_owned());
    }
    for n in 1..=20 {
        for room in &rooms {
            a.publish(room, json!({ "n": n })).await;
        }
    }
    let mut per_room = vec![Vec::new(); rooms.len()];
    let mut received = 0;
    while received < 20 * rooms.len() {
        let message = on_b.next().await;
        if let Some(index) = rooms
            .iter()
            .position(|room| publication(&message, room).is_some())
        {
            per_room[index].push(publication(&message, &rooms[index]).unwrap());
            received += 1;
        }
    }
    let expected: Vec<(u64, i64)> = (1..=20).map(|n| (n as u64, n)).collect();
    for (room, got) in rooms.iter().zip(&per_room) {
        assert_eq!(got, &expected, "{room}");
    }

    // Bob leaves, publications continue on B, and he comes back on A: exactly what he missed.
    drop(on_b);
    for n in 21..=25 {
        for room in &rooms {
            b.publish(room, json!({ "n": n })).await;
        }
    }
    let mut moved = Client::connect(&a, "bob").await;
    for (room, epoch) in rooms.iter().zip(&epochs) {
        let result = moved
            .subscribe(json!({ "channel": room, "recover": true, "offset": 20, "epoch": epoch }))
            .await;
        assert_eq!(result["recovered"], json!(true), "{room}: {result}");
        assert_eq!(
            recovered_publications(&result),
            (21..=25).map(|n| (n as u64, n)).collect::<Vec<_>>(),
            "{room}"
        );
    }
    // Live delivery continues on the new node without a duplicate.
    b.publish(&rooms[0], json!({ "n": 26 })).await;
    assert_eq!(collect(&mut moved, &rooms[0], 1).await, [(26, 26)]);
    // History through the API of either node.
    let history = b
        .api("history", json!({ "channel": rooms[1], "limit": 3 }))
        .await;
    let offsets: Vec<u64> = history["result"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [1, 2, 3], "{history}");
    delete_cluster_keys(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_control_commands_span_nodes_on_the_cluster() {
    let prefix = unique_prefix("rcluster-presence");
    let seeds = redis_cluster_seeds();
    let (a, b) = tokio::join!(
        Node::start_on_redis_cluster(&prefix, &seeds),
        Node::start_on_redis_cluster(&prefix, &seeds)
    );
    let room = "chat:lobby";
    let mut alice = Client::connect(&a, "alice").await;
    let mut bob = Client::connect(&b, "bob").await;
    // Alice asks for join/leave pushes (the namespace has join_leave, not forced pushes).
    alice
        .subscribe(json!({ "channel": room, "join_leave": true }))
        .await;
    bob.subscribe(json!({ "channel": room })).await;
    let stats = a.api("presence_stats", json!({ "channel": room })).await;
    assert_eq!(stats["result"], json!({ "num_clients": 2, "num_users": 2 }));
    let presence = b.api("presence", json!({ "channel": room })).await;
    assert_eq!(presence["result"]["presence"].as_object().unwrap().len(), 2);

    // A join published on B's side reaches Alice on A (sharded Pub/Sub of the channel).
    let mut carol = Client::connect(&b, "carol").await;
    carol.subscribe(json!({ "channel": room })).await;
    let join = alice
        .wait_for(|m| m["push"]["join"]["info"]["user"] == json!("carol"))
        .await;
    assert_eq!(join["push"]["channel"], json!(room));

    // The control channel: a disconnect called on A reaches Bob on B.
    a.api(
        "disconnect",
        json!({ "user": "bob", "disconnect": { "code": 4001, "reason": "bye" } }),
    )
    .await;
    assert_eq!(bob.close_code(Duration::from_secs(5)).await, Some(4001));
    let mut remaining = 0;
    for _ in 0..50 {
        let stats = a.api("presence_stats", json!({ "channel": room })).await;
        remaining = stats["result"]["num_clients"].as_u64().unwrap();
        if remaining == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(remaining, 2, "bob's presence left with his connection");
    // Both nodes see each other through the control channel's announcements.
    let mut nodes = 0;
    for _ in 0..50 {
        nodes = b.api("info", json!({})).await["result"]["nodes"]
            .as_array()
            .unwrap()
            .len();
        if nodes == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(nodes, 2);
    delete_cluster_keys(&prefix).await;
}
