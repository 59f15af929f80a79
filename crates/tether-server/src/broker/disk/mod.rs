//! The `disk` engine: the memory engine's streams (offsets, epochs, history size / TTL /
//! meta TTL, idempotent publish, recovery, delta) kept in an append-only log on local disk,
//! so a restart or a crash loses nothing that was acknowledged. Presence stays in memory.
//!
//! # Layout
//!
//! - `record`: the log's records and their checksummed framing.
//! - `log`: segment files (created at full size, zero-filled in the background), reads.
//! - `recover`: opening a store (checkpoint + replay, torn-tail cut, the epoch rule) and
//!   writing checkpoints.
//! - `writer`: the one writer thread (group commit, `always` / `interval` durability).
//! - this file: [`DiskBroker`], the per-channel state in memory and the housekeeping thread
//!   (checkpoints, deletion of unreferenced segments, compaction of the oldest one).
//!
//! # How a publish travels
//!
//! A publish finds its channel's stream under the channel's lock (creating it with a new
//! epoch if there is none) and queues the publication for the writer. The writer takes every
//! queued publication at once, assigns offsets, appends the batch with one write, syncs it
//! (`always`; in `interval` mode only when a stream is armed, see `writer`), then for each
//! publication, under its channel's lock: records where it is, delivers it to subscribers and
//! acknowledges the publisher. Nothing reaches a subscriber or a history read before it is as
//! durable as the mode promises, so no client ever sees an offset that a crash could take
//! back within the same epoch.
//!
//! In memory each channel keeps its epoch, top offset and the location of each retained
//! publication (12 bytes each) plus the latest publication for delta; history reads fetch
//! records from the segments (the page cache, normally).

mod log;
mod record;
mod recover;
mod writer;

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;
use tokio::time::Instant;

use self::log::{Location, Segments};
use self::record::Record;
use self::recover::{Stored, StoredStream};
use super::channels::{ChannelMap, IDEMPOTENCY_TTL, IdempotencyCache, deadline, new_epoch};
use super::{
    BrokerError, BrokerEvents, HistoryOptions, HistoryPage, HistoryQuery, MemoryBroker,
    Publication, PublicationEvent, PublishOptions, Published, StreamPosition,
};

/// When a publish is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fsync {
    /// After its record is on disk (`fdatasync`); concurrent publishes share one.
    Always,
    /// After its record is written to the OS; the log is synced every interval. A crash of
    /// the machine (not just the process) may lose the last interval's acknowledged
    /// publications; every stream that may have lost one gets a new epoch on restart.
    Interval(Duration),
}

/// How a disk engine is set up.
#[derive(Clone, Debug)]
pub(crate) struct DiskOptions {
    /// The store's directory (created if missing).
    pub(crate) path: PathBuf,
    pub(crate) fsync: Fsync,
    /// Size of one segment file.
    pub(crate) segment_size: u64,
    /// How often the index is checkpointed and old segments deleted.
    pub(crate) checkpoint_interval: Duration,
}

/// Figures for the metrics endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DiskStats {
    /// Bytes the segment files take on disk.
    pub(crate) bytes: u64,
    /// Streams stored.
    pub(crate) streams: u64,
    /// Writes or syncs that failed (their publishes failed).
    pub(crate) write_errors: u64,
    /// Group commits (one write, and in `always` mode one sync, each).
    pub(crate) batches: u64,
}

/// The disk engine. Cloning is cheap: every clone is a handle to the same state.
#[derive(Clone)]
pub(crate) struct DiskBroker {
    shared: Arc<Shared>,
}

struct Shared {
    events: Arc<dyn BrokerEvents>,
    channels: ChannelMap<Channel>,
    /// Presence, joins and leaves: the memory engine's.
    presence: MemoryBroker,
    segments: Segments,
    options: DiskOptions,
    clock: Clock,
    /// Publications and removals waiting for the writer.
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Id of the next stream incarnation.
    next_stream: AtomicU64,
    /// End of the last committed batch (where a checkpoint's replay starts) and the streams
    /// armed there, updated together by the writer.
    committed: Mutex<Committed>,
    /// Streams stored, as of the last sweep.
    streams: AtomicU64,
    write_errors: AtomicU64,
    batches: AtomicU64,
    /// Serializes checkpoints (the housekeeping thread's and the writer's last one).
    checkpointing: Mutex<()>,
    /// Housekeeping thread's stop flag.
    stopping: Mutex<bool>,
    stopped: Condvar,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Holds the store's `flock` until the engine closes.
    lock: File,
}

/// What a checkpoint needs from the writer, as of one moment.
#[derive(Default)]
struct Committed {
    /// (segment, position) after the last committed batch.
    at: (u32, u32),
    /// Streams that may have acknowledged records not yet on disk (`interval` mode).
    armed: HashSet<u64>,
}

#[derive(Default)]
struct Queue {
    items: Vec<Pending>,
    stop: bool,
}

/// One publication or removal for the writer.
struct Pending {
    channel: String,
    /// The stream incarnation it was queued for.
    stream: u64,
    op: Op,
}

enum Op {
    Publish {
        publication: Box<Publication>,
        history: HistoryOptions,
        idempotency_key: Option<String>,
        done: oneshot::Sender<Result<Published, BrokerError>>,
    },
    RemoveHistory {
        done: oneshot::Sender<Result<(), BrokerError>>,
    },
    /// Compaction: copy the publication at `offset`, now at `from`, to the head of the log
    /// (`bytes`: its `Moved` frame), if the stream still retains it there.
    Move {
        offset: u64,
        from: Location,
        bytes: Vec<u8>,
    },
}

/// Everything the engine keeps about one channel, guarded by the channel's own lock.
#[derive(Default)]
struct Channel {
    stream: Option<Stream>,
    /// Epoch of the stream this channel had before its metadata expired.
    retired_epoch: Option<String>,
    idempotency: IdempotencyCache,
}

/// One incarnation of a channel's stream.
struct Stream {
    /// Names this incarnation in the log.
    id: u64,
    epoch: String,
    /// Offset of the latest committed publication.
    top: u64,
    /// Offset of the latest publication the writer assigned (>= `top`); only the writer
    /// moves it.
    written: u64,
    /// Its start is in the log.
    persisted: bool,
    /// Where each retained publication is, oldest first, offsets contiguous ending at
    /// `top`.
    entries: VecDeque<Location>,
    /// The publication at `top`, while retained (delta's previous, and the newest read).
    last: Option<Arc<Publication>>,
    publications_expire_at: Instant,
    meta_expire_at: Option<Instant>,
}

/// Converts between the monotonic clock and Unix ms (what the log stores).
struct Clock {
    instant: Instant,
    unix_ms: u64,
}

// === impl DiskBroker ===

impl DiskBroker {
    /// Opens (or creates) the store at `options.path`, replays it and starts the writer.
    pub(crate) fn open(
        options: DiskOptions,
        events: Arc<dyn BrokerEvents>,
    ) -> Result<Self, DiskOpenError> {
        let dir = options.path.clone();
        let error = |what: &'static str| {
            let path = dir.clone();
            move |source| DiskOpenError { what, path, source }
        };
        std::fs::create_dir_all(&options.path).map_err(error("create"))?;
        let lock = File::create(options.path.join("LOCK")).map_err(error("create the lock of"))?;
        lock.try_lock().map_err(|e| DiskOpenError {
            what: "lock (is another node using it?)",
            path: options.path.clone(),
            source: match e {
                std::fs::TryLockError::Error(e) => e,
                std::fs::TryLockError::WouldBlock => io::ErrorKind::WouldBlock.into(),
            },
        })?;
        let started = std::time::Instant::now();
        let clock = Clock::now();
        let boot_id = boot_id();
        let opened =
            recover::open(&options.path, clock.unix_ms, &boot_id).map_err(error("replay"))?;
        let segments = Segments::open(&options.path, options.segment_size)
            .map_err(error("open segments of"))?;
        let shared = Arc::new(Shared {
            events: Arc::clone(&events),
            channels: ChannelMap::new(),
            presence: MemoryBroker::new(events),
            segments,
            clock,
            queue: Mutex::default(),
            wake: Condvar::new(),
            next_stream: AtomicU64::new(opened.stored.next_stream.max(1)),
            committed: Mutex::default(),
            streams: AtomicU64::new(opened.stored.len() as u64),
            write_errors: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            checkpointing: Mutex::new(()),
            stopping: Mutex::new(false),
            stopped: Condvar::new(),
            threads: Mutex::default(),
            options,
            lock,
        });
        for (channel, old) in &opened.reepoched {
            tracing::warn!(
                channel = %channel,
                old_epoch = %old,
                "disk engine: stream may have lost acknowledged publications in a crash; new epoch"
            );
        }
        let restored = opened.stored.len();
        let reepoched = opened.reepoched.len();
        let clean = opened.clean;
        let mut writer = writer::Writer::new(&shared, opened.next_segment, opened.last_end);
        let mut starts = Vec::new();
        let reepoched_channels: HashSet<&str> = opened
            .reepoched
            .iter()
            .map(|(channel, _)| channel.as_str())
            .collect();
        for stored in opened.stored.streams.into_values() {
            if reepoched_channels.contains(stored.channel.as_str()) {
                starts.push(Record::StreamStart {
                    stream: stored.id,
                    channel: stored.channel.clone(),
                    epoch: stored.epoch.clone(),
                    top: stored.top,
                });
            }
            shared.restore(stored);
        }
        // The first checkpoint (bounding the next replay) is the housekeeping thread's first
        // act, off the start's path.
        writer.start(&shared, &starts).map_err(error("write to"))?;
        tracing::info!(
            path = %shared.options.path.display(),
            streams = restored,
            reepoched,
            clean,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "disk engine: store opened"
        );
        let mut threads = shared.threads.lock();
        threads.push(spawn("tether-disk-writer", {
            let shared = Arc::clone(&shared);
            move || writer.run(&shared)
        }));
        threads.push(spawn("tether-disk-spare", {
            let shared = Arc::clone(&shared);
            move || shared.segments.run_spare()
        }));
        threads.push(spawn("tether-disk-checkpoint", {
            let shared = Arc::clone(&shared);
            move || shared.run_housekeeping()
        }));
        drop(threads);
        Ok(Self { shared })
    }

    /// The engine that keeps presence and announces joins and leaves.
    pub(crate) fn presence(&self) -> &MemoryBroker {
        &self.shared.presence
    }

    /// Publishes into `channel`. With history the publication is appended to the log and
    /// delivered once durable (see the module docs); without, it is delivered at once and
    /// nothing is stored (an idempotency key is then remembered in memory only).
    pub(crate) async fn publish(
        &self,
        channel: &str,
        mut publication: Publication,
        opts: &PublishOptions,
    ) -> Result<Published, BrokerError> {
        let shared = &*self.shared;
        let now = Instant::now();
        let Some(history) = opts
            .history
            .filter(|history| history.size > 0 && !history.ttl.is_zero())
        else {
            publication.offset = 0;
            let event = PublicationEvent {
                publication: Arc::new(publication),
                position: None,
                previous: None,
            };
            let Some(key) = &opts.idempotency_key else {
                shared.events.on_publication(channel, &event);
                return Ok(Published::default());
            };
            return Ok(shared.channels.with(channel, |state| {
                if let Some(position) = state.idempotency.lookup(key, now) {
                    return Published {
                        position,
                        from_cache: true,
                    };
                }
                shared.events.on_publication(channel, &event);
                state
                    .idempotency
                    .insert(key.clone(), None, now + IDEMPOTENCY_TTL);
                Published::default()
            }));
        };
        let queued = shared.channels.with(channel, |state| {
            if state.expire(now) {
                shared.events.on_insufficient_state(channel);
            }
            if let Some(key) = &opts.idempotency_key
                && let Some(position) = state.idempotency.lookup(key, now)
            {
                return Err(Published {
                    position,
                    from_cache: true,
                });
            }
            let stream = state.stream_mut(now, &shared.next_stream);
            // It must not expire while the publication waits for the writer.
            stream.meta_expire_at = deadline(now, history.meta_ttl);
            let (done, result) = oneshot::channel();
            shared.enqueue(Pending {
                channel: channel.to_owned(),
                stream: stream.id,
                op: Op::Publish {
                    publication: Box::new(publication),
                    history,
                    idempotency_key: opts.idempotency_key.clone(),
                    done,
                },
            });
            Ok(result)
        });
        match queued {
            Err(cached) => Ok(cached),
            Ok(result) => result.await.unwrap_or_else(|_| Err(stopped())),
        }
    }

    /// Reads the channel's stream and its current top, refreshing the metadata's lifetime
    /// (the memory engine's semantics; see `MemoryBroker::history`).
    pub(crate) fn history(
        &self,
        channel: &str,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, BrokerError> {
        let shared = &*self.shared;
        let now = Instant::now();
        let (top, wanted, last) = shared.channels.with(channel, |state| {
            if state.expire(now) {
                shared.events.on_insufficient_state(channel);
            }
            let stream = state.stream_mut(now, &shared.next_stream);
            stream.meta_expire_at = deadline(now, query.meta_ttl);
            let top = stream.position();
            if let Some(since) = &query.since
                && !since.epoch.is_empty()
                && since.epoch != stream.epoch
            {
                return Err(BrokerError::UnrecoverablePosition);
            }
            let limit = query.limit.unwrap_or(usize::MAX);
            let len = stream.entries.len() as u64;
            let first = stream.first();
            // Index in `entries` of the first offset after (forward) or before (reverse)
            // `since`.
            let index = |offset: u64| offset.saturating_sub(first).min(len) as usize;
            let wanted: Vec<(u64, Location)> = if query.reverse {
                let end = query
                    .since
                    .as_ref()
                    .map_or(len as usize, |since| index(since.offset));
                (0..end)
                    .rev()
                    .take(limit)
                    .map(|i| (first + i as u64, stream.entries[i]))
                    .collect()
            } else {
                let start = query
                    .since
                    .as_ref()
                    .map_or(0, |since| index(since.offset.saturating_add(1)));
                (start..len as usize)
                    .take(limit)
                    .map(|i| (first + i as u64, stream.entries[i]))
                    .collect()
            };
            Ok((top, wanted, stream.last.clone()))
        })?;
        let mut publications = Vec::with_capacity(wanted.len());
        for (offset, at) in wanted {
            if let Some(last) = last.as_ref().filter(|last| last.offset == offset) {
                publications.push(Arc::clone(last));
                continue;
            }
            publications.push(Arc::new(shared.read(at, offset)?));
        }
        Ok(HistoryPage { publications, top })
    }

    /// Drops the channel's retained publications but keeps its epoch and top offset.
    pub(crate) async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        let shared = &*self.shared;
        let queued = shared.channels.with_existing(channel, |state| {
            let stream = state.stream.as_ref().filter(|stream| stream.persisted)?;
            let (done, result) = oneshot::channel();
            shared.enqueue(Pending {
                channel: channel.to_owned(),
                stream: stream.id,
                op: Op::RemoveHistory { done },
            });
            Some(result)
        });
        match queued.flatten() {
            Some(result) => result.await.unwrap_or_else(|_| Err(stopped())),
            None => {
                // Nothing on disk: drop what memory holds, as the memory engine does.
                shared.channels.with_existing(channel, |state| {
                    if let Some(stream) = &mut state.stream {
                        stream.entries.clear();
                        stream.last = None;
                    }
                });
                Ok(())
            }
        }
    }

    /// Expires streams and idempotency records as of `now`, frees channels left with none,
    /// and sweeps presence.
    pub(crate) fn sweep(&self, now: Instant) {
        let shared = &*self.shared;
        let mut streams = 0;
        shared.channels.retain(|name, state| {
            if state.expire(now) {
                shared.events.on_insufficient_state(name);
            }
            streams += u64::from(state.stream.as_ref().is_some_and(|s| s.persisted));
            !state.is_empty()
        });
        shared.streams.store(streams, Ordering::Relaxed);
        shared.presence.sweep(now);
    }

    /// Stops taking publications, writes what is queued, syncs, marks the log closed and
    /// checkpoints it, so the next start keeps every epoch. Waits for the threads.
    pub(crate) async fn close(&self) {
        let shared = Arc::clone(&self.shared);
        let _ = tokio::task::spawn_blocking(move || shared.close()).await;
    }

    /// Figures for the metrics endpoint.
    pub(crate) fn stats(&self) -> DiskStats {
        let shared = &*self.shared;
        DiskStats {
            bytes: shared.segments.disk_bytes(),
            streams: shared.streams.load(Ordering::Relaxed),
            write_errors: shared.write_errors.load(Ordering::Relaxed),
            batches: shared.batches.load(Ordering::Relaxed),
        }
    }
}

impl fmt::Debug for DiskBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskBroker")
            .field("path", &self.shared.options.path)
            .finish_non_exhaustive()
    }
}

/// The store could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("disk engine: cannot {what} {}", path.display())]
pub struct DiskOpenError {
    what: &'static str,
    path: PathBuf,
    source: io::Error,
}

fn stopped() -> BrokerError {
    BrokerError::Unavailable("disk engine stopped".into())
}

// === impl Shared ===

impl Shared {
    fn enqueue(&self, pending: Pending) {
        let mut queue = self.queue.lock();
        if queue.stop {
            // Dropping the sender fails the caller with "stopped".
            return;
        }
        queue.items.push(pending);
        if queue.items.len() == 1 {
            self.wake.notify_one();
        }
    }

    /// A publication of the log, with its offset.
    fn read(&self, at: Location, offset: u64) -> Result<Publication, BrokerError> {
        let bytes = self.segments.read(at).map_err(|error| {
            BrokerError::Unavailable(format!("disk engine: read failed: {error}"))
        })?;
        match Record::decode(&bytes) {
            Ok((Record::Publish(publish) | Record::Moved(publish), _))
                if publish.offset == offset =>
            {
                Ok(publish.publication)
            }
            Ok(_) => Err(BrokerError::Unavailable(format!(
                "disk engine: no publication {offset} at {at:?}"
            ))),
            Err(error) => Err(BrokerError::Unavailable(format!(
                "disk engine: publication {offset} at {at:?} unreadable: {error}"
            ))),
        }
    }

    /// Puts a stream loaded from the store into memory.
    fn restore(&self, stored: StoredStream) {
        let stream = Stream {
            id: stored.id,
            epoch: stored.epoch.clone(),
            top: stored.top,
            written: stored.top,
            persisted: true,
            entries: stored.entries,
            last: None,
            publications_expire_at: self.clock.instant_of(stored.publications_expire_ms),
            meta_expire_at: (stored.meta_expire_ms != 0)
                .then(|| self.clock.instant_of(stored.meta_expire_ms)),
        };
        self.channels.with(&stored.channel, |state| {
            for (key, offset, expires_ms) in stored.idempotency {
                let position = StreamPosition {
                    offset,
                    epoch: stored.epoch.clone(),
                };
                state
                    .idempotency
                    .insert(key, Some(position), self.clock.instant_of(expires_ms));
            }
            state.stream = Some(stream);
        });
    }

    /// Writes a checkpoint of every stored stream, then deletes the segments nothing needs
    /// any more.
    fn checkpoint(&self) -> io::Result<()> {
        let _one_at_a_time = self.checkpointing.lock();
        let (at, armed) = {
            let committed = self.committed.lock();
            (committed.at, committed.armed.clone())
        };
        // Everything before `at` must be on disk before a checkpoint says so (`interval`
        // mode may not have synced it yet; earlier segments were synced when finished).
        if let Some(file) = self.segments.file(at.0) {
            file.sync_data()?;
        }
        let mut stored = Stored::default();
        stored.armed = armed;
        let mut oldest = at.0;
        self.channels.for_each(|channel, state| {
            let Some(stream) = state.stream.as_ref().filter(|stream| stream.persisted) else {
                return;
            };
            // Not just the first entry: compaction moves a stream's oldest entries to the
            // head of the log, after its newer ones.
            for entry in &stream.entries {
                oldest = oldest.min(entry.segment);
            }
            let idempotency = state
                .idempotency
                .iter()
                .filter_map(|(key, position, expires)| {
                    let position = position.as_ref().filter(|p| p.epoch == stream.epoch)?;
                    Some((
                        key.to_owned(),
                        position.offset,
                        self.clock.unix_ms_of(expires),
                    ))
                })
                .collect();
            stored.insert(StoredStream {
                channel: channel.to_owned(),
                id: stream.id,
                epoch: stream.epoch.clone(),
                // Committed state only: what is being written now is after `at`.
                top: stream.top,
                entries: stream.entries.clone(),
                publications_expire_ms: self.clock.unix_ms_of(stream.publications_expire_at),
                meta_expire_ms: stream
                    .meta_expire_at
                    .map_or(0, |at| self.clock.unix_ms_of(at).max(1)),
                idempotency,
                lost: false,
            });
        });
        stored.next_stream = self.next_stream.load(Ordering::Relaxed);
        recover::write_checkpoint(&self.options.path, at, &stored)?;
        let deleted = self.segments.delete_before(oldest)?;
        if deleted > 0 {
            tracing::debug!(deleted, "disk engine: deleted segments nothing refers to");
        }
        if oldest + COMPACT_DISTANCE <= at.0 {
            self.compact(&stored, oldest);
        }
        Ok(())
    }

    /// Compaction of the oldest segment still referred to, when little of it is live (a few
    /// long-lived publications would otherwise keep every segment after it): its retained
    /// publications are copied to the head of the log, so the next checkpoint can delete it.
    fn compact(&self, stored: &Stored, segment: u32) {
        let live: u64 = stored
            .streams
            .values()
            .flat_map(|stream| stream.entries.iter())
            .filter(|at| at.segment == segment)
            .map(|at| u64::from(at.len))
            .sum();
        if live * 2 > self.options.segment_size {
            return;
        }
        let mut moved = 0;
        for stream in stored.streams.values() {
            let first = stream.first();
            for (i, at) in stream.entries.iter().enumerate() {
                if at.segment != segment {
                    continue;
                }
                let Some(bytes) = self.segments.read(*at).ok().and_then(|b| record::moved(&b))
                else {
                    continue;
                };
                moved += 1;
                self.enqueue(Pending {
                    channel: stream.channel.clone(),
                    stream: stream.id,
                    op: Op::Move {
                        offset: first + i as u64,
                        from: *at,
                        bytes,
                    },
                });
            }
        }
        tracing::debug!(segment, moved, live, "disk engine: compacting a segment");
    }

    /// Checkpoints at once, then every `checkpoint_interval` until the engine closes.
    fn run_housekeeping(&self) {
        if let Err(error) = self.checkpoint() {
            tracing::warn!(%error, "disk engine: checkpoint failed");
        }
        let mut stopping = self.stopping.lock();
        loop {
            let deadline = std::time::Instant::now() + self.options.checkpoint_interval;
            while !*stopping {
                if self.stopped.wait_until(&mut stopping, deadline).timed_out() {
                    break;
                }
            }
            if *stopping {
                return;
            }
            drop(stopping);
            if let Err(error) = self.checkpoint() {
                tracing::warn!(%error, "disk engine: checkpoint failed");
            }
            stopping = self.stopping.lock();
        }
    }

    fn close(self: &Arc<Self>) {
        let first = {
            let mut queue = self.queue.lock();
            !std::mem::replace(&mut queue.stop, true)
        };
        if !first {
            return;
        }
        self.wake.notify_all();
        *self.stopping.lock() = true;
        self.stopped.notify_all();
        self.segments.stop_spare();
        let threads = std::mem::take(&mut *self.threads.lock());
        for thread in threads {
            let _ = thread.join();
        }
        // Another engine (the next run in the same process, in tests) may open it now.
        let _ = self.lock.unlock();
    }
}

// === impl Channel ===

impl Channel {
    /// Applies every expiry due at `now`; true when the stream's epoch was retired just now.
    fn expire(&mut self, now: Instant) -> bool {
        let mut retired = false;
        if let Some(stream) = &mut self.stream {
            if stream.meta_expire_at.is_some_and(|at| now >= at) {
                self.retired_epoch = self.stream.take().map(|stream| stream.epoch);
                retired = true;
            } else if now >= stream.publications_expire_at && !stream.entries.is_empty() {
                stream.entries = VecDeque::new();
                stream.last = None;
            }
        }
        self.idempotency.prune(now);
        retired
    }

    /// The channel's stream, created with a fresh epoch and top 0 if there is none (it
    /// reaches the log with its first publication).
    fn stream_mut(&mut self, now: Instant, next_stream: &AtomicU64) -> &mut Stream {
        let retired = self.retired_epoch.as_deref();
        self.stream.get_or_insert_with(|| Stream {
            id: next_stream.fetch_add(1, Ordering::Relaxed),
            epoch: new_epoch(retired),
            top: 0,
            written: 0,
            persisted: false,
            entries: VecDeque::new(),
            last: None,
            publications_expire_at: now,
            meta_expire_at: None,
        })
    }

    fn is_empty(&self) -> bool {
        self.stream.is_none() && self.idempotency.is_empty()
    }

    /// The stream, if it is still the incarnation `id`.
    fn stream_if(&mut self, id: u64) -> Option<&mut Stream> {
        self.stream.as_mut().filter(|stream| stream.id == id)
    }
}

impl Stream {
    /// Offset of the oldest retained publication (`top + 1` when none is retained).
    fn first(&self) -> u64 {
        self.top + 1 - self.entries.len() as u64
    }

    fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.top,
            epoch: self.epoch.clone(),
        }
    }
}

// === impl Clock ===

impl Clock {
    fn now() -> Self {
        Self {
            instant: Instant::now(),
            unix_ms: unix_ms(),
        }
    }

    /// The instant of Unix time `ms` (clamped to the clock's base when long past).
    fn instant_of(&self, ms: u64) -> Instant {
        if ms >= self.unix_ms {
            self.instant + Duration::from_millis(ms - self.unix_ms)
        } else {
            self.instant
                .checked_sub(Duration::from_millis(self.unix_ms - ms))
                .unwrap_or(self.instant)
        }
    }

    /// Unix ms of `at`.
    fn unix_ms_of(&self, at: Instant) -> u64 {
        if at >= self.instant {
            self.unix_ms + (at - self.instant).as_millis() as u64
        } else {
            self.unix_ms
                .saturating_sub((self.instant - at).as_millis() as u64)
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// This boot of the machine: a crash under the same boot lost nothing the process wrote
/// (the kernel still writes it back); a new boot may have lost the unsynced tail.
fn boot_id() -> String {
    std::fs::read_to_string(BOOT_ID)
        .map(|id| id.trim().to_owned())
        .unwrap_or_default()
}

/// Compaction looks at the oldest segment only when at least this many newer ones exist (a
/// young store's oldest segment expires on its own soon).
const COMPACT_DISTANCE: u32 = 2;

const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .expect("spawn a disk engine thread")
}

#[cfg(test)]
mod tests;
