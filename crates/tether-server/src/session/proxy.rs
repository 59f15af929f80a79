//! How a session uses the backend proxy (compat-proxy §5, §6): it builds each event's
//! request from its own state, and applies the backend's answer exactly as Centrifugo does.
//!
//! Common to every event: a call that fails (timeout, transport error, a status other than
//! 200, an undecodable answer, an open breaker) is the protocol's temporary internal error
//! (100) for connect, subscribe, publish and rpc, and a 60 s grace for refresh and
//! sub_refresh; a `disconnect` answer closes the connection with the backend's code; an
//! `error` answer reaches the client as it is (for refresh and sub_refresh both are ignored
//! and only the result counts).

use bytes::Bytes;
use tether_proto::codes::{ClientError, DisconnectCode};
use tether_proto::{Reply, RpcRequest as ClientRpc};

use super::{Now, Session, error_reply};
use crate::config::ProxyEvent;
use crate::node::Node;
use crate::proxy::protocol::{ProxyDisconnect, ProxyError};
use crate::proxy::{
    Answer, Common, ConnectRequest, ConnectResult, Forward, Proxy, PublishRequest, PublishResult,
    RefreshRequest, RefreshResult, RpcRequest, RpcResult, SubRefreshRequest, SubRefreshResult,
    SubscribeRequest, SubscribeResult,
};
use crate::wire::{CloseCode, Disconnect};

/// What a session keeps for the backend proxy; only connections that use it pay for it.
#[derive(Debug, Default)]
pub(super) struct Proxied {
    /// Headers to forward with every event.
    pub(super) forward: Forward,
    /// The connection's `meta` from the connect (or a refresh) result; never sent to the
    /// client.
    pub(super) meta: Option<Bytes>,
    /// With server-side refresh (the refresh proxy): when the connection's credentials
    /// expire, in Unix seconds; 0 when they do not.
    pub(super) refresh_at: i64,
}

/// How long a connection or subscription lives on when its refresh call failed
/// (Centrifugo's grace: it is checked again then).
pub(super) const REFRESH_GRACE_SECS: i64 = 60;

/// The outcome of a proxy call the session acts on: go ahead with the result, answer the
/// command with an error reply, or close the connection.
pub(super) enum Verdict<T> {
    /// The backend's result (`None`: it sent none).
    Go(Option<T>),
    /// The command's reply is this error (boxed: a `Reply` is large, and rare here).
    Reply(Box<Reply>),
}

impl Session {
    /// The fields every request starts with.
    pub(super) fn common(&self) -> Common {
        Common {
            client: self.conn.client.to_string(),
            transport: self.conn.transport_name(),
            protocol: self.conn.protocol_name(),
        }
    }

    pub(super) fn forward(&self) -> Option<&Forward> {
        self.proxied.as_deref().map(|p| &p.forward)
    }

    pub(super) fn proxied_mut(&mut self) -> &mut Proxied {
        self.proxied.get_or_insert_with(Box::default)
    }

    /// The connection's meta, for a proxy that includes it.
    pub(super) fn meta_for(&self, proxy: &Proxy) -> Option<Bytes> {
        if !proxy.includes_meta() {
            return None;
        }
        self.proxied.as_deref().and_then(|p| p.meta.clone())
    }

    /// Calls a proxy for connect, subscribe, publish or rpc and sorts the answer: a failure
    /// is error 100 (temporary), an `error` answer the backend's error, a `disconnect`
    /// answer closes the connection.
    async fn ask<Q, R>(
        &self,
        proxy: &Proxy,
        event: &'static str,
        request: &Q,
    ) -> Result<Verdict<R>, Disconnect>
    where
        Q: crate::proxy::Event,
        R: crate::proxy::EventResult,
    {
        match proxy.call::<Q, R>(event, request, self.forward()).await {
            Ok(Answer::Result(result)) => Ok(Verdict::Go(result)),
            Ok(Answer::Error(error)) => Ok(Verdict::Reply(Box::new(proxy_error_reply(error)))),
            Ok(Answer::Disconnect(disconnect)) => Err(proxy_disconnect(disconnect)),
            Err(_) => Ok(Verdict::Reply(Box::new(error_reply(ClientError::INTERNAL)))),
        }
    }

    /// A connect without a token, decided by the connect proxy.
    pub(super) async fn connect_via_proxy(
        &mut self,
        node: &Node,
        proxy: &Proxy,
        req: &tether_proto::ConnectRequest,
    ) -> Result<Verdict<ConnectResult>, Disconnect> {
        let emulated = node
            .proxies
            .keep_emulated_headers(req.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if !emulated.is_empty() {
            self.proxied_mut().forward.emulated = emulated;
        }
        let mut channels: Vec<String> = req.subs.keys().cloned().collect();
        channels.sort();
        let request = ConnectRequest {
            common: self.common(),
            data: req.data.clone(),
            name: req.name.clone(),
            version: req.version.clone(),
            channels,
        };
        let verdict: Verdict<ConnectResult> = self.ask(proxy, "connect", &request).await?;
        if let Verdict::Go(Some(result)) = &verdict
            && let Some(meta) = &result.meta
        {
            self.proxied_mut().meta = Some(meta.clone());
        }
        Ok(verdict)
    }

    /// A client `rpc` command (compat-proxy §5.2, last bullets).
    pub(super) async fn rpc(&mut self, node: &Node, req: ClientRpc) -> Result<Reply, Disconnect> {
        let config = &node.config;
        let ping = &config.rpc.ping;
        if req.method == USER_STATUS_METHOD
            && node.events.status_enabled()
            && !rpc_proxy_claims(node, &req.method)
        {
            return self.update_own_status(node).await;
        }
        if !node.proxies.has_rpc() && !ping.enabled {
            return Ok(error_reply(ClientError::NOT_AVAILABLE));
        }
        if ping.enabled && req.method == ping.method {
            return Ok(rpc_reply(Bytes::new()));
        }
        let Ok(ns) = config.rpc_namespace_for(&req.method) else {
            return Ok(error_reply(ClientError::METHOD_NOT_FOUND));
        };
        if !ns.proxy_enabled {
            return Ok(error_reply(ClientError::NOT_AVAILABLE));
        }
        let Some(proxy) = node.proxies.get(ProxyEvent::Rpc, &ns.proxy_name) else {
            return Ok(error_reply(ClientError::NOT_AVAILABLE));
        };
        let request = RpcRequest {
            common: self.common(),
            user: self.user.to_string(),
            method: req.method,
            data: req.data,
            meta: self.meta_for(proxy),
        };
        Ok(
            match self.ask::<_, RpcResult>(proxy, "rpc", &request).await? {
                Verdict::Go(result) => rpc_reply(result.and_then(|r| r.data).unwrap_or_default()),
                Verdict::Reply(reply) => *reply,
            },
        )
    }

    /// The built-in `update_user_status` RPC: marks the caller active.
    async fn update_own_status(&self, node: &Node) -> Result<Reply, Disconnect> {
        if self.user.is_empty() {
            return Ok(error_reply(ClientError::PERMISSION_DENIED));
        }
        match node.events.update_status(&[self.user.to_string()]).await {
            Ok(()) => Ok(rpc_reply(Bytes::new())),
            Err(_) => Ok(error_reply(ClientError::INTERNAL)),
        }
    }

    /// A client subscribe decided by the subscribe proxy.
    pub(super) async fn subscribe_via_proxy(
        &self,
        proxy: &Proxy,
        req: &tether_proto::SubscribeRequest,
    ) -> Result<Verdict<SubscribeResult>, Disconnect> {
        let request = SubscribeRequest {
            common: self.common(),
            user: self.user.to_string(),
            channel: req.channel.clone(),
            meta: self.meta_for(proxy),
            data: req.data.clone(),
        };
        self.ask(proxy, "subscribe", &request).await
    }

    /// A client publish decided by the publish proxy.
    pub(super) async fn publish_via_proxy(
        &self,
        proxy: &Proxy,
        channel: &str,
        data: &Bytes,
    ) -> Result<Verdict<PublishResult>, Disconnect> {
        let request = PublishRequest {
            common: self.common(),
            user: self.user.to_string(),
            channel: channel.to_owned(),
            data: data.clone(),
            meta: self.meta_for(proxy),
        };
        self.ask(proxy, "publish", &request).await
    }

    /// Server-side refresh of the connection's credentials, when they are due. `Err` closes
    /// the connection (3005 when the backend says so, or sends no result).
    pub(super) async fn refresh_via_proxy(
        &mut self,
        node: &Node,
        now: Now,
    ) -> Result<(), Disconnect> {
        let due = self
            .proxied
            .as_deref()
            .is_some_and(|p| p.refresh_at != 0 && p.refresh_at <= now.unix);
        let Some(proxy) = node.proxies.refresh().filter(|_| due) else {
            return Ok(());
        };
        let request = RefreshRequest {
            common: self.common(),
            user: self.user.to_string(),
            meta: self.meta_for(proxy),
        };
        let answer = proxy
            .call::<_, RefreshResult>("refresh", &request, self.forward())
            .await;
        let result = match answer {
            Err(_) => {
                // The backend is unwell: the connection lives on and is asked about again.
                self.proxied_mut().refresh_at = now.unix + REFRESH_GRACE_SECS;
                return Ok(());
            }
            Ok(Answer::Result(Some(result))) if !result.expired => result,
            Ok(_) => return Err(DisconnectCode::EXPIRED.into()),
        };
        if result.expire_at <= now.unix {
            return Err(DisconnectCode::EXPIRED.into());
        }
        if result.info.is_some() {
            self.conn.set_info(result.info);
        }
        let proxied = self.proxied_mut();
        if let Some(meta) = result.meta {
            proxied.meta = Some(meta);
        }
        proxied.refresh_at = result.expire_at;
        Ok(())
    }

    /// Server-side refresh of one subscription. `Ok(None)`: it expired; `Ok(Some(at))`: it
    /// now expires at `at` (Unix seconds).
    pub(super) async fn sub_refresh_via_proxy(
        &self,
        proxy: &Proxy,
        channel: &str,
        now: Now,
    ) -> Option<(i64, Option<Bytes>)> {
        let request = SubRefreshRequest {
            common: self.common(),
            user: self.user.to_string(),
            channel: channel.to_owned(),
            meta: self.meta_for(proxy),
        };
        match proxy
            .call::<_, SubRefreshResult>("sub_refresh", &request, self.forward())
            .await
        {
            Err(_) => Some((now.unix + REFRESH_GRACE_SECS, None)),
            Ok(Answer::Result(Some(result))) if !result.expired && result.expire_at > now.unix => {
                Some((result.expire_at, result.info))
            }
            Ok(_) => None,
        }
    }
}

/// An RPC reply carrying `data`.
fn rpc_reply(data: Bytes) -> Reply {
    Reply {
        rpc: Some(tether_proto::RpcResult { data }),
        ..Default::default()
    }
}

/// The backend's error as the client's error reply.
pub(super) fn proxy_error_reply(error: ProxyError) -> Reply {
    Reply {
        error: Some(tether_proto::Error {
            code: error.code,
            message: error.message,
            temporary: error.temporary,
        }),
        ..Default::default()
    }
}

/// The backend's disconnect as the connection's close. A code that does not fit a close
/// code is the protocol's internal error.
pub(super) fn proxy_disconnect(disconnect: ProxyDisconnect) -> Disconnect {
    match u16::try_from(disconnect.code) {
        Ok(code) => Disconnect {
            code: CloseCode::new(code),
            reason: disconnect.reason,
        },
        Err(_) => DisconnectCode::INTERNAL.into(),
    }
}

/// The client RPC method tether answers itself when the user status API is enabled (as
/// Centrifugo PRO does), unless an RPC proxy is configured for it.
const USER_STATUS_METHOD: &str = "update_user_status";

/// Whether an RPC proxy takes `method`.
fn rpc_proxy_claims(node: &Node, method: &str) -> bool {
    node.config
        .rpc_namespace_for(method)
        .ok()
        .filter(|ns| ns.proxy_enabled)
        .and_then(|ns| node.proxies.get(ProxyEvent::Rpc, &ns.proxy_name))
        .is_some()
}
