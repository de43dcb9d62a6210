//! The `snapshot` kind end to end, against a real in-process server: archives that `tar
//! --zstd` reads back identically, paths confined to the snapshot root (refused synchronously
//! with the right status), and cancellation that leaves no file behind.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{error_code, metadata, response, TestServer};
use oprun::model::pack;
use oprun::proto::google::longrunning::operations_client::OperationsClient;
use oprun::proto::google::longrunning::{
    CancelOperationRequest, GetOperationRequest, ListOperationsRequest, Operation,
};
use oprun::proto::oprun::v1::operation_metadata::State;
use oprun::proto::oprun::v1::snapshot_service_client::SnapshotServiceClient;
use oprun::proto::oprun::v1::{
    CreateSnapshotRequest, Snapshot, SnapshotProgress, SubmitTaskRequest,
};
use oprun::store::memory::MemoryStore;
use oprun::store::Store;
use oprun::{Registry, Runner, RunnerConfig};
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

/// Poll interval when following an operation through GetOperation.
const POLL: Duration = Duration::from_millis(20);

/// Writes `len` bytes of cheap pseudo-random (incompressible) data to `path`.
fn write_random(path: &Path, len: usize, seed: u64) {
    let mut state = seed | 1;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, fs::File::create(path).unwrap());
    let mut block = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(block.len());
        out.write_all(&block[..n]).unwrap();
        left -= n;
    }
    out.flush().unwrap();
}

/// What a path in a tree is, with enough to compare two trees byte for byte.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Dir,
    File(Vec<u8>),
    Symlink(PathBuf),
}

/// Every entry under `dir` (not following symbolic links), keyed by relative path.
fn walk(dir: &Path) -> BTreeMap<PathBuf, Entry> {
    fn go(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(base).unwrap().to_path_buf();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                out.insert(relative, Entry::Symlink(fs::read_link(&path).unwrap()));
            } else if meta.is_dir() {
                out.insert(relative, Entry::Dir);
                go(base, &path, out);
            } else {
                out.insert(relative, Entry::File(fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    go(dir, dir, &mut out);
    out
}

/// A small tree under `dir`: nested directories, an empty directory, an empty file, a 3 MiB
/// pseudo-random file and a relative symbolic link. Returns (regular files, their total bytes).
fn build_tree(dir: &Path) -> (i64, i64) {
    fs::create_dir_all(dir.join("a/b/c")).unwrap();
    fs::create_dir_all(dir.join("empty_dir")).unwrap();
    fs::write(dir.join("a/b/c/deep.txt"), b"deep inside\n").unwrap();
    fs::write(dir.join("a/hello.txt"), b"hello, snapshot\n").unwrap();
    fs::write(dir.join("empty.bin"), b"").unwrap();
    write_random(&dir.join("a/b/random.bin"), 3 * 1024 * 1024 + 123, 0x5eed);
    std::os::unix::fs::symlink("a/hello.txt", dir.join("link-to-hello")).unwrap();
    (4, 12 + 16 + 3 * 1024 * 1024 + 123)
}

fn sha256_hex(path: &Path) -> String {
    hex::encode(Sha256::digest(fs::read(path).unwrap()))
}

async fn snapshots(server: &TestServer) -> SnapshotServiceClient<Channel> {
    SnapshotServiceClient::new(server.channel().await)
}

fn request(source_dir: &str, destination: &str) -> CreateSnapshotRequest {
    CreateSnapshotRequest {
        source_dir: source_dir.into(),
        destination: destination.into(),
        request_id: String::new(),
    }
}

async fn get(ops: &mut OperationsClient<Channel>, name: &str) -> Operation {
    ops.get_operation(GetOperationRequest { name: name.into() })
        .await
        .expect("get")
        .into_inner()
}

/// Polls GetOperation until `pred` holds, for at most `limit`.
async fn poll_until(
    ops: &mut OperationsClient<Channel>,
    name: &str,
    limit: Duration,
    what: &str,
    pred: impl Fn(&Operation) -> bool,
) -> Operation {
    let deadline = Instant::now() + limit;
    loop {
        let op = get(ops, name).await;
        if pred(&op) {
            return op;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: not {what} within {limit:?}; last seen: {:?}",
            metadata(&op)
        );
        tokio::time::sleep(POLL).await;
    }
}

async fn list_all(ops: &mut OperationsClient<Channel>) -> Vec<Operation> {
    ops.list_operations(ListOperationsRequest {
        name: "operations".into(),
        filter: String::new(),
        page_size: 0,
        page_token: String::new(),
        return_partial_success: false,
    })
    .await
    .expect("list")
    .into_inner()
    .operations
}

/// Extracts `archive` with the system's `tar --zstd` into a fresh directory.
fn extract(archive: &Path) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    let result = std::process::Command::new("tar")
        .arg("--zstd")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(out.path())
        .output()
        .expect("run tar");
    assert!(
        result.status.success(),
        "tar --zstd -xf failed: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    out
}

/// CreateSnapshot with relative paths produces an archive that `tar --zstd -xf` extracts into
/// exactly the source tree (contents, empty directory and file, symbolic link), and the
/// response and final metadata describe it truthfully: path, size and sha256 of the file on
/// disk, the count of regular files, progress in bytes ending complete, and `SnapshotProgress`
/// details.
#[tokio::test]
async fn round_trip_archive_extracts_to_the_same_tree() {
    let server = TestServer::start().await;
    let root = server.snapshot_root();
    let (files, bytes) = build_tree(&root.join("data/tree"));

    let op = snapshots(&server)
        .await
        .create_snapshot(request("data/tree", "out/tree.tar.zst"))
        .await
        .expect("CreateSnapshot")
        .into_inner();
    assert!(op.name.starts_with("operations/"), "{}", op.name);
    assert_eq!(metadata(&op).kind, "snapshot");

    let done = server.wait_done(&op.name).await;
    assert_eq!(
        error_code(&done),
        None,
        "snapshot failed: {:?}",
        done.result
    );
    let snap: Snapshot = response(&done);
    let archive = root.canonicalize().unwrap().join("out/tree.tar.zst");
    assert_eq!(Path::new(&snap.path), archive);
    let on_disk = fs::metadata(&archive).expect("archive exists").len();
    assert_eq!(snap.size_bytes, i64::try_from(on_disk).unwrap());
    assert_eq!(snap.file_count, files, "regular files only");
    assert_eq!(snap.sha256, sha256_hex(&archive));
    assert!(
        snap.sha256.len() == 64
            && snap
                .sha256
                .chars()
                .all(|c| matches!(c, '0'..='9' | 'a'..='f')),
        "sha256 must be lower-case hex: {}",
        snap.sha256
    );

    let meta = metadata(&done);
    assert_eq!(meta.state, State::Succeeded as i32);
    let progress = meta.progress.expect("progress");
    assert_eq!(progress.unit, "bytes");
    assert_eq!(progress.completed, progress.total);
    assert_eq!(progress.total, bytes, "progress counts regular-file bytes");
    let details = meta.details.expect("details");
    assert_eq!(
        details.type_url,
        "type.googleapis.com/oprun.v1.SnapshotProgress"
    );
    let details = SnapshotProgress::decode(details.value.as_slice()).unwrap();
    assert_eq!(details.files_done, files);

    // No partial file is left next to the archive.
    let leftovers: Vec<_> = fs::read_dir(archive.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("tree.tar.zst")]);

    let extracted = extract(&archive);
    let expected = walk(&root.join("data/tree"));
    let got = walk(extracted.path());
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "extracted tree has different entries"
    );
    for (path, entry) in &expected {
        assert!(
            got[path] == *entry,
            "{} differs after extraction",
            path.display()
        );
    }
    assert_eq!(
        got[Path::new("link-to-hello")],
        Entry::Symlink("a/hello.txt".into()),
        "symbolic links are archived as links, not followed"
    );
    server.stop().await;
}

/// Absolute paths that lie inside the snapshot root are accepted, here through TaskService's
/// `snapshot` kind (the same work as CreateSnapshot).
#[tokio::test]
async fn absolute_paths_inside_the_root_are_accepted() {
    let server = TestServer::start().await;
    let root = server.snapshot_root();
    fs::create_dir_all(root.join("tree/sub")).unwrap();
    fs::write(root.join("tree/sub/f.txt"), b"absolute").unwrap();
    let source = root.join("tree");
    let destination = root.join("archives/abs.tar.zst");

    let op = server
        .submit(
            "snapshot",
            pack(&request(
                source.to_str().unwrap(),
                destination.to_str().unwrap(),
            )),
        )
        .await;
    let done = server.wait_done(&op.name).await;
    assert_eq!(
        error_code(&done),
        None,
        "snapshot failed: {:?}",
        done.result
    );
    let snap: Snapshot = response(&done);
    assert_eq!(
        Path::new(&snap.path),
        root.canonicalize().unwrap().join("archives/abs.tar.zst")
    );
    assert_eq!(snap.file_count, 1);
    assert_eq!(snap.sha256, sha256_hex(&destination));
    let extracted = extract(&destination);
    assert_eq!(
        fs::read(extracted.path().join("sub/f.txt")).unwrap(),
        b"absolute"
    );
    server.stop().await;
}

/// Submits a snapshot request both through CreateSnapshot and through SubmitTask (kind
/// `snapshot`) and returns both refusals.
async fn refuse_both_ways(server: &TestServer, req: &CreateSnapshotRequest) -> [tonic::Status; 2] {
    let direct = snapshots(server)
        .await
        .create_snapshot(req.clone())
        .await
        .expect_err("CreateSnapshot should be refused");
    let via_task = server
        .tasks()
        .await
        .submit_task(SubmitTaskRequest {
            kind: "snapshot".into(),
            input: Some(pack(req)),
            request_id: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("SubmitTask(snapshot) should be refused");
    [direct, via_task]
}

/// Every path a client may not use is refused synchronously, by both CreateSnapshot and
/// SubmitTask, with the documented status and a message naming the path: anything leading
/// outside the root (absolute elsewhere, `..`, a symbolic link, for source and destination)
/// is PERMISSION_DENIED; an existing destination is ALREADY_EXISTS; a destination inside the
/// source and empty paths are INVALID_ARGUMENT. No operation is created and nothing is
/// written, inside the root or outside it.
#[tokio::test]
async fn refused_paths_answer_synchronously_and_create_nothing() {
    let server = TestServer::start().await;
    let root = server.snapshot_root();
    fs::create_dir_all(root.join("tree/sub")).unwrap();
    fs::write(root.join("tree/sub/f.txt"), b"x").unwrap();
    fs::create_dir_all(root.join("out")).unwrap();
    fs::write(root.join("out/existing.tar.zst"), b"keep me").unwrap();
    let outside = tempfile::tempdir().unwrap();
    fs::create_dir(outside.path().join("secret")).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("escape")).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("out/outlink")).unwrap();
    let outside_dest = outside.path().join("x.tar.zst");
    let root_before = walk(&root);
    let outside_before = walk(outside.path());

    use tonic::Code;
    let cases: Vec<(&str, String, String, Code, Vec<String>)> = vec![
        (
            "absolute source outside the root",
            "/etc".into(),
            "out/a.tar.zst".into(),
            Code::PermissionDenied,
            vec!["/etc".into()],
        ),
        (
            "absolute destination outside the root",
            "tree".into(),
            outside_dest.display().to_string(),
            Code::PermissionDenied,
            vec![outside_dest.display().to_string()],
        ),
        (
            "source escaping through ..",
            "../".into(),
            "out/b.tar.zst".into(),
            Code::PermissionDenied,
            vec!["../".into()],
        ),
        (
            "source escaping through .. deeper",
            "tree/../../data".into(),
            "out/b.tar.zst".into(),
            Code::PermissionDenied,
            vec!["tree/../../data".into()],
        ),
        (
            "destination escaping through ..",
            "tree".into(),
            "../escaped.tar.zst".into(),
            Code::PermissionDenied,
            vec!["../escaped.tar.zst".into()],
        ),
        (
            "source through a symlink pointing outside",
            "escape".into(),
            "out/c.tar.zst".into(),
            Code::PermissionDenied,
            vec!["escape".into()],
        ),
        (
            "source below a symlink pointing outside",
            "escape/secret".into(),
            "out/c.tar.zst".into(),
            Code::PermissionDenied,
            vec!["escape/secret".into()],
        ),
        (
            "destination through a symlinked directory pointing outside",
            "tree".into(),
            "out/outlink/d.tar.zst".into(),
            Code::PermissionDenied,
            vec!["out/outlink/d.tar.zst".into()],
        ),
        (
            "existing destination",
            "tree".into(),
            "out/existing.tar.zst".into(),
            Code::AlreadyExists,
            vec!["out/existing.tar.zst".into()],
        ),
        (
            "destination inside the source",
            "tree".into(),
            "tree/sub/inner.tar.zst".into(),
            Code::InvalidArgument,
            vec!["tree/sub/inner.tar.zst".into(), "\"tree\"".into()],
        ),
        (
            "empty source",
            String::new(),
            "out/e.tar.zst".into(),
            Code::InvalidArgument,
            vec!["source directory is empty".into()],
        ),
        (
            "empty destination",
            "tree".into(),
            String::new(),
            Code::InvalidArgument,
            vec!["destination is empty".into()],
        ),
    ];
    for (what, source, destination, code, mentions) in &cases {
        let req = request(source, destination);
        for status in refuse_both_ways(&server, &req).await {
            assert_eq!(
                status.code(),
                *code,
                "{what} ({source:?} -> {destination:?}): {}",
                status.message()
            );
            for needle in mentions {
                assert!(
                    status.message().contains(needle.as_str()),
                    "{what}: the message should name {needle:?}: {}",
                    status.message()
                );
            }
        }
    }

    let mut ops = server.operations().await;
    assert!(
        list_all(&mut ops).await.is_empty(),
        "a refused request must not create an operation"
    );
    assert_eq!(
        walk(&root),
        root_before,
        "nothing may change inside the root"
    );
    assert_eq!(
        walk(outside.path()),
        outside_before,
        "nothing may be written outside the root"
    );
    assert!(!root.parent().unwrap().join("escaped.tar.zst").exists());
    assert_eq!(
        fs::read(root.join("out/existing.tar.zst")).unwrap(),
        b"keep me"
    );
    server.stop().await;
}

/// A missing source directory is refused synchronously with NOT_FOUND (the code the kind
/// itself uses for it, and AIP-193's code for "a requested file or directory was not found"),
/// with a message naming the path; no operation is created.
#[tokio::test]
async fn missing_source_is_not_found() {
    let server = TestServer::start().await;
    let req = request("no/such/dir", "out/missing.tar.zst");
    for status in refuse_both_ways(&server, &req).await {
        assert_eq!(
            status.code(),
            tonic::Code::NotFound,
            "missing source: {}",
            status.message()
        );
        assert!(
            status.message().contains("no/such/dir"),
            "the message should name the path: {}",
            status.message()
        );
    }
    let mut ops = server.operations().await;
    assert!(list_all(&mut ops).await.is_empty());
    assert!(!server.snapshot_root().join("out").exists());
    server.stop().await;
}

/// Issue 6, item 7: path shapes no file system takes (a 300-byte component, a destination name
/// too long for the archive's temporary name, a path past 4095 bytes or 256 components deep)
/// are INVALID_ARGUMENT naming the limit, never UNAVAILABLE ("File name too long", which
/// clients retry); no operation is created.
#[tokio::test]
async fn path_shapes_are_invalid_argument() {
    let server = TestServer::start().await;
    let root = server.snapshot_root();
    fs::create_dir_all(root.join("tree")).unwrap();
    let long = "n".repeat(300);
    let deep = vec!["d"; 300].join("/");
    for (source, destination, mention) in [
        (long.clone(), "out/a.tar.zst".to_owned(), "255 bytes"),
        (
            format!("tree/{long}"),
            "out/a.tar.zst".to_owned(),
            "255 bytes",
        ),
        (
            "tree".to_owned(),
            format!("out/{long}/a.tar.zst"),
            "255 bytes",
        ),
        (
            "tree".to_owned(),
            format!("out/{}", "a".repeat(240)),
            "200 bytes",
        ),
        ("tree".to_owned(), "x/".repeat(2100), "4095 bytes"),
        (deep.clone(), "out/a.tar.zst".to_owned(), "256 deep"),
    ] {
        let req = request(&source, &destination);
        for status in refuse_both_ways(&server, &req).await {
            assert_eq!(
                status.code(),
                tonic::Code::InvalidArgument,
                "{}…: {}",
                &source[..source.len().min(40)],
                status.message()
            );
            assert!(status.message().contains(mention), "{}", status.message());
            assert!(status.message().len() < 1024, "{}", status.message());
        }
    }
    let mut ops = server.operations().await;
    assert!(list_all(&mut ops).await.is_empty());
    server.stop().await;
}

/// Issue 6, item 11: CreateSnapshot with a `request_id`, sent again after the first finished,
/// returns the original operation although the destination exists now (it answered
/// ALREADY_EXISTS "destination already exists"); the same id with a different request is
/// ALREADY_EXISTS naming the request_id.
#[tokio::test]
async fn create_snapshot_request_id_returns_the_original() {
    let server = TestServer::start().await;
    let root = server.snapshot_root();
    fs::create_dir_all(root.join("tree")).unwrap();
    fs::write(root.join("tree/f.txt"), b"x").unwrap();
    let mut req = request("tree", "out/once.tar.zst");
    req.request_id = "6f2b0c5e-1f0e-4c3a-9a59-3d7e8b1c2a10".into();
    let first = snapshots(&server)
        .await
        .create_snapshot(req.clone())
        .await
        .unwrap()
        .into_inner();
    let done = server.wait_done(&first.name).await;
    assert_eq!(common::error_code(&done), None, "{done:?}");
    assert!(root.join("out/once.tar.zst").exists());

    let again = snapshots(&server)
        .await
        .create_snapshot(req.clone())
        .await
        .expect("the same request_id returns the original operation")
        .into_inner();
    assert_eq!(again.name, first.name);
    assert!(again.done);

    let mut other = req.clone();
    other.destination = "out/other.tar.zst".into();
    let conflict = snapshots(&server)
        .await
        .create_snapshot(other)
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), tonic::Code::AlreadyExists, "{conflict:?}");
    assert!(
        conflict.message().contains("request_id"),
        "{}",
        conflict.message()
    );
    server.stop().await;
}

/// Cancelling a snapshot while it is archiving ends the operation CANCELLED (error code 1)
/// within a few seconds, and leaves neither the destination nor a partial file behind.
#[tokio::test]
async fn cancel_mid_snapshot_removes_everything() {
    let server = TestServer::start().await;
    let root = server.snapshot_root();
    let tree = root.join("big");
    fs::create_dir_all(&tree).unwrap();
    // Incompressible data, so archiving takes seconds rather than milliseconds.
    write_random(&tree.join("one.bin"), 48 * 1024 * 1024, 1);
    write_random(&tree.join("two.bin"), 16 * 1024 * 1024, 2);
    fs::create_dir_all(root.join("out")).unwrap();

    let op = snapshots(&server)
        .await
        .create_snapshot(request("big", "out/big.tar.zst"))
        .await
        .expect("CreateSnapshot")
        .into_inner();
    let mut ops = server.operations().await;
    let running = poll_until(
        &mut ops,
        &op.name,
        Duration::from_secs(20),
        "RUNNING with progress",
        |op| {
            let m = metadata(op);
            op.done
                || (m.state == State::Running as i32 && m.progress.is_some_and(|p| p.completed > 0))
        },
    )
    .await;
    assert!(
        !running.done,
        "the snapshot finished before it could be cancelled"
    );
    let progress = metadata(&running).progress.unwrap();
    assert!(progress.completed < progress.total, "{progress:?}");

    let partials = |dir: &Path| -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let mid_run = partials(&root.join("out"));
    assert!(
        mid_run.iter().any(|n| n.contains(".partial")),
        "a running snapshot writes a partial file next to its destination: {mid_run:?}"
    );

    let cancelled_at = Instant::now();
    ops.cancel_operation(CancelOperationRequest {
        name: op.name.clone(),
    })
    .await
    .expect("cancel");
    let done = poll_until(&mut ops, &op.name, Duration::from_secs(20), "done", |op| {
        op.done
    })
    .await;
    let took = cancelled_at.elapsed();
    assert_eq!(error_code(&done), Some(1), "{:?}", done.result);
    let meta = metadata(&done);
    assert_eq!(meta.state, State::Cancelled as i32);
    assert!(meta.requested_cancellation);
    assert!(took < Duration::from_secs(3), "cancellation took {took:?}");

    assert!(
        !root.join("out/big.tar.zst").exists(),
        "a cancelled snapshot must not leave its destination"
    );
    let left = partials(&root.join("out"));
    assert!(
        left.is_empty(),
        "files left in the destination directory: {left:?}"
    );
    server.stop().await;
}

/// A server whose snapshot root is configured through a symbolic link (as `--snapshot-root`
/// may well be, e.g. /tmp -> /private/tmp on macOS) accepts absolute paths spelled through
/// that configured root: they lie inside it, which is what the API promises. The response
/// reports where the archive was written.
#[tokio::test]
async fn absolute_paths_through_a_symlinked_root_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real-root");
    fs::create_dir_all(real.join("tree")).unwrap();
    fs::write(real.join("tree/f.txt"), b"via alias").unwrap();
    let alias = dir.path().join("alias-root");
    std::os::unix::fs::symlink(&real, &alias).unwrap();

    let mut registry = Registry::with_builtins();
    registry
        .register(oprun_workers::snapshot::SnapshotTask::new(&alias).expect("snapshot root"))
        .expect("a kind of its own name");
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let runner = Runner::start(registry, store, RunnerConfig::default())
        .await
        .expect("runner");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(oprun::server::serve(
        listener,
        runner,
        async {
            let _ = stopped.await;
        },
        Duration::from_secs(5),
    ));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let source = alias.join("tree");
    let destination = alias.join("alias.tar.zst");
    let created = SnapshotServiceClient::new(channel.clone())
        .create_snapshot(request(
            source.to_str().unwrap(),
            destination.to_str().unwrap(),
        ))
        .await;
    let checked = async {
        let op = created
            .unwrap_or_else(|s| panic!("refused: {:?}: {}", s.code(), s.message()))
            .into_inner();
        let mut ops = OperationsClient::new(channel.clone());
        let done = poll_until(&mut ops, &op.name, Duration::from_secs(20), "done", |op| {
            op.done
        })
        .await;
        assert_eq!(
            error_code(&done),
            None,
            "snapshot failed: {:?}",
            done.result
        );
        let snap: Snapshot = response(&done);
        assert_eq!(
            Path::new(&snap.path),
            real.canonicalize().unwrap().join("alias.tar.zst")
        );
        assert_eq!(snap.sha256, sha256_hex(&real.join("alias.tar.zst")));
    };
    // Stop the server whatever the outcome, then report it.
    let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(checked)).await;
    let _ = stop.send(());
    serving.await.unwrap().unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
