//! The backend proxy's configuration: Centrifugo v6's keys, shapes and defaults.
//!
//! A proxy hands a client event (connect, refresh, subscribe, publish, sub refresh, RPC, a
//! streaming subscribe) to the application backend over HTTP or gRPC. Every place that
//! declares one uses the same [`ProxyConfig`] object: `client.proxy.connect|refresh` (with
//! `enabled`), `channel.proxy.<event>` and `rpc.proxy` (the proxies called `"default"`), and the
//! top-level `proxies` list of named ones. Namespaces pick a proxy per event by name.
//!
//! This file holds the shapes and their defaults; validation and the lookups
//! ([`super::Config::proxy`], [`super::Config::rpc_namespace_for`]) live with the rest of
//! [`super::Config`]. `docs/proxy.md` describes the keys; they are Centrifugo's
//! (<https://centrifugal.dev/docs/server/proxy>).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::redacted;

/// The proxy object (compat-proxy §2.1), the same shape everywhere.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyConfig {
    /// `http://` or `https://` selects the HTTP proxy (one JSON POST per event); anything else
    /// is a gRPC target (`grpc://host:port`, the prefix stripped, or a bare `host:port`).
    /// Required whenever the proxy is used.
    pub endpoint: String,
    /// Limit on one proxy call, connecting included. A call that exceeds it is an unexpected
    /// error (compat-proxy §5). Must be greater than 0.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Request headers of the client's transport forwarded to the backend (names compared
    /// case-insensitively). Nothing is forwarded unless listed.
    pub http_headers: Vec<String>,
    /// Incoming gRPC metadata keys forwarded to the backend (uni_grpc clients only).
    pub grpc_metadata: Vec<String>,
    /// Names from the client's emulated `headers` map (connect request) forwarded as headers.
    pub emulated_headers: Vec<String>,
    /// Send `b64data` instead of raw JSON `data`, with `encoding` = `"binary"`.
    pub binary_encoding: bool,
    /// Add the connection's `meta` to every request except connect.
    pub include_connection_meta: bool,
    /// Options used when the endpoint is HTTP.
    pub http: ProxyHttpConfig,
    /// Options used when the endpoint is gRPC.
    pub grpc: ProxyGrpcConfig,
}

/// HTTP-only proxy options (`<proxy>.http`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyHttpConfig {
    /// Client TLS towards an `https://` endpoint.
    pub tls: TlsClientConfig,
    /// Headers added to every request, with the lowest priority: forwarded headers of the
    /// same name replace them.
    pub static_headers: BTreeMap<String, String>,
    /// HTTP statuses answered as a protocol error or disconnect instead of an unexpected
    /// error; the first entry with the status wins (compat-proxy §5.3).
    pub status_to_code_transforms: Vec<StatusToCodeTransform>,
}

/// One `http.status_to_code_transforms` entry: a status and exactly one outcome.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatusToCodeTransform {
    /// The HTTP status this entry matches; required.
    pub status_code: u16,
    /// The error the client gets (used when `code` > 0).
    pub to_error: ProxyErrorConfig,
    /// The disconnect the client gets (used when `code` > 0 and `to_error` is unset).
    pub to_disconnect: ProxyDisconnectConfig,
}

/// A protocol error as a proxy result (`to_error`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyErrorConfig {
    /// Error code sent to the client; 0 means "no error".
    pub code: u32,
    /// Error message sent to the client.
    pub message: String,
    /// Marks the error temporary, so SDKs retry.
    pub temporary: bool,
}

/// A disconnect as a proxy result (`to_disconnect`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyDisconnectConfig {
    /// Close code; 0 means "no disconnect".
    pub code: u32,
    /// Close reason; ASCII only, as it travels in a WebSocket close frame.
    pub reason: String,
}

/// gRPC-only proxy options (`<proxy>.grpc`).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyGrpcConfig {
    /// Transport TLS; off means plaintext (insecure credentials).
    pub tls: TlsClientConfig,
    /// Metadata key added to every call as per-RPC credentials; empty = none.
    pub credentials_key: String,
    /// Value for `credentials_key`. A secret: kept out of `Debug` output.
    pub credentials_value: String,
    /// Compress outgoing calls with gzip.
    pub compression: bool,
    /// Metadata added to every call, with the lowest priority.
    pub static_metadata: BTreeMap<String, String>,
}

/// Centrifugo's TLS object as a client uses it (`http.tls`, `grpc.tls`).
///
/// Centrifugo v6 (`internal/configtypes/tls.go`) has `enabled`, `cert_pem`, `key_pem`,
/// `server_ca_pem`, `client_ca_pem`, `insecure_skip_verify` and `server_name`, and each
/// `*_pem` value may be the PEM text itself, base64-encoded PEM, or a path to a PEM file
/// (tried in that order). The `*_pem_file` keys are the v5 unified TLS object's spelling,
/// kept so such configs load; when both are set the file wins, as it did in v5.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsClientConfig {
    /// Use TLS; every other key is ignored while this is off.
    pub enabled: bool,
    /// Client certificate (mutual TLS): PEM, base64 PEM or a path. Needs `key_pem`.
    pub cert_pem: String,
    /// Path to the client certificate's PEM file (v5 spelling).
    pub cert_pem_file: String,
    /// Client private key: PEM, base64 PEM or a path. A secret: kept out of `Debug` output.
    pub key_pem: String,
    /// Path to the client private key's PEM file (v5 spelling).
    pub key_pem_file: String,
    /// Root CA that the server's certificate must chain to, instead of the system roots:
    /// PEM, base64 PEM or a path.
    pub server_ca_pem: String,
    /// Path to the server root CA's PEM file (v5 spelling).
    pub server_ca_pem_file: String,
    /// CA for verifying peers' client certificates. Part of Centrifugo's shared TLS object;
    /// a proxy client has no use for it.
    pub client_ca_pem: String,
    /// Skip verification of the server's certificate. For tests only.
    pub insecure_skip_verify: bool,
    /// Host name the server's certificate must match (and SNI), when it differs from the
    /// endpoint's host.
    pub server_name: String,
}

/// One entry of the top-level `proxies` list: a proxy that namespaces refer to by name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NamedProxy {
    /// Matches `^[-a-zA-Z0-9_.]{2,}$`, unique, and not `"default"` (that name means the
    /// `channel.proxy.<event>` / `rpc.proxy` object).
    #[serde(default)]
    pub name: String,
    /// The proxy object, written inline beside `name`.
    #[serde(flatten)]
    pub proxy: ProxyConfig,
}

/// A proxy that is off unless `enabled` (`client.proxy.connect`, `client.proxy.refresh`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EnabledProxy {
    /// Call the proxy. Connect is then asked about every connection without a token;
    /// refresh makes connection refresh server-side.
    pub enabled: bool,
    /// The proxy object, written inline beside `enabled`.
    #[serde(flatten)]
    pub proxy: ProxyConfig,
}

/// Connection-level proxies (`client.proxy`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientProxyConfig {
    /// Authenticates connections that come without a token.
    pub connect: EnabledProxy,
    /// Extends connections at `expire_at` instead of the client sending a new token.
    pub refresh: EnabledProxy,
}

/// The channel proxies called `"default"` (`channel.proxy`); namespaces turn them on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChannelProxyConfig {
    /// Asked whether a client may subscribe (`subscribe_proxy_enabled`).
    pub subscribe: ProxyConfig,
    /// Asked whether (and what) a client may publish (`publish_proxy_enabled`).
    pub publish: ProxyConfig,
    /// Extends subscriptions at their `expire_at` (`sub_refresh_proxy_enabled`).
    pub sub_refresh: ProxyConfig,
    /// Streams a subscription's publications from the backend; gRPC only
    /// (`subscribe_stream_proxy_enabled`).
    pub subscribe_stream: ProxyConfig,
}

/// Client RPC (`rpc.*`): where `rpc` commands go.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RpcConfig {
    /// The RPC proxy called `"default"`.
    pub proxy: ProxyConfig,
    /// Options of methods without a namespace.
    pub without_namespace: RpcNamespaceOptions,
    /// Named option sets; a method `ns<boundary>rest` uses the one named `ns`.
    pub namespaces: Vec<RpcNamespace>,
    /// Separates a namespace from the rest of a method name; empty = methods have no
    /// namespace.
    pub namespace_boundary: String,
    /// A built-in `ping` method answered without the proxy.
    pub ping: RpcPingConfig,
}

/// RPC options of one namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RpcNamespaceOptions {
    /// Send the namespace's methods to a proxy (else error 108).
    pub proxy_enabled: bool,
    /// `"default"` (`rpc.proxy`) or the name of a `proxies` entry.
    pub proxy_name: String,
}

/// One named set of RPC options (`rpc.namespaces[]`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RpcNamespace {
    /// Name, matching `^[-a-zA-Z0-9_.]{2,}$`, unique.
    #[serde(default)]
    pub name: String,
    /// The options, written inline beside `name`.
    #[serde(flatten)]
    pub options: RpcNamespaceOptions,
}

/// The built-in RPC ping (`rpc.ping`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RpcPingConfig {
    /// Answer `method` locally, before any proxy, with an empty result.
    pub enabled: bool,
    /// The method name answered.
    pub method: String,
}

/// The events a proxy serves, for [`super::Config::proxy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProxyEvent {
    /// A client connects without a token (`client.proxy.connect`).
    Connect,
    /// A connection reaches `expire_at` (`client.proxy.refresh`).
    Refresh,
    /// A client subscribes (`channel.proxy.subscribe` or a named proxy).
    Subscribe,
    /// A client publishes (`channel.proxy.publish` or a named proxy).
    Publish,
    /// A subscription reaches `expire_at` (`channel.proxy.sub_refresh` or a named proxy).
    SubRefresh,
    /// A client subscribes in a streaming namespace (`channel.proxy.subscribe_stream` or a
    /// named proxy).
    SubscribeStream,
    /// A client calls an RPC method (`rpc.proxy` or a named proxy).
    Rpc,
}

// === impl ProxyEvent ===

impl ProxyEvent {
    /// The channel events, which namespaces enable by name.
    pub const CHANNEL: [Self; 4] = [
        Self::Subscribe,
        Self::Publish,
        Self::SubRefresh,
        Self::SubscribeStream,
    ];

    /// The event's name in config keys and messages: `connect`, `sub_refresh`, `rpc`, ...
    pub fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Refresh => "refresh",
            Self::Subscribe => "subscribe",
            Self::Publish => "publish",
            Self::SubRefresh => "sub_refresh",
            Self::SubscribeStream => "subscribe_stream",
            Self::Rpc => "rpc",
        }
    }
}

impl fmt::Display for ProxyEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// === impl ProxyConfig ===

impl ProxyConfig {
    /// True when the endpoint selects the HTTP proxy (`http://` or `https://`); otherwise
    /// the endpoint is a gRPC target.
    pub fn is_http(&self) -> bool {
        let endpoint = self.endpoint.as_bytes();
        ["http://", "https://"].iter().any(|scheme| {
            endpoint.len() >= scheme.len()
                && endpoint[..scheme.len()].eq_ignore_ascii_case(scheme.as_bytes())
        })
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            // Centrifugo's default: the backend answers a connect or subscribe while a
            // person waits, so a slow answer is as bad as none.
            timeout: Duration::from_secs(1),
            http_headers: Vec::new(),
            grpc_metadata: Vec::new(),
            emulated_headers: Vec::new(),
            binary_encoding: false,
            include_connection_meta: false,
            http: ProxyHttpConfig::default(),
            grpc: ProxyGrpcConfig::default(),
        }
    }
}

// === impl RpcConfig ===

impl Default for RpcConfig {
    fn default() -> Self {
        Self {
            proxy: ProxyConfig::default(),
            without_namespace: RpcNamespaceOptions::default(),
            namespaces: Vec::new(),
            // Centrifugo's default, the same as channels'.
            namespace_boundary: ":".to_owned(),
            ping: RpcPingConfig::default(),
        }
    }
}

impl Default for RpcNamespaceOptions {
    fn default() -> Self {
        Self {
            proxy_enabled: false,
            proxy_name: DEFAULT_PROXY_NAME.to_owned(),
        }
    }
}

impl Default for RpcPingConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            // Centrifugo's default.
            method: "ping".to_owned(),
        }
    }
}

// === impl ProxyGrpcConfig ===

// The credentials value stays out of logs.
impl fmt::Debug for ProxyGrpcConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyGrpcConfig")
            .field("tls", &self.tls)
            .field("credentials_key", &self.credentials_key)
            .field("credentials_value", &redacted(&self.credentials_value))
            .field("compression", &self.compression)
            .field("static_metadata", &self.static_metadata)
            .finish()
    }
}

// === impl TlsClientConfig ===

// The private key stays out of logs (a path to it is not secret, but it cannot be told apart
// from inline PEM without parsing, so it is hidden too).
/// A `*_pem` value of a TLS object that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{key}: not PEM, not base64 PEM, and not a readable file: {reason}")]
pub struct PemError {
    /// The key holding the value (`server_ca_pem`, `cert_pem`, `key_pem`).
    pub key: &'static str,
    /// Why the file could not be read.
    pub reason: String,
}

impl TlsClientConfig {
    /// The root CA's PEM bytes (`server_ca_pem_file`, else `server_ca_pem`), if set.
    pub fn server_ca_pem_bytes(&self) -> Result<Option<Vec<u8>>, PemError> {
        pem_value(
            &self.server_ca_pem_file,
            &self.server_ca_pem,
            "server_ca_pem",
        )
    }

    /// The client certificate's PEM bytes (`cert_pem_file`, else `cert_pem`), if set.
    pub fn cert_pem_bytes(&self) -> Result<Option<Vec<u8>>, PemError> {
        pem_value(&self.cert_pem_file, &self.cert_pem, "cert_pem")
    }

    /// The client key's PEM bytes (`key_pem_file`, else `key_pem`), if set.
    pub fn key_pem_bytes(&self) -> Result<Option<Vec<u8>>, PemError> {
        pem_value(&self.key_pem_file, &self.key_pem, "key_pem")
    }
}

/// The PEM bytes of a key: the v5 `*_file` path when set, else the v6 value (PEM, base64 PEM
/// or a path, in that order); `None` when both are empty.
fn pem_value(file: &str, value: &str, key: &'static str) -> Result<Option<Vec<u8>>, PemError> {
    use base64::Engine as _;

    let read = |path: &str| {
        std::fs::read(path).map_err(|error| PemError {
            key,
            reason: error.to_string(),
        })
    };
    if !file.is_empty() {
        return read(file).map(Some);
    }
    if value.is_empty() {
        return Ok(None);
    }
    if looks_like_pem(value.as_bytes()) {
        return Ok(Some(value.as_bytes().to_vec()));
    }
    if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(value.trim())
        && looks_like_pem(&decoded)
    {
        return Ok(Some(decoded));
    }
    read(value).map(Some)
}

fn looks_like_pem(bytes: &[u8]) -> bool {
    const PEM_BEGIN: &[u8] = b"-----BEGIN";
    bytes
        .windows(PEM_BEGIN.len())
        .any(|window| window == PEM_BEGIN)
}

impl fmt::Debug for TlsClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClientConfig")
            .field("enabled", &self.enabled)
            .field("cert_pem", &self.cert_pem)
            .field("cert_pem_file", &self.cert_pem_file)
            .field("key_pem", &redacted(&self.key_pem))
            .field("key_pem_file", &self.key_pem_file)
            .field("server_ca_pem", &self.server_ca_pem)
            .field("server_ca_pem_file", &self.server_ca_pem_file)
            .field("client_ca_pem", &self.client_ca_pem)
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// The proxy name that means "the proxy object at `channel.proxy.<event>` / `rpc.proxy`"
/// rather than a `proxies` entry; reserved.
pub const DEFAULT_PROXY_NAME: &str = "default";
