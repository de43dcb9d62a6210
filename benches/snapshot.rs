//! Snapshot speed against `tar`, printed (not asserted):
//! `cargo bench -p oprun-workers --bench snapshot`.
//!
//! Builds once a deterministic tree (text-like, JSON-like and incompressible files in equal
//! numbers, sizes spread log-uniformly over a factor of 2^14, in nested directories) under
//! `target/snapshot-bench-tree-<MB>MB-<files>/tree` and reuses it on later runs; reads it once so
//! that every contender finds it in the page cache; then runs rounds of three contenders, each
//! in its own process, interleaved (A B C A B C …) so a noisy host weighs on them alike:
//! - `oprun`: this build's release `oprun` (`serve --listen 127.0.0.1:0 --data-dir <fresh>
//!   --snapshot-root target/snapshot-bench-tree-…`), asked for `SnapshotService.CreateSnapshot`
//!   of `tree` over gRPC and followed with WaitOperation. Wall time is from the request to
//!   done; CPU is the server's over that time (`/proc/PID/stat`); peak RSS is the server's
//!   `VmHWM`, idle server included (its RSS before the request is printed as `idle`). The
//!   archive is fsynced before it is reported done, which tar does not do.
//! - `tar-zstd`: `tar --zstd -cf OUT -C tree .` (zstd level 3, one thread).
//! - `tar-zstd-T0`: `tar -I 'zstd -T0' -cf OUT -C tree .` (level 3, a worker per core).
//!
//! tar's CPU time and peak RSS come from `/usr/bin/time -v` (tar and zstd together; the RSS is
//! the larger process's). Each archive is deleted after its round. Each round prints its
//! figures, then the medians per contender and the ratios of oprun's to tar's.
//!
//! Environment (all optional):
//! - `SNAPSHOT_BENCH_MB` (default 1100): bytes of file content in the tree, in MB (2^20 bytes).
//! - `SNAPSHOT_BENCH_FILES` (default 14000): regular files in the tree.
//! - `SNAPSHOT_BENCH_ROUNDS` (default 3).
//! - `LOADGEN_SERVER_LOG`: the server's `OPRUN_LOG` (default `warn`), its output then kept in
//!   `target/loadgen-snapshot.log`.
//!
//! Needs `tar` with `--zstd` and `zstd` on the `PATH`; without them only oprun runs.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::LazyLock;
use std::time::Instant;

use oprun::proto::google::longrunning::operation;
use oprun::proto::google::longrunning::operations_client::OperationsClient;
use oprun::proto::oprun::v1::snapshot_service_client::SnapshotServiceClient;
use oprun::proto::oprun::v1::{CreateSnapshotRequest, Snapshot};
use prost::Message;

#[path = "harness.rs"]
mod harness;
use harness::{connect, env_or, repo_root, wait_for, Server, Target};

const MB: f64 = 1024.0 * 1024.0;
/// Largest file size over smallest: sizes are spread log-uniformly over this factor.
const SIZE_SPREAD: f64 = 16384.0;
/// Files per directory, directories per parent.
const FILES_PER_DIR: usize = 25;
const DIRS_PER_DIR: usize = 8;

/// The words of the text-like files, the first ones drawn most often.
static WORDS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    "the of and to in is that for it as with was on be by this are from or an at which not but \
     have job runner operation snapshot archive server client request deadline cancel retry \
     worker queue lease store commit write read tree file directory compress stream buffer \
     thread memory progress status error timeout schedule node cluster backoff result metadata \
     response index record"
        .split_whitespace()
        .collect()
});

/// splitmix64: small, fast and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A word, the first ones more often (roughly as in prose).
    fn word(&mut self) -> &'static str {
        let u = self.unit();
        WORDS[((u * u) * WORDS.len() as f64) as usize]
    }
}

/// Log-uniform sizes over [`SIZE_SPREAD`], scaled to add up to `total` exactly.
fn file_sizes(total: u64, files: usize) -> Vec<u64> {
    let mut rng = Rng(0x5eed);
    let raw: Vec<f64> = (0..files)
        .map(|_| (rng.unit() * SIZE_SPREAD.ln()).exp())
        .collect();
    let sum: f64 = raw.iter().sum();
    let mut sizes: Vec<u64> = raw
        .iter()
        .map(|r| (r / sum * total as f64) as u64)
        .collect();
    let assigned: u64 = sizes.iter().sum();
    if let Some(last) = sizes.last_mut() {
        *last += total.saturating_sub(assigned);
    }
    sizes
}

/// `d<i>/d<j>/…/f<n>.<ext>`: [`FILES_PER_DIR`] files per leaf, [`DIRS_PER_DIR`] per level.
fn file_path(n: usize, files: usize, ext: &str) -> PathBuf {
    let mut leaves = files.div_ceil(FILES_PER_DIR).max(1);
    let mut levels = 0;
    while leaves > 1 {
        leaves = leaves.div_ceil(DIRS_PER_DIR);
        levels += 1;
    }
    let mut path = PathBuf::new();
    let leaf = n / FILES_PER_DIR;
    for level in (0..levels).rev() {
        path.push(format!(
            "d{}",
            (leaf / DIRS_PER_DIR.pow(level)) % DIRS_PER_DIR
        ));
    }
    path.push(format!("f{n:05}.{ext}"));
    path
}

/// Fills `out` with `len` bytes of file `n`'s content: a third of the files each text lines,
/// JSON-like records, and random bytes.
fn content(n: usize, len: usize, out: &mut Vec<u8>) -> &'static str {
    out.clear();
    let mut rng = Rng(0xc0ff_ee00 ^ (n as u64).wrapping_mul(0x9e37_79b9));
    let ext = match n % 3 {
        0 => {
            while out.len() < len {
                let words = 4 + rng.below(12);
                for w in 0..words {
                    if w > 0 {
                        out.push(b' ');
                    }
                    out.extend_from_slice(rng.word().as_bytes());
                }
                out.extend_from_slice(if rng.below(8) == 0 { b".\n\n" } else { b".\n" });
            }
            "txt"
        }
        1 => {
            let mut line = String::new();
            while out.len() < len {
                line.clear();
                let _ = write!(
                    line,
                    concat!(
                        "{{\"id\":{},\"kind\":\"{}\",\"name\":\"{}-{}\",",
                        "\"created\":\"2026-{:02}-{:02}T{:02}:{:02}:{:02}Z\",\"value\":{}.{:04},",
                        "\"attempt\":{},\"tags\":[\"{}\",\"{}\"],\"done\":{}}}\n"
                    ),
                    rng.below(10_000_000),
                    rng.word(),
                    rng.word(),
                    rng.word(),
                    1 + rng.below(12),
                    1 + rng.below(28),
                    rng.below(24),
                    rng.below(60),
                    rng.below(60),
                    rng.below(100_000),
                    rng.below(10_000),
                    rng.below(5),
                    rng.word(),
                    rng.word(),
                    rng.below(2) == 0,
                );
                out.extend_from_slice(line.as_bytes());
            }
            "json"
        }
        _ => {
            while out.len() < len {
                out.extend_from_slice(&rng.next().to_le_bytes());
            }
            "bin"
        }
    };
    out.truncate(len);
    ext
}

/// The tree under `cache/tree`, built unless there already.
fn ensure_tree(cache: &Path, total: u64, files: usize) -> PathBuf {
    let tree = cache.join("tree");
    if tree.is_dir() {
        println!("tree: reusing {}", tree.display());
        return tree;
    }
    let partial = cache.join("tree.partial");
    if partial.exists() {
        fs::remove_dir_all(&partial).expect("remove an interrupted tree");
    }
    let started = Instant::now();
    let mut buf = Vec::new();
    for (n, size) in file_sizes(total, files).into_iter().enumerate() {
        let len = usize::try_from(size).expect("file size fits in memory");
        let ext = content(n, len, &mut buf);
        let path = partial.join(file_path(n, files, ext));
        fs::create_dir_all(path.parent().expect("a parent")).expect("create directory");
        fs::write(&path, &buf).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
    fs::rename(&partial, &tree).expect("publish the tree");
    println!(
        "tree: built {} in {:.1} s",
        tree.display(),
        started.elapsed().as_secs_f64()
    );
    tree
}

/// Reads every file once (so that each contender finds the tree in the page cache); returns
/// the bytes read.
fn warm(dir: &Path, buf: &mut [u8]) -> u64 {
    let mut bytes = 0;
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("read tree")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            bytes += warm(&path, buf);
        } else {
            let mut file = fs::File::open(&path).expect("open");
            loop {
                let n = file.read(buf).expect("read");
                if n == 0 {
                    break;
                }
                bytes += n as u64;
            }
        }
    }
    bytes
}

#[derive(Clone, Copy, Default)]
struct Figures {
    wall_s: f64,
    cpu_s: f64,
    peak_rss_mb: f64,
    /// oprun only: the server's RSS before the request.
    idle_rss_mb: f64,
    archive_mb: f64,
}

async fn snapshot(addr: std::net::SocketAddr, destination: &str) -> Snapshot {
    let channel = connect(addr).await;
    let mut snapshots = SnapshotServiceClient::new(channel.clone());
    let mut ops = OperationsClient::new(channel);
    let mut op = snapshots
        .create_snapshot(CreateSnapshotRequest {
            source_dir: "tree".into(),
            destination: destination.into(),
            request_id: String::new(),
        })
        .await
        .expect("CreateSnapshot")
        .into_inner();
    while !op.done {
        op = ops
            .wait_operation(wait_for(op.name.clone(), 60))
            .await
            .expect("WaitOperation")
            .into_inner();
    }
    match op.result {
        Some(operation::Result::Response(any)) => {
            Snapshot::decode(any.value.as_slice()).expect("a Snapshot response")
        }
        other => panic!("the snapshot failed: {other:?}"),
    }
}

fn run_oprun(rt: &tokio::runtime::Runtime, oprun: &str, cache: &Path) -> Figures {
    let destination = "out-oprun.tar.zst";
    let _ = fs::remove_file(cache.join(destination));
    let target = Target {
        label: "snapshot".into(),
        program: oprun.into(),
        args: vec![
            "serve".into(),
            "--snapshot-root".into(),
            cache.display().to_string(),
        ],
        nodes: 1,
    };
    let server = Server::start(&target);
    let idle_rss_mb = server.rss_mb();
    let cpu_before = server.cpu_seconds();
    let started = Instant::now();
    let snap = rt.block_on(snapshot(server.addr, destination));
    let wall_s = started.elapsed().as_secs_f64();
    let cpu_s = server.cpu_seconds() - cpu_before;
    let peak_rss_mb = server.peak_rss_mb();
    server.stop();
    fs::remove_file(cache.join(destination)).expect("remove oprun's archive");
    Figures {
        wall_s,
        cpu_s,
        peak_rss_mb,
        idle_rss_mb,
        archive_mb: snap.size_bytes as f64 / MB,
    }
}

/// `tar <args> -cf OUT -C tree .` under `/usr/bin/time -v` (when there).
fn run_tar(label: &str, compress: &[&str], cache: &Path, timed: bool) -> Figures {
    let out = cache.join(format!("out-{label}.tar.zst"));
    let report = cache.join(format!("time-{label}.txt"));
    let _ = fs::remove_file(&out);
    let mut command = if timed {
        let mut c = Command::new("/usr/bin/time");
        c.arg("-v").arg("-o").arg(&report).arg("tar");
        c
    } else {
        Command::new("tar")
    };
    command
        .args(compress)
        .arg("-cf")
        .arg(&out)
        .arg("-C")
        .arg(cache.join("tree"))
        .arg(".");
    let started = Instant::now();
    let status = command.status().expect("run tar");
    let wall_s = started.elapsed().as_secs_f64();
    assert!(status.success(), "{label}: tar failed: {status}");
    let archive_mb = fs::metadata(&out).map_or(0.0, |m| m.len() as f64 / MB);
    fs::remove_file(&out).expect("remove tar's archive");
    let times = fs::read_to_string(&report).unwrap_or_default();
    let _ = fs::remove_file(&report);
    let field = |name: &str| {
        times
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Figures {
        wall_s,
        cpu_s: field("User time (seconds):") + field("System time (seconds):"),
        peak_rss_mb: field("Maximum resident set size (kbytes):") / 1024.0,
        idle_rss_mb: 0.0,
        archive_mb,
    }
}

fn print(label: &str, f: &Figures) {
    let idle = if f.idle_rss_mb > 0.0 {
        format!(" (idle {:.0} MB)", f.idle_rss_mb)
    } else {
        String::new()
    };
    println!(
        "{label:<22} wall {:>6.2} s  cpu {:>6.2} s  peak rss {:>5.0} MB{idle}  archive {:>7.1} MB",
        f.wall_s, f.cpu_s, f.peak_rss_mb, f.archive_mb,
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn medians(all: &[Figures]) -> Figures {
    let m = |f: fn(&Figures) -> f64| median(all.iter().map(f).collect());
    Figures {
        wall_s: m(|f| f.wall_s),
        cpu_s: m(|f| f.cpu_s),
        peak_rss_mb: m(|f| f.peak_rss_mb),
        idle_rss_mb: m(|f| f.idle_rss_mb),
        archive_mb: m(|f| f.archive_mb),
    }
}

/// The first line `program args` prints, or `None` if it cannot run.
fn first_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Some(text.lines().next().unwrap_or_default().to_owned())
}

fn main() {
    let mb = env_or("SNAPSHOT_BENCH_MB", 1100u64).max(1);
    let files = env_or("SNAPSHOT_BENCH_FILES", 14000usize).max(1);
    let rounds = env_or("SNAPSHOT_BENCH_ROUNDS", 3usize).max(1);
    let oprun = env!("CARGO_BIN_EXE_oprun");

    let tar = first_line("tar", &["--version"]);
    let tar_zstd = Command::new("tar")
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("--zstd"))
        .unwrap_or(false);
    let zstd = first_line("zstd", &["--version"]);
    let timed = Path::new("/usr/bin/time").exists();
    let with_tar = match (&tar, tar_zstd, &zstd) {
        (Some(tar), true, Some(zstd)) => {
            println!("tools: {tar}; {zstd}");
            true
        }
        (None, _, _) => {
            println!("tools: no `tar` on the PATH: only oprun runs");
            false
        }
        (Some(_), false, _) => {
            println!("tools: this tar has no --zstd: only oprun runs");
            false
        }
        (Some(_), true, None) => {
            println!("tools: no `zstd` on the PATH: only oprun runs");
            false
        }
    };
    if with_tar && !timed {
        println!("tools: no /usr/bin/time: tar's CPU time and peak RSS are not measured");
    }

    let cache = repo_root()
        .join("target")
        .join(format!("snapshot-bench-tree-{mb}MB-{files}"));
    fs::create_dir_all(&cache).expect("create the cache directory");
    let tree = ensure_tree(&cache, mb * 1024 * 1024, files);
    let started = Instant::now();
    let bytes = warm(&tree, &mut vec![0u8; 1 << 20]);
    println!(
        "tree: {:.0} MB in {files} files (text-like, JSON-like, random by thirds), read in {:.1} s",
        bytes as f64 / MB,
        started.elapsed().as_secs_f64()
    );
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!("snapshot: {rounds} rounds, contenders interleaved, {cores} cores available");
    let _ = std::io::stdout().flush();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut labels = vec!["oprun"];
    if with_tar {
        labels.extend(["tar-zstd", "tar-zstd-T0"]);
    }
    let mut all: Vec<Vec<Figures>> = vec![Vec::new(); labels.len()];
    for r in 0..rounds {
        for (i, label) in labels.iter().enumerate() {
            let f = match *label {
                "oprun" => run_oprun(&rt, oprun, &cache),
                "tar-zstd" => run_tar(label, &["--zstd"], &cache, timed),
                _ => run_tar(label, &["-I", "zstd -T0"], &cache, timed),
            };
            print(&format!("round {} {label}", r + 1), &f);
            let _ = std::io::stdout().flush();
            all[i].push(f);
        }
    }
    println!("medians of {rounds} rounds:");
    let m: Vec<Figures> = all.iter().map(|f| medians(f)).collect();
    for (label, figures) in labels.iter().zip(&m) {
        print(label, figures);
    }
    for (label, figures) in labels.iter().zip(&m).skip(1) {
        println!(
            "  oprun / {label}: wall {:.2}, cpu {:.2}, archive size {:.3}",
            m[0].wall_s / figures.wall_s.max(1e-9),
            m[0].cpu_s / figures.cpu_s.max(1e-9),
            m[0].archive_mb / figures.archive_mb.max(1e-9),
        );
    }
}
