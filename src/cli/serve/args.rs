//! `oprun serve`'s flags ([`ServeArgs`]), how each is read, and what they make: the runner's
//! configuration, the server's limits, TLS, tokens, the browser rules.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::auth::Tokens;
use crate::cli::read_file;
use crate::http::BrowserRules;
use crate::scheduler::RunnerConfig;
use crate::server::{error_chain, ServeLimits};

/// Which store `serve` uses.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreKind {
    /// SQLite in `--data-dir` (durable; the default).
    Sqlite,
    /// Process memory (nothing survives a restart; for tests and benchmarks).
    Memory,
    /// A PostgreSQL database that several nodes may share: its libpq URL.
    Postgres(String),
}

impl std::fmt::Debug for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite => f.write_str("Sqlite"),
            Self::Memory => f.write_str("Memory"),
            // The URL may carry a password.
            Self::Postgres(_) => f.write_str("Postgres(..)"),
        }
    }
}

/// Parses `--store`: `sqlite`, `memory`, or a PostgreSQL URL.
pub fn parse_store(s: &str) -> Result<StoreKind, String> {
    match s {
        "sqlite" => Ok(StoreKind::Sqlite),
        "memory" => Ok(StoreKind::Memory),
        url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(StoreKind::Postgres(url.to_owned()))
        }
        _ => Err(
            "expected `sqlite` (the embedded default), `memory`, or a PostgreSQL URL such as \
             postgres://USER@HOST:5432/DB"
                .to_owned(),
        ),
    }
}

/// Commit durability of the SQLite store.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyncMode {
    /// Survives power loss.
    Full,
    /// Survives a process crash (`kill -9`), not power loss.
    Normal,
}

/// `oprun serve` settings. Every flag also reads an `OPRUN_*` environment variable.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on: gRPC, REST/JSON, server-sent events, the dashboard, /metrics,
    /// /healthz, /readyz and /openapi.json, all on this one port (port 0 picks a free port).
    #[arg(long, env = "OPRUN_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: String,
    /// A second address serving the same as --listen (for a separate HTTP port, e.g. one a
    /// proxy or a firewall treats apart; port 0 picks a free port). Default: none.
    #[arg(long, env = "OPRUN_HTTP_LISTEN", default_value = "")]
    pub http_listen: String,
    /// Export every call's and every operation's span over OTLP/gRPC to this collector, e.g.
    /// `http://127.0.0.1:4317` (spans join the trace of the caller's `traceparent`). The
    /// standard OTEL_EXPORTER_OTLP_ENDPOINT (or _TRACES_ENDPOINT) turns it on too; default:
    /// off.
    #[arg(long, env = "OPRUN_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Append the log to this file instead of writing it to stderr (an error that stops the
    /// server at start is written to stderr as well).
    #[arg(long, env = "OPRUN_LOG_FILE")]
    pub log_file: Option<PathBuf>,
    /// Another origin whose web pages may call the HTTP listener from a browser
    /// (`https://app.example.com`; repeatable). Without it, only the server's own pages (the
    /// dashboard) may: a page on another site is refused.
    #[arg(
        long = "http-allowed-origin",
        env = "OPRUN_HTTP_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub http_allowed_origins: Vec<String>,
    /// A host name the HTTP listener answers to besides `localhost` and IP addresses
    /// (repeatable). Given, names are checked on any listener; on a loopback one they always
    /// are (a page that points its own name at 127.0.0.1 is refused).
    #[arg(
        long = "http-allowed-host",
        env = "OPRUN_HTTP_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub http_allowed_hosts: Vec<String>,
    /// Where the embedded store lives.
    #[arg(long, env = "OPRUN_DATA_DIR", default_value = "./oprun-data")]
    pub data_dir: PathBuf,
    /// Root directory for the snapshot kind's paths (default: `<data-dir>/snapshots`).
    #[arg(long, env = "OPRUN_SNAPSHOT_ROOT")]
    pub snapshot_root: Option<PathBuf>,
    /// Store backend: `sqlite` (embedded, in --data-dir), `memory`, or a PostgreSQL URL
    /// (`postgres://USER@HOST:PORT/DB`, libpq syntax) that several nodes share.
    #[arg(long, env = "OPRUN_STORE", default_value = "sqlite", value_parser = parse_store)]
    pub store: StoreKind,
    /// On a PostgreSQL store: the most operations running at once over all nodes (each node
    /// also keeps its own --max-running). Per-kind limits hold over all nodes there anyway.
    #[arg(long, env = "OPRUN_CLUSTER_MAX_RUNNING")]
    pub cluster_max_running: Option<usize>,
    /// This node's name, as operations' `node` shows it (default: the host name and a short
    /// random suffix, kept in the data directory for the embedded store so that it stays the
    /// same across restarts; a fresh one per start on a shared store).
    #[arg(long, env = "OPRUN_NODE_ID")]
    pub node_id: Option<String>,
    /// How long this node's hold on what it runs lasts without a renewal (renewed every third
    /// of it); after it, other nodes take the work over.
    #[arg(long, env = "OPRUN_LEASE", default_value = "30s", value_parser = parse_positive_duration)]
    pub lease: Duration,
    /// SQLite commit durability.
    #[arg(long, env = "OPRUN_SYNC", value_enum, default_value = "full")]
    pub sync: SyncMode,
    /// Most operations running at once.
    #[arg(long, env = "OPRUN_MAX_RUNNING", default_value_t = 64)]
    pub max_running: usize,
    /// Per-kind limit, `KIND=N` (repeatable; overrides what a kind declares).
    #[arg(long = "kind-limit", env = "OPRUN_KIND_LIMITS", value_delimiter = ',', value_parser = parse_kind_limit)]
    pub kind_limits: Vec<(String, usize)>,
    /// Per-kind limit per concurrency key, `KIND=N` (repeatable; overrides what a kind
    /// declares): at most N operations of the kind with one `concurrency_key` run at once,
    /// over every node (set the same on each).
    #[arg(long = "kind-key-limit", env = "OPRUN_KIND_KEY_LIMITS", value_delimiter = ',', value_parser = parse_kind_limit)]
    pub kind_key_limits: Vec<(String, usize)>,
    /// Per-kind start rate, `KIND=N/PERIOD` (e.g. `sleep=100/1s`, `email=600/1m`), or per
    /// concurrency key with `/key` (`export=10/1h/key`); repeatable, one per kind (the last
    /// given wins). Held over
    /// every node (set the same on each): work over the rate waits QUEUED, never refused.
    #[arg(long = "kind-rate", env = "OPRUN_KIND_RATES", value_delimiter = ',', value_parser = parse_kind_rate)]
    pub kind_rates: Vec<(String, crate::store::Rate)>,
    /// How long a worker may ignore a cancel before it is aborted.
    #[arg(long, env = "OPRUN_CANCEL_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub cancel_grace: Duration,
    /// How long shutdown waits for running workers.
    #[arg(long, env = "OPRUN_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// The longest a WaitOperation call waits.
    #[arg(long, env = "OPRUN_MAX_WAIT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub max_wait: Duration,
    /// Least time between two progress writes of one operation.
    #[arg(long, env = "OPRUN_PROGRESS_INTERVAL", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub progress_interval: Duration,
    /// Most operations waiting at once (queued, delayed or backing off), over all kinds (and,
    /// on a PostgreSQL store, over all nodes: each counts the store's queue twice a second).
    #[arg(long, env = "OPRUN_MAX_QUEUED", default_value_t = 100_000)]
    pub max_queued: usize,
    /// How long SubmitTask waits for room in a full queue before it answers
    /// RESOURCE_EXHAUSTED (a client faster than the work is slowed to its pace; 0: refuse at
    /// once).
    #[arg(long, env = "OPRUN_QUEUE_FULL_WAIT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub queue_full_wait: Duration,
    /// Largest accepted input message, in bytes.
    #[arg(long, env = "OPRUN_MAX_INPUT_BYTES", default_value_t = 1 << 20)]
    pub max_input_bytes: usize,
    /// How long finished operations are kept.
    #[arg(long, env = "OPRUN_RETENTION", default_value = "30days", value_parser = humantime::parse_duration)]
    pub retention: Duration,
    /// Most finished operations kept (the oldest are removed first).
    #[arg(long, env = "OPRUN_MAX_RETAINED")]
    pub max_retained: Option<usize>,
    /// Largest size of the SQLite file (bytes, or with a unit: 512MiB, 2GiB); past it writes
    /// fail as on a full disk.
    #[arg(long, env = "OPRUN_MAX_DB_SIZE", value_parser = parse_bytes)]
    pub max_db_size: Option<u64>,
    /// Bound on the SQLite write-ahead log file (bytes, or with a unit: 64MiB).
    #[arg(long, env = "OPRUN_WAL_LIMIT", default_value = "64MiB", value_parser = parse_bytes)]
    pub wal_limit: u64,
    /// Connections open at once; past it, new ones wait until one closes.
    #[arg(long, env = "OPRUN_MAX_CONNECTIONS", default_value_t = ServeLimits::default().max_connections)]
    pub max_connections: usize,
    /// Calls in flight on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
    #[arg(long, env = "OPRUN_MAX_STREAMS_PER_CONNECTION", default_value_t = ServeLimits::default().max_streams_per_connection)]
    pub max_streams_per_connection: u32,
    /// Bytes of responses clients have not read yet, over all connections (bytes, or with a
    /// unit); a response that does not fit is answered RESOURCE_EXHAUSTED.
    #[arg(long, env = "OPRUN_MAX_UNREAD_RESPONSE_BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub max_unread_response_bytes: u64,
    /// How often an HTTP/2 ping checks that a connection's peer is alive.
    #[arg(long, env = "OPRUN_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_positive_duration)]
    pub keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered before the connection is closed.
    #[arg(long, env = "OPRUN_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub keepalive_timeout: Duration,
    /// How long a new connection may take to send its first bytes (and finish TLS); on the
    /// HTTP listener, its whole first request's headers.
    #[arg(long, env = "OPRUN_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub handshake_timeout: Duration,
    /// How long a connection may stay open with no call in flight.
    #[arg(long, env = "OPRUN_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_positive_duration)]
    pub idle_timeout: Duration,
    /// How long a response may wait for a client that does not read it before its connection
    /// is closed.
    #[arg(long, env = "OPRUN_UNREAD_TIMEOUT", default_value = "60s", value_parser = parse_positive_duration)]
    pub unread_timeout: Duration,
    /// On the HTTP listener: how long a request's body may take to arrive after its headers
    /// (a connection's first headers must come within --handshake-timeout, later ones within
    /// --idle-timeout).
    #[arg(long, env = "OPRUN_READ_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub read_timeout: Duration,
    /// PEM certificate chain to serve TLS with (needs --tls-key).
    #[arg(long, env = "OPRUN_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "OPRUN_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s) for mutual TLS: clients must present a certificate it signed.
    #[arg(long, env = "OPRUN_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Bearer tokens file: `sha256:<hex> <role> [label]` per line (see `oprun token new`).
    /// Every call then needs a token whose role allows it.
    #[arg(long, env = "OPRUN_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Serve without authentication on a non-loopback address. Without it, `serve` refuses
    /// to listen beyond loopback unless --tokens-file is given.
    #[arg(long, env = "OPRUN_INSECURE_NO_AUTH", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub insecure_no_auth: bool,
}

impl ServeArgs {
    /// The snapshot root (`--snapshot-root`, or `<data-dir>/snapshots`).
    pub fn snapshot_root(&self) -> PathBuf {
        self.snapshot_root
            .clone()
            .unwrap_or_else(|| self.data_dir.join("snapshots"))
    }

    /// The runner configuration these flags describe.
    pub fn runner_config(&self) -> RunnerConfig {
        RunnerConfig {
            max_running: self.max_running.max(1),
            kind_limits: self.kind_limits.iter().cloned().collect(),
            kind_key_limits: self.kind_key_limits.iter().cloned().collect(),
            kind_rates: self
                .kind_rates
                .iter()
                .fold(Vec::new(), |mut rates, (kind, rate)| {
                    // The last given for a kind wins, as with --kind-limit.
                    rates.retain(|(k, _)| k != kind);
                    rates.push((kind.clone(), *rate));
                    rates
                }),
            max_queued: self.max_queued,
            queue_full_wait: self.queue_full_wait,
            max_input_bytes: self.max_input_bytes,
            cancel_grace: self.cancel_grace,
            progress_interval: self.progress_interval,
            max_wait: self.max_wait,
            retention: self.retention,
            max_retained: self.max_retained,
            node: self
                .node_id
                .clone()
                .unwrap_or_else(crate::scheduler::default_node),
            lease: self.lease,
            cluster_max_running: self.cluster_max_running,
            ..RunnerConfig::default()
        }
    }

    /// The connection limits these flags describe.
    pub fn limits(&self) -> ServeLimits {
        ServeLimits {
            max_connections: self.max_connections.max(1),
            max_streams_per_connection: self.max_streams_per_connection.max(1),
            max_unread_response_bytes: usize::try_from(self.max_unread_response_bytes)
                .unwrap_or(usize::MAX),
            keepalive_interval: self.keepalive_interval,
            keepalive_timeout: self.keepalive_timeout,
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.idle_timeout,
            unread_timeout: self.unread_timeout,
            read_timeout: self.read_timeout,
        }
    }

    /// The origins and host names the HTTP listener answers (`--http-allowed-origin`,
    /// `--http-allowed-host`).
    pub fn browser_rules(&self) -> BrowserRules {
        let rules = self
            .http_allowed_origins
            .iter()
            .fold(BrowserRules::new(), |rules, origin| {
                rules.allow_origin(origin)
            });
        if self.http_allowed_hosts.is_empty() {
            rules
        } else {
            rules.only_hosts(&self.http_allowed_hosts)
        }
    }

    /// The TLS settings `--tls-cert`, `--tls-key` and `--tls-client-ca` describe, the files
    /// read once and checked (the key must match the certificate): for the gRPC listener and
    /// for the HTTP one; `None` for plaintext.
    ///
    /// # Errors
    /// A one-line message when only one of cert and key is given, a client CA without them,
    /// or a file is unreadable or not valid PEM.
    pub fn tls(&self) -> Result<Option<(ServerTlsConfig, Arc<rustls::ServerConfig>)>, String> {
        let (cert, key) = match (&self.tls_cert, &self.tls_key) {
            (None, None) if self.tls_client_ca.is_some() => {
                return Err(
                    "--tls-client-ca needs --tls-cert and --tls-key: mutual TLS is TLS \
                            with client certificates"
                        .to_owned(),
                )
            }
            (None, None) => return Ok(None),
            (Some(_), None) => {
                return Err("--tls-cert needs --tls-key, the certificate's private key".to_owned())
            }
            (None, Some(_)) => {
                return Err(
                    "--tls-key needs --tls-cert, the certificate chain for that key".to_owned(),
                )
            }
            (Some(cert), Some(key)) => (cert, key),
        };
        let files = crate::http::TlsFiles {
            cert_pem: read_file("--tls-cert", cert)?,
            key_pem: read_file("--tls-key", key)?,
            client_ca_pem: match &self.tls_client_ca {
                Some(ca) => Some(read_file("--tls-client-ca", ca)?),
                None => None,
            },
        };
        let mut tls =
            ServerTlsConfig::new().identity(Identity::from_pem(&files.cert_pem, &files.key_pem));
        if let Some(ca) = &files.client_ca_pem {
            tls = tls.client_ca_root(Certificate::from_pem(ca));
        }
        // Building a server parses the PEM files and matches the key to the certificate, so
        // a bad file stops start-up here rather than at the first connection.
        tonic::transport::Server::builder()
            .tls_config(tls.clone())
            .map_err(|e| {
                format!(
                    "cannot serve TLS with --tls-cert/--tls-key/--tls-client-ca: {}",
                    error_chain(&e)
                )
            })?;
        let http = files
            .server_config()
            .map_err(|e| format!("cannot serve HTTP over TLS: {e}"))?;
        Ok(Some((tls, http)))
    }

    /// The tokens of `--tokens-file`, if given.
    ///
    /// # Errors
    /// A one-line message naming the file and, for a malformed line, its number.
    pub fn tokens(&self) -> Result<Option<Arc<Tokens>>, String> {
        let Some(path) = &self.tokens_file else {
            return Ok(None);
        };
        Tokens::load(path)
            .map(|t| Some(Arc::new(t)))
            .map_err(|e| format!("cannot use the tokens file {}: {e}", path.display()))
    }

    /// Refuses to serve without authentication beyond loopback: without `--tokens-file`,
    /// every address `--listen` resolves to must be a loopback one, unless
    /// `--insecure-no-auth` is given.
    ///
    /// # Errors
    /// A one-line message saying what to do.
    pub async fn check_exposure(&self) -> Result<(), String> {
        if self.tokens_file.is_some() {
            if self.insecure_no_auth {
                return Err("--insecure-no-auth contradicts --tokens-file; drop one".to_owned());
            }
            return Ok(());
        }
        let listens = std::iter::once(("--listen", self.listen.as_str()))
            .chain(self.http_addr().map(|a| ("--http-listen", a)));
        for (flag, listen) in listens {
            let addrs: Vec<_> = tokio::net::lookup_host(listen)
                .await
                .map_err(|e| format!("cannot listen on {listen} ({flag}): {e}"))?
                .collect();
            let loopback_only =
                !addrs.is_empty() && addrs.iter().all(|a| a.ip().to_canonical().is_loopback());
            if loopback_only {
                continue;
            }
            if self.insecure_no_auth {
                tracing::warn!(
                    listen,
                    "serving WITHOUT authentication beyond loopback (--insecure-no-auth): \
                     anyone who can reach this address can submit and delete operations"
                );
                continue;
            }
            return Err(format!(
                "refusing to serve {listen} ({flag}) without authentication: it is not a \
                 loopback address. Give --tokens-file FILE (make tokens with `oprun token new \
                 --role ROLE`), listen on 127.0.0.1, or pass --insecure-no-auth to accept \
                 anyone who can reach it"
            ));
        }
        Ok(())
    }

    /// The second listener's address, `None` when there is none (`--http-listen` empty or
    /// `off`).
    pub fn http_addr(&self) -> Option<&str> {
        let addr = self.http_listen.trim();
        (!addr.is_empty() && !addr.eq_ignore_ascii_case("off")).then_some(addr)
    }
}

/// Parses a duration of at least a millisecond and at most ten years, e.g. `30s`, `5m`.
fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    if d < Duration::from_millis(1) || d > Duration::from_secs(10 * 365 * 24 * 3600) {
        return Err(format!(
            "{s:?} is out of range: give at least 1ms and at most 10 years"
        ));
    }
    Ok(d)
}

/// Parses a size: a number of bytes, or a number with a unit (`KiB`, `MiB`, `GiB`, or `KB`,
/// `MB`, `GB` in powers of 1000), e.g. `64MiB`.
pub(crate) fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 1048576, 64MiB or 2GiB"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => {
            return Err(format!(
                "{s:?} has an unknown unit; use B, KiB, MiB, GiB (or KB, MB, GB)"
            ))
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn parse_kind_limit(s: &str) -> Result<(String, usize), String> {
    let (kind, n) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KIND=N"))?;
    let n: usize = n
        .parse()
        .map_err(|_| format!("{n:?} in {s:?} is not a whole number"))?;
    if kind.is_empty() || n == 0 {
        return Err(format!("{s:?}: the kind must be named and N at least 1"));
    }
    Ok((kind.to_owned(), n))
}

/// Reads `KIND=N/PERIOD` or `KIND=N/PERIOD/key`.
fn parse_kind_rate(s: &str) -> Result<(String, crate::store::Rate), String> {
    let usage = || format!("{s:?} is not KIND=N/PERIOD (e.g. sleep=100/1s) or KIND=N/PERIOD/key");
    let (kind, rate) = s.split_once('=').ok_or_else(usage)?;
    let mut parts = rate.split('/');
    let (Some(n), Some(period)) = (parts.next(), parts.next()) else {
        return Err(usage());
    };
    let per_key = match parts.next() {
        None => false,
        Some("key") => true,
        Some(other) => {
            return Err(format!(
                "{s:?}: {other:?} after the period; only `/key` (a rate per concurrency key) \
                 may follow"
            ))
        }
    };
    if parts.next().is_some() || kind.is_empty() {
        return Err(usage());
    }
    let starts: usize = n
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{n:?} in {s:?} is not a whole number of starts, at least 1"))?;
    // `1s`, `1m`, or a bare unit (`s`, `m`, `h`) for one of it.
    let spelled = if period.starts_with(|c: char| c.is_ascii_digit()) {
        period.to_owned()
    } else {
        format!("1{period}")
    };
    let period = humantime::parse_duration(&spelled)
        .ok()
        .filter(|p| !p.is_zero() && *p <= Duration::from_secs(7 * 24 * 3600))
        .ok_or_else(|| {
            format!("{period:?} in {s:?} is not a period from 1ms to 7d, e.g. 1s, 1m or 1h")
        })?;
    Ok((
        kind.to_owned(),
        crate::store::Rate {
            starts,
            period,
            per_key,
        },
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// `--kind-rate` reads `KIND=N/PERIOD` and `/key`, a bare unit as one of it, and names
    /// what is wrong otherwise.
    #[test]
    fn kind_rates_are_read_or_refused_with_the_reason() {
        use crate::store::Rate;
        let rate = |starts, secs, per_key| Rate {
            starts,
            period: Duration::from_secs(secs),
            per_key,
        };
        for (spec, kind, want) in [
            ("sleep=100/1s", "sleep", rate(100, 1, false)),
            ("email=600/m", "email", rate(600, 60, false)),
            ("export=10/1h/key", "export", rate(10, 3600, true)),
        ] {
            assert_eq!(super::parse_kind_rate(spec), Ok((kind.to_owned(), want)));
        }
        for (spec, says) in [
            ("sleep", "is not KIND=N/PERIOD"),
            ("sleep=5", "is not KIND=N/PERIOD"),
            ("=5/1s", "is not KIND=N/PERIOD"),
            ("sleep=0/1s", "at least 1"),
            ("sleep=x/1s", "not a whole number"),
            ("sleep=5/0s", "not a period"),
            ("sleep=5/30d", "not a period"),
            ("sleep=5/1s/each", "only `/key`"),
        ] {
            let err = super::parse_kind_rate(spec).expect_err(spec);
            assert!(err.contains(says), "{spec}: {err}");
        }
    }
}
