//! How a client connects: [`ClientBuilder`] (TLS, a client certificate, a bearer token,
//! timeouts) and the channel it makes.

use std::sync::Arc;
use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::auth::BearerToken;

use super::{Client, ClientError};

/// The bearer token, if the client has one.
#[derive(Clone)]
pub struct Credentials(Option<BearerToken>);

impl Interceptor for Credentials {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        match &mut self.0 {
            Some(token) => token.call(request),
            None => Ok(request),
        }
    }
}

/// A connection that sends the client's token on every call.
pub type Conn = InterceptedService<Channel, Credentials>;

/// How [`Client`] connects, with consuming setters.
#[derive(Clone)]
pub struct ClientBuilder {
    pub(super) addr: String,
    pub(super) token: Option<String>,
    pub(super) ca: Option<Vec<u8>>,
    pub(super) identity: Option<(Vec<u8>, Vec<u8>)>,
    pub(super) connect_timeout: Duration,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// Sends `authorization: Bearer <token>` on every call.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Trusts the CA whose PEM certificate this is (for an `https://` address).
    pub fn ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(pem.into());
        self
    }

    /// Presents this PEM certificate and key (mutual TLS).
    pub fn identity(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// How long connecting may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The address with a scheme: `host:port` alone means plaintext `http://`.
    pub fn url(&self) -> String {
        if self.addr.contains("://") {
            self.addr.clone()
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// Connects.
    ///
    /// # Errors
    /// [`ClientError::Config`] for a malformed address, token or TLS settings (an `https://`
    /// address needs a CA certificate; TLS settings need `https://`);
    /// [`ClientError::Connect`] when nothing answers.
    pub async fn connect(self) -> Result<Client, ClientError> {
        let credentials = match &self.token {
            Some(token) => Some(BearerToken::new(token).map_err(ClientError::config)?),
            None => None,
        };
        let url = self.url();
        let mut endpoint = Channel::from_shared(url.clone())
            .map_err(|e| ClientError::Config {
                message: format!(
                    "{:?} is not an address: {e}; give host:port, e.g. 127.0.0.1:50051",
                    self.addr
                ),
                source: Some(Arc::new(e)),
            })?
            .connect_timeout(self.connect_timeout);
        if endpoint.uri().scheme_str() == Some("https") {
            let Some(ca) = &self.ca else {
                return Err(ClientError::config(format!(
                    "{} is https:// and needs the PEM certificate of the CA that signed the \
                     server's certificate",
                    self.addr
                )));
            };
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
            if let Some((cert, key)) = &self.identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| ClientError::Config {
                message: format!("TLS settings: {}", crate::server::error_chain(&e)),
                source: Some(Arc::new(e)),
            })?;
        } else if self.ca.is_some() || self.identity.is_some() {
            return Err(ClientError::config(format!(
                "a CA certificate or a client identity is for TLS, but {} is not https://",
                self.addr
            )));
        }
        let channel = endpoint.connect().await.map_err(|e| ClientError::Connect {
            message: cannot_connect(&url, &e),
            source: Some(Arc::new(e)),
        })?;
        Ok(Client {
            conn: InterceptedService::new(channel, Credentials(credentials)),
        })
    }
}

/// One line for a connection that failed: the deepest cause (the OS's words), and a hint.
pub(crate) fn cannot_connect(url: &str, e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let authority = url.split_once("://").map_or(url, |(_, rest)| rest);
    format!(
        "cannot connect to {url}: {cause}; is `oprun serve` running on {authority}? (set the \
         address with --addr or OPRUN_ADDR)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection failure reads as one line with the OS's words once, and a hint.
    #[test]
    fn connection_errors_read_well() {
        let io = std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        );
        let line = cannot_connect("http://127.0.0.1:59999", &io);
        assert_eq!(line.matches("Connection refused").count(), 1, "{line}");
        assert!(
            line.contains("is `oprun serve` running on 127.0.0.1:59999?"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }
}
