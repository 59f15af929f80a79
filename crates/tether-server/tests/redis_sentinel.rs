//! Redis Sentinel tests: `tether` processes on a master found through the sentinel of
//! `scripts/redis-sentinel.sh` (`engine.redis.sentinel_address` + `sentinel_master_name`).
//! Each test has a deployment of its own ports, so a failover in one never disturbs another.

#![allow(missing_docs, clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::json;
use support::cluster::{RedisSentinel, collect, publication, unique_prefix};
use support::{API_KEY, Client, Gateway, Node, http};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_sentinel_publishes_subscribes_and_keeps_history() {
    let sentinel = RedisSentinel::start(7201);
    let prefix = unique_prefix("sentinel-basic");
    let (a, b) = tokio::join!(
        Node::start_on_redis_sentinel(&prefix, &sentinel),
        Node::start_on_redis_sentinel(&prefix, &sentinel)
    );
    let room = "chat:sentinel";
    let mut client = Client::connect(&b, "u").await;
    client.subscribe(json!({ "channel": room })).await;
    for n in 1..=3 {
        a.publish(room, json!({ "n": n })).await;
    }
    assert_eq!(
        collect(&mut client, room, 3).await,
        [(1, 1), (2, 2), (3, 3)]
    );
    let history = b
        .api("history", json!({ "channel": room, "limit": 10 }))
        .await;
    let offsets: Vec<u64> = history["result"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [1, 2, 3], "{history}");
    let presence = a.api("presence_stats", json!({ "channel": room })).await;
    assert_eq!(presence["result"]["num_clients"], json!(1), "{presence}");
    sentinel.delete_keys(&prefix).await;
}

/// What one subscriber saw during a failover round.
#[derive(Debug, Default)]
struct Seen {
    /// `n` of every publication delivered, live or recovered, in arrival order.
    received: Vec<i64>,
    /// When each was received.
    at: Vec<Instant>,
    /// A resubscription answered `recovered: false`.
    told_unrecovered: bool,
    /// `received.len()` when the last resubscription succeeded.
    since_last_resubscribe: usize,
    resubscribes: usize,
}

/// Follows `channel` until `stop`: records publications, and on an `unsubscribe` (2500,
/// insufficient state) resubscribes with recovery from the last position, as an SDK does.
async fn follow(mut client: Client, channel: String, epoch: String, stop: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen::default();
    let (mut epoch, mut offset) = (epoch, 0u64);
    while !stop.load(Ordering::SeqCst) {
        let Some(message) = client.next_within(Duration::from_millis(100)).await else {
            continue;
        };
        if let Some((at, n)) = publication(&message, &channel) {
            seen.received.push(n);
            seen.at.push(Instant::now());
            offset = at;
            continue;
        }
        if message["push"]["unsubscribe"].is_object() {
            assert_eq!(
                message["push"]["unsubscribe"]["code"],
                json!(2500),
                "{message}"
            );
            loop {
                let reply = client
                    .call(json!({ "subscribe": {
                        "channel": channel, "recover": true, "offset": offset, "epoch": epoch,
                    }}))
                    .await;
                let Some(result) = reply.get("subscribe") else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                if result["recovered"] != json!(true) {
                    seen.told_unrecovered = true;
                }
                for p in result["publications"].as_array().into_iter().flatten() {
                    seen.received.push(p["data"]["n"].as_i64().unwrap());
                    seen.at.push(Instant::now());
                }
                epoch = result["epoch"].as_str().unwrap_or_default().to_owned();
                offset = result["offset"].as_u64().unwrap_or(0);
                seen.resubscribes += 1;
                seen.since_last_resubscribe = seen.received.len();
                break;
            }
        }
    }
    seen
}

/// Publishes `{"n": 1, 2, ...}` every 40 ms through `addr`'s API until `stop`; the `n` of
/// every acknowledged publication and when it was acknowledged.
async fn publish_steadily(
    addr: std::net::SocketAddr,
    channel: String,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(i64, Instant)>>>,
) {
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let body = json!({ "channel": channel, "data": { "n": n } });
        if let Ok((200, reply)) = http::api(addr, "publish", body, Some(API_KEY)).await
            && reply.get("result").is_some()
        {
            acked.lock().push((n, Instant::now()));
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

enum Failover {
    /// SIGKILL of the master: the sentinel notices and promotes the replica.
    Crash,
    /// `SENTINEL FAILOVER`: the old master lives on, demoted.
    Manual,
}

/// One failover with a publisher on A (every 40 ms) and subscribers on A and B. Returns the
/// longest time either subscriber went without a delivery (live or recovered) from the
/// failover on: the delivery gap.
async fn failover_round(
    sentinel: &RedisSentinel,
    a: &Node,
    b: &Node,
    room: &str,
    kind: Failover,
) -> Duration {
    let mut subscribers = Vec::new();
    let stop_followers = Arc::new(AtomicBool::new(false));
    for node in [a, b] {
        let mut client = Client::connect(node, "u").await;
        let result = client.subscribe(json!({ "channel": room })).await;
        let epoch = result["epoch"].as_str().unwrap().to_owned();
        subscribers.push(tokio::spawn(follow(
            client,
            room.to_owned(),
            epoch,
            stop_followers.clone(),
        )));
    }
    let stop_publisher = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let publisher = tokio::spawn(publish_steadily(
        a.addr(),
        room.to_owned(),
        stop_publisher.clone(),
        acked.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Readiness of B, sampled every 20 ms from the failover on.
    let (b_addr, stop_probe) = (b.addr(), Arc::new(AtomicBool::new(false)));
    let probe = tokio::spawn({
        let stop = stop_probe.clone();
        async move {
            let mut samples = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                samples.push(http::get_status(b_addr, "/ready").await);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            samples
        }
    });
    let old_master = sentinel.master_url();
    let began = Instant::now();
    match &kind {
        Failover::Crash => {
            let port = old_master.rsplit(':').next().unwrap().to_owned();
            sentinel.script(&["kill", &port]);
        }
        Failover::Manual => {
            let status = std::process::Command::new("redis-cli")
                .args(["-p", &(sentinel.port + 10).to_string()])
                .args(["SENTINEL", "FAILOVER", RedisSentinel::MASTER_NAME])
                .status()
                .unwrap();
            assert!(status.success());
        }
    }
    // Publish until 2 s of publications were acknowledged after the failover began, then 1 s
    // more; the subscribers' tasks record arrival times, read once they stop.
    let deadline = began + Duration::from_secs(15);
    loop {
        assert!(
            Instant::now() < deadline,
            "no publication acknowledged 15 s after the failover"
        );
        if acked
            .lock()
            .iter()
            .any(|(_, at)| *at > began + Duration::from_secs(2))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_publisher.store(true, Ordering::SeqCst);
    publisher.await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_followers.store(true, Ordering::SeqCst);
    stop_probe.store(true, Ordering::SeqCst);
    let samples = probe.await.unwrap();
    let acked = acked.lock().clone();
    assert_ne!(
        sentinel.master_url(),
        old_master,
        "the sentinel failed over"
    );

    let mut delivering_after = Duration::ZERO;
    for (i, subscriber) in subscribers.into_iter().enumerate() {
        let seen = subscriber.await.unwrap();
        let name = ["A", "B"][i];
        // In order, no duplicates.
        assert!(
            seen.received.windows(2).all(|w| w[0] < w[1]),
            "{name}: out of order or duplicated: {:?}",
            seen.received
        );
        let acked_ns: Vec<i64> = acked.iter().map(|(n, _)| *n).collect();
        if !seen.told_unrecovered {
            let missing: Vec<i64> = acked_ns
                .iter()
                .filter(|n| !seen.received.contains(n))
                .copied()
                .collect();
            assert!(
                missing.is_empty(),
                "{name}: acknowledged, never delivered, recovered: {missing:?}"
            );
        }
        // From the last resubscription on, nothing acknowledged is missing.
        if let Some(first) = seen.received.get(seen.since_last_resubscribe) {
            let missing: Vec<i64> = acked_ns
                .iter()
                .filter(|n| *n >= first && !seen.received.contains(n))
                .copied()
                .collect();
            assert!(
                missing.is_empty(),
                "{name}: lost after resubscribing: {missing:?}"
            );
        }
        assert!(seen.resubscribes >= 1, "{name}: was never told to recover");
        assert!(
            seen.told_unrecovered,
            "{name}: a failover must start new epochs (recovered: false)"
        );
        // The longest wait for a delivery from the failover on.
        let mut last = began;
        for at in seen.at.iter().filter(|at| **at > began) {
            delivering_after = delivering_after.max(*at - last);
            last = *at;
        }
        assert!(last > began, "{name}: nothing delivered after the failover");
    }
    // After a crash the node cannot reach a master for a while: not ready, then ready. (A
    // manual failover may be too quick for 20 ms samples to catch.)
    if matches!(kind, Failover::Crash) {
        let went_down = samples.iter().position(|s| *s == Some(503));
        let went_down = went_down.expect("/ready of B was never 503 during the failover");
        assert!(
            samples[went_down..].contains(&Some(200)),
            "/ready of B did not come back: {samples:?}"
        );
    }
    assert_eq!(b.ready().await, Some(200));
    delivering_after
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failovers_lose_no_acknowledged_publication_silently_and_delivery_resumes() {
    let sentinel = RedisSentinel::start(7301);
    let prefix = unique_prefix("sentinel-failover");
    let (a, b) = tokio::join!(
        Node::start_on_redis_sentinel(&prefix, &sentinel),
        Node::start_on_redis_sentinel(&prefix, &sentinel)
    );
    let crash = failover_round(&sentinel, &a, &b, "chat:crash", Failover::Crash).await;
    eprintln!("crash failover: longest delivery gap {crash:?}");
    // The killed master comes back empty, as a replica of the new one.
    let old = sentinel.script(&["status"]);
    let down = old
        .lines()
        .find_map(|line| line.strip_suffix(": down"))
        .unwrap()
        .to_owned();
    sentinel.script(&["restart", &down]);
    let manual = failover_round(&sentinel, &a, &b, "chat:manual", Failover::Manual).await;
    eprintln!("manual failover: longest delivery gap {manual:?}");
    // Timed bounds are generous: a loaded 2-core machine must not fail this.
    assert!(crash < Duration::from_secs(15), "{crash:?}");
    assert!(manual < Duration::from_secs(15), "{manual:?}");
    sentinel.script(&["start"]);
    sentinel.delete_keys(&prefix).await;
}
