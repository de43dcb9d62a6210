//! Authentication and authorisation: bearer tokens from a tokens file, each with a role, checked
//! before any handler runs. In-process servers (`serve_with`) answer real tonic clients for the
//! per-method table; the real binary shows the secure default, the `--token` flag, the refusal
//! of a malformed tokens file and that tokens stay out of the logs.

mod common;

use common::binary::{oprun, run_to_exit, BinServer};

use std::fs;
use std::net::SocketAddr;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{registry, sleep_input, Gauge};
use oprun::auth::Tokens;
use oprun::proto::google::longrunning::operations_client::OperationsClient;
use oprun::proto::google::longrunning::{
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest,
    WaitOperationRequest,
};
use oprun::proto::oprun::v1::snapshot_service_client::SnapshotServiceClient;
use oprun::proto::oprun::v1::task_service_client::TaskServiceClient;
use oprun::proto::oprun::v1::{CreateSnapshotRequest, ListTaskKindsRequest, SubmitTaskRequest};
use oprun::server::ServeOptions;
use oprun::store::memory::MemoryStore;
use oprun::{Runner, RunnerConfig};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

/// The three roles' tokens (made up here, not by the library) and one nobody issued.
const READER: &str = "reader-token-0123456789abcdefghijklmnopqrstuv";
const SUBMITTER: &str = "submitter-token-0123456789abcdefghijklmnopqrst";
const ADMIN: &str = "admin-token-0123456789abcdefghijklmnopqrstuvwx";
const WRONG: &str = "wrong-token-0123456789abcdefghijklmnopqrstuvwx";

/// `sha256:<hex>` of a token, computed here independently of the library.
fn hash(token: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(token.as_bytes())))
}

/// A tokens file with comments, a blank line and one token per role, labelled.
fn tokens_file_text() -> String {
    format!(
        "# oprun tokens\n\n{} reader reader-bot\n{} submitter ci deploy\n{} admin ops-admin\n",
        hash(READER),
        hash(SUBMITTER),
        hash(ADMIN)
    )
}

/// Adds `authorization: Bearer <token>` when it has a token: the header any gRPC client sends.
#[derive(Clone)]
struct Bearer(Option<String>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("ascii token"),
            );
        }
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

/// An in-process server with authentication on, over a memory store.
struct AuthServer {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), oprun::server::ServeError>>>,
    snapshots: AtomicUsize,
}

impl AuthServer {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("snapshots");
        fs::create_dir_all(root.join("src")).expect("snapshot source");
        fs::write(root.join("src/file.txt"), b"hello").expect("snapshot file");
        let gauge = Arc::new(Gauge::default());
        let runner = Runner::start(
            registry(&gauge, &root),
            Arc::new(MemoryStore::new()),
            RunnerConfig::default(),
        )
        .await
        .expect("runner");
        let tokens = Arc::new(Tokens::parse(&tokens_file_text()).expect("tokens file"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel();
        let options = ServeOptions::new()
            .grace(Duration::from_secs(5))
            .auth(tokens);
        let handle = tokio::spawn(oprun::server::serve_with(
            listener,
            runner,
            async {
                let _ = rx.await;
            },
            options,
        ));
        Self {
            addr,
            dir,
            shutdown: Some(tx),
            handle: Some(handle),
            snapshots: AtomicUsize::new(0),
        }
    }

    async fn channel(&self, token: Option<&str>) -> Authed {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        InterceptedService::new(channel, Bearer(token.map(str::to_owned)))
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("server task").expect("clean stop");
        }
        drop(self.dir);
    }

    /// A finished sleep, made with the admin token.
    async fn done_operation(&self) -> String {
        let channel = self.channel(Some(ADMIN)).await;
        let op = TaskServiceClient::new(channel.clone())
            .submit_task(SubmitTaskRequest {
                kind: "sleep".into(),
                input: Some(sleep_input(1, 1, "")),
                ..Default::default()
            })
            .await
            .expect("admin submits")
            .into_inner();
        let mut ops = OperationsClient::new(channel);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let now = ops
                .wait_operation(WaitOperationRequest {
                    name: op.name.clone(),
                    timeout: Some(prost_types::Duration {
                        seconds: 2,
                        nanos: 0,
                    }),
                })
                .await
                .expect("admin waits")
                .into_inner();
            if now.done {
                return now.name;
            }
            assert!(Instant::now() < deadline, "{} not done in 20 s", op.name);
        }
    }
}

/// The eight RPCs of the three services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rpc {
    Get,
    List,
    Wait,
    Cancel,
    Delete,
    Submit,
    ListKinds,
    CreateSnapshot,
}

const RPCS: [Rpc; 8] = [
    Rpc::Get,
    Rpc::List,
    Rpc::Wait,
    Rpc::ListKinds,
    Rpc::Submit,
    Rpc::CreateSnapshot,
    Rpc::Cancel,
    Rpc::Delete,
];

/// The roles allowed to call `rpc`, as the issue states them: reader (Get, List, Wait,
/// ListTaskKinds), submitter (also SubmitTask, CreateSnapshot, Cancel), admin (also Delete).
fn allowed(role: &str, rpc: Rpc) -> bool {
    let reader = matches!(rpc, Rpc::Get | Rpc::List | Rpc::Wait | Rpc::ListKinds);
    let submitter = reader || matches!(rpc, Rpc::Submit | Rpc::CreateSnapshot | Rpc::Cancel);
    match role {
        "reader" => reader,
        "submitter" => submitter,
        "admin" => true,
        other => panic!("no role {other}"),
    }
}

/// Calls `rpc` with a request that succeeds when the caller is allowed; `done` names a
/// finished operation (Delete makes its own, since it consumes it).
async fn call(
    server: &AuthServer,
    token: Option<&str>,
    rpc: Rpc,
    done: &str,
) -> Result<(), Status> {
    let channel = server.channel(token).await;
    let mut ops = OperationsClient::new(channel.clone());
    let mut tasks = TaskServiceClient::new(channel.clone());
    match rpc {
        Rpc::Get => ops
            .get_operation(GetOperationRequest { name: done.into() })
            .await
            .map(drop),
        Rpc::List => ops
            .list_operations(ListOperationsRequest {
                name: "operations".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        Rpc::Wait => ops
            .wait_operation(WaitOperationRequest {
                name: done.into(),
                timeout: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
            })
            .await
            .map(drop),
        Rpc::Cancel => ops
            .cancel_operation(CancelOperationRequest { name: done.into() })
            .await
            .map(drop),
        Rpc::Delete => {
            let victim = server.done_operation().await;
            ops.delete_operation(DeleteOperationRequest { name: victim })
                .await
                .map(drop)
        }
        Rpc::Submit => tasks
            .submit_task(SubmitTaskRequest {
                kind: "sleep".into(),
                input: Some(sleep_input(1, 1, "")),
                ..Default::default()
            })
            .await
            .map(drop),
        Rpc::ListKinds => tasks
            .list_task_kinds(ListTaskKindsRequest::default())
            .await
            .map(drop),
        Rpc::CreateSnapshot => {
            let n = server.snapshots.fetch_add(1, Ordering::SeqCst);
            SnapshotServiceClient::new(channel)
                .create_snapshot(CreateSnapshotRequest {
                    source_dir: "src".into(),
                    destination: format!("out-{n}.tar.zst"),
                    request_id: String::new(),
                })
                .await
                .map(drop)
        }
    }
}

/// Every one of the eight RPCs answers UNAUTHENTICATED without a token and with a token the
/// server never issued, and for each role exactly as the role table says: the call succeeds
/// when the role allows it and is PERMISSION_DENIED when it does not.
#[tokio::test]
async fn every_rpc_follows_the_role_table() {
    let server = AuthServer::start().await;
    let done = server.done_operation().await;
    for rpc in RPCS {
        for (who, token) in [("no token", None), ("an unknown token", Some(WRONG))] {
            let err = call(&server, token, rpc, &done).await.expect_err("refused");
            assert_eq!(
                err.code(),
                Code::Unauthenticated,
                "{rpc:?} with {who}: {err:?}"
            );
        }
        for (role, token) in [
            ("reader", READER),
            ("submitter", SUBMITTER),
            ("admin", ADMIN),
        ] {
            let got = call(&server, Some(token), rpc, &done).await;
            if allowed(role, rpc) {
                if let Err(e) = got {
                    panic!(
                        "{role} may call {rpc:?} but got {:?}: {}",
                        e.code(),
                        e.message()
                    );
                }
            } else {
                let err = got.expect_err("refused");
                assert_eq!(
                    err.code(),
                    Code::PermissionDenied,
                    "{role} {rpc:?}: {err:?}"
                );
            }
        }
    }
    server.stop().await;
}

/// Permission is checked before existence: a reader (and a submitter) deleting an operation
/// that does not exist is told PERMISSION_DENIED, not NOT_FOUND, while an admin deleting the
/// same name learns that it does not exist.
#[tokio::test]
async fn permission_is_checked_before_existence() {
    let server = AuthServer::start().await;
    let name = "operations/no-such-operation-123";
    for token in [READER, SUBMITTER] {
        let err = OperationsClient::new(server.channel(Some(token)).await)
            .delete_operation(DeleteOperationRequest { name: name.into() })
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    }
    let err = OperationsClient::new(server.channel(Some(ADMIN)).await)
        .delete_operation(DeleteOperationRequest { name: name.into() })
        .await
        .expect_err("no such operation");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    server.stop().await;
}

/// Denials say what is wrong and what to do, with an ErrorInfo in the `oprun.dev` domain: a
/// missing token names the header to send, an unknown one is called invalid, a low role names
/// the method and the roles that may call it.
#[tokio::test]
async fn denials_explain_themselves() {
    let server = AuthServer::start().await;
    let missing = kinds_refused(&server, None).await;
    assert_eq!(
        missing.message(),
        "missing bearer token: send \"authorization: Bearer <token>\""
    );
    let info = missing
        .get_error_details()
        .error_info()
        .cloned()
        .expect("ErrorInfo");
    assert_eq!(info.domain, "oprun.dev");
    assert_eq!(info.reason, "TOKEN_MISSING");

    let unknown = kinds_refused(&server, Some(WRONG)).await;
    assert!(
        unknown.message().starts_with("invalid bearer token"),
        "{}",
        unknown.message()
    );
    assert!(!unknown.message().contains(WRONG));
    let info = unknown
        .get_error_details()
        .error_info()
        .cloned()
        .expect("ErrorInfo");
    assert_eq!(
        (info.domain.as_str(), info.reason.as_str()),
        ("oprun.dev", "TOKEN_INVALID")
    );

    let low = OperationsClient::new(server.channel(Some(READER)).await)
        .delete_operation(DeleteOperationRequest {
            name: "operations/x".into(),
        })
        .await
        .expect_err("refused");
    assert_eq!(
        low.message(),
        "role reader may not call DeleteOperation; it needs admin"
    );
    let info = low
        .get_error_details()
        .error_info()
        .cloned()
        .expect("ErrorInfo");
    assert_eq!(info.domain, "oprun.dev");
    assert_eq!(info.reason, "ROLE_TOO_LOW");
    assert_eq!(
        info.metadata.get("role").map(String::as_str),
        Some("reader")
    );
    assert_eq!(
        info.metadata.get("required_role").map(String::as_str),
        Some("admin")
    );

    let cancel = OperationsClient::new(server.channel(Some(READER)).await)
        .cancel_operation(CancelOperationRequest {
            name: "operations/x".into(),
        })
        .await
        .expect_err("refused");
    assert_eq!(
        cancel.message(),
        "role reader may not call CancelOperation; it needs submitter or admin"
    );
    server.stop().await;
}

/// ListTaskKinds with `token`, expected to be refused.
async fn kinds_refused(server: &AuthServer, token: Option<&str>) -> Status {
    TaskServiceClient::new(server.channel(token).await)
        .list_task_kinds(ListTaskKindsRequest::default())
        .await
        .expect_err("refused")
}

/// A malformed tokens-file line is refused with its line number, by the library and by
/// `oprun serve`, which exits non-zero with one line on stderr that names the file and line
/// but never quotes the bad field (it might be a raw token pasted by mistake).
#[tokio::test]
async fn malformed_tokens_file_is_refused_with_its_line_number() {
    let text = format!(
        "# tokens\n{} reader ok\nraw-secret-pasted-here admin oops\n",
        hash(READER)
    );
    let err = Tokens::parse(&text).expect_err("malformed").to_string();
    assert!(err.starts_with("line 3: "), "{err}");

    let for_role = format!("{} superuser\n", hash(READER));
    let err = Tokens::parse(&for_role).expect_err("bad role").to_string();
    assert!(
        err.starts_with("line 1: ") && err.contains("superuser"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    fs::write(&file, &text).unwrap();
    let out = run_to_exit(
        oprun()
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--store",
                "memory",
                "--data-dir",
            ])
            .arg(dir.path().join("data"))
            .arg("--tokens-file")
            .arg(&file),
    )
    .await;
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected:\n{stderr}");
    assert!(lines[0].contains("line 3"), "{stderr}");
    assert!(lines[0].contains(&file.display().to_string()), "{stderr}");
    assert!(!stderr.contains("raw-secret-pasted-here"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
}

/// Secure by default: without a tokens file `oprun serve --listen 0.0.0.0:0` exits non-zero
/// within 10 s, never listening, with one line that points at --insecure-no-auth (and
/// --tokens-file); with `--insecure-no-auth` the same command starts and answers calls.
#[tokio::test]
async fn binary_refuses_to_serve_the_network_without_auth() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_to_exit(
        oprun()
            .args([
                "serve",
                "--listen",
                "0.0.0.0:0",
                "--store",
                "memory",
                "--data-dir",
            ])
            .arg(dir.path().join("data")),
    )
    .await;
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected:\n{stderr}");
    assert!(lines[0].contains("--insecure-no-auth"), "{stderr}");
    assert!(lines[0].contains("--tokens-file"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));

    let server = BinServer::start(dir.path(), "0.0.0.0:0", &["--insecure-no-auth"], &[]);
    let port = server.addr.port();
    let out = cli(
        &["kinds", "--addr", &format!("http://127.0.0.1:{port}")],
        &[],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("sleep"));
}

/// The CLI's `--token` (and `OPRUN_TOKEN`) works end to end against the binary, with a token
/// and tokens-file line made by `oprun token new`: `oprun kinds` lists the kinds with it and
/// fails non-zero, saying UNAUTHENTICATED, without it.
#[tokio::test]
async fn cli_token_works_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let made = cli(&["token", "new", "--role", "reader", "--label", "e2e"], &[]).await;
    assert!(made.status.success(), "{made:?}");
    let stdout = String::from_utf8(made.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let (token, line) = (lines[0], lines[1]);
    assert!(
        token.len() >= 43,
        "32 random bytes are 43 base64 characters: {token}"
    );
    assert_eq!(line, format!("{} reader e2e", hash(token)));
    let file = dir.path().join("tokens");
    fs::write(&file, format!("{line}\n")).unwrap();

    let server = BinServer::start(
        dir.path(),
        "127.0.0.1:0",
        &["--tokens-file", file.to_str().unwrap()],
        &[],
    );
    let addr = format!("http://{}", server.addr);
    let with_flag = cli(&["kinds", "--addr", &addr, "--token", token], &[]).await;
    assert!(with_flag.status.success(), "{with_flag:?}");
    assert!(String::from_utf8_lossy(&with_flag.stdout).contains("sleep"));

    let with_env = cli(&["kinds", "--addr", &addr], &[("OPRUN_TOKEN", token)]).await;
    assert!(with_env.status.success(), "{with_env:?}");

    let without = cli(&["kinds", "--addr", &addr], &[]).await;
    assert!(!without.status.success(), "{without:?}");
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert!(stderr.contains("Unauthenticated"), "{stderr}");
    assert!(stderr.contains("Bearer"), "{stderr}");
}

/// Tokens never reach the logs: after an unknown-token call, a call denied for its role and an
/// allowed one, the server's stderr at `OPRUN_LOG=debug` holds none of the tokens nor their
/// hashes, while it does name the denied method and the token's label.
#[tokio::test]
async fn tokens_never_appear_in_debug_logs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    fs::write(&file, tokens_file_text()).unwrap();
    let mut server = BinServer::start(
        dir.path(),
        "127.0.0.1:0",
        &["--tokens-file", file.to_str().unwrap()],
        &[("OPRUN_LOG", "debug")],
    );
    let addr = format!("http://{}", server.addr);
    let unknown = cli(&["kinds", "--addr", &addr, "--token", WRONG], &[]).await;
    assert!(!unknown.status.success());
    let denied = cli(
        &[
            "delete",
            "operations/abc",
            "--addr",
            &addr,
            "--token",
            READER,
        ],
        &[],
    )
    .await;
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("PermissionDenied"),
        "{denied:?}"
    );
    let allowed = cli(&["kinds", "--addr", &addr, "--token", READER], &[]).await;
    assert!(allowed.status.success(), "{allowed:?}");

    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "{status:?}");
    let log = fs::read_to_string(&server.log).unwrap();
    assert!(log.contains("DEBUG"), "debug logging is on:\n{log}");
    for secret in [READER, SUBMITTER, ADMIN, WRONG] {
        assert!(!log.contains(secret), "a token is in the log");
        let hex = hash(secret);
        let hex = hex.trim_start_matches("sha256:");
        assert!(!log.contains(hex), "a token's hash is in the log");
        assert!(
            !log.contains(&hex[..16]),
            "part of a token's hash is in the log"
        );
    }
    assert!(
        log.contains("DeleteOperation"),
        "the denial names the method:\n{log}"
    );
    assert!(
        log.contains("reader-bot"),
        "the denial names the label:\n{log}"
    );
    assert!(log.contains("UNAUTHENTICATED"), "{log}");
    assert!(log.contains("PERMISSION_DENIED"), "{log}");
}

// ---- the real binary ----

/// A client subcommand of the binary, with extra environment.
async fn cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = oprun();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_to_exit(&mut cmd).await
}
