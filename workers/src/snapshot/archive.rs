//! Streaming archive writer for the `snapshot` task kind.
//!
//! [`write_archive`] turns a directory tree into one tar file compressed with zstd (readable by
//! `tar --zstd -xf`). It streams: file contents pass through a fixed 256 KiB buffer and zstd
//! compresses in fixed-size jobs, so memory stays constant whatever the size of the tree, and the
//! archive is written to a hidden partial file next to the destination that becomes the
//! destination only once it is complete and on disk.
//!
//! # Threads and memory
//!
//! zstd runs multi-threaded (its `zstdmt` mode, one worker per core this process may use): the
//! calling thread walks the tree, reads files and hashes the compressed output while zstd's
//! workers compress, so reading, hashing and compressing overlap instead of taking turns; alone,
//! compression is what bounds a snapshot's speed.
//!
//! Memory is bounded by the number of workers, not by the tree. At level 3 (a 2 MiB window)
//! zstd 1.5.7 cuts the stream into 8 MiB jobs (each also reading the previous job's last
//! 256 KiB) and holds: an input ring of 8 MiB × (workers + 3); an output buffer of up to 8 MiB
//! per job in flight, with at most 2^(⌊log2(workers + 2)⌋ + 1) jobs in flight (8 for 2
//! workers); and a context of about 1.3 MiB per worker. That is at most about 107 MiB with 2
//! workers (40 + 64 + 3) and 226 MiB with 8; output is flushed as it is produced, so the peak
//! measured with `ZSTD_sizeof_CCtx` over 120 MiB of mixed input was lower: 49 MiB with 1
//! worker, 67 MiB with 2, 109 MiB with 4, 151 MiB with 8.
//!
//! The output depends only on the input, the level and the job size, not on the number of
//! workers or on timing (checked for 1 to 16 workers), so the same tree gives the same archive
//! on any machine; it is not the same bytes as single-threaded zstd's.

use std::ffi::OsString;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

/// The most bytes of a source file read (and compressed) between two cancellation checks.
const CHUNK_SIZE: usize = 256 * 1024;
/// The progress callback is called after at least this many bytes of input (or per file).
const PROGRESS_EVERY: u64 = 64 * 1024;
/// zstd compression level.
const ZSTD_LEVEL: i32 = 3;
/// zstd worker threads when the number of cores cannot be read.
const ZSTD_WORKERS_FALLBACK: u32 = 1;
/// Capacity of the buffer in front of the output file.
const OUTPUT_BUFFER: usize = 256 * 1024;
/// How many partial-file names are tried before giving up.
const PARTIAL_NAME_ATTEMPTS: u32 = 16;
/// Longest prefix of the destination's file name kept in the partial file's name, in bytes.
const PARTIAL_NAME_KEEP: usize = 200;

/// Where an archive run has got to; passed to the progress callback.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveProgress {
    /// Bytes of regular-file content archived so far.
    pub bytes_done: u64,
    /// Bytes of regular-file content in the tree, as counted before archiving started (raised
    /// if files grew meanwhile, so it is never below `bytes_done`).
    pub bytes_total: u64,
    /// Regular files archived so far.
    pub files_done: u64,
    /// The file being archived (or last archived), relative to the source directory.
    pub current_file: String,
}

/// What a finished archive is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveSummary {
    /// Where the archive was written (the destination asked for).
    pub path: PathBuf,
    /// Size of the compressed archive in bytes.
    pub size_bytes: u64,
    /// Number of regular files archived (directories and symbolic links are not counted).
    pub file_count: u64,
    /// SHA-256 of the compressed archive, lowercase hex.
    pub sha256: String,
}

/// Why an archive run failed. Whatever the reason, the destination was not created and no
/// partial file was left behind.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The cancellation token fired.
    #[error("snapshot cancelled")]
    Cancelled,
    /// Reading the source tree or writing the archive failed.
    #[error("snapshot I/O error at {path:?}: {source}")]
    Io {
        /// The file or directory the failure concerns.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// The destination exists (it was there at the start, or appeared while archiving); it
    /// was left untouched.
    #[error("destination {path:?} already exists; snapshots never overwrite, choose a new name")]
    DestinationExists {
        /// The destination.
        path: PathBuf,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Archives the tree under `source` into a zstd-compressed tar file at `destination`.
///
/// Blocking: run it on a blocking thread. Walks `source` once to total the bytes of regular
/// files, then streams the tree into `<destination's dir>/.<file name>.partial-<pid>-<nanos>`:
/// tar (GNU headers, paths relative to `source`, directories and symlinks stored as such —
/// symlinks are never followed — regular files streamed in chunks of at most 256 KiB so memory
/// stays constant whatever the tree's size) → zstd encoder (level 3, multi-threaded: one
/// worker thread per available core compresses while this thread reads and hashes; its
/// buffers are bounded by the number of workers, at most about 107 MiB with 2, see the
/// [module docs](self)) → a writer that computes the SHA-256 of the compressed bytes and
/// counts them → `BufWriter<File>`.
///
/// Checks `cancel.is_cancelled()` before each entry and each chunk and returns
/// [`ArchiveError::Cancelled`] (once zstd's workers have finished the few jobs in flight).
/// Calls `progress` at most every 64 KiB of input or per file, plus once when the totals are
/// known and once at the end (cheap; the caller coalesces).
///
/// On success: finishes zstd, flushes, fsyncs the file, links it to `destination` only if
/// `destination` still does not exist (otherwise [`ArchiveError::DestinationExists`]), and
/// fsyncs the parent directory. On any error, cancel or panic the partial file (and any parent
/// directory this call created) is removed and `destination` is never created. Missing parent
/// directories of `destination` are created.
///
/// Entries are archived in a deterministic order (each directory's entries sorted by name,
/// a directory before its contents). `file_count` counts regular files only. Entries that
/// vanish between the walk and the archiving are skipped; so are entries replaced by something
/// else meanwhile, and special files (FIFOs, sockets, devices). A file that shrank while being
/// read is padded with zeros to the size its header announced, one that grew is cut there.
/// Unreadable files and directories are an [`ArchiveError::Io`].
pub fn write_archive(
    source: &Path,
    destination: &Path,
    cancel: &CancellationToken,
    progress: &mut dyn FnMut(&ArchiveProgress),
) -> Result<ArchiveSummary, ArchiveError> {
    if cancel.is_cancelled() {
        return Err(ArchiveError::Cancelled);
    }
    ensure_absent(destination)?;
    let (parent, file_name) = split_destination(destination)?;

    let bytes_total = total_bytes(source, cancel)?;
    let mut reporter = Reporter {
        callback: progress,
        state: ArchiveProgress {
            bytes_total,
            ..ArchiveProgress::default()
        },
        unreported: 0,
    };
    reporter.report();

    let mut cleanup = Cleanup::default();
    cleanup.created_dirs = create_parents(&parent)?;
    let (partial_path, partial_file) = create_partial(&parent, &file_name)?;
    cleanup.partial = Some(partial_path.clone());
    let partial_id = partial_file.metadata().ok().and_then(|meta| file_id(&meta));

    let hashing = HashingWriter {
        inner: BufWriter::with_capacity(OUTPUT_BUFFER, partial_file),
        hasher: Sha256::new(),
        count: 0,
    };
    let mut encoder = zstd::Encoder::new(hashing, ZSTD_LEVEL).map_err(io_error(&partial_path))?;
    let workers = zstd_workers();
    if let Err(e) = encoder.multithread(workers) {
        // Only a zstd built without threads refuses; single-threaded it is slower, not wrong.
        tracing::warn!(workers, error = %e, "zstd refused worker threads; compressing on one");
    }
    let mut builder = tar::Builder::new(encoder);
    builder.mode(tar::HeaderMode::Complete);
    builder.follow_symlinks(false);

    let mut chunk = vec![0u8; CHUNK_SIZE];
    let mut walker = Walker::new(source, partial_id)?;
    while let Some(entry) = walker.next_entry()? {
        if cancel.is_cancelled() {
            return Err(ArchiveError::Cancelled);
        }
        let absolute = source.join(&entry.relative);
        let file_type = entry.meta.file_type();
        if file_type.is_dir() {
            let mut header = header_for(&entry.meta);
            builder
                .append_data(&mut header, &entry.relative, io::empty())
                .map_err(io_error(&partial_path))?;
        } else if file_type.is_symlink() {
            let target = match fs::read_link(&absolute) {
                Ok(target) => target,
                // Gone, or no longer a symbolic link: it changed under us, skip it.
                Err(e) if vanished(&e) || e.kind() == io::ErrorKind::InvalidInput => continue,
                Err(e) => return Err(io_error(&absolute)(e)),
            };
            let mut header = header_for(&entry.meta);
            builder
                .append_link(&mut header, &entry.relative, &target)
                .map_err(io_error(&partial_path))?;
        } else if file_type.is_file() {
            let file = match File::open(&absolute) {
                Ok(file) => file,
                Err(e) if vanished(&e) => continue,
                Err(e) => return Err(io_error(&absolute)(e)),
            };
            let meta = file.metadata().map_err(io_error(&absolute))?;
            if !meta.is_file() || !same_file(&entry.meta, &meta) {
                // Replaced between the walk and the open (perhaps by a symbolic link, which
                // the open followed): what the walk saw is gone.
                continue;
            }
            reporter.state.current_file = entry.relative.to_string_lossy().into_owned();
            let mut header = header_for(&meta);
            let mut reader = ChunkedReader {
                file,
                remaining: meta.len(),
                chunk: &mut chunk,
                start: 0,
                end: 0,
                cancel,
                reporter: &mut reporter,
                failure: None,
            };
            let appended = builder.append_data(&mut header, &entry.relative, &mut reader);
            let failure = reader.failure.take();
            if let Err(e) = appended {
                return Err(match failure {
                    Some(ReadFailure::Cancelled) => ArchiveError::Cancelled,
                    Some(ReadFailure::Io(source)) => ArchiveError::Io {
                        path: absolute,
                        source,
                    },
                    None => io_error(&partial_path)(e),
                });
            }
            reporter.state.files_done += 1;
            reporter.report();
        }
        // Anything else (FIFO, socket, device) is not archived.
    }

    if cancel.is_cancelled() {
        return Err(ArchiveError::Cancelled);
    }
    let encoder = builder.into_inner().map_err(io_error(&partial_path))?;
    let hashing = encoder.finish().map_err(io_error(&partial_path))?;
    let HashingWriter {
        inner,
        hasher,
        count,
    } = hashing;
    let file = inner
        .into_inner()
        .map_err(|e| io_error(&partial_path)(e.into_error()))?;
    file.sync_all().map_err(io_error(&partial_path))?;
    drop(file);

    reporter.state.bytes_total = reporter.state.bytes_done;
    reporter.report();

    if cancel.is_cancelled() {
        return Err(ArchiveError::Cancelled);
    }
    publish(&partial_path, destination)?;
    cleanup.partial = None;
    if let Err(e) = sync_dir(&parent) {
        // The archive is not known to be durable: take it back rather than report success
        // for something a crash could lose.
        let _ = fs::remove_file(destination);
        return Err(io_error(&parent)(e));
    }
    cleanup.created_dirs.clear();

    Ok(ArchiveSummary {
        path: destination.to_path_buf(),
        size_bytes: count,
        file_count: reporter.state.files_done,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// zstd worker threads for one archive: one per core this process may use, at least one.
fn zstd_workers() -> u32 {
    std::thread::available_parallelism().map_or(ZSTD_WORKERS_FALLBACK, |n| {
        u32::try_from(n.get()).unwrap_or(u32::MAX)
    })
}

/// Fails with [`ArchiveError::DestinationExists`] if anything (even a dangling symbolic link)
/// is at `destination`.
fn ensure_absent(destination: &Path) -> Result<(), ArchiveError> {
    match fs::symlink_metadata(destination) {
        Ok(_) => Err(ArchiveError::DestinationExists {
            path: destination.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(destination)(e)),
    }
}

/// The destination's directory (`.` for a bare file name) and file name.
fn split_destination(destination: &Path) -> Result<(PathBuf, OsString), ArchiveError> {
    let Some(file_name) = destination.file_name() else {
        return Err(io_error(destination)(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the destination must end in a file name",
        )));
    };
    let parent = match destination.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, file_name.to_os_string()))
}

/// Creates `dir` and its missing ancestors; returns the ones it created, deepest first.
fn create_parents(dir: &Path) -> Result<Vec<PathBuf>, ArchiveError> {
    let mut missing = Vec::new();
    for ancestor in dir.ancestors() {
        if ancestor.as_os_str().is_empty() {
            break;
        }
        match fs::symlink_metadata(ancestor) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(ancestor.to_path_buf()),
            Err(e) => return Err(io_error(ancestor)(e)),
        }
    }
    if let Err(e) = fs::create_dir_all(dir) {
        for created in &missing {
            let _ = fs::remove_dir(created);
        }
        return Err(io_error(dir)(e));
    }
    Ok(missing)
}

/// Creates `<dir>/.<file name>.partial-<pid>-<nanos>` exclusively.
fn create_partial(dir: &Path, file_name: &OsString) -> Result<(PathBuf, File), ArchiveError> {
    let name = file_name.to_string_lossy();
    let mut keep = name.len().min(PARTIAL_NAME_KEEP);
    while !name.is_char_boundary(keep) {
        keep -= 1;
    }
    let stem = name.get(..keep).unwrap_or_default();
    let pid = std::process::id();
    let mut last_error = None;
    for attempt in 0..PARTIAL_NAME_ATTEMPTS {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let path = dir.join(format!(".{stem}.partial-{pid}-{nanos}-{attempt}"));
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_error = Some((path, e)),
            Err(e) => return Err(io_error(&path)(e)),
        }
    }
    let (path, error) = last_error.unwrap_or_else(|| {
        (
            dir.to_path_buf(),
            io::Error::other("no partial file name could be created"),
        )
    });
    Err(io_error(&path)(error))
}

/// Makes the finished partial file the destination, unless the destination exists by now.
///
/// A hard link cannot replace an existing file, so linking then unlinking the partial name is
/// an atomic create-if-absent. File systems without hard links fall back to check-then-rename.
fn publish(partial: &Path, destination: &Path) -> Result<(), ArchiveError> {
    match fs::hard_link(partial, destination) {
        Ok(()) => {
            // Both names point at the archive now; the partial name is only clutter. A failure
            // here leaves a hidden file but a correct destination, so it is not an error.
            let _ = fs::remove_file(partial);
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Err(ArchiveError::DestinationExists {
                path: destination.to_path_buf(),
            })
        }
        Err(_) => {
            ensure_absent(destination)?;
            fs::rename(partial, destination).map_err(io_error(destination))
        }
    }
}

/// Flushes a directory's entries to disk. File systems that cannot fsync a directory are
/// taken at their word.
fn sync_dir(dir: &Path) -> io::Result<()> {
    match File::open(dir).and_then(|d| d.sync_all()) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
            ) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Removes the partial file and the directories this run created unless disarmed, whether
/// the run returns early or panics.
#[derive(Default)]
struct Cleanup {
    partial: Option<PathBuf>,
    /// Deepest first.
    created_dirs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(partial) = self.partial.take() {
            let _ = fs::remove_file(partial);
        }
        for dir in &self.created_dirs {
            // Only succeeds while empty, so nothing someone else put there is lost.
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Counts and hashes every byte written through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        let written_bytes = buf.get(..written).unwrap_or(buf);
        self.hasher.update(written_bytes);
        self.count = self.count.saturating_add(written_bytes.len() as u64);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Sends progress to the callback, at most every [`PROGRESS_EVERY`] bytes.
struct Reporter<'a> {
    callback: &'a mut dyn FnMut(&ArchiveProgress),
    state: ArchiveProgress,
    unreported: u64,
}

impl Reporter<'_> {
    fn add_bytes(&mut self, bytes: u64) {
        let state = &mut self.state;
        state.bytes_done = state.bytes_done.saturating_add(bytes);
        state.bytes_total = state.bytes_total.max(state.bytes_done);
        self.unreported = self.unreported.saturating_add(bytes);
        if self.unreported >= PROGRESS_EVERY {
            self.report();
        }
    }

    fn report(&mut self) {
        self.unreported = 0;
        (self.callback)(&self.state);
    }
}

/// Why a [`ChunkedReader`] stopped; the tar builder only sees a stand-in error.
enum ReadFailure {
    Cancelled,
    Io(io::Error),
}

/// Feeds one source file to the tar builder exactly `remaining` bytes long, a chunk of at most
/// [`CHUNK_SIZE`] at a time, checking for cancellation before each chunk and reporting
/// progress as bytes are handed on.
struct ChunkedReader<'a, 'r> {
    file: File,
    /// Bytes still to read from the file (what its header announced, less what was read).
    remaining: u64,
    chunk: &'a mut [u8],
    start: usize,
    end: usize,
    cancel: &'a CancellationToken,
    reporter: &'a mut Reporter<'r>,
    failure: Option<ReadFailure>,
}

impl ChunkedReader<'_, '_> {
    fn fill(&mut self) -> io::Result<()> {
        if self.cancel.is_cancelled() {
            self.failure = Some(ReadFailure::Cancelled);
            return Err(io::Error::other("snapshot cancelled"));
        }
        let want = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(self.chunk.len());
        let Some(buffer) = self.chunk.get_mut(..want) else {
            return Err(io::Error::other("chunk buffer too small"));
        };
        let read = loop {
            match self.file.read(buffer) {
                Ok(read) => break read,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let stand_in = io::Error::other(format!("reading the source failed: {e}"));
                    self.failure = Some(ReadFailure::Io(e));
                    return Err(stand_in);
                }
            }
        };
        let filled = if read == 0 {
            // The file shrank since its header was written: pad with zeros, as GNU tar does,
            // so the archive stays well-formed.
            buffer.fill(0);
            want
        } else {
            read
        };
        self.start = 0;
        self.end = filled;
        self.remaining -= filled as u64;
        Ok(())
    }
}

impl Read for ChunkedReader<'_, '_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.start >= self.end {
            if self.remaining == 0 {
                return Ok(0);
            }
            self.fill()?;
        }
        let available = self.chunk.get(self.start..self.end).unwrap_or_default();
        let n = available.len().min(out.len());
        if let (Some(to), Some(from)) = (out.get_mut(..n), available.get(..n)) {
            to.copy_from_slice(from);
        }
        self.start += n;
        self.reporter.add_bytes(n as u64);
        Ok(n)
    }
}

/// A tar header (GNU format) describing `meta`: type, permission bits, owner, mtime, size.
fn header_for(meta: &Metadata) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
    if let Some(bits) = permission_bits(meta) {
        header.set_mode(bits);
    }
    header
}

#[cfg(unix)]
fn permission_bits(meta: &Metadata) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    Some(meta.mode() & 0o7777)
}

#[cfg(not(unix))]
fn permission_bits(_meta: &Metadata) -> Option<u32> {
    None
}

/// The (device, inode) pair identifying a file, where the platform has one.
#[cfg(unix)]
fn file_id(meta: &Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn file_id(_meta: &Metadata) -> Option<(u64, u64)> {
    None
}

/// Whether two metadata describe the same file (by identity where the platform has one).
fn same_file(a: &Metadata, b: &Metadata) -> bool {
    match (file_id(a), file_id(b)) {
        (Some(a), Some(b)) => a == b,
        _ => a.len() == b.len() && a.modified().ok() == b.modified().ok(),
    }
}

/// Errors meaning the entry is gone or was replaced by something else.
fn vanished(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Totals the bytes of the regular files under `source`.
fn total_bytes(source: &Path, cancel: &CancellationToken) -> Result<u64, ArchiveError> {
    let mut walker = Walker::new(source, None)?;
    let mut bytes = 0u64;
    while let Some(entry) = walker.next_entry()? {
        if cancel.is_cancelled() {
            return Err(ArchiveError::Cancelled);
        }
        if entry.meta.is_file() {
            bytes = bytes.saturating_add(entry.meta.len());
        }
    }
    Ok(bytes)
}

/// One entry found by the [`Walker`].
struct WalkEntry {
    /// Path relative to the source directory.
    relative: PathBuf,
    /// What `symlink_metadata` said about it.
    meta: Metadata,
}

/// A directory being walked: its path relative to the source and the names still to visit,
/// sorted in reverse so that `pop` yields them in order.
struct Frame {
    relative: PathBuf,
    pending: Vec<OsString>,
}

/// Depth-first, sorted, symlink-free walk of a tree with an explicit stack (no recursion, so
/// deep trees cannot overflow the thread's stack). Yields each directory before its contents.
struct Walker<'a> {
    source: &'a Path,
    stack: Vec<Frame>,
    skip: Option<(u64, u64)>,
}

impl<'a> Walker<'a> {
    fn new(source: &'a Path, skip: Option<(u64, u64)>) -> Result<Self, ArchiveError> {
        let pending = sorted_names(source).map_err(io_error(source))?;
        Ok(Walker {
            source,
            stack: vec![Frame {
                relative: PathBuf::new(),
                pending,
            }],
            skip,
        })
    }

    fn next_entry(&mut self) -> Result<Option<WalkEntry>, ArchiveError> {
        loop {
            let Some(frame) = self.stack.last_mut() else {
                return Ok(None);
            };
            let Some(name) = frame.pending.pop() else {
                self.stack.pop();
                continue;
            };
            let relative = frame.relative.join(name);
            let absolute = self.source.join(&relative);
            let meta = match fs::symlink_metadata(&absolute) {
                Ok(meta) => meta,
                Err(e) if vanished(&e) => continue,
                Err(e) => return Err(io_error(&absolute)(e)),
            };
            if self.skip.is_some() && file_id(&meta) == self.skip {
                continue;
            }
            if meta.is_dir() {
                match sorted_names(&absolute) {
                    Ok(pending) => self.stack.push(Frame {
                        relative: relative.clone(),
                        pending,
                    }),
                    Err(e) if vanished(&e) => continue,
                    Err(e) => return Err(io_error(&absolute)(e)),
                }
            }
            return Ok(Some(WalkEntry { relative, meta }));
        }
    }
}

/// The names in a directory, sorted in reverse byte order.
fn sorted_names(dir: &Path) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        names.push(entry?.file_name());
    }
    names.sort_unstable_by(|a, b| b.cmp(a));
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::symlink;
    use std::process::Command;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// What a tree holds, by relative path.
    #[derive(Debug, PartialEq, Eq)]
    enum Node {
        Dir,
        File(Vec<u8>),
        Link(PathBuf),
    }

    fn snapshot_of(root: &Path) -> BTreeMap<PathBuf, Node> {
        fn visit(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Node>) {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let relative = path.strip_prefix(root).unwrap().to_path_buf();
                let meta = fs::symlink_metadata(&path).unwrap();
                if meta.file_type().is_symlink() {
                    out.insert(relative, Node::Link(fs::read_link(&path).unwrap()));
                } else if meta.is_dir() {
                    out.insert(relative, Node::Dir);
                    visit(root, &path, out);
                } else {
                    out.insert(relative, Node::File(fs::read(&path).unwrap()));
                }
            }
        }
        let mut out = BTreeMap::new();
        visit(root, root, &mut out);
        out
    }

    fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            // xorshift64*
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            out.extend_from_slice(&seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// Nested dirs, an empty dir, an empty file, a 3 MiB random file, and symlinks.
    fn build_tree(root: &Path) {
        fs::create_dir_all(root.join("a/b/c")).unwrap();
        fs::create_dir(root.join("empty-dir")).unwrap();
        fs::write(root.join("empty-file"), b"").unwrap();
        fs::write(
            root.join("a/b/c/big.bin"),
            pseudo_random(3 * 1024 * 1024, 7),
        )
        .unwrap();
        fs::write(root.join("a/hello.txt"), b"hello, snapshot\n").unwrap();
        fs::write(root.join("a/b/notes.md"), b"# notes\n").unwrap();
        symlink("b/c/big.bin", root.join("a/link-to-big")).unwrap();
        symlink("/definitely/not/here", root.join("dangling")).unwrap();
        let long = "x".repeat(120);
        fs::create_dir_all(root.join(&long)).unwrap();
        fs::write(root.join(&long).join(&long), b"long name").unwrap();
    }

    fn sha256_of(path: &Path) -> String {
        hex::encode(Sha256::digest(fs::read(path).unwrap()))
    }

    fn dir_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn no_progress() -> impl FnMut(&ArchiveProgress) {
        |_| {}
    }

    #[test]
    fn round_trip_preserves_tree_and_reports_truthfully() {
        let work = tempfile::tempdir().unwrap();
        let source = work.path().join("src");
        build_tree(&source);
        let destination = work.path().join("out/nested/snap.tar.zst");

        let mut calls: Vec<ArchiveProgress> = Vec::new();
        let summary = write_archive(&source, &destination, &CancellationToken::new(), &mut |p| {
            calls.push(p.clone())
        })
        .unwrap();

        assert_eq!(summary.path, destination);
        assert_eq!(
            summary.size_bytes,
            fs::metadata(&destination).unwrap().len()
        );
        assert_eq!(summary.sha256, sha256_of(&destination));
        assert_eq!(summary.file_count, 5);
        // Only the archive in its directory: no partial file left.
        assert_eq!(
            dir_names(destination.parent().unwrap()),
            vec!["snap.tar.zst"]
        );

        let last = calls.last().unwrap();
        let expected_total = (3 * 1024 * 1024 + 16 + 8 + 9) as u64;
        assert_eq!(last.bytes_total, expected_total);
        assert_eq!(last.bytes_done, last.bytes_total);
        assert_eq!(last.files_done, 5);
        assert!(calls.len() >= 3 * 1024 * 1024 / PROGRESS_EVERY as usize / 2);
        assert!(calls.windows(2).all(|w| w[0].bytes_done <= w[1].bytes_done));
        assert!(calls.iter().all(|c| c.bytes_done <= c.bytes_total));

        let original = snapshot_of(&source);

        // Extract with the tar and zstd crates.
        let extracted = work.path().join("extracted-crate");
        fs::create_dir(&extracted).unwrap();
        let decoder = zstd::Decoder::new(File::open(&destination).unwrap()).unwrap();
        let mut archive = tar::Archive::new(decoder);
        let mut order = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            order.push(entry.path().unwrap().into_owned());
            entry.unpack_in(&extracted).unwrap();
        }
        assert_eq!(snapshot_of(&extracted), original);
        // Deterministic order: sorted by name, each directory before its contents.
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted);
        assert!(order.iter().all(|p| p.is_relative()));

        // Extract with the system's tar, where it has zstd support.
        let tar_has_zstd = Command::new("tar")
            .arg("--help")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("--zstd"))
            .unwrap_or(false);
        let zstd_present = Command::new("zstd").arg("--version").output().is_ok();
        if tar_has_zstd && zstd_present {
            let extracted = work.path().join("extracted-binary");
            fs::create_dir(&extracted).unwrap();
            let status = Command::new("tar")
                .arg("--zstd")
                .arg("-xf")
                .arg(&destination)
                .arg("-C")
                .arg(&extracted)
                .status()
                .unwrap();
            assert!(status.success());
            assert_eq!(snapshot_of(&extracted), original);
        } else {
            eprintln!("skipping `tar --zstd -xf`: tar without --zstd or zstd not installed");
        }
    }

    #[test]
    fn same_tree_gives_same_archive() {
        let work = tempfile::tempdir().unwrap();
        let source = work.path().join("src");
        build_tree(&source);
        let cancel = CancellationToken::new();
        let first = write_archive(
            &source,
            &work.path().join("1.tar.zst"),
            &cancel,
            &mut no_progress(),
        )
        .unwrap();
        let second = write_archive(
            &source,
            &work.path().join("2.tar.zst"),
            &cancel,
            &mut no_progress(),
        )
        .unwrap();
        assert_eq!(first.sha256, second.sha256);
        assert_eq!(first.size_bytes, second.size_bytes);
    }

    #[test]
    fn cancelled_before_start_creates_nothing() {
        let work = tempfile::tempdir().unwrap();
        let source = work.path().join("src");
        build_tree(&source);
        let out = work.path().join("out");
        fs::create_dir(&out).unwrap();
        let destination = out.join("snap.tar.zst");
        let cancel = CancellationToken::new();
        cancel.cancel();
        let mut called = false;
        let err =
            write_archive(&source, &destination, &cancel, &mut |_| called = true).unwrap_err();
        assert!(matches!(err, ArchiveError::Cancelled), "{err}");
        assert!(!destination.exists());
        assert!(dir_names(&out).is_empty());
        assert!(!called);
    }

    #[test]
    fn cancelled_mid_run_from_another_thread_cleans_up() {
        let work = tempfile::tempdir().unwrap();
        let source = work.path().join("src");
        fs::create_dir(&source).unwrap();
        // 64 MiB, sparse: cheap to create, long enough to archive.
        let big = File::create(source.join("big.img")).unwrap();
        big.set_len(64 * 1024 * 1024).unwrap();
        drop(big);
        let out = work.path().join("out");
        let destination = out.join("deep/snap.tar.zst");

        let cancel = CancellationToken::new();
        let (reached_tx, reached_rx) = mpsc::channel::<()>();
        let (cancelled_tx, cancelled_rx) = mpsc::channel::<Instant>();
        let canceller = {
            let cancel = cancel.clone();
            std::thread::spawn(move || {
                reached_rx.recv().unwrap();
                cancel.cancel();
                cancelled_tx.send(Instant::now()).unwrap();
            })
        };

        let mut cancelled_at = None;
        let mut seen_after_cancel = 0u64;
        let mut last_done = 0u64;
        let result = write_archive(&source, &destination, &cancel, &mut |p| {
            last_done = p.bytes_done;
            if cancelled_at.is_none() && p.bytes_done >= 4 * 1024 * 1024 {
                // Hand over to the other thread and wait until it has cancelled, so the
                // cancel certainly lands mid-run.
                reached_tx.send(()).unwrap();
                cancelled_at = Some(cancelled_rx.recv().unwrap());
                seen_after_cancel = p.bytes_done;
            }
        });
        let returned_at = Instant::now();
        canceller.join().unwrap();

        let err = result.unwrap_err();
        assert!(matches!(err, ArchiveError::Cancelled), "{err}");
        let cancelled_at = cancelled_at.expect("the run reached 4 MiB");
        let latency = returned_at.duration_since(cancelled_at);
        eprintln!("cancel latency: {latency:?}");
        assert!(latency < Duration::from_secs(1), "took {latency:?}");
        // At most one chunk was archived after the cancel.
        assert!(last_done - seen_after_cancel <= CHUNK_SIZE as u64);
        assert!(last_done < 64 * 1024 * 1024);
        assert!(!destination.exists());
        // Neither the partial file nor the directories the run created are left.
        assert!(!out.exists(), "{:?}", out);
        assert_eq!(dir_names(work.path()), vec!["src"]);
    }

    #[test]
    fn destination_created_meanwhile_is_left_untouched() {
        let work = tempfile::tempdir().unwrap();
        let source = work.path().join("src");
        build_tree(&source);
        let destination = work.path().join("snap.tar.zst");
        let mut created = false;
        let err = write_archive(
            &source,
            &destination,
            &CancellationToken::new(),
            &mut |_| {
                if !created {
                    fs::write(&destination, b"someone else's").unwrap();
                    created = true;
                }
            },
        )
        .unwrap_err();
        assert!(matches!(&err, ArchiveError::DestinationExists { path } if path == &destination));
        assert_eq!(fs::read(&destination).unwrap(), b"someone else's");
        assert_eq!(dir_names(work.path()), vec!["snap.tar.zst", "src"]);
    }

    #[test]
    fn existing_destination_is_refused_up_front() {
        let work = tempfile::tempdir().unwrap();
        let source = work.path().join("src");
        build_tree(&source);
        let destination = work.path().join("dangling.tar.zst");
        symlink("nowhere", &destination).unwrap();
        let mut called = false;
        let err = write_archive(
            &source,
            &destination,
            &CancellationToken::new(),
            &mut |_| called = true,
        )
        .unwrap_err();
        assert!(
            matches!(err, ArchiveError::DestinationExists { .. }),
            "{err}"
        );
        assert!(!called);
        assert_eq!(fs::read_link(&destination).unwrap(), Path::new("nowhere"));
    }

    #[test]
    fn missing_source_is_an_io_error_and_leaves_nothing() {
        let work = tempfile::tempdir().unwrap();
        let destination = work.path().join("out/snap.tar.zst");
        let err = write_archive(
            &work.path().join("absent"),
            &destination,
            &CancellationToken::new(),
            &mut no_progress(),
        )
        .unwrap_err();
        assert!(matches!(&err, ArchiveError::Io { path, .. } if path.ends_with("absent")));
        assert!(dir_names(work.path()).is_empty());
    }

    #[test]
    fn entries_vanishing_after_the_walk_are_skipped() {
        let work = tempfile::tempdir().unwrap();
        let source = work.path().join("src");
        build_tree(&source);
        let destination = work.path().join("snap.tar.zst");
        let mut calls: Vec<ArchiveProgress> = Vec::new();
        let summary = write_archive(&source, &destination, &CancellationToken::new(), &mut |p| {
            if calls.is_empty() {
                // The first call comes after the totalling walk: remove things it counted.
                fs::remove_file(source.join("a/hello.txt")).unwrap();
                fs::remove_dir(source.join("empty-dir")).unwrap();
            }
            calls.push(p.clone());
        })
        .unwrap();
        assert_eq!(summary.file_count, 4);
        let last = calls.last().unwrap();
        assert_eq!(last.bytes_done, last.bytes_total);
        assert!(last.bytes_total < calls[0].bytes_total);

        let extracted = work.path().join("extracted");
        let decoder = zstd::Decoder::new(File::open(&destination).unwrap()).unwrap();
        tar::Archive::new(decoder).unpack(&extracted).unwrap();
        assert_eq!(snapshot_of(&extracted), snapshot_of(&source));
    }

    #[test]
    fn unreadable_file_is_an_io_error() {
        use std::os::unix::fs::PermissionsExt;
        let work = tempfile::tempdir().unwrap();
        let source = work.path().join("src");
        build_tree(&source);
        let secret = source.join("a/secret");
        fs::write(&secret, b"no").unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).unwrap();
        if File::open(&secret).is_ok() {
            eprintln!("skipping: running with privileges that read mode-000 files");
            return;
        }
        let destination = work.path().join("snap.tar.zst");
        let err = write_archive(
            &source,
            &destination,
            &CancellationToken::new(),
            &mut no_progress(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, ArchiveError::Io { path, .. } if path == &secret),
            "{err}"
        );
        assert_eq!(dir_names(work.path()), vec!["src"]);
    }

    #[test]
    fn archive_inside_source_does_not_swallow_itself() {
        let work = tempfile::tempdir().unwrap();
        let source = work.path().join("src");
        build_tree(&source);
        let destination = source.join("self.tar.zst");
        let summary = write_archive(
            &source,
            &destination,
            &CancellationToken::new(),
            &mut no_progress(),
        )
        .unwrap();
        let decoder = zstd::Decoder::new(File::open(&destination).unwrap()).unwrap();
        let mut archive = tar::Archive::new(decoder);
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains("partial")), "{names:?}");
        assert_eq!(summary.file_count, 5);
    }
}
