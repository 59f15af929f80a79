//! The per-channel state map the embedded engines share: a sharded map of channel name to
//! state, each channel behind its own lock; and what both keep per channel (idempotent
//! publish results, epochs).
//!
//! A caller takes a shard lock only long enough to find or create its channel, then works
//! under that channel's own lock. Different channels never contend on anything but a shard
//! lookup. [`ChannelMap::retain`] (the sweep) unlinks channels and marks them removed, so a
//! caller that found one just before must look it up again instead of writing into an orphan.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use rand::Rng;
use tokio::time::Instant;

use super::StreamPosition;

/// Channel name -> state, sharded, each channel behind its own lock.
pub(super) struct ChannelMap<C> {
    /// Picks a shard for a channel name; randomly keyed so names cannot be chosen to collide.
    hasher: RandomState,
    shards: Box<[Shard<C>]>,
}

type Shard<C> = RwLock<HashMap<String, Arc<Mutex<Slot<C>>>>>;

/// One channel's state and whether the sweep unlinked it.
#[derive(Default)]
struct Slot<C> {
    state: C,
    removed: bool,
}

impl<C: Default> ChannelMap<C> {
    pub(super) fn new() -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
        }
    }

    /// The shard `channel` maps to, in `0..SHARDS` (also used for maps kept beside this one).
    pub(super) fn shard_index(&self, channel: &str) -> usize {
        // Truncating the hash is fine: only its low bits pick the shard.
        (self.hasher.hash_one(channel) as usize) & (SHARDS - 1)
    }

    /// Runs `f` under the lock of `channel`, creating the channel if needed. Never holds the
    /// shard lock while `f` runs.
    pub(super) fn with<R>(&self, channel: &str, f: impl FnOnce(&mut C) -> R) -> R {
        let shard = &self.shards[self.shard_index(channel)];
        loop {
            let found = shard.read().get(channel).cloned();
            let entry = found.unwrap_or_else(|| {
                Arc::clone(shard.write().entry(channel.to_owned()).or_default())
            });
            let mut slot = entry.lock();
            if !slot.removed {
                return f(&mut slot.state);
            }
        }
    }

    /// Runs `f` under the lock of `channel` if the channel has state; `None` otherwise.
    pub(super) fn with_existing<R>(&self, channel: &str, f: impl FnOnce(&mut C) -> R) -> Option<R> {
        let shard = &self.shards[self.shard_index(channel)];
        loop {
            let entry = shard.read().get(channel).cloned()?;
            let mut slot = entry.lock();
            if !slot.removed {
                return Some(f(&mut slot.state));
            }
        }
    }

    /// Visits every channel; those for which `keep` returns false are unlinked. Channels
    /// locked at that moment are skipped (they are in use).
    pub(super) fn retain(&self, mut keep: impl FnMut(&str, &mut C) -> bool) {
        for shard in &self.shards {
            shard.write().retain(|name, entry| {
                let Some(mut slot) = entry.try_lock() else {
                    return true;
                };
                if keep(name, &mut slot.state) {
                    true
                } else {
                    slot.removed = true;
                    false
                }
            });
        }
    }

    /// Visits every channel under its lock, waiting for busy ones, holding one shard's read
    /// lock at a time: a consistent view of each channel, not of the whole map.
    pub(super) fn for_each(&self, mut f: impl FnMut(&str, &mut C)) {
        for shard in &self.shards {
            let entries: Vec<(String, Arc<Mutex<Slot<C>>>)> = shard
                .read()
                .iter()
                .map(|(name, entry)| (name.clone(), Arc::clone(entry)))
                .collect();
            for (name, entry) in entries {
                let mut slot = entry.lock();
                if !slot.removed {
                    f(&name, &mut slot.state);
                }
            }
        }
    }

    /// Number of channels with state.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.read().len()).sum()
    }
}

/// Idempotent publish results of one channel, kept for [`IDEMPOTENCY_TTL`].
#[derive(Default)]
pub(super) struct IdempotencyCache {
    /// Key -> (first result's position, when the record expires).
    results: HashMap<String, (Option<StreamPosition>, Instant)>,
    /// Keys in insertion order with their expiry, so pruning pops from the front.
    order: VecDeque<(String, Instant)>,
}

impl IdempotencyCache {
    /// The first result for `key`, if it has not expired.
    pub(super) fn lookup(&self, key: &str, now: Instant) -> Option<Option<StreamPosition>> {
        self.results
            .get(key)
            .filter(|(_, expires_at)| now < *expires_at)
            .map(|(position, _)| position.clone())
    }

    pub(super) fn insert(
        &mut self,
        key: String,
        position: Option<StreamPosition>,
        expires_at: Instant,
    ) {
        self.order.push_back((key.clone(), expires_at));
        self.results.insert(key, (position, expires_at));
    }

    /// Drops expired records. Records expire in insertion order (fixed TTL), so this stops at
    /// the first live one.
    pub(super) fn prune(&mut self, now: Instant) {
        while let Some((key, expires_at)) = self.order.front() {
            if now < *expires_at {
                break;
            }
            // A key re-inserted after expiring has a later record of its own; keep that one.
            if self
                .results
                .get(key)
                .is_some_and(|(_, at)| at == expires_at)
            {
                self.results.remove(key);
            }
            self.order.pop_front();
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.results.is_empty()
    }

    /// Live records: key, the first result's position and when it expires.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&str, &Option<StreamPosition>, Instant)> {
        self.results
            .iter()
            .map(|(key, (position, at))| (key.as_str(), position, *at))
    }
}

/// A fresh epoch: [`EPOCH_LEN`] random ASCII letters, never equal to `retired`.
pub(super) fn new_epoch(retired: Option<&str>) -> String {
    let mut rng = rand::rng();
    loop {
        let epoch: String = (0..EPOCH_LEN)
            .map(|_| char::from(EPOCH_ALPHABET[rng.random_range(0..EPOCH_ALPHABET.len())]))
            .collect();
        if retired != Some(epoch.as_str()) {
            return epoch;
        }
    }
}

/// `now + ttl`, or `None` (never) for a zero TTL.
pub(super) fn deadline(now: Instant, ttl: Duration) -> Option<Instant> {
    (!ttl.is_zero()).then(|| now + ttl)
}

/// Shards of the channel map. A power of two; enough that a shard lookup on a 2–8 core
/// machine rarely meets another, small enough that a sweep visits them cheaply.
pub(super) const SHARDS: usize = 64;
const _: () = assert!(SHARDS.is_power_of_two());

/// How long an idempotent publish result is remembered (Centrifugo: 5 minutes).
pub(super) const IDEMPOTENCY_TTL: Duration = Duration::from_secs(5 * 60);

/// Epoch length and alphabet, as Centrifugo generates them (`internal/epoch`).
const EPOCH_LEN: usize = 8;
const EPOCH_ALPHABET: &[u8; 52] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
