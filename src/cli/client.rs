//! The client subcommands' connection: the address, TLS, the bearer token, and errors a person
//! can act on.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use super::read_file;
use crate::auth::BearerToken;
use crate::json::JsonCodec;
use crate::server::error_chain;

/// The flags every client subcommand takes.
#[derive(Args, Debug, Clone)]
pub(super) struct ClientArgs {
    /// Server address, e.g. 127.0.0.1:50051 (plaintext) or https://host:50051 (TLS, needs
    /// --ca-cert).
    #[arg(long, env = "OPRUN_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// Bearer token sent as `authorization: Bearer <token>` on every call.
    #[arg(long, env = "OPRUN_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    token: Option<Secret>,
    /// PEM certificate(s) of the CA that signed the server's certificate (for https://).
    #[arg(long, env = "OPRUN_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with --client-key).
    #[arg(long, env = "OPRUN_CLIENT_CERT")]
    client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, env = "OPRUN_CLIENT_KEY")]
    client_key: Option<PathBuf>,
    /// Print proto3 JSON instead of human output.
    #[arg(long)]
    pub json: bool,
}

/// A string that never shows in `Debug` output (the bearer token).
#[derive(Clone)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

fn parse_secret(s: &str) -> Result<Secret, String> {
    Ok(Secret(s.to_owned()))
}

/// The proto3 JSON codec over oprun's messages.
pub(super) fn codec() -> Result<JsonCodec, String> {
    JsonCodec::new().map_err(|e| e.to_string())
}

/// A connection to the server that sends the client's token on every call.
pub(super) type Conn = InterceptedService<Channel, Credentials>;

/// The bearer token, if the client has one.
#[derive(Clone)]
pub(super) struct Credentials(Option<BearerToken>);

impl Interceptor for Credentials {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        match &mut self.0 {
            Some(token) => token.call(request),
            None => Ok(request),
        }
    }
}

impl ClientArgs {
    /// The address with a scheme: `host:port` alone means plaintext `http://`.
    pub(super) fn url(&self) -> String {
        if self.addr.contains("://") {
            self.addr.clone()
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// The TLS settings for an `https://` address.
    fn tls_config(&self) -> Result<ClientTlsConfig, String> {
        let Some(ca) = &self.ca_cert else {
            return Err(format!(
                "--addr {} is https:// and needs --ca-cert FILE, the PEM certificate of the CA \
                 that signed the server's certificate",
                self.addr
            ));
        };
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read_file("--ca-cert", ca)?));
        match (&self.client_cert, &self.client_key) {
            (None, None) => {}
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(
                    read_file("--client-cert", cert)?,
                    read_file("--client-key", key)?,
                ));
            }
            (Some(_), None) => return Err("--client-cert needs --client-key".to_owned()),
            (None, Some(_)) => return Err("--client-key needs --client-cert".to_owned()),
        }
        Ok(tls)
    }
}

/// Connects to the server `client` names.
///
/// # Errors
/// One line saying what is wrong with the address or TLS settings, or that nothing answers
/// there (with a hint).
pub(super) async fn connect(client: &ClientArgs) -> Result<Conn, String> {
    let credentials = match &client.token {
        Some(Secret(token)) => {
            Some(BearerToken::new(token).map_err(|e| format!("--token / OPRUN_TOKEN: {e}"))?)
        }
        None => None,
    };
    let url = client.url();
    let mut endpoint = Channel::from_shared(url.clone())
        .map_err(|e| {
            format!(
                "--addr {:?} is not an address: {e}; give host:port, e.g. 127.0.0.1:50051",
                client.addr
            )
        })?
        .connect_timeout(Duration::from_secs(5));
    if endpoint.uri().scheme_str() == Some("https") {
        endpoint = endpoint
            .tls_config(client.tls_config()?)
            .map_err(|e| format!("TLS settings: {}", error_chain(&e)))?;
    } else if client.ca_cert.is_some()
        || client.client_cert.is_some()
        || client.client_key.is_some()
    {
        return Err(format!(
            "--ca-cert, --client-cert and --client-key are for TLS, but --addr {} is not https://",
            client.addr
        ));
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| cannot_connect(&url, &e))?;
    Ok(InterceptedService::new(channel, Credentials(credentials)))
}

/// One line for a connection that failed: the deepest cause (the OS's words), and a hint.
fn cannot_connect(url: &str, e: &(dyn std::error::Error + 'static)) -> String {
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

/// A failed call on one line: its code, and the server's message.
pub(super) fn status_line(s: tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// `operations/{id}` for a bare id; a full name as it is.
pub(super) fn full_name(name: &str) -> String {
    if name.contains('/') {
        name.to_owned()
    } else {
        format!("operations/{name}")
    }
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
