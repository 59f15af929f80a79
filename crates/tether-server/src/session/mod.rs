//! One client's protocol session: commands in, replies out, time injected.
//!
//! A [`Session`] holds what the protocol needs to remember about one connection (its state,
//! user, subscriptions and expiries) and turns each decoded [`Command`] into replies on the
//! connection's outbound queue and calls into the hub, the engine and cluster control. It
//! does no socket I/O: the driver in `transport` feeds it commands and control messages with
//! the current time, writes what it queued, and acts on the [`Disconnect`] it may return. It
//! is not sans-IO all the same: a command's handling awaits the engine (history, presence,
//! publish, subscribe) and, for a token whose key is not cached yet, the JWKS endpoint.
//!
//! Commands of one frame are handled in order, so the reply to `connect` is queued before the
//! replies to the `subscribe` commands that centrifuge-js batches behind it.

mod channel;
mod proxy;
mod rate;
mod stream;
mod subs;
mod subscribe;

use std::sync::Arc;

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use tether_proto::codes::{ClientError, DisconnectCode, UnsubscribeCode};
use tether_proto::{Command, Reply};
use tokio::time::Instant;

use crate::metrics::CommandResult;

use self::channel::{ChannelAccess, Permission};
use self::subscribe::leave_engine;
use crate::auth::TokenError;
use crate::broker::{HistoryQuery, PublishOptions, StreamPosition};
use crate::config::ProxyEvent;
use crate::events::Ended;
use crate::hub::{ConnHandle, Control, SubscribeOverrides, Subscriber};
use crate::node::{Node, Now};
use crate::wire::{Disconnect, encode_frame, to_proto_info, to_proto_publication};

/// Where the session is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for `connect`.
    Connecting,
    /// Authenticated.
    Connected,
    /// A connect failed with an error reply; every further command closes the connection.
    Failed,
    /// The connection ended and its disconnect was reported ([`Session::ended`]); the
    /// cleanup is still to come.
    Ended,
    /// Cleaned up ([`Session::close`] or [`Session::close_abandoned`]); nothing is left to undo.
    Closed,
}

/// Session state of one connection.
#[derive(Debug)]
pub(crate) struct Session {
    conn: ConnHandle,
    state: State,
    user: Arc<str>,
    subs: subs::Subs,
    /// Error replies sent so far (tells the metrics whether a command failed).
    error_replies: u32,
    /// `client.command_rate_limit` state (pongs are not charged).
    rate: rate::CommandLimiter,
    /// Headers, meta and server-side refresh of a connection that uses the backend proxy.
    proxied: Option<Box<proxy::Proxied>>,
}

/// One subscription of this session.
#[derive(Debug)]
struct SubState {
    /// The hub's side of the subscription; also carries the channel's name.
    hub: Arc<Subscriber>,
    server_side: bool,
    presence: bool,
    join_leave: bool,
    chan_info: Option<Bytes>,
    /// Unix seconds at which the subscription token expires.
    expires_at: Option<i64>,
    /// The subscribe proxy gave it and the sub_refresh proxy refreshes it (server-side).
    refresh_by_proxy: bool,
    /// The task feeding it from the backend's subscription stream; dropping it cancels
    /// the stream.
    stream: Option<stream::StreamTask>,
}

impl SubState {
    /// The channel's name.
    fn channel(&self) -> &Arc<str> {
        self.hub.channel()
    }
}

/// Who a connecting client is, from its token, the connect proxy or nothing (anonymous).
#[derive(Debug, Default)]
struct Credentials {
    user: String,
    info: Option<Bytes>,
    /// When the credentials expire (Unix seconds).
    expiry: Option<i64>,
    server_subs: Vec<ServerSub>,
    /// Custom data for the connect result (from the connect proxy).
    data: Option<Bytes>,
}

/// A server-side subscription made at connect.
#[derive(Debug)]
struct ServerSub {
    channel: String,
    overrides: SubscribeOverrides,
    info: Option<Bytes>,
    /// Custom data for its subscribe result.
    data: Option<Bytes>,
}

impl ServerSub {
    /// With the namespace's options as they are.
    fn plain(channel: String) -> Self {
        Self {
            channel,
            overrides: SubscribeOverrides::default(),
            info: None,
            data: None,
        }
    }
}

/// Result of handling a command: `Err` means close the connection with that code.
pub(crate) type Outcome = Result<(), Disconnect>;

impl Session {
    /// A session for a freshly accepted connection.
    ///
    /// `forward` holds the headers of the connection's request that a proxy forwards (none
    /// without proxies that forward headers).
    pub(crate) fn new(conn: ConnHandle, forward: Vec<(HeaderName, HeaderValue)>) -> Self {
        Self {
            conn,
            state: State::Connecting,
            user: Arc::from(""),
            subs: subs::Subs::default(),
            error_replies: 0,
            rate: rate::CommandLimiter::default(),
            proxied: (!forward.is_empty()).then(|| {
                Box::new(proxy::Proxied {
                    forward: crate::proxy::Forward {
                        http: forward,
                        emulated: Vec::new(),
                    },
                    ..Default::default()
                })
            }),
        }
    }

    /// The connection handle.
    pub(crate) fn conn(&self) -> &ConnHandle {
        &self.conn
    }

    /// True once the connect command succeeded.
    pub(crate) fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// The client answered a ping. Pongs are not charged to the command rate limit. A pong
    /// with no ping outstanding is ignored: harmless, and SDKs never send one.
    pub(crate) fn on_pong(&self) {
        self.conn.with_heartbeat(|hb| hb.pong_by = 0);
    }

    /// Handles one command.
    pub(crate) async fn handle_command(&mut self, node: &Node, cmd: Command, now: Now) -> Outcome {
        if is_pong(&cmd) {
            // No ping goes out before the connect reply: a pong before it answers nothing
            // (and a stream of them would only keep a stale connection busy until 3502).
            if !self.is_connected() {
                return Err(DisconnectCode::BAD_REQUEST.into());
            }
            self.on_pong();
            return Ok(());
        }
        let id = cmd.id;
        match self
            .rate
            .check(&node.config.client.command_rate_limit, now.ms)
        {
            rate::Verdict::Allow => {}
            // A command without an id has no reply to carry the error: it is dropped.
            rate::Verdict::Reject if id == 0 => return Ok(()),
            rate::Verdict::Reject => {
                return self.send_reply(id, error_reply(ClientError::TOO_MANY_REQUESTS));
            }
            rate::Verdict::Disconnect => return Err(DisconnectCode::TOO_MANY_REQUESTS.into()),
        }
        let method = cmd.method().name();
        let started = Instant::now();
        let errors_before = self.error_replies;
        let outcome = self.dispatch(node, cmd, now).await;
        let result = if outcome.is_err() || self.error_replies != errors_before {
            CommandResult::Error
        } else {
            CommandResult::Ok
        };
        node.metrics.command(method, result, started.elapsed());
        outcome
    }

    async fn dispatch(&mut self, node: &Node, mut cmd: Command, now: Now) -> Outcome {
        let id = cmd.id;
        if let Some(req) = cmd.connect.take() {
            return self.connect(node, id, &req, now).await;
        }
        match self.state {
            State::Connecting | State::Failed | State::Ended | State::Closed => {
                return Err(DisconnectCode::BAD_REQUEST.into());
            }
            State::Connected => {}
        }
        // `send` only when no request before it in the protocol's order is set (§1.3).
        if cmd.method() == tether_proto::Method::Send {
            // No server-side message handler is configured.
            return Err(DisconnectCode::NOT_AVAILABLE.into());
        }
        if id == 0 {
            return Err(DisconnectCode::BAD_REQUEST.into());
        }
        let reply = if let Some(req) = cmd.subscribe.take() {
            return self.subscribe(node, id, req, now).await;
        } else if let Some(req) = cmd.unsubscribe.take() {
            // As Centrifugo: a channel is required.
            if req.channel.is_empty() {
                return Err(DisconnectCode::BAD_REQUEST.into());
            }
            self.unsubscribe(node, &req.channel, now).await?;
            Reply {
                unsubscribe: Some(Default::default()),
                ..Default::default()
            }
        } else if let Some(req) = cmd.publish.take() {
            self.publish(node, req).await?
        } else if let Some(req) = cmd.presence.take() {
            self.presence(node, &req.channel, false).await?
        } else if let Some(req) = cmd.presence_stats.take() {
            self.presence(node, &req.channel, true).await?
        } else if let Some(req) = cmd.history.take() {
            self.history(node, req, now).await?
        } else if let Some(req) = cmd.rpc.take() {
            self.rpc(node, req).await?
        } else if let Some(req) = cmd.refresh.take() {
            self.refresh(node, &req.token, now).await?
        } else if let Some(req) = cmd.sub_refresh.take() {
            self.sub_refresh(node, &req, now).await?
        } else {
            // `ping` (not supported in protocol v2) or an unknown method.
            return Err(DisconnectCode::BAD_REQUEST.into());
        };
        self.send_reply(id, reply)
    }

    /// Applies a control message from the node (server API or sweeper).
    pub(crate) async fn handle_control(
        &mut self,
        node: &Node,
        control: Control,
        now: Now,
    ) -> Outcome {
        if self.state != State::Connected {
            return Ok(());
        }
        match control {
            Control::Subscribe(req) => self.server_subscribe(node, req, now).await,
            Control::Unsubscribe { channel } => {
                if self.subs.contains_key(&channel) {
                    self.unsubscribe(node, &channel, now).await?;
                    let push = tether_proto::Push {
                        channel,
                        unsubscribe: Some(tether_proto::Unsubscribe {
                            code: u32::from(UNSUBSCRIBE_SERVER.0),
                            reason: UNSUBSCRIBE_SERVER.1.to_owned(),
                        }),
                        ..Default::default()
                    };
                    self.send_push(push)?;
                }
                Ok(())
            }
            Control::Refresh {
                expired,
                expire_at,
                info,
            } => {
                if expired {
                    return Err(DisconnectCode::EXPIRED.into());
                }
                if let Some(info) = info {
                    self.conn.set_info(Some(info));
                }
                if expire_at > 0 {
                    self.set_expiry(node, Some(expire_at), now);
                }
                Ok(())
            }
            Control::CheckExpiry => {
                self.refresh_via_proxy(node, now).await?;
                self.check_sub_expiry(node, now).await
            }
            Control::InsufficientState { channel } => {
                // Only the subscription the notice was for: one that replaced it since (the
                // client left and subscribed again) is not stale.
                let Some(state) = self.subs.get(&channel).filter(|s| s.hub.is_stale()) else {
                    return Ok(());
                };
                if state.server_side {
                    return Err(DisconnectCode::INSUFFICIENT_STATE.into());
                }
                self.unsubscribe(node, &channel, now).await?;
                self.send_push(tether_proto::Push {
                    channel,
                    unsubscribe: Some(UnsubscribeCode::INSUFFICIENT_STATE.into()),
                    ..Default::default()
                })
            }
            Control::StreamEnded {
                channel,
                sub,
                failed,
            } => self.stream_ended(node, &channel, &sub, failed, now).await,
        }
    }

    /// The connection is over (`code` and `reason` as the client was told, or as the peer
    /// closed): reports the disconnect of an authenticated connection. The cleanup follows
    /// with [`Session::close`].
    pub(crate) fn ended(&mut self, node: &Node, code: u16, reason: &str, reconnect: bool) {
        if self.state == State::Connected {
            node.events.disconnected(
                &self.conn,
                &Ended {
                    code,
                    reason: reason.to_owned(),
                    reconnect,
                },
            );
        }
        if self.state != State::Closed {
            self.state = State::Ended;
        }
    }

    /// Cleans up after the connection ended: subscriptions, presence, leave events and the
    /// registries.
    pub(crate) async fn close(&mut self, node: &Node) {
        let channels: Vec<Arc<str>> = self.subs.keys().cloned().collect();
        for channel in channels {
            self.remove_subscription(node, &channel).await;
        }
        node.hub.unregister(&self.conn);
        self.state = State::Closed;
    }

    /// Cleans up after a connection whose task ended without [`Session::close`] (it panicked,
    /// or was dropped): the hub forgets the connection at once, so nothing is delivered to
    /// it and its socket closes with the last handle, and a task of its own takes its
    /// presence, leave events and channel interest out of the engine. A no-op after `close`.
    pub(crate) fn close_abandoned(&mut self, node: &Arc<Node>) {
        if self.state == State::Closed {
            return;
        }
        // Its task ended without the close sequence: a server error as the client sees it.
        let internal = DisconnectCode::INTERNAL;
        self.ended(node, internal.code, internal.reason, true);
        self.state = State::Closed;
        let mut subs = std::mem::take(&mut self.subs);
        for state in subs.values_mut() {
            state.stream = None;
            node.hub.unsubscribe(&state.hub);
        }
        node.hub.unregister(&self.conn);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (node, conn) = (Arc::clone(node), self.conn.clone());
        runtime.spawn(async move {
            for state in subs.into_values() {
                leave_engine(&node, &conn, state).await;
            }
        });
    }

    // === connect ===

    async fn connect(
        &mut self,
        node: &Node,
        id: u32,
        req: &tether_proto::ConnectRequest,
        now: Now,
    ) -> Outcome {
        if self.state != State::Connecting || id == 0 {
            return Err(DisconnectCode::BAD_REQUEST.into());
        }
        let config = &node.config;
        let mut server_subs: Vec<ServerSub> = Vec::new();
        let mut connect_data = None;
        let (user, info, expiry) = if !req.token.is_empty() {
            // A token signed with a JWKS key not seen yet: fetch it first (no-op otherwise).
            node.tokens.ensure_key(&req.token).await;
            let claims = match node.tokens.verify_connect(&req.token, now.unix) {
                Ok(claims) => claims,
                Err(TokenError::Expired) => {
                    return self.fail_connect(id, ClientError::TOKEN_EXPIRED);
                }
                Err(_) => return Err(DisconnectCode::INVALID_TOKEN.into()),
            };
            if claims.sub.is_empty() && config.client.disallow_anonymous_connection_tokens {
                return Err(DisconnectCode::PERMISSION_DENIED.into());
            }
            // As Centrifugo's `VerifyConnectToken`: a server-side subscription in a namespace
            // that is not configured fails the connect with 102.
            if claims
                .channels
                .iter()
                .chain(claims.subs.keys())
                .any(|channel| config.namespace_for(channel).is_err())
            {
                return self.fail_connect(id, ClientError::UNKNOWN_CHANNEL);
            }
            let expiry = claims.expires_at();
            for channel in &claims.channels {
                server_subs.push(ServerSub::plain(channel.clone()));
            }
            for (channel, opts) in claims.subs {
                server_subs.push(ServerSub {
                    channel,
                    overrides: opts
                        .override_
                        .map(SubscribeOverrides::from)
                        .unwrap_or_default(),
                    info: opts.info,
                    data: opts.data,
                });
            }
            (claims.sub, claims.info, expiry)
        } else if let Some(proxy) = node.proxies.connect() {
            let result = match self.connect_via_proxy(node, proxy, req).await? {
                proxy::Verdict::Go(result) => result,
                proxy::Verdict::Reply(reply) => {
                    self.state = State::Failed;
                    return self.send_reply(id, *reply);
                }
            };
            let Some(result) = result else {
                // No credentials: as a connect without a token and without a proxy.
                if !(config.client.insecure || config.client.allow_anonymous_connect_without_token)
                {
                    return Err(DisconnectCode::BAD_REQUEST.into());
                }
                return self
                    .finish_connect(node, id, req, Credentials::default(), now)
                    .await;
            };
            // The backend decided: no permission checks, but every channel needs a namespace.
            if result
                .channels
                .iter()
                .chain(result.subs.keys())
                .any(|channel| config.namespace_for(channel).is_err())
            {
                return self.fail_connect(id, ClientError::UNKNOWN_CHANNEL);
            }
            for channel in &result.channels {
                if !result.subs.contains_key(channel) {
                    server_subs.push(ServerSub::plain(channel.clone()));
                }
            }
            for (channel, opts) in result.subs {
                let o = opts.overrides;
                server_subs.push(ServerSub {
                    channel,
                    overrides: SubscribeOverrides {
                        presence: o.presence,
                        join_leave: o.join_leave,
                        force_push_join_leave: o.force_push_join_leave,
                        force_recovery: o.force_recovery,
                        force_positioning: o.force_positioning,
                    },
                    info: opts.info,
                    data: opts.data,
                });
            }
            connect_data = result.data;
            (
                result.user,
                result.info,
                (result.expire_at > 0).then_some(result.expire_at),
            )
        } else {
            if !(config.client.insecure || config.client.allow_anonymous_connect_without_token) {
                return Err(DisconnectCode::BAD_REQUEST.into());
            }
            (String::new(), None, None)
        };
        let credentials = Credentials {
            user,
            info,
            expiry,
            server_subs,
            data: connect_data,
        };
        self.finish_connect(node, id, req, credentials, now).await
    }

    /// The rest of a connect once the credentials are known, however they were obtained.
    async fn finish_connect(
        &mut self,
        node: &Node,
        id: u32,
        req: &tether_proto::ConnectRequest,
        credentials: Credentials,
        now: Now,
    ) -> Outcome {
        let config = &node.config;
        let Credentials {
            user,
            info,
            expiry,
            mut server_subs,
            data: connect_data,
        } = credentials;
        let expiry = if config.client.insecure { None } else { expiry };
        if let Some(at) = expiry
            && at <= now.unix
        {
            return self.fail_connect(id, ClientError::EXPIRED);
        }
        let limit = config.client.user_connection_limit;
        if limit > 0 && !user.is_empty() && node.hub.user_conn_count(&user) >= limit {
            return Err(DisconnectCode::CONNECTION_LIMIT.into());
        }
        let personal = &config.client.subscribe_to_user_personal_channel;
        let mut personal_channel = None;
        if personal.enabled && !user.is_empty() {
            let channel = if personal.personal_channel_namespace.is_empty() {
                format!("{}{user}", config.channel.user_boundary)
            } else {
                format!(
                    "{}{}{}{user}",
                    personal.personal_channel_namespace,
                    config.channel.namespace_boundary,
                    config.channel.user_boundary
                )
            };
            personal_channel = Some(channel.clone());
            server_subs.push(ServerSub::plain(channel));
        }
        // As the reference server: more server-side subscriptions than the channel limit
        // allows close the connection with 3505 rather than exceed the limit.
        let channel_limit = config.client.channel_limit;
        if channel_limit > 0 {
            let distinct: std::collections::HashSet<&str> =
                server_subs.iter().map(|sub| sub.channel.as_str()).collect();
            if distinct.len() > channel_limit {
                return Err(DisconnectCode::CHANNEL_LIMIT.into());
            }
        }
        self.user = Arc::from(user.as_str());
        self.conn.set_identity(self.user.clone(), info);
        self.conn.set_connected_at(now.unix);
        node.hub.add_user_conn(&self.conn);
        self.state = State::Connected;
        node.events.connected(&self.conn);
        node.metrics.connected();
        tracing::Span::current().record("user", &*user);
        if node.proxies.refresh().is_some() {
            // Server-side refresh: the refresh proxy is asked when the credentials expire.
            if let Some(at) = expiry {
                self.proxied_mut().refresh_at = at;
                self.schedule_sub_expiry(node, now);
            }
        } else {
            self.set_expiry(node, expiry, now);
        }
        let ping = config.client.ping_interval;
        let first_ping = node.first_ping_delay_ms();
        self.conn.with_heartbeat(|hb| {
            hb.stale_at = 0;
            hb.ping_at = if ping.is_zero() {
                0
            } else {
                now.ms + first_ping
            };
        });

        let mut result = tether_proto::ConnectResult {
            client: self.conn.client.to_string(),
            version: node.version.clone(),
            ping: ping.as_secs() as u32,
            pong: !ping.is_zero() && !config.client.pong_timeout.is_zero(),
            ..Default::default()
        };
        // With server-side refresh (the refresh proxy) the client is not told when its
        // credentials expire, as centrifuge's `connectCmd` does: it has nothing to refresh.
        if let Some(at) = expiry.filter(|_| node.proxies.refresh().is_none()) {
            result.expires = true;
            result.ttl = (at - now.unix).max(0) as u32;
        }
        result.data = connect_data.unwrap_or_default();
        // Server-side subscriptions are set up before the reply is queued (their results go
        // into it) and made live right after it.
        let mut pending = Vec::new();
        for ServerSub {
            channel,
            overrides,
            info,
            data,
        } in server_subs
        {
            if self.subs.contains_key(&channel) || node.config.namespace_for(&channel).is_err() {
                continue;
            }
            let recover = req
                .subs
                .get(&channel)
                .filter(|s| s.recover)
                .map(|s| StreamPosition {
                    offset: s.offset,
                    epoch: s.epoch.clone(),
                });
            let setup = self
                .setup_server_sub(node, &channel, overrides, info, recover, now)
                .await;
            // Without its server-side subscriptions the connection would silently miss
            // publications: fail it so the client reconnects and tries again.
            let Ok(setup) = setup else {
                return Err(DisconnectCode::INTERNAL.into());
            };
            let (mut sub_result, top) = setup.result;
            sub_result.data = data.unwrap_or_default();
            result.subs.insert(channel.clone(), sub_result);
            pending.push((channel, setup.sub, top));
        }
        self.send_reply(
            id,
            Reply {
                connect: Some(result),
                ..Default::default()
            },
        )?;
        for (channel, sub, top) in pending {
            node.hub.activate(&channel, &sub, Vec::new(), top);
            self.after_subscribed(node, &channel).await;
        }
        // As Centrifugo's `OnConnect`: with `single_connection`, a second connection in the
        // personal channel's presence closes the user's other connections with 3504.
        if let Some(channel) = personal_channel.filter(|_| personal.single_connection) {
            let Ok(stats) = node.engine.presence_stats(&channel).await else {
                return Err(DisconnectCode::INTERNAL.into());
            };
            if stats.num_clients >= 2 {
                node.cluster
                    .disconnect_user(
                        &self.user,
                        vec![self.conn.client.to_string()],
                        DisconnectCode::CONNECTION_LIMIT.into(),
                    )
                    .await;
            }
        }
        Ok(())
    }

    fn fail_connect(&mut self, id: u32, error: ClientError) -> Outcome {
        self.state = State::Failed;
        self.send_reply(id, error_reply(error))
    }

    /// Sets the connection expiry and the sweeper deadline that enforces it.
    fn set_expiry(&mut self, node: &Node, expiry: Option<i64>, now: Now) {
        let deadline = expiry.map_or(0, |at| {
            let delay = node.config.client.expired_close_delay.as_millis() as u64;
            // Saturating: `at` comes from a token or the server API and may be any i64; a
            // deadline past the end of the clock simply never fires.
            now.ms
                .saturating_add(ms_until(at, now))
                .saturating_add(delay)
        });
        self.conn.with_heartbeat(|hb| hb.expire_at = deadline);
    }

    // === refresh ===

    async fn refresh(&mut self, node: &Node, token: &str, now: Now) -> Result<Reply, Disconnect> {
        // With the refresh proxy the server refreshes: a client refresh is a protocol
        // violation, as in the reference server ("server-side refresh expected").
        if token.is_empty() || node.proxies.refresh().is_some() {
            return Err(DisconnectCode::BAD_REQUEST.into());
        }
        node.tokens.ensure_key(token).await;
        let claims = match node.tokens.verify_connect(token, now.unix) {
            Ok(claims) => claims,
            Err(TokenError::Expired) => return Ok(error_reply(ClientError::TOKEN_EXPIRED)),
            Err(_) => return Err(DisconnectCode::INVALID_TOKEN.into()),
        };
        if claims.sub != *self.user {
            return Err(DisconnectCode::INVALID_TOKEN.into());
        }
        let expiry = claims.expires_at();
        let expiry = if node.config.client.insecure {
            None
        } else {
            expiry
        };
        if let Some(at) = expiry
            && at <= now.unix
        {
            return Ok(error_reply(ClientError::EXPIRED));
        }
        if claims.info.is_some() {
            self.conn.set_info(claims.info);
        }
        self.set_expiry(node, expiry, now);
        let result = tether_proto::RefreshResult {
            client: self.conn.client.to_string(),
            version: node.version.clone(),
            expires: expiry.is_some(),
            ttl: expiry.map_or(0, |at| (at - now.unix).max(0) as u32),
        };
        Ok(Reply {
            refresh: Some(result),
            ..Default::default()
        })
    }

    // === publish, presence, history ===

    async fn publish(
        &mut self,
        node: &Node,
        req: tether_proto::PublishRequest,
    ) -> Result<Reply, Disconnect> {
        // As Centrifugo: channel and data are required.
        if req.data.is_empty() {
            return Err(DisconnectCode::BAD_REQUEST.into());
        }
        // Into this client's bidirectional subscription stream, which the backend opened
        // for it: the backend decides what becomes of it.
        if let Some(reply) = self.publish_into_stream(&req.channel, &req.data).await {
            return Ok(reply);
        }
        let access = match self.access(node, &req.channel)? {
            Ok(access) => access,
            Err(error) => return Ok(error_reply(error)),
        };
        if access.options.subscribe_stream_proxy_enabled {
            // Otherwise publications in a stream namespace come from the backend's streams
            // only.
            return Ok(error_reply(ClientError::NOT_AVAILABLE));
        }
        let chan_info = self
            .subs
            .get(&req.channel)
            .and_then(|s| s.chan_info.clone());
        let mut publication = crate::broker::Publication {
            data: req.data,
            info: Some(self.conn.client_info(chan_info)),
            delta: access.options.delta_publish,
            time_ms: now_unix_ms(),
            ..Default::default()
        };
        let mut opts = PublishOptions {
            history: access.history_options(node),
            idempotency_key: None,
        };
        if access.options.publish_proxy_enabled {
            // The backend decides instead of the publish permissions, and may change what
            // is published (compat-proxy §6.4).
            let Some(proxy) = node
                .proxies
                .get(ProxyEvent::Publish, &access.options.publish_proxy_name)
            else {
                return Ok(error_reply(ClientError::NOT_AVAILABLE));
            };
            let result = match self
                .publish_via_proxy(proxy, &req.channel, &publication.data)
                .await?
            {
                proxy::Verdict::Go(result) => result.unwrap_or_default(),
                proxy::Verdict::Reply(reply) => return Ok(*reply),
            };
            if let Some(data) = result.data {
                publication.data = data;
            }
            if result.skip_history {
                opts.history = None;
            }
            publication.tags = result.tags.into_iter().collect();
            publication.delta = result.delta;
            if !result.idempotency_key.is_empty() {
                opts.idempotency_key = Some(result.idempotency_key);
            }
        } else if !access.allows(Permission::Publish) {
            return Ok(error_reply(ClientError::PERMISSION_DENIED));
        }
        match node
            .timed(
                "publish",
                node.engine.publish(&req.channel, publication, &opts),
            )
            .await
        {
            Ok(_) => {
                node.metrics.publications.increment(1);
                Ok(Reply {
                    publish: Some(Default::default()),
                    ..Default::default()
                })
            }
            Err(error) => Ok(error_reply(engine_error(&error))),
        }
    }

    async fn presence(
        &mut self,
        node: &Node,
        channel: &str,
        stats: bool,
    ) -> Result<Reply, Disconnect> {
        let access = match self.access(node, channel)? {
            Ok(access) => access,
            Err(error) => return Ok(error_reply(error)),
        };
        if !access.options.presence {
            return Ok(error_reply(ClientError::NOT_AVAILABLE));
        }
        if !access.allows(Permission::Presence) {
            return Ok(error_reply(ClientError::PERMISSION_DENIED));
        }
        if stats {
            let Ok(s) = node
                .timed("presence_stats", node.engine.presence_stats(channel))
                .await
            else {
                return Ok(error_reply(ClientError::INTERNAL));
            };
            let result = tether_proto::PresenceStatsResult {
                num_clients: s.num_clients,
                num_users: s.num_users,
            };
            return Ok(Reply {
                presence_stats: Some(result),
                ..Default::default()
            });
        }
        let Ok(presence) = node.timed("presence", node.engine.presence(channel)).await else {
            return Ok(error_reply(ClientError::INTERNAL));
        };
        let presence = presence
            .into_iter()
            .map(|(k, v)| (k, to_proto_info(&v)))
            .collect();
        Ok(Reply {
            presence: Some(tether_proto::PresenceResult { presence }),
            ..Default::default()
        })
    }

    async fn history(
        &mut self,
        node: &Node,
        req: tether_proto::HistoryRequest,
        now: Now,
    ) -> Result<Reply, Disconnect> {
        let access = match self.access(node, &req.channel)? {
            Ok(access) => access,
            Err(error) => return Ok(error_reply(error)),
        };
        if !access.options.history_enabled() {
            return Ok(error_reply(ClientError::NOT_AVAILABLE));
        }
        if !access.allows(Permission::History) {
            return Ok(error_reply(ClientError::PERMISSION_DENIED));
        }
        let max = node.config.client.history_max_publication_limit;
        let limit = if req.limit < 0 || req.limit as usize > max {
            max
        } else {
            req.limit as usize
        };
        let since = req.since.map(|p| StreamPosition {
            offset: p.offset,
            epoch: p.epoch,
        });
        if req.reverse && since.as_ref().is_some_and(|s| s.offset == 0) {
            return Ok(error_reply(ClientError::BAD_REQUEST));
        }
        let query = HistoryQuery {
            since,
            limit: Some(limit),
            reverse: req.reverse,
            meta_ttl: access.meta_ttl(node),
        };
        let _ = now;
        match node
            .timed("history", node.engine.history(&req.channel, &query))
            .await
        {
            Ok(page) => {
                let result = tether_proto::HistoryResult {
                    publications: page
                        .publications
                        .iter()
                        .map(|p| to_proto_publication(p, p.data.clone(), false))
                        .collect(),
                    epoch: page.top.epoch,
                    offset: page.top.offset,
                };
                Ok(Reply {
                    history: Some(result),
                    ..Default::default()
                })
            }
            Err(error) => Ok(error_reply(engine_error(&error))),
        }
    }

    /// Resolves a channel's namespace for publish/presence/history: an empty channel closes
    /// the connection, a too long one or an unknown namespace is an error reply.
    fn access<'a>(
        &self,
        node: &'a Node,
        channel: &str,
    ) -> Result<Result<ChannelAccess<'a>, ClientError>, Disconnect> {
        if channel.is_empty() {
            return Err(DisconnectCode::BAD_REQUEST.into());
        }
        Ok(ChannelAccess::resolve(
            node,
            channel,
            &self.user,
            self.subs.contains_key(channel),
        ))
    }

    // === output ===

    fn send_reply(&mut self, id: u32, mut reply: Reply) -> Outcome {
        reply.id = id;
        if reply.error.is_some() {
            self.error_replies = self.error_replies.wrapping_add(1);
        }
        self.enqueue_reply(&reply)
    }

    fn send_push(&self, push: tether_proto::Push) -> Outcome {
        self.enqueue_reply(&Reply {
            push: Some(push),
            ..Default::default()
        })
    }

    fn enqueue_reply(&self, reply: &Reply) -> Outcome {
        let frame = self.encode(reply)?;
        self.conn.enqueue_reply(frame);
        Ok(())
    }

    fn encode(&self, reply: &Reply) -> Result<Bytes, Disconnect> {
        encode_frame(self.conn.encoding, self.conn.framing, reply)
            .map_err(|_| DisconnectCode::INAPPROPRIATE_PROTOCOL.into())
    }
}

fn is_pong(cmd: &Command) -> bool {
    cmd.id == 0 && *cmd == Command::default()
}

/// The client error for a failed engine operation.
fn engine_error(error: &crate::broker::BrokerError) -> ClientError {
    use crate::broker::BrokerError;
    match error {
        BrokerError::UnrecoverablePosition => ClientError::UNRECOVERABLE_POSITION,
        BrokerError::UnsupportedChannel => ClientError::BAD_REQUEST,
        BrokerError::NotAvailable => ClientError::NOT_AVAILABLE,
        BrokerError::Unavailable(_) => ClientError::INTERNAL,
    }
}

fn error_reply(error: ClientError) -> Reply {
    Reply {
        error: Some(error.into()),
        ..Default::default()
    }
}

/// Milliseconds from `now` until Unix second `at` (0 when past), saturating.
pub(super) fn ms_until(at: i64, now: Now) -> u64 {
    u64::try_from(at.saturating_sub(now.unix))
        .unwrap_or(0)
        .saturating_mul(1000)
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Unsubscribe push sent for a server API unsubscribe.
const UNSUBSCRIBE_SERVER: (u16, &str) = (2000, "server unsubscribe");
/// Unsubscribe push for an expired client-side subscription.
const UNSUBSCRIBE_EXPIRED: (u16, &str) = (2501, "subscription expired");

#[cfg(test)]
mod tests {
    use tether_proto::{Command, ConnectRequest, Encoding, SubscribeRequest, UnsubscribeRequest};

    use super::*;
    use crate::config::{Config, Namespace, NamespaceOptions};
    use crate::wire::Framing;

    /// An insufficient-state notice for a subscription the client has since left must not
    /// end the new, healthy subscription to the same channel that replaced it (a 2500 the
    /// client did not deserve; for a server-side subscription, a 3010 disconnect).
    #[tokio::test]
    async fn a_stale_notice_for_a_left_subscription_spares_its_replacement() {
        let mut config = Config::default();
        config.client.insecure = true;
        config.channel.namespaces.push(Namespace {
            name: "chat".to_owned(),
            options: NamespaceOptions {
                history_size: 10,
                history_ttl: std::time::Duration::from_secs(300),
                force_recovery: true,
                allow_subscribe_for_client: true,
                ..Default::default()
            },
        });
        let node = Node::new(config).await.expect("node");
        let conn = node
            .hub
            .register(Encoding::Json, Framing::WebSocket, 1 << 20, None);
        let mut session = Session::new(conn.clone(), Vec::new());
        let subscribe = |id| Command {
            id,
            subscribe: Some(SubscribeRequest {
                channel: "chat:x".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let connect = Command {
            id: 1,
            connect: Some(ConnectRequest::default()),
            ..Default::default()
        };
        for command in [connect, subscribe(2)] {
            session
                .handle_command(&node, command, node.now())
                .await
                .expect("connect and subscribe");
        }
        // The stream loses continuity for the first subscription...
        node.hub.insufficient_state("chat:x");
        // ...and before the notice is applied the client leaves and subscribes again.
        let unsubscribe = Command {
            id: 3,
            unsubscribe: Some(UnsubscribeRequest {
                channel: "chat:x".to_owned(),
            }),
            ..Default::default()
        };
        for command in [unsubscribe, subscribe(4)] {
            session
                .handle_command(&node, command, node.now())
                .await
                .expect("unsubscribe and subscribe again");
        }
        conn.take_queued();
        for control in conn.take_work().controls {
            session
                .handle_control(&node, control, node.now())
                .await
                .expect("control");
        }
        let out: Vec<String> = conn
            .take_queued()
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect();
        assert!(
            out.iter().all(|f| !f.contains("\"unsubscribe\"")),
            "the new subscription was ended: {out:?}"
        );
        assert!(session.subs.contains_key("chat:x"));
    }
}
