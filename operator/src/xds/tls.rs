//! TLS for the xDS port: the operator's serving certificate, issued by the mesh CA and
//! renewed in place, so proxies verify the operator against the mesh root they mount.
//!
//! ```text
//! Authority (issuing CA, roots) --issue_server(names)--> CertifiedKey --swap--> resolver
//!   renewed at half-life, and again whenever the roots change (a CA rotation)
//! ```
//!
//! Connections are accepted in `conn.rs`, which runs the handshake with [`XdsTls::config`].

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::identity::Authority;

/// Lifetime of the operator's serving certificate.
pub const SERVING_CERT_TTL: Duration = Duration::from_secs(24 * 3600);

/// The xDS server's TLS side. See the module docs.
pub struct XdsTls {
    names: Vec<String>,
    resolver: Arc<Resolver>,
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for XdsTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsTls")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// Errors setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// No name to put in the certificate.
    #[error("the xDS serving certificate needs at least one name (--xds-name)")]
    NoNames,
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Hands out the current certificate to every handshake.
#[derive(Debug, Default)]
struct Resolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        crate::sync::read(&self.current).clone()
    }
}

impl XdsTls {
    /// TLS for a server known by `names` (DNS names or IP addresses, as proxies dial it).
    pub fn new(names: Vec<String>) -> Result<Arc<XdsTls>, TlsError> {
        if names.is_empty() {
            return Err(TlsError::NoNames);
        }
        let resolver = Arc::new(Resolver::default());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        // gRPC clients require HTTP/2 negotiated by ALPN.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(XdsTls {
            names,
            resolver,
            config: Arc::new(config),
        }))
    }

    /// Whether a certificate is installed (handshakes fail until one is).
    pub fn ready(&self) -> bool {
        crate::sync::read(&self.resolver.current).is_some()
    }

    /// Issues the serving certificate and renews it at half-life and at every change of
    /// the roots in force, until the authority is dropped.
    pub async fn run(self: Arc<Self>, authority: Arc<Authority>) {
        let mut roots = authority.roots();
        loop {
            let renew_in = match authority.issue_server(&self.names, SERVING_CERT_TTL) {
                Some(cert) => match certified_key(&cert.chain_pem, cert.key.pem()) {
                    Ok(key) => {
                        *crate::sync::write(&self.resolver.current) = Some(Arc::new(key));
                        tracing::info!(names = ?self.names, "xDS serving certificate issued");
                        let life = cert
                            .not_after
                            .duration_since(SystemTime::now())
                            .unwrap_or_default();
                        life / 2
                    }
                    Err(err) => {
                        tracing::error!(%err, "cannot load the xDS serving certificate; retrying");
                        Duration::from_secs(10)
                    }
                },
                // No CA yet (or it cannot issue): the roots watch says when there is one.
                None => Duration::from_secs(60),
            };
            tokio::select! {
                _ = tokio::time::sleep(renew_in) => {}
                changed = roots.changed() => if changed.is_err() { return },
            }
        }
    }

    /// The server configuration (for the acceptor).
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }
}

/// A rustls key from a PEM chain and key.
pub fn certified_key(chain_pem: &str, key_pem: &str) -> Result<CertifiedKey, rustls::Error> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| rustls::Error::General(format!("certificate PEM: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| rustls::Error::General(format!("key PEM: {e}")))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)?;
    Ok(CertifiedKey::new(chain, signing))
}
