//! Lifecycle events for the backend, and the user status API's store.
//!
//! Sessions report what happens to a connection ([`Events::connected`],
//! [`Events::disconnected`], [`Events::subscribed`], [`Events::unsubscribed`]); the hub
//! reports a user's first and last connection and a channel's first and last subscriber on
//! this node through the [`Occupancy`](crate::hub::Occupancy) sink this module installs.
//! Neither waits: a report is queued, and one task per node (the *lifecycle worker*) takes
//! the queue in order, asks the engine's [`Lifecycle`] store what the node's transitions
//! mean for the whole cluster (`user_online`, `user_offline` after the grace,
//! `channel_occupied`, `channel_vacated`), and hands the events, still in order, to the
//! webhook's bounded buffer ([`webhook`]), whose own task POSTs them in batches.
//!
//! So events of one user leave this node in the order they happened, `user_online` before
//! that user's first `connect` and `user_offline` after the last `disconnect`. A store
//! that fails (Redis down) delays the queue behind it and loses nothing; a full buffer
//! drops, counts and logs.
//!
//! The user status API (`update_user_status` and friends) reads and writes the same store;
//! `online` is written when a user's first connection arrives and its last leaves here,
//! and every [`ONLINE_REFRESH`] for the users connected here, off the hot path.

mod webhook;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::broker::BrokerError;
use crate::broker::lifecycle::{Change, Decisions, Key, Lifecycle, Scope, StatusField, UserStatus};
use crate::config::{Config, EVENT_TYPES};
use crate::hub::{ClientId, Conn, Hub, Occupancy};
use crate::metrics::Metrics;

pub(crate) use self::webhook::WebhookError;

/// How often the lifecycle worker looks for keys whose grace is over (and, with Redis,
/// refreshes this node's liveness and reaps dead nodes).
const TICK: Duration = Duration::from_millis(500);
/// A node that has not refreshed its liveness for this long is dead to the others: what it
/// held is released (and goes down after... nothing more: the time already passed).
pub(crate) const NODE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `online` is rewritten for the users connected to this node.
pub(crate) const ONLINE_REFRESH: Duration = Duration::from_secs(30);
/// How long the worker lets reports gather after the first one woke it (far below
/// `webhook.batch_max_delay`, so invisible in delivery).
const GATHER: Duration = Duration::from_millis(5);
/// Most queued reports handled in one round of the worker.
const ROUND: usize = 4096;

/// One lifecycle event as the backend receives it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Event {
    /// Unique per event: the node's id and a sequence number, `<node>-<n>`.
    pub id: EventId,
    /// One of [`EVENT_TYPES`].
    #[serde(rename = "type")]
    pub kind: Kind,
    /// When it happened, Unix milliseconds.
    pub time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "client_id")]
    pub client: Option<ClientId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<Arc<str>>,
    /// The connection's transport (`websocket`, `tcp`) and encoding (`json`, `protobuf`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transport: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'static str>,
    /// A disconnect's code and reason, and whether the client will reconnect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconnect: Option<bool>,
    /// The node that emitted it (its unique id).
    pub node: Arc<str>,
}

/// An event's id, written as `<node>-<n>` without building the string first.
#[derive(Clone, Debug)]
pub(crate) struct EventId {
    node: Arc<str>,
    /// 0 until the event is handed to the webhook, which numbers events in its order.
    seq: u64,
}

impl Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{}-{}", self.node, self.seq))
    }
}

fn client_id<S: serde::Serializer>(
    client: &Option<ClientId>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match client {
        Some(client) => serializer.serialize_str(client.as_str()),
        None => serializer.serialize_none(),
    }
}

/// The event types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    UserOnline,
    UserOffline,
    Connect,
    Disconnect,
    ChannelOccupied,
    ChannelVacated,
    Subscribe,
    Unsubscribe,
}

impl Kind {
    const ALL: [Self; 8] = [
        Self::UserOnline,
        Self::UserOffline,
        Self::Connect,
        Self::Disconnect,
        Self::ChannelOccupied,
        Self::ChannelVacated,
        Self::Subscribe,
        Self::Unsubscribe,
    ];

    /// The name `webhook.events` uses (the same as [`EVENT_TYPES`]).
    fn name(self) -> &'static str {
        EVENT_TYPES[self as usize]
    }

    fn bit(self) -> u16 {
        1 << self as u16
    }
}

/// How a connection ended, as the `disconnect` event reports it.
#[derive(Clone, Debug)]
pub(crate) struct Ended {
    /// The close code (a disconnect code, or the peer's WebSocket close code; 1006 when the
    /// connection was lost without one).
    pub code: u16,
    pub reason: String,
    /// Whether the client is expected to reconnect.
    pub reconnect: bool,
}

/// The node's lifecycle events and user status. Cheap to ask when nothing is enabled.
#[derive(Debug)]
pub(crate) struct Events {
    inner: Option<Arc<Inner>>,
    /// The store behind the user status API (`None`: `user_status.enabled` is off).
    status: Option<StatusStore>,
    /// Stops the worker and the sender ([`Events::close`]).
    stop: CancellationToken,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

#[derive(Debug)]
struct StatusStore {
    store: Lifecycle,
    ttl_s: i64,
}

#[derive(Debug)]
struct Inner {
    node: Arc<str>,
    /// Enabled event types, one bit per [`Kind`].
    enabled: u16,
    grace_ms: i64,
    store: Lifecycle,
    /// Reports not yet handled by the worker, in order.
    queue: Mutex<VecDeque<Report>>,
    /// Most reports queued; more are dropped and counted (the buffer's bound, as the
    /// queue only feeds it).
    queue_limit: usize,
    wake: Notify,
    /// Where events go (`None`: no `webhook.endpoint`, only the user status is kept).
    webhook: Option<Arc<webhook::Webhook>>,
    /// Keeps `online` fresh for the users connected here (user status enabled).
    status_ttl_s: Option<i64>,
    hub: Hub,
    seq: AtomicU64,
    /// The last call to the store failed (logged once until it answers again).
    failing: std::sync::atomic::AtomicBool,
}

/// One queued report.
#[derive(Debug)]
enum Report {
    /// An event that needs no decision.
    Event(Event),
    /// A local transition the store decides on, and when it happened (Unix ms).
    Change(Change, i64),
}

impl Events {
    /// Builds the node's events from its config; installs the occupancy sink in the hub
    /// when an event needs it. Nothing runs until [`Events::start`].
    pub(crate) fn new(
        config: &Config,
        node: &str,
        store: Lifecycle,
        hub: &Hub,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, WebhookError> {
        let status = config.user_status.enabled.then(|| StatusStore {
            store: store.clone(),
            ttl_s: config.user_status.expire_interval.as_secs().max(1) as i64,
        });
        let webhook_config = &config.webhook;
        if webhook_config.endpoint.is_empty() && status.is_none() {
            return Ok(Self {
                inner: None,
                status,
                stop: CancellationToken::new(),
                tasks: Mutex::default(),
            });
        }
        let (enabled, webhook) = if webhook_config.endpoint.is_empty() {
            (0, None)
        } else {
            let enabled = Kind::ALL
                .into_iter()
                .filter(|kind| {
                    webhook_config.events.is_empty()
                        || webhook_config.events.iter().any(|e| e == kind.name())
                })
                .fold(0, |bits, kind| bits | kind.bit());
            let webhook = webhook::Webhook::new(webhook_config, metrics.clone())?;
            (enabled, Some(Arc::new(webhook)))
        };
        let inner = Arc::new(Inner {
            node: Arc::from(node),
            enabled,
            grace_ms: webhook_config.offline_grace.as_millis() as i64,
            store,
            queue: Mutex::default(),
            queue_limit: webhook_config.buffer_size.max(1),
            wake: Notify::new(),
            webhook,
            status_ttl_s: status.as_ref().map(|s| s.ttl_s),
            hub: hub.clone(),
            failing: std::sync::atomic::AtomicBool::new(false),
            seq: AtomicU64::new(0),
        });
        let wants = |kinds: [Kind; 2]| kinds.iter().any(|kind| enabled & kind.bit() != 0);
        if wants([Kind::UserOnline, Kind::UserOffline])
            || wants([Kind::ChannelOccupied, Kind::ChannelVacated])
            || inner.status_ttl_s.is_some()
        {
            hub.set_occupancy(Arc::new(Sink(inner.clone())));
        }
        Ok(Self {
            inner: Some(inner),
            status,
            stop: CancellationToken::new(),
            tasks: Mutex::default(),
        })
    }

    /// Starts the lifecycle worker and the webhook's sender; they run until [`Events::close`].
    pub(crate) fn start(&self) {
        if let Some(inner) = &self.inner {
            let mut tasks = self.tasks.lock();
            tasks.push(tokio::spawn(inner.clone().work(self.stop.clone())));
            if let Some(webhook) = &inner.webhook {
                tasks.push(tokio::spawn(webhook.clone().send_loop(self.stop.clone())));
            }
        }
    }

    /// After the node's connections are gone: hands the last events over (with the
    /// embedded engines, also every `user_offline` and `channel_vacated` still waiting for
    /// its grace: nobody is left to see the user come back) and delivers what it can by
    /// `deadline`.
    pub(crate) async fn close(&self, deadline: tokio::time::Instant) {
        let Some(inner) = &self.inner else {
            return;
        };
        // The worker and the sender end first (a POST in flight is finished), so what is
        // left is handled here, in order.
        self.stop.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for task in tasks {
            let _ = tokio::time::timeout_at(deadline, task).await;
        }
        inner.round().await;
        match inner.store.leave(&inner.node, unix_ms()).await {
            Ok(decisions) => inner.decided(&decisions, &mut Vec::new()),
            Err(error) => warn!(%error, "lifecycle store: leaving failed"),
        }
        if let Some(webhook) = &inner.webhook {
            webhook.flush(deadline).await;
        }
    }

    /// True when `kind` is delivered.
    fn wants(&self, kind: Kind) -> Option<&Arc<Inner>> {
        self.inner
            .as_ref()
            .filter(|inner| inner.enabled & kind.bit() != 0)
    }

    /// A connection authenticated.
    pub(crate) fn connected(&self, conn: &Conn) {
        if let Some(inner) = self.wants(Kind::Connect) {
            let mut event = inner.event(Kind::Connect);
            describe(&mut event, conn);
            inner.report(Report::Event(event));
        }
    }

    /// An authenticated connection ended.
    pub(crate) fn disconnected(&self, conn: &Conn, ended: &Ended) {
        if let Some(inner) = self.wants(Kind::Disconnect) {
            let mut event = inner.event(Kind::Disconnect);
            describe(&mut event, conn);
            event.code = Some(ended.code);
            event.reason = Some(ended.reason.clone());
            event.reconnect = Some(ended.reconnect);
            inner.report(Report::Event(event));
        }
    }

    /// A connection subscribed to a channel with join/leave.
    pub(crate) fn subscribed(&self, conn: &Conn, channel: &Arc<str>) {
        self.subscription(Kind::Subscribe, conn, channel);
    }

    /// A connection left a channel with join/leave.
    pub(crate) fn unsubscribed(&self, conn: &Conn, channel: &Arc<str>) {
        self.subscription(Kind::Unsubscribe, conn, channel);
    }

    fn subscription(&self, kind: Kind, conn: &Conn, channel: &Arc<str>) {
        if let Some(inner) = self.wants(kind) {
            let mut event = inner.event(kind);
            event.user = non_empty(conn.user());
            event.client = Some(conn.client);
            event.channel = Some(channel.clone());
            inner.report(Report::Event(event));
        }
    }

    /// True when the user status API is enabled.
    pub(crate) fn status_enabled(&self) -> bool {
        self.status.is_some()
    }

    /// Marks users active now (`update_user_status`).
    pub(crate) async fn update_status(&self, users: &[String]) -> Result<(), StatusError> {
        let status = self.status.as_ref().ok_or(StatusError::Disabled)?;
        status
            .store
            .set_status(users, StatusField::Active, unix_s(), status.ttl_s)
            .await
            .map_err(StatusError::Store)
    }

    /// The users' statuses, in the order asked.
    pub(crate) async fn get_status(
        &self,
        users: &[String],
    ) -> Result<Vec<UserStatus>, StatusError> {
        let status = self.status.as_ref().ok_or(StatusError::Disabled)?;
        status
            .store
            .get_status(users, unix_s())
            .await
            .map_err(StatusError::Store)
    }

    /// Forgets the users' statuses.
    pub(crate) async fn delete_status(&self, users: &[String]) -> Result<(), StatusError> {
        let status = self.status.as_ref().ok_or(StatusError::Disabled)?;
        status
            .store
            .delete_status(users)
            .await
            .map_err(StatusError::Store)
    }
}

/// Why a user status call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StatusError {
    /// `user_status.enabled` is off.
    #[error("user status is not enabled")]
    Disabled,
    /// The engine's store failed.
    #[error("{0}")]
    Store(BrokerError),
}

/// The hub's view, queued for the worker.
#[derive(Debug)]
struct Sink(Arc<Inner>);

impl Occupancy for Sink {
    fn user(&self, user: &str, held: bool) {
        let kinds = Kind::UserOnline.bit() | Kind::UserOffline.bit();
        if self.0.enabled & kinds == 0 && self.0.status_ttl_s.is_none() {
            return;
        }
        self.0.change(Scope::User, user.to_owned(), held);
    }

    fn channel(&self, channel: &str, held: bool) {
        let kinds = Kind::ChannelOccupied.bit() | Kind::ChannelVacated.bit();
        if self.0.enabled & kinds == 0 {
            return;
        }
        self.0.change(Scope::Channel, channel.to_owned(), held);
    }
}

impl Inner {
    fn event(&self, kind: Kind) -> Event {
        Event {
            // Numbered when handed to the webhook, so ids follow the delivery order.
            id: EventId {
                node: self.node.clone(),
                seq: 0,
            },
            kind,
            time: unix_ms(),
            user: None,
            client: None,
            channel: None,
            transport: None,
            protocol: None,
            code: None,
            reason: None,
            reconnect: None,
            node: self.node.clone(),
        }
    }

    /// Queues a transition of this node.
    fn change(&self, scope: Scope, name: String, held: bool) {
        self.report(Report::Change(
            Change {
                key: Key { scope, name },
                held,
            },
            unix_ms(),
        ));
    }

    fn report(&self, report: Report) {
        let mut queue = self.queue.lock();
        // Over the bound an event is dropped (counted), a transition never: losing one would
        // leave its user online, or its channel occupied, for good. Transitions are bounded
        // by the connections that make them.
        if queue.len() >= self.queue_limit && matches!(report, Report::Event(_)) {
            drop(queue);
            self.dropped(1);
            return;
        }
        queue.push_back(report);
        if queue.len() == 1 {
            drop(queue);
            self.wake.notify_one();
        }
    }

    /// The lifecycle worker: handles the queue in order, and every [`TICK`] asks the store
    /// for what went down.
    async fn work(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_refresh = tokio::time::Instant::now() + ONLINE_REFRESH;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.wake.notified() => {
                    // Let reports gather: under churn one round then carries many (one store
                    // call, one hand-over), not one wake-up per connection.
                    tokio::time::sleep(GATHER).await;
                }
                _ = tick.tick() => {
                    self.tick().await;
                    if self.status_ttl_s.is_some() && tokio::time::Instant::now() >= next_refresh {
                        next_refresh += ONLINE_REFRESH;
                        self.refresh_online().await;
                    }
                }
            }
            self.round().await;
        }
    }

    /// Handles what is queued, in order: events pass through, transitions go to the store
    /// in one call per round. A store failure puts the round back at the front of the
    /// queue, to be tried again at the next tick, so nothing is lost or reordered.
    async fn round(&self) {
        loop {
            let batch: Vec<Report> = {
                let mut queue = self.queue.lock();
                let n = queue.len().min(ROUND);
                let batch = queue.drain(..n).collect();
                if queue.is_empty() && queue.capacity() > ROUND {
                    // A burst (a reconnect storm) leaves no standing memory behind.
                    queue.shrink_to_fit();
                }
                batch
            };
            if batch.is_empty() {
                return;
            }
            let changes: Vec<Change> = batch
                .iter()
                .filter_map(|report| match report {
                    Report::Change(change, _) => Some(change.clone()),
                    Report::Event(_) => None,
                })
                .collect();
            let decisions = if changes.is_empty() {
                Decisions::default()
            } else {
                match self
                    .store
                    .apply(&self.node, &changes, unix_ms(), self.grace_ms)
                    .await
                {
                    Ok(decisions) => decisions,
                    Err(error) => {
                        if !self.failing.swap(true, Ordering::Relaxed) {
                            warn!(%error, "lifecycle store failed; events wait and are retried");
                        }
                        self.requeue(batch);
                        return;
                    }
                }
            };
            if self.failing.swap(false, Ordering::Relaxed) {
                tracing::info!("lifecycle store answers again");
            }
            self.status_online(&changes).await;
            let mut up = decisions.up.into_iter().peekable();
            let mut out = Vec::with_capacity(batch.len());
            for report in batch {
                match report {
                    Report::Event(event) => out.push(event),
                    Report::Change(change, at) => {
                        if change.held && up.peek() == Some(&change.key) {
                            let key = up.next().unwrap_or(change.key);
                            if let Some(mut event) = self.transition(key, true) {
                                // When the connection (or subscriber) came, so it sorts
                                // before the `connect` it caused.
                                event.time = at;
                                out.push(event);
                            }
                        }
                    }
                }
            }
            self.deliver(&mut out);
        }
    }

    /// Puts a batch back at the front of the queue, in order.
    fn requeue(&self, batch: Vec<Report>) {
        let mut queue = self.queue.lock();
        for report in batch.into_iter().rev() {
            queue.push_front(report);
        }
    }

    /// Hands events to the webhook's buffer.
    fn deliver(&self, events: &mut [Event]) {
        if let Some(webhook) = &self.webhook
            && !events.is_empty()
        {
            for event in events.iter_mut() {
                event.id.seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
            }
            webhook.push(events);
        }
    }

    fn dropped(&self, count: u64) {
        if let Some(webhook) = &self.webhook {
            webhook.dropped(count);
        }
    }

    /// Asks the store what went down, and re-reports everything after a rejoin.
    async fn tick(&self) {
        let now = unix_ms();
        let dead_before = now - NODE_TIMEOUT.as_millis() as i64;
        match self.store.tick(&self.node, now, dead_before).await {
            Ok(decisions) => {
                let mut out = Vec::new();
                self.decided(&decisions, &mut out);
                if decisions.rejoin {
                    warn!(
                        "the cluster had given this node up; reporting its users and channels again"
                    );
                    for user in self.hub.users() {
                        self.change(Scope::User, user.to_string(), true);
                    }
                    for (channel, _) in self.hub.channels() {
                        self.change(Scope::Channel, channel, true);
                    }
                }
            }
            Err(error) => debug!(%error, "lifecycle tick failed"),
        }
    }

    /// Hands the events of what went down to the webhook.
    fn decided(&self, decisions: &Decisions, out: &mut Vec<Event>) {
        for key in &decisions.down {
            if let Some(event) = self.transition(key.clone(), false) {
                out.push(event);
            }
        }
        self.deliver(out);
        out.clear();
    }

    /// The event of a key going up or down, when that type is delivered.
    fn transition(&self, key: Key, up: bool) -> Option<Event> {
        let kind = match (key.scope, up) {
            (Scope::User, true) => Kind::UserOnline,
            (Scope::User, false) => Kind::UserOffline,
            (Scope::Channel, true) => Kind::ChannelOccupied,
            (Scope::Channel, false) => Kind::ChannelVacated,
        };
        if self.enabled & kind.bit() == 0 {
            return None;
        }
        let mut event = self.event(kind);
        match key.scope {
            Scope::User => event.user = Some(Arc::from(key.name)),
            Scope::Channel => event.channel = Some(Arc::from(key.name)),
        }
        Some(event)
    }

    /// `online` of users whose first connection arrived or last left here.
    async fn status_online(&self, changes: &[Change]) {
        let Some(ttl_s) = self.status_ttl_s else {
            return;
        };
        let users: Vec<String> = changes
            .iter()
            .filter(|change| change.key.scope == Scope::User)
            .map(|change| change.key.name.clone())
            .collect();
        if users.is_empty() {
            return;
        }
        if let Err(error) = self
            .store
            .set_status(&users, StatusField::Online, unix_s(), ttl_s)
            .await
        {
            debug!(%error, "user status: online not written");
        }
    }

    /// Rewrites `online` for every user connected here.
    async fn refresh_online(&self) {
        let Some(ttl_s) = self.status_ttl_s else {
            return;
        };
        let users: Vec<String> = self.hub.users().iter().map(|u| u.to_string()).collect();
        for chunk in users.chunks(1000) {
            if let Err(error) = self
                .store
                .set_status(chunk, StatusField::Online, unix_s(), ttl_s)
                .await
            {
                debug!(%error, "user status: online refresh failed");
                return;
            }
        }
    }
}

/// Fills a connection's fields into an event.
fn describe(event: &mut Event, conn: &Conn) {
    event.user = non_empty(conn.user());
    event.client = Some(conn.client);
    event.transport = Some(conn.transport_name());
    event.protocol = Some(conn.protocol_name());
}

fn non_empty(user: Arc<str>) -> Option<Arc<str>> {
    (!user.is_empty()).then_some(user)
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn unix_s() -> i64 {
    unix_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, held: bool) -> Report {
        Report::Change(
            Change {
                key: Key {
                    scope: Scope::User,
                    name: name.to_owned(),
                },
                held,
            },
            unix_ms(),
        )
    }

    /// A queue of 2 whose worker is not running (the test runs its rounds), and a webhook
    /// whose buffer the test reads instead of sending it.
    fn inner() -> Inner {
        let mut config = Config::default();
        config.webhook.endpoint = "http://127.0.0.1:9/".to_owned();
        let metrics = Arc::new(Metrics::new());
        let webhook = webhook::Webhook::new(&config.webhook, metrics).expect("webhook");
        Inner {
            node: Arc::from("n"),
            enabled: Kind::ALL
                .into_iter()
                .fold(0, |bits, kind| bits | kind.bit()),
            grace_ms: 0,
            store: Lifecycle::Local(Arc::default()),
            queue: Mutex::default(),
            queue_limit: 2,
            wake: Notify::new(),
            webhook: Some(Arc::new(webhook)),
            status_ttl_s: None,
            hub: Hub::new(),
            seq: AtomicU64::new(0),
            failing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// What was handed to the webhook since the last call: (type, user, id).
    fn delivered(inner: &Inner) -> Vec<(Kind, String, String)> {
        let webhook = inner.webhook.as_ref().expect("a webhook");
        webhook
            .drain_for_tests()
            .into_iter()
            .map(|bytes| {
                let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
                let kind = Kind::ALL
                    .into_iter()
                    .find(|k| v["type"] == k.name())
                    .expect("a known type");
                let user = v["user"].as_str().unwrap_or_default().to_owned();
                (kind, user, v["id"].as_str().unwrap_or_default().to_owned())
            })
            .collect()
    }

    fn kinds(delivered: &[(Kind, String, String)]) -> Vec<(Kind, &str)> {
        delivered.iter().map(|(k, u, _)| (*k, u.as_str())).collect()
    }

    #[tokio::test]
    async fn a_full_queue_drops_events_but_never_a_transition() {
        let inner = inner();
        // Past the bound (2) transitions are still queued: losing one would leave a user
        // online (or offline) for good.
        for report in [
            user("a", true),
            user("b", true),
            user("c", true),
            user("a", false),
            user("c", false),
            user("c", true),
        ] {
            inner.report(report);
        }
        // An event past the bound is dropped.
        inner.report(Report::Event(inner.event(Kind::Connect)));
        inner.round().await;
        let got = delivered(&inner);
        use Kind::{UserOffline, UserOnline};
        assert_eq!(
            kinds(&got),
            [(UserOnline, "a"), (UserOnline, "b"), (UserOnline, "c")],
            "c's release and hold within the grace cancel out; the connect was dropped"
        );
        let ids: Vec<&str> = got.iter().map(|(_, _, id)| id.as_str()).collect();
        assert_eq!(ids, ["n-1", "n-2", "n-3"], "numbered in delivery order");
        // The grace is 0: `a` is down at the next tick; `b` and `c` are still held.
        inner.tick().await;
        assert_eq!(kinds(&delivered(&inner)), [(UserOffline, "a")]);
        inner.tick().await;
        assert!(delivered(&inner).is_empty());
    }

    #[tokio::test]
    async fn online_comes_before_the_connect_it_caused_and_offline_after_the_disconnect() {
        let inner = inner();
        let mut connect = inner.event(Kind::Connect);
        connect.user = Some(Arc::from("a"));
        inner.report(user("a", true));
        inner.report(Report::Event(connect));
        inner.round().await;
        let got = delivered(&inner);
        assert_eq!(kinds(&got), [(Kind::UserOnline, "a"), (Kind::Connect, "a")]);
        let mut disconnect = inner.event(Kind::Disconnect);
        disconnect.user = Some(Arc::from("a"));
        inner.report(Report::Event(disconnect));
        inner.report(user("a", false));
        inner.round().await;
        inner.tick().await;
        assert_eq!(
            kinds(&delivered(&inner)),
            [(Kind::Disconnect, "a"), (Kind::UserOffline, "a")]
        );
    }
}
