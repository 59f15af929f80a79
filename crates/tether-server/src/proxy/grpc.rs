//! The gRPC side of the proxy: one unary call of Centrifugo's `CentrifugoProxy` service per
//! event, with the messages of [`super::proto`]; and the streaming calls of a subscription
//! stream (`SubscribeUnidirectional`, or `SubscribeBidirectional`, which also carries the
//! client's publications to the backend).
//!
//! As in Centrifugo (`internal/proxy/grpc.go`): each proxy has its own HTTP/2 connection to
//! its endpoint (`grpc://host:port`, or a bare `host:port`), dialled lazily so a backend that
//! is down at start only fails the calls; plaintext unless `grpc.tls.enabled`; every call
//! carries `grpc.static_metadata`, then the forwarded headers as lowercase metadata, then
//! `grpc.credentials_key: grpc.credentials_value`; `grpc.compression` gzips the calls. A
//! status other than OK is a failed call, like a non-200 HTTP status (there are no status
//! transforms for gRPC).

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use hyper::header::HeaderMap;
use hyper_rustls::{FixedServerNameResolver, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};
use tonic::transport::{Channel, Endpoint};

use super::proto;
use super::protocol::{
    Answer, Common, ConnectRequest, ConnectResult, Overrides, ProxyDisconnect, ProxyError,
    PublishRequest, PublishResult, RefreshRequest, RefreshResult, RpcRequest, RpcResult,
    SubRefreshRequest, SubRefreshResult, SubscribeOptions, SubscribeRequest, SubscribeResult,
    WireError,
};

/// A request that goes to the backend as one unary call.
pub(crate) trait GrpcRequest {
    /// Its message.
    type Proto: prost::Message + Send + 'static;
    /// The method's path.
    const METHOD: &'static str;
    /// The message; `binary` is the proxy's `binary_encoding` (`data` then travels as
    /// base64 in `b64data`).
    fn to_proto(&self, binary: bool) -> Self::Proto;
}

/// A result read from a unary call's response.
pub(crate) trait GrpcResult: Sized {
    /// The response message.
    type Response: prost::Message + Default + Send + 'static;
    /// The answer the response carries.
    fn from_response(response: Self::Response) -> Result<Answer<Self>, WireError>;
}

/// Why a proxy's gRPC client cannot be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GrpcBuildError {
    /// The endpoint is not `host:port` or `grpc://host:port`.
    #[error("not a gRPC target (grpc://host:port or host:port): {0}")]
    Endpoint(String),
    /// `grpc.credentials_key` is not a metadata key, or its value not ASCII.
    #[error("grpc.credentials_key / credentials_value: {0}")]
    Credentials(&'static str),
    /// A `grpc.static_metadata` entry is not valid metadata.
    #[error("grpc.static_metadata: {0:?} is not valid metadata")]
    Metadata(String),
}

/// One proxy's gRPC connection and its per-call settings.
#[derive(Debug, Clone)]
pub(crate) struct GrpcClient {
    channel: Channel,
    /// Where it connects, for logs.
    target: String,
    compression: bool,
    static_metadata: HeaderMap,
    credentials: Option<(AsciiMetadataKey, AsciiMetadataValue)>,
}

/// How the connection speaks TLS.
#[derive(Debug)]
pub(crate) enum GrpcTls {
    /// Plaintext HTTP/2.
    Off,
    /// TLS with this configuration (without ALPN: the connector sets `h2`), checking the certificate
    /// against the server name when given instead of the target's host.
    On(Box<ClientConfig>, Option<ServerName<'static>>),
}

impl GrpcClient {
    /// A client for `endpoint` with the proxy's gRPC options. Nothing is dialled until the
    /// first call.
    pub(crate) fn new(
        endpoint: &str,
        config: &crate::config::ProxyGrpcConfig,
        tls: GrpcTls,
    ) -> Result<Self, GrpcBuildError> {
        let target = target(endpoint)?;
        let credentials = if config.credentials_key.is_empty() {
            None
        } else {
            let key = AsciiMetadataKey::from_bytes(config.credentials_key.as_bytes())
                .map_err(|_| GrpcBuildError::Credentials("the key is not a metadata key"))?;
            let value = AsciiMetadataValue::try_from(config.credentials_value.as_str())
                .map_err(|_| GrpcBuildError::Credentials("the value is not visible ASCII"))?;
            Some((key, value))
        };
        let mut static_metadata = HeaderMap::new();
        for (key, value) in &config.static_metadata {
            let bad = || GrpcBuildError::Metadata(key.clone());
            let name =
                hyper::header::HeaderName::try_from(key.to_ascii_lowercase()).map_err(|_| bad())?;
            let value = hyper::header::HeaderValue::try_from(value.as_str()).map_err(|_| bad())?;
            static_metadata.insert(name, value);
        }
        let scheme = match tls {
            GrpcTls::Off => "http",
            GrpcTls::On(..) => "https",
        };
        let uri = format!("{scheme}://{target}");
        let endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|_| GrpcBuildError::Endpoint(target.clone()))?
            .tcp_nodelay(true);
        let channel = match tls {
            GrpcTls::Off => endpoint.connect_lazy(),
            GrpcTls::On(config, server_name) => {
                let mut http = HttpConnector::new();
                http.enforce_http(false);
                http.set_nodelay(true);
                let builder = HttpsConnectorBuilder::new()
                    .with_tls_config(*config)
                    .https_only();
                let builder = match server_name {
                    Some(name) => {
                        builder.with_server_name_resolver(FixedServerNameResolver::new(name))
                    }
                    None => builder,
                };
                endpoint.connect_with_connector_lazy(builder.enable_http2().wrap_connector(http))
            }
        };
        Ok(Self {
            channel,
            target: uri,
            compression: config.compression,
            static_metadata,
            credentials,
        })
    }

    /// Where the client connects (`http://host:port` or `https://host:port`).
    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    /// The metadata every call starts from, with the lowest priority.
    pub(crate) fn static_metadata(&self) -> &HeaderMap {
        &self.static_metadata
    }

    /// One unary call: `request` with `headers` as its metadata, at most `timeout` (also
    /// sent to the backend as `grpc-timeout`).
    pub(crate) async fn call<Q: GrpcRequest, R: GrpcResult>(
        &self,
        request: &Q,
        binary: bool,
        headers: HeaderMap,
        timeout: Duration,
    ) -> Result<Answer<R>, GrpcError> {
        let (mut grpc, mut call) = self.prepare(request.to_proto(binary), headers).await?;
        call.set_timeout(timeout);
        let codec = tonic_prost::ProstCodec::<Q::Proto, R::Response>::default();
        let path = hyper::http::uri::PathAndQuery::from_static(Q::METHOD);
        let response = grpc
            .unary(call, path, codec)
            .await
            .map_err(GrpcError::Status)?;
        R::from_response(response.into_inner()).map_err(GrpcError::Answer)
    }

    /// A client on the proxy's channel, ready for a call, and the call carrying `message`
    /// with `headers` and the credentials as its metadata.
    async fn prepare<M>(
        &self,
        message: M,
        headers: HeaderMap,
    ) -> Result<(tonic::client::Grpc<Channel>, tonic::Request<M>), GrpcError> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        if self.compression {
            grpc = grpc
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip);
        }
        grpc.ready()
            .await
            .map_err(|error| GrpcError::Status(tonic::Status::unavailable(error.to_string())))?;
        let mut call = tonic::Request::new(message);
        *call.metadata_mut() = MetadataMap::from_headers(headers);
        if let Some((key, value)) = &self.credentials {
            call.metadata_mut().insert(key.clone(), value.clone());
        }
        Ok((grpc, call))
    }

    /// Opens a subscription stream and reads its first message, which must carry the
    /// subscribe response: its answer, the stream of the later messages and, for a
    /// `bidirectional` stream, the sender of the messages that follow the subscribe request.
    /// No `grpc-timeout` is sent (the stream lives as long as the subscription); the caller
    /// bounds the wait for the first message.
    pub(crate) async fn subscribe_stream(
        &self,
        request: &SubscribeRequest,
        binary: bool,
        headers: HeaderMap,
        bidirectional: bool,
    ) -> Result<(Answer<SubscribeResult>, GrpcStream, Option<StreamSender>), GrpcError> {
        let request = request.to_proto(binary);
        let (mut stream, sender) = if bidirectional {
            let (tx, rx) = tokio::sync::mpsc::channel(STREAM_SEND_QUEUE);
            let first = proto::StreamSubscribeRequest {
                subscribe_request: Some(request),
                publication: None,
            };
            let rest = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|message| (message, rx))
            });
            let outbound =
                futures_util::StreamExt::chain(futures_util::stream::iter([first]), rest);
            let (mut grpc, call) = self.prepare(outbound, headers).await?;
            let codec = tonic_prost::ProstCodec::<
                proto::StreamSubscribeRequest,
                proto::StreamSubscribeResponse,
            >::default();
            let path =
                hyper::http::uri::PathAndQuery::from_static(proto::method::SUBSCRIBE_BIDIRECTIONAL);
            let stream = grpc
                .streaming(call, path, codec)
                .await
                .map_err(GrpcError::Status)?
                .into_inner();
            (stream, Some(tx))
        } else {
            let (mut grpc, call) = self.prepare(request, headers).await?;
            let codec = tonic_prost::ProstCodec::<
                proto::SubscribeRequest,
                proto::StreamSubscribeResponse,
            >::default();
            let path = hyper::http::uri::PathAndQuery::from_static(
                proto::method::SUBSCRIBE_UNIDIRECTIONAL,
            );
            let stream = grpc
                .server_streaming(call, path, codec)
                .await
                .map_err(GrpcError::Status)?
                .into_inner();
            (stream, None)
        };
        let first = stream
            .message()
            .await
            .map_err(GrpcError::Status)?
            .and_then(|message| message.subscribe_response)
            .ok_or(GrpcError::NoSubscribeResponse)?;
        let answer = SubscribeResult::from_response(first).map_err(GrpcError::Answer)?;
        Ok((answer, stream, sender))
    }
}

/// Messages a bidirectional stream may hold unsent: a client publishing faster than the
/// backend reads waits for room (bounded by the proxy's timeout).
const STREAM_SEND_QUEUE: usize = 16;

/// The sending half of a bidirectional subscription stream, after its first message.
pub(crate) type StreamSender = tokio::sync::mpsc::Sender<proto::StreamSubscribeRequest>;

/// The messages of a subscription stream after its first.
pub(crate) type GrpcStream = tonic::codec::Streaming<proto::StreamSubscribeResponse>;

/// Why a gRPC call produced no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GrpcError {
    /// The call ended with a status other than OK (connection failures included).
    #[error("status {}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    /// A `b64*` field of the answer is not base64.
    #[error("answer: {0}")]
    Answer(WireError),
    /// A subscription stream ended, or sent another message, before its subscribe response.
    #[error("the stream's first message carries no subscribe_response")]
    NoSubscribeResponse,
}

/// `host:port` from a gRPC endpoint: `grpc://` is stripped, anything after the authority
/// (a path) is ignored, as Go's `url.Parse(...).Host` does.
fn target(endpoint: &str) -> Result<String, GrpcBuildError> {
    let bad = || GrpcBuildError::Endpoint(endpoint.to_owned());
    let rest = match endpoint.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("grpc://") => &endpoint[7..],
        _ => endpoint,
    };
    if rest.contains("://") {
        return Err(bad());
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(bad());
    }
    authority
        .parse::<hyper::http::uri::Authority>()
        .map_err(|_| bad())?;
    Ok(authority.to_owned())
}

// === requests ===

/// The common fields 1–4 of every request.
fn common(common: &Common, binary: bool) -> (String, String, String, String) {
    (
        common.client.clone(),
        common.transport.to_owned(),
        common.protocol.to_owned(),
        if binary { "binary" } else { "json" }.to_owned(),
    )
}

/// `data` as the proxy sends it: raw bytes, or base64 with `binary_encoding`.
fn data(data: &Bytes, binary: bool) -> (Bytes, String) {
    if binary && !data.is_empty() {
        (Bytes::new(), BASE64.encode(data))
    } else {
        (data.clone(), String::new())
    }
}

fn meta(meta: Option<&Bytes>) -> Bytes {
    meta.cloned().unwrap_or_default()
}

impl GrpcRequest for ConnectRequest {
    type Proto = proto::ConnectRequest;
    const METHOD: &'static str = proto::method::CONNECT;

    fn to_proto(&self, binary: bool) -> proto::ConnectRequest {
        let (client, transport, protocol, encoding) = common(&self.common, binary);
        let (data, b64data) = data(&self.data, binary);
        proto::ConnectRequest {
            client,
            transport,
            protocol,
            encoding,
            data,
            b64data,
            name: self.name.clone(),
            version: self.version.clone(),
            channels: self.channels.clone(),
        }
    }
}

impl GrpcRequest for RefreshRequest {
    type Proto = proto::RefreshRequest;
    const METHOD: &'static str = proto::method::REFRESH;

    fn to_proto(&self, binary: bool) -> proto::RefreshRequest {
        let (client, transport, protocol, encoding) = common(&self.common, binary);
        proto::RefreshRequest {
            client,
            transport,
            protocol,
            encoding,
            user: self.user.clone(),
            meta: meta(self.meta.as_ref()),
        }
    }
}

impl GrpcRequest for SubscribeRequest {
    type Proto = proto::SubscribeRequest;
    const METHOD: &'static str = proto::method::SUBSCRIBE;

    fn to_proto(&self, binary: bool) -> proto::SubscribeRequest {
        let (client, transport, protocol, encoding) = common(&self.common, binary);
        let (data, b64data) = data(&self.data, binary);
        proto::SubscribeRequest {
            client,
            transport,
            protocol,
            encoding,
            user: self.user.clone(),
            channel: self.channel.clone(),
            token: String::new(),
            meta: meta(self.meta.as_ref()),
            data,
            b64data,
        }
    }
}

impl GrpcRequest for PublishRequest {
    type Proto = proto::PublishRequest;
    const METHOD: &'static str = proto::method::PUBLISH;

    fn to_proto(&self, binary: bool) -> proto::PublishRequest {
        let (client, transport, protocol, encoding) = common(&self.common, binary);
        let (data, b64data) = data(&self.data, binary);
        proto::PublishRequest {
            client,
            transport,
            protocol,
            encoding,
            user: self.user.clone(),
            channel: self.channel.clone(),
            data,
            b64data,
            meta: meta(self.meta.as_ref()),
        }
    }
}

impl GrpcRequest for RpcRequest {
    type Proto = proto::RpcRequest;
    const METHOD: &'static str = proto::method::RPC;

    fn to_proto(&self, binary: bool) -> proto::RpcRequest {
        let (client, transport, protocol, encoding) = common(&self.common, binary);
        let (data, b64data) = data(&self.data, binary);
        proto::RpcRequest {
            client,
            transport,
            protocol,
            encoding,
            user: self.user.clone(),
            method: self.method.clone(),
            data,
            b64data,
            meta: meta(self.meta.as_ref()),
        }
    }
}

impl GrpcRequest for SubRefreshRequest {
    type Proto = proto::SubRefreshRequest;
    const METHOD: &'static str = proto::method::SUB_REFRESH;

    fn to_proto(&self, binary: bool) -> proto::SubRefreshRequest {
        let (client, transport, protocol, encoding) = common(&self.common, binary);
        proto::SubRefreshRequest {
            client,
            transport,
            protocol,
            encoding,
            user: self.user.clone(),
            channel: self.channel.clone(),
            meta: meta(self.meta.as_ref()),
        }
    }
}

// === results ===

/// A `bytes` field and its base64 twin; empty means absent. The base64 one wins unless
/// `raw_first` (a publish result's `data`).
fn bytes_of(
    raw: Bytes,
    b64: &str,
    field: &'static str,
    raw_first: bool,
) -> Result<Option<Bytes>, WireError> {
    let raw = (!raw.is_empty()).then_some(raw);
    if raw_first && raw.is_some() {
        return Ok(raw);
    }
    if b64.is_empty() {
        return Ok(raw);
    }
    BASE64
        .decode(b64)
        .map(|decoded| Some(Bytes::from(decoded)))
        .map_err(|_| WireError::Base64(field))
}

fn overrides(wire: Option<proto::SubscribeOptionOverride>) -> Overrides {
    let wire = wire.unwrap_or_default();
    let pick = |v: Option<proto::BoolValue>| v.map(|v| v.value);
    Overrides {
        presence: pick(wire.presence),
        join_leave: pick(wire.join_leave),
        force_recovery: pick(wire.force_recovery),
        force_positioning: pick(wire.force_positioning),
        force_push_join_leave: pick(wire.force_push_join_leave),
    }
}

/// The answer of a response's three fields: `disconnect`, then `error`, then `result`.
fn answer<W, R>(
    result: Option<W>,
    error: Option<proto::Error>,
    disconnect: Option<proto::Disconnect>,
    read: impl FnOnce(W) -> Result<R, WireError>,
) -> Result<Answer<R>, WireError> {
    if let Some(d) = disconnect {
        return Ok(Answer::Disconnect(ProxyDisconnect {
            code: d.code,
            reason: d.reason,
        }));
    }
    if let Some(e) = error {
        return Ok(Answer::Error(ProxyError {
            code: e.code,
            message: e.message,
            temporary: e.temporary,
        }));
    }
    Ok(Answer::Result(result.map(read).transpose()?))
}

impl GrpcResult for ConnectResult {
    type Response = proto::ConnectResponse;

    fn from_response(r: proto::ConnectResponse) -> Result<Answer<Self>, WireError> {
        answer(r.result, r.error, r.disconnect, |wire| {
            let subs = wire
                .subs
                .into_iter()
                .map(|(channel, opts)| {
                    Ok((
                        channel,
                        SubscribeOptions {
                            info: bytes_of(opts.info, &opts.b64info, "b64info", false)?,
                            data: bytes_of(opts.data, &opts.b64data, "b64data", false)?,
                            overrides: overrides(opts.r#override),
                        },
                    ))
                })
                .collect::<Result<_, WireError>>()?;
            Ok(Self {
                user: wire.user,
                expire_at: wire.expire_at,
                info: bytes_of(wire.info, &wire.b64info, "b64info", false)?,
                data: bytes_of(wire.data, &wire.b64data, "b64data", false)?,
                channels: wire.channels,
                subs,
                meta: bytes_of(wire.meta, "", "meta", true)?,
            })
        })
    }
}

impl GrpcResult for RefreshResult {
    type Response = proto::RefreshResponse;

    fn from_response(r: proto::RefreshResponse) -> Result<Answer<Self>, WireError> {
        answer(r.result, r.error, r.disconnect, |wire| {
            Ok(Self {
                expired: wire.expired,
                expire_at: wire.expire_at,
                info: bytes_of(wire.info, &wire.b64info, "b64info", false)?,
                meta: bytes_of(wire.meta, "", "meta", true)?,
            })
        })
    }
}

impl GrpcResult for SubscribeResult {
    type Response = proto::SubscribeResponse;

    fn from_response(r: proto::SubscribeResponse) -> Result<Answer<Self>, WireError> {
        answer(r.result, r.error, r.disconnect, |wire| {
            Ok(Self {
                expire_at: wire.expire_at,
                info: bytes_of(wire.info, &wire.b64info, "b64info", false)?,
                data: bytes_of(wire.data, &wire.b64data, "b64data", false)?,
                overrides: overrides(wire.r#override),
            })
        })
    }
}

impl GrpcResult for PublishResult {
    type Response = proto::PublishResponse;

    fn from_response(r: proto::PublishResponse) -> Result<Answer<Self>, WireError> {
        answer(r.result, r.error, r.disconnect, |wire| {
            Ok(Self {
                data: bytes_of(wire.data, &wire.b64data, "b64data", true)?,
                skip_history: wire.skip_history,
                tags: wire.tags,
                idempotency_key: wire.idempotency_key,
                delta: wire.delta,
            })
        })
    }
}

impl GrpcResult for RpcResult {
    type Response = proto::RpcResponse;

    fn from_response(r: proto::RpcResponse) -> Result<Answer<Self>, WireError> {
        answer(r.result, r.error, r.disconnect, |wire| {
            Ok(Self {
                data: bytes_of(wire.data, &wire.b64data, "b64data", false)?,
            })
        })
    }
}

impl GrpcResult for SubRefreshResult {
    type Response = proto::SubRefreshResponse;

    fn from_response(r: proto::SubRefreshResponse) -> Result<Answer<Self>, WireError> {
        answer(r.result, r.error, r.disconnect, |wire| {
            Ok(Self {
                expired: wire.expired,
                expire_at: wire.expire_at,
                info: bytes_of(wire.info, &wire.b64info, "b64info", false)?,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_host_and_port_with_or_without_the_grpc_scheme() {
        assert_eq!(target("grpc://app:9000").unwrap(), "app:9000");
        assert_eq!(target("GRPC://app:9000/ignored").unwrap(), "app:9000");
        assert_eq!(target("127.0.0.1:9000").unwrap(), "127.0.0.1:9000");
        assert_eq!(target("[::1]:9000").unwrap(), "[::1]:9000");
        for bad in ["", "grpc://", "tcp://app:9000", "a b:1"] {
            assert!(target(bad).is_err(), "{bad:?}");
        }
    }

    fn common() -> Common {
        Common {
            client: "c1".to_owned(),
            transport: "websocket",
            protocol: "protobuf",
        }
    }

    #[test]
    fn requests_carry_data_raw_or_as_base64() {
        let request = RpcRequest {
            common: common(),
            user: "42".to_owned(),
            method: "echo".to_owned(),
            data: Bytes::from_static(&[0, 159, 146, 150]),
            meta: Some(Bytes::from_static(b"{\"t\":1}")),
        };
        let raw = request.to_proto(false);
        assert_eq!(
            (
                raw.client.as_str(),
                raw.transport.as_str(),
                raw.protocol.as_str()
            ),
            ("c1", "websocket", "protobuf")
        );
        assert_eq!(raw.encoding, "json");
        assert_eq!(&raw.data[..], &[0, 159, 146, 150]);
        assert!(raw.b64data.is_empty());
        assert_eq!(&raw.meta[..], b"{\"t\":1}");
        let binary = request.to_proto(true);
        assert_eq!(binary.encoding, "binary");
        assert!(binary.data.is_empty());
        assert_eq!(binary.b64data, "AJ+Slg==");
    }

    #[test]
    fn a_response_is_read_disconnect_first_then_error_then_result() {
        let result = Some(proto::RpcResult {
            data: Bytes::from_static(b"{}"),
            b64data: String::new(),
        });
        let error = Some(proto::Error {
            code: 1000,
            message: "no".to_owned(),
            temporary: true,
        });
        let disconnect = Some(proto::Disconnect {
            code: 4500,
            reason: "bye".to_owned(),
        });
        let read = |result, error, disconnect| {
            RpcResult::from_response(proto::RpcResponse {
                result,
                error,
                disconnect,
            })
            .unwrap()
        };
        assert_eq!(
            read(result.clone(), error.clone(), disconnect),
            Answer::Disconnect(ProxyDisconnect {
                code: 4500,
                reason: "bye".to_owned()
            })
        );
        assert_eq!(
            read(result.clone(), error, None),
            Answer::Error(ProxyError {
                code: 1000,
                message: "no".to_owned(),
                temporary: true
            })
        );
        assert_eq!(
            read(result, None, None),
            Answer::Result(Some(RpcResult {
                data: Some(Bytes::from_static(b"{}"))
            }))
        );
        assert_eq!(read(None, None, None), Answer::Result(None));
    }

    #[test]
    fn base64_twins_win_except_for_publish_data() {
        let b64 = BASE64.encode("from b64");
        let answer = ConnectResult::from_response(proto::ConnectResponse {
            result: Some(proto::ConnectResult {
                user: "7".to_owned(),
                info: Bytes::from_static(b"raw"),
                b64info: b64.clone(),
                data: Bytes::from_static(b"raw data"),
                subs: [(
                    "news".to_owned(),
                    proto::SubscribeOptions {
                        r#override: Some(proto::SubscribeOptionOverride {
                            presence: Some(proto::BoolValue { value: false }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )]
                .into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap();
        let Answer::Result(Some(connect)) = answer else {
            panic!("{answer:?}");
        };
        assert_eq!(connect.info.as_deref(), Some(&b"from b64"[..]));
        assert_eq!(connect.data.as_deref(), Some(&b"raw data"[..]));
        assert_eq!(connect.subs["news"].overrides.presence, Some(false));
        assert_eq!(connect.subs["news"].overrides.join_leave, None);
        assert_eq!(connect.meta, None);

        let publish = PublishResult::from_response(proto::PublishResponse {
            result: Some(proto::PublishResult {
                data: Bytes::from_static(b"raw"),
                b64data: b64,
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap();
        let Answer::Result(Some(publish)) = publish else {
            panic!("{publish:?}");
        };
        assert_eq!(publish.data.as_deref(), Some(&b"raw"[..]));

        let bad = RpcResult::from_response(proto::RpcResponse {
            result: Some(proto::RpcResult {
                data: Bytes::new(),
                b64data: "%%%".to_owned(),
            }),
            ..Default::default()
        });
        assert!(matches!(bad, Err(WireError::Base64("b64data"))), "{bad:?}");
    }
}
