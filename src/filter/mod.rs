//! AIP-160 list filters over operations.
//!
//! [`Filter::parse`] turns the `filter` string of a `ListOperations` request into a
//! typed expression. [`Filter::matches`] tests one operation, described by
//! [`FilterFields`], against it: the memory store uses it, and it is the reference the
//! SQL translation is tested against. `Filter::to_sqlite` compiles the
//! expression into a SQL `WHERE` condition with bound parameters, which the SQLite store
//! runs so that a selective filter is answered from its indexes.
//!
//! The language is the subset of [AIP-160](https://google.aip.dev/160) that makes
//! sense for operations:
//!
//! * Comparisons `field OP value`, with `OP` one of `=`, `!=`, `<`, `<=`, `>`, `>=`
//!   and `:` (has). `field:*` tests whether the field is present; `:` with any other
//!   value means equality.
//! * `AND`, `OR`, `NOT` (upper-case keywords), the prefix `-` for negation, and
//!   parentheses. Terms written next to each other are joined with `AND`. As in
//!   AIP-160, `OR` binds tighter than `AND`, so `a AND b OR c` means
//!   `a AND (b OR c)`; negation binds tightest.
//! * Values are double- or single-quoted strings (with the escapes `\"`, `\'` and
//!   `\\`) or bare words, such as `sleep`, `true`, `RUNNING`, `5`, `NOT_FOUND` or
//!   `2026-01-02T15:04:05.5+01:00`.
//!
//! The fields are:
//!
//! | field | type | operators |
//! | --- | --- | --- |
//! | `name` | string; `operations/ID` or the bare `ID`; `*` wildcard at either end with `=` | `=`, `!=`, `:` |
//! | `kind` (`metadata.kind`) | string; `*` wildcard at either end with `=` | `=`, `!=`, `:` |
//! | `done` | `true` or `false` | `=`, `!=`, `:` |
//! | `state` (`metadata.state`) | `QUEUED`, `RUNNING`, `SUCCEEDED`, `FAILED` or `CANCELLED` | `=`, `!=`, `:` |
//! | `error.code` | 0 to 16, or a `google.rpc.Code` name such as `NOT_FOUND` | all |
//! | `create_time`, `update_time` (also with `metadata.`) | RFC 3339 timestamp | all |
//! | `priority` (`metadata.priority`) | an integer, -100 to 100 | all |
//! | `schedule` (`metadata.schedule`) | string; `schedules/ID` or the bare `ID`; `*` wildcard at either end with `=`; empty for an operation no schedule started | `=`, `!=`, `:` |
//!
//! `error:*` and `error.code:*` hold when the operation failed with an error. When an
//! operation has no error, every `error.code` comparison is false except `!=`.
//!
//! Values are checked against the field's type while parsing, so a misspelt state
//! or a `<` on a boolean is reported as an error rather than silently matching
//! nothing.

mod expr;
mod lexer;
mod parser;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;

use expr::{Expr, Field, Op, Pattern, Test};
use lexer::{escape, Lexer, Tok, Token};
use parser::Parser;

#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) use sql::{SqlColumns, SqlValue};

use std::str::FromStr;
use std::time::SystemTime;

/// The maximum filter length in bytes (4096).
pub const MAX_FILTER_LEN: usize = 4096;

/// The deepest nesting of parentheses that a filter may use.
const MAX_DEPTH: usize = 32;

/// The filterable fields, as listed in error messages.
const FIELD_LIST: &str =
    "name, done, kind, state, error.code, create_time, update_time, priority, schedule";

/// The operation states' names, as the wire and the filter spell them.
fn state_names() -> impl Iterator<Item = &'static str> {
    crate::model::State::ALL
        .into_iter()
        .map(crate::model::State::as_str)
}

/// The prefix of every operation name.
const NAME_PREFIX: &str = "operations/";

/// The prefix of every schedule name.
const SCHEDULE_PREFIX: &str = "schedules/";

/// The values of one operation that a filter can test.
#[derive(Debug, Clone, Copy)]
pub struct FilterFields<'a> {
    /// The operation's resource name, e.g. `operations/3f2a...`.
    pub name: &'a str,
    /// Whether the operation has finished.
    pub done: bool,
    /// The job kind, e.g. `sleep`.
    pub kind: &'a str,
    /// The state's enum value name: `QUEUED`, `RUNNING`, `SUCCEEDED`, `FAILED` or
    /// `CANCELLED`.
    pub state: &'a str,
    /// The `google.rpc.Code` number of the operation's error, or `None` when the
    /// operation has no error.
    pub error_code: Option<i32>,
    /// When the operation was created.
    pub create_time: SystemTime,
    /// When the operation last changed.
    pub update_time: SystemTime,
    /// The priority it was submitted with.
    pub priority: i32,
    /// The schedule that started it (`schedules/ID`), or empty.
    pub schedule: &'a str,
}

/// A parsed AIP-160 filter over operations.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// The expression, or `None` for an empty filter (which matches everything).
    expr: Option<Expr>,
}

/// Why a filter string could not be parsed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("invalid filter at character {position}: {message}")]
pub struct FilterError {
    /// The 1-based character offset in the filter where the problem is; one past
    /// the last character when the filter ends too early.
    pub position: usize,
    /// What is wrong, and how to fix it.
    pub message: String,
}

impl FilterError {
    fn new(position: usize, message: impl Into<String>) -> Self {
        FilterError {
            position,
            message: message.into(),
        }
    }
}

impl Filter {
    /// Parses a filter. Empty or all-whitespace input matches every operation.
    pub fn parse(input: &str) -> Result<Filter, FilterError> {
        if input.len() > MAX_FILTER_LEN {
            // Point at the first character that does not fit within the limit.
            let fitting = input
                .char_indices()
                .take_while(|(at, c)| at + c.len_utf8() <= MAX_FILTER_LEN)
                .count();
            return Err(FilterError::new(
                fitting + 1,
                format!(
                    "filter is {} bytes long; the limit is {MAX_FILTER_LEN} bytes",
                    input.len()
                ),
            ));
        }
        if input.trim().is_empty() {
            return Ok(Filter { expr: None });
        }
        let mut parser = Parser {
            lexer: Lexer {
                chars: input.chars().collect(),
                at: 0,
            },
            depth: 0,
            last: String::new(),
        };
        let expr = parser.expression()?;
        let token = parser.next_term()?;
        match token.tok {
            Tok::End => Ok(Filter { expr: Some(expr) }),
            other => Err(FilterError::new(
                token.pos,
                format!("unexpected {}", other.describe()),
            )),
        }
    }

    /// Whether the operation matches.
    pub fn matches(&self, fields: &FilterFields<'_>) -> bool {
        match &self.expr {
            None => true,
            Some(expr) => expr.eval(fields),
        }
    }

    /// True when the filter is empty (matches everything).
    pub fn is_empty(&self) -> bool {
        self.expr.is_none()
    }

    /// The latest `create_time > T` or `create_time >= T` bound that every match must meet (a
    /// test at the top level or in a top-level AND), if any: a store can find the matches
    /// through an index on `create_time` when few operations are that recent.
    pub fn created_after(&self) -> Option<SystemTime> {
        let bound = |e: &Expr| match e {
            Expr::Test(Test::CreateTime {
                op: Op::Gt | Op::Ge,
                value,
            }) => Some(*value),
            _ => None,
        };
        match self.expr.as_ref()? {
            Expr::And(parts) => parts.iter().filter_map(bound).max(),
            other => bound(other),
        }
    }

    /// A time every match is created before (exclusive), to the stores' microsecond: from
    /// `create_time < T` (T, rounded up to a whole microsecond as the SQL compares it) or
    /// `create_time <= T` (T and a microsecond) at the top level or in a top-level AND, if
    /// any. A store's microseconds (`micros`, which rounds down) of it bound every match.
    pub fn created_before(&self) -> Option<SystemTime> {
        let bound = |e: &Expr| match e {
            Expr::Test(Test::CreateTime { op: Op::Lt, value }) => {
                value.checked_add(std::time::Duration::from_nanos(999))
            }
            Expr::Test(Test::CreateTime { op: Op::Le, value }) => {
                value.checked_add(std::time::Duration::from_micros(1))
            }
            _ => None,
        };
        match self.expr.as_ref()? {
            Expr::And(parts) => parts.iter().filter_map(bound).min(),
            other => bound(other),
        }
    }
}

#[cfg(test)]
mod tests;
