//! Storage comparison for tether's `disk` engine (issue 19).
//!
//! Three stores behind one small `Backend` trait, driven by the same writer thread (group commit)
//! and the same publishers: fjall (LSM), redb (B-tree) and a minimal segmented append-only log.
//! See `docs/disk-store.md` for the workload, the command and the results. Measurement code, not
//! production code: no retention, no epochs beyond a constant, channel names are already ids.

// The std locks are what was measured; the workspace's clippy.toml (found from here) asks for
// parking_lot in tether itself.
#![allow(clippy::disallowed_types)]

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const PAYLOAD: usize = 100;
const SYNC_INTERVAL: Duration = Duration::from_millis(100);
const MAX_BATCH: usize = 4096;
const EPOCH: u64 = 0x7e7e_7e7e;

/// One publication handed to a backend, its offset already assigned.
struct Rec {
    ch: u32,
    off: u64,
    payload: Vec<u8>,
}

trait Backend: Send + Sync {
    /// What a clean shutdown does beyond a sync (fjall: flush memtables to tables).
    fn shutdown(&self) -> Result<()> {
        Ok(())
    }
    /// Writes the records and the new top offset of each touched channel; durable on return if
    /// `sync` (and everything written before it too).
    fn write(&self, recs: &[Rec], tops: &[(u32, u64)], sync: bool) -> Result<()>;
    /// Reads the last `n` publications of `ch` (newest first); returns (count, first offset seen).
    fn read_last(&self, ch: u32, n: usize) -> Result<(usize, u64)>;
    /// Top offset per channel as known after open (index 0..channels).
    fn positions(&self, channels: u32) -> Result<Vec<u64>>;
}

// ---------------------------------------------------------------------------------------------
// fjall: one keyspace for publications (key = channel BE ++ offset BE), one for positions.

struct FjallStore {
    db: fjall::Database,
    pubs: fjall::Keyspace,
    meta: fjall::Keyspace,
}

fn pub_key(ch: u32, off: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&ch.to_be_bytes());
    k[4..].copy_from_slice(&off.to_be_bytes());
    k
}

fn meta_val(top: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&top.to_be_bytes());
    v[8..].copy_from_slice(&EPOCH.to_be_bytes());
    v
}

impl FjallStore {
    fn open(dir: &Path) -> Result<Self> {
        // manual_journal_persist: we decide when the journal is flushed/synced (per batch).
        let db = fjall::Database::builder(dir)
            .manual_journal_persist(true)
            .open()?;
        let pubs = db.keyspace("pubs", fjall::KeyspaceCreateOptions::default)?;
        let meta = db.keyspace("meta", fjall::KeyspaceCreateOptions::default)?;
        Ok(Self { db, pubs, meta })
    }
}

impl Backend for FjallStore {
    fn shutdown(&self) -> Result<()> {
        self.db.persist(fjall::PersistMode::SyncAll)?;
        self.pubs.rotate_memtable_and_wait()?;
        self.meta.rotate_memtable_and_wait()?;
        Ok(())
    }

    fn write(&self, recs: &[Rec], tops: &[(u32, u64)], sync: bool) -> Result<()> {
        if recs.is_empty() {
            if sync {
                self.db.persist(fjall::PersistMode::SyncData)?;
            }
            return Ok(());
        }
        let mode = if sync {
            fjall::PersistMode::SyncData
        } else {
            fjall::PersistMode::Buffer
        };
        let mut b = self.db.batch().durability(Some(mode));
        for r in recs {
            b.insert(&self.pubs, pub_key(r.ch, r.off), r.payload.as_slice());
        }
        for &(ch, top) in tops {
            b.insert(&self.meta, ch.to_be_bytes(), meta_val(top));
        }
        b.commit()?;
        Ok(())
    }

    fn read_last(&self, ch: u32, n: usize) -> Result<(usize, u64)> {
        let mut count = 0;
        let mut last = 0;
        for g in self.pubs.prefix(ch.to_be_bytes()).rev().take(n) {
            let (k, v) = g.into_inner()?;
            anyhow::ensure!(v.len() == PAYLOAD, "bad payload");
            last = u64::from_be_bytes(k[4..12].try_into()?);
            count += 1;
        }
        Ok((count, last))
    }

    fn positions(&self, channels: u32) -> Result<Vec<u64>> {
        let mut tops = vec![0u64; channels as usize];
        for g in self.meta.iter() {
            let (k, v) = g.into_inner()?;
            let ch = u32::from_be_bytes(k[..4].try_into()?);
            tops[ch as usize] = u64::from_be_bytes(v[..8].try_into()?);
        }
        Ok(tops)
    }
}

// ---------------------------------------------------------------------------------------------
// redb: one table (channel, offset) -> payload, one table channel -> (top, epoch).

const REDB_PUBS: redb::TableDefinition<'_, (u32, u64), &[u8]> = redb::TableDefinition::new("pubs");
const REDB_META: redb::TableDefinition<'_, u32, (u64, u64)> = redb::TableDefinition::new("meta");

struct RedbStore {
    db: redb::Database,
}

impl RedbStore {
    fn open(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir)?;
        let db = redb::Database::create(dir.join("store.redb"))?;
        Ok(Self { db })
    }
}

impl Backend for RedbStore {
    fn write(&self, recs: &[Rec], tops: &[(u32, u64)], sync: bool) -> Result<()> {
        use redb::Durability;
        let mut tx = self.db.begin_write()?;
        tx.set_durability(if sync {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        {
            let mut pubs = tx.open_table(REDB_PUBS)?;
            for r in recs {
                pubs.insert((r.ch, r.off), r.payload.as_slice())?;
            }
            let mut meta = tx.open_table(REDB_META)?;
            for &(ch, top) in tops {
                meta.insert(ch, (top, EPOCH))?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn read_last(&self, ch: u32, n: usize) -> Result<(usize, u64)> {
        use redb::{ReadableDatabase, ReadableTable};
        let tx = self.db.begin_read()?;
        let t = tx.open_table(REDB_PUBS)?;
        let mut count = 0;
        let mut last = 0;
        for e in t.range((ch, 0)..=(ch, u64::MAX))?.rev().take(n) {
            let (k, v) = e?;
            anyhow::ensure!(v.value().len() == PAYLOAD, "bad payload");
            last = k.value().1;
            count += 1;
        }
        Ok((count, last))
    }

    fn positions(&self, channels: u32) -> Result<Vec<u64>> {
        use redb::{ReadableDatabase, ReadableTable};
        let mut tops = vec![0u64; channels as usize];
        let tx = self.db.begin_read()?;
        let t = match tx.open_table(REDB_META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(tops),
            Err(e) => return Err(e.into()),
        };
        for e in t.iter()? {
            let (k, v) = e?;
            tops[k.value() as usize] = v.value().0;
        }
        Ok(tops)
    }
}

// ---------------------------------------------------------------------------------------------
// A minimal segmented append-only log: all channels in one sequence of segment files, records
// `[len u32][crc32 u32][channel u32][offset u64][payload]`, one write + one fdatasync per batch,
// an in-memory index (per channel: positions of its records). Recovery scans the segments,
// checks every CRC and cuts a torn tail.

const LOG_HDR: usize = 20;
const SEGMENT_BYTES: u64 = 64 << 20;

struct LogWriter {
    seg_no: u16,
    file: File,
    len: u64,
}

struct LogStore {
    dir: PathBuf,
    /// Zero-fill each segment at creation, so appends never change the file size.
    prealloc: bool,
    w: Mutex<LogWriter>,
    /// Read handles per segment number.
    segs: RwLock<Vec<File>>,
    /// Per channel: packed (segment u16, position u32, record length u16) of each record.
    index: RwLock<Vec<Vec<u64>>>,
}

fn seg_path(dir: &Path, n: u16) -> PathBuf {
    dir.join(format!("{n:05}.log"))
}

fn pack(seg: u16, pos: u64, len: usize) -> u64 {
    (u64::from(seg) << 48) | (pos << 16) | len as u64
}

fn unpack(p: u64) -> (u16, u64, usize) {
    (
        (p >> 48) as u16,
        (p >> 16) & 0xffff_ffff,
        (p & 0xffff) as usize,
    )
}

fn rec_crc(ch: u32, off: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&ch.to_le_bytes());
    h.update(&off.to_le_bytes());
    h.update(payload);
    h.finalize()
}

impl LogStore {
    fn open(dir: &Path, channels: u32, prealloc: bool) -> Result<Self> {
        fs::create_dir_all(dir)?;
        let mut nums: Vec<u16> = fs::read_dir(dir)?
            .filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_suffix(".log")?
                    .parse()
                    .ok()
            })
            .collect();
        nums.sort_unstable();
        let mut index: Vec<Vec<u64>> = vec![Vec::new(); channels as usize];
        let mut segs = Vec::new();
        let mut buf = Vec::new();
        let mut end = 0u64;
        for (i, &n) in nums.iter().enumerate() {
            anyhow::ensure!(usize::from(n) == i, "segment gap at {n}");
            let path = seg_path(dir, n);
            let mut f = OpenOptions::new().read(true).write(true).open(&path)?;
            buf.clear();
            f.read_to_end(&mut buf)?;
            let mut pos = 0usize;
            while pos + LOG_HDR <= buf.len() {
                let len = u32::from_le_bytes(buf[pos..pos + 4].try_into()?) as usize;
                let crc = u32::from_le_bytes(buf[pos + 4..pos + 8].try_into()?);
                let ch = u32::from_le_bytes(buf[pos + 8..pos + 12].try_into()?);
                let off = u64::from_le_bytes(buf[pos + 12..pos + 20].try_into()?);
                if len == 0 && crc == 0 {
                    break; // zero-filled (preallocated) space: the end of the data
                }
                let end = pos + LOG_HDR + len;
                if end > buf.len()
                    || ch >= channels
                    || rec_crc(ch, off, &buf[pos + LOG_HDR..end]) != crc
                {
                    break;
                }
                index[ch as usize].push(pack(n, pos as u64, LOG_HDR + len));
                pos = end;
            }
            end = pos as u64;
            let zero_tail = buf[pos..].iter().all(|&b| b == 0);
            if !zero_tail {
                eprintln!("log: segment {n}: torn tail at {pos} of {}, cut", buf.len());
                f.set_len(pos as u64)?;
                f.sync_all()?;
            }
            segs.push(f);
        }
        if segs.is_empty() {
            segs.push(Self::create_segment(dir, 0, prealloc)?);
        }
        let last = segs.len() - 1;
        let file = segs[last].try_clone()?;
        let len = end;
        Ok(Self {
            dir: dir.to_owned(),
            prealloc,
            w: Mutex::new(LogWriter {
                seg_no: last as u16,
                file,
                len,
            }),
            segs: RwLock::new(segs),
            index: RwLock::new(index),
        })
    }

    fn create_segment(dir: &Path, n: u16, prealloc: bool) -> Result<File> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(seg_path(dir, n))?;
        if prealloc {
            // Real zeros, not fallocate: unwritten extents would still need a metadata commit
            // on first write. A real engine would prepare the next segment in the background.
            let zeros = vec![0u8; 1 << 20];
            for i in 0..SEGMENT_BYTES >> 20 {
                f.write_all_at(&zeros, i << 20)?;
            }
            f.sync_all()?;
        }
        File::open(dir)?.sync_all()?; // the new directory entry
        Ok(f)
    }
}

impl Backend for LogStore {
    fn write(&self, recs: &[Rec], _tops: &[(u32, u64)], sync: bool) -> Result<()> {
        let mut w = self.w.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let mut buf = Vec::with_capacity(recs.len() * (LOG_HDR + PAYLOAD));
        let mut locs = Vec::with_capacity(recs.len());
        let need: u64 = recs
            .iter()
            .map(|r| (LOG_HDR + r.payload.len()) as u64)
            .sum();
        if w.len + need > SEGMENT_BYTES && w.len > 0 {
            w.file.sync_data()?;
            let n = w.seg_no + 1;
            let f = Self::create_segment(&self.dir, n, self.prealloc)?;
            self.segs
                .write()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .push(f.try_clone()?);
            *w = LogWriter {
                seg_no: n,
                file: f,
                len: 0,
            };
        }
        for r in recs {
            let at = w.len + buf.len() as u64;
            buf.extend_from_slice(&(r.payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&rec_crc(r.ch, r.off, &r.payload).to_le_bytes());
            buf.extend_from_slice(&r.ch.to_le_bytes());
            buf.extend_from_slice(&r.off.to_le_bytes());
            buf.extend_from_slice(&r.payload);
            locs.push((r.ch, pack(w.seg_no, at, LOG_HDR + r.payload.len())));
        }
        if !buf.is_empty() {
            let at = w.len;
            w.file.write_all_at(&buf, at)?;
            w.len += buf.len() as u64;
        }
        if sync {
            w.file.sync_data()?;
        }
        drop(w);
        let mut idx = self
            .index
            .write()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        for (ch, p) in locs {
            idx[ch as usize].push(p);
        }
        Ok(())
    }

    fn read_last(&self, ch: u32, n: usize) -> Result<(usize, u64)> {
        let locs: Vec<u64> = {
            let idx = self.index.read().map_err(|_| anyhow::anyhow!("poisoned"))?;
            let v = &idx[ch as usize];
            v[v.len().saturating_sub(n)..].to_vec()
        };
        let segs = self.segs.read().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let mut buf = [0u8; 4096];
        let mut last = 0;
        for &p in locs.iter().rev() {
            let (seg, pos, len) = unpack(p);
            let b = &mut buf[..len];
            segs[usize::from(seg)].read_exact_at(b, pos)?;
            let off = u64::from_le_bytes(b[12..20].try_into()?);
            let crc = u32::from_le_bytes(b[4..8].try_into()?);
            anyhow::ensure!(rec_crc(ch, off, &b[LOG_HDR..]) == crc, "bad record");
            last = off;
        }
        Ok((locs.len(), last))
    }

    fn positions(&self, channels: u32) -> Result<Vec<u64>> {
        let idx = self.index.read().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let segs = self.segs.read().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let mut tops = vec![0u64; channels as usize];
        for (ch, v) in idx.iter().enumerate() {
            if let Some(&p) = v.last() {
                let (seg, pos, _) = unpack(p);
                let mut h = [0u8; LOG_HDR];
                segs[usize::from(seg)].read_exact_at(&mut h, pos)?;
                tops[ch] = u64::from_le_bytes(h[12..20].try_into()?);
            }
        }
        Ok(tops)
    }
}

fn open_store(kind: &str, dir: &Path, channels: u32) -> Result<Arc<dyn Backend>> {
    Ok(match kind {
        "fjall" => Arc::new(FjallStore::open(dir)?),
        "redb" => Arc::new(RedbStore::open(dir)?),
        "log" => Arc::new(LogStore::open(dir, channels, false)?),
        "log-pre" => Arc::new(LogStore::open(dir, channels, true)?),
        _ => bail!("unknown store {kind}"),
    })
}

// ---------------------------------------------------------------------------------------------
// The writer thread: group commit for every store.

struct Req {
    ch: u32,
    payload: Vec<u8>,
    ack: tokio::sync::oneshot::Sender<u64>,
}

#[derive(Default, Debug)]
struct WriterStats {
    batches: u64,
    syncs: u64,
}

fn writer_loop(
    store: &dyn Backend,
    rx: &mpsc::Receiver<Req>,
    always: bool,
    mut tops: Vec<u64>,
) -> Result<WriterStats> {
    let mut st = WriterStats::default();
    let mut last_sync = Instant::now();
    let mut dirty = false;
    let mut batch: Vec<Req> = Vec::with_capacity(MAX_BATCH);
    let mut touched: HashMap<u32, u64> = HashMap::new();
    loop {
        let first = if always || !dirty {
            match rx.recv() {
                Ok(r) => r,
                Err(_) => break,
            }
        } else {
            let left = SYNC_INTERVAL.saturating_sub(last_sync.elapsed());
            match rx.recv_timeout(left) {
                Ok(r) => r,
                Err(RecvTimeoutError::Timeout) => {
                    store.write(&[], &[], true)?;
                    st.syncs += 1;
                    last_sync = Instant::now();
                    dirty = false;
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        touched.clear();
        let mut recs = Vec::with_capacity(batch.len());
        let mut acks = Vec::with_capacity(batch.len());
        for r in batch.drain(..) {
            let top = &mut tops[r.ch as usize];
            *top += 1;
            touched.insert(r.ch, *top);
            recs.push(Rec {
                ch: r.ch,
                off: *top,
                payload: r.payload,
            });
            acks.push((r.ack, *top));
        }
        let metas: Vec<(u32, u64)> = touched.iter().map(|(&c, &t)| (c, t)).collect();
        let sync = always || last_sync.elapsed() >= SYNC_INTERVAL;
        store.write(&recs, &metas, sync)?;
        st.batches += 1;
        if sync {
            st.syncs += 1;
            last_sync = Instant::now();
            dirty = false;
        } else {
            dirty = true;
        }
        for (a, off) in acks {
            let _ = a.send(off);
        }
    }
    if dirty {
        store.write(&[], &[], true)?;
        st.syncs += 1;
    }
    Ok(st)
}

// ---------------------------------------------------------------------------------------------
// Helpers.

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn payload_pool(n: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    (0..n)
        .map(|_| (0..PAYLOAD).map(|_| rng.next() as u8).collect())
        .collect()
}

fn rss_kib() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Writes back and evicts the store's files from the page cache (this store only, not a global
/// cache drop), so the next open reads from the device. The device (virtio) may still cache.
fn evict(p: &Path) {
    if let Ok(rd) = fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                evict(&path);
            } else if let Ok(f) = File::open(&path) {
                use std::os::fd::AsRawFd;
                let _ = f.sync_all();
                // SAFETY: plain syscall on an open descriptor.
                unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            }
        }
    }
}

fn dir_bytes(p: &Path) -> (u64, u64) {
    let mut len = 0;
    let mut alloc = 0;
    if let Ok(rd) = fs::read_dir(p) {
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                let (l, a) = dir_bytes(&e.path());
                len += l;
                alloc += a;
            } else {
                len += m.len();
                alloc += m.blocks() * 512;
            }
        }
    }
    (len, alloc)
}

struct Args(HashMap<String, String>);
impl Args {
    fn parse() -> (String, Self) {
        let mut it = std::env::args().skip(1);
        let cmd = it.next().unwrap_or_default();
        let mut m = HashMap::new();
        while let Some(k) = it.next() {
            if let Some(k) = k.strip_prefix("--") {
                m.insert(k.to_owned(), it.next().unwrap_or_default());
            }
        }
        (cmd, Self(m))
    }
    fn s(&self, k: &str, d: &str) -> String {
        self.0.get(k).cloned().unwrap_or_else(|| d.to_owned())
    }
    fn n(&self, k: &str, d: u64) -> u64 {
        self.0.get(k).and_then(|v| v.parse().ok()).unwrap_or(d)
    }
}

// ---------------------------------------------------------------------------------------------
// Commands.

/// Publishers for `secs` seconds (or `max` publications), a fresh store; prints pubs/s.
fn cmd_throughput(a: &Args) -> Result<()> {
    let kind = a.s("store", "log");
    let dir = PathBuf::from(a.s("dir", "data/tp"));
    let always = a.s("mode", "always") == "always";
    let pubs = a.n("pubs", 64) as usize;
    let secs = a.n("secs", 3);
    let max = a.n("max", 2_000_000);
    let channels = a.n("channels", 10_000) as u32;
    let _ = fs::remove_dir_all(&dir);
    let store = open_store(&kind, &dir, channels)?;
    let tops = store.positions(channels)?;
    let (tx, rx) = mpsc::channel::<Req>();
    let s2 = store.clone();
    let writer = std::thread::spawn(move || writer_loop(&*s2, &rx, always, tops));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let issued = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let pool = Arc::new(payload_pool(1024));
    let lat = Arc::new(Mutex::new(hdrhistogram::Histogram::<u64>::new(3)?));
    let t0 = Instant::now();
    rt.block_on(async {
        let mut hs = Vec::new();
        for p in 0..pubs {
            let (tx, stop, issued, done, pool, lat) = (
                tx.clone(),
                stop.clone(),
                issued.clone(),
                done.clone(),
                pool.clone(),
                lat.clone(),
            );
            hs.push(tokio::spawn(async move {
                let mut rng = Rng(0x1234_5678 + p as u64 * 7919);
                let mut h = hdrhistogram::Histogram::<u64>::new(3).expect("hist");
                while !stop.load(Ordering::Relaxed) && issued.fetch_add(1, Ordering::Relaxed) < max
                {
                    let r = rng.next();
                    let ch = (r % u64::from(channels)) as u32;
                    let payload = pool[(r >> 32) as usize % pool.len()].clone();
                    let (ack, wait) = tokio::sync::oneshot::channel();
                    let t = Instant::now();
                    if tx.send(Req { ch, payload, ack }).is_err() {
                        break;
                    }
                    if wait.await.is_err() {
                        break;
                    }
                    let _ = h.record(t.elapsed().as_micros() as u64);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                if let Ok(mut l) = lat.lock() {
                    let _ = l.add(&h);
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(secs)).await;
        stop.store(true, Ordering::Relaxed);
        for h in hs {
            let _ = h.await;
        }
    });
    let elapsed = t0.elapsed().as_secs_f64();
    drop(tx);
    let st = writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    let n = done.load(Ordering::Relaxed);
    let l = lat.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    println!(
        "RESULT throughput store={kind} mode={} pubs={pubs} n={n} secs={elapsed:.2} rate={:.0} \
         batches={} syncs={} ack_p50_us={} ack_p99_us={}",
        if always { "always" } else { "interval" },
        n as f64 / elapsed,
        st.batches,
        st.syncs,
        l.value_at_quantile(0.5),
        l.value_at_quantile(0.99),
    );
    drop(store);
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

/// Fills a fresh store with `count` publications round-robin over `channels`, in batches of
/// 1,000 with a sync every 100 batches and at the end; then exits cleanly or "crashes"
/// (process exit without closing the store).
fn cmd_fill(a: &Args) -> Result<()> {
    let kind = a.s("store", "log");
    let dir = PathBuf::from(a.s("dir", "data/fill"));
    let count = a.n("count", 1_000_000);
    let channels = a.n("channels", 10_000) as u32;
    let crash = a.s("exit", "clean") == "crash";
    let _ = fs::remove_dir_all(&dir);
    let store = open_store(&kind, &dir, channels)?;
    let pool = payload_pool(1024);
    let mut tops = vec![0u64; channels as usize];
    let t0 = Instant::now();
    let mut i = 0u64;
    let mut batches = 0u64;
    while i < count {
        let n = (count - i).min(1000);
        let mut recs = Vec::with_capacity(n as usize);
        let mut metas = HashMap::new();
        for j in 0..n {
            let ch = ((i + j) % u64::from(channels)) as u32;
            tops[ch as usize] += 1;
            metas.insert(ch, tops[ch as usize]);
            recs.push(Rec {
                ch,
                off: tops[ch as usize],
                payload: pool[((i + j) % 1024) as usize].clone(),
            });
        }
        let metas: Vec<_> = metas.into_iter().collect();
        i += n;
        batches += 1;
        store.write(&recs, &metas, i >= count || batches.is_multiple_of(100))?;
    }
    println!(
        "RESULT fill store={kind} count={count} secs={:.2} exit={}",
        t0.elapsed().as_secs_f64(),
        if crash { "crash" } else { "clean" }
    );
    if crash {
        std::process::exit(0);
    }
    store.shutdown()?;
    drop(store);
    Ok(())
}

/// Opens a filled store in this fresh process: open + positions time, RSS, disk bytes, reads.
fn cmd_open(a: &Args) -> Result<()> {
    let kind = a.s("store", "log");
    let dir = PathBuf::from(a.s("dir", "data/fill"));
    let channels = a.n("channels", 10_000) as u32;
    let count = a.n("count", 1_000_000);
    let reads = a.n("reads", 10_000);
    let cold = a.s("cold", "no") == "yes";
    if cold {
        evict(&dir);
    }
    let rss0 = rss_kib();
    let t0 = Instant::now();
    let store = open_store(&kind, &dir, channels)?;
    let tops = store.positions(channels)?;
    let open_ms = t0.elapsed().as_secs_f64() * 1e3;
    let rss1 = rss_kib();
    let total: u64 = tops.iter().sum();
    if total != count {
        bail!("positions sum {total} != {count}");
    }
    let mut h = hdrhistogram::Histogram::<u64>::new(3)?;
    let mut rng = Rng(42);
    for _ in 0..reads {
        let ch = (rng.next() % u64::from(channels)) as u32;
        let t = Instant::now();
        let (n, last) = store.read_last(ch, 100)?;
        h.record(t.elapsed().as_micros() as u64)?;
        let top = tops[ch as usize];
        if n as u64 != top.min(100) || (n > 0 && last != top - n as u64 + 1) {
            bail!("read of channel {ch}: {n} records down to {last}, top {top}");
        }
    }
    let rss2 = rss_kib();
    drop(store);
    let (len, alloc) = dir_bytes(&dir);
    println!(
        "RESULT open store={kind} cold={cold} open_ms={open_ms:.0} rss_before_kib={rss0} rss_open_kib={rss1} \
         rss_after_reads_kib={rss2} read_p50_us={} read_p99_us={} disk_len={len} disk_alloc={alloc} \
         over_len_per_pub={:.1} over_alloc_per_pub={:.1}",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        len as f64 / count as f64 - PAYLOAD as f64,
        alloc as f64 / count as f64 - PAYLOAD as f64,
    );
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

fn run_self(args: &[String]) -> Result<String> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe).args(args).output()?;
    let so = String::from_utf8_lossy(&out.stdout).into_owned();
    let se = String::from_utf8_lossy(&out.stderr);
    if !se.trim().is_empty() {
        eprint!("{se}");
    }
    if !out.status.success() {
        bail!("{args:?} failed: {se}");
    }
    let line = so
        .lines()
        .find(|l| l.starts_with("RESULT"))
        .context("no RESULT")?
        .to_owned();
    println!("{line}");
    Ok(line)
}

/// The whole matrix, each case in a fresh process; prints the raw lines and markdown tables.
fn cmd_all(a: &Args) -> Result<()> {
    let dir = a.s("dir", "data");
    let reps = a.n("reps", 3);
    let secs = a.n("secs", 3).to_string();
    let stores: Vec<String> = a
        .s("stores", "fjall,redb,log,log-pre")
        .split(',')
        .map(str::to_owned)
        .collect();
    let s = |x: &str| x.to_owned();
    // Repetitions outermost and stores interleaved inside each: the shared disk drifts over
    // minutes, so consecutive repetitions of one store would measure the drift.
    type Samples = (Vec<f64>, Vec<f64>);
    let mut res: HashMap<(usize, usize, u64), Samples> = HashMap::new();
    for _ in 0..reps {
        for (mi, mode) in ["always", "interval"].iter().enumerate() {
            for pubs in [1u64, 16, 64] {
                for (si, st) in stores.iter().enumerate() {
                    let l = run_self(&[
                        s("throughput"),
                        s("--store"),
                        st.clone(),
                        s("--mode"),
                        s(mode),
                        s("--pubs"),
                        pubs.to_string(),
                        s("--secs"),
                        secs.clone(),
                        s("--dir"),
                        format!("{dir}/tp-{st}"),
                    ])?;
                    let e = res.entry((mi, si, pubs)).or_default();
                    e.0.push(field(&l, "rate").unwrap_or(0.0));
                    e.1.push(field(&l, "ack_p99_us").unwrap_or(0.0));
                }
            }
        }
    }
    let mut tp = Vec::new();
    for (mi, mode) in ["always", "interval"].iter().enumerate() {
        for (si, st) in stores.iter().enumerate() {
            for pubs in [1u64, 16, 64] {
                let Some((rates, p99)) = res.get_mut(&(mi, si, pubs)) else {
                    continue;
                };
                let all = rates
                    .iter()
                    .map(|r| format!("{r:.0}"))
                    .collect::<Vec<_>>()
                    .join(" / ");
                tp.push(format!(
                    "| {st} | {mode} | {pubs} | {:.0} | {all} | {:.0} |",
                    median(rates),
                    median(p99)
                ));
            }
        }
    }
    let mut op = Vec::new();
    for st in &stores {
        for exit in ["clean", "crash"] {
            let d = format!("{dir}/fill-{st}");
            // Each open recovers and closes the store, so every open gets its own fresh fill.
            let fill = || {
                run_self(&[
                    s("fill"),
                    s("--store"),
                    st.clone(),
                    s("--dir"),
                    d.clone(),
                    s("--exit"),
                    s(exit),
                ])
            };
            let f = fill()?;
            let c = run_self(&[
                s("open"),
                s("--store"),
                st.clone(),
                s("--dir"),
                d.clone(),
                s("--cold"),
                s("yes"),
            ])?;
            fill()?;
            let o = run_self(&[s("open"), s("--store"), st.clone(), s("--dir"), d.clone()])?;
            let g = |k| field(&o, k).unwrap_or(-1.0);
            op.push(format!(
                "| {st} | {exit} | {:.1} | {:.0} | {:.0} | {:.0} / {:.0} | {:.0} | {:.0} | {:.1} | {:.1} |",
                field(&f, "secs").unwrap_or(-1.0),
                field(&c, "open_ms").unwrap_or(-1.0),
                g("open_ms"),
                g("rss_open_kib") / 1024.0,
                g("rss_after_reads_kib") / 1024.0,
                g("read_p50_us"),
                g("read_p99_us"),
                g("over_len_per_pub"),
                g("over_alloc_per_pub"),
            ));
            let _ = fs::remove_dir_all(&d);
        }
    }
    println!("\n| store | fsync | publishers | median pubs/s | runs | ack p99 µs (median) |");
    println!("|---|---|---:|---:|---|---:|");
    for l in tp {
        println!("{l}");
    }
    println!(
        "\n| store | exit before open | fill s | open+positions ms, evicted | warm | RSS MiB after open / after reads | \
         read last 100 p50 µs | p99 µs | bytes/pub over payload (file len) | (allocated) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for l in op {
        println!("{l}");
    }
    Ok(())
}

fn main() -> Result<()> {
    let (cmd, a) = Args::parse();
    match cmd.as_str() {
        "throughput" => cmd_throughput(&a),
        "fill" => cmd_fill(&a),
        "open" => cmd_open(&a),
        "all" => cmd_all(&a),
        _ => bail!("usage: store-bench all|throughput|fill|open [--store fjall|redb|log] ..."),
    }
}
