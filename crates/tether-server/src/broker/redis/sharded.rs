//! Sharded Pub/Sub on a Redis Cluster (Redis >= 7: `SSUBSCRIBE`, `SPUBLISH`), owned by one
//! task.
//!
//! # Why the library's cluster connection
//!
//! The redis crate's `ClusterConnection` delivers RESP3 push messages (`smessage`,
//! `ssubscribe`, `sunsubscribe`, and its own `Disconnection` marker) to a channel, routes each
//! `SSUBSCRIBE` to the master that owns the channel's slot, keeps one multiplexed link per
//! master, and subscribes the channels it tracks again after a reconnect or a slot-map refresh.
//! That is the per-node connection and `MOVED` handling this module would otherwise write. What
//! it does not report is *when* a lapsed subscription is live again, and that is what
//! positioned subscribers need: whatever was published while a link was down never reaches
//! this node, so the engine must report lost continuity, and only once the subscription is back
//! (a recovery that ran earlier could finish before the resubscribe and miss what came in
//! between). So the task keeps its own view and re-subscribes itself:
//!
//! - a `Disconnection` push (a node link closed; the push does not say which) or a failed
//!   probe marks every subscription stale and the node not ready;
//! - a server `sunsubscribe` push for a channel that still has local subscribers (its slot
//!   moved to another master during resharding) marks that channel stale;
//! - stale channels are subscribed again with `SSUBSCRIBE` — grouped by slot, since one
//!   `SSUBSCRIBE` may only name channels of one slot, and sent concurrently — and only once
//!   Redis confirmed them is lost continuity reported for them. Overlapping with the library's
//!   own resubscription is harmless: Redis confirms an existing subscription again.
//!
//! Every [`PROBE_INTERVAL`] the task PINGs every master over this connection: a half-open link
//! delivers nothing and reports nothing.
//!
//! # The control channel
//!
//! `{prefix}.control` is a sharded channel too, in the fixed slot of its name. Control traffic
//! is small (a node announcement every 3 s, API fan-out), so one master carries it easily,
//! whereas a classic `PUBLISH` in a cluster is relayed over the cluster bus to every node — the
//! cost sharded Pub/Sub exists to avoid — and would need a second kind of subscription with its
//! own resubscription rules. A lapse of the control subscription is handled like a
//! disconnection: everything is subscribed again.
//!
//! Ends when the engine is dropped or its stop token is cancelled.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo, Slot};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::pubsub::{Command, backoff};
use super::{RedisEngine, WeakEngine};
use crate::broker::BrokerError;

/// The cluster's Pub/Sub task.
pub(super) struct Task {
    pub(super) engine: WeakEngine,
    /// A RESP3 cluster connection used only for sharded Pub/Sub (and its probe).
    pub(super) conn: ClusterConnection,
    /// Push messages of `conn`, in the order each master sent them.
    pub(super) pushes: mpsc::UnboundedReceiver<PushInfo>,
    pub(super) commands: mpsc::UnboundedReceiver<Command>,
    /// Set while every local channel and the control channel are subscribed.
    pub(super) up: Arc<AtomicBool>,
    /// Unix milliseconds at which the connection last proved alive.
    pub(super) alive: Arc<AtomicU64>,
    /// Receives the control channel's payloads.
    pub(super) control: mpsc::UnboundedSender<Bytes>,
    pub(super) stop: CancellationToken,
}

/// What this node has subscribed, and what it must subscribe again.
#[derive(Debug, Default)]
struct Subscriptions {
    /// Channels (tether names) whose `SSUBSCRIBE` Redis confirmed, not unsubscribed since.
    subscribed: HashSet<String>,
    /// Channels whose subscription lapsed (their slot moved); subscribed again by `resync`.
    stale: HashSet<String>,
    /// Every subscription, the control channel's included, may have lapsed (a node link
    /// closed, a probe failed) or was never made (at start).
    all_stale: bool,
    /// Consecutive failed resyncs, for the backoff.
    failures: u32,
}

impl Task {
    pub(super) async fn run(mut self) {
        let mut subs = Subscriptions {
            all_stale: true,
            ..Subscriptions::default()
        };
        let mut next_check = Instant::now();
        loop {
            tokio::select! {
                // Pushes first: a subscription change Redis already sent is seen before the
                // commands that follow it.
                biased;
                () = self.stop.cancelled() => return,
                push = self.pushes.recv() => {
                    let Some(push) = push else { return };
                    let Some(engine) = self.engine.upgrade() else { return };
                    if self.on_push(&engine, &push, &mut subs) {
                        next_check = next_check.min(Instant::now() + backoff(subs.failures));
                    }
                }
                command = self.commands.recv() => {
                    let Some(first) = command else { return };
                    let Some(engine) = self.engine.upgrade() else { return };
                    self.on_commands(&engine, first, &mut subs).await;
                }
                () = tokio::time::sleep_until(next_check) => {
                    let Some(engine) = self.engine.upgrade() else { return };
                    next_check = self.check(&engine, &mut subs).await;
                }
            }
        }
    }

    /// Handles one push message; returns whether a subscription became stale.
    fn on_push(&self, engine: &RedisEngine, push: &PushInfo, subs: &mut Subscriptions) -> bool {
        match push.kind {
            PushKind::SMessage => {
                let (Some(name), Some(payload)) = (
                    push.data.first().and_then(text),
                    push.data.get(1).and_then(bytes),
                ) else {
                    return false;
                };
                self.alive.store(super::unix_ms(), Ordering::Relaxed);
                if let Some(channel) = engine.channel_of(name) {
                    engine.on_channel_message(channel, payload);
                } else if name == engine.control_channel() {
                    let _ = self.control.send(Bytes::copy_from_slice(payload));
                }
                false
            }
            PushKind::SUnsubscribe => {
                let Some(name) = push.data.first().and_then(text) else {
                    return false;
                };
                if name == engine.control_channel() {
                    warn!("redis cluster dropped the control subscription; resubscribing");
                    self.mark_all_stale(subs);
                    return true;
                }
                // Our own unsubscribes are removed from `subscribed` before they are sent, so
                // a confirmation of one finds nothing here.
                let Some(channel) = engine.channel_of(name) else {
                    return false;
                };
                if subs.subscribed.remove(channel) && engine.is_local_channel(channel) {
                    debug!(channel, "redis cluster dropped a subscription (slot moved)");
                    subs.stale.insert(channel.to_owned());
                    return true;
                }
                false
            }
            PushKind::Disconnection => {
                if !subs.all_stale {
                    warn!("redis cluster pub/sub link lost");
                }
                self.mark_all_stale(subs);
                true
            }
            _ => false,
        }
    }

    /// Subscribes and unsubscribes a batch of queued commands.
    async fn on_commands(
        &mut self,
        engine: &RedisEngine,
        first: Command,
        subs: &mut Subscriptions,
    ) {
        let mut batch = vec![first];
        while batch.len() < SUBSCRIBE_BATCH
            && let Ok(more) = self.commands.try_recv()
        {
            batch.push(more);
        }
        let mut waiting: HashMap<String, Vec<oneshot::Sender<Result<(), BrokerError>>>> =
            HashMap::new();
        let mut to_unsubscribe = Vec::new();
        for command in batch {
            match command {
                Command::Subscribe { channel, reply } => {
                    let live = !subs.all_stale
                        && subs.subscribed.contains(&channel)
                        && !subs.stale.contains(&channel);
                    if live {
                        let _ = reply.send(Ok(()));
                    } else {
                        waiting.entry(channel).or_default().push(reply);
                    }
                }
                Command::Unsubscribe { channel } => {
                    if !engine.is_local_channel(&channel) && subs.subscribed.remove(&channel) {
                        subs.stale.remove(&channel);
                        to_unsubscribe.push(channel);
                    }
                }
            }
        }
        let timeout = engine.command_deadline();
        if !to_unsubscribe.is_empty() {
            let names = to_unsubscribe
                .iter()
                .map(|c| engine.pubsub_channel(c))
                .collect();
            for (names, outcome) in self.by_slot(Op::Unsubscribe, names, timeout).await {
                if let Err(error) = outcome {
                    // The subscription outlives its use at worst: messages of a channel
                    // without local subscribers are dropped on arrival.
                    debug!(%error, channels = names.len(), "redis sunsubscribe failed");
                }
            }
        }
        if waiting.is_empty() {
            return;
        }
        let names = waiting.keys().map(|c| engine.pubsub_channel(c)).collect();
        for (names, outcome) in self.by_slot(Op::Subscribe, names, timeout).await {
            for name in names {
                let Some(channel) = engine.channel_of(&name) else {
                    continue;
                };
                if outcome.is_ok() {
                    subs.subscribed.insert(channel.to_owned());
                }
                for reply in waiting.remove(channel).unwrap_or_default() {
                    let _ = reply.send(outcome.clone());
                }
            }
        }
    }

    /// Resubscribes what is stale, or probes when nothing is; returns when to check next.
    async fn check(&self, engine: &RedisEngine, subs: &mut Subscriptions) -> Instant {
        if subs.all_stale || !subs.stale.is_empty() {
            if let Err(error) = self.resync(engine, subs).await {
                subs.failures = subs.failures.saturating_add(1);
                let delay = backoff(subs.failures);
                debug!(%error, ?delay, "redis cluster resubscribe failed");
                return Instant::now() + delay;
            }
            if subs.failures > 0 {
                info!("redis cluster pub/sub resubscribed");
            }
            subs.failures = 0;
        } else if let Err(error) = self.probe(engine).await {
            warn!(%error, "redis cluster pub/sub probe failed");
            self.mark_all_stale(subs);
            return Instant::now() + backoff(subs.failures);
        }
        Instant::now() + PROBE_INTERVAL
    }

    /// Subscribes the stale channels again (all of them, and the control channel, after a
    /// disconnection), then reports lost continuity for them.
    async fn resync(&self, engine: &RedisEngine, subs: &mut Subscriptions) -> Result<(), String> {
        let timeout = engine.command_deadline();
        let all = subs.all_stale;
        let channels: Vec<String> = if all {
            // Readiness means every master answers, not only those that hold our channels.
            self.probe(engine).await?;
            engine.channels_of_shard(0)
        } else {
            subs.stale
                .iter()
                .filter(|c| engine.is_local_channel(c))
                .cloned()
                .collect()
        };
        if all {
            let control = engine.control_channel();
            self.by_slot(Op::Subscribe, vec![control], timeout)
                .await
                .into_iter()
                .try_for_each(|(_, outcome)| outcome)
                .map_err(|e| e.to_string())?;
        }
        let names = channels.iter().map(|c| engine.pubsub_channel(c)).collect();
        self.by_slot(Op::Subscribe, names, timeout)
            .await
            .into_iter()
            .try_for_each(|(_, outcome)| outcome)
            .map_err(|e| e.to_string())?;
        if all {
            subs.subscribed = channels.iter().cloned().collect();
            subs.all_stale = false;
            subs.stale.clear();
            self.up.store(true, Ordering::Relaxed);
            self.alive.store(super::unix_ms(), Ordering::Relaxed);
        } else {
            for channel in &channels {
                subs.stale.remove(channel);
                subs.subscribed.insert(channel.clone());
            }
            // Stale channels that lost their last local subscriber meanwhile need nothing.
            subs.stale.retain(|c| engine.is_local_channel(c));
        }
        engine.lost_continuity(&channels);
        Ok(())
    }

    /// PINGs every master over the Pub/Sub connection.
    async fn probe(&self, engine: &RedisEngine) -> Result<(), String> {
        let mut conn = self.conn.clone();
        let routing = RoutingInfo::MultiNode((
            MultipleNodeRoutingInfo::AllMasters,
            Some(ResponsePolicy::AllSucceeded),
        ));
        match tokio::time::timeout(
            engine.command_deadline(),
            conn.route_command(redis::cmd("PING"), routing),
        )
        .await
        {
            Ok(Ok(_)) => {
                self.alive.store(super::unix_ms(), Ordering::Relaxed);
                Ok(())
            }
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("ping timed out".to_owned()),
        }
    }

    fn mark_all_stale(&self, subs: &mut Subscriptions) {
        subs.all_stale = true;
        self.up.store(false, Ordering::Relaxed);
    }

    /// Runs `op` on Pub/Sub channel names, one command per slot (and per
    /// [`SUBSCRIBE_BATCH`] names), [`CONCURRENCY`] at a time; returns each group's outcome.
    async fn by_slot(
        &self,
        op: Op,
        names: Vec<String>,
        timeout: Duration,
    ) -> Vec<(Vec<String>, Result<(), BrokerError>)> {
        let mut groups: HashMap<Slot, Vec<String>> = HashMap::new();
        for name in names {
            groups.entry(Slot::for_key(&name)).or_default().push(name);
        }
        let batches = groups.into_values().flat_map(|group| {
            group
                .chunks(SUBSCRIBE_BATCH)
                .map(<[String]>::to_vec)
                .collect::<Vec<_>>()
        });
        futures_util::stream::iter(batches)
            .map(|batch| {
                let mut conn = self.conn.clone();
                async move {
                    let sent = match op {
                        Op::Subscribe => {
                            tokio::time::timeout(timeout, conn.ssubscribe(&batch)).await
                        }
                        Op::Unsubscribe => {
                            tokio::time::timeout(timeout, conn.sunsubscribe(&batch)).await
                        }
                    };
                    let outcome = match sent {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(error)) => Err(BrokerError::Unavailable(error.to_string())),
                        Err(_) => Err(BrokerError::Unavailable(
                            "redis subscription command timed out".to_owned(),
                        )),
                    };
                    (batch, outcome)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await
    }
}

/// A subscription command.
#[derive(Clone, Copy, Debug)]
enum Op {
    Subscribe,
    Unsubscribe,
}

fn bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(b) => Some(b),
        _ => None,
    }
}

fn text(value: &Value) -> Option<&str> {
    std::str::from_utf8(bytes(value)?).ok()
}

/// Channels per `SSUBSCRIBE` command (all of one slot) and commands drained per round.
const SUBSCRIBE_BATCH: usize = 512;
/// Subscription commands in flight at once while resubscribing.
const CONCURRENCY: usize = 64;
/// How often an idle Pub/Sub connection is checked with a PING to every master.
const PROBE_INTERVAL: Duration = Duration::from_secs(3);
