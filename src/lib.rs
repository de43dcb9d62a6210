//! oprun: a background job runner whose jobs are Google-style long-running operations.
//!
//! Applications register async **task kinds**; each submitted task becomes a durable
//! `google.longrunning.Operation` that clients follow through the standard Operations gRPC
//! service (Get, List, Delete, Cancel, Wait).
//!
//! # Layout
//! Layers depend only on the ones above them:
//! - [`proto`]: generated protobuf and gRPC glue (prost/tonic). Stops at the surface.
//! - [`model`]: oprun's own operation types ([`model::OperationId`], [`model::State`],
//!   [`model::Outcome`], [`model::OperationRecord`]) and their wire form.
//! - [`types`]: the registry of message types a server knows (oprun's, in-process kinds',
//!   declared kinds'), which every JSON path and input check reads.
//! - [`filter`], [`page_token`]: the AIP-160 list filter and AIP-158 page tokens.
//! - [`store`]: durable storage behind the [`store::Store`] trait: SQLite (embedded default,
//!   with a bounded write-ahead log and integrity checks), PostgreSQL (several nodes on one
//!   database) and in-memory, all passing one conformance suite.
//! - [`kind`]: what a kind *is*: the [`Kind`] trait (name, input, output and details
//!   types), all a client or a JSON path needs of it.
//! - [`task`]: the task API: how a kind runs, the [`task::Task`] trait (built on [`Kind`]),
//!   [`task::TaskContext`] for progress and cancellation, and the [`task::Registry`] of kinds. [`kinds`] holds the built-in `sleep`.
//! - [`schedules`]: schedules' model: cron specs, calendars in IANA time zones, and the
//!   pure decision of what a due fire does (overlap policies, catch-up windows).
//! - [`scheduler`]: the [`scheduler::Runner`]: queues, limits, workers, cancel, wait,
//!   recovery and graceful shutdown; and the fire loop of schedules.
//! - [`service`]: the gRPC services (Operations, TaskService, WatchService, ScheduleService,
//!   AdminService, SnapshotService, WorkerService), each a value to mount on any tonic router.
//! - [`auth`]: bearer tokens with roles ([`auth::Tokens`], [`auth::Role`]) and the
//!   [`auth::AuthLayer`] that checks every call before any service sees it (applied, with
//!   TLS, by [`server::serve_with`]).
//! - [`server`]: [`server::serve`] over a listener the caller binds, until a shutdown future;
//!   [`server::serve_with`] adds TLS, tokens and the limits that guard the process against its
//!   clients ([`server::ServeLimits`]).
//! - [`http`]: the HTTP surface: the REST/JSON gateway routed from the protos'
//!   `google.api.http` rules, `/openapi.json`, `/healthz`, `/readyz` and `/metrics`.
//! - [`metrics`]: Prometheus metrics (prometheus-client), one registry per runner.
//! - [`client`]: a Rust client: typed submission, wait, progress stream, cancel, typed
//!   results and errors (the `oprun` command line is built on it).
//! - [`worker`]: runs registered kinds in a process of their own, over the worker protocol
//!   (`oprun.v1.WorkerService`).
//! - [`json`]: proto3 JSON through prost-reflect. `cli` (feature `cli`, off by default): the
//!   `oprun` command line.
//! - [`error`]: the library's error type and its single mapping to `tonic::Status`.
//! - [`text`]: bounded quoting of client input in messages (the bottom layer).
#![deny(missing_docs)]

#[macro_use]
mod setters;

pub mod auth;
mod budget;
#[cfg(feature = "cli")]
pub mod cli;
pub mod client;
pub mod error;
pub mod filter;
pub mod http;
pub mod json;
pub mod kind;
pub mod kinds;
pub mod metrics;
pub mod model;
mod otel;
pub mod page_token;
pub mod proto;
pub mod scheduler;
pub mod schedules;
pub mod server;
pub mod service;
pub mod store;
pub mod task;
pub mod text;
pub mod types;
pub mod worker;

pub use error::Error;
pub use kind::Kind;
pub use proto::google::rpc::Code;
pub use scheduler::{Runner, RunnerConfig, Submission};
pub use task::{
    RegisterError, Registry, Retry, RetryPolicy, Task, TaskContext, TaskError, TaskOptions,
};
