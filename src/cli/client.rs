//! The client subcommands' connection: the address, TLS, the bearer token, and errors a person
//! can act on.

use std::fmt;
use std::path::PathBuf;

use clap::Args;

use super::read_file;
use crate::client::{Client, ClientError};
use crate::json::JsonCodec;

/// The flags every client subcommand takes, before or after its name (`oprun --addr X list`
/// and `oprun list --addr X` alike).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Connection (client commands and workers)")]
pub(super) struct ClientArgs {
    /// Server address, e.g. 127.0.0.1:50051 (plaintext) or https://host:50051 (TLS, needs
    /// --ca-cert).
    #[arg(
        long,
        global = true,
        env = "OPRUN_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub addr: String,
    /// Bearer token sent as `authorization: Bearer <token>` on every call.
    #[arg(long, global = true, env = "OPRUN_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    token: Option<Secret>,
    /// PEM certificate(s) of the CA that signed the server's certificate (for https://).
    #[arg(long, global = true, env = "OPRUN_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with --client-key).
    #[arg(long, global = true, env = "OPRUN_CLIENT_CERT")]
    client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, global = true, env = "OPRUN_CLIENT_KEY")]
    client_key: Option<PathBuf>,
    /// Print proto3 JSON instead of human output.
    #[arg(long, global = true)]
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

/// The descriptors of the server's kinds, learnt at connection (see [`client`]).
static KIND_FILES: std::sync::OnceLock<Vec<prost_types::FileDescriptorSet>> =
    std::sync::OnceLock::new();

/// The proto3 JSON codec over oprun's messages and the server's kinds' own types.
pub(super) fn codec() -> Result<JsonCodec, String> {
    Ok(JsonCodec::with_files(
        KIND_FILES.get().into_iter().flatten(),
    ))
}

/// A connection to the server that sends the client's token on every call.
pub(super) type Conn = crate::client::Conn;

/// A client of the server `args` names (the library's [`Client`], which the subcommands are
/// built on), with the flags' token and TLS files, that knows the server's kinds' types.
///
/// # Errors
/// One line saying what is wrong with the address, token or TLS flags, or that nothing
/// answers there (with a hint).
pub(super) async fn client(args: &ClientArgs) -> Result<Client, String> {
    let mut builder = Client::builder(args.addr.clone());
    let url = builder.url();
    if let Some(Secret(token)) = &args.token {
        builder = builder.token(token.clone());
    }
    let tls_flags =
        args.ca_cert.is_some() || args.client_cert.is_some() || args.client_key.is_some();
    if url.starts_with("https://") {
        let Some(ca) = &args.ca_cert else {
            return Err(format!(
                "--addr {} is https:// and needs --ca-cert FILE, the PEM certificate of the CA \
                 that signed the server's certificate",
                args.addr
            ));
        };
        builder = builder.ca_certificate(read_file("--ca-cert", ca)?);
        match (&args.client_cert, &args.client_key) {
            (None, None) => {}
            (Some(cert), Some(key)) => {
                builder = builder.identity(
                    read_file("--client-cert", cert)?,
                    read_file("--client-key", key)?,
                );
            }
            (Some(_), None) => return Err("--client-cert needs --client-key".to_owned()),
            (None, Some(_)) => return Err("--client-key needs --client-cert".to_owned()),
        }
    } else if tls_flags {
        return Err(format!(
            "--ca-cert, --client-cert and --client-key are for TLS, but --addr {} is not https://",
            args.addr
        ));
    }
    let client = builder.connect().await.map_err(|e| match e {
        ClientError::Config { message, .. } if message.contains("token") => {
            format!("--token / OPRUN_TOKEN: {message}")
        }
        ClientError::Config { message, .. } => format!("--addr / TLS flags: {message}"),
        other => other.to_string(),
    })?;
    learn_kinds(&client.connection()).await;
    Ok(client)
}

/// [`client`]'s connection, for the stubs.
///
/// # Errors
/// As [`client`].
pub(super) async fn connect(args: &ClientArgs) -> Result<Conn, String> {
    Ok(client(args).await?.connection())
}

/// Learns the server's kinds' own types (the files defining them), so that what is shown as
/// JSON or read from `--input` can be of those types. A server that will not say (an older
/// one, a token that may not list kinds) leaves oprun's own types.
async fn learn_kinds(conn: &Conn) {
    if KIND_FILES.get().is_some() {
        return;
    }
    let asked = crate::proto::oprun::v1::task_service_client::TaskServiceClient::new(conn.clone())
        .list_task_kinds(crate::proto::oprun::v1::ListTaskKindsRequest {
            with_descriptors: true,
        })
        .await;
    let files = asked
        .map(|r| {
            r.into_inner()
                .kinds
                .into_iter()
                .filter_map(|k| k.descriptors)
                .collect()
        })
        .unwrap_or_default();
    let _ = KIND_FILES.set(files);
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
