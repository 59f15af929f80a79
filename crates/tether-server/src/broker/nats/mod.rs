//! The NATS broker: fan-out between nodes and the cluster control channel over NATS core
//! subjects, for deployments that already run NATS. No history, no stream positions: NATS
//! core delivers at most once and keeps nothing (see `codec` for the subjects and payloads).
//!
//! # Tasks
//!
//! One NATS connection per node ([`async_nats::Client`], which reconnects by itself and
//! re-sends every subscription after a reconnect). Around it:
//!
//! - the *manager* task owns subscribe and unsubscribe: requests queued together become one
//!   batch of `SUB`s followed by one barrier (a token published to this node's own sync
//!   subject and read back), so a request is answered only once the NATS server has
//!   registered the subscription and every publication after it reaches this node (through
//!   that server: in a NATS cluster, interest reaches the other servers asynchronously);
//! - one *reader* task per channel with local subscribers, owning that channel's NATS
//!   subscription and handing its messages, in order, to [`BrokerEvents`]; cancelling it drops
//!   the subscription (an `UNSUB`);
//! - the *control* task, forwarding `{prefix}.control` and `{prefix}.node.{id}` payloads to
//!   the node's [`ControlReceiver`].
//!
//! Channels are reference counted like in the Redis engine: the NATS subscription exists while
//! at least one local subscription does. A publish while the connection is down fails
//! ([`BrokerError::Unavailable`]) instead of being queued for a later that may not come; after
//! a reconnect or a slow-consumer drop, every local channel is reported as
//! [`BrokerEvents::on_insufficient_state`].

mod codec;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{Client, Event, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::codec::{ChannelMessage, SubjectError};
use super::{
    BrokerError, BrokerEvents, ClientInfo, ControlReceiver, Publication, PublicationEvent,
};

/// How to reach NATS and name subjects. Built by the server from `broker.nats.*`.
#[derive(Clone, Debug)]
pub(crate) struct NatsOptions {
    /// `nats://host:port`.
    pub url: String,
    /// First token(s) of every subject, so deployments (or tests) can share one NATS.
    pub prefix: String,
    /// Limit on establishing the connection (at start and on every reconnect).
    pub dial_timeout: Duration,
    /// Limit on handing one message to the connection, and on a subscribe's round trip.
    pub write_timeout: Duration,
    /// This node's id: its `{prefix}.node.{id}` control subject and its sync subject.
    pub node_id: String,
}

/// The NATS broker. Clone = handle clone.
#[derive(Clone)]
pub(crate) struct NatsBroker {
    shared: Arc<Shared>,
}

struct Shared {
    options: NatsOptions,
    client: Client,
    events: Arc<dyn BrokerEvents>,
    /// Local subscriptions per channel; the NATS subscription goes with the last.
    refs: Mutex<HashMap<String, usize>>,
    /// Requests for the manager task.
    manager: mpsc::UnboundedSender<Command>,
    /// Stops every task of the broker when the last handle goes.
    stop: CancellationToken,
}

/// A request for the manager task.
#[derive(Debug)]
enum Command {
    /// Make sure the channel's subject is subscribed; answer once messages flow.
    Subscribe {
        channel: String,
        subject: String,
        reply: oneshot::Sender<Result<(), BrokerError>>,
    },
    /// The channel lost its last local subscriber (unsubscribe unless it has a new one).
    Unsubscribe { channel: String },
    /// The connection came back or dropped messages: channels may have missed some.
    LostContinuity,
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum NatsStartError {
    /// The server did not accept a connection within the dial timeout.
    #[error("cannot connect to nats at {url}: {message}")]
    Connect {
        /// The configured URL.
        url: String,
        /// The client library's message.
        message: String,
    },
    /// A control subject could not be subscribed.
    #[error("cannot subscribe the nats control subjects: {0}")]
    Subscribe(String),
}

impl NatsBroker {
    /// Connects (failing when NATS does not answer within the dial timeout), subscribes the
    /// control subjects and starts the background tasks. Must be called inside a Tokio
    /// runtime.
    pub(crate) async fn start(
        options: NatsOptions,
        events: Arc<dyn BrokerEvents>,
    ) -> Result<(Self, ControlReceiver), NatsStartError> {
        let (notify_tx, notify_rx) = mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::new()
            .name(format!("tether {}", options.node_id))
            .connection_timeout(options.dial_timeout)
            .max_reconnects(None)
            .reconnect_delay_callback(backoff)
            .event_callback(move |event| {
                let notify = notify_tx.clone();
                async move {
                    let _ = notify.send(event);
                }
            })
            .connect(options.url.as_str())
            .await
            .map_err(|e| NatsStartError::Connect {
                url: options.url.clone(),
                message: e.to_string(),
            })?;
        let subscribe_error =
            |e: async_nats::SubscribeError| NatsStartError::Subscribe(e.to_string());
        let control = client
            .subscribe(codec::control_subject(&options.prefix))
            .await
            .map_err(subscribe_error)?;
        let addressed = client
            .subscribe(codec::node_subject(&options.prefix, &options.node_id))
            .await
            .map_err(subscribe_error)?;
        let sync = client
            .subscribe(codec::sync_subject(&options.prefix, &options.node_id))
            .await
            .map_err(subscribe_error)?;
        let stop = CancellationToken::new();
        let (manager_tx, manager_rx) = mpsc::unbounded_channel();
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let broker = Self {
            shared: Arc::new(Shared {
                options,
                client,
                events,
                refs: Mutex::new(HashMap::new()),
                manager: manager_tx,
                stop: stop.clone(),
            }),
        };
        tokio::spawn(forward_control(
            control,
            addressed,
            control_tx,
            stop.clone(),
        ));
        tokio::spawn(forward_connection_events(
            notify_rx,
            broker.shared.manager.clone(),
            stop.clone(),
        ));
        let manager = Manager {
            broker: Arc::downgrade(&broker.shared),
            commands: manager_rx,
            sync,
            next_token: 0,
            readers: HashMap::new(),
            stop,
        };
        tokio::spawn(manager.run());
        info!(url = %broker.shared.options.url, "nats broker connected");
        Ok((broker, control_rx))
    }

    /// Publishes to every node's subscribers of the channel (this node's included, through
    /// NATS like everyone else's so that they see one order).
    pub(crate) async fn publish(
        &self,
        channel: &str,
        publication: &Publication,
    ) -> Result<(), BrokerError> {
        let subject = self.subject(channel)?;
        self.send(subject, codec::publication_message(channel, publication))
            .await
    }

    /// Announces a join to the channel's subscribers on every node.
    pub(crate) async fn publish_join(
        &self,
        channel: &str,
        info: &ClientInfo,
    ) -> Result<(), BrokerError> {
        let subject = self.subject(channel)?;
        self.send(subject, codec::join_message(channel, info)).await
    }

    /// Announces a leave to the channel's subscribers on every node.
    pub(crate) async fn publish_leave(
        &self,
        channel: &str,
        info: &ClientInfo,
    ) -> Result<(), BrokerError> {
        let subject = self.subject(channel)?;
        self.send(subject, codec::leave_message(channel, info))
            .await
    }

    /// One more local subscription to `channel`; returns once the NATS server registered the
    /// subscription (see the module doc).
    pub(crate) async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let subject = self.subject(channel)?;
        *self
            .shared
            .refs
            .lock()
            .entry(channel.to_owned())
            .or_default() += 1;
        let (reply, confirmed) = oneshot::channel();
        let sent = self.shared.manager.send(Command::Subscribe {
            channel: channel.to_owned(),
            subject,
            reply,
        });
        // The manager answers within its own barrier timeout; the margin covers a queue.
        let deadline = self.shared.options.write_timeout * 2 + self.shared.options.dial_timeout;
        let outcome =
            super::subscribe_confirmed(sent.is_ok(), confirmed, deadline, "nats broker").await;
        if outcome.is_err() {
            self.release(channel);
        }
        outcome
    }

    /// One local subscription fewer; the NATS subscription goes with the last.
    pub(crate) async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.release(channel);
        Ok(())
    }

    /// Publishes a cluster control payload: to every node (this one included) when `node` is
    /// `None`, else to that node only.
    pub(crate) async fn publish_control(
        &self,
        payload: Bytes,
        node: Option<&str>,
    ) -> Result<(), BrokerError> {
        let prefix = &self.shared.options.prefix;
        let subject = match node {
            None => codec::control_subject(prefix),
            Some(id) => codec::node_subject(prefix, id),
        };
        self.send(subject, payload.to_vec()).await
    }

    /// The connection to NATS is up.
    pub(crate) fn is_ready(&self) -> bool {
        self.shared.client.connection_state() == State::Connected
    }

    /// Writes out what the connection still buffers (at most the write timeout).
    pub(crate) async fn flush(&self) {
        let flush = self.shared.client.flush();
        match tokio::time::timeout(self.shared.options.write_timeout, flush).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => debug!(%error, "nats flush failed"),
            Err(_) => debug!("nats flush timed out"),
        }
    }

    // === internals ===

    fn subject(&self, channel: &str) -> Result<String, BrokerError> {
        codec::channel_subject(&self.shared.options.prefix, channel).map_err(|e| match e {
            SubjectError::Wildcard | SubjectError::Invalid => BrokerError::UnsupportedChannel,
        })
    }

    /// Hands one message to the connection; refused while the connection is down, so a
    /// publish never reports a success that only a later reconnect could make true.
    async fn send(&self, subject: String, payload: Vec<u8>) -> Result<(), BrokerError> {
        if !self.is_ready() {
            return Err(down());
        }
        let publish = self.shared.client.publish(subject, Bytes::from(payload));
        match tokio::time::timeout(self.shared.options.write_timeout, publish).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => {
                debug!(%error, "nats publish failed");
                Err(BrokerError::Unavailable(error.to_string()))
            }
            Err(_) => Err(BrokerError::Unavailable(
                "nats publish timed out".to_owned(),
            )),
        }
    }

    fn release(&self, channel: &str) {
        let mut refs = self.shared.refs.lock();
        let Some(count) = refs.get_mut(channel) else {
            return;
        };
        *count = count.saturating_sub(1);
        if *count == 0 {
            refs.remove(channel);
            drop(refs);
            let _ = self.shared.manager.send(Command::Unsubscribe {
                channel: channel.to_owned(),
            });
        }
    }
}

impl fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBroker")
            .field("url", &self.shared.options.url)
            .field("prefix", &self.shared.options.prefix)
            .finish_non_exhaustive()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The task that owns the per-channel subscriptions (see the module doc).
struct Manager {
    broker: Weak<Shared>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// This node's sync subject, read only by the barrier.
    sync: Subscriber,
    next_token: u64,
    /// Channels subscribed on NATS, each with its reader task's cancel token.
    readers: HashMap<String, CancellationToken>,
    stop: CancellationToken,
}

impl Manager {
    async fn run(mut self) {
        loop {
            let first = tokio::select! {
                () = self.stop.cancelled() => break,
                command = self.commands.recv() => match command {
                    Some(command) => command,
                    None => break,
                },
            };
            let mut batch = vec![first];
            while batch.len() < SUBSCRIBE_BATCH
                && let Ok(more) = self.commands.try_recv()
            {
                batch.push(more);
            }
            self.handle(batch).await;
        }
        debug!("nats broker stopped: subscription manager ends");
        for (_, reader) in self.readers.drain() {
            reader.cancel();
        }
    }

    async fn handle(&mut self, batch: Vec<Command>) {
        let Some(shared) = self.broker.upgrade() else {
            return;
        };
        let mut waiting = Vec::new();
        let mut lost = false;
        for command in batch {
            match command {
                Command::Subscribe {
                    channel,
                    subject,
                    reply,
                } => {
                    if !self.readers.contains_key(&channel) {
                        match shared.client.subscribe(subject).await {
                            Ok(subscriber) => {
                                let cancel = self.stop.child_token();
                                tokio::spawn(read_channel(
                                    Arc::downgrade(&shared),
                                    channel.clone(),
                                    subscriber,
                                    cancel.clone(),
                                ));
                                self.readers.insert(channel, cancel);
                            }
                            Err(error) => {
                                debug!(%error, channel, "nats subscribe failed");
                                let _ =
                                    reply.send(Err(BrokerError::Unavailable(error.to_string())));
                                continue;
                            }
                        }
                    }
                    waiting.push(reply);
                }
                Command::Unsubscribe { channel } => {
                    if !shared.refs.lock().contains_key(&channel)
                        && let Some(reader) = self.readers.remove(&channel)
                    {
                        reader.cancel();
                    }
                }
                Command::LostContinuity => lost = true,
            }
        }
        if !waiting.is_empty() {
            let outcome = self.barrier(&shared).await;
            for reply in waiting {
                let _ = reply.send(outcome.clone());
            }
        }
        if lost {
            let channels: Vec<String> = self.readers.keys().cloned().collect();
            for channel in channels {
                shared.events.on_insufficient_state(&channel);
            }
        }
    }

    /// Waits until the NATS server has processed everything this node sent before: a token
    /// published on this node's sync subject comes back only after the server registered
    /// the subscriptions sent ahead of it on the same connection.
    async fn barrier(&mut self, shared: &Shared) -> Result<(), BrokerError> {
        self.next_token += 1;
        let token = self.next_token;
        let subject = codec::sync_subject(&shared.options.prefix, &shared.options.node_id);
        if !matches!(shared.client.connection_state(), State::Connected) {
            return Err(down());
        }
        let publish = shared
            .client
            .publish(subject, Bytes::copy_from_slice(&token.to_be_bytes()));
        let deadline = tokio::time::Instant::now() + shared.options.write_timeout;
        match tokio::time::timeout_at(deadline, publish).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(BrokerError::Unavailable(error.to_string())),
            Err(_) => {
                return Err(BrokerError::Unavailable(
                    "nats publish timed out".to_owned(),
                ));
            }
        }
        loop {
            match tokio::time::timeout_at(deadline, self.sync.next()).await {
                Ok(Some(message)) => {
                    // Tokens of barriers that timed out earlier arrive late: skip them.
                    if message.payload.as_ref() == token.to_be_bytes() {
                        return Ok(());
                    }
                }
                Ok(None) => return Err(stopped()),
                Err(_) => {
                    return Err(BrokerError::Unavailable(
                        "nats subscribe was not confirmed in time".to_owned(),
                    ));
                }
            }
        }
    }
}

/// Hands one channel's messages to the events, in order, until cancelled.
async fn read_channel(
    broker: Weak<Shared>,
    channel: String,
    mut subscriber: Subscriber,
    cancel: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            () = cancel.cancelled() => return,
            message = subscriber.next() => match message {
                Some(message) => message,
                None => return,
            },
        };
        let Some(shared) = broker.upgrade() else {
            return;
        };
        let events = &shared.events;
        match codec::decode_message(&channel, &message.payload) {
            Some(ChannelMessage::Publication(publication)) => {
                let event = PublicationEvent {
                    publication,
                    position: None,
                    previous: None,
                };
                events.on_publication(&channel, &event);
            }
            Some(ChannelMessage::Join(info)) => events.on_join(&channel, &info),
            Some(ChannelMessage::Leave(info)) => events.on_leave(&channel, &info),
            None => warn!(channel, "undecodable nats message ignored"),
        }
    }
}

/// Forwards the control subjects' payloads to the node until the broker stops.
async fn forward_control(
    mut every: Subscriber,
    mut addressed: Subscriber,
    to: mpsc::UnboundedSender<Bytes>,
    stop: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return,
            message = every.next() => message,
            message = addressed.next() => message,
        };
        let Some(message) = message else {
            return;
        };
        if to.send(message.payload).is_err() {
            return;
        }
    }
}

/// Logs the connection's events and turns the ones that may have lost messages into a
/// [`Command::LostContinuity`].
async fn forward_connection_events(
    mut events: mpsc::UnboundedReceiver<Event>,
    manager: mpsc::UnboundedSender<Command>,
    stop: CancellationToken,
) {
    let mut seen_disconnect = false;
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            event = events.recv() => match event {
                Some(event) => event,
                None => return,
            },
        };
        let lost = match &event {
            Event::Disconnected => {
                warn!("nats connection lost");
                seen_disconnect = true;
                false
            }
            Event::Connected => {
                if seen_disconnect {
                    info!("nats reconnected");
                }
                std::mem::take(&mut seen_disconnect)
            }
            Event::SlowConsumer(sid) => {
                warn!(sid, "nats dropped messages of a slow subscription");
                true
            }
            other => {
                debug!(event = %other, "nats connection event");
                false
            }
        };
        if lost && manager.send(Command::LostContinuity).is_err() {
            return;
        }
    }
}

fn down() -> BrokerError {
    BrokerError::Unavailable("nats connection is down".to_owned())
}

fn stopped() -> BrokerError {
    BrokerError::Unavailable("nats broker stopped".to_owned())
}

/// Reconnect delay after `attempts` failures: capped exponential with full jitter, so nodes
/// that lost NATS together do not come back in lock-step.
fn backoff(attempts: usize) -> Duration {
    let exponent = u32::try_from(attempts.min(6)).unwrap_or(6);
    let cap = BACKOFF_BASE.saturating_mul(1 << exponent).min(BACKOFF_MAX);
    let millis = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
}

/// Subscribe requests handled per batch (one barrier each).
const SUBSCRIBE_BATCH: usize = 512;
const BACKOFF_BASE: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        for attempts in [0, 1, 5, 100, usize::MAX] {
            let delay = backoff(attempts);
            assert!(delay <= BACKOFF_MAX, "{attempts}: {delay:?}");
            assert!(delay >= BACKOFF_BASE / 2, "{attempts}: {delay:?}");
        }
    }
}
