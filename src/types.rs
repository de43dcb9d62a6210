//! The registry of message types a server knows: oprun's own protos, those an in-process kind
//! registers with (`Task::descriptors`), and those of kinds declared by workers. Every path
//! that reads or writes JSON (the REST gateway, server-sent events) and every check of an input
//! against its kind's type reads it, so a kind's types are first-class whoever runs it.
//!
//! The pool is rebuilt (oprun's, then each source's files in the order they were added) when a
//! source adds or changes files, and handed out as a snapshot: a request keeps the one it
//! started with.

use std::sync::{Arc, Mutex, PoisonError, RwLock};

use prost::Message;
use prost_reflect::{DescriptorPool, MessageDescriptor};
use prost_types::FileDescriptorSet;

use crate::text::quote;

/// Why files could not be added.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TypesError {
    /// The files do not make a valid set (a type they use is missing, a name is defined twice).
    #[error("the descriptors are not valid: {0}")]
    Invalid(String),
    /// A file or type of the same name is already known with other contents.
    #[error("{0}")]
    Conflict(String),
}

/// The types a server knows, cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct Types {
    inner: Arc<Inner>,
}

struct Inner {
    /// The pool as last built (std RwLock: held to read or swap the `Arc`, never across an
    /// await).
    pool: RwLock<Arc<DescriptorPool>>,
    /// Each source's files, in the order they were first added (std Mutex: held while the
    /// pool is rebuilt, which is synchronous).
    sources: Mutex<Vec<(String, FileDescriptorSet)>>,
}

impl Default for Types {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Types {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Types").finish_non_exhaustive()
    }
}

impl Types {
    /// oprun's own types (and the `google.*` ones they use).
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                pool: RwLock::new(Arc::new(crate::proto::descriptor_pool().clone())),
                sources: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The pool now: every type known. A snapshot; later additions are not in it.
    pub fn pool(&self) -> Arc<DescriptorPool> {
        Arc::clone(
            &self
                .inner
                .pool
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// A message type by its full name.
    pub fn message(&self, full_name: &str) -> Option<MessageDescriptor> {
        self.pool().get_message_by_name(full_name)
    }

    /// Adds (or replaces) the files of `source` (a kind's name), checking that each of its
    /// files is either new or the same as what is known under its name, and that every type
    /// it defines is its own; on any error nothing changes.
    ///
    /// # Errors
    /// [`TypesError`] naming the file or type at fault.
    pub fn add(&self, source: &str, files: &FileDescriptorSet) -> Result<(), TypesError> {
        let mut sources = self
            .inner
            .sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (next, pool) = with_source(&sources, source, files)?;
        *sources = next;
        *self
            .inner
            .pool
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(pool);
        Ok(())
    }

    /// The pool [`Types::add`] would make, without making it.
    ///
    /// # Errors
    /// What [`Types::add`] would answer.
    pub fn check(
        &self,
        source: &str,
        files: &FileDescriptorSet,
    ) -> Result<DescriptorPool, TypesError> {
        let sources = self
            .inner
            .sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        with_source(&sources, source, files).map(|(_, pool)| pool)
    }

    /// The files a source added.
    pub fn files_of(&self, source: &str) -> Option<FileDescriptorSet> {
        self.inner
            .sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(name, _)| name == source)
            .map(|(_, set)| set.clone())
    }
}

/// `sources` with `source`'s files replaced by `files`, and the pool they make.
fn with_source(
    sources: &[(String, FileDescriptorSet)],
    source: &str,
    files: &FileDescriptorSet,
) -> Result<(Vec<(String, FileDescriptorSet)>, DescriptorPool), TypesError> {
    let mut next: Vec<(String, FileDescriptorSet)> = sources
        .iter()
        .filter(|(name, _)| name != source)
        .cloned()
        .collect();
    // oprun's own files and those of other sources keep their contents.
    let base = crate::proto::descriptor_pool();
    for file in &files.file {
        let name = file.name();
        let known = base
            .get_file_by_name(name)
            .map(|f| (f.file_descriptor_proto().clone(), "oprun"))
            .or_else(|| {
                next.iter().find_map(|(other, set)| {
                    set.file
                        .iter()
                        .find(|f| f.name() == name)
                        .map(|f| (f.clone(), other.as_str()))
                })
            });
        if let Some((known, by)) = known {
            if !same_file(&known, file) {
                return Err(TypesError::Conflict(format!(
                    "file {} is already known (from {}) with other contents; give it another \
                     name or the same contents",
                    quote(name),
                    quote(by)
                )));
            }
        }
    }
    next.push((source.to_owned(), files.clone()));
    let pool = build(&next)?;
    Ok((next, pool))
}

/// Whether two files are the same, ignoring source info (which differs between compilers).
fn same_file(a: &prost_types::FileDescriptorProto, b: &prost_types::FileDescriptorProto) -> bool {
    let mut a = a.clone();
    let mut b = b.clone();
    a.source_code_info = None;
    b.source_code_info = None;
    a == b
}

/// oprun's pool with every source's files added.
fn build(sources: &[(String, FileDescriptorSet)]) -> Result<DescriptorPool, TypesError> {
    let mut pool = crate::proto::descriptor_pool().clone();
    for (source, set) in sources {
        // Files of oprun's own (the google.* ones a set carries along) are skipped by name.
        let files: Vec<_> = set
            .file
            .iter()
            .filter(|f| pool.get_file_by_name(f.name()).is_none())
            .cloned()
            .collect();
        pool.add_file_descriptor_protos(files)
            .map_err(|e| TypesError::Invalid(format!("{} (declared by {})", e, quote(source))))?;
    }
    Ok(pool)
}

/// The files that define `message` and everything it uses, from `pool`, dependencies first:
/// what a worker sends to declare a kind of one of these types.
pub fn files_defining(pool: &DescriptorPool, message: &str) -> Option<FileDescriptorSet> {
    let desc = pool.get_message_by_name(message)?;
    let mut out: Vec<prost_types::FileDescriptorProto> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    fn visit(
        file: &prost_reflect::FileDescriptor,
        seen: &mut std::collections::HashSet<String>,
        out: &mut Vec<prost_types::FileDescriptorProto>,
    ) {
        if !seen.insert(file.name().to_owned()) {
            return;
        }
        for dependency in file.dependencies() {
            visit(&dependency, seen, out);
        }
        out.push(file.file_descriptor_proto().clone());
    }
    visit(&desc.parent_file(), &mut seen, &mut out);
    Some(FileDescriptorSet { file: out })
}

/// A set's encoded size, for limits.
pub fn encoded_len(set: &FileDescriptorSet) -> usize {
    set.encoded_len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that defines a message of its own with one field.
    fn file(name: &str, package: &str, message: &str, field: (&str, i32)) -> FileDescriptorSet {
        use prost_types::field_descriptor_proto::Label;
        FileDescriptorSet {
            file: vec![prost_types::FileDescriptorProto {
                name: Some(name.to_owned()),
                package: Some(package.to_owned()),
                syntax: Some("proto3".to_owned()),
                message_type: vec![prost_types::DescriptorProto {
                    name: Some(message.to_owned()),
                    field: vec![prost_types::FieldDescriptorProto {
                        name: Some(field.0.to_owned()),
                        number: Some(1),
                        label: Some(Label::Optional as i32),
                        r#type: Some(field.1),
                        json_name: Some(field.0.to_owned()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// Added types are in the next snapshot, not in an older one; the same file twice is fine,
    /// another file of the same name or a type defined twice is refused and changes nothing.
    #[test]
    fn sources_add_types_and_conflicts_are_refused() {
        let types = Types::new();
        let before = types.pool();
        let int32 = prost_types::field_descriptor_proto::Type::Int32 as i32;
        let string = prost_types::field_descriptor_proto::Type::String as i32;
        let resize = file("resize.proto", "resize", "ResizeInput", ("count", int32));
        types.add("resize", &resize).expect("new types");
        assert!(types.message("resize.ResizeInput").is_some());
        assert!(before.get_message_by_name("resize.ResizeInput").is_none());
        assert!(
            types.message("oprun.v1.SleepInput").is_some(),
            "oprun's own"
        );
        // The same file again, from the same source or another one.
        types.add("resize", &resize).expect("the same again");
        types.add("thumbs", &resize).expect("shared, identical");
        // Another file of the same name, from another source.
        let changed = file("resize.proto", "resize", "ResizeInput", ("count", string));
        let e = types.add("other", &changed).expect_err("a conflict");
        assert!(e.to_string().contains("resize.proto"), "{e}");
        // A type defined again by another file.
        let twice = file("again.proto", "resize", "ResizeInput", ("count", int32));
        assert!(types.add("again", &twice).is_err());
        assert!(types.files_of("again").is_none(), "nothing changed");
        // A source replacing its own files.
        let thumbs = file("thumbs.proto", "thumbs", "Thumb", ("size", int32));
        types.add("thumbs", &thumbs).expect("replaced");
        assert!(types.message("thumbs.Thumb").is_some());
        let files = files_defining(&types.pool(), "thumbs.Thumb").expect("known");
        assert_eq!(files.file.len(), 1);
        // oprun's own file under another content is refused.
        let mut fake = file("oprun/v1/tasks.proto", "oprun.v1", "X", ("x", int32));
        fake.file[0].name = Some("oprun/v1/tasks.proto".into());
        assert!(matches!(
            types.add("fake", &fake),
            Err(TypesError::Conflict(_))
        ));
    }
}
