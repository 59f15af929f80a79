//! Unit tests of the disk engine: a store in a temporary directory, reopened; crashes are
//! copies of the directory taken while the engine runs (what a `kill -9` leaves: every
//! written byte, no clean close), then damaged on purpose.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::broker::PublishOptions;
use crate::broker::tests::{META_TTL, Recorder, offsets, publication, query, with_history};

/// A fresh directory under the system's temporary one, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("tether-disk-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// A copy of the store as a crash would leave it.
    fn crash_copy(&self) -> Self {
        let copy = Self::new();
        for entry in std::fs::read_dir(&self.0).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), copy.0.join(entry.file_name())).unwrap();
        }
        copy
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Each record of a segment file: (position, record).
fn records(bytes: &[u8]) -> Vec<(usize, Record)> {
    let mut at = 0;
    let mut out = Vec::new();
    while let Ok((record, len)) = Record::decode(&bytes[at..]) {
        out.push((at, record));
        at += len;
    }
    out
}

/// End of a segment file's valid records.
fn valid_end(bytes: &[u8]) -> usize {
    records(bytes).last().map_or(0, |(at, record)| {
        let mut framed = Vec::new();
        at + record.encode(&mut framed)
    })
}

fn options(dir: &Path, fsync: Fsync) -> DiskOptions {
    DiskOptions {
        path: dir.to_owned(),
        fsync,
        segment_size: 1 << 20,
        checkpoint_interval: Duration::from_secs(3600),
    }
}

fn open(dir: &Path, fsync: Fsync) -> (DiskBroker, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let broker = DiskBroker::open(options(dir, fsync), recorder.clone()).unwrap();
    (broker, recorder)
}

async fn publish(broker: &DiskBroker, channel: &str, data: &str, size: usize) -> StreamPosition {
    broker
        .publish(channel, publication(data), &with_history(size))
        .await
        .unwrap()
        .position
        .unwrap()
}

fn all(broker: &DiskBroker, channel: &str) -> HistoryPage {
    broker.history(channel, &query(None, None, false)).unwrap()
}

fn data(page: &HistoryPage) -> Vec<String> {
    page.publications
        .iter()
        .map(|p| String::from_utf8(p.data.to_vec()).unwrap())
        .collect()
}

#[tokio::test]
async fn a_clean_restart_keeps_epochs_offsets_and_history() {
    let dir = Dir::new();
    let (broker, recorder) = open(&dir.0, Fsync::Always);
    for i in 1..=10 {
        publish(&broker, "a", &format!("a{i}"), 5).await;
    }
    let b = publish(&broker, "b", "b1", 5).await;
    assert_eq!(recorder.offsets("a"), (1..=10).collect::<Vec<_>>());
    let before = all(&broker, "a");
    assert_eq!(offsets(&before), [6, 7, 8, 9, 10]);
    broker.close().await;
    drop(broker);

    let (broker, _) = open(&dir.0, Fsync::Always);
    let after = all(&broker, "a");
    assert_eq!(after.top, before.top);
    assert_eq!(offsets(&after), [6, 7, 8, 9, 10]);
    assert_eq!(data(&after), ["a6", "a7", "a8", "a9", "a10"]);
    assert_eq!(all(&broker, "b").top, b);
    let next = publish(&broker, "a", "a11", 5).await;
    assert_eq!(next.offset, 11);
    assert_eq!(next.epoch, before.top.epoch);
    // Recovery from a position in the same epoch.
    let since = StreamPosition {
        offset: 8,
        epoch: before.top.epoch.clone(),
    };
    let page = broker
        .history("a", &query(Some(since), None, false))
        .unwrap();
    assert_eq!(offsets(&page), [9, 10, 11]);
    broker.close().await;
}

#[tokio::test]
async fn a_crash_in_always_mode_keeps_every_acknowledged_publication() {
    let dir = Dir::new();
    let (broker, _) = open(&dir.0, Fsync::Always);
    let mut tops = Vec::new();
    for channel in 0..20 {
        for i in 0..7 {
            tops.push(publish(&broker, &format!("c{channel}"), &format!("{i}"), 100).await);
        }
    }
    let crashed = dir.crash_copy();
    let (reopened, _) = open(&crashed.0, Fsync::Always);
    for channel in 0..20 {
        let page = all(&reopened, &format!("c{channel}"));
        assert_eq!(page.top, tops[channel * 7 + 6], "channel c{channel}");
        assert_eq!(offsets(&page), (1..=7).collect::<Vec<_>>());
    }
    reopened.close().await;
    broker.close().await;
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_what_precedes_it_is_kept() {
    let dir = Dir::new();
    let (broker, _) = open(&dir.0, Fsync::Always);
    for i in 1..=5 {
        publish(&broker, "a", &format!("a{i}"), 10).await;
    }
    let before = all(&broker, "a").top;
    let crashed = dir.crash_copy();
    broker.close().await;
    // A write the crash interrupted: half a record after the last one.
    let last = *log::list(&crashed.0).unwrap().last().unwrap();
    let path = log::path(&crashed.0, last);
    let end = valid_end(&std::fs::read(&path).unwrap());
    let mut torn = Vec::new();
    Record::Publish(Box::new(record::Publish {
        stream: 1,
        offset: 6,
        written_ms: 1,
        size: 10,
        ttl_ms: 60_000,
        meta_ttl_ms: 0,
        idempotency_key: None,
        publication: publication("a6"),
    }))
    .encode(&mut torn);
    torn.truncate(torn.len() - 3);
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &torn, end as u64).unwrap();

    let (reopened, _) = open(&crashed.0, Fsync::Always);
    let page = all(&reopened, "a");
    assert_eq!(page.top, before);
    assert_eq!(data(&page), ["a1", "a2", "a3", "a4", "a5"]);
    let next = publish(&reopened, "a", "a6", 10).await;
    assert_eq!((next.offset, next.epoch), (6, before.epoch.clone()));
    reopened.close().await;
    // And the cut stays cut: the next open does not read the torn bytes either.
    let (again, _) = open(&crashed.0, Fsync::Always);
    assert_eq!(
        data(&all(&again, "a")),
        ["a1", "a2", "a3", "a4", "a5", "a6"]
    );
    again.close().await;
}

#[tokio::test]
async fn damage_inside_a_finished_segment_changes_every_epoch() {
    let dir = Dir::new();
    let (broker, _) = open(&dir.0, Fsync::Always);
    publish(&broker, "a", "a1", 10).await;
    let before = all(&broker, "a").top;
    broker.close().await;
    drop(broker);
    // A second run: the first segment is finished, the second's header says where it ends.
    let (broker, _) = open(&dir.0, Fsync::Always);
    broker.close().await;
    drop(broker);
    // Damage the publication in the first segment.
    let first = log::list(&dir.0).unwrap()[0];
    let path = log::path(&dir.0, first);
    let mut bytes = std::fs::read(&path).unwrap();
    let (at, _) = records(&bytes)
        .into_iter()
        .find(|(_, record)| matches!(record, Record::Publish(_)))
        .unwrap();
    bytes[at + 12] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    std::fs::remove_file(dir.0.join("checkpoint")).unwrap();
    let (reopened, _) = open(&dir.0, Fsync::Always);
    let after = all(&reopened, "a").top;
    assert_ne!(after.epoch, before.epoch);
    reopened.close().await;
}

#[tokio::test]
async fn interval_mode_reepochs_only_armed_streams_after_a_machine_crash() {
    let dir = Dir::new();
    let every = Duration::from_millis(20);
    let (broker, _) = open(&dir.0, Fsync::Interval(every));
    let idle = publish(&broker, "idle", "x", 10).await;
    // More than two disarm scans without a record: "idle" is disarmed.
    tokio::time::sleep(every * (2 * writer::DISARM_EVERY as u32 + 5)).await;
    let busy = publish(&broker, "busy", "y", 10).await;
    // A checkpoint inside the newest segment: the boot id is still found (its header is
    // before the checkpoint's position).
    broker.shared.checkpoint().unwrap();
    let crashed = dir.crash_copy();
    broker.close().await;

    // The same boot: the kernel kept every written byte, nothing may be lost.
    let same = recover::open(&crashed.0, unix_ms(), &boot_id()).unwrap();
    assert!(same.reepoched.is_empty(), "{:?}", same.reepoched);
    // A new boot: the armed stream may have lost its tail, the idle one cannot have.
    let other = recover::open(&crashed.0, unix_ms(), "another-boot").unwrap();
    let changed: Vec<&str> = other.reepoched.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(changed, ["busy"]);
    assert_eq!(other.stored.channel("idle").unwrap().epoch, idle.epoch);
    assert_ne!(other.stored.channel("busy").unwrap().epoch, busy.epoch);
    assert_eq!(other.stored.channel("busy").unwrap().top, 1);
}

#[tokio::test]
async fn interval_mode_a_tail_lost_after_the_checkpoint_changes_the_epoch() {
    let dir = Dir::new();
    let (broker, _) = open(&dir.0, Fsync::Interval(Duration::from_secs(3600)));
    for i in 1..=3 {
        publish(&broker, "busy", &format!("{i}"), 10).await;
    }
    // A checkpoint (it syncs first) records the armed stream and a position.
    broker.shared.checkpoint().unwrap();
    for i in 4..=5 {
        publish(&broker, "busy", &format!("{i}"), 10).await;
    }
    let crashed = dir.crash_copy();
    broker.close().await;
    let (_, at) = recover::read_checkpoint(&crashed.0).unwrap().unwrap();
    // A machine crash took the unsynced bytes after the checkpoint (the writer may have
    // moved to a later segment meanwhile).
    for segment in log::list(&crashed.0).unwrap() {
        if segment < at.0 {
            continue;
        }
        let from = if segment == at.0 { u64::from(at.1) } else { 0 };
        let path = log::path(&crashed.0, segment);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let len = file.metadata().unwrap().len();
        std::os::unix::fs::FileExt::write_all_at(&file, &vec![0; (len - from) as usize], from)
            .unwrap();
    }

    let opened = recover::open(&crashed.0, unix_ms(), "another-boot").unwrap();
    let changed: Vec<&str> = opened.reepoched.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(changed, ["busy"]);
    let busy = opened.stored.channel("busy").unwrap();
    assert_eq!((busy.top, busy.entries.len()), (3, 3));
}

#[tokio::test]
async fn removal_and_idempotency_survive_a_restart() {
    let dir = Dir::new();
    let (broker, _) = open(&dir.0, Fsync::Always);
    for i in 1..=3 {
        publish(&broker, "a", &format!("a{i}"), 10).await;
    }
    broker.remove_history("a").await.unwrap();
    let keyed = PublishOptions {
        idempotency_key: Some("k".into()),
        ..with_history(10)
    };
    let first = broker
        .publish("a", publication("a4"), &keyed)
        .await
        .unwrap();
    broker.close().await;
    drop(broker);

    let (broker, recorder) = open(&dir.0, Fsync::Always);
    let page = all(&broker, "a");
    assert_eq!(offsets(&page), [4]);
    let again = broker
        .publish("a", publication("a4"), &keyed)
        .await
        .unwrap();
    assert!(again.from_cache);
    assert_eq!(again.position, first.position);
    assert!(recorder.offsets("a").is_empty());
    broker.close().await;
}

/// `count` publications of 1,000 bytes into `channel`, with a 300 ms history TTL.
async fn fill_short_lived(broker: &DiskBroker, channel: &str, count: usize) {
    let short = PublishOptions {
        history: Some(HistoryOptions {
            size: 1000,
            ttl: Duration::from_millis(300),
            meta_ttl: META_TTL,
        }),
        idempotency_key: None,
    };
    let payload = "x".repeat(1000);
    for _ in 0..count {
        broker
            .publish(channel, publication(&payload), &short)
            .await
            .unwrap();
    }
}

/// Waits (at most 4 s) for the store to hold at most `most` segments; returns how many it
/// holds.
async fn segments_down_to(dir: &Path, most: usize) -> usize {
    let mut left = usize::MAX;
    for _ in 0..200 {
        left = log::list(dir).unwrap().len();
        if left <= most {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    left
}

#[tokio::test]
async fn expired_history_frees_its_segments() {
    let dir = Dir::new();
    let mut options = options(&dir.0, Fsync::Always);
    options.segment_size = 64 << 10;
    options.checkpoint_interval = Duration::from_millis(50);
    let recorder = Arc::new(Recorder::default());
    let broker = DiskBroker::open(options, recorder).unwrap();
    fill_short_lived(&broker, "a", 300).await;
    let full = log::list(&dir.0).unwrap().len();
    assert!(full >= 4, "{full} segments");
    tokio::time::sleep(Duration::from_millis(400)).await;
    broker.sweep(tokio::time::Instant::now());
    // The checkpoint after the sweep deletes what nothing refers to.
    let left = segments_down_to(&dir.0, 2).await;
    assert!(left <= 2, "{left} of {full} segments left");
    assert_eq!(all(&broker, "a").top.offset, 300);
    broker.close().await;
}

#[tokio::test]
async fn a_long_lived_stream_does_not_pin_old_segments() {
    let dir = Dir::new();
    let mut options = options(&dir.0, Fsync::Always);
    options.segment_size = 64 << 10;
    options.checkpoint_interval = Duration::from_millis(50);
    let broker = DiskBroker::open(options, Arc::new(Recorder::default())).unwrap();
    for i in 1..=3 {
        publish(&broker, "keep", &format!("keep{i}"), 10).await;
    }
    fill_short_lived(&broker, "churn", 400).await;
    let full = log::list(&dir.0).unwrap().len();
    assert!(full >= 6, "{full} segments");
    tokio::time::sleep(Duration::from_millis(400)).await;
    broker.sweep(tokio::time::Instant::now());
    // Checkpoints move "keep" forward, then delete what nothing refers to.
    let left = segments_down_to(&dir.0, 3).await;
    assert!(
        left <= 3,
        "{left} of {full} segments left: {:?}, keep at {:?}",
        log::list(&dir.0).unwrap(),
        broker.shared.channels.with("keep", |state| state
            .stream
            .as_ref()
            .map(|s| s.entries.clone()))
    );
    assert_eq!(data(&all(&broker, "keep")), ["keep1", "keep2", "keep3"]);
    let crashed = dir.crash_copy();
    broker.close().await;
    drop(broker);
    for store in [&dir, &crashed] {
        let (reopened, _) = open(&store.0, Fsync::Always);
        assert_eq!(data(&all(&reopened, "keep")), ["keep1", "keep2", "keep3"]);
        reopened.close().await;
    }
}

#[test]
fn a_second_node_cannot_open_the_same_store() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = Dir::new();
    let (broker, _) = runtime.block_on(async { open(&dir.0, Fsync::Always) });
    let error = DiskBroker::open(
        options(&dir.0, Fsync::Always),
        Arc::new(Recorder::default()),
    )
    .unwrap_err();
    assert!(error.to_string().contains("another node"), "{error}");
    runtime.block_on(broker.close());
}
