//! The client's protocol logic, sans-IO: requests, replies, link events and `now` in;
//! actions (open, close, send, fetch a token) and the next deadline out.
//!
//! [`Core`] owns the connection state machine (disconnected / connecting / connected), the
//! reconnect backoff, the calls waiting for a connection and those waiting for a reply, and
//! every subscription's state and stream position. It performs no I/O and never awaits;
//! the driver in [`crate::driver`] opens links, writes commands, runs token callbacks and
//! feeds back what happened. Events for the app go out on unbounded channels, so a slow app
//! never stalls the protocol (and never loses a publication).
//!
//! Exactly-once delivery across reconnects: each subscription keeps the (offset, epoch) of
//! the last publication it delivered; a resubscribe asks the server to recover from it, and
//! any publication at or below that offset is dropped as already delivered.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tether_proto::{Command, Reply};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::{ClientConfig, SubscriptionConfig, TokenSource};
use crate::types::codes;
use crate::{
    ClientEvent, ClientInfo, Error, HistoryOptions, HistoryResult, PresenceStats, Publication,
    State, StreamPosition, SubscriptionEvent, SubscriptionState,
};

/// State the handles read without asking the driver.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The client's connection state, mirrored by the core on every change.
    pub(crate) state: Mutex<State>,
    /// Channels with a subscription object, and each one's mirrored state.
    pub(crate) subs: Mutex<HashMap<String, Arc<Mutex<SubscriptionState>>>>,
}

impl Shared {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(State::Disconnected),
            subs: Mutex::new(HashMap::new()),
        }
    }
}

/// What a handle asks of the driver.
#[derive(Debug)]
pub(crate) enum Request {
    Connect,
    Disconnect,
    Call(Call),
    AddSubscription {
        channel: String,
        config: SubscriptionConfig,
        events: mpsc::UnboundedSender<SubscriptionEvent>,
        state: Arc<Mutex<SubscriptionState>>,
    },
    Subscribe(String),
    Unsubscribe(String),
    RemoveSubscription(String),
}

/// One call (publish, history, ...) and where its result goes.
#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) op: Op,
    /// Fails with a timeout at this instant, wherever the call is (buffered or sent).
    pub(crate) deadline: Instant,
    pub(crate) reply: oneshot::Sender<Result<Outcome, Error>>,
}

/// A call's request.
#[derive(Debug)]
pub(crate) enum Op {
    Publish {
        channel: String,
        data: Bytes,
    },
    History {
        channel: String,
        options: HistoryOptions,
    },
    Presence {
        channel: String,
    },
    PresenceStats {
        channel: String,
    },
    Rpc {
        method: String,
        data: Bytes,
    },
}

/// A call's result.
#[derive(Debug)]
pub(crate) enum Outcome {
    Published,
    History(HistoryResult),
    Presence(HashMap<String, ClientInfo>),
    PresenceStats(PresenceStats),
    Rpc(Bytes),
}

/// What the driver must do.
#[derive(Debug)]
pub(crate) enum Action {
    /// Open a new link (the connect command follows once it is up).
    Open,
    /// Drop the current link (or the one being opened).
    Close,
    /// Write a command on the current link (boxed: a `Command` is large and most actions
    /// are not sends).
    Send(Box<Command>),
    /// Run a token callback and report with [`Core::handle_token`].
    FetchToken(TokenTarget, TokenSource),
}

/// What a fetched token is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TokenTarget {
    Connect,
    Refresh,
    Subscribe(String),
    SubRefresh(String),
}

/// Whether a link is open as far as the core knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Down,
    Opening,
    Up,
}

/// A command waiting for its reply.
#[derive(Debug)]
struct Inflight {
    pending: Pending,
    deadline: Instant,
}

#[derive(Debug)]
enum Pending {
    Connect,
    Refresh,
    Subscribe(String),
    SubRefresh(String),
    Unsubscribe,
    Call(Call),
}

/// One subscription as the core tracks it.
#[derive(Debug)]
struct Sub {
    state: SubscriptionState,
    mirror: Arc<Mutex<SubscriptionState>>,
    events: mpsc::UnboundedSender<SubscriptionEvent>,
    config: SubscriptionConfig,
    token: Option<String>,
    /// Last delivered position; recovery starts here. `None` for channels without history.
    position: Option<StreamPosition>,
    /// Failed subscribe attempts in a row (backoff).
    attempt: u32,
    resubscribe_at: Option<Instant>,
    refresh_at: Option<Instant>,
    /// Id of the subscribe command in flight.
    inflight: Option<u32>,
}

/// The client state machine; see the module docs.
#[derive(Debug)]
pub(crate) struct Core {
    config: ClientConfig,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<ClientEvent>,
    rng: StdRng,
    state: State,
    link: Link,
    /// Failed connect attempts in a row (backoff exponent).
    attempt: u32,
    reconnect_at: Option<Instant>,
    token: Option<String>,
    /// Token callbacks running now, so the same one is not started twice.
    fetching: Vec<TokenTarget>,
    next_id: u32,
    inflight: HashMap<u32, Inflight>,
    /// Calls made while connecting, bounded by `max_pending_calls`.
    buffer: VecDeque<Call>,
    subs: BTreeMap<String, Sub>,
    /// Server-side subscriptions of a recoverable channel: the position of the last
    /// publication delivered, offered in the next connect request's `subs` so the server
    /// recovers what was published while the link was down.
    server_subs: BTreeMap<String, StreamPosition>,
    /// The server's ping interval; `None` disables dead-link detection.
    ping: Option<Duration>,
    pong: bool,
    last_rx: Instant,
    refresh_at: Option<Instant>,
    actions: VecDeque<Action>,
}

impl Core {
    pub(crate) fn new(
        config: ClientConfig,
        shared: Arc<Shared>,
        events: mpsc::UnboundedSender<ClientEvent>,
        now: Instant,
    ) -> Self {
        let rng = match config.rng_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            token: config.token.clone(),
            config,
            shared,
            events,
            rng,
            state: State::Disconnected,
            link: Link::Down,
            attempt: 0,
            reconnect_at: None,
            fetching: Vec::new(),
            next_id: 0,
            inflight: HashMap::new(),
            buffer: VecDeque::new(),
            subs: BTreeMap::new(),
            server_subs: BTreeMap::new(),
            ping: None,
            pong: false,
            last_rx: now,
            refresh_at: None,
            actions: VecDeque::new(),
        }
    }

    // === inputs ===

    /// A request from a handle.
    pub(crate) fn handle_request(&mut self, request: Request, now: Instant) {
        match request {
            Request::Connect => {
                if self.state == State::Disconnected {
                    self.attempt = 0;
                    self.set_state(State::Connecting);
                    self.emit(ClientEvent::Connecting {
                        code: codes::CONNECT_CALLED,
                        reason: "connect called".to_owned(),
                    });
                    self.start_attempt(now);
                }
            }
            Request::Disconnect => {
                if self.state != State::Disconnected {
                    self.go_disconnected(codes::DISCONNECT_CALLED, "disconnect called");
                }
            }
            Request::Call(call) => self.handle_call(call, now),
            Request::AddSubscription {
                channel,
                config,
                events,
                state,
            } => {
                let sub = Sub {
                    state: SubscriptionState::Unsubscribed,
                    mirror: state,
                    events,
                    token: config.token.clone(),
                    position: config.since.clone(),
                    config,
                    attempt: 0,
                    resubscribe_at: None,
                    refresh_at: None,
                    inflight: None,
                };
                self.subs.insert(channel, sub);
            }
            Request::Subscribe(channel) => {
                let Some(sub) = self.subs.get_mut(&channel) else {
                    return;
                };
                if sub.state == SubscriptionState::Unsubscribed {
                    sub.attempt = 0;
                    set_sub_state(sub, SubscriptionState::Subscribing);
                    sub.emit(SubscriptionEvent::Subscribing {
                        code: codes::SUBSCRIBE_CALLED,
                        reason: "subscribe called".to_owned(),
                    });
                    if self.state == State::Connected {
                        self.send_subscribe(&channel, now);
                    }
                }
            }
            Request::Unsubscribe(channel) => self.unsubscribe(&channel, now),
            Request::RemoveSubscription(channel) => {
                self.unsubscribe(&channel, now);
                self.subs.remove(&channel);
                self.shared.subs.lock().remove(&channel);
            }
        }
    }

    /// The link asked for by [`Action::Open`] is up.
    pub(crate) fn handle_link_open(&mut self, now: Instant) {
        if self.link != Link::Opening {
            return;
        }
        self.link = Link::Up;
        self.last_rx = now;
        let command = Command {
            connect: Some(tether_proto::ConnectRequest {
                token: self.token.clone().unwrap_or_default(),
                name: self.config.name.clone(),
                version: self.config.version.clone(),
                subs: self
                    .server_subs
                    .iter()
                    .map(|(channel, position)| {
                        let request = tether_proto::SubscribeRequest {
                            recover: true,
                            offset: position.offset,
                            epoch: position.epoch.clone(),
                            ..Default::default()
                        };
                        (channel.clone(), request)
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let deadline = now + self.config.connect_timeout;
        self.send(Pending::Connect, command, deadline);
    }

    /// The link failed to open, failed, or was closed by the server; `code` is the close
    /// code when the server sent one.
    pub(crate) fn handle_link_closed(&mut self, code: Option<u32>, reason: &str, now: Instant) {
        if self.link == Link::Down {
            // Closed by us already; its end is old news.
            return;
        }
        self.link = Link::Down;
        match code {
            Some(code) if !reconnects(code) => self.go_disconnected(code, reason),
            Some(code) => self.go_connecting(code, reason, now),
            None => self.go_connecting(codes::TRANSPORT_CLOSED, reason, now),
        }
    }

    /// One reply (or push, or ping) from the server.
    pub(crate) fn handle_reply(&mut self, reply: Reply, now: Instant) {
        if self.link != Link::Up {
            return;
        }
        self.last_rx = now;
        if reply.id == 0 {
            match reply.push {
                Some(push) => self.handle_push(push, now),
                // A ping: an empty reply. Answered only when the server asked for pongs.
                None if reply.error.is_none() && self.pong => {
                    self.actions.push_back(Action::Send(Box::default()));
                }
                None => {}
            }
            return;
        }
        let Some(inflight) = self.inflight.remove(&reply.id) else {
            return;
        };
        match inflight.pending {
            Pending::Connect => self.on_connect_reply(reply, now),
            Pending::Refresh => self.on_refresh_reply(reply, now),
            Pending::Subscribe(channel) => self.on_subscribe_reply(&channel, reply, now),
            Pending::SubRefresh(channel) => self.on_sub_refresh_reply(&channel, reply, now),
            Pending::Unsubscribe => {}
            Pending::Call(call) => on_call_reply(call, reply),
        }
    }

    /// A token callback finished.
    pub(crate) fn handle_token(
        &mut self,
        target: TokenTarget,
        result: Result<String, Error>,
        now: Instant,
    ) {
        self.fetching.retain(|t| *t != target);
        match target {
            TokenTarget::Connect => {
                if self.state != State::Connecting
                    || self.link != Link::Down
                    || self.reconnect_at.is_some()
                {
                    return;
                }
                match result {
                    Ok(token) => {
                        self.token = Some(token);
                        self.open(now);
                    }
                    Err(error) if error.is_unauthorized() => {
                        self.go_disconnected(codes::UNAUTHORIZED, "unauthorized");
                    }
                    Err(error) => {
                        self.emit(ClientEvent::Error(error));
                        self.schedule_reconnect(now);
                    }
                }
            }
            TokenTarget::Refresh => {
                if self.state != State::Connected {
                    return;
                }
                match result {
                    Ok(token) => {
                        self.token = Some(token.clone());
                        let command = Command {
                            refresh: Some(tether_proto::RefreshRequest { token }),
                            ..Default::default()
                        };
                        let deadline = now + self.config.call_timeout;
                        self.send(Pending::Refresh, command, deadline);
                    }
                    Err(error) if error.is_unauthorized() => {
                        self.go_disconnected(codes::UNAUTHORIZED, "unauthorized");
                    }
                    Err(error) => {
                        self.emit(ClientEvent::Error(error));
                        self.refresh_at = Some(now + self.config.backoff.ceiling(RETRY_STEP));
                    }
                }
            }
            TokenTarget::Subscribe(channel) => {
                let connected = self.state == State::Connected;
                let Some(sub) = self.subs.get_mut(&channel) else {
                    return;
                };
                if sub.state != SubscriptionState::Subscribing || !connected {
                    return;
                }
                match result {
                    Ok(token) => {
                        sub.token = Some(token);
                        self.send_subscribe(&channel, now);
                    }
                    Err(error) if error.is_unauthorized() => {
                        set_unsubscribed(sub, codes::UNAUTHORIZED, "unauthorized");
                    }
                    Err(error) => {
                        sub.emit(SubscriptionEvent::Error(error));
                        let delay = self.config.backoff.delay(sub.attempt, &mut self.rng);
                        sub.attempt += 1;
                        sub.resubscribe_at = Some(now + delay);
                    }
                }
            }
            TokenTarget::SubRefresh(channel) => {
                let connected = self.state == State::Connected;
                let retry = self.config.backoff.ceiling(RETRY_STEP);
                let Some(sub) = self.subs.get_mut(&channel) else {
                    return;
                };
                if sub.state != SubscriptionState::Subscribed || !connected {
                    return;
                }
                match result {
                    Ok(token) => {
                        sub.token = Some(token.clone());
                        let command = Command {
                            sub_refresh: Some(tether_proto::SubRefreshRequest {
                                channel: channel.clone(),
                                token,
                            }),
                            ..Default::default()
                        };
                        let deadline = now + self.config.call_timeout;
                        self.send(Pending::SubRefresh(channel), command, deadline);
                    }
                    Err(error) if error.is_unauthorized() => {
                        self.unsubscribe_with(&channel, codes::UNAUTHORIZED, "unauthorized", now);
                    }
                    Err(error) => {
                        sub.emit(SubscriptionEvent::Error(error));
                        sub.refresh_at = Some(now + retry);
                    }
                }
            }
        }
    }

    /// Time passed: reconnects, timeouts, dead links, refreshes and resubscribes that are due.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if let Some(at) = self.reconnect_at
            && now >= at
            && self.state == State::Connecting
        {
            self.reconnect_at = None;
            self.start_attempt(now);
        }

        let expired: Vec<u32> = self
            .inflight
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        let mut stuck = false;
        for id in expired {
            let Some(inflight) = self.inflight.remove(&id) else {
                continue;
            };
            match inflight.pending {
                Pending::Call(call) => {
                    let _ = call.reply.send(Err(Error::timeout()));
                }
                Pending::Unsubscribe => {}
                Pending::Connect
                | Pending::Refresh
                | Pending::Subscribe(_)
                | Pending::SubRefresh(_) => stuck = true,
            }
        }
        if !self.buffer.is_empty() {
            let (expired, kept): (VecDeque<Call>, VecDeque<Call>) =
                self.buffer.drain(..).partition(|c| c.deadline <= now);
            self.buffer = kept;
            for call in expired {
                let _ = call.reply.send(Err(Error::timeout()));
            }
        }
        if stuck && self.link != Link::Down {
            self.close_link();
            self.go_connecting(codes::REQUEST_TIMEOUT, "request timeout", now);
            return;
        }

        if let Some(deadline) = self.dead_link_deadline()
            && now >= deadline
        {
            self.close_link();
            self.go_connecting(codes::NO_PING, "no ping", now);
            return;
        }

        if self.state != State::Connected {
            return;
        }
        if let Some(at) = self.refresh_at
            && now >= at
        {
            self.refresh_at = None;
            if let Some(source) = self.config.token_source.clone() {
                self.fetch(TokenTarget::Refresh, source);
            }
        }
        let mut resubscribe = Vec::new();
        let mut refresh = Vec::new();
        for (channel, sub) in &mut self.subs {
            if sub.resubscribe_at.is_some_and(|at| now >= at) {
                sub.resubscribe_at = None;
                if sub.state == SubscriptionState::Subscribing {
                    resubscribe.push(channel.clone());
                }
            }
            if sub.refresh_at.is_some_and(|at| now >= at) {
                sub.refresh_at = None;
                if let Some(source) = sub.config.token_source.clone() {
                    refresh.push((channel.clone(), source));
                }
            }
        }
        for channel in resubscribe {
            self.send_subscribe(&channel, now);
        }
        for (channel, source) in refresh {
            self.fetch(TokenTarget::SubRefresh(channel), source);
        }
    }

    // === outputs ===

    /// The next thing for the driver to do.
    #[must_use]
    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Core::handle_timeout`] must be called next.
    #[must_use]
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let subs = self
            .subs
            .values()
            .flat_map(|s| [s.resubscribe_at, s.refresh_at]);
        let inflight = self.inflight.values().map(|f| Some(f.deadline));
        let buffered = self.buffer.iter().map(|c| Some(c.deadline));
        [
            self.reconnect_at,
            self.refresh_at,
            self.dead_link_deadline(),
        ]
        .into_iter()
        .chain(subs)
        .chain(inflight)
        .chain(buffered)
        .flatten()
        .min()
    }

    // === connection ===

    fn start_attempt(&mut self, now: Instant) {
        self.reconnect_at = None;
        if self.token.is_none()
            && let Some(source) = self.config.token_source.clone()
        {
            self.fetch(TokenTarget::Connect, source);
            return;
        }
        self.open(now);
    }

    fn open(&mut self, now: Instant) {
        let _ = now;
        self.link = Link::Opening;
        self.actions.push_back(Action::Open);
    }

    fn close_link(&mut self) {
        if self.link != Link::Down {
            self.link = Link::Down;
            self.actions.push_back(Action::Close);
        }
    }

    /// The link is gone but the client goes on: back to connecting, with backoff.
    fn go_connecting(&mut self, code: u32, reason: &str, now: Instant) {
        self.link = Link::Down;
        self.fail_inflight(Error::connection_lost);
        self.ping = None;
        self.refresh_at = None;
        if self.state != State::Connecting {
            self.set_state(State::Connecting);
            self.emit(ClientEvent::Connecting {
                code,
                reason: reason.to_owned(),
            });
        }
        self.subs_to_subscribing(code, reason);
        self.schedule_reconnect(now);
    }

    /// The client stops: terminal code, `disconnect()`, or unauthorized.
    fn go_disconnected(&mut self, code: u32, reason: &str) {
        self.close_link();
        self.fail_inflight(Error::connection_lost);
        for call in self.buffer.drain(..) {
            let _ = call.reply.send(Err(Error::closed()));
        }
        self.reconnect_at = None;
        self.ping = None;
        self.refresh_at = None;
        self.subs_to_subscribing(code, reason);
        if self.state != State::Disconnected {
            self.set_state(State::Disconnected);
            self.emit(ClientEvent::Disconnected {
                code,
                reason: reason.to_owned(),
            });
        }
    }

    fn schedule_reconnect(&mut self, now: Instant) {
        let delay = self.config.backoff.delay(self.attempt, &mut self.rng);
        self.emit(ClientEvent::ReconnectScheduled {
            attempt: self.attempt,
            delay,
        });
        self.attempt = self.attempt.saturating_add(1);
        self.reconnect_at = Some(now + delay);
    }

    fn fail_inflight(&mut self, error: fn() -> Error) {
        for (_, inflight) in self.inflight.drain() {
            if let Pending::Call(call) = inflight.pending {
                let _ = call.reply.send(Err(error()));
            }
        }
        for sub in self.subs.values_mut() {
            sub.inflight = None;
        }
    }

    fn subs_to_subscribing(&mut self, code: u32, reason: &str) {
        for sub in self.subs.values_mut() {
            sub.resubscribe_at = None;
            sub.refresh_at = None;
            if sub.state == SubscriptionState::Subscribed {
                set_sub_state(sub, SubscriptionState::Subscribing);
                sub.emit(SubscriptionEvent::Subscribing {
                    code,
                    reason: reason.to_owned(),
                });
            }
        }
    }

    fn dead_link_deadline(&self) -> Option<Instant> {
        if self.state != State::Connected || self.link != Link::Up {
            return None;
        }
        self.ping
            .map(|ping| self.last_rx + ping + self.config.max_server_ping_delay)
    }

    fn on_connect_reply(&mut self, reply: Reply, now: Instant) {
        if let Some(error) = reply.error {
            self.close_link();
            if error.code == TOKEN_EXPIRED {
                self.token = None;
                if self.config.token_source.is_some() {
                    self.go_connecting(error.code, &error.message, now);
                } else {
                    self.go_disconnected(codes::UNAUTHORIZED, "token expired");
                }
            } else if error.temporary {
                self.emit(ClientEvent::Error(Error::server(&error)));
                self.go_connecting(error.code, &error.message, now);
            } else {
                self.emit(ClientEvent::Error(Error::server(&error)));
                self.go_disconnected(error.code, &error.message);
            }
            return;
        }
        let Some(result) = reply.connect else {
            self.close_link();
            self.go_connecting(codes::BAD_PROTOCOL, "bad connect reply", now);
            return;
        };
        self.attempt = 0;
        self.ping = (result.ping > 0).then(|| Duration::from_secs(u64::from(result.ping)));
        self.pong = result.pong;
        self.refresh_at = result
            .expires
            .then(|| now + Duration::from_secs(u64::from(result.ttl)));
        self.set_state(State::Connected);
        self.emit(ClientEvent::Connected {
            client: result.client,
            version: result.version,
        });
        let previous = std::mem::take(&mut self.server_subs);
        for (channel, sub) in result.subs {
            // Recovered publications, minus any already delivered (as for client-side ones).
            let mut last = previous
                .get(&channel)
                .filter(|p| p.epoch == sub.epoch)
                .map(|p| p.offset);
            for publication in sub.publications {
                if publication.offset > 0 {
                    if last.is_some_and(|l| publication.offset <= l) {
                        continue;
                    }
                    last = Some(publication.offset);
                }
                self.emit(ClientEvent::ServerPublication {
                    channel: channel.clone(),
                    publication: publication.into(),
                });
            }
            if sub.recoverable {
                let position = StreamPosition {
                    offset: sub.offset.max(last.unwrap_or(0)),
                    epoch: sub.epoch,
                };
                self.server_subs.insert(channel, position);
            }
        }
        let waiting: Vec<String> = self
            .subs
            .iter()
            .filter(|(_, s)| s.state == SubscriptionState::Subscribing)
            .map(|(c, _)| c.clone())
            .collect();
        for channel in waiting {
            self.send_subscribe(&channel, now);
        }
        while let Some(call) = self.buffer.pop_front() {
            self.send_call(call);
        }
    }

    fn on_refresh_reply(&mut self, reply: Reply, now: Instant) {
        if let Some(error) = reply.error {
            self.emit(ClientEvent::Error(Error::server(&error)));
            if error.temporary {
                self.refresh_at = Some(now + self.config.backoff.ceiling(RETRY_STEP));
            }
            return;
        }
        if let Some(result) = reply.refresh {
            self.refresh_at = result
                .expires
                .then(|| now + Duration::from_secs(u64::from(result.ttl)));
        }
    }

    // === subscriptions ===

    fn send_subscribe(&mut self, channel: &str, now: Instant) {
        let Some(sub) = self.subs.get(channel) else {
            return;
        };
        if sub.inflight.is_some() {
            return;
        }
        if sub.token.is_none()
            && let Some(source) = sub.config.token_source.clone()
        {
            self.fetch(TokenTarget::Subscribe(channel.to_owned()), source);
            return;
        }
        let position = sub.position.clone();
        let command = Command {
            subscribe: Some(tether_proto::SubscribeRequest {
                channel: channel.to_owned(),
                token: sub.token.clone().unwrap_or_default(),
                recover: position.is_some(),
                offset: position.as_ref().map_or(0, |p| p.offset),
                epoch: position.map(|p| p.epoch).unwrap_or_default(),
                // Ask for a recoverable (hence positioned) subscription: granted where the
                // namespace allows recovery or the client may read history, as in
                // Centrifugo; without it nothing is recovered unless the namespace forces it.
                recoverable: true,
                join_leave: sub.config.join_leave,
                ..Default::default()
            }),
            ..Default::default()
        };
        let deadline = now + self.config.call_timeout;
        let id = self.send(Pending::Subscribe(channel.to_owned()), command, deadline);
        if let Some(sub) = self.subs.get_mut(channel) {
            sub.inflight = Some(id);
        }
    }

    fn on_subscribe_reply(&mut self, channel: &str, reply: Reply, now: Instant) {
        let Some(sub) = self.subs.get_mut(channel) else {
            if reply.subscribe.is_some() {
                self.send_unsubscribe(channel, now);
            }
            return;
        };
        sub.inflight = None;
        if sub.state != SubscriptionState::Subscribing {
            // Unsubscribed while the subscribe was in flight.
            if reply.subscribe.is_some() {
                self.send_unsubscribe(channel, now);
            }
            return;
        }
        if let Some(error) = reply.error {
            if error.code == TOKEN_EXPIRED && sub.config.token_source.is_some() {
                // A fresh token is fetched when the resubscribe is due; with backoff, as the
                // reference SDKs do, so tokens the server keeps finding expired (clock skew)
                // do not loop subscribe, fetch, subscribe without pause.
                sub.token = None;
                let delay = self.config.backoff.delay(sub.attempt, &mut self.rng);
                sub.attempt += 1;
                sub.resubscribe_at = Some(now + delay);
            } else if error.temporary {
                sub.emit(SubscriptionEvent::Error(Error::server(&error)));
                let delay = self.config.backoff.delay(sub.attempt, &mut self.rng);
                sub.attempt += 1;
                sub.resubscribe_at = Some(now + delay);
            } else {
                sub.emit(SubscriptionEvent::Error(Error::server(&error)));
                set_unsubscribed(sub, codes::SUBSCRIBE_REFUSED, &error.message);
            }
            return;
        }
        let Some(result) = reply.subscribe else {
            self.close_link();
            self.go_connecting(codes::BAD_PROTOCOL, "bad subscribe reply", now);
            return;
        };
        sub.attempt = 0;
        set_sub_state(sub, SubscriptionState::Subscribed);
        let position = (result.recoverable || result.positioned).then(|| StreamPosition {
            offset: result.offset,
            epoch: result.epoch.clone(),
        });
        sub.emit(SubscriptionEvent::Subscribed {
            was_recovering: result.was_recovering,
            recovered: result.recovered,
            recoverable: result.recoverable,
            position: position.clone(),
        });
        // Recovered publications, minus any this client already delivered.
        let mut last = sub
            .position
            .take()
            .filter(|p| position.as_ref().is_some_and(|top| top.epoch == p.epoch))
            .map(|p| p.offset);
        for publication in result.publications {
            if publication.offset > 0 {
                if last.is_some_and(|l| publication.offset <= l) {
                    continue;
                }
                last = Some(publication.offset);
            }
            sub.emit(SubscriptionEvent::Publication(publication.into()));
        }
        // A recovered reply carries the offset the client asked from; the position moves on to
        // the last publication delivered, or a later resubscribe would replay them.
        let mut position = position;
        if let (Some(position), Some(last)) = (position.as_mut(), last) {
            position.offset = position.offset.max(last);
        }
        sub.position = position;
        sub.refresh_at = result
            .expires
            .then(|| now + Duration::from_secs(u64::from(result.ttl)));
    }

    fn on_sub_refresh_reply(&mut self, channel: &str, reply: Reply, now: Instant) {
        let retry = self.config.backoff.ceiling(RETRY_STEP);
        let Some(sub) = self.subs.get_mut(channel) else {
            return;
        };
        if let Some(error) = reply.error {
            sub.emit(SubscriptionEvent::Error(Error::server(&error)));
            if error.temporary {
                sub.refresh_at = Some(now + retry);
            }
            return;
        }
        if let Some(result) = reply.sub_refresh {
            sub.refresh_at = result
                .expires
                .then(|| now + Duration::from_secs(u64::from(result.ttl)));
        }
    }

    fn unsubscribe(&mut self, channel: &str, now: Instant) {
        self.unsubscribe_with(
            channel,
            codes::UNSUBSCRIBE_CALLED,
            "unsubscribe called",
            now,
        );
    }

    /// Unsubscribes on the client's own initiative, telling the app why.
    fn unsubscribe_with(&mut self, channel: &str, code: u32, reason: &str, now: Instant) {
        let connected = self.state == State::Connected;
        let Some(sub) = self.subs.get_mut(channel) else {
            return;
        };
        if sub.state == SubscriptionState::Unsubscribed {
            return;
        }
        let was_subscribed = sub.state == SubscriptionState::Subscribed;
        sub.position = None;
        set_unsubscribed(sub, code, reason);
        if was_subscribed && connected {
            self.send_unsubscribe(channel, now);
        }
    }

    fn send_unsubscribe(&mut self, channel: &str, now: Instant) {
        let command = Command {
            unsubscribe: Some(tether_proto::UnsubscribeRequest {
                channel: channel.to_owned(),
            }),
            ..Default::default()
        };
        let deadline = now + self.config.call_timeout;
        self.send(Pending::Unsubscribe, command, deadline);
    }

    fn handle_push(&mut self, push: tether_proto::Push, now: Instant) {
        let channel = push.channel;
        if let Some(publication) = push.r#pub {
            let Some(sub) = self.subs.get_mut(&channel) else {
                if publication.offset > 0
                    && let Some(position) = self.server_subs.get_mut(&channel)
                {
                    if publication.offset <= position.offset {
                        return;
                    }
                    position.offset = publication.offset;
                }
                self.emit(ClientEvent::ServerPublication {
                    channel,
                    publication: publication.into(),
                });
                return;
            };
            if sub.state != SubscriptionState::Subscribed {
                return;
            }
            if publication.offset > 0
                && let Some(position) = &mut sub.position
            {
                if publication.offset <= position.offset {
                    return;
                }
                position.offset = publication.offset;
            }
            sub.emit(SubscriptionEvent::Publication(publication.into()));
        } else if let Some(join) = push.join {
            // As for publications: only while subscribed (not after `unsubscribe()`).
            if let (Some(sub), Some(info)) = (self.subs.get(&channel), join.info)
                && sub.state == SubscriptionState::Subscribed
            {
                sub.emit(SubscriptionEvent::Join(info.into()));
            }
        } else if let Some(leave) = push.leave {
            if let (Some(sub), Some(info)) = (self.subs.get(&channel), leave.info)
                && sub.state == SubscriptionState::Subscribed
            {
                sub.emit(SubscriptionEvent::Leave(info.into()));
            }
        } else if let Some(subscribe) = push.subscribe {
            // A server-side subscription made while connected (server API `subscribe`).
            if !self.subs.contains_key(&channel) && subscribe.recoverable {
                let position = StreamPosition {
                    offset: subscribe.offset,
                    epoch: subscribe.epoch,
                };
                self.server_subs.insert(channel, position);
            }
        } else if let Some(unsubscribe) = push.unsubscribe {
            let Some(sub) = self.subs.get_mut(&channel) else {
                self.server_subs.remove(&channel);
                return;
            };
            if sub.state == SubscriptionState::Unsubscribed {
                return;
            }
            if unsubscribe.code >= RESUBSCRIBE_CODES {
                set_sub_state(sub, SubscriptionState::Subscribing);
                sub.emit(SubscriptionEvent::Subscribing {
                    code: unsubscribe.code,
                    reason: unsubscribe.reason,
                });
                self.send_subscribe(&channel, now);
            } else {
                set_unsubscribed(sub, unsubscribe.code, &unsubscribe.reason);
            }
        } else if let Some(disconnect) = push.disconnect {
            self.close_link();
            if disconnect.reconnect {
                self.go_connecting(disconnect.code, &disconnect.reason, now);
            } else {
                self.go_disconnected(disconnect.code, &disconnect.reason);
            }
        } else if let Some(message) = push.message {
            self.emit(ClientEvent::Message(message.data));
        }
    }

    // === calls ===

    fn handle_call(&mut self, call: Call, now: Instant) {
        let _ = now;
        match self.state {
            State::Disconnected => {
                let _ = call.reply.send(Err(Error::closed()));
            }
            State::Connected => self.send_call(call),
            State::Connecting => {
                if self.buffer.len() >= self.config.max_pending_calls {
                    let _ = call.reply.send(Err(Error::buffer_full()));
                } else {
                    self.buffer.push_back(call);
                }
            }
        }
    }

    fn send_call(&mut self, call: Call) {
        if call.reply.is_closed() {
            // The caller gave up (its future was dropped).
            return;
        }
        let command = match &call.op {
            Op::Publish { channel, data } => Command {
                publish: Some(tether_proto::PublishRequest {
                    channel: channel.clone(),
                    data: data.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Op::History { channel, options } => Command {
                history: Some(tether_proto::HistoryRequest {
                    channel: channel.clone(),
                    limit: options.limit,
                    since: options
                        .since
                        .as_ref()
                        .map(|p| tether_proto::StreamPosition {
                            offset: p.offset,
                            epoch: p.epoch.clone(),
                        }),
                    reverse: options.reverse,
                }),
                ..Default::default()
            },
            Op::Presence { channel } => Command {
                presence: Some(tether_proto::PresenceRequest {
                    channel: channel.clone(),
                }),
                ..Default::default()
            },
            Op::PresenceStats { channel } => Command {
                presence_stats: Some(tether_proto::PresenceStatsRequest {
                    channel: channel.clone(),
                }),
                ..Default::default()
            },
            Op::Rpc { method, data } => Command {
                rpc: Some(tether_proto::RpcRequest {
                    method: method.clone(),
                    data: data.clone(),
                }),
                ..Default::default()
            },
        };
        let deadline = call.deadline;
        self.send(Pending::Call(call), command, deadline);
    }

    // === helpers ===

    fn send(&mut self, pending: Pending, mut command: Command, deadline: Instant) -> u32 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let id = self.next_id;
        command.id = id;
        self.inflight.insert(id, Inflight { pending, deadline });
        self.actions.push_back(Action::Send(Box::new(command)));
        id
    }

    fn fetch(&mut self, target: TokenTarget, source: TokenSource) {
        if self.fetching.contains(&target) {
            return;
        }
        self.fetching.push(target.clone());
        self.actions.push_back(Action::FetchToken(target, source));
    }

    fn set_state(&mut self, state: State) {
        self.state = state;
        *self.shared.state.lock() = state;
    }

    fn emit(&self, event: ClientEvent) {
        // An app that dropped its event receiver does not want events.
        let _ = self.events.send(event);
    }
}

impl Sub {
    fn emit(&self, event: SubscriptionEvent) {
        let _ = self.events.send(event);
    }
}

fn set_sub_state(sub: &mut Sub, state: SubscriptionState) {
    sub.state = state;
    *sub.mirror.lock() = state;
}

fn set_unsubscribed(sub: &mut Sub, code: u32, reason: &str) {
    set_sub_state(sub, SubscriptionState::Unsubscribed);
    sub.resubscribe_at = None;
    sub.refresh_at = None;
    sub.emit(SubscriptionEvent::Unsubscribed {
        code,
        reason: reason.to_owned(),
    });
}

fn on_call_reply(call: Call, reply: Reply) {
    let result = match reply.error {
        Some(error) => Err(Error::server(&error)),
        None => match call.op {
            Op::Publish { .. } => reply.publish.map(|_| Outcome::Published),
            Op::History { .. } => reply.history.map(|h| {
                Outcome::History(HistoryResult {
                    publications: h.publications.into_iter().map(Publication::from).collect(),
                    position: StreamPosition {
                        offset: h.offset,
                        epoch: h.epoch,
                    },
                })
            }),
            Op::Presence { .. } => reply.presence.map(|p| {
                Outcome::Presence(
                    p.presence
                        .into_iter()
                        .map(|(k, v)| (k, ClientInfo::from(v)))
                        .collect(),
                )
            }),
            Op::PresenceStats { .. } => reply.presence_stats.map(|s| {
                Outcome::PresenceStats(PresenceStats {
                    num_clients: s.num_clients,
                    num_users: s.num_users,
                })
            }),
            Op::Rpc { .. } => reply.rpc.map(|r| Outcome::Rpc(r.data)),
        }
        .ok_or_else(Error::protocol),
    };
    let _ = call.reply.send(result);
}

/// Whether a close code means "come back": the protocol's reconnect ranges.
fn reconnects(code: u32) -> bool {
    u16::try_from(code).map_or(true, tether_proto::codes::reconnect)
}

/// Client error 109: the token expired; fetch a new one and try again.
const TOKEN_EXPIRED: u32 = 109;
/// Unsubscribe push codes from here up ask the client to resubscribe.
const RESUBSCRIBE_CODES: u32 = 2500;
/// Backoff step used as the retry delay of a failed refresh.
const RETRY_STEP: u32 = 3;

#[cfg(test)]
mod tests;
