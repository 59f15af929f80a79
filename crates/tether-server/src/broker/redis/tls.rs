//! TLS towards Redis: the server, the master found through Sentinel, and the sentinels
//! (`engine.redis.tls`, `engine.redis.sentinel_tls`; Centrifugo's TLS object, turned into
//! PEM bytes by the node).
//!
//! The redis client library does the handshake with rustls: the server's certificate must
//! chain to `root_ca` (the system's roots when unset) and name the host it was reached by;
//! `identity` presents a client certificate (mutual TLS); `insecure` accepts any certificate
//! and skips the name check (for tests). A `rediss://` address uses TLS with the system's
//! roots even without the object.

use std::fmt;

use redis::{
    Client, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo, RedisConnectionInfo,
    RedisError, RedisResult, TlsCertificates,
};

/// TLS settings for connections to Redis, as plain data.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct RedisTls {
    /// PEM of the CA the server's certificate must chain to (`None`: the system's roots).
    pub root_ca: Option<Vec<u8>>,
    /// PEM of a client certificate and of its key (mutual TLS).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// Accept any certificate for any name.
    pub insecure: bool,
}

impl fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTls")
            .field("root_ca", &self.root_ca.as_ref().map(|_| "<pem>"))
            .field("identity", &self.identity.as_ref().map(|_| "<redacted>"))
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl RedisTls {
    /// A client for `host:port` over TLS, with `redis` settings (user, password, db).
    pub(crate) fn client(
        &self,
        host: &str,
        port: u16,
        redis: RedisConnectionInfo,
    ) -> RedisResult<Client> {
        let info = ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: self.insecure,
            tls_params: None,
        }
        .into_connection_info()?
        .set_redis_settings(redis);
        self.build(info)
    }

    /// A client for a `redis://` or `rediss://` URL, over TLS whatever its scheme.
    pub(super) fn client_for_url(&self, url: &str) -> RedisResult<Client> {
        let info = url.into_connection_info()?;
        let (host, port) = match info.addr() {
            ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                (host.clone(), *port)
            }
            _ => {
                return Err(RedisError::from((
                    ErrorKind::InvalidClientConfig,
                    "TLS needs a host and port, not a unix socket",
                )));
            }
        };
        self.client(&host, port, info.redis_settings().clone())
    }

    /// The certificates the library takes for a cluster (`ClusterClientBuilder::certs`).
    pub(super) fn certificates(&self) -> TlsCertificates {
        TlsCertificates {
            client_tls: self
                .identity
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.root_ca.clone(),
        }
    }

    fn build(&self, info: ConnectionInfo) -> RedisResult<Client> {
        Client::build_with_tls(info, self.certificates())
    }
}
