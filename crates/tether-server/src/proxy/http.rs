//! The HTTP side of the proxy: one POST of a JSON body, answered by a status and a body.
//!
//! One pooled keep-alive client serves every HTTP proxy of the node (up to 255 idle
//! connections per backend host, as Centrifugo's client keeps). Plain `http://` endpoints
//! only for now: `https://` is refused when the config is validated.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::Request;
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The node's HTTP client for proxy calls.
pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A pooled client: idle connections are kept per host and reused.
pub(crate) fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
        .build(connector)
}

/// Why an HTTP exchange did not produce a body.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    /// The request could not be built (a bad header value).
    #[error("bad request: {0}")]
    Request(#[from] hyper::http::Error),
    /// Connecting, sending or receiving failed.
    #[error("{0}")]
    Transport(#[from] hyper_util::client::legacy::Error),
    /// Reading the answer's body failed, or it was larger than [`MAX_ANSWER_BYTES`].
    #[error("reading the answer: {0}")]
    Body(String),
}

/// POSTs `body` as JSON to `uri` with `headers` (its own `Content-Type` wins over any
/// forwarded one) and returns the answer's status and body.
pub(crate) async fn post(
    client: &HttpClient,
    uri: &hyper::Uri,
    headers: HeaderMap,
    body: Vec<u8>,
) -> Result<(u16, Bytes), HttpError> {
    let mut request = Request::post(uri.clone()).body(Full::new(Bytes::from(body)))?;
    *request.headers_mut() = headers;
    request
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let response = client.request(request).await?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|error| HttpError::Body(error.to_string()))?
        .to_bytes();
    Ok((status, body))
}

/// Idle keep-alive connections kept per backend host.
const MAX_IDLE_PER_HOST: usize = 255;
/// Largest answer read from a backend; a larger one is a failed call.
const MAX_ANSWER_BYTES: usize = 16 << 20;
