//! A trivial backend for the `proxy` and `proxy-fault` scenarios: the least an application
//! behind tether's HTTP or gRPC proxy could do, so that what the scenarios measure is tether's
//! proxy path and not the backend.
//!
//! Over HTTP, `POST /connect` answers `{"result":{"user":"<n>"}}` (n counts connects),
//! `POST /rpc` echoes the request's `data` as `{"result":{"data":<data>}}`; a body that is not
//! JSON is a 400. Over gRPC (`--grpc-listen`), the `CentrifugoProxy` service's `Connect` and
//! `RPC` do the same with tether's own messages ([`tether_server::proxyproto`]); other methods
//! are `UNIMPLEMENTED`. Nothing is logged per request.
//!
//! A [`Fault`] makes the rpc answers (HTTP and gRPC alike; connects stay healthy) slow, failed
//! (HTTP 500, gRPC `INTERNAL`) or alternating between failed and healthy, for the
//! `proxy-fault` scenario. A backend that is down is no backend: a port nothing listens on.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use axum::routing::post;
use axum::serve::ListenerExt as _;
use serde::Deserialize;
use serde_json::value::RawValue;
use tether_server::proxyproto::{self, method};
use tonic::codegen::{BoxFuture, Context, Poll, Service, http};
use tonic::server::{NamedService, UnaryService};

/// How the backend answers rpc calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Every call answered at once.
    Healthy,
    /// Every call answered after this long (longer than tether's proxy timeout: it gives up
    /// first).
    Slow(Duration),
    /// Every call fails: HTTP 500, gRPC `INTERNAL`.
    Error,
    /// Healthy for a period, failing for the next, and so on from the backend's start.
    Flap(Duration),
}

/// What one rpc call gets, by [`Fault::now`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The echo, at once.
    Answer,
    /// The echo, after this long.
    AnswerAfter(Duration),
    /// A failure: HTTP 500, gRPC `INTERNAL`.
    Fail,
}

impl Fault {
    /// The outcome of a call that comes `elapsed` after the backend started.
    #[must_use]
    pub fn now(self, elapsed: Duration) -> Outcome {
        match self {
            Self::Healthy => Outcome::Answer,
            Self::Slow(d) => Outcome::AnswerAfter(d),
            Self::Error => Outcome::Fail,
            Self::Flap(period) => {
                let k = elapsed.as_nanos() / period.as_nanos().max(1);
                if k.is_multiple_of(2) {
                    Outcome::Answer
                } else {
                    Outcome::Fail
                }
            }
        }
    }
}

/// Where and how the backend serves.
#[derive(Clone, Debug)]
pub struct BackendConfig {
    /// The HTTP listener's address.
    pub listen: SocketAddr,
    /// The gRPC listener's address, if any.
    pub grpc_listen: Option<SocketAddr>,
    /// Runtime threads (1: a current-thread runtime).
    pub threads: usize,
    /// How rpc calls are answered.
    pub fault: Fault,
}

/// What the HTTP and gRPC handlers share.
#[derive(Debug)]
struct Shared {
    /// Connects answered so far, over both listeners: the next user id.
    connects: AtomicU64,
    fault: Fault,
    /// The origin of a flapping fault's periods.
    start: Instant,
}

impl Shared {
    fn new(fault: Fault) -> Arc<Self> {
        Arc::new(Self {
            connects: AtomicU64::new(0),
            fault,
            start: Instant::now(),
        })
    }

    fn next_user(&self) -> u64 {
        self.connects.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Waits as the fault says; false when the call must fail.
    async fn rpc_allowed(&self) -> bool {
        match self.fault.now(self.start.elapsed()) {
            Outcome::Answer => true,
            Outcome::AnswerAfter(d) => {
                tokio::time::sleep(d).await;
                true
            }
            Outcome::Fail => false,
        }
    }
}

/// The answer to the `n`th connect.
pub fn connect_answer(n: u64) -> String {
    format!("{{\"result\":{{\"user\":\"{n}\"}}}}")
}

#[derive(Deserialize)]
struct RpcBody<'a> {
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// The answer to an rpc request: its `data`, unparsed, as the result's `data`.
pub fn rpc_answer(body: &[u8]) -> Result<String, serde_json::Error> {
    let req: RpcBody<'_> = serde_json::from_slice(body)?;
    Ok(match req.data {
        Some(data) => format!("{{\"result\":{{\"data\":{}}}}}", data.get()),
        None => "{\"result\":{}}".to_owned(),
    })
}

/// The gRPC answer to the `n`th connect.
pub fn grpc_connect_answer(n: u64) -> proxyproto::ConnectResponse {
    proxyproto::ConnectResponse {
        result: Some(proxyproto::ConnectResult {
            user: n.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The gRPC answer to an rpc request: its `data` (or `b64data`) as the result's.
pub fn grpc_rpc_answer(request: proxyproto::RpcRequest) -> proxyproto::RpcResponse {
    proxyproto::RpcResponse {
        result: Some(proxyproto::RpcResult {
            data: request.data,
            b64data: request.b64data,
        }),
        ..Default::default()
    }
}

fn json(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn connect(State(shared): State<Arc<Shared>>) -> Response {
    json(connect_answer(shared.next_user()))
}

async fn rpc(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    if !shared.rpc_allowed().await {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    match rpc_answer(&body) {
        Ok(answer) => json(answer),
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    }
}

/// The backend's HTTP routes.
fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/connect", post(connect))
        .route("/rpc", post(rpc))
        .with_state(shared)
}

// === gRPC ===

/// The `CentrifugoProxy` service: `Connect` and `RPC`, dispatched on the method path.
#[derive(Clone, Debug)]
struct GrpcProxy(Arc<Shared>);

impl NamedService for GrpcProxy {
    const NAME: &'static str = proxyproto::SERVICE;
}

impl Service<http::Request<tonic::body::Body>> for GrpcProxy {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let shared = self.0.clone();
        match request.uri().path() {
            method::CONNECT => Box::pin(async move {
                let codec = tonic_prost::ProstCodec::<
                    proxyproto::ConnectResponse,
                    proxyproto::ConnectRequest,
                >::default();
                Ok(tonic::server::Grpc::new(codec)
                    .unary(GrpcConnect(shared), request)
                    .await)
            }),
            method::RPC => Box::pin(async move {
                let codec = tonic_prost::ProstCodec::<
                    proxyproto::RpcResponse,
                    proxyproto::RpcRequest,
                >::default();
                Ok(tonic::server::Grpc::new(codec)
                    .unary(GrpcRpc(shared), request)
                    .await)
            }),
            _ => Box::pin(async {
                Ok(tonic::Status::unimplemented("not served by the bench backend").into_http())
            }),
        }
    }
}

struct GrpcConnect(Arc<Shared>);

impl UnaryService<proxyproto::ConnectRequest> for GrpcConnect {
    type Response = proxyproto::ConnectResponse;
    type Future = std::future::Ready<Result<tonic::Response<Self::Response>, tonic::Status>>;

    fn call(&mut self, _request: tonic::Request<proxyproto::ConnectRequest>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new(grpc_connect_answer(
            self.0.next_user(),
        ))))
    }
}

struct GrpcRpc(Arc<Shared>);

impl UnaryService<proxyproto::RpcRequest> for GrpcRpc {
    type Response = proxyproto::RpcResponse;
    type Future = BoxFuture<tonic::Response<Self::Response>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<proxyproto::RpcRequest>) -> Self::Future {
        let shared = self.0.clone();
        Box::pin(async move {
            if !shared.rpc_allowed().await {
                return Err(tonic::Status::internal("backend fault"));
            }
            Ok(tonic::Response::new(grpc_rpc_answer(request.into_inner())))
        })
    }
}

/// Serves the gRPC service on `listener` until the process is stopped.
async fn serve_grpc(listener: tokio::net::TcpListener, shared: Arc<Shared>) -> anyhow::Result<()> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(GrpcProxy(shared))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}

/// Serves the backend as `config` says until the process is stopped.
pub fn serve(config: &BackendConfig) -> anyhow::Result<()> {
    let rt = crate::runtime(config.threads)?;
    let shared = Shared::new(config.fault);
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let listener = listener.tap_io(|tcp| {
            // Best effort: answers are one write each, but Nagle must not hold one back.
            let _ = tcp.set_nodelay(true);
        });
        let http = async {
            axum::serve(listener, router(shared.clone())).await?;
            anyhow::Ok(())
        };
        match config.grpc_listen {
            None => http.await,
            Some(addr) => {
                let grpc = serve_grpc(tokio::net::TcpListener::bind(addr).await?, shared.clone());
                tokio::try_join!(http, grpc).map(|_| ())
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_answers_a_user() {
        let v: serde_json::Value = serde_json::from_str(&connect_answer(7)).unwrap();
        assert_eq!(v, serde_json::json!({"result": {"user": "7"}}));
        assert_eq!(grpc_connect_answer(7).result.unwrap().user, "7");
    }

    #[test]
    fn rpc_echoes_data_as_it_came() {
        let body = br#"{"client":"c","transport":"websocket","protocol":"json","encoding":"json",
            "user":"1","method":"echo","data":{"i":3, "s":"x\"y"}}"#;
        assert_eq!(
            rpc_answer(body).unwrap(),
            r#"{"result":{"data":{"i":3, "s":"x\"y"}}}"#
        );
        assert_eq!(
            rpc_answer(br#"{"method":"m"}"#).unwrap(),
            r#"{"result":{}}"#
        );
        assert_eq!(rpc_answer(br#"{"data":null}"#).unwrap(), r#"{"result":{}}"#);
        assert!(rpc_answer(b"not json").is_err());
        let answer = grpc_rpc_answer(proxyproto::RpcRequest {
            data: Bytes::from_static(b"{\"p\":1}"),
            method: "echo".to_owned(),
            ..Default::default()
        });
        let result = answer.result.unwrap();
        assert_eq!(&result.data[..], b"{\"p\":1}");
        assert!(answer.error.is_none() && answer.disconnect.is_none());
    }

    #[test]
    fn faults_decide_each_call() {
        let s = Duration::from_secs;
        assert_eq!(Fault::Healthy.now(s(5)), Outcome::Answer);
        assert_eq!(Fault::Slow(s(2)).now(s(0)), Outcome::AnswerAfter(s(2)));
        assert_eq!(Fault::Error.now(s(0)), Outcome::Fail);
        let flap = Fault::Flap(s(1));
        assert_eq!(flap.now(Duration::ZERO), Outcome::Answer);
        assert_eq!(flap.now(Duration::from_millis(999)), Outcome::Answer);
        assert_eq!(flap.now(s(1)), Outcome::Fail);
        assert_eq!(flap.now(Duration::from_millis(1_999)), Outcome::Fail);
        assert_eq!(flap.now(s(2)), Outcome::Answer);
    }

    async fn post(addr: SocketAddr, path: &str, body: &'static str) -> (u16, String) {
        use http_body_util::{BodyExt as _, Full};
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;

        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let request = hyper::Request::post(format!("http://{addr}{path}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        let response = client.request(request).await.unwrap();
        let status = response.status().as_u16();
        let got = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(got.to_vec()).unwrap())
    }

    async fn spawn_http(fault: Fault) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = router(Shared::new(fault));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        (addr, task)
    }

    /// The routes over a real socket: what tether's proxy sends, what it gets back.
    #[tokio::test]
    async fn routes_answer_over_http() {
        let (addr, server) = spawn_http(Fault::Healthy).await;
        for (path, body, status, answer) in [
            (
                "/connect",
                r#"{"client":"c"}"#,
                200,
                r#"{"result":{"user":"1"}}"#,
            ),
            (
                "/connect",
                r#"{"client":"c"}"#,
                200,
                r#"{"result":{"user":"2"}}"#,
            ),
            (
                "/rpc",
                r#"{"method":"echo","data":[1]}"#,
                200,
                r#"{"result":{"data":[1]}}"#,
            ),
            ("/rpc", "{", 400, ""),
        ] {
            assert_eq!(
                post(addr, path, body).await,
                (status, answer.to_owned()),
                "{path} {body}"
            );
        }
        server.abort();
    }

    #[tokio::test]
    async fn a_failing_backend_answers_rpc_with_500_and_connects_as_usual() {
        let (addr, server) = spawn_http(Fault::Error).await;
        assert_eq!(post(addr, "/rpc", r#"{"data":1}"#).await.0, 500);
        assert_eq!(post(addr, "/connect", "{}").await.0, 200);
        server.abort();
    }

    /// The gRPC service over a real socket, called as tether's proxy calls it.
    #[tokio::test]
    async fn grpc_connect_and_rpc_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve_grpc(listener, Shared::new(Fault::Healthy)));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let codec = tonic_prost::ProstCodec::<
            proxyproto::ConnectRequest,
            proxyproto::ConnectResponse,
        >::default();
        let connect = grpc
            .unary(
                tonic::Request::new(proxyproto::ConnectRequest::default()),
                http::uri::PathAndQuery::from_static(method::CONNECT),
                codec,
            )
            .await
            .unwrap()
            .into_inner();
        assert_eq!(connect.result.unwrap().user, "1");
        grpc.ready().await.unwrap();
        let codec =
            tonic_prost::ProstCodec::<proxyproto::RpcRequest, proxyproto::RpcResponse>::default();
        let rpc = grpc
            .unary(
                tonic::Request::new(proxyproto::RpcRequest {
                    data: Bytes::from_static(b"[1]"),
                    ..Default::default()
                }),
                http::uri::PathAndQuery::from_static(method::RPC),
                codec,
            )
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&rpc.result.unwrap().data[..], b"[1]");
        grpc.ready().await.unwrap();
        let codec = tonic_prost::ProstCodec::<
            proxyproto::RefreshRequest,
            proxyproto::RefreshResponse,
        >::default();
        let refresh = grpc
            .unary(
                tonic::Request::new(proxyproto::RefreshRequest::default()),
                http::uri::PathAndQuery::from_static(method::REFRESH),
                codec,
            )
            .await
            .unwrap_err();
        assert_eq!(refresh.code(), tonic::Code::Unimplemented);
        server.abort();
    }
}
