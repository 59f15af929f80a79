//! Channel hub: who is connected, who is subscribed to what, and fan-out of publications.
//!
//! Drivers register a [`Conn`] handle, which holds the socket; everybody else reaches a
//! connection only through it. The hub never waits on a slow connection: a full queue
//! disconnects that subscriber (3008). Registries are sharded and their locks are never
//! held across `.await`. It reports upward only through the handles it holds: a
//! [`Control`] posted to a connection is applied by that connection's driver and session.
//!
//! - this file: the registries (connections, users, channels and their subscribers);
//! - [`conn`]: the connection handle and its bounded outbound queue;
//! - [`fanout`]: encode-once delivery of publications, joins and leaves, and the hub as the
//!   broker's event sink;
//! - [`park`]: publications held while a subscription is being set up;
//! - [`sweep`]: the heartbeat sweep (pings, pong and connect deadlines, expiries).
//!
//! What the registries see come and go (a user's first and last connection here, a
//! channel's first and last subscriber here) is reported to the [`Occupancy`] sink the node
//! installs, if any.

pub(crate) mod conn;
mod fanout;
mod park;
mod sweep;

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use tether_proto::Encoding;
use tokio::net::TcpStream;

pub use self::conn::{
    ClientId, Conn, ConnHandle, Control, Heartbeat, PendingPublication, ServerSubscribe,
    SubscribeOverrides, Work,
};
pub use self::fanout::HubEvents;
use self::park::Parked;
use self::sweep::Pings;
pub use self::sweep::SweepSettings;
use crate::wire::Framing;

/// Registries and fan-out of one node. Clone = refcount bump.
#[derive(Clone, Debug)]
pub struct Hub {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    conns: Box<[Mutex<HashMap<u64, ConnHandle>>]>,
    users: Box<[Mutex<UserShard>]>,
    channels: Box<[Mutex<ChannelShard>]>,
    next_seq: AtomicU64,
    hasher: std::collections::hash_map::RandomState,
    pings: Pings,
    /// Counts deliveries when the node has metrics.
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Told about first and last local connections of users and subscribers of channels.
    occupancy: std::sync::OnceLock<Arc<dyn Occupancy>>,
}

/// Receives what the registries see come and go on this node, while the registry's lock
/// is held (so the reports of one user or channel arrive in the order they happened): an
/// implementation must only record them and return.
pub trait Occupancy: Send + Sync + std::fmt::Debug {
    /// A user's first connection on this node (`held`), or its last one left. Anonymous
    /// connections (an empty user) are not reported.
    fn user(&self, user: &str, held: bool);
    /// A channel's first subscriber on this node (`held`), or its last one left.
    fn channel(&self, channel: &str, held: bool);
}

/// One shard of the user index: user -> that user's connections on this node.
type UserShard = HashMap<Arc<str>, UserConns>;
/// One shard of the channel registry.
type ChannelShard = HashSet<ChannelEntry>;

/// A user's connections on this node. Most users hold one connection, kept inline: a
/// vector's smallest allocation (four handles) would be held by every idle connection. The
/// vector of a user with several is boxed so the entry stays two words in every bucket of
/// the index.
#[derive(Debug)]
enum UserConns {
    One(ConnHandle),
    #[allow(clippy::box_collection)]
    Many(Box<Vec<ConnHandle>>),
}

impl UserConns {
    fn as_slice(&self) -> &[ConnHandle] {
        match self {
            Self::One(conn) => std::slice::from_ref(conn),
            Self::Many(conns) => conns,
        }
    }

    fn push(&mut self, conn: ConnHandle) {
        match self {
            Self::One(first) => *self = Self::Many(Box::new(vec![first.clone(), conn])),
            Self::Many(conns) => conns.push(conn),
        }
    }

    /// Removes the connection with `seq`; true when no connection is left.
    fn remove(&mut self, seq: u64) -> bool {
        match self {
            Self::One(conn) => conn.seq == seq,
            Self::Many(conns) => {
                conns.retain(|c| c.seq != seq);
                match conns.as_slice() {
                    [] => return true,
                    [last] => *self = Self::One(last.clone()),
                    _ => {}
                }
                false
            }
        }
    }
}

/// The subscribers of one channel on this node.
#[derive(Debug)]
struct Channel {
    name: Arc<str>,
    /// In no particular order; each subscriber knows its index ([`Subscriber::slot`]), so
    /// removal is a swap with the last. A vector, not a map: fan-out walks it, and a channel
    /// with one subscriber (a personal channel) holds one pointer, not a hash table.
    subscribers: RwLock<Vec<Arc<Subscriber>>>,
}

/// A channel registry entry: hashes and compares as its name, so the registry is a set
/// looked up by `&str` and the name is stored once.
#[derive(Debug)]
struct ChannelEntry(Arc<Channel>);

impl Borrow<str> for ChannelEntry {
    fn borrow(&self) -> &str {
        &self.0.name
    }
}

impl Hash for ChannelEntry {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes, so `HashSet::get(&str)` finds it.
        (*self.0.name).hash(state);
    }
}

impl PartialEq for ChannelEntry {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for ChannelEntry {}

/// One connection's subscription as the hub sees it.
#[derive(Debug)]
pub struct Subscriber {
    conn: ConnHandle,
    /// The channel, which holds this subscriber until [`Hub::unsubscribe`].
    channel: Arc<Channel>,
    /// Index in the channel's subscriber vector; changed only under its write lock.
    slot: AtomicU32,
    flags: SubscriberFlags,
    /// The subscriber has received a full publication, so later ones may come as deltas.
    delta_primed: AtomicBool,
    /// Set (under the `pending` lock) once the subscription is live: fan-out then delivers
    /// without taking the lock.
    live: AtomicBool,
    /// `Some` while the subscription is being set up: publications are parked here and
    /// replayed after the subscribe reply. `None` once live. Boxed: it is needed only for
    /// the moments of setting up, and the subscriber lives for hours.
    pending: Mutex<Option<Box<Parked>>>,
    /// Set when the stream lost continuity for this positioned subscriber: nothing more is
    /// delivered to it (its position must not move past the hole) until the session ends the
    /// subscription and the client recovers.
    stale: AtomicBool,
    /// Right after activation: publications at or below this offset were already delivered
    /// with the subscribe reply (from history) or from the parked ones. A networked engine
    /// can deliver such a publication late — its history read may finish before its Pub/Sub
    /// message arrives — so live delivery drops it. Cleared (0) by the first newer offset, so
    /// a later epoch that restarts at offset 1 is never filtered.
    skip_up_to: AtomicU64,
}

/// What a subscriber asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubscriberFlags {
    /// Deliver join and leave pushes.
    pub join_leave: bool,
    /// Fossil delta negotiated.
    pub delta: bool,
    /// The subscription is positioned: a lost publication must be reported to it
    /// ([`Hub::insufficient_state`]) rather than silently skipped.
    pub positioned: bool,
}

/// Counts for the `info` API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Registered connections (connected or still authenticating).
    pub num_clients: u32,
    /// Distinct users with at least one connection.
    pub num_users: u32,
    /// Channels with at least one subscriber here.
    pub num_channels: u32,
    /// Subscriptions summed over channels.
    pub num_subs: u32,
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::build(None)
    }

    /// An empty hub that counts its deliveries in `metrics`.
    pub(crate) fn with_metrics(metrics: Arc<crate::metrics::Metrics>) -> Self {
        Self::build(Some(metrics))
    }

    fn build(metrics: Option<Arc<crate::metrics::Metrics>>) -> Self {
        Self {
            shared: Arc::new(Shared {
                metrics,
                conns: (0..SHARDS).map(|_| Mutex::default()).collect(),
                users: (0..SHARDS).map(|_| Mutex::default()).collect(),
                channels: (0..SHARDS).map(|_| Mutex::default()).collect(),
                next_seq: AtomicU64::new(1),
                hasher: std::collections::hash_map::RandomState::new(),
                pings: Pings::new(),
                occupancy: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Installs the sink told about first and last local connections and subscribers
    /// (once; a second call is ignored). Without one nothing is reported.
    pub(crate) fn set_occupancy(&self, sink: Arc<dyn Occupancy>) {
        let _ = self.shared.occupancy.set(sink);
    }

    fn occupancy(&self) -> Option<&Arc<dyn Occupancy>> {
        self.shared.occupancy.get()
    }

    /// A new connection handle, registered (so the sweeper watches it from the start). It
    /// takes the connection's socket: frames handed to the handle are written to it.
    pub fn register(
        &self,
        encoding: Encoding,
        framing: Framing,
        queue_limit: usize,
        socket: Option<TcpStream>,
    ) -> ConnHandle {
        let seq = self.shared.next_seq.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn::new(seq, encoding, framing, queue_limit, socket));
        self.shared.conns[shard_of_seq(seq)]
            .lock()
            .insert(seq, conn.clone());
        conn
    }

    /// Removes a connection from every registry (its subscriptions are removed by the session).
    pub(crate) fn unregister(&self, conn: &ConnHandle) {
        self.shared.conns[shard_of_seq(conn.seq)]
            .lock()
            .remove(&conn.seq);
        let user = conn.user();
        let mut users = self.shared.users[self.shard(&user)].lock();
        if let Some(conns) = users.get_mut(&user)
            && conns.remove(conn.seq)
        {
            users.remove(&user);
            if let Some(sink) = self.occupancy()
                && !user.is_empty()
            {
                sink.user(&user, false);
            }
        }
    }

    /// Adds an authenticated connection to its user's index. Returns how many connections
    /// the user has now.
    pub(crate) fn add_user_conn(&self, conn: &ConnHandle) -> usize {
        let user = conn.user();
        let mut users = self.shared.users[self.shard(&user)].lock();
        match users.entry(user) {
            std::collections::hash_map::Entry::Occupied(mut entry) => {
                entry.get_mut().push(conn.clone());
                entry.get().as_slice().len()
            }
            std::collections::hash_map::Entry::Vacant(entry) => {
                if let Some(sink) = self.occupancy()
                    && !entry.key().is_empty()
                {
                    sink.user(entry.key(), true);
                }
                entry.insert(UserConns::One(conn.clone()));
                1
            }
        }
    }

    /// Number of connections a user has on this node.
    pub(crate) fn user_conn_count(&self, user: &str) -> usize {
        self.shared.users[self.shard(user)]
            .lock()
            .get(user)
            .map_or(0, |conns| conns.as_slice().len())
    }

    /// The connections of a user on this node.
    pub(crate) fn user_conns(&self, user: &str) -> Vec<ConnHandle> {
        self.shared.users[self.shard(user)]
            .lock()
            .get(user)
            .map(|conns| conns.as_slice().to_vec())
            .unwrap_or_default()
    }

    /// Adds a subscriber in the pending state; publications are parked until
    /// [`Hub::activate`]. Returns the handle the session keeps.
    pub fn subscribe(
        &self,
        channel: &str,
        conn: &ConnHandle,
        flags: SubscriberFlags,
    ) -> Arc<Subscriber> {
        let mut channels = self.shared.channels[self.shard(channel)].lock();
        let entry = match channels.get(channel) {
            Some(entry) => entry.0.clone(),
            None => {
                let entry = Arc::new(Channel {
                    name: Arc::from(channel),
                    subscribers: RwLock::default(),
                });
                channels.insert(ChannelEntry(entry.clone()));
                if let Some(sink) = self.occupancy() {
                    sink.channel(channel, true);
                }
                entry
            }
        };
        // Added under the shard lock: an unsubscribe that empties the channel removes its
        // entry under the same lock, so a new subscriber never lands in a removed entry.
        let mut subscribers = entry.subscribers.write();
        let sub = Arc::new(Subscriber {
            conn: conn.clone(),
            channel: entry.clone(),
            slot: AtomicU32::new(subscribers.len() as u32),
            flags,
            delta_primed: AtomicBool::new(false),
            live: AtomicBool::new(false),
            skip_up_to: AtomicU64::new(0),
            stale: AtomicBool::new(false),
            pending: Mutex::new(Some(Box::default())),
        });
        crate::small::push_exact_while_small(&mut subscribers, sub.clone());
        sub
    }

    /// Removes a subscription; frees the channel entry when it was the last. Removing one
    /// that is already gone does nothing.
    pub(crate) fn unsubscribe(&self, sub: &Arc<Subscriber>) {
        let channel = &sub.channel;
        let mut channels = self.shared.channels[self.shard(&channel.name)].lock();
        let mut subs = channel.subscribers.write();
        let at = sub.slot.load(Ordering::Relaxed) as usize;
        if !subs.get(at).is_some_and(|s| Arc::ptr_eq(s, sub)) {
            return;
        }
        subs.swap_remove(at);
        if let Some(moved) = subs.get(at) {
            moved.slot.store(at as u32, Ordering::Relaxed);
        }
        if subs.is_empty() {
            drop(subs);
            channels.remove(&*channel.name);
            if let Some(sink) = self.occupancy() {
                sink.channel(&channel.name, false);
            }
        } else if subs.capacity() > crate::small::EXACT_UP_TO && subs.len() * 4 <= subs.capacity() {
            // A channel that emptied out gives its memory back as it goes.
            let keep = subs.len() * 2;
            subs.shrink_to(keep);
        }
    }

    /// Users with a connection on this node.
    pub(crate) fn users(&self) -> Vec<Arc<str>> {
        let mut out = Vec::new();
        for shard in self.shared.users.iter() {
            out.extend(shard.lock().keys().filter(|user| !user.is_empty()).cloned());
        }
        out
    }

    /// Channels with local subscribers and their subscriber counts.
    pub(crate) fn channels(&self) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        for shard in self.shared.channels.iter() {
            for ChannelEntry(entry) in shard.lock().iter() {
                out.push((
                    entry.name.to_string(),
                    entry.subscribers.read().len() as u32,
                ));
            }
        }
        out
    }

    /// Counts for `info`.
    pub fn stats(&self) -> HubStats {
        let mut stats = HubStats::default();
        for shard in self.shared.conns.iter() {
            stats.num_clients += shard.lock().len() as u32;
        }
        for shard in self.shared.users.iter() {
            stats.num_users += shard.lock().len() as u32;
        }
        for shard in self.shared.channels.iter() {
            let channels = shard.lock();
            stats.num_channels += channels.len() as u32;
            for ChannelEntry(entry) in channels.iter() {
                stats.num_subs += entry.subscribers.read().len() as u32;
            }
        }
        stats
    }

    /// Every registered connection (a snapshot; for shutdown and tests).
    pub fn all_conns(&self) -> Vec<ConnHandle> {
        self.shared
            .conns
            .iter()
            .flat_map(|s| s.lock().values().cloned().collect::<Vec<_>>())
            .collect()
    }

    fn channel(&self, channel: &str) -> Option<Arc<Channel>> {
        self.shared.channels[self.shard(channel)]
            .lock()
            .get(channel)
            .map(|entry| entry.0.clone())
    }

    fn shard(&self, key: &str) -> usize {
        (self.shared.hasher.hash_one(key) as usize) % SHARDS
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Subscriber {
    /// The channel's name (shared with the hub's registry).
    pub(crate) fn channel(&self) -> &Arc<str> {
        &self.channel.name
    }

    /// The stream lost continuity for this subscription ([`Hub::insufficient_state`]).
    pub(crate) fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }
}

fn shard_of_seq(seq: u64) -> usize {
    (seq as usize) % SHARDS
}

/// Registry shards; a power of two well above the core count keeps lock contention low.
const SHARDS: usize = 64;

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::broker::{Publication, PublicationEvent, StreamPosition};

    fn event(offset: u64) -> PublicationEvent {
        PublicationEvent {
            publication: Arc::new(Publication {
                offset,
                data: Bytes::from_static(b"{}"),
                ..Default::default()
            }),
            position: Some(StreamPosition {
                offset,
                epoch: "e".to_owned(),
            }),
            previous: None,
        }
    }

    fn queued(conn: &Conn) -> usize {
        conn.take_queued().len()
    }

    #[test]
    fn a_late_publication_already_in_the_subscribe_reply_is_not_delivered_again() {
        let hub = Hub::new();
        let conn = hub.register(Encoding::Json, Framing::WebSocket, 1 << 20, None);
        let flags = SubscriberFlags {
            positioned: true,
            ..Default::default()
        };
        let sub = hub.subscribe("ch", &conn, flags);
        // The reply carried history up to offset 5; a parked 6 is replayed after it.
        hub.deliver_publication("ch", &event(6));
        assert!(hub.activate("ch", &sub, vec![Bytes::from_static(b"reply")], Some(5)));
        assert_eq!(queued(&conn), 2, "the reply and the parked 6");
        // 5 and 6 arrive late from the engine: both were delivered already.
        hub.deliver_publication("ch", &event(5));
        hub.deliver_publication("ch", &event(6));
        assert_eq!(queued(&conn), 0);
        // The next one is new and goes out; after it, the filter is gone, so a stream that
        // restarts at offset 1 later is not swallowed.
        hub.deliver_publication("ch", &event(7));
        assert_eq!(queued(&conn), 1);
        hub.deliver_publication("ch", &event(1));
        assert_eq!(queued(&conn), 1);
    }

    #[test]
    fn publications_parked_past_the_queue_bound_close_the_connection_not_grow() {
        let hub = Hub::new();
        let conn = hub.register(Encoding::Json, Framing::WebSocket, 64, None);
        let sub = hub.subscribe("ch", &conn, SubscriberFlags::default());
        let big = |offset| PublicationEvent {
            publication: Arc::new(Publication {
                offset,
                data: Bytes::from(vec![b'1'; 40]),
                ..Default::default()
            }),
            position: None,
            previous: None,
        };
        // The engine is slow to confirm the subscribe while the channel is busy.
        hub.deliver_publication("ch", &big(1));
        assert!(!conn.is_closing(), "one fits the bound");
        hub.deliver_publication("ch", &big(2));
        assert!(conn.is_closing(), "two would not fit the queue");
        assert_eq!(conn.take_work().close.map(|d| d.code.get()), Some(3008));
        for offset in 3..100 {
            hub.deliver_publication("ch", &big(offset));
        }
        let pending = sub.pending.lock();
        assert!(pending.as_ref().is_some_and(|p| p.publications.is_empty()));
        drop(pending);
        // Activation then sends nothing: not the reply, not a publication after the gap.
        assert!(!hub.activate("ch", &sub, vec![Bytes::from_static(b"reply")], None));
        assert_eq!(queued(&conn), 0);
    }

    #[test]
    fn the_sweep_acts_on_each_deadline_when_it_comes_and_not_before() {
        let hub = Hub::new();
        let conn = hub.register(Encoding::Json, Framing::WebSocket, 1 << 20, None);
        let settings = SweepSettings {
            ping_interval_ms: 25_000,
            pong_timeout_ms: 8_000,
        };
        conn.with_heartbeat(|hb| hb.ping_at = 1_000);
        hub.sweep(999, settings);
        assert_eq!(queued(&conn), 0, "no ping before it is due");
        hub.sweep(1_000, settings);
        assert_eq!(queued(&conn), 1, "the ping");
        // The pong deadline (9,000) comes before the next ping (26,000).
        hub.sweep(8_999, settings);
        assert!(conn.take_work().close.is_none());
        hub.sweep(9_000, settings);
        assert_eq!(conn.take_work().close.map(|d| d.code.get()), Some(3012));
        // An earlier deadline set later is seen at once: credentials expiring at 10,000.
        let other = hub.register(Encoding::Json, Framing::WebSocket, 1 << 20, None);
        other.with_heartbeat(|hb| hb.ping_at = 26_000);
        other.with_heartbeat(|hb| hb.expire_at = 10_000);
        hub.sweep(10_000, settings);
        assert_eq!(other.take_work().close.map(|d| d.code.get()), Some(3005));
    }

    fn live_sub(hub: &Hub, channel: &str, conn: &ConnHandle) -> Arc<Subscriber> {
        let sub = hub.subscribe(channel, conn, SubscriberFlags::default());
        assert!(hub.activate(channel, &sub, Vec::new(), None));
        sub
    }

    #[test]
    fn unsubscribing_any_subscriber_keeps_the_others_receiving() {
        let hub = Hub::new();
        let conns: Vec<ConnHandle> = (0..4)
            .map(|_| hub.register(Encoding::Json, Framing::WebSocket, 1 << 20, None))
            .collect();
        let subs: Vec<_> = conns.iter().map(|c| live_sub(&hub, "ch", c)).collect();
        // The first (swapped with the last), then the last's new slot, then a repeat.
        hub.unsubscribe(&subs[0]);
        hub.unsubscribe(&subs[3]);
        hub.unsubscribe(&subs[0]);
        hub.deliver_publication("ch", &event(1));
        let got: Vec<usize> = conns.iter().map(|c| queued(c)).collect();
        assert_eq!(got, [0, 1, 1, 0]);
        assert_eq!(hub.stats().num_subs, 2);
        hub.unsubscribe(&subs[1]);
        hub.unsubscribe(&subs[2]);
        assert_eq!(hub.stats().num_channels, 0, "an empty channel is freed");
        // A new subscriber after that gets a fresh entry and its publications.
        let again = live_sub(&hub, "ch", &conns[0]);
        hub.deliver_publication("ch", &event(2));
        assert_eq!(queued(&conns[0]), 1);
        assert_eq!(again.channel().as_ref(), "ch");
    }

    #[test]
    fn the_user_index_follows_connections_in_and_out() {
        let hub = Hub::new();
        let conns: Vec<ConnHandle> = (0..3)
            .map(|_| {
                let conn = hub.register(Encoding::Json, Framing::WebSocket, 1 << 20, None);
                conn.set_identity(Arc::from("alice"), None);
                conn
            })
            .collect();
        let counts: Vec<usize> = conns.iter().map(|c| hub.add_user_conn(c)).collect();
        assert_eq!(counts, [1, 2, 3]);
        hub.unregister(&conns[1]);
        assert_eq!(hub.user_conn_count("alice"), 2);
        let seqs: Vec<u64> = hub.user_conns("alice").iter().map(|c| c.seq).collect();
        assert_eq!(seqs, [conns[0].seq, conns[2].seq]);
        hub.unregister(&conns[0]);
        assert_eq!(hub.user_conns("alice").len(), 1);
        hub.unregister(&conns[2]);
        assert_eq!(hub.user_conn_count("alice"), 0);
        assert_eq!(hub.stats().num_users, 0);
    }

    /// Reads `count` server WebSocket text frames (unmasked: a 2- or 4-byte header)
    /// from `peer` and returns their payloads.
    async fn read_frames(peer: &mut TcpStream, count: usize) -> Vec<String> {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        let mut frames = Vec::new();
        while frames.len() < count {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), peer.read(&mut chunk))
                .await
                .expect("frames in time")
                .unwrap();
            assert!(n > 0, "connection closed");
            buf.extend_from_slice(&chunk[..n]);
            loop {
                let (len, at) = match buf.get(1) {
                    Some(126) if buf.len() >= 4 => {
                        (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
                    }
                    Some(&len) if len < 126 => (usize::from(len), 2),
                    _ => break,
                };
                if buf.len() < at + len {
                    break;
                }
                frames.push(String::from_utf8(buf[at..at + len].to_vec()).unwrap());
                buf.drain(..at + len);
            }
        }
        frames
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_fan_out_reaches_every_subscriber_whole_and_in_order() {
        let hub = Hub::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Far more subscribers than the publisher writes itself (`INLINE_FANOUT`).
        let mut peers = Vec::new();
        for _ in 0..600 {
            let peer = TcpStream::connect(addr).await.unwrap();
            let (socket, _) = listener.accept().await.unwrap();
            socket.writable().await.unwrap();
            let conn = hub.register(Encoding::Json, Framing::WebSocket, 1 << 20, Some(socket));
            let sub = hub.subscribe("big", &conn, SubscriberFlags::default());
            assert!(hub.activate("big", &sub, Vec::new(), None));
            peers.push((conn, peer));
        }
        // Published back to back: each is queued behind the earlier ones, and goes out when
        // the connection's driver flushes (as the first goes out directly to a small
        // channel's subscribers).
        for offset in 1..=5 {
            hub.deliver_publication("big", &event(offset));
        }
        for (conn, _) in &peers {
            assert!(conn.flush().unwrap());
        }
        for (_, peer) in &mut peers {
            let frames = read_frames(peer, 5).await;
            let offsets: Vec<u64> = frames
                .iter()
                .map(|frame| {
                    let reply: serde_json::Value = serde_json::from_str(frame).unwrap();
                    reply["push"]["pub"]["offset"].as_u64().unwrap()
                })
                .collect();
            assert_eq!(offsets, [1, 2, 3, 4, 5]);
        }
        for (conn, _) in &peers {
            assert!(!conn.has_frames(), "every queue was written out");
        }
    }
}
