//! Path confinement for the `snapshot` task kind.
//!
//! A snapshot request names a source directory and a destination file as strings. Both must
//! stay inside the server's snapshot root: [`resolve`] turns them into absolute, canonical
//! paths and refuses anything that leads outside the root, whether through an absolute path
//! elsewhere, through `..`, or through a symbolic link at any component.
//!
//! Resolution follows the kernel's own rules: every existing component is looked at with
//! `symlink_metadata`, symbolic links are expanded where they stand (so `link/..` means the
//! parent of the link's target, as it does for `open(2)`), and only the part of the path that
//! does not exist yet is taken literally.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use oprun::error::quote;

/// The most symbolic links followed while resolving one path (the Linux kernel's own limit).
const MAX_SYMLINK_HOPS: u32 = 40;

/// The longest file name (one path component), in bytes, that Linux file systems take.
pub const MAX_NAME_BYTES: usize = 255;
/// The longest path, in bytes, that the kernel takes.
pub const MAX_PATH_BYTES: usize = 4095;
/// The most components a path may have.
pub const MAX_DEPTH: usize = 256;
/// The longest destination file name, in bytes: the archive is written first under
/// `.<name>.partial-<pid>-<nanos>`, which must fit in [`MAX_NAME_BYTES`] too.
pub const MAX_DESTINATION_NAME_BYTES: usize = 200;

/// Whether an I/O error says a path has the wrong shape (a name or path too long, too many
/// symbolic links, characters the file system refuses): the request's fault, not the disk's.
pub fn is_shape_error(e: &io::Error) -> bool {
    // ENAMETOOLONG 36, ELOOP 40, EILSEQ 84 on Linux.
    matches!(e.raw_os_error(), Some(36 | 40 | 84)) || e.kind() == io::ErrorKind::InvalidFilename
}

/// Why a snapshot request's paths were refused.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// The path leads outside the snapshot root (absolute path elsewhere, `..`, or a symlink).
    /// → gRPC PERMISSION_DENIED
    #[error(
        "{} is outside the snapshot root {}; use a relative path or an absolute path \
         inside it (it may not leave the root through `..` or a symbolic link)",
        quote(.path),
        .root.display()
    )]
    OutsideRoot {
        /// The path as the request gave it.
        path: String,
        /// The snapshot root (canonical).
        root: PathBuf,
    },
    /// The source directory does not exist. → NOT_FOUND
    #[error(
        "source directory {} does not exist; give an existing directory inside the \
         snapshot root",
        quote(.path)
    )]
    SourceMissing {
        /// The source path as the request gave it.
        path: String,
    },
    /// The source exists but is not a directory. → INVALID_ARGUMENT
    #[error(
        "source {} is not a directory; a snapshot archives a directory tree",
        quote(.path)
    )]
    SourceNotDirectory {
        /// The source path as the request gave it.
        path: String,
    },
    /// The destination already exists. → ALREADY_EXISTS
    #[error(
        "destination {} already exists; snapshots never overwrite, give a file name that \
         does not exist yet",
        quote(.path)
    )]
    DestinationExists {
        /// The destination path as the request gave it.
        path: String,
    },
    /// The destination lies inside the source tree. → INVALID_ARGUMENT
    #[error(
        "destination {} is inside the source directory {}; put the archive outside the tree \
         being archived",
        quote(.destination),
        quote(.source_dir)
    )]
    DestinationInsideSource {
        /// The destination path as the request gave it.
        destination: String,
        /// The source path as the request gave it.
        source_dir: String,
    },
    /// Empty path or otherwise unusable (e.g. destination names a directory, ends in `/` or
    /// `..`). → INVALID_ARGUMENT
    #[error("invalid path {}: {reason}", quote(.path))]
    Invalid {
        /// The path as the request gave it.
        path: String,
        /// What is wrong with it and what is accepted instead.
        reason: String,
    },
    /// I/O failure while resolving. → INTERNAL/UNAVAILABLE
    #[error("could not resolve {}: {source}", quote(.path))]
    Io {
        /// The path being resolved.
        path: String,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
}

/// Both paths resolved to absolute, canonical locations inside the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPaths {
    /// The existing source directory, canonical.
    pub source: PathBuf,
    /// Where the archive is to be written: the canonical form of its deepest existing ancestor
    /// followed by the components that do not exist yet (plain names only).
    pub destination: PathBuf,
}

/// Resolves and checks a snapshot request against `root` (which must exist; canonicalize it
/// first).
///
/// Relative paths resolve inside root; absolute paths are accepted only when they lie inside
/// root; anything leading outside (absolute elsewhere, through `..`, or through a symbolic link
/// at any component, including a symlinked destination parent) is
/// [`PathError::OutsideRoot`]. The source must be an existing directory (canonicalized, then
/// checked to be inside root). For the destination: it must not exist (checked with
/// `symlink_metadata`, so a dangling symlink counts as existing); its deepest existing ancestor
/// is canonicalized and must be inside root; missing intermediate directories are allowed (the
/// writer creates them); it must not be inside the source directory (canonical forms are
/// compared); the final component must be a normal file name.
///
/// `root` is canonicalized here as well, so a root given through a symbolic link still works.
pub fn resolve(
    root: &Path,
    source_dir: &str,
    destination: &str,
) -> Result<ResolvedPaths, PathError> {
    let root_given = root;
    let root = fs::canonicalize(root_given).map_err(|source| PathError::Io {
        path: root_given.display().to_string(),
        source,
    })?;
    let roots = Roots {
        canonical: &root,
        given: root_given,
    };
    let source = resolve_source(&roots, source_dir)?;
    let destination = resolve_destination(&roots, &source, source_dir, destination)?;
    Ok(ResolvedPaths {
        source,
        destination,
    })
}

/// The snapshot root, both as canonicalized and as the caller spelled it.
struct Roots<'a> {
    canonical: &'a Path,
    given: &'a Path,
}

impl Roots<'_> {
    fn outside(&self, path: &str) -> PathError {
        PathError::OutsideRoot {
            path: path.to_owned(),
            root: self.canonical.to_path_buf(),
        }
    }

    /// Joins a relative request path to the root; absolute ones are taken as they are.
    fn absolute(&self, path: &str) -> PathBuf {
        self.canonical.join(path)
    }

    /// Whether `path` (absolute) stays inside the root when read lexically, `..` popping a
    /// component. Catches `..` escapes before the file system is touched, so a request cannot
    /// learn whether something outside the root exists.
    fn lexically_inside(&self, path: &Path) -> bool {
        let normal = lexical_normal(path);
        normal.starts_with(self.canonical)
            || (self.given.is_absolute() && normal.starts_with(lexical_normal(self.given)))
    }
}

fn resolve_source(roots: &Roots<'_>, source_dir: &str) -> Result<PathBuf, PathError> {
    check_shape(source_dir, "source directory", MAX_NAME_BYTES)?;
    let absolute = roots.absolute(source_dir);
    if !roots.lexically_inside(&absolute) {
        return Err(roots.outside(source_dir));
    }
    let located = match locate(&absolute, roots.canonical) {
        Ok(located) => located,
        Err(Unresolved::NotDirectory(at)) if !at.starts_with(roots.canonical) => {
            return Err(roots.outside(source_dir))
        }
        Err(Unresolved::NotDirectory(_) | Unresolved::ParentOfMissing(_)) => {
            return Err(PathError::SourceMissing {
                path: source_dir.to_owned(),
            })
        }
        Err(other) => return Err(other.into_error(source_dir, roots.canonical)),
    };
    if !located.existing.starts_with(roots.canonical) {
        return Err(roots.outside(source_dir));
    }
    if !located.missing.is_empty() {
        return Err(PathError::SourceMissing {
            path: source_dir.to_owned(),
        });
    }
    if !located.is_dir {
        return Err(PathError::SourceNotDirectory {
            path: source_dir.to_owned(),
        });
    }
    Ok(located.existing)
}

fn resolve_destination(
    roots: &Roots<'_>,
    source: &Path,
    source_dir: &str,
    destination: &str,
) -> Result<PathBuf, PathError> {
    check_shape(destination, "destination", MAX_DESTINATION_NAME_BYTES)?;
    let invalid = |reason: String| PathError::Invalid {
        path: destination.to_owned(),
        reason,
    };
    // `Path` drops trailing slashes and `.`, so look at the raw string's last segment.
    let last = destination.rsplit('/').next().unwrap_or_default();
    if last.is_empty() || last == "." || last == ".." {
        return Err(invalid(
            "the destination must end in a file name, e.g. \"snapshots/data.tar.zst\"".to_owned(),
        ));
    }
    let absolute = roots.absolute(destination);
    if !roots.lexically_inside(&absolute) {
        return Err(roots.outside(destination));
    }
    let (Some(parent), Some(name)) = (absolute.parent(), absolute.file_name()) else {
        return Err(invalid(
            "the destination must end in a file name, e.g. \"snapshots/data.tar.zst\"".to_owned(),
        ));
    };
    let located = match locate(parent, roots.canonical) {
        Ok(located) => located,
        Err(Unresolved::NotDirectory(at)) if !at.starts_with(roots.canonical) => {
            return Err(roots.outside(destination))
        }
        Err(Unresolved::NotDirectory(at)) => {
            return Err(invalid(format!(
                "{} is not a directory, so nothing can be created under it; choose a path \
                 whose parents are directories",
                at.display()
            )))
        }
        Err(Unresolved::ParentOfMissing(at)) => {
            return Err(invalid(format!(
                "it uses `..` after {}, which does not exist; spell the destination without \
                 `..`",
                at.display()
            )))
        }
        Err(other) => return Err(other.into_error(destination, roots.canonical)),
    };
    if !located.existing.starts_with(roots.canonical) {
        return Err(roots.outside(destination));
    }
    let mut resolved = located.existing;
    if located.missing.is_empty() {
        if !located.is_dir {
            return Err(invalid(format!(
                "{} is not a directory; choose a path whose parent is a directory",
                resolved.display()
            )));
        }
        let candidate = resolved.join(name);
        match fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.is_dir() => {
                let example = format!("{}/snapshot.tar.zst", destination.trim_end_matches('/'));
                return Err(invalid(format!(
                    "it names a directory; give a file name inside it, e.g. {example:?}"
                )));
            }
            Ok(_) => {
                return Err(PathError::DestinationExists {
                    path: destination.to_owned(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(PathError::Io {
                    path: destination.to_owned(),
                    source,
                })
            }
        }
    } else {
        resolved.extend(located.missing);
    }
    resolved.push(name);
    if resolved.starts_with(source) {
        return Err(PathError::DestinationInsideSource {
            destination: destination.to_owned(),
            source_dir: source_dir.to_owned(),
        });
    }
    Ok(resolved)
}

/// Refuses a path whose shape no file system takes: empty, a NUL byte, longer than
/// [`MAX_PATH_BYTES`], a component longer than [`MAX_NAME_BYTES`] (the last one longer than
/// `max_last`), or more than [`MAX_DEPTH`] components.
fn check_shape(path: &str, what: &str, max_last: usize) -> Result<(), PathError> {
    check_not_empty_or_nul(path, what)?;
    let invalid = |reason: String| PathError::Invalid {
        path: path.to_owned(),
        reason,
    };
    if path.len() > MAX_PATH_BYTES {
        return Err(invalid(format!(
            "the {what} is {} bytes long; paths are at most {MAX_PATH_BYTES} bytes",
            path.len()
        )));
    }
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    if components.len() > MAX_DEPTH {
        return Err(invalid(format!(
            "the {what} has {} components; paths are at most {MAX_DEPTH} deep",
            components.len()
        )));
    }
    let last = components.len().saturating_sub(1);
    for (i, component) in components.iter().enumerate() {
        let limit = if i == last { max_last } else { MAX_NAME_BYTES };
        if component.len() > limit {
            return Err(invalid(format!(
                "its component {} is {} bytes long; {} at most {limit} bytes",
                quote(component),
                component.len(),
                if i == last && limit < MAX_NAME_BYTES {
                    "the destination's file name may be"
                } else {
                    "file names are"
                }
            )));
        }
    }
    Ok(())
}

fn check_not_empty_or_nul(path: &str, what: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Invalid {
            path: String::new(),
            reason: format!(
                "the {what} is empty; give a path relative to the snapshot root or an absolute \
                 path inside it"
            ),
        });
    }
    if path.contains('\0') {
        return Err(PathError::Invalid {
            path: path.to_owned(),
            reason: format!("the {what} contains a NUL byte, which no path may hold"),
        });
    }
    Ok(())
}

/// Reads `path` lexically: drops `.`, lets `..` pop the previous component (never past `/`).
fn lexical_normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Where an absolute path leads once every existing component is resolved.
#[derive(Debug)]
struct Located {
    /// Canonical form of the longest prefix of the path that exists.
    existing: PathBuf,
    /// Whether `existing` is a directory.
    is_dir: bool,
    /// The components after `existing` that do not exist, in order.
    missing: Vec<OsString>,
}

/// Why [`locate`] could not resolve a path.
#[derive(Debug)]
enum Unresolved {
    /// Having reached the root, the path left it through `..` or a symbolic link.
    Escaped,
    /// A component that is not a directory was followed by more components; holds its
    /// canonical path.
    NotDirectory(PathBuf),
    /// `..` followed a component that does not exist; holds the missing path.
    ParentOfMissing(PathBuf),
    /// More than [`MAX_SYMLINK_HOPS`] symbolic links.
    TooManyLinks,
    /// A file-system call failed.
    Io(io::Error),
}

impl Unresolved {
    fn into_error(self, path: &str, root: &Path) -> PathError {
        match self {
            Unresolved::Escaped => PathError::OutsideRoot {
                path: path.to_owned(),
                root: root.to_path_buf(),
            },
            Unresolved::Io(source) => PathError::Io {
                path: path.to_owned(),
                source,
            },
            Unresolved::TooManyLinks => PathError::Invalid {
                path: path.to_owned(),
                reason: format!(
                    "resolving it follows more than {MAX_SYMLINK_HOPS} symbolic links; give a \
                     path without a symbolic-link loop"
                ),
            },
            Unresolved::NotDirectory(at) => PathError::Invalid {
                path: path.to_owned(),
                reason: format!("{} is not a directory", at.display()),
            },
            Unresolved::ParentOfMissing(at) => PathError::Invalid {
                path: path.to_owned(),
                reason: format!("it uses `..` after {}, which does not exist", at.display()),
            },
        }
    }
}

/// One step of a path still to resolve.
#[derive(Debug)]
enum Part {
    Root,
    Parent,
    Name(OsString),
    /// The end of a symbolic link's expanded target; `from_inside` tells whether the link
    /// itself lay inside the root.
    EndLink {
        from_inside: bool,
    },
}

fn parts(path: &Path) -> Vec<Part> {
    path.components()
        .filter_map(|component| match component {
            Component::Prefix(_) | Component::RootDir => Some(Part::Root),
            Component::CurDir => None,
            Component::ParentDir => Some(Part::Parent),
            Component::Normal(name) => Some(Part::Name(name.to_os_string())),
        })
        .collect()
}

/// Resolves an absolute path component by component, as the kernel would, expanding symbolic
/// links where they stand, and stops at the first component that does not exist.
///
/// Once the walk has reached `root` (canonical), it may not leave it again: a `..` that pops
/// out of the root, or a symbolic link inside the root whose target lies outside it, is
/// [`Unresolved::Escaped`] even if later components would lead back in. Components above the
/// root (an absolute path spelled through a link to the root) are resolved freely.
fn locate(path: &Path, root: &Path) -> Result<Located, Unresolved> {
    let mut queue: VecDeque<Part> = parts(path).into();
    let mut current = PathBuf::from("/");
    let mut current_is_dir = true;
    let mut hops = 0u32;
    // How many symbolic-link targets are being expanded, and whether the walk has reached the
    // root outside of any expansion.
    let mut link_depth = 0usize;
    let mut entered = false;
    while let Some(part) = queue.pop_front() {
        match part {
            Part::Root => {
                current = PathBuf::from("/");
                current_is_dir = true;
            }
            Part::Parent if !current_is_dir => return Err(Unresolved::NotDirectory(current)),
            Part::Parent => {
                current.pop();
            }
            Part::EndLink { from_inside } => {
                link_depth = link_depth.saturating_sub(1);
                if from_inside && !current.starts_with(root) {
                    return Err(Unresolved::Escaped);
                }
            }
            Part::Name(_) if !current_is_dir => return Err(Unresolved::NotDirectory(current)),
            Part::Name(name) => {
                let candidate = current.join(&name);
                match fs::symlink_metadata(&candidate) {
                    Ok(meta) if meta.file_type().is_symlink() => {
                        hops += 1;
                        if hops > MAX_SYMLINK_HOPS {
                            return Err(Unresolved::TooManyLinks);
                        }
                        let target = fs::read_link(&candidate).map_err(Unresolved::Io)?;
                        // A relative target resolves against the link's directory, `current`;
                        // an absolute one starts with `Part::Root`.
                        queue.push_front(Part::EndLink {
                            from_inside: current.starts_with(root),
                        });
                        for part in parts(&target).into_iter().rev() {
                            queue.push_front(part);
                        }
                        link_depth += 1;
                    }
                    Ok(meta) => {
                        current = candidate;
                        current_is_dir = meta.is_dir();
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        let mut missing = vec![name];
                        for part in queue {
                            match part {
                                Part::Name(name) => missing.push(name),
                                Part::EndLink { .. } => {}
                                Part::Root | Part::Parent => {
                                    let mut at = current;
                                    at.extend(&missing);
                                    return Err(Unresolved::ParentOfMissing(at));
                                }
                            }
                        }
                        return Ok(Located {
                            existing: current,
                            is_dir: current_is_dir,
                            missing,
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
                        return Err(Unresolved::NotDirectory(current))
                    }
                    Err(e) => return Err(Unresolved::Io(e)),
                }
            }
        }
        if link_depth == 0 {
            let inside = current.starts_with(root);
            if entered && !inside {
                return Err(Unresolved::Escaped);
            }
            entered |= inside;
        }
    }
    Ok(Located {
        existing: current,
        is_dir: current_is_dir,
        missing: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A snapshot root holding `data/` (with `data/sub/file.txt`), `out/` and `note.txt`.
    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap().join("root");
        fs::create_dir_all(root.join("data/sub")).unwrap();
        fs::write(root.join("data/sub/file.txt"), b"hello").unwrap();
        fs::create_dir(root.join("out")).unwrap();
        fs::write(root.join("note.txt"), b"note").unwrap();
        Fixture { _dir: dir, root }
    }

    fn outside_dir() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = fs::canonicalize(dir.path()).unwrap();
        (dir, path)
    }

    #[test]
    fn relative_paths_inside_root_resolve() {
        let f = fixture();
        let got = resolve(&f.root, "data", "out/snap.tar.zst").unwrap();
        assert_eq!(got.source, f.root.join("data"));
        assert_eq!(got.destination, f.root.join("out/snap.tar.zst"));

        // `.` and `..` that stay inside the root, and missing intermediate directories.
        let got = resolve(&f.root, "./data/sub/..", "out/new/deeper/snap.tar.zst").unwrap();
        assert_eq!(got.source, f.root.join("data"));
        assert_eq!(got.destination, f.root.join("out/new/deeper/snap.tar.zst"));
    }

    #[test]
    fn absolute_paths_inside_root_resolve() {
        let f = fixture();
        let source = f.root.join("data/sub");
        let destination = f.root.join("out/abs.tar.zst");
        let got = resolve(
            &f.root,
            source.to_str().unwrap(),
            destination.to_str().unwrap(),
        )
        .unwrap();
        assert_eq!(got.source, source);
        assert_eq!(got.destination, destination);
    }

    #[test]
    fn root_given_through_a_symlink_still_confines() {
        let f = fixture();
        let (_keep, elsewhere) = outside_dir();
        let alias = elsewhere.join("alias");
        symlink(&f.root, &alias).unwrap();
        // Absolute paths may be spelled through the alias the caller used for the root.
        let source = alias.join("data");
        let got = resolve(&alias, source.to_str().unwrap(), "out/x.tar.zst").unwrap();
        assert_eq!(got.source, f.root.join("data"));
        assert_eq!(got.destination, f.root.join("out/x.tar.zst"));
    }

    #[test]
    fn absolute_path_outside_root_is_refused() {
        let f = fixture();
        let err = resolve(&f.root, "/etc", "out/x.tar.zst").unwrap_err();
        assert!(matches!(&err, PathError::OutsideRoot { path, .. } if path == "/etc"));

        let err = resolve(&f.root, "data", "/etc/x.tar.zst").unwrap_err();
        assert!(matches!(&err, PathError::OutsideRoot { path, root }
            if path == "/etc/x.tar.zst" && root == &f.root));
        let message = err.to_string();
        assert!(message.contains("\"/etc/x.tar.zst\""), "{message}");
        assert!(message.contains(&f.root.display().to_string()), "{message}");
        assert!(message.contains("inside it"), "{message}");
    }

    #[test]
    fn dotdot_escape_is_refused() {
        let f = fixture();
        // Exists outside the root (the root's parent holds it): still refused, not found.
        let err = resolve(&f.root, "../root/../", "out/x.tar.zst").unwrap_err();
        assert!(matches!(err, PathError::OutsideRoot { .. }), "{err}");
        let err = resolve(&f.root, "data/../../../etc", "out/x.tar.zst").unwrap_err();
        assert!(matches!(err, PathError::OutsideRoot { .. }), "{err}");
        // Does not exist outside: OutsideRoot rather than SourceMissing (no probing).
        let err = resolve(&f.root, "../no-such-dir", "out/x.tar.zst").unwrap_err();
        assert!(matches!(err, PathError::OutsideRoot { .. }), "{err}");
        // Leaving the root through `..` is refused even when the path comes back in.
        let err = resolve(&f.root, "data/../../root/data", "out/x.tar.zst").unwrap_err();
        assert!(matches!(err, PathError::OutsideRoot { .. }), "{err}");
        let err = resolve(&f.root, "data", "out/../../root/out/x.tar.zst").unwrap_err();
        assert!(matches!(err, PathError::OutsideRoot { .. }), "{err}");
        let err = resolve(&f.root, "data", "out/../../x.tar.zst").unwrap_err();
        assert!(matches!(err, PathError::OutsideRoot { .. }), "{err}");
        let err = resolve(&f.root, "data", "new/../../../tmp/x.tar.zst").unwrap_err();
        assert!(matches!(err, PathError::OutsideRoot { .. }), "{err}");
    }

    #[test]
    fn symlink_in_source_path_pointing_outside_is_refused() {
        let f = fixture();
        let (_keep, outside) = outside_dir();
        fs::create_dir(outside.join("secret")).unwrap();
        symlink(&outside, f.root.join("escape")).unwrap();
        symlink("../..", f.root.join("data/up")).unwrap();

        for source in ["escape", "escape/secret", "data/up", "data/up/root/data"] {
            let err = resolve(&f.root, source, "out/x.tar.zst").unwrap_err();
            assert!(
                matches!(&err, PathError::OutsideRoot { path, .. } if path == source),
                "{source}: {err}"
            );
        }
        // Missing directories behind an escaping link are still OutsideRoot, not SourceMissing.
        let err = resolve(&f.root, "escape/nothing/here", "out/x.tar.zst").unwrap_err();
        assert!(matches!(err, PathError::OutsideRoot { .. }), "{err}");
        // `..` after a link is applied to the link's target, as the kernel does.
        symlink(outside.join("secret"), f.root.join("deep")).unwrap();
        let err = resolve(&f.root, "deep/..", "out/x.tar.zst").unwrap_err();
        assert!(matches!(err, PathError::OutsideRoot { .. }), "{err}");
    }

    #[test]
    fn symlink_inside_root_is_followed() {
        let f = fixture();
        symlink("data/sub", f.root.join("shortcut")).unwrap();
        let got = resolve(&f.root, "shortcut", "out/x.tar.zst").unwrap();
        assert_eq!(got.source, f.root.join("data/sub"));
    }

    #[test]
    fn symlinked_destination_parent_pointing_outside_is_refused() {
        let f = fixture();
        let (_keep, outside) = outside_dir();
        symlink(&outside, f.root.join("out/link")).unwrap();
        for destination in ["out/link/x.tar.zst", "out/link/new/dir/x.tar.zst"] {
            let err = resolve(&f.root, "data", destination).unwrap_err();
            assert!(
                matches!(&err, PathError::OutsideRoot { path, .. } if path == destination),
                "{destination}: {err}"
            );
        }
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn missing_source_is_reported() {
        let f = fixture();
        let err = resolve(&f.root, "nope", "out/x.tar.zst").unwrap_err();
        assert!(matches!(&err, PathError::SourceMissing { path } if path == "nope"));
        assert!(err.to_string().contains("\"nope\""), "{err}");
        let err = resolve(&f.root, "note.txt/below", "out/x.tar.zst").unwrap_err();
        assert!(matches!(err, PathError::SourceMissing { .. }), "{err}");
        // A dangling symbolic link inside the root is a missing source too.
        symlink("gone", f.root.join("dangling")).unwrap();
        let err = resolve(&f.root, "dangling", "out/x.tar.zst").unwrap_err();
        assert!(matches!(err, PathError::SourceMissing { .. }), "{err}");
    }

    #[test]
    fn source_that_is_a_file_is_refused() {
        let f = fixture();
        let err = resolve(&f.root, "note.txt", "out/x.tar.zst").unwrap_err();
        assert!(matches!(&err, PathError::SourceNotDirectory { path } if path == "note.txt"));
        assert!(err.to_string().contains("not a directory"), "{err}");
    }

    #[test]
    fn existing_destination_is_refused() {
        let f = fixture();
        let err = resolve(&f.root, "data", "note.txt").unwrap_err();
        assert!(matches!(&err, PathError::DestinationExists { path } if path == "note.txt"));
        assert_eq!(fs::read(f.root.join("note.txt")).unwrap(), b"note");
    }

    #[test]
    fn dangling_symlink_destination_counts_as_existing() {
        let f = fixture();
        symlink("nowhere.tar.zst", f.root.join("out/dangling.tar.zst")).unwrap();
        let err = resolve(&f.root, "data", "out/dangling.tar.zst").unwrap_err();
        assert!(matches!(err, PathError::DestinationExists { .. }), "{err}");
        // Also when the dangling link points outside the root.
        symlink("/nonexistent/x", f.root.join("out/far.tar.zst")).unwrap();
        let err = resolve(&f.root, "data", "out/far.tar.zst").unwrap_err();
        assert!(matches!(err, PathError::DestinationExists { .. }), "{err}");
    }

    #[test]
    fn destination_inside_source_is_refused() {
        let f = fixture();
        for destination in ["data/x.tar.zst", "data/sub/new/x.tar.zst"] {
            let err = resolve(&f.root, "data", destination).unwrap_err();
            assert!(
                matches!(&err, PathError::DestinationInsideSource { destination: d, source_dir }
                    if d == destination && source_dir == "data"),
                "{destination}: {err}"
            );
        }
        // Reached through a symbolic link inside the root: canonical forms are compared.
        symlink("data/sub", f.root.join("alias")).unwrap();
        let err = resolve(&f.root, "data", "alias/x.tar.zst").unwrap_err();
        assert!(
            matches!(err, PathError::DestinationInsideSource { .. }),
            "{err}"
        );
        // The root itself as source leaves nowhere to put the archive.
        let err = resolve(&f.root, ".", "out/x.tar.zst").unwrap_err();
        assert!(
            matches!(err, PathError::DestinationInsideSource { .. }),
            "{err}"
        );
        // A sibling whose name merely starts with the source's name is fine.
        fs::create_dir(f.root.join("data2")).unwrap();
        assert!(resolve(&f.root, "data", "data2/x.tar.zst").is_ok());
    }

    #[test]
    fn empty_strings_are_refused() {
        let f = fixture();
        let err = resolve(&f.root, "", "out/x.tar.zst").unwrap_err();
        assert!(matches!(err, PathError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("empty"), "{err}");
        let err = resolve(&f.root, "data", "").unwrap_err();
        assert!(matches!(err, PathError::Invalid { .. }), "{err}");
    }

    #[test]
    fn unusable_destinations_are_invalid() {
        let f = fixture();
        for destination in [
            "out",
            "out/",
            "out/.",
            "out/..",
            "note.txt/x.tar.zst",
            "a\0b",
        ] {
            let err = resolve(&f.root, "data", destination).unwrap_err();
            assert!(
                matches!(&err, PathError::Invalid { path, .. } if path == destination),
                "{destination:?}: {err}"
            );
        }
        let err = resolve(&f.root, "data", "new/../x.tar.zst").unwrap_err();
        assert!(matches!(err, PathError::Invalid { .. }), "{err}");
    }

    #[test]
    fn symlink_loops_are_invalid_not_a_hang() {
        let f = fixture();
        symlink("loop_b", f.root.join("loop_a")).unwrap();
        symlink("loop_a", f.root.join("loop_b")).unwrap();
        let err = resolve(&f.root, "loop_a", "out/x.tar.zst").unwrap_err();
        assert!(matches!(err, PathError::Invalid { .. }), "{err}");
    }

    #[test]
    fn missing_root_is_an_io_error() {
        let f = fixture();
        let err = resolve(&f.root.join("absent"), "data", "out/x.tar.zst").unwrap_err();
        assert!(matches!(err, PathError::Io { .. }), "{err}");
    }
}
