//! Who is online and which channels are occupied, decided for the whole cluster; and the
//! user status store (last active, last online).
//!
//! Each node reports its own transitions ([`Change`]): a key (a user, or a channel) that got
//! its first local connection or subscriber is *held* by the node, one that lost its last is
//! *released*. The store decides what that means for the cluster: a key held by no node
//! before becomes *up* (`user_online`, `channel_occupied`), and a key released by every node
//! goes *down* (`user_offline`, `channel_vacated`) only after a grace, so a reconnect within
//! it changes nothing. Every decision is taken once, atomically, by the store:
//!
//! - [`LocalLifecycle`]: this node's memory, for the embedded engines (and the memory engine
//!   beside NATS, where it is per node: each node decides for its own connections).
//! - the Redis engine ([`super::RedisEngine`]): a few keys under one hash tag, changed by Lua
//!   scripts, with every node's liveness; a node that stops refreshing it is reaped by
//!   another, which releases everything the dead node held.
//!
//! Sans-IO for the local store: time comes in as Unix milliseconds, decisions come out.

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;

use super::{BrokerError, RedisEngine};

/// What a key names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Scope {
    /// A user id (never empty: anonymous connections are not tracked).
    User,
    /// A channel.
    Channel,
}

impl Scope {
    /// The one-letter tag a key is stored under.
    pub(crate) fn tag(self) -> char {
        match self {
            Self::User => 'u',
            Self::Channel => 'c',
        }
    }

    /// The scope of a stored tag.
    pub(crate) fn from_tag(tag: char) -> Option<Self> {
        match tag {
            'u' => Some(Self::User),
            'c' => Some(Self::Channel),
            _ => None,
        }
    }
}

/// A key of the occupancy store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    /// What it names.
    pub scope: Scope,
    /// The user id or channel.
    pub name: String,
}

impl Key {
    /// The stored form: the scope's tag, `:`, the name.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::with_capacity(self.name.len() + 2);
        out.push(self.scope.tag());
        out.push(':');
        out.push_str(&self.name);
        out
    }

    /// The key of a stored form.
    pub(crate) fn decode(stored: &str) -> Option<Self> {
        let mut chars = stored.chars();
        let scope = Scope::from_tag(chars.next()?)?;
        let name = stored.get(2..).filter(|_| chars.next() == Some(':'))?;
        Some(Self {
            scope,
            name: name.to_owned(),
        })
    }
}

/// A transition seen on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Change {
    /// The key.
    pub key: Key,
    /// `true`: its first local connection or subscriber; `false`: its last one left.
    pub held: bool,
}

/// What the store decided about the changes it was given or the time that passed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Decisions {
    /// Keys that went up, in the order of the changes that raised them.
    pub up: Vec<Key>,
    /// Keys that went down (their grace passed with nobody holding them).
    pub down: Vec<Key>,
    /// The store had forgotten this node (a Redis node reaped after it stopped refreshing
    /// its liveness, e.g. across a long partition): the caller must report every key it
    /// holds again.
    pub rejoin: bool,
}

/// A user's status as the server API reports it (`get_user_status`); Unix seconds, `None`
/// when unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct UserStatus {
    /// The user.
    pub user: String,
    /// Last time the user was reported active (`update_user_status`).
    pub active: Option<i64>,
    /// Last time the user was seen connected.
    pub online: Option<i64>,
}

/// Which status time an update sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StatusField {
    /// `active`: the user did something (`update_user_status`).
    Active,
    /// `online`: the user holds a connection.
    Online,
}

/// The occupancy and status store of the configured engine.
#[derive(Clone, Debug)]
pub(crate) enum Lifecycle {
    /// This node's memory.
    Local(std::sync::Arc<LocalLifecycle>),
    /// Redis, shared by every node.
    Redis(RedisEngine),
}

impl Lifecycle {
    /// Applies this node's changes, in order, at `now_ms`; a key released by every node is
    /// due to go down at `now_ms + grace_ms` unless someone holds it again before.
    pub(crate) async fn apply(
        &self,
        node: &str,
        changes: &[Change],
        now_ms: i64,
        grace_ms: i64,
    ) -> Result<Decisions, BrokerError> {
        match self {
            Self::Local(local) => Ok(local.apply(changes, now_ms, grace_ms)),
            Self::Redis(redis) => redis.lifecycle_apply(node, changes, now_ms, grace_ms).await,
        }
    }

    /// Refreshes this node's liveness and takes the keys whose grace is over; with Redis,
    /// also releases what nodes silent since `dead_before_ms` held.
    pub(crate) async fn tick(
        &self,
        node: &str,
        now_ms: i64,
        dead_before_ms: i64,
    ) -> Result<Decisions, BrokerError> {
        match self {
            Self::Local(local) => Ok(local.tick(now_ms)),
            Self::Redis(redis) => redis.lifecycle_tick(node, now_ms, dead_before_ms).await,
        }
    }

    /// This node stops: it holds nothing any more. Locally every key that was waiting for
    /// its grace goes down now (nobody would be left to see it come back); with Redis the
    /// node's entry is removed and the other nodes (or the next to start) decide.
    pub(crate) async fn leave(&self, node: &str, now_ms: i64) -> Result<Decisions, BrokerError> {
        match self {
            Self::Local(local) => Ok(local.close()),
            Self::Redis(redis) => redis.lifecycle_leave(node, now_ms).await,
        }
    }

    /// Sets `field` to `at` (Unix seconds) for each user; the status expires after `ttl_s`.
    pub(crate) async fn set_status(
        &self,
        users: &[String],
        field: StatusField,
        at: i64,
        ttl_s: i64,
    ) -> Result<(), BrokerError> {
        match self {
            Self::Local(local) => {
                local.set_status(users, field, at, ttl_s);
                Ok(())
            }
            Self::Redis(redis) => redis.status_set(users, field, at, ttl_s).await,
        }
    }

    /// The status of each user, in the order asked.
    pub(crate) async fn get_status(
        &self,
        users: &[String],
        now_s: i64,
    ) -> Result<Vec<UserStatus>, BrokerError> {
        match self {
            Self::Local(local) => Ok(local.get_status(users, now_s)),
            Self::Redis(redis) => redis.status_get(users).await,
        }
    }

    /// Forgets the status of each user.
    pub(crate) async fn delete_status(&self, users: &[String]) -> Result<(), BrokerError> {
        match self {
            Self::Local(local) => {
                local.delete_status(users);
                Ok(())
            }
            Self::Redis(redis) => redis.status_delete(users).await,
        }
    }
}

/// The store in this node's memory.
#[derive(Debug, Default)]
pub(crate) struct LocalLifecycle {
    occupancy: Mutex<Occupancy>,
    status: Mutex<HashMap<String, StoredStatus>>,
}

#[derive(Debug, Default)]
struct Occupancy {
    /// Released keys in their grace, with the time it ends. A key that is up and held is
    /// not stored at all: the hub reports each key's first hold and last release, in turn,
    /// so a hold of a key not in its grace is a key going up. Only keys in their grace cost
    /// memory, not every user online.
    pending: HashMap<Key, i64>,
    /// The same, in the order their graces end (the grace is the same for every key, so
    /// appending keeps it sorted); an entry whose time no longer matches `pending` is stale.
    queue: VecDeque<(i64, Key)>,
}

#[derive(Clone, Copy, Debug, Default)]
struct StoredStatus {
    active: Option<i64>,
    online: Option<i64>,
    /// Unix seconds after which the entry is gone.
    expires: i64,
}

impl LocalLifecycle {
    fn apply(&self, changes: &[Change], now_ms: i64, grace_ms: i64) -> Decisions {
        let mut out = Decisions::default();
        let mut occupancy = self.occupancy.lock();
        for change in changes {
            if change.held {
                if occupancy.pending.remove(&change.key).is_none() {
                    out.up.push(change.key.clone());
                }
            } else {
                let due = now_ms + grace_ms;
                occupancy.pending.insert(change.key.clone(), due);
                occupancy.queue.push_back((due, change.key.clone()));
            }
        }
        out
    }

    fn tick(&self, now_ms: i64) -> Decisions {
        let mut out = Decisions::default();
        let mut occupancy = self.occupancy.lock();
        while occupancy
            .queue
            .front()
            .is_some_and(|(due, _)| *due <= now_ms)
        {
            let Some((due, key)) = occupancy.queue.pop_front() else {
                break;
            };
            // Held again meanwhile, or released again later: this entry is stale.
            if occupancy.pending.get(&key) == Some(&due) {
                occupancy.pending.remove(&key);
                out.down.push(key);
            }
        }
        if occupancy.queue.is_empty() {
            occupancy.queue.shrink_to_fit();
            occupancy.pending.shrink_to_fit();
        }
        drop(occupancy);
        let now_s = now_ms / 1000;
        self.status
            .lock()
            .retain(|_, status| status.expires > now_s);
        out
    }

    fn close(&self) -> Decisions {
        let mut occupancy = self.occupancy.lock();
        let queue = std::mem::take(&mut occupancy.queue);
        let mut out = Decisions::default();
        for (due, key) in queue {
            if occupancy.pending.get(&key) == Some(&due) {
                occupancy.pending.remove(&key);
                out.down.push(key);
            }
        }
        out
    }

    fn set_status(&self, users: &[String], field: StatusField, at: i64, ttl_s: i64) {
        let mut status = self.status.lock();
        for user in users {
            let entry = status.entry(user.clone()).or_default();
            match field {
                StatusField::Active => entry.active = Some(at),
                StatusField::Online => entry.online = Some(at),
            }
            entry.expires = at + ttl_s;
        }
    }

    fn get_status(&self, users: &[String], now_s: i64) -> Vec<UserStatus> {
        let status = self.status.lock();
        users
            .iter()
            .map(|user| {
                let stored = status
                    .get(user)
                    .filter(|s| s.expires > now_s)
                    .copied()
                    .unwrap_or_default();
                UserStatus {
                    user: user.clone(),
                    active: stored.active,
                    online: stored.online,
                }
            })
            .collect()
    }

    fn delete_status(&self, users: &[String]) {
        let mut status = self.status.lock();
        for user in users {
            status.remove(user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> Key {
        Key {
            scope: Scope::User,
            name: name.to_owned(),
        }
    }

    fn change(name: &str, held: bool) -> Change {
        Change {
            key: user(name),
            held,
        }
    }

    #[test]
    fn a_key_goes_up_once_and_down_only_after_the_grace() {
        let store = LocalLifecycle::default();
        let up = store.apply(&[change("a", true)], 0, 5_000);
        assert_eq!(up.up, [user("a")]);
        // Released and held again within the grace: nothing either way.
        assert_eq!(
            store.apply(&[change("a", false)], 1_000, 5_000),
            Decisions::default()
        );
        assert_eq!(
            store.apply(&[change("a", true)], 2_000, 5_000),
            Decisions::default()
        );
        assert_eq!(store.tick(6_000), Decisions::default(), "held again");
        // Released for good: down at the end of the grace, not before, and once.
        store.apply(&[change("a", false)], 7_000, 5_000);
        assert!(store.tick(11_999).down.is_empty());
        assert_eq!(store.tick(12_000).down, [user("a")]);
        assert!(store.tick(20_000).down.is_empty());
        // And up again on the next hold.
        assert_eq!(
            store.apply(&[change("a", true)], 21_000, 5_000).up,
            [user("a")]
        );
    }

    #[test]
    fn two_releases_in_a_row_bring_one_down() {
        let store = LocalLifecycle::default();
        store.apply(&[change("a", true)], 0, 1_000);
        store.apply(&[change("a", false), change("a", true)], 100, 1_000);
        store.apply(&[change("a", false)], 200, 1_000);
        assert_eq!(store.tick(5_000).down, [user("a")]);
    }

    #[test]
    fn closing_brings_down_what_waits_for_its_grace_and_nothing_held() {
        let store = LocalLifecycle::default();
        store.apply(&[change("a", true), change("b", true)], 0, 60_000);
        store.apply(&[change("a", false)], 1, 60_000);
        assert_eq!(store.close().down, [user("a")]);
    }

    #[test]
    fn a_key_survives_its_stored_form() {
        for key in [
            user("alice"),
            Key {
                scope: Scope::Channel,
                name: "news:1".to_owned(),
            },
            user(""),
        ] {
            assert_eq!(Key::decode(&key.encode()), Some(key));
        }
        assert_eq!(Key::decode("x:a"), None);
        assert_eq!(Key::decode("u"), None);
        assert_eq!(Key::decode("u-a"), None);
    }

    #[test]
    fn statuses_are_set_read_expired_and_deleted() {
        let store = LocalLifecycle::default();
        let users = vec!["a".to_owned(), "b".to_owned()];
        store.set_status(&users[..1], StatusField::Active, 100, 60);
        store.set_status(&users, StatusField::Online, 110, 60);
        let got = store.get_status(&users, 120);
        assert_eq!(got[0].active, Some(100));
        assert_eq!(got[0].online, Some(110));
        assert_eq!(got[1].active, None);
        assert_eq!(got[1].online, Some(110));
        assert_eq!(store.get_status(&users, 170)[0].online, None, "expired");
        store.delete_status(&users[1..]);
        assert_eq!(store.get_status(&users, 120)[1].online, None);
    }
}
