//! The Redis side of [`crate::broker::lifecycle`]: cluster-wide occupancy and user status.
//!
//! # Occupancy
//!
//! Every node reports its transitions to the same few keys on shard 0, all under one hash
//! tag of their own (`<prefix>.lifecycle.{<prefix>.lifecycle}`, see `keys`), so each Lua
//! script (`scripts`: `LIFECYCLE_APPLY`, `LIFECYCLE_TICK`, `LIFECYCLE_LEAVE`) may touch any
//! of them on a Redis Cluster too:
//!
//! | Name (after the base) | Type | Content |
//! | --- | --- | --- |
//! | `.nodes` | ZSET | live node id -> Unix ms of its last call |
//! | `.n.<node>` | SET | encoded keys (`u:alice`, `c:room`) the node holds |
//! | `.k.<key>` | SET | ids of the nodes that hold the key |
//! | `.up` | SET | keys that are up |
//! | `.pending` | ZSET | key held by nobody -> Unix ms at which it goes down |
//! | `.reaping` | SET | nodes reaped (or gone) whose keys are not all released yet |
//! | `.r.<node>` | SET | keys such a node held that are not released yet |
//!
//! Guarantees:
//!
//! - **Exactly once.** Each call is one script, and Redis runs a script atomically: a key
//!   goes up in the call whose `SADD` to `.up` added it, and down in the tick whose `SREM`
//!   removed it, so of any number of nodes applying and ticking concurrently exactly one
//!   reports each transition. A key goes down only when its due time has passed, nobody
//!   holds it, and it is up; holding it again before removes its pending entry.
//! - **Liveness.** Every call refreshes the caller's score in `.nodes`. A tick reaps (a few
//!   per tick, [`REAP_NODES`]) the nodes whose score is older than its `dead_before_ms`:
//!   each leaves `.nodes` and its held set becomes its reaped set, in O(1). Ticks then
//!   release reaped keys ([`RELEASE_KEYS`] per tick): a key left held by nobody is due at
//!   once and goes down in the same tick, if the budget of due keys ([`DUE_KEYS`]) allows.
//!   A clean [`RedisEngine::lifecycle_leave`] hands the node's keys over the same way.
//! - **Rejoin.** A node that was reaped while it was alive (a long partition, a paused
//!   process) finds itself missing from `.nodes` on its next call, which re-adds it and
//!   answers `rejoin`: the caller reports every key it holds again (holding a key that is up
//!   changes nothing). Keys of its reaped set that it holds again are skipped by the release,
//!   so a rejoin racing the release loses nothing. The engine remembers which node ids it has
//!   called the store for, so a node's first call is not a rejoin; a Redis that lost its data
//!   makes every known node rejoin.
//!
//! The store is as durable as Redis: a failover that loses writes may lose transitions (a
//! key never reported down, or reported up again).
//!
//! # User status
//!
//! A hash per user, `<prefix>.status.{<user>}` (field `a` last active, `o` last online, Unix
//! seconds), which expires `ttl_s` after its last update. Users spread over the shards like
//! channels (one pipeline per shard), or over a Redis Cluster's slots (one pipeline per user,
//! all at once).

use std::collections::HashMap;

use futures_util::future::join_all;
use redis::{Pipeline, Value};
use tracing::warn;

use super::RedisEngine;
use super::keys::Layout;
use crate::broker::BrokerError;
use crate::broker::lifecycle::{Change, Decisions, Key, StatusField, UserStatus};

/// At most this many silent nodes are reaped per tick.
pub(super) const REAP_NODES: usize = 8;
/// At most this many keys of reaped nodes are released per tick.
pub(super) const RELEASE_KEYS: usize = 1000;
/// At most this many due keys are taken per tick.
pub(super) const DUE_KEYS: usize = 1000;

impl RedisEngine {
    /// See [`crate::broker::lifecycle::Lifecycle::apply`]. One script call for the batch.
    pub(crate) async fn lifecycle_apply(
        &self,
        node: &str,
        changes: &[Change],
        now_ms: i64,
        grace_ms: i64,
    ) -> Result<Decisions, BrokerError> {
        let mut invocation = self.shared.lifecycle_apply_script.prepare_invoke();
        self.lifecycle_frame(&mut invocation, node, now_ms);
        invocation
            .arg(now_ms.saturating_add(grace_ms))
            .arg(self.lifecycle_known(node));
        for change in changes {
            invocation
                .arg(if change.held { "1" } else { "0" })
                .arg(change.key.encode());
        }
        let mut conn = self.shared.shards[0].conn.clone();
        let (rejoin, up): (i64, Vec<String>) =
            self.run(0, invocation.invoke_async(&mut conn)).await?;
        Ok(Decisions {
            up: decode_keys(up),
            down: Vec::new(),
            rejoin: rejoin == 1,
        })
    }

    /// See [`crate::broker::lifecycle::Lifecycle::tick`]. One script call.
    pub(crate) async fn lifecycle_tick(
        &self,
        node: &str,
        now_ms: i64,
        dead_before_ms: i64,
    ) -> Result<Decisions, BrokerError> {
        let mut invocation = self.shared.lifecycle_tick_script.prepare_invoke();
        self.lifecycle_frame(&mut invocation, node, now_ms);
        invocation
            .arg(dead_before_ms)
            .arg(self.lifecycle_known(node))
            .arg(REAP_NODES)
            .arg(RELEASE_KEYS)
            .arg(DUE_KEYS);
        let mut conn = self.shared.shards[0].conn.clone();
        let (rejoin, down): (i64, Vec<String>) =
            self.run(0, invocation.invoke_async(&mut conn)).await?;
        Ok(Decisions {
            up: Vec::new(),
            down: decode_keys(down),
            rejoin: rejoin == 1,
        })
    }

    /// See [`crate::broker::lifecycle::Lifecycle::leave`]: the node's keys are handed to the
    /// other nodes' ticks, which decide; nothing is decided here.
    pub(crate) async fn lifecycle_leave(
        &self,
        node: &str,
        now_ms: i64,
    ) -> Result<Decisions, BrokerError> {
        let mut invocation = self.shared.lifecycle_leave_script.prepare_invoke();
        self.lifecycle_frame(&mut invocation, node, now_ms);
        let mut conn = self.shared.shards[0].conn.clone();
        self.run(0, invocation.invoke_async::<()>(&mut conn))
            .await?;
        self.shared.lifecycle_known.lock().remove(node);
        Ok(Decisions::default())
    }

    /// See [`crate::broker::lifecycle::Lifecycle::set_status`].
    pub(crate) async fn status_set(
        &self,
        users: &[String],
        field: StatusField,
        at: i64,
        ttl_s: i64,
    ) -> Result<(), BrokerError> {
        let field = match field {
            StatusField::Active => "a",
            StatusField::Online => "o",
        };
        self.status_batches(users, |pipe, key| {
            pipe.hset(key, field, at).ignore();
            pipe.expire(key, ttl_s).ignore();
        })
        .await
        .map(drop)
    }

    /// See [`crate::broker::lifecycle::Lifecycle::get_status`]. Redis expires the entries.
    pub(crate) async fn status_get(
        &self,
        users: &[String],
    ) -> Result<Vec<UserStatus>, BrokerError> {
        let replies = self
            .status_batches(users, |pipe, key| {
                pipe.cmd("HMGET").arg(key).arg("a").arg("o");
            })
            .await?;
        users
            .iter()
            .zip(replies)
            .map(|(user, reply)| {
                let (active, online): (Option<i64>, Option<i64>) = redis::from_redis_value(reply)
                    .map_err(|e| {
                    BrokerError::Unavailable(format!("unexpected user status: {e}"))
                })?;
                Ok(UserStatus {
                    user: user.clone(),
                    active,
                    online,
                })
            })
            .collect()
    }

    /// See [`crate::broker::lifecycle::Lifecycle::delete_status`].
    pub(crate) async fn status_delete(&self, users: &[String]) -> Result<(), BrokerError> {
        self.status_batches(users, |pipe, key| {
            pipe.del(key).ignore();
        })
        .await
        .map(drop)
    }

    // === internals ===

    /// The keys and arguments every lifecycle script starts with (see `scripts`).
    fn lifecycle_frame(
        &self,
        invocation: &mut redis::ScriptInvocation<'_>,
        node: &str,
        now_ms: i64,
    ) {
        let keys = &self.shared.keys;
        invocation
            .key(keys.lifecycle_nodes())
            .key(keys.lifecycle_up())
            .key(keys.lifecycle_pending())
            .key(keys.lifecycle_reaping())
            .arg(keys.lifecycle())
            .arg(node)
            .arg(now_ms);
    }

    /// "1" when this engine called the store for `node` before (then a node missing from the
    /// live nodes was reaped), "0" for its first call; remembers it.
    fn lifecycle_known(&self, node: &str) -> &'static str {
        if self.shared.lifecycle_known.lock().insert(node.to_owned()) {
            "0"
        } else {
            "1"
        }
    }

    /// Runs `add`'s commands for every user's status key: one pipeline per shard (per user
    /// on a Redis Cluster, where users' keys span slots), all at once. `add` leaves one reply
    /// per user (returned in the users' order) or none (all `Nil`).
    async fn status_batches(
        &self,
        users: &[String],
        add: impl Fn(&mut Pipeline, &str),
    ) -> Result<Vec<Value>, BrokerError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        // (shard, indices of its users) in first-seen order.
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        let mut by_shard: HashMap<usize, usize> = HashMap::new();
        for (index, user) in users.iter().enumerate() {
            match self.shared.keys.layout() {
                Layout::Cluster => groups.push((0, vec![index])),
                Layout::Standalone => {
                    let shard = self.shard_for(user);
                    let group = *by_shard.entry(shard).or_insert_with(|| {
                        groups.push((shard, Vec::new()));
                        groups.len() - 1
                    });
                    groups[group].1.push(index);
                }
            }
        }
        let calls = groups.iter().map(|(shard, indices)| {
            let mut pipe = redis::pipe();
            for &index in indices {
                add(&mut pipe, &self.shared.keys.status(&users[index]));
            }
            let mut conn = self.shared.shards[*shard].conn.clone();
            async move {
                self.run(*shard, async move {
                    pipe.query_async::<Vec<Value>>(&mut conn).await
                })
                .await
            }
        });
        let results = join_all(calls).await;
        let mut replies = vec![Value::Nil; users.len()];
        for ((_, indices), result) in groups.iter().zip(results) {
            let values = result?;
            if values.is_empty() {
                continue;
            }
            if values.len() != indices.len() {
                return Err(BrokerError::Unavailable(
                    "unexpected user status replies".to_owned(),
                ));
            }
            for (&index, value) in indices.iter().zip(values) {
                replies[index] = value;
            }
        }
        Ok(replies)
    }
}

/// The keys of a script's answer; one that does not decode (never written by this engine)
/// is skipped.
fn decode_keys(stored: Vec<String>) -> Vec<Key> {
    stored
        .into_iter()
        .filter_map(|stored| {
            let key = Key::decode(&stored);
            if key.is_none() {
                warn!(stored, "undecodable lifecycle key ignored");
            }
            key
        })
        .collect()
}
