//! The writer thread: the only code that appends to the log.
//!
//! It takes everything queued at once (group commit), assigns each publication the next
//! offset of its stream, encodes the batch into one buffer, writes it with one `pwrite` and
//! syncs it with one `fdatasync`, then commits each publication under its channel's lock
//! (index, deliver, acknowledge). A failed write or sync fails the whole batch (the
//! publishers get an error, never an acknowledgement), rolls the streams' offsets back, and
//! abandons the segment: the next batch opens a new one whose header says where the old
//! one's acknowledged data ends, so nothing of the failed write is ever replayed.
//!
//! `interval` mode acknowledges after the write and syncs every interval. A stream must be
//! *armed* before it has acknowledged records that are not on disk: the batch that arms it
//! carries an `Arm` record and is synced before its acknowledgements. A stream with no record
//! for [`DISARM_EVERY`] intervals is disarmed (a `Disarm` record after the syncs that covered
//! its last one). After a crash under a new boot (the unsynced tail may be gone), the armed streams,
//! and only they, get a new epoch; after a process crash under the same boot, the kernel
//! still had every written byte and nothing changes.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::log::Location;
use super::record::{Publish, Record};
use super::{Fsync, Op, Pending, Shared, unix_ms};
use crate::broker::channels::{IDEMPOTENCY_TTL, deadline};
use crate::broker::{BrokerError, Publication, PublicationEvent, Published};

pub(super) struct Writer {
    boot_id: String,
    current: Option<Current>,
    /// The current segment was created sparse.
    sparse: bool,
    next_segment: u32,
    /// End of the acknowledged data of the segment before `current` (for the next
    /// segment's header); `u64::MAX` when there was none.
    prev_end: u64,
    buf: Vec<u8>,
    interval: Option<Duration>,
    /// Something written since the last sync.
    unsynced: bool,
    /// The batch being written must be synced (it moves publications).
    must_sync: bool,
    next_tick: std::time::Instant,
    armed: HashSet<u64>,
    /// Streams written since the last disarm scan.
    touched: HashSet<u64>,
    /// Interval ticks so far (every [`DISARM_EVERY`]th one scans for idle streams).
    ticks: u64,
}

struct Current {
    id: u32,
    file: Arc<File>,
    pos: u64,
}

/// One queued item placed in the buffer.
struct Planned {
    pending: Pending,
    /// Its `StreamStart` is in the same write.
    started: bool,
    /// The publication's offset, or a removal's last offset.
    offset: u64,
    /// Where its record starts in the buffer, and its length.
    at: usize,
    len: usize,
}

impl Writer {
    pub(super) fn new(shared: &Shared, next_segment: u32, last_end: u64) -> Self {
        Self {
            boot_id: super::boot_id(),
            current: None,
            sparse: false,
            next_segment,
            prev_end: last_end,
            buf: Vec::with_capacity(1 << 20),
            interval: match shared.options.fsync {
                Fsync::Always => None,
                Fsync::Interval(every) => Some(every),
            },
            unsynced: false,
            must_sync: false,
            next_tick: std::time::Instant::now(),
            armed: HashSet::new(),
            touched: HashSet::new(),
            ticks: 0,
        }
    }

    /// Opens this run's first segment with `records` (new epochs found on open) and syncs.
    pub(super) fn start(&mut self, shared: &Shared, records: &[Record]) -> io::Result<()> {
        self.rotate(shared)?;
        self.buf.clear();
        for record in records {
            record.encode(&mut self.buf);
        }
        self.append()?;
        self.sync()?;
        let current = self.current.as_ref().expect("rotate opened a segment");
        shared.committed.lock().at = (current.id, current.pos as u32);
        Ok(())
    }

    /// Writes batches until the engine closes, then closes the log.
    pub(super) fn run(mut self, shared: &Arc<Shared>) {
        loop {
            let (batch, stop) = {
                let mut queue = shared.queue.lock();
                while queue.items.is_empty() && !queue.stop {
                    let timed_out = match self.deadline() {
                        Some(at) => shared.wake.wait_until(&mut queue, at).timed_out(),
                        None => {
                            shared.wake.wait(&mut queue);
                            false
                        }
                    };
                    if timed_out {
                        break;
                    }
                }
                (std::mem::take(&mut queue.items), queue.stop)
            };
            if !batch.is_empty() {
                self.write_batch(shared, batch);
            }
            self.tick(shared);
            if stop && shared.queue.lock().items.is_empty() {
                self.close(shared);
                return;
            }
        }
    }

    /// When the next interval tick is due (`None` in `always` mode or with nothing to do).
    fn deadline(&self) -> Option<std::time::Instant> {
        (self.interval.is_some() && (self.unsynced || !self.armed.is_empty()))
            .then_some(self.next_tick)
    }

    fn write_batch(&mut self, shared: &Shared, batch: Vec<Pending>) {
        if self.sparse && shared.segments.spare_ready() {
            // The first segment of a run is created sparse (no spare was ready); move to a
            // zero-filled one as soon as there is one, for cheaper syncs.
            if let Err(error) = self.rotate(shared) {
                self.failed(shared, &io_error(&error));
            }
        }
        let written_ms = unix_ms();
        let max_record = shared.segments.size().saturating_sub(HEADER_ROOM) as usize;
        let mut planned: Vec<Planned> = Vec::with_capacity(batch.len());
        let mut arming: Vec<u64> = Vec::new();
        let mut failed: Option<BrokerError> = None;
        let mut scratch = Vec::new();
        self.buf.clear();
        for pending in batch {
            if let Some(error) = &failed {
                fail(pending, error.clone());
                continue;
            }
            scratch.clear();
            let Some((started, offset, at)) = plan(shared, &pending, written_ms, &mut scratch)
            else {
                fail(
                    pending,
                    BrokerError::Unavailable("disk engine: stream changed".into()),
                );
                continue;
            };
            if scratch.len() > max_record {
                unplan(shared, &pending, started, offset);
                fail(
                    pending,
                    BrokerError::Unavailable(
                        "disk engine: publication larger than a segment".into(),
                    ),
                );
                continue;
            }
            let room = self.current.as_ref().map_or(0, |current| {
                shared.segments.size().saturating_sub(current.pos)
            });
            let arm_room = if self.interval.is_some() {
                ARM_ROOM + MAX_VARINT * (arming.len() + 1)
            } else {
                0
            };
            if (self.buf.len() + scratch.len() + arm_room) as u64 > room {
                let result = self.flush(shared, &mut planned, &mut arming);
                let result = result.and_then(|()| self.rotate(shared).map_err(|e| io_error(&e)));
                if let Err(error) = result {
                    self.failed(shared, &error);
                    rollback(shared, &pending, started);
                    fail(pending, error.clone());
                    failed = Some(error);
                    continue;
                }
            }
            if matches!(pending.op, Op::Move { .. }) {
                // The segment it leaves is deleted after the next checkpoint: the copy must
                // be on disk by then.
                self.must_sync = true;
            } else if self.interval.is_some()
                && !self.armed.contains(&pending.stream)
                && !arming.contains(&pending.stream)
            {
                arming.push(pending.stream);
            }
            planned.push(Planned {
                started,
                offset,
                at: self.buf.len() + at,
                len: scratch.len() - at,
                pending,
            });
            self.buf.extend_from_slice(&scratch);
        }
        if failed.is_none()
            && let Err(error) = self.flush(shared, &mut planned, &mut arming)
        {
            self.failed(shared, &error);
        }
    }

    /// Writes and syncs the buffer, then commits (or, on failure, fails) every planned item.
    fn flush(
        &mut self,
        shared: &Shared,
        planned: &mut Vec<Planned>,
        arming: &mut Vec<u64>,
    ) -> Result<(), BrokerError> {
        if planned.is_empty() {
            return Ok(());
        }
        if !arming.is_empty() {
            Record::Arm {
                streams: arming.clone(),
            }
            .encode(&mut self.buf);
        }
        let start = self.current.as_ref().map(|current| current.pos);
        let result = match start {
            None => self.rotate(shared).and_then(|()| self.append()),
            Some(_) => self.append(),
        };
        // A sync makes every acknowledgement in it safe; `interval` mode needs one only to
        // arm streams.
        let result = result.and_then(|()| {
            if self.interval.is_none() || !arming.is_empty() || self.must_sync {
                self.sync()
            } else {
                Ok(())
            }
        });
        self.must_sync = false;
        let planned = std::mem::take(planned);
        let arming = std::mem::take(arming);
        match result {
            Ok(()) => {
                shared.batches.fetch_add(1, Ordering::Relaxed);
                let current = self.current.as_ref().expect("appended to a segment");
                let base = current.pos - self.buf.len() as u64;
                let segment = current.id;
                // Held until every item of the batch is in its channel: a checkpoint reads
                // `at` only then, so what its replay skips is in what it copies.
                let mut committed = shared.committed.lock();
                committed.at = (segment, current.pos as u32);
                committed.armed.extend(arming.iter().copied());
                self.armed.extend(arming);
                for item in planned {
                    self.touched.insert(item.pending.stream);
                    let at = Location {
                        segment,
                        pos: (base + item.at as u64) as u32,
                        len: item.len as u32,
                    };
                    commit(shared, item, at);
                }
                drop(committed);
                self.buf.clear();
                Ok(())
            }
            Err(error) => {
                let error = io_error(&error);
                for item in planned {
                    rollback(shared, &item.pending, item.started);
                    fail(item.pending, error.clone());
                }
                self.buf.clear();
                Err(error)
            }
        }
    }

    /// After a failed write or sync: count it, log it, abandon the segment.
    fn failed(&mut self, shared: &Shared, error: &BrokerError) {
        shared.write_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(%error, "disk engine: write failed; publishes fail until it succeeds");
        if let Some(current) = self.current.take() {
            self.prev_end = current.pos;
        }
    }

    /// Appends the buffer at the end of the current segment.
    fn append(&mut self) -> io::Result<()> {
        let current = self
            .current
            .as_mut()
            .ok_or_else(|| io::Error::other("no open segment"))?;
        if !self.buf.is_empty() {
            current.file.write_all_at(&self.buf, current.pos)?;
            current.pos += self.buf.len() as u64;
            self.unsynced = true;
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        if let Some(current) = &self.current
            && self.unsynced
        {
            current.file.sync_data()?;
        }
        self.unsynced = false;
        Ok(())
    }

    /// Finishes the current segment (synced) and starts the next one with its header.
    fn rotate(&mut self, shared: &Shared) -> io::Result<()> {
        if let Some(pos) = self.current.as_ref().map(|current| current.pos) {
            self.sync()?;
            self.prev_end = pos;
        }
        self.current = None;
        let id = self.next_segment;
        let (file, preallocated) = shared.segments.create(id)?;
        let mut header = Vec::new();
        Record::SegmentStart {
            boot_id: self.boot_id.clone(),
            prev_end: self.prev_end,
        }
        .encode(&mut header);
        if let Err(error) = file.write_all_at(&header, 0) {
            // A segment without its header would hide where the previous one ends (the
            // next open would take that for damage): it goes, and the next try reuses its id.
            shared.segments.discard(id);
            return Err(error);
        }
        self.sparse = !preallocated;
        self.next_segment += 1;
        self.current = Some(Current {
            id,
            file,
            pos: header.len() as u64,
        });
        self.unsynced = true;
        Ok(())
    }

    /// `interval` mode: syncs what was written since the last tick, and every
    /// [`DISARM_EVERY`] ticks disarms the streams that wrote nothing since the previous scan
    /// (their records were all covered by the syncs in between).
    fn tick(&mut self, shared: &Shared) {
        let Some(every) = self.interval else { return };
        let now = std::time::Instant::now();
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + every;
        if let Err(error) = self.sync() {
            // Acknowledged records may not be on disk: the streams stay armed, so a crash
            // under a new boot changes their epochs.
            let error = io_error(&error);
            self.failed(shared, &error);
            return;
        }
        self.ticks += 1;
        if !self.ticks.is_multiple_of(DISARM_EVERY) {
            return;
        }
        let idle: Vec<u64> = self
            .armed
            .iter()
            .filter(|stream| !self.touched.contains(stream))
            .copied()
            .collect();
        self.touched.clear();
        if idle.is_empty() || self.current.is_none() {
            return;
        }
        self.buf.clear();
        Record::Disarm {
            streams: idle.clone(),
        }
        .encode(&mut self.buf);
        let room = self.current.as_ref().map_or(0, |current| {
            shared.segments.size().saturating_sub(current.pos)
        });
        if self.buf.len() as u64 > room {
            return;
        }
        match self.append() {
            Ok(()) => {
                let mut committed = shared.committed.lock();
                for stream in idle {
                    self.armed.remove(&stream);
                    committed.armed.remove(&stream);
                }
            }
            Err(error) => {
                let error = io_error(&error);
                self.failed(shared, &error);
            }
        }
        self.buf.clear();
    }

    /// The clean end: a `Close` record, synced, and a checkpoint before it.
    fn close(&mut self, shared: &Shared) {
        let result = (|| {
            if self.current.is_none() {
                self.rotate(shared)?;
            }
            let current = self.current.as_ref().expect("a segment is open");
            shared.committed.lock().at = (current.id, current.pos as u32);
            self.buf.clear();
            Record::Close.encode(&mut self.buf);
            self.append()?;
            self.sync()?;
            shared.checkpoint()
        })();
        match result {
            Ok(()) => tracing::info!("disk engine: closed cleanly"),
            Err(error) => tracing::error!(%error, "disk engine: could not close the log cleanly"),
        }
    }
}

/// Encodes `pending`'s records into `out` under its channel's lock, assigning its offset.
/// Returns (its stream start is included, offset, where its own record starts in `out`);
/// `None` if its stream is gone.
fn plan(
    shared: &Shared,
    pending: &Pending,
    written_ms: u64,
    out: &mut Vec<u8>,
) -> Option<(bool, u64, usize)> {
    shared.channels.with(&pending.channel, |state| {
        let stream = state.stream_if(pending.stream)?;
        if let Op::Move {
            offset,
            from,
            bytes,
        } = &pending.op
        {
            // Only while the stream still retains that publication where compaction found it.
            let first = stream.first();
            let index = offset.checked_sub(first)?;
            if stream.entries.get(index as usize) != Some(from) {
                return None;
            }
            out.extend_from_slice(bytes);
            return Some((false, *offset, 0));
        }
        let started = !stream.persisted;
        if started {
            Record::StreamStart {
                stream: stream.id,
                channel: pending.channel.clone(),
                epoch: stream.epoch.clone(),
                top: stream.written,
            }
            .encode(out);
            stream.persisted = true;
        }
        let at = out.len();
        let offset = match &pending.op {
            Op::Publish {
                publication,
                history,
                idempotency_key,
                ..
            } => {
                stream.written += 1;
                let mut publication = Publication::clone(publication);
                publication.offset = stream.written;
                Record::Publish(Box::new(Publish {
                    stream: stream.id,
                    offset: stream.written,
                    written_ms,
                    size: history.size as u64,
                    ttl_ms: history.ttl.as_millis() as u64,
                    meta_ttl_ms: history.meta_ttl.as_millis() as u64,
                    idempotency_key: idempotency_key.clone(),
                    publication,
                }))
                .encode(out);
                stream.written
            }
            Op::Move { .. } => unreachable!("handled above"),
            Op::RemoveHistory { .. } => {
                Record::RemoveHistory {
                    stream: stream.id,
                    up_to: stream.written,
                }
                .encode(out);
                stream.written
            }
        };
        Some((started, offset, at))
    })
}

/// Takes back the offset [`plan`] just assigned (the item is not written).
fn unplan(shared: &Shared, pending: &Pending, started: bool, offset: u64) {
    shared.channels.with(&pending.channel, |state| {
        if let Some(stream) = state.stream_if(pending.stream) {
            if matches!(pending.op, Op::Publish { .. }) && stream.written == offset {
                stream.written -= 1;
            }
            if started {
                stream.persisted = false;
            }
        }
    });
}

/// After a failed write: the stream continues from its committed top.
fn rollback(shared: &Shared, pending: &Pending, started: bool) {
    if matches!(pending.op, Op::Move { .. }) {
        return;
    }
    shared.channels.with(&pending.channel, |state| {
        if let Some(stream) = state.stream_if(pending.stream) {
            stream.written = stream.top;
            if started {
                stream.persisted = false;
            }
        }
    });
}

fn fail(pending: Pending, error: BrokerError) {
    match pending.op {
        Op::Publish { done, .. } => {
            let _ = done.send(Err(error));
        }
        Op::RemoveHistory { done } => {
            let _ = done.send(Err(error));
        }
        // Compaction tries again at a later checkpoint.
        Op::Move { .. } => {}
    }
}

/// A durable item: indexed, delivered and acknowledged under its channel's lock.
fn commit(shared: &Shared, item: Planned, at: Location) {
    let Planned {
        pending, offset, ..
    } = item;
    let now = Instant::now();
    let channel = pending.channel;
    match pending.op {
        Op::Publish {
            publication,
            history,
            idempotency_key,
            done,
        } => {
            let mut publication = *publication;
            publication.offset = offset;
            let result = shared.channels.with(&channel, |state| {
                let Some(stream) = state.stream_if(pending.stream) else {
                    return Err(BrokerError::Unavailable(
                        "disk engine: stream expired while written".into(),
                    ));
                };
                let publication = Arc::new(publication);
                let previous = if publication.delta {
                    stream
                        .last
                        .clone()
                        .filter(|previous| previous.offset + 1 == offset)
                } else {
                    None
                };
                if stream.top + 1 != offset {
                    // Offsets are assigned in commit order; this cannot happen, but an index
                    // with a hole would serve a wrong history, so start it over.
                    stream.entries.clear();
                }
                stream.top = offset;
                stream.entries.push_back(at);
                while stream.entries.len() > history.size {
                    stream.entries.pop_front();
                }
                stream.last = Some(Arc::clone(&publication));
                stream.publications_expire_at = now + history.ttl;
                stream.meta_expire_at = deadline(now, history.meta_ttl);
                let position = stream.position();
                shared.events.on_publication(
                    &channel,
                    &PublicationEvent {
                        publication,
                        position: Some(position.clone()),
                        previous,
                    },
                );
                if let Some(key) = idempotency_key {
                    state
                        .idempotency
                        .insert(key, Some(position.clone()), now + IDEMPOTENCY_TTL);
                }
                Ok(Published {
                    position: Some(position),
                    from_cache: false,
                })
            });
            let _ = done.send(result);
        }
        Op::Move { from, .. } => {
            shared.channels.with(&channel, |state| {
                if let Some(stream) = state.stream_if(pending.stream) {
                    let first = stream.first();
                    if let Some(entry) = offset
                        .checked_sub(first)
                        .and_then(|index| stream.entries.get_mut(index as usize))
                        .filter(|entry| **entry == from)
                    {
                        *entry = at;
                    }
                }
            });
        }
        Op::RemoveHistory { done } => {
            shared.channels.with(&channel, |state| {
                if let Some(stream) = state.stream_if(pending.stream) {
                    let first = stream.first();
                    let drop = (offset + 1).saturating_sub(first) as usize;
                    stream.entries.drain(..drop.min(stream.entries.len()));
                    if stream
                        .last
                        .as_ref()
                        .is_some_and(|last| last.offset <= offset)
                    {
                        stream.last = None;
                    }
                }
            });
            let _ = done.send(Ok(()));
        }
    }
}

fn io_error(error: &io::Error) -> BrokerError {
    BrokerError::Unavailable(format!("disk engine: write failed: {error}"))
}

/// Interval ticks between two scans for idle armed streams. A stream stays armed while it
/// writes at least once per this many intervals (one second at the default 100 ms), so a
/// channel publishing more often than that never waits for a sync; after a machine crash,
/// the channels written within the last one to two such periods get new epochs.
pub(super) const DISARM_EVERY: u64 = 10;

/// Room kept in every segment for its header.
const HEADER_ROOM: u64 = 256;
/// Room kept in a batch's segment for its `Arm` record: the frame, and a varint per stream.
const ARM_ROOM: usize = 32;
const MAX_VARINT: usize = 10;
