//! Segment files: naming, creation, positioned reads, and the directory's fsync.
//!
//! A segment is `NNNNNNNNNN.log` in the store's directory (ids rise by one), written only by
//! the writer thread and read by anyone through [`Segments`], which keeps each live segment
//! open. Records never span segments. A segment is created at its full size (zero-filled by a
//! background thread when possible, so an append changes no file metadata and `fdatasync` has
//! only data to flush); its unwritten rest reads as zeros, which ends a scan.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, RwLock};

/// Where a record lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Location {
    pub(super) segment: u32,
    pub(super) pos: u32,
    pub(super) len: u32,
}

/// The open segments of a store, for reading (and for the writer's appends).
pub(super) struct Segments {
    dir: PathBuf,
    size: u64,
    files: RwLock<BTreeMap<u32, Arc<File>>>,
    spare: Spare,
}

/// A zero-filled segment-to-be prepared in the background.
struct Spare {
    state: Mutex<SpareState>,
    wake: Condvar,
}

#[derive(Default)]
struct SpareState {
    /// A spare file of the full size is on disk.
    ready: bool,
    /// The writer wants one.
    wanted: bool,
    /// The store is closing.
    stop: bool,
}

impl Segments {
    /// Opens every existing segment of `dir` for reading.
    pub(super) fn open(dir: &Path, size: u64) -> io::Result<Self> {
        let mut files = BTreeMap::new();
        for id in list(dir)? {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path(dir, id))?;
            files.insert(id, Arc::new(file));
        }
        // A spare left by the previous run is complete (it is renamed into place only once
        // written and synced) and still unwritten (taking it renames it away): this run's
        // first segment can be it, if the size still fits.
        let _ = fs::remove_file(dir.join(SPARE_TMP));
        let ready = fs::metadata(dir.join(SPARE)).is_ok_and(|meta| meta.len() == size);
        if !ready {
            let _ = fs::remove_file(dir.join(SPARE));
        }
        Ok(Self {
            dir: dir.to_owned(),
            size,
            files: RwLock::new(files),
            spare: Spare {
                state: Mutex::new(SpareState {
                    ready,
                    ..SpareState::default()
                }),
                wake: Condvar::new(),
            },
        })
    }

    /// Full size of a segment.
    pub(super) fn size(&self) -> u64 {
        self.size
    }

    pub(super) fn file(&self, id: u32) -> Option<Arc<File>> {
        self.files.read().get(&id).cloned()
    }

    /// The bytes of a record.
    pub(super) fn read(&self, at: Location) -> io::Result<Vec<u8>> {
        let file = self.file(at.segment).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("segment {} is gone", at.segment),
            )
        })?;
        let mut buf = vec![0; at.len as usize];
        file.read_exact_at(&mut buf, u64::from(at.pos))?;
        Ok(buf)
    }

    /// A zero-filled spare is ready to be taken.
    pub(super) fn spare_ready(&self) -> bool {
        self.spare.state.lock().ready
    }

    /// Creates segment `id` at full size, from the prepared spare when there is one (then
    /// `true`: zero-filled), and makes its name durable.
    pub(super) fn create(&self, id: u32) -> io::Result<(Arc<File>, bool)> {
        let target = path(&self.dir, id);
        let took_spare = {
            let mut state = self.spare.state.lock();
            let ready = std::mem::take(&mut state.ready);
            state.wanted = true;
            self.spare.wake.notify_all();
            ready && fs::rename(self.dir.join(SPARE), &target).is_ok()
        };
        let created = (|| {
            if !took_spare {
                let file = File::create(&target)?;
                // Sparse: the spare thread could not keep up (or failed); appends then grow
                // allocated blocks as they go.
                file.set_len(self.size)?;
                file.sync_all()?;
            }
            sync_dir(&self.dir)?;
            OpenOptions::new().read(true).write(true).open(&target)
        })();
        match created {
            Ok(file) => {
                let file = Arc::new(file);
                self.files.write().insert(id, Arc::clone(&file));
                Ok((file, took_spare))
            }
            Err(error) => {
                self.discard(id);
                Err(error)
            }
        }
    }

    /// Forgets and deletes segment `id`, created but unusable (a failed creation or header
    /// write), so a disk that stays full does not collect empty segments and open files.
    pub(super) fn discard(&self, id: u32) {
        self.files.write().remove(&id);
        let _ = fs::remove_file(path(&self.dir, id));
        let _ = sync_dir(&self.dir);
    }

    /// Deletes the segments older than `id`; returns how many.
    pub(super) fn delete_before(&self, id: u32) -> io::Result<usize> {
        let old: Vec<u32> = self.files.read().range(..id).map(|(id, _)| *id).collect();
        for segment in &old {
            self.files.write().remove(segment);
            fs::remove_file(path(&self.dir, *segment))?;
        }
        if !old.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(old.len())
    }

    /// Bytes the segments take on disk (their allocated blocks).
    pub(super) fn disk_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        self.files
            .read()
            .values()
            .filter_map(|file| file.metadata().ok())
            .map(|meta| meta.blocks() * 512)
            .sum()
    }

    /// Prepares zero-filled spare segments whenever the writer took the last one, until
    /// [`Segments::stop_spare`]. Runs on its own thread.
    pub(super) fn run_spare(&self) {
        loop {
            {
                let mut state = self.spare.state.lock();
                while !state.stop && (state.ready || !state.wanted) {
                    self.spare.wake.wait(&mut state);
                }
                if state.stop {
                    return;
                }
                state.wanted = false;
            }
            let result = zero_filled(&self.dir.join(SPARE_TMP), self.size)
                .and_then(|()| fs::rename(self.dir.join(SPARE_TMP), self.dir.join(SPARE)));
            let mut state = self.spare.state.lock();
            match result {
                Ok(()) => state.ready = true,
                Err(error) => {
                    tracing::warn!(%error, "disk engine: could not prepare the next segment");
                    let _ = fs::remove_file(self.dir.join(SPARE_TMP));
                }
            }
        }
    }

    pub(super) fn stop_spare(&self) {
        self.spare.state.lock().stop = true;
        self.spare.wake.notify_all();
    }
}

/// The segment ids in `dir`, oldest first.
pub(super) fn list(dir: &Path) -> io::Result<Vec<u32>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = name
            .strip_suffix(".log")
            .and_then(|stem| stem.parse::<u32>().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

pub(super) fn path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:010}.log"))
}

/// Makes the directory's entries (creations, renames, removals) durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes a file of `size` zero bytes and syncs it.
fn zero_filled(path: &Path, size: u64) -> io::Result<()> {
    let mut file = File::create(path)?;
    let chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    file.sync_all()
}

const SPARE: &str = "next.spare";
const SPARE_TMP: &str = "next.spare.tmp";
