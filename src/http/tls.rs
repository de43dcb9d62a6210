//! TLS for the HTTP listener: the rustls settings, from the same PEM files as the gRPC
//! listener (optionally mutual), HTTP/2 and HTTP/1.1 by ALPN.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The PEM contents TLS is served with (those of `--tls-cert`, `--tls-key`, `--tls-client-ca`).
#[derive(Clone)]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert_pem: Vec<u8>,
    /// Its private key.
    pub key_pem: Vec<u8>,
    /// CA certificates client certificates must chain to (mutual TLS), if any.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("TlsFiles")
            .field("mutual", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// Why the TLS settings cannot serve HTTP.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpTlsError {
    /// A PEM file holds nothing usable.
    #[error("{what}: {why}")]
    Pem {
        /// Which file.
        what: &'static str,
        /// What is wrong.
        why: String,
    },
    /// rustls refused the settings (e.g. a key that does not match the certificate).
    #[error("the TLS settings were refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA could not be used to verify clients.
    #[error("the client CA cannot verify clients: {0}")]
    ClientCa(String),
}

impl TlsFiles {
    /// The rustls server settings: these files, HTTP/2 and HTTP/1.1 by ALPN.
    ///
    /// # Errors
    /// [`HttpTlsError`] naming the file at fault.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, HttpTlsError> {
        let pem = |what: &'static str, why: String| HttpTlsError::Pem { what, why };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| pem("--tls-cert", e.to_string()))?;
        if certs.is_empty() {
            return Err(pem("--tls-cert", "no certificate in the file".to_owned()));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| pem("--tls-key", e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?;
        let builder = match &self.client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca) {
                    let cert = cert.map_err(|e| pem("--tls-client-ca", e.to_string()))?;
                    roots
                        .add(cert)
                        .map_err(|e| pem("--tls-client-ca", e.to_string()))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| HttpTlsError::ClientCa(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}
