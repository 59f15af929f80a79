//! The disk engine (issue 19) end to end: the `tether` binary on `engine.type = "disk"`,
//! killed with SIGKILL or stopped with SIGTERM and started again on the same store. What a
//! publisher was acknowledged survives a restart with its epoch, offset and data (or its
//! stream gets a new epoch); a torn tail is cut; a full disk fails publishes but not the
//! node; two nodes cannot share a store.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use support::cluster::{collect, recovered_publications};
use support::process::serve_until_exit;
use support::{API_KEY, Client, Node, TempDir, http};
use tokio::time::Instant;

/// History kept by the `log:` namespace: more than any test publishes into one channel, so
/// every history read returns the whole stream.
const HISTORY_SIZE: usize = 10_000;
/// The smallest `engine.disk.segment_size`: tests that want many segments use it.
const MIN_SEGMENT: u64 = 64 << 10;

/// A node config on the disk engine with its store in `store`: channels in `log:` keep
/// history and force recovery, channels without a namespace keep nothing.
fn disk_config(store: &Path, fsync: &str) -> Value {
    json!({
        // Tests stop nodes with clients still connected: drain them quickly.
        "shutdown": { "drain_window": "100ms" },
        "engine": {
            "type": "disk",
            "disk": { "path": store, "fsync": fsync, "fsync_interval": "50ms" },
        },
        "channel": {
            "without_namespace": { "allow_subscribe_for_client": true },
            "namespaces": [{
                "name": "log",
                "history_size": HISTORY_SIZE,
                "history_ttl": "300s",
                "force_recovery": true,
                "allow_subscribe_for_client": true,
                "allow_history_for_client": true,
            }],
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_recovers_exactly_what_it_missed_across_a_kill_9() {
    const CHANNEL: &str = "log:recover";
    let store = TempDir::new();
    let config = disk_config(store.path(), "always");
    let node = Node::start_with(config.clone()).await;
    for n in 1..=3 {
        published(&node, CHANNEL, n).await;
    }
    let (mut client, _) = Client::connected(&node, "u1").await;
    let sub = client.subscribe(json!({ "channel": CHANNEL })).await;
    assert_eq!(sub["recoverable"], json!(true), "{sub}");
    assert_eq!(sub["offset"], json!(3), "{sub}");
    let epoch = sub["epoch"].as_str().expect("an epoch").to_owned();
    for n in 4..=5 {
        published(&node, CHANNEL, n).await;
    }
    assert_eq!(collect(&mut client, CHANNEL, 2).await, [(4, 4), (5, 5)]);
    // The client leaves at (5, epoch); five more are published while it is away.
    drop(client);
    for n in 6..=10 {
        assert_eq!(published(&node, CHANNEL, n).await, (n, epoch.clone()));
    }
    node.kill().await;

    let node = Node::start_with(config).await;
    let (mut client, _) = Client::connected(&node, "u1").await;
    let sub = client
        .subscribe(json!({ "channel": CHANNEL, "recover": true, "offset": 5, "epoch": epoch }))
        .await;
    assert_eq!(sub["recovered"], json!(true), "{sub}");
    assert_eq!(sub["epoch"], json!(epoch), "{sub}");
    assert_eq!(
        recovered_publications(&sub),
        [(6, 6), (7, 7), (8, 8), (9, 9), (10, 10)]
    );
    let stream = history(&node, CHANNEL).await;
    assert_eq!((stream.offset, stream.epoch.as_str()), (10, epoch.as_str()));
    assert_eq!(stream.numbers(), numbered(1..=10));
    // The stream goes on where it was, live too.
    assert_eq!(published(&node, CHANNEL, 11).await, (11, epoch));
    assert_eq!(collect(&mut client, CHANNEL, 1).await, [(11, 11)]);
    assert!(node.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_restart_keeps_epochs_and_offsets_with_fsync_always() {
    clean_restart_keeps_streams("always").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_restart_keeps_epochs_and_offsets_with_fsync_interval() {
    clean_restart_keeps_streams("interval").await;
}

/// Publishes into two channels, stops the node with SIGTERM, starts it again (as if after a
/// reboot): both streams are where they were, and the next publish continues them.
async fn clean_restart_keeps_streams(fsync: &str) {
    let store = TempDir::new();
    let config = disk_config(store.path(), fsync);
    let node = Node::start_with(config.clone()).await;
    for n in 1..=20 {
        published(&node, "log:a", n).await;
    }
    published(&node, "log:b", 1).await;
    let a = history(&node, "log:a").await;
    let b = history(&node, "log:b").await;
    assert_eq!(a.offset, 20);
    let status = node.terminate().await;
    assert!(status.success(), "exit after SIGTERM: {status}");
    // A clean close keeps every epoch even when the machine rebooted meanwhile (the
    // streams written just now are still armed in `interval` mode).
    as_if_from_another_boot(store.path());

    let node = Node::start_with(config).await;
    let a_after = history(&node, "log:a").await;
    assert_eq!(
        (a_after.offset, &a_after.epoch),
        (a.offset, &a.epoch),
        "{fsync}"
    );
    assert_eq!(a_after.publications, a.publications, "{fsync}");
    let b_after = history(&node, "log:b").await;
    assert_eq!((b_after.offset, &b_after.epoch), (1, &b.epoch), "{fsync}");
    assert_eq!(published(&node, "log:a", 21).await, (21, a.epoch));
    assert_eq!(published(&node, "log:b", 2).await, (2, b.epoch));
    assert!(node.terminate().await.success());
}

/// How many tasks publish at once in the load test, into how many channels, for how long at
/// most (the node is killed well before).
const PUBLISHERS: usize = 8;
const LOAD_CHANNELS: usize = 50;
const LOAD_FOR: Duration = Duration::from_secs(4);
const KILL_AFTER: Duration = Duration::from_millis(1500);

/// One acknowledged publish of the load test.
struct Ack {
    channel: String,
    offset: u64,
    epoch: String,
    data: Value,
}

/// Fails now and then on 55ba1fc and as of 69ea5a0 (seen about once in a hundred runs with
/// three running at once), as does the `always` one below: a checkpoint taken while the
/// writer commits a batch records the log position after the batch but copies a channel
/// before the batch's publication reached it, so the replay never sees that publication.
/// When it was the channel's last, it is gone in the same epoch (this test fails); when a
/// later one is replayed, the gap gives the stream a new epoch for nothing (the `always`
/// test fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_under_load_in_interval_mode_keeps_acked_publications_or_changes_the_epoch() {
    kill_9_under_load("interval", AfterCrash::KeptOrNewEpoch).await;
}

/// With `always` nothing acknowledged is ever only in memory: a kill -9 keeps every stream
/// in its epoch. (Fails now and then as of 69ea5a0, by the race described above.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_under_load_in_always_mode_keeps_acked_publications_in_their_epoch() {
    kill_9_under_load("always", AfterCrash::Kept).await;
}

/// What a kill -9 may do to a stream that had acknowledged publications.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterCrash {
    /// Serve every one of them in its epoch, or give the stream a new epoch.
    KeptOrNewEpoch,
    /// Serve every one of them in its epoch.
    Kept,
}

/// Publishers load the node, it is killed (SIGKILL) in the middle, restarted on the same
/// store; then every channel is held to `rule`.
async fn kill_9_under_load(fsync: &str, rule: AfterCrash) {
    let store = TempDir::new();
    let mut config = disk_config(store.path(), fsync);
    // Small segments and frequent checkpoints: the kill lands among rotations and
    // checkpoints taken while publications are in flight.
    config["engine"]["disk"]["segment_size"] = json!(MIN_SEGMENT);
    config["engine"]["disk"]["checkpoint_interval"] = json!("200ms");
    let node = Node::start_with(config.clone()).await;
    let addr = node.addr;
    let acked = Arc::new(AtomicUsize::new(0));
    let until = Instant::now() + LOAD_FOR;
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|task| {
            let acked = Arc::clone(&acked);
            tokio::spawn(async move {
                let mut acks = Vec::new();
                let mut refused = 0;
                for i in 0usize.. {
                    if Instant::now() >= until {
                        break;
                    }
                    let channel = format!("log:load-{}", (task * 7 + i) % LOAD_CHANNELS);
                    let data = json!({ "task": task, "i": i });
                    let body = json!({ "channel": channel, "data": data });
                    // The node is gone (killed) once a request fails.
                    let Ok((200, reply)) = http::api(addr, "publish", &body, Some(API_KEY)).await
                    else {
                        break;
                    };
                    let Some((offset, epoch)) = position(&reply["result"]) else {
                        refused += 1;
                        continue;
                    };
                    acks.push(Ack {
                        channel,
                        offset,
                        epoch,
                        data,
                    });
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                (acks, refused)
            })
        })
        .collect();
    tokio::time::sleep(KILL_AFTER).await;
    let acked_at_kill = acked.load(Ordering::Relaxed);
    node.kill().await;
    let mut acks = Vec::new();
    let mut refused = 0;
    for publisher in publishers {
        let (mut some, not) = publisher.await.unwrap();
        acks.append(&mut some);
        refused += not;
    }
    assert_eq!(refused, 0, "publishes refused before the kill");
    assert!(
        acked_at_kill > 0,
        "nothing was acknowledged before the kill"
    );
    let mut by_channel: BTreeMap<String, Vec<Ack>> = BTreeMap::new();
    for ack in acks {
        by_channel.entry(ack.channel.clone()).or_default().push(ack);
    }

    // Its log is in the test's output: a new epoch is explained there.
    let node = Node::start_logged(config).await;
    let (mut kept, mut reepoched, mut served, mut unacknowledged) = (0, 0, 0, 0);
    for (channel, acks) in &by_channel {
        let epoch = &acks[0].epoch;
        assert!(
            acks.iter().all(|ack| ack.epoch == *epoch),
            "{channel}: one stream per channel in one run"
        );
        let stream = history(&node, channel).await;
        if stream.epoch != *epoch {
            assert_eq!(
                rule,
                AfterCrash::KeptOrNewEpoch,
                "{channel}: a new epoch with fsync {fsync} (top {}; {} acknowledged in {epoch})",
                stream.offset,
                acks.len()
            );
            reepoched += 1;
            continue;
        }
        let by_offset: HashMap<u64, &Value> = stream
            .publications
            .iter()
            .map(|p| (p["offset"].as_u64().unwrap(), &p["data"]))
            .collect();
        let highest = acks.iter().map(|ack| ack.offset).max().unwrap();
        for ack in acks {
            assert_eq!(
                by_offset.get(&ack.offset),
                Some(&&ack.data),
                "{channel}: offset {} was acknowledged in epoch {epoch}, which the restarted node \
                 still serves with top {} ({} acknowledged, the highest {highest})",
                ack.offset,
                stream.offset,
                acks.len(),
            );
        }
        assert!(stream.offset >= highest, "{channel}: top {}", stream.offset);
        kept += 1;
        served += stream.publications.len();
        unacknowledged += stream.publications.len() - acks.len();
    }
    eprintln!(
        "load, fsync {fsync}: {} publications acknowledged into {} channels ({acked_at_kill} \
         when the kill was sent); after the restart {kept} channels kept every acknowledged one \
         in their epoch, {reepoched} got a new epoch; {served} served, {unacknowledged} of them \
         written but never acknowledged",
        by_channel.values().map(Vec::len).sum::<usize>(),
        by_channel.len(),
    );
    assert!(node.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_crash_with_fsync_interval_gives_a_new_epoch_to_the_armed_streams_only() {
    let store = TempDir::new();
    let mut config = disk_config(store.path(), "interval");
    // A stream stays armed for ten to twenty intervals after its last record (one to two
    // seconds here): long enough for the kill below to come first.
    config["engine"]["disk"]["fsync_interval"] = json!("100ms");
    let node = Node::start_with(config.clone()).await;
    let (_, idle_epoch) = published(&node, "log:idle", 1).await;
    // More than twenty intervals without a record: synced and disarmed.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let (_, busy_epoch) = published(&node, "log:busy", 1).await;
    // Killed within the interval, and the machine "reboots": busy's acknowledged record may
    // be lost.
    node.kill().await;
    as_if_from_another_boot(store.path());

    let node = Node::start_logged(config).await;
    let idle = history(&node, "log:idle").await;
    assert_eq!((idle.offset, &idle.epoch), (1, &idle_epoch), "synced, kept");
    let busy = history(&node, "log:busy").await;
    assert_ne!(busy.epoch, busy_epoch, "armed at the crash: a new epoch");
    assert!(logged_within(&node, "new epoch", Duration::from_secs(5)).await);
    let (_, next_epoch) = published(&node, "log:busy", 2).await;
    assert_eq!(next_epoch, busy.epoch);
    assert!(node.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_and_every_publication_before_it_kept() {
    const CHANNEL: &str = "log:torn";
    let store = TempDir::new();
    let config = disk_config(store.path(), "always");
    let node = Node::start_with(config.clone()).await;
    let mut epoch = String::new();
    for n in 1..=10 {
        epoch = published(&node, CHANNEL, n).await.1;
    }
    node.kill().await;

    // What a write the crash cut short leaves: the first half of the last record, again,
    // right after it.
    let segment = newest_segment(store.path());
    let bytes = std::fs::read(&segment).unwrap();
    let frames = frames(&bytes);
    let last = frames
        .last()
        .expect("records in the newest segment")
        .clone();
    let torn = &bytes[last.start..last.start + last.len() / 2];
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.write_all_at(torn, last.end as u64).unwrap();
    file.sync_all().unwrap();
    drop(file);

    let node = Node::start_logged(config.clone()).await;
    assert!(
        logged_within(&node, "torn tail", Duration::from_secs(5)).await,
        "no word of the cut: {}",
        node.log()
    );
    let stream = history(&node, CHANNEL).await;
    assert_eq!((stream.offset, stream.epoch.as_str()), (10, epoch.as_str()));
    assert_eq!(stream.numbers(), numbered(1..=10));
    assert_eq!(published(&node, CHANNEL, 11).await, (11, epoch.clone()));

    // The cut stays cut through the next crash.
    node.kill().await;
    let node = Node::start_with(config).await;
    let stream = history(&node, CHANNEL).await;
    assert_eq!((stream.offset, stream.epoch.as_str()), (11, epoch.as_str()));
    assert_eq!(stream.numbers(), numbered(1..=11));
    assert!(node.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_publishes_but_not_the_node_and_publishing_resumes_without_a_gap() {
    let Some(full) = FullDisk::reach().await else {
        return;
    };
    let (node, last, epoch) = (&full.node, full.last, &full.epoch);
    assert!(full.failure["error"].is_object(), "{}", full.failure);
    assert!(full.failure.get("result").is_none(), "{}", full.failure);
    assert!(http::metric(node.addr, "tether_disk_write_errors_total").await >= 1.0);

    // The node serves on: history reads, and fan-out of a channel without history.
    let stream = history(node, FullDisk::CHANNEL).await;
    assert_eq!((stream.offset, &stream.epoch), (last, epoch));
    assert_eq!(stream.numbers(), numbered(1..=last));
    let (mut listener, _) = Client::connected(node, "u1").await;
    listener.subscribe(json!({ "channel": "live" })).await;
    let reply = node.publish("live", json!({ "n": 1 })).await;
    assert!(reply["result"].is_object(), "{reply}");
    assert_eq!(collect(&mut listener, "live", 1).await, [(0, 1)]);
    let reply = publish_padded(node, FullDisk::CHANNEL, last + 1).await;
    assert!(reply["error"].is_object(), "still full: {reply}");

    // Room again: the stream continues right after the last acknowledged offset.
    full.free();
    assert_eq!(
        published(node, FullDisk::CHANNEL, last + 1).await,
        (last + 1, epoch.clone())
    );
    assert_eq!(
        published(node, FullDisk::CHANNEL, last + 2).await,
        (last + 2, epoch.clone())
    );
    let stream = history(node, FullDisk::CHANNEL).await;
    assert_eq!(stream.numbers(), numbered(1..=last + 2));
    let FullDisk { node, tmpfs, .. } = full;
    assert!(node.terminate().await.success());
    drop(tmpfs);
}

/// Engine bug (fails on 55ba1fc and as of 69ea5a0): while the disk is full every failed
/// publish opens another segment file, whose header could not be written, and keeps it open.
/// A full disk that lasts, with publishers retrying, piles up files and file descriptors
/// without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_does_not_pile_up_a_segment_file_per_failed_publish() {
    const FAILED: u64 = 20;
    let Some(full) = FullDisk::reach().await else {
        return;
    };
    let before = segment_files(&full.store);
    for _ in 0..FAILED {
        let reply = publish_padded(&full.node, FullDisk::CHANNEL, full.last + 1).await;
        assert!(reply["error"].is_object(), "still full: {reply}");
    }
    let after = segment_files(&full.store);
    assert!(
        after <= before + 1,
        "{FAILED} failed publishes on a full disk took the store from {before} to {after} \
         segment files"
    );
    let FullDisk { node, tmpfs, .. } = full;
    assert!(node.terminate().await.success());
    drop(tmpfs);
}

/// Engine bug (fails on 55ba1fc and as of 69ea5a0): after a full disk (space freed,
/// publishing resumed), a kill -9 before the next checkpoint gives every stream a new epoch
/// although nothing acknowledged was lost: the replay pairs each segment with the header of
/// the next file, and the files a failed rotation left behind have none ("a segment's header
/// is damaged").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_after_a_full_disk_keeps_every_epoch() {
    let Some(full) = FullDisk::reach().await else {
        return;
    };
    let (last, epoch) = (full.last, full.epoch.clone());
    full.free();
    assert_eq!(
        published(&full.node, FullDisk::CHANNEL, last + 1).await,
        (last + 1, epoch.clone())
    );
    let FullDisk {
        node,
        config,
        tmpfs,
        ..
    } = full;
    node.kill().await;

    let node = Node::start_logged(config).await;
    let stream = history(&node, FullDisk::CHANNEL).await;
    assert_eq!(
        (stream.offset, &stream.epoch),
        (last + 1, &epoch),
        "nothing acknowledged was lost, yet the stream got a new epoch; the node said:\n{}",
        node.log()
    );
    assert_eq!(stream.numbers(), numbered(1..=last + 1));
    assert!(node.terminate().await.success());
    drop(tmpfs);
}

/// A stream armed before a checkpoint and written after it (acknowledged, not synced) is
/// still armed in the replay, so a machine crash gives it a new epoch: its unsynced tail may
/// be gone, and with the old epoch a client could be told `recovered: true` across a hole
/// and see lost offsets handed out again with other data. (Failed on 55ba1fc, whose
/// checkpoints forgot the armed streams; main's 4091253 fixed it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_crash_after_a_checkpoint_still_changes_the_epoch_of_an_armed_stream() {
    let store = TempDir::new();
    let mut config = disk_config(store.path(), "interval");
    // Armed streams stay armed for at least 2 s, checkpoints come every 0.5 s: the next
    // checkpoint is waited for, then the kill comes before the one after it.
    config["engine"]["disk"]["fsync_interval"] = json!("2s");
    config["engine"]["disk"]["checkpoint_interval"] = json!("500ms");
    let node = Node::start_with(config.clone()).await;
    let (_, epoch) = published(&node, "log:busy", 1).await;
    next_checkpoint(store.path()).await;
    // Acknowledged after a write without a sync (the stream is armed).
    assert_eq!(published(&node, "log:busy", 2).await, (2, epoch.clone()));
    node.kill().await;
    as_if_from_another_boot(store.path());

    let node = Node::start_logged(config).await;
    let busy = history(&node, "log:busy").await;
    assert_ne!(
        busy.epoch,
        epoch,
        "offset 2 was acknowledged unsynced, the machine crashed, and the epoch stayed; the \
         node said:\n{}",
        node.log()
    );
    assert!(node.terminate().await.success());
}

/// After a kill -9 under the same boot nothing written is lost, so a stream armed after the
/// last checkpoint keeps its epoch, also when the replay starts inside a segment, past the
/// header that names the boot. (Failed on 55ba1fc, which took the unknown boot for another
/// one; main's bc32e32 fixed it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_crash_with_fsync_interval_keeps_the_epoch_of_a_stream_armed_after_a_checkpoint()
{
    let store = TempDir::new();
    let mut config = disk_config(store.path(), "interval");
    // Armed streams stay armed for at least 2 s, checkpoints come every 0.5 s: the next
    // checkpoint is waited for, then the kill comes before the one after it.
    config["engine"]["disk"]["fsync_interval"] = json!("2s");
    config["engine"]["disk"]["checkpoint_interval"] = json!("500ms");
    config["engine"]["disk"]["segment_size"] = json!(MIN_SEGMENT);
    let node = Node::start_with(config.clone()).await;
    // The first segment of a run is sparse; the first batch after a zero-filled spare is
    // ready moves to it. That move must come before the checkpoint, not after it.
    wait_for_spare(store.path()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    published(&node, "log:early", 1).await;
    next_checkpoint(store.path()).await;
    let (_, epoch) = published(&node, "log:late", 1).await;
    node.kill().await;

    let node = Node::start_logged(config).await;
    let late = history(&node, "log:late").await;
    assert_eq!(
        (late.offset, &late.epoch),
        (1, &epoch),
        "same boot, nothing lost, yet a new epoch; the node said:\n{}",
        node.log()
    );
    assert!(node.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_on_the_same_store_is_refused_naming_the_lock() {
    const CHANNEL: &str = "log:lock";
    let store = TempDir::new();
    let config = disk_config(store.path(), "always");
    let node = Node::start_with(config.clone()).await;
    let (_, epoch) = published(&node, CHANNEL, 1).await;

    let (code, stderr) = serve_until_exit(config.clone()).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("lock") && stderr.contains(store.path().to_str().unwrap()),
        "{stderr}"
    );
    // The first node did not notice.
    assert_eq!(published(&node, CHANNEL, 2).await, (2, epoch.clone()));
    assert!(node.terminate().await.success());

    // The lock leaves with its node.
    let node = Node::start_with(config).await;
    let stream = history(&node, CHANNEL).await;
    assert_eq!((stream.offset, stream.epoch), (2, epoch));
    assert!(node.terminate().await.success());
}

// === helpers ===

/// A channel's stream as `/api/history` serves it.
struct History {
    epoch: String,
    offset: u64,
    publications: Vec<Value>,
}

impl History {
    /// `(offset, data["n"])` of each publication.
    fn numbers(&self) -> Vec<(u64, i64)> {
        recovered_publications(&json!({ "publications": self.publications }))
    }
}

/// The whole history of `channel`, which must be served.
async fn history(node: &Node, channel: &str) -> History {
    let reply = node
        .api("history", json!({ "channel": channel, "limit": -1 }))
        .await;
    let result = &reply["result"];
    let (offset, epoch) = position(result).unwrap_or_else(|| panic!("{channel}: {reply}"));
    History {
        epoch,
        offset,
        publications: result["publications"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
    }
}

/// Publishes `{"n": n}`, which must succeed; returns its (offset, epoch).
async fn published(node: &Node, channel: &str, n: u64) -> (u64, String) {
    let reply = node.publish(channel, json!({ "n": n })).await;
    position(&reply["result"]).unwrap_or_else(|| panic!("publish {n} into {channel}: {reply}"))
}

/// Publishes `{"n": n}` with a kilobyte of padding; returns the reply.
async fn publish_padded(node: &Node, channel: &str, n: u64) -> Value {
    node.publish(channel, json!({ "n": n, "pad": "x".repeat(1024) }))
        .await
}

/// The (offset, epoch) of a publish or history result; `None` when it is not one.
fn position(result: &Value) -> Option<(u64, String)> {
    let epoch = result["epoch"].as_str()?.to_owned();
    Some((result["offset"].as_u64().unwrap_or(0), epoch))
}

/// Whether the node's log has `text` in it `within` (its stderr is read as it comes).
async fn logged_within(node: &Node, text: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while !node.log().contains(text) {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// How many segment files a store has.
fn segment_files(store: &Path) -> usize {
    segments(store).len()
}

/// The segment files of a store (`NNNNNNNNNN.log`), oldest first.
fn segments(store: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(store)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    files.sort();
    files
}

/// `(offset, n)` pairs where `n` is the offset, as the tests publish them.
fn numbered(offsets: std::ops::RangeInclusive<u64>) -> Vec<(u64, i64)> {
    offsets.map(|n| (n, n as i64)).collect()
}

/// The segment file with the highest id in a store.
fn newest_segment(store: &Path) -> PathBuf {
    segments(store).pop().expect("a segment file")
}

/// Where each record of a segment file is, from its start to the first zero length: the
/// engine's framing, `[len u32 LE][crc32 u32 LE][len bytes]`.
fn frames(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    const HEADER: usize = 8;
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(len) = bytes.get(at..at + 4) {
        let len = u32::from_le_bytes(len.try_into().unwrap()) as usize;
        if len == 0 || at + HEADER + len > bytes.len() {
            break;
        }
        out.push(at..at + HEADER + len);
        at += HEADER + len;
    }
    out
}

/// Waits (up to 5 s) until the engine has its next segment zero-filled in advance, so a test
/// that fills the disk knows how much the node still has.
async fn wait_for_spare(store: &Path) {
    let spare = store.join("next.spare");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::metadata(&spare).map_or(true, |meta| meta.len() < MIN_SEGMENT) {
        assert!(Instant::now() < deadline, "no spare segment was prepared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes `path` until the file system is full; returns how many bytes it took.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = [0xa5_u8; 4096];
    let mut taken = 0;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => taken += n as u64,
            Err(error) if error.kind() == std::io::ErrorKind::StorageFull => break,
            Err(error) => panic!("fill {}: {error}", path.display()),
        }
    }
    taken
}

/// A node whose store is on a 2 MB tmpfs that a filler file has made full, after publishes
/// into [`FullDisk::CHANNEL`] ran until one failed.
struct FullDisk {
    // Dropped in this order: the node before its file system.
    node: Node,
    config: Value,
    store: PathBuf,
    filler: PathBuf,
    /// The last acknowledged offset, and the stream's epoch.
    last: u64,
    epoch: String,
    /// The reply to the publish that failed.
    failure: Value,
    tmpfs: Tmpfs,
}

impl FullDisk {
    const CHANNEL: &str = "log:full";

    /// `None` (the test is skipped, the reason printed) where a tmpfs cannot be mounted.
    async fn reach() -> Option<Self> {
        let tmpfs = Tmpfs::mount("2m")?;
        let store = tmpfs.path().join("store");
        let mut config = disk_config(&store, "always");
        config["engine"]["disk"]["segment_size"] = json!(MIN_SEGMENT);
        let node = Node::start_logged(config.clone()).await;
        let (first, epoch) = published(&node, Self::CHANNEL, 1).await;
        assert_eq!(first, 1);
        assert_eq!(
            http::metric(node.addr, "tether_disk_write_errors_total").await,
            0.0
        );
        wait_for_spare(&store).await;

        // Take every free byte; the node still has what it allocated ahead (the current
        // segment and the spare), then publishes fail.
        let filler = tmpfs.path().join("filler");
        let taken = fill(&filler);
        let mut last = 1;
        let failure = loop {
            assert!(last < 2_000, "publishes never failed on a full disk");
            let reply = publish_padded(&node, Self::CHANNEL, last + 1).await;
            match position(&reply["result"]) {
                Some((offset, got)) => {
                    assert_eq!((offset, &got), (last + 1, &epoch));
                    last = offset;
                }
                None => break reply,
            }
        };
        eprintln!(
            "disk full: the filler took {taken} bytes; {last} publications acknowledged, then: \
             {failure}"
        );
        Some(Self {
            node,
            config,
            store,
            filler,
            last,
            epoch,
            failure,
            tmpfs,
        })
    }

    /// Deletes the filler: room for about 2 MB again.
    fn free(&self) {
        std::fs::remove_file(&self.filler).unwrap();
    }
}

/// Makes a store look written under another boot of the machine (a crash and a reboot, but
/// with every written byte kept): the boot id in the header record of each segment,
/// `[len][crc][kind 1][boot id: varint length, bytes][prev_end varint]`, is replaced by
/// another of the same length and the record's CRC fixed.
fn as_if_from_another_boot(store: &Path) {
    const HEADER: usize = 8;
    const KIND_SEGMENT_START: u8 = 1;
    for path in segments(store) {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut record = [0u8; 128];
        file.read_exact_at(&mut record, 0).unwrap();
        let len = u32::from_le_bytes(record[..4].try_into().unwrap()) as usize;
        assert_eq!(record[HEADER], KIND_SEGMENT_START, "{}", path.display());
        // A one-byte varint: boot ids are 36 characters.
        let id_len = usize::from(record[HEADER + 1]);
        assert!((1..0x80).contains(&id_len), "{}", path.display());
        for byte in &mut record[HEADER + 2..HEADER + 2 + id_len] {
            *byte = if *byte == b'0' { b'1' } else { b'0' };
        }
        let crc = crc32fast::hash(&record[HEADER..HEADER + len]);
        record[4..HEADER].copy_from_slice(&crc.to_le_bytes());
        file.write_all_at(&record[..HEADER + len], 0).unwrap();
        file.sync_all().unwrap();
    }
}

/// Waits (up to 10 s) until the node writes its next checkpoint (the file is replaced).
async fn next_checkpoint(store: &Path) {
    let written = || {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(store.join("checkpoint"))
            .ok()
            .map(|meta| (meta.ino(), meta.modified().ok()))
    };
    let before = written();
    let deadline = Instant::now() + Duration::from_secs(10);
    while written() == before {
        assert!(Instant::now() < deadline, "no checkpoint written");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A tmpfs of its own, mounted on a fresh directory; unmounted when dropped.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`); `None`, with the reason printed, where
    /// this process may not mount.
    fn mount(size: &str) -> Option<Self> {
        let dir = TempDir::new();
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match output {
            Ok(output) if output.status.success() => Some(Self { dir }),
            Ok(output) => {
                eprintln!(
                    "skipped: cannot mount a tmpfs ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                );
                None
            }
            Err(error) => {
                eprintln!("skipped: cannot run mount: {error}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = std::process::Command::new("umount")
            .arg(self.dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !unmounted {
            // A node killed on the way out (a failed test) may still hold it: detach it now,
            // the kernel frees it when the last user is gone.
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}
