//! The `snapshot` kind: archives a directory tree on the server into a zstd-compressed tar
//! file, with both paths confined to the server's snapshot root.
//!
//! The archive is streamed (constant memory whatever the tree's size: zstd's buffers, at most
//! about 107 MiB with 2 cores, see [`archive`]) on a blocking thread, with zstd compressing in
//! a worker thread per core meanwhile, into a temporary file that is renamed into place only on
//! success; a cancel or a failure removes it.

pub mod archive;
pub mod paths;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use oprun::proto::oprun::v1::{CreateSnapshotRequest, Snapshot, SnapshotProgress};
use oprun::{Code, Kind, Task, TaskContext, TaskError, TaskOptions};

use archive::{write_archive, ArchiveError, ArchiveProgress};
use paths::{resolve, PathError};

/// The kind's name.
pub const KIND: &str = "snapshot";

/// Snapshots run at most this many at once by default (each compresses with a zstd worker per
/// core, so two at once share the cores, and each holds its own zstd buffers).
pub const DEFAULT_MAX_CONCURRENCY: usize = 2;

/// The `snapshot` task kind.
pub struct SnapshotTask {
    root: Arc<PathBuf>,
    /// Whether the root was made (or found): it is made once, not at every submission.
    root_made: Arc<std::sync::atomic::AtomicBool>,
}

impl SnapshotTask {
    /// A snapshot kind confined to `root`, which is created at the first snapshot if missing
    /// (so a node that never takes one, on a shared store, leaves nothing on its disk).
    ///
    /// # Errors
    /// A message naming the root when it cannot be resolved.
    pub fn new(root: &Path) -> Result<Self, String> {
        // Keep the root as configured (made absolute), not canonicalized: `resolve` accepts
        // absolute paths spelled through a symlinked root and names the root as configured.
        let root = std::path::absolute(root)
            .map_err(|e| format!("cannot resolve the snapshot root {}: {e}", root.display()))?;
        Ok(Self {
            root: Arc::new(root),
            root_made: Arc::default(),
        })
    }

    /// Creates the root if it is missing (once: a failure is tried again next time).
    fn make_root(&self) -> Result<(), TaskError> {
        use std::sync::atomic::Ordering;
        if self.root_made.load(Ordering::Acquire) {
            return Ok(());
        }
        std::fs::create_dir_all(self.root.as_path()).map_err(|e| {
            TaskError::new(
                Code::Unavailable,
                format!(
                    "cannot create the snapshot root {}: {e}",
                    self.root.display()
                ),
            )
        })?;
        self.root_made.store(true, Ordering::Release);
        Ok(())
    }

    /// The snapshot root, as configured (absolute).
    pub fn root(&self) -> &Path {
        &self.root
    }
}

fn path_error(e: PathError) -> TaskError {
    let code = match &e {
        PathError::OutsideRoot { .. } => Code::PermissionDenied,
        PathError::SourceMissing { .. } => Code::NotFound,
        PathError::DestinationExists { .. } => Code::AlreadyExists,
        PathError::SourceNotDirectory { .. }
        | PathError::DestinationInsideSource { .. }
        | PathError::Invalid { .. } => Code::InvalidArgument,
        PathError::Io { source, .. } if paths::is_shape_error(source) => Code::InvalidArgument,
        PathError::Io { .. } => Code::Unavailable,
    };
    TaskError::new(code, e.to_string())
}

impl Kind for SnapshotTask {
    const KIND: &'static str = KIND;
    const DETAILS_TYPE: Option<&'static str> = Some("oprun.v1.SnapshotProgress");
    type Input = CreateSnapshotRequest;
    type Output = Snapshot;
}

impl Task for SnapshotTask {
    fn options(&self) -> TaskOptions {
        // A re-run starts from scratch into a fresh temporary file, so it is safe.
        TaskOptions::default()
            .retry_safe(true)
            .max_concurrency(DEFAULT_MAX_CONCURRENCY)
    }

    fn validate(&self, input: &CreateSnapshotRequest) -> Result<(), TaskError> {
        self.make_root()?;
        resolve(&self.root, &input.source_dir, &input.destination)
            .map(drop)
            .map_err(path_error)
    }

    async fn run(
        &self,
        input: CreateSnapshotRequest,
        ctx: TaskContext,
    ) -> Result<Snapshot, TaskError> {
        // Resolve again: the tree may have changed since submission (or the operation was
        // submitted through another node).
        self.make_root()?;
        let paths =
            resolve(&self.root, &input.source_dir, &input.destination).map_err(path_error)?;
        ctx.status(format!("archiving {}", paths.source.display()));
        let token = ctx.cancellation_token().clone();
        let reporter = ctx.clone();
        let summary = tokio::task::spawn_blocking(move || {
            let mut report = |p: &ArchiveProgress| {
                let total = i64::try_from(p.bytes_total).unwrap_or(i64::MAX);
                let done = i64::try_from(p.bytes_done).unwrap_or(i64::MAX);
                reporter.progress(done, total, "bytes");
                reporter.details(&SnapshotProgress {
                    files_done: i64::try_from(p.files_done).unwrap_or(i64::MAX),
                    current_file: p.current_file.clone(),
                });
            };
            write_archive(&paths.source, &paths.destination, &token, &mut report)
        })
        .await
        .map_err(|e| TaskError::internal(format!("the archive thread failed: {e}")))?
        .map_err(|e| match e {
            ArchiveError::Cancelled => TaskError::cancelled(),
            ArchiveError::DestinationExists { .. } => {
                TaskError::new(Code::AlreadyExists, e.to_string())
            }
            ArchiveError::Io { ref source, .. } if paths::is_shape_error(source) => {
                TaskError::invalid_argument(e.to_string())
            }
            ArchiveError::Io { .. } => TaskError::new(Code::Unavailable, e.to_string()),
        })?;
        ctx.status("done");
        Ok(Snapshot {
            path: summary.path.display().to_string(),
            size_bytes: i64::try_from(summary.size_bytes).unwrap_or(i64::MAX),
            file_count: i64::try_from(summary.file_count).unwrap_or(i64::MAX),
            sha256: summary.sha256,
        })
    }
}
