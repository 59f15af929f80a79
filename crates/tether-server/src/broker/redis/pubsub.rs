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
//! Ends when the engine is dropped or its stop token is cancelled.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use rand::Rng;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::WeakEngine;
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

/// The task of one shard.
pub(super) struct Task {
    pub(super) engine: WeakEngine,
    pub(super) shard: usize,
    pub(super) client: redis::Client,
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
}

/// Why a connected session of the task ended.
enum End {
    Stopped,
    Lost,
}

impl Task {
    pub(super) async fn run(mut self) {
        let mut failures: u32 = 0;
        loop {
            match self.connect().await {
                Some(connected) => {
                    if failures > 0 {
                        info!(shard = self.shard, "redis pub/sub reconnected");
                    }
                    failures = 0;
                    match self.serve(connected).await {
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
        let pubsub = match tokio::time::timeout(timeout, self.client.get_async_pubsub()).await {
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
        })
    }

    /// Runs one connected session until the connection fails or the engine stops.
    async fn serve(&mut self, connected: Connected) -> End {
        let Connected {
            mut sink,
            mut stream,
            mut subscribed,
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
