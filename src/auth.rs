//! Who may call what: bearer tokens with a [`Role`], checked by [`AuthLayer`] before any
//! handler runs.
//!
//! A server knows its callers from a **tokens file** ([`Tokens`]): one token per line, stored
//! only as its SHA-256 hash, each with a role and an optional label for the logs:
//!
//! ```text
//! # sha256:<64 lower-case hex> <role> [label]
//! sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 submitter ci-deploy
//! ```
//!
//! `oprun token new --role ROLE` prints a fresh token and its line. The first three roles are
//! ordered, each allowing what the one below it does ([`required_role`] is the table):
//! - `reader`: GetOperation, ListOperations, WaitOperation, ListTaskKinds, ListNodes;
//! - `submitter`: also SubmitTask, CreateSnapshot, CancelOperation;
//! - `admin`: also DeleteOperation (and, by default, any method the table does not name: an
//!   embedder's own, see [`OtherPaths`]; and the workers' methods);
//! - `worker`, apart: only the WorkerService (declare kinds, take, report and complete
//!   work), nothing else — a worker's token cannot read or start operations.
//!
//! A kind may need more than the method that starts it: its
//! [`TaskOptions::start_role`](crate::task::TaskOptions::start_role) is checked by the runner
//! whichever way an operation of it is started (SubmitTask, RerunOperation, the batch RPCs),
//! so the built-in delete batch needs `admin` however it is started.
//!
//! [`AuthLayer`] is a tower layer over the whole tonic router, so a call is authenticated and
//! authorised before any service sees it: a caller without the role learns nothing about
//! whether the operation it named exists. A missing or unknown token is answered
//! UNAUTHENTICATED, a role too low PERMISSION_DENIED, each with an `ErrorInfo` detail in the
//! `oprun.dev` domain. Applications embedding oprun in their own tonic server apply the same
//! layer with `Server::builder().layer(AuthLayer::new(tokens))`.
//!
//! Neither a token nor its hash is ever logged or put in an error message: denials are logged
//! with the method, the peer address and the token's label.

use std::collections::HashMap;
use std::fmt;
use std::future::{ready, Ready};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use futures::future::Either;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

use crate::proto::ERROR_DOMAIN;

/// What a caller may do. Reader, submitter and admin are ordered: each allows everything the
/// ones below it allow. Worker stands apart: it allows only the workers' methods (which an
/// admin may call too). Compare with [`Role::allows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// Reads operations, kinds and nodes: Get, List, Wait, ListTaskKinds, ListNodes.
    Reader,
    /// Also starts and stops work: SubmitTask, CreateSnapshot, CancelOperation.
    Submitter,
    /// Also deletes operations.
    Admin,
    /// Runs work in a worker process: opens sessions declaring kinds, takes assignments,
    /// reports and completes them. Nothing else.
    Worker,
}

impl Role {
    /// Every role: the ordered ones, lowest first, then worker.
    pub const ALL: [Role; 4] = [Role::Reader, Role::Submitter, Role::Admin, Role::Worker];

    /// The role's name in a tokens file: `reader`, `submitter`, `admin` or `worker`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Submitter => "submitter",
            Role::Admin => "admin",
            Role::Worker => "worker",
        }
    }

    /// Whether a caller with this role may do what `needed` allows.
    pub fn allows(self, needed: Role) -> bool {
        let rank = |role: Role| match role {
            Role::Reader => 1,
            Role::Submitter => 2,
            Role::Admin => 3,
            Role::Worker => 0,
        };
        match (self, needed) {
            (Role::Admin, _) | (Role::Worker, Role::Worker) => true,
            (Role::Worker, _) | (_, Role::Worker) => false,
            (mine, needed) => rank(mine) >= rank(needed),
        }
    }

    /// The roles that satisfy `self` in words, e.g. `submitter or admin`.
    pub fn and_above(self) -> String {
        let names: Vec<_> = Role::ALL
            .iter()
            .filter(|r| r.allows(self))
            .map(|r| r.as_str())
            .collect();
        match names.as_slice() {
            [one] => (*one).to_owned(),
            [init @ .., last] => format!("{} or {last}", init.join(", ")),
            [] => unreachable!("Role::ALL ends with the highest role"),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role {s:?}; expected reader, submitter, admin or worker")
            })
    }
}

/// The role a gRPC method needs, by its path (`/package.Service/Method`); `None` for a
/// method this table does not know, which [`AuthLayer`] treats as its [`OtherPaths`] say.
pub fn required_role(grpc_path: &str) -> Option<Role> {
    Some(match grpc_path {
        "/google.longrunning.Operations/GetOperation"
        | "/google.longrunning.Operations/ListOperations"
        | "/google.longrunning.Operations/WaitOperation"
        | "/oprun.v1.TaskService/ListTaskKinds"
        | "/oprun.v1.TaskService/ListNodes"
        | "/oprun.v1.WatchService/WatchOperation"
        | "/oprun.v1.WatchService/WatchOperations"
        | "/oprun.v1.AdminService/QueryOperations"
        | "/oprun.v1.AdminService/SummarizeOperations"
        | "/oprun.v1.AdminService/GetCaller"
        | "/oprun.v1.AdminService/GetOperationInput"
        | "/oprun.v1.ScheduleService/GetSchedule"
        | "/oprun.v1.ScheduleService/ListSchedules"
        | "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        | "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo" => Role::Reader,
        "/oprun.v1.TaskService/SubmitTask"
        | "/oprun.v1.TaskService/BatchSubmitTasks"
        | "/oprun.v1.SnapshotService/CreateSnapshot"
        | "/google.longrunning.Operations/CancelOperation"
        | "/oprun.v1.AdminService/CancelOperations"
        | "/oprun.v1.AdminService/RerunOperation"
        | "/oprun.v1.ScheduleService/CreateSchedule"
        | "/oprun.v1.ScheduleService/UpdateSchedule"
        | "/oprun.v1.ScheduleService/PauseSchedule"
        | "/oprun.v1.ScheduleService/ResumeSchedule"
        | "/oprun.v1.ScheduleService/TriggerSchedule" => Role::Submitter,
        "/google.longrunning.Operations/DeleteOperation"
        | "/oprun.v1.AdminService/DeleteOperations"
        | "/oprun.v1.ScheduleService/DeleteSchedule" => Role::Admin,
        "/oprun.v1.WorkerService/OpenSession"
        | "/oprun.v1.WorkerService/StreamAssignments"
        | "/oprun.v1.WorkerService/PollAssignments"
        | "/oprun.v1.WorkerService/ReportProgress"
        | "/oprun.v1.WorkerService/CompleteAssignment"
        | "/oprun.v1.WorkerService/CloseSession" => Role::Worker,
        _ => return None,
    })
}

/// Whether a gRPC method is open to callers without a token: only `grpc.health.v1.Health`,
/// so that load balancers and orchestrators can probe a server that requires tokens.
pub fn is_public(grpc_path: &str) -> bool {
    grpc_path.starts_with("/grpc.health.v1.Health/")
}

/// The method name of a gRPC path, for messages and logs: `DeleteOperation` for
/// `/google.longrunning.Operations/DeleteOperation`.
fn method_name(grpc_path: &str) -> &str {
    grpc_path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("")
}

/// An authenticated caller, put into each allowed request's extensions (read it with
/// `request.extensions().get::<Caller>()` in a handler).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The label of the caller's token (`line N` when its line has none).
    pub label: Arc<str>,
    /// The caller's role.
    pub role: Role,
}

/// Errors loading a tokens file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokensError {
    /// The file could not be read.
    #[error("cannot read it: {0}")]
    Read(#[from] std::io::Error),
    /// A line is not `sha256:<64 lower-case hex> <role> [label]`. The message never quotes
    /// the hash field, in case a raw token was pasted there by mistake.
    #[error("line {line}: {message}")]
    Malformed {
        /// The 1-based line number.
        line: usize,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// The file names no token at all, so nobody could call the server.
    #[error("it holds no tokens; add one with the line that `oprun token new --role ROLE` prints")]
    Empty,
}

/// One line of a tokens file.
struct Entry {
    hash: [u8; 32],
    caller: Caller,
}

/// The tokens a server accepts, each stored only as its SHA-256 hash.
pub struct Tokens {
    entries: Vec<Entry>,
}

impl fmt::Debug for Tokens {
    /// Shows labels and roles, never hashes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| &e.caller))
            .finish()
    }
}

/// What a tokens-file line looks like, for error messages.
const LINE_FORMAT: &str = "expected `sha256:<64 lower-case hex> <role> [label]`";

impl Tokens {
    /// Reads a tokens file (see [`Tokens::parse`] for the format).
    ///
    /// # Errors
    /// [`TokensError`] when the file cannot be read, a line is malformed (naming the line), or
    /// no token is left. The error does not name the file: the caller knows it.
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        Self::parse(&std::fs::read_to_string(path)?)
    }

    /// Parses a tokens file: one token per line as `sha256:<64 lower-case hex> <role> [label]`
    /// (the label is the rest of the line); blank lines and lines starting with `#` are
    /// skipped.
    ///
    /// # Errors
    /// [`TokensError::Malformed`] for the first bad line (an unknown role, a hash that is not
    /// 64 lower-case hex digits, a token listed twice), [`TokensError::Empty`] when no line
    /// names a token.
    pub fn parse(text: &str) -> Result<Self, TokensError> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut lines_of: HashMap<[u8; 32], usize> = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let bad = |message: String| TokensError::Malformed { line, message };
            let (hash_field, rest) = split_field(trimmed);
            let (role_field, label) = split_field(rest);
            let Some(hex) = hash_field.strip_prefix("sha256:") else {
                return Err(bad(format!(
                    "{LINE_FORMAT}; the first field must be a hash, never a raw token: \
                     store the line that `oprun token new` prints"
                )));
            };
            let hash = parse_hex32(hex).ok_or_else(|| {
                bad(format!(
                    "{LINE_FORMAT}; the hash after `sha256:` must be exactly 64 lower-case hex digits"
                ))
            })?;
            if role_field.is_empty() {
                return Err(bad(format!("{LINE_FORMAT}; the role is missing")));
            }
            let role: Role = role_field.parse().map_err(bad)?;
            if let Some(first) = lines_of.insert(hash, line) {
                return Err(bad(format!(
                    "the same token is already listed on line {first}; list each token once"
                )));
            }
            let label = if label.is_empty() {
                format!("line {line}")
            } else {
                label.to_owned()
            };
            entries.push(Entry {
                hash,
                caller: Caller {
                    label: label.into(),
                    role,
                },
            });
        }
        if entries.is_empty() {
            return Err(TokensError::Empty);
        }
        Ok(Self { entries })
    }

    /// How many tokens are accepted.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no token is accepted (never true for a parsed file).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The caller a presented token belongs to, if any.
    ///
    /// The token is hashed and the hash compared with **every** entry in constant time, with
    /// no early exit, so the time taken says nothing about which entry (if any) matched or
    /// how much of it did.
    pub fn authenticate(&self, token: &str) -> Option<Caller> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // One past the last index: "no match".
        let none = u32::try_from(self.entries.len()).unwrap_or(u32::MAX);
        let mut found = none;
        for (i, entry) in self.entries.iter().enumerate() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            found.conditional_assign(&index, entry.hash.ct_eq(&presented));
        }
        (found != none).then(|| {
            let index = usize::try_from(found).expect("an index below the entry count fits");
            self.entries[index].caller.clone()
        })
    }
}

/// The first whitespace-separated field of `s` and the trimmed rest.
fn split_field(s: &str) -> (&str, &str) {
    match s.split_once(char::is_whitespace) {
        Some((first, rest)) => (first, rest.trim()),
        None => (s, ""),
    }
}

/// 64 lower-case hex digits as 32 bytes.
fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// `sha256:<64 lower-case hex>` of a token: its first field in a tokens file.
pub fn token_hash(token: &str) -> String {
    format!("sha256:{:x}", Sha256::digest(token.as_bytes()))
}

/// A fresh random token: 32 bytes from a cryptographically secure generator, URL-safe base64
/// without padding (43 characters), never starting with `-` (a command line would take
/// `--token -Rx…` for a flag: 1 token in 64 did).
pub fn new_token() -> String {
    loop {
        let bytes: [u8; 32] = rand::random();
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        if !token.starts_with('-') {
            return token;
        }
    }
}

/// The tokens-file line for `token`: `sha256:<hex> <role> [label]`.
///
/// # Errors
/// When the label has a line break (it would split the line).
pub fn tokens_file_line(token: &str, role: Role, label: Option<&str>) -> Result<String, String> {
    let label = label.map(str::trim).filter(|l| !l.is_empty());
    match label {
        Some(l) if l.contains(['\n', '\r']) => {
            Err("a label must fit on one line; drop the line break".to_owned())
        }
        Some(l) => Ok(format!("{} {role} {l}", token_hash(token))),
        None => Ok(format!("{} {role}", token_hash(token))),
    }
}

/// A tonic client interceptor that sends `authorization: Bearer <token>` on every call
/// (marked sensitive, so HTTP/2 never puts it in its header compression table).
#[derive(Clone)]
pub struct BearerToken {
    value: MetadataValue<Ascii>,
}

impl BearerToken {
    /// The interceptor for `token`.
    ///
    /// # Errors
    /// When the token is empty or not visible ASCII (no token `oprun token new` prints is).
    pub fn new(token: &str) -> Result<Self, String> {
        let token = token.trim();
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "the token must be non-empty visible ASCII, as `oprun token new` prints it"
                    .to_owned(),
            );
        }
        let mut value = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| "the token is not a valid header value".to_owned())?;
        value.set_sensitive(true);
        Ok(Self { value })
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.value.clone());
        Ok(request)
    }
}

/// A tower layer that authenticates and authorises every call before the services see it.
///
/// Apply it to the whole router: `Server::builder().layer(AuthLayer::new(tokens))`.
/// Allowed calls go on with a [`Caller`] in their extensions and without their
/// `authorization` header; refused ones get a gRPC error at once. Calls to paths that are not
/// oprun's go as [`AuthLayer::other_paths`] says (checked like oprun's, needing admin, by
/// default; with [`OtherPaths::PassThrough`], as they came, header included).
#[derive(Debug, Clone)]
pub struct AuthLayer {
    tokens: Arc<Tokens>,
    others: OtherPaths,
}

/// What [`AuthLayer`] does with a call to a path oprun's table ([`required_role`]) does not
/// know: an embedder's own services on the same server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OtherPaths {
    /// Checked as oprun's own calls are: a valid bearer token whose role allows this one.
    /// [`AuthLayer::new`] requires [`Role::Admin`], so that a path nobody classified is
    /// never open by mistake.
    Require(Role),
    /// Not checked: the call passes as it came, its `authorization` header included (for
    /// services that authenticate their callers themselves).
    PassThrough,
}

impl AuthLayer {
    /// A layer accepting `tokens`; a path that is not oprun's needs [`Role::Admin`] (see
    /// [`AuthLayer::other_paths`]).
    pub fn new(tokens: Arc<Tokens>) -> Self {
        Self {
            tokens,
            others: OtherPaths::Require(Role::Admin),
        }
    }

    /// How calls to paths that are not oprun's are treated: the embedder's own services
    /// need the role it names, or pass through.
    #[must_use]
    pub fn other_paths(mut self, others: OtherPaths) -> Self {
        self.others = others;
        self
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            tokens: Arc::clone(&self.tokens),
            others: self.others,
        }
    }
}

/// The service [`AuthLayer`] wraps around a router.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    tokens: Arc<Tokens>,
    others: OtherPaths,
}

/// Why a call was refused: the gRPC code, a stable reason and the message for the caller.
struct Denial {
    code: tonic::Code,
    reason: &'static str,
    message: String,
    metadata: HashMap<String, String>,
}

impl Denial {
    fn into_status(self) -> tonic::Status {
        let mut details = ErrorDetails::new();
        details.set_error_info(self.reason, ERROR_DOMAIN, self.metadata);
        tonic::Status::with_error_details(self.code, self.message, details)
    }
}

/// How a client must authenticate, for messages.
const HOW: &str = "send \"authorization: Bearer <token>\"";

impl<S> AuthService<S> {
    /// The caller of `req` if it may call the method it names, else why not. Logs the outcome
    /// with the method, the peer and the token's label, never the token.
    fn check<B>(&self, req: &http::Request<B>, needed: Role) -> Result<Caller, Denial> {
        let path = req.uri().path();
        let method = method_name(path);
        let peer = peer_addr(req);
        let unauthenticated = |reason: &'static str, message: String| {
            tracing::info!(method, peer, reason, "call refused: UNAUTHENTICATED");
            Denial {
                code: tonic::Code::Unauthenticated,
                reason,
                message,
                metadata: HashMap::from([("method".to_owned(), method.to_owned())]),
            }
        };
        let Some(header) = req.headers().get(http::header::AUTHORIZATION) else {
            return Err(unauthenticated(
                "TOKEN_MISSING",
                format!("missing bearer token: {HOW}"),
            ));
        };
        let token = header
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then_some(token.trim())
            })
            .filter(|t| !t.is_empty());
        let Some(token) = token else {
            return Err(unauthenticated(
                "TOKEN_MALFORMED",
                format!("the authorization header is not a bearer token: {HOW}"),
            ));
        };
        let Some(caller) = self.tokens.authenticate(token) else {
            return Err(unauthenticated(
                "TOKEN_INVALID",
                "invalid bearer token: it is not one this server accepts; \
                 check --token / OPRUN_TOKEN against the server's tokens file"
                    .to_owned(),
            ));
        };
        if !caller.role.allows(needed) {
            tracing::warn!(
                method,
                peer,
                label = &*caller.label,
                role = caller.role.as_str(),
                needed = needed.as_str(),
                "call refused: PERMISSION_DENIED"
            );
            return Err(Denial {
                code: tonic::Code::PermissionDenied,
                reason: "ROLE_TOO_LOW",
                message: format!(
                    "role {} may not call {method}; it needs {}",
                    caller.role,
                    needed.and_above()
                ),
                metadata: HashMap::from([
                    ("method".to_owned(), method.to_owned()),
                    ("role".to_owned(), caller.role.as_str().to_owned()),
                    ("required_role".to_owned(), needed.as_str().to_owned()),
                ]),
            });
        }
        tracing::debug!(
            method,
            peer,
            label = &*caller.label,
            role = caller.role.as_str(),
            "call allowed"
        );
        Ok(caller)
    }
}

/// The caller's address, from the connection info tonic puts into each request.
fn peer_addr<B>(req: &http::Request<B>) -> String {
    let ext = req.extensions();
    ext.get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        })
        .map(|a| a.to_string())
        .unwrap_or_default()
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for AuthService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let path = req.uri().path();
        if is_public(path) {
            req.headers_mut().remove(http::header::AUTHORIZATION);
            return Either::Left(self.inner.call(req));
        }
        let needed = match (required_role(path), self.others) {
            (Some(role), _) | (None, OtherPaths::Require(role)) => role,
            (None, OtherPaths::PassThrough) => return Either::Left(self.inner.call(req)),
        };
        match self.check(&req, needed) {
            Ok(caller) => {
                // The services need only the caller; without the header nothing past this
                // point can log the token by mistake.
                req.headers_mut().remove(http::header::AUTHORIZATION);
                req.extensions_mut().insert(caller);
                Either::Left(self.inner.call(req))
            }
            // A trailers-only gRPC answer: HTTP 200 with grpc-status in the headers.
            Err(denial) => Either::Right(ready(Ok(denial.into_status().into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATHS: [&str; 18] = [
        "/google.longrunning.Operations/GetOperation",
        "/google.longrunning.Operations/ListOperations",
        "/google.longrunning.Operations/WaitOperation",
        "/google.longrunning.Operations/CancelOperation",
        "/google.longrunning.Operations/DeleteOperation",
        "/oprun.v1.TaskService/SubmitTask",
        "/oprun.v1.TaskService/BatchSubmitTasks",
        "/oprun.v1.TaskService/ListTaskKinds",
        "/oprun.v1.TaskService/ListNodes",
        "/oprun.v1.SnapshotService/CreateSnapshot",
        "/oprun.v1.ScheduleService/CreateSchedule",
        "/oprun.v1.ScheduleService/GetSchedule",
        "/oprun.v1.ScheduleService/ListSchedules",
        "/oprun.v1.ScheduleService/UpdateSchedule",
        "/oprun.v1.ScheduleService/DeleteSchedule",
        "/oprun.v1.ScheduleService/PauseSchedule",
        "/oprun.v1.ScheduleService/ResumeSchedule",
        "/oprun.v1.ScheduleService/TriggerSchedule",
    ];

    /// Every served method has a role; anything else has none (and so needs admin).
    #[test]
    fn every_method_has_a_role() {
        for p in PATHS {
            assert!(required_role(p).is_some(), "{p}");
        }
        assert_eq!(required_role("/grpc.health.v1.Health/Check"), None);
        assert_eq!(required_role("/google.longrunning.Operations/Other"), None);
    }

    /// A token authenticates as its own line's caller and nothing else does.
    #[test]
    fn authenticate_finds_the_right_entry() {
        let text = format!(
            "# comment\n\n{}\n{}\n",
            tokens_file_line("alpha", Role::Reader, Some("a")).unwrap(),
            tokens_file_line("beta", Role::Admin, None).unwrap(),
        );
        let tokens = Tokens::parse(&text).unwrap();
        assert_eq!(tokens.len(), 2);
        let a = tokens.authenticate("alpha").unwrap();
        assert_eq!((&*a.label, a.role), ("a", Role::Reader));
        let b = tokens.authenticate("beta").unwrap();
        assert_eq!((&*b.label, b.role), ("line 4", Role::Admin));
        assert_eq!(tokens.authenticate("gamma"), None);
        assert_eq!(tokens.authenticate(""), None);
    }

    /// Bad lines name their line number and never echo the hash field.
    #[test]
    fn malformed_lines_are_refused_by_number() {
        let good = tokens_file_line("x", Role::Reader, None).unwrap();
        for (text, needle) in [
            (
                format!("{good}\nsecret-raw-token reader\n"),
                "never a raw token",
            ),
            (format!("{good}\nsha256:abc reader\n"), "64 lower-case hex"),
            (format!("{good}\n{}\n", good.to_uppercase()), "raw token"),
            (
                format!("{good}\n{} boss\n", token_hash("y")),
                "unknown role",
            ),
            (format!("{good}\n{}\n", token_hash("y")), "role is missing"),
            (format!("{good}\n{good}\n"), "already listed on line 1"),
        ] {
            let err = Tokens::parse(&text).expect_err("refused").to_string();
            assert!(err.starts_with("line 2: "), "{err}");
            assert!(err.contains(needle), "{err}");
            assert!(!err.contains("secret-raw-token"), "{err}");
        }
        assert!(matches!(
            Tokens::parse("# nothing\n"),
            Err(TokensError::Empty)
        ));
    }

    /// Fresh tokens are long, URL-safe and different each time, and never look like a flag.
    #[test]
    fn new_tokens_are_random_and_url_safe() {
        for _ in 0..1000 {
            assert!(!new_token().starts_with('-'));
        }
        let a = new_token();
        assert_eq!(a.len(), 43);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(a, new_token());
    }

    /// Denial messages list the roles that would do; a worker allows only the workers'
    /// methods, which an admin may call too.
    #[test]
    fn roles_and_above() {
        assert_eq!(Role::Reader.and_above(), "reader, submitter or admin");
        assert_eq!(Role::Submitter.and_above(), "submitter or admin");
        assert_eq!(Role::Admin.and_above(), "admin");
        assert_eq!(Role::Worker.and_above(), "admin or worker");
        assert!(!Role::Worker.allows(Role::Reader));
        assert!(!Role::Reader.allows(Role::Worker));
        assert!(!Role::Submitter.allows(Role::Worker));
        assert!(Role::Admin.allows(Role::Worker));
        assert!(Role::Worker.allows(Role::Worker));
    }
}
