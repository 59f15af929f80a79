//! Graceful drain of the real `tether` binary: SIGTERM turns `/ready` to 503 and refuses new
//! clients, every connected client gets 3001 at a time spread over `shutdown.drain_window`
//! (not all at once), and the process exits with code 0 before `shutdown.timeout`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Client, Node, http, ws};
use tokio::time::Instant;

const CLIENTS: usize = 20;
const DRAIN_WINDOW: Duration = Duration::from_secs(2);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(8);

/// The binary with a drain window and a shutdown deadline (the node is killed if the test
/// fails half-way).
fn start_binary() -> Node {
    Node::spawn(json!({
        "tcp": { "enabled": false },
        "channel": { "without_namespace": { "allow_subscribe_for_client": true } },
        "shutdown": {
            "drain_window": humantime::format_duration(DRAIN_WINDOW).to_string(),
            "timeout": humantime::format_duration(SHUTDOWN_TIMEOUT).to_string(),
        },
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_clients_with_3001_spread_over_the_window_and_exits_0() {
    let mut node = start_binary();
    let addr = node.addr;

    let started = http::wait_for_status(addr, "/health", 200, Duration::from_secs(20)).await;
    assert!(started, "tether did not start");
    assert_eq!(http::get_status(addr, "/ready").await, Some(200));

    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let (mut client, _) = Client::connected(&node, &format!("u{i}")).await;
        client.call(json!({"subscribe": {"channel": "news"}})).await;
        clients.push(client);
    }

    let signalled = Instant::now();
    node.sigterm();

    let waits: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let frame = client.closed(Duration::from_secs(15)).await;
                (frame.map(|f| u16::from(f.code)), signalled.elapsed())
            })
        })
        .collect();

    // While draining: not ready, no new clients, but still answering.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(http::get_status(addr, "/ready").await, Some(503));
    assert_eq!(ws::upgrade_status(addr, "").await.0, 503);

    let mut times = Vec::new();
    for wait in waits {
        let (code, at) = wait.await.unwrap();
        assert_eq!(
            code,
            Some(3001),
            "every client is told to reconnect elsewhere"
        );
        times.push(at);
    }
    let status = loop {
        if let Some(status) = node.try_wait() {
            break status;
        }
        assert!(
            signalled.elapsed() < SHUTDOWN_TIMEOUT + Duration::from_secs(2),
            "tether did not exit by the shutdown deadline"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let exited = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "exit code after SIGTERM");
    assert!(exited < SHUTDOWN_TIMEOUT, "exited after {exited:?}");

    times.sort();
    let first = times[0];
    let last = times[CLIENTS - 1];
    // Spread across the window, not all at once.
    assert!(
        last - first >= DRAIN_WINDOW / 2,
        "close times not spread: {first:?}..{last:?}"
    );
    assert!(
        last < DRAIN_WINDOW + Duration::from_secs(2),
        "last close at {last:?}"
    );
    let buckets: std::collections::BTreeSet<u128> =
        times.iter().map(|t| t.as_millis() / 250).collect();
    assert!(
        buckets.len() >= 4,
        "closes bunched into {} quarter-second buckets: {times:?}",
        buckets.len()
    );
    // The process waited for the drain, not for its deadline.
    assert!(exited >= first, "exited before the first close");
    assert!(
        exited < DRAIN_WINDOW + Duration::from_secs(3),
        "exit took {exited:?}"
    );
}
