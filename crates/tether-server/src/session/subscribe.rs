//! Subscriptions: permission checks, positioning and the recovery decision.
//!
//! Recovery is all or nothing (§2.3 of the compatibility reference): a reconnecting client
//! gets exactly the publications it missed, or `recovered: false` and none of them. While a
//! subscription is being set up the hub parks live publications; the session reads history,
//! queues its reply and then lets the hub replay what was parked above the position it
//! reported, so nothing is lost or duplicated between history and live delivery.

use std::sync::Arc;

use bytes::Bytes;
use tether_proto::codes::{ClientError, DisconnectCode};
use tether_proto::{Reply, SubscribeRequest, SubscribeResult};

use super::channel::{ChannelAccess, Permission, meta_ttl};
use super::proxy::Verdict;
use super::{Now, Outcome, Session, SubState, UNSUBSCRIBE_EXPIRED, engine_error, error_reply};
use crate::auth::TokenError;
use crate::broker::{BrokerError, HistoryQuery, StreamPosition};
use crate::config::ProxyEvent;
use crate::config::{NamespaceOptions, RecoveryMode};
use crate::hub::{Conn, ServerSubscribe, SubscribeOverrides, Subscriber, SubscriberFlags};
use crate::metrics::RecoveryOutcome;
use crate::node::Node;
use crate::wire::Disconnect;

/// What a subscription was set up with.
#[derive(Debug, Default)]
struct SubParams {
    positioned: bool,
    recoverable: bool,
    /// The client's last position when it asked to recover.
    recover_from: Option<StreamPosition>,
    /// Answer 112 instead of an unrecovered subscription (subscribe flag bit 2).
    reject_unrecovered: bool,
    delta: bool,
    /// Push join/leave to this subscriber.
    push_join_leave: bool,
    presence: bool,
    /// Emit join/leave for this subscriber.
    join_leave: bool,
    chan_info: Option<Bytes>,
    /// Custom data for the subscribe result (a subscription token's `data`).
    data: Option<Bytes>,
    expires_at: Option<i64>,
    server_side: bool,
    /// The namespace's subscribe proxy decides this subscription.
    via_proxy: bool,
    /// Its expiry is refreshed by the sub_refresh proxy, not by the client.
    refresh_by_proxy: bool,
    /// The namespace's subscribe stream proxy decides this subscription and feeds it.
    via_stream: bool,
}

/// A subscription registered with the hub (pending) and the result to report.
pub(super) struct Opened {
    pub(super) sub: Arc<Subscriber>,
    /// The result and the offset up to which publications are already accounted for.
    pub(super) result: (SubscribeResult, Option<u64>),
}

/// Subscribe flag bit: reply 112 rather than subscribe without recovery.
const FLAG_REJECT_UNRECOVERED: i64 = 2;

impl Session {
    /// Client-side `subscribe`.
    pub(super) async fn subscribe(
        &mut self,
        node: &Node,
        id: u32,
        req: SubscribeRequest,
        now: Now,
    ) -> Outcome {
        if !req.token.is_empty() {
            let verifier = node.sub_tokens.as_ref().unwrap_or(&node.tokens);
            verifier.ensure_key(&req.token).await;
        }
        match self.check_subscribe(node, &req, now)? {
            Ok(mut params) => {
                let mut stream = None;
                if params.via_proxy {
                    match self.proxy_subscribe_params(node, &req, now).await? {
                        Ok(proxied) => params = proxied,
                        Err(reply) => return self.send_reply(id, reply),
                    }
                } else if params.via_stream {
                    let (result, opened) = match self.open_subscribe_stream(node, &req).await? {
                        Ok(opened) => opened,
                        Err(reply) => return self.send_reply(id, reply),
                    };
                    match self.proxied_params(node, &req, result, true, now) {
                        Ok(proxied) => params = proxied,
                        Err(error) => return self.send_reply(id, error_reply(error)),
                    }
                    stream = Some(opened);
                }
                let channel = req.channel;
                let opened = match self.open(node, &channel, params, now).await {
                    Ok(opened) => opened,
                    Err(error) => return self.send_reply(id, error_reply(error)),
                };
                let (result, top) = opened.result;
                let reply = Reply {
                    id,
                    subscribe: Some(result),
                    ..Default::default()
                };
                let frame = self.encode(&reply)?;
                node.hub.activate(&channel, &opened.sub, vec![frame], top);
                if let Some(stream) = stream {
                    self.feed_from_stream(&opened.sub, stream);
                }
                self.after_subscribed(node, &channel).await;
                Ok(())
            }
            Err(error) => self.send_reply(id, error_reply(error)),
        }
    }

    /// Runs the checks of a client-side subscribe; `Err` closes the connection, `Ok(Err)` is
    /// an error reply.
    fn check_subscribe(
        &self,
        node: &Node,
        req: &SubscribeRequest,
        now: Now,
    ) -> Result<Result<SubParams, ClientError>, Disconnect> {
        let channel = req.channel.as_str();
        if channel.is_empty() {
            return Err(DisconnectCode::BAD_REQUEST.into());
        }
        let config = &node.config;
        let access = match ChannelAccess::resolve(node, channel, &self.user, false) {
            Ok(access) => access,
            Err(error) => return Ok(Err(error)),
        };
        if self.subs.contains_key(channel) {
            return Ok(Err(ClientError::ALREADY_SUBSCRIBED));
        }
        if self.subs.len() >= config.client.channel_limit {
            return Ok(Err(ClientError::LIMIT_EXCEEDED));
        }
        let ns = access.options;
        let mut overrides = SubscribeOverrides::default();
        let mut chan_info = None;
        let mut data = None;
        let mut expires_at = None;
        if !req.token.is_empty() {
            let verifier = node.sub_tokens.as_ref().unwrap_or(&node.tokens);
            let claims = match verifier.verify_subscribe(&req.token, now.unix) {
                Ok(claims) => claims,
                Err(TokenError::Expired) => return Ok(Err(ClientError::TOKEN_EXPIRED)),
                Err(_) => return Ok(Err(ClientError::PERMISSION_DENIED)),
            };
            if claims.channel != channel
                || claims.sub != *self.user
                || claims
                    .client
                    .as_deref()
                    .is_some_and(|c| c != self.conn.client.as_str())
            {
                return Err(DisconnectCode::INVALID_TOKEN.into());
            }
            expires_at = claims.expires_at();
            if let Some(at) = expires_at
                && at <= now.unix
            {
                return Ok(Err(ClientError::EXPIRED));
            }
            overrides = claims
                .override_
                .map(SubscribeOverrides::from)
                .unwrap_or_default();
            chan_info = claims.info;
            data = claims.data;
        } else if channel.starts_with(config.channel.private_prefix.as_str())
            && !config.channel.private_prefix.is_empty()
        {
            return Ok(Err(ClientError::PERMISSION_DENIED));
        } else if let Some(users) = user_limited(node, ns, channel) {
            // As Centrifugo: a user not listed falls through to `client.insecure` only.
            let listed = !self.user.is_empty()
                && users
                    .split(config.channel.user_separator.as_str())
                    .any(|u| u == &*self.user);
            if !listed && !config.client.insecure {
                return Ok(Err(ClientError::PERMISSION_DENIED));
            }
        } else if ns.subscribe_stream_proxy_enabled {
            // The backend decides, and feeds the subscription from a stream.
            return Ok(Ok(SubParams {
                via_stream: true,
                ..Default::default()
            }));
        } else if ns.subscribe_proxy_enabled {
            // The backend decides (and the client's own flags are not honoured).
            return Ok(Ok(SubParams {
                via_proxy: true,
                ..Default::default()
            }));
        } else if !access.allows(Permission::Subscribe) {
            return Ok(Err(ClientError::PERMISSION_DENIED));
        }

        let history = ChannelAccess::resolve(node, channel, &self.user, true)
            .map(|a| a.allows(Permission::History))
            .unwrap_or(false);
        let presence_allowed = ChannelAccess::resolve(node, channel, &self.user, true)
            .map(|a| a.allows(Permission::Presence))
            .unwrap_or(false);
        let mut params = self.params_for(ns, overrides);
        if ns.history_enabled() {
            params.recoverable =
                params.recoverable || (req.recoverable && (ns.allow_recovery || history));
            params.positioned = params.recoverable
                || params.positioned
                || (req.positioned && (ns.allow_positioning || history));
        }
        if params.recoverable && req.recover {
            params.recover_from = Some(StreamPosition {
                offset: req.offset,
                epoch: req.epoch.clone(),
            });
        }
        params.reject_unrecovered = req.flag & FLAG_REJECT_UNRECOVERED != 0;
        params.delta = req.delta == "fossil"
            && params.positioned
            && ns.allowed_delta_types.iter().any(|t| t == "fossil");
        let force_push = overrides
            .force_push_join_leave
            .unwrap_or(ns.force_push_join_leave);
        params.push_join_leave =
            params.join_leave && (force_push || (req.join_leave && presence_allowed));
        params.chan_info = chan_info;
        params.data = data;
        params.expires_at = expires_at;
        Ok(Ok(params))
    }

    /// A subscribe the namespace's subscribe proxy decides (compat-proxy §6.3): `Ok(Err)`
    /// is the command's error reply.
    async fn proxy_subscribe_params(
        &self,
        node: &Node,
        req: &SubscribeRequest,
        now: Now,
    ) -> Result<Result<SubParams, Reply>, Disconnect> {
        let channel = req.channel.as_str();
        let Ok(ns) = node.config.namespace_for(channel) else {
            return Ok(Err(error_reply(ClientError::UNKNOWN_CHANNEL)));
        };
        let Some(proxy) = node
            .proxies
            .get(ProxyEvent::Subscribe, &ns.subscribe_proxy_name)
        else {
            return Ok(Err(error_reply(ClientError::NOT_AVAILABLE)));
        };
        let result = match self.subscribe_via_proxy(proxy, req).await? {
            Verdict::Go(result) => result.unwrap_or_default(),
            Verdict::Reply(reply) => return Ok(Err(*reply)),
        };
        Ok(self
            .proxied_params(node, req, result, false, now)
            .map_err(error_reply))
    }

    /// A subscription's options from the backend's subscribe result (the subscribe proxy's,
    /// or a subscription stream's first message): `Err` is the command's error. A
    /// stream's subscription is never recoverable nor positioned.
    fn proxied_params(
        &self,
        node: &Node,
        req: &SubscribeRequest,
        result: crate::proxy::SubscribeResult,
        stream: bool,
        now: Now,
    ) -> Result<SubParams, ClientError> {
        let Ok(ns) = node.config.namespace_for(&req.channel) else {
            return Err(ClientError::UNKNOWN_CHANNEL);
        };
        let expires_at = (result.expire_at > 0).then_some(result.expire_at);
        if expires_at.is_some_and(|at| at <= now.unix) {
            return Err(ClientError::EXPIRED);
        }
        let o = result.overrides;
        let overrides = SubscribeOverrides {
            presence: o.presence,
            join_leave: o.join_leave,
            force_push_join_leave: o.force_push_join_leave,
            force_recovery: if stream {
                Some(false)
            } else {
                o.force_recovery
            },
            force_positioning: if stream {
                Some(false)
            } else {
                o.force_positioning
            },
        };
        let mut params = self.params_for(ns, overrides);
        params.push_join_leave = params.join_leave
            && overrides
                .force_push_join_leave
                .unwrap_or(ns.force_push_join_leave);
        params.delta = req.delta == "fossil"
            && params.positioned
            && ns.allowed_delta_types.iter().any(|t| t == "fossil");
        params.chan_info = result.info;
        params.data = result.data;
        params.expires_at = expires_at;
        params.refresh_by_proxy = expires_at.is_some() && ns.sub_refresh_proxy_enabled;
        Ok(params)
    }

    /// Options every subscription to `ns` starts from, with overrides applied.
    fn params_for(&self, ns: &NamespaceOptions, overrides: SubscribeOverrides) -> SubParams {
        let history_on = ns.history_enabled();
        let recoverable = history_on && overrides.force_recovery.unwrap_or(ns.force_recovery);
        let positioned = history_on
            && (recoverable || overrides.force_positioning.unwrap_or(ns.force_positioning));
        SubParams {
            positioned,
            recoverable,
            presence: overrides.presence.unwrap_or(ns.presence),
            join_leave: overrides.join_leave.unwrap_or(ns.join_leave),
            ..Default::default()
        }
    }

    /// Registers the subscription with the hub (pending) and computes its result: position,
    /// and the recovery decision when the client asked to recover.
    async fn open(
        &mut self,
        node: &Node,
        channel: &str,
        params: SubParams,
        now: Now,
    ) -> Result<Opened, ClientError> {
        let flags = SubscriberFlags {
            join_leave: params.push_join_leave,
            delta: params.delta,
            positioned: params.positioned,
        };
        let ns = node
            .config
            .namespace_for(channel)
            .map_err(|_| ClientError::UNKNOWN_CHANNEL)?;
        // Registered (pending) before the engine subscription and the history read, so no
        // publication can fall between them.
        let sub = node.hub.subscribe(channel, &self.conn, flags);
        if let Err(error) = node.engine.subscribe(channel).await {
            node.hub.unsubscribe(&sub);
            return Err(engine_error(&error));
        }
        let mut result = SubscribeResult {
            positioned: params.positioned,
            recoverable: params.recoverable,
            delta: params.delta,
            data: params.data.clone().unwrap_or_default(),
            ..Default::default()
        };
        if let Some(at) = params.expires_at.filter(|_| !params.refresh_by_proxy) {
            result.expires = true;
            result.ttl = (at - now.unix).max(0) as u32;
        }
        let mut top = None;
        if params.positioned {
            let meta_ttl = meta_ttl(node, ns);
            let position_only = HistoryQuery {
                since: None,
                limit: Some(0),
                reverse: false,
                meta_ttl,
            };
            let read = match &params.recover_from {
                Some(since) if ns.force_recovery_mode == RecoveryMode::Cache => {
                    result.was_recovering = true;
                    // Cache mode: only the latest publication matters; recovered when it is
                    // the stream's top (or the stream is empty), in the client's epoch.
                    let latest = HistoryQuery {
                        since: None,
                        limit: Some(1),
                        reverse: true,
                        meta_ttl,
                    };
                    node.timed("history", node.engine.history(channel, &latest))
                        .await
                        .map(|mut page| {
                            let same_epoch =
                                since.epoch.is_empty() || since.epoch == page.top.epoch;
                            let recovered = same_epoch
                                && match page.publications.first() {
                                    Some(latest) => latest.offset == page.top.offset,
                                    None => page.top.offset == 0,
                                };
                            // Nothing to send when the client already has the latest.
                            page.publications.retain(|p| {
                                !(since.epoch == page.top.epoch && p.offset <= since.offset)
                            });
                            (page, recovered)
                        })
                }
                Some(since) => {
                    result.was_recovering = true;
                    let query = HistoryQuery {
                        since: Some(since.clone()),
                        limit: Some(node.config.client.recovery_max_publication_limit),
                        reverse: false,
                        meta_ttl,
                    };
                    match node
                        .timed("history", node.engine.history(channel, &query))
                        .await
                    {
                        Err(BrokerError::UnrecoverablePosition) => node
                            .engine
                            .history(channel, &position_only)
                            .await
                            .map(|page| (page, false)),
                        other => other.map(|page| {
                            let recovered =
                                match (page.publications.first(), page.publications.last()) {
                                    (Some(first), Some(last)) => {
                                        first.offset == since.offset + 1
                                            && last.offset == page.top.offset
                                    }
                                    _ => page.top.offset == since.offset,
                                };
                            (page, recovered)
                        }),
                    }
                }
                None => node
                    .engine
                    .history(channel, &position_only)
                    .await
                    .map(|page| (page, false)),
            };
            let (page, recovered) = match read {
                Ok(read) => read,
                Err(error) => {
                    self.abandon(node, &sub).await;
                    return Err(engine_error(&error));
                }
            };
            if result.was_recovering {
                node.metrics.recovery(if recovered {
                    RecoveryOutcome::Recovered
                } else {
                    RecoveryOutcome::NotRecovered
                });
            }
            if result.was_recovering && !recovered && params.reject_unrecovered {
                self.abandon(node, &sub).await;
                return Err(ClientError::UNRECOVERABLE_POSITION);
            }
            result.epoch = page.top.epoch.clone();
            top = Some(page.top.offset);
            if recovered {
                result.recovered = true;
                result.offset = params.recover_from.as_ref().map_or(0, |s| s.offset);
                result.publications = page
                    .publications
                    .iter()
                    .map(|p| node.hub.recovered_publication(&sub, p))
                    .collect();
            } else {
                result.offset = page.top.offset;
            }
        }
        self.subs.insert(SubState {
            hub: sub.clone(),
            server_side: params.server_side,
            presence: params.presence,
            join_leave: params.join_leave,
            chan_info: params.chan_info,
            expires_at: params.expires_at,
            refresh_by_proxy: params.refresh_by_proxy,
            stream: None,
        });
        self.schedule_sub_expiry(node, now);
        Ok(Opened {
            sub,
            result: (result, top),
        })
    }

    /// Sets up a server-side subscription (from the token, the personal channel, or the API).
    pub(super) async fn setup_server_sub(
        &mut self,
        node: &Node,
        channel: &str,
        overrides: SubscribeOverrides,
        chan_info: Option<Bytes>,
        recover: Option<StreamPosition>,
        now: Now,
    ) -> Result<Opened, ClientError> {
        let ns = node.config.namespace_for(channel).ok();
        let mut params = ns
            .map(|ns| self.params_for(ns, overrides))
            .unwrap_or_default();
        let force_push = ns.is_some_and(|ns| {
            overrides
                .force_push_join_leave
                .unwrap_or(ns.force_push_join_leave)
        });
        params.push_join_leave = params.join_leave && force_push;
        params.server_side = true;
        params.chan_info = chan_info;
        if params.recoverable {
            params.recover_from = recover;
        }
        self.open(node, channel, params, now).await
    }

    /// A server API `subscribe` for this connection.
    pub(super) async fn server_subscribe(
        &mut self,
        node: &Node,
        req: ServerSubscribe,
        now: Now,
    ) -> Outcome {
        if self.subs.contains_key(&req.channel) || node.config.namespace_for(&req.channel).is_err()
        {
            return Ok(());
        }
        // As the reference server: a server-side subscription past the channel limit closes
        // the connection with 3505.
        let limit = node.config.client.channel_limit;
        if limit > 0 && self.subs.len() >= limit {
            return Err(DisconnectCode::CHANNEL_LIMIT.into());
        }
        let channel = req.channel.clone();
        let opened = self
            .setup_server_sub(
                node,
                &channel,
                req.overrides,
                req.info,
                req.recover_since,
                now,
            )
            .await;
        // The API call already answered; a subscription the engine cannot serve now is
        // dropped (the client is not told of a subscription that does not exist).
        let Ok(opened) = opened else { return Ok(()) };
        if let Some(at) = req.expire_at {
            // Ends as a server-side subscription whose token expired: the connection closes
            // with 3006 once `expired_sub_close_delay` has passed.
            if let Some(state) = self.subs.get_mut(&channel) {
                state.expires_at = Some(at);
            }
            self.schedule_sub_expiry(node, now);
        }
        let (result, top) = opened.result;
        let push = tether_proto::Push {
            channel: channel.clone(),
            subscribe: Some(tether_proto::Subscribe {
                recoverable: result.recoverable,
                epoch: result.epoch.clone(),
                offset: result.offset,
                positioned: result.positioned,
                data: req.data.unwrap_or_default(),
            }),
            ..Default::default()
        };
        let mut head = vec![self.encode(&Reply {
            push: Some(push),
            ..Default::default()
        })?];
        for publication in result.publications {
            let push = tether_proto::Push {
                channel: channel.clone(),
                r#pub: Some(publication),
                ..Default::default()
            };
            head.push(self.encode(&Reply {
                push: Some(push),
                ..Default::default()
            })?);
        }
        node.hub.activate(&channel, &opened.sub, head, top);
        self.after_subscribed(node, &channel).await;
        Ok(())
    }

    /// Presence and join once a subscription is live.
    pub(super) async fn after_subscribed(&self, node: &Node, channel: &str) {
        let Some(state) = self.subs.get(channel) else {
            return;
        };
        let info = self.conn.client_info(state.chan_info.clone());
        // Presence and join are best effort: a failure here must not fail a subscription
        // that is already live; presence is refreshed and join/leave are advisory.
        if state.presence {
            let _ = node
                .engine
                .add_presence(channel, self.conn.client.as_str(), info.clone())
                .await;
        }
        if state.join_leave {
            node.events.subscribed(&self.conn, state.channel());
            let _ = node.engine.publish_join(channel, &info).await;
        }
    }

    /// Undoes the hub and engine registration of a subscription that failed to set up.
    async fn abandon(&self, node: &Node, sub: &Arc<Subscriber>) {
        node.hub.unsubscribe(sub);
        let _ = node.engine.unsubscribe(sub.channel()).await;
    }

    /// Client or server `unsubscribe`: no error when not subscribed.
    pub(super) async fn unsubscribe(&mut self, node: &Node, channel: &str, now: Now) -> Outcome {
        self.remove_subscription(node, channel).await;
        self.schedule_sub_expiry(node, now);
        Ok(())
    }

    /// Removes one subscription from the hub and presence, and announces the leave.
    pub(super) async fn remove_subscription(&mut self, node: &Node, channel: &str) {
        let Some(mut state) = self.subs.remove(channel) else {
            return;
        };
        // A subscription stream is cancelled first.
        state.stream = None;
        node.hub.unsubscribe(&state.hub);
        leave_engine(node, &self.conn, state).await;
    }

    /// `sub_refresh`: a new subscription token for a subscribed channel.
    pub(super) async fn sub_refresh(
        &mut self,
        node: &Node,
        req: &tether_proto::SubRefreshRequest,
        now: Now,
    ) -> Result<Reply, Disconnect> {
        if req.channel.is_empty() || req.token.is_empty() {
            return Err(DisconnectCode::BAD_REQUEST.into());
        }
        match self.subs.get(&req.channel) {
            None => return Ok(error_reply(ClientError::PERMISSION_DENIED)),
            // As the reference server: a server-side subscription is not refreshed by the
            // client ("server-side sub refresh expected").
            Some(state) if state.server_side || state.refresh_by_proxy => {
                return Err(DisconnectCode::BAD_REQUEST.into());
            }
            Some(_) => {}
        }
        let verifier = node.sub_tokens.as_ref().unwrap_or(&node.tokens);
        verifier.ensure_key(&req.token).await;
        let claims = match verifier.verify_subscribe(&req.token, now.unix) {
            Ok(claims) => claims,
            Err(TokenError::Expired) => return Ok(error_reply(ClientError::TOKEN_EXPIRED)),
            Err(_) => return Err(DisconnectCode::INVALID_TOKEN.into()),
        };
        if claims.channel != req.channel || claims.sub != *self.user {
            return Err(DisconnectCode::INVALID_TOKEN.into());
        }
        let expires_at = claims.expires_at();
        if let Some(state) = self.subs.get_mut(&req.channel) {
            state.expires_at = expires_at;
        }
        self.schedule_sub_expiry(node, now);
        let result = tether_proto::SubRefreshResult {
            expires: expires_at.is_some(),
            ttl: expires_at.map_or(0, |at| (at - now.unix).max(0) as u32),
        };
        Ok(Reply {
            sub_refresh: Some(result),
            ..Default::default()
        })
    }

    /// Ends subscriptions whose token expired and was not refreshed in time.
    pub(super) async fn check_sub_expiry(&mut self, node: &Node, now: Now) -> Outcome {
        let grace = node.config.client.expired_sub_close_delay.as_secs() as i64;
        let due: Vec<(String, bool, bool)> = self
            .subs
            .iter()
            .filter(|(_, s)| {
                s.expires_at
                    .is_some_and(|at| at.saturating_add(grace) <= now.unix)
            })
            .map(|(c, s)| (c.to_string(), s.server_side, s.refresh_by_proxy))
            .collect();
        for (channel, server_side, refresh_by_proxy) in due {
            if let Some(proxy) = node
                .config
                .namespace_for(&channel)
                .ok()
                .filter(|ns| refresh_by_proxy && ns.sub_refresh_proxy_enabled)
                .and_then(|ns| {
                    node.proxies
                        .get(ProxyEvent::SubRefresh, &ns.sub_refresh_proxy_name)
                })
                && let Some((at, info)) = self.sub_refresh_via_proxy(proxy, &channel, now).await
            {
                if let Some(state) = self.subs.get_mut(&channel) {
                    state.expires_at = Some(at);
                    if info.is_some() {
                        state.chan_info = info;
                    }
                }
                continue;
            }
            if server_side {
                return Err(DisconnectCode::SUBSCRIPTION_EXPIRED.into());
            }
            self.remove_subscription(node, &channel).await;
            let push = tether_proto::Push {
                channel,
                unsubscribe: Some(tether_proto::Unsubscribe {
                    code: u32::from(UNSUBSCRIBE_EXPIRED.0),
                    reason: UNSUBSCRIBE_EXPIRED.1.to_owned(),
                }),
                ..Default::default()
            };
            self.send_push(push)?;
        }
        self.schedule_sub_expiry(node, now);
        Ok(())
    }

    /// Points the sweeper at the earliest subscription expiry (plus grace), if any.
    pub(super) fn schedule_sub_expiry(&self, node: &Node, now: Now) {
        let grace = node.config.client.expired_sub_close_delay.as_millis() as u64;
        let subs = self
            .subs
            .values()
            .filter_map(|s| s.expires_at)
            .min()
            .map(|at| {
                now.ms
                    .saturating_add(super::ms_until(at, now))
                    .saturating_add(grace)
            });
        // Server-side refresh of the connection (the refresh proxy) is due at its expiry.
        let refresh = self
            .proxied
            .as_deref()
            .filter(|p| p.refresh_at != 0)
            .map(|p| now.ms.saturating_add(super::ms_until(p.refresh_at, now)));
        let deadline = subs.into_iter().chain(refresh).min().unwrap_or(0);
        self.conn.with_heartbeat(|hb| hb.sub_expire_at = deadline);
    }
}

/// The engine's side of ending a subscription: the node's interest in the channel, the
/// connection's presence entry and the leave event.
pub(super) async fn leave_engine(node: &Node, conn: &Conn, state: SubState) {
    let channel = state.channel();
    let _ = node.engine.unsubscribe(channel).await;
    if state.presence {
        let _ = node
            .engine
            .remove_presence(channel, conn.client.as_str())
            .await;
    }
    if state.join_leave {
        node.events.unsubscribed(conn, channel);
        let _ = node
            .engine
            .publish_leave(channel, &conn.client_info(state.chan_info.clone()))
            .await;
    }
}

/// The user list of a user-limited channel (`name#42,43`), when the namespace allows them.
fn user_limited<'c>(node: &Node, ns: &NamespaceOptions, channel: &'c str) -> Option<&'c str> {
    if !ns.allow_user_limited_channels {
        return None;
    }
    let boundary = node.config.channel.user_boundary.as_str();
    if boundary.is_empty() {
        return None;
    }
    channel.rsplit_once(boundary).map(|(_, users)| users)
}
