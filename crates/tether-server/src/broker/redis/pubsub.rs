//! One shard's Pub/Sub connection, owned by one task.
//!
//! The task holds the connection, the set of channels subscribed on it, and a queue of
//! commands from the engine. Subscribe requests queued together are sent as one `SUBSCRIBE`
//! (and unsubscribes as one `UNSUBSCRIBE`); a request is answered only after Redis confirmed
//! it. When the connection fails the task reconnects with capped exponential backoff and full
//! jitter, subscribes every local channel again in batches, and reports lost continuity for
//! them (their positioned subscribers must recover). While it is down, subscribe requests
//! fail at once instead of waiting: the client gets an error and retries.
//!
//! Behind Redis Sentinel the task asks the sentinels for the master on every connect, and a
//! session also ends when the sentinels name another master (see `sentinel`): it resubscribes
//! there at once, even while backing off, rather than keep a live connection to a demoted
//! master.
//!
//! Ends when the engine is dropped or its stop token is cancelled.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use rand::Rng;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::WeakEngine;
use super::sentinel::{Address, Master};
use crate::broker::BrokerError;

/// A request from the engine.
#[derive(Debug)]
pub(super) enum Command {
    /// Make sure the channel is subscribed; answer once it is.
    Subscribe {
        channel: String,
        reply: oneshot::Sender<Result<(), BrokerError>>,
    },
    /// The channel lost its last local subscriber (unsubscribe unless it has a new one).
    Unsubscribe { channel: String },
}

/// Where the task connects.
pub(super) enum Source {
    /// One standalone Redis.
    Fixed(Box<redis::Client>),
    /// Whichever server the sentinels name as the master.
    Sentinel(Arc<Master>),
}

/// The task of one shard.
pub(super) struct Task {
    pub(super) engine: WeakEngine,
    pub(super) shard: usize,
    pub(super) client: Source,
    pub(super) commands: mpsc::UnboundedReceiver<Command>,
    /// Set while connected with every local channel subscribed.
    pub(super) up: Arc<AtomicBool>,
    /// Unix milliseconds at which the connection last proved alive.
    pub(super) alive: Arc<AtomicU64>,
    /// Shard 0 also listens on the control channel and forwards its payloads here.
    pub(super) control: Option<mpsc::UnboundedSender<Bytes>>,
    pub(super) stop: CancellationToken,
}

/// A fresh connection with the local channels subscribed on it.
struct Connected {
    sink: PubSubSink,
    stream: PubSubStream,
    /// Channels (tether names) subscribed on this connection.
    subscribed: HashSet<String>,
    /// The master this connection is on, behind Redis Sentinel.
    master: Option<Address>,
}

/// Why a connected session of the task ended.
enum End {
    Stopped,
    Lost,
}

impl Task {
    pub(super) async fn run(mut self) {
        let mut failures: u32 = 0;
        let mut moved = match &self.client {
            Source::Fixed(_) => None,
            Source::Sentinel(master) => Some(master.moved()),
        };
        loop {
            match self.connect().await {
                Some(connected) => {
                    if failures > 0 {
                        info!(shard = self.shard, "redis pub/sub reconnected");
                    }
                    failures = 0;
                    match self.serve(connected, moved.as_mut()).await {
                        End::Stopped => return,
                        End::Lost => {
                            warn!(shard = self.shard, "redis pub/sub connection lost");
                        }
                    }
                }
                None => {
                    if self.engine.upgrade().is_none() || self.stop.is_cancelled() {
                        return;
                    }
                    failures = failures.saturating_add(1);
                }
            }
            self.up.store(false, Ordering::Relaxed);
            let delay = backoff(failures);
            debug!(
                shard = self.shard,
                ?delay,
                "redis pub/sub reconnect backoff"
            );
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            // Keep answering while down: subscribers get an error now rather than later.
            loop {
                tokio::select! {
                    () = self.stop.cancelled() => return,
                    () = &mut sleep => break,
                    // The sentinels name a new master: try it now.
                    () = changed(moved.as_mut()) => break,
                    command = self.commands.recv() => match command {
                        None => return,
                        Some(command) => refuse(command),
                    },
                }
            }
        }
    }

    /// Connects and subscribes the control channel and every local channel of this shard.
    async fn connect(&mut self) -> Option<Connected> {
        let engine = self.engine.upgrade()?;
        let timeout = engine.shared.options.connect_timeout + engine.shared.options.io_timeout;
        let (client, master) = match &self.client {
            Source::Fixed(client) => (client.as_ref().clone(), None),
            Source::Sentinel(master) => {
                match tokio::time::timeout(timeout, master.resolve_client()).await {
                    Ok(Ok((client, address))) => (client, Some(address)),
                    Ok(Err(error)) => {
                        debug!(shard = self.shard, %error, "redis sentinel: no master");
                        return None;
                    }
                    Err(_) => {
                        debug!(
                            shard = self.shard,
                            "redis sentinel: master lookup timed out"
                        );
                        return None;
                    }
                }
            }
        };
        let pubsub = match tokio::time::timeout(timeout, client.get_async_pubsub()).await {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(error)) => {
                debug!(shard = self.shard, %error, "redis pub/sub connect failed");
                return None;
            }
            Err(_) => {
                debug!(shard = self.shard, "redis pub/sub connect timed out");
                return None;
            }
        };
        let (mut sink, stream) = pubsub.split();
        let channels = engine.channels_of_shard(self.shard);
        let mut names: Vec<String> = channels
            .iter()
            .map(|channel| engine.pubsub_channel(channel))
            .collect();
        if self.control.is_some() {
            names.push(engine.control_channel());
        }
        for batch in names.chunks(SUBSCRIBE_BATCH) {
            match tokio::time::timeout(timeout, sink.subscribe(batch)).await {
                Ok(Ok(())) => {}
                _ => {
                    debug!(shard = self.shard, "redis resubscribe failed");
                    return None;
                }
            }
        }
        self.up.store(true, Ordering::Relaxed);
        self.alive.store(super::unix_ms(), Ordering::Relaxed);
        engine.lost_continuity(&channels);
        Some(Connected {
            sink,
            stream,
            subscribed: channels.into_iter().collect(),
            master,
        })
    }

    /// Runs one connected session until the connection fails or the engine stops.
    async fn serve(
        &mut self,
        connected: Connected,
        mut moved: Option<&mut watch::Receiver<Option<Address>>>,
    ) -> End {
        let Connected {
            mut sink,
            mut stream,
            mut subscribed,
            master,
        } = connected;
        let Some(engine) = self.engine.upgrade() else {
            return End::Stopped;
        };
        let timeout = engine.shared.options.io_timeout + engine.shared.options.connect_timeout;
        drop(engine);
        let mut probe = tokio::time::interval(PROBE_INTERVAL);
        probe.tick().await;
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return End::Stopped,
                () = changed(moved.as_deref_mut()) => {
                    let now = moved.as_deref_mut().and_then(|m| m.borrow_and_update().clone());
                    if now.is_some() && now != master {
                        info!(shard = self.shard, "redis sentinel: the master moved, resubscribing");
                        return End::Lost;
                    }
                }
                message = stream.next() => {
                    let Some(message) = message else { return End::Lost };
                    let Some(engine) = self.engine.upgrade() else { return End::Stopped };
                    self.alive.store(super::unix_ms(), Ordering::Relaxed);
                    let name = message.get_channel_name();
                    if let Some(channel) = engine.channel_of(name) {
                        engine.on_channel_message(channel, message.get_payload_bytes());
                    } else if let Some(control) = &self.control
                        && name == engine.control_channel()
                    {
                        let _ = control.send(Bytes::copy_from_slice(message.get_payload_bytes()));
                    }
                }
                command = self.commands.recv() => {
                    let Some(first) = command else { return End::Stopped };
                    let Some(engine) = self.engine.upgrade() else { return End::Stopped };
                    let mut batch = vec![first];
                    while batch.len() < SUBSCRIBE_BATCH
                        && let Ok(more) = self.commands.try_recv()
                    {
                        batch.push(more);
                    }
                    let mut to_subscribe = Vec::new();
                    let mut waiting = Vec::new();
                    let mut to_unsubscribe = Vec::new();
                    for command in batch {
                        match command {
                            Command::Subscribe { channel, reply } => {
                                if subscribed.contains(&channel) {
                                    let _ = reply.send(Ok(()));
                                } else {
                                    if !to_subscribe.contains(&channel) {
                                        to_subscribe.push(channel);
                                    }
                                    waiting.push(reply);
                                }
                            }
                            Command::Unsubscribe { channel } => {
                                if !engine.is_local_channel(&channel)
                                    && subscribed.contains(&channel)
                                    && !to_unsubscribe.contains(&channel)
                                {
                                    to_unsubscribe.push(channel);
                                }
                            }
                        }
                    }
                    if !to_unsubscribe.is_empty() {
                        let names: Vec<String> =
                            to_unsubscribe.iter().map(|c| engine.pubsub_channel(c)).collect();
                        match tokio::time::timeout(timeout, sink.unsubscribe(&names)).await {
                            Ok(Ok(())) => {
                                for channel in &to_unsubscribe {
                                    subscribed.remove(channel);
                                }
                            }
                            _ => {
                                refuse_all(waiting);
                                return End::Lost;
                            }
                        }
                    }
                    if !to_subscribe.is_empty() {
                        let names: Vec<String> =
                            to_subscribe.iter().map(|c| engine.pubsub_channel(c)).collect();
                        match tokio::time::timeout(timeout, sink.subscribe(&names)).await {
                            Ok(Ok(())) => {
                                subscribed.extend(to_subscribe);
                                for reply in waiting {
                                    let _ = reply.send(Ok(()));
                                }
                            }
                            _ => {
                                refuse_all(waiting);
                                return End::Lost;
                            }
                        }
                    }
                }
                _ = probe.tick() => {
                    // A half-open connection delivers nothing and reports nothing: ask.
                    // Any reply will do: a subscribed RESP2 connection answers PING with
                    // `["pong", ""]`, not `+PONG` (read as a string, every probe of a
                    // connection with subscriptions failed and dropped it every 3 s).
                    let alive = matches!(
                        tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await,
                        Ok(Ok(_))
                    );
                    if !alive {
                        return End::Lost;
                    }
                    self.alive.store(super::unix_ms(), Ordering::Relaxed);
                }
            }
        }
    }
}

/// Resolves when the watched value changes; never without a watch (or once its sender is
/// gone).
async fn changed(moved: Option<&mut watch::Receiver<Option<Address>>>) {
    if let Some(moved) = moved
        && moved.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

fn refuse(command: Command) {
    if let Command::Subscribe { reply, .. } = command {
        let _ = reply.send(Err(unavailable()));
    }
}

fn refuse_all(waiting: Vec<oneshot::Sender<Result<(), BrokerError>>>) {
    for reply in waiting {
        let _ = reply.send(Err(unavailable()));
    }
}

fn unavailable() -> BrokerError {
    BrokerError::Unavailable("redis pub/sub connection is down".to_owned())
}

/// Capped exponential backoff with full jitter: nodes that lost Redis together do not come
/// back in lock-step.
pub(super) fn backoff(failures: u32) -> Duration {
    let cap = BACKOFF_BASE
        .saturating_mul(1 << failures.min(6))
        .min(BACKOFF_MAX);
    let millis = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
}

/// Channels per `SUBSCRIBE` command (and commands drained per round).
const SUBSCRIBE_BATCH: usize = 512;
/// How often an idle Pub/Sub connection is checked with a PING.
pub(super) const PROBE_INTERVAL: Duration = Duration::from_secs(3);
const BACKOFF_BASE: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
