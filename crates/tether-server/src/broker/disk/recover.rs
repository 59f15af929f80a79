//! Opening a store: the checkpoint, the replay of the log after it, the cut of a torn tail,
//! and the epoch rule for what may have been lost; and writing checkpoints.
//!
//! A checkpoint is a fuzzy snapshot: the log position `P` is taken first, then each channel
//! is copied under its own lock at some later moment. Replaying the log from `P` over it is
//! still exact because every record is absolute (a publication names its offset, a stream
//! start its id, a removal its last offset) and applying one twice changes nothing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::io::{self, Write as _};
use std::path::Path;

use bytes::Buf as _;
use prost::encoding::{decode_varint, encode_varint};

use super::log::{self, Location};
use super::record::{FrameError, Publish, Record};
use crate::broker::channels::{IDEMPOTENCY_TTL, new_epoch};

/// A stream as the store knows it, with wall-clock deadlines (Unix ms; 0 = none).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct StoredStream {
    pub(super) channel: String,
    pub(super) id: u64,
    pub(super) epoch: String,
    pub(super) top: u64,
    /// Retained publications, contiguous offsets ending at `top`.
    pub(super) entries: VecDeque<Location>,
    pub(super) publications_expire_ms: u64,
    pub(super) meta_expire_ms: u64,
    /// Idempotency key, offset, expiry.
    pub(super) idempotency: Vec<(String, u64, u64)>,
    /// Records of this stream were lost (a gap in its offsets).
    pub(super) lost: bool,
}

impl StoredStream {
    /// Offset of the oldest retained publication (`top + 1` when none is retained).
    pub(super) fn first(&self) -> u64 {
        self.top + 1 - self.entries.len() as u64
    }
}

/// Everything a store holds, by channel.
#[derive(Debug, Default)]
pub(super) struct Stored {
    /// Streams by id: the current incarnation of each channel only.
    pub(super) streams: HashMap<u64, StoredStream>,
    /// Channel -> its current stream's id.
    current: HashMap<String, u64>,
    /// Streams that may have acknowledged records not yet on disk (`interval` mode).
    pub(super) armed: HashSet<u64>,
    pub(super) next_stream: u64,
}

/// What [`open`] found.
#[derive(Debug)]
pub(super) struct Opened {
    pub(super) stored: Stored,
    /// Streams whose epoch changed because they may have lost acknowledged publications:
    /// (channel, old epoch).
    pub(super) reepoched: Vec<(String, String)>,
    /// The next segment id, and where the last segment's valid data ends (`u64::MAX` if
    /// there is no segment).
    pub(super) next_segment: u32,
    pub(super) last_end: u64,
    /// The previous run closed cleanly.
    pub(super) clean: bool,
}

/// Loads the checkpoint and replays the log after it. `boot_id` is this machine's boot.
pub(super) fn open(dir: &Path, now_ms: u64, boot_id: &str) -> io::Result<Opened> {
    let (mut stored, start) = read_checkpoint(dir)?.unwrap_or_default();
    let ids = log::list(dir)?;
    // Clean unless streams were armed at the checkpoint (their unsynced records after it
    // may be gone) or records follow it; a `Close` as the last record is clean again.
    let mut clean = stored.armed.is_empty();
    let mut lost_everywhere = false;
    let mut last_end = u64::MAX;
    let segments: Vec<u32> = ids.iter().copied().filter(|id| *id >= start.0).collect();
    // Each segment's first record says where the previous one's valid data ends.
    let headers: Vec<Option<(String, u64)>> = segments
        .iter()
        .map(|id| read_header(dir, *id))
        .collect::<io::Result<_>>()?;
    let prev_ends: Vec<Option<u64>> = headers
        .iter()
        .map(|header| header.as_ref().map(|(_, prev_end)| *prev_end))
        .collect();
    // The last run wrote the newest segment (every run starts one), whatever the checkpoint
    // covers; a segment without a readable header leaves the boot unknown.
    let last_boot = match ids.last() {
        Some(last) => read_header(dir, *last)?.map(|(boot_id, _)| boot_id),
        None => None,
    };
    for (index, id) in segments.iter().enumerate() {
        // One segment in memory at a time.
        let bytes = fs::read(log::path(dir, *id))?;
        let from = if *id == start.0 { start.1 as usize } else { 0 };
        let is_last = index + 1 == segments.len();
        let bound = match prev_ends.get(index + 1).copied().flatten() {
            Some(end) if end != u64::MAX => Some(end),
            _ if is_last => None,
            _ => {
                tracing::error!(
                    segment = segments[index + 1],
                    "disk engine: a segment's header is damaged; every stream gets a new epoch"
                );
                lost_everywhere = true;
                clean = false;
                None
            }
        };
        let limit = bound.map_or(bytes.len(), |end| (end as usize).min(bytes.len()));
        let bytes = &bytes[..];
        let mut at = from;
        let mut stop = None;
        while at < limit {
            match Record::decode(&bytes[at..limit]) {
                Ok((record, len)) => {
                    let location = Location {
                        segment: *id,
                        pos: at as u32,
                        len: len as u32,
                    };
                    match &record {
                        Record::SegmentStart { .. } => {}
                        Record::Close => clean = true,
                        _ => clean = false,
                    }
                    stored.apply(record, location, now_ms);
                    at += len;
                }
                Err(error) => {
                    stop = Some(error);
                    break;
                }
            }
        }
        if let Some(bound) = bound {
            if at < bound as usize {
                // Acknowledged data of a finished segment is unreadable: corruption, not a
                // torn write. Which streams lost what cannot be known.
                tracing::error!(
                    segment = id,
                    at,
                    expected_end = bound,
                    error = %stop.map_or_else(|| "segment shorter than recorded".into(), |e| e.to_string()),
                    "disk engine: a finished segment is damaged; every stream gets a new epoch"
                );
                lost_everywhere = true;
                clean = false;
            }
        } else if is_last {
            last_end = at as u64;
            match stop {
                None | Some(FrameError::End) => {}
                Some(error) => {
                    let cut = bytes[at..]
                        .iter()
                        .rposition(|b| *b != 0)
                        .map_or(0, |p| p + 1);
                    tracing::warn!(
                        segment = id,
                        at,
                        bytes = cut,
                        %error,
                        "disk engine: cut a torn tail of the log (a write the crash interrupted)"
                    );
                    clean = false;
                }
            }
        }
    }
    if segments.is_empty() {
        clean = true;
    }
    if !clean {
        // What the crashed run wrote but never synced is in the page cache at best: make it
        // durable now, before streams that relied on it lose their armed state below.
        for id in &segments {
            fs::File::open(log::path(dir, *id))?.sync_all()?;
        }
    }
    let same_boot = last_boot
        .as_deref()
        .is_some_and(|b| !b.is_empty() && b == boot_id);
    let mut reepoched = Vec::new();
    stored.expire(now_ms);
    let stream_ids: Vec<u64> = stored.streams.keys().copied().collect();
    for id in stream_ids {
        let stream = &stored.streams[&id];
        let may_have_lost = lost_everywhere
            || stream.lost
            || (!clean && !same_boot && stored.armed.contains(&stream.id));
        if may_have_lost {
            let mut stream = stored.streams.remove(&id).expect("listed above");
            let old = std::mem::take(&mut stream.epoch);
            stream.id = stored.next_stream;
            stream.epoch = new_epoch(Some(&old));
            stream.lost = false;
            // Its newest records may be gone (a crash may take unsynced bytes that a
            // checkpoint already pointed at): keep the readable prefix, which stays
            // contiguous, and let the new epoch start from its end.
            let readable = stream
                .entries
                .iter()
                .position(|at| !readable(dir, *at))
                .unwrap_or(stream.entries.len());
            let lost = (stream.entries.len() - readable) as u64;
            stream.entries.truncate(readable);
            stream.top -= lost;
            reepoched.push((stream.channel.clone(), old));
            stored.insert(stream);
        }
    }
    stored.armed.clear();
    Ok(Opened {
        stored,
        reepoched,
        next_segment: ids.last().map_or(1, |id| id + 1),
        last_end,
        clean,
    })
}

/// Boot id and `prev_end` of a segment's header; `None` when the header is unreadable.
fn read_header(dir: &Path, id: u32) -> io::Result<Option<(String, u64)>> {
    use std::io::Read as _;
    let mut head = Vec::with_capacity(HEADER_READ);
    fs::File::open(log::path(dir, id))?
        .take(HEADER_READ as u64)
        .read_to_end(&mut head)?;
    Ok(match Record::decode(&head) {
        Ok((Record::SegmentStart { boot_id, prev_end }, _)) => Some((boot_id, prev_end)),
        _ => None,
    })
}

/// The record at `at` is intact.
fn readable(dir: &Path, at: Location) -> bool {
    use std::os::unix::fs::FileExt as _;
    let Ok(file) = fs::File::open(log::path(dir, at.segment)) else {
        return false;
    };
    let mut bytes = vec![0; at.len as usize];
    file.read_exact_at(&mut bytes, u64::from(at.pos)).is_ok()
        && super::record::frame(&bytes)
            .is_ok_and(|body| body.len() + super::record::HEADER == bytes.len())
}

impl Stored {
    /// Applies one record of the log (found at `location`).
    fn apply(&mut self, record: Record, location: Location, now_ms: u64) {
        match record {
            Record::SegmentStart { .. } | Record::Close => {}
            Record::StreamStart {
                stream,
                channel,
                epoch,
                top,
            } => {
                self.next_stream = self.next_stream.max(stream + 1);
                if self.current.get(&channel).is_some_and(|id| *id >= stream) {
                    return;
                }
                self.insert(StoredStream {
                    channel,
                    id: stream,
                    epoch,
                    top,
                    entries: VecDeque::new(),
                    publications_expire_ms: 0,
                    meta_expire_ms: 0,
                    idempotency: Vec::new(),
                    lost: false,
                });
            }
            Record::Publish(publish) => {
                let Publish {
                    stream: id,
                    offset,
                    written_ms,
                    size,
                    ttl_ms,
                    meta_ttl_ms,
                    idempotency_key,
                    ..
                } = *publish;
                let Some(stream) = self.stream_mut(id) else {
                    return;
                };
                if offset <= stream.top {
                    // Written again (a replay over a checkpoint that has it, or a retry
                    // after a failed write): what follows it is replayed after it.
                    let keep = stream
                        .entries
                        .len()
                        .saturating_sub((stream.top - offset + 1) as usize);
                    stream.entries.truncate(keep);
                } else if offset > stream.top + 1 {
                    stream.entries.clear();
                    stream.lost = true;
                }
                stream.top = offset;
                stream.entries.push_back(location);
                while stream.entries.len() as u64 > size.max(1) {
                    stream.entries.pop_front();
                }
                stream.publications_expire_ms = written_ms.saturating_add(ttl_ms);
                stream.meta_expire_ms = if meta_ttl_ms == 0 {
                    0
                } else {
                    written_ms.saturating_add(meta_ttl_ms)
                };
                if let Some(key) = idempotency_key {
                    let expires = written_ms.saturating_add(IDEMPOTENCY_TTL.as_millis() as u64);
                    if expires > now_ms {
                        stream.idempotency.push((key, offset, expires));
                    }
                }
            }
            Record::Moved(moved) => {
                if let Some(stream) = self.stream_mut(moved.stream) {
                    let first = stream.first();
                    if (first..=stream.top).contains(&moved.offset) {
                        stream.entries[(moved.offset - first) as usize] = location;
                    }
                }
            }
            Record::RemoveHistory { stream, up_to } => {
                if let Some(stream) = self.stream_mut(stream) {
                    let first = stream.first();
                    let drop = up_to.saturating_add(1).saturating_sub(first);
                    let drop = (drop as usize).min(stream.entries.len());
                    stream.entries.drain(..drop);
                }
            }
            Record::Arm { streams } => self.armed.extend(streams),
            Record::Disarm { streams } => {
                for stream in streams {
                    self.armed.remove(&stream);
                }
            }
        }
    }

    fn stream_mut(&mut self, id: u64) -> Option<&mut StoredStream> {
        self.streams.get_mut(&id)
    }

    /// The current stream of `channel`.
    #[cfg(test)]
    pub(super) fn channel(&self, channel: &str) -> Option<&StoredStream> {
        self.current
            .get(channel)
            .and_then(|id| self.streams.get(id))
    }

    /// Number of streams.
    pub(super) fn len(&self) -> usize {
        self.streams.len()
    }

    /// Applies the deadlines due at `now_ms`.
    fn expire(&mut self, now_ms: u64) {
        let current = &mut self.current;
        self.streams.retain(|_, stream| {
            if stream.meta_expire_ms != 0 && stream.meta_expire_ms <= now_ms {
                current.remove(&stream.channel);
                return false;
            }
            if stream.publications_expire_ms <= now_ms {
                stream.entries.clear();
            }
            stream.idempotency.retain(|(_, _, at)| *at > now_ms);
            true
        });
    }

    /// Adds a stream as its channel's current one (dropping the one it replaces).
    pub(super) fn insert(&mut self, stream: StoredStream) {
        self.next_stream = self.next_stream.max(stream.id + 1);
        if let Some(old) = self.current.insert(stream.channel.clone(), stream.id)
            && old != stream.id
        {
            self.streams.remove(&old);
        }
        self.streams.insert(stream.id, stream);
    }
}

/// Writes a checkpoint of `stored` taken at log position `at` (segment, pos): to a
/// temporary file, synced, renamed over the previous one, directory synced.
pub(super) fn write_checkpoint(dir: &Path, at: (u32, u32), stored: &Stored) -> io::Result<()> {
    let mut out = Vec::with_capacity(64 + stored.streams.len() * 64);
    out.extend_from_slice(MAGIC);
    encode_varint(u64::from(at.0), &mut out);
    encode_varint(u64::from(at.1), &mut out);
    encode_varint(stored.next_stream, &mut out);
    encode_varint(stored.streams.len() as u64, &mut out);
    for stream in stored.streams.values() {
        put_str(&mut out, &stream.channel);
        encode_varint(stream.id, &mut out);
        put_str(&mut out, &stream.epoch);
        encode_varint(stream.top, &mut out);
        encode_varint(stream.publications_expire_ms, &mut out);
        encode_varint(stream.meta_expire_ms, &mut out);
        encode_varint(stream.entries.len() as u64, &mut out);
        for entry in &stream.entries {
            encode_varint(u64::from(entry.segment), &mut out);
            encode_varint(u64::from(entry.pos), &mut out);
            encode_varint(u64::from(entry.len), &mut out);
        }
        encode_varint(stream.idempotency.len() as u64, &mut out);
        for (key, offset, expires) in &stream.idempotency {
            put_str(&mut out, key);
            encode_varint(*offset, &mut out);
            encode_varint(*expires, &mut out);
        }
    }
    encode_varint(stored.armed.len() as u64, &mut out);
    for id in &stored.armed {
        encode_varint(*id, &mut out);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    let temporary = dir.join(CHECKPOINT_TMP);
    let mut file = fs::File::create(&temporary)?;
    file.write_all(&out)?;
    file.sync_all()?;
    fs::rename(&temporary, dir.join(CHECKPOINT))?;
    log::sync_dir(dir)
}

/// The checkpoint and its log position; `None` without one. A damaged checkpoint is
/// ignored (with a warning): the log is then replayed from its start.
pub(super) fn read_checkpoint(dir: &Path) -> io::Result<Option<(Stored, (u32, u32))>> {
    let bytes = match fs::read(dir.join(CHECKPOINT)) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    match parse_checkpoint(&bytes) {
        Some(loaded) => Ok(Some(loaded)),
        None => {
            tracing::warn!("disk engine: the checkpoint is damaged; replaying the whole log");
            Ok(None)
        }
    }
}

fn parse_checkpoint(bytes: &[u8]) -> Option<(Stored, (u32, u32))> {
    let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if crc32fast::hash(body).to_le_bytes() != crc || !body.starts_with(MAGIC) {
        return None;
    }
    let mut buf = &body[MAGIC.len()..];
    let buf = &mut buf;
    let at = (
        u32::try_from(varint(buf)?).ok()?,
        u32::try_from(varint(buf)?).ok()?,
    );
    let mut stored = Stored {
        next_stream: varint(buf)?,
        ..Stored::default()
    };
    let channels = varint(buf)?;
    for _ in 0..channels {
        let channel = string(buf)?;
        let id = varint(buf)?;
        let epoch = string(buf)?;
        let top = varint(buf)?;
        let publications_expire_ms = varint(buf)?;
        let meta_expire_ms = varint(buf)?;
        let count = varint(buf)?;
        if count > buf.len() as u64 {
            return None;
        }
        let mut entries = VecDeque::with_capacity(count as usize);
        for _ in 0..count {
            entries.push_back(Location {
                segment: u32::try_from(varint(buf)?).ok()?,
                pos: u32::try_from(varint(buf)?).ok()?,
                len: u32::try_from(varint(buf)?).ok()?,
            });
        }
        let count = varint(buf)?;
        if count > buf.len() as u64 {
            return None;
        }
        let mut idempotency = Vec::with_capacity(count as usize);
        for _ in 0..count {
            idempotency.push((string(buf)?, varint(buf)?, varint(buf)?));
        }
        stored.insert(StoredStream {
            channel,
            id,
            epoch,
            top,
            entries,
            publications_expire_ms,
            meta_expire_ms,
            idempotency,
            lost: false,
        });
    }
    let armed = varint(buf)?;
    for _ in 0..armed {
        stored.armed.insert(varint(buf)?);
    }
    buf.is_empty().then_some((stored, at))
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    encode_varint(s.len() as u64, out);
    out.extend_from_slice(s.as_bytes());
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    decode_varint(buf).ok()
}

fn string(buf: &mut &[u8]) -> Option<String> {
    let len = usize::try_from(varint(buf)?).ok()?;
    if buf.len() < len {
        return None;
    }
    let s = String::from_utf8(buf[..len].to_vec()).ok()?;
    buf.advance(len);
    Some(s)
}

/// Enough bytes for any segment header (a boot id and a varint).
const HEADER_READ: usize = 512;

const MAGIC: &[u8] = b"tether-disk-checkpoint-1\n";
const CHECKPOINT: &str = "checkpoint";
const CHECKPOINT_TMP: &str = "checkpoint.tmp";
