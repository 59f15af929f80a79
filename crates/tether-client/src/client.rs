//! The public handles: [`Client`], [`Subscription`], and their event streams.
//!
//! Handles are cheap clones that send requests to the client's driver task; states are
//! read from a mirror the core keeps current. Events arrive on unbounded streams so the
//! protocol never waits on the app (and never drops a publication because the app was
//! slow); read them promptly.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::core::{Call, Core, Op, Outcome, Request, Shared};
use crate::link::Endpoint;
use crate::{
    ClientConfig, ClientEvent, ClientInfo, Error, HistoryOptions, HistoryResult, PresenceStats,
    State, SubscriptionConfig, SubscriptionEvent, SubscriptionState,
};

/// A connection to tether (or Centrifugo) that reconnects, resubscribes and recovers by
/// itself. Clone = another handle to the same connection.
///
/// ```no_run
/// use tether_client::{Client, ClientConfig, ClientEvent, SubscriptionConfig, SubscriptionEvent};
///
/// # async fn demo() -> Result<(), tether_client::Error> {
/// let config = ClientConfig { token: Some("<jwt>".to_owned()), ..ClientConfig::default() };
/// let (client, mut events) = Client::new("tcp://127.0.0.1:8001", config)?;
/// let (sub, mut sub_events) = client.new_subscription("chat:lobby", SubscriptionConfig::default())?;
/// sub.subscribe();
/// client.connect();
/// // Calls made while connecting wait for the connection.
/// client.publish("chat:lobby", r#"{"text":"hi"}"#).await?;
/// while let Some(event) = sub_events.next().await {
///     match event {
///         SubscriptionEvent::Publication(p) => println!("{}", String::from_utf8_lossy(&p.data)),
///         SubscriptionEvent::Subscribed { recovered, was_recovering, .. } if was_recovering && !recovered => {
///             println!("missed publications: reload state");
///         }
///         _ => {}
///     }
/// }
/// # let _ = events.next().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
    /// Timeout of calls made through this handle.
    timeout: Duration,
}

#[derive(Debug)]
struct Inner {
    requests: mpsc::UnboundedSender<Request>,
    shared: Arc<Shared>,
}

/// The connection's events, in order. Also a [`Stream`].
#[derive(Debug)]
pub struct ClientEvents(mpsc::UnboundedReceiver<ClientEvent>);

/// A subscription to one channel. Clone = another handle to the same subscription.
#[derive(Clone, Debug)]
pub struct Subscription {
    client: Client,
    channel: Arc<str>,
    state: Arc<Mutex<SubscriptionState>>,
}

/// A subscription's events, in order. Also a [`Stream`].
#[derive(Debug)]
pub struct SubscriptionEvents(mpsc::UnboundedReceiver<SubscriptionEvent>);

// === impl Client ===

impl Client {
    /// A client for `url` (`ws://host:port/connection/websocket` or `tcp://host:port`), not
    /// yet connected: call [`Client::connect`]. Must be called inside a Tokio runtime (it
    /// spawns the client's driver task, which ends when every handle is dropped).
    pub fn new(url: &str, config: ClientConfig) -> Result<(Self, ClientEvents), Error> {
        let endpoint = Endpoint::parse(url)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::no_runtime())?;
        let shared = Arc::new(Shared::new());
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (requests_tx, requests_rx) = mpsc::unbounded_channel();
        let timeout = config.call_timeout;
        let connect_timeout = config.connect_timeout;
        let core = Core::new(config, shared.clone(), events_tx, Instant::now());
        runtime.spawn(crate::driver::run(
            core,
            endpoint,
            requests_rx,
            connect_timeout,
        ));
        let client = Self {
            inner: Arc::new(Inner {
                requests: requests_tx,
                shared,
            }),
            timeout,
        };
        Ok((client, ClientEvents(events_rx)))
    }

    /// Starts connecting (and keeps reconnecting until [`Client::disconnect`] or a terminal
    /// disconnect code). Does nothing when already connecting or connected.
    pub fn connect(&self) {
        self.request(Request::Connect);
    }

    /// Disconnects and stops reconnecting. Waiting calls fail with [`Error::is_closed`];
    /// subscriptions go back to subscribing and resume after the next [`Client::connect`].
    pub fn disconnect(&self) {
        self.request(Request::Disconnect);
    }

    /// The connection state now.
    pub fn state(&self) -> State {
        *self.inner.shared.state.lock()
    }

    /// A handle to the same client whose calls time out after `timeout` instead of
    /// [`ClientConfig::call_timeout`].
    ///
    /// ```no_run
    /// # async fn demo(client: tether_client::Client) -> Result<(), tether_client::Error> {
    /// use std::time::Duration;
    /// client.with_timeout(Duration::from_millis(500)).publish("news", "{}").await?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self {
            inner: self.inner.clone(),
            timeout,
        }
    }

    /// A subscription to `channel`, not yet subscribed: call [`Subscription::subscribe`].
    /// One subscription per channel and client.
    pub fn new_subscription(
        &self,
        channel: &str,
        config: SubscriptionConfig,
    ) -> Result<(Subscription, SubscriptionEvents), Error> {
        let state = Arc::new(Mutex::new(SubscriptionState::Unsubscribed));
        {
            let mut subs = self.inner.shared.subs.lock();
            if subs.contains_key(channel) {
                return Err(Error::duplicate_subscription(channel));
            }
            subs.insert(channel.to_owned(), state.clone());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        self.request(Request::AddSubscription {
            channel: channel.to_owned(),
            config,
            events: tx,
            state: state.clone(),
        });
        let sub = Subscription {
            client: self.clone(),
            channel: Arc::from(channel),
            state,
        };
        Ok((sub, SubscriptionEvents(rx)))
    }

    /// Publishes `data` into `channel`.
    pub async fn publish(&self, channel: &str, data: impl Into<Bytes>) -> Result<(), Error> {
        let op = Op::Publish {
            channel: channel.to_owned(),
            data: data.into(),
        };
        match self.call(op).await? {
            Outcome::Published => Ok(()),
            _ => Err(Error::protocol()),
        }
    }

    /// A page of `channel`'s history.
    pub async fn history(
        &self,
        channel: &str,
        options: HistoryOptions,
    ) -> Result<HistoryResult, Error> {
        let op = Op::History {
            channel: channel.to_owned(),
            options,
        };
        match self.call(op).await? {
            Outcome::History(result) => Ok(result),
            _ => Err(Error::protocol()),
        }
    }

    /// Who is in `channel`: client id -> client info.
    pub async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, Error> {
        let op = Op::Presence {
            channel: channel.to_owned(),
        };
        match self.call(op).await? {
            Outcome::Presence(result) => Ok(result),
            _ => Err(Error::protocol()),
        }
    }

    /// How many clients and users are in `channel`.
    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, Error> {
        let op = Op::PresenceStats {
            channel: channel.to_owned(),
        };
        match self.call(op).await? {
            Outcome::PresenceStats(result) => Ok(result),
            _ => Err(Error::protocol()),
        }
    }

    /// Calls `method` on the server's RPC handler with `data`; returns its answer.
    pub async fn rpc(&self, method: &str, data: impl Into<Bytes>) -> Result<Bytes, Error> {
        let op = Op::Rpc {
            method: method.to_owned(),
            data: data.into(),
        };
        match self.call(op).await? {
            Outcome::Rpc(result) => Ok(result),
            _ => Err(Error::protocol()),
        }
    }

    async fn call(&self, op: Op) -> Result<Outcome, Error> {
        let deadline = Instant::now() + self.timeout;
        let (tx, rx) = oneshot::channel();
        let call = Call {
            op,
            deadline,
            reply: tx,
        };
        if self.inner.requests.send(Request::Call(call)).is_err() {
            return Err(Error::closed());
        }
        // The core enforces the deadline; the grace covers a driver busy opening a link.
        match tokio::time::timeout_at(deadline + CALL_GRACE, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::closed()),
            Err(_) => Err(Error::timeout()),
        }
    }

    fn request(&self, request: Request) {
        // The driver only stops once every handle is gone, so this cannot fail while `self`
        // exists; ignoring the result is safe.
        let _ = self.inner.requests.send(request);
    }
}

// === impl Subscription ===

impl Subscription {
    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The subscription state now.
    pub fn state(&self) -> SubscriptionState {
        *self.state.lock()
    }

    /// Starts subscribing (now if connected, else after connect) and keeps the subscription
    /// through reconnects until [`Subscription::unsubscribe`].
    pub fn subscribe(&self) {
        self.client
            .request(Request::Subscribe(self.channel.to_string()));
    }

    /// Unsubscribes and stops resubscribing.
    pub fn unsubscribe(&self) {
        self.client
            .request(Request::Unsubscribe(self.channel.to_string()));
    }

    /// Unsubscribes and forgets the subscription, so the channel can get a new one.
    pub fn remove(&self) {
        self.client
            .request(Request::RemoveSubscription(self.channel.to_string()));
    }

    /// Publishes into this channel (see [`Client::publish`]).
    pub async fn publish(&self, data: impl Into<Bytes>) -> Result<(), Error> {
        self.client.publish(&self.channel, data).await
    }

    /// This channel's history (see [`Client::history`]).
    pub async fn history(&self, options: HistoryOptions) -> Result<HistoryResult, Error> {
        self.client.history(&self.channel, options).await
    }

    /// This channel's presence (see [`Client::presence`]).
    pub async fn presence(&self) -> Result<HashMap<String, ClientInfo>, Error> {
        self.client.presence(&self.channel).await
    }

    /// This channel's presence counts (see [`Client::presence_stats`]).
    pub async fn presence_stats(&self) -> Result<PresenceStats, Error> {
        self.client.presence_stats(&self.channel).await
    }
}

// === event streams ===

impl ClientEvents {
    /// The next event; `None` once the client's driver stopped (every handle dropped).
    pub async fn next(&mut self) -> Option<ClientEvent> {
        self.0.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_next(&mut self) -> Option<ClientEvent> {
        self.0.try_recv().ok()
    }
}

impl Stream for ClientEvents {
    type Item = ClientEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

impl SubscriptionEvents {
    /// The next event; `None` once the subscription is removed or the driver stopped.
    pub async fn next(&mut self) -> Option<SubscriptionEvent> {
        self.0.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_next(&mut self) -> Option<SubscriptionEvent> {
        self.0.try_recv().ok()
    }
}

impl Stream for SubscriptionEvents {
    type Item = SubscriptionEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// Extra time a caller waits past its deadline for the core's own timeout answer.
const CALL_GRACE: Duration = Duration::from_secs(1);
