//! Client TLS towards a backend: the rustls configuration made from Centrifugo's TLS object
//! (`http.tls`, `grpc.tls`).
//!
//! As in Centrifugo (Go's `crypto/tls` client): the server's certificate chains to
//! `server_ca_pem` when it is set and to the system's roots otherwise, and must name the
//! endpoint's host (or `server_name`, which is also the SNI); `cert_pem` and `key_pem` present
//! a client certificate (mutual TLS); `insecure_skip_verify` accepts any certificate. Each
//! `*_pem` value may be the PEM text, base64-encoded PEM, or a path to a PEM file, tried in
//! that order; the v5 `*_pem_file` keys are paths and win when set. Only the ring provider is
//! used (it is the one the workspace already builds, for NATS).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tracing::warn;

use crate::config::{PemError, TlsClientConfig};

/// Why a TLS object cannot be turned into a client configuration.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    /// A `*_pem` value is neither PEM, base64 PEM, nor a readable file, or holds nothing of
    /// the kind expected.
    #[error("{key}: {reason}")]
    Pem {
        /// The key holding the value.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A `*_pem` value that cannot be read at all.
    #[error(transparent)]
    Read(#[from] PemError),
    /// A client certificate without its key, or a key without its certificate.
    #[error("cert_pem and key_pem must be set together")]
    HalfIdentity,
    /// `server_name` is not a DNS name or an IP address.
    #[error("server_name {0:?} is not a host name")]
    ServerName(String),
    /// rustls refused the certificate, the key or the protocol settings.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

/// The system's root certificates, read at most once per node, and only when some proxy
/// verifies a server against them.
#[derive(Debug, Default)]
pub(crate) struct SystemRoots {
    loaded: Option<Arc<RootCertStore>>,
}

impl SystemRoots {
    fn get(&mut self) -> Arc<RootCertStore> {
        self.loaded
            .get_or_insert_with(|| {
                let found = rustls_native_certs::load_native_certs();
                for error in &found.errors {
                    warn!(%error, "reading the system's root certificates");
                }
                let mut roots = RootCertStore::empty();
                let (_, ignored) = roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    warn!(
                        "no system root certificates: https and TLS gRPC proxies without server_ca_pem will fail to verify their backend"
                    );
                } else if ignored > 0 {
                    warn!(ignored, "unparsable system root certificates skipped");
                }
                Arc::new(roots)
            })
            .clone()
    }
}

/// The rustls client configuration `tls` describes (`tls.enabled` is the caller's business:
/// this is called for the connections that use TLS). ALPN is left to the connector.
pub(crate) fn client_config(
    tls: &TlsClientConfig,
    system_roots: &mut SystemRoots,
) -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SkipVerify(
                provider.signature_verification_algorithms,
            )))
    } else {
        let server_ca = tls.server_ca_pem_bytes()?;
        let roots = match server_ca {
            Some(pem) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates(&pem, "server_ca_pem")? {
                    roots.add(cert)?;
                }
                Arc::new(roots)
            }
            None => system_roots.get(),
        };
        builder.with_root_certificates(roots)
    };
    let cert = tls.cert_pem_bytes()?;
    let key = tls.key_pem_bytes()?;
    let config = match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain = certificates(&cert, "cert_pem")?;
            let key = PrivateKeyDer::from_pem_slice(&key).map_err(|error| TlsError::Pem {
                key: "key_pem",
                reason: format!("no private key: {error}"),
            })?;
            builder.with_client_auth_cert(chain, key)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(TlsError::HalfIdentity),
    };
    Ok(config)
}

/// `server_name` as rustls takes it, when set.
pub(crate) fn server_name(tls: &TlsClientConfig) -> Result<Option<ServerName<'static>>, TlsError> {
    if tls.server_name.is_empty() {
        return Ok(None);
    }
    ServerName::try_from(tls.server_name.clone())
        .map(Some)
        .map_err(|_| TlsError::ServerName(tls.server_name.clone()))
}

/// Every certificate in a PEM value; at least one.
fn certificates(pem: &[u8], key: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Pem {
            key,
            reason: error.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            key,
            reason: "no certificate in it".to_owned(),
        });
    }
    Ok(certs)
}

/// `insecure_skip_verify`: any certificate is accepted, but the handshake's signatures are
/// still checked (they prove the peer holds the key of the certificate it sent).
#[derive(Debug)]
struct SkipVerify(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
