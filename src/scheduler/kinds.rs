//! The kinds a runner knows: those registered in its process (a [`Registry`]) and those
//! declared by workers, kept in the store with their descriptors so that they stay known after
//! their workers leave, across restarts, and on every node sharing the store: SubmitTask
//! checks an input against its declared type and queues work while no worker is connected.
//!
//! A declaration is checked before it is kept: a name of its own (not an in-process kind's,
//! not `oprun.`), descriptors that define the types it names, and, against what was declared
//! before under that name, the same types with compatible fields (a field keeps its number,
//! type and cardinality), so that operations already stored still decode.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use prost::Message;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor};
use prost_types::Any;

use crate::error::Error;
use crate::model::type_name;
use crate::proto::oprun::v1::{KindDeclaration, TaskKind};
use crate::store::{Registered, Store, StoreError};
use crate::task::{ErasedTask, Registry, RetryPolicy, TaskContext, TaskError, TaskOptions};
use crate::text::quote;
use crate::types::Types;

/// How long an assignment may go without a report when its kind says nothing.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);
/// The shortest and longest heartbeat timeouts a kind may declare.
const HEARTBEAT_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3600));
/// The most attempts a kind may declare.
const MAX_ATTEMPTS: u32 = 100;
/// The largest descriptor set a declaration may carry.
pub const MAX_DESCRIPTOR_BYTES: usize = 1 << 20;

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// The kinds a runner knows.
pub(crate) struct Kinds {
    in_process: Registry,
    /// Declared kinds known here, by name (on a shared store, those this node has seen).
    declared: DashMap<String, Arc<Declared>>,
    types: Types,
}

/// A kind declared by workers: its declaration and its types.
pub(crate) struct Declared {
    /// As kept (without any session's concurrency).
    pub(crate) declaration: KindDeclaration,
    input: MessageDescriptor,
    output: MessageDescriptor,
    heartbeat: Duration,
}

impl Declared {
    /// How long an assignment of the kind may go without a report.
    pub(crate) fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// Checks that `any` is a valid message of type `desc`.
    fn check(desc: &MessageDescriptor, any: &Any, field: &'static str) -> Result<(), Error> {
        let got = type_name(&any.type_url);
        if got != desc.full_name() {
            return Err(Error::invalid_argument_because(
                field,
                "WRONG_TYPE",
                format!(
                    "{field} must be a {}, got {}",
                    desc.full_name(),
                    quote(&any.type_url)
                ),
            ));
        }
        DynamicMessage::decode(desc.clone(), any.value.as_slice()).map_err(|e| {
            Error::invalid_argument_because(
                field,
                "MALFORMED_INPUT",
                format!("{field} is not a valid {}: {e}", desc.full_name()),
            )
        })?;
        Ok(())
    }

    /// Checks a completion's response against the kind's output type.
    pub(crate) fn check_output(&self, any: &Any) -> Result<(), Error> {
        Self::check(&self.output, any, "response")
    }
}

impl ErasedTask for Declared {
    fn describe(&self) -> TaskKind {
        let d = &self.declaration;
        TaskKind {
            name: d.name.clone(),
            input_type: d.input_type.clone(),
            response_type: d.output_type.clone(),
            details_type: d.details_type.clone(),
            retry_safe: d.retry_safe,
            max_concurrency: 0,
            max_attempts: d.max_attempts.max(1),
            default_timeout: d.default_timeout,
            max_per_key: d.max_per_key,
            ..TaskKind::default()
        }
    }

    fn options(&self) -> TaskOptions {
        let d = &self.declaration;
        TaskOptions {
            retry_safe: d.retry_safe,
            retry: RetryPolicy::exponential(d.max_attempts.max(1)),
            default_timeout: d.default_timeout.and_then(|t| Duration::try_from(t).ok()),
            max_per_key: (d.max_per_key > 0)
                .then(|| usize::try_from(d.max_per_key).unwrap_or(usize::MAX)),
            ..TaskOptions::default()
        }
    }

    fn check_input(&self, input: &Any) -> Result<(), Error> {
        Self::check(&self.input, input, "input")
    }

    fn run(&self, _input: Any, _ctx: TaskContext) -> BoxFuture<Result<Any, TaskError>> {
        // Declared kinds run in workers: the runner hands their work to sessions.
        let name = self.declaration.name.clone();
        Box::pin(async move {
            Err(TaskError::internal(format!(
                "kind {name:?} runs in worker sessions, not in the server's process"
            )))
        })
    }
}

impl Kinds {
    pub(crate) fn new(in_process: Registry, types: Types) -> Self {
        Self {
            in_process,
            declared: DashMap::new(),
            types,
        }
    }

    /// The types every kind's messages are read with.
    pub(crate) fn types(&self) -> &Types {
        &self.types
    }

    /// The in-process kinds.
    pub(crate) fn in_process(&self) -> &Registry {
        &self.in_process
    }

    /// A kind, in process or declared.
    pub(crate) fn task(&self, kind: &str) -> Option<Arc<dyn ErasedTask>> {
        if let Some(task) = self.in_process.erased(kind) {
            return Some(Arc::clone(task));
        }
        self.declared
            .get(kind)
            .map(|d| Arc::clone(d.value()) as Arc<dyn ErasedTask>)
    }

    /// A declared kind.
    pub(crate) fn declared(&self, kind: &str) -> Option<Arc<Declared>> {
        self.declared.get(kind).map(|d| Arc::clone(d.value()))
    }

    /// Whether `kind` runs in this process.
    pub(crate) fn is_in_process(&self, kind: &str) -> bool {
        self.in_process.contains(kind)
    }

    /// Every kind known, by name, comma-separated (for messages).
    pub(crate) fn names(&self) -> String {
        let mut names: Vec<String> = self
            .in_process
            .kinds()
            .map(|(name, _)| name.to_owned())
            .chain(self.declared.iter().map(|d| d.key().clone()))
            .collect();
        names.sort();
        names.join(", ")
    }

    /// Every kind's description, by name.
    pub(crate) fn describe(&self) -> Vec<TaskKind> {
        let mut kinds = self.in_process.describe();
        kinds.extend(self.declared.iter().map(|d| d.describe()));
        kinds.sort_by(|a, b| a.name.cmp(&b.name));
        kinds
    }

    /// Reads every declared kind from the store (at start, and on a shared store now and
    /// then: another node may have declared one). A declaration that cannot be read back is
    /// logged and skipped: its kind's work waits until a worker declares it again.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    pub(crate) async fn load(&self, store: &dyn Store) -> Result<(), StoreError> {
        for (name, bytes) in store.registered(Registered::Kind).await? {
            let unchanged = self
                .declared
                .get(&name)
                .is_some_and(|known| known.declaration.encode_to_vec() == bytes);
            if unchanged {
                continue;
            }
            let declared = KindDeclaration::decode(bytes.as_slice())
                .map_err(|e| e.to_string())
                .and_then(|d| self.admit(d).map_err(|e| e.to_string()));
            match declared {
                Ok(declared) => {
                    self.declared.insert(name, Arc::new(declared));
                }
                Err(e) => {
                    tracing::warn!(kind = %name, error = %e, "a stored kind declaration cannot be used")
                }
            }
        }
        Ok(())
    }

    /// Whether `kind` is declared in the store, reading it when this node has not seen it.
    pub(crate) async fn find(&self, store: &dyn Store, kind: &str) -> Option<Arc<dyn ErasedTask>> {
        if let Some(task) = self.task(kind) {
            return Some(task);
        }
        if kind.is_empty() || kind.len() > 63 {
            return None;
        }
        if let Err(e) = self.load(store).await {
            tracing::warn!(error = %e, "the declared kinds could not be read");
        }
        self.task(kind)
    }

    /// Checks a declaration, keeps it in the store and makes its types known: a session's
    /// kind. Returns the kind as known now.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for a declaration that is malformed or names an in-process kind;
    /// FAILED_PRECONDITION (naming the field) for one incompatible with the kind as declared
    /// before; UNAVAILABLE when the store fails.
    pub(crate) async fn declare(
        &self,
        store: &dyn Store,
        mut declaration: KindDeclaration,
    ) -> Result<Arc<Declared>, Error> {
        declaration.concurrency = 0;
        check_name(&declaration.name, &self.in_process)?;
        let name = declaration.name.clone();
        let size = declaration
            .descriptors
            .as_ref()
            .map_or(0, crate::types::encoded_len);
        if size > MAX_DESCRIPTOR_BYTES {
            return Err(invalid(format!(
                "kind {}: its descriptors are {size} bytes; at most {MAX_DESCRIPTOR_BYTES}",
                quote(&name)
            )));
        }
        // What was declared before: this node's, or the store's.
        let before = match self.declared(&name) {
            Some(known) => Some(known),
            None => {
                self.load(store).await?;
                self.declared(&name)
            }
        };
        let files = declaration.descriptors.clone().unwrap_or_default();
        let scratch = scratch_pool(&self.types, &name, &files)?;
        let declared = resolve(&scratch, declaration)?;
        if let Some(before) = &before {
            compatible(before, &declared)?;
        }
        let unchanged = before
            .as_ref()
            .is_some_and(|b| b.declaration == declared.declaration);
        if !unchanged {
            store
                .register(
                    Registered::Kind,
                    &name,
                    &declared.declaration.encode_to_vec(),
                )
                .await?;
        }
        self.types
            .add(&name, &files)
            .map_err(|e| precondition(format!("kind {}: {e}", quote(&name))))?;
        let declared = Arc::new(declared);
        self.declared.insert(name, Arc::clone(&declared));
        Ok(declared)
    }

    /// A stored declaration made known here (its types added).
    fn admit(&self, declaration: KindDeclaration) -> Result<Declared, Error> {
        let name = declaration.name.clone();
        let files = declaration.descriptors.clone().unwrap_or_default();
        self.types
            .add(&name, &files)
            .map_err(|e| precondition(format!("kind {}: {e}", quote(&name))))?;
        resolve(&self.types.pool(), declaration)
    }
}

fn invalid(message: String) -> Error {
    Error::invalid_argument_because("kinds", "INVALID_KIND_DECLARATION", message)
}

fn precondition(message: String) -> Error {
    Error::FailedPrecondition {
        message,
        reason: "KIND_INCOMPATIBLE",
    }
}

/// A kind's name: 1 to 63 characters of `[a-z0-9._-]`, starting with a letter; not an
/// in-process kind's, not under `oprun.`.
fn check_name(name: &str, in_process: &Registry) -> Result<(), Error> {
    let well_formed = name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if !well_formed {
        return Err(invalid(format!(
            "kind name {} is not 1 to 63 characters of a-z, 0-9, '.', '_' and '-' starting \
             with a letter",
            quote(name)
        )));
    }
    if name.starts_with("oprun.") {
        return Err(invalid(format!(
            "kind name {}: names under \"oprun.\" are oprun's own",
            quote(name)
        )));
    }
    if in_process.contains(name) {
        return Err(invalid(format!(
            "kind {} runs in this server's process; a worker's kind needs a name of its own",
            quote(name)
        )));
    }
    Ok(())
}

/// The pool the declaration's types would be read with (the current one, with its files in
/// place of what the kind declared before), without changing the registry.
fn scratch_pool(
    types: &Types,
    name: &str,
    files: &prost_types::FileDescriptorSet,
) -> Result<prost_reflect::DescriptorPool, Error> {
    types.check(name, files).map_err(|e| match e {
        crate::types::TypesError::Invalid(m) => invalid(format!("kind {}: {m}", quote(name))),
        crate::types::TypesError::Conflict(m) => precondition(format!("kind {}: {m}", quote(name))),
    })
}

/// The declaration with its types looked up in `pool`, its options checked.
fn resolve(
    pool: &prost_reflect::DescriptorPool,
    mut declaration: KindDeclaration,
) -> Result<Declared, Error> {
    let name = declaration.name.clone();
    let message = |field: &str, type_name: &str| {
        if type_name.is_empty() {
            return Err(invalid(format!(
                "kind {}: {field} is missing; name the full message type (e.g. acme.v1.Input)",
                quote(&name)
            )));
        }
        pool.get_message_by_name(type_name).ok_or_else(|| {
            invalid(format!(
                "kind {}: {field} {} is not defined by its descriptors (send the files that \
                 define it, with their imports)",
                quote(&name),
                quote(type_name)
            ))
        })
    };
    let input = message("input_type", &declaration.input_type)?;
    let output = message("output_type", &declaration.output_type)?;
    if !declaration.details_type.is_empty() {
        message("details_type", &declaration.details_type)?;
    }
    if declaration.max_attempts > MAX_ATTEMPTS {
        return Err(invalid(format!(
            "kind {}: max_attempts is {}; at most {MAX_ATTEMPTS}",
            quote(&name),
            declaration.max_attempts
        )));
    }
    if let Some(timeout) = declaration.default_timeout {
        match Duration::try_from(timeout) {
            Ok(t)
                if !t.is_zero()
                    && crate::model::time::add(std::time::SystemTime::now(), t).is_some() => {}
            _ => {
                return Err(invalid(format!(
                    "kind {}: default_timeout must be a positive duration",
                    quote(&name)
                )))
            }
        }
    }
    let heartbeat = match declaration.heartbeat_timeout {
        None => DEFAULT_HEARTBEAT,
        Some(t) => match Duration::try_from(t) {
            Ok(t) if (HEARTBEAT_RANGE.0..=HEARTBEAT_RANGE.1).contains(&t) => t,
            _ => {
                return Err(invalid(format!(
                    "kind {}: heartbeat_timeout must be from 1 s to 1 h",
                    quote(&name)
                )))
            }
        },
    };
    declaration.heartbeat_timeout = prost_types::Duration::try_from(heartbeat).ok();
    Ok(Declared {
        declaration,
        input,
        output,
        heartbeat,
    })
}

/// The type of a field, in words: `int32`, `repeated string`, `map<string, int64>`,
/// `message acme.v1.Thing`.
fn field_type(field: &FieldDescriptor) -> String {
    let kind = |k: Kind| match k {
        Kind::Message(m) => format!("message {}", m.full_name()),
        Kind::Enum(e) => format!("enum {}", e.full_name()),
        other => format!("{other:?}").to_lowercase(),
    };
    if field.is_map() {
        if let Kind::Message(entry) = field.kind() {
            let key = entry.map_entry_key_field().kind();
            let value = entry.map_entry_value_field().kind();
            return format!("map<{}, {}>", kind(key), kind(value));
        }
    }
    if field.is_list() {
        return format!("repeated {}", kind(field.kind()));
    }
    kind(field.kind())
}

/// Whether `new` may replace `old`: the same types, and in each, every field that both have
/// (by number) keeps its name, type and cardinality. Fields may be added or removed.
fn compatible(old: &Declared, new: &Declared) -> Result<(), Error> {
    let name = &new.declaration.name;
    for (field, a, b) in [
        (
            "input_type",
            &old.declaration.input_type,
            &new.declaration.input_type,
        ),
        (
            "output_type",
            &old.declaration.output_type,
            &new.declaration.output_type,
        ),
        (
            "details_type",
            &old.declaration.details_type,
            &new.declaration.details_type,
        ),
    ] {
        if a != b {
            return Err(precondition(format!(
                "kind {} was declared with {field} {}; this declaration says {}: a kind keeps \
                 its types (declare a new kind for new ones)",
                quote(name),
                quote(a),
                quote(b)
            )));
        }
    }
    for (old, new) in [(&old.input, &new.input), (&old.output, &new.output)] {
        for was in old.fields() {
            let now = new.get_field(was.number());
            match now {
                Some(now) if field_type(&now) != field_type(&was) => {
                    return Err(precondition(format!(
                        "kind {}: field {} (number {}) of {} was {}, is {} now; a field keeps \
                         its type (add a new field instead)",
                        quote(name),
                        quote(was.name()),
                        was.number(),
                        old.full_name(),
                        field_type(&was),
                        field_type(&now)
                    )))
                }
                Some(now) if now.name() != was.name() => {
                    return Err(precondition(format!(
                        "kind {}: field number {} of {} was {}, is {} now; a field keeps its \
                         name",
                        quote(name),
                        was.number(),
                        old.full_name(),
                        quote(was.name()),
                        quote(now.name())
                    )))
                }
                _ => {}
            }
            if let Some(renumbered) = new.get_field_by_name(was.name()) {
                if renumbered.number() != was.number() {
                    return Err(precondition(format!(
                        "kind {}: field {} of {} was number {}, is {} now; a field keeps its \
                         number",
                        quote(name),
                        quote(was.name()),
                        old.full_name(),
                        was.number(),
                        renumbered.number()
                    )));
                }
            }
        }
    }
    Ok(())
}
