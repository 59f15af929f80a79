//! A gRPC proxy backend for tests: a tonic server on a loopback port that answers
//! Centrifugo's `CentrifugoProxy` methods as a handler says, and records every call (method,
//! metadata and the request's bytes, decoded by the test with `tether_server::proxyproto`).
//!
//! Messages pass through as bytes (a codec that neither encodes nor decodes), so one handler
//! serves every method. `SubscribeUnidirectional` is served as a server stream and
//! `SubscribeBidirectional` as a stream both ways (the handler sees its first message, the
//! `StreamSubscribeRequest` carrying the subscribe request): the handler's answer is the first
//! message back (or its status), and the test drives the rest, and reads what the client
//! sends after its first message, through the stream's [`BackendStream`]
//! ([`GrpcBackend::next_stream`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf as _, BufMut as _, Bytes};
use parking_lot::Mutex;
use prost::Message;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, Context, Poll, Service, http};
use tonic::metadata::MetadataMap;
use tonic::server::{NamedService, ServerStreamingService, StreamingService, UnaryService};
use tonic::{Request, Response, Status, Streaming};

/// One call the backend received.
#[derive(Clone, Debug)]
pub(crate) struct GrpcSeen {
    /// The method's name (`Connect`, `RPC`, …).
    pub(crate) method: String,
    pub(crate) metadata: MetadataMap,
    body: Bytes,
}

impl GrpcSeen {
    /// The request as its message type.
    pub(crate) fn decode<M: Message + Default>(&self) -> M {
        M::decode(self.body.clone()).expect("a request of the method's type")
    }
}

/// What the backend answers.
pub(crate) enum GrpcAnswer {
    /// This response message.
    Message(Bytes),
    /// This status instead of a response.
    Status(Status),
    /// The answer, after a delay.
    Slow(Duration, Box<Self>),
}

impl GrpcAnswer {
    /// `message` as the answer.
    pub(crate) fn of(message: &impl Message) -> Self {
        Self::Message(message.encode_to_vec().into())
    }
}

type Handler = Arc<dyn Fn(&GrpcSeen) -> GrpcAnswer + Send + Sync>;

#[derive(Clone)]
struct State {
    seen: Arc<Mutex<Vec<GrpcSeen>>>,
    handler: Arc<Mutex<Handler>>,
    /// Streams opened and not yet taken by the test.
    streams: Arc<Mutex<Vec<BackendStream>>>,
}

/// The backend's end of one open subscription stream, after its first message.
pub(crate) struct BackendStream {
    tx: tokio::sync::mpsc::UnboundedSender<Result<Bytes, Status>>,
    /// What the client sends after its first message (bidirectional streams only).
    inbound: Option<Streaming<Bytes>>,
}

impl BackendStream {
    /// The next message the client sent on a bidirectional stream, waiting up to `within`:
    /// `None` when the client ended its side (or the stream failed); panics on a
    /// unidirectional stream or when nothing came in time.
    pub(crate) async fn received<M: Message + Default>(&mut self, within: Duration) -> Option<M> {
        let inbound = self.inbound.as_mut().expect("a bidirectional stream");
        let next = tokio::time::timeout(within, inbound.message())
            .await
            .expect("the client sent nothing on the stream in time");
        next.ok()
            .flatten()
            .map(|bytes| M::decode(bytes).expect("a message of the stream's type"))
    }

    /// Sends `message`; false once the stream is gone.
    pub(crate) fn send(&self, message: &impl Message) -> bool {
        self.tx.send(Ok(message.encode_to_vec().into())).is_ok()
    }

    /// Ends the stream with `status`.
    pub(crate) fn fail(self, status: Status) {
        let _ = self.tx.send(Err(status));
    }

    /// Ends the stream with OK (EOF).
    pub(crate) fn end(self) {}

    /// Waits until the client has cancelled the stream (or `within` passes): true when it
    /// did.
    pub(crate) async fn cancelled(&self, within: Duration) -> bool {
        tokio::time::timeout(within, self.tx.closed()).await.is_ok()
    }
}

/// A running gRPC backend; stopped when dropped.
pub(crate) struct GrpcBackend {
    pub(crate) addr: SocketAddr,
    state: State,
    task: tokio::task::JoinHandle<()>,
}

impl GrpcBackend {
    /// A plaintext backend.
    pub(crate) async fn start(
        handler: impl Fn(&GrpcSeen) -> GrpcAnswer + Send + Sync + 'static,
    ) -> Self {
        Self::serve(None, handler).await
    }

    /// A backend speaking TLS with `identity` (see [`super::tls::TestCa`]).
    pub(crate) async fn start_tls(
        identity: &super::tls::Identity,
        handler: impl Fn(&GrpcSeen) -> GrpcAnswer + Send + Sync + 'static,
    ) -> Self {
        Self::serve(Some(identity), handler).await
    }

    async fn serve(
        identity: Option<&super::tls::Identity>,
        handler: impl Fn(&GrpcSeen) -> GrpcAnswer + Send + Sync + 'static,
    ) -> Self {
        let state = State {
            seen: Arc::default(),
            handler: Arc::new(Mutex::new(Arc::new(handler))),
            streams: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind grpc backend");
        let addr = listener.local_addr().expect("grpc backend addr");
        let service = ProxyService(state.clone());
        let task = match identity {
            None => {
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                tokio::spawn(async move {
                    let _ = tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming(incoming)
                        .await;
                })
            }
            Some(identity) => {
                let config = super::tls::TestCa::server_config(identity, None, &[b"h2"]);
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                let incoming = async_stream_of_tls(listener, acceptor);
                tokio::spawn(async move {
                    let _ = tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming(incoming)
                        .await;
                })
            }
        };
        Self { addr, state, task }
    }

    /// `grpc://` and the backend's address.
    pub(crate) fn endpoint(&self) -> String {
        format!("grpc://{}", self.addr)
    }

    /// The calls of `method` so far.
    pub(crate) fn seen(&self, method: &str) -> Vec<GrpcSeen> {
        self.state
            .seen
            .lock()
            .iter()
            .filter(|s| s.method == method)
            .cloned()
            .collect()
    }

    /// The next subscription stream opened (oldest first), waiting up to 5 s.
    pub(crate) async fn next_stream(&self) -> BackendStream {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            {
                let mut streams = self.state.streams.lock();
                if !streams.is_empty() {
                    return streams.remove(0);
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no subscription stream was opened"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Answers with `handler` from now on.
    pub(crate) fn answer_with(
        &self,
        handler: impl Fn(&GrpcSeen) -> GrpcAnswer + Send + Sync + 'static,
    ) {
        *self.state.handler.lock() = Arc::new(handler);
    }
}

impl Drop for GrpcBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The TLS connections of `listener`, handshakes done (failed ones skipped).
fn async_stream_of_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                if let Ok(stream) = acceptor.accept(stream).await {
                    let _ = tx.send(Ok(TlsConn(stream))).await;
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A server-side TLS connection as tonic's server takes it.
struct TlsConn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = ();

    fn connect_info(&self) {}
}

impl tokio::io::AsyncRead for TlsConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The service: every method of `CentrifugoProxy`, through one handler.
#[derive(Clone)]
struct ProxyService(State);

impl NamedService for ProxyService {
    const NAME: &'static str = tether_server::proxyproto::SERVICE;
}

impl Service<http::Request<tonic::body::Body>> for ProxyService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let method = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let call = Method {
            state: self.0.clone(),
            method,
        };
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(PassThrough)
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip);
            match call.method.as_str() {
                "SubscribeUnidirectional" => return Ok(grpc.server_streaming(call, request).await),
                "SubscribeBidirectional" => return Ok(grpc.streaming(call, request).await),
                _ => {}
            }
            Ok(grpc.unary(call, request).await)
        })
    }
}

/// One call of one method.
struct Method {
    state: State,
    method: String,
}

impl UnaryService<Bytes> for Method {
    type Response = Bytes;
    type Future = BoxFuture<Response<Bytes>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let mut answer = self.answer(request);
        Box::pin(async move {
            loop {
                match answer {
                    GrpcAnswer::Message(bytes) => return Ok(Response::new(bytes)),
                    GrpcAnswer::Status(status) => return Err(status),
                    GrpcAnswer::Slow(delay, then) => {
                        tokio::time::sleep(delay).await;
                        answer = *then;
                    }
                }
            }
        })
    }
}

impl Method {
    /// Records the call and asks the handler.
    fn answer(&self, request: Request<Bytes>) -> GrpcAnswer {
        let seen = GrpcSeen {
            method: self.method.clone(),
            metadata: request.metadata().clone(),
            body: request.into_inner(),
        };
        self.state.seen.lock().push(seen.clone());
        let handler = self.state.handler.lock().clone();
        handler(&seen)
    }
}

impl Method {
    /// The first message back on a subscription stream (`answer`, after its delays), and the
    /// stream's [`BackendStream`] left for the test; `inbound` is the client's side of a
    /// bidirectional stream.
    async fn open_stream(
        mut answer: GrpcAnswer,
        streams: Arc<Mutex<Vec<BackendStream>>>,
        inbound: Option<Streaming<Bytes>>,
    ) -> Result<Response<tonic::codegen::BoxStream<Bytes>>, Status> {
        loop {
            match answer {
                GrpcAnswer::Message(first) => {
                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                    streams.lock().push(BackendStream { tx, inbound });
                    let rest = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
                    let stream =
                        tokio_stream::StreamExt::chain(tokio_stream::once(Ok(first)), rest);
                    return Ok(Response::new(Box::pin(stream)));
                }
                GrpcAnswer::Status(status) => return Err(status),
                GrpcAnswer::Slow(delay, then) => {
                    tokio::time::sleep(delay).await;
                    answer = *then;
                }
            }
        }
    }
}

impl ServerStreamingService<Bytes> for Method {
    type Response = Bytes;
    type ResponseStream = tonic::codegen::BoxStream<Bytes>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let answer = self.answer(request);
        Box::pin(Self::open_stream(answer, self.state.streams.clone(), None))
    }
}

impl StreamingService<Bytes> for Method {
    type Response = Bytes;
    type ResponseStream = tonic::codegen::BoxStream<Bytes>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<Bytes>>) -> Self::Future {
        let (metadata, extensions, mut inbound) = request.into_parts();
        let method = Self {
            state: self.state.clone(),
            method: self.method.clone(),
        };
        Box::pin(async move {
            let first = inbound
                .message()
                .await?
                .ok_or_else(|| Status::invalid_argument("no first message"))?;
            let answer = method.answer(Request::from_parts(metadata, extensions, first));
            Self::open_stream(answer, method.state.streams.clone(), Some(inbound)).await
        })
    }
}

/// A codec that hands messages over as their bytes.
#[derive(Clone, Copy, Default)]
struct PassThrough;

impl Codec for PassThrough {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self::Encoder {
        Self
    }

    fn decoder(&mut self) -> Self::Decoder {
        Self
    }
}

impl Encoder for PassThrough {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for PassThrough {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
