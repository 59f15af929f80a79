//! The embedded memory engine: per-channel streams (ring buffers with TTL), idempotent
//! publish results and presence, for a single node.
//!
//! Channels live in a sharded map of `Arc<Mutex<Channel>>`. A publish takes the shard lock
//! only long enough to find or create its channel, then works under that channel's own lock:
//! assign the offset, append, trim, emit the event, release. Different channels never contend
//! on anything but a shard lookup, and one channel's publications are delivered in offset
//! order.
//!
//! Nothing runs in the background here. State expires lazily when a channel is touched, and
//! [`MemoryBroker::sweep`], which the server calls every few seconds, reclaims channels whose
//! state has expired entirely. Sweeping never waits on a busy channel.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::channels::{ChannelMap, IDEMPOTENCY_TTL, IdempotencyCache, SHARDS, deadline, new_epoch};
use super::{
    BrokerError, BrokerEvents, ClientInfo, HistoryOptions, HistoryPage, HistoryQuery,
    PresenceStats, Publication, PublicationEvent, PublishOptions, Published, StreamPosition,
};

/// The embedded broker. Cloning is cheap: every clone is a handle to the same state.
#[derive(Clone)]
pub(crate) struct MemoryBroker {
    shared: Arc<Shared>,
}

struct Shared {
    /// Where publications, joins and leaves go; called under the channel lock for streams.
    events: Arc<dyn BrokerEvents>,
    /// Channels that hold a stream or idempotency records. A channel that only ever received
    /// publications without history and without idempotency keys has no entry.
    channels: ChannelMap<Channel>,
    /// Presence per channel: client id -> info. A channel's map is dropped with its last entry.
    presence: Box<[PresenceShard]>,
}

/// One shard of the presence map: channel -> client id -> info.
type PresenceShard = Mutex<HashMap<String, HashMap<String, ClientInfo>>>;

/// Everything the broker keeps about one channel, guarded by the channel's own lock.
#[derive(Default)]
struct Channel {
    /// The stream, absent until history is first used and after its metadata expired.
    stream: Option<Stream>,
    /// Epoch of the stream this channel had before its metadata expired, so that the next
    /// epoch is guaranteed to differ from it.
    retired_epoch: Option<String>,
    /// Results of recent publishes that carried an idempotency key.
    idempotency: IdempotencyCache,
}

/// One incarnation of a channel's stream.
struct Stream {
    /// Random name of this incarnation; changes whenever continuity cannot be proven.
    epoch: String,
    /// Offset of the latest publication; 0 before the first.
    top: u64,
    /// Retained publications, oldest first, with contiguous offsets ending at `top` (or
    /// empty). Never longer than the `size` of the last publish.
    publications: VecDeque<Arc<Publication>>,
    /// When the retained publications vanish; pushed forward by every publish.
    publications_expire_at: Instant,
    /// When the epoch and top offset vanish; `None` keeps them for the life of the process.
    meta_expire_at: Option<Instant>,
}

// === impl MemoryBroker ===

impl MemoryBroker {
    /// Creates an empty broker that reports deliveries to `events`.
    pub(crate) fn new(events: Arc<dyn BrokerEvents>) -> Self {
        let presence = (0..SHARDS).map(|_| Mutex::default()).collect();
        Self {
            shared: Arc::new(Shared {
                events,
                channels: ChannelMap::new(),
                presence,
            }),
        }
    }

    /// Publishes into `channel` and delivers through [`BrokerEvents::on_publication`].
    ///
    /// With history (both `size` and `ttl` non-zero) the publication gets the next offset of
    /// the channel's stream, is retained, and is delivered before the channel's lock is
    /// released, so delivery order equals offset order. Without history it gets offset 0 and
    /// no position. A repeated idempotency key within five minutes publishes nothing and
    /// returns the first result with `from_cache` set.
    pub(crate) fn publish(
        &self,
        channel: &str,
        mut publication: Publication,
        opts: &PublishOptions,
        now: Instant,
    ) -> Result<Published, BrokerError> {
        let history = opts
            .history
            .filter(|history| history.size > 0 && !history.ttl.is_zero());
        if history.is_none() {
            publication.offset = 0;
        }
        let events = &*self.shared.events;

        if history.is_none() && opts.idempotency_key.is_none() {
            let event = PublicationEvent {
                publication: Arc::new(publication),
                position: None,
                previous: None,
            };
            // A channel with state is delivered under its lock, to keep order with the
            // stream's publications; a channel without state needs none and stores none.
            let delivered = self.shared.channels.with_existing(channel, |_| {
                events.on_publication(channel, &event);
            });
            if delivered.is_none() {
                events.on_publication(channel, &event);
            }
            return Ok(Published::default());
        }

        Ok(self.shared.channels.with(channel, |state| {
            if state.expire(now) {
                events.on_insufficient_state(channel);
            }
            if let Some(key) = &opts.idempotency_key
                && let Some(position) = state.idempotency.lookup(key, now)
            {
                return Published {
                    position,
                    from_cache: true,
                };
            }
            let position = match history {
                Some(history) => {
                    let (event, position) = state.append(publication, &history, now);
                    events.on_publication(channel, &event);
                    Some(position)
                }
                None => {
                    let event = PublicationEvent {
                        publication: Arc::new(publication),
                        position: None,
                        previous: None,
                    };
                    events.on_publication(channel, &event);
                    None
                }
            };
            if let Some(key) = &opts.idempotency_key {
                state
                    .idempotency
                    .insert(key.clone(), position.clone(), now + IDEMPOTENCY_TTL);
            }
            Published {
                position,
                from_cache: false,
            }
        }))
    }

    /// Emits a join to [`BrokerEvents::on_join`]. Stores nothing.
    pub(crate) fn publish_join(&self, channel: &str, info: &ClientInfo) {
        self.shared.events.on_join(channel, info);
    }

    /// Emits a leave to [`BrokerEvents::on_leave`]. Stores nothing.
    pub(crate) fn publish_leave(&self, channel: &str, info: &ClientInfo) {
        self.shared.events.on_leave(channel, info);
    }

    /// Reads the channel's stream and its current top, refreshing the metadata's lifetime.
    ///
    /// Creates the stream's epoch (top 0) if the channel has none. Forward reads return
    /// publications after `since.offset` (or all retained) oldest first; reverse reads return
    /// publications before `since.offset` (or from the top) newest first; both stop after
    /// `limit`. A `since` with a non-empty epoch other than the current one is
    /// [`BrokerError::UnrecoverablePosition`].
    pub(crate) fn history(
        &self,
        channel: &str,
        query: &HistoryQuery,
        now: Instant,
    ) -> Result<HistoryPage, BrokerError> {
        self.shared.channels.with(channel, |state| {
            if state.expire(now) {
                self.shared.events.on_insufficient_state(channel);
            }
            let stream = state.stream_mut(now);
            stream.meta_expire_at = deadline(now, query.meta_ttl);
            let top = stream.position();
            if let Some(since) = &query.since
                && !since.epoch.is_empty()
                && since.epoch != stream.epoch
            {
                return Err(BrokerError::UnrecoverablePosition);
            }
            let limit = query.limit.unwrap_or(usize::MAX);
            let retained = &stream.publications;
            let publications = if query.reverse {
                let end = query.since.as_ref().map_or(retained.len(), |since| {
                    retained.partition_point(|publication| publication.offset < since.offset)
                });
                retained.range(..end).rev().take(limit).cloned().collect()
            } else {
                let start = query.since.as_ref().map_or(0, |since| {
                    retained.partition_point(|publication| publication.offset <= since.offset)
                });
                retained.range(start..).take(limit).cloned().collect()
            };
            Ok(HistoryPage { publications, top })
        })
    }

    /// Drops the channel's retained publications but keeps its epoch and top offset, so
    /// positions stay valid and later offsets continue from the same top.
    pub(crate) fn remove_history(&self, channel: &str) {
        self.shared.channels.with_existing(channel, |state| {
            if let Some(stream) = &mut state.stream {
                stream.publications = VecDeque::new();
            }
        });
    }

    /// Records `client_id` as present in `channel` (replacing its previous info).
    pub(crate) fn add_presence(&self, channel: &str, client_id: &str, info: ClientInfo) {
        let mut shard = self.presence_shard(channel).lock();
        if let Some(clients) = shard.get_mut(channel) {
            clients.insert(client_id.to_owned(), info);
        } else {
            shard.insert(
                channel.to_owned(),
                HashMap::from([(client_id.to_owned(), info)]),
            );
        }
    }

    /// Removes `client_id` from `channel`'s presence; the channel's map goes with its last
    /// entry.
    pub(crate) fn remove_presence(&self, channel: &str, client_id: &str) {
        let mut shard = self.presence_shard(channel).lock();
        if let Some(clients) = shard.get_mut(channel) {
            clients.remove(client_id);
            if clients.is_empty() {
                shard.remove(channel);
            }
        }
    }

    /// Who is present in `channel`: client id -> info.
    pub(crate) fn presence(&self, channel: &str) -> HashMap<String, ClientInfo> {
        self.presence_shard(channel)
            .lock()
            .get(channel)
            .cloned()
            .unwrap_or_default()
    }

    /// How many connections and distinct users are present in `channel`.
    pub(crate) fn presence_stats(&self, channel: &str) -> PresenceStats {
        let shard = self.presence_shard(channel).lock();
        let Some(clients) = shard.get(channel) else {
            return PresenceStats::default();
        };
        let users: HashSet<&str> = clients.values().map(|info| info.user.as_str()).collect();
        PresenceStats {
            num_clients: saturating_u32(clients.len()),
            num_users: saturating_u32(users.len()),
        }
    }

    /// Expires state of every channel as of `now` and frees channels left with none.
    ///
    /// Call every few seconds; channels that are locked at that moment are skipped (they are
    /// in use) and looked at on the next sweep.
    pub(crate) fn sweep(&self, now: Instant) {
        self.shared.channels.retain(|name, state| {
            if state.expire(now) {
                self.shared.events.on_insufficient_state(name);
            }
            !state.is_empty()
        });
    }

    fn presence_shard(&self, channel: &str) -> &PresenceShard {
        &self.shared.presence[self.shared.channels.shard_index(channel)]
    }

    /// Number of channels holding stream or idempotency state.
    #[cfg(test)]
    pub(super) fn stored_channels(&self) -> usize {
        self.shared.channels.len()
    }

    /// Number of channels holding presence.
    #[cfg(test)]
    pub(super) fn presence_channels(&self) -> usize {
        self.shared
            .presence
            .iter()
            .map(|shard| shard.lock().len())
            .sum()
    }
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBroker").finish_non_exhaustive()
    }
}

// === impl Channel ===

impl Channel {
    /// Applies every expiry due at `now`. True when the stream's epoch was retired just now:
    /// positioned subscribers of the channel hold a position in an epoch that is gone, and
    /// must be told (a live subscriber would otherwise see the next epoch's offsets as if
    /// they followed its old position).
    fn expire(&mut self, now: Instant) -> bool {
        let mut retired = false;
        if let Some(stream) = &mut self.stream {
            if stream.meta_expire_at.is_some_and(|at| now >= at) {
                self.retired_epoch = self.stream.take().map(|stream| stream.epoch);
                retired = true;
            } else if now >= stream.publications_expire_at && !stream.publications.is_empty() {
                stream.publications = VecDeque::new();
            }
        }
        self.idempotency.prune(now);
        retired
    }

    /// The channel's stream, created with a fresh epoch and top 0 if there is none.
    fn stream_mut(&mut self, now: Instant) -> &mut Stream {
        let retired = self.retired_epoch.as_deref();
        self.stream.get_or_insert_with(|| Stream {
            epoch: new_epoch(retired),
            top: 0,
            publications: VecDeque::new(),
            publications_expire_at: now,
            meta_expire_at: None,
        })
    }

    /// Assigns the next offset, retains the publication and returns the event to deliver.
    fn append(
        &mut self,
        mut publication: Publication,
        history: &HistoryOptions,
        now: Instant,
    ) -> (PublicationEvent, StreamPosition) {
        let stream = self.stream_mut(now);
        stream.top += 1;
        publication.offset = stream.top;
        let publication = Arc::new(publication);
        // Retained offsets are contiguous up to the old top, so the last one is the previous
        // publication; the filter only guards that invariant.
        let previous = if publication.delta {
            stream
                .publications
                .back()
                .filter(|previous| previous.offset + 1 == publication.offset)
                .cloned()
        } else {
            None
        };
        stream.publications.push_back(Arc::clone(&publication));
        while stream.publications.len() > history.size {
            stream.publications.pop_front();
        }
        stream.publications_expire_at = now + history.ttl;
        stream.meta_expire_at = deadline(now, history.meta_ttl);
        let position = stream.position();
        let event = PublicationEvent {
            publication,
            position: Some(position.clone()),
            previous,
        };
        (event, position)
    }

    /// Nothing left worth keeping: the sweeper may free this channel.
    fn is_empty(&self) -> bool {
        self.stream.is_none() && self.idempotency.is_empty()
    }
}

// === impl Stream ===

impl Stream {
    fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.top,
            epoch: self.epoch.clone(),
        }
    }
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
