//! TLS and mutual TLS, with certificates made in the test by rcgen: a CA, a server certificate
//! for `localhost` and 127.0.0.1 signed by it, a client certificate signed by it, and a rogue
//! CA with its own client certificate. In-process servers (`serve_with`) answer real tonic
//! clients; the real binary serves `oprun kinds --addr https://…`.

mod common;

use common::binary::{oprun, run_to_exit, BinServer};

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use oprun::proto::oprun::v1::task_service_client::TaskServiceClient;
use oprun::proto::oprun::v1::ListTaskKindsRequest;
use oprun::server::ServeOptions;
use oprun::store::memory::MemoryStore;
use oprun::{Registry, Runner, RunnerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, ServerTlsConfig};

/// PEM files of a small PKI, written into a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, pem: String| fs::write(dir.path().join(name), pem).expect("pem");

        let (ca_pem, ca) = new_ca("oprun test CA");
        write("ca.pem", ca_pem);
        let (rogue_pem, rogue) = new_ca("rogue CA");
        write("rogue-ca.pem", rogue_pem);

        let (cert, key) = leaf(
            &ca,
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        write("server.pem", cert);
        write("server.key", key);
        let (cert, key) = leaf(
            &ca,
            &["client.oprun.test"],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        write("client.pem", cert);
        write("client.key", key);
        let (cert, key) = leaf(
            &rogue,
            &["client.oprun.test"],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        write("rogue-client.pem", cert);
        write("rogue-client.key", key);
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn read(&self, name: &str) -> String {
        fs::read_to_string(self.path(name)).expect("pem file")
    }

    fn identity(&self, name: &str) -> Identity {
        Identity::from_pem(
            self.read(&format!("{name}.pem")),
            self.read(&format!("{name}.key")),
        )
    }

    fn certificate(&self, name: &str) -> Certificate {
        Certificate::from_pem(self.read(name))
    }
}

/// A self-signed CA: its PEM certificate and the issuer that signs with it.
fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::CrlSign,
    ];
    let cert = params.self_signed(&key).expect("self-signed CA");
    (cert.pem(), Issuer::new(params, key))
}

/// An end-entity certificate for `names`, signed by `issuer`: (certificate PEM, key PEM).
fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .expect("params");
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer).expect("signed");
    (cert.pem(), key.serialize_pem())
}

/// An in-process server with the built-in kinds, serving `tls`.
struct TlsServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), oprun::server::ServeError>>>,
}

impl TlsServer {
    async fn start(tls: ServerTlsConfig) -> Self {
        let runner = Runner::start(
            Registry::with_builtins(),
            Arc::new(MemoryStore::new()),
            RunnerConfig::default(),
        )
        .await
        .expect("runner");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(oprun::server::serve_with(
            listener,
            runner,
            async {
                let _ = rx.await;
            },
            ServeOptions::new().grace(Duration::from_secs(5)).tls(tls),
        ));
        Self {
            addr,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("server task").expect("clean stop");
        }
    }

    /// ListTaskKinds over `uri` (with `tls`, if any); `Err` with the reason when the
    /// connection or the call fails. Never waits more than 10 s.
    async fn list_kinds(
        &self,
        uri: String,
        tls: Option<ClientTlsConfig>,
    ) -> Result<Vec<String>, String> {
        let attempt = async {
            let mut endpoint = Channel::from_shared(uri)
                .map_err(|e| e.to_string())?
                .connect_timeout(Duration::from_secs(5));
            if let Some(tls) = tls {
                endpoint = endpoint.tls_config(tls).map_err(|e| format!("{e:?}"))?;
            }
            let channel = endpoint
                .connect()
                .await
                .map_err(|e| format!("connect: {e:?}"))?;
            let kinds = TaskServiceClient::new(channel)
                .list_task_kinds(ListTaskKindsRequest::default())
                .await
                .map_err(|s| format!("call: {:?}: {}", s.code(), s.message()))?
                .into_inner()
                .kinds;
            Ok(kinds.into_iter().map(|k| k.name).collect())
        };
        tokio::time::timeout(Duration::from_secs(10), attempt)
            .await
            .expect("the attempt ends within 10 s instead of hanging")
    }

    fn https(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }
}

/// A TLS server answers a TLS client that trusts its CA (by name `localhost` and by address
/// 127.0.0.1), while a plaintext client and a client trusting only another CA both fail.
#[tokio::test]
async fn tls_serves_tls_clients_only() {
    let pki = Pki::new();
    let server = TlsServer::start(ServerTlsConfig::new().identity(pki.identity("server"))).await;
    let trusting = || ClientTlsConfig::new().ca_certificate(pki.certificate("ca.pem"));

    let kinds = server
        .list_kinds(server.https(), Some(trusting()))
        .await
        .expect("TLS client with the CA");
    assert!(kinds.contains(&"sleep".to_owned()), "{kinds:?}");
    let by_ip = format!("https://127.0.0.1:{}", server.addr.port());
    server
        .list_kinds(by_ip, Some(trusting()))
        .await
        .expect("the certificate also names 127.0.0.1");

    let plaintext = server
        .list_kinds(format!("http://{}", server.addr), None)
        .await;
    assert!(plaintext.is_err(), "plaintext got through: {plaintext:?}");

    let wrong_ca = ClientTlsConfig::new().ca_certificate(pki.certificate("rogue-ca.pem"));
    let untrusted = server.list_kinds(server.https(), Some(wrong_ca)).await;
    assert!(
        untrusted.is_err(),
        "an untrusted server was accepted: {untrusted:?}"
    );
    server.stop().await;
}

/// With a client CA (mutual TLS) the server answers only clients presenting a certificate
/// that CA signed: none, or one signed by another CA, fails; the CA-signed one works.
#[tokio::test]
async fn mutual_tls_requires_a_ca_signed_client_certificate() {
    let pki = Pki::new();
    let server = TlsServer::start(
        ServerTlsConfig::new()
            .identity(pki.identity("server"))
            .client_ca_root(pki.certificate("ca.pem")),
    )
    .await;
    let trusting = || ClientTlsConfig::new().ca_certificate(pki.certificate("ca.pem"));

    let anonymous = server.list_kinds(server.https(), Some(trusting())).await;
    assert!(
        anonymous.is_err(),
        "no client certificate got through: {anonymous:?}"
    );

    let rogue = server
        .list_kinds(
            server.https(),
            Some(trusting().identity(pki.identity("rogue-client"))),
        )
        .await;
    assert!(
        rogue.is_err(),
        "a rogue-signed certificate got through: {rogue:?}"
    );

    let kinds = server
        .list_kinds(
            server.https(),
            Some(trusting().identity(pki.identity("client"))),
        )
        .await
        .expect("CA-signed client certificate");
    assert!(kinds.contains(&"sleep".to_owned()), "{kinds:?}");
    server.stop().await;
}

/// The real binary with `--tls-cert/--tls-key` serves `oprun kinds --addr
/// https://localhost:PORT --ca-cert ca.pem`; the CLI refuses `https://` without `--ca-cert`,
/// and a plaintext `http://` call to the TLS port fails.
#[tokio::test]
async fn binary_serves_tls() {
    let pki = Pki::new();
    let server = BinServer::start(
        pki.dir.path(),
        "127.0.0.1:0",
        &[
            "--tls-cert",
            pki.path("server.pem").to_str().unwrap(),
            "--tls-key",
            pki.path("server.key").to_str().unwrap(),
        ],
        &[],
    );
    let https = format!("https://localhost:{}", server.addr.port());
    let ca = pki.path("ca.pem");
    let out = cli(&["kinds", "--addr", &https, "--ca-cert", ca.to_str().unwrap()]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("sleep"),
        "{out:?}"
    );

    let no_ca = cli(&["kinds", "--addr", &https]).await;
    assert!(!no_ca.status.success());
    assert!(
        String::from_utf8_lossy(&no_ca.stderr).contains("--ca-cert"),
        "{no_ca:?}"
    );

    let plaintext = cli(&["kinds", "--addr", &format!("http://{}", server.addr)]).await;
    assert!(!plaintext.status.success(), "{plaintext:?}");

    // The HTTP listener serves TLS with the same certificate: REST over HTTPS works for a
    // client that trusts the CA, and a plaintext request gets no HTTP answer.
    let http = server.http.expect("an HTTP listener");
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    let ca_pem = fs::read(&ca).expect("ca.pem");
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&ca_pem) {
        roots
            .add(cert.expect("a CA certificate"))
            .expect("add the CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(http).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").expect("name"),
            tcp,
        )
        .await
        .expect("TLS handshake with the HTTP listener");
    let reply = common::http::request_over(tls, "GET", "/v1/taskKinds", &[], None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.contains("\"sleep\""), "{}", reply.body);
    let mut tcp = tokio::net::TcpStream::connect(http).await.expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(b"GET /healthz HTTP/1.0\r\n\r\n")
        .await
        .expect("send");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plaintext answered: {answer:?}"
    );
}

/// The real binary with `--tls-client-ca` (mutual TLS) and a tokens file: `oprun kinds` with
/// a CA-signed `--client-cert/--client-key` and `--token` works; without the client
/// certificate, or without the token, it fails.
#[tokio::test]
async fn binary_serves_mutual_tls_with_tokens() {
    let pki = Pki::new();
    let token = "mtls-token-0123456789abcdefghijklmnopqrstuvwxyz";
    let tokens = pki.path("tokens");
    fs::write(
        &tokens,
        format!("{} reader mtls\n", oprun::auth::token_hash(token)),
    )
    .unwrap();
    let server = BinServer::start(
        pki.dir.path(),
        "127.0.0.1:0",
        &[
            "--tls-cert",
            pki.path("server.pem").to_str().unwrap(),
            "--tls-key",
            pki.path("server.key").to_str().unwrap(),
            "--tls-client-ca",
            pki.path("ca.pem").to_str().unwrap(),
            "--tokens-file",
            tokens.to_str().unwrap(),
        ],
        &[],
    );
    let https = format!("https://localhost:{}", server.addr.port());
    let ca = pki.path("ca.pem");
    let cert = pki.path("client.pem");
    let key = pki.path("client.key");
    let base = ["kinds", "--addr", &https, "--ca-cert", ca.to_str().unwrap()];
    let client_cert = [
        "--client-cert",
        cert.to_str().unwrap(),
        "--client-key",
        key.to_str().unwrap(),
    ];

    let all: Vec<&str> = [&base[..], &client_cert[..], &["--token", token][..]].concat();
    let out = cli(&all).await;
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("sleep"));

    let no_cert: Vec<&str> = [&base[..], &["--token", token][..]].concat();
    assert!(!cli(&no_cert).await.status.success());

    let no_token: Vec<&str> = [&base[..], &client_cert[..]].concat();
    let out = cli(&no_token).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"),
        "{out:?}"
    );
}

/// `oprun serve` refuses inconsistent TLS flags before doing anything, each with one line on
/// stderr and a non-zero exit: a certificate without its key, a key without its certificate,
/// a client CA without a certificate, and a key that does not belong to the certificate.
#[tokio::test]
async fn binary_refuses_inconsistent_tls_flags() {
    let pki = Pki::new();
    let p = |name: &str| pki.path(name).to_str().unwrap().to_owned();
    let cases: [(Vec<String>, &str); 4] = [
        (vec!["--tls-cert".into(), p("server.pem")], "--tls-key"),
        (vec!["--tls-key".into(), p("server.key")], "--tls-cert"),
        (vec!["--tls-client-ca".into(), p("ca.pem")], "--tls-cert"),
        (
            vec![
                "--tls-cert".into(),
                p("server.pem"),
                "--tls-key".into(),
                p("client.key"),
            ],
            "--tls-key",
        ),
    ];
    for (flags, needle) in cases {
        let mut cmd = oprun();
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "memory",
            "--data-dir",
        ])
        .arg(pki.path("data"))
        .args(&flags);
        let out = run_to_exit(&mut cmd).await;
        assert!(!out.status.success(), "{flags:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{flags:?}: one line expected:\n{stderr}");
        assert!(lines[0].contains(needle), "{flags:?}: {stderr}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
    }
}

// ---- the real binary ----

/// A client subcommand of the binary.
async fn cli(args: &[&str]) -> Output {
    run_to_exit(oprun().args(args)).await
}
