//! The HTTP side of the proxy: one POST of a JSON body, answered by a status and a body.
//!
//! A pooled keep-alive client (up to 255 idle connections per backend host, as Centrifugo's
//! client keeps) serves every plain `http://` proxy of the node; `https://` proxies share one
//! per distinct `http.tls` object (see [`super::tls`]).

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::Request;
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;

/// An HTTP client for proxy calls.
pub(crate) type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// How a client's connections speak TLS.
#[derive(Debug)]
pub(crate) enum Tls {
    /// Plain `http://` only.
    Off,
    /// `https://` with this configuration, checking the certificate against the server name
    /// when given instead of the endpoint's host.
    On(Box<ClientConfig>, Option<ServerName<'static>>),
}

/// A pooled client: idle connections are kept per host and reused.
pub(crate) fn client(tls: Tls) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    // The connector, not the HTTP one, decides the scheme.
    connector.enforce_http(false);
    let connector = match tls {
        // The TLS side of this connector is never used: it serves http:// endpoints only,
        // so it needs no roots.
        Tls::Off => HttpsConnectorBuilder::new()
            .with_tls_config(empty_config())
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector),
        Tls::On(config, server_name) => {
            let builder = HttpsConnectorBuilder::new()
                .with_tls_config(*config)
                .https_only();
            let builder = match server_name {
                Some(name) => builder.with_server_name_resolver(FixedServerNameResolver::new(name)),
                None => builder,
            };
            builder.enable_http1().wrap_connector(connector)
        }
    };
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
        .build(connector)
}

/// A TLS configuration that trusts nothing, for a connector that never does TLS.
fn empty_config() -> ClientConfig {
    ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    // The ring provider supports the default protocol versions: this cannot fail.
    .expect("ring supports TLS 1.2 and 1.3")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth()
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
    body: impl Into<Bytes>,
) -> Result<(u16, Bytes), HttpError> {
    let mut request = Request::post(uri.clone()).body(Full::new(body.into()))?;
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
