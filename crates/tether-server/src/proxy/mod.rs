//! The backend proxy: client events handed to the application over HTTP or gRPC, as
//! Centrifugo v6 does it (see `docs/proxy.md`).
//!
//! The session calls a [`Proxy`] at the points where it would otherwise decide alone: a
//! connect without a token, a refresh of server-side credentials, a subscribe, publish or
//! subscription refresh in a namespace that enables its proxy, and every `rpc`. The proxy
//! sends the event, waits for the backend's [`Answer`] at most `timeout`, and the session
//! applies it. A subscribe in a subscription stream namespace opens a gRPC stream instead
//! ([`Proxy::subscribe_stream`]): the answer comes first, the subscriber's publications
//! after it; a bidirectional stream also takes the subscriber's own publications to the
//! backend ([`StreamPublisher`]). The proxy knows nothing of sessions: it imports only the config and the
//! metrics.
//!
//! Every proxy protects its backend and the node: at most [`MAX_IN_FLIGHT`] calls are out at
//! once, and a [circuit breaker](breaker) per endpoint refuses calls at once while the
//! backend is failing. A refused call is a [`Failure`] like a timeout, which the session turns
//! into the protocol's temporary error: clients back off instead of piling on, and nothing
//! waits on a backend that does not answer.
//!
//! - [`protocol`]: the requests and results, and their JSON form;
//! - [`proto`]: the same as gRPC messages (Centrifugo's `proxyproto`, public);
//! - `http`: the pooled HTTP clients;
//! - `grpc`: one HTTP/2 channel per gRPC proxy, and the messages' conversions;
//! - `tls`: client TLS (`http.tls`, `grpc.tls`) with rustls.

mod grpc;
pub(crate) mod http;
pub mod proto;
pub(crate) mod protocol;
pub(crate) mod tls;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use self::grpc::{
    GrpcBuildError, GrpcClient, GrpcError, GrpcRequest, GrpcResult, GrpcStream, GrpcTls,
    StreamSender,
};
use self::http::{HttpClient, HttpError};
pub(crate) use self::protocol::{
    Answer, Common, ConnectRequest, ConnectResult, PublishRequest, PublishResult, RefreshRequest,
    RefreshResult, RpcRequest, RpcResult, SubRefreshRequest, SubRefreshResult, SubscribeRequest,
    SubscribeResult, WireError,
};
use self::protocol::{JsonRequest, JsonResult, ProxyDisconnect, ProxyError, decode_answer};
use self::tls::{SystemRoots, TlsError};
use crate::breaker::{self, Breaker, Outcome, Ticket, Transition};
use crate::config::{Config, ProxyConfig, ProxyEvent, StatusToCodeTransform, TlsClientConfig};
use crate::metrics::Metrics;

/// Why a proxy call produced no answer. The session treats every kind alike (the protocol's
/// "unexpected error"); the kinds are for logs and metrics.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    /// The call was not made: the breaker is open, or [`MAX_IN_FLIGHT`] calls are out.
    #[error("backend unavailable ({0})")]
    Unavailable(&'static str),
    /// No answer within the proxy's timeout.
    #[error("timed out")]
    Timeout,
    /// The request could not be written as JSON.
    #[error("request: {0}")]
    Request(WireError),
    /// The HTTP exchange failed.
    #[error("http: {0}")]
    Http(#[from] HttpError),
    /// The backend answered with an HTTP status other than 200 and no transform for it.
    #[error("http status {0}")]
    Status(u16),
    /// The gRPC call ended with a status other than OK, or its answer could not be read.
    #[error("grpc: {0}")]
    Grpc(#[from] GrpcError),
    /// The answer could not be read.
    #[error("answer: {0}")]
    Answer(WireError),
}

impl Failure {
    /// The metrics label of this failure.
    fn label(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "unavailable",
            Self::Timeout => "timeout",
            Self::Request(_) => "bad_request",
            Self::Http(_) | Self::Status(_) | Self::Grpc(_) | Self::Answer(_) => "failed",
        }
    }

    /// What it tells the breaker: whether it says the backend is unwell (`None` when the
    /// call never reached the backend, or failed on tether's side).
    fn outcome(&self) -> Option<Outcome> {
        match self {
            Self::Unavailable(_) | Self::Request(_) => None,
            Self::Timeout => Some(Outcome::Timeout),
            _ => Some(Outcome::Failure),
        }
    }
}

/// The publications of an open subscription stream, after its first message.
#[derive(Debug)]
pub(crate) struct SubscribeStream {
    messages: GrpcStream,
    publisher: Option<StreamPublisher>,
}

/// The client's way into a bidirectional subscription stream: each of its publications in
/// the channel goes to the backend as a `StreamSubscribeRequest{publication}`.
#[derive(Clone, Debug)]
pub(crate) struct StreamPublisher {
    tx: StreamSender,
    /// Longest wait for room when the backend reads slower than the client publishes.
    timeout: Duration,
}

/// Why a publication did not go into a bidirectional stream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamPublishError {
    /// The stream is gone (the backend ended it, or it failed).
    #[error("the subscription stream is closed")]
    Closed,
    /// The backend read nothing for the proxy's timeout while the stream's queue was full.
    #[error("the subscription stream took nothing for the proxy's timeout")]
    Timeout,
}

impl StreamPublisher {
    /// Sends `data` to the backend as a publication on the stream.
    pub(crate) async fn publish(&self, data: bytes::Bytes) -> Result<(), StreamPublishError> {
        let message = proto::StreamSubscribeRequest {
            subscribe_request: None,
            publication: Some(proto::Publication {
                data,
                tags: HashMap::new(),
            }),
        };
        match tokio::time::timeout(self.timeout, self.tx.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(StreamPublishError::Closed),
            Err(_) => Err(StreamPublishError::Timeout),
        }
    }
}

/// What a subscription stream says next.
#[derive(Debug, PartialEq)]
pub(crate) enum StreamItem {
    /// A publication for the subscriber.
    Publication {
        /// Its data, as the backend sent it.
        data: bytes::Bytes,
        /// Its tags.
        tags: HashMap<String, String>,
    },
    /// The backend ended the stream (gRPC status OK).
    End,
    /// The stream failed: a status other than OK, a broken connection, a message that
    /// does not decode.
    Failed,
}

impl SubscribeStream {
    /// The sender of the client's publications, for a bidirectional stream (once).
    pub(crate) fn take_publisher(&mut self) -> Option<StreamPublisher> {
        self.publisher.take()
    }

    /// The next publication, or how the stream ended. Messages without a publication are
    /// skipped.
    pub(crate) async fn next(&mut self) -> StreamItem {
        loop {
            match self.messages.message().await {
                Ok(Some(message)) => {
                    if let Some(publication) = message.publication {
                        return StreamItem::Publication {
                            data: publication.data,
                            tags: publication.tags,
                        };
                    }
                }
                Ok(None) => return StreamItem::End,
                Err(status) => {
                    debug!(code = %status.code(), message = status.message(), "subscription stream failed");
                    return StreamItem::Failed;
                }
            }
        }
    }
}

/// Headers of a connection kept for forwarding: the transport headers of its upgrade
/// request and the emulated headers of its connect command that some proxy forwards.
#[derive(Clone, Debug, Default)]
pub(crate) struct Forward {
    /// The transport request's headers, by lowercase name.
    pub(crate) http: Vec<(HeaderName, HeaderValue)>,
    /// The connect command's `headers`, by lowercase name.
    pub(crate) emulated: Vec<(HeaderName, HeaderValue)>,
}

/// The requests a proxy can send, over either protocol.
pub(crate) trait Event: JsonRequest + GrpcRequest {}
impl<T: JsonRequest + GrpcRequest> Event for T {}

/// The results a proxy can read, over either protocol.
pub(crate) trait EventResult: JsonResult + GrpcResult {}
impl<T: JsonResult + GrpcResult> EventResult for T {}

/// One configured proxy endpoint.
#[derive(Debug)]
pub(crate) struct Proxy {
    /// Its name in logs and metrics (`default` for the unnamed ones).
    name: Arc<str>,
    timeout: Duration,
    binary: bool,
    include_meta: bool,
    http_headers: Vec<HeaderName>,
    emulated_headers: Vec<HeaderName>,
    transport: Transport,
    breaker: Mutex<Breaker>,
    in_flight: Semaphore,
    metrics: Arc<Metrics>,
}

/// How a proxy reaches its backend.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per configured proxy, made once at start"
)]
enum Transport {
    /// One JSON POST per event.
    Http {
        endpoint: hyper::Uri,
        client: HttpClient,
        static_headers: HeaderMap,
        transforms: Vec<StatusToCodeTransform>,
    },
    /// One unary gRPC call per event.
    Grpc(GrpcClient),
}

impl Transport {
    /// Where it sends, for logs.
    fn endpoint(&self) -> String {
        match self {
            Self::Http { endpoint, .. } => endpoint.to_string(),
            Self::Grpc(client) => client.target().to_owned(),
        }
    }
}

/// A proxy that cannot be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum ProxyBuildError {
    /// The endpoint is not a usable URI.
    #[error("proxy {name}: endpoint {endpoint:?}: {reason}")]
    Endpoint {
        /// The proxy's name.
        name: String,
        /// The endpoint as configured.
        endpoint: String,
        /// What is wrong.
        reason: String,
    },
    /// The TLS object cannot be used: a PEM value that does not load, a key without its
    /// certificate, a bad `server_name`.
    #[error("proxy {name}: {key}: {reason}")]
    Tls {
        /// The proxy's name.
        name: String,
        /// The TLS object's key (`http.tls` or `grpc.tls`).
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A gRPC option cannot be used: credentials or static metadata that are not valid
    /// metadata.
    #[error("proxy {name}: {reason}")]
    Grpc {
        /// The proxy's name.
        name: String,
        /// What is wrong, and with which key.
        reason: String,
    },
    /// A static header is not a valid HTTP header.
    #[error("proxy {name}: http.static_headers: {header:?} is not a valid header")]
    Header {
        /// The proxy's name.
        name: String,
        /// The header's name.
        header: String,
    },
}

impl Proxy {
    fn new(
        name: &str,
        config: &ProxyConfig,
        clients: &mut Clients,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ProxyBuildError> {
        let transport = if config.is_http() {
            Self::http(name, config, clients)?
        } else {
            Self::grpc(name, config, clients)?
        };
        let names = |list: &[String]| {
            list.iter()
                .filter_map(|h| HeaderName::try_from(h.to_ascii_lowercase()).ok())
                .collect()
        };
        Ok(Self {
            name: Arc::from(name),
            timeout: config.timeout,
            binary: config.binary_encoding,
            include_meta: config.include_connection_meta,
            http_headers: names(&config.http_headers),
            emulated_headers: names(&config.emulated_headers),
            transport,
            breaker: Mutex::new(Breaker::new(breaker::Settings::default(), Instant::now())),
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
            metrics,
        })
    }

    /// The HTTP transport of an `http://` or `https://` endpoint.
    fn http(
        name: &str,
        config: &ProxyConfig,
        clients: &mut Clients,
    ) -> Result<Transport, ProxyBuildError> {
        let endpoint_error = |reason: &str| ProxyBuildError::Endpoint {
            name: name.to_owned(),
            endpoint: config.endpoint.clone(),
            reason: reason.to_owned(),
        };
        let endpoint: hyper::Uri = config
            .endpoint
            .parse()
            .map_err(|error: hyper::http::uri::InvalidUri| endpoint_error(&error.to_string()))?;
        let tls = if endpoint
            .scheme_str()
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http"))
        {
            None
        } else if config.http.tls.enabled {
            Some(config.http.tls.clone())
        } else {
            // Without `http.tls`, an https endpoint is verified against the system's roots,
            // as Go's default client does.
            Some(TlsClientConfig {
                enabled: true,
                ..TlsClientConfig::default()
            })
        };
        let client = clients
            .http(tls.as_ref())
            .map_err(|error| ProxyBuildError::Tls {
                name: name.to_owned(),
                key: "http.tls",
                reason: error.to_string(),
            })?;
        let mut static_headers = HeaderMap::new();
        for (header, value) in &config.http.static_headers {
            let bad = || ProxyBuildError::Header {
                name: name.to_owned(),
                header: header.clone(),
            };
            let header_name = HeaderName::try_from(header.as_str()).map_err(|_| bad())?;
            let value = HeaderValue::try_from(value.as_str()).map_err(|_| bad())?;
            static_headers.insert(header_name, value);
        }
        Ok(Transport::Http {
            endpoint,
            client,
            static_headers,
            transforms: config.http.status_to_code_transforms.clone(),
        })
    }

    /// The gRPC transport of any other endpoint (`grpc://host:port` or `host:port`).
    fn grpc(
        name: &str,
        config: &ProxyConfig,
        clients: &mut Clients,
    ) -> Result<Transport, ProxyBuildError> {
        let tls_error = |error: TlsError| ProxyBuildError::Tls {
            name: name.to_owned(),
            key: "grpc.tls",
            reason: error.to_string(),
        };
        let grpc = &config.grpc;
        let tls = if grpc.tls.enabled {
            // ALPN (`h2`) is the connector's to set.
            let tls = tls::client_config(&grpc.tls, &mut clients.roots).map_err(tls_error)?;
            GrpcTls::On(
                Box::new(tls),
                tls::server_name(&grpc.tls).map_err(tls_error)?,
            )
        } else {
            GrpcTls::Off
        };
        GrpcClient::new(&config.endpoint, grpc, tls)
            .map(Transport::Grpc)
            .map_err(|error| match error {
                GrpcBuildError::Endpoint(_) => ProxyBuildError::Endpoint {
                    name: name.to_owned(),
                    endpoint: config.endpoint.clone(),
                    reason: error.to_string(),
                },
                _ => ProxyBuildError::Grpc {
                    name: name.to_owned(),
                    reason: error.to_string(),
                },
            })
    }

    /// Whether requests carry the connection's `meta`.
    pub(crate) fn includes_meta(&self) -> bool {
        self.include_meta
    }

    /// Sends one event and reads the backend's answer. `event` names it in metrics and logs.
    pub(crate) async fn call<Q: Event, R: EventResult>(
        &self,
        event: &'static str,
        request: &Q,
        forward: Option<&Forward>,
    ) -> Result<Answer<R>, Failure> {
        let started = Instant::now();
        let result = self.exchange(request, forward).await;
        let outcome = match &result {
            Ok(Answer::Result(_)) => "ok",
            Ok(Answer::Error(_) | Answer::Disconnect(_)) => "refused",
            Err(failure) => {
                debug!(proxy = %self.name, event, %failure, "proxy call failed");
                failure.label()
            }
        };
        self.metrics
            .proxy_call(&self.name, event, outcome, started.elapsed());
        result
    }

    async fn exchange<Q: Event, R: EventResult>(
        &self,
        request: &Q,
        forward: Option<&Forward>,
    ) -> Result<Answer<R>, Failure> {
        // Written before a permit is taken: a request that cannot be sent is no backend's
        // fault. (A gRPC message always encodes.)
        let body = match &self.transport {
            Transport::Http { .. } => request.to_json(self.binary).map_err(Failure::Request)?,
            Transport::Grpc(_) => Vec::new(),
        };
        let (_permit, ticket) = self.admit()?;
        let answer = match &self.transport {
            Transport::Http {
                endpoint,
                client,
                static_headers,
                ..
            } => {
                let headers = self.headers(static_headers, forward);
                let sent =
                    tokio::time::timeout(self.timeout, http::post(client, endpoint, headers, body))
                        .await;
                match sent {
                    Err(_) => Err(Failure::Timeout),
                    Ok(Err(error)) => Err(Failure::Http(error)),
                    Ok(Ok((200, body))) => decode_answer::<R>(&body).map_err(Failure::Answer),
                    Ok(Ok((status, _))) => self.transform(status).ok_or(Failure::Status(status)),
                }
            }
            Transport::Grpc(client) => {
                let headers = self.headers(client.static_metadata(), forward);
                let sent = tokio::time::timeout(
                    self.timeout,
                    client.call::<Q, R>(request, self.binary, headers, self.timeout),
                )
                .await;
                grpc_outcome(sent)
            }
        };
        self.record(ticket, answer.as_ref().err());
        answer
    }

    /// A permit for one call, if [`MAX_IN_FLIGHT`] are not out and the breaker lets it
    /// through, and the breaker's ticket for it.
    fn admit(&self) -> Result<(tokio::sync::SemaphorePermit<'_>, Ticket<'_>), Failure> {
        let Ok(permit) = self.in_flight.try_acquire() else {
            return Err(Failure::Unavailable("too many calls in flight"));
        };
        let (ticket, transition) = breaker::call(&self.breaker, Instant::now());
        self.report(transition);
        let ticket = ticket.ok_or(Failure::Unavailable("circuit breaker open"))?;
        Ok((permit, ticket))
    }

    /// Tells the breaker how an admitted call went.
    fn record(&self, ticket: Ticket<'_>, failure: Option<&Failure>) {
        let outcome = failure
            .and_then(Failure::outcome)
            .unwrap_or(Outcome::Success);
        self.report(ticket.finish(outcome, Instant::now()));
    }

    /// Logs and counts a change of the breaker's state.
    fn report(&self, transition: Option<Transition>) {
        match transition {
            Some(Transition::Opened) => {
                warn!(proxy = %self.name, endpoint = %self.transport.endpoint(), "proxy circuit breaker opened: calls fail at once until a probe succeeds");
                self.metrics.proxy_breaker(&self.name, true);
            }
            Some(Transition::Closed) => {
                info!(proxy = %self.name, endpoint = %self.transport.endpoint(), "proxy circuit breaker closed: the backend answers again");
                self.metrics.proxy_breaker(&self.name, false);
            }
            None => {}
        }
    }

    /// Opens a subscription stream (compat-proxy §6.6), `bidirectional` or not: the
    /// backend's answer to the subscribe, from the stream's first message within the proxy's
    /// `timeout`, and the stream of the publications that follow. Opening counts as one
    /// call (event `subscribe_stream`) against the in-flight bound, the breaker and the
    /// metrics; the stream then lives on without either. An `error` answer is never
    /// temporary. Dropping the stream cancels the call.
    pub(crate) async fn subscribe_stream(
        &self,
        request: &SubscribeRequest,
        forward: Option<&Forward>,
        bidirectional: bool,
    ) -> Result<(Answer<SubscribeResult>, SubscribeStream), Failure> {
        const EVENT: &str = "subscribe_stream";
        let started = Instant::now();
        let result = self.open_stream(request, forward, bidirectional).await;
        let outcome = match &result {
            Ok((Answer::Result(_), _)) => "ok",
            Ok(_) => "refused",
            Err(failure) => {
                debug!(proxy = %self.name, event = EVENT, %failure, "proxy call failed");
                failure.label()
            }
        };
        self.metrics
            .proxy_call(&self.name, EVENT, outcome, started.elapsed());
        result
    }

    async fn open_stream(
        &self,
        request: &SubscribeRequest,
        forward: Option<&Forward>,
        bidirectional: bool,
    ) -> Result<(Answer<SubscribeResult>, SubscribeStream), Failure> {
        let Transport::Grpc(client) = &self.transport else {
            // The config allows only gRPC endpoints for subscription streams.
            return Err(Failure::Unavailable(
                "subscription streams need a gRPC proxy",
            ));
        };
        let (permit, ticket) = self.admit()?;
        let headers = self.headers(client.static_metadata(), forward);
        let opened = tokio::time::timeout(
            self.timeout,
            client.subscribe_stream(request, self.binary, headers, bidirectional),
        )
        .await;
        drop(permit);
        let opened = grpc_outcome(opened);
        self.record(ticket, opened.as_ref().err());
        let (mut answer, messages, tx) = opened?;
        if let Answer::Error(error) = &mut answer {
            error.temporary = false;
        }
        let publisher = tx.map(|tx| StreamPublisher {
            tx,
            timeout: self.timeout,
        });
        Ok((
            answer,
            SubscribeStream {
                messages,
                publisher,
            },
        ))
    }

    /// The answer `http.status_to_code_transforms` makes of an HTTP status, if any.
    fn transform<R>(&self, status: u16) -> Option<Answer<R>> {
        let Transport::Http { transforms, .. } = &self.transport else {
            return None;
        };
        let transform = transforms.iter().find(|t| t.status_code == status)?;
        Some(if transform.to_error.code > 0 {
            Answer::Error(ProxyError {
                code: transform.to_error.code,
                message: transform.to_error.message.clone(),
                temporary: transform.to_error.temporary,
            })
        } else {
            Answer::Disconnect(ProxyDisconnect {
                code: transform.to_disconnect.code,
                reason: transform.to_disconnect.reason.clone(),
            })
        })
    }

    /// The request's headers (or gRPC metadata): static ones, then allowed emulated ones,
    /// then allowed transport ones (later ones win).
    fn headers(&self, static_headers: &HeaderMap, forward: Option<&Forward>) -> HeaderMap {
        let mut headers = static_headers.clone();
        let Some(forward) = forward else {
            return headers;
        };
        for (name, value) in &forward.emulated {
            if self.emulated_headers.contains(name) {
                headers.insert(name.clone(), value.clone());
            }
        }
        let mut replaced: Vec<&HeaderName> = Vec::new();
        for (name, value) in &forward.http {
            if self.http_headers.contains(name) {
                // All values of a forwarded header are copied, replacing earlier ones.
                if !replaced.contains(&name) {
                    headers.remove(name);
                    replaced.push(name);
                }
                headers.append(name.clone(), value.clone());
            }
        }
        headers
    }
}

/// Every proxy of a node, built once from the config.
#[derive(Debug, Default)]
pub(crate) struct Proxies {
    connect: Option<Arc<Proxy>>,
    refresh: Option<Arc<Proxy>>,
    /// The unnamed (`"default"`) proxy of each channel event and of RPC.
    defaults: HashMap<ProxyEvent, Arc<Proxy>>,
    /// The `proxies` entries by name; one endpoint, one breaker, whichever events use it.
    named: HashMap<String, Arc<Proxy>>,
    /// Transport headers some proxy forwards (lowercase): the only ones a connection keeps.
    http_headers: Vec<HeaderName>,
    /// Emulated headers some proxy forwards (lowercase).
    emulated_headers: Vec<HeaderName>,
    /// Some RPC namespace (or the one without a name) has its proxy enabled.
    rpc: bool,
}

impl Proxies {
    /// The proxies `config` uses.
    pub(crate) fn new(config: &Config, metrics: &Arc<Metrics>) -> Result<Self, ProxyBuildError> {
        let mut clients = Clients::default();
        let mut build = |name: &str, proxy: &ProxyConfig| {
            Proxy::new(name, proxy, &mut clients, metrics.clone()).map(Arc::new)
        };
        let mut proxies = Self::default();
        let client_proxy = &config.client.proxy;
        if client_proxy.connect.enabled {
            proxies.connect = Some(build("connect", &client_proxy.connect.proxy)?);
        }
        if client_proxy.refresh.enabled {
            proxies.refresh = Some(build("refresh", &client_proxy.refresh.proxy)?);
        }
        for event in [
            ProxyEvent::Subscribe,
            ProxyEvent::Publish,
            ProxyEvent::SubRefresh,
            ProxyEvent::SubscribeStream,
            ProxyEvent::Rpc,
        ] {
            if let Some(proxy) = config.proxy(event, "default")
                && !proxy.endpoint.is_empty()
            {
                proxies.defaults.insert(event, build("default", proxy)?);
            }
        }
        let rpc = &config.rpc;
        proxies.rpc = rpc.without_namespace.proxy_enabled
            || rpc.namespaces.iter().any(|ns| ns.options.proxy_enabled);
        for named in &config.proxies {
            proxies
                .named
                .insert(named.name.clone(), build(&named.name, &named.proxy)?);
        }
        let all: Vec<&Arc<Proxy>> = proxies
            .connect
            .iter()
            .chain(&proxies.refresh)
            .chain(proxies.defaults.values())
            .chain(proxies.named.values())
            .collect();
        for proxy in all {
            for name in &proxy.http_headers {
                if !proxies.http_headers.contains(name) {
                    proxies.http_headers.push(name.clone());
                }
            }
            for name in &proxy.emulated_headers {
                if !proxies.emulated_headers.contains(name) {
                    proxies.emulated_headers.push(name.clone());
                }
            }
        }
        Ok(proxies)
    }

    /// The connect proxy, when enabled.
    pub(crate) fn connect(&self) -> Option<&Proxy> {
        self.connect.as_deref()
    }

    /// The refresh proxy, when enabled.
    pub(crate) fn refresh(&self) -> Option<&Proxy> {
        self.refresh.as_deref()
    }

    /// Whether RPC calls go to a backend at all (otherwise every `rpc` is 108).
    pub(crate) fn has_rpc(&self) -> bool {
        self.rpc
    }

    /// The proxy a namespace (or RPC namespace) names for a channel event or RPC.
    pub(crate) fn get(&self, event: ProxyEvent, name: &str) -> Option<&Proxy> {
        if name == "default" {
            self.defaults.get(&event).map(Arc::as_ref)
        } else {
            self.named.get(name).map(Arc::as_ref)
        }
    }

    /// The transport headers (name, value) of a request that some proxy forwards; `None`
    /// when there are none to keep.
    pub(crate) fn keep_http_headers<'a>(
        &self,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Vec<(HeaderName, HeaderValue)> {
        if self.http_headers.is_empty() {
            return Vec::new();
        }
        keep(&self.http_headers, headers)
    }

    /// The emulated headers of a connect command that some proxy forwards.
    pub(crate) fn keep_emulated_headers<'a>(
        &self,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Vec<(HeaderName, HeaderValue)> {
        if self.emulated_headers.is_empty() {
            return Vec::new();
        }
        keep(&self.emulated_headers, headers)
    }
}

/// The HTTP clients of a node's proxies, made while the proxies are built: one for every
/// plain `http://` proxy, and one per distinct TLS object, so proxies on the same terms share
/// a connection pool; and the system's roots, read once for HTTP and gRPC alike.
#[derive(Debug, Default)]
struct Clients {
    plain: Option<HttpClient>,
    tls: Vec<(TlsClientConfig, HttpClient)>,
    roots: SystemRoots,
}

impl Clients {
    /// The HTTP client for `tls` (`None`: plain http).
    fn http(&mut self, tls: Option<&TlsClientConfig>) -> Result<HttpClient, TlsError> {
        let Some(tls) = tls else {
            return Ok(self
                .plain
                .get_or_insert_with(|| http::client(http::Tls::Off))
                .clone());
        };
        if let Some((_, client)) = self.tls.iter().find(|(built, _)| built == tls) {
            return Ok(client.clone());
        }
        let config = tls::client_config(tls, &mut self.roots)?;
        let client = http::client(http::Tls::On(Box::new(config), tls::server_name(tls)?));
        self.tls.push((tls.clone(), client.clone()));
        Ok(client)
    }
}

/// A gRPC call bounded by the proxy's timeout, as a failure kind: the bound, or the
/// backend's `DEADLINE_EXCEEDED`, is a timeout; any other status a failed call.
fn grpc_outcome<T>(
    bounded: Result<Result<T, GrpcError>, tokio::time::error::Elapsed>,
) -> Result<T, Failure> {
    match bounded {
        Err(_) => Err(Failure::Timeout),
        Ok(Err(GrpcError::Status(status))) if status.code() == tonic::Code::DeadlineExceeded => {
            Err(Failure::Timeout)
        }
        Ok(result) => result.map_err(Failure::Grpc),
    }
}

/// The headers among `headers` whose (case-insensitive) name is in `allowed`.
fn keep<'a>(
    allowed: &[HeaderName],
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<(HeaderName, HeaderValue)> {
    headers
        .into_iter()
        .filter_map(|(name, value)| {
            let name = HeaderName::try_from(name.to_ascii_lowercase()).ok()?;
            if !allowed.contains(&name) {
                return None;
            }
            Some((name, HeaderValue::try_from(value).ok()?))
        })
        .collect()
}

/// Calls out to one proxy at once, at most; more are refused (the protocol's temporary
/// error) rather than queued.
pub(crate) const MAX_IN_FLIGHT: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stream_publisher_waits_for_room_at_most_its_timeout_and_knows_a_closed_stream() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let publisher = StreamPublisher {
            tx,
            timeout: Duration::from_millis(50),
        };
        publisher.publish("1".into()).await.expect("room for one");
        let started = Instant::now();
        let full = publisher.publish("2".into()).await;
        assert!(matches!(full, Err(StreamPublishError::Timeout)), "{full:?}");
        assert!(started.elapsed() >= Duration::from_millis(50));
        let first = rx.recv().await.expect("the first publication");
        assert_eq!(first.publication.expect("a publication").data, "1");
        assert!(first.subscribe_request.is_none());
        drop(rx);
        let closed = publisher.publish("3".into()).await;
        assert!(
            matches!(closed, Err(StreamPublishError::Closed)),
            "{closed:?}"
        );
    }
}
